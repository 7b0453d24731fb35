package outputs

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func write(t *testing.T, p string) string {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// Each part of the rule refuses what it is for and lets the rest through;
// every refusal is a *Refusal naming the paths.
func TestRule(t *testing.T) {
	d := t.TempDir()
	in := write(t, filepath.Join(d, "in", "a.png"))
	data := filepath.Dir(in)
	if err := os.Symlink(in, filepath.Join(d, "link.png")); err != nil {
		t.Skip(err)
	}
	if err := os.Link(in, filepath.Join(d, "hard.png")); err != nil {
		t.Skip(err)
	}
	write(t, filepath.Join(d, "others", "photo.jpg"))
	write(t, filepath.Join(d, "mine", "x_heatmap.png"))
	os.MkdirAll(filepath.Join(d, "folder"), 0o755)
	for _, c := range []struct {
		name string
		rule Rule
		want string // "" : allowed
	}{
		{"an output that is an input", Rule{Inputs: []string{in}, Files: []string{in}}, "would overwrite the input " + in},
		{"through a symlink", Rule{Inputs: []string{in}, Files: []string{filepath.Join(d, "link.png")}}, "would overwrite the input"},
		{"a hard link", Rule{Inputs: []string{in}, Files: []string{filepath.Join(d, "hard.png")}}, "is the same file as the input"},
		{"another spelling of an input", Rule{Inputs: []string{in}, Files: []string{filepath.Join(d, "in", "..", "in", "a.png")}}, "would overwrite the input"},
		{"two outputs one file", Rule{Files: []string{filepath.Join(d, "o"), filepath.Join(d, ".", "o")}}, "are the same file"},
		{"an output that is a folder", Rule{Files: []string{filepath.Join(d, "folder")}}, "is a folder"},
		{"inside a data folder", Rule{Files: []string{filepath.Join(data, "m.padim")}, Data: []string{data}}, "inside the data folder " + data},
		{"an image among others' images", Rule{Files: []string{filepath.Join(d, "others", "y.png")}}, "holds images padim did not write (photo.jpg)"},
		{"an image among padim's pictures", Rule{Files: []string{filepath.Join(d, "mine", "y_mask.png")}}, ""},
		{"a missing folder", Rule{Files: []string{filepath.Join(d, "missing", "m.padim")}}, "does not exist"},
		{"a missing folder the run creates", Rule{Files: []string{filepath.Join(d, "missing", "m.padim")}, Mkdir: true}, ""},
		{"a plain new output", Rule{Inputs: []string{in}, Files: []string{filepath.Join(d, "m.padim"), ""}, Data: []string{data}}, ""},
	} {
		err := c.rule.Check()
		var r *Refusal
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: refused: %v", c.name, err)
		case c.want != "" && (!errors.As(err, &r) || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s: %v, want a refusal with %q", c.name, err, c.want)
		}
	}
}

// A folder a run fills must not be a file, overlap a data folder either
// way, or be a folder of images that is no report.
func TestCheckFolder(t *testing.T) {
	d := t.TempDir()
	data := filepath.Join(d, "data")
	write(t, filepath.Join(data, "a.png"))
	write(t, filepath.Join(d, "file"))
	write(t, filepath.Join(d, "imgs", "b.png"))
	write(t, filepath.Join(d, "old", "index.html"))
	write(t, filepath.Join(d, "old", "c.png"))
	for _, c := range []struct{ dir, want string }{
		{filepath.Join(d, "file"), "is a file"},
		{filepath.Join(data, "report"), "overlap: the report's files"},
		{d, "overlap"}, // the data folder inside the report's
		{filepath.Join(d, "imgs"), "holds images (b.png) but no report"},
		{filepath.Join(d, "old"), ""},
		{filepath.Join(d, "new"), ""},
	} {
		err := CheckFolder("report", c.dir, data)
		if (c.want == "") != (err == nil) || err != nil && !strings.HasPrefix(err.Error(), c.dir) || err != nil && !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.dir, err, c.want)
		}
	}
}
