package experiment

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/padim/padim/detector"
	"github.com/padim/padim/detector/baseline"
	"github.com/padim/padim/models/mobilenetv2"
	"github.com/padim/padim/models/resnet"
)

// SweepUsage says what each sweep varies, as the paper's table does.
var SweepUsage = map[string]string{
	"layers":    "Table 1: taps 1, 2, 3, 4, 1+2, 1+2+3, 1+2+3+4 (d=550, or all channels when fewer)",
	"dim":       "Table 2: d = 250, 350, 450, 550, 650 on layer1+2+3",
	"backbones": "Table 3: resnet50, resnet50_cbam, resnet101_cbam, resnet152_cbam (seeded random weights unless --weights-dir has <arch>.safetensors), and the shipped mobilenet_v2",
	"samples":   "Table 4: 5, 10, 20, 30, 50 training images (seeded subsets)",
	"methods":   "Table 5: SPADE, PatchCore and PaDiM on the same backbone and pipeline",
}

// Graph is a backbone graph a sweep runs, to be opened by the caller.
type Graph struct {
	Name string
	ONNX []byte
}

// PlanConfig says how to lay a sweep out.
type PlanConfig struct {
	Sweep string
	// Backbone is the graph of every row but the backbones sweep's: an
	// ONNX file's name and bytes; nil ONNX: the paper's Resnet50_CBAM,
	// seeded.
	Backbone     Graph
	BackboneSeed uint64 // the seeded graphs' weights
	WeightsDir   string // <arch>.safetensors checkpoints used instead of seeded weights, when there
	Dim          int
	NTrain       int // training images there are (the samples sweep stops there)
}

// Plan lays out a sweep's rows and the graphs they run on: the paper's
// tables (SweepUsage).
func Plan(cfg PlanConfig) ([]Graph, []Point, error) {
	var graphs []Graph
	main := "resnet50_cbam"
	if cfg.Backbone.ONNX != nil {
		main = cfg.Backbone.Name
		graphs = append(graphs, cfg.Backbone)
	} else if cfg.Sweep != "backbones" {
		g, err := seeded(main, cfg)
		if err != nil {
			return nil, nil, err
		}
		graphs = append(graphs, g)
	}
	dim := cfg.Dim
	padim := func(label string, taps []string, d, n int) Point {
		return Point{Label: label, Backbone: main, Taps: taps, Dim: d, N: n, Method: detector.MethodPaDiM}
	}
	var pts []Point
	switch cfg.Sweep {
	case "layers":
		for _, l := range []string{"1", "2", "3", "4", "1+2", "1+2+3", "1+2+3+4"} {
			var taps []string
			for _, d := range strings.Split(l, "+") {
				taps = append(taps, "layer"+d)
			}
			pts = append(pts, padim(l, taps, dim, 0))
		}
	case "dim":
		for _, d := range []int{250, 350, 450, 550, 650} {
			pts = append(pts, padim("d="+strconv.Itoa(d), resnet.DefaultTaps, d, 0))
		}
	case "samples":
		for _, n := range []int{5, 10, 20, 30, 50} {
			if n > cfg.NTrain {
				break
			}
			pts = append(pts, padim("N="+strconv.Itoa(n), resnet.DefaultTaps, dim, n))
		}
	case "methods":
		pts = []Point{
			{Label: "spade", Backbone: main, Taps: resnet.DefaultTaps, Dim: dim, Method: baseline.MethodSPADE},
			{Label: "patchcore", Backbone: main, Taps: detector.DefaultLayers(baseline.MethodPatchCore), Dim: dim, Method: baseline.MethodPatchCore},
			padim("padim", resnet.DefaultTaps, dim, 0),
		}
	case "backbones":
		for _, arch := range []string{"resnet50", "resnet50_cbam", "resnet101_cbam", "resnet152_cbam"} {
			g, err := seeded(arch, cfg)
			if err != nil {
				return nil, nil, err
			}
			graphs = append(graphs, g)
			pts = append(pts, Point{Label: arch, Backbone: arch, Taps: resnet.DefaultTaps, Dim: dim, Method: detector.MethodPaDiM})
		}
		graphs = append(graphs, Graph{mobilenetv2.Arch, mobilenetv2.ONNX()})
		pts = append(pts, Point{Label: mobilenetv2.Arch, Backbone: mobilenetv2.Arch, Dim: dim, Method: detector.MethodPaDiM})
	default:
		return nil, nil, fmt.Errorf("no sweep %q: want %s", cfg.Sweep, strings.Join(Sweeps, ", "))
	}
	return graphs, pts, nil
}

// seeded builds an architecture at 224² with every layer tapped: seeded
// random weights, or the checkpoint in WeightsDir when there is one.
func seeded(arch string, cfg PlanConfig) (Graph, error) {
	o := resnet.Options{Arch: arch, InputSize: 224, Seed: cfg.BackboneSeed, Taps: resnet.Layers,
		Source: fmt.Sprintf("random (seed %d)", cfg.BackboneSeed)}
	var p resnet.Params = resnet.Random{Seed: o.Seed}
	if d := cfg.WeightsDir; d != "" {
		if ck, err := resnet.OpenCheckpoint(filepath.Join(d, arch+".safetensors")); err == nil {
			p, o.Source, o.Seed = ck, filepath.Join(d, arch+".safetensors"), 0
		}
	}
	onnx, err := resnet.Build(o, p)
	return Graph{arch, onnx}, err
}
