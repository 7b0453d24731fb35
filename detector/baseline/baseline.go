// Package baseline holds the nearest-neighbour baselines of the paper's method
// table, on the same pipeline and backbone as PaDiM:
//
//   - SPADE (Cohen & Hoshen 2020): image-level kNN on pooled features (the K
//     nearest training images, the image score their mean distance), then for
//     every patch its nearest neighbour among all patches of those K images;
//   - PatchCore (Roth et al. 2022): locally aware patch features (3×3 average
//     pooling of layer2 and layer3, upsampled to layer2's grid), a memory bank
//     subsampled by greedy coreset selection, each patch's distance to its
//     nearest bank feature, and the paper's reweighted image score.
//
// They are methods beside PaDiM's Gaussian, not Gaussians: each fitted model
// (Model) scores embeddings itself, on the CPU, with an image score of its own,
// and the detector's pipeline, maps, verdicts and model file take them as they
// take PaDiM's (detector.Method).
package baseline

import (
	"errors"
	"fmt"
	"math"

	"github.com/padim/padim/detector/baseline/knn"
	"github.com/padim/padim/detector/gauss"
)

// Method names, as stored in a model file.
const (
	MethodSPADE     = "spade"
	MethodPatchCore = "patchcore"
)

// Defaults of the methods.
const (
	DefaultK         = 50  // SPADE: nearest training images
	DefaultCoreset   = 0.1 // PatchCore: fraction of the patches kept in the bank
	DefaultReweightB = 9   // PatchCore: bank neighbours of the image score's reweighting
	CoresetProj      = 128 // PatchCore: dimensions of the projection the coreset is selected in
)

// Model is a baseline's fitted model: *SPADE or *PatchCore.
type Model interface {
	Shape() (p, d int)
	Form() string // the method's name
	// NewScorer prepares the model for scoring.
	NewScorer() (Scorer, error)
}

// Scorer scores embeddings under a baseline's model. Besides each patch's
// distance (Score) it gives an image score per sample, which is not the
// maximum of the map, and can leave a training image (a group of the model's
// references) out, for out-of-sample calibration: skip names per sample the
// group to leave out.
type Scorer interface {
	gauss.Scorer
	ScoreSamples(x []float32, n int, skip []int32, dist, image []float32) error
}

// SPADE is a fitted SPADE model: every training patch feature and every
// training image's pooled feature.
type SPADE struct {
	P, D, N int
	K       int       // nearest training images
	Gallery []float32 // [N][P][D]
	Pooled  []float32 // [N][D]: the mean of each image's patch features
	Backing any       // keeps alive the memory the arrays live in, when not Go's
}

// FitSPADE keeps the samples x ([n][P][D]) as a SPADE gallery.
func FitSPADE(x []float32, n, p, d, k int) (*SPADE, error) {
	if n < 1 || len(x) < n*p*d {
		return nil, fmt.Errorf("baseline: SPADE needs at least one training sample, got %d", n)
	}
	if err := gauss.CheckFinite(x[:n*p*d], p, d); err != nil {
		return nil, err
	}
	m := &SPADE{P: p, D: d, N: n, K: max(1, k), Gallery: x[:n*p*d], Pooled: make([]float32, n*d)}
	for b := 0; b < n; b++ {
		pool(x[b*p*d:(b+1)*p*d], p, d, m.Pooled[b*d:(b+1)*d])
	}
	return m, m.Check()
}

// pool writes the mean over the p patches of x ([p][d]) into out.
func pool(x []float32, p, d int, out []float32) {
	acc := make([]float64, d)
	for q := 0; q < p; q++ {
		for i, v := range x[q*d : (q+1)*d] {
			acc[i] += float64(v)
		}
	}
	for i := range out {
		out[i] = float32(acc[i] / float64(p))
	}
}

// Shape implements Model.
func (m *SPADE) Shape() (int, int) { return m.P, m.D }

// Form implements Model.
func (m *SPADE) Form() string { return MethodSPADE }

// Check reports whether the arrays match the shape.
func (m *SPADE) Check() error {
	if m.P <= 0 || m.D <= 0 || m.N <= 0 || m.K <= 0 || len(m.Gallery) != m.N*m.P*m.D || len(m.Pooled) != m.N*m.D {
		return fmt.Errorf("baseline: SPADE arrays (%d, %d) do not match N=%d P=%d D=%d K=%d", len(m.Gallery), len(m.Pooled), m.N, m.P, m.D, m.K)
	}
	return nil
}

// NewScorer implements Model.
func (m *SPADE) NewScorer() (Scorer, error) {
	if err := m.Check(); err != nil {
		return nil, err
	}
	s := &spadeScorer{m: m}
	var err error
	group := make([]int32, m.N)
	for i := range group {
		group[i] = int32(i)
	}
	if s.pooled, err = knn.NewSet(m.Pooled, m.N, m.D, group); err != nil {
		return nil, err
	}
	s.images = make([]*knn.Set, m.N)
	for i := range s.images {
		if s.images[i], err = knn.NewSet(m.Gallery[i*m.P*m.D:(i+1)*m.P*m.D], m.P, m.D, nil); err != nil {
			return nil, err
		}
	}
	return s, nil
}

type spadeScorer struct {
	m      *SPADE
	pooled *knn.Set
	images []*knn.Set // each training image's patches
}

func (s *spadeScorer) Score(x []float32, n int, dist []float32) error {
	return s.ScoreSamples(x, n, nil, dist, make([]float32, n))
}

func (s *spadeScorer) ScoreSamples(x []float32, n int, skip []int32, dist, image []float32) error {
	m := s.m
	if m == nil {
		return errors.New("baseline: scorer is closed")
	}
	P, D := m.P, m.D
	if err := gauss.CheckBatch(x, n, P, D); err != nil {
		return err
	}
	k := min(m.K, m.N)
	if skip != nil {
		k = min(k, m.N-1)
	}
	if k < 1 {
		return errors.New("baseline: SPADE left with no training image to compare with")
	}
	q := make([]float32, D)
	nd, ni := make([]float32, k), make([]int32, k)
	pd, pi := make([]float32, P), make([]int32, P)
	for b := 0; b < n; b++ {
		xb := x[b*P*D : (b+1)*P*D]
		pool(xb, P, D, q)
		var sk []int32
		if skip != nil {
			sk = skip[b : b+1]
		}
		if err := s.pooled.Nearest(q, 1, k, sk, nd, ni); err != nil {
			return err
		}
		var mean float64
		for _, v := range nd {
			mean += float64(v)
		}
		image[b] = float32(mean / float64(k))
		// each patch's nearest neighbour among every patch of the K images
		out := dist[b*P : (b+1)*P]
		for i := range out {
			out[i] = float32(math.Inf(1))
		}
		for _, img := range ni {
			if err := s.images[img].Nearest(xb, P, 1, nil, pd, pi); err != nil {
				return err
			}
			for i, v := range pd {
				out[i] = min(out[i], v)
			}
		}
	}
	return nil
}

func (s *spadeScorer) Close() error { s.m = nil; return nil }

// PatchCore is a fitted PatchCore model: the coreset memory bank.
type PatchCore struct {
	P, D     int
	M        int       // bank size
	Bank     []float32 // [M][D]
	Reweight int       // b: bank neighbours of the reweighted image score (≤ 1: the plain maximum)
	Group    []int32   // per bank feature, its training sample (calibration only; not saved)
	Backing  any
}

// FitPatchCore selects a coreset of fraction·n·P of the patch features of x
// ([n][P][D]) by greedy k-centre in a seeded random projection to 128
// dimensions. group, when not nil, names per sample its image (kept on the
// bank features, to leave an image out in calibration).
func FitPatchCore(x []float32, n, p, d int, fraction float64, reweight int, seed uint64, group []int32) (*PatchCore, error) {
	if n < 1 || len(x) < n*p*d {
		return nil, fmt.Errorf("baseline: PatchCore needs at least one training sample, got %d", n)
	}
	if !(fraction > 0 && fraction <= 1) {
		return nil, fmt.Errorf("baseline: coreset fraction %v: want (0,1]", fraction)
	}
	if err := gauss.CheckFinite(x[:n*p*d], p, d); err != nil {
		return nil, err
	}
	total := n * p
	size := max(1, int(math.Round(fraction*float64(total))))
	picked, err := knn.Coreset(x, total, d, size, CoresetProj, seed)
	if err != nil {
		return nil, err
	}
	m := &PatchCore{P: p, D: d, M: len(picked), Bank: make([]float32, len(picked)*d), Reweight: reweight}
	if group != nil {
		m.Group = make([]int32, len(picked))
	}
	for i, j := range picked {
		copy(m.Bank[i*d:(i+1)*d], x[j*d:(j+1)*d])
		if group != nil {
			m.Group[i] = group[j/p]
		}
	}
	return m, nil
}

// Shape implements Model.
func (m *PatchCore) Shape() (int, int) { return m.P, m.D }

// Form implements Model.
func (m *PatchCore) Form() string { return MethodPatchCore }

// Check reports whether the arrays match the shape.
func (m *PatchCore) Check() error {
	if m.P <= 0 || m.D <= 0 || m.M <= 0 || len(m.Bank) != m.M*m.D || m.Reweight < 0 || m.Reweight > 1000 {
		return fmt.Errorf("baseline: PatchCore bank of %d values does not match M=%d D=%d (reweight %d)", len(m.Bank), m.M, m.D, m.Reweight)
	}
	return nil
}

// NewScorer implements Model.
func (m *PatchCore) NewScorer() (Scorer, error) {
	if err := m.Check(); err != nil {
		return nil, err
	}
	set, err := knn.NewSet(m.Bank, m.M, m.D, m.Group)
	if err != nil {
		return nil, err
	}
	return &patchCoreScorer{m: m, bank: set}, nil
}

type patchCoreScorer struct {
	m    *PatchCore
	bank *knn.Set
}

func (s *patchCoreScorer) Score(x []float32, n int, dist []float32) error {
	return s.ScoreSamples(x, n, nil, dist, make([]float32, n))
}

// ScoreSamples: each patch's distance to its nearest bank feature; the image
// score is the largest, s*, at test patch t* whose nearest bank feature is
// m*, reweighted as in the PatchCore paper: s = (1 − e^{‖t*−m*‖} /
// Σ_{m∈N_b(m*)} e^{‖t*−m‖})·s*, N_b(m*) the b bank features nearest m*.
func (s *patchCoreScorer) ScoreSamples(x []float32, n int, skip []int32, dist, image []float32) error {
	m := s.m
	if m == nil {
		return errors.New("baseline: scorer is closed")
	}
	P, D := m.P, m.D
	if err := gauss.CheckBatch(x, n, P, D); err != nil {
		return err
	}
	var sk []int32
	if skip != nil {
		if m.Group == nil {
			return errors.New("baseline: leaving images out needs the bank's groups")
		}
		sk = make([]int32, n*P)
		for b := 0; b < n; b++ {
			for q := 0; q < P; q++ {
				sk[b*P+q] = skip[b]
			}
		}
	}
	idx := make([]int32, n*P)
	if err := s.bank.Nearest(x, n*P, 1, sk, dist[:n*P], idx); err != nil {
		return err
	}
	nb := min(m.Reweight, m.M)
	nd, ni := make([]float32, max(nb, 1)), make([]int32, max(nb, 1))
	for b := 0; b < n; b++ {
		best := 0
		for q := 1; q < P; q++ {
			if dist[b*P+q] > dist[b*P+best] {
				best = q
			}
		}
		star := float64(dist[b*P+best])
		image[b] = float32(star)
		if nb <= 1 || idx[b*P+best] < 0 || math.IsInf(star, 0) {
			continue
		}
		// N_b(m*): the bank features nearest m* (m* itself first)
		ms := m.Bank[int(idx[b*P+best])*D : (int(idx[b*P+best])+1)*D]
		if err := s.bank.Nearest(ms, 1, nb, nil, nd, ni); err != nil {
			return err
		}
		t := x[(b*P+best)*D : (b*P+best+1)*D]
		lse := math.Inf(-1)
		for _, j := range ni {
			if j < 0 {
				continue
			}
			var s2 float64
			for c, v := range m.Bank[int(j)*D : (int(j)+1)*D] {
				u := float64(t[c] - v)
				s2 += u * u
			}
			dj := math.Sqrt(s2)
			lse = math.Max(lse, dj) + math.Log1p(math.Exp(-math.Abs(lse-dj))) // log(e^lse + e^dj)
		}
		w := 1 - math.Exp(star-lse)
		image[b] = float32(w * star)
	}
	return nil
}

func (s *patchCoreScorer) Close() error { s.m = nil; return nil }
