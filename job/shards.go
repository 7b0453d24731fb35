package job

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"

	"github.com/padim/padim/data/dataset"
	"github.com/padim/padim/detector"
	"github.com/padim/padim/detector/fileio/readfile"
	"github.com/padim/padim/detector/imageio"
	"github.com/padim/padim/evaluate"
	"github.com/padim/padim/shard"
)

// ShardConfig is where a sharded run keeps its results and how it resumes.
type ShardConfig struct {
	Spec       shard.Spec
	Out        string // the results folder
	ModelPath  string // its file's sha256 is part of the results' identity
	Restart    bool   // discard the shard's previous results
	FlushEvery int    // records per flush (0: adaptive)
	// Opened receives what opening the results found (results kept or
	// discarded, a stale lock taken over); Note what the run finds (an
	// unreadable input, a failed flush).
	Opened   func(string)
	Note     func(string)
	Progress func(stage string, done, total int)
}

func (c ShardConfig) note(format string, a ...any) {
	if c.Note != nil {
		c.Note(fmt.Sprintf(format, a...))
	}
}

func (c ShardConfig) progress(stage string, done, total int) {
	if c.Progress != nil {
		c.Progress(stage, done, total)
	}
}

// ShardOutputs are the files a shard writes into its results folder (the
// pixel blocks of eval aside).
func ShardOutputs(out string, s shard.Spec) []string {
	return []string{shard.ResultsPath(out, s), shard.MarkerPath(out, s)}
}

// ShardDone says what a shard's run did.
type ShardDone struct {
	Inputs     int    // the shard's inputs
	Now        int    // scored by this run
	Unreadable int    // records of unreadable inputs, this run's and kept ones
	Failed     int    // inputs this run could not read
	Results    string // the results file
}

// open opens (or resumes) the shard's results. Its identity is id with the
// model file's sha256: results from another model, list or settings are
// refused (shard.ErrMismatch).
func (c ShardConfig) open(id shard.Identity, keys []string, sel []int) (*shard.Results, shard.Identity, error) {
	sum, err := fileSHA256(c.ModelPath)
	if err != nil {
		return nil, id, err
	}
	id.ModelSHA256 = sum
	pos := make(map[string]int, len(sel))
	for _, i := range sel {
		pos[keys[i]] = i
	}
	res, note, err := shard.OpenResults(c.Out, c.Spec, id, pos, c.Restart)
	if err != nil {
		return nil, id, err
	}
	res.FlushEvery = c.FlushEvery
	if note != "" && c.Opened != nil {
		c.Opened(note)
	}
	return res, id, nil
}

// finish flushes after a failed run (keeping what was done for the rerun),
// or marks the shard finished.
func (c ShardConfig) finish(res *shard.Results, err error, inputs int) (*shard.Marker, error) {
	if err != nil {
		if ferr := res.Flush(); ferr != nil {
			c.note("%v", ferr)
		}
		return nil, err
	}
	return res.Finish(inputs)
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

// ScoreShardConfig is one shard of a score run.
type ScoreShardConfig struct {
	ShardConfig
	Scorer     *detector.Scorer
	Targets    []Target // the whole list (every shard's)
	Maps       Maps
	OpenRadius int // part of the settings the results were scored with
}

// ScoreShard scores the shard's targets that are not done yet into its
// results file and marks the shard finished.
func ScoreShard(ctx context.Context, cfg ScoreShardConfig) (*ShardDone, error) {
	keys := Keys(cfg.Targets)
	sel := cfg.Spec.Select(keys)
	sc := cfg.Scorer
	res, id, err := cfg.open(shard.Identity{Command: "score", ListHash: shard.ListHash(keys), Total: len(cfg.Targets),
		Settings: settingsHash("score", sc.Thresholds(), cfg.OpenRadius, cfg.Maps.Kind, cfg.Maps.Frame)}, keys, sel)
	if err != nil {
		return nil, err
	}
	defer res.Close()
	common := shard.Common{ModelSHA256: id.ModelSHA256, Settings: id.Settings}
	var todo []Target
	var pos []int // position in the whole list of each target to score
	for _, i := range sel {
		if t := cfg.Targets[i]; !res.Done(t.Key) {
			todo, pos = append(todo, t), append(pos, i)
		}
	}
	failed := 0
	err = sc.Score(ctx, detector.FileInputs(Paths(todo)), func(r *detector.Result) error {
		t := todo[r.Index]
		s, err := cfg.Maps.Scored(sc, t, r)
		if err != nil {
			return err
		}
		rec := shard.ScoreRecord{Common: common, ScoredImage: s}
		rec.Index, rec.Key = pos[r.Index], t.Key
		if s.Error != "" {
			failed++
			cfg.note("unreadable: %s", s.Error)
		}
		cfg.progress("score", r.Index+1, len(todo))
		return res.Add(rec, s.Error != "")
	})
	mk, err := cfg.finish(res, err, len(sel))
	if err != nil {
		return nil, err
	}
	return &ShardDone{Inputs: len(sel), Now: len(todo), Unreadable: mk.Errors, Failed: failed, Results: res.Path}, nil
}

// EvalShardConfig is one shard of an evaluation.
type EvalShardConfig struct {
	ShardConfig
	Scorer     *detector.Scorer
	Items      []dataset.Item // the whole test set
	Keys       []string       // its split keys
	OpenRadius int
}

// EvalShard scores the shard's test images that are not done yet into its
// results: per image the evaluation's record, and its map and ground-truth
// mask, exactly, in block files beside the results (shard.Collected.Combine
// computes the whole set's metrics from them).
func EvalShard(ctx context.Context, cfg EvalShardConfig) (*ShardDone, error) {
	sc := cfg.Scorer
	th := sc.Thresholds()
	sel := cfg.Spec.Select(cfg.Keys)
	res, id, err := cfg.open(shard.Identity{Command: "eval", ListHash: shard.ListHash(cfg.Keys), Total: len(cfg.Items),
		Settings: settingsHash("eval", th, cfg.OpenRadius), Extra: map[string]any{"thresholds": th}}, cfg.Keys, sel)
	if err != nil {
		return nil, err
	}
	defer res.Close()
	var todo []int // positions in items
	var paths []string
	for _, i := range sel {
		if !res.Done(cfg.Keys[i]) {
			todo, paths = append(todo, i), append(paths, cfg.Items[i].Path)
		}
	}
	pre := sc.Pipeline().Preprocess()
	err = sc.Score(ctx, detector.FileInputs(paths), func(r *detector.Result) error {
		i := todo[r.Index]
		cfg.progress("evaluate", r.Index+1, len(todo))
		rec, blob, err := evalRecord(cfg.Items[i], r, pre)
		if err != nil {
			return err
		}
		rec.Common = shard.Common{Index: i, Key: cfg.Keys[i], ModelSHA256: id.ModelSHA256, Settings: id.Settings}
		if rec.Error != "" {
			cfg.note("unreadable: %s", rec.Error)
			return res.Add(rec, true)
		}
		rec.Pixels = res.AddBlob(blob)
		return res.Add(rec, false)
	})
	mk, err := cfg.finish(res, err, len(sel))
	if err != nil {
		return nil, err
	}
	return &ShardDone{Inputs: len(sel), Now: len(todo), Unreadable: mk.Errors, Results: res.Path}, nil
}

// evalRecord is an eval shard's record of one result and its pixel
// material (map and ground-truth mask).
func evalRecord(it dataset.Item, r *detector.Result, pre imageio.Preprocess) (shard.EvalRecord, []byte, error) {
	rec := shard.EvalRecord{Path: it.Path, Name: it.Name(), Type: it.Type, MaskPath: it.MaskPath}
	if it.Defective {
		rec.Label = 1
	}
	if r.Err != nil {
		rec.Path, rec.Error = r.Name, r.Err.Error()
		return rec, nil, nil
	}
	mask, err := evaluate.Mask(it, pre, r.W, r.H)
	if err != nil {
		return rec, nil, err
	}
	score := r.Score
	rec.Score, rec.Boxes, rec.W, rec.H = &score, r.Boxes, r.W, r.H
	if r.Thresholds != nil {
		d := r.Defect
		rec.Defect, rec.Threshold = &d, &r.Thresholds.Image
	}
	return rec, shard.PackPixels(r.Map, mask, it.Defective), nil
}
