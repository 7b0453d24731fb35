/* padim_cuda.h — the small C API of padim's CUDA kernels.
 *
 * Layouts match package gauss: embeddings float32 [n][P][D]; statistics float64,
 * mean [P][D] and centred second moments M2 [P][D(D+1)/2] packed lower-triangular
 * row-major ((i, j<=i) at i(i+1)/2+j); the model float32 mean [P][D] and packed
 * L^-1 [P][D(D+1)/2] with Sigma = L L^T.
 *
 * Every call that can fail returns PADIM_OK (0) or an error code, with a message in
 * err (errlen bytes, always NUL-terminated). Host pointers may be ordinary (pageable)
 * memory: the library copies through its own pinned buffers, on its own streams; from
 * memory registered with padim_host_register it copies directly.
 *
 * Lifetimes: a context is reference-counted. padim_ctx_create returns it with one
 * reference; every accumulator, model and scorer takes one of its own and drops it
 * when destroyed, so padim_ctx_release by the owner never frees what others still
 * use. Models are reference-counted the same way (a scorer holds its model).
 * Objects are not safe for concurrent use: one caller at a time per accumulator or
 * scorer (the Go layer holds a mutex); different objects may be used concurrently.
 *
 * Data stays on the device: an accumulator keeps its statistics there (or, when the
 * card is too small, in pinned host memory streamed by patch blocks), factorises them
 * there into a model, and a scorer created from that model uses it without copies.
 */
#ifndef PADIM_CUDA_H
#define PADIM_CUDA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
  PADIM_OK = 0,
  PADIM_ERR_CUDA = 1,      /* a CUDA runtime error (message says which) */
  PADIM_ERR_OOM = 2,       /* not enough device or pinned host memory */
  PADIM_ERR_NOT_PD = 3,    /* a covariance is not positive definite */
  PADIM_ERR_ARG = 4,       /* bad arguments */
  PADIM_ERR_NO_DEVICE = 5, /* no CUDA device or driver */
  PADIM_ERR_LIMIT = 6      /* a size the kernels or the device cannot handle, refused before launch */
};

/* Factorisation arithmetic: native float64, or float pairs ("double-float", about 44
 * bits) where the card's float64 rate is low (GTX/RTX: 1/32 to 1/64 of float32). */
enum { PADIM_PREC_AUTO = 0, PADIM_PREC_FP64 = 1, PADIM_PREC_DF32 = 2 };

typedef struct padim_device_props {
  char name[256];
  int cc_major, cc_minor;
  size_t total_mem, free_mem;
  int multiprocessors;
  int max_threads_per_block;
  size_t smem_per_block;       /* without opt-in */
  size_t smem_per_block_optin; /* with cudaFuncSetAttribute */
  int fp32_to_fp64_ratio;
  int emulated;
} padim_device_props;

/* Devices. */
int padim_device_count(int *count, char *err, size_t errlen);
int padim_device_props_get(int device, padim_device_props *out, char *err, size_t errlen);

/* Debug: when on, every kernel launch is followed by a synchronise and an error check. */
void padim_set_debug_sync(int on);
/* Profiling: when on, every kernel launch is timed with CUDA events (see padim_ctx_profile). */
void padim_set_profile(int on);

/* The most work one launch may do, in float32-equivalent flops (default 2^38, about
 * 100 ms on a small consumer card); larger patch ranges are split across launches.
 * 0 restores the default. Tests set it low to exercise the split. */
void padim_set_launch_work(double flops);

/* Host memory the device copies from directly: padim_host_register page-locks
 * [p, p+n) (cudaHostRegister) and records it, so uploads from inside it skip the pinned
 * bounce buffers (and calls return once the device has read it). The memory must stay
 * allocated until padim_host_unregister(p). */
int padim_host_register(void *p, size_t n, char *err, size_t errlen);
void padim_host_unregister(void *p);

/* Bytes the library moved over the bus since the last reset, process-wide. */
typedef struct padim_bus {
  unsigned long long h2d_bytes;       /* host to device, every copy */
  unsigned long long h2d_bounced;     /* of which first copied by the host into a bounce buffer */
  unsigned long long d2h_bytes;       /* device to host */
  unsigned long long d2h_bounced;     /* of which copied out of a bounce buffer by the host */
  unsigned long long host_copy_bytes; /* host memcpy into and out of bounce buffers */
  unsigned long long copies;          /* copy calls */
} padim_bus;
void padim_bus_get(padim_bus *out, int reset);

/* Objects alive now (contexts, accumulators, models, scorers): for lifetime tests. */
int padim_live_objects(void);

/* A context: one device, its properties, a memory budget and profile records. */
typedef struct padim_ctx padim_ctx;
int padim_ctx_create(int device, padim_ctx **out, char *err, size_t errlen);
void padim_ctx_retain(padim_ctx *ctx);
void padim_ctx_release(padim_ctx *ctx);
/* Device bytes the library may hold at once on this context (0: what the card has free,
 * less a reserve). Smaller budgets make accumulators and scorers stream by patch blocks. */
void padim_ctx_set_budget(padim_ctx *ctx, size_t bytes);
void padim_ctx_set_precision(padim_ctx *ctx, int prec);
/* Per-kernel times since the last call, one line per kernel:
 * "name launches total_ms min_ms max_ms"; with reset set, starts over. */
int padim_ctx_profile(padim_ctx *ctx, char *buf, size_t len, int reset, char *err, size_t errlen);

/* How an accumulator or scorer laid its data out. */
typedef struct padim_plan {
  int resident;        /* 1: everything on the device; 0: streamed by patch blocks */
  int patch_block;     /* patches per block (P when resident) */
  int stage;           /* images per accumulation pass, or per scoring launch */
  int precision;       /* PADIM_PREC_FP64 or PADIM_PREC_DF32 */
  size_t device_bytes; /* held on the device */
  size_t pinned_bytes; /* held in pinned host memory */
} padim_plan;

/* The layout an accumulator would choose with avail_bytes of device memory (no
 * allocation): PADIM_ERR_OOM when even one image and one patch do not fit. */
int padim_plan_fit(int P, int D, int stage, size_t avail_bytes, padim_plan *out);
/* Device bytes of one patch's factorisation workspace (tiles of 32, 8-byte values). */
size_t padim_factor_workspace(int D);

/* Streaming statistics. Images are staged on the device, stage at a time (at least
 * 128 unless memory forbids), and folded into the float64 statistics per pass. */
typedef struct padim_acc padim_acc;
int padim_acc_create(padim_ctx *ctx, int P, int D, int stage, padim_acc **out, char *err, size_t errlen);
void padim_acc_plan(padim_acc *acc, padim_plan *out);
int padim_acc_add(padim_acc *acc, const float *x, int n, char *err, size_t errlen);
int padim_acc_stats(padim_acc *acc, double *mean, double *m2, int64_t *count, char *err, size_t errlen);
/* Folds the staged images into the statistics and waits for the device (timing). */
int padim_acc_flush(padim_acc *acc, char *err, size_t errlen);
void padim_acc_destroy(padim_acc *acc);

/* A model: float32 mean and packed L^-1, on the device when it fits (else in pinned host
 * memory, streamed to the device by patch blocks at each scoring launch). */
typedef struct padim_model padim_model;
void padim_model_retain(padim_model *m);
void padim_model_release(padim_model *m);
int padim_model_resident(const padim_model *m);

/* Factorisation: Sigma = M2/(count-1) + eps I = L L^T per patch, then L^-1 rounded to
 * float32. From an accumulator's statistics where they are (nothing leaves the device
 * but the result), or from host statistics. The result is written to mean_out [P][D]
 * and linv_out [P][D(D+1)/2] (either may be NULL) and, when model is not NULL, kept as
 * a model. On PADIM_ERR_NOT_PD, *bad_patch is the first patch that failed. */
int padim_acc_factorize(padim_acc *acc, double eps, float *mean_out, float *linv_out, padim_model **model, int *bad_patch,
                        char *err, size_t errlen);
int padim_factorize(padim_ctx *ctx, int P, int D, int64_t count, const double *mean, const double *m2, double eps,
                    float *mean_out, float *linv_out, padim_model **model, int *bad_patch, char *err, size_t errlen);
/* A model from host arrays (uploaded once, stream-ordered). */
int padim_model_upload(padim_ctx *ctx, int P, int D, const float *mean, const float *linv, padim_model **out, char *err,
                       size_t errlen);

/* The low-rank form (N samples, N < D typically): with A = Xc/sqrt(N-1) (the patch's
 * centred samples, N x D) and L L^T = A A^T + eps I (N x N), the model keeps per patch
 * the float32 mean [D] and M = L^-1 A [N][D]; the distance of x is
 * sqrt(max(||x-mu||^2 - ||M(x-mu)||^2, 0)/eps). One sample: M = 0.
 * padim_lowrank_factorize fits it on the device from the embeddings x [images][P][D]
 * listed in samples (N indices, in that order; only those cross the bus), in the
 * factorisation's arithmetic (float64 or double-float: mean, centring, Gram, Cholesky
 * and solve); mean_out [P][D] and m_out [P][N][D] (either may be NULL) receive the
 * model, and, when model is not NULL, it is kept. On PADIM_ERR_NOT_PD, *bad_patch is the
 * first patch whose Gram matrix failed. padim_lowrank_upload makes a model from host
 * arrays. Scorers (below) take either form. */
int padim_lowrank_factorize(padim_ctx *ctx, int P, int D, int N, const float *x, int64_t images, const int *samples, double eps,
                            float *mean_out, float *m_out, padim_model **model, int *bad_patch, char *err, size_t errlen);
int padim_lowrank_upload(padim_ctx *ctx, int P, int D, int N, double eps, const float *mean, const float *m, padim_model **out,
                         char *err, size_t errlen);
/* Device bytes per patch of a low-rank factorisation (workspace, staged samples, flag). */
size_t padim_lowrank_workspace(int N, int D);
/* The rank N of a low-rank model; 0 for the full form. */
int padim_model_rank(const padim_model *m);

/* Mahalanobis distances for batches [n][P][D] into dist [n][P]: ||L^-1 (x - mu)|| for
 * the full form (float32), or the low-rank form's (dot products in float64 or
 * double-float, by the context's precision when the scorer is made). Each launch reads
 * every patch's L^-1 or M once per 64 images; an image's distance does not depend on
 * the batch it is in. */
typedef struct padim_scorer padim_scorer;
int padim_scorer_create(padim_model *m, int max_batch, padim_scorer **out, char *err, size_t errlen);
void padim_scorer_plan(padim_scorer *s, padim_plan *out);
int padim_scorer_score(padim_scorer *s, const float *x, int n, float *dist, char *err, size_t errlen);
void padim_scorer_destroy(padim_scorer *s);

/* Test hook: launches a probe kernel with the given threads per block and dynamic
 * shared memory, through the library's launch checks (checked=1) or bare (checked=0,
 * the error then comes from cudaGetLastError). The kernel fills and sums its shared
 * memory, so a launch that "succeeds" with less memory than asked shows. */
int padim_probe_launch(padim_ctx *ctx, int threads, size_t smem, int checked, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif
#endif
