// Package metrics scores a detector against ground truth: image and pixel AUROC
// (exact, ties handled as sklearn's roc_auc_score does), best-threshold F1,
// confusion counts at a given threshold, and AUPRO up to a false-positive rate.
package metrics

import (
	"errors"
	"fmt"
	"math"
	"slices"

	"github.com/padim/padim/detector/postproc"
)

// ErrOneClass is returned when a metric needs both good and defective samples.
var ErrOneClass = errors.New("metrics: need both positive (defect) and negative (good) samples")

// Point is one threshold of a ROC sweep: predicting "defect" for score ≥ Threshold
// gives TP true and FP false positives.
type Point struct {
	Threshold float32
	TP, FP    int
}

// Sweep returns the ROC operating points at every distinct score, highest first,
// with the numbers of positives and negatives.
func Sweep(scores []float32, labels []bool) (pts []Point, pos, neg int, err error) {
	if len(scores) != len(labels) {
		return nil, 0, 0, fmt.Errorf("metrics: %d scores but %d labels", len(scores), len(labels))
	}
	var ps, ns []float32
	for i, s := range scores {
		if math.IsNaN(float64(s)) {
			return nil, 0, 0, fmt.Errorf("metrics: score %d is NaN", i)
		}
		if labels[i] {
			ps = append(ps, s)
		} else {
			ns = append(ns, s)
		}
	}
	slices.Sort(ps)
	slices.Sort(ns)
	i, j := len(ps)-1, len(ns)-1
	tp, fp := 0, 0
	for i >= 0 || j >= 0 {
		var t float32
		switch {
		case i < 0:
			t = ns[j]
		case j < 0:
			t = ps[i]
		default:
			t = max(ps[i], ns[j])
		}
		for i >= 0 && ps[i] == t {
			tp++
			i--
		}
		for j >= 0 && ns[j] == t {
			fp++
			j--
		}
		pts = append(pts, Point{t, tp, fp})
	}
	return pts, len(ps), len(ns), nil
}

// Curve is the ROC sweep of one set of scores, computed once and read by every
// threshold-free metric (sorting millions of pixels once, not per metric).
type Curve struct {
	Points   []Point
	Pos, Neg int
}

// NewCurve sweeps scores against labels.
func NewCurve(scores []float32, labels []bool) (*Curve, error) {
	pts, pos, neg, err := Sweep(scores, labels)
	if err != nil {
		return nil, err
	}
	return &Curve{pts, pos, neg}, nil
}

// AUROC is the area under the ROC curve (trapezoids through every distinct
// threshold, as sklearn.metrics.roc_auc_score).
func (c *Curve) AUROC() (float64, error) {
	if c.Pos == 0 || c.Neg == 0 {
		return math.NaN(), ErrOneClass
	}
	area := 0.0
	ptp, pfp := 0, 0
	for _, p := range c.Points {
		area += float64(p.FP-pfp) * float64(p.TP+ptp) / 2
		ptp, pfp = p.TP, p.FP
	}
	return area / (float64(c.Pos) * float64(c.Neg)), nil
}

// ROC returns the curve's (FPR, TPR) points from (0,0) to (1,1).
func (c *Curve) ROC() (fpr, tpr []float64, err error) {
	if c.Pos == 0 || c.Neg == 0 {
		return nil, nil, ErrOneClass
	}
	fpr, tpr = []float64{0}, []float64{0}
	for _, p := range c.Points {
		fpr = append(fpr, float64(p.FP)/float64(c.Neg))
		tpr = append(tpr, float64(p.TP)/float64(c.Pos))
	}
	return fpr, tpr, nil
}

// BestF1 is the highest F1 over all thresholds (predicting defect for score ≥ t),
// and the threshold that gives it.
func (c *Curve) BestF1() (f1 float64, threshold float32, err error) {
	if c.Pos == 0 {
		return math.NaN(), 0, ErrOneClass
	}
	for _, p := range c.Points {
		if f := 2 * float64(p.TP) / float64(c.Pos+p.TP+p.FP); f > f1 {
			f1, threshold = f, p.Threshold
		}
	}
	return f1, threshold, nil
}

// AUROC of scores against labels; see Curve.AUROC.
func AUROC(scores []float32, labels []bool) (float64, error) {
	c, err := NewCurve(scores, labels)
	if err != nil {
		return math.NaN(), err
	}
	return c.AUROC()
}

// ROC of scores against labels; see Curve.ROC.
func ROC(scores []float32, labels []bool) (fpr, tpr []float64, err error) {
	c, err := NewCurve(scores, labels)
	if err != nil {
		return nil, nil, err
	}
	return c.ROC()
}

// BestF1 of scores against labels; see Curve.BestF1.
func BestF1(scores []float32, labels []bool) (f1 float64, threshold float32, err error) {
	c, err := NewCurve(scores, labels)
	if err != nil {
		return math.NaN(), 0, err
	}
	return c.BestF1()
}

// Confusion counts decisions at one threshold.
type Confusion struct{ TP, FP, TN, FN int }

// At counts the decisions "defect iff score > t", the verdict rule of padim.
func At(scores []float32, labels []bool, t float32) Confusion {
	var c Confusion
	for i, s := range scores {
		switch pred := s > t; {
		case pred && labels[i]:
			c.TP++
		case pred:
			c.FP++
		case labels[i]:
			c.FN++
		default:
			c.TN++
		}
	}
	return c
}

// TPR is recall; NaN without positives.
func (c Confusion) TPR() float64 { return ratio(c.TP, c.TP+c.FN) }

// FPR is the false-positive rate; NaN without negatives.
func (c Confusion) FPR() float64 { return ratio(c.FP, c.FP+c.TN) }

// Precision is TP/(TP+FP); NaN with no positive predictions.
func (c Confusion) Precision() float64 { return ratio(c.TP, c.TP+c.FP) }

// F1 is 2TP/(2TP+FP+FN); NaN when there are no positives at all.
func (c Confusion) F1() float64 { return ratio(2*c.TP, 2*c.TP+c.FP+c.FN) }

func ratio(a, b int) float64 {
	if b == 0 {
		return math.NaN()
	}
	return float64(a) / float64(b)
}

// AUPRO is the area under the per-region-overlap curve up to FPR limit (0.3 in
// MVTec AD and anomalib), divided by limit. For each threshold, PRO is the mean,
// over every 8-connected ground-truth region of every image, of the fraction of
// the region's pixels above the threshold; FPR is over all good pixels. The curve
// is integrated with trapezoids through every distinct score and linearly
// interpolated at the limit.
func AUPRO(maps [][]float32, masks [][]bool, w, h int, limit float64) (float64, error) {
	if len(maps) != len(masks) {
		return math.NaN(), fmt.Errorf("metrics: %d maps but %d masks", len(maps), len(masks))
	}
	if !(limit > 0 && limit <= 1) {
		return math.NaN(), fmt.Errorf("metrics: AUPRO limit %v outside (0,1]", limit)
	}
	type px struct {
		s      float32
		region int32 // -1 good pixel
	}
	var all []px
	var sizes []int
	neg := 0
	for k := range maps {
		if len(maps[k]) != w*h || len(masks[k]) != w*h {
			return math.NaN(), fmt.Errorf("metrics: image %d map/mask size differs from %dx%d", k, w, h)
		}
		lab, n := postproc.Label(&postproc.Mask{W: w, H: h, Pix: masks[k]})
		base := len(sizes)
		sizes = append(sizes, make([]int, n)...)
		for i, s := range maps[k] {
			if math.IsNaN(float64(s)) {
				return math.NaN(), fmt.Errorf("metrics: image %d pixel %d is NaN", k, i)
			}
			r := int32(-1)
			if lab[i] > 0 {
				r = int32(base) + lab[i] - 1
				sizes[r]++
			} else {
				neg++
			}
			all = append(all, px{s, r})
		}
	}
	if len(sizes) == 0 || neg == 0 {
		return math.NaN(), ErrOneClass
	}
	slices.SortFunc(all, func(a, b px) int {
		switch {
		case a.s > b.s:
			return -1
		case a.s < b.s:
			return 1
		}
		return 0
	})
	nr := float64(len(sizes))
	area, fpr, pro := 0.0, 0.0, 0.0
	fp := 0
	for i := 0; i < len(all); {
		t := all[i].s
		np := pro
		for ; i < len(all) && all[i].s == t; i++ {
			if r := all[i].region; r < 0 {
				fp++
			} else {
				np += 1 / (float64(sizes[r]) * nr)
			}
		}
		nf := float64(fp) / float64(neg)
		if nf >= limit {
			// interpolate PRO at the limit and stop
			at := pro
			if nf > fpr {
				at = pro + (np-pro)*(limit-fpr)/(nf-fpr)
			}
			area += (limit - fpr) * (pro + at) / 2
			return area / limit, nil
		}
		area += (nf - fpr) * (pro + np) / 2
		fpr, pro = nf, np
	}
	return area / limit, nil
}
