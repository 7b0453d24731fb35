package shard

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"sort"

	"github.com/padim/padim/detector"
	"github.com/padim/padim/detector/fileio/atomicfile"
	"github.com/padim/padim/detector/fileio/readfile"
)

// Thresholds of a sharded fit.
//
// A single fit on untiled images derives its thresholds from every image's
// leave-one-out score: the image scored by the Gaussian fitted on all the
// others. Shards cannot do that alone: each image's out-of-sample model
// depends on every other shard. The second pass (padim calibrate) does it
// exactly from the merged statistics (detector.CalibrateShard: each shard
// embeds its images again, scores them so, makes their maps like the fit
// does, and keeps their image scores and the map pixels the fit's thinning
// would keep); a calibration file holds that material, and merge applies the
// fit's rule to all of it, in the fit's order (CombineCalib).

// CalibHeader is the first line of a calibration shard file.
type CalibHeader struct {
	Format  string `json:"format"` // "padim-calibration"
	Version int    `json:"version"`
	Shard   string `json:"shard"`
	TotalID string `json:"total_id"` // the statistics it was computed against
	N       int    `json:"n_total"`  // images in those statistics
	Stride  int    `json:"pixel_stride"`
	MapW    int    `json:"map_w"`
	MapH    int    `json:"map_h"`
	Inputs  int    `json:"n_shard"` // the shard's inputs
}

// CalibRecord is one image's out-of-sample material.
type CalibRecord struct {
	Index  int     `json:"index"` // position in the whole training list
	Key    string  `json:"key"`
	Score  float32 `json:"score,omitempty"`
	Pixels string  `json:"pixels,omitempty"` // base64 float32 little-endian: the thinned map pixels
	Error  string  `json:"error,omitempty"`
}

// EncodeFloats packs float32s as base64 of their little-endian bytes.
func EncodeFloats(v []float32) string {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	return base64.StdEncoding.EncodeToString(b)
}

// DecodeFloats unpacks EncodeFloats.
func DecodeFloats(s string) ([]float32, error) {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil || len(b)%4 != 0 {
		return nil, fmt.Errorf("bad float data")
	}
	v := make([]float32, len(b)/4)
	for i := range v {
		v[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return v, nil
}

// WriteCalib writes a calibration shard file atomically.
func WriteCalib(path string, h CalibHeader, recs []CalibRecord) error {
	h.Format, h.Version = "padim-calibration", 1
	return atomicfile.Write(path, func(w io.Writer) error {
		enc := json.NewEncoder(w)
		if err := enc.Encode(h); err != nil {
			return err
		}
		for _, r := range recs {
			if err := enc.Encode(r); err != nil {
				return err
			}
		}
		return nil
	})
}

// IsCalib reports whether a file is a calibration shard file.
func IsCalib(path string) bool {
	f, err := readfile.Open(path) // a FIFO is refused, not waited on
	if err != nil {
		return false
	}
	defer f.Close()
	b := make([]byte, 64)
	n, _ := io.ReadFull(f, b)
	return bytes.HasPrefix(b[:n], []byte(`{"format":"padim-calibration"`))
}

// ReadCalib reads a calibration shard file.
func ReadCalib(path string) (*CalibHeader, []CalibRecord, error) {
	f, err := readfile.Open(path) // a FIFO is refused, not waited on
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	dec := json.NewDecoder(bufio.NewReaderSize(f, 1<<20))
	var h CalibHeader
	if err := dec.Decode(&h); err != nil || h.Format != "padim-calibration" {
		return nil, nil, fmt.Errorf("%s is not a calibration file from padim calibrate", path)
	}
	if h.Version != 1 {
		return nil, nil, fmt.Errorf("%s: calibration format version %d, this padim reads 1", path, h.Version)
	}
	var recs []CalibRecord
	for {
		var r CalibRecord
		if err := dec.Decode(&r); err == io.EOF {
			break
		} else if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", path, err)
		}
		recs = append(recs, r)
	}
	if len(recs) != h.Inputs {
		return nil, nil, fmt.Errorf("%s holds %d records for the shard's %d inputs (cut short?)", path, len(recs), h.Inputs)
	}
	return &h, recs, nil
}

// CombineCalib derives the thresholds of a sharded fit from its calibration
// shards: every image of the statistics t exactly once, in the order of the
// training list, under the fit's rule.
func CombineCalib(t *detector.ShardSet, paths []string, rule detector.Rule) (*detector.Calibration, error) {
	type scored struct {
		index  int
		key    string
		score  float32
		pixels []float32
	}
	var all []scored
	byKey := map[string]string{}
	byShard := map[string]string{}
	var first *CalibHeader
	var failed []string
	for _, p := range paths {
		h, recs, err := ReadCalib(p)
		if err != nil {
			return nil, err
		}
		if h.TotalID != t.ID || h.N != t.N {
			return nil, fmt.Errorf("%s was computed against other statistics (%.12s…, %d images) than the ones given here (%.12s…, %d images): give merge the statistics files that calibrate was given", p, h.TotalID, h.N, t.ID, t.N)
		}
		if first == nil {
			first = h
		} else if h.Stride != first.Stride || h.MapW != first.MapW || h.MapH != first.MapH {
			return nil, fmt.Errorf("%s and %s disagree on the maps (%dx%d, stride %d vs %dx%d, stride %d)", paths[0], p, h.MapW, h.MapH, h.Stride, first.MapW, first.MapH, first.Stride)
		}
		if prev, ok := byShard[h.Shard]; ok {
			return nil, fmt.Errorf("%s and %s are both calibration shard %s", prev, p, h.Shard)
		}
		byShard[h.Shard] = p
		for _, r := range recs {
			if prev, ok := byKey[r.Key]; ok {
				return nil, fmt.Errorf("%s is in both %s and %s: the calibration shards overlap (different shard counts?)", r.Key, prev, p)
			}
			byKey[r.Key] = p
			if r.Error != "" {
				failed = append(failed, r.Key+": "+r.Error)
				continue
			}
			px, err := DecodeFloats(r.Pixels)
			if err != nil {
				return nil, fmt.Errorf("%s: %s: %w", p, r.Key, err)
			}
			all = append(all, scored{r.Index, r.Key, r.Score, px})
		}
	}
	if len(all) != t.N {
		msg := fmt.Sprintf("the statistics hold %d images but the calibration shards scored %d", t.N, len(all))
		if len(failed) > 0 {
			msg += fmt.Sprintf(" (%d unreadable now, first %s)", len(failed), failed[0])
		}
		return nil, errors.New(msg + ": a calibration shard or a statistics shard is missing, or the data changed between the passes")
	}
	sort.Slice(all, func(i, j int) bool { return all[i].index < all[j].index })
	scores := make([]float32, len(all))
	var pixels []float32
	for i, s := range all {
		if i > 0 && s.index == all[i-1].index {
			return nil, fmt.Errorf("%s and %s have the same position %d in the training list", s.key, all[i-1].key, s.index)
		}
		scores[i] = s.score
		pixels = append(pixels, s.pixels...)
	}
	c, err := detector.CalibrateScores(scores, pixels, rule)
	if err != nil {
		return nil, err
	}
	c.Rule = detector.LeaveOneOutHow + ": " + c.Rule
	return c, nil
}
