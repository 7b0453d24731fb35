package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/padim/padim/job"
	"github.com/padim/padim/shard"
)

// The flags that split a command's inputs across machines (score, eval,
// train, calibrate) and read explicit input lists.

func shardFlag() cli.Flag {
	return &cli.StringFlag{Name: "shard", Usage: "do only shard I of N of the inputs (I/N, 0-based), or auto/N: I from $JOB_COMPLETION_INDEX, $AWS_BATCH_JOB_ARRAY_INDEX or $SLURM_ARRAY_TASK_ID; " +
		"inputs are split by a hash of their path below the data root"}
}

func manifestFlag(what string) cli.Flag {
	return &cli.StringFlag{Name: "manifest", Usage: "read the inputs from this list instead of " + what + ": one path a line, or JSON lines {\"path\": ..., \"label\": 0|1, \"mask\": ..., \"type\": ...}; relative paths are from the list's folder"}
}

func resumeFlags() []cli.Flag {
	return []cli.Flag{
		&cli.BoolFlag{Name: "restart", Usage: "with --shard: discard this shard's previous results in --out and start over (else they are kept and their inputs skipped)"},
		&cli.IntFlag{Name: "flush-every", Usage: "with --shard: write the results file every N records (0: adaptive, at most 30 s apart)"},
	}
}

// shardSpec reads --shard; nil when it is not given.
func shardSpec(c *cli.Context) (*shard.Spec, error) {
	if !c.IsSet("shard") {
		return nil, nil
	}
	s, err := shard.Parse(c.String("shard"), os.Getenv)
	if err != nil {
		var ue *shard.UsageError
		if errors.As(err, &ue) {
			return nil, usageError("--shard %v", err)
		}
		return nil, err
	}
	if s.From != "flag" {
		notef(c, "shard %s (index from $%s)", s, s.From)
	}
	return &s, nil
}

// shardConfig reads where a sharded run keeps its results: --out,
// --restart, --flush-every (in range: checkFlags). What --restart discards
// is said even with -q.
func shardConfig(c *cli.Context, sh *shard.Spec, prog *progress) job.ShardConfig {
	return job.ShardConfig{Spec: *sh, Out: c.String("out"), ModelPath: c.String("model"), Restart: c.Bool("restart"), FlushEvery: c.Int("flush-every"),
		Progress: prog.update, Note: func(s string) { notef(c, "%s", s) },
		Opened: func(s string) {
			if c.Bool("restart") {
				fmt.Fprintln(os.Stderr, "padim:", s)
			} else {
				notef(c, "%s", s)
			}
		}}
}

// shardError adds to a sharded run's error the flag that changes it:
// results of another run on file are a usage error.
func shardError(err error) error {
	switch {
	case errors.Is(err, shard.ErrMismatch):
		return cli.Exit(fmt.Sprintf("%v; give another --out, or --restart to score this shard again", err), exitUsage)
	case errors.Is(err, shard.ErrDamaged):
		return fmt.Errorf("%w; give --restart to score the shard again (its good records cannot be told from the rest)", err)
	}
	return err // running (locked): exit 1
}
