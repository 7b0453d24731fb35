package imageio

import (
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"image"
	"image/png"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/padim/padim/detector/imageio/libdeflate"
)

// pngOpts says how writePNG lays a PNG out.
type pngOpts struct {
	interlace bool
	idat      int      // bytes of pixel data an IDAT chunk (0: one chunk)
	filters   []byte   // the rows' filter types, cycled (nil: 0…4)
	before    [][]byte // chunks (type and data) after IHDR, before the pixel data
	after     [][]byte // chunks after the pixel data, before IEND
	emptyIDAT bool     // a zero-length IDAT chunk after the data's
}

func pngChunk(typ string, data []byte) []byte {
	b := make([]byte, 8, 12+len(data))
	binary.BigEndian.PutUint32(b, uint32(len(data)))
	copy(b[4:], typ)
	b = append(b, data...)
	return binary.BigEndian.AppendUint32(b, crc32.ChecksumIEEE(b[4:]))
}

// filterRow applies PNG filter ft to row cur (raw bytes) with prev the raw
// row above, pixels of bpp bytes.
func filterRow(ft byte, cur, prev []byte, bpp int) []byte {
	out := make([]byte, len(cur))
	for i := range cur {
		var a, b, c int
		if i >= bpp {
			a, c = int(cur[i-bpp]), int(prev[i-bpp])
		}
		b = int(prev[i])
		var p int
		switch ft {
		case 1:
			p = a
		case 2:
			p = b
		case 3:
			p = (a + b) / 2
		case 4:
			pa, pb, pc := iabs(b-c), iabs(a-c), iabs(a+b-2*c)
			switch {
			case pa <= pb && pa <= pc:
				p = a
			case pb <= pc:
				p = b
			default:
				p = c
			}
		}
		out[i] = cur[i] - uint8(p)
	}
	return out
}

// writePNG encodes samples (w×h pixels of the colour type's channels, depth
// bits each; 16-bit values big-endian as the file holds them) as o says.
func writePNG(w, h int, depth, ctype byte, raw []byte, o pngOpts) []byte {
	bitsPP := int(depth) * map[byte]int{0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[ctype]
	bpp := max(bitsPP/8, 1)
	rowOf := func(pw int) int { return (pw*bitsPP + 7) / 8 }
	filters := o.filters
	if filters == nil {
		filters = []byte{0, 1, 2, 3, 4}
	}
	var data []byte
	k := 0
	pass := func(x0, y0, dx, dy int) {
		pw, ph := (w-x0+dx-1)/dx, (h-y0+dy-1)/dy
		if pw <= 0 || ph <= 0 {
			return
		}
		prev := make([]byte, rowOf(pw))
		for y := y0; y < h; y += dy {
			cur := make([]byte, rowOf(pw))
			for i, x := 0, x0; x < w; i, x = i+1, x+dx {
				if bitsPP >= 8 {
					copy(cur[i*bpp:(i+1)*bpp], raw[(y*w+x)*bpp:])
					continue
				}
				// sub-byte samples: raw holds one sample a byte
				v := raw[y*w+x]
				shift := 8 - bitsPP*(i%(8/bitsPP)+1)
				cur[i*bitsPP/8] |= v << shift
			}
			ft := filters[k%len(filters)]
			k++
			data = append(data, ft)
			data = append(data, filterRow(ft, cur, prev, bpp)...)
			prev = cur
		}
	}
	if o.interlace {
		for _, p := range [][4]int{{0, 0, 8, 8}, {4, 0, 8, 8}, {0, 4, 4, 8}, {2, 0, 4, 4}, {0, 2, 2, 4}, {1, 0, 2, 2}, {0, 1, 1, 2}} {
			pass(p[0], p[1], p[2], p[3])
		}
	} else {
		pass(0, 0, 1, 1)
	}
	var z bytes.Buffer
	zw, _ := zlib.NewWriterLevel(&z, zlib.BestSpeed)
	zw.Write(data)
	zw.Close()
	out := []byte("\x89PNG\r\n\x1a\n")
	ihdr := make([]byte, 13)
	binary.BigEndian.PutUint32(ihdr, uint32(w))
	binary.BigEndian.PutUint32(ihdr[4:], uint32(h))
	ihdr[8], ihdr[9] = depth, ctype
	if o.interlace {
		ihdr[12] = 1
	}
	out = append(out, pngChunk("IHDR", ihdr)...)
	for _, c := range o.before {
		out = append(out, pngChunk(string(c[:4]), c[4:])...)
	}
	zb := z.Bytes()
	step := o.idat
	if step <= 0 {
		step = len(zb)
	}
	for i := 0; i < len(zb); i += step {
		out = append(out, pngChunk("IDAT", zb[i:min(i+step, len(zb))])...)
	}
	if o.emptyIDAT {
		out = append(out, pngChunk("IDAT", nil)...)
	}
	for _, c := range o.after {
		out = append(out, pngChunk(string(c[:4]), c[4:])...)
	}
	return append(out, pngChunk("IEND", nil)...)
}

func randBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 11))
	b := make([]byte, n)
	for i := range b {
		b[i] = uint8(r.IntN(256))
		if i%7 == 3 && i > 3 {
			b[i] = b[i-3] // structure for the filters and the compressor
		}
	}
	return b
}

// padim's PNG reader gives image/png's image, type and bytes, on every layout
// it reads (every filter, odd sizes, the data in one or many IDAT chunks,
// ancillary chunks around it), and reads them itself; interlaced, paletted,
// sub-byte and transparent files are left to image/png, whose image
// DecodeImage then returns.
func TestPNGReaderMatchesImagePNG(t *testing.T) {
	if testing.Short() {
		t.Log("short: fewer sizes")
	}
	kinds := []struct {
		depth, ctype byte
		typ          string
	}{
		{8, 0, "*image.Gray"}, {8, 2, "*image.RGBA"}, {8, 4, "*image.NRGBA"}, {8, 6, "*image.NRGBA"},
		{16, 0, "*image.Gray16"}, {16, 2, "*image.RGBA64"}, {16, 4, "*image.NRGBA64"}, {16, 6, "*image.NRGBA64"},
	}
	sizes := [][2]int{{1, 1}, {37, 23}, {64, 1}, {1, 40}, {129, 17}}
	if testing.Short() {
		sizes = sizes[:3]
	}
	layouts := []pngOpts{
		{},
		{idat: 1},
		{idat: 100, emptyIDAT: true},
		{filters: []byte{4}},
		{filters: []byte{3, 1}},
		{before: [][]byte{[]byte("gAMA\x00\x00\xb1\x8f"), []byte("pHYs\x00\x00\x0b\x13\x00\x00\x0b\x13\x01")}, after: [][]byte{[]byte("tEXtComment\x00padim")}},
	}
	n := 0
	for _, sz := range sizes {
		for _, k := range kinds {
			for li, lay := range layouts {
				w, h := sz[0], sz[1]
				bpp := int(k.depth) / 8 * map[byte]int{0: 1, 2: 3, 4: 2, 6: 4}[k.ctype]
				o := lay
				if k.ctype == 2 || k.ctype == 6 { // a suggested palette, allowed for truecolour
					o.before = append([][]byte{[]byte("PLTE\x00\x00\x00\xff\xff\xff")}, o.before...)
				}
				data := writePNG(w, h, k.depth, k.ctype, randBytes(w*h*bpp, uint64(n)), o)
				name := fmt.Sprintf("%dx%d depth %d type %d layout %d", w, h, k.depth, k.ctype, li)
				n++
				ref, err := png.Decode(bytes.NewReader(data))
				if err != nil {
					t.Fatalf("%s: image/png refuses the test's file: %v", name, err)
				}
				got, err := decodePNG(data)
				if err != nil {
					t.Fatalf("%s: padim's reader left it to image/png: %v", name, err)
				}
				if tn := fmt.Sprintf("%T", got); tn != k.typ {
					t.Fatalf("%s: %s, want %s", name, tn, k.typ)
				}
				if !reflect.DeepEqual(got, ref) {
					t.Fatalf("%s: the pixels differ from image/png's", name)
				}
				for _, viaStream := range []bool{false, true} {
					var img image.Image
					if viaStream {
						img, err = DecodeImage(bytes.NewReader(data))
					} else {
						img, err = decodeData(data)
					}
					if err != nil || !reflect.DeepEqual(img, ref) {
						t.Fatalf("%s (stream %v): DecodeImage: %v", name, viaStream, err)
					}
				}
			}
		}
	}
	// what padim's reader leaves to image/png
	others := []struct {
		name         string
		depth, ctype byte
		o            pngOpts
	}{
		{"interlaced rgb", 8, 2, pngOpts{interlace: true}},
		{"interlaced grey16", 16, 0, pngOpts{interlace: true, idat: 50}},
		{"paletted", 8, 3, pngOpts{before: [][]byte{append([]byte("PLTE"), randBytes(3*256, 1)...)}}},
		{"paletted 4-bit", 4, 3, pngOpts{before: [][]byte{append([]byte("PLTE"), randBytes(3*16, 2)...)}}},
		{"grey 1-bit", 1, 0, pngOpts{}},
		{"grey 2-bit", 2, 0, pngOpts{}},
		{"rgb with tRNS", 8, 2, pngOpts{before: [][]byte{[]byte("tRNS\x00\x01\x00\x02\x00\x03")}}},
		{"grey16 with tRNS", 16, 0, pngOpts{before: [][]byte{[]byte("tRNS\x00\x07")}}},
	}
	for _, c := range others {
		w, h := 37, 23
		bitsPP := int(c.depth) * map[byte]int{0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[c.ctype]
		raw := randBytes(w*h*max(bitsPP/8, 1), 9)
		if bitsPP < 8 {
			for i := range raw {
				raw[i] &= 1<<bitsPP - 1
			}
		}
		data := writePNG(w, h, c.depth, c.ctype, raw, c.o)
		ref, err := png.Decode(bytes.NewReader(data))
		if err != nil {
			t.Fatalf("%s: image/png refuses the test's file: %v", c.name, err)
		}
		if _, err := decodePNG(data); err == nil {
			t.Fatalf("%s: padim's reader decoded it (it leaves these to image/png)", c.name)
		}
		for _, viaStream := range []bool{false, true} {
			var img image.Image
			if viaStream {
				img, err = DecodeImage(bytes.NewReader(data))
			} else {
				img, err = decodeData(data)
			}
			if err != nil || !reflect.DeepEqual(img, ref) {
				t.Fatalf("%s (stream %v): not image/png's image: %v", c.name, viaStream, err)
			}
		}
	}
	t.Logf("%d files read by padim's reader (inflate: libdeflate %v), %d left to image/png, bit for bit", n, libdeflate.Available, len(others))
}

// Go's encoder's files (every image type it writes, at every compression
// level) read the same.
func TestPNGReaderOnGoEncoder(t *testing.T) {
	src := texture(61, 43, 5)
	g16 := image.NewGray16(src.Rect)
	rgba64, nrgba64 := image.NewRGBA64(src.Rect), image.NewNRGBA64(src.Rect)
	opaque := image.NewRGBA(src.Rect)
	for i := range g16.Pix {
		g16.Pix[i] = uint8(i * 31)
	}
	for i := range rgba64.Pix {
		rgba64.Pix[i], nrgba64.Pix[i] = uint8(i*7), uint8(i*13)
		if i%8 >= 6 {
			rgba64.Pix[i] = 0xff // opaque: written as 16-bit RGB
		}
	}
	copy(opaque.Pix, src.Pix)
	translucent := image.NewNRGBA(src.Rect)
	copy(translucent.Pix, src.Pix)
	for i := 3; i < len(translucent.Pix); i += 4 {
		translucent.Pix[i] = uint8(i)
	}
	for _, img := range []image.Image{src, grayOf(src), g16, opaque, translucent, rgba64, nrgba64} {
		for _, lvl := range []png.CompressionLevel{png.DefaultCompression, png.NoCompression, png.BestSpeed, png.BestCompression} {
			var b bytes.Buffer
			if err := (&png.Encoder{CompressionLevel: lvl}).Encode(&b, img); err != nil {
				t.Fatal(err)
			}
			ref, err := png.Decode(bytes.NewReader(b.Bytes()))
			if err != nil {
				t.Fatal(err)
			}
			got, err := decodePNG(b.Bytes())
			if err != nil {
				t.Fatalf("%T level %d: left to image/png: %v", img, lvl, err)
			}
			if !reflect.DeepEqual(got, ref) {
				t.Fatalf("%T level %d: the pixels differ from image/png's", img, lvl)
			}
		}
	}
}

// Files image/png refuses are not read by padim's reader either (its errors
// stay the answer): a bad CRC anywhere, a bad zlib checksum, pixel data
// missing or extra, chunks out of order, no IEND, truncation.
func TestPNGReaderRefusesWhatImagePNGRefuses(t *testing.T) {
	w, h := 40, 30
	raw := randBytes(w*h*3, 4)
	good := writePNG(w, h, 8, 2, raw, pngOpts{idat: 300})
	cases := map[string][]byte{}
	flip := func(b []byte, i int) []byte { c := append([]byte(nil), b...); c[i] ^= 1; return c }
	cases["truncated"] = good[:len(good)-20]
	cases["no IEND"] = good[:len(good)-12]
	cases["IHDR CRC"] = flip(good, 8+8+13)
	cases["last IDAT CRC"] = flip(good, len(good)-12-1)
	cases["ancillary CRC"] = func() []byte {
		b := writePNG(w, h, 8, 2, raw, pngOpts{after: [][]byte{[]byte("tEXtk\x00v")}})
		return flip(b, len(b)-12-1)
	}()
	// the zlib checksum: the last byte of the pixel data (one IDAT chunk)
	one := writePNG(w, h, 8, 2, raw, pngOpts{})
	cases["adler32"] = flip(one, len(one)-12-4-1)
	// pixel data missing: a shorter image's data under this IHDR
	short := writePNG(w, h-1, 8, 2, raw[:w*(h-1)*3], pngOpts{})
	binary.BigEndian.PutUint32(short[8+8+4:], uint32(h))
	cases["missing rows"] = fixCRC(short)
	long := writePNG(w, h+1, 8, 2, append(raw, raw[:w*3]...), pngOpts{})
	binary.BigEndian.PutUint32(long[8+8+4:], uint32(h))
	cases["extra rows"] = fixCRC(long)
	cases["bad filter"] = func() []byte {
		return writePNG(w, h, 8, 2, raw, pngOpts{filters: []byte{0, 5}})
	}()
	cases["IDAT before IHDR"] = append(append([]byte("\x89PNG\r\n\x1a\n"), pngChunk("IDAT", []byte{1})...), good[8:]...)
	cases["PLTE in grey"] = writePNG(w, h, 8, 0, raw[:w*h], pngOpts{before: [][]byte{[]byte("PLTE\x00\x00\x00")}})
	cases["PLTE after IDAT"] = writePNG(w, h, 8, 2, raw, pngOpts{after: [][]byte{[]byte("PLTE\x00\x00\x00")}})
	cases["second IHDR"] = writePNG(w, h, 8, 2, raw, pngOpts{before: [][]byte{append([]byte("IHDR"), good[16:29]...)}})
	for name, data := range cases {
		if _, err := png.Decode(bytes.NewReader(data)); err == nil {
			t.Fatalf("%s: image/png reads it (the test's file is not broken)", name)
		}
		if _, err := decodePNG(data); err == nil {
			t.Errorf("%s: padim's reader decoded a file image/png refuses", name)
		}
		if _, err := decodeData(data); err == nil {
			t.Errorf("%s: decodeData accepted it", name)
		}
	}
}

// fixCRC recomputes the CRC of every whole chunk of a PNG.
func fixCRC(b []byte) []byte {
	b = append([]byte(nil), b...)
	for i := 8; i+12 <= len(b); {
		l := int(binary.BigEndian.Uint32(b[i:]))
		if l < 0 || i+12+l > len(b) {
			break
		}
		binary.BigEndian.PutUint32(b[i+8+l:], crc32.ChecksumIEEE(b[i+4:i+8+l]))
		i += 12 + l
	}
	return b
}

func FuzzPNGReader(f *testing.F) {
	f.Add(writePNG(9, 7, 8, 2, randBytes(9*7*3, 1), pngOpts{idat: 40}), false)
	f.Add(writePNG(9, 7, 16, 0, randBytes(9*7*2, 2), pngOpts{}), true)
	f.Add(writePNG(5, 3, 8, 4, randBytes(5*3*2, 3), pngOpts{filters: []byte{4, 3}}), true)
	f.Add(writePNG(5, 3, 16, 6, randBytes(5*3*8, 4), pngOpts{emptyIDAT: true}), true)
	f.Add(encodeAs(f, texture(9, 7, 1), "png"), false)
	f.Add(encodeAs(f, grayOf(texture(9, 7, 1)), "png"), true)
	seeds, _ := filepath.Glob(filepath.Join("testdata", "encoders", "*.png"))
	for _, s := range seeds {
		if b, err := os.ReadFile(s); err == nil {
			f.Add(b, true)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte, repairCRC bool) {
		if repairCRC { // reach past the CRCs, which a mutation almost always breaks
			data = fixCRC(data)
		}
		if len(data) > 24 && uint64(binary.BigEndian.Uint32(data[16:]))*uint64(binary.BigEndian.Uint32(data[20:])) > 1<<20 {
			return // the header check (MaxPixels) is DecodeImage's; keep the fuzzer's memory small
		}
		img, err := decodePNG(data)
		if err != nil {
			return
		}
		ref, err := png.Decode(bytes.NewReader(data))
		if err != nil {
			t.Fatalf("padim's reader decoded a file image/png refuses: %v", err)
		}
		if !reflect.DeepEqual(img, ref) {
			t.Fatalf("the pixels differ from image/png's (%T, %T)", img, ref)
		}
	})
}

// Bombs and lies are refused (or read) within what the header allows: a PNG
// whose pixel data inflates far beyond its IHDR's rows, a TIFF claiming more
// pixels than MaxPixels, a TIFF strip whose byte count claims gigabytes, a
// Deflate strip inflating far beyond its strip (x/image reads the strip's
// share and ignores the rest; so does padim's reader).
func TestReadersRefuseBombs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates on its own: the allocation counts mean nothing")
	}
	var z bytes.Buffer
	zw, _ := zlib.NewWriterLevel(&z, zlib.BestCompression)
	zw.Write(make([]byte, 64<<20)) // 64 MB of zeros, 64 KB compressed
	zw.Close()
	bomb := []byte("\x89PNG\r\n\x1a\n")
	ihdr := []byte{0, 0, 0, 64, 0, 0, 0, 64, 8, 0, 0, 0, 0}
	bomb = append(bomb, pngChunk("IHDR", ihdr)...)
	bomb = append(bomb, pngChunk("IDAT", z.Bytes())...)
	bomb = append(bomb, pngChunk("IEND", nil)...)
	le := binary.ByteOrder(binary.LittleEndian)
	huge := writeTIFF(t, 16, 16, 1, 8, randSamples(256, 8, 1), tiffOpts{order: le, comp: compNone})
	le.PutUint32(huge[le.Uint32(huge[4:])+2+8:], 100000) // ImageWidth: the first entry
	liar := writeTIFF(t, 16, 16, 1, 8, randSamples(256, 8, 1), tiffOpts{order: le, comp: compNone})
	e := findEntry(t, liar, tagStripCounts)
	le.PutUint32(liar[e+8:], 0xfffffff0)
	var zt bytes.Buffer
	zw = zlib.NewWriter(&zt)
	zw.Write(make([]byte, 64<<20))
	zw.Close()
	deflateBomb := writeTIFF(t, 64, 64, 1, 8, make([]uint16, 64*64), tiffOpts{order: le, comp: compDeflate, blockData: zt.Bytes()})
	for _, c := range []struct {
		name    string
		data    []byte
		refused bool
	}{
		{"png inflating to 64 MB under a 64x64 IHDR", bomb, true},
		{"tiff claiming 100000x16", huge, true},
		{"tiff strip claiming 4 GB", liar, true},
		{"tiff deflate strip inflating to 64 MB", deflateBomb, false},
	} {
		var err error
		got := allocated(func() { _, err = decodeData(c.data) })
		if (err != nil) != c.refused {
			t.Errorf("%s: error %v", c.name, err)
		}
		if got > 4<<20 {
			t.Errorf("%s: %d bytes allocated", c.name, got)
		}
	}
}
