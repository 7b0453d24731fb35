//go:build cudaemu

package gpu

// The cudaemu build links the same kernel source compiled for the host emulator
// (make cuda-emu), so the CUDA backend's tests run on machines without a GPU.

/*
#cgo LDFLAGS: -L${SRCDIR}/../build/emu -lpadim_cuda_emu -lstdc++ -lpthread -lm
#include <stddef.h>
#include <stdlib.h>
void padim_emu_set_counting(int on);
int padim_emu_counters(char *buf, size_t len, int reset);
unsigned long long padim_emu_pageable_copies(void);
unsigned long long padim_emu_device_bytes(void);
void padim_emu_copied(unsigned long long *h2d, unsigned long long *d2h);
void padim_emu_set_copy_delay_us(int us);
const char *padim_emu_sticky(int clear);
void padim_emu_report(void);
*/
import "C"

import (
	"strconv"
	"strings"
	"unsafe"
)

// Emulated reports whether the kernels run on the host emulator (cuda/emu).
const Emulated = true

// KernelCounters are the emulator's counts for one kernel (cuda/emu/cuda_emu.h).
type KernelCounters struct {
	Name                      string
	Launches, Blocks, Threads int64
	ReadBytes, WriteBytes     int64 // requested by threads (L1-level traffic)
	ReadSectors, WriteSectors int64 // bytes of distinct 32-byte sectors per launch (DRAM traffic, infinite cache)
	Flops, FP64Ops            int64 // as the kernels annotate them
}

// emuSetCounting turns the emulator's per-kernel counters on or off.
func emuSetCounting(on bool) {
	v := 0
	if on {
		v = 1
	}
	C.padim_emu_set_counting(C.int(v))
}

// emuCounters returns the per-kernel counters and, with reset, clears them.
func emuCounters(reset bool) []KernelCounters {
	const n = 1 << 16
	buf := (*C.char)(C.malloc(n))
	defer C.free(unsafe.Pointer(buf))
	r := 0
	if reset {
		r = 1
	}
	C.padim_emu_counters(buf, n, C.int(r))
	var out []KernelCounters
	for _, line := range strings.Split(strings.TrimSpace(C.GoString(buf)), "\n") {
		f := strings.Fields(line)
		if len(f) != 10 {
			continue
		}
		v := make([]int64, 9)
		for i := range v {
			v[i], _ = strconv.ParseInt(f[i+1], 10, 64)
		}
		out = append(out, KernelCounters{f[0], v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8]})
	}
	return out
}

// emuPageableCopies counts cudaMemcpyAsync calls that used pageable host memory.
func emuPageableCopies() uint64 { return uint64(C.padim_emu_pageable_copies()) }

// emuDeviceBytes is the emulated device memory allocated now.
func emuDeviceBytes() uint64 { return uint64(C.padim_emu_device_bytes()) }

// emuSticky returns the emulator's sticky error ("" if none), clearing it if asked.
func emuSticky(clear bool) string {
	c := 0
	if clear {
		c = 1
	}
	return C.GoString(C.padim_emu_sticky(C.int(c)))
}

// emuCopied returns the bytes copied host to device and device to host so far.
func emuCopied() (h2d, d2h uint64) {
	var a, b C.ulonglong
	C.padim_emu_copied(&a, &b)
	return uint64(a), uint64(b)
}

// emuSetCopyDelay gives every copy a latency (microseconds), so that a missing wait
// between streams shows as a wrong result.
func emuSetCopyDelay(us int) { C.padim_emu_set_copy_delay_us(C.int(us)) }

// emuReport appends the process's counters to $PADIM_EMU_REPORT (the device check's
// dry-run estimates), if it is set.
func emuReport() { C.padim_emu_report() }
