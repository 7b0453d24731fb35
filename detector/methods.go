package detector

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/padim/padim/detector/embed"
	"github.com/padim/padim/detector/gauss"
	"github.com/padim/padim/detector/nn"
)

// MaxSPADECalibration bounds the training images SPADE scores (leaving each
// out) for its thresholds: its pixel search costs K·P²·D per image.
const MaxSPADECalibration = 16

// trainNN fits a nearest-neighbour baseline (SPADE or PatchCore) on the same
// pipeline: every training embedding is kept (SPADE's gallery, PatchCore's
// candidates for the coreset), and thresholds come from each training image
// scored without its own features.
func trainNN(ctx context.Context, ext Extractor, files []string, cfg TrainConfig) (*Model, *TrainReport, error) {
	if cfg.Method == nn.MethodPatchCore && cfg.Pipeline.Pool == 0 {
		cfg.Pipeline.Pool = 3 // locally aware patch features
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
	P, D := p.Layout().P(), p.Layout().D()
	rep := &TrainReport{Timings: p.Timings, Form: cfg.Method}
	store := newSampleStore(P*D, cfg.SampleMemory, len(files))
	defer store.close()
	var fs []fileSamples
	n := 0
	fopt := FitOptions{SkipBad: cfg.SkipBadFiles, Progress: cfg.Progress}
	frep, err := streamFit(ctx, p, FileInputs(files), fopt, func(c Chunk) error {
		first := map[int]int{}
		for s, src := range c.Source {
			if _, ok := first[src]; !ok {
				first[src] = s
			}
		}
		for _, it := range c.Items {
			fs = append(fs, fileSamples{ItemInfo: it, first: n + first[it.Index], n: len(it.Rects)})
		}
		n += c.N
		if err := store.add(c.Emb, c.N); err != nil {
			return err
		}
		if !store.inMemory() {
			return fmt.Errorf("%w: %s keeps every training embedding: %d samples × %d patches × %d channels take more than %.1f GiB (fewer images or channels, or allow more memory)",
				ErrMemory, cfg.Method, n, P, D, float64(store.budget)/(1<<30))
		}
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	rep.Trained, rep.Skipped, rep.Samples = frep.Files, frep.Skipped, n
	if n == 0 {
		return nil, nil, fmt.Errorf("no readable training image")
	}
	group := make([]int32, n)
	for i, f := range fs {
		for s := f.first; s < f.first+f.n; s++ {
			group[s] = int32(i)
		}
	}
	t := time.Now()
	var g gauss.Model
	switch cfg.Method {
	case nn.MethodSPADE:
		x := append([]float32(nil), store.all()...) // the model keeps them
		g, err = nn.FitSPADE(x, n, P, D, cfg.K)
		rep.FormReason = fmt.Sprintf("SPADE: gallery of %d samples, K=%d nearest images", n, cfg.K)
	case nn.MethodPatchCore:
		var pc *nn.PatchCore
		pc, err = nn.FitPatchCore(store.all(), n, P, D, cfg.Coreset, cfg.Reweight, cfg.Seed, group)
		g = pc
		if pc != nil {
			rep.FormReason = fmt.Sprintf("PatchCore: coreset of %d of %d patch features (%.0f %%), reweighting over %d neighbours", pc.M, n*P, 100*cfg.Coreset, cfg.Reweight)
		}
	default:
		return nil, nil, fmt.Errorf("unknown method %q (padim, spade, patchcore)", cfg.Method)
	}
	if err != nil {
		return nil, nil, err
	}
	p.Timings.Since("fit", t, n)

	var calib *Calibration
	if cfg.Calibration != CalibrateNone && len(fs) >= 2 {
		t := time.Now()
		calib, err = calibrateNN(p, g, store, fs, group, cfg)
		if err != nil {
			return nil, nil, err
		}
		p.Timings.Since("crossfit", t, len(fs))
		rep.Folds = len(fs)
	} else if cfg.Calibration != CalibrateNone {
		rep.Notes = append(rep.Notes, "one readable image: no thresholds; score with a threshold of your own")
	}
	if pc, ok := g.(*nn.PatchCore); ok {
		pc.Group = nil // calibration only
	}
	sum := sha256.Sum256(cfg.BackboneONNX)
	m := &Model{
		Meta: Meta{
			Created: time.Now().UTC().Truncate(time.Second), BackboneName: cfg.BackboneName, BackboneSHA256: hex.EncodeToString(sum[:]),
			Taps: taps, Preprocess: cfg.Preprocess, Eps: cfg.Eps, NTrain: n, Seed: seed, TotalChannels: total, Sigma: cfg.Sigma,
			GridH: p.Layout().H, GridW: p.Layout().W, Method: cfg.Method, Pool: cfg.Pipeline.Pool,
		},
		Channels: channels, Gaussian: g, Calibration: calib, BackboneONNX: cfg.BackboneONNX,
	}
	return m, rep, nil
}

// calibrateNN scores training images leaving their own features out (every
// one for PatchCore; at most MaxSPADECalibration, evenly spread, for SPADE)
// and derives thresholds from their maps and image scores.
func calibrateNN(p *Pipeline, g gauss.Model, store *sampleStore, fs []fileSamples, group []int32, cfg TrainConfig) (*Calibration, error) {
	sc, err := gauss.NewModelScorer(cfg.Backend, g)
	if err != nil {
		return nil, err
	}
	defer sc.Close()
	ssc := sc.(gauss.SampleScorer)
	P := p.Layout().P()
	maps, err := mapMaker(p, cfg.Sigma)
	if err != nil {
		return nil, err
	}
	pick := fs
	if cfg.Method == nn.MethodSPADE && len(fs) > MaxSPADECalibration {
		pick = nil
		for i := 0; i < MaxSPADECalibration; i++ {
			pick = append(pick, fs[i*len(fs)/MaxSPADECalibration])
		}
	}
	totalPx := 0
	for _, f := range pick {
		totalPx += f.W * f.H
	}
	stride := max(1, (totalPx+MaxCalibrationPixels-1)/MaxCalibrationPixels)
	var imgScores, pixels []float32
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
		if err := ssc.ScoreSamples(x, f.n, skip, dist, img); err != nil {
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
		imgScores = append(imgScores, score)
		for j := 0; j < len(px); j += stride {
			pixels = append(pixels, px[j])
		}
		if cfg.Progress != nil {
			cfg.Progress("crossfit", i+1, len(pick))
		}
	}
	c, err := CalibrateScores(imgScores, pixels, *cfg.Rule)
	if err != nil {
		return nil, err
	}
	c.Rule = fmt.Sprintf("%d training images each scored without its own features: %s", len(pick), c.Rule)
	return c, nil
}
