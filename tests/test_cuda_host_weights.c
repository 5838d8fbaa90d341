/* test_cuda_host_weights.c — the CUDA device weight cache
 * (backends/cuda/cuda_weights.h: plain C, so this runs with or without
 * CUDA) against a plain list.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdlib.h>

#include "../backends/cuda/cuda_weights.h"   /* plain C: tested with or without CUDA */
#include "common.h"

/* The device weight cache (backends/cuda/cuda_weights.h: plain C, so it
 * runs here with or without CUDA), shared by every backend on a device:
 * random uploads (new addresses, larger views of known ones), lookups and
 * forgotten ranges against a plain list. Every copy must be found while
 * live, dropped exactly once when its range is forgotten (retired copies
 * too) or at the end, and the counts must add up. Device pointers are
 * malloc'd here, so a double drop or a leak shows under ASan/LSan. */
typedef struct ref_weight {
    size_t off, size;
    void *dev;
    int state;   /* 0 gone, 1 live, 2 retired */
} ref_weight;

static uint64_t tu_mix(uint64_t z) {   /* splitmix64's finalizer */
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static int g_drops;
static void drop_dev(void *dev, size_t size, void *user) {
    (void)size;
    (void)user;
    g_drops++;
    free(dev);
}

static void test_weight_cache(void **state) {
    (void)state;
    enum { ARENA = 1 << 20, N_REF = 20000 };
    static uint8_t arena[ARENA];   /* host "weights": addresses inside it */
    ref_weight *ref = calloc(N_REF, sizeof *ref);
    assert_non_null(ref);
    int n_ref = 0, n_dev = 0;
    cu_wcache w = {0};
    uint64_t s = 0x9E3779B97F4A7C15ull;
#define RND() (s += 0x9E3779B97F4A7C15ull, tu_mix(s))
    for (int step = 0; step < 12000; step++) {
        const uint64_t r = RND() % 100;
        if (r < 80 && n_ref < N_REF) {   /* an upload: absent, or a larger view */
            const size_t off = (size_t)(RND() % 4096) * 64, size = 64 + (size_t)(RND() % 8) * 64;
            const cu_weight *e = cu_wcache_find(&w, arena + off);
            if (e && e->size >= size) continue;   /* cached: lethe_cu_weight uploads nothing */
            void *dev = malloc(1);
            assert_int_equal(cu_wcache_put(&w, arena + off, size, dev), 0);
            n_dev++;
            for (int i = 0; i < n_ref; i++)
                if (ref[i].state == 1 && ref[i].off == off) ref[i].state = 2;
            ref[n_ref++] = (ref_weight){off, size, dev, 1};
        } else if (r < 98) {             /* a lookup of a random known entry */
            if (!n_ref) continue;
            const ref_weight *x = &ref[RND() % (uint64_t)n_ref];
            const cu_weight *e = cu_wcache_find(&w, arena + x->off);
            if (x->state == 1) {
                assert_non_null(e);
                assert_ptr_equal(e->dev, x->dev);
                assert_int_equal(e->size, x->size);
            } else {   /* gone or retired: only a newer live copy of that address may be found */
                const ref_weight *y = NULL;
                for (int i = 0; i < n_ref; i++)
                    if (ref[i].state == 1 && ref[i].off == x->off) y = &ref[i];
                if (y) assert_ptr_equal(e ? e->dev : NULL, y->dev);
                else assert_null(e);
            }
        } else {                         /* a model freed: a range forgotten */
            const size_t lo = (size_t)(RND() % ARENA), len = 1 + (size_t)(RND() % 16384);
            const size_t hi = lo + len > ARENA ? ARENA : lo + len;
            int want = 0;
            for (int i = 0; i < n_ref; i++)
                if (ref[i].state && ref[i].off < hi && ref[i].off + ref[i].size > lo) {
                    ref[i].state = 0;
                    want++;
                }
            const int before = g_drops;
            assert_int_equal(cu_wcache_forget(&w, arena + lo, hi - lo, drop_dev, NULL), want);
            assert_int_equal(g_drops - before, want);
        }
    }
#undef RND
    size_t live = 0, live_bytes = 0, all_bytes = 0, retired = 0;
    for (int i = 0; i < n_ref; i++) {
        if (ref[i].state == 1) {
            live++;
            live_bytes += ref[i].size;
            const cu_weight *e = cu_wcache_find(&w, arena + ref[i].off);
            assert_non_null(e);
            assert_ptr_equal(e->dev, ref[i].dev);
        }
        retired += ref[i].state == 2;
        if (ref[i].state) all_bytes += ref[i].size;
        if (!ref[i].state) {   /* forgotten: not found, unless uploaded again since */
            bool again = false;
            for (int j = i + 1; j < n_ref; j++) again |= ref[j].state == 1 && ref[j].off == ref[i].off;
            if (!again) assert_null(cu_wcache_find(&w, arena + ref[i].off));
        }
    }
    size_t n, bytes;
    cu_wcache_count(&w, NULL, 0, &n, &bytes);
    assert_int_equal(n, live);
    assert_int_equal(bytes, live_bytes);
    assert_int_equal(w.n, live);
    assert_int_equal(w.n_retired, retired);
    assert_int_equal(w.bytes, all_bytes);
    assert_int_equal(w.uploads, (uint64_t)n_dev);
    print_message("  %d uploads, %zu live (%zu retired) after %d dropped by forgotten ranges; table of %zu slots\n",
                  n_dev, live, retired, g_drops, w.cap);
    assert_true(w.cap > 1024);   /* it grew: rehashing ran */
    assert_true(g_drops > 0);    /* forgetting ran, deletions shifted runs */
    assert_true(retired > 0);    /* larger views retired copies, kept until forgotten */
    cu_wcache_free(&w, drop_dev, NULL);
    assert_int_equal(g_drops, n_dev);   /* every copy dropped exactly once */
    free(ref);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_weight_cache),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
