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
	"math"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"unsafe"

	"github.com/padim/padim/detector/gauss"
)

// ErrOutOfMemory is wrapped by errors about device or pinned memory.
var ErrOutOfMemory = errors.New("not enough GPU memory")

// ErrLimit is wrapped by errors about sizes the kernels or the device cannot handle,
// refused before any launch.
var ErrLimit = errors.New("beyond the CUDA kernels' limits")

// ErrClosed is returned by methods of a closed backend, accumulator or scorer.
var ErrClosed = errors.New("gpu: closed")

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
	case C.PADIM_ERR_LIMIT:
		return fmt.Errorf("gpu: %s: %w: %s", what, ErrLimit, msg)
	case C.PADIM_ERR_NO_DEVICE:
		return fmt.Errorf("gpu: %s: %s; use --device cpu", what, msg)
	}
	return fmt.Errorf("gpu: %s: %s", what, msg)
}

func init() {
	if os.Getenv("PADIM_CUDA_DEBUG") != "" {
		C.padim_set_debug_sync(1) // synchronise and check after every launch
	}
	if os.Getenv("PADIM_CUDA_PROFILE") != "" {
		C.padim_set_profile(1) // time every launch with CUDA events
	}
}

// Precision selects the arithmetic of the factorisation (both forms) and of the
// low-rank form's scoring dot products.
type Precision int

const (
	// PrecisionAuto: float64 where the card runs it at ≥ 1/4 of its float32 rate
	// (P100, V100, A100, H100), else DoubleFloat (GTX/RTX cards).
	PrecisionAuto Precision = C.PADIM_PREC_AUTO
	// PrecisionFP64: native float64.
	PrecisionFP64 Precision = C.PADIM_PREC_FP64
	// PrecisionDF32: pairs of float32 ("double-float", about 44 bits).
	PrecisionDF32 Precision = C.PADIM_PREC_DF32
)

func (p Precision) String() string {
	switch p {
	case PrecisionFP64:
		return "fp64"
	case PrecisionDF32:
		return "df32"
	}
	return "auto"
}

// Props describes the device.
type Props struct {
	Name                 string
	CCMajor, CCMinor     int
	TotalMem, FreeMem    uint64
	Multiprocessors      int
	SharedPerBlock       int // bytes, without opt-in
	SharedPerBlockOptin  int // bytes, with cudaFuncSetAttribute
	FP32ToFP64Ratio      int
	MaxThreadsPerBlock   int
	Emulated             bool
	DefaultFactorization Precision
}

// Backend runs the Gaussian stages on one CUDA device. It is safe for concurrent
// use, and so are its accumulators and scorers (each serialises its own calls).
//
// Close releases the backend's hold on the device; accumulators, scorers and models
// made from it hold their own and stay valid until they are closed. There is no
// finalizer: an accumulator or scorer that is never closed keeps its device memory.
type Backend struct {
	// Stage is the number of images an accumulator stages on the device per pass
	// (default 128; fewer only when the device memory cannot hold them).
	Stage int
	// ScoreBatch is the number of images a scorer sends to the device per launch
	// (default 256); each patch's L⁻¹ is read once per 64 of them.
	ScoreBatch int
	// MemoryBudget caps the device bytes held at once (0: what the card has free,
	// less a reserve). Below what a fit needs, statistics and models stream through
	// the device by patch blocks from pinned host memory.
	MemoryBudget int64
	// Precision of the factorisation, both forms, and of the low-rank form's scoring
	// dot products (fixed when a scorer is made). PrecisionAuto by default; the
	// environment variable PADIM_CUDA_PRECISION=fp64|df32 overrides it.
	Precision Precision

	mu     sync.Mutex
	ctx    *C.padim_ctx // nil once closed
	device int
	name   string
	props  Props
	// cached: the model of the last factorisation (either form), still on the device,
	// for NewScorer or NewLowRankScorer of that same *gauss.Gaussian or *gauss.LowRank
	// (used once, then released).
	cachedG gauss.Model
	cachedM *C.padim_model
}

var _ gauss.LowRankBackend = (*Backend)(nil)

// New opens a CUDA device as a gauss.Backend (a *Backend).
func New(device int) (gauss.Backend, error) {
	b := &Backend{device: device, Stage: 128, ScoreBatch: 256}
	if err := call("open device", func(e *C.char, l C.size_t) C.int { return C.padim_ctx_create(C.int(device), &b.ctx, e, l) }); err != nil {
		return nil, err
	}
	var p C.padim_device_props
	if err := call("device properties", func(e *C.char, l C.size_t) C.int { return C.padim_device_props_get(C.int(device), &p, e, l) }); err != nil {
		C.padim_ctx_release(b.ctx)
		return nil, err
	}
	b.props = Props{
		Name: C.GoString(&p.name[0]), CCMajor: int(p.cc_major), CCMinor: int(p.cc_minor),
		TotalMem: uint64(p.total_mem), FreeMem: uint64(p.free_mem), Multiprocessors: int(p.multiprocessors),
		SharedPerBlock: int(p.smem_per_block), SharedPerBlockOptin: int(p.smem_per_block_optin),
		FP32ToFP64Ratio: int(p.fp32_to_fp64_ratio), MaxThreadsPerBlock: int(p.max_threads_per_block), Emulated: p.emulated != 0,
	}
	b.props.DefaultFactorization = PrecisionDF32
	if b.props.FP32ToFP64Ratio <= 4 {
		b.props.DefaultFactorization = PrecisionFP64
	}
	switch strings.ToLower(os.Getenv("PADIM_CUDA_PRECISION")) {
	case "fp64":
		b.Precision = PrecisionFP64
	case "df32":
		b.Precision = PrecisionDF32
	}
	b.name = fmt.Sprintf("cuda:%d %s (sm_%d%d, %.0f GiB)", device, b.props.Name, b.props.CCMajor, b.props.CCMinor, float64(b.props.TotalMem)/(1<<30))
	return b, nil
}

// Name implements gauss.Backend.
func (b *Backend) Name() string { return b.name }

// PreferredGroup asks the pipeline for 64 embeddings per Score call: the
// scoring kernel reads each patch's L⁻¹ once per group of 64 images.
func (b *Backend) PreferredGroup() int { return 64 }

// Props returns the device's properties as read when the backend was opened.
func (b *Backend) Props() Props { return b.props }

// Close implements the backend's half of the lifetime rule: it drops the backend's
// reference to the device context (and the cached model). Objects made from the
// backend keep the context alive until they are closed. Close is idempotent.
func (b *Backend) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.ctx == nil {
		return nil
	}
	b.dropCachedLocked()
	C.padim_ctx_release(b.ctx)
	b.ctx = nil
	if os.Getenv("PADIM_CUDA_TRANSFERS") != "" {
		fmt.Fprintf(os.Stderr, "gpu transfers: %v\n", BusTransfers(false))
	}
	return nil
}

// takeCachedLocked returns the cached device model of g, if it is the cached one, and
// hands its reference to the caller.
func (b *Backend) takeCachedLocked(g gauss.Model) *C.padim_model {
	if b.cachedM == nil || b.cachedG != g {
		return nil
	}
	m := b.cachedM
	b.cachedG, b.cachedM = nil, nil
	return m
}

func (b *Backend) dropCachedLocked() {
	if b.cachedM != nil {
		C.padim_model_release(b.cachedM)
	}
	b.cachedG, b.cachedM = nil, nil
}

// lockedCtx locks b, applies its settings to the context and returns it; the caller
// unlocks. It fails once b is closed.
func (b *Backend) lockedCtx() (*C.padim_ctx, error) {
	b.mu.Lock()
	if b.ctx == nil {
		b.mu.Unlock()
		return nil, fmt.Errorf("%w: backend", ErrClosed)
	}
	C.padim_ctx_set_budget(b.ctx, C.size_t(max(b.MemoryBudget, 0)))
	C.padim_ctx_set_precision(b.ctx, C.int(b.Precision))
	return b.ctx, nil
}

// applySettings applies b's settings to its context, if b is still open.
func (b *Backend) applySettings() {
	if _, err := b.lockedCtx(); err == nil {
		b.mu.Unlock()
	}
}

// NewAccumulator implements gauss.Backend.
func (b *Backend) NewAccumulator(p, d int) (gauss.Accumulator, error) {
	ctx, err := b.lockedCtx()
	if err != nil {
		return nil, err
	}
	defer b.mu.Unlock()
	if p <= 0 || d <= 0 {
		return nil, fmt.Errorf("gauss: accumulator shape P=%d D=%d", p, d)
	}
	stage := b.Stage
	if stage <= 0 {
		stage = 128
	}
	a := &accumulator{b: b, p: p, d: d}
	if err := call("accumulator", func(e *C.char, l C.size_t) C.int {
		return C.padim_acc_create(ctx, C.int(p), C.int(d), C.int(stage), &a.acc, e, l)
	}); err != nil {
		return nil, err
	}
	return a, nil
}

// remember caches m as the device copy of g (taking over the caller's reference).
func (b *Backend) remember(g gauss.Model, m *C.padim_model) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.ctx == nil {
		C.padim_model_release(m)
		return
	}
	b.dropCachedLocked()
	b.cachedG, b.cachedM = g, m
}

// Plan says how an accumulator or scorer laid out its data.
type Plan struct {
	Resident    bool // everything on the device (else streamed by patch blocks)
	PatchBlock  int
	Stage       int // images per accumulation pass / per scoring launch
	Precision   Precision
	DeviceBytes int64
	PinnedBytes int64
}

func planOf(p C.padim_plan) Plan {
	return Plan{Resident: p.resident != 0, PatchBlock: int(p.patch_block), Stage: int(p.stage), Precision: Precision(p.precision),
		DeviceBytes: int64(p.device_bytes), PinnedBytes: int64(p.pinned_bytes)}
}

type accumulator struct {
	mu   sync.Mutex
	b    *Backend
	acc  *C.padim_acc // nil once closed
	p, d int
}

func (a *accumulator) Add(x []float32, n int) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.acc == nil {
		return fmt.Errorf("%w: accumulator", ErrClosed)
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

// Stats downloads the statistics (a copy: they stay valid after the next Add).
func (a *accumulator) Stats() (*gauss.Stats, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.acc == nil {
		return nil, fmt.Errorf("%w: accumulator", ErrClosed)
	}
	s := gauss.NewStats(a.p, a.d)
	var n C.int64_t
	err := call("download statistics", func(e *C.char, l C.size_t) C.int {
		return C.padim_acc_stats(a.acc, (*C.double)(unsafe.Pointer(&s.Mean[0])), (*C.double)(unsafe.Pointer(&s.M2[0])), &n, e, l)
	})
	s.N = int64(n)
	return s, err
}

// Factorize turns the statistics into a model where they are: on the device, only
// the model itself is copied back (the float32 mean and L⁻¹ the model file needs).
// The device copy is kept for NewScorer of the returned Gaussian.
func (a *accumulator) Factorize(eps float64) (*gauss.Gaussian, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.acc == nil {
		return nil, fmt.Errorf("%w: accumulator", ErrClosed)
	}
	a.b.applySettings() // the accumulator holds its own context, closed backend or not
	if !(eps >= 0) || math.IsInf(eps, 0) {
		return nil, fmt.Errorf("gauss: regularisation eps must be a finite number >= 0, got %v", eps)
	}
	g := &gauss.Gaussian{P: a.p, D: a.d, Mean: make([]float32, a.p*a.d), LInv: make([]float32, a.p*gauss.PackedLen(a.d))}
	var bad C.int
	var m *C.padim_model
	err := call("factorize", func(e *C.char, l C.size_t) C.int {
		return C.padim_acc_factorize(a.acc, C.double(eps), (*C.float)(unsafe.Pointer(&g.Mean[0])), (*C.float)(unsafe.Pointer(&g.LInv[0])),
			&m, &bad, e, l)
	})
	if bad >= 0 {
		return nil, &gauss.NotPositiveDefiniteError{Patch: int(bad)}
	}
	if err != nil {
		return nil, err
	}
	a.b.remember(g, m)
	return g, nil
}

// flush folds the staged images and waits for the device.
func (a *accumulator) flush() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.acc == nil {
		return fmt.Errorf("%w: accumulator", ErrClosed)
	}
	return call("flush", func(e *C.char, l C.size_t) C.int { return C.padim_acc_flush(a.acc, e, l) })
}

func (a *accumulator) plan() Plan {
	a.mu.Lock()
	defer a.mu.Unlock()
	var p C.padim_plan
	if a.acc != nil {
		C.padim_acc_plan(a.acc, &p)
	}
	return planOf(p)
}

func (a *accumulator) Close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.acc != nil {
		C.padim_acc_destroy(a.acc)
		a.acc = nil
	}
	return nil
}

// Factorize implements gauss.Backend from host statistics (uploaded by patch
// chunks): Cholesky and triangular inverse per patch on the device. The model stays
// on the device for NewScorer of the returned Gaussian.
func (b *Backend) Factorize(s *gauss.Stats, eps float64) (*gauss.Gaussian, error) {
	if err := s.CheckFittable(eps); err != nil {
		return nil, err
	}
	ctx, err := b.lockedCtx()
	if err != nil {
		return nil, err
	}
	b.mu.Unlock() // the factorisation takes a context reference of its own through its model
	C.padim_ctx_retain(ctx)
	defer C.padim_ctx_release(ctx)
	g := &gauss.Gaussian{P: s.P, D: s.D, Mean: make([]float32, s.P*s.D), LInv: make([]float32, s.P*gauss.PackedLen(s.D))}
	var bad C.int
	var m *C.padim_model
	err = call("factorize", func(e *C.char, l C.size_t) C.int {
		return C.padim_factorize(ctx, C.int(s.P), C.int(s.D), C.int64_t(s.N), (*C.double)(unsafe.Pointer(&s.Mean[0])),
			(*C.double)(unsafe.Pointer(&s.M2[0])), C.double(eps), (*C.float)(unsafe.Pointer(&g.Mean[0])),
			(*C.float)(unsafe.Pointer(&g.LInv[0])), &m, &bad, e, l)
	})
	if bad >= 0 {
		return nil, &gauss.NotPositiveDefiniteError{Patch: int(bad)}
	}
	if err != nil {
		return nil, err
	}
	b.remember(g, m)
	return g, nil
}

// NewScorer implements gauss.Backend. A model this backend factorised last is used
// where it is on the device; any other is uploaded once (stream-ordered).
func (b *Backend) NewScorer(g *gauss.Gaussian) (gauss.Scorer, error) {
	if err := g.Check(); err != nil {
		return nil, err
	}
	ctx, err := b.lockedCtx()
	if err != nil {
		return nil, err
	}
	m := b.takeCachedLocked(g)
	batch := b.ScoreBatch
	b.mu.Unlock()
	if batch <= 0 {
		batch = 256
	}
	if m == nil {
		C.padim_ctx_retain(ctx)
		defer C.padim_ctx_release(ctx)
		if err := call("upload model", func(e *C.char, l C.size_t) C.int {
			return C.padim_model_upload(ctx, C.int(g.P), C.int(g.D), (*C.float)(unsafe.Pointer(&g.Mean[0])),
				(*C.float)(unsafe.Pointer(&g.LInv[0])), &m, e, l)
		}); err != nil {
			return nil, err
		}
	}
	defer C.padim_model_release(m) // the scorer holds its own reference
	sc := &scorer{p: g.P, d: g.D}
	if err := call("scorer", func(e *C.char, l C.size_t) C.int {
		return C.padim_scorer_create(m, C.int(batch), &sc.s, e, l)
	}); err != nil {
		return nil, err
	}
	return sc, nil
}

type scorer struct {
	mu   sync.Mutex
	s    *C.padim_scorer // nil once closed
	p, d int
}

func (s *scorer) Score(x []float32, n int, dist []float32) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.s == nil {
		return fmt.Errorf("%w: scorer", ErrClosed)
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

func (s *scorer) plan() Plan {
	s.mu.Lock()
	defer s.mu.Unlock()
	var p C.padim_plan
	if s.s != nil {
		C.padim_scorer_plan(s.s, &p)
	}
	return planOf(p)
}

func (s *scorer) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.s != nil {
		C.padim_scorer_destroy(s.s)
		s.s = nil
	}
	return nil
}

// StagingBuffer implements gauss.Stager: n float32 values in page-locked host memory
// (Go memory registered with the CUDA driver), which uploads read directly, with no
// copy through the library's bounce buffers. The pipeline writes its embeddings there.
// The buffer is ordinary Go memory: it stays valid after the backend is closed, and
// it is unregistered when the garbage collector finds it unreachable. Where the driver
// refuses to lock it (a locked-memory limit), it is returned unlocked and uploads from
// it go through the bounce buffers.
func (b *Backend) StagingBuffer(n int) []float32 {
	if n <= 0 {
		return nil
	}
	const page = 4096 / 4 // float32s per page: the locked range starts on a page
	base := make([]float32, n+page)
	off := (page - int(uintptr(unsafe.Pointer(&base[0]))%4096)/4) % page
	buf := base[off : off+n : off+n]
	p := unsafe.Pointer(&buf[0])
	if err := call("page-lock staging buffer", func(e *C.char, l C.size_t) C.int {
		return C.padim_host_register(p, C.size_t(n*4), e, l)
	}); err != nil {
		return buf
	}
	// The finalizer runs once no slice of base is reachable, before its memory can be
	// reused: nothing reads the range after it is unregistered.
	runtime.SetFinalizer(&base[0], func(*float32) { C.padim_host_unregister(p) })
	return buf
}

var _ gauss.Stager = (*Backend)(nil)

// Transfers are the bytes the CUDA library moved between host and device.
type Transfers struct {
	HostToDevice, HostToDeviceBounced uint64 // bounced: copied by the host into a pinned buffer first
	DeviceToHost, DeviceToHostBounced uint64
	HostCopyBytes                     uint64 // host memcpy into and out of the bounce buffers
	Copies                            uint64
}

// BusTransfers returns the bytes moved over the bus since the last reset, process-wide.
func BusTransfers(reset bool) Transfers {
	var t C.padim_bus
	r := 0
	if reset {
		r = 1
	}
	C.padim_bus_get(&t, C.int(r))
	return Transfers{uint64(t.h2d_bytes), uint64(t.h2d_bounced), uint64(t.d2h_bytes), uint64(t.d2h_bounced),
		uint64(t.host_copy_bytes), uint64(t.copies)}
}

func (t Transfers) String() string {
	return fmt.Sprintf("host→device %d B (%d B bounced), device→host %d B (%d B bounced), host copies %d B, %d copy calls",
		t.HostToDevice, t.HostToDeviceBounced, t.DeviceToHost, t.DeviceToHostBounced, t.HostCopyBytes, t.Copies)
}

// setLaunchWork caps one launch's work (float32-equivalent flops; 0: the default),
// so that tests split patch ranges across launches.
func setLaunchWork(flops float64) { C.padim_set_launch_work(C.double(flops)) }

// liveObjects counts the C objects alive (contexts, accumulators, models, scorers).
func liveObjects() int { return int(C.padim_live_objects()) }

// KernelTime is one kernel's launches and CUDA-event times since the last reset.
type KernelTime struct {
	Name           string
	Launches       int
	TotalMS, MinMS float64
	MaxMS          float64
}

// Profile returns per-kernel times recorded on b's device context while profiling
// was on (PADIM_CUDA_PROFILE set, or SetProfile(true)), and with reset starts over.
func (b *Backend) Profile(reset bool) ([]KernelTime, error) {
	ctx, err := b.lockedCtx()
	if err != nil {
		return nil, err
	}
	defer b.mu.Unlock()
	const n = 1 << 16
	buf := (*C.char)(C.malloc(n))
	defer C.free(unsafe.Pointer(buf))
	r := 0
	if reset {
		r = 1
	}
	if err := call("profile", func(e *C.char, l C.size_t) C.int { return C.padim_ctx_profile(ctx, buf, n, C.int(r), e, l) }); err != nil {
		return nil, err
	}
	var out []KernelTime
	for _, line := range strings.Split(strings.TrimSpace(C.GoString(buf)), "\n") {
		f := strings.Fields(line)
		if len(f) != 5 {
			continue
		}
		k := KernelTime{Name: f[0]}
		k.Launches, _ = strconv.Atoi(f[1])
		k.TotalMS, _ = strconv.ParseFloat(f[2], 64)
		k.MinMS, _ = strconv.ParseFloat(f[3], 64)
		k.MaxMS, _ = strconv.ParseFloat(f[4], 64)
		out = append(out, k)
	}
	return out, nil
}

// SetProfile turns CUDA-event timing of every kernel launch on or off (process-wide).
func SetProfile(on bool) {
	v := 0
	if on {
		v = 1
	}
	C.padim_set_profile(C.int(v))
}

// probeLaunch launches the probe kernel (see padim_probe_launch).
func (b *Backend) probeLaunch(threads, smem int, checked bool) error {
	ctx, err := b.lockedCtx()
	if err != nil {
		return err
	}
	defer b.mu.Unlock()
	c := 0
	if checked {
		c = 1
	}
	return call("probe", func(e *C.char, l C.size_t) C.int {
		return C.padim_probe_launch(ctx, C.int(threads), C.size_t(smem), C.int(c), e, l)
	})
}

// planFit is the layout an accumulator would choose with avail device bytes.
func planFit(p, d, stage int, avail int64) (Plan, bool) {
	var pl C.padim_plan
	rc := C.padim_plan_fit(C.int(p), C.int(d), C.int(stage), C.size_t(avail), &pl)
	return planOf(pl), rc == C.PADIM_OK
}

// factorWorkspace is the device bytes of one patch's factorisation workspace.
func factorWorkspace(d int) int64 { return int64(C.padim_factor_workspace(C.int(d))) }

// FactorizeLowRank implements gauss.LowRankBackend on the device: per patch the
// listed samples' mean (float32 in the model), the centred and scaled samples A, the
// Gram matrix AAᵀ + εI, its Cholesky factor L and M = L⁻¹A, in the factorisation's
// arithmetic (Precision: float64, or double-float on consumer cards). Only the listed
// samples cross the bus, gathered on the host into the pinned copy buffers. The model
// stays on the device for NewLowRankScorer of the returned *gauss.LowRank.
func (b *Backend) FactorizeLowRank(x []float32, samples []int, p, d int, eps float64) (*gauss.LowRank, error) {
	n := len(samples)
	if n < 1 {
		return nil, errors.New("gauss: the low-rank form needs at least 1 training sample")
	}
	if p <= 0 || d <= 0 || len(x)%(p*d) != 0 || len(x) == 0 {
		return nil, fmt.Errorf("gauss: %d values are not whole embeddings of P=%d D=%d", len(x), p, d)
	}
	images := len(x) / (p * d)
	cs := make([]C.int, n)
	for i, s := range samples {
		if s < 0 || s >= images {
			return nil, fmt.Errorf("gauss: sample %d of %d", s, images)
		}
		if err := gauss.CheckFinite(x[s*p*d:(s+1)*p*d], p, d); err != nil {
			return nil, err
		}
		cs[i] = C.int(s)
	}
	if !(eps > 0) || math.IsInf(eps, 0) {
		return nil, fmt.Errorf("gauss: the low-rank form needs a regularisation eps > 0, got %v", eps)
	}
	if int64(n) > math.MaxInt32 || int64(p)*int64(d) > math.MaxInt32 {
		return nil, fmt.Errorf("gpu: low-rank factorisation: %w: N=%d, P·D=%d", ErrLimit, n, p*d)
	}
	ctx, err := b.lockedCtx()
	if err != nil {
		return nil, err
	}
	b.mu.Unlock() // the factorisation takes a context reference of its own through its model
	C.padim_ctx_retain(ctx)
	defer C.padim_ctx_release(ctx)
	lr := &gauss.LowRank{P: p, D: d, N: n, Eps: eps, Mean: make([]float32, p*d), M: make([]float32, p*n*d)}
	var bad C.int
	var m *C.padim_model
	err = call("low-rank factorisation", func(e *C.char, l C.size_t) C.int {
		return C.padim_lowrank_factorize(ctx, C.int(p), C.int(d), C.int(n), (*C.float)(unsafe.Pointer(&x[0])), C.int64_t(images),
			&cs[0], C.double(eps), (*C.float)(unsafe.Pointer(&lr.Mean[0])), (*C.float)(unsafe.Pointer(&lr.M[0])), &m, &bad, e, l)
	})
	if bad >= 0 {
		return nil, &gauss.NotPositiveDefiniteError{Patch: int(bad)}
	}
	if err != nil {
		return nil, err
	}
	b.remember(lr, m)
	return lr, nil
}

// NewLowRankScorer implements gauss.LowRankBackend. A model this backend factorised
// last is used where it is on the device; any other is uploaded once. The distances'
// dot products run in float64 or double-float (Precision, fixed when the scorer is
// made), since ‖y‖² − ‖My‖² cancels; an image's distance does not depend on its batch.
func (b *Backend) NewLowRankScorer(lr *gauss.LowRank) (gauss.Scorer, error) {
	if err := lr.Check(); err != nil {
		return nil, err
	}
	ctx, err := b.lockedCtx()
	if err != nil {
		return nil, err
	}
	m := b.takeCachedLocked(lr)
	batch := b.ScoreBatch
	b.mu.Unlock()
	if batch <= 0 {
		batch = 256
	}
	if m == nil {
		C.padim_ctx_retain(ctx)
		defer C.padim_ctx_release(ctx)
		if err := call("upload low-rank model", func(e *C.char, l C.size_t) C.int {
			return C.padim_lowrank_upload(ctx, C.int(lr.P), C.int(lr.D), C.int(lr.N), C.double(lr.Eps), (*C.float)(unsafe.Pointer(&lr.Mean[0])),
				(*C.float)(unsafe.Pointer(&lr.M[0])), &m, e, l)
		}); err != nil {
			return nil, err
		}
	}
	defer C.padim_model_release(m) // the scorer holds its own reference
	sc := &scorer{p: lr.P, d: lr.D}
	if err := call("scorer", func(e *C.char, l C.size_t) C.int {
		return C.padim_scorer_create(m, C.int(batch), &sc.s, e, l)
	}); err != nil {
		return nil, err
	}
	return sc, nil
}

// lowRankWorkspace is the device bytes per patch of a low-rank factorisation.
func lowRankWorkspace(n, d int) int64 { return int64(C.padim_lowrank_workspace(C.int(n), C.int(d))) }
