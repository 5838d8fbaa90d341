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
