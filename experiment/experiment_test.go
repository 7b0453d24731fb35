package experiment

import (
	"context"
	"math"
	"strings"
	"testing"

	"github.com/padim/padim/data/dataset"
	"github.com/padim/padim/data/synth"
	"github.com/padim/padim/detector"
	"github.com/padim/padim/detector/baseline"
	"github.com/padim/padim/detector/embed"
	"github.com/padim/padim/detector/imageio"
)

// fake is a small deterministic backbone: channel averages pooled by 4 and 8,
// with mixed channels, counting its calls.
type fake struct{ calls int }

func (f *fake) InputSize() int { return 32 }
func (f *fake) Taps() []embed.TapShape {
	return []embed.TapShape{{Name: "layer1", C: 6, H: 8, W: 8}, {Name: "layer2", C: 4, H: 4, W: 4}}
}
func (f *fake) Extract(batch []float32, n int) ([]embed.Tap, error) {
	f.calls += n
	var out []embed.Tap
	for _, sh := range f.Taps() {
		t := embed.Tap{TapShape: sh, N: n, Data: make([]float32, n*sh.C*sh.H*sh.W)}
		k := 32 / sh.H
		for b := 0; b < n; b++ {
			img := batch[b*3*32*32:]
			for c := 0; c < sh.C; c++ {
				for y := 0; y < sh.H; y++ {
					for x := 0; x < sh.W; x++ {
						var s float64
						for yy := y * k; yy < (y+1)*k; yy++ {
							for xx := x * k; xx < (x+1)*k; xx++ {
								s += float64(img[(c%3)*1024+yy*32+xx]) * float64(1+c) * math.Sin(float64(c+yy*xx))
							}
						}
						t.Data[((b*sh.C+c)*sh.H+y)*sh.W+x] = float32(math.Tanh(s / float64(k*k)))
					}
				}
			}
		}
		out = append(out, t)
	}
	return out, nil
}

// A sweep trains and evaluates each point, reusing backbone outputs: the
// backbone sees each image once; repeats give a mean and a spread; a point
// asking for a tap the backbone lacks is skipped with a note.
func TestExecuteReusesBackboneAndSummarises(t *testing.T) {
	dir := t.TempDir()
	if err := synth.Generate(dir, synth.Config{Seed: 2, Train: 8, TestGood: 3, TestDefect: 3, Size: 48}, nil); err != nil {
		t.Fatal(err)
	}
	train, _ := dataset.TrainImages(dir)
	test, _ := dataset.TestSet(dir)
	f := &fake{}
	pre := imageio.Preprocess{Resize: 32, Mean: imageio.ImageNetMean, Std: imageio.ImageNetStd}
	rs, err := Execute(context.Background(), Config{
		Sweep: "layers", Backbones: []Backbone{{Name: "fake", Ext: f, Pre: pre}}, Train: train, Test: test, Seed: 1, Repeats: 2, Eps: 0.01, Batch: 4,
		Points: []Point{
			{Label: "1", Backbone: "fake", Taps: []string{"layer1"}, Dim: 4, Method: detector.MethodPaDiM},
			{Label: "1+2", Backbone: "fake", Taps: []string{"layer1", "layer2"}, Dim: 6, Method: detector.MethodPaDiM},
			{Label: "4", Backbone: "fake", Taps: []string{"layer4"}, Method: detector.MethodPaDiM},
			{Label: "pc", Backbone: "fake", Taps: []string{"layer2"}, Method: baseline.MethodPatchCore},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if f.calls != len(train)+len(test) {
		t.Fatalf("the backbone ran on %d images, want each of %d once", f.calls, len(train)+len(test))
	}
	if len(rs) != 4 || len(rs[0].Runs) != 2 || rs[0].Runs[0].Seed == rs[0].Runs[1].Seed || !strings.Contains(rs[2].Note, "no layer4") {
		t.Fatalf("results %+v", rs)
	}
	if rs[0].Mean.Channels != 4 || rs[1].Mean.Channels != 6 {
		t.Fatalf("channels kept %d and %d, want 4 and 6", rs[0].Mean.Channels, rs[1].Mean.Channels)
	}
	for _, r := range []Result{rs[0], rs[1], rs[3]} {
		a := float64(r.Mean.ImageAUROC)
		if !(a >= 0 && a <= 1) || math.IsNaN(float64(r.Std.ImageAUROC)) {
			t.Fatalf("%s: mean %v std %v", r.Label, r.Mean.ImageAUROC, r.Std.ImageAUROC)
		}
	}
	var sb strings.Builder
	Print(&sb, "layers", rs)
	if !strings.Contains(sb.String(), "skipped") || !strings.Contains(sb.String(), "±") {
		t.Fatalf("table:\n%s", sb.String())
	}
}

// A point whose d exceeds the taps' channels says that all were kept.
func TestPrintNotesAllChannelsKept(t *testing.T) {
	r := Result{Point: Point{Label: "d=250", Backbone: "small", Dim: 250}, Runs: []Run{{Channels: 152}}, Mean: Run{Channels: 152}}
	var sb strings.Builder
	Print(&sb, "dim", []Result{r})
	if !strings.Contains(sb.String(), "the taps have 152 channels, all kept") {
		t.Fatalf("table:\n%s", sb.String())
	}
}
