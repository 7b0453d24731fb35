package shard

import (
	"encoding/json"
	"fmt"
	"io"
	"math"

	"github.com/padim/padim/detector"
	"github.com/padim/padim/detector/fileio/atomicfile"
	"github.com/padim/padim/evaluate"
)

// Combined is a sharded run put back together: what padim collect writes.
type Combined struct {
	Shards  int
	Lines   [][]byte // every record, in input order (eval's without their block references)
	Summary Summary
	Eval    *evaluate.Evaluation // eval: the whole set's metrics, as one machine's eval gives them
}

// Files are the shard files Collect read (results and markers).
func (c *Collected) Files() []string {
	var fs []string
	for i := 0; i < c.Count; i++ {
		s := Spec{Index: i, Count: c.Count}
		fs = append(fs, ResultsPath(c.Dir, s), MarkerPath(c.Dir, s))
	}
	return fs
}

// Combine merges the collected records into one run's records, its summary
// and, for eval, the whole set's metrics from every image's exact map and
// mask.
func (c *Collected) Combine() (*Combined, error) {
	mk := c.Markers[0]
	out := &Combined{Shards: c.Count, Summary: Summary{Command: mk.Command, Shards: c.Count, ModelSHA256: mk.ModelSHA256, Images: len(c.Records), Defects: []DefectEntry{}}}
	var err error
	switch mk.Command {
	case "score":
		err = c.combineScore(out)
	case "eval":
		err = c.combineEval(out)
	default:
		return nil, fmt.Errorf("%s: results of an unknown command %q", c.Dir, mk.Command)
	}
	if err != nil {
		return nil, err
	}
	out.Summary.Histogram = ScoreHistogram(out.Summary.scores)
	return out, nil
}

func (c *Collected) combineScore(out *Combined) error {
	for _, r := range c.Records {
		var s ScoreRecord
		if err := json.Unmarshal(r.Line, &s); err != nil {
			return fmt.Errorf("%s: %w", r.Key, err)
		}
		out.Lines = append(out.Lines, r.Line)
		out.Summary.Tally(s.Path, r.Key, s.Score, s.Defect, s.Threshold, len(s.Boxes), s.Error)
	}
	return nil
}

func (c *Collected) combineEval(out *Combined) error {
	outs := make([]Outcome, 0, len(c.Records))
	for _, r := range c.Records {
		var e EvalRecord
		if err := json.Unmarshal(r.Line, &e); err != nil {
			return fmt.Errorf("%s: %w", r.Key, err)
		}
		out.Summary.Tally(e.Path, r.Key, e.Score, e.Defect, e.Threshold, len(e.Boxes), e.Error)
		o, err := c.outcome(r.Key, e)
		if err != nil {
			return err
		}
		outs = append(outs, o)
		e.Pixels = nil // block names depend on the shard count
		b, err := json.Marshal(e)
		if err != nil {
			return err
		}
		out.Lines = append(out.Lines, b)
	}
	var th *detector.Thresholds
	if raw, ok := c.Markers[0].Extra["thresholds"]; ok && raw != nil {
		b, _ := json.Marshal(raw)
		th = &detector.Thresholds{}
		if err := json.Unmarshal(b, th); err != nil {
			return fmt.Errorf("%s: thresholds: %w", MarkerPath(c.Dir, Spec{Count: c.Count}), err)
		}
	}
	out.Eval = Evaluate(outs, th)
	out.Summary.Metrics = map[string]float64{}
	for k, v := range map[string]evaluate.Metric{"image_auroc": out.Eval.ImageAUROC, "pixel_auroc": out.Eval.PixelAUROC, "aupro": out.Eval.AUPRO, "image_f1": out.Eval.ImageF1, "pixel_f1": out.Eval.PixelF1} {
		if !math.IsNaN(float64(v)) {
			out.Summary.Metrics[k] = float64(v)
		}
	}
	return nil
}

// outcome is what the evaluation takes of one eval record: the image, or
// its skip; the exact map and mask read back from their block.
func (c *Collected) outcome(key string, e EvalRecord) (Outcome, error) {
	if e.Error != "" {
		return Outcome{Skipped: &evaluate.Skipped{Path: e.Path, Error: e.Error}}, nil
	}
	if e.Pixels == nil || e.Score == nil {
		return Outcome{}, fmt.Errorf("%s: an eval record without its score or pixel material", key)
	}
	b, err := ReadBlob(c.Dir, e.Pixels)
	if err != nil {
		return Outcome{}, &DamagedShardError{Key: key, Err: err}
	}
	m, mask, ok := UnpackPixels(b, e.W, e.H, e.Label == 1)
	if !ok {
		return Outcome{}, fmt.Errorf("%s: its pixel material does not match a %dx%d map", key, e.W, e.H)
	}
	return Outcome{Image: evaluate.Image{Name: e.Name, Path: e.Path, Type: e.Type, Label: e.Label, Score: *e.Score, Defect: e.Defect, Boxes: e.Boxes},
		Map: m, Mask: mask, W: e.W, H: e.H}, nil
}

// DamagedShardError is a record whose shard must be run again: its pixel
// material is missing or damaged.
type DamagedShardError struct {
	Key string
	Err error
}

func (e *DamagedShardError) Error() string { return fmt.Sprintf("%s: %v", e.Key, e.Err) }
func (e *DamagedShardError) Unwrap() error { return e.Err }

// Write writes the combined run into dir (Outputs): every record in input
// order, the summary and, for eval, the metrics, each atomically.
func (c *Combined) Write(dir string) error {
	out := Outputs(dir)
	if err := atomicfile.Write(out[0], func(w io.Writer) error {
		for _, l := range c.Lines {
			if _, err := w.Write(append(l, '\n')); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		return err
	}
	if err := WriteJSON(out[1], c.Summary); err != nil {
		return err
	}
	if c.Eval != nil {
		return WriteJSON(out[2], c.Eval)
	}
	return nil
}

// WriteJSON writes an indented JSON document atomically, as eval --json
// prints it.
func WriteJSON(path string, v any) error {
	return atomicfile.Write(path, func(w io.Writer) error {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	})
}
