/* cuda_kernels.h — the C ABI between the CUDA backend's C side
 * (cuda_backend.c, cuda_ops.c) and its kernels (*.cu, one op family each).
 *
 * Every launcher enqueues on `stream` and returns cudaGetLastError() of the
 * launch (cudaSuccess = 0); none synchronizes. Pointers are device pointers.
 * Shapes outermost-first as in core/graph.h; legend:
 *   T tokens (rows of activations), E / N / F / K row widths (N weight rows,
 *   K the reduced dimension), R gathered rows, H heads, Hkv KV heads,
 *   G = Hq / Hkv query heads per KV head, D head dim.
 * `wtype` is a lethe_dtype id (core/dtype.h); weights are GGUF block rows of
 * `row_bytes` bytes each.
 */
#ifndef LETHE_CUDA_KERNELS_H
#define LETHE_CUDA_KERNELS_H

#include <cuda_runtime_api.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Can the kernels read weights of this dtype (GET_ROWS, GEMV, dequant)? */
int lethe_cu_wtype_ok(int wtype);

/* k_elementwise.cu */
/* GET_ROWS: w [Nw, E] wtype, ids [R] -> out [R, E] f32; an id outside
 * [0, Nw) gives a zero row and sets *err = 1. */
cudaError_t lethe_cu_get_rows(int wtype, const void *w, size_t row_bytes, int64_t Nw, int64_t E,
                              const int32_t *ids, int64_t R, float *out, int *err, cudaStream_t stream);
/* RMS_NORM: x [T, E], w [E] or NULL -> y [T, E]; sums of squares in double. */
cudaError_t lethe_cu_rms_norm(const float *x, const float *w, float *y, int64_t T, int64_t E, float eps,
                              cudaStream_t stream);
/* ADD (mul = 0) / MUL (mul = 1): a [T, N], b [T, N] or [N] (bcast) -> y [T, N]. */
cudaError_t lethe_cu_binary(int mul, const float *a, const float *b, float *y, int64_t T, int64_t N, int bcast,
                            cudaStream_t stream);
/* SWIGLU: gate [n], up [n] -> silu(gate) * up. */
cudaError_t lethe_cu_swiglu(const float *gate, const float *up, float *y, int64_t n, cudaStream_t stream);
/* Fused decode passes (cuda_fuse.cuh; the plan decides, cuda_plan.c):
 * x' = a + b (b NULL: x' = a) [T, E], written to sum when non-NULL; then
 * RMS_NORM of x' with w -> y [T, E] when y is non-NULL, and its q8 blocks
 * xq [T][E / 32][64 B] (k_quant_q8's bytes) when xq is non-NULL (E % 32 == 0).
 * Every value is the unfused launches' bits. E <= CU_NORM_MAX_E (11904). */
cudaError_t lethe_cu_norm_fused(const float *a, const float *b, float *sum, const float *w, float *y, void *xq,
                                int64_t T, int64_t E, float eps, cudaStream_t stream);
/* SWIGLU of gate, up [n] (n % 32 == 0) -> its q8 blocks xq [n / 32][64 B],
 * and y [n] when non-NULL. */
cudaError_t lethe_cu_swiglu_q8(const float *gate, const float *up, float *y, void *xq, int64_t n,
                               cudaStream_t stream);
/* DMS_DECISION -> out [T, Hkv] logits (graph.h): mode 0 from q [T, Hkv*G, D]
 * (channel D-1 of head h*G), 1 from adapter projections x [T, xw] (xw = Hkv
 * or 1), 2 forced by the position hash (x unused). */
cudaError_t lethe_cu_dms_decision(int mode, const float *x, int64_t xw, int64_t D, float *out, int64_t T, int Hkv,
                                  int G, int per_layer, float scale, float offset, float rate, int layer,
                                  const int32_t *pos, cudaStream_t stream);

/* k_topk.cu */
/* TOP_K: x [T, V] f32 -> out [T, k, 2] (id, value bits), best first in the
 * host sampler's order (cuda_topk.h); scratch: cu_topk_scratch_bytes(T, V, k)
 * bytes of device memory (none when one segment covers a row). */
cudaError_t lethe_cu_top_k(const float *x, int32_t *out, int64_t T, int64_t V, int k, void *scratch,
                           cudaStream_t stream);

/* k_kv_move.cu */
/* KV row moves (backend.h buffer_move_rows, cuda_kv_move.h): mv [n][2]
 * {src, dst} byte offsets into buf, a device copy; rows of row_bytes moved
 * by words of wb bytes (cu_move_word_bytes) through scratch [n * row_bytes]:
 * a gather launch, then a scatter launch. */
cudaError_t lethe_cu_move_rows(void *buf, const size_t *mv, int64_t n, size_t row_bytes, int wb, void *scratch,
                               cudaStream_t stream);

/* k_plist.cu */
/* The page-list mirror's pending upload (cuda_plist.h), in device memory:
 * runs [n_runs][3] {from, to, count} copied inside the arena, then pairs
 * [n][2] {arena index, page id}: arena[index] = page id. */
cudaError_t lethe_cu_plist_move(int32_t *arena, const int32_t *runs, int64_t n_runs, cudaStream_t stream);
cudaError_t lethe_cu_plist_scatter(int32_t *arena, const int32_t *pairs, int64_t n, cudaStream_t stream);

/* k_rope.cu */
/* ROPE: x [T, H, D] -> y, token t at angle pos[t] * invf[i] (computed in
 * double, as the CPU does). neox: pairs (i, i + n_rot/2), else (2i, 2i+1).
 * borrow_g > 0: channel D-1 of heads h % borrow_g == 0 is 0 before and after. */
cudaError_t lethe_cu_rope(const float *x, float *y, int64_t T, int64_t H, int64_t D, int n_rot, int neox,
                          const int32_t *pos, const double *invf, int borrow_g, cudaStream_t stream);

/* k_gemv.cu */
/* Decode GEMV for 1 <= T <= LETHE_CU_GEMV_MAX_T: w [N, K] wtype, x [T, K] f32
 * -> y [T, N] f32. Weights are read once for all T tokens (batched GEMV for
 * parallel sequences). q4_0/q4_1/q5_0/q5_1/q8_0: the activations are first
 * quantized into `act` (lethe_cu_gemv_act_bytes, device scratch) to the CPU
 * backend's q8 blocks and every dot is the CPU's integer dot in its float
 * order (the CPU's bits); f32/f16/bf16: 16-byte loads, lanes split K.
 * variant (LETHE_CUDA_GEMV): NEW (4 lanes per row), WIDE ("wide": 2 lanes
 * per row, 16 rows per warp; q8 types only, the same bits), OLD ("old": the
 * first kernel, blocks dequantized to float against f32 activations; no
 * scratch), kept for comparison. */
#define LETHE_CU_GEMV_MAX_T 8
enum { LETHE_CU_GEMV_NEW = 0, LETHE_CU_GEMV_OLD = 1, LETHE_CU_GEMV_WIDE = 2 };
size_t lethe_cu_gemv_act_bytes(int wtype, int64_t K, int64_t T, int variant);
cudaError_t lethe_cu_gemv(int wtype, const void *w, size_t row_bytes, const float *x, float *y, int64_t N,
                          int64_t K, int64_t T, int variant, void *act, cudaStream_t stream);
/* The same GEMV on activations already in q8 blocks (xq: what k_quant_q8
 * would write, here from a fused norm / swiglu launch): q4_0 / q4_1 / q5_0 /
 * q5_1 / q8_0 weights, variant NEW or WIDE only. */
cudaError_t lethe_cu_gemv_xq(int wtype, const void *w, size_t row_bytes, const void *xq, float *y, int64_t N,
                             int64_t K, int64_t T, int variant, cudaStream_t stream);

/* k_convert.cu (prefill: dequantize or convert, then cuBLAS) */
/* rows [r0, r1) of w [N, K] wtype -> out [r1 - r0, K] f16 (bf16 = 0) or bf16. */
cudaError_t lethe_cu_dequant_rows(int wtype, const void *w, size_t row_bytes, int64_t r0, int64_t r1, int64_t K,
                                  void *out, int bf16, cudaStream_t stream);
/* x [n] f32 -> out [n] f16 (bf16 = 0) or bf16, round to nearest even. */
cudaError_t lethe_cu_f32_to_half(const float *x, void *out, int64_t n, int bf16, cudaStream_t stream);

/* k_attention.cu — the KV cache on the device (kv_cache.h layout, read and
 * written in place in the cache's managed buffer). Legend: T tokens, Hkv KV
 * heads, G = Hq / Hkv (<= LETHE_CU_ATTN_MAX_G), D head dim (32, 64, 128 or
 * 256), P = 32 slots per page, L slots of a head stream (holes included). */
#define LETHE_CU_ATTN_MAX_G 8
#define LETHE_CU_ATTN_MAX_SPLIT 128
#define LETHE_CU_KV_PAGE 32

/* KV_STORE, one per (t, h) row r = t * Hkv + h, resolved by the host from
 * its bookkeeping: byte offset of the K row of the slot reserved for the
 * token (its V row is P rows after it), index into `expire` of the
 * sequence's previous token in that stream (-1: none) and the expire a
 * positive DMS decision gives it. */
typedef struct lethe_cu_kv_row {
    int64_t k_off;
    int32_t exp_idx;
    int32_t new_exp;
} lethe_cu_kv_row;

/* ATTENTION work, [n_blocks][Hkv]: a block is nt consecutive tokens
 * t0 .. t0 + nt - 1 of the micro-batch, all of one sequence; for KV head hk
 * it reads that sequence's stream: L slots whose page ids are
 * plists[plist .. plist + ceil(L / P)). */
typedef struct lethe_cu_attn_work {
    int32_t L, plist, t0, nt;
} lethe_cu_attn_work;

/* The cache as the kernels see it: pool [pages][2][P][D] (K block, V block),
 * pos / expire [pages][P]; QUEST: key bounds kmin / kmax [pages][D] (else NULL). */
typedef struct lethe_cu_kv_view {
    uint8_t *pool;
    int32_t *pos, *expire;
    size_t page_bytes, slot_bytes;
    int f16;
    int D;
    float *kmin, *kmax;
} lethe_cu_kv_view;

/* Split-K plan for the decode kernel: spans of `chunk` slots (a multiple of
 * P, at least 4 pages) so that about `target` CTAs run over n_items
 * (token, KV head) pairs whose longest stream has Lmax slots. */
static inline void cu_attn_split_plan(int64_t n_items, int32_t Lmax, int64_t target, int32_t *chunk,
                                      int32_t *n_split) {
    int64_t want = n_items > 0 ? (target + n_items - 1) / n_items : 1;
    if (want < 1) want = 1;
    if (want > LETHE_CU_ATTN_MAX_SPLIT) want = LETHE_CU_ATTN_MAX_SPLIT;
    int64_t c = Lmax > 0 ? ((int64_t)Lmax + want - 1) / want : LETHE_CU_KV_PAGE;
    c = (c + LETHE_CU_KV_PAGE - 1) / LETHE_CU_KV_PAGE * LETHE_CU_KV_PAGE;
    if (c < 4 * LETHE_CU_KV_PAGE) c = 4 * LETHE_CU_KV_PAGE;
    *chunk = (int32_t)c;
    *n_split = Lmax > 0 ? (int32_t)(((int64_t)Lmax + c - 1) / c) : 1;
}

/* Can the attention kernels take this head dim and group size? */
static inline int lethe_cu_attn_shape_ok(int D, int G) {
    return (D == 32 || D == 64 || D == 128 || D == 256) && G >= 1 && G <= LETHE_CU_ATTN_MAX_G;
}
/* The kernel of an ATTENTION launch (its `decode` argument; cuda_plan.h
 * CU_K_ATTENTION i[1]): flash-decoding (one token per block), the tiled f32
 * kernel (blocks of 32 / G tokens), or the tensor-core prefill kernel
 * (k_attn_tc.cu: blocks of LETHE_CU_ATTN_TC_ROWS / G tokens, f16 cache,
 * D 64 or 128, no TOVA / H2O weights). */
#define LETHE_CU_ATTN_TILED 0
#define LETHE_CU_ATTN_DECODE 1
#define LETHE_CU_ATTN_TC 2
#define LETHE_CU_ATTN_ROWS 32      /* query rows per block of the tiled f32 kernel   */
#define LETHE_CU_ATTN_TC_ROWS 64   /* query rows per block of the tensor-core kernel */
static inline int lethe_cu_attn_tc_ok(int D, int G, int f16) {
    return (D == 64 || D == 128) && G >= 1 && G <= LETHE_CU_ATTN_MAX_G && f16;
}

/* k, v [T * Hkv, D] f32 -> the rows' slots (f16 round to nearest even, or
 * f32); dec [T * Hkv] or NULL: dec[r] > 0 sets expire[rows[r].exp_idx]. */
cudaError_t lethe_cu_kv_store(const lethe_cu_kv_view *kv, const float *k, const float *v, const float *dec,
                              const lethe_cu_kv_row *rows, int64_t n_rows, cudaStream_t stream);
/* q [T, Hkv * G, D] f32 -> out [T, Hkv * G, D]: softmax(scale q.k) v over
 * the slots j with pos[j] <= qpos[t] < expire[j]; none visible: zeros.
 * decode != 0 (every block one token): flash-decoding, each block's stream
 * cut into n_split spans of `chunk` slots (a multiple of P), one CTA per
 * (block, KV head, span) reading each K/V row once for its G query heads,
 * partials in `part` [n_blocks * Hkv][cap][G][D + 2] f32, then a combine
 * kernel (launched when cap > 1; it does nothing when n_split == 1: the
 * span's CTA wrote the output directly). chunk and n_split are read from
 * the device array split[2] = {chunk, n_split}, 1 <= n_split <= cap: the
 * grid (T * Hkv, cap) depends on cap alone, so a captured CUDA graph stays
 * valid while n_split changes (surplus CTAs exit at once). decode == 0: the
 * tiled kernel, one CTA per (block, KV head) with up to 32 / G tokens
 * (split and cap unused); decode == LETHE_CU_ATTN_TC: the tensor-core
 * kernel (lethe_cu_attention_tc; wts must be NULL). */
cudaError_t lethe_cu_attention(const lethe_cu_kv_view *kv, const float *q, float *out, const lethe_cu_attn_work *work,
                               int n_blocks, int decode, const int32_t *plists, const int32_t *qpos, int Hkv, int G,
                               float scale, const int32_t *split, int cap, float *part, float *wts, int wstride,
                               cudaStream_t stream);
/* The tensor-core prefill kernel alone (lethe_cu_attention with decode =
 * LETHE_CU_ATTN_TC comes here): grid (n_blocks, Hkv), blocks of at most
 * LETHE_CU_ATTN_TC_ROWS / G tokens, no weights. */
cudaError_t lethe_cu_attention_tc(const lethe_cu_kv_view *kv, const float *q, float *out,
                                  const lethe_cu_attn_work *work, int n_blocks, const int32_t *plists,
                                  const int32_t *qpos, int Hkv, int G, float scale, cudaStream_t stream);
/* wts (TOVA / H2O, else NULL): [T][Hkv * G][wstride] f32, filled with NaN
 * bytes by the caller: every key's softmax weight exp(s - M) / den of its
 * query (cuda_attn.cuh cu_score_weight), -1 where it has none; slots
 * [0, L) of each query's stream (wstride >= the longest L). Normalized
 * after the split-K combine (decode) or at the end of the tiled kernel. */

/* QUEST. Bounds: grid (n_items, ny), work item i = (token, KV head) of the
 * decode plan; ref [n_items][2] = {first stale page, page count} (cuda_kv_meta.h
 * cu_quest_refresh_items; first -1: none) in device memory: for each of the
 * item's pages pg in [first, count) (ny CTAs share them), page
 * plists[work[i].plist + pg], rows min(P, L - pg P) clamped at 0, kmin /
 * kmax [page][d] = min / max over its K rows (as f32). Must run before the
 * selection rewrites the entries. The grid depends on T and Hkv only, so a
 * captured graph keeps it while the stale pages change.
 * Select (the decode plan: one token per block, n_items = T * Hkv work
 * entries): the pages of each (token, KV head) stream to read
 * (cuda_attn.cuh cu_quest_pick with k = k_pages), their pool page ids
 * written to plists[sel_base + item * k_pages ...], and work[item].L /
 * .plist rewritten to that list (L = the slots of the pages read); streams
 * of at most k_pages pages are left as they are. */
cudaError_t lethe_cu_quest_bounds(const lethe_cu_kv_view *kv, const lethe_cu_attn_work *work, const int32_t *plists,
                                  const int32_t *ref, int n_items, int ny, cudaStream_t stream);
cudaError_t lethe_cu_quest_select(const lethe_cu_kv_view *kv, const float *q, lethe_cu_attn_work *work, int n_items,
                                  int32_t *plists, int sel_base, int k_pages, const int32_t *qpos, int Hkv, int G,
                                  cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
