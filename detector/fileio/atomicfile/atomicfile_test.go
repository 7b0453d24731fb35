package atomicfile

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestWriteReplacesOrLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	if err := Write(p, func(w io.Writer) error { _, err := io.WriteString(w, "new"); return err }); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(p); string(b) != "new" {
		t.Fatalf("got %q", b)
	}
	boom := errors.New("boom")
	if err := Write(p, func(w io.Writer) error { io.WriteString(w, "half"); return boom }); !errors.Is(err, boom) {
		t.Fatalf("got %v", err)
	}
	if b, _ := os.ReadFile(p); string(b) != "new" {
		t.Fatalf("a failed write changed the file: %q", b)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Fatalf("temporary files left: %v", ents)
	}
}

// After Stop no Write replaces its file (and its temporary file goes), a
// fill in progress fails at its next write, and WriteWhileStopping still
// commits.
func TestStopCommitsNothing(t *testing.T) {
	defer stopping.Store(false)
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	os.WriteFile(p, []byte("old"), 0o644)
	err := Write(p, func(w io.Writer) error {
		io.WriteString(w, "half")
		Stop() // the signal arrives while the file is being filled
		_, err := w.Write(make([]byte, 2<<20))
		return err
	})
	if !errors.Is(err, ErrStopped) {
		t.Fatalf("a write interrupted by Stop: %v", err)
	}
	if err := Write(p, func(w io.Writer) error { _, err := io.WriteString(w, "new"); return err }); !errors.Is(err, ErrStopped) {
		t.Fatalf("a write after Stop: %v", err)
	}
	if b, _ := os.ReadFile(p); string(b) != "old" {
		t.Fatalf("the file changed after Stop: %q", b)
	}
	q := filepath.Join(dir, "results")
	if err := WriteWhileStopping(q, func(w io.Writer) error { _, err := io.WriteString(w, "kept"); return err }); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(q); string(b) != "kept" {
		t.Fatalf("WriteWhileStopping: %q", b)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 2 {
		t.Fatalf("temporary files left: %v", ents)
	}
}

// One holder at a time (even within one process: the lock is per open file);
// the refusal names the holder's pid; a lock left by a killed process is
// taken over; Release removes the lock file.
func TestLock(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "m.padim")
	l, stale, err := Acquire(p)
	if err != nil || stale != 0 {
		t.Fatal(err, stale)
	}
	_, _, err = Acquire(p)
	var he *HeldError
	if !errors.As(err, &he) || he.PID != os.Getpid() || !strings.Contains(err.Error(), fmt.Sprintf("pid %d", os.Getpid())) {
		t.Fatalf("second holder: %v", err)
	}
	l.Release()
	if _, err := os.Stat(LockPath(p)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("lock file left after Release: %v", err)
	}
	os.WriteFile(LockPath(p), []byte("999999\n"), 0o644) // a killed holder's
	l, stale, err = Acquire(p)
	if err != nil || stale != 999999 {
		t.Fatalf("stale lock: %v, stale pid %d", err, stale)
	}
	l.Release()
}

func TestCheckWritable(t *testing.T) {
	dir := t.TempDir()
	if err := CheckWritable(filepath.Join(dir, "m"), false); err != nil {
		t.Fatal(err)
	}
	if err := CheckWritable(filepath.Join(dir, "a", "b", "m"), false); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("missing folder: %v", err)
	}
	if err := CheckWritable(filepath.Join(dir, "a", "b", "m"), true); err != nil {
		t.Fatalf("missing folder made by the writer: %v", err)
	}
	os.WriteFile(filepath.Join(dir, "file"), nil, 0o644)
	if err := CheckWritable(filepath.Join(dir, "file", "m"), true); err == nil || !strings.Contains(err.Error(), "not a folder") {
		t.Fatalf("a file as folder: %v", err)
	}
	if err := CheckWritable("/proc/padim-check", false); err == nil || !strings.Contains(err.Error(), "not writable") {
		t.Fatalf("/proc: %v", err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Fatalf("check files left: %v", ents)
	}
}
