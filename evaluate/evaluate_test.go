package evaluate_test

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/padim/padim/detector"
	"github.com/padim/padim/detector/backbone"
	"github.com/padim/padim/detector/dataset"
	"github.com/padim/padim/detector/synth"
	"github.com/padim/padim/evaluate"
)

var ctx = context.Background()

// sharedModel is ../shared/models/mobilenet_v2_imagenet.onnx from the repository root.
func sharedModel(t *testing.T) string {
	_, file, _, _ := runtime.Caller(0)
	p := filepath.Join(filepath.Dir(file), "..", "..", "shared", "models", "mobilenet_v2_imagenet.onnx")
	if _, err := os.Stat(p); err != nil {
		t.Skip("../shared/models/mobilenet_v2_imagenet.onnx not present")
	}
	return p
}

// TestRealFeaturesFindSyntheticDefects trains on real ImageNet features
// (MobileNetV2 from ../shared) and checks the detector separates defects.
func TestRealFeaturesFindSyntheticDefects(t *testing.T) {
	path := sharedModel(t)
	if err := backbone.Init(""); err != nil {
		t.Skipf("ONNX Runtime not available: %v", err)
	}
	ext, err := backbone.OpenFile(path, backbone.Options{Device: "cpu"})
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
	t.Logf("MobileNetV2 (ImageNet), d=100: image AUROC %.3f, pixel AUROC %.3f, AUPRO %.3f, image F1 %.3f, calibrated TPR %.2f FPR %.2f",
		ev.ImageAUROC, ev.PixelAUROC, ev.AUPRO, ev.ImageF1, ev.ImageTPR, ev.ImageFPR)
	if ev.NImages != 20 || ev.NDefective != 12 {
		t.Fatalf("counted %d images, %d defective", ev.NImages, ev.NDefective)
	}
	if ev.ImageAUROC < 0.8 || ev.PixelAUROC < 0.9 { // chance is 0.5
		t.Fatalf("real features should separate these defects: image AUROC %.3f, pixel AUROC %.3f", ev.ImageAUROC, ev.PixelAUROC)
	}
}
