package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"image"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/padim/padim/detector"
	"github.com/padim/padim/detector/backbone"
	"github.com/padim/padim/detector/dataset"
	"github.com/padim/padim/detector/npy"
	"github.com/padim/padim/detector/picture"
	"github.com/padim/padim/detector/postproc"
)

func scoreCommand() *cli.Command {
	return &cli.Command{
		Name:      "score",
		Usage:     "score images: anomaly score, verdict, defect boxes, maps",
		UsageText: "padim score --model M.padim [--out DIR] [--maps npy|png|none] [--json] [--threshold T] IMAGES|DIRS...",
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "out", Usage: "folder for maps (mirrors the input tree)"},
			&cli.StringFlag{Name: "maps", Usage: "npy (float32 blurred map at input resolution), png (heatmap, overlay, mask, boxes) or none; default npy with --out"},
			&cli.BoolFlag{Name: "json", Usage: "print one JSON document instead of lines"},
			&cli.BoolFlag{Name: "fail-on-defect", Usage: "exit with code 3 when any image is a defect"},
		}, scoringFlags()...),
		Action: scoreAction,
	}
}

// target is one input image and where its outputs go.
type target struct {
	path string
	rel  string // output path relative to --out, without extension
}

// targets expands the arguments: folders recursively (outputs mirror the tree
// below each folder), files by name. Two inputs with one output name are an error.
func targets(args []string) ([]target, error) {
	var ts []target
	seen := map[string]string{}
	add := func(path, rel string) error {
		rel = strings.TrimSuffix(rel, filepath.Ext(rel))
		if prev, ok := seen[rel]; ok {
			return fmt.Errorf("%s and %s would write the same output %s; score them in separate runs or folders", prev, path, rel)
		}
		seen[rel] = path
		ts = append(ts, target{path, rel})
		return nil
	}
	for _, a := range args {
		st, err := os.Stat(a)
		if err != nil {
			return nil, err
		}
		if !st.IsDir() {
			if err := add(a, filepath.Base(a)); err != nil {
				return nil, err
			}
			continue
		}
		files, err := dataset.Images(a)
		if err != nil {
			return nil, err
		}
		if len(files) == 0 {
			return nil, fmt.Errorf("no images in %s", a)
		}
		for _, f := range files {
			rel, _ := filepath.Rel(a, f)
			if err := add(f, rel); err != nil {
				return nil, err
			}
		}
	}
	return ts, nil
}

// scoringFlags are the flags of every command that loads a model to score with it
// (loadScorer reads them).
func scoringFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "model", Required: true, Usage: "model file from padim train"},
		&cli.Float64Flag{Name: "threshold", Usage: "verdict and mask threshold, overriding the calibrated ones"},
		&cli.IntFlag{Name: "open-radius", Value: detector.DefaultOpenRadius, Usage: "radius of the morphological opening that cleans masks"},
		&cli.StringFlag{Name: "backbone", Usage: "ONNX backbone to use instead of the one embedded in the model (must be the same graph)"},
		batchFlag, deviceFlag, threadsFlag,
	}
}

// loadScorer loads a model and its backbone, ready to score. th overrides the
// model's thresholds when not nil.
func loadScorer(c *cli.Context, th *detector.Thresholds, openRadius int, keepImages bool) (*detector.Model, *detector.Scorer, func(), error) {
	m, err := detector.Load(c.String("model"))
	if err != nil {
		return nil, nil, nil, err
	}
	taps := make([]string, len(m.Taps))
	for i, t := range m.Taps {
		taps[i] = t.Name
	}
	var ext *backbone.Extractor
	if p := c.String("backbone"); p != "" {
		data, err := os.ReadFile(p)
		if err != nil {
			return nil, nil, nil, err
		}
		if sum := sha256.Sum256(data); hex.EncodeToString(sum[:]) != m.BackboneSHA256 {
			return nil, nil, nil, fmt.Errorf("%s is not the backbone %s was trained with (sha256 %s…); retrain or drop --backbone", p, c.String("model"), m.BackboneSHA256[:12])
		}
		ext, err = openBackbone(c, p, data, taps)
		if err != nil {
			return nil, nil, nil, err
		}
	} else {
		if len(m.BackboneONNX) == 0 {
			return nil, nil, nil, fmt.Errorf("%s has no embedded backbone; give --backbone", c.String("model"))
		}
		ext, err = openBackbone(c, m.BackboneName+" (embedded)", m.BackboneONNX, taps)
		if err != nil {
			return nil, nil, nil, err
		}
	}
	be, err := gaussBackend(c)
	if err != nil {
		ext.Close()
		return nil, nil, nil, err
	}
	sc, err := m.NewScorer(ext, detector.ScoreConfig{Backend: be, Pipeline: pipelineOptions(c), Thresholds: th, OpenRadius: openRadius, KeepImages: keepImages})
	if err != nil {
		ext.Close()
		be.Close()
		return nil, nil, nil, fmt.Errorf("%s: %w", c.String("model"), err)
	}
	return m, sc, func() { sc.Close(); ext.Close(); be.Close() }, nil
}

// thresholdFlag returns --threshold as an override of both thresholds, nil when not given.
func thresholdFlag(c *cli.Context) *detector.Thresholds {
	if !c.IsSet("threshold") {
		return nil
	}
	t := float32(c.Float64("threshold"))
	return &detector.Thresholds{Image: t, Pixel: t}
}

type scoredImage struct {
	Path      string         `json:"path"`
	Score     *float32       `json:"score,omitempty"`
	Defect    *bool          `json:"defect,omitempty"`
	Threshold *float32       `json:"threshold,omitempty"`
	Boxes     []postproc.Box `json:"boxes,omitempty"`
	Maps      []string       `json:"maps,omitempty"`
	Error     string         `json:"error,omitempty"`
}

func scoreAction(c *cli.Context) error {
	if c.NArg() == 0 {
		return usageError("score needs images or folders to score")
	}
	maps := c.String("maps")
	if maps == "" {
		maps = "none"
		if c.String("out") != "" {
			maps = "npy"
		}
	}
	if maps != "npy" && maps != "png" && maps != "none" {
		return usageError("--maps %q: want npy, png or none", maps)
	}
	if maps != "none" && c.String("out") == "" {
		return usageError("--maps %s needs --out", maps)
	}
	ts, err := targets(c.Args().Slice())
	if err != nil {
		return err
	}
	start := time.Now()
	m, sc, closeAll, err := loadScorer(c, thresholdFlag(c), c.Int("open-radius"), maps == "png")
	if err != nil {
		return err
	}
	defer closeAll()
	if sc.Thresholds() == nil {
		notef(c, "note: %s has no calibrated thresholds (trained with --holdout 0): scores only; give --threshold for verdicts", c.String("model"))
	}
	rg := heatRange(m)
	paths := make([]string, len(ts))
	for i, t := range ts {
		paths[i] = t.path
	}
	var out []scoredImage
	nDefect, nBad := 0, 0
	prog := newProgress(c)
	err = sc.Score(c.Context, detector.FileInputs(paths), func(r *detector.Result) error {
		t := ts[r.Index]
		s := scoredImage{Path: r.Name}
		if r.Err != nil {
			s.Error = r.Err.Error()
			nBad++
		} else {
			s.Score = &r.Score
			if r.Thresholds != nil {
				s.Defect, s.Threshold = &r.Defect, &r.Thresholds.Image
				if r.Defect {
					nDefect++
				}
			}
			s.Boxes = r.Boxes
			t0 := time.Now()
			files, err := writeMaps(c.String("out"), t.rel, maps, r, rg)
			if err != nil {
				return err
			}
			if maps != "none" {
				sc.Pipeline().Timings.Since("write-maps", t0, 1)
			}
			s.Maps = files
		}
		prog.update("score", r.Index+1, len(ts))
		if c.Bool("json") {
			out = append(out, s)
		} else {
			printScore(s)
		}
		return nil
	})
	prog.done()
	if err != nil {
		return err
	}
	printTimings(c, "score", time.Since(start), sc.Pipeline().Timings)
	if c.Bool("json") {
		doc := map[string]any{"model": c.String("model"), "images": out, "n_images": len(ts), "n_defect": nDefect, "n_unreadable": nBad}
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(doc); err != nil {
			return err
		}
	}
	if nBad > 0 {
		return cli.Exit(fmt.Sprintf("%d unreadable image(s) skipped", nBad), exitSkipped)
	}
	if nDefect > 0 && c.Bool("fail-on-defect") {
		return cli.Exit("", exitDefect)
	}
	return nil
}

func printScore(s scoredImage) {
	if s.Error != "" {
		fmt.Printf("%s\terror\t%s\n", s.Path, s.Error)
		return
	}
	verdict := "-"
	if s.Defect != nil {
		verdict = "good"
		if *s.Defect {
			verdict = "DEFECT"
		}
	}
	var boxes []string
	for _, b := range s.Boxes {
		boxes = append(boxes, fmt.Sprintf("(%d,%d %dx%d)", b.X, b.Y, b.W, b.H))
	}
	fmt.Printf("%s\t%.4f\t%s\t%s\n", s.Path, *s.Score, verdict, strings.Join(boxes, " "))
}

// heatRange is the colour scale of pictures: from the held-out good pixels'
// median to 1.5× the image threshold, or the typical range of the map otherwise.
func heatRange(m *detector.Model) picture.Range {
	if c := m.Calibration; c != nil && len(c.PixelQuantiles) > 0 {
		return picture.Range{Lo: c.PixelQuantiles[0], Hi: 1.5 * c.Image}
	}
	return picture.Range{}
}

// writeMaps writes the requested maps for one image and returns their paths.
func writeMaps(dir, rel, kind string, r *detector.Result, rg picture.Range) ([]string, error) {
	if kind == "none" {
		return nil, nil
	}
	base := filepath.Join(dir, rel)
	if err := os.MkdirAll(filepath.Dir(base), 0o755); err != nil {
		return nil, err
	}
	if kind == "npy" {
		p := base + ".npy"
		return []string{p}, npy.Save(p, r.Map, r.H, r.W)
	}
	rg = rg.For(r.Map)
	photo := picture.Photo(r.Image)
	heat := picture.Heatmap(r.Map, r.W, r.H, rg)
	pics := map[string]image.Image{
		"_heatmap.png": heat,
		"_overlay.png": picture.Overlay(photo, heat, r.Map, rg),
		"_mask.png":    picture.Mask(r.Mask, r.W, r.H),
		"_boxes.png":   picture.Boxes(photo, r.Boxes),
	}
	var files []string
	for suffix := range pics {
		files = append(files, base+suffix)
	}
	sort.Strings(files)
	for _, f := range files {
		if err := picture.SavePNG(f, pics[strings.TrimPrefix(f, base)]); err != nil {
			return nil, err
		}
	}
	return files, nil
}
