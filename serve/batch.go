package serve

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/padim/padim/detector"
	"github.com/padim/padim/detector/embed"
	"github.com/padim/padim/detector/imageio"
	"github.com/padim/padim/detector/postproc"
)

// job is one request's images on their way through a batch.
type job struct {
	ctx        context.Context
	names      []string             // per image, for error messages
	images     [][]byte             // encoded
	wantMap    bool                 // keep the anomaly maps
	netFrame   bool                 // maps in the network's frame, not the input image's
	thresholds *detector.Thresholds // the request's own; nil: the scorer's
	enqueued   time.Time

	// set by the batcher before done is closed
	results []imageResult
	err     error         // the batch failed for a reason that is not this request's input
	queued  time.Duration // waiting for its batch
	batch   int           // images in its pipeline call
	done    chan struct{}
}

// imageResult is one image's outcome.
type imageResult struct {
	Err    error // the image could not be decoded or used
	Score  float32
	Defect bool
	Boxes  []postproc.Box // in the input image's pixels, as padim score --json
	Frame  imageio.Frame  // how the map lies on the input image
	W, H   int            // the map's size
	Map    []float32      // only when the request asked for maps

	serverDefect bool // the verdict under the server's thresholds (metrics count these)
}

// Admission errors.
var (
	errQueueFull = errors.New("queue full")
	errClosing   = errors.New("server closing")
)

// submit queues a job on the engine, which the caller holds (and releases
// once it is done waiting). The runInfer core has checked the job's size
// against the queue.
func (e *engine) submit(j *job) error {
	m := e.m
	q := int64(m.srv.opt.Queue)
	n := int64(len(j.images))
	if m.queued.Add(n) > q {
		m.queued.Add(-n)
		return errQueueFull
	}
	j.enqueued = time.Now()
	j.done = make(chan struct{})
	select {
	case e.in <- j:
		m.srv.trace(traceEvent{kind: traceQueued, model: m.name, images: int(n)})
		return nil
	default: // cannot happen while admission counts images (≥ jobs) against the channel's capacity
		m.queued.Add(-n)
		return errQueueFull
	}
}

// loop gathers jobs into batches and runs them, at most Pipelines at once,
// until the engine is retired and its queue drained; then it releases the model.
//
// A batch starts when it holds MaxBatch images, or once MaxDelay has passed
// since its first request and no other batch is running: a partial batch
// started beside a running one would only compete with it for the cores (and
// small batches cost the Gaussian stage a full pass over the model each), so
// it keeps gathering until the running batch is done.
func (e *engine) loop() {
	o := e.m.srv.opt
	finished := make(chan struct{}, o.Pipelines)
	running := 0
	reap := func() {
		for {
			select {
			case <-finished:
				running--
			default:
				return
			}
		}
	}
	var wg sync.WaitGroup
	var next *job // taken from the queue but did not fit the last batch
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	open := true
	for open || next != nil {
		for running >= o.Pipelines {
			<-finished
			running--
		}
		first := next
		next = nil
		if first == nil {
			var ok bool
			if first, ok = <-e.in; !ok {
				break
			}
		}
		batch, n := []*job{first}, len(first.images)
		deadline := first.enqueued.Add(o.MaxDelay)
		if e.m.srv.draining.Load() {
			deadline = time.Time{}
		}
		e.m.srv.trace(traceEvent{kind: traceGathered, model: e.m.name, images: n})
	gather:
		for open && n < o.MaxBatch {
			reap()
			var j *job
			var ok bool
			if wait := time.Until(deadline); wait > 0 {
				timer.Reset(wait)
				select {
				case j, ok = <-e.in:
					timer.Stop()
				case <-timer.C:
					continue gather
				case <-e.m.srv.drained: // draining: no more waiting for company
					timer.Stop()
					deadline = time.Time{}
					continue gather
				}
			} else if running > 0 {
				e.m.srv.trace(traceEvent{kind: traceWaitRunning, model: e.m.name, images: n})
				select { // past the deadline, a batch running: gather until it is done
				case j, ok = <-e.in:
				case <-finished:
					running--
					continue gather
				}
			} else {
				select { // past the deadline, nothing running: take only what is already waiting
				case j, ok = <-e.in:
				default:
					break gather
				}
			}
			if !ok {
				open = false
				break
			}
			if n+len(j.images) > o.MaxBatch {
				next = j
				break
			}
			batch, n = append(batch, j), n+len(j.images)
			e.m.srv.trace(traceEvent{kind: traceGathered, model: e.m.name, images: n})
		}
		e.m.queued.Add(-int64(n))
		running++
		e.m.srv.trace(traceEvent{kind: traceBatch, model: e.m.name, images: n, running: running})
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { finished <- struct{}{} }()
			e.run(batch)
		}()
	}
	wg.Wait()
	e.l.Close()
	close(e.stopped)
	e.m.srv.trace(traceEvent{kind: traceReleased, model: e.m.name})
}

// run scores one batch and answers its jobs.
func (e *engine) run(batch []*job) {
	start := time.Now()
	live := batch[:0:0]
	for _, j := range batch {
		j.queued = start.Sub(j.enqueued)
		if err := j.ctx.Err(); err != nil {
			j.err = err // its client has gone or timed out: not scored
			close(j.done)
			continue
		}
		live = append(live, j)
	}
	if len(live) == 0 {
		return
	}
	// The batch is cancelled when every client in it has gone.
	ctx, cancel := context.WithCancel(e.m.srv.baseCtx)
	defer cancel()
	left := atomic.Int32{}
	left.Store(int32(len(live)))
	for _, j := range live {
		stop := context.AfterFunc(j.ctx, func() {
			if left.Add(-1) == 0 {
				cancel()
			}
		})
		defer stop()
	}
	n := 0
	for _, j := range live {
		n += len(j.images)
	}
	err := e.score(ctx, live)
	if err != nil && len(live) > 1 && ctx.Err() == nil {
		// Not an input's fault (those come back per image): find the request that
		// breaks the pipeline by running each alone, so the others are answered.
		e.m.srv.log.Warn("batch failed; retrying its requests one by one", "model", e.m.name, "requests", len(live), "err", err)
		for _, j := range live {
			if j.ctx.Err() != nil {
				j.err = j.ctx.Err()
				continue
			}
			j.err = e.score(ctx, []*job{j})
		}
	} else if err != nil {
		for _, j := range live {
			j.err = err
		}
	}
	elapsed := time.Since(start)
	e.record(live, n, elapsed)
	for _, j := range live {
		j.batch = n
		close(j.done)
	}
	e.m.srv.trace(traceEvent{kind: traceDone, model: e.m.name, images: n})
}

// score runs jobs through one pipeline call; a panic becomes an error.
func (e *engine) score(ctx context.Context, jobs []*job) (err error) {
	defer func() {
		if p := recover(); p != nil {
			e.m.srv.log.Error("panic while scoring", "model", e.m.name, "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
			err = fmt.Errorf("internal error: %v", p)
		}
	}()
	type ref struct {
		j *job
		k int
	}
	var inputs []detector.Input
	var refs []ref
	for _, j := range jobs {
		j.results = make([]imageResult, len(j.images))
		for k, b := range j.images {
			inputs = append(inputs, detector.Input{Name: j.names[k], Data: b})
			refs = append(refs, ref{j, k})
		}
	}
	seen := 0
	err = e.l.Scorer.Score(ctx, inputs, func(r *detector.Result) error {
		if r.Index < 0 || r.Index >= len(refs) {
			return fmt.Errorf("result index %d outside the batch of %d", r.Index, len(refs))
		}
		seen++
		rf := refs[r.Index]
		out := &rf.j.results[rf.k]
		if r.Err != nil {
			out.Err = r.Err
			return nil
		}
		serverDefect := r.Defect
		if rf.j.thresholds != nil {
			r.Verdict = e.l.Scorer.Decide(r, rf.j.thresholds)
		}
		*out = imageResult{Score: r.Score, Defect: r.Defect, Boxes: r.ImageBoxes, Frame: r.Frame, W: r.W, H: r.H, serverDefect: serverDefect}
		if rf.j.wantMap {
			if rf.j.netFrame {
				out.Map = r.Map
			} else {
				out.Map, out.W, out.H = r.ImageMap()
			}
		}
		return nil
	})
	if err == nil && seen != len(inputs) {
		err = fmt.Errorf("the pipeline answered %d of %d images", seen, len(inputs))
	}
	return err
}

// record updates the batch metrics.
func (e *engine) record(jobs []*job, n int, elapsed time.Duration) {
	met, name := e.m.srv.met, e.m.name
	met.batch.WithLabelValues(name).Observe(float64(n))
	scored, defects := 0, 0
	for _, j := range jobs {
		met.stage.WithLabelValues(name, "queue").Observe(j.queued.Seconds())
		met.stage.WithLabelValues(name, "batch").Observe(elapsed.Seconds())
		if j.err != nil {
			continue
		}
		for _, r := range j.results {
			if r.Err == nil {
				scored++
				if r.serverDefect {
					defects++
				}
				e.m.drift.add(r.Score)
			}
		}
	}
	met.images.WithLabelValues(name).Add(float64(scored))
	met.defects.WithLabelValues(name).Add(float64(defects))
	// The pipeline's own stages: busy time per item since the last batch.
	e.statMu.Lock()
	defer e.statMu.Unlock()
	for _, st := range e.l.Scorer.Pipeline().Timings.Stages() {
		prev := e.last[st.Name]
		if di := st.Items - prev.Items; di > 0 {
			met.stage.WithLabelValues(name, st.Name).Observe((st.Busy - prev.Busy).Seconds() / float64(di))
		}
		e.last[st.Name] = st
	}
}

// Guard wraps a backbone so that a panic in it becomes an error: its batch
// fails (and is retried request by request) while the server goes on.
func Guard(ext detector.Extractor) detector.Extractor { return guarded{ext} }

type guarded struct{ detector.Extractor }

// PreferredBatch passes the backbone's own batch size through the guard
// (detector.BatchPreferrer), so that a served model runs the backbone in the
// batches padim score runs it in; 0 lets the pipeline choose.
func (g guarded) PreferredBatch() int {
	if b, ok := g.Extractor.(detector.BatchPreferrer); ok {
		return b.PreferredBatch()
	}
	return 0
}

func (g guarded) Extract(batch []float32, n int) (taps []embed.Tap, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("backbone panicked: %v", p)
		}
	}()
	return g.Extractor.Extract(batch, n)
}
