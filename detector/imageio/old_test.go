package imageio

// The conversion and resize as they were before the row readers (commit
// 1915b3e), kept as the reference the new code must reproduce bit for bit.

import (
	"image"
	"image/color"
)

// oldFromImage converts any image to planes, with fast paths for the common types.
func oldFromImage(img image.Image) *Planes {
	b := img.Bounds()
	w, h := b.Dx(), b.Dy()
	p := &Planes{W: w, H: h, Pix: make([]float32, 3*w*h)}
	conv := oldRowConverter(img)
	for y := 0; y < h; y++ {
		conv(y, p.Pix[y*w:(y+1)*w], p.Pix[w*h+y*w:w*h+(y+1)*w], p.Pix[2*w*h+y*w:2*w*h+(y+1)*w])
	}
	return p
}

// oldRowConverter returns a function writing image row y as R, G, B on [0,1]
// (grey repeated, alpha dropped), with fast paths for the common types.
func oldRowConverter(img image.Image) func(y int, R, G, B []float32) {
	b := img.Bounds()
	w := b.Dx()
	const s8, s16 = 1.0 / 255, 1.0 / 65535
	switch m := img.(type) {
	case *image.Gray:
		return func(y int, R, G, B []float32) {
			for x, v := range m.Pix[y*m.Stride : y*m.Stride+w] {
				f := float32(v) * s8
				R[x], G[x], B[x] = f, f, f
			}
		}
	case *image.Gray16:
		return func(y int, R, G, B []float32) {
			for x := 0; x < w; x++ {
				o := y*m.Stride + 2*x
				v := float32(uint16(m.Pix[o])<<8|uint16(m.Pix[o+1])) * s16
				R[x], G[x], B[x] = v, v, v
			}
		}
	case *image.NRGBA:
		return func(y int, R, G, B []float32) {
			for x := 0; x < w; x++ {
				o := y*m.Stride + 4*x
				R[x], G[x], B[x] = float32(m.Pix[o])*s8, float32(m.Pix[o+1])*s8, float32(m.Pix[o+2])*s8
			}
		}
	case *image.RGBA:
		// premultiplied; PNG decodes opaque truecolour images to RGBA (alpha 255)
		return func(y int, R, G, B []float32) {
			row := m.Pix[y*m.Stride : y*m.Stride+4*w]
			for x := 0; x < w; x++ {
				r, g, bb, a := row[4*x], row[4*x+1], row[4*x+2], row[4*x+3]
				switch a {
				case 255:
					R[x], G[x], B[x] = float32(r)*s8, float32(g)*s8, float32(bb)*s8
				case 0:
					R[x], G[x], B[x] = 0, 0, 0
				default:
					s := 1 / float32(a)
					R[x], G[x], B[x] = min(float32(r)*s, 1), min(float32(g)*s, 1), min(float32(bb)*s, 1)
				}
			}
		}
	case *image.Paletted:
		lut := make([][3]float32, 256)
		for i, c := range m.Palette {
			n := color.NRGBA64Model.Convert(c).(color.NRGBA64)
			lut[i] = [3]float32{float32(n.R) * s16, float32(n.G) * s16, float32(n.B) * s16}
		}
		return func(y int, R, G, B []float32) {
			for x, v := range m.Pix[y*m.Stride : y*m.Stride+w] {
				c := lut[v]
				R[x], G[x], B[x] = c[0], c[1], c[2]
			}
		}
	case *image.YCbCr:
		return func(y int, R, G, B []float32) {
			for x := 0; x < w; x++ {
				c := m.YCbCrAt(b.Min.X+x, b.Min.Y+y)
				r, g, bb := color.YCbCrToRGB(c.Y, c.Cb, c.Cr)
				R[x], G[x], B[x] = float32(r)*s8, float32(g)*s8, float32(bb)*s8
			}
		}
	}
	// NRGBA64 drops alpha without un-premultiplying twice and keeps 16 bits.
	return func(y int, R, G, B []float32) {
		for x := 0; x < w; x++ {
			c := color.NRGBA64Model.Convert(img.At(b.Min.X+x, b.Min.Y+y)).(color.NRGBA64)
			R[x], G[x], B[x] = float32(c.R)*s16, float32(c.G)*s16, float32(c.B)*s16
		}
	}
}

// oldResizeImage converts and resamples an image to w×h planes in one pass over
// its rows, as FromImage followed by Resize would, without ever holding the
// image as float32 planes (12 bytes a pixel): a large photo fitted to the
// network costs its decoded size and a few rows.
func oldResizeImage(img image.Image, w, h int) *Planes {
	b := img.Bounds()
	iw, ih := b.Dx(), b.Dy()
	if iw == w && ih == h {
		return oldFromImage(img)
	}
	cw := weights(iw, w)
	ch := weights(ih, h)
	conv := oldRowConverter(img)
	rows := make([]float32, 3*iw)
	tmp := make([]float32, 3*ih*w)
	for y := 0; y < ih; y++ {
		conv(y, rows[:iw], rows[iw:2*iw], rows[2*iw:])
		for c := 0; c < 3; c++ {
			row := rows[c*iw : (c+1)*iw]
			out := tmp[c*ih*w+y*w : c*ih*w+(y+1)*w]
			for x, wt := range cw {
				var s float32
				for k, v := range wt.w {
					s += v * row[wt.first+k]
				}
				out[x] = s
			}
		}
	}
	out := &Planes{W: w, H: h, Pix: make([]float32, 3*w*h)}
	for c := 0; c < 3; c++ {
		ct := tmp[c*ih*w : (c+1)*ih*w]
		dst := out.Pix[c*w*h : (c+1)*w*h]
		for y, wt := range ch {
			o := dst[y*w : (y+1)*w]
			for k, v := range wt.w {
				in := ct[(wt.first+k)*w : (wt.first+k+1)*w]
				for x := range o {
					o[x] += v * in[x]
				}
			}
		}
	}
	return out
}
