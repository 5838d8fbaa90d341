/* tensor.h — a typed view of memory with up to 4 dimensions.
 *
 * Dimension order follows GGUF/ggml: ne[0] is the innermost, contiguous
 * dimension (a row), ne[1] rows, ne[2], ne[3] outer. nb[i] is the stride of
 * dimension i in bytes; nb[0] is the element (or block) size. A weight matrix
 * W of a linear layer y = W x has ne = {n_in, n_out}: one row per output.
 */
#ifndef LETHE_TENSOR_H
#define LETHE_TENSOR_H

#include "dtype.h"
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define LETHE_MAX_DIMS 4

struct lethe_buffer;

typedef struct lethe_tensor {
    lethe_dtype type;
    int64_t ne[LETHE_MAX_DIMS];   /* elements per dimension; unused dims are 1 */
    size_t nb[LETHE_MAX_DIMS];    /* byte strides                              */
    void *data;                   /* host address, or NULL if only on a device */
    struct lethe_buffer *buf;     /* buffer holding the data (NULL: host-only) */
    size_t offs;                  /* offset of the data within buf             */
    char name[64];
} lethe_tensor;

/* Fill ne/nb for a contiguous tensor of the given type and shape. */
void lethe_tensor_init(lethe_tensor *t, lethe_dtype type, int n_dims, const int64_t *ne);
int64_t lethe_tensor_nelements(const lethe_tensor *t);
int64_t lethe_tensor_nrows(const lethe_tensor *t);   /* ne[1]*ne[2]*ne[3] */
size_t lethe_tensor_nbytes(const lethe_tensor *t);   /* contiguous size   */
bool lethe_tensor_is_contiguous(const lethe_tensor *t);

#endif
