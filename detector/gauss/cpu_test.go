package gauss_test

import (
	"testing"

	"github.com/padim/padim/detector/gauss"
	"github.com/padim/padim/detector/gauss/gausstest"
)

func TestCPUConformance(t *testing.T) { gausstest.Run(t, gauss.CPU{}) }
