package main

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/padim/padim/data/dataset"
	"github.com/padim/padim/detector"
	"github.com/padim/padim/detector/anomalymap"
	"github.com/padim/padim/detector/backbone"
	"github.com/padim/padim/detector/baseline"
	"github.com/padim/padim/detector/gauss"
	"github.com/padim/padim/detector/imageio"
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

func trainAction(c *cli.Context) error {
	calib, holdout := c.String("calibrate"), c.Float64("holdout")
	if c.IsSet("holdout") {
		if !(holdout >= 0 && holdout < 1) {
			return usageError("--holdout %v: want a fraction in [0,1)", holdout)
		}
		if c.IsSet("calibrate") && calib != detector.CalibrateHoldout {
			return usageError("--holdout goes with --calibrate holdout, not %s", calib)
		}
		calib = detector.CalibrateHoldout
		if holdout == 0 {
			calib = detector.CalibrateNone
		}
	}
	sh, err := shardSpec(c)
	if err != nil {
		return err
	}
	if sh != nil {
		switch {
		case c.String("stats-out") == "":
			return usageError("--shard needs --stats-out: a shard's statistics, to merge with the others (padim merge)")
		case c.IsSet("holdout") || c.IsSet("target-fpr") || c.IsSet("calibrate") && calib != detector.CalibrateNone:
			return usageError("a shard sets no thresholds: they come from every shard's images together (padim calibrate after padim merge; see padim calibrate --help)")
		}
		calib = detector.CalibrateNone
	} else if !c.IsSet("out") {
		return usageError("--out is required (see padim train --help)")
	}
	rule, err := thresholdRule(c, calib)
	if err != nil {
		return err
	}
	files, keys, skippedDirs, err := trainInputs(c)
	if err != nil {
		return err
	}
	if err := checkOutputs(append([]string{c.String("backbone"), c.String("channels"), c.String("manifest")}, files...), []string{c.String("out"), c.String("stats-out")}, c.String("data")); err != nil {
		return err
	}
	// one run per output: a second training into the same --out refuses
	// now, instead of both fitting and both saying "wrote"
	unlock, err := lockOutputs(c, c.String("out"), c.String("stats-out"))
	if err != nil {
		return err
	}
	defer unlock()
	if sh != nil {
		all := len(files)
		var mine []string
		for _, i := range sh.Select(keys) {
			mine = append(mine, files[i])
		}
		files = mine
		if len(files) == 0 {
			notef(c, "shard %s holds none of the %d images: nothing to fit, no statistics written", sh, all)
			return nil
		}
		notef(c, "shard %s: %d of the %d images", sh, len(files), all)
	}
	if layers := splitList(c.String("layers")); len(slices.Compact(slices.Sorted(slices.Values(layers)))) != len(layers) {
		return usageError("--layers %q names a layer twice", c.String("layers"))
	}
	budget, err := memoryBudget(c)
	if err != nil {
		return err
	}
	bbName := c.String("backbone")
	var bbData []byte
	if bbName == "" {
		if err := mobilenetv2.Verify(); err != nil {
			return err
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
		return err
	}
	defer ext.Close()
	pp, err := preprocessFor(c, ext)
	if err != nil {
		return err
	}
	var channels []int
	if f := c.String("channels"); f != "" {
		if channels, err = readChannels(f); err != nil {
			return err
		}
		slices.Sort(channels)
		if len(slices.Compact(slices.Clone(channels))) != len(channels) {
			return fmt.Errorf("%s: repeated channel index", f)
		}
	}
	be, err := gaussBackend(c)
	if err != nil {
		return err
	}
	defer be.Close()
	form := c.String("gaussian")
	if _, lowRank := be.(gauss.LowRankBackend); sh != nil && lowRank && !c.IsSet("gaussian") && detector.ShardKeepsSamples(ext.Taps(), channels, c.Int("dim"), c.Uint64("seed"), len(files), c.Float64("eps"), budget) {
		// a shard no larger than its statistics keeps its samples: the
		// calibration pass then computes exact (float64) statistics from them
		form = detector.FormLowRank
	}
	prog := newProgress(c)
	notef(c, "training on %d images from %s (backbone %s on %s)", len(files), c.String("data"), bbName, ext.Provider)
	start := time.Now()
	m, rep, err := detector.Train(c.Context, ext, files, detector.TrainConfig{
		Preprocess: pp, Pipeline: pipelineOptions(c), Dim: c.Int("dim"), Seed: c.Uint64("seed"), Channels: channels, Eps: c.Float64("eps"),
		Gaussian: form, Calibration: calib, Folds: c.Int("folds"), Holdout: holdout, Rule: &rule,
		Method: c.String("method"), K: c.Int("k"), Coreset: c.Float64("coreset"),
		Sigma: c.Float64("sigma"), Backend: be,
		BackboneName: bbName, BackboneONNX: ext.Data, SkipBadFiles: !c.Bool("strict"),
		Progress: prog.update, KeepStats: c.String("stats-out") != "", MaxMemory: budget,
	})
	prog.done()
	if err != nil {
		return err
	}
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
	if c.String("out") == "" { // a shard's statistics only
		testWait(c.Context, "saved", 0)
		printTimings(c, "train", time.Since(start), rep.Timings)
		for _, s := range skippedDirs {
			fmt.Fprintf(os.Stderr, "skipped %s: %v\n", s.Path, s.Err)
		}
		for _, s := range rep.Skipped {
			fmt.Fprintf(os.Stderr, "skipped %s: %v\n", s.Path, s.Err)
		}
		fmt.Printf("wrote %s: shard %s, %d samples (padim merge combines the shards)\n", c.String("stats-out"), sh, m.NTrain)
		if len(rep.Skipped) > 0 {
			// a shard that wrote its statistics has done its part: exit 0, so
			// that a batch system does not retry it over a bad file
			notef(c, "note: %d unreadable image(s) skipped (listed above); the shard's statistics hold the rest", len(rep.Skipped))
		}
		return nil
	}
	t := time.Now()
	if err := m.Save(c.String("out")); err != nil {
		return err
	}
	testWait(c.Context, "saved", 0)
	rep.Timings.Since("save", t, 1)
	printTimings(c, "train", time.Since(start), rep.Timings)
	for _, s := range skippedDirs {
		fmt.Fprintf(os.Stderr, "skipped %s: %v\n", s.Path, s.Err)
	}
	for _, s := range rep.Skipped {
		fmt.Fprintf(os.Stderr, "skipped %s: %v\n", s.Path, s.Err)
	}
	for _, n := range rep.Notes {
		notef(c, "note: %s", n)
	}
	P, D := m.Gaussian.Shape()
	fmt.Printf("wrote %s: %d samples, %d patches × %d channels, %s form (%s)", c.String("out"), m.NTrain, P, D, rep.Form, rep.FormReason)
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
	if n := len(rep.Skipped) + len(skippedDirs); n > 0 {
		return cli.Exit(fmt.Sprintf("%d unreadable image(s) or folder(s) skipped", n), exitSkipped)
	}
	return nil
}

// trainFiles lists the training images and their split keys: --data's
// (relative to --data), or --manifest's. Folders that could not be read
// are skipped with a note (trainInputs returns them).
func trainFiles(c *cli.Context) ([]string, []string, error) {
	files, keys, skipped, err := trainInputs(c)
	for _, s := range skipped {
		notef(c, "skipped %s: %v", s.Path, s.Err)
	}
	return files, keys, err
}

// trainInputs lists the training images and their split keys, each file
// once (the same file under two names, by a link or twice in a list, is
// used once, with a note), and the folders that could not be read.
func trainInputs(c *cli.Context) ([]string, []string, []dataset.FileError, error) {
	var files, keys []string
	var skipped []dataset.FileError
	switch {
	case c.IsSet("manifest") && c.IsSet("data"):
		return nil, nil, nil, usageError("give --data or --manifest, not both")
	case c.IsSet("manifest"):
		es, err := shard.ReadManifest(c.String("manifest"))
		if err != nil {
			return nil, nil, nil, err
		}
		files, keys = make([]string, len(es)), make([]string, len(es))
		for i, e := range es {
			files[i], keys[i] = e.Path, e.Key
		}
	case c.IsSet("data"):
		l, err := dataset.TrainListing(c.String("data"))
		if err != nil {
			return nil, nil, nil, err
		}
		for _, d := range l.Duplicates {
			notef(c, "note: %s is the same file as %s: trained on once", d.Path, d.Same)
		}
		files, skipped = l.Files, l.Skipped
		keys = make([]string, len(files))
		for i, f := range files {
			keys[i] = shard.Key(c.String("data"), f)
		}
	default:
		return nil, nil, nil, usageError("--data is required (or --manifest) (see padim train --help)")
	}
	keep := firstOfEachFile(files, func(path, same string) {
		notef(c, "note: %s is the same file as %s: trained on once", path, same)
	})
	if len(keep) < len(files) {
		var f2, k2 []string
		for _, i := range keep {
			f2, k2 = append(f2, files[i]), append(k2, keys[i])
		}
		files, keys = f2, k2
	}
	if len(files) == 0 && len(skipped) > 0 {
		return nil, nil, nil, fmt.Errorf("no readable training image: %v", skipped[0])
	}
	return files, keys, skipped, nil
}
