package main

import (
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/padim/padim/detector"
	"github.com/padim/padim/detector/anomalymap"
	"github.com/padim/padim/shard"
)

func calibrateCommand() *cli.Command {
	return &cli.Command{
		Name:  "calibrate",
		Usage: "second pass of a sharded fit: score a shard's training images leave-one-out under the merged statistics, for the thresholds",
		UsageText: "padim calibrate --data DIR|--manifest LIST [--shard I/N|auto/N] --out C-I.calib STATS...\n\n" +
			"STATS are the train shards' statistics (train --shard --stats-out), or their merge (merge --stats-out).\n" +
			"Then: padim merge --out M.padim STATS... C-*.calib sets the thresholds a single fit on every image would.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "data", Usage: "the training images, as given to train --shard (required unless --manifest)"},
			manifestFlag("--data"), shardFlag(),
			&cli.StringFlag{Name: "out", Required: true, Usage: "calibration file to write (one per shard)"},
			batchFlag, deviceFlag, threadsFlag,
		},
		Action: calibrateAction,
	}
}

func calibrateAction(c *cli.Context) error {
	if c.NArg() == 0 {
		return usageError("calibrate needs the statistics files of the fit (train --shard --stats-out, or merge --stats-out)")
	}
	sh, err := shardSpec(c)
	if err != nil {
		return err
	}
	if sh == nil {
		sh = &shard.Spec{Index: 0, Count: 1}
	}
	files, keys, err := trainFiles(c)
	if err != nil {
		return err
	}
	if err := checkOutputs(append(append([]string{c.String("manifest")}, c.Args().Slice()...), files...), []string{c.String("out")}, c.String("data")); err != nil {
		return err
	}
	start := time.Now()
	t, err := shard.LoadTotal(c.Args().Slice(), false)
	if err != nil {
		return err
	}
	m := t.Model
	if m.Preprocess.Tile > 0 {
		return usageError("thresholds of a sharded fit are set from leave-one-out scores of whole images; a tiled fit cross-fits folds of tiles, which shards cannot reproduce: merge without thresholds and give score --threshold, or fit on one machine")
	}
	loo, err := shard.NewLeaveOneOut(t.Stats, m.Eps)
	if err != nil {
		return err
	}
	t.Stats = nil
	taps := make([]string, len(m.Taps))
	for i, tp := range m.Taps {
		taps[i] = tp.Name
	}
	ext, err := openBackbone(c, m.BackboneName+" (from the statistics)", m.BackboneONNX, taps)
	if err != nil {
		return err
	}
	defer ext.Close()
	p, err := m.NewPipeline(ext, pipelineOptions(c))
	if err != nil {
		return err
	}
	S := m.Preprocess.InputSize()
	maker, err := anomalymap.NewMaker(m.GridH, m.GridW, S, m.Sigma)
	if err != nil {
		return err
	}
	stride := shard.Stride(t.N, S*S)
	sel := sh.Select(keys)
	inputs := make([]detector.Input, len(sel))
	for k, i := range sel {
		inputs[k] = detector.Input{Name: files[i]}
	}
	notef(c, "calibrate shard %s: %d of the %d images, leave-one-out under the statistics of %d", sh, len(sel), len(files), t.N)
	recs := make([]shard.CalibRecord, len(sel))
	P, D := p.Layout().P(), p.Layout().D()
	dist := make([]float32, P)
	prog := newProgress(c)
	done := 0
	err = p.Embeddings(c.Context, inputs, detector.DefaultGroup, func(ch detector.Chunk) error {
		for _, f := range ch.Failed {
			recs[f.Index] = shard.CalibRecord{Index: sel[f.Index], Key: keys[sel[f.Index]], Error: f.Error()}
			done++
		}
		info := map[int]detector.ItemInfo{}
		for _, it := range ch.Items {
			info[it.Index] = it
		}
		for s := 0; s < ch.N; s++ {
			it, ok := info[ch.Source[s]]
			if !ok || len(it.Rects) != 1 {
				return fmt.Errorf("%s: one sample per image expected", inputs[ch.Source[s]].Name)
			}
			if it.W*it.H != S*S {
				return fmt.Errorf("%s: a %dx%d map, want %d²", it.Name, it.W, it.H, S)
			}
			loo.Distances(ch.Emb[s*P*D:(s+1)*P*D], dist)
			px, score, err := maker.Make(dist, []anomalymap.Rect{anomalymap.Rect(it.Rects[0])}, it.W, it.H)
			if err != nil {
				return fmt.Errorf("%s: %w", it.Name, err)
			}
			if math.IsNaN(float64(score)) || math.IsInf(float64(score), 0) { // removing an image the statistics never held
				return fmt.Errorf("%s has no leave-one-out score under %s: it is not one of the images those statistics were fitted on (give calibrate the --data or --manifest that train --shard was given)", it.Name, strings.Join(c.Args().Slice(), ", "))
			}
			recs[it.Index] = shard.CalibRecord{Index: sel[it.Index], Key: keys[sel[it.Index]], Score: score, Pixels: shard.EncodeFloats(shard.Thin(px, stride))}
			done++
			prog.update("calibrate", done, len(inputs))
		}
		return nil
	})
	prog.done()
	if err != nil {
		return err
	}
	h := shard.CalibHeader{Shard: sh.String(), TotalID: t.ID, N: t.N, Stride: stride, MapW: S, MapH: S, Inputs: len(sel)}
	if err := shard.WriteCalib(c.String("out"), h, recs); err != nil {
		return err
	}
	printTimings(c, "calibrate", time.Since(start), p.Timings)
	nBad := 0
	for _, r := range recs {
		if r.Error != "" {
			nBad++
			notef(c, "unreadable: %s", r.Error)
		}
	}
	fmt.Printf("wrote %s: shard %s, %d images scored leave-one-out (padim merge --out M.padim STATS... C-*.calib sets the thresholds)\n", c.String("out"), sh, len(sel)-nBad)
	if nBad > 0 && !c.IsSet("shard") {
		return cli.Exit(fmt.Sprintf("%d unreadable image(s) skipped (the merge checks that the calibration covers every image of the fit)", nBad), exitSkipped)
	} else if nBad > 0 {
		// a shard that wrote its file has done its part: the merge checks
		// that the calibration covers every image the fit used
		notef(c, "note: %d unreadable image(s) recorded; the merge checks that the calibration covers every image of the fit", nBad)
	}
	return nil
}
