package gauss

import (
	"errors"
	"fmt"
	"github.com/padim/padim/detector/internal/kernels"
	"math"
)

// LeaveOneOuter scores every training sample out of sample in closed form.
type LeaveOneOuter interface {
	LeaveOneOut(x []float32, samples []int, p, d int, eps float64, dist []float32) error
}

// LeaveOneOut writes into dist ([len(samples)][P]) the distance of each listed
// sample to the Gaussian fitted on the other listed samples (same ε): every
// training image scored out of sample, exactly, at about the cost of one
// low-rank fit. With n samples, centred u_i and B = UᵀU/(n−2) + εI, removing
// sample i is a rank-one downdate of B (Sherman–Morrison), and in the n−1
// dimensions orthogonal to the all-ones vector (Helmert basis Q, with
// H = QᵀUUᵀQ/(n−2) + εI = LLᵀ and s_i = ‖L⁻¹Qᵀe_i‖²):
//
//	d_i² = n(n−2)·h_i / ((n−1)·ε·s_i),  h_i = (n−1)/n − ε·s_i,
//
// where s_i, a sum of positive terms, carries the ε-sized out-of-span part
// without cancellation. Two samples: d² = ‖x₁−x₂‖²/ε (one left has no spread).
// The cost per patch is n²D/2 + 4n³/3 in float64.
func (CPU) LeaveOneOut(x []float32, samples []int, p, d int, eps float64, dist []float32) error {
	n := len(samples)
	if n < 2 {
		return errors.New("gauss: leaving one out needs at least 2 samples")
	}
	if p <= 0 || d <= 0 || len(x)%(p*d) != 0 {
		return fmt.Errorf("gauss: %d values are not whole embeddings of P=%d D=%d", len(x), p, d)
	}
	if !(eps > 0) || math.IsInf(eps, 0) {
		return fmt.Errorf("gauss: leaving one out needs a regularisation eps > 0, got %v", eps)
	}
	if len(dist) < n*p {
		return fmt.Errorf("gauss: distance buffer holds %d values, need %d", len(dist), n*p)
	}
	for _, b := range samples {
		if b < 0 || b >= len(x)/(p*d) {
			return fmt.Errorf("gauss: sample %d of %d", b, len(x)/(p*d))
		}
		if err := CheckFinite(x[b*p*d:(b+1)*p*d], p, d); err != nil {
			return err
		}
	}
	m := n - 1 // dimensions orthogonal to the all-ones vector
	// Qᵀ (m×n), Helmert: row k−1 is (1,…,1, −k, 0,…)/√(k(k+1)) with k ones.
	qt := make([]float64, m*n)
	for k := 1; k <= m; k++ {
		c := 1 / math.Sqrt(float64(k*(k+1)))
		for j := 0; j < k; j++ {
			qt[(k-1)*n+j] = c
		}
		qt[(k-1)*n+k] = -float64(k) * c
	}
	nf := float64(n)
	ParallelFor(p, func(lo, hi int) {
		u := make([]float64, n*d)
		ut := make([]float64, m*d)
		h := make([]float64, m*m)
		w := make([]float64, m*n)
		mean := make([]float64, d)
		for q := lo; q < hi; q++ {
			clear(mean)
			for r, b := range samples {
				row := u[r*d : (r+1)*d]
				for i, v := range x[(b*p+q)*d : (b*p+q+1)*d] {
					row[i] = float64(v)
					mean[i] += float64(v)
				}
			}
			for i := range mean {
				mean[i] /= nf
			}
			for r := 0; r < n; r++ {
				row := u[r*d : (r+1)*d]
				for i := range row {
					row[i] -= mean[i]
				}
			}
			if n == 2 {
				var s float64
				for i := 0; i < d; i++ {
					v := u[i] - u[d+i]
					s += v * v
				}
				v := float32(math.Sqrt(s / eps))
				dist[q], dist[p+q] = v, v
				continue
			}
			// Ũ = QᵀU/√(n−2): Helmert rows through a running sum.
			sc := 1 / math.Sqrt(nf-2)
			run := mean // reuse as the running sum of rows
			clear(run)
			for k := 1; k <= m; k++ {
				prev := u[(k-1)*d : k*d]
				cur := u[k*d : (k+1)*d]
				c := sc / math.Sqrt(float64(k*(k+1)))
				out := ut[(k-1)*d : k*d]
				for i := range out {
					run[i] += prev[i]
					out[i] = (run[i] - float64(k)*cur[i]) * c
				}
			}
			kernels.DsyrkLower(m, d, ut, h)
			for i := 0; i < m; i++ {
				h[i*m+i] += eps
			}
			if !kernels.CholLower(h, m) {
				for r := range samples {
					dist[r*p+q] = float32(math.Inf(1))
				}
				continue
			}
			copy(w, qt)
			kernels.DtrsmLower(m, n, h, w)
			for r := 0; r < n; r++ {
				var s float64
				for k := 0; k < m; k++ {
					v := w[k*n+r]
					s += v * v
				}
				hi := (nf-1)/nf - eps*s
				d2 := nf * (nf - 2) * max(hi, 0) / ((nf - 1) * eps * s)
				dist[r*p+q] = float32(math.Sqrt(d2))
			}
		}
	})
	return nil
}

// LeaveOneOutCost is the float64 work of LeaveOneOut on n samples.
func LeaveOneOutCost(n, p, d int) float64 {
	fn := float64(n)
	return float64(p) * (fn*fn*float64(d) + 4*fn*fn*fn/3)
}
