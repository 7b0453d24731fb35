package metrics

import (
	"math"
	"testing"
)

func near(a, b float64) bool { return math.Abs(a-b) < 1e-12 }

func TestAUROCHandComputed(t *testing.T) {
	// sklearn: roc_auc_score([0,0,1,1],[0.1,0.4,0.35,0.8]) = 0.75
	got, err := AUROC([]float32{0.1, 0.4, 0.35, 0.8}, []bool{false, false, true, true})
	if err != nil || !near(got, 0.75) {
		t.Fatalf("got %v %v", got, err)
	}
	// ties across classes count a half: roc_auc_score([0,1,0,1],[1,1,0,2]) = 0.875
	got, _ = AUROC([]float32{1, 1, 0, 2}, []bool{false, true, false, true})
	if !near(got, 0.875) {
		t.Fatalf("ties: got %v", got)
	}
	// all equal → 0.5
	got, _ = AUROC([]float32{3, 3, 3}, []bool{true, false, false})
	if !near(got, 0.5) {
		t.Fatalf("all tied: got %v", got)
	}
	if _, err := AUROC([]float32{1, 2}, []bool{true, true}); err != ErrOneClass {
		t.Fatal("one class accepted")
	}
}

func TestBestF1AndConfusion(t *testing.T) {
	s := []float32{0.1, 0.4, 0.35, 0.8, 0.9}
	l := []bool{false, false, true, true, false}
	// thresholds: 0.9→tp0 fp1; 0.8→tp1 fp1 f1=2/(2+1+1)=.5; 0.4→tp1 fp2; 0.35→tp2 fp2 f1=4/(4+2)=.667
	f1, th, err := BestF1(s, l)
	if err != nil || !near(f1, 2.0/3) || th != 0.35 {
		t.Fatalf("f1 %v th %v err %v", f1, th, err)
	}
	c := At(s, l, 0.35) // strictly above: 0.4, 0.8, 0.9
	if c != (Confusion{TP: 1, FP: 2, TN: 1, FN: 1}) {
		t.Fatalf("%+v", c)
	}
	if !near(c.TPR(), 0.5) || !near(c.FPR(), 2.0/3) || !near(c.F1(), 2.0/5) {
		t.Fatalf("tpr %v fpr %v f1 %v", c.TPR(), c.FPR(), c.F1())
	}
}

func TestAUPROHandComputed(t *testing.T) {
	// One 1×6 image: pixels 0,1 form region A, 3 forms region B (4-gap keeps them
	// apart), pixels 2,4,5 are good.
	//   score: A=[.9,.5], gap .7, B=.6, good .2 .1
	m := [][]float32{{0.9, 0.5, 0.7, 0.6, 0.2, 0.1}}
	k := [][]bool{{true, true, false, true, false, false}}
	// thresholds desc: .9 → fpr 0, pro .25; .7 → fpr 1/3, pro .25; ...
	// limit 0.3: area = 0*… + from fpr 0 to .3 at pro .25 (the segment (0,.25)→(1/3,.25))
	//   = 0.3*0.25 → normalised 0.25
	got, err := AUPRO(m, k, 6, 1, 0.3)
	if err != nil || !near(got, 0.25) {
		t.Fatalf("got %v %v", got, err)
	}
	// limit 1: points (0,0)(0,.25)(1/3,.25)(1/3,.75)(1/3,1)(2/3,1)(1,1)
	//   area = 1/3*.25 + 2/3*1 = .75
	got, _ = AUPRO(m, k, 6, 1, 1)
	if !near(got, 0.75) {
		t.Fatalf("limit 1: got %v", got)
	}
	// a perfect map scores 1
	got, _ = AUPRO([][]float32{{1, 1, 0, 1, 0, 0}}, k, 6, 1, 0.3)
	if !near(got, 1) {
		t.Fatalf("perfect: got %v", got)
	}
}

func TestAUPROInterpolatesAtLimit(t *testing.T) {
	// 1 region of 1 pixel scored lowest; 10 good pixels all above it.
	m := [][]float32{{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10}}
	k := [][]bool{{true, false, false, false, false, false, false, false, false, false, false}}
	got, _ := AUPRO(m, k, 11, 1, 0.3)
	if !near(got, 0) {
		t.Fatalf("got %v", got)
	}
}
