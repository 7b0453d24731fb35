package main

import (
	"bufio"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/padim/padim/data/dataset"
	"github.com/padim/padim/detector/fileio/atomicfile"
)

// The one rule on outputs, applied by every command that writes, before any
// work (checkOutputs, checkOutputTree, checkOutputFolder; serve and loadtest
// call them too):
//
//  1. no output is an input (links resolved, hard links too), nor another
//     output of the run, nor an existing folder;
//  2. nothing is written inside a data folder (--data, a folder given to
//     score), and no output folder overlaps one: a later run would take what
//     landed there for data;
//  3. no image is written into a folder that holds images padim did not
//     write (a folder of data given file by file): the same reason;
//  4. every output can be written: its folder exists (or, for trees the
//     command creates, its nearest existing ancestor) and is writable, so
//     that a run does not find out after its work.
//
// Every refusal names both paths and is a usage error (exit 2).

// canonical resolves a path's links (its folder's, when the file does not exist yet).
func canonical(p string) string {
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

// sameFile reports whether two paths name one file (links and hard links included).
func sameFile(a, b string) bool {
	if canonical(a) == canonical(b) {
		return true
	}
	sa, err1 := os.Stat(a)
	sb, err2 := os.Stat(b)
	return err1 == nil && err2 == nil && os.SameFile(sa, sb)
}

// within reports whether the canonical path p is dir or below it.
func within(p, dir string) bool {
	return p == dir || dir == string(filepath.Separator) || strings.HasPrefix(p, dir+string(filepath.Separator))
}

// checkOutputs applies the output rule to files whose folders must exist:
// inputs are the files read, data the data folders.
func checkOutputs(inputs, outputs []string, data ...string) error {
	return outputRule{inputs: inputs, files: outputs, data: data}.check()
}

// checkOutputTree applies the output rule to files the command writes into
// folders it creates (score's maps, a shard's results).
func checkOutputTree(inputs, outputs []string, data ...string) error {
	return outputRule{inputs: inputs, files: outputs, data: data, mkdir: true}.check()
}

// outputRule is one command's outputs and what they must stay clear of.
type outputRule struct {
	inputs, files, data []string
	mkdir               bool // the command creates the outputs' folders
}

func (r outputRule) check() error {
	in := map[string]string{}
	for _, p := range r.inputs {
		if p != "" {
			in[canonical(p)] = p
		}
	}
	out := map[string]string{}
	var outs []string
	for _, o := range r.files {
		if o == "" {
			continue
		}
		c := canonical(o)
		if p, ok := in[c]; ok {
			return cli.Exit(fmt.Sprintf("output %s would overwrite the input %s: choose another output path", o, p), exitUsage)
		}
		if p, ok := out[c]; ok {
			return cli.Exit(fmt.Sprintf("outputs %s and %s are the same file: give them different paths", p, o), exitUsage)
		}
		out[c] = o
		outs = append(outs, o)
		if st, err := os.Stat(o); err == nil {
			if st.IsDir() {
				return cli.Exit(fmt.Sprintf("output %s is a folder: give a file path", o), exitUsage)
			}
			for c, p := range in { // hard links
				if ist, err := os.Stat(p); err == nil && os.SameFile(st, ist) {
					return cli.Exit(fmt.Sprintf("output %s is the same file as the input %s (%s): choose another output path", o, p, c), exitUsage)
				}
			}
		}
	}
	data := map[string]string{}
	for _, d := range r.data {
		if d != "" {
			data[canonical(d)] = d
		}
	}
	type folder struct{ any, image string } // an output in the folder, an image output in it
	folders := map[string]*folder{}         // by canonical path
	var order []string
	for _, o := range outs {
		c := canonical(o)
		for cd, d := range data {
			if within(c, cd) {
				return cli.Exit(fmt.Sprintf("output %s is inside the data folder %s: padim writes nothing into its data (a later run would take it for input); give a path outside %s", o, d, d), exitUsage)
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
		if err := atomicfile.CheckWritable(f.any, r.mkdir); err != nil {
			return cli.Exit(err.Error(), exitUsage)
		}
	}
	return nil
}

// padimImageSuffixes name the images padim writes beside each other (score
// --maps png); a folder holding only these holds no data.
var padimImageSuffixes = []string{"_heatmap.png", "_overlay.png", "_mask.png", "_boxes.png"}

// imagesOfOthers refuses to write the image output example into dir when
// dir holds images padim did not write.
func imagesOfOthers(dir, example string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil // made by the command, or reported by the write check
	}
	for _, e := range ents {
		name := e.Name()
		if e.IsDir() || strings.HasPrefix(name, ".") || !dataset.IsImage(name) || slices.ContainsFunc(padimImageSuffixes, func(s string) bool { return strings.HasSuffix(name, s) }) {
			continue
		}
		return cli.Exit(fmt.Sprintf("output %s would go into %s, which holds images padim did not write (%s): it looks like a data folder, and the next train or score there would take the pictures for data; give a new or empty folder", example, filepath.Dir(example), name), exitUsage)
	}
	return nil
}

// checkOutputFolder applies the output rule to a folder a command fills
// (a report): not a file, not overlapping a data folder either way, not a
// folder of images that is no report, and writable.
func checkOutputFolder(flag, dir string, data ...string) error {
	if dir == "" {
		return nil
	}
	if st, err := os.Stat(dir); err == nil && !st.IsDir() {
		return usageError("--%s %s is a file: give a folder", flag, dir)
	}
	c := canonical(dir)
	for _, d := range data {
		if d == "" {
			continue
		}
		cd := canonical(d)
		if within(c, cd) || within(cd, c) {
			return usageError("--%s %s and the data folder %s overlap: the %s's files would mix with the data (and be taken for it by a later run); give a folder outside the data", flag, dir, d, flag)
		}
	}
	if ents, err := os.ReadDir(dir); err == nil {
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
			return usageError("--%s %s holds images (%s) but no report (index.html): it looks like a data folder; give a new or empty folder", flag, dir, image)
		}
	}
	if err := atomicfile.CheckWritable(filepath.Join(dir, "index.html"), true); err != nil {
		return usageError("--%s: %v", flag, err)
	}
	return nil
}

// lockOutputs takes the write lock of each output (atomicfile.Acquire), so
// that two runs into one output refuse instead of both saying "wrote"; the
// returned function releases them. A lock left by a killed run is taken over
// with a note.
func lockOutputs(c *cli.Context, outputs ...string) (func(), error) {
	var held []*atomicfile.Lock
	release := func() {
		for _, l := range held {
			l.Release()
		}
	}
	for _, o := range outputs {
		if o == "" {
			continue
		}
		l, stale, err := atomicfile.Acquire(o)
		if err != nil {
			release()
			return nil, cli.Exit(err.Error(), exitError)
		}
		if stale > 0 {
			notef(c, "note: %s was locked by process %d, which is gone (killed?): lock taken over", o, stale)
		}
		held = append(held, l)
	}
	return release, nil
}

// Ranges of the numeric flags, by name, checked for every command (a flag
// with the same name means the same thing everywhere). NaN and ±Inf are
// refused for every float flag.
var flagRanges = map[string][2]float64{
	"dim":           {0, 1 << 16},
	"eps":           {0, 1e6},
	"sigma":         {0, 64},
	"holdout":       {0, 0.99},
	"folds":         {2, 1 << 16},
	"batch":         {0, 256},
	"threads":       {0, 256},
	"resize":        {0, 4096},
	"crop":          {0, 4096},
	"tile":          {0, 16384},
	"overlap":       {0, 16383},
	"threshold":     {-1e30, 1e30},
	"open-radius":   {0, 32},
	"n":             {1, 1 << 20},
	"score":         {1, 1 << 20},
	"train":         {0, 1 << 17},
	"test-good":     {0, 1 << 17},
	"test-defect":   {0, 1 << 17},
	"repeats":       {1, 100},
	"k":             {1, 100000},
	"coreset":       {0.0001, 1},
	"target-fpr":    {0.0001, 0.5},
	"flush-every":   {0, 1 << 20},
	"max-batch":     {1, 256},
	"pipelines":     {1, 64},
	"queue":         {1, 1 << 16},
	"drift-window":  {1, 1 << 20},
	"retries":       {0, 1000},
	"max-other":     {0, 1024},
	"server-pid":    {0, 1 << 22},
	"backbone-seed": {0, math.MaxUint64},
	"seed":          {0, math.MaxUint64},
}

// sizeRanges: --size means a synthetic image's side for synth and demo, a
// network input's for backbone and bench.
var sizeRanges = map[string][2]float64{"synth": {32, 8192}, "demo": {32, 8192}, "backbone": {32, 2048}, "bench": {32, 2048}}

// checkFlags validates every numeric flag of the command against its range.
func checkFlags(c *cli.Context) error {
	for _, f := range c.Command.Flags {
		name := f.Names()[0]
		r, ok := flagRanges[name]
		if name == "size" {
			r, ok = sizeRanges[c.Command.Name]
		}
		var v float64
		switch f.(type) {
		case *cli.IntFlag:
			v = float64(c.Int(name))
		case *cli.Float64Flag:
			v = c.Float64(name)
			if math.IsNaN(v) || math.IsInf(v, 0) {
				return usageError("--%s %v: want a finite number", name, v)
			}
		case *cli.Uint64Flag:
			continue
		default:
			continue
		}
		if ok && (v < r[0] || v > r[1]) {
			return usageError("--%s %v: want a value in [%g, %g]", name, v, r[0], r[1])
		}
	}
	return nil
}

// memoryBudget is --max-memory, else 80 % of the memory this process may use
// (the machine's, or its cgroup's limit when lower).
func memoryBudget(c *cli.Context) (int64, error) {
	if s := c.String("max-memory"); s != "" {
		v, err := parseBytes(s)
		if err != nil || v < 256<<20 {
			return 0, usageError("--max-memory %q: want a size of at least 256M, like 8G or 1500M", s)
		}
		return v, nil
	}
	total := physicalMemory()
	if total <= 0 {
		return 8 << 30, nil
	}
	return total / 10 * 8, nil
}

// parseBytes reads sizes like 8G, 8GiB, 1500M, 123456.
func parseBytes(s string) (int64, error) {
	s = strings.TrimSpace(strings.ToUpper(s))
	s = strings.TrimSuffix(strings.TrimSuffix(s, "IB"), "B")
	mul := int64(1)
	switch {
	case strings.HasSuffix(s, "K"):
		mul, s = 1<<10, s[:len(s)-1]
	case strings.HasSuffix(s, "M"):
		mul, s = 1<<20, s[:len(s)-1]
	case strings.HasSuffix(s, "G"):
		mul, s = 1<<30, s[:len(s)-1]
	case strings.HasSuffix(s, "T"):
		mul, s = 1<<40, s[:len(s)-1]
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || !(f > 0) || f*float64(mul) > 1<<60 {
		return 0, fmt.Errorf("bad size %q", s)
	}
	return int64(f * float64(mul)), nil
}

// physicalMemory is MemTotal, or the cgroup's memory limit when lower.
func physicalMemory() int64 {
	var total int64
	if f, err := os.Open("/proc/meminfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if fs := strings.Fields(sc.Text()); len(fs) >= 2 && fs[0] == "MemTotal:" {
				kb, _ := strconv.ParseInt(fs[1], 10, 64)
				total = kb << 10
			}
		}
		f.Close()
	}
	for _, p := range []string{"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"} {
		if b, err := os.ReadFile(p); err == nil {
			if v, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64); err == nil && v > 0 && (total == 0 || v < total) {
				total = v
			}
		}
	}
	return total
}
