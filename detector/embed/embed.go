// Package embed turns backbone feature maps (taps) into PaDiM patch embeddings:
// every tap is upsampled to the finest tap's grid with nearest-neighbour, the taps
// are concatenated along channels, and a subset of channels is kept.
//
// Embeddings are laid out patch-major, [N][P][D] with P = H*W in row-major grid
// order and the D kept channels contiguous, which is what the Gaussian backends read.
package embed

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
)

// TapShape is the shape of one backbone output for a single image: C channels on an H×W grid.
type TapShape struct {
	Name    string
	C, H, W int
}

// Tap is one backbone output for a batch of N images, NCHW float32.
type Tap struct {
	TapShape
	N    int
	Data []float32
}

// Layout maps the concatenated channels of a set of taps onto an embedding.
type Layout struct {
	Taps     []TapShape
	H, W     int   // the embedding grid (the finest tap's)
	Channels []int // kept indices into the concatenated channels, strictly increasing
	Pool     int   // k×k average pooling of each tap before upsampling (PatchCore's locally aware features); ≤ 1: none
	src      []srcChannel
	index    [][]int32 // per tap, the source position of each patch (nearest upsampling)
}

// WithPool returns the layout with k×k average pooling (stride 1, zero padding
// counted, as PyTorch's AvgPool2d(k, 1, k/2)) of every tap before upsampling;
// k must be odd.
func (l *Layout) WithPool(k int) (*Layout, error) {
	if k < 0 || k > 15 || k > 1 && k%2 == 0 {
		return nil, fmt.Errorf("embed: pooling must be an odd size up to 15 (or 0/1 for none), got %d", k)
	}
	c := *l
	c.Pool = k
	return &c, nil
}

// pool writes the k×k average of plane (h×w) into dst, zero padding counted.
func pool(plane []float32, h, w, k int, dst []float32) {
	r := k / 2
	inv := 1 / float32(k*k)
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			var s float32
			for yy := max(y-r, 0); yy <= min(y+r, h-1); yy++ {
				for _, v := range plane[yy*w+max(x-r, 0) : yy*w+min(x+r, w-1)+1] {
					s += v
				}
			}
			dst[y*w+x] = s * inv
		}
	}
}

type srcChannel struct{ tap, ch int }

// scratch is Embed's working memory: a tap's transposed run of channels, and
// pooled planes; reused across calls (Embed runs on several goroutines at once).
type scratch struct{ rows, pooled []float32 }

var scratchPool = sync.Pool{New: func() any { return new(scratch) }}

func grow(b []float32, n int) []float32 {
	if cap(b) < n {
		return make([]float32, n)
	}
	return b[:n]
}

// TotalChannels is the number of concatenated channels of the taps.
func TotalChannels(taps []TapShape) int {
	n := 0
	for _, t := range taps {
		n += t.C
	}
	return n
}

// RandomChannels draws a seeded random subset of d channels out of total, sorted.
// d <= 0 or d >= total keeps every channel.
func RandomChannels(total, d int, seed uint64) []int {
	if d <= 0 || d >= total {
		return AllChannels(total)
	}
	r := rand.New(rand.NewPCG(seed, 0x9ad1b0c3e5f7a2d1))
	perm := r.Perm(total)[:d]
	slices.Sort(perm)
	return perm
}

// AllChannels returns 0..total-1.
func AllChannels(total int) []int {
	c := make([]int, total)
	for i := range c {
		c[i] = i
	}
	return c
}

// NewLayout checks that the taps' grids divide the finest one and that the channel
// indices are valid, and prepares the gather.
func NewLayout(taps []TapShape, channels []int) (*Layout, error) {
	if len(taps) == 0 {
		return nil, fmt.Errorf("embed: no taps")
	}
	h, w := 0, 0
	for _, t := range taps {
		if t.C <= 0 || t.H <= 0 || t.W <= 0 {
			return nil, fmt.Errorf("embed: tap %q has an empty shape %dx%dx%d", t.Name, t.C, t.H, t.W)
		}
		h, w = max(h, t.H), max(w, t.W)
	}
	for _, t := range taps {
		if h%t.H != 0 || w%t.W != 0 || h/t.H != w/t.W {
			return nil, fmt.Errorf("embed: tap %q grid %dx%d does not divide the finest grid %dx%d evenly", t.Name, t.H, t.W, h, w)
		}
	}
	total := TotalChannels(taps)
	if len(channels) == 0 {
		return nil, fmt.Errorf("embed: no channels selected")
	}
	src := make([]srcChannel, len(channels))
	for i, c := range channels {
		if c < 0 || c >= total {
			return nil, fmt.Errorf("embed: channel index %d out of range [0,%d)", c, total)
		}
		if i > 0 && c <= channels[i-1] {
			return nil, fmt.Errorf("embed: channel indices must be strictly increasing (index %d: %d after %d)", i, c, channels[i-1])
		}
		t := 0
		for c >= taps[t].C {
			c -= taps[t].C
			t++
		}
		src[i] = srcChannel{t, c}
	}
	index := make([][]int32, len(taps))
	for i, t := range taps {
		scale := h / t.H
		index[i] = make([]int32, h*w)
		for y := 0; y < h; y++ {
			for x := 0; x < w; x++ {
				index[i][y*w+x] = int32((y/scale)*t.W + x/scale)
			}
		}
	}
	return &Layout{Taps: slices.Clone(taps), H: h, W: w, Channels: slices.Clone(channels), src: src, index: index}, nil
}

// D is the embedding dimension (kept channels).
func (l *Layout) D() int { return len(l.Channels) }

// P is the number of patch positions.
func (l *Layout) P() int { return l.H * l.W }

// Embed gathers a batch of taps into dst, which must hold N*P*D values, [N][P][D].
// The taps must match the layout's shapes and share one batch size N.
func (l *Layout) Embed(taps []Tap, dst []float32) (n int, err error) {
	if len(taps) != len(l.Taps) {
		return 0, fmt.Errorf("embed: got %d taps, layout has %d", len(taps), len(l.Taps))
	}
	n = taps[0].N
	for i, t := range taps {
		want := l.Taps[i]
		if t.C != want.C || t.H != want.H || t.W != want.W {
			return 0, fmt.Errorf("embed: tap %q is %dx%dx%d, expected %dx%dx%d", want.Name, t.C, t.H, t.W, want.C, want.H, want.W)
		}
		if t.N != n {
			return 0, fmt.Errorf("embed: tap %q has batch %d, tap %q has %d", want.Name, t.N, l.Taps[0].Name, n)
		}
		if len(t.Data) != t.N*t.C*t.H*t.W {
			return 0, fmt.Errorf("embed: tap %q holds %d values, shape needs %d", want.Name, len(t.Data), t.N*t.C*t.H*t.W)
		}
	}
	P, D := l.P(), l.D()
	if len(dst) < n*P*D {
		return 0, fmt.Errorf("embed: destination holds %d values, need %d", len(dst), n*P*D)
	}
	// The kept channels of one tap are a contiguous run of the embedding (the
	// indices increase, taps in order). Each run is transposed once at its tap's
	// resolution, [tap position][run], in blocks of 16 channels (16 planes read in
	// order, one cache line written per position); a patch then copies its tap
	// position's row, so the gather is contiguous copies whatever the upsampling.
	// On the finest grid the transposition writes the embedding directly.
	sc := scratchPool.Get().(*scratch)
	defer scratchPool.Put(sc)
	lo := 0
	for t, shape := range l.Taps {
		hi := lo
		for hi < D && l.src[hi].tap == t {
			hi++
		}
		m := hi - lo
		if m == 0 {
			continue
		}
		hw := shape.H * shape.W
		direct := hw == P
		if !direct {
			sc.rows = grow(sc.rows, hw*m)
		}
		if l.Pool > 1 {
			sc.pooled = grow(sc.pooled, 16*hw)
		}
		for b := 0; b < n; b++ {
			out := dst[b*P*D : (b+1)*P*D]
			// the transposition's target: row q of the run at rows[q*stride+off:]
			rows, stride, off := sc.rows, m, 0
			if direct {
				rows, stride, off = out, D, lo
			}
			for j0 := 0; j0 < m; j0 += 16 {
				j1 := min(j0+16, m)
				var planes [16][]float32
				for j := j0; j < j1; j++ {
					ch := l.src[lo+j].ch
					planes[j-j0] = taps[t].Data[(b*shape.C+ch)*hw : (b*shape.C+ch+1)*hw]
					if l.Pool > 1 {
						pp := sc.pooled[(j-j0)*hw : (j-j0+1)*hw]
						pool(planes[j-j0], shape.H, shape.W, l.Pool, pp)
						planes[j-j0] = pp
					}
				}
				ps := planes[:j1-j0]
				for q := 0; q < hw; q++ {
					row := rows[q*stride+off+j0 : q*stride+off+j1]
					for i := range row {
						row[i] = ps[i][q]
					}
				}
			}
			if !direct {
				for p, q := range l.index[t] {
					copy(out[p*D+lo:p*D+hi], sc.rows[int(q)*m:int(q+1)*m])
				}
			}
		}
		lo = hi
	}
	return n, nil
}
