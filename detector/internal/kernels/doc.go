// Package kernels holds the dense linear algebra padim's CPU paths use. As in
// gonum's blas64.Use, the implementation is chosen at run time (Use): pure Go
// (gonum, in every build) or OpenBLAS (in builds with -tags openblas, where it
// is the default; one thread a call: callers parallelise over patches or
// blocks), so one test binary can run the conformance suite on both.
package kernels
