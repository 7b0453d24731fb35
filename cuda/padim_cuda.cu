// padim_cuda.cu — CUDA kernels for PaDiM's Gaussian stages behind padim_cuda.h.
//
//   accumulation   images are staged on the device (128 per pass by default); per pass
//                  k_stage_mean takes the batch means (compensated float32 sums) and
//                  folds them into the float64 running mean, and k_syrk_fold forms the
//                  centred batch product YᵀY in float32 register tiles (64×64 per block)
//                  and folds it, with Chan's δδᵀ term, into the float64 M2: float64
//                  appears only in that once-per-pass fold.
//   factorisation  k_factor: one block per patch, tiled (32×32) left-looking Cholesky then
//                  an in-place bottom-up triangular inverse, tiles in shared memory, the
//                  factor in a per-patch tile workspace in global memory. Arithmetic is a
//                  template: float64 where the card runs it at ≥ 1/4 of the float32 rate,
//                  else "double-float" (float hi + float lo, error-free transformations
//                  on FMA), so consumer cards run no float64 in the O(D³) loops.
//   scoring        k_score: block (patch, 64 images; 16 for calls of ≤ 16); L⁻¹ row tiles
//                  (64 rows × 32) and the centred images in shared memory, 4×4 register
//                  tiles; every patch's L⁻¹ is read once per 64 images.
//   low-rank form  (N samples, Σ⁻¹ by Woodbury; see "low-rank form" below) k_lr_center,
//                  k_lr_gram, k_lr_chol, k_lr_solve: μ and M = L⁻¹A per patch from the
//                  staged samples, with LLᵀ = AAᵀ + εI (N×N), in the factorisation's
//                  arithmetic; k_lr_score: like k_score over M's rows, with compensated
//                  (double-float) or float64 dot products, since ‖y‖² − ‖My‖² cancels.
// Every kernel's shared memory is dynamic and independent of D, so no size of D needs
// more than 48 KiB per block; launches still go through launch_prep, which opts in to
// larger shared memory where a kernel asks for it and refuses, before launch, what the
// device cannot run.
#include "padim_cuda.h"

#ifndef PADIM_CUDA_EMU
#include <cuda_runtime.h>
// LAUNCH, DYNAMIC_SHARED, gptr and the counters let cuda/emu run this same source on
// the host; on the GPU they are the plain constructs.
#define LAUNCH(kernel, grid, block, smem, stream, ...) kernel<<<grid, block, smem, stream>>>(__VA_ARGS__)
extern __shared__ __align__(16) unsigned char padim_dynamic_smem[];
#define DYNAMIC_SHARED(T, name) T *name = reinterpret_cast<T *>(padim_dynamic_smem)
template <class T>
using gptr = T *;
template <class U, class T>
__host__ __device__ inline U *gptr_cast(T *p) {
  return reinterpret_cast<U *>(p);
}
#define FLOPS(n) ((void)0)
#define FP64OPS(n) ((void)0)
#endif

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace {

std::atomic<int> g_debug_sync{0};
std::atomic<int> g_profile{0};
std::atomic<int> g_live{0};

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

// CK returns from the calling function on a CUDA error, with the call named.
#define CK(call)                                                                                   \
  do {                                                                                             \
    cudaError_t e_ = (call);                                                                       \
    if (e_ != cudaSuccess) {                                                                       \
      cudaGetLastError();                                                                          \
      return fail(err, errlen, cuda_code(e_), "%s: %s", #call, cudaGetErrorString(e_));            \
    }                                                                                              \
  } while (0)

// TRY returns from the calling function when a library call failed.
#define TRY(call)                  \
  do {                             \
    int rc_ = (call);              \
    if (rc_ != PADIM_OK) return rc_; \
  } while (0)

// ---------------------------------------------------------------- helpers

__host__ __device__ inline long long packed_len(int d) { return (long long)d * (d + 1) / 2; }

constexpr int FT = 32;          // factorisation tile side
constexpr int FTHREADS = 64;    // factorisation threads per block (4×4 outputs each)
constexpr int ST = 64;          // accumulation output tile side
constexpr int SK = 32;          // images per accumulation shared-memory chunk
constexpr int STHREADS = 256;   // accumulation threads per block (4×4 outputs each)
constexpr int QJ = 32;          // scoring: columns per chunk
constexpr int QB = 64;          // scoring: images per block (L⁻¹ read once per QB images)
constexpr int QTHREADS = 256;   // scoring threads per block (4 rows × 4 images each)
constexpr int MTHREADS = 256;   // mean threads per block

__host__ __device__ inline int ntiles(int d, int t) { return (d + t - 1) / t; }
__host__ __device__ inline long long tri(long long n) { return n * (n + 1) / 2; }

// ---------------------------------------------------------------- accumulation

// k_stage_mean: per (patch, channel) of a patch block, the batch mean of nb staged
// images (compensated float32 sum), δ = batch mean − running mean, and the running
// mean's Chan update (the float64 fold: a few float64 operations per element per pass).
__global__ void __launch_bounds__(MTHREADS)
    k_stage_mean(gptr<const float> x, long long xstride, int nb, int pcount, int D, double na, gptr<double> mean,
                 gptr<float> bmean, gptr<double> delta) {
  const bool first = na == 0;  // nothing to read yet: the statistics are written, not updated
  const long long n = (long long)pcount * D;
  for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < n; e += (long long)gridDim.x * blockDim.x) {
    float s = 0.f, c = 0.f;  // Kahan
    for (int b = 0; b < nb; b++) {
      const float y = (float)x[b * xstride + e] - c;
      const float t = s + y;
      c = (t - s) - y;
      s = t;
    }
    FLOPS(4 * nb);
    const double mb = ((double)s - (double)c) / nb;
    const double m = first ? 0.0 : (double)mean[e];
    const double d = mb - m;
    mean[e] = m + d * nb / (na + nb);
    delta[e] = d;
    bmean[e] = (float)mb;
    FP64OPS(7);
  }
}

// k_syrk_fold: block (tile pair of the lower triangle, patch of the block). The centred
// images of two 64-channel column ranges pass through shared memory 32 images at a
// time; each thread accumulates a 4×4 float32 tile of YᵀY in registers, then folds it
// into the float64 M2 with f·δ_iδ_j (Chan). Tile pairs vary fastest, so the blocks of
// one patch run together and share its images in L2.
__global__ void __launch_bounds__(STHREADS)
    k_syrk_fold(gptr<const float> x, long long xstride, int nb, int D, int pairs, gptr<const float> bmean,
                gptr<const double> delta, double f, int first, gptr<double> m2) {
  DYNAMIC_SHARED(float, sm);
  float *sA = sm;                   // [SK][ST + 4]
  float *sB = sm + SK * (ST + 4);   // [SK][ST + 4]
  const long long blk = blockIdx.x;
  const int p = (int)(blk / pairs);
  const int t = (int)(blk % pairs);
  int ti = (int)((sqrtf(8.f * t + 1.f) - 1.f) * 0.5f);
  while (tri(ti + 1) <= t) ti++;
  while (tri(ti) > t) ti--;
  const int tj = t - (int)tri(ti);
  const int i0 = ti * ST, j0 = tj * ST;
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  gptr<const float> xp = x + (long long)p * D;
  gptr<const float> bm = bmean + (long long)p * D;
  float acc[4][4];
#pragma unroll
  for (int a = 0; a < 4; a++)
#pragma unroll
    for (int b = 0; b < 4; b++) acc[a][b] = 0.f;
  for (int b0 = 0; b0 < nb; b0 += SK) {
    for (int e = tid; e < SK * ST; e += STHREADS) {
      const int bb = e / ST, c = e % ST, b = b0 + bb;
      float va = 0.f, vb = 0.f;
      if (b < nb) {
        const int ci = i0 + c, cj = j0 + c;
        if (ci < D) va = (float)xp[b * xstride + ci] - (float)bm[ci];
        if (cj < D) vb = (float)xp[b * xstride + cj] - (float)bm[cj];
      }
      sA[bb * (ST + 4) + c] = va;
      sB[bb * (ST + 4) + c] = vb;
    }
    __syncthreads();
    const int kmax = min(SK, nb - b0);
    for (int k = 0; k < kmax; k++) {
      float av[4], bv[4];
#pragma unroll
      for (int a = 0; a < 4; a++) av[a] = sA[k * (ST + 4) + ty + 16 * a];
#pragma unroll
      for (int b = 0; b < 4; b++) bv[b] = sB[k * (ST + 4) + tx + 16 * b];
#pragma unroll
      for (int a = 0; a < 4; a++)
#pragma unroll
        for (int b = 0; b < 4; b++) acc[a][b] = fmaf(av[a], bv[b], acc[a][b]);
    }
    FLOPS(32 * kmax);
    __syncthreads();
  }
  gptr<const double> dp = delta + (long long)p * D;
  gptr<double> m = m2 + (long long)p * packed_len(D);
#pragma unroll
  for (int a = 0; a < 4; a++) {
    const int i = i0 + ty + 16 * a;
    if (i >= D) continue;
    const double di = (double)dp[i] * f;
#pragma unroll
    for (int b = 0; b < 4; b++) {
      const int j = j0 + tx + 16 * b;
      if (j <= i) {
        const double v = (double)acc[a][b] + di * (double)dp[j];
        if (first)
          m[(long long)i * (i + 1) / 2 + j] = v;  // the first pass writes M2 without reading it
        else
          m[(long long)i * (i + 1) / 2 + j] += v;
        FP64OPS(3);
      }
    }
  }
}

// ---------------------------------------------------------------- factorisation arithmetic

// F64: native float64.
struct F64 {
  typedef double V;
  // resolution: the smallest ε relative to a Gram matrix's largest diagonal that the
  // low-rank factorisation accepts (0: only the pivot test, as on the CPU).
  static constexpr double resolution = 0.0;
  struct Acc {
    double s;
  };
  static __device__ __forceinline__ V from_double(double x) { return x; }
  static __device__ __forceinline__ float to_float(V v) { return (float)v; }
  static __device__ __forceinline__ double approx(V v) { return v; }
  static __device__ __forceinline__ V zero() { return 0.0; }
  static __device__ __forceinline__ Acc acc(V c) { return Acc{c}; }
  // sub: a −= x·y; add: a += x·y
  static __device__ __forceinline__ void sub(Acc &a, V x, V y) {
    a.s = fma(-x, y, a.s);
    FP64OPS(2);
  }
  static __device__ __forceinline__ void add(Acc &a, V x, V y) {
    a.s = fma(x, y, a.s);
    FP64OPS(2);
  }
  static __device__ __forceinline__ V get(const Acc &a) { return a.s; }
  static __device__ __forceinline__ V mul(V a, V b) {
    FP64OPS(1);
    return a * b;
  }
  static __device__ __forceinline__ V div(V a, V b) {
    FP64OPS(1);
    return a / b;
  }
  static __device__ __forceinline__ V sqrt_(V a) {
    FP64OPS(1);
    return sqrt(a);
  }
  static __device__ __forceinline__ V neg(V a) { return -a; }
  static __device__ __forceinline__ bool finite(V a) { return isfinite(a); }
  // The low-rank form's extras. diff: a − b of two floats (exact); diffv: a − v;
  // addf/addv: a += x; maddf: a += m·y with m a float.
  static __device__ __forceinline__ V diff(float a, float b) {
    FP64OPS(1);
    return (double)a - (double)b;
  }
  static __device__ __forceinline__ V diffv(float a, V b) {
    FP64OPS(1);
    return (double)a - b;
  }
  static __device__ __forceinline__ void addf(Acc &a, float x) {
    a.s += (double)x;
    FP64OPS(1);
  }
  static __device__ __forceinline__ void addv(Acc &a, V x) {
    a.s += x;
    FP64OPS(1);
  }
  static __device__ __forceinline__ void maddf(Acc &a, float m, V y) {
    a.s = fma((double)m, y, a.s);
    FP64OPS(2);
  }
};

// DF32: a value is hi + lo, two floats (about 44 significant bits), with error-free
// sums and FMA products. Dot products accumulate as an unevaluated pair (s, c):
// Ogita–Rump–Oishi Dot2, about 12 float32 operations per multiply-add. The rounded
// products whose error an FMA recovers are __fmul_rn: nvcc contracts a plain a*b into
// a following add (--fmad=true, also across statements), which would fold the product
// into the sum and break the error-free transformation.
struct DF32 {
  typedef float2 V;
  // AAᵀ + εI always has the eigenvalue ε (centred samples sum to zero); below about
  // 2⁻⁴⁴ of the largest diagonal, ε is lost in double-float's rounding and the last
  // pivots are noise of the size the pivot test accepts: such a patch is refused.
  static constexpr double resolution = 5.684341886080802e-14;  // 2⁻⁴⁴
  struct Acc {
    float s, c;
  };
  static __device__ __forceinline__ V two_sum(float a, float b) {
    const float s = a + b;
    const float bb = s - a;
    return make_float2(s, (a - (s - bb)) + (b - bb));
  }
  static __device__ __forceinline__ V fast_two_sum(float a, float b) {
    const float s = a + b;
    return make_float2(s, b - (s - a));
  }
  static __device__ __forceinline__ V from_double(double x) {
    const float hi = (float)x;
    FP64OPS(2);
    return make_float2(hi, (float)(x - (double)hi));
  }
  static __device__ __forceinline__ float to_float(V v) { return v.x + v.y; }
  static __device__ __forceinline__ double approx(V v) { return (double)v.x + (double)v.y; }
  static __device__ __forceinline__ V zero() { return make_float2(0.f, 0.f); }
  static __device__ __forceinline__ Acc acc(V c) { return Acc{c.x, c.y}; }
  static __device__ __forceinline__ void sub(Acc &a, V x, V y) {
    const float ph = __fmul_rn(x.x, y.x);
    float pe = __fmaf_rn(x.x, y.x, -ph);
    pe = __fmaf_rn(x.x, y.y, __fmaf_rn(x.y, y.x, pe));
    const V s = two_sum(a.s, -ph);
    a.s = s.x;
    a.c += s.y - pe;
  }
  static __device__ __forceinline__ void add(Acc &a, V x, V y) {
    const float ph = __fmul_rn(x.x, y.x);
    float pe = __fmaf_rn(x.x, y.x, -ph);
    pe = __fmaf_rn(x.x, y.y, __fmaf_rn(x.y, y.x, pe));
    const V s = two_sum(a.s, ph);
    a.s = s.x;
    a.c += s.y + pe;
  }
  static __device__ __forceinline__ V get(const Acc &a) { return two_sum(a.s, a.c); }
  static __device__ __forceinline__ V mul(V a, V b) {
    const float ph = __fmul_rn(a.x, b.x);
    float pe = __fmaf_rn(a.x, b.x, -ph);
    pe = __fmaf_rn(a.x, b.y, __fmaf_rn(a.y, b.x, pe));
    return fast_two_sum(ph, pe);
  }
  static __device__ __forceinline__ V div(V a, V b) {
    const float q1 = a.x / b.x;
    // r = a − q1·b, exactly enough: a.x − q1·b.x cancels (Sterbenz), the rest is small
    const float ph = __fmul_rn(q1, b.x);
    const float pe = __fmaf_rn(q1, b.x, -ph);
    const float r = ((a.x - ph) - pe) + (a.y - q1 * b.y);
    return fast_two_sum(q1, r / b.x);
  }
  static __device__ __forceinline__ V sqrt_(V a) {
    if (!(a.x > 0.f)) return make_float2(sqrtf(a.x), 0.f);
    const float s = sqrtf(a.x);
    const float p = __fmul_rn(s, s);
    const float e = __fmaf_rn(s, s, -p);
    const float r = ((a.x - p) - e) + a.y;
    return fast_two_sum(s, r / (2.f * s));
  }
  static __device__ __forceinline__ V neg(V a) { return make_float2(-a.x, -a.y); }
  static __device__ __forceinline__ bool finite(V a) { return isfinite(a.x) && isfinite(a.y); }
  // The low-rank form's extras (see F64). diff is exact (two_sum); maddf is Dot2's step
  // with an exact float32 factor: the product m·y.x is split error-free by an FMA, m·y.y
  // is a small correction; about 11 float32 operations per multiply-add.
  static __device__ __forceinline__ V diff(float a, float b) { return two_sum(a, -b); }
  static __device__ __forceinline__ V diffv(float a, V b) {
    const V s = two_sum(a, -b.x);
    return two_sum(s.x, s.y - b.y);
  }
  static __device__ __forceinline__ void addf(Acc &a, float x) {
    const V s = two_sum(a.s, x);
    a.s = s.x;
    a.c += s.y;
  }
  static __device__ __forceinline__ void addv(Acc &a, V x) {
    const V s = two_sum(a.s, x.x);
    a.s = s.x;
    a.c += s.y + x.y;
  }
  static __device__ __forceinline__ void maddf(Acc &a, float m, V y) {
    const float ph = __fmul_rn(m, y.x);
    const float pe = __fmaf_rn(m, y.y, __fmaf_rn(m, y.x, -ph));
    const V s = two_sum(a.s, ph);
    a.s = s.x;
    a.c += s.y + pe;
  }
};

// ---------------------------------------------------------------- factorisation

// Shared memory of k_factor: four 32×33 tiles (A, B, diagonal L, diagonal inverse X)
// and a few flags. 33 columns: rows of a tile fall in different banks.
constexpr int FLD = FT + 1;
template <class T>
constexpr size_t factor_smem() {
  return 4 * (size_t)FT * FLD * sizeof(typename T::V) + 64;
}

// The workspace of a patch holds the nt(nt+1)/2 lower tiles, tile (I, J) at
// I(I+1)/2+J, each 32×32 row-major. Columns and rows past D are the identity.
template <class T>
__device__ __forceinline__ gptr<typename T::V> tile_at(gptr<typename T::V> w, int I, int J) {
  return w + (tri(I) + J) * (long long)(FT * FT);
}

// load_tile copies tile (I, J) of w into s (row-major, stride FLD); transposed if asked.
template <class T>
__device__ __forceinline__ void load_tile(gptr<typename T::V> w, int I, int J, typename T::V *s, bool transpose) {
  gptr<typename T::V> t = tile_at<T>(w, I, J);
  for (int e = threadIdx.x; e < FT * FT; e += FTHREADS) {
    const int r = e / FT, c = e % FT;
    const typename T::V v = t[e];
    if (transpose)
      s[c * FLD + r] = v;
    else
      s[r * FLD + c] = v;
  }
}

// potrf factorises the symmetric 32×32 tile in s (lower part read) in place: L with
// zeros above the diagonal. A pivot that is not positive sets *bad; max_diag/min_diag
// collect the diagonal of L for the CPU backend's pivot-ratio test.
template <class T>
__device__ void potrf_tile(typename T::V *s, int base, int D, int *bad, double *diag_max, double *diag_min) {
  typedef typename T::V V;
  for (int k = 0; k < FT; k++) {
    if (threadIdx.x == 0) {
      V d = s[k * FLD + k];
      if (!(T::approx(d) > 0.0) || !T::finite(d)) {
        *bad = 1;
        d = T::from_double(1.0);  // go on with a harmless pivot; the patch is rejected
      }
      const V piv = T::sqrt_(d);
      s[k * FLD + k] = piv;
      if (base + k < D) {  // the padding's unit pivots do not count
        const double pa = T::approx(piv);
        *diag_max = fmax(*diag_max, pa);
        *diag_min = fmin(*diag_min, pa);
      }
    }
    __syncthreads();
    const V piv = s[k * FLD + k];
    for (int i = k + 1 + threadIdx.x; i < FT; i += FTHREADS) {
      s[i * FLD + k] = T::div(s[i * FLD + k], piv);
      FLOPS(1);
    }
    __syncthreads();
    for (int e = threadIdx.x; e < FT * FT; e += FTHREADS) {
      const int i = e / FT, j = e % FT;
      if (j > k && j <= i) {
        typename T::Acc a = T::acc(s[i * FLD + j]);
        T::sub(a, s[i * FLD + k], s[j * FLD + k]);
        s[i * FLD + j] = T::get(a);
        FLOPS(2);
      }
    }
    __syncthreads();
  }
  for (int e = threadIdx.x; e < FT * FT; e += FTHREADS) {
    const int i = e / FT, j = e % FT;
    if (j > i) s[i * FLD + j] = T::zero();
  }
  __syncthreads();
}

// trtri_tile writes X = L⁻¹ of the lower-triangular tile l into x (zeros above), one
// column per thread of the first warp (forward substitution).
template <class T>
__device__ void trtri_tile(const typename T::V *l, typename T::V *x) {
  for (int e = threadIdx.x; e < FT * FT; e += FTHREADS) {
    const int i = e / FT, j = e % FT;
    if (j > i) x[i * FLD + j] = T::zero();
  }
  const int c = threadIdx.x;
  if (c < FT) {
    typename T::Acc one = T::acc(T::from_double(1.0));
    x[c * FLD + c] = T::div(T::get(one), l[c * FLD + c]);
    for (int i = c + 1; i < FT; i++) {
      typename T::Acc a = T::acc(T::zero());
      for (int k = c; k < i; k++) T::sub(a, l[i * FLD + k], x[k * FLD + c]);
      x[i * FLD + c] = T::div(T::get(a), l[i * FLD + i]);
      FLOPS(2 * (i - c) + 1);
    }
  }
  __syncthreads();
}

// chol_update subtracts Σ_{K<J} L_IK·L_JKᵀ from this thread's 4×4 share of tile (I, J)
// in acc (tx, ty: the thread's column and row in the 8×8 grid): the update of a
// left-looking Cholesky (k_factor, k_lr_chol); sA and sB stage the tiles. Every thread
// of the block calls it.
template <class T>
__device__ __forceinline__ void chol_update(gptr<typename T::V> w, int I, int J, typename T::V *sA, typename T::V *sB,
                                            typename T::Acc (&acc)[4][4], int tx, int ty) {
  typedef typename T::V V;
  for (int K = 0; K < J; K++) {
    load_tile<T>(w, I, K, sA, false);
    load_tile<T>(w, J, K, sB, false);
    __syncthreads();
    for (int k = 0; k < FT; k++) {
      V av[4], bv[4];
#pragma unroll
      for (int a = 0; a < 4; a++) av[a] = sA[(ty + 8 * a) * FLD + k];
#pragma unroll
      for (int b = 0; b < 4; b++) bv[b] = sB[(tx + 8 * b) * FLD + k];
#pragma unroll
      for (int a = 0; a < 4; a++)
#pragma unroll
        for (int b = 0; b < 4; b++) T::sub(acc[a][b], av[a], bv[b]);
    }
    FLOPS(2 * 16 * FT);
    __syncthreads();
  }
}

// chol_offdiag writes an off-diagonal tile of L, A_IJ·X_JJᵀ with X_JJ = L_JJ⁻¹ in sX,
// into t, from this thread's 4×4 share of A_IJ in acc (sA stages it). Every thread
// of the block calls it.
template <class T>
__device__ __forceinline__ void chol_offdiag(typename T::Acc (&acc)[4][4], typename T::V *sA, const typename T::V *sX,
                                             gptr<typename T::V> t, int tx, int ty) {
#pragma unroll
  for (int a = 0; a < 4; a++)
#pragma unroll
    for (int b = 0; b < 4; b++) sA[(ty + 8 * a) * FLD + tx + 8 * b] = T::get(acc[a][b]);
  __syncthreads();
#pragma unroll
  for (int a = 0; a < 4; a++)
#pragma unroll
    for (int b = 0; b < 4; b++) {
      const int r = ty + 8 * a, c = tx + 8 * b;
      typename T::Acc s = T::acc(T::zero());
      for (int k = 0; k <= c; k++) T::add(s, sA[r * FLD + k], sX[c * FLD + k]);
      t[r * FT + c] = T::get(s);
      FLOPS(2 * (c + 1));
    }
}

// k_factor: one block per patch of a chunk. Σ = M2·inv + eps·I is read from the packed
// float64 statistics as the left-looking Cholesky needs each tile, L overwrites nothing
// but the workspace, then L⁻¹ replaces L tile by tile (bottom-up, in place), and each
// final tile of L⁻¹ is also rounded to float32 into the packed output. status[patch]:
// 0 fine, 1 not positive definite (or a pivot ratio below 1e-7, or non-finite).
template <class T>
__global__ void __launch_bounds__(FTHREADS)
    k_factor(gptr<const double> m2, int D, double inv, double eps, gptr<typename T::V> work, long long work_stride,
             gptr<float> out, gptr<int> status) {
  typedef typename T::V V;
  DYNAMIC_SHARED(V, sm);
  V *sA = sm, *sB = sm + FT * FLD, *sD = sm + 2 * FT * FLD, *sX = sm + 3 * FT * FLD;
  int *flags = reinterpret_cast<int *>(sm + 4 * FT * FLD);
  double *dstat = reinterpret_cast<double *>(flags + 4);  // [0] max diag, [1] min diag
  const int patch = blockIdx.x;
  const long long L = packed_len(D);
  gptr<const double> mp = m2 + (long long)patch * L;
  gptr<V> w = work + (long long)patch * work_stride;
  gptr<float> o = out + (long long)patch * L;
  const int nt = ntiles(D, FT);
  const int tid = threadIdx.x, tx = tid % 8, ty = tid / 8;
  if (tid == 0) {
    flags[0] = 0;
    flags[1] = 0;
    dstat[0] = 0.0;
    dstat[1] = INFINITY;
  }
  __syncthreads();

  // Cholesky, column of tiles by column of tiles.
  for (int J = 0; J < nt; J++) {
    for (int I = J; I < nt; I++) {
      typename T::Acc acc[4][4];
#pragma unroll
      for (int a = 0; a < 4; a++)
#pragma unroll
        for (int b = 0; b < 4; b++) {
          const int i = I * FT + ty + 8 * a, j = J * FT + tx + 8 * b;
          double v;
          if (i < D && j <= i)
            v = (double)mp[(long long)i * (i + 1) / 2 + j] * inv + (i == j ? eps : 0.0);
          else
            v = i == j ? 1.0 : 0.0;
          FP64OPS(2);
          acc[a][b] = T::acc(T::from_double(v));
        }
      chol_update<T>(w, I, J, sA, sB, acc, tx, ty);
      if (I == J) {
#pragma unroll
        for (int a = 0; a < 4; a++)
#pragma unroll
          for (int b = 0; b < 4; b++) sD[(ty + 8 * a) * FLD + tx + 8 * b] = T::get(acc[a][b]);
        __syncthreads();
        potrf_tile<T>(sD, J * FT, D, &flags[0], &dstat[0], &dstat[1]);
        trtri_tile<T>(sD, sX);
        gptr<V> t = tile_at<T>(w, J, J);
        for (int e = tid; e < FT * FT; e += FTHREADS) t[e] = sD[(e / FT) * FLD + e % FT];
      } else {
        chol_offdiag<T>(acc, sA, sX, tile_at<T>(w, I, J), tx, ty);  // L_IJ = A_IJ · L_JJ⁻ᵀ
      }
      __syncthreads();
    }
  }
  // The CPU backend's test: every pivot above 1e-7 of the largest.
  if (tid == 0 && !(dstat[1] > dstat[0] * 1e-7)) flags[0] = 1;
  __syncthreads();
  if (flags[0]) {
    if (tid == 0) status[patch] = 1;
    return;  // uniform: every thread read the same flag after the barrier
  }

  // Inverse, bottom-up and in place: X_IJ = −(Σ_{K=J+1..I} X_IK L_KJ) X_JJ.
  for (int J = nt - 1; J >= 0; J--) {
    load_tile<T>(w, J, J, sD, false);
    __syncthreads();
    trtri_tile<T>(sD, sX);
    for (int I = nt - 1; I > J; I--) {
      typename T::Acc acc[4][4];
#pragma unroll
      for (int a = 0; a < 4; a++)
#pragma unroll
        for (int b = 0; b < 4; b++) acc[a][b] = T::acc(T::zero());
      for (int K = J + 1; K <= I; K++) {
        load_tile<T>(w, I, K, sA, false);
        load_tile<T>(w, K, J, sB, true);
        __syncthreads();
        for (int k = 0; k < FT; k++) {
          V av[4], bv[4];
#pragma unroll
          for (int a = 0; a < 4; a++) av[a] = sA[(ty + 8 * a) * FLD + k];
#pragma unroll
          for (int b = 0; b < 4; b++) bv[b] = sB[(tx + 8 * b) * FLD + k];
#pragma unroll
          for (int a = 0; a < 4; a++)
#pragma unroll
            for (int b = 0; b < 4; b++) T::add(acc[a][b], av[a], bv[b]);
        }
        FLOPS(2 * 16 * FT);
        __syncthreads();
      }
#pragma unroll
      for (int a = 0; a < 4; a++)
#pragma unroll
        for (int b = 0; b < 4; b++) sA[(ty + 8 * a) * FLD + tx + 8 * b] = T::get(acc[a][b]);
      __syncthreads();
      gptr<V> t = tile_at<T>(w, I, J);
      bool finite = true;
#pragma unroll
      for (int a = 0; a < 4; a++)
#pragma unroll
        for (int b = 0; b < 4; b++) {
          const int r = ty + 8 * a, c = tx + 8 * b;
          typename T::Acc s = T::acc(T::zero());
          for (int k = c; k < FT; k++) T::sub(s, sA[r * FLD + k], sX[k * FLD + c]);
          const V v = T::get(s);
          t[r * FT + c] = v;
          const int i = I * FT + r, j = J * FT + c;
          if (i < D) o[(long long)i * (i + 1) / 2 + j] = T::to_float(v);
          finite = finite && T::finite(v);
          FLOPS(2 * (FT - c));
        }
      if (!finite) flags[1] = 1;
      __syncthreads();
    }
    gptr<V> t = tile_at<T>(w, J, J);
    for (int e = tid; e < FT * FT; e += FTHREADS) {
      const int r = e / FT, c = e % FT;
      const V v = sX[r * FLD + c];
      t[e] = v;
      const int i = J * FT + r, j = J * FT + c;
      if (i < D && j <= i) {
        o[(long long)i * (i + 1) / 2 + j] = T::to_float(v);
        if (!T::finite(v)) flags[1] = 1;
      }
    }
    __syncthreads();
  }
  if (tid == 0) status[patch] = flags[1] ? 1 : 0;
}

// ---------------------------------------------------------------- scoring

constexpr int QLD = QJ + 1;  // k_lr_score's sM row stride
// k_score's row strides, multiples of 4 floats so that every thread reads its operands
// as 64- and 128-bit shared loads: L⁻¹ rows of QJ columns (+4), image columns of G
// images (+4).
constexpr int QLD4 = QJ + 4;
template <int G>
constexpr int score_yld() {
  return G + 4;
}
// Shared memory of k_score<G> (G images per block): L⁻¹ rows × 32 columns, and the
// images' 32 columns; each thread holds 4 rows × 4 images.
template <int G>
constexpr int score_rows() {
  return QTHREADS / (G / 4) * 4;
}
template <int G>
constexpr size_t score_smem() {
  return ((size_t)score_rows<G>() * QLD4 + (size_t)QJ * score_yld<G>()) * sizeof(float);
}

// k_score<G>: block (patch of the block, group of G images), groups fastest. For each
// tile of rows of L⁻¹: z = L⁻¹_rows · (x − μ) over column chunks of 32, in 4×4 register
// tiles (4 rows × 4 adjacent images per thread); then Σ z² per image. Per 2 columns a
// thread reads each column's 4 images as one 128-bit and each of its 4 rows' 2 columns
// as one 64-bit shared load (ptxas merges a row's two pairs into one 128-bit load: 8
// LDS.128 per 64 FMA, against 16 LDS.32 per 32 before), conflict-free; the images'
// stores into shared memory (8 a thread per chunk) are 4-way bank conflicted by the
// padded stride, a cost paid once per chunk. Each (row, image) sums its products in
// column order as before, so the distances keep their bits. L⁻¹ is read once per
// block; the images once per row tile (from L2). G = 64 for batches, 16 for small
// calls. 4 blocks a multiprocessor (64 registers a thread) from sm_75 on; sm_60/70
// spill at 64 and get 3 (80 registers).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 750
#define KSCORE_MIN_BLOCKS 3  // sm_60/70: at 64 registers it spills
#else
#define KSCORE_MIN_BLOCKS 4
#endif
template <int G>
__global__ void __launch_bounds__(QTHREADS, KSCORE_MIN_BLOCKS)
    k_score(gptr<const float> x, long long xstride, int nb, int D, gptr<const float> mean, gptr<const float> linv,
            int P, int p0, gptr<float> dist) {
  constexpr int IL = G / 4;          // image lanes: thread tx holds images 4·tx … 4·tx+3
  constexpr int RL = QTHREADS / IL;  // row lanes
  constexpr int QIT = RL * 4;        // rows per tile
  constexpr int YLD = score_yld<G>();
  static_assert(RL == 16 || RL == 64, "the row classes (i mod 64) assume 16 or 64 row lanes");
  static_assert(QJ % 2 == 0 && QLD4 % 4 == 0 && YLD % 4 == 0 && (QIT * QLD4) % 4 == 0, "64- and 128-bit shared loads");
  DYNAMIC_SHARED(float, sm);
  float *sL = sm;              // [QIT][QLD4]
  float *sY = sm + QIT * QLD4;  // [QJ][YLD]: column-major images
  // the image groups of a patch are adjacent blocks: they run together and share its L⁻¹ in L2
  const int groups = (nb + G - 1) / G;
  const int p = (int)(blockIdx.x / groups);
  const int g0 = (int)(blockIdx.x % groups) * G;
  const int tid = threadIdx.x, tx = tid % IL, ty = tid / IL;
  const long long L = packed_len(D);
  gptr<const float> lp = linv + (long long)p * L;
  gptr<const float> mu = mean + (long long)p * D;
  gptr<const float> xp = x + (long long)g0 * xstride + (long long)p * D;
  // Σ z² accumulates per row class (i mod 64), rows in increasing order, and the 64
  // classes are summed in a fixed order: every G, and any split of a call into
  // launches, gives the same bits.
  float sq[4][4];
#pragma unroll
  for (int a = 0; a < 4; a++)
#pragma unroll
    for (int b = 0; b < 4; b++) sq[a][b] = 0.f;
  for (int i0 = 0; i0 < D; i0 += QIT) {
    float acc[4][4];
#pragma unroll
    for (int a = 0; a < 4; a++)
#pragma unroll
      for (int b = 0; b < 4; b++) acc[a][b] = 0.f;
    const int jend = min(i0 + QIT, D);
    for (int j0 = 0; j0 < jend; j0 += QJ) {
      for (int e = tid; e < QIT * QJ; e += QTHREADS) {
        const int r = e / QJ, c = e % QJ, i = i0 + r, j = j0 + c;
        sL[r * QLD4 + c] = (i < D && j <= i) ? (float)lp[(long long)i * (i + 1) / 2 + j] : 0.f;
      }
      for (int e = tid; e < G * QJ; e += QTHREADS) {
        const int b = e / QJ, c = e % QJ, j = j0 + c;
        sY[c * YLD + b] = (g0 + b < nb && j < D) ? (float)xp[b * xstride + j] - (float)mu[j] : 0.f;
      }
      __syncthreads();
      for (int k = 0; k < QJ; k += 2) {
        const float4 y0 = *reinterpret_cast<const float4 *>(sY + k * YLD + 4 * tx);
        const float4 y1 = *reinterpret_cast<const float4 *>(sY + (k + 1) * YLD + 4 * tx);
        const float yv0[4] = {y0.x, y0.y, y0.z, y0.w}, yv1[4] = {y1.x, y1.y, y1.z, y1.w};
#pragma unroll
        for (int a = 0; a < 4; a++) {
          const float2 l = *reinterpret_cast<const float2 *>(sL + (ty + RL * a) * QLD4 + k);
#pragma unroll
          for (int b = 0; b < 4; b++) acc[a][b] = fmaf(l.y, yv1[b], fmaf(l.x, yv0[b], acc[a][b]));
        }
      }
      FLOPS(2 * 16 * QJ);
      __syncthreads();
    }
#pragma unroll
    for (int a = 0; a < 4; a++)
#pragma unroll
      for (int b = 0; b < 4; b++) {
        // rows ty + RL·a: with RL ≥ 64 all four are in class ty, in row order
        float &q = RL >= 64 ? sq[0][b] : sq[a][b];
        q = fmaf(acc[a][b], acc[a][b], q);
      }
    FLOPS(32);
  }
  // Σ over the 64 row classes of each image, through shared memory.
  float *red = sm;  // [64][G]
  static_assert(64 * G <= QIT * QLD4 + QJ * YLD, "reduction fits the shared memory");
  __syncthreads();
  if (RL >= 64) {
    if (ty < 64)
#pragma unroll
      for (int b = 0; b < 4; b++) red[ty * G + 4 * tx + b] = sq[0][b];
  } else {
#pragma unroll
    for (int a = 0; a < 4; a++)
#pragma unroll
      for (int b = 0; b < 4; b++) red[(ty + RL * a) * G + 4 * tx + b] = sq[a][b];
  }
  __syncthreads();
  if (tid < G && g0 + tid < nb) {
    double s = 0;
    for (int r = 0; r < 64; r++) s += red[r * G + tid];
    dist[(long long)(g0 + tid) * P + p0 + p] = (float)sqrt(s);
  }
}

// ---------------------------------------------------------------- low-rank form
//
// With A = Xc/√(N−1) (N×D, a patch's centred training embeddings) and LLᵀ = AAᵀ + εI,
// the model keeps μ and M = L⁻¹A (N×D) per patch, and the squared distance of t is
// (‖x‖² − ‖Mx‖²)/ε with x = t − μ. Per chunk of patches, in the factorisation's
// arithmetic T (float64, or double-float on consumer cards):
//   k_lr_center  mean (float32 out) and A in T, into a per-patch workspace
//                [Np][Dp] (rows and columns padded to tiles of 32 with zeros);
//   k_lr_gram    K = AAᵀ + εI, one 32×32 tile of the lower triangle per block,
//                into the workspace's tiles (the padding's diagonal is 1);
//   k_lr_chol    one block per patch: tiled left-looking Cholesky of K in place
//                (as k_factor), each diagonal tile replaced by its inverse;
//   k_lr_solve   block (patch, 32 columns): M = L⁻¹A by blocked forward substitution
//                over the row tiles, in place in the workspace, and rounded to float32.
// Scoring, k_lr_score: block (patch, G images), like k_score: M (float32) rows × 32
// columns in shared memory, y = t − μ as exact pairs, 4 rows × 4 images per thread,
// dot products compensated (Dot2 in double-float, or float64); Σ z² per row class
// (r mod 64) in row order and Σ y² in column order, so any G and any split of a call
// gives the same bits. M is read once per block, i.e. once per G images.

// lr_dims: the padded sizes of a low-rank fit of N samples of dimension D.
struct LrDims {
  int ntN, ntD, Np, Dp, pairs;
  long long ws;  // workspace values (8 bytes each) per patch: A, then the tiles of K
};
__host__ __device__ inline LrDims lr_dims(int N, int D) {
  LrDims d;
  d.ntN = ntiles(N, FT);
  d.ntD = ntiles(D, FT);
  d.Np = d.ntN * FT;
  d.Dp = d.ntD * FT;
  d.pairs = (int)tri(d.ntN);
  d.ws = (long long)d.Np * d.Dp + tri(d.ntN) * (long long)(FT * FT);
  return d;
}

// k_lr_center: per (patch, column) of a chunk, the mean of the N staged samples (a
// compensated sum in T, rounded to float32 for the model) and the column of
// A = (x − μ)·scale; the padding of A is written as zeros.
template <class T>
__global__ void __launch_bounds__(MTHREADS)
    k_lr_center(gptr<const float> x, long long xstride, int N, int pc, int D, int Np, int Dp, double scale,
                gptr<float> mean_out, gptr<typename T::V> work, long long wstride) {
  typedef typename T::V V;
  const long long n = (long long)pc * Dp;
  const V sc = T::from_double(scale);
  const V nv = T::from_double((double)N);
  for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < n; e += (long long)gridDim.x * blockDim.x) {
    const int q = (int)(e / Dp), j = (int)(e % Dp);
    gptr<V> a = work + (long long)q * wstride + j;
    if (j >= D) {
      for (int r = 0; r < Np; r++) a[(long long)r * Dp] = T::zero();
      continue;
    }
    gptr<const float> xq = x + (long long)q * D + j;
    typename T::Acc s = T::acc(T::zero());
    for (int r = 0; r < N; r++) T::addf(s, xq[r * xstride]);
    const V mu = T::div(T::get(s), nv);
    mean_out[(long long)q * D + j] = T::to_float(mu);
    for (int r = 0; r < N; r++) a[(long long)r * Dp] = T::mul(T::diffv(xq[r * xstride], mu), sc);
    for (int r = N; r < Np; r++) a[(long long)r * Dp] = T::zero();
    FLOPS(4 * N);
  }
}

// k_lr_gram: block (patch, tile pair of the lower triangle), tile pairs fastest: the
// 32×32 tile (I, J) of AAᵀ over the Dp columns in chunks of 32 through shared memory,
// 4×4 per thread, plus ε on the diagonal (1 on the padding's).
template <class T>
__global__ void __launch_bounds__(FTHREADS)
    k_lr_gram(gptr<typename T::V> work, long long wstride, int N, int Np, int Dp, int pairs, double eps) {
  typedef typename T::V V;
  DYNAMIC_SHARED(V, sm);
  V *sA = sm, *sB = sm + FT * FLD;
  const int q = (int)(blockIdx.x / pairs);
  const int t = (int)(blockIdx.x % pairs);
  int ti = (int)((sqrtf(8.f * t + 1.f) - 1.f) * 0.5f);
  while (tri(ti + 1) <= t) ti++;
  while (tri(ti) > t) ti--;
  const int tj = t - (int)tri(ti);
  const int tid = threadIdx.x, tx = tid % 8, ty = tid / 8;
  gptr<V> A = work + (long long)q * wstride;
  gptr<V> K = A + (long long)Np * Dp;
  typename T::Acc acc[4][4];
#pragma unroll
  for (int a = 0; a < 4; a++)
#pragma unroll
    for (int b = 0; b < 4; b++) acc[a][b] = T::acc(T::zero());
  for (int k0 = 0; k0 < Dp; k0 += FT) {
    for (int e = tid; e < FT * FT; e += FTHREADS) {
      const int r = e / FT, c = e % FT;
      sA[r * FLD + c] = A[(long long)(ti * FT + r) * Dp + k0 + c];
      sB[r * FLD + c] = A[(long long)(tj * FT + r) * Dp + k0 + c];
    }
    __syncthreads();
    for (int k = 0; k < FT; k++) {
      V av[4], bv[4];
#pragma unroll
      for (int a = 0; a < 4; a++) av[a] = sA[(ty + 8 * a) * FLD + k];
#pragma unroll
      for (int b = 0; b < 4; b++) bv[b] = sB[(tx + 8 * b) * FLD + k];
#pragma unroll
      for (int a = 0; a < 4; a++)
#pragma unroll
        for (int b = 0; b < 4; b++) T::add(acc[a][b], av[a], bv[b]);
    }
    FLOPS(2 * 16 * FT);
    __syncthreads();
  }
  const V ev = T::from_double(eps), one = T::from_double(1.0);
  gptr<V> tile = tile_at<T>(K, ti, tj);
#pragma unroll
  for (int a = 0; a < 4; a++)
#pragma unroll
    for (int b = 0; b < 4; b++) {
      const int r = ty + 8 * a, c = tx + 8 * b;
      const int i = ti * FT + r, j = tj * FT + c;
      if (i == j) {
        if (i < N)
          T::addv(acc[a][b], ev);
        else
          acc[a][b] = T::acc(one);
      }
      tile[r * FT + c] = T::get(acc[a][b]);
    }
}

// k_lr_chol: one block per patch: K = LLᵀ in place in the patch's tiles (left-looking,
// as k_factor), then each diagonal tile holds L_JJ⁻¹ (what the solve needs) and the
// tiles below it L. status[patch]: 0 fine, 1 not positive definite (or a pivot below
// 1e-7 of the largest, as the CPU backend tests, or ε below T::resolution of the
// largest diagonal of K).
template <class T>
__global__ void __launch_bounds__(FTHREADS)
    k_lr_chol(gptr<typename T::V> work, long long wstride, int N, int Np, int Dp, double eps, gptr<int> status) {
  typedef typename T::V V;
  DYNAMIC_SHARED(V, sm);
  V *sA = sm, *sB = sm + FT * FLD, *sD = sm + 2 * FT * FLD, *sX = sm + 3 * FT * FLD;
  int *flags = reinterpret_cast<int *>(sm + 4 * FT * FLD);
  double *dstat = reinterpret_cast<double *>(flags + 4);  // [0] max diag, [1] min diag
  const int q = blockIdx.x;
  gptr<V> w = work + (long long)q * wstride + (long long)Np * Dp;
  const int nt = Np / FT;
  const int tid = threadIdx.x, tx = tid % 8, ty = tid / 8;
  if (tid == 0) {
    flags[0] = 0;
    dstat[0] = 0.0;
    dstat[1] = INFINITY;
    if (T::resolution > 0) {
      double kmax = 0.0;
      for (int i = 0; i < N; i++) kmax = fmax(kmax, T::approx(tile_at<T>(w, i / FT, i / FT)[(i % FT) * (FT + 1)]));
      if (!(eps >= T::resolution * kmax)) flags[0] = 1;
    }
  }
  __syncthreads();
  for (int J = 0; J < nt; J++) {
    for (int I = J; I < nt; I++) {
      gptr<V> t = tile_at<T>(w, I, J);
      typename T::Acc acc[4][4];
#pragma unroll
      for (int a = 0; a < 4; a++)
#pragma unroll
        for (int b = 0; b < 4; b++) acc[a][b] = T::acc(t[(ty + 8 * a) * FT + tx + 8 * b]);
      chol_update<T>(w, I, J, sA, sB, acc, tx, ty);
      if (I == J) {
#pragma unroll
        for (int a = 0; a < 4; a++)
#pragma unroll
          for (int b = 0; b < 4; b++) sD[(ty + 8 * a) * FLD + tx + 8 * b] = T::get(acc[a][b]);
        __syncthreads();
        potrf_tile<T>(sD, J * FT, N, &flags[0], &dstat[0], &dstat[1]);
        trtri_tile<T>(sD, sX);
        for (int e = tid; e < FT * FT; e += FTHREADS) t[e] = sX[(e / FT) * FLD + e % FT];
      } else {
        chol_offdiag<T>(acc, sA, sX, t, tx, ty);  // L_IJ = K_IJ · L_JJ⁻ᵀ
      }
      __syncthreads();
    }
  }
  if (tid == 0) status[q] = (flags[0] || !(dstat[1] > dstat[0] * 1e-7)) ? 1 : 0;
}

// k_lr_solve: block (patch, 32 columns), columns fastest: M = L⁻¹A for those columns,
// row tile by row tile, M_I = X_II (A_I − Σ_{K<I} L_IK M_K), in place in the workspace
// (each block owns its columns), and rounded to float32 into out [N][D] per patch (each
// tile of M through shared memory, so that the stores are row-contiguous).
// Patches whose factorisation failed are skipped (the caller reports them). Eight
// blocks per multiprocessor: without that hint ptxas 11.8 keeps the double-float
// version under ~96 registers and spills (sm_70); with it, ~120 and no spills.
template <class T>
__global__ void __launch_bounds__(FTHREADS, 8)
    k_lr_solve(gptr<typename T::V> work, long long wstride, int N, int Np, int D, int Dp, gptr<const int> status,
               gptr<float> out) {
  typedef typename T::V V;
  DYNAMIC_SHARED(V, sm);
  V *sA = sm, *sB = sm + FT * FLD, *sX = sm + 2 * FT * FLD, *sC = sm + 3 * FT * FLD;
  const int ncc = Dp / FT;
  const int q = (int)(blockIdx.x / ncc);
  const int c0 = (int)(blockIdx.x % ncc) * FT;
  if (status[q]) return;  // uniform: every thread of the block reads the same flag
  gptr<V> A = work + (long long)q * wstride;
  gptr<V> w = A + (long long)Np * Dp;
  gptr<float> o = out + (long long)q * N * D;
  const int nt = Np / FT;
  const int tid = threadIdx.x, tx = tid % 8, ty = tid / 8;
  for (int I = 0; I < nt; I++) {
    typename T::Acc acc[4][4];
#pragma unroll
    for (int a = 0; a < 4; a++)
#pragma unroll
      for (int b = 0; b < 4; b++) acc[a][b] = T::acc(A[(long long)(I * FT + ty + 8 * a) * Dp + c0 + tx + 8 * b]);
    for (int K = 0; K < I; K++) {
      load_tile<T>(w, I, K, sA, false);
      for (int e = tid; e < FT * FT; e += FTHREADS) {
        const int r = e / FT, c = e % FT;
        sB[r * FLD + c] = A[(long long)(K * FT + r) * Dp + c0 + c];
      }
      __syncthreads();
      for (int k = 0; k < FT; k++) {
        V av[4], bv[4];
#pragma unroll
        for (int a = 0; a < 4; a++) av[a] = sA[(ty + 8 * a) * FLD + k];
#pragma unroll
        for (int b = 0; b < 4; b++) bv[b] = sB[k * FLD + tx + 8 * b];
#pragma unroll
        for (int a = 0; a < 4; a++)
#pragma unroll
          for (int b = 0; b < 4; b++) T::sub(acc[a][b], av[a], bv[b]);
      }
      FLOPS(2 * 16 * FT);
      __syncthreads();
    }
#pragma unroll
    for (int a = 0; a < 4; a++)
#pragma unroll
      for (int b = 0; b < 4; b++) sC[(ty + 8 * a) * FLD + tx + 8 * b] = T::get(acc[a][b]);
    load_tile<T>(w, I, I, sX, false);
    __syncthreads();
#pragma unroll
    for (int a = 0; a < 4; a++)
#pragma unroll
      for (int b = 0; b < 4; b++) {
        const int r = ty + 8 * a, c = tx + 8 * b;
        typename T::Acc s = T::acc(T::zero());
        for (int k = 0; k <= r; k++) T::add(s, sX[r * FLD + k], sC[k * FLD + c]);
        const V v = T::get(s);
        sA[r * FLD + c] = v;
        FLOPS(2 * (r + 1));
      }
    __syncthreads();
    for (int e = tid; e < FT * FT; e += FTHREADS) {
      const int r = e / FT, c = e % FT;
      const int i = I * FT + r, j = c0 + c;
      const V v = sA[r * FLD + c];
      A[(long long)i * Dp + j] = v;
      if (i < N && j < D) o[(long long)i * D + j] = T::to_float(v);
    }
    __syncthreads();
  }
}

// The scoring kernel's configurations: arithmetic A, G images and TH threads per block,
// 4 rows × 4 images per thread, so RL = TH/(G/4) row lanes and tiles of 4·RL rows of M.
// Row classes (r mod 64) need tiles of 64 or 256 rows (RL = 16 or 64) when N spans
// several tiles; the narrow shapes (RL = 4 or 8: tiles of 16 or 32 rows) serve N up to
// one tile, where a 64-row tile would be mostly padding (few-shot fits). Each shape is
// one type, so that its kernel's name passes through the RUN macro.
template <class A, int Gv, int THv>
struct LrShape {
  typedef A T;
  static constexpr int G = Gv, TH = THv, IL = G / 4, RL = TH / IL, QIT = 4 * RL;
};
template <class A> struct S64x256 : LrShape<A, 64, 256> {};  // 64 rows a tile, any N
template <class A> struct S64x128 : LrShape<A, 64, 128> {};  // 32 rows: N ≤ 32
template <class A> struct S64x64 : LrShape<A, 64, 64> {};    // 16 rows: N ≤ 16
template <class A> struct S16x64 : LrShape<A, 16, 64> {};    // calls of ≤ 16 images: 64 rows, any N
template <class A> struct S16x16 : LrShape<A, 16, 16> {};    // 16 rows: N ≤ 16
template <class C>
constexpr size_t lr_score_smem() {
  typedef typename C::T::V V;
  const size_t tiles = (size_t)C::QIT * QLD * sizeof(float) + (size_t)QJ * (C::G + 1) * sizeof(V);
  const size_t red = (size_t)64 * C::G * sizeof(V);
  return tiles > red ? tiles : red;
}

// k_lr_score<C>: block (patch of the block, group of G images), groups fastest. For each
// tile of rows of M: z = M_rows · y over column chunks of 32 (4 rows × 4 images per
// thread, compensated), then Σ z² per row class; Σ y² during the first row tile.
// d = √(max(Σy² − Σz², 0)/ε), the difference and the root in float64 (once per image).
// Every shape does the same operations per (row, image) in the same order, and adds
// the 64 classes in the same order (absent rows and classes are exact zeros), so an
// image's distance has the same bits whatever shape and group it is scored in.
template <class C>
__global__ void __launch_bounds__(C::TH)
    k_lr_score(gptr<const float> x, long long xstride, int nb, int D, int N, gptr<const float> mean, gptr<const float> mm,
               double inv_eps, int P, int p0, gptr<float> dist) {
  typedef typename C::T T;
  typedef typename T::V V;
  constexpr int G = C::G, TH = C::TH, IL = C::IL, RL = C::RL, QIT = C::QIT;
  static_assert(RL == 4 || RL == 8 || RL == 16 || RL == 64, "row lanes: 4, 8 (one tile of N), 16 or 64 (row classes r mod 64)");
  static_assert(TH >= G, "a thread per image for Σ y² and the sums");
  DYNAMIC_SHARED(float, sm);
  float *sM = sm;                                 // [QIT][QLD]
  V *sY = reinterpret_cast<V *>(sm + QIT * QLD);  // [QJ][G + 1]: column-major images
  const int groups = (nb + G - 1) / G;
  const int p = (int)(blockIdx.x / groups);
  const int g0 = (int)(blockIdx.x % groups) * G;
  const int tid = threadIdx.x, tx = tid % IL, ty = tid / IL;
  gptr<const float> mp = mm + (long long)p * N * D;
  gptr<const float> mu = mean + (long long)p * D;
  gptr<const float> xp = x + (long long)g0 * xstride + (long long)p * D;
  typename T::Acc sq[4][4], yy = T::acc(T::zero());
#pragma unroll
  for (int a = 0; a < 4; a++)
#pragma unroll
    for (int b = 0; b < 4; b++) sq[a][b] = T::acc(T::zero());
  for (int i0 = 0; i0 < N; i0 += QIT) {
    typename T::Acc acc[4][4];
#pragma unroll
    for (int a = 0; a < 4; a++)
#pragma unroll
      for (int b = 0; b < 4; b++) acc[a][b] = T::acc(T::zero());
    for (int j0 = 0; j0 < D; j0 += QJ) {
      for (int e = tid; e < QIT * QJ; e += TH) {
        const int r = e / QJ, c = e % QJ, i = i0 + r, j = j0 + c;
        sM[r * QLD + c] = (i < N && j < D) ? (float)mp[(long long)i * D + j] : 0.f;
      }
      for (int e = tid; e < G * QJ; e += TH) {
        const int b = e / QJ, c = e % QJ, j = j0 + c;
        sY[c * (G + 1) + b] = (g0 + b < nb && j < D) ? T::diff((float)xp[b * xstride + j], (float)mu[j]) : T::zero();
      }
      __syncthreads();
      if (i0 == 0 && tid < G) {  // Σ y², columns in order
        for (int k = 0; k < QJ; k++) {
          const V v = sY[k * (G + 1) + tid];
          T::add(yy, v, v);
        }
        FLOPS(2 * QJ);
      }
      for (int k = 0; k < QJ; k++) {
        float mv[4];
        V yv[4];
#pragma unroll
        for (int a = 0; a < 4; a++) mv[a] = sM[(ty + RL * a) * QLD + k];
#pragma unroll
        for (int b = 0; b < 4; b++) yv[b] = sY[k * (G + 1) + tx + IL * b];
#pragma unroll
        for (int a = 0; a < 4; a++)
#pragma unroll
          for (int b = 0; b < 4; b++) T::maddf(acc[a][b], mv[a], yv[b]);
      }
      FLOPS(2 * 16 * QJ);
      __syncthreads();
    }
#pragma unroll
    for (int a = 0; a < 4; a++)
#pragma unroll
      for (int b = 0; b < 4; b++) {
        // rows ty + RL·a: with RL ≥ 64 all four are in class ty, in row order
        typename T::Acc &s = RL >= 64 ? sq[0][b] : sq[a][b];
        const V z = T::get(acc[a][b]);
        T::add(s, z, z);
      }
    FLOPS(32);
  }
  // Σ over the 64 row classes of each image, through shared memory (classes past a
  // narrow shape's one tile are zeros).
  V *red = reinterpret_cast<V *>(sm);  // [64][G]
  __syncthreads();
  if (RL >= 64) {
    if (ty < 64)
#pragma unroll
      for (int b = 0; b < 4; b++) red[ty * G + tx + IL * b] = T::get(sq[0][b]);
  } else {
#pragma unroll
    for (int a = 0; a < 4; a++)
#pragma unroll
      for (int b = 0; b < 4; b++) red[(ty + RL * a) * G + tx + IL * b] = T::get(sq[a][b]);
    for (int e = tid; e < (64 - QIT) * G; e += TH) red[QIT * G + e] = T::zero();
  }
  __syncthreads();
  if (tid < G && g0 + tid < nb) {
    typename T::Acc zz = T::acc(T::zero());
    for (int r = 0; r < 64; r++) T::addv(zz, red[r * G + tid]);
    const double d2 = (T::approx(T::get(yy)) - T::approx(T::get(zz))) * inv_eps;
    dist[(long long)(g0 + tid) * P + p0 + p] = (float)sqrt(d2 > 0.0 ? d2 : 0.0);
    FP64OPS(6);
  }
}

// k_probe: fills and sums its dynamic shared memory (padim_probe_launch). k_probe_bare
// is only ever launched bare, so it never has the opt-in (the attribute is per kernel,
// for the life of the process). The body is a macro: with it in a __device__ function
// (inlined or not), ptxas 11.8 crashes on sm_90 after compiling every kernel.
#define PROBE_BODY                                                    \
  DYNAMIC_SHARED(int, s);                                             \
  for (int i = threadIdx.x; i < words; i += blockDim.x) s[i] = i;     \
  __syncthreads();                                                    \
  if (threadIdx.x == 0) {                                             \
    long long t = 0;                                                  \
    for (int i = 0; i < words; i++) t += s[i];                        \
    out[0] = (int)(t == (long long)words * (words - 1) / 2);         \
  }
__global__ void k_probe(int words, gptr<int> out) { PROBE_BODY }
__global__ void k_probe_bare(int words, gptr<int> out) { PROBE_BODY }

// ---------------------------------------------------------------- context

struct ProfAgg {
  long long launches = 0;
  double total = 0, mn = 1e300, mx = 0;
};
struct ProfRec {
  const char *name;
  cudaEvent_t a, b;
};

struct padim_ctx {
  std::atomic<int> refs{1};
  int device = 0;
  cudaDeviceProp prop{};
  int optin = 0;
  int fp64_ratio = 1;
  std::atomic<size_t> budget{0};
  std::atomic<size_t> used{0};
  std::atomic<int> precision{PADIM_PREC_AUTO};
  std::mutex prof_mu;
  std::vector<ProfRec> pending;
  std::map<std::string, ProfAgg> agg;
};

namespace {

// reserve: device memory left to the driver, the display and other processes.
size_t reserve_bytes(const padim_ctx *c) {
  const size_t r = c->prop.totalGlobalMem / 32;
  return r > ((size_t)256 << 20) ? r : ((size_t)256 << 20);
}

// avail: device bytes a new allocation plan may use.
int avail(padim_ctx *c, size_t *out, char *err, size_t errlen) {
  size_t freeb = 0, total = 0;
  CK(cudaMemGetInfo(&freeb, &total));
  const size_t r = reserve_bytes(c);
  size_t a = freeb > r ? freeb - r : 0;
  const size_t b = c->budget.load(), u = c->used.load();
  if (b) a = a < (b > u ? b - u : 0) ? a : (b > u ? b - u : 0);
  *out = a;
  return PADIM_OK;
}

int precision_of(padim_ctx *c) {
  const int p = c->precision.load();
  if (p != PADIM_PREC_AUTO) return p;
  return c->fp64_ratio <= 4 ? PADIM_PREC_FP64 : PADIM_PREC_DF32;
}

// dev_alloc allocates device memory on the context's account.
template <class T>
int dev_alloc(padim_ctx *c, T **p, size_t bytes, const char *what, char *err, size_t errlen) {
  *p = nullptr;
  cudaError_t e = cudaMalloc((void **)p, bytes ? bytes : 1);
  if (e != cudaSuccess) {
    cudaGetLastError();
    *p = nullptr;
    return fail(err, errlen, cuda_code(e), "allocating %s (%.1f MiB on the device): %s", what, bytes / 1048576.0, cudaGetErrorString(e));
  }
  c->used += bytes;
  return PADIM_OK;
}
template <class T>
void dev_free(padim_ctx *c, T *&p, size_t bytes) {
  if (!p) return;
  cudaFree((void *)p);
  c->used -= bytes;
  p = nullptr;
}

template <class T>
int host_alloc(T **p, size_t bytes, const char *what, char *err, size_t errlen) {
  *p = nullptr;
  cudaError_t e = cudaMallocHost((void **)p, bytes ? bytes : 1);
  if (e != cudaSuccess) {
    cudaGetLastError();
    *p = nullptr;
    return fail(err, errlen, PADIM_ERR_OOM, "allocating %s (%.1f MiB of pinned host memory): %s", what, bytes / 1048576.0,
                cudaGetErrorString(e));
  }
  return PADIM_OK;
}

// launch_prep checks a launch against the device and the compiled kernel, before it is
// made: threads per block, grid, shared memory (opting in above 48 KiB where allowed).
template <class K>
int launch_prep(padim_ctx *c, K *kernel, const char *name, dim3 grid, dim3 block, size_t smem, char *err, size_t errlen) {
  const long long threads = (long long)block.x * block.y * block.z;
  if (threads > c->prop.maxThreadsPerBlock || grid.x > (unsigned)c->prop.maxGridSize[0] ||
      grid.y > (unsigned)c->prop.maxGridSize[1] || grid.z > (unsigned)c->prop.maxGridSize[2] || grid.x == 0 || grid.y == 0)
    return fail(err, errlen, PADIM_ERR_LIMIT, "kernel %s: grid (%u,%u,%u) of blocks of %lld threads exceeds the device's limits", name,
                grid.x, grid.y, grid.z, threads);
  cudaFuncAttributes fa;
  CK(cudaFuncGetAttributes(&fa, kernel));
  if (threads > fa.maxThreadsPerBlock)
    return fail(err, errlen, PADIM_ERR_LIMIT, "kernel %s: %lld threads per block, the compiled kernel runs at most %d", name, threads,
                fa.maxThreadsPerBlock);
  if (smem + fa.sharedSizeBytes > (size_t)c->optin)
    return fail(err, errlen, PADIM_ERR_LIMIT, "kernel %s needs %zu bytes of shared memory per block; %s allows %d", name,
                smem + fa.sharedSizeBytes, c->prop.name, c->optin);
  if (smem > (size_t)fa.maxDynamicSharedSizeBytes)
    CK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
  return PADIM_OK;
}

int launched(padim_ctx *c, const char *name, cudaStream_t st, char *err, size_t errlen) {
  cudaError_t e = cudaGetLastError();
  if (e == cudaSuccess && g_debug_sync.load()) e = cudaStreamSynchronize(st);
  if (e != cudaSuccess) return fail(err, errlen, cuda_code(e), "kernel %s: %s", name, cudaGetErrorString(e));
  (void)c;
  return PADIM_OK;
}

void prof_begin(padim_ctx *c, cudaStream_t st, ProfRec *r, const char *name) {
  r->name = name;
  r->a = r->b = nullptr;
  if (!g_profile.load()) return;
  if (cudaEventCreate(&r->a) != cudaSuccess || cudaEventCreate(&r->b) != cudaSuccess) {
    cudaGetLastError();
    return;
  }
  cudaEventRecord(r->a, st);
  (void)c;
}
void prof_end(padim_ctx *c, cudaStream_t st, ProfRec *r) {
  if (!r->a || !r->b) return;
  cudaEventRecord(r->b, st);
  std::lock_guard<std::mutex> l(c->prof_mu);
  c->pending.push_back(*r);
}

}  // namespace

// RUN launches a kernel after launch_prep, checks the launch, and times it when profiling.
#define RUN(ctx, kernel, grid, block, smem, stream, ...)                                      \
  do {                                                                                       \
    TRY(launch_prep(ctx, kernel, #kernel, dim3(grid), dim3(block), smem, err, errlen));      \
    ProfRec pr_;                                                                             \
    prof_begin(ctx, stream, &pr_, #kernel);                                                  \
    LAUNCH(kernel, dim3(grid), dim3(block), smem, stream, __VA_ARGS__);                      \
    prof_end(ctx, stream, &pr_);                                                             \
    TRY(launched(ctx, #kernel, stream, err, errlen));                                        \
  } while (0)

// ---------------------------------------------------------------- the bus

namespace {

// Host memory registered with padim_host_register (page-locked): the device's copy
// engines read it directly, so uploads from it skip the bounce buffers.
std::mutex g_reg_mu;
std::map<uintptr_t, size_t> g_registered;  // base → bytes

bool registered(const void *p, size_t n) {
  const uintptr_t a = (uintptr_t)p;
  std::lock_guard<std::mutex> l(g_reg_mu);
  auto it = g_registered.upper_bound(a);
  if (it == g_registered.begin()) return false;
  --it;
  return a >= it->first && a + n <= it->first + it->second;
}

// Bytes over the bus and through the host copies, process-wide (padim_bus_get).
struct BusCounters {
  std::atomic<unsigned long long> h2d{0}, h2d_bounced{0}, d2h{0}, d2h_bounced{0}, host_copy{0}, copies{0};
};
BusCounters g_bus;

void count_bus(cudaMemcpyKind k, size_t n, bool bounced) {
  g_bus.copies++;
  if (k == cudaMemcpyHostToDevice) {
    g_bus.h2d += n;
    if (bounced) g_bus.h2d_bounced += n;
  } else if (k == cudaMemcpyDeviceToHost) {
    g_bus.d2h += n;
    if (bounced) g_bus.d2h_bounced += n;
  }
}

// copy_async is cudaMemcpyAsync between the device and pinned (or registered) host
// memory, counted.
cudaError_t copy_async(void *dst, const void *src, size_t n, cudaMemcpyKind k, cudaStream_t st) {
  count_bus(k, n, false);
  return cudaMemcpyAsync(dst, src, n, k, st);
}

// Host copies into and out of the bounce buffers run on up to kCopyThreads threads:
// one core's memcpy (~5–10 GB/s) is slower than a PCIe 4/5 link.
constexpr int kCopyThreads = 4;
constexpr size_t kCopyPiece = (size_t)2 << 20;  // below this per thread, one thread

// par_copy2d copies rows × width bytes from src (row pitch spitch) to dst (pitch dpitch).
void par_copy2d(char *dst, size_t dpitch, const char *src, size_t spitch, size_t width, size_t rows) {
  const size_t total = width * rows;
  g_bus.host_copy += total;
  int hw = (int)std::thread::hardware_concurrency();
  int t = (int)(total / kCopyPiece);
  if (t > kCopyThreads) t = kCopyThreads;
  if (hw > 0 && t > hw) t = hw;
  auto part = [&](int i, int n) {
    if (rows == 1) {  // split the bytes, 64-byte aligned
      const size_t lo = (width * i / n) & ~(size_t)63, hi = i + 1 == n ? width : (width * (i + 1) / n) & ~(size_t)63;
      memcpy(dst + lo, src + lo, hi - lo);
    } else {  // split the rows
      for (size_t r = rows * i / n; r < rows * (i + 1) / n; r++) memcpy(dst + r * dpitch, src + r * spitch, width);
    }
  };
  if (t <= 1) {
    part(0, 1);
    return;
  }
  std::vector<std::thread> th;
  for (int i = 1; i < t; i++) th.emplace_back(part, i, t);
  part(0, t);
  for (std::thread &x : th) x.join();
}

// Bounce: copies between host memory and the device on a stream. Registered host
// memory is copied directly (the copy engines read it); anything else passes
// through two pinned buffers, the host copy of one (on several threads)
// overlapping the DMA of the other.
struct Bounce {
  static constexpr size_t kChunk = (size_t)16 << 20;
  char *h[2] = {nullptr, nullptr};
  cudaEvent_t ev[2] = {nullptr, nullptr};
  cudaEvent_t evd = nullptr;  // after the last direct upload
  bool direct = false;
  int slot = 0;
  int init(char *err, size_t errlen) {
    for (int k = 0; k < 2; k++) {
      TRY(host_alloc(&h[k], kChunk, "copy buffers", err, errlen));
      CK(cudaEventCreateWithFlags(&ev[k], cudaEventDisableTiming));
    }
    CK(cudaEventCreateWithFlags(&evd, cudaEventDisableTiming));
    return PADIM_OK;
  }
  void destroy() {
    for (int k = 0; k < 2; k++) {
      if (ev[k]) {
        cudaEventSynchronize(ev[k]);
        cudaEventDestroy(ev[k]);
      }
      if (h[k]) cudaFreeHost(h[k]);
      h[k] = nullptr;
      ev[k] = nullptr;
    }
    if (evd) {
      cudaEventSynchronize(evd);
      cudaEventDestroy(evd);
    }
    evd = nullptr;
  }
  // settle waits until the direct uploads made so far have read their source: the
  // caller's memory may be reused after it.
  int settle(char *err, size_t errlen) {
    if (direct) CK(cudaEventSynchronize(evd));
    direct = false;
    return PADIM_OK;
  }
  // upload copies n bytes from host src to device dst, ordered on st. A bounced
  // source may be reused when it returns; a registered one after settle.
  int upload(void *dst, const void *src, size_t n, cudaStream_t st, char *err, size_t errlen) {
    return upload2d(dst, n, src, n, n, n ? 1 : 0, st, err, errlen);
  }
  // upload2d copies rows × width bytes from host src (pitch spitch) to device dst
  // (pitch dpitch), ordered on st: the patches of a range of every image of a batch.
  int upload2d(void *dstv, size_t dpitch, const void *srcv, size_t spitch, size_t width, size_t rows, cudaStream_t st, char *err,
               size_t errlen) {
    char *dst = (char *)dstv;
    const char *src = (const char *)srcv;
    if (rows == 0 || width == 0) return PADIM_OK;
    if (registered(src, (rows - 1) * spitch + width)) {
      count_bus(cudaMemcpyHostToDevice, width * rows, false);
      if (rows == 1)
        CK(cudaMemcpyAsync(dst, src, width, cudaMemcpyHostToDevice, st));
      else
        CK(cudaMemcpy2DAsync(dst, dpitch, src, spitch, width, rows, cudaMemcpyHostToDevice, st));
      CK(cudaEventRecord(evd, st));
      direct = true;
      return PADIM_OK;
    }
    if (rows > 1 && width == spitch && width == dpitch) {  // contiguous: one row
      width *= rows;
      rows = 1;
    }
    if (rows == 1 || width > kChunk) {  // row by row, each cut in buffer-sized pieces
      for (size_t r = 0; r < rows; r++)
        for (size_t off = 0; off < width; off += kChunk) {
          const size_t m = width - off < kChunk ? width - off : kChunk;
          const int k = next_slot(err, errlen);
          if (k < 0) return PADIM_ERR_CUDA;
          par_copy2d(h[k], m, src + r * spitch + off, m, m, 1);
          count_bus(cudaMemcpyHostToDevice, m, true);
          CK(cudaMemcpyAsync(dst + r * dpitch + off, h[k], m, cudaMemcpyHostToDevice, st));
          CK(cudaEventRecord(ev[k], st));
        }
      return PADIM_OK;
    }
    const size_t per = kChunk / width;  // whole rows per buffer
    for (size_t r0 = 0; r0 < rows; r0 += per) {
      const size_t m = rows - r0 < per ? rows - r0 : per;
      const int k = next_slot(err, errlen);
      if (k < 0) return PADIM_ERR_CUDA;
      par_copy2d(h[k], width, src + r0 * spitch, spitch, width, m);
      count_bus(cudaMemcpyHostToDevice, width * m, true);
      CK(cudaMemcpy2DAsync(dst + r0 * dpitch, dpitch, h[k], width, width, m, cudaMemcpyHostToDevice, st));
      CK(cudaEventRecord(ev[k], st));
    }
    return PADIM_OK;
  }
  // next_slot waits until a buffer's previous copy has left it and returns it (-1 and
  // the message on a CUDA error).
  int next_slot(char *err, size_t errlen) {
    const int k = slot;
    slot ^= 1;
    cudaError_t e = cudaEventSynchronize(ev[k]);
    if (e != cudaSuccess) {
      cudaGetLastError();
      fail(err, errlen, cuda_code(e), "waiting for a copy buffer: %s", cudaGetErrorString(e));
      return -1;
    }
    return k;
  }
  // download copies n bytes from device src (ready in stream order on st) to host dst;
  // on return dst holds them.
  int download(void *dst, const void *src, size_t n, cudaStream_t st, char *err, size_t errlen) {
    if (registered(dst, n)) {
      count_bus(cudaMemcpyDeviceToHost, n, false);
      CK(cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToHost, st));
      CK(cudaStreamSynchronize(st));
      return PADIM_OK;
    }
    size_t prev_off = 0, prev_n = 0;
    int prev_k = -1;
    for (size_t off = 0; off < n; off += kChunk) {
      const size_t m = n - off < kChunk ? n - off : kChunk;
      const int k = next_slot(err, errlen);
      if (k < 0) return PADIM_ERR_CUDA;
      count_bus(cudaMemcpyDeviceToHost, m, true);
      CK(cudaMemcpyAsync(h[k], (const char *)src + off, m, cudaMemcpyDeviceToHost, st));
      CK(cudaEventRecord(ev[k], st));
      if (prev_k >= 0) {
        CK(cudaEventSynchronize(ev[prev_k]));
        par_copy2d((char *)dst + prev_off, prev_n, h[prev_k], prev_n, prev_n, 1);
      }
      prev_k = k;
      prev_off = off;
      prev_n = m;
    }
    if (prev_k >= 0) {
      CK(cudaEventSynchronize(ev[prev_k]));
      par_copy2d((char *)dst + prev_off, prev_n, h[prev_k], prev_n, prev_n, 1);
    }
    return PADIM_OK;
  }
};

// ---------------------------------------------------------------- launch sizes

// Patches per launch. A launch's work is capped (g_launch_work fp32-equivalent flops:
// 2^38 ≈ 275 GFLOP, ≲ 100 ms at a third of a 12 TFLOPS consumer card's peak), so no
// launch runs long enough for a display watchdog; and a large patch range is cut in
// four, so that the upload of one quarter overlaps the kernels of the previous one.
std::atomic<double> g_launch_work{274877906944.0};
constexpr int kOverlapMin = 256;  // patches per quarter below which a range is not cut

// work_patches: the most patches of work_per_patch each that one launch may take.
long long work_patches(double work_per_patch) {
  long long by_work = work_per_patch > 0 ? (long long)(g_launch_work.load() / work_per_patch) : 2147483647LL;
  return by_work < 1 ? 1 : by_work;
}

int launch_patches(int np, double work_per_patch) {
  const long long by_work = work_patches(work_per_patch);
  const long long by_overlap = np >= 4 * kOverlapMin ? (np + 3) / 4 : np;
  long long n = np;
  if (by_work < n) n = by_work;
  if (by_overlap < n) n = by_overlap;
  return (int)n;
}

// ensure_events grows v to n events (no timing).
int ensure_events(std::vector<cudaEvent_t> &v, size_t n, char *err, size_t errlen) {
  while (v.size() < n) {
    cudaEvent_t e = nullptr;
    CK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    v.push_back(e);
  }
  return PADIM_OK;
}
void destroy_events(std::vector<cudaEvent_t> &v) {
  for (cudaEvent_t e : v) {
    cudaEventSynchronize(e);
    cudaEventDestroy(e);
  }
  v.clear();
}

}  // namespace

// ---------------------------------------------------------------- objects

// A model in either form: per patch the mean and `per` floats of data, packed L⁻¹
// (full form, N = 0, per = D(D+1)/2) or M = L⁻¹A (low-rank form of rank N, per = N·D).
struct padim_model {
  std::atomic<int> refs{1};
  padim_ctx *ctx = nullptr;
  int P = 0, D = 0, N = 0;
  double eps = 0;  // low-rank form: the ε of the distance
  long long per = 0;
  bool resident = false;
  float *mean = nullptr;    // device [P][D]
  float *data = nullptr;    // device [P][per] (resident)
  float *h_data = nullptr;  // pinned host [P][per] (streamed)
};

struct padim_acc {
  padim_ctx *ctx = nullptr;
  cudaStream_t st = nullptr;
  int P = 0, D = 0;
  long long L = 0;
  int S = 0, staged = 0;
  int64_t count = 0;
  bool resident = true;
  int pb = 0;
  float *stage = nullptr;   // device [S][P][D]
  double *mean = nullptr;   // device [P or pb][D]
  double *m2 = nullptr;     // device [P or pb][L]
  float *bmean = nullptr;   // device [pb][D]
  double *delta = nullptr;  // device [pb][D]
  double *h_mean = nullptr, *h_m2 = nullptr;  // pinned host [P][D], [P][L] (streamed)
  size_t dev_bytes = 0, pinned_bytes = 0;
  size_t b_stage = 0, b_mean = 0, b_m2 = 0, b_bmean = 0, b_delta = 0;
  Bounce bb;
  // Uploads run on cs, the folds on st, by patch ranges [ranges[r], ranges[r+1]):
  // ev_up[r] follows the last upload into range r, ev_fold[r] the last fold of it (the
  // next pass's uploads into the range wait for it).
  cudaStream_t cs = nullptr;
  std::vector<int> ranges;
  std::vector<cudaEvent_t> ev_up, ev_fold;
};

struct padim_scorer {
  padim_model *m = nullptr;
  padim_ctx *ctx = nullptr;
  cudaStream_t st = nullptr;
  int maxb = 0, pb = 0;
  int prec = PADIM_PREC_FP64;  // the low-rank form's dot products (fixed for the scorer's life)
  float *x = nullptr;      // device [maxb][P][D]
  float *dist = nullptr;   // device [maxb][P]
  float *lblk = nullptr;   // device [pb][per] (streamed model)
  size_t b_x = 0, b_dist = 0, b_lblk = 0;
  Bounce bb;
  cudaStream_t cs = nullptr;     // uploads; the kernels run on st, each patch range after its upload
  std::vector<cudaEvent_t> ev_up;  // per patch range of a call
};

extern "C" {

void padim_set_debug_sync(int on) { g_debug_sync = on; }
void padim_set_profile(int on) { g_profile = on; }
int padim_live_objects(void) { return g_live.load(); }

void padim_set_launch_work(double flops) { g_launch_work = flops > 0 ? flops : 274877906944.0; }

int padim_host_register(void *p, size_t n, char *err, size_t errlen) {
  if (!p || n == 0) return fail(err, errlen, PADIM_ERR_ARG, "registering %zu bytes at %p", n, p);
  cudaError_t e = cudaHostRegister(p, n, cudaHostRegisterPortable);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return fail(err, errlen, PADIM_ERR_OOM, "page-locking %.1f MiB of host memory: %s", n / 1048576.0, cudaGetErrorString(e));
  }
  std::lock_guard<std::mutex> l(g_reg_mu);
  g_registered[(uintptr_t)p] = n;
  return PADIM_OK;
}

void padim_host_unregister(void *p) {
  {
    std::lock_guard<std::mutex> l(g_reg_mu);
    if (!g_registered.erase((uintptr_t)p)) return;
  }
  cudaHostUnregister(p);
  cudaGetLastError();
}

void padim_bus_get(padim_bus *out, int reset) {
  auto get = [reset](std::atomic<unsigned long long> &v) { return reset ? v.exchange(0) : v.load(); };
  out->h2d_bytes = get(g_bus.h2d);
  out->h2d_bounced = get(g_bus.h2d_bounced);
  out->d2h_bytes = get(g_bus.d2h);
  out->d2h_bounced = get(g_bus.d2h_bounced);
  out->host_copy_bytes = get(g_bus.host_copy);
  out->copies = get(g_bus.copies);
}

int padim_device_count(int *count, char *err, size_t errlen) {
  *count = 0;
  cudaError_t e = cudaGetDeviceCount(count);
  if (e != cudaSuccess) {
    cudaGetLastError();
    *count = 0;
    return fail(err, errlen, PADIM_ERR_NO_DEVICE, "no usable CUDA device: %s", cudaGetErrorString(e));
  }
  if (*count == 0) return fail(err, errlen, PADIM_ERR_NO_DEVICE, "no CUDA device");
  return PADIM_OK;
}

int padim_device_props_get(int device, padim_device_props *out, char *err, size_t errlen) {
  cudaDeviceProp prop;
  memset(out, 0, sizeof *out);
  CK(cudaGetDeviceProperties(&prop, device));
  CK(cudaSetDevice(device));
  CK(cudaMemGetInfo(&out->free_mem, &out->total_mem));
  int optin = 0, ratio = 0;
  CK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  CK(cudaDeviceGetAttribute(&ratio, cudaDevAttrSingleToDoublePrecisionPerfRatio, device));
  snprintf(out->name, sizeof out->name, "%s", prop.name);
  out->cc_major = prop.major;
  out->cc_minor = prop.minor;
  out->multiprocessors = prop.multiProcessorCount;
  out->max_threads_per_block = prop.maxThreadsPerBlock;
  out->smem_per_block = prop.sharedMemPerBlock;
  out->smem_per_block_optin = (size_t)optin;
  out->fp32_to_fp64_ratio = ratio;
#ifdef PADIM_CUDA_EMU
  out->emulated = 1;
#endif
  return PADIM_OK;
}

int padim_ctx_create(int device, padim_ctx **out, char *err, size_t errlen) {
  *out = nullptr;
  int n = 0;
  TRY(padim_device_count(&n, err, errlen));
  if (device < 0 || device >= n) return fail(err, errlen, PADIM_ERR_NO_DEVICE, "CUDA device %d requested, %d present", device, n);
  CK(cudaSetDevice(device));
  padim_ctx *c = new padim_ctx();
  c->device = device;
  cudaError_t e = cudaGetDeviceProperties(&c->prop, device);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&c->optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&c->fp64_ratio, cudaDevAttrSingleToDoublePrecisionPerfRatio, device);
  if (e != cudaSuccess) {
    cudaGetLastError();
    delete c;
    return fail(err, errlen, cuda_code(e), "device %d properties: %s", device, cudaGetErrorString(e));
  }
  if (c->optin < (int)c->prop.sharedMemPerBlock) c->optin = (int)c->prop.sharedMemPerBlock;
  g_live++;
  *out = c;
  return PADIM_OK;
}

void padim_ctx_retain(padim_ctx *c) { c->refs++; }

void padim_ctx_release(padim_ctx *c) {
  if (!c || --c->refs > 0) return;
  cudaSetDevice(c->device);
  for (ProfRec &r : c->pending) {
    cudaEventDestroy(r.a);
    cudaEventDestroy(r.b);
  }
  delete c;
  g_live--;
}

void padim_ctx_set_budget(padim_ctx *c, size_t bytes) { c->budget = bytes; }
void padim_ctx_set_precision(padim_ctx *c, int p) { c->precision = p; }

int padim_ctx_profile(padim_ctx *c, char *buf, size_t len, int reset, char *err, size_t errlen) {
  std::lock_guard<std::mutex> l(c->prof_mu);
  CK(cudaSetDevice(c->device));
  for (ProfRec &r : c->pending) {
    float ms = 0;
    cudaError_t e = cudaEventSynchronize(r.b);
    if (e == cudaSuccess) e = cudaEventElapsedTime(&ms, r.a, r.b);
    cudaEventDestroy(r.a);
    cudaEventDestroy(r.b);
    if (e != cudaSuccess) {
      cudaGetLastError();
      continue;
    }
    ProfAgg &g = c->agg[r.name];
    g.launches++;
    g.total += ms;
    g.mn = ms < g.mn ? ms : g.mn;
    g.mx = ms > g.mx ? ms : g.mx;
  }
  c->pending.clear();
  size_t off = 0;
  if (len) buf[0] = 0;
  for (auto &kv : c->agg) {
    int w = snprintf(buf + off, off < len ? len - off : 0, "%s %lld %.4f %.4f %.4f\n", kv.first.c_str(), kv.second.launches,
                     kv.second.total, kv.second.mn, kv.second.mx);
    if (w > 0) off += (size_t)w;
  }
  if (reset) c->agg.clear();
  if (off >= len) return fail(err, errlen, PADIM_ERR_ARG, "profile report needs %zu bytes", off + 1);
  return PADIM_OK;
}

// ---------------------------------------------------------------- accumulator

void padim_acc_destroy(padim_acc *a) {
  if (!a) return;
  padim_ctx *c = a->ctx;
  cudaSetDevice(c->device);
  if (a->cs) cudaStreamSynchronize(a->cs);
  if (a->st) cudaStreamSynchronize(a->st);
  a->bb.destroy();
  destroy_events(a->ev_up);
  destroy_events(a->ev_fold);
  dev_free(c, a->stage, a->b_stage);
  dev_free(c, a->mean, a->b_mean);
  dev_free(c, a->m2, a->b_m2);
  dev_free(c, a->bmean, a->b_bmean);
  dev_free(c, a->delta, a->b_delta);
  if (a->h_mean) cudaFreeHost(a->h_mean);
  if (a->h_m2) cudaFreeHost(a->h_m2);
  if (a->st) cudaStreamDestroy(a->st);
  if (a->cs) cudaStreamDestroy(a->cs);
  cudaGetLastError();
  delete a;
  padim_ctx_release(c);
  g_live--;
}

}  // extern "C"

namespace {

// FitPlan: how an accumulator of P patches of dimension D lays out its data in
// `avail` device bytes. The stage takes at most half; the statistics stay on the
// device if they fit beside it, else they live in pinned host memory and pass
// through device buffers of pb patches, which take at most half of what is left
// (the other half is for the factorisation).
struct FitPlan {
  int S = 0, pb = 0;
  bool resident = false;
  size_t stage_bytes = 0, per_patch = 0, device_bytes = 0, pinned_bytes = 0;
};
bool plan_fit(int P, int D, int stage, size_t av, FitPlan *f) {
  const long long L = packed_len(D);
  const size_t img = (size_t)P * D * sizeof(float);
  f->S = stage;
  if ((size_t)f->S * img > av / 2) f->S = (int)(av / 2 / img);
  if (f->S < 1) return false;
  f->stage_bytes = (size_t)f->S * img;
  f->per_patch = (size_t)(L + D) * sizeof(double) + (size_t)D * (sizeof(float) + sizeof(double));
  const size_t rest = av - f->stage_bytes;
  if ((size_t)P * f->per_patch <= rest) {
    f->resident = true;
    f->pb = P;
  } else {
    f->resident = false;
    f->pb = (int)(rest / 2 / f->per_patch);
    if (f->pb < 1) return false;
    f->pinned_bytes = (size_t)P * (D + L) * sizeof(double);
  }
  f->device_bytes = f->stage_bytes + (size_t)f->pb * f->per_patch;
  return true;
}

// factor_ws: device bytes of one patch's factorisation workspace.
size_t factor_ws(int D) { return (size_t)tri(ntiles(D, FT)) * FT * FT * 8; }

}  // namespace

extern "C" {

int padim_plan_fit(int P, int D, int stage, size_t avail_bytes, padim_plan *out) {
  FitPlan f;
  memset(out, 0, sizeof *out);
  if (P <= 0 || D <= 0 || stage <= 0 || !plan_fit(P, D, stage, avail_bytes, &f)) return PADIM_ERR_OOM;
  out->resident = f.resident;
  out->patch_block = f.pb;
  out->stage = f.S;
  out->device_bytes = f.device_bytes;
  out->pinned_bytes = f.pinned_bytes;
  return PADIM_OK;
}

size_t padim_factor_workspace(int D) { return factor_ws(D); }

static int acc_init(padim_acc *a, int stage, char *err, size_t errlen) {
  padim_ctx *c = a->ctx;
  const int P = a->P, D = a->D;
  const long long L = a->L;
  CK(cudaSetDevice(c->device));
  CK(cudaStreamCreateWithFlags(&a->st, cudaStreamNonBlocking));
  CK(cudaStreamCreateWithFlags(&a->cs, cudaStreamNonBlocking));
  TRY(a->bb.init(err, errlen));
  size_t av = 0;
  TRY(avail(c, &av, err, errlen));
  FitPlan f;
  if (!plan_fit(P, D, stage, av, &f))
    return fail(err, errlen, PADIM_ERR_OOM,
                "an accumulator for P=%d, D=%d needs at least one staged image (%.1f MiB) and one patch of statistics (%.1f MiB) "
                "in device memory; %.1f MiB available",
                P, D, (double)P * D * 4 / 1048576.0, f.per_patch / 1048576.0, av / 1048576.0);
  a->S = f.S;
  a->b_stage = f.stage_bytes;
  a->resident = f.resident;
  a->pb = f.pb;
  const int pb = a->pb;
  a->b_mean = (size_t)pb * D * sizeof(double);
  a->b_m2 = (size_t)pb * L * sizeof(double);
  a->b_bmean = (size_t)pb * D * sizeof(float);
  a->b_delta = (size_t)pb * D * sizeof(double);
  TRY(dev_alloc(c, &a->stage, a->b_stage, "the image stage", err, errlen));
  TRY(dev_alloc(c, &a->mean, a->b_mean, "the running means", err, errlen));
  TRY(dev_alloc(c, &a->m2, a->b_m2, "the second moments", err, errlen));
  TRY(dev_alloc(c, &a->bmean, a->b_bmean, "the batch means", err, errlen));
  TRY(dev_alloc(c, &a->delta, a->b_delta, "the mean updates", err, errlen));
  a->dev_bytes = a->b_stage + a->b_mean + a->b_m2 + a->b_bmean + a->b_delta;
  // fold ranges: within each patch block, launches of at most launch_patches patches
  // (the work of a full stage)
  const int step = launch_patches(pb, (double)a->S * D * (D + 1));
  for (int p0 = 0; p0 < P; p0 += pb) {
    const int end = P - p0 < pb ? P : p0 + pb;
    for (int q0 = p0; q0 < end; q0 += step) a->ranges.push_back(q0);
  }
  a->ranges.push_back(P);
  TRY(ensure_events(a->ev_up, a->ranges.size() - 1, err, errlen));
  TRY(ensure_events(a->ev_fold, a->ranges.size() - 1, err, errlen));
  if (!a->resident) {  // (on the device the first pass writes the statistics)
    TRY(host_alloc(&a->h_mean, (size_t)P * D * sizeof(double), "the running means", err, errlen));
    TRY(host_alloc(&a->h_m2, (size_t)P * L * sizeof(double), "the second moments", err, errlen));
    memset(a->h_mean, 0, (size_t)P * D * sizeof(double));
    memset(a->h_m2, 0, (size_t)P * L * sizeof(double));
    a->pinned_bytes = (size_t)P * (D + L) * sizeof(double);
  }
  CK(cudaStreamSynchronize(a->st));
  return PADIM_OK;
}

int padim_acc_create(padim_ctx *c, int P, int D, int stage, padim_acc **out, char *err, size_t errlen) {
  *out = nullptr;
  if (P <= 0 || D <= 0 || stage <= 0) return fail(err, errlen, PADIM_ERR_ARG, "accumulator P=%d D=%d stage=%d", P, D, stage);
  if ((long long)P * ntiles(D, ST) * (ntiles(D, ST) + 1) / 2 > 2147483647LL)
    return fail(err, errlen, PADIM_ERR_LIMIT, "accumulator P=%d D=%d: more tiles than one grid holds", P, D);
  padim_acc *a = new padim_acc();
  padim_ctx_retain(c);
  g_live++;
  a->ctx = c;
  a->P = P;
  a->D = D;
  a->L = packed_len(D);
  int rc = acc_init(a, stage, err, errlen);
  if (rc != PADIM_OK) {
    padim_acc_destroy(a);
    return rc;
  }
  *out = a;
  return PADIM_OK;
}

void padim_acc_plan(padim_acc *a, padim_plan *p) {
  p->resident = a->resident;
  p->patch_block = a->pb;
  p->stage = a->S;
  p->precision = precision_of(a->ctx);
  p->device_bytes = a->dev_bytes;
  p->pinned_bytes = a->pinned_bytes;
}

// acc_fold folds the staged images into the statistics, patch block by patch block,
// each block range by range: the fold of a range waits for its uploads (on cs), and
// the next pass's uploads into the range wait for its fold.
static int acc_fold(padim_acc *a, char *err, size_t errlen) {
  if (a->staged == 0) return PADIM_OK;
  padim_ctx *c = a->ctx;
  const int D = a->D, nb = a->staged;
  const long long L = a->L, xstride = (long long)a->P * D;
  const double na = (double)a->count;
  const double f = na * nb / (na + nb);
  const int tiles = ntiles(D, ST), pairs = tiles * (tiles + 1) / 2;
  const size_t smem = 2 * (size_t)SK * (ST + 4) * sizeof(float);
  size_t r = 0;
  for (int p0 = 0; p0 < a->P; p0 += a->pb) {
    const int np = a->P - p0 < a->pb ? a->P - p0 : a->pb;
    double *mean = a->resident ? a->mean + (size_t)p0 * D : a->mean;
    double *m2 = a->resident ? a->m2 + (size_t)p0 * L : a->m2;
    if (!a->resident && a->count > 0) {  // the first pass reads no statistics
      CK(copy_async(mean, a->h_mean + (size_t)p0 * D, (size_t)np * D * sizeof(double), cudaMemcpyHostToDevice, a->st));
      CK(copy_async(m2, a->h_m2 + (size_t)p0 * L, (size_t)np * L * sizeof(double), cudaMemcpyHostToDevice, a->st));
    }
    for (; r + 1 < a->ranges.size() && a->ranges[r] < p0 + np; r++) {
      const int q0 = a->ranges[r], nq = a->ranges[r + 1] - q0, o = q0 - p0;
      CK(cudaStreamWaitEvent(a->st, a->ev_up[r], 0));
      const float *x = a->stage + (size_t)q0 * D;
      long long blocks = ((long long)nq * D + MTHREADS - 1) / MTHREADS;
      if (blocks > 65535LL * 16) blocks = 65535LL * 16;
      RUN(c, k_stage_mean, (unsigned)blocks, MTHREADS, 0, a->st, x, xstride, nb, nq, D, na, mean + (size_t)o * D, a->bmean, a->delta);
      RUN(c, k_syrk_fold, (unsigned)((long long)nq * pairs), STHREADS, smem, a->st, x, xstride, nb, D, pairs, a->bmean, a->delta, f,
          a->count == 0 ? 1 : 0, m2 + (size_t)o * L);
      CK(cudaEventRecord(a->ev_fold[r], a->st));
    }
    if (!a->resident) {
      CK(copy_async(a->h_mean + (size_t)p0 * D, mean, (size_t)np * D * sizeof(double), cudaMemcpyDeviceToHost, a->st));
      CK(copy_async(a->h_m2 + (size_t)p0 * L, m2, (size_t)np * L * sizeof(double), cudaMemcpyDeviceToHost, a->st));
    }
  }
  a->count += nb;
  a->staged = 0;
  return PADIM_OK;
}

// padim_acc_add uploads the images by patch ranges on the copy stream into the stage
// (each range once its previous fold has read it) and folds a full stage; it returns
// once the uploads have read x.
int padim_acc_add(padim_acc *a, const float *x, int n, char *err, size_t errlen) {
  if (n <= 0) return fail(err, errlen, PADIM_ERR_ARG, "batch of %d images", n);
  CK(cudaSetDevice(a->ctx->device));
  const size_t img = (size_t)a->P * a->D, pitch = img * sizeof(float);
  while (n > 0) {
    const int k = a->S - a->staged < n ? a->S - a->staged : n;
    for (size_t r = 0; r + 1 < a->ranges.size(); r++) {
      const int q0 = a->ranges[r], nq = a->ranges[r + 1] - q0;
      CK(cudaStreamWaitEvent(a->cs, a->ev_fold[r], 0));
      TRY(a->bb.upload2d(a->stage + a->staged * img + (size_t)q0 * a->D, pitch, x + (size_t)q0 * a->D, pitch,
                         (size_t)nq * a->D * sizeof(float), (size_t)k, a->cs, err, errlen));
      CK(cudaEventRecord(a->ev_up[r], a->cs));
    }
    a->staged += k;
    x += (size_t)k * img;
    n -= k;
    if (a->staged == a->S) TRY(acc_fold(a, err, errlen));
  }
  return a->bb.settle(err, errlen);
}

int padim_acc_flush(padim_acc *a, char *err, size_t errlen) {
  CK(cudaSetDevice(a->ctx->device));
  TRY(acc_fold(a, err, errlen));
  CK(cudaStreamSynchronize(a->st));
  return PADIM_OK;
}

int padim_acc_stats(padim_acc *a, double *mean, double *m2, int64_t *count, char *err, size_t errlen) {
  CK(cudaSetDevice(a->ctx->device));
  TRY(acc_fold(a, err, errlen));
  const size_t bm = (size_t)a->P * a->D * sizeof(double), b2 = (size_t)a->P * a->L * sizeof(double);
  if (a->count == 0) {  // nothing folded yet: the device buffers hold nothing
    memset(mean, 0, bm);
    memset(m2, 0, b2);
  } else if (a->resident) {
    TRY(a->bb.download(mean, a->mean, bm, a->st, err, errlen));
    TRY(a->bb.download(m2, a->m2, b2, a->st, err, errlen));
  } else {
    CK(cudaStreamSynchronize(a->st));
    memcpy(mean, a->h_mean, bm);
    memcpy(m2, a->h_m2, b2);
  }
  CK(cudaStreamSynchronize(a->st));
  *count = a->count;
  return PADIM_OK;
}

// ---------------------------------------------------------------- models

void padim_model_retain(padim_model *m) { m->refs++; }

void padim_model_release(padim_model *m) {
  if (!m || --m->refs > 0) return;
  padim_ctx *c = m->ctx;
  cudaSetDevice(c->device);
  dev_free(c, m->mean, (size_t)m->P * m->D * sizeof(float));
  dev_free(c, m->data, (size_t)m->P * m->per * sizeof(float));
  if (m->h_data) cudaFreeHost(m->h_data);
  cudaGetLastError();
  delete m;
  padim_ctx_release(c);
  g_live--;
}

int padim_model_resident(const padim_model *m) { return m->resident; }
int padim_model_rank(const padim_model *m) { return m->N; }

// model_new allocates a model (N = 0: the full form; N ≥ 1: the low-rank form of rank
// N): its data on the device when `reserve` more bytes still fit beside it, else in
// pinned host memory.
static int model_new(padim_ctx *c, int P, int D, int N, double eps, size_t reserve, padim_model **out, char *err, size_t errlen) {
  *out = nullptr;
  padim_model *m = new padim_model();
  padim_ctx_retain(c);
  g_live++;
  m->ctx = c;
  m->P = P;
  m->D = D;
  m->N = N;
  m->eps = eps;
  m->per = N > 0 ? (long long)N * D : packed_len(D);
  size_t av = 0;
  int rc = avail(c, &av, err, errlen);
  const size_t bl = (size_t)P * m->per * sizeof(float), bmu = (size_t)P * D * sizeof(float);
  if (rc == PADIM_OK) rc = dev_alloc(c, &m->mean, bmu, "the model's means", err, errlen);
  if (rc == PADIM_OK) {
    m->resident = bl + bmu + reserve <= av;
    rc = m->resident ? dev_alloc(c, &m->data, bl, "the model", err, errlen) : host_alloc(&m->h_data, bl, "the model", err, errlen);
  }
  if (rc != PADIM_OK) {
    padim_model_release(m);
    return rc;
  }
  *out = m;
  return PADIM_OK;
}

// model_upload makes a model of either form from host arrays.
static int model_upload(padim_ctx *c, int P, int D, int N, double eps, const float *mean, const float *data, padim_model **out,
                        char *err, size_t errlen) {
  *out = nullptr;
  CK(cudaSetDevice(c->device));
  padim_model *m = nullptr;
  TRY(model_new(c, P, D, N, eps, 0, &m, err, errlen));
  // A stream of its own, synchronised before return: the upload is complete and ordered
  // before any scorer's work.
  cudaStream_t st = nullptr;
  Bounce bb;
  int rc = PADIM_OK;
  cudaError_t e = cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking);
  if (e != cudaSuccess) rc = fail(err, errlen, cuda_code(e), "creating a stream: %s", cudaGetErrorString(e));
  if (rc == PADIM_OK) rc = bb.init(err, errlen);
  if (rc == PADIM_OK) rc = bb.upload(m->mean, mean, (size_t)P * D * sizeof(float), st, err, errlen);
  if (rc == PADIM_OK) {
    if (m->resident)
      rc = bb.upload(m->data, data, (size_t)P * m->per * sizeof(float), st, err, errlen);
    else
      memcpy(m->h_data, data, (size_t)P * m->per * sizeof(float));
  }
  if (rc == PADIM_OK && (e = cudaStreamSynchronize(st)) != cudaSuccess)
    rc = fail(err, errlen, cuda_code(e), "model upload: %s", cudaGetErrorString(e));
  bb.destroy();
  if (st) cudaStreamDestroy(st);
  cudaGetLastError();
  if (rc != PADIM_OK) {
    padim_model_release(m);
    return rc;
  }
  *out = m;
  return PADIM_OK;
}

int padim_model_upload(padim_ctx *c, int P, int D, const float *mean, const float *linv, padim_model **out, char *err,
                       size_t errlen) {
  *out = nullptr;
  if (P <= 0 || D <= 0) return fail(err, errlen, PADIM_ERR_ARG, "model P=%d D=%d", P, D);
  return model_upload(c, P, D, 0, 0.0, mean, linv, out, err, errlen);
}

int padim_lowrank_upload(padim_ctx *c, int P, int D, int N, double eps, const float *mean, const float *m, padim_model **out,
                         char *err, size_t errlen) {
  *out = nullptr;
  if (P <= 0 || D <= 0 || N <= 0) return fail(err, errlen, PADIM_ERR_ARG, "low-rank model P=%d D=%d N=%d", P, D, N);
  if (!(eps > 0) || !std::isfinite(eps)) return fail(err, errlen, PADIM_ERR_ARG, "the low-rank form needs eps > 0, got %g", eps);
  return model_upload(c, P, D, N, eps, mean, m, out, err, errlen);
}

// ---------------------------------------------------------------- factorisation

namespace {

// finish_chunk ends the factorisation of np patches from p0 (both forms): the first
// patch whose status flag is set fails the call (*bad_patch; what names its matrix);
// else the chunk's factors, per floats a patch at dst on the device (outc when the
// model is not resident), go to the model's host copy and, if out is set, to out.
int finish_chunk(Bounce &bb, cudaStream_t st, std::vector<int> &hstatus, const int *status, int np, int p0, const char *what,
                 const char *factor, padim_model *m, const float *outc, const float *dst, size_t per, float *out, int *bad_patch,
                 char *err, size_t errlen) {
  int rc = bb.download(hstatus.data(), status, (size_t)np * sizeof(int), st, err, errlen);
  if (rc != PADIM_OK) return rc;
  for (int i = 0; i < np; i++)
    if (hstatus[i]) {
      *bad_patch = p0 + i;
      return fail(err, errlen, PADIM_ERR_NOT_PD, "%s of patch %d is not positive definite", what, p0 + i);
    }
  const size_t nbytes = (size_t)np * per * sizeof(float);
  if (m->resident) return out ? bb.download(out + (size_t)p0 * per, dst, nbytes, st, err, errlen) : PADIM_OK;
  cudaError_t e = copy_async(m->h_data + (size_t)p0 * per, outc, nbytes, cudaMemcpyDeviceToHost, st);
  if (e == cudaSuccess) e = cudaStreamSynchronize(st);
  if (e != cudaSuccess) return fail(err, errlen, cuda_code(e), "downloading the %s: %s", factor, cudaGetErrorString(e));
  if (out) memcpy(out + (size_t)p0 * per, m->h_data + (size_t)p0 * per, nbytes);
  return PADIM_OK;
}

// factor_run factorises P patches whose packed M2 comes, chunk by chunk, from
// m2_dev (device, already there) or m2_host (pinned or pageable host memory). The
// result goes to the model m (device or pinned host) and, if linv_out is set, to host.
int factor_run(padim_ctx *c, cudaStream_t st, Bounce &bb, int P, int D, int64_t count, const double *m2_dev, const double *m2_host,
               bool host_pinned, double eps, padim_model *m, float *linv_out, int *bad_patch, char *err, size_t errlen) {
  const long long L = packed_len(D);
  const int prec = precision_of(c);
  const size_t vsize = 8;  // double or float2
  const size_t ws = factor_ws(D);
  const size_t per = ws + (m2_dev ? 0 : (size_t)L * sizeof(double)) + (m->resident ? 0 : (size_t)L * sizeof(float)) + sizeof(int);
  size_t av = 0;
  TRY(avail(c, &av, err, errlen));
  int chunk = (int)(av / per);
  if (chunk > P) chunk = P;
  if (chunk > 65535) chunk = 65535;
  // one launch per chunk: its work capped (D³ multiply-adds' worth, at the arithmetic's cost)
  const double fw = (double)D * D * D * (prec == PADIM_PREC_FP64 ? (c->fp64_ratio > 1 ? c->fp64_ratio : 1) : 12);
  if (work_patches(fw) < chunk) chunk = (int)work_patches(fw);
  if (chunk < 1)
    return fail(err, errlen, PADIM_ERR_OOM, "factorising D=%d needs %.1f MiB of device memory per patch, %.1f MiB available", D,
                per / 1048576.0, av / 1048576.0);
  void *work = nullptr;
  double *m2c = nullptr;
  float *outc = nullptr;
  int *status = nullptr;
  std::vector<int> hstatus((size_t)chunk);
  int rc = dev_alloc(c, &work, (size_t)chunk * ws, "the factorisation workspace", err, errlen);
  if (rc == PADIM_OK && !m2_dev) rc = dev_alloc(c, &m2c, (size_t)chunk * L * sizeof(double), "statistics", err, errlen);
  if (rc == PADIM_OK && !m->resident) rc = dev_alloc(c, &outc, (size_t)chunk * L * sizeof(float), "factor output", err, errlen);
  if (rc == PADIM_OK) rc = dev_alloc(c, &status, (size_t)chunk * sizeof(int), "status flags", err, errlen);
  const double inv = count > 1 ? 1.0 / (double)(count - 1) : 0.0;  // one sample: no spread, Sigma = eps I
  for (int p0 = 0; rc == PADIM_OK && p0 < P; p0 += chunk) {
    const int np = P - p0 < chunk ? P - p0 : chunk;
    const double *src = m2_dev ? m2_dev + (size_t)p0 * L : m2c;
    if (!m2_dev) {
      const size_t n = (size_t)np * L * sizeof(double);
      if (host_pinned) {
        cudaError_t e = copy_async(m2c, m2_host + (size_t)p0 * L, n, cudaMemcpyHostToDevice, st);
        if (e != cudaSuccess) {
          rc = fail(err, errlen, cuda_code(e), "uploading statistics: %s", cudaGetErrorString(e));
          break;
        }
      } else if ((rc = bb.upload(m2c, m2_host + (size_t)p0 * L, n, st, err, errlen)) != PADIM_OK) {
        break;
      }
    }
    float *dst = m->resident ? m->data + (size_t)p0 * L : outc;
    auto body = [&]() -> int {
      if (prec == PADIM_PREC_FP64)
        RUN(c, k_factor<F64>, np, FTHREADS, factor_smem<F64>(), st, src, D, inv, eps, (double *)work, (long long)(ws / vsize), dst, status);
      else
        RUN(c, k_factor<DF32>, np, FTHREADS, factor_smem<DF32>(), st, src, D, inv, eps, (float2 *)work, (long long)(ws / vsize), dst,
            status);
      return PADIM_OK;
    };
    if ((rc = body()) != PADIM_OK) break;
    rc = finish_chunk(bb, st, hstatus, status, np, p0, "covariance", "factor", m, outc, dst, (size_t)L, linv_out, bad_patch, err,
                      errlen);
  }
  cudaStreamSynchronize(st);
  cudaGetLastError();
  dev_free(c, work, (size_t)chunk * ws);
  dev_free(c, m2c, (size_t)chunk * L * sizeof(double));
  dev_free(c, outc, (size_t)chunk * L * sizeof(float));
  dev_free(c, status, (size_t)chunk * sizeof(int));
  return rc;
}

// finish_model sets the model's means from float64 host means, and the caller's copy.
int finish_model(padim_model *m, const double *mean, float *mean_out, cudaStream_t st, Bounce &bb, char *err, size_t errlen) {
  std::vector<float> mf((size_t)m->P * m->D);
  for (size_t i = 0; i < mf.size(); i++) mf[i] = (float)mean[i];
  if (mean_out) memcpy(mean_out, mf.data(), mf.size() * sizeof(float));
  TRY(bb.upload(m->mean, mf.data(), mf.size() * sizeof(float), st, err, errlen));
  CK(cudaStreamSynchronize(st));
  return PADIM_OK;
}

}  // namespace

int padim_acc_factorize(padim_acc *a, double eps, float *mean_out, float *linv_out, padim_model **model, int *bad_patch, char *err,
                        size_t errlen) {
  *bad_patch = -1;
  if (model) *model = nullptr;
  padim_ctx *c = a->ctx;
  CK(cudaSetDevice(c->device));
  TRY(acc_fold(a, err, errlen));
  if (a->count < 1) return fail(err, errlen, PADIM_ERR_ARG, "no training samples");
  if (!(eps >= 0) || !std::isfinite(eps)) return fail(err, errlen, PADIM_ERR_ARG, "regularisation eps must be finite and >= 0");
  if (a->count == 1 && !(eps > 0))
    return fail(err, errlen, PADIM_ERR_ARG, "one training sample has no spread: its covariance is eps I, and eps is 0");
  CK(cudaStreamSynchronize(a->st));
  padim_model *m = nullptr;
  TRY(model_new(c, a->P, a->D, 0, 0.0, factor_ws(a->D) * (a->P < 64 ? a->P : 64), &m, err, errlen));
  int rc = factor_run(c, a->st, a->bb, a->P, a->D, a->count, a->resident ? a->m2 : nullptr, a->resident ? nullptr : a->h_m2, true, eps, m,
                      linv_out, bad_patch, err, errlen);
  std::vector<double> hmean;
  if (rc == PADIM_OK) {
    hmean.resize((size_t)a->P * a->D);
    if (a->resident)
      rc = a->bb.download(hmean.data(), a->mean, hmean.size() * sizeof(double), a->st, err, errlen);
    else
      memcpy(hmean.data(), a->h_mean, hmean.size() * sizeof(double));
  }
  if (rc == PADIM_OK) rc = finish_model(m, hmean.data(), mean_out, a->st, a->bb, err, errlen);
  if (rc != PADIM_OK || !model) {
    padim_model_release(m);
    return rc;
  }
  *model = m;
  return PADIM_OK;
}

int padim_factorize(padim_ctx *c, int P, int D, int64_t count, const double *mean, const double *m2, double eps, float *mean_out,
                    float *linv_out, padim_model **model, int *bad_patch, char *err, size_t errlen) {
  *bad_patch = -1;
  if (model) *model = nullptr;
  if (P <= 0 || D <= 0 || count < 1 || (count == 1 && !(eps > 0)))
    return fail(err, errlen, PADIM_ERR_ARG, "factorize P=%d D=%d N=%lld (at least 1, with eps > 0 for one)", P, D, (long long)count);
  CK(cudaSetDevice(c->device));
  cudaStream_t st = nullptr;
  CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  Bounce bb;
  padim_model *m = nullptr;
  int rc = bb.init(err, errlen);
  if (rc == PADIM_OK) rc = model_new(c, P, D, 0, 0.0, factor_ws(D) * (P < 64 ? P : 64), &m, err, errlen);
  if (rc == PADIM_OK) rc = factor_run(c, st, bb, P, D, count, nullptr, m2, false, eps, m, linv_out, bad_patch, err, errlen);
  if (rc == PADIM_OK) rc = finish_model(m, mean, mean_out, st, bb, err, errlen);
  cudaStreamSynchronize(st);
  bb.destroy();
  cudaStreamDestroy(st);
  cudaGetLastError();
  if (rc != PADIM_OK || !model) {
    padim_model_release(m);
    return rc;
  }
  *model = m;
  return PADIM_OK;
}

// ---------------------------------------------------------------- low-rank factorisation

}  // extern "C"

namespace {

// lr_plan: how many patches a low-rank factorisation handles per chunk, and its device
// bytes per patch: the workspace (values of 8 bytes), the staged samples, the output
// when the model is streamed, a status flag.
struct LrPlan {
  LrDims d;
  size_t per_patch = 0;
  long long max_chunk = 0;  // the grids' limit on patches per chunk
};
LrPlan lr_plan(int N, int D, bool resident_out, long long max_grid) {
  LrPlan p;
  p.d = lr_dims(N, D);
  p.per_patch = (size_t)p.d.ws * 8 + (size_t)N * D * sizeof(float) + (resident_out ? 0 : (size_t)N * D * sizeof(float)) + sizeof(int);
  long long lim = max_grid / p.d.pairs;
  const long long lim2 = max_grid / p.d.ntD;
  if (lim2 < lim) lim = lim2;
  if (lim > 65535) lim = 65535;  // one k_lr_chol block per patch
  p.max_chunk = lim;
  return p;
}

// LR_KERNELS(T): the low-rank factorisation's launches in arithmetic T (a macro, so
// that profiles and counters name each launch with its arithmetic).
#define LR_KERNELS(T)                                                                                                   \
  do {                                                                                                                  \
    typedef T::V V_;                                                                                                    \
    V_ *w = (V_ *)work;                                                                                                 \
    RUN(c, k_lr_center<T>, (unsigned)blocks, MTHREADS, 0, st, xs, xstride, N, np, D, dm.Np, dm.Dp, scale, mean, w, dm.ws); \
    if (N == 1) break;                                                                                                  \
    const size_t two = 2 * (size_t)FT * FLD * sizeof(V_), four = 4 * (size_t)FT * FLD * sizeof(V_);                   \
    RUN(c, k_lr_gram<T>, (unsigned)((long long)np * dm.pairs), FTHREADS, two, st, w, dm.ws, N, dm.Np, dm.Dp, dm.pairs, eps); \
    RUN(c, k_lr_chol<T>, (unsigned)np, FTHREADS, factor_smem<T>(), st, w, dm.ws, N, dm.Np, dm.Dp, eps, status);          \
    RUN(c, k_lr_solve<T>, (unsigned)((long long)np * dm.ntD), FTHREADS, four, st, w, dm.ws, N, dm.Np, D, dm.Dp, status, dst); \
  } while (0)

// lr_launch runs the low-rank factorisation's kernels on np patches staged at xs.
int lr_launch(padim_ctx *c, int prec, cudaStream_t st, const LrDims &dm, int np, int N, int D, const float *xs, long long xstride,
              double scale, double eps, float *mean, void *work, int *status, float *dst, char *err, size_t errlen) {
  long long blocks = ((long long)np * dm.Dp + MTHREADS - 1) / MTHREADS;
  if (blocks > 65535LL * 16) blocks = 65535LL * 16;
  if (prec == PADIM_PREC_FP64)
    LR_KERNELS(F64);
  else
    LR_KERNELS(DF32);
  if (N == 1) {  // no spread: Σ = εI, M = 0
    CK(cudaMemsetAsync(dst, 0, (size_t)np * D * sizeof(float), st));
    CK(cudaMemsetAsync(status, 0, (size_t)np * sizeof(int), st));
  }
  return PADIM_OK;
}

// lr_run factorises the low-rank form of P patches, chunk by chunk: the listed samples'
// embeddings of a chunk are gathered on the host into the pinned copy buffers and
// staged on the device ([N][chunk][D]), then centred, multiplied and solved there.
int lr_run(padim_ctx *c, cudaStream_t st, Bounce &bb, int P, int D, int N, const float *x, const int *samples, double eps,
           padim_model *m, float *m_out, int *bad_patch, char *err, size_t errlen) {
  const int prec = precision_of(c);
  const LrPlan pl = lr_plan(N, D, m->resident, c->prop.maxGridSize[0]);
  const LrDims dm = pl.d;
  if (pl.max_chunk < 1)
    return fail(err, errlen, PADIM_ERR_LIMIT, "low-rank factorisation N=%d D=%d: %d tile pairs per patch exceed one grid", N, D, dm.pairs);
  size_t av = 0;
  TRY(avail(c, &av, err, errlen));
  long long chunk = (long long)(av / pl.per_patch);
  if (chunk > P) chunk = P;
  if (chunk > pl.max_chunk) chunk = pl.max_chunk;
  {  // the launches' work capped: Gram N²D, Cholesky N³/3, solve N²D multiply-adds, at the arithmetic's cost
    const double w = (prec == PADIM_PREC_FP64 ? (c->fp64_ratio > 1 ? c->fp64_ratio : 1) : 12) *
                     ((double)N * N * D * 2 + (double)N * N * N / 3);
    if (work_patches(w) < chunk) chunk = work_patches(w);
  }
  if (chunk < 1)
    return fail(err, errlen, PADIM_ERR_OOM, "the low-rank factorisation of N=%d, D=%d needs %.1f MiB of device memory per patch, %.1f MiB available",
                N, D, pl.per_patch / 1048576.0, av / 1048576.0);
  const int pc = (int)chunk;
  const long long per = (long long)N * D;
  void *work = nullptr;
  float *xs = nullptr, *outc = nullptr;
  int *status = nullptr;
  std::vector<int> hstatus((size_t)pc);
  const size_t b_work = (size_t)pc * dm.ws * 8, b_xs = (size_t)N * pc * D * sizeof(float), b_out = (size_t)pc * per * sizeof(float);
  int rc = dev_alloc(c, &work, b_work, "the low-rank workspace", err, errlen);
  if (rc == PADIM_OK) rc = dev_alloc(c, &xs, b_xs, "the training samples", err, errlen);
  if (rc == PADIM_OK && !m->resident) rc = dev_alloc(c, &outc, b_out, "factor output", err, errlen);
  if (rc == PADIM_OK) rc = dev_alloc(c, &status, (size_t)pc * sizeof(int), "status flags", err, errlen);
  const long long xstride = (long long)pc * D;
  const double scale = N > 1 ? 1.0 / std::sqrt((double)(N - 1)) : 0.0;
  for (int p0 = 0; rc == PADIM_OK && p0 < P; p0 += pc) {
    const int np = P - p0 < pc ? P - p0 : pc;
    for (int r = 0; rc == PADIM_OK && r < N; r++)
      rc = bb.upload(xs + (size_t)r * xstride, x + ((size_t)samples[r] * P + p0) * D, (size_t)np * D * sizeof(float), st, err, errlen);
    if (rc != PADIM_OK) break;
    float *dst = m->resident ? m->data + (size_t)p0 * per : outc;
    rc = lr_launch(c, prec, st, pl.d, np, N, D, xs, xstride, scale, eps, m->mean + (size_t)p0 * D, work, status, dst, err, errlen);
    if (rc != PADIM_OK) break;
    rc = finish_chunk(bb, st, hstatus, status, np, p0, "the low-rank Gram matrix", "low-rank factor", m, outc, dst, (size_t)per, m_out,
                      bad_patch, err, errlen);
  }
  cudaStreamSynchronize(st);
  cudaGetLastError();
  dev_free(c, work, b_work);
  dev_free(c, xs, b_xs);
  dev_free(c, outc, b_out);
  dev_free(c, status, (size_t)pc * sizeof(int));
  return rc;
}

}  // namespace

extern "C" {

size_t padim_lowrank_workspace(int N, int D) { return lr_plan(N, D, true, 2147483647LL).per_patch; }

int padim_lowrank_factorize(padim_ctx *c, int P, int D, int N, const float *x, int64_t images, const int *samples, double eps,
                            float *mean_out, float *m_out, padim_model **model, int *bad_patch, char *err, size_t errlen) {
  *bad_patch = -1;
  if (model) *model = nullptr;
  if (P <= 0 || D <= 0 || N <= 0 || images <= 0)
    return fail(err, errlen, PADIM_ERR_ARG, "low-rank factorisation P=%d D=%d of %d samples from %lld images", P, D, N, (long long)images);
  if (!(eps > 0) || !std::isfinite(eps)) return fail(err, errlen, PADIM_ERR_ARG, "the low-rank form needs eps > 0, got %g", eps);
  for (int r = 0; r < N; r++)
    if (samples[r] < 0 || samples[r] >= images) return fail(err, errlen, PADIM_ERR_ARG, "sample %d of %lld", samples[r], (long long)images);
  CK(cudaSetDevice(c->device));
  cudaStream_t st = nullptr;
  CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  Bounce bb;
  padim_model *m = nullptr;
  const size_t ws = lr_plan(N, D, true, 2147483647LL).per_patch;
  int rc = bb.init(err, errlen);
  if (rc == PADIM_OK) rc = model_new(c, P, D, N, eps, ws * (P < 64 ? P : 64), &m, err, errlen);
  if (rc == PADIM_OK) rc = lr_run(c, st, bb, P, D, N, x, samples, eps, m, m_out, bad_patch, err, errlen);
  if (rc == PADIM_OK && mean_out) rc = bb.download(mean_out, m->mean, (size_t)P * D * sizeof(float), st, err, errlen);
  cudaStreamSynchronize(st);
  bb.destroy();
  cudaStreamDestroy(st);
  cudaGetLastError();
  if (rc != PADIM_OK || !model) {
    padim_model_release(m);
    return rc;
  }
  *model = m;
  return PADIM_OK;
}

// ---------------------------------------------------------------- scorer

void padim_scorer_destroy(padim_scorer *s) {
  if (!s) return;
  padim_ctx *c = s->ctx;
  cudaSetDevice(c->device);
  if (s->cs) cudaStreamSynchronize(s->cs);
  if (s->st) cudaStreamSynchronize(s->st);
  s->bb.destroy();
  destroy_events(s->ev_up);
  dev_free(c, s->x, s->b_x);
  dev_free(c, s->dist, s->b_dist);
  dev_free(c, s->lblk, s->b_lblk);
  if (s->st) cudaStreamDestroy(s->st);
  if (s->cs) cudaStreamDestroy(s->cs);
  cudaGetLastError();
  padim_model_release(s->m);
  delete s;
  padim_ctx_release(c);
  g_live--;
}

static int scorer_init(padim_scorer *s, int max_batch, char *err, size_t errlen) {
  padim_ctx *c = s->ctx;
  padim_model *m = s->m;
  const int P = m->P, D = m->D;
  const long long L = m->per;
  CK(cudaSetDevice(c->device));
  CK(cudaStreamCreateWithFlags(&s->st, cudaStreamNonBlocking));
  CK(cudaStreamCreateWithFlags(&s->cs, cudaStreamNonBlocking));
  TRY(s->bb.init(err, errlen));
  size_t av = 0;
  TRY(avail(c, &av, err, errlen));
  const size_t img = (size_t)P * D * sizeof(float) + (size_t)P * sizeof(float);
  size_t room = av;
  if (!m->resident) {
    // stream the model (L⁻¹ or M) by patch blocks: at most half of what is available
    s->pb = (int)((av / 2) / ((size_t)L * sizeof(float)));
    if (s->pb > P) s->pb = P;
    if (s->pb < 1)
      return fail(err, errlen, PADIM_ERR_OOM, "one patch of the model (D=%d, N=%d: %.1f MiB) does not fit the device memory available",
                  D, m->N, L * 4 / 1048576.0);
    s->b_lblk = (size_t)s->pb * L * sizeof(float);
    room -= s->b_lblk;
  } else {
    s->pb = P;
  }
  int b = max_batch;
  if ((size_t)b * img > room) b = (int)(room / img);
  if (b < 1) return fail(err, errlen, PADIM_ERR_OOM, "one embedding (%.1f MiB) does not fit beside the model", img / 1048576.0);
  if (b > QB && b % QB) b -= b % QB;  // whole groups of 64 images
  s->maxb = b;
  s->b_x = (size_t)b * P * D * sizeof(float);
  s->b_dist = (size_t)b * P * sizeof(float);
  TRY(dev_alloc(c, &s->x, s->b_x, "the scoring batch", err, errlen));
  TRY(dev_alloc(c, &s->dist, s->b_dist, "the distances", err, errlen));
  if (s->b_lblk) TRY(dev_alloc(c, &s->lblk, s->b_lblk, "a block of the model", err, errlen));
  return PADIM_OK;
}

int padim_scorer_create(padim_model *m, int max_batch, padim_scorer **out, char *err, size_t errlen) {
  *out = nullptr;
  if (max_batch <= 0) return fail(err, errlen, PADIM_ERR_ARG, "scorer batch %d", max_batch);
  if ((long long)m->P * ntiles(max_batch, QB) > 2147483647LL)
    return fail(err, errlen, PADIM_ERR_LIMIT, "scorer: %d patches × %d images is more blocks than one grid holds", m->P, max_batch);
  padim_scorer *s = new padim_scorer();
  padim_model_retain(m);
  padim_ctx_retain(m->ctx);
  g_live++;
  s->m = m;
  s->ctx = m->ctx;
  s->prec = precision_of(m->ctx);
  int rc = scorer_init(s, max_batch, err, errlen);
  if (rc != PADIM_OK) {
    padim_scorer_destroy(s);
    return rc;
  }
  *out = s;
  return PADIM_OK;
}

void padim_scorer_plan(padim_scorer *s, padim_plan *p) {
  p->resident = s->m->resident;
  p->patch_block = s->pb;
  p->stage = s->maxb;
  p->precision = s->prec;
  p->device_bytes = s->b_x + s->b_dist + s->b_lblk;
  p->pinned_bytes = s->m->resident ? 0 : (size_t)s->m->P * s->m->per * sizeof(float);
}

// LR_SCORE(S): a scoring launch of shape S (S16x…: calls of ≤ 16 images).
#define LR_SCORE(S)                                                                                                           \
  RUN(c, k_lr_score<S>, (unsigned)((long long)np * ntiles(nb, S::G)), S::TH, lr_score_smem<S>(), s->st, x, img, nb, D, N, mu, mm, \
      inv, P, p0, s->dist)
// LR_SCORE_SHAPES(T): the shape for the call's size and the model's rank, arithmetic T.
#define LR_SCORE_SHAPES(T)   \
  do {                       \
    if (nb <= 16) {          \
      if (N <= 16)           \
        LR_SCORE(S16x16<T>); \
      else                   \
        LR_SCORE(S16x64<T>); \
    } else {                 \
      if (N <= 16)           \
        LR_SCORE(S64x64<T>); \
      else if (N <= 32)      \
        LR_SCORE(S64x128<T>); \
      else                   \
        LR_SCORE(S64x256<T>); \
    }                        \
  } while (0)

// lr_score_launch scores the nb staged images against patches p0… of a low-rank model,
// M of those np patches at mm (device).
static int lr_score_launch(padim_scorer *s, int np, int nb, int p0, const float *mm, char *err, size_t errlen) {
  padim_ctx *c = s->ctx;
  padim_model *m = s->m;
  const int P = m->P, D = m->D, N = m->N;
  const long long img = (long long)P * D;
  const float *x = s->x + (size_t)p0 * D, *mu = m->mean + (size_t)p0 * D;
  const double inv = 1.0 / m->eps;
  if (s->prec == PADIM_PREC_FP64)
    LR_SCORE_SHAPES(F64);
  else
    LR_SCORE_SHAPES(DF32);
  return PADIM_OK;
}

// score_work is a scoring launch's fp32-equivalent flops per patch for nb images.
static double score_work(padim_scorer *s, int nb) {
  const padim_model *m = s->m;
  if (m->N == 0) return (double)nb * m->D * (m->D + 1);
  // compensated dot products: ~11 float32 operations per multiply-add in double-float,
  // float64 at the card's rate
  const double w = s->prec == PADIM_PREC_FP64 ? (s->ctx->fp64_ratio > 1 ? s->ctx->fp64_ratio : 1) : 11;
  return (double)nb * m->N * m->D * 2 * w;
}

// padim_scorer_score scores n images, s->maxb per pass. Per pass, patch range by patch
// range: the images' patches of the range are uploaded on the copy stream (straight
// from registered memory, else through the bounce buffers), and the range's kernel
// runs on the compute stream once they are there, while the next range uploads.
int padim_scorer_score(padim_scorer *s, const float *x, int n, float *dist, char *err, size_t errlen) {
  if (n <= 0) return fail(err, errlen, PADIM_ERR_ARG, "batch of %d images", n);
  padim_ctx *c = s->ctx;
  padim_model *m = s->m;
  const int P = m->P, D = m->D;
  const long long L = m->per;
  CK(cudaSetDevice(c->device));
  const size_t img = (size_t)P * D, pitch = img * sizeof(float);
  for (int off = 0; off < n; off += s->maxb) {
    const int nb = n - off < s->maxb ? n - off : s->maxb;
    const float *xb = x + (size_t)off * img;
    const int step = launch_patches(s->pb, score_work(s, nb));
    size_t r = 0;
    for (int p0 = 0; p0 < P; p0 += s->pb) {
      const int np = P - p0 < s->pb ? P - p0 : s->pb;
      const float *lv = m->data + (size_t)p0 * L;
      if (!m->resident) {  // after the previous block's kernels, in stream order
        CK(copy_async(s->lblk, m->h_data + (size_t)p0 * L, (size_t)np * L * sizeof(float), cudaMemcpyHostToDevice, s->st));
        lv = s->lblk;
      }
      for (int q0 = p0; q0 < p0 + np; q0 += step, r++) {
        const int nq = p0 + np - q0 < step ? p0 + np - q0 : step;
        TRY(ensure_events(s->ev_up, r + 1, err, errlen));
        TRY(s->bb.upload2d(s->x + (size_t)q0 * D, pitch, xb + (size_t)q0 * D, pitch, (size_t)nq * D * sizeof(float), (size_t)nb, s->cs,
                           err, errlen));
        CK(cudaEventRecord(s->ev_up[r], s->cs));
        CK(cudaStreamWaitEvent(s->st, s->ev_up[r], 0));
        const float *lq = lv + (size_t)(q0 - p0) * L;
        if (m->N > 0)
          TRY(lr_score_launch(s, nq, nb, q0, lq, err, errlen));
        else if (nb <= 16)
          RUN(c, k_score<16>, (unsigned)((long long)nq * ntiles(nb, 16)), QTHREADS, score_smem<16>(), s->st, s->x + (size_t)q0 * D,
              (long long)img, nb, D, m->mean + (size_t)q0 * D, lq, P, q0, s->dist);
        else
          RUN(c, k_score<QB>, (unsigned)((long long)nq * ntiles(nb, QB)), QTHREADS, score_smem<QB>(), s->st, s->x + (size_t)q0 * D,
              (long long)img, nb, D, m->mean + (size_t)q0 * D, lq, P, q0, s->dist);
      }
    }
    // the download follows every kernel on st, and they follow every upload: on return
    // the images have been read and the distances are here
    TRY(s->bb.download(dist + (size_t)off * P, s->dist, (size_t)nb * P * sizeof(float), s->st, err, errlen));
    TRY(s->bb.settle(err, errlen));
  }
  return PADIM_OK;
}

// ---------------------------------------------------------------- probe

int padim_probe_launch(padim_ctx *c, int threads, size_t smem, int checked, char *err, size_t errlen) {
  CK(cudaSetDevice(c->device));
  cudaStream_t st = nullptr;
  CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  int *d = nullptr;
  int rc = dev_alloc(c, &d, sizeof(int), "probe", err, errlen);
  const int words = (int)(smem / sizeof(int));
  if (rc == PADIM_OK) {
    auto body = [&]() -> int {
      CK(cudaMemsetAsync(d, 0, sizeof(int), st));
      if (checked) {
        RUN(c, k_probe, 1, threads, smem, st, words, d);
      } else {
        LAUNCH(k_probe_bare, 1, threads, smem, st, words, d);
        cudaError_t e = cudaGetLastError();
        if (e != cudaSuccess) return fail(err, errlen, cuda_code(e), "kernel k_probe: %s", cudaGetErrorString(e));
      }
      int h = 0;
      CK(cudaMemcpyAsync(&h, d, sizeof(int), cudaMemcpyDeviceToHost, st));
      CK(cudaStreamSynchronize(st));
      if (h != 1) return fail(err, errlen, PADIM_ERR_CUDA, "probe: shared memory sum wrong (%d)", h);
      return PADIM_OK;
    };
    rc = body();
  }
  cudaStreamSynchronize(st);
  dev_free(c, d, sizeof(int));
  cudaStreamDestroy(st);
  cudaGetLastError();
  return rc;
}

}  // extern "C"
