package shard

import (
	"slices"
	"testing"
)

// The summary's counts and histogram from known records: bins of equal
// width over the scores' range, the top score in the last bin, one verdict
// per scored record, unreadable ones listed.
func TestSummaryTallyAndHistogram(t *testing.T) {
	f := func(v float32) *float32 { return &v }
	b := func(v bool) *bool { return &v }
	var s Summary
	s.Tally("a", "a", f(0), b(false), f(5), 0, "")
	s.Tally("b", "b", f(10), b(true), f(5), 2, "")
	s.Tally("c", "c", f(5), nil, nil, 0, "")
	s.Tally("d", "d", f(9.9), b(true), f(6), 1, "")
	s.Tally("e", "e", nil, nil, nil, 0, "cannot decode")
	s.Tally("f", "f", nil, nil, nil, 0, "")
	if s.Scored != 4 || s.Defect != 2 || s.Good != 1 || s.NoVerdict != 1 || s.Unreadable != 1 || *s.Threshold != 5 {
		t.Fatalf("counts %+v", s)
	}
	if len(s.Defects) != 2 || s.Defects[0].Path != "b" || s.Defects[0].Boxes != 2 || s.Unreadables[0].Error != "cannot decode" {
		t.Fatalf("lists %+v %+v", s.Defects, s.Unreadables)
	}
	h := ScoreHistogram(s.scores)
	want := make([]int, HistogramBins)
	want[0], want[10], want[19] = 1, 1, 2 // 0; 5 (the middle); 9.9 and 10 (the top, in the last bin)
	if h.Lo != 0 || h.Hi != 10 || !slices.Equal(h.Counts, want) {
		t.Fatalf("histogram %+v, want %v", h, want)
	}
	if one := ScoreHistogram([]float32{3, 3}); one.Counts[0] != 2 || ScoreHistogram(nil) != nil {
		t.Fatalf("equal scores: %+v", one)
	}
}
