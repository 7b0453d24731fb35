package report

import (
	"bytes"
	"html/template"
	"io"
	"path/filepath"

	"github.com/padim/padim/detector/fileio/atomicfile"
	"github.com/padim/padim/evaluate"
)

// Column is one evaluation in a side-by-side comparison.
type Column struct {
	Name string               // e.g. the backbone
	Link string               // its own report, relative to the comparison page
	Note string               // one line under the name
	Eval *evaluate.Evaluation //
}

// CompareRows are the metrics a comparison shows, in order.
var CompareRows = []struct {
	Name string
	Get  func(*evaluate.Evaluation) evaluate.Metric
}{
	{"image AUROC", func(e *evaluate.Evaluation) evaluate.Metric { return e.ImageAUROC }},
	{"pixel AUROC", func(e *evaluate.Evaluation) evaluate.Metric { return e.PixelAUROC }},
	{"AUPRO (FPR ≤ 0.3)", func(e *evaluate.Evaluation) evaluate.Metric { return e.AUPRO }},
	{"image F1 (best threshold)", func(e *evaluate.Evaluation) evaluate.Metric { return e.ImageF1 }},
	{"image F1 (calibrated)", func(e *evaluate.Evaluation) evaluate.Metric { return e.ImageF1Calibrated }},
	{"image TPR (calibrated)", func(e *evaluate.Evaluation) evaluate.Metric { return e.ImageTPR }},
	{"image FPR (calibrated)", func(e *evaluate.Evaluation) evaluate.Metric { return e.ImageFPR }},
	{"pixel F1 (best threshold)", func(e *evaluate.Evaluation) evaluate.Metric { return e.PixelF1 }},
	{"pixel F1 (calibrated)", func(e *evaluate.Evaluation) evaluate.Metric { return e.PixelF1Calibrated }},
}

// Compare writes dir/index.html: the metrics of several evaluations side by
// side, each column linking to its own report. It returns the page's path.
func Compare(dir, title, intro string, cols []Column) (string, error) {
	f := evaluate.Metric.Format
	var rows [][]string
	for _, r := range CompareRows {
		row := []string{r.Name}
		for _, c := range cols {
			row = append(row, f(r.Get(c.Eval)))
		}
		rows = append(rows, row)
	}
	var buf bytes.Buffer
	if err := comparePage.Execute(&buf, map[string]any{"Title": title, "Intro": intro, "Cols": cols, "Rows": rows}); err != nil {
		return "", err
	}
	path := filepath.Join(dir, "index.html")
	return path, atomicfile.Write(path, func(w io.Writer) error { _, err := w.Write(buf.Bytes()); return err })
}

var comparePage = template.Must(template.New("compare").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{.Title}}</title>
<style>
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 10px;text-align:left}
td+td{font-family:monospace;text-align:right}
</style></head><body>
<h1>{{.Title}}</h1>
<p>{{.Intro}}</p>
<table><tr><th>metric</th>{{range .Cols}}<th><a href="{{.Link}}">{{.Name}}</a><br><small>{{.Note}}</small></th>{{end}}</tr>
{{range .Rows}}<tr>{{range .}}<td>{{.}}</td>{{end}}</tr>
{{end}}</table>
<p>Each column links to its own report: ROC curves, score histograms and every test image's heatmap, overlay and boxes.</p>
</body></html>
`))
