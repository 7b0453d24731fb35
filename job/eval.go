package job

import (
	"context"
	"fmt"

	"github.com/padim/padim/data/dataset"
	"github.com/padim/padim/detector"
	"github.com/padim/padim/evaluate"
	"github.com/padim/padim/report"
	"github.com/padim/padim/shard"
)

// ListError is an input list a run cannot take as given: what it lacks.
type ListError struct{ Msg string }

func (e *ListError) Error() string { return e.Msg }

// EvalSet is a test set with each image's split key.
type EvalSet struct {
	Items   []dataset.Item
	Keys    []string
	Skipped []dataset.FileError // folders that could not be read
	Notes   []string            // inputs left out as the same file as another
}

// EvalManifest reads a test set from an input list: JSON lines with a
// "label" (and a "mask" for each defective image).
func EvalManifest(path string) (*EvalSet, error) {
	es, err := shard.ReadManifest(path)
	if err != nil {
		return nil, err
	}
	set := &EvalSet{Items: make([]dataset.Item, len(es)), Keys: make([]string, len(es))}
	for i, e := range es {
		if e.Label == nil {
			return nil, &ListError{fmt.Sprintf("%s: %s has no \"label\": eval needs JSON lines with \"label\" 0 or 1 (and a \"mask\" for 1)", path, e.Key)}
		}
		it := dataset.Item{Path: e.Path, Type: e.Type, Defective: *e.Label == 1, MaskPath: e.Mask}
		if it.Type == "" {
			it.Type = "good"
			if it.Defective {
				it.Type = "defect"
			}
		}
		if it.Defective && it.MaskPath == "" {
			return nil, fmt.Errorf("%s: the defective image %s has no \"mask\"", path, e.Key)
		}
		set.Items[i], set.Keys[i] = it, e.Key
	}
	return set, nil
}

// EvalFolder reads an MVTec-layout category's test set (keys relative to it).
func EvalFolder(dir string) (*EvalSet, error) {
	items, l, err := dataset.TestListing(dir)
	if err != nil {
		return nil, err
	}
	set := &EvalSet{Items: items, Keys: make([]string, len(items)), Skipped: l.Skipped}
	for _, d := range l.Duplicates {
		set.Notes = append(set.Notes, fmt.Sprintf("%s is the same file as %s: evaluated once", d.Path, d.Same))
	}
	for i, it := range items {
		set.Keys[i] = shard.Key(dir, it.Path)
	}
	return set, nil
}

// EvalConfig is an evaluation of a model on a test set, with its report.
type EvalConfig struct {
	Model     *detector.Model
	ModelPath string // for the report
	Scorer    *detector.Scorer
	Items     []dataset.Item
	Data      string // the test set's folder or list, for the report
	Report    string // the report's folder ("": none)
	Progress  func(stage string, done, total int)
}

// Eval evaluates the model on the items and writes the report when asked;
// it returns the evaluation and the report's page.
func Eval(ctx context.Context, cfg EvalConfig) (*evaluate.Evaluation, string, error) {
	var rb *report.Builder
	var err error
	if cfg.Report != "" {
		if rb, err = report.New(cfg.Report, HeatRange(cfg.Model)); err != nil {
			return nil, "", err
		}
	}
	n := 0
	ev, err := evaluate.Run(ctx, cfg.Scorer, cfg.Items, true, func(r *detector.Result, it dataset.Item, gt []bool) error {
		n++
		if cfg.Progress != nil {
			cfg.Progress("evaluate", n, len(cfg.Items))
		}
		if rb != nil {
			return rb.Add(r, it, gt)
		}
		return nil
	})
	if err != nil || rb == nil {
		return ev, "", err
	}
	m := cfg.Model
	page, err := rb.Finish(ev, report.Info{
		Title: "padim evaluation", Model: cfg.ModelPath, Data: cfg.Data, Calibration: m.Calibration,
		Details: [][2]string{{"backbone", m.BackboneName}, {"channels", fmt.Sprint(len(m.Channels), " of ", m.TotalChannels)},
			{"training images", fmt.Sprint(m.NTrain)}, {"input", fmt.Sprintf("%d² (resize %d, crop %d, tile %d)", m.Preprocess.InputSize(), m.Preprocess.Resize, m.Preprocess.Crop, m.Preprocess.Tile)}},
	})
	return ev, page, err
}
