package imageio

import (
	"image"
	"image/color"
)

// rows reads a decoded image row by row as float32 values on [0,1], the
// channels of each pixel side by side: one channel for grey images (Gray,
// Gray16), three (R, G, B) otherwise; alpha is dropped. read is safe for
// concurrent use (it only reads the image).
//
// The values are those padim has always used: 8-bit samples v become
// float32(v)·(1/255), 16-bit ones float32(v)·(1/65535); YCbCr goes through
// color.YCbCrToRGB, CMYK through color.CMYK's RGBA, premultiplied 16-bit
// colour through color.NRGBA64Model, premultiplied 8-bit RGBA is divided by
// its alpha in float32, palettes map through color.NRGBA64Model. Each row is
// read straight from the image's pixel slices, without a call per pixel.
type rows struct {
	w, h  int
	chans int                        // 1 or 3
	read  func(y int, dst []float32) // row y (0 = the top of the bounds) into dst[:chans·w]
}

const (
	s8  = 1.0 / 255
	s16 = 1.0 / 65535
)

// lut8 holds float32(v)·(1/255) for every byte v.
var lut8 = func() (t [256]float32) {
	for i := range t {
		t[i] = float32(i) * s8
	}
	return t
}()

// yccTables hold the chroma terms of color.YCbCrToRGB for every byte.
var crR, cbG, crG, cbB = func() (a, b, c, d [256]int32) {
	for i := range a {
		v := int32(i) - 128
		a[i], b[i], c[i], d[i] = 91881*v, -22554*v, -46802*v, 116130*v
	}
	return
}()

// newRows returns the row reader for img.
func newRows(img image.Image) rows {
	b := img.Bounds()
	w, h := b.Dx(), b.Dy()
	r := rows{w: w, h: h, chans: 3}
	switch m := img.(type) {
	case *image.Gray:
		r.chans = 1
		r.read = func(y int, dst []float32) {
			o := m.PixOffset(b.Min.X, b.Min.Y+y)
			src := m.Pix[o : o+w]
			dst = dst[:w]
			for x, v := range src {
				dst[x] = lut8[v]
			}
		}
	case *image.Gray16:
		r.chans = 1
		r.read = func(y int, dst []float32) {
			o := m.PixOffset(b.Min.X, b.Min.Y+y)
			src := m.Pix[o : o+2*w]
			dst = dst[:w]
			for x := range dst {
				dst[x] = float32(uint16(src[2*x])<<8|uint16(src[2*x+1])) * s16
			}
		}
	case *rgbImage:
		r.read = func(y int, dst []float32) {
			o := m.PixOffset(b.Min.X, b.Min.Y+y)
			src := m.Pix[o : o+3*w]
			dst = dst[:3*w]
			for i, v := range src {
				dst[i] = lut8[v]
			}
		}
	case *image.NRGBA:
		r.read = func(y int, dst []float32) {
			o := m.PixOffset(b.Min.X, b.Min.Y+y)
			src := m.Pix[o : o+4*w]
			dst = dst[:3*w]
			for x := 0; x < w; x++ {
				p, d := src[4*x:4*x+3:4*x+3], dst[3*x:3*x+3:3*x+3]
				d[0], d[1], d[2] = lut8[p[0]], lut8[p[1]], lut8[p[2]]
			}
		}
	case *image.RGBA:
		// premultiplied; PNG and BMP decode opaque truecolour images to RGBA (alpha 255)
		r.read = func(y int, dst []float32) {
			o := m.PixOffset(b.Min.X, b.Min.Y+y)
			src := m.Pix[o : o+4*w]
			dst = dst[:3*w]
			for x := 0; x < w; x++ {
				p, d := src[4*x:4*x+4:4*x+4], dst[3*x:3*x+3:3*x+3]
				switch a := p[3]; a {
				case 255:
					d[0], d[1], d[2] = lut8[p[0]], lut8[p[1]], lut8[p[2]]
				case 0:
					d[0], d[1], d[2] = 0, 0, 0
				default:
					s := 1 / float32(a)
					d[0], d[1], d[2] = min(float32(p[0])*s, 1), min(float32(p[1])*s, 1), min(float32(p[2])*s, 1)
				}
			}
		}
	case *image.NRGBA64:
		r.read = func(y int, dst []float32) {
			o := m.PixOffset(b.Min.X, b.Min.Y+y)
			src := m.Pix[o : o+8*w]
			dst = dst[:3*w]
			for x := 0; x < w; x++ {
				p, d := src[8*x:8*x+6:8*x+6], dst[3*x:3*x+3:3*x+3]
				d[0] = float32(uint16(p[0])<<8|uint16(p[1])) * s16
				d[1] = float32(uint16(p[2])<<8|uint16(p[3])) * s16
				d[2] = float32(uint16(p[4])<<8|uint16(p[5])) * s16
			}
		}
	case *image.RGBA64:
		r.read = func(y int, dst []float32) {
			o := m.PixOffset(b.Min.X, b.Min.Y+y)
			src := m.Pix[o : o+8*w]
			dst = dst[:3*w]
			for x := 0; x < w; x++ {
				p, d := src[8*x:8*x+8:8*x+8], dst[3*x:3*x+3:3*x+3]
				cr, cg, cb := uint32(p[0])<<8|uint32(p[1]), uint32(p[2])<<8|uint32(p[3]), uint32(p[4])<<8|uint32(p[5])
				switch a := uint32(p[6])<<8 | uint32(p[7]); a {
				case 0xffff:
				case 0:
					cr, cg, cb = 0, 0, 0
				default: // color.NRGBA64Model's un-premultiplication
					cr, cg, cb = uint32(uint16(cr*0xffff/a)), uint32(uint16(cg*0xffff/a)), uint32(uint16(cb*0xffff/a))
				}
				d[0], d[1], d[2] = float32(cr)*s16, float32(cg)*s16, float32(cb)*s16
			}
		}
	case *image.CMYK:
		r.read = func(y int, dst []float32) {
			o := m.PixOffset(b.Min.X, b.Min.Y+y)
			src := m.Pix[o : o+4*w]
			dst = dst[:3*w]
			for x := 0; x < w; x++ {
				p, d := src[4*x:4*x+4:4*x+4], dst[3*x:3*x+3:3*x+3]
				k := 0xffff - uint32(p[3])*0x101
				d[0] = float32((0xffff-uint32(p[0])*0x101)*k/0xffff) * s16
				d[1] = float32((0xffff-uint32(p[1])*0x101)*k/0xffff) * s16
				d[2] = float32((0xffff-uint32(p[2])*0x101)*k/0xffff) * s16
			}
		}
	case *image.Paletted:
		var lut [256][3]float32
		for i, c := range m.Palette {
			if i == len(lut) {
				break
			}
			n := color.NRGBA64Model.Convert(c).(color.NRGBA64)
			lut[i] = [3]float32{float32(n.R) * s16, float32(n.G) * s16, float32(n.B) * s16}
		}
		// An index beyond the palette (At would panic) reads as black.
		r.read = func(y int, dst []float32) {
			o := m.PixOffset(b.Min.X, b.Min.Y+y)
			src := m.Pix[o : o+w]
			dst = dst[:3*w]
			for x, v := range src {
				c, d := &lut[v], dst[3*x:3*x+3:3*x+3]
				d[0], d[1], d[2] = c[0], c[1], c[2]
			}
		}
	case *image.YCbCr:
		r.read = yccRows(m)
	default:
		// Any other image: through At and color.NRGBA64Model, 16 bits kept.
		r.read = func(y int, dst []float32) {
			dst = dst[:3*w]
			for x := 0; x < w; x++ {
				c := color.NRGBA64Model.Convert(img.At(b.Min.X+x, b.Min.Y+y)).(color.NRGBA64)
				dst[3*x], dst[3*x+1], dst[3*x+2] = float32(c.R)*s16, float32(c.G)*s16, float32(c.B)*s16
			}
		}
	}
	return r
}

// yccRows reads YCbCr rows of any subsampling through color.YCbCrToRGB's
// arithmetic: its chroma terms and its rounding, clamping and scaling to [0,1]
// looked up in tables.
func yccRows(m *image.YCbCr) func(y int, dst []float32) {
	b := m.Rect
	w := b.Dx()
	// horizontal chroma subsampling: 2^sh luma samples a chroma sample
	sh := map[image.YCbCrSubsampleRatio]uint{image.YCbCrSubsampleRatio422: 1, image.YCbCrSubsampleRatio420: 1,
		image.YCbCrSubsampleRatio411: 2, image.YCbCrSubsampleRatio410: 2}[m.SubsampleRatio]
	return func(y int, dst []float32) {
		ay := b.Min.Y + y
		yrow := m.Y[m.YOffset(b.Min.X, ay):][:w]
		dst = dst[:3*w]
		c0 := m.COffset(b.Min.X, ay) // the chroma sample of the row's first pixel
		if b.Min.X < 0 {
			// left of zero the division truncates towards zero: COffset per pixel
			for x, yv := range yrow {
				ci := m.COffset(b.Min.X+x, ay)
				yccPixel(yv, m.Cb[ci], m.Cr[ci], dst[3*x:3*x+3:3*x+3])
			}
			return
		}
		// COffset(x, ay) = c0 + x>>sh − Min.X>>sh for x ≥ 0
		base := b.Min.X >> sh
		last := (b.Min.X+w-1)>>sh - base
		cb, cr := m.Cb[c0:c0+last+1], m.Cr[c0:c0+last+1]
		if sh == 0 {
			for x, yv := range yrow {
				yccPixel(yv, cb[x], cr[x], dst[3*x:3*x+3:3*x+3])
			}
			return
		}
		// one chroma sample's terms for the run of luma samples sharing it
		for x := 0; x < w; {
			ax := b.Min.X + x
			ci := ax>>sh - base
			end := min(w, (ax>>sh+1)<<sh-b.Min.X)
			u, v := cb[ci], cr[ci]
			tr, tg, tb := crR[v], cbG[u]+crG[v], cbB[u]
			for ; x < end; x++ {
				yy := int32(yrow[x]) * 0x10101
				d := dst[3*x : 3*x+3 : 3*x+3]
				d[0] = clampLUT[uint((yy+tr)>>16+clampBias)&clampMask]
				d[1] = clampLUT[uint((yy+tg)>>16+clampBias)&clampMask]
				d[2] = clampLUT[uint((yy+tb)>>16+clampBias)&clampMask]
			}
		}
	}
}

// yccPixel writes color.YCbCrToRGB(y, cb, cr) scaled to [0,1] into d.
func yccPixel(y, cb, cr uint8, d []float32) {
	d = d[:3]
	yy := int32(y) * 0x10101
	d[0] = clampLUT[uint((yy+crR[cr])>>16+clampBias)&clampMask]
	d[1] = clampLUT[uint((yy+cbG[cb]+crG[cr])>>16+clampBias)&clampMask]
	d[2] = clampLUT[uint((yy+cbB[cb])>>16+clampBias)&clampMask]
}

// clampLUT[v>>16 + clampBias] is lut8 of color.YCbCrToRGB's clamped v>>16 for every v the YCbCr
// arithmetic yields (v>>16 within −227 … 433): below zero 0, above 255 1.
const (
	clampBias = 256
	clampMask = 1023
)

var clampLUT = func() (t [clampMask + 1]float32) {
	for i := range t {
		t[i] = lut8[min(max(i-clampBias, 0), 255)]
	}
	return t
}()

// rgbImage is 8-bit RGB, three bytes a pixel (libjpeg-turbo's output).
type rgbImage struct {
	Pix    []uint8
	Stride int
	Rect   image.Rectangle
}

func (p *rgbImage) ColorModel() color.Model { return color.RGBAModel }
func (p *rgbImage) Bounds() image.Rectangle { return p.Rect }

// At implements image.Image.
func (p *rgbImage) At(x, y int) color.Color {
	if !(image.Point{x, y}.In(p.Rect)) {
		return color.RGBA{}
	}
	i := p.PixOffset(x, y)
	return color.RGBA{p.Pix[i], p.Pix[i+1], p.Pix[i+2], 255}
}

// PixOffset is the index of pixel (x, y)'s first byte in Pix.
func (p *rgbImage) PixOffset(x, y int) int {
	return (y-p.Rect.Min.Y)*p.Stride + (x-p.Rect.Min.X)*3
}
