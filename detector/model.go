// Package detector is padim's public API: train a PaDiM model from good images,
// save and load it, and score images into anomaly maps, verdicts and defect boxes.
// It composes the parts in its sub-packages: imageio (input), an Extractor
// (the backbone), embed, gauss (the Gaussian backend), anomalymap, postproc,
// metrics and safetensors (the model file).
package detector

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/padim/padim/detector/baseline"
	"github.com/padim/padim/detector/embed"
	"github.com/padim/padim/detector/fileio/readfile"
	"github.com/padim/padim/detector/fileio/safetensors"
	"github.com/padim/padim/detector/gauss"
	"github.com/padim/padim/detector/imageio"
)

// FormatVersion is the model file version this code writes and reads. Version
// 2 checksums the header as well as the data.
const FormatVersion = 2

// Meta describes how a model was made.
type Meta struct {
	Created        time.Time
	BackboneName   string
	BackboneSHA256 string
	Taps           []embed.TapShape
	Preprocess     imageio.Preprocess
	Eps            float64
	NTrain         int    // training samples (images or tiles) in the final fit
	Seed           uint64 // channel-subset seed (0 when channels were given)
	TotalChannels  int
	Sigma          float64
	GridH, GridW   int
	Method         string // MethodPaDiM (default), baseline.MethodSPADE or baseline.MethodPatchCore (Methods)
	Pool           int    // k×k average pooling of the taps (PatchCore: 3); 0: none
}

// Calibration holds the thresholds derived from held-out good images.
type Calibration struct {
	Thresholds               // verdict: defect iff image score > Image; masks: defect pixel iff map value > Pixel
	Rule           string    // how the thresholds were derived
	Images         int       // images whose out-of-sample scores set the thresholds
	ImageScores    []float32 // their image scores under the model fitted without them
	PixelLevels    []float64 // quantile levels of their pixel scores
	PixelQuantiles []float32
	TargetFPR      float64 // the false-alarm rate on good images the image threshold aims at (0: not recorded)
	Conformal      bool    // the image threshold is the conformal order statistic for TargetFPR (else a quantile rule's, nominally 1−q)
	ExpectedFPR    float64 // the rate at which a new good image exceeds it, from the scores' ranks (ExpectedFalseAlarms)
}

// Model is a trained detector.
type Model struct {
	Meta
	Channels     []int        // kept indices into the concatenated taps
	Gaussian     Fitted       // PaDiM's *gauss.Gaussian (full form) or *gauss.LowRank, or a baseline's model
	Calibration  *Calibration // nil when trained with no hold-out
	BackboneONNX []byte       // the backbone graph, so a model file is self-contained
}

// Save writes the model atomically as safetensors.
func (m *Model) Save(path string) error {
	md := m.metadata("padim")
	var ts []safetensors.Tensor
	switch g := m.Gaussian.(type) {
	case *gauss.Gaussian:
		md["gaussian"], md["dim"] = gauss.FormFull, strconv.Itoa(g.D)
		ts = []safetensors.Tensor{
			safetensors.F32("mean", g.Mean, g.P, g.D),
			safetensors.F32("linv", g.LInv, g.P, gauss.PackedLen(g.D)),
		}
	case *gauss.LowRank:
		md["gaussian"], md["dim"], md["rank"] = gauss.FormLowRank, strconv.Itoa(g.D), strconv.Itoa(g.N)
		ts = []safetensors.Tensor{
			safetensors.F32("mean", g.Mean, g.P, g.D),
			safetensors.F32("lowrank_m", g.M, g.P, g.N, g.D),
		}
	case *baseline.SPADE:
		md["dim"], md["k"] = strconv.Itoa(g.D), strconv.Itoa(g.K)
		ts = []safetensors.Tensor{
			safetensors.F32("gallery", g.Gallery, g.N, g.P, g.D),
			safetensors.F32("pooled", g.Pooled, g.N, g.D),
		}
	case *baseline.PatchCore:
		md["dim"], md["reweight"] = strconv.Itoa(g.D), strconv.Itoa(g.Reweight)
		ts = []safetensors.Tensor{safetensors.F32("bank", g.Bank, g.M, g.D)}
	default:
		return fmt.Errorf("cannot save a model of type %T", m.Gaussian)
	}
	if c := m.Calibration; c != nil {
		md["calibration_rule"] = c.Rule
		md["calibration_images"] = strconv.Itoa(c.Images)
		md["pixel_quantile_levels"] = joinFloats(c.PixelLevels)
		md["calibration_target_fpr"] = strconv.FormatFloat(c.TargetFPR, 'g', -1, 64)
		md["calibration_expected_fpr"] = strconv.FormatFloat(c.ExpectedFPR, 'g', -1, 64)
		if c.Conformal {
			md["calibration_conformal"] = "true"
		}
		ts = append(ts,
			safetensors.F32("thresholds", []float32{c.Image, c.Pixel}, 2),
			safetensors.F32("calibration_image_scores", c.ImageScores, len(c.ImageScores)),
			safetensors.F32("calibration_pixel_quantiles", c.PixelQuantiles, len(c.PixelQuantiles)))
	}
	return safetensors.Write(path, md, append(ts, m.sharedTensors()...))
}

// The method of PaDiM itself (the Gaussian, in either form).
const MethodPaDiM = "padim"

func (m *Model) method() string {
	if m.Method == "" {
		return MethodPaDiM
	}
	return m.Method
}

// metadata describes the model in safetensors metadata; format names the file kind.
func (m *Model) metadata(format string) map[string]string {
	return map[string]string{
		"format":          format,
		"format_version":  strconv.Itoa(FormatVersion),
		"created":         m.Created.UTC().Format(time.RFC3339),
		"backbone_name":   m.BackboneName,
		"backbone_sha256": m.BackboneSHA256,
		"taps":            mustJSON(m.Taps),
		"resize":          strconv.Itoa(m.Preprocess.Resize),
		"crop":            strconv.Itoa(m.Preprocess.Crop),
		"tile":            strconv.Itoa(m.Preprocess.Tile),
		"overlap":         strconv.Itoa(m.Preprocess.Overlap),
		"mean":            joinFloats(m.Preprocess.Mean[:]),
		"std":             joinFloats(m.Preprocess.Std[:]),
		"decode":          m.Preprocess.Decode.String(),
		"eps":             strconv.FormatFloat(m.Eps, 'g', -1, 64),
		"n_train":         strconv.Itoa(m.NTrain),
		"seed":            strconv.FormatUint(m.Seed, 10),
		"total_channels":  strconv.Itoa(m.TotalChannels),
		"sigma":           strconv.FormatFloat(m.Sigma, 'g', -1, 64),
		"grid":            fmt.Sprintf("%d,%d", m.GridH, m.GridW),
		"method":          m.method(),
		"pool":            strconv.Itoa(m.Pool),
	}
}

// sharedTensors are the channel indices and the embedded backbone.
func (m *Model) sharedTensors() []safetensors.Tensor {
	ts := []safetensors.Tensor{safetensors.I64("channels", m.Channels, len(m.Channels))}
	if len(m.BackboneONNX) > 0 {
		ts = append(ts, safetensors.Tensor{Name: "backbone_onnx", DType: "U8", Shape: []int{len(m.BackboneONNX)}, Data: m.BackboneONNX})
	}
	return ts
}

// NewPipeline checks that ext is the backbone the model was trained with and
// returns the model's pipeline on it.
func (m *Model) NewPipeline(ext Extractor, opt PipelineOptions) (*Pipeline, error) {
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
	opt.Pool = m.Pool
	pre := m.Preprocess
	if pre.Decode.Available() != nil { // a model of a libjpeg-turbo build; DecodeFor says so
		pre.Decode = imageio.DecodeGo
	}
	return NewPipeline(ext, m.Channels, pre, opt)
}

// TapNames are the names of the backbone outputs the model was fitted on,
// the taps to open its backbone with.
func (m *Model) TapNames() []string {
	names := make([]string, len(m.Taps))
	for i, t := range m.Taps {
		names[i] = t.Name
	}
	return names
}

// DecodeFor returns the decoder to score with, override when given (a name,
// "" for the model's), and a one-line warning when it is not the one the model
// was trained with: its inputs differ from training's by up to a few grey
// levels, and scores and maps follow. A model trained with libjpeg-turbo on a
// build without it is scored with Go's decoder, with that warning; an override
// this build cannot decode with is an error saying how to rebuild.
func (m *Model) DecodeFor(override string) (imageio.Decoder, string, error) {
	trained := m.Preprocess.Decode
	if override != "" {
		d, err := imageio.ParseDecoder(override)
		if err != nil {
			return trained, "", err
		}
		if err := d.Available(); err != nil {
			return trained, "", err
		}
		if d != trained {
			return d, fmt.Sprintf("decoding with %s, but the model was trained with %s: the inputs differ by up to a few grey levels, and so may scores and maps (retrain with --decode %s to use it)", d, trained, d), nil
		}
		return d, "", nil
	}
	if err := trained.Available(); err != nil {
		return imageio.DecodeGo, fmt.Sprintf("the model was trained with decode path %s, but this padim was built without libjpeg-turbo: decoding with go, whose inputs differ by up to a few grey levels, and so may scores and maps (install libturbojpeg0-dev and rebuild: make build)", trained), nil
	}
	return trained, "", nil
}

// ScoreConfig says how to score with a model.
type ScoreConfig struct {
	Pipeline   PipelineOptions
	Backend    gauss.Backend // nil: the CPU
	Thresholds *Thresholds   // overrides the model's calibrated thresholds
	OpenRadius int           // < 0: DefaultOpenRadius
	KeepImages bool          // keep each result's Image (for pictures)
}

// NewScorer prepares scoring with the model on the backbone ext.
func (m *Model) NewScorer(ext Extractor, cfg ScoreConfig) (*Scorer, error) {
	p, err := m.NewPipeline(ext, cfg.Pipeline.stagedBy(cfg.Backend))
	if err != nil {
		return nil, err
	}
	th := cfg.Thresholds
	if th == nil && m.Calibration != nil {
		th = &m.Calibration.Thresholds
	}
	return NewScorer(p, m.Gaussian, ScoreSettings{Backend: cfg.Backend, Sigma: m.Sigma, Thresholds: th, OpenRadius: cfg.OpenRadius, KeepImages: cfg.KeepImages})
}

// Limits on what a model's header may say, checked on load.
const (
	MaxSigma   = 64   // blur σ in pixels of the network input
	MaxEps     = 1e6  // regularisation
	MaxTaps    = 8    // backbone outputs
	MaxTapSide = 1024 // a tap's grid side
	MaxTapC    = 16384
)

// checkRanges refuses header values that are out of range, even in a file
// whose checksum is right (a crafted or foreign file).
func (m *Model) checkRanges(l *embed.Layout) error {
	if !(m.Sigma >= 0 && m.Sigma <= MaxSigma) {
		return fmt.Errorf("metadata sigma=%v: want a blur σ in [0, %d]", m.Sigma, MaxSigma)
	}
	if !(m.Eps >= 0 && m.Eps <= MaxEps) {
		return fmt.Errorf("metadata eps=%v: want a regularisation in [0, %g]", m.Eps, MaxEps)
	}
	if len(m.Taps) > MaxTaps {
		return fmt.Errorf("metadata taps: %d outputs, at most %d", len(m.Taps), MaxTaps)
	}
	for _, t := range m.Taps {
		if t.H > MaxTapSide || t.W > MaxTapSide || t.C > MaxTapC {
			return fmt.Errorf("metadata taps: %s is %dx%dx%d, beyond %d channels or a %d grid", t.Name, t.C, t.H, t.W, MaxTapC, MaxTapSide)
		}
	}
	if m.GridH != l.H || m.GridW != l.W {
		return fmt.Errorf("metadata grid=%d,%d but the taps make a %dx%d grid", m.GridH, m.GridW, l.H, l.W)
	}
	if m.TotalChannels != embed.TotalChannels(m.Taps) {
		return fmt.Errorf("metadata total_channels=%d but the taps have %d", m.TotalChannels, embed.TotalChannels(m.Taps))
	}
	if m.NTrain < 1 {
		return fmt.Errorf("metadata n_train=%d: want at least 1", m.NTrain)
	}
	return nil
}

// ErrModel is wrapped by every error about an unusable model file.
var ErrModel = errors.New("not a usable padim model")

// Load reads and validates a model file.
func Load(path string) (*Model, error) {
	f, err := safetensors.Map(path, true)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission) || errors.Is(err, readfile.ErrNotRegular) {
			return nil, err // not a model file at all (a folder, a FIFO): nothing to retrain
		}
		return nil, fmt.Errorf("%w: %w", ErrModel, err)
	}
	m, err := fromFile(f)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrModel, path, err)
	}
	return m, nil
}

func fromFile(f *safetensors.File) (*Model, error) {
	m, err := parseShared(f, "padim")
	if err != nil {
		return nil, err
	}
	md := f.Metadata
	get := func(name string) (*safetensors.Tensor, error) {
		if t := f.Tensor(name); t != nil {
			return t, nil
		}
		return nil, fmt.Errorf("tensor %q missing", name)
	}
	if m.Method != MethodPaDiM {
		if err := m.loadBaseline(f, get); err != nil {
			return nil, err
		}
		return m, m.loadCalibration(f)
	}
	tm, err := get("mean")
	if err != nil {
		return nil, err
	}
	if len(tm.Shape) != 2 {
		return nil, fmt.Errorf("tensor mean has shape %v, want [P,D]", tm.Shape)
	}
	P, D := tm.Shape[0], tm.Shape[1]
	mean, err := tm.Float32s()
	if err != nil {
		return nil, err
	}
	if err := allFinite("mean", mean); err != nil {
		return nil, err
	}
	switch md["gaussian"] {
	case gauss.FormFull:
		tl, err := get("linv")
		if err != nil {
			return nil, err
		}
		if len(tl.Shape) != 2 || tl.Shape[0] != P || tl.Shape[1] != gauss.PackedLen(D) {
			return nil, fmt.Errorf("mean %v and linv %v shapes disagree", tm.Shape, tl.Shape)
		}
		g := &gauss.Gaussian{P: P, D: D, Mean: mean, Backing: f.Keep()}
		if g.LInv, err = tl.Float32s(); err != nil {
			return nil, err
		}
		if err := g.Check(); err != nil {
			return nil, err
		}
		if err := allFinite("linv", g.LInv); err != nil {
			return nil, err
		}
		if p := firstBadDiagonal(g); p >= 0 {
			return nil, fmt.Errorf("tensor linv: patch %d has a diagonal entry ≤ 0 (an inverse Cholesky factor has a positive diagonal; an all-zero L⁻¹ would call everything good)", p)
		}
		m.Gaussian = g
	case gauss.FormLowRank:
		tl, err := get("lowrank_m")
		if err != nil {
			return nil, err
		}
		if len(tl.Shape) != 3 || tl.Shape[0] != P || tl.Shape[2] != D || tl.Shape[1] < 1 {
			return nil, fmt.Errorf("mean %v and lowrank_m %v shapes disagree", tm.Shape, tl.Shape)
		}
		g := &gauss.LowRank{P: P, D: D, N: tl.Shape[1], Eps: m.Eps, Mean: mean, Backing: f.Keep()}
		if g.M, err = tl.Float32s(); err != nil {
			return nil, err
		}
		if err := g.Check(); err != nil {
			return nil, err
		}
		if err := allFinite("lowrank_m", g.M); err != nil {
			return nil, err
		}
		m.Gaussian = g
	default:
		return nil, fmt.Errorf("metadata gaussian=%q: want full or lowrank", md["gaussian"])
	}
	if P != m.GridH*m.GridW || D != len(m.Channels) {
		return nil, fmt.Errorf("model arrays P=%d D=%d disagree with its %dx%d grid and %d channels", P, D, m.GridH, m.GridW, len(m.Channels))
	}
	return m, m.loadCalibration(f)
}

// loadCalibration reads the thresholds and their material, if any.
func (m *Model) loadCalibration(f *safetensors.File) error {
	md := f.Metadata
	if t := f.Tensor("thresholds"); t != nil {
		c := &Calibration{Rule: md["calibration_rule"]}
		th, err := t.Float32s()
		if err != nil || len(th) != 2 {
			return fmt.Errorf("thresholds tensor must be 2 float32 values")
		}
		c.Image, c.Pixel = th[0], th[1]
		c.Images, _ = strconv.Atoi(md["calibration_images"])
		if t := f.Tensor("calibration_image_scores"); t != nil {
			c.ImageScores, _ = t.Float32s()
		}
		if t := f.Tensor("calibration_pixel_quantiles"); t != nil {
			c.PixelQuantiles, _ = t.Float32s()
		}
		c.PixelLevels, _ = splitFloats(md["pixel_quantile_levels"], len(c.PixelQuantiles))
		for key, dst := range map[string]*float64{"calibration_target_fpr": &c.TargetFPR, "calibration_expected_fpr": &c.ExpectedFPR} {
			if v, ok := md[key]; ok {
				x, err := strconv.ParseFloat(v, 64)
				if err != nil || !(x >= 0 && x <= 1) {
					return fmt.Errorf("metadata %s=%q: want a rate in [0, 1]", key, v)
				}
				*dst = x
			}
		}
		c.Conformal = md["calibration_conformal"] == "true"
		if _, ok := md["calibration_expected_fpr"]; !ok && len(c.ImageScores) > 0 { // a model from before: from its scores
			c.ExpectedFPR = ExpectedFalseAlarms(slices.Sorted(slices.Values(c.ImageScores)), c.Image)
		}
		for name, v := range map[string][]float32{"thresholds": th, "calibration_image_scores": c.ImageScores, "calibration_pixel_quantiles": c.PixelQuantiles} {
			if err := allFinite(name, v); err != nil {
				return err
			}
		}
		m.Calibration = c
	}
	return nil
}

// loadBaseline reads a baseline's arrays.
func (m *Model) loadBaseline(f *safetensors.File, get func(string) (*safetensors.Tensor, error)) error {
	P, D := m.GridH*m.GridW, len(m.Channels)
	switch m.Method {
	case baseline.MethodSPADE:
		tg, err := get("gallery")
		if err != nil {
			return err
		}
		tp, err := get("pooled")
		if err != nil {
			return err
		}
		if len(tg.Shape) != 3 || tg.Shape[1] != P || tg.Shape[2] != D || !slices.Equal(tp.Shape, []int{tg.Shape[0], D}) {
			return fmt.Errorf("gallery %v and pooled %v do not match %d patches × %d channels", tg.Shape, tp.Shape, P, D)
		}
		k, err := strconv.Atoi(f.Metadata["k"])
		if err != nil || k < 1 || k > 100000 {
			return fmt.Errorf("metadata k=%q: want a number of nearest images in [1, 100000]", f.Metadata["k"])
		}
		g := &baseline.SPADE{P: P, D: D, N: tg.Shape[0], K: k, Backing: f.Keep()}
		if g.Gallery, err = tg.Float32s(); err != nil {
			return err
		}
		if g.Pooled, err = tp.Float32s(); err != nil {
			return err
		}
		for name, v := range map[string][]float32{"gallery": g.Gallery, "pooled": g.Pooled} {
			if err := allFinite(name, v); err != nil {
				return err
			}
		}
		m.Gaussian = g
		return g.Check()
	case baseline.MethodPatchCore:
		tb, err := get("bank")
		if err != nil {
			return err
		}
		if len(tb.Shape) != 2 || tb.Shape[1] != D || tb.Shape[0] < 1 {
			return fmt.Errorf("bank %v does not match %d channels", tb.Shape, D)
		}
		rw, err := strconv.Atoi(f.Metadata["reweight"])
		if err != nil || rw < 0 || rw > 1000 {
			return fmt.Errorf("metadata reweight=%q: want a number of neighbours in [0, 1000]", f.Metadata["reweight"])
		}
		g := &baseline.PatchCore{P: P, D: D, M: tb.Shape[0], Reweight: rw, Backing: f.Keep()}
		if g.Bank, err = tb.Float32s(); err != nil {
			return err
		}
		if err := allFinite("bank", g.Bank); err != nil {
			return err
		}
		m.Gaussian = g
		return g.Check()
	}
	return fmt.Errorf("metadata method=%q: want padim, spade or patchcore", m.Method)
}

// parseShared reads what models and statistics files share: metadata, channel
// indices, the embedded backbone.
func parseShared(f *safetensors.File, format string) (*Model, error) {
	md := f.Metadata
	if md["format"] != format {
		return nil, fmt.Errorf("metadata format is %q, not %s (a safetensors file, but not a padim %s)", md["format"], format, map[string]string{"padim": "model", "padim-stats": "statistics file"}[format])
	}
	if v := md["format_version"]; v != strconv.Itoa(FormatVersion) {
		return nil, fmt.Errorf("format version %q; this padim reads version %d", v, FormatVersion)
	}
	m := &Model{}
	var errs []error
	num := func(key string) int {
		v, err := strconv.Atoi(md[key])
		if err != nil {
			errs = append(errs, fmt.Errorf("metadata %s=%q is not an integer", key, md[key]))
		}
		return v
	}
	flt := func(key string) float64 {
		v, err := strconv.ParseFloat(md[key], 64)
		if err != nil {
			errs = append(errs, fmt.Errorf("metadata %s=%q is not a number", key, md[key]))
		}
		return v
	}
	m.Created, _ = time.Parse(time.RFC3339, md["created"])
	m.Method = md["method"]
	if m.Method == "" {
		m.Method = MethodPaDiM
	}
	if m.Pool, _ = strconv.Atoi(md["pool"]); m.Pool < 0 || m.Pool > 15 || m.Pool > 1 && m.Pool%2 == 0 {
		errs = append(errs, fmt.Errorf("metadata pool=%q: want 0 or an odd size up to 15", md["pool"]))
	}
	m.BackboneName, m.BackboneSHA256 = md["backbone_name"], md["backbone_sha256"]
	if err := json.Unmarshal([]byte(md["taps"]), &m.Taps); err != nil {
		errs = append(errs, fmt.Errorf("metadata taps: %v", err))
	}
	m.Preprocess.Resize, m.Preprocess.Crop = num("resize"), num("crop")
	m.Preprocess.Tile, m.Preprocess.Overlap = num("tile"), num("overlap")
	mean, err1 := splitFloats(md["mean"], 3)
	std, err2 := splitFloats(md["std"], 3)
	errs = append(errs, err1, err2)
	copy(m.Preprocess.Mean[:], toF32(mean))
	copy(m.Preprocess.Std[:], toF32(std))
	if v, ok := md["decode"]; ok { // absent from models made before the decode path was recorded: go
		d, err := imageio.ParseDecoder(v)
		m.Preprocess.Decode = d
		if err != nil || v == "" {
			errs = append(errs, fmt.Errorf("metadata decode=%q: want go, turbojpeg-full or turbojpeg-dct", v))
		}
	}
	m.Eps, m.NTrain, m.Sigma = flt("eps"), num("n_train"), flt("sigma")
	m.Seed, _ = strconv.ParseUint(md["seed"], 10, 64)
	m.TotalChannels = num("total_channels")
	if _, err := fmt.Sscanf(md["grid"], "%d,%d", &m.GridH, &m.GridW); err != nil {
		errs = append(errs, fmt.Errorf("metadata grid=%q", md["grid"]))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if err := m.Preprocess.Check(); err != nil {
		return nil, err
	}
	tc := f.Tensor("channels")
	if tc == nil {
		return nil, fmt.Errorf("tensor \"channels\" missing")
	}
	var err error
	if m.Channels, err = tc.Ints(); err != nil {
		return nil, err
	}
	layout, err := embed.NewLayout(m.Taps, m.Channels)
	if err != nil {
		return nil, err
	}
	if err := m.checkRanges(layout); err != nil {
		return nil, err
	}
	if t := f.Tensor("backbone_onnx"); t != nil {
		m.BackboneONNX = t.Data
		if sum := sha256.Sum256(t.Data); hex.EncodeToString(sum[:]) != m.BackboneSHA256 {
			return nil, fmt.Errorf("embedded backbone does not match its recorded sha256")
		}
	}
	return m, nil
}

// firstBadDiagonal returns the first patch whose L⁻¹ has a diagonal entry ≤ 0, or −1.
func firstBadDiagonal(g *gauss.Gaussian) int {
	L := gauss.PackedLen(g.D)
	for p := 0; p < g.P; p++ {
		row := g.LInv[p*L : (p+1)*L]
		for i := 0; i < g.D; i++ {
			if !(row[i*(i+1)/2+i] > 0) {
				return p
			}
		}
	}
	return -1
}

// allFinite reports the first NaN or Inf in v, checking on every core.
func allFinite(name string, v []float32) error {
	bad := atomic.Int64{}
	bad.Store(-1)
	const exp = 0x7f800000 // all exponent bits set: Inf or NaN
	gauss.ParallelFor(max((len(v)+(1<<20)-1)>>20, 1), func(lo, hi int) {
		for c := lo; c < hi; c++ {
			part := v[c<<20 : min((c+1)<<20, len(v))]
			bits := unsafe.Slice((*uint32)(unsafe.Pointer(unsafe.SliceData(part))), len(part))
			for i, b := range bits {
				if b&exp == exp {
					for {
						old := bad.Load()
						if old >= 0 && old <= int64(c<<20+i) || bad.CompareAndSwap(old, int64(c<<20+i)) {
							break
						}
					}
					return
				}
			}
		}
	})
	if i := bad.Load(); i >= 0 {
		return fmt.Errorf("tensor %s holds %v at %d", name, v[i], i)
	}
	return nil
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}

func joinFloats[T float32 | float64](v []T) string {
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = strconv.FormatFloat(float64(x), 'g', -1, 64)
	}
	return strings.Join(s, ",")
}

// splitFloats parses "a,b,c"; n < 0 accepts any count.
func splitFloats(s string, n int) ([]float64, error) {
	if s == "" && n <= 0 {
		return nil, nil
	}
	parts := strings.Split(s, ",")
	if n >= 0 && len(parts) != n {
		return nil, fmt.Errorf("%q: want %d comma-separated numbers", s, n)
	}
	v := make([]float64, len(parts))
	for i, p := range parts {
		x, err := strconv.ParseFloat(strings.TrimSpace(p), 64)
		if err != nil {
			return nil, fmt.Errorf("%q: %v", s, err)
		}
		v[i] = x
	}
	return v, nil
}

func toF32(v []float64) []float32 {
	o := make([]float32, len(v))
	for i, x := range v {
		o[i] = float32(x)
	}
	return o
}
