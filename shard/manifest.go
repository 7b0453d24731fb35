package shard

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Entry is one input of a manifest.
type Entry struct {
	Path  string // the file to read: relative paths are taken from the manifest's folder
	Key   string // the path as written (cleaned, forward slashes): the split key
	Label *int   // 1 defective, 0 good; nil when not given
	Mask  string // ground-truth mask (resolved like Path), "" when not given
	Type  string // the defect type (eval's per-image name), "" when not given
}

// manifestLine is one JSONL line of a manifest.
type manifestLine struct {
	Path  *string         `json:"path"`
	Label json.RawMessage `json:"label"`
	Mask  string          `json:"mask"`
	Type  string          `json:"type"`
}

// ReadManifest reads an explicit input list: one path a line, or JSON lines
// with "path" and optional "label" (0/1, false/true, "good"/"defect"),
// "mask" and "type". Blank lines are skipped. A path listed twice is an error.
func ReadManifest(path string) ([]Entry, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	base := filepath.Dir(path)
	resolve := func(p string) string {
		if filepath.IsAbs(p) {
			return filepath.Clean(p)
		}
		return filepath.Join(base, p)
	}
	var out []Entry
	seen := map[string]int{}
	isJSON := bytes.HasPrefix(bytes.TrimLeft(b, " \t\r\n\ufeff"), []byte("{"))
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	line := 0
	for sc.Scan() {
		line++
		text := strings.TrimSuffix(sc.Text(), "\r")
		if line == 1 {
			text = strings.TrimPrefix(text, "\ufeff")
		}
		if strings.TrimSpace(text) == "" {
			continue
		}
		var e Entry
		if isJSON {
			var ml manifestLine
			dec := json.NewDecoder(strings.NewReader(text))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&ml); err != nil {
				return nil, fmt.Errorf("%s:%d: %v (want {\"path\": ..., \"label\": 0|1, \"mask\": ..., \"type\": ...})", path, line, err)
			}
			if ml.Path == nil || *ml.Path == "" {
				return nil, fmt.Errorf("%s:%d: no \"path\"", path, line)
			}
			e.Key = *ml.Path
			if len(ml.Label) > 0 && string(ml.Label) != "null" {
				l, err := parseLabel(ml.Label)
				if err != nil {
					return nil, fmt.Errorf("%s:%d: %v", path, line, err)
				}
				e.Label = &l
			}
			if ml.Mask != "" {
				e.Mask = resolve(ml.Mask)
			}
			e.Type = ml.Type
		} else {
			e.Key = text
		}
		e.Path = resolve(e.Key)
		e.Key = filepath.ToSlash(filepath.Clean(e.Key))
		if prev, ok := seen[e.Key]; ok {
			return nil, fmt.Errorf("%s:%d: %s is listed twice (first on line %d)", path, line, e.Key, prev)
		}
		seen[e.Key] = line
		out = append(out, e)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s lists no inputs", path)
	}
	return out, nil
}

func parseLabel(raw json.RawMessage) (int, error) {
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return 0, err
	}
	switch x := v.(type) {
	case float64:
		if x == 0 || x == 1 {
			return int(x), nil
		}
	case bool:
		if x {
			return 1, nil
		}
		return 0, nil
	case string:
		switch strings.ToLower(x) {
		case "good", "ok", "0":
			return 0, nil
		case "defect", "defective", "bad", "anomaly", "1":
			return 1, nil
		}
	}
	return 0, fmt.Errorf("label %s: want 0 or 1, false or true, \"good\" or \"defect\"", raw)
}

// EscapesRoot reports whether a key leaves its root (absolute, or through ..):
// outputs named after it would land outside the output folder.
func EscapesRoot(key string) bool {
	k := filepath.FromSlash(key)
	return filepath.IsAbs(k) || k == ".." || strings.HasPrefix(k, ".."+string(filepath.Separator))
}
