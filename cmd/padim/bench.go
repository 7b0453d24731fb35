package main

import (
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/padim/padim/bench"
	"github.com/padim/padim/data/dataset"
	"github.com/padim/padim/data/synth"
	"github.com/padim/padim/detector"
	"github.com/padim/padim/detector/gauss"
)

func benchCommand() *cli.Command {
	return &cli.Command{
		Name:  "bench",
		Usage: "measure every stage: images/s, GFLOP/s, GB/s, peak memory",
		Description: "Trains on --n images, writes and reads the model, and scores --score images, through the\n" +
			"library calls padim train and padim score make, with the pipeline's per-stage busy times.\n" +
			"Images come from --data (cycled if there are fewer), else a synthetic wood set made on the fly.\n" +
			"Compare with bench/torch_padim.py (anomalib's PaDiM in PyTorch) on the same backbone and images.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "backbone", Usage: "ONNX backbone (default: the seeded --arch built in memory)"},
			&cli.StringFlag{Name: "arch", Value: "resnet50_cbam"},
			&cli.Uint64Flag{Name: "backbone-seed", Value: 7},
			&cli.StringFlag{Name: "data", Usage: "images: a folder or an MVTec category (train/good); default synthetic wood"},
			&cli.IntFlag{Name: "n", Value: 200, Usage: "training images"},
			&cli.IntFlag{Name: "score", Value: 100, Usage: "images to score"},
			&cli.IntFlag{Name: "size", Value: 224, Usage: "network input side"},
			&cli.IntFlag{Name: "dim", Value: detector.DefaultDim},
			&cli.StringFlag{Name: "layers", Usage: "backbone outputs to use (default layer1,layer2,layer3)"},
			&cli.StringFlag{Name: "gaussian", Value: detector.FormAuto, Usage: "as train --gaussian"},
			&cli.StringFlag{Name: "method", Value: detector.MethodPaDiM, Usage: "as train --method (padim, spade, patchcore)"},
			&cli.StringFlag{Name: "calibrate", Value: detector.CalibrateNone, Usage: "as train --calibrate (default none, like the PyTorch comparator)"},
			&cli.BoolFlag{Name: "peak", Value: true, Usage: "measure the machine's fp32 SGEMM peak first"},
			&cli.BoolFlag{Name: "json"},
			batchFlag, deviceFlag, threadsFlag,
		},
		Action: benchAction,
	}
}

func benchAction(c *cli.Context) error {
	var data []byte
	name := c.String("backbone")
	if name == "" {
		var err error
		data, err = seededBackbone(c.String("arch"), c.Uint64("backbone-seed"), c.Int("size"))
		if err != nil {
			return err
		}
		name = fmt.Sprintf("%s (seed %d)", c.String("arch"), c.Uint64("backbone-seed"))
	}
	layers := splitList(c.String("layers"))
	if len(layers) == 0 {
		layers = detector.DefaultLayers(c.String("method"))
	}
	ext, err := openBackbone(c, name, data, layers)
	if err != nil {
		return err
	}
	defer ext.Close()
	need := c.Int("n") + c.Int("score")
	var files []string
	if d := c.String("data"); d != "" {
		if files, err = dataset.TrainImages(d); err != nil {
			return err
		}
	} else {
		dir, err := os.MkdirTemp("", "padim-bench-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		notef(c, "synthesising %d wood images of 256² in %s", min(need, 64), dir)
		if err := synth.Generate(dir, synth.Config{Seed: 1, Train: min(need, 64), Size: 256}, nil); err != nil {
			return err
		}
		files, _ = dataset.TrainImages(dir)
	}
	pick := func(off, n int) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = files[(off+i)%len(files)]
		}
		return out
	}
	be, err := gaussBackend(c)
	if err != nil {
		return err
	}
	defer be.Close()
	peak := 0.0
	if c.Bool("peak") {
		notef(c, "measuring fp32 SGEMM peak (%s)…", gauss.KernelLibrary)
		peak = gauss.PeakGFLOPS(1024, 2*time.Second)
	}
	rep, err := bench.Run(c.Context, bench.Config{Extractor: ext, Backbone: name, BackboneONNX: ext.Data,
		Train: pick(0, c.Int("n")), Score: pick(c.Int("n"), c.Int("score")),
		Preprocess: ext.DefaultPreprocess(), Pipeline: pipelineOptions(c), Dim: c.Int("dim"), Seed: detector.DefaultSeed,
		Eps: detector.DefaultEps, Gaussian: c.String("gaussian"), Calibration: c.String("calibrate"), Method: c.String("method"), Backend: be, PeakGFLOPS: peak,
		Open: func(onnx []byte) (detector.Extractor, func(), error) {
			e, err := openBackbone(c, name+" (embedded)", onnx, layers)
			if err != nil {
				return nil, nil, err
			}
			return e, func() { e.Close() }, nil
		}})
	if err != nil {
		return err
	}
	if c.Bool("json") {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	rep.Print(os.Stdout)
	return nil
}
