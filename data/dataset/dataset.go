// Package dataset finds images on disk: plain folders of good images, and the
// MVTec AD layout of a category (train/good, test/<type>/,
// ground_truth/<type>/<stem>_mask.png), with ground-truth masks brought to the
// anomaly map's resolution exactly as the images are.
package dataset

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/padim/padim/detector/fileio/readfile"
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

// Listing is what a walk of a data folder found.
type Listing struct {
	// Files are the images, sorted. An image-named entry that is not a
	// regular file (a FIFO, a socket, a device) is listed too: reading it
	// fails at once, naming what it is, so it is reported as unreadable
	// rather than skipped without a word.
	Files []string
	// Skipped are the folders that could not be read (their images are
	// missing from Files): a run reports them with its unreadable images.
	Skipped []FileError
	// Duplicates are images reached a second time under another name (a
	// link, a hard link) and left out of Files.
	Duplicates []Duplicate
}

// FileError is a path that could not be used, and why.
type FileError struct {
	Path string
	Err  error
}

func (e FileError) Error() string { return fmt.Sprintf("%s: %v", e.Path, e.Err) }

// Duplicate is an image left out because it is the same file as one listed.
type Duplicate struct {
	Path string // left out
	Same string // the listed path of the same file
}

// readDir lists a folder (a variable for the tests of unreadable folders,
// which need a user that permissions apply to).
var readDir = os.ReadDir

// Walk lists the image files under dir (recursively, following symbolic
// links to files and folders, each folder once, each file once), sorted.
// Hidden files and folders (a leading dot) are skipped. A sub-folder that
// cannot be read is skipped and reported in the listing; dir itself must be
// readable.
func Walk(dir string) (*Listing, error) {
	l := &Listing{}
	var files []string
	ids := map[string]fileID{} // of the files, where the system gives them
	seen := map[fileID]bool{}
	var walk func(d string, top bool) error
	walk = func(d string, top bool) error {
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
		ents, err := readDir(d)
		if err != nil {
			if top {
				return err
			}
			var pe *fs.PathError
			if errors.As(err, &pe) {
				err = pe.Err
			}
			l.Skipped = append(l.Skipped, FileError{Path: d, Err: fmt.Errorf("cannot read the folder (%v): its images are skipped", err)})
			return nil
		}
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), ".") {
				continue
			}
			p := filepath.Join(d, e.Name())
			t := e.Type()
			var info fs.FileInfo
			if t&fs.ModeSymlink != 0 {
				st, err := os.Stat(p)
				if err != nil {
					continue // a dangling link is no image
				}
				t, info = st.Mode().Type(), st
			}
			switch {
			case t.IsDir():
				if err := walk(p, false); err != nil {
					var pe *fs.PathError
					if errors.As(err, &pe) {
						err = pe.Err
					}
					l.Skipped = append(l.Skipped, FileError{Path: p, Err: fmt.Errorf("cannot read the folder (%v): its images are skipped", err)})
				}
			case IsImage(p):
				if info == nil {
					info, _ = e.Info()
				}
				if info != nil {
					if id, ok := idOf(info); ok {
						ids[p] = id
					}
				}
				files = append(files, p)
			}
		}
		return nil
	}
	if err := walk(dir, true); err != nil {
		return nil, err
	}
	slices.Sort(files)
	first := map[fileID]string{}
	for _, f := range files {
		if id, ok := ids[f]; ok {
			if prev, dup := first[id]; dup {
				l.Duplicates = append(l.Duplicates, Duplicate{Path: f, Same: prev})
				continue
			}
			first[id] = f
		}
		l.Files = append(l.Files, f)
	}
	return l, nil
}

// Images lists the image files under dir like Walk; an unreadable
// sub-folder is an error.
func Images(dir string) ([]string, error) {
	l, err := Walk(dir)
	if err != nil {
		return nil, err
	}
	if len(l.Skipped) > 0 {
		return nil, l.Skipped[0]
	}
	return l.Files, nil
}

// TrainRoot is the folder of dir's good training images: train/good of an
// MVTec category, else dir.
func TrainRoot(dir string) string {
	if st, err := os.Stat(filepath.Join(dir, "train", "good")); err == nil && st.IsDir() {
		return filepath.Join(dir, "train", "good")
	}
	return dir
}

// TrainListing walks the good training images of dir (TrainRoot); no
// image at all is an error.
func TrainListing(dir string) (*Listing, error) {
	root := TrainRoot(dir)
	l, err := Walk(root)
	if err != nil {
		return nil, err
	}
	if len(l.Files) == 0 && len(l.Skipped) == 0 {
		return nil, fmt.Errorf("no images (png, jpg, bmp, tif, gif) in %s", root)
	}
	return l, nil
}

// TrainImages returns the good training images of dir: train/good of an MVTec
// category, else every image under dir.
func TrainImages(dir string) ([]string, error) {
	l, err := TrainListing(dir)
	if err != nil {
		return nil, err
	}
	if len(l.Skipped) > 0 {
		return nil, l.Skipped[0]
	}
	return l.Files, nil
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
// image without its mask is an error naming the missing file, and so is an
// unreadable folder.
func TestSet(dir string) ([]Item, error) {
	items, l, err := TestListing(dir)
	if err != nil {
		return nil, err
	}
	if len(l.Skipped) > 0 {
		return nil, l.Skipped[0]
	}
	return items, nil
}

// TestListing lists an MVTec category's test images and their masks, like
// TestSet, with what the walk skipped (unreadable type folders, duplicates)
// in the listing (whose Files are the items' paths).
func TestListing(dir string) ([]Item, *Listing, error) {
	test := filepath.Join(dir, "test")
	types, err := os.ReadDir(test)
	if err != nil {
		return nil, nil, fmt.Errorf("%s is not an MVTec category folder (no test/ inside): %w", dir, err)
	}
	all := &Listing{}
	var items []Item
	for _, t := range types {
		if !t.IsDir() {
			continue
		}
		l, err := Walk(filepath.Join(test, t.Name()))
		if err != nil {
			var pe *fs.PathError
			if errors.As(err, &pe) {
				err = pe.Err
			}
			all.Skipped = append(all.Skipped, FileError{Path: filepath.Join(test, t.Name()), Err: fmt.Errorf("cannot read the folder (%v): its images are skipped", err)})
			continue
		}
		all.Skipped = append(all.Skipped, l.Skipped...)
		all.Duplicates = append(all.Duplicates, l.Duplicates...)
		for _, f := range l.Files {
			it := Item{Path: f, Type: t.Name(), Defective: t.Name() != "good"}
			if it.Defective {
				stem := strings.TrimSuffix(filepath.Base(f), filepath.Ext(f))
				it.MaskPath = filepath.Join(dir, "ground_truth", t.Name(), stem+"_mask.png")
				if _, err := os.Stat(it.MaskPath); err != nil {
					return nil, nil, fmt.Errorf("ground-truth mask %s for %s is missing", it.MaskPath, f)
				}
			}
			items = append(items, it)
			all.Files = append(all.Files, f)
		}
	}
	if len(items) == 0 && len(all.Skipped) == 0 {
		return nil, nil, fmt.Errorf("no test images under %s", test)
	}
	return items, all, nil
}

// LoadMask reads a ground-truth mask (≥128 is defect) and brings it to a w×h
// map: without tiling, nearest-neighbour resize to Resize² and the same centre
// crop as the images; with tiling, the image's native size (nearest if it differs).
func LoadMask(path string, pp imageio.Preprocess, w, h int) ([]bool, error) {
	if err := readfile.Check(path); err != nil { // a FIFO would block the decoder
		return nil, err
	}
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
