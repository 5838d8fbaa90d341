/* cuda_ops.c — which nodes the CUDA backend runs (supports_op) and the
 * launch of a node range (compute): one kernel (or cuBLAS call) per node on
 * the backend's stream, one synchronization per range.
 *
 * Shapes as in core/graph.h (outermost first). Matmul: T <= 8 tokens take
 * the GEMV kernel (weights read once for every token; quantized weights
 * against q8 activations quantized into scratch first, k_gemv.cu); more take
 * cuBLAS on f16/bf16 operands (quantized weights dequantized chunk by chunk
 * into scratch), f32 weights cublasSgemm.
 *
 * compute() builds the range's launch plan (cuda_plan.h: every launch and
 * its arguments, the per-step tables in one staging buffer), uploads what
 * changed in the KV cache's page lists into their device mirror
 * (cuda_plist.h), copies the staging bytes once, then either launches the plan's kernels one by one or,
 * for a decode step of the whole graph with LETHE_CUDA_GRAPHS=1, replays a
 * captured CUDA graph of the same launches (cuda_graph.c).
 *
 * Fused decode passes (LETHE_CUDA_FUSE, on unless "0"): the plan folds a
 * residual ADD into the next RMS_NORM's launch and lets RMS_NORM / SWIGLU
 * write the q8 blocks their GEMVs read (cuda_plan.c, cuda_fuse.cuh).
 *
 * KV_STORE and ATTENTION run here when the context's KV cache lives in this
 * backend's managed buffer (buffer_alloc_shared): the host resolves slots and
 * page lists from its bookkeeping (cuda_kv_meta.h), stages those small
 * tables, and the kernels (k_attention.cu) store and attend in place.
 * Score policies: TOVA / H2O (kv->score, host memory) get each key's
 * softmax weight from the kernels, copied back by the plan and folded into
 * the scores after the compute's sync, as the Vulkan backend does; QUEST
 * (kv->kmin / kmax in the managed buffer, after expire) refreshes the bounds
 * and selects the pages on the device, then attends only those (decode
 * plan, one token per block); its KV reads are counted after the sync from
 * the work entries the plan copied back (cu_plan_finish). Both are part of
 * the launch plan, so a decode step with them replays as a CUDA graph too.
 */
#include "cuda_internal.h"
#include "cuda_plan.h"

#include <string.h>

#define PREFILL_CHUNK_BYTES ((size_t)64 << 20)   /* dequantized weight rows per cuBLAS call */
#define SCORE_W_MAX ((uint64_t)32 << 20)          /* TOVA / H2O weights of one ATTENTION node (plain plan) */
#define CU_QUEST_MAX_PAGES 4096                   /* = cuda_attn.cuh's (the selecting CTA's shared memory) */

/* --------------------------------------------------- tensors, module-side */

static bool contiguous(const lethe_tensor *t) {
    const size_t rb = cu_row_bytes(t->type, t->ne[0]);
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

bool lethe_cu_supports_op(lethe_backend *be, const lethe_node *n) {
    if (n->op == LETHE_OP_NONE) return true;
    for (int i = 0; i < LETHE_MAX_SRC; i++)
        if (n->src[i] && !contiguous(&n->src[i]->t)) return false;
    if (!(f32n(n) || n->op == LETHE_OP_TOP_K) || !contiguous(&n->t)) return false;
    switch (n->op) {
    case LETHE_OP_TOP_K:   /* integer keys: the CPU's bits (cuda_topk.h, k_topk.cu) */
        return n->t.type == LETHE_I32 && f32n(n->src[0]) && n->iparams[0] >= 1 &&
               n->iparams[0] <= n->src[0]->t.ne[0] && n->src[0]->t.ne[0] <= UINT32_MAX / 2 &&
               cu_nrows(&n->src[0]->t) <= 65535;
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
        if (cu_nrows(k) * k->ne[0] != rows * n->kv->head_dim || cu_nrows(v) * v->ne[0] != rows * n->kv->head_dim) return false;
        return !n->src[2] || (f32n(n->src[2]) && cu_nrows(&n->src[2]->t) * n->src[2]->t.ne[0] == rows);
    }
    case LETHE_OP_ATTENTION:
        /* QUEST: bounds in the managed buffer (kv_cache.c), a stream within
         * the selecting CTA's shared memory; TOVA / H2O: weights [T][Hq][L]
         * within SCORE_W_MAX (longer prefills: the CPU; a bucketed plan's
         * stride may double it) */
        if (!kv_on_device(be, n) || !f32n(n->src[0]) || cu_attn_group(n) <= 0) return false;
        if (n->kv->kmin && (!n->kv->kmin_offs || (cu_attn_lmax(n) + LETHE_KV_PAGE - 1) / LETHE_KV_PAGE > CU_QUEST_MAX_PAGES))
            return false;
        if (n->kv->score && (uint64_t)n->ub->n_tokens * (uint64_t)cu_attn_group(n) * (uint64_t)n->kv->n_head_kv *
                                    (uint64_t)cu_score_stride(n) * 4u > SCORE_W_MAX)
            return false;
        return true;
    default:
        return false;
    }
}

size_t lethe_cu_scratch_need(const cu_ctx *c, const lethe_node *n) {
    const cu_plan_env env = {NULL, NULL, c->sm_count, 0, NULL, NULL, NULL, c->gemv_variant, lethe_cu_gemv_act_bytes,
                             c->prefill_tc, 0};
    return cu_plan_scratch_need(n, &env, c->graphs);
}

/* ------------------------------------------------- the plan's services */

/* Device address of a node's data: in a buffer of this backend, or a
 * weight uploaded once (graph inputs are staged by the plan itself). */
static int env_resolve(void *user, const lethe_node *n, uint64_t *dev) {
    lethe_backend *be = user;
    cu_ctx *c = be->ctx;
    const lethe_tensor *t = &n->t;
    if (t->buf && t->buf->backend == be) {
        *dev = (uint64_t)(uintptr_t)((uint8_t *)t->buf->impl + t->offs);
        return LETHE_OK;
    }
    if (n->op == LETHE_OP_NONE && t->data && !n->is_input) {
        void *d = NULL;
        const lethe_status st = lethe_cu_weight(c, t->data, cu_nbytes(t), &d);
        *dev = (uint64_t)(uintptr_t)d;
        return st;
    }
    return CU_FAIL(LETHE_ERR_INTERNAL, "cuda: tensor '%s' is neither on this device nor in host memory", t->name);
}

static int env_scratch(void *user, size_t bytes, uint64_t *dev) {
    lethe_backend *be = user;
    void *p = NULL;
    const lethe_status st = lethe_cu_scratch(be->ctx, bytes, &p);
    *dev = (uint64_t)(uintptr_t)p;
    return st;
}

/* The cache's buffer as the kernels address it (managed: host pointers are
 * device pointers). First use: the placement advice (cuda_backend.c). */
static int env_kv_prepare(void *user, const lethe_kv_cache *kv) {
    lethe_backend *be = user;
    return lethe_cu_kv_advise(be->ctx, kv->shared, kv->pos_offs,
                              kv->expire_offs + (size_t)kv->n_pages * LETHE_KV_PAGE * sizeof(int32_t));
}

/* ------------------------------------------------------------- launches */

static const char *const k_kind_name[] = {
    [CU_K_CLEAR_ERR] = "clear error flag", [CU_K_GET_ROWS] = "get_rows", [CU_K_RMS_NORM] = "rms_norm",
    [CU_K_BINARY] = "binary", [CU_K_SWIGLU] = "swiglu", [CU_K_ROPE] = "rope", [CU_K_DMS] = "dms_decision",
    [CU_K_GEMV] = "gemv", [CU_K_MATMUL] = "matmul (cuBLAS)", [CU_K_KV_STORE] = "kv_store",
    [CU_K_ATTENTION] = "attention", [CU_K_FILL] = "fill (weights)", [CU_K_COPY_BACK] = "copy back",
    [CU_K_QUEST_BOUNDS] = "quest_bounds", [CU_K_QUEST_SELECT] = "quest_select", [CU_K_TOP_K] = "top_k",
    [CU_K_NORM_FUSED] = "rms_norm (fused)", [CU_K_SWIGLU_Q8] = "swiglu (fused q8)",
};

/* Prefill matmul: cuBLAS on f16/bf16 operands (quantized weights
 * dequantized chunk by chunk into scratch), f32 weights cublasSgemm. */
static lethe_status run_matmul(cu_ctx *c, const cu_launch *l, uint8_t *up) {
    const void *w = cu_arg(l, 0, up);
    const float *x = cu_arg(l, 1, up);
    float *y = cu_arg(l, 2, up);
    uint8_t *scratch = cu_arg(l, 3, up);
    const int wtype = (int)l->i[0];
    const size_t rb = (size_t)l->i[1];
    const int64_t N = l->i[2], K = l->i[3], T = l->i[4];
    const float one = 1.0f, zero = 0.0f;
    cublasStatus_t bs;
    if (wtype == LETHE_F32) {
        /* column-major view: Y^T [N, T] = W^T [N, K] . X^T [K, T] */
        bs = cublasSgemm(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)N, (int)T, (int)K, &one, w, (int)K, x, (int)K, &zero,
                         y, (int)N);
        if (bs != CUBLAS_STATUS_SUCCESS) return CU_FAIL(LETHE_ERR_BACKEND, "cuda: cublasSgemm failed (%d)", (int)bs);
        return LETHE_OK;
    }
    const int bf16 = wtype == LETHE_BF16;
    const cudaDataType_t ht = bf16 ? CUDA_R_16BF : CUDA_R_16F;
    void *xh = scratch, *wh = scratch + lethe_cu_align((size_t)T * (size_t)K * 2);
    CU_CHECK(lethe_cu_f32_to_half(x, xh, T * K, bf16, c->stream), "f32_to_half");
    const bool direct = wtype == LETHE_F16 || wtype == LETHE_BF16;
    int64_t chunk = N;
    if (!direct) {
        chunk = (int64_t)(PREFILL_CHUNK_BYTES / (2 * (size_t)K));
        chunk = chunk < 64 ? 64 : chunk;
    }
    for (int64_t r0 = 0; r0 < N; r0 += chunk) {
        const int64_t r1 = r0 + chunk < N ? r0 + chunk : N;
        const void *a = (const uint8_t *)w + (size_t)r0 * rb;
        if (!direct) {
            CU_CHECK(lethe_cu_dequant_rows(wtype, w, rb, r0, r1, K, wh, 0, c->stream), "dequant_rows");
            a = wh;
        }
        bs = cublasGemmEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)(r1 - r0), (int)T, (int)K, &one, a, ht, (int)K, xh,
                          ht, (int)K, &zero, y + r0, CUDA_R_32F, (int)N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
        if (bs != CUBLAS_STATUS_SUCCESS) return CU_FAIL(LETHE_ERR_BACKEND, "cuda: cublasGemmEx failed (%d)", (int)bs);
    }
    return LETHE_OK;
}

static cudaError_t launch_one(cu_ctx *c, const cu_launch *l, uint8_t *up) {
#define A(s) cu_arg(l, (s), up)
    const int64_t *i = l->i;
    cudaStream_t s = c->stream;
    switch (l->kind) {
    case CU_K_CLEAR_ERR:
        return cudaMemsetAsync(A(0), 0, sizeof(int), s);
    case CU_K_GET_ROWS:
        return lethe_cu_get_rows((int)i[0], A(0), (size_t)i[1], i[2], i[3], A(1), i[4], A(2), A(3), s);
    case CU_K_RMS_NORM:
        return lethe_cu_rms_norm(A(0), A(1), A(2), i[0], i[1], l->f[0], s);
    case CU_K_BINARY:
        return lethe_cu_binary((int)i[0], A(0), A(1), A(2), i[1], i[2], (int)i[3], s);
    case CU_K_SWIGLU:
        return lethe_cu_swiglu(A(0), A(1), A(2), i[0], s);
    case CU_K_ROPE:
        return lethe_cu_rope(A(0), A(1), i[0], i[1], i[2], (int)i[3], (int)i[4], A(2), A(3), (int)i[5], s);
    case CU_K_DMS:
        return lethe_cu_dms_decision((int)i[0], A(0), i[1], i[1], A(1), i[2], (int)i[3], (int)i[4], (int)i[5],
                                     l->f[0], l->f[1], l->f[2], (int)i[6], A(2), s);
    case CU_K_GEMV:
        if (i[6])   /* a fused launch already wrote x's q8 blocks to A(3) */
            return lethe_cu_gemv_xq((int)i[0], A(0), (size_t)i[1], A(3), A(2), i[2], i[3], i[4], (int)i[5], s);
        return lethe_cu_gemv((int)i[0], A(0), (size_t)i[1], A(1), A(2), i[2], i[3], i[4], (int)i[5], A(3), s);
    case CU_K_NORM_FUSED:
        return lethe_cu_norm_fused(A(0), A(1), A(2), A(3), A(4), A(5), i[0], i[1], l->f[0], s);
    case CU_K_SWIGLU_Q8:
        return lethe_cu_swiglu_q8(A(0), A(1), A(2), A(3), i[0], s);
    case CU_K_KV_STORE: {
        const lethe_cu_kv_view v = {A(4), NULL, A(5), 0, (size_t)i[2], (int)i[3], (int)i[1], NULL, NULL};
        return lethe_cu_kv_store(&v, A(0), A(1), A(2), A(3), i[0], s);
    }
    case CU_K_ATTENTION: {
        const lethe_cu_kv_view v = {A(7), A(8), A(9), (size_t)i[5], (size_t)i[6], (int)i[7], (int)i[8], NULL, NULL};
        return lethe_cu_attention(&v, A(0), A(1), A(2), (int)i[0], (int)i[1], A(3), A(4), (int)i[2], (int)i[3],
                                  l->f[0], A(5), (int)i[4], A(6), A(10), (int)i[9], s);
    }
    case CU_K_FILL:
        return cudaMemsetAsync(A(0), (int)i[1], (size_t)i[0], s);
    case CU_K_COPY_BACK:   /* to the same offset of the pinned staging buffer: a memcpy node when captured */
        return cudaMemcpyAsync(c->up_host + l->p[0], A(0), (size_t)i[0], cudaMemcpyDeviceToHost, s);
    case CU_K_QUEST_BOUNDS: {
        const lethe_cu_kv_view v = {A(0), NULL, NULL, (size_t)i[1], (size_t)i[2], (int)i[3], (int)i[4], A(1), A(2)};
        return lethe_cu_quest_bounds(&v, A(4), A(5), A(3), (int)i[0], (int)i[5], s);
    }
    case CU_K_TOP_K:
        return lethe_cu_top_k(A(0), A(1), i[0], i[1], (int)i[2], A(2), s);
    case CU_K_QUEST_SELECT: {
        const lethe_cu_kv_view v = {NULL, A(4), NULL, 0, 0, 0, (int)i[5], A(5), A(6)};
        return lethe_cu_quest_select(&v, A(0), A(1), (int)i[0], A(2), (int)i[1], (int)i[2], A(3), (int)i[3], (int)i[4],
                                     s);
    }
    default:
        return cudaErrorInvalidValue;
    }
#undef A
}

lethe_status lethe_cu_enqueue(cu_ctx *c, const cu_plan *p) {
    if (p->stage_size)
        CU_CHECK(cudaMemcpyAsync(c->up_dev, c->up_host, p->stage_size, cudaMemcpyHostToDevice, c->stream),
                 "cudaMemcpyAsync (staging)");
    for (int k = 0; k < p->n_launches; k++) {
        const cu_launch *l = &p->launches[k];
        if (l->kind == CU_K_MATMUL) {
            const lethe_status st = run_matmul(c, l, c->up_dev);
            if (st != LETHE_OK) return st;
            continue;
        }
        CU_CHECK(launch_one(c, l, c->up_dev), k_kind_name[l->kind]);
    }
    return LETHE_OK;
}

/* ---------------------------------------------------------------- compute */

/* Does [begin, end) hold every op of the graph (no CPU fallback segment)? */
static bool whole_graph(const lethe_graph *g, int begin, int end) {
    for (int i = 0; i < g->n_nodes; i++)
        if ((i < begin || i >= end) && g->nodes[i].op != LETHE_OP_NONE) return false;
    return true;
}

lethe_status lethe_cu_compute(lethe_backend *be, lethe_graph *g, int begin, int end, lethe_abort_fn abort_fn,
                              void *abort_user) {
    cu_ctx *c = be->ctx;
    CU_CHECK(cudaSetDevice(c->device), "cudaSetDevice");
    if (abort_fn && abort_fn(abort_user)) return CU_FAIL(LETHE_ERR_ABORTED, "cuda: aborted");
    for (int i = begin; i < end; i++)
        if (g->nodes[i].op != LETHE_OP_NONE && !lethe_cu_supports_op(be, &g->nodes[i]))
            return CU_FAIL(LETHE_ERR_UNSUPPORTED, "cuda: cannot compute node %d '%s'", i, g->nodes[i].t.name);
    /* a decode step of the whole graph may replay a CUDA graph: its plan is bucketed */
    const bool graph = c->graphs && whole_graph(g, begin, end) && cu_plan_decode_shaped(g, begin, end);
    const cu_plan_env env = {be, be, c->sm_count, (uint64_t)(uintptr_t)c->d_err, env_resolve, env_scratch,
                             env_kv_prepare, c->gemv_variant, lethe_cu_gemv_act_bytes, c->prefill_tc, c->fuse};
    const cu_plist_env pl = {be, lethe_cu_plist_env};
    cu_plan plan;
    char err[200];
    int rc = cu_plan_build_pl(&plan, &env, &pl, g, begin, end, graph, err, sizeof err);
    if (rc != LETHE_OK) return err[0] ? CU_FAIL((lethe_status)rc, "cuda: %s", err) : (lethe_status)rc;
    lethe_status st = lethe_cu_upload_reserve(c, plan.up_size);
    if (st != LETHE_OK) {
        cu_plan_free(&plan);
        return st;
    }
    if (plan.stage_size) memcpy(c->up_host, plan.stage, plan.stage_size);
    bool used_err = false;
    for (int k = 0; k < plan.n_launches; k++) used_err |= plan.launches[k].kind == CU_K_GET_ROWS;
    lethe_cu_clock_begin(c);
    bool done = false;
    /* the page lists that changed, into the mirrors' arenas (outside any graph: their size varies) */
    st = lethe_cu_plist_apply(c, &plan);
    if (st == LETHE_OK && graph && plan.capturable) st = lethe_cu_graph_run(c, &plan, &done);
    if (st == LETHE_OK && !done) st = lethe_cu_enqueue(c, &plan);
    /* nothing stays in flight after compute(), also after a failure: the
     * staging and upload buffers are reused by the next call */
    lethe_cu_clock_end(c);
    cudaError_t e = cudaStreamSynchronize(c->stream);
    if (e == cudaSuccess) lethe_cu_clock_collect(c);
    else c->ev_open = false;
    if (st == LETHE_OK && e == cudaSuccess && used_err) {
        int flag = 0;
        if (cudaMemcpy(&flag, c->d_err, sizeof flag, cudaMemcpyDeviceToHost) != cudaSuccess)
            st = CU_FAIL(LETHE_ERR_BACKEND, "cuda: read error flag failed");
        else if (flag)
            st = CU_FAIL(LETHE_ERR_INVALID_ARG, "cuda: get_rows met an id outside its table");
    }
    /* the host's part after the sync, on what the plan's COPY_BACK launches
     * brought: KV reads (QUEST's from its rewritten work entries), the
     * TOVA / H2O fold into kv->score */
    if (st == LETHE_OK && e == cudaSuccess) cu_plan_finish(&plan, c->up_host);
    if (st == LETHE_OK && e == cudaSuccess) st = lethe_cu_plist_verify(c, &plan);
    cu_plan_free(&plan);
    if (st != LETHE_OK) return st;
    if (e != cudaSuccess)
        return CU_FAIL(LETHE_ERR_BACKEND, "cuda: kernels of nodes %d..%d failed: %s (%s)", begin, end - 1,
                       cudaGetErrorString(e), cudaGetErrorName(e));
    CU_LOG(LETHE_LOG_DEBUG, "cuda: nodes [%d, %d) done", begin, end);
    return LETHE_OK;
}
