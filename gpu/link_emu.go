//go:build cudaemu

package gpu

// The cudaemu build links the same kernel source compiled for the host emulator
// (make cuda-emu), so the CUDA backend's tests run on machines without a GPU.

/*
#cgo LDFLAGS: -L${SRCDIR}/../build/emu -lpadim_cuda_emu -lstdc++ -lpthread -lm
*/
import "C"

// Emulated reports whether the kernels run on the host emulator (cuda/emu).
const Emulated = true
