package gauss

import (
	"errors"
	"fmt"
	"github.com/padim/padim/detector/internal/kernels"
	"math"
	"sync"
)

// LowRank is PaDiM's Gaussian in its exact low-rank form, for fits on fewer
// samples N than dimensions D. With x = t − μ, A = Xc/√(N−1) (N×D, the centred
// training embeddings of a patch) and LLᵀ = AAᵀ + εI (N×N), the Woodbury
// identity gives
//
//	(t−μ)ᵀ Σ⁻¹ (t−μ) = (‖x‖² − ‖Mx‖²) / ε,  M = L⁻¹A,  Σ = AᵀA + εI,
//
// the same distance as the full form at N·D numbers per patch instead of
// D(D+1)/2, and N·D multiply-adds per scored patch instead of D(D+1)/2. With one
// sample, A = 0: Σ = εI and the distance is ‖t−μ‖/√ε.
type LowRank struct {
	P, D, N int
	Eps     float64
	Mean    []float32 // [P][D]
	M       []float32 // [P][N][D]
	Backing any       // keeps alive the memory Mean and M live in, when not Go's
}

// Shape implements Model.
func (m *LowRank) Shape() (p, d int) { return m.P, m.D }

// Form implements Model.
func (m *LowRank) Form() string { return FormLowRank }

func (*LowRank) gaussian() {}

// Check reports whether the arrays match the shape.
func (m *LowRank) Check() error {
	if m.P <= 0 || m.D <= 0 || m.N <= 0 {
		return fmt.Errorf("gauss: low-rank model has empty shape P=%d D=%d N=%d", m.P, m.D, m.N)
	}
	if len(m.Mean) != m.P*m.D || len(m.M) != m.P*m.N*m.D {
		return fmt.Errorf("gauss: low-rank arrays (%d, %d) do not match P=%d D=%d N=%d", len(m.Mean), len(m.M), m.P, m.D, m.N)
	}
	if !(m.Eps > 0) || math.IsInf(m.Eps, 0) {
		return fmt.Errorf("gauss: the low-rank form needs a regularisation eps > 0, got %v", m.Eps)
	}
	return nil
}

// LowRankCheaper reports whether the low-rank form of n samples of dimension d
// is smaller to store and cheaper to score than the full form: n·d < d(d+1)/2.
func LowRankCheaper(n, d int) bool { return 2*n < d+1 }

// LowRankBackend is a Backend that also computes the low-rank form.
type LowRankBackend interface {
	// FactorizeLowRank fits the low-rank form on the embeddings of x = [·][P][D]
	// listed in samples (in that order).
	FactorizeLowRank(x []float32, samples []int, p, d int, eps float64) (*LowRank, error)
	// NewLowRankScorer prepares m for scoring.
	NewLowRankScorer(m *LowRank) (Scorer, error)
}

// All returns the sample list 0, 1, …, n−1.
func All(n int) []int {
	s := make([]int, n)
	for i := range s {
		s[i] = i
	}
	return s
}

// FactorizeLowRank implements LowRankBackend in float64, per patch.
func (CPU) FactorizeLowRank(x []float32, samples []int, p, d int, eps float64) (*LowRank, error) {
	n := len(samples)
	if n < 1 {
		return nil, errors.New("gauss: the low-rank form needs at least 1 training sample")
	}
	if p <= 0 || d <= 0 || len(x)%(p*d) != 0 {
		return nil, fmt.Errorf("gauss: %d values are not whole embeddings of P=%d D=%d", len(x), p, d)
	}
	for _, b := range samples {
		if b < 0 || b >= len(x)/(p*d) {
			return nil, fmt.Errorf("gauss: sample %d of %d", b, len(x)/(p*d))
		}
		if err := CheckFinite(x[b*p*d:(b+1)*p*d], p, d); err != nil {
			return nil, err
		}
	}
	if !(eps > 0) || math.IsInf(eps, 0) {
		return nil, fmt.Errorf("gauss: the low-rank form needs a regularisation eps > 0, got %v", eps)
	}
	m := &LowRank{P: p, D: d, N: n, Eps: eps, Mean: make([]float32, p*d), M: make([]float32, p*n*d)}
	var mu sync.Mutex
	firstBad := -1
	ParallelFor(p, func(lo, hi int) {
		a := make([]float64, n*d)
		mean := make([]float64, d)
		k := make([]float64, n*n)
		for q := lo; q < hi; q++ {
			clear(mean)
			for _, b := range samples {
				for i, v := range x[(b*p+q)*d : (b*p+q+1)*d] {
					mean[i] += float64(v)
				}
			}
			for i := range mean {
				mean[i] /= float64(n)
				m.Mean[q*d+i] = float32(mean[i])
			}
			out := m.M[q*n*d : (q+1)*n*d]
			if n == 1 { // no spread: Σ = εI, M = 0
				continue
			}
			s := 1 / math.Sqrt(float64(n-1))
			for r, b := range samples {
				row := a[r*d : (r+1)*d]
				for i, v := range x[(b*p+q)*d : (b*p+q+1)*d] {
					row[i] = (float64(v) - mean[i]) * s
				}
			}
			kernels.DsyrkLower(n, d, a, k)
			for i := 0; i < n; i++ {
				k[i*n+i] += eps
			}
			if !kernels.CholLower(k, n) || !pivotsOK(k, n) {
				mu.Lock()
				if firstBad < 0 || q < firstBad {
					firstBad = q
				}
				mu.Unlock()
				continue
			}
			kernels.DtrsmLower(n, d, k, a)
			for i, v := range a {
				out[i] = float32(v)
			}
		}
	})
	if firstBad >= 0 {
		return nil, &NotPositiveDefiniteError{Patch: firstBad}
	}
	return m, nil
}

// pivotsOK checks a Cholesky factor's diagonal as the full form does: finite,
// and not negligible against the largest.
func pivotsOK(l []float64, n int) bool {
	maxDiag := 0.0
	for i := 0; i < n; i++ {
		maxDiag = max(maxDiag, l[i*n+i])
	}
	for i := 0; i < n; i++ {
		if v := l[i*n+i]; !(v > maxDiag*1e-7) || math.IsInf(v, 0) {
			return false
		}
	}
	return true
}

// NewLowRankScorer implements LowRankBackend.
func (CPU) NewLowRankScorer(m *LowRank) (Scorer, error) {
	if err := m.Check(); err != nil {
		return nil, err
	}
	return &lowRankScorer{m: m}, nil
}

type lowRankScorer struct {
	m       *LowRank
	scratch sync.Pool
}

type lowRankScratch struct {
	y, mm, z []float64
}

// Score computes, per patch, Y = X − μ and Z = Y·Mᵀ in float64 (the difference
// ‖y‖² − ‖z‖² cancels, so float32 products would not do), and the distance
// √(max(‖y‖² − ‖z‖², 0)/ε). Rows are padded to one alignment, so an image's
// distance does not depend on its batch.
func (s *lowRankScorer) Score(x []float32, n int, dist []float32) error {
	m := s.m
	if m == nil {
		return errors.New("gauss: scorer is closed")
	}
	P, D, N := m.P, m.D, m.N
	if err := CheckBatch(x, n, P, D); err != nil {
		return err
	}
	if len(dist) < n*P {
		return fmt.Errorf("gauss: distance buffer holds %d values, need %d", len(dist), n*P)
	}
	ld := (D + 7) &^ 7
	ldz := (N + 7) &^ 7
	inv := 1 / m.Eps
	ParallelFor(P, func(lo, hi int) {
		sc, _ := s.scratch.Get().(*lowRankScratch)
		if sc == nil || len(sc.y) < n*ld {
			sc = &lowRankScratch{y: make([]float64, n*ld), mm: make([]float64, N*D), z: make([]float64, n*ldz)}
		}
		defer s.scratch.Put(sc)
		for q := lo; q < hi; q++ {
			mu := m.Mean[q*D : (q+1)*D]
			for i, v := range m.M[q*N*D : (q+1)*N*D] {
				sc.mm[i] = float64(v)
			}
			for b := 0; b < n; b++ {
				y := sc.y[b*ld : b*ld+D]
				for i, v := range x[(b*P+q)*D : (b*P+q+1)*D] {
					y[i] = float64(v) - float64(mu[i])
				}
			}
			kernels.DgemmNT(n, N, D, sc.y, ld, sc.mm, sc.z, ldz)
			for b := 0; b < n; b++ {
				var yy, zz float64
				for _, v := range sc.y[b*ld : b*ld+D] {
					yy += v * v
				}
				for _, v := range sc.z[b*ldz : b*ldz+N] {
					zz += v * v
				}
				dist[b*P+q] = float32(math.Sqrt(max(yy-zz, 0) * inv))
			}
		}
	})
	return nil
}

func (s *lowRankScorer) Close() error { s.m = nil; return nil }

// LowRankGroup is how many embeddings the CPU's low-rank scorer wants per
// call: each call widens every patch's M to float64 once (a pass over the
// whole model, 1.4 GB at N = 200, d = 550, P = 3136, bound by memory), so a
// larger group pays it for more images. 64 instead of 32 took padim score on
// 101 boards from 15.7 to 14.2 CPU-s (BENCHMARKS.md); the embedding buffers
// grow to 2 × 64 × P × d float32 (880 MB there).
const LowRankGroup = 64

// PreferredGroup asks the pipeline for LowRankGroup embeddings per call.
func (s *lowRankScorer) PreferredGroup() int { return LowRankGroup }
