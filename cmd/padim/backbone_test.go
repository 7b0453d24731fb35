package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"

	"github.com/padim/padim/detector/backbone"
	"github.com/padim/padim/detector/fileio/safetensors"
	"github.com/padim/padim/models/mobilenetv2"
	"github.com/padim/padim/models/resnet"
)

// backboneRun runs `padim -q backbone ARGS` in process and returns its error.
func backboneRun(t *testing.T, args ...string) error {
	t.Helper()
	app := newApp()
	app.ExitErrHandler = func(*cli.Context, error) {} // return exit errors, do not exit
	return app.Run(append([]string{"padim", "-q", "backbone"}, args...))
}

func backboneExit(err error) int {
	var ec cli.ExitCoder
	if errors.As(err, &ec) {
		return ec.ExitCode()
	}
	if err != nil {
		return 1
	}
	return 0
}

func TestBackboneMobileNetV2(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "m.onnx")
	if err := backboneRun(t, "--arch", "mobilenet_v2", "--out", out); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, mobilenetv2.ONNX()) {
		t.Fatal("--arch mobilenet_v2 did not write the shipped model unchanged")
	}
	// the flags that shape a built graph are refused, and nothing is written
	for _, f := range [][]string{{"--seed", "3"}, {"--weights", "w.safetensors"}, {"--layers", "1,2,3,4"}, {"--size", "256"}, {"--mean", "0,0,0"}, {"--save-weights", "w.safetensors"}} {
		o := filepath.Join(dir, "refused.onnx")
		err := backboneRun(t, append([]string{"--arch", "mobilenet_v2", "--out", o}, f...)...)
		if backboneExit(err) != exitUsage || !strings.Contains(err.Error(), f[0]) {
			t.Errorf("%v: exit %d, %v", f, backboneExit(err), err)
		}
		if _, err := os.Stat(o); err == nil {
			t.Errorf("%v: wrote %s anyway", f, o)
		}
	}
}

func TestBackboneLayersFlag(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "r.onnx")
	if err := backboneRun(t, "--arch", "resnet18", "--size", "64", "--seed", "5", "--layers", "1+2+3+4", "--out", out); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(out)
	want, err := resnet.Build(resnet.Options{Arch: "resnet18", InputSize: 64, Seed: 5, Taps: resnet.Layers, Source: "random (seed 5)"}, resnet.Random{Seed: 5})
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("--layers 1+2+3+4 wrote a different graph from Build with layer1..4 (%v)", err)
	}
	if err := backbone.Init(""); err == nil {
		e, err := backbone.Open(got, out, backbone.Options{Device: "cpu"})
		if err != nil {
			t.Fatal(err)
		}
		defer e.Close()
		if taps := e.Taps(); len(taps) != 4 || taps[3].Name != "layer4" || taps[3].C != 512 || taps[3].H != 2 {
			t.Fatalf("taps %+v", taps)
		}
	}
	for _, c := range [][]string{{"--layers", "5"}, {"--layers", "1,2,3,4", "--size", "48"}, {"--arch", "vgg"}} {
		err := backboneRun(t, append([]string{"--arch", "resnet18", "--size", "64", "--out", filepath.Join(dir, "x.onnx")}, c...)...)
		if err == nil {
			t.Errorf("%v accepted", c)
		}
	}
}

// TestBackboneRefusesWrongCheckpoint: a CBAM checkpoint given as the plain
// ResNet has every tensor the plain graph needs; the unused ones give it away.
func TestBackboneRefusesWrongCheckpoint(t *testing.T) {
	dir := t.TempDir()
	rec := &resnet.Recorder{Params: resnet.Random{Seed: 1}}
	if _, err := resnet.Build(resnet.Options{Arch: "resnet50_cbam", InputSize: 64}, rec); err != nil {
		t.Fatal(err)
	}
	w := filepath.Join(dir, "w.safetensors")
	if err := safetensors.Write(w, nil, rec.Tensors); err != nil {
		t.Fatal(err)
	}
	if err := backboneRun(t, "--arch", "resnet50_cbam", "--size", "64", "--weights", w, "--out", filepath.Join(dir, "ok.onnx")); err != nil {
		t.Fatalf("the right architecture: %v", err)
	}
	out := filepath.Join(dir, "bad.onnx")
	err := backboneRun(t, "--arch", "resnet50", "--size", "64", "--weights", w, "--out", out)
	if err == nil || !strings.Contains(err.Error(), "cbam") {
		t.Fatalf("resnet50_cbam weights as resnet50: %v", err)
	}
	if _, err := os.Stat(out); err == nil {
		t.Error("wrote a graph from the wrong checkpoint")
	}
}
