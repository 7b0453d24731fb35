package picture

import "testing"

func TestRangeFallsBackToTheMap(t *testing.T) {
	if got := (Range{Lo: 1, Hi: 5}).For([]float32{9, 10}); got != (Range{1, 5}) {
		t.Fatalf("a calibrated range was replaced: %v", got)
	}
	if got := (Range{}).For([]float32{3, -2, 7}); got != (Range{-2, 7}) {
		t.Fatalf("empty range: got %v, want the map's [-2, 7]", got)
	}
	// the hot end of an uncalibrated map is hot, the cold end cold
	h := Heatmap([]float32{0, 10}, 2, 1, Range{}.For([]float32{0, 10}))
	if h.Pix[0] == h.Pix[4] && h.Pix[2] == h.Pix[6] {
		t.Fatal("heatmap of an uncalibrated map is flat")
	}
}
