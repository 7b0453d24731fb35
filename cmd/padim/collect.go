package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"

	"github.com/urfave/cli/v2"

	"github.com/padim/padim/detector"
	"github.com/padim/padim/detector/fileio/atomicfile"
	"github.com/padim/padim/evaluate"
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

// histogram is the score histogram of a summary.
type histogram struct {
	Lo     float32 `json:"lo"`
	Hi     float32 `json:"hi"`
	Counts []int   `json:"counts"` // equal-width bins over [lo, hi]
}

// histogramBins is the number of bins of a summary's histogram.
const histogramBins = 20

func scoreHistogram(scores []float32) *histogram {
	if len(scores) == 0 {
		return nil
	}
	h := &histogram{Lo: scores[0], Hi: scores[0], Counts: make([]int, histogramBins)}
	for _, s := range scores {
		h.Lo, h.Hi = min(h.Lo, s), max(h.Hi, s)
	}
	w := float64(h.Hi-h.Lo) / histogramBins
	for _, s := range scores {
		b := 0
		if w > 0 {
			b = min(int(float64(s-h.Lo)/w), histogramBins-1)
		}
		h.Counts[b]++
	}
	return h
}

type defectEntry struct {
	Path  string  `json:"path"`
	Key   string  `json:"key"`
	Score float32 `json:"score"`
	Boxes int     `json:"boxes"`
}

type unreadableEntry struct {
	Path  string `json:"path"`
	Error string `json:"error"`
}

// summary is DIR/summary.json.
type summary struct {
	Command     string             `json:"command"`
	Shards      int                `json:"shards"`
	ModelSHA256 string             `json:"model_sha256"`
	Images      int                `json:"n_images"`
	Scored      int                `json:"n_scored"`
	Defect      int                `json:"n_defect"`
	Good        int                `json:"n_good"`
	NoVerdict   int                `json:"n_no_verdict"` // scored without thresholds
	Unreadable  int                `json:"n_unreadable"`
	Threshold   *float32           `json:"threshold,omitempty"`
	Histogram   *histogram         `json:"score_histogram,omitempty"`
	Defects     []defectEntry      `json:"defects"`
	Unreadables []unreadableEntry  `json:"unreadable,omitempty"`
	Metrics     map[string]float64 `json:"metrics,omitempty"` // eval: the headline numbers (eval.json has all)
}

func collectAction(c *cli.Context) error {
	if c.NArg() != 1 {
		return usageError("collect needs the results folder of the shards (score/eval --shard --out DIR)")
	}
	dir := c.Args().First()
	col, err := shard.Collect(dir)
	if err != nil {
		return err
	}
	var inputs []string
	for i := 0; i < col.Count; i++ {
		s := shard.Spec{Index: i, Count: col.Count}
		inputs = append(inputs, shard.ResultsPath(dir, s), shard.MarkerPath(dir, s))
	}
	if err := checkOutputs(inputs, shard.Outputs(dir)); err != nil {
		return err
	}
	mk := col.Markers[0]
	sum := summary{Command: mk.Command, Shards: col.Count, ModelSHA256: mk.ModelSHA256, Images: len(col.Records), Defects: []defectEntry{}}
	var scores []float32
	var lines [][]byte
	var ev *evaluate.Evaluation
	switch mk.Command {
	case "score":
		for _, r := range col.Records {
			var s scoreRecord
			if err := json.Unmarshal(r.Line, &s); err != nil {
				return fmt.Errorf("%s: %w", r.Key, err)
			}
			lines = append(lines, r.Line)
			tally(&sum, &scores, s.Path, r.Key, s.Score, s.Defect, s.Threshold, len(s.Boxes), s.Error)
		}
	case "eval":
		outs := make([]shard.Outcome, 0, len(col.Records))
		for _, r := range col.Records {
			var e evalRecord
			if err := json.Unmarshal(r.Line, &e); err != nil {
				return fmt.Errorf("%s: %w", r.Key, err)
			}
			tally(&sum, &scores, e.Path, r.Key, e.Score, e.Defect, e.Threshold, len(e.Boxes), e.Error)
			if e.Error != "" {
				outs = append(outs, shard.Outcome{Skipped: &evaluate.Skipped{Path: e.Path, Error: e.Error}})
			} else {
				if e.Pixels == nil || e.Score == nil {
					return fmt.Errorf("%s: an eval record without its score or pixel material", r.Key)
				}
				b, err := shard.ReadBlob(dir, e.Pixels)
				if err != nil {
					return fmt.Errorf("%s: %w (rerun its shard with --restart)", r.Key, err)
				}
				m, mask, ok := shard.UnpackPixels(b, e.W, e.H, e.Label == 1)
				if !ok {
					return fmt.Errorf("%s: its pixel material does not match a %dx%d map", r.Key, e.W, e.H)
				}
				outs = append(outs, shard.Outcome{Image: evaluate.Image{Name: e.Name, Path: e.Path, Type: e.Type, Label: e.Label, Score: *e.Score, Defect: e.Defect, Boxes: e.Boxes},
					Map: m, Mask: mask, W: e.W, H: e.H})
			}
			e.Pixels = nil // block names depend on the shard count
			b, err := json.Marshal(e)
			if err != nil {
				return err
			}
			lines = append(lines, b)
		}
		var th *detector.Thresholds
		if raw, ok := mk.Extra["thresholds"]; ok && raw != nil {
			b, _ := json.Marshal(raw)
			th = &detector.Thresholds{}
			if err := json.Unmarshal(b, th); err != nil {
				return fmt.Errorf("%s: thresholds: %w", shard.MarkerPath(dir, shard.Spec{Count: col.Count}), err)
			}
		}
		ev = shard.Evaluate(outs, th)
		sum.Metrics = map[string]float64{}
		for k, v := range map[string]evaluate.Metric{"image_auroc": ev.ImageAUROC, "pixel_auroc": ev.PixelAUROC, "aupro": ev.AUPRO, "image_f1": ev.ImageF1, "pixel_f1": ev.PixelF1} {
			if !math.IsNaN(float64(v)) {
				sum.Metrics[k] = float64(v)
			}
		}
	default:
		return fmt.Errorf("%s: results of an unknown command %q", dir, mk.Command)
	}
	sum.Histogram = scoreHistogram(scores)
	out := shard.Outputs(dir)
	if err := atomicfile.Write(out[0], func(w io.Writer) error {
		for _, l := range lines {
			if _, err := w.Write(append(l, '\n')); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		return err
	}
	if err := writeJSON(out[1], sum); err != nil {
		return err
	}
	if ev != nil {
		if err := writeJSON(out[2], ev); err != nil {
			return err
		}
	}
	switch {
	case c.Bool("json") && ev != nil:
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(ev); err != nil {
			return err
		}
	case c.Bool("json"):
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(sum); err != nil {
			return err
		}
	case ev != nil:
		printMetrics(ev)
		fmt.Printf("collected %d shards: %s, %s, %s\n", col.Count, out[0], out[1], out[2])
	default:
		fmt.Printf("collected %d shards: %d images, %d scored, %d defect, %d good, %d unreadable → %s, %s\n",
			col.Count, sum.Images, sum.Scored, sum.Defect, sum.Good, sum.Unreadable, out[0], filepath.Base(out[1]))
	}
	if sum.Unreadable > 0 {
		return cli.Exit(fmt.Sprintf("%d unreadable image(s) skipped", sum.Unreadable), exitSkipped)
	}
	return nil
}

// tally counts one record into the summary.
func tally(sum *summary, scores *[]float32, path, key string, score *float32, defect *bool, th *float32, boxes int, errText string) {
	switch {
	case errText != "":
		sum.Unreadable++
		sum.Unreadables = append(sum.Unreadables, unreadableEntry{path, errText})
		return
	case score == nil:
		return
	}
	sum.Scored++
	*scores = append(*scores, *score)
	switch {
	case defect == nil:
		sum.NoVerdict++
	case *defect:
		sum.Defect++
		sum.Defects = append(sum.Defects, defectEntry{path, key, *score, boxes})
	default:
		sum.Good++
	}
	if th != nil && sum.Threshold == nil {
		t := *th
		sum.Threshold = &t
	}
}

// writeJSON writes an indented JSON document atomically, as eval --json prints it.
func writeJSON(path string, v any) error {
	return atomicfile.Write(path, func(w io.Writer) error {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	})
}
