package evaluate

import (
	"fmt"
	"io"
	"math"
)

// Format prints a metric with four decimals, "n/a" when undefined.
func (m Metric) Format() string {
	if math.IsNaN(float64(m)) {
		return "n/a"
	}
	return fmt.Sprintf("%.4f", float64(m))
}

// WriteTable writes the headline metrics as a two-column text table.
func (ev *Evaluation) WriteTable(w io.Writer) {
	rows := [][2]string{
		{"image AUROC", ev.ImageAUROC.Format()},
		{"pixel AUROC", ev.PixelAUROC.Format()},
		{"AUPRO@0.3", ev.AUPRO.Format()},
		{"image F1 (best)", ev.ImageF1.Format()},
		{"pixel F1 (best)", ev.PixelF1.Format()},
		{"image F1 (calibrated)", ev.ImageF1Calibrated.Format()},
		{"pixel F1 (calibrated)", ev.PixelF1Calibrated.Format()},
		{"image TPR (calibrated)", ev.ImageTPR.Format()},
		{"image FPR (calibrated)", ev.ImageFPR.Format()},
		{"images / defective", fmt.Sprintf("%d / %d", ev.NImages, ev.NDefective)},
	}
	fmt.Fprintln(w, "metric                   value")
	fmt.Fprintln(w, "------------------------ --------")
	for _, r := range rows {
		fmt.Fprintf(w, "%-24s %8s\n", r[0], r[1])
	}
}
