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
	MinHoldout     = 3 // held-out images when the hold-out fraction is > 0, at least
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

// Fit streams good images through the pipeline into statistics on the backend.
func Fit(ctx context.Context, p *Pipeline, inputs []Input, b gauss.Backend, opt FitOptions) (*gauss.Stats, *FitReport, error) {
	acc, err := b.NewAccumulator(p.Layout().P(), p.Layout().D())
	if err != nil {
		return nil, nil, err
	}
	defer acc.Close()
	rep, err := fitInto(ctx, p, inputs, acc, opt, nil)
	if err != nil {
		return nil, nil, err
	}
	s, err := acc.Stats()
	if err != nil {
		return nil, nil, err
	}
	return s, rep, nil
}

// fitInto streams inputs into acc; tap, when set, sees every chunk too.
func fitInto(ctx context.Context, p *Pipeline, inputs []Input, acc gauss.Accumulator, opt FitOptions, tap func(Chunk) error) (*FitReport, error) {
	stage := opt.Stage
	if stage == "" {
		stage = "fit"
	}
	rep := &FitReport{}
	done := 0
	group := DefaultGroup
	err := p.Embeddings(ctx, inputs, group, func(c Chunk) error {
		for _, f := range c.Failed {
			if !opt.SkipBad {
				return f
			}
			rep.Skipped = append(rep.Skipped, f)
		}
		rep.Files += len(c.Inputs)
		done += len(c.Inputs) + len(c.Failed)
		if c.N > 0 {
			t := time.Now()
			if err := acc.Add(c.Emb, c.N); err != nil {
				return err
			}
			p.Timings.Since(stage, t, c.N)
			rep.Samples += c.N
		}
		if tap != nil {
			if err := tap(c); err != nil {
				return err
			}
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
	Seed         uint64 // seed of the channel subset and of the hold-out split
	Channels     []int  // explicit channel indices; overrides Dim and Seed
	Eps          float64
	Holdout      float64 // fraction of the images held out for calibration; 0 disables
	Sigma        float64
	Backend      gauss.Backend
	BackboneName string
	BackboneONNX []byte
	SkipBadFiles bool // report unreadable files and go on
	KeepStats    bool // return the final statistics in the report (to save a shard)
	Progress     Progress
}

// TrainReport says what training used and skipped.
type TrainReport struct {
	Trained, HeldOut int // files
	Samples          int // backbone inputs in the final fit (tiles count one each)
	Skipped          []FileError
	Timings          *Timings     // per stage, from the pipeline
	Stats            *gauss.Stats // the final statistics, when asked (KeepStats)
}

// Train fits a model on the good images in files: Fit on all but a held-out
// part, Calibrate thresholds on the held-out part, then Finalize on everything.
func Train(ctx context.Context, ext Extractor, files []string, cfg TrainConfig) (*Model, *TrainReport, error) {
	if cfg.Backend == nil {
		cfg.Backend = gauss.CPU{}
	}
	if !(cfg.Holdout >= 0 && cfg.Holdout < 1) {
		return nil, nil, fmt.Errorf("the hold-out fraction must be in [0,1), got %v", cfg.Holdout)
	}
	taps := ext.Taps()
	total := embed.TotalChannels(taps)
	channels, seed := cfg.Channels, cfg.Seed
	if channels == nil {
		channels = embed.RandomChannels(total, cfg.Dim, cfg.Seed)
	} else {
		seed = 0
	}
	p, err := NewPipeline(ext, channels, cfg.Preprocess, cfg.Pipeline)
	if err != nil {
		return nil, nil, err
	}
	rep := &TrainReport{Timings: p.Timings}
	train, hold := splitHoldout(files, cfg.Holdout, cfg.Seed)
	if len(hold) > 0 && len(train) < 2 {
		return nil, nil, fmt.Errorf("%d images are too few to hold %d out for calibration and fit on the rest: add images or train without a hold-out", len(files), len(hold))
	}

	// 1. Fit on the training part.
	fopt := FitOptions{SkipBad: cfg.SkipBadFiles, Progress: cfg.Progress}
	stats, frep, err := Fit(ctx, p, FileInputs(train), cfg.Backend, fopt)
	if err != nil {
		return nil, nil, err
	}
	rep.Trained, rep.Samples, rep.Skipped = frep.Files, frep.Samples, frep.Skipped
	if stats.N < 2 {
		return nil, nil, fmt.Errorf("need at least 2 readable training images, got %d", stats.N)
	}

	// 2. Calibrate on the held-out part under the model fitted without it.
	var calib *Calibration
	if len(hold) > 0 {
		t := time.Now()
		g, err := cfg.Backend.Factorize(stats, cfg.Eps)
		if err != nil {
			return nil, nil, err
		}
		p.Timings.Since("factorize", t, 1)
		set := ScoreSettings{Backend: cfg.Backend, Sigma: cfg.Sigma}
		c, hs, crep, err := Calibrate(ctx, p, g, FileInputs(hold), set, fopt)
		if err != nil {
			return nil, nil, err
		}
		rep.HeldOut, rep.Skipped = crep.Files, append(rep.Skipped, crep.Skipped...)
		rep.Samples += crep.Samples
		if err := stats.Merge(hs); err != nil {
			return nil, nil, err
		}
		calib = c
	}

	// 3. The final model on every usable image.
	sum := sha256.Sum256(cfg.BackboneONNX)
	meta := Meta{
		Created:        time.Now().UTC().Truncate(time.Second),
		BackboneName:   cfg.BackboneName,
		BackboneSHA256: hex.EncodeToString(sum[:]),
		Taps:           taps,
		Preprocess:     cfg.Preprocess,
		Eps:            cfg.Eps,
		Seed:           seed,
		TotalChannels:  total,
		Sigma:          cfg.Sigma,
		GridH:          p.Layout().H,
		GridW:          p.Layout().W,
	}
	if cfg.Progress != nil {
		cfg.Progress("factorize", 0, 1)
	}
	m, err := Finalize(meta, channels, stats, cfg.Backend, calib, cfg.BackboneONNX, p.Timings)
	if err != nil {
		return nil, nil, err
	}
	if cfg.Progress != nil {
		cfg.Progress("factorize", 1, 1)
	}
	if cfg.KeepStats {
		rep.Stats = stats
	}
	return m, rep, nil
}

// Calibrate scores held-out good images with the Gaussian g (fitted without
// them), derives thresholds from their scores, and returns their statistics so
// that they can be merged into the final fit.
func Calibrate(ctx context.Context, p *Pipeline, g *gauss.Gaussian, inputs []Input, set ScoreSettings, opt FitOptions) (*Calibration, *gauss.Stats, *FitReport, error) {
	set.Thresholds, set.KeepImages = nil, false
	sc, err := NewScorer(p, g, set)
	if err != nil {
		return nil, nil, nil, err
	}
	defer sc.Close()
	acc, err := set.Backend.NewAccumulator(g.P, g.D)
	if err != nil {
		return nil, nil, nil, err
	}
	defer acc.Close()
	rep := &FitReport{}
	var imgScores, pixels []float32
	done := 0
	err = sc.score(ctx, inputs, func(emb []float32, n int) error {
		t := time.Now()
		defer p.Timings.Since("calibrate-fit", t, n)
		rep.Samples += n
		return acc.Add(emb, n)
	}, func(r *Result) error {
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
		imgScores = append(imgScores, r.Score)
		pixels = append(pixels, r.Map...)
		return nil
	})
	if err != nil {
		return nil, nil, nil, err
	}
	if rep.Files == 0 {
		return nil, nil, nil, errors.New("no held-out image could be read")
	}
	hs, err := acc.Stats()
	if err != nil {
		return nil, nil, nil, err
	}
	c, err := CalibrateScores(imgScores, pixels)
	if err != nil {
		return nil, nil, nil, err
	}
	return c, hs, rep, nil
}

// Finalize factorises statistics into a model with its settings and thresholds.
func Finalize(meta Meta, channels []int, s *gauss.Stats, b gauss.Backend, calib *Calibration, backboneONNX []byte, tm *Timings) (*Model, error) {
	t := time.Now()
	g, err := b.Factorize(s, meta.Eps)
	if err != nil {
		return nil, err
	}
	if tm != nil {
		tm.Since("factorize", t, 1)
	}
	meta.NTrain = int(s.N)
	return &Model{Meta: meta, Channels: channels, Gaussian: g, Calibration: calib, BackboneONNX: backboneONNX}, nil
}

// splitHoldout picks round(frac·N) files (at least MinHoldout) by a seeded shuffle.
func splitHoldout(files []string, frac float64, seed uint64) (train, hold []string) {
	if frac <= 0 || len(files) == 0 {
		return files, nil
	}
	nh := max(int(math.Round(frac*float64(len(files)))), MinHoldout)
	nh = min(nh, len(files))
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
