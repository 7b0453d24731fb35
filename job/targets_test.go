package job

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func touch(t *testing.T, p string) string {
	t.Helper()
	os.MkdirAll(filepath.Dir(p), 0o755)
	if err := os.WriteFile(p, []byte(p), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// Folders expand recursively with outputs mirroring their trees (several
// folders below their common parent), files by name; one file under two
// names is scored once with a note; two outputs of one name are refused.
func TestExpandTargets(t *testing.T) {
	d := t.TempDir()
	a := touch(t, filepath.Join(d, "lineA", "x.png"))
	touch(t, filepath.Join(d, "lineA", "sub", "y.jpg"))
	touch(t, filepath.Join(d, "lineB", "x.png"))
	os.Symlink(a, filepath.Join(d, "lineB", "link.png"))
	l, err := ExpandTargets([]string{filepath.Join(d, "lineA"), filepath.Join(d, "lineB")}, true)
	if err != nil {
		t.Fatal(err)
	}
	var rels []string
	for _, tg := range l.Targets {
		rels = append(rels, tg.Rel)
	}
	slices.Sort(rels)
	want := []string{filepath.Join("lineA", "sub", "y"), filepath.Join("lineA", "x"), filepath.Join("lineB", "x")}
	if !slices.Equal(rels, want) || len(l.Dirs) != 2 {
		t.Fatalf("targets %v (want %v), dirs %v", rels, want, l.Dirs)
	}
	if len(l.Notes) != 1 || !strings.Contains(l.Notes[0], "is the same file as") {
		t.Fatalf("notes %v", l.Notes)
	}
	one, err := ExpandTargets([]string{filepath.Join(d, "lineA")}, true)
	if err != nil || len(one.Targets) != 2 || one.Targets[0].Key != "sub/y.jpg" && one.Targets[1].Key != "sub/y.jpg" {
		t.Fatalf("one folder: %+v %v", one, err)
	}
	touch(t, filepath.Join(d, "c", "g.png"))
	touch(t, filepath.Join(d, "c", "g.jpg"))
	if _, err := Targets([]string{filepath.Join(d, "c", "g.png"), filepath.Join(d, "c", "g.jpg")}); err == nil || !strings.Contains(err.Error(), "would write the same output") {
		t.Fatalf("two outputs named g: %v", err)
	}
	if l, err := ExpandTargets([]string{filepath.Join(d, "c", "g.png"), filepath.Join(d, "c", "g.jpg")}, false); err != nil || len(l.Targets) != 2 {
		t.Fatalf("without outputs: %v", err)
	}
	os.MkdirAll(filepath.Join(d, "empty"), 0o755)
	if _, err := ExpandTargets([]string{filepath.Join(d, "empty")}, false); err == nil || !strings.Contains(err.Error(), "no images in") {
		t.Fatalf("an empty folder: %v", err)
	}
}

// A manifest whose paths leave its folder is refused when maps are named
// after them (EscapeError), and taken without maps.
func TestManifestTargets(t *testing.T) {
	d := t.TempDir()
	touch(t, filepath.Join(d, "x.png"))
	list := touch(t, filepath.Join(d, "sub", "list.txt"))
	os.WriteFile(list, []byte("../x.png\n"), 0o644)
	var esc *EscapeError
	if _, err := ManifestTargets(list, true); !errors.As(err, &esc) || esc.Key != "../x.png" {
		t.Fatalf("with maps: %v", err)
	}
	ts, err := ManifestTargets(list, false)
	if err != nil || len(ts) != 1 || ts[0].Key != "../x.png" {
		t.Fatalf("without maps: %+v %v", ts, err)
	}
}
