/* tensor.c — shapes and strides. */
#include "tensor.h"

#include <string.h>

void lethe_tensor_init(lethe_tensor *t, lethe_dtype type, int n_dims, const int64_t *ne) {
    memset(t, 0, sizeof *t);
    t->type = type;
    for (int i = 0; i < LETHE_MAX_DIMS; i++) t->ne[i] = i < n_dims ? ne[i] : 1;
    const lethe_dtype_traits *tr = lethe_dtype_get(type);
    t->nb[0] = tr ? tr->type_size : 0;
    t->nb[1] = lethe_row_size(type, t->ne[0]);
    for (int i = 2; i < LETHE_MAX_DIMS; i++) t->nb[i] = t->nb[i - 1] * (size_t)t->ne[i - 1];
}

int64_t lethe_tensor_nelements(const lethe_tensor *t) {
    return t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
}

int64_t lethe_tensor_nrows(const lethe_tensor *t) { return t->ne[1] * t->ne[2] * t->ne[3]; }

size_t lethe_tensor_nbytes(const lethe_tensor *t) {
    return lethe_row_size(t->type, t->ne[0]) * (size_t)lethe_tensor_nrows(t);
}

bool lethe_tensor_is_contiguous(const lethe_tensor *t) {
    if (t->nb[1] != lethe_row_size(t->type, t->ne[0])) return false;
    for (int i = 2; i < LETHE_MAX_DIMS; i++)
        if (t->nb[i] != t->nb[i - 1] * (size_t)t->ne[i - 1]) return false;
    return true;
}
