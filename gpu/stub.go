//go:build !cuda && !cudaemu

package gpu

import (
	"errors"

	"github.com/padim/padim/detector/gauss"
)

// ErrNotBuilt is returned by New in builds without the cuda tag.
var ErrNotBuilt = errors.New("padim was built without CUDA support; rebuild with `make cuda` " +
	"(needs the CUDA toolkit: nvcc, cmake), or use --device cpu")

// New returns the CUDA backend on the given device.
func New(device int) (gauss.Backend, error) { return nil, ErrNotBuilt }
