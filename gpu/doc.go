// Package gpu is the CUDA implementation of the detector's Gaussian backend
// (gauss.Backend): a thin cgo layer over the kernels and C API in ../cuda, built
// with `-tags cuda` against the static library CMake makes there. Without the tag
// it builds to a stub whose constructor says how to rebuild.
package gpu
