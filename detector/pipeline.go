package detector

import (
	"fmt"
	"runtime"
	"sync"

	"github.com/padim/padim/detector/embed"
	"github.com/padim/padim/detector/imageio"
)

// Extractor runs a backbone: a batch of n normalised images [n][3][S][S] in, one
// feature map per tap out. package backbone implements it with ONNX Runtime.
type Extractor interface {
	InputSize() int
	Taps() []embed.TapShape
	Extract(batch []float32, n int) ([]embed.Tap, error)
}

// FileError is a file that could not be used, and why.
type FileError struct {
	Path string
	Err  error
}

func (e FileError) Error() string { return e.Err.Error() }

// decoded is one file after decoding and cutting into samples.
type decoded struct {
	path    string
	samples []imageio.Sample
	image   *imageio.Planes // the image as the map sees it: resized/cropped, or native when tiling
	err     error
}

func decodeFile(path string, pp imageio.Preprocess) decoded {
	pl, err := imageio.Decode(path)
	if err != nil {
		return decoded{path: path, err: err}
	}
	s, view, err := pp.Prepare(pl)
	if err != nil {
		return decoded{path: path, err: fmt.Errorf("%s: %w", path, err)}
	}
	return decoded{path: path, samples: s, image: view}
}

// decodeChunks decodes files in chunks, in parallel, the next chunk while fn
// works on the current one, and calls fn for each chunk in order.
func decodeChunks(files []string, pp imageio.Preprocess, chunk int, fn func([]decoded) error) error {
	if len(files) == 0 {
		return nil
	}
	workers := runtime.GOMAXPROCS(0)
	decodeRange := func(lo, hi int) []decoded {
		out := make([]decoded, hi-lo)
		var wg sync.WaitGroup
		sem := make(chan struct{}, workers)
		for i := lo; i < hi; i++ {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				out[i-lo] = decodeFile(files[i], pp)
				<-sem
			}()
		}
		wg.Wait()
		return out
	}
	next := make(chan []decoded, 1)
	go func() {
		defer close(next)
		for lo := 0; lo < len(files); lo += chunk {
			next <- decodeRange(lo, min(lo+chunk, len(files)))
		}
	}()
	var err error
	for c := range next {
		if err == nil {
			err = fn(c)
		}
	}
	return err
}

// embedder runs the backbone and the embedding on batches of samples.
type embedder struct {
	ext    Extractor
	layout *embed.Layout
	batch  int
	in     []float32
	out    []float32
}

func newEmbedder(ext Extractor, layout *embed.Layout, batch int) *embedder {
	return &embedder{ext: ext, layout: layout, batch: max(batch, 1)}
}

// run embeds the samples in batches, calling fn with each batch's embeddings
// [n][P][D] and the index of its first sample.
func (e *embedder) run(samples []imageio.Sample, fn func(emb []float32, first, n int) error) error {
	s := e.ext.InputSize()
	per := 3 * s * s
	P, D := e.layout.P(), e.layout.D()
	for lo := 0; lo < len(samples); lo += e.batch {
		n := min(e.batch, len(samples)-lo)
		if cap(e.in) < n*per {
			e.in = make([]float32, e.batch*per)
			e.out = make([]float32, e.batch*P*D)
		}
		in := e.in[:n*per]
		for i := 0; i < n; i++ {
			if len(samples[lo+i].Input) != per {
				return fmt.Errorf("detector: sample has %d values, backbone input needs %d", len(samples[lo+i].Input), per)
			}
			copy(in[i*per:], samples[lo+i].Input)
		}
		taps, err := e.ext.Extract(in, n)
		if err != nil {
			return err
		}
		if _, err := e.layout.Embed(taps, e.out); err != nil {
			return err
		}
		if err := fn(e.out[:n*P*D], lo, n); err != nil {
			return err
		}
	}
	return nil
}
