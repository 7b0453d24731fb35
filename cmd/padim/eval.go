package main

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/padim/padim/data/dataset"
	"github.com/padim/padim/detector"
	"github.com/padim/padim/detector/postproc"
	"github.com/padim/padim/evaluate"
	"github.com/padim/padim/report"
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

// evalInputs lists the test images and their split keys: --data's MVTec
// layout (keys relative to --data), or --manifest; and the folders of --data
// that could not be read (skipped, reported with the unreadable images).
func evalInputs(c *cli.Context) ([]dataset.Item, []string, []dataset.FileError, error) {
	switch {
	case c.IsSet("manifest") && c.IsSet("data"):
		return nil, nil, nil, usageError("give --data or --manifest, not both")
	case c.IsSet("manifest"):
		es, err := shard.ReadManifest(c.String("manifest"))
		if err != nil {
			return nil, nil, nil, err
		}
		items := make([]dataset.Item, len(es))
		keys := make([]string, len(es))
		for i, e := range es {
			if e.Label == nil {
				return nil, nil, nil, usageError("%s: %s has no \"label\": eval needs JSON lines with \"label\" 0 or 1 (and a \"mask\" for 1)", c.String("manifest"), e.Key)
			}
			it := dataset.Item{Path: e.Path, Type: e.Type, Defective: *e.Label == 1, MaskPath: e.Mask}
			if it.Type == "" {
				it.Type = "good"
				if it.Defective {
					it.Type = "defect"
				}
			}
			if it.Defective && it.MaskPath == "" {
				return nil, nil, nil, fmt.Errorf("%s: the defective image %s has no \"mask\"", c.String("manifest"), e.Key)
			}
			items[i], keys[i] = it, e.Key
		}
		return items, keys, nil, nil
	case c.IsSet("data"):
		items, l, err := dataset.TestListing(c.String("data"))
		if err != nil {
			return nil, nil, nil, err
		}
		for _, d := range l.Duplicates {
			notef(c, "note: %s is the same file as %s: evaluated once", d.Path, d.Same)
		}
		keys := make([]string, len(items))
		for i, it := range items {
			keys[i] = shard.Key(c.String("data"), it.Path)
		}
		return items, keys, l.Skipped, nil
	}
	return nil, nil, nil, usageError("--data is required (or --manifest) (see padim eval --help)")
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
	items, keys, skipped, err := evalInputs(c)
	if err != nil {
		return err
	}
	for _, s := range skipped {
		fmt.Fprintf(os.Stderr, "skipped %s: %v\n", s.Path, s.Err)
	}
	if err := checkOutputFolder("report", c.String("report"), c.String("data")); err != nil {
		return err
	}
	if sh != nil {
		inputs := []string{c.String("model"), c.String("backbone"), c.String("manifest")}
		for _, it := range items {
			inputs = append(inputs, it.Path, it.MaskPath)
		}
		if err := checkOutputTree(inputs, []string{shard.ResultsPath(c.String("out"), *sh), shard.MarkerPath(c.String("out"), *sh)}, c.String("data")); err != nil {
			return err
		}
	}
	start := time.Now()
	m, sc, closeAll, err := loadScorer(c, thresholdFlag(c), c.Int("open-radius"), c.String("report") != "")
	if err != nil {
		return err
	}
	defer closeAll()
	if sh != nil {
		return evalShard(c, sh, sc, items, keys, start)
	}
	data := c.String("data")
	if data == "" {
		data = c.String("manifest")
	}
	ev, page, err := evaluateWithReport(c, m, sc, items, c.String("model"), data, c.String("report"))
	if err != nil {
		return err
	}
	printTimings(c, "eval", time.Since(start), sc.Pipeline().Timings)
	if c.Bool("json") {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(ev); err != nil {
			return err
		}
	} else {
		printMetrics(ev)
		if page != "" {
			fmt.Printf("report: %s\n", page)
		}
	}
	if n := len(ev.Skipped) + len(skipped); n > 0 {
		return cli.Exit(fmt.Sprintf("%d unreadable image(s) or folder(s) skipped", n), exitSkipped)
	}
	return nil
}

// evalRecord is one line of an eval shard's results: what evaluate.Run keeps
// of an image, and where its exact map and mask are.
type evalRecord struct {
	shard.Common
	Path      string         `json:"path"`
	Name      string         `json:"name"`
	Type      string         `json:"type"`
	Label     int            `json:"label"`
	Score     *float32       `json:"score,omitempty"`
	Defect    *bool          `json:"defect,omitempty"`
	Boxes     []postproc.Box `json:"boxes,omitempty"` // in map pixels, as evaluate.Image
	W         int            `json:"w,omitempty"`     // map size
	H         int            `json:"h,omitempty"`
	MaskPath  string         `json:"mask,omitempty"`
	Error     string         `json:"error,omitempty"`
	Threshold *float32       `json:"threshold,omitempty"`
}

// evalShard scores the shard's test images that are not done yet into its
// results: per image the evaluation's record, and its map and ground-truth
// mask, exactly, in block files beside the results (padim collect computes
// the whole set's metrics from them).
func evalShard(c *cli.Context, sh *shard.Spec, sc *detector.Scorer, items []dataset.Item, keys []string, start time.Time) error {
	th := sc.Thresholds()
	sel := sh.Select(keys)
	res, id, err := openShard(c, sh, shard.Identity{Command: "eval", ListHash: shard.ListHash(keys), Total: len(items),
		Settings: settingsHash("eval", th, c.Int("open-radius")), Extra: map[string]any{"thresholds": th}}, keys, sel)
	if err != nil {
		return err
	}
	defer res.Close()
	var todo []int // positions in items
	for _, i := range sel {
		if !res.Done(keys[i]) {
			todo = append(todo, i)
		}
	}
	paths := make([]string, len(todo))
	for k, i := range todo {
		paths[k] = items[i].Path
	}
	pre := sc.Pipeline().Preprocess()
	prog := newProgress(c)
	nBad := 0
	err = sc.Score(c.Context, detector.FileInputs(paths), func(r *detector.Result) error {
		i := todo[r.Index]
		it := items[i]
		rec := evalRecord{Common: shard.Common{Index: i, Key: keys[i], ModelSHA256: id.ModelSHA256, Settings: id.Settings},
			Path: it.Path, Name: it.Name(), Type: it.Type, MaskPath: it.MaskPath}
		if it.Defective {
			rec.Label = 1
		}
		prog.update("evaluate", r.Index+1, len(todo))
		if r.Err != nil {
			rec.Path, rec.Error = r.Name, r.Err.Error()
			nBad++
			notef(c, "unreadable: %s", rec.Error)
			return res.Add(rec, true)
		}
		mask, err := evaluate.Mask(it, pre, r.W, r.H)
		if err != nil {
			return err
		}
		score := r.Score
		rec.Score, rec.Boxes, rec.W, rec.H = &score, r.Boxes, r.W, r.H
		if r.Thresholds != nil {
			d := r.Defect
			rec.Defect, rec.Threshold = &d, &r.Thresholds.Image
		}
		rec.Pixels = res.AddBlob(shard.PackPixels(r.Map, mask, it.Defective))
		return res.Add(rec, false)
	})
	prog.done()
	if err != nil {
		if ferr := res.Flush(); ferr != nil {
			notef(c, "%v", ferr)
		}
		return err
	}
	mk, err := res.Finish(len(sel))
	if err != nil {
		return err
	}
	printTimings(c, "eval", time.Since(start), sc.Pipeline().Timings)
	fmt.Printf("shard %s: %d test images, %d scored now, %d done before, %d unreadable → %s (padim collect %s gives the metrics)\n",
		sh, len(sel), len(todo), len(sel)-len(todo), mk.Errors, res.Path, c.String("out"))
	return nil
}

// evaluateWithReport runs the evaluation, writing the report when dir is set.
func evaluateWithReport(c *cli.Context, m *detector.Model, sc *detector.Scorer, items []dataset.Item, modelPath, dataPath, dir string) (*evaluate.Evaluation, string, error) {
	var rb *report.Builder
	var err error
	if dir != "" {
		if rb, err = report.New(dir, heatRange(m)); err != nil {
			return nil, "", err
		}
	}
	prog := newProgress(c)
	n := 0
	ev, err := evaluate.Run(c.Context, sc, items, true, func(r *detector.Result, it dataset.Item, gt []bool) error {
		n++
		prog.update("evaluate", n, len(items))
		if rb != nil {
			return rb.Add(r, it, gt)
		}
		return nil
	})
	prog.done()
	if err != nil || rb == nil {
		return ev, "", err
	}
	page, err := rb.Finish(ev, report.Info{
		Title: "padim evaluation", Model: modelPath, Data: dataPath, Calibration: m.Calibration,
		Details: [][2]string{{"backbone", m.BackboneName}, {"channels", fmt.Sprint(len(m.Channels), " of ", m.TotalChannels)},
			{"training images", fmt.Sprint(m.NTrain)}, {"input", fmt.Sprintf("%d² (resize %d, crop %d, tile %d)", m.Preprocess.InputSize(), m.Preprocess.Resize, m.Preprocess.Crop, m.Preprocess.Tile)}},
	})
	return ev, page, err
}

// fmtMetric prints a metric, "n/a" when undefined.
func fmtMetric(m evaluate.Metric) string {
	if math.IsNaN(float64(m)) {
		return "n/a"
	}
	return fmt.Sprintf("%.4f", float64(m))
}

func printMetrics(ev *evaluate.Evaluation) {
	f := fmtMetric
	rows := [][2]string{
		{"image AUROC", f(ev.ImageAUROC)},
		{"pixel AUROC", f(ev.PixelAUROC)},
		{"AUPRO@0.3", f(ev.AUPRO)},
		{"image F1 (best)", f(ev.ImageF1)},
		{"pixel F1 (best)", f(ev.PixelF1)},
		{"image F1 (calibrated)", f(ev.ImageF1Calibrated)},
		{"pixel F1 (calibrated)", f(ev.PixelF1Calibrated)},
		{"image TPR (calibrated)", f(ev.ImageTPR)},
		{"image FPR (calibrated)", f(ev.ImageFPR)},
		{"images / defective", fmt.Sprintf("%d / %d", ev.NImages, ev.NDefective)},
	}
	fmt.Println("metric                   value")
	fmt.Println("------------------------ --------")
	for _, r := range rows {
		fmt.Printf("%-24s %8s\n", r[0], r[1])
	}
	for _, s := range ev.Skipped {
		fmt.Fprintf(os.Stderr, "skipped %s: %s\n", s.Path, s.Error)
	}
}
