package mobilenetv2_test

import (
	"bytes"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/padim/padim/detector/backbone"
	"github.com/padim/padim/models/mobilenetv2"
)

func TestEmbeddedModel(t *testing.T) {
	if err := mobilenetv2.Verify(); err != nil {
		t.Fatal(err)
	}
	a := mobilenetv2.ONNX()
	if len(a) < 2_000_000 {
		t.Fatalf("embedded model is %d bytes", len(a))
	}
	a[100] ^= 0xff
	if b := mobilenetv2.ONNX(); bytes.Equal(a, b) || mobilenetv2.Verify() != nil {
		t.Fatal("ONNX() hands out the embedded bytes themselves")
	}
	if l := mobilenetv2.License(); !strings.Contains(l, "Apache License") || !strings.Contains(l, "Version 2.0") {
		t.Fatalf("licence text: %.80q", l)
	}
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(readme, []byte(mobilenetv2.SHA256)) {
		t.Error("README.md does not state the model's sha256")
	}
}

// TestSameAsShared: the shipped copy is byte-identical to ../shared's original.
func TestSameAsShared(t *testing.T) {
	_, file, _, _ := runtime.Caller(0)
	p := filepath.Join(filepath.Dir(file), "..", "..", "..", "shared", "models", "mobilenet_v2_imagenet.onnx")
	orig, err := os.ReadFile(p)
	if err != nil {
		t.Skipf("../shared/models/mobilenet_v2_imagenet.onnx not present: %v", err)
	}
	if !bytes.Equal(orig, mobilenetv2.ONNX()) {
		t.Fatal("the embedded model differs from ../shared/models/mobilenet_v2_imagenet.onnx")
	}
}

// TestRunsAsBackbone opens the embedded model as padim opens any backbone: taps,
// input size and normalisation come from its metadata.
func TestRunsAsBackbone(t *testing.T) {
	if err := backbone.Init(""); err != nil {
		t.Skipf("ONNX Runtime not available: %v", err)
	}
	e, err := backbone.Open(mobilenetv2.ONNX(), mobilenetv2.FileName, backbone.Options{Device: "cpu", Threads: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if e.SHA256 != mobilenetv2.SHA256 || e.InputSize() != mobilenetv2.InputSize {
		t.Fatalf("sha256 %s, input %d", e.SHA256, e.InputSize())
	}
	if e.Norm == nil || e.Norm.Mean != [3]float32{0.5, 0.5, 0.5} || e.Norm.Std != [3]float32{0.5, 0.5, 0.5} {
		t.Fatalf("normalisation %+v, want mean 0.5 std 0.5", e.Norm)
	}
	shapes := e.Taps()
	if len(shapes) != len(mobilenetv2.Taps) {
		t.Fatalf("taps %+v", shapes)
	}
	for i, s := range shapes {
		side := mobilenetv2.InputSize / (4 << i)
		if s.Name != mobilenetv2.Taps[i] || s.C != mobilenetv2.Channels[i] || s.H != side || s.W != side {
			t.Errorf("tap %d: %+v, want %s %d×%d²", i, s, mobilenetv2.Taps[i], mobilenetv2.Channels[i], side)
		}
	}
	// two different images give finite, different features
	n := 3 * 224 * 224
	x := make([]float32, 2*n)
	for i := range n {
		x[i] = float32(math.Sin(float64(i%224) / 9))
		x[n+i] = float32(math.Cos(float64(i/224%224) / 5))
	}
	taps, err := e.Extract(x, 2)
	if err != nil {
		t.Fatal(err)
	}
	for _, tp := range taps {
		per := len(tp.Data) / 2
		var diff float64
		for i := range per {
			v := float64(tp.Data[i])
			if math.IsNaN(v) || math.IsInf(v, 0) {
				t.Fatalf("%s: non-finite", tp.Name)
			}
			diff += math.Abs(v - float64(tp.Data[per+i]))
		}
		if diff == 0 {
			t.Errorf("%s: the same features for different images", tp.Name)
		}
	}
}
