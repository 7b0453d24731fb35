package shard

import (
	"github.com/padim/padim/detector/imageio"
	"github.com/padim/padim/detector/postproc"
)

// The record schemas of padim's results, one per line or image.

// ScoredImage is one scored image as padim writes it: an image of score
// --json, a line of score --stdin-jsonl (beside its line number) and a score
// shard's record (beside its Common) share this form.
type ScoredImage struct {
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

// ScoreRecord is one line of a score shard's results.
type ScoreRecord struct {
	Common
	ScoredImage
}

// EvalRecord is one line of an eval shard's results: what evaluate.Run
// keeps of an image, and where its exact map and mask are (Common.Pixels).
type EvalRecord struct {
	Common
	Path      string         `json:"path"`
	Name      string         `json:"name"`
	Type      string         `json:"type"`
	Label     int            `json:"label"`
	Score     *float32       `json:"score,omitempty"`
	Defect    *bool          `json:"defect,omitempty"`
	Boxes     []postproc.Box `json:"boxes,omitempty"` // in map pixels, as evaluate.Image
	W         int            `json:"w,omitempty"`     // map size
	H         int            `json:"h,omitempty"`
	MaskPath  string         `json:"mask,omitempty"`
	Error     string         `json:"error,omitempty"`
	Threshold *float32       `json:"threshold,omitempty"`
}
