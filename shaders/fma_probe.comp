#version 450
// fma_probe.comp — run once at device creation (backends/vulkan/vk_probe.c)
// to decide exact.glsl's NATIVE_FMA by measurement: with the constant set,
// fma_rn is the driver's fma(), and the host compares what it gives, and
// the div_rn and exp_det built on it, with C's fmaf, a / b and
// lethe_cpu_expf on inputs where a fused and an unfused multiply-add round
// differently. Built once more with the constant off when fma() is not
// fused, as a check of the emulation itself.
//   in  [n][4]: a, b, c, x          out [n][4]: fma_rn(a, b, c), div_rn(a, b), exp_det(x), 0
#include "common.glsl"
#include "exact.glsl"
layout(local_size_x_id = 0) in;
layout(binding = 0) readonly buffer In { float inp[]; };
layout(binding = 1) writeonly buffer Out { float outp[]; };
layout(push_constant) uniform P { uint n; } p;

void main() {
    const uint i = gl_GlobalInvocationID.x;
    if (i >= p.n) return;
    const float a = inp[4u * i], b = inp[4u * i + 1u], c = inp[4u * i + 2u], x = inp[4u * i + 3u];
    outp[4u * i] = fma_rn(a, b, c);
    outp[4u * i + 1u] = div_rn(a, b);
    outp[4u * i + 2u] = exp_det(x);
    outp[4u * i + 3u] = 0.0;
}
