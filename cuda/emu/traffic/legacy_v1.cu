// legacy_v1.cu — padim's CUDA kernels as they were before issue 15 (commit 676aebe),
// kept only to count their memory traffic on the emulator (cuda/emu/traffic/run.sh).
// Changes from the original: global pointers are gptr<T> (so the emulator sees and
// counts every access), __restrict__ dropped, the header renamed. Nothing else.
// padim_cuda.cu — CUDA kernels for PaDiM's Gaussian stages behind padim_cuda.h:
// streaming per-patch covariance (Chan's merge, tiled lower triangle), batched
// Cholesky and triangular inversion in float64, and batched Mahalanobis distances
// that read each patch's L^-1 once per block of images.
#include "legacy_v1.h"

#ifndef PADIM_CUDA_EMU
#include <cuda_runtime.h>
// LAUNCH and DYNAMIC_SHARED let cuda/emu run this same source on the host.
#define LAUNCH(kernel, grid, block, smem, stream, ...) kernel<<<grid, block, smem, stream>>>(__VA_ARGS__)
#define DYNAMIC_SHARED(T, name) extern __shared__ T name[]
#endif

#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstring>

namespace {

int g_debug_sync = 0;

int fail(char *err, size_t errlen, int code, const char *fmt, ...) {
  if (err && errlen) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
  }
  return code;
}

int cuda_code(cudaError_t e) {
  switch (e) {
    case cudaErrorMemoryAllocation:
      return PADIM_ERR_OOM;
    case cudaErrorNoDevice:
    case cudaErrorInsufficientDriver:
      return PADIM_ERR_NO_DEVICE;
    default:
      return PADIM_ERR_CUDA;
  }
}

}  // namespace

// CK returns from the calling API function on a CUDA error, with the call named.
#define CK(call)                                                                                   \
  do {                                                                                             \
    cudaError_t e_ = (call);                                                                       \
    if (e_ != cudaSuccess) {                                                                       \
      cudaGetLastError();                                                                          \
      return fail(err, errlen, cuda_code(e_), "%s: %s", #call, cudaGetErrorString(e_));            \
    }                                                                                              \
  } while (0)

// LAUNCHED checks a kernel launch (and, in debug mode, its execution).
#define LAUNCHED(name)                                                                             \
  do {                                                                                             \
    cudaError_t e_ = cudaGetLastError();                                                           \
    if (e_ == cudaSuccess && g_debug_sync) e_ = cudaDeviceSynchronize();                           \
    if (e_ != cudaSuccess) return fail(err, errlen, cuda_code(e_), "kernel %s: %s", name, cudaGetErrorString(e_)); \
  } while (0)

// ---------------------------------------------------------------- helpers

__host__ __device__ inline long long packed_len(int d) { return (long long)d * (d + 1) / 2; }

// unpack maps a packed lower-triangular index to (i, j<=i).
__device__ inline void unpack(long long e, int &i, int &j) {
  int r = (int)((sqrt(8.0 * (double)e + 1.0) - 1.0) * 0.5);
  while ((long long)(r + 1) * (r + 2) / 2 <= e) r++;
  while ((long long)r * (r + 1) / 2 > e) r--;
  i = r;
  j = (int)(e - (long long)r * (r + 1) / 2);
}

// ---------------------------------------------------------------- accumulation

// k_batch_mean: per (patch, channel) the batch mean, δ = batch mean − running
// mean, and the running mean's Chan update.
__global__ void k_batch_mean(gptr<const float> x, int n, long long PD, double na, gptr<double> mean,
                             gptr<double> delta, gptr<double> bmean) {
  for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < PD;
       idx += (long long)gridDim.x * blockDim.x) {
    double s = 0;
    for (int b = 0; b < n; b++) s += x[b * PD + idx];
    double mb = s / n;
    double d = mb - mean[idx];
    bmean[idx] = mb;
    delta[idx] = d;
    mean[idx] += d * n / (na + n);
  }
}

constexpr int TILE = 32;   // output tile side
constexpr int KB = 32;     // images per shared-memory chunk
constexpr int TROWS = 8;   // thread rows: each thread owns TILE/TROWS outputs

// k_m2_update adds, for one patch (blockIdx.x) and one 32×32 tile of the lower
// triangle (blockIdx.y enumerates tile pairs ti ≥ tj), the centred batch product
// Σ_b (x_b − m_b)(x_b − m_b)ᵀ (float32 products, exact enough for ≤ KB·chunks
// centred terms) plus f·δδᵀ into the float64 statistics.
__global__ void __launch_bounds__(TILE *TROWS) k_m2_update(gptr<const float> x, int n, int P, int D,
                                                           gptr<const double> bmean,
                                                           gptr<const double> delta, double f, gptr<double> m2) {
  const int p = blockIdx.x;
  const int t = blockIdx.y;
  int ti = (int)((sqrt(8.0 * t + 1.0) - 1.0) * 0.5);
  while ((ti + 1) * (ti + 2) / 2 <= t) ti++;
  while (ti * (ti + 1) / 2 > t) ti--;
  const int tj = t - ti * (ti + 1) / 2;
  const int i0 = ti * TILE, j0 = tj * TILE;
  const long long PD = (long long)P * D;
  gptr<const double> bm = bmean + (long long)p * D;

  __shared__ float A[KB][TILE + 1];
  __shared__ float B[KB][TILE + 1];
  float acc[TILE / TROWS] = {0};
  const int tid = threadIdx.y * TILE + threadIdx.x;
  for (int b0 = 0; b0 < n; b0 += KB) {
    for (int e = tid; e < KB * TILE; e += TILE * TROWS) {
      const int bb = e / TILE, c = e % TILE, b = b0 + bb;
      float va = 0.f, vb = 0.f;
      if (b < n) {
        gptr<const float> row = x + b * PD + (long long)p * D;
        const int ci = i0 + c, cj = j0 + c;
        if (ci < D) va = (float)((double)row[ci] - bm[ci]);
        if (cj < D) vb = (float)((double)row[cj] - bm[cj]);
      }
      A[bb][c] = va;
      B[bb][c] = vb;
    }
    __syncthreads();
    const int kmax = min(KB, n - b0);
    for (int k = 0; k < kmax; k++) {
      const float bv = B[k][threadIdx.x];
#pragma unroll
      for (int r = 0; r < TILE / TROWS; r++) acc[r] += A[k][threadIdx.y + TROWS * r] * bv;
    }
    __syncthreads();
  }
  const int j = j0 + threadIdx.x;
  gptr<const double> dp = delta + (long long)p * D;
  gptr<double> m = m2 + (long long)p * packed_len(D);
#pragma unroll
  for (int r = 0; r < TILE / TROWS; r++) {
    const int i = i0 + threadIdx.y + TROWS * r;
    if (i < D && j <= i) m[(long long)i * (i + 1) / 2 + j] += (double)acc[r] + f * dp[i] * dp[j];
  }
}

// ---------------------------------------------------------------- factorisation

// k_expand fills the lower triangle of each patch's dense Σ = M2/(N−1) + εI.
__global__ void k_expand(gptr<const double> m2, gptr<double> A, int D, double inv, double eps) {
  const long long L = packed_len(D);
  gptr<const double> src = m2 + blockIdx.x * L;
  gptr<double> a = A + (long long)blockIdx.x * D * D;
  for (long long e = threadIdx.x; e < L; e += blockDim.x) {
    int i, j;
    unpack(e, i, j);
    double v = src[e] * inv;
    if (i == j) v += eps;
    a[(long long)i * D + j] = v;
  }
}

// k_cholesky factorises each patch's lower triangle in place (right-looking,
// column k cached in shared memory). bad[patch] = 1 when a pivot is not positive.
__global__ void k_cholesky(gptr<double> A, int D, gptr<int> bad) {
  DYNAMIC_SHARED(double, colk);  // D values
  __shared__ int failed;
  __shared__ double piv;
  gptr<double> a = A + (long long)blockIdx.x * D * D;
  if (threadIdx.x == 0) failed = 0;
  __syncthreads();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nw = blockDim.x / 32;
  for (int k = 0; k < D; k++) {
    if (threadIdx.x == 0) {
      const double v = a[(long long)k * D + k];
      if (!(v > 0) || !isfinite(v)) {
        failed = 1;
      } else {
        piv = sqrt(v);
        a[(long long)k * D + k] = piv;
      }
    }
    __syncthreads();
    if (failed) break;
    for (int i = k + 1 + threadIdx.x; i < D; i += blockDim.x) {
      const double v = a[(long long)i * D + k] / piv;
      a[(long long)i * D + k] = v;
      colk[i] = v;
    }
    __syncthreads();
    for (int i = k + 1 + warp; i < D; i += nw) {
      const double lik = colk[i];
      gptr<double> row = a + (long long)i * D;
      for (int j = k + 1 + lane; j <= i; j += 32) row[j] -= lik * colk[j];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) bad[blockIdx.x] = failed;
}

// k_trinv computes X = L⁻¹ row by row (row i of L cached in shared memory), after
// the same pivot check as the CPU backend: every L_ii > 1e-7·max L_jj.
__global__ void k_trinv(gptr<const double> A, gptr<double> X, int D, gptr<int> bad) {
  DYNAMIC_SHARED(double, li);  // row i of L
  __shared__ int failed;
  if (bad[blockIdx.x]) return;  // uniform across the block
  gptr<const double> l = A + (long long)blockIdx.x * D * D;
  gptr<double> x = X + (long long)blockIdx.x * D * D;
  if (threadIdx.x == 0) {
    double m = 0;
    for (int i = 0; i < D; i++) m = fmax(m, l[(long long)i * D + i]);
    failed = 0;
    for (int i = 0; i < D; i++)
      if (!(l[(long long)i * D + i] > m * 1e-7)) failed = 1;
  }
  __syncthreads();
  if (failed) {
    if (threadIdx.x == 0) bad[blockIdx.x] = 1;
    return;
  }
  for (int i = 0; i < D; i++) {
    for (int k = threadIdx.x; k <= i; k += blockDim.x) li[k] = l[(long long)i * D + k];
    __syncthreads();
    const double inv = 1.0 / li[i];
    for (int j = threadIdx.x; j <= i; j += blockDim.x) {
      // k runs from 0 for every thread so a warp reads row k of X contiguously;
      // X is lower triangular, so terms with k < j are skipped.
      double s = (i == j) ? 1.0 : 0.0;
      for (int k = 0; k < i; k++)
        if (k >= j) s -= li[k] * x[(long long)k * D + j];
      x[(long long)i * D + j] = s * inv;
    }
    __syncthreads();
  }
}

// k_pack rounds each patch's L⁻¹ to float32 in packed form; non-finite values mark the patch bad.
__global__ void k_pack(gptr<const double> X, gptr<float> linv, int D, gptr<int> bad) {
  const long long L = packed_len(D);
  gptr<const double> x = X + (long long)blockIdx.x * D * D;
  gptr<float> o = linv + blockIdx.x * L;
  if (bad[blockIdx.x]) return;
  for (long long e = threadIdx.x; e < L; e += blockDim.x) {
    int i, j;
    unpack(e, i, j);
    const double v = x[(long long)i * D + j];
    if (!isfinite(v)) bad[blockIdx.x] = 1;
    o[e] = (float)v;
  }
}

// ---------------------------------------------------------------- scoring

// k_mahalanobis: block (patch, group of NB images). The centred embeddings sit in
// shared memory; each warp takes rows of L⁻¹ (read once, coalesced), forms
// z_bi = Σ_j L⁻¹_ij y_bj for the NB images with a warp reduction, and sums z².
template <int NB>
__global__ void k_mahalanobis(gptr<const float> x, int n, int P, int D, gptr<const float> mean,
                              gptr<const float> linv, gptr<float> dist) {
  DYNAMIC_SHARED(float, sm);
  float *y = sm;                 // [NB][D]
  double *part = (double *)(sm + ((NB * D + 1) & ~1));  // [warps][NB], 8-byte aligned
  const int p = blockIdx.x;
  const int b0 = blockIdx.y * NB;
  const int nb = min(NB, n - b0);
  gptr<const float> mu = mean + (long long)p * D;
  for (int e = threadIdx.x; e < NB * D; e += blockDim.x) {
    const int b = e / D, i = e % D;
    y[e] = b < nb ? x[((long long)(b0 + b) * P + p) * D + i] - mu[i] : 0.f;
  }
  __syncthreads();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nw = blockDim.x / 32;
  gptr<const float> lp = linv + (long long)p * packed_len(D);
  double sq[NB];
#pragma unroll
  for (int b = 0; b < NB; b++) sq[b] = 0;
  for (int i = warp; i < D; i += nw) {
    gptr<const float> row = lp + (long long)i * (i + 1) / 2;
    float acc[NB];
#pragma unroll
    for (int b = 0; b < NB; b++) acc[b] = 0.f;
    for (int j = lane; j <= i; j += 32) {
      const float l = row[j];
#pragma unroll
      for (int b = 0; b < NB; b++) acc[b] += l * y[b * D + j];
    }
#pragma unroll
    for (int b = 0; b < NB; b++) {
      float v = acc[b];
      for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
      sq[b] += (double)v * v;
    }
  }
  if (lane == 0) {
#pragma unroll
    for (int b = 0; b < NB; b++) part[warp * NB + b] = sq[b];
  }
  __syncthreads();
  if (threadIdx.x < nb) {
    double s = 0;
    for (int w = 0; w < nw; w++) s += part[w * NB + threadIdx.x];
    dist[(long long)(b0 + threadIdx.x) * P + p] = (float)sqrt(s);
  }
}

// ---------------------------------------------------------------- API

struct padim_ctx {
  int device;
  cudaStream_t compute, copy;
};

struct padim_acc {
  padim_ctx *ctx;
  int P, D, maxb, slot;
  long long L;
  int64_t count;
  double *mean, *m2, *delta, *bmean;
  float *x[2], *h[2];
  cudaEvent_t copied[2], consumed[2];
};

struct padim_scorer {
  padim_ctx *ctx;
  int P, D, maxb, slot;
  long long L;
  float *mean, *linv;
  float *x[2], *dist[2], *hx[2], *hdist[2];
  cudaEvent_t copied[2], done[2];
  float *pending_dst[2];  // where a slot's distances go once its copy is done
  int pending_n[2];
};

extern "C" {

void padim_set_debug_sync(int on) { g_debug_sync = on; }

int padim_device_count(int *count, char *err, size_t errlen) {
  *count = 0;
  cudaError_t e = cudaGetDeviceCount(count);
  if (e != cudaSuccess) {
    cudaGetLastError();
    *count = 0;
    return fail(err, errlen, PADIM_ERR_NO_DEVICE, "no usable CUDA device: %s", cudaGetErrorString(e));
  }
  return PADIM_OK;
}

int padim_device_info(int device, char *name, size_t namelen, size_t *total_mem, size_t *free_mem, int *cc_major,
                      int *cc_minor, char *err, size_t errlen) {
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, device));
  CK(cudaSetDevice(device));
  CK(cudaMemGetInfo(free_mem, total_mem));
  snprintf(name, namelen, "%s", prop.name);
  *cc_major = prop.major;
  *cc_minor = prop.minor;
  return PADIM_OK;
}

int padim_ctx_create(int device, padim_ctx **out, char *err, size_t errlen) {
  *out = nullptr;
  int n = 0;
  int rc = padim_device_count(&n, err, errlen);
  if (rc != PADIM_OK) return rc;
  if (device < 0 || device >= n) return fail(err, errlen, PADIM_ERR_NO_DEVICE, "CUDA device %d requested, %d present", device, n);
  CK(cudaSetDevice(device));
  padim_ctx *c = new padim_ctx{device, nullptr, nullptr};
  cudaError_t e = cudaStreamCreateWithFlags(&c->compute, cudaStreamNonBlocking);
  if (e == cudaSuccess) e = cudaStreamCreateWithFlags(&c->copy, cudaStreamNonBlocking);
  if (e != cudaSuccess) {
    padim_ctx_destroy(c);
    return fail(err, errlen, cuda_code(e), "creating streams: %s", cudaGetErrorString(e));
  }
  *out = c;
  return PADIM_OK;
}

void padim_ctx_destroy(padim_ctx *c) {
  if (!c) return;
  cudaSetDevice(c->device);
  if (c->compute) cudaStreamDestroy(c->compute);
  if (c->copy) cudaStreamDestroy(c->copy);
  delete c;
}

void padim_acc_destroy(padim_acc *a) {
  if (!a) return;
  cudaSetDevice(a->ctx->device);
  cudaStreamSynchronize(a->ctx->compute);
  cudaFree(a->mean);
  cudaFree(a->m2);
  cudaFree(a->delta);
  cudaFree(a->bmean);
  for (int s = 0; s < 2; s++) {
    cudaFree(a->x[s]);
    cudaFreeHost(a->h[s]);
    if (a->copied[s]) cudaEventDestroy(a->copied[s]);
    if (a->consumed[s]) cudaEventDestroy(a->consumed[s]);
  }
  delete a;
}

int padim_acc_create(padim_ctx *ctx, int P, int D, int max_batch, padim_acc **out, char *err, size_t errlen) {
  *out = nullptr;
  if (P <= 0 || D <= 0 || max_batch <= 0) return fail(err, errlen, PADIM_ERR_ARG, "accumulator P=%d D=%d batch=%d", P, D, max_batch);
  CK(cudaSetDevice(ctx->device));
  padim_acc *a = new padim_acc();
  a->ctx = ctx;
  a->P = P;
  a->D = D;
  a->L = packed_len(D);
  a->maxb = max_batch;
  const size_t pd = (size_t)P * D;
  const size_t xb = (size_t)max_batch * pd * sizeof(float);
  cudaError_t e = cudaMalloc(&a->mean, pd * sizeof(double));
  if (e == cudaSuccess) e = cudaMalloc(&a->m2, (size_t)P * a->L * sizeof(double));
  if (e == cudaSuccess) e = cudaMalloc(&a->delta, pd * sizeof(double));
  if (e == cudaSuccess) e = cudaMalloc(&a->bmean, pd * sizeof(double));
  for (int s = 0; s < 2 && e == cudaSuccess; s++) {
    e = cudaMalloc(&a->x[s], xb);
    if (e == cudaSuccess) e = cudaMallocHost(&a->h[s], xb);
    if (e == cudaSuccess) e = cudaEventCreateWithFlags(&a->copied[s], cudaEventDisableTiming);
    if (e == cudaSuccess) e = cudaEventCreateWithFlags(&a->consumed[s], cudaEventDisableTiming);
  }
  if (e == cudaSuccess) e = cudaMemsetAsync(a->mean, 0, pd * sizeof(double), ctx->compute);
  if (e == cudaSuccess) e = cudaMemsetAsync(a->m2, 0, (size_t)P * a->L * sizeof(double), ctx->compute);
  if (e != cudaSuccess) {
    cudaGetLastError();
    padim_acc_destroy(a);
    return fail(err, errlen, cuda_code(e), "allocating the accumulator (P=%d, D=%d: %.2f GiB of statistics, batch %d): %s", P, D,
                (double)P * (packed_len(D) + 3.0 * D) * 8 / (1 << 30), max_batch, cudaGetErrorString(e));
  }
  *out = a;
  return PADIM_OK;
}

int padim_acc_add(padim_acc *a, const float *x, int n, char *err, size_t errlen) {
  if (n <= 0) return fail(err, errlen, PADIM_ERR_ARG, "batch of %d images", n);
  padim_ctx *c = a->ctx;
  CK(cudaSetDevice(c->device));
  const long long pd = (long long)a->P * a->D;
  const int tiles = (a->D + TILE - 1) / TILE;
  for (int off = 0; off < n; off += a->maxb) {
    const int nb = n - off < a->maxb ? n - off : a->maxb;
    const int s = a->slot;
    a->slot ^= 1;
    const size_t bytes = (size_t)nb * pd * sizeof(float);
    CK(cudaEventSynchronize(a->consumed[s]));  // the slot's previous batch is done with
    memcpy(a->h[s], x + (size_t)off * pd, bytes);
    CK(cudaMemcpyAsync(a->x[s], a->h[s], bytes, cudaMemcpyHostToDevice, c->copy));
    CK(cudaEventRecord(a->copied[s], c->copy));
    CK(cudaStreamWaitEvent(c->compute, a->copied[s], 0));
    const double na = (double)a->count;
    const int threads = 256;
    long long blocks = (pd + threads - 1) / threads;
    if (blocks > 65535LL * 16) blocks = 65535LL * 16;
    LAUNCH(k_batch_mean, (unsigned)blocks, threads, 0, c->compute, a->x[s], nb, pd, na, a->mean, a->delta, a->bmean);
    LAUNCHED("batch_mean");
    const double f = na * nb / (na + nb);
    LAUNCH(k_m2_update, dim3(a->P, tiles * (tiles + 1) / 2), dim3(TILE, TROWS), 0, c->compute, a->x[s], nb, a->P, a->D,
           a->bmean, a->delta, f, a->m2);
    LAUNCHED("m2_update");
    CK(cudaEventRecord(a->consumed[s], c->compute));
    a->count += nb;
  }
  return PADIM_OK;
}

int padim_acc_stats(padim_acc *a, double *mean, double *m2, int64_t *count, char *err, size_t errlen) {
  CK(cudaSetDevice(a->ctx->device));
  CK(cudaStreamSynchronize(a->ctx->compute));
  CK(cudaMemcpy(mean, a->mean, (size_t)a->P * a->D * sizeof(double), cudaMemcpyDeviceToHost));
  CK(cudaMemcpy(m2, a->m2, (size_t)a->P * a->L * sizeof(double), cudaMemcpyDeviceToHost));
  *count = a->count;
  return PADIM_OK;
}

int padim_factorize(padim_ctx *c, int P, int D, int64_t count, const double *m2, double eps, float *linv,
                    int *bad_patch, char *err, size_t errlen) {
  *bad_patch = -1;
  if (P <= 0 || D <= 0 || D > 1024 || count < 2)
    return fail(err, errlen, PADIM_ERR_ARG, "factorize P=%d D=%d (at most 1024) N=%lld (at least 2)", P, D, (long long)count);
  CK(cudaSetDevice(c->device));
  const long long L = packed_len(D);
  size_t freeb = 0, total = 0;
  CK(cudaMemGetInfo(&freeb, &total));
  // two dense float64 matrices per patch in flight, within half the free memory
  const size_t per = (size_t)D * D * 8 * 2 + (size_t)L * (8 + 4) + 4;
  int chunk = (int)((freeb / 2) / per);
  if (chunk > P) chunk = P;
  if (chunk > 4096) chunk = 4096;
  if (chunk < 1) return fail(err, errlen, PADIM_ERR_OOM, "factorising D=%d needs %.1f MiB of free device memory per patch, %.1f MiB free", D, per / 1048576.0, freeb / 1048576.0);
  double *dm2 = nullptr, *A = nullptr, *X = nullptr;
  float *dl = nullptr;
  int *dbad = nullptr;
  int *hbad = new int[chunk];
  int rc = PADIM_OK;
  cudaError_t e = cudaMalloc(&dm2, (size_t)chunk * L * 8);
  if (e == cudaSuccess) e = cudaMalloc(&A, (size_t)chunk * D * D * 8);
  if (e == cudaSuccess) e = cudaMalloc(&X, (size_t)chunk * D * D * 8);
  if (e == cudaSuccess) e = cudaMalloc(&dl, (size_t)chunk * L * 4);
  if (e == cudaSuccess) e = cudaMalloc(&dbad, (size_t)chunk * 4);
  if (e != cudaSuccess) {
    cudaGetLastError();
    rc = fail(err, errlen, cuda_code(e), "allocating factorisation workspace (%d patches of D=%d): %s", chunk, D, cudaGetErrorString(e));
  }
  const double inv = 1.0 / (double)(count - 1);
  const int threads = 256;
  for (int p0 = 0; rc == PADIM_OK && p0 < P; p0 += chunk) {
    const int np = P - p0 < chunk ? P - p0 : chunk;
    e = cudaMemcpyAsync(dm2, m2 + (size_t)p0 * L, (size_t)np * L * 8, cudaMemcpyHostToDevice, c->compute);
    if (e != cudaSuccess) break;
    LAUNCH(k_expand, np, threads, 0, c->compute, dm2, A, D, inv, eps);
    LAUNCH(k_cholesky, np, threads, D * sizeof(double), c->compute, A, D, dbad);
    LAUNCH(k_trinv, np, threads, D * sizeof(double), c->compute, A, X, D, dbad);
    LAUNCH(k_pack, np, threads, 0, c->compute, X, dl, D, dbad);
    if ((e = cudaGetLastError()) != cudaSuccess) break;
    if ((e = cudaMemcpyAsync(linv + (size_t)p0 * L, dl, (size_t)np * L * 4, cudaMemcpyDeviceToHost, c->compute)) != cudaSuccess) break;
    if ((e = cudaMemcpyAsync(hbad, dbad, (size_t)np * 4, cudaMemcpyDeviceToHost, c->compute)) != cudaSuccess) break;
    if ((e = cudaStreamSynchronize(c->compute)) != cudaSuccess) break;
    for (int i = 0; i < np; i++) {
      if (hbad[i]) {
        *bad_patch = p0 + i;
        rc = fail(err, errlen, PADIM_ERR_NOT_PD, "covariance of patch %d is not positive definite", p0 + i);
        break;
      }
    }
  }
  if (rc == PADIM_OK && e != cudaSuccess) {
    cudaGetLastError();
    rc = fail(err, errlen, cuda_code(e), "factorisation: %s", cudaGetErrorString(e));
  }
  cudaFree(dm2);
  cudaFree(A);
  cudaFree(X);
  cudaFree(dl);
  cudaFree(dbad);
  delete[] hbad;
  return rc;
}

void padim_scorer_destroy(padim_scorer *s) {
  if (!s) return;
  cudaSetDevice(s->ctx->device);
  cudaStreamSynchronize(s->ctx->compute);
  cudaFree(s->mean);
  cudaFree(s->linv);
  for (int k = 0; k < 2; k++) {
    cudaFree(s->x[k]);
    cudaFree(s->dist[k]);
    cudaFreeHost(s->hx[k]);
    cudaFreeHost(s->hdist[k]);
    if (s->copied[k]) cudaEventDestroy(s->copied[k]);
    if (s->done[k]) cudaEventDestroy(s->done[k]);
  }
  delete s;
}

int padim_scorer_create(padim_ctx *c, int P, int D, int max_batch, const float *mean, const float *linv, padim_scorer **out,
                        char *err, size_t errlen) {
  *out = nullptr;
  if (P <= 0 || D <= 0 || max_batch <= 0) return fail(err, errlen, PADIM_ERR_ARG, "scorer P=%d D=%d batch=%d", P, D, max_batch);
  CK(cudaSetDevice(c->device));
  padim_scorer *s = new padim_scorer();
  s->ctx = c;
  s->P = P;
  s->D = D;
  s->L = packed_len(D);
  s->maxb = max_batch;
  const size_t xb = (size_t)max_batch * P * D * sizeof(float), db = (size_t)max_batch * P * sizeof(float);
  cudaError_t e = cudaMalloc(&s->mean, (size_t)P * D * 4);
  if (e == cudaSuccess) e = cudaMalloc(&s->linv, (size_t)P * s->L * 4);
  for (int k = 0; k < 2 && e == cudaSuccess; k++) {
    e = cudaMalloc(&s->x[k], xb);
    if (e == cudaSuccess) e = cudaMalloc(&s->dist[k], db);
    if (e == cudaSuccess) e = cudaMallocHost(&s->hx[k], xb);
    if (e == cudaSuccess) e = cudaMallocHost(&s->hdist[k], db);
    if (e == cudaSuccess) e = cudaEventCreateWithFlags(&s->copied[k], cudaEventDisableTiming);
    if (e == cudaSuccess) e = cudaEventCreateWithFlags(&s->done[k], cudaEventDisableTiming);
  }
  if (e == cudaSuccess) e = cudaMemcpy(s->mean, mean, (size_t)P * D * 4, cudaMemcpyHostToDevice);
  if (e == cudaSuccess) e = cudaMemcpy(s->linv, linv, (size_t)P * s->L * 4, cudaMemcpyHostToDevice);
  if (e != cudaSuccess) {
    cudaGetLastError();
    padim_scorer_destroy(s);
    return fail(err, errlen, cuda_code(e), "allocating the scorer (P=%d, D=%d: %.2f GiB model, batch %d): %s", P, D,
                (double)P * packed_len(D) * 4 / (1 << 30), max_batch, cudaGetErrorString(e));
  }
  *out = s;
  return PADIM_OK;
}

}  // extern "C"

namespace {

// drain copies a finished slot's distances to their destination.
int drain(padim_scorer *s, int k, char *err, size_t errlen) {
  if (!s->pending_dst[k]) return PADIM_OK;
  CK(cudaEventSynchronize(s->done[k]));
  memcpy(s->pending_dst[k], s->hdist[k], (size_t)s->pending_n[k] * s->P * sizeof(float));
  s->pending_dst[k] = nullptr;
  return PADIM_OK;
}

template <int NB>
int launch_mahalanobis(padim_scorer *s, int k, int nb, char *err, size_t errlen) {
  const int threads = 256;
  const size_t smem = (size_t)((NB * s->D + 1) & ~1) * sizeof(float) + (threads / 32) * NB * sizeof(double);
  LAUNCH(k_mahalanobis<NB>, dim3(s->P, (nb + NB - 1) / NB), threads, smem, s->ctx->compute, s->x[k], nb, s->P, s->D, s->mean,
         s->linv, s->dist[k]);
  LAUNCHED("mahalanobis");
  return PADIM_OK;
}

}  // namespace

extern "C" int padim_scorer_score(padim_scorer *s, const float *x, int n, float *dist, char *err, size_t errlen) {
  if (n <= 0) return fail(err, errlen, PADIM_ERR_ARG, "batch of %d images", n);
  padim_ctx *c = s->ctx;
  CK(cudaSetDevice(c->device));
  const size_t pd = (size_t)s->P * s->D;
  for (int off = 0; off < n; off += s->maxb) {
    const int nb = n - off < s->maxb ? n - off : s->maxb;
    const int k = s->slot;
    s->slot ^= 1;
    int rc = drain(s, k, err, errlen);
    if (rc != PADIM_OK) return rc;
    memcpy(s->hx[k], x + (size_t)off * pd, (size_t)nb * pd * sizeof(float));
    CK(cudaMemcpyAsync(s->x[k], s->hx[k], (size_t)nb * pd * sizeof(float), cudaMemcpyHostToDevice, c->copy));
    CK(cudaEventRecord(s->copied[k], c->copy));
    CK(cudaStreamWaitEvent(c->compute, s->copied[k], 0));
    // 16 images per block while their embeddings fit in 40 KiB of shared memory, else 8
    rc = (16 * s->D * 4 <= 40 * 1024) ? launch_mahalanobis<16>(s, k, nb, err, errlen) : launch_mahalanobis<8>(s, k, nb, err, errlen);
    if (rc != PADIM_OK) return rc;
    CK(cudaMemcpyAsync(s->hdist[k], s->dist[k], (size_t)nb * s->P * sizeof(float), cudaMemcpyDeviceToHost, c->compute));
    CK(cudaEventRecord(s->done[k], c->compute));
    s->pending_dst[k] = dist + (size_t)off * s->P;
    s->pending_n[k] = nb;
  }
  for (int k = 0; k < 2; k++) {
    int rc = drain(s, k, err, errlen);
    if (rc != PADIM_OK) return rc;
  }
  return PADIM_OK;
}
