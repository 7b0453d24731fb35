package atomicfile

import (
	"fmt"
	"path/filepath"
)

// HeldError says that another process holds the lock on a file.
type HeldError struct {
	Path string // the locked file
	PID  int    // the holder's process id, 0 when unknown
}

func (e *HeldError) Error() string {
	if e.PID > 0 {
		return fmt.Sprintf("%s is being written by another padim (pid %d): wait for it to finish, or stop it, or choose another output", e.Path, e.PID)
	}
	return fmt.Sprintf("%s is being written by another padim: wait for it to finish, or stop it, or choose another output", e.Path)
}

// LockPath is the lock file of path: a hidden file beside it (folder walks
// skip hidden files).
func LockPath(path string) string {
	return filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".lock")
}

// Lock is an exclusive, advisory lock on one output file, held by this
// process from Acquire to Release (or its exit: the system releases a killed
// process's lock, so a lock left by one is taken over).
type Lock struct {
	path, file string
	h          lockHandle
}

// Acquire takes the lock on path (in LockPath(path), which holds the
// holder's pid) without waiting: another holder is a *HeldError. stale is
// the pid a killed holder left in the lock file (0 when none), whose lock is
// taken over.
func Acquire(path string) (l *Lock, stale int, err error) {
	lf := LockPath(path)
	h, stale, err := acquire(lf)
	if err != nil {
		if he, ok := err.(*HeldError); ok {
			he.Path = path
		}
		return nil, 0, err
	}
	return &Lock{path: path, file: lf, h: h}, stale, nil
}

// Release removes the lock file and releases the lock.
func (l *Lock) Release() {
	if l != nil {
		release(l.file, l.h)
	}
}
