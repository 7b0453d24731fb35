// Package evaluate scores an MVTec-layout test set and computes padim's metrics:
// image and pixel AUROC, AUPRO@0.3, best-threshold F1, and F1/TPR/FPR at the
// model's calibrated thresholds.
package evaluate

import (
	"context"
	"encoding/json"
	"errors"
	"math"

	"github.com/padim/padim/data/dataset"
	"github.com/padim/padim/detector"
	"github.com/padim/padim/detector/imageio"
	"github.com/padim/padim/detector/postproc"
	"github.com/padim/padim/evaluate/metrics"
)

// AUPROLimit is the false-positive-rate limit of AUPRO (MVTec AD, anomalib).
const AUPROLimit = 0.3

// Metric is a number that may be undefined (JSON null).
type Metric float64

// MarshalJSON writes NaN as null.
func (m Metric) MarshalJSON() ([]byte, error) {
	if math.IsNaN(float64(m)) || math.IsInf(float64(m), 0) {
		return []byte("null"), nil
	}
	return json.Marshal(float64(m))
}

// Image is one test image's outcome.
type Image struct {
	Name   string         `json:"name"`
	Path   string         `json:"path"`
	Type   string         `json:"type"`
	Label  int            `json:"label"` // 1 defective, 0 good
	Score  float32        `json:"score"`
	Defect *bool          `json:"defect,omitempty"` // verdict, when a threshold is known
	Boxes  []postproc.Box `json:"boxes,omitempty"`
}

// Skipped is a file that could not be scored.
type Skipped struct {
	Path  string `json:"path"`
	Error string `json:"error"`
}

// Evaluation holds every metric and the per-image outcomes.
type Evaluation struct {
	ImageAUROC        Metric    `json:"image_auroc"`
	PixelAUROC        Metric    `json:"pixel_auroc"`
	AUPRO             Metric    `json:"aupro"`
	ImageF1           Metric    `json:"image_f1"`
	PixelF1           Metric    `json:"pixel_f1"`
	ImageF1Calibrated Metric    `json:"image_f1_calibrated"`
	PixelF1Calibrated Metric    `json:"pixel_f1_calibrated"`
	ImageTPR          Metric    `json:"image_tpr"`
	ImageFPR          Metric    `json:"image_fpr"`
	PixelTPR          Metric    `json:"pixel_tpr"`
	PixelFPR          Metric    `json:"pixel_fpr"`
	ImageThreshold    Metric    `json:"image_threshold"`
	PixelThreshold    Metric    `json:"pixel_threshold"`
	NImages           int       `json:"n_images"`
	NDefective        int       `json:"n_defective"`
	PerImage          []Image   `json:"per_image"`
	Skipped           []Skipped `json:"skipped,omitempty"`

	// Curves for plots: image ROC and a thinned pixel ROC.
	ImageROC, PixelROC [2][]float64 `json:"-"`
}

// Run scores the items with the scorer's thresholds (if any). onImage, if set,
// sees every result with its ground-truth mask (for pictures); a nil result
// means the file was skipped.
func Run(ctx context.Context, sc *detector.Scorer, items []dataset.Item, skipBad bool, onImage func(*detector.Result, dataset.Item, []bool) error) (*Evaluation, error) {
	var t Tally
	paths := make([]string, len(items))
	for i, it := range items {
		paths[i] = it.Path
	}
	pre := sc.Pipeline().Preprocess()
	err := sc.Score(ctx, detector.FileInputs(paths), func(r *detector.Result) error {
		it := items[r.Index]
		if r.Err != nil {
			if !skipBad {
				return r.Err
			}
			t.Skip(Skipped{r.Name, r.Err.Error()})
			if onImage != nil {
				return onImage(nil, it, nil)
			}
			return nil
		}
		mask, err := Mask(it, pre, r.W, r.H)
		if err != nil {
			return err
		}
		img := Image{Name: it.Name(), Path: it.Path, Type: it.Type, Score: r.Score, Boxes: r.Boxes}
		if it.Defective {
			img.Label = 1
		}
		if r.Thresholds != nil {
			d := r.Defect
			img.Defect = &d
		}
		t.Add(img, r.Map, mask, r.W, r.H)
		if onImage != nil {
			return onImage(r, it, mask)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return t.Finish(sc.Thresholds()), nil
}

// Mask is an item's ground truth on a w×h map: its mask file resized as the
// image was, or all false for a good image.
func Mask(it dataset.Item, pre imageio.Preprocess, w, h int) ([]bool, error) {
	if !it.Defective {
		return make([]bool, w*h), nil
	}
	m, err := dataset.LoadMask(it.MaskPath, pre, w, h)
	if err != nil {
		return nil, err
	}
	if len(m) != w*h {
		return nil, errors.New("mask " + it.MaskPath + " does not match its image's size")
	}
	return m, nil
}

// Tally gathers the outcomes of a test set's images in input order and
// computes its metrics: the one computation behind Run and the merge of a
// sharded evaluation. The zero Tally is empty.
type Tally struct {
	ev     Evaluation
	scores []float32
	labels []bool
	maps   [][]float32 // of the first image's size; others count at image level only
	masks  [][]bool
	w, h   int
}

// Skip records an image that could not be scored.
func (t *Tally) Skip(s Skipped) { t.ev.Skipped = append(t.ev.Skipped, s) }

// Add records a scored image with its w×h map and ground-truth mask.
func (t *Tally) Add(img Image, m []float32, mask []bool, w, h int) {
	if t.w == 0 {
		t.w, t.h = w, h
	}
	t.ev.PerImage = append(t.ev.PerImage, img)
	t.scores = append(t.scores, img.Score)
	t.labels = append(t.labels, img.Label == 1)
	if w == t.w && h == t.h {
		t.maps = append(t.maps, m)
		t.masks = append(t.masks, mask)
	}
}

// Finish computes the metrics, with F1, TPR and FPR at th (nil: none, NaN).
func (t *Tally) Finish(th *detector.Thresholds) *Evaluation {
	ev := &t.ev
	scores, labels, maps, masks := t.scores, t.labels, t.maps, t.masks
	ev.NImages = len(scores)
	for _, l := range labels {
		if l {
			ev.NDefective++
		}
	}
	nan := Metric(math.NaN())
	ev.ImageAUROC, ev.ImageF1, ev.ImageROC = curveMetrics(scores, labels, 0)

	var pix []float32
	var plab []bool
	for i := range maps {
		pix = append(pix, maps[i]...)
		plab = append(plab, masks[i]...)
	}
	ev.PixelAUROC, ev.PixelF1, ev.PixelROC = curveMetrics(pix, plab, 2000)
	ap, _ := metrics.AUPRO(maps, masks, t.w, t.h, AUPROLimit)
	ev.AUPRO = Metric(ap)

	ev.ImageF1Calibrated, ev.PixelF1Calibrated, ev.ImageTPR, ev.ImageFPR, ev.PixelTPR, ev.PixelFPR = nan, nan, nan, nan, nan, nan
	ev.ImageThreshold, ev.PixelThreshold = nan, nan
	if th != nil {
		ev.ImageThreshold, ev.PixelThreshold = Metric(th.Image), Metric(th.Pixel)
		c := metrics.At(scores, labels, th.Image)
		ev.ImageF1Calibrated, ev.ImageTPR, ev.ImageFPR = Metric(c.F1()), Metric(c.TPR()), Metric(c.FPR())
		pc := metrics.At(pix, plab, th.Pixel)
		ev.PixelF1Calibrated, ev.PixelTPR, ev.PixelFPR = Metric(pc.F1()), Metric(pc.TPR()), Metric(pc.FPR())
	}
	return ev
}

// curveMetrics sweeps the scores once for AUROC, best F1 and the ROC curve
// (thinned to at most maxPoints when > 0); undefined metrics are NaN.
func curveMetrics(scores []float32, labels []bool, maxPoints int) (auroc, f1 Metric, roc [2][]float64) {
	auroc, f1 = Metric(math.NaN()), Metric(math.NaN())
	c, err := metrics.NewCurve(scores, labels)
	if err != nil {
		return
	}
	if v, err := c.AUROC(); err == nil {
		auroc = Metric(v)
	}
	if v, _, err := c.BestF1(); err == nil {
		f1 = Metric(v)
	}
	if fpr, tpr, err := c.ROC(); err == nil {
		roc = [2][]float64{fpr, tpr}
		if maxPoints > 0 {
			roc = thin(fpr, tpr, maxPoints)
		}
	}
	return
}

// thin keeps at most n points of a curve, always the first and last.
func thin(x, y []float64, n int) [2][]float64 {
	if len(x) <= n {
		return [2][]float64{x, y}
	}
	var ox, oy []float64
	step := float64(len(x)-1) / float64(n-1)
	for i := 0; i < n; i++ {
		k := int(math.Round(float64(i) * step))
		ox, oy = append(ox, x[k]), append(oy, y[k])
	}
	return [2][]float64{ox, oy}
}
