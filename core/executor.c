/* executor.c — placement and liveness-based memory planning. See executor.h. */
#include "executor.h"
#include "common.h"

#include <string.h>

#define LETHE_ALIGN 64
#define LETHE_MAX_BACKENDS 4

struct lethe_executor {
    lethe_backend *backends[LETHE_MAX_BACKENDS];
    int n_backends;
    lethe_buffer *buf;          /* compute buffer on backends[0]              */
    size_t *offs;               /* [cap] planned offset per node              */
    int cap;
    /* free-block list for planning: (offset, size) pairs sorted by offset */
    size_t *fb_off, *fb_size;
    int n_fb, cap_fb;
    size_t mem_limit;           /* 0: none; see lethe_executor_set_mem_limit */
};

lethe_executor *lethe_executor_new(lethe_backend **backends, int n_backends) {
    if (n_backends <= 0 || n_backends > LETHE_MAX_BACKENDS) return NULL;
    lethe_executor *ex = calloc(1, sizeof *ex);
    if (!ex) return NULL;
    memcpy(ex->backends, backends, (size_t)n_backends * sizeof *backends);
    ex->n_backends = n_backends;
    return ex;
}

void lethe_executor_free(lethe_executor *ex) {
    if (!ex) return;
    if (ex->buf) ex->buf->backend->iface->buffer_free(ex->buf);
    free(ex->offs);
    free(ex->fb_off);
    free(ex->fb_size);
    free(ex);
}

size_t lethe_executor_buffer_size(const lethe_executor *ex) { return ex->buf ? ex->buf->size : 0; }

static size_t scratch_of(lethe_backend *be, const lethe_graph *g, int begin, int end) {
    return be->iface->scratch_bytes ? be->iface->scratch_bytes(be, g, begin, end) : 0;
}

size_t lethe_executor_memory(const lethe_executor *ex) {
    size_t total = lethe_executor_buffer_size(ex);
    for (int b = 0; b < ex->n_backends; b++) total += scratch_of(ex->backends[b], NULL, 0, 0);
    return total;
}

void lethe_executor_set_mem_limit(lethe_executor *ex, size_t limit) { ex->mem_limit = limit; }

/* Would running g with a compute buffer of `buf_size` bytes keep the
 * executor within its cap? Scratch is summed per backend over its ranges. */
static lethe_status check_mem_limit(lethe_executor *ex, const lethe_graph *g, size_t buf_size) {
    if (!ex->mem_limit) return LETHE_OK;
    size_t need = buf_size;
    for (int b = 0; b < ex->n_backends; b++) {
        size_t sc = scratch_of(ex->backends[b], NULL, 0, 0);
        for (int begin = 0; begin < g->n_nodes;) {
            int end = begin + 1;
            while (end < g->n_nodes && g->nodes[end].backend == g->nodes[begin].backend) end++;
            if (g->nodes[begin].backend == b) sc = LETHE_MAX(sc, scratch_of(ex->backends[b], g, begin, end));
            begin = end;
        }
        need += sc;
    }
    if (need > ex->mem_limit)
        return lethe_fail(LETHE_ERR_OOM,
                          "memory cap: this batch needs %zu bytes of compute buffers, %zu are left under the "
                          "context's mem_limit_bytes (a smaller n_batch needs less)",
                          need, ex->mem_limit);
    return LETHE_OK;
}

static size_t align_up(size_t x) { return (x + LETHE_ALIGN - 1) & ~(size_t)(LETHE_ALIGN - 1); }

/* ---- a first-fit allocator over an unbounded arena, used only to plan ---- */

static bool fb_reserve(lethe_executor *ex, int n) {
    if (n <= ex->cap_fb) return true;
    int cap = LETHE_MAX(n, 2 * ex->cap_fb + 16);
    size_t *a = realloc(ex->fb_off, (size_t)cap * sizeof *a);
    if (!a) return false;
    ex->fb_off = a;
    size_t *b = realloc(ex->fb_size, (size_t)cap * sizeof *b);
    if (!b) return false;
    ex->fb_size = b;
    ex->cap_fb = cap;
    return true;
}

/* The arena's tail beyond `*high` is free; blocks below it are listed. */
static size_t plan_alloc(lethe_executor *ex, size_t size, size_t *high) {
    for (int i = 0; i < ex->n_fb; i++) {
        if (ex->fb_size[i] >= size) {
            size_t off = ex->fb_off[i];
            ex->fb_off[i] += size;
            ex->fb_size[i] -= size;
            if (ex->fb_size[i] == 0) {
                memmove(&ex->fb_off[i], &ex->fb_off[i + 1], (size_t)(ex->n_fb - i - 1) * sizeof(size_t));
                memmove(&ex->fb_size[i], &ex->fb_size[i + 1], (size_t)(ex->n_fb - i - 1) * sizeof(size_t));
                ex->n_fb--;
            }
            return off;
        }
    }
    size_t off = *high;
    *high += size;
    return off;
}

static bool plan_free(lethe_executor *ex, size_t off, size_t size) {
    if (!fb_reserve(ex, ex->n_fb + 1)) return false;
    int i = 0;
    while (i < ex->n_fb && ex->fb_off[i] < off) i++;
    memmove(&ex->fb_off[i + 1], &ex->fb_off[i], (size_t)(ex->n_fb - i) * sizeof(size_t));
    memmove(&ex->fb_size[i + 1], &ex->fb_size[i], (size_t)(ex->n_fb - i) * sizeof(size_t));
    ex->fb_off[i] = off;
    ex->fb_size[i] = size;
    ex->n_fb++;
    /* merge with neighbours */
    if (i + 1 < ex->n_fb && ex->fb_off[i] + ex->fb_size[i] == ex->fb_off[i + 1]) {
        ex->fb_size[i] += ex->fb_size[i + 1];
        memmove(&ex->fb_off[i + 1], &ex->fb_off[i + 2], (size_t)(ex->n_fb - i - 2) * sizeof(size_t));
        memmove(&ex->fb_size[i + 1], &ex->fb_size[i + 2], (size_t)(ex->n_fb - i - 2) * sizeof(size_t));
        ex->n_fb--;
    }
    if (i > 0 && ex->fb_off[i - 1] + ex->fb_size[i - 1] == ex->fb_off[i]) {
        ex->fb_size[i - 1] += ex->fb_size[i];
        memmove(&ex->fb_off[i], &ex->fb_off[i + 1], (size_t)(ex->n_fb - i - 1) * sizeof(size_t));
        memmove(&ex->fb_size[i], &ex->fb_size[i + 1], (size_t)(ex->n_fb - i - 1) * sizeof(size_t));
        ex->n_fb--;
    }
    return true;
}

/* Liveness: last_use of each node = index of its last reader (outputs: end). */
static void compute_liveness(lethe_graph *g) {
    for (int i = 0; i < g->n_nodes; i++) g->nodes[i].last_use = -1;
    for (int i = 0; i < g->n_nodes; i++) {
        lethe_node *n = &g->nodes[i];
        for (int s = 0; s < LETHE_MAX_SRC; s++)
            if (n->src[s]) n->src[s]->last_use = i;
    }
    for (int i = 0; i < g->n_nodes; i++)
        if (g->nodes[i].is_output) g->nodes[i].last_use = g->n_nodes;
}

static lethe_status plan_memory(lethe_executor *ex, lethe_graph *g) {
    if (g->n_nodes > ex->cap) {
        size_t *o = realloc(ex->offs, (size_t)g->n_nodes * sizeof *o);
        if (!o) return lethe_fail(LETHE_ERR_OOM, "executor: plan");
        ex->offs = o;
        ex->cap = g->n_nodes;
    }
    compute_liveness(g);
    ex->n_fb = 0;
    size_t high = 0;
    /* A node's block is released right after its last reader is planned. */
    for (int i = 0; i < g->n_nodes; i++) {
        lethe_node *n = &g->nodes[i];
        if (n->op != LETHE_OP_NONE) {
            ex->offs[i] = plan_alloc(ex, align_up(lethe_tensor_nbytes(&n->t)), &high);
        }
        /* release sources whose last reader is this node (a node never reads
         * memory it shares with its own output: it was allocated first) */
        for (int s = 0; s < LETHE_MAX_SRC; s++) {
            lethe_node *src = n->src[s];
            if (!src || src->op == LETHE_OP_NONE || src->last_use != i) continue;
            bool dup = false;   /* the same source twice: free it once */
            for (int r = 0; r < s; r++) dup |= n->src[r] == src;
            if (dup) continue;
            if (!plan_free(ex, ex->offs[src - g->nodes], align_up(lethe_tensor_nbytes(&src->t))))
                return lethe_fail(LETHE_ERR_OOM, "executor: plan");
        }
        /* a result nobody reads is released at once */
        if (n->op != LETHE_OP_NONE && n->last_use < 0)
            if (!plan_free(ex, ex->offs[i], align_up(lethe_tensor_nbytes(&n->t))))
                return lethe_fail(LETHE_ERR_OOM, "executor: plan");
    }
    lethe_backend *be = ex->backends[0];
    bool grow = !ex->buf || ex->buf->size < high;
    size_t size = grow ? high + high / 8 + LETHE_ALIGN : ex->buf->size;   /* headroom: fewer regrowths */
    lethe_status st = check_mem_limit(ex, g, size);
    if (st != LETHE_OK) return st;
    if (grow) {
        if (ex->buf) be->iface->buffer_free(ex->buf);
        ex->buf = NULL;
        st = be->iface->buffer_alloc(be, size, &ex->buf);
        if (st != LETHE_OK) return st;
        LETHE_LOGD("executor: compute buffer %.1f MiB", size / 1048576.0);
    }
    for (int i = 0; i < g->n_nodes; i++) {
        lethe_node *n = &g->nodes[i];
        if (n->op == LETHE_OP_NONE) continue;
        n->t.buf = ex->buf;
        n->t.offs = ex->offs[i];
        n->t.data = ex->buf->host_ptr ? (uint8_t *)ex->buf->host_ptr + ex->offs[i] : NULL;
    }
    return LETHE_OK;
}

lethe_status lethe_executor_run(lethe_executor *ex, lethe_graph *g,
                                lethe_abort_fn abort_fn, void *abort_user) {
    if (g->status != LETHE_OK) return g->status;
    /* placement */
    for (int i = 0; i < g->n_nodes; i++) {
        lethe_node *n = &g->nodes[i];
        n->backend = -1;
        if (n->op == LETHE_OP_NONE) { n->backend = 0; continue; }
        for (int b = 0; b < ex->n_backends; b++) {
            if (ex->backends[b]->iface->supports_op(ex->backends[b], n)) { n->backend = b; break; }
        }
        if (n->backend < 0)
            return lethe_fail(LETHE_ERR_UNSUPPORTED, "no backend supports %s on %s (%s)",
                              lethe_op_name(n->op), n->src[0] ? lethe_dtype_name(n->src[0]->t.type) : "-",
                              n->t.name);
        /* Copies between devices are not implemented yet: with host-memory
         * backends only (CPU) every node can read every other's result. */
        if (n->backend != 0)
            return lethe_fail(LETHE_ERR_UNSUPPORTED, "executor: mixed-device graphs are not supported yet");
    }
    lethe_status st = plan_memory(ex, g);
    if (st != LETHE_OK) return st;
    int begin = 0;
    while (begin < g->n_nodes) {
        int b = g->nodes[begin].backend, end = begin + 1;
        while (end < g->n_nodes && g->nodes[end].backend == b) end++;
        lethe_backend *be = ex->backends[b];
        st = be->iface->compute(be, g, begin, end, abort_fn, abort_user);
        if (st != LETHE_OK) return st;
        begin = end;
    }
    return LETHE_OK;
}
