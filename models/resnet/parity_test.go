package resnet_test

import (
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/padim/padim/detector/backbone"
	"github.com/padim/padim/detector/safetensors"
	"github.com/padim/padim/models/resnet"
)

// torchPython finds a Python with PyTorch: $PADIM_PYTHON, Debian's /usr/bin/python3
// (apt python3-torch), or python3 on PATH.
func torchPython(t *testing.T) string {
	t.Helper()
	cands := []string{os.Getenv("PADIM_PYTHON"), "/usr/bin/python3", "python3"}
	for _, c := range cands {
		if c == "" {
			continue
		}
		if err := exec.Command(c, "-c", "import torch, numpy").Run(); err == nil {
			return c
		}
	}
	t.Skip("no Python with torch and numpy (apt-get install python3-torch python3-numpy, or set PADIM_PYTHON)")
	return ""
}

// statsBN perturbs the BatchNorm statistics so that folding is really exercised.
type statsBN struct{ resnet.Random }

func (s statsBN) Param(name string, role resnet.Role, shape ...int) ([]float32, error) {
	v, err := s.Random.Param(name, role, shape...)
	r := rand.New(rand.NewPCG(uint64(len(name)), uint64(len(v))))
	for i := range v {
		switch role {
		case resnet.BNWeight, resnet.BNResidualWeight:
			v[i] *= float32(0.6 + 0.8*r.Float64())
		case resnet.BNBias, resnet.BNMean, resnet.LinearBias:
			v[i] = float32(0.1 * r.NormFloat64())
		case resnet.BNVar:
			v[i] = float32(0.5 + r.Float64())
		}
	}
	return v, err
}

// TestGoGraphMatchesPyTorch gives the Go builder and models/export.py's PyTorch
// module the same random weights and compares the taps (ONNX Runtime vs PyTorch).
func TestGoGraphMatchesPyTorch(t *testing.T) {
	py := torchPython(t)
	if err := backbone.Init(""); err != nil {
		t.Skipf("ONNX Runtime not available: %v", err)
	}
	_, file, _, _ := runtime.Caller(0)
	script := filepath.Join(filepath.Dir(file), "..", "export.py")
	for _, c := range []struct {
		arch string
		size int
	}{{"resnet50_cbam", 224}, {"resnet50", 64}, {"wide_resnet50_2", 64}, {"resnet18", 64}} {
		t.Run(c.arch, func(t *testing.T) {
			dir := t.TempDir()
			rec := &resnet.Recorder{Params: statsBN{resnet.Random{Seed: 11}}}
			graph, err := resnet.Build(resnet.Options{Arch: c.arch, InputSize: c.size}, rec)
			if err != nil {
				t.Fatal(err)
			}
			weights := filepath.Join(dir, "w.safetensors")
			if err := safetensors.Write(weights, nil, rec.Tensors); err != nil {
				t.Fatal(err)
			}
			r := rand.New(rand.NewPCG(5, 5))
			x := make([]float32, 2*3*c.size*c.size)
			for i := range x {
				x[i] = float32(r.NormFloat64())
			}
			input := filepath.Join(dir, "x.safetensors")
			safetensors.Write(input, nil, []safetensors.Tensor{safetensors.F32("input", x, 2, 3, c.size, c.size)})
			out := filepath.Join(dir, "taps.safetensors")
			cmd := exec.Command(py, script, "taps", "--arch", c.arch, "--weights", weights, "--input", input, "--out", out)
			if b, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("export.py taps: %v\n%s", err, b)
			}
			want, err := safetensors.Read(out, false)
			if err != nil {
				t.Fatal(err)
			}
			e, err := backbone.Open(graph, c.arch, backbone.Options{Device: "cpu"})
			if err != nil {
				t.Fatal(err)
			}
			defer e.Close()
			got, err := e.Extract(x, 2)
			if err != nil {
				t.Fatal(err)
			}
			for _, tp := range got {
				w, _ := want.Tensor(tp.Name).Float32s()
				if len(w) != len(tp.Data) {
					t.Fatalf("%s: %d values vs PyTorch %d", tp.Name, len(tp.Data), len(w))
				}
				var scale, diff float64
				for i := range w {
					scale = math.Max(scale, math.Abs(float64(w[i])))
					diff = math.Max(diff, math.Abs(float64(w[i])-float64(tp.Data[i])))
				}
				rel := diff / scale
				t.Logf("%s %s: max |ORT−PyTorch| / max|PyTorch| = %.2e", c.arch, tp.Name, rel)
				fmt.Fprintf(os.Stderr, "PARITY %s %s %.3e\n", c.arch, tp.Name, rel)
				if rel > 1e-4 {
					t.Errorf("%s: relative difference %.3g > 1e-4", tp.Name, rel)
				}
			}
		})
	}
}
