package shard

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"sort"
	"sync"

	"github.com/padim/padim/detector"
	"github.com/padim/padim/detector/atomicfile"
	"github.com/padim/padim/detector/gauss"
	"github.com/padim/padim/detector/readfile"
)

// Thresholds of a sharded fit.
//
// A single fit on untiled images derives its thresholds from every image's
// leave-one-out score: the image scored by the Gaussian fitted on all the
// others (detector: closed form on the kept samples). Shards cannot do that
// alone: each image's out-of-sample model depends on every other shard. The
// second pass does it exactly from the merged statistics: with n images,
// mean μ and centred second moment M2 (Chan-merged across shards), removing
// image i (u = x_i − μ) gives
//
//	μ₋ᵢ = μ − u/(n−1),  M2₋ᵢ = M2 − n/(n−1)·uuᵀ,  Σ₋ᵢ = M2₋ᵢ/(n−2) + εI = A − c·uuᵀ
//
// with A = M2/(n−2) + εI and c = n/((n−1)(n−2)), so by Sherman–Morrison, with
// a = uᵀA⁻¹u,
//
//	d₋ᵢ² = (x_i − μ₋ᵢ)ᵀ Σ₋ᵢ⁻¹ (x_i − μ₋ᵢ) = (n/(n−1))² · a / (1 − c·a)
//
// (two images: d² = 4‖u‖²/ε). One Cholesky factor of A per patch serves every
// image, in float64. Each calibrate shard embeds its images again, scores them
// so, makes their maps like the fit does, and keeps their image scores and the
// map pixels the fit's thinning would keep; merge then applies the fit's rule
// to all of them, in the fit's order.

// Total is the merged statistics of a sharded fit.
type Total struct {
	Model   *detector.Model // the shards' settings (no Gaussian, no calibration)
	Stats   *gauss.Stats    // full-form statistics of every sample
	Samples []float32       // every sample [N][P][D], when every input held them (else nil)
	N       int
	ID      string   // identity of this set of statistics (TotalID)
	Inputs  []string // the input files' shard identities, sorted
}

// LoadTotal reads statistics files (train --stats-out, or merge --stats-out)
// fitted with the same settings and merges them exactly, one file at a time.
// wantSamples keeps every sample too when every file holds samples.
func LoadTotal(paths []string, wantSamples bool) (*Total, error) {
	return loadTotal(paths, wantSamples, false)
}

// TotalIdentity is LoadTotal's identity and count without the statistics.
func TotalIdentity(paths []string) (*Total, error) {
	return loadTotal(paths, false, true)
}

func loadTotal(paths []string, wantSamples, idOnly bool) (*Total, error) {
	if len(paths) == 0 {
		return nil, errors.New("no statistics files")
	}
	t := &Total{}
	seen := map[string]string{}
	allSamples := true
	var single *detector.Shard
	for _, p := range paths {
		m, s, err := detector.LoadStats(p)
		if err != nil {
			return nil, err
		}
		if t.Model == nil {
			t.Model = m
		} else if m.BackboneSHA256 != t.Model.BackboneSHA256 || !slices.Equal(m.Channels, t.Model.Channels) || m.Preprocess != t.Model.Preprocess || !slices.Equal(m.Taps, t.Model.Taps) || m.Sigma != t.Model.Sigma || m.Eps != t.Model.Eps {
			return nil, fmt.Errorf("%s was fitted with another backbone, channel subset, input settings, blur or eps than %s", p, paths[0])
		}
		id := s.ID()
		if prev, ok := seen[id]; ok {
			return nil, fmt.Errorf("%s and %s hold the same images (shard %.12s): merging both would count them twice", prev, p, id)
		}
		seen[id] = p
		t.Inputs = append(t.Inputs, id)
		t.N += s.N
		if len(paths) == 1 {
			single = s
		}
		if idOnly {
			continue
		}
		st := s.Stats
		if s.Samples != nil {
			st = StatsOf(s.Samples, s.N, s.P, s.D)
			if wantSamples && allSamples {
				t.Samples = append(t.Samples, s.Samples...)
			}
		} else {
			allSamples, t.Samples = false, nil
		}
		if t.Stats == nil {
			t.Stats = st
		} else if err := t.Stats.Merge(st); err != nil {
			return nil, err
		}
	}
	slices.Sort(t.Inputs)
	if single != nil {
		t.ID = single.ID()
	} else {
		t.ID = (&detector.Shard{N: t.N, Files: mergedFiles(t.Inputs)}).ID()
	}
	if !allSamples || !wantSamples {
		t.Samples = nil
	}
	t.Model.NTrain = t.N
	return t, nil
}

func mergedFiles(ids []string) []string {
	f := make([]string, len(ids))
	for i, id := range ids {
		f[i] = "shard:" + id
	}
	return f
}

// Save writes the merged statistics as one statistics file (samples when
// every input held samples and the low-rank form is cheaper for them all,
// else full-form statistics); its identity is the Total's.
func (t *Total) Save(path string) error {
	P, D := t.Stats.P, t.Stats.D
	s := &detector.Shard{P: P, D: D, N: t.N, Files: mergedFiles(t.Inputs)}
	if len(t.Inputs) == 1 {
		return errors.New("one statistics file is already merged: use it as it is")
	}
	if t.Samples != nil && gauss.LowRankCheaper(t.N, D) {
		s.Samples = t.Samples
	} else {
		s.Stats = t.Stats
	}
	return detector.SaveStats(path, t.Model, s)
}

// LeaveOneOut scores training images out of sample from merged statistics.
type LeaveOneOut struct {
	n      int
	eps    float64
	P, D   int
	mean   []float64 // [P][D]
	factor []float64 // [P][packed D×D]: Cholesky factor of M2/(n−2)+εI
}

// NewLeaveOneOut prepares leave-one-out scores for the n images of s.
func NewLeaveOneOut(s *gauss.Stats, eps float64) (*LeaveOneOut, error) {
	if err := s.Check(); err != nil {
		return nil, err
	}
	if s.N < 2 {
		return nil, fmt.Errorf("leaving one out needs at least 2 images, the statistics hold %d", s.N)
	}
	if !(eps > 0) || math.IsInf(eps, 0) {
		return nil, fmt.Errorf("leaving one out needs a regularisation eps > 0, got %v (the fit cross-fits folds then, which shards cannot reproduce)", eps)
	}
	l := &LeaveOneOut{n: int(s.N), eps: eps, P: s.P, D: s.D, mean: s.Mean}
	if l.n == 2 {
		return l, nil
	}
	L := gauss.PackedLen(s.D)
	l.factor = make([]float64, len(s.M2))
	inv := 1 / float64(l.n-2)
	var bad error
	var mu sync.Mutex
	gauss.ParallelFor(s.P, func(lo, hi int) {
		for p := lo; p < hi; p++ {
			a := l.factor[p*L : (p+1)*L]
			m2 := s.M2[p*L : (p+1)*L]
			k := 0
			for i := 0; i < s.D; i++ {
				for j := 0; j <= i; j++ {
					a[k] = m2[k] * inv
					if i == j {
						a[k] += eps
					}
					k++
				}
			}
			if !cholPacked(a, s.D) {
				mu.Lock()
				bad = fmt.Errorf("patch %d: M2/(n−2)+εI is not positive definite", p)
				mu.Unlock()
			}
		}
	})
	return l, bad
}

// cholPacked factors a packed lower-triangular symmetric matrix in place
// (A = LLᵀ); false when it is not positive definite.
func cholPacked(a []float64, d int) bool {
	for i := 0; i < d; i++ {
		ri := a[i*(i+1)/2 : i*(i+1)/2+i+1]
		for j := 0; j <= i; j++ {
			rj := a[j*(j+1)/2 : j*(j+1)/2+j+1]
			s := ri[j] - dot(ri[:j], rj[:j])
			if i == j {
				if !(s > 0) {
					return false
				}
				ri[i] = math.Sqrt(s)
			} else {
				ri[j] = s / rj[j]
			}
		}
	}
	return true
}

func dot(a, b []float64) float64 {
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

// Distances writes the leave-one-out patch distances of one training image
// (emb: [P][D]) into dist ([P]).
func (l *LeaveOneOut) Distances(emb []float32, dist []float32) {
	P, D := l.P, l.D
	n := float64(l.n)
	g := n / (n - 1)
	c := n / ((n - 1) * (n - 2))
	L := gauss.PackedLen(D)
	gauss.ParallelFor(P, func(lo, hi int) {
		y := make([]float64, D)
		for p := lo; p < hi; p++ {
			x, mu := emb[p*D:(p+1)*D], l.mean[p*D:(p+1)*D]
			if l.n == 2 {
				s := 0.0
				for i := range x {
					u := float64(x[i]) - mu[i]
					s += u * u
				}
				dist[p] = float32(math.Sqrt(g * g * s / l.eps))
				continue
			}
			f := l.factor[p*L : (p+1)*L]
			a := 0.0
			for i := 0; i < D; i++ {
				ri := f[i*(i+1)/2 : i*(i+1)/2+i+1]
				v := (float64(x[i]) - mu[i] - dot(ri[:i], y[:i])) / ri[i]
				y[i] = v
				a += v * v
			}
			den := 1 - c*a
			if !(den > 0) {
				dist[p] = float32(math.Inf(1))
				continue
			}
			dist[p] = float32(math.Sqrt(g * g * a / den))
		}
	})
}

// CalibHeader is the first line of a calibration shard file.
type CalibHeader struct {
	Format  string `json:"format"` // "padim-calibration"
	Version int    `json:"version"`
	Shard   string `json:"shard"`
	TotalID string `json:"total_id"` // the statistics it was computed against
	N       int    `json:"n_total"`  // images in those statistics
	Stride  int    `json:"pixel_stride"`
	MapW    int    `json:"map_w"`
	MapH    int    `json:"map_h"`
	Inputs  int    `json:"n_shard"` // the shard's inputs
}

// CalibRecord is one image's out-of-sample material.
type CalibRecord struct {
	Index  int     `json:"index"` // position in the whole training list
	Key    string  `json:"key"`
	Score  float32 `json:"score,omitempty"`
	Pixels string  `json:"pixels,omitempty"` // base64 float32 little-endian: the thinned map pixels
	Error  string  `json:"error,omitempty"`
}

// Stride is the fit's thinning of out-of-sample map pixels (every stride-th
// pixel of each map) for n maps of px pixels.
func Stride(n, px int) int {
	total := n * px
	return max(1, (total+detector.MaxCalibrationPixels-1)/detector.MaxCalibrationPixels)
}

// Thin keeps every stride-th pixel of a map, as the fit does.
func Thin(m []float32, stride int) []float32 {
	out := make([]float32, 0, (len(m)+stride-1)/stride)
	for i := 0; i < len(m); i += stride {
		out = append(out, m[i])
	}
	return out
}

// EncodeFloats packs float32s as base64 of their little-endian bytes.
func EncodeFloats(v []float32) string {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	return base64.StdEncoding.EncodeToString(b)
}

// DecodeFloats unpacks EncodeFloats.
func DecodeFloats(s string) ([]float32, error) {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil || len(b)%4 != 0 {
		return nil, fmt.Errorf("bad float data")
	}
	v := make([]float32, len(b)/4)
	for i := range v {
		v[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return v, nil
}

// WriteCalib writes a calibration shard file atomically.
func WriteCalib(path string, h CalibHeader, recs []CalibRecord) error {
	h.Format, h.Version = "padim-calibration", 1
	return atomicfile.Write(path, func(w io.Writer) error {
		enc := json.NewEncoder(w)
		if err := enc.Encode(h); err != nil {
			return err
		}
		for _, r := range recs {
			if err := enc.Encode(r); err != nil {
				return err
			}
		}
		return nil
	})
}

// IsCalib reports whether a file is a calibration shard file.
func IsCalib(path string) bool {
	f, err := readfile.Open(path) // a FIFO is refused, not waited on
	if err != nil {
		return false
	}
	defer f.Close()
	b := make([]byte, 64)
	n, _ := io.ReadFull(f, b)
	return bytes.HasPrefix(b[:n], []byte(`{"format":"padim-calibration"`))
}

// ReadCalib reads a calibration shard file.
func ReadCalib(path string) (*CalibHeader, []CalibRecord, error) {
	f, err := readfile.Open(path) // a FIFO is refused, not waited on
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	dec := json.NewDecoder(bufio.NewReaderSize(f, 1<<20))
	var h CalibHeader
	if err := dec.Decode(&h); err != nil || h.Format != "padim-calibration" {
		return nil, nil, fmt.Errorf("%s is not a calibration file from padim calibrate", path)
	}
	if h.Version != 1 {
		return nil, nil, fmt.Errorf("%s: calibration format version %d, this padim reads 1", path, h.Version)
	}
	var recs []CalibRecord
	for {
		var r CalibRecord
		if err := dec.Decode(&r); err == io.EOF {
			break
		} else if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", path, err)
		}
		recs = append(recs, r)
	}
	if len(recs) != h.Inputs {
		return nil, nil, fmt.Errorf("%s holds %d records for the shard's %d inputs (cut short?)", path, len(recs), h.Inputs)
	}
	return &h, recs, nil
}

// LeaveOneOutRule is how the single fit names its leave-one-out thresholds.
const LeaveOneOutRule = "leave-one-out (every image scored by the model of all the others): "

// CombineCalib derives the thresholds of a sharded fit from its calibration
// shards: every image of the statistics t exactly once, in the order of the
// training list, under the fit's rule.
func CombineCalib(t *Total, paths []string, rule detector.Rule) (*detector.Calibration, error) {
	type scored struct {
		index  int
		key    string
		score  float32
		pixels []float32
	}
	var all []scored
	byKey := map[string]string{}
	byShard := map[string]string{}
	var first *CalibHeader
	var failed []string
	for _, p := range paths {
		h, recs, err := ReadCalib(p)
		if err != nil {
			return nil, err
		}
		if h.TotalID != t.ID || h.N != t.N {
			return nil, fmt.Errorf("%s was computed against other statistics (%.12s…, %d images) than the ones given here (%.12s…, %d images): give merge the statistics files that calibrate was given", p, h.TotalID, h.N, t.ID, t.N)
		}
		if first == nil {
			first = h
		} else if h.Stride != first.Stride || h.MapW != first.MapW || h.MapH != first.MapH {
			return nil, fmt.Errorf("%s and %s disagree on the maps (%dx%d, stride %d vs %dx%d, stride %d)", paths[0], p, h.MapW, h.MapH, h.Stride, first.MapW, first.MapH, first.Stride)
		}
		if prev, ok := byShard[h.Shard]; ok {
			return nil, fmt.Errorf("%s and %s are both calibration shard %s", prev, p, h.Shard)
		}
		byShard[h.Shard] = p
		for _, r := range recs {
			if prev, ok := byKey[r.Key]; ok {
				return nil, fmt.Errorf("%s is in both %s and %s: the calibration shards overlap (different shard counts?)", r.Key, prev, p)
			}
			byKey[r.Key] = p
			if r.Error != "" {
				failed = append(failed, r.Key+": "+r.Error)
				continue
			}
			px, err := DecodeFloats(r.Pixels)
			if err != nil {
				return nil, fmt.Errorf("%s: %s: %w", p, r.Key, err)
			}
			all = append(all, scored{r.Index, r.Key, r.Score, px})
		}
	}
	if len(all) != t.N {
		msg := fmt.Sprintf("the statistics hold %d images but the calibration shards scored %d", t.N, len(all))
		if len(failed) > 0 {
			msg += fmt.Sprintf(" (%d unreadable now, first %s)", len(failed), failed[0])
		}
		return nil, errors.New(msg + ": a calibration shard or a statistics shard is missing, or the data changed between the passes")
	}
	sort.Slice(all, func(i, j int) bool { return all[i].index < all[j].index })
	scores := make([]float32, len(all))
	var pixels []float32
	for i, s := range all {
		if i > 0 && s.index == all[i-1].index {
			return nil, fmt.Errorf("%s and %s have the same position %d in the training list", s.key, all[i-1].key, s.index)
		}
		scores[i] = s.score
		pixels = append(pixels, s.pixels...)
	}
	c, err := detector.CalibrateScores(scores, pixels, rule)
	if err != nil {
		return nil, err
	}
	c.Rule = LeaveOneOutRule + c.Rule
	return c, nil
}

// StatsOf computes the statistics of n samples [n][P][D] in float64
// throughout (two passes: mean, then centred products), so that second
// moments carry no float32 rounding: leave-one-out scores subtract one
// image's contribution from them, which amplifies their error when an image
// spans directions the others do not (n ≤ D).
func StatsOf(x []float32, n, P, D int) *gauss.Stats {
	s := gauss.NewStats(P, D)
	s.N = int64(n)
	L := gauss.PackedLen(D)
	gauss.ParallelFor(P, func(lo, hi int) {
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
	return s
}
