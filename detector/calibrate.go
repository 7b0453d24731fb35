package detector

// Calibration: thresholds from out-of-sample scores of good images.
//
// Every path that sets thresholds runs through this file: the rule (Rule,
// CalibrateScores), the thinning of map pixels (PixelStride), and the ways of
// scoring training images out of sample:
//   - leave-one-out in closed form on the kept samples (fitter.leaveOneOut);
//   - k-fold cross-fitting, refitting per fold (fitter.crossFit);
//   - held-out images (Calibrate);
//   - the baselines, each image without its own features (calibrateBaseline);
//   - a sharded fit, leave-one-out from the merged statistics (CalibrateShard),
//     whose per-shard material merge combines under the same rule.

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"

	"github.com/padim/padim/detector/baseline"
	"github.com/padim/padim/detector/gauss"
)

// Rule turns out-of-sample scores of good images into thresholds (documented
// in the README): the image threshold is q + Margin·(q − m), with q the
// ImageQuantile and m the median of the images' scores; the pixel threshold is
// the same on their map pixels with the PixelQuantile. Quantiles interpolate
// linearly (NumPy's default).
//
// With TargetFPR α > 0 the image threshold is instead the conformal one: the
// ⌈(n+1)(1−α)⌉-th smallest of the n scores, so that under exchangeability a
// new good image scores above it with probability at most α. Where that rank
// exceeds n (too few images for α) the threshold is the largest score, and
// the calibration says so (Calibration.Warning).
type Rule struct {
	ImageQuantile float64
	PixelQuantile float64
	Margin        float64
	TargetFPR     float64 // > 0: conformal image threshold for this false-alarm rate
}

// Validate reports whether the quantiles are in (0,1], the margin ≥ 0 and
// the target false-alarm rate in [0,1).
func (r Rule) Validate() error {
	if !(r.ImageQuantile > 0 && r.ImageQuantile <= 1) || !(r.PixelQuantile > 0 && r.PixelQuantile <= 1) {
		return fmt.Errorf("threshold quantiles must be in (0,1], got %v and %v", r.ImageQuantile, r.PixelQuantile)
	}
	if !(r.Margin >= 0) || math.IsInf(r.Margin, 0) {
		return fmt.Errorf("threshold margin must be a finite number ≥ 0, got %v", r.Margin)
	}
	if !(r.TargetFPR >= 0 && r.TargetFPR < 1) {
		return fmt.Errorf("the target false-alarm rate must be in (0,1), got %v", r.TargetFPR)
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
	if r.TargetFPR > 0 {
		s = fmt.Sprintf("image: the ⌈(n+1)(1−%g)⌉-th smallest out-of-sample image score (conformal, target false-alarm rate %g)", r.TargetFPR, r.TargetFPR)
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

// RuleFor is the default rule of a calibration (CalibrateHoldout's, else
// cross-fitting's), with a conformal image threshold for targetFPR > 0.
func RuleFor(calibration string, targetFPR float64) Rule {
	r := CrossFitRule
	if calibration == CalibrateHoldout {
		r = HoldoutRule
	}
	r.TargetFPR = targetFPR
	return r
}

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

// ConformalRank is the rank (1-based) of the conformal threshold among n
// out-of-sample scores for a false-alarm rate alpha: ⌈(n+1)(1−α)⌉. It may
// exceed n: too few scores for that rate.
func ConformalRank(n int, alpha float64) int {
	// the product is often an integer up to rounding ((n+1)(1−α) = 99.000…01)
	return int(math.Ceil(float64(n+1)*(1-alpha) - 1e-9))
}

// ExpectedFalseAlarms is the rate at which a new good image scores above
// threshold when its score is exchangeable with the n sorted out-of-sample
// scores (and there are no ties): (n+1−m)/(n+1), m the scores ≤ threshold.
func ExpectedFalseAlarms(sorted []float32, threshold float32) float64 {
	m, _ := slices.BinarySearchFunc(sorted, threshold, func(v, t float32) int {
		if v <= t {
			return -1
		}
		return 1
	})
	return float64(len(sorted)+1-m) / float64(len(sorted)+1)
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
		TargetFPR:   1 - r.ImageQuantile,
	}
	if r.TargetFPR > 0 {
		c.TargetFPR, c.Conformal = r.TargetFPR, true
		k := min(ConformalRank(len(is), r.TargetFPR), len(is))
		c.Image = is[k-1]
	}
	c.ExpectedFPR = ExpectedFalseAlarms(is, c.Image)
	for _, l := range PixelLevels {
		c.PixelQuantiles = append(c.PixelQuantiles, float32(sortedQuantile(ps, l)))
	}
	return c, nil
}

// Warning says, when the thresholds cannot meet their target false-alarm
// rate (too few out-of-sample scores), by how much and what to do; "" otherwise.
func (c *Calibration) Warning() string {
	if !c.Conformal || c.ExpectedFPR <= c.TargetFPR || c.Images == 0 {
		return ""
	}
	need := int(math.Ceil(1/c.TargetFPR - 1 - 1e-9)) // the least n with ⌈(n+1)(1−α)⌉ ≤ n
	return fmt.Sprintf("a false-alarm rate of at most %.3g %% needs at least %d out-of-sample scores, there are %d: the image threshold is the largest, and a new good image scores above it at a rate of about %.3g %% (1/%d); train on more good images, or accept a higher rate",
		100*c.TargetFPR, need, c.Images, 100*c.ExpectedFPR, c.Images+1)
}

// PixelStride is the thinning of out-of-sample map pixels for the pixel
// threshold: every stride-th pixel of each map is kept, so that maps of
// totalPx pixels in all give at most MaxCalibrationPixels.
func PixelStride(totalPx int) int {
	return max(1, (totalPx+MaxCalibrationPixels-1)/MaxCalibrationPixels)
}

// thin appends every stride-th pixel of m to dst.
func thin(dst, m []float32, stride int) []float32 {
	for i := 0; i < len(m); i += stride {
		dst = append(dst, m[i])
	}
	return dst
}

// outOfSample collects good images' out-of-sample image scores and thinned
// map pixels, then turns them into thresholds.
type outOfSample struct {
	stride         int
	scores, pixels []float32
}

// newOutOfSample collects for maps of totalPx pixels in all.
func newOutOfSample(totalPx int) *outOfSample { return &outOfSample{stride: PixelStride(totalPx)} }

func (o *outOfSample) add(score float32, m []float32) {
	o.scores = append(o.scores, score)
	o.pixels = thin(o.pixels, m, o.stride)
}

// calibration applies the rule; how says how the scores were obtained.
func (o *outOfSample) calibration(rule Rule, how string) (*Calibration, error) {
	c, err := CalibrateScores(o.scores, o.pixels, rule)
	if err != nil {
		return nil, err
	}
	c.Rule = how + ": " + c.Rule
	return c, nil
}

// How the out-of-sample scores of each path are named in a model's rule.
const (
	LeaveOneOutHow = "leave-one-out (every image scored by the model of all the others)"
	HoldoutHow     = "held-out images scored by a model fitted without them"
)

func crossFitHow(k int) string {
	return fmt.Sprintf("cross-fitted over %d folds (every image scored by a model fitted without its fold)", k)
}

func baselineHow(n int) string {
	return fmt.Sprintf("%d training images each scored without its own features", n)
}

// filePixels is the map pixels of the files in all.
func filePixels(fs []fileSamples) int {
	total := 0
	for _, f := range fs {
		total += f.W * f.H
	}
	return total
}

// crossFit scores every file with a model fitted without its fold and derives
// thresholds from those scores. nil when there are fewer than 2 files.
func (f *fitter) crossFit(ctx context.Context, folds int, seed uint64, set ScoreSettings, rule Rule, progress Progress) (*Calibration, int, error) {
	nf := len(f.files)
	if nf < 2 {
		return nil, 0, nil
	}
	P, D := f.p.Layout().P(), f.p.Layout().D()
	oneEach := f.n == nf // one sample per image: no tiles
	if oneEach && f.eps > 0 && f.store.inMemory() && gauss.LeaveOneOutCost(f.n, P, D) <= LeaveOneOutMaxFlops {
		return f.leaveOneOut(ctx, set, rule, progress)
	}
	k := min(folds, nf)
	fold := make([]int, nf)
	for i, j := range rand.New(rand.NewPCG(seed, 0xc0ffee)).Perm(nf) {
		fold[j] = i % k
	}
	maps, err := mapMaker(f.p, set.Sigma)
	if err != nil {
		return nil, 0, err
	}
	oos := newOutOfSample(filePixels(f.files))
	var total *gauss.Stats
	if f.acc != nil {
		if total, err = f.acc.Stats(); err != nil {
			return nil, 0, err
		}
	}
	done := 0
	for fo := 0; fo < k; fo++ {
		if err := ctx.Err(); err != nil {
			return nil, 0, err
		}
		var in, out []int // samples in the fold, and the rest
		var files []fileSamples
		for i, fs := range f.files {
			for s := fs.first; s < fs.first+fs.n; s++ {
				if fold[i] == fo {
					in = append(in, s)
				} else {
					out = append(out, s)
				}
			}
			if fold[i] == fo {
				files = append(files, fs)
			}
		}
		var m gauss.Model
		if f.acc == nil {
			m, err = f.b.(gauss.LowRankBackend).FactorizeLowRank(f.store.all(), out, P, D, f.eps)
		} else {
			m, err = f.restModel(total, in)
		}
		if err != nil {
			return nil, 0, err
		}
		dist, err := f.scoreSamples(m, in)
		if err != nil {
			return nil, 0, err
		}
		off := 0
		for _, fs := range files {
			px, score, err := maps.Make(dist[off*P:(off+fs.n)*P], mapRects(fs.Rects), fs.W, fs.H)
			if err != nil {
				return nil, 0, fmt.Errorf("%s: %w", fs.Name, err)
			}
			off += fs.n
			oos.add(score, px)
			done++
			if progress != nil {
				progress("crossfit", done, nf)
			}
			if err := ctx.Err(); err != nil {
				return nil, 0, err
			}
		}
	}
	c, err := oos.calibration(rule, crossFitHow(k))
	return c, k, err
}

// leaveOneOut scores every image with the model of all the others (in closed
// form, exact) and derives thresholds from those scores.
func (f *fitter) leaveOneOut(ctx context.Context, set ScoreSettings, rule Rule, progress Progress) (*Calibration, int, error) {
	P, D := f.p.Layout().P(), f.p.Layout().D()
	var loo gauss.LeaveOneOuter = gauss.CPU{}
	if l, ok := f.b.(gauss.LeaveOneOuter); ok {
		loo = l
	}
	dist := make([]float32, f.n*P)
	if err := loo.LeaveOneOut(f.store.all(), gauss.All(f.n), P, D, f.eps, dist); err != nil {
		return nil, 0, err
	}
	if err := ctx.Err(); err != nil {
		return nil, 0, err
	}
	maps, err := mapMaker(f.p, set.Sigma)
	if err != nil {
		return nil, 0, err
	}
	oos := newOutOfSample(filePixels(f.files))
	for i, fs := range f.files {
		px, score, err := maps.Make(dist[fs.first*P:(fs.first+1)*P], mapRects(fs.Rects), fs.W, fs.H)
		if err != nil {
			return nil, 0, fmt.Errorf("%s: %w", fs.Name, err)
		}
		oos.add(score, px)
		if progress != nil {
			progress("crossfit", i+1, len(f.files))
		}
		if err := ctx.Err(); err != nil {
			return nil, 0, err
		}
	}
	c, err := oos.calibration(rule, LeaveOneOutHow)
	return c, f.n, err
}

// restModel factorises the full-form statistics of all samples but those listed.
func (f *fitter) restModel(total *gauss.Stats, fold []int) (gauss.Model, error) {
	acc, err := f.b.NewAccumulator(total.P, total.D)
	if err != nil {
		return nil, err
	}
	defer acc.Close()
	if err := f.feed(acc, fold); err != nil {
		return nil, err
	}
	rest, err := acc.Stats()
	if err != nil {
		return nil, err
	}
	if err := rest.RemoveFrom(total); err != nil {
		return nil, err
	}
	return f.b.Factorize(rest, f.eps)
}

// scoreSamples returns the patch distances of the listed stored samples under m.
func (f *fitter) scoreSamples(m gauss.Model, idx []int) ([]float32, error) {
	sc, err := gauss.NewModelScorer(f.b, m)
	if err != nil {
		return nil, err
	}
	defer sc.Close()
	P, pd := f.p.Layout().P(), f.store.pd
	dist := make([]float32, len(idx)*P)
	buf := make([]float32, min(len(idx), DefaultGroup)*pd)
	for lo := 0; lo < len(idx); lo += DefaultGroup {
		hi := min(lo+DefaultGroup, len(idx))
		if err := f.store.gather(idx[lo:hi], buf); err != nil {
			return nil, err
		}
		if err := sc.Score(buf[:(hi-lo)*pd], hi-lo, dist[lo*P:hi*P]); err != nil {
			return nil, err
		}
	}
	return dist, nil
}

// Calibrate scores held-out good images with m (fitted without them) and
// derives thresholds from their scores; tap, when set, also receives their
// embeddings (to fold them into the final fit).
func Calibrate(ctx context.Context, p *Pipeline, m gauss.Model, inputs []Input, set ScoreSettings, rule Rule, opt FitOptions, tap func(Chunk) error) (*Calibration, *FitReport, error) {
	set.Thresholds, set.KeepImages = nil, false
	sc, err := NewScorer(p, m, set)
	if err != nil {
		return nil, nil, err
	}
	defer sc.Close()
	rep := &FitReport{}
	oos := &outOfSample{}
	done := 0
	var tapc func(Chunk) error
	if tap != nil {
		tapc = func(c Chunk) error {
			rep.Samples += c.N
			return tap(c)
		}
	}
	err = sc.score(ctx, inputs, tapc, func(r *Result) error {
		done++
		if opt.Progress != nil {
			opt.Progress("calibrate", done, len(inputs))
		}
		if r.Err != nil {
			if !opt.SkipBad {
				return FileError{r.Index, r.Name, r.Err}
			}
			rep.Skipped = append(rep.Skipped, FileError{r.Index, r.Name, r.Err})
			return nil
		}
		rep.Files++
		// map sizes are known one result at a time: thin as if every map were this one's size
		oos.stride = PixelStride(len(inputs) * len(r.Map))
		oos.add(r.Score, r.Map)
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	if rep.Files == 0 {
		return nil, nil, errors.New("no held-out image could be read")
	}
	c, err := oos.calibration(rule, HoldoutHow)
	if err != nil {
		return nil, nil, err
	}
	return c, rep, nil
}

// MaxSPADECalibration bounds the training images SPADE scores (leaving each
// out) for its thresholds: its pixel search costs K·P²·D per image.
const MaxSPADECalibration = 16

// calibrateBaseline scores training images leaving their own features out
// (every one for PatchCore; at most MaxSPADECalibration, evenly spread, for
// SPADE) and derives thresholds from their maps and image scores.
func calibrateBaseline(p *Pipeline, fitted baseline.Model, store *sampleStore, fs []fileSamples, group []int32, cfg TrainConfig) (*Calibration, error) {
	sc, err := fitted.NewScorer()
	if err != nil {
		return nil, err
	}
	defer sc.Close()
	P := p.Layout().P()
	maps, err := mapMaker(p, cfg.Sigma)
	if err != nil {
		return nil, err
	}
	pick := fs
	if cfg.Method == baseline.MethodSPADE && len(fs) > MaxSPADECalibration {
		pick = nil
		for i := 0; i < MaxSPADECalibration; i++ {
			pick = append(pick, fs[i*len(fs)/MaxSPADECalibration])
		}
	}
	oos := newOutOfSample(filePixels(pick))
	for i, f := range pick {
		idx := make([]int, f.n)
		skip := make([]int32, f.n)
		for k := range idx {
			idx[k], skip[k] = f.first+k, group[f.first]
		}
		x := make([]float32, f.n*store.pd)
		if err := store.gather(idx, x); err != nil {
			return nil, err
		}
		dist, img := make([]float32, f.n*P), make([]float32, f.n)
		if err := sc.ScoreSamples(x, f.n, skip, dist, img); err != nil {
			return nil, err
		}
		px, _, err := maps.Make(dist, mapRects(f.Rects), f.W, f.H)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f.Name, err)
		}
		score := img[0]
		for _, v := range img {
			score = max(score, v)
		}
		oos.add(score, px)
		if cfg.Progress != nil {
			cfg.Progress("crossfit", i+1, len(pick))
		}
	}
	return oos.calibration(*cfg.Rule, baselineHow(len(pick)))
}

// ErrTiledShards is wrapped by the refusal to calibrate a tiled sharded fit.
var ErrTiledShards = errors.New("a sharded fit's thresholds come from leave-one-out scores of whole images; a tiled fit cross-fits folds of tiles, which shards cannot reproduce")

// ShardImage is one training image's out-of-sample material in a sharded
// fit's calibration (CalibrateShard).
type ShardImage struct {
	Index  int       // position in the inputs
	Name   string    // the input's Name
	Score  float32   // its image score under the Gaussian of every other image
	Pixels []float32 // its map pixels, thinned as one fit on every image thins them
	Err    error     // the image could not be read or used; nothing above is set
}

// CalibrateShard is the second pass of a sharded fit: it scores inputs,
// training images of the fit whose merged statistics t holds (LoadTotal),
// each by the Gaussian of every other image of t — leave-one-out from
// statistics, exact — makes their maps as one fit does, and hands fn each
// image's score and thinned pixels in input order. The shards' material
// together, under the fit's rule (CalibrateScores, LeaveOneOutHow), gives
// the thresholds one fit on every image would. It returns the pixel stride
// used. t.Stats is released once factorised.
func CalibrateShard(ctx context.Context, p *Pipeline, t *Total, inputs []Input, set ScoreSettings, fn func(ShardImage) error) (int, error) {
	m := t.Model
	if m.Preprocess.Tile > 0 {
		return 0, ErrTiledShards
	}
	if t.Stats == nil {
		return 0, errors.New("calibrating a shard needs the merged statistics (LoadTotal)")
	}
	if l := p.Layout(); l.P() != t.Stats.P || l.D() != t.Stats.D {
		return 0, fmt.Errorf("the statistics have P=%d D=%d but the pipeline embeds P=%d D=%d", t.Stats.P, t.Stats.D, l.P(), l.D())
	}
	if set.Backend == nil {
		set.Backend = gauss.CPU{}
	}
	gs, err := gauss.NewLeaveOneOutScorer(set.Backend, t.Stats, m.Eps)
	if err != nil {
		return 0, fmt.Errorf("leave-one-out scores from the merged statistics: %w", err)
	}
	t.Stats = nil
	set.Sigma, set.Thresholds, set.KeepImages = m.Sigma, nil, false
	sc, err := newScorer(p, gs, set)
	if err != nil {
		gs.Close()
		return 0, err
	}
	defer sc.Close()
	S := p.Preprocess().InputSize()
	stride := PixelStride(t.N * S * S) // the single fit's: N untiled maps of S² pixels
	err = sc.score(ctx, inputs, nil, func(r *Result) error {
		if r.Err != nil {
			return fn(ShardImage{Index: r.Index, Name: r.Name, Err: r.Err})
		}
		return fn(ShardImage{Index: r.Index, Name: r.Name, Score: r.Score, Pixels: thin(nil, r.Map, stride)})
	})
	return stride, err
}
