//go:build !libdeflate || !cgo

package libdeflate

// Available reports whether this build inflates with libdeflate.
const Available = false

// Inflate inflates the zlib stream at the start of src into all of dst.
func Inflate(dst, src []byte) (used int, err error) { return 0, ErrNotBuilt }
