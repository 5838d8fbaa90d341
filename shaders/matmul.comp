#version 450
// matmul.comp — MATMUL: w [N, K] (WTYPE, dequantized here), x [T, K] f32 ->
// out [T, N] f32, out[t, n] = sum_k w[n, k] * x[t, k].
// Legend: N output rows (weight rows), K inner dim, T tokens.
// Default (GEMV, for T = 1 and small T): one workgroup of WG invocations per
// (row n, token t); invocations stride over k, a shared-memory tree reduces.
// -DTILED (T > 1): a workgroup computes a TILE x TILE block of (n, t) with
// the weight and activation tiles staged in shared memory, so each weight
// element is dequantized once per TILE tokens.
// -DACT_Q8 (32-block weight types): x arrives as q8 blocks from
// quantize_q8.comp and each block contributes d_w d_x (u . q) + m_w s_x, the
// CPU backend's integer dot product, so both backends agree to rounding.
// The weight binding may hold only rows [n0, n0 + N) of a larger tensor
// (tensors over maxStorageBufferRange go in row chunks); w_off is the byte
// of row n0 in the binding and out_col0 = n0 places the results.
#include "common.glsl"
layout(binding = 0) readonly buffer Wq { uint wq[]; };
#ifdef ACT_Q8
layout(binding = 1) readonly buffer X { uint xq[]; };   // [T, K/32] blocks of 10 words
#else
layout(binding = 1) readonly buffer X { float x[]; };
#endif
layout(binding = 2) writeonly buffer Out { float outp[]; };
layout(push_constant) uniform P {
    uint N, K, T;
    uint w_off, row_bytes;
    uint x_off, out_off;
    uint out_stride;    // elements per output row (the full N of the tensor)
    uint out_col0;      // first output column of this chunk
} p;
#include "dequant.glsl"
#include "exact.glsl"

#ifdef ACT_Q8
#ifndef QBLOCK
#error "ACT_Q8 needs a 32-block weight type"
#endif
int xq8(uint xb, uint j) { return bitfieldExtract(int(xq[xb + 2u + (j >> 2)]), int((j & 3u) * 8u), 8); }
#endif

#if !defined(TILED) && defined(ACT_Q8)
// GEMV, q8 activations, in the CPU backend's exact arithmetic (cpu_quant.c:
// DEF_DOT32_AVX2 and the AVX-512 tiles, which agree bit for bit): 8 float
// lanes per output; lane j takes elements 4j..4j+3 of every block and
// accumulates acc_j = fma(float(int dot), d_w * d_x, acc_j) block after
// block; the offsets m_w * s_x go to a separate sequential sum (rounded
// products, no fusing); the result is hsum8(acc) + msum with hsum8's
// addition order ((a0+a4)+(a2+a6)) + ((a1+a5)+(a3+a7)). Same bits as the
// CPU, not merely close: a last-bit difference here flips a later q8
// rounding and the two backends drift apart by quantization noise.
// A workgroup of WG invocations computes WG/8 outputs at a time.
layout(local_size_x_id = 0) in;
layout(constant_id = 0) const uint WG = 32;
shared float lane_acc[WG];

void main() {
    const uint tid = gl_LocalInvocationID.x, lane = tid & 7u, per = WG / 8u;
    const uint t = gl_WorkGroupID.z, nb = p.K >> 5;
    const uint groups = gl_NumWorkGroups.x * gl_NumWorkGroups.y;
    for (uint n0 = (gl_WorkGroupID.x + gl_WorkGroupID.y * gl_NumWorkGroups.x) * per; n0 < p.N; n0 += groups * per) {
        const uint n = n0 + tid / 8u;
        float acc = 0.0;
        precise float msum = 0.0;
        if (n < p.N) {
            const uint rb = p.w_off + n * p.row_bytes;
            for (uint b = 0u; b < nb; b++) {
                const uint wb = rb + b * BS, xb = p.x_off + (t * nb + b) * 10u;
                float d, m;
                wscale(wb, d, m);
                const float dx = uintBitsToFloat(xq[xb]);
                acc = fma_rn(float(lane_idot(wb, xb, lane)), d * dx, acc);
#if WTYPE != 8
                if (lane == 0u) {
                    precise float ms = m * uintBitsToFloat(xq[xb + 1u]);
                    msum = msum + ms;
                }
#endif
            }
        }
        lane_acc[tid] = acc;
        barrier();
        if (lane == 0u && n < p.N) {
            const uint o = tid;
            precise float v = ((lane_acc[o] + lane_acc[o + 4u]) + (lane_acc[o + 2u] + lane_acc[o + 6u])) +
                              ((lane_acc[o + 1u] + lane_acc[o + 5u]) + (lane_acc[o + 3u] + lane_acc[o + 7u]));
#if WTYPE != 8
            v = v + msum;
#endif
            outp[p.out_off + t * p.out_stride + p.out_col0 + n] = v;
        }
        barrier();
    }
}
#elif !defined(TILED)
layout(local_size_x_id = 0) in;
layout(constant_id = 0) const uint WG = 32;
shared float part[WG];

void main() {
    uint tid = gl_LocalInvocationID.x;
    uint t = gl_WorkGroupID.z;
    for (uint n = gl_WorkGroupID.x + gl_WorkGroupID.y * gl_NumWorkGroups.x; n < p.N;
         n += gl_NumWorkGroups.x * gl_NumWorkGroups.y) {
        uint rb = p.w_off + n * p.row_bytes, xr = p.x_off + t * p.K;
        float s = 0.0;
        for (uint k = tid; k < p.K; k += WG) s += deq(rb, k) * x[xr + k];
        part[tid] = s;
        barrier();
        for (uint h = WG / 2u; h > 0u; h >>= 1) {
            if (tid < h) part[tid] += part[tid + h];
            barrier();
        }
        if (tid == 0u) outp[p.out_off + t * p.out_stride + p.out_col0 + n] = part[0];
        barrier();
    }
}
#elif defined(ACT_Q8)
// Tiled, q8 activations: per 32-block step the workgroup stages the integer
// quants and scales of 16 weight rows and 16 activation rows.
#define TILE 16u
layout(local_size_x = 16, local_size_y = 16) in;
shared int wu[TILE][33];
shared int xu[TILE][33];
shared float wd[TILE], wm[TILE], xd[TILE], xs[TILE];

void main() {
    uint lx = gl_LocalInvocationID.x, ly = gl_LocalInvocationID.y;   // lx: n, ly: t
    uint n0 = gl_WorkGroupID.x * TILE, t0 = gl_WorkGroupID.y * TILE;
    uint tid = ly * TILE + lx;
    const uint nb = p.K >> 5;
    float acc[8] = float[8](0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);   // the CPU's 8 lanes (see the GEMV)
    precise float msum = 0.0;
    for (uint b = 0u; b < nb; b++) {
        for (uint e = tid; e < TILE * 32u; e += TILE * TILE) {
            uint r = e >> 5, j = e & 31u;
            uint n = n0 + r, t = t0 + r;
            wu[r][j] = n < p.N ? wq_q(p.w_off + n * p.row_bytes + b * BS, j) : 0;
            xu[r][j] = t < p.T ? xq8(p.x_off + (t * nb + b) * 10u, j) : 0;
        }
        if (tid < TILE) {
            uint n = n0 + tid;
            float d = 0.0, m = 0.0;
            if (n < p.N) wscale(p.w_off + n * p.row_bytes + b * BS, d, m);
            wd[tid] = d;
            wm[tid] = m;
        } else if (tid < 2u * TILE) {
            uint r = tid - TILE, t = t0 + r, xb = p.x_off + (t * nb + b) * 10u;
            xd[r] = t < p.T ? uintBitsToFloat(xq[xb]) : 0.0;
            xs[r] = t < p.T ? uintBitsToFloat(xq[xb + 1u]) : 0.0;
        }
        barrier();
        const float dd = wd[lx] * xd[ly];
        // not unrolled: lavapipe loses the emulated fma's exactness when
        // copies of it run side by side (see attention.comp's score())
        [[dont_unroll]] for (uint j = 0u; j < 8u; j++) {
            int s = 0;
            [[unroll]] for (uint k = 4u * j; k < 4u * j + 4u; k++) s += wu[lx][k] * xu[ly][k];
            acc[j] = fma_rn(float(s), dd, acc[j]);
        }
#if WTYPE != 8
        precise float ms = wm[lx] * xs[ly];
        msum = msum + ms;
#endif
        barrier();
    }
    uint n = n0 + lx, t = t0 + ly;
    precise float v = ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
#if WTYPE != 8
    v = v + msum;
#endif
    if (n < p.N && t < p.T) outp[p.out_off + t * p.out_stride + p.out_col0 + n] = v;
}
#else
#define TILE 16u
#define KT 32u
layout(local_size_x = 16, local_size_y = 16) in;
shared float ws[TILE][KT + 1u];
shared float xs[TILE][KT + 1u];

void main() {
    uint lx = gl_LocalInvocationID.x, ly = gl_LocalInvocationID.y;   // lx: n, ly: t
    uint n0 = gl_WorkGroupID.x * TILE, t0 = gl_WorkGroupID.y * TILE;
    uint tid = ly * TILE + lx;
    float acc = 0.0;
    for (uint k0 = 0u; k0 < p.K; k0 += KT) {
        // 256 invocations stage 16 x 32 weights and 16 x 32 activations
        for (uint e = tid; e < TILE * KT; e += TILE * TILE) {
            uint r = e / KT, k = e % KT;
            uint n = n0 + r, t = t0 + r;
            bool kin = k0 + k < p.K;
            ws[r][k] = (n < p.N && kin) ? deq(p.w_off + n * p.row_bytes, k0 + k) : 0.0;
            xs[r][k] = (t < p.T && kin) ? x[p.x_off + t * p.K + k0 + k] : 0.0;
        }
        barrier();
        [[unroll]] for (uint k = 0u; k < KT; k++) acc += ws[lx][k] * xs[ly][k];
        barrier();
    }
    uint n = n0 + lx, t = t0 + ly;
    if (n < p.N && t < p.T) outp[p.out_off + t * p.out_stride + p.out_col0 + n] = acc;
}
#endif
