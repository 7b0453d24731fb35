package shard

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"testing"
)

// refDuplicate finds a top-level key given twice with encoding/json's tokens.
func refDuplicate(b []byte) (string, bool) {
	dec := json.NewDecoder(bytes.NewReader(b))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return "", false
	}
	seen := map[string]bool{}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return "", false
		}
		k := t.(string)
		if seen[k] {
			return k, true
		}
		seen[k] = true
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return "", false
		}
	}
	return "", false
}

// DecodeLine and the duplicate-key scan against encoding/json, and ReadLine
// against a plain split.
func FuzzDecodeLine(f *testing.F) {
	for _, s := range []string{`{"path": "a.png"}`, `{"path": "a", "path": "b"}`, `{"a\u0062": 1, "ab": 2}`, `{"p": {"q": "}\"", "r": [1, {"s": 2}]}, "p": 3}`,
		`{} {}`, `{"path": "a.png"}{"path": "b"}`, `[1,2]`, `{"label": 1, "lable": 2}`, ``, `{`, "x\ny\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var m map[string]any
		err := DecodeLine(b, &m)
		if json.Valid(b) {
			ref, dup := refDuplicate(b)
			if got, gdup := duplicateKey(b); dup != gdup || dup && got != ref {
				t.Fatalf("%q: duplicate %q, reference %q (%v)", b, got, ref, dup)
			}
			if err == nil && dup {
				t.Fatalf("%q: a key given twice accepted", b)
			}
		} else if err == nil {
			t.Fatalf("%q: invalid JSON accepted", b)
		}
		var lines [][]byte
		br := bufio.NewReaderSize(bytes.NewReader(b), 16)
		for {
			l, long, err := ReadLine(br, 8)
			if long > 0 && l != nil || long == 0 && len(l) > 8 {
				t.Fatalf("%q: line %q, long %d", b, l, long)
			}
			if long > 0 {
				l = bytes.Repeat([]byte{'?'}, int(long))
			}
			lines = append(lines, l)
			if err == io.EOF {
				break
			}
		}
		want := bytes.Split(b, []byte("\n"))
		if len(lines) != len(want) {
			t.Fatalf("%q: %d lines, want %d", b, len(lines), len(want))
		}
		for i := range want {
			if len(want[i]) <= 8 && !bytes.Equal(lines[i], want[i]) || len(lines[i]) != len(want[i]) {
				t.Fatalf("%q line %d: %q, want %q", b, i, lines[i], want[i])
			}
		}
	})
}
