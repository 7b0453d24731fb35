package job

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/padim/padim/data/dataset"
	"github.com/padim/padim/shard"
)

// Target is one input image and where its outputs go.
type Target struct {
	Path string
	Rel  string // output path relative to the output folder, without extension
	Key  string // the path relative to the data root, with its extension and forward slashes: the shard split key
}

// TargetList is what the arguments of a score run expand to.
type TargetList struct {
	Targets []Target
	Skipped []dataset.FileError // folders that could not be read
	Dirs    []string            // the folders given: data folders, where nothing is written
	Notes   []string            // inputs left out as the same file as another
}

// Paths are the targets' input paths.
func Paths(ts []Target) []string {
	paths := make([]string, len(ts))
	for i, t := range ts {
		paths[i] = t.Path
	}
	return paths
}

// Keys are the targets' split keys.
func Keys(ts []Target) []string {
	keys := make([]string, len(ts))
	for i, t := range ts {
		keys[i] = t.Key
	}
	return keys
}

// Targets expands the arguments like ExpandTargets, with every output name
// distinct; an unreadable folder is an error.
func Targets(args []string) ([]Target, error) {
	l, err := ExpandTargets(args, true)
	if err != nil {
		return nil, err
	}
	if len(l.Skipped) > 0 {
		return nil, l.Skipped[0]
	}
	return l.Targets, nil
}

// ExpandTargets expands the arguments: folders recursively (outputs mirror
// the tree below the folder; with several folders, below their common
// parent, so each keeps its own tree), files by name. Each file is scored
// once: the same file under another name (a link, a relative and an
// absolute path) is left out with a note. With outputs, two inputs with one
// output name are an error. Sub-folders that cannot be read are skipped and
// listed.
func ExpandTargets(args []string, outputs bool) (*TargetList, error) {
	l := &TargetList{}
	for _, a := range args {
		if st, err := os.Stat(a); err == nil && st.IsDir() {
			abs, _ := filepath.Abs(a)
			l.Dirs = append(l.Dirs, abs)
		}
	}
	root := commonParent(l.Dirs)
	var ts []Target
	seen := map[string]string{}
	add := func(path, rel string) error {
		key := filepath.ToSlash(rel)
		rel = strings.TrimSuffix(rel, filepath.Ext(rel))
		if prev, ok := seen[rel]; ok && outputs {
			return fmt.Errorf("%s and %s would write the same output %s; score them in separate runs or folders", prev, path, rel)
		}
		seen[rel] = path
		ts = append(ts, Target{path, rel, key})
		return nil
	}
	for _, a := range args {
		st, err := os.Stat(a)
		if err != nil {
			return nil, err
		}
		if !st.IsDir() {
			if err := add(a, filepath.Base(a)); err != nil {
				return nil, err
			}
			continue
		}
		if err := l.walk(a, root, add); err != nil {
			return nil, err
		}
	}
	for _, i := range FirstOfEachFile(Paths(ts), func(path, same string) {
		l.Notes = append(l.Notes, fmt.Sprintf("%s is the same file as %s: scored once", path, same))
	}) {
		l.Targets = append(l.Targets, ts[i])
	}
	return l, nil
}

// commonParent is the folder above every one of dirs (absolute), "" for
// fewer than two.
func commonParent(dirs []string) string {
	if len(dirs) < 2 {
		return ""
	}
	root := dirs[0]
	for _, d := range dirs[1:] {
		for !strings.HasPrefix(d+string(filepath.Separator), root+string(filepath.Separator)) && root != filepath.Dir(root) {
			root = filepath.Dir(root)
		}
	}
	return root
}

// walk adds the images below folder a, named relative to root (or to a).
func (l *TargetList) walk(a, root string, add func(path, rel string) error) error {
	w, err := dataset.Walk(a)
	if err != nil {
		return err
	}
	for _, d := range w.Duplicates {
		l.Notes = append(l.Notes, fmt.Sprintf("%s is the same file as %s: scored once", d.Path, d.Same))
	}
	l.Skipped = append(l.Skipped, w.Skipped...)
	if len(w.Files) == 0 && len(w.Skipped) == 0 {
		return fmt.Errorf("no images in %s", a)
	}
	base := a
	if root != "" {
		base = root
	}
	for _, f := range w.Files {
		rel, err := filepath.Rel(base, f)
		if err != nil || root != "" {
			abs, _ := filepath.Abs(f)
			rel, _ = filepath.Rel(root, abs)
		}
		if err := add(f, rel); err != nil {
			return err
		}
	}
	return nil
}

// EscapeError is a manifest that lists a path outside its own folder while
// maps named after its paths are to be written: they would land outside the
// output folder.
type EscapeError struct{ List, Key string }

func (e *EscapeError) Error() string {
	return fmt.Sprintf("%s lists %s, outside its folder: maps named after it would land outside the output folder", e.List, e.Key)
}

// ManifestTargets reads an input list into score targets: outputs are named
// after the listed paths, which must then stay inside the list's folder
// (withMaps).
func ManifestTargets(path string, withMaps bool) ([]Target, error) {
	es, err := shard.ReadManifest(path)
	if err != nil {
		return nil, err
	}
	ts := make([]Target, len(es))
	seen := map[string]string{}
	for i, e := range es {
		rel := strings.TrimSuffix(filepath.FromSlash(e.Key), filepath.Ext(e.Key))
		if withMaps && shard.EscapesRoot(e.Key) {
			return nil, &EscapeError{path, e.Key}
		}
		if prev, ok := seen[rel]; ok {
			return nil, fmt.Errorf("%s and %s would write the same output %s; score them in separate runs", prev, e.Key, rel)
		}
		seen[rel] = e.Key
		ts[i] = Target{Path: e.Path, Rel: rel, Key: e.Key}
	}
	return ts, nil
}

// FirstOfEachFile returns the positions of paths that name a file not named
// before (by identity: links, hard links and other spellings of one path
// count once), calling dup for each one left out. Paths that cannot be
// stat'ed are kept (reading them reports why).
func FirstOfEachFile(paths []string, dup func(path, same string)) []int {
	keep := make([]int, 0, len(paths))
	type seen struct {
		st   os.FileInfo
		path string
	}
	bySize := map[int64][]seen{}
	for i, p := range paths {
		st, err := os.Stat(p)
		if err != nil || !st.Mode().IsRegular() {
			keep = append(keep, i)
			continue
		}
		same := ""
		for _, s := range bySize[st.Size()] {
			if os.SameFile(st, s.st) {
				same = s.path
				break
			}
		}
		if same != "" {
			dup(p, same)
			continue
		}
		bySize[st.Size()] = append(bySize[st.Size()], seen{st, p})
		keep = append(keep, i)
	}
	return keep
}
