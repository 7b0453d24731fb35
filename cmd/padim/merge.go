package main

import (
	"errors"
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/padim/padim/detector"
	"github.com/padim/padim/shard"
)

func mergeCommand() *cli.Command {
	return &cli.Command{
		Name:  "merge",
		Usage: "merge statistics shards (train --stats-out) into one model; with calibration shards (padim calibrate), with thresholds",
		UsageText: "padim merge --out M.padim S1.stats S2.stats ... [C1.calib C2.calib ...]\n" +
			"   padim merge --stats-out TOTAL.stats S1.stats S2.stats ...   (the merged statistics, for padim calibrate)",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "out", Usage: "model file to write (required unless --stats-out)"},
			&cli.StringFlag{Name: "stats-out", Usage: "also write the merged statistics as one file (what padim calibrate reads on every shard)"},
			&cli.Float64Flag{Name: "eps", Usage: "regularisation (default: the shards')"},
			&cli.StringFlag{Name: "gaussian", Value: detector.FormAuto, Usage: "auto, full or lowrank (low-rank needs every shard's samples)"},
			targetFPRFlag,
			deviceFlag,
		},
		Action: mergeAction,
	}
}

func mergeAction(c *cli.Context) error {
	if c.NArg() < 1 {
		return usageError("merge needs statistics files")
	}
	if c.String("out") == "" && c.String("stats-out") == "" {
		return usageError("--out is required (or --stats-out) (see padim merge --help)")
	}
	if err := checkOutputs(c.Args().Slice(), []string{c.String("out"), c.String("stats-out")}); err != nil {
		return err
	}
	var stats, calibs []string
	for _, p := range c.Args().Slice() {
		if shard.IsCalib(p) {
			calibs = append(calibs, p)
		} else {
			stats = append(stats, p)
		}
	}
	if len(stats) == 0 {
		return usageError("merge needs statistics files besides calibration files")
	}
	if len(calibs) > 0 && c.IsSet("eps") {
		return usageError("--eps changes the model the calibration scored against: calibrate with the shards' eps, or merge without calibration files")
	}
	if p := c.String("stats-out"); p != "" {
		t, err := detector.LoadTotal(stats, true)
		if err != nil {
			return err
		}
		if err := t.Save(p); err != nil {
			return err
		}
		fmt.Printf("wrote %s: the statistics of %d samples from %d files (padim calibrate reads it)\n", p, t.N, len(stats))
		if c.String("out") == "" {
			return nil
		}
	}
	cal, err := mergeCalibration(c, stats, calibs)
	if err != nil {
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
	m, err := detector.MergeStats(stats, be, eps, c.String("gaussian"))
	if errors.Is(err, detector.ErrLowRankNeedsSamples) {
		return usageError("%v: merge with --gaussian full (or auto)", err)
	} else if err != nil {
		return err
	}
	m.Calibration = cal
	if err := m.Save(c.String("out")); err != nil {
		return err
	}
	printMerged(c, m, len(stats), len(calibs))
	return nil
}

// printMerged says what model merge wrote.
func printMerged(c *cli.Context, m *detector.Model, stats, calibs int) {
	cal := m.Calibration
	fmt.Printf("wrote %s: %d samples from %d statistics file(s), %s form", c.String("out"), m.NTrain, stats, m.Gaussian.Form())
	if cal != nil {
		fmt.Printf(", thresholds image %.4g pixel %.4g from %d images' leave-one-out scores (%d calibration shards); %s\n", cal.Image, cal.Pixel, cal.Images, calibs, falseAlarms(cal))
		if w := cal.Warning(); w != "" {
			notef(c, "note: %s", w)
		}
	} else {
		fmt.Printf("; no thresholds (score with --threshold, or calibrate: padim calibrate --help)\n")
	}
}

// mergeCalibration combines the calibration shards into the thresholds a
// single fit on every image would set; nil without calibration files.
func mergeCalibration(c *cli.Context, stats, calibs []string) (*detector.Calibration, error) {
	if len(calibs) == 0 {
		return nil, nil
	}
	set, err := detector.LoadShards(stats, nil)
	if err != nil {
		return nil, err
	}
	rule, err := thresholdRule(c, detector.CalibrateCrossFit)
	if err != nil {
		return nil, err
	}
	return shard.CombineCalib(set, calibs, rule)
}
