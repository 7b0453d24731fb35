package dataset

import (
	"image"
	"image/color"
	"image/png"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/padim/padim/detector/imageio"
)

func writePNG(t *testing.T, p string, w, h int, on func(x, y int) bool) {
	os.MkdirAll(filepath.Dir(p), 0o755)
	img := image.NewGray(image.Rect(0, 0, w, h))
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			if on(x, y) {
				img.SetGray(x, y, color.Gray{200})
			} else {
				img.SetGray(x, y, color.Gray{127})
			}
		}
	}
	f, _ := os.Create(p)
	png.Encode(f, img)
	f.Close()
}

func TestMVTecLayout(t *testing.T) {
	d := t.TempDir()
	none := func(x, y int) bool { return false }
	writePNG(t, filepath.Join(d, "train/good/000.png"), 8, 8, none)
	writePNG(t, filepath.Join(d, "test/good/000.png"), 8, 8, none)
	writePNG(t, filepath.Join(d, "test/hole/001.png"), 8, 8, none)
	writePNG(t, filepath.Join(d, "ground_truth/hole/001_mask.png"), 8, 8, func(x, y int) bool { return x >= 4 })
	tr, err := TrainImages(d)
	if err != nil || len(tr) != 1 {
		t.Fatal(tr, err)
	}
	items, err := TestSet(d)
	if err != nil || len(items) != 2 || !items[1].Defective || items[1].Name() != "hole/001.png" {
		t.Fatalf("%+v %v", items, err)
	}
	// mask: 8×8 right half → resize 4 (nearest) → crop 2 (centre) → [F T / F T]
	m, err := LoadMask(items[1].MaskPath, imageio.Preprocess{Resize: 4, Crop: 2}, 2, 2)
	if err != nil || !slices.Equal(m, []bool{false, true, false, true}) {
		t.Fatal(m, err)
	}
	os.Remove(filepath.Join(d, "ground_truth/hole/001_mask.png"))
	if _, err := TestSet(d); err == nil {
		t.Fatal("missing mask accepted")
	}
}

// A data folder given as a link, linked sub-folders and files are followed;
// a link back up the tree is listed once, not forever.
func TestImagesFollowLinks(t *testing.T) {
	root := t.TempDir()
	real := filepath.Join(root, "real")
	os.MkdirAll(filepath.Join(real, "a"), 0o755)
	other := filepath.Join(root, "other")
	os.MkdirAll(other, 0o755)
	for _, p := range []string{filepath.Join(real, "a", "1.png"), filepath.Join(other, "2.png")} {
		os.WriteFile(p, []byte("x"), 0o644)
	}
	os.Symlink(other, filepath.Join(real, "linked"))
	os.Symlink(real, filepath.Join(real, "a", "loop"))
	os.Symlink(filepath.Join(other, "2.png"), filepath.Join(real, "3.png"))
	os.Symlink(filepath.Join(root, "nowhere"), filepath.Join(real, "dangling.png"))
	link := filepath.Join(root, "data")
	os.Symlink(real, link)
	files, err := Images(link)
	if err != nil {
		t.Fatal(err)
	}
	// linked/2.png is 3.png's target reached through the linked folder: one file, listed once
	want := []string{filepath.Join(link, "3.png"), filepath.Join(link, "a", "1.png")}
	if !slices.Equal(files, want) {
		t.Fatalf("got %v\nwant %v", files, want)
	}
	l, err := Walk(link)
	if err != nil || len(l.Duplicates) != 1 || l.Duplicates[0] != (Duplicate{Path: filepath.Join(link, "linked", "2.png"), Same: filepath.Join(link, "3.png")}) {
		t.Fatalf("duplicates: %+v, %v", l, err)
	}
}
