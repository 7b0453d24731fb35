package gauss

import (
	"math"

	"github.com/padim/padim/detector/internal/kernels"
)

// choleskyInverse overwrites the lower triangle of the symmetric row-major a with
// L⁻¹ where a = LLᵀ. It reports false if a is not (numerically) positive definite.
func choleskyInverse(a []float64, d int) bool {
	for _, v := range a {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return false
		}
	}
	if !kernels.CholLower(a, d) {
		return false
	}
	// A factorisation that succeeds only through rounding gives a garbage L⁻¹:
	// demand pivots that are not negligible against the largest.
	maxDiag := 0.0
	for i := 0; i < d; i++ {
		maxDiag = max(maxDiag, a[i*d+i])
	}
	for i := 0; i < d; i++ {
		if !(a[i*d+i] > maxDiag*1e-7) {
			return false
		}
	}
	if !kernels.InvLower(a, d) {
		return false
	}
	for i := 0; i < d; i++ {
		for _, v := range a[i*d : i*d+i+1] {
			if math.IsNaN(v) || math.IsInf(v, 0) {
				return false
			}
		}
	}
	return true
}

// KernelLibrary names the dense kernels this build uses by default (gonum,
// or OpenBLAS with -tags openblas); Kernels names those in use.
const KernelLibrary = kernels.Library

// KernelLibraries are the short names of the dense-kernel implementations of
// this build ("gonum", and "openblas" with -tags openblas), the default first.
func KernelLibraries() []string {
	var names []string
	for _, i := range kernels.Available() {
		names = append(names, i.Name())
	}
	return names
}

// UseKernels makes every CPU path (statistics, factorisation, scoring,
// leave-one-out, nearest neighbours) use the named implementation from now
// on, as gonum's blas64.Use does: for tests and benchmarks that compare them.
func UseKernels(name string) error { return kernels.UseNamed(name) }

// Kernels is the short name of the implementation in use.
func Kernels() string { return kernels.Current().Name() }
