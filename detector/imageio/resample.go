package imageio

import (
	"image"
	"sync"
	"sync/atomic"
)

// taps are the filter weights of one resampling (in → out samples along one
// axis), flattened: output o reads inputs first[o] … first[o]+n−1 with weights
// w[off[o]:off[o+1]]. They are the weights function's, so every path resamples
// with the same numbers.
type taps struct {
	first []int
	off   []int
	w     []float32
	maxN  int // the most taps of any output
}

func (t *taps) weights(o int) []float32 { return t.w[t.off[o]:t.off[o+1]] }

// tapCache keeps the taps of the sizes seen (a camera sends one size); it
// stops growing at maxCachedTaps sizes, after which taps are computed per call.
var (
	tapCache      sync.Map // tapKey → *taps
	tapCacheLen   atomic.Int32
	maxCachedTaps = int32(256)
)

// tapsFor returns the taps resampling in samples to out, computed once per size.
func tapsFor(in, out int) *taps { return tapsOver(in, float64(in), out) }

// tapKey names one resampling: in samples spanning span to out.
type tapKey struct {
	in, out int
	span    float64
}

// tapsOver returns weightsOver's taps, computed once per size.
func tapsOver(in int, span float64, out int) *taps {
	key := tapKey{in, out, span}
	if t, ok := tapCache.Load(key); ok {
		return t.(*taps)
	}
	ws := weightsOver(in, span, out)
	t := &taps{first: make([]int, out), off: make([]int, out+1)}
	for o, fw := range ws {
		t.first[o] = fw.first
		t.w = append(t.w, fw.w...)
		t.off[o+1] = len(t.w)
		t.maxN = max(t.maxN, len(fw.w))
	}
	if tapCacheLen.Load() < maxCachedTaps {
		if _, loaded := tapCache.LoadOrStore(key, t); !loaded {
			tapCacheLen.Add(1)
		}
	}
	return t
}

// resizeRows resamples the image r reads to w×h RGB planes with the
// antialiased bilinear filter, splitting the output rows over threads
// goroutines. It never holds the image as float planes: each goroutine keeps
// one converted source row and a ring of the horizontally resampled rows its
// next output row needs (at most 2·⌈shrink⌉+1 rows of w pixels). The numbers
// are Planes.Resize's on FromImage's planes, bit for bit: the same weights,
// summed in the same order.
func resizeRows(r rows, w, h, threads int) *Planes {
	return resizeRowsOver(r, float64(r.w), float64(r.h), w, h, threads)
}

// resizeRowsOver is resizeRows for rows whose pixels span spanW×spanH (less
// than their count when the last row and column lie partly beyond the edge).
func resizeRowsOver(r rows, spanW, spanH float64, w, h, threads int) *Planes {
	tx, ty := tapsOver(r.w, spanW, w), tapsOver(r.h, spanH, h)
	out := &Planes{W: w, H: h, Pix: make([]float32, 3*w*h)}
	bands := splitRows(h, threads)
	var wg sync.WaitGroup
	for i := range bands {
		wg.Add(1)
		go func(y0, y1 int) {
			defer wg.Done()
			resizeBand(r, tx, ty, out, y0, y1)
		}(bands[i][0], bands[i][1])
	}
	wg.Wait()
	return out
}

// splitRows cuts h output rows into at most threads contiguous bands, fewer
// when a band would re-read more source rows than it makes worth.
func splitRows(h, threads int) [][2]int {
	threads = max(1, min(threads, h/8))
	b := make([][2]int, 0, threads)
	for i := 0; i < threads; i++ {
		y0, y1 := i*h/threads, (i+1)*h/threads
		if y1 > y0 {
			b = append(b, [2]int{y0, y1})
		}
	}
	return b
}

// resizeBand computes output rows y0 … y1−1.
func resizeBand(r rows, tx, ty *taps, out *Planes, y0, y1 int) {
	C, w, h := r.chans, out.W, out.H
	src := make([]float32, C*r.w)
	R := ty.maxN
	ring := make([]float32, R*C*w)
	acc := make([]float32, C*w)
	next := ty.first[y0] // the next source row to resample horizontally
	for y := y0; y < y1; y++ {
		wy := ty.weights(y)
		f := ty.first[y]
		next = max(next, f)
		for ; next < f+len(wy); next++ {
			r.read(next, src)
			slot := ring[(next%R)*C*w : (next%R+1)*C*w]
			if C == 1 {
				hpass1(tx, src, slot)
			} else {
				hpass3(tx, src, slot)
			}
		}
		clear(acc)
		for k, v := range wy {
			row := ring[((f+k)%R)*C*w : ((f+k)%R+1)*C*w]
			row = row[:len(acc)]
			for i := range acc {
				acc[i] += v * row[i]
			}
		}
		n := w * h
		if C == 1 {
			for c := 0; c < 3; c++ {
				copy(out.Pix[c*n+y*w:c*n+(y+1)*w], acc)
			}
			continue
		}
		R0, G0, B0 := out.Pix[y*w:(y+1)*w], out.Pix[n+y*w:n+(y+1)*w], out.Pix[2*n+y*w:2*n+(y+1)*w]
		for x := range R0 {
			a := acc[3*x : 3*x+3 : 3*x+3]
			R0[x], G0[x], B0[x] = a[0], a[1], a[2]
		}
	}
}

// hpass3 resamples one interleaved RGB row horizontally.
func hpass3(t *taps, src, dst []float32) {
	for o, f := range t.first {
		ws := t.w[t.off[o]:t.off[o+1]]
		s := src[3*f : 3*(f+len(ws))]
		var r, g, b float32
		for k, v := range ws {
			p := s[3*k : 3*k+3 : 3*k+3]
			r += v * p[0]
			g += v * p[1]
			b += v * p[2]
		}
		d := dst[3*o : 3*o+3 : 3*o+3]
		d[0], d[1], d[2] = r, g, b
	}
}

// hpass1 resamples one grey row horizontally, two outputs at a time (each
// summed in tap order, as hpass3 does).
func hpass1(t *taps, src, dst []float32) {
	n := len(t.first)
	o := 0
	for ; o+1 < n; o += 2 {
		w0, w1 := t.w[t.off[o]:t.off[o+1]], t.w[t.off[o+1]:t.off[o+2]]
		s0, s1 := src[t.first[o]:t.first[o]+len(w0)], src[t.first[o+1]:t.first[o+1]+len(w1)]
		var a, b float32
		k := 0
		for ; k < len(w0) && k < len(w1); k++ {
			a += w0[k] * s0[k]
			b += w1[k] * s1[k]
		}
		for j := k; j < len(w0); j++ {
			a += w0[j] * s0[j]
		}
		for j := k; j < len(w1); j++ {
			b += w1[j] * s1[j]
		}
		dst[o], dst[o+1] = a, b
	}
	for ; o < n; o++ {
		ws := t.w[t.off[o]:t.off[o+1]]
		s := src[t.first[o] : t.first[o]+len(ws)]
		var a float32
		for k, v := range ws {
			a += v * s[k]
		}
		dst[o] = a
	}
}

// planesOf converts a whole image to planes, rows split over threads goroutines.
func planesOf(img image.Image, threads int) *Planes {
	r := newRows(img)
	w, h := r.w, r.h
	p := &Planes{W: w, H: h, Pix: make([]float32, 3*w*h)}
	threads = max(1, min(threads, h/16))
	var wg sync.WaitGroup
	for i := 0; i < threads; i++ {
		wg.Add(1)
		go func(y0, y1 int) {
			defer wg.Done()
			buf := make([]float32, r.chans*w)
			n := w * h
			for y := y0; y < y1; y++ {
				r.read(y, buf)
				R, G, B := p.Pix[y*w:(y+1)*w], p.Pix[n+y*w:n+(y+1)*w], p.Pix[2*n+y*w:2*n+(y+1)*w]
				if r.chans == 1 {
					copy(R, buf)
					copy(G, buf)
					copy(B, buf)
					continue
				}
				for x := range R {
					a := buf[3*x : 3*x+3 : 3*x+3]
					R[x], G[x], B[x] = a[0], a[1], a[2]
				}
			}
		}(i*h/threads, (i+1)*h/threads)
	}
	wg.Wait()
	return p
}
