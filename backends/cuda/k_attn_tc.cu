/* k_attn_tc.cu — prefill ATTENTION on tensor cores (FlashAttention-2 with
 * mma.sync m16n8k16, f16 operands, f32 accumulators) over the per-head paged
 * KV cache, with the exact DMS visibility rule of the f32 kernels.
 *
 * Legend: T tokens, Hq = Hkv * G query heads, G <= 8, D head dim (64 or
 * 128), P = 32 slots per page, L slots of a head stream (holes included),
 * KT = 64 keys per tile, 64 query rows per CTA. Layout and visibility as in
 * k_attention.cu (kv_cache.h's pool, cuda_attn.cuh's cu_kv_visible).
 *
 * Grid (blocks, Hkv), 128 threads (4 warps). A block is up to 64 / G
 * consecutive tokens of one sequence (cuda_kv_meta.h, rows = 64); its rows
 * are (token ti, head g) -> row ti * G + g, so the G query heads of the KV
 * head share every K/V tile (GQA: each tile is read once for all of them).
 * Warp w owns rows 16 w .. 16 w + 15: Q as f16 A fragments in registers.
 * Per tile of KT slots of the stream (pos/expire of 512 slots at a time in
 * shared memory: one round trip when they live in host memory):
 *   - each lane's 32 (row, key) visibility bits; a tile no row sees is
 *     skipped (__syncthreads_or: the causal half of a fresh prompt);
 *   - K (rows) and V (transposed) staged to shared memory as f16 words;
 *   - S = Q K^T: 8 n-tiles x D / 16 k-steps of mma; masked and scaled in f32;
 *   - online softmax in f32: row max over the quad (shfl_xor 1, 2), the
 *     running max / sum and the O rescale, P rounded to f16;
 *   - O += P V: P's C fragments are the A fragments of the PV mma.
 * End: the quad's partial sums added, O / l written (zeros for a row that
 * sees nothing, as the f32 kernel). The per-lane arithmetic is cuda_mma.cuh's
 * (the host check runs it), the loop is this kernel's.
 *
 * What stays on the f32 kernel (cuda_plan.c picks): f32 caches, TOVA / H2O
 * (they need every raw score written out), D 32 / 256, decode.
 * Numerics: Q and P are rounded to f16 (K, V are f16 in the cache already);
 * NMSE against the CPU's f32 attention ~1e-6 (tests/test_cuda_mma.c).
 * One difference from the f32 kernel: a non-finite V in a slot a row cannot
 * see still enters that row's PV product as 0 * inf = NaN (the f32 kernel
 * skips weight-0 slots); slots past the stream's end are zeros here.
 */
#include "cuda_kernels.h"
#include "cuda_launch.cuh"
#include "cuda_mma.cuh"

#include <cuda_fp16.h>

#define FULL 0xffffffffu
#define META_SEG 512   /* a multiple of KT: a tile never straddles two segments */

template <int D>
/* __launch_bounds__(128, 2): with no minimum, ptxas gave D = 64 128 registers
 * and spilled 28 bytes; with 2 CTAs per SM it takes 151 and spills nothing
 * (D = 128: 201 on sm_80, 204 on sm_90, either way). */
__global__ void __launch_bounds__(CU_FA_THREADS, 2)
k_attn_prefill_tc(const uint8_t *__restrict__ pool, const int32_t *__restrict__ kpos,
                  const int32_t *__restrict__ kexp, size_t page_bytes, size_t slot_bytes, const float *__restrict__ q,
                  float *__restrict__ out, const lethe_cu_attn_work *__restrict__ work,
                  const int32_t *__restrict__ plists, const int32_t *__restrict__ qpos, int Hkv, int G, float scale) {
    typedef cu_fa<D> F;
    static_assert(META_SEG % CU_FA_KT == 0 && META_SEG % CU_FA_THREADS == 0, "tile shape");
    __shared__ __align__(16) uint32_t skw[F::KW];
    __shared__ __align__(16) uint32_t svw[F::VW];
    __shared__ int32_t s_pos[META_SEG], s_exp[META_SEG];

    const int blk = blockIdx.x, hk = blockIdx.y, Hq = Hkv * G;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const lethe_cu_attn_work w = work[(size_t)blk * Hkv + hk];
    const int32_t *pl = plists + w.plist;

    /* this lane's two rows: r0 = 16 warp + g, r1 = r0 + 8 */
    const float *qrow[2];
    float *orow[2];
    int32_t pq[2];
#pragma unroll
    for (int i = 0; i < 2; i++) {
        const int r = 16 * warp + (lane >> 2) + 8 * i, ti = r / G, g = r % G;
        const bool valid = ti < w.nt;
        const size_t o = ((size_t)(w.t0 + ti) * Hq + (size_t)hk * G + g) * D;
        qrow[i] = valid ? q + o : nullptr;
        orow[i] = valid ? out + o : nullptr;
        pq[i] = valid ? qpos[w.t0 + ti] : INT32_MIN;   /* a padding row sees nothing */
    }
    uint32_t qa[F::NK][4];
    cu_fa_q_frag<D>(lane, qrow[0], qrow[1], qa);
    float o[F::NO][4];
#pragma unroll
    for (int dn = 0; dn < F::NO; dn++)
#pragma unroll
        for (int c = 0; c < 4; c++) o[dn][c] = 0.0f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};

    for (int seg0 = 0; seg0 < w.L; seg0 += META_SEG) {
        const int seg_n = min(META_SEG, w.L - seg0);
        {   /* the segment's metadata, every load issued before the first store (one bus round trip) */
            constexpr int K = META_SEG / CU_FA_THREADS;
            int32_t rp[K], re[K];
#pragma unroll
            for (int k = 0; k < K; k++) {
                const int i = tid + k * CU_FA_THREADS;
                rp[k] = INT32_MAX;   /* past the stream: a hole, never visible */
                re[k] = 0;
                if (i < seg_n) {
                    const int64_t mi = cu_kv_meta_idx(pl, seg0 + i);
                    rp[k] = kpos[mi];
                    re[k] = kexp[mi];
                }
            }
#pragma unroll
            for (int k = 0; k < K; k++) {
                s_pos[tid + k * CU_FA_THREADS] = rp[k];
                s_exp[tid + k * CU_FA_THREADS] = re[k];
            }
        }
        __syncthreads();
        for (int j0 = seg0; j0 < seg0 + seg_n; j0 += CU_FA_KT) {
            const int n = min(CU_FA_KT, seg0 + seg_n - j0);
            const uint32_t vis = cu_fa_vis(lane, s_pos + (j0 - seg0), s_exp + (j0 - seg0), pq[0], pq[1]);
            if (!__syncthreads_or(vis != 0u)) continue;   /* no row of the CTA sees this tile */
            cu_fa_stage<D>(tid, pool, pl, j0, n, page_bytes, slot_bytes, skw, svw);
            __syncthreads();
            float s[CU_FA_KT / 8][4];
#pragma unroll
            for (int nt = 0; nt < CU_FA_KT / 8; nt++) {
#pragma unroll
                for (int c = 0; c < 4; c++) s[nt][c] = 0.0f;
#pragma unroll
                for (int kk = 0; kk < F::NK; kk++) {
                    uint32_t b[2];
                    cu_fa_k_frag<D>(lane, skw, nt, kk, b);
                    cu_mma_m16n8k16(s[nt], qa[kk], b);
                }
            }
            float mx[2];
            cu_fa_mask(s, vis, scale, mx);
#pragma unroll
            for (int i = 0; i < 2; i++) {   /* the row's 4 lanes (same g) agree on its max */
                mx[i] = fmaxf(mx[i], __shfl_xor_sync(FULL, mx[i], 1));
                mx[i] = fmaxf(mx[i], __shfl_xor_sync(FULL, mx[i], 2));
            }
            cu_fa_softmax<D>(s, mx, m, l, o);
#pragma unroll
            for (int kk = 0; kk < CU_FA_KT / 16; kk++) {
                uint32_t a[4];
                cu_fa_p_frag(s, kk, a);
#pragma unroll
                for (int dn = 0; dn < F::NO; dn++) {
                    uint32_t b[2];
                    cu_fa_v_frag<D>(lane, svw, dn, kk, b);
                    cu_mma_m16n8k16(o[dn], a, b);
                }
            }
            __syncthreads();   /* the tile (and at a segment's end s_pos/s_exp) are rewritten next */
        }
    }
    float lq[2];
#pragma unroll
    for (int i = 0; i < 2; i++) {
        lq[i] = l[i] + __shfl_xor_sync(FULL, l[i], 1);
        lq[i] += __shfl_xor_sync(FULL, lq[i], 2);
    }
    cu_fa_store<D>(lane, o, lq, orow[0], orow[1]);
}

extern "C" cudaError_t lethe_cu_attention_tc(const lethe_cu_kv_view *kv, const float *q, float *out,
                                             const lethe_cu_attn_work *work, int n_blocks, const int32_t *plists,
                                             const int32_t *qpos, int Hkv, int G, float scale, cudaStream_t stream) {
    if (n_blocks <= 0) return cudaSuccess;
    if (!lethe_cu_attn_tc_ok(kv->D, G, kv->f16) || Hkv <= 0 || Hkv > 65535) return cudaErrorInvalidValue;
    const dim3 grid((unsigned)n_blocks, (unsigned)Hkv);
    if (kv->D == 64)
        LETHE_CU_LAUNCH(grid, CU_FA_THREADS, 0, stream, k_attn_prefill_tc<64>)(
            kv->pool, kv->pos, kv->expire, kv->page_bytes, kv->slot_bytes, q, out, work, plists, qpos, Hkv, G, scale);
    else
        LETHE_CU_LAUNCH(grid, CU_FA_THREADS, 0, stream, k_attn_prefill_tc<128>)(
            kv->pool, kv->pos, kv->expire, kv->page_bytes, kv->slot_bytes, q, out, work, plists, qpos, Hkv, G, scale);
    return cudaGetLastError();
}
