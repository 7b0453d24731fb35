package gauss

import (
	"errors"
	"fmt"
	"github.com/padim/padim/detector/internal/kernels"
	"math"
	"sync"
)

// CPU is the reference backend: float32 batch products, float64 statistics and
// factorisation, parallel over patches on every core. Its accumulators and
// scorers are safe for concurrent use.
type CPU struct {
	// StageBytes bounds the embeddings an accumulator buffers before folding them
	// into the statistics (default DefaultStageBytes): larger stages make the
	// rank-k update faster (more flops per byte of statistics touched), at a
	// fixed memory cost independent of N.
	StageBytes int
}

// DefaultStageBytes is the CPU accumulator's default staging buffer.
const DefaultStageBytes = 512 << 20

// Name implements Backend.
func (CPU) Name() string { return "cpu" }

// Close implements Backend; the CPU holds nothing.
func (CPU) Close() error { return nil }

// maxStage caps the staged images; past it the rank-k update gains nothing more.
const maxStage = 128

// NewAccumulator implements Backend.
func (c CPU) NewAccumulator(p, d int) (Accumulator, error) {
	if p <= 0 || d <= 0 {
		return nil, fmt.Errorf("gauss: accumulator shape P=%d D=%d", p, d)
	}
	sb := c.StageBytes
	if sb <= 0 {
		sb = DefaultStageBytes
	}
	stage := min(max(sb/(4*p*d), 1), maxStage)
	return &cpuAccumulator{s: NewStats(p, d), stage: make([]float32, 0, stage*p*d)}, nil
}

type cpuAccumulator struct {
	mu      sync.Mutex // Add, Stats and Close may come from several goroutines
	s       *Stats
	stage   []float32 // staged embeddings [k][P][D], not yet in s
	scratch sync.Pool
}

var errClosed = errors.New("gauss: accumulator is closed")

// Add stages the batch, folding the stage into the statistics when it is full.
func (a *cpuAccumulator) Add(x []float32, n int) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.s == nil {
		return errClosed
	}
	P, D := a.s.P, a.s.D
	if err := CheckBatch(x, n, P, D); err != nil {
		return err
	}
	if err := CheckFinite(x[:n*P*D], P, D); err != nil {
		return err
	}
	for n > 0 {
		room := (cap(a.stage) - len(a.stage)) / (P * D)
		if room == 0 {
			a.flush()
			continue
		}
		k := min(room, n)
		a.stage = append(a.stage, x[:k*P*D]...)
		x, n = x[k*P*D:], n-k
	}
	return nil
}

func (a *cpuAccumulator) flush() {
	if k := len(a.stage) / (a.s.P * a.s.D); k > 0 {
		a.fold(a.stage, k)
	}
	a.stage = a.stage[:0]
}

type accScratch struct {
	mean []float64
	y    []float32
	c    []float32
}

// fold merges n embeddings into the statistics with Chan's formula, per patch.
func (a *cpuAccumulator) fold(x []float32, n int) {
	s := a.s
	P, D, L := s.P, s.D, PackedLen(s.D)
	na, nb := float64(s.N), float64(n)
	nt := na + nb
	ParallelFor(P, func(lo, hi int) {
		sc, _ := a.scratch.Get().(*accScratch)
		if sc == nil || len(sc.y) < n*D {
			sc = &accScratch{mean: make([]float64, D), y: make([]float32, n*D), c: make([]float32, D*D)}
		}
		defer a.scratch.Put(sc)
		for p := lo; p < hi; p++ {
			mb := sc.mean
			clear(mb)
			for b := 0; b < n; b++ {
				row := x[(b*P+p)*D : (b*P+p+1)*D]
				for i, v := range row {
					mb[i] += float64(v)
				}
			}
			for i := range mb {
				mb[i] /= nb
			}
			for b := 0; b < n; b++ {
				row := x[(b*P+p)*D : (b*P+p+1)*D]
				y := sc.y[b*D : (b+1)*D]
				for i, v := range row {
					y[i] = float32(float64(v) - mb[i])
				}
			}
			// C = YᵀY, lower triangle (Y is n×D).
			kernels.SyrkLower(n, D, sc.y, sc.c)
			mean := s.Mean[p*D : (p+1)*D]
			m2 := s.M2[p*L : (p+1)*L]
			// Chan: δ = μb − μa; μ += δ·nb/n; M2 += C + δδᵀ·na·nb/n.
			f := na * nb / nt
			for i := range mb {
				mb[i] -= mean[i] // mb now holds δ
				mean[i] += mb[i] * nb / nt
			}
			k := 0
			for i := 0; i < D; i++ {
				di := mb[i] * f
				crow := sc.c[i*D : i*D+i+1]
				row := m2[k : k+i+1]
				for j := range row {
					row[j] += float64(crow[j]) + di*mb[j]
				}
				k += i + 1
			}
		}
	})
	s.N += int64(n)
}

// Stats folds the stage in and returns the statistics themselves, not a copy:
// they stay valid until the next Add or Close.
func (a *cpuAccumulator) Stats() (*Stats, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.s == nil {
		return nil, errClosed
	}
	a.flush()
	return a.s, nil
}

func (a *cpuAccumulator) Close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.s = nil
	return nil
}

// Factorize implements Backend in float64, per patch: Cholesky, then the
// triangular inverse, rounded to float32 at the end.
func (CPU) Factorize(s *Stats, eps float64) (*Gaussian, error) {
	if err := s.CheckFittable(eps); err != nil {
		return nil, err
	}
	P, D, L := s.P, s.D, PackedLen(s.D)
	g := &Gaussian{P: P, D: D, Mean: make([]float32, P*D), LInv: make([]float32, P*L)}
	for i, v := range s.Mean {
		g.Mean[i] = float32(v)
	}
	var mu sync.Mutex
	firstBad := -1
	ParallelFor(P, func(lo, hi int) {
		a := make([]float64, D*D)
		for p := lo; p < hi; p++ {
			s.Covariance(p, eps, a)
			if !choleskyInverse(a, D) {
				mu.Lock()
				if firstBad < 0 || p < firstBad {
					firstBad = p
				}
				mu.Unlock()
				continue
			}
			packLower(a, D, g.LInv[p*L:(p+1)*L])
		}
	})
	if firstBad >= 0 {
		return nil, &NotPositiveDefiniteError{Patch: firstBad}
	}
	return g, nil
}

func packLower(a []float64, d int, dst []float32) {
	k := 0
	for i := 0; i < d; i++ {
		for _, v := range a[i*d : i*d+i+1] {
			dst[k] = float32(v)
			k++
		}
	}
}

// NewScorer implements Backend.
func (CPU) NewScorer(g *Gaussian) (Scorer, error) {
	if err := g.Check(); err != nil {
		return nil, err
	}
	return &cpuScorer{g: g}, nil
}

type cpuScorer struct {
	g       *Gaussian
	scratch sync.Pool
}

type scoreScratch struct {
	l []float32 // dense lower D×D
	y []float32 // the batch's rows (stride ld), padded with zero rows to whole tiles
}

// scoreStride pads each image's row so that every row starts at the same
// alignment: SIMD kernels then sum in the same order whatever the batch, and an
// image's distance is the same bit for bit in any batch.
func scoreStride(d int) int { return (d + 15) &^ 15 }

// scoreTile is how many rows each triangular product takes: always exactly
// this many (the last tile padded with zero rows), because an optimised BLAS
// picks its kernels by the number of rows, and OpenBLAS's AVX2 kernels then
// sum a row in another order when the batch around it changes (283.4628 in a
// batch of 1, 283.46277 in a batch of 45). In calls of one shape every row
// takes one path, whatever its batch or place.
const scoreTile = 8

func (s *cpuScorer) Score(x []float32, n int, dist []float32) error {
	g := s.g
	if g == nil {
		return errors.New("gauss: scorer is closed")
	}
	P, D, L := g.P, g.D, PackedLen(g.D)
	ld := scoreStride(D)
	if err := CheckBatch(x, n, P, D); err != nil {
		return err
	}
	if len(dist) < n*P {
		return fmt.Errorf("gauss: distance buffer holds %d values, need %d", len(dist), n*P)
	}
	ParallelFor(P, func(lo, hi int) {
		sc, _ := s.scratch.Get().(*scoreScratch)
		rows := (n + scoreTile - 1) / scoreTile * scoreTile
		if sc == nil || len(sc.y) < rows*ld {
			sc = &scoreScratch{l: make([]float32, D*D), y: make([]float32, rows*ld)}
		}
		clear(sc.y[n*ld : rows*ld]) // the padding rows
		defer s.scratch.Put(sc)
		for p := lo; p < hi; p++ {
			lp := g.LInv[p*L : (p+1)*L]
			k := 0
			for i := 0; i < D; i++ {
				copy(sc.l[i*D:i*D+i+1], lp[k:k+i+1])
				k += i + 1
			}
			mu := g.Mean[p*D : (p+1)*D]
			for b := 0; b < n; b++ {
				row := x[(b*P+p)*D : (b*P+p+1)*D]
				y := sc.y[b*ld : b*ld+D]
				for i, v := range row {
					y[i] = v - mu[i]
				}
			}
			// Y := Y·(L⁻¹)ᵀ, so row b holds L⁻¹(x_b−μ), one tile at a time.
			for t := 0; t < rows; t += scoreTile {
				kernels.TrmmLowerT(scoreTile, D, sc.l, sc.y[t*ld:], ld)
			}
			for b := 0; b < n; b++ {
				var acc float64
				for _, v := range sc.y[b*ld : b*ld+D] {
					acc += float64(v) * float64(v)
				}
				dist[b*P+p] = float32(math.Sqrt(acc))
			}
		}
	})
	return nil
}

func (s *cpuScorer) Close() error { s.g = nil; return nil }
