package imageio

import (
	"os"
	"path/filepath"
	"sort"
	"testing"

	"github.com/padim/padim/detector/imageio/libdeflate"
)

// BenchmarkDecodeView times DecodeView, the pipeline's decode stage as
// shipped (read, decode, convert, resize to 224², on one goroutine: per image
// per core), on every decode path this build has. The images are those in
// $PADIM_BENCH_FRAMES (bench/run-camera.sh makes 5 MP camera frames), else
// one 2448×2048 JPEG of quality 92 made here. go-decoder-only times the
// decoder alone (padim's PNG and TIFF readers, Go's for the rest) on each
// image; go-image-png and go-x-image-tiff time the go path with Go's own PNG
// and TIFF decoders instead of padim's readers (what it was before them); the
// go path of a PNG or TIFF is named go-libdeflate in a build that inflates with
// libdeflate (PNG pixel data, TIFF Deflate blocks).
//
//	PADIM_BENCH_FRAMES=DIR go test -tags 'turbojpeg libdeflate' -run NONE -bench DecodeView -cpu 1 ./detector/imageio
func BenchmarkDecodeView(b *testing.B) {
	var files []string
	if dir := os.Getenv("PADIM_BENCH_FRAMES"); dir != "" {
		files, _ = filepath.Glob(filepath.Join(dir, "*"))
		sort.Strings(files)
	}
	if len(files) == 0 {
		p := filepath.Join(b.TempDir(), "frame.jpg")
		if err := os.WriteFile(p, encodeAs(b, texture(2448, 2048, 1), "jpeg"), 0o644); err != nil {
			b.Fatal(err)
		}
		files = []string{p}
	}
	view := func(pp Preprocess, f string) func(b *testing.B) {
		return func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				if _, _, _, _, err := pp.DecodeView(Encoded{Path: f}, 1); err != nil {
					b.Fatal(err)
				}
			}
		}
	}
	for _, f := range files {
		ext := filepath.Ext(f)
		// the decoder alone: what the go path costs before conversion and resize
		b.Run(filepath.Base(f)+"/go-decoder-only", func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				if _, err := DecodeFile(f); err != nil {
					b.Fatal(err)
				}
			}
		})
		for _, d := range []Decoder{DecodeGo, DecodeTurboFull, DecodeTurboDCT} {
			if d.Available() != nil || d != DecodeGo && ext != ".jpg" {
				continue
			}
			pp := Preprocess{Resize: 224, Mean: ImageNetMean, Std: ImageNetStd, Decode: d}
			name := d.String()
			if d == DecodeGo && (ext == ".png" || ext == ".tif" || ext == ".tiff") && libdeflate.Available {
				name = "go-libdeflate"
			}
			b.Run(filepath.Base(f)+"/"+name, view(pp, f))
		}
		pp := Preprocess{Resize: 224, Mean: ImageNetMean, Std: ImageNetStd}
		switch ext {
		case ".png":
			b.Run(filepath.Base(f)+"/go-image-png", func(b *testing.B) {
				fastPNG = false
				defer func() { fastPNG = true }()
				view(pp, f)(b)
			})
		case ".tif", ".tiff":
			b.Run(filepath.Base(f)+"/go-x-image-tiff", func(b *testing.B) {
				fastTIFF = false
				defer func() { fastTIFF = true }()
				view(pp, f)(b)
			})
		}
	}
}
