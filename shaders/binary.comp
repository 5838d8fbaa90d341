#version 450
// binary.comp — ADD / MUL (-DOP_ADD / -DOP_MUL): a [T, N], b [T, N] or [N]
// (broadcast over rows) -> out [T, N]. One invocation per element.
#include "common.glsl"
layout(local_size_x_id = 0) in;
layout(binding = 0) readonly buffer A { float a[]; };
layout(binding = 1) readonly buffer B { float b[]; };
layout(binding = 2) writeonly buffer Out { float outp[]; };
layout(push_constant) uniform P {
    uint n;             // elements of a
    uint nb;            // elements of b (N or n)
    uint a_off, b_off, out_off;
} p;

void main() {
    uint i = gl_GlobalInvocationID.x + gl_GlobalInvocationID.y * gl_NumWorkGroups.x * gl_WorkGroupSize.x;
    if (i >= p.n) return;
    float y = b[p.b_off + i % p.nb];
#if defined(OP_ADD)
    outp[p.out_off + i] = a[p.a_off + i] + y;
#elif defined(OP_MUL)
    outp[p.out_off + i] = a[p.a_off + i] * y;
#else
#error "binary.comp: define OP_ADD or OP_MUL"
#endif
}
