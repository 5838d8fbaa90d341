#include <dlfcn.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testutil.h"
#include "backend.h"
#include "common.h"
#include "kv_cache.h"

double tu_nmse(const float *ref, const float *got, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(ref[i]) || !isfinite(got[i])) return INFINITY;
        double d = (double)ref[i] - (double)got[i];
        num += d * d;
        den += (double)ref[i] * (double)ref[i];
    }
    return den > 0 ? num / den : num;
}

const char *tu_model_path(void) {
    const char *p = getenv("LETHE_TEST_MODEL");
    if (!p || access(p, R_OK) != 0) {
        fail_msg("default model not found (LETHE_TEST_MODEL=%s); run tools/fetch-model.sh", p ? p : "(unset)");
    }
    return p;
}

const char *tu_data_dir(void) {
    const char *p = getenv("LETHE_TEST_DATA");
    return p ? p : "tests/data";
}

void *tu_read_file(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    void *buf = malloc(n > 0 ? (size_t)n : 1);
    if (buf && n > 0 && fread(buf, 1, (size_t)n, f) != (size_t)n) { free(buf); buf = NULL; }
    fclose(f);
    if (buf && size) *size = (size_t)n;
    return buf;
}

char *tu_write_temp(const void *data, size_t size) {
    const char *dir = getenv("TMPDIR");
    char *path = malloc(4096);
    snprintf(path, 4096, "%s/lethe-test-XXXXXX", dir ? dir : "/tmp");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, data, size), (ssize_t)size);
    close(fd);
    return path;
}

void tu_rand_fill(float *x, size_t n, uint64_t seed) {
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
    for (size_t i = 0; i < n; i++) {
        s ^= s << 13; s ^= s >> 7; s ^= s << 17;
        x[i] = (float)((s >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
    }
}

void tu_pin_vulkan_driver(void) {
    /* RTLD_NOLOAD: take a reference only if the loader already opened it */
    static const char *const k_icds[] = {"libvulkan_lvp.so"};
    for (size_t i = 0; i < sizeof k_icds / sizeof k_icds[0]; i++) (void)dlopen(k_icds[i], RTLD_LAZY | RTLD_NOLOAD);
}

void tu_topk_fill(float *x, size_t n, int pattern, uint64_t seed) {
    tu_rand_fill(x, n, seed);
    const uint32_t nans[4] = {0x7FC00000u, 0xFFC00000u, 0x7F800001u, 0x7FC12345u};
    for (size_t i = 0; i < n; i++) {
        uint64_t h = (i + 1) * 0x9E3779B97F4A7C15ull ^ seed;
        h ^= h >> 29;
        h *= 0xBF58476D1CE4E5B9ull;
        h ^= h >> 32;
        switch (pattern) {
        case 1: {   /* 8 levels: long runs of equal values, +0 and -0 among them */
            const float lv[8] = {3.0f, 1.5f, 0.0f, -0.0f, -1.0f, 2.25f, 3.0f, -7.0f};
            x[i] = lv[h % 8];
            break;
        }
        case 2:
            if (h % 7 == 0) x[i] = -INFINITY;
            else if (h % 11 == 0) memcpy(&x[i], &nans[(h >> 8) % 4], sizeof(float));
            else if (h % 13 == 0) x[i] = (h >> 9) % 2 ? 0.0f : -0.0f;
            break;
        case 3:
            if (h % 1000 >= 3) memcpy(&x[i], &nans[(h >> 8) % 4], sizeof(float));
            else if (h % 2) x[i] = -INFINITY;
            break;
        case 4: x[i] = (float)i * 0.5f - 100.0f; break;
        case 5: x[i] = 0.25f; break;
        default: break;
        }
    }
}

/* the sampler's cand_before on (value, id) */
static int topk_cmp(const void *pa, const void *pb) {
    const int32_t *a = pa, *b = pb;
    float va, vb;
    memcpy(&va, &a[1], sizeof va);
    memcpy(&vb, &b[1], sizeof vb);
    const bool na = isnan(va), nb = isnan(vb);
    if (na != nb) return na ? 1 : -1;
    if (!na && va != vb) return va > vb ? -1 : 1;
    return a[0] < b[0] ? -1 : a[0] > b[0];
}

void tu_topk_oracle(const float *x, int64_t V, int k, int32_t *out) {
    int32_t *all = malloc((size_t)V * 2 * sizeof(int32_t));
    if (!all) abort();
    for (int64_t i = 0; i < V; i++) {
        all[2 * i] = (int32_t)i;
        memcpy(&all[2 * i + 1], &x[i], sizeof(float));
    }
    qsort(all, (size_t)V, 2 * sizeof(int32_t), topk_cmp);
    memcpy(out, all, (size_t)k * 2 * sizeof(int32_t));
    free(all);
}

void *tu_make_rows(lethe_dtype type, int64_t N, int64_t K, uint64_t seed, size_t pad) {
    const size_t rs = lethe_row_size(type, K);
    uint8_t *w = malloc(rs * (size_t)N + pad);
    float *x = malloc((size_t)K * sizeof(float));
    assert_non_null(w);
    assert_non_null(x);
    for (int64_t r = 0; r < N; r++) {
        tu_rand_fill(x, (size_t)K, seed + (uint64_t)r);
        lethe_dtype_get(type)->from_f32(x, w + (size_t)r * rs, K);
    }
    free(x);
    return w;
}

static void kv_fill_row(const lethe_kv_cache *kv, void *dst, uint64_t seed) {
    float x[256];
    tu_rand_fill(x, (size_t)kv->head_dim, seed);
    if (kv->type == LETHE_F16) {
        for (int d = 0; d < kv->head_dim; d++) ((lethe_f16 *)dst)[d] = lethe_f32_to_f16(x[d]);
    } else {
        memcpy(dst, x, (size_t)kv->head_dim * sizeof(float));
    }
}

/* QUEST: every page's key bounds from its rows (what the cache would hold
 * had the rows come through KV_STORE and attention). */
static void kv_quest_bounds(lethe_kv_cache *kv) {
    const int D = kv->head_dim;
    for (int sq = 0; sq < kv->n_seq; sq++)
        for (int l = 0; l < kv->n_layer; l++)
            for (int h = 0; h < kv->n_head_kv; h++) {
                const lethe_kv_stream *s = lethe_kv_stream_at(kv, sq, l, h);
                for (int32_t p = 0; p < s->n_pages; p++) {
                    float *mn = kv->kmin + (size_t)s->pages[p] * D, *mx = kv->kmax + (size_t)s->pages[p] * D;
                    for (int d = 0; d < D; d++) {
                        mn[d] = INFINITY;
                        mx[d] = -INFINITY;
                    }
                    for (int32_t j = p * LETHE_KV_PAGE; j < LETHE_MIN(s->len, (p + 1) * LETHE_KV_PAGE); j++)
                        for (int d = 0; d < D; d++) {
                            const void *k = lethe_kv_k(kv, s, j);
                            const float x = kv->type == LETHE_F16 ? lethe_f16_to_f32(((const lethe_f16 *)k)[d])
                                                                  : ((const float *)k)[d];
                            mn[d] = x < mn[d] ? x : mn[d];
                            mx[d] = x > mx[d] ? x : mx[d];
                        }
                }
            }
}

void tu_kv_setup(lethe_kv_cache *kv, const tu_kv_spec *c, lethe_backend *mem, uint64_t seed, int32_t *seq,
                 int32_t *pos) {
    const lethe_kv_policy pol = {.rule = c->rule ? (lethe_kv_rule)c->rule : LETHE_KV_RULE_DMS, .window = TU_KV_W,
                                 .budget = c->budget, .recent = 4};
    const lethe_dtype type = c->f16 ? LETHE_F16 : LETHE_F32;
    const size_t page = 2 * (size_t)LETHE_KV_PAGE * lethe_row_size(type, c->D);
    assert_int_equal(lethe_kv_init(kv, 2, 2, c->Hkv, c->D, type, page * c->pages, 64, &pol, mem), LETHE_OK);
    const int hist[2] = {c->hist, 9};
    for (int sq = 0; sq < 2; sq++) {
        int32_t ids[64], ps[64];
        for (int i0 = 0; i0 < hist[sq]; i0 += 64) {   /* micro-batches of at most max_batch */
            const int nt = LETHE_MIN(64, hist[sq] - i0);
            for (int i = 0; i < nt; i++) {
                ids[i] = sq;
                ps[i] = i0 + i;
            }
            lethe_kv_begin(kv);
            assert_int_equal(lethe_kv_reserve(kv, nt, ids, ps), LETHE_OK);
            lethe_kv_commit(kv);
        }
    }
    uint64_t r = seed;
    for (int sq = 0; sq < 2; sq++)
        for (int l = 0; l < 2; l++)
            for (int h = 0; h < c->Hkv; h++) {
                lethe_kv_stream *s = lethe_kv_stream_at(kv, sq, l, h);
                for (int32_t j = 0; j < s->len; j++) {
                    kv_fill_row(kv, lethe_kv_k(kv, s, j), ++r * 31);
                    kv_fill_row(kv, lethe_kv_v(kv, s, j), ++r * 31);
                    /* every 5th token flagged: expired (j + w + 1 < now) or, near the end, still visible */
                    if ((j + h) % 5 == 2) *lethe_kv_expire(kv, s, j) = *lethe_kv_pos(kv, s, j) + TU_KV_W + 1;
                }
                if (l == TU_KV_LAYER && sq == 0) {   /* ragged: head h drops 2h + 1 slots */
                    int32_t drop[16];
                    const int nd = LETHE_MIN(2 * h + 1, 16);
                    for (int i = 0; i < nd; i++) drop[i] = 3 + 2 * i;
                    lethe_kv_stream_drop(kv, s, drop, nd);
                }
            }
    if (c->tie)   /* pages 1 and 3 of sequence 0: the same keys, large (the top bound), other values */
        for (int l = 0; l < 2; l++)
            for (int h = 0; h < c->Hkv; h++) {
                lethe_kv_stream *s = lethe_kv_stream_at(kv, 0, l, h);
                assert_true(s->len >= 4 * LETHE_KV_PAGE);
                for (int32_t j = LETHE_KV_PAGE; j < 2 * LETHE_KV_PAGE; j++) {
                    for (int d = 0; d < c->D; d++) {
                        if (type == LETHE_F16) {
                            lethe_f16 *x = lethe_kv_k(kv, s, j);
                            x[d] = lethe_f32_to_f16(4.0f * lethe_f16_to_f32(x[d]));
                        } else {
                            ((float *)lethe_kv_k(kv, s, j))[d] *= 4.0f;
                        }
                    }
                    memcpy(lethe_kv_k(kv, s, j + 2 * LETHE_KV_PAGE), lethe_kv_k(kv, s, j), kv->slot_bytes);
                }
            }
    if (kv->kmin) kv_quest_bounds(kv);
    /* the micro-batch: alternate sequences (decode shape) or runs (the first
     * 3/5 of the tokens sequence 0: prefill shape), each at its next position */
    int32_t next[2] = {hist[0], hist[1]};
    for (int t = 0; t < c->T; t++) {
        seq[t] = c->runs ? (t < c->T * 3 / 5 ? 0 : 1) : t % 2;
        pos[t] = next[seq[t]]++;
    }
    lethe_kv_begin(kv);
    assert_int_equal(lethe_kv_reserve(kv, c->T, seq, pos), LETHE_OK);
}
