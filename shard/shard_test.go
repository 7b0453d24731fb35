package shard

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/padim/padim/detector/fileio/atomicfile"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestParse(t *testing.T) {
	ok := []struct {
		s    string
		env  map[string]string
		want Spec
	}{
		{"2/4", nil, Spec{2, 4, "flag"}},
		{"0/1", nil, Spec{0, 1, "flag"}},
		{"auto/4", map[string]string{"JOB_COMPLETION_INDEX": "3", "AWS_BATCH_JOB_ARRAY_INDEX": "1"}, Spec{3, 4, "JOB_COMPLETION_INDEX"}},
		{"auto/4", map[string]string{"AWS_BATCH_JOB_ARRAY_INDEX": "1", "SLURM_ARRAY_TASK_ID": "2"}, Spec{1, 4, "AWS_BATCH_JOB_ARRAY_INDEX"}},
		{"auto/4", map[string]string{"JOB_COMPLETION_INDEX": " ", "SLURM_ARRAY_TASK_ID": "2"}, Spec{2, 4, "SLURM_ARRAY_TASK_ID"}},
	}
	for _, c := range ok {
		got, err := Parse(c.s, env(c.env))
		if err != nil || got != c.want {
			t.Errorf("Parse(%q, %v) = %v, %v; want %v", c.s, c.env, got, err, c.want)
		}
	}
	bad := []struct {
		s   string
		env map[string]string
		msg string
	}{
		{"4/4", nil, "[0, 3]"},
		{"-1/4", nil, "[0, 3]"},
		{"1/0", nil, "whole number in [1,"},
		{"1", nil, "want I/N"},
		{"a/b", nil, "whole number"},
		{"auto/4", nil, "none of $JOB_COMPLETION_INDEX, $AWS_BATCH_JOB_ARRAY_INDEX, $SLURM_ARRAY_TASK_ID is set"},
		{"auto/4", map[string]string{"JOB_COMPLETION_INDEX": "4"}, "outside [0, 3]"},
		{"auto/4", map[string]string{"SLURM_ARRAY_TASK_ID": "4"}, "--array=0-3"},
		{"auto/4", map[string]string{"AWS_BATCH_JOB_ARRAY_INDEX": "x"}, "not a whole number"},
	}
	for _, c := range bad {
		_, err := Parse(c.s, env(c.env))
		var ue *UsageError
		if !errors.As(err, &ue) || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("Parse(%q, %v) = %v; want a usage error with %q", c.s, c.env, err, c.msg)
		}
	}
}

// The split is a function of the key and N only: balanced, unchanged by other
// inputs, and moving about 1/(N+1) of the inputs when a shard is added.
func TestSplitStable(t *testing.T) {
	keys := make([]string, 20000)
	for i := range keys {
		keys[i] = fmt.Sprintf("line%d/cam%d/%06d.png", i%3, i%7, i)
	}
	for _, n := range []int{1, 2, 4, 7, 16} {
		counts := make([]int, n)
		for _, k := range keys {
			s := Of(k, n)
			if s < 0 || s >= n {
				t.Fatalf("Of(%q, %d) = %d", k, n, s)
			}
			counts[s]++
		}
		for i, c := range counts {
			if exp := float64(len(keys)) / float64(n); math.Abs(float64(c)-exp) > 5*math.Sqrt(exp) {
				t.Errorf("N=%d: shard %d holds %d of %d (expected about %.0f)", n, i, c, len(keys), exp)
			}
		}
		if n == 1 {
			continue
		}
		moved := 0
		for _, k := range keys {
			if Of(k, n) != Of(k, n+1) {
				if Of(k, n+1) != n {
					t.Fatalf("N=%d→%d moved %q between old shards", n, n+1, k)
				}
				moved++
			}
		}
		if exp := float64(len(keys)) / float64(n+1); math.Abs(float64(moved)-exp) > 5*math.Sqrt(exp) {
			t.Errorf("N=%d→%d moved %d of %d inputs, expected about %.0f", n, n+1, moved, len(keys), exp)
		}
	}
	// the same key lands in the same shard whatever else is listed
	a := Spec{Index: 1, Count: 4}.Select(keys[:100])
	b := Spec{Index: 1, Count: 4}.Select(append([]string{"new/first.png"}, keys[:100]...))
	for i, j := range a {
		if b[i+len(b)-len(a)]-1 != j && !(len(b) == len(a)+1 && b[0] == 0) {
			t.Fatalf("adding an input moved others: %v vs %v", a, b)
		}
	}
	if got := Key("/data/cat", "/data/cat/test/good/000.png"); got != "test/good/000.png" {
		t.Errorf("Key = %q", got)
	}
	if got := Key("/data/cat", "/elsewhere/x.png"); got != "/elsewhere/x.png" {
		t.Errorf("Key outside the root = %q", got)
	}
}

func TestReadManifest(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(text), 0o644)
		return p
	}
	es, err := ReadManifest(write("plain.txt", "a/1.png\n\n/abs/2.png\r\n./b/../c/3.png\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(es) != 3 || es[0].Key != "a/1.png" || es[0].Path != filepath.Join(dir, "a/1.png") || es[1].Path != "/abs/2.png" || es[2].Key != "c/3.png" {
		t.Fatalf("plain manifest: %+v", es)
	}
	es, err = ReadManifest(write("m.jsonl", `{"path": "x.png", "label": 0}
{"path": "y.png", "label": "defect", "mask": "gt/y_mask.png", "type": "hole"}
{"path": "z.png", "label": true, "mask": "/m/z.png"}
{"path": "w.png"}
`))
	if err != nil {
		t.Fatal(err)
	}
	if *es[0].Label != 0 || *es[1].Label != 1 || es[1].Mask != filepath.Join(dir, "gt/y_mask.png") || es[1].Type != "hole" || *es[2].Label != 1 || es[2].Mask != "/m/z.png" || es[3].Label != nil {
		t.Fatalf("JSONL manifest: %+v", es)
	}
	for name, text := range map[string]string{
		"dup.txt":    "a.png\nb.png\na.png\n",
		"dup2.txt":   "a.png\n./a.png\n",
		"label.json": `{"path": "a.png", "label": 2}`,
		"field.json": `{"path": "a.png", "lable": 1}`,
		"nopath":     `{"label": 1}`,
		"empty":      "\n\n",
		"broken":     "{\"path\": \"a.png\"}\nnot json\n",
	} {
		if _, err := ReadManifest(write(name, text)); err == nil {
			t.Errorf("%s: no error for %q", name, text)
		}
	}
	// each a clear error naming the line (they were: the first object kept,
	// the last value kept, "bufio.Scanner: token too long")
	long := strings.Repeat("x", MaxManifestLine+1)
	for name, c := range map[string]struct{ text, want string }{
		"two.jsonl":   {"{\"path\": \"a.png\"}\n{\"path\": \"b.png\"} {\"path\": \"c.png\"}\n", ":2: more than one JSON value"},
		"dupkey.json": {"{\"path\": \"a.png\"}\n{\"path\": \"b.png\", \"label\": 0, \"path\": \"c.png\"}\n", `:2: the key "path" is given twice`},
		"long.txt":    {"a.png\n" + long + "\nb.png\n", ":2: the line is 16777217 bytes, longer than the 16 MiB"},
		"longjson":    {"{\"path\": \"a.png\"}\n{\"path\": \"" + long + "\"}\n", ":2: the line is"},
	} {
		if _, err := ReadManifest(write(name, c.text)); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", name, err, c.want)
		}
	}
	// a line of exactly the limit, and a last line without a newline, are read
	es, err = ReadManifest(write("limit.txt", "a.png\n"+long[:MaxManifestLine-4]+".png\nlast.png"))
	if err != nil || len(es) != 3 || es[2].Key != "last.png" {
		t.Fatalf("a line at the limit: %v", err)
	}
	if !EscapesRoot("../x.png") || !EscapesRoot("/abs/x.png") || EscapesRoot("a/../b.png") || EscapesRoot("..x/y.png") {
		t.Error("EscapesRoot")
	}
}

type testRec struct {
	Common
	Value int    `json:"value"`
	Error string `json:"error,omitempty"`
}

// One process per shard: a second open of a shard being run is refused
// naming the holder's pid; a lock left by a killed process is taken over.
func TestResultsLock(t *testing.T) {
	dir := t.TempDir()
	spec := Spec{Index: 0, Count: 1}
	id := Identity{Command: "score", ModelSHA256: "aaaa", Settings: "s1", ListHash: ListHash([]string{"a.png"}), Total: 1}
	keys := map[string]int{"a.png": 0}
	r, _, err := OpenResults(dir, spec, id, keys, false)
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = OpenResults(dir, spec, id, keys, false)
	if !errors.Is(err, ErrRunning) || !strings.Contains(err.Error(), fmt.Sprintf("shard 0/1 is already running (pid %d)", os.Getpid())) {
		t.Fatalf("a second run of the shard: %v", err)
	}
	r.Close()
	os.WriteFile(atomicfile.LockPath(ResultsPath(dir, spec)), []byte("999999\n"), 0o644) // a killed run's
	r, note, err := OpenResults(dir, spec, id, keys, false)
	if err != nil || !strings.Contains(note, "process 999999, which is gone") {
		t.Fatalf("a stale lock: %q, %v", note, err)
	}
	r.Close()
}

// A record changed by hand, and a file cut short, are refused by the rerun
// and by collect, as damaged (not as "of another run").
func TestResultsChecksums(t *testing.T) {
	dir := t.TempDir()
	spec := Spec{Index: 0, Count: 1}
	keys := []string{"a.png", "b.png", "c.png"}
	id := Identity{Command: "score", ModelSHA256: "aaaa", Settings: "s1", ListHash: ListHash(keys), Total: 3}
	mine := map[string]int{"a.png": 0, "b.png": 1, "c.png": 2}
	r, _, err := OpenResults(dir, spec, id, mine, false)
	if err != nil {
		t.Fatal(err)
	}
	for i, k := range keys {
		if err := r.Add(testRec{Common: Common{Index: i, Key: k, ModelSHA256: "aaaa", Settings: "s1"}, Value: 10 + i}, false); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := r.Finish(3); err != nil {
		t.Fatal(err)
	}
	r.Close()
	if _, err := Collect(dir); err != nil {
		t.Fatal(err)
	}
	good, _ := os.ReadFile(ResultsPath(dir, spec))
	for name, c := range map[string]struct {
		edit func(string) string
		want string
	}{
		"forged value": {func(s string) string { return strings.Replace(s, `"value":11`, `"value":99`, 1) }, "line 2: it was changed after padim wrote it"},
		"cut short":    {func(s string) string { return s[:len(s)-20] }, "cut short in line 3"},
		"no checksum":  {func(s string) string { return strings.Replace(s, `,"check":"`, `,"x":"`, 1) }, "line 1: it has no checksum"},
	} {
		os.WriteFile(ResultsPath(dir, spec), []byte(c.edit(string(good))), 0o644)
		if _, err := Collect(dir); !errors.Is(err, ErrDamaged) || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "another run") {
			t.Errorf("%s: collect: %v", name, err)
		}
		r, _, err := OpenResults(dir, spec, id, mine, false)
		// (the flag to change, --restart, is the command's to add: cmd/padim's shardError)
		if !errors.Is(err, ErrDamaged) || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "--") {
			t.Errorf("%s: resume: %v", name, err)
		}
		if r != nil {
			r.Close()
		}
	}
}

func TestResultsResume(t *testing.T) {
	dir := t.TempDir()
	spec := Spec{Index: 1, Count: 3}
	var keys []string
	for i := 0; i < 200; i++ {
		keys = append(keys, fmt.Sprintf("k%03d.png", i))
	}
	sel := spec.Select(keys)
	mine := map[string]int{}
	for _, i := range sel {
		mine[keys[i]] = i
	}
	id := Identity{Command: "score", ModelSHA256: "aaaa", Settings: "s1", ListHash: ListHash(keys), Total: len(keys)}
	run := func(id Identity, restart bool, stopAfter int, failKey string) (int, string, error) {
		r, note, err := OpenResults(dir, spec, id, mine, restart)
		if err != nil {
			return 0, note, err
		}
		defer r.Close() // as the system does for a killed process
		r.FlushEvery = 4
		n := 0
		for _, i := range sel {
			if r.Done(keys[i]) {
				continue
			}
			if n == stopAfter {
				return n, note, nil // killed: pending records are lost
			}
			rec := testRec{Common: Common{Index: i, Key: keys[i], ModelSHA256: id.ModelSHA256, Settings: id.Settings}, Value: i * i}
			if keys[i] == failKey {
				rec.Error = "unreadable"
			}
			var blob *BlobRef
			if i%2 == 0 {
				blob = r.AddBlob([]byte(keys[i]))
			}
			rec.Pixels = blob
			if err := r.Add(rec, rec.Error != ""); err != nil {
				return n, note, err
			}
			n++
		}
		_, err = r.Finish(len(sel))
		return n, note, err
	}
	// killed after 10 records: 8 on file (blocks of 4), no marker
	if n, _, err := run(id, false, 10, ""); err != nil || n != 10 {
		t.Fatal(n, err)
	}
	if _, err := os.Stat(MarkerPath(dir, spec)); err == nil {
		t.Fatal("a killed shard has a completion marker")
	}
	if _, err := Collect(dir); err == nil || !strings.Contains(err.Error(), "not every shard") {
		t.Fatalf("collect of an unfinished run: %v", err)
	}
	// another model: refused, the file untouched
	before, _ := os.ReadFile(ResultsPath(dir, spec))
	if strings.Count(string(before), "\n") != 8 {
		t.Fatalf("after the kill the file holds %d records, want 8", strings.Count(string(before), "\n"))
	}
	other := id
	other.ModelSHA256 = "bbbb"
	if _, _, err := run(other, false, -1, ""); !errors.Is(err, ErrMismatch) {
		t.Fatalf("another model: %v", err)
	}
	other = id
	other.Settings = "s2"
	if _, _, err := run(other, false, -1, ""); !errors.Is(err, ErrMismatch) {
		t.Fatalf("other settings: %v", err)
	}
	if after, _ := os.ReadFile(ResultsPath(dir, spec)); string(after) != string(before) {
		t.Fatal("a refused run changed the results")
	}
	// resumed with an unreadable input: the rest is done once
	failKey := keys[sel[len(sel)-1]]
	n, note, err := run(id, false, -1, failKey)
	if err != nil || n != len(sel)-8 || !strings.Contains(note, "8 of the shard's") {
		t.Fatalf("resume: %d scored, %q, %v", n, note, err)
	}
	// a rerun of a finished shard tries only the unreadable input again
	n, note, err = run(id, false, -1, "")
	if err != nil || n != 1 || !strings.Contains(note, "1 tried again") {
		t.Fatalf("rerun: %d scored, %q, %v", n, note, err)
	}
	b, _ := os.ReadFile(ResultsPath(dir, spec))
	seen := map[string]bool{}
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var r testRec
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			t.Fatal(err)
		}
		if seen[r.Key] || r.Value != r.Index*r.Index || r.Error != "" {
			t.Fatalf("record %s: duplicate %v, %+v", r.Key, seen[r.Key], r)
		}
		seen[r.Key] = true
		if r.Pixels != nil {
			if blob, err := ReadBlob(dir, r.Pixels); err != nil || string(blob) != r.Key {
				t.Fatalf("%s: blob %q, %v", r.Key, blob, err)
			}
		}
	}
	if len(seen) != len(sel) {
		t.Fatalf("%d records for %d inputs", len(seen), len(sel))
	}
	// no temporary or orphan files
	ents, _ := os.ReadDir(filepath.Join(dir, blockDir(spec)))
	refs := strings.Count(string(b), `"block"`)
	_ = refs
	for _, e := range ents {
		if strings.Contains(e.Name(), ".tmp-") {
			t.Fatalf("temporary file %s left", e.Name())
		}
		if !strings.Contains(string(b), blockDir(spec)+"/"+e.Name()) {
			t.Fatalf("orphan block %s left", e.Name())
		}
	}
	// --restart starts over
	n, note, err = run(other, true, -1, "")
	if err != nil || n != len(sel) || !strings.Contains(note, "over") {
		t.Fatalf("restart: %d, %q, %v", n, note, err)
	}
	// a damaged block: its record is scored again
	var first testRec
	b, _ = os.ReadFile(ResultsPath(dir, spec))
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		json.Unmarshal([]byte(l), &first)
		if first.Pixels != nil {
			break
		}
	}
	p := filepath.Join(dir, first.Pixels.Block)
	blk, _ := os.ReadFile(p)
	blk[first.Pixels.Offset] ^= 0xff
	os.WriteFile(p, blk, 0o644)
	if n, _, err := run(other, false, -1, ""); err != nil || n != 1 {
		t.Fatalf("damaged block: %d scored again, %v", n, err)
	}
}

func TestPixelsRoundTrip(t *testing.T) {
	m := []float32{1, -2.5, float32(math.Inf(1)), 0, 3, 4, 5, 6, 7}
	mask := []bool{true, false, false, true, true, false, false, false, true}
	for _, def := range []bool{false, true} {
		gm, gmask, ok := UnpackPixels(PackPixels(m, mask, def), 3, 3, def)
		if !ok {
			t.Fatal("unpack")
		}
		for i := range m {
			if gm[i] != m[i] || gmask[i] != (def && mask[i]) {
				t.Fatalf("defective %v: pixel %d: %v %v", def, i, gm[i], gmask[i])
			}
		}
	}
	if _, _, ok := UnpackPixels(PackPixels(m, mask, true), 3, 3, false); ok {
		t.Error("a wrong size accepted")
	}
	v := []float32{1.5, -0, float32(math.NaN())}
	g, err := DecodeFloats(EncodeFloats(v))
	if err != nil || g[0] != 1.5 || !math.IsNaN(float64(g[2])) {
		t.Fatal(g, err)
	}
}
