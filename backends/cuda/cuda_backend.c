/* cuda_backend.c — the CUDA backend module: entry point, the devices shared
 * by its backends, buffers, weights uploaded once per device, per-compute
 * uploads. See cuda_internal.h
 * for the memory model; cuda_ops.c runs the nodes.
 */
#include "cuda_internal.h"
#include "cuda_kv_move.h"
#include "cuda_plist.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const lethe_module_host *g_cu_host;

size_t lethe_cu_align(size_t x) { return (x + CU_ALIGN - 1) / CU_ALIGN * CU_ALIGN; }

/* ------------------------------------------------------------- weights */

static void drop_weight(void *dev, size_t size, void *user) {
    (void)size;
    (void)user;
    cudaFree(dev);
}

/* The device's copy of a weight, uploaded by whichever backend asks first
 * (the others wait on the lock, then find it). The copy is complete before
 * the pointer is published: it runs on the uploader's stream, which is
 * synchronized under the lock. A plain cudaMemcpy would not do: from pageable
 * memory it may return before the last DMA reached the device, ordered only
 * against the legacy default stream, and every backend's stream is
 * non-blocking (not ordered with the legacy stream), this backend's own
 * included. The pointer stays valid
 * until its host range is forgotten (its model is freed: no backend
 * launches on it any more) or the device goes; a larger view of the same
 * address gets a new copy and the old one is retired, not freed
 * (cuda_weights.h). */
lethe_status lethe_cu_weight(cu_ctx *c, const void *host, size_t size, void **dev) {
    cu_dev *d = c->dev;
    lethe_status st = LETHE_OK;
    pthread_mutex_lock(&d->mu);
    const cu_weight *w = cu_wcache_find(&d->weights, host);
    if (w && w->size >= size) {
        *dev = w->dev;
        goto out;
    }
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, size ? size : 1);
    if (e == cudaSuccess) e = cudaMemcpyAsync(p, host, size, cudaMemcpyHostToDevice, c->stream);
    if (e == cudaSuccess) e = cudaStreamSynchronize(c->stream);
    if (e != cudaSuccess) {
        if (p) cudaFree(p);
        st = CU_FAIL(e == cudaErrorMemoryAllocation ? LETHE_ERR_OOM : LETHE_ERR_BACKEND,
                     "cuda: upload of a %zu-byte weight: %s (%s)", size, cudaGetErrorString(e), cudaGetErrorName(e));
        goto out;
    }
    if (cu_wcache_put(&d->weights, host, size, p) != 0) {
        cudaFree(p);
        st = CU_FAIL(LETHE_ERR_OOM, "cuda: weight table");
        goto out;
    }
    *dev = p;
out:
    pthread_mutex_unlock(&d->mu);
    return st;
}

/* ------------------------------------------------------------- uploads */

lethe_status lethe_cu_upload_reserve(cu_ctx *c, size_t need) {
    if (need <= c->up_cap) return LETHE_OK;
    size_t cap = lethe_cu_align(need + need / 2 + 4096);
    CU_CHECK(cudaStreamSynchronize(c->stream), "cudaStreamSynchronize");
    cudaFreeHost(c->up_host);
    cudaFree(c->up_dev);
    c->up_host = NULL;
    c->up_dev = NULL;
    c->up_cap = 0;
    CU_CHECK(cudaMallocHost((void **)&c->up_host, cap), "cudaMallocHost (staging)");
    CU_CHECK(cudaMalloc((void **)&c->up_dev, cap), "cudaMalloc (upload buffer)");
    c->up_cap = cap;
    return LETHE_OK;
}

lethe_status lethe_cu_scratch(cu_ctx *c, size_t need, void **out) {
    if (need > c->scratch_cap) {
        CU_CHECK(cudaStreamSynchronize(c->stream), "cudaStreamSynchronize");
        cudaFree(c->scratch);
        c->scratch = NULL;
        c->scratch_cap = 0;
        CU_CHECK(cudaMalloc(&c->scratch, need), "cudaMalloc (scratch)");
        c->scratch_cap = need;
    }
    *out = c->scratch;
    return LETHE_OK;
}

/* ------------------------------------------------------------- buffers */

static lethe_status cu_buffer_alloc(lethe_backend *be, size_t size, lethe_buffer **out) {
    cu_ctx *c = be->ctx;
    *out = NULL;
    CU_CHECK(cudaSetDevice(c->device), "cudaSetDevice");
    lethe_buffer *b = calloc(1, sizeof *b);
    if (!b) return CU_FAIL(LETHE_ERR_OOM, "cuda: buffer");
    cudaError_t e = cudaMalloc(&b->impl, size ? size : 1);
    if (e != cudaSuccess) {
        free(b);
        return CU_FAIL(LETHE_ERR_OOM, "cuda: cudaMalloc of %zu bytes: %s", size, cudaGetErrorString(e));
    }
    b->backend = be;
    b->size = size;
    *out = b;
    return LETHE_OK;
}

/* Shared buffers (the KV cache: kv_cache.h, lethe_kv_init's `mem`) are
 * CUDA managed memory: one address valid on the host and the device, so the
 * host's bookkeeping (reserve writes pos/expire of new slots, commit marks
 * holes, compaction moves rows, fork copies pages, state save/load) works
 * on plain pointers while the kernels store and attend in place.
 *
 * Why managed and not the alternatives: mapped pinned host memory would
 * make attention read every K/V row over PCIe (~50 GB/s against ~4 TB/s of
 * HBM); a device pool with a host mirror needs the cache to report every
 * write (the hook proposed in docs/CUDA.md). Managed memory keeps kv_cache.c
 * unchanged and lets placement advice put each part where its traffic is:
 *   - the pool (K/V rows, ~99% of the bytes) prefers the GPU, and is
 *     prefetched there at allocation: physical pages are taken now, so the
 *     weights uploaded later fail cleanly with OOM instead of the GPU
 *     oversubscribing managed memory (which the device machines' rules
 *     forbid: it can hang the GPU). The GPU is deliberately NOT given a
 *     standing mapping (AccessedBy) of the pool: a page the host touched
 *     (compaction, fork, state save/load, a CPU fallback op) migrates to host
 *     memory, and the next kernel that touches it faults it back to its
 *     preferred place, the GPU, instead of reading it over the bus forever.
 *     Correct always; slow only where the host really touches rows (once
 *     per fork; rare in decode, where DMS reuses holes in place).
 *   - pos / expire (8 bytes per slot) are written by the host every step
 *     (one slot per stream per token) and read by every attention kernel.
 *     Default (lethe_cu_kv_advise, at the first KV op): they prefer host
 *     memory and the GPU maps them (AccessedBy), so host writes are local
 *     and the kernels read them over the bus with no page faults and no
 *     ping-pong migration. LETHE_CUDA_KV_META=device leaves them on the GPU
 *     like the pool (the driver then migrates the pages the host writes each
 *     step): which is faster at depth is for the GPU benchmark to say.
 * Coherence: kernels run on the backend's stream and compute() synchronizes
 * it before returning, so the host may touch the cache only between
 * compute() calls (where kv_cache.c does: reserve before the graph, settle
 * and commit after), never while a node range is in flight. KV_STORE's DMS
 * flags (device writes to expire) are visible to the host's settle/commit
 * after that synchronization. Devices without concurrent managed access
 * (where any host access while a kernel runs is a fault), requests larger
 * than the device's free memory less a margin, a buffer whose prefetch to
 * the device fails, and LETHE_CUDA_NO_SHARED are refused: the cache then
 * stays in host memory and its ops run on the CPU. */
static lethe_status cu_buffer_alloc_shared(lethe_backend *be, size_t size, lethe_buffer **out) {
    cu_ctx *c = be->ctx;
    *out = NULL;
    if (!c->managed_ok) {
        CU_LOG(LETHE_LOG_WARN, "cuda: no shared KV memory on device %d (no concurrent managed access, or "
               "LETHE_CUDA_NO_SHARED): KV_STORE/ATTENTION run on the CPU", c->device);
        return CU_FAIL(LETHE_ERR_UNSUPPORTED, "cuda: device %d has no concurrent managed access", c->device);
    }
    CU_CHECK(cudaSetDevice(c->device), "cudaSetDevice");
    size_t fr = 0, tot = 0;
    CU_CHECK(cudaMemGetInfo(&fr, &tot), "cudaMemGetInfo");
    const size_t margin = (size_t)1 << 30 > fr / 10 ? (size_t)1 << 30 : fr / 10;   /* weights come later */
    if (size > fr || fr - size < margin) {
        CU_LOG(LETHE_LOG_WARN, "cuda: a KV cache of %zu MiB does not fit the %zu MiB free (less a margin): it stays "
               "in host memory, KV_STORE/ATTENTION run on the CPU", size >> 20, fr >> 20);
        return CU_FAIL(LETHE_ERR_OOM, "cuda: a shared KV buffer of %zu MiB does not fit the %zu MiB free", size >> 20,
                       fr >> 20);
    }
    lethe_buffer *b = calloc(1, sizeof *b);
    if (!b) return CU_FAIL(LETHE_ERR_OOM, "cuda: buffer");
    cudaError_t e = cudaMallocManaged(&b->impl, size ? size : 1, cudaMemAttachGlobal);
    if (e != cudaSuccess) {
        free(b);
        return CU_FAIL(LETHE_ERR_OOM, "cuda: cudaMallocManaged of %zu bytes: %s", size, cudaGetErrorString(e));
    }
    const struct cudaMemLocation dev = {cudaMemLocationTypeDevice, c->device};
    if ((e = cudaMemAdvise(b->impl, size, cudaMemAdviseSetPreferredLocation, dev)) != cudaSuccess) {
        CU_LOG(LETHE_LOG_WARN, "cuda: placement advice for the KV buffer failed (%s); it still works, maybe slower",
               cudaGetErrorString(e));
        cudaGetLastError();
    }
    /* The prefetch is what takes the physical pages now. Without it the
     * buffer is backed only as kernels touch it, after the weights took
     * their memory: managed oversubscription, which can hang the GPU (the
     * comment above). So a failed prefetch refuses the buffer. */
    if ((e = cudaMemPrefetchAsync(b->impl, size, dev, 0, c->stream)) != cudaSuccess ||
        (e = cudaStreamSynchronize(c->stream)) != cudaSuccess) {
        cudaGetLastError();
        cudaFree(b->impl);
        free(b);
        CU_LOG(LETHE_LOG_WARN, "cuda: the KV buffer could not be placed on the device (%s): it stays in host memory, "
               "KV_STORE/ATTENTION run on the CPU", cudaGetErrorString(e));
        return CU_FAIL(LETHE_ERR_BACKEND, "cuda: prefetch of the shared KV buffer failed: %s", cudaGetErrorString(e));
    }
    b->backend = be;
    b->size = size;
    b->host_ptr = b->impl;
    *out = b;
    CU_LOG(LETHE_LOG_INFO, "cuda: KV cache in managed memory, %.1f MiB (metadata on the %s)", (double)size / (1 << 20),
           c->meta_on_device ? "device" : "host, mapped");
    return LETHE_OK;
}

lethe_status lethe_cu_kv_advise(cu_ctx *c, const lethe_buffer *buf, size_t meta_begin, size_t meta_end) {
    for (int i = 0; i < c->n_advised; i++)
        if (c->advised[i] == buf->impl) return LETHE_OK;
    if (!c->meta_on_device && meta_end > meta_begin && meta_end <= buf->size) {
        const struct cudaMemLocation host = {cudaMemLocationTypeHost, 0};
        const struct cudaMemLocation dev = {cudaMemLocationTypeDevice, c->device};
        const void *p = (const uint8_t *)buf->impl + meta_begin;
        cudaError_t e = cudaMemAdvise(p, meta_end - meta_begin, cudaMemAdviseSetPreferredLocation, host);
        if (e == cudaSuccess) e = cudaMemAdvise(p, meta_end - meta_begin, cudaMemAdviseSetAccessedBy, dev);
        if (e != cudaSuccess) {
            CU_LOG(LETHE_LOG_WARN, "cuda: advice for the KV metadata failed (%s)", cudaGetErrorString(e));
            cudaGetLastError();
        }
    }
    if (c->n_advised < (int)(sizeof c->advised / sizeof c->advised[0])) c->advised[c->n_advised++] = buf->impl;
    return LETHE_OK;
}

/* The host is done with pages of the managed KV buffer (backend.h): a fork
 * copied them, a compaction moved rows, a state load wrote them. Reading or
 * writing them migrated them to host memory; without this the next
 * compute's kernels would fault them back one by one (a fork at depth:
 * gigabytes, inside the first timed decode step). One bulk prefetch to the
 * device, waited for here, where the host operation is synchronous anyway. */
static lethe_status cu_buffer_host_done(lethe_buffer *buf, size_t offs, size_t size) {
    cu_ctx *c = buf->backend->ctx;
    if (!buf->host_ptr || !size || offs > buf->size || size > buf->size - offs) return LETHE_OK;   /* not managed */
    if (cudaSetDevice(c->device) != cudaSuccess) {
        cudaGetLastError();
        return LETHE_OK;
    }
    const struct cudaMemLocation dev = {cudaMemLocationTypeDevice, c->device};
    cudaError_t e = cudaMemPrefetchAsync((uint8_t *)buf->impl + offs, size, dev, 0, c->stream);
    if (e == cudaSuccess) e = cudaStreamSynchronize(c->stream);
    if (e != cudaSuccess) {   /* only slower: the kernels fault the pages in */
        CU_LOG(LETHE_LOG_WARN, "cuda: prefetch of %zu KV bytes back to the device failed (%s)", size,
               cudaGetErrorString(e));
        cudaGetLastError();
    }
    return LETHE_OK;
}

/* KV row moves on the device (backend.h buffer_move_rows; kernels and why
 * two phases: cuda_kv_move.h). The managed pool lives on the GPU, so moving
 * rows on the host would fault its pages over to the host and back
 * (buffer_host_done). Chunks of C moves: the pairs uploaded into the compute
 * scratch (idle between compute() calls), the rows gathered behind them,
 * then scattered. Synchronized before returning: the host's next look at
 * the rows (state save, a CPU fallback op) sees them moved. Checks and the
 * scratch come first, so a refusal moves nothing (the cache then moves the
 * rows on the host); an error once a chunk was launched is a device fault
 * (sticky: the context's next compute fails with it too) and leaves the
 * rows undefined. */
static lethe_status cu_buffer_move_rows(lethe_buffer *buf, const lethe_row_move *moves, size_t n, size_t row_bytes) {
    cu_ctx *c = buf->backend->ctx;
    if (!n) return LETHE_OK;
    if (!row_bytes || !buf->host_ptr)
        return CU_FAIL(LETHE_ERR_INVALID_ARG, "cuda: row moves of %zu bytes in a buffer that is not shared", row_bytes);
    size_t bits = (size_t)(uintptr_t)buf->impl | row_bytes;
    for (size_t i = 0; i < n; i++) {
        if (moves[i].src > buf->size || row_bytes > buf->size - moves[i].src || moves[i].dst > buf->size ||
            row_bytes > buf->size - moves[i].dst)
            return CU_FAIL(LETHE_ERR_INVALID_ARG, "cuda: row move %zu (%zu -> %zu, %zu bytes) past a buffer of %zu", i,
                           moves[i].src, moves[i].dst, row_bytes, buf->size);
        bits |= moves[i].src | moves[i].dst;
    }
    const int wb = cu_move_word_bytes(bits);
    const size_t chunk = n < cu_move_chunk_rows(row_bytes) ? n : cu_move_chunk_rows(row_bytes);
    const size_t mv_bytes = lethe_cu_align(chunk * sizeof *moves);
    CU_CHECK(cudaSetDevice(c->device), "cudaSetDevice");
    void *scr;
    lethe_status st = lethe_cu_scratch(c, mv_bytes + chunk * row_bytes, &scr);
    if (st != LETHE_OK) return st;
    for (size_t b = 0; b < n; b += chunk) {
        const size_t m = n - b < chunk ? n - b : chunk;
        CU_CHECK(cudaMemcpyAsync(scr, moves + b, m * sizeof *moves, cudaMemcpyHostToDevice, c->stream),
                 "cudaMemcpyAsync (row moves)");
        CU_CHECK(lethe_cu_move_rows(buf->impl, (const size_t *)scr, (int64_t)m, row_bytes, wb, (uint8_t *)scr + mv_bytes,
                                    c->stream),
                 "row move kernels");
    }
    CU_CHECK(cudaStreamSynchronize(c->stream), "cudaStreamSynchronize (row moves)");
    return LETHE_OK;
}
_Static_assert(sizeof(lethe_row_move) == 2 * sizeof(size_t), "the kernels read moves as {src, dst} size_t pairs");

static void cu_buffer_free(lethe_buffer *buf) {
    if (!buf) return;
    cu_ctx *c = buf->backend ? buf->backend->ctx : NULL;
    for (int i = 0; c && i < c->n_advised; i++)
        if (c->advised[i] == buf->impl) c->advised[i] = c->advised[--c->n_advised];
    if (c && buf->host_ptr) lethe_cu_plist_drop(c, buf);   /* a KV cache's buffer: its page-list mirror goes */
    cudaFree(buf->impl);   /* managed or not; waits for work using it */
    free(buf);
}

/* Device-to-device copy on the stream (synchronize() waits): what
 * `lethe bench --roofline` times as the device's memory bandwidth. */
static lethe_status cu_buffer_copy(lethe_buffer *dst, size_t dst_offs, lethe_buffer *src, size_t src_offs,
                                   size_t size) {
    cu_ctx *c = dst->backend->ctx;
    if (src->backend != dst->backend)
        return CU_FAIL(LETHE_ERR_INVALID_ARG, "cuda: buffer_copy between two backends");
    if (dst_offs > dst->size || size > dst->size - dst_offs || src_offs > src->size || size > src->size - src_offs)
        return CU_FAIL(LETHE_ERR_INVALID_ARG, "cuda: copy of %zu bytes past a buffer (%zu at %zu -> %zu at %zu)", size,
                       src->size, src_offs, dst->size, dst_offs);
    CU_CHECK(cudaSetDevice(c->device), "cudaSetDevice");
    lethe_cu_clock_begin(c);
    CU_CHECK(cudaMemcpyAsync((uint8_t *)dst->impl + dst_offs, (const uint8_t *)src->impl + src_offs, size,
                             cudaMemcpyDefault, c->stream), "cudaMemcpyAsync (buffer_copy)");
    lethe_cu_clock_end(c);
    return LETHE_OK;
}

static lethe_status cu_buffer_set(lethe_buffer *buf, size_t offs, const void *src, size_t size) {
    cu_ctx *c = buf->backend->ctx;
    if (offs > buf->size || size > buf->size - offs)
        return CU_FAIL(LETHE_ERR_INVALID_ARG, "cuda: write of %zu bytes at %zu past a buffer of %zu", size, offs,
                       buf->size);
    CU_CHECK(cudaSetDevice(c->device), "cudaSetDevice");
    CU_CHECK(cudaMemcpyAsync((uint8_t *)buf->impl + offs, src, size, cudaMemcpyDefault, c->stream),
             "cudaMemcpyAsync (buffer_set)");
    CU_CHECK(cudaStreamSynchronize(c->stream), "cudaStreamSynchronize");
    return LETHE_OK;
}

static lethe_status cu_buffer_get(lethe_buffer *buf, size_t offs, void *dst, size_t size) {
    cu_ctx *c = buf->backend->ctx;
    if (offs > buf->size || size > buf->size - offs)
        return CU_FAIL(LETHE_ERR_INVALID_ARG, "cuda: read of %zu bytes at %zu past a buffer of %zu", size, offs,
                       buf->size);
    CU_CHECK(cudaSetDevice(c->device), "cudaSetDevice");
    CU_CHECK(cudaMemcpyAsync(dst, (const uint8_t *)buf->impl + offs, size, cudaMemcpyDefault, c->stream),
             "cudaMemcpyAsync (buffer_get)");
    CU_CHECK(cudaStreamSynchronize(c->stream), "cudaStreamSynchronize");
    return LETHE_OK;
}

static lethe_status cu_synchronize(lethe_backend *be) {
    cu_ctx *c = be->ctx;
    CU_CHECK(cudaSetDevice(c->device), "cudaSetDevice");
    CU_CHECK(cudaStreamSynchronize(c->stream), "cudaStreamSynchronize");
    lethe_cu_clock_collect(c);
    return LETHE_OK;
}

/* ---------------------------------------------------------- device clock */

/* CUDA events on the backend's stream, so `lethe bench` sees the device's
 * own time (host submission and gaps left out) and the roofline copy is not
 * timed by the host's submit + wait. Failures only lose the clock. */
void lethe_cu_clock_begin(cu_ctx *c) {
    if (!c->ev_begin || c->ev_open) return;
    c->ev_open = cudaEventRecord(c->ev_begin, c->stream) == cudaSuccess;
}

void lethe_cu_clock_end(cu_ctx *c) {
    if (c->ev_open && cudaEventRecord(c->ev_end, c->stream) != cudaSuccess) c->ev_open = false;
}

void lethe_cu_clock_collect(cu_ctx *c) {
    if (!c->ev_open) return;
    c->ev_open = false;
    float ms = 0.0f;
    if (cudaEventElapsedTime(&ms, c->ev_begin, c->ev_end) == cudaSuccess && ms > 0.0f) c->device_ms += ms;
    else cudaGetLastError();   /* not sticky: clear it so it is not blamed on the next launch */
}

static double cu_device_ms(lethe_backend *be) { return ((cu_ctx *)be->ctx)->device_ms; }

static size_t cu_scratch_bytes(lethe_backend *be, const lethe_graph *g, int begin, int end) {
    const cu_ctx *c = be->ctx;
    size_t s = c->scratch_cap;
    if (g)
        for (int i = begin; i < end; i++) {
            size_t need = lethe_cu_scratch_need(c, &g->nodes[i]);
            s = need > s ? need : s;
        }
    return s + c->up_cap + lethe_cu_plist_device_bytes(c);
}

/* ---------------------------------------------------------------- life */

/* The process's devices, one per index. The lock guards the list and
 * every users count. Lock order: registry, then a device's mu. */
static pthread_mutex_t g_devs_mu = PTHREAD_MUTEX_INITIALIZER;
static cu_dev *g_devs;

static cu_dev *dev_acquire(int device) {
    pthread_mutex_lock(&g_devs_mu);
    cu_dev *d = g_devs;
    while (d && d->device != device) d = d->next;
    if (!d && (d = calloc(1, sizeof *d)) != NULL) {
        d->device = device;
        pthread_mutex_init(&d->mu, NULL);
        d->next = g_devs;
        g_devs = d;
    }
    if (d) d->users++;
    pthread_mutex_unlock(&g_devs_mu);
    return d;
}

/* The last backend frees the device's weights (on the calling thread's
 * device, which cu_free has set). */
static void dev_release(cu_dev *d) {
    pthread_mutex_lock(&g_devs_mu);
    const bool last = --d->users == 0;
    if (last)
        for (cu_dev **p = &g_devs; *p; p = &(*p)->next)
            if (*p == d) { *p = d->next; break; }
    pthread_mutex_unlock(&g_devs_mu);
    if (!last) return;
    cu_wcache_free(&d->weights, drop_weight, NULL);
    pthread_mutex_destroy(&d->mu);
    free(d);
}

/* lethe_backends_forget (backend.h) through the module: every device drops
 * its copies of [lo, lo + size). cudaFree waits for work using them; their
 * contexts are gone by contract. The caller's current device is kept. */
static void cu_forget(const void *lo, size_t size) {
    int cur = -1;
    if (cudaGetDevice(&cur) != cudaSuccess) cudaGetLastError();
    pthread_mutex_lock(&g_devs_mu);
    for (cu_dev *d = g_devs; d; d = d->next) {
        if (cudaSetDevice(d->device) != cudaSuccess) cudaGetLastError();
        pthread_mutex_lock(&d->mu);
        cu_wcache_forget(&d->weights, lo, size, drop_weight, NULL);
        pthread_mutex_unlock(&d->mu);
    }
    pthread_mutex_unlock(&g_devs_mu);
    if (cur >= 0 && cudaSetDevice(cur) != cudaSuccess) cudaGetLastError();
}

static void cu_device_share(lethe_backend *be, const void *lo, size_t size, lethe_device_share *out) {
    cu_dev *d = ((cu_ctx *)be->ctx)->dev;
    memset(out, 0, sizeof *out);
    pthread_mutex_lock(&g_devs_mu);
    out->users = d->users;
    pthread_mutex_unlock(&g_devs_mu);
    pthread_mutex_lock(&d->mu);
    cu_wcache_count(&d->weights, lo, size, &out->n_weights, &out->weight_bytes);
    out->uploads = d->weights.uploads;
    pthread_mutex_unlock(&d->mu);
}

static void cu_free(lethe_backend *be) {
    if (!be) return;
    cu_ctx *c = be->ctx;
    if (c) {
        cudaSetDevice(c->device);
        if (c->stream) cudaStreamSynchronize(c->stream);
        lethe_cu_graph_free(c);
        lethe_cu_plist_drop(c, NULL);
        cudaFreeHost(c->up_host);
        cudaFree(c->up_dev);
        cudaFree(c->scratch);
        cudaFree(c->d_err);
        if (c->blas) cublasDestroy(c->blas);
        if (c->ev_begin) cudaEventDestroy(c->ev_begin);
        if (c->ev_end) cudaEventDestroy(c->ev_end);
        if (c->stream) cudaStreamDestroy(c->stream);
        if (c->dev) dev_release(c->dev);
        free(c);
    }
    free(be);
}

static void cu_get_info(lethe_backend *be, lethe_backend_info *info) {
    cu_ctx *c = be->ctx;
    memset(info, 0, sizeof *info);
    info->name = "cuda";
    snprintf(info->device_name, sizeof info->device_name, "%s", c->name);
    size_t fr = 0, tot = 0;
    if (cudaSetDevice(c->device) == cudaSuccess && cudaMemGetInfo(&fr, &tot) == cudaSuccess) {
        info->mem_free = fr;
        info->mem_total = tot;
    }
}

static const lethe_backend_iface k_iface = {
    .free = cu_free,
    .get_info = cu_get_info,
    .buffer_alloc = cu_buffer_alloc,
    .buffer_free = cu_buffer_free,
    .buffer_set = cu_buffer_set,
    .buffer_get = cu_buffer_get,
    .supports_op = lethe_cu_supports_op,
    .compute = lethe_cu_compute,
    .synchronize = cu_synchronize,
    .scratch_bytes = cu_scratch_bytes,
    .buffer_copy = cu_buffer_copy,
    .device_ms = cu_device_ms,
    .buffer_alloc_shared = cu_buffer_alloc_shared,
    .buffer_host_done = cu_buffer_host_done,
    .device_share = cu_device_share,
    .buffer_move_rows = cu_buffer_move_rows,
};

static int cu_device_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();   /* clear the sticky "no driver" error */
        return 0;
    }
    return n;
}

static lethe_backend *cu_create(int device, lethe_status *status) {
    lethe_status st = LETHE_OK;
    lethe_backend *be = NULL;
    int n = cu_device_count();
    if (device < 0 || device >= n) {
        st = CU_FAIL(LETHE_ERR_BACKEND, "cuda: no device %d (%d CUDA device%s found)", device, n, n == 1 ? "" : "s");
        goto out;
    }
    be = calloc(1, sizeof *be);
    cu_ctx *c = calloc(1, sizeof *c);
    if (!be || !c) {
        free(c);
        st = CU_FAIL(LETHE_ERR_OOM, "cuda: backend");
        goto out;
    }
    be->iface = &k_iface;
    be->ctx = c;
    c->device = device;
    struct cudaDeviceProp prop;
    cudaError_t e;
    if ((e = cudaSetDevice(device)) != cudaSuccess || (e = cudaGetDeviceProperties(&prop, device)) != cudaSuccess ||
        (e = cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking)) != cudaSuccess ||
        (e = cudaMalloc((void **)&c->d_err, sizeof(int))) != cudaSuccess) {
        st = CU_FAIL(LETHE_ERR_BACKEND, "cuda: device %d: %s", device, cudaGetErrorString(e));
        goto out;
    }
    if (prop.major < 8) {
        st = CU_FAIL(LETHE_ERR_UNSUPPORTED, "cuda: device %d (%s) is sm_%d%d; this build needs sm_80 or newer",
                     device, prop.name, prop.major, prop.minor);
        goto out;
    }
    snprintf(c->name, sizeof c->name, "%.127s", prop.name);
    int cma = 0, mm = 0;
    cudaDeviceGetAttribute(&mm, cudaDevAttrManagedMemory, device);
    cudaDeviceGetAttribute(&cma, cudaDevAttrConcurrentManagedAccess, device);
    cudaGetLastError();
    c->managed_ok = mm && cma && !getenv("LETHE_CUDA_NO_SHARED");
    const char *meta = getenv("LETHE_CUDA_KV_META");
    c->meta_on_device = meta && !strcmp(meta, "device");
    /* CUDA graphs for decode steps: off by default until a GPU run has
     * checked them against the plain launches (docs/CUDA.md) */
    const char *graphs = getenv("LETHE_CUDA_GRAPHS");
    c->graphs = graphs && !strcmp(graphs, "1");
    /* the decode GEMV (k_gemv.cu): "old" the first kernel, "wide" 2 lanes per row (comparisons) */
    /* device-resident page lists (cuda_plist.h): "staged" stages them every step, as before */
    const char *plists = getenv("LETHE_CUDA_PLISTS");
    c->plists = !(plists && !strcmp(plists, "staged"));
    c->plist_check = cu_plist_check_env();
    const char *gemv = getenv("LETHE_CUDA_GEMV");
    c->gemv_variant = !gemv ? LETHE_CU_GEMV_NEW : !strcmp(gemv, "old") ? LETHE_CU_GEMV_OLD
                    : !strcmp(gemv, "wide") ? LETHE_CU_GEMV_WIDE : LETHE_CU_GEMV_NEW;
    /* prefill attention: the tensor-core kernel where it applies (k_attn_tc.cu), or "f32": the tiled
     * f32 kernel always (comparisons; every device this module runs on is sm_80+, so mma.sync is there) */
    const char *pa = getenv("LETHE_CUDA_PREFILL_ATTN");
    c->prefill_tc = !(pa && !strcmp(pa, "f32"));
    if (pa && strcmp(pa, "f32") && strcmp(pa, "tc"))
        CU_LOG(LETHE_LOG_WARN, "cuda: LETHE_CUDA_PREFILL_ATTN=%s is neither tc nor f32: tc", pa);
    /* fused decode passes (ADD + RMS_NORM, norm / swiglu -> the GEMVs' q8 blocks): "0" turns them off */
    const char *fuse = getenv("LETHE_CUDA_FUSE");
    c->fuse = !(fuse && !strcmp(fuse, "0"));
    if (cudaEventCreate(&c->ev_begin) != cudaSuccess || cudaEventCreate(&c->ev_end) != cudaSuccess) {
        if (c->ev_begin) cudaEventDestroy(c->ev_begin);
        c->ev_begin = c->ev_end = NULL;   /* no device clock: bench falls back to the host's */
        cudaGetLastError();
    }
    if (!(c->dev = dev_acquire(device))) {
        st = CU_FAIL(LETHE_ERR_OOM, "cuda: device %d", device);
        goto out;
    }
    c->sm_count = prop.multiProcessorCount;
    c->l2_bytes = (size_t)prop.l2CacheSize;
    cublasStatus_t bs = cublasCreate(&c->blas);
    if (bs != CUBLAS_STATUS_SUCCESS) {
        c->blas = NULL;
        st = CU_FAIL(LETHE_ERR_BACKEND, "cuda: cublasCreate failed (%d)", (int)bs);
        goto out;
    }
    cublasSetStream(c->blas, c->stream);
    CU_LOG(LETHE_LOG_INFO, "cuda: device %d: %s, sm_%d%d, %d SMs, %.1f GiB%s", device, prop.name, prop.major,
           prop.minor, prop.multiProcessorCount, (double)prop.totalGlobalMem / (1u << 30),
           c->graphs ? ", decode steps as CUDA graphs" : "");
out:
    if (st != LETHE_OK) {
        cu_free(be);
        be = NULL;
    }
    if (status) *status = st;
    return be;
}

/* "cuda-emu" when built on the CPU emulator of the device (cmake/cuda_emu.cmake) */
#ifndef LETHE_CUDA_MODULE_NAME
#define LETHE_CUDA_MODULE_NAME "cuda"
#endif
static const lethe_backend_module k_module = {LETHE_BACKEND_MODULE_ABI, LETHE_CUDA_MODULE_NAME, cu_device_count, cu_create,
                                              cu_forget};

__attribute__((visibility("default"))) const lethe_backend_module *lethe_backend_module_entry(const lethe_module_host *host) {
    if (!host || host->abi != LETHE_BACKEND_MODULE_ABI) return NULL;
    g_cu_host = host;
    return &k_module;
}
