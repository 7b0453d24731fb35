// Package gausstest is the conformance suite every gauss.Backend must pass, in the
// manner of gonum's testblas: the CPU backend runs it in package gauss, the CUDA
// backend in package gpu. Answers are checked against a float64 reference PaDiM.
package gausstest

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/padim/padim/detector/gauss"
	"github.com/padim/padim/detector/internal/refpadim"
)

// Run runs every conformance test against b.
func Run(t *testing.T, b gauss.Backend) {
	t.Run("DistancesMatchFloat64Reference", func(t *testing.T) { testReference(t, b, 0, 1, 1e-4) })
	t.Run("LargeMeanSmallSpread", func(t *testing.T) { testReference(t, b, 1000, 0.5, 1e-3) })
	t.Run("StreamingEqualsOneShot", func(t *testing.T) { testStreaming(t, b) })
	t.Run("ShardedMergeEqualsSingle", func(t *testing.T) { testSharded(t, b) })
	t.Run("RemoveFoldEqualsFitOnRest", func(t *testing.T) { testRemoveFrom(t, b) })
	t.Run("NotPositiveDefiniteNamesPatch", func(t *testing.T) { testNotPD(t, b) })
	t.Run("OneSample", func(t *testing.T) { testOneSample(t, b) })
	t.Run("NonFiniteInputRejected", func(t *testing.T) { testNaN(t, b) })
	t.Run("ShapeErrors", func(t *testing.T) { testShapes(t, b) })
	t.Run("BatchInvariantDistances", func(t *testing.T) { testBatchInvariant(t, b) })
	t.Run("ExactStatsEqualAccumulated", func(t *testing.T) { testStatsOf(t, b) })
	t.Run("LeaveOneOutFromStatsEqualsRefits", func(t *testing.T) { testLeaveOneOutFromStats(t, b) })
	lr, ok := b.(gauss.LowRankBackend)
	if !ok {
		t.Run("LowRank", func(t *testing.T) { t.Skipf("%s has no low-rank form", b.Name()) })
		return
	}
	t.Run("LowRankEqualsFull", func(t *testing.T) { testLowRankEqualsFull(t, b, lr) })
	t.Run("LowRankMatchesFloat64Reference", func(t *testing.T) { testLowRankReference(t, lr) })
	t.Run("LowRankOneSample", func(t *testing.T) { testLowRankOneSample(t, lr) })
	t.Run("LowRankBatchInvariant", func(t *testing.T) { testLowRankBatchInvariant(t, lr) })
	t.Run("LowRankErrors", func(t *testing.T) { testLowRankErrors(t, lr) })
	t.Run("LowRankSubsetEqualsExtracted", func(t *testing.T) { testLowRankSubset(t, lr) })
	if loo, ok := b.(gauss.LeaveOneOuter); ok {
		t.Run("LeaveOneOutEqualsRefits", func(t *testing.T) { testLeaveOneOut(t, lr, loo) })
	}
}

// StatsOf (float64 throughout) gives the statistics the backend accumulates.
func testStatsOf(t *testing.T, b gauss.Backend) {
	const n, p, d = 19, 4, 9
	x := Correlated(60, n, p, d, 4, 1)
	s, err := gauss.StatsOf(x, n, p, d)
	if err != nil {
		t.Fatal(err)
	}
	compareStats(t, fit(t, b, x, n, p, d, 5), s, 1e-5)
	bad := append([]float32(nil), x...)
	bad[p*d+3] = float32(math.NaN())
	if _, err := gauss.StatsOf(bad, n, p, d); !errors.Is(err, gauss.ErrNonFinite) {
		t.Fatalf("NaN sample: %v, want ErrNonFinite", err)
	}
	if _, err := gauss.StatsOf(x, n+1, p, d); err == nil {
		t.Fatal("a short batch accepted")
	}
}

// Leave-one-out scores from merged statistics (a sharded fit's calibration)
// equal refitting without each image on the backend and scoring it; from
// exact (float64) statistics they equal the closed form on the samples
// (CPU.LeaveOneOut) to float32 rounding, and from the backend's own
// accumulated statistics (float32 products, whose rounding the downdate
// amplifies when n ≤ D) they stay within 1 %.
func testLeaveOneOutFromStats(t *testing.T, b gauss.Backend) {
	const eps = 0.01
	for _, c := range []struct{ n, p, d int }{{2, 3, 5}, {3, 2, 6}, {9, 4, 20}, {13, 3, 10}, {30, 2, 25}, {40, 3, 8}} {
		n, p, d := c.n, c.p, c.d
		x := Correlated(uint64(70+n), n, p, d, 3, 1)
		// merged from three parts, as from three shards
		parts := [][2]int{{0, n / 3}, {n / 3, n / 2}, {n / 2, n}}
		merged := func(part func(lo, hi int) *gauss.Stats) *gauss.Stats {
			var total *gauss.Stats
			for _, pt := range parts {
				if pt[1] == pt[0] {
					continue
				}
				if s := part(pt[0], pt[1]); total == nil {
					total = s.Clone()
				} else if err := total.Merge(s); err != nil {
					t.Fatal(err)
				}
			}
			return total
		}
		exact := merged(func(lo, hi int) *gauss.Stats {
			s, err := gauss.StatsOf(x[lo*p*d:hi*p*d], hi-lo, p, d)
			if err != nil {
				t.Fatal(err)
			}
			return s
		})
		accumulated := merged(func(lo, hi int) *gauss.Stats { return fit(t, b, x[lo*p*d:hi*p*d], hi-lo, p, d, 2) })
		looScore := func(s *gauss.Stats) []float32 {
			sc, err := gauss.NewLeaveOneOutScorer(b, s, eps)
			if err != nil {
				t.Fatalf("n=%d: %v", n, err)
			}
			defer sc.Close()
			dist := make([]float32, n*p)
			if err := sc.Score(x, n, dist); err != nil {
				t.Fatal(err)
			}
			return dist
		}
		got, got32 := looScore(exact), looScore(accumulated)
		closed := make([]float32, n*p)
		if err := (gauss.CPU{}).LeaveOneOut(x, gauss.All(n), p, d, eps, closed); err != nil {
			t.Fatal(err)
		}
		worstRefit, worstClosed, worst32 := 0.0, 0.0, 0.0
		for i := 0; i < n; i++ {
			var rest []float32
			for j := 0; j < n; j++ {
				if j != i {
					rest = append(rest, x[j*p*d:(j+1)*p*d]...)
				}
			}
			rs, err := gauss.StatsOf(rest, n-1, p, d)
			if err != nil {
				t.Fatal(err)
			}
			g, err := b.Factorize(rs, eps)
			if err != nil {
				t.Fatal(err)
			}
			want := score(t, b, g, x[i*p*d:(i+1)*p*d], 1)
			for q := 0; q < p; q++ {
				worstRefit = max(worstRefit, relErr(float64(got[i*p+q]), float64(want[q])))
				worstClosed = max(worstClosed, relErr(float64(got[i*p+q]), float64(closed[i*p+q])))
				worst32 = max(worst32, relErr(float64(got32[i*p+q]), float64(want[q])))
			}
		}
		t.Logf("n=%d P=%d D=%d: vs refits %.2g, vs closed form on samples %.2g, from accumulated statistics %.2g", n, p, d, worstRefit, worstClosed, worst32)
		if worstRefit > 1e-4 || worstClosed > 1e-6 || worst32 > 1e-2 {
			t.Fatalf("n=%d P=%d D=%d: leave-one-out from statistics off: refits %.3g (≤1e-4), closed form %.3g (≤1e-6), accumulated %.3g (≤1e-2)", n, p, d, worstRefit, worstClosed, worst32)
		}
	}
	one := &gauss.Stats{P: 1, D: 1, N: 5, Mean: []float64{0}, M2: []float64{1}}
	if _, err := gauss.NewLeaveOneOutScorer(b, one, 0); err == nil {
		t.Error("eps 0 accepted")
	}
	if _, err := gauss.NewLeaveOneOutScorer(b, &gauss.Stats{P: 1, D: 1, N: 1, Mean: []float64{0}, M2: []float64{0}}, eps); err == nil {
		t.Error("one image accepted")
	}
	npd := &gauss.Stats{P: 2, D: 1, N: 5, Mean: []float64{0, 0}, M2: []float64{1, math.NaN()}}
	var e *gauss.NotPositiveDefiniteError
	if _, err := gauss.NewLeaveOneOutScorer(b, npd, eps); !errors.As(err, &e) || e.Patch != 1 {
		t.Errorf("NaN second moment at patch 1: %v", err)
	}
}

// Leaving one out in closed form equals refitting without each sample and
// scoring it, from 2 samples to past D.
func testLeaveOneOut(t *testing.T, lr gauss.LowRankBackend, loo gauss.LeaveOneOuter) {
	const p, d, eps = 3, 12, 0.01
	for _, n := range []int{2, 3, 7, 13, 30} {
		x := Correlated(uint64(50+n), n+2, p, d, 5, 1)
		samples := gauss.All(n + 2)[1 : n+1] // not all of x: the list is honoured
		got := make([]float32, n*p)
		if err := loo.LeaveOneOut(x, samples, p, d, eps, got); err != nil {
			t.Fatal(err)
		}
		worst := 0.0
		for r, b := range samples {
			rest := append(append([]int(nil), samples[:r]...), samples[r+1:]...)
			m, err := lr.FactorizeLowRank(x, rest, p, d, eps)
			if err != nil {
				t.Fatal(err)
			}
			want := scoreLowRank(t, lr, m, x[b*p*d:(b+1)*p*d], 1)
			for q := 0; q < p; q++ {
				worst = max(worst, relErr(float64(got[r*p+q]), float64(want[q])))
			}
		}
		t.Logf("n=%d: closed-form leave-one-out vs refits: %.2g relative", n, worst)
		if worst > 1e-4 {
			t.Fatalf("n=%d: leave-one-out differs from refits by %.3g", n, worst)
		}
	}
}

// Fitting on a subset of the samples (cross-fitting folds) equals fitting on
// those samples extracted.
func testLowRankSubset(t *testing.T, lr gauss.LowRankBackend) {
	const n, p, d = 11, 3, 9
	x := Correlated(38, n, p, d, 2, 1)
	keep := []int{9, 0, 4, 5, 10, 2}
	var sub []float32
	for _, b := range keep {
		sub = append(sub, x[b*p*d:(b+1)*p*d]...)
	}
	a, err := lr.FactorizeLowRank(x, keep, p, d, 0.01)
	if err != nil {
		t.Fatal(err)
	}
	b, err := lr.FactorizeLowRank(sub, gauss.All(len(keep)), p, d, 0.01)
	if err != nil {
		t.Fatal(err)
	}
	test := Correlated(39, 4, p, d, 2, 1)
	da, db := scoreLowRank(t, lr, a, test, 4), scoreLowRank(t, lr, b, test, 4)
	for i := range da {
		if da[i] != db[i] {
			t.Fatalf("distance %d: subset %v, extracted %v", i, da[i], db[i])
		}
	}
}

func scoreLowRank(t *testing.T, b gauss.LowRankBackend, m *gauss.LowRank, x []float32, n int) []float32 {
	t.Helper()
	sc, err := b.NewLowRankScorer(m)
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	dist := make([]float32, n*m.P)
	if err := sc.Score(x, n, dist); err != nil {
		t.Fatal(err)
	}
	return dist
}

// testLowRankEqualsFull: the low-rank and the full form give the same
// distances (Woodbury is exact), for N from 1 to past D, on test images and on
// the training images themselves.
func testLowRankEqualsFull(t *testing.T, b gauss.Backend, lr gauss.LowRankBackend) {
	const p, d, eps = 3, 40, 0.01
	for _, n := range []int{1, 2, 5, 20, 21, 50} { // (d+1)/2 = 20.5
		x := Correlated(uint64(10+n), n, p, d, 3, 1)
		test := Correlated(uint64(20+n), 9, p, d, 3, 1.3)
		g, err := b.Factorize(fit(t, b, x, n, p, d, 7), eps)
		if err != nil {
			t.Fatal(err)
		}
		m, err := lr.FactorizeLowRank(x, gauss.All(n), p, d, eps)
		if err != nil {
			t.Fatal(err)
		}
		if m.N != n || m.P != p || m.D != d {
			t.Fatalf("N=%d: low-rank shape %d×%d×%d", n, m.P, m.N, m.D)
		}
		worst := 0.0
		for _, c := range []struct {
			x []float32
			n int
		}{{test, 9}, {x, n}} {
			full, low := score(t, b, g, c.x, c.n), scoreLowRank(t, lr, m, c.x, c.n)
			for i := range full {
				worst = max(worst, relErr(float64(low[i]), float64(full[i])))
			}
		}
		t.Logf("N=%d: low-rank vs full, max relative difference %.2g", n, worst)
		if worst > 1e-4 {
			t.Fatalf("N=%d: low-rank differs from full by %.3g relative", n, worst)
		}
	}
}

func testLowRankReference(t *testing.T, lr gauss.LowRankBackend) {
	const n, p, d, eps = 12, 4, 30, 0.01
	x := Correlated(31, n, p, d, 100, 2)
	test := Correlated(32, 6, p, d, 100, 3)
	m, err := lr.FactorizeLowRank(x, gauss.All(n), p, d, eps)
	if err != nil {
		t.Fatal(err)
	}
	got := scoreLowRank(t, lr, m, test, 6)
	mean, inv, ok := refpadim.Fit(x, n, p, d, eps)
	if !ok {
		t.Fatal("reference singular")
	}
	want := refpadim.Distances(test, 6, p, d, mean, inv)
	worst := 0.0
	for i := range want {
		worst = max(worst, relErr(float64(got[i]), want[i]))
	}
	t.Logf("low-rank vs float64 reference (mean 100, spread 2): %.2g", worst)
	if worst > 1e-4 {
		t.Fatalf("low-rank off the float64 reference by %.3g", worst)
	}
}

// One sample: Σ = εI, the distance is ‖t−μ‖/√ε, in both forms.
func testLowRankOneSample(t *testing.T, lr gauss.LowRankBackend) {
	const p, d, eps = 2, 7, 0.04
	x := Correlated(33, 1, p, d, 1, 1)
	test := Correlated(34, 3, p, d, 1, 1)
	m, err := lr.FactorizeLowRank(x, gauss.All(1), p, d, eps)
	if err != nil {
		t.Fatal(err)
	}
	got := scoreLowRank(t, lr, m, test, 3)
	checkOneSample(t, x, test, got, p, d, eps)
}

func checkOneSample(t *testing.T, x, test []float32, got []float32, p, d int, eps float64) {
	t.Helper()
	for b := 0; b < 3; b++ {
		for q := 0; q < p; q++ {
			var s float64
			for i := 0; i < d; i++ {
				v := float64(test[(b*p+q)*d+i]) - float64(x[q*d+i])
				s += v * v
			}
			want := math.Sqrt(s / eps)
			if e := relErr(float64(got[b*p+q]), want); e > 1e-5 || math.IsNaN(float64(got[b*p+q])) {
				t.Fatalf("image %d patch %d: %v, want ‖t−μ‖/√ε = %v", b, q, got[b*p+q], want)
			}
		}
	}
}

func testLowRankBatchInvariant(t *testing.T, lr gauss.LowRankBackend) {
	const n, p, d = 60, 2, 550
	m, err := lr.FactorizeLowRank(Correlated(35, n, p, d, 1, 1), gauss.All(n), p, d, 0.01)
	if err != nil {
		t.Fatal(err)
	}
	test := Correlated(36, 40, p, d, 1, 1.2)
	all := scoreLowRank(t, lr, m, test, 40)
	for _, k := range []int{1, 2, 3, 4, 5, 7, 8, 12, 16, 24, 32, 33} {
		for lo := 0; lo < 40; lo += k {
			hi := min(lo+k, 40)
			part := scoreLowRank(t, lr, m, test[lo*p*d:hi*p*d], hi-lo)
			for i, v := range part {
				if v != all[lo*p+i] {
					t.Fatalf("image %d patch %d: %v in a batch of %d, %v in a batch of 40", lo+i/p, i%p, v, hi-lo, all[lo*p+i])
				}
			}
		}
	}
}

func testLowRankErrors(t *testing.T, lr gauss.LowRankBackend) {
	x := Correlated(37, 4, 2, 5, 0, 1)
	if _, err := lr.FactorizeLowRank(x, gauss.All(4), 2, 5, 0); err == nil {
		t.Error("eps 0 accepted (Σ is singular when N ≤ D)")
	}
	if _, err := lr.FactorizeLowRank(x, nil, 2, 5, 0.01); err == nil {
		t.Error("no samples accepted")
	}
	if _, err := lr.FactorizeLowRank(x, []int{0, 4}, 2, 5, 0.01); err == nil {
		t.Error("a sample index past the data accepted")
	}
	x[7] = float32(math.NaN())
	if _, err := lr.FactorizeLowRank(x, gauss.All(4), 2, 5, 0.01); !errors.Is(err, gauss.ErrNonFinite) {
		t.Errorf("NaN: %v", err)
	}
	if _, err := lr.NewLowRankScorer(&gauss.LowRank{P: 2, D: 5, N: 4, Eps: 0.01, Mean: make([]float32, 10), M: make([]float32, 39)}); err == nil {
		t.Error("mis-shaped model accepted")
	}
}

// testBatchInvariant: an image's distances do not depend on the batch it is
// scored in, bit for bit (the pipeline batches across files and promises the
// same outputs as one image at a time). d=550 is PaDiM's size, where BLAS
// libraries switch kernels by problem size.
func testBatchInvariant(t *testing.T, b gauss.Backend) {
	const n, p, d = 70, 2, 550
	x := Correlated(8, n, p, d, 1, 1)
	g, err := b.Factorize(fit(t, b, x, n, p, d, 35), 0.01)
	if err != nil {
		t.Fatal(err)
	}
	test := Correlated(9, 45, p, d, 1, 1.2)
	all := score(t, b, g, test, 45)
	for _, k := range []int{1, 2, 3, 4, 5, 7, 8, 12, 16, 24, 32, 33} {
		for lo := 0; lo < 45; lo += k {
			hi := min(lo+k, 45)
			part := score(t, b, g, test[lo*p*d:hi*p*d], hi-lo)
			for i, v := range part {
				if v != all[lo*p+i] {
					t.Fatalf("image %d patch %d: %v scored in a batch of %d, %v in a batch of 45", lo+i/p, i%p, v, hi-lo, all[lo*p+i])
				}
			}
		}
	}
}

// Correlated returns n embeddings [n][P][D] with correlated channels, per-patch
// offsets around mean and the given spread.
func Correlated(seed uint64, n, p, d int, mean, spread float64) []float32 {
	r := rand.New(rand.NewPCG(seed, 1))
	mix := make([]float64, d*d)
	for i := range mix {
		mix[i] = r.NormFloat64() / math.Sqrt(float64(d))
	}
	off := make([]float64, p*d)
	for i := range off {
		off[i] = mean * (1 + 0.1*r.NormFloat64())
	}
	x := make([]float32, n*p*d)
	z := make([]float64, d)
	for b := 0; b < n; b++ {
		for q := 0; q < p; q++ {
			for i := range z {
				z[i] = r.NormFloat64()
			}
			for i := 0; i < d; i++ {
				v := 0.3 * z[i]
				for j := 0; j < d; j++ {
					v += mix[i*d+j] * z[j]
				}
				x[(b*p+q)*d+i] = float32(off[q*d+i] + spread*v)
			}
		}
	}
	return x
}

func fit(t *testing.T, b gauss.Backend, x []float32, n, p, d, batch int) *gauss.Stats {
	t.Helper()
	acc, err := b.NewAccumulator(p, d)
	if err != nil {
		t.Fatal(err)
	}
	defer acc.Close()
	for lo := 0; lo < n; lo += batch {
		hi := min(lo+batch, n)
		if err := acc.Add(x[lo*p*d:hi*p*d], hi-lo); err != nil {
			t.Fatal(err)
		}
	}
	s, err := acc.Stats()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func score(t *testing.T, b gauss.Backend, g *gauss.Gaussian, x []float32, n int) []float32 {
	t.Helper()
	sc, err := b.NewScorer(g)
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	dist := make([]float32, n*g.P)
	if err := sc.Score(x, n, dist); err != nil {
		t.Fatal(err)
	}
	return dist
}

func relErr(got, want float64) float64 {
	return math.Abs(got-want) / math.Max(math.Abs(want), 1e-12)
}

// RunAt checks a backend against the float64 reference at a given size —
// production's d with few patches (p), n training images — in both forms
// when the backend has the low-rank one: the suite's own sizes are small.
func RunAt(t *testing.T, b gauss.Backend, n, p, d int) {
	t.Run(fmt.Sprintf("ReferenceAt_n%d_p%d_d%d", n, p, d), func(t *testing.T) { testReferenceAt(t, b, n, p, d, 0, 1, 1e-4) })
	if lr, ok := b.(gauss.LowRankBackend); ok {
		t.Run(fmt.Sprintf("LowRankReferenceAt_n%d_p%d_d%d", n, p, d), func(t *testing.T) {
			x := Correlated(41, n, p, d, 1, 1)
			test := Correlated(42, 5, p, d, 1, 1.3)
			m, err := lr.FactorizeLowRank(x, gauss.All(n), p, d, 0.01)
			if err != nil {
				t.Fatal(err)
			}
			got := scoreLowRank(t, lr, m, test, 5)
			mean, inv, ok := refpadim.Fit(x, n, p, d, 0.01)
			if !ok {
				t.Fatal("reference singular")
			}
			want := refpadim.Distances(test, 5, p, d, mean, inv)
			worst := 0.0
			for i := range want {
				worst = max(worst, relErr(float64(got[i]), want[i]))
			}
			t.Logf("low-rank at n=%d d=%d vs float64: %.2g", n, d, worst)
			if worst > 1e-4 {
				t.Fatalf("low-rank off the float64 reference by %.3g", worst)
			}
		})
	}
}

func testReference(t *testing.T, b gauss.Backend, mean, spread, tol float64) {
	testReferenceAt(t, b, 40, 6, 24, mean, spread, tol)
}

func testReferenceAt(t *testing.T, b gauss.Backend, n, p, d int, mean, spread, tol float64) {
	const eps = 0.01
	x := Correlated(1, n, p, d, mean, spread)
	test := Correlated(2, 7, p, d, mean, spread*1.5)
	s := fit(t, b, x, n, p, d, 16)
	g, err := b.Factorize(s, eps)
	if err != nil {
		t.Fatal(err)
	}
	got := score(t, b, g, test, 7)
	m, inv, ok := refpadim.Fit(x, n, p, d, eps)
	if !ok {
		t.Fatal("reference covariance singular")
	}
	want := refpadim.Distances(test, 7, p, d, m, inv)
	worst := 0.0
	for i := range want {
		worst = max(worst, relErr(float64(got[i]), want[i]))
	}
	t.Logf("max relative error vs float64: %.3g (tolerance %g)", worst, tol)
	if worst > tol {
		t.Fatalf("max relative error %.3g > %g", worst, tol)
	}
	// Training images themselves and the mean itself.
	self := score(t, b, g, x, n)
	wantSelf := refpadim.Distances(x, n, p, d, m, inv)
	for i := range wantSelf {
		if e := relErr(float64(self[i]), wantSelf[i]); e > tol {
			t.Fatalf("training embedding %d: got %v want %v", i, self[i], wantSelf[i])
		}
	}
	atMean := score(t, b, g, g.Mean, 1)
	for q, v := range atMean {
		if v > 1e-2*float32(max(spread, 1e-3)) {
			t.Fatalf("distance of the mean itself at patch %d is %v", q, v)
		}
	}
}

func testStreaming(t *testing.T, b gauss.Backend) {
	const n, p, d = 23, 5, 17
	x := Correlated(3, n, p, d, 5, 2)
	one := fit(t, b, x, n, p, d, n)
	for _, batch := range []int{1, 4, 7} {
		s := fit(t, b, x, n, p, d, batch)
		if s.N != n {
			t.Fatalf("batch %d: N = %d", batch, s.N)
		}
		compareStats(t, s, one, 1e-5)
	}
}

func testSharded(t *testing.T, b gauss.Backend) {
	const n, p, d = 30, 4, 13
	x := Correlated(4, n, p, d, 50, 3)
	all := fit(t, b, x, n, p, d, 8)
	a := fit(t, b, x[:11*p*d], 11, p, d, 5)
	c := fit(t, b, x[11*p*d:], n-11, p, d, 6)
	if err := a.Merge(c); err != nil {
		t.Fatal(err)
	}
	compareStats(t, a, all, 1e-5)
	ga, err := b.Factorize(a, 0.01)
	if err != nil {
		t.Fatal(err)
	}
	gall, err := b.Factorize(all, 0.01)
	if err != nil {
		t.Fatal(err)
	}
	da, dall := score(t, b, ga, x, n), score(t, b, gall, x, n)
	for i := range da {
		if e := relErr(float64(da[i]), float64(dall[i])); e > 1e-4 {
			t.Fatalf("distance %d: merged %v single %v", i, da[i], dall[i])
		}
	}
}

// The statistics of all images minus those of a fold are those of the rest
// (cross-fitting in the full form).
func testRemoveFrom(t *testing.T, b gauss.Backend) {
	const n, p, d = 26, 4, 11
	x := Correlated(40, n, p, d, 20, 3)
	all := fit(t, b, x, n, p, d, 9).Clone()
	fold := fit(t, b, x[17*p*d:], n-17, p, d, 4).Clone()
	rest := fit(t, b, x[:17*p*d], 17, p, d, 5)
	if err := fold.RemoveFrom(all); err != nil {
		t.Fatal(err)
	}
	compareStats(t, fold, rest, 1e-6)
}

func compareStats(t *testing.T, got, want *gauss.Stats, tol float64) {
	t.Helper()
	if got.N != want.N || got.P != want.P || got.D != want.D {
		t.Fatalf("shape/count (%d,%d,%d) vs (%d,%d,%d)", got.N, got.P, got.D, want.N, want.P, want.D)
	}
	scale := 0.0
	for _, v := range want.M2 {
		scale = max(scale, math.Abs(v))
	}
	for i := range want.Mean {
		if e := relErr(got.Mean[i], want.Mean[i]); e > tol {
			t.Fatalf("mean %d: %v vs %v", i, got.Mean[i], want.Mean[i])
		}
	}
	for i := range want.M2 {
		if math.Abs(got.M2[i]-want.M2[i]) > tol*scale {
			t.Fatalf("M2 %d: %v vs %v", i, got.M2[i], want.M2[i])
		}
	}
}

func testNotPD(t *testing.T, b gauss.Backend) {
	const n, p, d = 10, 5, 6
	x := Correlated(5, n, p, d, 0, 1)
	for i := 0; i < n; i++ { // patch 3 constant: zero covariance
		for j := 0; j < d; j++ {
			x[(i*p+3)*d+j] = 2
		}
	}
	s := fit(t, b, x, n, p, d, 4)
	_, err := b.Factorize(s, 0)
	var npd *gauss.NotPositiveDefiniteError
	if !errors.As(err, &npd) || npd.Patch != 3 {
		t.Fatalf("got %v, want NotPositiveDefiniteError for patch 3", err)
	}
	g, err := b.Factorize(s, 0.01) // regularised: fine, and finite
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range score(t, b, g, x, n) {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			t.Fatal("non-finite distance")
		}
	}
}

// One sample has no spread: the full form is Σ = εI too (not an error, not
// NaN), and with eps 0 it is refused; no sample at all is refused.
func testOneSample(t *testing.T, b gauss.Backend) {
	const p, d, eps = 2, 7, 0.04
	x := Correlated(6, 1, p, d, 1, 1)
	test := Correlated(34, 3, p, d, 1, 1)
	s := fit(t, b, x, 1, p, d, 1)
	g, err := b.Factorize(s, eps)
	if err != nil {
		t.Fatal(err)
	}
	checkOneSample(t, x, test, score(t, b, g, test, 3), p, d, eps)
	if _, err := b.Factorize(s, 0); err == nil {
		t.Error("one sample with eps 0 accepted")
	}
	acc, err := b.NewAccumulator(p, d)
	if err != nil {
		t.Fatal(err)
	}
	defer acc.Close()
	empty, err := acc.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Factorize(empty, eps); err == nil {
		t.Error("no samples accepted")
	}
}

func testNaN(t *testing.T, b gauss.Backend) {
	const p, d = 3, 4
	acc, err := b.NewAccumulator(p, d)
	if err != nil {
		t.Fatal(err)
	}
	defer acc.Close()
	x := Correlated(7, 2, p, d, 0, 1)
	x[1*p*d+2*d+1] = float32(math.NaN())
	if err := acc.Add(x, 2); !errors.Is(err, gauss.ErrNonFinite) {
		t.Fatalf("got %v, want ErrNonFinite", err)
	}
	s, err := acc.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if s.N != 0 {
		t.Fatalf("a rejected batch was counted: N=%d", s.N)
	}
}

func testShapes(t *testing.T, b gauss.Backend) {
	acc, err := b.NewAccumulator(3, 4)
	if err != nil {
		t.Fatal(err)
	}
	defer acc.Close()
	if err := acc.Add(make([]float32, 11), 1); err == nil {
		t.Error("short batch accepted")
	}
	acc.Close()
	if err := acc.Add(make([]float32, 12), 1); err == nil {
		t.Error("Add after Close accepted")
	}
	g := &gauss.Gaussian{P: 3, D: 4, Mean: make([]float32, 12), LInv: make([]float32, 5)}
	if _, err := b.NewScorer(g); err == nil {
		t.Error("mis-shaped model accepted")
	}
}
