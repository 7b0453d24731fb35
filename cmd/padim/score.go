package main

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/urfave/cli/v2"

	"github.com/padim/padim/detector"
	"github.com/padim/padim/detector/fileio/readfile"
	"github.com/padim/padim/job"
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

// loadScorer loads --model and its backbone, ready to score.
func loadScorer(c *cli.Context, keepImages bool) (*detector.Model, *detector.Scorer, func(), error) {
	path := c.String("model")
	m, err := detector.Load(path)
	if err != nil {
		return nil, nil, nil, err
	}
	d, warn, err := m.DecodeFor(c.String("decode"))
	if err != nil {
		return nil, nil, nil, cli.Exit("--decode: "+err.Error(), exitError)
	}
	if warn != "" {
		fmt.Fprintf(os.Stderr, "warning: %s: %s\n", path, warn)
	}
	m.Preprocess.Decode = d
	name, data := m.BackboneName+" (embedded)", m.BackboneONNX
	if p := c.String("backbone"); p != "" {
		if data, err = readfile.ReadFile(p); err != nil {
			return nil, nil, nil, err
		}
		if sum := sha256.Sum256(data); hex.EncodeToString(sum[:]) != m.BackboneSHA256 {
			return nil, nil, nil, fmt.Errorf("%s is not the backbone %s was trained with (sha256 %s…); retrain or drop --backbone", p, path, m.BackboneSHA256[:12])
		}
		name = p
	} else if len(data) == 0 {
		return nil, nil, nil, fmt.Errorf("%s has no embedded backbone; give --backbone", path)
	}
	ext, be, err := openScoring(c, name, data, m.TapNames())
	if err != nil {
		return nil, nil, nil, err
	}
	sc, err := m.NewScorer(ext, detector.ScoreConfig{Backend: be, Pipeline: pipelineOptions(c), Thresholds: thresholdFlag(c), OpenRadius: c.Int("open-radius"), KeepImages: keepImages})
	if err != nil {
		ext.Close()
		be.Close()
		return nil, nil, nil, fmt.Errorf("%s: %w", path, err)
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

// textPath quotes a name that would break a line of text output.
func textPath(p string) string {
	if strings.ContainsFunc(p, func(r rune) bool { return r < ' ' || r == 0x7f }) || !utf8.ValidString(p) {
		return strconv.Quote(p)
	}
	return p
}

// scoreRun is what score's flags ask for.
type scoreRun struct {
	sh      *shard.Spec
	maps    job.Maps
	targets []job.Target // every target (every shard's)
	list    *job.TargetList
}

// scoreSetup reads score's flags and inputs and applies the output rule.
func scoreSetup(c *cli.Context) (*scoreRun, error) {
	sh, err := shardSpec(c)
	if err != nil {
		return nil, err
	}
	maps := c.String("maps")
	if maps == "" {
		maps = job.MapsNone
		if c.String("out") != "" {
			maps = job.MapsNPY
		}
	}
	if err := scoreUsage(c, sh, maps); err != nil {
		return nil, err
	}
	r := &scoreRun{sh: sh, maps: job.Maps{Out: c.String("out"), Kind: maps, Frame: c.String("map-frame")}, list: &job.TargetList{}}
	if c.IsSet("manifest") {
		r.targets, err = job.ManifestTargets(c.String("manifest"), maps != job.MapsNone)
		var esc *job.EscapeError
		if errors.As(err, &esc) {
			return nil, usageError("%s lists %s, outside its folder: maps named after it would land outside --out; list paths below the manifest's folder, or give --maps none", esc.List, esc.Key)
		}
	} else if r.list, err = job.ExpandTargets(c.Args().Slice(), maps != job.MapsNone); err == nil {
		r.targets = r.list.Targets
	}
	if err != nil {
		return nil, err
	}
	for _, n := range r.list.Notes {
		notef(c, "note: %s", n)
	}
	for _, s := range r.list.Skipped {
		notef(c, "skipped %s: %v", s.Path, s.Err)
	}
	// no output may overwrite an input or another output
	inputs := append([]string{c.String("model"), c.String("backbone"), c.String("manifest")}, job.Paths(r.targets)...)
	mine := r.targets
	var outputs []string
	if sh != nil {
		outputs = job.ShardOutputs(c.String("out"), *sh)
		mine = nil
		for _, i := range sh.Select(job.Keys(r.targets)) {
			mine = append(mine, r.targets[i])
		}
	}
	outputs = append(outputs, job.MapOutputs(c.String("out"), maps, mine)...)
	return r, checkOutputTree(inputs, outputs, r.list.Dirs...)
}

// scoreUsage checks score's flag combinations.
func scoreUsage(c *cli.Context, sh *shard.Spec, maps string) error {
	switch {
	case c.NArg() == 0 && !c.IsSet("manifest"):
		return usageError("score needs images or folders to score (or --manifest, or --stdin-jsonl)")
	case c.NArg() > 0 && c.IsSet("manifest"):
		return usageError("give images and folders, or --manifest, not both")
	case maps != job.MapsNPY && maps != job.MapsPNG && maps != job.MapsNone:
		return usageError("--maps %q: want npy, png or none", maps)
	case maps != job.MapsNone && c.String("out") == "":
		return usageError("--maps %s needs --out", maps)
	case c.String("map-frame") != "image" && c.String("map-frame") != "network":
		return usageError("--map-frame %q: want image or network", c.String("map-frame"))
	case sh == nil && (c.IsSet("restart") || c.IsSet("flush-every")):
		return usageError("--restart and --flush-every go with --shard")
	case sh == nil:
		return nil
	case c.String("out") == "":
		return usageError("--shard needs --out: the folder of the shards' results")
	case c.Bool("json"):
		return usageError("--shard writes its results to --out/results-%s.jsonl, not --json (padim collect merges the shards)", sh.Name())
	case c.Bool("fail-on-defect"):
		return usageError("--fail-on-defect does not go with --shard: a shard's exit code says whether it finished (padim collect reports the defects)")
	}
	return nil
}

func scoreAction(c *cli.Context) error {
	if c.Bool("stdin-jsonl") {
		return scoreStream(c)
	}
	r, err := scoreSetup(c)
	if err != nil {
		return err
	}
	start := time.Now()
	m, sc, closeAll, err := loadScorer(c, r.maps.Kind == job.MapsPNG)
	if err != nil {
		return err
	}
	defer closeAll()
	if sc.Thresholds() == nil {
		notef(c, "note: %s has no calibrated thresholds (trained with --calibrate none, or on one image): scores only; give --threshold for verdicts", c.String("model"))
	}
	r.maps.Range = job.HeatRange(m)
	if r.sh != nil {
		return scoreShard(c, r, sc, start)
	}
	var images []shard.ScoredImage
	prog := newProgress(c)
	n, err := job.Score(c.Context, job.ScoreConfig{Scorer: sc, Targets: r.targets, Skipped: r.list.Skipped, Maps: r.maps, Progress: prog.update,
		OnImage: func(name string, s shard.ScoredImage) {
			if c.Bool("json") {
				images = append(images, s)
				return
			}
			printScore(name, s)
			if s.Warning != "" {
				notef(c, "warning: %s: %s", textPath(name), s.Warning)
			}
		}})
	prog.done()
	if err != nil {
		return err
	}
	printTimings(c, "score", time.Since(start), sc.Pipeline().Timings)
	if c.Bool("json") {
		if err := printJSON(map[string]any{"model": c.String("model"), "images": images, "n_images": n.Images, "n_defect": n.Defects, "n_unreadable": n.Unreadable}); err != nil {
			return err
		}
	}
	// a defect found outranks unreadable inputs (both are reported): a
	// line stopped for a defect must not read as "some files were bad"
	if n.Defects > 0 && c.Bool("fail-on-defect") {
		if n.Unreadable > 0 {
			return cli.Exit(fmt.Sprintf("%d defect(s) found; also %d unreadable input(s) skipped (listed above)", n.Defects, n.Unreadable), exitDefect)
		}
		return cli.Exit("", exitDefect)
	}
	if n.Unreadable > 0 {
		return cli.Exit(fmt.Sprintf("%d unreadable image(s) skipped", n.Unreadable), exitSkipped)
	}
	return nil
}

// scoreShard runs score's shard: what is not done yet, into its results.
func scoreShard(c *cli.Context, r *scoreRun, sc *detector.Scorer, start time.Time) error {
	prog := newProgress(c)
	done, err := job.ScoreShard(c.Context, job.ScoreShardConfig{ShardConfig: shardConfig(c, r.sh, prog),
		Scorer: sc, Targets: r.targets, Maps: r.maps, OpenRadius: c.Int("open-radius")})
	prog.done()
	if err != nil {
		return shardError(err)
	}
	printTimings(c, "score", time.Since(start), sc.Pipeline().Timings)
	fmt.Printf("shard %s: %d inputs, %d scored now, %d done before, %d unreadable → %s (padim collect %s merges the shards)\n",
		r.sh, done.Inputs, done.Now, done.Inputs-done.Now, done.Unreadable, done.Results, c.String("out"))
	if done.Failed > 0 {
		notef(c, "note: %d unreadable image(s) recorded as errors; the shard counts as done (padim collect reports them; a rerun tries them again)", done.Failed)
	}
	return nil
}

func printScore(name string, s shard.ScoredImage) {
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
