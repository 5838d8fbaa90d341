/* backend.h — the interface every compute backend implements.
 *
 * Modelled on ggml's backend split (device → buffer type → buffer), kept
 * small: a backend owns buffers on its device, says which nodes it can run
 * (supports_op is the single gate for fallback), and computes a contiguous
 * range of graph nodes. The executor (executor.h) places each node on the
 * first backend that supports it and inserts the copies between devices.
 *
 * Buffers: the CPU backend's buffers are host memory (host_ptr != NULL), so
 * tensors in them carry `data`. Device backends return NULL from host_ptr and
 * address tensors by (buf, offs).
 */
#ifndef LETHE_BACKEND_H
#define LETHE_BACKEND_H

#include "graph.h"
#include "lethe.h"

typedef struct lethe_backend lethe_backend;
typedef struct lethe_device_share lethe_device_share;   /* below */

typedef struct lethe_buffer {
    lethe_backend *backend;
    size_t size;
    void *host_ptr;          /* host address of byte 0, or NULL              */
    void *impl;              /* backend's own handle                         */
} lethe_buffer;

typedef struct lethe_backend_info {
    const char *name;        /* "cpu", "vulkan", "cuda"                      */
    char device_name[128];   /* "AMD EPYC (2 threads)", "NVIDIA H100 ..."    */
    size_t mem_total, mem_free;
} lethe_backend_info;

/* One row move of buffer_move_rows: byte offsets into the buffer. */
typedef struct lethe_row_move {
    size_t src, dst;
} lethe_row_move;

typedef struct lethe_backend_iface {
    void (*free)(lethe_backend *be);
    void (*get_info)(lethe_backend *be, lethe_backend_info *info);

    lethe_status (*buffer_alloc)(lethe_backend *be, size_t size, lethe_buffer **out);
    void (*buffer_free)(lethe_buffer *buf);
    lethe_status (*buffer_set)(lethe_buffer *buf, size_t offs, const void *src, size_t size);
    lethe_status (*buffer_get)(lethe_buffer *buf, size_t offs, void *dst, size_t size);

    /* Can this backend compute node `n` (op, dtypes, shapes)? */
    bool (*supports_op)(lethe_backend *be, const lethe_node *n);
    /* Compute nodes [begin, end) of g, in order. Every node in the range is
     * placed on this backend and its inputs are reachable from it. Returns
     * LETHE_ERR_ABORTED if `abort_fn` (checked between nodes) asks to stop. */
    lethe_status (*compute)(lethe_backend *be, lethe_graph *g, int begin, int end,
                            lethe_abort_fn abort_fn, void *abort_user);
    lethe_status (*synchronize)(lethe_backend *be);

    /* Optional (NULL: the backend keeps no scratch). Bytes of scratch memory
     * the backend holds now (g == NULL), or would hold after computing
     * nodes [begin, end) of g (scratch only grows). The executor checks the
     * context's memory cap with it before compute() allocates, and the
     * memory report (lethe_get_memory_info) adds it to the compute bytes. */
    size_t (*scratch_bytes)(lethe_backend *be, const lethe_graph *g, int begin, int end);

    /* Optional (NULL: not offered). Copy `size` bytes between two buffers of
     * this backend on the device, asynchronously (synchronize() waits).
     * `lethe bench --roofline` times it as the device's bandwidth. */
    lethe_status (*buffer_copy)(lethe_buffer *dst, size_t dst_offs, lethe_buffer *src, size_t src_offs, size_t size);

    /* Optional (NULL: not offered). A buffer both the host and the device
     * address: host_ptr != NULL and the device can bind it (Vulkan:
     * HOST_VISIBLE | HOST_COHERENT memory; CUDA: managed or mapped pinned
     * memory). The KV cache puts its pool and per-slot metadata there
     * (kv_cache.h, lethe_kv_init's `mem`), so the host keeps doing the
     * bookkeeping (slots, holes, evictions, compaction) with plain pointers
     * while device kernels store and attend in place. */
    lethe_status (*buffer_alloc_shared)(lethe_backend *be, size_t size, lethe_buffer **out);

    /* Optional (NULL: not offered). Milliseconds the device has spent on
     * this backend's finished work (compute(), and buffer_copy() where the
     * backend times it) since it was created, from device timestamps, so
     * host submission and gaps are left out. Monotonic: callers take the
     * difference around what they time; a difference of 0 means that work
     * was not timed (Vulkan: no timestamp support, or an untimed copy).
     * `lethe bench` uses it for the GPU roofline and the device columns. */
    double (*device_ms)(lethe_backend *be);

    /* Optional (NULL: nothing to do). The host has finished writing or
     * reading bytes [offs, offs + size) of a shared buffer with plain
     * pointers (a fork's page copies, a compaction's row moves, a state
     * load). A backend whose shared memory migrates pages to the host on
     * such access (CUDA managed memory) moves them back to the device now,
     * before returning, so the next compute does not page-fault them in.
     * A failure only costs speed. */
    lethe_status (*buffer_host_done)(lethe_buffer *buf, size_t offs, size_t size);

    /* Optional (NULL: the backend shares nothing). GPU backends of one kind
     * on one device index share one device per process (its queue,
     * pipelines and weight cache; docs/DESIGN-CHANGES.md): what it holds now.
     * weight_bytes / n_weights count the cached weights whose host bytes lie
     * in [lo, lo + size), or all of them when lo is NULL. */
    void (*device_share)(lethe_backend *be, const void *lo, size_t size, lethe_device_share *out);

    /* Optional (NULL: the host moves rows itself, with plain pointers).
     * Copy n rows of row_bytes bytes within shared buffer `buf` on the
     * device: bytes [moves[i].src, + row_bytes) to [moves[i].dst, +
     * row_bytes). Semantics: gather, then scatter (every source row is read
     * before any destination row is written). The caller guarantees that the
     * destinations are pairwise disjoint and that no move reads a row an
     * earlier move of the batch writes (moves[j].dst never overlaps
     * moves[i].src for j < i; a later move may write an earlier move's
     * source), so the result is also that of the moves done one after
     * another in the given order, which is what the host path does. The KV
     * cache's batches meet it: a compaction's moves go to lower slots in
     * ascending order (kv_cache.c move_slot), a fork's pages to free ones.
     * Done when it returns (the host may touch the rows at once). A failure
     * before any row was written returns a status and the caller moves the
     * rows on the host; a device fault midway leaves them undefined (and the
     * device unusable). Offsets carry no alignment promise. */
    lethe_status (*buffer_move_rows)(lethe_buffer *buf, const lethe_row_move *moves, size_t n,
                                     size_t row_bytes);
} lethe_backend_iface;

struct lethe_device_share {
    int users;               /* backends on the device now, `be` included     */
    size_t n_weights;        /* weights of the range in the device's cache    */
    size_t weight_bytes;     /* their bytes on the device (each counted once) */
    uint64_t uploads;        /* weights uploaded since the device was created  */
};

/* Device weight caches are keyed by host address and outlive any one
 * context: whoever frees host memory that graphs used as weights (a model's
 * tensors: lethe_model_free) calls this first, so that every live device
 * drops its copies of bytes in [lo, lo + size) and a later allocation at the
 * same address is uploaded afresh, never served stale. No backend may have
 * work in flight that reads those copies (their contexts are gone). */
void lethe_backends_forget(const void *lo, size_t size);
void lethe_backend_vulkan_forget(const void *lo, size_t size);
void lethe_backend_cuda_forget(const void *lo, size_t size);

struct lethe_backend {
    const lethe_backend_iface *iface;
    void *ctx;               /* backend's own state */
};

/* The CPU backend (backends/cpu): n_threads <= 0 means all cores. */
lethe_backend *lethe_backend_cpu_new(int n_threads);
int lethe_backend_cpu_n_threads(lethe_backend *be);

/* The Vulkan backend (backends/vulkan): device index N counts discrete GPUs
 * first, then integrated, virtual and CPU devices (lavapipe); the
 * environment variable LETHE_VK_DEVICE, when set, overrides `device`.
 * Returns NULL with lethe_last_error() set when there is no driver, no such
 * device, or the build has no Vulkan (core/backend_registry.c). */
lethe_backend *lethe_backend_vulkan_new(int device);
/* Device time of the backend's last compute() in ms (timestamps; 0 if none). */
double lethe_backend_vulkan_last_ms(lethe_backend *be);
/* Whether the backend's pipelines use the driver's fma() (shaders/exact.glsl
 * NATIVE_FMA: 1, decided at creation by the fma probe or LETHE_VK_NATIVE_FMA,
 * backends/vulkan/vk_probe.c) or the exact emulation (0); -1 if `be` is not
 * a Vulkan backend. */
int lethe_backend_vulkan_native_fma(lethe_backend *be);

/* The device's memory bandwidth through `be`'s buffer_copy (core/bandwidth.c):
 * a warm-up, then the best of `reps` copies of `bytes`, read + write counted.
 * Timed by the backend's device_ms where it reports the copy, else by the
 * host clock around copy + synchronize; out->method says which.
 * LETHE_ERR_UNSUPPORTED when the backend has no buffer_copy. */
lethe_status lethe_backend_measure_copy(lethe_backend *be, size_t bytes, int reps, lethe_bandwidth *out);

/* The CUDA backend (backends/cuda, the module liblethe-cuda.so): device N
 * of the driver's order; LETHE_CUDA_DEVICE, when set, overrides `device`.
 * NULL with lethe_last_error() set when the build has no CUDA, the machine
 * has no NVIDIA driver (libcuda.so.1 is probed before the module loads), or
 * there is no such device (core/backend_cuda.c). */
lethe_backend *lethe_backend_cuda_new(int device);

/* A GPU backend by name ("vulkan", "cuda"; "auto": CUDA, else Vulkan), NULL with an error if it is not
 * built in or cannot start. The engine falls back to the CPU then. */
lethe_backend *lethe_backend_gpu_new(const char *name, int device);

#endif
