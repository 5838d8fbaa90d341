/* cpu_dms.c — DMS_DECISION: one eviction logit per token and KV head.
 *
 * Legend: T tokens, Hkv KV heads, G query heads per KV head, D head dim.
 * The decision is cheap (T * Hkv values); one thread computes it, so the
 * result never depends on the thread count.
 */
#include "cpu_kernels.h"

#include <math.h>

/* Deterministic, well-mixed bits of (pos, layer, head): splitmix64. */
static uint64_t mix(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

float lethe_dms_forced_logit(int32_t pos, int layer, int head, float rate) {
    const uint64_t h = mix(((uint64_t)(uint32_t)pos << 24) ^ ((uint64_t)(uint32_t)layer << 12) ^ (uint64_t)(uint32_t)head);
    const double u = (double)(h >> 11) * (1.0 / 9007199254740992.0);   /* [0, 1) */
    return u < (double)rate ? 1.0f : -1.0f;
}

void lethe_cpu_dms_decision(const lethe_cpu_exec *ex, lethe_node *n) {
    if (ex->ith != 0) return;
    const int mode = n->iparams[0], Hkv = n->iparams[1], G = n->iparams[2], layer = n->iparams[4];
    const bool per_layer = n->iparams[3] != 0;
    const float scale = n->fparams[0], offset = n->fparams[1], rate = n->fparams[2];
    const int64_t T = n->ub->n_tokens;
    float *out = (float *)n->t.data;   /* [T, Hkv] */
    for (int64_t t = 0; t < T; t++) {
        for (int h = 0; h < Hkv; h++) {
            const int hs = per_layer ? 0 : h;   /* the head whose decision counts */
            float logit;
            if (mode == LETHE_DMS_FORCED) {
                logit = lethe_dms_forced_logit(n->ub->pos[t], layer, hs, rate);
            } else if (mode == LETHE_DMS_FROM_Q) {
                const lethe_tensor *q = &n->src[0]->t;   /* [T, Hkv*G, D] */
                const int64_t D = q->ne[0];
                const float x = ((const float *)q->data)[((size_t)t * Hkv * G + (size_t)hs * G) * D + D - 1];
                logit = scale * x - offset;
            } else {
                const lethe_tensor *a = &n->src[0]->t;   /* [T, Hkv] or [T, 1] */
                const int64_t w = a->ne[0];
                const float x = ((const float *)a->data)[(size_t)t * w + (w == 1 ? 0 : hs)];
                logit = scale * x - offset;
            }
            out[t * Hkv + h] = logit;
        }
    }
}
