package detector

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/padim/padim/detector/baseline"
	"github.com/padim/padim/detector/embed"
	"github.com/padim/padim/detector/gauss"
)

// Method is a way of turning training embeddings into a model that scores
// patches (fit → scorer): PaDiM's per-patch Gaussian, or a nearest-neighbour
// baseline of the paper's method table on the same pipeline. Its defaults
// live here, for train, bench and experiment alike.
type Method struct {
	Name   string
	Layers []string // backbone taps it uses unless told (nil: the backbone's metadata, else layer1,layer2,layer3)
	Pool   int      // k×k average pooling of the taps unless told (0: none)
	Usage  string   // one line for help texts
	// fit fits a baseline on every training embedding x ([n][P][D], group:
	// each sample's image) and says what it kept; nil for PaDiM, whose fit
	// streams (Train).
	fit func(x []float32, n, p, d int, group []int32, cfg TrainConfig) (baseline.Model, string, error)
}

// The methods, PaDiM first.
var Methods = []Method{
	{Name: MethodPaDiM, Usage: "padim: a Gaussian per patch position (Mahalanobis distance)"},
	{Name: baseline.MethodSPADE, Usage: "spade: kNN on images, then on their patches", fit: fitSPADE},
	{Name: baseline.MethodPatchCore, Layers: []string{"layer2", "layer3"}, Pool: 3,
		Usage: "patchcore: coreset memory bank; taps layer2,layer3 pooled 3×3 unless --layers", fit: fitPatchCore},
}

func fitSPADE(x []float32, n, p, d int, _ []int32, cfg TrainConfig) (baseline.Model, string, error) {
	x = append([]float32(nil), x[:n*p*d]...) // the model keeps them
	m, err := baseline.FitSPADE(x, n, p, d, cfg.K)
	return m, fmt.Sprintf("SPADE: gallery of %d samples, K=%d nearest images", n, cfg.K), err
}

func fitPatchCore(x []float32, n, p, d int, group []int32, cfg TrainConfig) (baseline.Model, string, error) {
	pc, err := baseline.FitPatchCore(x, n, p, d, cfg.Coreset, cfg.Reweight, cfg.Seed, group)
	if err != nil {
		return nil, "", err
	}
	return pc, fmt.Sprintf("PatchCore: coreset of %d of %d patch features (%.0f %%), reweighting over %d neighbours", pc.M, n*p, 100*cfg.Coreset, cfg.Reweight), nil
}

// MethodNamed returns the method called name ("" is PaDiM).
func MethodNamed(name string) (Method, error) {
	if name == "" {
		name = MethodPaDiM
	}
	for _, m := range Methods {
		if m.Name == name {
			return m, nil
		}
	}
	names := make([]string, len(Methods))
	for i, m := range Methods {
		names[i] = m.Name
	}
	return Method{}, fmt.Errorf("unknown method %q (%s)", name, strings.Join(names, ", "))
}

// DefaultLayers is the taps the method uses when none are asked for (nil:
// the backbone's own default). An unknown method has none.
func DefaultLayers(method string) []string {
	m, _ := MethodNamed(method)
	return slices.Clone(m.Layers)
}

// Fitted is a method's fitted model: PaDiM's Gaussian (gauss.Model:
// *gauss.Gaussian or *gauss.LowRank) or a baseline's (baseline.Model).
type Fitted interface {
	Shape() (p, d int)
	Form() string
}

// newFittedScorer prepares a fitted model for scoring: a Gaussian on the
// backend b, a baseline by itself (on the CPU).
func newFittedScorer(b gauss.Backend, f Fitted) (gauss.Scorer, error) {
	switch f := f.(type) {
	case gauss.Model:
		return gauss.NewModelScorer(b, f)
	case baseline.Model:
		return f.NewScorer()
	}
	return nil, fmt.Errorf("unknown model type %T", f)
}

// trainBaseline fits a nearest-neighbour baseline (SPADE or PatchCore) on the
// same pipeline: every training embedding is kept (SPADE's gallery,
// PatchCore's candidates for the coreset), and thresholds come from each
// training image scored without its own features (calibrateBaseline).
func trainBaseline(ctx context.Context, ext Extractor, files []string, cfg TrainConfig) (*Model, *TrainReport, error) {
	method, err := MethodNamed(cfg.Method)
	if err != nil {
		return nil, nil, err
	}
	if method.fit == nil {
		return nil, nil, fmt.Errorf("method %q is not a baseline", cfg.Method)
	}
	if cfg.Pipeline.Pool == 0 {
		cfg.Pipeline.Pool = method.Pool
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
	fitted, reason, err := method.fit(store.all(), n, P, D, group, cfg)
	if err != nil {
		return nil, nil, err
	}
	rep.FormReason = reason
	p.Timings.Since("fit", t, n)

	var calib *Calibration
	if cfg.Calibration != CalibrateNone && len(fs) >= 2 {
		t := time.Now()
		calib, err = calibrateBaseline(p, fitted, store, fs, group, cfg)
		if err != nil {
			return nil, nil, err
		}
		p.Timings.Since("crossfit", t, len(fs))
		rep.Folds = len(fs)
		if w := calib.Warning(); w != "" {
			rep.Notes = append(rep.Notes, w)
		}
	} else if cfg.Calibration != CalibrateNone {
		rep.Notes = append(rep.Notes, "one readable image: no thresholds; score with a threshold of your own")
	}
	if pc, ok := fitted.(*baseline.PatchCore); ok {
		pc.Group = nil // calibration only
	}
	sum := sha256.Sum256(cfg.BackboneONNX)
	m := &Model{
		Meta: Meta{
			Created: time.Now().UTC().Truncate(time.Second), BackboneName: cfg.BackboneName, BackboneSHA256: hex.EncodeToString(sum[:]),
			Taps: taps, Preprocess: cfg.Preprocess, Eps: cfg.Eps, NTrain: n, Seed: seed, TotalChannels: total, Sigma: cfg.Sigma,
			GridH: p.Layout().H, GridW: p.Layout().W, Method: cfg.Method, Pool: cfg.Pipeline.Pool,
		},
		Channels: channels, Gaussian: fitted, Calibration: calib, BackboneONNX: cfg.BackboneONNX,
	}
	return m, rep, nil
}
