/* test_cuda_emu.c — the CUDA kernels themselves (backends/cuda/k_*.cu, the
 * real sources) on the CPU emulator of the device (backends/cuda/emu/,
 * docs/CUDA.md "The CPU emulator"): every CUDA thread a fiber, barriers,
 * warp shuffles, shared memory and cp.async waits as the device has them.
 * Each case runs through its C-ABI launcher (cuda_kernels.h) under three
 * schedule orders (threads forward, reverse, seeded random between
 * barriers): the outputs must be the same bits under all three (else a
 * shared-memory race or a missing barrier) and agree with the CPU backend
 * (q8 GEMV: bit for bit). Attention, KV_STORE and QUEST run through the
 * whole emulated module instead (test_backend_ops_cuda_emu).
 * The emulator's own checks are tested on broken kernels
 * (cuda_emu_selftest.cc): a thread leaving before a barrier, divergent
 * barriers, a race, a cp.async read before its wait, a shuffle with an
 * exited lane, launches a device refuses.
 * Skips when the build has no emulator (no CUDA headers, TSan builds). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "dtype.h"
#include "testutil.h"

#ifdef LETHE_HAVE_CUDA_EMU
#include "cpu_kernels.h"
#include "cuda_kernels.h"
#include "cuda_kv_move.h"
#include "cuda_topk.h"
#include "emu_api.h"

int lethe_emu_selftest(int which, void *a, void *b, void *c);
int lethe_emu_selftest_mma(int threads, int leave, const float *a, const float *b, float *c);

#define N_ORDERS 3
static void set_order(int o) { lethe_cu_emu_set_order(o, 12345); }
static const char *order_name(int o) { return o == 0 ? "forward" : o == 1 ? "reverse" : "random"; }

/* no kernel failure since the last check */
static void no_emu_error(const char *what) {
    char msg[1024];
    const int e = lethe_cu_emu_take_error(msg, sizeof msg);
    if (e) fail_msg("%s: %s", what, msg);
}

static void same_bits(const void *a, const void *b, size_t n, const char *what, int order) {
    if (memcmp(a, b, n)) fail_msg("%s: the %s order gives other bits than forward (a race?)", what, order_name(order));
}

static double nmse(const float *ref, const float *got, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        if (isnan(got[i]) != isnan(ref[i])) return INFINITY;
        if (isnan(ref[i])) continue;
        num += ((double)got[i] - ref[i]) * ((double)got[i] - ref[i]);
        den += (double)ref[i] * ref[i];
    }
    return den > 0 ? num / den : num;
}

static const lethe_dtype k_types[] = {LETHE_F32, LETHE_F16, LETHE_BF16, LETHE_Q4_0,
                                      LETHE_Q4_1, LETHE_Q5_0, LETHE_Q5_1, LETHE_Q8_0};

static uint8_t *make_rows(lethe_dtype t, int64_t N, int64_t K, uint64_t seed) {
    const size_t rs = lethe_row_size(t, K);
    /* exactly the rows' bytes: under ASan a kernel reading past the matrix is reported */
    void *wv = NULL;
    assert_int_equal(posix_memalign(&wv, 64, rs * (size_t)N), 0);
    uint8_t *w = wv;
    float *x = malloc((size_t)K * sizeof(float));
    assert_true(w && x);
    for (int64_t r = 0; r < N; r++) {
        tu_rand_fill(x, (size_t)K, seed + (uint64_t)r);
        lethe_dtype_get(t)->from_f32(x, w + (size_t)r * rs, K);
    }
    free(x);
    return w;
}

/* ------------------------------------------------------- the emulator */

static void test_selftest(void **state) {
    (void)state;
    char msg[1024];
    int out[256], ref[256];
    set_order(LETHE_CU_EMU_FORWARD);
    /* a thread that leaves before a barrier: a hang on the GPU, a named failure here */
    assert_int_not_equal(lethe_emu_selftest(0, out, NULL, NULL), 0);
    assert_int_not_equal(lethe_cu_emu_take_error(msg, sizeof msg), 0);
    assert_non_null(strstr(msg, "k_exit_before_barrier"));
    assert_non_null(strstr(msg, "thread (5,0,0) exited"));
    /* barriers on two source lines */
    lethe_emu_selftest(1, out, NULL, NULL);
    assert_int_not_equal(lethe_cu_emu_take_error(msg, sizeof msg), 0);
    assert_non_null(strstr(msg, "divergent barriers"));
    /* a shuffle whose mask names an exited lane */
    lethe_emu_selftest(5, out, NULL, NULL);
    assert_int_not_equal(lethe_cu_emu_take_error(msg, sizeof msg), 0);
    assert_non_null(strstr(msg, "lane 3 exited"));
    /* launches a device refuses */
    assert_int_equal(lethe_emu_selftest(7, out, NULL, NULL), cudaErrorInvalidConfiguration);
    assert_int_equal(lethe_emu_selftest(8, out, NULL, NULL), cudaErrorInvalidConfiguration);
    no_emu_error("bad launches");
    /* a race shows as an order dependence; the same kernel with its barrier does not */
    memset(ref, 0, sizeof ref);
    lethe_emu_selftest(2, ref, NULL, NULL);
    set_order(LETHE_CU_EMU_REVERSE);
    lethe_emu_selftest(2, out, NULL, NULL);
    assert_memory_not_equal(ref, out, 64 * sizeof(int));
    for (int o = 0; o < N_ORDERS; o++) {
        set_order(o);
        lethe_emu_selftest(3, out, NULL, NULL);
        for (int i = 0; i < 64; i++) assert_int_equal(out[i], (i + 1) % 64 + 1);
    }
    no_emu_error("race kernels");
    /* cp.async: the destination changes at the wait, not at the copy */
    uint8_t src[512], before[512], after[512];
    for (int i = 0; i < 512; i++) src[i] = (uint8_t)(i * 7 + 1);
    lethe_emu_selftest(4, src, before, after);
    for (int i = 0; i < 512; i++) assert_int_equal(before[i], 0xAB);
    assert_memory_equal(after, src, 512);
    /* shared memory a block never wrote reads as poison, not the previous block's values */
    int sh[128];
    set_order(LETHE_CU_EMU_FORWARD);
    lethe_emu_selftest(9, sh, NULL, NULL);
    no_emu_error("uninitialized shared memory");
    for (int i = 0; i < 64; i++) {
        assert_int_equal(sh[i], 7);
        assert_int_equal(sh[64 + i], -1);
    }
    /* so does dynamic shared memory */
    lethe_emu_selftest(11, sh, NULL, NULL);
    no_emu_error("uninitialized dynamic shared memory");
    for (int i = 0; i < 64; i++) {
        assert_int_equal(sh[i], 9);
        assert_int_equal(sh[64 + i], -1);
    }
    /* static shared memory over 48 KiB fails the launch (where the emulator measures it) */
    if (lethe_cu_emu_checks_shared_size()) {
        lethe_emu_selftest(10, sh, NULL, NULL);
        assert_int_not_equal(lethe_cu_emu_take_error(msg, sizeof msg), 0);
        assert_non_null(strstr(msg, "48 KiB"));
    }
    /* collectives: sums, ballot, broadcast, barrier count, under every order */
    for (int o = 0; o < N_ORDERS; o++) {
        set_order(o);
        lethe_emu_selftest(6, out, NULL, NULL);
        unsigned bal = 0;
        for (int l = 0; l < 32; l++) bal |= (l % 3 == 0 ? 1u : 0u) << l;
        for (int i = 0; i < 64; i++) {
            assert_int_equal(out[4 * i], 528);
            if (i % 32 == 0) assert_int_equal(out[4 * i + 1], 528);
            assert_int_equal(out[4 * i + 2], 70);
            assert_int_equal(out[4 * i + 3], (int)bal + 13);
        }
    }
    no_emu_error("collectives");
    /* mma.sync m16n8k16: two warps, each D = A B + C on small integers
     * (exact in f16 and f32), every order; a warp with a lane gone, or not
     * whole in the block, fails like any collective */
    float ma[512], mb[256], mc[256], md[256];
    for (int i = 0; i < 512; i++) ma[i] = (float)((i * 7 + 3) % 11) - 5.0f;
    for (int i = 0; i < 256; i++) mb[i] = (float)((i * 5 + 1) % 9) - 4.0f;
    for (int o = 0; o < N_ORDERS; o++) {
        set_order(o);
        for (int i = 0; i < 256; i++) mc[i] = (float)(i % 13);
        assert_int_equal(lethe_emu_selftest_mma(64, -1, ma, mb, mc), 0);
        no_emu_error("mma");
        for (int w = 0; w < 2; w++)
            for (int m = 0; m < 16; m++)
                for (int n = 0; n < 8; n++) {
                    float d = (float)((128 * w + 8 * m + n) % 13);
                    for (int k = 0; k < 16; k++) d += ma[256 * w + 16 * m + k] * mb[128 * w + 8 * k + n];
                    md[128 * w + 8 * m + n] = d;
                }
        for (int i = 0; i < 256; i++) assert_float_equal(mc[i], md[i], 0.0f);
    }
    set_order(LETHE_CU_EMU_FORWARD);
    lethe_emu_selftest_mma(64, 35, ma, mb, mc);
    assert_int_not_equal(lethe_cu_emu_take_error(msg, sizeof msg), 0);
    assert_non_null(strstr(msg, "lane 3 exited"));
    assert_non_null(strstr(msg, "mma.sync"));
    lethe_emu_selftest_mma(48, -1, ma, mb, mc);
    assert_int_not_equal(lethe_cu_emu_take_error(msg, sizeof msg), 0);
    assert_non_null(strstr(msg, "lane 16 is not in the block"));
}

/* ------------------------------------------------------ elementwise */

static void test_elementwise(void **state) {
    (void)state;
    const int64_t T = 3, E = 600, n = T * E;
    float *x = malloc(n * 4), *b = malloc(n * 4), *w = malloc(E * 4), *y = malloc(n * 4), *y0 = malloc(n * 4);
    float *ref = malloc(n * 4);
    assert_true(x && b && w && y && y0 && ref);
    tu_rand_fill(x, n, 1);
    tu_rand_fill(b, n, 2);
    tu_rand_fill(w, E, 3);
    for (int op = 0; op < 5; op++) {
        /* 0 add, 1 mul broadcast, 2 swiglu, 3 rms_norm, 4 rms_norm without weight */
        for (int64_t t = 0; t < T; t++) {
            double ss = 0;
            for (int64_t i = 0; i < E; i++) ss += (double)x[t * E + i] * x[t * E + i];
            const float sc = (float)(1.0 / sqrt(ss / (double)E + 1e-6));
            for (int64_t i = 0; i < E; i++) {
                const int64_t j = t * E + i;
                ref[j] = op == 0 ? x[j] + b[j] : op == 1 ? x[j] * b[i] : op == 2 ? x[j] / (1.0f + expf(-x[j])) * b[j]
                       : op == 3 ? x[j] * sc * w[i] : x[j] * sc;
            }
        }
        for (int o = 0; o < N_ORDERS; o++) {
            set_order(o);
            for (int64_t j = 0; j < n; j++) y[j] = NAN;
            cudaError_t e = cudaSuccess;
            if (op == 0) e = lethe_cu_binary(0, x, b, y, T, E, 0, 0);
            else if (op == 1) e = lethe_cu_binary(1, x, b, y, T, E, 1, 0);
            else if (op == 2) e = lethe_cu_swiglu(x, b, y, n, 0);
            else e = lethe_cu_rms_norm(x, op == 3 ? w : NULL, y, T, E, 1e-6f, 0);
            assert_int_equal(e, cudaSuccess);
            no_emu_error("elementwise");
            if (o == 0) {
                memcpy(y0, y, n * 4);
                const double err = nmse(ref, y, n);
                if (!(err <= (op >= 3 ? 1e-13 : 0.0))) fail_msg("elementwise op %d: NMSE %g", op, err);
            } else {
                same_bits(y0, y, n * 4, "elementwise", o);
            }
        }
    }
    free(x); free(b); free(w); free(y); free(y0); free(ref);
}

/* ROPE (norm and neox, partial rotation, borrowed channel) against the
 * CPU's formula: angle and sin/cos in double, products rounded before the sum */
static void test_rope(void **state) {
    (void)state;
    const int64_t T = 3, H = 4, D = 64;
    const int64_t n = T * H * D;
    float *x = malloc(n * 4), *y = malloc(n * 4), *y0 = malloc(n * 4), *ref = malloc(n * 4);
    double invf[64];
    int32_t pos[3] = {0, 17, 100003};
    assert_true(x && y && y0 && ref);
    tu_rand_fill(x, n, 9);
    for (int neox = 0; neox < 2; neox++)
        for (int nr = 32; nr <= 64; nr += 32)
            for (int borrow = 0; borrow <= 2; borrow += 2) {
                const int half = nr / 2;
                for (int i = 0; i < half; i++) invf[i] = pow(10000.0, -2.0 * i / nr);
                for (int64_t r = 0; r < T * H; r++) {
                    const int64_t t = r / H, h = r % H;
                    const bool bw = borrow > 0 && h % borrow == 0;
                    const float *s = x + r * D;
                    float *d = ref + r * D;
                    for (int64_t i = 0; i < D; i++) d[i] = s[i];
                    for (int i = 0; i < half; i++) {
                        const double a = (double)pos[t] * invf[i];
                        const float cs = (float)cos(a), sn = (float)sin(a);
                        const int i0 = neox ? i : 2 * i, i1 = neox ? i + half : 2 * i + 1;
                        const float x0 = bw && i0 == D - 1 ? 0.0f : s[i0], x1 = bw && i1 == D - 1 ? 0.0f : s[i1];
                        const float p0 = x0 * cs, p1 = x1 * sn, p2 = x0 * sn, p3 = x1 * cs;
                        d[i0] = p0 - p1;
                        d[i1] = p2 + p3;
                    }
                    if (bw) d[D - 1] = 0.0f;
                }
                for (int o = 0; o < N_ORDERS; o++) {
                    set_order(o);
                    for (int64_t j = 0; j < n; j++) y[j] = NAN;
                    assert_int_equal(lethe_cu_rope(x, y, T, H, D, nr, neox, pos, invf, borrow, 0), cudaSuccess);
                    no_emu_error("rope");
                    if (o == 0) {
                        memcpy(y0, y, n * 4);
                        for (int64_t j = 0; j < n; j++)
                            if (memcmp(&y[j], &ref[j], 4))
                                fail_msg("rope neox=%d n_rot=%d borrow=%d: element %lld %.9g, want %.9g", neox, nr,
                                         borrow, (long long)j, y[j], ref[j]);
                    } else {
                        same_bits(y0, y, n * 4, "rope", o);
                    }
                }
            }
    free(x); free(y); free(y0); free(ref);
}

/* DMS_DECISION: the three modes against the CPU's rules (forced: its hash) */
static void test_dms_decision(void **state) {
    (void)state;
    const int T = 5, Hkv = 3, G = 2, D = 32;
    float *q = malloc((size_t)T * Hkv * G * D * 4), xa[5 * 3], out[5 * 3], ref[5 * 3];
    int32_t pos[5] = {0, 1, 77, 1000, 65536};
    assert_non_null(q);
    tu_rand_fill(q, (size_t)T * Hkv * G * D, 4);
    tu_rand_fill(xa, (size_t)T * Hkv, 5);
    for (int mode = 0; mode < 3; mode++)
        for (int per_layer = 0; per_layer < 2; per_layer++) {
            const float scale = 3.5f, offset = 0.25f, rate = 0.4f;
            for (int t = 0; t < T; t++)
                for (int h = 0; h < Hkv; h++) {
                    const int hs = per_layer ? 0 : h;
                    float v;
                    if (mode == 2) v = lethe_dms_forced_logit(pos[t], 3, hs, rate);
                    else if (mode == 0) {
                        const float p = scale * q[((size_t)t * Hkv * G + (size_t)hs * G) * D + D - 1];
                        v = p - offset;
                    } else {
                        const float p = scale * xa[t * Hkv + hs];
                        v = p - offset;
                    }
                    ref[t * Hkv + h] = v;
                }
            for (int o = 0; o < N_ORDERS; o++) {
                set_order(o);
                for (int i = 0; i < T * Hkv; i++) out[i] = NAN;
                assert_int_equal(lethe_cu_dms_decision(mode, mode == 0 ? q : xa, Hkv, D, out, T, Hkv, G, per_layer, scale,
                                                       offset, rate, 3, pos, 0),
                                 cudaSuccess);
                no_emu_error("dms_decision");
                assert_memory_equal(out, ref, sizeof ref);
            }
        }
    free(q);
}

/* GET_ROWS and the prefill conversions against the CPU's dequantization */
static void test_rows_convert(void **state) {
    (void)state;
    const int64_t Nw = 11, E = 96, R = 5;
    int32_t ids[5] = {3, 0, 10, 3, 7};
    float *out = malloc(R * E * 4), *ref = malloc(Nw * E * 4), *x = malloc(Nw * E * 4);
    uint16_t *h = malloc(Nw * E * 2), *h0 = malloc(Nw * E * 2);
    assert_true(out && ref && h && h0 && x);
    for (size_t ti = 0; ti < LETHE_ARRAY_SIZE(k_types); ti++) {
        const lethe_dtype t = k_types[ti];
        const size_t rb = lethe_row_size(t, E);
        uint8_t *w = make_rows(t, Nw, E, 40 + ti);
        for (int64_t r = 0; r < Nw; r++) lethe_cpu_dequant_row(t, w + r * rb, ref + r * E, E);
        for (int o = 0; o < N_ORDERS; o++) {
            set_order(o);
            int err = 0;
            for (int64_t j = 0; j < R * E; j++) out[j] = NAN;
            assert_int_equal(lethe_cu_get_rows(t, w, rb, Nw, E, ids, R, out, &err, 0), cudaSuccess);
            no_emu_error("get_rows");
            assert_int_equal(err, 0);
            for (int64_t r = 0; r < R; r++)
                for (int64_t i = 0; i < E; i++)
                    if (out[r * E + i] != ref[ids[r] * E + i])   /* values: q4_0 gives -0 where the CPU has +0 */
                        fail_msg("get_rows %s row %lld element %lld: %.9g, cpu %.9g", lethe_dtype_name(t), (long long)r,
                                 (long long)i, out[r * E + i], ref[ids[r] * E + i]);
            /* an id outside the weight: a zero row and the error flag */
            int32_t bad[2] = {1, 11};
            assert_int_equal(lethe_cu_get_rows(t, w, rb, Nw, E, bad, 2, out, &err, 0), cudaSuccess);
            assert_int_equal(err, 1);
            for (int64_t i = 0; i < E; i++) assert_true(out[E + i] == 0.0f);
            /* rows [2, 9) to f16 (bf16 for bf16 weights) */
            const int bf = t == LETHE_BF16;
            assert_int_equal(lethe_cu_dequant_rows(t, w, rb, 2, 9, E, h, bf, 0), cudaSuccess);
            no_emu_error("dequant_rows");
            for (int64_t j = 0; j < 7 * E; j++) {
                const float v = ref[2 * E + j];
                const uint16_t want = bf ? lethe_f32_to_bf16(v) : lethe_f32_to_f16(v);
                if (h[j] != want && !(v == 0.0f && (h[j] & 0x7FFFu) == 0)) fail_msg("dequant_rows %s element %lld", lethe_dtype_name(t), (long long)j);
            }
        }
        free(w);
    }
    tu_rand_fill(x, Nw * E, 77);
    for (int bf = 0; bf < 2; bf++)
        for (int o = 0; o < N_ORDERS; o++) {
            set_order(o);
            assert_int_equal(lethe_cu_f32_to_half(x, h, Nw * E, bf, 0), cudaSuccess);
            no_emu_error("f32_to_half");
            for (int64_t j = 0; j < Nw * E; j++) assert_int_equal(h[j], bf ? lethe_f32_to_bf16(x[j]) : lethe_f32_to_f16(x[j]));
        }
    free(out); free(ref); free(h); free(h0); free(x);
}

/* ------------------------------------------------------------- GEMV */

/* Decode GEMV, every weight type, T = 1..8, the three kernels: the q8 path
 * (new, wide) must be the CPU backend's bits (its own q8 activations and
 * dot kernels); the float kernel and the old one agree to rounding. */
static void gemv_case(lethe_dtype t, int64_t N, int64_t K, int64_t T, int orders, uint64_t seed) {
    const lethe_cpu_type_kernels *kk = lethe_cpu_kernels_for(t);
    assert_non_null(kk);
    const bool quant = kk->act == LETHE_CPU_ACT_Q8A;
    const size_t rb = lethe_row_size(t, K), as = lethe_cpu_act_row_size(kk->act, K);
    uint8_t *w = make_rows(t, N, K, seed);
    void *xv = NULL;
    assert_int_equal(posix_memalign(&xv, 64, (size_t)(T * K) * 4), 0);
    float *x = xv, *y = malloc(T * N * 4), *y0 = malloc(T * N * 4);
    float *want = malloc(T * N * 4), *dq = malloc(N * K * 4);
    uint8_t *act = malloc((size_t)T * as);
    double *exact = malloc(T * N * sizeof(double));
    assert_true(x && y && y0 && want && act && dq && exact);
    tu_rand_fill(x, (size_t)(T * K), seed + 1000);
    for (int64_t r = 0; r < N; r++) lethe_cpu_dequant_row(t, w + r * rb, dq + r * K, K);
    for (int64_t tt = 0; tt < T; tt++) {
        const void *xa = x + tt * K;
        if (quant) {
            lethe_cpu_quantize_q8a(x + tt * K, (lethe_cpu_q8a *)(act + (size_t)tt * as), K);
            xa = act + (size_t)tt * as;
        }
        for (int64_t n0 = 0; n0 < N; n0 += 4) {
            float o4[4];
            const int nr = (int)(N - n0 < 4 ? N - n0 : 4);
            kk->dot(K, w + (size_t)n0 * rb, rb, nr, xa, o4);
            memcpy(want + tt * N + n0, o4, (size_t)nr * 4);
        }
        for (int64_t r = 0; r < N; r++) {
            double s = 0;
            for (int64_t k = 0; k < K; k++) s += (double)dq[r * K + k] * x[tt * K + k];
            exact[tt * N + r] = s;
        }
    }
    const int variants[3] = {LETHE_CU_GEMV_NEW, LETHE_CU_GEMV_WIDE, LETHE_CU_GEMV_OLD};
    for (int vi = 0; vi < (quant ? 3 : 2); vi++) {
        const int variant = quant ? variants[vi] : vi == 0 ? LETHE_CU_GEMV_NEW : LETHE_CU_GEMV_OLD;
        const size_t ab = lethe_cu_gemv_act_bytes(t, K, T, variant);
        void *scratch = NULL;
        if (ab) assert_int_equal(posix_memalign(&scratch, 64, ab), 0);
        for (int o = 0; o < orders; o++) {
            set_order(o);
            for (int64_t j = 0; j < T * N; j++) y[j] = NAN;
            assert_int_equal(lethe_cu_gemv(t, w, rb, x, y, N, K, T, variant, scratch, 0), cudaSuccess);
            no_emu_error("gemv");
            if (o > 0) {
                same_bits(y0, y, T * N * 4, "gemv", o);
                continue;
            }
            memcpy(y0, y, T * N * 4);
            if (quant && variant != LETHE_CU_GEMV_OLD) {
                for (int64_t j = 0; j < T * N; j++)
                    if (memcmp(&y[j], &want[j], 4))
                        fail_msg("gemv %s N=%lld K=%lld T=%lld variant %d: token %lld row %lld: %.9g, cpu %.9g",
                                 lethe_dtype_name(t), (long long)N, (long long)K, (long long)T, variant,
                                 (long long)(j / N), (long long)(j % N), y[j], want[j]);
            } else {
                double num = 0, den = 0;
                for (int64_t j = 0; j < T * N; j++) {
                    if (isnan(y[j])) fail_msg("gemv %s: output %lld not written", lethe_dtype_name(t), (long long)j);
                    num += (y[j] - exact[j]) * (y[j] - exact[j]);
                    den += exact[j] * exact[j];
                }
                if (!(num / den < 1e-10))
                    fail_msg("gemv %s N=%lld K=%lld T=%lld variant %d: NMSE %g", lethe_dtype_name(t), (long long)N,
                             (long long)K, (long long)T, variant, num / den);
            }
        }
        free(scratch);
    }
    free(w); free(x); free(y); free(y0); free(want); free(act); free(dq); free(exact);
}

static void test_gemv(void **state) {
    (void)state;
    /* partial warps and CTAs (N = 7, 37), rows off 16 bytes (K = 576 in q4_0),
     * a partial last chunk (K = 1056): every order for T = 1, 3, 8; the rest forward */
    static const struct { int64_t N, K; } shapes[] = {{7, 576}, {37, 1056}, {9, 64}};
    for (size_t i = 0; i < LETHE_ARRAY_SIZE(k_types); i++)
        for (size_t si = 0; si < LETHE_ARRAY_SIZE(shapes); si++)
            for (int64_t T = 1; T <= 8; T++)
                gemv_case(k_types[i], shapes[si].N, shapes[si].K, T, T == 1 || T == 3 || T == 8 ? N_ORDERS : 1,
                          100 + 7 * i + si);
    uint64_t l, b, t;
    lethe_cu_emu_stats(&l, &b, &t);
    fprintf(stderr, "emulator so far: %llu launches, %llu blocks, %llu threads\n", (unsigned long long)l,
            (unsigned long long)b, (unsigned long long)t);
}

/* --------------------------------------------------------------- TOP_K */

static void test_top_k(void **state) {
    (void)state;
    static const struct { int64_t T, V; int k, pat; } cases[] = {
        {2, 300, 1, 0}, {1, 1000, 17, 1}, {2, 5000, 40, 2}, {1, 9000, 64, 3}, {1, 4500, 8, 4}, {1, 700, 5, 5}};
    for (size_t c = 0; c < LETHE_ARRAY_SIZE(cases); c++) {
        const int64_t T = cases[c].T, V = cases[c].V;
        const int k = cases[c].k;
        float *x = malloc(T * V * 4);
        int32_t *out = malloc(T * k * 8), *ref = malloc(T * k * 8);
        const size_t sb = cu_topk_scratch_bytes(T, (uint32_t)V, (uint32_t)k);
        void *scratch = sb ? malloc(sb) : NULL;
        assert_true(x && out && ref);
        tu_topk_fill(x, (size_t)(T * V), cases[c].pat, 31 + c);
        for (int64_t t = 0; t < T; t++) tu_topk_oracle(x + t * V, V, k, ref + t * k * 2);
        for (int o = 0; o < N_ORDERS; o++) {
            set_order(o);
            memset(out, 0x5A, T * k * 8);
            assert_int_equal(lethe_cu_top_k(x, out, T, V, k, scratch, 0), cudaSuccess);
            no_emu_error("top_k");
            if (memcmp(out, ref, T * k * 8))
                fail_msg("top_k case %zu (V=%lld k=%d pattern %d, %s order): not the oracle's pairs", c, (long long)V,
                         k, cases[c].pat, order_name(o));
        }
        free(x); free(out); free(ref); free(scratch);
    }
}

/* ------------------------------------------------------------ KV moves */

/* a compaction's moves (kept slots packed down, in ascending order) and a
 * fork's (pages copied to fresh rows), for 16-, 4- and 1-byte words:
 * equal to the moves done one by one in order */
static void test_kv_moves(void **state) {
    (void)state;
    static const size_t row_bytes[3] = {256, 68, 33};
    for (int rbi = 0; rbi < 3; rbi++) {
        const size_t R = row_bytes[rbi], rows = 64;
        uint8_t *buf = aligned_alloc(64, rows * R + 64), *ref = malloc(rows * R), *scratch = malloc(rows * R);
        size_t mv[64][2];
        assert_true(buf && ref && scratch);
        for (int kind = 0; kind < 2; kind++) {
            int n = 0;
            if (kind == 0) {   /* keep every slot whose index % 3 != 1, packed down */
                int dst = 0;
                for (int s = 0; s < 40; s++)
                    if (s % 3 != 1) {
                        if (s != dst) {
                            mv[n][0] = (size_t)s * R;
                            mv[n][1] = (size_t)dst * R;
                            n++;
                        }
                        dst++;
                    }
            } else {            /* rows 0..19 copied to 40..59 */
                for (int s = 0; s < 20; s++) {
                    mv[n][0] = (size_t)s * R;
                    mv[n][1] = (size_t)(40 + s) * R;
                    n++;
                }
            }
            size_t bits = R | (uintptr_t)buf;
            for (int i = 0; i < n; i++) bits |= mv[i][0] | mv[i][1];
            const int wb = cu_move_word_bytes(bits);
            for (int o = 0; o < N_ORDERS; o++) {
                set_order(o);
                for (size_t i = 0; i < rows * R; i++) buf[i] = ref[i] = (uint8_t)(i * 13 + 5);
                for (int i = 0; i < n; i++) memmove(ref + mv[i][1], ref + mv[i][0], R);
                assert_int_equal(lethe_cu_move_rows(buf, &mv[0][0], n, R, wb, scratch, 0), cudaSuccess);
                no_emu_error("move_rows");
                if (memcmp(buf, ref, rows * R)) fail_msg("kv moves R=%zu kind %d word %d (%s)", R, kind, wb, order_name(o));
            }
        }
        free(buf); free(ref); free(scratch);
    }
}

#else

static void test_skip(void **state) {
    (void)state;
    skip();
}

#endif

int main(void) {
#ifdef LETHE_HAVE_CUDA_EMU
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_selftest),     cmocka_unit_test(test_elementwise), cmocka_unit_test(test_rope),
        cmocka_unit_test(test_dms_decision), cmocka_unit_test(test_rows_convert), cmocka_unit_test(test_gemv),
        cmocka_unit_test(test_top_k),        cmocka_unit_test(test_kv_moves),
    };
#else
    fprintf(stderr, "test_cuda_emu: this build has no CUDA emulator (no CUDA headers, or a TSan build): skipped\n");
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_skip)};
#endif
    return cmocka_run_group_tests(tests, NULL, NULL);
}
