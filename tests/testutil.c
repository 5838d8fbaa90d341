#include <dlfcn.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
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
