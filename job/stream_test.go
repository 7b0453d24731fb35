package job

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"
)

// ParseRequest never panics; an accepted line is a path or decoded data
// (never both), named; a refused line's error names its line number.
func FuzzParseRequest(f *testing.F) {
	for _, s := range []string{`{"path": "a.png"}`, `{"data": "aGVsbG8=", "name": "x", "id": 7}`, `{"data": "aGVsbG8="}`, `{"path": "a", "data": "b"}`,
		`{"path": "a", "path": "b"}`, `{"data": "!!"}`, `{"id": [1, {"x": 2}]}`, `{} {}`, ``, `   `, `[1]`, `{"path": "a", "x": 1}`, "{\"path\": \"\\u0000\"}"} {
		f.Add(3, []byte(s))
	}
	f.Fuzz(func(t *testing.T, n int, text []byte) {
		in, id, err := ParseRequest(n, text)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "line "+itoa(n)) {
				t.Fatalf("error without its line: %v", err)
			}
			return
		}
		if in.Name == "" {
			t.Fatalf("an input without a name from %q", text)
		}
		if id != nil && !json.Valid(id) {
			t.Fatalf("id %q is not JSON", id)
		}
		var q StreamRequest
		if err := json.Unmarshal(text, &q); err != nil {
			t.Fatalf("accepted %q, which encoding/json refuses: %v", text, err)
		}
		switch {
		case q.Path != "":
			if in.Data != nil || in.Name != q.Path {
				t.Fatalf("path %q read as %+v", q.Path, in)
			}
		default:
			want, _ := base64.StdEncoding.DecodeString(q.Data)
			if !bytes.Equal(in.Data, want) || q.Name != "" && in.Name != q.Name {
				t.Fatalf("data read as %q named %q", in.Data, in.Name)
			}
		}
	})
}

func itoa(n int) string { b, _ := json.Marshal(n); return string(b) }

// The requests of a stream: each case's input, result and error.
func TestParseRequest(t *testing.T) {
	for _, c := range []struct{ line, name, data, err string }{
		{`{"path": "/x/a.png", "id": "q"}`, "/x/a.png", "", ""},
		{`{"data": "aGk=", "name": "mem"}`, "mem", "hi", ""},
		{`{"data": "aGk="}`, "line 4", "hi", ""},
		{``, "", "", "line 4 is empty"},
		{`{"path": "a", "data": "aGk="}`, "", "", `give "path" or "data", not both`},
		{`{"data": "%%"}`, "", "", "is not base64"},
		{`{"id": 1}`, "", "", `no "path" or "data"`},
		{`{"path": "a"} {"path": "b"}`, "", "", "line 4: more than one JSON value"},
	} {
		in, _, err := ParseRequest(4, []byte(c.line))
		switch {
		case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
			t.Errorf("%s: %v, want %q", c.line, err, c.err)
		case c.err == "" && (err != nil || in.Name != c.name || string(in.Data) != c.data):
			t.Errorf("%s: %+v %v", c.line, in, err)
		}
	}
}
