package bench

import (
	"math"
	"testing"
	"time"

	"github.com/padim/padim/detector"
	"github.com/padim/padim/detector/gauss"
)

func near(a, b float64) bool { return math.Abs(a-b) <= 1e-9*math.Max(1, math.Abs(b)) }

// The rates come from the stages' busy times and the counted work: a full
// Gaussian of P=4 patches, D=10 channels, fitted on 5 images and scoring 64.
func TestRatesFromKnownTimings(t *testing.T) {
	flops, bytesMoved, perPatch := work(&gauss.Gaussian{P: 4, D: 10}, 5, 64)
	// fit: N·P·D·(D+1); factorise: P·2D³/3; score: S·P·D·(D+1); the model
	// (packed inverse 55 + mean 10 numbers a patch) read once per group
	calls := float64((64 + detector.DefaultGroup - 1) / detector.DefaultGroup)
	if !near(flops["fit"], 5*4*10*11) || !near(flops["factorize"], 4*2*1000/3.0) || !near(flops["score"], 64*4*10*11) ||
		perPatch != 65 || !near(bytesMoved["score"], calls*4*65*4) {
		t.Fatalf("work: flops %v, bytes %v, per patch %v", flops, bytesMoved, perPatch)
	}
	tm := detector.NewTimings()
	tm.Add("decode", 2*time.Second, 64)
	tm.Add("score", 500*time.Millisecond, 64)
	tm.Add("idle", 0, 3)
	st := stageRates(tm, flops, bytesMoved, 0.1)
	if len(st) != 3 || st[0].Name != "decode" || st[0].ImagesPS != 32 || st[0].GFLOPS != 0 || st[0].GBPS != 0 {
		t.Fatalf("decode: %+v", st)
	}
	s := st[1]
	if s.ImagesPS != 128 || !near(s.GFLOPS, 64*4*10*11/0.5/1e9) || !near(s.PeakRatio, s.GFLOPS/0.1) || !near(s.GBPS, calls*4*65*4/0.5/1e9) {
		t.Fatalf("score: %+v", s)
	}
	if st[2].ImagesPS != 0 || st[2].Images != 3 {
		t.Fatalf("a stage without time has no rate: %+v", st[2])
	}
}

// The low-rank form counts its factorisation and its rank-N scoring; the
// baselines count no Gaussian work.
func TestLowRankAndBaselineWork(t *testing.T) {
	flops, _, perPatch := work(&gauss.LowRank{P: 2, D: 8, N: 3}, 3, 10)
	if _, ok := flops["fit"]; ok || !near(flops["factorize"], 2*(2*9*8+27/3.0)) || !near(flops["score"], 10*2*2*3*8) || perPatch != 3*8+8 {
		t.Fatalf("low-rank: %v, per patch %v", flops, perPatch)
	}
	if flops, _, _ := work(baselineModel{}, 3, 10); len(flops) != 0 {
		t.Fatalf("a baseline: %v", flops)
	}
}

type baselineModel struct{}

func (baselineModel) Shape() (int, int) { return 2, 8 }
func (baselineModel) Form() string      { return "spade" }
