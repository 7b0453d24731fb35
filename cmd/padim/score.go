package main

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"image"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/urfave/cli/v2"

	"github.com/padim/padim/data/dataset"
	"github.com/padim/padim/detector"
	"github.com/padim/padim/detector/backbone"
	"github.com/padim/padim/detector/fileio/npy"
	"github.com/padim/padim/detector/fileio/picture"
	"github.com/padim/padim/detector/fileio/readfile"
	"github.com/padim/padim/detector/imageio"
	"github.com/padim/padim/detector/postproc"
	"github.com/padim/padim/shard"
)

func scoreCommand() *cli.Command {
	return &cli.Command{
		Name:  "score",
		Usage: "score images: anomaly score, verdict, defect boxes, maps",
		UsageText: "padim score --model M.padim [--out DIR] [--maps npy|png|none] [--json] [--threshold T] IMAGES|DIRS...\n" +
			"   padim score --model M.padim --shard I/N|auto/N --out DIR [--manifest LIST] [IMAGES|DIRS...]   (results in DIR/results-I-of-N.jsonl; padim collect DIR)\n" +
			"   padim score --model M.padim --stdin-jsonl   (one request a line in, {\"path\": F} or {\"data\": BASE64}; one result a line out)",
		Flags: append(append([]cli.Flag{
			&cli.StringFlag{Name: "out", Usage: "folder for maps (mirrors the input tree); with --shard also the results"},
			&cli.StringFlag{Name: "maps", Usage: "npy (float32 blurred map), png (heatmap, overlay, mask, boxes) or none; default npy with --out"},
			&cli.StringFlag{Name: "map-frame", Value: "image", Usage: "maps at the input image's size (image) or the network's (network; smaller files)"},
			&cli.BoolFlag{Name: "json", Usage: "print one JSON document instead of lines"},
			&cli.BoolFlag{Name: "fail-on-defect", Usage: "exit with code 3 when any image is a defect"},
			shardFlag(), manifestFlag("the arguments"),
			&cli.BoolFlag{Name: "stdin-jsonl", Usage: "read requests from stdin, one JSON object a line ({\"path\": F} or {\"data\": BASE64 image, \"name\": N}, optional \"id\"), write one result a line to stdout, in order"},
		}, resumeFlags()...), scoringFlags()...),
		Action: scoreAction,
	}
}

// target is one input image and where its outputs go.
type target struct {
	path string
	rel  string // output path relative to --out, without extension
	key  string // the path relative to the data root, with its extension and forward slashes: the shard split key
}

// targetList is what the arguments of score expand to.
type targetList struct {
	ts      []target
	skipped []dataset.FileError // folders that could not be read
	dirs    []string            // the folders given: data folders, where nothing is written
	notes   []string            // inputs left out as the same file as another
}

// targets expands the arguments like scoreTargets, with every output name
// distinct; an unreadable folder is an error.
func targets(args []string) ([]target, error) {
	l, err := scoreTargets(args, true)
	if err != nil {
		return nil, err
	}
	if len(l.skipped) > 0 {
		return nil, l.skipped[0]
	}
	return l.ts, nil
}

// scoreTargets expands the arguments: folders recursively (outputs mirror
// the tree below the folder; with several folders, below their common
// parent, so each keeps its own tree), files by name. Each file is scored
// once: the same file under another name (a link, a relative and an absolute
// path) is left out with a note. With outputs, two inputs with one output
// name are an error. Sub-folders that cannot be read are skipped and listed.
func scoreTargets(args []string, outputs bool) (*targetList, error) {
	l := &targetList{}
	for _, a := range args {
		if st, err := os.Stat(a); err == nil && st.IsDir() {
			abs, _ := filepath.Abs(a)
			l.dirs = append(l.dirs, abs)
		}
	}
	root := ""
	if len(l.dirs) > 1 {
		root = l.dirs[0]
		for _, d := range l.dirs[1:] {
			for !strings.HasPrefix(d+string(filepath.Separator), root+string(filepath.Separator)) && root != filepath.Dir(root) {
				root = filepath.Dir(root)
			}
		}
	}
	var ts []target
	seen := map[string]string{}
	add := func(path, rel string) error {
		key := filepath.ToSlash(rel)
		rel = strings.TrimSuffix(rel, filepath.Ext(rel))
		if prev, ok := seen[rel]; ok && outputs {
			return fmt.Errorf("%s and %s would write the same output %s; score them in separate runs or folders", prev, path, rel)
		}
		seen[rel] = path
		ts = append(ts, target{path, rel, key})
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
		w, err := dataset.Walk(a)
		if err != nil {
			return nil, err
		}
		for _, d := range w.Duplicates {
			l.notes = append(l.notes, fmt.Sprintf("%s is the same file as %s: scored once", d.Path, d.Same))
		}
		l.skipped = append(l.skipped, w.Skipped...)
		if len(w.Files) == 0 && len(w.Skipped) == 0 {
			return nil, fmt.Errorf("no images in %s", a)
		}
		base := a
		if root != "" {
			base = root
		}
		for _, f := range w.Files {
			rel, err := filepath.Rel(base, f)
			if err != nil || root != "" {
				abs, _ := filepath.Abs(f)
				rel, _ = filepath.Rel(root, abs)
			}
			if err := add(f, rel); err != nil {
				return nil, err
			}
		}
	}
	paths := make([]string, len(ts))
	for i, t := range ts {
		paths[i] = t.path
	}
	for _, i := range firstOfEachFile(paths, func(path, same string) {
		l.notes = append(l.notes, fmt.Sprintf("%s is the same file as %s: scored once", path, same))
	}) {
		l.ts = append(l.ts, ts[i])
	}
	return l, nil
}

// mapSuffixes are the files --maps writes per image.
var mapSuffixes = map[string][]string{"npy": {".npy"}, "png": {"_boxes.png", "_heatmap.png", "_mask.png", "_overlay.png"}, "none": nil}

// scoringFlags are the flags of every command that loads a model to score with it
// (loadScorer reads them).
func scoringFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "model", Required: true, Usage: "model file from padim train"},
		&cli.Float64Flag{Name: "threshold", Usage: "verdict and mask threshold, overriding the calibrated ones"},
		&cli.IntFlag{Name: "open-radius", Value: detector.DefaultOpenRadius, Usage: "radius of the morphological opening that cleans masks"},
		&cli.StringFlag{Name: "backbone", Usage: "ONNX backbone to use instead of the one embedded in the model (must be the same graph)"},
		&cli.StringFlag{Name: "decode", Usage: "decode path to use instead of the model's (go, turbojpeg-full, turbojpeg-dct; a warning says the inputs differ from training's)"},
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
	d, warn, err := m.DecodeFor(c.String("decode"))
	if err != nil {
		return nil, nil, nil, cli.Exit("--decode: "+err.Error(), exitError)
	}
	if warn != "" {
		fmt.Fprintf(os.Stderr, "warning: %s: %s\n", c.String("model"), warn)
	}
	m.Preprocess.Decode = d
	taps := make([]string, len(m.Taps))
	for i, t := range m.Taps {
		taps[i] = t.Name
	}
	var ext *backbone.Extractor
	if p := c.String("backbone"); p != "" {
		data, err := readfile.ReadFile(p)
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
	Path       string         `json:"path"`
	PathBase64 string         `json:"path_base64,omitempty"` // the name's bytes, when they are not UTF-8
	Score      *float32       `json:"score,omitempty"`
	Defect     *bool          `json:"defect,omitempty"`
	Threshold  *float32       `json:"threshold,omitempty"`
	Boxes      []postproc.Box `json:"boxes,omitempty"` // in the input image's pixels
	Frame      *imageio.Frame `json:"frame,omitempty"` // the scored map on the input image
	Maps       []string       `json:"maps,omitempty"`
	MapFrame   string         `json:"map_frame,omitempty"` // "image": maps at the input image's size; "network"
	Warning    string         `json:"warning,omitempty"`
	Error      string         `json:"error,omitempty"`
}

// jsonPath names a file in JSON: its bytes as text, and as base64 too when
// they are not valid UTF-8 (which JSON would otherwise replace).
func jsonPath(p string) (string, string) {
	if utf8.ValidString(p) {
		return p, ""
	}
	return strings.ToValidUTF8(p, "\uFFFD"), base64.StdEncoding.EncodeToString([]byte(p))
}

// textPath quotes a name that would break a line of text output.
func textPath(p string) string {
	if strings.ContainsFunc(p, func(r rune) bool { return r < ' ' || r == 0x7f }) || !utf8.ValidString(p) {
		return strconv.Quote(p)
	}
	return p
}

// manifestTargets reads --manifest into score targets: outputs are named
// after the listed paths, which must then stay inside the list's folder.
func manifestTargets(path string, withMaps bool) ([]target, error) {
	es, err := shard.ReadManifest(path)
	if err != nil {
		return nil, err
	}
	ts := make([]target, len(es))
	seen := map[string]string{}
	for i, e := range es {
		rel := strings.TrimSuffix(filepath.FromSlash(e.Key), filepath.Ext(e.Key))
		if withMaps && shard.EscapesRoot(e.Key) {
			return nil, usageError("%s lists %s, outside its folder: maps named after it would land outside --out; list paths below the manifest's folder, or give --maps none", path, e.Key)
		}
		if prev, ok := seen[rel]; ok {
			return nil, fmt.Errorf("%s and %s would write the same output %s; score them in separate runs", prev, e.Key, rel)
		}
		seen[rel] = e.Key
		ts[i] = target{path: e.Path, rel: rel, key: e.Key}
	}
	return ts, nil
}

// scoreRecord is one line of a shard's results file.
type scoreRecord struct {
	shard.Common
	scoredImage
}

func scoreAction(c *cli.Context) error {
	if c.Bool("stdin-jsonl") {
		return scoreStream(c)
	}
	sh, err := shardSpec(c)
	if err != nil {
		return err
	}
	if c.NArg() == 0 && !c.IsSet("manifest") {
		return usageError("score needs images or folders to score (or --manifest, or --stdin-jsonl)")
	}
	if c.NArg() > 0 && c.IsSet("manifest") {
		return usageError("give images and folders, or --manifest, not both")
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
	frame := c.String("map-frame")
	if frame != "image" && frame != "network" {
		return usageError("--map-frame %q: want image or network", frame)
	}
	if sh != nil {
		switch {
		case c.String("out") == "":
			return usageError("--shard needs --out: the folder of the shards' results")
		case c.Bool("json"):
			return usageError("--shard writes its results to --out/results-%s.jsonl, not --json (padim collect merges the shards)", sh.Name())
		case c.Bool("fail-on-defect"):
			return usageError("--fail-on-defect does not go with --shard: a shard's exit code says whether it finished (padim collect reports the defects)")
		}
	} else if c.IsSet("restart") || c.IsSet("flush-every") {
		return usageError("--restart and --flush-every go with --shard")
	}
	var ts []target
	var tl *targetList
	if c.IsSet("manifest") {
		ts, err = manifestTargets(c.String("manifest"), maps != "none")
		tl = &targetList{}
	} else {
		tl, err = scoreTargets(c.Args().Slice(), maps != "none")
		if tl != nil {
			ts = tl.ts
		}
	}
	if err != nil {
		return err
	}
	for _, n := range tl.notes {
		notef(c, "note: %s", n)
	}
	for _, s := range tl.skipped {
		notef(c, "skipped %s: %v", s.Path, s.Err)
	}
	all := ts
	keys := make([]string, len(all))
	for i, t := range all {
		keys[i] = t.key
	}
	var sel []int
	if sh != nil {
		sel = sh.Select(keys)
		ts = make([]target, len(sel))
		for i, j := range sel {
			ts[i] = all[j]
		}
	}
	// no output may overwrite an input or another output
	inputs := []string{c.String("model"), c.String("backbone"), c.String("manifest")}
	var outputs []string
	if sh != nil {
		outputs = append(outputs, shard.ResultsPath(c.String("out"), *sh), shard.MarkerPath(c.String("out"), *sh))
	}
	for _, t := range all {
		inputs = append(inputs, t.path)
	}
	for _, t := range ts {
		for _, suf := range mapSuffixes[maps] {
			outputs = append(outputs, filepath.Join(c.String("out"), t.rel)+suf)
		}
	}
	if err := checkOutputTree(inputs, outputs, tl.dirs...); err != nil {
		return err
	}
	start := time.Now()
	m, sc, closeAll, err := loadScorer(c, thresholdFlag(c), c.Int("open-radius"), maps == "png")
	if err != nil {
		return err
	}
	defer closeAll()
	if sc.Thresholds() == nil {
		notef(c, "note: %s has no calibrated thresholds (trained with --calibrate none, or on one image): scores only; give --threshold for verdicts", c.String("model"))
	}
	rg := heatRange(m)

	// a shard: resume its results file, score what is not done
	if sh != nil {
		res, id, err := openShard(c, sh, shard.Identity{Command: "score", ListHash: shard.ListHash(keys), Total: len(all),
			Settings: settingsHash("score", sc.Thresholds(), c.Int("open-radius"), maps, frame)}, keys, sel)
		if err != nil {
			return err
		}
		defer res.Close()
		common := shard.Common{ModelSHA256: id.ModelSHA256, Settings: id.Settings}
		var todo []target
		var pos []int // position in the whole list of each target to score
		for i, t := range ts {
			if !res.Done(t.key) {
				todo = append(todo, t)
				pos = append(pos, sel[i])
			}
		}
		return scoreShard(c, sh, res, common, ts, todo, pos, sc, maps, frame, rg, start)
	}
	paths := make([]string, len(ts))
	for i, t := range ts {
		paths[i] = t.path
	}
	var out []scoredImage
	nDefect, nBad := 0, 0
	for _, s := range tl.skipped { // unreadable folders are reported with the unreadable images
		nBad++
		si := scoredImage{Error: s.Error()}
		si.Path, si.PathBase64 = jsonPath(s.Path)
		if c.Bool("json") {
			out = append(out, si)
		} else {
			printScore(s.Path, si)
		}
	}
	prog := newProgress(c)
	err = sc.Score(c.Context, detector.FileInputs(paths), func(r *detector.Result) error {
		s, err := scored(c, sc, ts[r.Index], r, maps, frame, rg)
		if err != nil {
			return err
		}
		if s.Error != "" {
			nBad++
		} else if s.Defect != nil && *s.Defect {
			nDefect++
		}
		prog.update("score", r.Index+1, len(ts))
		if c.Bool("json") {
			out = append(out, s)
		} else {
			printScore(r.Name, s)
			if s.Warning != "" {
				notef(c, "warning: %s: %s", textPath(r.Name), s.Warning)
			}
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
	// a defect found outranks unreadable inputs (both are reported): a
	// line stopped for a defect must not read as "some files were bad"
	if nDefect > 0 && c.Bool("fail-on-defect") {
		if nBad > 0 {
			return cli.Exit(fmt.Sprintf("%d defect(s) found; also %d unreadable input(s) skipped (listed above)", nDefect, nBad), exitDefect)
		}
		return cli.Exit("", exitDefect)
	}
	if nBad > 0 {
		return cli.Exit(fmt.Sprintf("%d unreadable image(s) skipped", nBad), exitSkipped)
	}
	return nil
}

// scored turns one result into its JSON form, writing its maps.
func scored(c *cli.Context, sc *detector.Scorer, t target, r *detector.Result, maps, frame string, rg picture.Range) (scoredImage, error) {
	s := scoredImage{}
	s.Path, s.PathBase64 = jsonPath(r.Name)
	if r.Err != nil {
		s.Error = r.Err.Error()
		return s, nil
	}
	s.Score, s.Warning = &r.Score, r.Warning
	fr := r.Frame
	s.Frame = &fr
	if r.Thresholds != nil {
		s.Defect, s.Threshold = &r.Defect, &r.Thresholds.Image
	}
	s.Boxes = r.ImageBoxes
	t0 := time.Now()
	files, err := writeMaps(c.String("out"), t.rel, maps, frame == "image", r, rg)
	if err != nil {
		return s, err
	}
	if maps != "none" {
		s.MapFrame = frame
		sc.Pipeline().Timings.Since("write-maps", t0, 1)
	}
	s.Maps = files
	return s, nil
}

// scoreShard scores the shard's inputs that are not done yet into its
// results file and marks the shard finished.
func scoreShard(c *cli.Context, sh *shard.Spec, res *shard.Results, common shard.Common, ts, todo []target, pos []int, sc *detector.Scorer, maps, frame string, rg picture.Range, start time.Time) error {
	paths := make([]string, len(todo))
	for i, t := range todo {
		paths[i] = t.path
	}
	prog := newProgress(c)
	nBad := 0
	err := sc.Score(c.Context, detector.FileInputs(paths), func(r *detector.Result) error {
		t := todo[r.Index]
		s, err := scored(c, sc, t, r, maps, frame, rg)
		if err != nil {
			return err
		}
		rec := scoreRecord{Common: common, scoredImage: s}
		rec.Index, rec.Key = pos[r.Index], t.key
		if s.Error != "" {
			nBad++
			notef(c, "unreadable: %s", s.Error)
		}
		prog.update("score", r.Index+1, len(todo))
		return res.Add(rec, s.Error != "")
	})
	prog.done()
	if err != nil {
		if ferr := res.Flush(); ferr != nil { // keep what was done for the rerun
			notef(c, "%v", ferr)
		}
		return err
	}
	mk, err := res.Finish(len(ts))
	if err != nil {
		return err
	}
	printTimings(c, "score", time.Since(start), sc.Pipeline().Timings)
	fmt.Printf("shard %s: %d inputs, %d scored now, %d done before, %d unreadable → %s (padim collect %s merges the shards)\n",
		sh, len(ts), len(todo), len(ts)-len(todo), mk.Errors, res.Path, c.String("out"))
	if nBad > 0 {
		notef(c, "note: %d unreadable image(s) recorded as errors; the shard counts as done (padim collect reports them; a rerun tries them again)", nBad)
	}
	return nil
}

func printScore(name string, s scoredImage) {
	name = textPath(name)
	if s.Error != "" {
		fmt.Printf("%s\terror\t%s\n", name, strings.ReplaceAll(s.Error, "\n", " "))
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
	fmt.Printf("%s\t%.4f\t%s\t%s\n", name, *s.Score, verdict, strings.Join(boxes, " "))
}

// heatRange is the colour scale of pictures: from the held-out good pixels'
// median to 1.5× the image threshold, or the typical range of the map otherwise.
func heatRange(m *detector.Model) picture.Range {
	if c := m.Calibration; c != nil && len(c.PixelQuantiles) > 0 {
		return picture.Range{Lo: c.PixelQuantiles[0], Hi: 1.5 * c.Image}
	}
	return picture.Range{}
}

// writeMaps writes the requested maps for one image and returns their paths:
// in the input image's frame (its size; the photo re-read at full size) or the
// network's.
func writeMaps(dir, rel, kind string, imageFrame bool, r *detector.Result, rg picture.Range) ([]string, error) {
	if kind == "none" {
		return nil, nil
	}
	base := filepath.Join(dir, rel)
	if err := os.MkdirAll(filepath.Dir(base), 0o755); err != nil {
		return nil, err
	}
	m, w, h := r.Map, r.W, r.H
	mask, boxes := r.Mask, r.Boxes
	if imageFrame {
		m, w, h = r.ImageMap()
		mask, boxes = r.ImageMask(), r.ImageBoxes
	}
	if kind == "npy" {
		p := base + ".npy"
		return []string{p}, npy.Save(p, m, h, w)
	}
	rg = rg.For(m)
	src := r.Image
	if imageFrame && (r.Image == nil || r.Image.W != w || r.Image.H != h) {
		full, err := imageio.Decode(r.Name)
		if err != nil {
			return nil, err
		}
		src = full
	}
	photo := picture.Photo(src)
	heat := picture.Heatmap(m, w, h, rg)
	pics := map[string]image.Image{
		"_heatmap.png": heat,
		"_overlay.png": picture.Overlay(photo, heat, m, rg),
		"_mask.png":    picture.Mask(mask, w, h),
		"_boxes.png":   picture.Boxes(photo, boxes),
	}
	var files []string
	for _, suffix := range mapSuffixes["png"] {
		f := base + suffix
		if err := picture.SavePNG(f, pics[suffix]); err != nil {
			return nil, err
		}
		files = append(files, f)
	}
	return files, nil
}
