package detector

import (
	"math"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// numpyQuantile is NumPy's default (linear) quantile, written out here
// independently of the package's.
func numpyQuantile(v []float32, q float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	h := q * float64(len(s)-1)
	i := int(h)
	if i+1 >= len(s) {
		return float64(s[len(s)-1])
	}
	return float64(s[i]) + (h-float64(i))*float64(s[i+1]-s[i])
}

// Users who change nothing keep today's thresholds: cross-fitting's image
// threshold is q0.97 of the out-of-sample scores (no margin), hold-out's
// q0.99 + 0.25·(q0.99 − median), and neither is conformal.
func TestDefaultThresholdsUnchanged(t *testing.T) {
	dir := t.TempDir()
	files := writeImages(t, filepath.Join(dir, "imgs"), 12, 31, false)
	for _, c := range []struct {
		calibration string
		image       func([]float32) float64
		rule        string
	}{
		{CalibrateCrossFit, func(s []float32) float64 { return numpyQuantile(s, 0.97) },
			"leave-one-out (every image scored by the model of all the others): image: q0.97 of out-of-sample image scores; pixel: q0.999 of their map pixels"},
		{CalibrateHoldout, func(s []float32) float64 {
			q := numpyQuantile(s, 0.99)
			return q + 0.25*(q-numpyQuantile(s, 0.5))
		}, "held-out images scored by a model fitted without them: image: q0.99+0.25·(q0.99−median) of out-of-sample image scores; pixel: q0.999+0.25·(q0.999−median) of their map pixels"},
	} {
		m, rep, err := Train(ctx, newFake(32), files, TrainConfig{Preprocess: testPreprocess(), Dim: 8, Eps: 0.01, Sigma: 4, Calibration: c.calibration})
		if err != nil {
			t.Fatal(err)
		}
		cal := m.Calibration
		if want := float32(c.image(cal.ImageScores)); cal.Image != want || cal.Rule != c.rule || cal.Conformal {
			t.Errorf("%s: image threshold %v (want %v), rule %q (want %q), conformal %v", c.calibration, cal.Image, want, cal.Rule, c.rule, cal.Conformal)
		}
		n := len(cal.ImageScores)
		above := 0
		for _, s := range cal.ImageScores {
			if s <= cal.Image {
				above++
			}
		}
		if want := float64(n+1-above) / float64(n+1); cal.ExpectedFPR != want {
			t.Errorf("%s: expected false-alarm rate %v, want %v", c.calibration, cal.ExpectedFPR, want)
		}
		for _, note := range rep.Notes {
			if strings.Contains(note, "false-alarm") {
				t.Errorf("%s: a default calibration warns: %s", c.calibration, note)
			}
		}
	}
}

// With a target α the image threshold is the ⌈(n+1)(1−α)⌉-th smallest
// score, whose expected false-alarm rate is at most α; with too few scores
// it is the largest, and the calibration says so.
func TestConformalThreshold(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	scores := make([]float32, 99)
	for i := range scores {
		scores[i] = float32(i + 1)
	}
	r.Shuffle(len(scores), func(i, j int) { scores[i], scores[j] = scores[j], scores[i] })
	px := []float32{1, 2, 3}
	for _, c := range []struct {
		alpha float64
		rank  int
	}{{0.05, 95}, {0.01, 99}, {0.1, 90}, {0.5, 50}, {0.0301, 97}} {
		cal, err := CalibrateScores(scores, px, RuleFor(CalibrateCrossFit, c.alpha))
		if err != nil {
			t.Fatal(err)
		}
		if cal.Image != float32(c.rank) || !cal.Conformal || cal.TargetFPR != c.alpha || cal.Warning() != "" {
			t.Errorf("α=%v: threshold %v (want the %d-th smallest), conformal %v, target %v, warning %q", c.alpha, cal.Image, c.rank, cal.Conformal, cal.TargetFPR, cal.Warning())
		}
		if want := float64(100-c.rank) / 100; math.Abs(cal.ExpectedFPR-want) > 1e-12 || cal.ExpectedFPR > c.alpha {
			t.Errorf("α=%v: expected rate %v, want %v ≤ α", c.alpha, cal.ExpectedFPR, want)
		}
		if !strings.Contains(cal.Rule, "conformal") {
			t.Errorf("α=%v: rule %q", c.alpha, cal.Rule)
		}
	}
	// 20 scores cannot bound the rate at 3 %: ⌈21·0.97⌉ = 21 > 20
	cal, err := CalibrateScores(scores[:20], px, RuleFor(CalibrateCrossFit, 0.03))
	if err != nil {
		t.Fatal(err)
	}
	if cal.Image != slices.Max(scores[:20]) || math.Abs(cal.ExpectedFPR-1.0/21) > 1e-12 || !strings.Contains(cal.Warning(), "at least 33 out-of-sample scores") {
		t.Errorf("too few scores: threshold %v (max %v), expected %v, warning %q", cal.Image, slices.Max(scores[:20]), cal.ExpectedFPR, cal.Warning())
	}
	if _, err := CalibrateScores(scores, px, RuleFor(CalibrateCrossFit, 1)); err == nil {
		t.Error("a target of 1 accepted")
	}
}

// Under exchangeability the conformal threshold's false-alarm rate on new
// good images is at most the target: scores and the new image drawn alike.
func TestConformalFalseAlarmRate(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	const trials, n, alpha = 20000, 59, 0.05 // ⌈60·0.95⌉ = 57: rate 3/60 = 5 %
	scores := make([]float32, n)
	alarms := 0
	for k := 0; k < trials; k++ {
		for i := range scores {
			scores[i] = float32(r.ExpFloat64())
		}
		cal, err := CalibrateScores(scores, scores, RuleFor(CalibrateCrossFit, alpha))
		if err != nil {
			t.Fatal(err)
		}
		if float32(r.ExpFloat64()) > cal.Image {
			alarms++
		}
	}
	rate := float64(alarms) / trials
	sd := math.Sqrt(alpha * (1 - alpha) / trials)
	t.Logf("false-alarm rate %.4f over %d trials (target %.2f, 4σ = %.4f)", rate, trials, alpha, 4*sd)
	if rate > alpha+4*sd || rate < 3.0/60-4*sd {
		t.Fatalf("false-alarm rate %.4f, want 3/60 = %.4f (≤ %.2f)", rate, 3.0/60, alpha)
	}
}

// Train with a target: the conformal threshold, saved and loaded with its
// target and expected rate; too few images for the target are a note.
func TestTrainTargetFPR(t *testing.T) {
	dir := t.TempDir()
	files := writeImages(t, filepath.Join(dir, "imgs"), 12, 32, false)
	m, rep, err := Train(ctx, newFake(32), files, TrainConfig{Preprocess: testPreprocess(), Dim: 8, Eps: 0.01, Sigma: 4, TargetFPR: 0.25})
	if err != nil {
		t.Fatal(err)
	}
	cal := m.Calibration
	s := slices.Sorted(slices.Values(cal.ImageScores))
	if k := ConformalRank(12, 0.25); k != 10 || cal.Image != s[k-1] || !cal.Conformal || cal.ExpectedFPR != 3.0/13 {
		t.Fatalf("threshold %v, want the 10th smallest of %v; conformal %v, expected %v", cal.Image, s, cal.Conformal, cal.ExpectedFPR)
	}
	p := filepath.Join(dir, "m.padim")
	if err := m.Save(p); err != nil {
		t.Fatal(err)
	}
	lm, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if lc := lm.Calibration; lc.TargetFPR != 0.25 || !lc.Conformal || lc.ExpectedFPR != cal.ExpectedFPR || lc.Image != cal.Image {
		t.Fatalf("loaded calibration %+v, saved %+v", lc, cal)
	}
	if len(rep.Notes) != 0 {
		t.Errorf("notes: %v", rep.Notes)
	}
	_, rep, err = Train(ctx, newFake(32), files, TrainConfig{Preprocess: testPreprocess(), Dim: 8, Eps: 0.01, Sigma: 4, TargetFPR: 0.01})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(rep.Notes, func(n string) bool {
		return strings.Contains(n, "needs at least 99 out-of-sample scores, there are 12")
	}) {
		t.Errorf("too few images for 1 %%: notes %v", rep.Notes)
	}
}
