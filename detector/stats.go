package detector

import (
	"fmt"
	"slices"
	"strconv"

	"github.com/padim/padim/detector/gauss"
	"github.com/padim/padim/detector/safetensors"
)

// SaveStats writes a fit's statistics with the model's settings (no Gaussian,
// no calibration) so shards fitted on different machines or runs can be merged
// into one model that equals a fit on all their images.
func SaveStats(path string, m *Model, s *gauss.Stats) error {
	md := m.metadata("padim-stats")
	md["count"] = strconv.FormatInt(s.N, 10)
	ts := append([]safetensors.Tensor{
		safetensors.F64("mean", s.Mean, s.P, s.D),
		safetensors.F64("m2", s.M2, s.P, gauss.PackedLen(s.D)),
	}, m.sharedTensors()...)
	return safetensors.Write(path, md, ts)
}

// LoadStats reads a statistics file.
func LoadStats(path string) (*Model, *gauss.Stats, error) {
	f, err := safetensors.Read(path, true)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrModel, err)
	}
	m, err := parseShared(f, "padim-stats")
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %s: %v", ErrModel, path, err)
	}
	s := &gauss.Stats{P: m.GridH * m.GridW, D: len(m.Channels)}
	s.N, err = strconv.ParseInt(f.Metadata["count"], 10, 64)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %s: bad count %q", ErrModel, path, f.Metadata["count"])
	}
	for name, dst := range map[string]*[]float64{"mean": &s.Mean, "m2": &s.M2} {
		t := f.Tensor(name)
		if t == nil {
			return nil, nil, fmt.Errorf("%w: %s: tensor %q missing", ErrModel, path, name)
		}
		if *dst, err = t.Float64s(); err != nil {
			return nil, nil, fmt.Errorf("%w: %s: %v", ErrModel, path, err)
		}
	}
	if err := s.Check(); err != nil {
		return nil, nil, fmt.Errorf("%w: %s: %v", ErrModel, path, err)
	}
	return m, s, nil
}

// MergeStats merges statistics files fitted with the same backbone, channels and
// input settings, and factorises the result into a model (without thresholds).
func MergeStats(paths []string, b gauss.Backend, eps float64) (*Model, error) {
	if len(paths) == 0 {
		return nil, fmt.Errorf("no statistics files to merge")
	}
	m, s, err := LoadStats(paths[0])
	if err != nil {
		return nil, err
	}
	for _, p := range paths[1:] {
		m2, s2, err := LoadStats(p)
		if err != nil {
			return nil, err
		}
		if m2.BackboneSHA256 != m.BackboneSHA256 || !slices.Equal(m2.Channels, m.Channels) || m2.Preprocess != m.Preprocess || !slices.Equal(m2.Taps, m.Taps) {
			return nil, fmt.Errorf("%s was fitted with another backbone, channel subset or input settings than %s", p, paths[0])
		}
		if err := s.Merge(s2); err != nil {
			return nil, err
		}
	}
	if eps < 0 {
		eps = m.Eps
	}
	if m.Gaussian, err = b.Factorize(s, eps); err != nil {
		return nil, err
	}
	m.Eps, m.NTrain = eps, int(s.N)
	return m, nil
}
