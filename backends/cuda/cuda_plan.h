/* cuda_plan.h — the launch plan of one compute() call of the CUDA backend:
 * every kernel launch of a node range with its arguments, and the bytes
 * that change from step to step (positions, RoPE frequencies, graph inputs
 * such as token ids, KV_STORE slot offsets and expire indices, attention
 * work tables, page lists and split counts) gathered in ONE staging buffer
 * that one host-to-device copy moves before the first launch.
 *
 * Why a plan: a decode step is replayed as a CUDA graph (cuda_graph.c). A
 * graph freezes every kernel argument and grid, so nothing a step changes
 * may live in them: the kernels read the per-step values from device memory
 * at fixed offsets of the upload buffer, and the grids depend only on what
 * the key covers. In "bucketed" mode (the graph path) the quantities that
 * drift with eviction and growing streams are rounded up to buckets: the
 * decode attention's span count (grid y) to a power of two, shared by every
 * ATTENTION node of the range (surplus CTAs exit at once; the combine reads
 * the real count from device memory), and the page-list region of each
 * ATTENTION node to a power of two pages (TOVA / H2O: the weights' row
 * stride too). Two steps whose launch lists
 * are equal byte for byte (same key) differ only in the staging bytes.
 *
 * Device results the host needs after the sync (score policies: TOVA / H2O
 * softmax weights to fold into kv->score, QUEST's rewritten work entries
 * whose lengths are the KV reads) are copied back BY THE PLAN: a COPY_BACK
 * launch (device to pinned host, the same offset of the staging buffer) is
 * part of the launch list, so a replayed graph copies them too, and
 * cu_plan_finish does the host's part after the sync. The upload buffer is
 * [0, stage_size) staged bytes (copied in), then [result_off, up_size)
 * device-only areas the kernels write (weights, QUEST's page lists).
 *
 * Fused decode passes (env.fuse): found by pattern over the node range,
 * the graph untouched (cuda_plan.c "fusion"): an ADD whose only next reader
 * is an RMS_NORM runs inside that norm's launch (NORM_FUSED), and an
 * RMS_NORM or SWIGLU whose readers include decode GEMVs on q8-family
 * weights writes the q8 blocks those GEMVs read (NORM_FUSED / SWIGLU_Q8
 * into the fused area of the scratch; GEMV act_ready = 1), its f32 result
 * only when another node reads it.
 *
 * Page lists: staged per ATTENTION node (CU_R_PLISTS), or, when the module
 * offers a device-resident mirror of the cache's lists (cuda_plist.h,
 * cu_plan_build_pl), read from the mirror's arena with only what changed
 * uploaded (cu_plan.plist_bytes).
 *
 * Plain C with no CUDA call, so tests/test_cuda_host_plan*.c build the very plans
 * the module runs. The module side (device addresses, weights, scratch)
 * comes through cu_plan_env callbacks.
 *
 * Legend: T tokens of the micro-batch, Hkv KV heads, G = Hq / Hkv, D head
 * dim, P = 32 slots per page, cap = the decode attention grid's span count.
 */
#ifndef LETHE_CUDA_PLAN_H
#define LETHE_CUDA_PLAN_H

#include "cuda_kv_meta.h"   /* graph.h, kv_cache.h, the kernels' table types */
#include "cuda_plist.h"     /* device-resident page lists */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum cu_kind {
    CU_K_CLEAR_ERR = 1,   /* p0 = d_err: zero the bad-input flag                                   */
    CU_K_GET_ROWS,        /* p: w, ids, out, err; i: wtype, row_bytes, Nw, E, R                     */
    CU_K_RMS_NORM,        /* p: x, w (0: none), y; i: T, E; f: eps                                   */
    CU_K_BINARY,          /* p: a, b, y; i: mul, T, N, bcast                                         */
    CU_K_SWIGLU,          /* p: gate, up, y; i: n                                                    */
    CU_K_ROPE,            /* p: x, y, pos, invf; i: T, H, D, n_rot, neox, borrow_g                   */
    CU_K_DMS,             /* p: x, y, pos; i: mode, xw, T, Hkv, G, per_layer, layer; f: scale, offset, rate */
    CU_K_GEMV,            /* p: w, x, y, act (q8 activations in scratch; 0: none); i: wtype, row_bytes, N, K, T, variant,
                             act_ready (1: act = the fused area, already holding x's q8 blocks: no quantization) */
    CU_K_MATMUL,          /* prefill (cuBLAS; never captured) p: w, x, y, scratch; i: wtype, row_bytes, N, K, T */
    CU_K_KV_STORE,        /* p: k, v, dec (0: none), rows, pool, expire; i: n_rows, D, slot_bytes, f16 */
    CU_K_ATTENTION,       /* p: q, out, work, plists, qpos, split, part, pool, pos, expire, wts (0: none);
                             i: n_blocks, kernel (LETHE_CU_ATTN_TILED / _DECODE / _TC), Hkv, G, cap, page_bytes,
                             slot_bytes, f16, D, wstride; f: scale */
    CU_K_FILL,            /* p0: upload-buffer area; i: bytes, byte value (TOVA / H2O weights: NaN bytes)    */
    CU_K_COPY_BACK,       /* p0: upload-buffer area; i: bytes: device -> the same offset of pinned staging    */
    CU_K_QUEST_BOUNDS,    /* p: pool, kmin, kmax, ref, work, plists; i: n_items, page_bytes, slot_bytes, f16, D, ny */
    CU_K_QUEST_SELECT,    /* p: q, work, plists, qpos, pos, kmin, kmax, sel (= plists + sel_base);
                             i: n_items (grid), sel_base, k, Hkv, G, D                                       */
    CU_K_TOP_K,           /* p: x, out, scratch (0: one segment per row); i: T, V, k (k_topk.cu)            */
    CU_K_NORM_FUSED,      /* p: a, b (0: no ADD), sum (the ADD's node, 0: none), w (0: none), y (0: not written),
                             xq (the fused area, 0: none); i: T, E, add node (-1: none); f: eps (cuda_fuse.cuh) */
    CU_K_SWIGLU_Q8,       /* p: gate, up, y (0: not written), xq (the fused area); i: n                      */
} cu_kind;

#define CU_LP 12   /* pointer arguments of a launch */
#define CU_LI 10   /* integer arguments of a launch */

/* One launch. p[s] is a device address, or (bit s of `staged`) an offset
 * into the upload buffer: the executor adds the buffer's base, so a plan
 * does not change when that buffer moves (bit s of `result` too: the
 * offset is in the device-only areas after the staged bytes). grid: the
 * main kernel's grid where the plan decides it (KV_STORE, ATTENTION, QUEST),
 * else 0. The struct is zeroed before it is filled: launch lists compare
 * with memcmp. */
typedef struct cu_launch {
    int32_t kind, node;   /* node: index in the graph */
    uint32_t staged, result;
    uint32_t grid[3];
    uint64_t p[CU_LP];
    int64_t i[CU_LI];
    float f[4];
} cu_launch;

/* What a staging region holds (tests decode them by kind). */
typedef enum cu_region_kind {
    CU_R_INPUT = 1,   /* a graph input leaf (token ids ...): its bytes          */
    CU_R_POS,         /* a micro-batch's positions [T] int32                     */
    CU_R_INVF,        /* RoPE inverse frequencies [n_rot / 2] double            */
    CU_R_KV_ROWS,     /* KV_STORE rows [T * Hkv] lethe_cu_kv_row                */
    CU_R_WORK,        /* ATTENTION work [n_blocks][Hkv] lethe_cu_attn_work       */
    CU_R_PLISTS,      /* ATTENTION page lists [cap pages] int32 (zero padded)    */
    CU_R_SPLIT,       /* ATTENTION decode split {chunk, n_split} int32           */
    CU_R_QUEST_REF,   /* QUEST pages to refresh [T * Hkv][2] {first, count} int32 */
    CU_R_WEIGHTS,     /* device-only: TOVA / H2O weights [T][Hq][wstride] f32   */
    CU_R_QUEST_SEL,   /* device-only: QUEST's chosen page lists [T * Hkv][k] int32 */
} cu_region_kind;

typedef struct cu_region {
    int32_t kind, node;
    size_t off, size;       /* in the upload buffer; size: the region's capacity */
    const void *host;       /* source host address (dedup of inputs and positions) */
    bool result;            /* a device-only area (off >= result_off): not staged */
} cu_region;

/* Host work after the compute's sync, on bytes a COPY_BACK launch of the
 * plan brought to the pinned staging buffer at `off` (cu_plan_finish). */
typedef enum cu_post_kind {
    CU_POST_FOLD = 1,     /* TOVA / H2O: weights [T][Hq][stride] -> kv->score (cu_score_fold) */
    CU_POST_QUEST_READS,  /* QUEST: the rewritten work entries: KV reads = sum of L           */
} cu_post_kind;

typedef struct cu_post {
    int32_t kind, stride;
    const lethe_node *n;
    size_t off, bytes;
} cu_post;

/* Side effects of a launch that are not part of the launch (KV reads: they
 * change every step and must stay out of the compared launch list). */
typedef struct cu_side {
    lethe_kv_cache *kv;
    uint64_t reads;
} cu_side;

/* The module's services. Each returns a lethe_status; on failure the
 * callback has reported the error itself (the plan adds no message). */
typedef struct cu_plan_env {
    void *user;
    const void *backend;   /* lethe_backend *: a node whose buffer belongs to it is on the device */
    int sm_count;
    uint64_t d_err;        /* device address of the bad-input flag */
    /* device address of a node's data: a buffer of this backend, or a weight (uploaded once) */
    int (*resolve)(void *user, const lethe_node *n, uint64_t *dev);
    /* device scratch of at least `bytes` (one per plan: asked once, the largest need) */
    int (*scratch)(void *user, size_t bytes, uint64_t *dev);
    /* the KV cache's buffer is about to be read by kernels (placement advice) */
    int (*kv_prepare)(void *user, const lethe_kv_cache *kv);
    /* the decode GEMV's variant (LETHE_CUDA_GEMV) and the scratch bytes of its
     * quantized activations (k_gemv.cu lethe_cu_gemv_act_bytes; NULL: none) */
    int gemv_variant;
    size_t (*gemv_act_bytes)(int wtype, int64_t K, int64_t T, int variant);
    /* prefill ATTENTION on the tensor-core kernel where it applies
     * (cu_attn_use_tc: f16 cache, D 64 / 128, no TOVA / H2O); 0: the tiled
     * f32 kernel always (LETHE_CUDA_PREFILL_ATTN=f32) */
    int prefill_tc;
    /* fused decode passes (LETHE_CUDA_FUSE, on unless "0"): ADD + RMS_NORM,
     * and RMS_NORM / SWIGLU writing the q8 blocks their GEMVs read (cuda_fuse.cuh) */
    int fuse;
} cu_plan_env;

/* The module's device-resident page lists (cuda_plist.h): the mirror of a
 * cache, synced with it now; asked once per cache and plan. *m NULL: the
 * plan stages that cache's lists itself. QUEST caches never ask (the
 * selection writes its lists next to the staged ones). */
typedef struct cu_plist_env {
    void *user;
    int (*mirror)(void *user, const lethe_kv_cache *kv, cu_plist_mirror **m);
} cu_plist_env;

#define CU_PLAN_MIRRORS 4   /* caches with a page-list mirror in one plan (more: staged) */

typedef struct cu_plan {
    cu_launch *launches;
    int n_launches, cap_launches;
    cu_side *side;                /* [n_launches] */
    cu_region *regions;
    int n_regions, cap_regions;
    uint8_t *stage;               /* staging bytes [stage_size] */
    size_t stage_size, stage_cap;
    size_t result_off, up_size;   /* device-only areas [result_off, up_size) of the upload buffer */
    cu_post *post;                /* host work after the sync */
    int n_post, cap_post;
    bool bucketed;
    bool capturable;              /* every launch a plain kernel (no cuBLAS, no prefill GEMM) */
    int32_t span_cap;             /* bucketed: the decode attention grid's span count (1: none) */
    int32_t plist_cap;            /* bucketed: page-list capacity of each ATTENTION node */
    size_t scratch_bytes;
    size_t fuse_off, fuse_bytes;  /* the fused q8 area in the scratch: [fuse_off, + fuse_bytes) (0: none) */
    int n_fused;                  /* NORM_FUSED / SWIGLU_Q8 launches, GEMVs on their blocks, ADDs folded in */
    uint64_t key;                 /* hash of the launch list and the staging size */
    /* Page lists. With a mirror (cu_plan_build_pl) the attention launches read the
     * mirror's device arena (a launch argument, not staged) and the mirror's
     * pending upload goes before the plan's staging copy (cuda_ops.c); the
     * bytes a step moves for page lists are plist_staged + plist_bytes. */
    cu_plist_mirror *mirrors[CU_PLAN_MIRRORS];   /* the mirrors this plan's attention reads */
    int n_mirrors;
    size_t plist_bytes;           /* the mirrors' pending uploads after the plan's syncs */
    size_t plist_staged;          /* page-list bytes inside [0, stage_size) (QUEST, no mirror) */
} cu_plan;

/* --- tensor helpers the module shares with the plan */
size_t cu_row_bytes(lethe_dtype t, int64_t n);   /* 0: dtype unknown here or n not whole blocks */
int64_t cu_nrows(const lethe_tensor *t);
size_t cu_nbytes(const lethe_tensor *t);
/* Query heads per KV head of an ATTENTION node, 0 if q's shape does not fit. */
int cu_attn_group(const lethe_node *n);
/* Scratch bytes a node needs (prefill matmul operands, the decode GEMV's
 * quantized activations, split-K partials; bucketed: the partials of the
 * largest span bucket the plan may pick). env: sm_count and the GEMV fields. */
size_t cu_plan_scratch_need(const lethe_node *n, const cu_plan_env *env, bool bucketed);
/* Decode split plan of an ATTENTION node (n_split 1 when not decode). */
void cu_plan_attn_splits(const lethe_node *n, int sm_count, int32_t n_blocks, bool decode, int32_t *chunk,
                         int32_t *n_split);
/* Smallest power of two >= n (n >= 1). */
int32_t cu_pow2_ceil(int32_t n);

/* May a plan of nodes [begin, end) be captured at all: every MATMUL a GEMV
 * (T <= LETHE_CU_GEMV_MAX_T). Decides whether the caller asks for a
 * bucketed plan. */
bool cu_plan_decode_shaped(const lethe_graph *g, int begin, int end);

/* The plan's pages per QUEST stream, the split plan's length cap. */
int32_t cu_plan_attn_lmax(const lethe_node *n);

/* Build the plan of nodes [begin, end) (every node the backend supports).
 * err: the plan's own message ("" when a callback failed: it reported). */
int cu_plan_build(cu_plan *p, const cu_plan_env *env, lethe_graph *g, int begin, int end, bool bucketed, char *err,
                  size_t errlen);
/* The same with the page lists of caches read from their device mirrors
 * (pl NULL: every list staged, as cu_plan_build). */
int cu_plan_build_pl(cu_plan *p, const cu_plan_env *env, const cu_plist_env *pl, lethe_graph *g, int begin, int end,
                     bool bucketed, char *err, size_t errlen);
void cu_plan_free(cu_plan *p);
/* After the compute's sync (the plan's launches, or its replayed graph, are
 * done; up_host holds what its COPY_BACK launches brought): the KV reads,
 * QUEST's from its rewritten work entries, and the TOVA / H2O fold. */
void cu_plan_finish(const cu_plan *p, const uint8_t *up_host);

/* The device address a launch argument resolves to, given the upload buffer's base. */
static inline void *cu_arg(const cu_launch *l, int s, uint8_t *up_dev) {
    return (l->staged >> s) & 1u ? (void *)(up_dev + l->p[s]) : (void *)(uintptr_t)l->p[s];
}

#endif
