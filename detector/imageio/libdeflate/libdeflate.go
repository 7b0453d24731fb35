//go:build libdeflate && cgo

package libdeflate

/*
#cgo LDFLAGS: -ldeflate
#include <stdlib.h>
#include <libdeflate.h>

// zinflate: 0 ok, 1 bad data, 2 no decompressor, 3 too much output.
static int zinflate(const void *in, size_t in_n, void *out, size_t out_n, size_t *in_used, size_t *out_got) {
	struct libdeflate_decompressor *d = libdeflate_alloc_decompressor();
	if (!d) return 2;
	enum libdeflate_result r = libdeflate_zlib_decompress_ex(d, in, in_n, out, out_n, in_used, out_got);
	libdeflate_free_decompressor(d);
	switch (r) {
	case LIBDEFLATE_SUCCESS: return 0;
	case LIBDEFLATE_INSUFFICIENT_SPACE: return 3;
	default: return 1;
	}
}
*/
import "C"

import (
	"errors"
	"unsafe"
)

// Available reports whether this build inflates with libdeflate.
const Available = true

// Inflate inflates the zlib stream at the start of src into all of dst and
// returns the bytes of src the stream took (it ends there, checksum
// included). A damaged stream is ErrData; one that inflates to fewer or more
// than len(dst) bytes is ErrSize.
func Inflate(dst, src []byte) (used int, err error) {
	if len(src) == 0 {
		return 0, ErrData
	}
	var out unsafe.Pointer
	if len(dst) > 0 {
		out = unsafe.Pointer(&dst[0])
	}
	var inUsed, outGot C.size_t
	switch C.zinflate(unsafe.Pointer(&src[0]), C.size_t(len(src)), out, C.size_t(len(dst)), &inUsed, &outGot) {
	case 0:
		if int(outGot) != len(dst) {
			return 0, ErrSize
		}
		return int(inUsed), nil
	case 2:
		return 0, errors.New("libdeflate: out of memory")
	case 3:
		return 0, ErrSize
	}
	return 0, ErrData
}
