/* testutil.h — small helpers shared by the cmocka tests. Include after
 * <stdarg.h> <stddef.h> <setjmp.h> <stdint.h> <cmocka.h>. */
#ifndef LETHE_TESTUTIL_H
#define LETHE_TESTUTIL_H

#include <stddef.h>
#include <stdint.h>

/* NMSE = sum (a-b)^2 / sum a^2 (a is the reference); +inf if any NaN/Inf. */
double tu_nmse(const float *ref, const float *got, size_t n);
/* Path of the default model (env LETHE_TEST_MODEL); fails the test if unset/missing. */
const char *tu_model_path(void);
/* Directory of committed test data (env LETHE_TEST_DATA, i.e. tests/data). */
const char *tu_data_dir(void);
/* Read a whole file; NULL if it cannot be read. Caller frees. */
void *tu_read_file(const char *path, size_t *size);
/* Write bytes to a new temporary file; returns its malloc'ed path. */
char *tu_write_temp(const void *data, size_t size);
/* Deterministic pseudo-random floats in [-1, 1). */
void tu_rand_fill(float *x, size_t n, uint64_t seed);

/* TOP_K inputs (logit rows) that stress the selection order: pattern
 * 0 random, 1 ties (a few distinct values, +-0 among them), 2 -inf and NaN
 * (of both signs, several payloads) sprinkled in, 3 mostly NaN (fewer
 * numbers than a k of 64), 4 ascending (the worst case of an insertion
 * list), 5 all equal. */
void tu_topk_fill(float *x, size_t n, int pattern, uint64_t seed);
/* The k best (id, value bits) pairs of row x[0..V) in the host sampler's
 * order, by a full sort: the oracle of the TOP_K op. out [k][2]. */
void tu_topk_oracle(const float *x, int64_t V, int k, int32_t *out);

/* Keep an ICD the Vulkan loader opened (lavapipe) loaded until exit, so that
 * LeakSanitizer can name the driver's own leaks and tests/lsan.supp can
 * suppress them (the loader unloads ICDs at vkDestroyInstance, and leaks in
 * an unloaded library show as "<unknown module>"). Call after creating a
 * Vulkan backend. No effect when the driver is not loaded. */
void tu_pin_vulkan_driver(void);

#endif
