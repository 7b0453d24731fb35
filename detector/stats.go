package detector

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/padim/padim/detector/embed"
	"github.com/padim/padim/detector/fileio/safetensors"
	"github.com/padim/padim/detector/gauss"
)

// Shard is what a fit on part of the data keeps so that parts fitted on
// different machines merge into the model of one fit on all of them: the
// full form's statistics, or the samples themselves (the low-rank form's, or
// whichever is smaller).
type Shard struct {
	P, D    int
	N       int          // samples
	Stats   *gauss.Stats // or
	Samples []float32    // [N][P][D]
	Files   []string     // the images fitted, for the shard's identity
	id      string       // read from a shard file
}

// ID identifies the images of a shard: merging a shard twice would count them twice.
func (s *Shard) ID() string {
	if s.id != "" {
		return s.id
	}
	h := sha256.New()
	files := slices.Clone(s.Files)
	slices.Sort(files)
	fmt.Fprintf(h, "%d\n%s", s.N, strings.Join(files, "\n"))
	return hex.EncodeToString(h.Sum(nil))[:32]
}

// SaveStats writes a fit's shard with the model's settings (no Gaussian, no
// calibration), to be merged with other shards (MergeStats).
func SaveStats(path string, m *Model, s *Shard) error {
	if m.Method != "" && m.Method != MethodPaDiM {
		return fmt.Errorf("shards merge PaDiM's statistics; a %s model is not made of shards", m.Method)
	}
	md := m.metadata("padim-stats")
	md["count"] = strconv.Itoa(s.N)
	md["shard_id"] = s.ID()
	var ts []safetensors.Tensor
	if s.Stats != nil {
		md["shard"] = "stats"
		ts = []safetensors.Tensor{
			safetensors.F64("mean", s.Stats.Mean, s.P, s.D),
			safetensors.F64("m2", s.Stats.M2, s.P, gauss.PackedLen(s.D)),
		}
	} else {
		md["shard"] = "samples"
		ts = []safetensors.Tensor{safetensors.F32("samples", s.Samples, s.N, s.P, s.D)}
	}
	return safetensors.Write(path, md, append(ts, m.sharedTensors()...))
}

// LoadStats reads a shard file.
func LoadStats(path string) (*Model, *Shard, error) {
	f, err := safetensors.Read(path, true)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", ErrModel, err)
	}
	m, err := parseShared(f, "padim-stats")
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %s: %w", ErrModel, path, err)
	}
	bad := func(format string, a ...any) (*Model, *Shard, error) {
		return nil, nil, fmt.Errorf("%w: %s: %s", ErrModel, path, fmt.Sprintf(format, a...))
	}
	wrap := func(what string, err error) (*Model, *Shard, error) {
		return nil, nil, fmt.Errorf("%w: %s: %s: %w", ErrModel, path, what, err)
	}
	s := &Shard{P: m.GridH * m.GridW, D: len(m.Channels)}
	if s.N, err = strconv.Atoi(f.Metadata["count"]); err != nil || s.N < 1 {
		return bad("bad count %q", f.Metadata["count"])
	}
	switch f.Metadata["shard"] {
	case "stats":
		st := &gauss.Stats{P: s.P, D: s.D, N: int64(s.N)}
		for name, dst := range map[string]*[]float64{"mean": &st.Mean, "m2": &st.M2} {
			t := f.Tensor(name)
			if t == nil {
				return bad("tensor %q missing", name)
			}
			if *dst, err = t.Float64s(); err != nil {
				return wrap("tensor "+name, err)
			}
		}
		if err := st.Check(); err != nil {
			return wrap("statistics", err)
		}
		s.Stats = st
	case "samples":
		t := f.Tensor("samples")
		if t == nil {
			return bad("tensor \"samples\" missing")
		}
		if !slices.Equal(t.Shape, []int{s.N, s.P, s.D}) {
			return bad("samples have shape %v, want [%d %d %d]", t.Shape, s.N, s.P, s.D)
		}
		if s.Samples, err = t.Float32s(); err != nil {
			return wrap("tensor samples", err)
		}
		if err := gauss.CheckFinite(s.Samples, s.P, s.D); err != nil {
			return wrap("samples", err)
		}
	default:
		return bad("metadata shard=%q: want stats or samples", f.Metadata["shard"])
	}
	s.id = f.Metadata["shard_id"]
	m.NTrain = s.N
	return m, s, nil
}

// ShardSet is statistics files checked to be parts of one fit: every
// setting the same (SameFit) and no file's images in two files.
type ShardSet struct {
	Model  *Model   // the fit's settings (no Gaussian, no calibration); NTrain counts every sample
	N      int      // samples in all the files
	Inputs []string // the files' shard identities, sorted
	ID     string   // the set's identity: a single file's own, else that of their merge
}

// LoadShards reads statistics files one at a time, checks each against the
// first (SameFit) and against the files before it (the same images twice),
// and hands each to fn, when not nil, which may keep it.
func LoadShards(paths []string, fn func(path string, s *Shard) error) (*ShardSet, error) {
	if len(paths) == 0 {
		return nil, errors.New("no statistics files to merge")
	}
	set := &ShardSet{}
	seen := map[string]string{}
	var single *Shard
	for _, p := range paths {
		m, s, err := LoadStats(p)
		if err != nil {
			return nil, err
		}
		if set.Model == nil {
			set.Model = m
		} else if err := SameFit(set.Model, m); err != nil {
			return nil, fmt.Errorf("%s and %s are not parts of one fit: %w", paths[0], p, err)
		}
		id := s.ID()
		if prev, ok := seen[id]; ok {
			return nil, fmt.Errorf("%s and %s hold the same images (shard %.12s): merging both would count them twice", prev, p, id)
		}
		seen[id] = p
		set.Inputs = append(set.Inputs, id)
		set.N += s.N
		if len(paths) == 1 {
			single = s
		}
		if fn != nil {
			if err := fn(p, s); err != nil {
				return nil, err
			}
		}
	}
	slices.Sort(set.Inputs)
	if single != nil {
		set.ID = single.ID()
	} else {
		set.ID = (&Shard{N: set.N, Files: mergedFiles(set.Inputs)}).ID()
	}
	set.Model.NTrain = set.N
	return set, nil
}

func mergedFiles(ids []string) []string {
	f := make([]string, len(ids))
	for i, id := range ids {
		f[i] = "shard:" + id
	}
	return f
}

// SameFit reports the first setting in which two models or statistics files
// differ among those every part of one fit shares: the backbone, its taps,
// the channel subset, the input settings (preprocessing and decoding), the
// regularisation ε, the blur σ, the method and its pooling, and the grid.
func SameFit(a, b *Model) error {
	differ := func(what string, x, y any) error {
		return fmt.Errorf("%s %v vs %v", what, x, y)
	}
	switch {
	case a.BackboneSHA256 != b.BackboneSHA256:
		return differ("backbone (sha256)", a.BackboneSHA256, b.BackboneSHA256)
	case !slices.Equal(a.Taps, b.Taps):
		return differ("taps", a.Taps, b.Taps)
	case a.TotalChannels != b.TotalChannels:
		return differ("total channels", a.TotalChannels, b.TotalChannels)
	case !slices.Equal(a.Channels, b.Channels):
		return differ("channel subset", fmt.Sprintf("%d channels", len(a.Channels)), fmt.Sprintf("%d channels (or other indices)", len(b.Channels)))
	case a.Preprocess != b.Preprocess:
		return differ("input settings", fmt.Sprintf("%+v", a.Preprocess), fmt.Sprintf("%+v", b.Preprocess))
	case a.Eps != b.Eps:
		return differ("regularisation eps", a.Eps, b.Eps)
	case a.Sigma != b.Sigma:
		return differ("blur sigma", a.Sigma, b.Sigma)
	case a.method() != b.method():
		return differ("method", a.method(), b.method())
	case a.Pool != b.Pool:
		return differ("pooling", a.Pool, b.Pool)
	case a.GridH != b.GridH || a.GridW != b.GridW:
		return differ("grid", fmt.Sprintf("%dx%d", a.GridH, a.GridW), fmt.Sprintf("%dx%d", b.GridH, b.GridW))
	}
	return nil
}

// Total is the merged statistics of a sharded fit, exact: a shard's samples
// become float64 statistics (gauss.StatsOf), so that leave-one-out scores
// from them (CalibrateShard) equal those of one fit on every sample.
type Total struct {
	ShardSet
	Stats   *gauss.Stats // full-form statistics of every sample
	Samples []float32    // every sample [N][P][D], when asked for and every file held them (else nil)
}

// LoadTotal reads statistics files (train --stats-out, or a merge of them)
// of one fit (LoadShards) and merges them exactly, one file at a time;
// wantSamples keeps every sample too when every file holds samples.
func LoadTotal(paths []string, wantSamples bool) (*Total, error) {
	t := &Total{}
	allSamples := true
	set, err := LoadShards(paths, func(_ string, s *Shard) error {
		st := s.Stats
		if s.Samples != nil {
			var err error
			if st, err = gauss.StatsOf(s.Samples, s.N, s.P, s.D); err != nil {
				return err
			}
			if wantSamples && allSamples {
				t.Samples = append(t.Samples, s.Samples...)
			}
		} else {
			allSamples, t.Samples = false, nil
		}
		if t.Stats == nil {
			t.Stats = st
			return nil
		}
		return t.Stats.Merge(st)
	})
	if err != nil {
		return nil, err
	}
	t.ShardSet = *set
	if !allSamples || !wantSamples {
		t.Samples = nil
	}
	return t, nil
}

// Save writes the merged statistics as one statistics file (samples when
// every input held samples and the low-rank form is cheaper for them all,
// else full-form statistics); its identity is the Total's.
func (t *Total) Save(path string) error {
	if len(t.Inputs) == 1 {
		return errors.New("one statistics file is already merged: use it as it is")
	}
	P, D := t.Stats.P, t.Stats.D
	s := &Shard{P: P, D: D, N: t.N, Files: mergedFiles(t.Inputs)}
	if t.Samples != nil && gauss.LowRankCheaper(t.N, D) {
		s.Samples = t.Samples
	} else {
		s.Stats = t.Stats
	}
	return SaveStats(path, t.Model, s)
}

// ErrLowRankNeedsSamples is MergeStats's refusal of the low-rank form when
// some files hold only full-form statistics.
var ErrLowRankNeedsSamples = errors.New("the low-rank form needs every shard's samples; some shards hold only statistics")

// MergeStats merges the statistics files of one fit (LoadShards) into one
// model (without thresholds) that equals one fit on all their images:
// samples are concatenated for the low-rank form when it is cheaper (form
// auto) or asked for; otherwise everything becomes full-form statistics and
// merges exactly. eps < 0 keeps the fit's ε.
func MergeStats(paths []string, b gauss.Backend, eps float64, form string) (*Model, error) {
	if form == "" {
		form = FormAuto
	}
	var shards []*Shard
	set, err := LoadShards(paths, func(_ string, s *Shard) error {
		shards = append(shards, s)
		return nil
	})
	if err != nil {
		return nil, err
	}
	m, n := set.Model, set.N
	if eps < 0 {
		eps = m.Eps
	}
	P, D := shards[0].P, shards[0].D
	allSamples := true
	for _, s := range shards {
		allSamples = allSamples && s.Samples != nil
	}
	_, hasLowRank := b.(gauss.LowRankBackend)
	if allSamples && hasLowRank && (form == FormLowRank || form == FormAuto && gauss.LowRankCheaper(n, D)) {
		x := make([]float32, 0, n*P*D)
		for _, s := range shards {
			x = append(x, s.Samples...)
		}
		g, err := b.(gauss.LowRankBackend).FactorizeLowRank(x, gauss.All(n), P, D, eps)
		if err != nil {
			return nil, err
		}
		m.Gaussian, m.Eps, m.NTrain = g, eps, n
		return m, nil
	}
	if form == FormLowRank {
		return nil, ErrLowRankNeedsSamples
	}
	acc, err := b.NewAccumulator(P, D)
	if err != nil {
		return nil, err
	}
	defer acc.Close()
	for _, s := range shards {
		if s.Samples != nil {
			if err := acc.Add(s.Samples, s.N); err != nil {
				return nil, err
			}
		}
	}
	total, err := acc.Stats()
	if err != nil {
		return nil, err
	}
	for _, s := range shards {
		if s.Stats != nil {
			if err := total.Merge(s.Stats); err != nil {
				return nil, err
			}
		}
	}
	if m.Gaussian, err = b.Factorize(total, eps); err != nil {
		return nil, err
	}
	m.Eps, m.NTrain = eps, n
	return m, nil
}

// ShardKeepsSamples reports whether a training shard of n images should keep
// its samples (the low-rank form) rather than full-form statistics: when they
// are no larger (n ≤ D+2), fit the sample budget (DefaultSampleMemory, and half
// of budget when > 0), and the low-rank form can hold them (ε > 0). Statistics
// from the fit's accumulator carry float32 rounding in their second moments,
// which leave-one-out calibration amplifies when the images are few for their
// dimension; samples give exact statistics (LoadTotal). channels nil means dim
// channels drawn with seed, as Train draws them.
func ShardKeepsSamples(taps []embed.TapShape, channels []int, dim int, seed uint64, n int, eps float64, budget int64) bool {
	if eps <= 0 {
		return false
	}
	if channels == nil {
		channels = embed.RandomChannels(embed.TotalChannels(taps), dim, seed)
	}
	l, err := embed.NewLayout(taps, channels)
	if err != nil {
		return false
	}
	P, D := l.P(), l.D()
	limit := int64(DefaultSampleMemory)
	if budget > 0 {
		limit = min(limit, budget/2)
	}
	return n <= D+2 && int64(n)*int64(P)*int64(D)*4 <= limit
}
