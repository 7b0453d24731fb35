package imageio

import (
	"bufio"
	"compress/zlib"
	"encoding/binary"
	"errors"
	"image"
	"io"

	"golang.org/x/image/tiff"
	"golang.org/x/image/tiff/lzw"

	"github.com/padim/padim/detector/imageio/libdeflate"
)

// padim's TIFF reader: strips and tiles, uncompressed, PackBits, LZW or
// Deflate, horizontal predictor, either byte order, 8 or 16 bits, grey
// (BlackIsZero or WhiteIsZero), RGB and RGBA, read block by block straight
// into the pixels of the image golang.org/x/image/tiff returns for the same
// file: the same type, the same bytes. x/image converts pixel by pixel
// through Set calls (4-5× PIL's time on a 5 MP grey frame); this reader
// copies rows, and an uncompressed strip is read straight into the image;
// Deflate blocks are inflated by libdeflate in a build with that tag.
//
// It reads what x/image reads, with x/image's rules (the first value of a tag,
// a missing Compression as none, a missing Photometric as WhiteIsZero,
// PlanarConfiguration ignored), and declines — x/image then decodes the file,
// so its errors and its pixels stay the answer — whatever it does not read
// (palettes, 1-bit, CCITT, JPEG) and any file it finds wrong (short data, bad
// offsets, a stream error anywhere within the bytes x/image would read). It
// holds the image and, for tiles, one tile.

// tiffMode is how the samples become the image.
type tiffMode uint8

const (
	tiffGray       tiffMode = iota // *image.Gray or *image.Gray16
	tiffGrayInvert                 // WhiteIsZero: the same, inverted
	tiffRGB                        // *image.RGBA or *image.RGBA64, opaque
	tiffRGBA                       // associated alpha: *image.RGBA or *image.RGBA64
	tiffNRGBA                      // unassociated alpha: *image.NRGBA or *image.NRGBA64
)

// tiffFile is what padim's reader needs of a TIFF's first directory.
type tiffFile struct {
	ra              io.ReaderAt
	size            int64
	order           binary.ByteOrder
	w, h            int
	bps             int // bits per sample: 8 or 16
	spp             int // samples per pixel: 1, 3 or 4
	mode            tiffMode
	comp            uint
	predictor       bool
	tiled           bool
	bw, bh          int // block (strip or tile) size
	across, down    int
	offsets, counts []uint
}

// TIFF tags, types and compressions (TIFF 6.0).
const (
	tagImageWidth    = 256
	tagImageLength   = 257
	tagBitsPerSample = 258
	tagCompression   = 259
	tagPhotometric   = 262
	tagFillOrder     = 266
	tagStripOffsets  = 273
	tagRowsPerStrip  = 278
	tagStripCounts   = 279
	tagT4Options     = 292
	tagT6Options     = 293
	tagPredictor     = 317
	tagColorMap      = 320
	tagTileWidth     = 322
	tagTileLength    = 323
	tagTileOffsets   = 324
	tagTileCounts    = 325
	tagExtraSamples  = 338
	tagSampleFormat  = 339

	compNone       = 1
	compLZW        = 5
	compDeflate    = 8
	compPackBits   = 32773
	compDeflateOld = 32946
)

// fastTIFF switches padim's TIFF reader on (tests and benchmarks compare it
// with x/image's by switching it off).
var fastTIFF = true

// decodeTIFF decodes a TIFF read at offsets: padim's reader, or x/image's
// where it declines.
func decodeTIFF(sr *io.SectionReader) (image.Image, error) {
	if fastTIFF {
		if tf, ok := parseTIFF(sr, sr.Size()); ok {
			if img, err := tf.decode(); err == nil {
				return img, nil
			}
		}
	}
	return tiff.Decode(sr)
}

// errDecline is padim's TIFF reader leaving a file to x/image's.
var errDecline = errors.New("tiff: left to x/image")

// tiffEntry is one directory entry.
type tiffEntry [12]byte

// values reads an entry's first max values (BYTE, SHORT or LONG; x/image
// refuses other types on the tags it reads).
func (tf *tiffFile) values(e tiffEntry, max int) ([]uint, bool) {
	o := tf.order
	typ := o.Uint16(e[2:4])
	var size uint32
	switch typ {
	case 1:
		size = 1
	case 3:
		size = 2
	case 4:
		size = 4
	default:
		return nil, false
	}
	count := o.Uint32(e[4:8])
	if count > (1<<31-1)/size {
		return nil, false
	}
	n := min(int(count), max)
	var raw []byte
	if count*size <= 4 {
		raw = e[8 : 8+count*size]
	} else {
		off := int64(o.Uint32(e[8:12]))
		if off+int64(n)*int64(size) > tf.size {
			return nil, false
		}
		raw = make([]byte, n*int(size))
		if _, err := tf.ra.ReadAt(raw, off); err != nil && !(err == io.EOF && len(raw) == 0) {
			return nil, false
		}
	}
	v := make([]uint, n)
	for i := range v {
		switch size {
		case 1:
			v[i] = uint(raw[i])
		case 2:
			v[i] = uint(o.Uint16(raw[2*i:]))
		case 4:
			v[i] = uint(o.Uint32(raw[4*i:]))
		}
	}
	return v, true
}

// parseTIFF reads the first directory of a TIFF of size bytes. ok is false
// for what padim's reader leaves to x/image's.
func parseTIFF(ra io.ReaderAt, size int64) (tf *tiffFile, ok bool) {
	tf = &tiffFile{ra: ra, size: size}
	var hdr [8]byte
	if size < 8 {
		return nil, false
	}
	if _, err := ra.ReadAt(hdr[:], 0); err != nil {
		return nil, false
	}
	switch string(hdr[:4]) {
	case "II*\x00":
		tf.order = binary.LittleEndian
	case "MM\x00*":
		tf.order = binary.BigEndian
	default:
		return nil, false
	}
	ifd := int64(tf.order.Uint32(hdr[4:8]))
	var cnt [2]byte
	if ifd+2 > size {
		return nil, false
	}
	if _, err := ra.ReadAt(cnt[:], ifd); err != nil {
		return nil, false
	}
	n := int(tf.order.Uint16(cnt[:]))
	if ifd+2+12*int64(n) > size {
		return nil, false
	}
	dir := make([]byte, 12*n)
	if _, err := ra.ReadAt(dir, ifd+2); err != nil && !(err == io.EOF && n == 0) {
		return nil, false
	}
	small := map[int][]uint{}
	blocks := map[int]tiffEntry{}
	prev := -1
	for i := 0; i < n; i++ {
		var e tiffEntry
		copy(e[:], dir[12*i:])
		tag := int(tf.order.Uint16(e[:2]))
		if tag <= prev { // x/image refuses unsorted directories
			return nil, false
		}
		prev = tag
		switch tag {
		case tagBitsPerSample, tagExtraSamples, tagPhotometric, tagCompression, tagPredictor, tagRowsPerStrip,
			tagTileWidth, tagTileLength, tagImageLength, tagImageWidth, tagFillOrder, tagT4Options, tagT6Options:
			v, ok := tf.values(e, 16) // x/image's limit for these tags
			if !ok {
				return nil, false
			}
			small[tag] = v
		case tagSampleFormat:
			v, ok := tf.values(e, 16)
			if !ok {
				return nil, false
			}
			for _, f := range v {
				if f != 1 { // not unsigned integers
					return nil, false
				}
			}
		case tagStripOffsets, tagStripCounts, tagTileOffsets, tagTileCounts:
			blocks[tag] = e
		case tagColorMap:
			return nil, false // paletted: x/image's
		}
	}
	first := func(tag int) uint {
		if v := small[tag]; len(v) > 0 {
			return v[0]
		}
		return 0
	}
	w, h := first(tagImageWidth), first(tagImageLength)
	if w == 0 || h == 0 || uint64(w)*uint64(h) > MaxPixels {
		return nil, false
	}
	tf.w, tf.h = int(w), int(h)
	bps := small[tagBitsPerSample]
	if len(bps) == 0 {
		return nil, false // 1 bit a sample by default
	}
	tf.bps, tf.spp = int(bps[0]), len(bps)
	if tf.bps != 8 && tf.bps != 16 {
		return nil, false
	}
	switch first(tagPhotometric) {
	case 2: // RGB
		for _, b := range bps {
			if int(b) != tf.bps {
				return nil, false
			}
		}
		switch {
		case tf.spp == 3:
			tf.mode = tiffRGB
		case tf.spp == 4 && first(tagExtraSamples) == 1:
			tf.mode = tiffRGBA
		case tf.spp == 4 && first(tagExtraSamples) == 2:
			tf.mode = tiffNRGBA
		default:
			return nil, false
		}
	case 0:
		tf.mode = tiffGrayInvert
	case 1:
		tf.mode = tiffGray
	default:
		return nil, false
	}
	if tf.mode <= tiffGrayInvert && tf.spp != 1 {
		return nil, false
	}
	switch tf.comp = first(tagCompression); tf.comp {
	case 0, compNone, compLZW, compDeflate, compDeflateOld, compPackBits:
	default:
		return nil, false
	}
	tf.predictor = first(tagPredictor) == 2
	offTag, cntTag := tagStripOffsets, tagStripCounts
	tf.bw, tf.bh, tf.across = tf.w, tf.h, 1
	if tw := first(tagTileWidth); tw != 0 {
		th := first(tagTileLength)
		if tw < 8 || th < 8 || tw > 1<<30 || th > 1<<30 {
			return nil, false
		}
		if (int(tw)-tf.w > 16 || int(th)-tf.h > 16) && (tw > 1024 || th > 1024) {
			return nil, false // x/image refuses tiles this much larger than the image
		}
		tf.tiled, tf.bw, tf.bh = true, int(tw), int(th)
		tf.across = (tf.w + tf.bw - 1) / tf.bw
		offTag, cntTag = tagTileOffsets, tagTileCounts
	} else if v := first(tagRowsPerStrip); v > 0 && v < h {
		tf.bh = int(v)
	}
	tf.down = (tf.h + tf.bh - 1) / tf.bh
	nb := tf.across * tf.down
	e1, ok1 := blocks[offTag]
	e2, ok2 := blocks[cntTag]
	if !ok1 || !ok2 {
		return nil, false
	}
	if tf.offsets, ok = tf.values(e1, nb); !ok || len(tf.offsets) < nb {
		return nil, false
	}
	if tf.counts, ok = tf.values(e2, nb); !ok || len(tf.counts) < nb {
		return nil, false
	}
	return tf, true
}

// fileBytes is the bytes of a pixel in the file, destBytes in the image.
func (tf *tiffFile) fileBytes() int { return tf.spp * tf.bps / 8 }
func (tf *tiffFile) destBytes() int {
	if tf.mode <= tiffGrayInvert {
		return tf.bps / 8
	}
	return 4 * tf.bps / 8
}

// blockBytes is what the reader holds beside the image: one tile, and with
// libdeflate the largest Deflate block's compressed bytes.
func (tf *tiffFile) blockBytes() int {
	n := 0
	if tf.tiled {
		n = tf.bw * tf.bh * tf.fileBytes()
	}
	return n + tf.deflateHeld()
}

// deflateHeld is the buffer of compressed bytes libdeflate inflates from:
// the largest Deflate block (within the file), or 0.
func (tf *tiffFile) deflateHeld() int {
	if !libdeflate.Available || (tf.comp != compDeflate && tf.comp != compDeflateOld) {
		return 0
	}
	m := 0
	for _, c := range tf.counts[:tf.across*tf.down] {
		m = max(m, int(min(int64(c), tf.size)))
	}
	return m
}

// decode reads the image; errDecline (or a read error) leaves it to x/image.
func (tf *tiffFile) decode() (image.Image, error) {
	r := image.Rect(0, 0, tf.w, tf.h)
	var img image.Image
	var pix []byte
	switch {
	case tf.mode <= tiffGrayInvert && tf.bps == 8:
		m := image.NewGray(r)
		img, pix = m, m.Pix
	case tf.mode <= tiffGrayInvert:
		m := image.NewGray16(r)
		img, pix = m, m.Pix
	case tf.mode == tiffNRGBA && tf.bps == 8:
		m := image.NewNRGBA(r)
		img, pix = m, m.Pix
	case tf.mode == tiffNRGBA:
		m := image.NewNRGBA64(r)
		img, pix = m, m.Pix
	case tf.bps == 8:
		m := image.NewRGBA(r)
		img, pix = m, m.Pix
	default:
		m := image.NewRGBA64(r)
		img, pix = m, m.Pix
	}
	fb, db := tf.fileBytes(), tf.destBytes()
	stride := tf.w * db
	lim := int64(tf.bw) * int64(tf.bh) * 8 // x/image's bound on a block's bytes
	var tile, comp []byte
	if tf.tiled {
		tile = make([]byte, tf.bw*tf.bh*fb)
	}
	if n := tf.deflateHeld(); n > 0 {
		comp = make([]byte, n)
	}
	for j := 0; j < tf.down; j++ {
		for i := 0; i < tf.across; i++ {
			blkW, blkH := tf.bw, tf.bh
			if !tf.tiled && j == tf.down-1 && tf.h%tf.bh != 0 {
				blkH = tf.h % tf.bh
			}
			x0, y0 := i*tf.bw, j*tf.bh
			x1, y1 := min(x0+blkW, tf.w), min(y0+blkH, tf.h)
			need := blkW * blkH * fb
			var buf []byte
			if tf.tiled {
				buf = tile[:need]
			} else {
				// a strip lands at the end of its rows and is widened forward in place
				region := pix[y0*stride : y1*stride]
				buf = region[len(region)-need:]
			}
			k := j*tf.across + i
			if err := tf.readBlock(int64(tf.offsets[k]), int64(tf.counts[k]), lim, buf, comp); err != nil {
				return nil, err
			}
			if tf.predictor {
				tf.unpredict(buf, blkW*fb, fb)
			}
			if !tf.tiled {
				tf.convert(pix[y0*stride:y1*stride], buf, (y1-y0)*tf.w)
				continue
			}
			for y := y0; y < y1; y++ {
				src := buf[(y-y0)*blkW*fb:][:(x1-x0)*fb]
				tf.convert(pix[y*stride+x0*db:][:(x1-x0)*db], src, x1-x0)
			}
		}
	}
	return img, nil
}

// readBlock reads a block's n bytes at off, decompressed, into buf (all of
// it, or an error), and reads on through the stream as x/image does (up to
// lim decompressed bytes), so a stream error it would meet is one here too.
// comp, when not nil, holds a Deflate block's compressed bytes for
// libdeflate: a stream that inflates to exactly buf is read whole (x/image
// too reads it to its end); one with more data goes the streamed way.
func (tf *tiffFile) readBlock(off, n, lim int64, buf, comp []byte) error {
	if off < 0 || n < 0 || off+n > tf.size && n > 0 {
		return errDecline
	}
	sec := io.NewSectionReader(tf.ra, off, n)
	var r io.Reader
	switch tf.comp {
	case 0, compNone:
		if n > lim || n < int64(len(buf)) {
			return errDecline
		}
		_, err := tf.ra.ReadAt(buf, off)
		if err != nil && !(err == io.EOF && len(buf) == 0) {
			return err
		}
		return nil
	case compLZW:
		lr := lzw.NewReader(sec, lzw.MSB, 8)
		defer lr.Close()
		r = lr
	case compDeflate, compDeflateOld:
		if comp != nil && n <= int64(len(comp)) {
			c := comp[:n]
			if _, err := tf.ra.ReadAt(c, off); err != nil && !(err == io.EOF && n == 0) {
				return err
			}
			_, err := libdeflate.Inflate(buf, c)
			if err != libdeflate.ErrSize {
				return err
			}
		}
		zr, err := zlib.NewReader(sec)
		if err != nil {
			return err
		}
		defer zr.Close()
		r = zr
	case compPackBits:
		return unpackBitsInto(bufio.NewReaderSize(sec, min(max(int(n), 16), 64<<10)), buf, lim)
	default:
		return errDecline
	}
	l := &io.LimitedReader{R: r, N: lim}
	if _, err := io.ReadFull(l, buf); err != nil {
		return err
	}
	_, err := io.Copy(io.Discard, l)
	return err
}

// unpackBitsInto decodes PackBits data into buf, then through to the end
// counting, with x/image's rules: a truncated run is an error, and so is more
// than lim bytes in all.
func unpackBitsInto(br *bufio.Reader, buf []byte, lim int64) error {
	var lit [128]byte
	var total int64
	for {
		b, err := br.ReadByte()
		if err == io.EOF {
			if total < int64(len(buf)) {
				return errDecline
			}
			return nil
		}
		if err != nil {
			return err
		}
		code := int(int8(b))
		var run []byte
		switch {
		case code >= 0:
			if _, err := io.ReadFull(br, lit[:code+1]); err != nil {
				return err
			}
			run = lit[:code+1]
		case code == -128:
			continue
		default:
			v, err := br.ReadByte()
			if err != nil {
				return err
			}
			run = lit[:1-code]
			for i := range run {
				run[i] = v
			}
		}
		if total < int64(len(buf)) {
			copy(buf[total:], run)
		}
		total += int64(len(run))
		if total > lim {
			return errDecline
		}
	}
}

// unpredict undoes the horizontal predictor on rows of rowBytes bytes, pixels
// of px bytes: 8-bit samples add bytewise, 16-bit ones as words in the file's
// byte order (x/image's arithmetic).
func (tf *tiffFile) unpredict(buf []byte, rowBytes, px int) {
	for r := 0; r+rowBytes <= len(buf); r += rowBytes {
		row := buf[r : r+rowBytes]
		if tf.bps == 8 {
			for k := px; k < len(row); k++ {
				row[k] += row[k-px]
			}
			continue
		}
		o := tf.order
		for k := px; k+2 <= len(row); k += 2 {
			o.PutUint16(row[k:], o.Uint16(row[k:])+o.Uint16(row[k-px:]))
		}
	}
}

// convert writes n pixels of file samples src as the image's pixels dst.
// dst may start before src in the same memory (a strip read into the end of
// its rows): pixel i is read before it is written, and its destination never
// reaches a later pixel's source.
func (tf *tiffFile) convert(dst, src []byte, n int) {
	o := tf.order
	be := o == binary.ByteOrder(binary.BigEndian)
	switch {
	case tf.mode <= tiffGrayInvert && tf.bps == 8:
		dst, src = dst[:n], src[:n]
		if tf.mode == tiffGrayInvert {
			for i, v := range src {
				dst[i] = 255 - v
			}
		} else {
			copy(dst, src)
		}
	case tf.mode <= tiffGrayInvert:
		dst, src = dst[:2*n], src[:2*n]
		if be && tf.mode == tiffGray {
			copy(dst, src)
			return
		}
		var inv uint16
		if tf.mode == tiffGrayInvert {
			inv = 0xffff
		}
		i := 0
		if !be { // four samples at a time: swap the bytes of each word
			inv64 := uint64(inv) * 0x0001000100010001
			for ; i+4 <= n; i += 4 {
				v := binary.LittleEndian.Uint64(src[2*i:])
				v = (v&0x00ff00ff00ff00ff)<<8 | (v>>8)&0x00ff00ff00ff00ff
				binary.LittleEndian.PutUint64(dst[2*i:], v^inv64)
			}
		}
		for ; i < n; i++ {
			binary.BigEndian.PutUint16(dst[2*i:], inv^o.Uint16(src[2*i:]))
		}
	case tf.mode == tiffRGB && tf.bps == 8:
		dst, src = dst[:4*n], src[:3*n]
		for i := 0; i < n; i++ {
			s := src[3*i : 3*i+3 : 3*i+3]
			r, g, b := s[0], s[1], s[2]
			d := dst[4*i : 4*i+4 : 4*i+4]
			d[0], d[1], d[2], d[3] = r, g, b, 0xff
		}
	case tf.mode == tiffRGB:
		dst, src = dst[:8*n], src[:6*n]
		for i := 0; i < n; i++ {
			s := src[6*i : 6*i+6 : 6*i+6]
			r, g, b := o.Uint16(s[0:]), o.Uint16(s[2:]), o.Uint16(s[4:])
			d := dst[8*i : 8*i+8 : 8*i+8]
			binary.BigEndian.PutUint16(d[0:], r)
			binary.BigEndian.PutUint16(d[2:], g)
			binary.BigEndian.PutUint16(d[4:], b)
			d[6], d[7] = 0xff, 0xff
		}
	case tf.bps == 8: // RGBA, NRGBA: the bytes as they are
		copy(dst[:4*n], src[:4*n])
	default:
		dst, src = dst[:8*n], src[:8*n]
		if be {
			copy(dst, src)
			return
		}
		for i := 0; i < 4*n; i++ {
			binary.BigEndian.PutUint16(dst[2*i:], o.Uint16(src[2*i:]))
		}
	}
}
