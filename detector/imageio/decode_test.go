package imageio

import (
	"bytes"
	"encoding/binary"
	"image"
	"image/color"
	"image/gif"
	"image/jpeg"
	"image/png"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/image/bmp"
	"golang.org/x/image/tiff"

	"github.com/padim/padim/detector/imageio/turbojpeg"
)

// texture is a w×h image with the structure of a camera frame: smooth
// shading, fine stripes, sharp edges and sensor noise.
func texture(w, h int, seed uint64) *image.NRGBA {
	r := rand.New(rand.NewPCG(seed, 9))
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			fx, fy := float64(x)/float64(w), float64(y)/float64(h)
			v := 0.45 + 0.2*math.Sin(40*fx+3*math.Sin(7*fy)) + 0.1*math.Cos(90*fy) + 0.03*r.NormFloat64()
			if (x/37+y/29)%5 == 0 {
				v -= 0.3
			}
			c := func(k float64) uint8 { return uint8(math.Max(0, math.Min(255, 255*v*k))) }
			img.SetNRGBA(x, y, color.NRGBA{c(1), c(0.85), c(0.6 + 0.3*fx), 255})
		}
	}
	return img
}

func grayOf(img *image.NRGBA) *image.Gray {
	g := image.NewGray(img.Rect)
	for i := range g.Pix {
		g.Pix[i] = img.Pix[4*i+1]
	}
	return g
}

func encodeAs(t testing.TB, img image.Image, format string) []byte {
	t.Helper()
	var b bytes.Buffer
	var err error
	switch format {
	case "jpeg":
		err = jpeg.Encode(&b, img, &jpeg.Options{Quality: 92})
	case "png":
		err = png.Encode(&b, img)
	case "bmp":
		err = bmp.Encode(&b, img)
	case "tiff":
		err = tiff.Encode(&b, img, nil)
	case "gif":
		err = gif.Encode(&b, img, nil)
	}
	if err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func TestDecoderNames(t *testing.T) {
	for i, n := range DecoderNames() {
		d, err := ParseDecoder(n)
		if err != nil || d != Decoder(i) || d.String() != n {
			t.Fatalf("%s: %v %v", n, d, err)
		}
		b, _ := d.MarshalText()
		var back Decoder
		if err := back.UnmarshalText(b); err != nil || back != d {
			t.Fatalf("%s: text round trip %v %v", n, back, err)
		}
	}
	if d, err := ParseDecoder(""); err != nil || d != DecodeGo {
		t.Fatalf("empty name: %v %v", d, err)
	}
	if _, err := ParseDecoder("fast"); err == nil {
		t.Fatal("unknown decoder accepted")
	}
	if err := (Preprocess{Resize: 8, Std: [3]float32{1, 1, 1}, Decode: numDecoders}).Check(); err == nil {
		t.Fatal("out-of-range decoder accepted by Check")
	}
}

// DecodeView on Go's decoders is ViewImage of DecodeImage, bit for bit, for
// every format, from bytes and from a file, on one goroutine or several,
// fitted, cropped and tiled.
func TestDecodeViewGo(t *testing.T) {
	dir := t.TempDir()
	img := texture(203, 151, 1)
	for _, format := range []string{"jpeg", "png", "bmp", "tiff", "gif"} {
		data := encodeAs(t, img, format)
		path := filepath.Join(dir, "x."+format)
		os.WriteFile(path, data, 0o644)
		dec, err := DecodeImage(bytes.NewReader(data))
		if err != nil {
			t.Fatal(err)
		}
		for _, pp := range []Preprocess{
			{Resize: 64, Mean: ImageNetMean, Std: ImageNetStd},
			{Resize: 72, Crop: 64, Mean: ImageNetMean, Std: ImageNetStd},
			{Resize: 64, Tile: 64, Overlap: 8, Mean: ImageNetMean, Std: ImageNetStd},
		} {
			want, wr, wf, _ := pp.ViewImage(dec)
			for _, e := range []Encoded{{Data: data}, {Path: path}} {
				for _, th := range []int{1, 3} {
					v, r, f, note, err := pp.DecodeView(e, th)
					if err != nil || note != "" || f != wf || len(r) != len(wr) || v.W != want.W || v.H != want.H {
						t.Fatalf("%s %+v: %v %q %+v", format, pp, err, note, f)
					}
					for i := range v.Pix {
						if v.Pix[i] != want.Pix[i] {
							t.Fatalf("%s %+v threads %d: value %d differs", format, pp, th, i)
						}
					}
				}
			}
		}
	}
}

// viewDiff is the largest and the mean absolute difference of two views, in
// grey levels (1/255).
func viewDiff(a, b *Planes) (worst, mean float64) {
	for i := range a.Pix {
		d := math.Abs(float64(a.Pix[i]-b.Pix[i])) * 255
		worst = max(worst, d)
		mean += d
	}
	return worst, mean / float64(len(a.Pix))
}

// The libjpeg-turbo paths give Go's view within the stated tolerances, at
// the network input (quality 92, a texture with sharp edges): full-size
// decoding within 3 grey levels anywhere and 0.25 on average (its IDCT, and
// smooth chroma upsampling against Go's nearest), DCT-domain scaling within 16
// and 1.25 at 5/8 (500×375 to 224) and within 20 and 2 at 1/8 (1000² to 112):
// its scaled IDCT is not the triangle filter (at 1/8 it is an 8×8 box), and
// the view must line up with the full-size one although the last scaled pixel
// lies partly beyond the edge (lined up wrongly: 44 and 2.8). Grey JPEGs come
// out grey; tiling decodes at full size.
func TestTurboJPEGPaths(t *testing.T) {
	if !turbojpeg.Available {
		pp := Preprocess{Resize: 64, Std: [3]float32{1, 1, 1}, Decode: DecodeTurboDCT}
		_, _, _, _, err := pp.DecodeView(Encoded{Data: encodeAs(t, texture(80, 60, 1), "jpeg")}, 1)
		if err == nil || !strings.Contains(err.Error(), "libturbojpeg0-dev") || !strings.Contains(err.Error(), "rebuild") {
			t.Fatalf("a build without libjpeg-turbo: %v", err)
		}
		t.Skip("libjpeg-turbo is not in this build (Debian libturbojpeg0-dev; go test -tags turbojpeg): only the error checked")
	}
	for _, kind := range []string{"rgb", "gray", "rgb 1/8"} {
		img, size, dctWorst, dctMean := texture(500, 375, 2), 224, 16.0, 1.25
		if kind == "rgb 1/8" {
			img, size, dctWorst, dctMean = texture(1000, 1000, 3), 112, 20, 2
		}
		var src image.Image = img
		if kind == "gray" {
			src = grayOf(img)
		}
		data := encodeAs(t, src, "jpeg")
		goPP := Preprocess{Resize: size, Mean: ImageNetMean, Std: ImageNetStd}
		want, _, wf, _, err := goPP.DecodeView(Encoded{Data: data}, 1)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range []struct {
			d           Decoder
			worst, mean float64
		}{{DecodeTurboFull, 3, 0.25}, {DecodeTurboDCT, dctWorst, dctMean}} {
			pp := goPP
			pp.Decode = c.d
			v, _, f, note, err := pp.DecodeView(Encoded{Data: data}, 2)
			if err != nil || note != "" || f != wf {
				t.Fatalf("%s %v: %v %q frame %+v, Go's %+v", kind, c.d, err, note, f, wf)
			}
			worst, mean := viewDiff(v, want)
			t.Logf("%s %v: %.3f grey levels at worst, %.4f on average from Go's decoder", kind, c.d, worst, mean)
			if worst > c.worst || mean > c.mean {
				t.Errorf("%s %v: %.3f grey levels at worst, %.4f on average; tolerance %v, %v", kind, c.d, worst, mean, c.worst, c.mean)
			}
			if kind == "gray" {
				n := v.W * v.H
				if !slicesEqual(v.Pix[:n], v.Pix[n:2*n]) || !slicesEqual(v.Pix[:n], v.Pix[2*n:]) {
					t.Errorf("grey JPEG by %v: channels differ", c.d)
				}
			}
		}
		// the decoded image itself: grey JPEGs as grey, the scale the smallest ≥ the input
		info, err := turbojpeg.ReadInfo(data)
		if err != nil || info.Gray != (kind == "gray") || info.W != img.Rect.Dx() || info.H != img.Rect.Dy() {
			t.Fatalf("%s: info %+v %v", kind, info, err)
		}
		if kind == "rgb 1/8" {
			continue
		}
		// tiling decodes at full size: the DCT path's tiles are the full path's
		tp := Preprocess{Resize: 64, Tile: 128, Overlap: 16, Std: [3]float32{1, 1, 1}}
		tp.Decode = DecodeTurboFull
		a, ra, _, _, err1 := tp.DecodeView(Encoded{Data: data}, 1)
		tp.Decode = DecodeTurboDCT
		b, rb, _, _, err2 := tp.DecodeView(Encoded{Data: data}, 1)
		if err1 != nil || err2 != nil || a.W != 500 || !slicesEqual(a.Pix, b.Pix) || len(ra) != len(rb) {
			t.Fatalf("%s tiled: %v %v, %dx%d", kind, err1, err2, a.W, a.H)
		}
	}
	// other formats go to Go's decoders; a damaged JPEG falls back to Go's,
	// which refuses it
	img := texture(300, 200, 4)
	pp := Preprocess{Resize: 64, Std: [3]float32{1, 1, 1}, Decode: DecodeTurboDCT}
	pngData := encodeAs(t, img, "png")
	v, _, _, note, err := pp.DecodeView(Encoded{Data: pngData}, 1)
	pp.Decode = DecodeGo
	w, _, _, _, _ := pp.DecodeView(Encoded{Data: pngData}, 1)
	if err != nil || note != "" || !slicesEqual(v.Pix, w.Pix) {
		t.Fatalf("PNG on the libjpeg-turbo path: %v %q", err, note)
	}
	pp.Decode = DecodeTurboDCT
	data := encodeAs(t, img, "jpeg")
	dir := t.TempDir()
	path := filepath.Join(dir, "cut.jpg")
	os.WriteFile(path, data[:len(data)*2/3], 0o644)
	if _, _, _, _, err := pp.DecodeView(Encoded{Path: path}, 1); err == nil {
		t.Fatal("truncated JPEG accepted")
	}
}

func slicesEqual(a, b []float32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// allocated returns the bytes fn allocates.
func allocated(fn func()) int64 {
	var a, b runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&a)
	fn()
	runtime.ReadMemStats(&b)
	return int64(b.TotalAlloc - a.TotalAlloc)
}

// DecodeMemory counts what decoding really holds: at least every byte
// DecodeView allocates beyond the view, and not more than twice that plus the
// fixed slack (it once counted 8 bytes a pixel for every image, 5× a JPEG's).
func TestDecodeMemoryCountsWhatDecodeHolds(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates on its own: the allocation counts mean nothing")
	}
	img := texture(1224, 1024, 3)
	pp := Preprocess{Resize: 224, Mean: ImageNetMean, Std: ImageNetStd}
	cases := []struct {
		name   string
		data   []byte
		decode Decoder
	}{
		{"jpeg rgb", encodeAs(t, img, "jpeg"), DecodeGo},
		{"jpeg grey", encodeAs(t, grayOf(img), "jpeg"), DecodeGo},
		{"png rgb", encodeAs(t, img, "png"), DecodeGo},
		{"png grey", encodeAs(t, grayOf(img), "png"), DecodeGo},
		{"bmp", encodeAs(t, img, "bmp"), DecodeGo},
		{"tiff", encodeAs(t, img, "tiff"), DecodeGo},
		{"tiff grey", encodeAs(t, grayOf(img), "tiff"), DecodeGo},
		{"tiff grey16, tiled lzw", writeTIFF(t, 1224, 1024, 1, 16, randSamples(1224*1024, 16, 1), tiffOpts{order: binary.LittleEndian, comp: compLZW, tw: 256, th: 256}), DecodeGo},
		{"png grey16, many chunks", writePNG(1224, 1024, 16, 0, randBytes(1224*1024*2, 1), pngOpts{idat: 1 << 15}), DecodeGo},
		{"png rgb, interlaced (image/png)", writePNG(1224, 1024, 8, 2, randBytes(1224*1024*3, 1), pngOpts{interlace: true}), DecodeGo},
	}
	if turbojpeg.Available {
		cases = append(cases, struct {
			name   string
			data   []byte
			decode Decoder
		}{"jpeg rgb, libjpeg-turbo full", cases[0].data, DecodeTurboFull}, struct {
			name   string
			data   []byte
			decode Decoder
		}{"jpeg rgb, libjpeg-turbo dct", cases[0].data, DecodeTurboDCT})
	}
	for _, c := range cases {
		p := pp
		p.Decode = c.decode
		h, err := ReadHeader(bytes.NewReader(c.data))
		if err != nil {
			t.Fatal(err)
		}
		h.Size, h.InMemory = int64(len(c.data)), true
		var v *Planes
		got := allocated(func() {
			v, _, _, _, err = p.DecodeView(Encoded{Data: c.data}, 1)
		})
		if err != nil {
			t.Fatal(err)
		}
		held := got - int64(4*len(v.Pix)) + int64(len(c.data)) // the view is counted apart; the bytes are held by the caller
		est := p.DecodeMemory(h)
		t.Logf("%s: DecodeMemory %.1f MB, allocated %.1f MB beyond the view (with the encoded bytes)", c.name, float64(est)/1e6, float64(held)/1e6)
		if est < held || est > 2*held+4<<20 {
			t.Errorf("%s: DecodeMemory %d bytes for %d allocated", c.name, est, held)
		}
	}
}

// Progressive JPEGs are counted with the coefficients Go's decoder keeps.
func TestJPEGLayout(t *testing.T) {
	data := encodeAs(t, texture(64, 48, 1), "jpeg")
	h, err := ReadHeader(bytes.NewReader(data))
	if err != nil || h.layout.goBytes != 1.5 || h.layout.chans != 3 || h.layout.turbo != 0 {
		t.Fatalf("baseline 4:2:0: %+v %v", h.layout, err)
	}
	i := bytes.Index(data, []byte{0xff, 0xc0})
	prog := append([]byte(nil), data...)
	prog[i+1] = 0xc2
	if l, ok := jpegLayout(prog); !ok || l.goBytes != 1.5*5 || l.turbo != 3 {
		t.Fatalf("progressive 4:2:0: %+v %v", l, ok)
	}
	g := encodeAs(t, grayOf(texture(64, 48, 1)), "jpeg")
	if l, ok := jpegLayout(g); !ok || l.goBytes != 1 || l.chans != 1 {
		t.Fatalf("grey: %+v %v", l, ok)
	}
}

// Hostile files are refused from their headers on every decode path, before
// anything is decoded.
func TestHostileRefusedOnEveryPath(t *testing.T) {
	dir := filepath.Join("..", "..", "testdata", "hostile")
	jpegBomb := encodeAs(t, texture(16, 16, 1), "jpeg")
	i := bytes.Index(jpegBomb, []byte{0xff, 0xc0})
	jpegBomb[i+5], jpegBomb[i+6], jpegBomb[i+7], jpegBomb[i+8] = 0xff, 0xf0, 0xff, 0xf0 // 65520×65520
	for _, d := range DecoderNames() {
		dec, _ := ParseDecoder(d)
		if dec.Available() != nil {
			continue
		}
		pp := Preprocess{Resize: 64, Std: [3]float32{1, 1, 1}, Decode: dec}
		for _, name := range []string{"bomb_header.png", "not_an_image.png", "truncated.png"} {
			if _, _, _, _, err := pp.DecodeView(Encoded{Path: filepath.Join(dir, name)}, 1); err == nil {
				t.Errorf("%s: %s accepted", d, name)
			}
		}
		var got int64
		got = allocated(func() {
			_, _, _, _, err := pp.DecodeView(Encoded{Data: jpegBomb}, 1)
			if err == nil || !strings.Contains(err.Error(), "limit") {
				t.Errorf("%s: a JPEG claiming 65520² pixels: %v", d, err)
			}
		})
		if got > 8<<20 {
			t.Errorf("%s: %d bytes allocated refusing a JPEG bomb", d, got)
		}
	}
}

func FuzzDecodeView(f *testing.F) {
	img := texture(23, 17, 1)
	for _, fm := range []string{"jpeg", "png", "bmp", "tiff", "gif"} {
		f.Add(encodeAs(f, img, fm))
	}
	f.Add(encodeAs(f, grayOf(img), "jpeg"))
	j := encodeAs(f, img, "jpeg")
	f.Add(j[:len(j)/2])
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, d := range []Decoder{DecodeGo, DecodeTurboFull, DecodeTurboDCT} {
			if d.Available() != nil {
				continue
			}
			pp := Preprocess{Resize: 16, Std: [3]float32{1, 1, 1}, Decode: d}
			v, r, fr, _, err := pp.DecodeView(Encoded{Data: data}, 2)
			if err == nil && (v.W != 16 || v.H != 16 || len(v.Pix) != 3*16*16 || len(r) != 1 || fr.ImageW*fr.ImageH > MaxPixels) {
				t.Fatalf("%v: inconsistent view %dx%d, frame %+v", d, v.W, v.H, fr)
			}
		}
	})
}

func FuzzReadHeader(f *testing.F) {
	f.Add(encodeAs(f, texture(9, 7, 1), "jpeg"))
	f.Add(encodeAs(f, texture(9, 7, 1), "png"))
	f.Add(encodeAs(f, texture(9, 7, 1), "tiff"))
	f.Fuzz(func(t *testing.T, data []byte) {
		h, err := ReadHeader(bytes.NewReader(data))
		if err != nil {
			return
		}
		l := h.layout
		if !(l.goBytes >= 0 && l.goBytes < 64) || !(l.turbo >= 0 && l.turbo < 64) || int64(h.W)*int64(h.H) > MaxPixels {
			t.Fatalf("header %+v", h)
		}
		pp := Preprocess{Resize: 224, Std: [3]float32{1, 1, 1}}
		if m := pp.DecodeMemory(h); m <= 0 || m > 1<<40 {
			t.Fatalf("DecodeMemory %d for %+v", m, h)
		}
	})
}
