/* cuda_internal.h — state shared by the CUDA backend's C files:
 * cuda_backend.c (module entry, device, buffers, weights, uploads) and
 * cuda_ops.c (supports_op and compute: one kernel launch per node).
 *
 * One device, many backends (like the Vulkan backend): every backend (one
 * per context) on a device index shares one cu_dev per process, refcounted
 * and destroyed with its last backend: the weight cache, under its lock. A
 * backend's own part is never shared: its stream, cuBLAS handle (a handle
 * carries its stream and workspace and must not be used by two threads at
 * once), uploads, scratch, error flag and events; so contexts on different
 * threads launch at once.
 *
 * Memory model: the executor's compute buffers
 * are cudaMalloc'd (lethe_buffer.impl = device pointer, host_ptr = NULL).
 * Weights (leaves with host data) are uploaded once per device, on first use
 * by any backend, into their own device allocations, found again by their
 * host address (cuda_weights.h) until lethe_backends_forget drops them. Graph
 * inputs (token ids: leaves marked is_input) and per-micro-batch tables
 * (positions, RoPE frequencies) go through a pinned staging buffer into a
 * device upload buffer each compute(). compute() enqueues the node range on
 * the backend's stream and synchronizes once at the end.
 *
 * This is a module (liblethe-cuda.so): it cannot call liblethe's hidden
 * functions, so errors and logs go through the host's services (g_cu_host).
 */
#ifndef LETHE_CUDA_INTERNAL_H
#define LETHE_CUDA_INTERNAL_H

#include "backend.h"
#include "backend_module.h"
#include "cuda_kernels.h"
#include "cuda_weights.h"

#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <pthread.h>

extern const lethe_module_host *g_cu_host;
#define CU_FAIL(st, ...) g_cu_host->fail((st), __VA_ARGS__)
#define CU_LOG(level, ...) g_cu_host->log((level), __VA_ARGS__)
/* A failed CUDA call: status + message naming the call and the error. */
#define CU_CHECK(call, what)                                                                         \
    do {                                                                                             \
        cudaError_t e_ = (call);                                                                     \
        if (e_ != cudaSuccess)                                                                       \
            return CU_FAIL(e_ == cudaErrorMemoryAllocation ? LETHE_ERR_OOM : LETHE_ERR_BACKEND,      \
                           "cuda: %s: %s (%s)", what, cudaGetErrorString(e_), cudaGetErrorName(e_)); \
    } while (0)

#define CU_ALIGN 256   /* offsets of uploads and scratch parts */

/* The shared device (one per device index per process; the registry in
 * cuda_backend.c). */
typedef struct cu_dev {
    int device;
    int users;               /* backends on it (registry lock)   */
    struct cu_dev *next;     /* registry list (registry lock)    */
    pthread_mutex_t mu;      /* guards the weight cache          */
    cu_wcache weights;
} cu_dev;

typedef struct cu_upload {   /* one host array uploaded in the current compute */
    const void *host;
    size_t size;
    void *dev;
} cu_upload;

/* ATTENTION work the host finishes after the compute's sync: TOVA / H2O
 * weights to fold into kv->score, or QUEST work entries whose lengths are
 * the KV reads. Both live in the upload buffer at `off` (device) and are
 * copied back to the same offset of the staging buffer. */
typedef struct cu_attn_job {
    const lethe_node *n;
    size_t off, bytes;
    int32_t stride;          /* weights: [T][Hq][stride]; QUEST: entries       */
    bool quest;
} cu_attn_job;

typedef struct cu_ctx {
    cu_dev *dev;             /* shared with the other backends on the device */
    int device;
    char name[128];
    int sm_count;
    size_t l2_bytes;
    cudaStream_t stream;
    cublasHandle_t blas;

    uint8_t *up_host;        /* pinned staging [up_cap]                       */
    uint8_t *up_dev;         /* device upload buffer [up_cap]                 */
    size_t up_cap, up_used;
    cu_upload *ups;          /* uploads of the current compute (dedup)        */
    int n_ups, cap_ups;

    void *scratch;           /* prefill operands in f16/bf16, decode q8 activations [scratch_cap] */
    size_t scratch_cap;
    int *d_err;              /* device flag: a kernel met bad input (ids)     */
    cu_attn_job *jobs;       /* the current compute's (cuda_ops.c)            */
    int n_jobs, cap_jobs;

    bool managed_ok;         /* concurrent managed access: buffer_alloc_shared offered */
    bool meta_on_device;     /* LETHE_CUDA_KV_META=device: pos/expire prefer the GPU too */
    int gemv_variant;        /* LETHE_CUDA_GEMV: LETHE_CU_GEMV_NEW, _OLD ("old"), _WIDE ("wide") */
    const void *advised[16]; /* KV buffers whose placement advice is set      */
    int n_advised;

    /* the device clock (device_ms): events around the work in flight since
     * the last synchronization; NULL events: no clock (creation failed) */
    cudaEvent_t ev_begin, ev_end;
    bool ev_open;            /* ev_begin recorded, not yet collected          */
    double device_ms;        /* device time of every collected interval       */
} cu_ctx;

/* cuda_backend.c */
lethe_status lethe_cu_weight(cu_ctx *c, const void *host, size_t size, void **dev);
/* Device copy of `size` host bytes for this compute; `dedup`: one copy per
 * host address per compute (arrays that live through the compute, such as
 * ub->pos), else always a fresh copy (tables on the caller's stack). The
 * bytes are taken at the call. */
lethe_status lethe_cu_upload(cu_ctx *c, const void *host, size_t size, bool dedup, void **dev);
/* Grow the upload buffers to hold `need` bytes (called before the first upload of a compute). */
lethe_status lethe_cu_upload_reserve(cu_ctx *c, size_t need);
/* `size` bytes of the upload buffer for this compute that the kernels
 * write (nothing is copied in): device address and offset. */
lethe_status lethe_cu_upload_space(cu_ctx *c, size_t size, void **dev, size_t *off);
lethe_status lethe_cu_scratch(cu_ctx *c, size_t need, void **out);
size_t lethe_cu_align(size_t x);
/* Placement advice for a KV cache's managed buffer, once per buffer: bytes
 * [meta_begin, meta_end) hold pos / expire (see cuda_backend.c). */
lethe_status lethe_cu_kv_advise(cu_ctx *c, const lethe_buffer *buf, size_t meta_begin, size_t meta_end);

/* The device clock around enqueued work: clock_begin before the launches
 * (opens an interval unless one is open: several copies before one
 * synchronize() make one interval), clock_end after them, clock_collect
 * after the stream is synchronized (adds the interval to c->device_ms). */
void lethe_cu_clock_begin(cu_ctx *c);
void lethe_cu_clock_end(cu_ctx *c);
void lethe_cu_clock_collect(cu_ctx *c);

/* cuda_ops.c */
bool lethe_cu_supports_op(lethe_backend *be, const lethe_node *n);
lethe_status lethe_cu_compute(lethe_backend *be, lethe_graph *g, int begin, int end, lethe_abort_fn abort_fn,
                              void *abort_user);
size_t lethe_cu_scratch_need(const cu_ctx *c, const lethe_node *n);

#endif
