package detector

import (
	"math"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/padim/padim/detector/baseline"
	"github.com/padim/padim/detector/gauss"
)

func trainCfg(mod func(*TrainConfig)) TrainConfig {
	cfg := TrainConfig{Preprocess: testPreprocess(), Pipeline: PipelineOptions{Batch: 3}, Dim: 0, Seed: 4, Eps: 0.01, Sigma: 4}
	if mod != nil {
		mod(&cfg)
	}
	return cfg
}

// One, two and five good images give working models: one image a model with
// Σ = εI and no thresholds (said in a note), two or more cross-fitted
// thresholds; the defect scores above the good images.
func TestTrainOnFewImages(t *testing.T) {
	dir := t.TempDir()
	good := writeImages(t, filepath.Join(dir, "good"), 5, 31, false)
	bad := writeImages(t, filepath.Join(dir, "bad"), 1, 32, true)
	for _, n := range []int{1, 2, 5} {
		for _, form := range []string{FormAuto, FormFull} {
			m, rep, err := Train(ctx, newFake(32), good[:n], trainCfg(func(c *TrainConfig) { c.Gaussian = form }))
			if err != nil {
				t.Fatalf("N=%d %s: %v", n, form, err)
			}
			wantForm := form
			if form == FormAuto {
				wantForm = FormLowRank // D=16: N ≤ 5 < 8.5
			}
			if m.Gaussian.Form() != wantForm || m.NTrain != n {
				t.Fatalf("N=%d %s: form %s, N %d", n, form, m.Gaussian.Form(), m.NTrain)
			}
			if (n == 1) != (m.Calibration == nil) || (n == 1) != (len(rep.Notes) > 0) {
				t.Fatalf("N=%d: calibration %v, notes %q", n, m.Calibration, rep.Notes)
			}
			if n > 1 && (rep.Folds != n || len(m.Calibration.ImageScores) != n) { // leave-one-out
				t.Fatalf("N=%d %s: %d folds, %d out-of-fold scores", n, form, rep.Folds, len(m.Calibration.ImageScores))
			}
			sc, err := m.NewScorer(newFake(32), ScoreConfig{})
			if err != nil {
				t.Fatal(err)
			}
			rs := scoreAll(t, sc, FileInputs(append(slices.Clone(good[:1]), bad...)))
			sc.Close()
			for _, r := range rs {
				if math.IsNaN(float64(r.Score)) || math.IsInf(float64(r.Score), 0) || r.Score < 0 {
					t.Fatalf("N=%d %s: score %v", n, form, r.Score)
				}
			}
			if !(rs[1].Score > rs[0].Score) {
				t.Fatalf("N=%d %s: the defect scores %v, a training image %v", n, form, rs[1].Score, rs[0].Score)
			}
		}
	}
}

// Cross-fitting scores every image with a model fitted without it: the
// out-of-sample scores equal those of models retrained without each image —
// by exact leave-one-out for whole images, by refitting per fold for tiles.
func TestCrossFitScoresAreOutOfSample(t *testing.T) {
	dir := t.TempDir()
	files := writeImages(t, dir, 7, 33, false)
	for _, c := range []struct {
		form string
		tile int
		rule string
	}{{FormLowRank, 0, "leave-one-out"}, {FormFull, 0, "leave-one-out"}, {FormLowRank, 32, "cross-fitted over 7 folds"}, {FormFull, 32, "cross-fitted over 7 folds"}} {
		cfg := trainCfg(func(cf *TrainConfig) {
			cf.Gaussian, cf.Folds, cf.Preprocess.Tile = c.form, 7, c.tile
			if c.tile > 0 {
				cf.Preprocess.Overlap = 8
			}
		})
		m, rep, err := Train(ctx, newFake(32), files, cfg)
		if err != nil {
			t.Fatal(err)
		}
		if rep.Folds != 7 || !strings.HasPrefix(m.Calibration.Rule, c.rule) {
			t.Fatalf("%+v: %d folds, rule %q", c, rep.Folds, m.Calibration.Rule)
		}
		var want []float32
		for i := range files {
			rest := slices.Delete(slices.Clone(files), i, i+1)
			cf := cfg
			cf.Calibration = CalibrateNone
			mi, _, err := Train(ctx, newFake(32), rest, cf)
			if err != nil {
				t.Fatal(err)
			}
			sc, _ := mi.NewScorer(newFake(32), ScoreConfig{})
			want = append(want, scoreAll(t, sc, FileInputs(files[i:i+1]))[0].Score)
			sc.Close()
		}
		got := slices.Clone(m.Calibration.ImageScores)
		slices.Sort(got)
		slices.Sort(want)
		for i := range got {
			if math.Abs(float64(got[i]-want[i])) > 1e-4*float64(want[i]) {
				t.Fatalf("%+v: out-of-sample scores %v, retrained %v", c, got, want)
			}
		}
	}
}

// auto takes the low-rank form while it is cheaper and the samples fit their
// budget, and says why it switched; an explicit low-rank form over the
// budget is an error; cross-fitting spills to a temporary file.
func TestFormChoiceAndMemoryBudget(t *testing.T) {
	dir := t.TempDir()
	files := writeImages(t, dir, 12, 34, false)
	m, rep, err := Train(ctx, newFake(32), files, trainCfg(nil))
	if err != nil {
		t.Fatal(err)
	}
	if m.Gaussian.Form() != FormFull || !strings.Contains(rep.FormReason, "12 samples ≥ (D+1)/2 = 8.5") {
		t.Fatalf("12 samples at D=16: %s (%s)", m.Gaussian.Form(), rep.FormReason)
	}
	m, rep, err = Train(ctx, newFake(32), files[:8], trainCfg(nil))
	if err != nil || m.Gaussian.Form() != FormLowRank || !strings.Contains(rep.FormReason, "8 samples < (D+1)/2") {
		t.Fatalf("8 samples: %v %s (%s)", err, m.Gaussian.Form(), rep.FormReason)
	}
	small := func(c *TrainConfig) { c.SampleMemory = 3 * 64 * 16 * 4 } // three samples' worth
	m, rep, err = Train(ctx, newFake(32), files[:6], trainCfg(small))
	if err != nil || m.Gaussian.Form() != FormFull || !strings.Contains(rep.FormReason, "outgrew") || m.Calibration == nil {
		t.Fatalf("over budget: %v %v (%s), calibration %v", err, m.Gaussian, rep.FormReason, m.Calibration)
	}
	// spilled, cross-fitting refits per fold; with one image per fold that is
	// leave-one-out, which the in-memory run computes in closed form
	m, _, err = Train(ctx, newFake(32), files[:6], trainCfg(func(c *TrainConfig) { small(c); c.Folds = 6 }))
	if err != nil {
		t.Fatal(err)
	}
	ref, _, err := Train(ctx, newFake(32), files[:6], trainCfg(func(c *TrainConfig) { c.Gaussian = FormFull }))
	if err != nil {
		t.Fatal(err)
	}
	a, b := slices.Clone(m.Calibration.ImageScores), slices.Clone(ref.Calibration.ImageScores)
	slices.Sort(a)
	slices.Sort(b)
	for i := range a {
		if math.Abs(float64(a[i]-b[i])) > 1e-4*float64(b[i]) {
			t.Fatalf("spilled 6-fold %v, in-memory leave-one-out %v", a, b)
		}
	}
	if _, _, err := Train(ctx, newFake(32), files[:6], trainCfg(func(c *TrainConfig) { small(c); c.Gaussian = FormLowRank })); err == nil || !strings.Contains(err.Error(), "budget") {
		t.Fatalf("low-rank over budget: %v", err)
	}
	// asked for, the low-rank form is used past (D+1)/2 too, and equals the full one
	lr, _, err := Train(ctx, newFake(32), files, trainCfg(func(c *TrainConfig) { c.Gaussian, c.Calibration = FormLowRank, CalibrateNone }))
	if err != nil || lr.Gaussian.(*gauss.LowRank).N != 12 {
		t.Fatalf("low-rank on 12: %v", err)
	}
}

// Hold-out calibration works in the low-rank form, and the final model holds
// the held-out images too.
func TestHoldoutLowRank(t *testing.T) {
	dir := t.TempDir()
	files := writeImages(t, dir, 6, 35, false)
	m, rep, err := Train(ctx, newFake(32), files, trainCfg(func(c *TrainConfig) { c.Calibration, c.Holdout = CalibrateHoldout, 0.3 }))
	if err != nil {
		t.Fatal(err)
	}
	if m.Gaussian.Form() != FormLowRank || m.NTrain != 6 || rep.HeldOut != 3 || m.Calibration == nil || rep.Folds != 0 {
		t.Fatalf("form %s N %d held out %d calibration %v", m.Gaussian.Form(), m.NTrain, rep.HeldOut, m.Calibration)
	}
}

// Tiled images cross-fit by image: all of an image's tiles leave together.
func TestCrossFitTiles(t *testing.T) {
	dir := t.TempDir()
	files := writeImages(t, dir, 4, 36, false)
	m, rep, err := Train(ctx, newFake(32), files, trainCfg(func(c *TrainConfig) { c.Preprocess.Tile, c.Preprocess.Overlap = 32, 8 }))
	if err != nil {
		t.Fatal(err)
	}
	if m.NTrain != 16 || rep.Folds != 4 || len(m.Calibration.ImageScores) != 4 {
		t.Fatalf("N %d, %d folds, %d scores", m.NTrain, rep.Folds, len(m.Calibration.ImageScores))
	}
}

// SPADE and PatchCore train, save, load and score through the same pipeline:
// thresholds from each training image scored without its own features, the
// defect above the good images, the file round trip exact.
func TestNearestNeighbourMethods(t *testing.T) {
	dir := t.TempDir()
	good := writeImages(t, filepath.Join(dir, "good"), 8, 37, false)
	bad := writeImages(t, filepath.Join(dir, "bad"), 1, 38, true)
	for _, method := range []string{baseline.MethodSPADE, baseline.MethodPatchCore} {
		m, rep, err := Train(ctx, newFake(32), good[:6], trainCfg(func(c *TrainConfig) { c.Method, c.K, c.Coreset = method, 3, 0.5 }))
		if err != nil {
			t.Fatalf("%s: %v", method, err)
		}
		if m.Method != method || m.Gaussian.Form() != method || m.Calibration == nil || rep.Folds != 6 {
			t.Fatalf("%s: method %s form %s calibration %v folds %d", method, m.Method, m.Gaussian.Form(), m.Calibration, rep.Folds)
		}
		p := filepath.Join(dir, method+".padim")
		if err := m.Save(p); err != nil {
			t.Fatal(err)
		}
		m2, err := Load(p)
		if err != nil {
			t.Fatal(err)
		}
		if m2.Method != method || m2.Pool != m.Pool {
			t.Fatalf("%s: loaded method %s pool %d", method, m2.Method, m2.Pool)
		}
		var scores [2][]float32
		for i, mm := range []*Model{m, m2} {
			sc, err := mm.NewScorer(newFake(32), ScoreConfig{})
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range scoreAll(t, sc, FileInputs(append(slices.Clone(good[6:]), bad...))) {
				if r.Err != nil {
					t.Fatal(r.Err)
				}
				scores[i] = append(scores[i], r.Score)
			}
			sc.Close()
		}
		if !slices.Equal(scores[0], scores[1]) {
			t.Fatalf("%s: scores change on a round trip: %v vs %v", method, scores[0], scores[1])
		}
		if !(scores[0][2] > scores[0][0] && scores[0][2] > scores[0][1]) {
			t.Fatalf("%s: the defect %v does not outscore the good images %v", method, scores[0][2], scores[0][:2])
		}
		if method == baseline.MethodPatchCore && m.Pool != 3 {
			t.Fatalf("PatchCore pooling %d, want 3", m.Pool)
		}
	}
}
