//go:build cuda || cudaemu

package gpu

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/padim/padim/detector/gauss"
)

// TestDeviceTimings measures the workload on the device: a fit of N=200
// images at P=3136, d=550 (two passes of the 128-image stage), the factorisation in
// both arithmetics (the card's default last, and used for scoring), and scoring 1000
// images in calls of 64, from the backend's staging memory (the pipeline's path) and
// from ordinary Go memory (through the bounce buffers); then the low-rank form of the
// first NL=32 images (few-shot), factorised and scoring the same 1000 images in both
// arithmetics; every kernel timed by CUDA events, every stage's wall time and bus bytes
// recorded. Fast wrong numbers fail it: every distance of every call must be finite,
// and a sample of 16 patches is fitted, factorised and scored on the CPU backend from
// the same embeddings, the device's L⁻¹ and distances within the production tests'
// tolerances. It runs only with PADIM_DEVICE_TIMINGS=1 (scripts/device-check.sh);
// PADIM_TIMINGS_P overrides P (a dry run on the emulator), PADIM_TIMINGS_OUT names a
// JSON file for the results, PADIM_TIMINGS_DATA a folder where the embeddings are
// written (train.f32 [32][P][D], test.f32 [64][P][D], float32 little-endian) for the
// PyTorch comparator (bench/torch_batched.py) to run on the same inputs.
func TestDeviceTimings(t *testing.T) {
	if os.Getenv("PADIM_DEVICE_TIMINGS") != "1" {
		skipOrFail(t, "set PADIM_DEVICE_TIMINGS=1 (scripts/device-check.sh)")
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
	def := b.props.DefaultFactorization
	t.Logf("%s: %d multiprocessors, fp32:fp64 %d:1, factorisation %s by default", b.Name(), b.props.Multiprocessors,
		b.props.FP32ToFP64Ratio, def)
	// 32 distinct training images fed cyclically, 64 distinct test images: what matters
	// here is the shapes; the data is PaDiM-like (factor model, ill-conditioned).
	start := time.Now()
	const distinct = 32
	train := illConditioned(61, distinct, P, D, 8)
	test := illConditioned(62, batch, P, D, 8)
	staged := b.StagingBuffer(len(test))
	copy(staged, test)
	t.Logf("data made in %v", time.Since(start).Round(time.Millisecond))
	if dir := os.Getenv("PADIM_TIMINGS_DATA"); dir != "" {
		for name, x := range map[string][]float32{"train.f32": train, "test.f32": test} {
			if err := writeF32(filepath.Join(dir, name), x); err != nil {
				t.Fatal(err)
			}
		}
	}

	res := timings{Device: b.Name(), P: P, D: D, N: N, Scored: NS, ScoreBatch: batch, Stage: b.Stage, Default: def.String(),
		Distinct: distinct, LowRankN: 32}
	wall := func(name string, f func()) {
		BusTransfers(true)
		t0 := time.Now()
		f()
		res.Wall = append(res.Wall, stageTime{name, time.Since(t0).Seconds(), BusTransfers(true)})
	}
	// a first small fit warms the device (context, module load)
	_ = fit(t, b, train, 2, P, D, 2)
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
		for i := 0; i < N; i += distinct {
			if err := acc.Add(train, min(distinct, N-i)); err != nil {
				t.Fatal(err)
			}
		}
		if err := acc.(*accumulator).flush(); err != nil {
			t.Fatal(err)
		}
	})
	// The CPU reference on a sample of patches, stage by stage from the same inputs:
	// its statistics from the same embeddings; its factorisation of the device's
	// statistics and its distances under that model. (Both backends form YᵀY in
	// float32 per pass, so on ill-conditioned features their statistics differ by
	// rounding, which the factorisation amplifies by the condition number: comparing L⁻¹
	// across differently rounded statistics would measure the data, not the kernels.)
	sample := make([]int, min(16, P))
	for i := range sample {
		sample[i] = i * P / len(sample)
	}
	sub := func(x []float32, n int) []float32 { return patchesOf(x, n, P, D, sample) }
	S := len(sample)
	cacc, err := gauss.CPU{}.NewAccumulator(S, D)
	if err != nil {
		t.Fatal(err)
	}
	ctrain := sub(train, distinct)
	for i := 0; i < N; i += distinct {
		if err := cacc.Add(ctrain, min(distinct, N-i)); err != nil {
			t.Fatal(err)
		}
	}
	cs, _ := cacc.Stats()
	gs, err := acc.Stats()
	if err != nil {
		t.Fatal(err)
	}
	gsub := statsOf(gs, sample)
	gs = nil
	se := statsErr(cs, gsub)
	res.Checks = append(res.Checks, check{"statistics (vs the CPU's)", se, 1e-5})
	t.Logf("check %-40s %.2e (tolerance 1e-05)", "statistics vs the CPU's", se)
	if se > 1e-5 {
		t.Errorf("sampled statistics differ from the CPU's by %.3g", se)
	}
	cg, err := gauss.CPU{}.Factorize(gsub, 0.01)
	if err != nil {
		t.Fatal(err)
	}
	ctest := sub(test, batch)
	cdist := scoreWith(t, gauss.CPU{}, cg, ctest, batch)

	var g *gauss.Gaussian
	for _, prec := range []Precision{otherPrecision(def), def} { // the default last: its model is scored
		b.Precision = prec
		wall("factorise "+prec.String()+" (incl. model download)", func() { g = factorizeAcc(t, acc) })
		e := modelErr(cg, gaussianOf(g, sample))
		res.Checks = append(res.Checks, check{"L⁻¹ " + prec.String() + " (CPU on the same statistics)", e, 1e-5})
		t.Logf("check %-40s %.2e (tolerance 1e-05)", "L⁻¹ "+prec.String()+" vs the CPU's", e)
		if e > 1e-5 {
			t.Errorf("%s: L⁻¹ of the sampled patches differs from the CPU's (same statistics) by %.3g", prec, e)
		}
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
	nonFinite := 0
	scoreAll := func(sc gauss.Scorer, src []float32) {
		for done := 0; done < NS; done += batch {
			k := min(batch, NS-done)
			if err := sc.Score(src, k, dist); err != nil {
				t.Fatal(err)
			}
			nonFinite += countNonFinite(dist[:k*P])
		}
	}
	check := func(what string, sc gauss.Scorer, want []float32, tol float64) {
		t.Helper()
		if err := sc.Score(staged, batch, dist); err != nil {
			t.Fatal(err)
		}
		e := distErr(want, sub1(dist, batch, P, sample))
		res.Checks = append(res.Checks, check{what, e, tol})
		t.Logf("check %-40s sampled distances vs CPU %.2e (tolerance %.0e)", what, e, tol)
		if e > tol {
			t.Errorf("%s: sampled distances differ from the CPU by %.3g", what, e)
		}
	}
	wall(fmt.Sprintf("score %d images in calls of %d from staging memory (incl. transfers)", NS, batch), func() { scoreAll(sc, staged) })
	wall(fmt.Sprintf("score %d images in calls of %d from Go memory (incl. transfers)", NS, batch), func() { scoreAll(sc, test) })
	check("full, "+def.String()+" model", sc, cdist, 1e-4)
	if dir := os.Getenv("PADIM_TIMINGS_DATA"); dir != "" { // padim's distances of the test images, for the comparator
		if err := writeF32(filepath.Join(dir, "dist.f32"), dist); err != nil {
			t.Fatal(err)
		}
	}
	sc.Close()

	// the low-rank form of the 32 distinct training images, both arithmetics
	const NL = 32
	clr, err := gauss.CPU{}.FactorizeLowRank(ctrain, gauss.All(NL), S, D, 0.01)
	if err != nil {
		t.Fatal(err)
	}
	clsc, _ := gauss.CPU{}.NewLowRankScorer(clr)
	cldist := make([]float32, batch*S)
	if err := clsc.Score(ctest, batch, cldist); err != nil {
		t.Fatal(err)
	}
	for _, prec := range []Precision{otherPrecision(def), def} {
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
			scoreAll(lsc, staged)
		})
		check("low-rank, "+prec.String(), lsc, cldist, 1e-4)
		lsc.Close()
	}
	b.Precision = PrecisionAuto
	if nonFinite > 0 {
		t.Errorf("%d distances are not finite", nonFinite)
	}
	res.NonFinite = nonFinite
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
	calls := 2 * float64((NS+batch-1)/batch) // two scoring runs (staging, Go memory)
	images := 2*float64(NS) + float64(batch) // and the checking call
	for _, k := range kt {
		r := kernelRow{Name: k.Name, Launches: k.Launches, MS: k.TotalMS, MaxMS: k.MaxMS}
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
			r.MinBytes = (calls+1)*pf*L*4 + images*pf*df*4 + images*pf*4
			r.Flops = images * pf * df * (df + 1)
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
		case strings.HasPrefix(k.Name, "k_lr_score<"): // one arithmetic's run: half the calls
			lc, li := float64((NS+batch-1)/batch)+1, float64(NS+batch)
			r.MinBytes = lc*pf*nl*df*4 + li*pf*df*4 + li*pf*4
			r.Flops = li * pf * nl * df * 2
		}
		if k.TotalMS > 0 {
			r.GBs = r.MinBytes / (k.TotalMS / 1e3) / 1e9
			r.GFlops = r.Flops / (k.TotalMS / 1e3) / 1e9
		}
		res.Kernels = append(res.Kernels, r)
	}
	t.Logf("P=%d, d=%d, N=%d (stage %d: %v passes), %d images scored in calls of %d (twice: staging and Go memory)", P, D, N, b.Stage, passes, NS, batch)
	t.Logf("fit plan %+v; score plan %+v", res.FitPlan, res.ScorePlan)
	t.Logf("%-26s %8s %10s %9s %12s %10s %12s %10s", "kernel", "launches", "ms", "max ms", "min GB", "GB/s", "GFLOP", "GFLOP/s")
	for _, r := range res.Kernels {
		t.Logf("%-26s %8d %10.2f %9.2f %12.3f %10.1f %12.1f %10.1f", r.Name, r.Launches, r.MS, r.MaxMS, r.MinBytes/1e9, r.GBs, r.Flops/1e9, r.GFlops)
	}
	for _, w := range res.Wall {
		t.Logf("wall: %-75s %9.3f s  bus %.3f GB up (%.3f bounced), %.3f GB down", w.Name, w.Seconds, float64(w.Bus.HostToDevice)/1e9,
			float64(w.Bus.HostToDeviceBounced)/1e9, float64(w.Bus.DeviceToHost)/1e9)
	}
	if out := os.Getenv("PADIM_TIMINGS_OUT"); out != "" {
		data, _ := json.MarshalIndent(res, "", "  ")
		if err := os.WriteFile(out, append(data, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// patchesOf returns the patches listed of n embeddings [n][P][D], as [n][len][D].
func patchesOf(x []float32, n, p, d int, patches []int) []float32 {
	out := make([]float32, 0, n*len(patches)*d)
	for i := 0; i < n; i++ {
		for _, q := range patches {
			out = append(out, x[(i*p+q)*d:(i*p+q+1)*d]...)
		}
	}
	return out
}

// statsOf is the statistics of the listed patches of s.
func statsOf(s *gauss.Stats, patches []int) *gauss.Stats {
	L := gauss.PackedLen(s.D)
	out := &gauss.Stats{P: len(patches), D: s.D, N: s.N}
	for _, q := range patches {
		out.Mean = append(out.Mean, s.Mean[q*s.D:(q+1)*s.D]...)
		out.M2 = append(out.M2, s.M2[q*L:(q+1)*L]...)
	}
	return out
}

// sub1 returns the distances of the listed patches of n images [n][P], as [n][len].
func sub1(dist []float32, n, p int, patches []int) []float32 {
	out := make([]float32, 0, n*len(patches))
	for i := 0; i < n; i++ {
		for _, q := range patches {
			out = append(out, dist[i*p+q])
		}
	}
	return out
}

// gaussianOf is the model of the listed patches of g.
func gaussianOf(g *gauss.Gaussian, patches []int) *gauss.Gaussian {
	L := gauss.PackedLen(g.D)
	out := &gauss.Gaussian{P: len(patches), D: g.D}
	for _, q := range patches {
		out.Mean = append(out.Mean, g.Mean[q*g.D:(q+1)*g.D]...)
		out.LInv = append(out.LInv, g.LInv[q*L:(q+1)*L]...)
	}
	return out
}

func countNonFinite(x []float32) int {
	n := 0
	for _, v := range x {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			n++
		}
	}
	return n
}

// writeF32 writes x as raw little-endian float32 (temp file, then rename).
func writeF32(path string, x []float32) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, unsafe.Slice((*byte)(unsafe.Pointer(&x[0])), len(x)*4), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
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
	MaxMS    float64 // the longest launch
	MinBytes float64 // the least the kernel must move to or from device memory
	Flops    float64 // the useful arithmetic (2 per multiply-add)
	GBs      float64 // MinBytes over the kernel's time
	GFlops   float64
}

type stageTime struct {
	Name    string
	Seconds float64
	Bus     Transfers
}

type check struct {
	What     string
	Err, Tol float64
}

type timings struct {
	Device                      string
	P, D, N, Scored, ScoreBatch int
	Stage, Distinct, LowRankN   int
	Default                     string // the factorisation arithmetic the card uses by default
	FitPlan, ScorePlan          Plan
	Kernels                     []kernelRow
	Wall                        []stageTime
	Checks                      []check
	NonFinite                   int
}
