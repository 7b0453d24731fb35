//go:build cuda || cudaemu

package gpu

import (
	"testing"

	"github.com/padim/padim/detector/gauss"
	"github.com/padim/padim/detector/gauss/gausstest"
)

// The GPU numbers issue 5 asks for: a fit of N=200 images at P=3136, d=550
// (accumulation and factorisation) and scoring 1000 images.
const benchP, benchD = 3136, 550

func BenchmarkFitN200(b *testing.B) {
	be := device(b)
	x := gausstest.Correlated(1, 20, benchP, benchD, 1, 1) // 20 distinct images, fed 10 times
	var s *gauss.Stats
	b.Run("accumulate", func(b *testing.B) {
		for b.Loop() {
			acc, err := be.NewAccumulator(benchP, benchD)
			if err != nil {
				b.Fatal(err)
			}
			for i := 0; i < 10; i++ {
				if err := acc.Add(x, 20); err != nil {
					b.Fatal(err)
				}
			}
			if s, err = acc.Stats(); err != nil {
				b.Fatal(err)
			}
			acc.Close()
		}
		b.ReportMetric(200*float64(b.N)/b.Elapsed().Seconds(), "images/s")
		b.ReportMetric(200*benchP*float64(benchD*(benchD+1))*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
	})
	b.Run("factorize", func(b *testing.B) {
		for b.Loop() {
			if _, err := be.Factorize(s, 0.01); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(benchP*2*float64(benchD*benchD*benchD)/3*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
	})
}

func BenchmarkScore1000(b *testing.B) {
	be := device(b)
	x := gausstest.Correlated(1, 20, benchP, benchD, 1, 1)
	acc, _ := be.NewAccumulator(benchP, benchD)
	acc.Add(x, 20)
	s, _ := acc.Stats()
	g, err := be.Factorize(s.Clone(), 0.01)
	acc.Close()
	if err != nil {
		b.Fatal(err)
	}
	sc, err := be.NewScorer(g)
	if err != nil {
		b.Fatal(err)
	}
	defer sc.Close()
	batch := gausstest.Correlated(3, 50, benchP, benchD, 1, 1)
	dist := make([]float32, 50*benchP)
	for b.Loop() {
		for i := 0; i < 20; i++ { // 1000 images
			if err := sc.Score(batch, 50, dist); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(1000*float64(b.N)/b.Elapsed().Seconds(), "images/s")
	b.ReportMetric(1000*benchP*float64(benchD*(benchD+1))*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
}
