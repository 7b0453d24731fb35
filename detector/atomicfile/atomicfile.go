// Package atomicfile writes files so that readers never see half of one: a
// temporary file beside the target, synced, then renamed over it.
package atomicfile

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
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

// Write writes a file through fill into a temporary file beside path, syncs
// it and renames it over path; on any error the temporary file is removed and path
// is untouched.
func Write(path string, fill func(w io.Writer) error) (err error) {
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
	bw := bufio.NewWriterSize(f, 1<<20)
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
	return os.Rename(f.Name(), path)
}
