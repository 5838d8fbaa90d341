/* safetensors.h — reader for Hugging Face safetensors files and sharded
 * checkpoints (model.safetensors.index.json).
 *
 * File layout: u64 little-endian header length N, N bytes of JSON
 * {"name": {"dtype": "BF16", "shape": [rows, cols], "data_offsets": [b, e]},
 *  "__metadata__": {...}}, then the data; offsets are relative to the data.
 * Shapes in the JSON are outermost-first; here ne[] is innermost-first like
 * GGUF (ne[0] = the last JSON dimension).
 *
 * Files are mapped and tensor data is used in place. Every header is checked
 * before use: header length past the file, unknown dtypes, shape/dtype
 * disagreeing with the byte count, offsets out of range or overlapping, a
 * tensor named twice, a shard missing — each a status and a message, never a
 * crash.
 */
#ifndef LETHE_SAFETENSORS_H
#define LETHE_SAFETENSORS_H

#include "dtype.h"
#include "lethe.h"
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct lethe_st_tensor {
    char *name;              /* NUL-terminated copy                          */
    char st_dtype[8];        /* as written: "F32", "BF16", "I64", ...        */
    int type;                /* lethe_dtype, or -1 for a dtype lethe lacks   */
    int n_dims;              /* 0..4 (0: scalar)                             */
    int64_t ne[4];           /* ne[0] innermost; unused dims 1               */
    const void *data;        /* in the mapping                               */
    size_t size;             /* bytes                                        */
    int shard;               /* which file                                   */
} lethe_st_tensor;

typedef struct lethe_st_file {
    void *map;               /* mmap'ed bytes (or NULL when parsed from a caller buffer) */
    size_t size;
} lethe_st_file;

typedef struct lethe_safetensors {
    lethe_st_tensor *tensors;
    size_t n_tensors, cap;
    lethe_st_file *files;
    int n_files;
    size_t data_bytes;       /* sum of the tensors' sizes */
} lethe_safetensors;

/* Parse one file held in memory (the caller keeps it alive): tests, fuzzing. */
lethe_safetensors *lethe_safetensors_parse(const void *data, size_t size, lethe_status *status);
/* Open one .safetensors file. */
lethe_safetensors *lethe_safetensors_open(const char *path, lethe_status *status);
/* Open a model directory: model.safetensors.index.json (every shard it names,
 * each tensor in the shard the index says) or else model.safetensors. */
lethe_safetensors *lethe_safetensors_open_dir(const char *dir, lethe_status *status);
void lethe_safetensors_close(lethe_safetensors *st);

const lethe_st_tensor *lethe_safetensors_find(const lethe_safetensors *st, const char *name);

#endif
