// Package resnet builds ResNet feature extractors as ONNX graphs in Go: the stem
// and layer1–4 of ResNet-18/50/101/152, Wide-ResNet-50-2 and the CBAM variants
// Resnet50/101/152_CBAM (a CBAM module in every Bottleneck after bn3, before the
// residual add), with every BatchNorm folded into its convolution. A graph
// outputs the taps asked for (default layer1, layer2, layer3) and computes no
// deeper than the deepest of them. Parameters come from a seeded initialiser or a
// PyTorch checkpoint (Params).
package resnet

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"

	"github.com/padim/padim/models/onnxpb"
)

// Arches lists the supported architectures.
var Arches = []string{"resnet50_cbam", "resnet101_cbam", "resnet152_cbam", "resnet50", "resnet101", "resnet152", "wide_resnet50_2", "resnet18"}

// Layers are the taps a graph can output, shallowest first: the outputs of the
// four residual stages, at strides 4, 8, 16 and 32.
var Layers = []string{"layer1", "layer2", "layer3", "layer4"}

// DefaultTaps are the outputs of a graph built without Options.Taps: PaDiM's
// layer1+2+3. layer4 is opt-in because it adds most of a ResNet's weights (and so
// the graph's size, which every padim model embeds: ResNet-50 34 → 94 MB) and
// its compute, which ONNX Runtime 1.24 runs even when layer4 is not asked for
// (+21–30 % per image on ResNet-18/50/50_CBAM/Wide-50 at 224²;
// BenchmarkUnrequestedTaps).
var DefaultTaps = []string{"layer1", "layer2", "layer3"}

// Options describe the graph to build.
type Options struct {
	Arch      string
	InputSize int        // square input side (default 224); a multiple of 16, of 32 with layer4
	Taps      []string   // outputs, a subset of Layers (default DefaultTaps); emitted shallowest first
	Mean, Std [3]float32 // recorded in metadata_props for the extractor
	Source    string     // where the weights came from, recorded in metadata
	Seed      uint64     // recorded in metadata when the weights are random
}

type spec struct {
	bottleneck bool
	blocks     [4]int
	widthMul   int // bottleneck width = planes·widthMul (2 for wide_resnet50_2)
	cbam       bool
}

var specs = map[string]spec{
	"resnet18":        {false, [4]int{2, 2, 2, 2}, 1, false},
	"resnet50":        {true, [4]int{3, 4, 6, 3}, 1, false},
	"resnet101":       {true, [4]int{3, 4, 23, 3}, 1, false},
	"resnet152":       {true, [4]int{3, 8, 36, 3}, 1, false},
	"wide_resnet50_2": {true, [4]int{3, 4, 6, 3}, 2, false},
	"resnet50_cbam":   {true, [4]int{3, 4, 6, 3}, 1, true},
	"resnet101_cbam":  {true, [4]int{3, 4, 23, 3}, 1, true},
	"resnet152_cbam":  {true, [4]int{3, 8, 36, 3}, 1, true},
}

func lookup(arch string) (spec, error) {
	s, ok := specs[arch]
	if !ok {
		return s, fmt.Errorf("unknown architecture %q (known: %s)", arch, strings.Join(Arches, ", "))
	}
	return s, nil
}

// TapChannels returns the channels of layer1..4 for an architecture.
func TapChannels(arch string) ([4]int, error) {
	s, err := lookup(arch)
	if err != nil {
		return [4]int{}, err
	}
	if s.bottleneck {
		return [4]int{256, 512, 1024, 2048}, nil
	}
	return [4]int{64, 128, 256, 512}, nil
}

// ParseTaps reads a tap list such as "layer1,layer2,layer3,layer4", "1,2,3,4"
// or the paper's "1+2+3+4" and returns it in Layers order; empty gives
// DefaultTaps.
func ParseTaps(s string) ([]string, error) {
	if strings.TrimSpace(s) == "" {
		return slices.Clone(DefaultTaps), nil
	}
	var taps []string
	for _, f := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == '+' || r == ' ' }) {
		if len(f) == 1 && f[0] >= '1' && f[0] <= '9' {
			f = "layer" + f
		}
		taps = append(taps, f)
	}
	return normTaps(taps)
}

// normTaps checks taps against Layers and sorts them shallowest first.
func normTaps(taps []string) ([]string, error) {
	if len(taps) == 0 {
		return slices.Clone(DefaultTaps), nil
	}
	seen := map[int]bool{}
	var idx []int
	for _, t := range taps {
		i := slices.Index(Layers, t)
		if i < 0 {
			return nil, fmt.Errorf("unknown tap %q (taps: %s)", t, strings.Join(Layers, ", "))
		}
		if seen[i] {
			return nil, fmt.Errorf("tap %s given twice", t)
		}
		seen[i] = true
		idx = append(idx, i)
	}
	slices.Sort(idx)
	out := make([]string, len(idx))
	for k, i := range idx {
		out[k] = Layers[i]
	}
	return out, nil
}

// ImageNetMean and ImageNetStd are torchvision's input normalisation, the default.
var (
	ImageNetMean = [3]float32{0.485, 0.456, 0.406}
	ImageNetStd  = [3]float32{0.229, 0.224, 0.225}
)

// BNEps is the BatchNorm epsilon of torchvision and of the CBAM reference code.
const BNEps = 1e-5

// Build returns the ONNX model bytes.
func Build(o Options, p Params) ([]byte, error) {
	g, err := build(o, p)
	if err != nil {
		return nil, err
	}
	return g.Marshal(), nil
}

func build(o Options, p Params) (*onnxpb.Graph, error) {
	s, err := lookup(o.Arch)
	if err != nil {
		return nil, err
	}
	taps, err := normTaps(o.Taps)
	if err != nil {
		return nil, err
	}
	deepest := slices.Index(Layers, taps[len(taps)-1])
	if o.InputSize == 0 {
		o.InputSize = 224
	}
	if o.Std == ([3]float32{}) {
		o.Mean, o.Std = ImageNetMean, ImageNetStd
	}
	if stride := 4 << deepest; o.InputSize <= 0 || o.InputSize%max(16, stride) != 0 {
		return nil, fmt.Errorf("input size %d must be a multiple of %d for taps %s", o.InputSize, max(16, stride), strings.Join(taps, ","))
	}
	b := &builder{p: p}
	b.g = onnxpb.Graph{Name: o.Arch, Opset: 13, Producer: "padim"}
	n := int64(o.InputSize)
	b.g.Inputs = []onnxpb.Value{{Name: "input", Dims: []int64{-1, 3, n, n}, Param: []string{"N"}}}

	x := b.convBN("input", "conv1", "bn1", 3, 64, 7, 2, 3, BNWeight)
	x = b.node("Relu", []string{x}, nil)
	x = b.node("MaxPool", []string{x}, []onnxpb.Attr{onnxpb.Is("kernel_shape", 3, 3), onnxpb.Is("strides", 2, 2), onnxpb.Is("pads", 1, 1, 1, 1)})
	in := 64
	chans, _ := TapChannels(o.Arch)
	for li := 0; li <= deepest; li++ {
		planes := 64 << li
		layer := Layers[li]
		for bi := 0; bi < s.blocks[li]; bi++ {
			stride := 1
			if bi == 0 && li > 0 {
				stride = 2
			}
			prefix := layer + "." + strconv.Itoa(bi)
			out := ""
			if bi == s.blocks[li]-1 {
				out = layer
			}
			if s.bottleneck {
				x = b.bottleneck(x, prefix, in, planes, planes*s.widthMul, stride, s.cbam, out)
				in = planes * 4
			} else {
				x = b.basic(x, prefix, in, planes, stride, out)
				in = planes
			}
		}
		if slices.Contains(taps, layer) {
			side := n / int64(4<<li)
			b.g.Outputs = append(b.g.Outputs, onnxpb.Value{Name: layer, Dims: []int64{-1, int64(chans[li]), side, side}, Param: []string{"N"}})
		}
	}
	if b.err != nil {
		return nil, b.err
	}
	f := func(v [3]float32) string {
		return strings.Trim(strings.ReplaceAll(fmt.Sprint(v), " ", ","), "[]")
	}
	b.g.Metadata = [][2]string{
		{"padim.arch", o.Arch},
		{"padim.weights", o.Source},
		{"padim.seed", strconv.FormatUint(o.Seed, 10)},
		{"padim.input", "input"},
		{"padim.input_size", strconv.Itoa(o.InputSize)},
		{"padim.taps", strings.Join(taps, ",")},
		{"padim.mean", f(o.Mean)},
		{"padim.std", f(o.Std)},
	}
	return &b.g, nil
}

type builder struct {
	g   onnxpb.Graph
	p   Params
	err error
	id  int
}

func (b *builder) param(name string, role Role, shape ...int) []float32 {
	if b.err != nil {
		return make([]float32, prod(shape))
	}
	v, err := b.p.Param(name, role, shape...)
	if err != nil {
		b.err = err
		return make([]float32, prod(shape))
	}
	if len(v) != prod(shape) {
		b.err = fmt.Errorf("parameter %s: %d values for shape %v", name, len(v), shape)
		return make([]float32, prod(shape))
	}
	return v
}

func prod(s []int) int {
	n := 1
	for _, d := range s {
		n *= d
	}
	return n
}

// node adds an operator and returns its (first) output name; out "" picks a fresh one.
func (b *builder) node(op string, inputs []string, attrs []onnxpb.Attr, out ...string) string {
	b.id++
	name := fmt.Sprintf("%s_%d", op, b.id)
	o := name
	if len(out) > 0 && out[0] != "" {
		o = out[0]
	}
	b.g.Nodes = append(b.g.Nodes, onnxpb.Node{Op: op, Name: name, Inputs: inputs, Outputs: []string{o}, Attrs: attrs})
	return o
}

func (b *builder) init(name string, dims []int64, v []float32) string {
	b.g.Initializers = append(b.g.Initializers, onnxpb.Tensor{Name: name, Dims: dims, Floats: v})
	return name
}

// convBN is a bias-free convolution followed by a BatchNorm, folded into one
// convolution: W' = W·γ/√(σ²+ε), b' = β − μ·γ/√(σ²+ε).
func (b *builder) convBN(x, conv, bn string, in, out, k, stride, pad int, gammaRole Role) string {
	w := b.param(conv+".weight", ConvWeight, out, in, k, k)
	gamma := b.param(bn+".weight", gammaRole, out)
	beta := b.param(bn+".bias", BNBias, out)
	mean := b.param(bn+".running_mean", BNMean, out)
	vr := b.param(bn+".running_var", BNVar, out)
	bias := make([]float32, out)
	per := in * k * k
	for o := 0; o < out; o++ {
		sc := float64(gamma[o]) / math.Sqrt(float64(vr[o])+BNEps)
		for i := o * per; i < (o+1)*per; i++ {
			w[i] = float32(float64(w[i]) * sc)
		}
		bias[o] = float32(float64(beta[o]) - float64(mean[o])*sc)
	}
	wn := b.init(conv+".weight+"+bn, []int64{int64(out), int64(in), int64(k), int64(k)}, w)
	bn_ := b.init(conv+".bias+"+bn, []int64{int64(out)}, bias)
	return b.node("Conv", []string{x, wn, bn_}, []onnxpb.Attr{
		onnxpb.Is("kernel_shape", int64(k), int64(k)), onnxpb.Is("strides", int64(stride), int64(stride)),
		onnxpb.Is("pads", int64(pad), int64(pad), int64(pad), int64(pad))})
}

func (b *builder) bottleneck(x, p string, in, planes, width, stride int, cbam bool, out string) string {
	y := b.node("Relu", []string{b.convBN(x, p+".conv1", p+".bn1", in, width, 1, 1, 0, BNWeight)}, nil)
	y = b.node("Relu", []string{b.convBN(y, p+".conv2", p+".bn2", width, width, 3, stride, 1, BNWeight)}, nil)
	y = b.convBN(y, p+".conv3", p+".bn3", width, planes*4, 1, 1, 0, BNResidualWeight)
	if cbam {
		y = b.cbam(y, p+".cbam", planes*4)
	}
	res := x
	if stride != 1 || in != planes*4 {
		res = b.convBN(x, p+".downsample.0", p+".downsample.1", in, planes*4, 1, stride, 0, BNWeight)
	}
	return b.node("Relu", []string{b.node("Add", []string{y, res}, nil)}, nil, out)
}

func (b *builder) basic(x, p string, in, planes, stride int, out string) string {
	y := b.node("Relu", []string{b.convBN(x, p+".conv1", p+".bn1", in, planes, 3, stride, 1, BNWeight)}, nil)
	y = b.convBN(y, p+".conv2", p+".bn2", planes, planes, 3, 1, 1, BNResidualWeight)
	res := x
	if stride != 1 || in != planes {
		res = b.convBN(x, p+".downsample.0", p+".downsample.1", in, planes, 1, stride, 0, BNWeight)
	}
	return b.node("Relu", []string{b.node("Add", []string{y, res}, nil)}, nil, out)
}

// cbam adds the reference CBAM: channel gate (shared MLP C→C/16→C on global
// average and max pools, summed, sigmoid, scale), then spatial gate ([max, mean]
// over channels → 7×7 conv + BN → sigmoid → scale).
func (b *builder) cbam(x, p string, c int) string {
	r := c / 16
	cg := p + ".ChannelGate.mlp"
	w1 := b.param(cg+".1.weight", LinearWeight, r, c)
	b1 := b.param(cg+".1.bias", LinearBias, r)
	w2 := b.param(cg+".3.weight", LinearWeightLast, c, r)
	b2 := b.param(cg+".3.bias", LinearBias, c)
	w1n := b.init(cg+".1.weight", []int64{int64(r), int64(c), 1, 1}, w1)
	b1n := b.init(cg+".1.bias", []int64{int64(r)}, b1)
	w2n := b.init(cg+".3.weight", []int64{int64(c), int64(r), 1, 1}, w2)
	b2n := b.init(cg+".3.bias", []int64{int64(c)}, b2)
	mlp := func(v string) string {
		h := b.node("Relu", []string{b.node("Conv", []string{v, w1n, b1n}, nil)}, nil)
		return b.node("Conv", []string{h, w2n, b2n}, nil)
	}
	att := b.node("Add", []string{mlp(b.node("GlobalAveragePool", []string{x}, nil)), mlp(b.node("GlobalMaxPool", []string{x}, nil))}, nil)
	x = b.node("Mul", []string{x, b.node("Sigmoid", []string{att}, nil)}, nil)

	sp := p + ".SpatialGate.spatial"
	mx := b.node("ReduceMax", []string{x}, []onnxpb.Attr{onnxpb.Is("axes", 1), onnxpb.I("keepdims", 1)})
	mn := b.node("ReduceMean", []string{x}, []onnxpb.Attr{onnxpb.Is("axes", 1), onnxpb.I("keepdims", 1)})
	cat := b.node("Concat", []string{mx, mn}, []onnxpb.Attr{onnxpb.I("axis", 1)})
	s := b.convBN(cat, sp+".conv", sp+".bn", 2, 1, 7, 1, 3, BNWeight)
	return b.node("Mul", []string{x, b.node("Sigmoid", []string{s}, nil)}, nil)
}
