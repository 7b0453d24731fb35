package gauss

import (
	"math"

	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/blas32"
	"gonum.org/v1/gonum/blas/blas64"
	"gonum.org/v1/gonum/lapack/lapack64"
)

// The CPU backend's three dense kernels. These defaults are pure Go (gonum);
// building with -tags openblas replaces them with OpenBLAS (kernels_openblas.go).
var (
	// KernelLibrary names the implementation in use, for logs and benchmarks.
	KernelLibrary = "gonum (pure Go)"

	// syrkLower sets the lower triangle of c (d×d, row-major) to yᵀy for y n×d.
	syrkLower = func(n, d int, y, c []float32) {
		blas32.Syrk(blas.Trans, 1, blas32.General{Rows: n, Cols: d, Stride: d, Data: y[:n*d]},
			0, blas32.Symmetric{N: d, Stride: d, Uplo: blas.Lower, Data: c})
	}

	// trmmLowerT overwrites y (n×d) with y·lᵀ, l lower triangular d×d row-major.
	trmmLowerT = func(n, d int, l, y []float32) {
		blas32.Trmm(blas.Right, blas.Trans, 1,
			blas32.Triangular{N: d, Stride: d, Uplo: blas.Lower, Diag: blas.NonUnit, Data: l},
			blas32.General{Rows: n, Cols: d, Stride: d, Data: y[:n*d]})
	}

	// cholLower overwrites the lower triangle of a with L, a = LLᵀ; false if not PD.
	cholLower = func(a []float64, d int) bool {
		_, ok := lapack64.Potrf(blas64.Symmetric{N: d, Stride: d, Uplo: blas.Lower, Data: a})
		return ok
	}

	// invLower overwrites the lower triangular a with its inverse; false if singular.
	invLower = func(a []float64, d int) bool {
		return lapack64.Trtri(blas64.Triangular{N: d, Stride: d, Uplo: blas.Lower, Diag: blas.NonUnit, Data: a})
	}
)

// choleskyInverse overwrites the lower triangle of the symmetric row-major a with
// L⁻¹ where a = LLᵀ. It reports false if a is not (numerically) positive definite.
func choleskyInverse(a []float64, d int) bool {
	for _, v := range a {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return false
		}
	}
	if !cholLower(a, d) {
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
	if !invLower(a, d) {
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
