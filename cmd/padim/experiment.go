package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/padim/padim/data/dataset"
	"github.com/padim/padim/detector"
	"github.com/padim/padim/detector/fileio/readfile"
	"github.com/padim/padim/experiment"
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
	var subs []*cli.Command
	for _, sw := range experiment.Sweeps {
		subs = append(subs, &cli.Command{
			Name:      sw,
			Usage:     experiment.SweepUsage[sw],
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
	plan := experiment.PlanConfig{Sweep: sweep, BackboneSeed: c.Uint64("backbone-seed"), WeightsDir: c.String("weights-dir"), Dim: c.Int("dim"), NTrain: len(train)}
	if p := c.String("backbone"); p != "" {
		if plan.Backbone.ONNX, err = readfile.ReadFile(p); err != nil {
			return err
		}
		plan.Backbone.Name = filepath.Base(p)
	}
	graphs, pts, err := experiment.Plan(plan)
	if err != nil {
		return err
	}
	var bbs []experiment.Backbone
	for _, g := range graphs {
		ext, err := openBackbone(c, g.Name, g.ONNX, nil)
		if err != nil {
			return err
		}
		defer ext.Close()
		bbs = append(bbs, experiment.Backbone{Name: g.Name, Ext: ext, ONNX: ext.Data, Pre: ext.DefaultPreprocess()})
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
	return experimentOutputs(c, sweep, rs)
}

// experimentOutputs writes --csv and --report and prints the results.
func experimentOutputs(c *cli.Context, sweep string, rs []experiment.Result) error {
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
		return printJSON(map[string]any{"sweep": sweep, "data": c.String("data"), "results": rs, "paper": experiment.Paper[sweep]})
	}
	experiment.Print(os.Stdout, sweep, rs)
	return nil
}
