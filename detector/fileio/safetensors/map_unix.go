//go:build linux || darwin || freebsd

package safetensors

import (
	"os"
	"syscall"
)

func mmap(f *os.File, size int64) ([]byte, error) {
	return syscall.Mmap(int(f.Fd()), 0, int(size), syscall.PROT_READ, syscall.MAP_PRIVATE|mapPopulate)
}

func munmap(b []byte) { syscall.Munmap(b) }
