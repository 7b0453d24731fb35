package imageio

import (
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"fmt"
	"image"
	"image/color"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"golang.org/x/image/tiff"
)

// tiffOpts says how writeTIFF lays a TIFF out.
type tiffOpts struct {
	order      binary.ByteOrder
	comp       uint // compNone, compLZW, compDeflate, compPackBits (0: none, tag left out)
	predictor  bool
	rows       int // rows a strip (0: one strip)
	tw, th     int // tile size (0: strips)
	invert     bool
	extra      int    // ExtraSamples of a 4-sample RGB image: 1 associated, 2 unassociated
	noPhotoTag bool   // leave PhotometricInterpretation out (x/image reads WhiteIsZero)
	blockData  []byte // when set, every block's bytes (as compressed)
}

// writeTIFF encodes samples (spp samples of bps bits a pixel, w×h, row-major,
// values as the file holds them) as a TIFF laid out as o says: blocks first,
// the directory after them (as Go's and libtiff's encoders often do).
func writeTIFF(t testing.TB, w, h, spp, bps int, samples []uint16, o tiffOpts) []byte {
	t.Helper()
	fb := spp * bps / 8
	bw, bh := w, h
	if o.tw > 0 {
		bw, bh = o.tw, o.th
	} else if o.rows > 0 {
		bh = o.rows
	}
	across, down := (w+bw-1)/bw, (h+bh-1)/bh
	var out bytes.Buffer
	out.Write(make([]byte, 8))
	var offs, counts []uint32
	for j := 0; j < down; j++ {
		for i := 0; i < across; i++ {
			bwi, bhi := bw, bh
			if o.tw == 0 && j == down-1 && h%bh != 0 {
				bhi = h % bh
			}
			blk := make([]byte, bwi*bhi*fb)
			for y := 0; y < bhi; y++ {
				for x := 0; x < bwi; x++ {
					ix, iy := i*bw+x, j*bh+y
					if ix >= w || iy >= h {
						continue // tile padding: zeros
					}
					for s := 0; s < spp; s++ {
						v := samples[(iy*w+ix)*spp+s]
						p := blk[(y*bwi+x)*fb+s*bps/8:]
						if bps == 8 {
							p[0] = uint8(v)
						} else {
							o.order.PutUint16(p, v)
						}
					}
				}
			}
			if o.predictor { // horizontal differencing, right to left
				row := bwi * fb
				for r := 0; r < bhi; r++ {
					rb := blk[r*row : (r+1)*row]
					if bps == 8 {
						for k := row - 1; k >= fb; k-- {
							rb[k] -= rb[k-fb]
						}
					} else {
						for k := row - 2; k >= fb; k -= 2 {
							o.order.PutUint16(rb[k:], o.order.Uint16(rb[k:])-o.order.Uint16(rb[k-fb:]))
						}
					}
				}
			}
			switch o.comp {
			case compLZW:
				blk = lzwLiterals(blk)
			case compDeflate:
				var z bytes.Buffer
				zw := zlib.NewWriter(&z)
				zw.Write(blk)
				zw.Close()
				blk = z.Bytes()
			case compPackBits:
				blk = packBits(blk)
			}
			if o.blockData != nil {
				blk = o.blockData
			}
			if out.Len()%2 == 1 {
				out.WriteByte(0)
			}
			offs, counts = append(offs, uint32(out.Len())), append(counts, uint32(len(blk)))
			out.Write(blk)
		}
	}
	type entry struct {
		tag, typ uint16
		vals     []uint32
	}
	photo := uint32(1)
	switch {
	case spp >= 3:
		photo = 2
	case o.invert:
		photo = 0
	}
	bpsv := make([]uint32, spp)
	for i := range bpsv {
		bpsv[i] = uint32(bps)
	}
	es := []entry{{tagImageWidth, 4, []uint32{uint32(w)}}, {tagImageLength, 4, []uint32{uint32(h)}}, {tagBitsPerSample, 3, bpsv}}
	if o.comp != 0 {
		es = append(es, entry{tagCompression, 3, []uint32{uint32(o.comp)}})
	}
	if !o.noPhotoTag {
		es = append(es, entry{tagPhotometric, 3, []uint32{photo}})
	}
	if o.tw == 0 {
		es = append(es, entry{tagStripOffsets, 4, offs}, entry{277, 3, []uint32{uint32(spp)}}, entry{tagRowsPerStrip, 4, []uint32{uint32(bh)}}, entry{tagStripCounts, 4, counts})
	} else {
		es = append(es, entry{277, 3, []uint32{uint32(spp)}})
	}
	if o.predictor {
		es = append(es, entry{tagPredictor, 3, []uint32{2}})
	}
	if o.tw > 0 {
		es = append(es, entry{tagTileWidth, 3, []uint32{uint32(bw)}}, entry{tagTileLength, 3, []uint32{uint32(bh)}}, entry{tagTileOffsets, 4, offs}, entry{tagTileCounts, 4, counts})
	}
	if o.extra != 0 {
		es = append(es, entry{tagExtraSamples, 3, []uint32{uint32(o.extra)}})
	}
	// values that do not fit in an entry go after the blocks, then the directory
	var ext bytes.Buffer
	extBase := out.Len()
	dir := make([]byte, 2+12*len(es)+4)
	o.order.PutUint16(dir, uint16(len(es)))
	for k, e := range es {
		p := dir[2+12*k:]
		o.order.PutUint16(p, e.tag)
		o.order.PutUint16(p[2:], e.typ)
		o.order.PutUint32(p[4:], uint32(len(e.vals)))
		size := map[uint16]int{3: 2, 4: 4}[e.typ]
		val := make([]byte, size*len(e.vals))
		for i, v := range e.vals {
			if size == 2 {
				o.order.PutUint16(val[2*i:], uint16(v))
			} else {
				o.order.PutUint32(val[4*i:], v)
			}
		}
		if len(val) <= 4 {
			copy(p[8:12], val)
		} else {
			o.order.PutUint32(p[8:], uint32(extBase+ext.Len()))
			ext.Write(val)
		}
	}
	out.Write(ext.Bytes())
	if out.Len()%2 == 1 {
		out.WriteByte(0)
	}
	ifd := out.Len()
	out.Write(dir)
	b := out.Bytes()
	if o.order == binary.ByteOrder(binary.BigEndian) {
		copy(b, "MM\x00*")
	} else {
		copy(b, "II*\x00")
	}
	o.order.PutUint32(b[4:], uint32(ifd))
	return b
}

// lzwLiterals is a valid TIFF LZW stream of b: 9-bit literal codes, a Clear
// code every 200 (the table never widens the codes), EOI at the end.
func lzwLiterals(b []byte) []byte {
	var out []byte
	var acc uint64
	var nb uint
	put := func(c uint64) {
		acc = acc<<9 | c
		nb += 9
		for nb >= 8 {
			out = append(out, byte(acc>>(nb-8)))
			nb -= 8
		}
	}
	for i, v := range b {
		if i%200 == 0 {
			put(256)
		}
		put(uint64(v))
	}
	if len(b) == 0 {
		put(256)
	}
	put(257)
	if nb > 0 {
		out = append(out, byte(acc<<(8-nb)))
	}
	return out
}

// packBits encodes b as PackBits: runs of three or more as repeats, the rest
// as literals, and a no-op (-128) now and then.
func packBits(b []byte) []byte {
	var out []byte
	for i := 0; i < len(b); {
		j := i
		for j < len(b) && j-i < 128 && b[j] == b[i] {
			j++
		}
		if j-i >= 3 {
			out = append(out, byte(int8(1-(j-i))), b[i])
			i = j
			continue
		}
		j = i
		for j < len(b) && j-i < 128 && !(j+2 < len(b) && b[j] == b[j+1] && b[j] == b[j+2]) {
			j++
		}
		out = append(out, byte(j-i-1))
		out = append(out, b[i:j]...)
		if i%7 == 0 {
			out = append(out, 0x80)
		}
		i = j
	}
	return out
}

func randSamples(n int, bps int, seed uint64) []uint16 {
	r := rand.New(rand.NewPCG(seed, 3))
	s := make([]uint16, n)
	for i := range s {
		if bps == 8 {
			s[i] = uint16(r.IntN(256))
		} else {
			s[i] = uint16(r.IntN(65536))
		}
		if i%5 == 1 && i > 1 {
			s[i] = s[i-1] // runs, for PackBits
		}
	}
	return s
}

// fastTIFFDecode decodes with padim's reader only; ok is false where it
// leaves the file to x/image's.
func fastTIFFDecode(data []byte) (image.Image, bool) {
	tf, ok := parseTIFF(bytes.NewReader(data), int64(len(data)))
	if !ok {
		return nil, false
	}
	img, err := tf.decode()
	return img, err == nil
}

// padim's TIFF reader gives x/image's image, type and bytes, on every layout
// it reads, and reads (does not leave to x/image) every one of them.
func TestTIFFReaderMatchesXImage(t *testing.T) {
	le, be := binary.ByteOrder(binary.LittleEndian), binary.ByteOrder(binary.BigEndian)
	sizes := [][2]int{{1, 1}, {37, 23}, {64, 1}, {1, 40}, {50, 33}}
	if testing.Short() {
		sizes = [][2]int{{1, 1}, {37, 23}}
	}
	kinds := []struct {
		name        string
		spp, bps    int
		extra       int
		invert      bool
		wantType    string
		noPhotoTags bool
	}{
		{"grey8", 1, 8, 0, false, "*image.Gray", false},
		{"grey8 white-is-zero", 1, 8, 0, true, "*image.Gray", false},
		{"grey8 no photometric tag", 1, 8, 0, false, "*image.Gray", true},
		{"grey16", 1, 16, 0, false, "*image.Gray16", false},
		{"grey16 white-is-zero", 1, 16, 0, true, "*image.Gray16", false},
		{"rgb8", 3, 8, 0, false, "*image.RGBA", false},
		{"rgb16", 3, 16, 0, false, "*image.RGBA64", false},
		{"rgba8 associated", 4, 8, 1, false, "*image.RGBA", false},
		{"rgba8 unassociated", 4, 8, 2, false, "*image.NRGBA", false},
		{"rgba16 associated", 4, 16, 1, false, "*image.RGBA64", false},
		{"rgba16 unassociated", 4, 16, 2, false, "*image.NRGBA64", false},
	}
	layouts := []tiffOpts{
		{},
		{rows: 7},
		{rows: 1},
		{tw: 16, th: 16},
		{tw: 48, th: 32}, // tiles larger than a small image
		{tw: 8, th: 24},
	}
	comps := []uint{0, compNone, compPackBits, compLZW, compDeflate}
	n := 0
	for _, sz := range sizes {
		for _, k := range kinds {
			for _, order := range []binary.ByteOrder{le, be} {
				for li, lay := range layouts {
					for _, comp := range comps {
						for _, pred := range []bool{false, true} {
							if pred && comp != compLZW && comp != compDeflate {
								continue
							}
							o := lay
							o.order, o.comp, o.predictor, o.extra, o.invert, o.noPhotoTag = order, comp, pred, k.extra, k.invert, k.noPhotoTags
							w, h := sz[0], sz[1]
							data := writeTIFF(t, w, h, k.spp, k.bps, randSamples(w*h*k.spp, k.bps, uint64(n)), o)
							name := fmt.Sprintf("%dx%d %s %v layout%d comp%d pred=%v", w, h, k.name, order, li, comp, pred)
							n++
							ref, err := tiff.Decode(bytes.NewReader(data))
							if err != nil {
								t.Fatalf("%s: x/image refuses the test's file: %v", name, err)
							}
							got, ok := fastTIFFDecode(data)
							if !ok {
								t.Fatalf("%s: padim's reader left it to x/image", name)
							}
							if tn := fmt.Sprintf("%T", got); tn != k.wantType {
								t.Fatalf("%s: %s, want %s", name, tn, k.wantType)
							}
							if !reflect.DeepEqual(got, ref) {
								t.Fatalf("%s: the pixels differ from x/image's", name)
							}
						}
					}
				}
			}
		}
	}
	t.Logf("%d files, bit for bit", n)
}

// x/image's own encoder's files (one strip, little-endian; Deflate with the
// predictor or none) read the same; paletted ones are left to x/image.
func TestTIFFReaderOnGoEncoder(t *testing.T) {
	src := texture(41, 29, 7)
	g16 := image.NewGray16(src.Rect)
	rgba64, nrgba64 := image.NewRGBA64(src.Rect), image.NewNRGBA64(src.Rect)
	rgba := image.NewRGBA(src.Rect)
	pal := image.NewPaletted(src.Rect, color.Palette{color.Black, color.White, color.RGBA{200, 10, 10, 255}})
	for i := range g16.Pix {
		g16.Pix[i] = uint8(i * 31)
	}
	for i := range rgba64.Pix {
		rgba64.Pix[i], nrgba64.Pix[i] = uint8(i*7), uint8(i*13)
	}
	for i := range rgba.Pix {
		rgba.Pix[i] = src.Pix[i] / 2 // valid premultiplied: colour ≤ alpha 127
		if i%4 == 3 {
			rgba.Pix[i] = 127
		}
	}
	for i := range pal.Pix {
		pal.Pix[i] = uint8(i % 3)
	}
	for _, img := range []image.Image{src, grayOf(src), g16, rgba, rgba64, nrgba64, pal} {
		for _, opt := range []*tiff.Options{nil, {Compression: tiff.Deflate, Predictor: true}} {
			var b bytes.Buffer
			if err := tiff.Encode(&b, img, opt); err != nil {
				t.Fatal(err)
			}
			ref, err := tiff.Decode(bytes.NewReader(b.Bytes()))
			if err != nil {
				t.Fatal(err)
			}
			got, ok := fastTIFFDecode(b.Bytes())
			if _, isPal := img.(*image.Paletted); isPal {
				if ok {
					t.Fatalf("a paletted TIFF was read by padim's reader")
				}
				got, err = DecodeImage(bytes.NewReader(b.Bytes())) // through x/image's
				if err != nil {
					t.Fatal(err)
				}
			} else if !ok {
				t.Fatalf("%T %+v: left to x/image", img, opt)
			}
			if !reflect.DeepEqual(got, ref) {
				t.Fatalf("%T %+v: the pixels differ from x/image's", img, opt)
			}
		}
	}
}

// Broken files are left to x/image's reader, whose errors stay the answer:
// short strips, offsets beyond the end, corrupt streams, a stream error after
// the bytes the image needs (x/image reads on and meets it).
func TestTIFFReaderLeavesBrokenFilesToXImage(t *testing.T) {
	le := binary.ByteOrder(binary.LittleEndian)
	w, h := 30, 20
	samples := randSamples(w*h, 8, 1)
	cases := map[string][]byte{}
	good := writeTIFF(t, w, h, 1, 8, samples, tiffOpts{order: le, comp: compNone, rows: 8})
	cases["truncated"] = good[:len(good)/2]
	short := writeTIFF(t, w, h, 1, 8, samples, tiffOpts{order: le, comp: compNone, rows: 8})
	// the first strip's byte count one short of its rows
	tf, _ := parseTIFF(bytes.NewReader(short), int64(len(short)))
	e := findEntry(t, short, tagStripCounts)
	le.PutUint32(short[le.Uint32(short[e+8:]):], uint32(tf.counts[0]-1))
	cases["short strip"] = short
	z := writeTIFF(t, w, h, 1, 8, samples, tiffOpts{order: le, comp: compDeflate})
	ztf, _ := parseTIFF(bytes.NewReader(z), int64(len(z)))
	zc := append([]byte(nil), z...)
	zc[ztf.offsets[0]+ztf.counts[0]-1] ^= 0xff // the Adler-32 checksum, after every pixel
	cases["deflate checksum"] = zc
	p := writeTIFF(t, w, h, 1, 8, samples, tiffOpts{order: le, comp: compPackBits})
	ptf, _ := parseTIFF(bytes.NewReader(p), int64(len(p)))
	pc := append([]byte(nil), p...)
	// a literal run claiming more bytes than the strip holds, at its end
	pc = append(pc[:ptf.offsets[0]+ptf.counts[0]], append([]byte{0x7f}, pc[ptf.offsets[0]+ptf.counts[0]:]...)...)
	cases["packbits truncated run"] = fixStripCount(t, pc, int(ptf.counts[0])+1, int(ptf.offsets[0]+ptf.counts[0]))
	for name, data := range cases {
		_, refErr := tiff.Decode(bytes.NewReader(data))
		if refErr == nil {
			t.Fatalf("%s: x/image reads it (the test's file is not broken)", name)
		}
		if _, ok := fastTIFFDecode(data); ok {
			t.Errorf("%s: padim's reader decoded a file x/image refuses (%v)", name, refErr)
		}
		if _, err := DecodeImage(bytes.NewReader(data)); err == nil {
			t.Errorf("%s: DecodeImage accepted it", name)
		}
	}
}

// findEntry returns the offset of tag's directory entry.
func findEntry(t *testing.T, b []byte, tag uint16) int {
	o := binary.LittleEndian
	ifd := int(o.Uint32(b[4:]))
	n := int(o.Uint16(b[ifd:]))
	for i := 0; i < n; i++ {
		if e := ifd + 2 + 12*i; o.Uint16(b[e:]) == tag {
			return e
		}
	}
	t.Fatalf("no tag %d", tag)
	return 0
}

// fixStripCount sets the one strip's byte count of a little-endian file
// and moves the directory pointer past an insertion at ins.
func fixStripCount(t *testing.T, b []byte, count, ins int) []byte {
	o := binary.LittleEndian
	ifd := int(o.Uint32(b[4:]))
	if ifd >= ins {
		ifd++
		o.PutUint32(b[4:], uint32(ifd))
	}
	n := int(o.Uint16(b[ifd:]))
	for i := 0; i < n; i++ {
		e := ifd + 2 + 12*i
		if o.Uint16(b[e:]) == tagStripCounts {
			o.PutUint32(b[e+8:], uint32(count))
		}
	}
	return b
}

func FuzzTIFFReader(f *testing.F) {
	le, be := binary.ByteOrder(binary.LittleEndian), binary.ByteOrder(binary.BigEndian)
	f.Add(writeTIFF(f, 9, 7, 1, 8, randSamples(63, 8, 1), tiffOpts{order: le, comp: compNone, rows: 3}))
	f.Add(writeTIFF(f, 9, 7, 3, 16, randSamples(189, 16, 2), tiffOpts{order: be, comp: compLZW, predictor: true}))
	f.Add(writeTIFF(f, 17, 9, 4, 8, randSamples(612, 8, 3), tiffOpts{order: le, comp: compPackBits, tw: 8, th: 8, extra: 2}))
	f.Add(writeTIFF(f, 9, 7, 1, 16, randSamples(63, 16, 4), tiffOpts{order: be, comp: compDeflate, invert: true}))
	f.Add(encodeAs(f, texture(9, 7, 1), "tiff"))
	seeds, _ := filepath.Glob(filepath.Join("testdata", "encoders", "*.tif"))
	for _, s := range seeds {
		if b, err := os.ReadFile(s); err == nil {
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		tf, ok := parseTIFF(bytes.NewReader(data), int64(len(data)))
		if !ok {
			return
		}
		if tf.w*tf.h > 1<<20 {
			return // the header check (MaxPixels) is DecodeImage's; keep the fuzzer's memory small
		}
		img, err := tf.decode()
		if err != nil {
			return
		}
		ref, err := tiff.Decode(bytes.NewReader(data))
		if err != nil {
			t.Fatalf("padim's reader decoded a file x/image refuses: %v", err)
		}
		if !reflect.DeepEqual(img, ref) {
			t.Fatalf("the pixels differ from x/image's (%T, %T)", img, ref)
		}
	})
}
