package imageio

import (
	"os"
	"path/filepath"
	"sort"
	"testing"
)

// BenchmarkDecodeView times DecodeView, the pipeline's decode stage as
// shipped (read, decode, convert, resize to 224², on one goroutine: per image
// per core), on every decode path this build has. The images are those in
// $PADIM_BENCH_FRAMES (bench/run-camera.sh makes 5 MP camera frames), else
// one 2448×2048 JPEG of quality 92 made here. go-decoder-only times Go's
// decoder alone on each image.
//
//	PADIM_BENCH_FRAMES=DIR go test -tags turbojpeg -run NONE -bench DecodeView -cpu 1 ./detector/imageio
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
	for _, f := range files {
		// Go's decoder alone: what the go path costs before conversion and resize
		b.Run(filepath.Base(f)+"/go-decoder-only", func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				if _, err := DecodeFile(f); err != nil {
					b.Fatal(err)
				}
			}
		})
		for _, d := range []Decoder{DecodeGo, DecodeTurboFull, DecodeTurboDCT} {
			if d.Available() != nil || d != DecodeGo && filepath.Ext(f) != ".jpg" {
				continue
			}
			pp := Preprocess{Resize: 224, Mean: ImageNetMean, Std: ImageNetStd, Decode: d}
			b.Run(filepath.Base(f)+"/"+d.String(), func(b *testing.B) {
				for i := 0; i < b.N; i++ {
					if _, _, _, _, err := pp.DecodeView(Encoded{Path: f}, 1); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
