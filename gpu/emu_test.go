//go:build cudaemu

package gpu

import (
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/padim/padim/detector/gauss"
	"github.com/padim/padim/detector/gauss/gausstest"
)

// The emulator's own checks (cuda/emu/selftest.cu): every hardware rule it claims
// to enforce is broken once and must be caught.
func TestEmulatorSelfTest(t *testing.T) {
	_, file, _, _ := runtime.Caller(0)
	bin := filepath.Join(filepath.Dir(file), "..", "build", "emu", "emu_selftest")
	for _, sm := range []string{"86", "61", "90"} {
		cmd := exec.Command(bin)
		cmd.Env = append(cmd.Environ(), "PADIM_EMU_SM="+sm)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("sm_%s: %v (run make cuda-emu)\n%s", sm, err, out)
		}
		t.Logf("sm_%s: %s", sm, strings.TrimSpace(string(out[strings.LastIndex(strings.TrimSpace(string(out)), "\n")+1:])))
	}
}

// What crosses the bus in a fit, a factorisation where the statistics are, and
// scoring: the images once, the model once (for the model file), the distances;
// never the statistics, and never the model back to the device. Every copy is from
// pinned memory.
func TestDataStaysOnDevice(t *testing.T) {
	const n, p, d, ns = 150, 4, 120, 70
	const L = d * (d + 1) / 2
	b := device(t)
	pageable := emuPageableCopies()
	x := gausstest.Correlated(31, n, p, d, 1, 1)
	acc, err := b.NewAccumulator(p, d)
	if err != nil {
		t.Fatal(err)
	}
	defer acc.Close()
	step := func(what string, wantH2D, maxD2H, minD2H uint64, f func()) {
		t.Helper()
		h0, d0 := emuCopied()
		f()
		h1, d1 := emuCopied()
		t.Logf("%-28s host→device %9d B, device→host %9d B", what, h1-h0, d1-d0)
		if h1-h0 != wantH2D || d1-d0 > maxD2H || d1-d0 < minD2H {
			t.Fatalf("%s: %d B up (want %d), %d B down (want %d…%d)", what, h1-h0, wantH2D, d1-d0, minD2H, maxD2H)
		}
	}
	step("fit of 150 images", n*p*d*4, 0, 0, func() {
		for lo := 0; lo < n; lo += 50 {
			if err := acc.Add(x[lo*p*d:(lo+50)*p*d], 50); err != nil {
				t.Fatal(err)
			}
		}
	})
	var g *gauss.Gaussian
	model := uint64(p*L*4 + p*d*4)
	// down: L⁻¹, the float64 means (converted on the host), status flags; up: the float32 means
	step("factorise on the device", p*d*4, uint64(p*L*4+p*d*8+p*4), uint64(p*L*4), func() { g = factorizeAcc(t, acc) })
	var sc gauss.Scorer
	step("scorer of that model", 0, 0, 0, func() {
		if sc, err = b.NewScorer(g); err != nil {
			t.Fatal(err)
		}
	})
	defer sc.Close()
	test := gausstest.Correlated(32, ns, p, d, 1, 1)
	step("score 70 images", ns*p*d*4, ns*p*4, ns*p*4, func() {
		if err := sc.Score(test, ns, make([]float32, ns*p)); err != nil {
			t.Fatal(err)
		}
	})
	// The cache serves one scorer; another one uploads the model (once).
	step("a second scorer uploads", model, 0, 0, func() {
		sc2, err := b.NewScorer(g)
		if err != nil {
			t.Fatal(err)
		}
		sc2.Close()
	})
	if got := emuPageableCopies() - pageable; got != 0 {
		t.Fatalf("%d asynchronous copies used pageable host memory", got)
	}
}

// Counters: flops executed per kernel against the loops' arithmetic, and float64 kept
// out of the O(D³) loops on a consumer-card profile (double-float factorisation).
func TestCountersAndFP64(t *testing.T) {
	const n, p, d, ns = 70, 2, 300, 64
	b := device(t)
	b.Precision = PrecisionDF32
	x := gausstest.Correlated(41, n, p, d, 1, 1)
	emuCounters(true)
	emuSetCounting(true)
	defer emuSetCounting(false)
	acc, err := b.NewAccumulator(p, d)
	if err != nil {
		t.Fatal(err)
	}
	defer acc.Close()
	if err := acc.Add(x, n); err != nil {
		t.Fatal(err)
	}
	g := factorizeAcc(t, acc)
	sc, err := b.NewScorer(g)
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	if err := sc.Score(x, ns, make([]float32, ns*p)); err != nil {
		t.Fatal(err)
	}
	b.Precision = PrecisionFP64
	if _, err := b.Factorize(mustStats(t, acc), 0.01); err != nil {
		t.Fatal(err)
	}
	got := map[string]KernelCounters{}
	for _, k := range emuCounters(true) {
		got[k.Name] = k
		t.Logf("%-16s %3d launches %8d blocks  read %10d B (%10d B distinct)  write %9d B  %11d flops  %10d fp64",
			k.Name, k.Launches, k.Blocks, k.ReadBytes, k.ReadSectors, k.WriteBytes, k.Flops, k.FP64Ops)
	}
	tiles := (d + 63) / 64
	pairs := tiles * (tiles + 1) / 2
	if f := got["k_syrk_fold"].Flops; f != int64(p*pairs*64*64*2*n) {
		t.Errorf("k_syrk_fold: %d flops, want %d", f, p*pairs*64*64*2*n)
	}
	var score int64
	for i0 := 0; i0 < d; i0 += 64 {
		score += int64((min(i0+64, d)+31)/32)*64*64*32*2 + 64*64*2
	}
	if f := got["k_score<QB>"].Flops; f != int64(p)*score {
		t.Errorf("k_score: %d flops, want %d", f, int64(p)*score)
	}
	// The O(D³) work is ~2D³/3 flops per patch in both precisions; float64 operations
	// in the double-float kernel are O(D²) (reading the float64 statistics).
	df, fp := got["k_factor<DF32>"], got["k_factor<F64>"]
	cube := int64(p) * 2 * d * d * d / 3
	if df.Flops < cube || fp.Flops < cube {
		t.Errorf("factorisation flops %d, %d below 2D³/3 = %d", df.Flops, fp.Flops, cube)
	}
	if limit := int64(p) * 8 * int64(d+32) * int64(d+32); df.FP64Ops > limit {
		t.Errorf("k_factor<DF32> ran %d float64 operations, more than O(D²) = %d", df.FP64Ops, limit)
	}
	if fp.FP64Ops < cube {
		t.Errorf("k_factor<F64> counted %d float64 operations, fewer than its flops: the counter is broken", fp.FP64Ops)
	}
	if m := got["k_syrk_fold"]; m.FP64Ops > int64(p)*3*int64(d*(d+1)/2) {
		t.Errorf("k_syrk_fold ran %d float64 operations, want only the fold (%d)", m.FP64Ops, p*3*d*(d+1)/2)
	}
}

func mustStats(t *testing.T, acc gauss.Accumulator) *gauss.Stats {
	t.Helper()
	s, err := acc.Stats()
	if err != nil {
		t.Fatal(err)
	}
	return s.Clone()
}

// Every device byte is given back when everything is closed.
func TestNoDeviceLeak(t *testing.T) {
	base := emuDeviceBytes()
	live := liveObjects()
	func() {
		b := device(t)
		x := gausstest.Correlated(51, 20, 3, 50, 1, 1)
		acc, _ := b.NewAccumulator(3, 50)
		acc.Add(x, 20)
		g := factorizeAcc(t, acc)
		sc, _ := b.NewScorer(g)
		sc.Score(x, 20, make([]float32, 60))
		if _, err := b.Factorize(mustStats(t, acc), 0.01); err != nil { // cached, never used
			t.Fatal(err)
		}
		sc.Close()
		acc.Close()
		b.Close()
	}()
	if got := emuDeviceBytes(); got != base {
		t.Fatalf("%d device bytes still allocated, want %d", got, base)
	}
	if got := liveObjects(); got != live {
		t.Fatalf("%d C objects alive, want %d", got, live)
	}
}

// The bus on the scoring path: embeddings written into the backend's staging buffer
// (what the pipeline does) cross once, straight from that memory: no bounce buffer, no
// host copy, no pageable copy; the bytes per scored image are the embedding's own plus
// its distances. From ordinary Go memory the same bytes cross, through the bounce
// buffers. Both give the same bits, and so does a scorer whose patch ranges are split
// across launches (one patch per launch).
func TestStagedEmbeddingsCrossOnce(t *testing.T) {
	const n, p, d, ns = 40, 6, 100, 64
	b := device(t)
	x := gausstest.Correlated(71, n, p, d, 1, 1)
	acc, err := b.NewAccumulator(p, d)
	if err != nil {
		t.Fatal(err)
	}
	defer acc.Close()
	if err := acc.Add(x, n); err != nil {
		t.Fatal(err)
	}
	g := factorizeAcc(t, acc)
	sc, err := b.NewScorer(g)
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	test := gausstest.Correlated(72, ns, p, d, 1, 1.2)
	staged := b.StagingBuffer(ns * p * d)
	copy(staged, test)
	emb := uint64(ns * p * d * 4)
	score := func(what string, src []float32) ([]float32, Transfers) {
		t.Helper()
		dist := make([]float32, ns*p)
		BusTransfers(true)
		pg := emuPageableCopies()
		if err := sc.Score(src, ns, dist); err != nil {
			t.Fatal(err)
		}
		tr := BusTransfers(true)
		t.Logf("%-34s %v; %.3f× the embeddings", what, tr, float64(tr.HostToDevice+tr.DeviceToHost)/float64(emb))
		if got := emuPageableCopies() - pg; got != 0 {
			t.Errorf("%s: %d copies from pageable memory", what, got)
		}
		return dist, tr
	}
	plain, tp := score("from Go memory", test)
	if tp.HostToDevice != emb || tp.HostToDeviceBounced != emb || tp.HostCopyBytes < emb {
		t.Errorf("from Go memory: %d B up (%d bounced, %d copied by the host), want %d through the bounce buffers", tp.HostToDevice,
			tp.HostToDeviceBounced, tp.HostCopyBytes, emb)
	}
	direct, td := score("from the staging buffer", staged)
	if td.HostToDevice != emb || td.HostToDeviceBounced != 0 {
		t.Errorf("staged: %d B up, %d of them bounced; want %d, none bounced", td.HostToDevice, td.HostToDeviceBounced, emb)
	}
	if per := float64(td.HostToDevice+td.DeviceToHost) / float64(emb); per > 1.1 {
		t.Errorf("staged: %.3f× the embedding's bytes over the bus, want ≤ 1.1", per)
	}
	if td.DeviceToHost != uint64(ns*p*4) {
		t.Errorf("staged: %d B down, want the %d B of distances", td.DeviceToHost, ns*p*4)
	}
	if !slices.Equal(plain, direct) {
		t.Error("scoring from the staging buffer differs from scoring from Go memory")
	}
	emuSetCounting(true)
	defer emuSetCounting(false)
	emuCounters(true)
	setLaunchWork(1) // one patch per launch
	defer setLaunchWork(0)
	split, _ := score("one patch per launch", staged)
	launches := int64(0)
	for _, k := range emuCounters(true) {
		if strings.HasPrefix(k.Name, "k_score") {
			launches += k.Launches
		}
	}
	if launches != p {
		t.Errorf("%d scoring launches with one patch per launch, want %d", launches, p)
	}
	if !slices.Equal(plain, split) {
		t.Error("scoring split into one launch per patch differs")
	}
}

// The fit's uploads by patch ranges on their own stream, and its folds range by range:
// split into one patch per launch, from staging memory or Go memory, the statistics
// have the same bits as one launch over every patch (the copies carry a latency, so a
// fold that ran before its upload, or an upload over a range not yet folded, shows).
func TestFitRangesAndStaging(t *testing.T) {
	const n, p, d = 50, 5, 70
	b := device(t)
	b.Stage = 16 // several passes: uploads of a pass wait for the previous fold
	emuSetCopyDelay(200)
	defer emuSetCopyDelay(0)
	x := gausstest.Correlated(81, n, p, d, 1, 1)
	fitWith := func(src []float32) *gauss.Stats {
		t.Helper()
		acc, err := b.NewAccumulator(p, d)
		if err != nil {
			t.Fatal(err)
		}
		defer acc.Close()
		for lo := 0; lo < n; lo += 10 {
			if err := acc.Add(src[lo*p*d:(lo+10)*p*d], 10); err != nil {
				t.Fatal(err)
			}
		}
		return mustStats(t, acc)
	}
	want := fitWith(x)
	staged := b.StagingBuffer(len(x))
	copy(staged, x)
	BusTransfers(true)
	got := fitWith(staged)
	if tr := BusTransfers(true); tr.HostToDeviceBounced != 0 || tr.HostToDevice != uint64(n*p*d*4) {
		t.Errorf("fit from staging memory: %v; want %d B up, none bounced", tr, n*p*d*4)
	}
	setLaunchWork(1)
	split := fitWith(x)
	setLaunchWork(0)
	for name, s := range map[string]*gauss.Stats{"staged": got, "split": split} {
		if !slices.Equal(s.M2, want.M2) || !slices.Equal(s.Mean, want.Mean) || s.N != want.N {
			t.Errorf("%s fit: statistics differ from the plain fit", name)
		}
	}
}
