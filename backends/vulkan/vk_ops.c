/* vk_ops.c — the Vulkan backend's graph side: which nodes it runs
 * (supports_op) and the recording of a node range into one command buffer.
 *
 * compute() walks the range twice with the same code: a dry pass counts
 * dispatches and upload bytes (and uploads weights met for the first time),
 * then the recording pass writes inputs and RoPE tables into the upload
 * buffer and records every dispatch, each followed by a compute->compute
 * barrier. One submit and one fence wait per range.
 *
 * Shapes as in graph.h (outermost first); every shader's push-constant
 * block mirrors the struct passed here (shaders/, one file per op family).
 */
#include "vk_internal.h"
#include "cpu_kernels.h"   /* lethe_rope_inv_freq: the CPU's exact frequencies */
#include "kv_cache.h"

#include <math.h>
#include <string.h>

typedef struct rec {
    vk_ctx *c;
    lethe_backend *be;
    bool dry;                 /* pass 1: count only                              */
    uint32_t n_dispatch;      /* dry: dispatches counted; record: next set index */
    size_t upload_need;       /* dry: bytes of the upload buffer needed          */
    size_t act_need;          /* dry: bytes of q8 activation scratch needed      */
    const lethe_node *q8_of;  /* the node whose q8 blocks the scratch holds now  */
    VkDescriptorSet *sets;    /* record: [n_dispatch] allocated after pass 1     */
    VkDescriptorSet kv_set;   /* set 1 of the next dispatch (a *_split pipeline)  */
    /* RoPE cos/sin table shared by every ROPE node of the range with the same
     * parameters and micro-batch (q and k of every layer) */
    bool rope_have;
    const lethe_ubatch *rope_ub;
    lethe_rope_params rope_p;
    size_t rope_off;
} rec;

/* A storage-buffer binding: `buf` bound at `boff` (aligned) for `range`
 * bytes; the data of interest starts `rem` bytes into it. */
typedef struct vk_arg {
    VkBuffer buf;
    VkDeviceSize boff, range;
    uint32_t rem;
} vk_arg;

static size_t align_to(size_t x, size_t a) { return (x + a - 1) / a * a; }

/* Bytes [byte0, byte0 + nbytes) of node n's tensor as a binding. */
static lethe_status arg_of(rec *r, const lethe_node *n, size_t byte0, size_t nbytes, vk_arg *a) {
    vk_ctx *c = r->c;
    const lethe_tensor *t = &n->t;
    const size_t total = lethe_tensor_nbytes(t);
    VkBuffer buf;
    size_t base, bufsize;
    if (t->buf && t->buf->backend == r->be) {
        const vk_buf *vb = t->buf->impl;
        buf = vb->buf;
        base = t->offs;
        bufsize = vb->size;
    } else if (n->op == LETHE_OP_NONE && t->data && n->is_input) {
        /* an input: copied into the upload buffer each compute */
        size_t off = align_to(r->dry ? r->upload_need : c->upload_used, c->align);
        if (r->dry) {
            r->upload_need = off + align_to(total, 16);
            *a = (vk_arg){c->dummy.buf, 0, 16, 0};
            return LETHE_OK;
        }
        LETHE_ASSERT(off + total <= c->upload.size);
        memcpy((uint8_t *)c->upload.map + off, t->data, total);
        c->upload_used = off + align_to(total, 16);
        buf = c->upload.buf;
        base = off;
        bufsize = c->upload.size;
    } else if (n->op == LETHE_OP_NONE && t->data) {
        lethe_status st = lethe_vk_weight(c, t->data, total, &buf);   /* uploaded once */
        if (st != LETHE_OK) return st;
        base = 0;
        bufsize = align_to(total, 16);
    } else {
        return lethe_fail(LETHE_ERR_INTERNAL, "vulkan: tensor '%s' is neither on this device nor in host memory",
                          t->name);
    }
    if (r->dry) {
        *a = (vk_arg){c->dummy.buf, 0, 16, 0};
        return LETHE_OK;
    }
    size_t start = base + byte0;
    a->buf = buf;
    a->boff = start / c->align * c->align;
    a->rem = (uint32_t)(start - a->boff);
    a->range = LETHE_MIN(align_to(a->rem + nbytes, 4), bufsize - a->boff);
    if (a->range > c->max_range)
        return lethe_fail(LETHE_ERR_INTERNAL, "vulkan: binding of %zu bytes of '%s' exceeds the device's %zu",
                          (size_t)a->range, t->name, c->max_range);
    return LETHE_OK;
}

static lethe_status arg_all(rec *r, const lethe_node *n, vk_arg *a) {
    return arg_of(r, n, 0, lethe_tensor_nbytes(&n->t), a);
}

/* Host bytes placed in the upload buffer (RoPE tables). */
static lethe_status arg_upload(rec *r, const void *src, size_t size, size_t *off_out, vk_arg *a) {
    vk_ctx *c = r->c;
    size_t off = align_to(r->dry ? r->upload_need : c->upload_used, c->align);
    if (r->dry) {
        r->upload_need = off + align_to(size, 16);
    } else {
        LETHE_ASSERT(off + size <= c->upload.size);
        if (src) memcpy((uint8_t *)c->upload.map + off, src, size);
        c->upload_used = off + align_to(size, 16);
    }
    if (off_out) *off_out = off;
    if (a) {
        if (r->dry) *a = (vk_arg){c->dummy.buf, 0, 16, 0};
        else *a = (vk_arg){c->upload.buf, off, align_to(size, 4), 0};
    }
    return LETHE_OK;
}

/* Groups for n invocations of wg each: x up to 65535 (the portable limit), rest in y. */
static void grid_1d(uint64_t n, uint32_t wg, uint32_t *gx, uint32_t *gy) {
    uint64_t groups = (n + wg - 1) / wg;
    if (groups == 0) groups = 1;
    *gx = (uint32_t)LETHE_MIN(groups, (uint64_t)65535);
    *gy = (uint32_t)((groups + *gx - 1) / *gx);
}

static lethe_status dispatch(rec *r, const char *pipe_name, const vk_arg *args, int n_args, const void *pc,
                             size_t pc_size, uint32_t gx, uint32_t gy, uint32_t gz) {
    vk_ctx *c = r->c;
    VkPipeline pipe = lethe_vk_pipeline(c, pipe_name);
    if (!pipe) return lethe_fail(LETHE_ERR_INTERNAL, "vulkan: pipeline %s is not available", pipe_name);
    LETHE_ASSERT(pc_size <= LETHE_VK_PUSH_BYTES && n_args <= LETHE_VK_BINDINGS);
    if (r->dry) {
        r->n_dispatch++;
        return LETHE_OK;
    }
    VkDescriptorSet set = r->sets[r->n_dispatch++];
    VkDescriptorBufferInfo bi[LETHE_VK_BINDINGS];
    VkWriteDescriptorSet w[LETHE_VK_BINDINGS];
    for (int i = 0; i < LETHE_VK_BINDINGS; i++) {
        bi[i] = i < n_args ? (VkDescriptorBufferInfo){args[i].buf, args[i].boff, args[i].range}
                           : (VkDescriptorBufferInfo){c->dummy.buf, 0, VK_WHOLE_SIZE};
        w[i] = (VkWriteDescriptorSet){.sType = VK_STRUCTURE_TYPE_WRITE_DESCRIPTOR_SET, .dstSet = set,
                                      .dstBinding = (uint32_t)i, .descriptorCount = 1,
                                      .descriptorType = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER, .pBufferInfo = &bi[i]};
    }
    vkUpdateDescriptorSets(c->dev, LETHE_VK_BINDINGS, w, 0, NULL);
    vkCmdBindPipeline(c->cmd, VK_PIPELINE_BIND_POINT_COMPUTE, pipe);
    /* a *_split pipeline also reads the KV chunks (set 1) */
    LETHE_ASSERT(lethe_vk_is_split_pipe(pipe_name) == (r->kv_set != VK_NULL_HANDLE));
    const VkPipelineLayout layout = r->kv_set ? c->layout_kv : c->layout;
    const VkDescriptorSet both[2] = {set, r->kv_set};
    vkCmdBindDescriptorSets(c->cmd, VK_PIPELINE_BIND_POINT_COMPUTE, layout, 0, r->kv_set ? 2 : 1, both, 0, NULL);
    vkCmdPushConstants(c->cmd, layout, VK_SHADER_STAGE_COMPUTE_BIT, 0, (uint32_t)pc_size, pc);
    vkCmdDispatch(c->cmd, gx, gy, gz);
    VkMemoryBarrier mb = {.sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER,
                          .srcAccessMask = VK_ACCESS_SHADER_WRITE_BIT,
                          .dstAccessMask = VK_ACCESS_SHADER_READ_BIT | VK_ACCESS_SHADER_WRITE_BIT};
    vkCmdPipelineBarrier(c->cmd, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT, 0, 1,
                         &mb, 0, NULL, 0, NULL);
    return LETHE_OK;
}

/* ------------------------------------------------------------ op support */

/* Weight dtypes with get_rows / matmul shaders (shaders/dequant.glsl). */
static const char *wtype_suffix(lethe_dtype t) {
    switch (t) {
    case LETHE_F32: return "f32";
    case LETHE_F16: return "f16";
    case LETHE_BF16: return "bf16";
    case LETHE_Q4_0: return "q4_0";
    case LETHE_Q4_1: return "q4_1";
    case LETHE_Q5_0: return "q5_0";
    case LETHE_Q5_1: return "q5_1";
    case LETHE_Q8_0: return "q8_0";
    default: return NULL;
    }
}

/* 32-block weight types: activations are quantized to q8 first (the CPU
 * backend's arithmetic, so the two agree to rounding). */
static bool q8_path(lethe_dtype t) {
    return t == LETHE_Q4_0 || t == LETHE_Q4_1 || t == LETHE_Q5_0 || t == LETHE_Q5_1 || t == LETHE_Q8_0;
}

static bool has_pipe(const vk_ctx *c, const char *fmt, const char *suffix) {
    char name[64];
    snprintf(name, sizeof name, fmt, suffix ? suffix : "");
    return lethe_vk_pipeline(c, name) != VK_NULL_HANDLE;
}

static bool f32n(const lethe_node *n) { return n && n->t.type == LETHE_F32; }

/* An activation must fit one binding (weights are split by rows instead;
 * MATMUL splits its activations by token rows: matmul_tokens). */
static bool fits(const vk_ctx *c, const lethe_node *n) {
    return !n || lethe_tensor_nbytes(&n->t) + c->align <= c->max_range;
}

#define Q8_BLOCK_BYTES 40    /* lethe_cpu_q8a: f32 d, f32 s, i8 qs[32] */

/* Tokens per dispatch of a MATMUL w [N, K] x [T, K] -> out [T, N]: as many
 * rows of x, of its q8 blocks and of out as one binding holds (a prefill's
 * logits over a 150K vocabulary pass 128 MiB at 220 tokens); 0 if not even
 * one row fits. Each output element is computed by one invocation from its
 * own row of x, so the split changes no bits. */
static uint32_t matmul_tokens(const vk_ctx *c, int64_t N, int64_t K) {
    const size_t row = (size_t)LETHE_MAX(N, K) * sizeof(float);   /* a row of out or of x */
    const size_t q8row = (size_t)(K / 32) * Q8_BLOCK_BYTES;         /* a row of x's q8 blocks */
    const size_t widest = LETHE_MAX(row, q8row);
    if (c->max_range < c->align + widest) return 0;
    return (uint32_t)LETHE_MIN((size_t)65535, (c->max_range - c->align) / widest);
}

/* A cache's shared buffer larger than one binding: chunks of whole pages
 * (no K/V row straddles two bindings), each at most max_range bytes and a
 * multiple of the offset alignment, bound as the array of set 1
 * (shaders/kv_split.glsl). Planned once per buffer; a refusal is logged
 * once and leaves the cache's ops on the CPU, which reads the same memory. */
static bool kv_plan(const vk_ctx *c, const lethe_kv_cache *kv) {
    vk_buf *vb = kv->shared->impl;
    if (vb->kv_plan) return vb->kv_plan > 0;
    const char *why = NULL;
    size_t pages = c->max_range / kv->page_bytes;
    while (pages > 0 && (pages * kv->page_bytes) % c->align != 0) pages--;
    const size_t chunk = pages * kv->page_bytes;
    const size_t nbind = chunk ? (vb->size + chunk - 1) / chunk : 0;
    if (!c->kv_split || !lethe_vk_pipeline(c, "attention_split") || !lethe_vk_pipeline(c, "kv_store_split") ||
        !lethe_vk_pipeline(c, "kv_flags_split"))
        why = "the *_split pipelines are unavailable (the lines above say why)";
    else if (!chunk)
        why = "one page of the pool is larger than a binding";
    else if (nbind > LETHE_VK_KV_MAX_BIND || chunk / 4 > UINT32_MAX / 2)
        why = "it needs more bindings than the shaders declare";
    vb->kv_plan = why ? -1 : 1;
    vb->kv_chunk = chunk;
    vb->kv_nbind = (uint32_t)nbind;
    if (why)
        LETHE_LOGW("vulkan: KV cache of %zu KiB > one binding of %zu KiB, and %s (pages of %zu KiB, %zu bindings "
                   "needed, %d declared): KV_STORE and ATTENTION run on the CPU", (size_t)vb->size >> 10,
                   c->max_range >> 10, why, kv->page_bytes >> 10, nbind, LETHE_VK_KV_MAX_BIND);
    else
        LETHE_LOGI("vulkan: KV cache of %zu KiB over %zu bindings of %zu pages (%zu KiB each)", (size_t)vb->size >> 10,
                   nbind, pages, chunk >> 10);
    return !why;
}

/* Device-local host-visible memory that the host does not cache (a
 * discrete GPU's BAR, chosen by vk_device.c shared_memory_type) makes every
 * host read of the cache a bus round trip. DMS and the plain cache read
 * little on the host per step (the expire of a token leaving the window);
 * TOVA and H2O scan every slot's pos per stream and step
 * (kv_policy.c lethe_kv_policy_evict): said once, with the way out. */
static void kv_memory_note(const vk_ctx *c, const lethe_kv_cache *kv) {
    vk_buf *vb = kv->shared->impl;
    if (vb->kv_noted) return;
    vb->kv_noted = true;
    const VkMemoryPropertyFlags f = c->mem_props.memoryTypes[vb->mem_type].propertyFlags;
    if (kv->score && c->props.deviceType == VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU &&
        (f & VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT) && !(f & VK_MEMORY_PROPERTY_HOST_CACHED_BIT))
        LETHE_LOGW("vulkan: the KV cache is in device-local memory the host reads uncached, and the %s policy scans "
                   "it on the host every step: LETHE_VK_KV_MEMORY=host may be faster",
                   kv->policy.rule == LETHE_KV_RULE_TOVA ? "TOVA" : "H2O");
}

static bool kv_split(const lethe_kv_cache *kv) { return ((const vk_buf *)kv->shared->impl)->kv_plan > 0; }

/* The KV cache of a KV_STORE / ATTENTION node lives in this backend's
 * shared memory (kv_cache.h: lethe_kv_init's `mem`), in one binding or in
 * several (kv_plan), in a layout the shaders address as 32-bit words (F16
 * rows: D even), D within attention.comp's 256. Else the node runs on the
 * CPU, which reads the same memory through host_ptr. */
static bool kv_on_device(const vk_ctx *c, const lethe_backend *be, const lethe_node *n) {
    const lethe_kv_cache *kv = n->kv;
    if (!kv || !kv->shared || kv->shared->backend != be || !n->ub || n->ub->n_tokens <= 0 ||
        n->ub->n_tokens > kv->max_batch)
        return false;
    if (kv->head_dim > 256 || (kv->type != LETHE_F32 && kv->type != LETHE_F16)) return false;
    if (kv->slot_bytes % 4 != 0 || kv->pos_offs % 4 != 0 || kv->expire_offs % 4 != 0) return false;
    kv_memory_note(c, kv);
    return ((const vk_buf *)kv->shared->impl)->size <= c->max_range || kv_plan(c, kv);
}

/* Longest head stream an ATTENTION node reads. */
static int32_t max_len(const lethe_node *n) {
    const lethe_kv_cache *kv = n->kv;
    int32_t m = 0;
    for (int32_t t = 0; t < n->ub->n_tokens; t++) {
        const int32_t seq = n->ub->seq_id[t];
        if (seq < 0 || seq >= kv->n_seq) continue;
        for (int h = 0; h < kv->n_head_kv; h++) m = LETHE_MAX(m, lethe_kv_stream_at(kv, seq, n->iparams[0], h)->len);
    }
    return m;
}

/* Bytes of softmax weights one ATTENTION node may hand back for TOVA / H2O
 * ([T][Hq][L] floats in the upload buffer); larger micro-batches (long
 * prefills) run that node on the CPU. */
#define SCORE_W_MAX ((uint64_t)32 << 20)
#define QUEST_MAX_PAGES 4096   /* = MAX_PAGES in shaders/quest.comp */

/* Segments per row for TOP_K: chunks of ~4096 elements (pass 0, one
 * workgroup each, so one row still spreads over the device), but at most
 * 4096 / k of them, so the merge pass reads ~16 pairs per invocation. Shared
 * with nothing: the CUDA twin is cu_topk_plan (backends/cuda/cuda_topk.h). */
static void top_k_plan(uint32_t V, uint32_t k, uint32_t *S, uint32_t *chunk) {
    uint32_t s = (V + 4095u) / 4096u, s_max = LETHE_MAX(1u, 4096u / k);
    if (s > s_max) s = s_max;
    *chunk = (V + s - 1u) / s;
    *S = (V + *chunk - 1u) / *chunk;
}

/* Bytes of pass 0's pairs [T, S, k, 2] (0 when one segment covers a row). */
static size_t top_k_scratch(const lethe_node *n) {
    uint32_t S, chunk;
    const uint32_t k = (uint32_t)n->iparams[0];
    top_k_plan((uint32_t)n->src[0]->t.ne[0], k, &S, &chunk);
    return S == 1 ? 0 : (size_t)lethe_tensor_nrows(&n->src[0]->t) * S * k * 2 * sizeof(uint32_t);
}

bool lethe_vk_supports_op(lethe_backend *be, const lethe_node *n) {
    const vk_ctx *c = be->ctx;
    if (n->op == LETHE_OP_NONE) return true;
    for (int i = 0; i < LETHE_MAX_SRC; i++)
        if (n->src[i] && !lethe_tensor_is_contiguous(&n->src[i]->t)) return false;
    if (!(f32n(n) || n->op == LETHE_OP_TOP_K) || (n->op != LETHE_OP_MATMUL && !fits(c, n))) return false;
    switch (n->op) {
    case LETHE_OP_TOP_K:
        /* integer keys and subgroup max/min: bit-exact with the CPU (top_k.comp) */
        return n->t.type == LETHE_I32 && f32n(n->src[0]) && fits(c, n->src[0]) && c->subgroup_arith &&
               n->iparams[0] >= 1 && n->iparams[0] <= n->src[0]->t.ne[0] && n->src[0]->t.ne[0] <= UINT32_MAX / 2 &&
               lethe_tensor_nrows(&n->src[0]->t) <= 65535 && top_k_scratch(n) + c->align <= c->max_range &&
               has_pipe(c, "top_k", NULL);
    case LETHE_OP_GET_ROWS:
    case LETHE_OP_MATMUL: {
        const lethe_tensor *w = &n->src[0]->t;
        const char *sfx = wtype_suffix(w->type);
        const lethe_dtype_traits *tr = lethe_dtype_get(w->type);
        if (!sfx || !tr || w->ne[0] % tr->blck_size != 0 || w->nb[1] + c->align > c->max_range) return false;
        if (n->op == LETHE_OP_GET_ROWS)
            return n->src[1] && n->src[1]->t.type == LETHE_I32 && fits(c, n->src[1]) &&
                   has_pipe(c, "get_rows_%s", sfx);
        return f32n(n->src[1]) && matmul_tokens(c, w->ne[1], w->ne[0]) > 0 && n->src[1]->t.ne[0] == w->ne[0] &&
               lethe_tensor_nelements(&n->t) == w->ne[1] * lethe_tensor_nrows(&n->src[1]->t) &&
               lethe_tensor_nrows(&n->src[1]->t) <= 65535 && has_pipe(c, "matmul_vec_%s", sfx) &&
               (!q8_path(w->type) || has_pipe(c, "quantize_q8", NULL));
    }
    case LETHE_OP_RMS_NORM:
        return f32n(n->src[0]) && fits(c, n->src[0]) && (!n->src[1] || (f32n(n->src[1]) && fits(c, n->src[1]))) &&
               has_pipe(c, "rms_norm", NULL);
    case LETHE_OP_ADD:
    case LETHE_OP_MUL:
    case LETHE_OP_SWIGLU:
        return f32n(n->src[0]) && f32n(n->src[1]) && fits(c, n->src[0]) && fits(c, n->src[1]) &&
               has_pipe(c, n->op == LETHE_OP_ADD ? "add" : n->op == LETHE_OP_MUL ? "mul" : "swiglu", NULL);
    case LETHE_OP_ROPE:
        /* iparams[0] = G > 0: the DMS borrowed channel, done in the shader */
        return f32n(n->src[0]) && fits(c, n->src[0]) && n->ub && n->ub->n_tokens > 0 && n->rope.n_rot > 0 &&
               n->rope.n_rot % 2 == 0 && n->rope.n_rot <= n->src[0]->t.ne[0] && n->iparams[0] >= 0 &&
               has_pipe(c, "rope", NULL);
    case LETHE_OP_KV_STORE:
        return kv_on_device(c, be, n) && f32n(n->src[0]) && f32n(n->src[1]) && fits(c, n->src[0]) &&
               fits(c, n->src[1]) && lethe_tensor_nelements(&n->src[0]->t) == (int64_t)n->ub->n_tokens *
               n->kv->n_head_kv * n->kv->head_dim && has_pipe(c, "kv_store", NULL) &&
               (!n->src[2] || (f32n(n->src[2]) && fits(c, n->src[2]) && has_pipe(c, "kv_flags", NULL)));
    case LETHE_OP_ATTENTION: {
        /* TOVA / H2O (kv->score): the shader writes the weights, the host
         * folds them into the scores (op_attention). QUEST (kv->kmin): the
         * bounds live in the shared buffer, quest.comp refreshes them and
         * selects the pages on the device (op_attention); a stream of more
         * pages than its shared memory holds runs on the CPU. */
        if (!kv_on_device(c, be, n) || !f32n(n->src[0]) || !fits(c, n->src[0])) return false;
        const char *sfx = kv_split(n->kv) ? "_split" : "";
        if (n->kv->kmin && (!n->kv->kmin_offs || (max_len(n) + LETHE_KV_PAGE - 1) / LETHE_KV_PAGE > QUEST_MAX_PAGES ||
                            !has_pipe(c, "quest_bounds%s", sfx) || !has_pipe(c, "quest_select%s", sfx)))
            return false;
        const int64_t D = n->kv->head_dim, T = n->ub->n_tokens, nq = lethe_tensor_nelements(&n->src[0]->t);
        if (nq % (D * T) != 0 || D % 16 != 0) return false;   /* the CPU's 16-lane scores (attention.comp) */
        const int64_t Hq = nq / (D * T);
        if (n->kv->score && (uint64_t)T * (uint64_t)Hq * (uint64_t)max_len(n) * 4u > SCORE_W_MAX) return false;
        return Hq % n->kv->n_head_kv == 0 && Hq * T <= 65535LL * 65535LL && has_pipe(c, "attention%s", sfx);
    }
    case LETHE_OP_DMS_DECISION: {
        const int mode = n->iparams[0];
        if (!n->ub || n->ub->n_tokens <= 0 || !has_pipe(c, "dms_decision", NULL)) return false;
        if (mode == LETHE_DMS_FORCED) return true;
        return (mode == LETHE_DMS_FROM_Q || mode == LETHE_DMS_FROM_ADAPTER) && f32n(n->src[0]) && fits(c, n->src[0]);
    }
    default:
        return false;
    }
}

/* ------------------------------------------------------------------ ops */

static lethe_status op_get_rows(rec *r, const lethe_node *n) {
    const lethe_node *w = n->src[0], *ids = n->src[1];
    const uint32_t E = (uint32_t)w->t.ne[0], R = (uint32_t)ids->t.ne[0];
    const int64_t Nw = w->t.ne[1];
    const size_t row_bytes = w->t.nb[1];
    if (r->dry && ids->op == LETHE_OP_NONE && ids->t.data) {   /* bad ids: a status, not a read out of bounds */
        const int32_t *id = ids->t.data;
        for (uint32_t i = 0; i < R; i++)
            if (id[i] < 0 || id[i] >= Nw)
                return lethe_fail(LETHE_ERR_INVALID_ARG, "vulkan: get_rows id %d of '%s' is outside [0, %lld)",
                                  id[i], ids->t.name, (long long)Nw);
    }
    char pipe[64];
    snprintf(pipe, sizeof pipe, "get_rows_%s", wtype_suffix(w->t.type));
    const int64_t per = LETHE_MAX((int64_t)1, (int64_t)((r->c->max_range - r->c->align) / row_bytes));
    for (int64_t r0 = 0; r0 < Nw; r0 += per) {
        const int64_t r1 = LETHE_MIN(Nw, r0 + per);
        vk_arg a[3];
        lethe_status st;
        if ((st = arg_of(r, w, (size_t)r0 * row_bytes, (size_t)(r1 - r0) * row_bytes, &a[0])) != LETHE_OK ||
            (st = arg_all(r, ids, &a[1])) != LETHE_OK || (st = arg_all(r, n, &a[2])) != LETHE_OK)
            return st;
        struct { uint32_t E, R, w_off, row_bytes, r0, r1, ids_off, out_off; } pc = {
            E, R, a[0].rem, (uint32_t)row_bytes, (uint32_t)r0, (uint32_t)r1, a[1].rem / 4, a[2].rem / 4};
        uint32_t gx, gy;
        grid_1d((uint64_t)E * R, 256, &gx, &gy);
        if ((st = dispatch(r, pipe, a, 3, &pc, sizeof pc, gx, gy, 1)) != LETHE_OK) return st;
    }
    return LETHE_OK;
}

#ifndef GEMV_ROWS
#define GEMV_ROWS 8
#endif

/* Bytes [byte0, byte0 + nbytes) of the q8 activation scratch as a binding. */
static vk_arg act_arg(const rec *r, size_t byte0, size_t nbytes) {
    if (r->dry) return (vk_arg){r->c->dummy.buf, 0, 16, 0};
    const size_t boff = byte0 / r->c->align * r->c->align;
    return (vk_arg){r->c->act.buf, boff, align_to(byte0 - boff + nbytes, 4), (uint32_t)(byte0 - boff)};
}

/* x [T, K] -> q8 blocks [T, K/32] in the activation scratch (skipped when the
 * scratch already holds this node's blocks: q, k and v share their input),
 * `tpc` token rows per dispatch (matmul_tokens). */
static lethe_status quantize_x(rec *r, const lethe_node *x, uint32_t tpc, size_t *bytes) {
    const uint64_t T = (uint64_t)lethe_tensor_nrows(&x->t), bpr = (uint64_t)x->t.ne[0] / 32;   /* blocks per row */
    *bytes = (size_t)(T * bpr) * Q8_BLOCK_BYTES;
    if (r->dry) r->act_need = LETHE_MAX(r->act_need, *bytes);
    if (r->q8_of == x) return LETHE_OK;
    for (uint64_t t0 = 0; t0 < T; t0 += tpc) {
        const uint64_t tc = LETHE_MIN((uint64_t)tpc, T - t0), n_blocks = tc * bpr;
        vk_arg a[2];
        lethe_status st = arg_of(r, x, (size_t)(t0 * bpr * 32 * sizeof(float)), (size_t)(n_blocks * 32 * sizeof(float)),
                                 &a[0]);
        if (st != LETHE_OK) return st;
        a[1] = act_arg(r, (size_t)(t0 * bpr) * Q8_BLOCK_BYTES, (size_t)n_blocks * Q8_BLOCK_BYTES);
        struct { uint32_t n_blocks, x_off, q_off; } pc = {(uint32_t)n_blocks, a[0].rem / 4, a[1].rem / 4};
        uint32_t gx, gy;
        grid_1d(n_blocks, 64, &gx, &gy);
        if ((st = dispatch(r, "quantize_q8", a, 2, &pc, sizeof pc, gx, gy, 1)) != LETHE_OK) return st;
    }
    r->q8_of = x;
    return LETHE_OK;
}

/* Weights in row chunks of one binding each; activations (x, its q8 blocks,
 * out) in token chunks of one binding each (matmul_tokens): one dispatch per
 * (token chunk, row chunk). */
static lethe_status op_matmul(rec *r, const lethe_node *n) {
    const lethe_node *w = n->src[0], *x = n->src[1];
    const uint32_t N = (uint32_t)w->t.ne[1], K = (uint32_t)w->t.ne[0], T = (uint32_t)lethe_tensor_nrows(&x->t);
    const uint32_t tpc = matmul_tokens(r->c, N, K);
    const size_t row_bytes = w->t.nb[1];
    const char *sfx = wtype_suffix(w->t.type);
    /* T > 1: the tiled shader dequantizes each weight once per 16 tokens */
    const bool tiled = T > 1 && has_pipe(r->c, "matmul_tile_%s", sfx);
    char pipe[64];
    snprintf(pipe, sizeof pipe, tiled ? "matmul_tile_%s" : "matmul_vec_%s", sfx);
    size_t q8_bytes = 0;
    const bool q8 = q8_path(w->t.type);
    lethe_status st;
    if (q8 && (st = quantize_x(r, x, tpc, &q8_bytes)) != LETHE_OK) return st;
    const size_t q8_row = (size_t)(K / 32) * Q8_BLOCK_BYTES;
    const uint32_t per = (uint32_t)LETHE_MAX((size_t)1, (r->c->max_range - r->c->align) / row_bytes);
    for (uint32_t t0 = 0; t0 < T; t0 += tpc) {
        const uint32_t tc = LETHE_MIN(T - t0, tpc);
        for (uint32_t n0 = 0; n0 < N; n0 += per) {
            const uint32_t nc = LETHE_MIN(N - n0, per);
            vk_arg a[3];
            if ((st = arg_of(r, w, (size_t)n0 * row_bytes, (size_t)nc * row_bytes, &a[0])) != LETHE_OK ||
                (st = arg_of(r, n, (size_t)t0 * N * sizeof(float), (size_t)tc * N * sizeof(float), &a[2])) != LETHE_OK)
                return st;
            if (!q8) {
                if ((st = arg_of(r, x, (size_t)t0 * K * sizeof(float), (size_t)tc * K * sizeof(float), &a[1])) != LETHE_OK)
                    return st;
            } else {
                a[1] = act_arg(r, (size_t)t0 * q8_row, (size_t)tc * q8_row);
            }
            struct { uint32_t N, K, T, w_off, row_bytes, x_off, out_off, out_stride, out_col0; } pc = {
                nc, K, tc, a[0].rem, (uint32_t)row_bytes, a[1].rem / 4, a[2].rem / 4, N, n0};
            if (tiled) {
                st = dispatch(r, pipe, a, 3, &pc, sizeof pc, (nc + 15) / 16, (tc + 15) / 16, 1);
            } else {
                /* a workgroup loops over GEMV_ROWS rows: fewer, longer workgroups
                 * (the per-workgroup cost dominates on CPU drivers) */
                const uint32_t groups = (nc + GEMV_ROWS - 1) / GEMV_ROWS;
                uint32_t gx = LETHE_MIN(groups, 65535u), gy = (groups + gx - 1) / gx;
                st = dispatch(r, pipe, a, 3, &pc, sizeof pc, gx, gy, tc);
            }
            if (st != LETHE_OK) return st;
        }
    }
    return LETHE_OK;
}

static lethe_status op_rms_norm(rec *r, const lethe_node *n) {
    const lethe_node *x = n->src[0], *w = n->src[1];
    const uint32_t E = (uint32_t)x->t.ne[0], T = (uint32_t)lethe_tensor_nrows(&x->t);
    vk_arg a[3];
    lethe_status st;
    if ((st = arg_all(r, x, &a[0])) != LETHE_OK) return st;
    if (w) {
        if ((st = arg_all(r, w, &a[1])) != LETHE_OK) return st;
    } else {
        a[1] = (vk_arg){r->c->dummy.buf, 0, 16, 0};
    }
    if ((st = arg_all(r, n, &a[2])) != LETHE_OK) return st;
    struct { uint32_t E, T, x_off, w_off, out_off, has_w; float eps; } pc = {
        E, T, a[0].rem / 4, a[1].rem / 4, a[2].rem / 4, w != NULL, n->fparams[0]};
    uint32_t gx = LETHE_MIN(T, 65535u), gy = (T + gx - 1) / gx;
    /* the double-precision variant reproduces the CPU's bits (shaders/rms_norm.comp) */
    const char *pipe = lethe_vk_pipeline(r->c, "rms_norm_f64") ? "rms_norm_f64" : "rms_norm";
    return dispatch(r, pipe, a, 3, &pc, sizeof pc, gx, gy, 1);
}

static lethe_status op_eltwise(rec *r, const lethe_node *n) {
    vk_arg a[3];
    lethe_status st;
    if ((st = arg_all(r, n->src[0], &a[0])) != LETHE_OK || (st = arg_all(r, n->src[1], &a[1])) != LETHE_OK ||
        (st = arg_all(r, n, &a[2])) != LETHE_OK)
        return st;
    const uint32_t cnt = (uint32_t)lethe_tensor_nelements(&n->t);
    uint32_t gx, gy;
    grid_1d(cnt, 256, &gx, &gy);
    if (n->op == LETHE_OP_SWIGLU) {
        struct { uint32_t n, g_off, u_off, out_off; } pc = {cnt, a[0].rem / 4, a[1].rem / 4, a[2].rem / 4};
        return dispatch(r, "swiglu", a, 3, &pc, sizeof pc, gx, gy, 1);
    }
    struct { uint32_t n, nb, a_off, b_off, out_off; } pc = {
        cnt, (uint32_t)lethe_tensor_nelements(&n->src[1]->t), a[0].rem / 4, a[1].rem / 4, a[2].rem / 4};
    return dispatch(r, n->op == LETHE_OP_ADD ? "add" : "mul", a, 3, &pc, sizeof pc, gx, gy, 1);
}

static lethe_status op_rope(rec *r, const lethe_node *n) {
    const lethe_node *x = n->src[0];
    const lethe_rope_params *p = &n->rope;
    const uint32_t D = (uint32_t)x->t.ne[0], T = (uint32_t)n->ub->n_tokens;
    const uint32_t H = (uint32_t)(lethe_tensor_nelements(&x->t) / ((int64_t)D * T));
    const uint32_t half = (uint32_t)p->n_rot / 2;
    const size_t tbytes = (size_t)T * half * 2 * sizeof(float);
    /* cos/sin [T, half, 2] in double on the host, once per (params, ubatch) */
    if (!(r->rope_have && r->rope_ub == n->ub && memcmp(&r->rope_p, p, sizeof *p) == 0)) {
        size_t off;
        arg_upload(r, NULL, tbytes, &off, NULL);
        if (!r->dry) {
            float *cs = (float *)((uint8_t *)r->c->upload.map + off);
            for (uint32_t i = 0; i < half; i++) {
                const double inv = lethe_rope_inv_freq(p, (int)i);
                for (uint32_t t = 0; t < T; t++) {
                    const double th = (double)n->ub->pos[t] * inv;
                    cs[((size_t)t * half + i) * 2] = (float)cos(th);
                    cs[((size_t)t * half + i) * 2 + 1] = (float)sin(th);
                }
            }
        }
        r->rope_have = true;
        r->rope_ub = n->ub;
        r->rope_p = *p;
        r->rope_off = off;
    }
    vk_arg a[3];
    lethe_status st;
    if ((st = arg_all(r, x, &a[0])) != LETHE_OK || (st = arg_all(r, n, &a[2])) != LETHE_OK) return st;
    a[1] = r->dry ? (vk_arg){r->c->dummy.buf, 0, 16, 0}
                  : (vk_arg){r->c->upload.buf, r->rope_off, align_to(tbytes, 4), 0};
    struct { uint32_t D, H, T, half, neox, x_off, cs_off, out_off, G; } pc = {
        D, H, T, half, p->mode == LETHE_ROPE_NEOX, a[0].rem / 4, 0, a[2].rem / 4, (uint32_t)n->iparams[0]};
    uint32_t gx, gy;
    grid_1d((uint64_t)T * H * (D - half), 256, &gx, &gy);
    return dispatch(r, "rope", a, 3, &pc, sizeof pc, gx, gy, 1);
}

/* --------------------------------------------------------- KV cache ops */

/* The cache's shared buffer, whole, as one binding (kv_on_device checked it
 * fits); a split cache (kv_plan) binds the dummy there and its chunks as set 1. */
static vk_arg kv_arg(const rec *r, const lethe_kv_cache *kv) {
    if (r->dry || kv_split(kv)) return (vk_arg){r->c->dummy.buf, 0, 16, 0};
    const vk_buf *vb = kv->shared->impl;
    return (vk_arg){vb->buf, 0, vb->size, 0};
}

/* A split cache's set 1: chunk i of the buffer as element i of the array,
 * elements past the buffer's end bound to the dummy (every element of a
 * statically used array must be valid). Made once per buffer, in its own
 * pool, freed with it (vk_device.c vk_buffer_free). */
static lethe_status kv_set_of(vk_ctx *c, const lethe_kv_cache *kv, VkDescriptorSet *out) {
    vk_buf *vb = kv->shared->impl;
    if (!vb->kv_set) {
        VkDescriptorPoolSize ps = {.type = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER, .descriptorCount = LETHE_VK_KV_MAX_BIND};
        VkDescriptorPoolCreateInfo pi = {.sType = VK_STRUCTURE_TYPE_DESCRIPTOR_POOL_CREATE_INFO, .maxSets = 1,
                                         .poolSizeCount = 1, .pPoolSizes = &ps};
        VkResult res = vkCreateDescriptorPool(c->dev, &pi, NULL, &vb->kv_pool);
        if (res != VK_SUCCESS) {
            vb->kv_pool = VK_NULL_HANDLE;
            return lethe_fail(LETHE_ERR_BACKEND, "vulkan: KV descriptor pool: %s", lethe_vk_check(res));
        }
        VkDescriptorSetAllocateInfo ai = {.sType = VK_STRUCTURE_TYPE_DESCRIPTOR_SET_ALLOCATE_INFO,
                                          .descriptorPool = vb->kv_pool, .descriptorSetCount = 1,
                                          .pSetLayouts = &c->dsl_kv};
        if ((res = vkAllocateDescriptorSets(c->dev, &ai, &vb->kv_set)) != VK_SUCCESS) {
            vb->kv_set = VK_NULL_HANDLE;
            return lethe_fail(LETHE_ERR_BACKEND, "vulkan: KV descriptor set: %s", lethe_vk_check(res));
        }
        VkDescriptorBufferInfo bi[LETHE_VK_KV_MAX_BIND];
        for (uint32_t i = 0; i < LETHE_VK_KV_MAX_BIND; i++) {
            const VkDeviceSize off = (VkDeviceSize)i * vb->kv_chunk;
            bi[i] = i < vb->kv_nbind ? (VkDescriptorBufferInfo){vb->buf, off, LETHE_MIN(vb->kv_chunk, vb->size - off)}
                                     : (VkDescriptorBufferInfo){c->dummy.buf, 0, VK_WHOLE_SIZE};
        }
        VkWriteDescriptorSet w = {.sType = VK_STRUCTURE_TYPE_WRITE_DESCRIPTOR_SET, .dstSet = vb->kv_set,
                                  .dstBinding = 0, .descriptorCount = LETHE_VK_KV_MAX_BIND,
                                  .descriptorType = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER, .pBufferInfo = bi};
        vkUpdateDescriptorSets(c->dev, 1, &w, 0, NULL);
    }
    *out = vb->kv_set;
    return LETHE_OK;
}

/* Binding and word of byte `b` of a split cache's buffer. */
static void kv_loc(const lethe_kv_cache *kv, size_t b, int32_t *bind, int32_t *word) {
    const size_t chunk = ((const vk_buf *)kv->shared->impl)->kv_chunk;
    *bind = (int32_t)(b / chunk);
    *word = (int32_t)(b % chunk / 4);
}

/* A growable int32 list for the per-run metadata built from host structs. */
typedef struct ivec {
    int32_t *v;
    size_t n, cap;
} ivec;

static lethe_status ivec_push(ivec *a, int32_t x) {
    if (a->n == a->cap) {
        size_t cap = a->cap ? 2 * a->cap : 256;
        int32_t *v = realloc(a->v, cap * sizeof *v);
        if (!v) return lethe_fail(LETHE_ERR_OOM, "vulkan: KV metadata of %zu entries", cap);
        a->v = v;
        a->cap = cap;
    }
    a->v[a->n++] = x;
    return LETHE_OK;
}

/* KV_STORE metadata [T * Hkv][4]: word of the K row and of the V row of the
 * slot reserved for (t, h), the expire word of the sequence's previous token
 * (kv->prev_t / stream->prev, as lethe_cpu_kv_store finds it; -1: none) and
 * the expire a positive decision gives it (pos[t] + w, saturated). A split
 * cache: [T * Hkv][8], each word as (binding, word in it), then the expire
 * and a pad (shaders/kv_store.comp). */
static lethe_status store_meta(const lethe_node *n, ivec *m) {
    const lethe_kv_cache *kv = n->kv;
    const int layer = n->iparams[0];
    const int32_t T = n->ub->n_tokens, Hkv = kv->n_head_kv, w = kv->policy.window;
    lethe_status st = LETHE_OK;
    for (int32_t t = 0; t < T && st == LETHE_OK; t++) {
        const int32_t seq = n->ub->seq_id[t];
        for (int32_t h = 0; h < Hkv && st == LETHE_OK; h++) {
            const size_t si = (size_t)layer * Hkv + h;
            const int32_t slot = kv->res_slot[si * kv->max_batch + t];
            if (seq < 0 || seq >= kv->n_seq || slot < 0)
                return lethe_fail(LETHE_ERR_INVALID_ARG, "vulkan: KV_STORE token %d: sequence %d has no reserved slot",
                                  t, seq);
            const lethe_kv_stream *s = lethe_kv_stream_at(kv, seq, layer, h);
            if (slot >= s->len)
                return lethe_fail(LETHE_ERR_INTERNAL, "vulkan: KV_STORE slot %d beyond the stream's %d", slot, s->len);
            const size_t kb = (size_t)((uint8_t *)lethe_kv_k(kv, s, slot) - kv->pool);
            const size_t vb = (size_t)((uint8_t *)lethe_kv_v(kv, s, slot) - kv->pool);
            const int32_t pt = kv->prev_t[t];
            const int32_t prev = pt >= 0 ? kv->res_slot[si * kv->max_batch + pt] : s->prev;
            const int32_t p = n->ub->pos[t];
            const int32_t nexp = p > LETHE_KV_NEVER - w ? LETHE_KV_NEVER : p + w;
            if (kv_split(kv)) {
                int32_t loc[8] = {0};
                kv_loc(kv, kb, &loc[0], &loc[1]);
                kv_loc(kv, vb, &loc[2], &loc[3]);
                if (prev >= 0) kv_loc(kv, kv->expire_offs + 4 * lethe_kv_meta(s, prev), &loc[4], &loc[5]);
                else loc[5] = -1;
                loc[6] = nexp;
                for (int i = 0; i < 8 && st == LETHE_OK; i++) st = ivec_push(m, loc[i]);
                continue;
            }
            const int64_t ew = prev >= 0 ? (int64_t)(kv->expire_offs / 4 + lethe_kv_meta(s, prev)) : -1;
            if (kb / 4 > INT32_MAX || vb / 4 > INT32_MAX || ew > INT32_MAX)
                return lethe_fail(LETHE_ERR_INTERNAL, "vulkan: KV cache offsets beyond 31 bits");
            if ((st = ivec_push(m, (int32_t)(kb / 4))) != LETHE_OK || (st = ivec_push(m, (int32_t)(vb / 4))) != LETHE_OK ||
                (st = ivec_push(m, (int32_t)ew)) != LETHE_OK || (st = ivec_push(m, nexp)) != LETHE_OK)
                return st;
        }
    }
    return st;
}

static lethe_status op_kv_store(rec *r, const lethe_node *n) {
    const lethe_kv_cache *kv = n->kv;
    const uint32_t T = (uint32_t)n->ub->n_tokens, Hkv = (uint32_t)kv->n_head_kv, D = (uint32_t)kv->head_dim;
    ivec m = {0};
    lethe_status st = store_meta(n, &m);
    vk_arg a[4];
    if (st == LETHE_OK) st = arg_upload(r, m.v, m.n * sizeof(int32_t), NULL, &a[3]);
    free(m.v);
    if (st != LETHE_OK) return st;
    if ((st = arg_all(r, n->src[0], &a[0])) != LETHE_OK || (st = arg_all(r, n->src[1], &a[1])) != LETHE_OK) return st;
    a[2] = kv_arg(r, kv);
    const bool f16 = kv->type == LETHE_F16, split = kv_split(kv);
    const uint32_t n_bind = split ? ((const vk_buf *)kv->shared->impl)->kv_nbind : 1;
    struct { uint32_t D, n_rows, k_off, v_off, meta_off, f16, n_bind; } pc = {D, T * Hkv, a[0].rem / 4, a[1].rem / 4, 0,
                                                                               f16, n_bind};
    uint32_t gx, gy;
    grid_1d((uint64_t)T * Hkv * (f16 ? D / 2 : D), 256, &gx, &gy);
    if (split && (st = kv_set_of(r->c, kv, &r->kv_set)) != LETHE_OK) return st;
    st = dispatch(r, split ? "kv_store_split" : "kv_store", a, 4, &pc, sizeof pc, gx, gy, 1);
    r->kv_set = VK_NULL_HANDLE;
    if (st != LETHE_OK || !n->src[2]) return st;
    /* the DMS flags of the previous tokens (after the rows: a flag may land
     * in a slot this micro-batch just wrote, never in the same word) */
    vk_arg f[3];
    if ((st = arg_all(r, n->src[2], &f[0])) != LETHE_OK) return st;
    f[1] = a[2];
    f[2] = a[3];
    struct { uint32_t n_rows, dec_off, meta_off, n_bind; } pf = {T * Hkv, f[0].rem / 4, 0, n_bind};
    grid_1d((uint64_t)T * Hkv, 256, &gx, &gy);
    if (split && (st = kv_set_of(r->c, kv, &r->kv_set)) != LETHE_OK) return st;
    st = dispatch(r, split ? "kv_flags_split" : "kv_flags", f, 3, &pf, sizeof pf, gx, gy, 1);
    r->kv_set = VK_NULL_HANDLE;
    return st;
}

/* ATTENTION metadata: [T * Hkv][4] = {L, start of the stream's page list,
 * query position, 0}, then each (sequence, KV head) stream's page list once. */
static lethe_status attn_meta(const lethe_node *n, ivec *m, uint64_t *reads) {
    const lethe_kv_cache *kv = n->kv;
    const int layer = n->iparams[0];
    const int32_t T = n->ub->n_tokens, Hkv = kv->n_head_kv;
    int32_t *start = malloc((size_t)kv->n_seq * (size_t)Hkv * sizeof(int32_t));   /* [n_seq][Hkv] */
    if (!start) return lethe_fail(LETHE_ERR_OOM, "vulkan: attention metadata");
    for (size_t i = 0; i < (size_t)kv->n_seq * (size_t)Hkv; i++) start[i] = -1;
    lethe_status st = LETHE_OK;
    for (size_t i = 0; i < (size_t)T * Hkv * 4 && st == LETHE_OK; i++) st = ivec_push(m, 0);
    *reads = 0;
    for (int32_t t = 0; t < T && st == LETHE_OK; t++) {
        const int32_t seq = n->ub->seq_id[t];
        if (seq < 0 || seq >= kv->n_seq) {
            st = lethe_fail(LETHE_ERR_INVALID_ARG, "vulkan: ATTENTION token %d: sequence %d out of range", t, seq);
            break;
        }
        for (int32_t h = 0; h < Hkv && st == LETHE_OK; h++) {
            const lethe_kv_stream *s = lethe_kv_stream_at(kv, seq, layer, h);
            int32_t *sp = &start[(size_t)seq * Hkv + h];
            if (*sp < 0) {
                *sp = (int32_t)m->n;
                for (int32_t pg = 0; pg < s->n_pages && st == LETHE_OK; pg++) st = ivec_push(m, s->pages[pg]);
            }
            int32_t *e = &m->v[((size_t)t * Hkv + h) * 4];
            e[0] = s->len;
            e[1] = *sp;
            e[2] = n->ub->pos[t];
            *reads += (uint64_t)s->len;
        }
    }
    free(start);
    return st;
}

static lethe_status add_job(vk_ctx *c, vk_score_job job) {
    if (c->n_score_jobs == c->cap_score_jobs) {
        const int cap = c->cap_score_jobs ? 2 * c->cap_score_jobs : 64;
        vk_score_job *j = realloc(c->score_jobs, (size_t)cap * sizeof *j);
        if (!j) return lethe_fail(LETHE_ERR_OOM, "vulkan: attention jobs");
        c->score_jobs = j;
        c->cap_score_jobs = cap;
    }
    c->score_jobs[c->n_score_jobs++] = job;
    return LETHE_OK;
}

/* QUEST: refresh the key bounds of the pages this micro-batch's KV_STORE
 * wrote, as the CPU kernel does at a stream's first token of the batch
 * (cpu_attention.c quest_refresh: pages from the first reserved slot's on,
 * rows up to len), before quest_select reads them. */
static lethe_status quest_refresh(rec *r, const lethe_node *n) {
    const lethe_kv_cache *kv = n->kv;
    const int layer = n->iparams[0];
    const int32_t T = n->ub->n_tokens, Hkv = kv->n_head_kv;
    ivec m = {0};
    lethe_status st = LETHE_OK;
    for (int32_t t = 0; t < T && st == LETHE_OK; t++) {
        const int32_t seq = n->ub->seq_id[t];
        if (seq < 0 || seq >= kv->n_seq || kv->prev_t[t] >= 0) continue;
        for (int32_t h = 0; h < Hkv && st == LETHE_OK; h++) {
            const lethe_kv_stream *s = lethe_kv_stream_at(kv, seq, layer, h);
            const int32_t first = kv->res_slot[((size_t)layer * Hkv + h) * kv->max_batch + t];
            for (int32_t pg = first / LETHE_KV_PAGE; pg < s->n_pages && st == LETHE_OK; pg++) {
                const int32_t rows = LETHE_MAX(0, LETHE_MIN(s->len - pg * LETHE_KV_PAGE, LETHE_KV_PAGE));
                if ((st = ivec_push(&m, s->pages[pg])) == LETHE_OK) st = ivec_push(&m, rows);
            }
        }
    }
    const uint32_t n_pg = (uint32_t)(m.n / 2), D = (uint32_t)kv->head_dim;
    vk_arg a[2];
    if (st == LETHE_OK && n_pg) st = arg_upload(r, m.v, m.n * sizeof(int32_t), NULL, &a[1]);
    free(m.v);
    if (st != LETHE_OK || !n_pg) return st;
    a[0] = kv_arg(r, kv);
    struct {
        uint32_t D, n, meta_off, page_words, slot_words, kmin_word0, kmax_word0, f16;
        uint32_t n_bind, chunk_pages, chunk_words, kmin_b0, kmax_b0;   /* a split cache (kv_split.glsl) */
    } pc = {D, n_pg, a[1].rem / 4, (uint32_t)(kv->page_bytes / 4), (uint32_t)(kv->slot_bytes / 4),
            (uint32_t)(kv->kmin_offs / 4), (uint32_t)(kv->kmax_offs / 4), kv->type == LETHE_F16, 1, 0, 0, 0, 0};
    const bool split = kv_split(kv);
    if (split) {   /* the bounds by (binding, word) like pos and expire: kmin and kmax may cross chunks */
        const vk_buf *vb = kv->shared->impl;
        int32_t b, w;
        pc.n_bind = vb->kv_nbind;
        pc.chunk_pages = (uint32_t)(vb->kv_chunk / kv->page_bytes);
        pc.chunk_words = (uint32_t)(vb->kv_chunk / 4);
        kv_loc(kv, kv->kmin_offs, &b, &w);
        pc.kmin_b0 = (uint32_t)b;
        pc.kmin_word0 = (uint32_t)w;
        kv_loc(kv, kv->kmax_offs, &b, &w);
        pc.kmax_b0 = (uint32_t)b;
        pc.kmax_word0 = (uint32_t)w;
        if ((st = kv_set_of(r->c, kv, &r->kv_set)) != LETHE_OK) return st;
    }
    uint32_t gx, gy;
    grid_1d((uint64_t)n_pg * D, 256, &gx, &gy);
    st = dispatch(r, split ? "quest_bounds_split" : "quest_bounds", a, 2, &pc, sizeof pc, gx, gy, 1);
    r->kv_set = VK_NULL_HANDLE;
    return st;
}

static lethe_status op_attention(rec *r, const lethe_node *n) {
    lethe_kv_cache *kv = n->kv;
    const lethe_node *q = n->src[0];
    const uint32_t T = (uint32_t)n->ub->n_tokens, Hkv = (uint32_t)kv->n_head_kv, D = (uint32_t)kv->head_dim;
    const uint32_t Hq = (uint32_t)(lethe_tensor_nelements(&q->t) / ((int64_t)D * T));
    ivec m = {0};
    uint64_t reads = 0;
    lethe_status st = attn_meta(n, &m, &reads);
    /* TOVA / H2O: room for the weights [T][Hq][stride] after the metadata */
    const uint32_t w_off = kv->score ? (uint32_t)m.n : 0, stride = kv->score ? (uint32_t)max_len(n) : 0;
    for (size_t i = 0; kv->score && st == LETHE_OK && i < (size_t)T * Hq * stride; i++) st = ivec_push(&m, 0);
    /* QUEST: room for the selections [T * Hkv][1 + pages] */
    const bool quest = kv->kmin != NULL;
    const uint32_t k_pages = (uint32_t)LETHE_MAX(kv->policy.budget / LETHE_KV_PAGE, 1);
    const uint32_t sel_off = quest ? (uint32_t)m.n : 0;
    const uint32_t sel_stride = quest ? 1u + (uint32_t)LETHE_MIN((max_len(n) + LETHE_KV_PAGE - 1) / LETHE_KV_PAGE,
                                                                 (int32_t)k_pages) : 0;
    for (size_t i = 0; quest && st == LETHE_OK && i < (size_t)T * Hkv * sel_stride; i++) st = ivec_push(&m, 0);
    vk_arg a[4];
    size_t off = 0;
    if (st == LETHE_OK) st = arg_upload(r, m.v, m.n * sizeof(int32_t), &off, &a[2]);
    free(m.v);
    if (st != LETHE_OK) return st;
    if (kv->score && !r->dry && (st = add_job(r->c, (vk_score_job){n, off + (size_t)w_off * sizeof(int32_t), stride,
                                                                     false})) != LETHE_OK)
        return st;
    if ((st = arg_all(r, q, &a[0])) != LETHE_OK || (st = arg_all(r, n, &a[3])) != LETHE_OK) return st;
    a[1] = kv_arg(r, kv);
    const bool split = kv_split(kv);
    if (quest) {
        if ((st = quest_refresh(r, n)) != LETHE_OK) return st;
        struct {
            uint32_t D, Hq, Hkv, G, T, q_off, meta_off, pos_word0, kmin_word0, kmax_word0, k_pages, sel_off,
                sel_stride;
            uint32_t n_bind, chunk_words, pos_b0, kmin_b0, kmax_b0;   /* a split cache (kv_split.glsl) */
        } ps = {D, Hq, Hkv, Hq / Hkv, T, a[0].rem / 4, a[2].rem / 4, (uint32_t)(kv->pos_offs / 4),
                (uint32_t)(kv->kmin_offs / 4), (uint32_t)(kv->kmax_offs / 4), k_pages, a[2].rem / 4 + sel_off,
                sel_stride, 1, 0, 0, 0, 0};
        if (split) {
            const vk_buf *vb = kv->shared->impl;
            int32_t b, w;
            ps.n_bind = vb->kv_nbind;
            ps.chunk_words = (uint32_t)(vb->kv_chunk / 4);
            kv_loc(kv, kv->pos_offs, &b, &w);
            ps.pos_b0 = (uint32_t)b;
            ps.pos_word0 = (uint32_t)w;
            kv_loc(kv, kv->kmin_offs, &b, &w);
            ps.kmin_b0 = (uint32_t)b;
            ps.kmin_word0 = (uint32_t)w;
            kv_loc(kv, kv->kmax_offs, &b, &w);
            ps.kmax_b0 = (uint32_t)b;
            ps.kmax_word0 = (uint32_t)w;
            if ((st = kv_set_of(r->c, kv, &r->kv_set)) != LETHE_OK) return st;
        }
        vk_arg sa[3] = {a[0], a[1], a[2]};
        const uint32_t groups = T * Hkv, sx = LETHE_MIN(groups, 65535u), sy = (groups + sx - 1) / sx;
        st = dispatch(r, split ? "quest_select_split" : "quest_select", sa, 3, &ps, sizeof ps, sx, sy, 1);
        r->kv_set = VK_NULL_HANDLE;
        if (st != LETHE_OK) return st;
        /* KV reads: the selected pages' slots, counted once the device is done */
        if (!r->dry && (st = add_job(r->c, (vk_score_job){n, off + (size_t)sel_off * sizeof(int32_t), sel_stride,
                                                           true})) != LETHE_OK)
            return st;
    }
    struct {
        uint32_t D, Hq, Hkv, G, T, q_off, out_off, meta_off, page_words, slot_words, pos_word0, exp_word0, f16;
        float scale;
        uint32_t fused, w_off, w_stride, sel_off, sel_stride;
        uint32_t n_bind, chunk_pages, chunk_words, pos_b0, exp_b0;   /* a split cache (kv_split.glsl) */
    } pc = {D, Hq, Hkv, Hq / Hkv, T, a[0].rem / 4, a[3].rem / 4, 0, (uint32_t)(kv->page_bytes / 4),
            (uint32_t)(kv->slot_bytes / 4), (uint32_t)(kv->pos_offs / 4), (uint32_t)(kv->expire_offs / 4),
            kv->type == LETHE_F16, n->fparams[0], lethe_cpu_attention_fused(kv, (int64_t)(Hq / Hkv)), w_off, stride,
            quest ? sel_off : 0, sel_stride, 1, 0, 0, 0, 0};
    if (split) {
        const vk_buf *vb = kv->shared->impl;
        int32_t b, w;
        pc.n_bind = vb->kv_nbind;
        pc.chunk_pages = (uint32_t)(vb->kv_chunk / kv->page_bytes);
        pc.chunk_words = (uint32_t)(vb->kv_chunk / 4);
        kv_loc(kv, kv->pos_offs, &b, &w);
        pc.pos_b0 = (uint32_t)b;
        pc.pos_word0 = (uint32_t)w;
        kv_loc(kv, kv->expire_offs, &b, &w);
        pc.exp_b0 = (uint32_t)b;
        pc.exp_word0 = (uint32_t)w;
        if ((st = kv_set_of(r->c, kv, &r->kv_set)) != LETHE_OK) return st;
    }
    const uint32_t groups = T * Hq, gx = LETHE_MIN(groups, 65535u), gy = (groups + gx - 1) / gx;
    st = dispatch(r, split ? "attention_split" : "attention", a, 4, &pc, sizeof pc, gx, gy, 1);
    r->kv_set = VK_NULL_HANDLE;
    if (st != LETHE_OK) return st;
    /* as the CPU kernel counts (QUEST: after the device, from its selections) */
    if (!r->dry && !quest) __atomic_fetch_add(&kv->reads, reads, __ATOMIC_RELAXED);
    return LETHE_OK;
}

static lethe_status op_dms_decision(rec *r, const lethe_node *n) {
    const int mode = n->iparams[0], Hkv = n->iparams[1], G = n->iparams[2], layer = n->iparams[4];
    const bool per_layer = n->iparams[3] != 0;
    const uint32_t T = (uint32_t)n->ub->n_tokens;
    vk_arg a[2];
    lethe_status st;
    uint32_t D = 0, width = 0;
    if (mode == LETHE_DMS_FORCED) {
        /* position-hashed logits: host-computed, exactly the CPU's */
        const size_t cnt = (size_t)T * (size_t)Hkv;
        float *lg = malloc(cnt * sizeof(float));
        if (!lg) return lethe_fail(LETHE_ERR_OOM, "vulkan: forced DMS logits");
        for (uint32_t t = 0; t < T; t++)
            for (int h = 0; h < Hkv; h++)
                lg[(size_t)t * Hkv + h] = lethe_dms_forced_logit(n->ub->pos[t], layer, per_layer ? 0 : h, n->fparams[2]);
        st = arg_upload(r, lg, cnt * sizeof(float), NULL, &a[0]);
        free(lg);
        if (st != LETHE_OK) return st;
    } else {
        if ((st = arg_all(r, n->src[0], &a[0])) != LETHE_OK) return st;
        D = (uint32_t)n->src[0]->t.ne[0];
        width = (uint32_t)n->src[0]->t.ne[0];
    }
    if ((st = arg_all(r, n, &a[1])) != LETHE_OK) return st;
    struct { uint32_t T, Hkv, G, D, mode, per_layer, x_width, x_off, out_off; float scale, offset; } pc = {
        T, (uint32_t)Hkv, (uint32_t)G, D, (uint32_t)mode, per_layer, width, a[0].rem / 4, a[1].rem / 4,
        n->fparams[0], n->fparams[1]};
    uint32_t gx, gy;
    grid_1d((uint64_t)T * Hkv, 256, &gx, &gy);
    return dispatch(r, "dms_decision", a, 2, &pc, sizeof pc, gx, gy, 1);
}

/* TOP_K: x [T, V] -> [T, k, 2] (id, value bits): pass 0 into the activation
 * scratch [T, S, k, 2], pass 1 merges the S*k pairs of a row (top_k.comp). */
static lethe_status op_top_k(rec *r, const lethe_node *n) {
    const lethe_node *x = n->src[0];
    const uint32_t V = (uint32_t)x->t.ne[0], T = (uint32_t)lethe_tensor_nrows(&x->t), k = (uint32_t)n->iparams[0];
    uint32_t S, chunk;
    top_k_plan(V, k, &S, &chunk);
    vk_arg a[2];
    lethe_status st;
    if ((st = arg_all(r, x, &a[0])) != LETHE_OK || (st = arg_all(r, n, &a[1])) != LETHE_OK) return st;
    struct { uint32_t V, T, k, chunk, S, mode, x_off, out_off; } pc = {V, T, k, chunk, S, 0, a[0].rem / 4, a[1].rem / 4};
    if (S == 1) return dispatch(r, "top_k", a, 2, &pc, sizeof pc, 1, T, 1);
    const size_t bytes = top_k_scratch(n);
    if (r->dry) r->act_need = LETHE_MAX(r->act_need, bytes);
    r->q8_of = NULL;   /* the scratch no longer holds q8 activations */
    vk_arg mid[2] = {a[0], r->dry ? (vk_arg){r->c->dummy.buf, 0, 16, 0} : (vk_arg){r->c->act.buf, 0, align_to(bytes, 4), 0}};
    pc.out_off = 0;
    if ((st = dispatch(r, "top_k", mid, 2, &pc, sizeof pc, S, T, 1)) != LETHE_OK) return st;
    vk_arg fin[2] = {mid[1], a[1]};
    pc.mode = 1;
    pc.x_off = 0;
    pc.out_off = a[1].rem / 4;
    return dispatch(r, "top_k", fin, 2, &pc, sizeof pc, 1, T, 1);
}

static lethe_status record_range(rec *r, lethe_graph *g, int begin, int end) {
    r->rope_have = false;
    r->q8_of = NULL;
    for (int i = begin; i < end; i++) {
        const lethe_node *n = &g->nodes[i];
        lethe_status st = LETHE_OK;
        switch (n->op) {
        case LETHE_OP_NONE: break;
        case LETHE_OP_GET_ROWS: st = op_get_rows(r, n); break;
        case LETHE_OP_MATMUL: st = op_matmul(r, n); break;
        case LETHE_OP_RMS_NORM: st = op_rms_norm(r, n); break;
        case LETHE_OP_ADD:
        case LETHE_OP_MUL:
        case LETHE_OP_SWIGLU: st = op_eltwise(r, n); break;
        case LETHE_OP_ROPE: st = op_rope(r, n); break;
        case LETHE_OP_KV_STORE: st = op_kv_store(r, n); break;
        case LETHE_OP_ATTENTION: st = op_attention(r, n); break;
        case LETHE_OP_DMS_DECISION: st = op_dms_decision(r, n); break;
        case LETHE_OP_TOP_K: st = op_top_k(r, n); break;
        default:
            st = lethe_fail(LETHE_ERR_UNSUPPORTED, "vulkan: cannot compute node %d '%s' (%s)", i, n->t.name,
                            lethe_op_name(n->op));
        }
        if (st != LETHE_OK) return st;
    }
    return LETHE_OK;
}

#define VKF(call, what)                                                                          \
    do {                                                                                         \
        VkResult r_ = (call);                                                                    \
        if (r_ != VK_SUCCESS) return lethe_fail(LETHE_ERR_BACKEND, "vulkan: %s failed: %s", what, \
                                                lethe_vk_check(r_));                             \
    } while (0)

static lethe_status ensure_sets(vk_ctx *c, uint32_t n, VkDescriptorSet **sets, uint32_t *cap_sets) {
    if (n > c->dpool_cap) {
        if (c->dpool) vkDestroyDescriptorPool(c->dev, c->dpool, NULL);
        c->dpool = VK_NULL_HANDLE;
        c->dpool_cap = 0;
        uint32_t cap = LETHE_MAX(n, 256u);
        VkDescriptorPoolSize ps = {.type = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER, .descriptorCount = cap * LETHE_VK_BINDINGS};
        VkDescriptorPoolCreateInfo pi = {.sType = VK_STRUCTURE_TYPE_DESCRIPTOR_POOL_CREATE_INFO, .maxSets = cap,
                                         .poolSizeCount = 1, .pPoolSizes = &ps};
        VKF(vkCreateDescriptorPool(c->dev, &pi, NULL, &c->dpool), "vkCreateDescriptorPool");
        c->dpool_cap = cap;
    } else {
        VKF(vkResetDescriptorPool(c->dev, c->dpool, 0), "vkResetDescriptorPool");
    }
    if (n > *cap_sets) {
        VkDescriptorSet *s = realloc(*sets, (size_t)n * sizeof *s);
        if (!s) return lethe_fail(LETHE_ERR_OOM, "vulkan: descriptor sets");
        *sets = s;
        *cap_sets = n;
    }
    if (n == 0) return LETHE_OK;
    VkDescriptorSetLayout *layouts = malloc((size_t)n * sizeof *layouts);
    if (!layouts) return lethe_fail(LETHE_ERR_OOM, "vulkan: descriptor sets");
    for (uint32_t i = 0; i < n; i++) layouts[i] = c->dsl;
    VkDescriptorSetAllocateInfo ai = {.sType = VK_STRUCTURE_TYPE_DESCRIPTOR_SET_ALLOCATE_INFO,
                                      .descriptorPool = c->dpool, .descriptorSetCount = n, .pSetLayouts = layouts};
    VkResult res = vkAllocateDescriptorSets(c->dev, &ai, *sets);
    free(layouts);
    VKF(res, "vkAllocateDescriptorSets");
    return LETHE_OK;
}

/* TOVA / H2O after the device is done: the weights one ATTENTION node wrote
 * into the upload buffer, folded into kv->score exactly as the CPU kernel
 * does (cpu_attention.c): per (token, KV head) in token order, each slot's
 * weight summed over the G queries of the group in order, divided by G, set
 * (TOVA: the last query's) or added (H2O). */
static void apply_scores(vk_ctx *c, const vk_score_job *j) {
    const lethe_node *n = j->n;
    lethe_kv_cache *kv = n->kv;
    if (j->quest) {   /* the KV reads of QUEST's selected pages, as the CPU counts them */
        const int32_t *sel = (const int32_t *)((const uint8_t *)c->upload.map + j->off);   /* [T * Hkv][stride] */
        uint64_t reads = 0;
        for (int32_t t = 0; t < n->ub->n_tokens; t++)
            for (int h = 0; h < kv->n_head_kv; h++) {
                const lethe_kv_stream *s = lethe_kv_stream_at(kv, n->ub->seq_id[t], n->iparams[0], h);
                const int32_t *e = sel + ((size_t)t * kv->n_head_kv + (size_t)h) * j->stride;
                for (int32_t i = 0; i < e[0] && (uint32_t)i + 1 < j->stride; i++)
                    reads += (uint64_t)LETHE_MIN(LETHE_KV_PAGE, s->len - e[1 + i] * LETHE_KV_PAGE);
            }
        __atomic_fetch_add(&kv->reads, reads, __ATOMIC_RELAXED);
        return;
    }
    const int layer = n->iparams[0];
    const int64_t D = kv->head_dim, Hkv = kv->n_head_kv, T = n->ub->n_tokens;
    const int64_t Hq = lethe_tensor_nelements(&n->src[0]->t) / (D * T), G = Hq / Hkv;
    const bool set = kv->policy.rule != LETHE_KV_RULE_H2O;
    const float *w = (const float *)((const uint8_t *)c->upload.map + j->off);   /* [T][Hq][stride] */
    for (int64_t t = 0; t < T; t++) {
        const int32_t seq = n->ub->seq_id[t];
        if (seq < 0 || seq >= kv->n_seq) continue;
        for (int64_t hk = 0; hk < Hkv; hk++) {
            const lethe_kv_stream *s = lethe_kv_stream_at(kv, seq, layer, (int)hk);
            for (int32_t i = 0; i < s->len && (uint32_t)i < j->stride; i++) {
                float wsum = 0.0f;
                for (int64_t g = 0; g < G; g++) {
                    const float p = w[((size_t)t * Hq + (size_t)(hk * G + g)) * j->stride + (size_t)i];
                    if (p >= 0.0f) wsum += p;
                }
                float *dst = &kv->score[lethe_kv_meta(s, i)];
                *dst = set ? wsum / (float)G : *dst + wsum / (float)G;
            }
        }
    }
}

lethe_status lethe_vk_compute(lethe_backend *be, lethe_graph *g, int begin, int end, lethe_abort_fn abort_fn,
                              void *abort_user) {
    vk_ctx *c = be->ctx;
    if (!g || begin < 0 || end > g->n_nodes || begin > end)
        return lethe_fail(LETHE_ERR_INVALID_ARG, "vulkan: bad node range [%d, %d)", begin, end);
    for (int i = begin; i < end; i++)
        if (!lethe_vk_supports_op(be, &g->nodes[i]))
            return lethe_fail(LETHE_ERR_UNSUPPORTED, "vulkan: cannot compute node %d '%s' (%s)", i,
                              g->nodes[i].t.name, lethe_op_name(g->nodes[i].op));

    /* pass 1: count dispatches and upload bytes, upload new weights */
    rec r = {.c = c, .be = be, .dry = true};
    lethe_status st = record_range(&r, g, begin, end);
    if (st != LETHE_OK) return st;
    if (r.n_dispatch == 0) return LETHE_OK;
    if (r.upload_need > c->upload.size) {
        lethe_vk_buf_destroy(c, &c->upload);
        if ((st = lethe_vk_buf_create(c, r.upload_need + r.upload_need / 4, true, &c->upload)) != LETHE_OK) return st;
    }
    if (r.act_need > c->act.size) {
        lethe_vk_buf_destroy(c, &c->act);
        if ((st = lethe_vk_buf_create(c, r.act_need + r.act_need / 4, false, &c->act)) != LETHE_OK) return st;
    }
    if ((st = ensure_sets(c, r.n_dispatch, &c->sets, &c->cap_sets)) != LETHE_OK) return st;

    /* pass 2: record */
    VKF(vkResetCommandBuffer(c->cmd, 0), "vkResetCommandBuffer");
    VkCommandBufferBeginInfo bi = {.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO,
                                   .flags = VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT};
    VKF(vkBeginCommandBuffer(c->cmd, &bi), "vkBeginCommandBuffer");
    if (c->qpool) {
        vkCmdResetQueryPool(c->cmd, c->qpool, 0, 2);
        vkCmdWriteTimestamp(c->cmd, VK_PIPELINE_STAGE_TOP_OF_PIPE_BIT, c->qpool, 0);
    }
    /* earlier transfers (buffer_set, weight uploads) before the shaders read */
    VkMemoryBarrier in = {.sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER,
                          .srcAccessMask = VK_ACCESS_TRANSFER_WRITE_BIT | VK_ACCESS_HOST_WRITE_BIT,
                          .dstAccessMask = VK_ACCESS_SHADER_READ_BIT | VK_ACCESS_SHADER_WRITE_BIT};
    vkCmdPipelineBarrier(c->cmd, VK_PIPELINE_STAGE_TRANSFER_BIT | VK_PIPELINE_STAGE_HOST_BIT,
                         VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT, 0, 1, &in, 0, NULL, 0, NULL);
    c->upload_used = 0;
    c->n_score_jobs = 0;
    const uint32_t n_sets = r.n_dispatch;
    r = (rec){.c = c, .be = be, .dry = false, .sets = c->sets};
    st = record_range(&r, g, begin, end);
    LETHE_ASSERT(st != LETHE_OK || r.n_dispatch == n_sets);
    /* results before later transfers (buffer_get) and host reads */
    VkMemoryBarrier out = {.sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER,
                           .srcAccessMask = VK_ACCESS_SHADER_WRITE_BIT,
                           .dstAccessMask = VK_ACCESS_TRANSFER_READ_BIT | VK_ACCESS_HOST_READ_BIT};
    vkCmdPipelineBarrier(c->cmd, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT,
                         VK_PIPELINE_STAGE_TRANSFER_BIT | VK_PIPELINE_STAGE_HOST_BIT, 0, 1, &out, 0, NULL, 0, NULL);
    if (c->qpool) vkCmdWriteTimestamp(c->cmd, VK_PIPELINE_STAGE_BOTTOM_OF_PIPE_BIT, c->qpool, 1);
    VKF(vkEndCommandBuffer(c->cmd), "vkEndCommandBuffer");
    if (st != LETHE_OK) return st;
    if (abort_fn && abort_fn(abort_user))
        return lethe_fail(LETHE_ERR_ABORTED, "vulkan: compute stopped by the abort callback");

    VkSubmitInfo si = {.sType = VK_STRUCTURE_TYPE_SUBMIT_INFO, .commandBufferCount = 1, .pCommandBuffers = &c->cmd};
    VKF(vkResetFences(c->dev, 1, &c->fence), "vkResetFences");
    VKF(lethe_vk_queue_submit(c, &si, c->fence), "vkQueueSubmit");
    VKF(vkWaitForFences(c->dev, 1, &c->fence, VK_TRUE, UINT64_MAX), "vkWaitForFences");
    for (int j = 0; j < c->n_score_jobs; j++) apply_scores(c, &c->score_jobs[j]);
    if (c->qpool) {
        uint64_t ts[2];
        if (vkGetQueryPoolResults(c->dev, c->qpool, 0, 2, sizeof ts, ts, sizeof ts[0],
                                  VK_QUERY_RESULT_64_BIT | VK_QUERY_RESULT_WAIT_BIT) == VK_SUCCESS) {
            c->last_compute_ms = (double)(ts[1] - ts[0]) * c->ts_period_ns * 1e-6;
            c->total_compute_ms += c->last_compute_ms;
            LETHE_LOGD("vulkan: nodes [%d, %d): %u dispatches, %.3f ms on the device", begin, end, n_sets,
                       c->last_compute_ms);
        }
    }
    return LETHE_OK;
}
