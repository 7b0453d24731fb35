// Package turbojpeg decodes JPEG images with libjpeg-turbo through its
// TurboJPEG API (cgo, build tag turbojpeg; Debian: libturbojpeg0-dev), at full
// size or scaled by n/8 in the DCT domain while decoding. Without the tag the
// package builds too: Available is false and every call returns ErrNotBuilt.
package turbojpeg

import (
	"errors"
	"fmt"
)

// ErrNotBuilt is returned by every call of a build without libjpeg-turbo.
var ErrNotBuilt = errors.New("this padim was built without libjpeg-turbo: install libturbojpeg0-dev and rebuild (make build detects it; or go build -tags turbojpeg)")

// Info is what a JPEG's header says of it.
type Info struct {
	W, H int
	Gray bool // one component: decoded as grey
	CMYK bool // four components (CMYK or YCCK)
}

// Scale is a DCT-domain scaling factor Num/Denom ≤ 1.
type Scale struct{ Num, Denom int }

// Of returns the size of n pixels decoded at scale s (libjpeg-turbo's TJSCALED).
func (s Scale) Of(n int) int { return (n*s.Num + s.Denom - 1) / s.Denom }

// Full is decoding at full size.
var Full = Scale{1, 1}

// Smallest returns the smallest of the scales (ascending, ending with Full)
// at which a w×h image still has both sides at least min pixels; Full when
// none is smaller.
func Smallest(scales []Scale, w, h, min int) Scale {
	for _, s := range scales {
		if s.Of(w) >= min && s.Of(h) >= min {
			return s
		}
	}
	return Full
}

// Error is a failure reported by libjpeg-turbo. Warning is true for what it
// calls a warning (damaged data it could decode around, e.g. a premature end).
type Error struct {
	Msg     string
	Warning bool
}

func (e *Error) Error() string {
	if e.Warning {
		return fmt.Sprintf("libjpeg-turbo: %s (a warning: the data is damaged)", e.Msg)
	}
	return "libjpeg-turbo: " + e.Msg
}
