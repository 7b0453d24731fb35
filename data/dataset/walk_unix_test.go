//go:build unix

package dataset

import (
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/padim/padim/detector/imageio"
)

// An image-named FIFO is listed (reading it then fails at once, naming what it
// is) instead of skipped without a word; a hard link is the same file; an
// unreadable sub-folder is skipped and reported, an unreadable root is an error.
func TestWalkReportsWhatItSkips(t *testing.T) {
	d := t.TempDir()
	writePNG(t, filepath.Join(d, "a.png"), 4, 4, func(x, y int) bool { return false })
	os.Link(filepath.Join(d, "a.png"), filepath.Join(d, "b.png"))
	if err := syscall.Mkfifo(filepath.Join(d, "pipe.png"), 0o644); err != nil {
		t.Skip(err)
	}
	writePNG(t, filepath.Join(d, "locked", "c.png"), 4, 4, func(x, y int) bool { return false })
	readDir = func(p string) ([]os.DirEntry, error) {
		if filepath.Base(p) == "locked" {
			return nil, &fs.PathError{Op: "open", Path: p, Err: syscall.EACCES}
		}
		return os.ReadDir(p)
	}
	defer func() { readDir = os.ReadDir }()
	l, err := Walk(d)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{filepath.Join(d, "a.png"), filepath.Join(d, "pipe.png")}; !slices.Equal(l.Files, want) {
		t.Errorf("files %v, want %v", l.Files, want)
	}
	if len(l.Duplicates) != 1 || l.Duplicates[0].Path != filepath.Join(d, "b.png") {
		t.Errorf("duplicates %+v", l.Duplicates)
	}
	if len(l.Skipped) != 1 || l.Skipped[0].Path != filepath.Join(d, "locked") || !strings.Contains(l.Skipped[0].Error(), "permission denied") {
		t.Errorf("skipped %+v", l.Skipped)
	}
	if _, err := Images(d); err == nil {
		t.Error("Images: an unreadable folder without an error")
	}
	if _, err := Walk(filepath.Join(d, "locked")); err == nil {
		t.Error("an unreadable root without an error")
	}
	if _, err := LoadMask(filepath.Join(d, "pipe.png"), imageio.Preprocess{Resize: 4}, 4, 4); err == nil || !strings.Contains(err.Error(), "named pipe") {
		t.Errorf("a FIFO mask: %v", err)
	}
}
