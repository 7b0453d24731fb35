// Package experiment runs the paper's sweeps (ZUO et al. 2023, Tables 1–5) on
// an MVTec-layout category with padim's own pipeline: which layers, how many
// channels, which backbone, how many training images, which method. Every row
// trains through detector.Train and evaluates through evaluate.Run, so a row is
// what `padim train` + `padim eval` would give; backbone outputs are computed
// once per image and reused across the rows that share a backbone.
package experiment

import (
	"context"
	"crypto/sha256"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/padim/padim/data/dataset"
	"github.com/padim/padim/detector"
	"github.com/padim/padim/detector/anomalymap"
	"github.com/padim/padim/detector/embed"
	"github.com/padim/padim/detector/gauss"
	"github.com/padim/padim/detector/imageio"
	"github.com/padim/padim/evaluate"
)

// Sweeps are the experiments, named as the command takes them.
var Sweeps = []string{"layers", "dim", "backbones", "samples", "methods"}

// Backbone is a backbone an experiment can run: its extractor (with every tap
// a row may ask for) and what to record.
type Backbone struct {
	Name string
	Ext  detector.Extractor
	ONNX []byte
	Pre  imageio.Preprocess
}

// Point is one setting of a sweep.
type Point struct {
	Label    string   // as printed (e.g. "1+2+3", "d=550", "N=20")
	Backbone string   // which backbone (by name)
	Taps     []string // taps used (nil: all the backbone gives)
	Dim      int
	N        int    // training images (0: all)
	Method   string // detector.MethodPaDiM, nn.MethodSPADE, nn.MethodPatchCore
}

// Config says what to run.
type Config struct {
	Sweep     string
	Points    []Point
	Backbones []Backbone
	Train     []string       // good training images
	Test      []dataset.Item // test set with ground truth
	Seed      uint64         // channel subsets and sample subsets; repeats add 1, 2, …
	Repeats   int
	Eps       float64
	Batch     int
	Backend   gauss.Backend
	Progress  func(point string, repeat int)
}

// Result is one point's outcome over the repeats.
type Result struct {
	Point
	Runs []Run  `json:"runs"`
	Mean Run    `json:"mean"`
	Std  Run    `json:"std"`
	Note string `json:"note,omitempty"`
}

// Run is one training and evaluation.
type Run struct {
	Seed          uint64          `json:"seed"`
	ImageAUROC    evaluate.Metric `json:"image_auroc"`
	PixelAUROC    evaluate.Metric `json:"pixel_auroc"`
	AUPRO         evaluate.Metric `json:"aupro"`
	F1            evaluate.Metric `json:"image_f1"`
	F1Calibrated  evaluate.Metric `json:"image_f1_calibrated"`
	FitSeconds    evaluate.Metric `json:"fit_seconds"`
	ScoreSeconds  evaluate.Metric `json:"score_seconds_per_image"`
	Form          string          `json:"form"`
	TrainedImages int             `json:"trained_images"`
	Channels      int             `json:"channels"` // kept: Dim, or every channel of the taps when they have fewer
}

// Execute runs every point Repeats times.
func Execute(ctx context.Context, cfg Config) ([]Result, error) {
	if cfg.Repeats < 1 {
		cfg.Repeats = 1
	}
	byName := map[string]Backbone{}
	for _, b := range cfg.Backbones {
		b.Ext = newMemo(b.Ext)
		byName[b.Name] = b
	}
	var out []Result
	for _, pt := range cfg.Points {
		bb, ok := byName[pt.Backbone]
		if !ok {
			return nil, fmt.Errorf("experiment: no backbone %q", pt.Backbone)
		}
		res := Result{Point: pt}
		ext := bb.Ext
		if pt.Taps != nil {
			var err error
			if ext, err = subset(bb.Ext, pt.Taps); err != nil {
				res.Note = err.Error()
				out = append(out, res)
				continue
			}
		}
		for r := 0; r < cfg.Repeats; r++ {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			if cfg.Progress != nil {
				cfg.Progress(pt.Label, r)
			}
			run, err := runOnce(ctx, cfg, bb, ext, pt, cfg.Seed+uint64(r))
			if err != nil {
				return nil, fmt.Errorf("experiment %s %s: %w", cfg.Sweep, pt.Label, err)
			}
			res.Runs = append(res.Runs, run)
		}
		res.Mean, res.Std = summarise(res.Runs)
		out = append(out, res)
	}
	return out, nil
}

func runOnce(ctx context.Context, cfg Config, bb Backbone, ext detector.Extractor, pt Point, seed uint64) (Run, error) {
	train := cfg.Train
	if pt.N > 0 && pt.N < len(train) {
		perm := rand.New(rand.NewPCG(seed, 0x5a3)).Perm(len(train))[:pt.N]
		slices.Sort(perm)
		train = make([]string, pt.N)
		for i, j := range perm {
			train[i] = cfg.Train[j]
		}
	}
	t := time.Now()
	m, _, err := detector.Train(ctx, ext, train, detector.TrainConfig{
		Preprocess: bb.Pre, Pipeline: detector.PipelineOptions{Batch: cfg.Batch}, Dim: pt.Dim, Seed: seed, Eps: cfg.Eps,
		Sigma: anomalymap.DefaultSigma, Backend: cfg.Backend, BackboneName: bb.Name, BackboneONNX: bb.ONNX, Method: pt.Method,
	})
	if err != nil {
		return Run{}, err
	}
	fit := time.Since(t).Seconds()
	sc, err := m.NewScorer(ext, detector.ScoreConfig{Backend: cfg.Backend, Pipeline: detector.PipelineOptions{Batch: cfg.Batch}, OpenRadius: -1})
	if err != nil {
		return Run{}, err
	}
	defer sc.Close()
	t = time.Now()
	ev, err := evaluate.Run(ctx, sc, cfg.Test, false, nil)
	if err != nil {
		return Run{}, err
	}
	return Run{
		Seed: seed, ImageAUROC: ev.ImageAUROC, PixelAUROC: ev.PixelAUROC, AUPRO: ev.AUPRO,
		F1: ev.ImageF1, F1Calibrated: ev.ImageF1Calibrated, FitSeconds: evaluate.Metric(fit),
		ScoreSeconds: evaluate.Metric(time.Since(t).Seconds() / float64(max(ev.NImages, 1))), Form: m.Gaussian.Form(), TrainedImages: m.NTrain,
		Channels: len(m.Channels),
	}, nil
}

// summarise returns the mean and standard deviation of each number.
func summarise(runs []Run) (mean, std Run) {
	if len(runs) == 0 {
		return
	}
	get := func(r *Run) []*evaluate.Metric {
		return []*evaluate.Metric{&r.ImageAUROC, &r.PixelAUROC, &r.AUPRO, &r.F1, &r.F1Calibrated, &r.FitSeconds, &r.ScoreSeconds}
	}
	n := float64(len(runs))
	for i := range runs {
		for k, v := range get(&runs[i]) {
			*get(&mean)[k] += *v / evaluate.Metric(n)
		}
	}
	for i := range runs {
		for k, v := range get(&runs[i]) {
			d := *v - *get(&mean)[k]
			*get(&std)[k] += d * d / evaluate.Metric(math.Max(n-1, 1))
		}
	}
	for _, v := range get(&std) {
		*v = evaluate.Metric(math.Sqrt(float64(*v)))
	}
	mean.Form, mean.TrainedImages, mean.Channels = runs[0].Form, runs[0].TrainedImages, runs[0].Channels
	return
}

// memo is an Extractor that runs its backbone once per distinct input image
// and serves the taps from memory after (a sweep reuses every image many times).
type memo struct {
	inner detector.Extractor
	mu    sync.Mutex
	cache map[[32]byte][]embed.Tap // per image, every tap with N=1
}

func newMemo(e detector.Extractor) *memo {
	if m, ok := e.(*memo); ok {
		return m
	}
	return &memo{inner: e, cache: map[[32]byte][]embed.Tap{}}
}

func (m *memo) InputSize() int         { return m.inner.InputSize() }
func (m *memo) Taps() []embed.TapShape { return m.inner.Taps() }

func (m *memo) Extract(batch []float32, n int) ([]embed.Tap, error) {
	per := len(batch) / n
	keys := make([][32]byte, n)
	var missing []int
	m.mu.Lock()
	for i := range keys {
		b := batch[i*per : (i+1)*per]
		keys[i] = sha256.Sum256(unsafe.Slice((*byte)(unsafe.Pointer(&b[0])), 4*len(b)))
		if _, ok := m.cache[keys[i]]; !ok {
			missing = append(missing, i)
		}
	}
	m.mu.Unlock()
	if len(missing) > 0 {
		in := make([]float32, len(missing)*per)
		for j, i := range missing {
			copy(in[j*per:], batch[i*per:(i+1)*per])
		}
		taps, err := m.inner.Extract(in, len(missing))
		if err != nil {
			return nil, err
		}
		m.mu.Lock()
		for j, i := range missing {
			one := make([]embed.Tap, len(taps))
			for t, tp := range taps {
				sz := tp.C * tp.H * tp.W
				one[t] = embed.Tap{TapShape: tp.TapShape, N: 1, Data: append([]float32(nil), tp.Data[j*sz:(j+1)*sz]...)}
			}
			m.cache[keys[i]] = one
		}
		m.mu.Unlock()
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	shapes := m.inner.Taps()
	out := make([]embed.Tap, len(shapes))
	for t, sh := range shapes {
		sz := sh.C * sh.H * sh.W
		out[t] = embed.Tap{TapShape: sh, N: n, Data: make([]float32, n*sz)}
		for i := range keys {
			copy(out[t].Data[i*sz:], m.cache[keys[i]][t].Data)
		}
	}
	return out, nil
}

// subsetExtractor gives only some of an extractor's taps.
type subsetExtractor struct {
	inner detector.Extractor
	pick  []int
}

func subset(e detector.Extractor, names []string) (detector.Extractor, error) {
	all := e.Taps()
	s := &subsetExtractor{inner: e}
	for _, n := range names {
		i := slices.IndexFunc(all, func(t embed.TapShape) bool { return t.Name == n })
		if i < 0 {
			var have []string
			for _, t := range all {
				have = append(have, t.Name)
			}
			return nil, fmt.Errorf("the backbone has no %s (it gives %s)", n, strings.Join(have, ", "))
		}
		s.pick = append(s.pick, i)
	}
	return s, nil
}

func (s *subsetExtractor) InputSize() int { return s.inner.InputSize() }

func (s *subsetExtractor) Taps() []embed.TapShape {
	all := s.inner.Taps()
	out := make([]embed.TapShape, len(s.pick))
	for i, j := range s.pick {
		out[i] = all[j]
	}
	return out
}

func (s *subsetExtractor) Extract(batch []float32, n int) ([]embed.Tap, error) {
	taps, err := s.inner.Extract(batch, n)
	if err != nil {
		return nil, err
	}
	out := make([]embed.Tap, len(s.pick))
	for i, j := range s.pick {
		out[i] = taps[j]
	}
	return out, nil
}
