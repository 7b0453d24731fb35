package imageio

import (
	"fmt"
)

// ImageNetMean and ImageNetStd are torchvision's normalisation.
var (
	ImageNetMean = [3]float32{0.485, 0.456, 0.406}
	ImageNetStd  = [3]float32{0.229, 0.224, 0.225}
)

// Preprocess turns decoded images into backbone input.
type Preprocess struct {
	Resize  int        // images (or tiles) are resized to Resize×Resize
	Crop    int        // then centre-cropped to Crop×Crop when 0 < Crop < Resize
	Mean    [3]float32 // per-channel mean subtracted from [0,1] values
	Std     [3]float32 // per-channel divisor
	Tile    int        // >0: cut the image into Tile×Tile tiles at native resolution first
	Overlap int        // tile overlap in pixels
}

// InputSize is the side of the square network input.
func (p Preprocess) InputSize() int {
	if p.Crop > 0 && p.Crop < p.Resize {
		return p.Crop
	}
	return p.Resize
}

// Check validates the settings.
func (p Preprocess) Check() error {
	if p.Resize <= 0 {
		return fmt.Errorf("imageio: resize must be positive, got %d", p.Resize)
	}
	if p.Crop < 0 {
		return fmt.Errorf("imageio: crop must be ≥ 0, got %d", p.Crop)
	}
	for i, s := range p.Std {
		if !(s > 0) {
			return fmt.Errorf("imageio: std[%d] must be > 0, got %v", i, s)
		}
	}
	if p.Tile < 0 || p.Overlap < 0 || (p.Tile > 0 && p.Overlap >= p.Tile) {
		return fmt.Errorf("imageio: tile %d / overlap %d: need tile ≥ 0 and 0 ≤ overlap < tile", p.Tile, p.Overlap)
	}
	return nil
}

// Normalize writes planes (already InputSize square) as normalised CHW into dst.
func (p Preprocess) Normalize(pl *Planes, dst []float32) {
	n := pl.W * pl.H
	for c := 0; c < 3; c++ {
		m, s := p.Mean[c], 1/p.Std[c]
		src := pl.Pix[c*n : (c+1)*n]
		out := dst[c*n : (c+1)*n]
		for i, v := range src {
			out[i] = (v - m) * s
		}
	}
}

// Fit resizes and crops one image (or tile) to the network input, un-normalised.
func (p Preprocess) Fit(pl *Planes) *Planes {
	r := pl.Resize(p.Resize, p.Resize)
	if s := p.InputSize(); s < p.Resize {
		off := (p.Resize - s) / 2
		r = r.Crop(off, off, s, s)
	}
	return r
}

// Rect is a tile's place in its image.
type Rect struct{ X, Y, W, H int }

// Tiles returns the tile rectangles covering a w×h image: a grid of Tile-sized
// windows with stride Tile−Overlap, the last row and column shifted inward to end
// at the border. Without tiling, the whole image is one rectangle.
func (p Preprocess) Tiles(w, h int) ([]Rect, error) {
	if p.Tile <= 0 {
		return []Rect{{0, 0, w, h}}, nil
	}
	if w < p.Tile || h < p.Tile {
		return nil, fmt.Errorf("image of %dx%d is smaller than the %d-pixel tile", w, h, p.Tile)
	}
	starts := func(n int) []int {
		var s []int
		stride := p.Tile - p.Overlap
		for x := 0; ; x += stride {
			if x+p.Tile >= n {
				s = append(s, n-p.Tile)
				break
			}
			s = append(s, x)
		}
		return s
	}
	var r []Rect
	for _, y := range starts(h) {
		for _, x := range starts(w) {
			r = append(r, Rect{x, y, p.Tile, p.Tile})
		}
	}
	return r, nil
}

// Sample is one backbone input cut from an image: the whole image or a tile.
type Sample struct {
	Rect  Rect      // where it lies in the map: a tile's place in the image, or the whole fitted image
	Input []float32 // normalised CHW, InputSize²×3
}

// Prepare cuts decoded planes into backbone inputs and also returns the image as
// the anomaly map sees it: resized and cropped like the input, or, when tiling,
// the image itself. Each resize is done once.
func (p Preprocess) Prepare(pl *Planes) ([]Sample, *Planes, error) {
	rects, err := p.Tiles(pl.W, pl.H)
	if err != nil {
		return nil, nil, err
	}
	s := p.InputSize()
	out := make([]Sample, len(rects))
	view := pl
	for i, r := range rects {
		src := pl
		if p.Tile > 0 {
			src = pl.Crop(r.X, r.Y, r.W, r.H)
		}
		fitted := p.Fit(src)
		if p.Tile <= 0 {
			view = fitted
			r = Rect{0, 0, fitted.W, fitted.H} // the map's frame is the fitted image
		}
		in := make([]float32, 3*s*s)
		p.Normalize(fitted, in)
		out[i] = Sample{Rect: r, Input: in}
	}
	return out, view, nil
}
