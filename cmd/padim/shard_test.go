package main

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/padim/padim/detector/backbone"
	"github.com/padim/padim/shard"
)

// runIn runs the built binary in a folder with extra environment variables.
func runIn(t *testing.T, dir string, env []string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(fix.bin, args...)
	cmd.Dir = dir
	cmd.Env = append(libEnv(), env...)
	out, errs, code, _ := runCmd(t, cmd)
	return out, errs, code
}

// libEnv is the environment with ONNX Runtime's library named absolutely
// (the binary looks for it from its working folder, here a temporary one).
func libEnv() []string {
	env := os.Environ()
	if lib, err := backbone.FindLibrary(""); err == nil {
		if abs, err := filepath.Abs(lib); err == nil {
			env = append(env, backbone.LibraryEnv+"="+abs)
		}
	}
	return env
}

func mustRunIn(t *testing.T, dir string, env []string, args ...string) string {
	t.Helper()
	out, errs, code := runIn(t, dir, env, args...)
	if code != 0 {
		t.Fatalf("padim %s exited %d:\n%s%s", strings.Join(args, " "), code, out, errs)
	}
	return out
}

// killAt starts the binary, waits until the test hook says it is held at
// stage (testWaitEnv in env), and kills it (SIGKILL, as a node loss).
func killAt(t *testing.T, dir string, env []string, stage string, args ...string) {
	t.Helper()
	cmd := exec.Command(fix.bin, args...)
	cmd.Dir, cmd.Env = dir, env
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if !waitFor(stderr, "padim-test: waiting at "+stage) {
		cmd.Wait()
		t.Fatalf("padim %s never reached %s", strings.Join(args, " "), stage)
	}
	cmd.Process.Kill()
	cmd.Wait()
}

// waitFor reads r until a line holding want (true), or its end (false); it
// then drains r in the background.
func waitFor(r io.Reader, want string) bool {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		if strings.Contains(sc.Text(), want) {
			go io.Copy(io.Discard, r)
			return true
		}
	}
	return false
}

func countLines(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	return bytes.Count(b, []byte("\n"))
}

// Four score shards of the real binary, each told its index by
// JOB_COMPLETION_INDEX as a Kubernetes Indexed Job would; one is killed
// mid-way (SIGKILL, as a node loss) and run again. padim collect then equals
// a single-process run: the same records, byte for byte, no duplicate, no loss.
func TestShardedScoreSimulation(t *testing.T) {
	if testing.Short() {
		t.Skip("processes of the real binary: run without -short")
	}
	fx := setup(t)
	dir := t.TempDir()
	var imgs []string
	filepath.Walk(fx.data, func(p string, info os.FileInfo, err error) error {
		if err == nil && strings.HasSuffix(p, ".png") && !strings.Contains(p, "ground_truth") {
			imgs = append(imgs, p)
		}
		return nil
	})
	const n, N = 200, 4
	var list []string
	for i := 0; i < n; i++ {
		key := fmt.Sprintf("in/img%03d.png", i)
		os.MkdirAll(filepath.Join(dir, "in"), 0o755)
		if err := os.Symlink(imgs[i%len(imgs)], filepath.Join(dir, key)); err != nil {
			t.Fatal(err)
		}
		list = append(list, key)
	}
	manifest := filepath.Join(dir, "list.txt")
	os.WriteFile(manifest, []byte(strings.Join(list, "\n")+"\n"), 0o644)
	// the victim: the shard with the most inputs; its 41st input is a FIFO, so
	// that it stops there with the inputs before it scored (a full group of 32)
	var per [N][]string
	for _, k := range list {
		per[shard.Of(k, N)] = append(per[shard.Of(k, N)], k)
	}
	victim := 0
	for i := range per {
		if len(per[i]) > len(per[victim]) {
			victim = i
		}
	}
	if len(per[victim]) < 42 {
		t.Fatalf("the split put only %d inputs in the largest shard", len(per[victim]))
	}
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	os.MkdirAll(a, 0o755)
	os.MkdirAll(b, 0o755)
	args := []string{"-q", "score", "--model", fx.mdl, "--device", "cpu", "--batch", "4", "--shard", "auto/4", "--out", "out", "--maps", "npy", "--manifest", manifest, "--flush-every", "5"}
	for i := 0; i < N; i++ {
		if i != victim {
			mustRunIn(t, a, []string{fmt.Sprintf("JOB_COMPLETION_INDEX=%d", i)}, args...)
		}
	}
	// the victim is killed (SIGKILL) as its 41st input comes out, held there
	// by the test hook: its first 40 records are on file (blocks of 5)
	killAt(t, a, append(libEnv(), fmt.Sprintf("JOB_COMPLETION_INDEX=%d", victim), testWaitEnv+"=score:41"), "score:41", args...)
	res := filepath.Join(a, "out", fmt.Sprintf("results-%d-of-%d.jsonl", victim, N))
	done := countLines(res)
	if done < 30 || done > 40 {
		t.Fatalf("the killed shard left %d records, want 30..40 (blocks of 5 before the FIFO)", done)
	}
	if _, err := os.Stat(shard.MarkerPath(filepath.Join(a, "out"), shard.Spec{Index: victim, Count: N})); err == nil {
		t.Fatal("the killed shard is marked finished")
	}
	if _, errs, code := runIn(t, a, nil, "collect", "out"); code != exitError || !strings.Contains(errs, "unfinished") {
		t.Fatalf("collect with a killed shard: exit %d: %s", code, errs)
	}
	// the pod is replaced with the same index: it resumes
	out := mustRunIn(t, a, []string{fmt.Sprintf("JOB_COMPLETION_INDEX=%d", victim)}, args...)
	if want := fmt.Sprintf("%d scored now, %d done before", len(per[victim])-done, done); !strings.Contains(out, want) {
		t.Fatalf("the rerun did not resume (want %q): %s", want, out)
	}
	out = mustRunIn(t, a, []string{fmt.Sprintf("JOB_COMPLETION_INDEX=%d", victim)}, args...)
	if !strings.Contains(out, fmt.Sprintf("%d done before", len(per[victim]))) {
		t.Fatalf("a rerun of a finished shard scored again: %s", out)
	}
	mustRunIn(t, a, nil, "collect", "out")
	// one process, one shard
	mustRunIn(t, b, nil, append(args[:9:9], append([]string{"0/1"}, args[10:]...)...)...)
	mustRunIn(t, b, nil, "collect", "out")
	ra, _ := os.ReadFile(filepath.Join(a, "out", "results.jsonl"))
	rb, _ := os.ReadFile(filepath.Join(b, "out", "results.jsonl"))
	if !bytes.Equal(ra, rb) {
		t.Fatalf("collect of 4 shards differs from one process:\n%s\n---\n%s", firstDiff(ra, rb), "")
	}
	if got := bytes.Count(ra, []byte("\n")); got != n {
		t.Fatalf("%d records for %d inputs", got, n)
	}
	keys := map[string]bool{}
	for _, l := range bytes.Split(bytes.TrimSpace(ra), []byte("\n")) {
		var r shard.ScoreRecord
		if err := json.Unmarshal(l, &r); err != nil {
			t.Fatal(err)
		}
		if keys[r.Key] || r.Score == nil || len(r.Maps) != 1 {
			t.Fatalf("record %s: duplicate %v or incomplete: %s", r.Key, keys[r.Key], l)
		}
		keys[r.Key] = true
		ma, err1 := os.ReadFile(filepath.Join(a, r.Maps[0]))
		mb, err2 := os.ReadFile(filepath.Join(b, r.Maps[0]))
		if err1 != nil || err2 != nil || !bytes.Equal(ma, mb) {
			t.Fatalf("map %s: %v %v, equal %v", r.Maps[0], err1, err2, bytes.Equal(ma, mb))
		}
	}
	sa, _ := os.ReadFile(filepath.Join(a, "out", "summary.json"))
	sb, _ := os.ReadFile(filepath.Join(b, "out", "summary.json"))
	if !bytes.Equal(bytes.Replace(sa, []byte(`"shards": 4`), []byte(`"shards": 1`), 1), sb) {
		t.Fatalf("summaries differ:\n%s\n%s", sa, sb)
	}
	// and the plain score of the same list gives the same scores
	var doc struct{ Images []shard.ScoredImage }
	plain := mustRunIn(t, b, nil, "-q", "score", "--model", fx.mdl, "--device", "cpu", "--json", "--manifest", manifest)
	if err := json.Unmarshal([]byte(plain), &doc); err != nil || len(doc.Images) != n {
		t.Fatalf("plain score: %v", err)
	}
	for i, l := range bytes.Split(bytes.TrimSpace(ra), []byte("\n")) {
		var r shard.ScoreRecord
		json.Unmarshal(l, &r)
		if r.Path != doc.Images[i].Path || *r.Score != *doc.Images[i].Score || *r.Defect != *doc.Images[i].Defect {
			t.Fatalf("%s: sharded %v/%v, plain %s %v/%v", r.Path, *r.Score, *r.Defect, doc.Images[i].Path, *doc.Images[i].Score, *doc.Images[i].Defect)
		}
	}
	// no temporary files anywhere
	filepath.Walk(a, func(p string, info os.FileInfo, err error) error {
		if err == nil && strings.Contains(filepath.Base(p), ".tmp-") {
			t.Errorf("temporary file %s left", p)
		}
		return nil
	})
	// a different model never mixes in: refused (exit 2), or started over with --restart
	other := filepath.Join(dir, "other.padim")
	mustRunIn(t, dir, nil, "-q", "train", "--backbone", fx.bb, "--data", fx.data, "--out", other, "--dim", "20", "--device", "cpu")
	swap := append([]string{}, args...)
	swap[3] = other
	if _, errs, code := runIn(t, a, []string{fmt.Sprintf("JOB_COMPLETION_INDEX=%d", victim)}, swap...); code != exitUsage || !strings.Contains(errs, "another run") || !strings.Contains(errs, "--restart") {
		t.Fatalf("another model into the same results: exit %d: %s", code, errs)
	}
	if _, errs, code := runIn(t, a, []string{fmt.Sprintf("JOB_COMPLETION_INDEX=%d", victim)}, append(swap, "--restart")...); code != 0 || !strings.Contains(errs, "over") {
		t.Fatalf("--restart: exit %d: %s", code, errs)
	}
	if _, errs, code := runIn(t, a, nil, "collect", "out"); code != exitError || !strings.Contains(errs, "model") {
		t.Fatalf("collect of shards of two models: exit %d: %s", code, errs)
	}
}

func firstDiff(a, b []byte) string {
	la, lb := bytes.Split(a, []byte("\n")), bytes.Split(b, []byte("\n"))
	for i := range min(len(la), len(lb)) {
		if !bytes.Equal(la[i], lb[i]) {
			return fmt.Sprintf("line %d:\n%s\n%s", i+1, la[i], lb[i])
		}
	}
	return fmt.Sprintf("%d vs %d lines", len(la), len(lb))
}

// Three eval shards over a JSON-lines manifest (labels, masks), one killed
// mid-way and run again: padim collect gives the metrics of a single-machine
// eval of the same list, byte for byte (image and pixel AUROC, AUPRO, F1s,
// per-image outcomes). A second run over the MVTec folder, killed at an
// arbitrary moment, must agree with eval --data too.
func TestShardedEvalSimulation(t *testing.T) {
	if testing.Short() {
		t.Skip("processes of the real binary: run without -short")
	}
	fx := setup(t)
	dir := t.TempDir()
	data := filepath.Join(dir, "cat")
	mustRunIn(t, dir, nil, "synth", "--out", data, "--seed", "5", "--train", "1", "--test-good", "10", "--test-defect", "14", "--size", "72")
	type line struct {
		Path  string `json:"path"`
		Label int    `json:"label"`
		Mask  string `json:"mask,omitempty"`
		Type  string `json:"type"`
	}
	var items []line
	filepath.Walk(filepath.Join(data, "test"), func(p string, info os.FileInfo, err error) error {
		if err == nil && strings.HasSuffix(p, ".png") {
			typ := filepath.Base(filepath.Dir(p))
			l := line{Path: p, Type: typ}
			if typ != "good" {
				l.Label = 1
				l.Mask = filepath.Join(data, "ground_truth", typ, strings.TrimSuffix(filepath.Base(p), ".png")+"_mask.png")
			}
			items = append(items, l)
		}
		return nil
	})
	const n, N = 130, 3
	os.MkdirAll(filepath.Join(dir, "in"), 0o755)
	var mf bytes.Buffer
	var per [N][]string
	for i := 0; i < n; i++ {
		l := items[i%len(items)]
		key := fmt.Sprintf("in/e%03d.png", i)
		os.Symlink(l.Path, filepath.Join(dir, key))
		l.Path = key
		b, _ := json.Marshal(l)
		mf.Write(append(b, '\n'))
		per[shard.Of(key, N)] = append(per[shard.Of(key, N)], key)
	}
	manifest := filepath.Join(dir, "eval.jsonl")
	os.WriteFile(manifest, mf.Bytes(), 0o644)
	single := mustRunIn(t, dir, nil, "-q", "eval", "--model", fx.mdl, "--manifest", manifest, "--json", "--device", "cpu", "--batch", "4")
	victim := 0
	for i := range per {
		if len(per[i]) > len(per[victim]) {
			victim = i
		}
	}
	if len(per[victim]) < 34 {
		t.Fatalf("the largest shard holds %d inputs", len(per[victim]))
	}
	args := []string{"-q", "eval", "--model", fx.mdl, "--manifest", manifest, "--device", "cpu", "--batch", "4", "--shard", "auto/3", "--out", "w", "--flush-every", "3"}
	env := func(i int) []string { return []string{fmt.Sprintf("SLURM_ARRAY_TASK_ID=%d", i)} }
	for i := 0; i < N; i++ {
		if i != victim {
			mustRunIn(t, dir, env(i), args...)
		}
	}
	// killed as its 31st image comes out: 30 records on file (blocks of 3)
	killAt(t, dir, append(append(libEnv(), env(victim)...), testWaitEnv+"=evaluate:31"), "evaluate:31", args...)
	res := filepath.Join(dir, "w", fmt.Sprintf("results-%d-of-%d.jsonl", victim, N))
	done := countLines(res)
	if done != 30 {
		t.Fatalf("the killed eval shard left %d records, want 30", done)
	}
	out := mustRunIn(t, dir, env(victim), args...)
	if want := fmt.Sprintf("%d scored now, %d done before", len(per[victim])-done, done); !strings.Contains(out, want) {
		t.Fatalf("the rerun did not resume (want %q): %s", want, out)
	}
	coll := mustRunIn(t, dir, nil, "collect", "--json", "w")
	if coll != single {
		t.Fatalf("collect of 3 eval shards differs from one eval:\n%s", firstDiff([]byte(coll), []byte(single)))
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "w", "eval.json")); string(b) != single {
		t.Fatal("eval.json differs from eval --json")
	}
	var ev struct {
		PixelAUROC *float64 `json:"pixel_auroc"`
		AUPRO      *float64 `json:"aupro"`
		NImages    int      `json:"n_images"`
	}
	json.Unmarshal([]byte(single), &ev)
	if ev.PixelAUROC == nil || ev.AUPRO == nil || ev.NImages != n {
		t.Fatalf("the reference eval lacks pixel metrics: %s", single[:200])
	}
	t.Logf("sharded eval: pixel AUROC %.6f, AUPRO %.6f over %d images, identical to one machine", *ev.PixelAUROC, *ev.AUPRO, ev.NImages)

	// the MVTec folder, a shard killed whenever it happens to be
	ref := mustRunIn(t, dir, nil, "-q", "eval", "--model", fx.mdl, "--data", data, "--json", "--device", "cpu")
	args = []string{"-q", "eval", "--model", fx.mdl, "--data", data, "--device", "cpu", "--shard", "auto/2", "--out", "w2", "--flush-every", "1"}
	mustRunIn(t, dir, env(0), args...)
	// killed once its first record is on file (flushed at once: --flush-every 1)
	killAt(t, dir, append(append(libEnv(), env(1)...), testWaitEnv+"=evaluate:2"), "evaluate:2", args...)
	if countLines(filepath.Join(dir, "w2", "results-1-of-2.jsonl")) == 0 {
		t.Fatal("the killed shard left no record to resume from")
	}
	mustRunIn(t, dir, env(1), args...)
	if coll := mustRunIn(t, dir, nil, "collect", "--json", "w2"); coll != ref {
		t.Fatalf("collect of 2 eval shards of the folder differs from one eval:\n%s", firstDiff([]byte(coll), []byte(ref)))
	}
}

// Train shards (index from JOB_COMPLETION_INDEX), merged, calibrated in a
// second sharded pass (index from AWS_BATCH_JOB_ARRAY_INDEX) and merged with
// their calibration: the model and its thresholds equal one fit on every
// image within 1e-6 relative — low-rank and full forms, shards holding
// samples or full statistics, calibrated against the merged statistics or
// the shards themselves.
func TestShardedTrainMergeEqualsOneFit(t *testing.T) {
	if testing.Short() {
		t.Skip("processes of the real binary: run without -short")
	}
	fx := setup(t)
	test := filepath.Join(fx.data, "test")
	for _, c := range []struct {
		dim        int
		form       string
		viaShards  bool // calibrate and merge with the shard files, not merge --stats-out
		statsShard bool // some shard holds full statistics
		unreadable bool // the training folder holds an unreadable image
	}{{40, "lowrank", false, false, false}, {6, "full", true, false, false}, {1, "full", false, true, false}, {40, "lowrank", false, false, true}} {
		t.Run(fmt.Sprintf("dim%d-unreadable%v", c.dim, c.unreadable), func(t *testing.T) {
			dir := t.TempDir()
			dim := fmt.Sprint(c.dim)
			data := fx.data
			if c.unreadable {
				// one fit skips it (exit 4); the shards record it and finish (exit 0)
				data = filepath.Join(dir, "imgs")
				ents, _ := os.ReadDir(filepath.Join(fx.data, "train", "good"))
				for _, e := range ents {
					copyFile(t, filepath.Join(fx.data, "train", "good", e.Name()), filepath.Join(data, e.Name()))
				}
				copyFile(t, filepath.Join("..", "..", "testdata", "hostile", "truncated.png"), filepath.Join(data, "003b.png"))
				if _, errs, code := runIn(t, dir, nil, "-q", "train", "--backbone", fx.bb, "--data", data, "--out", "single.padim", "--dim", dim, "--device", "cpu"); code != exitSkipped {
					t.Fatalf("one fit with an unreadable image: exit %d: %s", code, errs)
				}
			} else {
				mustRunIn(t, dir, nil, "-q", "train", "--backbone", fx.bb, "--data", data, "--out", "single.padim", "--dim", dim, "--device", "cpu")
			}
			var stats []string
			kinds := ""
			for i := 0; i < 3; i++ {
				s := fmt.Sprintf("S-%d.stats", i)
				out := mustRunIn(t, dir, []string{fmt.Sprintf("JOB_COMPLETION_INDEX=%d", i)}, "-q", "train", "--backbone", fx.bb, "--data", data, "--shard", "auto/3", "--stats-out", s, "--dim", dim, "--device", "cpu")
				if strings.Contains(out, "none of the") {
					continue
				}
				stats = append(stats, s)
				b, _ := os.ReadFile(filepath.Join(dir, s))
				if bytes.Contains(b[:min(len(b), 4096)], []byte(`"shard":"stats"`)) {
					kinds += "stats "
				} else {
					kinds += "samples "
				}
			}
			t.Logf("shards hold: %s", kinds)
			if c.statsShard != strings.Contains(kinds, "stats") {
				t.Fatalf("shards hold %s, want a statistics shard: %v", kinds, c.statsShard)
			}
			from := stats
			if !c.viaShards {
				mustRunIn(t, dir, nil, append([]string{"-q", "merge", "--stats-out", "total.stats"}, stats...)...)
				from = []string{"total.stats"}
			}
			var calibs []string
			for i := 0; i < 3; i++ {
				cf := fmt.Sprintf("C-%d.calib", i)
				mustRunIn(t, dir, []string{fmt.Sprintf("AWS_BATCH_JOB_ARRAY_INDEX=%d", i)}, append([]string{"-q", "calibrate", "--data", data, "--shard", "auto/3", "--out", cf, "--device", "cpu"}, from...)...)
				calibs = append(calibs, cf)
			}
			mustRunIn(t, dir, nil, append(append([]string{"-q", "merge", "--device", "cpu", "--out", "merged.padim"}, from...), calibs...)...)
			var a, b struct {
				NTrain      int    `json:"n_train"`
				Gaussian    string `json:"gaussian"`
				Calibration struct {
					Image, Pixel   float64
					Rule           string
					Images         int
					ImageScores    []float64
					PixelQuantiles []float64
				} `json:"calibration"`
			}
			json.Unmarshal([]byte(mustRunIn(t, dir, nil, "info", "--json", "--model", "single.padim")), &a)
			json.Unmarshal([]byte(mustRunIn(t, dir, nil, "info", "--json", "--model", "merged.padim")), &b)
			if a.NTrain != b.NTrain || a.Gaussian != c.form || b.Gaussian != c.form || a.Calibration.Rule != b.Calibration.Rule || a.Calibration.Images != b.Calibration.Images || !strings.HasPrefix(b.Calibration.Rule, "leave-one-out") {
				t.Fatalf("single %+v\nmerged %+v", a, b)
			}
			worst := 0.0
			rel := func(x, y float64) {
				worst = max(worst, math.Abs(x-y)/math.Max(math.Abs(x), 1e-30))
			}
			rel(a.Calibration.Image, b.Calibration.Image)
			rel(a.Calibration.Pixel, b.Calibration.Pixel)
			for i := range a.Calibration.ImageScores {
				rel(a.Calibration.ImageScores[i], b.Calibration.ImageScores[i])
			}
			for i := range a.Calibration.PixelQuantiles {
				rel(a.Calibration.PixelQuantiles[i], b.Calibration.PixelQuantiles[i])
			}
			// the models score the same
			var sa, sb struct{ Images []shard.ScoredImage }
			json.Unmarshal([]byte(mustRunIn(t, dir, nil, "-q", "score", "--model", "single.padim", "--json", "--device", "cpu", test)), &sa)
			json.Unmarshal([]byte(mustRunIn(t, dir, nil, "-q", "score", "--model", "merged.padim", "--json", "--device", "cpu", test)), &sb)
			if len(sa.Images) == 0 || len(sa.Images) != len(sb.Images) {
				t.Fatalf("%d vs %d scored", len(sa.Images), len(sb.Images))
			}
			for i := range sa.Images {
				rel(float64(*sa.Images[i].Score), float64(*sb.Images[i].Score))
			}
			t.Logf("%s form: worst relative difference %.3g (thresholds %.6g/%.6g, %d leave-one-out scores)", c.form, worst, b.Calibration.Image, b.Calibration.Pixel, len(b.Calibration.ImageScores))
			if worst > 1e-6 {
				t.Fatalf("the sharded fit differs from one fit by %.3g relative", worst)
			}
		})
	}
}

// score --stdin-jsonl answers a request as soon as it arrives (a stream
// processor may wait for each line), one line per request, in order.
func TestScoreStdinJSONL(t *testing.T) {
	fx := setup(t)
	good := filepath.Join(fx.data, "test", "good", "000.png")
	cmd := exec.Command(fx.bin, "-q", "score", "--model", fx.mdl, "--device", "cpu", "--stdin-jsonl")
	in, _ := cmd.StdinPipe()
	outp, _ := cmd.StdoutPipe()
	var errb bytes.Buffer
	cmd.Stderr = &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(outp)
	readLine := func() map[string]any {
		t.Helper()
		ch := make(chan string, 1)
		go func() { l, _ := br.ReadString('\n'); ch <- l }()
		select {
		case l := <-ch:
			var m map[string]any
			if err := json.Unmarshal([]byte(l), &m); err != nil {
				t.Fatalf("%q: %v (stderr %s)", l, err, errb.String())
			}
			return m
		case <-time.After(30 * time.Second):
			t.Fatal("no answer to a request while stdin stays open")
		}
		return nil
	}
	fmt.Fprintf(in, `{"path": %q, "id": "a1"}`+"\n", good)
	if m := readLine(); m["id"] != "a1" || m["score"] == nil || m["line"].(float64) != 1 {
		t.Fatalf("first answer: %v", m)
	}
	b, _ := os.ReadFile(good)
	fmt.Fprintf(in, "not json\n{\"data\": %q, \"name\": \"mem\", \"id\": 3}\n{\"path\": \"/nonexistent.png\"}\n", base64.StdEncoding.EncodeToString(b))
	in.Close()
	m2, m3, m4 := readLine(), readLine(), readLine()
	if m2["error"] == nil || m2["line"].(float64) != 2 || m3["id"].(float64) != 3 || m3["score"] == nil || m3["path"] != "mem" || m4["error"] == nil {
		t.Fatalf("answers: %v\n%v\n%v", m2, m3, m4)
	}
	if rest, _ := io.ReadAll(br); len(rest) != 0 {
		t.Fatalf("extra output %q", rest)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit: %v: %s", err, errb.String())
	}
}

// The shard flags' usage errors: exit 2, a message, no stack trace.
func TestShardUsage(t *testing.T) {
	fx := setup(t)
	good := filepath.Join(fx.data, "test", "good", "000.png")
	rows := []struct {
		env  []string
		args []string
		code int
		msg  string
	}{
		{nil, []string{"score", "--model", fx.mdl, "--shard", "4/4", "--out", "o", good}, exitUsage, "[0, 3]"},
		{nil, []string{"score", "--model", fx.mdl, "--shard", "auto/4", "--out", "o", good}, exitUsage, "JOB_COMPLETION_INDEX"},
		{[]string{"JOB_COMPLETION_INDEX=7"}, []string{"score", "--model", fx.mdl, "--shard", "auto/4", "--out", "o", good}, exitUsage, "outside [0, 3]"},
		{nil, []string{"score", "--model", fx.mdl, "--shard", "0/2", good}, exitUsage, "needs --out"},
		{nil, []string{"score", "--model", fx.mdl, "--shard", "0/2", "--out", "o", "--json", good}, exitUsage, "collect"},
		{nil, []string{"score", "--model", fx.mdl, "--restart", good}, exitUsage, "go with --shard"},
		{nil, []string{"score", "--model", fx.mdl, "--stdin-jsonl", good}, exitUsage, "stdin"},
		{nil, []string{"eval", "--model", fx.mdl, "--data", fx.data, "--shard", "0/2"}, exitUsage, "needs --out"},
		{nil, []string{"eval", "--model", fx.mdl}, exitUsage, "--data is required"},
		{nil, []string{"train", "--data", fx.data, "--shard", "0/2"}, exitUsage, "--stats-out"},
		{nil, []string{"train", "--data", fx.data, "--shard", "0/2", "--stats-out", "s", "--holdout", "0.2"}, exitUsage, "calibrate"},
		{nil, []string{"train", "--out", "m"}, exitUsage, "--data is required"},
		{nil, []string{"calibrate", "--data", fx.data, "--out", "c"}, exitUsage, "statistics files"},
		{nil, []string{"merge", "s.stats"}, exitUsage, "--out is required"},
		{nil, []string{"collect"}, exitUsage, "results folder"},
		{nil, []string{"collect", "."}, exitError, "no shard results"},
		{nil, []string{"score", "--model", fx.mdl, "--shard", "0/1", "--out", "o", "--flush-every", "-1", good}, exitUsage, "--flush-every"},
	}
	for _, r := range rows {
		dir := t.TempDir()
		out, errs, code := runIn(t, dir, r.env, r.args...)
		if code != r.code || !strings.Contains(out+errs, r.msg) || strings.Contains(errs, "goroutine ") {
			t.Errorf("padim %s: exit %d, want %d with %q:\n%s%s", strings.Join(r.args, " "), code, r.code, r.msg, out, errs)
		}
	}
}
