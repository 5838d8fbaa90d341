/* k_attention.cu — KV_STORE and ATTENTION over the per-head paged KV cache,
 * in place in the cache's managed buffer (cuda_backend.c: buffer_alloc_shared).
 *
 * Legend: T tokens, Hq = Hkv * G query heads, Hkv KV heads, G query heads per
 * KV head (<= 8), D head dim (32, 64, 128, 256), P = 32 slots per page, L
 * slots of a head stream (holes included), KT keys per prefill tile.
 * Layout (kv_cache.h): page p holds K rows [P][D] then V rows [P][D] (f16 or
 * f32) at pool + p * page_bytes; pos / expire of its slots at [p * P, p * P + P).
 * Slot j of a stream is visible to a query at position q iff
 * pos[j] <= q < expire[j] (cuda_attn.cuh); a query seeing nothing gets zeros.
 *
 * Decode (every block one token), flash-decoding: grid (T * Hkv, cap),
 * 128 threads. The span size and count (chunk, n_split <= cap) are read
 * from device memory, not passed by value: a decode step replayed as a CUDA
 * graph (cuda_graph.c) keeps its grid while streams grow, CTAs past n_split
 * return at once, partials are laid out with stride cap, and the combine
 * reads n_split too (cuda_plan.h).
 * A CTA walks one span of its stream page by page (pos/expire of 512 slots
 * at a time preloaded into shared memory: one round trip when they live in
 * host memory); each K and V row is read once for the G query heads of the
 * group.
 *   scores: LPK lanes per key (8, or 16 when G > 4 to halve the query
 *           registers), each lane EPL = D / LPK dims, a butterfly over the
 *           LPK lanes; s[g][j] to shared memory;
 *   softmax: warp g (and g + 4) turns row g of the page into weights
 *           against the running max, rescale factor alpha, running sum;
 *   values: TPR = D / 8 threads per V row (16-byte loads for f16), RG =
 *           128 / TPR row groups each accumulating [G][8] outputs over its
 *           rows; after the span the row groups are summed in shared memory.
 * The span's (m, l, acc) goes to `part`, then k_attn_combine merges the
 * spans (one span: the CTA writes the output itself).
 *
 * Prefill (blocks of tokens of one sequence): grid (blocks, Hkv), 128
 * threads; 32 query rows (32 / G tokens x G heads) per CTA, 4 lanes per row
 * (dims 4 sub + 16 i + c, so that a warp's shared-memory reads are 4
 * distinct float4 = 64 bytes, broadcast to its 8 rows). Per tile of KT
 * slots (pos/expire of 512 slots at a time preloaded into shared memory,
 * one round trip over the bus when they live in host memory): a tile no row can see is skipped
 * (the causal part of a fresh prompt); K and V rows converted to f32 in
 * shared memory; each row's scores, online softmax in registers. Exact
 * f32 arithmetic on CUDA cores. The plan sends f16 caches with D 64 / 128
 * and no TOVA / H2O weights to the tensor-core kernel instead
 * (k_attn_tc.cu, decode = LETHE_CU_ATTN_TC); this one keeps the rest.
 *
 * Score policies. TOVA / H2O (wts != NULL): each key's raw score goes to
 * wts [T][Hq][wstride] as it is computed; once the query's final max and
 * denominator are known (end of the decode CTA with one span, the combine
 * kernel, the end of a prefill row) the row is rewritten as softmax weights
 * (cu_score_weight); the host folds them into kv->score after the sync.
 * QUEST: k_quest_bounds refreshes the bounds of the pages KV_STORE wrote,
 * k_quest_select (one CTA per (token, KV head), the decode plan) computes
 * every page's bound and picks the pages (warp 0, cu_quest_better), then
 * rewrites the work entry to a page list of those pages only, so the
 * decode kernel reads them and nothing else.
 */
#include "cuda_attn.cuh"
#include "cuda_kernels.h"
#include "cuda_launch.cuh"

#include <cuda_fp16.h>

#define FULL 0xffffffffu
#define ATTN_THREADS 128

/* N consecutive elements from element e0 of a row (f16 or f32) as floats,
 * with the widest aligned loads (rows are 64-byte aligned: slot_bytes is
 * D * 2 or D * 4 with D >= 32, the pool 256-byte aligned). */
template <int N, bool F16>
__device__ __forceinline__ void ld_row(const uint8_t *row, int e0, float *v) {
    if (F16) {
        const __half *h = (const __half *)row + e0;
        if (N % 8 == 0) {
#pragma unroll
            for (int i = 0; i < N / 8; i++) {
                const uint4 u = ((const uint4 *)h)[i];
                const __half2 *p = (const __half2 *)&u;
#pragma unroll
                for (int c = 0; c < 4; c++) {
                    const float2 f = __half22float2(p[c]);
                    v[8 * i + 2 * c] = f.x;
                    v[8 * i + 2 * c + 1] = f.y;
                }
            }
        } else if (N % 4 == 0) {
#pragma unroll
            for (int i = 0; i < N / 4; i++) {
                const uint2 u = ((const uint2 *)h)[i];
                const __half2 *p = (const __half2 *)&u;
#pragma unroll
                for (int c = 0; c < 2; c++) {
                    const float2 f = __half22float2(p[c]);
                    v[4 * i + 2 * c] = f.x;
                    v[4 * i + 2 * c + 1] = f.y;
                }
            }
        } else {
#pragma unroll
            for (int i = 0; i < N / 2; i++) {
                const float2 f = __half22float2(((const __half2 *)h)[i]);
                v[2 * i] = f.x;
                v[2 * i + 1] = f.y;
            }
        }
    } else {
        const float *f = (const float *)row + e0;
        if (N % 4 == 0) {
#pragma unroll
            for (int i = 0; i < N / 4; i++) {
                const float4 a = ((const float4 *)f)[i];
                v[4 * i] = a.x;
                v[4 * i + 1] = a.y;
                v[4 * i + 2] = a.z;
                v[4 * i + 3] = a.w;
            }
        } else {
#pragma unroll
            for (int i = 0; i < N / 2; i++) {
                const float2 a = ((const float2 *)f)[i];
                v[2 * i] = a.x;
                v[2 * i + 1] = a.y;
            }
        }
    }
}

/* ------------------------------------------------------------ KV_STORE */

/* grid (T * Hkv), 64 threads: row r's K and V into its slot; thread 0 sets
 * the DMS flag of the previous token. No two rows share a slot, and every
 * previous token is flagged by at most one row (kv_cache.h), so no races. */
template <bool F16>
__global__ void __launch_bounds__(64)
k_kv_store(const float *__restrict__ k, const float *__restrict__ v, const float *__restrict__ dec,
           const lethe_cu_kv_row *__restrict__ rows, uint8_t *__restrict__ pool, int32_t *__restrict__ expire, int D,
           size_t slot_bytes) {
    const int64_t r = blockIdx.x;
    const lethe_cu_kv_row row = rows[r];
    uint8_t *kd = pool + row.k_off, *vd = kd + (size_t)CU_KV_P * slot_bytes;
    const float *ks = k + r * D, *vs = v + r * D;
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        if (F16) {
            ((__half *)kd)[d] = __float2half_rn(ks[d]);
            ((__half *)vd)[d] = __float2half_rn(vs[d]);
        } else {
            ((float *)kd)[d] = ks[d];
            ((float *)vd)[d] = vs[d];
        }
    }
    if (threadIdx.x == 0 && dec && row.exp_idx >= 0 && dec[r] > 0.0f) expire[row.exp_idx] = row.new_exp;
}

/* -------------------------------------------------------------- decode */

/* Slot metadata of a segment of a stream into shared memory, every load of
 * a thread issued before its first store: pos/expire may live in host
 * memory mapped over the bus (cuda_backend.c), so one round trip per
 * segment instead of one per page. Callers: every thread of the CTA, with
 * no thread still reading s_pos/s_exp of the previous segment. */
#define META_SEG 512
__device__ __forceinline__ void load_meta(const int32_t *__restrict__ pl, const int32_t *__restrict__ kpos,
                                          const int32_t *__restrict__ kexp, int seg0, int seg_n, int32_t *s_pos,
                                          int32_t *s_exp) {
    constexpr int K = META_SEG / ATTN_THREADS;
    int32_t rp[K], re[K];
#pragma unroll
    for (int k = 0; k < K; k++) {
        const int i = threadIdx.x + k * ATTN_THREADS;
        rp[k] = INT32_MAX;
        re[k] = 0;
        if (i < seg_n) {
            const int64_t mi = cu_kv_meta_idx(pl, seg0 + i);
            rp[k] = kpos[mi];
            re[k] = kexp[mi];
        }
    }
#pragma unroll
    for (int k = 0; k < K; k++) {
        const int i = threadIdx.x + k * ATTN_THREADS;
        s_pos[i] = rp[k];   /* past the segment: a hole, never visible */
        s_exp[i] = re[k];
    }
    __syncthreads();
}

template <int D, int MAXG, bool F16>
__global__ void __launch_bounds__(ATTN_THREADS)
k_attn_decode(const uint8_t *__restrict__ pool, const int32_t *__restrict__ kpos, const int32_t *__restrict__ kexp,
              size_t page_bytes, size_t slot_bytes, const float *__restrict__ q, float *__restrict__ out,
              const lethe_cu_attn_work *__restrict__ work, const int32_t *__restrict__ plists,
              const int32_t *__restrict__ qpos, int Hkv, int G, float scale, const int32_t *__restrict__ split_info,
              float *__restrict__ part, float *__restrict__ wts, int wstride) {
    constexpr int LPK = MAXG > 4 ? 16 : 8;    /* lanes per key (scores)          */
    constexpr int EPL = D / LPK;              /* key dims per lane               */
    constexpr int KPP = ATTN_THREADS / LPK;   /* keys per pass over the CTA      */
    constexpr int TPR = D / 8;                /* threads per V row               */
    constexpr int RG = ATTN_THREADS / TPR;    /* V row groups                    */
    static_assert(EPL >= 2 && CU_KV_P % KPP == 0 && ATTN_THREADS % TPR == 0, "decode shape");
    __shared__ float s_w[MAXG][CU_KV_P];      /* scores, then weights, of the page */
    __shared__ float s_m[MAXG], s_l[MAXG], s_alpha[MAXG];
    __shared__ float s_red[RG * D];           /* = ATTN_THREADS * 8 */
    __shared__ int32_t s_pos[META_SEG], s_exp[META_SEG];   /* the segment's slot metadata */

    const int item = blockIdx.x, split = blockIdx.y;   /* item = block * Hkv + hk, a block = one token */
    const int cap = gridDim.y;
    const int chunk = split_info[0], n_split = min(split_info[1], cap);
    if (split >= n_split) return;   /* a surplus CTA of the bucketed grid: the whole CTA leaves, before any barrier */
    const int hk = item % Hkv, Hq = Hkv * G;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const lethe_cu_attn_work w = work[item];
    const int t = w.t0;
    const int32_t pq = qpos[t];
    const int32_t *pl = plists + w.plist;
    const int j_begin = split * chunk;
    const int j_end = min(w.L, j_begin + chunk);

    /* this lane's slice of the G queries (zeros for padded heads) */
    const int kg = tid / LPK, sub = tid % LPK;
    float qr[MAXG][EPL];
#pragma unroll
    for (int g = 0; g < MAXG; g++) {
        if (g < G) {
            ld_row<EPL, false>((const uint8_t *)(q + ((size_t)t * Hq + (size_t)hk * G + g) * D), sub * EPL, qr[g]);
        } else {
#pragma unroll
            for (int e = 0; e < EPL; e++) qr[g][e] = 0.0f;
        }
    }
    if (tid < MAXG) {
        s_m[tid] = -INFINITY;
        s_l[tid] = 0.0f;
        s_alpha[tid] = 0.0f;
    }
    const int rg = tid / TPR, tp = tid % TPR;
    float acc[MAXG][8];
#pragma unroll
    for (int g = 0; g < MAXG; g++)
#pragma unroll
        for (int e = 0; e < 8; e++) acc[g][e] = 0.0f;
    __syncthreads();

    for (int seg0 = j_begin; seg0 < j_end; seg0 += META_SEG) {
    const int seg_n = min(META_SEG, j_end - seg0);
    load_meta(pl, kpos, kexp, seg0, seg_n, s_pos, s_exp);   /* ends with a barrier */
    for (int j0 = seg0; j0 < seg0 + seg_n; j0 += CU_KV_P) {   /* j_begin % P == 0: one page per step */
        const int32_t page = pl[j0 / CU_KV_P];
        const int n = min(CU_KV_P, seg0 + seg_n - j0);
        const uint8_t *kb = pool + (size_t)page * page_bytes;
        const uint8_t *vb = kb + (size_t)CU_KV_P * slot_bytes;
        const int32_t *pp = s_pos + (j0 - seg0), *ep = s_exp + (j0 - seg0);
        /* scores: the same number of passes for every lane, so the shuffles see the full warp */
#pragma unroll
        for (int it = 0; it < CU_KV_P / KPP; it++) {
            const int jj = kg + it * KPP;
            const bool vis = jj < n && cu_kv_visible(pp[jj], ep[jj], pq);
            float sc[MAXG];
#pragma unroll
            for (int g = 0; g < MAXG; g++) sc[g] = 0.0f;
            if (vis) {
                float kr[EPL];
                ld_row<EPL, F16>(kb + (size_t)jj * slot_bytes, sub * EPL, kr);
#pragma unroll
                for (int g = 0; g < MAXG; g++)
#pragma unroll
                    for (int e = 0; e < EPL; e++) sc[g] = fmaf(qr[g][e], kr[e], sc[g]);
            }
#pragma unroll
            for (int g = 0; g < MAXG; g++)
#pragma unroll
                for (int o = LPK / 2; o > 0; o >>= 1) sc[g] += __shfl_xor_sync(FULL, sc[g], o);
            if (sub == 0) {
#pragma unroll
                for (int g = 0; g < MAXG; g++) s_w[g][jj] = vis && g < G ? scale * sc[g] : -INFINITY;
                if (wts && jj < n)   /* raw scores; normalized once the final max and sum are known */
#pragma unroll
                    for (int g = 0; g < MAXG; g++)
                        if (g < G) wts[((size_t)t * Hq + (size_t)hk * G + g) * wstride + j0 + jj] = s_w[g][jj];
            }
        }
        __syncthreads();
        /* softmax step: warp (g % 4) owns row g of s_w and s_m / s_l / s_alpha[g] */
        for (int g = warp; g < G; g += ATTN_THREADS / 32) {
            const float s = s_w[g][lane];
            float mx = s;
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(FULL, mx, o));
            const float m_old = s_m[g];
            const float m_new = fmaxf(m_old, mx);
            const float p = cu_sm_weight(s, m_new);
            float sum = p;
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(FULL, sum, o);
            __syncwarp();   /* every lane has read s_m[g] */
            s_w[g][lane] = p;
            if (lane == 0) {
                const float a = cu_sm_alpha(m_old, m_new);
                s_alpha[g] = a;
                s_m[g] = m_new;
                s_l[g] = s_l[g] * a + sum;
            }
        }
        __syncthreads();
        /* values: rescale, then this thread's rows of the page */
#pragma unroll
        for (int g = 0; g < MAXG; g++) {
            const float a = g < G ? s_alpha[g] : 0.0f;
#pragma unroll
            for (int e = 0; e < 8; e++) acc[g][e] *= a;
        }
        for (int jj = rg; jj < n; jj += RG) {
            float pw[MAXG];
            bool any = false;
#pragma unroll
            for (int g = 0; g < MAXG; g++) {
                pw[g] = g < G ? s_w[g][jj] : 0.0f;
                any |= pw[g] != 0.0f;
            }
            if (!any) continue;   /* invisible (hole, expired, a later token) */
            float vr[8];
            ld_row<8, F16>(vb + (size_t)jj * slot_bytes, tp * 8, vr);
#pragma unroll
            for (int g = 0; g < MAXG; g++)
#pragma unroll
                for (int e = 0; e < 8; e++) acc[g][e] = fmaf(pw[g], vr[e], acc[g][e]);
        }
        __syncthreads();   /* s_w, s_alpha (and at a segment's end s_pos/s_exp) are rewritten next */
    }
    }

    /* sum the row groups, one head at a time (G is uniform over the CTA) */
    const size_t pbase = ((size_t)item * cap + split) * G;   /* partial (item, split, g=0) */
#pragma unroll
    for (int g = 0; g < MAXG; g++) {
        if (g >= G) break;
#pragma unroll
        for (int e = 0; e < 8; e++) s_red[rg * D + tp * 8 + e] = acc[g][e];
        __syncthreads();
        for (int d = tid; d < D; d += ATTN_THREADS) {
            float a = 0.0f;
#pragma unroll
            for (int r = 0; r < RG; r++) a += s_red[r * D + d];
            if (n_split == 1) {
                const float l = s_l[g];
                out[((size_t)t * Hq + (size_t)hk * G + g) * D + d] = l > 0.0f ? a * (1.0f / l) : 0.0f;
            } else {
                part[(pbase + g) * (D + 2) + 2 + d] = a;
            }
        }
        __syncthreads();   /* s_red is rewritten for the next head */
    }
    if (n_split > 1 && tid < G) {
        part[(pbase + tid) * (D + 2)] = s_m[tid];
        part[(pbase + tid) * (D + 2) + 1] = s_l[tid];
    }
    if (wts && n_split == 1) {   /* one span: this CTA holds the final max and sum; the loop's barriers made the raw scores visible */
        for (int g = 0; g < G; g++) {
            float *wr = wts + ((size_t)t * Hq + (size_t)hk * G + g) * wstride;
            for (int j = tid; j < w.L; j += ATTN_THREADS) wr[j] = cu_score_weight(wr[j], s_m[g], s_l[g]);
        }
    }
}

/* grid (T * Hkv, G), 128 threads: merge the n_split partials of one query
 * head (laid out with stride cap). n_split == 1: the decode CTA wrote the
 * output itself, nothing to do. */
__global__ void __launch_bounds__(ATTN_THREADS)
k_attn_combine(const float *__restrict__ part, float *__restrict__ out, const lethe_cu_attn_work *__restrict__ work,
               int Hkv, int G, int D, const int32_t *__restrict__ split_info, int cap, float *__restrict__ wts,
               int wstride) {
    const int n_split = min(split_info[1], cap);
    if (n_split <= 1) return;   /* the decode CTA wrote the output (and normalized the weights) itself */
    const int item = blockIdx.x, g = blockIdx.y;
    const int t = work[item].t0, hk = item % Hkv;
    const int stride = G * (D + 2);
    const float *p0 = part + ((size_t)item * cap * G + g) * (D + 2);   /* split 0; split i at + i * stride */
    const float M = cu_comb_max(n_split, p0, stride);
    const float den = cu_comb_den(n_split, p0, p0 + 1, stride, M);
    const float inv = den > 0.0f ? 1.0f / den : 0.0f;
    float *o = out + ((size_t)t * Hkv * G + (size_t)hk * G + g) * D;
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float a = 0.0f;
        for (int i = 0; i < n_split; i++) {
            const float f = cu_comb_factor(p0[(size_t)i * stride], M);
            if (f != 0.0f) a += f * p0[(size_t)i * stride + 2 + d];
        }
        o[d] = a * inv;
    }
    if (wts) {   /* every span's raw scores, against the combined max and denominator */
        float *wr = wts + ((size_t)t * Hkv * G + (size_t)hk * G + g) * wstride;
        for (int j = threadIdx.x; j < work[item].L; j += blockDim.x) wr[j] = cu_score_weight(wr[j], M, den);
    }
}

/* ------------------------------------------------------------- prefill */

template <int D, bool F16>
__global__ void __launch_bounds__(ATTN_THREADS)
k_attn_prefill(const uint8_t *__restrict__ pool, const int32_t *__restrict__ kpos, const int32_t *__restrict__ kexp,
               size_t page_bytes, size_t slot_bytes, const float *__restrict__ q, float *__restrict__ out,
               const lethe_cu_attn_work *__restrict__ work, const int32_t *__restrict__ plists,
               const int32_t *__restrict__ qpos, int Hkv, int G, float scale, float *__restrict__ wts,
               int wstride) {
    constexpr int KT = D <= 128 ? 32 : 16;   /* keys per tile: 2 * KT * D * 4 bytes = 32 KiB at most */
    constexpr int DL = D / 4;                /* dims per lane: 4 lanes per query row */
    constexpr int CH = D / 8;                /* 8-element chunks per row */
    __shared__ __align__(16) float sk[KT][D];
    __shared__ __align__(16) float sv[KT][D];
    __shared__ int32_t s_pos[META_SEG], s_exp[META_SEG];   /* the segment's slot metadata */

    const int blk = blockIdx.x, hk = blockIdx.y, Hq = Hkv * G;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const lethe_cu_attn_work w = work[(size_t)blk * Hkv + hk];
    const int32_t *pl = plists + w.plist;
    const int row = warp * 8 + (lane >> 2), sub = lane & 3;
    const int ti = row / G, g = row % G;
    const bool valid = ti < w.nt;   /* rows past the block's tokens compute nothing visible */
    const int t = w.t0 + (valid ? ti : 0);
    const int32_t pq = valid ? qpos[t] : INT32_MIN;
    const size_t qo = ((size_t)t * Hq + (size_t)hk * G + g) * D;
    /* TOVA / H2O: this row's raw scores (lane sub 0; skipped tiles keep the caller's NaN) */
    float *wr = wts && valid && sub == 0 ? wts + ((size_t)t * Hq + (size_t)hk * G + g) * wstride : nullptr;

    float qr[DL], acc[DL];
#pragma unroll
    for (int i = 0; i < D / 16; i++) {
        float4 a = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (valid) a = *(const float4 *)(q + qo + 16 * i + 4 * sub);
        qr[4 * i] = a.x;
        qr[4 * i + 1] = a.y;
        qr[4 * i + 2] = a.z;
        qr[4 * i + 3] = a.w;
    }
#pragma unroll
    for (int i = 0; i < DL; i++) acc[i] = 0.0f;
    float m = -INFINITY, l = 0.0f;

    for (int seg0 = 0; seg0 < w.L; seg0 += META_SEG) {
    const int seg_n = min(META_SEG, w.L - seg0);
    load_meta(pl, kpos, kexp, seg0, seg_n, s_pos, s_exp);   /* ends with a barrier */
    for (int j0 = seg0; j0 < seg0 + seg_n; j0 += KT) {
        const int n = min(KT, seg0 + seg_n - j0);
        const int32_t *spos = s_pos + (j0 - seg0), *sexp = s_exp + (j0 - seg0);   /* past n: holes */
        int any = 0;
#pragma unroll
        for (int jj = 0; jj < KT; jj++) any |= cu_kv_visible(spos[jj], sexp[jj], pq);
        if (!__syncthreads_or(any)) continue;   /* no row of the CTA sees this tile */
        for (int c = tid; c < KT * CH; c += ATTN_THREADS) {
            const int jj = c / CH, e0 = (c % CH) * 8;
            float kr[8], vr[8];
            if (jj < n) {
                const int64_t ko = cu_kv_k_off(pl, j0 + jj, page_bytes, slot_bytes);
                ld_row<8, F16>(pool + ko, e0, kr);
                ld_row<8, F16>(pool + ko + (int64_t)CU_KV_P * (int64_t)slot_bytes, e0, vr);
            } else {
#pragma unroll
                for (int e = 0; e < 8; e++) kr[e] = vr[e] = 0.0f;
            }
#pragma unroll
            for (int e = 0; e < 8; e++) {
                sk[jj][e0 + e] = kr[e];
                sv[jj][e0 + e] = vr[e];
            }
        }
        __syncthreads();
        float s[KT];
#pragma unroll
        for (int jj = 0; jj < KT; jj++) {
            float a = 0.0f;
#pragma unroll
            for (int i = 0; i < D / 16; i++) {
                const float4 kk = *(const float4 *)&sk[jj][16 * i + 4 * sub];
                a = fmaf(qr[4 * i], kk.x, a);
                a = fmaf(qr[4 * i + 1], kk.y, a);
                a = fmaf(qr[4 * i + 2], kk.z, a);
                a = fmaf(qr[4 * i + 3], kk.w, a);
            }
            a += __shfl_xor_sync(FULL, a, 1);
            a += __shfl_xor_sync(FULL, a, 2);
            s[jj] = cu_kv_visible(spos[jj], sexp[jj], pq) ? scale * a : -INFINITY;
            if (wr && jj < n) wr[j0 + jj] = s[jj];
        }
        float mx = m;
#pragma unroll
        for (int jj = 0; jj < KT; jj++) mx = fmaxf(mx, s[jj]);
        if (mx != -INFINITY) {
            const float alpha = cu_sm_alpha(m, mx);
            l *= alpha;
#pragma unroll
            for (int i = 0; i < DL; i++) acc[i] *= alpha;
#pragma unroll
            for (int jj = 0; jj < KT; jj++) {
                const float p = cu_sm_weight(s[jj], mx);
                l += p;
                if (p == 0.0f) continue;
#pragma unroll
                for (int i = 0; i < D / 16; i++) {
                    const float4 vv = *(const float4 *)&sv[jj][16 * i + 4 * sub];
                    acc[4 * i] = fmaf(p, vv.x, acc[4 * i]);
                    acc[4 * i + 1] = fmaf(p, vv.y, acc[4 * i + 1]);
                    acc[4 * i + 2] = fmaf(p, vv.z, acc[4 * i + 2]);
                    acc[4 * i + 3] = fmaf(p, vv.w, acc[4 * i + 3]);
                }
            }
            m = mx;
        }
        __syncthreads();   /* the tile (and at a segment's end s_pos/s_exp) are rewritten next */
    }
    }
    if (wr)   /* the row's final max and sum: raw scores -> weights (all written by this lane) */
        for (int j = 0; j < w.L; j++) wr[j] = cu_score_weight(wr[j], m, l);
    if (valid) {
        const float inv = l > 0.0f ? 1.0f / l : 0.0f;
#pragma unroll
        for (int i = 0; i < D / 16; i++) {
            float4 o;
            o.x = acc[4 * i] * inv;
            o.y = acc[4 * i + 1] * inv;
            o.z = acc[4 * i + 2] * inv;
            o.w = acc[4 * i + 3] * inv;
            *(float4 *)(out + qo + 16 * i + 4 * sub) = o;
        }
    }
}

/* --------------------------------------------------------------- QUEST */

/* grid (n_items, ny), D threads: dim d of the item's stale pages (ny CTAs
 * share them), min / max over each page's rows with the CPU's compares
 * (not fminf/fmaxf: -0 and NaN as it has them). ref [n_items][2] = {first
 * stale page, page count} (cuda_kv_meta.h cu_quest_refresh_items). */
template <bool F16>
__global__ void __launch_bounds__(256)
k_quest_bounds(const uint8_t *__restrict__ pool, float *__restrict__ kmin, float *__restrict__ kmax,
               const lethe_cu_attn_work *__restrict__ work, const int32_t *__restrict__ plists,
               const int32_t *__restrict__ ref, size_t page_bytes, size_t slot_bytes, int D) {
    const int item = blockIdx.x, d = threadIdx.x;
    const int32_t first = ref[2 * item], count = ref[2 * item + 1];
    if (first < 0 || d >= D) return;
    const lethe_cu_attn_work w = work[item];
    for (int32_t pg = first + (int32_t)blockIdx.y; pg < count; pg += (int32_t)gridDim.y) {
        const int32_t page = plists[w.plist + pg], rows = cu_quest_rows(w.L, pg);
        const uint8_t *k0 = pool + (size_t)page * page_bytes;
        float mn = INFINITY, mx = -INFINITY;
        for (int r = 0; r < rows; r++) {
            const uint8_t *row = k0 + (size_t)r * slot_bytes;
            const float x = F16 ? __half2float(((const __half *)row)[d]) : ((const float *)row)[d];
            mn = x < mn ? x : mn;
            mx = x > mx ? x : mx;
        }
        kmin[(size_t)page * D + d] = mn;
        kmax[(size_t)page * D + d] = mx;
    }
}

/* grid (n_items = T * Hkv), 128 threads: one (token, KV head)'s pages. */
__global__ void __launch_bounds__(ATTN_THREADS)
k_quest_select(const int32_t *__restrict__ kpos, const float *__restrict__ kmin, const float *__restrict__ kmax,
               const float *__restrict__ q, lethe_cu_attn_work *__restrict__ work, int32_t *__restrict__ plists,
               int sel_base, int k, const int32_t *__restrict__ qpos, int Hkv, int G, int D) {
    __shared__ float s_b[CU_QUEST_MAX_PAGES];
    __shared__ uint32_t s_pick[CU_QUEST_MAX_PAGES / 32];
    __shared__ int s_own;
    const int item = blockIdx.x, tid = threadIdx.x, hk = item % Hkv;
    const lethe_cu_attn_work w = work[item];
    const int n_pages = (w.L + CU_KV_P - 1) / CU_KV_P;
    if (n_pages <= k) return;   /* every page: the entry stays as it is */
    const int32_t *pl = plists + w.plist;
    const int32_t pq = qpos[w.t0];
    const float *qg = q + ((size_t)w.t0 * Hkv * G + (size_t)hk * G) * D;
    if (tid == 0) s_own = -1;
    for (int i = tid; i < CU_QUEST_MAX_PAGES / 32; i += ATTN_THREADS) s_pick[i] = 0u;
    __syncthreads();
    for (int p = tid; p < n_pages; p += ATTN_THREADS) {
        const int32_t page = pl[p];
        s_b[p] = cu_quest_bound(qg, G, D, kmin + (size_t)page * D, kmax + (size_t)page * D);
        const int rows = min(CU_KV_P, w.L - p * CU_KV_P);
        for (int j = 0; j < rows; j++)
            if (kpos[(size_t)page * CU_KV_P + j] == pq) atomicMax(&s_own, p);   /* the CPU keeps the last */
    }
    __syncthreads();
    if (tid >= 32) return;   /* warp 0 picks */
    const int lane = tid;
    int left = k;
    const int own = s_own;
    if (own >= 0) {
        if (lane == 0) {
            s_pick[own / 32] |= 1u << (own % 32);
            s_b[own] = -INFINITY;
        }
        left--;
        __syncwarp();
    }
    for (; left > 0; left--) {
        float bv = 0.0f;
        int bi = -1;
        for (int p = lane; p < n_pages; p += 32)
            if (cu_quest_better(s_b[p], p, bv, bi)) {
                bv = s_b[p];
                bi = p;
            }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {   /* a total order: the butterfly gives every lane the same winner */
            const float ov = __shfl_xor_sync(FULL, bv, o);
            const int oi = __shfl_xor_sync(FULL, bi, o);
            if (cu_quest_better(ov, oi, bv, bi)) {
                bv = ov;
                bi = oi;
            }
        }
        if (bi < 0) break;   /* the same on every lane */
        if (lane == 0) {
            s_pick[bi / 32] |= 1u << (bi % 32);
            s_b[bi] = -INFINITY;
        }
        __syncwarp();
    }
    if (lane == 0) {   /* ascending page order: slot order, as without QUEST */
        int32_t *dst = plists + sel_base + (size_t)item * k;
        int n = 0, L = 0;
        for (int p = 0; p < n_pages; p++)
            if (s_pick[p / 32] & (1u << (p % 32))) {
                dst[n++] = pl[p];
                L += min(CU_KV_P, w.L - p * CU_KV_P);
            }
        work[item].L = L;
        work[item].plist = sel_base + item * k;
    }
}

/* ----------------------------------------------------------- launchers */


extern "C" cudaError_t lethe_cu_kv_store(const lethe_cu_kv_view *kv, const float *k, const float *v, const float *dec,
                                         const lethe_cu_kv_row *rows, int64_t n_rows, cudaStream_t stream) {
    if (n_rows <= 0) return cudaSuccess;
    if (n_rows > 0x7fffffffLL) return cudaErrorInvalidValue;
    if (kv->f16)
        LETHE_CU_LAUNCH((unsigned)n_rows, 64, 0, stream, k_kv_store<true>)(k, v, dec, rows, kv->pool, kv->expire, kv->D, kv->slot_bytes);
    else
        LETHE_CU_LAUNCH((unsigned)n_rows, 64, 0, stream, k_kv_store<false>)(k, v, dec, rows, kv->pool, kv->expire, kv->D, kv->slot_bytes);
    return cudaGetLastError();
}

template <int D, int MAXG, bool F16>
static void launch_decode(const lethe_cu_kv_view *kv, const float *q, float *out, const lethe_cu_attn_work *work,
                          int n_items, const int32_t *plists, const int32_t *qpos, int Hkv, int G, float scale,
                          const int32_t *split, int cap, float *part, float *wts, int wstride, cudaStream_t stream) {
    LETHE_CU_LAUNCH(dim3((unsigned)n_items, (unsigned)cap), ATTN_THREADS, 0, stream, k_attn_decode<D, MAXG, F16>)(
        kv->pool, kv->pos, kv->expire, kv->page_bytes, kv->slot_bytes, q, out, work, plists, qpos, Hkv, G, scale,
        split, part, wts, wstride);
}

template <int D, bool F16>
static void attention_d(const lethe_cu_kv_view *kv, const float *q, float *out, const lethe_cu_attn_work *work,
                        int n_blocks, int decode, const int32_t *plists, const int32_t *qpos, int Hkv, int G,
                        float scale, const int32_t *split, int cap, float *part, float *wts, int wstride,
                        cudaStream_t stream) {
    if (!decode) {
        LETHE_CU_LAUNCH(dim3((unsigned)n_blocks, (unsigned)Hkv), ATTN_THREADS, 0, stream, k_attn_prefill<D, F16>)(
            kv->pool, kv->pos, kv->expire, kv->page_bytes, kv->slot_bytes, q, out, work, plists, qpos, Hkv, G, scale,
            wts, wstride);
        return;
    }
    const int n_items = n_blocks * Hkv;
#define L(MG) launch_decode<D, MG, F16>(kv, q, out, work, n_items, plists, qpos, Hkv, G, scale, split, cap, part, wts, \
                                        wstride, stream)
    if (G <= 1) L(1);
    else if (G <= 2) L(2);
    else if (G <= 4) L(4);
    else L(8);
#undef L
    if (cap > 1)
        LETHE_CU_LAUNCH(dim3((unsigned)n_items, (unsigned)G), ATTN_THREADS, 0, stream, k_attn_combine)(part, out, work, Hkv, G, D,
                                                                                          split, cap, wts, wstride);
}

extern "C" cudaError_t lethe_cu_attention(const lethe_cu_kv_view *kv, const float *q, float *out,
                                          const lethe_cu_attn_work *work, int n_blocks, int decode,
                                          const int32_t *plists, const int32_t *qpos, int Hkv, int G, float scale,
                                          const int32_t *split, int cap, float *part, float *wts, int wstride,
                                          cudaStream_t stream) {
    if (n_blocks <= 0) return cudaSuccess;
    if (decode == LETHE_CU_ATTN_TC)   /* k_attn_tc.cu; never with weights (cuda_plan.c) */
        return wts ? cudaErrorInvalidValue
                   : lethe_cu_attention_tc(kv, q, out, work, n_blocks, plists, qpos, Hkv, G, scale, stream);
    if (!lethe_cu_attn_shape_ok(kv->D, G) || Hkv <= 0 || Hkv > 65535 || cap < 1 || cap > LETHE_CU_ATTN_MAX_SPLIT ||
        (decode && !split) || (decode && cap > 1 && !part) || (int64_t)n_blocks * Hkv > 0x7fffffffLL ||
        (wts && wstride <= 0))
        return cudaErrorInvalidValue;
#define A(DD)                                                                                                    \
    do {                                                                                                         \
        if (kv->f16) attention_d<DD, true>(kv, q, out, work, n_blocks, decode, plists, qpos, Hkv, G, scale, split, \
                                           cap, part, wts, wstride, stream);                                     \
        else attention_d<DD, false>(kv, q, out, work, n_blocks, decode, plists, qpos, Hkv, G, scale, split, cap,   \
                                    part, wts, wstride, stream);                                                 \
    } while (0)
    switch (kv->D) {
    case 32: A(32); break;
    case 64: A(64); break;
    case 128: A(128); break;
    default: A(256); break;
    }
#undef A
    return cudaGetLastError();
}

extern "C" cudaError_t lethe_cu_quest_bounds(const lethe_cu_kv_view *kv, const lethe_cu_attn_work *work,
                                             const int32_t *plists, const int32_t *ref, int n_items, int ny,
                                             cudaStream_t stream) {
    if (n_items <= 0) return cudaSuccess;
    if (!kv->kmin || !kv->kmax || !ref || !work || !plists || kv->D > 256 || ny < 1 || ny > 65535)
        return cudaErrorInvalidValue;
    const dim3 grid((unsigned)n_items, (unsigned)ny);
    if (kv->f16)
        LETHE_CU_LAUNCH(grid, (unsigned)kv->D, 0, stream, k_quest_bounds<true>)(kv->pool, kv->kmin, kv->kmax, work, plists, ref,
                                                                   kv->page_bytes, kv->slot_bytes, kv->D);
    else
        LETHE_CU_LAUNCH(grid, (unsigned)kv->D, 0, stream, k_quest_bounds<false>)(kv->pool, kv->kmin, kv->kmax, work, plists, ref,
                                                                    kv->page_bytes, kv->slot_bytes, kv->D);
    return cudaGetLastError();
}

extern "C" cudaError_t lethe_cu_quest_select(const lethe_cu_kv_view *kv, const float *q, lethe_cu_attn_work *work,
                                             int n_items, int32_t *plists, int sel_base, int k_pages,
                                             const int32_t *qpos, int Hkv, int G, cudaStream_t stream) {
    if (n_items <= 0) return cudaSuccess;
    if (!kv->kmin || !kv->kmax || k_pages < 1 || Hkv <= 0 || !lethe_cu_attn_shape_ok(kv->D, G))
        return cudaErrorInvalidValue;
    LETHE_CU_LAUNCH((unsigned)n_items, ATTN_THREADS, 0, stream, k_quest_select)(kv->pos, kv->kmin, kv->kmax, q, work, plists,
                                                                    sel_base, k_pages, qpos, Hkv, G, kv->D);
    return cudaGetLastError();
}
