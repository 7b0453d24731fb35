package resnet

import (
	"fmt"
	"hash/fnv"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"

	"github.com/padim/padim/detector/fileio/safetensors"
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
// depth, and zero biases. Blocks past the sixth of a stage (only ResNet-101 and
// -152 have them) are damped further, by 6/(b+1) for block b, so that the 23 and
// 36 blocks of their layer3 grow the stream a few times as much as ResNet-50's 6
// do rather than 10–100 times. Each tensor depends only on the seed and its name.
type Random struct {
	Seed          uint64
	ResidualGamma float32 // default 0.5
}

// longStage is the block count past which Random damps residual branches further.
const longStage = 6

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
		if b := blockIndex(name); b >= longStage {
			g *= float32(longStage) / float32(b+1)
		}
		fill(g)
	}
	return v, nil
}

// blockIndex reads b from "layerN.b.…", else -1.
func blockIndex(name string) int {
	f := strings.SplitN(name, ".", 3)
	if len(f) < 3 || !strings.HasPrefix(f[0], "layer") {
		return -1
	}
	b, err := strconv.Atoi(f[1])
	if err != nil {
		return -1
	}
	return b
}

// Checkpoint supplies parameters from a safetensors file of float32 tensors named
// as in torchvision's or the CBAM authors' state_dicts (Jongchan/attention-module:
// layerN.B.cbam.ChannelGate.mlp.1/3, layerN.B.cbam.SpatialGate.spatial.conv/bn);
// a leading "module." (from DataParallel) is ignored. Tensors the graph does not
// ask for are ignored by Param; Unused finds those that betray a checkpoint of
// another architecture.
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

// Unused lists, sorted, the checkpoint's tensors in the stages a graph with these
// options builds (the stem and layer1 up to its deepest tap) that Build did not
// read: a deeper ResNet's extra blocks (layer3.6… in a resnet101 checkpoint read
// as resnet50) or CBAM modules (read as a plain ResNet). A checkpoint of the
// right architecture leaves none; the classifier (fc), layers deeper than the taps
// and BatchNorm counters (num_batches_tracked) are not listed. Call it after Build.
func (c *Checkpoint) Unused(o Options) []string {
	taps, err := normTaps(o.Taps)
	if err != nil {
		return nil
	}
	stages := []string{"conv1.", "bn1."}
	for _, l := range Layers[:slices.Index(Layers, taps[len(taps)-1])+1] {
		stages = append(stages, l+".")
	}
	var out []string
	for name := range c.tensors {
		if c.used[name] || strings.HasSuffix(name, ".num_batches_tracked") {
			continue
		}
		for _, s := range stages {
			if strings.HasPrefix(name, s) {
				out = append(out, name)
				break
			}
		}
	}
	slices.Sort(out)
	return out
}
