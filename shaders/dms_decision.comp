#version 450
// dms_decision.comp — DMS_DECISION: out [T, Hkv] eviction logits,
// logit = scale * x - offset (graph.h). Legend: T tokens, Hkv KV heads, G
// query heads per KV head, D head dim.
//   mode 0 (from q):    x = q[t, hs * G, D - 1], q [T, Hkv * G, D];
//   mode 1 (adapter):   x = a[t, hs] of a [T, Hkv], or a[t, 0] of a [T, 1];
//   mode 2 (forced):    the logits themselves, hashed on the host (they
//                       depend only on position, layer and head; 64-bit
//                       integer hashing is an optional feature on devices).
// hs = 0 when per_layer (every head takes head 0's decision), else h.
#include "common.glsl"
layout(local_size_x_id = 0) in;
layout(binding = 0) readonly buffer X { float x[]; };
layout(binding = 1) writeonly buffer Out { float outp[]; };
layout(push_constant) uniform P {
    uint T, Hkv, G, D, mode, per_layer, x_width;
    uint x_off, out_off;
    float scale, offset;
} p;

void main() {
    uint i = gl_GlobalInvocationID.x + gl_GlobalInvocationID.y * gl_NumWorkGroups.x * gl_WorkGroupSize.x;
    if (i >= p.T * p.Hkv) return;
    uint t = i / p.Hkv, h = i % p.Hkv;
    uint hs = p.per_layer != 0u ? 0u : h;
    float logit;
    if (p.mode == 2u) {
        logit = x[p.x_off + i];
    } else if (p.mode == 0u) {
        logit = p.scale * x[p.x_off + (t * p.Hkv * p.G + hs * p.G) * p.D + p.D - 1u] - p.offset;
    } else {
        logit = p.scale * x[p.x_off + t * p.x_width + (p.x_width == 1u ? 0u : hs)] - p.offset;
    }
    outp[p.out_off + i] = logit;
}
