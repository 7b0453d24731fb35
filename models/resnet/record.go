package resnet

import "github.com/padim/padim/detector/fileio/safetensors"

// Recorder wraps Params and keeps every tensor handed out, in request order, so
// a seeded network can be saved as a checkpoint (for tests and for export).
type Recorder struct {
	Params
	Tensors []safetensors.Tensor
}

// Param implements Params.
func (r *Recorder) Param(name string, role Role, shape ...int) ([]float32, error) {
	v, err := r.Params.Param(name, role, shape...)
	if err == nil {
		r.Tensors = append(r.Tensors, safetensors.F32(name, append([]float32(nil), v...), shape...))
	}
	return v, err
}
