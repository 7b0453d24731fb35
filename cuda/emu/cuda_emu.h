// cuda_emu.h — runs padim's CUDA source (cuda/padim_cuda.cu) on the host, for
// tests on machines without a GPU: `make cuda-emu`, then `go test -tags cudaemu ./gpu`.
//
// It is an execution-model emulator, not a translation: the kernels run as written,
// and it enforces what the hardware enforces, so that code which passes here has a
// chance on a GPU:
//   - A device profile (PADIM_EMU_SM, default 86: an RTX 30xx consumer card) sets the
//     limits: 1024 threads per block, 48 KiB of dynamic shared memory per block unless
//     the kernel opted in with cudaFuncSetAttribute, at most the profile's opt-in
//     maximum (99 KiB on sm_86), grid limits, and the fp32:fp64 rate the library reads.
//     A launch beyond them does not run and cudaGetLastError reports it.
//   - Threads are fibers (user-space stacks, switched by a few instructions): every
//     thread of a block really runs, __syncthreads and warp shuffles are barriers, a
//     block whose threads wait at different barriers (or some of which exited) is a
//     launch failure. Blocks run in parallel on PADIM_EMU_THREADS host threads (default:
//     all cores), each with its own shared memory, filled with 0xFF at the start of
//     every block (uninitialised reads show as NaN) and guarded by a canary.
//   - Kernels must take global memory through gptr<T> (a plain T* on the GPU): every
//     access is bounds-checked against the allocation it came from; an access outside
//     any device allocation (a host pointer, a freed or overrun buffer) is a sticky
//     "illegal address" error, as on hardware. Static __shared__ arrays are refused at
//     compile time (the library uses dynamic shared memory only, so the limits above
//     see all of it).
//   - Every stream has a worker thread, the legacy stream (0) too, so streams run
//     asynchronously to the host and to each other; events are honoured (record, wait,
//     synchronise, elapsed time). A missing wait or a host buffer reused too early
//     shows up as a wrong result; PADIM_EMU_COPY_DELAY_US (or the test hook) gives
//     every copy a latency so that it shows reliably. Non-blocking streams and the
//     legacy stream do not wait for each other. Copies from pageable memory behave as
//     the driver's do (H2D returns once the source is staged, D2H is synchronous), and
//     cudaMemcpyAsync calls that use pageable memory are counted.
//   - Optional counters (PADIM_EMU_COUNTERS=1 or emu::set_counting): per kernel, the
//     global-memory bytes requested by threads, the distinct 32-byte sectors touched
//     per launch (the DRAM traffic with an infinite cache), and the flops the kernel
//     annotates with FLOPS()/FP64OPS().
// Device memory is host memory filled with 0xFF (NaN), capped by PADIM_EMU_MEM bytes
// (default 8 GiB). This header must be included in exactly one translation unit:
//   c++ -std=c++20 -pthread -x c++ -include cuda/emu/cuda_emu.h -c cuda/padim_cuda.cu
#pragma once
#define PADIM_CUDA_EMU 1

#include <math.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <vector>

// ---------------------------------------------------------------- vector types

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3 {
  unsigned x, y, z;
};
struct alignas(8) float2 {
  float x, y;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(16) double2 {
  double x, y;
};
inline float2 make_float2(float x, float y) { return float2{x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
inline double2 make_double2(double x, double y) { return double2{x, y}; }

// ---------------------------------------------------------------- runtime types

enum cudaError {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDevicePointer = 17,
  cudaErrorInvalidMemcpyDirection = 21,
  cudaErrorInsufficientDriver = 35,
  cudaErrorNoDevice = 100,
  cudaErrorInvalidDevice = 101,
  cudaErrorInvalidResourceHandle = 400,
  cudaErrorNotReady = 600,
  cudaErrorIllegalAddress = 700,
  cudaErrorLaunchOutOfResources = 701,
  cudaErrorLaunchFailure = 719,
};
typedef enum cudaError cudaError_t;
enum cudaMemcpyKind { cudaMemcpyHostToHost, cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice, cudaMemcpyDefault };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
enum cudaDeviceAttr {
  cudaDevAttrMaxThreadsPerBlock = 1,
  cudaDevAttrMaxGridDimX = 5,
  cudaDevAttrMaxGridDimY = 6,
  cudaDevAttrMaxGridDimZ = 7,
  cudaDevAttrMaxSharedMemoryPerBlock = 8,
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrSingleToDoublePrecisionPerfRatio = 87,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
};
namespace emu {
struct Stream;
struct Event;
}  // namespace emu
typedef emu::Stream *cudaStream_t;
typedef emu::Event *cudaEvent_t;
#define cudaStreamNonBlocking 0x01
#define cudaEventDefault 0x00
#define cudaEventBlockingSync 0x01
#define cudaEventDisableTiming 0x02
#define cudaHostRegisterDefault 0x00
#define cudaHostRegisterPortable 0x01

struct cudaDeviceProp {
  char name[256];
  int major, minor;
  size_t totalGlobalMem;
  size_t sharedMemPerBlock;
  size_t sharedMemPerBlockOptin;
  size_t sharedMemPerMultiprocessor;
  int maxThreadsPerBlock;
  int maxThreadsDim[3];
  int maxGridSize[3];
  int multiProcessorCount;
  int singleToDoublePrecisionPerfRatio;
  int memoryBusWidth;
  int memoryClockRate;
  int clockRate;
  size_t l2CacheSize;
};
struct cudaFuncAttributes {
  size_t sharedSizeBytes;
  size_t constSizeBytes;
  size_t localSizeBytes;
  int maxThreadsPerBlock;
  int numRegs;
  int ptxVersion;
  int binaryVersion;
  int maxDynamicSharedSizeBytes;
};

namespace emu {

// ---------------------------------------------------------------- device profile

struct Profile {
  int sm;
  const char *card;
  size_t smem_default, smem_optin, smem_per_sm;
  int fp64_ratio;
  int sms;
};

inline const Profile &profile() {
  static const Profile p = [] {
    const char *v = getenv("PADIM_EMU_SM");
    const int sm = v ? atoi(v) : 86;
    // Limits from the CUDA C++ Programming Guide, "Technical Specifications per
    // Compute Capability"; fp64 ratios from the same table (throughput section).
    static const Profile table[] = {
        {60, "Tesla P100", 48 << 10, 48 << 10, 64 << 10, 2, 56},
        {61, "GeForce GTX 1080", 48 << 10, 48 << 10, 96 << 10, 32, 20},
        {70, "Tesla V100", 48 << 10, 96 << 10, 96 << 10, 2, 80},
        {75, "GeForce RTX 2080", 48 << 10, 64 << 10, 64 << 10, 32, 46},
        {80, "A100", 48 << 10, 163 << 10, 164 << 10, 2, 108},
        {86, "GeForce RTX 3070", 48 << 10, 99 << 10, 100 << 10, 64, 46},
        {89, "GeForce RTX 4090", 48 << 10, 99 << 10, 100 << 10, 64, 128},
        {90, "H100", 48 << 10, 227 << 10, 228 << 10, 2, 132},
    };
    for (const Profile &q : table)
      if (q.sm == sm) return q;
    fprintf(stderr, "cuda_emu: PADIM_EMU_SM=%d is not a known profile; using 86\n", sm);
    return table[5];
  }();
  return p;
}
constexpr unsigned kMaxThreads = 1024;
constexpr unsigned kMaxBlockZ = 64;
constexpr unsigned kMaxGridX = 2147483647u, kMaxGridYZ = 65535u;

inline size_t env_size(const char *name, size_t def) {
  const char *v = getenv(name);
  return v && *v ? strtoull(v, nullptr, 10) : def;
}

// ---------------------------------------------------------------- errors

inline thread_local cudaError_t t_last_error = cudaSuccess;
inline thread_local char t_last_detail[512];
inline std::mutex err_mu;
inline cudaError_t sticky = cudaSuccess;  // guarded by err_mu
inline std::string sticky_detail;

inline void set_last(cudaError_t e, const char *fmt, ...) {
  t_last_error = e;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(t_last_detail, sizeof t_last_detail, fmt, ap);
  va_end(ap);
  if (getenv("PADIM_EMU_VERBOSE")) fprintf(stderr, "cuda_emu: %s\n", t_last_detail);
}
inline void set_sticky(cudaError_t e, const std::string &what) {
  std::lock_guard<std::mutex> l(err_mu);
  if (sticky == cudaSuccess) {
    sticky = e;
    sticky_detail = what;
    if (getenv("PADIM_EMU_VERBOSE")) fprintf(stderr, "cuda_emu: sticky error: %s\n", what.c_str());
  }
}
inline cudaError_t get_sticky() {
  std::lock_guard<std::mutex> l(err_mu);
  return sticky;
}
// ret returns e from an API call, recording it as the thread's last error.
inline cudaError_t ret(cudaError_t e) {
  if (e != cudaSuccess) t_last_error = e;
  return e;
}

// ---------------------------------------------------------------- memory

enum Kind { kDevice, kPinned, kRegistered };

struct Alloc {
  char *base;
  size_t size;
  Kind kind;
  // counters: one bit per 32-byte sector, read and written, per launch
  std::atomic<std::atomic<uint64_t> *> rbits{nullptr}, wbits{nullptr};
  std::atomic<uint64_t> last_job{0};
};

inline std::mutex mem_mu;
inline std::map<uintptr_t, Alloc *> allocs;  // by base address
inline size_t device_bytes = 0;
inline size_t mem_limit() { return env_size("PADIM_EMU_MEM", (size_t)8 << 30); }

// find returns the allocation holding [p, p+n), or null.
inline Alloc *find_locked(const void *p, size_t n) {
  const uintptr_t a = (uintptr_t)p;
  auto it = allocs.upper_bound(a);
  if (it == allocs.begin()) return nullptr;
  --it;
  Alloc *al = it->second;
  if (a >= (uintptr_t)al->base && a + n <= (uintptr_t)al->base + al->size) return al;
  return nullptr;
}
inline Alloc *find(const void *p, size_t n) {
  std::lock_guard<std::mutex> l(mem_mu);
  return find_locked(p, n);
}

// ---------------------------------------------------------------- counters

inline std::atomic<bool> counting{getenv("PADIM_EMU_COUNTERS") != nullptr || (getenv("PADIM_EMU_REPORT") && *getenv("PADIM_EMU_REPORT"))};
inline bool report_wanted() {
  const char *p = getenv("PADIM_EMU_REPORT");
  return p && *p;
}
// With PADIM_EMU_REPORT set, counting stays on for the whole process.
inline void set_counting(bool on) { counting.store(on || report_wanted()); }

struct Counters {
  uint64_t launches = 0, blocks = 0, threads = 0;
  uint64_t read_bytes = 0, write_bytes = 0;        // requested by threads
  uint64_t read_sectors = 0, write_sectors = 0;    // distinct 32-byte sectors per launch
  uint64_t flops = 0, fp64 = 0;                    // annotated
  void add(const Counters &o) {
    launches += o.launches;
    blocks += o.blocks;
    threads += o.threads;
    read_bytes += o.read_bytes;
    write_bytes += o.write_bytes;
    read_sectors += o.read_sectors;
    write_sectors += o.write_sectors;
    flops += o.flops;
    fp64 += o.fp64;
  }
};
inline std::mutex ctr_mu;
inline std::map<std::string, Counters> per_kernel;  // guarded by ctr_mu
inline std::map<std::string, Counters> all_kernels;  // never reset: padim_emu_report; guarded by ctr_mu

// ---------------------------------------------------------------- fibers

#if defined(__x86_64__)
extern "C" void emu_fiber_switch(void **save_sp, void *to_sp);
extern "C" void emu_fiber_entry();
asm(R"(
  .text
  .globl emu_fiber_switch
  .type emu_fiber_switch,@function
emu_fiber_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size emu_fiber_switch, .-emu_fiber_switch
  .globl emu_fiber_entry
  .type emu_fiber_entry,@function
emu_fiber_entry:
  movq %r12, %rdi
  callq *%r13
  ud2
  .size emu_fiber_entry, .-emu_fiber_entry
)");
#else
#error "cuda_emu.h: fibers are implemented for x86-64 only"
#endif

enum FiberState { kRunnable, kRunning, kWaitBlock, kWaitWarp, kDone };

struct Job;
struct Exec;

struct Fiber {
  void *sp = nullptr;
  char *stack = nullptr;  // lowest usable address
  uint3 idx{0, 0, 0};
  unsigned tid = 0, lane = 0, warp = 0;
  FiberState state = kDone;
  Exec *exec = nullptr;
};

constexpr size_t kStack = 192 << 10;
constexpr size_t kGuard = 4096;
constexpr size_t kCanary = 64;

struct Exec {
  void *sched_sp = nullptr;
  char *stacks = nullptr;
  Fiber fibers[kMaxThreads];
  Fiber *cur = nullptr;
  Job *job = nullptr;
  uint64_t last_job = 0;
  uint3 block{0, 0, 0};
  unsigned nthreads = 0, block_arrived = 0;
  unsigned warp_arrived[kMaxThreads / 32];
  unsigned warp_size[kMaxThreads / 32];
  alignas(16) unsigned char slots[kMaxThreads][16];  // warp shuffle exchange
  std::vector<unsigned char> smem;                   // dynamic shared memory + canary, 16-aligned
  unsigned char *smem_base = nullptr;
  bool failed = false;
  Counters ctr;
  Exec() {
    const size_t per = kStack + kGuard;
    stacks = (char *)mmap(nullptr, per * kMaxThreads, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (stacks == MAP_FAILED) {
      perror("cuda_emu: fiber stacks");
      abort();
    }
    for (unsigned i = 0; i < kMaxThreads; i++) {
      mprotect(stacks + i * per, kGuard, PROT_NONE);  // a stack overflow faults instead of corrupting
      fibers[i].stack = stacks + i * per + kGuard;
      fibers[i].exec = this;
    }
  }
};
inline thread_local Exec *t_exec = nullptr;

// ---------------------------------------------------------------- kernel jobs

struct Job {
  std::string name;
  dim3 grid, block;
  size_t smem = 0;
  std::function<void()> invoke;  // runs the kernel body for the current fiber
  unsigned long long nblocks = 0;
  std::atomic<unsigned long long> next{0}, finished{0};
  uint64_t id = 0;
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  std::atomic<bool> failed{false};
  std::string fail_msg;  // guarded by mu
  bool count = false;
  Counters ctr;  // guarded by mu
  std::mutex touched_mu;
  std::vector<Alloc *> touched;
  void fail(const std::string &m) {
    bool expected = false;
    if (failed.compare_exchange_strong(expected, true)) {
      std::lock_guard<std::mutex> l(mu);
      fail_msg = m;
    }
  }
};
inline std::atomic<uint64_t> next_job_id{1};

[[noreturn]] inline void fiber_main(Fiber *f) {
  Exec *e = f->exec;
  e->job->invoke();
  f->state = kDone;
  emu_fiber_switch(&f->sp, e->sched_sp);
  abort();  // a finished fiber is never resumed
}

inline void fiber_start(Fiber *f) {
  uintptr_t top = ((uintptr_t)(f->stack + kStack)) & ~(uintptr_t)15;
  uint64_t *sp = (uint64_t *)top;
  *--sp = (uint64_t)(void *)&emu_fiber_entry;  // ret target
  *--sp = 0;                                  // rbp
  *--sp = 0;                                  // rbx
  *--sp = (uint64_t)f;                        // r12: argument
  *--sp = (uint64_t)(void *)&fiber_main;      // r13: function
  *--sp = 0;                                  // r14
  *--sp = 0;                                  // r15
  *--sp = (uint64_t)0x1F80 | ((uint64_t)0x037F << 32);  // mxcsr, x87 control word
  f->sp = sp;
  f->state = kRunnable;
}

inline void yield_to_scheduler(Fiber *f) { emu_fiber_switch(&f->sp, f->exec->sched_sp); }

inline void syncthreads() {
  Exec *e = t_exec;
  if (++e->block_arrived == e->nthreads) {
    e->block_arrived = 0;
    for (unsigned i = 0; i < e->nthreads; i++)
      if (e->fibers[i].state == kWaitBlock) e->fibers[i].state = kRunnable;
    return;
  }
  e->cur->state = kWaitBlock;
  yield_to_scheduler(e->cur);
}

inline void syncwarp() {
  Exec *e = t_exec;
  const unsigned w = e->cur->warp;
  if (++e->warp_arrived[w] == e->warp_size[w]) {
    e->warp_arrived[w] = 0;
    for (unsigned i = w * 32; i < w * 32 + e->warp_size[w]; i++)
      if (e->fibers[i].state == kWaitWarp) e->fibers[i].state = kRunnable;
    return;
  }
  e->cur->state = kWaitWarp;
  yield_to_scheduler(e->cur);
}

// run_block runs every thread of one block to completion (or reports a deadlock).
inline void run_block(Exec *e, Job *j, unsigned long long b) {
  const dim3 g = j->grid, bd = j->block;
  e->block = uint3{(unsigned)(b % g.x), (unsigned)((b / g.x) % g.y), (unsigned)(b / ((unsigned long long)g.x * g.y))};
  const unsigned n = bd.x * bd.y * bd.z;
  e->nthreads = n;
  e->block_arrived = 0;
  for (unsigned w = 0; w < (n + 31) / 32; w++) {
    e->warp_arrived[w] = 0;
    e->warp_size[w] = std::min(32u, n - 32 * w);
  }
  memset(e->smem.data(), 0xFF, e->smem.size());
  for (unsigned t = 0; t < n; t++) {
    Fiber *f = &e->fibers[t];
    f->tid = t;
    f->idx = uint3{t % bd.x, (t / bd.x) % bd.y, t / (bd.x * bd.y)};
    f->lane = t % 32;
    f->warp = t / 32;
    fiber_start(f);
  }
  unsigned done = 0;
  while (done < n) {
    bool progress = false;
    for (unsigned t = 0; t < n; t++) {
      Fiber *f = &e->fibers[t];
      if (f->state != kRunnable) continue;
      e->cur = f;
      f->state = kRunning;
      emu_fiber_switch(&e->sched_sp, f->sp);
      progress = true;
      if (f->state == kDone) done++;
    }
    if (!progress) {
      unsigned at_block = 0, at_warp = 0;
      for (unsigned t = 0; t < n; t++) {
        at_block += e->fibers[t].state == kWaitBlock;
        at_warp += e->fibers[t].state == kWaitWarp;
      }
      char m[256];
      snprintf(m, sizeof m, "kernel %s block (%u,%u,%u): deadlock: %u threads wait at __syncthreads, %u at a warp barrier, %u exited",
               j->name.c_str(), e->block.x, e->block.y, e->block.z, at_block, at_warp, done);
      j->fail(m);
      break;
    }
  }
  for (size_t i = e->smem.size() - kCanary; i < e->smem.size(); i++) {
    if (e->smem[i] != 0xFF) {
      char m[200];
      snprintf(m, sizeof m, "kernel %s block (%u,%u,%u) wrote past its %zu bytes of dynamic shared memory", j->name.c_str(),
               e->block.x, e->block.y, e->block.z, j->smem);
      j->fail(m);
      break;
    }
  }
}

// ---------------------------------------------------------------- executor pool

struct Pool {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<Job *> q;
  unsigned workers = 0;
  void start() {
    workers = (unsigned)env_size("PADIM_EMU_THREADS", std::max(1u, std::thread::hardware_concurrency()));
    for (unsigned i = 0; i < workers; i++) std::thread([this] { loop(); }).detach();
  }
  void loop() {
    Exec *e = new Exec();  // never freed: the pool lives as long as the process
    t_exec = e;
    for (;;) {
      Job *j;
      unsigned long long b;
      {
        std::unique_lock<std::mutex> l(mu);
        // A job leaves the queue when its last block is handed out (under mu), so the
        // queue never holds a job whose owner may already have freed it.
        while (q.empty()) cv.wait(l);
        j = q.front();
        b = j->next.fetch_add(1);
        if (b + 1 >= j->nblocks) q.pop_front();
      }
      e->job = j;
      if (e->last_job != j->id) {
        e->last_job = j->id;
        e->smem.assign(((j->smem + 15) & ~(size_t)15) + kCanary, 0xFF);
      }
      e->ctr = Counters{};
      if (!j->failed.load()) run_block(e, j, b);
      {
        std::lock_guard<std::mutex> l(j->mu);
        e->ctr.blocks = 1;
        j->ctr.add(e->ctr);
      }
      if (j->finished.fetch_add(1) + 1 == j->nblocks) {
        std::lock_guard<std::mutex> l(j->mu);
        j->done = true;
        j->cv.notify_all();
      }
      e->job = nullptr;  // a later job may reuse this address
    }
  }
  void run(Job *j) {
    {
      std::lock_guard<std::mutex> l(mu);
      q.push_back(j);
    }
    cv.notify_all();
    std::unique_lock<std::mutex> l(j->mu);
    j->cv.wait(l, [j] { return j->done; });
  }
};
inline Pool &pool() {
  static Pool *p = [] {
    Pool *q = new Pool();
    q->start();
    return q;
  }();
  return *p;
}

// ---------------------------------------------------------------- global memory access

// fault records an illegal access by the running kernel.
inline void fault(const void *p, size_t n, const Alloc *a, bool write) {
  Exec *e = t_exec;
  char m[320];
  if (a)
    snprintf(m, sizeof m, "kernel %s: %s of %zu bytes at offset %lld of a %zu-byte allocation (out of bounds)",
             e && e->job ? e->job->name.c_str() : "?", write ? "write" : "read", n, (long long)((const char *)p - a->base), a->size);
  else
    snprintf(m, sizeof m, "kernel %s: %s of %zu bytes at %p, which is not device memory", e && e->job ? e->job->name.c_str() : "?",
             write ? "write" : "read", n, p);
  if (e && e->job) e->job->fail(m);
}

inline std::atomic<uint64_t> *bits_of(std::atomic<std::atomic<uint64_t> *> &slot, size_t words) {
  std::atomic<uint64_t> *b = slot.load(std::memory_order_acquire);
  if (b) return b;
  std::atomic<uint64_t> *fresh = new std::atomic<uint64_t>[words]();
  if (slot.compare_exchange_strong(b, fresh)) return fresh;
  delete[] fresh;
  return b;
}

inline void count_access(Alloc *a, const void *p, size_t n, bool write) {
  Exec *e = t_exec;
  if (!e || !e->job || !e->job->count) return;
  Job *j = e->job;
  (write ? e->ctr.write_bytes : e->ctr.read_bytes) += n;
  if (a->last_job.exchange(j->id) != j->id) {
    std::lock_guard<std::mutex> l(j->touched_mu);
    j->touched.push_back(a);
  }
  const size_t words = (a->size / 32 + 64) / 64;
  std::atomic<uint64_t> *bits = bits_of(write ? a->wbits : a->rbits, words);
  const size_t s0 = (size_t)((const char *)p - a->base) / 32, s1 = (size_t)((const char *)p - a->base + n - 1) / 32;
  for (size_t s = s0; s <= s1; s++) bits[s / 64].fetch_or(1ull << (s % 64), std::memory_order_relaxed);
}

inline void access(Alloc *a, const void *p, size_t n, bool write) {
  if (!a || (const char *)p < a->base || (const char *)p + n > a->base + a->size) {
    fault(p, n, a, write);
    return;
  }
  if (counting.load(std::memory_order_relaxed)) count_access(a, p, n, write);
}

template <class T>
struct gref {
  T *p;
  Alloc *a;
  using V = std::remove_const_t<T>;
  bool ok(bool write) const {
    access(a, p, sizeof(T), write);
    return a && (const char *)p >= a->base && (const char *)p + sizeof(T) <= a->base + a->size;
  }
  operator V() const {
    if (!ok(false)) return V{};
    return *p;
  }
  template <class U = T, std::enable_if_t<!std::is_const_v<U>, int> = 0>
  const gref &operator=(const V &v) const {
    if (ok(true)) *p = v;
    return *this;
  }
  const gref &operator=(const gref &o) const {
    const V v = o;
    return *this = v;
  }
#define EMU_GREF_OP(op)                                                \
  template <class U = T, std::enable_if_t<!std::is_const_v<U>, int> = 0> \
  const gref &operator op##=(const V &v) const {                       \
    if (ok(false) && ok(true)) *p op## = v;                            \
    return *this;                                                      \
  }
  EMU_GREF_OP(+)
  EMU_GREF_OP(-)
  EMU_GREF_OP(*)
  EMU_GREF_OP(/)
  EMU_GREF_OP(|)
#undef EMU_GREF_OP
};

// lookup finds the allocation of a raw pointer passed to a kernel (null if none).
inline Alloc *lookup(const void *p) {
  if (!p) return nullptr;
  std::lock_guard<std::mutex> l(mem_mu);
  Alloc *a = find_locked(p, 1);
  if (a && a->kind == kRegistered) return nullptr;  // pageable memory, registered or not, is not device-addressable here
  return a;
}

}  // namespace emu

// gptr is a pointer to global memory: T* on the GPU; here it carries its allocation
// so that every access is checked and (optionally) counted.
template <class T>
struct gptr {
  T *p = nullptr;
  emu::Alloc *a = nullptr;
  gptr() = default;
  gptr(std::nullptr_t) {}
  gptr(T *q) : p(q), a(emu::lookup(q)) {}
  gptr(T *q, emu::Alloc *al) : p(q), a(al) {}
  template <class U, std::enable_if_t<std::is_convertible_v<U *, T *> && !std::is_same_v<U, T>, int> = 0>
  gptr(const gptr<U> &o) : p(o.p), a(o.a) {}
  gptr operator+(long long k) const { return gptr(p + k, a); }
  gptr operator-(long long k) const { return gptr(p - k, a); }
  gptr &operator+=(long long k) {
    p += k;
    return *this;
  }
  gptr &operator-=(long long k) {
    p -= k;
    return *this;
  }
  emu::gref<T> operator[](long long k) const { return emu::gref<T>{p + k, a}; }
  emu::gref<T> operator*() const { return emu::gref<T>{p, a}; }
  explicit operator bool() const { return p != nullptr; }
};
template <class U, class T>
inline gptr<U> gptr_cast(gptr<T> q) {
  return gptr<U>(reinterpret_cast<U *>(q.p), q.a);
}

// ---------------------------------------------------------------- CUDA C++ surface

#define threadIdx (emu::t_exec->cur->idx)
#define blockIdx (emu::t_exec->block)
#define blockDim (emu::t_exec->job->block)
#define gridDim (emu::t_exec->job->grid)
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#ifndef PADIM_EMU_STATIC_SHARED
// Static shared memory is invisible to the launch checks: the library declares all of
// its shared memory dynamically (DYNAMIC_SHARED), so this is a compile error here.
#define __shared__ static_assert(false, "cuda_emu: use DYNAMIC_SHARED, not __shared__");
#else
// Legacy sources (cuda/emu/traffic): thread_local statics are per block, since a
// host thread runs one block at a time; their size is not checked.
#define __shared__ static thread_local
#endif
#define __syncthreads() emu::syncthreads()
#define __syncwarp(...) emu::syncwarp()
#define DYNAMIC_SHARED(T, name) T *name = reinterpret_cast<T *>(emu::t_exec->smem.data())
#define FLOPS(n) (emu::t_exec->ctr.flops += (uint64_t)(n))
#define FP64OPS(n) (emu::t_exec->ctr.fp64 += (uint64_t)(n))

template <class T>
inline T emu_shfl(T v, unsigned src_lane) {
  static_assert(sizeof(T) <= 16, "shuffle of a large type");
  emu::Exec *e = emu::t_exec;
  memcpy(e->slots[e->cur->tid], &v, sizeof(T));
  emu::syncwarp();
  T r;
  memcpy(&r, e->slots[e->cur->warp * 32 + (src_lane % e->warp_size[e->cur->warp])], sizeof(T));
  emu::syncwarp();
  return r;
}
template <class T>
inline T __shfl_xor_sync(unsigned, T v, int lane_mask) { return emu_shfl(v, emu::t_exec->cur->lane ^ (unsigned)lane_mask); }
template <class T>
inline T __shfl_sync(unsigned, T v, int src) { return emu_shfl(v, (unsigned)src); }
template <class T>
inline T __shfl_down_sync(unsigned, T v, unsigned d) {
  const unsigned l = emu::t_exec->cur->lane + d;
  return emu_shfl(v, l < 32 ? l : emu::t_exec->cur->lane);
}

template <class T>
inline T min(T a, T b) { return a < b ? a : b; }
template <class T>
inline T max(T a, T b) { return a < b ? b : a; }
using std::fma;
using std::fmax;
using std::fmin;
using std::isfinite;
using std::sqrt;
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline double __fma_rn(double a, double b, double c) { return fma(a, b, c); }
inline float __fsqrt_rn(float a) { return sqrtf(a); }
inline float __fdiv_rn(float a, float b) { return a / b; }
// Never contracted into an FMA, as on the GPU: GCC contracts a*b + c by default
// (-ffp-contract=fast, also in -std=c++20), so the result passes an optimisation barrier.
inline float __fmul_rn(float a, float b) {
  float r = a * b;
  asm("" : "+x"(r));
  return r;
}
inline float __fadd_rn(float a, float b) {
  float r = a + b;
  asm("" : "+x"(r));
  return r;
}

// ---------------------------------------------------------------- streams and events

namespace emu {

// An event's state is shared with the stream operations that record or wait for it,
// so that destroying the event while they are queued is safe (as the runtime defers it).
struct EventState {
  std::mutex mu;
  std::condition_variable cv;
  unsigned long long recorded = 0, completed = 0;
  std::chrono::steady_clock::time_point when;
  bool timing = true;
};
struct Event {
  std::shared_ptr<EventState> st = std::make_shared<EventState>();
};

// The time some stream was running an operation (a kernel, copy or memset, with the
// emulator's own bookkeeping): what a GPU would do instead, for the dry run's estimates.
inline std::mutex busy_mu;
inline int busy_n = 0;
inline std::chrono::steady_clock::time_point busy_t0;
inline uint64_t busy_ns = 0;
inline void busy(bool begin) {
  std::lock_guard<std::mutex> l(busy_mu);
  const auto now = std::chrono::steady_clock::now();
  if (begin) {
    if (busy_n++ == 0) busy_t0 = now;
  } else if (--busy_n == 0) {
    busy_ns += (uint64_t)std::chrono::duration_cast<std::chrono::nanoseconds>(now - busy_t0).count();
  }
}

struct Stream {
  std::mutex mu;
  std::condition_variable cv, idle;
  std::deque<std::function<void()>> q;
  bool busy = false, stop = false;
  std::thread worker;
  Stream() {
    worker = std::thread([this] {
      std::unique_lock<std::mutex> l(mu);
      for (;;) {
        cv.wait(l, [this] { return stop || !q.empty(); });
        if (q.empty()) return;  // stop
        auto op = std::move(q.front());
        q.pop_front();
        busy = true;
        l.unlock();
        emu::busy(true);
        op();
        emu::busy(false);
        l.lock();
        busy = false;
        if (q.empty()) idle.notify_all();
      }
    });
  }
  void enqueue(std::function<void()> op) {
    {
      std::lock_guard<std::mutex> l(mu);
      q.push_back(std::move(op));
    }
    cv.notify_one();
  }
  void drain() {
    std::unique_lock<std::mutex> l(mu);
    idle.wait(l, [this] { return q.empty() && !busy; });
  }
  ~Stream() {
    {
      std::lock_guard<std::mutex> l(mu);
      stop = true;
    }
    cv.notify_one();
    worker.join();
  }
};

inline std::mutex streams_mu;
// live streams, for device-wide synchronisation; shared so that a stream destroyed by
// one thread while another synchronises the device stays alive until both are done
inline std::map<Stream *, std::shared_ptr<Stream>> streams;

// legacy is the default stream (0). Its work runs on a worker of its own, in order;
// the library's streams are non-blocking, so it waits for none of them, nor they for it.
inline Stream *legacy() {
  static Stream *s = new Stream();  // never destroyed: it outlives every caller
  return s;
}

inline void drain_all() {
  std::vector<std::shared_ptr<Stream>> all;
  {
    std::lock_guard<std::mutex> l(streams_mu);
    for (auto &kv : streams) all.push_back(kv.second);
  }
  for (auto &s : all) s->drain();
  legacy()->drain();
}
inline bool live_stream(Stream *s) {
  std::lock_guard<std::mutex> l(streams_mu);
  return streams.count(s) != 0;
}

// submit queues op on stream s (0: the legacy stream).
inline void submit(Stream *s, std::function<void()> op) { (s ? s : legacy())->enqueue(std::move(op)); }
inline void drain(Stream *s) { (s ? s : legacy())->drain(); }

inline std::atomic<uint64_t> pageable_async{0};  // cudaMemcpyAsync calls with pageable host memory
inline std::atomic<uint64_t> copied[4];           // bytes by cudaMemcpyKind
inline std::atomic<int> copy_delay_us{(int)env_size("PADIM_EMU_COPY_DELAY_US", 0)};

// dma runs a copy on a stream's worker after the emulated transfer latency.
inline void dma(void *d, const void *s, size_t n) {
  if (int us = copy_delay_us.load()) std::this_thread::sleep_for(std::chrono::microseconds(us));
  memmove(d, s, n);
}

// ---------------------------------------------------------------- launches


inline std::mutex func_mu;
inline std::unordered_map<const void *, size_t> func_max_dynamic;  // cudaFuncSetAttribute

inline size_t max_dynamic(const void *f) {
  std::lock_guard<std::mutex> l(func_mu);
  auto it = func_max_dynamic.find(f);
  return it == func_max_dynamic.end() ? profile().smem_default : it->second;
}

inline void finish_counters(Job *j) {
  if (!j->count) return;
  Counters c = j->ctr;
  c.launches = 1;
  c.threads = (uint64_t)j->nblocks * j->block.x * j->block.y * j->block.z;
  for (Alloc *a : j->touched) {
    const size_t words = (a->size / 32 + 64) / 64;
    for (int w = 0; w < 2; w++) {
      std::atomic<uint64_t> *b = (w ? a->wbits : a->rbits).load();
      if (!b) continue;
      uint64_t n = 0;
      for (size_t i = 0; i < words; i++) n += std::popcount(b[i].exchange(0, std::memory_order_relaxed));
      (w ? c.write_sectors : c.read_sectors) += n;
    }
  }
  std::lock_guard<std::mutex> l(ctr_mu);
  per_kernel[j->name].add(c);
  all_kernels[j->name].add(c);
}

template <class Param, class Arg>
inline Param convert_arg(Arg &&a) {
  return Param(std::forward<Arg>(a));
}

template <typename... KArgs, typename... Args>
void launch(const char *name, void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, Stream *stream, Args &&...args) {
  static_assert(sizeof...(KArgs) == sizeof...(Args), "kernel launched with the wrong number of arguments");
  const unsigned long long nthreads = (unsigned long long)block.x * block.y * block.z;
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || nthreads == 0 || nthreads > kMaxThreads || block.z > kMaxBlockZ ||
      grid.x > kMaxGridX || grid.y > kMaxGridYZ || grid.z > kMaxGridYZ) {
    set_last(cudaErrorInvalidConfiguration, "launch of %s: invalid configuration grid (%u,%u,%u) block (%u,%u,%u)", name, grid.x, grid.y,
             grid.z, block.x, block.y, block.z);
    return;
  }
  const size_t allowed = max_dynamic((const void *)kernel);
  if (smem > allowed) {
    set_last(cudaErrorInvalidValue, "launch of %s: %zu bytes of dynamic shared memory, %zu allowed (sm_%d%s)", name, smem, allowed,
             profile().sm, allowed < profile().smem_optin ? "; cudaFuncSetAttribute raises the limit" : "");
    return;
  }
  if (stream && !live_stream(stream)) {
    set_last(cudaErrorInvalidResourceHandle, "launch of %s on a destroyed stream", name);
    return;
  }
  // Arguments are converted once (device pointers found), then copied per thread.
  auto conv = std::make_shared<std::tuple<KArgs...>>(convert_arg<KArgs>(std::forward<Args>(args))...);
  auto job = std::make_shared<Job>();
  job->name = name;
  job->grid = grid;
  job->block = block;
  job->smem = smem;
  job->nblocks = (unsigned long long)grid.x * grid.y * grid.z;
  job->id = next_job_id.fetch_add(1);
  job->invoke = [kernel, conv] { std::apply(kernel, *conv); };
  submit(stream, [job] {
    if (get_sticky() != cudaSuccess) return;  // a faulted context runs nothing more
    job->count = counting.load();
    pool().run(job.get());
    finish_counters(job.get());
    if (job->failed.load()) {
      const bool addr = job->fail_msg.find("not device memory") != std::string::npos || job->fail_msg.find("out of bounds") != std::string::npos;
      set_sticky(addr ? cudaErrorIllegalAddress : cudaErrorLaunchFailure, job->fail_msg);
    }
  });
}

}  // namespace emu

#define LAUNCH(kernel, grid, block, smem, stream, ...) \
  emu::launch(#kernel, kernel, dim3(grid), dim3(block), (size_t)(smem), stream, __VA_ARGS__)

// ---------------------------------------------------------------- runtime API

inline const char *cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory (emulated device)";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevicePointer: return "invalid device pointer";
    case cudaErrorInvalidMemcpyDirection: return "invalid copy direction for memcpy";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected (emulator disabled by PADIM_EMU_NO_DEVICE)";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorNotReady: return "device not ready";
    case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
    case cudaErrorLaunchOutOfResources: return "too many resources requested for launch";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    default: return "emulated CUDA error";
  }
}
inline cudaError_t cudaGetLastError() {
  cudaError_t s = emu::get_sticky();
  if (s != cudaSuccess) return s;
  cudaError_t e = emu::t_last_error;
  emu::t_last_error = cudaSuccess;
  return e;
}
inline cudaError_t cudaPeekAtLastError() {
  cudaError_t s = emu::get_sticky();
  return s != cudaSuccess ? s : emu::t_last_error;
}
inline cudaError_t cudaGetDeviceCount(int *n) {
  *n = getenv("PADIM_EMU_NO_DEVICE") ? 0 : 1;
  return *n ? cudaSuccess : emu::ret(cudaErrorNoDevice);
}
inline cudaError_t cudaSetDevice(int d) { return d == 0 ? cudaSuccess : emu::ret(cudaErrorInvalidDevice); }
inline cudaError_t cudaGetDevice(int *d) {
  *d = 0;
  return cudaSuccess;
}
inline cudaError_t cudaDriverGetVersion(int *v) {
  *v = 0;
  return cudaSuccess;
}
inline cudaError_t cudaRuntimeGetVersion(int *v) {
  *v = 0;
  return cudaSuccess;
}
inline cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int d) {
  if (d != 0) return emu::ret(cudaErrorInvalidDevice);
  const emu::Profile &pr = emu::profile();
  memset(p, 0, sizeof *p);
  snprintf(p->name, sizeof p->name, "padim CUDA emulator (%s limits, host threads)", pr.card);
  p->major = pr.sm / 10;
  p->minor = pr.sm % 10;
  p->totalGlobalMem = emu::mem_limit();
  p->sharedMemPerBlock = pr.smem_default;
  p->sharedMemPerBlockOptin = pr.smem_optin;
  p->sharedMemPerMultiprocessor = pr.smem_per_sm;
  p->maxThreadsPerBlock = emu::kMaxThreads;
  p->maxThreadsDim[0] = p->maxThreadsDim[1] = 1024;
  p->maxThreadsDim[2] = emu::kMaxBlockZ;
  p->maxGridSize[0] = (int)emu::kMaxGridX;
  p->maxGridSize[1] = p->maxGridSize[2] = (int)emu::kMaxGridYZ;
  p->multiProcessorCount = pr.sms;
  p->singleToDoublePrecisionPerfRatio = pr.fp64_ratio;
  return cudaSuccess;
}
inline cudaError_t cudaDeviceGetAttribute(int *v, cudaDeviceAttr a, int d) {
  cudaDeviceProp p;
  if (cudaError_t e = cudaGetDeviceProperties(&p, d)) return e;
  switch (a) {
    case cudaDevAttrMaxThreadsPerBlock: *v = p.maxThreadsPerBlock; break;
    case cudaDevAttrMaxGridDimX: *v = p.maxGridSize[0]; break;
    case cudaDevAttrMaxGridDimY: *v = p.maxGridSize[1]; break;
    case cudaDevAttrMaxGridDimZ: *v = p.maxGridSize[2]; break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *v = (int)p.sharedMemPerBlock; break;
    case cudaDevAttrMultiProcessorCount: *v = p.multiProcessorCount; break;
    case cudaDevAttrSingleToDoublePrecisionPerfRatio: *v = p.singleToDoublePrecisionPerfRatio; break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *v = (int)p.sharedMemPerBlockOptin; break;
    default: return emu::ret(cudaErrorInvalidValue);
  }
  return cudaSuccess;
}
inline cudaError_t cudaMemGetInfo(size_t *freeb, size_t *total) {
  std::lock_guard<std::mutex> l(emu::mem_mu);
  *total = emu::mem_limit();
  *freeb = *total > emu::device_bytes ? *total - emu::device_bytes : 0;
  return cudaSuccess;
}
template <class K>
inline cudaError_t cudaFuncSetAttribute(K *f, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 || (size_t)value > emu::profile().smem_optin)
    return emu::ret(cudaErrorInvalidValue);
  std::lock_guard<std::mutex> l(emu::func_mu);
  emu::func_max_dynamic[(const void *)f] = (size_t)value;
  return cudaSuccess;
}
template <class K>
inline cudaError_t cudaFuncGetAttributes(cudaFuncAttributes *a, K *f) {
  memset(a, 0, sizeof *a);
  a->maxThreadsPerBlock = emu::kMaxThreads;  // registers are not modelled
  a->maxDynamicSharedSizeBytes = (int)emu::max_dynamic((const void *)f);
  return cudaSuccess;
}

namespace emu {
inline cudaError_t alloc(void **p, size_t n, Kind kind) {
  *p = nullptr;
  if (get_sticky() != cudaSuccess) return get_sticky();
  std::lock_guard<std::mutex> l(mem_mu);
  if (kind == kDevice && (n > mem_limit() || device_bytes + n > mem_limit())) return ret(cudaErrorMemoryAllocation);
  char *q = (char *)aligned_alloc(256, ((n ? n : 1) + 255) & ~(size_t)255);
  if (!q) return ret(cudaErrorMemoryAllocation);
  memset(q, 0xFF, n);
  Alloc *a = new Alloc();
  a->base = q;
  a->size = n;
  a->kind = kind;
  allocs[(uintptr_t)q] = a;
  if (kind == kDevice) device_bytes += n;
  *p = q;
  return cudaSuccess;
}
inline cudaError_t release(void *p, Kind kind) {
  if (!p) return cudaSuccess;
  drain_all();  // cudaFree synchronises the device
  std::lock_guard<std::mutex> l(mem_mu);
  auto it = allocs.find((uintptr_t)p);
  if (it == allocs.end() || it->second->kind != kind) return ret(cudaErrorInvalidValue);
  Alloc *a = it->second;
  if (kind == kDevice) device_bytes -= a->size;
  allocs.erase(it);
  free(a->base);
  delete[] a->rbits.load();
  delete[] a->wbits.load();
  delete a;
  return cudaSuccess;
}
// is_pinned: host memory the copy engines can read at execution time.
inline bool is_pinned(const void *p, size_t n) {
  std::lock_guard<std::mutex> l(mem_mu);
  Alloc *a = find_locked(p, n);
  return a && (a->kind == kPinned || a->kind == kRegistered);
}
inline bool is_device(const void *p, size_t n) {
  std::lock_guard<std::mutex> l(mem_mu);
  Alloc *a = find_locked(p, n);
  return a && a->kind == kDevice;
}
}  // namespace emu

template <class T>
inline cudaError_t cudaMalloc(T **p, size_t n) { return emu::alloc((void **)p, n, emu::kDevice); }
template <class T>
inline cudaError_t cudaMallocHost(T **p, size_t n) { return emu::alloc((void **)p, n, emu::kPinned); }
inline cudaError_t cudaFree(void *p) { return emu::release(p, emu::kDevice); }
inline cudaError_t cudaFreeHost(void *p) { return emu::release(p, emu::kPinned); }
inline cudaError_t cudaHostRegister(void *p, size_t n, unsigned) {
  std::lock_guard<std::mutex> l(emu::mem_mu);
  if (!p || emu::find_locked(p, 1)) return emu::ret(cudaErrorInvalidValue);
  emu::Alloc *a = new emu::Alloc();
  a->base = (char *)p;
  a->size = n;
  a->kind = emu::kRegistered;
  emu::allocs[(uintptr_t)p] = a;
  return cudaSuccess;
}
inline cudaError_t cudaHostUnregister(void *p) {
  emu::drain_all();
  std::lock_guard<std::mutex> l(emu::mem_mu);
  auto it = emu::allocs.find((uintptr_t)p);
  if (it == emu::allocs.end() || it->second->kind != emu::kRegistered) return emu::ret(cudaErrorInvalidValue);
  delete it->second;
  emu::allocs.erase(it);
  return cudaSuccess;
}

namespace emu {
// check_copy validates a copy's direction against where its pointers live.
inline cudaError_t check_copy(void *d, const void *s, size_t n, cudaMemcpyKind k) {
  if (n == 0) return cudaSuccess;
  const bool dd = is_device(d, n), sd = is_device(s, n);
  bool ok = false;
  switch (k) {
    case cudaMemcpyHostToDevice: ok = dd && !sd; break;
    case cudaMemcpyDeviceToHost: ok = sd && !dd; break;
    case cudaMemcpyDeviceToDevice: ok = sd && dd; break;
    case cudaMemcpyHostToHost: ok = !sd && !dd; break;
    default: ok = true;
  }
  if (!ok) {
    set_last(cudaErrorInvalidValue, "cudaMemcpy of %zu bytes: pointers do not match the direction %d (or overrun their allocation)", n, (int)k);
    return ret(cudaErrorInvalidValue);
  }
  return cudaSuccess;
}
}  // namespace emu

inline cudaError_t cudaMemcpyAsync(void *d, const void *s, size_t n, cudaMemcpyKind k, cudaStream_t st) {
  if (cudaError_t e = emu::get_sticky()) return e;
  if (cudaError_t e = emu::check_copy(d, s, n, k)) return e;
  if (n == 0) return cudaSuccess;
  if (st && !emu::live_stream(st)) return emu::ret(cudaErrorInvalidResourceHandle);
  const bool h2d = k == cudaMemcpyHostToDevice, d2h = k == cudaMemcpyDeviceToHost;
  emu::copied[k & 3] += n;
  if (h2d && !emu::is_pinned(s, n)) {
    // pageable source: the driver copies it to a staging buffer before returning
    emu::pageable_async++;
    auto tmp = std::make_shared<std::vector<char>>((const char *)s, (const char *)s + n);
    emu::submit(st, [d, tmp] { emu::dma(d, tmp->data(), tmp->size()); });
    return cudaSuccess;
  }
  if (d2h && !emu::is_pinned(d, n)) {
    // pageable destination: synchronous with respect to the host
    emu::pageable_async++;
    emu::submit(st, [d, s, n] { emu::dma(d, s, n); });
    emu::drain(st);
    return cudaSuccess;
  }
  emu::submit(st, [d, s, n] { emu::dma(d, s, n); });
  return cudaSuccess;
}
// cudaMemcpy runs on the legacy stream. As the driver does, a copy from pageable
// memory to the device returns once the source is staged, before the data lands;
// every other copy returns when it is done. Non-blocking streams are not ordered
// after it: kernels there may still read the old contents.
inline cudaError_t cudaMemcpy(void *d, const void *s, size_t n, cudaMemcpyKind k) {
  if (cudaError_t e = emu::get_sticky()) return e;
  if (cudaError_t e = emu::check_copy(d, s, n, k)) return e;
  if (n == 0) return cudaSuccess;
  emu::copied[k & 3] += n;
  if (k == cudaMemcpyHostToDevice && !emu::is_pinned(s, n)) {
    auto tmp = std::make_shared<std::vector<char>>((const char *)s, (const char *)s + n);
    emu::submit(nullptr, [d, tmp] { emu::dma(d, tmp->data(), tmp->size()); });
    return cudaSuccess;
  }
  emu::submit(nullptr, [d, s, n] { emu::dma(d, s, n); });
  emu::drain(nullptr);
  return emu::get_sticky();
}
inline cudaError_t cudaMemcpy2DAsync(void *d, size_t dpitch, const void *s, size_t spitch, size_t width, size_t height,
                                     cudaMemcpyKind k, cudaStream_t st) {
  for (size_t r = 0; r < height; r++)
    if (cudaError_t e = cudaMemcpyAsync((char *)d + r * dpitch, (const char *)s + r * spitch, width, k, st)) return e;
  return cudaSuccess;
}
inline cudaError_t cudaMemsetAsync(void *p, int v, size_t n, cudaStream_t st) {
  if (cudaError_t e = emu::get_sticky()) return e;
  if (n && !emu::is_device(p, n)) return emu::ret(cudaErrorInvalidValue);
  emu::submit(st, [p, v, n] { memset(p, v, n); });
  return cudaSuccess;
}
inline cudaError_t cudaMemset(void *p, int v, size_t n) { return cudaMemsetAsync(p, v, n, nullptr); }

inline cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned) {
  auto sp = std::make_shared<emu::Stream>();
  *s = sp.get();
  std::lock_guard<std::mutex> l(emu::streams_mu);
  emu::streams[sp.get()] = sp;
  return cudaSuccess;
}
inline cudaError_t cudaStreamCreate(cudaStream_t *s) { return cudaStreamCreateWithFlags(s, 0); }
inline cudaError_t cudaStreamDestroy(cudaStream_t s) {
  if (!s) return emu::ret(cudaErrorInvalidResourceHandle);
  std::shared_ptr<emu::Stream> sp;
  {
    std::lock_guard<std::mutex> l(emu::streams_mu);
    auto it = emu::streams.find(s);
    if (it == emu::streams.end()) return emu::ret(cudaErrorInvalidResourceHandle);
    sp = std::move(it->second);
    emu::streams.erase(it);
  }
  sp.reset();  // the last holder runs what is queued, then stops the worker
  return cudaSuccess;
}
inline cudaError_t cudaStreamSynchronize(cudaStream_t s) {
  emu::drain(s);
  return emu::get_sticky();
}
inline cudaError_t cudaDeviceSynchronize() {
  emu::drain_all();
  return emu::get_sticky();
}

inline cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned flags) {
  *e = new emu::Event();
  (*e)->st->timing = !(flags & cudaEventDisableTiming);
  return cudaSuccess;
}
inline cudaError_t cudaEventCreate(cudaEvent_t *e) { return cudaEventCreateWithFlags(e, 0); }
inline cudaError_t cudaEventDestroy(cudaEvent_t e) {
  if (!e) return emu::ret(cudaErrorInvalidResourceHandle);
  delete e;  // queued operations hold the state until they have run
  return cudaSuccess;
}
inline cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
  if (s && !emu::live_stream(s)) return emu::ret(cudaErrorInvalidResourceHandle);
  std::shared_ptr<emu::EventState> st = e->st;
  unsigned long long gen;
  {
    std::lock_guard<std::mutex> l(st->mu);
    gen = ++st->recorded;
  }
  emu::submit(s, [st, gen] {
    std::lock_guard<std::mutex> l(st->mu);
    if (gen > st->completed) st->completed = gen;
    st->when = std::chrono::steady_clock::now();
    st->cv.notify_all();
  });
  return cudaSuccess;
}
inline cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned) {
  std::shared_ptr<emu::EventState> st = e->st;
  unsigned long long gen;
  {
    std::lock_guard<std::mutex> l(st->mu);
    gen = st->recorded;
  }
  if (gen == 0) return cudaSuccess;  // never recorded: nothing to wait for
  emu::submit(s, [st, gen] {
    std::unique_lock<std::mutex> l(st->mu);
    st->cv.wait(l, [&st, gen] { return st->completed >= gen; });
  });
  return cudaSuccess;
}
inline cudaError_t cudaEventSynchronize(cudaEvent_t e) {
  emu::EventState *st = e->st.get();
  std::unique_lock<std::mutex> l(st->mu);
  const unsigned long long gen = st->recorded;
  st->cv.wait(l, [st, gen] { return st->completed >= gen; });
  l.unlock();
  return emu::get_sticky();
}
inline cudaError_t cudaEventQuery(cudaEvent_t e) {
  std::lock_guard<std::mutex> l(e->st->mu);
  return e->st->completed >= e->st->recorded ? cudaSuccess : cudaErrorNotReady;
}
inline cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b) {
  if (!a->st->timing || !b->st->timing) return emu::ret(cudaErrorInvalidResourceHandle);
  if (cudaEventQuery(a) != cudaSuccess || cudaEventQuery(b) != cudaSuccess) return cudaErrorNotReady;
  if (a->st == b->st) {
    *ms = 0;
    return cudaSuccess;
  }
  std::scoped_lock l(a->st->mu, b->st->mu);
  *ms = std::chrono::duration<float, std::milli>(b->st->when - a->st->when).count();
  return cudaSuccess;
}

// ---------------------------------------------------------------- the dry run's report

namespace emu {
inline const std::chrono::steady_clock::time_point t_start = std::chrono::steady_clock::now();
}  // namespace emu

extern "C" {
// padim_emu_report appends to $PADIM_EMU_REPORT one line per kernel (the counters'
// format, after "K ") and one summary line "T wall_ns device_ns h2d_bytes d2h_bytes" (device_ns: the time some stream
// was running an operation),
// so that scripts/device-check.sh --dry-run can estimate each step's time on a GPU:
// the host's own time (wall − device) plus the kernels' work at the card's rates. The
// gpu tests call it at exit (TestMain); counting is on for the whole process when it is set.
void padim_emu_report(void) {
  const char *path = getenv("PADIM_EMU_REPORT");
  if (!path || !*path) return;
  FILE *f = fopen(path, "a");
  if (!f) return;
  {
    std::lock_guard<std::mutex> l(emu::ctr_mu);
    for (auto &kv : emu::all_kernels) {
      const emu::Counters &c = kv.second;
      fprintf(f, "K %s %llu %llu %llu %llu %llu %llu %llu %llu %llu\n", kv.first.c_str(), (unsigned long long)c.launches,
              (unsigned long long)c.blocks, (unsigned long long)c.threads, (unsigned long long)c.read_bytes,
              (unsigned long long)c.write_bytes, (unsigned long long)c.read_sectors * 32, (unsigned long long)c.write_sectors * 32,
              (unsigned long long)c.flops, (unsigned long long)c.fp64);
    }
  }
  const auto wall = std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - emu::t_start).count();
  fprintf(f, "T %lld %llu %llu %llu\n", (long long)wall, (unsigned long long)emu::busy_ns,
          (unsigned long long)emu::copied[cudaMemcpyHostToDevice].load(), (unsigned long long)emu::copied[cudaMemcpyDeviceToHost].load());
  fclose(f);
}
}

// ---------------------------------------------------------------- emulator-only API (tests)

extern "C" {
// padim_emu_set_counting turns the per-kernel counters on or off.
void padim_emu_set_counting(int on) { emu::set_counting(on != 0); }
// padim_emu_counters writes one line per kernel seen since the last reset:
// name launches blocks threads read_bytes write_bytes read_sectors write_sectors flops fp64
int padim_emu_counters(char *buf, size_t len, int reset) {
  std::lock_guard<std::mutex> l(emu::ctr_mu);
  size_t off = 0;
  if (len) buf[0] = 0;
  for (auto &kv : emu::per_kernel) {
    const emu::Counters &c = kv.second;
    int w = snprintf(buf + off, off < len ? len - off : 0, "%s %llu %llu %llu %llu %llu %llu %llu %llu %llu\n", kv.first.c_str(),
                     (unsigned long long)c.launches, (unsigned long long)c.blocks, (unsigned long long)c.threads,
                     (unsigned long long)c.read_bytes, (unsigned long long)c.write_bytes, (unsigned long long)c.read_sectors * 32,
                     (unsigned long long)c.write_sectors * 32, (unsigned long long)c.flops, (unsigned long long)c.fp64);
    if (w > 0) off += (size_t)w;
  }
  if (reset) emu::per_kernel.clear();
  return off < len ? 0 : 1;
}
// padim_emu_pageable_copies counts cudaMemcpyAsync calls with pageable host memory.
unsigned long long padim_emu_pageable_copies(void) { return emu::pageable_async.load(); }
// padim_emu_copied returns the bytes copied host to device and device to host so far.
void padim_emu_copied(unsigned long long *h2d, unsigned long long *d2h) {
  *h2d = emu::copied[cudaMemcpyHostToDevice].load();
  *d2h = emu::copied[cudaMemcpyDeviceToHost].load();
}
// padim_emu_set_copy_delay_us makes every copy wait this long before it moves data
// (a transfer latency), so that a missing wait shows up as a wrong result reliably.
void padim_emu_set_copy_delay_us(int us) { emu::copy_delay_us = us; }
// padim_emu_device_bytes is the emulated device memory allocated now.
unsigned long long padim_emu_device_bytes(void) {
  std::lock_guard<std::mutex> l(emu::mem_mu);
  return emu::device_bytes;
}
// padim_emu_last_detail says why the calling thread's last launch was refused.
const char *padim_emu_last_detail(void) { return emu::t_last_detail; }
// padim_emu_sticky returns the sticky error's description ("" if none) and, with
// clear set, clears it (a real context would have to be recreated).
const char *padim_emu_sticky(int clear) {
  static thread_local std::string s;
  std::lock_guard<std::mutex> l(emu::err_mu);
  s = emu::sticky == cudaSuccess ? "" : emu::sticky_detail;
  if (clear) {
    emu::sticky = cudaSuccess;
    emu::sticky_detail.clear();
  }
  return s.c_str();
}
}
