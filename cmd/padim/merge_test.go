package main

import (
	"context"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"os"
	"path/filepath"
	"testing"

	"github.com/padim/padim/detector"
	"github.com/padim/padim/detector/imageio"
	"github.com/padim/padim/internal/fakebackbone"
)

// statsShard fits a statistics shard on a few images with the fake backbone.
func statsShard(t *testing.T, dir, name string, seed uint64, eps, sigma float64) string {
	t.Helper()
	var files []string
	for i := 0; i < 3; i++ {
		img := image.NewNRGBA(image.Rect(0, 0, 32, 32))
		for y := 0; y < 32; y++ {
			for x := 0; x < 32; x++ {
				v := uint8((x*7 + y*3 + i*40 + int(seed)*11) % 256)
				img.Set(x, y, color.NRGBA{v, v / 2, 255 - v, 255})
			}
		}
		p := filepath.Join(dir, fmt.Sprintf("%s-%d.png", name, i))
		f, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		png.Encode(f, img)
		f.Close()
		files = append(files, p)
	}
	m, rep, err := detector.Train(context.Background(), fakebackbone.New(32, 9), files, detector.TrainConfig{
		Preprocess: imageio.Preprocess{Resize: 32, Mean: imageio.ImageNetMean, Std: imageio.ImageNetStd},
		Dim:        6, Seed: 1, Eps: eps, Sigma: sigma, Calibration: detector.CalibrateNone, KeepStats: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, name+".stats")
	if err := detector.SaveStats(p, m, rep.Shard); err != nil {
		t.Fatal(err)
	}
	return p
}

// merge --out refuses shards fitted with another ε or σ (it used to take
// both from whichever file came first), as merge --stats-out does.
func TestMergeRefusesOtherEpsOrSigma(t *testing.T) {
	dir := t.TempDir()
	a := statsShard(t, dir, "a", 1, 0.01, 4)
	b := statsShard(t, dir, "b", 2, 0.01, 4)
	if code := run(context.Background(), []string{"padim", "-q", "merge", "--device", "cpu", "--out", filepath.Join(dir, "ok.padim"), a, b}); code != exitOK {
		t.Fatalf("shards of one fit: exit %d", code)
	}
	for _, c := range []struct {
		name       string
		eps, sigma float64
	}{{"eps", 0.1, 4}, {"sigma", 0.01, 2}} {
		other := statsShard(t, dir, c.name, 2, c.eps, c.sigma)
		for _, args := range [][]string{
			{"merge", "--device", "cpu", "--out", filepath.Join(dir, c.name+".padim"), a, other},
			{"merge", "--device", "cpu", "--out", filepath.Join(dir, c.name+"2.padim"), other, a},
			{"merge", "--stats-out", filepath.Join(dir, c.name+".stats.out"), a, other},
		} {
			if code := run(context.Background(), append([]string{"padim", "-q"}, args...)); code != exitError {
				t.Errorf("another %s: padim %v exited %d, want %d", c.name, args, code, exitError)
			}
			if _, err := os.Stat(args[len(args)-3]); err == nil {
				t.Errorf("another %s: %s written", c.name, args[len(args)-3])
			}
		}
	}
}
