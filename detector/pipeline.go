package detector

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sync/semaphore"

	"github.com/padim/padim/detector/embed"
	"github.com/padim/padim/detector/fileio/readfile"
	"github.com/padim/padim/detector/gauss"
	"github.com/padim/padim/detector/imageio"
)

// Extractor runs a backbone: a batch of n normalised images [n][3][S][S] in, one
// feature map per tap out. package backbone implements it with ONNX Runtime.
// The pipeline never calls Extract concurrently, and uses the taps before the
// next call (an Extractor may reuse their memory).
type Extractor interface {
	InputSize() int
	Taps() []embed.TapShape
	Extract(batch []float32, n int) ([]embed.Tap, error)
}

// BatchPreferrer is an Extractor that knows the batch it runs fastest at
// (package backbone: 2 images on ONNX Runtime's CPU provider, 16 on CUDA).
// Results do not depend on it.
type BatchPreferrer interface {
	PreferredBatch() int
}

// Input is one image for the pipeline: a file, encoded bytes, or decoded planes.
type Input struct {
	Name  string          // the file to read, or a label for in-memory inputs (messages, results)
	Data  []byte          // encoded image (PNG, JPEG, BMP, TIFF, GIF); nil reads the file Name
	Image *imageio.Planes // already decoded; takes precedence over Data and Name
}

// FileInputs returns one Input per file path.
func FileInputs(paths []string) []Input {
	in := make([]Input, len(paths))
	for i, p := range paths {
		in[i] = Input{Name: p}
	}
	return in
}

// FileError is an input that could not be used, and why.
type FileError struct {
	Index int // position in the inputs
	Path  string
	Err   error
}

func (e FileError) Error() string { return e.Err.Error() }
func (e FileError) Unwrap() error { return e.Err }

// Pipeline defaults.
const (
	DefaultBatch  = 16      // backbone inputs per ONNX Runtime run, unless the Extractor prefers another (BatchPreferrer)
	DefaultGroup  = 32      // embeddings per Gaussian call: each patch's model is read once per group
	DefaultMemory = 1 << 30 // bytes of decoded images, backbone inputs and maps in flight
)

// PipelineOptions tune a pipeline; zero values take the defaults.
type PipelineOptions struct {
	Pool    int   // k×k average pooling of the taps (PatchCore: 3); 0: none
	Batch   int   // backbone inputs per run (0: the Extractor's preferred batch, else DefaultBatch)
	Workers int   // decode and map workers (GOMAXPROCS)
	Memory  int64 // bound on decoded images, backbone inputs and maps in flight (DefaultMemory)
	// Staging, when set, provides the embedding buffers (a GPU backend's page-locked
	// memory: the embed stage writes where the device copies from).
	Staging gauss.Stager
}

// stagedBy returns o with its embedding buffers from b when b hands out staging
// memory (a GPU backend) and o names none.
func (o PipelineOptions) stagedBy(b gauss.Backend) PipelineOptions {
	if st, ok := b.(gauss.Stager); ok && o.Staging == nil {
		o.Staging = st
	}
	return o
}

// Pipeline is padim's one path from image files to embeddings and, with a
// Scorer, to maps and verdicts: decode (a bounded pool, in parallel, ahead of
// use) → resize, crop or tile → backbone on batches gathered across files →
// embedding (nearest upsampling, concatenation, channel subset). Train, score,
// evaluation, calibration, bench and serve all run it. It records the busy time
// of each stage in Timings. Runs may be concurrent; the backbone runs one batch
// at a time.
type Pipeline struct {
	ext     Extractor
	layout  *embed.Layout
	pre     imageio.Preprocess
	opt     PipelineOptions
	Timings *Timings

	extMu sync.Mutex // the Extractor is not safe for concurrent use
	bufMu sync.Mutex
	bufs  [][]float32 // reusable embedding buffers

	decoding atomic.Int32 // images being decoded now, by every run
}

// NewPipeline prepares the pipeline for a backbone, a channel subset of its
// concatenated taps, and input settings.
func NewPipeline(ext Extractor, channels []int, pre imageio.Preprocess, opt PipelineOptions) (*Pipeline, error) {
	if err := pre.Check(); err != nil {
		return nil, err
	}
	if s := pre.InputSize(); s != ext.InputSize() {
		return nil, fmt.Errorf("the input settings make %d² images but the backbone takes %d²", s, ext.InputSize())
	}
	layout, err := embed.NewLayout(ext.Taps(), channels)
	if err != nil {
		return nil, err
	}
	if opt.Pool > 1 {
		if layout, err = layout.WithPool(opt.Pool); err != nil {
			return nil, err
		}
	}
	if opt.Batch <= 0 {
		opt.Batch = DefaultBatch
		if b, ok := ext.(BatchPreferrer); ok && b.PreferredBatch() > 0 {
			opt.Batch = b.PreferredBatch()
		}
	}
	if opt.Workers <= 0 {
		opt.Workers = runtime.GOMAXPROCS(0)
	}
	if opt.Memory <= 0 {
		opt.Memory = DefaultMemory
	}
	return &Pipeline{ext: ext, layout: layout, pre: pre, opt: opt, Timings: NewTimings()}, nil
}

// Layout is the embedding layout (grid and channels).
func (p *Pipeline) Layout() *embed.Layout { return p.layout }

// Preprocess is how images become backbone inputs.
func (p *Pipeline) Preprocess() imageio.Preprocess { return p.pre }

// Batch is the number of backbone inputs per run.
func (p *Pipeline) Batch() int { return p.opt.Batch }

// Timings accumulates the busy time and item count of each stage. Parallel
// stages (decode, map) add the time of every worker, so their sum can exceed
// the wall time. It is safe for concurrent use.
type Timings struct {
	mu     sync.Mutex
	stages map[string]StageTime
	order  []string
}

// StageTime is one stage's total busy time and the items it handled.
type StageTime struct {
	Name  string
	Busy  time.Duration
	Items int
}

// NewTimings returns empty timings.
func NewTimings() *Timings { return &Timings{stages: map[string]StageTime{}} }

// Add records d of busy time for n items in a stage.
func (t *Timings) Add(stage string, d time.Duration, n int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	s, ok := t.stages[stage]
	if !ok {
		t.order = append(t.order, stage)
		s.Name = stage
	}
	s.Busy += d
	s.Items += n
	t.stages[stage] = s
}

// Since records the time since start for n items in a stage.
func (t *Timings) Since(stage string, start time.Time, n int) { t.Add(stage, time.Since(start), n) }

// Stages returns the stages in the order they first ran.
func (t *Timings) Stages() []StageTime {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]StageTime, len(t.order))
	for i, n := range t.order {
		out[i] = t.stages[n]
	}
	return out
}

// Get returns one stage's time (zero if it never ran).
func (t *Timings) Get(stage string) StageTime {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.stages[stage]
}

// Reset forgets every stage.
func (t *Timings) Reset() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.stages, t.order = map[string]StageTime{}, nil
}

// item is one input on its way through the pipeline.
type item struct {
	index   int
	name    string
	err     error
	view    *imageio.Planes // the planes the map is computed on; dropped once embedded unless kept
	rects   []imageio.Rect  // the backbone inputs' rectangles in view
	frame   imageio.Frame   // the map's place in the input image
	w, h    int             // map size
	warning string          // something the user should know about this input
	held    int64           // memory budget held until release
	state   any             // the consumer's per-item state
}

// queue is an unbounded FIFO between two goroutines.
type queue[T any] struct {
	mu     sync.Mutex
	cond   *sync.Cond
	items  []T
	closed bool
}

func newQueue[T any]() *queue[T] {
	q := &queue[T]{}
	q.cond = sync.NewCond(&q.mu)
	return q
}

func (q *queue[T]) push(v T) {
	q.mu.Lock()
	q.items = append(q.items, v)
	q.mu.Unlock()
	q.cond.Signal()
}

func (q *queue[T]) close() {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	q.cond.Broadcast()
}

// pop waits for the next value; false when the queue is closed and empty.
func (q *queue[T]) pop() (T, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for len(q.items) == 0 && !q.closed {
		q.cond.Wait()
	}
	var zero T
	if len(q.items) == 0 {
		return zero, false
	}
	v := q.items[0]
	q.items[0] = zero
	q.items = q.items[1:]
	return v, true
}

// stream is one run of inputs through decode, backbone and embedding. Chunks of
// embeddings come out in input order; every item appears in exactly one chunk's
// items (the chunk holding its first sample, or, if it failed, the next chunk).
type stream struct {
	p        *Pipeline
	chunks   chan *chunk
	free     chan []float32
	sem      *semaphore.Weighted
	budget   int64
	starved  chan struct{} // wakes the gatherer when the next input starts waiting for memory
	waiting  atomic.Bool   // the next input waits for memory: send on what is gathered
	keepView bool          // keep each item's view after embedding (for pictures)
}

// chunk is a run of up to group embeddings of consecutive samples.
type chunk struct {
	emb   []float32 // [n][P][D]
	n     int
	refs  []sampleRef
	items []*item // items introduced by this chunk, in order
}

type sampleRef struct {
	it *item
	k  int // sample index within the item
}

// release returns an item's memory to the budget.
func (s *stream) release(it *item) {
	if it.held > 0 {
		s.sem.Release(it.held)
		it.held = 0
	}
}

// recycle returns a chunk's buffer for the next chunk.
func (s *stream) recycle(c *chunk) {
	if c.emb != nil {
		s.free <- c.emb
	}
}

// start runs decode and embedding in g's goroutines. group is the most
// embeddings per chunk (rounded up to a multiple of the batch); keepView keeps
// each item's resized image for pictures.
func (p *Pipeline) start(ctx context.Context, g *errgroup.Group, inputs []Input, group int, keepView bool) *stream {
	B := p.opt.Batch
	group = max(group, B)
	group = (group + B - 1) / B * B
	s := &stream{p: p, chunks: make(chan *chunk, 1), free: make(chan []float32, 2), sem: semaphore.NewWeighted(p.opt.Memory), budget: p.opt.Memory,
		starved: make(chan struct{}, 1), keepView: keepView}
	P, D := p.layout.P(), p.layout.D()
	for i := 0; i < 2; i++ {
		s.free <- p.getBuffer(group * P * D)
	}
	// Admission: in input order, reserve each input's memory (all of it for an
	// input larger than the budget, which then runs alone), then hand it to a
	// decode worker. In-order reservation cannot deadlock: whatever holds memory
	// is earlier in the stream, and when the next input must wait, the chunk
	// being gathered is sent on (starved), so everything earlier finishes.
	lookahead := max(2*group, 4*p.opt.Workers)
	ordered := make(chan chan *item, lookahead)
	jobs := make(chan func(), p.opt.Workers)
	g.Go(func() error {
		defer close(ordered)
		defer close(jobs)
		for i, in := range inputs {
			slot := make(chan *item, 1)
			it := &item{index: i, name: in.Name}
			hdr, err := p.header(in)
			if err != nil {
				it.err = err
				slot <- it
			} else {
				transient, kept := p.memory(hdr)
				it.held = min(transient+kept, s.budget)
				if !s.sem.TryAcquire(it.held) {
					s.waiting.Store(true)
					select {
					case s.starved <- struct{}{}:
					default:
					}
					err := s.sem.Acquire(ctx, it.held)
					s.waiting.Store(false)
					if err != nil {
						return err
					}
				}
				keep := min(kept, it.held)
				select {
				case jobs <- func() { p.decode(in, it); s.sem.Release(it.held - keep); it.held = keep; slot <- it }:
				case <-ctx.Done():
					s.sem.Release(it.held)
					return ctx.Err()
				}
			}
			select {
			case ordered <- slot:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return nil
	})
	for w := 0; w < p.opt.Workers; w++ {
		g.Go(func() error {
			for job := range jobs {
				job()
			}
			return nil
		})
	}
	g.Go(func() error {
		defer close(s.chunks)
		return p.embedLoop(ctx, s, ordered, group)
	})
	return s
}

// embedLoop gathers samples across items into backbone batches and chunks.
func (p *Pipeline) embedLoop(ctx context.Context, s *stream, ordered chan chan *item, group int) error {
	B, S := p.opt.Batch, p.ext.InputSize()
	per := 3 * S * S
	P, D := p.layout.P(), p.layout.D()
	in := make([]float32, B*per)
	var c *chunk
	nIn := 0 // samples in the backbone batch, not yet embedded
	newChunk := func() error {
		select {
		case buf := <-s.free:
			c = &chunk{emb: buf}
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	runBatch := func() error {
		if nIn == 0 {
			return nil
		}
		t := time.Now()
		p.extMu.Lock() // held until the taps are embedded: the extractor may reuse them
		defer p.extMu.Unlock()
		taps, err := p.ext.Extract(in[:nIn*per], nIn)
		if err != nil {
			return err
		}
		p.Timings.Since("backbone", t, nIn)
		t = time.Now()
		off := (c.n - nIn) * P * D
		if _, err := p.layout.Embed(taps, c.emb[off:off+nIn*P*D]); err != nil {
			return err
		}
		if k := firstNonFinite(c.emb[off:off+nIn*P*D], P*D); k >= 0 {
			return fmt.Errorf("%s: %w", c.refs[c.n-nIn+k].it.name, ErrNonFiniteFeatures)
		}
		p.Timings.Since("embed", t, nIn)
		nIn = 0
		return nil
	}
	// flush sends the chunk on and, unless it is the last, starts the next.
	flush := func(last bool) error {
		if err := runBatch(); err != nil {
			return err
		}
		if c.n == 0 && len(c.items) == 0 {
			return nil
		}
		select {
		case s.chunks <- c:
		case <-ctx.Done():
			return ctx.Err()
		}
		if last {
			return nil
		}
		return newChunk()
	}
	if err := newChunk(); err != nil {
		return err
	}
	for {
		var slot chan *item
		var ok bool
		select {
		case slot, ok = <-ordered:
		case <-s.starved:
			if err := flush(false); err != nil {
				return err
			}
			continue
		case <-ctx.Done():
			return ctx.Err()
		}
		if !ok {
			break
		}
		var it *item
		select {
		case it = <-slot:
		case <-ctx.Done():
			return ctx.Err()
		}
		c.items = append(c.items, it)
		if it.err != nil {
			continue
		}
		for k, r := range it.rects {
			if c.n == group {
				if err := flush(false); err != nil {
					return err
				}
			}
			p.pre.Input(it.view, r, in[nIn*per:(nIn+1)*per])
			c.refs = append(c.refs, sampleRef{it, k})
			c.n++
			nIn++
			if nIn == B {
				if err := runBatch(); err != nil {
					return err
				}
			}
		}
		if !s.keepView {
			it.view = nil
		}
		if c.n == group || s.waiting.Load() {
			if err := flush(false); err != nil {
				return err
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return flush(true)
}

// ErrNonFiniteFeatures is wrapped by the error of a backbone that gave a NaN
// or infinite feature: the backbone is broken, whatever the image (train and
// score stop on it alike).
var ErrNonFiniteFeatures = errors.New("the backbone produced a non-finite feature (NaN or Inf): the backbone is broken (NaN weights, or an export that overflows), not the image")

// firstNonFinite is the first sample (of n values each) of v holding a NaN
// or an infinity, or -1.
func firstNonFinite(v []float32, n int) int {
	const exp = 0x7f800000 // all exponent bits set: Inf or NaN
	for i, x := range v {
		if math.Float32bits(x)&exp == exp {
			return i / n
		}
	}
	return -1
}

// header reads an input's image size without decoding it.
func (p *Pipeline) header(in Input) (imageio.Header, error) {
	switch {
	case in.Image != nil:
		return imageio.Header{W: in.Image.W, H: in.Image.H, Format: "planes"}, nil
	case in.Data != nil:
		h, err := imageio.ReadHeader(bytes.NewReader(in.Data))
		if err != nil {
			return h, fmt.Errorf("%s: %w", in.Name, err)
		}
		h.Size, h.InMemory = int64(len(in.Data)), true
		return h, nil
	}
	f, err := readfile.Open(in.Name) // a FIFO or a folder is refused, not waited on
	if err != nil {
		return imageio.Header{}, err
	}
	defer f.Close()
	h, err := imageio.ReadHeader(f)
	if err != nil {
		return h, fmt.Errorf("%s: %w (is it a readable PNG, JPEG, BMP, TIFF or GIF image?)", in.Name, err)
	}
	if st, err := f.Stat(); err == nil {
		h.Size = st.Size()
	}
	return h, nil
}

// memory estimates an input's peak memory while it is decoded and cut
// (transient) and what stays until its result is out (kept: backbone inputs,
// the map and its buffers, the kept view).
func (p *Pipeline) memory(h imageio.Header) (transient, kept int64) {
	px := int64(h.W) * int64(h.H)
	S := int64(p.pre.InputSize())
	// the decoded image as its decoder holds it, the encoded bytes where they
	// are held, the resampler's rows, and float32 planes of the whole image when tiling
	transient = p.pre.DecodeMemory(h)
	n, mapPx := int64(1), S*S
	if p.pre.Tile > 0 {
		if rects, err := p.pre.Tiles(h.W, h.H); err == nil {
			n = int64(len(rects))
		}
		mapPx = px
	}
	P := int64(p.layout.P())
	// the view (float32 RGB), the patch distances, the map and its three buffers
	kept = mapPx*12 + n*P*4 + mapPx*4*4
	return transient, kept
}

// SmallImageFactor: an image whose sides are both under the network input's
// divided by this is flagged: its map is mostly interpolation.
const SmallImageFactor = 4

// decode reads and decodes one input and prepares its view and rectangles.
func (p *Pipeline) decode(in Input, it *item) {
	t := time.Now()
	defer p.Timings.Since("decode", t, 1)
	var err error
	switch {
	case in.Image != nil:
		it.view, it.rects, it.frame, err = p.pre.View(in.Image)
	default:
		// one image's rows split over the cores the other decodes leave idle
		// (serve and --stdin-jsonl send one frame at a time)
		n := int(p.decoding.Add(1))
		threads := max(1, runtime.GOMAXPROCS(0)/n)
		it.view, it.rects, it.frame, it.warning, err = p.pre.DecodeView(imageio.Encoded{Path: in.Name, Data: in.Data}, threads)
		p.decoding.Add(-1)
		if err != nil && in.Data == nil && !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, fs.ErrPermission) {
			err = fmt.Errorf("%w (is it a readable PNG, JPEG, BMP, TIFF or GIF image?)", err)
		}
	}
	if err != nil && !strings.HasPrefix(err.Error(), in.Name) {
		err = fmt.Errorf("%s: %w", in.Name, err)
	}
	if err == nil {
		it.w, it.h = it.view.W, it.view.H
		if s, f := p.pre.InputSize(), it.frame; p.pre.Tile == 0 && f.ImageW*SmallImageFactor < s && f.ImageH*SmallImageFactor < s {
			it.warning = joinWarnings(it.warning, fmt.Sprintf("the image is %dx%d, much smaller than the %d² network input: its map is mostly interpolation and its score means little", f.ImageW, f.ImageH, s))
		} else if p.pre.Tile == 0 && (f.ImageW*SmallImageFactor < s || f.ImageH*SmallImageFactor < s) {
			it.warning = joinWarnings(it.warning, fmt.Sprintf("the image is %dx%d: one side is much smaller than the %d² network input, so it is stretched more than %d× along it: its map is mostly interpolation there and its score means little", f.ImageW, f.ImageH, s, SmallImageFactor))
		}
	}
	it.err = err
}

// joinWarnings appends b to the warnings a ("; " between them).
func joinWarnings(a, b string) string {
	if a == "" {
		return b
	}
	return a + "; " + b
}

func (p *Pipeline) getBuffer(n int) []float32 {
	p.bufMu.Lock()
	defer p.bufMu.Unlock()
	for i, b := range p.bufs {
		if cap(b) >= n {
			p.bufs = slices.Delete(p.bufs, i, i+1)
			return b[:n]
		}
	}
	if p.opt.Staging != nil {
		return p.opt.Staging.StagingBuffer(n)
	}
	return make([]float32, n)
}

// putBuffers keeps a stream's buffers for the next run (at most two).
func (p *Pipeline) putBuffers(s *stream) {
	p.bufMu.Lock()
	defer p.bufMu.Unlock()
	for {
		select {
		case b := <-s.free:
			if len(p.bufs) < 2 {
				p.bufs = append(p.bufs, b)
			}
		default:
			return
		}
	}
}

// Chunk is a run of embeddings of consecutive samples, in input order.
type Chunk struct {
	Emb    []float32   // [N][P][D]; valid only during the callback
	N      int         // samples (images, or tiles)
	Source []int       // per sample, the index of its input
	Failed []FileError // inputs up to this chunk that could not be read
	Items  []ItemInfo  // inputs whose first sample is in this chunk
}

// ItemInfo is what the pipeline learnt of one readable input: where its
// samples lie in its map, and the map's size.
type ItemInfo struct {
	Index int
	Name  string
	Rects []imageio.Rect
	W, H  int
}

// export describes a chunk for callers outside the pipeline.
func (p *Pipeline) export(c *chunk) Chunk {
	out := Chunk{Emb: c.emb[:c.n*p.layout.P()*p.layout.D()], N: c.n}
	for _, r := range c.refs {
		out.Source = append(out.Source, r.it.index)
	}
	for _, it := range c.items {
		if it.err != nil {
			out.Failed = append(out.Failed, FileError{it.index, it.name, it.err})
		} else {
			out.Items = append(out.Items, ItemInfo{it.index, it.name, it.rects, it.w, it.h})
		}
	}
	return out
}

// Embeddings runs the inputs through decode, backbone and embedding and calls fn
// with chunks of at most group embeddings (≥ the backbone batch), in input
// order. Unreadable inputs are reported in Failed; fn decides whether to go on.
func (p *Pipeline) Embeddings(ctx context.Context, inputs []Input, group int, fn func(Chunk) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	g, gctx := errgroup.WithContext(ctx)
	s := p.start(gctx, g, inputs, group, false)
	defer p.putBuffers(s)
	var ferr error
	for c := range s.chunks {
		if ferr == nil {
			ferr = fn(p.export(c))
			if ferr != nil {
				cancel()
			}
		}
		for _, it := range c.items {
			s.release(it)
		}
		s.recycle(c)
	}
	err := g.Wait()
	if ferr != nil {
		return ferr
	}
	return err
}
