// Package gpu is the CUDA implementation of the detector's Gaussian backend
// (gauss.Backend): a thin cgo layer over the kernels and C API in ../cuda, built
// with `-tags cuda` against the static library CMake makes there, or with
// `-tags cudaemu` against the same source compiled for the host emulator
// (cuda/emu). Without either tag it builds to a stub whose constructor says how to
// rebuild.
//
// Lifetimes: New opens a reference-counted device context. Close on the Backend drops
// the backend's reference; every accumulator, scorer and device-resident model holds
// its own, so closing the backend (or losing every reference to it) never frees what
// they still use. There is no finalizer: close what you open.
//
// Concurrency: the Backend, its accumulators and its scorers are safe for concurrent
// use; an accumulator or scorer serialises its own calls (one device stream each).
//
// Both Gaussian forms: the full one (gauss.Backend) and the exact low-rank one for
// fits on fewer samples than dimensions (gauss.LowRankBackend: FactorizeLowRank and
// NewLowRankScorer), with the same lifetimes, limits and device-resident models.
//
// Data stays on the device: an accumulator stages 128 images per pass on the device
// and keeps its float64 statistics there; its Factorize method factorises them there
// and keeps the model on the device for the next NewScorer of that same Gaussian
// (only the model's float32 copy comes back, for the model file). Cards too small for
// the statistics or the model stream them by patch blocks from pinned host memory.
package gpu
