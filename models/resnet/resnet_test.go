package resnet

import (
	"bytes"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/padim/padim/detector/safetensors"
)

func TestCheckpointReproducesSeededBuild(t *testing.T) {
	rec := &Recorder{Params: Random{Seed: 3}}
	want, err := Build(Options{Arch: "resnet50_cbam", InputSize: 64, Seed: 3}, rec)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	p := filepath.Join(dir, "w.safetensors")
	// extra tensors a real checkpoint has (layer4, fc, counters) must be ignored
	extra := append(slices.Clone(rec.Tensors), safetensors.F32("fc.weight", []float32{1, 2}, 2), safetensors.I64("module.bn1.num_batches_tracked", []int{5}, 1))
	for i := range extra {
		extra[i].Name = "module." + strings.TrimPrefix(extra[i].Name, "module.")
	}
	if err := safetensors.Write(p, nil, extra); err != nil {
		t.Fatal(err)
	}
	ck, err := OpenCheckpoint(p)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Build(Options{Arch: "resnet50_cbam", InputSize: 64, Seed: 3}, ck)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("graph from the checkpoint differs from the seeded graph")
	}

	// a missing and a mis-shaped tensor are named
	missing := append([]safetensors.Tensor(nil), rec.Tensors[1:]...)
	safetensors.Write(p, nil, missing)
	ck, _ = OpenCheckpoint(p)
	if _, err := Build(Options{Arch: "resnet50_cbam", InputSize: 64}, ck); err == nil || !strings.Contains(err.Error(), rec.Tensors[0].Name) {
		t.Fatalf("missing tensor: %v", err)
	}
	bad := append([]safetensors.Tensor(nil), rec.Tensors...)
	bad[2] = safetensors.F32(bad[2].Name, make([]float32, 3), 3)
	safetensors.Write(p, nil, bad)
	ck, _ = OpenCheckpoint(p)
	if _, err := Build(Options{Arch: "resnet50_cbam", InputSize: 64}, ck); err == nil || !strings.Contains(err.Error(), "shape") {
		t.Fatalf("mis-shaped tensor: %v", err)
	}
}

func TestUnknownArch(t *testing.T) {
	if _, err := Build(Options{Arch: "vgg"}, Random{}); err == nil {
		t.Fatal("unknown arch accepted")
	}
}
