package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/padim/padim/data/dataset"
	"github.com/padim/padim/detector"
	"github.com/padim/padim/detector/backbone"
	"github.com/padim/padim/detector/baseline"
	"github.com/padim/padim/detector/fileio/readfile"
	"github.com/padim/padim/experiment"
	"github.com/padim/padim/models/mobilenetv2"
	"github.com/padim/padim/models/resnet"
)

func experimentCommand() *cli.Command {
	flags := func() []cli.Flag {
		return []cli.Flag{
			&cli.StringFlag{Name: "data", Required: true, Usage: "MVTec-layout category (train/good, test/<type>, ground_truth/<type>)"},
			&cli.StringFlag{Name: "backbone", Usage: "ONNX backbone (default: the seeded Resnet50_CBAM with layer4, the paper's architecture)"},
			&cli.Uint64Flag{Name: "backbone-seed", Value: 7},
			&cli.StringFlag{Name: "weights-dir", Usage: "folder of <arch>.safetensors checkpoints for the backbones sweep"},
			&cli.IntFlag{Name: "dim", Value: detector.DefaultDim},
			&cli.IntFlag{Name: "repeats", Value: 1, Usage: "runs per point with seeds seed, seed+1, …: mean ± std over channel subsets and training samples"},
			&cli.Uint64Flag{Name: "seed", Value: detector.DefaultSeed},
			&cli.BoolFlag{Name: "json", Usage: "print the results as JSON instead of a table"},
			&cli.StringFlag{Name: "csv", Usage: "also write one CSV line per run here"},
			&cli.StringFlag{Name: "report", Usage: "write the table and a plot as HTML into this folder"},
			batchFlag, deviceFlag, threadsFlag,
		}
	}
	usage := map[string]string{
		"layers":    "Table 1: taps 1, 2, 3, 4, 1+2, 1+2+3, 1+2+3+4 (d=550, or all channels when fewer)",
		"dim":       "Table 2: d = 250, 350, 450, 550, 650 on layer1+2+3",
		"backbones": "Table 3: resnet50, resnet50_cbam, resnet101_cbam, resnet152_cbam (seeded random weights unless --weights-dir has <arch>.safetensors), and the shipped mobilenet_v2",
		"samples":   "Table 4: 5, 10, 20, 30, 50 training images (seeded subsets)",
		"methods":   "Table 5: SPADE, PatchCore and PaDiM on the same backbone and pipeline",
	}
	var subs []*cli.Command
	for _, sw := range experiment.Sweeps {
		subs = append(subs, &cli.Command{
			Name:      sw,
			Usage:     usage[sw],
			UsageText: "padim experiment " + sw + " --data CATEGORY [--backbone F.onnx] [--repeats K] [--json] [--csv F] [--report DIR]",
			Flags:     flags(),
			Action:    func(c *cli.Context) error { return experimentAction(c, sw) },
		})
	}
	return &cli.Command{
		Name:      "experiment",
		Usage:     "run one of the paper's sweeps on an MVTec-layout category: " + strings.Join(experiment.Sweeps, ", "),
		UsageText: "padim experiment layers|dim|backbones|samples|methods --data CATEGORY [options]",
		Description: "Paper defaults (ZUO et al. 2023): 224² input, taps layer1+2+3, d=550, every training image, PaDiM;\n" +
			"each row trains and evaluates as padim train and padim eval would; backbone outputs are computed once per image.",
		Subcommands: subs,
	}
}

func experimentAction(c *cli.Context, sweep string) error {
	if c.NArg() != 0 {
		return usageError("unexpected arguments %v (see padim experiment %s --help)", c.Args().Slice(), sweep)
	}
	if r := c.Int("repeats"); r < 1 || r > 100 {
		return usageError("--repeats %d: want 1…100", r)
	}
	train, err := dataset.TrainImages(c.String("data"))
	if err != nil {
		return err
	}
	test, err := dataset.TestSet(c.String("data"))
	if err != nil {
		return err
	}
	if err := checkOutputs(append(train, c.String("backbone")), []string{c.String("csv")}, c.String("data")); err != nil {
		return err
	}
	if err := checkOutputFolder("report", c.String("report"), c.String("data")); err != nil {
		return err
	}
	be, err := gaussBackend(c)
	if err != nil {
		return err
	}
	defer be.Close()
	var bbs []experiment.Backbone
	var exts []*backbone.Extractor
	defer func() {
		for _, e := range exts {
			e.Close()
		}
	}()
	add := func(name string, data []byte) error {
		ext, err := openBackbone(c, name, data, nil)
		if err != nil {
			return err
		}
		exts = append(exts, ext)
		bbs = append(bbs, experiment.Backbone{Name: name, Ext: ext, ONNX: ext.Data, Pre: ext.DefaultPreprocess()})
		return nil
	}
	seeded := func(arch string) ([]byte, error) {
		o := resnet.Options{Arch: arch, InputSize: 224, Seed: c.Uint64("backbone-seed"), Taps: resnet.Layers,
			Source: fmt.Sprintf("random (seed %d)", c.Uint64("backbone-seed"))}
		var p resnet.Params = resnet.Random{Seed: o.Seed}
		if d := c.String("weights-dir"); d != "" {
			if ck, err := resnet.OpenCheckpoint(filepath.Join(d, arch+".safetensors")); err == nil {
				p, o.Source, o.Seed = ck, filepath.Join(d, arch+".safetensors"), 0
			}
		}
		return resnet.Build(o, p)
	}
	main := "resnet50_cbam"
	if p := c.String("backbone"); p != "" {
		data, err := readfile.ReadFile(p)
		if err != nil {
			return err
		}
		main = filepath.Base(p)
		if err := add(main, data); err != nil {
			return err
		}
	} else if sweep != "backbones" {
		data, err := seeded(main)
		if err != nil {
			return err
		}
		if err := add(main, data); err != nil {
			return err
		}
	}
	dim := c.Int("dim")
	var pts []experiment.Point
	switch sweep {
	case "layers":
		for _, l := range []string{"1", "2", "3", "4", "1+2", "1+2+3", "1+2+3+4"} {
			var taps []string
			for _, d := range strings.Split(l, "+") {
				taps = append(taps, "layer"+d)
			}
			pts = append(pts, experiment.Point{Label: l, Backbone: main, Taps: taps, Dim: dim, Method: detector.MethodPaDiM})
		}
	case "dim":
		for _, d := range []int{250, 350, 450, 550, 650} {
			pts = append(pts, experiment.Point{Label: "d=" + strconv.Itoa(d), Backbone: main, Taps: resnet.DefaultTaps, Dim: d, Method: detector.MethodPaDiM})
		}
	case "samples":
		for _, n := range []int{5, 10, 20, 30, 50} {
			if n > len(train) {
				break
			}
			pts = append(pts, experiment.Point{Label: "N=" + strconv.Itoa(n), Backbone: main, Taps: resnet.DefaultTaps, Dim: dim, N: n, Method: detector.MethodPaDiM})
		}
	case "methods":
		pts = []experiment.Point{
			{Label: "spade", Backbone: main, Taps: resnet.DefaultTaps, Dim: dim, Method: baseline.MethodSPADE},
			{Label: "patchcore", Backbone: main, Taps: detector.DefaultLayers(baseline.MethodPatchCore), Dim: dim, Method: baseline.MethodPatchCore},
			{Label: "padim", Backbone: main, Taps: resnet.DefaultTaps, Dim: dim, Method: detector.MethodPaDiM},
		}
	case "backbones":
		for _, arch := range []string{"resnet50", "resnet50_cbam", "resnet101_cbam", "resnet152_cbam"} {
			data, err := seeded(arch)
			if err != nil {
				return err
			}
			if err := add(arch, data); err != nil {
				return err
			}
			pts = append(pts, experiment.Point{Label: arch, Backbone: arch, Taps: resnet.DefaultTaps, Dim: dim, Method: detector.MethodPaDiM})
		}
		if err := add(mobilenetv2.Arch, mobilenetv2.ONNX()); err != nil {
			return err
		}
		pts = append(pts, experiment.Point{Label: mobilenetv2.Arch, Backbone: mobilenetv2.Arch, Dim: dim, Method: detector.MethodPaDiM})
	}
	notef(c, "experiment %s on %s: %d training and %d test images, %d points × %d repeats", sweep, c.String("data"), len(train), len(test), len(pts), c.Int("repeats"))
	rs, err := experiment.Execute(c.Context, experiment.Config{
		Sweep: sweep, Points: pts, Backbones: bbs, Train: train, Test: test, Seed: c.Uint64("seed"), Repeats: c.Int("repeats"),
		Eps: detector.DefaultEps, Batch: c.Int("batch"), Backend: be,
		Progress: func(p string, r int) { notef(c, "  %s (run %d of %d)", p, r+1, c.Int("repeats")) },
	})
	if err != nil {
		return err
	}
	if f := c.String("csv"); f != "" {
		if err := experiment.WriteCSV(f, sweep, rs); err != nil {
			return err
		}
	}
	if d := c.String("report"); d != "" {
		page, err := experiment.WriteReport(d, sweep, fmt.Sprintf("padim experiment %s on %s", sweep, c.String("data")), rs)
		if err != nil {
			return err
		}
		notef(c, "report: %s", page)
	}
	if c.Bool("json") {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(map[string]any{"sweep": sweep, "data": c.String("data"), "results": rs, "paper": experiment.Paper[sweep]})
	}
	experiment.Print(os.Stdout, sweep, rs)
	return nil
}
