package imageio

import (
	"fmt"
	"image"
	"image/color"
	"math"
	"math/rand/v2"
	"runtime"
	"testing"
)

// testImages returns one image of every type the row readers handle (and one
// they do not, read through At), w×h with random pixels (alpha varied, a
// premultiplied colour never above its alpha): placed at the origin (mode 0),
// cut from a larger image at an odd offset (mode 1), or with bounds starting
// left of and above the origin (mode 2).
func testImages(t *testing.T, w, h int, mode int, seed uint64) map[string]image.Image {
	rng := rand.New(rand.NewPCG(seed, 7))
	full := image.Rect(0, 0, w, h)
	sub := mode == 1
	switch mode {
	case 1:
		full = image.Rect(-2, 1, w+5, h+4)
	case 2:
		full = image.Rect(-3, -1, w-3, h-1)
	}
	fill := func(p []uint8) {
		for i := range p {
			p[i] = uint8(rng.IntN(256))
		}
	}
	alpha8 := func() uint8 { return []uint8{255, 0, 128, 1, 200, 255}[rng.IntN(6)] }
	imgs := map[string]image.Image{}
	g := image.NewGray(full)
	fill(g.Pix)
	imgs["gray"] = g
	g16 := image.NewGray16(full)
	fill(g16.Pix)
	imgs["gray16"] = g16
	nrgba := image.NewNRGBA(full)
	fill(nrgba.Pix)
	imgs["nrgba"] = nrgba
	rgba := image.NewRGBA(full)
	for i := 0; i < len(rgba.Pix); i += 4 {
		a := alpha8()
		for c := 0; c < 3; c++ {
			rgba.Pix[i+c] = uint8(rng.IntN(int(a) + 1))
		}
		rgba.Pix[i+3] = a
	}
	imgs["rgba"] = rgba
	n64 := image.NewNRGBA64(full)
	fill(n64.Pix)
	imgs["nrgba64"] = n64
	r64 := image.NewRGBA64(full)
	for i := 0; i < len(r64.Pix); i += 8 {
		a := []uint16{0xffff, 0, 0x8000, 1, 0x1234}[rng.IntN(5)]
		for c := 0; c < 3; c++ {
			v := uint16(rng.IntN(int(a) + 1))
			r64.Pix[i+2*c], r64.Pix[i+2*c+1] = uint8(v>>8), uint8(v)
		}
		r64.Pix[i+6], r64.Pix[i+7] = uint8(a>>8), uint8(a)
	}
	imgs["rgba64"] = r64
	cmyk := image.NewCMYK(full)
	fill(cmyk.Pix)
	imgs["cmyk"] = cmyk
	pal := image.NewPaletted(full, color.Palette{color.RGBA{10, 20, 30, 255}, color.NRGBA{200, 100, 50, 128}, color.Gray{77}, color.Gray16{0x1234}})
	for i := range pal.Pix {
		pal.Pix[i] = uint8(rng.IntN(4))
	}
	imgs["paletted"] = pal
	for _, r := range []image.YCbCrSubsampleRatio{image.YCbCrSubsampleRatio444, image.YCbCrSubsampleRatio422, image.YCbCrSubsampleRatio420,
		image.YCbCrSubsampleRatio440, image.YCbCrSubsampleRatio411, image.YCbCrSubsampleRatio410} {
		y := image.NewYCbCr(full, r)
		fill(y.Y)
		fill(y.Cb)
		fill(y.Cr)
		imgs["ycbcr"+r.String()[len("YCbCrSubsampleRatio"):]] = y
	}
	rgb := &rgbImage{Pix: make([]uint8, 3*full.Dx()*full.Dy()), Stride: 3 * full.Dx(), Rect: full}
	fill(rgb.Pix)
	imgs["rgb"] = rgb
	al := image.NewAlpha16(full) // no row reader: through At
	fill(al.Pix)
	imgs["alpha16"] = al
	if mode == 2 { // left of zero Go's own YCbCr may lack chroma samples (4:1:1 at −3): At panics; not ours to read
		for k, m := range imgs {
			func() {
				defer func() {
					if recover() != nil {
						delete(imgs, k)
					}
				}()
				for y := full.Min.Y; y < full.Max.Y; y++ {
					for x := full.Min.X; x < full.Max.X; x++ {
						m.At(x, y)
					}
				}
			}()
		}
	}
	if sub {
		r := image.Rect(3, 2, 3+w, 2+h)
		for k, m := range imgs {
			if s, ok := m.(interface {
				SubImage(image.Rectangle) image.Image
			}); ok {
				imgs[k] = s.SubImage(r)
			} else {
				rr := m.(*rgbImage)
				imgs[k] = &rgbImage{Pix: rr.Pix[rr.PixOffset(r.Min.X, r.Min.Y):], Stride: rr.Stride, Rect: r}
			}
			if got := imgs[k].Bounds(); got != r {
				t.Fatalf("%s: sub-image %v, want %v", k, got, r)
			}
		}
	}
	return imgs
}

// refPixel is what padim makes of pixel (x, y) from At: color.YCbCrToRGB for
// YCbCr, the colour itself for an NRGBA image, color.NRGBA64Model otherwise
// (palette entries included).
func refPixel(img image.Image, x, y int) [3]float64 {
	c := img.At(x, y)
	if yc, ok := c.(color.YCbCr); ok {
		r, g, b := color.YCbCrToRGB(yc.Y, yc.Cb, yc.Cr)
		return [3]float64{float64(r) / 255, float64(g) / 255, float64(b) / 255}
	}
	if _, ok := img.(*image.NRGBA); ok { // its own colour: alpha dropped, not multiplied in and divided out
		n := c.(color.NRGBA)
		return [3]float64{float64(n.R) / 255, float64(n.G) / 255, float64(n.B) / 255}
	}
	n := color.NRGBA64Model.Convert(c).(color.NRGBA64)
	return [3]float64{float64(n.R) / 65535, float64(n.G) / 65535, float64(n.B) / 65535}
}

// Every row reader gives what At gives, on odd sizes and at odd offsets: to
// float32 rounding (2e-7), premultiplied 8-bit RGBA to the 16-bit integer
// un-premultiplication's truncation (2/65535).
func TestRowsMatchAt(t *testing.T) {
	for _, sz := range [][2]int{{1, 1}, {2, 3}, {13, 7}, {31, 5}} {
		for sub := 0; sub < 3; sub++ {
			for name, img := range testImages(t, sz[0], sz[1], sub, uint64(sz[0]*31+sz[1])) {
				r := newRows(img)
				b := img.Bounds()
				wantC := 3
				if name == "gray" || name == "gray16" {
					wantC = 1
				}
				if r.chans != wantC || r.w != b.Dx() || r.h != b.Dy() {
					t.Fatalf("%s: rows %dx%d×%d", name, r.w, r.h, r.chans)
				}
				tol := 2e-7
				if name == "rgba" {
					tol = 2.0 / 65535
				}
				buf := make([]float32, r.chans*r.w)
				for y := 0; y < r.h; y++ {
					r.read(y, buf)
					for x := 0; x < r.w; x++ {
						want := refPixel(img, b.Min.X+x, b.Min.Y+y)
						for c := 0; c < 3; c++ {
							got := float64(buf[r.chans*x+min(c, r.chans-1)])
							if math.Abs(got-want[c]) > tol {
								t.Fatalf("%s %v mode %d: pixel (%d,%d) channel %d: %v, At gives %v", name, sz, sub, x, y, c, got, want[c])
							}
						}
					}
				}
			}
		}
	}
}

// The table-driven YCbCr conversion is color.YCbCrToRGB for all 2^24 inputs.
func TestYCbCrTablesExhaustive(t *testing.T) {
	d := make([]float32, 3)
	for y := 0; y < 256; y++ {
		for cb := 0; cb < 256; cb++ {
			for cr := 0; cr < 256; cr++ {
				yccPixel(uint8(y), uint8(cb), uint8(cr), d)
				r, g, b := color.YCbCrToRGB(uint8(y), uint8(cb), uint8(cr))
				if d[0] != float32(r)*s8 || d[1] != float32(g)*s8 || d[2] != float32(b)*s8 {
					t.Fatalf("YCbCr %d,%d,%d: %v, want %d,%d,%d", y, cb, cr, d, r, g, b)
				}
			}
		}
	}
}

// The row readers and the streamed resampler reproduce the code they
// replaced (old_test.go) bit for bit on amd64 (elsewhere a compiler may fuse
// multiply-adds differently: within 1e-6), for every image type, odd sizes and
// offsets, shrinking and enlarging, on one goroutine or several.
func TestSameNumbersAsBefore(t *testing.T) {
	tol := 1e-6
	if runtime.GOARCH == "amd64" {
		tol = 0
	}
	for _, sz := range [][2]int{{1, 1}, {7, 3}, {97, 61}, {250, 33}} {
		for sub := 0; sub < 3; sub++ {
			for name, img := range testImages(t, sz[0], sz[1], sub, uint64(sz[0]+sz[1])) {
				if name == "rgb" { // new (libjpeg-turbo's output): before, no such type
					continue
				}
				compare := func(what string, a, b *Planes) {
					t.Helper()
					if a.W != b.W || a.H != b.H {
						t.Fatalf("%s %s: %dx%d vs %dx%d", name, what, a.W, a.H, b.W, b.H)
					}
					for i := range a.Pix {
						if d := math.Abs(float64(a.Pix[i]) - float64(b.Pix[i])); d > tol || math.IsNaN(d) {
							t.Fatalf("%s %v mode %d %s: value %d: %v, before %v", name, sz, sub, what, i, a.Pix[i], b.Pix[i])
						}
					}
				}
				old := oldFromImage(img)
				compare("FromImage", FromImage(img), old)
				compare("FromImage on 3 goroutines", planesOf(img, 3), old)
				for _, out := range [][2]int{{1, 1}, {5, 4}, {32, 24}, {224, 224}, {301, 17}} {
					want := oldResizeImage(img, out[0], out[1])
					for _, th := range []int{1, 2, 5} {
						compare(fmt.Sprintf("resize to %v on %d goroutines", out, th), resizeImage(img, out[0], out[1], th), want)
					}
					compare("Planes.Resize", FromImage(img).Resize(out[0], out[1]), want)
				}
			}
		}
	}
}

// directResize evaluates the antialiased bilinear resize in float64 straight
// from its definition: output (x, y) is Σ wx(x, i)·wy(y, j)·v(i, j) with the
// triangle of half-width max(in/out, 1) centred on the output pixel's centre,
// normalised over the input pixels it covers.
func directResize(v [][]float64, w, h int) [][]float64 {
	ih, iw := len(v), len(v[0])
	axis := func(in, out, o int) []float64 {
		scale := float64(in) / float64(out)
		support := math.Max(scale, 1)
		c := (float64(o) + 0.5) * scale
		ws := make([]float64, in)
		var sum float64
		for i := range ws {
			ws[i] = math.Max(0, 1-math.Abs((float64(i)+0.5-c)/support))
			sum += ws[i]
		}
		for i := range ws {
			ws[i] /= sum
		}
		return ws
	}
	out := make([][]float64, h)
	for y := range out {
		wy := axis(ih, h, y)
		out[y] = make([]float64, w)
		for x := range out[y] {
			wx := axis(iw, w, x)
			var s float64
			for j := 0; j < ih; j++ {
				for i := 0; i < iw; i++ {
					s += wy[j] * wx[i] * v[j][i]
				}
			}
			out[y][x] = s
		}
	}
	return out
}

// The resampler is the filter's float64 evaluation to float32 accuracy (within
// 2e-6 on [0,1]: 5e-4 grey levels), shrinking by up to 9×, enlarging, and both.
func TestResizeMatchesDirectEvaluation(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	g := image.NewGray16(image.Rect(0, 0, 83, 57))
	for i := range g.Pix {
		g.Pix[i] = uint8(rng.IntN(256))
	}
	v := make([][]float64, 57)
	for y := range v {
		v[y] = make([]float64, 83)
		for x := range v[y] {
			v[y][x] = float64(g.Gray16At(x, y).Y) / 65535
		}
	}
	for _, out := range [][2]int{{9, 7}, {40, 21}, {83, 57}, {100, 30}, {200, 150}} {
		want := directResize(v, out[0], out[1])
		got := resizeImage(g, out[0], out[1], 2)
		for c := 0; c < 3; c++ {
			for y := 0; y < out[1]; y++ {
				for x := 0; x < out[0]; x++ {
					if d := math.Abs(float64(got.Pix[(c*out[1]+y)*out[0]+x]) - want[y][x]); d > 2e-6 {
						t.Fatalf("to %v: (%d,%d) channel %d: %v, direct %v", out, x, y, c, got.Pix[(c*out[1]+y)*out[0]+x], want[y][x])
					}
				}
			}
		}
	}
}

// Tap weights are computed once per size and reused.
func TestTapsCached(t *testing.T) {
	a, b := tapsFor(1001, 224), tapsFor(1001, 224)
	if a != b {
		t.Fatal("taps of one size computed twice")
	}
	if a.maxN < 2*1001/224 || len(a.first) != 224 || a.off[224] != len(a.w) {
		t.Fatalf("taps: max %d, %d outputs, %d weights", a.maxN, len(a.first), len(a.w))
	}
}
