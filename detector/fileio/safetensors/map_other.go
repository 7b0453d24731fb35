//go:build !(linux || darwin || freebsd)

package safetensors

import (
	"errors"
	"os"
)

func mmap(*os.File, int64) ([]byte, error) { return nil, errors.New("no mmap on this system") }

func munmap([]byte) {}
