package synth

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/padim/padim/data/dataset"
	"github.com/padim/padim/detector/imageio"
)

func TestGenerateLayoutDeterministicMasks(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	c := Config{Seed: 3, Train: 2, TestGood: 1, TestDefect: 6, Size: 96}
	if err := Generate(a, c, nil); err != nil {
		t.Fatal(err)
	}
	Generate(b, c, nil)
	items, err := dataset.TestSet(a)
	if err != nil || len(items) != 7 {
		t.Fatalf("%d items, %v", len(items), err)
	}
	for _, it := range items {
		x, _ := os.ReadFile(it.Path)
		rel, _ := filepath.Rel(a, it.Path)
		y, _ := os.ReadFile(filepath.Join(b, rel))
		if !bytes.Equal(x, y) {
			t.Fatalf("%s differs between runs of one seed", rel)
		}
		if !it.Defective {
			continue
		}
		m, err := dataset.LoadMask(it.MaskPath, imageio.Preprocess{Resize: 96}, 96, 96)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, v := range m {
			if v {
				n++
			}
		}
		if n == 0 || n > 96*96/3 {
			t.Errorf("%s: %d defect pixels", it.Name(), n)
		}
	}
	if tr, _ := dataset.TrainImages(a); len(tr) != 2 {
		t.Fatal(tr)
	}
}
