package gauss

import (
	"errors"
	"fmt"
	"math"
	"sync"

	"github.com/padim/padim/detector/internal/kernels"
)

// Leave-one-out from statistics.
//
// A fit whose samples are spread over machines (shards) keeps only their
// merged statistics, yet its thresholds come from every training image scored
// by the Gaussian of all the others. That needs no samples but the image's
// own: with n images, mean μ and centred second moment M2, removing image i
// (u = x_i − μ) gives
//
//	μ₋ᵢ = μ − u/(n−1),  M2₋ᵢ = M2 − n/(n−1)·uuᵀ,  Σ₋ᵢ = M2₋ᵢ/(n−2) + εI = A − c·uuᵀ
//
// with A = M2/(n−2) + εI and c = n/((n−1)(n−2)), so by Sherman–Morrison, with
// a = uᵀA⁻¹u,
//
//	d₋ᵢ² = (x_i − μ₋ᵢ)ᵀ Σ₋ᵢ⁻¹ (x_i − μ₋ᵢ) = (n/(n−1))² · a / (1 − c·a)
//
// (two images: d² = 4‖u‖²/ε). One Cholesky factor of A per patch serves every
// image, in float64. It equals LeaveOneOut on the samples themselves
// (gausstest checks both against refits on every backend).

// StatsLeaveOneOuter is a Backend that scores the images of statistics
// leave-one-out itself (NewLeaveOneOutScorer uses the CPU's otherwise).
type StatsLeaveOneOuter interface {
	NewLeaveOneOutScorer(s *Stats, eps float64) (Scorer, error)
}

// NewLeaveOneOutScorer prepares leave-one-out scores of the training images
// of s: the returned Scorer gives an embedding its distance under the
// Gaussian (regularised by eps > 0) fitted on every image of s but that one,
// so it must be given only images that are in s. It uses b's implementation
// when b has one, else the CPU's (float64). The scorer keeps s.Mean; s.M2 is
// no longer needed once it returns.
func NewLeaveOneOutScorer(b Backend, s *Stats, eps float64) (Scorer, error) {
	if l, ok := b.(StatsLeaveOneOuter); ok {
		return l.NewLeaveOneOutScorer(s, eps)
	}
	return CPU{}.NewLeaveOneOutScorer(s, eps)
}

// NewLeaveOneOutScorer implements StatsLeaveOneOuter.
func (CPU) NewLeaveOneOutScorer(s *Stats, eps float64) (Scorer, error) {
	if err := s.Check(); err != nil {
		return nil, err
	}
	if s.N < 2 {
		return nil, fmt.Errorf("gauss: leaving one out needs at least 2 images, the statistics hold %d", s.N)
	}
	if !(eps > 0) || math.IsInf(eps, 0) {
		return nil, fmt.Errorf("gauss: leaving one out needs a regularisation eps > 0, got %v", eps)
	}
	l := &statsLOO{n: int(s.N), eps: eps, p: s.P, d: s.D, mean: s.Mean}
	if l.n == 2 {
		return l, nil
	}
	D, L := s.D, PackedLen(s.D)
	l.factor = make([]float64, len(s.M2))
	inv := 1 / float64(l.n-2)
	var mu sync.Mutex
	firstBad := -1
	ParallelFor(s.P, func(lo, hi int) {
		a := make([]float64, D*D)
		for p := lo; p < hi; p++ {
			m2 := s.M2[p*L : (p+1)*L]
			finite := true
			k := 0
			for i := 0; i < D; i++ {
				for j := 0; j <= i; j++ {
					a[i*D+j] = m2[k] * inv
					finite = finite && !math.IsNaN(m2[k]) && !math.IsInf(m2[k], 0)
					k++
				}
				a[i*D+i] += eps
			}
			// not every LAPACK's potrf refuses NaN: check the input and the pivots
			if !finite || !kernels.CholLower(a, D) || !positiveDiagonal(a, D) {
				mu.Lock()
				if firstBad < 0 || p < firstBad {
					firstBad = p
				}
				mu.Unlock()
				continue
			}
			f := l.factor[p*L : (p+1)*L]
			k = 0
			for i := 0; i < D; i++ {
				k += copy(f[k:k+i+1], a[i*D:i*D+i+1])
			}
		}
	})
	if firstBad >= 0 {
		return nil, fmt.Errorf("gauss: leaving one out: %w", &NotPositiveDefiniteError{Patch: firstBad})
	}
	return l, nil
}

func positiveDiagonal(a []float64, d int) bool {
	for i := 0; i < d; i++ {
		if v := a[i*d+i]; !(v > 0) || math.IsInf(v, 0) {
			return false
		}
	}
	return true
}

// statsLOO scores training images out of sample from their statistics.
type statsLOO struct {
	n      int
	eps    float64
	p, d   int
	mean   []float64 // [P][D]
	factor []float64 // [P][packed D×D]: Cholesky factor of M2/(n−2)+εI (nil for two images)
}

// Score implements Scorer: dist gets each embedding's leave-one-out
// distances. An embedding the statistics cannot have held (a = uᵀA⁻¹u ≥ 1/c)
// gets +Inf at that patch.
func (l *statsLOO) Score(x []float32, n int, dist []float32) error {
	if l.mean == nil {
		return errors.New("gauss: scorer is closed")
	}
	P, D := l.p, l.d
	if err := CheckBatch(x, n, P, D); err != nil {
		return err
	}
	if len(dist) < n*P {
		return fmt.Errorf("gauss: distance buffer holds %d values, need %d", len(dist), n*P)
	}
	if err := CheckFinite(x[:n*P*D], P, D); err != nil {
		return err
	}
	nf := float64(l.n)
	g := nf / (nf - 1)
	c := nf / ((nf - 1) * (nf - 2))
	L := PackedLen(D)
	ParallelFor(P, func(lo, hi int) {
		y := make([]float64, D)
		for p := lo; p < hi; p++ {
			mu := l.mean[p*D : (p+1)*D]
			for b := 0; b < n; b++ {
				xp := x[(b*P+p)*D : (b*P+p+1)*D]
				out := &dist[b*P+p]
				if l.n == 2 {
					s := 0.0
					for i := range xp {
						u := float64(xp[i]) - mu[i]
						s += u * u
					}
					*out = float32(math.Sqrt(g * g * s / l.eps))
					continue
				}
				// a = ‖L⁻¹u‖², forward substitution on the packed factor
				f := l.factor[p*L : (p+1)*L]
				a := 0.0
				for i := 0; i < D; i++ {
					ri := f[i*(i+1)/2 : i*(i+1)/2+i+1]
					v := (float64(xp[i]) - mu[i] - dot64(ri[:i], y[:i])) / ri[i]
					y[i] = v
					a += v * v
				}
				den := 1 - c*a
				if !(den > 0) {
					*out = float32(math.Inf(1))
					continue
				}
				*out = float32(math.Sqrt(g * g * a / den))
			}
		}
	})
	return nil
}

// Close implements Scorer.
func (l *statsLOO) Close() error { l.mean, l.factor = nil, nil; return nil }

func dot64(a, b []float64) float64 {
	var s0, s1, s2, s3 float64
	n := len(a)
	b = b[:n]
	i := 0
	for ; i+4 <= n; i += 4 {
		s0 += a[i] * b[i]
		s1 += a[i+1] * b[i+1]
		s2 += a[i+2] * b[i+2]
		s3 += a[i+3] * b[i+3]
	}
	for ; i < n; i++ {
		s0 += a[i] * b[i]
	}
	return (s0 + s1) + (s2 + s3)
}

// StatsOf computes the statistics of n samples x ([n][P][D]) in float64
// throughout (two passes: mean, then centred products), so that second
// moments carry no float32 rounding: leave-one-out scores subtract one
// image's contribution from them, which amplifies their error when an image
// spans directions the others do not (n ≤ D). An accumulator's statistics
// (float32 products) serve fits; these serve leave-one-out from statistics.
func StatsOf(x []float32, n, P, D int) (*Stats, error) {
	if P <= 0 || D <= 0 {
		return nil, fmt.Errorf("gauss: statistics shape P=%d D=%d", P, D)
	}
	if err := CheckBatch(x, n, P, D); err != nil {
		return nil, err
	}
	if err := CheckFinite(x[:n*P*D], P, D); err != nil {
		return nil, err
	}
	s := NewStats(P, D)
	s.N = int64(n)
	L := PackedLen(D)
	ParallelFor(P, func(lo, hi int) {
		u := make([]float64, D)
		for p := lo; p < hi; p++ {
			mean := s.Mean[p*D : (p+1)*D]
			for b := 0; b < n; b++ {
				for i, v := range x[(b*P+p)*D : (b*P+p+1)*D] {
					mean[i] += float64(v)
				}
			}
			for i := range mean {
				mean[i] /= float64(n)
			}
			m2 := s.M2[p*L : (p+1)*L]
			for b := 0; b < n; b++ {
				for i, v := range x[(b*P+p)*D : (b*P+p+1)*D] {
					u[i] = float64(v) - mean[i]
				}
				k := 0
				for i := 0; i < D; i++ {
					ui := u[i]
					row := m2[k : k+i+1]
					for j := range row {
						row[j] += ui * u[j]
					}
					k += i + 1
				}
			}
		}
	})
	return s, nil
}
