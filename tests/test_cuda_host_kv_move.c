/* test_cuda_host_kv_move.c — the CUDA KV row-move kernels' lanes
 * (backends/cuda/cuda_kv_move.h: plain C, so this runs with or without
 * CUDA) against the moves done one after another.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "../backends/cuda/cuda_kv_move.h"   /* plain C: tested with or without CUDA */
#include "backend.h"                         /* lethe_row_move */
#include "common.h"

/* The KV row-move kernels' lanes (backends/cuda/cuda_kv_move.h: plain C, so
 * it runs here with or without CUDA), emulated chunk by chunk, gather then
 * scatter, each phase's lanes in a scrambled order (a GPU runs them in any),
 * on batches built as kv_cache.c builds them: compactions of streams over
 * random page lists (K then V row of each kept slot, ascending) and a fork's
 * whole pages into free ones. The result must equal the moves done one after
 * another in order, for every word size and several chunk sizes. */
enum { MV_P = 16, MV_PAGES = 40 };

static uint64_t mv_rng(uint64_t *x) {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

/* A scrambled lane order: g = (k * stride + off) mod lanes, stride coprime to lanes. */
static void mv_order(int64_t lanes, uint64_t *seed, int64_t *stride, int64_t *off) {
    int64_t st = (int64_t)(mv_rng(seed) % 97) + 1;
    for (;; st++) {
        int64_t a = st, b = lanes;
        while (b) {
            const int64_t t = a % b;
            a = b;
            b = t;
        }
        if (a == 1) break;
    }
    *stride = st;
    *off = (int64_t)(mv_rng(seed) % (uint64_t)lanes);
}

/* What a one-phase kernel would do: each lane copies its word straight from
 * source to destination, lanes in a scrambled order. */
static void mv_one_phase(uint8_t *buf, const lethe_row_move *mv, size_t n, size_t row_bytes, uint64_t seed) {
    const int64_t lanes = (int64_t)(n * row_bytes);
    int64_t stride, off;
    mv_order(lanes, &seed, &stride, &off);
    for (int64_t k = 0; k < lanes; k++) {
        const int64_t g = (k * stride + off) % lanes, m = g / (int64_t)row_bytes, w = g % (int64_t)row_bytes;
        buf[mv[m].dst + (size_t)w] = buf[mv[m].src + (size_t)w];
    }
}

static void mv_emulate(uint8_t *buf, const lethe_row_move *mv, size_t n, size_t row_bytes, size_t chunk, uint64_t seed) {
    size_t bits = row_bytes;
    for (size_t i = 0; i < n; i++) bits |= mv[i].src | mv[i].dst;
    const int wb = cu_move_word_bytes(bits);
    assert_int_equal(row_bytes % (size_t)wb, 0);
    const int64_t wpr = (int64_t)(row_bytes / (size_t)wb);
    uint8_t *scratch = malloc(chunk * row_bytes);
    assert_non_null(scratch);
    for (size_t b = 0; b < n; b += chunk) {
        const size_t m = n - b < chunk ? n - b : chunk;
        const int64_t lanes = (int64_t)m * wpr;
        for (int phase = 0; phase < 2; phase++) {
            int64_t stride, off;
            mv_order(lanes, &seed, &stride, &off);
            for (int64_t k = 0; k < lanes; k++) {
                const int64_t g = (k * stride + off) % lanes;
                size_t from, to;
                cu_move_lane(phase, (const size_t *)(mv + b), g, wpr, wb, row_bytes, &from, &to);
                if (phase == 0) {
                    assert_true(from + (size_t)wb <= MV_PAGES * 2 * MV_P * row_bytes && to + (size_t)wb <= m * row_bytes);
                    memcpy(scratch + to, buf + from, (size_t)wb);
                } else {
                    assert_true(to + (size_t)wb <= MV_PAGES * 2 * MV_P * row_bytes && from + (size_t)wb <= m * row_bytes);
                    memcpy(buf + to, scratch + from, (size_t)wb);
                }
            }
        }
    }
    free(scratch);
}

static void mv_sequential(uint8_t *buf, const lethe_row_move *mv, size_t n, size_t row_bytes, bool reversed) {
    for (size_t k = 0; k < n; k++) {
        const size_t i = reversed ? n - 1 - k : k;
        memmove(buf + mv[i].dst, buf + mv[i].src, row_bytes);
    }
}

static void test_kv_move_lanes(void **state) {
    (void)state;
    const size_t rows[] = {4 * 16 * 2, 4 * 8, 6, 3 * 4, 16 * 3};   /* words of 16, 4 and 1 bytes */
    uint64_t r = 0xC0FFEEull;
    int n_order_matters = 0, n_one_phase_wrong = 0;
    for (size_t ri = 0; ri < LETHE_ARRAY_SIZE(rows); ri++) {
        const size_t R = rows[ri], page_bytes = 2 * MV_P * R, bytes = MV_PAGES * page_bytes;
        for (int rep = 0; rep < 6; rep++) {
            /* pages: a random permutation; streams take them in turn */
            int32_t perm[MV_PAGES];
            for (int i = 0; i < MV_PAGES; i++) perm[i] = i;
            for (int i = MV_PAGES - 1; i > 0; i--) {
                const int j = (int)(mv_rng(&r) % (uint64_t)(i + 1));
                const int32_t t = perm[i];
                perm[i] = perm[j];
                perm[j] = t;
            }
            lethe_row_move mv[MV_PAGES * 2 * MV_P];
            size_t n = 0;
            const bool fork = rep % 3 == 2;
            if (fork) {   /* pages 0..14 of perm copied into 20..34 */
                for (int p = 0; p < 15; p++)
                    mv[n++] = (lethe_row_move){(size_t)perm[p] * page_bytes, (size_t)perm[20 + p] * page_bytes};
            } else {      /* 4 streams of 1-8 pages, slots kept with probability 1/2..3/4 */
                int used = 0;
                for (int st = 0; st < 4; st++) {
                    const int np = 1 + (int)(mv_rng(&r) % 8), len = np * MV_P - (int)(mv_rng(&r) % MV_P);
                    const int32_t *pages = perm + used;
                    used += np;
                    int kept = 0;
                    for (int i = 0; i < len; i++) {
                        if (mv_rng(&r) % 4 == 0 || (rep % 3 == 1 && mv_rng(&r) % 2)) continue;   /* dropped */
                        const int to = kept++;
                        if (to == i) continue;
                        const size_t kf = (size_t)pages[i / MV_P] * page_bytes + (size_t)(i % MV_P) * R;
                        const size_t kt = (size_t)pages[to / MV_P] * page_bytes + (size_t)(to % MV_P) * R;
                        mv[n++] = (lethe_row_move){kf, kt};
                        mv[n++] = (lethe_row_move){kf + MV_P * R, kt + MV_P * R};   /* the V row */
                    }
                }
            }
            assert_true(n > 0);
            uint8_t *init = malloc(bytes), *ref = malloc(bytes), *got = malloc(bytes);
            assert_true(init && ref && got);
            for (size_t i = 0; i < bytes; i++) init[i] = (uint8_t)mv_rng(&r);
            memcpy(ref, init, bytes);
            mv_sequential(ref, mv, n, R, false);
            const size_t chunks[] = {cu_move_chunk_rows(R), 1, 3, 7, n};
            for (size_t ci = 0; ci < LETHE_ARRAY_SIZE(chunks); ci++) {
                memcpy(got, init, bytes);
                mv_emulate(got, mv, n, R, chunks[ci], r + ci);
                if (memcmp(got, ref, bytes)) fail_msg("rows %zu, batch %d (%s, %zu moves), chunk %zu: differs", R, rep, fork ? "fork" : "compaction", n, chunks[ci]);
            }
            /* the order is what the oracle checks: a compaction done backwards ends elsewhere */
            memcpy(got, init, bytes);
            mv_sequential(got, mv, n, R, true);
            n_order_matters += !fork && memcmp(got, ref, bytes) != 0;
            /* and one parallel phase would too: why the kernels gather first */
            memcpy(got, init, bytes);
            mv_one_phase(got, mv, n, R, r);
            n_one_phase_wrong += !fork && memcmp(got, ref, bytes) != 0;
            free(init);
            free(ref);
            free(got);
        }
    }
    assert_true(n_order_matters > 0);
    assert_true(n_one_phase_wrong > 0);
    assert_int_equal(cu_move_word_bytes(4 * 16 * 2), 16);
    assert_int_equal(cu_move_word_bytes(4 * 8 | 8), 4);
    assert_int_equal(cu_move_word_bytes(6), 1);
    assert_int_equal(cu_move_chunk_rows(CU_MOVE_CHUNK_BYTES * 2), 1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kv_move_lanes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
