package gauss_test

import (
	"testing"

	"github.com/padim/padim/detector/gauss"
	"github.com/padim/padim/detector/gauss/gausstest"
)

func TestCPUConformance(t *testing.T) { gausstest.Run(t, gauss.CPU{}) }

// With a one-image stage every Add folds, so streaming and merging are exercised
// inside the accumulator too, not only across accumulators.
func TestCPUConformanceSmallStage(t *testing.T) {
	gausstest.Run(t, gauss.CPU{StageBytes: 1})
}

// The CPU backend at PaDiM's d=550 (few patches), against the float64 reference.
func TestCPUAtProductionSize(t *testing.T) {
	gausstest.RunAt(t, gauss.CPU{}, 60, 2, 550)
	gausstest.RunAt(t, gauss.CPU{}, 300, 1, 550) // N > (d+1)/2
}
