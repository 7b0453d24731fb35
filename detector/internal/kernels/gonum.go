package kernels

import (
	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/blas32"
	"gonum.org/v1/gonum/blas/blas64"
	"gonum.org/v1/gonum/lapack/lapack64"
)

// Gonum is the pure-Go implementation (gonum's blas32, blas64 and lapack64),
// in every build.
type Gonum struct{}

// Name implements Impl.
func (Gonum) Name() string { return "gonum" }

// SyrkLower sets the lower triangle of c (d×d, row-major) to yᵀy for y n×d.
func (Gonum) SyrkLower(n, d int, y, c []float32) {
	blas32.Syrk(blas.Trans, 1, blas32.General{Rows: n, Cols: d, Stride: d, Data: y[:n*d]},
		0, blas32.Symmetric{N: d, Stride: d, Uplo: blas.Lower, Data: c})
}

// TrmmLowerT overwrites y (n×d, row stride ldy) with y·lᵀ, l lower triangular
// d×d row-major.
func (Gonum) TrmmLowerT(n, d int, l []float32, y []float32, ldy int) {
	blas32.Trmm(blas.Right, blas.Trans, 1,
		blas32.Triangular{N: d, Stride: d, Uplo: blas.Lower, Diag: blas.NonUnit, Data: l},
		blas32.General{Rows: n, Cols: d, Stride: ldy, Data: y[:(n-1)*ldy+d]})
}

// CholLower overwrites the lower triangle of a with L, a = LLᵀ; false if not PD.
func (Gonum) CholLower(a []float64, d int) bool {
	_, ok := lapack64.Potrf(blas64.Symmetric{N: d, Stride: d, Uplo: blas.Lower, Data: a})
	return ok
}

// InvLower overwrites the lower triangular a with its inverse; false if singular.
func (Gonum) InvLower(a []float64, d int) bool {
	return lapack64.Trtri(blas64.Triangular{N: d, Stride: d, Uplo: blas.Lower, Diag: blas.NonUnit, Data: a})
}

// Sgemm computes c = a·b for n×n row-major matrices.
func (Gonum) Sgemm(n int, a, b, c []float32) {
	blas32.Gemm(blas.NoTrans, blas.NoTrans, 1, blas32.General{Rows: n, Cols: n, Stride: n, Data: a},
		blas32.General{Rows: n, Cols: n, Stride: n, Data: b}, 0, blas32.General{Rows: n, Cols: n, Stride: n, Data: c})
}

// DsyrkLower sets the lower triangle of c (n×n, row-major) to a·aᵀ for a n×k.
func (Gonum) DsyrkLower(n, k int, a, c []float64) {
	blas64.Syrk(blas.NoTrans, 1, blas64.General{Rows: n, Cols: k, Stride: k, Data: a[:n*k]},
		0, blas64.Symmetric{N: n, Stride: n, Uplo: blas.Lower, Data: c[:n*n]})
}

// DtrsmLower overwrites b (n×k, row-major) with l⁻¹·b, l lower triangular n×n.
func (Gonum) DtrsmLower(n, k int, l, b []float64) {
	blas64.Trsm(blas.Left, blas.NoTrans, 1,
		blas64.Triangular{N: n, Stride: n, Uplo: blas.Lower, Diag: blas.NonUnit, Data: l[:n*n]},
		blas64.General{Rows: n, Cols: k, Stride: k, Data: b[:n*k]})
}

// DgemmNT sets c (m×n, row stride ldc) to a·bᵀ for a m×k (row stride lda) and
// b n×k (row stride k).
func (Gonum) DgemmNT(m, n, k int, a []float64, lda int, b []float64, c []float64, ldc int) {
	blas64.Gemm(blas.NoTrans, blas.Trans, 1, blas64.General{Rows: m, Cols: k, Stride: lda, Data: a[:(m-1)*lda+k]},
		blas64.General{Rows: n, Cols: k, Stride: k, Data: b[:n*k]}, 0, blas64.General{Rows: m, Cols: n, Stride: ldc, Data: c[:(m-1)*ldc+n]})
}

// SgemmNT sets c (m×n, row stride ldc) to a·bᵀ for a m×k (row stride lda)
// and b n×k (row stride ldb).
func (Gonum) SgemmNT(m, n, k int, a []float32, lda int, b []float32, ldb int, c []float32, ldc int) {
	blas32.Gemm(blas.NoTrans, blas.Trans, 1, blas32.General{Rows: m, Cols: k, Stride: lda, Data: a[:(m-1)*lda+k]},
		blas32.General{Rows: n, Cols: k, Stride: ldb, Data: b[:(n-1)*ldb+k]}, 0, blas32.General{Rows: m, Cols: n, Stride: ldc, Data: c[:(m-1)*ldc+n]})
}
