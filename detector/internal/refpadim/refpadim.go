// Package refpadim is a deliberately plain float64 PaDiM used as the yardstick in
// tests: straightforward loops, explicit inverses, no streaming, no packing.
package refpadim

import (
	"math"

	"gonum.org/v1/gonum/mat"
)

// Fit returns per patch the mean and the inverse of (unbiased covariance + eps·I)
// of embeddings x = [n][P][D]. ok is false when a covariance is singular.
func Fit(x []float32, n, p, d int, eps float64) (mean [][]float64, inv []*mat.Dense, ok bool) {
	mean = make([][]float64, p)
	inv = make([]*mat.Dense, p)
	for q := 0; q < p; q++ {
		m := make([]float64, d)
		for b := 0; b < n; b++ {
			for i := 0; i < d; i++ {
				m[i] += float64(x[(b*p+q)*d+i])
			}
		}
		for i := range m {
			m[i] /= float64(n)
		}
		cov := mat.NewDense(d, d, nil)
		for b := 0; b < n; b++ {
			for i := 0; i < d; i++ {
				yi := float64(x[(b*p+q)*d+i]) - m[i]
				for j := 0; j < d; j++ {
					yj := float64(x[(b*p+q)*d+j]) - m[j]
					cov.Set(i, j, cov.At(i, j)+yi*yj)
				}
			}
		}
		cov.Scale(1/float64(n-1), cov)
		for i := 0; i < d; i++ {
			cov.Set(i, i, cov.At(i, i)+eps)
		}
		var ci mat.Dense
		if err := ci.Inverse(cov); err != nil {
			return nil, nil, false
		}
		mean[q], inv[q] = m, &ci
	}
	return mean, inv, true
}

// Distances returns sqrt((x−μ)ᵀ Σ⁻¹ (x−μ)) for embeddings x = [n][P][D], as [n][P].
func Distances(x []float32, n, p, d int, mean [][]float64, inv []*mat.Dense) []float64 {
	out := make([]float64, n*p)
	y := make([]float64, d)
	for b := 0; b < n; b++ {
		for q := 0; q < p; q++ {
			for i := 0; i < d; i++ {
				y[i] = float64(x[(b*p+q)*d+i]) - mean[q][i]
			}
			var s float64
			for i := 0; i < d; i++ {
				for j := 0; j < d; j++ {
					s += y[i] * inv[q].At(i, j) * y[j]
				}
			}
			out[b*p+q] = math.Sqrt(math.Max(s, 0))
		}
	}
	return out
}

// Upsample resizes a h×w map to oh×ow bilinearly with half-pixel centres
// (PyTorch align_corners=False).
func Upsample(src []float64, h, w, oh, ow int) []float64 {
	out := make([]float64, oh*ow)
	coord := func(o, in, outN int) (int, int, float64) {
		s := (float64(o)+0.5)*float64(in)/float64(outN) - 0.5
		if s < 0 {
			s = 0
		}
		i0 := int(math.Floor(s))
		if i0 > in-1 {
			i0 = in - 1
		}
		i1 := i0 + 1
		if i1 > in-1 {
			i1 = in - 1
		}
		return i0, i1, s - float64(i0)
	}
	for y := 0; y < oh; y++ {
		y0, y1, fy := coord(y, h, oh)
		for x := 0; x < ow; x++ {
			x0, x1, fx := coord(x, w, ow)
			top := src[y0*w+x0]*(1-fx) + src[y0*w+x1]*fx
			bot := src[y1*w+x0]*(1-fx) + src[y1*w+x1]*fx
			out[y*ow+x] = top*(1-fy) + bot*fy
		}
	}
	return out
}

// Blur applies a Gaussian of the given sigma with radius int(4σ+0.5), normalised
// weights, and scipy's 'mirror' border (d c b | a b c d | c b a).
func Blur(src []float64, h, w int, sigma float64) []float64 {
	r := int(4*sigma + 0.5)
	k := make([]float64, 2*r+1)
	var sum float64
	for i := -r; i <= r; i++ {
		k[i+r] = math.Exp(-float64(i*i) / (2 * sigma * sigma))
		sum += k[i+r]
	}
	for i := range k {
		k[i] /= sum
	}
	mirror := func(i, n int) int {
		if n == 1 {
			return 0
		}
		period := 2 * (n - 1)
		i = ((i % period) + period) % period
		if i >= n {
			i = period - i
		}
		return i
	}
	tmp := make([]float64, h*w)
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			var s float64
			for t := -r; t <= r; t++ {
				s += k[t+r] * src[y*w+mirror(x+t, w)]
			}
			tmp[y*w+x] = s
		}
	}
	out := make([]float64, h*w)
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			var s float64
			for t := -r; t <= r; t++ {
				s += k[t+r] * tmp[mirror(y+t, h)*w+x]
			}
			out[y*w+x] = s
		}
	}
	return out
}
