/* cuda_topk.h — TOP_K's selection logic (graph.h), shared by the kernel
 * (k_topk.cu) and tests/test_cuda_host_topk.c, which runs it on the host with the
 * lanes of a block emulated one after another against the CPU backend's
 * reference (backends/cpu/cpu_topk.c). Plain C that nvcc also compiles as
 * __host__ __device__; the module cannot call liblethe, so nothing here does.
 *
 * Legend: T rows, V row width (vocabulary), k pairs kept, S segments per
 * row, WG lanes of a block (CU_TOPK_WG).
 *
 * Order: the host sampler's (core/sampler.c cand_before) as unsigned keys,
 * so the selection is integer compares only and returns the CPU's bits:
 * key(NaN) = 0 (after every number, -inf included), -0 -> +0 (equal values
 * go to the lower id), then the sign flip that orders IEEE floats as
 * unsigned integers. An empty slot (a segment shorter than k) is
 * (key 0, id 0xFFFFFFFF): after every real element, NaNs included.
 *
 * Two passes, one block per segment:
 *   pass 0: segment s of row t = x[t, s*chunk .. min((s+1)*chunk, V)); its k
 *           best -> scratch [T, S, k] pairs (or the output when S == 1);
 *   pass 1: segment = row t's S*k pairs of pass 0; its k best -> out [T, k].
 * In a segment lane i owns elements i, i + WG, ... and keeps its best element
 * not yet taken; each of k rounds picks the best lane best (a warp
 * butterfly, then the warps' winners), the owner writes it and rescans its
 * own elements for its best below the winner: the other lanes' bests are
 * already below it. */
#ifndef LETHE_CUDA_TOPK_H
#define LETHE_CUDA_TOPK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __CUDACC__
#define CU_TOPK_FN static __host__ __device__ __forceinline__
#else
#define CU_TOPK_FN static inline
#endif

#define CU_TOPK_WG 256
#define CU_TOPK_EMPTY_ID 0xFFFFFFFFu
#define CU_TOPK_EMPTY_BITS 0x7FC00000u   /* a quiet NaN: key 0 */

CU_TOPK_FN uint32_t cu_topk_key(uint32_t u) {
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return 0u;   /* NaN: after every number */
    if (u == 0x80000000u) u = 0u;                      /* -0 == +0 */
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

/* (ka, ia) comes before (kb, ib) */
CU_TOPK_FN bool cu_topk_better(uint32_t ka, uint32_t ia, uint32_t kb, uint32_t ib) {
    return ka > kb || (ka == kb && ia < ib);
}

/* Segments per row: chunks of ~4096 elements (one block each, so a single
 * decode row still spreads over the SMs), at most 4096 / k of them so that
 * pass 1 reads ~16 pairs per lane. The Vulkan twin is vk_ops.c top_k_plan. */
CU_TOPK_FN void cu_topk_plan(uint32_t V, uint32_t k, uint32_t *S, uint32_t *chunk) {
    uint32_t s = (V + 4095u) / 4096u, s_max = 4096u / k > 1u ? 4096u / k : 1u;
    if (s > s_max) s = s_max;
    *chunk = (V + s - 1u) / s;
    *S = (V + *chunk - 1u) / *chunk;
}

/* Bytes of pass 0's pairs [T, S, k, 2] u32 (0 when one segment is a row). */
static inline size_t cu_topk_scratch_bytes(int64_t T, uint32_t V, uint32_t k) {
    uint32_t S, chunk;
    cu_topk_plan(V, k, &S, &chunk);
    return S == 1 ? 0 : (size_t)T * S * k * 2 * sizeof(uint32_t);
}

/* One segment: `len` elements at `src`, raw f32 bits with ids id0 + e
 * (pass 0) or (id, bits) pairs (pass 1). */
typedef struct cu_topk_seg {
    const uint32_t *src;
    uint32_t len, id0;
    bool pairs;
} cu_topk_seg;

/* Segment s of row t in pass `pass`, reading `in` (x [T, V] bits, or pass
 * 0's pairs); *out_off = where its k pairs go, in u32 words, in the pass's
 * output (pass 0 with S > 1: the scratch; else out [T, k, 2]). */
CU_TOPK_FN cu_topk_seg cu_topk_segment(const uint32_t *in, uint32_t V, uint32_t k, uint32_t chunk, uint32_t S,
                                       int pass, uint32_t s, uint32_t t, size_t *out_off) {
    cu_topk_seg g;
    if (pass == 0) {
        const uint32_t lo = s * chunk;
        g.src = in + (size_t)t * V + lo;
        g.len = chunk < V - lo ? chunk : V - lo;
        g.id0 = lo;
        g.pairs = false;
        *out_off = 2u * ((size_t)t * S + s) * k;
    } else {
        g.src = in + 2u * (size_t)t * S * k;
        g.len = S * k;
        g.id0 = 0;
        g.pairs = true;
        *out_off = 2u * (size_t)t * k;
    }
    return g;
}

/* Lane `lane`'s best element of the segment (of those strictly after
 * (tk, ti) when has_thr): key, id and the value's original bits (NaN
 * payloads and -0 come back as they went in). Empty: (0, EMPTY_ID). */
CU_TOPK_FN void cu_topk_lane_best(const cu_topk_seg *g, uint32_t lane, uint32_t n_lanes, bool has_thr, uint32_t tk,
                                  uint32_t ti, uint32_t *bk, uint32_t *bi, uint32_t *bb) {
    uint32_t k = 0u, i = CU_TOPK_EMPTY_ID, b = CU_TOPK_EMPTY_BITS;
    for (uint32_t e = lane; e < g->len; e += n_lanes) {
        const uint32_t eb = g->pairs ? g->src[2u * e + 1u] : g->src[e];
        const uint32_t ei = g->pairs ? g->src[2u * e] : g->id0 + e;
        const uint32_t ek = cu_topk_key(eb);
        if (has_thr && !cu_topk_better(tk, ti, ek, ei)) continue;
        if (cu_topk_better(ek, ei, k, i)) {
            k = ek;
            i = ei;
            b = eb;
        }
    }
    *bk = k;
    *bi = i;
    *bb = b;
}

#endif
