/* padim_cuda.h — the small C API of padim's CUDA kernels.
 *
 * Layouts match package gauss: embeddings float32 [n][P][D]; statistics float64,
 * mean [P][D] and centred second moments M2 [P][D(D+1)/2] packed lower-triangular
 * row-major ((i, j<=i) at i(i+1)/2+j); the model float32 mean [P][D] and packed
 * L^-1 [P][D(D+1)/2] with Sigma = L L^T.
 *
 * Every call returns PADIM_OK (0) or an error code, with a message in err
 * (errlen bytes, always NUL-terminated). Host pointers may be ordinary
 * (pageable) memory: the library stages through its own pinned buffers.
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
  PADIM_ERR_NO_DEVICE = 5  /* no CUDA device or driver */
};

/* Devices. */
int padim_device_count(int *count, char *err, size_t errlen);
int padim_device_info(int device, char *name, size_t namelen, size_t *total_mem, size_t *free_mem,
                      int *cc_major, int *cc_minor, char *err, size_t errlen);

/* Debug: when on, every kernel launch is followed by a synchronise and an error check. */
void padim_set_debug_sync(int on);

/* A context: one device, a compute stream and a copy stream. */
typedef struct padim_ctx padim_ctx;
int padim_ctx_create(int device, padim_ctx **out, char *err, size_t errlen);
void padim_ctx_destroy(padim_ctx *ctx);

/* Streaming statistics (Chan's merge per batch). max_batch bounds the images per
 * device batch; larger calls are split. */
typedef struct padim_acc padim_acc;
int padim_acc_create(padim_ctx *ctx, int P, int D, int max_batch, padim_acc **out, char *err, size_t errlen);
int padim_acc_add(padim_acc *acc, const float *x, int n, char *err, size_t errlen);
int padim_acc_stats(padim_acc *acc, double *mean, double *m2, int64_t *count, char *err, size_t errlen);
void padim_acc_destroy(padim_acc *acc);

/* Factorisation: Sigma = M2/(count-1) + eps I = L L^T per patch in float64, then
 * L^-1 packed as float32 into linv [P][D(D+1)/2]. On PADIM_ERR_NOT_PD, *bad_patch
 * is the first patch that failed. D <= 1024. */
int padim_factorize(padim_ctx *ctx, int P, int D, int64_t count, const double *m2, double eps,
                    float *linv, int *bad_patch, char *err, size_t errlen);

/* Mahalanobis distances ||L^-1 (x - mu)|| for batches [n][P][D] into dist [n][P]. */
typedef struct padim_scorer padim_scorer;
int padim_scorer_create(padim_ctx *ctx, int P, int D, int max_batch, const float *mean, const float *linv,
                        padim_scorer **out, char *err, size_t errlen);
int padim_scorer_score(padim_scorer *s, const float *x, int n, float *dist, char *err, size_t errlen);
void padim_scorer_destroy(padim_scorer *s);

#ifdef __cplusplus
}
#endif
#endif
