package main

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/padim/padim/detector/fileio/readfile"
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
			return nil, usageError("%v", err)
		}
		return nil, err
	}
	if s.From != "flag" {
		notef(c, "shard %s (index from $%s)", s, s.From)
	}
	return &s, nil
}

// openShard opens (or resumes) the shard's results file under --out. Its
// identity is id with the model file's sha256: results from another model,
// list or settings are a usage error, and what --restart discards is said even
// with -q.
func openShard(c *cli.Context, sh *shard.Spec, id shard.Identity, keys []string, sel []int) (*shard.Results, shard.Identity, error) {
	sum, err := fileSHA256(c.String("model"))
	if err != nil {
		return nil, id, err
	}
	id.ModelSHA256 = sum
	res, note, err := shard.OpenResults(c.String("out"), *sh, id, shardKeys(keys, sel), c.Bool("restart"))
	if err != nil {
		if errors.Is(err, shard.ErrMismatch) {
			return nil, id, cli.Exit(err.Error(), exitUsage)
		}
		return nil, id, err // running (locked), damaged: exit 1
	}
	res.FlushEvery = c.Int("flush-every") // in range: checkFlags
	if note != "" && c.Bool("restart") {
		fmt.Fprintln(os.Stderr, "padim:", note)
	} else if note != "" {
		notef(c, "%s", note)
	}
	return res, id, nil
}

// fileSHA256 is the hex sha256 of a file's bytes.
func fileSHA256(path string) (string, error) {
	f, err := readfile.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// settingsHash names the settings that change a result record besides the model.
func settingsHash(a ...any) string {
	h := sha256.Sum256([]byte(fmt.Sprint(a...)))
	return hex.EncodeToString(h[:8])
}

// shardKeys maps the keys of the shard's inputs (positions sel in keys) to their positions.
func shardKeys(keys []string, sel []int) map[string]int {
	m := make(map[string]int, len(sel))
	for _, i := range sel {
		m[keys[i]] = i
	}
	return m
}
