#version 450
// attention.comp — ATTENTION over the per-head KV cache, read in place.
// Legend: T tokens, Hq query heads, Hkv KV heads, G = Hq / Hkv, D head dim
// (<= 256, even for F16), L slots of a head stream (holes included), P slots
// per page (32), WG = 64 invocations per workgroup.
//
// One workgroup per (token t, query head h); it reads KV head h / G of the
// token's sequence. The host uploads, per (t, KV head), meta = {L, start of
// the stream's page list in `meta`, query position, 0} and the page lists.
// The KV binding is the cache's shared buffer as 32-bit words: K row of slot
// j at page * page_words + (j % P) * slot_words, V row P * slot_words after
// it, pos[j] at pos_word0 + page * P + j % P, expire likewise. Slot j is
// visible iff pos[j] <= p < expire[j] (holes: pos = INT32_MAX, never).
//
// The arithmetic is the CPU backend's (cpu_attention.c), operation for
// operation, so both give the same bits:
//   score = scale * reduce16(k . q): 16 lanes, lane l accumulating
//     k[16c + l] q[16c + l] by fused steps over c, then the lanes summed in
//     GCC's _mm512_reduce_add_ps order (D a multiple of 16);
//   two passes: the maximum m over the visible scores (any order gives the
//     same maximum), then weights exp_det(score - m) (the CPU's exp) summed
//     in slot order, and the V rows accumulated in slot order, acc_d +=
//     w v_d fused (`fused`, the CPU's AVX-512 f16 D=64 kernel) or as a
//     rounded product and a rounded sum (its generic kernel);
//   out = acc * (1 / sum), zeros for a query with no visible key;
//   for TOVA / H2O, the weights exp(score - m) / sum of every slot;
//   for QUEST (sel_off != 0), only the pages quest.comp selected for the
//     (token, KV head), {n, pages ascending} at sel_off: the keys walk
//     virtual slots v in [0, 32 n), slot = page[v / 32] * 32 + v % 32 (< L),
//     so the order is the CPU's (selected pages ascending, slots in order).
// Pass 2 recomputes each score rather than storing L of them (same bits).
// -DKV_SPLIT: the cache over several bindings (kv_split.glsl); page pg's
// rows in binding pg / chunk_pages, pos / expire words located from
// (pos_b0, pos_word0) / (exp_b0, exp_word0), the binding and word of their
// first entry. Same arithmetic, same bits.
// Keys go WG at a time: invocation j scores key j of the chunk; in pass 2
// the chunk's weights go through shared memory and invocation d accumulates
// output dims d, d + WG, ... over the chunk's keys in order.
#include "common.glsl"
#include "exact.glsl"
#define WG 64
#define MAX_DPT 4   // output dims per invocation: D <= WG * MAX_DPT
layout(local_size_x_id = 0) in;
layout(binding = 0) readonly buffer Q { float q[]; };
layout(binding = 1) readonly buffer KV { uint kv[]; };   // one-binding variant
layout(binding = 2) buffer Meta { int meta[]; };   // + the weights written for score policies
layout(binding = 3) writeonly buffer Out { float outp[]; };
layout(push_constant) uniform P {
    uint D, Hq, Hkv, G, T;
    uint q_off, out_off, meta_off;
    uint page_words, slot_words, pos_word0, exp_word0;
    uint f16;
    float scale;
    uint fused;         // 1: V rows accumulated by fused steps (see above)
    uint w_off;         // 0: no weights wanted; else the word in `meta` of [T][Hq][w_stride]
    uint w_stride;
    uint sel_off;       // 0: every page; else the word in `meta` of the QUEST selections
    uint sel_stride;
    uint n_bind, chunk_pages, chunk_words, pos_b0, exp_b0;   // KV_SPLIT (kv_split.glsl)
} p;
#define KV_READONLY
#include "kv_split.glsl"

shared float qs[WG * MAX_DPT];
shared float wts[WG];
shared float red[WG];

// element d of the row at word `row` of binding b (b dynamically uniform)
float kv_elem(uint b, uint row, uint d) {
    if (p.f16 != 0u) return f16_value((KVW(b, row + d / 2u) >> (16u * (d & 1u))) & 0xFFFFu);
    return uintBitsToFloat(KVW(b, row + d));
}

// binding and word of the K row of slot `in_page` of page `page` (V: + 32 rows)
uint row_bind(uint page) {
#ifdef KV_SPLIT
    return page / p.chunk_pages;
#else
    return 0u;
#endif
}
uint row_word(uint page, uint in_page) {
#ifdef KV_SPLIT
    page = page % p.chunk_pages;
#endif
    return page * p.page_words + in_page * p.slot_words;
}

// the pos (or expire: b0, w0 of that array) entry of slot mi = page * 32 + in_page
int meta_word(uint b0, uint w0, uint mi) {
#ifdef KV_SPLIT
    uint x = w0 + mi;
    return int(kv_load(b0 + x / p.chunk_words, x % p.chunk_words));
#else
    return int(kv[w0 + mi]);
#endif
}

int L, plist, pq, Lv;   // Lv: virtual slots walked (L without QUEST)
uint sel0;

// Virtual slot v -> slot of the stream, or -1 past the stream's end.
int slot_of(int v) {
    if (p.sel_off == 0u) return v;
    int j = meta[sel0 + 1u + uint(v / 32)] * 32 + v % 32;
    return j < L ? j : -1;
}

// The K row of slot j if visible to the query, else -1 (as uint); its binding in kb.
uint key_row(uint j, out uint kb) {
    uint page = uint(meta[p.meta_off + uint(plist) + j / 32u]);
    uint in_page = j % 32u, mi = page * 32u + in_page;
    int ps = meta_word(p.pos_b0, p.pos_word0, mi), ex = meta_word(p.exp_b0, p.exp_word0, mi);
    kb = row_bind(page);
    return ps <= pq && pq < ex ? row_word(page, in_page) : 0xFFFFFFFFu;
}

float score_in(uint kb, uint krow) {
    // lane by lane, not unrolled: Mesa's lavapipe loses the exactness of
    // the emulated fma when the 16 lanes are unrolled side by side
    float a[16];
    [[dont_unroll]] for (uint l = 0u; l < 16u; l++) {
        float al = 0.0;
        for (uint c = 0u; c < p.D; c += 16u) al = fma_rn(kv_elem(kb, krow, c + l), qs[c + l], al);
        a[l] = al;
    }
    precise float t0 = a[0] + a[8], t1 = a[1] + a[9], t2 = a[2] + a[10], t3 = a[3] + a[11];
    precise float t4 = a[4] + a[12], t5 = a[5] + a[13], t6 = a[6] + a[14], t7 = a[7] + a[15];
    precise float u0 = t0 + t4, u1 = t1 + t5, u2 = t2 + t6, u3 = t3 + t7;
    precise float s = (u0 + u2) + (u1 + u3);
    precise float r = p.scale * s;
    return r;
}

// score_in with kb possibly different between invocations (kv_split.glsl)
float score(uint kb, uint krow) {
#ifdef KV_SPLIT
    float r = 0.0;
    for (uint k = 0u; k < p.n_bind; k++)
        if (k == kb) r = score_in(k, krow);
    return r;
#else
    return score_in(0u, krow);
#endif
}

void main() {
    uint wgid = gl_WorkGroupID.x + gl_WorkGroupID.y * gl_NumWorkGroups.x;
    if (wgid >= p.T * p.Hq) return;   // uniform per workgroup
    uint lid = gl_LocalInvocationID.x;
    uint t = wgid / p.Hq, h = wgid % p.Hq, hk = h / p.G;
    uint e = p.meta_off + (t * p.Hkv + hk) * 4u;
    L = meta[e];
    plist = meta[e + 1u];
    pq = meta[e + 2u];
    sel0 = p.sel_off + (t * p.Hkv + hk) * p.sel_stride;
    Lv = p.sel_off == 0u ? L : meta[sel0] * 32;
    uint qbase = p.q_off + (t * p.Hq + h) * p.D;
    for (uint d = lid; d < p.D; d += WG) qs[d] = q[qbase + d];
    barrier();

    // pass 1: the maximum visible score
    const float NEG_INF = -1.0 / 0.0;
    float m = NEG_INF;
    for (int v = int(lid); v < Lv; v += WG) {
        int j = slot_of(v);
        if (j < 0) continue;
        uint kb, kr = key_row(uint(j), kb);
        if (kr != 0xFFFFFFFFu) m = max(m, score(kb, kr));
    }
    red[lid] = m;
    barrier();
    for (uint s = WG / 2u; s > 0u; s >>= 1) {
        if (lid < s) red[lid] = max(red[lid], red[lid + s]);
        barrier();
    }
    m = red[0];

    // pass 2: weights and the weighted V sum, in slot order
    precise float sum = 0.0;
    float acc[MAX_DPT];
    [[unroll]] for (uint c = 0u; c < MAX_DPT; c++) acc[c] = 0.0;
    if (m != NEG_INF) {   // uniform: some key is visible
        for (int j0 = 0; j0 < Lv; j0 += WG) {
            int j = j0 + int(lid) < Lv ? slot_of(j0 + int(lid)) : -1;
            float w = -1.0;   // not visible
            if (j >= 0) {
                uint kb, kr = key_row(uint(j), kb);
                if (kr != 0xFFFFFFFFu) {
                    precise float x = score(kb, kr) - m;
                    w = exp_det(x);
                }
            }
            wts[lid] = w;
            barrier();
            int n = min(WG, Lv - j0);
            for (int i = 0; i < n; i++) {
                float wi = wts[i];
                if (wi < 0.0) continue;
                sum = sum + wi;
                uint jj = uint(slot_of(j0 + i));
                uint page = uint(meta[p.meta_off + uint(plist) + jj / 32u]);
                // the same row for the whole workgroup: its binding indexes kvs[] directly
                uint vb = row_bind(page), vrow = row_word(page, jj % 32u) + 32u * p.slot_words;
                [[dont_unroll]] for (uint c = 0u; c < MAX_DPT; c++) {   // see score()
                    uint d = lid + c * WG;
                    if (d < p.D) {
                        float v = kv_elem(vb, vrow, d);
                        if (p.fused != 0u) {
                            acc[c] = fma_rn(wi, v, acc[c]);
                        } else {
                            precise float pr = wi * v;
                            precise float na = acc[c] + pr;
                            acc[c] = na;
                        }
                    }
                }
            }
            barrier();   // wts is rewritten by the next chunk
        }
    }
    // TOVA / H2O (w_off != 0): each slot's softmax weight exp(s - m) / sum,
    // -1 where the key is not visible; the host sums them over the group
    // into the policy's scores in the CPU kernel's order (vk_ops.c)
    if (p.w_off != 0u) {
        uint wrow = p.w_off + (t * p.Hq + h) * p.w_stride;
        for (int j = int(lid); j < L; j += WG) {
            uint kb, kr = key_row(uint(j), kb);
            float pw = -1.0;
            if (kr != 0xFFFFFFFFu && sum > 0.0) {
                precise float x = score(kb, kr) - m;
                pw = div_rn(exp_det(x), sum);
            }
            meta[wrow + uint(j)] = floatBitsToInt(pw);
        }
    }
    float inv = sum > 0.0 ? div_rn(1.0, sum) : 0.0;
    uint obase = p.out_off + (t * p.Hq + h) * p.D;
    [[unroll]] for (uint c = 0u; c < MAX_DPT; c++) {
        uint d = lid + c * WG;
        if (d < p.D) {
            precise float o = acc[c] * inv;
            outp[obase + d] = o;
        }
    }
}
