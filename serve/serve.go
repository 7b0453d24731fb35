// Package serve is padim's scoring service: the KServe v2 / Open Inference
// Protocol REST endpoints (JSON, and Triton's binary tensor extension), the
// same protocol over gRPC, a plain raw-image endpoint, Prometheus metrics,
// drift statistics, and dynamic batching of concurrent requests into single
// pipeline calls. Every protocol goes parse → one core (Server.runInfer:
// header checks, memory budget, batcher, run-time thresholds) → encode.
//
// Each model runs a batcher: requests queue (at most Options.Queue images), a
// batch is gathered for at most Options.MaxDelay after its first request or until
// it holds Options.MaxBatch images, and the whole batch goes through one
// detector.Scorer.Score call. Reloading a model swaps in a new scorer atomically:
// requests that already hold the old one finish on it, and it is closed when the
// last of them is done.
//
// What a request holds besides the pipeline's own bounded memory (its body,
// what that expands to, its maps and answer) is charged to a budget before any
// work: Options.MaxRequestMemory per request (413 beyond), Options.MaxMemory
// for all requests in flight (429 beyond).
package serve

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/padim/padim/detector"
	"github.com/padim/padim/detector/fileio/picture"
	"github.com/padim/padim/detector/fileio/readfile"
)

// Options configure a Server. DefaultOptions gives the documented defaults.
type Options struct {
	MaxBatch  int           // most images per pipeline call
	MaxDelay  time.Duration // longest a batch waits for company after its first request
	Pipelines int           // pipeline calls in flight per model (the next batch is gathered while one runs)
	Queue     int           // images waiting for a batch, per model, before requests get 429
	MaxBody   int64         // request body (REST) and message (gRPC) limit in bytes (413 beyond)
	Timeout   time.Duration // per request, from its arrival to its answer (503 beyond)
	Token     string        // bearer token required on every endpoint but health; "" for none
	Snapshot  bool          // copy each model file before mapping it, so rewriting the file in place cannot disturb the served model
	Logger    *slog.Logger  // one line per request; nil discards
	Version   string        // reported by server metadata

	// MaxMemory is the bytes all requests in flight may hold together besides
	// the pipelines' own bounded memory: bodies, what they expand to when
	// parsed, maps and answers; a request that does not fit beside the others
	// gets 429. MaxRequestMemory is one request's share (413 beyond).
	MaxMemory, MaxRequestMemory int64
	// MaxMapPixels is the largest anomaly map one image may ask for (400 beyond).
	MaxMapPixels int64
	// DriftWindow is the number of recent image scores per model compared
	// with the model's calibration scores.
	DriftWindow int

	trace func(traceEvent) // tests: the batcher's events
}

// Defaults.
const (
	DefaultMaxBatch         = 16
	DefaultMaxDelay         = 5 * time.Millisecond
	DefaultPipelines        = 2
	DefaultQueue            = 64
	DefaultMaxBody          = 32 << 20
	DefaultTimeout          = 30 * time.Second
	DefaultMaxMemory        = 4 << 30
	DefaultMaxRequestMemory = 1 << 30
	DefaultMaxMapPixels     = 4096 * 4096
	DefaultDriftWindow      = 1000
)

// DefaultOptions returns the defaults of padim serve.
func DefaultOptions() Options {
	return Options{MaxBatch: DefaultMaxBatch, MaxDelay: DefaultMaxDelay, Pipelines: DefaultPipelines, Queue: DefaultQueue,
		MaxBody: DefaultMaxBody, Timeout: DefaultTimeout, Snapshot: true, Version: "dev",
		MaxMemory: DefaultMaxMemory, MaxRequestMemory: DefaultMaxRequestMemory, MaxMapPixels: DefaultMaxMapPixels, DriftWindow: DefaultDriftWindow}
}

func (o Options) check() error {
	switch {
	case o.MaxBatch < 1:
		return fmt.Errorf("max batch %d: want at least 1", o.MaxBatch)
	case o.MaxDelay < 0:
		return fmt.Errorf("max delay %v: want ≥ 0", o.MaxDelay)
	case o.Pipelines < 1:
		return fmt.Errorf("pipelines %d: want at least 1", o.Pipelines)
	case o.Queue < 1:
		return fmt.Errorf("queue %d: want at least 1 image", o.Queue)
	case o.MaxBody < 1:
		return fmt.Errorf("max body %d: want at least 1 byte", o.MaxBody)
	case o.Timeout <= 0:
		return fmt.Errorf("timeout %v: want > 0", o.Timeout)
	case o.MaxMemory < 1 || o.MaxRequestMemory < 1:
		return fmt.Errorf("memory budget %d bytes, %d per request: want at least 1 byte each", o.MaxMemory, o.MaxRequestMemory)
	case o.MaxMapPixels < 1:
		return fmt.Errorf("max map pixels %d: want at least 1", o.MaxMapPixels)
	case o.DriftWindow < 1:
		return fmt.Errorf("drift window %d: want at least 1 image", o.DriftWindow)
	}
	return nil
}

// trace events: what the batcher did (tests wait on them instead of time).
type traceKind int

const (
	traceQueued      traceKind = iota // a job entered a model's queue
	traceGathered                     // the batcher took a job into the batch it gathers (images: the batch's so far)
	traceWaitRunning                  // past the deadline, the batcher waits for a running batch while gathering
	traceBatch                        // a batch started (running: pipeline calls now in flight)
	traceDone                         // a batch was answered
	traceReleased                     // an engine released its model (after a reload or at close)
	traceDraining                     // the server started draining
)

type traceEvent struct {
	kind    traceKind
	model   string
	images  int
	running int
}

func (s *Server) trace(ev traceEvent) {
	if s.opt.trace != nil {
		s.opt.trace(ev)
	}
}

// ModelSpec names a model file to serve.
type ModelSpec struct {
	Name string // the name in URLs
	Path string
}

// ParseModelSpec reads "NAME=PATH" or "PATH" (the name is then the file's base
// name without extension). A file whose name holds "=" (line=3.padim) is
// read as PATH when it exists and NAME=PATH's file does not; when both exist
// the spec is ambiguous and refused: write ./line=3.padim for the file, or
// NAME=PATH with the name spelled out.
func ParseModelSpec(s string) (ModelSpec, error) {
	if name, path, ok := strings.Cut(s, "="); ok && name != "" && !strings.ContainsAny(name, `/\`) {
		_, errWhole := os.Stat(s)
		_, errPath := os.Stat(path)
		switch {
		case errWhole == nil && errPath == nil:
			return ModelSpec{}, fmt.Errorf("%q is ambiguous: a file of that name exists, and so does %q (model %q); write ./%s for the first, or %s=%s for the second", s, path, name, s, name, path)
		case errWhole == nil:
			return specOfPath(s)
		}
		return ModelSpec{Name: name, Path: path}, checkName(name)
	}
	return specOfPath(s)
}

func specOfPath(s string) (ModelSpec, error) {
	base := filepath.Base(s)
	name := strings.TrimSuffix(base, filepath.Ext(base))
	if err := checkName(name); err != nil {
		return ModelSpec{}, fmt.Errorf("%w; name the model with NAME=%s", err, s)
	}
	return ModelSpec{Name: name, Path: s}, nil
}

func checkName(name string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\\?#% ") {
		return fmt.Errorf("model name %q: want a non-empty name without / \\ ? # %% or spaces", name)
	}
	return nil
}

// Loaded is a model opened for scoring.
type Loaded struct {
	Model  *detector.Model
	Scorer *detector.Scorer
	Close  func() // releases the scorer, backbone and backend; called once, when no request uses them any more
}

// Loader opens a model file for scoring (padim serve builds the backbone and
// the Gaussian backend from its flags). Wrap the model's Extractor in Guard so
// that a panic in the backbone fails its batch instead of the process.
type Loader func(path string) (*Loaded, error)

// Server serves models over HTTP. Its ServeHTTP routes every endpoint.
type Server struct {
	opt      Options
	load     Loader
	log      *slog.Logger
	models   map[string]*model
	names    []string
	met      *metrics
	mem      *budget
	mux      *http.ServeMux
	patterns map[string]bool // paths routed, for their 405s
	draining atomic.Bool
	drained  chan struct{} // closed by Drain: batchers stop waiting for company
	drainMu  sync.Once
	baseCtx  context.Context
	cancel   context.CancelFunc
	closed   sync.Once
}

// New loads every model and returns a server ready to handle requests.
func New(specs []ModelSpec, load Loader, o Options) (*Server, error) {
	if err := o.check(); err != nil {
		return nil, err
	}
	if len(specs) == 0 {
		return nil, errors.New("no model to serve")
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	s := &Server{opt: o, load: load, log: o.Logger, models: map[string]*model{}, patterns: map[string]bool{}, drained: make(chan struct{}), mem: newBudget(o.MaxMemory, o.MaxRequestMemory)}
	s.baseCtx, s.cancel = context.WithCancel(context.Background())
	s.met = newMetrics(s.mem)
	s.mux = s.routes()
	for _, sp := range specs {
		if err := checkName(sp.Name); err != nil {
			return nil, err
		}
		if _, dup := s.models[sp.Name]; dup {
			return nil, fmt.Errorf("two models are named %q; name them with NAME=PATH", sp.Name)
		}
		m := &model{srv: s, name: sp.Name, path: sp.Path, drift: newDrift(o.DriftWindow)}
		s.models[sp.Name] = m
		s.names = append(s.names, sp.Name)
		s.met.addModel(m)
	}
	slices.Sort(s.names)
	for _, name := range s.names {
		if _, err := s.Reload(name); err != nil {
			s.Close()
			return nil, err
		}
	}
	return s, nil
}

// Models returns the names served, sorted.
func (s *Server) Models() []string { return slices.Clone(s.names) }

// Reload opens the model's file again and swaps it in atomically. Requests
// already admitted finish on the old model; if the new file cannot be loaded,
// the old model keeps serving and the error is returned (it names the file:
// for the log, not for clients). It returns the new version.
func (s *Server) Reload(name string) (string, error) {
	m, ok := s.models[name]
	if !ok {
		return "", fmt.Errorf("no model %q", name)
	}
	m.loadMu.Lock()
	defer m.loadMu.Unlock()
	t := time.Now()
	l, err := s.open(m.path)
	if err != nil {
		s.met.loads.WithLabelValues(name, "error").Inc()
		s.log.Error("model load refused", "model", name, "path", m.path, "err", err)
		return "", err
	}
	m.gen++
	e := newEngine(m, m.gen, l)
	m.drift.reset(e.version)
	old := m.cur.Swap(e)
	if old != nil {
		old.retire()
	}
	s.met.loads.WithLabelValues(name, "ok").Inc()
	s.met.generation.WithLabelValues(name).Set(float64(m.gen))
	s.log.Info("model loaded", "model", name, "path", m.path, "version", e.version, "backbone", l.Model.BackboneName,
		"input", l.Model.Preprocess.InputSize(), "dim", len(l.Model.Channels), "calibrated", l.Scorer.Thresholds() != nil,
		"calibration_scores", len(e.info.calibration), "seconds", time.Since(t).Seconds())
	return e.version, nil
}

// ReloadAll reloads every model (SIGHUP); each keeps its old version on failure.
func (s *Server) ReloadAll() error {
	var errs []error
	for _, name := range s.names {
		if _, err := s.Reload(name); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

// open loads a model file, from a private copy when Options.Snapshot is set:
// the served model is mapped from that copy, so a file rewritten in place (a
// copy over it, a partial upload) never changes what is being served.
func (s *Server) open(path string) (*Loaded, error) {
	if err := readfile.Check(path); err != nil {
		return nil, err
	}
	src := path
	if s.opt.Snapshot {
		tmp, err := snapshot(path)
		if err != nil {
			return nil, fmt.Errorf("copying %s before loading it: %w", path, err)
		}
		defer os.Remove(tmp) // the mapping keeps the data; the name goes now
		src = tmp
	}
	l, err := s.load(src)
	if err != nil {
		if src != path {
			err = errors.New(strings.ReplaceAll(err.Error(), src, path))
		}
		return nil, err
	}
	if l == nil || l.Model == nil || l.Scorer == nil {
		return nil, fmt.Errorf("%s: the loader returned no scorer", path)
	}
	return l, nil
}

func snapshot(path string) (string, error) {
	in, err := readfile.Open(path)
	if err != nil {
		return "", err
	}
	defer in.Close()
	out, err := os.CreateTemp("", "padim-serve-*"+filepath.Ext(path))
	if err != nil {
		return "", err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		os.Remove(out.Name())
		return "", err
	}
	if err := out.Close(); err != nil {
		os.Remove(out.Name())
		return "", err
	}
	return out.Name(), nil
}

// Ready reports whether the server takes requests: every model loaded and not draining.
func (s *Server) Ready() bool {
	if s.draining.Load() {
		return false
	}
	for _, m := range s.models {
		if m.cur.Load() == nil {
			return false
		}
	}
	return true
}

// Drain marks the server as going away: readiness turns false; requests are
// still answered, and batches waiting for company (--max-delay) start at once.
func (s *Server) Drain() {
	s.draining.Store(true)
	s.drainMu.Do(func() { close(s.drained) })
	s.trace(traceEvent{kind: traceDraining})
}

// Close stops every model's batcher once its admitted requests are answered
// and releases the models. Call it after the HTTP server has stopped.
func (s *Server) Close() {
	s.closed.Do(func() {
		s.Drain()
		var es []*engine
		for _, m := range s.models {
			m.loadMu.Lock()
			if e := m.cur.Swap(nil); e != nil {
				e.retire()
				es = append(es, e)
			}
			m.loadMu.Unlock()
		}
		for _, e := range es {
			<-e.stopped
		}
		s.cancel()
	})
}

// model is one served name; its engine is swapped on reload.
type model struct {
	srv    *Server
	name   string
	path   string
	loadMu sync.Mutex // serialises loads
	gen    int
	cur    atomic.Pointer[engine]
	queued atomic.Int64 // images admitted and not yet in a batch, across versions
	drift  *drift       // recent scores against the calibration scores
}

// acquire returns the current engine, held until release; nil when the server is closing.
func (m *model) acquire() *engine {
	for {
		e := m.cur.Load()
		if e == nil {
			return nil
		}
		if e.tryAcquire() {
			return e
		}
		// retired between the load and the acquire: the new one is in place
	}
}

// modelInfo is what requests need to know of a loaded model.
type modelInfo struct {
	thresholds  *detector.Thresholds // in force by default; nil: none
	source      string               // of the thresholds: "model" (its calibration) or "server" (--threshold)
	heat        picture.Range
	calibration []float64 // the model's out-of-sample calibration image scores, sorted; nil: none
	expected    float64   // the share of them above the image threshold: the defect rate expected on good images
}

func infoOf(l *Loaded) modelInfo {
	in := modelInfo{thresholds: l.Scorer.Thresholds(), source: "model"}
	c := l.Model.Calibration
	if in.thresholds != nil && (c == nil || c.Thresholds != *in.thresholds) {
		in.source = "server"
	}
	if c != nil && len(c.PixelQuantiles) > 0 {
		in.heat = picture.Range{Lo: c.PixelQuantiles[0], Hi: 1.5 * c.Image}
	}
	if c != nil && len(c.ImageScores) > 0 {
		in.calibration = make([]float64, len(c.ImageScores))
		above := 0
		for i, v := range c.ImageScores {
			in.calibration[i] = float64(v)
			if in.thresholds != nil && v > in.thresholds.Image {
				above++
			}
		}
		slices.Sort(in.calibration)
		in.expected = float64(above) / float64(len(c.ImageScores))
	}
	return in
}

// engine is one loaded version of a model and its batcher.
type engine struct {
	m       *model
	gen     int
	version string
	l       *Loaded
	info    modelInfo
	in      chan *job
	mu      sync.Mutex
	users   int
	retired bool
	stopped chan struct{} // closed when the batcher has finished and the model is released

	statMu sync.Mutex
	last   map[string]detector.StageTime
}

func newEngine(m *model, gen int, l *Loaded) *engine {
	e := &engine{m: m, gen: gen, version: strconv.Itoa(gen), l: l, info: infoOf(l),
		in: make(chan *job, m.srv.opt.Queue), stopped: make(chan struct{}), last: map[string]detector.StageTime{}}
	go e.loop()
	return e
}

func (e *engine) tryAcquire() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.retired {
		return false
	}
	e.users++
	return true
}

func (e *engine) release() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.users--
	if e.retired && e.users == 0 {
		close(e.in)
	}
}

// retire takes the engine out of service: it finishes what it was given and
// then releases the model.
func (e *engine) retire() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.retired {
		return
	}
	e.retired = true
	if e.users == 0 {
		close(e.in)
	}
}
