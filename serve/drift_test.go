package serve

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/padim/padim/detector"
	"github.com/padim/padim/detector/imageio"
)

func TestKSStatistic(t *testing.T) {
	for _, c := range []struct {
		a, b []float64
		want float64
	}{
		{[]float64{1, 2, 3}, []float64{1, 2, 3}, 0},
		{[]float64{1, 2, 3}, []float64{4, 5}, 1},
		{[]float64{1, 2, 3, 4}, []float64{3, 4, 5, 6}, 0.5},
		{[]float64{1, 1, 1, 2}, []float64{1, 2, 2, 2}, 0.5}, // ties
	} {
		if got := ksStatistic(c.a, c.b); math.Abs(got-c.want) > 1e-12 {
			t.Errorf("KS(%v, %v) = %v, want %v", c.a, c.b, got, c.want)
		}
	}
	if p := ksPValue(0, 1000, 100); p != 1 {
		t.Errorf("p-value of 0: %v", p)
	}
	if p := ksPValue(0.5, 1000, 100); p > 1e-10 {
		t.Errorf("p-value of 0.5 with n=1000, m=100: %v", p)
	}
}

// metricValue reads a gauge from /metrics; ok false when absent.
func metricValue(body []byte, series string) (float64, bool) {
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`).FindSubmatch(body)
	if m == nil {
		return 0, false
	}
	v, err := strconv.ParseFloat(string(m[1]), 64)
	return v, err == nil
}

// A score stream like the calibration scores keeps the KS low; shifted
// streams raise it, and the defect rate with it; a reload restarts the window.
func TestDriftShiftedStreams(t *testing.T) {
	f := newFixture(t, 3)
	o := testOptions()
	o.DriftWindow = 500
	ts := start(t, []ModelSpec{{"wood", f.path}}, fakeLoader(&fakeConfig{}), o)
	m, err := detector.Load(f.path)
	if err != nil {
		t.Fatal(err)
	}
	cal := slices.Clone(m.Calibration.ImageScores) // the model's tensors are mapped: copy before it goes
	lo, hi := float32(math.Inf(1)), float32(math.Inf(-1))
	for _, v := range cal {
		lo, hi = min(lo, v), max(hi, v)
	}
	spread := hi - lo
	r := rand.New(rand.NewPCG(1, 2))
	feed := func(shift float32) {
		for i := 0; i < o.DriftWindow; i++ {
			ts.models["wood"].drift.add(cal[r.IntN(len(cal))] + shift)
		}
	}
	stats := func() driftStats {
		a := ts.do(http.MethodGet, "/v2/models/wood/stats", nil)
		var st driftStats
		if a.code != http.StatusOK || json.Unmarshal(a.body, &st) != nil {
			t.Fatalf("stats: %v", a)
		}
		return st
	}
	st := stats()
	if st.Images != 0 || st.KS != nil || st.Calibration != len(cal) || st.ExpectedDefectRate == nil {
		t.Fatalf("before any image: %+v", st)
	}
	var ks []float64
	for _, shift := range []float32{0, 0.25 * spread, spread, 3 * spread} {
		feed(shift)
		st = stats()
		if st.Images != o.DriftWindow || st.KS == nil || st.DefectRate == nil {
			t.Fatalf("shift %v: %+v", shift, st)
		}
		met := ts.do(http.MethodGet, "/metrics", nil).body
		v, ok := metricValue(met, `padim_score_drift_ks{model="wood"}`)
		rate, ok2 := metricValue(met, `padim_defect_rate{model="wood"}`)
		exp, ok3 := metricValue(met, `padim_expected_defect_rate{model="wood"}`)
		if !ok || !ok2 || !ok3 || v != *st.KS || rate != *st.DefectRate || exp != *st.ExpectedDefectRate {
			t.Fatalf("shift %v: metrics %v %v %v, stats %+v", shift, v, rate, exp, st)
		}
		t.Logf("shift %.3g: KS %.3f (p %.2g), defect rate %.3f (expected %.3f)", shift, *st.KS, *st.KSPValue, *st.DefectRate, *st.ExpectedDefectRate)
		ks = append(ks, *st.KS)
	}
	if ks[0] > 0.15 {
		t.Errorf("scores drawn from the calibration scores: KS %v", ks[0])
	}
	for i := 1; i < len(ks); i++ {
		if ks[i] <= ks[i-1] {
			t.Errorf("KS did not rise with the shift: %v", ks)
		}
	}
	if ks[len(ks)-1] != 1 || *st.DefectRate != 1 {
		t.Errorf("far shifted: KS %v, defect rate %v", ks[len(ks)-1], *st.DefectRate)
	}
	// served images enter the window; a reload starts it again
	if _, err := ts.Reload("wood"); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		if _, a := ts.scoreV1("wood", f.imgs[i], ""); a.code != http.StatusOK {
			t.Fatal(a)
		}
	}
	if st = stats(); st.Images != 3 || st.Version != "2" || st.Scored != 3 {
		t.Fatalf("after a reload and 3 images: %+v", st)
	}
}

// A model without calibration scores says so, in the stats and in /metrics.
func TestDriftWithoutCalibration(t *testing.T) {
	dir := t.TempDir()
	var files []string
	for i := 0; i < 8; i++ {
		p := filepath.Join(dir, fmt.Sprintf("%d.png", i))
		os.WriteFile(p, texture(uint64(100+i), false), 0o644)
		files = append(files, p)
	}
	pre := imageio.Preprocess{Resize: fakeSize, Mean: imageio.ImageNetMean, Std: imageio.ImageNetStd}
	mdl, _, err := detector.Train(context.Background(), newFake(nil, 1), files, detector.TrainConfig{Preprocess: pre, Dim: 8, Seed: 1, Eps: 0.01, Sigma: 2, Calibration: detector.CalibrateNone,
		BackboneName: "fake", BackboneONNX: []byte("fake graph")})
	if err != nil {
		t.Fatal(err)
	}
	if mdl.Calibration != nil {
		t.Fatal("a model trained without a hold-out has calibration")
	}
	path := filepath.Join(dir, "raw.padim")
	if err := mdl.Save(path); err != nil {
		t.Fatal(err)
	}
	ts := start(t, []ModelSpec{{"raw", path}}, fakeLoader(&fakeConfig{}), testOptions())
	if _, a := ts.scoreV1("raw", texture(7, false), ""); a.code != http.StatusOK {
		t.Fatal(a)
	}
	a := ts.do(http.MethodGet, "/v2/models/raw/stats", nil)
	var st driftStats
	json.Unmarshal(a.body, &st)
	if st.KS != nil || st.DefectRate != nil || st.Images != 1 || len(st.Notes) < 2 || !strings.Contains(strings.Join(st.Notes, " "), "no calibration scores") {
		t.Fatalf("stats of an uncalibrated model: %s", a.body)
	}
	met := ts.do(http.MethodGet, "/metrics", nil).body
	if _, ok := metricValue(met, `padim_score_drift_ks{model="raw"}`); ok {
		t.Error("a KS without a reference")
	}
	if v, ok := metricValue(met, `padim_drift_reference_images{model="raw"}`); !ok || v != 0 {
		t.Errorf("reference images: %v %v", v, ok)
	}
}
