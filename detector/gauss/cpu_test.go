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
