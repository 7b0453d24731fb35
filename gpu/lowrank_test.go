//go:build cuda || cudaemu

package gpu

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/padim/padim/detector/gauss"
	"github.com/padim/padim/detector/gauss/gausstest"
)

// The low-rank form on the device against the CPU backend (float64 Gram, Cholesky
// and solve) at PaDiM's d=550 with few patches, N = 2 … 200 (the few-shot range, past
// (d+1)/2 too), in both arithmetics: the model (μ, M) and the distances, and an image
// scored alone against the same image in a batch (bit for bit).
func TestLowRankProductionSizes(t *testing.T) {
	type tc struct {
		d, p, n, score int
		prec           Precision
		ill            bool // backbone-like, ill-conditioned features (see illConditioned)
	}
	cases := []tc{
		{550, 2, 2, 17, PrecisionDF32, false},
		{550, 2, 20, 17, PrecisionDF32, true},
		{550, 1, 50, 65, PrecisionFP64, true},
		{550, 1, 50, 65, PrecisionDF32, true},
		{550, 1, 200, 20, PrecisionDF32, false},
		{1792, 1, 10, 17, PrecisionAuto, false},
	}
	if !Emulated {
		cases = nil
		for _, prec := range []Precision{PrecisionFP64, PrecisionDF32} {
			cases = append(cases, tc{550, 64, 2, 200, prec, false}, tc{550, 64, 20, 200, prec, true}, tc{550, 64, 50, 200, prec, true},
				tc{550, 32, 200, 200, prec, false}, tc{550, 16, 300, 200, prec, true}, tc{1792, 16, 50, 200, prec, true})
		}
	}
	for _, c := range cases {
		name := fmt.Sprintf("d%d-P%d-N%d-%s", c.d, c.p, c.n, c.prec)
		if c.ill {
			name += "-ill"
		}
		t.Run(name, func(t *testing.T) {
			b := device(t)
			b.Precision = c.prec
			start := time.Now()
			var x, test []float32
			if c.ill {
				x, test = illConditioned(uint64(c.n), c.n, c.p, c.d, 16), illConditioned(uint64(c.n)+1, c.score, c.p, c.d, 16)
			} else {
				x = gausstest.Correlated(uint64(c.d+c.n), c.n, c.p, c.d, 1, 1)
				test = gausstest.Correlated(uint64(c.d+c.n)+1, c.score, c.p, c.d, 1, 1.3)
			}
			cm, err := gauss.CPU{}.FactorizeLowRank(x, gauss.All(c.n), c.p, c.d, 0.01)
			if err != nil {
				t.Fatal(err)
			}
			cdist := scoreModel(t, gauss.CPU{}, cm, test, c.score)
			gm, err := b.FactorizeLowRank(x, gauss.All(c.n), c.p, c.d, 0.01)
			if err != nil {
				t.Fatal(err)
			}
			if gm.N != c.n || gm.P != c.p || gm.D != c.d || gm.Eps != 0.01 {
				t.Fatalf("shape %d×%d×%d eps %v", gm.P, gm.N, gm.D, gm.Eps)
			}
			meanDiff := 0
			for i := range cm.Mean {
				if cm.Mean[i] != gm.Mean[i] {
					meanDiff++
					if math.Abs(float64(cm.Mean[i]-gm.Mean[i])) > 1e-6*max(math.Abs(float64(cm.Mean[i])), 1) {
						t.Fatalf("mean %d: %v, CPU %v", i, gm.Mean[i], cm.Mean[i])
					}
				}
			}
			me := relMax(cm.M, gm.M)
			sc, err := b.NewLowRankScorer(gm) // the cached device model
			if err != nil {
				t.Fatal(err)
			}
			defer sc.Close()
			gdist := make([]float32, c.score*c.p)
			if err := sc.Score(test, c.score, gdist); err != nil {
				t.Fatal(err)
			}
			one := make([]float32, c.p)
			for i := 0; i < 3; i++ {
				if err := sc.Score(test[i*c.p*c.d:], 1, one); err != nil {
					t.Fatal(err)
				}
				if !slices.Equal(one, gdist[i*c.p:(i+1)*c.p]) {
					t.Fatalf("image %d scored alone differs from the same image in a batch of %d", i, c.score)
				}
			}
			// the training images themselves (the closest to the span of M: most cancellation)
			self := min(c.n, 16)
			cself, gself := scoreModel(t, gauss.CPU{}, cm, x, self), scoreModel(t, b, gm, x, self)
			de, se := distErr(cdist, gdist), distErr(cself, gself)
			t.Logf("%s: M vs CPU %.2e (relative to its largest), %d/%d means differ in the last bit; distances vs CPU %.2e, training images %.2e; %v",
				b.Precision, me, meanDiff, len(cm.Mean), de, se, time.Since(start).Round(time.Millisecond))
			if me > 1e-5 || de > 1e-4 || se > 1e-4 {
				t.Fatalf("differs from the CPU: M %.3g, distances %.3g, training images %.3g", me, de, se)
			}
		})
	}
}

// The float64-reference checks of gausstest at d=550 (the suite's own sizes are small),
// below and above (d+1)/2.
func TestLowRankReferenceAtD550(t *testing.T) {
	b := device(t)
	gausstest.RunAt(t, b, 60, 2, 550)
	if !Emulated {
		gausstest.RunAt(t, b, 300, 4, 550)
	}
}

// scoreModel scores n images of x under either form on b.
func scoreModel(t testing.TB, b gauss.Backend, m gauss.Model, x []float32, n int) []float32 {
	t.Helper()
	sc, err := gauss.NewModelScorer(b, m)
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	p, _ := m.Shape()
	d := make([]float32, n*p)
	if err := sc.Score(x, n, d); err != nil {
		t.Fatal(err)
	}
	return d
}

// relMax is the worst difference of got from want, relative to want's largest entry.
func relMax(want, got []float32) float64 {
	scale, worst := 0.0, 0.0
	for _, v := range want {
		scale = max(scale, math.Abs(float64(v)))
	}
	for i := range want {
		if math.IsNaN(float64(got[i])) {
			return math.Inf(1)
		}
		worst = max(worst, math.Abs(float64(want[i]-got[i])))
	}
	return worst / max(scale, 1e-30)
}

// With a budget too small for the model, the factorisation runs in chunks of patches
// and the scorer streams M by patch blocks from pinned host memory: the same bits.
func TestLowRankStreamedEqualsResident(t *testing.T) {
	const n, p, d = 9, 12, 100
	x := gausstest.Correlated(71, n+3, p, d, 2, 1)
	samples := []int{11, 0, 3, 4, 7, 1, 9, 2, 10} // not all, not in order
	test := gausstest.Correlated(72, 70, p, d, 2, 1.2)
	run := func(fitBudget, scoreBudget int64) (*gauss.LowRank, []float32, Plan) {
		b := device(t)
		b.MemoryBudget = fitBudget
		m, err := b.FactorizeLowRank(x, samples, p, d, 0.01)
		if err != nil {
			t.Fatal(err)
		}
		b.MemoryBudget = scoreBudget
		sc, err := b.NewLowRankScorer(m)
		if err != nil {
			t.Fatal(err)
		}
		defer sc.Close()
		dist := make([]float32, 70*p)
		if err := sc.Score(test, 70, dist); err != nil {
			t.Fatal(err)
		}
		return m, dist, sc.(*scorer).plan()
	}
	// resident: everything. Streamed: the fit has room for the workspace of 4 patches
	// (chunks of 4, and no room to keep the model beside the workspace of 12: it goes to
	// pinned memory), the scorer for 8 patches of M and 6 images per launch.
	per := lowRankWorkspace(n, d)
	rm, rd, rp := run(0, 0)
	sm, sd, sp := run(5*per, 64<<10)
	t.Logf("workspace %d B per patch; resident %+v; streamed %+v", per, rp, sp)
	if !rp.Resident || sp.Resident || sp.PatchBlock >= p {
		t.Fatal("the budgets did not give one resident and one streamed layout")
	}
	if !slices.Equal(rm.M, sm.M) || !slices.Equal(rm.Mean, sm.Mean) {
		t.Fatal("the model factorised in chunks differs")
	}
	if !slices.Equal(rd, sd) {
		t.Fatal("scores with a streamed model differ")
	}
	cm, err := gauss.CPU{}.FactorizeLowRank(x, samples, p, d, 0.01)
	if err != nil {
		t.Fatal(err)
	}
	if e := distErr(scoreModel(t, gauss.CPU{}, cm, test, 70), rd); e > 1e-5 {
		t.Fatalf("distances differ from the CPU by %.3g", e)
	}
}

// What crosses the bus: the listed samples once (not the rest of x), the model once
// (for the caller), the distances; a scorer of that model uploads nothing, another
// one uploads the model once. Every copy is from pinned memory.
func TestLowRankDataStaysOnDevice(t *testing.T) {
	const n, p, d, ns = 20, 3, 120, 70
	b := device(t)
	pageable := emuPageableCopies()
	x := gausstest.Correlated(73, 2*n, p, d, 1, 1)
	samples := make([]int, n)
	for i := range samples {
		samples[i] = 2*i + 1
	}
	step := func(what string, wantH2D, wantD2H uint64, f func()) {
		t.Helper()
		h0, d0 := emuCopied()
		f()
		h1, d1 := emuCopied()
		t.Logf("%-32s host→device %8d B, device→host %8d B", what, h1-h0, d1-d0)
		if Emulated && (h1-h0 != wantH2D || d1-d0 != wantD2H) {
			t.Fatalf("%s: %d B up, %d B down; want %d, %d", what, h1-h0, d1-d0, wantH2D, wantD2H)
		}
	}
	var m *gauss.LowRank
	// up: the 20 listed samples; down: M, the means, a status flag per patch
	step("factorise 20 of 40 images", n*p*d*4, p*n*d*4+p*d*4+p*4, func() {
		var err error
		if m, err = b.FactorizeLowRank(x, samples, p, d, 0.01); err != nil {
			t.Fatal(err)
		}
	})
	var sc gauss.Scorer
	step("scorer of that model", 0, 0, func() {
		var err error
		if sc, err = b.NewLowRankScorer(m); err != nil {
			t.Fatal(err)
		}
	})
	defer sc.Close()
	test := gausstest.Correlated(74, ns, p, d, 1, 1)
	step("score 70 images", ns*p*d*4, ns*p*4, func() {
		if err := sc.Score(test, ns, make([]float32, ns*p)); err != nil {
			t.Fatal(err)
		}
	})
	step("a second scorer uploads", p*n*d*4+p*d*4, 0, func() {
		sc2, err := b.NewLowRankScorer(m)
		if err != nil {
			t.Fatal(err)
		}
		sc2.Close()
	})
	if got := emuPageableCopies() - pageable; got != 0 {
		t.Fatalf("%d asynchronous copies used pageable host memory", got)
	}
}

// A patch whose Gram matrix is numerically singular is named as the CPU names it, in
// both arithmetics; with a usable ε the same data fits. (Centred samples sum to zero,
// so AAᵀ + εI always has the eigenvalue ε: with ε = 1e-8 the pivots of a patch of
// spread 1 pass the CPU's test of 1e-7 of the largest, those of patch 2, scaled by
// 1e4, cannot; double-float refuses it by its resolution rule, since its pivots there
// are rounding noise of about the size the pivot test accepts.)
func TestLowRankNotPositiveDefinite(t *testing.T) {
	const n, p, d = 6, 5, 30
	b := device(t)
	x := gausstest.Correlated(75, n, p, d, 1, 1)
	for r := 0; r < n; r++ {
		for i := 0; i < d; i++ {
			x[(r*p+2)*d+i] *= 1e4
		}
	}
	_, cerr := gauss.CPU{}.FactorizeLowRank(x, gauss.All(n), p, d, 1e-8)
	var npd *gauss.NotPositiveDefiniteError
	if !errors.As(cerr, &npd) || npd.Patch != 2 {
		t.Fatalf("CPU: %v, want patch 2 not positive definite", cerr)
	}
	for _, prec := range []Precision{PrecisionFP64, PrecisionDF32} {
		b.Precision = prec
		_, err := b.FactorizeLowRank(x, gauss.All(n), p, d, 1e-8)
		if !errors.As(err, &npd) || npd.Patch != 2 {
			t.Fatalf("%s: %v, want patch 2 not positive definite", prec, err)
		}
		m, err := b.FactorizeLowRank(x, gauss.All(n), p, d, 0.01)
		if err != nil {
			t.Fatalf("%s, eps 0.01: %v", prec, err)
		}
		for _, v := range scoreModel(t, b, m, x, n) {
			if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
				t.Fatalf("%s: non-finite distance", prec)
			}
		}
	}
}

// Out of memory is an error before any launch, and the device works afterwards;
// closing the backend leaves low-rank scorers working; nothing leaks.
func TestLowRankLimitsAndLifetime(t *testing.T) {
	const n, p, d = 12, 4, 64
	base, live := emuDeviceBytes(), liveObjects()
	x := gausstest.Correlated(76, n, p, d, 1, 1)
	test := gausstest.Correlated(77, 20, p, d, 1, 1.2)
	func() {
		b := device(t)
		b.MemoryBudget = lowRankWorkspace(n, d) / 2 // not one patch
		if _, err := b.FactorizeLowRank(x, gauss.All(n), p, d, 0.01); !errors.Is(err, ErrOutOfMemory) {
			t.Fatalf("a budget below one patch's workspace: got %v, want ErrOutOfMemory", err)
		}
		b.MemoryBudget = 0
		m, err := b.FactorizeLowRank(x, gauss.All(n), p, d, 0.01)
		if err != nil {
			t.Fatal(err)
		}
		sc, err := b.NewLowRankScorer(m)
		if err != nil {
			t.Fatal(err)
		}
		want := make([]float32, 20*p)
		if err := sc.Score(test, 20, want); err != nil {
			t.Fatal(err)
		}
		if _, err := b.FactorizeLowRank(x, gauss.All(n), p, d, 0.01); err != nil { // cached, never used
			t.Fatal(err)
		}
		b.Close()
		if _, err := b.FactorizeLowRank(x, gauss.All(n), p, d, 0.01); !errors.Is(err, ErrClosed) {
			t.Fatalf("FactorizeLowRank after Close: %v", err)
		}
		if _, err := b.NewLowRankScorer(m); !errors.Is(err, ErrClosed) {
			t.Fatalf("NewLowRankScorer after Close: %v", err)
		}
		got := make([]float32, 20*p)
		if err := sc.Score(test, 20, got); err != nil || !slices.Equal(got, want) {
			t.Fatalf("scores after the backend was closed: %v", err)
		}
		sc.Close()
		if err := sc.Score(test, 1, got); !errors.Is(err, ErrClosed) {
			t.Fatalf("Score after Close: %v", err)
		}
	}()
	if Emulated {
		if got := emuDeviceBytes(); got != base {
			t.Fatalf("%d device bytes still allocated, want %d", got, base)
		}
	}
	if got := liveObjects(); got != live {
		t.Fatalf("%d C objects alive, want %d", got, live)
	}
}

// One low-rank scorer shared by goroutines gives each the same answers as sequential
// calls (run under -race by make test).
func TestLowRankConcurrentScore(t *testing.T) {
	const n, p, d = 10, 3, 48
	b := device(t)
	m, err := b.FactorizeLowRank(gausstest.Correlated(78, n, p, d, 1, 1), gauss.All(n), p, d, 0.01)
	if err != nil {
		t.Fatal(err)
	}
	sc, err := b.NewLowRankScorer(m)
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	test := gausstest.Correlated(79, 40, p, d, 1, 1.2)
	want := make([]float32, 40*p)
	if err := sc.Score(test, 40, want); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			k := 1 + 9*w // batches of 1, 10, 19, 28
			got := make([]float32, 40*p)
			for lo := 0; lo < 40; lo += k {
				hi := min(lo+k, 40)
				if err := sc.Score(test[lo*p*d:hi*p*d], hi-lo, got[lo*p:hi*p]); err != nil {
					errs <- err
					return
				}
			}
			if !slices.Equal(got, want) {
				errs <- fmt.Errorf("batches of %d: concurrent scores differ from one sequential call", k)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// Every scoring shape gives an image the same bits: ranks that select the narrow
// shapes (N ≤ 16, ≤ 32), one and several tiles of 64 and 256 rows, in calls of ≤ 16
// images and of more, in both arithmetics.
func TestLowRankBatchInvariantShapes(t *testing.T) {
	const p, d, ns = 1, 70, 40
	b := device(t)
	test := gausstest.Correlated(84, ns, p, d, 1, 1.2)
	for _, prec := range []Precision{PrecisionDF32, PrecisionFP64} {
		b.Precision = prec
		for _, n := range []int{3, 16, 17, 33, 65, 257} {
			m, err := b.FactorizeLowRank(gausstest.Correlated(uint64(85+n), n, p, d, 1, 1), gauss.All(n), p, d, 0.01)
			if err != nil {
				t.Fatal(err)
			}
			sc, err := b.NewLowRankScorer(m)
			if err != nil {
				t.Fatal(err)
			}
			all := make([]float32, ns*p)
			if err := sc.Score(test, ns, all); err != nil {
				t.Fatal(err)
			}
			for _, k := range []int{1, 16, 17, 33} {
				part := make([]float32, ns*p)
				for lo := 0; lo < ns; lo += k {
					hi := min(lo+k, ns)
					if err := sc.Score(test[lo*p*d:hi*p*d], hi-lo, part[lo*p:hi*p]); err != nil {
						t.Fatal(err)
					}
				}
				if !slices.Equal(part, all) {
					t.Fatalf("%s, N=%d: scores in calls of %d differ from one call of %d", prec, n, k, ns)
				}
			}
			sc.Close()
		}
	}
}

// What a low-rank fit at P=3136, d=550 needs on the device: the model (μ and M) stays
// resident beside the workspace of at least 64 patches on an 8 GB card up to N=300;
// the factorisation then runs in chunks of what is left.
func TestLowRankMemoryPlanD550(t *testing.T) {
	const P, D = 3136, 550
	const gib = 1 << 30
	avail8 := int64(8*gib) - 256<<20 - 300<<20 // less the reserve and ~300 MiB for the display and driver
	for _, n := range []int{5, 50, 200, 300} {
		model := int64(P)*int64(n)*D*4 + P*D*4
		per := lowRankWorkspace(n, D)
		chunk := (avail8 - model) / per
		t.Logf("N=%3d: model %.2f GiB, %.2f MiB per patch while factorising (workspace, staged samples), chunks of %d patches on an 8 GB card",
			n, float64(model)/gib, float64(per)/(1<<20), min(chunk, P))
		if chunk < 64 {
			t.Fatalf("N=%d: an 8 GB card holds the model and only %d patches of workspace", n, chunk)
		}
	}
}
