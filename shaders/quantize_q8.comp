#version 450
// quantize_q8.comp — activations x [T, K] f32 -> q8 blocks [T, K/32], the
// CPU backend's lethe_cpu_q8a layout (40 B: f32 d, f32 s, i8 qs[32]) and
// arithmetic: d = amax / 127 and s = d * sum(qs), both rounded through f16
// as GGUF's q8_0 / q8_1 store them, qs = round-to-even(x * 127 / amax).
// Matmuls with 32-block weights then run the CPU's integer dot products, so
// the two backends agree to rounding, not to quantization noise.
// Legend: T rows, K row width (multiple of 32). One invocation per block.
#include "common.glsl"
#include "exact.glsl"
layout(local_size_x_id = 0) in;
layout(binding = 0) readonly buffer X { float x[]; };
layout(binding = 1) writeonly buffer Q { uint q[]; };
layout(push_constant) uniform P { uint n_blocks, x_off, q_off; } p;

// f32 -> nearest-even binary16 value, as lethe_f32_to_f16 (finite inputs)
float f16_round(float v) {
    uint u = floatBitsToUint(v), sign = u & 0x80000000u, a = u & 0x7FFFFFFFu;
    if (a >= 0x477FF000u) return uintBitsToFloat(sign | 0x7F800000u);       // rounds to inf
    if (a < 0x38800000u)                                                      // f16 subnormal: quantum 2^-24
        return uintBitsToFloat(sign | floatBitsToUint(roundEven(abs(v) * 16777216.0) * 5.9604644775390625e-8));
    uint rem = a & 0x1FFFu, base = a & ~0x1FFFu;
    if (rem > 0x1000u || (rem == 0x1000u && (base & 0x2000u) != 0u)) base += 0x2000u;
    return uintBitsToFloat(sign | base);
}

void main() {
    uint b = gl_GlobalInvocationID.x + gl_GlobalInvocationID.y * gl_NumWorkGroups.x * gl_WorkGroupSize.x;
    if (b >= p.n_blocks) return;
    uint xb = p.x_off + b * 32u;
    float amax = 0.0;
    for (uint j = 0u; j < 32u; j++) amax = max(amax, abs(x[xb + j]));
    // div_rn: the CPU's correctly rounded divisions (a quotient one ulp off
    // changes the f16 scale or a quant's rounding)
    float d = div_rn(amax, 127.0), id = amax != 0.0 ? div_rn(127.0, amax) : 0.0;
    int sum = 0;
    uint qb = p.q_off + b * 10u;
    for (uint w = 0u; w < 8u; w++) {
        uint packed = 0u;
        for (uint k = 0u; k < 4u; k++) {
            int v = int(roundEven(x[xb + w * 4u + k] * id));
            sum += v;
            packed |= (uint(v) & 0xFFu) << (8u * k);
        }
        q[qb + 2u + w] = packed;
    }
    q[qb] = floatBitsToUint(f16_round(d));
    q[qb + 1u] = floatBitsToUint(f16_round(d * float(sum)));
}
