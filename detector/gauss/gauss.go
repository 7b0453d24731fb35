// Package gauss holds PaDiM's per-patch multivariate Gaussians: the streaming
// statistics a fit accumulates, the factorised model a score reads, and the
// Backend seam behind which the CPU (this package) and CUDA (package gpu)
// implementations sit.
//
// Conventions shared by every backend:
//   - embeddings are float32, [N][P][D]: N images, P patch positions, D channels;
//   - statistics are float64: per patch the count, the mean and the centred
//     second moment M2 = Σ(x−μ)(x−μ)ᵀ, merged across batches with Chan's formula,
//     so large feature means never cost precision and memory never grows with N;
//   - symmetric and triangular D×D matrices are stored packed, lower triangle,
//     row-major: element (i, j≤i) at i(i+1)/2+j;
//   - the model keeps per patch the mean μ and L⁻¹ where Σ = LLᵀ, and the
//     distance of x is ‖L⁻¹(x−μ)‖.
package gauss

import (
	"errors"
	"fmt"
	"math"
	"runtime"
	"slices"
	"sync"
)

// PackedLen is the number of values in a packed lower-triangular D×D matrix.
func PackedLen(d int) int { return d * (d + 1) / 2 }

// Stats are the streaming statistics of a fit: per patch count, mean and centred
// second moment. Stats from disjoint image sets merge exactly (Merge).
type Stats struct {
	P, D int
	N    int64     // images seen
	Mean []float64 // [P][D]
	M2   []float64 // [P][PackedLen(D)], Σ(x−μ)(x−μ)ᵀ
}

// NewStats returns empty statistics for P patches of dimension D.
func NewStats(p, d int) *Stats {
	return &Stats{P: p, D: d, Mean: make([]float64, p*d), M2: make([]float64, p*PackedLen(d))}
}

// Clone returns a deep copy.
func (s *Stats) Clone() *Stats {
	return &Stats{P: s.P, D: s.D, N: s.N, Mean: slices.Clone(s.Mean), M2: slices.Clone(s.M2)}
}

// Check reports whether the statistics are internally consistent.
func (s *Stats) Check() error {
	if s.P <= 0 || s.D <= 0 {
		return fmt.Errorf("gauss: statistics have empty shape P=%d D=%d", s.P, s.D)
	}
	if len(s.Mean) != s.P*s.D || len(s.M2) != s.P*PackedLen(s.D) {
		return fmt.Errorf("gauss: statistics arrays (%d, %d) do not match P=%d D=%d", len(s.Mean), len(s.M2), s.P, s.D)
	}
	if s.N < 0 {
		return fmt.Errorf("gauss: negative image count %d", s.N)
	}
	return nil
}

// Merge adds the statistics o (from a disjoint set of images) into s, with Chan's
// parallel formula: M2 = M2a + M2b + δδᵀ·na·nb/n, δ = μb − μa.
func (s *Stats) Merge(o *Stats) error {
	if err := o.Check(); err != nil {
		return err
	}
	if s.P != o.P || s.D != o.D {
		return fmt.Errorf("gauss: cannot merge statistics of shape P=%d D=%d into P=%d D=%d", o.P, o.D, s.P, s.D)
	}
	if o.N == 0 {
		return nil
	}
	na, nb := float64(s.N), float64(o.N)
	n := na + nb
	D, L := s.D, PackedLen(s.D)
	ParallelFor(s.P, func(lo, hi int) {
		delta := make([]float64, D)
		for p := lo; p < hi; p++ {
			ma, mb := s.Mean[p*D:(p+1)*D], o.Mean[p*D:(p+1)*D]
			for i := range delta {
				delta[i] = mb[i] - ma[i]
				ma[i] += delta[i] * nb / n
			}
			mergeM2(s.M2[p*L:(p+1)*L], o.M2[p*L:(p+1)*L], delta, na*nb/n)
		}
	})
	s.N += o.N
	return nil
}

// RemoveFrom turns s, the statistics of a subset of the images of total, into
// those of the rest: Chan's formula solved for one part.
func (s *Stats) RemoveFrom(total *Stats) error {
	if err := total.Check(); err != nil {
		return err
	}
	if s.P != total.P || s.D != total.D {
		return fmt.Errorf("gauss: cannot remove statistics of shape P=%d D=%d from P=%d D=%d", s.P, s.D, total.P, total.D)
	}
	if s.N > total.N {
		return fmt.Errorf("gauss: cannot remove %d images from %d", s.N, total.N)
	}
	nf, n := float64(s.N), float64(total.N)
	nr := n - nf
	D, L := s.D, PackedLen(s.D)
	ParallelFor(s.P, func(lo, hi int) {
		delta := make([]float64, D)
		for p := lo; p < hi; p++ {
			mf, mt := s.Mean[p*D:(p+1)*D], total.Mean[p*D:(p+1)*D]
			for i := range delta {
				rest := mt[i] // nr = 0 leaves an empty set: mean 0 by convention below
				if nr > 0 {
					rest = (n*mt[i] - nf*mf[i]) / nr
				}
				delta[i] = mf[i] - rest // δ = μ_fold − μ_rest
				mf[i] = rest
			}
			// M2_rest = M2_total − M2_fold − δδᵀ·nf·nr/n
			f := 0.0
			if n > 0 {
				f = nf * nr / n
			}
			src := total.M2[p*L : (p+1)*L]
			dst := s.M2[p*L : (p+1)*L]
			k := 0
			for i := range delta {
				di := delta[i] * f
				for j := 0; j <= i; j++ {
					dst[k] = src[k] - dst[k] - di*delta[j]
					k++
				}
			}
		}
	})
	s.N = total.N - s.N
	return nil
}

// mergeM2 does dst += src + f·δδᵀ on packed lower triangles.
func mergeM2(dst, src []float64, delta []float64, f float64) {
	k := 0
	for i := range delta {
		di := delta[i] * f
		row := dst[k : k+i+1]
		srow := src[k : k+i+1]
		for j := range row {
			row[j] += srow[j] + di*delta[j]
		}
		k += i + 1
	}
}

// Covariance writes the unbiased covariance of patch p plus eps·I into dst, a
// full row-major D×D float64 matrix (both triangles).
func (s *Stats) Covariance(p int, eps float64, dst []float64) {
	D := s.D
	m2 := s.M2[p*PackedLen(D) : (p+1)*PackedLen(D)]
	inv := 0.0 // one sample: no spread, Σ = εI
	if s.N > 1 {
		inv = 1 / float64(s.N-1)
	}
	k := 0
	for i := 0; i < D; i++ {
		for j := 0; j <= i; j++ {
			v := m2[k] * inv
			if i == j {
				v += eps
			}
			dst[i*D+j], dst[j*D+i] = v, v
			k++
		}
	}
}

// CheckFittable reports whether the statistics can be turned into a model.
func (s *Stats) CheckFittable(eps float64) error {
	if err := s.Check(); err != nil {
		return err
	}
	if s.N < 1 {
		return errors.New("gauss: no training samples")
	}
	if !(eps >= 0) || math.IsInf(eps, 0) {
		return fmt.Errorf("gauss: regularisation eps must be a finite number >= 0, got %v", eps)
	}
	if s.N == 1 && eps == 0 {
		return errors.New("gauss: one training sample has no spread: its covariance is eps·I, and eps is 0")
	}
	return nil
}

// Gaussian is a fitted PaDiM model: per patch the mean and packed L⁻¹, float32.
type Gaussian struct {
	P, D int
	Mean []float32 // [P][D]
	LInv []float32 // [P][PackedLen(D)]
	// Backing keeps alive the memory Mean and LInv live in when it is not Go's
	// (a mapped model file); nil otherwise.
	Backing any
}

// The forms of a fitted model.
const (
	FormFull    = "full"
	FormLowRank = "lowrank"
)

// Model is a fitted per-patch Gaussian in one of its forms: *Gaussian (full)
// or *LowRank, and nothing else (other methods sit above this package).
type Model interface {
	Shape() (p, d int)
	Form() string
	gaussian() // only this package's forms
}

// NewModelScorer prepares either form for scoring on b.
func NewModelScorer(b Backend, m Model) (Scorer, error) {
	switch m := m.(type) {
	case *Gaussian:
		return b.NewScorer(m)
	case *LowRank:
		lr, ok := b.(LowRankBackend)
		if !ok {
			return nil, fmt.Errorf("gauss: backend %s has no low-rank form", b.Name())
		}
		return lr.NewLowRankScorer(m)
	}
	return nil, fmt.Errorf("gauss: unknown model type %T", m)
}

// Shape implements Model.
func (g *Gaussian) Shape() (p, d int) { return g.P, g.D }

// Form implements Model.
func (g *Gaussian) Form() string { return FormFull }

func (*Gaussian) gaussian() {}

// Check reports whether the model's arrays match its shape and hold finite values.
func (g *Gaussian) Check() error {
	if g.P <= 0 || g.D <= 0 {
		return fmt.Errorf("gauss: model has empty shape P=%d D=%d", g.P, g.D)
	}
	if len(g.Mean) != g.P*g.D || len(g.LInv) != g.P*PackedLen(g.D) {
		return fmt.Errorf("gauss: model arrays (%d, %d) do not match P=%d D=%d", len(g.Mean), len(g.LInv), g.P, g.D)
	}
	return nil
}

// NotPositiveDefiniteError says that a patch's covariance could not be factorised.
type NotPositiveDefiniteError struct {
	Patch int
}

func (e *NotPositiveDefiniteError) Error() string {
	return fmt.Sprintf("gauss: covariance of patch %d is not positive definite (constant or NaN features? raise the regularisation eps)", e.Patch)
}

// ErrNonFinite is wrapped by errors about NaN or Inf values in embeddings.
var ErrNonFinite = errors.New("non-finite value")

// Backend computes fits and scores. CPU is the reference implementation; package
// gpu provides a CUDA one. gausstest.Run checks any Backend.
type Backend interface {
	// Name identifies the backend in logs and benchmarks ("cpu", "cuda:0 …").
	Name() string
	// NewAccumulator starts a streaming fit for P patches of dimension D.
	NewAccumulator(p, d int) (Accumulator, error)
	// Factorize turns statistics into a model: Σ = M2/(N−1) + eps·I = LLᵀ, keep L⁻¹.
	// A patch that is not positive definite gives a *NotPositiveDefiniteError.
	Factorize(s *Stats, eps float64) (*Gaussian, error)
	// NewScorer prepares g for scoring (on a GPU: uploads it once).
	NewScorer(g *Gaussian) (Scorer, error)
	// Close releases the backend once its accumulators and scorers are closed.
	Close() error
}

// Stager is a Backend whose device reads host memory directly from buffers it
// hands out (page-locked memory on a GPU). The pipeline writes its embeddings into
// them, so that nothing is copied again on the way to the device.
type Stager interface {
	// StagingBuffer returns a buffer of n values, ordinary Go memory as far as the
	// caller is concerned (valid after the backend is closed, freed by the GC).
	StagingBuffer(n int) []float32
}

// Accumulator adds batches of embeddings to streaming statistics.
type Accumulator interface {
	// Add adds n embeddings, x = [n][P][D]. Non-finite values are an error wrapping ErrNonFinite.
	Add(x []float32, n int) error
	// Stats returns the statistics so far. They may share memory with the
	// accumulator: valid until the next Add or Close; Clone them to keep them.
	Stats() (*Stats, error)
	// Close releases the accumulator's resources.
	Close() error
}

// Scorer computes Mahalanobis distances under one model.
type Scorer interface {
	// Score writes into dist ([n][P]) the distance of each of the n embeddings x ([n][P][D]).
	Score(x []float32, n int, dist []float32) error
	// Close releases the scorer's resources.
	Close() error
}

// InPlaceFactorizer is an Accumulator that factorises its statistics where
// they are (a GPU: nothing but the model crosses the bus, and the device copy
// serves the scorer of the returned Gaussian).
type InPlaceFactorizer interface {
	Factorize(eps float64) (*Gaussian, error)
}

// ParallelFor splits [0,n) into contiguous chunks run on GOMAXPROCS goroutines.
func ParallelFor(n int, fn func(lo, hi int)) {
	workers := min(runtime.GOMAXPROCS(0), n)
	if workers <= 1 {
		fn(0, n)
		return
	}
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		lo, hi := n*w/workers, n*(w+1)/workers
		wg.Add(1)
		go func() {
			defer wg.Done()
			fn(lo, hi)
		}()
	}
	wg.Wait()
}

// CheckBatch reports whether x holds n embeddings of P patches × D channels.
func CheckBatch(x []float32, n, p, d int) error {
	if n <= 0 {
		return fmt.Errorf("gauss: batch of %d images", n)
	}
	if len(x) < n*p*d {
		return fmt.Errorf("gauss: batch holds %d values, %d images of P=%d D=%d need %d", len(x), n, p, d, n*p*d)
	}
	return nil
}

// CheckFinite reports the first NaN or Inf of a batch [n][P][D], naming image and
// patch (wrapping ErrNonFinite). Backends check before touching their statistics.
func CheckFinite(x []float32, p, d int) error {
	const exp = 0x7f800000 // all exponent bits set: Inf or NaN
	for i, v := range x {
		if math.Float32bits(v)&exp == exp {
			return fmt.Errorf("gauss: embedding of image %d in the batch has %v at patch %d, channel %d: %w",
				i/(p*d), v, (i/d)%p, i%d, ErrNonFinite)
		}
	}
	return nil
}
