package main

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/padim/padim/detector"
	"github.com/padim/padim/detector/dataset"
	"github.com/padim/padim/evaluate"
	"github.com/padim/padim/report"
)

func evalCommand() *cli.Command {
	return &cli.Command{
		Name:      "eval",
		Usage:     "evaluate a model on an MVTec-layout category: AUROC, AUPRO, F1, TPR/FPR",
		UsageText: "padim eval --model M.padim --data CATEGORY_DIR [--json] [--report DIR]",
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "data", Required: true, Usage: "category folder with test/<type>/ and ground_truth/<type>/"},
			&cli.BoolFlag{Name: "json", Usage: "print the metrics as JSON"},
			&cli.StringFlag{Name: "report", Usage: "write an HTML report (ROC curves, histograms, per-image heatmaps) into this folder"},
		}, scoringFlags()...),
		Action: evalAction,
	}
}

func evalAction(c *cli.Context) error {
	items, err := dataset.TestSet(c.String("data"))
	if err != nil {
		return err
	}
	if r := c.String("report"); r != "" {
		data, rep := canonical(c.String("data")), canonical(r)
		if rep == data || strings.HasPrefix(rep, data+string(filepath.Separator)) || strings.HasPrefix(data, rep+string(filepath.Separator)) {
			return usageError("--report %s and --data %s overlap: the report's pictures would mix with the test images; give a folder outside the data", r, c.String("data"))
		}
		if st, err := os.Stat(r); err == nil && !st.IsDir() {
			return usageError("--report %s is a file: give a folder", r)
		}
	}
	start := time.Now()
	m, sc, closeAll, err := loadScorer(c, thresholdFlag(c), c.Int("open-radius"), c.String("report") != "")
	if err != nil {
		return err
	}
	defer closeAll()
	ev, page, err := evaluateWithReport(c, m, sc, items, c.String("model"), c.String("data"), c.String("report"))
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
	if len(ev.Skipped) > 0 {
		return cli.Exit(fmt.Sprintf("%d unreadable image(s) skipped", len(ev.Skipped)), exitSkipped)
	}
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
		Title: "padim evaluation", Model: modelPath, Data: dataPath,
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
