package main

import (
	"bufio"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/padim/padim/detector/fileio/atomicfile"
	"github.com/padim/padim/detector/fileio/outputs"
)

// The one rule on outputs (detector/fileio/outputs), applied by every
// command that writes, before any work; a refusal is a usage error (exit 2).

// checkOutputs applies the output rule to files whose folders must exist:
// inputs are the files read, data the data folders.
func checkOutputs(inputs, files []string, data ...string) error {
	return usageOf(outputs.Rule{Inputs: inputs, Files: files, Data: data}.Check())
}

// checkOutputTree applies the output rule to files the command writes into
// folders it creates (score's maps, a shard's results).
func checkOutputTree(inputs, files []string, data ...string) error {
	return usageOf(outputs.Rule{Inputs: inputs, Files: files, Data: data, Mkdir: true}.Check())
}

func usageOf(err error) error {
	if err != nil {
		return cli.Exit(err.Error(), exitUsage)
	}
	return nil
}

// checkOutputFolder applies the output rule to the folder of --flag (a
// report), and checks that it can be written.
func checkOutputFolder(flag, dir string, data ...string) error {
	if dir == "" {
		return nil
	}
	if err := outputs.CheckFolder(flag, dir, data...); err != nil {
		return usageError("--%s %v", flag, err)
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
