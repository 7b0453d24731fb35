package detector

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/padim/padim/detector/fileio/safetensors"
)

// FuzzModelHeader edits a model's header values and re-signs the file (a valid
// checksum), as a crafted or foreign file would be: loading never panics or
// takes unbounded memory or time, and a model that loads scores an image.
func FuzzModelHeader(f *testing.F) {
	dir := f.TempDir()
	files := writeImages(f, dir, 4, 41, false)
	m, _, err := Train(ctx, newFake(32), files, TrainConfig{Preprocess: testPreprocess(), Dim: 8, Eps: 0.01, Sigma: 4})
	if err != nil {
		f.Fatal(err)
	}
	path := filepath.Join(dir, "m.padim")
	if err := m.Save(path); err != nil {
		f.Fatal(err)
	}
	orig, err := safetensors.Read(path, true)
	if err != nil {
		f.Fatal(err)
	}
	for _, seed := range []string{"sigma=1e9", "sigma=NaN", "sigma=-4", "eps=-1", "grid=100000,100000", "resize=100000", "crop=500",
		"tile=1", "overlap=31", "mean=NaN,0,0", "std=0,1,1", "taps=[]", "total_channels=0", "n_train=0", "gaussian=lowrank", "format_version=1", "rank=99999",
		"calibration_target_fpr=2", "calibration_expected_fpr=NaN", "calibration_conformal=true", "method=spade", "pool=3"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, edit string) {
		k, v, ok := strings.Cut(edit, "=")
		if !ok {
			return
		}
		md := map[string]string{}
		for key, val := range orig.Metadata {
			md[key] = val
		}
		md[k] = v
		p := filepath.Join(t.TempDir(), "x.padim")
		if err := safetensors.Write(p, md, orig.Tensors); err != nil {
			return
		}
		lm, err := Load(p)
		if err != nil {
			return
		}
		sc, err := lm.NewScorer(newFake(32), ScoreConfig{})
		if err != nil {
			return
		}
		defer sc.Close()
		// a model that loads scores a good image of its own training set
		if err := sc.Score(ctx, FileInputs(files[:1]), func(r *Result) error { return r.Err }); err != nil {
			t.Fatalf("header %s loads, but scoring fails: %v", edit, err)
		}
	})
}
