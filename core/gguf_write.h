/* gguf_write.h — a small GGUF v3 writer (tests, synthetic models, `lethe convert`).
 *
 * Build the file in memory-light steps: add metadata and tensors in the order
 * they should appear, then write. Keys and tensor names must be unique; the
 * writer rejects duplicates with LETHE_ERR_INVALID_ARG. Tensor data is either
 * copied at add time or referenced (the caller keeps it alive until the write),
 * so converting a multi-GB model needs no second copy. The output is the
 * layout llama.cpp's gguf reader expects: header, kvs, tensor infos, padding
 * to the alignment, then each tensor's data padded to the alignment.
 */
#ifndef LETHE_GGUF_WRITE_H
#define LETHE_GGUF_WRITE_H

#include "dtype.h"
#include "gguf.h"
#include "lethe.h"
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct lethe_gguf_writer lethe_gguf_writer;

/* NULL on out of memory (message set). Version 3, alignment 32. */
lethe_gguf_writer *lethe_gguf_writer_new(void);
void lethe_gguf_writer_free(lethe_gguf_writer *w);

/* 2 or 3 (the layouts are identical for little-endian files). */
lethe_status lethe_gguf_writer_set_version(lethe_gguf_writer *w, uint32_t version);
/* Power of two; also stored as the u32 key general.alignment. Setting
 * general.alignment with add_u32 has the same effect. */
lethe_status lethe_gguf_writer_set_alignment(lethe_gguf_writer *w, uint32_t alignment);

lethe_status lethe_gguf_writer_add_u8(lethe_gguf_writer *w, const char *key, uint8_t v);
lethe_status lethe_gguf_writer_add_i8(lethe_gguf_writer *w, const char *key, int8_t v);
lethe_status lethe_gguf_writer_add_u16(lethe_gguf_writer *w, const char *key, uint16_t v);
lethe_status lethe_gguf_writer_add_i16(lethe_gguf_writer *w, const char *key, int16_t v);
lethe_status lethe_gguf_writer_add_u32(lethe_gguf_writer *w, const char *key, uint32_t v);
lethe_status lethe_gguf_writer_add_i32(lethe_gguf_writer *w, const char *key, int32_t v);
lethe_status lethe_gguf_writer_add_u64(lethe_gguf_writer *w, const char *key, uint64_t v);
lethe_status lethe_gguf_writer_add_i64(lethe_gguf_writer *w, const char *key, int64_t v);
lethe_status lethe_gguf_writer_add_f32(lethe_gguf_writer *w, const char *key, float v);
lethe_status lethe_gguf_writer_add_f64(lethe_gguf_writer *w, const char *key, double v);
lethe_status lethe_gguf_writer_add_bool(lethe_gguf_writer *w, const char *key, bool v);
/* NUL-terminated string; _strn takes a length (may contain any bytes). */
lethe_status lethe_gguf_writer_add_str(lethe_gguf_writer *w, const char *key, const char *v);
lethe_status lethe_gguf_writer_add_strn(lethe_gguf_writer *w, const char *key, const char *v, size_t len);

/* Array of n scalars of `elem` (not STRING/ARRAY); `data` holds n native
 * values of that type (bool = 1 byte each) and is copied. */
lethe_status lethe_gguf_writer_add_arr(lethe_gguf_writer *w, const char *key, lethe_gguf_type elem,
                                       const void *data, uint64_t n);
/* Array of n NUL-terminated strings, copied. */
lethe_status lethe_gguf_writer_add_arr_str(lethe_gguf_writer *w, const char *key,
                                           const char *const *strs, uint64_t n);
/* Copy a kv read by lethe_gguf (any type, nested arrays included) under its key. */
lethe_status lethe_gguf_writer_add_kv(lethe_gguf_writer *w, const lethe_gguf_kv *kv);

/* A tensor of `type` with ne[0..n_dims-1] (ne[0] innermost). `data` holds the
 * tensor's bytes (lethe_row_size(type, ne[0]) * rows); NULL writes zeros.
 * copy=false: the writer only keeps the pointer until the write. */
lethe_status lethe_gguf_writer_add_tensor(lethe_gguf_writer *w, const char *name, lethe_dtype type,
                                          int n_dims, const int64_t *ne, const void *data, bool copy);

/* Exact size of the file the writer would produce now. */
size_t lethe_gguf_writer_size(const lethe_gguf_writer *w);
/* Write the file (removed again if the write fails). */
lethe_status lethe_gguf_writer_write_file(const lethe_gguf_writer *w, const char *path);
/* Write to a new malloc'ed buffer the caller frees. */
lethe_status lethe_gguf_writer_write_mem(const lethe_gguf_writer *w, void **out, size_t *out_size);

#endif
