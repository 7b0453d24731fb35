package backbone

import (
	"errors"
	"math"
	"math/rand/v2"
	"os"
	"strings"
	"testing"

	"github.com/padim/padim/models/resnet"
)

// needRuntime skips where ONNX Runtime is not installed (run `make onnxruntime`).
func needRuntime(t testing.TB) {
	t.Helper()
	if err := Init(""); err != nil {
		t.Skipf("ONNX Runtime not available: %v", err)
	}
}

// natural returns an input batch with smooth structure plus noise, normalised.
func natural(n, s int) []float32 {
	r := rand.New(rand.NewPCG(1, 2))
	x := make([]float32, n*3*s*s)
	for b := 0; b < n; b++ {
		f := 0.05 + 0.1*r.Float64()
		for c := 0; c < 3; c++ {
			for i := 0; i < s*s; i++ {
				v := 0.5 + 0.3*math.Sin(f*float64(i%s)+float64(c))*math.Cos(f*float64(i/s)) + 0.05*r.NormFloat64()
				x[(b*3+c)*s*s+i] = float32((v - 0.45) / 0.225)
			}
		}
	}
	return x
}

func TestArchesShapesAndHealthyActivations(t *testing.T) {
	needRuntime(t)
	for _, arch := range resnet.Arches {
		t.Run(arch, func(t *testing.T) {
			if testing.Short() && (strings.HasPrefix(arch, "resnet101") || strings.HasPrefix(arch, "resnet152")) {
				t.Skip("deep ResNets in the full run only (models/resnet checks their layers in -short too)")
			}
			size := 224
			if testing.Short() || arch != "resnet50_cbam" {
				size = 64
			}
			data, err := resnet.Build(resnet.Options{Arch: arch, InputSize: size, Seed: 7}, resnet.Random{Seed: 7})
			if err != nil {
				t.Fatal(err)
			}
			e, err := Open(data, arch, Options{Threads: 2})
			if err != nil {
				t.Fatal(err)
			}
			defer e.Close()
			ch, _ := resnet.TapChannels(arch)
			for i, tp := range e.Taps() {
				if tp.C != ch[i] || tp.H != size/(4<<i) || tp.W != size/(4<<i) {
					t.Fatalf("tap %d: %+v", i, tp)
				}
			}
			if e.Norm == nil || e.Norm.Mean != resnet.ImageNetMean {
				t.Fatalf("normalisation metadata: %+v", e.Norm)
			}
			taps, err := e.Extract(natural(2, size), 2)
			if err != nil {
				t.Fatal(err)
			}
			for _, tp := range taps {
				hw := tp.H * tp.W
				dead := 0
				var sum, sum2 float64
				for c := 0; c < tp.C; c++ {
					var cs, cs2 float64
					for b := 0; b < 2; b++ {
						for _, v := range tp.Data[(b*tp.C+c)*hw : (b*tp.C+c+1)*hw] {
							if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
								t.Fatalf("%s: non-finite activation", tp.Name)
							}
							cs += float64(v)
							cs2 += float64(v) * float64(v)
						}
					}
					n := float64(2 * hw)
					if cs2/n-(cs/n)*(cs/n) < 1e-8 {
						dead++
					}
					sum += cs
					sum2 += cs2
				}
				n := float64(len(tp.Data))
				std := math.Sqrt(sum2/n - (sum/n)*(sum/n))
				t.Logf("%s: mean %.3f std %.3f, constant channels %d/%d", tp.Name, sum/n, std, dead, tp.C)
				if std < 0.05 || std > 100 || dead > tp.C/4 {
					t.Errorf("%s: degenerate activations (std %.3g, %d/%d constant channels)", tp.Name, std, dead, tp.C)
				}
			}
		})
	}
}

func TestSharedMobileNet(t *testing.T) {
	needRuntime(t)
	const path = "../../../shared/models/mobilenet_v2_imagenet.onnx"
	if _, err := os.Stat(path); err != nil {
		t.Skip("../shared/models/mobilenet_v2_imagenet.onnx not present")
	}
	e, err := OpenFile(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	want := []int{24, 32, 96}
	for i, tp := range e.Taps() {
		if tp.C != want[i] || tp.H != 56>>i {
			t.Fatalf("tap %d %+v", i, tp)
		}
	}
	if e.Norm == nil || e.Norm.Mean != [3]float32{0.5, 0.5, 0.5} || e.InputSize() != 224 {
		t.Fatalf("norm %+v size %d", e.Norm, e.InputSize())
	}
}

func TestErrorsNameTheFix(t *testing.T) {
	t.Setenv(LibraryEnv, "/nonexistent/libonnxruntime.so.1")
	_, err := FindLibrary("")
	if !errors.Is(err, ErrNoRuntime) || !strings.Contains(err.Error(), LibraryEnv) {
		t.Fatalf("got %v", err)
	}
	t.Setenv(LibraryEnv, "")
	dir := t.TempDir()
	wd, _ := os.Getwd()
	os.Chdir(dir)
	defer os.Chdir(wd)
	if _, err := FindLibrary(""); err != nil && !strings.Contains(err.Error(), "make onnxruntime") {
		t.Fatalf("got %v", err)
	}
	os.Chdir(wd)
	needRuntime(t)
	if _, err := Open([]byte("not onnx"), "junk.onnx", Options{}); err == nil {
		t.Fatal("junk accepted")
	}
	data, _ := resnet.Build(resnet.Options{Arch: "resnet18", InputSize: 32}, resnet.Random{})
	if _, err := Open(data, "r18", Options{Taps: []string{"layer9"}}); err == nil || !strings.Contains(err.Error(), "layer9") {
		t.Fatalf("bad tap: %v", err)
	}
}
