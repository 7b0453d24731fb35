package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/padim/padim/detector/backbone"
	"github.com/padim/padim/detector/safetensors"
)

// The hostile- and careless-input table: each row runs the built binary and
// checks the exit code, the message, and that every input is byte-identical
// afterwards.

type fixture struct {
	dir, bin      string
	data, bb, mdl string // synthetic set, resnet18 at 64², a model trained on it
}

var (
	fixOnce sync.Once
	fix     fixture
	fixErr  error
)

// setup builds the binary, a tiny data set, a backbone and a model once.
func setup(t *testing.T) fixture {
	t.Helper()
	if err := backbone.Init(""); err != nil {
		t.Skipf("ONNX Runtime not available (make onnxruntime): %v", err)
	}
	fixOnce.Do(func() {
		dir, err := os.MkdirTemp("", "padim-hostile-")
		if err != nil {
			fixErr = err
			return
		}
		fix = fixture{dir: dir, bin: filepath.Join(dir, "padim"), data: filepath.Join(dir, "wood"), bb: filepath.Join(dir, "r18.onnx"), mdl: filepath.Join(dir, "m.padim")}
		if b, err := exec.Command("go", "build", "-o", fix.bin, ".").CombinedOutput(); err != nil {
			fixErr = errors.New(string(b))
			return
		}
		for _, args := range [][]string{
			{"synth", "--out", fix.data, "--seed", "3", "--train", "8", "--test-good", "2", "--test-defect", "2", "--size", "80"},
			{"backbone", "--arch", "resnet18", "--seed", "3", "--size", "64", "--out", fix.bb},
			{"-q", "train", "--backbone", fix.bb, "--data", fix.data, "--out", fix.mdl, "--dim", "40", "--device", "cpu"},
		} {
			if b, err := exec.Command(fix.bin, args...).CombinedOutput(); err != nil {
				fixErr = errors.New(strings.Join(args, " ") + ": " + string(b))
				return
			}
		}
	})
	if fixErr != nil {
		t.Fatal(fixErr)
	}
	return fix
}

// run runs the binary and returns stdout, stderr, exit code and the peak RSS.
func runBin(t *testing.T, env []string, args ...string) (string, string, int, int64) {
	t.Helper()
	cmd := exec.Command(fix.bin, args...)
	cmd.Env = append(os.Environ(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	var rss int64
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		rss = ru.Maxrss << 10
	}
	return out.String(), errb.String(), code, rss
}

// snapshot hashes every file under the given paths.
func snapshot(t *testing.T, paths ...string) map[string][32]byte {
	t.Helper()
	h := map[string][32]byte{}
	for _, p := range paths {
		filepath.Walk(p, func(f string, info os.FileInfo, err error) error {
			if err == nil && info.Mode().IsRegular() {
				b, _ := os.ReadFile(f)
				h[f] = sha256.Sum256(b)
			}
			return nil
		})
	}
	return h
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Dir(dst), 0o755)
	if err := os.WriteFile(dst, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// resign writes a copy of the model with header values changed and a valid checksum.
func resign(t *testing.T, src, dst string, edit func(md map[string]string, ts []safetensors.Tensor)) {
	t.Helper()
	f, err := safetensors.Read(src, true)
	if err != nil {
		t.Fatal(err)
	}
	edit(f.Metadata, f.Tensors)
	if err := safetensors.Write(dst, f.Metadata, f.Tensors); err != nil {
		t.Fatal(err)
	}
}

func TestHostileInputTable(t *testing.T) {
	fx := setup(t)
	testdata := filepath.Join("..", "..", "testdata", "hostile")
	good := filepath.Join(fx.data, "test", "good", "000.png")
	type row struct {
		name   string
		prep   func(t *testing.T, dir string) []string // returns args; may create files in dir
		env    []string
		code   int
		msg    string                                            // in stderr (or stdout for JSON checks)
		check  func(t *testing.T, dir, stdout string, rss int64) // optional
		inputs []string                                          // must be byte-identical afterwards (besides dir's)
	}
	rows := []row{
		{name: "score maps would overwrite an input mask", prep: func(t *testing.T, d string) []string {
			copyFile(t, good, filepath.Join(d, "x.png"))
			copyFile(t, good, filepath.Join(d, "x_mask.png"))
			return []string{"score", "--model", fx.mdl, "--out", d, "--maps", "png", d}
		}, code: exitUsage, msg: "would overwrite the input"},
		{name: "train --out is the backbone", prep: func(t *testing.T, d string) []string {
			copyFile(t, fx.bb, filepath.Join(d, "bb.onnx"))
			return []string{"train", "--backbone", filepath.Join(d, "bb.onnx"), "--data", fx.data, "--out", filepath.Join(d, "bb.onnx")}
		}, code: exitUsage, msg: "would overwrite the input"},
		{name: "train --out is a training image", prep: func(t *testing.T, d string) []string {
			copyFile(t, good, filepath.Join(d, "imgs", "a.png"))
			copyFile(t, good, filepath.Join(d, "imgs", "b.png"))
			return []string{"train", "--backbone", fx.bb, "--data", filepath.Join(d, "imgs"), "--out", filepath.Join(d, "imgs", "a.png")}
		}, code: exitUsage, msg: "would overwrite the input"},
		{name: "train --stats-out equals --out", prep: func(t *testing.T, d string) []string {
			return []string{"train", "--backbone", fx.bb, "--data", fx.data, "--out", filepath.Join(d, "m"), "--stats-out", filepath.Join(d, "m")}
		}, code: exitUsage, msg: "are the same file"},
		{name: "merge --out is a shard", prep: func(t *testing.T, d string) []string {
			s := filepath.Join(d, "s.stats")
			os.WriteFile(s, []byte("shard"), 0o644)
			return []string{"merge", "--out", s, s}
		}, code: exitUsage, msg: "would overwrite the input"},
		{name: "bit flip in the model header", prep: func(t *testing.T, d string) []string {
			b, _ := os.ReadFile(fx.mdl)
			i := bytes.Index(b, []byte(`"sigma":"4"`))
			if i < 0 {
				t.Fatal("no sigma in the header")
			}
			b[i+9] ^= 1 // "4" → "5": still valid JSON
			os.WriteFile(filepath.Join(d, "m.padim"), b, 0o644)
			return []string{"info", "--model", filepath.Join(d, "m.padim")}
		}, code: exitError, msg: "checksum"},
		{name: "re-signed header with sigma 1e9", prep: func(t *testing.T, d string) []string {
			resign(t, fx.mdl, filepath.Join(d, "m.padim"), func(md map[string]string, _ []safetensors.Tensor) { md["sigma"] = "1e9" })
			return []string{"score", "--model", filepath.Join(d, "m.padim"), good}
		}, code: exitError, msg: "sigma"},
		{name: "re-signed header with NaN eps", prep: func(t *testing.T, d string) []string {
			resign(t, fx.mdl, filepath.Join(d, "m.padim"), func(md map[string]string, _ []safetensors.Tensor) { md["eps"] = "NaN" })
			return []string{"score", "--model", filepath.Join(d, "m.padim"), good}
		}, code: exitError, msg: "eps"},
		{name: "re-signed header with a foreign grid", prep: func(t *testing.T, d string) []string {
			resign(t, fx.mdl, filepath.Join(d, "m.padim"), func(md map[string]string, _ []safetensors.Tensor) { md["grid"] = "100000,100000" })
			return []string{"score", "--model", filepath.Join(d, "m.padim"), good}
		}, code: exitError, msg: "grid"},
		{name: "re-signed all-zero model", prep: func(t *testing.T, d string) []string {
			resign(t, fx.mdl, filepath.Join(d, "m.padim"), func(md map[string]string, ts []safetensors.Tensor) {
				for i := range ts {
					if ts[i].Name == "lowrank_m" || ts[i].Name == "linv" {
						clear(ts[i].Data)
					}
				}
				md["gaussian"] = "full"
				for i := range ts {
					if ts[i].Name == "lowrank_m" { // a full-form shape of zeros
						ts[i] = safetensors.F32("linv", make([]float32, 16*16*(40*41/2)), 16*16, 40*41/2)
					}
				}
			})
			return []string{"score", "--model", filepath.Join(d, "m.padim"), good}
		}, code: exitError, msg: "diagonal"},
		{name: "truncated model", prep: func(t *testing.T, d string) []string {
			b, _ := os.ReadFile(fx.mdl)
			os.WriteFile(filepath.Join(d, "m.padim"), b[:len(b)/2], 0o644)
			return []string{"score", "--model", filepath.Join(d, "m.padim"), good}
		}, code: exitError, msg: "truncated"},
		{name: "a foreign safetensors file as model", prep: func(t *testing.T, d string) []string {
			return []string{"info", "--model", filepath.Join(testdata, "foreign.safetensors")}
		}, code: exitError, msg: "not a usable padim model"},
		{name: "train --tile 1", prep: func(t *testing.T, d string) []string {
			return []string{"train", "--backbone", fx.bb, "--data", fx.data, "--out", filepath.Join(d, "m"), "--tile", "1"}
		}, code: exitUsage, msg: "tile"},
		{name: "train --tile 20 --overlap 19 (a tile per pixel)", prep: func(t *testing.T, d string) []string {
			return []string{"train", "--backbone", fx.bb, "--data", fx.data, "--out", filepath.Join(d, "m"), "--tile", "20", "--overlap", "19", "--device", "cpu"}
		}, code: exitUsage, msg: "overlap"},
		{name: "tiles past the limit per image", prep: func(t *testing.T, d string) []string {
			copyFile(t, filepath.Join(testdata, "zero_8192.png"), filepath.Join(d, "big", "z.png"))
			return []string{"train", "--backbone", fx.bb, "--data", filepath.Join(d, "big"), "--out", filepath.Join(d, "m"), "--tile", "64", "--device", "cpu"}
		}, code: exitError, msg: "16384 tiles"},
		{name: "train --tile larger than the images", prep: func(t *testing.T, d string) []string {
			return []string{"train", "--backbone", fx.bb, "--data", fx.data, "--out", filepath.Join(d, "m"), "--tile", "100", "--device", "cpu"}
		}, code: exitError, msg: "smaller than the 100-pixel tile"},
		{name: "score --open-radius 100000", prep: func(t *testing.T, d string) []string {
			return []string{"score", "--model", fx.mdl, "--open-radius", "100000", good}
		}, code: exitUsage, msg: "--open-radius"},
		{name: "serve --queue 100000000", prep: func(t *testing.T, d string) []string {
			return []string{"serve", "--model", fx.mdl, "--queue", "100000000"}
		}, code: exitUsage, msg: "--queue"},
		{name: "serve --max-body 5GiB", prep: func(t *testing.T, d string) []string {
			return []string{"serve", "--model", fx.mdl, "--max-body", "5GiB"}
		}, code: exitUsage, msg: "--max-body"},
		{name: "serve --timeout 0s", prep: func(t *testing.T, d string) []string {
			return []string{"serve", "--model", fx.mdl, "--timeout", "0s"}
		}, code: exitUsage, msg: "--timeout"},
		{name: "train --batch 100000", prep: func(t *testing.T, d string) []string {
			return []string{"train", "--backbone", fx.bb, "--data", fx.data, "--out", filepath.Join(d, "m"), "--batch", "100000"}
		}, code: exitUsage, msg: "--batch"},
		{name: "backbone --size 100000", prep: func(t *testing.T, d string) []string {
			return []string{"backbone", "--arch", "resnet18", "--size", "100000", "--out", filepath.Join(d, "b.onnx")}
		}, code: exitUsage, msg: "--size"},
		{name: "synth --size 100000", prep: func(t *testing.T, d string) []string {
			return []string{"synth", "--out", filepath.Join(d, "s"), "--size", "100000"}
		}, code: exitUsage, msg: "--size"},
		{name: "train --dim -5", prep: func(t *testing.T, d string) []string {
			return []string{"train", "--data", fx.data, "--out", filepath.Join(d, "m"), "--dim", "-5"}
		}, code: exitUsage, msg: "--dim"},
		{name: "train --sigma NaN", prep: func(t *testing.T, d string) []string {
			return []string{"train", "--data", fx.data, "--out", filepath.Join(d, "m"), "--sigma", "NaN"}
		}, code: exitUsage, msg: "finite"},
		{name: "score --threshold NaN", prep: func(t *testing.T, d string) []string {
			return []string{"score", "--model", fx.mdl, "--threshold", "NaN", good}
		}, code: exitUsage, msg: "finite"},
		{name: "train --crop above --resize", prep: func(t *testing.T, d string) []string {
			return []string{"train", "--backbone", fx.bb, "--data", fx.data, "--out", filepath.Join(d, "m"), "--resize", "64", "--crop", "80"}
		}, code: exitUsage, msg: "crop"},
		{name: "train with a layer named twice", prep: func(t *testing.T, d string) []string {
			return []string{"train", "--backbone", fx.bb, "--data", fx.data, "--out", filepath.Join(d, "m"), "--layers", "layer1,layer2,layer1"}
		}, code: exitUsage, msg: "twice"},
		{name: "merge --eps -5", prep: func(t *testing.T, d string) []string {
			return []string{"merge", "--out", filepath.Join(d, "m"), "--eps", "-5", fx.mdl}
		}, code: exitUsage, msg: "--eps"},
		{name: "unparsable --dim", prep: func(t *testing.T, d string) []string {
			return []string{"train", "--data", fx.data, "--out", filepath.Join(d, "m"), "--dim", "abc"}
		}, code: exitUsage, msg: "invalid value", check: func(t *testing.T, d, stdout string, _ int64) {
			if stdout != "" {
				t.Fatalf("usage error printed help on stdout: %q", stdout[:min(80, len(stdout))])
			}
		}},
		{name: "score an image without --model", prep: func(t *testing.T, d string) []string {
			return []string{"score", good}
		}, code: exitUsage, msg: "--model is required"},
		{name: "unknown command", prep: func(t *testing.T, d string) []string { return []string{"scroe"} }, code: exitUsage, msg: `no command "scroe"`},
		{name: "missing ONNXRUNTIME_LIB", prep: func(t *testing.T, d string) []string {
			return []string{"score", "--model", fx.mdl, good}
		}, env: []string{"ONNXRUNTIME_LIB=/nonexistent/libonnxruntime.so.1"}, code: exitError, msg: "ONNXRUNTIME_LIB=/nonexistent"},
		{name: "synth into a non-empty folder", prep: func(t *testing.T, d string) []string {
			copyFile(t, good, filepath.Join(d, "mine.png"))
			return []string{"synth", "--out", d, "--train", "1", "--test-good", "0", "--test-defect", "0", "--size", "32"}
		}, code: exitUsage, msg: "not empty"},
		{name: "eval --report inside the data", prep: func(t *testing.T, d string) []string {
			return []string{"eval", "--model", fx.mdl, "--data", fx.data, "--report", filepath.Join(fx.data, "report")}
		}, code: exitUsage, msg: "overlap"},
		{name: "every training image unreadable", prep: func(t *testing.T, d string) []string {
			copyFile(t, filepath.Join(testdata, "truncated.png"), filepath.Join(d, "imgs", "a.png"))
			copyFile(t, filepath.Join(testdata, "not_an_image.png"), filepath.Join(d, "imgs", "b.png"))
			return []string{"train", "--backbone", fx.bb, "--data", filepath.Join(d, "imgs"), "--out", filepath.Join(d, "m"), "--device", "cpu"}
		}, code: exitError, msg: "no readable training image"},
		{name: "bad images are named and skipped, exit 4", prep: func(t *testing.T, d string) []string {
			for _, f := range []string{"truncated.png", "not_an_image.png", "bomb_header.png"} {
				copyFile(t, filepath.Join(testdata, f), filepath.Join(d, "in", f))
			}
			copyFile(t, good, filepath.Join(d, "in", "ok.png"))
			return []string{"score", "--model", fx.mdl, "--json", "--device", "cpu", filepath.Join(d, "in")}
		}, code: exitSkipped, check: func(t *testing.T, d, stdout string, _ int64) {
			for _, want := range []string{"truncated.png", "not_an_image.png", "larger than the", `"n_unreadable": 3`} {
				if !strings.Contains(stdout, want) {
					t.Errorf("JSON lacks %q", want)
				}
			}
		}},
		{name: "a 1×1 image is scored with a warning", prep: func(t *testing.T, d string) []string {
			return []string{"score", "--model", fx.mdl, "--json", "--device", "cpu", filepath.Join(testdata, "tiny_1x1.png")}
		}, code: exitOK, check: func(t *testing.T, d, stdout string, _ int64) {
			if !strings.Contains(stdout, "much smaller than the 64² network input") {
				t.Errorf("no warning: %s", stdout)
			}
		}},
		{name: "four all-zero 8192² images within the memory budget", prep: func(t *testing.T, d string) []string {
			for _, n := range []string{"a", "b", "c", "d"} {
				copyFile(t, filepath.Join(testdata, "zero_8192.png"), filepath.Join(d, "big", n+".png"))
			}
			return []string{"--max-memory", "4G", "score", "--model", fx.mdl, "--device", "cpu", filepath.Join(d, "big")}
		}, code: exitOK, check: func(t *testing.T, d, stdout string, rss int64) {
			if strings.Count(stdout, "\n") != 4 || rss > 1600<<20 { // 8 GB and more before the pipeline bounded decoding by bytes
				t.Errorf("%d lines, peak RSS %.2f GiB", strings.Count(stdout, "\n"), float64(rss)/(1<<30))
			}
			t.Logf("peak RSS %.2f GiB for four 8192² images", float64(rss)/(1<<30))
		}},
		{name: "a data folder given as a symlink", prep: func(t *testing.T, d string) []string {
			os.Symlink(filepath.Join(fx.data, "train", "good"), filepath.Join(d, "link"))
			return []string{"-q", "train", "--backbone", fx.bb, "--data", filepath.Join(d, "link"), "--out", filepath.Join(d, "m"), "--dim", "20", "--device", "cpu", "--calibrate", "none"}
		}, code: exitOK},
		{name: "two folders with the same names keep their own trees", prep: func(t *testing.T, d string) []string {
			copyFile(t, good, filepath.Join(d, "lineA", "x.png"))
			copyFile(t, good, filepath.Join(d, "lineB", "x.png"))
			return []string{"score", "--model", fx.mdl, "--out", filepath.Join(d, "o"), "--device", "cpu", filepath.Join(d, "lineA"), filepath.Join(d, "lineB")}
		}, code: exitOK, check: func(t *testing.T, d, _ string, _ int64) {
			for _, p := range []string{"lineA/x.npy", "lineB/x.npy"} {
				if _, err := os.Stat(filepath.Join(d, "o", p)); err != nil {
					t.Error(err)
				}
			}
		}},
		{name: "names with a newline and non-UTF-8 bytes", prep: func(t *testing.T, d string) []string {
			copyFile(t, good, filepath.Join(d, "in", "a\nb.png"))
			copyFile(t, good, filepath.Join(d, "in", "c\xff.png"))
			return []string{"score", "--model", fx.mdl, "--json", "--device", "cpu", filepath.Join(d, "in")}
		}, code: exitOK, check: func(t *testing.T, d, stdout string, _ int64) {
			var doc struct{ Images []map[string]any }
			if err := json.Unmarshal([]byte(stdout), &doc); err != nil || len(doc.Images) != 2 {
				t.Fatalf("%v: %s", err, stdout)
			}
			if doc.Images[1]["path_base64"] == nil {
				t.Errorf("non-UTF-8 name without its bytes: %v", doc.Images[1])
			}
		}},
		{name: "text output quotes a name with a newline", prep: func(t *testing.T, d string) []string {
			copyFile(t, good, filepath.Join(d, "in", "a\nb.png"))
			return []string{"score", "--model", fx.mdl, "--device", "cpu", filepath.Join(d, "in")}
		}, code: exitOK, check: func(t *testing.T, d, stdout string, _ int64) {
			if strings.Count(stdout, "\n") != 1 || !strings.Contains(stdout, `a\nb.png"`) {
				t.Errorf("output %q", stdout)
			}
		}},
		{name: "--threshold 0 is used as given", prep: func(t *testing.T, d string) []string {
			return []string{"score", "--model", fx.mdl, "--threshold", "0", "--fail-on-defect", "--json", "--device", "cpu", good}
		}, code: exitDefect, check: func(t *testing.T, d, stdout string, _ int64) {
			for _, k := range []string{`"x":`, `"y":`, `"w":`, `"h":`, `"area":`, `"max_score":`, `"frame":`} {
				if !strings.Contains(stdout, k) {
					t.Errorf("JSON lacks %s", k)
				}
			}
		}},
		{name: "holding out among readable images", prep: func(t *testing.T, d string) []string {
			for i, f := range []string{"000", "001", "002", "003", "004", "005"} {
				copyFile(t, filepath.Join(fx.data, "train", "good", f+".png"), filepath.Join(d, "imgs", f+".png"))
				if i < 3 {
					copyFile(t, filepath.Join(testdata, "truncated.png"), filepath.Join(d, "imgs", "bad"+f+".png"))
				}
			}
			return []string{"train", "--backbone", fx.bb, "--data", filepath.Join(d, "imgs"), "--out", filepath.Join(d, "m"), "--holdout", "0.5", "--dim", "20", "--device", "cpu"}
		}, code: exitSkipped, check: func(t *testing.T, d, stdout string, _ int64) {
			if !strings.Contains(stdout, "from 3 images' out-of-sample scores") { // half of the 6 readable
				t.Errorf("hold-out: %s", stdout)
			}
		}},
	}
	for _, r := range rows {
		t.Run(r.name, func(t *testing.T) {
			dir := t.TempDir()
			args := r.prep(t, dir)
			before := snapshot(t, dir, fx.data, fx.bb, fx.mdl, testdata)
			stdout, stderr, code, rss := runBin(t, r.env, args...)
			if code != r.code {
				t.Fatalf("padim %s: exit %d, want %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, r.code, stdout, stderr)
			}
			if r.msg != "" && !strings.Contains(stderr+stdout, r.msg) {
				t.Fatalf("message lacks %q:\n%s", r.msg, stderr)
			}
			if strings.Contains(stderr, "goroutine ") || strings.Contains(stderr, "panic") {
				t.Fatalf("a stack trace:\n%s", stderr)
			}
			after := snapshot(t, dir, fx.data, fx.bb, fx.mdl, testdata)
			for f, h := range before {
				if after[f] != h {
					t.Errorf("input %s changed", f)
				}
			}
			if r.check != nil {
				r.check(t, dir, stdout, rss)
			}
		})
	}
}

// An interrupt while a model is being written leaves no temporary file: the
// output is either absent or a whole model.
func TestInterruptLeavesNothingHalfWritten(t *testing.T) {
	fx := setup(t)
	for _, delay := range []time.Duration{300 * time.Millisecond, 900 * time.Millisecond, 1500 * time.Millisecond} {
		dir := t.TempDir()
		out := filepath.Join(dir, "m.padim")
		cmd := exec.Command(fx.bin, "-q", "train", "--backbone", fx.bb, "--data", fx.data, "--out", out, "--dim", "40", "--device", "cpu")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(delay)
		cmd.Process.Signal(os.Interrupt)
		cmd.Wait()
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			if strings.Contains(e.Name(), ".tmp-") {
				t.Fatalf("after %v: temporary file %s left", delay, e.Name())
			}
		}
		if _, err := os.Stat(out); err == nil {
			if _, _, code, _ := runBin(t, nil, "info", "--model", out); code != exitOK {
				t.Fatalf("after %v: a damaged model left", delay)
			}
		}
	}
}
