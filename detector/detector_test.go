package detector

import (
	"context"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/padim/padim/detector/gauss"
	"github.com/padim/padim/detector/imageio"
	"github.com/padim/padim/detector/internal/refpadim"
	"github.com/padim/padim/internal/fakebackbone"
)

// newFake is the tests' backbone: internal/fakebackbone with seed 9.
func newFake(size int) *fakebackbone.Backbone { return fakebackbone.New(size, 9) }

// writeImages writes n textured images; defect=true paints a dark square.
func writeImages(t testing.TB, dir string, n int, seed uint64, defect bool) []string {
	t.Helper()
	os.MkdirAll(dir, 0o755)
	r := rand.New(rand.NewPCG(seed, 3))
	var files []string
	for i := 0; i < n; i++ {
		img := image.NewNRGBA(image.Rect(0, 0, 48, 48))
		phase := r.Float64() * 6
		for y := 0; y < 48; y++ {
			for x := 0; x < 48; x++ {
				v := 0.5 + 0.2*math.Sin(float64(x)/3+phase) + 0.05*r.NormFloat64()
				c := uint8(math.Max(0, math.Min(255, v*255)))
				img.Set(x, y, color.NRGBA{c, uint8(float64(c) * 0.8), uint8(float64(c) * 0.5), 255})
			}
		}
		if defect {
			for y := 20; y < 32; y++ {
				for x := 14; x < 26; x++ {
					img.Set(x, y, color.NRGBA{10, 60, 200, 255})
				}
			}
		}
		p := filepath.Join(dir, string(rune('a'+i%26))+strings.Repeat("x", i/26)+".png")
		fh, _ := os.Create(p)
		png.Encode(fh, img)
		fh.Close()
		files = append(files, p)
	}
	return files
}

func testPreprocess() imageio.Preprocess {
	return imageio.Preprocess{Resize: 32, Mean: imageio.ImageNetMean, Std: imageio.ImageNetStd}
}

var ctx = context.Background()

func TestTrainScoreMatchesFloat64Reference(t *testing.T) {
	dir := t.TempDir()
	train := writeImages(t, filepath.Join(dir, "train"), 20, 1, false)
	test := append(writeImages(t, filepath.Join(dir, "good"), 2, 2, false), writeImages(t, filepath.Join(dir, "bad"), 2, 3, true)...)
	ext := newFake(32)
	cfg := TrainConfig{Preprocess: testPreprocess(), Pipeline: PipelineOptions{Batch: 6}, Dim: 12, Seed: 5, Eps: 0.01, Sigma: 4, Calibration: CalibrateNone, BackboneONNX: []byte("fake")}
	m, rep, err := Train(ctx, ext, train, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Trained != 20 || m.NTrain != 20 || m.Calibration != nil {
		t.Fatalf("trained %d, N %d, calibration %v", rep.Trained, m.NTrain, m.Calibration)
	}
	sc, err := m.NewScorer(ext, ScoreConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()

	// reference: same features (the pipeline's embeddings), float64 PaDiM with
	// the documented semantics
	layout := sc.Pipeline().Layout()
	P, D := layout.P(), layout.D()
	embedFiles := func(files []string) []float32 {
		out := make([]float32, 0, len(files)*P*D)
		err := sc.Pipeline().Embeddings(ctx, FileInputs(files), 3, func(c Chunk) error {
			out = append(out, c.Emb...)
			return nil
		})
		if err != nil || len(out) != len(files)*P*D {
			t.Fatalf("embeddings: %d values, %v", len(out), err)
		}
		return out
	}
	mean, inv, ok := refpadim.Fit(embedFiles(train), len(train), P, D, 0.01)
	if !ok {
		t.Fatal("reference singular")
	}
	dists := refpadim.Distances(embedFiles(test), len(test), P, D, mean, inv)
	var scores []float32
	i := 0
	err = sc.Score(ctx, FileInputs(test), func(r *Result) error {
		if r.Err != nil {
			return r.Err
		}
		want := refpadim.Blur(refpadim.Upsample(dists[i*P:(i+1)*P], layout.H, layout.W, 32, 32), 32, 32, 4)
		worst := 0.0
		for k, v := range want {
			worst = max(worst, math.Abs(float64(r.Map[k])-v)/math.Abs(v))
		}
		if worst > 1e-3 {
			t.Errorf("%s: blurred map off the float64 reference by %.3g relative", r.Name, worst)
		}
		t.Logf("%s: score %.3f, max rel err vs float64 %.2g", filepath.Base(r.Name), r.Score, worst)
		scores = append(scores, r.Score)
		i++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if min(scores[2], scores[3]) <= max(scores[0], scores[1]) {
		t.Errorf("defects do not outscore good images: %v", scores)
	}
}

func TestHoldoutCalibrationAndRoundTrip(t *testing.T) {
	dir := t.TempDir()
	train := writeImages(t, filepath.Join(dir, "train"), 30, 4, false)
	bad := writeImages(t, filepath.Join(dir, "bad"), 2, 5, true)
	ext := newFake(32)
	cfg := TrainConfig{Preprocess: testPreprocess(), Pipeline: PipelineOptions{Batch: 8}, Dim: 0, Seed: 1, Eps: 0.01, Calibration: CalibrateHoldout, Holdout: 0.1, Sigma: 4, BackboneName: "fake", BackboneONNX: []byte("fake graph")}
	m, rep, err := Train(ctx, ext, train, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if rep.HeldOut != 3 || m.NTrain != 30 || m.Calibration == nil || len(m.Calibration.ImageScores) != 3 {
		t.Fatalf("held out %d, N %d, calibration %+v", rep.HeldOut, m.NTrain, m.Calibration)
	}
	if _, d := m.Gaussian.Shape(); d != 16 || m.Gaussian.Form() != FormFull {
		t.Fatalf("dim 0 kept %d channels (want all 16); form %s (30 samples > 8.5: full)", d, m.Gaussian.Form())
	}
	c := m.Calibration
	if !(float64(c.Image) >= Quantile(c.ImageScores, 0.99)) {
		t.Fatalf("image threshold %v below the held-out q99 %v", c.Image, Quantile(c.ImageScores, 0.99))
	}
	path := filepath.Join(dir, "m.padim")
	if err := m.Save(path); err != nil {
		t.Fatal(err)
	}
	m2, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if m2.Calibration.Image != c.Image || string(m2.BackboneONNX) != "fake graph" || m2.Preprocess != m.Preprocess || m2.NTrain != 30 {
		t.Fatalf("round trip changed the model: %+v", m2.Meta)
	}
	g, g2 := m.Gaussian.(*gauss.Gaussian), m2.Gaussian.(*gauss.Gaussian)
	for i := range g.LInv {
		if g.LInv[i] != g2.LInv[i] {
			t.Fatal("L⁻¹ changed on round trip")
		}
	}
	sc, err := m2.NewScorer(ext, ScoreConfig{OpenRadius: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	sc.Score(ctx, FileInputs(bad), func(r *Result) error {
		if r.Thresholds == nil || !r.Defect || len(r.Boxes) == 0 {
			t.Errorf("%s: score %v thresholds %v defect %v boxes %v", r.Name, r.Score, r.Thresholds, r.Defect, r.Boxes)
		}
		return nil
	})

	// damaged files are refused with ErrModel
	data, _ := os.ReadFile(path)
	for name, b := range map[string][]byte{"truncated": data[:len(data)-10], "flipped": flip(data, len(data)-5), "empty": nil} {
		p := filepath.Join(dir, name)
		os.WriteFile(p, b, 0o644)
		if _, err := Load(p); !errors.Is(err, ErrModel) {
			t.Errorf("%s model: %v", name, err)
		}
	}
	// a model of another backbone is refused by the scorer
	other := newFake(32)
	other.W1 = other.W1[:9]
	if _, err := m2.NewScorer(other, ScoreConfig{}); err == nil || !strings.Contains(err.Error(), "another backbone") {
		t.Errorf("foreign backbone: %v", err)
	}
}

func flip(b []byte, i int) []byte {
	c := append([]byte(nil), b...)
	c[i] ^= 1
	return c
}

func TestBadFilesSkippedOrFatal(t *testing.T) {
	dir := t.TempDir()
	train := writeImages(t, dir, 6, 7, false)
	bad := filepath.Join(dir, "zz_broken.png")
	os.WriteFile(bad, []byte("nope"), 0o644)
	files := append(train, bad)
	cfg := TrainConfig{Preprocess: testPreprocess(), Pipeline: PipelineOptions{Batch: 4}, Dim: 8, Eps: 0.01, Sigma: 4}
	if _, _, err := Train(ctx, newFake(32), files, cfg); err == nil || !strings.Contains(err.Error(), "zz_broken.png") {
		t.Fatalf("got %v", err)
	}
	cfg.SkipBadFiles = true
	m, rep, err := Train(ctx, newFake(32), files, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Skipped) != 1 || m.NTrain != 6 {
		t.Fatalf("skipped %v N %d", rep.Skipped, m.NTrain)
	}
	cfg.Calibration = CalibrateHoldout
	if _, _, err := Train(ctx, newFake(32), train[:1], cfg); err == nil || !strings.Contains(err.Error(), "at least 2 images") {
		t.Fatalf("holding out from one image: %v", err)
	}
}

func TestTilesStitchToImageSize(t *testing.T) {
	dir := t.TempDir()
	files := writeImages(t, dir, 5, 8, false)
	pp := testPreprocess()
	pp.Tile, pp.Overlap = 32, 8
	m, rep, err := Train(ctx, newFake(32), files, TrainConfig{Preprocess: pp, Dim: 8, Eps: 0.01, Sigma: 4, Backend: gauss.CPU{}})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Samples != 5*4 { // 48² image, 32 tiles, stride 24 → 2×2
		t.Fatalf("%d samples", rep.Samples)
	}
	sc, _ := m.NewScorer(newFake(32), ScoreConfig{})
	sc.Score(ctx, FileInputs(files[:1]), func(r *Result) error {
		if r.W != 48 || r.H != 48 || len(r.Map) != 48*48 {
			t.Fatalf("map %dx%d", r.W, r.H)
		}
		return nil
	})
}

// Shards fitted separately and merged give the model of one fit on all
// images, in both forms; a shard merged twice, or one of another channel
// subset, is refused.
func TestShardedStatsMergeEqualsSingleFit(t *testing.T) {
	dir := t.TempDir()
	files := writeImages(t, filepath.Join(dir, "imgs"), 14, 10, false)
	test := writeImages(t, filepath.Join(dir, "test"), 4, 13, true)
	scores := func(m *Model) []float32 {
		sc, err := m.NewScorer(newFake(32), ScoreConfig{})
		if err != nil {
			t.Fatal(err)
		}
		defer sc.Close()
		var out []float32
		for _, r := range scoreAll(t, sc, FileInputs(test)) {
			out = append(out, r.Score)
		}
		return out
	}
	for _, c := range []struct {
		name  string
		parts [][]string
		form  string
	}{
		{"full from samples and statistics", [][]string{files[:5], files[5:]}, FormFull}, // D=10: 14 samples > 5.5
		{"low-rank from samples", [][]string{files[:3], files[3:7]}, FormLowRank},        // 7 < 8.5 at D=16
	} {
		t.Run(c.name, func(t *testing.T) {
			dim := 10
			if c.form == FormLowRank {
				dim = 0
			}
			cfg := TrainConfig{Preprocess: testPreprocess(), Pipeline: PipelineOptions{Batch: 4}, Dim: dim, Seed: 2, Eps: 0.01, Sigma: 4, Calibration: CalibrateNone, BackboneONNX: []byte("bb")}
			var whole []string
			var shards []string
			for i, part := range c.parts {
				whole = append(whole, part...)
				cf := cfg
				cf.KeepStats = true
				m, rep, err := Train(ctx, newFake(32), part, cf)
				if err != nil {
					t.Fatal(err)
				}
				p := filepath.Join(dir, fmt.Sprintf("%s-%d.stats", c.form, i))
				if err := SaveStats(p, m, rep.Shard); err != nil {
					t.Fatal(err)
				}
				shards = append(shards, p)
			}
			all, _, err := Train(ctx, newFake(32), whole, cfg)
			if err != nil {
				t.Fatal(err)
			}
			merged, err := MergeStats(shards, gauss.CPU{}, -1, FormAuto)
			if err != nil {
				t.Fatal(err)
			}
			if merged.NTrain != len(whole) || merged.Gaussian.Form() != c.form || all.Gaussian.Form() != c.form {
				t.Fatalf("merged N %d form %s, single form %s", merged.NTrain, merged.Gaussian.Form(), all.Gaussian.Form())
			}
			a, b := scores(all), scores(merged)
			for i := range a {
				if d := math.Abs(float64(a[i]-b[i])) / float64(a[i]); d > 1e-4 {
					t.Fatalf("image %d: single fit %v, merged %v", i, a[i], b[i])
				}
			}
			if _, err := MergeStats([]string{shards[0], shards[1], shards[0]}, gauss.CPU{}, -1, FormAuto); err == nil || !strings.Contains(err.Error(), "twice") {
				t.Fatalf("a shard merged twice: %v", err)
			}
		})
	}
	// a shard of another channel subset is refused
	cfg := TrainConfig{Preprocess: testPreprocess(), Dim: 10, Eps: 0.01, Sigma: 4, Calibration: CalibrateNone, KeepStats: true}
	var paths []string
	for i, seed := range []uint64{2, 99} {
		cfg.Seed = seed
		m, rep, err := Train(ctx, newFake(32), files[i*3:i*3+3], cfg)
		if err != nil {
			t.Fatal(err)
		}
		paths = append(paths, filepath.Join(dir, fmt.Sprintf("seed%d.stats", seed)))
		if err := SaveStats(paths[i], m, rep.Shard); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := MergeStats(paths, gauss.CPU{}, -1, FormAuto); err == nil {
		t.Fatal("mismatched shard merged")
	}
}

// In-memory inputs (decoded planes, encoded bytes) score as the files do.
func TestInMemoryInputsMatchFiles(t *testing.T) {
	dir := t.TempDir()
	files := writeImages(t, dir, 8, 11, false)
	m, _, err := Train(ctx, newFake(32), files[:6], TrainConfig{Preprocess: testPreprocess(), Dim: 8, Eps: 0.01, Sigma: 4})
	if err != nil {
		t.Fatal(err)
	}
	sc, err := m.NewScorer(newFake(32), ScoreConfig{KeepImages: true})
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	var want []float32
	sc.Score(ctx, FileInputs(files[6:]), func(r *Result) error { want = append(want, r.Score); return r.Err })
	var in []Input
	for _, f := range files[6:] {
		pl, err := imageio.Decode(f)
		if err != nil {
			t.Fatal(err)
		}
		data, _ := os.ReadFile(f)
		in = append(in, Input{Name: f + " (planes)", Image: pl}, Input{Name: f + " (bytes)", Data: data})
	}
	err = sc.Score(ctx, in, func(r *Result) error {
		if r.Err != nil {
			return r.Err
		}
		if r.Score != want[r.Index/2] || r.Image.W != 32 {
			t.Fatalf("%s: %v (view %dx%d), from the file %v", r.Name, r.Score, r.Image.W, r.Image.H, want[r.Index/2])
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// A model whose checksum is right but whose tensors hold NaN or Inf is refused,
// naming the tensor and the first bad place.
func TestNonFiniteModelRefused(t *testing.T) {
	dir := t.TempDir()
	files := writeImages(t, dir, 6, 12, false)
	m, _, err := Train(ctx, newFake(32), files, TrainConfig{Preprocess: testPreprocess(), Dim: 8, Eps: 0.01, Sigma: 4})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		v    []float32
		i    int
		x    float32
		want string
	}{{m.Gaussian.(*gauss.Gaussian).LInv, 3 << 20 % len(m.Gaussian.(*gauss.Gaussian).LInv), float32(math.NaN()), "tensor linv holds NaN"}, {m.Gaussian.(*gauss.Gaussian).Mean, 17, float32(math.Inf(-1)), "tensor mean holds -Inf at 17"}} {
		old := c.v[c.i]
		c.v[c.i] = c.x
		p := filepath.Join(dir, "bad.padim")
		if err := m.Save(p); err != nil {
			t.Fatal(err)
		}
		c.v[c.i] = old
		if _, err := Load(p); !errors.Is(err, ErrModel) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("got %v, want %q", err, c.want)
		}
	}
}

// The low-rank form's CPU scorer asks for larger groups (it widens the whole
// model once per group); the full form keeps the default, and an explicit
// group wins over both.
func TestScorerTakesTheGaussiansPreferredGroup(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	files := writeImages(t, filepath.Join(dir, "imgs"), 7, 10, false)
	for _, c := range []struct {
		n, dim, want int
		form         string
	}{{7, 0, gauss.LowRankGroup, FormLowRank}, {7, 4, DefaultGroup, FormFull}} {
		cfg := TrainConfig{Preprocess: testPreprocess(), Dim: c.dim, Seed: 2, Eps: 0.01, Sigma: 4, Calibration: CalibrateNone, BackboneONNX: []byte("bb")}
		m, _, err := Train(ctx, newFake(32), files[:c.n], cfg)
		if err != nil {
			t.Fatal(err)
		}
		if m.Gaussian.Form() != c.form {
			t.Fatalf("form %s, want %s", m.Gaussian.Form(), c.form)
		}
		sc, err := m.NewScorer(newFake(32), ScoreConfig{})
		if err != nil {
			t.Fatal(err)
		}
		if sc.set.Group != c.want {
			t.Errorf("%s form: group %d, want %d", c.form, sc.set.Group, c.want)
		}
		sc.Close()
	}
}
