package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"image/jpeg"
	"image/png"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/padim/padim/detector/backbone"
	"github.com/padim/padim/detector/fileio/atomicfile"
	"github.com/padim/padim/detector/fileio/safetensors"
	"github.com/padim/padim/shard"
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

// setup makes a tiny data set, a backbone and a model once (with the
// binary of testBinary).
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
		fix = fixture{dir: dir, bin: testBinary(t), data: filepath.Join(dir, "wood"), bb: filepath.Join(dir, "r18.onnx"), mdl: filepath.Join(dir, "m.padim")}
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

// runBin runs the binary and returns stdout, stderr, exit code and its peak
// RSS. Like runPeak it starts the binary through the small helper process,
// so that the RSS is the binary's own and not the test process's.
func runBin(t *testing.T, env []string, args ...string) (string, string, int, int64) {
	t.Helper()
	enc, _ := json.Marshal(append([]string{fix.bin}, args...))
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperPeak$")
	cmd.Env = append(append(os.Environ(), env...), "PADIM_PEAK_HELPER="+string(enc))
	var errb bytes.Buffer
	cmd.Stderr = &errb
	res, err := cmd.Output()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatal(err)
	}
	var r struct {
		Code   int
		MaxRSS int64
		Stdout string
	}
	if err := json.Unmarshal(bytes.TrimSpace(res), &r); err != nil {
		t.Fatalf("helper: %v: %s %s", err, res, errb.String())
	}
	return r.Stdout, errb.String(), r.Code, r.MaxRSS
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

// jsonWith checks that stdout is one JSON object with the key.
func jsonWith(key string) func(t *testing.T, d, stdout string, _ int64) {
	return func(t *testing.T, d, stdout string, _ int64) {
		var doc map[string]any
		if err := json.Unmarshal([]byte(stdout), &doc); err != nil || doc[key] == nil {
			t.Errorf("not a JSON document with %q (%v): %.300s", key, err, stdout)
		}
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

		// flags anywhere (issue 23): a flag after an argument is read as a
		// flag, for every command; urfave/cli alone stopped at the first
		// argument (the range messages below come only from parsing the flag)
		{name: "flags after the arguments: collect DIR --json", prep: func(t *testing.T, d string) []string {
			if _, errs, code, _ := runBin(t, nil, "-q", "score", "--model", fx.mdl, "--device", "cpu", "--shard", "0/1", "--out", filepath.Join(d, "r"), good); code != 0 {
				t.Fatal(errs)
			}
			return []string{"collect", filepath.Join(d, "r"), "--json"}
		}, code: exitOK, check: jsonWith("n_images")},
		{name: "flags after the arguments: score --model M DIR --json", prep: func(t *testing.T, d string) []string {
			return []string{"score", "--model", fx.mdl, filepath.Join(fx.data, "test", "good"), "--json", "--device", "cpu"}
		}, code: exitOK, check: jsonWith("n_images")},
		{name: "flags after the arguments: info", prep: func(t *testing.T, d string) []string {
			return []string{"info", "stray", "--model", fx.mdl, "--json"}
		}, code: exitOK, check: jsonWith("n_train")},
		{name: "flags after the arguments: train", prep: func(t *testing.T, d string) []string {
			return []string{"train", "stray", "--data", fx.data, "--out", filepath.Join(d, "m"), "--dim", "-5"}
		}, code: exitUsage, msg: "--dim -5"},
		{name: "flags after the arguments: eval", prep: func(t *testing.T, d string) []string {
			return []string{"eval", "stray", "--model", fx.mdl, "--data", fx.data, "--open-radius", "100000"}
		}, code: exitUsage, msg: "--open-radius 100000"},
		{name: "flags after the arguments: synth", prep: func(t *testing.T, d string) []string {
			return []string{"synth", "stray", "--out", filepath.Join(d, "s"), "--size", "100000"}
		}, code: exitUsage, msg: "--size 100000"},
		{name: "flags after the arguments: backbone", prep: func(t *testing.T, d string) []string {
			return []string{"backbone", "stray", "--arch", "resnet18", "--size", "100000", "--out", filepath.Join(d, "b.onnx")}
		}, code: exitUsage, msg: "--size 100000"},
		{name: "flags after the arguments: demo", prep: func(t *testing.T, d string) []string {
			return []string{"demo", "stray", "--out", filepath.Join(d, "demo"), "--size", "100000"}
		}, code: exitUsage, msg: "--size 100000"},
		{name: "flags after the arguments: bench", prep: func(t *testing.T, d string) []string {
			return []string{"bench", "stray", "--size", "100000"}
		}, code: exitUsage, msg: "--size 100000"},
		{name: "flags after the arguments: merge", prep: func(t *testing.T, d string) []string {
			return []string{"merge", fx.mdl, "--out", filepath.Join(d, "m"), "--eps", "-5"}
		}, code: exitUsage, msg: "--eps -5"},
		{name: "flags after the arguments: experiment", prep: func(t *testing.T, d string) []string {
			return []string{"experiment", "samples", "stray", "--data", fx.data, "--repeats", "1000"}
		}, code: exitUsage, msg: "--repeats 1000"},
		{name: "flags before the sub-command: experiment", prep: func(t *testing.T, d string) []string {
			return []string{"experiment", "--data", fx.data, "samples", "--repeats", "1000"}
		}, code: exitUsage, msg: "--repeats 1000"},
		{name: "flags after the arguments: calibrate", prep: func(t *testing.T, d string) []string {
			return []string{"calibrate", fx.mdl, "--data", fx.data, "--out", filepath.Join(d, "c.calib"), "--batch", "100000"}
		}, code: exitUsage, msg: "--batch 100000"},
		{name: "flags after the arguments: serve", prep: func(t *testing.T, d string) []string {
			return []string{"serve", "stray", "--model", fx.mdl, "--queue", "100000000"}
		}, code: exitUsage, msg: "--queue"},
		{name: "flags after the arguments: loadtest", prep: func(t *testing.T, d string) []string {
			return []string{"loadtest", good, "--model", "m", "--api", "bogus"}
		}, code: exitUsage, msg: `--api "bogus"`},
		{name: "padim's own flags after the command", prep: func(t *testing.T, d string) []string {
			return []string{"train", "stray", "--data", fx.data, "--out", filepath.Join(d, "m"), "--max-memory", "1K"}
		}, code: exitUsage, msg: `--max-memory "1K"`},
		{name: "-- ends the flags: what follows is an argument", prep: func(t *testing.T, d string) []string {
			return []string{"score", "--model", fx.mdl, "--device", "cpu", "--", good, "--json"}
		}, code: exitError, msg: "--json: no such file"},
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
	// at known points (the test hook holds the run there) instead of after
	// guessed delays: reading and fitting, cross-fitting, about to save
	for _, delay := range []string{"fit", "crossfit", "save"} {
		dir := t.TempDir()
		out := filepath.Join(dir, "m.padim")
		h := startAt(t, delay, "-q", "train", "--backbone", fx.bb, "--data", fx.data, "--out", out, "--dim", "40", "--device", "cpu")
		h.signal(os.Interrupt)
		h.exit()
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

// Round two of the hostile-input table (issue 21). Each row failed on the
// code before the fixes it names; runner differences from the first table:
// a hang guard (a blocked open used to hang forever), an optional stdin, and
// rows run as an unprivileged user where permissions must apply.

// hangGuard bounds a row's process: a FIFO used to block it forever. It
// catches a hang; no row's result depends on it ($PADIM_TEST_HANG_GUARD
// shortens it, to run the rows against an older build that hangs).
var hangGuard = func() time.Duration {
	if d, err := time.ParseDuration(os.Getenv("PADIM_TEST_HANG_GUARD")); err == nil {
		return d
	}
	return 90 * time.Second
}()

type runOpts struct {
	env    []string
	stdin  io.Reader
	nobody bool // run as uid/gid 65534 when the test runs as root
}

// runGuarded runs the binary like runBin, killing it after hangGuard (exit -1).
func runGuarded(t *testing.T, o runOpts, args ...string) (string, string, int, int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	defer cancel()
	cmd := exec.CommandContext(ctx, fix.bin, args...)
	cmd.Env = append(libEnv(), o.env...)
	cmd.Stdin = o.stdin
	if o.nobody && os.Getuid() == 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	}
	stdout, stderr, code, rss := runCmd(t, cmd)
	if ctx.Err() != nil {
		return stdout, stderr + "\n(killed by the hang guard)", -1, 0
	}
	return stdout, stderr, code, rss
}

// runPeak runs the binary and returns its exit code, its own peak RSS and
// its stderr. The binary is started by a small helper process (this test
// binary, TestHelperPeak), not by the test process itself: Linux carries the
// peak RSS of the process that execs over to the new program, and the test
// process holds the large inputs.
func runPeak(t *testing.T, stdin io.Reader, args ...string) (int, int64, string) {
	t.Helper()
	code, rss, _, stderr := runPeakOut(t, stdin, args...)
	return code, rss, stderr
}

// runPeakOut is runPeak with the command's stdout too.
func runPeakOut(t *testing.T, stdin io.Reader, args ...string) (int, int64, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	defer cancel()
	enc, _ := json.Marshal(append([]string{fix.bin}, args...))
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestHelperPeak$")
	cmd.Env = append(libEnv(), "PADIM_PEAK_HELPER="+string(enc))
	cmd.Stdin = stdin
	var errb bytes.Buffer
	cmd.Stderr = &errb
	out, err := cmd.Output()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatal(err)
	}
	var res struct {
		Code   int
		MaxRSS int64
		Stdout string
	}
	if err := json.Unmarshal(bytes.TrimSpace(out), &res); err != nil {
		t.Fatalf("helper: %v: %s %s", err, out, errb.String())
	}
	return res.Code, res.MaxRSS, res.Stdout, errb.String()
}

// TestHelperPeak is runPeak's and runBin's helper process: it runs the
// command in $PADIM_PEAK_HELPER and prints its exit code, peak RSS and stdout
// as JSON.
func TestHelperPeak(t *testing.T) {
	spec := os.Getenv("PADIM_PEAK_HELPER")
	if spec == "" {
		t.Skip("runPeak's helper process")
	}
	var argv []string
	json.Unmarshal([]byte(spec), &argv)
	cmd := exec.Command(argv[0], argv[1:]...)
	var out bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, &out, os.Stderr
	cmd.Run()
	var rss int64
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		rss = ru.Maxrss << 10
	}
	b, _ := json.Marshal(map[string]any{"Code": cmd.ProcessState.ExitCode(), "MaxRSS": rss, "Stdout": out.String()})
	fmt.Printf("%s\n", b)
	os.Exit(0)
}

// copyTree copies a folder of regular files.
func copyTree(t *testing.T, src, dst string) {
	t.Helper()
	filepath.Walk(src, func(p string, info os.FileInfo, err error) error {
		if err == nil && info.Mode().IsRegular() {
			rel, _ := filepath.Rel(src, p)
			copyFile(t, p, filepath.Join(dst, rel))
		}
		return nil
	})
}

// listFiles names every file under dir.
func listFiles(dir string) []string {
	var fs []string
	filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() {
			fs = append(fs, p)
		}
		return nil
	})
	return fs
}

func mkfifo(t *testing.T, p string) string {
	t.Helper()
	os.MkdirAll(filepath.Dir(p), 0o755)
	if err := syscall.Mkfifo(p, 0o644); err != nil {
		t.Skipf("no FIFOs here: %v", err)
	}
	return p
}

// writeImage encodes a w×h grey gradient as PNG or JPEG (by the extension).
func writeImage(t *testing.T, p string, w, h int) {
	t.Helper()
	img := image.NewGray(image.Rect(0, 0, w, h))
	for i := range img.Pix {
		img.Pix[i] = uint8(i * 7)
	}
	var b bytes.Buffer
	if strings.HasSuffix(p, ".jpg") {
		jpeg.Encode(&b, img, nil)
	} else {
		png.Encode(&b, img)
	}
	os.MkdirAll(filepath.Dir(p), 0o755)
	if err := os.WriteFile(p, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// worldDir makes a folder every user may use (rows run as nobody), with
// the binary reachable: its fixture folder is opened to all.
func worldDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "padim-hostile-world-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	os.Chmod(d, 0o777)
	os.Chmod(fix.dir, 0o755)
	return d
}

func TestHostileRoundTwo(t *testing.T) {
	fx := setup(t)
	testdata := filepath.Join("..", "..", "testdata", "hostile")
	good := filepath.Join(fx.data, "test", "good", "000.png")
	absGood, _ := filepath.Abs(good)
	type row struct {
		name  string
		prep  func(t *testing.T, dir string) ([]string, runOpts)
		code  int
		msg   string                                                    // in stderr or stdout
		check func(t *testing.T, dir, stdout, stderr string, rss int64) // optional
	}
	// noNewFiles checks that a copy of the data set holds only what it held.
	noNewFiles := func(sub string, n int) func(t *testing.T, d, _, _ string, _ int64) {
		return func(t *testing.T, d, _, _ string, _ int64) {
			if fs := listFiles(filepath.Join(d, sub)); len(fs) != n {
				t.Errorf("%s holds %d files, %d before: %v", sub, len(fs), n, fs)
			}
		}
	}
	nTrain := len(listFiles(filepath.Join(fx.data, "train", "good")))
	nData := len(listFiles(fx.data))
	rows := []row{
		// 2. experiment --report replaced train/good/<sweep>.png and trained on the plot
		{name: "experiment --report into the training images", prep: func(t *testing.T, d string) ([]string, runOpts) {
			copyTree(t, fx.data, filepath.Join(d, "wood"))
			return []string{"-q", "experiment", "samples", "--data", filepath.Join(d, "wood"), "--backbone", fx.bb, "--dim", "20", "--device", "cpu", "--report", filepath.Join(d, "wood", "train", "good")}, runOpts{}
		}, code: exitUsage, msg: "overlap", check: noNewFiles("wood", nData)},
		{name: "experiment --csv inside the data", prep: func(t *testing.T, d string) ([]string, runOpts) {
			copyTree(t, fx.data, filepath.Join(d, "wood"))
			return []string{"-q", "experiment", "samples", "--data", filepath.Join(d, "wood"), "--backbone", fx.bb, "--dim", "20", "--device", "cpu", "--csv", filepath.Join(d, "wood", "runs.csv")}, runOpts{}
		}, code: exitUsage, msg: "inside the data folder", check: noNewFiles("wood", nData)},
		// 4. score --maps png --out train/good put heatmaps among the training images
		{name: "score --maps png --out a folder of training images", prep: func(t *testing.T, d string) ([]string, runOpts) {
			copyTree(t, fx.data, filepath.Join(d, "wood"))
			return []string{"score", "--model", fx.mdl, "--device", "cpu", "--maps", "png", "--out", filepath.Join(d, "wood", "train", "good"), filepath.Join(d, "wood", "test", "good", "000.png")}, runOpts{}
		}, code: exitUsage, msg: "holds images padim did not write", check: noNewFiles(filepath.Join("wood", "train", "good"), nTrain)},
		{name: "score --out inside a folder being scored", prep: func(t *testing.T, d string) ([]string, runOpts) {
			copyTree(t, fx.data, filepath.Join(d, "wood"))
			return []string{"score", "--model", fx.mdl, "--device", "cpu", "--out", filepath.Join(d, "wood", "test", "maps"), filepath.Join(d, "wood", "test")}, runOpts{}
		}, code: exitUsage, msg: "inside the data folder", check: noNewFiles("wood", nData)},
		{name: "train --out inside --data", prep: func(t *testing.T, d string) ([]string, runOpts) {
			copyTree(t, filepath.Join(fx.data, "train", "good"), filepath.Join(d, "imgs"))
			return []string{"train", "--backbone", fx.bb, "--data", filepath.Join(d, "imgs"), "--out", filepath.Join(d, "imgs", "m.padim"), "--dim", "20", "--device", "cpu", "--calibrate", "none"}, runOpts{}
		}, code: exitUsage, msg: "inside the data folder", check: noNewFiles("imgs", nTrain)},
		{name: "eval --shard --out inside --data", prep: func(t *testing.T, d string) ([]string, runOpts) {
			copyTree(t, fx.data, filepath.Join(d, "wood"))
			return []string{"eval", "--model", fx.mdl, "--device", "cpu", "--data", filepath.Join(d, "wood"), "--shard", "0/1", "--out", filepath.Join(d, "wood", "results")}, runOpts{}
		}, code: exitUsage, msg: "inside the data folder", check: noNewFiles("wood", nData)},

		// 6. FIFOs hung forever (and the first SIGTERM did not end the wait)
		{name: "a FIFO as a score argument", prep: func(t *testing.T, d string) ([]string, runOpts) {
			return []string{"score", "--model", fx.mdl, "--device", "cpu", mkfifo(t, filepath.Join(d, "x.png")), good}, runOpts{}
		}, code: exitSkipped, msg: "named pipe (FIFO), not a regular file"},
		{name: "a FIFO as --model", prep: func(t *testing.T, d string) ([]string, runOpts) {
			return []string{"score", "--model", mkfifo(t, filepath.Join(d, "m.padim")), good}, runOpts{}
		}, code: exitError, msg: "named pipe"},
		{name: "a FIFO as --manifest", prep: func(t *testing.T, d string) ([]string, runOpts) {
			return []string{"score", "--model", fx.mdl, "--manifest", mkfifo(t, filepath.Join(d, "list.txt"))}, runOpts{}
		}, code: exitError, msg: "named pipe"},
		{name: "a FIFO listed in a manifest", prep: func(t *testing.T, d string) ([]string, runOpts) {
			mkfifo(t, filepath.Join(d, "pipe.png"))
			copyFile(t, good, filepath.Join(d, "ok.png"))
			os.WriteFile(filepath.Join(d, "list.txt"), []byte("pipe.png\nok.png\n"), 0o644)
			return []string{"score", "--model", fx.mdl, "--device", "cpu", "--manifest", filepath.Join(d, "list.txt")}, runOpts{}
		}, code: exitSkipped, msg: "named pipe"},
		{name: "a FIFO in a folder of images is reported, not skipped without a word", prep: func(t *testing.T, d string) ([]string, runOpts) {
			mkfifo(t, filepath.Join(d, "in", "pipe.png"))
			copyFile(t, good, filepath.Join(d, "in", "ok.png"))
			return []string{"score", "--model", fx.mdl, "--device", "cpu", "--json", filepath.Join(d, "in")}, runOpts{}
		}, code: exitSkipped, msg: `"n_unreadable": 1`, check: func(t *testing.T, d, stdout, _ string, _ int64) {
			if !strings.Contains(stdout, "pipe.png is a named pipe") {
				t.Errorf("the FIFO is not named: %s", stdout)
			}
		}},
		{name: "a FIFO in the training folder", prep: func(t *testing.T, d string) ([]string, runOpts) {
			copyTree(t, filepath.Join(fx.data, "train", "good"), filepath.Join(d, "imgs"))
			mkfifo(t, filepath.Join(d, "imgs", "pipe.png"))
			return []string{"train", "--backbone", fx.bb, "--data", filepath.Join(d, "imgs"), "--out", filepath.Join(d, "m.padim"), "--dim", "20", "--device", "cpu", "--calibrate", "none"}, runOpts{}
		}, code: exitSkipped, msg: "pipe.png is a named pipe"},
		{name: "a FIFO as --backbone", prep: func(t *testing.T, d string) ([]string, runOpts) {
			return []string{"train", "--backbone", mkfifo(t, filepath.Join(d, "b.onnx")), "--data", fx.data, "--out", filepath.Join(d, "m.padim")}, runOpts{}
		}, code: exitError, msg: "named pipe"},
		{name: "a FIFO as --channels", prep: func(t *testing.T, d string) ([]string, runOpts) {
			return []string{"train", "--backbone", fx.bb, "--channels", mkfifo(t, filepath.Join(d, "ch.txt")), "--data", fx.data, "--out", filepath.Join(d, "m.padim"), "--device", "cpu"}, runOpts{}
		}, code: exitError, msg: "named pipe"},
		{name: "a FIFO as a statistics file", prep: func(t *testing.T, d string) ([]string, runOpts) {
			return []string{"merge", "--out", filepath.Join(d, "m.padim"), mkfifo(t, filepath.Join(d, "s.stats"))}, runOpts{}
		}, code: exitError, msg: "named pipe"},
		{name: "a FIFO as a ground-truth mask", prep: func(t *testing.T, d string) ([]string, runOpts) {
			copyTree(t, fx.data, filepath.Join(d, "wood"))
			masks, _ := filepath.Glob(filepath.Join(d, "wood", "ground_truth", "*", "*_mask.png"))
			os.Remove(masks[0])
			mkfifo(t, masks[0])
			return []string{"eval", "--model", fx.mdl, "--device", "cpu", "--data", filepath.Join(d, "wood")}, runOpts{}
		}, code: exitError, msg: "named pipe"},
		{name: "a FIFO as a stream request's path", prep: func(t *testing.T, d string) ([]string, runOpts) {
			req := fmt.Sprintf("{\"path\": %q}\n{\"path\": %q}\n", mkfifo(t, filepath.Join(d, "x.png")), absGood)
			return []string{"-q", "score", "--model", fx.mdl, "--device", "cpu", "--stdin-jsonl"}, runOpts{stdin: strings.NewReader(req)}
		}, code: exitOK, msg: "named pipe", check: func(t *testing.T, d, stdout, _ string, _ int64) {
			if strings.Count(stdout, "\n") != 2 || !strings.Contains(stdout, `"score"`) {
				t.Errorf("the stream did not go on: %s", stdout)
			}
		}},

		// 7. a defect outranks unreadable inputs under --fail-on-defect
		{name: "--fail-on-defect with a defect and an unreadable file", prep: func(t *testing.T, d string) ([]string, runOpts) {
			copyFile(t, filepath.Join(testdata, "truncated.png"), filepath.Join(d, "bad.png"))
			return []string{"score", "--model", fx.mdl, "--device", "cpu", "--threshold", "0", "--fail-on-defect", filepath.Join(d, "bad.png"), good}, runOpts{}
		}, code: exitDefect, msg: "also 1 unreadable", check: func(t *testing.T, d, stdout, _ string, _ int64) {
			if !strings.Contains(stdout, "bad.png\terror") || !strings.Contains(stdout, "DEFECT") {
				t.Errorf("the unreadable file or the defect is not reported: %s", stdout)
			}
		}},

		// 11. manifest lines
		{name: "two JSON objects on one manifest line", prep: func(t *testing.T, d string) ([]string, runOpts) {
			copyFile(t, good, filepath.Join(d, "a.png"))
			copyFile(t, good, filepath.Join(d, "b.png"))
			os.WriteFile(filepath.Join(d, "m.jsonl"), []byte(`{"path": "a.png"}`+"\n"+`{"path": "a.png"} {"path": "b.png"}`+"\n"), 0o644)
			return []string{"score", "--model", fx.mdl, "--device", "cpu", "--manifest", filepath.Join(d, "m.jsonl")}, runOpts{}
		}, code: exitError, msg: "m.jsonl:2: more than one JSON value"},
		{name: "a key given twice in a manifest line", prep: func(t *testing.T, d string) ([]string, runOpts) {
			copyFile(t, good, filepath.Join(d, "a.png"))
			copyFile(t, good, filepath.Join(d, "b.png"))
			os.WriteFile(filepath.Join(d, "m.jsonl"), []byte(`{"path": "a.png", "path": "b.png"}`+"\n"), 0o644)
			return []string{"score", "--model", fx.mdl, "--device", "cpu", "--manifest", filepath.Join(d, "m.jsonl")}, runOpts{}
		}, code: exitError, msg: `m.jsonl:1: the key "path" is given twice`},
		{name: "a manifest line over 16 MiB", prep: func(t *testing.T, d string) ([]string, runOpts) {
			copyFile(t, good, filepath.Join(d, "a.png"))
			os.WriteFile(filepath.Join(d, "m.txt"), []byte("a.png\n"+strings.Repeat("x", 17<<20)+"\n"), 0o644)
			return []string{"score", "--model", fx.mdl, "--device", "cpu", "--manifest", filepath.Join(d, "m.txt")}, runOpts{}
		}, code: exitError, msg: "m.txt:2: the line is 17825792 bytes, longer than the 16 MiB"},

		// Low: the same image twice
		{name: "the same image by relative and absolute path is scored once", prep: func(t *testing.T, d string) ([]string, runOpts) {
			return []string{"score", "--model", fx.mdl, "--device", "cpu", "--json", good, absGood}, runOpts{}
		}, code: exitOK, msg: "is the same file as", check: func(t *testing.T, d, stdout, _ string, _ int64) {
			if !strings.Contains(stdout, `"n_images": 1`) {
				t.Errorf("scored twice: %s", stdout)
			}
		}},
		{name: "an image and a link to it in one folder are scored once", prep: func(t *testing.T, d string) ([]string, runOpts) {
			copyFile(t, good, filepath.Join(d, "in", "a.png"))
			os.Symlink(filepath.Join(d, "in", "a.png"), filepath.Join(d, "in", "b.png"))
			return []string{"score", "--model", fx.mdl, "--device", "cpu", "--json", filepath.Join(d, "in")}, runOpts{}
		}, code: exitOK, msg: "b.png is the same file as", check: func(t *testing.T, d, stdout, _ string, _ int64) {
			if !strings.Contains(stdout, `"n_images": 1`) {
				t.Errorf("scored twice: %s", stdout)
			}
		}},
		{name: "a training image and a hard link to it are trained on once", prep: func(t *testing.T, d string) ([]string, runOpts) {
			copyTree(t, filepath.Join(fx.data, "train", "good"), filepath.Join(d, "imgs"))
			os.Link(filepath.Join(d, "imgs", "000.png"), filepath.Join(d, "imgs", "zzz.png"))
			return []string{"train", "--backbone", fx.bb, "--data", filepath.Join(d, "imgs"), "--out", filepath.Join(d, "m.padim"), "--dim", "20", "--device", "cpu", "--calibrate", "none"}, runOpts{}
		}, code: exitOK, msg: "zzz.png is the same file as", check: func(t *testing.T, d, stdout, _ string, _ int64) {
			if !strings.Contains(stdout, fmt.Sprintf(": %d samples", nTrain)) {
				t.Errorf("trained on a duplicate: %s", stdout)
			}
		}},
		// Low: collect accepted a hand-edited (forged) score
		{name: "collect refuses a hand-edited record", prep: func(t *testing.T, d string) ([]string, runOpts) {
			if _, errs, code, _ := runBin(t, nil, "-q", "score", "--model", fx.mdl, "--device", "cpu", "--shard", "0/1", "--out", filepath.Join(d, "r"), filepath.Join(fx.data, "test", "good")); code != 0 {
				t.Fatal(errs)
			}
			p := filepath.Join(d, "r", "results-0-of-1.jsonl")
			b, _ := os.ReadFile(p)
			i := bytes.Index(b, []byte(`"score":`))
			forged := append(append(slices.Clone(b[:i]), `"score":0.5,"x":`...), b[i+len(`"score":`):]...)
			os.WriteFile(p, forged, 0o644)
			return []string{"collect", filepath.Join(d, "r")}, runOpts{}
		}, code: exitError, msg: "changed after padim wrote it"},
		// Low: a truncated results file was called "of another run"
		{name: "a truncated shard results file is called truncated", prep: func(t *testing.T, d string) ([]string, runOpts) {
			args := []string{"-q", "score", "--model", fx.mdl, "--device", "cpu", "--shard", "0/1", "--out", filepath.Join(d, "r"), filepath.Join(fx.data, "test", "good")}
			if _, errs, code, _ := runBin(t, nil, args...); code != 0 {
				t.Fatal(errs)
			}
			p := filepath.Join(d, "r", "results-0-of-1.jsonl")
			b, _ := os.ReadFile(p)
			os.WriteFile(p, b[:len(b)-30], 0o644)
			return args, runOpts{}
		}, code: exitError, msg: "cut short", check: func(t *testing.T, d, stdout, stderr string, _ int64) {
			if strings.Contains(stderr, "another run") {
				t.Errorf("called another run's: %s", stderr)
			}
		}},
		// Low: one unreadable sub-folder aborted the run
		{name: "an unreadable sub-folder is skipped and reported (score)", prep: func(t *testing.T, d string) ([]string, runOpts) {
			w := worldDir(t)
			copyFile(t, good, filepath.Join(w, "in", "ok.png"))
			copyFile(t, good, filepath.Join(w, "in", "locked", "x.png"))
			os.Chmod(filepath.Join(w, "in"), 0o755)
			os.Chmod(filepath.Join(w, "in", "locked"), 0o000)
			return []string{"score", "--model", fx.mdl, "--device", "cpu", filepath.Join(w, "in")}, runOpts{nobody: true}
		}, code: exitSkipped, msg: "locked\terror\t", check: func(t *testing.T, d, stdout, stderr string, _ int64) {
			if !strings.Contains(stdout, "cannot read the folder") || !strings.Contains(stdout, "ok.png\t") {
				t.Errorf("stdout %s\nstderr %s", stdout, stderr)
			}
		}},
		{name: "an unreadable sub-folder is skipped and reported (train)", prep: func(t *testing.T, d string) ([]string, runOpts) {
			w := worldDir(t)
			copyTree(t, filepath.Join(fx.data, "train", "good"), filepath.Join(w, "imgs"))
			copyFile(t, good, filepath.Join(w, "imgs", "locked", "x.png"))
			os.Chmod(filepath.Join(w, "imgs"), 0o755)
			os.Chmod(filepath.Join(w, "imgs", "locked"), 0o000)
			return []string{"train", "--backbone", fx.bb, "--data", filepath.Join(w, "imgs"), "--out", filepath.Join(w, "m.padim"), "--dim", "20", "--device", "cpu", "--calibrate", "none"}, runOpts{nobody: true}
		}, code: exitSkipped, msg: "cannot read the folder"},
		// Low: 1×10000 got no warning (1×1 did)
		{name: "a 1×10000 image is scored with a warning", prep: func(t *testing.T, d string) ([]string, runOpts) {
			writeImage(t, filepath.Join(d, "tall.png"), 1, 10000)
			return []string{"score", "--model", fx.mdl, "--device", "cpu", "--json", filepath.Join(d, "tall.png")}, runOpts{}
		}, code: exitOK, msg: "one side is much smaller than the 64² network input"},
		// Low: without maps there is no output to clash
		{name: "gray.jpg and gray.png without --out", prep: func(t *testing.T, d string) ([]string, runOpts) {
			writeImage(t, filepath.Join(d, "gray.jpg"), 80, 80)
			writeImage(t, filepath.Join(d, "gray.png"), 80, 80)
			return []string{"score", "--model", fx.mdl, "--device", "cpu", filepath.Join(d, "gray.jpg"), filepath.Join(d, "gray.png")}, runOpts{}
		}, code: exitOK, check: func(t *testing.T, d, stdout, _ string, _ int64) {
			if strings.Count(stdout, "\n") != 2 {
				t.Errorf("want two results: %s", stdout)
			}
		}},
		{name: "gray.jpg and gray.png with maps still clash", prep: func(t *testing.T, d string) ([]string, runOpts) {
			writeImage(t, filepath.Join(d, "gray.jpg"), 80, 80)
			writeImage(t, filepath.Join(d, "gray.png"), 80, 80)
			return []string{"score", "--model", fx.mdl, "--device", "cpu", "--out", filepath.Join(d, "o"), filepath.Join(d, "gray.jpg"), filepath.Join(d, "gray.png")}, runOpts{}
		}, code: exitError, msg: "would write the same output"},
		// Low: messages
		{name: "a folder as the model", prep: func(t *testing.T, d string) ([]string, runOpts) {
			return []string{"score", "--model", d, good}, runOpts{}
		}, code: exitError, msg: "is a folder, not a regular file", check: func(t *testing.T, d, _, stderr string, _ int64) {
			if strings.Contains(stderr, "is a directory") || strings.Contains(stderr, "retrain") {
				t.Errorf("message: %s", stderr)
			}
		}},
		{name: "calibrating on images not in the statistics", prep: func(t *testing.T, d string) ([]string, runOpts) {
			st := filepath.Join(d, "s.stats")
			if _, errs, code, _ := runBin(t, nil, "-q", "train", "--backbone", fx.bb, "--data", fx.data, "--shard", "0/1", "--stats-out", st, "--dim", "20", "--device", "cpu"); code != 0 {
				t.Fatal(errs)
			}
			return []string{"calibrate", "--device", "cpu", "--data", filepath.Join(fx.data, "test"), "--out", filepath.Join(d, "c.calib"), st}, runOpts{}
		}, code: exitError, msg: "is not one of the images those statistics were fitted on", check: func(t *testing.T, d, _, stderr string, _ int64) {
			if strings.Contains(stderr, "unsupported value") {
				t.Errorf("message: %s", stderr)
			}
		}},
		// Low: two trainings into one --out both said "wrote"
		{name: "a training into an --out another run is writing", prep: func(t *testing.T, d string) ([]string, runOpts) {
			out := filepath.Join(d, "m.padim")
			l, _, err := atomicfile.Acquire(out) // the other run
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(l.Release)
			return []string{"train", "--backbone", fx.bb, "--data", fx.data, "--out", out, "--dim", "20", "--device", "cpu"}, runOpts{}
		}, code: exitError, msg: fmt.Sprintf("is being written by another padim (pid %d)", os.Getpid()), check: func(t *testing.T, d, stdout, stderr string, _ int64) {
			if strings.Contains(stdout, "wrote") || strings.Contains(stderr, "training on") {
				t.Errorf("trained anyway: %s%s", stdout, stderr)
			}
		}},
		// Low: an unwritable --out was found only after the fit
		{name: "--out in a missing folder, before the fit", prep: func(t *testing.T, d string) ([]string, runOpts) {
			return []string{"train", "--backbone", fx.bb, "--data", fx.data, "--out", filepath.Join(d, "missing", "m.padim"), "--dim", "20", "--device", "cpu"}, runOpts{}
		}, code: exitUsage, msg: "does not exist", check: func(t *testing.T, d, _, stderr string, _ int64) {
			if strings.Contains(stderr, "training on") {
				t.Errorf("found after the fit: %s", stderr)
			}
		}},
		{name: "--out in an unwritable folder, before the fit", prep: func(t *testing.T, d string) ([]string, runOpts) {
			return []string{"train", "--backbone", fx.bb, "--data", fx.data, "--out", "/proc/padim-test.padim", "--dim", "20", "--device", "cpu"}, runOpts{}
		}, code: exitUsage, msg: "not writable", check: func(t *testing.T, d, _, stderr string, _ int64) {
			if strings.Contains(stderr, "training on") {
				t.Errorf("found after the fit: %s", stderr)
			}
		}},
		// 5. two processes on one shard
		{name: "a shard another process is running", prep: func(t *testing.T, d string) ([]string, runOpts) {
			os.MkdirAll(filepath.Join(d, "r"), 0o755)
			l, _, err := atomicfile.Acquire(shard.ResultsPath(filepath.Join(d, "r"), shard.Spec{Index: 0, Count: 1}))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(l.Release)
			return []string{"score", "--model", fx.mdl, "--device", "cpu", "--shard", "0/1", "--out", filepath.Join(d, "r"), good}, runOpts{}
		}, code: exitError, msg: fmt.Sprintf("shard 0/1 is already running (pid %d)", os.Getpid())},
	}
	for _, r := range rows {
		t.Run(r.name, func(t *testing.T) {
			dir := t.TempDir()
			args, o := r.prep(t, dir)
			before := snapshot(t, fx.data, fx.bb, fx.mdl, testdata)
			stdout, stderr, code, rss := runGuarded(t, o, args...)
			if code != r.code {
				t.Fatalf("padim %s: exit %d, want %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, r.code, stdout, stderr)
			}
			if r.msg != "" && !strings.Contains(stderr+stdout, r.msg) {
				t.Fatalf("message lacks %q:\nstdout: %s\nstderr: %s", r.msg, stdout, stderr)
			}
			if strings.Contains(stderr, "goroutine ") || strings.Contains(stderr, "panic") {
				t.Fatalf("a stack trace:\n%s", stderr)
			}
			for f, h := range snapshot(t, fx.data, fx.bb, fx.mdl, testdata) {
				if before[f] != h {
					t.Errorf("input %s changed", f)
				}
			}
			if r.check != nil {
				r.check(t, dir, stdout, stderr, rss)
			}
		})
	}
}

// held is a process of the binary held at a stage by the test hook.
type held struct {
	cmd  *exec.Cmd
	done chan struct{} // closed once it has exited
}

// startAt starts the binary held at a stage by the test hook (testWaitEnv)
// and returns once it says it is there.
func startAt(t *testing.T, stage string, args ...string) *held {
	t.Helper()
	cmd := exec.Command(fix.bin, args...)
	cmd.Env = append(libEnv(), testWaitEnv+"="+stage)
	var errb bytes.Buffer
	pr, pw := io.Pipe()
	cmd.Stderr = pw
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	reached := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		found := false
		for sc.Scan() {
			errb.WriteString(sc.Text() + "\n")
			if !found && strings.Contains(sc.Text(), "padim-test: waiting at "+stage) {
				found = true
				reached <- true
			}
		}
		if !found {
			reached <- false
		}
	}()
	guard := time.AfterFunc(hangGuard, func() { cmd.Process.Kill() })
	t.Cleanup(func() { guard.Stop() })
	h := &held{cmd: cmd, done: make(chan struct{})}
	go func() { cmd.Wait(); pw.Close(); close(h.done) }()
	if !<-reached {
		<-h.done
		t.Fatalf("padim %s never reached %s (exit %v):\n%s", strings.Join(args, " "), stage, cmd.ProcessState, errb.String())
	}
	return h
}

// signal sends sig to the held process.
func (h *held) signal(sig os.Signal) { h.cmd.Process.Signal(sig) }

// exit waits for the held process and returns its exit code.
func (h *held) exit() int {
	<-h.done
	return h.cmd.ProcessState.ExitCode()
}

// 3. A signal at any phase of train (read and embed, cross-fit, hold-out
// calibration, factorisation, save) ends it with 130/143 and leaves --out and
// --stats-out as they were. It used to be acknowledged, then the fit went on,
// replaced the model and exited 0. A signal after the save leaves the new
// model and exits 0, saying why.
func TestSignalAtEveryPhaseOfTrain(t *testing.T) {
	fx := setup(t)
	old, _ := os.ReadFile(fx.mdl) // the model the interrupted runs must leave
	base := []string{"train", "--backbone", fx.bb, "--data", fx.data, "--dim", "20", "--device", "cpu"}
	for _, c := range []struct {
		stage string
		sig   syscall.Signal
		extra []string
	}{
		{"fit", syscall.SIGINT, nil},
		{"crossfit", syscall.SIGTERM, nil},
		{"crossfit", syscall.SIGINT, []string{"--folds", "3", "--tile", "32"}},
		{"calibrate", syscall.SIGTERM, []string{"--calibrate", "holdout"}},
		{"factorize", syscall.SIGINT, []string{"--gaussian", "full"}},
		{"crossfit", syscall.SIGTERM, []string{"--method", "patchcore"}},
		{"save", syscall.SIGTERM, nil},
		{"save", syscall.SIGINT, []string{"--stats-out", "S"}},
		{"saved", syscall.SIGINT, nil},
	} {
		t.Run(fmt.Sprintf("%s %v %v", c.stage, c.sig, c.extra), func(t *testing.T) {
			dir := t.TempDir()
			out := filepath.Join(dir, "m.padim")
			os.WriteFile(out, old, 0o644)
			args := append(append(slices.Clone(base), "--out", out), c.extra...)
			for i, a := range args {
				if a == "S" {
					args[i] = filepath.Join(dir, "s.stats")
					os.WriteFile(args[i], []byte("previous statistics"), 0o644)
				}
			}
			h := startAt(t, c.stage, args...)
			h.signal(c.sig)
			code := h.exit()
			now, _ := os.ReadFile(out)
			if c.stage == "saved" {
				if code != 0 || bytes.Equal(now, old) {
					t.Fatalf("a signal after the save: exit %d, model replaced %v", code, !bytes.Equal(now, old))
				}
				return
			}
			want := 130
			if c.sig == syscall.SIGTERM {
				want = 143
			}
			if code != want || !bytes.Equal(now, old) {
				t.Fatalf("signal at %s: exit %d (want %d), --out unchanged: %v", c.stage, code, want, bytes.Equal(now, old))
			}
			if b, err := os.ReadFile(filepath.Join(dir, "s.stats")); err == nil && string(b) != "previous statistics" {
				t.Fatal("--stats-out replaced")
			}
			for _, f := range listFiles(dir) {
				if strings.Contains(f, ".tmp-") || strings.HasSuffix(f, ".lock") {
					t.Fatalf("left behind: %s", f)
				}
			}
		})
	}
}

// 6. The first SIGTERM ends a wait for input: score --stdin-jsonl waiting
// for its next request used to ignore it.
func TestFirstSignalEndsTheStreamWait(t *testing.T) {
	fx := setup(t)
	cmd := exec.Command(fix.bin, "score", "--model", fx.mdl, "--device", "auto", "--stdin-jsonl")
	cmd.Env = libEnv()
	stdin, _ := cmd.StdinPipe() // open, never written: the stream waits
	defer stdin.Close()
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	guard := time.AfterFunc(hangGuard, func() { cmd.Process.Kill() })
	defer guard.Stop()
	if !waitFor(stderr, "device:") { // the model is loaded: the stream waits next
		t.Fatal("no device note")
	}
	cmd.Process.Signal(syscall.SIGTERM)
	cmd.Wait()
	if code := cmd.ProcessState.ExitCode(); code != 143 {
		t.Fatalf("exit %d after one SIGTERM, want 143", code)
	}
}

// 5. Two processes on one shard: the second refuses, naming the first's
// pid; after the first is killed, a rerun takes the stale lock over and
// finishes the shard.
func TestShardLockTwoProcesses(t *testing.T) {
	fx := setup(t)
	dir := t.TempDir()
	args := []string{"score", "--model", fx.mdl, "--device", "cpu", "--shard", "0/1", "--out", filepath.Join(dir, "r"), "--flush-every", "1", filepath.Join(fx.data, "test")}
	first := startAt(t, "score:2", args...)
	_, stderr, code, _ := runGuarded(t, runOpts{}, args...)
	pid := first.cmd.Process.Pid
	if want := fmt.Sprintf("shard 0/1 is already running (pid %d)", pid); code != exitError || !strings.Contains(stderr, want) {
		t.Fatalf("second process: exit %d, want %q:\n%s", code, want, stderr)
	}
	first.signal(os.Kill)
	first.exit()
	out, stderr, code, _ := runGuarded(t, runOpts{}, args...)
	if code != 0 || !strings.Contains(stderr, fmt.Sprintf("process %d, which is gone", pid)) || !strings.Contains(out, "1 done before") {
		t.Fatalf("after the kill: exit %d\n%s%s", code, out, stderr)
	}
	if _, errs, code, _ := runGuarded(t, runOpts{}, "collect", filepath.Join(dir, "r")); code != 0 {
		t.Fatalf("collect: %s", errs)
	}
}

// 10. score --stdin-jsonl: an over-long line, a malformed line, two objects
// on a line and a key given twice are each an error line naming the line,
// and the stream goes on (exit 0). The lines read ahead of the scoring are
// bounded in bytes: 40 lines of 8 MiB behind slow requests used to be held
// at once (the reader kept up to 256 lines).
func TestStdinStreamHostile(t *testing.T) {
	fx := setup(t)
	absGood, _ := filepath.Abs(filepath.Join(fx.data, "test", "good", "000.png"))
	ok := fmt.Sprintf("{\"path\": %q}\n", absGood)
	var in bytes.Buffer
	in.WriteString(ok)
	in.WriteString(`{"path": "x` + strings.Repeat("y", 65<<20) + "\"}\n")
	in.WriteString("not json\n")
	in.WriteString(strings.TrimSpace(ok) + " " + ok)
	in.WriteString(fmt.Sprintf("{\"path\": %q, \"path\": \"/etc/passwd\"}\n", absGood))
	in.WriteString(ok)
	stdout, stderr, code, _ := runGuarded(t, runOpts{stdin: &in}, "-q", "score", "--model", fx.mdl, "--device", "cpu", "--stdin-jsonl")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	want := []string{`"score"`, "line 2 is 68157453 bytes, longer than the 64 MiB", "line 3: not a JSON object", "line 4: more than one JSON value", `line 5: the key \"path\" is given twice`, `"score"`}
	if len(lines) != len(want) {
		t.Fatalf("%d output lines, want %d:\n%.2000s", len(lines), len(want), stdout)
	}
	for i, w := range want {
		if !strings.Contains(lines[i], w) || !strings.Contains(lines[i], fmt.Sprintf(`"line":%d`, i+1)) {
			t.Errorf("output line %d lacks %q: %.300s", i+1, w, lines[i])
		}
	}

	// read-ahead: 16 images to score, then 40 lines of 8 MiB
	var big bytes.Buffer
	for i := 0; i < 16; i++ {
		big.WriteString(ok)
	}
	junk := `{"path": "a.png", "x": "` + strings.Repeat("z", 8<<20) + "\"}\n" // refused: an unknown field
	for i := 0; i < 40; i++ {
		big.WriteString(junk)
	}
	code, rss, stderr := runPeak(t, &big, "-q", "score", "--model", fx.mdl, "--device", "cpu", "--batch", "1", "--stdin-jsonl")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var small bytes.Buffer
	for i := 0; i < 16; i++ {
		small.WriteString(ok)
	}
	_, base, _ := runPeak(t, &small, "-q", "score", "--model", fx.mdl, "--device", "cpu", "--batch", "1", "--stdin-jsonl")
	t.Logf("peak RSS %.0f MiB for the 16 requests alone", float64(base)/(1<<20))
	t.Logf("peak RSS %.0f MiB for 16 requests, then 40 lines of 8 MiB", float64(rss)/(1<<20))
	if rss > base+256<<20 {
		t.Errorf("peak RSS %.0f MiB: the lines read ahead are not bounded by bytes", float64(rss)/(1<<20))
	}
}
