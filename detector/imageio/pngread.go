package imageio

import (
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"hash/crc32"
	"image"
	"image/png"
	"io"

	"github.com/padim/padim/detector/imageio/libdeflate"
)

// padim's PNG reader: non-interlaced 8- and 16-bit grey, grey+alpha, RGB and
// RGBA without a tRNS chunk (what cameras write), from the whole file in
// memory. It inflates all the pixel data at once (with libdeflate in a build
// with the libdeflate tag, else Go's compress/zlib), unfilters it in place and
// widens each row into the image image/png returns for the same file: the
// same type, the same bytes. image/png inflates and unfilters a row at a
// time through compress/flate and sets 16-bit and grey+alpha pixels one Set
// call at a time.
//
// It reads what image/png reads, checking what it checks (chunk order,
// every chunk's CRC, the IHDR fields, the zlib checksum, no pixel data
// missing and none extra), and declines — image/png then decodes the file,
// so its errors stay the answer — whatever it does not read (interlaced,
// paletted, fewer than 8 bits, transparency) and anything it finds wrong, or
// stricter than image/png: the zlib stream must end exactly at the end of
// the consecutive IDAT chunks that hold it.

// fastPNG switches padim's PNG reader on (tests and benchmarks compare it
// with image/png by switching it off).
var fastPNG = true

// maxPNGRead bounds the bytes read of a PNG for padim's reader: its raw
// pixel data and a little more (a longer file is read up to there, then
// image/png reads it as a stream).
func maxPNGRead(w, h int, kind pngKind) int {
	raw := h * (1 + w*kind.src)
	return raw + raw/64 + 1<<20
}

// decodePNGStream reads a PNG that padim's reader takes (br's next bytes;
// size its length when known, else 0) up to maxPNGRead and decodes it, or
// leaves it to image/png with every byte read so far.
func decodePNGStream(br io.Reader, size int64, h Header, kind pngKind) (image.Image, error) {
	lim := maxPNGRead(h.W, h.H, kind)
	c := 64 << 10
	if size > 0 {
		c = int(min(size+1, int64(lim))) // +1: the read that meets the end needs no growth
	}
	data := make([]byte, 0, c)
	for len(data) < lim {
		if len(data) == cap(data) {
			data = append(data, 0)[:len(data)]
		}
		n, err := br.Read(data[len(data):min(cap(data), lim)])
		data = data[:len(data)+n]
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
	}
	if img, err := decodePNG(data); err == nil {
		return img, nil
	}
	return png.Decode(io.MultiReader(bytes.NewReader(data), br))
}

// decodePNGData decodes a PNG held in data: padim's reader, or image/png
// where it declines.
func decodePNGData(data []byte) (image.Image, error) {
	if img, err := decodePNG(data); err == nil {
		return img, nil
	}
	return png.Decode(bytes.NewReader(data))
}

// pngInflate inflates the zlib stream at the start of src into all of dst
// and returns the bytes of src it took: libdeflate's where built, else Go's.
func pngInflate(dst, src []byte) (int, error) {
	if libdeflate.Available {
		return libdeflate.Inflate(dst, src)
	}
	br := bytes.NewReader(src) // a ByteReader: flate reads no further than the stream
	zr, err := zlib.NewReader(br)
	if err != nil {
		return 0, err
	}
	if _, err := io.ReadFull(zr, dst); err != nil {
		return 0, err
	}
	var one [1]byte
	if n, err := zr.Read(one[:]); n != 0 || err != io.EOF { // more data, or a bad checksum
		return 0, errDecline
	}
	return len(src) - br.Len(), nil
}

// pngKind is a colour type and depth padim's reader reads.
type pngKind struct {
	src, dst int // bytes a pixel in the file and in image/png's image
}

var pngKinds = map[[2]byte]pngKind{ // {depth, colour type}
	{8, 0}: {1, 1}, {8, 2}: {3, 4}, {8, 4}: {2, 4}, {8, 6}: {4, 4},
	{16, 0}: {2, 2}, {16, 2}: {6, 8}, {16, 4}: {4, 8}, {16, 6}: {8, 8},
}

// pngReads says from a PNG's first bytes (its IHDR) whether padim's reader
// takes it, and its kind. A file it takes may still be left to image/png
// later (a tRNS chunk, damaged data).
func pngReads(peek []byte) (kind pngKind, ok bool) {
	if !fastPNG || len(peek) < 29 || string(peek[12:16]) != "IHDR" || peek[28] != 0 {
		return pngKind{}, false
	}
	kind, ok = pngKinds[[2]byte{peek[24], peek[25]}]
	return kind, ok
}

// decodePNG decodes a PNG held whole in data with padim's reader;
// errDecline (or an inflate error) leaves it to image/png.
func decodePNG(data []byte) (image.Image, error) {
	const sig = "\x89PNG\r\n\x1a\n"
	if len(data) < len(sig) || string(data[:len(sig)]) != sig {
		return nil, errDecline
	}
	const (
		start = iota
		seenIHDR
		seenPLTE
		seenIDAT
	)
	stage := start
	var w, h int
	var kind pngKind
	var depth, ctype byte
	var img image.Image
	pos := len(sig)
	for {
		if pos+8 > len(data) {
			return nil, errDecline // image/png: unexpected EOF
		}
		length := binary.BigEndian.Uint32(data[pos:])
		typ := string(data[pos+4 : pos+8])
		if length > 0x7fffffff || int64(pos)+12+int64(length) > int64(len(data)) {
			return nil, errDecline
		}
		body := data[pos+8 : pos+8+int(length)]
		if crc32.ChecksumIEEE(data[pos+4:pos+8+int(length)]) != binary.BigEndian.Uint32(data[pos+8+int(length):]) {
			return nil, errDecline
		}
		next := pos + 12 + int(length)
		switch typ {
		case "IHDR":
			if stage != start || length != 13 {
				return nil, errDecline
			}
			stage = seenIHDR
			if body[10] != 0 || body[11] != 0 || body[12] != 0 { // compression, filter, interlace
				return nil, errDecline
			}
			w32, h32 := int32(binary.BigEndian.Uint32(body[0:])), int32(binary.BigEndian.Uint32(body[4:]))
			if w32 <= 0 || h32 <= 0 || int64(w32)*int64(h32) > MaxPixels {
				return nil, errDecline
			}
			w, h = int(w32), int(h32)
			depth, ctype = body[8], body[9]
			var ok bool
			if kind, ok = pngKinds[[2]byte{depth, ctype}]; !ok {
				return nil, errDecline
			}
		case "PLTE":
			// a suggested palette, ignored, for the truecolour types only
			if stage != seenIHDR || (ctype != 2 && ctype != 6) || length%3 != 0 || length == 0 || length > 3*256 {
				return nil, errDecline
			}
			stage = seenPLTE
		case "tRNS":
			return nil, errDecline
		case "IDAT":
			if stage == seenIDAT {
				break // image/png ignores IDAT chunks after the image's
			}
			if stage != seenIHDR && stage != seenPLTE {
				return nil, errDecline
			}
			stage = seenIDAT
			// the pixel data: this chunk and the IDAT chunks right after it,
			// gathered into one buffer when there are several
			end, total, chunks := next, len(body), 1
			for end+8 <= len(data) && string(data[end+4:end+8]) == "IDAT" {
				l := binary.BigEndian.Uint32(data[end:])
				if l > 0x7fffffff || int64(end)+12+int64(l) > int64(len(data)) {
					return nil, errDecline
				}
				if crc32.ChecksumIEEE(data[end+4:end+8+int(l)]) != binary.BigEndian.Uint32(data[end+8+int(l):]) {
					return nil, errDecline
				}
				if l > 0 {
					total += int(l)
					chunks++
				}
				end += 12 + int(l)
			}
			z := body
			if chunks > 1 {
				z = make([]byte, 0, total)
				for p := pos; p < end; {
					l := int(binary.BigEndian.Uint32(data[p:]))
					z = append(z, data[p+8:p+8+l]...)
					p += 12 + l
				}
			}
			next = end
			var err error
			if img, err = unfilterPNG(z, w, h, kind, depth, ctype); err != nil {
				return nil, err
			}
		case "IEND":
			if stage != seenIDAT || length != 0 {
				return nil, errDecline
			}
			return img, nil
		}
		pos = next
	}
}

// unfilterPNG inflates the pixel data z of a w×h image into the end of the
// image's buffer and unfilters it row by row into the image's pixels.
func unfilterPNG(z []byte, w, h int, kind pngKind, depth, ctype byte) (image.Image, error) {
	rb := w * kind.src // a row's bytes in the file, after its filter byte
	raw := h * (1 + rb)
	dest := h * w * kind.dst
	buf := make([]byte, max(raw, dest))
	tail := buf[len(buf)-raw:]
	used, err := pngInflate(tail, z)
	if err != nil {
		return nil, err
	}
	if used != len(z) {
		return nil, errDecline
	}
	r := image.Rect(0, 0, w, h)
	pix := buf[:dest:dest]
	var img image.Image
	switch {
	case depth == 8 && ctype == 0:
		img = &image.Gray{Pix: pix, Stride: w, Rect: r}
	case depth == 8 && ctype == 2:
		img = &image.RGBA{Pix: pix, Stride: 4 * w, Rect: r}
	case depth == 8:
		img = &image.NRGBA{Pix: pix, Stride: 4 * w, Rect: r}
	case ctype == 0:
		img = &image.Gray16{Pix: pix, Stride: 2 * w, Rect: r}
	case ctype == 2:
		img = &image.RGBA64{Pix: pix, Stride: 8 * w, Rect: r}
	default:
		img = &image.NRGBA64{Pix: pix, Stride: 8 * w, Rect: r}
	}
	bpp := kind.src
	prev := make([]byte, rb) // the row above, unfiltered (zeros above the first)
	db := w * kind.dst
	for y := 0; y < h; y++ {
		row := tail[y*(1+rb) : (y+1)*(1+rb)]
		cur := row[1:]
		switch row[0] {
		case 0:
		case 1:
			for i := bpp; i < len(cur); i++ {
				cur[i] += cur[i-bpp]
			}
		case 2:
			for i, p := range prev {
				cur[i] += p
			}
		case 3:
			for i := 0; i < bpp; i++ {
				cur[i] += prev[i] / 2
			}
			for i := bpp; i < len(cur); i++ {
				cur[i] += uint8((int(cur[i-bpp]) + int(prev[i])) / 2)
			}
		case 4:
			unpaeth(cur, prev, bpp)
		default:
			return nil, errDecline // image/png: bad filter type
		}
		// The row becomes the one above the next; the image's row (which may
		// overlap this one in buf) is written from that copy.
		copy(prev, cur)
		widenPNGRow(pix[y*db:(y+1)*db], prev, depth, ctype)
	}
	return img, nil
}

// unpaeth undoes the Paeth filter on cur, with prev the row above.
func unpaeth(cur, prev []byte, bpp int) {
	for i := 0; i < bpp; i++ {
		cur[i] += prev[i] // a and c are zero left of the first pixel
	}
	for i := bpp; i < len(cur); i++ {
		a, b, c := int(cur[i-bpp]), int(prev[i]), int(prev[i-bpp])
		pa, pb := b-c, a-c
		pc := pa + pb
		pa, pb, pc = iabs(pa), iabs(pb), iabs(pc)
		switch {
		case pa <= pb && pa <= pc:
		case pb <= pc:
			a = b
		default:
			a = c
		}
		cur[i] += uint8(a)
	}
}

func iabs(x int) int {
	m := x >> 63
	return (x ^ m) - m
}

// widenPNGRow writes one unfiltered row src as image/png's pixels dst.
func widenPNGRow(dst, src []byte, depth, ctype byte) {
	switch {
	case depth == 8 && ctype == 2: // RGB → RGBA, opaque
		n := len(src) / 3
		dst, src = dst[:4*n], src[:3*n]
		for x := 0; x < n; x++ {
			s, d := src[3*x:3*x+3:3*x+3], dst[4*x:4*x+4:4*x+4]
			d[0], d[1], d[2], d[3] = s[0], s[1], s[2], 0xff
		}
	case depth == 8 && ctype == 4: // grey+alpha → NRGBA
		n := len(src) / 2
		dst, src = dst[:4*n], src[:2*n]
		for x := 0; x < n; x++ {
			s, d := src[2*x:2*x+2:2*x+2], dst[4*x:4*x+4:4*x+4]
			d[0], d[1], d[2], d[3] = s[0], s[0], s[0], s[1]
		}
	case depth == 16 && ctype == 2: // RGB → RGBA64, opaque
		n := len(src) / 6
		dst, src = dst[:8*n], src[:6*n]
		for x := 0; x < n; x++ {
			s, d := src[6*x:6*x+6:6*x+6], dst[8*x:8*x+8:8*x+8]
			copy(d, s)
			d[6], d[7] = 0xff, 0xff
		}
	case depth == 16 && ctype == 4: // grey+alpha → NRGBA64
		n := len(src) / 4
		dst, src = dst[:8*n], src[:4*n]
		for x := 0; x < n; x++ {
			s, d := src[4*x:4*x+4:4*x+4], dst[8*x:8*x+8:8*x+8]
			d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7] = s[0], s[1], s[0], s[1], s[0], s[1], s[2], s[3]
		}
	default: // grey, RGBA, 8 or 16 bits: the bytes as they are (big-endian, as the image)
		copy(dst, src)
	}
}
