package detector

import (
	"fmt"
	"sync"

	"github.com/padim/padim/detector/anomalymap"
	"github.com/padim/padim/detector/embed"
	"github.com/padim/padim/detector/gauss"
	"github.com/padim/padim/detector/imageio"
	"github.com/padim/padim/detector/postproc"
)

// DefaultOpenRadius is the opening radius (pixels of the map) that removes specks
// from defect masks.
const DefaultOpenRadius = 2

// Result is one image's outcome.
type Result struct {
	Path  string
	W, H  int       // map size: the network input, or the image's own size when tiling
	Map   []float32 // blurred anomaly map, H×W
	Raw   []float32 // the same before the blur
	Grid  []float32 // patch-grid distances (whole-image mode only)
	Score float32   // max of Map
	Image *imageio.Planes
	Verdict
}

// Verdict is the decision on one image, when a threshold is known.
type Verdict struct {
	HasVerdict bool
	Defect     bool
	Threshold  float32
	Mask       *postproc.Mask // pixels above the pixel threshold after opening (defects only)
	Boxes      []postproc.Box
}

// ScoreConfig says how to score.
type ScoreConfig struct {
	Backend    gauss.Backend
	Batch      int
	Threshold  float32 // >0 overrides the calibrated thresholds (image and pixel)
	OpenRadius int     // <0 means DefaultOpenRadius
}

// Scorer scores images under one model.
type Scorer struct {
	model  *Model
	emb    *embedder
	gs     gauss.Scorer
	up     *anomalymap.Upsampler // grid → network input, or → tile size
	sigma  float64               // blur σ at the map's resolution
	blurMu sync.Mutex
	blurs  map[[2]int]*anomalymap.Blur
	cfg    ScoreConfig
	imgT   float32
	pixT   float32
	hasT   bool
}

// NewScorer prepares scoring with the given backbone.
func (m *Model) NewScorer(ext Extractor, cfg ScoreConfig) (*Scorer, error) {
	if ext.InputSize() != m.Preprocess.InputSize() {
		return nil, fmt.Errorf("the model expects %d² inputs but the backbone takes %d²", m.Preprocess.InputSize(), ext.InputSize())
	}
	got := ext.Taps()
	if len(got) != len(m.Taps) {
		return nil, fmt.Errorf("the model was trained on %d taps %v, the backbone gives %d: was it trained with another backbone?", len(m.Taps), m.Taps, len(got))
	}
	for i := range got {
		if got[i] != m.Taps[i] {
			return nil, fmt.Errorf("backbone tap %v differs from the model's %v: the model was trained with another backbone", got[i], m.Taps[i])
		}
	}
	layout, err := embed.NewLayout(m.Taps, m.Channels)
	if err != nil {
		return nil, err
	}
	if cfg.Backend == nil {
		cfg.Backend = gauss.CPU{}
	}
	s, err := newScorer(m, ext, layout, cfg.Backend, cfg.Batch)
	if err != nil {
		return nil, err
	}
	s.cfg = cfg
	if cfg.OpenRadius < 0 {
		s.cfg.OpenRadius = DefaultOpenRadius
	}
	switch {
	case cfg.Threshold > 0:
		s.imgT, s.pixT, s.hasT = cfg.Threshold, cfg.Threshold, true
	case m.Calibration != nil:
		s.imgT, s.pixT, s.hasT = m.Calibration.ImageThreshold, m.Calibration.PixelThreshold, true
	}
	return s, nil
}

func newScorer(m *Model, ext Extractor, layout *embed.Layout, b gauss.Backend, batch int) (*Scorer, error) {
	if batch <= 0 {
		batch = DefaultBatch
	}
	gs, err := b.NewScorer(m.Gaussian)
	if err != nil {
		return nil, err
	}
	pp := m.Preprocess
	side, sigma := pp.InputSize(), m.Sigma
	if pp.Tile > 0 {
		// maps live at native resolution: scale the blur with the tile's resize
		side = pp.Tile
		sigma = m.Sigma * float64(pp.Tile) / float64(pp.InputSize())
	}
	up, err := anomalymap.NewUpsampler(layout.H, layout.W, side, side)
	if err != nil {
		gs.Close()
		return nil, err
	}
	return &Scorer{model: m, emb: newEmbedder(ext, layout, batch), gs: gs, up: up, sigma: sigma, blurs: map[[2]int]*anomalymap.Blur{}}, nil
}

// Close releases the backend's resources.
func (s *Scorer) Close() error { return s.gs.Close() }

// Preprocess is how the scorer prepares images (the model's settings).
func (s *Scorer) Preprocess() imageio.Preprocess { return s.model.Preprocess }

// Thresholds returns the image and pixel thresholds in force, if any.
func (s *Scorer) Thresholds() (image, pixel float32, ok bool) { return s.imgT, s.pixT, s.hasT }

// HasThreshold reports whether verdicts are available.
func (s *Scorer) HasThreshold() bool { return s.hasT }

func (s *Scorer) blur(h, w int) (*anomalymap.Blur, error) {
	s.blurMu.Lock()
	defer s.blurMu.Unlock()
	if b := s.blurs[[2]int{h, w}]; b != nil {
		return b, nil
	}
	b, err := anomalymap.NewBlur(h, w, s.sigma)
	if err == nil {
		s.blurs[[2]int{h, w}] = b
	}
	return b, err
}

// ScoreFiles scores files in order, calling fn with each result. A file that
// cannot be read gives a result with Err set when skipBad, else stops the run.
func (s *Scorer) ScoreFiles(files []string, skipBad bool, fn func(*Result, error) error) error {
	return decodeChunks(files, s.model.Preprocess, s.emb.batch, func(chunk []decoded) error {
		for _, d := range chunk {
			if d.err != nil {
				if !skipBad {
					return d.err
				}
				if err := fn(&Result{Path: d.path}, d.err); err != nil {
					return err
				}
				continue
			}
			r, err := s.scoreDecoded(d, nil)
			if err != nil {
				return fmt.Errorf("%s: %w", d.path, err)
			}
			if err := fn(r, nil); err != nil {
				return err
			}
		}
		return nil
	})
}

// ScoreImage scores one decoded image.
func (s *Scorer) ScoreImage(name string, pl *imageio.Planes) (*Result, error) {
	smp, view, err := s.model.Preprocess.Prepare(pl)
	if err != nil {
		return nil, err
	}
	return s.scoreDecoded(decoded{path: name, samples: smp, image: view}, nil)
}

// scoreDecoded embeds and scores one file's samples, stitches tiles, blurs, and
// decides. tap, when set, also receives the embeddings (for calibration).
func (s *Scorer) scoreDecoded(d decoded, tap func(emb []float32, n int) error) (*Result, error) {
	m := s.model
	P := m.GridH * m.GridW
	dist := make([]float32, len(d.samples)*P)
	err := s.emb.run(d.samples, func(emb []float32, first, n int) error {
		if tap != nil {
			if err := tap(emb, n); err != nil {
				return err
			}
		}
		return s.gs.Score(emb, n, dist[first*P:(first+n)*P])
	})
	if err != nil {
		return nil, err
	}
	r := &Result{Path: d.path, Image: d.image}
	if m.Preprocess.Tile <= 0 {
		r.W, r.H = s.up.W, s.up.H
		r.Grid = dist
		r.Raw = make([]float32, r.W*r.H)
		s.up.Apply(dist, r.Raw)
	} else {
		r.W, r.H = d.image.W, d.image.H
		r.Raw = make([]float32, r.W*r.H)
		count := make([]float32, r.W*r.H)
		tile := make([]float32, s.up.W*s.up.H)
		for i, smp := range d.samples {
			s.up.Apply(dist[i*P:(i+1)*P], tile)
			rc := smp.Rect
			for y := 0; y < rc.H; y++ {
				for x := 0; x < rc.W; x++ {
					o := (rc.Y+y)*r.W + rc.X + x
					r.Raw[o] += tile[y*rc.W+x]
					count[o]++
				}
			}
		}
		for i, c := range count {
			r.Raw[i] /= c
		}
	}
	b, err := s.blur(r.H, r.W)
	if err != nil {
		return nil, err
	}
	r.Map = make([]float32, r.W*r.H)
	b.Apply(r.Raw, r.Map, make([]float32, r.W*r.H))
	r.Score = anomalymap.Max(r.Map)
	if s.hasT {
		r.HasVerdict, r.Threshold = true, s.imgT
		r.Defect = r.Score > s.imgT
		if r.Defect {
			r.Mask, r.Boxes = postproc.Detect(r.Map, r.W, r.H, s.pixT, s.cfg.OpenRadius)
		}
	}
	return r, nil
}
