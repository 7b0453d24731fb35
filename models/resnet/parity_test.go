package resnet_test

import (
	"cmp"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/padim/padim/detector/backbone"
	"github.com/padim/padim/detector/fileio/safetensors"
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
// module the same random weights and compares the taps (ONNX Runtime vs PyTorch):
// every architecture with layer1..4, plus the default taps and a sparse subset.
// resnet50_cbam and resnet152_cbam run at the paper's 224² (layer4 at 7²), the
// rest at 64² to keep the test short.
func TestGoGraphMatchesPyTorch(t *testing.T) {
	py := torchPython(t)
	if err := backbone.Init(""); err != nil {
		t.Skipf("ONNX Runtime not available: %v", err)
	}
	_, file, _, _ := runtime.Caller(0)
	script := filepath.Join(filepath.Dir(file), "..", "export.py")
	all := "layer1,layer2,layer3,layer4"
	type parityCase struct {
		arch string
		size int
		taps string // "" for the default
	}
	cases := []parityCase{
		{"resnet18", 64, ""}, {"resnet50", 64, "layer2,layer4"},
		{"resnet50_cbam", 224, all}, {"resnet152_cbam", 224, all},
	}
	seen := map[string]bool{"resnet50_cbam": true, "resnet152_cbam": true}
	for _, a := range resnet.Arches {
		if !seen[a] {
			cases = append(cases, parityCase{a, 64, all})
		}
	}
	for _, c := range cases {
		name := c.arch + "/" + strings.ReplaceAll(cmp.Or(c.taps, "default"), ",", "+")
		t.Run(name, func(t *testing.T) {
			if testing.Short() {
				c.size = 64
			}
			dir := t.TempDir()
			taps, err := resnet.ParseTaps(c.taps)
			if err != nil {
				t.Fatal(err)
			}
			rec := &resnet.Recorder{Params: statsBN{resnet.Random{Seed: 11}}}
			graph, err := resnet.Build(resnet.Options{Arch: c.arch, InputSize: c.size, Taps: taps}, rec)
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
			cmd := exec.Command(py, script, "taps", "--arch", c.arch, "--weights", weights, "--input", input, "--out", out, "--taps", strings.Join(taps, ","), "--f64")
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
			if len(got) != len(taps) || len(want.Tensors) != 2*len(taps) {
				t.Fatalf("taps %v: ONNX Runtime gave %d outputs, PyTorch %d", taps, len(got), len(want.Tensors))
			}
			chans, _ := resnet.TapChannels(c.arch)
			for i, tp := range got {
				li := slices.Index(resnet.Layers, taps[i])
				if tp.Name != taps[i] || tp.C != chans[li] || tp.H != c.size/(4<<li) || tp.W != tp.H {
					t.Fatalf("output %d: %+v, want %s with %d channels at %d²", i, tp.TapShape, taps[i], chans[li], c.size/(4<<li))
				}
				w32, r32 := want.Tensor(tp.Name), want.Tensor(tp.Name+".f64")
				if w32 == nil || r32 == nil {
					t.Fatalf("PyTorch gave no %s (or no %s.f64)", tp.Name, tp.Name)
				}
				pt, _ := w32.Float32s()
				ref, _ := r32.Float64s()
				if len(pt) != len(tp.Data) || len(ref) != len(tp.Data) {
					t.Fatalf("%s: %d values vs PyTorch %d (float64 %d)", tp.Name, len(tp.Data), len(pt), len(ref))
				}
				vsPT := relDiff(tp.Data, func(i int) float64 { return float64(pt[i]) })
				ortErr := relDiff(tp.Data, func(i int) float64 { return ref[i] })
				ptErr := relDiff(pt, func(i int) float64 { return ref[i] })
				t.Logf("%s %s: max|ORT−PyTorch|/max|PyTorch| %.2e; against PyTorch float64: ORT %.2e, PyTorch float32 %.2e", c.arch, tp.Name, vsPT, ortErr, ptErr)
				fmt.Fprintf(os.Stderr, "PARITY %s@%d %s vsPyTorch32 %.2e ORTvs64 %.2e PyTorch32vs64 %.2e\n", c.arch, c.size, tp.Name, vsPT, ortErr, ptErr)
				// Deep nets amplify float32 rounding (resnet152_cbam reaches ~6e-5 in
				// PyTorch itself): the Go graph must be as exact as PyTorch's float32.
				if bound := math.Max(1e-5, 4*ptErr); ortErr > bound {
					t.Errorf("%s: ONNX Runtime is %.3g from the float64 reference, PyTorch float32 %.3g (allowed %.3g)", tp.Name, ortErr, ptErr, bound)
				}
			}
		})
	}
}

// relDiff returns max|got−want| / max|want|.
func relDiff(got []float32, want func(int) float64) float64 {
	var scale, diff float64
	for i, g := range got {
		w := want(i)
		scale = math.Max(scale, math.Abs(w))
		diff = math.Max(diff, math.Abs(w-float64(g)))
	}
	return diff / scale
}

// TestExportAuthorsCheckpoint runs the path a user takes with the CBAM authors'
// checkpoint: a .pth.tar holding {'state_dict': …} with 'module.' prefixes and an
// fc layer → export.py export --safetensors → the Go builder reads every tensor
// of the stages it builds. Read as the plain ResNet, export.py refuses it.
func TestExportAuthorsCheckpoint(t *testing.T) {
	py := torchPython(t)
	_, file, _, _ := runtime.Caller(0)
	models := filepath.Join(filepath.Dir(file), "..")
	dir := t.TempDir()
	ckpt := filepath.Join(dir, "RESNET50_CBAM.pth.tar")
	mk := `import sys, torch
sys.path.insert(0, sys.argv[1])
import export
torch.manual_seed(0)
m = export.ResNetTaps("resnet50_cbam", export.LAYERS)
sd = {"module." + k: v for k, v in m.state_dict().items()}
sd["module.fc.weight"] = torch.zeros(1000, 2048)
sd["module.fc.bias"] = torch.zeros(1000)
torch.save({"epoch": 90, "arch": "resnet", "state_dict": sd, "best_prec1": 77.3}, sys.argv[2])
`
	gen := exec.Command(py, "-c", mk, models, ckpt)
	gen.Env = append(os.Environ(), "PYTHONDONTWRITEBYTECODE=1") // no models/__pycache__
	if b, err := gen.CombinedOutput(); err != nil {
		t.Fatalf("making the checkpoint: %v\n%s", err, b)
	}
	st := filepath.Join(dir, "w.safetensors")
	script := filepath.Join(models, "export.py")
	if b, err := exec.Command(py, script, "export", "--arch", "resnet50_cbam", "--checkpoint", ckpt, "--safetensors", st, "--taps", "1+2+3+4").CombinedOutput(); err != nil {
		t.Fatalf("export.py export: %v\n%s", err, b)
	}
	ck, err := resnet.OpenCheckpoint(st)
	if err != nil {
		t.Fatal(err)
	}
	o := resnet.Options{Arch: "resnet50_cbam", InputSize: 64, Taps: resnet.Layers}
	if _, err := resnet.Build(o, ck); err != nil {
		t.Fatal(err)
	}
	if u := ck.Unused(o); len(u) != 0 {
		t.Errorf("tensors not read: %v", u)
	}
	b, err := exec.Command(py, script, "export", "--arch", "resnet50", "--checkpoint", ckpt, "--safetensors", st).CombinedOutput()
	if err == nil || !strings.Contains(string(b), "does not use") || !strings.Contains(string(b), "cbam") {
		t.Errorf("a CBAM checkpoint exported as resnet50: %v\n%s", err, b)
	}
}
