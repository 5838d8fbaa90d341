/* cuda_plan.c — build the launch plan of a node range (cuda_plan.h).
 *
 * Two passes: the first builds every ATTENTION node's tables
 * (cuda_kv_meta.h) and split plan, so that the bucketed span count and
 * page-list capacity shared by the range, and the one scratch allocation,
 * are known before any launch is written; the second writes the launches
 * and the staging bytes in node order. Device-only areas (score policies'
 * results) are laid out after the staged bytes once those are complete:
 * their offsets are fixed up at the end (cu_launch.result).
 *
 * Score policies: an ATTENTION node over a QUEST cache plans QUEST_BOUNDS
 * (the pages KV_STORE wrote, count read on the device) and QUEST_SELECT
 * (rewrites the staged work entries to page lists in a device-only area)
 * before the attention, and a COPY_BACK of the work entries after it (the
 * KV reads: cu_plan_finish); over a TOVA / H2O cache, a FILL of the weights
 * area, the attention writing it, and its COPY_BACK (the fold).
 */
#include "cuda_plan.h"
#include "cuda_topk.h"
#include "rope_freq.h"

#include "backend.h"   /* lethe_buffer: which backend a node's buffer belongs to */

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define STAGE_ALIGN 64              /* staging regions: work rows 16 B, doubles 8 B; the buffer is 256-aligned */
#define PREFILL_CHUNK_BYTES ((size_t)64 << 20)
#define PLIST_MIN_CAP 64            /* bucketed page lists: at least this many pages */
#define WSTRIDE_MIN 64              /* bucketed TOVA / H2O weight rows: at least this many slots */
#define CU_PLAN_NORM_MAX_E LETHE_CU_NORM_MAX_E   /* NORM_FUSED's row in shared memory (cuda_kernels.h) */

/* ------------------------------------------------------ tensor helpers */

/* Elements per block and bytes per block of the dtypes this backend meets
 * (liblethe's dtype table is not visible to a module). 0: unknown. */
static void dtype_sizes(lethe_dtype t, int *blck, size_t *bytes) {
    switch (t) {
    case LETHE_F32: case LETHE_I32: *blck = 1; *bytes = 4; return;
    case LETHE_F16: case LETHE_BF16: *blck = 1; *bytes = 2; return;
    case LETHE_Q4_0: *blck = 32; *bytes = sizeof(lethe_block_q4_0); return;
    case LETHE_Q4_1: *blck = 32; *bytes = sizeof(lethe_block_q4_1); return;
    case LETHE_Q5_0: *blck = 32; *bytes = sizeof(lethe_block_q5_0); return;
    case LETHE_Q5_1: *blck = 32; *bytes = sizeof(lethe_block_q5_1); return;
    case LETHE_Q8_0: *blck = 32; *bytes = sizeof(lethe_block_q8_0); return;
    default: *blck = 0; *bytes = 0; return;
    }
}

size_t cu_row_bytes(lethe_dtype t, int64_t n) {
    int blck;
    size_t bytes;
    dtype_sizes(t, &blck, &bytes);
    return blck && n % blck == 0 ? (size_t)(n / blck) * bytes : 0;
}

int64_t cu_nrows(const lethe_tensor *t) { return t->ne[1] * t->ne[2] * t->ne[3]; }
size_t cu_nbytes(const lethe_tensor *t) { return cu_row_bytes(t->type, t->ne[0]) * (size_t)cu_nrows(t); }

int cu_attn_group(const lethe_node *n) {
    const lethe_kv_cache *kv = n->kv;
    const int64_t D = kv->head_dim, T = n->ub->n_tokens;
    const lethe_tensor *q = &n->src[0]->t;
    const int64_t nq = q->ne[0] * q->ne[1] * q->ne[2] * q->ne[3];
    if (nq % (D * T) != 0) return 0;
    const int64_t Hq = nq / (D * T);
    if (Hq % kv->n_head_kv != 0) return 0;
    const int64_t G = Hq / kv->n_head_kv;
    return lethe_cu_attn_shape_ok((int)D, (int)G) && n->t.ne[0] * n->t.ne[1] * n->t.ne[2] * n->t.ne[3] == nq ? (int)G
                                                                                                               : 0;
}

int32_t cu_pow2_ceil(int32_t n) {
    int32_t c = 1;
    while (c < n && c < (1 << 30)) c <<= 1;
    return c;
}

static size_t prefill_chunk_rows(int64_t N, int64_t K) {
    int64_t rows = (int64_t)(PREFILL_CHUNK_BYTES / (2 * (size_t)K));
    rows = rows < 64 ? 64 : rows;
    return (size_t)(rows < N ? rows : N);
}

static int64_t split_target(int sm_count) {
    /* about 4 CTAs of 128 threads per SM (the decode kernel's registers allow more) */
    return 4 * (int64_t)(sm_count > 0 ? sm_count : 132);
}

int32_t cu_plan_attn_lmax(const lethe_node *n) {
    int32_t L = cu_attn_lmax(n);
    if (n->kv->kmin && L > cu_quest_k(n->kv) * LETHE_KV_PAGE) L = cu_quest_k(n->kv) * LETHE_KV_PAGE;   /* QUEST reads at most k pages */
    return L;
}

void cu_plan_attn_splits(const lethe_node *n, int sm_count, int32_t n_blocks, bool decode, int32_t *chunk,
                         int32_t *n_split) {
    *chunk = LETHE_CU_KV_PAGE;
    *n_split = 1;
    if (!decode) return;
    cu_attn_split_plan((int64_t)n_blocks * n->kv->n_head_kv, cu_plan_attn_lmax(n), split_target(sm_count), chunk,
                       n_split);
}

/* Partials of the decode kernel with `cap` spans in its grid. */
static size_t part_bytes(const lethe_node *n, int G, int32_t n_blocks, int32_t cap) {
    if (cap <= 1) return 0;
    return (size_t)n_blocks * (size_t)n->kv->n_head_kv * (size_t)cap * (size_t)G * (size_t)(n->kv->head_dim + 2) *
           sizeof(float);
}

/* The decode GEMV's activation scratch (aligned; 0: the variant needs none). */
static size_t gemv_act(const cu_plan_env *env, const lethe_tensor *w, int64_t T) {
    if (!env->gemv_act_bytes) return 0;
    const size_t b = env->gemv_act_bytes((int)w->type, w->ne[0], T, env->gemv_variant);
    return b ? (b + 255) / 256 * 256 : 0;
}

size_t cu_plan_scratch_need(const lethe_node *n, const cu_plan_env *env, bool bucketed) {
    const int sm_count = env->sm_count;
    if (n->op == LETHE_OP_ATTENTION) {
        if (!n->kv || !n->ub || n->ub->n_tokens <= 0 || !n->ub->seq_id || !n->src[0]) return 0;
        const int G = cu_attn_group(n);
        if (!G) return 0;
        bool decode;
        const int32_t nb = cu_attn_blocks(n, G, n->kv->kmin != NULL, &decode);   /* QUEST: the decode plan */
        int32_t chunk, n_split;
        cu_plan_attn_splits(n, sm_count, nb, decode, &chunk, &n_split);
        if (bucketed && decode) {   /* the largest bucket this shape can reach (cu_attn_split_plan's `want`) */
            const int64_t items = (int64_t)nb * n->kv->n_head_kv, target = split_target(sm_count);
            int64_t want = items > 0 ? (target + items - 1) / items : 1;
            want = want < 1 ? 1 : want > LETHE_CU_ATTN_MAX_SPLIT ? LETHE_CU_ATTN_MAX_SPLIT : want;
            n_split = cu_pow2_ceil((int32_t)want);
        }
        return part_bytes(n, G, nb, n_split);
    }
    if (n->op == LETHE_OP_TOP_K)   /* the segments' (id, bits) pairs between the two passes */
        return cu_topk_scratch_bytes(cu_nrows(&n->src[0]->t), (uint32_t)n->src[0]->t.ne[0], (uint32_t)n->iparams[0]);
    if (n->op != LETHE_OP_MATMUL) return 0;
    const lethe_tensor *w = &n->src[0]->t;
    const int64_t T = cu_nrows(&n->src[1]->t), K = w->ne[0], N = w->ne[1];
    if (T <= LETHE_CU_GEMV_MAX_T) return gemv_act(env, w, T);
    if (w->type == LETHE_F32) return 0;
    size_t s = ((size_t)T * (size_t)K * 2 + 255) / 256 * 256;
    if (w->type != LETHE_F16 && w->type != LETHE_BF16) s += prefill_chunk_rows(N, K) * (size_t)K * 2;
    return s;
}

bool cu_plan_decode_shaped(const lethe_graph *g, int begin, int end) {
    for (int i = begin; i < end; i++) {
        const lethe_node *n = &g->nodes[i];
        if (n->op == LETHE_OP_MATMUL && cu_nrows(&n->src[1]->t) > LETHE_CU_GEMV_MAX_T) return false;
    }
    return true;
}

/* ----------------------------------------------------------- the plan */

void cu_plan_free(cu_plan *p) {
    free(p->launches);
    free(p->side);
    free(p->regions);
    free(p->stage);
    free(p->post);
    memset(p, 0, sizeof *p);
}

void cu_plan_finish(const cu_plan *p, const uint8_t *up_host) {
    for (int k = 0; k < p->n_launches; k++)   /* KV reads, as the CPU kernel counts them */
        if (p->side[k].kv) __atomic_fetch_add(&p->side[k].kv->reads, p->side[k].reads, __ATOMIC_RELAXED);
    for (int i = 0; i < p->n_post; i++) {
        const cu_post *j = &p->post[i];
        lethe_kv_cache *kv = j->n->kv;
        if (j->kind == CU_POST_QUEST_READS) {   /* the selected pages' slots, as the CPU counts them */
            const lethe_cu_attn_work *w = (const lethe_cu_attn_work *)(up_host + j->off);
            uint64_t reads = 0;
            for (size_t e = 0; e < j->bytes / sizeof *w; e++) reads += (uint64_t)w[e].L;
            __atomic_fetch_add(&kv->reads, reads, __ATOMIC_RELAXED);
        } else {
            cu_score_fold(j->n, (const float *)(up_host + j->off), j->stride);
        }
    }
}

/* Room for one more region in p->regions (0; -1 out of memory). */
static int region_room(cu_plan *p) {
    if (p->n_regions < p->cap_regions) return 0;
    const int c = p->cap_regions ? 2 * p->cap_regions : 32;
    cu_region *r = realloc(p->regions, (size_t)c * sizeof *r);
    if (!r) return -1;
    p->regions = r;
    p->cap_regions = c;
    return 0;
}

/* A staging region of `cap_bytes` (>= size) holding `size` bytes from
 * `host` (NULL: zeros, the caller fills it through stage + off); the rest
 * zeroed. dedup: a region of the same kind and host address is reused. */
static int stage_add(cu_plan *p, int kind, int node, const void *host, size_t size, size_t cap_bytes, bool dedup,
                     size_t *off) {
    if (dedup && host)
        for (int r = 0; r < p->n_regions; r++)
            if (p->regions[r].kind == kind && p->regions[r].host == host && p->regions[r].size >= cap_bytes) {
                *off = p->regions[r].off;
                return 0;
            }
    if (cap_bytes < size) cap_bytes = size;
    if (!cap_bytes) cap_bytes = 4;
    const size_t o = (p->stage_size + STAGE_ALIGN - 1) / STAGE_ALIGN * STAGE_ALIGN;
    const size_t end = o + cap_bytes;
    if (end > p->stage_cap) {
        size_t c = p->stage_cap ? 2 * p->stage_cap : 4096;
        while (c < end) c *= 2;
        uint8_t *s = realloc(p->stage, c);
        if (!s) return -1;
        p->stage = s;
        p->stage_cap = c;
    }
    if (region_room(p)) return -1;
    memset(p->stage + p->stage_size, 0, end - p->stage_size);   /* alignment padding too: stable bytes */
    if (host && size) memcpy(p->stage + o, host, size);
    p->regions[p->n_regions++] = (cu_region){kind, node, o, cap_bytes, host, false};
    p->stage_size = end;
    *off = o;
    return 0;
}

/* A device-only area of `bytes` the kernels write: its offset from the
 * start of the device-only areas (fixed up once the staged bytes are all
 * laid out). */
static int result_add(cu_plan *p, int kind, int node, size_t bytes, size_t *rel) {
    if (region_room(p)) return -1;
    const size_t o = p->up_size;   /* during the build: the device-only areas' running size */
    p->regions[p->n_regions++] = (cu_region){kind, node, o, bytes ? bytes : 4, NULL, true};
    p->up_size = (o + (bytes ? bytes : 4) + STAGE_ALIGN - 1) / STAGE_ALIGN * STAGE_ALIGN;
    *rel = o;
    return 0;
}

static int post_add(cu_plan *p, cu_post j) {
    if (p->n_post == p->cap_post) {
        const int c = p->cap_post ? 2 * p->cap_post : 16;
        cu_post *x = realloc(p->post, (size_t)c * sizeof *x);
        if (!x) return -1;
        p->post = x;
        p->cap_post = c;
    }
    p->post[p->n_post++] = j;
    return 0;
}

static cu_launch *launch_add(cu_plan *p, int kind, int node) {
    if (p->n_launches == p->cap_launches) {   /* side[] keeps the launches' capacity */
        const int c = p->cap_launches ? 2 * p->cap_launches : 64;
        cu_launch *l = realloc(p->launches, (size_t)c * sizeof *l);
        if (!l) return NULL;
        p->launches = l;
        cu_side *s = realloc(p->side, (size_t)c * sizeof *s);
        if (!s) return NULL;
        p->side = s;
        p->cap_launches = c;
    }
    cu_launch *l = &p->launches[p->n_launches];
    memset(l, 0, sizeof *l);
    p->side[p->n_launches] = (cu_side){NULL, 0};
    p->n_launches++;
    l->kind = kind;
    l->node = node;
    return l;
}

/* Is this source a graph input whose bytes travel in the staging buffer? */
static bool staged_input(const cu_plan_env *env, const lethe_node *x) {
    return x->op == LETHE_OP_NONE && x->is_input && x->t.data && !(x->t.buf && (const void *)x->t.buf->backend ==
                                                                                    env->backend);
}

#define OOM(what)                                             \
    do {                                                      \
        snprintf(err, errlen, "launch plan: out of memory (%s)", what); \
        return LETHE_ERR_OOM;                                 \
    } while (0)

/* Argument s of l: node x's data (staged input or device address). */
static int arg_node(cu_plan *p, const cu_plan_env *env, cu_launch *l, int s, const lethe_node *x, char *err,
                    size_t errlen) {
    if (!x) return LETHE_OK;   /* optional operand: 0 */
    if (staged_input(env, x)) {
        size_t off;
        if (stage_add(p, CU_R_INPUT, -1, x->t.data, cu_nbytes(&x->t), cu_nbytes(&x->t), true, &off))
            OOM("input");
        l->p[s] = off;
        l->staged |= 1u << s;
        return LETHE_OK;
    }
    err[0] = 0;
    return env->resolve(env->user, x, &l->p[s]);
}

static int arg_stage(cu_plan *p, cu_launch *l, int s, int kind, int node, const void *host, size_t size,
                     size_t cap_bytes, bool dedup, char *err, size_t errlen) {
    size_t off;
    if (stage_add(p, kind, node, host, size, cap_bytes, dedup, &off)) OOM("staging");
    l->p[s] = off;
    l->staged |= 1u << s;
    return LETHE_OK;
}

static uint64_t fnv(uint64_t h, const void *data, size_t n) {
    const uint8_t *b = data;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}

/* One ATTENTION node's first-pass results. */
typedef struct attn_pre {
    cu_attn_plan t;
    cu_plist_mirror *m;           /* the cache's device-resident lists, NULL: staged */
    int G;
    int32_t chunk, n_split;
    int32_t ref_ny;               /* QUEST: CTAs per work item of the bounds kernel (grid y) */
    int32_t wstride;              /* TOVA / H2O: the weights' row stride */
    bool tc;                      /* prefill on the tensor-core kernel (blocks of 64 / G tokens) */
} attn_pre;

/* ------------------------------------------------------- fused passes
 * Found by pattern over the node range; the graph (and so every other
 * backend) is untouched. A decode step's layer is, in node order:
 *   ... ADD (x = x + o) [DMS_DECISION] RMS_NORM (h = norm(x)) MATMUL q, k, v (h) ...
 *   ... ADD (x = x + o) RMS_NORM MATMUL gate, up (h) SWIGLU (s) MATMUL down (s) ADD ...
 * What each node's turn in pass 2 launches (fuse_node):
 *  - an ADD whose first reader after it is an RMS_NORM of its rows is
 *    computed by that norm's NORM_FUSED launch (x' written there too),
 *    launched at the ADD's turn ("early") or at the norm's ("late"),
 *    whichever the memory plan allows (fold_add);
 *  - an RMS_NORM or SWIGLU read by decode GEMVs on q8-family weights
 *    (those that would quantize their activations, k_gemv.cu) writes their
 *    q8 blocks into the fused area of the scratch once; the GEMVs read them
 *    (act_ready), no k_quant_q8 each. Its f32 result is written only when
 *    another node reads it, it is an output, or a reader lies outside the
 *    range (the executor's last_use says so).
 * One fused area: a producer's blocks stay until its last GEMV; a producer
 * placed before that keeps its GEMVs quantizing for themselves. */
typedef struct fuse_node {
    int32_t emit;     /* >= 0: this node's turn launches NORM_FUSED for RMS_NORM node `emit` */
    int32_t add;      /* RMS_NORM: the ADD its launch computes too (-1: none) */
    bool skip;        /* no launch of its own (an ADD folded in, a norm launched as NORM_FUSED) */
    bool q8, f32;     /* RMS_NORM / SWIGLU: q8 blocks into the fused area; the f32 result too */
    bool xq;          /* MATMUL: a GEMV on the fused area's blocks */
} fuse_node;

/* [lo, hi) of a computed node's result on the device; false: a leaf (weights
 * and inputs never share the executor's arena). Unknown: may overlap. */
static bool dev_range(const cu_plan_env *env, const lethe_node *n, uint64_t r[2], bool *known) {
    *known = true;
    if (!n || n->op == LETHE_OP_NONE) return false;
    if ((n->t.buf && (const void *)n->t.buf->backend != env->backend) || env->resolve(env->user, n, &r[0]) != LETHE_OK) {
        *known = false;
        return true;
    }
    r[1] = r[0] + cu_nbytes(&n->t);
    return true;
}

/* May the results of x and y share bytes? (false for leaves) */
static bool may_overlap(const cu_plan_env *env, const lethe_node *x, const lethe_node *y) {
    uint64_t a[2], b[2];
    bool ka, kb;
    if (!dev_range(env, x, a, &ka) || !dev_range(env, y, b, &kb)) return false;
    if (!ka || !kb) return true;
    return a[0] < b[1] && b[0] < a[1];
}

/* Does MATMUL m read x as a decode GEMV on q8 activations of width K? */
static bool q8_gemv_of(const cu_plan_env *env, const lethe_node *m, const lethe_node *x, int64_t K) {
    if (m->op != LETHE_OP_MATMUL || m->src[1] != x || m->src[0] == x) return false;
    const lethe_tensor *w = &m->src[0]->t;
    const int64_t T = cu_nrows(&x->t);
    return T <= LETHE_CU_GEMV_MAX_T && w->ne[0] == K && gemv_act(env, w, T) != 0;
}

/* Can RMS_NORM i compute its source ADD too, and at whose turn? Returns the
 * ADD's index (-1: no) and *early (launch at the ADD's turn).
 * The executor's memory plan is what constrains it: the ADD's sources s0,
 * s1 are released after the ADD, so a node between the two (a DMS decision)
 * may get their bytes ("late" would then read them overwritten), and the
 * norm's result y may get them too. "early" writes y before the nodes
 * between, so y must not share bytes with what they read or write. y may
 * share s0's or s1's bytes inside the one launch only when one CTA reads
 * and writes those bytes (T = 1, or the very same range: row r of both):
 * every read of a row is before the launch's barrier, every write after. */
static int fold_add(const cu_plan_env *env, const lethe_graph *g, int begin, int i, bool write_y, bool *early) {
    const lethe_node *n = &g->nodes[i], *a = n->src[0];
    if (!a || a->op != LETHE_OP_ADD) return -1;
    const int ai = (int)(a - g->nodes);
    const lethe_node *s0 = a->src[0], *s1 = a->src[1];
    if (ai < begin || ai >= i || !s0 || !s1 || s0->op == LETHE_OP_NONE || s1->op == LETHE_OP_NONE) return -1;
    const int64_t T = cu_nrows(&a->t);
    if (cu_nrows(&s0->t) != T || cu_nrows(&s1->t) != T || s0->t.ne[0] != a->t.ne[0] || s1->t.ne[0] != a->t.ne[0])
        return -1;   /* no broadcast (biases), the norm's rows */
    if (write_y && T > 1) {
        uint64_t ry[2], r0[2], r1[2];
        bool ky, k0, k1;
        dev_range(env, n, ry, &ky);
        dev_range(env, s0, r0, &k0);
        dev_range(env, s1, r1, &k1);
        if (!ky || !k0 || !k1) return -1;
        if ((may_overlap(env, n, s0) && (ry[0] != r0[0] || ry[1] != r0[1])) ||
            (may_overlap(env, n, s1) && (ry[0] != r1[0] || ry[1] != r1[1])))
            return -1;
    }
    bool late = true, ok_early = true;
    for (int m = ai + 1; m < i; m++) {
        const lethe_node *x = &g->nodes[m];
        if (x->op == LETHE_OP_NONE) continue;
        for (int s = 0; s < LETHE_MAX_SRC; s++) {
            if (x->src[s] == a) return -1;   /* the norm is not the ADD's first reader */
            if (write_y && x->src[s] && may_overlap(env, n, x->src[s])) ok_early = false;
        }
        if (may_overlap(env, x, s0) || may_overlap(env, x, s1)) late = false;
        if (write_y && may_overlap(env, x, n)) ok_early = false;
    }
    if (!late && !ok_early) return -1;
    *early = ok_early;
    return ai;
}

/* The fusion decisions for nodes [begin, end) (f[i - begin]); *area: the
 * fused area's bytes (0: none). */
static void fuse_plan(const cu_plan_env *env, const lethe_graph *g, int begin, int end, fuse_node *f, size_t *area) {
    for (int i = begin; i < end; i++) f[i - begin] = (fuse_node){-1, -1, false, false, false, false};
    *area = 0;
    if (!env->fuse) return;
    int busy = -1;   /* the fused area's blocks are read up to this node */
    for (int i = begin; i < end; i++) {
        const lethe_node *n = &g->nodes[i];
        if ((n->op != LETHE_OP_RMS_NORM && n->op != LETHE_OP_SWIGLU) || !n->src[0]) continue;
        const lethe_tensor *x = &n->src[0]->t;
        const int64_t E = x->ne[0], T = cu_nrows(x);
        if (n->op == LETHE_OP_RMS_NORM && E > CU_PLAN_NORM_MAX_E) continue;   /* the row in shared memory */
        /* who reads the result: GEMVs that can take its q8 blocks, anything else */
        int n_q8 = 0, last = -1;
        const lethe_node *w0 = NULL;
        bool other = n->is_output || n->last_use >= end;
        for (int k = i + 1; k < g->n_nodes; k++) {
            const lethe_node *m = &g->nodes[k];
            for (int s = 0; s < LETHE_MAX_SRC; s++) {
                if (m->src[s] != n) continue;
                if (k < end && q8_gemv_of(env, m, n, E)) {
                    n_q8++;
                    last = k;
                    w0 = m->src[0];
                } else {
                    other = true;
                }
            }
        }
        bool q8 = n_q8 > 0 && E % 32 == 0, early = false;
        int ai = -1;
        for (int pass = 0; pass < 2; pass++) {
            ai = n->op == LETHE_OP_RMS_NORM ? fold_add(env, g, begin, i, !q8 || other, &early) : -1;
            const int at = ai >= 0 && early ? ai : i;   /* where the producer's launch goes */
            if (!q8 || at > busy) break;
            q8 = false;   /* the area still holds blocks a GEMV will read: no q8, so y is written: again */
        }
        fuse_node *fn = &f[i - begin];
        if (q8) {
            fn->q8 = true;
            fn->f32 = other;
            busy = last;
            const size_t b = gemv_act(env, &w0->t, T);
            *area = b > *area ? b : *area;
            for (int k = i + 1; k <= last; k++)
                if (q8_gemv_of(env, &g->nodes[k], n, E)) f[k - begin].xq = true;
        } else {
            fn->f32 = true;
        }
        if (n->op == LETHE_OP_SWIGLU) continue;   /* SWIGLU_Q8 at its own turn (q8) or plain */
        if (ai >= 0) {
            fn->add = ai;
            f[ai - begin].skip = true;
            f[(early ? ai : i) - begin].emit = i;
            fn->skip = true;
        } else if (q8) {
            fn->emit = i;
            fn->skip = true;
        }
    }
}

/* The NORM_FUSED launch of RMS_NORM node i (at its turn or its ADD's). */
static int plan_norm_fused(cu_plan *p, const cu_plan_env *env, lethe_graph *g, int i, const fuse_node *fz,
                           uint64_t area, char *err, size_t errlen) {
    lethe_node *n = &g->nodes[i];
    const lethe_node *a = fz->add >= 0 ? &g->nodes[fz->add] : NULL;
    cu_launch *l = launch_add(p, CU_K_NORM_FUSED, i);
    int st;
    if (!l) OOM("launches");
#define ARGF(s, x)                                                                         \
    do {                                                                                   \
        if ((st = arg_node(p, env, l, (s), (x), err, errlen)) != LETHE_OK) return st;       \
    } while (0)
    if (a) {
        ARGF(0, a->src[0]);
        ARGF(1, a->src[1]);
        ARGF(2, a);
    } else {
        ARGF(0, n->src[0]);
    }
    ARGF(3, n->src[1]);
    if (fz->f32) ARGF(4, n);
    if (fz->q8) l->p[5] = area;
#undef ARGF
    l->i[0] = cu_nrows(&n->src[0]->t);
    l->i[1] = n->src[0]->t.ne[0];
    l->i[2] = fz->add;
    l->f[0] = n->fparams[0];
    p->n_fused += 1 + (a != NULL);
    return LETHE_OK;
}

static int plan_node(cu_plan *p, const cu_plan_env *env, lethe_graph *g, int i, attn_pre *ap, uint64_t scratch,
                     const fuse_node *fz, uint64_t area, char *err, size_t errlen) {
    lethe_node *n = &g->nodes[i];
    const lethe_tensor *a = n->src[0] ? &n->src[0]->t : NULL;
    int st;
    cu_launch *l;
#define NEW(kind)                                      \
    do {                                               \
        if (!(l = launch_add(p, (kind), i))) OOM("launches"); \
    } while (0)
#define ARG(s, x)                                                                          \
    do {                                                                                   \
        if ((st = arg_node(p, env, l, (s), (x), err, errlen)) != LETHE_OK) return st;       \
    } while (0)
#define POS(s)                                                                                                 \
    do {                                                                                                       \
        if ((st = arg_stage(p, l, (s), CU_R_POS, i, n->ub->pos, (size_t)n->ub->n_tokens * sizeof(int32_t),        \
                            (size_t)n->ub->n_tokens * sizeof(int32_t), true, err, errlen)) != LETHE_OK)         \
            return st;                                                                                         \
    } while (0)
    switch (n->op) {
    case LETHE_OP_GET_ROWS: {
        const lethe_node *ids = n->src[1];
        const int64_t R = ids->t.ne[0] * ids->t.ne[1] * ids->t.ne[2] * ids->t.ne[3];
        if (ids->op == LETHE_OP_NONE && ids->t.data) {   /* bad ids: a status, not a read out of bounds */
            const int32_t *id = ids->t.data;
            for (int64_t r = 0; r < R; r++)
                if (id[r] < 0 || id[r] >= a->ne[1]) {
                    snprintf(err, errlen, "get_rows id %d of '%s' is outside [0, %lld)", id[r], ids->t.name,
                             (long long)a->ne[1]);
                    return LETHE_ERR_INVALID_ARG;
                }
        }
        NEW(CU_K_GET_ROWS);
        ARG(0, n->src[0]);
        ARG(1, ids);
        ARG(2, n);
        l->p[3] = env->d_err;
        l->i[0] = (int64_t)a->type;
        l->i[1] = (int64_t)a->nb[1];
        l->i[2] = a->ne[1];
        l->i[3] = a->ne[0];
        l->i[4] = R;
        return LETHE_OK;
    }
    case LETHE_OP_MATMUL: {
        const lethe_tensor *wt = &n->src[0]->t;
        const int64_t T = cu_nrows(&n->src[1]->t);
        const bool gemv = T <= LETHE_CU_GEMV_MAX_T;
        NEW(gemv ? CU_K_GEMV : CU_K_MATMUL);
        ARG(0, n->src[0]);
        ARG(1, n->src[1]);
        ARG(2, n);
        if (!gemv) {
            l->p[3] = scratch;
            p->capturable = false;
        } else if (fz->xq) {                 /* a fused launch wrote x's q8 blocks (cuda_fuse.cuh) */
            l->p[3] = area;
            l->i[6] = 1;
            p->n_fused++;
        } else if (gemv_act(env, wt, T)) {   /* the activations quantized to q8 blocks first (k_gemv.cu) */
            l->p[3] = scratch;
        }
        l->i[0] = (int64_t)wt->type;
        l->i[1] = (int64_t)wt->nb[1];
        l->i[2] = wt->ne[1];
        l->i[3] = wt->ne[0];
        l->i[4] = T;
        l->i[5] = gemv ? env->gemv_variant : 0;
        return LETHE_OK;
    }
    case LETHE_OP_RMS_NORM:
        NEW(CU_K_RMS_NORM);
        ARG(0, n->src[0]);
        ARG(1, n->src[1]);
        ARG(2, n);
        l->i[0] = cu_nrows(a);
        l->i[1] = a->ne[0];
        l->f[0] = n->fparams[0];
        return LETHE_OK;
    case LETHE_OP_ADD:
    case LETHE_OP_MUL:
        NEW(CU_K_BINARY);
        ARG(0, n->src[0]);
        ARG(1, n->src[1]);
        ARG(2, n);
        l->i[0] = n->op == LETHE_OP_MUL;
        l->i[1] = cu_nrows(a);
        l->i[2] = a->ne[0];
        l->i[3] = cu_nrows(&n->src[1]->t) == 1 && cu_nrows(a) != 1;
        return LETHE_OK;
    case LETHE_OP_TOP_K:
        NEW(CU_K_TOP_K);
        ARG(0, n->src[0]);
        ARG(1, n);
        if (cu_plan_scratch_need(n, env, p->bucketed)) l->p[2] = scratch;
        l->i[0] = cu_nrows(a);
        l->i[1] = a->ne[0];
        l->i[2] = n->iparams[0];
        return LETHE_OK;
    case LETHE_OP_SWIGLU:
        if (fz->q8) {   /* and its q8 blocks for the down projection (cuda_fuse.cuh) */
            NEW(CU_K_SWIGLU_Q8);
            ARG(0, n->src[0]);
            ARG(1, n->src[1]);
            if (fz->f32) ARG(2, n);
            l->p[3] = area;
            l->i[0] = cu_nrows(a) * a->ne[0];
            p->n_fused++;
            return LETHE_OK;
        }
        NEW(CU_K_SWIGLU);
        ARG(0, n->src[0]);
        ARG(1, n->src[1]);
        ARG(2, n);
        l->i[0] = cu_nrows(a) * a->ne[0];
        return LETHE_OK;
    case LETHE_OP_ROPE: {
        const lethe_rope_params *rp = &n->rope;
        const int half = rp->n_rot / 2;
        double invf[512];
        if (half > (int)(sizeof invf / sizeof invf[0])) {
            snprintf(err, errlen, "rope over %d dims", rp->n_rot);
            return LETHE_ERR_UNSUPPORTED;
        }
        for (int r = 0; r < half; r++) invf[r] = lethe_rope_inv_freq(rp, r);
        NEW(CU_K_ROPE);
        ARG(0, n->src[0]);
        ARG(1, n);
        POS(2);
        if ((st = arg_stage(p, l, 3, CU_R_INVF, i, invf, (size_t)half * sizeof(double), (size_t)half * sizeof(double),
                            false, err, errlen)) != LETHE_OK)
            return st;
        const int64_t D = a->ne[0], T = n->ub->n_tokens;
        l->i[0] = T;
        l->i[1] = (a->ne[0] * cu_nrows(a)) / (D * T);
        l->i[2] = D;
        l->i[3] = rp->n_rot;
        l->i[4] = rp->mode == LETHE_ROPE_NEOX;
        l->i[5] = n->iparams[0];
        return LETHE_OK;
    }
    case LETHE_OP_DMS_DECISION: {
        const int mode = n->iparams[0];
        NEW(CU_K_DMS);
        ARG(0, n->src[0]);
        ARG(1, n);
        POS(2);
        l->i[0] = mode == LETHE_DMS_FORCED ? 2 : mode == LETHE_DMS_FROM_Q ? 0 : 1;
        l->i[1] = a ? a->ne[0] : 0;
        l->i[2] = n->ub->n_tokens;
        l->i[3] = n->iparams[1];
        l->i[4] = n->iparams[2];
        l->i[5] = n->iparams[3];
        l->i[6] = n->iparams[4];
        l->f[0] = n->fparams[0];
        l->f[1] = n->fparams[1];
        l->f[2] = n->fparams[2];
        return LETHE_OK;
    }
    case LETHE_OP_KV_STORE: {
        lethe_kv_cache *kv = n->kv;
        const size_t n_rows = (size_t)n->ub->n_tokens * (size_t)kv->n_head_kv;
        err[0] = 0;
        if ((st = env->kv_prepare(env->user, kv)) != LETHE_OK) return st;
        NEW(CU_K_KV_STORE);
        ARG(0, n->src[0]);
        ARG(1, n->src[1]);
        ARG(2, n->src[2]);
        if ((st = arg_stage(p, l, 3, CU_R_KV_ROWS, i, NULL, 0, n_rows * sizeof(lethe_cu_kv_row), false, err,
                            errlen)) != LETHE_OK)
            return st;
        if ((st = cu_kv_store_rows(n, (lethe_cu_kv_row *)(p->stage + l->p[3]), err, errlen)) != LETHE_OK) return st;
        l->p[4] = (uint64_t)(uintptr_t)kv->pool;   /* managed: host addresses are device addresses */
        l->p[5] = (uint64_t)(uintptr_t)kv->expire;
        l->i[0] = (int64_t)n_rows;
        l->i[1] = kv->head_dim;
        l->i[2] = (int64_t)kv->slot_bytes;
        l->i[3] = kv->type == LETHE_F16;
        l->grid[0] = (uint32_t)n_rows;
        l->grid[1] = l->grid[2] = 1;
        return LETHE_OK;
    }
    case LETHE_OP_ATTENTION: {
        lethe_kv_cache *kv = n->kv;
        const cu_attn_plan *t = &ap->t;
        const int32_t Hkv = kv->n_head_kv, n_items = t->n_blocks * Hkv;
        const bool quest = kv->kmin != NULL, score = kv->score != NULL;
        err[0] = 0;
        if ((st = env->kv_prepare(env->user, kv)) != LETHE_OK) return st;
        const int32_t cap = t->decode ? (p->bucketed ? p->span_cap : ap->n_split) : 1;
        const size_t pl_cap = p->bucketed ? (size_t)p->plist_cap : t->n_plist;
        const size_t work_bytes = (size_t)n_items * sizeof *t->work;
        /* the tables first: QUEST's selection addresses them too */
        size_t o_work, o_pl = 0, o_pos, o_split;
        const int32_t split[2] = {ap->chunk, ap->n_split};
        if (!ap->m) p->plist_staged += pl_cap * sizeof(int32_t);
        if (stage_add(p, CU_R_WORK, i, t->work, work_bytes, work_bytes, false, &o_work) ||
            (!ap->m && stage_add(p, CU_R_PLISTS, i, t->plists, t->n_plist * sizeof(int32_t),
                                 pl_cap * sizeof(int32_t), false, &o_pl)) ||
            stage_add(p, CU_R_POS, i, n->ub->pos, (size_t)n->ub->n_tokens * sizeof(int32_t),
                      (size_t)n->ub->n_tokens * sizeof(int32_t), true, &o_pos) ||
            stage_add(p, CU_R_SPLIT, i, split, sizeof split, sizeof split, false, &o_split))
            OOM("staging");
#define STAGED(s, off)           \
    do {                         \
        l->p[s] = (off);         \
        l->staged |= 1u << (s);  \
    } while (0)
#define RESULT(s, off)                   \
    do {                                 \
        STAGED(s, off);                  \
        l->result |= 1u << (s);          \
    } while (0)
        if (quest) {
            /* the bounds of the pages this micro-batch's KV_STORE wrote: per work item {first stale page,
             * page count}, a table of T * Hkv entries whatever is stale (the grid stays) */
            size_t o_ref, r_sel;
            if (stage_add(p, CU_R_QUEST_REF, i, NULL, 0, (size_t)n_items * 2 * sizeof(int32_t), false, &o_ref))
                OOM("staging");
            cu_quest_refresh_items(n, (int32_t *)(p->stage + o_ref));
            NEW(CU_K_QUEST_BOUNDS);
            l->p[0] = (uint64_t)(uintptr_t)kv->pool;
            l->p[1] = (uint64_t)(uintptr_t)kv->kmin;
            l->p[2] = (uint64_t)(uintptr_t)kv->kmax;
            STAGED(3, o_ref);
            STAGED(4, o_work);
            STAGED(5, o_pl);
            l->i[0] = n_items;
            l->i[1] = (int64_t)kv->page_bytes;
            l->i[2] = (int64_t)kv->slot_bytes;
            l->i[3] = kv->type == LETHE_F16;
            l->i[4] = kv->head_dim;
            l->i[5] = ap->ref_ny;
            l->grid[0] = (uint32_t)n_items;
            l->grid[1] = (uint32_t)ap->ref_ny;
            l->grid[2] = 1;
            /* each (token, KV head)'s pages: the work entries rewritten to lists in a device-only area */
            const int32_t k = cu_quest_k(kv);
            if (result_add(p, CU_R_QUEST_SEL, i, (size_t)n_items * (size_t)k * sizeof(int32_t), &r_sel))
                OOM("device areas");
            NEW(CU_K_QUEST_SELECT);
            ARG(0, n->src[0]);
            STAGED(1, o_work);
            STAGED(2, o_pl);
            STAGED(3, o_pos);
            l->p[4] = (uint64_t)(uintptr_t)kv->pos;
            l->p[5] = (uint64_t)(uintptr_t)kv->kmin;
            l->p[6] = (uint64_t)(uintptr_t)kv->kmax;
            RESULT(7, r_sel);   /* i[1] = sel_base: (p[7] - p[2]) / 4 once the offsets are final */
            l->i[0] = n_items;
            l->i[2] = k;
            l->i[3] = Hkv;
            l->i[4] = ap->G;
            l->i[5] = kv->head_dim;
            l->grid[0] = (uint32_t)n_items;
            l->grid[1] = l->grid[2] = 1;
        }
        size_t r_w = 0, w_bytes = 0;
        if (score) {   /* TOVA / H2O: the weights, NaN bytes where no kernel writes (cu_score_weight: none) */
            w_bytes = (size_t)n->ub->n_tokens * (size_t)Hkv * (size_t)ap->G * (size_t)ap->wstride * sizeof(float);
            if (result_add(p, CU_R_WEIGHTS, i, w_bytes, &r_w)) OOM("device areas");
            NEW(CU_K_FILL);
            RESULT(0, r_w);
            l->i[0] = (int64_t)w_bytes;
            l->i[1] = 0xFF;
        }
        NEW(CU_K_ATTENTION);
        ARG(0, n->src[0]);
        ARG(1, n);
        STAGED(2, o_work);
        if (ap->m) l->p[3] = ap->m->dev;   /* the mirror's arena: fixed until it grows */
        else STAGED(3, o_pl);
        STAGED(4, o_pos);
        STAGED(5, o_split);
        l->p[6] = cap > 1 ? scratch : 0;
        l->p[7] = (uint64_t)(uintptr_t)kv->pool;
        l->p[8] = (uint64_t)(uintptr_t)kv->pos;
        l->p[9] = (uint64_t)(uintptr_t)kv->expire;
        if (score) RESULT(10, r_w);
        l->i[0] = t->n_blocks;
        l->i[1] = t->decode ? LETHE_CU_ATTN_DECODE : ap->tc ? LETHE_CU_ATTN_TC : LETHE_CU_ATTN_TILED;
        l->i[2] = Hkv;
        l->i[3] = ap->G;
        l->i[4] = cap;
        l->i[5] = (int64_t)kv->page_bytes;
        l->i[6] = (int64_t)kv->slot_bytes;
        l->i[7] = kv->type == LETHE_F16;
        l->i[8] = kv->head_dim;
        l->i[9] = score ? ap->wstride : 0;
        l->f[0] = n->fparams[0];
        l->grid[0] = (uint32_t)(t->decode ? t->n_blocks * Hkv : t->n_blocks);
        l->grid[1] = (uint32_t)(t->decode ? cap : Hkv);
        l->grid[2] = 1;
        /* KV reads: the tables' lengths; QUEST's are the rewritten ones, counted after the sync */
        if (!quest) p->side[p->n_launches - 1] = (cu_side){kv, t->reads};
        /* what the host needs after the sync comes back inside the plan (and so inside a replayed graph) */
        if (score) {
            NEW(CU_K_COPY_BACK);
            RESULT(0, r_w);
            l->i[0] = (int64_t)w_bytes;
            if (post_add(p, (cu_post){CU_POST_FOLD, ap->wstride, n, r_w, w_bytes})) OOM("post jobs");
        }
        if (quest) {
            NEW(CU_K_COPY_BACK);
            STAGED(0, o_work);
            l->i[0] = (int64_t)work_bytes;
            if (post_add(p, (cu_post){CU_POST_QUEST_READS, 0, n, o_work, work_bytes})) OOM("post jobs");
        }
#undef STAGED
#undef RESULT
        return LETHE_OK;
    }
    default:
        snprintf(err, errlen, "cannot compute %s", n->t.name);
        return LETHE_ERR_UNSUPPORTED;
    }
#undef NEW
#undef ARG
#undef POS
}

int cu_plan_build(cu_plan *p, const cu_plan_env *env, lethe_graph *g, int begin, int end, bool bucketed, char *err,
                  size_t errlen) {
    return cu_plan_build_pl(p, env, NULL, g, begin, end, bucketed, err, errlen);
}

int cu_plan_build_pl(cu_plan *p, const cu_plan_env *env, const cu_plist_env *pl, lethe_graph *g, int begin, int end,
                     bool bucketed, char *err, size_t errlen) {
    memset(p, 0, sizeof *p);
    err[0] = 0;
    p->bucketed = bucketed;
    p->capturable = true;
    p->span_cap = 1;
    p->plist_cap = PLIST_MIN_CAP;
    int n_attn = 0, st = LETHE_OK;
    for (int i = begin; i < end; i++) n_attn += g->nodes[i].op == LETHE_OP_ATTENTION;
    attn_pre *ap = calloc((size_t)(n_attn ? n_attn : 1), sizeof *ap);
    if (!ap) OOM("attention tables");
    /* pass 1: attention tables, buckets, scratch */
    int a = 0;
    int32_t max_split = 1, max_pl = 1;
    for (int i = begin; i < end && st == LETHE_OK; i++) {
        const lethe_node *n = &g->nodes[i];
        if (n->op != LETHE_OP_ATTENTION) continue;
        attn_pre *x = &ap[a++];
        x->G = cu_attn_group(n);
        if (!x->G) {
            snprintf(err, errlen, "attention '%s': q does not fit the cache's heads", n->t.name);
            st = LETHE_ERR_INVALID_ARG;
            break;
        }
        bool decode;
        (void)cu_attn_blocks(n, x->G, n->kv->kmin != NULL, &decode);
        x->tc = cu_attn_use_tc(n, x->G, decode, env->prefill_tc);
        if (pl && pl->mirror && !n->kv->kmin) {   /* the cache's device-resident lists, synced once per plan */
            for (int k = 0; k < p->n_mirrors && !x->m; k++)
                if (p->mirrors[k]->kv_uid == n->kv->uid) x->m = p->mirrors[k];
            if (!x->m && p->n_mirrors < CU_PLAN_MIRRORS) {
                err[0] = 0;
                if ((st = pl->mirror(pl->user, n->kv, &x->m)) != LETHE_OK) break;
                if (x->m) p->mirrors[p->n_mirrors++] = x->m;
            }
        }
        if ((st = cu_attn_plan_build_at(n, x->G, n->kv->kmin != NULL, x->tc ? LETHE_CU_ATTN_TC_ROWS : LETHE_CU_ATTN_ROWS,
                                        x->m ? x->m->off : NULL, &x->t, err, errlen)) != LETHE_OK)
            break;
        cu_plan_attn_splits(n, env->sm_count, x->t.n_blocks, x->t.decode, &x->chunk, &x->n_split);
        if (n->kv->kmin) {   /* plain: one CTA per stale page of the longest refresh (prefill); graph: 1 */
            int32_t *tmp = malloc((size_t)x->t.n_blocks * n->kv->n_head_kv * 2 * sizeof(int32_t));
            if (!tmp) {
                snprintf(err, errlen, "launch plan: out of memory (QUEST)");
                st = LETHE_ERR_OOM;
                break;
            }
            const int32_t most = cu_quest_refresh_items(n, tmp);
            free(tmp);
            x->ref_ny = bucketed ? 1 : most > 1 ? (most < 65535 ? most : 65535) : 1;
        }
        if (n->kv->score) {
            const int32_t ws = cu_score_stride(n);
            x->wstride = bucketed ? cu_pow2_ceil(ws > WSTRIDE_MIN ? ws : WSTRIDE_MIN) : ws;
        }
        if (x->t.decode && x->n_split > max_split) max_split = x->n_split;
        if ((int64_t)x->t.n_plist > max_pl) max_pl = (int32_t)x->t.n_plist;
    }
    /* the fused passes (before the scratch: their area is a part of it) */
    fuse_node *fz = st == LETHE_OK ? malloc((size_t)(end > begin ? end - begin : 1) * sizeof *fz) : NULL;
    size_t area = 0;
    if (st == LETHE_OK && !fz) {
        snprintf(err, errlen, "launch plan: out of memory (fusion)");
        st = LETHE_ERR_OOM;
    }
    if (st == LETHE_OK) fuse_plan(env, g, begin, end, fz, &area);
    if (st == LETHE_OK) {
        if (bucketed) {
            p->span_cap = cu_pow2_ceil(max_split);
            p->plist_cap = cu_pow2_ceil(max_pl < PLIST_MIN_CAP ? PLIST_MIN_CAP : max_pl);
        }
        size_t need = 0;
        a = 0;
        for (int i = begin; i < end; i++) {
            const lethe_node *n = &g->nodes[i];
            size_t s = 0;
            if (n->op == LETHE_OP_ATTENTION) {
                const attn_pre *x = &ap[a++];
                s = x->t.decode ? part_bytes(n, x->G, x->t.n_blocks, bucketed ? p->span_cap : x->n_split) : 0;
            } else if ((n->op == LETHE_OP_MATMUL && !fz[i - begin].xq) || n->op == LETHE_OP_TOP_K) {
                s = cu_plan_scratch_need(n, env, false);
            }
            need = s > need ? s : need;
        }
        p->scratch_bytes = need;
        if (area) {   /* the fused q8 area after what the other launches share */
            p->fuse_off = (need + 255) / 256 * 256;
            p->fuse_bytes = area;
            p->scratch_bytes = p->fuse_off + area;
        }
    }
    uint64_t scratch = 0;
    if (st == LETHE_OK && p->scratch_bytes) {
        err[0] = 0;
        st = env->scratch(env->user, p->scratch_bytes, &scratch);
    }
    /* pass 2: the launches, in node order */
    if (st == LETHE_OK) {
        cu_launch *l = launch_add(p, CU_K_CLEAR_ERR, -1);
        if (!l) {
            snprintf(err, errlen, "launch plan: out of memory (launches)");
            st = LETHE_ERR_OOM;
        } else {
            l->p[0] = env->d_err;
        }
    }
    a = 0;
    const uint64_t xq_area = area ? scratch + p->fuse_off : 0;
    for (int i = begin; i < end && st == LETHE_OK; i++) {
        if (g->nodes[i].op == LETHE_OP_NONE) continue;
        const fuse_node *f = &fz[i - begin];
        if (f->emit >= 0 && (st = plan_norm_fused(p, env, g, f->emit, &fz[f->emit - begin], xq_area, err, errlen)))
            break;
        if (!f->skip)
            st = plan_node(p, env, g, i, g->nodes[i].op == LETHE_OP_ATTENTION ? &ap[a] : NULL, scratch, f, xq_area,
                           err, errlen);
        a += g->nodes[i].op == LETHE_OP_ATTENTION;
    }
    for (int k = 0; k < n_attn; k++) cu_attn_plan_free(&ap[k].t);
    free(ap);
    free(fz);
    if (st != LETHE_OK) {
        cu_plan_free(p);
        return st;
    }
    for (int k = 0; k < p->n_mirrors; k++) p->plist_bytes += cu_plist_pending_bytes(p->mirrors[k]);
    /* the device-only areas after the staged bytes: final offsets */
    const size_t base = (p->stage_size + STAGE_ALIGN - 1) / STAGE_ALIGN * STAGE_ALIGN, results = p->up_size;
    p->result_off = base;
    p->up_size = results ? base + results : p->stage_size;
    for (int k = 0; k < p->n_launches; k++) {
        cu_launch *l = &p->launches[k];
        for (int s = 0; s < CU_LP; s++)
            if ((l->result >> s) & 1u) l->p[s] += base;
        if (l->kind == CU_K_QUEST_SELECT) l->i[1] = (int64_t)((l->p[7] - l->p[2]) / sizeof(int32_t));
    }
    for (int r = 0; r < p->n_regions; r++)
        if (p->regions[r].result) p->regions[r].off += base;
    for (int j = 0; j < p->n_post; j++)
        if (p->post[j].kind == CU_POST_FOLD) p->post[j].off += base;
    /* the key: everything a captured graph freezes */
    uint64_t h = 0xcbf29ce484222325ull;
    h = fnv(h, &p->n_launches, sizeof p->n_launches);
    h = fnv(h, p->launches, (size_t)p->n_launches * sizeof *p->launches);
    h = fnv(h, &p->stage_size, sizeof p->stage_size);
    for (int r = 0; r < p->n_regions; r++) {
        const int32_t k = p->regions[r].kind;
        h = fnv(h, &k, sizeof k);
        h = fnv(h, &p->regions[r].off, sizeof p->regions[r].off);
        h = fnv(h, &p->regions[r].size, sizeof p->regions[r].size);
    }
    p->key = h;
    return LETHE_OK;
}
