//go:build cuda || cudaemu

package gpu

/*
#cgo CFLAGS: -I${SRCDIR}/../cuda
#include <stdlib.h>
#include "padim_cuda.h"
*/
import "C"

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"unsafe"

	"github.com/padim/padim/detector/gauss"
)

// ErrOutOfMemory is wrapped by errors about device or pinned memory.
var ErrOutOfMemory = errors.New("not enough GPU memory")

const errLen = 512

// call runs f with an error buffer and turns a failure into a Go error.
func call(what string, f func(err *C.char, n C.size_t) C.int) error {
	buf := (*C.char)(C.malloc(errLen))
	defer C.free(unsafe.Pointer(buf))
	*buf = 0
	rc := f(buf, errLen)
	if rc == C.PADIM_OK {
		return nil
	}
	msg := C.GoString(buf)
	switch rc {
	case C.PADIM_ERR_OOM:
		return fmt.Errorf("gpu: %s: %w: %s (use a smaller --batch or --dim, or --device cpu)", what, ErrOutOfMemory, msg)
	case C.PADIM_ERR_NO_DEVICE:
		return fmt.Errorf("gpu: %s: %s; use --device cpu", what, msg)
	}
	return fmt.Errorf("gpu: %s: %s", what, msg)
}

func init() {
	if os.Getenv("PADIM_CUDA_DEBUG") != "" {
		C.padim_set_debug_sync(1) // synchronise and check after every launch
	}
}

// Backend runs the Gaussian stages on one CUDA device.
type Backend struct {
	ctx      *C.padim_ctx
	device   int
	name     string
	totalMem uint64
	MaxBatch int // images per device batch (staged in pinned memory, double-buffered)
}

// New opens a CUDA device as a gauss.Backend.
func New(device int) (gauss.Backend, error) {
	b := &Backend{device: device, MaxBatch: 32}
	if err := call("open device", func(e *C.char, l C.size_t) C.int { return C.padim_ctx_create(C.int(device), &b.ctx, e, l) }); err != nil {
		return nil, err
	}
	name := (*C.char)(C.malloc(256))
	defer C.free(unsafe.Pointer(name))
	var total, free C.size_t
	var major, minor C.int
	if err := call("device info", func(e *C.char, l C.size_t) C.int {
		return C.padim_device_info(C.int(device), name, 256, &total, &free, &major, &minor, e, l)
	}); err != nil {
		C.padim_ctx_destroy(b.ctx)
		return nil, err
	}
	b.totalMem = uint64(total)
	b.name = fmt.Sprintf("cuda:%d %s (sm_%d%d, %.0f GiB)", device, C.GoString(name), major, minor, float64(total)/(1<<30))
	runtime.SetFinalizer(b, func(b *Backend) { C.padim_ctx_destroy(b.ctx) })
	return b, nil
}

// Name implements gauss.Backend.
func (b *Backend) Name() string { return b.name }

// Close implements gauss.Backend.
func (b *Backend) Close() error { return nil }

// NewAccumulator implements gauss.Backend.
func (b *Backend) NewAccumulator(p, d int) (gauss.Accumulator, error) {
	a := &accumulator{b: b, p: p, d: d}
	if err := call("accumulator", func(e *C.char, l C.size_t) C.int {
		return C.padim_acc_create(b.ctx, C.int(p), C.int(d), C.int(b.MaxBatch), &a.acc, e, l)
	}); err != nil {
		return nil, err
	}
	runtime.KeepAlive(b)
	return a, nil
}

type accumulator struct {
	b    *Backend
	acc  *C.padim_acc
	p, d int
}

func (a *accumulator) Add(x []float32, n int) error {
	if a.acc == nil {
		return errors.New("gpu: accumulator is closed")
	}
	if err := gauss.CheckBatch(x, n, a.p, a.d); err != nil {
		return err
	}
	if err := gauss.CheckFinite(x[:n*a.p*a.d], a.p, a.d); err != nil {
		return err
	}
	return call("accumulate", func(e *C.char, l C.size_t) C.int {
		return C.padim_acc_add(a.acc, (*C.float)(unsafe.Pointer(&x[0])), C.int(n), e, l)
	})
}

func (a *accumulator) Stats() (*gauss.Stats, error) {
	if a.acc == nil {
		return nil, errors.New("gpu: accumulator is closed")
	}
	s := gauss.NewStats(a.p, a.d)
	var n C.int64_t
	err := call("download statistics", func(e *C.char, l C.size_t) C.int {
		return C.padim_acc_stats(a.acc, (*C.double)(unsafe.Pointer(&s.Mean[0])), (*C.double)(unsafe.Pointer(&s.M2[0])), &n, e, l)
	})
	s.N = int64(n)
	return s, err
}

func (a *accumulator) Close() error {
	if a.acc != nil {
		C.padim_acc_destroy(a.acc)
		a.acc = nil
	}
	return nil
}

// Factorize implements gauss.Backend: Cholesky and triangular inverse per patch in
// float64 on the device.
func (b *Backend) Factorize(s *gauss.Stats, eps float64) (*gauss.Gaussian, error) {
	if err := s.CheckFittable(eps); err != nil {
		return nil, err
	}
	if s.D > 1024 {
		return nil, fmt.Errorf("gpu: factorisation supports D ≤ 1024, got %d; use --device cpu", s.D)
	}
	g := &gauss.Gaussian{P: s.P, D: s.D, Mean: make([]float32, s.P*s.D), LInv: make([]float32, s.P*gauss.PackedLen(s.D))}
	for i, v := range s.Mean {
		g.Mean[i] = float32(v)
	}
	var bad C.int
	err := call("factorize", func(e *C.char, l C.size_t) C.int {
		return C.padim_factorize(b.ctx, C.int(s.P), C.int(s.D), C.int64_t(s.N), (*C.double)(unsafe.Pointer(&s.M2[0])),
			C.double(eps), (*C.float)(unsafe.Pointer(&g.LInv[0])), &bad, e, l)
	})
	if bad >= 0 {
		return nil, &gauss.NotPositiveDefiniteError{Patch: int(bad)}
	}
	if err != nil {
		return nil, err
	}
	return g, nil
}

// NewScorer implements gauss.Backend: the model is uploaded once.
func (b *Backend) NewScorer(g *gauss.Gaussian) (gauss.Scorer, error) {
	if err := g.Check(); err != nil {
		return nil, err
	}
	sc := &scorer{p: g.P, d: g.D}
	if err := call("scorer", func(e *C.char, l C.size_t) C.int {
		return C.padim_scorer_create(b.ctx, C.int(g.P), C.int(g.D), C.int(b.MaxBatch), (*C.float)(unsafe.Pointer(&g.Mean[0])),
			(*C.float)(unsafe.Pointer(&g.LInv[0])), &sc.s, e, l)
	}); err != nil {
		return nil, err
	}
	return sc, nil
}

type scorer struct {
	s    *C.padim_scorer
	p, d int
}

func (s *scorer) Score(x []float32, n int, dist []float32) error {
	if s.s == nil {
		return errors.New("gpu: scorer is closed")
	}
	if err := gauss.CheckBatch(x, n, s.p, s.d); err != nil {
		return err
	}
	if len(dist) < n*s.p {
		return fmt.Errorf("gpu: distance buffer holds %d values, need %d", len(dist), n*s.p)
	}
	return call("score", func(e *C.char, l C.size_t) C.int {
		return C.padim_scorer_score(s.s, (*C.float)(unsafe.Pointer(&x[0])), C.int(n), (*C.float)(unsafe.Pointer(&dist[0])), e, l)
	})
}

func (s *scorer) Close() error {
	if s.s != nil {
		C.padim_scorer_destroy(s.s)
		s.s = nil
	}
	return nil
}
