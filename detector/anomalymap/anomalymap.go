// Package anomalymap turns a patch-grid distance map into a pixel anomaly map:
// bilinear upsampling with half-pixel centres (PyTorch align_corners=False), then a
// separable Gaussian blur (σ=4, radius int(4σ+0.5) → 33 taps, normalised) with
// scipy's 'mirror' border (d c b | a b c d | c b a). The image score is the
// maximum of the blurred map, as in PaDiM.
package anomalymap

import (
	"fmt"
	"math"
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

// Generator makes pixel maps of one size from grid maps of one size: upsample,
// then blur. It is safe for concurrent use.
type Generator struct {
	*Upsampler
	*Blur
}

// NewGenerator prepares maps from gh×gw grids to h×w pixels. sigma ≤ 0 disables the blur.
func NewGenerator(gh, gw, h, w int, sigma float64) (*Generator, error) {
	u, err := NewUpsampler(gh, gw, h, w)
	if err != nil {
		return nil, err
	}
	b, err := NewBlur(h, w, sigma)
	if err != nil {
		return nil, err
	}
	return &Generator{u, b}, nil
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

// Map is one image's result: the raw patch-grid distances and the blurred pixel map.
type Map struct {
	Grid  []float32 // GridH×GridW distances, before upsampling
	Pixel []float32 // H×W blurred map
	Score float32   // max of Pixel
}

// Make builds the pixel map and score for one grid map. The grid slice is kept.
func (g *Generator) Make(grid []float32) (*Map, error) {
	if len(grid) != g.GridH*g.GridW {
		return nil, fmt.Errorf("anomalymap: grid map has %d values, want %dx%d", len(grid), g.GridH, g.GridW)
	}
	n := g.Upsampler.H * g.Upsampler.W
	up, tmp, px := make([]float32, n), make([]float32, n), make([]float32, n)
	g.Upsampler.Apply(grid, up)
	g.Blur.Apply(up, px, tmp)
	return &Map{Grid: grid, Pixel: px, Score: Max(px)}, nil
}

// Max returns the largest value (NaN-free input assumed; -Inf for empty).
func Max(v []float32) float32 {
	m := float32(math.Inf(-1))
	for _, x := range v {
		m = max(m, x)
	}
	return m
}
