package gauss_test

import (
	"strings"
	"testing"

	"github.com/padim/padim/detector/gauss"
	"github.com/padim/padim/detector/gauss/gausstest"
)

// eachKernels runs fn once on every dense-kernel implementation of this build
// (gonum, and OpenBLAS with -tags openblas), restoring the default after.
func eachKernels(t *testing.T, fn func(t *testing.T)) {
	def := gauss.Kernels()
	defer gauss.UseKernels(def)
	for _, lib := range gauss.KernelLibraries() {
		t.Run(lib, func(t *testing.T) {
			if err := gauss.UseKernels(lib); err != nil {
				t.Fatal(err)
			}
			if got := gauss.Kernels(); got != lib {
				t.Fatalf("kernels in use: %s, want %s", got, lib)
			}
			fn(t)
		})
	}
}

func TestCPUConformance(t *testing.T) {
	eachKernels(t, func(t *testing.T) { gausstest.Run(t, gauss.CPU{}) })
}

// With a one-image stage every Add folds, so streaming and merging are exercised
// inside the accumulator too, not only across accumulators.
func TestCPUConformanceSmallStage(t *testing.T) {
	eachKernels(t, func(t *testing.T) { gausstest.Run(t, gauss.CPU{StageBytes: 1}) })
}

// The CPU backend at PaDiM's d=550 (few patches), against the float64 reference.
func TestCPUAtProductionSize(t *testing.T) {
	eachKernels(t, func(t *testing.T) {
		gausstest.RunAt(t, gauss.CPU{}, 60, 2, 550)
		gausstest.RunAt(t, gauss.CPU{}, 300, 1, 550) // N > (d+1)/2
	})
}

func TestUseKernelsRefusesUnknown(t *testing.T) {
	if err := gauss.UseKernels("mkl"); err == nil || !strings.Contains(err.Error(), "gonum") {
		t.Fatalf("an unknown implementation: %v", err)
	}
}
