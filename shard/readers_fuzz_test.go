package shard

import (
	"os"
	"path/filepath"
	"testing"
)

// The file readers, fuzzed from files: ReadManifest, ReadCalib and the
// results a rerun resumes from (OpenResults) never panic, and what they
// accept is consistent.

func fuzzFile(t *testing.T, name string, b []byte) (string, string) {
	dir := t.TempDir()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir, p
}

// ReadManifest: every entry it returns has a path and a key, no key twice,
// and a label of 0 or 1 when it has one.
func FuzzReadManifest(f *testing.F) {
	for _, s := range []string{"a.png\nb.png\n", "a.png\r\n\n  \nsub/b.png", `{"path": "a.png", "label": 1, "mask": "m.png"}` + "\n" + `{"path": "b.png", "label": "good"}`,
		`{"path": "a.png"}` + "\n" + `{"path": "./a.png"}`, `{"path": ""}`, `{"label": 1}`, "../x.png\n/abs/y.png", `{"path": "a", "label": 2}`, "\xff\xfe"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		_, p := fuzzFile(t, "list.txt", b)
		es, err := ReadManifest(p)
		if err != nil {
			return
		}
		if len(es) == 0 {
			t.Fatal("an accepted manifest with no inputs")
		}
		seen := map[string]bool{}
		for _, e := range es {
			if e.Path == "" || e.Key == "" || seen[e.Key] || e.Label != nil && *e.Label != 0 && *e.Label != 1 {
				t.Fatalf("entry %+v (seen %v)", e, seen[e.Key])
			}
			seen[e.Key] = true
		}
	})
}

// ReadCalib: what it accepts holds as many records as its header says.
func FuzzReadCalib(f *testing.F) {
	dir := f.TempDir()
	good := filepath.Join(dir, "c.calib")
	if err := WriteCalib(good, CalibHeader{Shard: "0/1", TotalID: "t", N: 2, Stride: 1, MapW: 2, MapH: 2, Inputs: 2},
		[]CalibRecord{{Index: 0, Key: "a", Score: 1, Pixels: EncodeFloats([]float32{1, 2})}, {Index: 1, Key: "b", Error: "unreadable"}}); err != nil {
		f.Fatal(err)
	}
	b, _ := os.ReadFile(good)
	f.Add(b)
	f.Add(b[:len(b)-9])
	f.Add([]byte(`{"format":"padim-calibration","version":2}`))
	f.Add([]byte(`{"format":"padim-calibration","version":1,"n_shard":-1}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		_, p := fuzzFile(t, "c.calib", b)
		h, recs, err := ReadCalib(p)
		if err == nil && len(recs) != h.Inputs {
			t.Fatalf("%d records, header says %d", len(recs), h.Inputs)
		}
	})
}

// OpenResults resuming a results file: damaged or foreign files are
// refused; what it keeps is at most the file's records, each a key of the
// shard.
func FuzzResumeResults(f *testing.F) {
	spec := Spec{Index: 0, Count: 1}
	id := Identity{Command: "score", ModelSHA256: "aaaa", Settings: "s1", Total: 2}
	keys := map[string]int{"a.png": 0, "b.png": 1}
	dir := f.TempDir()
	r, _, err := OpenResults(dir, spec, id, keys, false)
	if err != nil {
		f.Fatal(err)
	}
	for k, i := range keys {
		if err := r.Add(testRec{Common: Common{Index: i, Key: k, ModelSHA256: "aaaa", Settings: "s1"}, Value: i}, i == 1); err != nil {
			f.Fatal(err)
		}
	}
	if err := r.Flush(); err != nil {
		f.Fatal(err)
	}
	r.Close()
	b, _ := os.ReadFile(ResultsPath(dir, spec))
	f.Add(b)
	f.Add(b[:len(b)-3])
	f.Add([]byte(`{"index":0,"key":"a.png","model_sha256":"aaaa","settings":"s1"}` + "\n"))
	f.Add([]byte("\n\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		dir, _ := fuzzFile(t, filepath.Base(ResultsPath("", spec)), b)
		r, _, err := OpenResults(dir, spec, id, keys, false)
		if err != nil {
			return
		}
		defer r.Close()
		if n := r.Written(); n > len(keys) {
			t.Fatalf("kept %d records for %d keys", n, len(keys))
		}
		for k := range keys {
			_ = r.Done(k)
		}
	})
}
