// Package kernels holds the dense linear algebra padim's CPU paths use, chosen
// at build time: pure Go (gonum) by default, OpenBLAS with -tags openblas
// (one thread a call: callers parallelise over patches or blocks).
package kernels
