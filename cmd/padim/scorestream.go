package main

import (
	"os"

	"github.com/urfave/cli/v2"

	"github.com/padim/padim/job"
)

// scoreStream is score --stdin-jsonl: one request a line on stdin, one
// result a line on stdout, in order (job.Stream).
func scoreStream(c *cli.Context) error {
	switch {
	case c.NArg() > 0 || c.IsSet("manifest"):
		return usageError("--stdin-jsonl reads its requests from stdin: give no images, folders or --manifest")
	case c.IsSet("shard") || c.IsSet("restart") || c.IsSet("flush-every"):
		return usageError("--stdin-jsonl does not go with --shard (split the stream instead)")
	case c.IsSet("out") || c.IsSet("maps") && c.String("maps") != "none":
		return usageError("--stdin-jsonl writes no maps: its results (scores, verdicts, boxes) are the output lines")
	case c.Bool("json") || c.Bool("fail-on-defect"):
		return usageError("--stdin-jsonl answers each line with a line: --json and --fail-on-defect do not apply")
	}
	_, sc, closeAll, err := loadScorer(c, false)
	if err != nil {
		return err
	}
	defer closeAll()
	if sc.Thresholds() == nil {
		notef(c, "note: %s has no calibrated thresholds: scores only; give --threshold for verdicts", c.String("model"))
	}
	nBad, err := job.Stream(c.Context, job.StreamConfig{Scorer: sc, In: os.Stdin, InName: "stdin", Out: os.Stdout})
	if err != nil {
		return err
	}
	if nBad > 0 {
		notef(c, "note: %d request(s) answered with an error (each is on its output line)", nBad)
	}
	return nil
}
