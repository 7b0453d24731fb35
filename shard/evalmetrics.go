package shard

import (
	"math"

	"github.com/padim/padim/detector"
	"github.com/padim/padim/detector/metrics"
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
// in input order, as evaluate.Run does on one machine: the same curves over the
// same scores and pixels (maps of the first image's size), the same AUPRO, the
// same counts at the thresholds th (nil: none).
func Evaluate(outs []Outcome, th *detector.Thresholds) *evaluate.Evaluation {
	ev := &evaluate.Evaluation{}
	var (
		scores []float32
		labels []bool
		maps   [][]float32
		masks  [][]bool
		w, h   int
	)
	for _, o := range outs {
		if o.Skipped != nil {
			ev.Skipped = append(ev.Skipped, *o.Skipped)
			continue
		}
		if w == 0 {
			w, h = o.W, o.H
		}
		ev.PerImage = append(ev.PerImage, o.Image)
		scores = append(scores, o.Image.Score)
		labels = append(labels, o.Image.Label == 1)
		if o.W == w && o.H == h {
			maps = append(maps, o.Map)
			masks = append(masks, o.Mask)
		}
	}
	ev.NImages = len(scores)
	for _, l := range labels {
		if l {
			ev.NDefective++
		}
	}
	nan := evaluate.Metric(math.NaN())
	ev.ImageAUROC, ev.ImageF1 = curveMetrics(scores, labels)
	var pix []float32
	var plab []bool
	for i := range maps {
		pix = append(pix, maps[i]...)
		plab = append(plab, masks[i]...)
	}
	ev.PixelAUROC, ev.PixelF1 = curveMetrics(pix, plab)
	ap, _ := metrics.AUPRO(maps, masks, w, h, evaluate.AUPROLimit)
	ev.AUPRO = evaluate.Metric(ap)
	ev.ImageF1Calibrated, ev.PixelF1Calibrated, ev.ImageTPR, ev.ImageFPR, ev.PixelTPR, ev.PixelFPR = nan, nan, nan, nan, nan, nan
	ev.ImageThreshold, ev.PixelThreshold = nan, nan
	if th != nil {
		ev.ImageThreshold, ev.PixelThreshold = evaluate.Metric(th.Image), evaluate.Metric(th.Pixel)
		c := metrics.At(scores, labels, th.Image)
		ev.ImageF1Calibrated, ev.ImageTPR, ev.ImageFPR = evaluate.Metric(c.F1()), evaluate.Metric(c.TPR()), evaluate.Metric(c.FPR())
		pc := metrics.At(pix, plab, th.Pixel)
		ev.PixelF1Calibrated, ev.PixelTPR, ev.PixelFPR = evaluate.Metric(pc.F1()), evaluate.Metric(pc.TPR()), evaluate.Metric(pc.FPR())
	}
	return ev
}

func curveMetrics(scores []float32, labels []bool) (auroc, f1 evaluate.Metric) {
	auroc, f1 = evaluate.Metric(math.NaN()), evaluate.Metric(math.NaN())
	c, err := metrics.NewCurve(scores, labels)
	if err != nil {
		return
	}
	if v, err := c.AUROC(); err == nil {
		auroc = evaluate.Metric(v)
	}
	if v, _, err := c.BestF1(); err == nil {
		f1 = evaluate.Metric(v)
	}
	return
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
