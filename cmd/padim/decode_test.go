package main

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/padim/padim/detector/fileio/safetensors"
	"github.com/padim/padim/detector/imageio/turbojpeg"
)

// The decode path as a user meets it: train records it (info shows it), a
// build without libjpeg-turbo refuses a turbojpeg path with how to rebuild,
// and scoring with another path than training's warns in one line.
func TestDecodePathCommands(t *testing.T) {
	fx := setup(t)
	dir := t.TempDir()
	bin := fx.bin // built with this test's tags: with libjpeg-turbo when turbojpeg.Available
	run := func(args ...string) (string, string, int) {
		t.Helper()
		saved := fix.bin
		fix.bin = bin
		defer func() { fix.bin = saved }()
		out, errOut, code, _ := runBin(t, nil, args...)
		return out, errOut, code
	}
	good := filepath.Join(fx.data, "test", "good", "000.png")
	out, _, code := run("info", "--model", fx.mdl)
	if code != exitOK || !strings.Contains(out, "decode           go (Go's decoders, exact resize)") {
		t.Fatalf("info of a default model (exit %d):\n%s", code, out)
	}
	if _, errOut, code := run("train", "--backbone", fx.bb, "--data", fx.data, "--out", filepath.Join(dir, "x.padim"), "--decode", "fast"); code != exitUsage || !strings.Contains(errOut, "--decode") {
		t.Fatalf("--decode fast: exit %d: %s", code, errOut)
	}
	mdl := filepath.Join(dir, "dct.padim")
	_, errOut, code := run("-q", "train", "--backbone", fx.bb, "--data", fx.data, "--out", mdl, "--dim", "40", "--device", "cpu", "--decode", "turbojpeg-dct")
	if !turbojpeg.Available {
		if code != exitError || !strings.Contains(errOut, "libturbojpeg0-dev") || !strings.Contains(errOut, "rebuild") {
			t.Fatalf("train --decode turbojpeg-dct without libjpeg-turbo: exit %d: %s", code, errOut)
		}
		if _, errOut, code := run("score", "--model", fx.mdl, "--decode", "turbojpeg-full", good); code != exitError || !strings.Contains(errOut, "rebuild") {
			t.Fatalf("score --decode turbojpeg-full without libjpeg-turbo: exit %d: %s", code, errOut)
		}
		// a model trained where libjpeg-turbo was: scored with go, and a warning
		resign(t, fx.mdl, mdl, func(md map[string]string, _ []safetensors.Tensor) { md["decode"] = "turbojpeg-dct" })
		_, errOut, code := run("score", "--model", mdl, good)
		want := "warning: " + mdl + ": the model was trained with decode path turbojpeg-dct, but this padim was built without libjpeg-turbo: decoding with go"
		if code != exitOK || !strings.Contains(errOut, want) || strings.Count(errOut, "decode path") != 1 {
			t.Fatalf("a turbojpeg model on a build without it: exit %d:\n%s", code, errOut)
		}
		return
	}
	if code != exitOK {
		t.Fatalf("train --decode turbojpeg-dct: exit %d: %s", code, errOut)
	}
	if out, _, _ := run("info", "--model", mdl); !strings.Contains(out, "decode           turbojpeg-dct (JPEG by libjpeg-turbo shrunk in the DCT domain") {
		t.Fatalf("info:\n%s", out)
	}
	if _, errOut, code := run("score", "--model", mdl, good); code != exitOK || strings.Contains(errOut, "warning") {
		t.Fatalf("score with the model's own path: exit %d: %s", code, errOut)
	}
	_, errOut, code = run("score", "--model", mdl, "--decode", "go", good)
	if code != exitOK || !strings.Contains(errOut, "warning: "+mdl+": decoding with go, but the model was trained with turbojpeg-dct") {
		t.Fatalf("score --decode go on a turbojpeg-dct model: exit %d: %s", code, errOut)
	}
}
