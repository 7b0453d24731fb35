//go:build cudaemu

package gpu

import (
	"strings"
	"testing"

	"github.com/padim/padim/detector/gauss"
	"github.com/padim/padim/detector/gauss/gausstest"
)

// The low-rank kernels' counters: scoring reads each patch's M once per block (group
// of 64 images) while the images are read once per tile of 64 rows of M; the arithmetic
// executed against the useful 2·N·D per image and patch; and float64 kept out of the
// double-float kernels' loops (the score's only float64 is its epilogue, 6 operations
// per distance; the factorisation's a few constants per thread).
func TestLowRankCounters(t *testing.T) {
	const n, p, d, ns = 100, 2, 100, 70 // N > 64: two row tiles; D not a multiple of 32; 70 images: groups of 64 and 6
	b := device(t)
	x := gausstest.Correlated(81, n, p, d, 1, 1)
	test := gausstest.Correlated(82, ns, p, d, 1, 1)
	emuCounters(true)
	emuSetCounting(true)
	defer emuSetCounting(false)
	counts := map[string]KernelCounters{}
	for _, prec := range []Precision{PrecisionDF32, PrecisionFP64} {
		b.Precision = prec
		m, err := b.FactorizeLowRank(x, gauss.All(n), p, d, 0.01)
		if err != nil {
			t.Fatal(err)
		}
		if err := scoreOnce(b, m, test, ns); err != nil {
			t.Fatal(err)
		}
	}
	for _, k := range emuCounters(true) {
		counts[k.Name] = k
		if strings.HasPrefix(k.Name, "k_lr") {
			t.Logf("%-22s %2d launches %5d blocks  read %9d B (%8d B distinct)  write %8d B  %10d flops  %9d fp64",
				k.Name, k.Launches, k.Blocks, k.ReadBytes, k.ReadSectors, k.WriteBytes, k.Flops, k.FP64Ops)
		}
	}
	const groups, rowTiles, chunks = 2, 2, (d + 31) / 32
	for _, name := range []string{"k_lr_score<S64x256<DF32>>", "k_lr_score<S64x256<F64>>"} {
		k, ok := counts[name]
		if !ok {
			t.Fatalf("%s did not run", name)
		}
		// M once per block; the images and μ once per row tile of each block
		want := int64(p*groups*n*d*4 + rowTiles*2*p*ns*d*4)
		if k.ReadBytes != want {
			t.Errorf("%s read %d B, want %d (M once per group of 64, the images once per row tile)", name, k.ReadBytes, want)
		}
		// executed: 4×4 per thread per column of each chunk, per row tile; Σz² and Σy²
		exec := int64(p*groups) * (rowTiles*(chunks*256*2*16*32+256*32) + chunks*64*2*32)
		useful := int64(2 * n * d * ns * p)
		if k.Flops != exec {
			t.Errorf("%s: %d flops, want %d", name, k.Flops, exec)
		}
		t.Logf("%s: %.2f of the executed multiply-adds are useful (padding of rows, columns and the group of 6)", name, float64(useful)/float64(exec))
	}
	if f := counts["k_lr_score<S64x256<DF32>>"].FP64Ops; f != int64(6*ns*p) {
		t.Errorf("k_lr_score<S64x256<DF32>> ran %d float64 operations, want only the epilogue's %d", f, 6*ns*p)
	}
	if f := counts["k_lr_score<S64x256<F64>>"]; f.FP64Ops < f.Flops/2 {
		t.Errorf("k_lr_score<S64x256<F64>> counted %d float64 operations for %d flops: the counter is broken", f.FP64Ops, f.Flops)
	}
	for _, k := range []string{"k_lr_center", "k_lr_gram", "k_lr_chol", "k_lr_solve"} {
		df, fp := counts[k+"<DF32>"], counts[k+"<F64>"]
		if df.Launches == 0 || fp.Launches == 0 {
			t.Fatalf("%s did not run in both arithmetics", k)
		}
		if df.FP64Ops > 8*df.Threads {
			t.Errorf("%s<DF32> ran %d float64 operations, more than a few constants per thread (%d threads)", k, df.FP64Ops, df.Threads)
		}
		if k != "k_lr_center" && fp.FP64Ops < fp.Flops/2 {
			t.Errorf("%s<F64> counted %d float64 operations for %d flops: the counter is broken", k, fp.FP64Ops, fp.Flops)
		}
	}
	// a few-shot rank takes the narrow shape: tiles of 16 rows, 64 threads per block
	b.Precision = PrecisionDF32
	const nf = 10
	m, err := b.FactorizeLowRank(x, gauss.All(nf), p, d, 0.01)
	if err != nil {
		t.Fatal(err)
	}
	emuCounters(true)
	if err := scoreOnce(b, m, test, 64); err != nil {
		t.Fatal(err)
	}
	narrow := emuCounters(true)
	if len(narrow) != 1 || narrow[0].Name != "k_lr_score<S64x64<DF32>>" {
		t.Fatalf("N=%d, 64 images: kernels %+v, want k_lr_score<S64x64<DF32>> alone", nf, narrow)
	}
	exec := int64(p) * (chunks*64*2*16*32 + 64*32 + chunks*64*2*32)
	if narrow[0].Flops != exec {
		t.Errorf("k_lr_score<S64x64<DF32>>: %d flops, want %d", narrow[0].Flops, exec)
	}
	t.Logf("N=%d: %.2f of the executed multiply-adds are useful (a 64-row tile: %.2f)", nf, float64(2*nf*d*64*p)/float64(exec),
		float64(2*nf*d*64*p)/float64(int64(p)*(chunks*256*2*16*32+256*32+chunks*64*2*32)))

	// the Gram matrix: 32×32 tiles of the lower triangle over the padded columns
	nt, dp := (n+31)/32, chunks*32
	if f, want := counts["k_lr_gram<DF32>"].Flops, int64(p*nt*(nt+1)/2*32*32*2*dp); f != want {
		t.Errorf("k_lr_gram<DF32>: %d flops, want %d", f, want)
	}
	// the samples are read once by the centring, A once per tile pair by the Gram
	if r, want := counts["k_lr_center<DF32>"].ReadBytes, int64(2*n*p*d*4); r != want {
		t.Errorf("k_lr_center<DF32> read %d B, want %d (the samples twice: mean, then centring)", r, want)
	}
}

func scoreOnce(b *Backend, m *gauss.LowRank, x []float32, n int) error {
	sc, err := b.NewLowRankScorer(m)
	if err != nil {
		return err
	}
	defer sc.Close()
	return sc.Score(x, n, make([]float32, n*m.P))
}
