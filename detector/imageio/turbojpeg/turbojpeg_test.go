package turbojpeg

import (
	"bytes"
	"image"
	"image/jpeg"
	"testing"
)

// The scale is the smallest of libjpeg-turbo's at which both sides stay at
// least the wanted size.
func TestSmallest(t *testing.T) {
	eighths := []Scale{{1, 8}, {1, 4}, {3, 8}, {1, 2}, {5, 8}, {3, 4}, {7, 8}, {1, 1}}
	for _, c := range []struct {
		w, h, min int
		want      Scale
	}{
		{2448, 2048, 224, Scale{1, 8}}, // 306×256
		{2448, 2048, 300, Scale{1, 4}}, // 1/8 gives 256 rows
		{500, 375, 224, Scale{5, 8}},   // 1/2 gives 188 rows
		{224, 224, 224, Full},
		{100, 100, 224, Full}, // smaller than the input: full size
	} {
		if got := Smallest(eighths, c.w, c.h, c.min); got != c.want {
			t.Errorf("%dx%d to %d: %v, want %v", c.w, c.h, c.min, got, c.want)
		}
	}
	if got := (Scale{5, 8}).Of(500); got != 313 {
		t.Errorf("5/8 of 500: %d, want libjpeg-turbo's 313", got)
	}
	if !Available {
		return
	}
	s := Scales()
	if len(s) == 0 || s[0] != (Scale{1, 8}) || s[len(s)-1] != Full {
		t.Errorf("libjpeg-turbo's scales up to 1: %v", s)
	}
}

func FuzzDecode(f *testing.F) {
	img := image.NewGray(image.Rect(0, 0, 19, 11))
	for i := range img.Pix {
		img.Pix[i] = uint8(i * 13)
	}
	var b bytes.Buffer
	jpeg.Encode(&b, img, nil)
	f.Add(b.Bytes())
	rgb := image.NewRGBA(image.Rect(0, 0, 17, 9))
	for i := range rgb.Pix {
		rgb.Pix[i] = uint8(i * 7)
	}
	b.Reset()
	jpeg.Encode(&b, rgb, nil)
	f.Add(b.Bytes())
	f.Add(b.Bytes()[:b.Len()/2])
	f.Fuzz(func(t *testing.T, data []byte) {
		if !Available {
			t.Skip("libjpeg-turbo is not in this build (go test -tags turbojpeg)")
		}
		info, err := ReadInfo(data)
		if err != nil {
			return
		}
		for _, s := range []Scale{{1, 8}, Full} {
			pix, w, h, err := Decode(data, s, info.Gray, 1<<20)
			px := 3
			if info.Gray {
				px = 1
			}
			if err == nil && (w != s.Of(info.W) || h != s.Of(info.H) || len(pix) != w*h*px) {
				t.Fatalf("%v: %dx%d, %d bytes for %+v", s, w, h, len(pix), info)
			}
		}
	})
}
