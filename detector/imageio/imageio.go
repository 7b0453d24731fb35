// Package imageio reads images for the backbone: decode PNG, JPEG, BMP, TIFF and
// GIF (8 or 16 bit, grayscale repeated to three channels, alpha dropped), resize
// with a bilinear filter that widens its support when shrinking (anti-aliasing,
// like Pillow's and torchvision's antialias=True bilinear), optionally centre-crop,
// normalise, and lay out as CHW float32.
package imageio

import (
	"bufio"
	"bytes"
	"fmt"
	"image"
	_ "image/gif"  // GIF decoder
	_ "image/jpeg" // JPEG decoder
	_ "image/png"  // PNG decoder
	"io"
	"math"
	"os"

	_ "golang.org/x/image/bmp" // BMP decoder
	"golang.org/x/image/tiff"  // TIFF decoder

	"github.com/padim/padim/detector/fileio/readfile"
)

// MaxPixels bounds the images Decode accepts, checked from the header before
// decoding, so a hostile or broken file cannot make it allocate without bound.
const MaxPixels = 1 << 26 // 67 M pixels (8192²)

// Planes is an RGB image as three float32 planes in [0,1], CHW.
type Planes struct {
	W, H int
	Pix  []float32 // [3][H][W]
}

// Decode reads an image file into planes.
func Decode(path string) (*Planes, error) {
	f, err := readfile.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	p, err := DecodeReader(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w (is it a readable PNG, JPEG, BMP, TIFF or GIF image?)", path, err)
	}
	return p, nil
}

// Header is what an image file says of itself before decoding.
type Header struct {
	W, H     int
	Format   string
	Size     int64 // the encoded bytes, when known (set by the caller: the file's size or the data's length)
	InMemory bool  // the encoded bytes are held in memory (an input given as bytes)
	layout   layout
}

// ReadHeader reads an image's format and size from its first bytes, refusing
// empty images and those larger than MaxPixels.
func ReadHeader(r io.Reader) (Header, error) {
	peek := make([]byte, 1<<16)
	n, err := io.ReadFull(r, peek)
	if err != nil && err != io.ErrUnexpectedEOF && err != io.EOF {
		return Header{}, err
	}
	return headerFrom(r, peek[:n])
}

func header(peek []byte) (Header, error) {
	var cfg image.Config
	format := "tiff"
	var err error
	if isTIFF(peek) {
		// at offsets: from a plain reader (image.DecodeConfig gives it one)
		// x/image buffers every byte up to the directory first
		cfg, err = tiff.DecodeConfig(bytes.NewReader(peek))
	} else {
		cfg, format, err = image.DecodeConfig(bytes.NewReader(peek))
	}
	if err != nil {
		return Header{}, fmt.Errorf("cannot decode image header: %v", err)
	}
	return checkConfig(cfg, format, peek)
}

func isTIFF(b []byte) bool {
	return bytes.HasPrefix(b, []byte("II*\x00")) || bytes.HasPrefix(b, []byte("MM\x00*"))
}

// withTIFFLayout prices a TIFF by the reader that will decode it: padim's
// (the image and a tile) when it reads the file, else x/image's.
func withTIFFLayout(h Header, r io.ReaderAt, size int64) Header {
	if !fastTIFF {
		return h
	}
	if tf, ok := parseTIFF(r, size); ok {
		h.layout = layout{goBytes: float64(tf.destBytes()), held: int64(tf.blockBytes())}
	}
	return h
}

// headerFrom is header, reading a TIFF at offsets from r when r reads at
// offsets (a file, bytes): its directory may lie beyond the first bytes (Go's
// and libtiff's encoders write it after the pixels).
func headerFrom(r io.Reader, peek []byte) (Header, error) {
	sr := sectionOf(r)
	if !isTIFF(peek) || sr == nil {
		return header(peek) // a TIFF from a stream: x/image reads it (DecodeImage)
	}
	cfg, err := tiff.DecodeConfig(sr)
	if err != nil {
		return Header{}, fmt.Errorf("cannot decode image header: %v", err)
	}
	h, err := checkConfig(cfg, "tiff", peek)
	if err != nil {
		return h, err
	}
	return withTIFFLayout(h, sr, sr.Size()), nil
}

// sectionOf returns r as a reader at offsets over all of it, nil if it is not one.
func sectionOf(r io.Reader) *io.SectionReader {
	ra, ok := r.(io.ReaderAt)
	var size int64
	switch s := r.(type) {
	case interface{ Size() int64 }:
		size = s.Size()
	case *os.File:
		if st, err := s.Stat(); err == nil {
			size = st.Size()
		}
	}
	if !ok || size <= 0 {
		return nil
	}
	return io.NewSectionReader(ra, 0, size)
}

func checkConfig(cfg image.Config, format string, peek []byte) (Header, error) {
	if cfg.Width <= 0 || cfg.Height <= 0 || int64(cfg.Width)*int64(cfg.Height) > MaxPixels {
		return Header{}, fmt.Errorf("%s image of %dx%d pixels is empty or larger than the %d-pixel limit", format, cfg.Width, cfg.Height, MaxPixels)
	}
	return Header{W: cfg.Width, H: cfg.Height, Format: format, layout: layoutOf(peek, format, cfg.ColorModel)}, nil
}

// DecodeReader decodes an image stream into planes.
func DecodeReader(r io.Reader) (*Planes, error) {
	img, err := DecodeImage(r)
	if err != nil {
		return nil, err
	}
	return FromImage(img), nil
}

// DecodeImage decodes an image stream, refusing from its header an image
// over MaxPixels before decoding it.
func DecodeImage(r io.Reader) (image.Image, error) {
	br := bufio.NewReaderSize(r, 1<<16)
	peek, _ := br.Peek(1 << 16)
	h, err := headerFrom(r, peek)
	if err != nil {
		return nil, err
	}
	var img image.Image
	sr := sectionOf(r)
	if kind, ok := pngReads(peek); ok && h.Format == "png" {
		var size int64
		if sr != nil {
			size = sr.Size()
		}
		img, err = decodePNGStream(br, size, h, kind)
	} else if h.Format == "tiff" && sr != nil {
		img, err = decodeTIFF(sr) // strips read at their offsets, not the whole file buffered
	} else {
		img, _, err = image.Decode(br)
	}
	if err != nil {
		return nil, fmt.Errorf("cannot decode %s image: %v", h.Format, err)
	}
	return img, nil
}

// decodeData is DecodeImage for an image held in data: a PNG that padim's
// reader takes is read from data itself, not a copy.
func decodeData(data []byte) (image.Image, error) {
	if _, ok := pngReads(data); !ok {
		return DecodeImage(bytes.NewReader(data))
	}
	h, err := header(data[:min(len(data), 1<<16)])
	if err != nil {
		return nil, err
	}
	if h.Format != "png" {
		return DecodeImage(bytes.NewReader(data))
	}
	img, err := decodePNGData(data)
	if err != nil {
		return nil, fmt.Errorf("cannot decode png image: %v", err)
	}
	return img, nil
}

// DecodeFile decodes an image file (see DecodeImage); errors name the file.
func DecodeFile(path string) (image.Image, error) {
	f, err := readfile.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	img, err := DecodeImage(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w (is it a readable PNG, JPEG, BMP, TIFF or GIF image?)", path, err)
	}
	return img, nil
}

// FromImage converts any image to planes (see rows for the values).
func FromImage(img image.Image) *Planes { return planesOf(img, 1) }

// ResizeImage converts and resamples an image to w×h planes in one pass over
// its rows, as FromImage followed by Resize would, bit for bit, without ever
// holding the image as float32 planes (12 bytes a pixel): a large photo fitted
// to the network costs its decoded size and a few rows.
func ResizeImage(img image.Image, w, h int) *Planes { return resizeImage(img, w, h, 1) }

// resizeImage is ResizeImage on threads goroutines.
func resizeImage(img image.Image, w, h, threads int) *Planes {
	b := img.Bounds()
	if b.Dx() == w && b.Dy() == h {
		return planesOf(img, threads)
	}
	return resizeRows(newRows(img), w, h, threads)
}

// Resize resamples planes to w×h with a triangle (bilinear) filter whose support
// grows with the shrink factor, so downscaling averages instead of aliasing.
func (p *Planes) Resize(w, h int) *Planes {
	if w == p.W && h == p.H {
		return &Planes{W: w, H: h, Pix: append([]float32(nil), p.Pix...)}
	}
	cw := weights(p.W, w)
	ch := weights(p.H, h)
	out := &Planes{W: w, H: h, Pix: make([]float32, 3*w*h)}
	tmp := make([]float32, p.H*w)
	for c := 0; c < 3; c++ {
		src := p.Pix[c*p.W*p.H : (c+1)*p.W*p.H]
		for y := 0; y < p.H; y++ {
			row := src[y*p.W : (y+1)*p.W]
			for x, wt := range cw {
				var s float32
				for k, v := range wt.w {
					s += v * row[wt.first+k]
				}
				tmp[y*w+x] = s
			}
		}
		dst := out.Pix[c*w*h : (c+1)*w*h]
		for y, wt := range ch {
			o := dst[y*w : (y+1)*w]
			for k, v := range wt.w {
				in := tmp[(wt.first+k)*w : (wt.first+k+1)*w]
				for x := range o {
					o[x] += v * in[x]
				}
			}
		}
	}
	return out
}

type filterWeights struct {
	first int
	w     []float32
}

func weights(in, out int) []filterWeights { return weightsOver(in, float64(in), out) }

// weightsOver resamples in samples that span span input units (in, or less
// when the last sample is partly beyond the edge, as in a JPEG decoded at a
// fraction of its size) to out samples spanning the same extent.
func weightsOver(in int, span float64, out int) []filterWeights {
	scale := span / float64(out)
	support := math.Max(scale, 1)
	ws := make([]filterWeights, out)
	for o := range ws {
		center := (float64(o) + 0.5) * scale
		lo := max(int(math.Floor(center-support)), 0)
		hi := min(int(math.Ceil(center+support)), in)
		var w []float32
		var sum float64
		first := -1
		for i := lo; i < hi; i++ {
			t := 1 - math.Abs((float64(i)+0.5-center)/support)
			if t <= 0 {
				if first < 0 {
					continue
				}
				break
			}
			if first < 0 {
				first = i
			}
			w = append(w, float32(t))
			sum += t
		}
		if first < 0 { // cannot happen for in ≥ 1, but stay safe
			first, w, sum = min(int(center), in-1), []float32{1}, 1
		}
		for i := range w {
			w[i] = float32(float64(w[i]) / sum)
		}
		ws[o] = filterWeights{first, w}
	}
	return ws
}

// Crop returns the w×h window at (x, y).
func (p *Planes) Crop(x, y, w, h int) *Planes {
	out := &Planes{W: w, H: h, Pix: make([]float32, 3*w*h)}
	for c := 0; c < 3; c++ {
		for r := 0; r < h; r++ {
			copy(out.Pix[(c*h+r)*w:(c*h+r+1)*w], p.Pix[c*p.W*p.H+(y+r)*p.W+x:])
		}
	}
	return out
}
