#version 450
// rms_norm.comp — RMS_NORM: x [T, E] f32, w [E] f32 (optional) -> out [T, E]:
// y = x / sqrt(mean(x^2) + eps) * w. Legend: T rows, E row width.
// One workgroup per row; a shared-memory tree sums the squares.
#include "common.glsl"
layout(local_size_x_id = 0) in;
layout(binding = 0) readonly buffer X { float x[]; };
layout(binding = 1) readonly buffer W { float w[]; };
layout(binding = 2) writeonly buffer Out { float outp[]; };
layout(push_constant) uniform P {
    uint E, T;
    uint x_off, w_off, out_off;
    uint has_w;
    float eps;
} p;
layout(constant_id = 0) const uint WG = 64;
shared float part[WG];

void main() {
    uint tid = gl_LocalInvocationID.x;
    uint t = gl_WorkGroupID.x + gl_WorkGroupID.y * gl_NumWorkGroups.x;   // uniform per workgroup
    if (t >= p.T) return;
    uint xr = p.x_off + t * p.E;
    float s = 0.0;
    for (uint e = tid; e < p.E; e += WG) s += x[xr + e] * x[xr + e];
    part[tid] = s;
    barrier();
    for (uint h = WG / 2u; h > 0u; h >>= 1) {
        if (tid < h) part[tid] += part[tid + h];
        barrier();
    }
    float scale = inversesqrt(part[0] / float(p.E) + p.eps);
    for (uint e = tid; e < p.E; e += WG)
        outp[p.out_off + t * p.E + e] = x[xr + e] * scale * (p.has_w != 0u ? w[p.w_off + e] : 1.0);
}
