package embed

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

func TestRandomChannelsSeededSortedUnique(t *testing.T) {
	a := RandomChannels(1792, 550, 1024)
	b := RandomChannels(1792, 550, 1024)
	if !slices.Equal(a, b) {
		t.Fatal("same seed gave different channels")
	}
	if len(a) != 550 || !slices.IsSorted(a) {
		t.Fatalf("len %d sorted %v", len(a), slices.IsSorted(a))
	}
	for i := 1; i < len(a); i++ {
		if a[i] == a[i-1] {
			t.Fatal("duplicate channel")
		}
	}
	if c := RandomChannels(1792, 550, 7); slices.Equal(a, c) {
		t.Fatal("different seeds gave the same channels")
	}
	if got := RandomChannels(10, 0, 1); len(got) != 10 {
		t.Fatalf("d=0 kept %d", len(got))
	}
	if got := RandomChannels(10, 20, 1); len(got) != 10 {
		t.Fatalf("d>C kept %d", len(got))
	}
}

func TestEmbedNearestConcatSubset(t *testing.T) {
	// tap a: 2 channels on 4x4, tap b: 3 channels on 2x2; batch of 2.
	shapes := []TapShape{{"a", 2, 4, 4}, {"b", 3, 2, 2}}
	val := func(tap, b, c, y, x int) float32 { return float32(tap*10000 + b*1000 + c*100 + y*10 + x) }
	mk := func(ti int, s TapShape) Tap {
		tp := Tap{TapShape: s, N: 2, Data: make([]float32, 2*s.C*s.H*s.W)}
		for b := 0; b < 2; b++ {
			for c := 0; c < s.C; c++ {
				for y := 0; y < s.H; y++ {
					for x := 0; x < s.W; x++ {
						tp.Data[((b*s.C+c)*s.H+y)*s.W+x] = val(ti, b, c, y, x)
					}
				}
			}
		}
		return tp
	}
	taps := []Tap{mk(0, shapes[0]), mk(1, shapes[1])}
	channels := []int{1, 2, 4} // a.1, b.0, b.2
	l, err := NewLayout(shapes, channels)
	if err != nil {
		t.Fatal(err)
	}
	dst := make([]float32, 2*16*3)
	if _, err := l.Embed(taps, dst); err != nil {
		t.Fatal(err)
	}
	for b := 0; b < 2; b++ {
		for y := 0; y < 4; y++ {
			for x := 0; x < 4; x++ {
				p := y*4 + x
				got := dst[(b*16+p)*3:]
				want := []float32{val(0, b, 1, y, x), val(1, b, 0, y/2, x/2), val(1, b, 2, y/2, x/2)}
				if !slices.Equal(got[:3], want) {
					t.Fatalf("b%d y%d x%d: got %v want %v", b, y, x, got[:3], want)
				}
			}
		}
	}
}

func TestNewLayoutRejects(t *testing.T) {
	if _, err := NewLayout([]TapShape{{"a", 2, 4, 4}, {"b", 2, 3, 3}}, []int{0}); err == nil {
		t.Error("non-dividing grid accepted")
	}
	if _, err := NewLayout([]TapShape{{"a", 2, 4, 4}}, []int{2}); err == nil {
		t.Error("out-of-range channel accepted")
	}
	if _, err := NewLayout([]TapShape{{"a", 2, 4, 4}}, []int{1, 0}); err == nil {
		t.Error("unsorted channels accepted")
	}
}

// BenchmarkEmbedResnet50 gathers d=550 of layer1..3 of a Resnet-50 at 224² for a batch of 16.
func BenchmarkEmbedResnet50(b *testing.B) {
	shapes := []TapShape{{"layer1", 256, 56, 56}, {"layer2", 512, 28, 28}, {"layer3", 1024, 14, 14}}
	l, err := NewLayout(shapes, RandomChannels(TotalChannels(shapes), 550, 1))
	if err != nil {
		b.Fatal(err)
	}
	const n = 16
	taps := make([]Tap, len(shapes))
	for i, s := range shapes {
		taps[i] = Tap{TapShape: s, N: n, Data: make([]float32, n*s.C*s.H*s.W)}
	}
	dst := make([]float32, n*l.P()*l.D())
	for b.Loop() {
		l.Embed(taps, dst)
	}
	b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "images/s")
}

// 3×3 pooling averages each tap's neighbourhood (zero padding counted, as
// PyTorch's AvgPool2d(3, 1, 1)) before the nearest upsampling.
func TestPooledLayout(t *testing.T) {
	shapes := []TapShape{{"a", 1, 4, 4}, {"b", 1, 2, 2}}
	l, err := NewLayout(shapes, []int{0, 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.WithPool(2); err == nil {
		t.Fatal("even pooling accepted")
	}
	lp, _ := l.WithPool(3)
	a := make([]float32, 16)
	for i := range a {
		a[i] = float32(i)
	}
	taps := []Tap{{TapShape: shapes[0], N: 1, Data: a}, {TapShape: shapes[1], N: 1, Data: []float32{9, 0, 0, 0}}}
	dst := make([]float32, 16*2)
	if _, err := lp.Embed(taps, dst); err != nil {
		t.Fatal(err)
	}
	// patch (0,0): tap a's corner average (0+1+4+5)/9; tap b's (9+0+0+0)/9 = 1
	if got := dst[0]; math.Abs(float64(got)-10.0/9) > 1e-6 {
		t.Fatalf("pooled corner %v", got)
	}
	if got := dst[1]; got != 1 {
		t.Fatalf("pooled coarse tap %v", got)
	}
	// patch (1,1): the centre of a: (0+1+2+4+5+6+8+9+10)/9 = 5
	if got := dst[(1*4+1)*2]; math.Abs(float64(got)-5) > 1e-6 {
		t.Fatalf("pooled centre %v", got)
	}
}

// Embed equals the definition element by element (nearest upsampling of every
// tap to the finest grid, the kept channels in order) on Resnet-like taps with a
// random subset, a batch of 3, with and without pooling; dst's tail is untouched.
func TestEmbedEqualsDefinition(t *testing.T) {
	shapes := []TapShape{{"l1", 40, 12, 12}, {"l2", 36, 6, 6}, {"l3", 70, 3, 3}}
	r := rand.New(rand.NewPCG(3, 4))
	const n = 3
	taps := make([]Tap, len(shapes))
	for i, s := range shapes {
		taps[i] = Tap{TapShape: s, N: n, Data: make([]float32, n*s.C*s.H*s.W)}
		for k := range taps[i].Data {
			taps[i].Data[k] = r.Float32()
		}
	}
	for _, channels := range [][]int{RandomChannels(146, 57, 9), RandomChannels(146, 0, 0), {0}, {145}, {40, 41, 145}} {
		for _, k := range []int{0, 3} {
			l, err := NewLayout(shapes, channels)
			if err != nil {
				t.Fatal(err)
			}
			if l, err = l.WithPool(k); err != nil {
				t.Fatal(err)
			}
			P, D := l.P(), l.D()
			dst := make([]float32, n*P*D+5)
			for i := range dst {
				dst[i] = -7
			}
			if _, err := l.Embed(taps, dst); err != nil {
				t.Fatal(err)
			}
			for b := 0; b < n; b++ {
				for y := 0; y < l.H; y++ {
					for x := 0; x < l.W; x++ {
						for d, c := range channels {
							ti := 0
							for c >= shapes[ti].C {
								c -= shapes[ti].C
								ti++
							}
							s := shapes[ti]
							plane := taps[ti].Data[(b*s.C+c)*s.H*s.W : (b*s.C+c+1)*s.H*s.W]
							if k > 1 {
								pp := make([]float32, len(plane))
								pool(plane, s.H, s.W, k, pp)
								plane = pp
							}
							sc := l.H / s.H
							want := plane[(y/sc)*s.W+x/sc]
							if got := dst[(b*P+y*l.W+x)*D+d]; got != want {
								t.Fatalf("channels %v pool %d: image %d (%d,%d) channel %d: got %v, want %v", channels, k, b, y, x, d, got, want)
							}
						}
					}
				}
			}
			for _, v := range dst[n*P*D:] {
				if v != -7 {
					t.Fatal("wrote past the embeddings")
				}
			}
		}
	}
}
