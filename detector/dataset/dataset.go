// Package dataset finds images on disk: plain folders of good images, and the
// MVTec AD layout of a category (train/good, test/<type>/,
// ground_truth/<type>/<stem>_mask.png), with ground-truth masks brought to the
// anomaly map's resolution exactly as the images are.
package dataset

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/padim/padim/detector/imageio"
)

// IsImage reports whether a file name has an image extension padim decodes.
func IsImage(name string) bool {
	switch strings.ToLower(filepath.Ext(name)) {
	case ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif":
		return true
	}
	return false
}

// Images lists the image files under dir (recursively, following symbolic
// links to files and folders, each folder once), sorted. Hidden files and
// folders (a leading dot) are skipped.
func Images(dir string) ([]string, error) {
	var files []string
	seen := map[fileID]bool{}
	var walk func(d string) error
	walk = func(d string) error {
		st, err := os.Stat(d) // follows links
		if err != nil {
			return err
		}
		id, ok := idOf(st)
		if !ok {
			real, err := filepath.EvalSymlinks(d)
			if err != nil {
				return err
			}
			id = fileID{path: real}
		}
		if seen[id] {
			return nil // a link back to a folder already listed
		}
		seen[id] = true
		ents, err := os.ReadDir(d)
		if err != nil {
			return err
		}
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), ".") {
				continue
			}
			p := filepath.Join(d, e.Name())
			t := e.Type()
			if t&fs.ModeSymlink != 0 {
				st, err := os.Stat(p)
				if err != nil {
					continue // a dangling link is no image
				}
				t = st.Mode().Type()
			}
			switch {
			case t.IsDir():
				if err := walk(p); err != nil {
					return err
				}
			case t.IsRegular() && IsImage(p):
				files = append(files, p)
			}
		}
		return nil
	}
	if err := walk(dir); err != nil {
		return nil, err
	}
	slices.Sort(files)
	return files, nil
}

// TrainImages returns the good training images of dir: train/good of an MVTec
// category, else every image under dir.
func TrainImages(dir string) ([]string, error) {
	if st, err := os.Stat(filepath.Join(dir, "train", "good")); err == nil && st.IsDir() {
		dir = filepath.Join(dir, "train", "good")
	}
	files, err := Images(dir)
	if err != nil {
		return nil, err
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("no images (png, jpg, bmp, tif, gif) in %s", dir)
	}
	return files, nil
}

// Item is one test image with its ground truth.
type Item struct {
	Path      string
	Type      string // "good" or the defect type (the test sub-folder)
	Defective bool
	MaskPath  string // "" for good images
}

// Name is the item's path relative to the category's test folder, e.g. "hole/003.png".
func (it Item) Name() string { return it.Type + "/" + filepath.Base(it.Path) }

// TestSet lists an MVTec category's test images and their masks. A defective
// image without its mask is an error naming the missing file.
func TestSet(dir string) ([]Item, error) {
	test := filepath.Join(dir, "test")
	types, err := os.ReadDir(test)
	if err != nil {
		return nil, fmt.Errorf("%s is not an MVTec category folder (no test/ inside): %w", dir, err)
	}
	var items []Item
	for _, t := range types {
		if !t.IsDir() {
			continue
		}
		files, err := Images(filepath.Join(test, t.Name()))
		if err != nil {
			return nil, err
		}
		for _, f := range files {
			it := Item{Path: f, Type: t.Name(), Defective: t.Name() != "good"}
			if it.Defective {
				stem := strings.TrimSuffix(filepath.Base(f), filepath.Ext(f))
				it.MaskPath = filepath.Join(dir, "ground_truth", t.Name(), stem+"_mask.png")
				if _, err := os.Stat(it.MaskPath); err != nil {
					return nil, fmt.Errorf("ground-truth mask %s for %s is missing", it.MaskPath, f)
				}
			}
			items = append(items, it)
		}
	}
	if len(items) == 0 {
		return nil, fmt.Errorf("no test images under %s", test)
	}
	return items, nil
}

// LoadMask reads a ground-truth mask (≥128 is defect) and brings it to a w×h
// map: without tiling, nearest-neighbour resize to Resize² and the same centre
// crop as the images; with tiling, the image's native size (nearest if it differs).
func LoadMask(path string, pp imageio.Preprocess, w, h int) ([]bool, error) {
	pl, err := imageio.Decode(path)
	if err != nil {
		return nil, err
	}
	bin := make([]bool, pl.W*pl.H)
	for i := range bin {
		bin[i] = pl.Pix[i]*255 >= 127.5
	}
	if pp.Tile > 0 {
		return Nearest(bin, pl.W, pl.H, w, h), nil
	}
	r := Nearest(bin, pl.W, pl.H, pp.Resize, pp.Resize)
	s := pp.InputSize()
	if s == pp.Resize {
		return r, nil
	}
	off := (pp.Resize - s) / 2
	out := make([]bool, s*s)
	for y := 0; y < s; y++ {
		copy(out[y*s:(y+1)*s], r[(y+off)*pp.Resize+off:])
	}
	return out, nil
}

// Nearest resizes a binary image with PyTorch's nearest rule (src = ⌊dst·in/out⌋).
func Nearest(src []bool, w, h, ow, oh int) []bool {
	if w == ow && h == oh {
		return src
	}
	out := make([]bool, ow*oh)
	for y := 0; y < oh; y++ {
		sy := min(y*h/oh, h-1)
		for x := 0; x < ow; x++ {
			out[y*ow+x] = src[sy*w+min(x*w/ow, w-1)]
		}
	}
	return out
}
