// Package anomalymap turns a patch-grid distance map into a pixel anomaly map:
// bilinear upsampling with half-pixel centres (PyTorch align_corners=False), then a
// separable Gaussian blur (σ=4, radius int(4σ+0.5) → 33 taps, normalised) with
// scipy's 'mirror' border (d c b | a b c d | c b a). The image score is the
// maximum of the blurred map, as in PaDiM.
package anomalymap

import (
	"fmt"
	"math"
	"sync"
)

// DefaultSigma is PaDiM's blur.
const DefaultSigma = 4.0

// Upsampler resizes GridH×GridW maps to H×W bilinearly with half-pixel centres.
type Upsampler struct {
	GridH, GridW int
	H, W         int
	ys, xs       []lerp
}

type lerp struct {
	i0, i1 int32
	f      float32
}

// NewUpsampler prepares the interpolation weights.
func NewUpsampler(gh, gw, h, w int) (*Upsampler, error) {
	if gh <= 0 || gw <= 0 || h <= 0 || w <= 0 {
		return nil, fmt.Errorf("anomalymap: sizes must be positive: grid %dx%d, image %dx%d", gh, gw, h, w)
	}
	return &Upsampler{GridH: gh, GridW: gw, H: h, W: w, ys: lerps(gh, h), xs: lerps(gw, w)}, nil
}

// Blur is a separable normalised Gaussian of radius int(4σ+0.5) with scipy's
// 'mirror' border, for H×W maps. σ ≤ 0 copies.
type Blur struct {
	H, W    int
	Sigma   float64
	kernel  []float32
	mirrorX []int32 // padded column → source column
	mirrorY []int32
}

// NewBlur prepares the kernel and border tables.
func NewBlur(h, w int, sigma float64) (*Blur, error) {
	if h <= 0 || w <= 0 {
		return nil, fmt.Errorf("anomalymap: blur size %dx%d", w, h)
	}
	b := &Blur{H: h, W: w, Sigma: sigma}
	if sigma > 0 {
		b.kernel = Kernel(sigma)
		r := len(b.kernel) / 2
		b.mirrorX, b.mirrorY = mirrorTable(w, r), mirrorTable(h, r)
	}
	return b, nil
}

// Kernel returns the normalised Gaussian of radius int(4σ+0.5).
func Kernel(sigma float64) []float32 {
	r := int(4*sigma + 0.5)
	k64 := make([]float64, 2*r+1)
	var sum float64
	for i := -r; i <= r; i++ {
		k64[i+r] = math.Exp(-float64(i*i) / (2 * sigma * sigma))
		sum += k64[i+r]
	}
	k := make([]float32, len(k64))
	for i, v := range k64 {
		k[i] = float32(v / sum)
	}
	return k
}

// Mirror maps any index onto [0,n) by scipy's 'mirror' rule: reflect about the
// edge pixels without repeating them, periodically for far indices.
func Mirror(i, n int) int {
	if n == 1 {
		return 0
	}
	period := 2 * (n - 1)
	i %= period
	if i < 0 {
		i += period
	}
	if i >= n {
		i = period - i
	}
	return i
}

func mirrorTable(n, r int) []int32 {
	t := make([]int32, n+2*r)
	for i := range t {
		t[i] = int32(Mirror(i-r, n))
	}
	return t
}

func lerps(in, out int) []lerp {
	l := make([]lerp, out)
	scale := float64(in) / float64(out)
	for o := range l {
		s := (float64(o)+0.5)*scale - 0.5
		if s < 0 {
			s = 0
		}
		i0 := min(int(s), in-1)
		i1 := min(i0+1, in-1)
		l[o] = lerp{int32(i0), int32(i1), float32(s - float64(i0))}
	}
	return l
}

// Apply writes the bilinear upsampling of grid (GridH×GridW) into dst (H×W).
func (g *Upsampler) Apply(grid, dst []float32) {
	for y, ly := range g.ys {
		r0 := grid[int(ly.i0)*g.GridW : (int(ly.i0)+1)*g.GridW]
		r1 := grid[int(ly.i1)*g.GridW : (int(ly.i1)+1)*g.GridW]
		out := dst[y*g.W : (y+1)*g.W]
		for x, lx := range g.xs {
			top := r0[lx.i0] + (r0[lx.i1]-r0[lx.i0])*lx.f
			bot := r1[lx.i0] + (r1[lx.i1]-r1[lx.i0])*lx.f
			out[x] = top + (bot-top)*ly.f
		}
	}
}

// Apply blurs src (H×W) into dst; tmp needs H×W values. dst may not alias src or tmp.
func (g *Blur) Apply(src, dst, tmp []float32) {
	if g.kernel == nil {
		copy(dst, src[:g.H*g.W])
		return
	}
	k, r := g.kernel, len(g.kernel)/2
	w, h := g.W, g.H
	pad := make([]float32, max(w, h)+2*r)
	// rows
	for y := 0; y < h; y++ {
		row := src[y*w : (y+1)*w]
		for i, m := range g.mirrorX {
			pad[i] = row[m]
		}
		out := tmp[y*w : (y+1)*w]
		for x := range out {
			var s float32
			for t, kv := range k {
				s += kv * pad[x+t]
			}
			out[x] = s
		}
	}
	// columns, a row at a time for locality
	for y := 0; y < h; y++ {
		out := dst[y*w : (y+1)*w]
		clear(out)
		for t, kv := range k {
			in := tmp[int(g.mirrorY[y+t])*w : int(g.mirrorY[y+t]+1)*w]
			for x := range out {
				out[x] += kv * in[x]
			}
		}
	}
}

// Rect is where one sample (the whole image, or a tile) lies in the map.
type Rect struct{ X, Y, W, H int }

// Maker turns the patch-grid distances of one image's samples into its pixel
// map: each sample's grid is upsampled to its rectangle, overlapping tiles are
// averaged, and the whole map is blurred. It is safe for concurrent use.
type Maker struct {
	up    *Upsampler
	sigma float64
	mu    sync.Mutex
	blurs map[[2]int]*Blur
}

// NewMaker prepares maps from gh×gw grids whose samples cover side×side pixels,
// blurred with sigma (in map pixels; ≤ 0 disables the blur).
func NewMaker(gh, gw, side int, sigma float64) (*Maker, error) {
	up, err := NewUpsampler(gh, gw, side, side)
	if err != nil {
		return nil, err
	}
	if math.IsNaN(sigma) || math.IsInf(sigma, 0) {
		return nil, fmt.Errorf("anomalymap: blur sigma %v", sigma)
	}
	return &Maker{up: up, sigma: sigma, blurs: map[[2]int]*Blur{}}, nil
}

// Side is the side of the square each sample's map covers.
func (m *Maker) Side() int { return m.up.W }

func (m *Maker) blur(h, w int) (*Blur, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if b := m.blurs[[2]int{h, w}]; b != nil {
		return b, nil
	}
	b, err := NewBlur(h, w, m.sigma)
	if err == nil {
		m.blurs[[2]int{h, w}] = b
	}
	return b, err
}

// Make returns the blurred w×h map and its maximum (the image score). grids
// holds one GridH×GridW grid per rectangle; every rectangle is Side()×Side()
// and lies inside the map, and together they cover it.
func (m *Maker) Make(grids []float32, rects []Rect, w, h int) (pixel []float32, score float32, err error) {
	g := m.up.GridH * m.up.GridW
	if len(rects) == 0 || len(grids) != len(rects)*g {
		return nil, 0, fmt.Errorf("anomalymap: %d grid values for %d samples of %dx%d", len(grids), len(rects), m.up.GridH, m.up.GridW)
	}
	side := m.up.W
	raw := make([]float32, w*h)
	if len(rects) == 1 && rects[0] == (Rect{0, 0, w, h}) && w == side && h == side {
		m.up.Apply(grids, raw)
	} else {
		count := make([]float32, w*h)
		tile := make([]float32, side*side)
		for i, r := range rects {
			if r.W != side || r.H != side || r.X < 0 || r.Y < 0 || r.X+r.W > w || r.Y+r.H > h {
				return nil, 0, fmt.Errorf("anomalymap: sample rectangle %+v is not a %d² square inside the %dx%d map", r, side, w, h)
			}
			m.up.Apply(grids[i*g:(i+1)*g], tile)
			for y := 0; y < r.H; y++ {
				row := raw[(r.Y+y)*w+r.X : (r.Y+y)*w+r.X+r.W]
				cnt := count[(r.Y+y)*w+r.X : (r.Y+y)*w+r.X+r.W]
				for x, v := range tile[y*side : (y+1)*side] {
					row[x] += v
					cnt[x]++
				}
			}
		}
		for i, c := range count {
			if c == 0 {
				return nil, 0, fmt.Errorf("anomalymap: the samples do not cover pixel (%d,%d) of the %dx%d map", i%w, i/w, w, h)
			}
			raw[i] /= c
		}
	}
	b, err := m.blur(h, w)
	if err != nil {
		return nil, 0, err
	}
	pixel = make([]float32, w*h)
	b.Apply(raw, pixel, make([]float32, w*h))
	return pixel, Max(pixel), nil
}

// Max returns the largest value (NaN-free input assumed; -Inf for empty).
func Max(v []float32) float32 {
	m := float32(math.Inf(-1))
	for _, x := range v {
		m = max(m, x)
	}
	return m
}

// ToImage resamples a w×h map onto an iw×ih image of which it covers the
// rectangle at (offX, offY) scaled by (sx, sy) (map pixel x covers image
// pixels offX+x·sx … offX+(x+1)·sx), bilinearly with half-pixel centres.
// Image pixels outside the covered rectangle get fill.
func ToImage(m []float32, w, h, iw, ih int, offX, offY, sx, sy float64, fill float32) []float32 {
	out := make([]float32, iw*ih)
	xs := make([]lerp, iw)
	inX := make([]bool, iw)
	for x := range xs {
		s := (float64(x)+0.5-offX)/sx - 0.5
		inX[x] = s >= -0.5 && s <= float64(w)-0.5
		s = math.Max(0, math.Min(s, float64(w-1)))
		i0 := min(int(s), w-1)
		xs[x] = lerp{int32(i0), int32(min(i0+1, w-1)), float32(s - float64(i0))}
	}
	for y := 0; y < ih; y++ {
		s := (float64(y)+0.5-offY)/sy - 0.5
		row := out[y*iw : (y+1)*iw]
		if !(s >= -0.5 && s <= float64(h)-0.5) {
			for x := range row {
				row[x] = fill
			}
			continue
		}
		s = math.Max(0, math.Min(s, float64(h-1)))
		i0 := min(int(s), h-1)
		i1, f := min(i0+1, h-1), float32(s-float64(i0))
		r0, r1 := m[i0*w:(i0+1)*w], m[i1*w:(i1+1)*w]
		for x, lx := range xs {
			if !inX[x] {
				row[x] = fill
				continue
			}
			top := r0[lx.i0] + (r0[lx.i1]-r0[lx.i0])*lx.f
			bot := r1[lx.i0] + (r1[lx.i1]-r1[lx.i0])*lx.f
			row[x] = top + (bot-top)*f
		}
	}
	return out
}
