package kernels

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
)

// Impl is one implementation of the kernels. Matrices are row-major.
type Impl interface {
	// Name is the implementation's short name ("gonum", "openblas").
	Name() string
	// SyrkLower sets the lower triangle of c (d×d) to yᵀy for y n×d.
	SyrkLower(n, d int, y, c []float32)
	// TrmmLowerT overwrites y (n×d, row stride ldy) with y·lᵀ, l lower triangular d×d.
	TrmmLowerT(n, d int, l []float32, y []float32, ldy int)
	// CholLower overwrites the lower triangle of a with L, a = LLᵀ; false if not PD.
	CholLower(a []float64, d int) bool
	// InvLower overwrites the lower triangular a with its inverse; false if singular.
	InvLower(a []float64, d int) bool
	// Sgemm computes c = a·b for n×n matrices.
	Sgemm(n int, a, b, c []float32)
	// DsyrkLower sets the lower triangle of c (n×n) to a·aᵀ for a n×k.
	DsyrkLower(n, k int, a, c []float64)
	// DtrsmLower overwrites b (n×k) with l⁻¹·b, l lower triangular n×n.
	DtrsmLower(n, k int, l, b []float64)
	// DgemmNT sets c (m×n, row stride ldc) to a·bᵀ for a m×k (row stride lda) and b n×k.
	DgemmNT(m, n, k int, a []float64, lda int, b []float64, c []float64, ldc int)
	// SgemmNT sets c (m×n, row stride ldc) to a·bᵀ for a m×k (row stride lda) and b n×k (row stride ldb).
	SgemmNT(m, n, k int, a []float32, lda int, b []float32, ldb int, c []float32, ldc int)
}

var (
	mu      sync.Mutex
	impls   = []Impl{Gonum{}}
	current atomic.Pointer[Impl]
)

func init() {
	if current.Load() == nil {
		var g Impl = Gonum{}
		current.Store(&g)
	}
}

// register adds an implementation of this build; def makes it the default.
func register(i Impl, def bool) {
	mu.Lock()
	defer mu.Unlock()
	impls = append(impls, i)
	if def {
		impls[0], impls[len(impls)-1] = impls[len(impls)-1], impls[0]
		current.Store(&i)
	}
}

// Available lists the implementations of this build, the default first.
func Available() []Impl {
	mu.Lock()
	defer mu.Unlock()
	return append([]Impl(nil), impls...)
}

// Use makes i the implementation every kernel call uses from now on (calls
// already running finish on the previous one).
func Use(i Impl) { current.Store(&i) }

// UseNamed is Use for the implementation called name (case-insensitive).
func UseNamed(name string) error {
	var names []string
	for _, i := range Available() {
		if strings.EqualFold(i.Name(), name) {
			Use(i)
			return nil
		}
		names = append(names, i.Name())
	}
	return fmt.Errorf("kernels: no implementation %q in this build (it has %s; OpenBLAS needs -tags openblas)", name, strings.Join(names, ", "))
}

// Current is the implementation in use.
func Current() Impl { return *current.Load() }

// SyrkLower is Current().SyrkLower.
func SyrkLower(n, d int, y, c []float32) { Current().SyrkLower(n, d, y, c) }

// TrmmLowerT is Current().TrmmLowerT.
func TrmmLowerT(n, d int, l []float32, y []float32, ldy int) { Current().TrmmLowerT(n, d, l, y, ldy) }

// CholLower is Current().CholLower.
func CholLower(a []float64, d int) bool { return Current().CholLower(a, d) }

// InvLower is Current().InvLower.
func InvLower(a []float64, d int) bool { return Current().InvLower(a, d) }

// Sgemm is Current().Sgemm.
func Sgemm(n int, a, b, c []float32) { Current().Sgemm(n, a, b, c) }

// DsyrkLower is Current().DsyrkLower.
func DsyrkLower(n, k int, a, c []float64) { Current().DsyrkLower(n, k, a, c) }

// DtrsmLower is Current().DtrsmLower.
func DtrsmLower(n, k int, l, b []float64) { Current().DtrsmLower(n, k, l, b) }

// DgemmNT is Current().DgemmNT.
func DgemmNT(m, n, k int, a []float64, lda int, b []float64, c []float64, ldc int) {
	Current().DgemmNT(m, n, k, a, lda, b, c, ldc)
}

// SgemmNT is Current().SgemmNT.
func SgemmNT(m, n, k int, a []float32, lda int, b []float32, ldb int, c []float32, ldc int) {
	Current().SgemmNT(m, n, k, a, lda, b, ldb, c, ldc)
}
