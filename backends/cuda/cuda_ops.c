/* cuda_ops.c — which nodes the CUDA backend runs (supports_op) and the
 * launch of a node range (compute): one kernel (or cuBLAS call) per node on
 * the backend's stream, one synchronization per range.
 *
 * Shapes as in core/graph.h (outermost first). Matmul: T <= 8 tokens take
 * the GEMV kernel (weights read once for every token, dequantized in
 * registers); more take cuBLAS on f16/bf16 operands (quantized weights
 * dequantized chunk by chunk into scratch), f32 weights cublasSgemm.
 *
 * KV_STORE and ATTENTION run here when the context's KV cache lives in this
 * backend's managed buffer (buffer_alloc_shared): the host resolves slots and
 * page lists from its bookkeeping (cuda_kv_meta.h), uploads those small
 * tables, and the kernels (k_attention.cu) store and attend in place.
 * Score policies: TOVA / H2O (kv->score, host memory) get each key's
 * softmax weight from the kernels and fold them into the scores after the
 * compute's sync, as the Vulkan backend does; QUEST (kv->kmin / kmax in the
 * managed buffer, after expire) refreshes the bounds and selects the pages
 * on the device, then attends only those (decode plan, one token per
 * block); its KV reads are counted after the sync.
 */
#include "cuda_internal.h"
#include "cuda_kv_meta.h"
#include "cuda_topk.h"

#include <math.h>
#include <string.h>

#define PREFILL_CHUNK_BYTES ((size_t)64 << 20)   /* dequantized weight rows per cuBLAS call */
#define SCORE_W_MAX ((uint64_t)32 << 20)          /* TOVA / H2O weights of one ATTENTION node */
#define CU_QUEST_MAX_PAGES 4096                   /* = cuda_attn.cuh's (the selecting CTA's shared memory) */

/* --------------------------------------------------- tensors, module-side */

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

static size_t row_bytes_of(lethe_dtype t, int64_t n) {
    int blck;
    size_t bytes;
    dtype_sizes(t, &blck, &bytes);
    return blck && n % blck == 0 ? (size_t)(n / blck) * bytes : 0;
}

static int64_t nrows(const lethe_tensor *t) { return t->ne[1] * t->ne[2] * t->ne[3]; }
static size_t nbytes(const lethe_tensor *t) { return row_bytes_of(t->type, t->ne[0]) * (size_t)nrows(t); }

static bool contiguous(const lethe_tensor *t) {
    const size_t rb = row_bytes_of(t->type, t->ne[0]);
    if (!rb || t->nb[1] != rb) return false;
    for (int i = 2; i < LETHE_MAX_DIMS; i++)
        if (t->nb[i] != t->nb[i - 1] * (size_t)t->ne[i - 1]) return false;
    return true;
}

static bool f32n(const lethe_node *n) { return n && n->t.type == LETHE_F32; }

/* ------------------------------------------------------------ supports_op */

/* The node's KV cache lives in this backend's managed buffer, in a shape
 * the kernels take (head dim 32/64/128/256, G <= 8 for ATTENTION). */
static bool kv_on_device(const lethe_backend *be, const lethe_node *n) {
    const lethe_kv_cache *kv = n->kv;
    if (!kv || !kv->shared || kv->shared->backend != be || !n->ub || n->ub->n_tokens <= 0 ||
        n->ub->n_tokens > kv->max_batch || !n->ub->seq_id || !n->ub->pos)
        return false;
    if (kv->type != LETHE_F32 && kv->type != LETHE_F16) return false;
    return lethe_cu_attn_shape_ok(kv->head_dim, 1) != 0;
}

/* Query heads per KV head of an ATTENTION node, 0 if q's shape does not fit. */
static int attn_group(const lethe_node *n) {
    const lethe_kv_cache *kv = n->kv;
    const int64_t D = kv->head_dim, T = n->ub->n_tokens;
    const lethe_tensor *q = &n->src[0]->t;
    const int64_t nq = q->ne[0] * q->ne[1] * q->ne[2] * q->ne[3];
    if (nq % (D * T) != 0) return 0;
    const int64_t Hq = nq / (D * T);
    if (Hq % kv->n_head_kv != 0) return 0;
    const int64_t G = Hq / kv->n_head_kv;
    return lethe_cu_attn_shape_ok((int)D, (int)G) && n->t.ne[0] * n->t.ne[1] * n->t.ne[2] * n->t.ne[3] == nq ? (int)G : 0;
}

bool lethe_cu_supports_op(lethe_backend *be, const lethe_node *n) {
    if (n->op == LETHE_OP_NONE) return true;
    for (int i = 0; i < LETHE_MAX_SRC; i++)
        if (n->src[i] && !contiguous(&n->src[i]->t)) return false;
    if (!(f32n(n) || n->op == LETHE_OP_TOP_K) || !contiguous(&n->t)) return false;
    switch (n->op) {
    case LETHE_OP_TOP_K:   /* integer keys: the CPU's bits (cuda_topk.h) */
        return n->t.type == LETHE_I32 && f32n(n->src[0]) && n->iparams[0] >= 1 &&
               n->iparams[0] <= n->src[0]->t.ne[0] && n->src[0]->t.ne[0] <= UINT32_MAX / 2 &&
               nrows(&n->src[0]->t) <= 65535;
    case LETHE_OP_GET_ROWS:
    case LETHE_OP_MATMUL: {
        const lethe_tensor *w = &n->src[0]->t;
        if (!lethe_cu_wtype_ok((int)w->type) || w->ne[0] % 32 != 0) return false;
        if (n->op == LETHE_OP_GET_ROWS) return n->src[1] && n->src[1]->t.type == LETHE_I32;
        return f32n(n->src[1]) && n->src[1]->t.ne[0] == w->ne[0];
    }
    case LETHE_OP_RMS_NORM:
        return f32n(n->src[0]) && (!n->src[1] || f32n(n->src[1]));
    case LETHE_OP_ADD:
    case LETHE_OP_MUL:
    case LETHE_OP_SWIGLU:
        return f32n(n->src[0]) && f32n(n->src[1]);
    case LETHE_OP_ROPE:
        return f32n(n->src[0]) && n->ub && n->ub->n_tokens > 0 && n->rope.n_rot > 0 && n->rope.n_rot % 2 == 0 &&
               n->rope.n_rot <= n->src[0]->t.ne[0];
    case LETHE_OP_DMS_DECISION:
        return n->ub && n->ub->n_tokens > 0 && (n->iparams[0] == LETHE_DMS_FORCED || f32n(n->src[0]));
    case LETHE_OP_KV_STORE: {
        if (!kv_on_device(be, n) || !f32n(n->src[0]) || !f32n(n->src[1])) return false;
        const int64_t rows = (int64_t)n->ub->n_tokens * n->kv->n_head_kv;
        const lethe_tensor *k = &n->src[0]->t, *v = &n->src[1]->t;
        if (nrows(k) * k->ne[0] != rows * n->kv->head_dim || nrows(v) * v->ne[0] != rows * n->kv->head_dim) return false;
        return !n->src[2] || (f32n(n->src[2]) && nrows(&n->src[2]->t) * n->src[2]->t.ne[0] == rows);
    }
    case LETHE_OP_ATTENTION:
        /* QUEST: bounds in the managed buffer (kv_cache.c), a stream within
         * the selecting CTA's shared memory; TOVA / H2O: weights [T][Hq][L]
         * within SCORE_W_MAX (longer prefills: the CPU) */
        if (!kv_on_device(be, n) || !f32n(n->src[0]) || attn_group(n) <= 0) return false;
        if (n->kv->kmin && (!n->kv->kmin_offs || (cu_attn_lmax(n) + LETHE_KV_PAGE - 1) / LETHE_KV_PAGE > CU_QUEST_MAX_PAGES))
            return false;
        if (n->kv->score && (uint64_t)n->ub->n_tokens * (uint64_t)attn_group(n) * (uint64_t)n->kv->n_head_kv *
                                    (uint64_t)cu_score_stride(n) * 4u > SCORE_W_MAX)
            return false;
        return true;
    default:
        return false;
    }
}

/* Scratch bytes a node needs (prefill matmul operands). */
static size_t prefill_chunk_rows(int64_t N, int64_t K) {
    int64_t rows = (int64_t)(PREFILL_CHUNK_BYTES / (2 * (size_t)K));
    rows = rows < 64 ? 64 : rows;
    return (size_t)(rows < N ? rows : N);
}

/* Split-K plan of an ATTENTION node on the decode path (n_split 1 otherwise). */
static void attn_splits(const cu_ctx *c, const lethe_node *n, int G, int32_t n_blocks, bool decode, int32_t *chunk,
                        int32_t *n_split) {
    *chunk = LETHE_CU_KV_PAGE;
    *n_split = 1;
    if (!decode) return;
    /* about 4 CTAs of 128 threads per SM (the decode kernel's registers allow more) */
    const int64_t target = 4 * (int64_t)(c->sm_count > 0 ? c->sm_count : 132);
    int32_t Lmax = cu_attn_lmax(n);
    if (n->kv->kmin && Lmax > cu_quest_k(n->kv) * LETHE_KV_PAGE) Lmax = cu_quest_k(n->kv) * LETHE_KV_PAGE;   /* QUEST reads at most k pages */
    cu_attn_split_plan((int64_t)n_blocks * n->kv->n_head_kv, Lmax, target, chunk, n_split);
    (void)G;
}

static size_t attn_part_bytes(const cu_ctx *c, const lethe_node *n) {
    if (!n->kv || !n->ub || n->ub->n_tokens <= 0 || !n->ub->seq_id || !n->src[0]) return 0;
    const int G = attn_group(n);
    if (!G) return 0;
    bool decode;
    const int32_t nb = cu_attn_blocks(n, G, n->kv->kmin != NULL, &decode);
    int32_t chunk, n_split;
    attn_splits(c, n, G, nb, decode, &chunk, &n_split);
    if (n_split <= 1) return 0;
    return (size_t)nb * (size_t)n->kv->n_head_kv * (size_t)n_split * (size_t)G * (size_t)(n->kv->head_dim + 2) *
           sizeof(float);
}

size_t lethe_cu_scratch_need(const cu_ctx *c, const lethe_node *n) {
    if (n->op == LETHE_OP_ATTENTION) return attn_part_bytes(c, n);
    if (n->op == LETHE_OP_TOP_K)
        return cu_topk_scratch_bytes(nrows(&n->src[0]->t), (uint32_t)n->src[0]->t.ne[0], (uint32_t)n->iparams[0]);
    if (n->op != LETHE_OP_MATMUL) return 0;
    const lethe_tensor *w = &n->src[0]->t;
    const int64_t T = nrows(&n->src[1]->t), K = w->ne[0], N = w->ne[1];
    if (T <= LETHE_CU_GEMV_MAX_T) return lethe_cu_align(lethe_cu_gemv_act_bytes((int)w->type, K, T, c->gemv_variant));
    if (w->type == LETHE_F32) return 0;
    size_t s = lethe_cu_align((size_t)T * (size_t)K * 2);
    if (w->type != LETHE_F16 && w->type != LETHE_BF16) s += lethe_cu_align(prefill_chunk_rows(N, K) * (size_t)K * 2);
    return s;
}

/* ---------------------------------------------------------------- compute */

/* Device address of a node's data: in a buffer of this backend, an input
 * uploaded for this compute, or a weight uploaded once. */
static lethe_status ptr_of(lethe_backend *be, const lethe_node *n, void **p) {
    cu_ctx *c = be->ctx;
    const lethe_tensor *t = &n->t;
    if (t->buf && t->buf->backend == be) {
        *p = (uint8_t *)t->buf->impl + t->offs;
        return LETHE_OK;
    }
    if (n->op == LETHE_OP_NONE && t->data)
        return n->is_input ? lethe_cu_upload(c, t->data, nbytes(t), true, p) : lethe_cu_weight(c, t->data, nbytes(t), p);
    return CU_FAIL(LETHE_ERR_INTERNAL, "cuda: tensor '%s' is neither on this device nor in host memory", t->name);
}

/* Upper bound of the bytes compute() uploads for nodes [begin, end). */
static size_t upload_need(lethe_backend *be, const lethe_graph *g, int begin, int end) {
    size_t need = 0;
    for (int i = begin; i < end; i++) {
        const lethe_node *n = &g->nodes[i];
        if (n->op == LETHE_OP_NONE) continue;
        for (int s = 0; s < LETHE_MAX_SRC; s++) {
            const lethe_node *x = n->src[s];
            if (x && x->op == LETHE_OP_NONE && x->is_input && x->t.data && !(x->t.buf && x->t.buf->backend == be))
                need += lethe_cu_align(nbytes(&x->t));
        }
        if (n->ub) need += lethe_cu_align((size_t)n->ub->n_tokens * sizeof(int32_t));
        if (n->op == LETHE_OP_ROPE) need += lethe_cu_align((size_t)(n->rope.n_rot / 2) * sizeof(double));
        if (n->op == LETHE_OP_KV_STORE && n->kv && n->ub)
            need += lethe_cu_align((size_t)n->ub->n_tokens * (size_t)n->kv->n_head_kv * sizeof(lethe_cu_kv_row));
        if (n->op == LETHE_OP_ATTENTION && n->kv && n->ub) {
            /* work [blocks <= T][Hkv] + every stream's page list of the layer (a bound) */
            const lethe_kv_cache *kv = n->kv;
            size_t pages = 0;
            for (int q = 0; q < kv->n_seq; q++)
                for (int h = 0; h < kv->n_head_kv; h++)
                    pages += (size_t)lethe_kv_stream_at(kv, q, n->iparams[0], h)->n_pages;
            const size_t items = (size_t)n->ub->n_tokens * (size_t)kv->n_head_kv;
            need += lethe_cu_align(items * sizeof(lethe_cu_attn_work)) + lethe_cu_align(pages * sizeof(int32_t));
            if (kv->score)   /* the weights [T][Hq][L] */
                need += lethe_cu_align(items * (size_t)attn_group(n) * (size_t)cu_score_stride(n) * sizeof(float));
            if (kv->kmin)    /* refreshed pages, selected page lists */
                need += lethe_cu_align((size_t)cu_quest_refresh_entries(n, NULL) * 2 * sizeof(int32_t)) +
                        lethe_cu_align(items * (size_t)cu_quest_k(kv) * sizeof(int32_t));
        }
    }
    return need;
}

/* Inverse frequency of rotary pair i, computed as the CPU backend's
 * lethe_rope_inv_freq does (same double arithmetic, same libm). */
static double rope_inv_freq(const lethe_rope_params *p, int i) {
    double inv = pow((double)p->freq_base, -2.0 * i / (double)p->n_rot);
    if (p->llama3_factor > 0.0f) {
        const double factor = p->llama3_factor, lo = p->llama3_low_freq_factor, hi = p->llama3_high_freq_factor;
        const double ctx = p->llama3_orig_ctx;
        const double lo_wavelen = ctx / lo, hi_wavelen = ctx / hi;
        const double wavelen = 2.0 * M_PI / inv;
        if (wavelen > lo_wavelen) {
            inv = inv / factor;
        } else if (wavelen >= hi_wavelen) {
            const double smooth = (ctx / wavelen - lo) / (hi - lo);
            inv = (1.0 - smooth) * inv / factor + smooth * inv;
        }
    }
    if (p->freq_factors) inv /= (double)p->freq_factors[i];
    return inv * (double)p->freq_scale;
}

#define LAUNCH(call, what) CU_CHECK((call), what)

static lethe_status op_matmul(lethe_backend *be, const lethe_node *n, void *w, const float *x, float *y) {
    cu_ctx *c = be->ctx;
    const lethe_tensor *wt = &n->src[0]->t;
    const int64_t T = nrows(&n->src[1]->t), K = wt->ne[0], N = wt->ne[1];
    const int wtype = (int)wt->type;
    const size_t rb = wt->nb[1];
    if (T <= LETHE_CU_GEMV_MAX_T) {
        void *act = NULL;
        const size_t ab = lethe_cu_gemv_act_bytes(wtype, K, T, c->gemv_variant);
        if (ab) {
            lethe_status st = lethe_cu_scratch(c, ab, &act);
            if (st != LETHE_OK) return st;
        }
        LAUNCH(lethe_cu_gemv(wtype, w, rb, x, y, N, K, T, c->gemv_variant, act, c->stream), "gemv");
        return LETHE_OK;
    }
    const float one = 1.0f, zero = 0.0f;
    cublasStatus_t bs;
    if (wt->type == LETHE_F32) {
        /* column-major view: Y^T [N, T] = W^T [N, K] . X^T [K, T] */
        bs = cublasSgemm(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)N, (int)T, (int)K, &one, w, (int)K, x, (int)K, &zero,
                         y, (int)N);
        if (bs != CUBLAS_STATUS_SUCCESS) return CU_FAIL(LETHE_ERR_BACKEND, "cuda: cublasSgemm failed (%d)", (int)bs);
        return LETHE_OK;
    }
    const int bf16 = wt->type == LETHE_BF16;
    const cudaDataType_t ht = bf16 ? CUDA_R_16BF : CUDA_R_16F;
    void *scratch;
    lethe_status st = lethe_cu_scratch(c, lethe_cu_scratch_need(c, n), &scratch);
    if (st != LETHE_OK) return st;
    void *xh = scratch, *wh = (uint8_t *)scratch + lethe_cu_align((size_t)T * (size_t)K * 2);
    LAUNCH(lethe_cu_f32_to_half(x, xh, T * K, bf16, c->stream), "f32_to_half");
    const bool direct = wt->type == LETHE_F16 || wt->type == LETHE_BF16;
    const int64_t chunk = direct ? N : (int64_t)prefill_chunk_rows(N, K);
    for (int64_t r0 = 0; r0 < N; r0 += chunk) {
        const int64_t r1 = r0 + chunk < N ? r0 + chunk : N;
        const void *a = (const uint8_t *)w + (size_t)r0 * rb;
        if (!direct) {
            LAUNCH(lethe_cu_dequant_rows(wtype, w, rb, r0, r1, K, wh, 0, c->stream), "dequant_rows");
            a = wh;
        }
        bs = cublasGemmEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)(r1 - r0), (int)T, (int)K, &one, a, ht, (int)K, xh,
                          ht, (int)K, &zero, y + r0, CUDA_R_32F, (int)N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
        if (bs != CUBLAS_STATUS_SUCCESS) return CU_FAIL(LETHE_ERR_BACKEND, "cuda: cublasGemmEx failed (%d)", (int)bs);
    }
    return LETHE_OK;
}

/* The cache's buffer as the kernels address it (managed: host pointers are
 * device pointers). First use: the placement advice (cuda_backend.c). */
static lethe_status kv_view(lethe_backend *be, const lethe_kv_cache *kv, lethe_cu_kv_view *v) {
    lethe_status st = lethe_cu_kv_advise(be->ctx, kv->shared, kv->pos_offs, kv->expire_offs +
                                         (size_t)kv->n_pages * LETHE_KV_PAGE * sizeof(int32_t));
    if (st != LETHE_OK) return st;
    *v = (lethe_cu_kv_view){kv->pool, kv->pos, kv->expire, kv->page_bytes, kv->slot_bytes, kv->type == LETHE_F16,
                            kv->head_dim, kv->kmin, kv->kmax};
    return LETHE_OK;
}

static lethe_status op_kv_store(lethe_backend *be, const lethe_node *n, const float *k, const float *v,
                                const float *dec) {
    cu_ctx *c = be->ctx;
    const lethe_kv_cache *kv = n->kv;
    const size_t n_rows = (size_t)n->ub->n_tokens * (size_t)kv->n_head_kv;
    lethe_cu_kv_row *rows = malloc(n_rows * sizeof *rows);
    if (!rows) return CU_FAIL(LETHE_ERR_OOM, "cuda: KV_STORE rows");
    char err[160];
    int rc = cu_kv_store_rows(n, rows, err, sizeof err);
    void *drows = NULL;
    lethe_status st = rc == LETHE_OK ? lethe_cu_upload(c, rows, n_rows * sizeof *rows, false, &drows)
                                     : CU_FAIL((lethe_status)rc, "cuda: %s", err);
    free(rows);
    if (st != LETHE_OK) return st;
    lethe_cu_kv_view view;
    if ((st = kv_view(be, kv, &view)) != LETHE_OK) return st;
    CU_CHECK(lethe_cu_kv_store(&view, k, v, dec, drows, (int64_t)n_rows, c->stream), "kv_store");
    return LETHE_OK;
}

static lethe_status add_job(cu_ctx *c, cu_attn_job job) {
    if (c->n_jobs == c->cap_jobs) {
        const int cap = c->cap_jobs ? 2 * c->cap_jobs : 64;
        cu_attn_job *j = realloc(c->jobs, (size_t)cap * sizeof *j);
        if (!j) return CU_FAIL(LETHE_ERR_OOM, "cuda: attention jobs");
        c->jobs = j;
        c->cap_jobs = cap;
    }
    c->jobs[c->n_jobs++] = job;
    return LETHE_OK;
}

static lethe_status op_attention(lethe_backend *be, const lethe_node *n, const float *q, float *y) {
    cu_ctx *c = be->ctx;
    lethe_kv_cache *kv = n->kv;
    const int G = attn_group(n);
    cu_attn_plan plan;
    char err[160];
    const bool quest = kv->kmin != NULL;
    int rc = cu_attn_plan_build(n, G, quest, &plan, err, sizeof err);
    if (rc != LETHE_OK) return CU_FAIL((lethe_status)rc, "cuda: %s", err);
    void *dwork = NULL, *dpl = NULL, *dpos = NULL, *part = NULL;
    int32_t chunk, n_split;
    attn_splits(c, n, G, plan.n_blocks, plan.decode, &chunk, &n_split);
    lethe_status st = lethe_cu_upload(c, plan.work, (size_t)plan.n_blocks * kv->n_head_kv * sizeof *plan.work, false,
                                      &dwork);
    if (st == LETHE_OK) st = lethe_cu_upload(c, plan.plists, plan.n_plist * sizeof(int32_t), false, &dpl);
    if (st == LETHE_OK)
        st = lethe_cu_upload(c, n->ub->pos, (size_t)n->ub->n_tokens * sizeof(int32_t), true, &dpos);
    const size_t pbytes = attn_part_bytes(c, n);
    if (st == LETHE_OK && pbytes) st = lethe_cu_scratch(c, pbytes, &part);
    const uint64_t reads = plan.reads;
    const int32_t n_blocks = plan.n_blocks;
    const bool decode = plan.decode;
    const size_t n_work = (size_t)plan.n_blocks * kv->n_head_kv;
    cu_attn_plan_free(&plan);   /* the upload copied the tables */
    if (st != LETHE_OK) return st;
    lethe_cu_kv_view view;
    if ((st = kv_view(be, kv, &view)) != LETHE_OK) return st;
    if (quest) {
        /* bounds of the pages KV_STORE wrote, then each (token, KV head)'s pages */
        const int32_t n_ref = cu_quest_refresh_entries(n, NULL);
        if (n_ref > 0) {
            int32_t *ent = malloc((size_t)n_ref * 2 * sizeof(int32_t));
            if (!ent) return CU_FAIL(LETHE_ERR_OOM, "cuda: QUEST refresh list");
            cu_quest_refresh_entries(n, ent);
            void *dent = NULL;
            st = lethe_cu_upload(c, ent, (size_t)n_ref * 2 * sizeof(int32_t), false, &dent);
            free(ent);
            if (st != LETHE_OK) return st;
            CU_CHECK(lethe_cu_quest_bounds(&view, dent, n_ref, c->stream), "quest_bounds");
        }
        void *dsel = NULL;
        const int32_t k = cu_quest_k(kv);
        if ((st = lethe_cu_upload_space(c, n_work * (size_t)k * sizeof(int32_t), &dsel, NULL)) != LETHE_OK) return st;
        const int sel_base = (int)((int32_t *)dsel - (int32_t *)dpl);   /* after the page lists, in the same buffer */
        CU_CHECK(lethe_cu_quest_select(&view, q, dwork, (int)n_work, dpl, sel_base, k, dpos, kv->n_head_kv, G,
                                       c->stream), "quest_select");
        if ((st = add_job(c, (cu_attn_job){n, (size_t)((uint8_t *)dwork - c->up_dev),
                                           n_work * sizeof(lethe_cu_attn_work), 0, true})) != LETHE_OK)
            return st;
    }
    float *wts = NULL;
    int32_t wstride = 0;
    if (kv->score) {   /* TOVA / H2O: the weights, NaN bytes where no kernel writes (cu_score_weight: none) */
        wstride = cu_score_stride(n);
        const size_t bytes = (size_t)n->ub->n_tokens * (size_t)kv->n_head_kv * (size_t)G * (size_t)wstride * 4;
        size_t off;
        if ((st = lethe_cu_upload_space(c, bytes, (void **)&wts, &off)) != LETHE_OK) return st;
        CU_CHECK(cudaMemsetAsync(wts, 0xFF, bytes, c->stream), "cudaMemsetAsync (weights)");
        if ((st = add_job(c, (cu_attn_job){n, off, bytes, wstride, false})) != LETHE_OK) return st;
    }
    CU_CHECK(lethe_cu_attention(&view, q, y, dwork, n_blocks, decode, dpl, dpos, kv->n_head_kv, G, n->fparams[0],
                                chunk, n_split, part, wts, wstride, c->stream), "attention");
    if (!quest) __atomic_fetch_add(&kv->reads, reads, __ATOMIC_RELAXED);   /* as the CPU kernel counts (QUEST: after the sync) */
    return LETHE_OK;
}

/* After the compute's sync: fold the weights, count QUEST's reads. */
static lethe_status finish_jobs(cu_ctx *c) {
    for (int i = 0; i < c->n_jobs; i++) {
        const cu_attn_job *j = &c->jobs[i];
        CU_CHECK(cudaMemcpy(c->up_host + j->off, c->up_dev + j->off, j->bytes, cudaMemcpyDeviceToHost),
                 "cudaMemcpy (attention results)");
        lethe_kv_cache *kv = j->n->kv;
        if (j->quest) {   /* the KV reads: the selected pages' slots, as the CPU counts them */
            const lethe_cu_attn_work *w = (const lethe_cu_attn_work *)(c->up_host + j->off);
            uint64_t reads = 0;
            for (size_t k = 0; k < j->bytes / sizeof *w; k++) reads += (uint64_t)w[k].L;
            __atomic_fetch_add(&kv->reads, reads, __ATOMIC_RELAXED);
        } else {
            cu_score_fold(j->n, (const float *)(c->up_host + j->off), j->stride);
        }
    }
    c->n_jobs = 0;
    return LETHE_OK;
}

static lethe_status run_node(lethe_backend *be, lethe_node *n, bool *used_err) {
    cu_ctx *c = be->ctx;
    void *src[LETHE_MAX_SRC] = {0}, *dst;
    lethe_status st;
    for (int s = 0; s < LETHE_MAX_SRC; s++)
        if (n->src[s] && (st = ptr_of(be, n->src[s], &src[s])) != LETHE_OK) return st;
    if ((st = ptr_of(be, n, &dst)) != LETHE_OK) return st;
    float *y = dst;
    const lethe_tensor *a = n->src[0] ? &n->src[0]->t : NULL;
    switch (n->op) {
    case LETHE_OP_GET_ROWS: {
        const lethe_node *ids = n->src[1];
        const int64_t R = ids->t.ne[0] * ids->t.ne[1] * ids->t.ne[2] * ids->t.ne[3];
        if (ids->op == LETHE_OP_NONE && ids->t.data) {   /* bad ids: a status, not a read out of bounds */
            const int32_t *id = ids->t.data;
            for (int64_t i = 0; i < R; i++)
                if (id[i] < 0 || id[i] >= a->ne[1])
                    return CU_FAIL(LETHE_ERR_INVALID_ARG, "cuda: get_rows id %d of '%s' is outside [0, %lld)", id[i],
                                   ids->t.name, (long long)a->ne[1]);
        }
        *used_err = true;
        LAUNCH(lethe_cu_get_rows((int)a->type, src[0], a->nb[1], a->ne[1], a->ne[0], src[1], R, y, c->d_err,
                                 c->stream), "get_rows");
        return LETHE_OK;
    }
    case LETHE_OP_MATMUL:
        return op_matmul(be, n, src[0], src[1], y);
    case LETHE_OP_RMS_NORM:
        LAUNCH(lethe_cu_rms_norm(src[0], src[1], y, nrows(a), a->ne[0], n->fparams[0], c->stream), "rms_norm");
        return LETHE_OK;
    case LETHE_OP_ADD:
    case LETHE_OP_MUL: {
        const bool bcast = nrows(&n->src[1]->t) == 1 && nrows(a) != 1;
        LAUNCH(lethe_cu_binary(n->op == LETHE_OP_MUL, src[0], src[1], y, nrows(a), a->ne[0], bcast, c->stream),
               "binary");
        return LETHE_OK;
    }
    case LETHE_OP_SWIGLU:
        LAUNCH(lethe_cu_swiglu(src[0], src[1], y, nrows(a) * a->ne[0], c->stream), "swiglu");
        return LETHE_OK;
    case LETHE_OP_ROPE: {
        const lethe_rope_params *p = &n->rope;
        const int half = p->n_rot / 2;
        double invf[512];
        if (half > (int)(sizeof invf / sizeof invf[0]))
            return CU_FAIL(LETHE_ERR_UNSUPPORTED, "cuda: rope over %d dims", p->n_rot);
        for (int i = 0; i < half; i++) invf[i] = rope_inv_freq(p, i);
        void *dpos, *dinv;
        /* positions: once per compute; the table lives on this stack frame */
        if ((st = lethe_cu_upload(c, n->ub->pos, (size_t)n->ub->n_tokens * sizeof(int32_t), true, &dpos)) != LETHE_OK ||
            (st = lethe_cu_upload(c, invf, (size_t)half * sizeof(double), false, &dinv)) != LETHE_OK)
            return st;
        const int64_t D = a->ne[0], T = n->ub->n_tokens, H = (a->ne[0] * nrows(a)) / (D * T);
        LAUNCH(lethe_cu_rope(src[0], y, T, H, D, p->n_rot, p->mode == LETHE_ROPE_NEOX, dpos, dinv, n->iparams[0],
                             c->stream), "rope");
        return LETHE_OK;
    }
    case LETHE_OP_DMS_DECISION: {
        void *dpos;
        if ((st = lethe_cu_upload(c, n->ub->pos, (size_t)n->ub->n_tokens * sizeof(int32_t), true, &dpos)) != LETHE_OK)
            return st;
        const int mode = n->iparams[0];
        const int64_t xw = a ? a->ne[0] : 0;
        LAUNCH(lethe_cu_dms_decision(mode == LETHE_DMS_FORCED ? 2 : mode == LETHE_DMS_FROM_Q ? 0 : 1, src[0], xw, xw, y,
                                     n->ub->n_tokens, n->iparams[1], n->iparams[2], n->iparams[3], n->fparams[0],
                                     n->fparams[1], n->fparams[2], n->iparams[4], dpos, c->stream), "dms_decision");
        return LETHE_OK;
    }
    case LETHE_OP_TOP_K: {
        void *scratch = NULL;
        const size_t need = lethe_cu_scratch_need(c, n);
        if (need && (st = lethe_cu_scratch(c, need, &scratch)) != LETHE_OK) return st;
        LAUNCH(lethe_cu_top_k(src[0], dst, nrows(a), a->ne[0], n->iparams[0], scratch, c->stream), "top_k");
        return LETHE_OK;
    }
    case LETHE_OP_KV_STORE:
        return op_kv_store(be, n, src[0], src[1], src[2]);
    case LETHE_OP_ATTENTION:
        return op_attention(be, n, src[0], y);
    default:
        return CU_FAIL(LETHE_ERR_UNSUPPORTED, "cuda: cannot compute %s", n->t.name);
    }
}

lethe_status lethe_cu_compute(lethe_backend *be, lethe_graph *g, int begin, int end, lethe_abort_fn abort_fn,
                              void *abort_user) {
    cu_ctx *c = be->ctx;
    CU_CHECK(cudaSetDevice(c->device), "cudaSetDevice");
    lethe_status st = lethe_cu_upload_reserve(c, upload_need(be, g, begin, end));
    if (st != LETHE_OK) return st;
    bool used_err = false;
    c->n_jobs = 0;
    lethe_cu_clock_begin(c);
    CU_CHECK(cudaMemsetAsync(c->d_err, 0, sizeof(int), c->stream), "cudaMemsetAsync");
    for (int i = begin; i < end && st == LETHE_OK; i++) {
        lethe_node *n = &g->nodes[i];
        if (n->op == LETHE_OP_NONE) continue;
        if (abort_fn && abort_fn(abort_user)) {
            st = CU_FAIL(LETHE_ERR_ABORTED, "cuda: aborted");
            break;
        }
        if (!lethe_cu_supports_op(be, n))
            st = CU_FAIL(LETHE_ERR_UNSUPPORTED, "cuda: cannot compute node %d '%s'", i, n->t.name);
        else
            st = run_node(be, n, &used_err);
    }
    /* nothing stays in flight after compute(), also after a failure: the
     * staging and upload buffers are reused by the next call */
    lethe_cu_clock_end(c);
    cudaError_t e = cudaStreamSynchronize(c->stream);
    if (e == cudaSuccess) lethe_cu_clock_collect(c);
    else c->ev_open = false;
    if (st != LETHE_OK) return st;
    if (e != cudaSuccess)
        return CU_FAIL(LETHE_ERR_BACKEND, "cuda: kernels of nodes %d..%d failed: %s (%s)", begin, end - 1,
                       cudaGetErrorString(e), cudaGetErrorName(e));
    if (used_err) {
        int err = 0;
        CU_CHECK(cudaMemcpy(&err, c->d_err, sizeof err, cudaMemcpyDeviceToHost), "read error flag");
        if (err) return CU_FAIL(LETHE_ERR_INVALID_ARG, "cuda: get_rows met an id outside its table");
    }
    if ((st = finish_jobs(c)) != LETHE_OK) return st;
    CU_LOG(LETHE_LOG_DEBUG, "cuda: nodes [%d, %d) done", begin, end);
    return LETHE_OK;
}
