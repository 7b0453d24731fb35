package anomalymap

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/padim/padim/detector/internal/refpadim"
)

func TestKernel33TapsNormalised(t *testing.T) {
	k := Kernel(4)
	if len(k) != 33 {
		t.Fatalf("%d taps", len(k))
	}
	var s float64
	for _, v := range k {
		s += float64(v)
	}
	if math.Abs(s-1) > 1e-6 || k[16] < k[15] || k[15] != k[17] {
		t.Fatalf("sum %v centre %v", s, k[16])
	}
}

func TestMirrorMatchesScipy(t *testing.T) {
	// scipy mode='mirror' on [a b c d]: ... c b | a b c d | c b a ...
	n := 4
	want := map[int]int{-3: 3, -2: 2, -1: 1, 0: 0, 3: 3, 4: 2, 5: 1, 6: 0, 7: 1}
	for i, w := range want {
		if got := Mirror(i, n); got != w {
			t.Errorf("Mirror(%d,4) = %d want %d", i, got, w)
		}
	}
	if Mirror(-5, 1) != 0 {
		t.Error("n=1")
	}
}

func TestUpsampleHalfPixel(t *testing.T) {
	// 2 → 4: PyTorch gives [a, .75a+.25b, .25a+.75b, b].
	u, _ := NewUpsampler(1, 2, 1, 4)
	dst := make([]float32, 4)
	u.Apply([]float32{0, 4}, dst)
	want := []float32{0, 1, 3, 4}
	for i := range want {
		if dst[i] != want[i] {
			t.Fatalf("got %v want %v", dst, want)
		}
	}
}

// The whole map (upsample + blur) against the float64 reference, at PaDiM's sizes
// and at odd ones (smaller than the kernel, non-integer ratios, not square).
func TestMapMatchesFloat64Reference(t *testing.T) {
	for _, c := range []struct{ gh, gw, h, w int }{{56, 56, 224, 224}, {7, 5, 20, 13}, {3, 3, 9, 9}, {14, 14, 224, 224}} {
		r := rand.New(rand.NewPCG(uint64(c.h), 2))
		grid := make([]float32, c.gh*c.gw)
		g64 := make([]float64, len(grid))
		for i := range grid {
			grid[i] = float32(10 + 5*r.Float64())
			g64[i] = float64(grid[i])
		}
		var px []float32
		var score float32
		if c.h == c.w {
			m, err := NewMaker(c.gh, c.gw, c.h, 4)
			if err != nil {
				t.Fatal(err)
			}
			if px, score, err = m.Make(grid, []Rect{{0, 0, c.w, c.h}}, c.w, c.h); err != nil {
				t.Fatal(err)
			}
		} else {
			u, _ := NewUpsampler(c.gh, c.gw, c.h, c.w)
			b, _ := NewBlur(c.h, c.w, 4)
			up := make([]float32, c.h*c.w)
			u.Apply(grid, up)
			px = make([]float32, c.h*c.w)
			b.Apply(up, px, make([]float32, c.h*c.w))
			score = Max(px)
		}
		want := refpadim.Blur(refpadim.Upsample(g64, c.gh, c.gw, c.h, c.w), c.h, c.w, 4)
		worst, wmax := 0.0, math.Inf(-1)
		for i, v := range want {
			worst = max(worst, math.Abs(float64(px[i])-v)/math.Abs(v))
			wmax = max(wmax, v)
		}
		if worst > 1e-5 {
			t.Errorf("%+v: max relative error %.3g", c, worst)
		}
		if math.Abs(float64(score)-wmax)/wmax > 1e-5 {
			t.Errorf("%+v: score %v want %v", c, score, wmax)
		}
	}
}

// Overlapping tiles are averaged where they overlap; uncovered pixels and
// rectangles outside the map are errors.
func TestMakerStitchesTiles(t *testing.T) {
	m, err := NewMaker(2, 2, 4, 0)
	if err != nil {
		t.Fatal(err)
	}
	grids := []float32{1, 1, 1, 1, 3, 3, 3, 3}
	px, score, err := m.Make(grids, []Rect{{0, 0, 4, 4}, {2, 0, 4, 4}}, 6, 4)
	if err != nil {
		t.Fatal(err)
	}
	want := []float32{1, 1, 2, 2, 3, 3}
	for y := 0; y < 4; y++ {
		for x := 0; x < 6; x++ {
			if px[y*6+x] != want[x] {
				t.Fatalf("row %d: %v, want %v", y, px[y*6:(y+1)*6], want)
			}
		}
	}
	if score != 3 {
		t.Fatalf("score %v", score)
	}
	if _, _, err := m.Make(grids[:4], []Rect{{0, 0, 4, 4}}, 6, 4); err == nil {
		t.Fatal("uncovered pixels accepted")
	}
	if _, _, err := m.Make(grids, []Rect{{0, 0, 4, 4}, {3, 0, 4, 4}}, 6, 4); err == nil {
		t.Fatal("a tile outside the map accepted")
	}
}

func BenchmarkMake224(b *testing.B) {
	m, _ := NewMaker(56, 56, 224, 4)
	grid := make([]float32, 56*56)
	for i := range grid {
		grid[i] = float32(i % 17)
	}
	for b.Loop() {
		m.Make(grid, []Rect{{0, 0, 224, 224}}, 224, 224)
	}
}

// A map that covers its image is stretched onto it; one that covers a crop
// leaves the rest to the fill value; the identity frame copies.
func TestToImage(t *testing.T) {
	m := []float32{0, 4, 8, 12}
	same := ToImage(m, 2, 2, 2, 2, 0, 0, 1, 1, -1)
	if !slices.Equal(same, m) {
		t.Fatalf("identity: %v", same)
	}
	up := ToImage([]float32{0, 4}, 2, 1, 4, 1, 0, 0, 2, 1, -1)
	if !slices.Equal(up, []float32{0, 1, 3, 4}) { // PyTorch's align_corners=False
		t.Fatalf("stretch: %v", up)
	}
	crop := ToImage([]float32{5, 5}, 2, 1, 6, 1, 2, 0, 1, 1, -1)
	if !slices.Equal(crop, []float32{-1, -1, 5, 5, -1, -1}) {
		t.Fatalf("crop: %v", crop)
	}
}
