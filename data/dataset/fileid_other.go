//go:build !unix

package dataset

import "os"

// fileID identifies a folder; without inodes, idOf gives none and Images
// falls back to the folder's resolved path.
type fileID struct{ path string }

func idOf(os.FileInfo) (fileID, bool) { return fileID{}, false }
