/* executor.c — placement and liveness-based memory planning. See executor.h. */
#include "executor.h"
#include "common.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LETHE_ALIGN 64
#define LETHE_MAX_BACKENDS 4

/* Planning state of one backend's compute buffer: a first-fit allocator over
 * an unbounded arena; the tail beyond `high` is free, blocks below it listed. */
typedef struct arena {
    lethe_buffer *buf;          /* compute buffer on this backend (grow-only)   */
    size_t *fb_off, *fb_size;   /* free blocks sorted by offset                 */
    int n_fb, cap_fb;
    size_t high;
} arena;

/* A copy of a node's result into another backend's arena, made just before
 * the segment that reads it runs. */
typedef struct xcopy {
    int seg;                    /* segment index that needs it                  */
    lethe_node *src;            /* the producer (on another backend)            */
    int shadow;                 /* index into ex->shadow                        */
} xcopy;

typedef struct segment {
    int begin, end, backend;
} segment;

/* A consumer's source pointer swapped to a shadow while the graph runs. */
typedef struct patch {
    lethe_node **slot;
    lethe_node *orig;
} patch;

struct lethe_executor {
    lethe_backend *backends[LETHE_MAX_BACKENDS];
    int n_backends;
    int host;                   /* index of a backend with host memory (CPU)    */
    arena ar[LETHE_MAX_BACKENDS];
    size_t *offs;               /* [cap] planned offset per node                */
    int cap;
    /* grow-only scratch of the mixed-placement plan */
    segment *segs; int n_segs, cap_segs;
    xcopy *copies; int n_copies, cap_copies;
    lethe_node *shadow; int n_shadow, cap_shadow;
    size_t *shadow_offs;        /* [cap_shadow] */
    patch *patches; int n_patches, cap_patches;
    int *out_nodes; size_t *out_offs; int n_out, cap_out;   /* device outputs -> host */
    uint8_t *bounce; size_t bounce_size;                      /* device -> device copies */
    /* graph shapes already reported (fallback log line once per shape) */
    uint64_t seen[64];
    int n_seen;
    size_t mem_limit;           /* 0: none; see lethe_executor_set_mem_limit */
};

lethe_executor *lethe_executor_new(lethe_backend **backends, int n_backends) {
    if (n_backends <= 0 || n_backends > LETHE_MAX_BACKENDS) return NULL;
    lethe_executor *ex = calloc(1, sizeof *ex);
    if (!ex) return NULL;
    memcpy(ex->backends, backends, (size_t)n_backends * sizeof *backends);
    ex->n_backends = n_backends;
    ex->host = -1;
    /* the host backend is the one whose buffers have host addresses */
    for (int b = 0; b < n_backends && ex->host < 0; b++) {
        lethe_buffer *probe = NULL;
        if (backends[b]->iface->buffer_alloc(backends[b], 64, &probe) == LETHE_OK) {
            if (probe->host_ptr) ex->host = b;
            backends[b]->iface->buffer_free(probe);
        }
    }
    if (ex->host < 0) {
        lethe_fail(LETHE_ERR_INVALID_ARG, "executor: no host (CPU) backend among the %d given", n_backends);
        free(ex);
        return NULL;
    }
    return ex;
}

void lethe_executor_free(lethe_executor *ex) {
    if (!ex) return;
    for (int b = 0; b < ex->n_backends; b++) {
        arena *a = &ex->ar[b];
        if (a->buf) a->buf->backend->iface->buffer_free(a->buf);
        free(a->fb_off);
        free(a->fb_size);
    }
    free(ex->offs);
    free(ex->segs);
    free(ex->copies);
    free(ex->shadow);
    free(ex->shadow_offs);
    free(ex->patches);
    free(ex->out_nodes);
    free(ex->out_offs);
    free(ex->bounce);
    free(ex);
}

size_t lethe_executor_buffer_size(const lethe_executor *ex) {
    size_t s = 0;
    for (int b = 0; b < ex->n_backends; b++) s += ex->ar[b].buf ? ex->ar[b].buf->size : 0;
    return s;
}

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

static bool fb_reserve(arena *a, int n) {
    if (n <= a->cap_fb) return true;
    int cap = LETHE_MAX(n, 2 * a->cap_fb + 16);
    size_t *o = realloc(a->fb_off, (size_t)cap * sizeof *o);
    if (!o) return false;
    a->fb_off = o;
    size_t *z = realloc(a->fb_size, (size_t)cap * sizeof *z);
    if (!z) return false;
    a->fb_size = z;
    a->cap_fb = cap;
    return true;
}

static size_t plan_alloc(arena *a, size_t size) {
    for (int i = 0; i < a->n_fb; i++) {
        if (a->fb_size[i] >= size) {
            size_t off = a->fb_off[i];
            a->fb_off[i] += size;
            a->fb_size[i] -= size;
            if (a->fb_size[i] == 0) {
                memmove(&a->fb_off[i], &a->fb_off[i + 1], (size_t)(a->n_fb - i - 1) * sizeof(size_t));
                memmove(&a->fb_size[i], &a->fb_size[i + 1], (size_t)(a->n_fb - i - 1) * sizeof(size_t));
                a->n_fb--;
            }
            return off;
        }
    }
    size_t off = a->high;
    a->high += size;
    return off;
}

static bool plan_free(arena *a, size_t off, size_t size) {
    if (!fb_reserve(a, a->n_fb + 1)) return false;
    int i = 0;
    while (i < a->n_fb && a->fb_off[i] < off) i++;
    memmove(&a->fb_off[i + 1], &a->fb_off[i], (size_t)(a->n_fb - i) * sizeof(size_t));
    memmove(&a->fb_size[i + 1], &a->fb_size[i], (size_t)(a->n_fb - i) * sizeof(size_t));
    a->fb_off[i] = off;
    a->fb_size[i] = size;
    a->n_fb++;
    /* merge with neighbours */
    if (i + 1 < a->n_fb && a->fb_off[i] + a->fb_size[i] == a->fb_off[i + 1]) {
        a->fb_size[i] += a->fb_size[i + 1];
        memmove(&a->fb_off[i + 1], &a->fb_off[i + 2], (size_t)(a->n_fb - i - 2) * sizeof(size_t));
        memmove(&a->fb_size[i + 1], &a->fb_size[i + 2], (size_t)(a->n_fb - i - 2) * sizeof(size_t));
        a->n_fb--;
    }
    if (i > 0 && a->fb_off[i - 1] + a->fb_size[i - 1] == a->fb_off[i]) {
        a->fb_size[i - 1] += a->fb_size[i];
        memmove(&a->fb_off[i], &a->fb_off[i + 1], (size_t)(a->n_fb - i - 1) * sizeof(size_t));
        memmove(&a->fb_size[i], &a->fb_size[i + 1], (size_t)(a->n_fb - i - 1) * sizeof(size_t));
        a->n_fb--;
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

/* Grow-only arrays. */
#define RESERVE(ptr, cap, n)                                                        \
    do {                                                                            \
        if ((n) > (cap)) {                                                          \
            int c_ = LETHE_MAX((n), 2 * (cap) + 16);                                \
            void *p_ = realloc((ptr), (size_t)c_ * sizeof *(ptr));                  \
            if (!p_) return lethe_fail(LETHE_ERR_OOM, "executor: plan");            \
            (ptr) = p_;                                                             \
            (cap) = c_;                                                             \
        }                                                                           \
    } while (0)

/* Where a node's result lives: its backend for computed nodes; for leaves the
 * backend owning their buffer when they have no host address, else -1
 * (host memory: every backend reads it, device backends upload it). */
static int home_of(const lethe_executor *ex, const lethe_node *n) {
    if (n->op != LETHE_OP_NONE) return n->backend;
    if (n->t.data || !n->t.buf) return -1;
    for (int b = 0; b < ex->n_backends; b++)
        if (ex->backends[b] == n->t.buf->backend) return b;
    return -2;   /* a buffer of a backend this executor does not know */
}

/* Segments of consecutive computed nodes on one backend (leaves join the
 * segment around them), and the copies each needs from other backends. */
static lethe_status plan_segments(lethe_executor *ex, lethe_graph *g) {
    ex->n_segs = ex->n_copies = ex->n_shadow = 0;
    int cur = -1;
    for (int i = 0; i < g->n_nodes; i++) {
        lethe_node *n = &g->nodes[i];
        if (n->op == LETHE_OP_NONE) continue;
        if (cur >= 0 && ex->segs[cur].backend == n->backend) {
            ex->segs[cur].end = i + 1;
            continue;
        }
        RESERVE(ex->segs, ex->cap_segs, ex->n_segs + 1);
        cur = ex->n_segs++;
        ex->segs[cur] = (segment){cur == 0 ? 0 : ex->segs[cur - 1].end, i + 1, n->backend};
    }
    if (ex->n_segs) ex->segs[ex->n_segs - 1].end = g->n_nodes;
    for (int k = 0; k < ex->n_segs; k++) {
        const segment *sg = &ex->segs[k];
        const int first_copy = ex->n_copies;
        for (int i = sg->begin; i < sg->end; i++) {
            lethe_node *n = &g->nodes[i];
            if (n->op == LETHE_OP_NONE) continue;
            for (int s = 0; s < LETHE_MAX_SRC; s++) {
                lethe_node *src = n->src[s];
                if (!src) continue;
                int h = home_of(ex, src);
                if (h == -2)
                    return lethe_fail(LETHE_ERR_INVALID_ARG, "executor: '%s' lives in a buffer of a backend not given",
                                      src->t.name);
                if (h < 0 || h == sg->backend) continue;
                bool dup = false;
                for (int c = first_copy; c < ex->n_copies && !dup; c++) dup = ex->copies[c].src == src;
                if (dup) continue;
                RESERVE(ex->copies, ex->cap_copies, ex->n_copies + 1);
                ex->copies[ex->n_copies++] = (xcopy){k, src, ex->n_shadow++};
            }
        }
    }
    if (ex->n_shadow > ex->cap_shadow) {
        int cap = LETHE_MAX(ex->n_shadow, 2 * ex->cap_shadow + 16);
        lethe_node *sh = realloc(ex->shadow, (size_t)cap * sizeof *sh);
        if (!sh) return lethe_fail(LETHE_ERR_OOM, "executor: plan");
        ex->shadow = sh;
        size_t *so = realloc(ex->shadow_offs, (size_t)cap * sizeof *so);
        if (!so) return lethe_fail(LETHE_ERR_OOM, "executor: plan");
        ex->shadow_offs = so;
        ex->cap_shadow = cap;
    }
    return LETHE_OK;
}

static lethe_status plan_memory(lethe_executor *ex, lethe_graph *g) {
    if (g->n_nodes > ex->cap) {
        size_t *o = realloc(ex->offs, (size_t)g->n_nodes * sizeof *o);
        if (!o) return lethe_fail(LETHE_ERR_OOM, "executor: plan");
        ex->offs = o;
        ex->cap = g->n_nodes;
    }
    compute_liveness(g);
    for (int b = 0; b < ex->n_backends; b++) ex->ar[b].n_fb = 0, ex->ar[b].high = 0;
    ex->n_out = 0;
    int k = 0, c = 0;
    /* A node's block is released right after its last reader is planned;
     * a segment's incoming copies live from its start to its end. */
    for (int i = 0; i < g->n_nodes; i++) {
        while (k < ex->n_segs && ex->segs[k].begin == i) {
            for (; c < ex->n_copies && ex->copies[c].seg == k; c++) {
                const xcopy *x = &ex->copies[c];
                ex->shadow_offs[x->shadow] = plan_alloc(&ex->ar[ex->segs[k].backend],
                                                        align_up(lethe_tensor_nbytes(&x->src->t)));
            }
            break;
        }
        lethe_node *n = &g->nodes[i];
        if (n->op != LETHE_OP_NONE)
            ex->offs[i] = plan_alloc(&ex->ar[n->backend], align_up(lethe_tensor_nbytes(&n->t)));
        /* release sources whose last reader is this node (a node never reads
         * memory it shares with its own output: it was allocated first) */
        for (int s = 0; s < LETHE_MAX_SRC; s++) {
            lethe_node *src = n->src[s];
            if (!src || src->op == LETHE_OP_NONE || src->last_use != i) continue;
            bool dup = false;   /* the same source twice: free it once */
            for (int r = 0; r < s; r++) dup |= n->src[r] == src;
            if (dup) continue;
            if (!plan_free(&ex->ar[src->backend], ex->offs[src - g->nodes], align_up(lethe_tensor_nbytes(&src->t))))
                return lethe_fail(LETHE_ERR_OOM, "executor: plan");
        }
        /* a result nobody reads is released at once */
        if (n->op != LETHE_OP_NONE && n->last_use < 0)
            if (!plan_free(&ex->ar[n->backend], ex->offs[i], align_up(lethe_tensor_nbytes(&n->t))))
                return lethe_fail(LETHE_ERR_OOM, "executor: plan");
        if (k < ex->n_segs && ex->segs[k].end == i + 1) {   /* segment over: its copies go */
            for (int j = 0; j < ex->n_copies; j++) {
                const xcopy *x = &ex->copies[j];
                if (x->seg != k) continue;
                if (!plan_free(&ex->ar[ex->segs[k].backend], ex->shadow_offs[x->shadow],
                               align_up(lethe_tensor_nbytes(&x->src->t))))
                    return lethe_fail(LETHE_ERR_OOM, "executor: plan");
            }
            k++;
        }
    }
    /* outputs computed on a device come back to host memory after the run */
    for (int i = 0; i < g->n_nodes; i++) {
        lethe_node *n = &g->nodes[i];
        if (!n->is_output || n->op == LETHE_OP_NONE || n->backend == ex->host) continue;
        RESERVE(ex->out_nodes, ex->cap_out, ex->n_out + 1);
        if (ex->n_out + 1 > ex->cap_out) return lethe_fail(LETHE_ERR_OOM, "executor: plan");
        size_t *oo = realloc(ex->out_offs, (size_t)ex->cap_out * sizeof *oo);
        if (!oo) return lethe_fail(LETHE_ERR_OOM, "executor: plan");
        ex->out_offs = oo;
        ex->out_nodes[ex->n_out] = i;
        ex->out_offs[ex->n_out++] = plan_alloc(&ex->ar[ex->host], align_up(lethe_tensor_nbytes(&n->t)));
    }
    /* the memory cap counts every arena at the size it will have */
    size_t total = 0;
    for (int b = 0; b < ex->n_backends; b++) {
        const arena *a = &ex->ar[b];
        const bool grow = a->high > 0 && !(a->buf && a->buf->size >= a->high);
        total += grow ? a->high + a->high / 8 + LETHE_ALIGN : a->buf ? a->buf->size : 0;
    }
    lethe_status mst = check_mem_limit(ex, g, total);
    if (mst != LETHE_OK) return mst;
    for (int b = 0; b < ex->n_backends; b++) {
        arena *a = &ex->ar[b];
        lethe_backend *be = ex->backends[b];
        if (a->high == 0 || (a->buf && a->buf->size >= a->high)) continue;
        if (a->buf) be->iface->buffer_free(a->buf);
        a->buf = NULL;
        size_t size = a->high + a->high / 8 + LETHE_ALIGN;   /* headroom: fewer regrowths */
        lethe_status st = be->iface->buffer_alloc(be, size, &a->buf);
        if (st != LETHE_OK) return st;
        lethe_backend_info info;
        be->iface->get_info(be, &info);
        LETHE_LOGD("executor: %s compute buffer %.1f MiB", info.name, size / 1048576.0);
    }
    for (int i = 0; i < g->n_nodes; i++) {
        lethe_node *n = &g->nodes[i];
        if (n->op == LETHE_OP_NONE) continue;
        lethe_buffer *buf = ex->ar[n->backend].buf;
        n->t.buf = buf;
        n->t.offs = ex->offs[i];
        n->t.data = buf->host_ptr ? (uint8_t *)buf->host_ptr + ex->offs[i] : NULL;
    }
    for (int j = 0; j < ex->n_copies; j++) {
        const xcopy *x = &ex->copies[j];
        lethe_node *sh = &ex->shadow[x->shadow];
        lethe_buffer *buf = ex->ar[ex->segs[x->seg].backend].buf;
        *sh = *x->src;   /* same shape and op; only the memory differs */
        sh->backend = ex->segs[x->seg].backend;
        sh->t.buf = buf;
        sh->t.offs = ex->shadow_offs[x->shadow];
        sh->t.data = buf->host_ptr ? (uint8_t *)buf->host_ptr + sh->t.offs : NULL;
    }
    return LETHE_OK;
}

/* Copy a node's result into its shadow on another backend. */
static lethe_status copy_node(lethe_executor *ex, const lethe_node *src, const lethe_node *dst) {
    const size_t size = lethe_tensor_nbytes(&src->t);
    if (src->t.data) return dst->t.buf->backend->iface->buffer_set(dst->t.buf, dst->t.offs, src->t.data, size);
    if (dst->t.data) return src->t.buf->backend->iface->buffer_get(src->t.buf, src->t.offs, dst->t.data, size);
    if (size > ex->bounce_size) {   /* device to device: through the host */
        uint8_t *b = realloc(ex->bounce, size);
        if (!b) return lethe_fail(LETHE_ERR_OOM, "executor: copy between devices");
        ex->bounce = b;
        ex->bounce_size = size;
    }
    lethe_status st = src->t.buf->backend->iface->buffer_get(src->t.buf, src->t.offs, ex->bounce, size);
    if (st != LETHE_OK) return st;
    return dst->t.buf->backend->iface->buffer_set(dst->t.buf, dst->t.offs, ex->bounce, size);
}

/* One log line per graph shape that the preferred backend does not run whole. */
static void log_fallback(lethe_executor *ex, const lethe_graph *g) {
    if (ex->n_backends < 2) return;
    uint64_t h = 1469598103934665603ull;   /* FNV-1a over ops, shapes, placement */
    int n_first = 0, n_ops = 0;
    for (int i = 0; i < g->n_nodes; i++) {
        const lethe_node *n = &g->nodes[i];
        if (n->op == LETHE_OP_NONE) continue;
        n_ops++;
        n_first += n->backend == 0;
        const int64_t v[6] = {n->op, n->backend, n->t.ne[0], n->t.ne[1], n->t.ne[2], n->t.ne[3]};
        for (int j = 0; j < 6; j++) h = (h ^ (uint64_t)v[j]) * 1099511628211ull;
    }
    if (n_first == n_ops) return;
    for (int i = 0; i < ex->n_seen; i++)
        if (ex->seen[i] == h) return;
    if (ex->n_seen < (int)LETHE_ARRAY_SIZE(ex->seen)) ex->seen[ex->n_seen++] = h;
    lethe_backend_info pref, fb;
    ex->backends[0]->iface->get_info(ex->backends[0], &pref);
    char list[512] = "";
    size_t len = 0;
    int count[LETHE_OP_COUNT] = {0}, where[LETHE_OP_COUNT] = {0};
    for (int i = 0; i < g->n_nodes; i++) {
        const lethe_node *n = &g->nodes[i];
        if (n->op != LETHE_OP_NONE && n->backend != 0) count[n->op]++, where[n->op] = n->backend;
    }
    for (int op = 0; op < LETHE_OP_COUNT; op++) {
        if (!count[op]) continue;
        ex->backends[where[op]]->iface->get_info(ex->backends[where[op]], &fb);
        int w = snprintf(list + len, sizeof list - len, "%s%s x%d on %s", len ? ", " : "", lethe_op_name((lethe_op)op),
                         count[op], fb.name);
        if (w < 0 || (size_t)w >= sizeof list - len) break;
        len += (size_t)w;
    }
    lethe_log(LETHE_LOG_INFO, "executor: %s runs %d of %d ops of this graph (%d nodes); fallback: %s", pref.name,
              n_first, n_ops, g->n_nodes, list);
}

/* LETHE_DUMP_NODES=FILE (debugging, e.g. to find where two backends part):
 * every node runs as its own compute and its result is appended to FILE as
 * a record {char name[64]; int32 op; uint64 nbytes; bytes}. */
static FILE *g_dump;
static pthread_once_t g_dump_once = PTHREAD_ONCE_INIT;

static void dump_open(void) {
    const char *path = getenv("LETHE_DUMP_NODES");
    if (path && *path) g_dump = fopen(path, "ab");
}

/* Once per process (contexts may run on several threads). Records of graphs
 * run concurrently interleave: dump from one context at a time. */
static FILE *dump_file(void) {
    pthread_once(&g_dump_once, dump_open);
    return g_dump;
}

static lethe_status dump_node(const lethe_node *n) {
    FILE *f = dump_file();
    const size_t size = lethe_tensor_nbytes(&n->t);
    uint8_t *b = malloc(size ? size : 1);
    if (!b) return lethe_fail(LETHE_ERR_OOM, "executor: node dump");
    lethe_status st = n->t.data ? (memcpy(b, n->t.data, size), LETHE_OK)
                                : n->t.buf->backend->iface->buffer_get(n->t.buf, n->t.offs, b, size);
    if (st == LETHE_OK) {
        char name[64] = {0};
        snprintf(name, sizeof name, "%s", n->t.name);
        const int32_t op = n->op;
        const uint64_t nb = size;
        fwrite(name, 1, sizeof name, f);
        fwrite(&op, sizeof op, 1, f);
        fwrite(&nb, sizeof nb, 1, f);
        fwrite(b, 1, size, f);
        fflush(f);
    }
    free(b);
    return st;
}

lethe_status lethe_executor_run(lethe_executor *ex, lethe_graph *g,
                                lethe_abort_fn abort_fn, void *abort_user) {
    if (g->status != LETHE_OK) return g->status;
    /* placement: the first backend (in priority order) that supports the op */
    for (int i = 0; i < g->n_nodes; i++) {
        lethe_node *n = &g->nodes[i];
        n->backend = -1;
        if (n->op == LETHE_OP_NONE) continue;
        for (int b = 0; b < ex->n_backends; b++) {
            if (ex->backends[b]->iface->supports_op(ex->backends[b], n)) { n->backend = b; break; }
        }
        if (n->backend < 0)
            return lethe_fail(LETHE_ERR_UNSUPPORTED, "no backend supports %s on %s (%s)",
                              lethe_op_name(n->op), n->src[0] ? lethe_dtype_name(n->src[0]->t.type) : "-",
                              n->t.name);
    }
    log_fallback(ex, g);
    lethe_status st = plan_segments(ex, g);
    if (st == LETHE_OK) st = plan_memory(ex, g);
    if (st != LETHE_OK) return st;
    /* consumers read the shadows of their cross-backend sources */
    ex->n_patches = 0;
    for (int j = 0; j < ex->n_copies; j++) {
        const xcopy *x = &ex->copies[j];
        const segment *sg = &ex->segs[x->seg];
        for (int i = sg->begin; i < sg->end; i++)
            for (int s = 0; s < LETHE_MAX_SRC; s++)
                if (g->nodes[i].op != LETHE_OP_NONE && g->nodes[i].src[s] == x->src) {
                    RESERVE(ex->patches, ex->cap_patches, ex->n_patches + 1);
                    ex->patches[ex->n_patches++] = (patch){&g->nodes[i].src[s], x->src};
                    g->nodes[i].src[s] = &ex->shadow[x->shadow];
                }
    }
    int c = 0;
    for (int k = 0; k < ex->n_segs && st == LETHE_OK; k++) {
        const segment *sg = &ex->segs[k];
        for (; c < ex->n_copies && ex->copies[c].seg == k && st == LETHE_OK; c++)
            st = copy_node(ex, ex->copies[c].src, &ex->shadow[ex->copies[c].shadow]);
        if (st != LETHE_OK) break;
        lethe_backend *be = ex->backends[sg->backend];
        if (!dump_file()) {
            st = be->iface->compute(be, g, sg->begin, sg->end, abort_fn, abort_user);
            continue;
        }
        for (int i = sg->begin; i < sg->end && st == LETHE_OK; i++) {   /* debugging: node by node */
            st = be->iface->compute(be, g, i, i + 1, abort_fn, abort_user);
            if (st == LETHE_OK) st = dump_node(&g->nodes[i]);
        }
    }
    for (int p = ex->n_patches - 1; p >= 0; p--) *ex->patches[p].slot = ex->patches[p].orig;
    if (st != LETHE_OK) return st;
    /* device outputs into host memory, where callers read `data` */
    lethe_buffer *hb = ex->ar[ex->host].buf;
    for (int j = 0; j < ex->n_out; j++) {
        lethe_node *n = &g->nodes[ex->out_nodes[j]];
        lethe_node dst = *n;
        dst.t.buf = hb;
        dst.t.offs = ex->out_offs[j];
        dst.t.data = (uint8_t *)hb->host_ptr + ex->out_offs[j];
        if ((st = copy_node(ex, n, &dst)) != LETHE_OK) return st;
        n->t = dst.t;
    }
    return LETHE_OK;
}
