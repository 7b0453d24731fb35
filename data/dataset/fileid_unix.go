//go:build unix

package dataset

import (
	"os"
	"syscall"
)

// fileID identifies a folder however it is reached (device and inode).
type fileID struct {
	dev, ino uint64
	path     string // unused here
}

func idOf(st os.FileInfo) (fileID, bool) {
	s, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return fileID{}, false
	}
	return fileID{dev: uint64(s.Dev), ino: uint64(s.Ino)}, true
}
