//go:build turbojpeg && cgo

package turbojpeg

/*
#cgo LDFLAGS: -lturbojpeg
#include <stdio.h>
#include <stdlib.h>
#include <turbojpeg.h>

static int tj_header(const unsigned char *buf, unsigned long n, int *w, int *h, int *subsamp, int *cs, char *msg, int msglen) {
	tjhandle t = tjInitDecompress();
	if (!t) { snprintf(msg, msglen, "%s", tjGetErrorStr2(NULL)); return -2; }
	int r = tjDecompressHeader3(t, buf, n, w, h, subsamp, cs);
	if (r != 0) { snprintf(msg, msglen, "%s", tjGetErrorStr2(t)); r = tjGetErrorCode(t) == TJERR_WARNING ? -1 : -2; }
	tjDestroy(t);
	return r;
}

// tj_decode: 0 ok, -1 warning, -2 error (msg set).
static int tj_decode(const unsigned char *buf, unsigned long n, unsigned char *dst, int w, int h, int pf, char *msg, int msglen) {
	tjhandle t = tjInitDecompress();
	if (!t) { snprintf(msg, msglen, "%s", tjGetErrorStr2(NULL)); return -2; }
	int r = tjDecompress2(t, buf, n, dst, w, 0, h, pf, TJFLAG_ACCURATEDCT | TJFLAG_STOPONWARNING | TJFLAG_LIMITSCANS);
	if (r != 0) { snprintf(msg, msglen, "%s", tjGetErrorStr2(t)); r = tjGetErrorCode(t) == TJERR_WARNING ? -1 : -2; }
	tjDestroy(t);
	return r;
}

static int tj_nscales(void) { int n = 0; tjGetScalingFactors(&n); return n; }
static void tj_scale(int i, int *num, int *denom) { int n = 0; tjscalingfactor *s = tjGetScalingFactors(&n); *num = s[i].num; *denom = s[i].denom; }
*/
import "C"

import (
	"fmt"
	"slices"
	"sync"
	"unsafe"
)

// Available reports whether this build decodes with libjpeg-turbo.
const Available = true

var scales = sync.OnceValue(func() []Scale {
	var out []Scale
	for i := 0; i < int(C.tj_nscales()); i++ {
		var n, d C.int
		C.tj_scale(C.int(i), &n, &d)
		if n > 0 && d > 0 && n <= d {
			out = append(out, Scale{int(n), int(d)})
		}
	}
	slices.SortFunc(out, func(a, b Scale) int { return a.Num*b.Denom - b.Num*a.Denom })
	if len(out) == 0 || out[len(out)-1] != Full {
		out = append(out, Full)
	}
	return out
})

// Scales returns libjpeg-turbo's scaling factors up to 1, ascending.
func Scales() []Scale { return scales() }

func fail(code C.int, msg []C.char) error {
	return &Error{Msg: C.GoString(&msg[0]), Warning: code == -1}
}

// ReadInfo reads a JPEG's header.
func ReadInfo(data []byte) (Info, error) {
	if len(data) == 0 {
		return Info{}, &Error{Msg: "empty data"}
	}
	var w, h, ss, cs C.int
	msg := make([]C.char, 256)
	if r := C.tj_header((*C.uchar)(unsafe.Pointer(&data[0])), C.ulong(len(data)), &w, &h, &ss, &cs, &msg[0], C.int(len(msg))); r != 0 {
		return Info{}, fail(r, msg)
	}
	return Info{W: int(w), H: int(h), Gray: cs == C.TJCS_GRAY, CMYK: cs == C.TJCS_CMYK || cs == C.TJCS_YCCK}, nil
}

// Decode decodes a JPEG at scale s into grey (one byte a pixel) or RGB
// (three). An image over maxPixels (at full size), damaged data (libjpeg-turbo
// stops at its first warning) and progressive files with an unreasonable
// number of scans are errors.
func Decode(data []byte, s Scale, gray bool, maxPixels int) (pix []byte, w, h int, err error) {
	info, err := ReadInfo(data)
	if err != nil {
		return nil, 0, 0, err
	}
	if int64(info.W)*int64(info.H) > int64(maxPixels) {
		return nil, 0, 0, &Error{Msg: fmt.Sprintf("a %dx%d image is larger than the %d-pixel limit", info.W, info.H, maxPixels)}
	}
	if info.CMYK {
		return nil, 0, 0, &Error{Msg: "CMYK JPEG"}
	}
	w, h = s.Of(info.W), s.Of(info.H)
	pf, px := C.TJPF_RGB, 3
	if gray {
		pf, px = C.TJPF_GRAY, 1
	}
	if w <= 0 || h <= 0 {
		return nil, 0, 0, fmt.Errorf("libjpeg-turbo: a %dx%d image", w, h)
	}
	pix = make([]byte, w*h*px)
	msg := make([]C.char, 256)
	if r := C.tj_decode((*C.uchar)(unsafe.Pointer(&data[0])), C.ulong(len(data)), (*C.uchar)(unsafe.Pointer(&pix[0])), C.int(w), C.int(h), C.int(pf), &msg[0], C.int(len(msg))); r != 0 {
		return nil, 0, 0, fail(r, msg)
	}
	return pix, w, h, nil
}
