#version 450
// rope.comp — ROPE: x [T, H, D] f32 -> out [T, H, D], token t rotated by its
// angles. Legend: T tokens, H heads, D head dim, n_rot rotated dims, half =
// n_rot / 2. cs [T, half, 2] holds (cos, sin) of pos[t] * inv_freq(i): the
// backend computes it on the host in double precision with the CPU backend's
// lethe_rope_inv_freq (frequency base and scale, Llama-3 scaling,
// freq_factors), because an f32 angle loses the phase at large positions and
// many devices lack f64. NORM rotates pairs (2i, 2i+1), NEOX (i, i + half);
// dims >= n_rot are copied. One invocation per (t, h, pair).
// DMS borrowed channel (G > 0): in heads h % G == 0 channel D - 1 reads as 0
// (its partner rotates alone) and is written as 0.
#include "common.glsl"
layout(local_size_x_id = 0) in;
layout(binding = 0) readonly buffer X { float x[]; };
layout(binding = 1) readonly buffer CS { float cs[]; };
layout(binding = 2) writeonly buffer Out { float outp[]; };
layout(push_constant) uniform P {
    uint D, H, T, half_rot;
    uint neox;
    uint x_off, cs_off, out_off;
    uint G;             // borrowed channel group, 0: none
} p;

void main() {
    uint i = gl_GlobalInvocationID.x + gl_GlobalInvocationID.y * gl_NumWorkGroups.x * gl_WorkGroupSize.x;
    uint per_row = p.D - p.half_rot;          // half pairs + (D - n_rot) copies
    if (i >= p.T * p.H * per_row) return;
    uint r = i / per_row, j = i % per_row;    // r = t * H + h
    uint t = r / p.H;
    uint base = r * p.D;
    uint zero = p.G > 0u && (r % p.H) % p.G == 0u ? p.D - 1u : 0xFFFFFFFFu;   // the borrowed channel
    if (j >= p.half_rot) {                     // an unrotated dim
        uint d = j + p.half_rot;
        outp[p.out_off + base + d] = d == zero ? 0.0 : x[p.x_off + base + d];
        return;
    }
    float c = cs[p.cs_off + (t * p.half_rot + j) * 2u], s = cs[p.cs_off + (t * p.half_rot + j) * 2u + 1u];
    uint i0 = p.neox != 0u ? j : 2u * j;
    uint i1 = p.neox != 0u ? j + p.half_rot : 2u * j + 1u;
    float x0 = i0 == zero ? 0.0 : x[p.x_off + base + i0], x1 = i1 == zero ? 0.0 : x[p.x_off + base + i1];
    outp[p.out_off + base + i0] = i0 == zero ? 0.0 : x0 * c - x1 * s;
    outp[p.out_off + base + i1] = i1 == zero ? 0.0 : x0 * s + x1 * c;
}
