package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/padim/padim/data/dataset"
	"github.com/padim/padim/data/synth"
	"github.com/padim/padim/detector"
	"github.com/padim/padim/detector/anomalymap"
	"github.com/padim/padim/detector/fileio/atomicfile"
	"github.com/padim/padim/detector/gauss"
	"github.com/padim/padim/evaluate"
	"github.com/padim/padim/job"
	"github.com/padim/padim/models/mobilenetv2"
	"github.com/padim/padim/report"
)

func demoCommand() *cli.Command {
	return &cli.Command{
		Name:  "demo",
		Usage: "the whole job on an embedded default: synthetic wood, two backbones, train, evaluate, one report",
		Description: "Synthesises a wood set, then for each backbone trains (cross-fitted thresholds), evaluates and\n" +
			"writes a report; report/index.html puts them side by side. The backbones: the paper's\n" +
			"Resnet50_CBAM with seeded random weights (no pretrained ones can be downloaded here: it separates\n" +
			"these synthetic defects, but on real parts random features are close to chance) and the\n" +
			"ImageNet-pretrained MobileNetV2 shipped inside padim.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "out", Value: "padim-demo", Usage: "working folder (data, backbones, models, report)"},
			&cli.StringFlag{Name: "arch", Value: "resnet50_cbam", Usage: "the seeded architecture"},
			&cli.Uint64Flag{Name: "backbone-seed", Value: 7},
			&cli.StringFlag{Name: "backbones", Value: "seeded,mobilenet_v2", Usage: "which to run: seeded (the --arch with random weights), mobilenet_v2 (shipped, pretrained)"},
			&cli.Uint64Flag{Name: "seed", Value: 1, Usage: "data seed"},
			&cli.IntFlag{Name: "size", Value: 512, Usage: "synthetic image side"},
			&cli.IntFlag{Name: "train", Value: 60},
			&cli.IntFlag{Name: "test-good", Value: 20},
			&cli.IntFlag{Name: "test-defect", Value: 30},
			&cli.IntFlag{Name: "dim", Value: detector.DefaultDim, Usage: "channels kept (all when the backbone has fewer)"},
			batchFlag, deviceFlag, threadsFlag,
		},
		Action: demoAction,
	}
}

// demoBackbone is one backbone the demo evaluates.
type demoBackbone struct {
	name, note string
	graph      []byte
}

func demoAction(c *cli.Context) error {
	start := time.Now()
	out := c.String("out")
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	step := func(format string, a ...any) {
		fmt.Printf("[%5.1fs] "+format+"\n", append([]any{time.Since(start).Seconds()}, a...)...)
	}

	// 1. backbones
	bbs, err := demoBackbones(c, out, step)
	if err != nil {
		return err
	}
	if len(bbs) == 0 {
		return usageError("--backbones: name at least one")
	}

	// 2. data (regenerated only when absent: it is deterministic)
	data := filepath.Join(out, fmt.Sprintf("wood-seed%d-%d", c.Uint64("seed"), c.Int("size")))
	if files, err := dataset.TrainImages(data); err != nil || len(files) != c.Int("train") {
		os.RemoveAll(data)
		prog := newProgress(c)
		err := synth.Generate(data, synth.Config{Seed: c.Uint64("seed"), Train: c.Int("train"), TestGood: c.Int("test-good"), TestDefect: c.Int("test-defect"), Size: c.Int("size")},
			func(d, t int) { prog.update("synth", d, t) })
		prog.done()
		if err != nil {
			return err
		}
	}
	step("synthetic wood: %d train, %d good + %d defective test images of %d² in %s", c.Int("train"), c.Int("test-good"), c.Int("test-defect"), c.Int("size"), data)
	files, err := dataset.TrainImages(data)
	if err != nil {
		return err
	}
	items, err := dataset.TestSet(data)
	if err != nil {
		return err
	}
	be, err := gaussBackend(c)
	if err != nil {
		return err
	}
	defer be.Close()

	// 3. per backbone: train, evaluate, report
	var cols []report.Column
	for _, bb := range bbs {
		ev, err := demoOne(c, bb, files, items, data, be, step)
		if err != nil {
			return fmt.Errorf("%s: %w", bb.name, err)
		}
		cols = append(cols, report.Column{Name: bb.name, Link: bb.name + "/index.html", Note: bb.note, Eval: ev})
	}
	page, err := report.Compare(filepath.Join(out, "report"), "padim demo: synthetic wood",
		fmt.Sprintf("%d training boards, %d good and %d defective test boards of %d², d = %d channels (or all of a smaller backbone), thresholds from cross-fitting.",
			c.Int("train"), c.Int("test-good"), c.Int("test-defect"), c.Int("size"), c.Int("dim")), cols)
	if err != nil {
		return err
	}
	fmt.Println()
	fmt.Printf("%-26s", "metric")
	for _, col := range cols {
		fmt.Printf(" %16s", col.Name)
	}
	fmt.Println()
	for _, r := range report.CompareRows {
		fmt.Printf("%-26s", r.Name)
		for _, col := range cols {
			fmt.Printf(" %16s", r.Get(col.Eval).Format())
		}
		fmt.Println()
	}
	fmt.Printf("\nreport: %s\n", page)
	fmt.Println("note: the seeded backbone has random weights: fine on these synthetic boards, close to chance on real parts; the shipped MobileNetV2 is ImageNet-pretrained.")
	return nil
}

// demoBackbones builds (or takes) the backbones of --backbones, writing the seeded one.
func demoBackbones(c *cli.Context, out string, step func(string, ...any)) ([]demoBackbone, error) {
	var bbs []demoBackbone
	for _, b := range splitList(c.String("backbones")) {
		switch b {
		case "seeded":
			graph, err := seededBackbone(c.String("arch"), c.Uint64("backbone-seed"), 224)
			if err != nil {
				return nil, err
			}
			path := filepath.Join(out, fmt.Sprintf("%s_seed%d.onnx", c.String("arch"), c.Uint64("backbone-seed")))
			if err := atomicfile.Write(path, func(w io.Writer) error { _, err := w.Write(graph); return err }); err != nil {
				return nil, err
			}
			bbs = append(bbs, demoBackbone{c.String("arch"), fmt.Sprintf("seeded random weights (seed %d), the paper's architecture", c.Uint64("backbone-seed")), graph})
			step("backbone %s with seeded random weights → %s", c.String("arch"), path)
		case mobilenetv2.Arch:
			if err := mobilenetv2.Verify(); err != nil {
				return nil, err
			}
			bbs = append(bbs, demoBackbone{mobilenetv2.Arch, "ImageNet-pretrained, shipped inside padim", mobilenetv2.ONNX()})
		default:
			return nil, usageError("--backbones: %q is neither seeded nor %s", b, mobilenetv2.Arch)
		}
	}
	return bbs, nil
}

// demoOne trains and evaluates one backbone, writing its model and report.
func demoOne(c *cli.Context, bb demoBackbone, files []string, items []dataset.Item, data string, be gauss.Backend, step func(string, ...any)) (*evaluate.Evaluation, error) {
	ext, err := openBackbone(c, bb.name, bb.graph, nil)
	if err != nil {
		return nil, err
	}
	defer ext.Close()
	prog := newProgress(c)
	m, rep, err := detector.Train(c.Context, ext, files, detector.TrainConfig{Preprocess: ext.DefaultPreprocess(), Pipeline: pipelineOptions(c),
		Dim: c.Int("dim"), Seed: detector.DefaultSeed, Eps: detector.DefaultEps, Sigma: anomalymap.DefaultSigma,
		Backend: be, BackboneName: bb.name, BackboneONNX: bb.graph, Progress: prog.update})
	prog.done()
	if err != nil {
		return nil, err
	}
	out := c.String("out")
	modelPath := filepath.Join(out, bb.name+".padim")
	if err := m.Save(modelPath); err != nil {
		return nil, err
	}
	_, d := m.Gaussian.Shape()
	step("%s: trained on %d images, d=%d, %s form, thresholds from %d-fold cross-fitting (fit %s, cross-fit %s, factorisation %s) → %s", bb.name, rep.Trained, d, rep.Form, rep.Folds,
		rep.Timings.Get("fit").Busy.Round(time.Millisecond), rep.Timings.Get("crossfit").Busy.Round(time.Millisecond), rep.Timings.Get("factorize").Busy.Round(time.Millisecond), modelPath)
	sc, err := m.NewScorer(ext, detector.ScoreConfig{Backend: be, Pipeline: pipelineOptions(c), OpenRadius: detector.DefaultOpenRadius, KeepImages: true})
	if err != nil {
		return nil, err
	}
	defer sc.Close()
	prog = newProgress(c)
	ev, _, err := job.Eval(c.Context, job.EvalConfig{Model: m, ModelPath: modelPath, Scorer: sc, Items: items, Data: data,
		Report: filepath.Join(out, "report", bb.name), Progress: prog.update})
	prog.done()
	if err != nil {
		return nil, err
	}
	step("%s: evaluated %d test images: image AUROC %s, pixel AUROC %s, image F1 calibrated %s (best %s)", bb.name, ev.NImages,
		ev.ImageAUROC.Format(), ev.PixelAUROC.Format(), ev.ImageF1Calibrated.Format(), ev.ImageF1.Format())
	return ev, nil
}
