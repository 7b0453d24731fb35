package shard

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/padim/padim/detector/fileio/readfile"
)

// Record is one result record read back by Collect.
type Record struct {
	Common
	Error string `json:"error,omitempty"`
	Shard int    `json:"-"`
	Line  []byte `json:"-"` // the record as written
}

// Collected is every shard's results, checked and in input order.
type Collected struct {
	Dir     string
	Count   int // shards
	Markers []*Marker
	Records []Record // by Index
	Errors  int
}

var resultName = regexp.MustCompile(`^results-(\d+)-of-(\d+)\.(jsonl|done)$`)

// Collect reads the results of every shard in dir and checks that they are
// one whole run: every shard of the same count finished (its marker), every
// record of the same model, settings and input list, each input in the shard
// its key hashes to, each exactly once, none missing.
func Collect(dir string) (*Collected, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	counts := map[int][]string{}
	results, markers := map[int]bool{}, map[int]bool{}
	for _, e := range ents {
		m := resultName.FindStringSubmatch(e.Name())
		if m == nil {
			continue
		}
		i, _ := strconv.Atoi(m[1])
		n, _ := strconv.Atoi(m[2])
		counts[n] = append(counts[n], e.Name())
		if m[3] == "jsonl" {
			results[i] = true
		} else {
			markers[i] = true
		}
	}
	if len(counts) == 0 {
		return nil, fmt.Errorf("no shard results (results-I-of-N.jsonl) in %s", dir)
	}
	if len(counts) > 1 {
		var ns []string
		for n, files := range counts {
			ns = append(ns, fmt.Sprintf("N=%d (%s)", n, files[0]))
		}
		slices.Sort(ns)
		return nil, fmt.Errorf("%s holds results of different shard counts: %s; collect one run per folder", dir, strings.Join(ns, ", "))
	}
	c := &Collected{Dir: dir}
	for n := range counts {
		c.Count = n
	}
	var missing, running []string
	for i := 0; i < c.Count; i++ {
		if !markers[i] {
			if results[i] {
				running = append(running, strconv.Itoa(i))
			} else {
				missing = append(missing, strconv.Itoa(i))
			}
		}
	}
	if len(missing)+len(running) > 0 {
		msg := fmt.Sprintf("%s: not every shard of %d has finished:", dir, c.Count)
		if len(running) > 0 {
			msg += " unfinished (started, no completion marker: still running, or killed; rerun them) " + strings.Join(running, ",") + ";"
		}
		if len(missing) > 0 {
			msg += " not started " + strings.Join(missing, ",") + ";"
		}
		return nil, errors.New(strings.TrimSuffix(msg, ";"))
	}
	seen := map[string]int{}
	seenIdx := map[int]string{}
	for i := 0; i < c.Count; i++ {
		spec := Spec{Index: i, Count: c.Count}
		b, err := readfile.ReadFile(MarkerPath(dir, spec))
		if err != nil {
			return nil, err
		}
		var m Marker
		if err := json.Unmarshal(b, &m); err != nil {
			return nil, fmt.Errorf("%s: %w", MarkerPath(dir, spec), err)
		}
		if m.Index != i || m.Count != c.Count {
			return nil, fmt.Errorf("%s says it is shard %s", MarkerPath(dir, spec), m.Shard)
		}
		if len(c.Markers) > 0 {
			f := c.Markers[0]
			switch {
			case m.Command != f.Command:
				return nil, fmt.Errorf("shard %d holds %s results, shard 0 %s results", i, m.Command, f.Command)
			case m.ModelSHA256 != f.ModelSHA256:
				return nil, &MixedModelsError{Shard: i, Model: m.ModelSHA256, First: f.ModelSHA256}
			case m.Settings != f.Settings:
				return nil, fmt.Errorf("shard %d was scored with other settings than shard 0 (%s vs %s)", i, m.Settings, f.Settings)
			case m.ListHash != f.ListHash || m.Total != f.Total:
				return nil, fmt.Errorf("shard %d saw another input list than shard 0 (%d vs %d inputs): the data changed, or the shards were given different inputs", i, m.Total, f.Total)
			}
		}
		c.Markers = append(c.Markers, &m)
		recs, err := readRecords(ResultsPath(dir, spec))
		if err != nil {
			return nil, err
		}
		if len(recs) != m.Records {
			return nil, fmt.Errorf("%s holds %d records, its marker says %d", ResultsPath(dir, spec), len(recs), m.Records)
		}
		for _, r := range recs {
			switch {
			case r.ModelSHA256 != m.ModelSHA256 || r.Settings != m.Settings:
				return nil, fmt.Errorf("%s: %s was scored with another model or settings than the shard's", ResultsPath(dir, spec), r.Key)
			case Of(r.Key, c.Count) != i:
				return nil, fmt.Errorf("%s: %s belongs to shard %d of %d, not %d", ResultsPath(dir, spec), r.Key, Of(r.Key, c.Count), c.Count, i)
			case r.Index < 0 || r.Index >= m.Total:
				return nil, fmt.Errorf("%s: %s has position %d, outside the %d inputs", ResultsPath(dir, spec), r.Key, r.Index, m.Total)
			}
			if prev, ok := seen[r.Key]; ok {
				return nil, fmt.Errorf("%s is in the results of shard %d and of shard %d", r.Key, prev, i)
			}
			if prev, ok := seenIdx[r.Index]; ok {
				return nil, fmt.Errorf("%s and %s both claim position %d", prev, r.Key, r.Index)
			}
			seen[r.Key], seenIdx[r.Index] = i, r.Key
			r.Shard = i
			if r.Error != "" {
				c.Errors++
			}
			c.Records = append(c.Records, r)
		}
	}
	if total := c.Markers[0].Total; len(c.Records) != total {
		return nil, fmt.Errorf("the shards hold %d records for %d inputs", len(c.Records), total)
	}
	sort.Slice(c.Records, func(i, j int) bool { return c.Records[i].Index < c.Records[j].Index })
	return c, nil
}

// readRecords reads a shard's records, each checked against its checksum:
// a record changed by hand (a forged score) or a file cut short is refused.
func readRecords(path string) ([]Record, error) {
	b, err := readfile.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var recs []Record
	err = checkLines(path, b, func(n int, l []byte) error {
		var r Record
		line := slices.Clone(l)
		if err := json.Unmarshal(line, &r); err != nil {
			return fmt.Errorf("%w: %s line %d: %v", ErrDamaged, path, n, err)
		}
		r.Line = line
		recs = append(recs, r)
		return nil
	})
	return recs, err
}

// MixedModelsError is a shard scored with another model than shard 0's.
type MixedModelsError struct {
	Shard        int
	Model, First string // sha256 of the shard's model, of shard 0's
}

func (e *MixedModelsError) Error() string {
	return fmt.Sprintf("shard %d was scored with the model %.12s…, shard 0 with %.12s…", e.Shard, e.Model, e.First)
}

// Outputs are the files collect writes into the results folder.
func Outputs(dir string) []string {
	return []string{filepath.Join(dir, "results.jsonl"), filepath.Join(dir, "summary.json"), filepath.Join(dir, "eval.json")}
}
