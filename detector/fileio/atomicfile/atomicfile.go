// Package atomicfile writes files so that readers never see half of one: a
// temporary file beside the target, synced, then renamed over it. A process
// told to stop (Stop) commits no further write, so that an interrupted run
// leaves each of its outputs as it was; Lock keeps two processes from writing
// one output at once.
package atomicfile

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
)

// temps are the temporary files being written now, for RemoveTemps.
var (
	tempMu sync.Mutex
	temps  = map[string]bool{}
)

// RemoveTemps removes every temporary file a Write is filling now. A process
// interrupted by a signal calls it before exiting, so that no half-written
// file stays behind.
func RemoveTemps() {
	tempMu.Lock()
	defer tempMu.Unlock()
	for name := range temps {
		os.Remove(name)
		delete(temps, name)
	}
}

// ErrStopped is the error of a Write refused because the process is stopping
// (Stop): the file was left as it was.
var ErrStopped = errors.New("stopped by a signal before it was written: left as it was")

// The commit gate: Stop and the rename that commits a Write exclude each
// other, so that every Write either committed before Stop or does not commit.
var (
	gate     sync.Mutex
	stopping atomic.Bool
)

// Stop makes every Write from now on fail with ErrStopped instead of
// replacing its file (a Write committing at this moment finishes first), and
// makes the fills in progress fail at their next write. WriteWhileStopping
// still commits. A process calls it when told to stop by a signal.
func Stop() {
	gate.Lock()
	stopping.Store(true)
	gate.Unlock()
}

// Stopping reports whether Stop was called.
func Stopping() bool { return stopping.Load() }

// Write writes a file through fill into a temporary file beside path, syncs
// it and renames it over path; on any error the temporary file is removed and path
// is untouched. After Stop it writes nothing and returns ErrStopped.
func Write(path string, fill func(w io.Writer) error) error {
	return write(path, fill, false)
}

// WriteWhileStopping is Write, but commits after Stop too: for the files a
// stopping process must still bring up to date so that a rerun can resume
// (a shard's results, flushed when the shard is interrupted).
func WriteWhileStopping(path string, fill func(w io.Writer) error) error {
	return write(path, fill, true)
}

// stopWriter fails the fill's writes once the process is stopping.
type stopWriter struct{ w io.Writer }

func (s stopWriter) Write(p []byte) (int, error) {
	if stopping.Load() {
		return 0, ErrStopped
	}
	return s.w.Write(p)
}

func write(path string, fill func(w io.Writer) error, whileStopping bool) (err error) {
	if !whileStopping && stopping.Load() {
		return fmt.Errorf("%s: %w", path, ErrStopped)
	}
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("cannot write %s: %w", path, err)
	}
	tempMu.Lock()
	temps[f.Name()] = true
	tempMu.Unlock()
	defer func() {
		tempMu.Lock()
		delete(temps, f.Name())
		tempMu.Unlock()
		if err != nil {
			f.Close()
			os.Remove(f.Name())
			err = fmt.Errorf("cannot write %s: %w", path, err)
		}
	}()
	var dst io.Writer = f
	if !whileStopping {
		dst = stopWriter{f}
	}
	bw := bufio.NewWriterSize(dst, 1<<20)
	if err = fill(bw); err != nil {
		return err
	}
	if err = bw.Flush(); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	if err = os.Chmod(f.Name(), 0o644); err != nil {
		return err
	}
	gate.Lock()
	defer gate.Unlock()
	if !whileStopping && stopping.Load() {
		return ErrStopped
	}
	return os.Rename(f.Name(), path)
}

// CheckWritable reports, before any work, whether a file could be written
// at path: its folder exists (with mkdir, its nearest existing ancestor: the
// writer creates the rest) and a file can be created in it. It creates and
// removes a temporary file to know.
func CheckWritable(path string, mkdir bool) error {
	dir := filepath.Dir(path)
	for {
		st, err := os.Stat(dir)
		switch {
		case err == nil && !st.IsDir():
			return fmt.Errorf("cannot write %s: %s is not a folder", path, dir)
		case err == nil:
			f, err := os.CreateTemp(dir, ".padim-write-check-*")
			if err != nil {
				var pe *os.PathError
				if errors.As(err, &pe) {
					err = pe.Err
				}
				return fmt.Errorf("cannot write %s: the folder %s is not writable (%v)", path, dir, err)
			}
			f.Close()
			os.Remove(f.Name())
			return nil
		case !errors.Is(err, os.ErrNotExist):
			return fmt.Errorf("cannot write %s: %w", path, err)
		case !mkdir:
			return fmt.Errorf("cannot write %s: the folder %s does not exist (create it first)", path, dir)
		}
		up := filepath.Dir(dir)
		if up == dir {
			return fmt.Errorf("cannot write %s: no existing folder above it", path)
		}
		dir = up
	}
}
