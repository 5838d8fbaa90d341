/* cuda_internal.h — state shared by the CUDA backend's C files:
 * cuda_backend.c (module entry, device, buffers, weights, uploads),
 * cuda_plan.c (the launch plan of a node range), cuda_ops.c (supports_op
 * and compute) and cuda_graph.c (decode steps replayed as CUDA graphs).
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
 * (positions, RoPE frequencies, KV slot tables) are laid out by the launch
 * plan (cuda_plan.h) in a pinned staging buffer and moved to the device
 * upload buffer by one copy each compute(). compute() enqueues the node
 * range on the backend's stream, or replays a captured CUDA graph of it
 * (cuda_graph.c), and synchronizes once at the end.
 *
 * This is a module (liblethe-cuda.so): it cannot call liblethe's hidden
 * functions, so errors and logs go through the host's services (g_cu_host).
 */
#ifndef LETHE_CUDA_INTERNAL_H
#define LETHE_CUDA_INTERNAL_H

#include "backend.h"
#include "backend_module.h"
#include "kv_cache.h"
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
#define CU_PLIST_SLOTS 4   /* KV caches with a page-list mirror per backend */

/* The shared device (one per device index per process; the registry in
 * cuda_backend.c). */
typedef struct cu_dev {
    int device;
    int users;               /* backends on it (registry lock)   */
    struct cu_dev *next;     /* registry list (registry lock)    */
    pthread_mutex_t mu;      /* guards the weight cache          */
    cu_wcache weights;
} cu_dev;

typedef struct cu_ctx {
    cu_dev *dev;             /* shared with the other backends on the device */
    int device;
    char name[128];
    int sm_count;
    size_t l2_bytes;
    cudaStream_t stream;
    cublasHandle_t blas;

    uint8_t *up_host;        /* pinned staging [up_cap]: the plan's staged bytes,
                                then the device results copied back (cuda_plan.h) */
    uint8_t *up_dev;         /* device upload buffer [up_cap], same offsets   */
    size_t up_cap;

    void *scratch;           /* prefill operands in f16/bf16, decode q8 activations [scratch_cap] */
    size_t scratch_cap;
    int *d_err;              /* device flag: a kernel met bad input (ids)     */

    bool managed_ok;         /* concurrent managed access: buffer_alloc_shared offered */
    bool meta_on_device;     /* LETHE_CUDA_KV_META=device: pos/expire prefer the GPU too */
    int gemv_variant;        /* LETHE_CUDA_GEMV: LETHE_CU_GEMV_NEW, _OLD ("old"), _WIDE ("wide") */
    int prefill_tc;          /* LETHE_CUDA_PREFILL_ATTN: 1 tensor-core prefill attention ("tc", default), 0 "f32" */
    int fuse;                /* LETHE_CUDA_FUSE: fused decode passes (cuda_plan.c), 1 unless "0" */
    const void *advised[16]; /* KV buffers whose placement advice is set      */
    int n_advised;

    /* the device clock (device_ms): events around the work in flight since
     * the last synchronization; NULL events: no clock (creation failed) */
    cudaEvent_t ev_begin, ev_end;
    bool ev_open;            /* ev_begin recorded, not yet collected          */
    double device_ms;        /* device time of every collected interval       */

    bool graphs;             /* LETHE_CUDA_GRAPHS=1: decode steps replay CUDA graphs */
    struct cu_graph_cache *gc;   /* captured executables (cuda_graph.c), NULL until the first */

    /* device-resident page lists (cuda_plist.h, cuda_plist_dev.c): one
     * mirror per KV cache this backend attends over, least recently used
     * replaced; pending pair uploads go through pl_host -> pl_dev */
    bool plists;             /* on unless LETHE_CUDA_PLISTS=staged                 */
    bool plist_check;        /* LETHE_CUDA_PLIST_CHECK=1                           */
    struct cu_plist_mirror *plm[CU_PLIST_SLOTS];
    uint64_t plm_used[CU_PLIST_SLOTS], plm_clock;
    uint8_t *pl_host;        /* pinned [pl_cap]                                     */
    uint8_t *pl_dev;         /* device [pl_cap]                                     */
    size_t pl_cap;
    bool plist_warned;       /* one warning when a mirror cannot be had             */
} cu_ctx;

struct cu_plan;

/* cuda_backend.c */
lethe_status lethe_cu_weight(cu_ctx *c, const void *host, size_t size, void **dev);
/* Grow the staging and upload buffers to hold `need` bytes (before the
 * compute's staging bytes are written; may move both buffers). */
lethe_status lethe_cu_upload_reserve(cu_ctx *c, size_t need);
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
/* The plan's staging copy and launches on c->stream (plain, or under capture). */
lethe_status lethe_cu_enqueue(cu_ctx *c, const struct cu_plan *p);

/* cuda_plist_dev.c: the page-list mirrors' device side */
struct cu_plist_mirror;
/* cu_plan_env.plist: the mirror of kv's lists, synced now (*m NULL: stage them) */
int lethe_cu_plist_env(void *user, const lethe_kv_cache *kv, struct cu_plist_mirror **m);
/* Enqueue the plan's mirrors' pending uploads (before its staging copy and launches). */
lethe_status lethe_cu_plist_apply(cu_ctx *c, const struct cu_plan *p);
/* LETHE_CUDA_PLIST_CHECK, after the compute's sync: each arena read back equals its host copy. */
lethe_status lethe_cu_plist_verify(cu_ctx *c, const struct cu_plan *p);
/* Drop the mirrors of a KV buffer being freed (NULL: every mirror). */
void lethe_cu_plist_drop(cu_ctx *c, const void *kv_buf);
size_t lethe_cu_plist_device_bytes(const cu_ctx *c);

/* cuda_graph.c */
/* Replay the plan as a CUDA graph (capture it first when no cached
 * executable matches). *done false: nothing was enqueued, the caller
 * launches the plan plainly (a capture error is logged, never fatal). */
lethe_status lethe_cu_graph_run(cu_ctx *c, const struct cu_plan *p, bool *done);
void lethe_cu_graph_free(cu_ctx *c);

#endif
