package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/urfave/cli/v2"
	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"

	"github.com/padim/padim/detector"
	"github.com/padim/padim/detector/backbone"
	"github.com/padim/padim/detector/fileio/readfile"
	"github.com/padim/padim/detector/gauss"
	"github.com/padim/padim/gpu"
)

// notef prints a note on stderr unless --quiet.
func notef(c *cli.Context, format string, a ...any) {
	if !c.Bool("quiet") {
		fmt.Fprintf(os.Stderr, format+"\n", a...)
	}
}

// progress draws one bar per stage on stderr (vbauerster/mpb) when stderr is a
// terminal and not --quiet.
type progress struct {
	mu    sync.Mutex
	p     *mpb.Progress
	bar   *mpb.Bar
	stage string
	ctx   context.Context
}

func newProgress(c *cli.Context) *progress {
	st, err := os.Stderr.Stat()
	if err != nil || st.Mode()&os.ModeCharDevice == 0 || c.Bool("quiet") {
		return &progress{ctx: c.Context}
	}
	return &progress{p: mpb.New(mpb.WithOutput(os.Stderr), mpb.WithWidth(40)), ctx: c.Context}
}

// testWaitEnv names a test hook: with $PADIM_TEST_WAIT_AT=STAGE a command
// says "padim-test: waiting at STAGE" on stderr when it reaches that stage
// (a progress stage: fit, crossfit, calibrate, factorize, score, evaluate;
// or train's save and saved) and waits there for a signal, so that a test
// interrupts (or kills) it at a known point instead of after a guessed
// delay. STAGE:N waits at the stage's N-th input instead of its first.
const testWaitEnv = "PADIM_TEST_WAIT_AT"

var testWaited sync.Map // stages waited at (once each)

// testWait is the test hook at the done-th input of stage (see
// testWaitEnv); without it, nothing.
func testWait(ctx context.Context, stage string, done int) {
	want, ok := os.LookupEnv(testWaitEnv)
	if !ok || ctx == nil {
		return
	}
	if name, n, found := strings.Cut(want, ":"); found {
		if name != stage || n != strconv.Itoa(done) {
			return
		}
	} else if want != stage {
		return
	}
	if _, waited := testWaited.LoadOrStore(stage, true); waited {
		return
	}
	fmt.Fprintf(os.Stderr, "padim-test: waiting at %s\n", want)
	<-ctx.Done()
}

// update implements detector.Progress.
func (p *progress) update(stage string, done, total int) {
	testWait(p.ctx, stage, done)
	if p.p == nil || total <= 0 {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if stage != p.stage || p.bar == nil {
		if p.bar != nil && !p.bar.Completed() {
			p.bar.Abort(false)
		}
		p.stage = stage
		p.bar = p.p.AddBar(int64(total),
			mpb.PrependDecorators(decor.Name(fmt.Sprintf("%-10s", stage)), decor.CountersNoUnit("%d/%d", decor.WCSyncSpace)),
			mpb.AppendDecorators(decor.Elapsed(decor.ET_STYLE_GO, decor.WCSyncSpace)))
	}
	p.bar.SetTotal(int64(total), false)
	p.bar.SetCurrent(int64(done))
}

// done finishes the bars (an unfinished one is left as it stood).
func (p *progress) done() {
	if p.p == nil {
		return
	}
	p.mu.Lock()
	if p.bar != nil && !p.bar.Completed() {
		p.bar.Abort(false)
	}
	p.mu.Unlock()
	p.p.Wait()
}

// printTimings writes the pipeline's per-stage busy times on stderr (-v).
func printTimings(c *cli.Context, what string, wall time.Duration, tms ...*detector.Timings) {
	if !c.Bool("verbose") {
		return
	}
	fmt.Fprintf(os.Stderr, "%s: %.2fs wall; busy time per stage (parallel stages add their workers):\n", what, wall.Seconds())
	for _, tm := range tms {
		for _, s := range tm.Stages() {
			rate := ""
			if s.Busy > 0 && s.Items > 0 {
				rate = fmt.Sprintf("%8.1f items/s", float64(s.Items)/s.Busy.Seconds())
			}
			fmt.Fprintf(os.Stderr, "  %-14s %8.2fs %6d items %s\n", s.Name, s.Busy.Seconds(), s.Items, rate)
		}
	}
}

var deviceFlag = &cli.StringFlag{Name: "device", Value: "auto", Usage: "where the Gaussian stages run: auto (CUDA when built with it and a GPU is present), cpu, cuda; " +
	"the backbone uses ONNX Runtime's CUDA provider when its library has one, else the CPU"}
var threadsFlag = &cli.IntFlag{Name: "threads", Usage: "ONNX Runtime intra-op threads (0: its default)"}
var batchFlag = &cli.IntFlag{Name: "batch", Usage: "backbone inputs per ONNX Runtime run (images are batched across files; 0: 2 when ONNX Runtime runs on the CPU, 16 on its CUDA provider)"}

// pipelineOptions reads the pipeline flags.
func pipelineOptions(c *cli.Context) detector.PipelineOptions {
	o := detector.PipelineOptions{Batch: c.Int("batch")}
	if b, err := memoryBudget(c); err == nil {
		o.Memory = min(detector.DefaultMemory, b/8)
	}
	return o
}

// gaussBackend picks the backend for --device and says which.
func gaussBackend(c *cli.Context) (gauss.Backend, error) {
	switch d := c.String("device"); d {
	case "cpu":
		return gauss.CPU{}, nil
	case "cuda":
		b, err := gpu.New(0)
		if err != nil {
			return nil, cli.Exit(fmt.Sprintf("--device cuda: %v", err), exitError)
		}
		notef(c, "device: %s", b.Name())
		return b, nil
	case "auto":
		b, err := gpu.New(0)
		if err != nil {
			notef(c, "device: cpu (%s kernels); CUDA not used: %v", gauss.KernelLibrary, err)
			return gauss.CPU{}, nil
		}
		notef(c, "device: %s", b.Name())
		return b, nil
	default:
		return nil, usageError("--device %q: want auto, cpu or cuda", d)
	}
}

// openBackbone opens an ONNX backbone from a file or from bytes.
func openBackbone(c *cli.Context, path string, data []byte, taps []string) (*backbone.Extractor, error) {
	o := backbone.Options{
		Library: c.String("onnxruntime"),
		Threads: c.Int("threads"),
		Device:  "auto", // ONNX Runtime's CUDA provider when the library has it, else the CPU (with a note)
		Taps:    taps,
		Log:     func(f string, a ...any) { notef(c, f, a...) },
	}
	if c.String("device") == "cpu" {
		o.Device = "cpu"
	}
	if data != nil {
		return backbone.Open(data, path, o)
	}
	if err := readfile.Check(path); err != nil { // a FIFO would block the read
		return nil, err
	}
	return backbone.OpenFile(path, o)
}

// openScoring opens a backbone (a model's: its graph and taps) and the
// backend of --device, in that order.
func openScoring(c *cli.Context, name string, data []byte, taps []string) (*backbone.Extractor, gauss.Backend, error) {
	ext, err := openBackbone(c, name, data, taps)
	if err != nil {
		return nil, nil, err
	}
	be, err := gaussBackend(c)
	if err != nil {
		ext.Close()
		return nil, nil, err
	}
	return ext, be, nil
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// readChannels reads comma- or whitespace-separated 0-based channel
// indices, sorted; one given twice is an error.
func readChannels(path string) ([]int, error) {
	b, err := readfile.ReadFile(path)
	if err != nil {
		return nil, err
	}
	fields := strings.FieldsFunc(string(b), func(r rune) bool { return r == ',' || r == ' ' || r == '\n' || r == '\t' || r == '\r' })
	var ch []int
	for _, f := range fields {
		v, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("%s: %q is not a channel index", path, f)
		}
		ch = append(ch, v)
	}
	if len(ch) == 0 {
		return nil, fmt.Errorf("%s: no channel indices", path)
	}
	slices.Sort(ch)
	if len(slices.Compact(slices.Clone(ch))) != len(ch) {
		return nil, fmt.Errorf("%s: repeated channel index", path)
	}
	return ch, nil
}

// printJSON prints an indented JSON document on stdout.
func printJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
