/* cuda_graph.c — decode steps replayed as CUDA graphs (LETHE_CUDA_GRAPHS=1).
 *
 * A decode step launches a few hundred small kernels (rms_norm, GEMV,
 * rope, KV store, attention ... per layer); launched one by one, the CPU's
 * launch cost and the gaps between kernels are a visible part of a step
 * that the weights' bytes alone would make ~1 ms long. A CUDA graph
 * launches them all at once.
 *
 * What makes replay valid: the launch plan (cuda_plan.h) keeps every value
 * that changes from step to step out of the launches. Kernels read
 * positions, RoPE frequencies, token ids, KV slot offsets and expire
 * indices, attention work tables, page lists and split counts from the
 * upload buffer, which the graph's first node fills from the pinned staging
 * buffer (host bytes are read when the graph runs, not when it was
 * captured); grids depend on the plan's buckets only. So two steps whose
 * launch lists are byte-identical are the same graph with different staging
 * bytes: the cache compares the whole launch list (and the staging buffers'
 * addresses, which the copy nodes hold), not just the key.
 *
 * Score policies replay too. What the host needs after the sync (TOVA /
 * H2O weights to fold, QUEST's rewritten work entries = its KV reads) is
 * brought back by the plan's own COPY_BACK launches (device to pinned
 * staging, fixed offsets): captured, they are memcpy nodes of the graph, so
 * a replay copies this step's results to the same host bytes, and the
 * host's part (cu_plan_finish) runs after the sync on either path. QUEST's
 * page selection rewrites the staged work entries on the device; the next
 * step's staging copy (the graph's first node) restores them.
 *
 * Cache: CU_GRAPH_SLOTS executables, least recently used replaced. A step
 * with a new launch list (longer streams crossed a span bucket, the page
 * lists outgrew their bucket, T changed, a buffer moved) is captured
 * (thread-local capture mode: other threads of the process may allocate
 * meanwhile); when every slot is taken, cudaGraphExecUpdate first tries to
 * turn the least recently used executable into the new graph (cheap when
 * only grids or arguments changed), else it is replaced by a new
 * instantiation. Any error on this path costs one log line and that step
 * runs the plain launches; after CU_GRAPH_MAX_FAIL failures in a row the
 * backend stops trying.
 */
#include "cuda_internal.h"
#include "cuda_plan.h"

#include <stdlib.h>
#include <string.h>

#define CU_GRAPH_SLOTS 4
#define CU_GRAPH_MAX_FAIL 3

typedef struct cu_gslot {
    cudaGraphExec_t exec;    /* NULL: empty */
    uint64_t key, used;
    cu_launch *launches;     /* [n] the plan this executable replays */
    int n;
    size_t stage_size;
    const void *up_host, *up_dev;
} cu_gslot;

typedef struct cu_graph_cache {
    cu_gslot slot[CU_GRAPH_SLOTS];
    uint64_t clock;
    int fails;               /* consecutive failures */
    uint64_t n_replay, n_capture, n_update, n_instantiate;
} cu_graph_cache;

static void slot_clear(cu_gslot *s) {
    if (s->exec) cudaGraphExecDestroy(s->exec);
    free(s->launches);
    memset(s, 0, sizeof *s);
}

void lethe_cu_graph_free(cu_ctx *c) {
    if (!c->gc) return;
    for (int i = 0; i < CU_GRAPH_SLOTS; i++) slot_clear(&c->gc->slot[i]);
    CU_LOG(LETHE_LOG_DEBUG, "cuda: graphs: %llu replays, %llu captures (%llu updated, %llu instantiated)",
           (unsigned long long)c->gc->n_replay, (unsigned long long)c->gc->n_capture,
           (unsigned long long)c->gc->n_update, (unsigned long long)c->gc->n_instantiate);
    free(c->gc);
    c->gc = NULL;
}

static bool slot_matches(const cu_ctx *c, const cu_gslot *s, const cu_plan *p) {
    return s->exec && s->key == p->key && s->n == p->n_launches && s->stage_size == p->stage_size &&
           s->up_host == c->up_host && s->up_dev == c->up_dev &&
           !memcmp(s->launches, p->launches, (size_t)p->n_launches * sizeof *p->launches);
}

/* One log line for a failed graph step; the caller runs plain launches. */
static lethe_status give_up(cu_ctx *c, const char *what, cudaError_t e) {
    cudaGetLastError();   /* clear a non-sticky error so the plain launches start clean */
    cu_graph_cache *gc = c->gc;
    gc->fails++;
    CU_LOG(LETHE_LOG_WARN, "cuda: graph %s failed (%s); this step runs plain launches%s", what,
           e != cudaSuccess ? cudaGetErrorString(e) : "launch error", gc->fails >= CU_GRAPH_MAX_FAIL ?
           "; CUDA graphs off for this backend from now on" : "");
    if (gc->fails >= CU_GRAPH_MAX_FAIL) c->graphs = false;
    return LETHE_OK;
}

lethe_status lethe_cu_graph_run(cu_ctx *c, const cu_plan *p, bool *done) {
    *done = false;
    if (!c->gc && !(c->gc = calloc(1, sizeof *c->gc))) return LETHE_OK;   /* no memory for the cache: plain */
    cu_graph_cache *gc = c->gc;
    cudaError_t e;
    for (int i = 0; i < CU_GRAPH_SLOTS; i++) {
        cu_gslot *s = &gc->slot[i];
        if (!slot_matches(c, s, p)) continue;
        if ((e = cudaGraphLaunch(s->exec, c->stream)) != cudaSuccess) {
            slot_clear(s);
            return give_up(c, "launch", e);
        }
        s->used = ++gc->clock;
        gc->n_replay++;
        gc->fails = 0;
        *done = true;
        return LETHE_OK;
    }
    /* a new launch list: capture it */
    cu_launch *copy = malloc((size_t)p->n_launches * sizeof *copy);
    if (!copy) return LETHE_OK;
    memcpy(copy, p->launches, (size_t)p->n_launches * sizeof *copy);
    if ((e = cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal)) != cudaSuccess) {
        free(copy);
        return give_up(c, "capture start", e);
    }
    const lethe_status st = lethe_cu_enqueue(c, p);
    cudaGraph_t graph = NULL;
    e = cudaStreamEndCapture(c->stream, &graph);   /* always: the stream leaves capture mode */
    if (st != LETHE_OK || e != cudaSuccess || !graph) {
        if (graph) cudaGraphDestroy(graph);
        free(copy);
        return give_up(c, "capture", e);
    }
    gc->n_capture++;
    /* a slot: an empty one, else the least recently used */
    cu_gslot *s = NULL;
    for (int i = 0; i < CU_GRAPH_SLOTS && !s; i++)
        if (!gc->slot[i].exec) s = &gc->slot[i];
    bool updated = false;
    if (!s) {
        s = &gc->slot[0];
        for (int i = 1; i < CU_GRAPH_SLOTS; i++)
            if (gc->slot[i].used < s->used) s = &gc->slot[i];
        cudaGraphExecUpdateResultInfo info;
        if (cudaGraphExecUpdate(s->exec, graph, &info) == cudaSuccess) {
            updated = true;
            gc->n_update++;
        } else {
            cudaGetLastError();
            cudaGraphExecDestroy(s->exec);
            s->exec = NULL;
        }
        free(s->launches);
        s->launches = NULL;
    }
    if (!updated) {
        if ((e = cudaGraphInstantiate(&s->exec, graph, 0)) != cudaSuccess) {
            s->exec = NULL;
            cudaGraphDestroy(graph);
            free(copy);
            slot_clear(s);
            return give_up(c, "instantiation", e);
        }
        gc->n_instantiate++;
    }
    cudaGraphDestroy(graph);
    s->key = p->key;
    s->launches = copy;
    s->n = p->n_launches;
    s->stage_size = p->stage_size;
    s->up_host = c->up_host;
    s->up_dev = c->up_dev;
    s->used = ++gc->clock;
    CU_LOG(LETHE_LOG_DEBUG, "cuda: graph of %d launches captured (key %016llx, %s, staging %zu bytes)", p->n_launches,
           (unsigned long long)p->key, updated ? "updated an executable" : "instantiated", p->stage_size);
    if ((e = cudaGraphLaunch(s->exec, c->stream)) != cudaSuccess) {
        slot_clear(s);
        return give_up(c, "launch", e);
    }
    gc->n_replay++;
    gc->fails = 0;
    *done = true;
    return LETHE_OK;
}
