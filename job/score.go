package job

import (
	"context"

	"github.com/padim/padim/data/dataset"
	"github.com/padim/padim/detector"
	"github.com/padim/padim/shard"
)

// ScoreConfig is a score run over a list of images.
type ScoreConfig struct {
	Scorer  *detector.Scorer
	Targets []Target
	Skipped []dataset.FileError // folders that could not be read: reported first, as unreadable inputs
	Maps    Maps
	// OnImage receives each image's record as it is scored, in order (the
	// skipped folders first); name is the input's name as given.
	OnImage func(name string, s shard.ScoredImage)
	// Progress, when set, is told of each image done.
	Progress func(stage string, done, total int)
}

// ScoreCounts counts a score run's outcomes.
type ScoreCounts struct {
	Images, Defects, Unreadable int
}

// Score scores the targets, writing their maps, and counts the outcomes.
func Score(ctx context.Context, cfg ScoreConfig) (ScoreCounts, error) {
	n := ScoreCounts{Images: len(cfg.Targets)}
	for _, s := range cfg.Skipped { // unreadable folders are reported with the unreadable images
		n.Unreadable++
		si := shard.ScoredImage{Error: s.Error()}
		si.Path, si.PathBase64 = JSONPath(s.Path)
		cfg.OnImage(s.Path, si)
	}
	err := cfg.Scorer.Score(ctx, detector.FileInputs(Paths(cfg.Targets)), func(r *detector.Result) error {
		s, err := cfg.Maps.Scored(cfg.Scorer, cfg.Targets[r.Index], r)
		if err != nil {
			return err
		}
		if s.Error != "" {
			n.Unreadable++
		} else if s.Defect != nil && *s.Defect {
			n.Defects++
		}
		if cfg.Progress != nil {
			cfg.Progress("score", r.Index+1, len(cfg.Targets))
		}
		cfg.OnImage(r.Name, s)
		return nil
	})
	return n, err
}
