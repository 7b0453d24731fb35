package resnet

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"math"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/padim/padim/detector/fileio/safetensors"
	"github.com/padim/padim/models/onnxpb"
)

func TestCheckpointReproducesSeededBuild(t *testing.T) {
	rec := &Recorder{Params: Random{Seed: 3}}
	want, err := Build(Options{Arch: "resnet50_cbam", InputSize: 64, Seed: 3}, rec)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	p := filepath.Join(dir, "w.safetensors")
	// extra tensors a real checkpoint has (layer4, fc, counters) must be ignored
	extra := append(slices.Clone(rec.Tensors), safetensors.F32("fc.weight", []float32{1, 2}, 2), safetensors.I64("module.bn1.num_batches_tracked", []int{5}, 1))
	for i := range extra {
		extra[i].Name = "module." + strings.TrimPrefix(extra[i].Name, "module.")
	}
	if err := safetensors.Write(p, nil, extra); err != nil {
		t.Fatal(err)
	}
	ck, err := OpenCheckpoint(p)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Build(Options{Arch: "resnet50_cbam", InputSize: 64, Seed: 3}, ck)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("graph from the checkpoint differs from the seeded graph")
	}

	// a missing and a mis-shaped tensor are named
	missing := append([]safetensors.Tensor(nil), rec.Tensors[1:]...)
	safetensors.Write(p, nil, missing)
	ck, _ = OpenCheckpoint(p)
	if _, err := Build(Options{Arch: "resnet50_cbam", InputSize: 64}, ck); err == nil || !strings.Contains(err.Error(), rec.Tensors[0].Name) {
		t.Fatalf("missing tensor: %v", err)
	}
	bad := append([]safetensors.Tensor(nil), rec.Tensors...)
	bad[2] = safetensors.F32(bad[2].Name, make([]float32, 3), 3)
	safetensors.Write(p, nil, bad)
	ck, _ = OpenCheckpoint(p)
	if _, err := Build(Options{Arch: "resnet50_cbam", InputSize: 64}, ck); err == nil || !strings.Contains(err.Error(), "shape") {
		t.Fatalf("mis-shaped tensor: %v", err)
	}
}

func TestUnknownArch(t *testing.T) {
	if _, err := Build(Options{Arch: "vgg"}, Random{}); err == nil {
		t.Fatal("unknown arch accepted")
	}
}

// TestDefaultGraphsUnchanged pins the bytes of default (layer1..3) graphs to those
// built before layer4 and the deeper ResNets were added, so models trained on them
// keep the same backbone and the same speed. Only on amd64: other compilers may
// fuse the BatchNorm folding's multiply-add and round the last bit differently.
func TestDefaultGraphsUnchanged(t *testing.T) {
	for _, c := range []struct {
		arch string
		size int
		sha  string
	}{
		{"resnet18", 64, "2df67339b40612b9223fa555c799dba5405af702ae82d786c8395870fdfa8e67"},
		{"resnet50_cbam", 64, "e2979e9019b73afeb801d961c7140d538bce210dcc58a2a8aa89fbe2c26c4585"},
	} {
		o := Options{Arch: c.arch, InputSize: c.size, Seed: 7, Source: "random (seed 7)"}
		def, err := Build(o, Random{Seed: 7})
		if err != nil {
			t.Fatal(err)
		}
		o.Taps = []string{"layer3", "layer1", "layer2"} // the same taps, spelt out and unordered
		spelt, err := Build(o, Random{Seed: 7})
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(def, spelt) {
			t.Errorf("%s: Taps layer1..3 builds a different graph from the default", c.arch)
		}
		if sum := fmt.Sprintf("%x", sha256.Sum256(def)); runtime.GOARCH == "amd64" && sum != c.sha {
			t.Errorf("%s at %d²: default graph sha256 %s, was %s", c.arch, c.size, sum, c.sha)
		}
	}
}

// TestTapsBuildOnlyWhatTheyNeed checks the outputs and that a graph stops at its
// deepest tap: no layer4 weights without layer4, every block of the deepest layer.
func TestTapsBuildOnlyWhatTheyNeed(t *testing.T) {
	count := func(g *onnxpb.Graph, prefix string) (n int) {
		for _, in := range g.Initializers {
			if strings.HasPrefix(in.Name, prefix) {
				n++
			}
		}
		return n
	}
	for _, c := range []struct {
		arch       string
		taps       []string
		outs       string // name:C:side
		has, hasnt string // initializer prefixes
	}{
		{"resnet18", nil, "layer1:64:16 layer2:128:8 layer3:256:4", "layer3.1.conv2.", "layer4."},
		{"resnet18", Layers, "layer1:64:16 layer2:128:8 layer3:256:4 layer4:512:2", "layer4.1.conv2.", "layer5."},
		{"resnet50", []string{"layer2"}, "layer2:512:8", "layer2.3.conv3.", "layer3."},
		{"resnet101", []string{"layer4", "layer1"}, "layer1:256:16 layer4:2048:2", "layer3.22.conv3.", "layer3.23."},
		{"resnet152_cbam", Layers, "layer1:256:16 layer2:512:8 layer3:1024:4 layer4:2048:2", "layer3.35.cbam.SpatialGate.", "layer3.36."},
	} {
		g, err := build(Options{Arch: c.arch, InputSize: 64, Taps: c.taps}, Random{Seed: 1})
		if err != nil {
			t.Fatal(err)
		}
		var outs []string
		for _, o := range g.Outputs {
			outs = append(outs, fmt.Sprintf("%s:%d:%d", o.Name, o.Dims[1], o.Dims[2]))
		}
		if got := strings.Join(outs, " "); got != c.outs {
			t.Errorf("%s %v: outputs %s, want %s", c.arch, c.taps, got, c.outs)
		}
		if count(g, c.has) == 0 || count(g, c.hasnt) != 0 {
			t.Errorf("%s %v: %d initializers %s*, %d %s*", c.arch, c.taps, count(g, c.has), c.has, count(g, c.hasnt), c.hasnt)
		}
		want := DefaultTaps
		if c.taps != nil {
			want = slices.Sorted(slices.Values(c.taps)) // lexical order is layer order here
		}
		for _, m := range g.Metadata {
			if m[0] == "padim.taps" && m[1] != strings.Join(want, ",") {
				t.Errorf("%s %v: padim.taps %q", c.arch, c.taps, m[1])
			}
		}
	}
}

func TestTapsAndSizeErrors(t *testing.T) {
	for _, c := range []struct {
		o    Options
		want string
	}{
		{Options{Arch: "resnet18", Taps: []string{"layer5"}}, "unknown tap"},
		{Options{Arch: "resnet18", Taps: []string{"layer2", "layer2"}}, "twice"},
		{Options{Arch: "resnet18", InputSize: 48, Taps: Layers}, "multiple of 32"},
		{Options{Arch: "resnet18", InputSize: 40}, "multiple of 16"},
		{Options{Arch: "resnet18", InputSize: -16}, "multiple of 16"},
	} {
		if _, err := Build(c.o, Random{}); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: error %v, want %q", c.o, err, c.want)
		}
	}
	if _, err := Build(Options{Arch: "resnet18", InputSize: 48}, Random{}); err != nil {
		t.Errorf("48² without layer4: %v", err)
	}
}

func TestParseTaps(t *testing.T) {
	for in, want := range map[string]string{
		"":                            "layer1,layer2,layer3",
		"1+2+3+4":                     "layer1,layer2,layer3,layer4",
		"layer4, layer1":              "layer1,layer4",
		"3":                           "layer3",
		"layer1,layer2,layer3,layer4": "layer1,layer2,layer3,layer4",
		"0":                           "error",
		"1,1":                         "error",
		"conv1":                       "error",
	} {
		got, err := ParseTaps(in)
		s := strings.Join(got, ",")
		if err != nil {
			s = "error"
		}
		if s != want {
			t.Errorf("ParseTaps(%q) = %s (%v), want %s", in, s, err, want)
		}
	}
}

func TestTapChannels(t *testing.T) {
	for arch, want := range map[string][4]int{
		"resnet18": {64, 128, 256, 512}, "resnet152_cbam": {256, 512, 1024, 2048}, "wide_resnet50_2": {256, 512, 1024, 2048},
	} {
		if got, err := TapChannels(arch); err != nil || got != want {
			t.Errorf("%s: %v %v", arch, got, err)
		}
	}
	for _, a := range Arches {
		if _, err := TapChannels(a); err != nil {
			t.Error(err)
		}
	}
}

// TestCBAMAuthorsNames checks the names and shapes a CBAM graph reads: those of
// Jongchan/attention-module's ResidualNet(..., att_type='CBAM') state_dict.
func TestCBAMAuthorsNames(t *testing.T) {
	rec := &Recorder{Params: Random{Seed: 1}}
	if _, err := Build(Options{Arch: "resnet101_cbam", InputSize: 64, Taps: Layers}, rec); err != nil {
		t.Fatal(err)
	}
	shapes := map[string][]int{}
	for _, tn := range rec.Tensors {
		shapes[tn.Name] = tn.Shape
	}
	for name, want := range map[string][]int{
		"conv1.weight":                                     {64, 3, 7, 7},
		"layer1.0.downsample.0.weight":                     {256, 64, 1, 1},
		"layer1.0.cbam.ChannelGate.mlp.1.weight":           {16, 256},
		"layer1.0.cbam.ChannelGate.mlp.1.bias":             {16},
		"layer1.0.cbam.ChannelGate.mlp.3.weight":           {256, 16},
		"layer1.0.cbam.ChannelGate.mlp.3.bias":             {256},
		"layer1.0.cbam.SpatialGate.spatial.conv.weight":    {1, 2, 7, 7},
		"layer1.0.cbam.SpatialGate.spatial.bn.running_var": {1},
		"layer3.22.conv2.weight":                           {256, 256, 3, 3},
		"layer4.2.cbam.ChannelGate.mlp.1.weight":           {128, 2048},
		"layer4.0.downsample.1.running_mean":               {2048},
	} {
		if got, ok := shapes[name]; !ok || !slices.Equal(got, want) {
			t.Errorf("%s: shape %v (present %v), want %v", name, got, ok, want)
		}
	}
	if _, ok := shapes["layer3.23.conv1.weight"]; ok {
		t.Error("resnet101 has 23 blocks in layer3")
	}
}

// TestCheckpointUnused: a deeper ResNet's or a CBAM checkpoint read as a plain,
// shallower architecture is caught; fc, counters and layers past the taps are not
// reported.
func TestCheckpointUnused(t *testing.T) {
	dir := t.TempDir()
	record := func(arch string, taps []string) []safetensors.Tensor {
		rec := &Recorder{Params: Random{Seed: 2}}
		if _, err := Build(Options{Arch: arch, InputSize: 64, Taps: taps}, rec); err != nil {
			t.Fatal(err)
		}
		return rec.Tensors
	}
	unused := func(ts []safetensors.Tensor, arch string, taps []string) []string {
		p := filepath.Join(dir, "w.safetensors")
		if err := safetensors.Write(p, nil, ts); err != nil {
			t.Fatal(err)
		}
		ck, err := OpenCheckpoint(p)
		if err != nil {
			t.Fatal(err)
		}
		o := Options{Arch: arch, InputSize: 64, Taps: taps}
		if _, err := Build(o, ck); err != nil {
			t.Fatal(err)
		}
		return ck.Unused(o)
	}
	r50 := record("resnet50", Layers)
	full := append(slices.Clone(r50), safetensors.F32("module.fc.weight", []float32{1}, 1), safetensors.I64("bn1.num_batches_tracked", []int{1}, 1))
	if u := unused(full, "resnet50", nil); len(u) != 0 {
		t.Errorf("resnet50 checkpoint with layer4 and fc, default taps: unused %v", u)
	}
	if u := unused(full, "resnet50", Layers); len(u) != 0 {
		t.Errorf("resnet50 checkpoint, layer1..4: unused %v", u)
	}
	// a deeper net: an extra block in layer3, as resnet101 has
	deeper := slices.Clone(full)
	for _, tn := range r50 {
		if strings.HasPrefix(tn.Name, "layer3.5.") {
			tn.Name = "module.layer3.6." + strings.TrimPrefix(tn.Name, "layer3.5.")
			deeper = append(deeper, tn)
		}
	}
	if u := unused(deeper, "resnet50", nil); len(u) == 0 || u[0] != "layer3.6.bn1.bias" {
		t.Errorf("deeper checkpoint read as resnet50: unused %v", u)
	}
	if u := unused(deeper, "resnet50", []string{"layer1", "layer2"}); len(u) != 0 {
		t.Errorf("deeper checkpoint, taps up to layer2: unused %v", u)
	}
	// a CBAM checkpoint read as the plain ResNet
	cb := record("resnet50_cbam", nil)
	u := unused(cb, "resnet50", nil)
	if len(u) == 0 || !slices.ContainsFunc(u, func(s string) bool { return strings.Contains(s, ".cbam.ChannelGate.mlp.1.weight") }) {
		t.Errorf("resnet50_cbam checkpoint read as resnet50: unused %d, %v", len(u), u[:min(3, len(u))])
	}
}

func TestRandomDampsLongStagesOnly(t *testing.T) {
	for name, want := range map[string]float32{
		"layer1.0.bn3.weight":  0.5,
		"layer3.5.bn3.weight":  0.5, // ResNet-50's last layer3 block: unchanged
		"layer3.6.bn3.weight":  0.5 * 6 / 7,
		"layer3.35.bn3.weight": 0.5 * 6 / 36,
		"bn1.weight":           0.5,
	} {
		v, _ := Random{}.Param(name, BNResidualWeight, 2)
		if math.Abs(float64(v[1]-want)) > 1e-7 {
			t.Errorf("%s: γ %v, want %v", name, v[1], want)
		}
	}
	if v, _ := (Random{}).Param("layer3.35.bn1.weight", BNWeight, 1); v[0] != 1 {
		t.Errorf("non-residual BatchNorm damped: %v", v)
	}
}
