package shard

// Histogram is the score histogram of a summary.
type Histogram struct {
	Lo     float32 `json:"lo"`
	Hi     float32 `json:"hi"`
	Counts []int   `json:"counts"` // equal-width bins over [lo, hi]
}

// HistogramBins is the number of bins of a summary's histogram.
const HistogramBins = 20

// ScoreHistogram bins scores into HistogramBins equal-width bins over their
// range; nil without scores.
func ScoreHistogram(scores []float32) *Histogram {
	if len(scores) == 0 {
		return nil
	}
	h := &Histogram{Lo: scores[0], Hi: scores[0], Counts: make([]int, HistogramBins)}
	for _, s := range scores {
		h.Lo, h.Hi = min(h.Lo, s), max(h.Hi, s)
	}
	w := float64(h.Hi-h.Lo) / HistogramBins
	for _, s := range scores {
		b := 0
		if w > 0 {
			b = min(int(float64(s-h.Lo)/w), HistogramBins-1)
		}
		h.Counts[b]++
	}
	return h
}

// DefectEntry is one image found defective, in a summary.
type DefectEntry struct {
	Path  string  `json:"path"`
	Key   string  `json:"key"`
	Score float32 `json:"score"`
	Boxes int     `json:"boxes"`
}

// UnreadableEntry is one input that could not be scored, in a summary.
type UnreadableEntry struct {
	Path  string `json:"path"`
	Error string `json:"error"`
}

// Summary is a collected run's counts, defects and score histogram
// (DIR/summary.json).
type Summary struct {
	Command     string             `json:"command"`
	Shards      int                `json:"shards"`
	ModelSHA256 string             `json:"model_sha256"`
	Images      int                `json:"n_images"`
	Scored      int                `json:"n_scored"`
	Defect      int                `json:"n_defect"`
	Good        int                `json:"n_good"`
	NoVerdict   int                `json:"n_no_verdict"` // scored without thresholds
	Unreadable  int                `json:"n_unreadable"`
	Threshold   *float32           `json:"threshold,omitempty"`
	Histogram   *Histogram         `json:"score_histogram,omitempty"`
	Defects     []DefectEntry      `json:"defects"`
	Unreadables []UnreadableEntry  `json:"unreadable,omitempty"`
	Metrics     map[string]float64 `json:"metrics,omitempty"` // eval: the headline numbers (eval.json has all)

	scores []float32
}

// Tally counts one record into the summary.
func (s *Summary) Tally(path, key string, score *float32, defect *bool, th *float32, boxes int, errText string) {
	switch {
	case errText != "":
		s.Unreadable++
		s.Unreadables = append(s.Unreadables, UnreadableEntry{path, errText})
		return
	case score == nil:
		return
	}
	s.Scored++
	s.scores = append(s.scores, *score)
	switch {
	case defect == nil:
		s.NoVerdict++
	case *defect:
		s.Defect++
		s.Defects = append(s.Defects, DefectEntry{path, key, *score, boxes})
	default:
		s.Good++
	}
	if th != nil && s.Threshold == nil {
		t := *th
		s.Threshold = &t
	}
}
