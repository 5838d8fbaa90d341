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
// Keys go WG at a time (online softmax): invocation j scores key j of the
// chunk, the chunk's weights exp(s - m) go through shared memory, then
// invocation d accumulates output dims d, d + WG, ... of the weighted V sum,
// rescaled whenever the running max m grows. A query with no visible key
// gives zeros, like the CPU kernel.
#include "common.glsl"
#define WG 64
#define MAX_DPT 4   // output dims per invocation: D <= WG * MAX_DPT
layout(local_size_x_id = 0) in;
layout(binding = 0) readonly buffer Q { float q[]; };
layout(binding = 1) readonly buffer KV { uint kv[]; };
layout(binding = 2) readonly buffer Meta { int meta[]; };
layout(binding = 3) writeonly buffer Out { float outp[]; };
layout(push_constant) uniform P {
    uint D, Hq, Hkv, G, T;
    uint q_off, out_off, meta_off;
    uint page_words, slot_words, pos_word0, exp_word0;
    uint f16;
    float scale;
} p;

shared float qs[WG * MAX_DPT];
shared float wts[WG];

float kv_elem(uint row, uint d) {
    if (p.f16 != 0u) return unpackHalf2x16(kv[row + d / 2u])[d & 1u];
    return uintBitsToFloat(kv[row + d]);
}

void main() {
    uint wgid = gl_WorkGroupID.x + gl_WorkGroupID.y * gl_NumWorkGroups.x;
    if (wgid >= p.T * p.Hq) return;   // uniform per workgroup
    uint lid = gl_LocalInvocationID.x;
    uint t = wgid / p.Hq, h = wgid % p.Hq, hk = h / p.G;
    uint e = p.meta_off + (t * p.Hkv + hk) * 4u;
    int L = meta[e], plist = meta[e + 1u], pq = meta[e + 2u];
    uint qbase = p.q_off + (t * p.Hq + h) * p.D;
    for (uint d = lid; d < p.D; d += WG) qs[d] = q[qbase + d];
    barrier();

    float m = -1.0 / 0.0, sum = 0.0;
    float acc[MAX_DPT];
    [[unroll]] for (uint c = 0u; c < MAX_DPT; c++) acc[c] = 0.0;
    for (int j0 = 0; j0 < L; j0 += WG) {
        // scores: invocation lid takes slot j0 + lid
        int j = j0 + int(lid);
        float s = -1.0 / 0.0;
        if (j < L) {
            uint page = uint(meta[p.meta_off + uint(plist) + uint(j) / 32u]);
            uint in_page = uint(j) % 32u;
            uint mi = page * 32u + in_page;
            int ps = int(kv[p.pos_word0 + mi]), ex = int(kv[p.exp_word0 + mi]);
            if (ps <= pq && pq < ex) {
                uint krow = page * p.page_words + in_page * p.slot_words;
                float dot = 0.0;
                for (uint d = 0u; d < p.D; d++) dot += kv_elem(krow, d) * qs[d];
                s = p.scale * dot;
            }
        }
        wts[lid] = s;
        barrier();
        float cm = m;
        for (uint i = 0u; i < WG; i++) cm = max(cm, wts[i]);
        barrier();
        if (cm == -1.0 / 0.0) continue;   // nothing visible yet: uniform across the workgroup
        float alpha = m == -1.0 / 0.0 ? 0.0 : exp(m - cm);
        wts[lid] = s == -1.0 / 0.0 ? 0.0 : exp(s - cm);
        barrier();
        m = cm;
        sum *= alpha;
        [[unroll]] for (uint c = 0u; c < MAX_DPT; c++) acc[c] *= alpha;
        int n = min(WG, L - j0);
        for (int i = 0; i < n; i++) {
            float w = wts[i];
            if (w == 0.0) continue;
            sum += w;
            uint jj = uint(j0 + i);
            uint page = uint(meta[p.meta_off + uint(plist) + jj / 32u]);
            uint vrow = page * p.page_words + 32u * p.slot_words + (jj % 32u) * p.slot_words;
            [[unroll]] for (uint c = 0u; c < MAX_DPT; c++) {
                uint d = lid + c * WG;
                if (d < p.D) acc[c] += w * kv_elem(vrow, d);
            }
        }
        barrier();   // wts is rewritten by the next chunk
    }
    float inv = sum > 0.0 ? 1.0 / sum : 0.0;
    uint obase = p.out_off + (t * p.Hq + h) * p.D;
    [[unroll]] for (uint c = 0u; c < MAX_DPT; c++) {
        uint d = lid + c * WG;
        if (d < p.D) outp[obase + d] = acc[c] * inv;
    }
}
