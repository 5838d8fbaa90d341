#version 450
// top_k.comp — TOP_K (graph.h): per row of x [T, V] f32 the k best
// (id, value bits) pairs, best first. Legend: T rows, V row width
// (vocabulary), k pairs kept, S segments per row, WG invocations.
//
// Order: the host sampler's (core/sampler.c cand_before), as unsigned keys so
// that selection is integer compares only and every device returns the
// CPU's bits: key(NaN) = 0 (after every number), -0 -> +0, then the usual
// sign flip; equal keys go to the lower id. An empty slot (a segment shorter
// than k) is (key 0, id 0xFFFFFFFF): after every real element, NaN included.
//
// Two dispatches of this shader (vk_ops.c op_top_k), one workgroup per
// segment:
//   MODE 0: segment s of row t = elements [s*chunk, min((s+1)*chunk, V)) of
//           x; the k best go to scratch [T, S, k] (or straight to the output
//           when S == 1);
//   MODE 1: segment = row t's S*k pairs from pass 0; the k best -> out [T, k].
// In a segment, invocation i owns elements i, i + WG, ...; each keeps its own
// best element not yet taken. k rounds: subgroupMax / subgroupMin pick the
// subgroup's best (key, then id), one shared-memory slot per subgroup, every
// invocation folds the slots; the owner of the winner writes it and rescans
// its elements for its best below the winner (the others' bests are still
// below it). Shared slots alternate by round parity: one barrier per round.
#include "common.glsl"
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require
layout(local_size_x_id = 0) in;
layout(binding = 0) readonly buffer X { uint xw[]; };
layout(binding = 1) writeonly buffer Out { uint ow[]; };
layout(push_constant) uniform P {
    uint V, T, k, chunk, S, mode, x_off, out_off;
} p;
layout(constant_id = 0) const uint WG = 256;

const uint EMPTY_ID = 0xFFFFFFFFu;
const uint EMPTY_BITS = 0x7FC00000u;   // a quiet NaN: key 0

shared uint sh_k[2][WG];               // [parity][subgroup] (WG bounds the subgroup count)
shared uint sh_i[2][WG];

uint key_of(uint u) {
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return 0u;   // NaN: after every number
    if (u == 0x80000000u) u = 0u;                      // -0 == +0: ties go to the lower id
    return (u & 0x80000000u) != 0u ? ~u : (u | 0x80000000u);
}

bool better(uint ka, uint ia, uint kb, uint ib) { return ka > kb || (ka == kb && ia < ib); }

uint seg_base, seg_len, seg_id0;

// element e of this segment: (key, id, bits)
void elem(uint e, out uint k, out uint i, out uint b) {
    if (p.mode == 0u) {
        b = xw[seg_base + e];
        i = seg_id0 + e;
    } else {
        i = xw[seg_base + 2u * e];
        b = xw[seg_base + 2u * e + 1u];
    }
    k = key_of(b);
}

// this invocation's best element strictly below (tk, ti) (has_thr) or overall
void lane_best(uint lane, bool has_thr, uint tk, uint ti, out uint bk, out uint bi, out uint bb) {
    bk = 0u; bi = EMPTY_ID; bb = EMPTY_BITS;
    for (uint e = lane; e < seg_len; e += WG) {
        uint k, i, b;
        elem(e, k, i, b);
        if (has_thr && !better(tk, ti, k, i)) continue;
        if (better(k, i, bk, bi)) { bk = k; bi = i; bb = b; }
    }
}

void main() {
    const uint lane = gl_LocalInvocationID.x;
    const uint s = gl_WorkGroupID.x, t = gl_WorkGroupID.y;
    uint out_base;
    if (p.mode == 0u) {
        const uint lo = s * p.chunk;
        seg_base = p.x_off + t * p.V + lo;
        seg_len = min(p.chunk, p.V - lo);
        seg_id0 = lo;
        out_base = p.out_off + 2u * (t * p.S + s) * p.k;
    } else {
        seg_base = p.x_off + 2u * t * p.S * p.k;
        seg_len = p.S * p.k;
        seg_id0 = 0u;
        out_base = p.out_off + 2u * t * p.k;
    }
    uint bk, bi, bb;
    lane_best(lane, false, 0u, 0u, bk, bi, bb);
    for (uint j = 0u; j < p.k; j++) {
        const uint par = j & 1u;
        const uint mk = subgroupMax(bk);
        const uint mi = subgroupMin(bk == mk ? bi : EMPTY_ID);
        if (subgroupElect()) { sh_k[par][gl_SubgroupID] = mk; sh_i[par][gl_SubgroupID] = mi; }
        barrier();
        uint wk = sh_k[par][0], wi = sh_i[par][0];
        for (uint g = 1u; g < gl_NumSubgroups; g++)
            if (better(sh_k[par][g], sh_i[par][g], wk, wi)) { wk = sh_k[par][g]; wi = sh_i[par][g]; }
        if (wi == EMPTY_ID) {            // the segment is exhausted: empty slots
            if (lane == 0u) { ow[out_base + 2u * j] = EMPTY_ID; ow[out_base + 2u * j + 1u] = EMPTY_BITS; }
        } else if (bi == wi) {           // ids are unique: exactly one owner
            ow[out_base + 2u * j] = bi;
            ow[out_base + 2u * j + 1u] = bb;
            lane_best(lane, true, wk, wi, bk, bi, bb);
        }
    }
}
