package imageio

import (
	"bytes"
	"image/png"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"golang.org/x/image/tiff"
)

// Files written by Pillow and libtiff (testdata/encoders) are read by padim's
// readers themselves, to image/png's and x/image's images bit for bit.
func TestReadersOnOtherEncoders(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join("testdata", "encoders", "*.*"))
	n := 0
	for _, f := range files {
		ext := filepath.Ext(f)
		if ext != ".png" && ext != ".tif" {
			continue
		}
		n++
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if ext == ".png" {
			ref, err := png.Decode(bytes.NewReader(data))
			if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			got, err := decodePNG(data)
			if err != nil || !reflect.DeepEqual(got, ref) {
				t.Errorf("%s: padim's reader: %v, same image %v", f, err, reflect.DeepEqual(got, ref))
			}
			continue
		}
		ref, err := tiff.Decode(bytes.NewReader(data))
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		got, ok := fastTIFFDecode(data)
		if !ok || !reflect.DeepEqual(got, ref) {
			t.Errorf("%s: padim's reader read it %v, same image %v", f, ok, reflect.DeepEqual(got, ref))
		}
	}
	if n < 15 {
		t.Fatalf("%d files in testdata/encoders, want the 16 committed", n)
	}
}
