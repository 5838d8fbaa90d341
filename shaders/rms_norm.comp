#version 450
// rms_norm.comp — RMS_NORM: x [T, E] f32, w [E] f32 (optional) -> out [T, E]:
// y = x / sqrt(mean(x^2) + eps) * w. Legend: T rows, E row width.
// One workgroup per row.
// -DF64 (devices with shaderFloat64): the CPU backend's arithmetic exactly:
// the squares summed in double in element order by one invocation, the
// scale 1 / sqrt(ss / E + eps) in double rounded once to float, then
// (x * scale) * w. A last-bit difference in the scale flips q8 roundings of
// the next matmul's activations, so bits matter here, not just accuracy.
// Default: a shared-memory tree sums the squares in float (close, not equal).
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
#ifdef F64
shared float scale_sh;
#else
shared float part[WG];
#endif

void main() {
    uint tid = gl_LocalInvocationID.x;
    uint t = gl_WorkGroupID.x + gl_WorkGroupID.y * gl_NumWorkGroups.x;   // uniform per workgroup
    if (t >= p.T) return;
    uint xr = p.x_off + t * p.E;
#ifdef F64
    if (tid == 0u) {
        precise double ss = 0.0LF;   // each square is exact in double, so fusing could not change the sum
        for (uint e = 0u; e < p.E; e++) {
            precise double v = double(x[xr + e]);
            ss = ss + v * v;
        }
        precise double m = ss / double(p.E) + double(p.eps);
        scale_sh = float(1.0LF / sqrt(m));
    }
    barrier();
    float scale = scale_sh;
#else
    float s = 0.0;
    for (uint e = tid; e < p.E; e += WG) s += x[xr + e] * x[xr + e];
    part[tid] = s;
    barrier();
    for (uint h = WG / 2u; h > 0u; h >>= 1) {
        if (tid < h) part[tid] += part[tid + h];
        barrier();
    }
    float scale = inversesqrt(part[0] / float(p.E) + p.eps);
#endif
    for (uint e = tid; e < p.E; e += WG) {
        precise float y = x[xr + e] * scale;
        outp[p.out_off + t * p.E + e] = p.has_w != 0u ? y * w[p.w_off + e] : y;
    }
}
