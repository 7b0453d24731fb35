// Package postproc turns a pixel anomaly map into defects: threshold → binary
// mask → morphological opening with a disk → 8-connected components → boxes.
package postproc

import "math"

// Mask is a binary image, row-major.
type Mask struct {
	W, H int
	Pix  []bool
}

// Threshold marks the pixels whose score is strictly above t.
func Threshold(m []float32, w, h int, t float32) *Mask {
	mk := &Mask{W: w, H: h, Pix: make([]bool, w*h)}
	for i, v := range m[:w*h] {
		mk.Pix[i] = v > t
	}
	return mk
}

// disk returns the offsets of a disk of the given radius.
func disk(r int) [][2]int {
	var o [][2]int
	for dy := -r; dy <= r; dy++ {
		for dx := -r; dx <= r; dx++ {
			if dx*dx+dy*dy <= r*r {
				o = append(o, [2]int{dx, dy})
			}
		}
	}
	return o
}

// Open is erosion then dilation with a disk of the given radius; radius ≤ 0
// returns a copy. Pixels outside the image are ignored (neither erode nor dilate),
// so defects touching the border are not eaten away.
func Open(m *Mask, radius int) *Mask {
	if radius <= 0 {
		return &Mask{W: m.W, H: m.H, Pix: append([]bool(nil), m.Pix...)}
	}
	se := disk(radius)
	return morph(morph(m, se, true), se, false)
}

func morph(m *Mask, se [][2]int, erode bool) *Mask {
	out := &Mask{W: m.W, H: m.H, Pix: make([]bool, len(m.Pix))}
	for y := 0; y < m.H; y++ {
		for x := 0; x < m.W; x++ {
			v := erode
			for _, o := range se {
				xx, yy := x+o[0], y+o[1]
				if xx < 0 || yy < 0 || xx >= m.W || yy >= m.H {
					continue
				}
				if p := m.Pix[yy*m.W+xx]; erode && !p {
					v = false
					break
				} else if !erode && p {
					v = true
					break
				}
			}
			out.Pix[y*m.W+x] = v
		}
	}
	return out
}

// Box is one connected defect region.
type Box struct {
	X        int     `json:"x"` // bounding box in pixels of the map
	Y        int     `json:"y"`
	W        int     `json:"w"`
	H        int     `json:"h"`
	Area     int     `json:"area"`      // pixels in the region
	MaxScore float32 `json:"max_score"` // highest map value in the region
}

// Label numbers the 8-connected components of m: 0 is background, 1..n regions in
// raster order of their first pixel. It returns the labels and n.
func Label(m *Mask) ([]int32, int) {
	lab := make([]int32, len(m.Pix))
	n := int32(0)
	var stack []int
	for i, p := range m.Pix {
		if !p || lab[i] != 0 {
			continue
		}
		n++
		lab[i] = n
		stack = append(stack[:0], i)
		for len(stack) > 0 {
			j := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			x, y := j%m.W, j/m.W
			for dy := -1; dy <= 1; dy++ {
				for dx := -1; dx <= 1; dx++ {
					xx, yy := x+dx, y+dy
					if xx < 0 || yy < 0 || xx >= m.W || yy >= m.H {
						continue
					}
					k := yy*m.W + xx
					if m.Pix[k] && lab[k] == 0 {
						lab[k] = n
						stack = append(stack, k)
					}
				}
			}
		}
	}
	return lab, int(n)
}

// Boxes returns one box per 8-connected region of m, in raster order, with the
// region's maximum of the score map.
func Boxes(m *Mask, score []float32) []Box {
	lab, n := Label(m)
	if n == 0 {
		return nil
	}
	boxes := make([]Box, n)
	x1 := make([]int, n)
	y1 := make([]int, n)
	for i := range boxes {
		boxes[i] = Box{X: m.W, Y: m.H, MaxScore: float32(math.Inf(-1))}
	}
	for i, l := range lab {
		if l == 0 {
			continue
		}
		b := &boxes[l-1]
		x, y := i%m.W, i/m.W
		b.X, b.Y = min(b.X, x), min(b.Y, y)
		x1[l-1], y1[l-1] = max(x1[l-1], x), max(y1[l-1], y)
		b.Area++
		b.MaxScore = max(b.MaxScore, score[i])
	}
	for i := range boxes {
		boxes[i].W, boxes[i].H = x1[i]-boxes[i].X+1, y1[i]-boxes[i].Y+1
	}
	return boxes
}

// Detect runs the whole chain on one map: threshold t, opening radius, boxes.
func Detect(score []float32, w, h int, t float32, radius int) (*Mask, []Box) {
	m := Open(Threshold(score, w, h, t), radius)
	return m, Boxes(m, score)
}
