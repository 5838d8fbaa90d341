/* gguf.h — reader for GGUF v2/v3 model files.
 *
 * The file is mapped (or read) whole; tensor data is used in place. Every
 * size, count, offset and string is checked against the file size before it
 * is used, so a truncated, corrupt or hostile file gives a status and a
 * message (lethe_last_error()), never a crash or an unbounded allocation.
 */
#ifndef LETHE_GGUF_H
#define LETHE_GGUF_H

#include "dtype.h"
#include "lethe.h"
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum lethe_gguf_type {
    LETHE_GGUF_U8 = 0, LETHE_GGUF_I8 = 1, LETHE_GGUF_U16 = 2, LETHE_GGUF_I16 = 3,
    LETHE_GGUF_U32 = 4, LETHE_GGUF_I32 = 5, LETHE_GGUF_F32 = 6, LETHE_GGUF_BOOL = 7,
    LETHE_GGUF_STRING = 8, LETHE_GGUF_ARRAY = 9, LETHE_GGUF_U64 = 10, LETHE_GGUF_I64 = 11,
    LETHE_GGUF_F64 = 12, LETHE_GGUF_TYPE_COUNT
} lethe_gguf_type;

typedef struct lethe_gguf_str {
    uint64_t len;
    const char *ptr;       /* into the file: NOT NUL-terminated */
} lethe_gguf_str;

typedef struct lethe_gguf_kv {
    char *key;                 /* NUL-terminated copy                          */
    lethe_gguf_type type;
    lethe_gguf_type arr_type;  /* element type when type == ARRAY              */
    uint64_t n;                /* number of elements when type == ARRAY        */
    union {
        uint64_t u; int64_t i; double f; bool b;   /* scalars, widened         */
        lethe_gguf_str s;                          /* STRING                   */
    } v;
    const void *arr;           /* ARRAY of scalars: raw little-endian data in the file */
    lethe_gguf_str *arr_str;   /* ARRAY of strings: [n] views into the file    */
} lethe_gguf_kv;

typedef struct lethe_gguf_tensor {
    char *name;                /* NUL-terminated copy */
    int n_dims;
    int64_t ne[4];             /* ne[0] innermost; unused dims 1 */
    lethe_dtype type;
    uint64_t offset;           /* relative to the data section */
    const void *data;          /* address in the mapping */
    size_t size;               /* bytes */
} lethe_gguf_tensor;

typedef struct lethe_gguf {
    uint32_t version;
    uint64_t n_kv, n_tensors;
    lethe_gguf_kv *kv;
    lethe_gguf_tensor *tensors;
    size_t alignment;
    const uint8_t *base;       /* start of the file bytes */
    size_t size;
    size_t data_offset;        /* start of the tensor data section */
    /* ownership of the bytes */
    void *map; size_t map_size; void *heap;
} lethe_gguf;

/* Open a file. Returns NULL with *status set (if non-NULL) and a message. */
lethe_gguf *lethe_gguf_open(const char *path, bool use_mmap, lethe_status *status);
/* Parse a buffer the caller keeps alive (fuzzing, tests). */
lethe_gguf *lethe_gguf_parse(const void *data, size_t size, lethe_status *status);
void lethe_gguf_close(lethe_gguf *g);

/* Lookups: NULL / -1 if absent. */
const lethe_gguf_kv *lethe_gguf_find(const lethe_gguf *g, const char *key);
const lethe_gguf_tensor *lethe_gguf_find_tensor(const lethe_gguf *g, const char *name);

/* Typed getters with defaults: return true if the key exists and converts
 * (integers of any width to int64, any float/int to double). */
bool lethe_gguf_get_int(const lethe_gguf *g, const char *key, int64_t *out);
bool lethe_gguf_get_float(const lethe_gguf *g, const char *key, double *out);
bool lethe_gguf_get_bool(const lethe_gguf *g, const char *key, bool *out);
/* A string copied into buf (NUL-terminated, truncated to buf_size-1). */
bool lethe_gguf_get_str(const lethe_gguf *g, const char *key, char *buf, size_t buf_size);

/* Render any value as text (arrays abbreviated) — for `lethe` and the API. */
int lethe_gguf_kv_to_string(const lethe_gguf_kv *kv, char *buf, size_t buf_size);

#endif
