// Package bench measures padim stage by stage on real images — decode, backbone,
// embedding, fit accumulation, factorisation, scoring, maps and post-processing —
// as images/s, GFLOP/s and GB/s, with peak memory, for `padim bench`.
// bench/torch_padim.py measures the same stages of anomalib's PyTorch PaDiM.
package bench

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/padim/padim/detector"
	"github.com/padim/padim/detector/anomalymap"
	"github.com/padim/padim/detector/embed"
	"github.com/padim/padim/detector/gauss"
	"github.com/padim/padim/detector/imageio"
	"github.com/padim/padim/detector/postproc"
)

// Config says what to measure.
type Config struct {
	Extractor  detector.Extractor
	Backbone   string
	Train      []string // fit on these
	Score      []string // then score these
	Preprocess imageio.Preprocess
	Dim        int
	Seed       uint64
	Eps        float64
	Batch      int
	Backend    gauss.Backend
	PeakGFLOPS float64 // the machine's fp32 SGEMM rate, 0 if not measured
}

// Stage is one measured stage.
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
	Date           string  `json:"date"`
	Machine        string  `json:"machine"`
	Cores          int     `json:"cores"`
	Device         string  `json:"device"`
	Kernels        string  `json:"kernels"`
	Backbone       string  `json:"backbone"`
	InputSize      int     `json:"input_size"`
	N              int     `json:"n_train"`
	NScore         int     `json:"n_score"`
	P              int     `json:"patches"`
	D              int     `json:"dim"`
	Batch          int     `json:"batch"`
	PeakGFLOPS     float64 `json:"machine_peak_gflop_per_s,omitempty"`
	Stages         []Stage `json:"stages"`
	TrainSeconds   float64 `json:"train_seconds"`
	ScoreSeconds   float64 `json:"score_seconds"`
	GaussSeconds   float64 `json:"gaussian_seconds"`
	TotalSeconds   float64 `json:"end_to_end_seconds"`
	PeakRSSBytes   int64   `json:"peak_rss_bytes"`
	ModelBytes     int64   `json:"model_bytes"`
	FullInvBytes   int64   `json:"full_inverse_model_bytes"`
}

type timers struct {
	mu sync.Mutex
	d  map[string]time.Duration
	n  map[string]int
}

func (t *timers) add(name string, d time.Duration, n int) {
	t.mu.Lock()
	t.d[name] += d
	t.n[name] += n
	t.mu.Unlock()
}

// decodeAll decodes files in parallel into backbone inputs (one sample each).
func decodeAll(files []string, pp imageio.Preprocess) ([]imageio.Sample, int64, error) {
	out := make([]imageio.Sample, len(files))
	errs := make([]error, len(files))
	var bytes int64
	var mu sync.Mutex
	gauss.ParallelFor(len(files), func(lo, hi int) {
		for i := lo; i < hi; i++ {
			if st, err := os.Stat(files[i]); err == nil {
				mu.Lock()
				bytes += st.Size()
				mu.Unlock()
			}
			s, _, err := pp.Load(files[i])
			if err == nil && len(s) != 1 {
				err = fmt.Errorf("%s: bench expects one sample per image (no tiling)", files[i])
			}
			if err != nil {
				errs[i] = err
				continue
			}
			out[i] = s[0]
		}
	})
	for _, e := range errs {
		if e != nil {
			return nil, 0, e
		}
	}
	return out, bytes, nil
}

// Run measures a fit on cfg.Train and scoring of cfg.Score, streaming in batches
// as padim train/score do, so memory stays bounded whatever N is.
func Run(cfg Config) (*Report, error) {
	ext := cfg.Extractor
	taps := ext.Taps()
	layout, err := embed.NewLayout(taps, embed.RandomChannels(embed.TotalChannels(taps), cfg.Dim, cfg.Seed))
	if err != nil {
		return nil, err
	}
	P, D := layout.P(), layout.D()
	S := ext.InputSize()
	tm := &timers{d: map[string]time.Duration{}, n: map[string]int{}}
	emb := make([]float32, cfg.Batch*P*D)
	in := make([]float32, cfg.Batch*3*S*S)
	var decBytes int64

	// embedBatch decodes, runs the backbone and embeds one batch of files.
	embedBatch := func(files []string) (int, error) {
		t := time.Now()
		smp, nb, err := decodeAll(files, cfg.Preprocess)
		if err != nil {
			return 0, err
		}
		decBytes += nb
		tm.add("decode", time.Since(t), len(files))
		for i, s := range smp {
			copy(in[i*3*S*S:], s.Input)
		}
		t = time.Now()
		out, err := ext.Extract(in[:len(files)*3*S*S], len(files))
		if err != nil {
			return 0, err
		}
		tm.add("backbone", time.Since(t), len(files))
		t = time.Now()
		if _, err := layout.Embed(out, emb); err != nil {
			return 0, err
		}
		tm.add("embedding", time.Since(t), len(files))
		return len(files), nil
	}

	trainStart := time.Now()
	acc, err := cfg.Backend.NewAccumulator(P, D)
	if err != nil {
		return nil, err
	}
	for lo := 0; lo < len(cfg.Train); lo += cfg.Batch {
		n, err := embedBatch(cfg.Train[lo:min(lo+cfg.Batch, len(cfg.Train))])
		if err != nil {
			return nil, err
		}
		t := time.Now()
		if err := acc.Add(emb[:n*P*D], n); err != nil {
			return nil, err
		}
		tm.add("fit", time.Since(t), n)
	}
	t := time.Now()
	st, err := acc.Stats()
	if err != nil {
		return nil, err
	}
	tm.add("fit", time.Since(t), 0)
	t = time.Now()
	g, err := cfg.Backend.Factorize(st, cfg.Eps)
	if err != nil {
		return nil, err
	}
	tm.add("factorize", time.Since(t), len(cfg.Train))
	acc.Close()
	trainSec := time.Since(trainStart).Seconds()

	scoreStart := time.Now()
	sc, err := cfg.Backend.NewScorer(g)
	if err != nil {
		return nil, err
	}
	defer sc.Close()
	gen, err := anomalymap.NewGenerator(layout.H, layout.W, S, S, anomalymap.DefaultSigma)
	if err != nil {
		return nil, err
	}
	dist := make([]float32, cfg.Batch*P)
	for lo := 0; lo < len(cfg.Score); lo += cfg.Batch {
		n, err := embedBatch(cfg.Score[lo:min(lo+cfg.Batch, len(cfg.Score))])
		if err != nil {
			return nil, err
		}
		t := time.Now()
		if err := sc.Score(emb[:n*P*D], n, dist); err != nil {
			return nil, err
		}
		tm.add("score", time.Since(t), n)
		t = time.Now()
		gauss.ParallelFor(n, func(a, b int) {
			for i := a; i < b; i++ {
				m, _ := gen.Make(dist[i*P : (i+1)*P])
				postproc.Detect(m.Pixel, S, S, m.Score*0.9, detector.DefaultOpenRadius)
			}
		})
		tm.add("map+postproc", time.Since(t), n)
	}
	scoreSec := time.Since(scoreStart).Seconds()

	L := float64(gauss.PackedLen(D))
	flops := map[string]float64{
		"fit":       float64(len(cfg.Train)) * float64(P) * float64(D) * float64(D+1),
		"factorize": float64(P) * 2 * float64(D) * float64(D) * float64(D) / 3,
		"score":     float64(len(cfg.Score)) * float64(P) * float64(D) * float64(D+1),
	}
	bytesMoved := map[string]float64{
		"decode": float64(decBytes),
		// the model is read once per batch
		"score": float64((len(cfg.Score)+cfg.Batch-1)/cfg.Batch) * float64(P) * (L + float64(D)) * 4,
	}
	rep := &Report{
		Date: time.Now().UTC().Format("2006-01-02"), Machine: cpuModel(), Cores: runtime.GOMAXPROCS(0),
		Device: cfg.Backend.Name(), Kernels: gauss.KernelLibrary, Backbone: cfg.Backbone, InputSize: S,
		N: len(cfg.Train), NScore: len(cfg.Score), P: P, D: D, Batch: cfg.Batch, PeakGFLOPS: cfg.PeakGFLOPS,
		TrainSeconds: trainSec, ScoreSeconds: scoreSec, TotalSeconds: trainSec + scoreSec,
		ModelBytes:   int64(P) * int64(L+float64(D)) * 4,
		FullInvBytes: int64(P) * int64(D*D+D) * 4,
	}
	for _, name := range []string{"decode", "backbone", "embedding", "fit", "factorize", "score", "map+postproc"} {
		s := Stage{Name: name, Seconds: tm.d[name].Seconds(), Images: tm.n[name]}
		if s.Seconds > 0 {
			s.ImagesPS = float64(s.Images) / s.Seconds
			if f := flops[name]; f > 0 {
				s.GFLOPS = f / s.Seconds / 1e9
				if cfg.PeakGFLOPS > 0 {
					s.PeakRatio = s.GFLOPS / cfg.PeakGFLOPS
				}
			}
			if b := bytesMoved[name]; b > 0 {
				s.GBPS = b / s.Seconds / 1e9
			}
		}
		if name == "fit" || name == "factorize" || name == "score" {
			rep.GaussSeconds += s.Seconds
		}
		rep.Stages = append(rep.Stages, s)
	}
	rep.PeakRSSBytes = PeakRSS()
	return rep, nil
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

// Print writes the report as a table.
func (r *Report) Print(w io.Writer) {
	fmt.Fprintf(w, "padim bench %s — %s, %d cores, device %s, kernels %s\n", r.Date, r.Machine, r.Cores, r.Device, r.Kernels)
	fmt.Fprintf(w, "backbone %s at %d², N=%d fit + %d scored, P=%d, d=%d, batch %d", r.Backbone, r.InputSize, r.N, r.NScore, r.P, r.D, r.Batch)
	if r.PeakGFLOPS > 0 {
		fmt.Fprintf(w, ", machine fp32 peak (SGEMM) %.1f GFLOP/s", r.PeakGFLOPS)
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "%-14s %9s %7s %10s %10s %8s %8s\n", "stage", "seconds", "images", "images/s", "GFLOP/s", "of peak", "GB/s")
	for _, s := range r.Stages {
		num := func(v float64, f string) string {
			if v == 0 {
				return "-"
			}
			return fmt.Sprintf(f, v)
		}
		fmt.Fprintf(w, "%-14s %9.3f %7d %10s %10s %8s %8s\n", s.Name, s.Seconds, s.Images, num(s.ImagesPS, "%.1f"), num(s.GFLOPS, "%.1f"), num(s.PeakRatio*100, "%.0f%%"), num(s.GBPS, "%.2f"))
	}
	fmt.Fprintf(w, "train %.2fs, score %.2fs, end to end %.2fs; Gaussian stages %.2fs\n", r.TrainSeconds, r.ScoreSeconds, r.TotalSeconds, r.GaussSeconds)
	fmt.Fprintf(w, "peak RSS %.2f GiB; model tensors %.1f MiB (packed L⁻¹) vs %.1f MiB with a full Σ⁻¹ (ratio %.4f)\n",
		float64(r.PeakRSSBytes)/(1<<30), float64(r.ModelBytes)/(1<<20), float64(r.FullInvBytes)/(1<<20), float64(r.ModelBytes)/float64(r.FullInvBytes))
}
