package shard

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"

	"github.com/padim/padim/detector/fileio/readfile"
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

// MaxManifestLine bounds one line of a manifest (a path, or a JSON object).
const MaxManifestLine = 16 << 20

// ReadManifest reads an explicit input list: one path a line, or JSON lines
// with "path" and optional "label" (0/1, false/true, "good"/"defect"),
// "mask" and "type". Blank lines are skipped. A path listed twice is an
// error, and so is a line that is not one JSON object with known keys, each
// once (two objects on a line, a key given twice), or longer than
// MaxManifestLine: each names the file and the line, and stops the run
// before any work (a list read differently on two machines would split
// differently).
func ReadManifest(path string) ([]Entry, error) {
	f, err := readfile.Open(path) // a FIFO is refused, not waited on
	if err != nil {
		return nil, err
	}
	defer f.Close()
	base := filepath.Dir(path)
	resolve := func(p string) string {
		if filepath.IsAbs(p) {
			return filepath.Clean(p)
		}
		return filepath.Join(base, p)
	}
	var out []Entry
	seen := map[string]int{}
	br := bufio.NewReaderSize(f, 64<<10)
	isJSON, decided := false, false
	for line := 1; ; line++ {
		b, long, err := ReadLine(br, MaxManifestLine)
		if long > 0 {
			return nil, fmt.Errorf("%s:%d: the line is %d bytes, longer than the %d MiB a manifest line may have (one input a line: a path, or a JSON object)", path, line, long, MaxManifestLine>>20)
		}
		if err != nil && err != io.EOF {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		if err == io.EOF && len(b) == 0 {
			break
		}
		text := strings.TrimSuffix(string(b), "\r")
		if line == 1 {
			text = strings.TrimPrefix(text, "\ufeff")
		}
		if strings.TrimSpace(text) == "" {
			if err == io.EOF {
				break
			}
			continue
		}
		if !decided {
			isJSON, decided = strings.HasPrefix(strings.TrimLeft(text, " \t"), "{"), true
		}
		var e Entry
		if isJSON {
			var ml manifestLine
			if err := DecodeLine([]byte(text), &ml); err != nil {
				return nil, fmt.Errorf("%s:%d: %v (want one object a line: {\"path\": ..., \"label\": 0|1, \"mask\": ..., \"type\": ...})", path, line, err)
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
		if err == io.EOF {
			break
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s lists no inputs", path)
	}
	return out, nil
}

// ReadLine reads one line (without its newline) of at most max bytes. A
// longer line is read to its end and dropped: long is then its length and b
// nil, so that a caller can report it and go on with the next line. err is
// io.EOF with the last line (which may be empty).
func ReadLine(br *bufio.Reader, max int) (b []byte, long int64, err error) {
	for {
		chunk, err := br.ReadSlice('\n')
		if long > 0 {
			long += int64(len(chunk))
		} else if len(b)+len(chunk) > max+1 || len(b)+len(chunk) == max+1 && chunk[len(chunk)-1] != '\n' {
			long = int64(len(b) + len(chunk))
			b = nil
		} else {
			b = append(b, chunk...)
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if long > 0 {
			if err == nil {
				long-- // the newline
			}
			return nil, long, err
		}
		if n := len(b); n > 0 && b[n-1] == '\n' {
			b = b[:n-1]
		}
		return b, 0, err
	}
}

// DecodeLine decodes one line holding one JSON object into v, strictly: a
// field v does not have, a key given twice, or anything after the object
// (a second object: a missing newline) is an error, each saying which.
func DecodeLine(line []byte, v any) error {
	if !json.Valid(line) {
		dec := json.NewDecoder(bytes.NewReader(line))
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return fmt.Errorf("not a JSON object: %v", err)
		}
		return errors.New("more than one JSON value on the line (a missing newline between two objects?)")
	}
	if k, dup := duplicateKey(line); dup {
		return fmt.Errorf("the key %q is given twice", k)
	}
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

// duplicateKey returns a key that a valid JSON object gives twice at its top
// level (false when none does, or the value is no object). It skips values
// without decoding them, so that a large one costs no copy.
func duplicateKey(b []byte) (string, bool) {
	i := skipSpace(b, 0)
	if i >= len(b) || b[i] != '{' {
		return "", false
	}
	seen := map[string]bool{}
	for i++; ; {
		i = skipSpace(b, i)
		if i >= len(b) || b[i] == '}' {
			return "", false
		}
		if b[i] == ',' {
			i = skipSpace(b, i+1)
		}
		end := skipString(b, i)
		raw := b[i:end]
		key := string(raw[1 : len(raw)-1])
		if bytes.IndexByte(raw, '\\') >= 0 {
			json.Unmarshal(raw, &key)
		}
		if seen[key] {
			return key, true
		}
		seen[key] = true
		i = skipSpace(b, end)
		i = skipValue(b, skipSpace(b, i+1)) // past the colon
	}
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\r' || b[i] == '\n') {
		i++
	}
	return i
}

// skipString returns the index after the string starting at b[i] (a quote).
func skipString(b []byte, i int) int {
	for i++; i < len(b); i++ {
		switch b[i] {
		case '\\':
			i++
		case '"':
			return i + 1
		}
	}
	return len(b)
}

// skipValue returns the index after the (valid) JSON value starting at b[i].
func skipValue(b []byte, i int) int {
	if i >= len(b) {
		return i
	}
	switch b[i] {
	case '"':
		return skipString(b, i)
	case '{', '[':
		depth := 0
		for ; i < len(b); i++ {
			switch b[i] {
			case '"':
				i = skipString(b, i) - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1
				}
			}
		}
		return len(b)
	}
	for i < len(b) && !strings.ContainsRune(",}] \t\r\n", rune(b[i])) {
		i++
	}
	return i
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
