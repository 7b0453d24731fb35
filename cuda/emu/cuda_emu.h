// cuda_emu.h — runs padim's CUDA source (cuda/padim_cuda.cu) on the host, for
// tests on machines without a GPU: `make cuda-emu`, then `go test -tags cudaemu ./gpu`.
//
// It is an execution-model emulator, not a translation: the kernels run as written.
// Blocks run one after another; the threads of a block are real threads, so
// __syncthreads is a barrier and a missing one is a real race; warp shuffles
// exchange values through a per-warp barrier; __shared__ variables are statics
// (one block at a time uses them); device memory is host memory filled with 0xFF
// (NaN) so reads of uninitialised memory show. The runtime API is synchronous.
// Compile: c++ -std=c++20 -pthread -x c++ -include cuda/emu/cuda_emu.h -c cuda/padim_cuda.cu
#pragma once
#define PADIM_CUDA_EMU 1

#include <math.h>

#include <barrier>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3 {
  unsigned x, y, z;
};

namespace emu {
inline thread_local dim3 t_block_dim, t_grid_dim;
inline thread_local uint3 t_thread_idx, t_block_idx;
inline thread_local std::barrier<> *t_block_barrier;
inline thread_local std::barrier<> *t_warp_barrier;
inline thread_local float *t_warp_slots;
inline thread_local void *t_dynamic_shared;
inline thread_local unsigned t_lane;
inline std::mutex launch_mu;

template <typename... KArgs, typename... Args>
void launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, Args... args) {
  std::lock_guard<std::mutex> lock(launch_mu);  // __shared__ statics: one launch at a time
  const unsigned nthreads = block.x * block.y * block.z;
  const unsigned nwarps = (nthreads + 31) / 32;
  std::barrier<> block_barrier(nthreads);
  std::vector<std::unique_ptr<std::barrier<>>> warp_barriers;
  for (unsigned w = 0; w < nwarps; w++)
    warp_barriers.emplace_back(new std::barrier<>(std::min(32u, nthreads - 32 * w)));
  std::vector<float> slots(nwarps * 32);
  std::vector<double> dynamic((smem + 7) / 8 + 1);
  std::vector<std::thread> threads;
  for (unsigned t = 0; t < nthreads; t++) {
    threads.emplace_back([&, t] {
      t_block_dim = block;
      t_grid_dim = grid;
      t_thread_idx = uint3{t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
      t_block_barrier = &block_barrier;
      t_warp_barrier = warp_barriers[t / 32].get();
      t_warp_slots = &slots[(t / 32) * 32];
      t_lane = t % 32;
      t_dynamic_shared = dynamic.data();
      for (unsigned bz = 0; bz < grid.z; bz++)
        for (unsigned by = 0; by < grid.y; by++)
          for (unsigned bx = 0; bx < grid.x; bx++) {
            t_block_idx = uint3{bx, by, bz};
            kernel(args...);
            block_barrier.arrive_and_wait();  // the next block reuses the shared memory
          }
    });
  }
  for (auto &th : threads) th.join();
}
}  // namespace emu

#define threadIdx (emu::t_thread_idx)
#define blockIdx (emu::t_block_idx)
#define blockDim (emu::t_block_dim)
#define gridDim (emu::t_grid_dim)
#define __global__
#define __device__
#define __host__
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __shared__ static
#define __syncthreads() emu::t_block_barrier->arrive_and_wait()
#define DYNAMIC_SHARED(T, name) T *name = static_cast<T *>(emu::t_dynamic_shared)
#define LAUNCH(kernel, grid, block, smem, stream, ...) emu::launch(kernel, dim3(grid), dim3(block), smem, __VA_ARGS__)

inline float __shfl_xor_sync(unsigned, float v, int lane_mask) {
  emu::t_warp_slots[emu::t_lane] = v;
  emu::t_warp_barrier->arrive_and_wait();
  const float r = emu::t_warp_slots[emu::t_lane ^ lane_mask];
  emu::t_warp_barrier->arrive_and_wait();
  return r;
}
template <class T>
inline T min(T a, T b) { return a < b ? a : b; }
using std::isfinite;
using std::sqrt;

// ---------------------------------------------------------------- runtime API

enum cudaError { cudaSuccess = 0, cudaErrorMemoryAllocation = 2, cudaErrorInsufficientDriver = 35, cudaErrorNoDevice = 100 };
typedef enum cudaError cudaError_t;
enum cudaMemcpyKind { cudaMemcpyHostToHost, cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice };
typedef struct emu_stream *cudaStream_t;
typedef struct emu_event *cudaEvent_t;
#define cudaStreamNonBlocking 0x01
#define cudaEventDisableTiming 0x02
struct cudaDeviceProp {
  char name[256];
  int major, minor;
};

namespace emu {
inline std::mutex mem_mu;
inline std::map<void *, size_t> allocations;
inline size_t allocated = 0;
// PADIM_EMU_MEM bytes of "device memory" (default 4 GiB), so out-of-memory paths run.
inline size_t mem_limit() {
  const char *v = getenv("PADIM_EMU_MEM");
  return v ? strtoull(v, nullptr, 10) : (size_t)4 << 30;
}
inline cudaError_t alloc(void **p, size_t n, unsigned char fill) {
  std::lock_guard<std::mutex> lock(mem_mu);
  if (n > mem_limit() || allocated + n > mem_limit()) return cudaErrorMemoryAllocation;
  *p = malloc(n ? n : 1);
  if (!*p) return cudaErrorMemoryAllocation;
  memset(*p, fill, n);
  allocations[*p] = n;
  allocated += n;
  return cudaSuccess;
}
inline void release(void *p) {
  if (!p) return;
  std::lock_guard<std::mutex> lock(mem_mu);
  auto it = allocations.find(p);
  if (it != allocations.end()) {
    allocated -= it->second;
    allocations.erase(it);
  }
  free(p);
}
}  // namespace emu

inline const char *cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorMemoryAllocation: return "out of memory (emulated device)";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected (emulator disabled by PADIM_EMU_NO_DEVICE)";
    default: return "emulated CUDA error";
  }
}
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
inline cudaError_t cudaGetDeviceCount(int *n) {
  *n = getenv("PADIM_EMU_NO_DEVICE") ? 0 : 1;
  return *n ? cudaSuccess : cudaErrorNoDevice;
}
inline cudaError_t cudaSetDevice(int) { return cudaSuccess; }
inline cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int) {
  snprintf(p->name, sizeof p->name, "padim CUDA emulator (host threads)");
  p->major = 9;
  p->minor = 0;
  return cudaSuccess;
}
inline cudaError_t cudaMemGetInfo(size_t *freeb, size_t *total) {
  std::lock_guard<std::mutex> lock(emu::mem_mu);
  *total = emu::mem_limit();
  *freeb = *total - emu::allocated;
  return cudaSuccess;
}
template <class T>
inline cudaError_t cudaMalloc(T **p, size_t n) { return emu::alloc((void **)p, n, 0xFF); }
template <class T>
inline cudaError_t cudaMallocHost(T **p, size_t n) { return emu::alloc((void **)p, n, 0xFF); }
inline cudaError_t cudaFree(void *p) { emu::release(p); return cudaSuccess; }
inline cudaError_t cudaFreeHost(void *p) { emu::release(p); return cudaSuccess; }
inline cudaError_t cudaMemcpy(void *d, const void *s, size_t n, cudaMemcpyKind) { memcpy(d, s, n); return cudaSuccess; }
inline cudaError_t cudaMemcpyAsync(void *d, const void *s, size_t n, cudaMemcpyKind, cudaStream_t) { memcpy(d, s, n); return cudaSuccess; }
inline cudaError_t cudaMemsetAsync(void *p, int v, size_t n, cudaStream_t) { memset(p, v, n); return cudaSuccess; }
inline cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned) { *s = (cudaStream_t) new char; return cudaSuccess; }
inline cudaError_t cudaStreamDestroy(cudaStream_t s) { delete (char *)s; return cudaSuccess; }
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
inline cudaError_t cudaStreamWaitEvent(cudaStream_t, cudaEvent_t, unsigned) { return cudaSuccess; }
inline cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned) { *e = (cudaEvent_t) new char; return cudaSuccess; }
inline cudaError_t cudaEventDestroy(cudaEvent_t e) { delete (char *)e; return cudaSuccess; }
inline cudaError_t cudaEventRecord(cudaEvent_t, cudaStream_t) { return cudaSuccess; }
inline cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }
