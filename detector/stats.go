package detector

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/padim/padim/detector/gauss"
	"github.com/padim/padim/detector/safetensors"
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
		return nil, nil, fmt.Errorf("%w: %s: %v", ErrModel, path, err)
	}
	bad := func(format string, a ...any) (*Model, *Shard, error) {
		return nil, nil, fmt.Errorf("%w: %s: %s", ErrModel, path, fmt.Sprintf(format, a...))
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
				return bad("%v", err)
			}
		}
		if err := st.Check(); err != nil {
			return bad("%v", err)
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
			return bad("%v", err)
		}
		if err := gauss.CheckFinite(s.Samples, s.P, s.D); err != nil {
			return bad("%v", err)
		}
	default:
		return bad("metadata shard=%q: want stats or samples", f.Metadata["shard"])
	}
	s.id = f.Metadata["shard_id"]
	m.NTrain = s.N
	return m, s, nil
}

// MergeStats merges shards fitted with the same backbone, channels and input
// settings into one model (without thresholds) that equals one fit on all
// their images: samples are concatenated for the low-rank form when it is
// cheaper (form auto) or asked for; otherwise everything becomes full-form
// statistics and merges exactly.
func MergeStats(paths []string, b gauss.Backend, eps float64, form string) (*Model, error) {
	if len(paths) == 0 {
		return nil, fmt.Errorf("no statistics files to merge")
	}
	if form == "" {
		form = FormAuto
	}
	var m *Model
	var shards []*Shard
	ids := map[string]string{}
	n := 0
	for _, p := range paths {
		mi, s, err := LoadStats(p)
		if err != nil {
			return nil, err
		}
		if m == nil {
			m = mi
		} else if mi.BackboneSHA256 != m.BackboneSHA256 || !slices.Equal(mi.Channels, m.Channels) || mi.Preprocess != m.Preprocess || !slices.Equal(mi.Taps, m.Taps) {
			return nil, fmt.Errorf("%s was fitted with another backbone, channel subset or input settings than %s", p, paths[0])
		}
		if id := s.id; id != "" {
			if prev, ok := ids[id]; ok {
				return nil, fmt.Errorf("%s and %s hold the same images (shard %s): merging both would count them twice", prev, p, id[:12])
			}
			ids[id] = p
		}
		shards = append(shards, s)
		n += s.N
	}
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
		return nil, fmt.Errorf("the low-rank form needs every shard's samples; some shards hold only statistics (merge with the full form)")
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
