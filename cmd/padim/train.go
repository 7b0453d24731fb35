package main

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/padim/padim/detector"
	"github.com/padim/padim/detector/anomalymap"
	"github.com/padim/padim/detector/backbone"
	"github.com/padim/padim/detector/baseline"
	"github.com/padim/padim/detector/gauss"
	"github.com/padim/padim/detector/imageio"
	"github.com/padim/padim/job"
	"github.com/padim/padim/models/mobilenetv2"
	"github.com/padim/padim/shard"
)

func inputFlags() []cli.Flag {
	return []cli.Flag{
		&cli.IntFlag{Name: "resize", Usage: "resize images (or tiles) to N×N (default: the backbone's input size)"},
		&cli.IntFlag{Name: "crop", Usage: "then centre-crop to N×N (0: no crop)"},
		&cli.StringFlag{Name: "mean", Usage: "input mean r,g,b on [0,1] (default: the backbone's metadata, else ImageNet)"},
		&cli.StringFlag{Name: "std", Usage: "input std r,g,b (default: the backbone's metadata, else ImageNet)"},
		&cli.IntFlag{Name: "tile", Usage: "cut images into T×T tiles at native resolution (large images; textures)"},
		&cli.IntFlag{Name: "overlap", Usage: "tile overlap in pixels"},
		&cli.StringFlag{Name: "decode", Value: imageio.DecodeGo.String(), Usage: "how images become pixels, stored in the model: go (Go's decoders, exact resize), " +
			"turbojpeg-full (JPEG by libjpeg-turbo, then the exact resize), turbojpeg-dct (JPEG by libjpeg-turbo shrunk by up to 8× while decoding, then the exact resize; fastest); " +
			"the turbojpeg paths need a build with libjpeg-turbo"},
	}
}

// parseTriple reads --mean and --std: "r,g,b", three numbers.
func parseTriple(s string) ([3]float32, error) {
	var t [3]float32
	parts := strings.Split(s, ",")
	if len(parts) != 3 {
		return t, fmt.Errorf("%q: want 3 comma-separated numbers", s)
	}
	for i, p := range parts {
		v, err := strconv.ParseFloat(strings.TrimSpace(p), 64)
		if err != nil {
			return t, fmt.Errorf("%q: %v", s, err)
		}
		t[i] = float32(v)
	}
	return t, nil
}

// preprocessFor builds the input settings from flags and the backbone.
func preprocessFor(c *cli.Context, ext *backbone.Extractor) (imageio.Preprocess, error) {
	pp := ext.DefaultPreprocess()
	pp.Resize, pp.Crop, pp.Tile, pp.Overlap = c.Int("resize"), c.Int("crop"), c.Int("tile"), c.Int("overlap")
	if pp.Resize == 0 {
		pp.Resize = ext.InputSize()
	}
	var err error
	if s := c.String("mean"); s != "" {
		if pp.Mean, err = parseTriple(s); err != nil {
			return pp, usageError("--mean: %v", err)
		}
	}
	if s := c.String("std"); s != "" {
		if pp.Std, err = parseTriple(s); err != nil {
			return pp, usageError("--std: %v", err)
		}
	}
	if pp.Decode, err = imageio.ParseDecoder(c.String("decode")); err != nil {
		return pp, usageError("--decode: %v", err)
	}
	if err := pp.Decode.Available(); err != nil {
		return pp, cli.Exit("--decode: "+err.Error(), exitError)
	}
	if err := pp.Check(); err != nil {
		return pp, usageError("%v", err)
	}
	if pp.InputSize() != ext.InputSize() {
		return pp, usageError("--resize %d --crop %d gives %d² inputs, but the backbone takes %d²", pp.Resize, pp.Crop, pp.InputSize(), ext.InputSize())
	}
	return pp, nil
}

func trainCommand() *cli.Command {
	return &cli.Command{
		Name:  "train",
		Usage: "fit a model on good images",
		UsageText: "padim train [--backbone F.onnx] --data DIR --out M.padim [options]\n" +
			"   padim train --data DIR|--manifest LIST --shard I/N|auto/N --stats-out S-I.stats [options]   (then padim merge; thresholds: padim calibrate)",
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "backbone", Usage: "ONNX backbone (padim backbone makes one; default: the ImageNet MobileNetV2 shipped inside padim)"},
			&cli.StringFlag{Name: "data", Usage: "folder of good images, or an MVTec category (train/good is used); required unless --manifest"},
			&cli.StringFlag{Name: "out", Usage: "model file to write (required unless --shard)"},
			&cli.IntFlag{Name: "dim", Value: detector.DefaultDim, Usage: "channels kept at random (0: all)"},
			&cli.Uint64Flag{Name: "seed", Value: detector.DefaultSeed, Usage: "seed of the channel subset, the cross-fitting folds and the hold-out split"},
			&cli.StringFlag{Name: "layers", Usage: "backbone outputs to use (default: the model's metadata, else layer1,layer2,layer3)"},
			&cli.StringFlag{Name: "channels", Usage: "file of 0-based channel indices into the concatenated taps; overrides --dim/--seed"},
			&cli.Float64Flag{Name: "eps", Value: detector.DefaultEps, Usage: "covariance regularisation ε·I"},
			&cli.StringFlag{Name: "gaussian", Value: detector.FormAuto, Usage: "auto (low-rank when N < (d+1)/2 and the samples fit the memory budget), full or lowrank"},
			&cli.StringFlag{Name: "calibrate", Value: detector.CalibrateCrossFit, Usage: "how thresholds are set: crossfit (every image scored by a model fitted without it), holdout, none"},
			&cli.IntFlag{Name: "folds", Value: detector.DefaultFolds, Usage: "cross-fitting folds (the low-rank form leaves one out with ≤ 20 images)"},
			&cli.Float64Flag{Name: "holdout", Usage: "hold out this fraction of the images for thresholds instead of cross-fitting (0: no thresholds)"},
			targetFPRFlag,
			&cli.StringFlag{Name: "method", Value: detector.MethodPaDiM, Usage: "padim, or a baseline on the same pipeline: spade (kNN on images, then on their patches), patchcore (coreset memory bank; taps layer2,layer3 pooled 3×3 unless --layers)"},
			&cli.IntFlag{Name: "k", Value: baseline.DefaultK, Usage: "spade: nearest training images"},
			&cli.Float64Flag{Name: "coreset", Value: baseline.DefaultCoreset, Usage: "patchcore: fraction of the training patch features kept in the memory bank"},
			&cli.Float64Flag{Name: "sigma", Value: anomalymap.DefaultSigma, Usage: "Gaussian blur of the anomaly map, in pixels of the network input"},
			&cli.StringFlag{Name: "stats-out", Usage: "also save the fit's statistics, to merge with other shards (padim merge)"},
			&cli.BoolFlag{Name: "strict", Usage: "stop at the first unreadable image instead of skipping it"},
			manifestFlag("--data"), shardFlag(),
			batchFlag, deviceFlag, threadsFlag,
		}, inputFlags()...),
		Action: trainAction,
	}
}

// trainRun is what train's flags ask for.
type trainRun struct {
	sh      *shard.Spec
	calib   string
	holdout float64
	rule    detector.Rule
	set     *job.TrainSet
	files   []string // the images to fit (the shard's part)
	budget  int64
}

// trainSetup reads train's flags and inputs, and applies the output rule.
func trainSetup(c *cli.Context) (*trainRun, error) {
	r := &trainRun{calib: c.String("calibrate"), holdout: c.Float64("holdout")}
	if c.IsSet("holdout") {
		if !(r.holdout >= 0 && r.holdout < 1) {
			return nil, usageError("--holdout %v: want a fraction in [0,1)", r.holdout)
		}
		if c.IsSet("calibrate") && r.calib != detector.CalibrateHoldout {
			return nil, usageError("--holdout goes with --calibrate holdout, not %s", r.calib)
		}
		r.calib = detector.CalibrateHoldout
		if r.holdout == 0 {
			r.calib = detector.CalibrateNone
		}
	}
	var err error
	if r.sh, err = shardSpec(c); err != nil {
		return nil, err
	}
	if r.sh != nil {
		switch {
		case c.String("stats-out") == "":
			return nil, usageError("--shard needs --stats-out: a shard's statistics, to merge with the others (padim merge)")
		case c.IsSet("holdout") || c.IsSet("target-fpr") || c.IsSet("calibrate") && r.calib != detector.CalibrateNone:
			return nil, usageError("a shard sets no thresholds: they come from every shard's images together (padim calibrate after padim merge; see padim calibrate --help)")
		}
		r.calib = detector.CalibrateNone
	} else if !c.IsSet("out") {
		return nil, usageError("--out is required (see padim train --help)")
	}
	if r.rule, err = thresholdRule(c, r.calib); err != nil {
		return nil, err
	}
	if r.set, err = trainInputs(c); err != nil {
		return nil, err
	}
	r.files = r.set.Files
	err = checkOutputs(append([]string{c.String("backbone"), c.String("channels"), c.String("manifest")}, r.files...), []string{c.String("out"), c.String("stats-out")}, c.String("data"))
	return r, err
}

func trainAction(c *cli.Context) error {
	r, err := trainSetup(c)
	if err != nil {
		return err
	}
	// one run per output: a second training into the same --out refuses
	// now, instead of both fitting and both saying "wrote"
	unlock, err := lockOutputs(c, c.String("out"), c.String("stats-out"))
	if err != nil {
		return err
	}
	defer unlock()
	if r.sh != nil {
		all := len(r.files)
		if r.files = r.set.Select(*r.sh); len(r.files) == 0 {
			notef(c, "shard %s holds none of the %d images: nothing to fit, no statistics written", r.sh, all)
			return nil
		}
		notef(c, "shard %s: %d of the %d images", r.sh, len(r.files), all)
	}
	if layers := splitList(c.String("layers")); len(slices.Compact(slices.Sorted(slices.Values(layers)))) != len(layers) {
		return usageError("--layers %q names a layer twice", c.String("layers"))
	}
	if r.budget, err = memoryBudget(c); err != nil {
		return err
	}
	cfg, closeAll, err := trainConfig(c, r)
	if err != nil {
		return err
	}
	defer closeAll()
	prog := newProgress(c)
	cfg.Progress = prog.update
	notef(c, "training on %d images from %s (backbone %s on %s)", len(r.files), c.String("data"), cfg.BackboneName, cfg.ext.Provider)
	start := time.Now()
	m, rep, err := detector.Train(c.Context, cfg.ext, r.files, cfg.TrainConfig)
	prog.done()
	if err != nil {
		return err
	}
	return trainSave(c, r, m, rep, start)
}

// trainConfigured is detector.Train's configuration and the backbone it runs.
type trainConfigured struct {
	detector.TrainConfig
	ext *backbone.Extractor
}

// trainConfig opens the backbone and the backend and reads the fit's flags.
func trainConfig(c *cli.Context, r *trainRun) (*trainConfigured, func(), error) {
	bbName := c.String("backbone")
	var bbData []byte
	if bbName == "" {
		if err := mobilenetv2.Verify(); err != nil {
			return nil, nil, err
		}
		bbName, bbData = mobilenetv2.Arch+" (shipped, ImageNet-pretrained)", mobilenetv2.ONNX()
		notef(c, "backbone: %s, the ImageNet MobileNetV2 shipped inside padim (Apache-2.0, padim backbone --license); give --backbone for another", mobilenetv2.Arch)
	}
	layers := splitList(c.String("layers"))
	if len(layers) == 0 {
		layers = detector.DefaultLayers(c.String("method")) // PatchCore's mid-level features
	}
	ext, err := openBackbone(c, bbName, bbData, layers)
	if err != nil {
		return nil, nil, err
	}
	pp, err := preprocessFor(c, ext)
	var channels []int
	if f := c.String("channels"); f != "" && err == nil {
		channels, err = readChannels(f)
	}
	var be gauss.Backend
	if err == nil {
		be, err = gaussBackend(c)
	}
	if err != nil {
		ext.Close()
		return nil, nil, err
	}
	form := c.String("gaussian")
	if _, lowRank := be.(gauss.LowRankBackend); r.sh != nil && lowRank && !c.IsSet("gaussian") && detector.ShardKeepsSamples(ext.Taps(), channels, c.Int("dim"), c.Uint64("seed"), len(r.files), c.Float64("eps"), r.budget) {
		// a shard no larger than its statistics keeps its samples: the
		// calibration pass then computes exact (float64) statistics from them
		form = detector.FormLowRank
	}
	return &trainConfigured{ext: ext, TrainConfig: detector.TrainConfig{
		Preprocess: pp, Pipeline: pipelineOptions(c), Dim: c.Int("dim"), Seed: c.Uint64("seed"), Channels: channels, Eps: c.Float64("eps"),
		Gaussian: form, Calibration: r.calib, Folds: c.Int("folds"), Holdout: r.holdout, Rule: &r.rule,
		Method: c.String("method"), K: c.Int("k"), Coreset: c.Float64("coreset"),
		Sigma: c.Float64("sigma"), Backend: be,
		BackboneName: bbName, BackboneONNX: ext.Data, SkipBadFiles: !c.Bool("strict"),
		KeepStats: c.String("stats-out") != "", MaxMemory: r.budget,
	}}, func() { be.Close(); ext.Close() }, nil
}

// trainSave writes the statistics and the model and says what was written.
func trainSave(c *cli.Context, r *trainRun, m *detector.Model, rep *detector.TrainReport, start time.Time) error {
	// a signal from here on leaves the outputs as they were (the writes
	// refuse to commit once it came: atomicfile.Stop)
	testWait(c.Context, "save", 0)
	if err := c.Context.Err(); err != nil {
		return err
	}
	if p := c.String("stats-out"); p != "" {
		t := time.Now()
		if err := detector.SaveStats(p, m, rep.Shard); err != nil {
			return err
		}
		rep.Timings.Since("save-stats", t, 1)
		rep.Shard = nil
	}
	if c.String("out") != "" {
		t := time.Now()
		if err := m.Save(c.String("out")); err != nil {
			return err
		}
		testWait(c.Context, "saved", 0)
		rep.Timings.Since("save", t, 1)
	} else { // a shard's statistics only
		testWait(c.Context, "saved", 0)
	}
	printTimings(c, "train", time.Since(start), rep.Timings)
	for _, s := range r.set.Skipped {
		fmt.Fprintf(os.Stderr, "skipped %s: %v\n", s.Path, s.Err)
	}
	for _, s := range rep.Skipped {
		fmt.Fprintf(os.Stderr, "skipped %s: %v\n", s.Path, s.Err)
	}
	if c.String("out") == "" {
		fmt.Printf("wrote %s: shard %s, %d samples (padim merge combines the shards)\n", c.String("stats-out"), r.sh, m.NTrain)
		if len(rep.Skipped) > 0 {
			// a shard that wrote its statistics has done its part: exit 0, so
			// that a batch system does not retry it over a bad file
			notef(c, "note: %d unreadable image(s) skipped (listed above); the shard's statistics hold the rest", len(rep.Skipped))
		}
		return nil
	}
	for _, n := range rep.Notes {
		notef(c, "note: %s", n)
	}
	printTrained(c.String("out"), m, rep)
	if n := len(rep.Skipped) + len(r.set.Skipped); n > 0 {
		return cli.Exit(fmt.Sprintf("%d unreadable image(s) or folder(s) skipped", n), exitSkipped)
	}
	return nil
}

// printTrained says what model was written and how its thresholds were set.
func printTrained(out string, m *detector.Model, rep *detector.TrainReport) {
	P, D := m.Gaussian.Shape()
	fmt.Printf("wrote %s: %d samples, %d patches × %d channels, %s form (%s)", out, m.NTrain, P, D, rep.Form, rep.FormReason)
	if cal := m.Calibration; cal != nil {
		how := fmt.Sprintf("%d-fold cross-fitting", rep.Folds)
		switch {
		case rep.Folds == 0:
			how = "held-out images"
		case rep.Folds == rep.Trained:
			how = "leave-one-out"
		}
		fmt.Printf(", thresholds image %.4g pixel %.4g from %d images' out-of-sample scores (%s); %s", cal.Image, cal.Pixel, cal.Images, how, falseAlarms(cal))
	} else {
		fmt.Printf(", no thresholds (give score --threshold)")
	}
	fmt.Println()
}

// trainInputs lists the training images of --data or --manifest, each file
// once (with a note for each left out).
func trainInputs(c *cli.Context) (*job.TrainSet, error) {
	var set *job.TrainSet
	var err error
	switch {
	case c.IsSet("manifest") && c.IsSet("data"):
		return nil, usageError("give --data or --manifest, not both")
	case c.IsSet("manifest"):
		set, err = job.TrainManifest(c.String("manifest"))
	case c.IsSet("data"):
		set, err = job.TrainFolder(c.String("data"))
	default:
		return nil, usageError("--data is required (or --manifest) (see padim train --help)")
	}
	if err != nil {
		return nil, err
	}
	for _, n := range set.Notes {
		notef(c, "note: %s", n)
	}
	return set, nil
}
