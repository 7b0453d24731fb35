package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/padim/padim/detector"
	"github.com/padim/padim/detector/anomalymap"
	"github.com/padim/padim/detector/atomicfile"
	"github.com/padim/padim/detector/dataset"
	"github.com/padim/padim/detector/synth"
)

func demoCommand() *cli.Command {
	return &cli.Command{
		Name:  "demo",
		Usage: "the whole job on an embedded default: seeded Resnet50_CBAM, synthetic wood, train, evaluate, report",
		Description: "The backbone has seeded random weights (no pretrained ones can be downloaded here): on the\n" +
			"synthetic boards it separates defects well, on real parts random features are close to chance.\n" +
			"Bring ImageNet weights with models/export.py and `padim backbone --weights`.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "out", Value: "padim-demo", Usage: "working folder (data, backbone, model, report)"},
			&cli.StringFlag{Name: "arch", Value: "resnet50_cbam"},
			&cli.Uint64Flag{Name: "backbone-seed", Value: 7},
			&cli.Uint64Flag{Name: "seed", Value: 1, Usage: "data seed"},
			&cli.IntFlag{Name: "size", Value: 512, Usage: "synthetic image side"},
			&cli.IntFlag{Name: "train", Value: 60},
			&cli.IntFlag{Name: "test-good", Value: 20},
			&cli.IntFlag{Name: "test-defect", Value: 30},
			&cli.IntFlag{Name: "dim", Value: detector.DefaultDim},
			batchFlag, deviceFlag, threadsFlag,
		},
		Action: demoAction,
	}
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

	// 1. backbone
	bbPath := filepath.Join(out, fmt.Sprintf("%s_seed%d.onnx", c.String("arch"), c.Uint64("backbone-seed")))
	graph, err := seededBackbone(c.String("arch"), c.Uint64("backbone-seed"), 224)
	if err != nil {
		return err
	}
	if err := atomicfile.Write(bbPath, func(w io.Writer) error { _, err := w.Write(graph); return err }); err != nil {
		return err
	}
	step("backbone %s (seeded random weights) → %s", c.String("arch"), bbPath)

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

	// 3. train
	ext, err := openBackbone(c, bbPath, graph, nil)
	if err != nil {
		return err
	}
	defer ext.Close()
	be, err := gaussBackend(c)
	if err != nil {
		return err
	}
	defer be.Close()
	files, err := dataset.TrainImages(data)
	if err != nil {
		return err
	}
	prog := newProgress(c)
	m, rep, err := detector.Train(c.Context, ext, files, detector.TrainConfig{Preprocess: ext.DefaultPreprocess(), Pipeline: pipelineOptions(c),
		Dim: c.Int("dim"), Seed: detector.DefaultSeed, Eps: detector.DefaultEps, Sigma: anomalymap.DefaultSigma,
		Backend: be, BackboneName: bbPath, BackboneONNX: graph, Progress: prog.update})
	prog.done()
	if err != nil {
		return err
	}
	modelPath := filepath.Join(out, "wood.padim")
	if err := m.Save(modelPath); err != nil {
		return err
	}
	step("trained on %d images, %s form, thresholds from %d-fold cross-fitting (fit %s, cross-fit %s, factorisation %s) → %s", rep.Trained, rep.Form, rep.Folds,
		rep.Timings.Get("fit").Busy.Round(time.Millisecond), rep.Timings.Get("crossfit").Busy.Round(time.Millisecond), rep.Timings.Get("factorize").Busy.Round(time.Millisecond), modelPath)

	// 4. evaluate with a report
	items, err := dataset.TestSet(data)
	if err != nil {
		return err
	}
	sc, err := m.NewScorer(ext, detector.ScoreConfig{Backend: be, Pipeline: pipelineOptions(c), OpenRadius: detector.DefaultOpenRadius, KeepImages: true})
	if err != nil {
		return err
	}
	defer sc.Close()
	ev, page, err := evaluateWithReport(c, m, sc, items, modelPath, data, filepath.Join(out, "report"))
	if err != nil {
		return err
	}
	step("evaluated %d test images", ev.NImages)
	fmt.Println()
	printMetrics(ev)
	fmt.Printf("\nreport: %s\n", page)
	fmt.Println("note: the backbone has seeded random weights; on real parts bring ImageNet weights (see README).")
	return nil
}
