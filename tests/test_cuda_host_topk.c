/* test_cuda_host_topk.c — the CUDA TOP_K kernel's selection (cuda_topk.h,
 * k_topk.cu's rounds with a block's lanes run one after another) against
 * the CPU backend's TOP_K bit for bit, without a GPU, and its one- or
 * two-pass plan. Builds without CUDA skip with a message.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "testutil.h"

#ifdef LETHE_HAVE_CUDA
#include "backend.h"
#include "cuda_topk.h"
#include "executor.h"
#include "graph.h"

/* k_top_k's rounds (k_topk.cu) with the lanes of a block run one after
 * another: each lane's best through cuda_topk.h, the warp winners as the
 * butterfly leaves them, the warps folded in order, the owner's write and
 * rescan. What it cannot check: the shuffles and the barrier themselves. */
static void host_top_k_pass(const uint32_t *in, uint32_t *out, uint32_t V, uint32_t k, uint32_t chunk, uint32_t S,
                            int pass, uint32_t n_seg, uint32_t T) {
    enum { WG = CU_TOPK_WG };
    uint32_t bk[WG], bi[WG], bb[WG];
    for (uint32_t t = 0; t < T; t++)
        for (uint32_t sg = 0; sg < n_seg; sg++) {
            size_t ob;
            const cu_topk_seg g = cu_topk_segment(in, V, k, chunk, S, pass, sg, t, &ob);
            for (uint32_t l = 0; l < WG; l++) cu_topk_lane_best(&g, l, WG, false, 0, 0, &bk[l], &bi[l], &bb[l]);
            for (uint32_t j = 0; j < k; j++) {
                uint32_t wk = 0, wi = CU_TOPK_EMPTY_ID;
                for (uint32_t w = 0; w < WG / 32; w++) {
                    uint32_t mk = bk[32 * w], mi = bi[32 * w];
                    for (uint32_t l = 1; l < 32; l++)
                        if (cu_topk_better(bk[32 * w + l], bi[32 * w + l], mk, mi)) mk = bk[32 * w + l], mi = bi[32 * w + l];
                    if (w == 0 || cu_topk_better(mk, mi, wk, wi)) wk = mk, wi = mi;
                }
                if (wi == CU_TOPK_EMPTY_ID) {
                    out[ob + 2 * j] = CU_TOPK_EMPTY_ID;
                    out[ob + 2 * j + 1] = CU_TOPK_EMPTY_BITS;
                    continue;
                }
                int owners = 0;
                for (uint32_t l = 0; l < WG; l++)
                    if (bi[l] == wi) {
                        owners++;
                        out[ob + 2 * j] = bi[l];
                        out[ob + 2 * j + 1] = bb[l];
                        cu_topk_lane_best(&g, l, WG, true, wk, wi, &bk[l], &bi[l], &bb[l]);
                    }
                assert_int_equal(owners, 1);
            }
        }
}

/* TOP_K as the CUDA launcher runs it (one or two passes, cu_topk_plan). */
static void host_top_k(const float *x, int32_t *out, uint32_t T, uint32_t V, uint32_t k) {
    uint32_t S, chunk;
    cu_topk_plan(V, k, &S, &chunk);
    if (S == 1) {
        host_top_k_pass((const uint32_t *)x, (uint32_t *)out, V, k, chunk, S, 0, 1, T);
        return;
    }
    uint32_t *mid = malloc(cu_topk_scratch_bytes(T, V, k));
    assert_non_null(mid);
    host_top_k_pass((const uint32_t *)x, mid, V, k, chunk, S, 0, S, T);
    host_top_k_pass(mid, (uint32_t *)out, V, k, chunk, S, 1, 1, T);
    free(mid);
}

/* The kernel's selection against the CPU backend's TOP_K, bit for bit:
 * the vocabularies of SmolLM2 and Qwen, k 1 / 40 / 64 / 256, ties, -inf,
 * NaN (after every number), rows shorter than a segment; and the plan. */
static void test_top_k(void **state) {
    (void)state;
    const struct { uint32_t T, V, k; int pat; } cs[] = {
        {1, 49152, 1, 0}, {3, 49152, 40, 0}, {2, 151936, 64, 0}, {1, 151936, 256, 0}, {2, 49152, 40, 1},
        {2, 151936, 64, 2}, {2, 49152, 64, 3}, {1, 151936, 1, 3}, {2, 10000, 64, 4}, {1, 5000, 40, 5},
        {4, 7, 5, 2}, {2, 64, 64, 1}, {3, 4097, 17, 2}, {1, 151936, 40, 1},
    };
    lethe_backend *cpu = lethe_backend_cpu_new(2);
    assert_non_null(cpu);
    for (size_t c = 0; c < LETHE_ARRAY_SIZE(cs); c++) {
        const uint32_t T = cs[c].T, V = cs[c].V, k = cs[c].k;
        float *x = malloc((size_t)T * V * sizeof(float));
        int32_t *got = malloc((size_t)T * k * 2 * sizeof(int32_t));
        assert_non_null(x);
        assert_non_null(got);
        tu_topk_fill(x, (size_t)T * V, cs[c].pat, 40 + c);
        lethe_graph *g = lethe_graph_new(4);
        int64_t ne[2] = {V, T};
        lethe_node *n = lethe_top_k(g, lethe_input(g, LETHE_F32, 2, ne, x, "x"), (int)k);
        assert_non_null(n);
        lethe_set_output(n);
        lethe_executor *ex = lethe_executor_new(&cpu, 1);
        assert_int_equal(lethe_executor_run(ex, g, NULL, NULL), LETHE_OK);
        host_top_k(x, got, T, V, k);
        if (memcmp(got, n->t.data, (size_t)T * k * 2 * sizeof(int32_t)) != 0)
            fail_msg("top_k T=%u V=%u k=%u pattern %d: the kernel's selection differs from the CPU", T, V, k,
                     cs[c].pat);
        lethe_executor_free(ex);
        lethe_graph_free(g);
        free(x);
        free(got);
    }
    cpu->iface->free(cpu);
    print_message("  top_k: %zu cases bit-identical to the CPU backend\n", LETHE_ARRAY_SIZE(cs));
    /* the plan: segments cover the row, none empty, pass 1 reads <= max(4096, k) pairs per row */
    const uint32_t Vs[] = {1, 7, 4096, 4097, 49152, 151936, 262144};
    const uint32_t ks[] = {1, 2, 40, 64, 255, 256};
    for (size_t a = 0; a < LETHE_ARRAY_SIZE(Vs); a++)
        for (size_t b = 0; b < LETHE_ARRAY_SIZE(ks); b++) {
            if (ks[b] > Vs[a]) continue;
            uint32_t S, chunk;
            cu_topk_plan(Vs[a], ks[b], &S, &chunk);
            assert_true(S >= 1 && (uint64_t)chunk * S >= Vs[a] && (uint64_t)chunk * (S - 1) < Vs[a]);
            assert_true(S == 1 || (uint64_t)S * ks[b] <= 4096);
        }
}
#else
static void test_top_k(void **state) {
    (void)state;
    print_message("this build has no CUDA backend: skipped\n");
    skip();
}
#endif

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_top_k),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
