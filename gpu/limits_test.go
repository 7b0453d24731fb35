//go:build cuda || cudaemu

package gpu

import (
	"errors"
	"slices"
	"testing"

	"github.com/padim/padim/detector/gauss"
	"github.com/padim/padim/detector/gauss/gausstest"
)

// Shared memory per block: the default is usable, more than that works only through
// the opt-in (which the library's launches make), and beyond the device's maximum the
// library refuses before launching. A bare launch over the default fails through
// cudaGetLastError. Threads per block past the device's limit are refused too.
func TestSharedMemoryLimits(t *testing.T) {
	b := device(t)
	p := b.Props()
	t.Logf("%s: %d B shared per block, %d B with opt-in, %d threads", p.Name, p.SharedPerBlock, p.SharedPerBlockOptin, p.MaxThreadsPerBlock)
	if err := b.probeLaunch(128, p.SharedPerBlock, false); err != nil {
		t.Fatalf("bare launch with the default shared memory: %v", err)
	}
	if p.SharedPerBlockOptin > p.SharedPerBlock {
		if err := b.probeLaunch(128, p.SharedPerBlock+1024, false); err == nil {
			t.Fatal("a bare launch above the default shared memory succeeded without opt-in")
		}
	}
	if err := b.probeLaunch(128, p.SharedPerBlockOptin, true); err != nil {
		t.Fatalf("checked launch with the opt-in maximum: %v", err)
	}
	if err := b.probeLaunch(128, p.SharedPerBlockOptin+4, true); !errors.Is(err, ErrLimit) {
		t.Fatalf("checked launch beyond the maximum: got %v, want ErrLimit", err)
	}
	if err := b.probeLaunch(p.MaxThreadsPerBlock+32, 0, true); !errors.Is(err, ErrLimit) {
		t.Fatalf("%d threads per block: got %v, want ErrLimit", p.MaxThreadsPerBlock+32, err)
	}
	// the device still works afterwards
	if err := b.probeLaunch(p.MaxThreadsPerBlock, 1024, true); err != nil {
		t.Fatal(err)
	}
}

// What a d=550 fit at P=3136 (Resnet50_CBAM at 224², the paper's setting) needs, and
// that it fits an 8 GB card with everything on the device; a 4 GB card streams the
// statistics by patch blocks from pinned host memory instead.
func TestMemoryPlanD550(t *testing.T) {
	const P, D, stage = 3136, 550, 128
	const gib = 1 << 30
	L := int64(D * (D + 1) / 2)
	m2 := int64(P) * L * 8
	stageBytes := int64(stage) * P * D * 4
	model := int64(P)*L*4 + int64(P)*D*4
	ws := factorWorkspace(D)
	// an 8 GiB card: 8 GiB less 256 MiB reserve, less ~300 MiB for the display and driver
	avail8 := int64(8*gib) - 256<<20 - 300<<20
	pl, ok := planFit(P, D, stage, avail8)
	if !ok || !pl.Resident || pl.Stage != stage {
		t.Fatalf("8 GB card: %+v, want resident with a 128-image stage", pl)
	}
	fitPeak := pl.DeviceBytes + model + 64*ws // the factorisation needs at least 64 patches of workspace beside the model
	t.Logf("d=550, P=3136: M2 %.2f GiB, stage of 128 images %.2f GiB, fit %.2f GiB on the device; model %.2f GiB; "+
		"factorisation workspace %.1f MiB per patch; fit + factorise peak %.2f GiB (8 GB card: %.2f GiB available)",
		float64(m2)/gib, float64(stageBytes)/gib, float64(pl.DeviceBytes)/gib, float64(model)/gib, float64(ws)/(1<<20),
		float64(fitPeak)/gib, float64(avail8)/gib)
	if fitPeak > avail8 {
		t.Fatalf("a d=550 fit and factorisation needs %.2f GiB, more than an 8 GB card has", float64(fitPeak)/gib)
	}
	pl4, ok := planFit(P, D, stage, int64(4*gib)-556<<20)
	if !ok || pl4.Resident || pl4.PatchBlock < 1 || pl4.Stage != stage || pl4.PinnedBytes != int64(P)*(L+D)*8 {
		t.Fatalf("4 GB card: %+v, want streamed statistics with a 128-image stage", pl4)
	}
	t.Logf("4 GB card: statistics streamed in blocks of %d patches, %.2f GiB on the device, %.2f GiB pinned on the host",
		pl4.PatchBlock, float64(pl4.DeviceBytes)/gib, float64(pl4.PinnedBytes)/gib)
}

// With a memory budget too small for the statistics and the model, the accumulator
// streams its statistics by patch blocks and the scorer its model; the answers are
// the same bits as with everything on the device.
func TestStreamedEqualsResident(t *testing.T) {
	const n, p, d = 40, 12, 200
	x := gausstest.Correlated(21, n, p, d, 3, 1)
	test := gausstest.Correlated(22, 70, p, d, 3, 1.2)
	run := func(budget int64) (*gauss.Stats, *gauss.Gaussian, []float32, Plan, Plan) {
		b := device(t)
		b.Stage, b.MemoryBudget = 16, budget
		acc, err := b.NewAccumulator(p, d)
		if err != nil {
			t.Fatal(err)
		}
		defer acc.Close()
		for lo := 0; lo < n; lo += 7 {
			hi := min(lo+7, n)
			if err := acc.Add(x[lo*p*d:hi*p*d], hi-lo); err != nil {
				t.Fatal(err)
			}
		}
		s, err := acc.Stats()
		if err != nil {
			t.Fatal(err)
		}
		g := factorizeAcc(t, acc)
		sc, err := b.NewScorer(g)
		if err != nil {
			t.Fatal(err)
		}
		defer sc.Close()
		dist := make([]float32, 70*p)
		if err := sc.Score(test, 70, dist); err != nil {
			t.Fatal(err)
		}
		return s.Clone(), g, dist, acc.(*accumulator).plan(), sc.(*scorer).plan()
	}
	rs, rg, rd, rpa, rps := run(0)
	ss, sg, sd, spa, sps := run(1 << 20)
	t.Logf("resident: %+v / %+v", rpa, rps)
	t.Logf("streamed: %+v / %+v", spa, sps)
	if !rpa.Resident || !rps.Resident || spa.Resident || sps.Resident || spa.PatchBlock >= p || sps.PatchBlock >= p {
		t.Fatal("the budgets did not give one resident and one streamed layout")
	}
	if !slices.Equal(rs.M2, ss.M2) || !slices.Equal(rs.Mean, ss.Mean) || rs.N != ss.N {
		t.Fatal("streamed statistics differ from resident ones")
	}
	if !slices.Equal(rg.LInv, sg.LInv) || !slices.Equal(rg.Mean, sg.Mean) {
		t.Fatal("the model from streamed statistics differs")
	}
	if !slices.Equal(rd, sd) {
		t.Fatal("scores with a streamed model differ")
	}
}

// Shapes beyond the grid or the memory are errors before any launch, and the device
// works afterwards.
func TestHugeShapeIsRefused(t *testing.T) {
	b := device(t)
	if _, err := b.NewAccumulator(1<<20, 4096); !errors.Is(err, ErrLimit) {
		t.Fatalf("2^20 patches of D=4096 (2^31 tiles): got %v, want ErrLimit", err)
	}
	if _, err := b.NewAccumulator(1<<20, 1024); !errors.Is(err, ErrOutOfMemory) {
		t.Fatalf("2^20 patches of D=1024 (4 TiB of statistics): got %v, want ErrOutOfMemory", err)
	}
	x := gausstest.Correlated(9, 8, 3, 20, 1, 1)
	s := fit(t, b, x, 8, 3, 20, 8)
	if s.N != 8 {
		t.Fatalf("after a refused shape: N=%d", s.N)
	}
}
