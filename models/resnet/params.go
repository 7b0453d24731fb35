package resnet

import (
	"fmt"
	"hash/fnv"
	"math"
	"math/rand/v2"
	"slices"
	"strings"

	"github.com/padim/padim/detector/safetensors"
)

// Role says what a parameter is, so a random initialiser can pick its law.
type Role int

// Parameter roles.
const (
	ConvWeight Role = iota
	BNWeight
	BNResidualWeight // the last BatchNorm of a residual branch
	BNBias
	BNMean
	BNVar
	LinearWeight     // followed by a ReLU
	LinearWeightLast // not followed by a ReLU
	LinearBias
)

// Params supplies the network's parameters by their PyTorch state_dict names.
type Params interface {
	Param(name string, role Role, shape ...int) ([]float32, error)
}

// Random is a seeded initialiser: Kaiming-normal convolutions (fan-in, so
// activations keep their scale through ReLUs), identity BatchNorms whose residual
// branches are damped by ResidualGamma so the residual stream grows slowly over
// depth, and zero biases. Each tensor depends only on the seed and its name.
type Random struct {
	Seed          uint64
	ResidualGamma float32 // default 0.5
}

// Param implements Params.
func (r Random) Param(name string, role Role, shape ...int) ([]float32, error) {
	n := 1
	for _, d := range shape {
		n *= d
	}
	v := make([]float32, n)
	h := fnv.New64a()
	h.Write([]byte(name))
	rng := rand.New(rand.NewPCG(r.Seed, h.Sum64()))
	fanIn := 1
	for _, d := range shape[1:] {
		fanIn *= d
	}
	normal := func(std float64) {
		for i := range v {
			v[i] = float32(rng.NormFloat64() * std)
		}
	}
	fill := func(x float32) {
		for i := range v {
			v[i] = x
		}
	}
	switch role {
	case ConvWeight, LinearWeight:
		normal(math.Sqrt(2 / float64(fanIn)))
	case LinearWeightLast:
		normal(math.Sqrt(1 / float64(fanIn)))
	case BNWeight, BNVar:
		fill(1)
	case BNResidualWeight:
		g := r.ResidualGamma
		if g == 0 {
			g = 0.5
		}
		fill(g)
	}
	return v, nil
}

// Checkpoint supplies parameters from a safetensors file of float32 tensors named
// as in torchvision's or the CBAM authors' state_dicts; a leading "module." (from
// DataParallel) is ignored. Tensors the graph does not ask for are ignored.
type Checkpoint struct {
	Path    string
	tensors map[string]*safetensors.Tensor
	used    map[string]bool
}

// OpenCheckpoint reads a safetensors weights file.
func OpenCheckpoint(path string) (*Checkpoint, error) {
	f, err := safetensors.Read(path, false)
	if err != nil {
		return nil, fmt.Errorf("weights %s: %w", path, err)
	}
	c := &Checkpoint{Path: path, tensors: map[string]*safetensors.Tensor{}, used: map[string]bool{}}
	for i := range f.Tensors {
		t := &f.Tensors[i]
		c.tensors[strings.TrimPrefix(t.Name, "module.")] = t
	}
	return c, nil
}

// Param implements Params.
func (c *Checkpoint) Param(name string, _ Role, shape ...int) ([]float32, error) {
	t := c.tensors[name]
	if t == nil {
		return nil, fmt.Errorf("weights %s: tensor %q is missing (is it a checkpoint of this architecture?)", c.Path, name)
	}
	if !slices.Equal(t.Shape, shape) {
		return nil, fmt.Errorf("weights %s: tensor %q has shape %v, the architecture needs %v", c.Path, name, t.Shape, shape)
	}
	c.used[name] = true
	switch t.DType {
	case "F32":
		v, err := t.Float32s()
		return slices.Clone(v), err
	case "F64":
		v, err := t.Float64s()
		out := make([]float32, len(v))
		for i, x := range v {
			out[i] = float32(x)
		}
		return out, err
	}
	return nil, fmt.Errorf("weights %s: tensor %q is %s; export float32 weights (models/export.py does)", c.Path, name, t.DType)
}
