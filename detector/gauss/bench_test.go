package gauss_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/padim/padim/detector/gauss"
	"github.com/padim/padim/detector/gauss/gausstest"
)

// Benchmarks at PaDiM's sizes report GFLOP/s counting 2 flops per multiply-add:
// accumulation n·P·D(D+1) (a rank-n update of the lower triangle), scoring
// n·P·D(D+1) (a triangular matrix-vector product per image and patch) and
// factorisation P·2D³/3 (Cholesky D³/3 plus triangular inverse D³/3).
const benchP = 3136

func benchSizes() []int { return []int{100, 550} }

// BenchmarkFit is a whole streaming fit of 64 images (two batches of 32), from a
// fresh accumulator to the final statistics.
func BenchmarkFit(b *testing.B) {
	for _, d := range benchSizes() {
		b.Run(fmt.Sprintf("P=%d/D=%d/N=64", benchP, d), func(b *testing.B) {
			const n, batches = 32, 2
			x := gausstest.Correlated(1, n, benchP, d, 1, 1)
			for b.Loop() {
				acc, _ := gauss.CPU{}.NewAccumulator(benchP, d)
				for i := 0; i < batches; i++ {
					if err := acc.Add(x, n); err != nil {
						b.Fatal(err)
					}
				}
				if _, err := acc.Stats(); err != nil {
					b.Fatal(err)
				}
				acc.Close()
			}
			imgs := float64(n * batches * b.N)
			b.ReportMetric(imgs*benchP*float64(d*(d+1))/b.Elapsed().Seconds()/1e9, "GFLOP/s")
			b.ReportMetric(imgs/b.Elapsed().Seconds(), "images/s")
		})
	}
}

func BenchmarkScore(b *testing.B) {
	for _, d := range benchSizes() {
		b.Run(fmt.Sprintf("P=%d/D=%d/batch=32", benchP, d), func(b *testing.B) {
			const n = 32
			g := identityModel(benchP, d)
			x := gausstest.Correlated(2, n, benchP, d, 1, 1)
			sc, _ := gauss.CPU{}.NewScorer(g)
			dist := make([]float32, n*benchP)
			for b.Loop() {
				if err := sc.Score(x, n, dist); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(n)*benchP*float64(d*(d+1))*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
			b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "images/s")
		})
	}
}

func BenchmarkFactorize(b *testing.B) {
	for _, d := range benchSizes() {
		b.Run(fmt.Sprintf("P=%d/D=%d", benchP, d), func(b *testing.B) {
			s := gauss.NewStats(benchP, d)
			s.N = 10
			L := gauss.PackedLen(d)
			for p := 0; p < benchP; p++ {
				for i := 0; i < d; i++ {
					s.M2[p*L+i*(i+1)/2+i] = 9
					if i > 0 {
						s.M2[p*L+i*(i+1)/2+i-1] = 1
					}
				}
			}
			for b.Loop() {
				if _, err := (gauss.CPU{}).Factorize(s, 0.01); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(benchP*2*float64(d)*float64(d)*float64(d)/3*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
		})
	}
}

func identityModel(p, d int) *gauss.Gaussian {
	L := gauss.PackedLen(d)
	g := &gauss.Gaussian{P: p, D: d, Mean: make([]float32, p*d), LInv: make([]float32, p*L)}
	for q := 0; q < p; q++ {
		for i := 0; i < d; i++ {
			g.LInv[q*L+i*(i+1)/2+i] = 1
			if i > 0 {
				g.LInv[q*L+i*(i+1)/2+i-1] = 0.1
			}
		}
	}
	return g
}

func BenchmarkPeakSGEMM(b *testing.B) {
	for b.Loop() {
		b.ReportMetric(gauss.PeakGFLOPS(1024, time.Second), "GFLOP/s")
	}
}

// BenchmarkScoreLowRank scores a batch of 32 with the low-rank form at N=200,
// D=550 on P=256 patches (2·n·P·N·D flops for the products Z = Y·Mᵀ).
func BenchmarkScoreLowRank(b *testing.B) {
	const p, d, nTrain, n = 256, 550, 200, 32
	train := gausstest.Correlated(3, nTrain, p, d, 1, 1)
	m, err := gauss.CPU{}.FactorizeLowRank(train, gauss.All(nTrain), p, d, 0.01)
	if err != nil {
		b.Fatal(err)
	}
	sc, _ := gauss.CPU{}.NewLowRankScorer(m)
	x := gausstest.Correlated(4, n, p, d, 1, 1)
	dist := make([]float32, n*p)
	for b.Loop() {
		if err := sc.Score(x, n, dist); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(2*float64(n)*p*nTrain*d*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
	b.ReportMetric(float64(n)*float64(b.N)*p/3136/b.Elapsed().Seconds(), "images/s@P=3136")
}
