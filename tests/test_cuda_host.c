/* test_cuda_host.c — the CUDA kernels' weight decoding, checked without a
 * GPU. backends/cuda/hostcheck/k_hostcheck.cu compiles the kernels' own
 * block-reading code (cuda_quant.cuh) and GEMV lane code (cuda_gemv.cuh)
 * for the host; here they must agree with the CPU backend: dequantized
 * rows exactly, GEMV results within rounding (every weight read once, by the
 * right lane, against the right activation).
 * Builds without CUDA skip with a message; on a GPU, test_backend_ops runs
 * the kernels themselves.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "dtype.h"
#include "testutil.h"

#ifdef LETHE_HAVE_CUDA
int lethe_cu_host_dequant_row(int wtype, const void *row, int64_t K, float *out);
int lethe_cu_host_gemv(int wtype, const void *w, size_t row_bytes, const float *x, float *y, int64_t N, int64_t K,
                       int64_t T);

static const lethe_dtype k_types[] = {LETHE_F32, LETHE_F16, LETHE_BF16, LETHE_Q4_0,
                                      LETHE_Q4_1, LETHE_Q5_0, LETHE_Q5_1, LETHE_Q8_0};

/* N rows of K random values in dtype t */
static uint8_t *make_rows(lethe_dtype t, int64_t N, int64_t K, uint64_t seed) {
    const size_t rs = lethe_row_size(t, K);
    uint8_t *w = malloc(rs * (size_t)N);
    float *x = malloc((size_t)K * sizeof(float));
    assert_non_null(w);
    assert_non_null(x);
    for (int64_t r = 0; r < N; r++) {
        tu_rand_fill(x, (size_t)K, seed + (uint64_t)r);
        lethe_dtype_get(t)->from_f32(x, w + (size_t)r * rs, K);
    }
    free(x);
    return w;
}

static void test_dequant_rows(void **state) {
    (void)state;
    const int64_t N = 5, K = 256;
    for (size_t i = 0; i < LETHE_ARRAY_SIZE(k_types); i++) {
        const lethe_dtype t = k_types[i];
        uint8_t *w = make_rows(t, N, K, 40 + i);
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
        uint8_t *w = make_rows(t, N, K, 90 + i);
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
#else
static void test_dequant_rows(void **state) {
    (void)state;
    print_message("this build has no CUDA backend: skipped\n");
    skip();
}
static void test_gemv_lanes(void **state) { test_dequant_rows(state); }
#endif

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dequant_rows),
        cmocka_unit_test(test_gemv_lanes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
