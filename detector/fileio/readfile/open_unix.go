//go:build unix

package readfile

import (
	"os"
	"syscall"
)

// openNonBlocking opens with O_NONBLOCK, which makes an open of a FIFO return
// at once (and is without effect on a regular file's reads).
func openNonBlocking(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
}
