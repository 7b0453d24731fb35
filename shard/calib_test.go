package shard

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/padim/padim/detector"
)

// CombineCalib puts every shard's out-of-sample material back in the fit's
// order and applies the fit's rule; it refuses material that does not cover
// the statistics' images exactly once.
func TestCombineCalib(t *testing.T) {
	dir := t.TempDir()
	set := &detector.ShardSet{N: 5, ID: "total-id"}
	rec := func(i int) CalibRecord {
		return CalibRecord{Index: i, Key: fmt.Sprintf("img%d.png", i), Score: float32(10 - i), Pixels: EncodeFloats([]float32{float32(i), float32(i) + 0.5})}
	}
	write := func(name, shard string, h CalibHeader, recs ...CalibRecord) string {
		t.Helper()
		p := filepath.Join(dir, name)
		if h.TotalID == "" {
			h.TotalID, h.N = set.ID, set.N
		}
		h.Shard, h.Stride, h.MapW, h.MapH, h.Inputs = shard, 1, 2, 1, len(recs)
		if err := WriteCalib(p, h, recs); err != nil {
			t.Fatal(err)
		}
		return p
	}
	a := write("a.calib", "0/2", CalibHeader{}, rec(3), rec(0), rec(4))
	b := write("b.calib", "1/2", CalibHeader{}, rec(1), rec(2))
	for _, rule := range []detector.Rule{detector.CrossFitRule, detector.RuleFor(detector.CalibrateCrossFit, 0.2)} {
		got, err := CombineCalib(set, []string{b, a}, rule)
		if err != nil {
			t.Fatal(err)
		}
		want, err := detector.CalibrateScores([]float32{10, 9, 8, 7, 6}, []float32{0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5, 4, 4.5}, rule)
		if err != nil {
			t.Fatal(err)
		}
		if got.Thresholds != want.Thresholds || !slices.Equal(got.ImageScores, want.ImageScores) || got.Rule != detector.LeaveOneOutHow+": "+want.Rule || got.Conformal != want.Conformal {
			t.Fatalf("combined %+v, want %+v", got, want)
		}
	}
	failed := rec(2)
	failed.Score, failed.Pixels, failed.Error = 0, "", "truncated PNG"
	for _, c := range []struct {
		name  string
		paths []string
		want  string
	}{
		{"a shard missing", []string{a}, "scored 3"},
		{"an image unreadable now", []string{a, write("f.calib", "1/2", CalibHeader{}, rec(1), failed)}, "1 unreadable now, first img2.png: truncated PNG"},
		{"other statistics", []string{a, write("o.calib", "1/2", CalibHeader{TotalID: "other", N: 5}, rec(1), rec(2))}, "other statistics"},
		{"overlapping shards", []string{a, b, write("x.calib", "2/3", CalibHeader{}, rec(4))}, "overlap"},
		{"a shard twice", []string{a, write("b2.calib", "0/2", CalibHeader{}, rec(1), rec(2))}, "both calibration shard 0/2"},
	} {
		if _, err := CombineCalib(set, c.paths, detector.CrossFitRule); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error saying %q", c.name, err, c.want)
		}
	}
	// a file cut short is named
	raw, _ := os.ReadFile(b)
	cut := filepath.Join(dir, "cut.calib")
	os.WriteFile(cut, raw[:len(raw)-len(raw)/3], 0o644)
	if _, err := CombineCalib(set, []string{a, cut}, detector.CrossFitRule); err == nil || !strings.Contains(err.Error(), "cut.calib") {
		t.Errorf("a truncated calibration file: %v", err)
	}
}
