//go:build openblas

package kernels

/*
#cgo LDFLAGS: -lopenblas
#include <cblas.h>

void openblas_set_num_threads(int);
void dpotrf_(const char *uplo, const int *n, double *a, const int *lda, int *info);
void dtrtri_(const char *uplo, const char *diag, const int *n, double *a, const int *lda, int *info);

// Row-major lower = column-major upper: the Fortran routines see Uᵀ.
static int chol_lower(double *a, int n) {
	int info = 0;
	dpotrf_("U", &n, a, &n, &info);
	return info;
}
static int inv_lower(double *a, int n) {
	int info = 0;
	dtrtri_("U", "N", &n, a, &n, &info);
	return info;
}
*/
import "C"

import "unsafe"

// Library names the dense kernels this build uses by default.
const Library = "OpenBLAS"

// OpenBLAS is the implementation on OpenBLAS (cblas and LAPACK), in builds
// with -tags openblas, where it is the default.
type OpenBLAS struct{}

// Name implements Impl.
func (OpenBLAS) Name() string { return "openblas" }

func init() {
	// Parallelism comes from ParallelFor over patches; one OpenBLAS thread per call.
	C.openblas_set_num_threads(1)
	register(OpenBLAS{}, true)
}

// SyrkLower sets the lower triangle of c (d×d, row-major) to yᵀy for y n×d.
func (OpenBLAS) SyrkLower(n, d int, y, c []float32) {
	C.cblas_ssyrk(C.CblasRowMajor, C.CblasLower, C.CblasTrans, C.blasint(d), C.blasint(n), 1,
		(*C.float)(unsafe.Pointer(&y[0])), C.blasint(d), 0, (*C.float)(unsafe.Pointer(&c[0])), C.blasint(d))
}

// TrmmLowerT overwrites y (n×d, row stride ldy) with y·lᵀ, l lower triangular
// d×d row-major.
func (OpenBLAS) TrmmLowerT(n, d int, l []float32, y []float32, ldy int) {
	C.cblas_strmm(C.CblasRowMajor, C.CblasRight, C.CblasLower, C.CblasTrans, C.CblasNonUnit,
		C.blasint(n), C.blasint(d), 1, (*C.float)(unsafe.Pointer(&l[0])), C.blasint(d),
		(*C.float)(unsafe.Pointer(&y[0])), C.blasint(ldy))
}

// CholLower overwrites the lower triangle of a with L, a = LLᵀ; false if not PD.
func (OpenBLAS) CholLower(a []float64, d int) bool {
	return C.chol_lower((*C.double)(unsafe.Pointer(&a[0])), C.int(d)) == 0
}

// InvLower overwrites the lower triangular a with its inverse; false if singular.
func (OpenBLAS) InvLower(a []float64, d int) bool {
	return C.inv_lower((*C.double)(unsafe.Pointer(&a[0])), C.int(d)) == 0
}

// DsyrkLower sets the lower triangle of c (n×n, row-major) to a·aᵀ for a n×k.
func (OpenBLAS) DsyrkLower(n, k int, a, c []float64) {
	C.cblas_dsyrk(C.CblasRowMajor, C.CblasLower, C.CblasNoTrans, C.blasint(n), C.blasint(k), 1,
		(*C.double)(unsafe.Pointer(&a[0])), C.blasint(k), 0, (*C.double)(unsafe.Pointer(&c[0])), C.blasint(n))
}

// DtrsmLower overwrites b (n×k, row-major) with l⁻¹·b, l lower triangular n×n.
func (OpenBLAS) DtrsmLower(n, k int, l, b []float64) {
	C.cblas_dtrsm(C.CblasRowMajor, C.CblasLeft, C.CblasLower, C.CblasNoTrans, C.CblasNonUnit,
		C.blasint(n), C.blasint(k), 1, (*C.double)(unsafe.Pointer(&l[0])), C.blasint(n),
		(*C.double)(unsafe.Pointer(&b[0])), C.blasint(k))
}

// DgemmNT sets c (m×n, row stride ldc) to a·bᵀ for a m×k (row stride lda) and
// b n×k (row stride k).
func (OpenBLAS) DgemmNT(m, n, k int, a []float64, lda int, b []float64, c []float64, ldc int) {
	C.cblas_dgemm(C.CblasRowMajor, C.CblasNoTrans, C.CblasTrans, C.blasint(m), C.blasint(n), C.blasint(k), 1,
		(*C.double)(unsafe.Pointer(&a[0])), C.blasint(lda), (*C.double)(unsafe.Pointer(&b[0])), C.blasint(k), 0,
		(*C.double)(unsafe.Pointer(&c[0])), C.blasint(ldc))
}

// Sgemm computes c = a·b for n×n row-major matrices.
func (OpenBLAS) Sgemm(n int, a, b, c []float32) {
	C.cblas_sgemm(C.CblasRowMajor, C.CblasNoTrans, C.CblasNoTrans, C.blasint(n), C.blasint(n), C.blasint(n), 1,
		(*C.float)(unsafe.Pointer(&a[0])), C.blasint(n), (*C.float)(unsafe.Pointer(&b[0])), C.blasint(n), 0,
		(*C.float)(unsafe.Pointer(&c[0])), C.blasint(n))
}

// SgemmNT sets c (m×n, row stride ldc) to a·bᵀ for a m×k (row stride lda)
// and b n×k (row stride ldb).
func (OpenBLAS) SgemmNT(m, n, k int, a []float32, lda int, b []float32, ldb int, c []float32, ldc int) {
	C.cblas_sgemm(C.CblasRowMajor, C.CblasNoTrans, C.CblasTrans, C.blasint(m), C.blasint(n), C.blasint(k), 1,
		(*C.float)(unsafe.Pointer(&a[0])), C.blasint(lda), (*C.float)(unsafe.Pointer(&b[0])), C.blasint(ldb), 0,
		(*C.float)(unsafe.Pointer(&c[0])), C.blasint(ldc))
}
