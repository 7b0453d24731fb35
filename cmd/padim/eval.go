package main

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/padim/padim/detector"
	"github.com/padim/padim/evaluate"
	"github.com/padim/padim/job"
	"github.com/padim/padim/shard"
)

func evalCommand() *cli.Command {
	return &cli.Command{
		Name:  "eval",
		Usage: "evaluate a model on an MVTec-layout category: AUROC, AUPRO, F1, TPR/FPR",
		UsageText: "padim eval --model M.padim --data CATEGORY_DIR [--json] [--report DIR]\n" +
			"   padim eval --model M.padim --data CATEGORY_DIR|--manifest LIST --shard I/N|auto/N --out DIR   (padim collect DIR gives the whole set's metrics)",
		Flags: append(append([]cli.Flag{
			&cli.StringFlag{Name: "data", Usage: "category folder with test/<type>/ and ground_truth/<type>/ (required unless --manifest)"},
			&cli.BoolFlag{Name: "json", Usage: "print the metrics as JSON"},
			&cli.StringFlag{Name: "report", Usage: "write an HTML report (ROC curves, histograms, per-image heatmaps) into this folder"},
			manifestFlag("--data's test/ folder (JSON lines with \"label\" 1 and a \"mask\" for defective images)"), shardFlag(),
			&cli.StringFlag{Name: "out", Usage: "with --shard: folder of the shards' results (per-image records and exact pixel maps)"},
		}, resumeFlags()...), scoringFlags()...),
		Action: evalAction,
	}
}

// evalInputs reads the test set of --data (MVTec layout) or --manifest.
func evalInputs(c *cli.Context) (*job.EvalSet, error) {
	switch {
	case c.IsSet("manifest") && c.IsSet("data"):
		return nil, usageError("give --data or --manifest, not both")
	case c.IsSet("manifest"):
		set, err := job.EvalManifest(c.String("manifest"))
		var le *job.ListError
		if errors.As(err, &le) {
			return nil, usageError("%v", err)
		}
		return set, err
	case c.IsSet("data"):
		set, err := job.EvalFolder(c.String("data"))
		if err == nil {
			for _, n := range set.Notes {
				notef(c, "note: %s", n)
			}
		}
		return set, err
	}
	return nil, usageError("--data is required (or --manifest) (see padim eval --help)")
}

func evalAction(c *cli.Context) error {
	sh, err := shardSpec(c)
	if err != nil {
		return err
	}
	if sh != nil {
		switch {
		case c.String("out") == "":
			return usageError("--shard needs --out: the folder of the shards' results")
		case c.Bool("json") || c.IsSet("report"):
			return usageError("--shard writes per-image results to --out; the metrics (--json) come from padim collect %s, and --report needs one machine", c.String("out"))
		}
	} else if c.IsSet("out") || c.IsSet("restart") || c.IsSet("flush-every") {
		return usageError("--out, --restart and --flush-every go with --shard")
	}
	set, err := evalInputs(c)
	if err != nil {
		return err
	}
	for _, s := range set.Skipped {
		fmt.Fprintf(os.Stderr, "skipped %s: %v\n", s.Path, s.Err)
	}
	if err := checkOutputFolder("report", c.String("report"), c.String("data")); err != nil {
		return err
	}
	if sh != nil {
		inputs := []string{c.String("model"), c.String("backbone"), c.String("manifest")}
		for _, it := range set.Items {
			inputs = append(inputs, it.Path, it.MaskPath)
		}
		if err := checkOutputTree(inputs, job.ShardOutputs(c.String("out"), *sh), c.String("data")); err != nil {
			return err
		}
	}
	start := time.Now()
	m, sc, closeAll, err := loadScorer(c, c.String("report") != "")
	if err != nil {
		return err
	}
	defer closeAll()
	if sh != nil {
		return evalShard(c, sh, sc, set, start)
	}
	return evalOne(c, m, sc, set, start)
}

// evalOne evaluates on this machine and prints the metrics.
func evalOne(c *cli.Context, m *detector.Model, sc *detector.Scorer, set *job.EvalSet, start time.Time) error {
	data := c.String("data")
	if data == "" {
		data = c.String("manifest")
	}
	prog := newProgress(c)
	ev, page, err := job.Eval(c.Context, job.EvalConfig{Model: m, ModelPath: c.String("model"), Scorer: sc, Items: set.Items,
		Data: data, Report: c.String("report"), Progress: prog.update})
	prog.done()
	if err != nil {
		return err
	}
	printTimings(c, "eval", time.Since(start), sc.Pipeline().Timings)
	if c.Bool("json") {
		if err := printJSON(ev); err != nil {
			return err
		}
	} else {
		printMetrics(ev)
		if page != "" {
			fmt.Printf("report: %s\n", page)
		}
	}
	if n := len(ev.Skipped) + len(set.Skipped); n > 0 {
		return cli.Exit(fmt.Sprintf("%d unreadable image(s) or folder(s) skipped", n), exitSkipped)
	}
	return nil
}

// evalShard runs eval's shard: what is not done yet, into its results.
func evalShard(c *cli.Context, sh *shard.Spec, sc *detector.Scorer, set *job.EvalSet, start time.Time) error {
	prog := newProgress(c)
	done, err := job.EvalShard(c.Context, job.EvalShardConfig{ShardConfig: shardConfig(c, sh, prog),
		Scorer: sc, Items: set.Items, Keys: set.Keys, OpenRadius: c.Int("open-radius")})
	prog.done()
	if err != nil {
		return shardError(err)
	}
	printTimings(c, "eval", time.Since(start), sc.Pipeline().Timings)
	fmt.Printf("shard %s: %d test images, %d scored now, %d done before, %d unreadable → %s (padim collect %s gives the metrics)\n",
		sh, done.Inputs, done.Now, done.Inputs-done.Now, done.Unreadable, done.Results, c.String("out"))
	return nil
}

// printMetrics prints the metrics table on stdout and the skipped images on stderr.
func printMetrics(ev *evaluate.Evaluation) {
	ev.WriteTable(os.Stdout)
	for _, s := range ev.Skipped {
		fmt.Fprintf(os.Stderr, "skipped %s: %s\n", s.Path, s.Error)
	}
}
