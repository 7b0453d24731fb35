//go:build cuda || cudaemu

package gpu

import (
	"errors"
	"runtime"
	"slices"
	"sync"
	"testing"

	"github.com/padim/padim/detector/gauss"
	"github.com/padim/padim/detector/gauss/gausstest"
)

// Lifetime and concurrency: the rules gpu.go documents. Run with -race.

const ltP, ltD, ltN = 5, 40, 30

// fitted returns a backend, an accumulator fed ltN images, and test images.
func fitted(t *testing.T) (*Backend, gauss.Accumulator, []float32) {
	t.Helper()
	b := device(t)
	acc, err := b.NewAccumulator(ltP, ltD)
	if err != nil {
		t.Fatal(err)
	}
	if err := acc.Add(gausstest.Correlated(11, ltN, ltP, ltD, 2, 1), ltN); err != nil {
		t.Fatal(err)
	}
	return b, acc, gausstest.Correlated(12, 64, ltP, ltD, 2, 1.5)
}

func factorizeAcc(t *testing.T, acc gauss.Accumulator) *gauss.Gaussian {
	t.Helper()
	f, ok := acc.(interface {
		Factorize(eps float64) (*gauss.Gaussian, error)
	})
	if !ok {
		t.Fatal("the GPU accumulator has no Factorize")
	}
	g, err := f.Factorize(0.01)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

func scoreAll(t *testing.T, sc gauss.Scorer, x []float32, n int) []float32 {
	t.Helper()
	d := make([]float32, n*ltP)
	if err := sc.Score(x, n, d); err != nil {
		t.Fatal(err)
	}
	return d
}

// Closing the backend while an accumulator and a scorer are in use: both keep
// working (they hold the context), the backend refuses new work, and once
// everything is closed no C object is left.
func TestCloseBackendWhileInUse(t *testing.T) {
	base := liveObjects()
	b, acc, test := fitted(t)
	g := factorizeAcc(t, acc)
	sc, err := b.NewScorer(g)
	if err != nil {
		t.Fatal(err)
	}
	want := scoreAll(t, sc, test, 64)
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := b.NewAccumulator(ltP, ltD); !errors.Is(err, ErrClosed) {
		t.Fatalf("NewAccumulator after Close: %v", err)
	}
	if _, err := b.NewScorer(g); !errors.Is(err, ErrClosed) {
		t.Fatalf("NewScorer after Close: %v", err)
	}
	runtime.GC()
	if got := scoreAll(t, sc, test, 64); !slices.Equal(got, want) {
		t.Fatal("scores changed after the backend was closed")
	}
	if err := acc.Add(test[:ltP*ltD], 1); err != nil {
		t.Fatalf("Add after the backend was closed: %v", err)
	}
	if _, err := acc.Stats(); err != nil {
		t.Fatal(err)
	}
	if g2 := factorizeAcc(t, acc); g2 == nil {
		t.Fatal("no model")
	}
	sc.Close()
	acc.Close()
	if err := sc.Score(test, 1, make([]float32, ltP)); !errors.Is(err, ErrClosed) {
		t.Fatalf("Score after Close: %v", err)
	}
	if err := acc.Add(test[:ltP*ltD], 1); !errors.Is(err, ErrClosed) {
		t.Fatalf("Add after Close: %v", err)
	}
	if n := liveObjects(); n != base {
		t.Fatalf("%d C objects alive after everything was closed, want %d", n, base)
	}
}

// A scorer whose backend is unreachable and never closed, while the collector runs
// over and over: with the old finalizer on the backend, the context (streams,
// memory) was freed under the scorer. Now the scorer holds the context itself.
func TestGCDuringScoring(t *testing.T) {
	device(t) // skips (or fails) without a device
	base := liveObjects()
	var sc gauss.Scorer
	test := gausstest.Correlated(12, 64, ltP, ltD, 2, 1.5)
	func() {
		gb, err := New(0) // deliberately no Close and no reference kept
		if err != nil {
			t.Fatal(err)
		}
		acc, err := gb.NewAccumulator(ltP, ltD)
		if err != nil {
			t.Fatal(err)
		}
		if err := acc.Add(gausstest.Correlated(11, ltN, ltP, ltD, 2, 1), ltN); err != nil {
			t.Fatal(err)
		}
		g := factorizeAcc(t, acc)
		acc.Close()
		if sc, err = gb.NewScorer(g); err != nil {
			t.Fatal(err)
		}
	}()
	want := scoreAll(t, sc, test, 64)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
				_ = make([]byte, 32<<20) // pressure, then collect
				runtime.GC()
			}
		}
	}()
	for i := 0; i < 20; i++ {
		if got := scoreAll(t, sc, test, 64); !slices.Equal(got, want) {
			t.Fatalf("round %d: scores changed under GC", i)
		}
	}
	close(stop)
	wg.Wait()
	sc.Close()
	runtime.GC()
	// The backend was never closed: its context stays (no finalizer), the rest is gone.
	if n := liveObjects(); n != base+1 {
		t.Fatalf("%d C objects alive, want %d (the unclosed backend's context)", n, base+1)
	}
}

// One scorer shared by goroutines gives each the same answers as sequential calls.
func TestConcurrentScore(t *testing.T) {
	b, acc, test := fitted(t)
	g := factorizeAcc(t, acc)
	acc.Close()
	sc, err := b.NewScorer(g)
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	const workers = 6
	want := make([][]float32, workers)
	for w := range want {
		want[w] = scoreAll(t, sc, test[w*ltP*ltD:], 64-w*8)
	}
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n := 64 - w*8
			d := make([]float32, n*ltP)
			for r := 0; r < 5; r++ {
				if err := sc.Score(test[w*ltP*ltD:], n, d); err != nil {
					errs <- err
					return
				}
				if !slices.Equal(d, want[w]) {
					errs <- errors.New("concurrent scores differ from sequential ones")
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// Accumulators on one backend, fed from several goroutines each, agree with the CPU.
func TestConcurrentAccumulators(t *testing.T) {
	b := device(t)
	x := gausstest.Correlated(13, 48, ltP, ltD, 1, 1)
	ref := fit(t, gauss.CPU{}, x, 48, ltP, ltD, 48)
	var wg sync.WaitGroup
	got := make([]*gauss.Stats, 3)
	errs := make(chan error, 9) // room for every goroutine's error: a failure must not hang the test
	for k := range got {
		wg.Add(1)
		go func() {
			defer wg.Done()
			acc, err := b.NewAccumulator(ltP, ltD)
			if err != nil {
				errs <- err
				return
			}
			defer acc.Close()
			// two goroutines share this accumulator; Chan's merge makes the order moot
			var inner sync.WaitGroup
			for h := 0; h < 2; h++ {
				inner.Add(1)
				go func() {
					defer inner.Done()
					for i := h; i < 48; i += 2 {
						if err := acc.Add(x[i*ltP*ltD:(i+1)*ltP*ltD], 1); err != nil {
							errs <- err
							return
						}
					}
				}()
			}
			inner.Wait()
			s, err := acc.Stats()
			if err != nil {
				errs <- err
				return
			}
			got[k] = s
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for _, s := range got {
		if e := statsErr(ref, s); e > 1e-5 {
			t.Fatalf("concurrent accumulation differs from the CPU by %.3g", e)
		}
	}
}

// Close racing with Score: every Score either finishes or says the scorer is closed.
func TestCloseRacesScore(t *testing.T) {
	b, acc, test := fitted(t)
	g := factorizeAcc(t, acc)
	acc.Close()
	for round := 0; round < 5; round++ {
		sc, err := b.NewScorer(g)
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		for w := 0; w < 4; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				d := make([]float32, 64*ltP)
				for i := 0; i < 4; i++ {
					if err := sc.Score(test, 64, d); err != nil && !errors.Is(err, ErrClosed) {
						t.Error(err)
					}
				}
			}()
		}
		sc.Close()
		wg.Wait()
	}
}

// statsErr is the worst difference of means and M2 against the scale of want.M2.
func statsErr(want, got *gauss.Stats) float64 {
	if want.N != got.N || len(want.M2) != len(got.M2) {
		return 1
	}
	scale, worst := 0.0, 0.0
	for _, v := range want.M2 {
		scale = max(scale, abs(v))
	}
	for i := range want.M2 {
		worst = max(worst, abs(want.M2[i]-got.M2[i])/scale)
	}
	for i := range want.Mean {
		worst = max(worst, abs(want.Mean[i]-got.Mean[i])/max(abs(want.Mean[i]), 1))
	}
	return worst
}

func abs(v float64) float64 {
	if v < 0 {
		return -v
	}
	return v
}

// fit accumulates x on b in calls of `batch` images and returns a copy of the stats.
func fit(t testing.TB, b gauss.Backend, x []float32, n, p, d, batch int) *gauss.Stats {
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
	return s.Clone()
}
