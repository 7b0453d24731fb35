// Package libdeflate inflates zlib streams with libdeflate (cgo, build tag
// libdeflate; Debian: libdeflate-dev), whole buffer to whole buffer: 2.5–3×
// Go's compress/flate on PNG pixel data. Without the tag the package builds
// too: Available is false and Inflate returns ErrNotBuilt.
//
// DEFLATE is a deterministic format: a stream that libdeflate and Go's
// compress/zlib both accept inflates to the same bytes in both.
package libdeflate

import "errors"

// ErrNotBuilt is returned by every call of a build without libdeflate.
var ErrNotBuilt = errors.New("this padim was built without libdeflate: install libdeflate-dev and rebuild (make build detects it; or go build -tags libdeflate)")

// ErrData is a damaged stream (bad header, data or Adler-32 checksum).
var ErrData = errors.New("libdeflate: corrupt zlib stream")

// ErrSize is a stream that inflates to fewer or more bytes than asked for.
var ErrSize = errors.New("libdeflate: the zlib stream does not inflate to the expected size")
