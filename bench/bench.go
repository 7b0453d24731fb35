// Package bench measures padim as it ships, stage by stage: it trains with
// detector.Train, writes and reads the model file, and scores with a
// detector.Scorer — the calls `padim train` and `padim score` make — and reads
// the per-stage busy times the pipeline records (decode, backbone, embedding,
// fit, factorisation, scoring, maps), as images/s, GFLOP/s and GB/s, with peak
// memory, for `padim bench`. bench/torch_padim.py measures anomalib's PyTorch
// PaDiM on the same images; bench/run-cpu.sh times both, and the shipped
// commands, as processes.
package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/padim/padim/detector"
	"github.com/padim/padim/detector/anomalymap"
	"github.com/padim/padim/detector/gauss"
	"github.com/padim/padim/detector/imageio"
)

// Config says what to measure.
type Config struct {
	Extractor    detector.Extractor
	Backbone     string // name, for the report
	BackboneONNX []byte // embedded in the model as padim train does
	Train        []string
	Score        []string
	Preprocess   imageio.Preprocess
	Pipeline     detector.PipelineOptions
	Dim          int
	Seed         uint64
	Eps          float64
	Gaussian     string // as train --gaussian
	Calibration  string // as train --calibrate (none: the comparator has no thresholds)
	Method       string // as train --method
	Backend      gauss.Backend
	PeakGFLOPS   float64 // the machine's fp32 SGEMM rate, 0 if not measured
	Dir          string  // where the model file is written and read (default: a temporary folder)
	// Open, when set, opens the model's embedded backbone for scoring, as
	// `padim score` does (a new ONNX Runtime session, timed with the load);
	// otherwise scoring reuses Extractor.
	Open func(onnx []byte) (detector.Extractor, func(), error)
}

// Stage is one measured stage: busy time summed over its workers.
type Stage struct {
	Name      string  `json:"name"`
	Seconds   float64 `json:"seconds"`
	Images    int     `json:"images"`
	ImagesPS  float64 `json:"images_per_s,omitempty"`
	GFLOPS    float64 `json:"gflop_per_s,omitempty"`
	GBPS      float64 `json:"gb_per_s,omitempty"`
	PeakRatio float64 `json:"fraction_of_peak,omitempty"`
}

// Report is the outcome of a run.
type Report struct {
	Date         string  `json:"date"`
	Machine      string  `json:"machine"`
	Cores        int     `json:"cores"`
	Device       string  `json:"device"`
	Kernels      string  `json:"kernels"`
	Backbone     string  `json:"backbone"`
	InputSize    int     `json:"input_size"`
	N            int     `json:"n_train"`
	NScore       int     `json:"n_score"`
	P            int     `json:"patches"`
	D            int     `json:"dim"`
	Batch        int     `json:"batch"`
	PeakGFLOPS   float64 `json:"machine_peak_gflop_per_s,omitempty"`
	TrainStages  []Stage `json:"train_stages"`
	ScoreStages  []Stage `json:"score_stages"`
	TrainSeconds float64 `json:"train_seconds"` // wall time of detector.Train
	SaveSeconds  float64 `json:"save_seconds"`  // writing the model file
	LoadSeconds  float64 `json:"load_seconds"`  // reading and checking it, opening its backbone, preparing the scorer
	ScoreSeconds float64 `json:"score_seconds"` // wall time of Scorer.Score over the score set
	ScoreRate    float64 `json:"score_images_per_s"`
	// ScoreRateWithLoad is what a `padim score` process reaches: images over
	// load + score time (without process start and the backbone session).
	ScoreRateWithLoad float64 `json:"score_images_per_s_with_load"`
	GaussSeconds      float64 `json:"gaussian_seconds"` // fit + factorisation + scoring, busy
	TotalSeconds      float64 `json:"end_to_end_seconds"`
	PeakRSSBytes      int64   `json:"peak_rss_bytes"`
	Form              string  `json:"gaussian"`
	ModelFileBytes    int64   `json:"model_file_bytes"`
	ModelBytes        int64   `json:"model_bytes"`
	FullInvBytes      int64   `json:"full_inverse_model_bytes"`
}

// Run trains on cfg.Train, saves and loads the model, and scores cfg.Score,
// exactly as padim train and padim score do.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	dir := cfg.Dir
	if dir == "" {
		d, err := os.MkdirTemp("", "padim-bench-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(d)
		dir = d
	}
	start := time.Now()
	m, trep, err := detector.Train(ctx, cfg.Extractor, cfg.Train, detector.TrainConfig{
		Preprocess: cfg.Preprocess, Pipeline: cfg.Pipeline, Dim: cfg.Dim, Seed: cfg.Seed, Eps: cfg.Eps,
		Gaussian: cfg.Gaussian, Calibration: cfg.Calibration, Method: cfg.Method, Sigma: anomalymap.DefaultSigma, Backend: cfg.Backend,
		BackboneName: cfg.Backbone, BackboneONNX: cfg.BackboneONNX,
	})
	if err != nil {
		return nil, err
	}
	trainSec := time.Since(start).Seconds()
	path := filepath.Join(dir, "bench.padim")
	t := time.Now()
	if err := m.Save(path); err != nil {
		return nil, err
	}
	saveSec := time.Since(t).Seconds()
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	m = nil // as in separate processes: the trained model is not kept
	runtime.GC()

	t = time.Now()
	m, err = detector.Load(path)
	if err != nil {
		return nil, err
	}
	ext := cfg.Extractor
	if cfg.Open != nil {
		e, closeExt, err := cfg.Open(m.BackboneONNX)
		if err != nil {
			return nil, err
		}
		defer closeExt()
		ext = e
	}
	sc, err := m.NewScorer(ext, detector.ScoreConfig{Backend: cfg.Backend, Pipeline: cfg.Pipeline, OpenRadius: -1})
	if err != nil {
		return nil, err
	}
	defer sc.Close()
	loadSec := time.Since(t).Seconds()
	t = time.Now()
	scored := 0
	err = sc.Score(ctx, detector.FileInputs(cfg.Score), func(r *detector.Result) error {
		if r.Err != nil {
			return r.Err
		}
		scored++
		return nil
	})
	if err != nil {
		return nil, err
	}
	scoreSec := time.Since(t).Seconds()

	P, D := m.Gaussian.Shape()
	flops, bytesMoved, perPatch := work(m.Gaussian, len(cfg.Train), len(cfg.Score))
	stages := func(tm *detector.Timings) []Stage { return stageRates(tm, flops, bytesMoved, cfg.PeakGFLOPS) }
	fP, nScore := float64(P), float64(len(cfg.Score))
	rep := &Report{
		Date: time.Now().UTC().Format("2006-01-02"), Machine: cpuModel(), Cores: runtime.GOMAXPROCS(0),
		Device: cfg.Backend.Name(), Kernels: gauss.KernelLibrary, Backbone: cfg.Backbone, InputSize: cfg.Extractor.InputSize(),
		N: len(cfg.Train), NScore: scored, P: P, D: D, Batch: sc.Pipeline().Batch(), PeakGFLOPS: cfg.PeakGFLOPS,
		TrainStages: stages(trep.Timings), ScoreStages: stages(sc.Pipeline().Timings),
		TrainSeconds: trainSec, SaveSeconds: saveSec, LoadSeconds: loadSec, ScoreSeconds: scoreSec,
		ScoreRate: nScore / scoreSec, ScoreRateWithLoad: nScore / (loadSec + scoreSec),
		TotalSeconds:   time.Since(start).Seconds(),
		ModelFileBytes: st.Size(),
		ModelBytes:     int64(fP * perPatch * 4),
		Form:           m.Gaussian.Form(),
		FullInvBytes:   int64(P) * int64(D*D+D) * 4,
	}
	for _, s := range append(rep.TrainStages, rep.ScoreStages...) {
		if s.Name == "fit" || s.Name == "factorize" || s.Name == "score" {
			rep.GaussSeconds += s.Seconds
		}
	}
	rep.PeakRSSBytes = PeakRSS()
	return rep, nil
}

// work counts the Gaussian stages' floating-point operations and the model
// bytes scoring reads, by stage, for a model g fitted on nTrain images and
// scoring nScore; perPatch is the model's numbers per patch.
func work(g detector.Fitted, nTrain, nScore int) (flops, bytesMoved map[string]float64, perPatch float64) {
	P, D := g.Shape()
	fP, fD, fS := float64(P), float64(D), float64(nScore)
	perPatch = float64(gauss.PackedLen(D)) + fD
	flops = map[string]float64{
		"fit":       float64(nTrain) * fP * fD * (fD + 1),
		"factorize": fP * 2 * fD * fD * fD / 3,
		"score":     fS * fP * fD * (fD + 1),
	}
	if _, ok := g.(*gauss.Gaussian); !ok {
		flops = map[string]float64{} // the baselines: no Gaussian flops to count
	}
	if lr, ok := g.(*gauss.LowRank); ok {
		fN := float64(lr.N)
		perPatch = fN*fD + fD
		flops = map[string]float64{ // the fit keeps the samples; the work is the factorisation
			"factorize": fP * (2*fN*fN*fD + fN*fN*fN/3),
			"score":     fS * fP * 2 * fN * fD,
		}
	}
	group := float64(detector.DefaultGroup)
	bytesMoved = map[string]float64{
		// the model is read once per Gaussian call of up to a group of images
		"score": float64(int((fS+group-1)/group)) * fP * perPatch * 4,
	}
	return flops, bytesMoved, perPatch
}

// stageRates turns a pipeline's busy times into rates: images/s per stage,
// GFLOP/s and the fraction of the machine's peak where flops are counted,
// GB/s where bytes are.
func stageRates(tm *detector.Timings, flops, bytesMoved map[string]float64, peakGFLOPS float64) []Stage {
	var out []Stage
	for _, s := range tm.Stages() {
		st := Stage{Name: s.Name, Seconds: s.Busy.Seconds(), Images: s.Items}
		if st.Seconds > 0 {
			st.ImagesPS = float64(st.Images) / st.Seconds
			if f := flops[s.Name]; f > 0 {
				st.GFLOPS = f / st.Seconds / 1e9
				if peakGFLOPS > 0 {
					st.PeakRatio = st.GFLOPS / peakGFLOPS
				}
			}
			if b := bytesMoved[s.Name]; b > 0 {
				st.GBPS = b / st.Seconds / 1e9
			}
		}
		out = append(out, st)
	}
	return out
}

// PeakRSS is the process's peak resident memory (VmHWM), 0 where unknown.
func PeakRSS() int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "VmHWM:") {
			v, _ := strconv.ParseInt(strings.Fields(sc.Text())[1], 10, 64)
			return v * 1024
		}
	}
	return 0
}

func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return runtime.GOARCH
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "model name") {
			return strings.TrimSpace(strings.SplitN(l, ":", 2)[1])
		}
	}
	return runtime.GOARCH
}

// Print writes the report as tables.
func (r *Report) Print(w io.Writer) {
	fmt.Fprintf(w, "padim bench %s — %s, %d cores, device %s, kernels %s\n", r.Date, r.Machine, r.Cores, r.Device, r.Kernels)
	fmt.Fprintf(w, "backbone %s at %d², N=%d fit + %d scored, P=%d, d=%d, batch %d", r.Backbone, r.InputSize, r.N, r.NScore, r.P, r.D, r.Batch)
	if r.PeakGFLOPS > 0 {
		fmt.Fprintf(w, ", machine fp32 peak (SGEMM) %.1f GFLOP/s", r.PeakGFLOPS)
	}
	fmt.Fprintln(w)
	table := func(title string, stages []Stage) {
		fmt.Fprintf(w, "%-14s %9s %7s %10s %10s %8s %8s\n", title, "busy s", "images", "images/s", "GFLOP/s", "of peak", "GB/s")
		for _, s := range stages {
			num := func(v float64, f string) string {
				if v == 0 {
					return "-"
				}
				return fmt.Sprintf(f, v)
			}
			fmt.Fprintf(w, "%-14s %9.3f %7d %10s %10s %8s %8s\n", s.Name, s.Seconds, s.Images, num(s.ImagesPS, "%.1f"), num(s.GFLOPS, "%.1f"), num(s.PeakRatio*100, "%.0f%%"), num(s.GBPS, "%.2f"))
		}
	}
	table("train stage", r.TrainStages)
	table("score stage", r.ScoreStages)
	fmt.Fprintf(w, "wall: train %.2fs, save %.2fs, load %.2fs, score %.2fs (%.1f images/s; %.1f with the load), end to end %.2fs\n",
		r.TrainSeconds, r.SaveSeconds, r.LoadSeconds, r.ScoreSeconds, r.ScoreRate, r.ScoreRateWithLoad, r.TotalSeconds)
	fmt.Fprintf(w, "Gaussian stages %.2fs busy; peak RSS %.2f GiB; %s form; model file %.1f MiB, tensors %.1f MiB vs %.1f MiB with a full Σ⁻¹ (ratio %.4f)\n",
		r.GaussSeconds, float64(r.PeakRSSBytes)/(1<<30), r.Form, float64(r.ModelFileBytes)/(1<<20), float64(r.ModelBytes)/(1<<20), float64(r.FullInvBytes)/(1<<20), float64(r.ModelBytes)/float64(r.FullInvBytes))
}
