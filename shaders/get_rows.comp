#version 450
// get_rows.comp — GET_ROWS: w [N, E] (WTYPE), ids [R] i32 -> out [R, E] f32.
// Legend: N rows of w, E row width, R rows gathered.
// One invocation per output element. The weight binding may hold only rows
// [r0, r1) of w (tensors larger than maxStorageBufferRange are dispatched
// in row chunks); ids outside the chunk are left to the other dispatches.
#include "common.glsl"
layout(local_size_x_id = 0) in;
layout(binding = 0) readonly buffer Wq { uint wq[]; };
layout(binding = 1) readonly buffer Ids { int ids[]; };
layout(binding = 2) writeonly buffer Out { float outp[]; };
layout(push_constant) uniform P {
    uint E, R;          // row width, rows to gather
    uint w_off;         // byte of row r0 within binding 0
    uint row_bytes;
    uint r0, r1;        // rows of w present in binding 0
    uint ids_off, out_off;  // element offsets
} p;
#include "dequant.glsl"

void main() {
    uint i = gl_GlobalInvocationID.x + gl_GlobalInvocationID.y * gl_NumWorkGroups.x * gl_WorkGroupSize.x;
    if (i >= p.E * p.R) return;
    uint r = i / p.E, e = i % p.E;
    int id = ids[p.ids_off + r];
    if (id < int(p.r0) || id >= int(p.r1)) return;
    outp[p.out_off + i] = deq(p.w_off + (uint(id) - p.r0) * p.row_bytes, e);
}
