package evaluate_test

import (
	"context"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/padim/padim/data/dataset"
	"github.com/padim/padim/data/synth"
	"github.com/padim/padim/detector"
	"github.com/padim/padim/detector/backbone"
	"github.com/padim/padim/detector/imageio"
	"github.com/padim/padim/evaluate"
	"github.com/padim/padim/internal/fakebackbone"
	"github.com/padim/padim/models/mobilenetv2"
)

var ctx = context.Background()

// TestRealFeaturesFindSyntheticDefects trains on real ImageNet features (the
// MobileNetV2 embedded in padim) and checks the detector separates defects.
func TestRealFeaturesFindSyntheticDefects(t *testing.T) {
	if err := backbone.Init(""); err != nil {
		t.Skipf("ONNX Runtime not available: %v", err)
	}
	ext, err := backbone.Open(mobilenetv2.ONNX(), mobilenetv2.FileName, backbone.Options{Device: "cpu"})
	if err != nil {
		t.Fatal(err)
	}
	defer ext.Close()
	data := t.TempDir()
	if err := synth.Generate(data, synth.Config{Seed: 4, Train: 24, TestGood: 8, TestDefect: 12, Size: 224}, nil); err != nil {
		t.Fatal(err)
	}
	files, _ := dataset.TrainImages(data)
	m, _, err := detector.Train(ctx, ext, files, detector.TrainConfig{Preprocess: ext.DefaultPreprocess(), Pipeline: detector.PipelineOptions{Batch: 8},
		Dim: 100, Seed: 1024, Eps: 0.01, Sigma: 4, BackboneONNX: ext.Data})
	if err != nil {
		t.Fatal(err)
	}
	sc, err := m.NewScorer(ext, detector.ScoreConfig{OpenRadius: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	items, _ := dataset.TestSet(data)
	ev, err := evaluate.Run(ctx, sc, items, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("MobileNetV2 (ImageNet, embedded), d=100: image AUROC %.3f, pixel AUROC %.3f, AUPRO %.3f, image F1 %.3f, calibrated TPR %.2f FPR %.2f",
		ev.ImageAUROC, ev.PixelAUROC, ev.AUPRO, ev.ImageF1, ev.ImageTPR, ev.ImageFPR)
	if ev.NImages != 20 || ev.NDefective != 12 {
		t.Fatalf("counted %d images, %d defective", ev.NImages, ev.NDefective)
	}
	if ev.ImageAUROC < 0.8 || ev.PixelAUROC < 0.9 { // chance is 0.5
		t.Fatalf("real features should separate these defects: image AUROC %.3f, pixel AUROC %.3f", ev.ImageAUROC, ev.PixelAUROC)
	}
}

// Run on a test set with the test backbone (no ONNX Runtime): every image is
// counted once, an unreadable one is skipped and named (or stops the run),
// ground-truth masks line up with the maps, and the calibrated metrics are
// those of the model's thresholds.
func TestRunCountsAndSkips(t *testing.T) {
	data := t.TempDir()
	if err := synth.Generate(data, synth.Config{Seed: 5, Train: 10, TestGood: 4, TestDefect: 5, Size: 64}, nil); err != nil {
		t.Fatal(err)
	}
	broken := filepath.Join(data, "test", "good", "broken.png")
	if err := os.WriteFile(broken, []byte("\x89PNG not really"), 0o644); err != nil {
		t.Fatal(err)
	}
	ext := fakebackbone.New(32, 9)
	files, _ := dataset.TrainImages(data)
	m, _, err := detector.Train(ctx, ext, files, detector.TrainConfig{Preprocess: imageio.Preprocess{Resize: 32, Mean: imageio.ImageNetMean, Std: imageio.ImageNetStd},
		Dim: 8, Eps: 0.01, Sigma: 4})
	if err != nil {
		t.Fatal(err)
	}
	sc, err := m.NewScorer(ext, detector.ScoreConfig{OpenRadius: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	items, err := dataset.TestSet(data)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := evaluate.Run(ctx, sc, items, false, nil); err == nil {
		t.Fatal("an unreadable image did not stop the run without skipBad")
	}
	seen := 0
	ev, err := evaluate.Run(ctx, sc, items, true, func(r *detector.Result, it dataset.Item, gt []bool) error {
		seen++
		if r == nil {
			if it.Path != broken {
				t.Errorf("%s reported as skipped", it.Path)
			}
			return nil
		}
		if len(gt) != r.W*r.H {
			t.Errorf("%s: mask of %d pixels for a %dx%d map", it.Path, len(gt), r.W, r.H)
		}
		defective := false
		for _, v := range gt {
			defective = defective || v
		}
		if defective != it.Defective {
			t.Errorf("%s: mask has defect pixels %v, item defective %v", it.Path, defective, it.Defective)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if seen != len(items) || ev.NImages != 9 || ev.NDefective != 5 || len(ev.Skipped) != 1 || ev.Skipped[0].Path != broken {
		t.Fatalf("saw %d of %d, counted %d images, %d defective, skipped %+v", seen, len(items), ev.NImages, ev.NDefective, ev.Skipped)
	}
	th := m.Calibration.Thresholds
	if float32(ev.ImageThreshold) != th.Image || float32(ev.PixelThreshold) != th.Pixel {
		t.Fatalf("thresholds %v/%v, the model's %v", ev.ImageThreshold, ev.PixelThreshold, th)
	}
	fp, good := 0, 0
	for _, im := range ev.PerImage {
		if im.Defect == nil || *im.Defect != (im.Score > th.Image) {
			t.Fatalf("%s: verdict %v for score %v at threshold %v", im.Name, im.Defect, im.Score, th.Image)
		}
		if im.Label == 0 {
			good++
			if *im.Defect {
				fp++
			}
		}
	}
	if want := float64(fp) / float64(good); math.Abs(float64(ev.ImageFPR)-want) > 1e-12 {
		t.Fatalf("calibrated image FPR %v, %d of %d good images flagged", ev.ImageFPR, fp, good)
	}
	for _, v := range []evaluate.Metric{ev.ImageAUROC, ev.PixelAUROC, ev.AUPRO} {
		if math.IsNaN(float64(v)) || v < 0 || v > 1 {
			t.Fatalf("metrics out of [0,1]: %+v", ev)
		}
	}
}
