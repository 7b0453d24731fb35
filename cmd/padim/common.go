package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/padim/padim/detector"
	"github.com/padim/padim/detector/backbone"
	"github.com/padim/padim/detector/gauss"
	"github.com/padim/padim/gpu"
)

// notef prints a note on stderr unless --quiet.
func notef(c *cli.Context, format string, a ...any) {
	if !c.Bool("quiet") {
		fmt.Fprintf(os.Stderr, format+"\n", a...)
	}
}

// progress draws a bar on stderr when it is a terminal and not --quiet.
type progress struct {
	mu    sync.Mutex
	on    bool
	stage string
	start time.Time
	drawn bool
}

func newProgress(c *cli.Context) *progress {
	st, err := os.Stderr.Stat()
	on := err == nil && st.Mode()&os.ModeCharDevice != 0 && !c.Bool("quiet")
	return &progress{on: on}
}

func (p *progress) update(stage string, done, total int) {
	if !p.on || total <= 0 {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if stage != p.stage {
		if p.drawn {
			fmt.Fprintln(os.Stderr)
		}
		p.stage, p.start = stage, time.Now()
	}
	const width = 30
	fill := width * done / total
	fmt.Fprintf(os.Stderr, "\r%-10s [%s%s] %d/%d %s", stage, strings.Repeat("=", fill), strings.Repeat(" ", width-fill), done, total, time.Since(p.start).Round(time.Second))
	p.drawn = true
	if done >= total {
		fmt.Fprintln(os.Stderr)
		p.drawn = false
		p.stage = ""
	}
}

func (p *progress) done() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.drawn {
		fmt.Fprintln(os.Stderr)
		p.drawn = false
	}
}

var deviceFlag = &cli.StringFlag{Name: "device", Value: "auto", Usage: "where the Gaussian stages run: auto (CUDA when built with it and a GPU is present), cpu, cuda; " +
	"the backbone uses ONNX Runtime's CUDA provider when its library has one, else the CPU"}
var threadsFlag = &cli.IntFlag{Name: "threads", Usage: "ONNX Runtime intra-op threads (0: its default)"}
var batchFlag = &cli.IntFlag{Name: "batch", Value: detector.DefaultBatch, Usage: "images per backbone batch"}

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
	return backbone.OpenFile(path, o)
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

// readChannels reads comma- or whitespace-separated 0-based channel indices.
func readChannels(path string) ([]int, error) {
	b, err := os.ReadFile(path)
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
	return ch, nil
}
