package backbone

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	ort "github.com/yalue/onnxruntime_go"

	"github.com/padim/padim/detector/embed"
	"github.com/padim/padim/detector/imageio"
)

// Options configure an extractor. Zero values take the model's metadata_props
// (padim.* keys, or the `layers`/`input_range` keys of ../shared's MobileNetV2),
// then the defaults: taps layer1,layer2,layer3, input 224, ImageNet normalisation.
type Options struct {
	Library   string   // ONNX Runtime library (else FindLibrary's search)
	Threads   int      // intra-op threads; 0 lets ONNX Runtime choose
	Device    string   // "auto" (CUDA when the library has it), "cpu", "cuda"
	Taps      []string // output names
	InputSize int
	Log       func(format string, args ...any)
}

// Extractor runs one ONNX backbone. It is not safe for concurrent Extract calls;
// the taps Extract returns are valid until its next call.
type Extractor struct {
	Name     string
	SHA256   string
	Data     []byte // the ONNX model, kept so a padim model can embed it
	Provider string // "CPU" or "CUDA"
	Metadata map[string]string
	Norm     *Normalisation // from metadata, when the model says
	input    string
	taps     []embed.TapShape
	size     int
	session  *ort.DynamicAdvancedSession
	outs     []ort.Value // reused output tensors for batches of outN
	outN     int
}

// Normalisation is the input scaling a backbone expects.
type Normalisation struct{ Mean, Std [3]float32 }

// OpenFile loads an ONNX backbone from a file.
func OpenFile(path string, o Options) (*Extractor, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("backbone: %w", err)
	}
	e, err := Open(data, path, o)
	if err != nil {
		return nil, fmt.Errorf("backbone %s: %w", path, err)
	}
	return e, nil
}

// Open loads an ONNX backbone from memory; name is used in messages.
func Open(data []byte, name string, o Options) (*Extractor, error) {
	if err := Init(o.Library); err != nil {
		return nil, err
	}
	logf := o.Log
	if logf == nil {
		logf = func(string, ...any) {}
	}
	ins, outs, err := ort.GetInputOutputInfoWithONNXData(data)
	if err != nil {
		return nil, fmt.Errorf("not a loadable ONNX model: %v", err)
	}
	if len(ins) != 1 {
		return nil, fmt.Errorf("the model has %d inputs; a backbone takes one image input", len(ins))
	}
	md := map[string]string{}
	if meta, err := ort.GetModelMetadataWithONNXData(data); err == nil {
		if keys, err := meta.GetCustomMetadataMapKeys(); err == nil {
			for _, k := range keys {
				if v, ok, _ := meta.LookupCustomMetadataMap(k); ok {
					md[k] = v
				}
			}
		}
		meta.Destroy()
	}
	sum := sha256.Sum256(data)
	e := &Extractor{Name: name, SHA256: hex.EncodeToString(sum[:]), Data: data, Metadata: md, input: ins[0].Name}

	taps := o.Taps
	if len(taps) == 0 {
		switch {
		case md["padim.taps"] != "":
			taps = strings.Split(md["padim.taps"], ",")
		case md["layers"] != "":
			taps = layersFromMetadata(md["layers"])
		default:
			taps = []string{"layer1", "layer2", "layer3"}
		}
	}
	known := map[string]bool{}
	var names []string
	for _, out := range outs {
		known[out.Name] = true
		names = append(names, out.Name)
	}
	for _, t := range taps {
		if !known[t] {
			return nil, fmt.Errorf("%w %q (its outputs: %s)", ErrUnknownTap, t, strings.Join(names, ", "))
		}
	}
	e.size = o.InputSize
	if e.size == 0 {
		if d := ins[0].Dimensions; len(d) == 4 && d[2] > 0 && d[2] == d[3] {
			e.size = int(d[2])
		} else if v, err := strconv.Atoi(md["padim.input_size"]); err == nil {
			e.size = v
		} else {
			e.size = 224
		}
	}
	if e.size < 8 || e.size > imageio.MaxSide {
		return nil, fmt.Errorf("the model takes %d² inputs; padim runs backbones on 8² to %d² inputs", e.size, imageio.MaxSide)
	}
	e.Norm = normalisationFrom(md)

	opts, err := ort.NewSessionOptions()
	if err != nil {
		return nil, err
	}
	defer opts.Destroy()
	if o.Threads > 0 {
		if err := opts.SetIntraOpNumThreads(o.Threads); err != nil {
			return nil, err
		}
	}
	// Idle ONNX Runtime threads spin by default, taking the cores the Gaussian
	// stages need between backbone batches.
	if err := opts.AddSessionConfigEntry("session.intra_op.allow_spinning", "0"); err != nil {
		return nil, err
	}
	e.Provider = "CPU"
	switch o.Device {
	case "", "auto", "cuda":
		cerr := errNoCUDAProvider
		if hasCUDAProvider() {
			cerr = appendCUDA(opts)
		}
		if cerr == nil {
			e.Provider = "CUDA"
		} else if o.Device == "cuda" {
			return nil, fmt.Errorf("ONNX Runtime at %s has no usable CUDA execution provider (%v); run the backbone on the CPU or use an ONNX Runtime GPU build via %s", LibraryPath(), cerr, LibraryEnv)
		} else {
			logf("backbone: ONNX Runtime CUDA execution provider unavailable, running the backbone on the CPU")
		}
	case "cpu":
	default:
		return nil, fmt.Errorf("unknown device %q (auto, cpu, cuda)", o.Device)
	}
	e.session, err = ort.NewDynamicAdvancedSessionWithONNXData(data, []string{e.input}, taps, opts)
	if err != nil {
		return nil, fmt.Errorf("ONNX Runtime cannot create a session: %v", err)
	}
	// Probe one image to learn and validate the tap shapes.
	probe, err := e.run(make([]float32, 3*e.size*e.size), 1, taps)
	if err != nil {
		e.Close()
		return nil, fmt.Errorf("probe run at %d²: %v", e.size, err)
	}
	for _, t := range probe {
		e.taps = append(e.taps, t.TapShape)
	}
	if _, err := embed.NewLayout(e.taps, []int{0}); err != nil {
		e.Close()
		return nil, err
	}
	return e, nil
}

// ErrUnknownTap is wrapped by errors about a tap the ONNX model does not output.
var ErrUnknownTap = errors.New("the ONNX model has no output")

var errNoCUDAProvider = errors.New("libonnxruntime_providers_cuda.so is not beside the library (the pinned npm build is CPU-only)")

// hasCUDAProvider reports whether the loaded library ships the CUDA provider;
// asking ONNX Runtime without it only prints an alarming log line.
func hasCUDAProvider() bool {
	_, err := os.Stat(filepath.Join(filepath.Dir(LibraryPath()), "libonnxruntime_providers_cuda.so"))
	return err == nil
}

func appendCUDA(opts *ort.SessionOptions) error {
	c, err := ort.NewCUDAProviderOptions()
	if err != nil {
		return err
	}
	defer c.Destroy()
	return opts.AppendExecutionProviderCUDA(c)
}

// normalisationFrom reads padim.mean/padim.std, or MobileNet's input_range [-1,1].
func normalisationFrom(md map[string]string) *Normalisation {
	parse := func(s string) ([3]float32, bool) {
		var v [3]float32
		p := strings.Split(s, ",")
		if len(p) != 3 {
			return v, false
		}
		for i := range p {
			f, err := strconv.ParseFloat(strings.TrimSpace(p[i]), 32)
			if err != nil {
				return v, false
			}
			v[i] = float32(f)
		}
		return v, true
	}
	if m, ok := parse(md["padim.mean"]); ok {
		if s, ok := parse(md["padim.std"]); ok && s[0] > 0 && s[1] > 0 && s[2] > 0 {
			return &Normalisation{m, s}
		}
	}
	if strings.Contains(md["input_range"], "[-1,1]") {
		return &Normalisation{[3]float32{0.5, 0.5, 0.5}, [3]float32{0.5, 0.5, 0.5}}
	}
	return nil
}

// layersFromMetadata reads tap names from a free-form `layers` value such as
// "layer1=stride4 (…) layer2=stride8 (…)": the words before each '='.
func layersFromMetadata(s string) []string {
	var taps []string
	for _, f := range strings.FieldsFunc(s, func(r rune) bool { return r == ' ' || r == ',' || r == ';' }) {
		if i := strings.IndexByte(f, '='); i > 0 {
			taps = append(taps, f[:i])
		}
	}
	if len(taps) == 0 {
		taps = strings.Split(strings.ReplaceAll(s, " ", ""), ",")
	}
	return taps
}

// DefaultPreprocess is how images become this backbone's input unless told
// otherwise: resized to its input size, normalised as its metadata says (else
// with ImageNet's mean and std).
func (e *Extractor) DefaultPreprocess() imageio.Preprocess {
	pp := imageio.Preprocess{Resize: e.size, Mean: imageio.ImageNetMean, Std: imageio.ImageNetStd}
	if e.Norm != nil {
		pp.Mean, pp.Std = e.Norm.Mean, e.Norm.Std
	}
	return pp
}

// InputSize implements detector.Extractor.
func (e *Extractor) InputSize() int { return e.size }

// Backbone batches that run fastest: on the CPU, small batches keep each
// layer's activations in the caches (Resnet50_CBAM at 224² on 2 AVX2 cores:
// about 95 ms of CPU an image in batches of 2, 120 ms in batches of 16;
// BENCHMARKS.md), while a GPU wants large ones.
const (
	PreferredBatchCPU  = 2
	PreferredBatchCUDA = 16
)

// PreferredBatch implements detector.BatchPreferrer.
func (e *Extractor) PreferredBatch() int {
	if e.Provider == "CUDA" {
		return PreferredBatchCUDA
	}
	return PreferredBatchCPU
}

// Taps implements detector.Extractor.
func (e *Extractor) Taps() []embed.TapShape { return append([]embed.TapShape(nil), e.taps...) }

// Extract implements detector.Extractor.
func (e *Extractor) Extract(batch []float32, n int) ([]embed.Tap, error) {
	names := make([]string, len(e.taps))
	for i, t := range e.taps {
		names[i] = t.Name
	}
	taps, err := e.run(batch, n, names)
	if err != nil {
		return nil, err
	}
	for i, t := range taps {
		if t.TapShape != e.taps[i] {
			return nil, fmt.Errorf("backbone output %s is %dx%dx%d, expected %dx%dx%d", t.Name, t.C, t.H, t.W, e.taps[i].C, e.taps[i].H, e.taps[i].W)
		}
	}
	return taps, nil
}

// outputs returns output tensors for a batch of n, reused from run to run
// (ONNX Runtime writes into them: no allocation or copy per batch).
func (e *Extractor) outputs(n int) ([]ort.Value, error) {
	if e.outs != nil && e.outN == n {
		return e.outs, nil
	}
	e.destroyOutputs()
	for _, t := range e.taps {
		v, err := ort.NewEmptyTensor[float32](ort.NewShape(int64(n), int64(t.C), int64(t.H), int64(t.W)))
		if err != nil {
			e.destroyOutputs()
			return nil, err
		}
		e.outs = append(e.outs, v)
	}
	e.outN = n
	return e.outs, nil
}

func (e *Extractor) destroyOutputs() {
	for _, v := range e.outs {
		v.Destroy()
	}
	e.outs, e.outN = nil, 0
}

func (e *Extractor) run(batch []float32, n int, names []string) ([]embed.Tap, error) {
	per := 3 * e.size * e.size
	if len(batch) < n*per {
		return nil, fmt.Errorf("backbone: batch holds %d values, %d images need %d", len(batch), n, n*per)
	}
	in, err := ort.NewTensor(ort.NewShape(int64(n), 3, int64(e.size), int64(e.size)), batch[:n*per])
	if err != nil {
		return nil, err
	}
	defer in.Destroy()
	if e.taps != nil && len(names) == len(e.taps) {
		outs, err := e.outputs(n)
		if err != nil {
			return nil, err
		}
		if err := e.session.Run([]ort.Value{in}, outs); err != nil {
			return nil, fmt.Errorf("backbone: ONNX Runtime run failed: %v", err)
		}
		taps := make([]embed.Tap, len(outs))
		for i, v := range outs {
			taps[i] = embed.Tap{TapShape: e.taps[i], N: n, Data: v.(*ort.Tensor[float32]).GetData()}
		}
		return taps, nil
	}
	// the probe: ONNX Runtime allocates, shapes are learnt
	outs := make([]ort.Value, len(names))
	if err := e.session.Run([]ort.Value{in}, outs); err != nil {
		return nil, fmt.Errorf("backbone: ONNX Runtime run failed: %v", err)
	}
	taps := make([]embed.Tap, len(names))
	for i, v := range outs {
		defer v.Destroy()
		t, ok := v.(*ort.Tensor[float32])
		if !ok {
			return nil, fmt.Errorf("backbone output %s is not a float32 tensor", names[i])
		}
		sh := t.GetShape()
		if len(sh) != 4 || sh[0] != int64(n) {
			return nil, fmt.Errorf("backbone output %s has shape %v, want [%d,C,H,W]", names[i], sh, n)
		}
		taps[i] = embed.Tap{TapShape: embed.TapShape{Name: names[i], C: int(sh[1]), H: int(sh[2]), W: int(sh[3])}, N: n,
			Data: append([]float32(nil), t.GetData()...)}
	}
	return taps, nil
}

// Close releases the session.
func (e *Extractor) Close() error {
	e.destroyOutputs()
	if e.session != nil {
		err := e.session.Destroy()
		e.session = nil
		return err
	}
	return nil
}
