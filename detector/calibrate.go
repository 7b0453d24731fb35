package detector

import (
	"fmt"
	"math"
	"slices"
)

// Rule turns out-of-sample scores of good images into thresholds (documented
// in the README): the image threshold is q + Margin·(q − m), with q the
// ImageQuantile and m the median of the images' scores; the pixel threshold is
// the same on their map pixels with the PixelQuantile. Quantiles interpolate
// linearly (NumPy's default).
type Rule struct {
	ImageQuantile float64
	PixelQuantile float64
	Margin        float64
}

// Validate reports whether the quantiles are in (0,1] and the margin ≥ 0.
func (r Rule) Validate() error {
	if !(r.ImageQuantile > 0 && r.ImageQuantile <= 1) || !(r.PixelQuantile > 0 && r.PixelQuantile <= 1) {
		return fmt.Errorf("threshold quantiles must be in (0,1], got %v and %v", r.ImageQuantile, r.PixelQuantile)
	}
	if !(r.Margin >= 0) || math.IsInf(r.Margin, 0) {
		return fmt.Errorf("threshold margin must be a finite number ≥ 0, got %v", r.Margin)
	}
	return nil
}

func (r Rule) String() string {
	s := fmt.Sprintf("image: q%g of out-of-sample image scores", r.ImageQuantile)
	p := fmt.Sprintf("pixel: q%g of their map pixels", r.PixelQuantile)
	if r.Margin > 0 {
		s = fmt.Sprintf("image: q%g+%g·(q%g−median) of out-of-sample image scores", r.ImageQuantile, r.Margin, r.ImageQuantile)
		p = fmt.Sprintf("pixel: q%g+%g·(q%g−median) of their map pixels", r.PixelQuantile, r.Margin, r.PixelQuantile)
	}
	return s + "; " + p
}

// The default rules. Cross-fitted scores are as many as the good images and,
// left out one at a time, distributed like a new good image's: the image
// threshold is their 1−DefaultFalseAlarms quantile, no margin. Scores from a
// few held-out images show less of the good tail: a margin widens that rule.
var (
	DefaultFalseAlarms = 0.03
	CrossFitRule       = Rule{ImageQuantile: 1 - DefaultFalseAlarms, PixelQuantile: 0.999}
	HoldoutRule        = Rule{ImageQuantile: 0.99, PixelQuantile: 0.999, Margin: 0.25}
)

// PixelLevels are the quantile levels of held-out pixel scores stored in a model.
var PixelLevels = []float64{0.5, 0.9, 0.99, 0.999, 0.9999, 1}

// Quantile returns the q-quantile of v with linear interpolation; v is not modified.
func Quantile(v []float32, q float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	s := slices.Clone(v)
	slices.Sort(s)
	return sortedQuantile(s, q)
}

func sortedQuantile(s []float32, q float64) float64 {
	h := q * float64(len(s)-1)
	lo := int(math.Floor(h))
	hi := min(lo+1, len(s)-1)
	return float64(s[lo]) + (h-float64(lo))*(float64(s[hi])-float64(s[lo]))
}

// CalibrateScores derives thresholds from good images' out-of-sample image
// scores and map pixels.
func CalibrateScores(imageScores []float32, pixels []float32, r Rule) (*Calibration, error) {
	if len(imageScores) == 0 || len(pixels) == 0 {
		return nil, fmt.Errorf("calibration needs out-of-sample scores of good images")
	}
	if err := r.Validate(); err != nil {
		return nil, err
	}
	rule := func(s []float32, q float64) float32 {
		hq, med := sortedQuantile(s, q), sortedQuantile(s, 0.5)
		return float32(hq + r.Margin*(hq-med))
	}
	is := slices.Clone(imageScores)
	slices.Sort(is)
	ps := slices.Clone(pixels)
	slices.Sort(ps)
	c := &Calibration{
		Thresholds:  Thresholds{Image: rule(is, r.ImageQuantile), Pixel: rule(ps, r.PixelQuantile)},
		Rule:        r.String(),
		Images:      len(imageScores),
		ImageScores: slices.Clone(imageScores),
		PixelLevels: PixelLevels,
	}
	for _, l := range PixelLevels {
		c.PixelQuantiles = append(c.PixelQuantiles, float32(sortedQuantile(ps, l)))
	}
	return c, nil
}
