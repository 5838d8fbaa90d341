/* test_cuda_host_gemv.c — the CUDA kernels' weight decoding and GEMV, run
 * on the host without a GPU: backends/cuda/hostcheck/k_hostcheck.cu
 * compiles the kernels' own block-reading code (cuda_quant.cuh) and GEMV
 * lane code (cuda_gemv.cuh) for the host, and here they must agree with the
 * CPU backend: dequantized rows exactly; the old GEMV within rounding of a
 * float64 product (every weight read once, by the right lane, against the
 * right activation); the device's q8 activation quantizer and the decode
 * GEMV (k_gemv_q8 / k_gemv_f) with the CPU's bits for quantized types.
 * Builds without CUDA skip with a message; on a GPU, test_backend_ops runs
 * the kernels themselves.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "testutil.h"

#ifdef LETHE_HAVE_CUDA
#include "cpu_kernels.h"
#include "cuda_host_util.h"
#include "dtype.h"

int lethe_cu_host_dequant_row(int wtype, const void *row, int64_t K, float *out);
int lethe_cu_host_gemv(int wtype, const void *w, size_t row_bytes, const float *x, float *y, int64_t N, int64_t K,
                       int64_t T);

static const lethe_dtype k_types[] = {LETHE_F32, LETHE_F16, LETHE_BF16, LETHE_Q4_0,
                                      LETHE_Q4_1, LETHE_Q5_0, LETHE_Q5_1, LETHE_Q8_0};

static void test_dequant_rows(void **state) {
    (void)state;
    const int64_t N = 5, K = 256;
    for (size_t i = 0; i < LETHE_ARRAY_SIZE(k_types); i++) {
        const lethe_dtype t = k_types[i];
        uint8_t *w = tu_make_rows(t, N, K, 40 + i, 0);
        float want[256], got[256];
        for (int64_t r = 0; r < N; r++) {
            const uint8_t *row = w + (size_t)r * lethe_row_size(t, K);
            lethe_dtype_get(t)->to_f32(row, want, K);
            assert_int_equal(lethe_cu_host_dequant_row((int)t, row, K, got), 0);
            for (int64_t k = 0; k < K; k++)
                if (got[k] != want[k])
                    fail_msg("%s row %lld elem %lld: cuda %g, cpu %g", lethe_dtype_name(t), (long long)r, (long long)k,
                             got[k], want[k]);
        }
        free(w);
    }
}

static void test_gemv_lanes(void **state) {
    (void)state;
    const int64_t N = 9, K = 576;   /* 18 blocks: lanes wrap around unevenly */
    const int64_t Ts[] = {1, 3, 8};
    for (size_t i = 0; i < LETHE_ARRAY_SIZE(k_types); i++) {
        const lethe_dtype t = k_types[i];
        uint8_t *w = tu_make_rows(t, N, K, 90 + i, 0);
        for (size_t ti = 0; ti < LETHE_ARRAY_SIZE(Ts); ti++) {
            const int64_t T = Ts[ti];
            float *x = malloc((size_t)(T * K) * sizeof(float)), *y = malloc((size_t)(T * N) * sizeof(float));
            float *wf = malloc((size_t)K * sizeof(float));
            double *ref = malloc((size_t)(T * N) * sizeof(double));
            tu_rand_fill(x, (size_t)(T * K), 7 + ti);
            for (int64_t r = 0; r < N; r++) {
                lethe_dtype_get(t)->to_f32(w + (size_t)r * lethe_row_size(t, K), wf, K);
                for (int64_t tt = 0; tt < T; tt++) {
                    double s = 0;
                    for (int64_t k = 0; k < K; k++) s += (double)wf[k] * x[tt * K + k];
                    ref[tt * N + r] = s;
                }
            }
            assert_int_equal(lethe_cu_host_gemv((int)t, w, lethe_row_size(t, K), x, y, N, K, T), 0);
            double num = 0, den = 0;
            for (int64_t j = 0; j < T * N; j++) {
                num += (y[j] - ref[j]) * (y[j] - ref[j]);
                den += ref[j] * ref[j];
            }
            if (!(num / den < 1e-10))
                fail_msg("%s T=%lld: NMSE %.3g against the float64 product", lethe_dtype_name(t), (long long)T,
                         num / den);
            free(x);
            free(y);
            free(wf);
            free(ref);
        }
        free(w);
    }
}

int lethe_cu_host_q8_quant(const float *x, int64_t K, uint8_t *out);
int lethe_cu_host_gemv_new(int wtype, const void *w, size_t row_bytes, const float *x, float *y, int64_t N, int64_t K,
                           int64_t T, int variant);

/* The device's activation quantizer (k_quant_q8) gives the CPU backend's q8
 * blocks bit for bit: d and s (f16 values in f32), and every code, with the
 * device's per-part permutation undone. Random rows plus the edges: an all-
 * zero block, exact .5 ties of x * 127 / amax (nearest even), a block whose
 * s overflows f16, tiny values. */
static void test_q8_quant(void **state) {
    (void)state;
    const int64_t K = 32 * 64;
    float *x = malloc((size_t)K * sizeof(float));
    assert_non_null(x);
    tu_rand_fill(x, (size_t)K, 1234);
    for (int j = 0; j < 32; j++) x[32 + j] = 0.0f;                       /* block 1: zeros */
    for (int j = 0; j < 32; j++) x[64 + j] = (float)(j - 16) + 0.5f;     /* block 2: ties (amax 16.5) */
    x[64 + 31] = 127.0f;                                                   /* id = 1: x * id = x exactly */
    for (int j = 0; j < 32; j++) x[96 + j] = 4000.0f + (float)j;         /* block 3: s = d * sum overflows f16 */
    for (int j = 0; j < 32; j++) x[128 + j] = 1e-30f * (float)(j + 1);   /* block 4: tiny (d rounds to f16 0) */
    lethe_cpu_q8a *cpu = malloc((size_t)(K / 32) * sizeof *cpu);
    uint8_t *dev = malloc((size_t)(K / 32) * 64);
    assert_non_null(cpu);
    assert_non_null(dev);
    lethe_cpu_quantize_q8a(x, cpu, K);
    assert_int_equal(lethe_cu_host_q8_quant(x, K, dev), 0);
    /* device block: 4 parts of 16 bytes {d, s, codes 4p..4p+3, codes 16+4p..16+4p+3} */
    for (int64_t b = 0; b < K / 32; b++) {
        const uint8_t *db = dev + 64 * b;
        for (int p = 0; p < 4; p++) {
            float ds[2];
            memcpy(ds, db + 16 * p, sizeof ds);
            if (memcmp(&ds[0], &cpu[b].d, 4) || memcmp(&ds[1], &cpu[b].s, 4))
                fail_msg("block %lld part %d: device d %g s %g, cpu d %g s %g", (long long)b, p, ds[0], ds[1], cpu[b].d,
                         cpu[b].s);
        }
        for (int e = 0; e < 32; e++) {
            const int at = 16 * ((e & 15) / 4) + 8 + (e >= 16 ? 4 : 0) + e % 4;
            if ((int8_t)db[at] != cpu[b].qs[e])
                fail_msg("block %lld elem %d: device %d, cpu %d", (long long)b, e, (int8_t)db[at], cpu[b].qs[e]);
        }
    }
    free(x);
    free(cpu);
    free(dev);
}

/* The new decode GEMV (k_gemv_q8 / k_gemv_f, their staging and lane
 * mapping run warp by warp) against the CPU backend's own dot kernels, for
 * every type, T = 1..8, odd row counts (a last warp of 1..7 rows), K that
 * ends in a partial chunk (q4_*: 32 blocks, q8_0: 16), rows that do not
 * start on 16 bytes (K = 576 in q4_0: 324-byte rows) and, for the quantized
 * types, a matrix whose first byte is not 16-byte aligned (the staging's
 * byte-wise edge copies). Quantized types: the CPU's bits, every (row,
 * token) (the same q8 activations, integer dots and float order); float
 * types: NMSE < 1e-9 (the CPU's float order depends on its build). The
 * quantized types run both lane layouts (4 lanes per row; "wide": 2). */
static void test_gemv_new(void **state) {
    (void)state;
    static const struct { int64_t N, K; } shapes[] = {{1, 32}, {7, 576}, {13, 1280}, {37, 1056}, {9, 4096}};
    for (size_t i = 0; i < LETHE_ARRAY_SIZE(k_types); i++) {
        const lethe_dtype t = k_types[i];
        const lethe_cpu_type_kernels *kk = lethe_cpu_kernels_for(t);
        assert_non_null(kk);
        const bool quant = kk->act == LETHE_CPU_ACT_Q8A;
        for (size_t si = 0; si < LETHE_ARRAY_SIZE(shapes); si++) {
            const int64_t N = shapes[si].N, K = shapes[si].K;
            const size_t rb = lethe_row_size(t, K);
            uint8_t *w = tu_make_rows(t, N, K, 300 + 17 * i + si, 0);
            /* the same rows 2 bytes into a buffer (quantized types only) */
            uint8_t *wbuf = malloc(rb * (size_t)N + 16), *wmis = wbuf + 2;
            assert_non_null(wbuf);
            memcpy(wmis, w, rb * (size_t)N);
            for (int64_t T = 1; T <= 8; T++) {
                float *x = malloc((size_t)(T * K) * sizeof(float)), *y = malloc((size_t)(T * N) * sizeof(float));
                float *want = malloc((size_t)(T * N) * sizeof(float));
                uint8_t *act = malloc((size_t)T * lethe_cpu_act_row_size(kk->act, K));
                assert_true(x && y && want && act);
                tu_rand_fill(x, (size_t)(T * K), 500 + (uint64_t)T + 31 * si);
                const size_t as = lethe_cpu_act_row_size(kk->act, K);
                for (int64_t tt = 0; tt < T; tt++) {
                    const void *xa = x + tt * K;
                    if (quant) {
                        lethe_cpu_quantize_q8a(x + tt * K, (lethe_cpu_q8a *)(act + (size_t)tt * as), K);
                        xa = act + (size_t)tt * as;
                    }
                    for (int64_t n0 = 0; n0 < N; n0 += 4) {   /* as cpu_matmul.c: 4 rows per call */
                        float out[4];
                        const int nr = (int)(N - n0 < 4 ? N - n0 : 4);
                        kk->dot(K, w + (size_t)n0 * rb, rb, nr, xa, out);
                        memcpy(want + tt * N + n0, out, (size_t)nr * sizeof(float));
                    }
                }
                for (int pass = 0; pass < (quant ? 4 : 1); pass++) {
                    const int mis = pass & 1, variant = pass >> 1 ? LETHE_CU_GEMV_WIDE : LETHE_CU_GEMV_NEW;
                    for (int64_t j = 0; j < T * N; j++) y[j] = NAN;   /* poison: every output written */
                    assert_int_equal(lethe_cu_host_gemv_new((int)t, mis ? wmis : w, rb, x, y, N, K, T, variant), 0);
                    if (quant) {
                        for (int64_t j = 0; j < T * N; j++)
                            if (memcmp(&y[j], &want[j], sizeof(float)))
                                fail_msg("%s N=%lld K=%lld T=%lld%s%s: token %lld row %lld: cuda %.9g, cpu %.9g",
                                         lethe_dtype_name(t), (long long)N, (long long)K, (long long)T,
                                         mis ? " (misaligned matrix)" : "", variant ? " (wide)" : "",
                                         (long long)(j / N), (long long)(j % N), y[j], want[j]);
                    } else {
                        double num = 0, den = 0;
                        for (int64_t j = 0; j < T * N; j++) {
                            if (isnan(y[j])) fail_msg("%s: output %lld not written", lethe_dtype_name(t), (long long)j);
                            num += ((double)y[j] - want[j]) * ((double)y[j] - want[j]);
                            den += (double)want[j] * want[j];
                        }
                        if (!(num / den < 1e-9))
                            fail_msg("%s N=%lld K=%lld T=%lld: NMSE %.3g against the CPU", lethe_dtype_name(t),
                                     (long long)N, (long long)K, (long long)T, num / den);
                    }
                }
                free(x);
                free(y);
                free(want);
                free(act);
            }
            free(w);
            free(wbuf);
        }
    }
}
#else
static void test_dequant_rows(void **state) {
    (void)state;
    print_message("this build has no CUDA backend: skipped\n");
    skip();
}
static void test_gemv_lanes(void **state) { test_dequant_rows(state); }
static void test_q8_quant(void **state) { test_dequant_rows(state); }
static void test_gemv_new(void **state) { test_dequant_rows(state); }
#endif

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dequant_rows),
        cmocka_unit_test(test_gemv_lanes),
        cmocka_unit_test(test_q8_quant),
        cmocka_unit_test(test_gemv_new),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
