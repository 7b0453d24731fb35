package serve

import (
	"math"
	"slices"
	"sync"
)

// drift keeps a model's last scores (a ring of DriftWindow) for comparison
// with its calibration scores. It restarts when a new version is loaded: the
// scores of another model are not comparable.
type drift struct {
	mu      sync.Mutex
	ring    []float32
	next    int
	full    bool
	scored  int64  // since the version was loaded
	version string // the version the window holds scores of
}

func newDrift(window int) *drift { return &drift{ring: make([]float32, window)} }

func (d *drift) add(score float32) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.ring[d.next] = score
	d.next++
	if d.next == len(d.ring) {
		d.next, d.full = 0, true
	}
	d.scored++
}

func (d *drift) reset(version string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.next, d.full, d.scored, d.version = 0, false, 0, version
}

// window returns the scores in the window, sorted, and the count since load.
func (d *drift) window() ([]float64, int64, string) {
	d.mu.Lock()
	n := d.next
	if d.full {
		n = len(d.ring)
	}
	out := make([]float64, n)
	for i := range out {
		out[i] = float64(d.ring[i])
	}
	scored, version := d.scored, d.version
	d.mu.Unlock()
	slices.Sort(out)
	return out, scored, version
}

// ksStatistic is the two-sample Kolmogorov–Smirnov statistic of two sorted
// samples: the largest distance between their empirical distribution functions.
func ksStatistic(a, b []float64) float64 {
	if len(a) == 0 || len(b) == 0 {
		return math.NaN()
	}
	var d float64
	i, j := 0, 0
	for i < len(a) && j < len(b) {
		x := min(a[i], b[j])
		for i < len(a) && a[i] <= x {
			i++
		}
		for j < len(b) && b[j] <= x {
			j++
		}
		d = max(d, math.Abs(float64(i)/float64(len(a))-float64(j)/float64(len(b))))
	}
	return d
}

// ksPValue is the asymptotic p-value of a two-sample KS statistic d for
// sample sizes n and m (Kolmogorov's distribution with Stephens' correction):
// the chance of a statistic at least d when both samples come from one
// distribution.
func ksPValue(d float64, n, m int) float64 {
	if n == 0 || m == 0 || math.IsNaN(d) {
		return math.NaN()
	}
	en := math.Sqrt(float64(n) * float64(m) / float64(n+m))
	lambda := (en + 0.12 + 0.11/en) * d
	if lambda < 1e-3 {
		return 1
	}
	var sum, sign float64 = 0, 1
	for k := 1; k <= 100; k++ {
		term := sign * 2 * math.Exp(-2*float64(k*k)*lambda*lambda)
		sum += term
		if math.Abs(term) < 1e-10*math.Abs(sum) || math.Abs(term) < 1e-300 {
			return min(1, max(0, sum))
		}
		sign = -sign
	}
	return 1 // did not converge: λ tiny
}

// driftStats is GET /v2/models/NAME/stats.
type driftStats struct {
	Model       string `json:"model"`
	Version     string `json:"version"`
	Window      int    `json:"window"`       // --drift-window
	Images      int    `json:"images"`       // scores in the window now
	Scored      int64  `json:"scored_total"` // images scored by this version
	Calibration int    `json:"calibration_images"`
	// KS is the two-sample Kolmogorov–Smirnov statistic between the window's
	// scores and the calibration scores (0: alike, 1: disjoint); KSPValue its
	// asymptotic p-value.
	KS       *float64 `json:"score_drift_ks,omitempty"`
	KSPValue *float64 `json:"score_drift_ks_p_value,omitempty"`
	// DefectRate is the window's share above the image threshold in force;
	// ExpectedDefectRate the calibration scores' (what good images give).
	DefectRate         *float64 `json:"defect_rate,omitempty"`
	ExpectedDefectRate *float64 `json:"expected_defect_rate,omitempty"`
	Threshold          *float32 `json:"threshold,omitempty"`
	ThresholdSource    string   `json:"threshold_source,omitempty"`
	WindowMedian       *float64 `json:"window_median_score,omitempty"`
	CalibrationMedian  *float64 `json:"calibration_median_score,omitempty"`
	Notes              []string `json:"notes,omitempty"`
}

func ptr[T any](v T) *T { return &v }

func median(v []float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

// stats compares the model's window with its calibration scores.
func (e *engine) stats() driftStats {
	m := e.m
	win, scored, version := m.drift.window()
	st := driftStats{Model: m.name, Version: e.version, Window: len(m.drift.ring), Images: len(win), Scored: scored, Calibration: len(e.info.calibration)}
	if version != e.version {
		// a reload between the two reads: the window is the new version's
		st.Version = version
	}
	if len(win) > 0 {
		st.WindowMedian = ptr(median(win))
	}
	if cal := e.info.calibration; len(cal) > 0 {
		st.CalibrationMedian = ptr(median(cal))
		if len(win) > 0 {
			d := ksStatistic(win, cal)
			st.KS, st.KSPValue = ptr(d), ptr(ksPValue(d, len(win), len(cal)))
		}
	} else {
		st.Notes = append(st.Notes, "the model has no calibration scores (trained with --calibrate none, or before padim kept them): there is no reference distribution, so no drift statistic; retrain with calibration to monitor drift")
	}
	if th := e.info.thresholds; th != nil {
		st.Threshold, st.ThresholdSource = ptr(th.Image), e.info.source
		if len(win) > 0 {
			i, _ := slices.BinarySearch(win, math.Nextafter(float64(th.Image), math.Inf(1)))
			st.DefectRate = ptr(float64(len(win)-i) / float64(len(win)))
		}
		if len(e.info.calibration) > 0 {
			st.ExpectedDefectRate = ptr(e.info.expected)
		}
	} else {
		st.Notes = append(st.Notes, "the model has no thresholds: no defect rate")
	}
	if len(win) == 0 {
		st.Notes = append(st.Notes, "no image scored by this version yet")
	}
	return st
}
