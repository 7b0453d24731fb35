package safetensors

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func sample(t *testing.T) (string, []byte) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "m.safetensors")
	err := Write(p, map[string]string{"k": "v"}, []Tensor{
		F32("a", []float32{1, 2, 3, 4, 5, 6}, 2, 3),
		I64("c", []int{7, 9}, 2),
		F64("z", []float64{0.5}, 1),
	})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(p)
	return p, b
}

func TestRoundTrip(t *testing.T) {
	p, _ := sample(t)
	f, err := Read(p, true)
	if err != nil {
		t.Fatal(err)
	}
	a, _ := f.Tensor("a").Float32s()
	c, _ := f.Tensor("c").Ints()
	z, _ := f.Tensor("z").Float64s()
	if !slices.Equal(a, []float32{1, 2, 3, 4, 5, 6}) || !slices.Equal(c, []int{7, 9}) || z[0] != 0.5 || f.Metadata["k"] != "v" {
		t.Fatalf("%v %v %v %v", a, c, z, f.Metadata)
	}
	if !slices.Equal(f.Tensor("a").Shape, []int{2, 3}) {
		t.Fatal(f.Tensor("a").Shape)
	}
	ents, _ := os.ReadDir(filepath.Dir(p))
	if len(ents) != 1 {
		t.Fatalf("temporary files left: %v", ents)
	}
}

func TestTruncatedAndFlippedRejected(t *testing.T) {
	_, b := sample(t)
	for _, n := range []int{0, 7, 8, 20, len(b) - 1} {
		if _, err := Parse(bytes.NewReader(b[:n]), int64(n), true); !errors.Is(err, ErrFormat) {
			t.Errorf("truncated to %d: %v", n, err)
		}
	}
	for _, i := range []int{len(b) - 3, len(b) - 30} {
		c := slices.Clone(b)
		c[i] ^= 0x10
		if _, err := Parse(bytes.NewReader(c), int64(len(c)), true); !errors.Is(err, ErrFormat) {
			t.Errorf("bit flip at %d accepted: %v", i, err)
		}
	}
	padded := append(slices.Clone(b), 0)
	if _, err := Parse(bytes.NewReader(padded), int64(len(padded)), true); err == nil {
		t.Error("trailing byte accepted")
	}
}

func TestWriteFailureLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "x")
	os.WriteFile(p, []byte("old"), 0o644)
	err := Write(p, nil, []Tensor{{Name: "bad", DType: "F32", Shape: []int{3}, Data: []byte{1}}})
	if err == nil {
		t.Fatal("mis-sized tensor written")
	}
	if b, _ := os.ReadFile(p); string(b) != "old" {
		t.Fatal("old file clobbered")
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Fatalf("left behind: %v", ents)
	}
}

func FuzzParse(f *testing.F) {
	dir := f.TempDir()
	p := filepath.Join(dir, "s")
	Write(p, map[string]string{"a": "b"}, []Tensor{F32("x", []float32{1, 2}, 2), I64("i", []int{3}, 1)})
	b, _ := os.ReadFile(p)
	f.Add(b)
	f.Add([]byte{})
	f.Add([]byte("\x02\x00\x00\x00\x00\x00\x00\x00{}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		file, err := Parse(bytes.NewReader(data), int64(len(data)), false)
		if err != nil {
			return
		}
		total := 0
		for _, t := range file.Tensors {
			total += len(t.Data)
		}
		if total > len(data) {
			t.Fatalf("read %d data bytes from a %d-byte input", total, len(data))
		}
	})
}
