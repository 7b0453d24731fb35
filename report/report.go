// Package report writes an evaluation as a self-contained HTML page: the metrics
// table, image and pixel ROC curves, score histograms of good and defective
// images, and per-image heatmaps, overlays, predicted boxes and ground truth.
package report

import (
	"bytes"
	"fmt"
	"html/template"
	"image"
	"image/color"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"

	"github.com/padim/padim/data/dataset"
	"github.com/padim/padim/detector"
	"github.com/padim/padim/detector/fileio/atomicfile"
	"github.com/padim/padim/detector/fileio/picture"
	"github.com/padim/padim/detector/imageio"
	"github.com/padim/padim/detector/postproc"
	"github.com/padim/padim/evaluate"
)

// Thumb is the largest side of the per-image pictures in the report.
const Thumb = 256

// Builder collects per-image pictures while an evaluation runs, then writes the page.
type Builder struct {
	Dir   string
	Range picture.Range
	rows  []row
}

type row struct {
	Name, Type                        string
	Score                             float32
	Label, Verdict                    string
	Photo, Heat, Overlay, Boxes, Mask string
	NBoxes                            int
}

// New prepares dir (created if needed) for a report.
func New(dir string, rg picture.Range) (*Builder, error) {
	if err := os.MkdirAll(filepath.Join(dir, "images"), 0o755); err != nil {
		return nil, err
	}
	return &Builder{Dir: dir, Range: rg}, nil
}

// Add writes one image's pictures; r nil records a skipped file.
func (b *Builder) Add(r *detector.Result, it dataset.Item, gt []bool) error {
	if r == nil {
		return nil
	}
	stem := strings.TrimSuffix(filepath.Base(it.Path), filepath.Ext(it.Path))
	base := fmt.Sprintf("%s_%s", it.Type, stem)
	photo := picture.Photo(r.Image)
	if photo.Rect.Dx() != r.W || photo.Rect.Dy() != r.H {
		photo = picture.Photo(r.Image.Resize(r.W, r.H))
	}
	rg := b.Range.For(r.Map)
	heat := picture.Heatmap(r.Map, r.W, r.H, rg)
	pics := map[string]image.Image{
		"photo":   photo,
		"heat":    heat,
		"overlay": picture.Overlay(photo, heat, r.Map, rg),
		"boxes":   picture.Boxes(photo, r.Boxes),
		"mask":    picture.Mask(&postproc.Mask{W: r.W, H: r.H, Pix: gt}, r.W, r.H),
	}
	names := map[string]string{}
	for k, img := range pics {
		name := "images/" + base + "_" + k + ".png"
		if err := picture.SavePNG(filepath.Join(b.Dir, name), shrink(img)); err != nil {
			return err
		}
		names[k] = name
	}
	verdict := "—"
	if r.Thresholds != nil {
		verdict = "good"
		if r.Defect {
			verdict = "DEFECT"
		}
	}
	label := "good"
	if it.Defective {
		label = "defect (" + it.Type + ")"
	}
	b.rows = append(b.rows, row{Name: it.Name(), Type: it.Type, Score: r.Score, Label: label, Verdict: verdict,
		Photo: names["photo"], Heat: names["heat"], Overlay: names["overlay"], Boxes: names["boxes"], Mask: names["mask"], NBoxes: len(r.Boxes)})
	return nil
}

// shrink scales an image so its larger side is at most Thumb.
func shrink(img image.Image) image.Image {
	w, h := img.Bounds().Dx(), img.Bounds().Dy()
	if max(w, h) <= Thumb {
		return img
	}
	s := float64(Thumb) / float64(max(w, h))
	p := imageio.FromImage(img).Resize(max(1, int(float64(w)*s)), max(1, int(float64(h)*s)))
	return picture.Photo(p)
}

// Info is shown at the top of the page.
type Info struct {
	Title, Model, Data string
	Details            [][2]string
	Calibration        *detector.Calibration // the model's, when it has thresholds: its target and expected false-alarm rates are shown beside the measured one
}

// Finish writes the plots and index.html; it returns the page's path.
func (b *Builder) Finish(ev *evaluate.Evaluation, info Info) (string, error) {
	if err := savePlot(filepath.Join(b.Dir, "roc.png"), rocPlot(ev)); err != nil {
		return "", err
	}
	hp, err := histPlot(ev)
	if err != nil {
		return "", err
	}
	if err := savePlot(filepath.Join(b.Dir, "hist.png"), hp); err != nil {
		return "", err
	}
	f := evaluate.Metric.Format
	table := [][2]string{
		{"image AUROC", f(ev.ImageAUROC)}, {"pixel AUROC", f(ev.PixelAUROC)}, {"AUPRO (FPR ≤ 0.3)", f(ev.AUPRO)},
		{"image F1 (best threshold)", f(ev.ImageF1)}, {"pixel F1 (best threshold)", f(ev.PixelF1)},
		{"image F1 (calibrated)", f(ev.ImageF1Calibrated)}, {"image TPR / FPR (calibrated)", f(ev.ImageTPR) + " / " + f(ev.ImageFPR)},
		{"pixel F1 (calibrated)", f(ev.PixelF1Calibrated)},
		{"thresholds image / pixel", f(ev.ImageThreshold) + " / " + f(ev.PixelThreshold)},
		{"images (defective)", fmt.Sprintf("%d (%d)", ev.NImages, ev.NDefective)},
	}
	if c := info.Calibration; c != nil {
		target := "not recorded"
		if c.TargetFPR > 0 {
			target = fmt.Sprintf("%.3g %%", 100*c.TargetFPR)
			if !c.Conformal {
				target += " (nominal: a quantile rule)"
			}
		}
		measured := "n/a"
		if !math.IsNaN(float64(ev.ImageFPR)) {
			measured = fmt.Sprintf("%.3g %%", 100*float64(ev.ImageFPR))
		}
		table = append(table, [2]string{"false alarms on good images: target / expected / measured here",
			fmt.Sprintf("%s / %.3g %% / %s", target, 100*c.ExpectedFPR, measured)})
	}
	var buf bytes.Buffer
	err = page.Execute(&buf, map[string]any{"Info": info, "Table": table, "Rows": b.rows, "Skipped": ev.Skipped})
	if err != nil {
		return "", err
	}
	path := filepath.Join(b.Dir, "index.html")
	return path, atomicfile.Write(path, func(w io.Writer) error { _, err := w.Write(buf.Bytes()); return err })
}

func savePlot(path string, p *plot.Plot) error {
	wt, err := p.WriterTo(6*vg.Inch, 4*vg.Inch, "png")
	if err != nil {
		return err
	}
	return atomicfile.Write(path, func(w io.Writer) error { _, err := wt.WriteTo(w); return err })
}

func rocPlot(ev *evaluate.Evaluation) *plot.Plot {
	p := plot.New()
	p.Title.Text = "ROC"
	p.X.Label.Text, p.Y.Label.Text = "false-positive rate", "true-positive rate"
	p.X.Min, p.X.Max, p.Y.Min, p.Y.Max = 0, 1, 0, 1
	add := func(c [2][]float64, name string, col color.Color) {
		if len(c[0]) == 0 {
			return
		}
		xy := make(plotter.XYs, len(c[0]))
		for i := range xy {
			xy[i].X, xy[i].Y = c[0][i], c[1][i]
		}
		l, err := plotter.NewLine(xy)
		if err != nil {
			return
		}
		l.Color, l.Width = col, vg.Points(2)
		p.Add(l)
		p.Legend.Add(name, l)
	}
	add(ev.ImageROC, fmt.Sprintf("image (AUROC %.3f)", float64(ev.ImageAUROC)), color.RGBA{200, 40, 40, 255})
	add(ev.PixelROC, fmt.Sprintf("pixel (AUROC %.3f)", float64(ev.PixelAUROC)), color.RGBA{40, 80, 200, 255})
	p.Legend.Top, p.Legend.Left = false, false
	p.Add(plotter.NewGrid())
	return p
}

func histPlot(ev *evaluate.Evaluation) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = "image scores"
	p.X.Label.Text, p.Y.Label.Text = "score", "images"
	var good, bad plotter.XYs
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, im := range ev.PerImage {
		v := float64(im.Score)
		lo, hi = math.Min(lo, v), math.Max(hi, v)
		if im.Label == 1 {
			bad = append(bad, plotter.XY{X: v, Y: 1})
		} else {
			good = append(good, plotter.XY{X: v, Y: 1})
		}
	}
	const bins = 24
	for _, s := range []struct {
		v    plotter.XYs
		name string
		col  color.Color
	}{{good, "good", color.RGBA{40, 160, 60, 160}}, {bad, "defective", color.RGBA{200, 40, 40, 160}}} {
		if len(s.v) == 0 {
			continue
		}
		// zero-weight points at the global extremes give both classes the same bins
		s.v = append(s.v, plotter.XY{X: lo, Y: 0}, plotter.XY{X: hi, Y: 0})
		h, err := plotter.NewHistogram(s.v, bins)
		if err != nil {
			return nil, err
		}
		h.FillColor, h.LineStyle.Width = s.col, 0
		p.Add(h)
		p.Legend.Add(s.name, h)
	}
	if t := float64(ev.ImageThreshold); !math.IsNaN(t) {
		l, err := plotter.NewLine(plotter.XYs{{X: t, Y: 0}, {X: t, Y: float64(max(len(good), len(bad))) / 2}})
		if err == nil {
			l.Color, l.Width, l.Dashes = color.Black, vg.Points(1.5), []vg.Length{vg.Points(4), vg.Points(3)}
			p.Add(l)
			p.Legend.Add("calibrated threshold", l)
		}
	}
	if !math.IsInf(lo, 0) {
		p.X.Min, p.X.Max = lo-0.02*(hi-lo+1e-9), hi+0.02*(hi-lo+1e-9)
	}
	return p, nil
}

var page = template.Must(template.New("report").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{.Info.Title}}</title>
<style>
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}
.metrics td:nth-child(2){font-family:monospace;text-align:right}
.plots img{max-width:48%;margin-right:1%}
.imgs td img{width:160px;height:auto;display:block}
.DEFECT{color:#b00;font-weight:bold}.good{color:#070}
</style></head><body>
<h1>{{.Info.Title}}</h1>
<p>model <code>{{.Info.Model}}</code> · data <code>{{.Info.Data}}</code></p>
{{if .Info.Details}}<p>{{range .Info.Details}}{{index . 0}}: <code>{{index . 1}}</code> · {{end}}</p>{{end}}
<h2>Metrics</h2>
<table class="metrics">{{range .Table}}<tr><td>{{index . 0}}</td><td>{{index . 1}}</td></tr>{{end}}</table>
<h2>Curves</h2>
<div class="plots"><img src="roc.png" alt="ROC curves"><img src="hist.png" alt="score histograms"></div>
{{if .Skipped}}<h2>Skipped files</h2><ul>{{range .Skipped}}<li><code>{{.Path}}</code>: {{.Error}}</li>{{end}}</ul>{{end}}
<h2>Images</h2>
<table class="imgs"><tr><th>image</th><th>score · verdict</th><th>photo</th><th>heatmap</th><th>overlay</th><th>predicted boxes</th><th>ground truth</th></tr>
{{range .Rows}}<tr><td><code>{{.Name}}</code><br>{{.Label}}</td><td>{{printf "%.3f" .Score}}<br><span class="{{.Verdict}}">{{.Verdict}}</span>{{if .NBoxes}}<br>{{.NBoxes}} box(es){{end}}</td>
<td><img src="{{.Photo}}" alt=""></td><td><img src="{{.Heat}}" alt=""></td><td><img src="{{.Overlay}}" alt=""></td><td><img src="{{.Boxes}}" alt=""></td><td><img src="{{.Mask}}" alt=""></td></tr>
{{end}}</table>
</body></html>
`))
