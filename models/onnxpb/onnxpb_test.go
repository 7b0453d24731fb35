package onnxpb_test

import (
	"math"
	"testing"

	ort "github.com/yalue/onnxruntime_go"

	"github.com/padim/padim/detector/backbone"
	"github.com/padim/padim/models/onnxpb"
)

// y = Relu(x·W + b) with a symbolic batch: float and int64 initializers,
// int, float and int-list attributes, metadata.
func tinyModel() *onnxpb.Graph {
	return &onnxpb.Graph{
		Name: "tiny", Opset: 17, Producer: "padim-test", Metadata: [][2]string{{"padim.taps", "y"}, {"note", "é"}},
		Inputs:  []onnxpb.Value{{Name: "x", Dims: []int64{-1, 3}, Param: []string{"batch"}}},
		Outputs: []onnxpb.Value{{Name: "y", Dims: []int64{-1, 2}, Param: []string{"batch"}}},
		Initializers: []onnxpb.Tensor{
			{Name: "W", Dims: []int64{3, 2}, Floats: []float32{1, -1, 2, 0.5, -3, 4}},
			{Name: "b", Dims: []int64{2}, Floats: []float32{0.25, -10}},
			{Name: "shape", Dims: []int64{2}, Int64s: []int64{-1, 2}},
		},
		Nodes: []onnxpb.Node{
			{Op: "Gemm", Name: "gemm", Inputs: []string{"x", "W", "b"}, Outputs: []string{"g"}, Attrs: []onnxpb.Attr{onnxpb.F("alpha", 1), onnxpb.I("transB", 0)}},
			{Op: "Reshape", Name: "reshape", Inputs: []string{"g", "shape"}, Outputs: []string{"r"}},
			{Op: "Relu", Name: "relu", Inputs: []string{"r"}, Outputs: []string{"y"}},
		},
	}
}

// A model written by onnxpb is read back by ONNX Runtime: its inputs,
// outputs and symbolic batch as written, and it computes what the graph
// says; the same bytes cut short are refused.
func TestONNXRuntimeReadsWhatItWrites(t *testing.T) {
	if err := backbone.Init(""); err != nil {
		t.Skipf("ONNX Runtime not available (make onnxruntime): %v", err)
	}
	data := tinyModel().Marshal()
	ins, outs, err := ort.GetInputOutputInfoWithONNXData(data)
	if err != nil {
		t.Fatal(err)
	}
	if len(ins) != 1 || ins[0].Name != "x" || ins[0].Dimensions.String() != "[-1 3]" || len(outs) != 1 || outs[0].Name != "y" || outs[0].Dimensions.String() != "[-1 2]" {
		t.Fatalf("inputs %v, outputs %v", ins, outs)
	}
	x := []float32{1, 2, 3, -1, 0, 1}
	in, _ := ort.NewTensor(ort.NewShape(2, 3), x)
	defer in.Destroy()
	out, _ := ort.NewEmptyTensor[float32](ort.NewShape(2, 2))
	defer out.Destroy()
	s, err := ort.NewAdvancedSessionWithONNXData(data, []string{"x"}, []string{"y"}, []ort.Value{in}, []ort.Value{out}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Destroy()
	if err := s.Run(); err != nil {
		t.Fatal(err)
	}
	W, b := []float32{1, -1, 2, 0.5, -3, 4}, []float32{0.25, -10}
	for r := 0; r < 2; r++ {
		for c := 0; c < 2; c++ {
			want := b[c]
			for k := 0; k < 3; k++ {
				want += x[3*r+k] * W[2*k+c]
			}
			want = float32(math.Max(0, float64(want)))
			if got := out.GetData()[2*r+c]; math.Abs(float64(got-want)) > 1e-5 {
				t.Errorf("y[%d][%d] = %v, want %v", r, c, got, want)
			}
		}
	}
	for _, n := range []int{len(data) - 1, len(data) / 2, 7} {
		if _, _, err := ort.GetInputOutputInfoWithONNXData(data[:n]); err == nil {
			t.Errorf("a model cut to %d of %d bytes was read", n, len(data))
		}
	}
}
