package shard

import (
	"math"

	"github.com/padim/padim/detector"
	"github.com/padim/padim/evaluate"
)

// Outcome is one test image of a sharded evaluation, read back.
type Outcome struct {
	Image   evaluate.Image
	Skipped *evaluate.Skipped // the image could not be scored; nothing else is set
	Map     []float32         // W×H
	Mask    []bool            // W×H ground truth
	W, H    int
}

// Evaluate computes the metrics of a whole evaluation from its images' outcomes,
// in input order, with evaluate.Run's computation (evaluate.Tally): the same
// curves over the same scores and pixels (maps of the first image's size), the
// same AUPRO, the same counts at the thresholds th (nil: none).
func Evaluate(outs []Outcome, th *detector.Thresholds) *evaluate.Evaluation {
	var t evaluate.Tally
	for _, o := range outs {
		if o.Skipped != nil {
			t.Skip(*o.Skipped)
			continue
		}
		t.Add(o.Image, o.Map, o.Mask, o.W, o.H)
	}
	return t.Finish(th)
}

// PackPixels is the exact pixel material of one evaluated image: its map
// (float32 little-endian) and, for a defective image, its ground-truth mask
// as bits (good images' masks are all zero).
func PackPixels(m []float32, mask []bool, defective bool) []byte {
	b := make([]byte, 4*len(m), 4*len(m)+(len(mask)+7)/8)
	for i, x := range m {
		u := math.Float32bits(x)
		b[4*i], b[4*i+1], b[4*i+2], b[4*i+3] = byte(u), byte(u>>8), byte(u>>16), byte(u>>24)
	}
	if defective {
		bits := make([]byte, (len(mask)+7)/8)
		for i, v := range mask {
			if v {
				bits[i/8] |= 1 << (i % 8)
			}
		}
		b = append(b, bits...)
	}
	return b
}

// UnpackPixels reverses PackPixels for a w×h map.
func UnpackPixels(b []byte, w, h int, defective bool) ([]float32, []bool, bool) {
	n := w * h
	want := 4 * n
	if defective {
		want += (n + 7) / 8
	}
	if len(b) != want {
		return nil, nil, false
	}
	m := make([]float32, n)
	for i := range m {
		m[i] = math.Float32frombits(uint32(b[4*i]) | uint32(b[4*i+1])<<8 | uint32(b[4*i+2])<<16 | uint32(b[4*i+3])<<24)
	}
	mask := make([]bool, n)
	if defective {
		bits := b[4*n:]
		for i := range mask {
			mask[i] = bits[i/8]&(1<<(i%8)) != 0
		}
	}
	return m, mask, true
}
