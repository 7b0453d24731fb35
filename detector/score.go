package detector

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/padim/padim/detector/anomalymap"
	"github.com/padim/padim/detector/baseline"
	"github.com/padim/padim/detector/gauss"
	"github.com/padim/padim/detector/imageio"
	"github.com/padim/padim/detector/postproc"
)

// DefaultOpenRadius is the opening radius (pixels of the map) that removes specks
// from defect masks.
const DefaultOpenRadius = 2

// Thresholds are the decision values of a model: an image is a defect when its
// score is above Image; a map pixel is a defect pixel when above Pixel.
type Thresholds struct {
	Image float32 `json:"image"`
	Pixel float32 `json:"pixel"`
}

// Check reports whether the thresholds are usable numbers.
func (t Thresholds) Check() error {
	for _, v := range []float32{t.Image, t.Pixel} {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			return fmt.Errorf("threshold %v is not a finite number", v)
		}
	}
	return nil
}

// Result is one input's outcome.
type Result struct {
	Index int    // position in the inputs
	Name  string // the input's Name
	Err   error  // the input could not be read or used; nothing below is set

	W, H    int           // map size: the network input, or the image's own size when tiling
	Map     []float32     // blurred anomaly map, H×W
	Grid    []float32     // patch-grid distances, one GridH×GridW grid per sample
	Score   float32       // max of Map
	Frame   imageio.Frame // how the map lies on the input image
	Image   *imageio.Planes
	Warning string // something to know about this input (e.g. far smaller than the network input)
	Verdict
}

// Verdict is the decision on one image, when thresholds are known.
type Verdict struct {
	Thresholds *Thresholds    // nil: no verdict
	Defect     bool           // Score > Thresholds.Image
	Mask       *postproc.Mask // pixels above the pixel threshold after opening (defects only)
	Boxes      []postproc.Box // in map pixels
	ImageBoxes []postproc.Box // the same in the input image's pixels (Frame)
}

// ScoreSettings say how a Gaussian's distances become maps and verdicts.
type ScoreSettings struct {
	Backend    gauss.Backend // nil: the CPU
	Sigma      float64       // blur σ in pixels of the network input
	Thresholds *Thresholds   // nil: scores and maps only
	OpenRadius int           // opening radius of defect masks; < 0: DefaultOpenRadius
	KeepImages bool          // keep each result's Image (for pictures)
	Group      int           // embeddings per Gaussian call; 0: the backend's preference, at least DefaultGroup
}

// Scorer scores images with one Gaussian model through a pipeline. It is safe
// for concurrent use; concurrent Score calls share the backbone one batch at a time.
type Scorer struct {
	pipe *Pipeline
	gs   gauss.Scorer
	maps *anomalymap.Maker
	set  ScoreSettings
}

// GroupHinter is a gauss.Backend or gauss.Scorer that wants at least this
// many embeddings per call: a GPU, or the CPU's low-rank scorer, amortises its
// read of the model over larger batches.
type GroupHinter interface{ PreferredGroup() int }

// NewScorer prepares scoring of the pipeline's embeddings with the Gaussian g
// (either form).
func NewScorer(p *Pipeline, g Fitted, set ScoreSettings) (*Scorer, error) {
	l := p.Layout()
	if gp, gd := g.Shape(); gp != l.P() || gd != l.D() {
		return nil, fmt.Errorf("the Gaussian has P=%d D=%d but the pipeline embeds P=%d D=%d", gp, gd, l.P(), l.D())
	}
	if set.Thresholds != nil {
		if err := set.Thresholds.Check(); err != nil {
			return nil, err
		}
	}
	if set.Backend == nil {
		set.Backend = gauss.CPU{}
	}
	gs, err := newFittedScorer(set.Backend, g)
	if err != nil {
		return nil, err
	}
	s, err := newScorer(p, gs, set)
	if err != nil {
		gs.Close()
	}
	return s, err
}

// newScorer scores the pipeline's embeddings with gs, which it closes when closed.
func newScorer(p *Pipeline, gs gauss.Scorer, set ScoreSettings) (*Scorer, error) {
	if set.Thresholds != nil {
		if err := set.Thresholds.Check(); err != nil {
			return nil, err
		}
	}
	if set.Backend == nil {
		set.Backend = gauss.CPU{}
	}
	if set.OpenRadius < 0 {
		set.OpenRadius = DefaultOpenRadius
	}
	if set.Group <= 0 {
		set.Group = DefaultGroup
		if h, ok := set.Backend.(GroupHinter); ok {
			set.Group = max(set.Group, h.PreferredGroup())
		}
		if h, ok := gs.(GroupHinter); ok {
			set.Group = max(set.Group, h.PreferredGroup())
		}
	}
	maps, err := mapMaker(p, set.Sigma)
	if err != nil {
		return nil, err
	}
	return &Scorer{pipe: p, gs: gs, maps: maps, set: set}, nil
}

// mapMaker prepares the pipeline's maps: at the network input's size, or, when
// tiling, at the image's own, with the blur scaled like the tiles.
func mapMaker(p *Pipeline, sigma float64) (*anomalymap.Maker, error) {
	pre, l := p.Preprocess(), p.Layout()
	side := pre.InputSize()
	if pre.Tile > 0 {
		side = pre.Tile
		sigma *= float64(pre.Tile) / float64(pre.InputSize())
	}
	return anomalymap.NewMaker(l.H, l.W, side, sigma)
}

func mapRects(r []imageio.Rect) []anomalymap.Rect {
	out := make([]anomalymap.Rect, len(r))
	for i, x := range r {
		out[i] = anomalymap.Rect(x)
	}
	return out
}

// Close releases the backend's resources.
func (s *Scorer) Close() error { return s.gs.Close() }

// Pipeline is the pipeline the scorer runs.
func (s *Scorer) Pipeline() *Pipeline { return s.pipe }

// Thresholds returns the thresholds in force, nil if none.
func (s *Scorer) Thresholds() *Thresholds { return s.set.Thresholds }

// scoreState collects one item's distances until all its samples are scored.
type scoreState struct {
	it       *item
	grid     []float32
	left     int
	image    float32 // the method's own image score (max over samples), when it has one
	hasImage bool
	result   chan *Result
}

// Score runs the inputs through the pipeline and calls fn with each result, in
// input order, from the calling goroutine. An unreadable input gives a result
// with Err set; fn decides whether to go on (returning an error stops the run).
// tap, when set, also receives every chunk of embeddings (for calibration).
func (s *Scorer) Score(ctx context.Context, inputs []Input, fn func(*Result) error) error {
	return s.score(ctx, inputs, nil, fn)
}

func (s *Scorer) score(ctx context.Context, inputs []Input, tap func(Chunk) error, fn func(*Result) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	g, gctx := errgroup.WithContext(ctx)
	p := s.pipe
	st := p.start(gctx, g, inputs, s.set.Group, s.set.KeepImages)
	defer p.putBuffers(st)
	P := p.Layout().P()
	emit := newQueue[*scoreState]() // unbounded: failed inputs take no memory and must never block the stage
	mapJobs := make(chan *scoreState, 2*p.opt.Workers)

	// Gaussian stage: distances per chunk, assembled per item.
	g.Go(func() error {
		defer emit.close()
		defer close(mapJobs)
		var dist []float32
		for c := range st.chunks {
			for _, it := range c.items {
				ss := &scoreState{it: it, result: make(chan *Result, 1), left: len(it.rects)}
				if it.err != nil {
					ss.result <- &Result{Index: it.index, Name: it.name, Err: it.err}
				} else {
					ss.grid = make([]float32, len(it.rects)*P)
				}
				emit.push(ss)
				it.state = ss
			}
			if c.n > 0 {
				if tap != nil {
					if err := tap(p.export(c)); err != nil {
						return err
					}
				}
				if cap(dist) < c.n*P {
					dist = make([]float32, c.n*P)
				}
				t := time.Now()
				var img []float32
				if ssc, ok := s.gs.(baseline.Scorer); ok {
					img = make([]float32, c.n)
					if err := ssc.ScoreSamples(c.emb, c.n, nil, dist[:c.n*P], img); err != nil {
						return err
					}
				} else if err := s.gs.Score(c.emb, c.n, dist[:c.n*P]); err != nil {
					return err
				}
				p.Timings.Since("score", t, c.n)
				for i, r := range c.refs {
					ss := r.it.state.(*scoreState)
					copy(ss.grid[r.k*P:(r.k+1)*P], dist[i*P:(i+1)*P])
					if img != nil {
						if !ss.hasImage || img[i] > ss.image {
							ss.image = img[i]
						}
						ss.hasImage = true
					}
					if ss.left--; ss.left == 0 {
						select {
						case mapJobs <- ss:
						case <-gctx.Done():
							return gctx.Err()
						}
					}
				}
			}
			st.recycle(c)
		}
		return nil
	})
	// Map stage: upsample, stitch, blur, decide; in parallel.
	for w := 0; w < p.opt.Workers; w++ {
		g.Go(func() error {
			for ss := range mapJobs {
				t := time.Now()
				r, err := s.finish(ss)
				if err != nil {
					return err
				}
				p.Timings.Since("map", t, 1)
				ss.result <- r
			}
			return nil
		})
	}
	// Emission, in input order, on the caller's goroutine.
	var ferr error
	for {
		ss, ok := emit.pop()
		if !ok {
			break
		}
		if ferr != nil {
			st.release(ss.it)
			continue
		}
		var r *Result
		select {
		case r = <-ss.result:
		case <-gctx.Done():
			ferr = gctx.Err()
			continue
		}
		st.release(ss.it)
		if ferr = fn(r); ferr != nil {
			cancel()
		}
	}
	err := g.Wait()
	if ferr != nil && !errors.Is(ferr, context.Canceled) {
		return ferr
	}
	if err != nil {
		return err
	}
	return ferr
}

// ImageMap returns the map in the input image's frame: resampled to the
// image's size (bilinear); pixels outside a centre crop are 0.
func (r *Result) ImageMap() (m []float32, w, h int) {
	f := r.Frame
	if f.ImageW == r.W && f.ImageH == r.H && f.OffX == 0 && f.OffY == 0 {
		return r.Map, r.W, r.H
	}
	return anomalymap.ToImage(r.Map, r.W, r.H, f.ImageW, f.ImageH, f.OffX, f.OffY, f.ScaleX, f.ScaleY, 0), f.ImageW, f.ImageH
}

// ImageMask returns the defect mask in the input image's frame (nil without one).
func (r *Result) ImageMask() *postproc.Mask {
	if r.Mask == nil {
		return nil
	}
	f := r.Frame
	if f.ImageW == r.W && f.ImageH == r.H && f.OffX == 0 && f.OffY == 0 {
		return r.Mask
	}
	v := make([]float32, len(r.Mask.Pix))
	for i, b := range r.Mask.Pix {
		if b {
			v[i] = 1
		}
	}
	up := anomalymap.ToImage(v, r.W, r.H, f.ImageW, f.ImageH, f.OffX, f.OffY, f.ScaleX, f.ScaleY, 0)
	return postproc.Threshold(up, f.ImageW, f.ImageH, 0.5)
}

// imageBox maps a box from map pixels to the input image's pixels: its
// corners scale with the frame, outward to whole pixels.
func imageBox(b postproc.Box, f imageio.Frame) postproc.Box {
	x0 := int(math.Floor(f.OffX + float64(b.X)*f.ScaleX))
	y0 := int(math.Floor(f.OffY + float64(b.Y)*f.ScaleY))
	x1 := int(math.Ceil(f.OffX + float64(b.X+b.W)*f.ScaleX))
	y1 := int(math.Ceil(f.OffY + float64(b.Y+b.H)*f.ScaleY))
	x0, y0 = max(x0, 0), max(y0, 0)
	x1, y1 = min(x1, f.ImageW), min(y1, f.ImageH)
	area := int(math.Round(float64(b.Area) * f.ScaleX * f.ScaleY))
	return postproc.Box{X: x0, Y: y0, W: x1 - x0, H: y1 - y0, Area: area, MaxScore: b.MaxScore}
}

// finish turns one image's patch distances into its map, score and verdict.
func (s *Scorer) finish(ss *scoreState) (*Result, error) {
	it := ss.it
	m, score, err := s.maps.Make(ss.grid, mapRects(it.rects), it.w, it.h)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", it.name, err)
	}
	if ss.hasImage {
		score = ss.image // the method's own image score
	}
	r := &Result{Index: it.index, Name: it.name, W: it.w, H: it.h, Map: m, Grid: ss.grid, Score: score, Frame: it.frame, Image: it.view, Warning: it.warning}
	if th := s.set.Thresholds; th != nil {
		r.Verdict = s.Decide(r, th)
	}
	return r, nil
}

// Decide is the verdict on a result under thresholds th: the one Score gives
// when th are the scorer's, for a caller that sets its own per image (padim
// serve's per-request thresholds).
func (s *Scorer) Decide(r *Result, th *Thresholds) Verdict {
	v := Verdict{Thresholds: th, Defect: r.Score > th.Image}
	if v.Defect {
		v.Mask, v.Boxes = postproc.Detect(r.Map, r.W, r.H, th.Pixel, s.set.OpenRadius)
		for _, b := range v.Boxes {
			v.ImageBoxes = append(v.ImageBoxes, imageBox(b, r.Frame))
		}
	}
	return v
}
