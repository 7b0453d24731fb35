package detector

import (
	"fmt"
	"math"
	"slices"
)

// Calibration rule (documented in the README): with q the 0.99 quantile and m the
// median of the held-out good images' scores, the image threshold is
// q + Margin·(q − m); the pixel threshold is the same rule on all held-out pixels
// with the 0.999 quantile. Quantiles interpolate linearly (NumPy's default). The
// margin widens the threshold past what a few dozen held-out images can show of
// the good tail, trading a little sensitivity for fewer false alarms.
const (
	ImageQuantile = 0.99
	PixelQuantile = 0.999
	Margin        = 0.25
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

// CalibrateScores derives thresholds from held-out good images' image scores and pixels.
func CalibrateScores(imageScores []float32, pixels []float32) (*Calibration, error) {
	if len(imageScores) == 0 || len(pixels) == 0 {
		return nil, fmt.Errorf("calibration needs held-out images")
	}
	rule := func(s []float32, q float64) float32 {
		hq, med := sortedQuantile(s, q), sortedQuantile(s, 0.5)
		return float32(hq + Margin*(hq-med))
	}
	is := slices.Clone(imageScores)
	slices.Sort(is)
	ps := slices.Clone(pixels)
	slices.Sort(ps)
	c := &Calibration{
		Thresholds:  Thresholds{Image: rule(is, ImageQuantile), Pixel: rule(ps, PixelQuantile)},
		Rule:        fmt.Sprintf("q%g+%g*(q%g-median) of held-out image scores; q%g+%g*(q%g-median) of held-out pixel scores", ImageQuantile, Margin, ImageQuantile, PixelQuantile, Margin, PixelQuantile),
		Images:      len(imageScores),
		ImageScores: slices.Clone(imageScores),
		PixelLevels: PixelLevels,
	}
	for _, l := range PixelLevels {
		c.PixelQuantiles = append(c.PixelQuantiles, float32(sortedQuantile(ps, l)))
	}
	return c, nil
}
