/* cpu_topk.c — TOP_K: the reference every backend's selection is tested
 * against, and what the CPU runs.
 *
 * Legend: T rows (tokens asking for output), V row width (vocabulary),
 * k pairs kept per row.
 *
 * Order (graph.h, the host sampler's cand_before in core/sampler.c): higher
 * value first, equal values to the lower id, NaN after every number with
 * NaNs among themselves by id. Written with float comparisons, as the
 * sampler is, so the tests check the device kernels' integer keys
 * (shaders/top_k.comp, backends/cuda/cuda_topk.cuh) against this rule and
 * not against themselves.
 */
#include "cpu_kernels.h"

#include <string.h>

/* a comes before b (ids differ) */
static inline bool before(float va, int32_t ia, float vb, int32_t ib) {
    if (isnan(vb)) return !isnan(va) || ia < ib;
    if (isnan(va)) return false;
    if (va != vb) return va > vb;
    return ia < ib;
}

/* One row: a sorted list of the best k seen so far, filled by insertion. A
 * new element is first compared with the current k-th, so a row costs ~V
 * comparisons unless it is sorted ascending (then O(V k), still < 20 M
 * steps at V = 152k, k = 128). */
static void top_k_row(const float *x, int64_t V, int k, int32_t *out /* [k][2] */) {
    int n = 0;
    for (int64_t i = 0; i < V; i++) {
        const float v = x[i];
        const int32_t id = (int32_t)i;
        if (n == k) {
            float wv;
            memcpy(&wv, &out[2 * (k - 1) + 1], sizeof wv);
            if (!before(v, id, wv, out[2 * (k - 1)])) continue;
            n--;   /* the worst drops out */
        }
        int j = n;
        while (j > 0) {
            float pv;
            memcpy(&pv, &out[2 * (j - 1) + 1], sizeof pv);
            if (!before(v, id, pv, out[2 * (j - 1)])) break;
            out[2 * j] = out[2 * (j - 1)];
            out[2 * j + 1] = out[2 * (j - 1) + 1];
            j--;
        }
        out[2 * j] = id;
        memcpy(&out[2 * j + 1], &v, sizeof v);
        n++;
    }
}

/* TOP_K: x [T, V] f32 -> [T, k, 2] i32 (id, value bits); threads split rows. */
void lethe_cpu_top_k(const lethe_cpu_exec *ex, lethe_node *n) {
    const lethe_tensor *x = &n->src[0]->t;
    const int64_t V = x->ne[0], T = lethe_tensor_nrows(x);
    const int k = n->iparams[0];
    int64_t b, e;
    lethe_cpu_split(T, ex->ith, ex->nth, 1, &b, &e);
    for (int64_t t = b; t < e; t++)
        top_k_row((const float *)x->data + (size_t)t * (size_t)V, V, k, (int32_t *)n->t.data + (size_t)t * 2 * k);
}
