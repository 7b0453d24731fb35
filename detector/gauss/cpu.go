package gauss

import (
	"fmt"
	"math"
	"sync"

	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/blas32"
	"gonum.org/v1/gonum/blas/blas64"
	"gonum.org/v1/gonum/lapack/lapack64"
)

// CPU is the reference backend: float32 batch products, float64 statistics and
// factorisation, parallel over patches on every core.
type CPU struct{}

// Name implements Backend.
func (CPU) Name() string { return "cpu" }

// NewAccumulator implements Backend.
func (CPU) NewAccumulator(p, d int) (Accumulator, error) {
	if p <= 0 || d <= 0 {
		return nil, fmt.Errorf("gauss: accumulator shape P=%d D=%d", p, d)
	}
	return &cpuAccumulator{s: NewStats(p, d)}, nil
}

type cpuAccumulator struct {
	s       *Stats
	scratch sync.Pool
}

type accScratch struct {
	mean []float64
	y    []float32
	c    []float32
}

func (a *cpuAccumulator) Add(x []float32, n int) error {
	s := a.s
	P, D, L := s.P, s.D, PackedLen(s.D)
	if err := checkBatch(x, n, P, D); err != nil {
		return err
	}
	if err := checkFinite(x[:n*P*D], P, D); err != nil {
		return err
	}
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
			blas32.Syrk(blas.Trans, 1, blas32.General{Rows: n, Cols: D, Stride: D, Data: sc.y[:n*D]},
				0, blas32.Symmetric{N: D, Stride: D, Uplo: blas.Lower, Data: sc.c})
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
	return nil
}

func (a *cpuAccumulator) Stats() (*Stats, error) {
	s := a.s
	c := &Stats{P: s.P, D: s.D, N: s.N, Mean: append([]float64(nil), s.Mean...), M2: append([]float64(nil), s.M2...)}
	return c, nil
}

func (a *cpuAccumulator) Close() error { a.s = nil; return nil }

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

// choleskyInverse overwrites the lower triangle of the symmetric row-major a with
// L⁻¹ where a = LLᵀ. It reports false if a is not (numerically) positive definite.
func choleskyInverse(a []float64, d int) bool {
	for _, v := range a {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return false
		}
	}
	t, ok := lapack64.Potrf(blas64.Symmetric{N: d, Stride: d, Uplo: blas.Lower, Data: a})
	if !ok {
		return false
	}
	// Potrf succeeds on matrices that are PD only to rounding; demand a pivot that
	// is not negligible against the diagonal, or L⁻¹ would be garbage.
	maxDiag := 0.0
	for i := 0; i < d; i++ {
		maxDiag = max(maxDiag, t.Data[i*d+i])
	}
	for i := 0; i < d; i++ {
		if t.Data[i*d+i] <= maxDiag*1e-7 {
			return false
		}
	}
	if !lapack64.Trtri(t) {
		return false
	}
	for i := 0; i < d; i++ {
		for _, v := range a[i*d : i*d+i+1] {
			if math.IsNaN(v) || math.IsInf(v, 0) {
				return false
			}
		}
	}
	return true
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
	y []float32 // n×D
}

func (s *cpuScorer) Score(x []float32, n int, dist []float32) error {
	g := s.g
	P, D, L := g.P, g.D, PackedLen(g.D)
	if err := checkBatch(x, n, P, D); err != nil {
		return err
	}
	if len(dist) < n*P {
		return fmt.Errorf("gauss: distance buffer holds %d values, need %d", len(dist), n*P)
	}
	ParallelFor(P, func(lo, hi int) {
		sc, _ := s.scratch.Get().(*scoreScratch)
		if sc == nil || len(sc.y) < n*D {
			sc = &scoreScratch{l: make([]float32, D*D), y: make([]float32, n*D)}
		}
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
				y := sc.y[b*D : (b+1)*D]
				for i, v := range row {
					y[i] = v - mu[i]
				}
			}
			// Y := Y·(L⁻¹)ᵀ, so row b holds L⁻¹(x_b−μ).
			blas32.Trmm(blas.Right, blas.Trans, 1,
				blas32.Triangular{N: D, Stride: D, Uplo: blas.Lower, Diag: blas.NonUnit, Data: sc.l},
				blas32.General{Rows: n, Cols: D, Stride: D, Data: sc.y[:n*D]})
			for b := 0; b < n; b++ {
				var acc float64
				for _, v := range sc.y[b*D : (b+1)*D] {
					acc += float64(v) * float64(v)
				}
				dist[b*P+p] = float32(math.Sqrt(acc))
			}
		}
	})
	return nil
}

func (s *cpuScorer) Close() error { s.g = nil; return nil }
