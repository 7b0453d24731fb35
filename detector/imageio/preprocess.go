package imageio

import (
	"fmt"
	"image"
	"math"
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
	Decode  Decoder    // how encoded images become pixels (DecodeGo: Go's decoders)
}

// InputSize is the side of the square network input.
func (p Preprocess) InputSize() int {
	if p.Crop > 0 && p.Crop < p.Resize {
		return p.Crop
	}
	return p.Resize
}

// Limits of the settings.
const (
	MaxSide    = 4096  // network input side (resize), at most
	MinTile    = 16    // tile side, at least
	MaxTile    = 16384 // tile side, at most
	MaxMeanStd = 1e3   // |mean| and std, at most
)

// Check validates the settings.
func (p Preprocess) Check() error {
	if p.Resize <= 0 || p.Resize > MaxSide {
		return fmt.Errorf("imageio: resize must be in [1, %d], got %d", MaxSide, p.Resize)
	}
	if p.Crop < 0 || p.Crop > p.Resize {
		return fmt.Errorf("imageio: crop must be in [0, resize %d], got %d", p.Resize, p.Crop)
	}
	for i := range p.Std {
		if m := float64(p.Mean[i]); math.IsNaN(m) || math.Abs(m) > MaxMeanStd {
			return fmt.Errorf("imageio: mean[%d] must be a number within ±%g, got %v", i, MaxMeanStd, p.Mean[i])
		}
		if s := float64(p.Std[i]); !(s > 0 && s <= MaxMeanStd) {
			return fmt.Errorf("imageio: std[%d] must be in (0, %g], got %v", i, MaxMeanStd, p.Std[i])
		}
	}
	if p.Tile != 0 && (p.Tile < MinTile || p.Tile > MaxTile) {
		return fmt.Errorf("imageio: tile must be 0 (none) or in [%d, %d], got %d", MinTile, MaxTile, p.Tile)
	}
	if p.Overlap < 0 || (p.Tile > 0 && 2*p.Overlap > p.Tile) || (p.Tile == 0 && p.Overlap != 0) {
		return fmt.Errorf("imageio: overlap %d with tile %d: need 0 ≤ overlap ≤ tile/2", p.Overlap, p.Tile)
	}
	if p.Decode >= numDecoders {
		return fmt.Errorf("imageio: %v: want go, turbojpeg-full or turbojpeg-dct", p.Decode)
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

// MaxTiles bounds the tiles one image may be cut into.
const MaxTiles = 4096

// Frame says how a map relates to the image it was computed from: the map is
// W×H; map pixel (x, y) covers image pixel (OffX + x·ScaleX, OffY + y·ScaleY).
type Frame struct {
	ImageW int     `json:"image_width"`
	ImageH int     `json:"image_height"`
	W      int     `json:"map_width"`
	H      int     `json:"map_height"`
	ScaleX float64 `json:"scale_x"`
	ScaleY float64 `json:"scale_y"`
	OffX   float64 `json:"offset_x"`
	OffY   float64 `json:"offset_y"`
}

// View prepares a decoded image for the backbone: it returns the planes the
// map is computed on (the image resized and cropped to the network input, or,
// when tiling, the image itself), the rectangles of the backbone inputs in
// them, and how the map's frame maps to the image's. Inputs are then cut
// lazily by Input, so a large tiled image never holds all its tiles at once.
func (p Preprocess) View(pl *Planes) (*Planes, []Rect, Frame, error) {
	f := Frame{ImageW: pl.W, ImageH: pl.H, ScaleX: 1, ScaleY: 1}
	if p.Tile > 0 {
		rects, err := p.Tiles(pl.W, pl.H)
		if err != nil {
			return nil, nil, f, err
		}
		if len(rects) > MaxTiles {
			return nil, nil, f, fmt.Errorf("a %dx%d image would be cut into %d tiles of %d² with overlap %d, more than %d: use larger tiles or less overlap", pl.W, pl.H, len(rects), p.Tile, p.Overlap, MaxTiles)
		}
		f.W, f.H = pl.W, pl.H
		return pl, rects, f, nil
	}
	v := p.Fit(pl)
	f.W, f.H = v.W, v.H
	f.ScaleX, f.ScaleY = float64(pl.W)/float64(p.Resize), float64(pl.H)/float64(p.Resize)
	if s := p.InputSize(); s < p.Resize {
		off := float64((p.Resize - s) / 2)
		f.OffX, f.OffY = off*f.ScaleX, off*f.ScaleY
	}
	return v, []Rect{{0, 0, v.W, v.H}}, f, nil
}

// ViewImage is View for a decoded image: a fitted view is resampled straight
// from the image's rows (its float32 planes at full size never exist); a tiled
// view holds the whole image as planes.
func (p Preprocess) ViewImage(img image.Image) (*Planes, []Rect, Frame, error) {
	b := img.Bounds()
	return p.viewOf(img, b.Dx(), b.Dy(), 1)
}

// Input writes the normalised backbone input for rectangle r of a view into
// dst (3·InputSize² values).
func (p Preprocess) Input(view *Planes, r Rect, dst []float32) {
	src := view
	if p.Tile > 0 {
		src = p.Fit(view.Crop(r.X, r.Y, r.W, r.H))
	}
	p.Normalize(src, dst)
}
