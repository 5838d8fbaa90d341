#version 450
// quest.comp — QUEST on the device (DESIGN.md §3.2: keep every token, read
// only the pages whose key bound promises the most), in two variants that
// reproduce backends/cpu/cpu_attention.c (quest_refresh, quest_select) bit
// for bit:
//   bounds (-DQUEST_BOUNDS): per page in meta [n][2] = {pool page id, rows
//     in use}, kmin[page][d] / kmax[page][d] = min / max over the rows of
//     K[row][d] (as f32), written into the cache's shared buffer: the pages
//     this micro-batch's KV_STORE wrote (the host lists them);
//   select (default): per (token t, KV head), the pages attention.comp
//     reads: all of a stream's n_pages when n_pages <= k (= budget / P),
//     else the page holding the query's own token plus the pages of the
//     highest bound until k, ties to the lower page, in ascending order.
//     bound(page) = max over the G query heads of the group of
//     sum_d max(q_d kmin_d, q_d kmax_d), summed in d order (rounded products,
//     a compare, a rounded sum: no fma to contract). Output per (t, KV head)
//     at sel_off + (t * Hkv + hk) * sel_stride: {n, page indices (of the
//     stream's page list)}.
// Legend: T tokens, Hq query heads, Hkv KV heads, G = Hq / Hkv, D head dim,
// L slots of a stream, P = 32 slots per page, WG = 64 invocations.
// The KV binding is the cache's shared buffer as 32-bit words (kv_cache.h);
// `meta` is attention.comp's: [T * Hkv][4] = {L, page-list start, query
// position, 0} at meta_off, then the page lists.
// -DKV_SPLIT: the cache over several bindings (kv_split.glsl), as in
// attention.comp: page pg's rows in binding pg / chunk_pages; the pos,
// kmin and kmax words located from (pos_b0, pos_word0), (kmin_b0,
// kmin_word0), (kmax_b0, kmax_word0), the binding and word of each array's
// first entry. Pages, rows and bounds differ between invocations, so every
// access goes through kv_load / kv_store_word. Same arithmetic, same bits.
#include "common.glsl"
#define WG 64
layout(local_size_x_id = 0) in;

// word x (+ i) of an array whose first entry is word w0 of binding b0
#ifdef KV_SPLIT
#define LOC_B(b0, x) ((b0) + (x) / p.chunk_words)
#define LOC_W(x) ((x) % p.chunk_words)
#else
#define LOC_B(b0, x) 0u
#define LOC_W(x) (x)
#endif

#if defined(QUEST_BOUNDS)
layout(binding = 0) buffer KV { uint kv[]; };   // one-binding variant
layout(binding = 1) readonly buffer Meta { int meta[]; };
layout(push_constant) uniform P {
    uint D, n, meta_off, page_words, slot_words, kmin_word0, kmax_word0, f16;
    uint n_bind, chunk_pages, chunk_words, kmin_b0, kmax_b0;   // KV_SPLIT
} p;
#include "kv_split.glsl"

// element d of the row at word `row` of binding b (b may differ between invocations)
float kv_elem(uint b, uint row, uint d) {
    if (p.f16 != 0u) return f16_value((kv_load(b, row + d / 2u) >> (16u * (d & 1u))) & 0xFFFFu);
    return uintBitsToFloat(kv_load(b, row + d));
}

void main() {
    uint i = gl_GlobalInvocationID.x + gl_GlobalInvocationID.y * gl_NumWorkGroups.x * gl_WorkGroupSize.x;
    if (i >= p.n * p.D) return;
    uint e = i / p.D, d = i % p.D;
    uint page = uint(meta[p.meta_off + 2u * e]);
    int rows = meta[p.meta_off + 2u * e + 1u];
    const float INF = 1.0 / 0.0;
    float mn = INF, mx = -INF;
#ifdef KV_SPLIT
    uint rb = page / p.chunk_pages, rw = (page % p.chunk_pages) * p.page_words;
    uint kmin_b0 = p.kmin_b0, kmax_b0 = p.kmax_b0;
#else
    uint rb = 0u, rw = page * p.page_words, kmin_b0 = 0u, kmax_b0 = 0u;
#endif
    for (int r = 0; r < rows; r++) {
        float x = kv_elem(rb, rw + uint(r) * p.slot_words, d);
        mn = x < mn ? x : mn;   // the CPU's compares (not min/max: -0 and NaN as it does)
        mx = x > mx ? x : mx;
    }
    uint xn = p.kmin_word0 + page * p.D + d, xx = p.kmax_word0 + page * p.D + d;
    kv_store_word(LOC_B(kmin_b0, xn), LOC_W(xn), floatBitsToUint(mn));
    kv_store_word(LOC_B(kmax_b0, xx), LOC_W(xx), floatBitsToUint(mx));
}
#else
#define MAX_PAGES 4096   // pages of one stream (131072 slots); more: the CPU (vk_ops.c)
layout(binding = 0) readonly buffer Q { float q[]; };
layout(binding = 1) readonly buffer KV { uint kv[]; };   // one-binding variant
layout(binding = 2) buffer Meta { int meta[]; };
layout(push_constant) uniform P {
    uint D, Hq, Hkv, G, T, q_off, meta_off;
    uint pos_word0, kmin_word0, kmax_word0;
    uint k_pages;       // max(budget / P, 1)
    uint sel_off, sel_stride;
    uint n_bind, chunk_words, pos_b0, kmin_b0, kmax_b0;   // KV_SPLIT
} p;
#define KV_READONLY
#include "kv_split.glsl"
#ifdef KV_SPLIT
#define B0(name) p.name
#else
#define B0(name) 0u
#endif

shared float bound[MAX_PAGES];
shared uint picked[MAX_PAGES / 32];   // bit per page: selected
shared float red_v[WG];
shared int red_i[WG];
shared int own_s;

void main() {
    uint wgid = gl_WorkGroupID.x + gl_WorkGroupID.y * gl_NumWorkGroups.x;
    if (wgid >= p.T * p.Hkv) return;   // uniform per workgroup
    uint lid = gl_LocalInvocationID.x;
    uint t = wgid / p.Hkv, hk = wgid % p.Hkv;
    uint e = p.meta_off + wgid * 4u;
    int L = meta[e], plist = meta[e + 1u], pq = meta[e + 2u];
    int n_pages = (L + 31) / 32;
    uint out0 = p.sel_off + wgid * p.sel_stride;
    int k = int(p.k_pages);
    if (n_pages <= k) {   // every page, in order
        for (int pg = int(lid); pg < n_pages; pg += WG) meta[out0 + 1u + uint(pg)] = pg;
        if (lid == 0u) meta[out0] = n_pages;
        return;
    }
    const float NEG_INF = -1.0 / 0.0;
    if (lid == 0u) own_s = -1;
    for (uint w = lid; w < MAX_PAGES / 32u; w += WG) picked[w] = 0u;
    barrier();
    // bounds, one page per invocation; the page of the query's own token
    uint qrow0 = p.q_off + (t * p.Hq + hk * p.G) * p.D;
    for (int pg = int(lid); pg < n_pages; pg += WG) {
        uint page = uint(meta[p.meta_off + uint(plist) + uint(pg)]);
        uint mn0 = p.kmin_word0 + page * p.D, mx0 = p.kmax_word0 + page * p.D;
        float best = NEG_INF;
        for (uint g = 0u; g < p.G; g++) {
            precise float b = 0.0;
            for (uint d = 0u; d < p.D; d++) {
                float qd = q[qrow0 + g * p.D + d];
                uint xn = mn0 + d, xx = mx0 + d;
                precise float a = qd * uintBitsToFloat(kv_load(LOC_B(B0(kmin_b0), xn), LOC_W(xn)));
                precise float c = qd * uintBitsToFloat(kv_load(LOC_B(B0(kmax_b0), xx), LOC_W(xx)));
                b = b + (a > c ? a : c);
            }
            best = b > best ? b : best;
        }
        bound[pg] = best;
        int rows = min(32, L - pg * 32);
        for (int j = 0; j < rows; j++) {
            uint x = p.pos_word0 + page * 32u + uint(j);
            if (int(kv_load(LOC_B(B0(pos_b0), x), LOC_W(x))) == pq) atomicMax(own_s, pg);
        }
    }
    barrier();
    int own = own_s;
    if (own >= 0) {   // always read (uniform branch)
        if (lid == 0u) {
            picked[uint(own) / 32u] |= 1u << (uint(own) % 32u);
            bound[own] = NEG_INF;
        }
        k--;
        barrier();
    }
    // the rest by repeated maximum: the highest bound, the lowest page on a
    // tie; -inf marks a page taken (or one that can never win, as on the CPU)
    for (; k > 0; k--) {
        float bv = NEG_INF;
        int bi = -1;
        for (int pg = int(lid); pg < n_pages; pg += WG)
            if (bound[pg] != NEG_INF && (bi < 0 || bound[pg] > bv)) {
                bv = bound[pg];
                bi = pg;
            }
        red_v[lid] = bv;
        red_i[lid] = bi;
        barrier();
        for (uint s = WG / 2u; s > 0u; s >>= 1) {
            if (lid < s) {
                float ov = red_v[lid + s];
                int oi = red_i[lid + s];
                if (oi >= 0 && (red_i[lid] < 0 || ov > red_v[lid] || (ov == red_v[lid] && oi < red_i[lid]))) {
                    red_v[lid] = ov;
                    red_i[lid] = oi;
                }
            }
            barrier();
        }
        int b = red_i[0];
        barrier();   // red_* are rewritten by the next round
        if (b < 0) break;   // uniform
        if (lid == 0u) {
            picked[uint(b) / 32u] |= 1u << (uint(b) % 32u);
            bound[b] = NEG_INF;
        }
        barrier();
    }
    // ascending page order: slot order, as without QUEST
    if (lid == 0u) {
        int n = 0;
        for (int pg = 0; pg < n_pages; pg++)
            if ((picked[uint(pg) / 32u] & (1u << (uint(pg) % 32u))) != 0u) meta[out0 + 1u + uint(n++)] = pg;
        meta[out0] = n;
    }
}
#endif
