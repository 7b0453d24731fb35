//go:build cuda || cudaemu

package gpu

import (
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/padim/padim/detector/gauss"
)

// TestDeviceTimings measures the workload on the device: a fit of N=200
// images at P=3136, d=550 (two passes of the 128-image stage), the factorisation in
// both arithmetics, and scoring 1000 images in calls of 64; then the low-rank form of
// the first NL=32 images (few-shot), factorised and scoring the same 1000 images in
// both arithmetics; with every kernel timed by CUDA events. It runs only with PADIM_DEVICE_TIMINGS=1 (scripts/device-check.sh);
// PADIM_TIMINGS_P overrides P (a dry run on the emulator), PADIM_TIMINGS_OUT names a
// JSON file for the results.
func TestDeviceTimings(t *testing.T) {
	if os.Getenv("PADIM_DEVICE_TIMINGS") != "1" {
		t.Skip("set PADIM_DEVICE_TIMINGS=1 (scripts/device-check.sh)")
	}
	P, D, N, NS, batch := 3136, 550, 200, 1000, 64
	if v, err := strconv.Atoi(os.Getenv("PADIM_TIMINGS_P")); err == nil && v > 0 {
		P = v
	}
	b := device(t)
	SetProfile(true)
	defer SetProfile(false)
	if _, err := b.Profile(true); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: %d multiprocessors, fp32:fp64 %d:1, factorisation %s by default", b.Name(), b.props.Multiprocessors,
		b.props.FP32ToFP64Ratio, b.props.DefaultFactorization)
	// 32 distinct training images fed cyclically, 64 distinct test images: what matters
	// here is the shapes; the data is PaDiM-like (factor model, ill-conditioned).
	start := time.Now()
	train := illConditioned(61, 32, P, D, 8)
	test := illConditioned(62, batch, P, D, 8)
	t.Logf("data made in %v", time.Since(start).Round(time.Millisecond))

	res := timings{Device: b.Name(), P: P, D: D, N: N, Scored: NS, ScoreBatch: batch, Stage: b.Stage}
	wall := func(name string, f func()) {
		t0 := time.Now()
		f()
		res.Wall = append(res.Wall, stageTime{name, time.Since(t0).Seconds()})
	}
	// a first small fit and score warms the device (context, module load)
	warm := fit(t, b, train, 2, P, D, 2)
	_ = warm
	if _, err := b.Profile(true); err != nil {
		t.Fatal(err)
	}
	acc, err := b.NewAccumulator(P, D)
	if err != nil {
		t.Fatal(err)
	}
	defer acc.Close()
	res.FitPlan = acc.(*accumulator).plan()
	wall("fit (upload + accumulate)", func() {
		for i := 0; i < N; i += 32 {
			n := min(32, N-i)
			if err := acc.Add(train, n); err != nil {
				t.Fatal(err)
			}
		}
		if err := acc.(*accumulator).flush(); err != nil {
			t.Fatal(err)
		}
	})
	var g *gauss.Gaussian
	for _, prec := range []Precision{b.props.DefaultFactorization, otherPrecision(b.props.DefaultFactorization)} {
		b.Precision = prec
		wall("factorise "+prec.String()+" (incl. model download)", func() { g = factorizeAcc(t, acc) })
	}
	b.Precision = PrecisionAuto
	acc.Close()
	sc, err := b.NewScorer(g)
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	res.ScorePlan = sc.(*scorer).plan()
	dist := make([]float32, batch*P)
	wall(fmt.Sprintf("score %d images in calls of %d (incl. transfers)", NS, batch), func() {
		for done := 0; done < NS; done += batch {
			if err := sc.Score(test, min(batch, NS-done), dist); err != nil {
				t.Fatal(err)
			}
		}
	})
	sc.Close()

	// the low-rank form of the 32 distinct training images, both arithmetics
	const NL = 32
	for _, prec := range []Precision{b.props.DefaultFactorization, otherPrecision(b.props.DefaultFactorization)} {
		b.Precision = prec
		var lr *gauss.LowRank
		wall(fmt.Sprintf("low-rank N=%d: factorise %s (incl. upload and model download)", NL, prec), func() {
			var err error
			if lr, err = b.FactorizeLowRank(train, gauss.All(NL), P, D, 0.01); err != nil {
				t.Fatal(err)
			}
		})
		lsc, err := b.NewLowRankScorer(lr)
		if err != nil {
			t.Fatal(err)
		}
		wall(fmt.Sprintf("low-rank N=%d: score %d images in calls of %d, %s dot products (incl. transfers)", NL, NS, batch, prec), func() {
			for done := 0; done < NS; done += batch {
				if err := lsc.Score(test, min(batch, NS-done), dist); err != nil {
					t.Fatal(err)
				}
			}
		})
		lsc.Close()
	}
	b.Precision = PrecisionAuto
	kt, err := b.Profile(true)
	if err != nil {
		t.Fatal(err)
	}
	L := float64(D * (D + 1) / 2)
	nl, np32, dp32 := float64(NL), float64((NL+31)/32*32), float64((D+31)/32*32)
	pf, df := float64(P), float64(D)
	passes := []float64{}
	for left := N; left > 0; left -= b.Stage {
		passes = append(passes, float64(min(left, b.Stage)))
	}
	for _, k := range kt {
		r := kernelRow{Name: k.Name, Launches: k.Launches, MS: k.TotalMS}
		switch {
		case k.Name == "k_stage_mean":
			r.MinBytes = float64(N)*pf*df*4 + float64(len(passes))*pf*df*(8*2+4+8)
			r.Flops = float64(N) * pf * df
		case k.Name == "k_syrk_fold":
			for _, nb := range passes {
				r.MinBytes += nb*pf*df*4 + pf*L*8*2
				r.Flops += nb * pf * df * (df + 1)
			}
		case strings.HasPrefix(k.Name, "k_factor"):
			r.MinBytes = pf*L*8 + pf*L*4
			r.Flops = pf * 2 * df * df * df / 3
		case strings.HasPrefix(k.Name, "k_score<"):
			calls := float64((NS + batch - 1) / batch)
			r.MinBytes = calls*pf*L*4 + float64(NS)*pf*df*4 + float64(NS)*pf*4
			r.Flops = float64(NS) * pf * df * (df + 1)
		case strings.HasPrefix(k.Name, "k_lr_center<"): // samples in, mean and A (8-byte values) out
			r.MinBytes = nl*pf*df*4 + pf*df*4 + pf*np32*dp32*8
			r.Flops = 3 * nl * pf * df
		case strings.HasPrefix(k.Name, "k_lr_gram<"):
			r.MinBytes = pf*np32*dp32*8 + pf*np32*(np32+32)/2*8
			r.Flops = pf * nl * (nl + 1) * df
		case strings.HasPrefix(k.Name, "k_lr_chol<"):
			r.MinBytes = 2 * pf * np32 * (np32 + 32) / 2 * 8
			r.Flops = pf * nl * nl * nl / 3
		case strings.HasPrefix(k.Name, "k_lr_solve<"):
			r.MinBytes = 2*pf*np32*dp32*8 + pf*np32*(np32+32)/2*8 + pf*nl*df*4
			r.Flops = pf * nl * nl * df
		case strings.HasPrefix(k.Name, "k_lr_score<"):
			calls := float64((NS + batch - 1) / batch)
			r.MinBytes = calls*pf*nl*df*4 + float64(NS)*pf*df*4 + float64(NS)*pf*4
			r.Flops = float64(NS) * pf * nl * df * 2
		}
		if k.TotalMS > 0 {
			r.GBs = r.MinBytes / (k.TotalMS / 1e3) / 1e9
			r.GFlops = r.Flops / (k.TotalMS / 1e3) / 1e9
		}
		res.Kernels = append(res.Kernels, r)
	}
	t.Logf("P=%d, d=%d, N=%d (stage %d: %v passes), %d images scored in calls of %d", P, D, N, b.Stage, passes, NS, batch)
	t.Logf("fit plan %+v; score plan %+v", res.FitPlan, res.ScorePlan)
	t.Logf("%-26s %8s %10s %12s %10s %12s %10s", "kernel", "launches", "ms", "min GB", "GB/s", "GFLOP", "GFLOP/s")
	for _, r := range res.Kernels {
		t.Logf("%-26s %8d %10.2f %12.3f %10.1f %12.1f %10.1f", r.Name, r.Launches, r.MS, r.MinBytes/1e9, r.GBs, r.Flops/1e9, r.GFlops)
	}
	for _, w := range res.Wall {
		t.Logf("wall: %-50s %9.3f s", w.Name, w.Seconds)
	}
	if out := os.Getenv("PADIM_TIMINGS_OUT"); out != "" {
		data, _ := json.MarshalIndent(res, "", "  ")
		if err := os.WriteFile(out, append(data, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func otherPrecision(p Precision) Precision {
	if p == PrecisionFP64 {
		return PrecisionDF32
	}
	return PrecisionFP64
}

type kernelRow struct {
	Name     string
	Launches int
	MS       float64
	MinBytes float64 // the least the kernel must move to or from device memory
	Flops    float64 // the useful arithmetic (2 per multiply-add)
	GBs      float64 // MinBytes over the kernel's time
	GFlops   float64
}

type stageTime struct {
	Name    string
	Seconds float64
}

type timings struct {
	Device                      string
	P, D, N, Scored, ScoreBatch int
	Stage                       int
	FitPlan, ScorePlan          Plan
	Kernels                     []kernelRow
	Wall                        []stageTime
}
