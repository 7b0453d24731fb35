package detector

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"time"

	"github.com/padim/padim/detector/baseline"
	"github.com/padim/padim/detector/embed"
	"github.com/padim/padim/detector/gauss"
	"github.com/padim/padim/detector/imageio"
)

// Defaults of the method.
const (
	DefaultDim     = 550
	DefaultSeed    = 1024
	DefaultEps     = 0.01
	DefaultHoldout = 0.1
	MinHoldout     = 3 // held-out images when holding out, at least (fewer when there are few images)
	DefaultFolds   = 5
	// LeaveOneOutMaxFlops bounds the work of exact leave-one-out scoring
	// (gauss.LeaveOneOutCost); past it, and for tiled images, cross-fitting
	// refits per fold.
	LeaveOneOutMaxFlops = 1e12
	// MaxCalibrationPixels bounds the out-of-sample map pixels that set the
	// pixel threshold; more are thinned evenly.
	MaxCalibrationPixels = 4 << 20
)

// The Gaussian forms a fit can take (TrainConfig.Gaussian).
const (
	FormAuto    = "auto" // low-rank when it is cheaper (N < (D+1)/2) and fits in memory, else full
	FormFull    = gauss.FormFull
	FormLowRank = gauss.FormLowRank
)

// How thresholds are derived (TrainConfig.Calibration).
const (
	CalibrateCrossFit = "crossfit" // every image scored by a model fitted without it
	CalibrateHoldout  = "holdout"  // a held-out part scored by a model fitted on the rest
	CalibrateNone     = "none"     // no thresholds
)

// Progress is told how many of a stage's inputs are done.
type Progress func(stage string, done, total int)

// FitOptions say how to stream images into statistics.
type FitOptions struct {
	SkipBad  bool     // record unreadable inputs and go on (else the first one stops the fit)
	Progress Progress // optional
	Stage    string   // the progress stage name (default "fit")
}

// FitReport says what a fit used and skipped.
type FitReport struct {
	Files   int // inputs that were read
	Samples int // backbone inputs (tiles count one each)
	Skipped []FileError
}

// Fit streams good images through the pipeline into full-form statistics on
// the backend.
func Fit(ctx context.Context, p *Pipeline, inputs []Input, b gauss.Backend, opt FitOptions) (*gauss.Stats, *FitReport, error) {
	acc, err := b.NewAccumulator(p.Layout().P(), p.Layout().D())
	if err != nil {
		return nil, nil, err
	}
	defer acc.Close()
	rep, err := streamFit(ctx, p, inputs, opt, func(c Chunk) error { return acc.Add(c.Emb, c.N) })
	if err != nil {
		return nil, nil, err
	}
	s, err := acc.Stats()
	if err != nil {
		return nil, nil, err
	}
	return s, rep, nil
}

// streamFit runs inputs through the pipeline, handing each chunk to add.
func streamFit(ctx context.Context, p *Pipeline, inputs []Input, opt FitOptions, add func(Chunk) error) (*FitReport, error) {
	stage := opt.Stage
	if stage == "" {
		stage = "fit"
	}
	rep := &FitReport{}
	done := 0
	err := p.Embeddings(ctx, inputs, DefaultGroup, func(c Chunk) error {
		for _, f := range c.Failed {
			if !opt.SkipBad {
				return f
			}
			rep.Skipped = append(rep.Skipped, f)
		}
		rep.Files += len(c.Items)
		done += len(c.Items) + len(c.Failed)
		if c.N > 0 {
			t := time.Now()
			if err := add(c); err != nil {
				return err
			}
			p.Timings.Since(stage, t, c.N)
			rep.Samples += c.N
		}
		if opt.Progress != nil {
			opt.Progress(stage, done, len(inputs))
		}
		return nil
	})
	return rep, err
}

// TrainConfig says how to train.
type TrainConfig struct {
	Preprocess   imageio.Preprocess
	Pipeline     PipelineOptions
	Dim          int    // channels kept at random; ≤0 or ≥ total keeps all
	Seed         uint64 // seed of the channel subset, the folds and the hold-out split
	Channels     []int  // explicit channel indices; overrides Dim and Seed
	Eps          float64
	Sigma        float64
	Gaussian     string  // FormAuto (default), FormFull or FormLowRank
	Calibration  string  // CalibrateCrossFit (default), CalibrateHoldout or CalibrateNone
	Folds        int     // cross-fitting folds (DefaultFolds)
	Holdout      float64 // fraction held out with CalibrateHoldout (DefaultHoldout)
	SampleMemory int64   // bound on kept training embeddings (DefaultSampleMemory)
	Rule         *Rule   // how scores become thresholds (default: CrossFitRule or HoldoutRule)
	TargetFPR    float64 // > 0: the image threshold is the conformal one for this false-alarm rate (Rule.TargetFPR)
	MaxMemory    int64   // refuse a fit whose statistics would need more (0: no check)
	Method       string  // MethodPaDiM (default), baseline.MethodSPADE or baseline.MethodPatchCore
	K            int     // SPADE: nearest training images (baseline.DefaultK)
	Coreset      float64 // PatchCore: fraction of the patch features kept (baseline.DefaultCoreset)
	Reweight     int     // PatchCore: neighbours of the reweighted image score (baseline.DefaultReweightB; negative: none)
	Backend      gauss.Backend
	BackboneName string
	BackboneONNX []byte
	SkipBadFiles bool // report unreadable files and go on
	KeepStats    bool // return the final fit's statistics or samples (to save a shard)
	Progress     Progress
}

// TrainReport says what training used and skipped.
type TrainReport struct {
	Trained, HeldOut int // files in the fit, and held out (CalibrateHoldout)
	Samples          int // backbone inputs in the final fit (tiles count one each)
	Skipped          []FileError
	Form             string   // the Gaussian form chosen
	FormReason       string   // why
	Folds            int      // cross-fitting folds used (0: none)
	Notes            []string // things the user should know (no thresholds, form switched…)
	Timings          *Timings // per stage, from the pipeline
	Shard            *Shard   // the final fit's statistics or samples, when asked (KeepStats)
}

// Train fits a model on the good images in files: it streams them through the
// pipeline into the Gaussian's statistics (and keeps their embeddings when the
// low-rank form or cross-fitting needs them), derives thresholds from
// out-of-sample scores, and factorises the final model on every image.
func Train(ctx context.Context, ext Extractor, files []string, cfg TrainConfig) (*Model, *TrainReport, error) {
	if err := cfg.defaults(); err != nil {
		return nil, nil, err
	}
	if cfg.Method != MethodPaDiM {
		m, rep, err := trainBaseline(ctx, ext, files, cfg)
		if err == nil {
			err = ctx.Err() // stopped during its last phase
		}
		if err != nil {
			return nil, nil, err
		}
		return m, rep, nil
	}
	taps := ext.Taps()
	total := embed.TotalChannels(taps)
	channels, seed := cfg.Channels, cfg.Seed
	if channels == nil {
		channels = embed.RandomChannels(total, cfg.Dim, cfg.Seed)
	} else {
		seed = 0
	}
	p, err := NewPipeline(ext, channels, cfg.Preprocess, cfg.Pipeline.stagedBy(cfg.Backend))
	if err != nil {
		return nil, nil, err
	}
	if err := cfg.checkMemory(len(files), p.Layout().P(), p.Layout().D()); err != nil {
		return nil, nil, err
	}
	rep := &TrainReport{Timings: p.Timings}
	fitFiles, hold := files, []string(nil)
	if cfg.Calibration == CalibrateHoldout {
		// the hold-out is drawn among readable images, so that unreadable ones
		// cannot shrink it (or the fit) by chance
		var ok []string
		for i, f := range files {
			if _, err := p.header(Input{Name: f}); err != nil {
				if !cfg.SkipBadFiles {
					return nil, nil, err
				}
				rep.Skipped = append(rep.Skipped, FileError{i, f, err})
				continue
			}
			ok = append(ok, f)
		}
		files = ok
		if len(files) < 2 {
			return nil, nil, fmt.Errorf("holding images out for thresholds needs at least 2 images, got %d: add images, or cross-fit, or train without thresholds", len(files))
		}
		fitFiles, hold = splitHoldout(files, cfg.Holdout, cfg.Seed)
	}
	f := newFitter(p, cfg, len(files))
	defer f.close()

	// 1. Stream the images into the fit.
	fopt := FitOptions{SkipBad: cfg.SkipBadFiles, Progress: cfg.Progress}
	frep, err := streamFit(ctx, p, FileInputs(fitFiles), fopt, f.add)
	if err != nil {
		return nil, nil, err
	}
	rep.Trained, rep.Skipped = frep.Files, append(rep.Skipped, frep.Skipped...)
	// every phase below checks for cancellation before it starts (and the
	// long ones inside), so that a signal at any moment stops the training
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	if f.n == 0 {
		if len(rep.Skipped) > 0 {
			return nil, nil, fmt.Errorf("no readable training image: %d could not be used, the first for this reason: %w", len(rep.Skipped), rep.Skipped[0])
		}
		return nil, nil, errors.New("no readable training image")
	}
	if constant, err := f.constant(); err != nil {
		return nil, nil, err
	} else if constant {
		return nil, nil, fmt.Errorf("the backbone's features do not change across the %d training images: it cannot tell images apart (a broken or foreign backbone?)", f.n)
	}
	set := ScoreSettings{Backend: cfg.Backend, Sigma: cfg.Sigma}
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}

	// 2. Thresholds from out-of-sample scores.
	var calib *Calibration
	switch cfg.Calibration {
	case CalibrateCrossFit:
		t := time.Now()
		calib, rep.Folds, err = f.crossFit(ctx, cfg.Folds, cfg.Seed, set, *cfg.Rule, cfg.Progress)
		if err != nil {
			return nil, nil, err
		}
		p.Timings.Since("crossfit", t, len(f.files))
		if calib == nil {
			rep.Notes = append(rep.Notes, "one readable image: no thresholds (cross-fitting needs at least 2 images); score with a threshold of your own")
		}
	case CalibrateHoldout:
		t := time.Now()
		rest, err := f.model()
		if err != nil {
			return nil, nil, err
		}
		c, crep, err := Calibrate(ctx, p, rest, FileInputs(hold), set, *cfg.Rule, fopt, f.add)
		if err != nil {
			return nil, nil, err
		}
		p.Timings.Since("calibrate", t, crep.Files)
		rep.HeldOut, rep.Skipped = crep.Files, append(rep.Skipped, crep.Skipped...)
		calib = c
	}

	if calib != nil && calib.Warning() != "" {
		rep.Notes = append(rep.Notes, calib.Warning())
	}

	// 3. The final model on every usable image.
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	if cfg.Progress != nil {
		cfg.Progress("factorize", 0, 1)
	}
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	t := time.Now()
	g, err := f.model()
	if err != nil {
		return nil, nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	p.Timings.Since("factorize", t, 1)
	if cfg.Progress != nil {
		cfg.Progress("factorize", 1, 1)
	}
	rep.Samples, rep.Form, rep.FormReason = f.n, g.Form(), f.reason
	rep.Notes = append(rep.Notes, f.notes...)
	sum := sha256.Sum256(cfg.BackboneONNX)
	m := &Model{
		Meta: Meta{
			Created:        time.Now().UTC().Truncate(time.Second),
			BackboneName:   cfg.BackboneName,
			BackboneSHA256: hex.EncodeToString(sum[:]),
			Taps:           taps,
			Preprocess:     cfg.Preprocess,
			Eps:            cfg.Eps,
			NTrain:         f.n,
			Seed:           seed,
			TotalChannels:  total,
			Sigma:          cfg.Sigma,
			GridH:          p.Layout().H,
			GridW:          p.Layout().W,
		},
		Channels:     channels,
		Gaussian:     g,
		Calibration:  calib,
		BackboneONNX: cfg.BackboneONNX,
	}
	if cfg.KeepStats {
		if rep.Shard, err = f.shard(); err != nil {
			return nil, nil, err
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	return m, rep, nil
}

// ErrMemory is wrapped by errors about work that would not fit the memory budget.
var ErrMemory = errors.New("over the memory budget")

// checkMemory refuses, before any work, a fit whose statistics or kept
// samples would not fit cfg.MaxMemory (n images: at least n samples).
func (cfg *TrainConfig) checkMemory(n, P, D int) error {
	if cfg.MaxMemory <= 0 {
		return nil
	}
	gib := func(b int64) float64 { return float64(b) / (1 << 30) }
	cfg.SampleMemory = min(cfg.SampleMemory, cfg.MaxMemory/2)
	per := int64(P) * int64(gauss.PackedLen(D)+D)
	full := per*8 + per*4 + DefaultStageBytesCPU // statistics, model, staging
	if cfg.Calibration == CalibrateCrossFit {
		full += per * 8 // a fold's statistics when refitting per fold
	}
	samples := int64(n) * int64(P) * int64(D) * 4
	switch {
	case (cfg.Gaussian == FormFull || cfg.Gaussian == FormAuto && !gauss.LowRankCheaper(n, D)) && full > cfg.MaxMemory:
		return fmt.Errorf("%w: a full-form fit of %d patches × %d channels needs about %.1f GiB (statistics, model, staging), more than the %.1f GiB budget: keep fewer channels, or allow more memory",
			ErrMemory, P, D, gib(full), gib(cfg.MaxMemory))
	case cfg.Gaussian == FormLowRank && samples > cfg.SampleMemory:
		return fmt.Errorf("%w: the low-rank form keeps every embedding: %d images × %d patches × %d channels need %.1f GiB, more than %.1f GiB (half the budget): use the full form, fewer images, or allow more memory",
			ErrMemory, n, P, D, gib(samples), gib(cfg.SampleMemory))
	}
	return nil
}

// DefaultStageBytesCPU is the CPU accumulator's staging buffer (gauss.DefaultStageBytes).
const DefaultStageBytesCPU = gauss.DefaultStageBytes

func (cfg *TrainConfig) defaults() error {
	if cfg.Backend == nil {
		cfg.Backend = gauss.CPU{}
	}
	if cfg.Gaussian == "" {
		cfg.Gaussian = FormAuto
	}
	if cfg.Calibration == "" {
		cfg.Calibration = CalibrateCrossFit
	}
	if cfg.Folds == 0 {
		cfg.Folds = DefaultFolds
	}
	if cfg.Holdout == 0 {
		cfg.Holdout = DefaultHoldout
	}
	if cfg.SampleMemory <= 0 {
		cfg.SampleMemory = DefaultSampleMemory
	}
	if cfg.Method == "" {
		cfg.Method = MethodPaDiM
	}
	if cfg.K == 0 {
		cfg.K = baseline.DefaultK
	}
	if cfg.Coreset == 0 {
		cfg.Coreset = baseline.DefaultCoreset
	}
	switch {
	case cfg.Reweight == 0:
		cfg.Reweight = baseline.DefaultReweightB
	case cfg.Reweight < 0:
		cfg.Reweight = 0
	}
	switch cfg.Method {
	case MethodPaDiM:
	case baseline.MethodSPADE, baseline.MethodPatchCore:
		if cfg.Calibration == CalibrateHoldout {
			return fmt.Errorf("%s sets thresholds by scoring each training image without its own features; hold-out is for padim", cfg.Method)
		}
	default:
		return fmt.Errorf("unknown method %q (padim, spade, patchcore)", cfg.Method)
	}
	if cfg.K < 1 || cfg.K > 100000 || !(cfg.Coreset > 0 && cfg.Coreset <= 1) {
		return fmt.Errorf("SPADE's K %d must be in [1, 100000] and PatchCore's coreset fraction %v in (0, 1]", cfg.K, cfg.Coreset)
	}
	if cfg.Rule == nil {
		r := RuleFor(cfg.Calibration, cfg.TargetFPR)
		cfg.Rule = &r
	} else if cfg.TargetFPR > 0 {
		r := *cfg.Rule
		r.TargetFPR = cfg.TargetFPR
		cfg.Rule = &r
	}
	if err := cfg.Rule.Validate(); err != nil {
		return err
	}
	switch cfg.Gaussian {
	case FormAuto, FormFull, FormLowRank:
	default:
		return fmt.Errorf("unknown Gaussian form %q (auto, full, lowrank)", cfg.Gaussian)
	}
	switch cfg.Calibration {
	case CalibrateCrossFit, CalibrateHoldout, CalibrateNone:
	default:
		return fmt.Errorf("unknown calibration %q (crossfit, holdout, none)", cfg.Calibration)
	}
	if cfg.Folds < 2 {
		return fmt.Errorf("cross-fitting needs at least 2 folds, got %d", cfg.Folds)
	}
	if !(cfg.Holdout > 0 && cfg.Holdout < 1) {
		return fmt.Errorf("the hold-out fraction must be in (0,1), got %v", cfg.Holdout)
	}
	if _, lr := cfg.Backend.(gauss.LowRankBackend); cfg.Gaussian == FormLowRank && !lr {
		return fmt.Errorf("the %s backend has no low-rank form", cfg.Backend.Name())
	}
	if cfg.Gaussian == FormLowRank && cfg.Eps == 0 {
		return errors.New("the low-rank form needs a regularisation eps > 0")
	}
	return nil
}

// fileSamples is a readable training file and where its samples are.
type fileSamples struct {
	ItemInfo
	first, n int // its samples in the fit's order
}

// fitter collects a fit: full-form statistics, or the embeddings the low-rank
// form and cross-fitting need, switching from samples to statistics when the
// low-rank form stops paying (auto) or the embeddings outgrow their budget.
type fitter struct {
	p      *Pipeline
	b      gauss.Backend
	eps    float64
	want   string
	cross  bool // cross-fitting needs the samples whatever the form
	store  *sampleStore
	acc    gauss.Accumulator
	files  []fileSamples
	n      int
	reason string
	notes  []string
}

func newFitter(p *Pipeline, cfg TrainConfig, expect int) *fitter {
	f := &fitter{p: p, b: cfg.Backend, eps: cfg.Eps, want: cfg.Gaussian, cross: cfg.Calibration == CalibrateCrossFit}
	if f.want != FormFull || f.cross {
		f.store = newSampleStore(p.Layout().P()*p.Layout().D(), cfg.SampleMemory, expect)
	}
	if f.want == FormFull {
		f.reason = "asked for"
	} else if f.eps == 0 {
		f.want, f.reason = FormFull, "eps 0: the low-rank form needs a regularisation eps > 0"
	} else if _, ok := f.b.(gauss.LowRankBackend); !ok {
		f.want, f.reason = FormFull, fmt.Sprintf("the %s backend has no low-rank form", f.b.Name())
	}
	return f
}

// add takes one chunk of the training stream.
func (f *fitter) add(c Chunk) error {
	first := map[int]int{}
	for s, src := range c.Source {
		if _, ok := first[src]; !ok {
			first[src] = s
		}
	}
	for _, it := range c.Items {
		f.files = append(f.files, fileSamples{ItemInfo: it, first: f.n + first[it.Index], n: len(it.Rects)})
	}
	return f.addEmb(c.Emb, c.N)
}

func (f *fitter) addEmb(emb []float32, n int) error {
	D := f.p.Layout().D()
	if f.store != nil {
		if err := f.store.add(emb, n); err != nil {
			return err
		}
	}
	f.n += n
	if f.acc != nil {
		return f.acc.Add(emb, n)
	}
	switch {
	case f.want == FormFull:
	case f.store.inMemory() && gauss.LowRankCheaper(f.n, D):
		return nil // still low-rank
	case f.want == FormLowRank && !f.store.inMemory():
		return fmt.Errorf("the low-rank form keeps every training embedding: %d samples take %.1f GiB, over the %.1f GiB budget (train with the full form, or raise the memory budget)",
			f.n, float64(f.store.bytes(f.n))/(1<<30), float64(f.store.budget)/(1<<30))
	case f.want == FormLowRank:
		return nil // asked for, even where it costs more
	case !f.store.inMemory():
		f.reason = fmt.Sprintf("the low-rank form's %d embeddings outgrew the %.1f GiB budget", f.n, float64(f.store.budget)/(1<<30))
	default:
		f.reason = fmt.Sprintf("%d samples ≥ (D+1)/2 = %.1f: the full form is smaller and cheaper", f.n, float64(D+1)/2)
	}
	// switch to (or start) the full form's statistics
	acc, err := f.b.NewAccumulator(f.p.Layout().P(), D)
	if err != nil {
		return err
	}
	f.acc = acc
	if f.store != nil {
		if err := f.feed(acc, gauss.All(f.store.n)); err != nil {
			return err
		}
		if !f.cross {
			f.store.close()
			f.store = nil
		}
	} else {
		return acc.Add(emb, n)
	}
	return nil
}

// feed adds the listed stored samples to acc, a group at a time.
func (f *fitter) feed(acc gauss.Accumulator, idx []int) error {
	pd := f.store.pd
	buf := make([]float32, min(len(idx), DefaultGroup)*pd)
	for lo := 0; lo < len(idx); lo += DefaultGroup {
		hi := min(lo+DefaultGroup, len(idx))
		if err := f.store.gather(idx[lo:hi], buf); err != nil {
			return err
		}
		if err := acc.Add(buf[:(hi-lo)*pd], hi-lo); err != nil {
			return err
		}
	}
	return nil
}

// constant reports whether every training sample has the same embedding
// (with two or more samples): a backbone that sees nothing.
func (f *fitter) constant() (bool, error) {
	if f.n < 2 {
		return false, nil
	}
	if f.acc == nil {
		x, pd := f.store.all(), f.store.pd
		for i := pd; i < len(x); i++ {
			if x[i] != x[i%pd] {
				return false, nil
			}
		}
		return true, nil
	}
	s, err := f.acc.Stats()
	if err != nil {
		return false, err
	}
	L := gauss.PackedLen(s.D)
	for p := 0; p < s.P; p++ {
		m2 := s.M2[p*L : (p+1)*L]
		for i := 0; i < s.D; i++ {
			if m2[i*(i+1)/2+i] != 0 {
				return false, nil
			}
		}
	}
	return true, nil
}

// model factorises what has been collected, in the form chosen.
func (f *fitter) model() (gauss.Model, error) {
	if f.acc != nil {
		if ip, ok := f.acc.(gauss.InPlaceFactorizer); ok {
			return ip.Factorize(f.eps)
		}
		s, err := f.acc.Stats()
		if err != nil {
			return nil, err
		}
		return f.b.Factorize(s, f.eps)
	}
	if f.reason == "" {
		if f.want == FormLowRank {
			f.reason = "asked for"
		} else {
			f.reason = fmt.Sprintf("%d samples < (D+1)/2 = %.1f: the low-rank form is smaller and cheaper", f.n, float64(f.p.Layout().D()+1)/2)
		}
	}
	P, D := f.p.Layout().P(), f.p.Layout().D()
	return f.b.(gauss.LowRankBackend).FactorizeLowRank(f.store.all(), gauss.All(f.n), P, D, f.eps)
}

// shard returns the fit's statistics, or its samples when they are in memory
// and smaller.
func (f *fitter) shard() (*Shard, error) {
	P, D := f.p.Layout().P(), f.p.Layout().D()
	var files []string
	for _, fs := range f.files {
		files = append(files, fs.Name)
	}
	if f.store != nil && f.store.inMemory() && (f.acc == nil || int64(f.n)*int64(D) < int64(gauss.PackedLen(D)+D)*2) {
		return &Shard{P: P, D: D, N: f.n, Samples: f.store.all(), Files: files}, nil
	}
	if f.acc == nil {
		return nil, errors.New("the fit kept neither statistics nor its samples")
	}
	s, err := f.acc.Stats()
	if err != nil {
		return nil, err
	}
	return &Shard{P: P, D: D, N: f.n, Stats: s, Files: files}, nil
}

func (f *fitter) close() {
	if f.acc != nil {
		f.acc.Close()
	}
	if f.store != nil {
		f.store.close()
	}
}

// splitHoldout picks round(frac·N) files (at least MinHoldout, and leaving at
// least one to fit on) by a seeded shuffle.
func splitHoldout(files []string, frac float64, seed uint64) (train, hold []string) {
	nh := max(int(math.Round(frac*float64(len(files)))), MinHoldout)
	nh = min(nh, len(files)-1)
	idx := rand.New(rand.NewPCG(seed, 0x401d)).Perm(len(files))
	isHold := make([]bool, len(files))
	for _, i := range idx[:nh] {
		isHold[i] = true
	}
	for i, f := range files {
		if isHold[i] {
			hold = append(hold, f)
		} else {
			train = append(train, f)
		}
	}
	return train, hold
}
