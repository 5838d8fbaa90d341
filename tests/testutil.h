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

/* Keep an ICD the Vulkan loader opened (lavapipe) loaded until exit, so that
 * LeakSanitizer can name the driver's own leaks and tests/lsan.supp can
 * suppress them (the loader unloads ICDs at vkDestroyInstance, and leaks in
 * an unloaded library show as "<unknown module>"). Call after creating a
 * Vulkan backend. No effect when the driver is not loaded. */
void tu_pin_vulkan_driver(void);

#endif
