/* testutil.h — small helpers shared by the cmocka tests. Include after
 * <stdarg.h> <stddef.h> <setjmp.h> <stdint.h> <cmocka.h>. */
#ifndef LETHE_TESTUTIL_H
#define LETHE_TESTUTIL_H

#include <stddef.h>
#include <stdbool.h>
#include <stdint.h>

#include "dtype.h"

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

/* ---- the KV-cache op tests' shared set-up (test_backend_ops, test_cuda_host_*) */
struct lethe_kv_cache;
struct lethe_backend;

/* N rows of K random values (tu_rand_fill, seed + row) in dtype `type`,
 * rows of lethe_row_size(type, K) bytes, `pad` spare bytes after them
 * (0: an overread shows under ASan). Caller frees. */
void *tu_make_rows(lethe_dtype type, int64_t N, int64_t K, uint64_t seed, size_t pad);

#define TU_KV_LAYER 1   /* the layer the cases store and attend (of 2: its offset in the pool matters) */
#define TU_KV_W 3       /* the DMS window */
typedef struct tu_kv_spec {
    int T, Hkv, D;      /* micro-batch tokens, KV heads, head_dim */
    int hist;           /* sequence 0's history (sequence 1: 9 tokens) */
    bool f16;           /* cache rows in f16 (else f32) */
    bool runs;          /* micro-batch in runs of one sequence (else alternating) */
    bool tie;           /* pages 1 and 3 of sequence 0 share their (dominant) keys, other values */
    int rule, budget;   /* lethe_kv_rule (0: DMS) and the policy's budget */
    size_t pages;       /* pool pages of 2 x LETHE_KV_PAGE rows */
} tu_kv_spec;
/* A cache of 2 sequences x 2 layers x Hkv heads in `mem`'s shared memory
 * (NULL: host memory): histories of s->hist and 9 tokens with random rows,
 * every 5th token DMS-flagged (expired, or near the end still visible), head
 * h of layer TU_KV_LAYER of sequence 0 dropping 2h + 1 slots (holes, or a
 * compaction past LETHE_KV_MAX_HOLES), s->tie's pages, QUEST's page bounds
 * from the rows; then a micro-batch of s->T tokens reserved (begun, not
 * committed), each at its sequence's next position: seq [T], pos [T]. */
void tu_kv_setup(struct lethe_kv_cache *kv, const tu_kv_spec *s, struct lethe_backend *mem, uint64_t seed,
                 int32_t *seq, int32_t *pos);

#endif
