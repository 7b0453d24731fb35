//go:build !turbojpeg || !cgo

package turbojpeg

// Available reports whether this build decodes with libjpeg-turbo.
const Available = false

// Scales returns libjpeg-turbo's scaling factors up to 1, ascending.
func Scales() []Scale { return nil }

// ReadInfo reads a JPEG's header.
func ReadInfo(data []byte) (Info, error) { return Info{}, ErrNotBuilt }

// Decode decodes a JPEG at scale s into grey (one byte a pixel) or RGB (three),
// refusing an image over maxPixels.
func Decode(data []byte, s Scale, gray bool, maxPixels int) (pix []byte, w, h int, err error) {
	return nil, 0, 0, ErrNotBuilt
}
