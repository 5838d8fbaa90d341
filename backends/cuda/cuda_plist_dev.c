/* cuda_plist_dev.c — the device side of the page-list mirrors
 * (cuda_plist.h): one per KV cache the backend attends over, found by the
 * cache's uid, its arena a cudaMalloc of int32 page ids; the pending upload
 * of each compute enqueued before the plan's own staging copy, through the
 * pinned pl_host (a full upload: one copy into the arena; else one copy of
 * the runs and pairs into pl_dev, a move launch and a scatter launch), on
 * the backend's stream, so the kernels of the plan
 * (or its replayed graph) that follow see the lists of this step.
 *
 * Why the stream is idle whenever an arena or pl_* buffer is freed or
 * reallocated: the plan (and its syncs) is built at the start of compute(),
 * and every compute() ends with a stream synchronization; buffer_free of the
 * cache's buffer runs outside compute. */
#include "cuda_internal.h"
#include "cuda_plan.h"
#include "cuda_plist.h"

#include <stdlib.h>
#include <string.h>

static void mirror_free(cu_plist_mirror *m) {
    if (!m) return;
    if (m->dev) cudaFree((void *)(uintptr_t)m->dev);
    cu_plist_free(m);
    free(m);
}

/* cu_plist_alloc_fn: a larger arena, the old one copied into it on the
 * device (nothing crosses the bus), then freed (the stream is idle: above;
 * synchronized after the copy so cudaFree never races it). */
static int arena_alloc(void *user, cu_plist_mirror *m, size_t entries, uint64_t *dev) {
    cu_ctx *c = user;
    void *old = (void *)(uintptr_t)m->dev, *p = NULL;
    cudaError_t e = cudaMalloc(&p, entries * sizeof(int32_t));
    if (e == cudaSuccess && old && m->dev_cap)
        e = cudaMemcpyAsync(p, old, (size_t)m->dev_cap * sizeof(int32_t), cudaMemcpyDeviceToDevice, c->stream);
    if (e == cudaSuccess && old) e = cudaStreamSynchronize(c->stream);
    if (old) cudaFree(old);
    m->dev = 0;
    if (e != cudaSuccess) {
        cudaGetLastError();
        if (p) cudaFree(p);
        return LETHE_ERR_OOM;
    }
    *dev = (uint64_t)(uintptr_t)p;
    return LETHE_OK;
}

int lethe_cu_plist_env(void *user, const lethe_kv_cache *kv, cu_plist_mirror **out) {
    lethe_backend *be = user;
    cu_ctx *c = be->ctx;
    *out = NULL;
    if (!c->plists) return LETHE_OK;
    int slot = -1;
    for (int i = 0; i < CU_PLIST_SLOTS && slot < 0; i++)
        if (c->plm[i] && c->plm[i]->kv_uid == kv->uid) slot = i;
    if (slot < 0) {   /* an empty slot, else the least recently used mirror goes */
        for (int i = 0; i < CU_PLIST_SLOTS && slot < 0; i++)
            if (!c->plm[i]) slot = i;
        if (slot < 0) {
            slot = 0;
            for (int i = 1; i < CU_PLIST_SLOTS; i++)
                if (c->plm_used[i] < c->plm_used[slot]) slot = i;
            mirror_free(c->plm[slot]);
            c->plm[slot] = NULL;
        }
        if (!(c->plm[slot] = calloc(1, sizeof *c->plm[slot]))) return LETHE_OK;   /* staged */
    }
    cu_plist_mirror *m = c->plm[slot];
    c->plm_used[slot] = ++c->plm_clock;
    m->check = c->plist_check;
    m->kv_buf = kv->shared;
    char err[320];
    const int rc = cu_plist_sync(m, kv, arena_alloc, c, err, sizeof err);
    if (rc == LETHE_ERR_INTERNAL) return CU_FAIL(LETHE_ERR_INTERNAL, "cuda: %s", err);   /* check mode: stale */
    if (rc != LETHE_OK) {   /* no memory for the mirror: this step stages its lists */
        if (!c->plist_warned)
            CU_LOG(LETHE_LOG_WARN, "cuda: %s: the page lists are staged every step instead", err);
        c->plist_warned = true;
        return LETHE_OK;
    }
    if (m->last.bytes)
        CU_LOG(LETHE_LOG_DEBUG, "cuda: page lists: %llu streams changed, %llu bytes to upload%s",
               (unsigned long long)m->last.changed, (unsigned long long)m->last.bytes, m->full ? " (whole arena)" : "");
    *out = m;
    return LETHE_OK;
}

lethe_status lethe_cu_plist_apply(cu_ctx *c, const cu_plan *p) {
    size_t need = 0;
    for (int k = 0; k < p->n_mirrors; k++)
        need += lethe_cu_align(cu_plist_pending_bytes(p->mirrors[k]));
    if (need > c->pl_cap) {
        const size_t cap = lethe_cu_align(need + need / 2 + 4096);
        cudaFreeHost(c->pl_host);
        cudaFree(c->pl_dev);
        c->pl_host = c->pl_dev = NULL;
        c->pl_cap = 0;
        lethe_status st = LETHE_OK;
        if (cudaMallocHost((void **)&c->pl_host, cap) != cudaSuccess || cudaMalloc((void **)&c->pl_dev, cap) != cudaSuccess) {
            cudaGetLastError();
            cudaFreeHost(c->pl_host);
            cudaFree(c->pl_dev);
            c->pl_host = c->pl_dev = NULL;
            st = CU_FAIL(LETHE_ERR_OOM, "cuda: page-list upload buffers of %zu bytes", cap);
        } else {
            c->pl_cap = cap;
        }
        if (st != LETHE_OK) {   /* nothing went up: the next upload is whole */
            for (int k = 0; k < p->n_mirrors; k++) cu_plist_invalidate(p->mirrors[k]);
            return st;
        }
    }
    size_t o = 0;
    for (int k = 0; k < p->n_mirrors; k++) {
        cu_plist_mirror *m = p->mirrors[k];
        const size_t bytes = cu_plist_pending_bytes(m);
        if (!bytes) continue;
        cudaError_t e;
        int32_t *arena = (int32_t *)(uintptr_t)m->dev;
        /* through pinned memory: a stream-ordered copy that leaves the host at once */
        if (m->full) {   /* the host copy, straight into the arena */
            memcpy(c->pl_host + o, m->host, bytes);
            e = cudaMemcpyAsync(arena, c->pl_host + o, bytes, cudaMemcpyHostToDevice, c->stream);
        } else {         /* runs then pairs, one copy; the runs' launch, then the pairs' */
            const size_t rb = m->n_moves * 3 * sizeof(int32_t);
            if (rb) memcpy(c->pl_host + o, m->moves, rb);
            if (m->n_pairs) memcpy(c->pl_host + o + rb, m->pairs, bytes - rb);
            e = cudaMemcpyAsync(c->pl_dev + o, c->pl_host + o, bytes, cudaMemcpyHostToDevice, c->stream);
            if (e == cudaSuccess)
                e = lethe_cu_plist_move(arena, (const int32_t *)(c->pl_dev + o), (int64_t)m->n_moves, c->stream);
            if (e == cudaSuccess)
                e = lethe_cu_plist_scatter(arena, (const int32_t *)(c->pl_dev + o + rb), (int64_t)m->n_pairs,
                                           c->stream);
        }
        o += lethe_cu_align(bytes);
        if (e != cudaSuccess) {
            for (int j = k; j < p->n_mirrors; j++) cu_plist_invalidate(p->mirrors[j]);
            return CU_FAIL(LETHE_ERR_BACKEND, "cuda: page-list upload: %s (%s)", cudaGetErrorString(e),
                           cudaGetErrorName(e));
        }
        cu_plist_applied(m);
    }
    return LETHE_OK;
}

lethe_status lethe_cu_plist_verify(cu_ctx *c, const cu_plan *p) {
    if (!c->plist_check) return LETHE_OK;
    for (int k = 0; k < p->n_mirrors; k++) {
        const cu_plist_mirror *m = p->mirrors[k];
        if (!m->top || !m->dev) continue;
        int32_t *got = malloc((size_t)m->top * sizeof *got);
        if (!got) return CU_FAIL(LETHE_ERR_OOM, "cuda: page-list check");
        if (cudaMemcpy(got, (const void *)(uintptr_t)m->dev, (size_t)m->top * sizeof *got, cudaMemcpyDeviceToHost) !=
            cudaSuccess) {
            free(got);
            return CU_FAIL(LETHE_ERR_BACKEND, "cuda: page-list check: read back failed");
        }
        for (size_t i = 0; i < m->n_streams; i++)
            for (int32_t j = 0; m->off[i] >= 0 && j < m->n_dev[i]; j++)
                if (got[m->off[i] + j] != m->host[m->off[i] + j]) {
                    const int32_t g = got[m->off[i] + j], h = m->host[m->off[i] + j];
                    free(got);
                    return CU_FAIL(LETHE_ERR_INTERNAL,
                                   "cuda: page-list arena entry %d (stream %zu, page %d) is %d on the device, %d in "
                                   "its host copy",
                                   m->off[i] + j, i, j, g, h);
                }
        free(got);
    }
    return LETHE_OK;
}

void lethe_cu_plist_drop(cu_ctx *c, const void *kv_buf) {
    for (int i = 0; i < CU_PLIST_SLOTS; i++)
        if (c->plm[i] && (!kv_buf || c->plm[i]->kv_buf == kv_buf)) {
            mirror_free(c->plm[i]);
            c->plm[i] = NULL;
        }
    if (!kv_buf) {
        cudaFreeHost(c->pl_host);
        cudaFree(c->pl_dev);
        c->pl_host = c->pl_dev = NULL;
        c->pl_cap = 0;
    }
}

size_t lethe_cu_plist_device_bytes(const cu_ctx *c) {
    size_t s = c->pl_cap;
    for (int i = 0; i < CU_PLIST_SLOTS; i++)
        if (c->plm[i]) s += (size_t)c->plm[i]->dev_cap * sizeof(int32_t);
    return s;
}
