package main

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/padim/padim/detector"
)

func mergeCommand() *cli.Command {
	return &cli.Command{
		Name:      "merge",
		Usage:     "merge statistics shards (train --stats-out) into one model",
		UsageText: "padim merge --out M.padim S1.stats S2.stats ...",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "out", Required: true},
			&cli.Float64Flag{Name: "eps", Usage: "regularisation (default: the shards')"},
			&cli.StringFlag{Name: "gaussian", Value: detector.FormAuto, Usage: "auto, full or lowrank (low-rank needs every shard's samples)"},
			deviceFlag,
		},
		Action: func(c *cli.Context) error {
			if c.NArg() < 1 {
				return usageError("merge needs statistics files")
			}
			if err := checkOutputs(c.Args().Slice(), []string{c.String("out")}); err != nil {
				return err
			}
			eps := -1.0 // the shards'
			if c.IsSet("eps") {
				eps = c.Float64("eps")
			}
			be, err := gaussBackend(c)
			if err != nil {
				return err
			}
			defer be.Close()
			m, err := detector.MergeStats(c.Args().Slice(), be, eps, c.String("gaussian"))
			if err != nil {
				return err
			}
			if err := m.Save(c.String("out")); err != nil {
				return err
			}
			fmt.Printf("wrote %s: %d samples from %d shards, %s form; no thresholds (score with --threshold)\n", c.String("out"), m.NTrain, c.NArg(), m.Gaussian.Form())
			return nil
		},
	}
}
