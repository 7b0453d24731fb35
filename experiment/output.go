package experiment

import (
	"bytes"
	"encoding/csv"
	"fmt"
	"html/template"
	"image/color"
	"io"
	"math"
	"os"
	"path/filepath"
	"strconv"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"

	"github.com/padim/padim/detector/fileio/atomicfile"
	"github.com/padim/padim/evaluate"
)

// Paper holds the published numbers on MVTec wood (image AUROC, pixel AUROC,
// image F1) for the points the paper reports, keyed by sweep and label; NaN
// where it gives none. They are the reference for real MVTec wood with ImageNet
// weights, not for synthetic data or random weights.
var Paper = map[string]map[string][3]evaluate.Metric{
	"layers":    {"1+2+3": {0.998, 0.942, 0.983}},
	"methods":   {"spade": {0.983, 0.941, nan}, "patchcore": {0.992, 0.936, nan}, "padim": {0.998, 0.942, 0.983}},
	"backbones": {"resnet50_cbam": {0.998, 0.942, 0.983}},
}

var nan = evaluate.Metric(math.NaN())

func fmtMS(mean, std evaluate.Metric, repeats int) string {
	if math.IsNaN(float64(mean)) {
		return "n/a"
	}
	if repeats > 1 {
		return fmt.Sprintf("%.3f±%.3f", mean, std)
	}
	return fmt.Sprintf("%.4f", mean)
}

// Print writes the paper-shaped table.
func Print(w io.Writer, sweep string, rs []Result) {
	fmt.Fprintf(w, "%-16s %-16s %-15s %-15s %-15s %-15s %-15s %9s %11s %8s %6s  %s\n", sweep, "backbone", "image AUROC", "pixel AUROC", "AUPRO", "F1 best", "F1 calibrated", "fit s", "score s/img", "form", "d", "paper (img/pix/F1)")
	for _, r := range rs {
		ref := ""
		if p, ok := Paper[sweep][r.Label]; ok {
			ref = fmt.Sprintf("%.3f/%.3f/%s", p[0], p[1], fmtMS(p[2], 0, 1))
		}
		if r.Note != "" {
			fmt.Fprintf(w, "%-16s %-16s skipped: %s\n", r.Label, r.Backbone, r.Note)
			continue
		}
		n := len(r.Runs)
		d := "-"
		if r.Mean.Channels > 0 {
			d = strconv.Itoa(r.Mean.Channels)
		}
		fmt.Fprintf(w, "%-16s %-16s %-15s %-15s %-15s %-15s %-15s %9.2f %11.3f %8s %6s  %s\n", r.Label, r.Backbone,
			fmtMS(r.Mean.ImageAUROC, r.Std.ImageAUROC, n), fmtMS(r.Mean.PixelAUROC, r.Std.PixelAUROC, n), fmtMS(r.Mean.AUPRO, r.Std.AUPRO, n),
			fmtMS(r.Mean.F1, r.Std.F1, n), fmtMS(r.Mean.F1Calibrated, r.Std.F1Calibrated, n), float64(r.Mean.FitSeconds), float64(r.Mean.ScoreSeconds), r.Mean.Form, d, ref)
	}
	for _, r := range rs {
		if r.Note == "" && r.Dim > 0 && r.Mean.Channels > 0 && r.Mean.Channels < r.Dim {
			fmt.Fprintf(w, "note: %s %s asks for d = %d; the taps have %d channels, all kept\n", r.Label, r.Backbone, r.Dim, r.Mean.Channels)
		}
	}
}

// WriteCSV writes one line per run.
func WriteCSV(path, sweep string, rs []Result) error {
	return atomicfile.Write(path, func(w io.Writer) error {
		cw := csv.NewWriter(w)
		cw.Write([]string{"sweep", "point", "backbone", "method", "dim", "n", "seed", "image_auroc", "pixel_auroc", "aupro", "image_f1", "image_f1_calibrated", "fit_seconds", "score_seconds_per_image", "form", "channels"})
		f := func(v evaluate.Metric) string { return strconv.FormatFloat(float64(v), 'g', 6, 64) }
		for _, r := range rs {
			for _, x := range r.Runs {
				cw.Write([]string{sweep, r.Label, r.Backbone, r.Method, strconv.Itoa(r.Dim), strconv.Itoa(x.TrainedImages), strconv.FormatUint(x.Seed, 10),
					f(x.ImageAUROC), f(x.PixelAUROC), f(x.AUPRO), f(x.F1), f(x.F1Calibrated), f(x.FitSeconds), f(x.ScoreSeconds), x.Form, strconv.Itoa(x.Channels)})
			}
		}
		cw.Flush()
		return cw.Error()
	})
}

// WriteReport writes dir/index.html with the table and a plot of the metrics
// along the sweep (error bars with repeats).
func WriteReport(dir, sweep, title string, rs []Result) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	p := plot.New()
	p.Title.Text = title
	p.Y.Label.Text = "score"
	p.Y.Min, p.Y.Max = 0, 1.02
	var labels []string
	for _, r := range rs {
		labels = append(labels, r.Label)
	}
	p.NominalX(labels...)
	for k, m := range []struct {
		name string
		get  func(Run) evaluate.Metric
		col  color.Color
	}{
		{"image AUROC", func(r Run) evaluate.Metric { return r.ImageAUROC }, color.RGBA{200, 40, 40, 255}},
		{"pixel AUROC", func(r Run) evaluate.Metric { return r.PixelAUROC }, color.RGBA{40, 80, 200, 255}},
		{"AUPRO", func(r Run) evaluate.Metric { return r.AUPRO }, color.RGBA{40, 160, 60, 255}},
		{"F1 (calibrated)", func(r Run) evaluate.Metric { return r.F1Calibrated }, color.RGBA{120, 120, 120, 255}},
	} {
		var xy plotter.XYs
		var errs plotter.YErrors
		for i, r := range rs {
			if len(r.Runs) == 0 {
				continue
			}
			v, s := float64(m.get(r.Mean)), float64(m.get(r.Std))
			if math.IsNaN(v) {
				continue
			}
			xy = append(xy, plotter.XY{X: float64(i) + 0.04*float64(k-2), Y: v})
			errs = append(errs, struct{ Low, High float64 }{s, s})
		}
		if len(xy) == 0 {
			continue
		}
		l, pts, err := plotter.NewLinePoints(xy)
		if err != nil {
			return "", err
		}
		l.Color, pts.Color = m.col, m.col
		p.Add(l, pts)
		p.Legend.Add(m.name, l)
		if len(rs[0].Runs) > 1 {
			eb, err := plotter.NewYErrorBars(struct {
				plotter.XYer
				plotter.YErrorer
			}{xy, errs})
			if err == nil {
				eb.Color = m.col
				p.Add(eb)
			}
		}
	}
	p.Legend.Top, p.Legend.Left = false, true
	p.Add(plotter.NewGrid())
	wt, err := p.WriterTo(7*vg.Inch, 4*vg.Inch, "png")
	if err != nil {
		return "", err
	}
	if err := atomicfile.Write(filepath.Join(dir, sweep+".png"), func(w io.Writer) error { _, err := wt.WriteTo(w); return err }); err != nil {
		return "", err
	}
	var table bytes.Buffer
	Print(&table, sweep, rs)
	var buf bytes.Buffer
	if err := page.Execute(&buf, map[string]any{"Title": title, "Sweep": sweep, "Table": table.String()}); err != nil {
		return "", err
	}
	path := filepath.Join(dir, "index.html")
	return path, atomicfile.Write(path, func(w io.Writer) error { _, err := w.Write(buf.Bytes()); return err })
}

var page = template.Must(template.New("experiment").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{.Title}}</title>
<style>body{font-family:system-ui,sans-serif;margin:2em;color:#222}pre{background:#f6f6f6;padding:1em;overflow-x:auto}img{max-width:100%}</style>
</head><body>
<h1>{{.Title}}</h1>
<img src="{{.Sweep}}.png" alt="metrics along the sweep">
<pre>{{.Table}}</pre>
<p>The paper's numbers are for real MVTec wood with ImageNet weights; they are the reference, not the expectation, for other data or random weights.</p>
</body></html>
`))
