//go:build !openblas

package kernels

// Library names the dense kernels this build uses by default: pure Go
// (gonum). Build with -tags openblas for OpenBLAS too (openblas.go).
const Library = "gonum (pure Go)"
