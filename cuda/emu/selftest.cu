// selftest.cu — checks that the host emulator (cuda_emu.h) enforces what a GPU
// enforces: each rule is broken once (the emulator must notice) and kept once (it
// must not complain). Built and run by `make cuda-emu`, and by the Go test
// TestEmulatorSelfTest. Exit status 0 when every check holds.
//   c++ -std=c++20 -O2 -pthread -x c++ -include cuda/emu/cuda_emu.h cuda/emu/selftest.cu -o build/emu/emu_selftest
#ifndef PADIM_CUDA_EMU
#error "selftest.cu runs on the emulator only"
#endif
#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

static int failures = 0;
static void check(bool ok, const char *what) {
  printf("%s  %s\n", ok ? "ok  " : "FAIL", what);
  if (!ok) failures++;
}

__global__ void k_fill(gptr<float> p, int n, float v) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) p[i] = v;
}
__global__ void k_copy2(gptr<const float> in, gptr<float> out, int n) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    out[i] = 2.f * (float)in[i];
    FLOPS(1);
  }
}
// each thread reads its right neighbour's shared value, with or without a barrier
__global__ void k_neighbour(gptr<float> out, int sync) {
  DYNAMIC_SHARED(float, s);
  const int t = threadIdx.x, n = blockDim.x;
  s[t] = (float)t;
  if (sync) __syncthreads();
  out[t] = s[(t + 1) % n];
}
__global__ void k_half_sync(gptr<int> out) {
  if (threadIdx.x < 16) __syncthreads();
  out[threadIdx.x] = 1;
}
__global__ void k_write_at(gptr<float> p, long long i) {
  if (threadIdx.x == 0) p[i] = 1.f;
}
__global__ void k_smem_sum(gptr<int> out, int words) {
  DYNAMIC_SHARED(int, s);
  for (int i = threadIdx.x; i < words; i += blockDim.x) s[i] = 1;
  __syncthreads();
  if (threadIdx.x == 0) {
    int t = 0;
    for (int i = 0; i < words; i++) t += s[i];
    out[0] = t;
  }
}
__global__ void k_smem_overrun(gptr<int> out, int words) {
  DYNAMIC_SHARED(int, s);
  if (threadIdx.x == 0) s[words] = 7;  // one past the end
  out[0] = 1;
}
__global__ void k_shfl(gptr<float> out) {
  float v = (float)threadIdx.x;
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  out[threadIdx.x] = v;
}
__global__ void k_read_uninit_smem(gptr<float> out) {
  DYNAMIC_SHARED(float, s);
  out[threadIdx.x] = s[threadIdx.x];
}

extern "C" const char *padim_emu_sticky(int clear);
extern "C" void padim_emu_set_copy_delay_us(int us);
extern "C" int padim_emu_counters(char *buf, size_t len, int reset);
extern "C" void padim_emu_set_counting(int on);

static bool sticky_and_clear(const char *needle) {
  std::string s = padim_emu_sticky(1);
  if (getenv("SELFTEST_VERBOSE")) printf("      sticky: %s\n", s.c_str());
  return !s.empty() && s.find(needle) != std::string::npos;
}

int main() {
  const emu::Profile &pr = emu::profile();
  printf("profile sm_%d (%s): %zu B shared per block, %zu B with opt-in, fp64 1/%d\n", pr.sm, pr.card, pr.smem_default, pr.smem_optin,
         pr.fp64_ratio);
  cudaStream_t a, b;
  cudaStreamCreateWithFlags(&a, cudaStreamNonBlocking);
  cudaStreamCreateWithFlags(&b, cudaStreamNonBlocking);
  const int n = 4096;
  float *d = nullptr, *d2 = nullptr, *h = nullptr;
  int *di = nullptr;
  cudaMalloc(&d, n * sizeof(float));
  cudaMalloc(&d2, n * sizeof(float));
  cudaMalloc(&di, 64 * sizeof(int));
  cudaMallocHost(&h, n * sizeof(float));

  // Uninitialised device memory reads as NaN.
  cudaMemcpy(h, d, sizeof(float), cudaMemcpyDeviceToHost);
  check(std::isnan(h[0]), "fresh device memory is NaN, not zero");

  // Launch configuration limits.
  LAUNCH(k_fill, 1, 1025, 0, a, d, n, 1.f);
  check(cudaGetLastError() == cudaErrorInvalidConfiguration, "1025 threads per block: invalid configuration");
  check(cudaGetLastError() == cudaSuccess, "cudaGetLastError clears a launch error");
  LAUNCH(k_fill, dim3(1, 65536), 32, 0, a, d, n, 1.f);
  check(cudaGetLastError() == cudaErrorInvalidConfiguration, "grid.y 65536: invalid configuration");

  // Dynamic shared memory: 48 KiB without opt-in, the profile's maximum with it.
  int hi = 0;
  const size_t over = pr.smem_default + 1024;
  LAUNCH(k_smem_sum, 1, 128, over, a, di, (int)(over / 4));
  check(cudaGetLastError() == cudaErrorInvalidValue, "48 KiB + 1 KiB of shared memory without opt-in is refused");
  check(cudaFuncSetAttribute(k_smem_sum, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)pr.smem_optin + 1) == cudaErrorInvalidValue,
        "opt-in above the profile's maximum is refused");
  cudaGetLastError();
  check(cudaFuncSetAttribute(k_smem_sum, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)pr.smem_optin) == cudaSuccess,
        "opt-in to the profile's maximum is accepted");
  LAUNCH(k_smem_sum, 1, 128, pr.smem_optin, a, di, (int)(pr.smem_optin / 4));
  check(cudaGetLastError() == cudaSuccess, "launch with the opted-in maximum");
  cudaMemcpyAsync(&hi, di, sizeof(int), cudaMemcpyDeviceToHost, a);  // pageable: synchronous
  check(hi == (int)(pr.smem_optin / 4), "the opted-in shared memory is all usable");
  LAUNCH(k_smem_sum, 1, 128, pr.smem_optin + 4, a, di, 1);
  check(cudaGetLastError() == cudaErrorInvalidValue, "beyond the opted-in maximum is refused");

  // Shared memory is garbage (NaN) at block start, and overruns are caught.
  LAUNCH(k_read_uninit_smem, 1, 32, 32 * 4, a, d);
  cudaStreamSynchronize(a);
  cudaMemcpy(h, d, 4, cudaMemcpyDeviceToHost);
  check(std::isnan(h[0]), "uninitialised shared memory reads as NaN");
  LAUNCH(k_smem_overrun, 1, 32, 64, a, di, 16);
  check(cudaStreamSynchronize(a) == cudaErrorLaunchFailure && sticky_and_clear("past its"), "a write past dynamic shared memory fails");

  // A missing __syncthreads is a wrong result; with it, the right one.
  LAUNCH(k_neighbour, 1, 256, 256 * 4, a, d, 0);
  cudaStreamSynchronize(a);
  cudaMemcpy(h, d, 256 * 4, cudaMemcpyDeviceToHost);
  bool right = true;
  for (int t = 0; t < 256; t++) right = right && h[t] == (float)((t + 1) % 256);
  check(!right, "a missing __syncthreads gives a wrong result");
  LAUNCH(k_neighbour, 1, 256, 256 * 4, a, d, 1);
  cudaStreamSynchronize(a);
  cudaMemcpy(h, d, 256 * 4, cudaMemcpyDeviceToHost);
  right = true;
  for (int t = 0; t < 256; t++) right = right && h[t] == (float)((t + 1) % 256);
  check(right, "with __syncthreads the result is right");

  // __syncthreads reached by part of the block: a launch failure (sticky).
  LAUNCH(k_half_sync, 1, 32, 0, a, di);
  check(cudaStreamSynchronize(a) == cudaErrorLaunchFailure && sticky_and_clear("deadlock"), "divergent __syncthreads fails the kernel");

  // Global memory: out of bounds, and host pointers, are illegal addresses.
  LAUNCH(k_write_at, 1, 32, 0, a, d, (long long)n);
  check(cudaStreamSynchronize(a) == cudaErrorIllegalAddress && sticky_and_clear("out of bounds"), "write one past an allocation");
  check(cudaStreamSynchronize(a) == cudaSuccess, "the sticky error was cleared (test hook)");
  std::vector<float> pageable(16);
  LAUNCH(k_write_at, 1, 32, 0, a, pageable.data(), 0LL);
  check(cudaStreamSynchronize(a) == cudaErrorIllegalAddress && sticky_and_clear("not device memory"), "a kernel writing pageable host memory");

  // Warp shuffles exchange values between lanes.
  LAUNCH(k_shfl, 1, 64, 0, a, d);
  cudaStreamSynchronize(a);
  cudaMemcpy(h, d, 64 * 4, cudaMemcpyDeviceToHost);
  check(h[0] == 496.f && h[31] == 496.f && h[32] == 32.f * 32 + 496.f, "xor-shuffle reduction per warp");

  // Streams run asynchronously: a missing event wait is a wrong result.
  padim_emu_set_copy_delay_us(30000);
  cudaEvent_t ev;
  cudaEventCreateWithFlags(&ev, cudaEventDisableTiming);
  LAUNCH(k_fill, 4, 256, 0, a, d, n, 0.f);
  cudaStreamSynchronize(a);
  for (int i = 0; i < n; i++) h[i] = 5.f;
  cudaMemcpyAsync(d, h, n * 4, cudaMemcpyHostToDevice, b);  // upload on stream b
  LAUNCH(k_copy2, 4, 256, 0, a, d, d2, n);                  // kernel on stream a, no wait
  cudaStreamSynchronize(a);
  cudaStreamSynchronize(b);
  std::vector<float> r(n);
  cudaMemcpy(r.data(), d2, n * 4, cudaMemcpyDeviceToHost);
  check(r[0] == 0.f, "kernel on another stream without a wait reads the old data");
  cudaMemcpyAsync(d, h, n * 4, cudaMemcpyHostToDevice, b);
  cudaEventRecord(ev, b);
  cudaStreamWaitEvent(a, ev, 0);
  LAUNCH(k_copy2, 4, 256, 0, a, d, d2, n);
  cudaStreamSynchronize(a);
  cudaMemcpy(r.data(), d2, n * 4, cudaMemcpyDeviceToHost);
  check(r[0] == 10.f && r[n - 1] == 10.f, "with cudaStreamWaitEvent the kernel reads the upload");

  // The legacy stream (cudaMemcpy from pageable memory) does not order a non-blocking
  // stream: the old scorer's model upload.
  LAUNCH(k_fill, 4, 256, 0, a, d, n, 0.f);
  cudaStreamSynchronize(a);
  std::vector<float> src(n, 3.f);
  cudaMemcpy(d, src.data(), n * 4, cudaMemcpyHostToDevice);
  LAUNCH(k_copy2, 4, 256, 0, a, d, d2, n);
  cudaStreamSynchronize(a);
  cudaDeviceSynchronize();
  cudaMemcpy(r.data(), d2, n * 4, cudaMemcpyDeviceToHost);
  check(r[0] == 0.f, "cudaMemcpy from pageable memory is not ordered before a non-blocking stream");

  // A pinned buffer reused before its copy ran is a wrong result.
  for (int i = 0; i < n; i++) h[i] = 1.f;
  cudaMemcpyAsync(d, h, n * 4, cudaMemcpyHostToDevice, a);
  for (int i = 0; i < n; i++) h[i] = 2.f;  // too early
  cudaStreamSynchronize(a);
  cudaMemcpy(r.data(), d, n * 4, cudaMemcpyDeviceToHost);
  check(r[0] == 2.f, "a pinned source overwritten before the copy ran is what gets copied");

  // Event timing sees the copy latency.
  cudaEvent_t t0, t1;
  cudaEventCreate(&t0);
  cudaEventCreate(&t1);
  cudaEventRecord(t0, a);
  cudaMemcpyAsync(d, h, n * 4, cudaMemcpyHostToDevice, a);
  cudaEventRecord(t1, a);
  cudaEventSynchronize(t1);
  float ms = 0;
  cudaEventElapsedTime(&ms, t0, t1);
  check(ms >= 25.f, "cudaEventElapsedTime spans the work between the events");
  padim_emu_set_copy_delay_us(0);

  // Counters: requested bytes, distinct sectors and annotated flops per kernel.
  padim_emu_counters(nullptr, 0, 1);
  padim_emu_set_counting(1);
  LAUNCH(k_copy2, 2, 128, 0, a, d, d2, 1000);
  cudaStreamSynchronize(a);
  padim_emu_set_counting(0);
  char buf[512];
  padim_emu_counters(buf, sizeof buf, 1);
  unsigned long long L, B, T, rb, wb, rs, ws, fl, f64;
  char name[64];
  const bool parsed = sscanf(buf, "%63s %llu %llu %llu %llu %llu %llu %llu %llu %llu", name, &L, &B, &T, &rb, &wb, &rs, &ws, &fl, &f64) == 10;
  check(parsed && strcmp(name, "k_copy2") == 0 && L == 1 && B == 2 && T == 256 && rb == 4000 && wb == 4000 && rs == 4000 && ws == 4000 &&
            fl == 1000,
        "counters: 1000 floats in, 1000 out, 1000 flops");

  cudaFree(d);
  cudaFree(d2);
  cudaFree(di);
  cudaFreeHost(h);
  cudaStreamDestroy(a);
  cudaStreamDestroy(b);
  printf("%s: %d failure(s)\n", failures ? "FAIL" : "PASS", failures);
  return failures ? 1 : 0;
}
