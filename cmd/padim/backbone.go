package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/padim/padim/detector/fileio/atomicfile"
	"github.com/padim/padim/detector/fileio/safetensors"
	"github.com/padim/padim/models/mobilenetv2"
	"github.com/padim/padim/models/resnet"
)

func backboneCommand() *cli.Command {
	return &cli.Command{
		Name:  "backbone",
		Usage: "write a feature extractor as ONNX: a ResNet / ResNet-CBAM built in Go (no Python needed), or the shipped pretrained MobileNetV2",
		UsageText: "padim backbone --arch resnet50_cbam --seed S --out F.onnx [--weights W.safetensors] [--layers 1,2,3,4]\n" +
			"padim backbone --arch mobilenet_v2 --out F.onnx",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "arch", Value: "resnet50_cbam", Usage: strings.Join(resnet.Arches, ", ") +
				" (built here, random or --weights), or " + mobilenetv2.Arch + " (ImageNet-pretrained, shipped inside padim)"},
			&cli.Uint64Flag{Name: "seed", Value: 7, Usage: "seed of the random weights (ignored with --weights)"},
			&cli.StringFlag{Name: "weights", Usage: "float32 safetensors with torchvision/CBAM state_dict names (models/export.py makes one)"},
			&cli.StringFlag{Name: "layers", Value: "layer1,layer2,layer3", Usage: "taps the graph outputs, e.g. 1,2,3,4 for the paper's 1+2+3+4; it computes no deeper than the deepest (layer4 costs about 25 % more time and triples a ResNet-50 graph)"},
			&cli.StringFlag{Name: "out", Usage: "ONNX file to write (required)"},
			&cli.StringFlag{Name: "save-weights", Usage: "also write the weights used as float32 safetensors (state_dict names), e.g. for bench/torch_padim.py"},
			&cli.IntFlag{Name: "size", Value: 224, Usage: "input side (a multiple of 16; of 32 with layer4)"},
			&cli.StringFlag{Name: "mean", Value: "0.485,0.456,0.406", Usage: "input normalisation recorded in the graph's metadata"},
			&cli.StringFlag{Name: "std", Value: "0.229,0.224,0.225"},
			&cli.BoolFlag{Name: "license", Usage: "print the licence of the shipped " + mobilenetv2.Arch + " weights (Apache-2.0) and exit"},
		},
		Action: backboneAction,
	}
}

func backboneAction(c *cli.Context) error {
	if c.Bool("license") {
		fmt.Print(mobilenetv2.License())
		return nil
	}
	out := c.String("out")
	if out == "" {
		return usageError("--out is required")
	}
	if err := checkOutputs([]string{c.String("weights")}, []string{out, c.String("save-weights")}); err != nil {
		return err
	}
	if c.String("arch") == mobilenetv2.Arch {
		return writeMobileNetV2(c, out)
	}
	o := resnet.Options{Arch: c.String("arch"), InputSize: c.Int("size"), Seed: c.Uint64("seed")}
	var err error
	if o.Taps, err = resnet.ParseTaps(c.String("layers")); err != nil {
		return usageError("--layers: %v", err)
	}
	if o.Mean, err = parseTriple(c.String("mean")); err != nil {
		return usageError("--mean: %v", err)
	}
	if o.Std, err = parseTriple(c.String("std")); err != nil {
		return usageError("--std: %v", err)
	}
	chans, err := resnet.TapChannels(o.Arch)
	if err != nil {
		return usageError("--arch: %v, or %s", err, mobilenetv2.Arch)
	}
	var p resnet.Params = resnet.Random{Seed: o.Seed}
	o.Source = fmt.Sprintf("random (seed %d)", o.Seed)
	weights := fmt.Sprintf("random weights (seed %d; not pretrained)", o.Seed)
	var ck *resnet.Checkpoint
	if w := c.String("weights"); w != "" {
		if ck, err = resnet.OpenCheckpoint(w); err != nil {
			return err
		}
		p, o.Source, o.Seed = ck, w, 0
		weights = "weights from " + w
	}
	rec := &resnet.Recorder{Params: p}
	data, err := resnet.Build(o, rec)
	if err != nil {
		return err
	}
	if ck != nil {
		if u := ck.Unused(o); len(u) > 0 {
			return fmt.Errorf("weights %s: %d tensors of the layers built are not used by %s (first %s): a checkpoint of a deeper ResNet or of a CBAM variant? pick its --arch",
				ck.Path, len(u), o.Arch, strings.Join(u[:min(3, len(u))], ", "))
		}
	}
	if w := c.String("save-weights"); w != "" {
		if err := safetensors.Write(w, map[string]string{"arch": o.Arch, "source": o.Source}, rec.Tensors); err != nil {
			return err
		}
	}
	if err := atomicfile.Write(out, func(w io.Writer) error { _, err := w.Write(data); return err }); err != nil {
		return err
	}
	var taps []string
	for _, t := range o.Taps {
		i := indexOf(resnet.Layers, t)
		side := o.InputSize / (4 << i)
		taps = append(taps, fmt.Sprintf("%s (%d×%d²)", t, chans[i], side))
	}
	fmt.Printf("wrote %s: %s, %s, input %d², taps %s; %.1f MB\n", out, o.Arch, weights, o.InputSize, strings.Join(taps, ", "), float64(len(data))/1e6)
	return nil
}

// writeMobileNetV2 writes the shipped pretrained model unchanged; the flags that
// shape a built graph cannot apply to it.
func writeMobileNetV2(c *cli.Context, out string) error {
	for _, f := range []string{"seed", "weights", "save-weights", "layers", "size", "mean", "std"} {
		if c.IsSet(f) {
			return usageError("--%s does not apply to --arch %s: it is a fixed pretrained graph (taps %s, input %d², RGB scaled to [-1,1]), written as shipped",
				f, mobilenetv2.Arch, strings.Join(mobilenetv2.Taps, ","), mobilenetv2.InputSize)
		}
	}
	if err := mobilenetv2.Verify(); err != nil {
		return err
	}
	data := mobilenetv2.ONNX()
	if err := atomicfile.Write(out, func(w io.Writer) error { _, err := w.Write(data); return err }); err != nil {
		return err
	}
	var taps []string
	for i, t := range mobilenetv2.Taps {
		taps = append(taps, fmt.Sprintf("%s (%d×%d²)", t, mobilenetv2.Channels[i], mobilenetv2.InputSize/(4<<i)))
	}
	fmt.Printf("wrote %s: %s, pretrained weights shipped with padim: %s (licence: padim backbone --license), sha256 %s…; input %d² RGB scaled to [-1,1], taps %s; %.1f MB\n",
		out, mobilenetv2.Arch, mobilenetv2.Source, mobilenetv2.SHA256[:12], mobilenetv2.InputSize, strings.Join(taps, ", "), float64(len(data))/1e6)
	return nil
}

func indexOf(list []string, s string) int {
	for i, v := range list {
		if v == s {
			return i
		}
	}
	return -1
}

// seededBackbone builds an architecture with seeded random weights (demo, bench).
func seededBackbone(arch string, seed uint64, size int) ([]byte, error) {
	return resnet.Build(resnet.Options{Arch: arch, InputSize: size, Seed: seed, Source: fmt.Sprintf("random (seed %d)", seed)},
		resnet.Random{Seed: seed})
}
