package detector

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/padim/padim/detector/gauss"
)

// Shards fitted with a different ε or σ are not parts of one fit: every merge
// path refuses them, naming the setting (issue 21 item 8: merge --out took ε
// and σ from whichever file was listed first).
func TestMergeRefusesShardsOfOtherSettings(t *testing.T) {
	dir := t.TempDir()
	files := writeImages(t, filepath.Join(dir, "imgs"), 6, 21, false)
	base := TrainConfig{Preprocess: testPreprocess(), Dim: 8, Seed: 3, Eps: 0.01, Sigma: 4, Calibration: CalibrateNone, KeepStats: true}
	shard := func(name string, part []string, edit func(*TrainConfig)) string {
		cfg := base
		edit(&cfg)
		m, rep, err := Train(ctx, newFake(32), part, cfg)
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, name+".stats")
		if err := SaveStats(p, m, rep.Shard); err != nil {
			t.Fatal(err)
		}
		return p
	}
	a := shard("a", files[:3], func(*TrainConfig) {})
	same := shard("same", files[3:], func(*TrainConfig) {})
	if _, err := MergeStats([]string{a, same}, gauss.CPU{}, -1, FormAuto); err != nil {
		t.Fatalf("shards of one fit: %v", err)
	}
	for _, c := range []struct {
		setting string
		edit    func(*TrainConfig)
	}{
		{"eps", func(c *TrainConfig) { c.Eps = 0.1 }},
		{"sigma", func(c *TrainConfig) { c.Sigma = 2 }},
		{"channel subset", func(c *TrainConfig) { c.Seed = 99 }},
		{"input settings", func(c *TrainConfig) { c.Preprocess.Mean[0] += 0.01 }},
	} {
		other := shard(strings.ReplaceAll(c.setting, " ", "-"), files[3:], c.edit)
		for _, order := range [][]string{{a, other}, {other, a}} {
			for _, path := range []struct {
				name  string
				merge func([]string) error
			}{
				{"merge --out", func(p []string) error { _, err := MergeStats(p, gauss.CPU{}, -1, FormAuto); return err }},
				{"merge --out --eps", func(p []string) error { _, err := MergeStats(p, gauss.CPU{}, 0.05, FormFull); return err }},
				{"merge --stats-out, calibrate", func(p []string) error { _, err := LoadTotal(p, true); return err }},
				{"merge with calibration files", func(p []string) error { _, err := LoadShards(p, nil); return err }},
			} {
				err := path.merge(order)
				if err == nil || !strings.Contains(err.Error(), c.setting) || !strings.Contains(err.Error(), "not parts of one fit") {
					t.Errorf("%s with another %s (%s first): %v", path.name, c.setting, filepath.Base(order[0]), err)
				}
			}
		}
	}
}

// SameFit names every setting the parts of one fit share.
func TestSameFitChecksEverySetting(t *testing.T) {
	m := &Model{Meta: Meta{BackboneSHA256: "ab", Taps: nil, TotalChannels: 8, Preprocess: testPreprocess(), Eps: 0.01, Sigma: 4, Method: MethodPaDiM, GridH: 4, GridW: 4}, Channels: []int{1, 2}}
	if err := SameFit(m, m); err != nil {
		t.Fatal(err)
	}
	for what, edit := range map[string]func(*Model){
		"backbone":       func(o *Model) { o.BackboneSHA256 = "cd" },
		"total channels": func(o *Model) { o.TotalChannels = 9 },
		"channel subset": func(o *Model) { o.Channels = []int{1, 3} },
		"input settings": func(o *Model) { o.Preprocess.Resize = 64 },
		"eps":            func(o *Model) { o.Eps = 0.02 },
		"sigma":          func(o *Model) { o.Sigma = 0 },
		"method":         func(o *Model) { o.Method = "spade" },
		"pooling":        func(o *Model) { o.Pool = 3 },
		"grid":           func(o *Model) { o.GridW = 8 },
	} {
		o := *m
		o.Channels = append([]int(nil), m.Channels...)
		edit(&o)
		if err := SameFit(m, &o); err == nil || !strings.Contains(err.Error(), what) {
			t.Errorf("%s differs: %v", what, err)
		}
	}
}
