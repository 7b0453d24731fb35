package imageio

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"image"
	"image/color"
	"image/jpeg"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/image/bmp"
	"golang.org/x/image/tiff"
)

func encode(t *testing.T, img image.Image, enc func(*bytes.Buffer, image.Image) error) []byte {
	var b bytes.Buffer
	if err := enc(&b, img); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func TestDecodeFormatsAndDepths(t *testing.T) {
	rgba := image.NewNRGBA(image.Rect(0, 0, 4, 3))
	for i := range rgba.Pix {
		rgba.Pix[i] = uint8(i * 7)
	}
	rgba.Pix[3] = 0 // alpha ignored
	g16 := image.NewGray16(image.Rect(0, 0, 4, 3))
	g16.SetGray16(1, 1, color.Gray16{Y: 0x8000})
	cases := map[string][]byte{
		"png":   encode(t, rgba, func(b *bytes.Buffer, i image.Image) error { return png.Encode(b, i) }),
		"png16": encode(t, g16, func(b *bytes.Buffer, i image.Image) error { return png.Encode(b, i) }),
		"jpeg":  encode(t, rgba, func(b *bytes.Buffer, i image.Image) error { return jpeg.Encode(b, i, &jpeg.Options{Quality: 100}) }),
		"bmp":   encode(t, rgba, func(b *bytes.Buffer, i image.Image) error { return bmp.Encode(b, i) }),
		"tiff":  encode(t, rgba, func(b *bytes.Buffer, i image.Image) error { return tiff.Encode(b, i, nil) }),
	}
	for name, data := range cases {
		p, err := DecodeReader(bytes.NewReader(data))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if p.W != 4 || p.H != 3 {
			t.Fatalf("%s: %dx%d", name, p.W, p.H)
		}
		switch name {
		case "png", "bmp", "tiff":
			// pixel (0,0) red = 0, green = 7/255 even with alpha 0 in the source
			if p.Pix[0] != 0 || math.Abs(float64(p.Pix[12])-7.0/255) > 1e-6 {
				t.Fatalf("%s: r %v g %v", name, p.Pix[0], p.Pix[12])
			}
		case "png16":
			v := p.Pix[1*4+1]
			if math.Abs(float64(v)-float64(0x8000)/65535) > 1e-6 || p.Pix[12+5] != v || p.Pix[24+5] != v {
				t.Fatalf("16-bit gray: %v", v)
			}
		}
	}
}

func TestCorruptFileNamed(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "broken.png")
	os.WriteFile(p, []byte("\x89PNG\r\n\x1a\nnot really"), 0o644)
	_, err := Decode(p)
	if err == nil || !strings.Contains(err.Error(), "broken.png") {
		t.Fatalf("got %v", err)
	}
	img := image.NewGray(image.Rect(0, 0, 64, 64))
	full := encode(t, img, func(b *bytes.Buffer, i image.Image) error { return png.Encode(b, i) })
	os.WriteFile(p, full[:len(full)/2], 0o644)
	if _, err := Decode(p); err == nil {
		t.Fatal("truncated PNG accepted")
	}
}

// A PNG header that claims a gigantic image is refused before decoding.
func TestHugeDimensionsRefused(t *testing.T) {
	var b bytes.Buffer
	b.WriteString("\x89PNG\r\n\x1a\n")
	ihdr := make([]byte, 13)
	binary.BigEndian.PutUint32(ihdr[0:], 200000)
	binary.BigEndian.PutUint32(ihdr[4:], 200000)
	ihdr[8], ihdr[9] = 8, 2
	binary.Write(&b, binary.BigEndian, uint32(13))
	chunk := append([]byte("IHDR"), ihdr...)
	b.Write(chunk)
	binary.Write(&b, binary.BigEndian, crc32.ChecksumIEEE(chunk))
	_, err := DecodeReader(&b)
	if err == nil || !strings.Contains(err.Error(), "limit") {
		t.Fatalf("got %v", err)
	}
}

func TestResizeConstantAndAntialias(t *testing.T) {
	p := &Planes{W: 64, H: 64, Pix: make([]float32, 3*64*64)}
	for i := range p.Pix {
		p.Pix[i] = 0.25
	}
	r := p.Resize(17, 23)
	for _, v := range r.Pix {
		if math.Abs(float64(v)-0.25) > 1e-6 {
			t.Fatalf("constant image changed: %v", v)
		}
	}
	// a one-pixel checkerboard shrunk 8× becomes flat grey, not aliased
	for y := 0; y < 64; y++ {
		for x := 0; x < 64; x++ {
			p.Pix[y*64+x] = float32((x + y) % 2)
		}
	}
	r = p.Resize(8, 8)
	for _, v := range r.Pix[:64] {
		if math.Abs(float64(v)-0.5) > 0.05 {
			t.Fatalf("aliased: %v", v)
		}
	}
}

func TestTilesCoverImage(t *testing.T) {
	pp := Preprocess{Resize: 224, Tile: 224, Overlap: 32, Std: [3]float32{1, 1, 1}}
	rects, err := pp.Tiles(1024, 500)
	if err != nil {
		t.Fatal(err)
	}
	cover := make([]int, 1024*500)
	for _, r := range rects {
		for y := r.Y; y < r.Y+r.H; y++ {
			for x := r.X; x < r.X+r.W; x++ {
				cover[y*1024+x]++
			}
		}
	}
	for i, c := range cover {
		if c == 0 {
			t.Fatalf("pixel %d uncovered", i)
		}
	}
	if _, err := pp.Tiles(100, 100); err == nil {
		t.Fatal("image smaller than tile accepted")
	}
}

func FuzzDecode(f *testing.F) {
	img := image.NewRGBA(image.Rect(0, 0, 5, 5))
	var b bytes.Buffer
	png.Encode(&b, img)
	f.Add(b.Bytes())
	b.Reset()
	jpeg.Encode(&b, img, nil)
	f.Add(b.Bytes())
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := DecodeReader(bytes.NewReader(data))
		if err == nil && (p.W*p.H > MaxPixels || len(p.Pix) != 3*p.W*p.H) {
			t.Fatal("inconsistent planes")
		}
	})
}

// The fast conversions (RGBA, opaque or not; paletted) give what the generic
// NRGBA64 path gives.
func TestFastPathsMatchGeneric(t *testing.T) {
	rgba := image.NewRGBA(image.Rect(0, 0, 7, 5))
	for i := range rgba.Pix {
		rgba.Pix[i] = uint8(i * 37)
	}
	for i := 3; i < len(rgba.Pix); i += 4 { // premultiplied: colour ≤ alpha
		a := []uint8{255, 0, 128, 1, 200}[i/4%5]
		rgba.Pix[i] = a
		for c := 1; c <= 3; c++ {
			rgba.Pix[i-c] = uint8(int(rgba.Pix[i-c]) * int(a) / 255)
		}
	}
	pal := image.NewPaletted(image.Rect(0, 0, 6, 4), color.Palette{color.RGBA{10, 20, 30, 255}, color.NRGBA{200, 100, 50, 128}, color.Gray{77}})
	for i := range pal.Pix {
		pal.Pix[i] = uint8(i % 3)
	}
	for name, img := range map[string]image.Image{"rgba": rgba, "paletted": pal} {
		got := FromImage(img)
		b := img.Bounds()
		n := b.Dx() * b.Dy()
		for y := 0; y < b.Dy(); y++ {
			for x := 0; x < b.Dx(); x++ {
				c := color.NRGBA64Model.Convert(img.At(x, y)).(color.NRGBA64)
				for ch, v := range []uint16{c.R, c.G, c.B} {
					if g := got.Pix[ch*n+y*b.Dx()+x]; math.Abs(float64(g)-float64(v)/65535) > 2e-3 {
						t.Fatalf("%s (%d,%d) channel %d: %v, generic %v", name, x, y, ch, g, float64(v)/65535)
					}
				}
			}
		}
	}
}

// Resampling straight from the decoded image gives the planes of converting
// first and resizing after, bit for bit, for every fast path; ViewImage is View.
func TestResizeImageEqualsConvertThenResize(t *testing.T) {
	rgba := image.NewRGBA(image.Rect(0, 0, 97, 61))
	for i := range rgba.Pix {
		rgba.Pix[i] = uint8(i * 31)
	}
	for i := 3; i < len(rgba.Pix); i += 4 {
		rgba.Pix[i] = 255
	}
	gray := image.NewGray(image.Rect(0, 0, 50, 70))
	for i := range gray.Pix {
		gray.Pix[i] = uint8(i * 7)
	}
	for name, img := range map[string]image.Image{"rgba": rgba, "gray": gray} {
		a := ResizeImage(img, 32, 24)
		b := FromImage(img).Resize(32, 24)
		for i := range a.Pix {
			if a.Pix[i] != b.Pix[i] {
				t.Fatalf("%s: value %d: %v vs %v", name, i, a.Pix[i], b.Pix[i])
			}
		}
		pp := Preprocess{Resize: 40, Crop: 32, Mean: ImageNetMean, Std: ImageNetStd}
		v1, r1, f1, err1 := pp.ViewImage(img)
		v2, r2, f2, err2 := pp.View(FromImage(img))
		if err1 != nil || err2 != nil || f1 != f2 || len(r1) != 1 || r1[0] != r2[0] {
			t.Fatalf("%s: %v %v %+v %+v", name, err1, err2, f1, f2)
		}
		for i := range v1.Pix {
			if v1.Pix[i] != v2.Pix[i] {
				t.Fatalf("%s: view value %d differs", name, i)
			}
		}
	}
}
