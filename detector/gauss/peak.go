package gauss

import (
	"github.com/padim/padim/detector/internal/kernels"
	"runtime"
	"time"
)

// PeakGFLOPS measures this machine's fp32 matrix-multiply rate: one n×n SGEMM
// per core at once (each single-threaded, as the backend runs its kernels),
// repeated for at least minTime. It is the yardstick benchmarks compare to.
func PeakGFLOPS(n int, minTime time.Duration) float64 {
	workers := runtime.GOMAXPROCS(0) // as many as ParallelFor uses
	type mats struct{ a, b, c []float32 }
	m := make([]mats, workers)
	for i := range m {
		m[i] = mats{make([]float32, n*n), make([]float32, n*n), make([]float32, n*n)}
		for j := range m[i].a {
			m[i].a[j], m[i].b[j] = float32(j%7)*0.1, float32(j%5)*0.1
		}
	}
	kernels.Sgemm(n, m[0].a, m[0].b, m[0].c) // warm up
	reps := 0
	start := time.Now()
	for time.Since(start) < minTime {
		ParallelFor(workers, func(lo, hi int) {
			for w := lo; w < hi; w++ {
				kernels.Sgemm(n, m[w].a, m[w].b, m[w].c)
			}
		})
		reps++
	}
	return float64(reps*workers) * 2 * float64(n) * float64(n) * float64(n) / time.Since(start).Seconds() / 1e9
}
