//go:build unix

package readfile

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A FIFO, a folder and a device are refused at once, naming what they are; a
// regular file (and a link to one) reads whole.
func TestOnlyRegularFiles(t *testing.T) {
	d := t.TempDir()
	fifo := filepath.Join(d, "pipe.png")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Skip("no FIFOs here:", err)
	}
	reg := filepath.Join(d, "a.txt")
	os.WriteFile(reg, []byte("hello"), 0o644)
	os.Symlink(reg, filepath.Join(d, "link"))
	done := make(chan struct{})
	go func() {
		defer close(done)
		for _, c := range []struct{ path, kind string }{{fifo, "named pipe"}, {d, "folder"}, {"/dev/null", "character device"}} {
			_, err := Open(c.path)
			var nr *NotRegularError
			if !errors.As(err, &nr) || !errors.Is(err, ErrNotRegular) || !strings.Contains(err.Error(), c.kind) || !strings.Contains(err.Error(), c.path) {
				t.Errorf("Open(%s): %v", c.path, err)
			}
			if _, err := ReadFile(c.path); !errors.Is(err, ErrNotRegular) {
				t.Errorf("ReadFile(%s): %v", c.path, err)
			}
			if err := Check(c.path); !errors.Is(err, ErrNotRegular) {
				t.Errorf("Check(%s): %v", c.path, err)
			}
		}
		for _, p := range []string{reg, filepath.Join(d, "link")} {
			if b, err := ReadFile(p); err != nil || string(b) != "hello" {
				t.Errorf("ReadFile(%s) = %q, %v", p, b, err)
			}
			if err := Check(p); err != nil {
				t.Errorf("Check(%s): %v", p, err)
			}
		}
		if _, err := ReadFile(filepath.Join(d, "missing")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("missing file: %v", err)
		}
	}()
	select {
	case <-done:
	case <-time.After(time.Minute): // a hang guard, not a timing assertion
		t.Fatal("an open blocked")
	}
}

// Files larger than their reported size, and empty ones, read whole.
func TestReadFileSizes(t *testing.T) {
	d := t.TempDir()
	for _, n := range []int{0, 1, 4095, 4096, 1 << 20} {
		p := filepath.Join(d, "f")
		os.WriteFile(p, make([]byte, n), 0o644)
		if b, err := ReadFile(p); err != nil || len(b) != n {
			t.Fatalf("%d bytes: got %d, %v", n, len(b), err)
		}
	}
}
