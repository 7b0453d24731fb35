//go:build cuda || cudaemu

package gpu

import (
	"context"
	"errors"
	"math"
	"testing"

	"github.com/padim/padim/data/dataset"
	"github.com/padim/padim/data/synth"
	"github.com/padim/padim/detector"
	"github.com/padim/padim/detector/backbone"
	"github.com/padim/padim/detector/embed"
	"github.com/padim/padim/detector/gauss"
	"github.com/padim/padim/detector/gauss/gausstest"
)

// device returns the CUDA backend, closed at the end of the test, or skips where
// there is no GPU; with PADIM_REQUIRE_GPU=1 (scripts/device-check.sh) no GPU fails.
func device(t testing.TB) *Backend {
	t.Helper()
	b, err := New(0)
	if err != nil {
		skipOrFail(t, "no CUDA device: %v", err)
	}
	if Emulated && requireGPU() {
		t.Fatal("PADIM_REQUIRE_GPU=1 asks for a real GPU; this is the emulator build (-tags cudaemu)")
	}
	t.Cleanup(func() { b.(*Backend).Close() })
	return b.(*Backend)
}

func TestConformance(t *testing.T) {
	b := device(t)
	t.Log(b.Name())
	gausstest.Run(t, b)
}

// The stage and the scoring batch are smaller than the calls, so calls split across
// passes and launches.
func TestConformanceSmallDeviceBatch(t *testing.T) {
	b := device(t)
	b.Stage, b.ScoreBatch = 7, 7 // below the suites' batch sizes
	gausstest.Run(t, b)
}

// compare fits and scores x on both backends and returns the worst relative
// differences of the statistics (against their scale) and of the distances.
func compare(t *testing.T, x, test []float32, n, nt, p, d int) (statErr, distErr float64) {
	gpu := device(t)
	fit := func(b gauss.Backend) (*gauss.Stats, []float32) {
		acc, err := b.NewAccumulator(p, d)
		if err != nil {
			t.Fatal(err)
		}
		defer acc.Close()
		for lo := 0; lo < n; lo += 16 {
			hi := min(lo+16, n)
			if err := acc.Add(x[lo*p*d:hi*p*d], hi-lo); err != nil {
				t.Fatal(err)
			}
		}
		s, err := acc.Stats()
		if err != nil {
			t.Fatal(err)
		}
		s = s.Clone()
		g, err := b.Factorize(s, 0.01)
		if err != nil {
			t.Fatal(err)
		}
		sc, err := b.NewScorer(g)
		if err != nil {
			t.Fatal(err)
		}
		defer sc.Close()
		dist := make([]float32, nt*p)
		if err := sc.Score(test, nt, dist); err != nil {
			t.Fatal(err)
		}
		return s, dist
	}
	sc, dc := fit(gauss.CPU{})
	sg, dg := fit(gpu)
	scale := 0.0
	for _, v := range sc.M2 {
		scale = math.Max(scale, math.Abs(v))
	}
	for i := range sc.M2 {
		statErr = math.Max(statErr, math.Abs(sc.M2[i]-sg.M2[i])/scale)
	}
	for i := range dc {
		distErr = math.Max(distErr, math.Abs(float64(dc[i]-dg[i]))/math.Max(math.Abs(float64(dc[i])), 1e-6))
	}
	return statErr, distErr
}

func TestParityRandomSPD(t *testing.T) {
	n, p, d := 60, 40, 200
	if Emulated { // host threads emulate a GPU slowly: fewer patches, same tiling cases (d > 32·k)
		n, p, d = 40, 6, 100
	}
	x := gausstest.Correlated(1, n, p, d, 3, 1)
	test := gausstest.Correlated(2, 20, p, d, 3, 1.3)
	se, de := compare(t, x, test, n, 20, p, d)
	t.Logf("GPU vs CPU: statistics %.2e, distances %.2e (relative)", se, de)
	if se > 1e-5 || de > 1e-4 {
		t.Fatalf("GPU differs from CPU: statistics %.3g, distances %.3g", se, de)
	}
}

func TestParityRealFeatures(t *testing.T) {
	if Emulated {
		skipOrFail(t, "3136 patches are too slow for the host emulator; runs on a GPU")
	}
	model := modelFile(t, "mobilenet_v2_imagenet.onnx")
	device(t)
	if err := backbone.Init(""); err != nil {
		skipOrFail(t, "ONNX Runtime not available: %v", err)
	}
	ext, err := backbone.OpenFile(model, backbone.Options{Device: "cpu"})
	if err != nil {
		t.Fatal(err)
	}
	defer ext.Close()
	dir := t.TempDir()
	if err := synth.Generate(dir, synth.Config{Seed: 5, Train: 24, TestDefect: 6, Size: 224}, nil); err != nil {
		t.Fatal(err)
	}
	pipe, err := detector.NewPipeline(ext, embed.AllChannels(embed.TotalChannels(ext.Taps())), ext.DefaultPreprocess(), detector.PipelineOptions{})
	if err != nil {
		t.Fatal(err)
	}
	P, D := pipe.Layout().P(), pipe.Layout().D()
	embedAll := func(files []string) []float32 {
		out := make([]float32, 0, len(files)*P*D)
		err := pipe.Embeddings(context.Background(), detector.FileInputs(files), detector.DefaultGroup, func(c detector.Chunk) error {
			if len(c.Failed) > 0 {
				return c.Failed[0]
			}
			out = append(out, c.Emb...)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	train, _ := dataset.TrainImages(dir)
	items, _ := dataset.TestSet(dir)
	var test []string
	for _, it := range items {
		test = append(test, it.Path)
	}
	se, de := compare(t, embedAll(train), embedAll(test), len(train), len(test), P, D)
	t.Logf("MobileNetV2 features (P=%d, D=%d): statistics %.2e, distances %.2e", P, D, se, de)
	if se > 1e-5 || de > 1e-4 {
		t.Fatalf("GPU differs from CPU on real features: statistics %.3g, distances %.3g", se, de)
	}
}

func TestAllocationFailureIsAnError(t *testing.T) {
	b := device(t)
	// far beyond any card: 2^20 patches of D=1024 is 4 TiB of statistics
	_, err := b.NewAccumulator(1<<20, 1024)
	if !errors.Is(err, ErrOutOfMemory) {
		t.Fatalf("got %v, want ErrOutOfMemory", err)
	}
	// the device still works afterwards
	x := gausstest.Correlated(9, 8, 3, 20, 1, 1)
	acc, err := b.NewAccumulator(3, 20)
	if err != nil {
		t.Fatal(err)
	}
	defer acc.Close()
	if err := acc.Add(x, 8); err != nil {
		t.Fatal(err)
	}
	s, err := acc.Stats()
	if err != nil || s.N != 8 {
		t.Fatalf("after a failed allocation: N=%v, %v", s, err)
	}
}
