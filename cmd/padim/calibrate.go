package main

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/padim/padim/detector"
	"github.com/padim/padim/job"
	"github.com/padim/padim/shard"
)

func calibrateCommand() *cli.Command {
	return &cli.Command{
		Name:  "calibrate",
		Usage: "second pass of a sharded fit: score a shard's training images leave-one-out under the merged statistics, for the thresholds",
		UsageText: "padim calibrate --data DIR|--manifest LIST [--shard I/N|auto/N] --out C-I.calib STATS...\n\n" +
			"STATS are the train shards' statistics (train --shard --stats-out), or their merge (merge --stats-out).\n" +
			"Then: padim merge --out M.padim STATS... C-*.calib sets the thresholds a single fit on every image would.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "data", Usage: "the training images, as given to train --shard (required unless --manifest)"},
			manifestFlag("--data"), shardFlag(),
			&cli.StringFlag{Name: "out", Required: true, Usage: "calibration file to write (one per shard)"},
			batchFlag, deviceFlag, threadsFlag,
		},
		Action: calibrateAction,
	}
}

func calibrateAction(c *cli.Context) error {
	if c.NArg() == 0 {
		return usageError("calibrate needs the statistics files of the fit (train --shard --stats-out, or merge --stats-out)")
	}
	sh, err := shardSpec(c)
	if err != nil {
		return err
	}
	if sh == nil {
		sh = &shard.Spec{Index: 0, Count: 1}
	}
	set, err := trainInputs(c)
	if err != nil {
		return err
	}
	for _, s := range set.Skipped {
		notef(c, "skipped %s: %v", s.Path, s.Err)
	}
	if err := checkOutputs(append(append([]string{c.String("manifest")}, c.Args().Slice()...), set.Files...), []string{c.String("out")}, c.String("data")); err != nil {
		return err
	}
	start := time.Now()
	t, err := detector.LoadTotal(c.Args().Slice(), false)
	if err != nil {
		return err
	}
	m := t.Model
	if m.Preprocess.Tile > 0 {
		return usageError("%v: merge without thresholds and give score --threshold, or fit on one machine", detector.ErrTiledShards)
	}
	if !(m.Eps > 0) {
		return fmt.Errorf("the statistics were fitted with --eps %g: leaving one out needs a regularisation > 0 (a fit on one machine cross-fits folds then, which shards cannot reproduce): train the shards with --eps > 0, or merge without thresholds and give score --threshold", m.Eps)
	}
	ext, be, err := openScoring(c, m.BackboneName+" (from the statistics)", m.BackboneONNX, m.TapNames())
	if err != nil {
		return err
	}
	defer ext.Close()
	defer be.Close()
	p, err := m.NewPipeline(ext, pipelineOptions(c))
	if err != nil {
		return err
	}
	notef(c, "calibrate shard %s: %d of the %d images, leave-one-out under the statistics of %d", sh, len(sh.Select(set.Keys)), len(set.Files), t.N)
	prog := newProgress(c)
	h, recs, err := job.Calibrate(c.Context, job.CalibrateConfig{Pipeline: p, Total: t, Set: set, Spec: *sh, Settings: detector.ScoreSettings{Backend: be}, Progress: prog.update})
	prog.done()
	var nf *job.NotFittedError
	if errors.As(err, &nf) {
		return fmt.Errorf("%s has no leave-one-out score under %s: it is not one of the images those statistics were fitted on (give calibrate the --data or --manifest that train --shard was given)", nf.Name, strings.Join(c.Args().Slice(), ", "))
	} else if err != nil {
		return err
	}
	if err := shard.WriteCalib(c.String("out"), h, recs); err != nil {
		return err
	}
	printTimings(c, "calibrate", time.Since(start), p.Timings)
	return calibrated(c, sh, recs)
}

// calibrated says what calibrate wrote; unreadable images exit 4 without --shard.
func calibrated(c *cli.Context, sh *shard.Spec, recs []shard.CalibRecord) error {
	nBad := 0
	for _, r := range recs {
		if r.Error != "" {
			nBad++
			notef(c, "unreadable: %s", r.Error)
		}
	}
	fmt.Printf("wrote %s: shard %s, %d images scored leave-one-out (padim merge --out M.padim STATS... C-*.calib sets the thresholds)\n", c.String("out"), sh, len(recs)-nBad)
	if nBad > 0 && !c.IsSet("shard") {
		return cli.Exit(fmt.Sprintf("%d unreadable image(s) skipped (the merge checks that the calibration covers every image of the fit)", nBad), exitSkipped)
	} else if nBad > 0 {
		// a shard that wrote its file has done its part: the merge checks
		// that the calibration covers every image the fit used
		notef(c, "note: %d unreadable image(s) recorded; the merge checks that the calibration covers every image of the fit", nBad)
	}
	return nil
}

// targetFPRFlag sets the image threshold by the false-alarm rate it aims at
// (train, and merge for a sharded fit's thresholds).
var targetFPRFlag = &cli.Float64Flag{Name: "target-fpr", Value: detector.DefaultFalseAlarms,
	Usage: "false-alarm rate on good images the image threshold aims at; given, the threshold is the ⌈(n+1)(1−rate)⌉-th smallest of the n out-of-sample scores (conformal: at most this rate on new good images); not given, the q0.97 rule (q0.99 with a margin for --calibrate holdout)"}

// thresholdRule is the rule for a calibration, conformal when --target-fpr is given.
func thresholdRule(c *cli.Context, calibration string) (detector.Rule, error) {
	alpha := 0.0 // the quantile rule
	if c.IsSet("target-fpr") {
		alpha = c.Float64("target-fpr") // in range (flagRanges)
	}
	r := detector.RuleFor(calibration, alpha)
	if err := r.Validate(); err != nil {
		return r, usageError("--target-fpr: %v", err)
	}
	return r, nil
}

// falseAlarms says what the image threshold aims at and what to expect.
func falseAlarms(cal *detector.Calibration) string {
	target := "not recorded"
	switch {
	case cal.Conformal:
		target = fmt.Sprintf("%.3g %%", 100*cal.TargetFPR)
	case cal.TargetFPR > 0:
		target = fmt.Sprintf("%.3g %% nominal (a quantile rule; --target-fpr bounds it)", 100*cal.TargetFPR)
	}
	return fmt.Sprintf("false alarms on new good images: target %s, expected %.3g %%", target, 100*cal.ExpectedFPR)
}
