package imageio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"image"
	"image/color"
	"io"
	"runtime"

	"github.com/padim/padim/detector/fileio/readfile"
	"github.com/padim/padim/detector/imageio/turbojpeg"
)

// Decoder is how encoded images become pixels: part of a model's
// preprocessing, as the mean and std are (the inputs of two decoders differ by
// up to a few grey levels, and PaDiM maps follow).
type Decoder uint8

// The decoders.
const (
	// DecodeGo decodes with Go's decoders and resizes exactly (the default).
	// PNG and TIFF files go through padim's own readers where they read them
	// (pngread.go, tiffread.go; PNG inflated by libdeflate in a build with the
	// libdeflate tag): the same pixels as image/png's and x/image/tiff's, bit
	// for bit, so no other decode path is recorded for them.
	DecodeGo Decoder = iota
	// DecodeTurboFull decodes JPEG with libjpeg-turbo at full size, then
	// resizes exactly (other formats: Go).
	DecodeTurboFull
	// DecodeTurboDCT decodes JPEG with libjpeg-turbo scaled in the DCT domain
	// to the smallest of 1/8 … 1 that keeps both sides at least the resize
	// side (full size when tiling), then resizes exactly (other formats: Go).
	DecodeTurboDCT
	numDecoders
)

var decoderNames = [numDecoders]string{"go", "turbojpeg-full", "turbojpeg-dct"}

// DecoderNames lists the decoders' names, the default first.
func DecoderNames() []string { return decoderNames[:] }

func (d Decoder) String() string {
	if d < numDecoders {
		return decoderNames[d]
	}
	return fmt.Sprintf("decoder(%d)", uint8(d))
}

// ParseDecoder reads a decoder's name ("" is the default, go).
func ParseDecoder(s string) (Decoder, error) {
	if s == "" {
		return DecodeGo, nil
	}
	for i, n := range decoderNames {
		if s == n {
			return Decoder(i), nil
		}
	}
	return 0, fmt.Errorf("decode path %q: want go, turbojpeg-full or turbojpeg-dct", s)
}

// MarshalText implements encoding.TextMarshaler (the name).
func (d Decoder) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Decoder) UnmarshalText(b []byte) error {
	v, err := ParseDecoder(string(b))
	*d = v
	return err
}

// Available says whether this build can decode with d: nil, or an error
// saying how to rebuild.
func (d Decoder) Available() error {
	if d >= numDecoders {
		return fmt.Errorf("unknown decode path %v", d)
	}
	if d != DecodeGo && !turbojpeg.Available {
		return fmt.Errorf("decode path %s: %w", d, turbojpeg.ErrNotBuilt)
	}
	return nil
}

// Encoded is an image to decode: its bytes, or the file Path when Data is nil.
type Encoded struct {
	Path string
	Data []byte
}

// DecodeView decodes an image with the decoder p.Decode and prepares its view
// (see View), resampling on up to threads goroutines. note is something the
// user should know of this image (a JPEG libjpeg-turbo refused and Go's decoder
// read instead). Errors do not name the file (callers do).
func (p Preprocess) DecodeView(e Encoded, threads int) (view *Planes, rects []Rect, f Frame, note string, err error) {
	if err := p.Decode.Available(); err != nil {
		return nil, nil, f, "", err
	}
	data := e.Data
	if p.Decode != DecodeGo {
		if data == nil {
			if data, err = readJPEG(e.Path); err != nil {
				return nil, nil, f, "", err
			}
		}
		if isJPEG(data) {
			view, rects, f, err = p.turboView(data, threads)
			var te *turbojpeg.Error
			if !errors.As(err, &te) {
				return view, rects, f, "", err
			}
			note = fmt.Sprintf("%v; decoded by Go's decoder instead", err)
		}
	}
	var img image.Image
	if data != nil {
		img, err = decodeData(data)
	} else {
		img, err = decodePath(e.Path)
	}
	if err != nil {
		return nil, nil, f, "", err
	}
	b := img.Bounds()
	view, rects, f, err = p.viewOf(img, b.Dx(), b.Dy(), threads)
	return view, rects, f, note, err
}

func decodePath(path string) (image.Image, error) {
	fh, err := readfile.Open(path)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	return DecodeImage(fh)
}

func isJPEG(b []byte) bool { return len(b) >= 3 && b[0] == 0xff && b[1] == 0xd8 && b[2] == 0xff }

// maxJPEGRead bounds the bytes read of one JPEG for libjpeg-turbo: more than
// any JPEG of the largest allowed image holds (a longer file is read up to
// there, and libjpeg-turbo then reports its premature end).
const maxJPEGRead = 8*MaxPixels + 1<<20

// readJPEG reads a file whole if it is a JPEG (for libjpeg-turbo), else
// returns nil (Go's decoders stream it).
func readJPEG(path string) ([]byte, error) {
	fh, err := readfile.Open(path)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	var magic [3]byte
	if n, _ := io.ReadFull(fh, magic[:]); n < 3 || !isJPEG(magic[:]) {
		return nil, nil
	}
	st, err := fh.Stat()
	if err != nil {
		return nil, err
	}
	buf := make([]byte, 3, min(max(st.Size(), 3), maxJPEGRead))
	copy(buf, magic[:])
	for len(buf) < cap(buf) {
		n, err := fh.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
	}
	return buf, nil
}

// turboView decodes a JPEG with libjpeg-turbo and prepares its view. The
// header is checked as Go's path checks it (size limits) before decoding.
func (p Preprocess) turboView(data []byte, threads int) (*Planes, []Rect, Frame, error) {
	h, err := header(data[:min(len(data), 1<<16)])
	if err != nil {
		return nil, nil, Frame{}, err
	}
	info, err := turbojpeg.ReadInfo(data)
	if err != nil {
		return nil, nil, Frame{}, err
	}
	if info.W != h.W || info.H != h.H {
		return nil, nil, Frame{}, &turbojpeg.Error{Msg: fmt.Sprintf("reads a %dx%d image where the header says %dx%d", info.W, info.H, h.W, h.H)}
	}
	if info.CMYK {
		return nil, nil, Frame{}, &turbojpeg.Error{Msg: "a CMYK JPEG (padim reads those with Go's decoder)"}
	}
	s := turbojpeg.Full
	if p.Decode == DecodeTurboDCT && p.Tile == 0 {
		s = turbojpeg.Smallest(turbojpeg.Scales(), h.W, h.H, p.Resize)
	}
	pix, w, ht, err := turbojpeg.Decode(data, s, info.Gray, MaxPixels)
	if err != nil {
		return nil, nil, Frame{}, err
	}
	var img image.Image
	if info.Gray {
		img = &image.Gray{Pix: pix, Stride: w, Rect: image.Rect(0, 0, w, ht)}
	} else {
		img = &rgbImage{Pix: pix, Stride: 3 * w, Rect: image.Rect(0, 0, w, ht)}
	}
	if p.Tile > 0 || s == turbojpeg.Full {
		return p.viewOf(img, h.W, h.H, threads)
	}
	// Scaled pixel i covers [i, i+1)·Denom/Num of the image: the last row and
	// column lie partly beyond its edge. Resample over the image's extent,
	// W·Num/Denom scaled pixels, so the view lines up with the full-size one.
	spanW, spanH := float64(h.W)*float64(s.Num)/float64(s.Denom), float64(h.H)*float64(s.Num)/float64(s.Denom)
	v := resizeRowsOver(newRows(img), spanW, spanH, p.Resize, p.Resize, threads)
	return p.cropView(v, h.W, h.H)
}

// viewOf prepares the view of a decoded image whose file is origW×origH (the
// image itself may be scaled down from it): a fitted view is resampled
// straight from the image's rows; a tiled view holds the image as planes.
func (p Preprocess) viewOf(img image.Image, origW, origH, threads int) (*Planes, []Rect, Frame, error) {
	if p.Tile > 0 {
		return p.View(planesOf(img, threads))
	}
	return p.cropView(resizeImage(img, p.Resize, p.Resize, threads), origW, origH)
}

// cropView centre-crops a fitted view of an origW×origH image and returns it
// with its frame.
func (p Preprocess) cropView(v *Planes, origW, origH int) (*Planes, []Rect, Frame, error) {
	f := Frame{ImageW: origW, ImageH: origH, ScaleX: float64(origW) / float64(p.Resize), ScaleY: float64(origH) / float64(p.Resize)}
	if s := p.InputSize(); s < p.Resize {
		off := (p.Resize - s) / 2
		v = v.Crop(off, off, s, s)
		f.OffX, f.OffY = float64(off)*f.ScaleX, float64(off)*f.ScaleY
	}
	f.W, f.H = v.W, v.H
	return v, []Rect{{0, 0, v.W, v.H}}, f, nil
}

// layout is what decoding an image holds, read from its header.
type layout struct {
	goBytes float64 // Go's decoded image and working state, bytes a pixel
	turbo   float64 // libjpeg-turbo's working state beyond its output, bytes a full-size pixel (JPEG only)
	chans   int     // channels of libjpeg-turbo's output (1 or 3; JPEG only)
	held    int64   // bytes held beside the image, whatever its size (a TIFF's tile)
	whole   bool    // the file is read whole and its pixel data gathered: twice its bytes (padim's PNG reader)
}

// layoutOf reads the decoding cost from the header bytes and Go's config.
func layoutOf(peek []byte, format string, cm color.Model) layout {
	switch format {
	case "jpeg":
		if l, ok := jpegLayout(peek); ok {
			return l
		}
		// no frame header in the first bytes: assume the worst (progressive, 4 components)
		return layout{goBytes: 4 + 4*5, turbo: 4 * 2, chans: 3}
	case "png":
		l := layout{goBytes: modelBytes(cm)}
		if _, ok := pngReads(peek); ok {
			// padim's reader: the image (and a row), the file's bytes held
			// whole and its pixel data gathered from the IDAT chunks (DecodeMemory)
			l.whole = true
		} else if len(peek) > 28 && peek[28] == 1 { // Adam7: the passes, then the image
			l.goBytes *= 2
		}
		return l
	case "tiff":
		// x/image's reader (headerFrom prices padim's, which holds the image
		// and a tile, where it reads the file): the image, and a strip up to
		// the image's size, read in growing chunks (two copies at a time) and
		// decompressed; files and bytes are read at offsets, never buffered whole
		return layout{goBytes: 3 * modelBytes(cm)}
	}
	return layout{goBytes: modelBytes(cm)}
}

// modelBytes is the bytes a pixel of the image Go decodes for a colour model.
func modelBytes(cm color.Model) float64 {
	switch cm {
	case color.GrayModel, color.AlphaModel:
		return 1
	case color.Gray16Model, color.Alpha16Model:
		return 2
	case color.YCbCrModel:
		return 3
	case color.RGBAModel, color.NRGBAModel, color.CMYKModel:
		return 4
	}
	if _, ok := cm.(color.Palette); ok {
		return 1
	}
	return 8
}

// jpegLayout reads a JPEG's frame header: components, sampling, progressive.
func jpegLayout(b []byte) (layout, bool) {
	i := 2
	for i+4 <= len(b) {
		if b[i] != 0xff {
			return layout{}, false
		}
		m := b[i+1]
		if m == 0xff { // fill byte
			i++
			continue
		}
		if m == 0x01 || m >= 0xd0 && m <= 0xd7 {
			i += 2
			continue
		}
		n := int(binary.BigEndian.Uint16(b[i+2:]))
		isSOF := m >= 0xc0 && m <= 0xcf && m != 0xc4 && m != 0xc8 && m != 0xcc
		if !isSOF {
			i += 2 + n
			continue
		}
		seg := b[i+4 : min(len(b), i+2+n)]
		if len(seg) < 6 {
			return layout{}, false
		}
		nc := int(seg[5])
		if nc < 1 || len(seg) < 6+3*nc {
			return layout{}, false
		}
		hmax, vmax := 1, 1
		for c := 0; c < nc; c++ {
			s := seg[6+3*c+1]
			hmax, vmax = max(hmax, int(s>>4)), max(vmax, int(s&15))
		}
		var spp float64 // samples a pixel
		for c := 0; c < nc; c++ {
			s := seg[6+3*c+1]
			spp += float64(max(int(s>>4), 1)*max(int(s&15), 1)) / float64(hmax*vmax)
		}
		progressive := m == 0xc2 || m == 0xc6 || m == 0xca || m == 0xce
		l := layout{goBytes: spp, chans: 3}
		if nc == 1 {
			l.chans = 1
		}
		if nc == 4 { // Go decodes YCCK/CMYK into YCbCr and black, then a CMYK image
			l.goBytes += 4
		}
		if progressive { // coefficients of the whole image: int32 in Go, int16 in libjpeg-turbo
			l.goBytes += 4 * spp
			l.turbo = 2 * spp
		}
		return l, true
	}
	return layout{}, false
}

// DecodeMemory is the most memory decoding and preparing one image holds
// beyond its view, from its header: the decoded image as the decoder p.Decode
// holds it (libjpeg-turbo's output at the scale it decodes to), the encoded
// bytes where the whole file is read (libjpeg-turbo, or an input given as
// bytes), the resampler's rows on every core, and when tiling the image as
// float32 planes.
func (p Preprocess) DecodeMemory(h Header) int64 {
	px := int64(h.W) * int64(h.H)
	const slack = 1 << 20 // decoder state: tables, buffers
	var n int64
	switch {
	case h.Format == "planes":
		// already decoded: the resize's horizontal pass over its rows
		n = int64(h.H) * int64(p.Resize) * 4
	case p.Decode != DecodeGo && h.Format == "jpeg" && h.layout.chans > 0:
		s := turbojpeg.Full
		if p.Decode == DecodeTurboDCT && p.Tile == 0 {
			s = turbojpeg.Smallest(turbojpeg.Scales(), h.W, h.H, p.Resize)
		}
		n = int64(s.Of(h.W))*int64(s.Of(h.H))*int64(h.layout.chans) + int64(float64(px)*h.layout.turbo) + h.Size + slack
		// a refused file falls back to Go's decoder, with the bytes still held
		n = max(n, int64(float64(px)*h.layout.goBytes)+h.Size+slack)
	default:
		n = int64(float64(px)*max(h.layout.goBytes, 1)) + h.layout.held + slack
		switch {
		case h.layout.whole:
			n += 2 * h.Size
		case h.InMemory:
			n += h.Size
		}
	}
	if p.Tile > 0 {
		return n + px*12
	}
	// per resampling goroutine: a source row and the ring of resampled rows
	rowsHeld := int64(2*(h.H/max(p.Resize, 1)) + 4)
	work := (int64(h.W) + rowsHeld*int64(p.Resize)) * 3 * 4
	return n + work*int64(runtime.GOMAXPROCS(0))
}
