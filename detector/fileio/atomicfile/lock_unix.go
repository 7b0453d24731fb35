//go:build unix

package atomicfile

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
)

type lockHandle = *os.File

// acquire flocks lf (created if missing) without waiting, then checks that
// lf still names the locked file (a releasing holder removes it: the lock
// would be on a file no one else can find), and writes this pid into it.
func acquire(lf string) (*os.File, int, error) {
	for try := 0; try < 16; try++ {
		f, err := os.OpenFile(lf, os.O_RDWR|os.O_CREATE, 0o644)
		if err != nil {
			return nil, 0, fmt.Errorf("cannot lock %s: %w", lf, err)
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			pid := readPID(f)
			f.Close()
			if errors.Is(err, syscall.EWOULDBLOCK) {
				return nil, 0, &HeldError{PID: pid}
			}
			return nil, 0, fmt.Errorf("cannot lock %s: %w", lf, err)
		}
		fst, err1 := f.Stat()
		pst, err2 := os.Stat(lf)
		if err1 != nil || err2 != nil || !os.SameFile(fst, pst) {
			f.Close() // removed by its last holder between our open and flock: again
			continue
		}
		stale := readPID(f)
		if err := f.Truncate(0); err == nil {
			f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
		}
		if stale == os.Getpid() {
			stale = 0
		}
		return f, stale, nil
	}
	return nil, 0, fmt.Errorf("cannot lock %s: it keeps being replaced", lf)
}

func readPID(f *os.File) int {
	b := make([]byte, 32)
	n, _ := f.ReadAt(b, 0)
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b[:n])))
	return pid
}

// release removes the lock file while still holding it (so that no one
// locks the removed file), then closes it.
func release(lf string, f *os.File) {
	os.Remove(lf)
	f.Close()
}
