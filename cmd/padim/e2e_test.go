package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/padim/padim/detector/backbone"
)

// padim runs the built binary and returns stdout and the exit code.
func padim(t *testing.T, bin string, args ...string) (string, int) {
	t.Helper()
	out, errs, code, _ := runCmd(t, exec.Command(bin, args...))
	if testing.Verbose() {
		t.Logf("padim %s → %d\n%s%s", strings.Join(args, " "), code, out, errs)
	}
	return out, code
}

func mustOK(t *testing.T, bin string, args ...string) string {
	t.Helper()
	out, code := padim(t, bin, args...)
	if code != 0 {
		t.Fatalf("padim %s exited %d:\n%s", strings.Join(args, " "), code, out)
	}
	return out
}

// readNpy returns the shape and values of a float32 .npy file.
func readNpy(t *testing.T, path string) ([]int, []float32) {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	hl := int(binary.LittleEndian.Uint16(b[8:]))
	header := string(b[10 : 10+hl])
	if !strings.Contains(header, "'descr': '<f4'") {
		t.Fatalf("%s: header %q", path, header)
	}
	m := regexp.MustCompile(`'shape': \((\d+), (\d+)\)`).FindStringSubmatch(header)
	if m == nil {
		t.Fatalf("%s: header %q", path, header)
	}
	var h, w int
	json.Unmarshal([]byte(m[1]), &h)
	json.Unmarshal([]byte(m[2]), &w)
	data := b[10+hl:]
	v := make([]float32, len(data)/4)
	for i := range v {
		v[i] = math.Float32frombits(binary.LittleEndian.Uint32(data[4*i:]))
	}
	return []int{h, w}, v
}

func TestEndToEnd(t *testing.T) {
	if err := backbone.Init(""); err != nil {
		t.Skipf("ONNX Runtime not available (make onnxruntime): %v", err)
	}
	dir := t.TempDir()
	bin := testBinary(t)
	data := filepath.Join(dir, "wood")
	bb := filepath.Join(dir, "r18.onnx")
	model := filepath.Join(dir, "m.padim")
	mustOK(t, bin, "synth", "--out", data, "--seed", "2", "--train", "14", "--test-good", "4", "--test-defect", "6", "--size", "96")
	mustOK(t, bin, "backbone", "--arch", "resnet18", "--seed", "3", "--size", "64", "--out", bb)
	mustOK(t, bin, "-q", "train", "--backbone", bb, "--data", data, "--out", model, "--dim", "60", "--device", "cpu", "--batch", "5")

	var info map[string]any
	if err := json.Unmarshal([]byte(mustOK(t, bin, "info", "--model", model, "--json")), &info); err != nil {
		t.Fatal(err)
	}
	if info["dim"].(float64) != 60 || info["n_train"].(float64) != 14 || info["calibration"] == nil || info["backbone_embedded"] != true {
		t.Fatalf("info: %v", info)
	}

	// score a folder holding a corrupt image: the rest is scored, the bad one is
	// reported, the exit code says so
	in := filepath.Join(dir, "in")
	os.MkdirAll(filepath.Join(in, "sub"), 0o755)
	for i, src := range []string{"test/good/000.png", "test/hole/000.png"} {
		b, _ := os.ReadFile(filepath.Join(data, src))
		os.WriteFile(filepath.Join(in, []string{"a.png", "sub/b.png"}[i]), b, 0o644)
	}
	os.WriteFile(filepath.Join(in, "broken.png"), []byte("\x89PNG\r\n\x1a\ngarbage"), 0o644)
	out := filepath.Join(dir, "maps")
	stdout, code := padim(t, bin, "-q", "score", "--model", model, "--out", out, "--maps", "npy", "--json", "--device", "cpu", in)
	if code != exitSkipped {
		t.Fatalf("score with a corrupt image exited %d, want %d", code, exitSkipped)
	}
	var doc struct {
		Images []struct {
			Path   string   `json:"path"`
			Score  *float32 `json:"score"`
			Defect *bool    `json:"defect"`
			Maps   []string `json:"maps"`
			Error  string   `json:"error"`
		} `json:"images"`
		NUnreadable int `json:"n_unreadable"`
	}
	if err := json.Unmarshal([]byte(stdout), &doc); err != nil {
		t.Fatalf("score JSON: %v\n%s", err, stdout)
	}
	if len(doc.Images) != 3 || doc.NUnreadable != 1 {
		t.Fatalf("score JSON: %+v", doc)
	}
	for _, im := range doc.Images {
		if strings.HasSuffix(im.Path, "broken.png") {
			if im.Error == "" || !strings.Contains(im.Error, "broken.png") {
				t.Fatalf("corrupt image not reported by name: %+v", im)
			}
			continue
		}
		if im.Score == nil || im.Defect == nil || len(im.Maps) != 1 {
			t.Fatalf("image result: %+v", im)
		}
		shape, v := readNpy(t, im.Maps[0])
		if shape[0] != 96 || shape[1] != 96 || len(v) != 96*96 { // the input image's frame
			t.Fatalf("%s: shape %v", im.Maps[0], shape)
		}
		for _, x := range v {
			if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
				t.Fatalf("%s: non-finite map value", im.Maps[0])
			}
		}
	}
	for _, want := range []string{"a.npy", "sub/b.npy"} {
		if _, err := os.Stat(filepath.Join(out, want)); err != nil {
			t.Fatalf("map tree not mirrored: %v", err)
		}
	}
	// a defect with --fail-on-defect exits 3
	if _, code := padim(t, bin, "-q", "score", "--model", model, "--fail-on-defect", "--threshold", "1e-6", "--device", "cpu", filepath.Join(in, "a.png")); code != exitDefect {
		t.Fatalf("--fail-on-defect exited %d, want %d", code, exitDefect)
	}
	// two inputs that would write one output name: an error before anything is written
	clash := filepath.Join(dir, "clash")
	os.MkdirAll(filepath.Join(dir, "other"), 0o755)
	b0, _ := os.ReadFile(filepath.Join(in, "a.png"))
	os.WriteFile(filepath.Join(dir, "other", "a.png"), b0, 0o644)
	if _, code := padim(t, bin, "-q", "score", "--model", model, "--out", clash, filepath.Join(in, "a.png"), filepath.Join(dir, "other", "a.png")); code != exitError {
		t.Fatalf("clashing output names exited %d, want %d", code, exitError)
	}
	if _, err := os.Stat(clash); err == nil {
		t.Fatal("a clashing run wrote outputs")
	}

	// evaluate with a report
	rep := filepath.Join(dir, "report")
	stdout = mustOK(t, bin, "-q", "eval", "--model", model, "--data", data, "--json", "--report", rep, "--device", "cpu")
	var ev map[string]any
	if err := json.Unmarshal([]byte(stdout), &ev); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"image_auroc", "pixel_auroc", "aupro", "image_f1", "pixel_f1", "image_f1_calibrated", "pixel_f1_calibrated", "image_tpr", "image_fpr", "n_images", "per_image"} {
		if _, ok := ev[k]; !ok {
			t.Errorf("eval JSON lacks %q", k)
		}
	}
	if ev["n_images"].(float64) != 10 || ev["image_auroc"].(float64) < 0 || ev["image_auroc"].(float64) > 1 {
		t.Fatalf("eval: %v", ev)
	}
	t.Logf("e2e eval: image AUROC %.3f, pixel AUROC %.3f, AUPRO %.3f", ev["image_auroc"], ev["pixel_auroc"], ev["aupro"])
	if page, err := os.ReadFile(filepath.Join(rep, "index.html")); err != nil || !bytes.Contains(page, []byte("roc.png")) {
		t.Fatalf("report: %v", err)
	}

	// usage errors exit 2; a damaged model exits 1 with a message
	if _, code := padim(t, bin, "train", "--data", data); code != exitUsage {
		t.Fatalf("missing flags exited %d, want %d", code, exitUsage)
	}
	b, _ := os.ReadFile(model)
	os.WriteFile(model, b[:len(b)/2], 0o644)
	if _, code := padim(t, bin, "info", "--model", model); code != exitError {
		t.Fatalf("truncated model exited %d", code)
	}
}
