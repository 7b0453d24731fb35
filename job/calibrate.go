package job

import (
	"context"
	"fmt"
	"math"

	"github.com/padim/padim/detector"
	"github.com/padim/padim/shard"
)

// NotFittedError is an image the statistics were not fitted on: removing it
// leaves no leave-one-out score.
type NotFittedError struct{ Name string }

func (e *NotFittedError) Error() string {
	return fmt.Sprintf("%s has no leave-one-out score: it is not one of the images those statistics were fitted on", e.Name)
}

// CalibrateConfig is one shard of a sharded fit's calibration pass.
type CalibrateConfig struct {
	Pipeline *detector.Pipeline // the statistics' model's pipeline
	Total    *detector.Total    // the merged statistics (detector.LoadTotal)
	Set      *TrainSet          // the fit's training images, as train --shard was given them
	Spec     shard.Spec
	Settings detector.ScoreSettings
	Progress func(stage string, done, total int)
}

// Calibrate scores the shard's training images leave-one-out under the
// merged statistics (detector.CalibrateShard) into a calibration file's
// header and records, one per image (an unreadable one records its error).
func Calibrate(ctx context.Context, cfg CalibrateConfig) (shard.CalibHeader, []shard.CalibRecord, error) {
	sel := cfg.Spec.Select(cfg.Set.Keys)
	inputs := make([]detector.Input, len(sel))
	for k, i := range sel {
		inputs[k] = detector.Input{Name: cfg.Set.Files[i]}
	}
	recs := make([]shard.CalibRecord, len(sel))
	done := 0
	stride, err := detector.CalibrateShard(ctx, cfg.Pipeline, cfg.Total, inputs, cfg.Settings, func(im detector.ShardImage) error {
		r := shard.CalibRecord{Index: sel[im.Index], Key: cfg.Set.Keys[sel[im.Index]]}
		if im.Err != nil {
			r.Error = im.Err.Error()
		} else if math.IsNaN(float64(im.Score)) || math.IsInf(float64(im.Score), 0) { // removing an image the statistics never held
			return &NotFittedError{im.Name}
		} else {
			r.Score, r.Pixels = im.Score, shard.EncodeFloats(im.Pixels)
		}
		recs[im.Index] = r
		done++
		if cfg.Progress != nil {
			cfg.Progress("calibrate", done, len(inputs))
		}
		return nil
	})
	S := cfg.Total.Model.Preprocess.InputSize()
	h := shard.CalibHeader{Shard: cfg.Spec.String(), TotalID: cfg.Total.ID, N: cfg.Total.N, Stride: stride, MapW: S, MapH: S, Inputs: len(sel)}
	return h, recs, err
}
