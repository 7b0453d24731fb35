// Package picture draws what a user looks at: a heatmap of the anomaly map, the
// heatmap over the image, the predicted mask, and defect boxes on the image.
package picture

import (
	"image"
	"image/color"
	"image/png"
	"io"
	"math"

	"github.com/padim/padim/detector/fileio/atomicfile"
	"github.com/padim/padim/detector/imageio"
	"github.com/padim/padim/detector/postproc"
)

// Range maps anomaly values to colours: Lo is cold, Hi is hot.
type Range struct{ Lo, Hi float32 }

// For returns r, or, when r is empty (no calibrated scale), the map's own range.
func (r Range) For(m []float32) Range {
	if r.Hi > r.Lo || len(m) == 0 {
		return r
	}
	lo, hi := m[0], m[0]
	for _, v := range m {
		lo, hi = min(lo, v), max(hi, v)
	}
	return Range{Lo: lo, Hi: hi}
}

// turbo approximates Google's Turbo colormap (polynomial fit by its authors).
func turbo(t float64) color.NRGBA {
	t = math.Max(0, math.Min(1, t))
	r := 0.13572138 + t*(4.61539260+t*(-42.66032258+t*(132.13108234+t*(-152.94239396+t*59.28637943))))
	g := 0.09140261 + t*(2.19418839+t*(4.84296658+t*(-14.18503333+t*(4.27729857+t*2.82956604))))
	b := 0.10667330 + t*(12.64194608+t*(-60.58204836+t*(110.36276771+t*(-89.90310912+t*27.34824973))))
	c := func(v float64) uint8 { return uint8(math.Max(0, math.Min(255, v*255+0.5))) }
	return color.NRGBA{c(r), c(g), c(b), 255}
}

// Heatmap colours a w×h map.
func Heatmap(m []float32, w, h int, rg Range) *image.NRGBA {
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	span := float64(rg.Hi - rg.Lo)
	if span <= 0 {
		span = 1
	}
	for i, v := range m[:w*h] {
		c := turbo((float64(v) - float64(rg.Lo)) / span)
		copy(img.Pix[4*i:], []uint8{c.R, c.G, c.B, 255})
	}
	return img
}

// Photo converts planes in [0,1] to an image.
func Photo(p *imageio.Planes) *image.NRGBA {
	img := image.NewNRGBA(image.Rect(0, 0, p.W, p.H))
	n := p.W * p.H
	for i := 0; i < n; i++ {
		for c := 0; c < 3; c++ {
			img.Pix[4*i+c] = uint8(math.Max(0, math.Min(255, float64(p.Pix[c*n+i])*255+0.5)))
		}
		img.Pix[4*i+3] = 255
	}
	return img
}

// Overlay blends the heatmap over the photo, more strongly where the map is hot.
func Overlay(photo, heat *image.NRGBA, m []float32, rg Range) *image.NRGBA {
	out := image.NewNRGBA(photo.Rect)
	span := float64(rg.Hi - rg.Lo)
	if span <= 0 {
		span = 1
	}
	for i := 0; i < len(m) && 4*i < len(out.Pix); i++ {
		a := 0.25 + 0.5*math.Max(0, math.Min(1, (float64(m[i])-float64(rg.Lo))/span))
		for c := 0; c < 3; c++ {
			out.Pix[4*i+c] = uint8(float64(photo.Pix[4*i+c])*(1-a) + float64(heat.Pix[4*i+c])*a)
		}
		out.Pix[4*i+3] = 255
	}
	return out
}

// Mask draws a binary mask, white on black; nil draws an empty one.
func Mask(mk *postproc.Mask, w, h int) *image.Gray {
	img := image.NewGray(image.Rect(0, 0, w, h))
	if mk != nil {
		for i, on := range mk.Pix {
			if on {
				img.Pix[i] = 255
			}
		}
	}
	return img
}

// Boxes draws the defect boxes in red on a copy of the photo.
func Boxes(photo *image.NRGBA, boxes []postproc.Box) *image.NRGBA {
	out := image.NewNRGBA(photo.Rect)
	copy(out.Pix, photo.Pix)
	red := color.NRGBA{255, 30, 30, 255}
	t := max(1, photo.Rect.Dx()/200)
	for _, b := range boxes {
		for k := 0; k < t; k++ {
			for x := b.X - k; x <= b.X+b.W-1+k; x++ {
				out.Set(x, b.Y-k, red)
				out.Set(x, b.Y+b.H-1+k, red)
			}
			for y := b.Y - k; y <= b.Y+b.H-1+k; y++ {
				out.Set(b.X-k, y, red)
				out.Set(b.X+b.W-1+k, y, red)
			}
		}
	}
	return out
}

// SavePNG writes an image atomically.
func SavePNG(path string, img image.Image) error {
	return atomicfile.Write(path, func(w io.Writer) error { return png.Encode(w, img) })
}
