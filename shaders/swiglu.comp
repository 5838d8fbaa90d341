#version 450
// swiglu.comp — SWIGLU: gate [T, F], up [T, F] -> silu(gate) * up, as the
// CPU computes it: (g / (1 + exp_det(-g))) * u with its exp (exact.glsl).
#include "common.glsl"
#include "exact.glsl"
layout(local_size_x_id = 0) in;
layout(binding = 0) readonly buffer G { float g[]; };
layout(binding = 1) readonly buffer U { float u[]; };
layout(binding = 2) writeonly buffer Out { float outp[]; };
layout(push_constant) uniform P { uint n, g_off, u_off, out_off; } p;

void main() {
    uint i = gl_GlobalInvocationID.x + gl_GlobalInvocationID.y * gl_NumWorkGroups.x * gl_WorkGroupSize.x;
    if (i >= p.n) return;
    float x = g[p.g_off + i];
    precise float den = 1.0 + exp_det(-x);
    precise float y = div_rn(x, den) * u[p.u_off + i];
    outp[p.out_off + i] = y;
}
