package detector

import (
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
	DefaultBatch   = 16
	DefaultHoldout = 0.1
	MinHoldout     = 3 // held-out images when --holdout > 0, at least
)

// TrainConfig says how to train.
type TrainConfig struct {
	Preprocess   imageio.Preprocess
	Dim          int    // channels kept at random; ≤0 or ≥ total keeps all
	Seed         uint64 // seed of the channel subset and of the hold-out split
	Channels     []int  // explicit channel indices; overrides Dim and Seed
	Eps          float64
	Batch        int
	Holdout      float64 // fraction of files held out for calibration; 0 disables
	Sigma        float64
	Backend      gauss.Backend
	BackboneName string
	BackboneONNX []byte
	SkipBadFiles bool                                // report unreadable files and go on
	StatsOut     string                              // if set, also save the final statistics there
	Progress     func(stage string, done, total int) // optional
}

// TrainReport says what training used and skipped.
type TrainReport struct {
	Trained, HeldOut int // files
	Samples          int // backbone inputs in the final fit (tiles count one each)
	Skipped          []FileError
	Timings          map[string]time.Duration
}

// Train fits a model on the good images in files.
func Train(ext Extractor, files []string, cfg TrainConfig) (*Model, *TrainReport, error) {
	if err := cfg.Preprocess.Check(); err != nil {
		return nil, nil, err
	}
	if cfg.Backend == nil {
		cfg.Backend = gauss.CPU{}
	}
	if cfg.Batch <= 0 {
		cfg.Batch = DefaultBatch
	}
	if !(cfg.Holdout >= 0 && cfg.Holdout < 1) {
		return nil, nil, fmt.Errorf("holdout fraction must be in [0,1), got %v", cfg.Holdout)
	}
	if s := cfg.Preprocess.InputSize(); s != ext.InputSize() {
		return nil, nil, fmt.Errorf("preprocessing makes %d² inputs but the backbone takes %d²", s, ext.InputSize())
	}
	taps := ext.Taps()
	total := embed.TotalChannels(taps)
	channels := cfg.Channels
	seed := cfg.Seed
	if channels == nil {
		channels = embed.RandomChannels(total, cfg.Dim, cfg.Seed)
	} else {
		seed = 0
	}
	layout, err := embed.NewLayout(taps, channels)
	if err != nil {
		return nil, nil, err
	}
	rep := &TrainReport{Timings: map[string]time.Duration{}}
	train, hold := splitHoldout(files, cfg.Holdout, cfg.Seed)
	if len(hold) > 0 && len(train) < 2 {
		return nil, nil, fmt.Errorf("%d images are too few to hold %d out for calibration: add images or use --holdout 0", len(files), len(hold))
	}
	P, D := layout.P(), layout.D()
	em := newEmbedder(ext, layout, cfg.Batch)
	progress := func(stage string, done, total int) {
		if cfg.Progress != nil {
			cfg.Progress(stage, done, total)
		}
	}

	// 1. Stream the training files into the accumulator.
	t0 := time.Now()
	acc, err := cfg.Backend.NewAccumulator(P, D)
	if err != nil {
		return nil, nil, err
	}
	defer acc.Close()
	done := 0
	err = decodeChunks(train, cfg.Preprocess, cfg.Batch, func(chunk []decoded) error {
		samples, err := usable(chunk, cfg.SkipBadFiles, &rep.Skipped)
		if err != nil {
			return err
		}
		rep.Trained += countOK(chunk)
		err = em.run(samples, func(emb []float32, _, n int) error {
			rep.Samples += n
			return acc.Add(emb, n)
		})
		done += len(chunk)
		progress("fit", done, len(train))
		return err
	})
	if err != nil {
		return nil, nil, err
	}
	rep.Timings["fit"] = time.Since(t0)
	stats, err := acc.Stats()
	if err != nil {
		return nil, nil, err
	}
	if stats.N < 2 {
		return nil, nil, fmt.Errorf("need at least 2 readable training images, got %d", stats.N)
	}

	// 2. Calibrate on held-out files under the model fitted without them, then
	//    merge their statistics in for the final model.
	var calib *Calibration
	if len(hold) > 0 {
		t1 := time.Now()
		gRest, err := cfg.Backend.Factorize(stats, cfg.Eps)
		if err != nil {
			return nil, nil, err
		}
		sc, err := newScorer(&Model{Meta: Meta{Preprocess: cfg.Preprocess, Sigma: cfg.Sigma, GridH: layout.H, GridW: layout.W}, Gaussian: gRest}, ext, layout, cfg.Backend, cfg.Batch)
		if err != nil {
			return nil, nil, err
		}
		holdAcc, err := cfg.Backend.NewAccumulator(P, D)
		if err != nil {
			sc.Close()
			return nil, nil, err
		}
		var imgScores, pixels []float32
		hdone := 0
		err = decodeChunks(hold, cfg.Preprocess, cfg.Batch, func(chunk []decoded) error {
			if _, err := usable(chunk, cfg.SkipBadFiles, &rep.Skipped); err != nil {
				return err
			}
			for _, d := range chunk {
				if d.err != nil {
					continue
				}
				r, err := sc.scoreDecoded(d, func(emb []float32, n int) error { return holdAcc.Add(emb, n) })
				if err != nil {
					return err
				}
				rep.HeldOut++
				rep.Samples += len(d.samples)
				imgScores = append(imgScores, r.Score)
				pixels = append(pixels, r.Map...)
			}
			hdone += len(chunk)
			progress("calibrate", hdone, len(hold))
			return nil
		})
		sc.Close()
		if err == nil && rep.HeldOut == 0 {
			err = errors.New("no held-out image could be read")
		}
		var hs *gauss.Stats
		if err == nil {
			hs, err = holdAcc.Stats()
		}
		if err == nil {
			calib, err = Calibrate(imgScores, pixels)
		}
		if err == nil {
			err = stats.Merge(hs)
		}
		holdAcc.Close()
		if err != nil {
			return nil, nil, err
		}
		rep.Timings["calibrate"] = time.Since(t1)
	}

	// 3. The final model on every usable image.
	t2 := time.Now()
	progress("factorize", 0, 1)
	g, err := cfg.Backend.Factorize(stats, cfg.Eps)
	if err != nil {
		return nil, nil, err
	}
	progress("factorize", 1, 1)
	rep.Timings["factorize"] = time.Since(t2)
	sum := sha256.Sum256(cfg.BackboneONNX)
	m := &Model{
		Meta: Meta{
			Created:        time.Now().UTC().Truncate(time.Second),
			BackboneName:   cfg.BackboneName,
			BackboneSHA256: hex.EncodeToString(sum[:]),
			Taps:           taps,
			Preprocess:     cfg.Preprocess,
			Eps:            cfg.Eps,
			NTrain:         int(stats.N),
			Seed:           seed,
			TotalChannels:  total,
			Sigma:          cfg.Sigma,
			GridH:          layout.H,
			GridW:          layout.W,
		},
		Channels:     channels,
		Gaussian:     g,
		Calibration:  calib,
		BackboneONNX: cfg.BackboneONNX,
	}
	if cfg.StatsOut != "" {
		if err := SaveStats(cfg.StatsOut, m, stats); err != nil {
			return nil, nil, err
		}
	}
	return m, rep, nil
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

// usable returns the samples of the readable files, recording or failing on the others.
func usable(chunk []decoded, skip bool, skipped *[]FileError) ([]imageio.Sample, error) {
	var s []imageio.Sample
	for _, d := range chunk {
		if d.err != nil {
			if !skip {
				return nil, d.err
			}
			*skipped = append(*skipped, FileError{d.path, d.err})
			continue
		}
		s = append(s, d.samples...)
	}
	return s, nil
}

func countOK(chunk []decoded) int {
	n := 0
	for _, d := range chunk {
		if d.err == nil {
			n++
		}
	}
	return n
}
