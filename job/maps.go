package job

import (
	"encoding/base64"
	"image"
	"os"
	"path/filepath"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/padim/padim/detector"
	"github.com/padim/padim/detector/fileio/npy"
	"github.com/padim/padim/detector/fileio/outputs"
	"github.com/padim/padim/detector/fileio/picture"
	"github.com/padim/padim/detector/imageio"
	"github.com/padim/padim/shard"
)

// Map kinds a score run writes per image.
const (
	MapsNPY  = "npy"  // the float32 blurred map
	MapsPNG  = "png"  // heatmap, overlay, mask and boxes
	MapsNone = "none" // no files
)

// MapSuffixes are the files each map kind writes per image.
var MapSuffixes = map[string][]string{MapsNPY: {".npy"}, MapsPNG: outputs.PictureSuffixes, MapsNone: nil}

// MapOutputs are the files the maps of kind write for targets into out.
func MapOutputs(out, kind string, ts []Target) []string {
	var files []string
	for _, t := range ts {
		for _, suf := range MapSuffixes[kind] {
			files = append(files, filepath.Join(out, t.Rel)+suf)
		}
	}
	return files
}

// JSONPath names a file in JSON: its bytes as text, and as base64 too when
// they are not valid UTF-8 (which JSON would otherwise replace).
func JSONPath(p string) (string, string) {
	if utf8.ValidString(p) {
		return p, ""
	}
	return strings.ToValidUTF8(p, "\uFFFD"), base64.StdEncoding.EncodeToString([]byte(p))
}

// HeatRange is the colour scale of pictures: from the held-out good
// pixels' median to 1.5× the image threshold, or the typical range of the
// map otherwise.
func HeatRange(m *detector.Model) picture.Range {
	if c := m.Calibration; c != nil && len(c.PixelQuantiles) > 0 {
		return picture.Range{Lo: c.PixelQuantiles[0], Hi: 1.5 * c.Image}
	}
	return picture.Range{}
}

// Maps says which maps to write for each result, and where.
type Maps struct {
	Out   string        // the output folder
	Kind  string        // MapsNPY, MapsPNG or MapsNone ("" is none)
	Frame string        // "image" (the input image's size) or "network"
	Range picture.Range // the colour scale of pictures (HeatRange)
}

// Scored turns one result into its record, writing its maps (t names
// them); the time taken counts as the pipeline's write-maps stage.
func (mp Maps) Scored(sc *detector.Scorer, t Target, r *detector.Result) (shard.ScoredImage, error) {
	s := shard.ScoredImage{}
	s.Path, s.PathBase64 = JSONPath(r.Name)
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
	if mp.Kind == "" || mp.Kind == MapsNone {
		return s, nil
	}
	t0 := time.Now()
	files, err := WriteMaps(mp.Out, t.Rel, mp.Kind, mp.Frame == "image", r, mp.Range)
	if err != nil {
		return s, err
	}
	s.MapFrame = mp.Frame
	sc.Pipeline().Timings.Since("write-maps", t0, 1)
	s.Maps = files
	return s, nil
}

// WriteMaps writes the maps of kind for one image and returns their paths:
// in the input image's frame (its size; the photo re-read at full size) or
// the network's.
func WriteMaps(dir, rel, kind string, imageFrame bool, r *detector.Result, rg picture.Range) ([]string, error) {
	if kind == MapsNone {
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
	if kind == MapsNPY {
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
	for _, suffix := range MapSuffixes[MapsPNG] {
		f := base + suffix
		if err := picture.SavePNG(f, pics[suffix]); err != nil {
			return nil, err
		}
		files = append(files, f)
	}
	return files, nil
}
