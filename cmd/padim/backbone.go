package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/padim/padim/detector"
	"github.com/padim/padim/detector/atomicfile"
	"github.com/padim/padim/detector/safetensors"
	"github.com/padim/padim/models/resnet"
)

func backboneCommand() *cli.Command {
	return &cli.Command{
		Name:      "backbone",
		Usage:     "write a ResNet / Resnet50_CBAM feature extractor as ONNX (no Python needed)",
		UsageText: "padim backbone --arch resnet50_cbam --seed S --out F.onnx [--weights W.safetensors]",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "arch", Value: "resnet50_cbam", Usage: strings.Join(resnet.Arches, ", ")},
			&cli.Uint64Flag{Name: "seed", Value: 7, Usage: "seed of the random weights (ignored with --weights)"},
			&cli.StringFlag{Name: "weights", Usage: "float32 safetensors with torchvision/CBAM state_dict names (models/export.py makes one)"},
			&cli.StringFlag{Name: "out", Required: true},
			&cli.StringFlag{Name: "save-weights", Usage: "also write the weights used as float32 safetensors (state_dict names), e.g. for bench/torch_padim.py"},
			&cli.IntFlag{Name: "size", Value: 224, Usage: "input side"},
			&cli.StringFlag{Name: "mean", Value: "0.485,0.456,0.406", Usage: "input normalisation recorded in the graph's metadata"},
			&cli.StringFlag{Name: "std", Value: "0.229,0.224,0.225"},
		},
		Action: backboneAction,
	}
}

func backboneAction(c *cli.Context) error {
	o := resnet.Options{Arch: c.String("arch"), InputSize: c.Int("size"), Seed: c.Uint64("seed")}
	var err error
	if o.Mean, err = detector.ParseTriple(c.String("mean")); err != nil {
		return usageError("--mean: %v", err)
	}
	if o.Std, err = detector.ParseTriple(c.String("std")); err != nil {
		return usageError("--std: %v", err)
	}
	var p resnet.Params = resnet.Random{Seed: o.Seed}
	o.Source = fmt.Sprintf("random (seed %d)", o.Seed)
	if w := c.String("weights"); w != "" {
		ck, err := resnet.OpenCheckpoint(w)
		if err != nil {
			return err
		}
		p, o.Source, o.Seed = ck, w, 0
	}
	rec := &resnet.Recorder{Params: p}
	data, err := resnet.Build(o, rec)
	if err != nil {
		return err
	}
	if w := c.String("save-weights"); w != "" {
		if err := safetensors.Write(w, map[string]string{"arch": o.Arch, "source": o.Source}, rec.Tensors); err != nil {
			return err
		}
	}
	if err := atomicfile.Write(c.String("out"), func(w io.Writer) error { _, err := w.Write(data); return err }); err != nil {
		return err
	}
	fmt.Printf("wrote %s: %s, %s weights, input %d², taps layer1, layer2, layer3 (%d bytes)\n", c.String("out"), o.Arch, o.Source, o.InputSize, len(data))
	return nil
}

// seededBackbone builds an architecture with seeded random weights (demo, bench).
func seededBackbone(arch string, seed uint64, size int) ([]byte, error) {
	return resnet.Build(resnet.Options{Arch: arch, InputSize: size, Seed: seed, Source: fmt.Sprintf("random (seed %d)", seed)},
		resnet.Random{Seed: seed})
}
