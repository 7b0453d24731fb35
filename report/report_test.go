package report

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/net/html"

	"github.com/padim/padim/detector"
	"github.com/padim/padim/detector/fileio/picture"
	"github.com/padim/padim/evaluate"
)

// knownEvaluation is a test set of 4 images whose metrics are exact: the
// defective ones score above the good ones (image AUROC 1).
func knownEvaluation(t *testing.T) *evaluate.Evaluation {
	var tl evaluate.Tally
	for i, s := range []float32{1, 2, 8, 9} {
		label := 0
		if i >= 2 {
			label = 1
		}
		m := []float32{s, s, 0, 0}
		mask := []bool{label == 1, label == 1, false, false}
		tl.Add(evaluate.Image{Name: string(rune('a' + i)), Label: label, Score: s}, m, mask, 2, 2)
	}
	tl.Skip(evaluate.Skipped{Path: "bad.png", Error: "truncated"})
	ev := tl.Finish(&detector.Thresholds{Image: 5, Pixel: 5})
	if ev.ImageAUROC != 1 || ev.ImageF1Calibrated != 1 {
		t.Fatalf("the known set: AUROC %v, F1 %v", ev.ImageAUROC, ev.ImageF1Calibrated)
	}
	return ev
}

// cells parses an HTML page and returns the text of every table cell, in
// order; a page that does not parse fails the test.
func cells(t *testing.T, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	doc, err := html.Parse(f)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	var text func(n *html.Node) string
	text = func(n *html.Node) string {
		if n.Type == html.TextNode {
			return n.Data
		}
		var b strings.Builder
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			b.WriteString(text(c))
		}
		return b.String()
	}
	var walk func(n *html.Node)
	walk = func(n *html.Node) {
		if n.Type == html.ElementNode && (n.Data == "td" || n.Data == "th") {
			out = append(out, strings.TrimSpace(text(n)))
		}
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			walk(c)
		}
	}
	walk(doc)
	return out
}

// The report names every metric beside its value, the skipped file, and
// writes its plots.
func TestReportTable(t *testing.T) {
	dir := t.TempDir()
	ev := knownEvaluation(t)
	b, err := New(dir, picture.Range{})
	if err != nil {
		t.Fatal(err)
	}
	page, err := b.Finish(ev, Info{Title: "t", Model: "m.padim", Data: "d", Calibration: &detector.Calibration{TargetFPR: 0.01, Conformal: true, ExpectedFPR: 0.008}})
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(cells(t, page), "|")
	for _, want := range []string{"image AUROC|1.0000", "pixel AUROC|1.0000", "AUPRO (FPR ≤ 0.3)|", "image F1 (best threshold)|1.0000",
		"image F1 (calibrated)|1.0000", "image TPR / FPR (calibrated)|1.0000 / 0.0000", "pixel F1 (calibrated)|", "thresholds image / pixel|5.0000 / 5.0000",
		"images (defective)|4 (2)", "target / expected / measured here|1 % / 0.8 % / 0 %"} {
		if !strings.Contains(got, want) {
			t.Errorf("the table lacks %q:\n%s", want, got)
		}
	}
	raw, _ := os.ReadFile(page)
	if !strings.Contains(string(raw), "bad.png") || !strings.Contains(string(raw), "truncated") {
		t.Error("the skipped file is not named")
	}
	for _, p := range []string{"roc.png", "hist.png"} {
		if st, err := os.Stat(filepath.Join(dir, p)); err != nil || st.Size() == 0 {
			t.Errorf("%s: %v", p, err)
		}
	}
}

// The comparison has one row per CompareRows metric and one column per
// evaluation, "n/a" where a metric is undefined.
func TestCompareTable(t *testing.T) {
	ev := knownEvaluation(t)
	empty := (&evaluate.Tally{}).Finish(nil)
	page, err := Compare(t.TempDir(), "cmp", "intro", []Column{{Name: "A", Link: "a/index.html", Eval: ev}, {Name: "B", Link: "b/index.html", Eval: empty}})
	if err != nil {
		t.Fatal(err)
	}
	cs := cells(t, page)
	if len(cs) != 3*(len(CompareRows)+1) {
		t.Fatalf("%d cells for %d rows: %v", len(cs), len(CompareRows), cs)
	}
	for i, r := range CompareRows {
		row := cs[3*(i+1) : 3*(i+2)]
		if row[0] != r.Name || row[1] != r.Get(ev).Format() || row[2] != "n/a" {
			t.Errorf("row %d: %v", i, row)
		}
	}
}
