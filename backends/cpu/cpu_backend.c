/* cpu_backend.c — the CPU backend: host buffers and the graph loop.
 *
 * compute() opens ONE OpenMP parallel region for the node range (ggml's
 * pattern): every thread walks the nodes in order, takes its share of each
 * node's rows, and a barrier separates nodes. Leaves are skipped. Scratch is
 * sized for the whole range before the region and only ever grows, so a
 * steady decode loop does no allocation.
 */
#include "common.h"
#include "cpu_kernels.h"
#include "kv_cache.h"

#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <limits.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

typedef struct cpu_ctx {
    int n_threads;
    uint8_t *ws;          /* [n_threads][ws_stride] per-thread scratch */
    size_t ws_stride;
    uint8_t *shared;      /* [shared_size] */
    size_t shared_size;
    char device_name[128];
    int barrier_spins;    /* see lethe_cpu_barrier; from OMP_WAIT_POLICY */
} cpu_ctx;

/* ------------------------------------------------------------- buffers */

static lethe_status cpu_buffer_alloc(lethe_backend *be, size_t size, lethe_buffer **out) {
    *out = NULL;
    lethe_buffer *b = calloc(1, sizeof *b);
    /* 64-byte aligned, rounded up so SIMD tails never read past the block */
    void *p = aligned_alloc(LETHE_CPU_ALIGN, lethe_cpu_align_up(size ? size : 1));
    if (!b || !p) {
        free(b);
        free(p);
        return lethe_fail(LETHE_ERR_OOM, "cpu: cannot allocate a host buffer of %zu bytes", size);
    }
    b->backend = be;
    b->size = size;
    b->host_ptr = p;
    b->impl = p;
    *out = b;
    return LETHE_OK;
}

static void cpu_buffer_free(lethe_buffer *buf) {
    if (!buf) return;
    free(buf->impl);
    free(buf);
}

static lethe_status cpu_buffer_set(lethe_buffer *buf, size_t offs, const void *src, size_t size) {
    if (!buf || offs > buf->size || size > buf->size - offs)
        return lethe_fail(LETHE_ERR_INVALID_ARG, "cpu: buffer_set of %zu bytes at %zu is outside a buffer of %zu",
                          size, offs, buf ? buf->size : 0);
    memcpy((uint8_t *)buf->host_ptr + offs, src, size);
    return LETHE_OK;
}

static lethe_status cpu_buffer_get(lethe_buffer *buf, size_t offs, void *dst, size_t size) {
    if (!buf || offs > buf->size || size > buf->size - offs)
        return lethe_fail(LETHE_ERR_INVALID_ARG, "cpu: buffer_get of %zu bytes at %zu is outside a buffer of %zu",
                          size, offs, buf ? buf->size : 0);
    memcpy(dst, (const uint8_t *)buf->host_ptr + offs, size);
    return LETHE_OK;
}

/* ------------------------------------------------------------ supports_op */

static bool is_f32(const lethe_node *n) { return n && n->t.type == LETHE_F32; }

static bool cpu_supports_op(lethe_backend *be, const lethe_node *n) {
    (void)be;
    /* kernels address activations as dense [rows, width] (weights by nb[1]) */
    for (int i = 0; i < LETHE_MAX_SRC && n->op != LETHE_OP_NONE; i++)
        if (n->src[i] && !lethe_tensor_is_contiguous(&n->src[i]->t)) return false;
    switch (n->op) {
    case LETHE_OP_NONE:
        return true;
    case LETHE_OP_GET_ROWS: {
        const lethe_dtype_traits *tr = lethe_dtype_get(n->src[0]->t.type);
        return tr && tr->to_f32 && n->src[1] && n->src[1]->t.type == LETHE_I32 && is_f32(n);
    }
    case LETHE_OP_MATMUL: {
        const lethe_tensor *w = &n->src[0]->t;
        const lethe_dtype_traits *tr = lethe_dtype_get(w->type);
        return lethe_cpu_kernels_for(w->type) && tr && w->ne[0] % tr->blck_size == 0 && is_f32(n->src[1]) &&
               n->src[1]->t.ne[0] == w->ne[0] && is_f32(n);
    }
    case LETHE_OP_RMS_NORM:
        return is_f32(n->src[0]) && (!n->src[1] || is_f32(n->src[1])) && is_f32(n);
    case LETHE_OP_ADD:
    case LETHE_OP_MUL:
    case LETHE_OP_SWIGLU:
        return is_f32(n->src[0]) && is_f32(n->src[1]) && is_f32(n);
    case LETHE_OP_ROPE:
        return is_f32(n->src[0]) && is_f32(n) && n->ub && n->rope.n_rot > 0 && n->rope.n_rot % 2 == 0 &&
               n->rope.n_rot <= n->src[0]->t.ne[0];
    case LETHE_OP_TOP_K:
        return is_f32(n->src[0]) && n->t.type == LETHE_I32 && n->iparams[0] >= 1 &&
               n->iparams[0] <= n->src[0]->t.ne[0];
    case LETHE_OP_DMS_DECISION:
        return is_f32(n) && n->ub && (n->iparams[0] == LETHE_DMS_FORCED || is_f32(n->src[0]));
    case LETHE_OP_KV_STORE:
    case LETHE_OP_ATTENTION: {
        const lethe_kv_cache *kv = n->kv;
        if (!kv || !n->ub || (kv->type != LETHE_F16 && kv->type != LETHE_F32)) return false;
        if (n->iparams[0] < 0 || n->iparams[0] >= kv->n_layer) return false;
        if (n->op == LETHE_OP_KV_STORE)
            return is_f32(n->src[0]) && is_f32(n->src[1]) && n->src[0]->t.ne[0] == kv->head_dim &&
                   n->src[1]->t.ne[0] == kv->head_dim && (!n->src[2] || is_f32(n->src[2]));
        const lethe_tensor *q = &n->src[0]->t;
        return is_f32(n->src[0]) && is_f32(n) && q->ne[0] == kv->head_dim && kv->n_head_kv > 0 &&
               q->ne[1] % kv->n_head_kv == 0 && q->ne[1] / kv->n_head_kv <= 64;
    }
    default:
        return false;
    }
}

/* ---------------------------------------------------------------- compute */

void lethe_cpu_node_ws(const lethe_node *n, int nth, size_t *per_thread, size_t *shared) {
    *per_thread = *shared = 0;
    switch (n->op) {
    case LETHE_OP_MATMUL: lethe_cpu_matmul_ws(n, nth, per_thread, shared); break;
    case LETHE_OP_ATTENTION: lethe_cpu_attention_ws(n, nth, per_thread, shared); break;
    case LETHE_OP_ROPE: lethe_cpu_rope_ws(n, nth, per_thread, shared); break;
    default: break;
    }
}

static void run_node(const lethe_cpu_exec *ex, lethe_node *n) {
    switch (n->op) {
    case LETHE_OP_GET_ROWS: lethe_cpu_get_rows(ex, n); break;
    case LETHE_OP_RMS_NORM: lethe_cpu_rms_norm(ex, n); break;
    case LETHE_OP_MATMUL: lethe_cpu_matmul(ex, n); break;
    case LETHE_OP_ADD:
    case LETHE_OP_MUL: lethe_cpu_binary(ex, n); break;
    case LETHE_OP_ROPE: lethe_cpu_rope(ex, n); break;
    case LETHE_OP_SWIGLU: lethe_cpu_swiglu(ex, n); break;
    case LETHE_OP_KV_STORE: lethe_cpu_kv_store(ex, n); break;
    case LETHE_OP_ATTENTION: lethe_cpu_attention(ex, n); break;
    case LETHE_OP_DMS_DECISION: lethe_cpu_dms_decision(ex, n); break;
    case LETHE_OP_TOP_K: lethe_cpu_top_k(ex, n); break;
    default: break; /* NONE; anything else was refused before the region */
    }
}

static lethe_status grow(uint8_t **p, size_t *have, size_t need) {
    if (need <= *have) return LETHE_OK;
    free(*p);
    *have = 0;
    *p = aligned_alloc(LETHE_CPU_ALIGN, lethe_cpu_align_up(need));
    if (!*p) return lethe_fail(LETHE_ERR_OOM, "cpu: cannot allocate %zu bytes of scratch", need);
    *have = lethe_cpu_align_up(need);
    return LETHE_OK;
}

static lethe_status cpu_compute(lethe_backend *be, lethe_graph *g, int begin, int end,
                                lethe_abort_fn abort_fn, void *abort_user) {
    cpu_ctx *c = be->ctx;
    if (!g || begin < 0 || end > g->n_nodes || begin > end)
        return lethe_fail(LETHE_ERR_INVALID_ARG, "cpu: bad node range [%d, %d)", begin, end);

    /* refuse what we cannot run before any thread starts; size scratch */
    size_t pt = 0, sh = 0;
    for (int i = begin; i < end; i++) {
        const lethe_node *n = &g->nodes[i];
        if (n->op == LETHE_OP_NONE) continue;
        if (!cpu_supports_op(be, n))
            return lethe_fail(LETHE_ERR_UNSUPPORTED, "cpu: cannot compute node %d '%s' (%s, weight dtype %s)", i,
                              n->t.name, lethe_op_name(n->op), lethe_dtype_name(n->src[0] ? (int)n->src[0]->t.type : -1));
        if (!n->t.data)
            return lethe_fail(LETHE_ERR_INTERNAL, "cpu: node %d '%s' has no host memory", i, n->t.name);
        size_t a, b;
        lethe_cpu_node_ws(n, c->n_threads, &a, &b);
        pt = LETHE_MAX(pt, a);
        sh = LETHE_MAX(sh, b);
    }
    size_t have_ws = c->ws_stride * (size_t)c->n_threads;
    const size_t stride = lethe_cpu_align_up(LETHE_MAX(pt, c->ws_stride));
    lethe_status st = grow(&c->ws, &have_ws, stride * (size_t)c->n_threads);
    if (st != LETHE_OK) {
        c->ws_stride = 0;
        return st;
    }
    c->ws_stride = stride;
    st = grow(&c->shared, &c->shared_size, sh);
    if (st != LETHE_OK) return st;

    int error = 0;
    int abort_flag[2] = {0, 0}; /* slot = parity of computed nodes; a barrier separates reuses */
    int aborted = 0;

    lethe_cpu_barrier bar = {.n = c->n_threads, .spins = c->barrier_spins};
    atomic_init(&bar.count, 0);
    atomic_init(&bar.gen, 0);

#pragma omp parallel num_threads(c->n_threads)
    {
        /* OpenMP may give fewer threads than asked: the barrier counts the real team */
        if (omp_get_thread_num() == 0) bar.n = omp_get_num_threads();
#pragma omp barrier
        lethe_cpu_exec ex = {
            .ith = omp_get_thread_num(),
            .nth = omp_get_num_threads(),
            .bar = &bar,
            .shared = c->shared,
            .error = &error,
        };
        ex.ws = c->ws + (size_t)ex.ith * c->ws_stride;
        int k = 0;
        for (int i = begin; i < end; i++) {
            lethe_node *n = &g->nodes[i];
            if (n->op == LETHE_OP_NONE) continue;
            run_node(&ex, n);
            if (ex.ith == 0 && abort_fn && abort_fn(abort_user))
                __atomic_store_n(&abort_flag[k & 1], 1, __ATOMIC_RELAXED);
            lethe_cpu_barrier_wait(&bar);
            if (__atomic_load_n(&abort_flag[k & 1], __ATOMIC_RELAXED)) {
                if (ex.ith == 0) aborted = 1;
                break;
            }
            k++;
        }
    }

    if (aborted) return lethe_fail(LETHE_ERR_ABORTED, "cpu: compute stopped by the abort callback");
    if (error) {
        if (error == LETHE_ERR_INVALID_ARG)
            return lethe_fail(LETHE_ERR_INVALID_ARG,
                              "cpu: bad input to the graph (a token/row id out of range or a bad sequence id)");
        return lethe_fail((lethe_status)error, "cpu: a KV-cache slot was not reserved for a stored token");
    }
    return LETHE_OK;
}

static lethe_status cpu_synchronize(lethe_backend *be) {
    (void)be;
    return LETHE_OK;
}

/* ---------------------------------------------------------- info / life */

static void cpu_get_info(lethe_backend *be, lethe_backend_info *info) {
    cpu_ctx *c = be->ctx;
    memset(info, 0, sizeof *info);
    info->name = "cpu";
    snprintf(info->device_name, sizeof info->device_name, "%s", c->device_name);
    long pages = sysconf(_SC_PHYS_PAGES), avail = sysconf(_SC_AVPHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
    if (pages > 0 && psz > 0) info->mem_total = (size_t)pages * (size_t)psz;
    if (avail > 0 && psz > 0) info->mem_free = (size_t)avail * (size_t)psz;
}

static void cpu_free(lethe_backend *be) {
    if (!be) return;
    cpu_ctx *c = be->ctx;
    if (c) {
        free(c->ws);
        free(c->shared);
        free(c);
    }
    free(be);
}

/* Scratch held now, or after cpu_compute() has grown it for [begin, end):
 * the same sizing as cpu_compute's, without allocating. */
static size_t cpu_scratch_bytes(lethe_backend *be, const lethe_graph *g, int begin, int end) {
    const cpu_ctx *c = be->ctx;
    size_t pt = c->ws_stride, sh = c->shared_size;
    for (int i = begin; g && i < end && i < g->n_nodes; i++) {
        if (g->nodes[i].op == LETHE_OP_NONE) continue;
        size_t a, b;
        lethe_cpu_node_ws(&g->nodes[i], c->n_threads, &a, &b);
        pt = LETHE_MAX(pt, lethe_cpu_align_up(a));
        sh = LETHE_MAX(sh, b ? lethe_cpu_align_up(b) : 0);
    }
    return pt * (size_t)c->n_threads + sh;
}

static const lethe_backend_iface k_cpu_iface = {
    .free = cpu_free,
    .get_info = cpu_get_info,
    .buffer_alloc = cpu_buffer_alloc,
    .buffer_free = cpu_buffer_free,
    .buffer_set = cpu_buffer_set,
    .buffer_get = cpu_buffer_get,
    .supports_op = cpu_supports_op,
    .compute = cpu_compute,
    .synchronize = cpu_synchronize,
    .scratch_bytes = cpu_scratch_bytes,
};

static void read_cpu_model(char *out, size_t size, int n_threads) {
    char model[96] = "CPU";
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (f) {
        char line[256];
        while (fgets(line, sizeof line, f)) {
            if (strncmp(line, "model name", 10) == 0) {
                const char *p = strchr(line, ':');
                if (p) {
                    p++;
                    while (*p == ' ' || *p == '\t') p++;
                    snprintf(model, sizeof model, "%s", p);
                    model[strcspn(model, "\n")] = 0;
                }
                break;
            }
        }
        fclose(f);
    }
    snprintf(out, size, "%s (%d thread%s)", model, n_threads, n_threads == 1 ? "" : "s");
}

lethe_backend *lethe_backend_cpu_new(int n_threads) {
    if (n_threads <= 0) n_threads = omp_get_num_procs();
    if (n_threads <= 0) n_threads = 1;
    lethe_backend *be = calloc(1, sizeof *be);
    cpu_ctx *c = calloc(1, sizeof *c);
    if (!be || !c) {
        free(be);
        free(c);
        lethe_fail(LETHE_ERR_OOM, "cpu: cannot allocate the backend");
        return NULL;
    }
    c->n_threads = n_threads;
    /* The node barrier honours OMP_WAIT_POLICY as OpenMP's would: passive
     * sleeps (OpenMP's barrier), active spins without yielding, unset spins
     * briefly and then yields (OpenMP's barrier when oversubscribed). */
    const char *wp = getenv("OMP_WAIT_POLICY");
    c->barrier_spins = LETHE_CPU_BARRIER_SPINS;
#ifdef LETHE_CPU_OMP_BARRIER /* build option: always OpenMP's barrier, for comparisons */
    c->barrier_spins = -1;
#endif
    /* more threads than cores: a spinner holds the core a waited-for thread
     * needs; OpenMP's barrier then sleeps sooner (measured -t 4 on 2 cores:
     * 50 vs 29 tokens/s) */
    if (n_threads > omp_get_num_procs()) c->barrier_spins = -1;
    if (wp && strcasecmp(wp, "passive") == 0) c->barrier_spins = -1;
    if (wp && strcasecmp(wp, "active") == 0) c->barrier_spins = INT_MAX;
    read_cpu_model(c->device_name, sizeof c->device_name, n_threads);
    /* Our OpenMP threads each call sgemm on their own tile: OpenBLAS must not
     * start threads of its own inside the region (oversubscription). */
    openblas_set_num_threads(1);
    be->iface = &k_cpu_iface;
    be->ctx = c;
    return be;
}

int lethe_backend_cpu_n_threads(lethe_backend *be) { return be ? ((cpu_ctx *)be->ctx)->n_threads : 0; }
