// Package outputs is the one rule on what a run may write, checked before
// any work:
//
//  1. no output is an input (links resolved, hard links too), nor another
//     output of the run, nor an existing folder;
//  2. nothing is written inside a data folder, and no output folder
//     overlaps one: a later run would take what landed there for data;
//  3. no image is written into a folder that holds images padim did not
//     write (a folder of data given file by file): the same reason;
//  4. every output can be written: its folder exists (or, for trees the run
//     creates, its nearest existing ancestor) and is writable, so that a run
//     does not find out after its work.
//
// Every refusal names both paths (a *Refusal).
package outputs

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/padim/padim/data/dataset"
	"github.com/padim/padim/detector/fileio/atomicfile"
)

// Refusal is an output the rule refuses, and why.
type Refusal struct{ Msg string }

func (e *Refusal) Error() string { return e.Msg }

func refuse(format string, a ...any) error { return &Refusal{fmt.Sprintf(format, a...)} }

// PictureSuffixes name the images padim writes beside each other per
// input (score's png maps); a folder holding only these holds no data.
var PictureSuffixes = []string{"_boxes.png", "_heatmap.png", "_mask.png", "_overlay.png"}

// Rule is one run's outputs and what they must stay clear of.
type Rule struct {
	Inputs []string // files the run reads
	Files  []string // files it writes ("" entries are ignored)
	Data   []string // data folders: nothing is written inside them
	Mkdir  bool     // the run creates the outputs' folders
}

// Canonical resolves a path's links (its folder's, when the file does not
// exist yet).
func Canonical(p string) string {
	abs, err := filepath.Abs(p)
	if err != nil {
		abs = filepath.Clean(p)
	}
	if r, err := filepath.EvalSymlinks(abs); err == nil {
		return r
	}
	if r, err := filepath.EvalSymlinks(filepath.Dir(abs)); err == nil {
		return filepath.Join(r, filepath.Base(abs))
	}
	return abs
}

// Within reports whether the canonical path p is dir or below it.
func Within(p, dir string) bool {
	return p == dir || dir == string(filepath.Separator) || strings.HasPrefix(p, dir+string(filepath.Separator))
}

// canonicals maps the canonical form of each path given to the path.
func canonicals(paths []string) map[string]string {
	m := map[string]string{}
	for _, p := range paths {
		if p != "" {
			m[Canonical(p)] = p
		}
	}
	return m
}

// Check applies the rule.
func (r Rule) Check() error {
	outs, err := r.distinct()
	if err != nil {
		return err
	}
	data := canonicals(r.Data)
	type folder struct{ any, image string } // an output in the folder, an image output in it
	folders := map[string]*folder{}         // by canonical path
	var order []string
	for _, o := range outs {
		c := Canonical(o)
		for cd, d := range data {
			if Within(c, cd) {
				return refuse("output %s is inside the data folder %s: padim writes nothing into its data (a later run would take it for input); give a path outside %s", o, d, d)
			}
		}
		dir := filepath.Dir(c)
		f := folders[dir]
		if f == nil {
			f = &folder{any: o}
			folders[dir] = f
			order = append(order, dir)
		}
		if f.image == "" && dataset.IsImage(o) {
			f.image = o
		}
	}
	for _, dir := range order {
		f := folders[dir]
		if f.image != "" {
			if err := imagesOfOthers(dir, f.image); err != nil {
				return err
			}
		}
		if err := atomicfile.CheckWritable(f.any, r.Mkdir); err != nil {
			return &Refusal{err.Error()}
		}
	}
	return nil
}

// distinct checks that no output is an input, another output or a folder,
// and returns the outputs given.
func (r Rule) distinct() ([]string, error) {
	in := canonicals(r.Inputs)
	out := map[string]string{}
	var outs []string
	for _, o := range r.Files {
		if o == "" {
			continue
		}
		c := Canonical(o)
		if p, ok := in[c]; ok {
			return nil, refuse("output %s would overwrite the input %s: choose another output path", o, p)
		}
		if p, ok := out[c]; ok {
			return nil, refuse("outputs %s and %s are the same file: give them different paths", p, o)
		}
		out[c] = o
		outs = append(outs, o)
		st, err := os.Stat(o)
		if err != nil {
			continue
		}
		if st.IsDir() {
			return nil, refuse("output %s is a folder: give a file path", o)
		}
		for c, p := range in { // hard links
			if ist, err := os.Stat(p); err == nil && os.SameFile(st, ist) {
				return nil, refuse("output %s is the same file as the input %s (%s): choose another output path", o, p, c)
			}
		}
	}
	return outs, nil
}

// imagesOfOthers refuses to write the image output example into dir when
// dir holds images padim did not write.
func imagesOfOthers(dir, example string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil // made by the run, or reported by the write check
	}
	for _, e := range ents {
		name := e.Name()
		if e.IsDir() || strings.HasPrefix(name, ".") || !dataset.IsImage(name) || slices.ContainsFunc(PictureSuffixes, func(s string) bool { return strings.HasSuffix(name, s) }) {
			continue
		}
		return refuse("output %s would go into %s, which holds images padim did not write (%s): it looks like a data folder, and the next train or score there would take the pictures for data; give a new or empty folder", example, filepath.Dir(example), name)
	}
	return nil
}

// CheckFolder applies the rule to a folder a run fills (what: a report):
// not a file, not overlapping a data folder either way, not a folder of
// images holding no report (index.html). Each refusal starts with the
// folder's path. Whether it can be written is atomicfile.CheckWritable's
// to say (of dir/index.html, mkdir).
func CheckFolder(what, dir string, data ...string) error {
	if st, err := os.Stat(dir); err == nil && !st.IsDir() {
		return refuse("%s is a file: give a folder", dir)
	}
	c := Canonical(dir)
	for _, d := range data {
		if d == "" {
			continue
		}
		if cd := Canonical(d); Within(c, cd) || Within(cd, c) {
			return refuse("%s and the data folder %s overlap: the %s's files would mix with the data (and be taken for it by a later run); give a folder outside the data", dir, d, what)
		}
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	report := false
	var image string
	for _, e := range ents {
		switch {
		case e.Name() == "index.html":
			report = true
		case image == "" && !e.IsDir() && dataset.IsImage(e.Name()):
			image = e.Name()
		}
	}
	if image != "" && !report {
		return refuse("%s holds images (%s) but no report (index.html): it looks like a data folder; give a new or empty folder", dir, image)
	}
	return nil
}
