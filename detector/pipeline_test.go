package detector

import (
	"errors"
	"fmt"
	"image"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/padim/padim/detector/embed"
	"github.com/padim/padim/detector/imageio"
	"github.com/padim/padim/internal/fakebackbone"
)

// scoreAll scores inputs and returns the results in emission order.
func scoreAll(t *testing.T, sc *Scorer, in []Input) []*Result {
	t.Helper()
	var out []*Result
	if err := sc.Score(ctx, in, func(r *Result) error { out = append(out, r); return nil }); err != nil {
		t.Fatal(err)
	}
	return out
}

func trainSmall(t *testing.T, pre func(*TrainConfig), files []string) *Model {
	t.Helper()
	cfg := TrainConfig{Preprocess: testPreprocess(), Dim: 12, Seed: 3, Eps: 0.01, Sigma: 4, Calibration: CalibrateHoldout, Holdout: 0.2}
	if pre != nil {
		pre(&cfg)
	}
	m, _, err := Train(ctx, newFake(32), files, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// Batching across files changes nothing: every map, grid and verdict is bit for
// bit what scoring one image at a time gives, and results come in input order.
func TestBatchedScoringEqualsOneAtATime(t *testing.T) {
	dir := t.TempDir()
	train := writeImages(t, filepath.Join(dir, "train"), 20, 21, false)
	test := append(writeImages(t, filepath.Join(dir, "good"), 9, 22, false), writeImages(t, filepath.Join(dir, "bad"), 8, 23, true)...)
	broken := filepath.Join(dir, "broken.png")
	os.WriteFile(broken, []byte("\x89PNG\r\n\x1a\nnot really"), 0o644)
	missing := filepath.Join(dir, "missing.png")
	files := slices.Concat(test[:5], []string{broken}, test[5:11], []string{missing}, test[11:])
	m := trainSmall(t, nil, train)

	one, err := m.NewScorer(newFake(32), ScoreConfig{Pipeline: PipelineOptions{Batch: 1, Workers: 1}})
	if err != nil {
		t.Fatal(err)
	}
	defer one.Close()
	one.set.Group = 1
	var want []*Result
	for i, f := range files {
		r := scoreAll(t, one, FileInputs([]string{f}))
		r[0].Index = i
		want = append(want, r[0])
	}
	for _, o := range []PipelineOptions{{Batch: 4}, {Batch: 16}, {Batch: 3, Workers: 5}, {Batch: 2, Memory: 200 << 10}} {
		sc, err := m.NewScorer(newFake(32), ScoreConfig{Pipeline: o})
		if err != nil {
			t.Fatal(err)
		}
		got := scoreAll(t, sc, FileInputs(files))
		sc.Close()
		if len(got) != len(files) {
			t.Fatalf("%+v: %d results for %d inputs", o, len(got), len(files))
		}
		for i, r := range got {
			w := want[i]
			if r.Index != i || r.Name != files[i] {
				t.Fatalf("%+v: result %d is input %d (%s)", o, i, r.Index, r.Name)
			}
			if (r.Err == nil) != (w.Err == nil) {
				t.Fatalf("%+v: %s: error %v, one at a time %v", o, r.Name, r.Err, w.Err)
			}
			if r.Err != nil {
				continue
			}
			if r.Score != w.Score || !slices.Equal(r.Map, w.Map) || !slices.Equal(r.Grid, w.Grid) || r.Defect != w.Defect || !slices.Equal(r.Boxes, w.Boxes) {
				t.Fatalf("%+v: %s differs from one at a time: score %v vs %v", o, r.Name, r.Score, w.Score)
			}
		}
	}
}

// Tiles of one image may span several Gaussian calls; the stitched map is the
// same as with one call per image.
func TestTilesSpanningChunks(t *testing.T) {
	dir := t.TempDir()
	files := writeImages(t, dir, 6, 24, false)
	m := trainSmall(t, func(c *TrainConfig) { c.Preprocess.Tile, c.Preprocess.Overlap, c.Calibration = 32, 8, CalibrateNone }, files)
	big, _ := m.NewScorer(newFake(32), ScoreConfig{Pipeline: PipelineOptions{Batch: 16}})
	defer big.Close()
	small, _ := m.NewScorer(newFake(32), ScoreConfig{Pipeline: PipelineOptions{Batch: 3}})
	defer small.Close()
	small.set.Group = 3 // 4 tiles an image: every image spans two calls
	a, b := scoreAll(t, big, FileInputs(files)), scoreAll(t, small, FileInputs(files))
	for i := range a {
		if a[i].W != 48 || len(a[i].Grid) != 4*m.GridH*m.GridW || !slices.Equal(a[i].Map, b[i].Map) {
			t.Fatalf("%s: %dx%d, maps equal %v", a[i].Name, a[i].W, a[i].H, slices.Equal(a[i].Map, b[i].Map))
		}
	}
}

// A callback error stops the run, is returned, and leaves no goroutine behind;
// the memory budget is whole again afterwards.
func TestScoreStopsOnCallbackError(t *testing.T) {
	dir := t.TempDir()
	files := writeImages(t, dir, 30, 25, false)
	m := trainSmall(t, nil, files[:12])
	sc, _ := m.NewScorer(newFake(32), ScoreConfig{Pipeline: PipelineOptions{Batch: 2, Memory: 300 << 10}})
	defer sc.Close()
	before := runtime.NumGoroutine()
	stop := errors.New("stop")
	n := 0
	err := sc.Score(ctx, FileInputs(files), func(r *Result) error {
		if n++; n == 7 {
			return stop
		}
		return nil
	})
	if !errors.Is(err, stop) || n != 7 {
		t.Fatalf("got %v after %d results", err, n)
	}
	// Score has waited for its goroutines; one that has signalled its end
	// may still be returning: let the scheduler run it (a count of yields,
	// not a wall-clock window)
	for i := 0; i < 1e5 && runtime.NumGoroutine() > before; i++ {
		runtime.Gosched()
	}
	if g := runtime.NumGoroutine(); g > before {
		t.Fatalf("%d goroutines before, %d after", before, g)
	}
	// the next run works and is complete
	if got := scoreAll(t, sc, FileInputs(files)); len(got) != len(files) {
		t.Fatalf("%d results", len(got))
	}
}

// One scorer serves concurrent callers (the server's case); each gets its own
// inputs' results.
func TestConcurrentScoreCalls(t *testing.T) {
	dir := t.TempDir()
	files := writeImages(t, dir, 16, 26, false)
	m := trainSmall(t, nil, files[:10])
	sc, _ := m.NewScorer(newFake(32), ScoreConfig{Pipeline: PipelineOptions{Batch: 4}})
	defer sc.Close()
	want := scoreAll(t, sc, FileInputs(files))
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			lo := g % 5
			in := FileInputs(files[lo : lo+9])
			i := 0
			errs <- sc.Score(ctx, in, func(r *Result) error {
				if r.Score != want[lo+i].Score || r.Name != files[lo+i] {
					return fmt.Errorf("caller %d result %d: %s %v, want %s %v", g, i, r.Name, r.Score, files[lo+i], want[lo+i].Score)
				}
				i++
				return nil
			})
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
}

// The pipeline records every stage it runs.
func TestTimingsRecorded(t *testing.T) {
	dir := t.TempDir()
	files := writeImages(t, dir, 12, 27, false)
	m := trainSmall(t, nil, files[:10])
	sc, _ := m.NewScorer(newFake(32), ScoreConfig{})
	defer sc.Close()
	scoreAll(t, sc, FileInputs(files))
	tm := sc.Pipeline().Timings
	for _, st := range []string{"decode", "backbone", "embed", "score", "map"} {
		if s := tm.Get(st); s.Items != len(files) || s.Busy <= 0 {
			t.Errorf("stage %s: %+v", st, s)
		}
	}
}

// Images whose decoding needs more than the memory budget run one at a time,
// smaller ones around them go on, and nothing deadlocks; the results are
// those of an ample budget.
func TestMemoryBudgetSmallerThanAnImage(t *testing.T) {
	dir := t.TempDir()
	files := writeImages(t, dir, 10, 28, false)
	big := filepath.Join(dir, "big.png")
	img := image.NewNRGBA(image.Rect(0, 0, 1500, 1200))
	for i := range img.Pix {
		img.Pix[i] = uint8(i * 7 / 3)
	}
	f, _ := os.Create(big)
	png.Encode(f, img)
	f.Close()
	m := trainSmall(t, nil, files[:8])
	in := FileInputs([]string{files[8], big, files[9], big, big, files[8]})
	ample, _ := m.NewScorer(newFake(32), ScoreConfig{Pipeline: PipelineOptions{Batch: 4}})
	defer ample.Close()
	tight, _ := m.NewScorer(newFake(32), ScoreConfig{Pipeline: PipelineOptions{Batch: 4, Memory: 1 << 20}}) // the big one needs ~40 MB
	defer tight.Close()
	a, b := scoreAll(t, ample, in), scoreAll(t, tight, in)
	for i := range a {
		if a[i].Err != nil || a[i].Score != b[i].Score || !slices.Equal(a[i].Map, b[i].Map) {
			t.Fatalf("input %d: %v / %v, %v vs %v", i, a[i].Err, b[i].Err, a[i].Score, b[i].Score)
		}
	}
	if fr := a[1].Frame; fr.ImageW != 1500 || fr.ImageH != 1200 || fr.W != 32 || fr.ScaleX != 1500.0/32 {
		t.Fatalf("frame %+v", fr)
	}
}

// nanBackbone is the fake backbone with a NaN in one image's features.
type nanBackbone struct {
	Extractor
	calls int
	at    int // the call whose first feature is NaN
}

func (b *nanBackbone) Extract(batch []float32, n int) ([]embed.Tap, error) {
	taps, err := b.Extractor.Extract(batch, n)
	b.calls++
	if err == nil && b.calls == b.at {
		for i := range taps {
			taps[i].Data[0] = float32(math.NaN())
		}
	}
	return taps, err
}

// A backbone that gives NaN features is named as the cause, at scoring as at
// training (scoring used to give NaN scores, and only train said why), and
// whatever image it happened on.
func TestNonFiniteFeaturesStopScoring(t *testing.T) {
	dir := t.TempDir()
	train := writeImages(t, filepath.Join(dir, "train"), 8, 31, false)
	m := trainSmall(t, func(c *TrainConfig) { c.Calibration = CalibrateNone }, train)
	sc, err := m.NewScorer(&nanBackbone{Extractor: newFake(32), at: 2}, ScoreConfig{Pipeline: PipelineOptions{Batch: 1, Workers: 1}})
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	err = sc.Score(ctx, FileInputs(train[:4]), func(*Result) error { return nil })
	if !errors.Is(err, ErrNonFiniteFeatures) || !strings.Contains(err.Error(), filepath.Base(train[1])) || !strings.Contains(err.Error(), "backbone is broken") {
		t.Fatalf("NaN features at scoring: %v", err)
	}
	_, _, err = Train(ctx, &nanBackbone{Extractor: newFake(32), at: 1}, train, TrainConfig{Preprocess: testPreprocess(), Dim: 12, Seed: 3, Eps: 0.01, Sigma: 4, Calibration: CalibrateNone, Pipeline: PipelineOptions{Batch: 1}})
	if !errors.Is(err, ErrNonFiniteFeatures) {
		t.Fatalf("NaN features at training: %v", err)
	}
}

// preferring is a backbone that prefers batches of 3.
type preferring struct{ *fakebackbone.Backbone }

func (preferring) PreferredBatch() int { return 3 }

// Without --batch the pipeline takes the batch the backbone prefers (ONNX
// Runtime on the CPU: 2), else DefaultBatch; a batch asked for wins.
func TestPipelineTakesThePreferredBatch(t *testing.T) {
	pre := imageio.Preprocess{Resize: 32, Mean: [3]float32{0.5, 0.5, 0.5}, Std: [3]float32{0.25, 0.25, 0.25}}
	for _, c := range []struct {
		ext  Extractor
		opt  int
		want int
	}{{newFake(32), 0, DefaultBatch}, {preferring{newFake(32)}, 0, 3}, {preferring{newFake(32)}, 5, 5}} {
		p, err := NewPipeline(c.ext, []int{0, 1}, pre, PipelineOptions{Batch: c.opt})
		if err != nil {
			t.Fatal(err)
		}
		if p.Batch() != c.want {
			t.Errorf("%T with Batch %d: batch %d, want %d", c.ext, c.opt, p.Batch(), c.want)
		}
	}
}
