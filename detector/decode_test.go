package detector

import (
	"bytes"
	"image"
	"image/color"
	"image/jpeg"
	"image/png"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/image/bmp"

	"github.com/padim/padim/detector/fileio/safetensors"
	"github.com/padim/padim/detector/imageio"
	"github.com/padim/padim/detector/imageio/turbojpeg"
)

// cameraLike writes textured images of the kinds cameras send, at odd sizes:
// JPEG (4:2:0 colour and grey), 8-bit RGB and 16-bit grey PNG, BMP.
func cameraLike(t *testing.T, dir string, n int, seed uint64) []string {
	t.Helper()
	os.MkdirAll(dir, 0o755)
	r := rand.New(rand.NewPCG(seed, 5))
	var files []string
	for i := 0; i < n; i++ {
		w, h := 97+r.IntN(60), 61+r.IntN(40)
		phase := r.Float64() * 6
		rgb := image.NewNRGBA(image.Rect(0, 0, w, h))
		g16 := image.NewGray16(image.Rect(0, 0, w, h))
		for y := 0; y < h; y++ {
			for x := 0; x < w; x++ {
				v := 0.5 + 0.25*math.Sin(float64(x)/4+phase)*math.Cos(float64(y)/7) + 0.05*r.NormFloat64()
				v = math.Max(0, math.Min(1, v))
				rgb.SetNRGBA(x, y, color.NRGBA{uint8(v * 255), uint8(v * 200), uint8(v * 120), 255})
				g16.SetGray16(x, y, color.Gray16{uint16(v * 65535)})
			}
		}
		var b bytes.Buffer
		var ext string
		switch i % 5 {
		case 0:
			jpeg.Encode(&b, rgb, &jpeg.Options{Quality: 92})
			ext = ".jpg"
		case 1:
			gray := image.NewGray(rgb.Rect)
			for k := range gray.Pix {
				gray.Pix[k] = rgb.Pix[4*k]
			}
			jpeg.Encode(&b, gray, &jpeg.Options{Quality: 92})
			ext = ".jpg"
		case 2:
			png.Encode(&b, rgb)
			ext = ".png"
		case 3:
			png.Encode(&b, g16)
			ext = ".png"
		case 4:
			bmp.Encode(&b, rgb)
			ext = ".bmp"
		}
		p := filepath.Join(dir, string(rune('a'+i))+ext)
		if err := os.WriteFile(p, b.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		files = append(files, p)
	}
	return files
}

// referencePlanes converts a decoded image as padim did before the row
// readers, pixel by pixel through At: color.YCbCrToRGB for YCbCr, grey and
// 16-bit grey scaled, colour through color.NRGBA64Model.
func referencePlanes(t *testing.T, path string) *imageio.Planes {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, _, err := image.Decode(f)
	if err != nil {
		t.Fatal(err)
	}
	b := img.Bounds()
	w, h := b.Dx(), b.Dy()
	p := &imageio.Planes{W: w, H: h, Pix: make([]float32, 3*w*h)}
	const s8, s16 = 1.0 / 255, 1.0 / 65535
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			var c [3]float32
			switch v := img.At(b.Min.X+x, b.Min.Y+y).(type) {
			case color.YCbCr:
				r, g, bb := color.YCbCrToRGB(v.Y, v.Cb, v.Cr)
				c = [3]float32{float32(r) * s8, float32(g) * s8, float32(bb) * s8}
			case color.Gray:
				c = [3]float32{float32(v.Y) * s8, float32(v.Y) * s8, float32(v.Y) * s8}
			case color.Gray16:
				c = [3]float32{float32(v.Y) * s16, float32(v.Y) * s16, float32(v.Y) * s16}
			case color.RGBA: // opaque truecolour (PNG, BMP)
				c = [3]float32{float32(v.R) * s8, float32(v.G) * s8, float32(v.B) * s8}
			default:
				n := color.NRGBA64Model.Convert(v).(color.NRGBA64)
				c = [3]float32{float32(n.R) * s16, float32(n.G) * s16, float32(n.B) * s16}
			}
			for k := range c {
				p.Pix[k*w*h+y*w+x] = c[k]
			}
		}
	}
	return p
}

// Nothing changes for users who change nothing: through the whole pipeline,
// the default decode path gives the scores and maps of converting pixel by
// pixel through At and resizing the float planes (the code before the row
// readers), within 1e-5 relative (they are equal bit for bit on amd64).
func TestDefaultDecodeSameAsBefore(t *testing.T) {
	dir := t.TempDir()
	train := cameraLike(t, filepath.Join(dir, "train"), 15, 1)
	test := cameraLike(t, filepath.Join(dir, "test"), 10, 2)
	m := trainSmall(t, nil, train)
	if m.Preprocess.Decode != imageio.DecodeGo {
		t.Fatalf("default decode path %v", m.Preprocess.Decode)
	}
	sc, err := m.NewScorer(newFake(32), ScoreConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	got := scoreAll(t, sc, FileInputs(test))
	var ref []Input
	for _, f := range test {
		ref = append(ref, Input{Name: f, Image: referencePlanes(t, f)})
	}
	want := scoreAll(t, sc, ref)
	equal := 0
	for i := range got {
		if got[i].Err != nil || want[i].Err != nil {
			t.Fatalf("%s: %v / %v", test[i], got[i].Err, want[i].Err)
		}
		if rel := math.Abs(float64(got[i].Score-want[i].Score)) / math.Abs(float64(want[i].Score)); rel > 1e-5 {
			t.Errorf("%s: score %v, before %v (%.2g relative)", test[i], got[i].Score, want[i].Score, rel)
		}
		worst := 0.0
		for k, v := range want[i].Map {
			worst = max(worst, math.Abs(float64(got[i].Map[k]-v))/max(math.Abs(float64(v)), 1e-6))
		}
		if worst > 1e-5 {
			t.Errorf("%s: map off by %.2g relative", test[i], worst)
		}
		if got[i].Score == want[i].Score && worst == 0 {
			equal++
		}
	}
	t.Logf("%d of %d images score bit for bit as before", equal, len(got))
}

// The decode path is stored in the model, read back, shown by DecodeFor, and
// scoring with another path warns in one line.
func TestDecodePathRecordedAndMismatchWarns(t *testing.T) {
	dir := t.TempDir()
	m := trainSmall(t, nil, writeImages(t, filepath.Join(dir, "train"), 10, 4, false))
	m.Preprocess.Decode = imageio.DecodeTurboDCT
	path := filepath.Join(dir, "m.padim")
	if err := m.Save(path); err != nil {
		t.Fatal(err)
	}
	f, err := safetensors.Read(path, true)
	if err != nil {
		t.Fatal(err)
	}
	if f.Metadata["decode"] != "turbojpeg-dct" {
		t.Fatalf("metadata decode=%q", f.Metadata["decode"])
	}
	m2, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if m2.Preprocess.Decode != imageio.DecodeTurboDCT {
		t.Fatalf("loaded decode path %v", m2.Preprocess.Decode)
	}
	d, warn, err := m2.DecodeFor("")
	switch {
	case err != nil:
		t.Fatal(err)
	case turbojpeg.Available && (d != imageio.DecodeTurboDCT || warn != ""):
		t.Fatalf("the model's own path: %v, warning %q", d, warn)
	case !turbojpeg.Available && (d != imageio.DecodeGo || !strings.Contains(warn, "trained with decode path turbojpeg-dct, but this padim was built without libjpeg-turbo: decoding with go") || !strings.Contains(warn, "libturbojpeg0-dev")):
		t.Fatalf("a libjpeg-turbo model on a build without it: %v, warning %q", d, warn)
	}
	if strings.Contains(warn, "\n") {
		t.Fatalf("warning on more than one line: %q", warn)
	}
	d, warn, err = m2.DecodeFor("go")
	if err != nil || d != imageio.DecodeGo || !strings.Contains(warn, "decoding with go, but the model was trained with turbojpeg-dct") {
		t.Fatalf("override go: %v %q %v", d, warn, err)
	}
	if _, _, err := m2.DecodeFor("fast"); err == nil || !strings.Contains(err.Error(), "want go, turbojpeg-full or turbojpeg-dct") {
		t.Fatalf("unknown override: %v", err)
	}
	_, _, err = m2.DecodeFor("turbojpeg-full")
	if turbojpeg.Available != (err == nil) || err != nil && !strings.Contains(err.Error(), "rebuild") {
		t.Fatalf("override turbojpeg-full on a build with libjpeg-turbo %v: %v", turbojpeg.Available, err)
	}
	// the pipeline of a model this build cannot decode as trained uses Go's decoder
	p, err := m2.NewPipeline(newFake(32), PipelineOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if want := map[bool]imageio.Decoder{true: imageio.DecodeTurboDCT, false: imageio.DecodeGo}[turbojpeg.Available]; p.Preprocess().Decode != want {
		t.Fatalf("pipeline decode path %v, want %v", p.Preprocess().Decode, want)
	}

	// a model made before the path was recorded reads as go; a foreign value is refused
	for _, c := range []struct {
		value string // "-": no key
		want  string // "" loads as go
	}{{"-", ""}, {"go", ""}, {"fast", "metadata decode"}, {"", "metadata decode"}} {
		f, _ := safetensors.Read(path, true)
		if c.value == "-" {
			delete(f.Metadata, "decode")
		} else {
			f.Metadata["decode"] = c.value
		}
		p := filepath.Join(dir, "edited.padim")
		if err := safetensors.Write(p, f.Metadata, f.Tensors); err != nil {
			t.Fatal(err)
		}
		m3, err := Load(p)
		switch {
		case c.want == "" && (err != nil || m3.Preprocess.Decode != imageio.DecodeGo):
			t.Fatalf("decode %q: %v", c.value, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Fatalf("decode %q: %v, want an error naming %q", c.value, err, c.want)
		}
	}
}
