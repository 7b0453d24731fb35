package job

import (
	"fmt"

	"github.com/padim/padim/data/dataset"
	"github.com/padim/padim/shard"
)

// TrainSet is a training run's images, each file once, with their split keys.
type TrainSet struct {
	Files   []string
	Keys    []string
	Skipped []dataset.FileError // folders that could not be read
	Notes   []string            // inputs left out as the same file as another
}

// TrainManifest reads the training images from an input list.
func TrainManifest(path string) (*TrainSet, error) {
	es, err := shard.ReadManifest(path)
	if err != nil {
		return nil, err
	}
	s := &TrainSet{Files: make([]string, len(es)), Keys: make([]string, len(es))}
	for i, e := range es {
		s.Files[i], s.Keys[i] = e.Path, e.Key
	}
	return s.unique()
}

// TrainFolder lists the training images of a folder or an MVTec category
// (train/good), keys relative to it.
func TrainFolder(dir string) (*TrainSet, error) {
	l, err := dataset.TrainListing(dir)
	if err != nil {
		return nil, err
	}
	s := &TrainSet{Files: l.Files, Keys: make([]string, len(l.Files)), Skipped: l.Skipped}
	for _, d := range l.Duplicates {
		s.Notes = append(s.Notes, fmt.Sprintf("%s is the same file as %s: trained on once", d.Path, d.Same))
	}
	for i, f := range l.Files {
		s.Keys[i] = shard.Key(dir, f)
	}
	return s.unique()
}

// unique keeps each file once (the same file under two names, by a link or
// twice in a list, is used once, with a note); none readable is an error.
func (s *TrainSet) unique() (*TrainSet, error) {
	keep := FirstOfEachFile(s.Files, func(path, same string) {
		s.Notes = append(s.Notes, fmt.Sprintf("%s is the same file as %s: trained on once", path, same))
	})
	if len(keep) < len(s.Files) {
		var f2, k2 []string
		for _, i := range keep {
			f2, k2 = append(f2, s.Files[i]), append(k2, s.Keys[i])
		}
		s.Files, s.Keys = f2, k2
	}
	if len(s.Files) == 0 && len(s.Skipped) > 0 {
		return nil, fmt.Errorf("no readable training image: %v", s.Skipped[0])
	}
	return s, nil
}

// Select keeps the shard's part of the set.
func (s *TrainSet) Select(sh shard.Spec) []string {
	var mine []string
	for _, i := range sh.Select(s.Keys) {
		mine = append(mine, s.Files[i])
	}
	return mine
}
