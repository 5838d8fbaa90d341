/* k_hostcheck_fuse.cu — RMS_NORM, SWIGLU and the fused decode kernels
 * (k_elementwise.cu) run on the host thread by thread, for
 * tests/test_cuda_fuse.c: the same per-thread code (cuda_fuse.cuh), the
 * block's reduction emulated lane by lane in the device's order (thread
 * partials, warp butterflies xor 16..1, warp 0's butterfly over the warp
 * sums), shared memory as a poisoned array. No kernel is launched.
 * Legend: T rows, E row width, n elements, nb = E / 32 q8 blocks.
 */
#include "cuda_fuse.cuh"

#include <math.h>
#include <stddef.h>
#include <stdlib.h>

/* block_rms_scale: the CU_NORM_THREADS threads' partial sums -> the scale. */
static float host_block_rms_scale(const double *ss, int64_t E, float eps) {
    const int W = CU_NORM_THREADS / 32;
    double part[32], v[32], nv[32];
    for (int w = 0; w < W; w++) {
        for (int l = 0; l < 32; l++) v[l] = ss[32 * w + l];
        for (int o = 16; o > 0; o >>= 1) {   /* __shfl_xor_sync: every lane reads before any adds */
            for (int l = 0; l < 32; l++) nv[l] = v[l] + v[l ^ o];
            memcpy(v, nv, sizeof v);
        }
        part[w] = v[0];
    }
    for (int l = 0; l < 32; l++) v[l] = l < W ? part[l] : 0.0;
    for (int o = 16; o > 0; o >>= 1) {
        for (int l = 0; l < 32; l++) nv[l] = v[l] + v[l ^ o];
        memcpy(v, nv, sizeof v);
    }
    return cu_rms_scale(v[0], E, eps);
}

/* k_rms_norm: x [T, E], w [E] or NULL -> y [T, E]. */
extern "C" int lethe_cu_host_rms_norm(const float *x, const float *w, float *y, int64_t T, int64_t E, float eps) {
    if (T <= 0 || E <= 0) return -1;
    double ss[CU_NORM_THREADS];
    for (int64_t r = 0; r < T; r++) {
        const float *xr = x + r * E;
        for (int t = 0; t < CU_NORM_THREADS; t++) {
            ss[t] = 0.0;
            for (int64_t i = t; i < E; i += CU_NORM_THREADS) ss[t] = cu_sq_add(ss[t], xr[i]);
        }
        const float scale = host_block_rms_scale(ss, E, eps);
        for (int t = 0; t < CU_NORM_THREADS; t++)
            for (int64_t i = t; i < E; i += CU_NORM_THREADS) y[r * E + i] = cu_rms_apply(xr[i], scale, w, i);
    }
    return 0;
}

/* k_norm_fused: a, b (or NULL) [T, E] -> sum (or NULL), y (or NULL), xq (or NULL). */
extern "C" int lethe_cu_host_norm_fused(const float *a, const float *b, float *sum, const float *w, float *y,
                                        uint8_t *xq, int64_t T, int64_t E, float eps) {
    if (T <= 0 || E <= 0 || E > CU_NORM_MAX_E || (xq && E % 32 != 0) || (!xq && !y)) return -1;
    float *row = (float *)malloc((size_t)cu_norm_pad(E) * sizeof(float));   /* the block's shared memory */
    if (!row) return -1;
    double ss[CU_NORM_THREADS];
    for (int64_t r = 0; r < T; r++) {   /* blockIdx.x */
        const size_t r0 = (size_t)r * (size_t)E;
        for (int64_t i = 0; i < cu_norm_pad(E); i++) row[i] = NAN;   /* poison: an element never staged shows */
        for (int t = 0; t < CU_NORM_THREADS; t++) {   /* phase 1 */
            ss[t] = 0.0;
            for (int64_t i = t; i < E; i += CU_NORM_THREADS) {
                const float v = b ? cu_fadd(a[r0 + i], b[r0 + i]) : a[r0 + i];
                if (sum) sum[r0 + i] = v;
                row[cu_norm_pad(i)] = v;
                ss[t] = cu_sq_add(ss[t], v);
            }
        }
        const float scale = host_block_rms_scale(ss, E, eps);
        if (!xq) {
            for (int t = 0; t < CU_NORM_THREADS; t++)
                for (int64_t i = t; i < E; i += CU_NORM_THREADS) y[r0 + i] = cu_rms_apply(row[cu_norm_pad(i)], scale, w, i);
            continue;
        }
        const int64_t nb = E / 32;
        for (int t = 0; t < CU_NORM_THREADS; t++)   /* phase 2: block k = t, t + 256, ... */
            for (int64_t k = t; k < nb; k += CU_NORM_THREADS) {
                float v[32];
                cu_norm_block(row, k, scale, w, v);
                if (y) memcpy(y + r0 + 32 * k, v, sizeof v);
                cu_q8_quant_block(v, xq + ((size_t)r * (size_t)nb + (size_t)k) * CU_Q8_BLOCK_BYTES);
            }
    }
    free(row);
    return 0;
}

/* k_swiglu: gate, up [n] -> y [n]. */
extern "C" int lethe_cu_host_swiglu(const float *g, const float *u, float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = cu_silu_mul(g[i], u[i]);
    return 0;
}

/* k_swiglu_q8: one thread per block of 32 -> xq [n / 32] blocks, y (or NULL). */
extern "C" int lethe_cu_host_swiglu_q8(const float *g, const float *u, float *y, uint8_t *xq, int64_t n) {
    if (n % 32 != 0 || !xq) return -1;
    for (int64_t k = 0; k < n / 32; k++) {
        float gv[32], uv[32], v[32];
        memcpy(gv, g + 32 * k, sizeof gv);
        memcpy(uv, u + 32 * k, sizeof uv);
        cu_swiglu_block(gv, uv, 0, v);
        if (y) memcpy(y + 32 * k, v, sizeof v);
        cu_q8_quant_block(v, xq + (size_t)k * CU_Q8_BLOCK_BYTES);
    }
    return 0;
}
