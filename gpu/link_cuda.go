//go:build cuda && !cudaemu

package gpu

// The CUDA build links the kernels CMake builds (make cuda) and the static CUDA
// runtime, so the binary needs only the NVIDIA driver on the target machine.

/*
#cgo LDFLAGS: -L${SRCDIR}/../build/cuda -lpadim_cuda -L/usr/local/cuda/lib64 -L/usr/lib/x86_64-linux-gnu -lcudart_static -lstdc++ -ldl -lrt -lpthread -lm
*/
import "C"

// Emulated reports whether the kernels run on the host emulator (cuda/emu).
const Emulated = false

// KernelCounters are the emulator's per-kernel counts; a GPU build has none.
type KernelCounters struct {
	Name                      string
	Launches, Blocks, Threads int64
	ReadBytes, WriteBytes     int64
	ReadSectors, WriteSectors int64
	Flops, FP64Ops            int64
}

func emuSetCounting(bool)               {}
func emuCounters(bool) []KernelCounters { return nil }
func emuPageableCopies() uint64         { return 0 }
func emuDeviceBytes() uint64            { return 0 }
func emuSticky(bool) string             { return "" }
func emuCopied() (h2d, d2h uint64)      { return 0, 0 }
func emuSetCopyDelay(int)               {}
