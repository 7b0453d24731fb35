package main

import (
	"errors"
	"fmt"
	"path/filepath"

	"github.com/urfave/cli/v2"

	"github.com/padim/padim/shard"
)

func collectCommand() *cli.Command {
	return &cli.Command{
		Name:  "collect",
		Usage: "merge the shards of a sharded score or eval (--shard) into one result: records, summary and, for eval, the whole set's metrics",
		UsageText: "padim collect [--json] DIR\n\n" +
			"Writes DIR/results.jsonl (every record, in input order), DIR/summary.json (counts, defects, score histogram)\n" +
			"and, for eval, DIR/eval.json (the metrics, as padim eval --json on one machine).",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "json", Usage: "print the summary (score) or the metrics (eval) as JSON"},
		},
		Action: collectAction,
	}
}

func collectAction(c *cli.Context) error {
	if c.NArg() != 1 {
		return usageError("collect needs the results folder of the shards (score/eval --shard --out DIR)")
	}
	dir := c.Args().First()
	col, err := shard.Collect(dir)
	var mixed *shard.MixedModelsError
	switch {
	case errors.As(err, &mixed):
		return fmt.Errorf("%w: rerun one of them with the other's model (--restart)", err)
	case errors.Is(err, shard.ErrDamaged):
		return fmt.Errorf("%w; rerun that shard with --restart", err)
	case err != nil:
		return err
	}
	if err := checkOutputs(col.Files(), shard.Outputs(dir)); err != nil {
		return err
	}
	run, err := col.Combine()
	var damaged *shard.DamagedShardError
	if errors.As(err, &damaged) {
		return fmt.Errorf("%w (rerun its shard with --restart)", err)
	} else if err != nil {
		return err
	}
	if err := run.Write(dir); err != nil {
		return err
	}
	out, sum := shard.Outputs(dir), run.Summary
	switch {
	case c.Bool("json") && run.Eval != nil:
		if err := printJSON(run.Eval); err != nil {
			return err
		}
	case c.Bool("json"):
		if err := printJSON(sum); err != nil {
			return err
		}
	case run.Eval != nil:
		printMetrics(run.Eval)
		fmt.Printf("collected %d shards: %s, %s, %s\n", run.Shards, out[0], out[1], out[2])
	default:
		fmt.Printf("collected %d shards: %d images, %d scored, %d defect, %d good, %d unreadable → %s, %s\n",
			run.Shards, sum.Images, sum.Scored, sum.Defect, sum.Good, sum.Unreadable, out[0], filepath.Base(out[1]))
	}
	if sum.Unreadable > 0 {
		return cli.Exit(fmt.Sprintf("%d unreadable image(s) skipped", sum.Unreadable), exitSkipped)
	}
	return nil
}
