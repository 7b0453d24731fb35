package main

import (
	"fmt"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/padim/padim/data/synth"
)

func synthCommand() *cli.Command {
	return &cli.Command{
		Name:      "synth",
		Usage:     "generate a synthetic wood data set (MVTec layout, exact masks)",
		UsageText: "padim synth --out DIR [--seed S] [--train N] [--test-good N] [--test-defect N] [--size 1024]",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "out", Required: true, Usage: "category folder to create"},
			&cli.Uint64Flag{Name: "seed", Value: 1},
			&cli.IntFlag{Name: "train", Value: 50, Usage: "good training images"},
			&cli.IntFlag{Name: "test-good", Value: 20},
			&cli.IntFlag{Name: "test-defect", Value: 30, Usage: "defective test images, cycling through " + fmt.Sprint(synth.DefectKinds)},
			&cli.IntFlag{Name: "size", Value: 1024, Usage: "image side in pixels"},
			&cli.BoolFlag{Name: "force", Usage: "write into a folder that is not empty"},
		},
		Action: func(c *cli.Context) error {
			if ents, err := os.ReadDir(c.String("out")); err == nil && len(ents) > 0 && !c.Bool("force") {
				return usageError("--out %s is not empty: synth would mix its images with what is there; give a new folder, or --force", c.String("out"))
			} else if err == nil && c.Bool("force") {
				notef(c, "note: writing into %s, which is not empty (--force)", c.String("out"))
			} else if st, err := os.Stat(c.String("out")); err == nil && !st.IsDir() {
				return usageError("--out %s is a file", c.String("out"))
			}
			prog := newProgress(c)
			err := synth.Generate(c.String("out"), synth.Config{Seed: c.Uint64("seed"), Train: c.Int("train"), TestGood: c.Int("test-good"),
				TestDefect: c.Int("test-defect"), Size: c.Int("size")}, func(d, t int) { prog.update("synth", d, t) })
			prog.done()
			if err != nil {
				return err
			}
			fmt.Printf("wrote %s: %d train, %d good and %d defective test images of %d²\n", c.String("out"), c.Int("train"), c.Int("test-good"), c.Int("test-defect"), c.Int("size"))
			return nil
		},
	}
}
