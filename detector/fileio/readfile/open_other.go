//go:build !unix

package readfile

import "os"

// openNonBlocking checks the kind of file before the open where the system
// has no non-blocking open.
func openNonBlocking(path string) (*os.File, error) {
	if err := Check(path); err != nil {
		return nil, err
	}
	return os.Open(path)
}
