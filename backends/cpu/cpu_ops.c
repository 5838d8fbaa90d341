/* cpu_ops.c — the small ops: GET_ROWS, RMS_NORM, ADD/MUL, ROPE, SWIGLU.
 *
 * Legend: T tokens (rows), E / N / F row widths, H heads, D head dim,
 * R gathered rows. Threads split rows; f32 activations, contiguous.
 */
#include "cpu_kernels.h"

#include <math.h>
#include <string.h>

/* Activations are contiguous (the backend refuses others); a node may have
 * been reshaped after its consumers were built, so row widths come from the
 * source's ne[0] and rows are addressed as [rows, width] — never from the
 * output's nb[]. */
#define ROW(t, i, w) ((float *)(t)->data + (size_t)(i) * (size_t)(w))
#define CROW(t, i, w) ((const float *)(t)->data + (size_t)(i) * (size_t)(w))

/* GET_ROWS: w [N, E] any dtype, ids [R] i32 -> [R, E] f32. An id outside
 * [0, N) is bad input: the row is zeroed and the node reports INVALID_ARG. */
void lethe_cpu_get_rows(const lethe_cpu_exec *ex, lethe_node *n) {
    const lethe_tensor *w = &n->src[0]->t, *ids = &n->src[1]->t;
    const int64_t E = w->ne[0], N = w->ne[1], R = lethe_tensor_nelements(ids);
    const int32_t *id = ids->data;
    int64_t b, e;
    lethe_cpu_split(R, ex->ith, ex->nth, 1, &b, &e);
    for (int64_t r = b; r < e; r++) {
        float *dst = ROW(&n->t, r, E);
        if (id[r] < 0 || id[r] >= N) {
            memset(dst, 0, (size_t)E * sizeof(float));
            __atomic_store_n(ex->error, (int)LETHE_ERR_INVALID_ARG, __ATOMIC_RELAXED);
            continue;
        }
        lethe_cpu_dequant_row(w->type, (const uint8_t *)w->data + (size_t)id[r] * w->nb[1], dst, E);
    }
}

/* RMS_NORM: x [T, E], w [E] or none -> y = x / sqrt(mean(x^2) + eps) * w. */
void lethe_cpu_rms_norm(const lethe_cpu_exec *ex, lethe_node *n) {
    const lethe_tensor *x = &n->src[0]->t;
    const float *wt = n->src[1] ? n->src[1]->t.data : NULL;
    const int64_t E = x->ne[0], T = lethe_tensor_nrows(x);
    const float eps = n->fparams[0];
    int64_t b, e;
    lethe_cpu_split(T, ex->ith, ex->nth, 1, &b, &e);
    for (int64_t t = b; t < e; t++) {
        const float *xr = CROW(x, t, E);
        float *y = ROW(&n->t, t, E);
        double ss = 0.0; /* double: E up to ~8k squares, keeps the element-wise 1e-7 bound */
        for (int64_t i = 0; i < E; i++) ss += (double)xr[i] * xr[i];
        const float scale = (float)(1.0 / sqrt(ss / (double)E + (double)eps));
        if (wt)
            for (int64_t i = 0; i < E; i++) y[i] = xr[i] * scale * wt[i];
        else
            for (int64_t i = 0; i < E; i++) y[i] = xr[i] * scale;
    }
}

/* ADD / MUL: a [T, N], b [T, N] or [N] (one row, broadcast over T). */
void lethe_cpu_binary(const lethe_cpu_exec *ex, lethe_node *n) {
    const lethe_tensor *a = &n->src[0]->t, *bt = &n->src[1]->t;
    const int64_t N = a->ne[0], T = lethe_tensor_nrows(a);
    const bool bcast = lethe_tensor_nrows(bt) == 1;
    const bool add = n->op == LETHE_OP_ADD;
    int64_t b, e;
    lethe_cpu_split(T, ex->ith, ex->nth, 1, &b, &e);
    for (int64_t t = b; t < e; t++) {
        const float *x = CROW(a, t, N), *y = CROW(bt, bcast ? 0 : t, N);
        float *z = ROW(&n->t, t, N);
        if (add)
            for (int64_t i = 0; i < N; i++) z[i] = x[i] + y[i];
        else
            for (int64_t i = 0; i < N; i++) z[i] = x[i] * y[i];
    }
}

/* SWIGLU: gate [T, F], up [T, F] -> silu(gate) * up (exp: lethe_cpu_expf, which
 * the Vulkan shader reproduces exactly). */
void lethe_cpu_swiglu(const lethe_cpu_exec *ex, lethe_node *n) {
    const lethe_tensor *g = &n->src[0]->t, *u = &n->src[1]->t;
    const int64_t F = g->ne[0], T = lethe_tensor_nrows(g);
    int64_t b, e;
    lethe_cpu_split(T, ex->ith, ex->nth, 1, &b, &e);
    for (int64_t t = b; t < e; t++) {
        const float *gr = CROW(g, t, F), *ur = CROW(u, t, F);
        float *z = ROW(&n->t, t, F);
        for (int64_t i = 0; i < F; i++) z[i] = gr[i] / (1.0f + lethe_cpu_expf(-gr[i])) * ur[i];
    }
}

void lethe_cpu_rope_ws(const lethe_node *n, int nth, size_t *per_thread, size_t *shared) {
    /* inverse frequencies (double), cos and sin of the current token (float),
     * one row for the DMS borrowed channel */
    *per_thread = (size_t)(n->rope.n_rot / 2 + 1) * (sizeof(double) + 2 * sizeof(float)) +
                  (size_t)n->src[0]->t.ne[0] * sizeof(float);
    *shared = 0;
}

/* ROPE: x [T, H, D] -> rotated copy; token t at angle pos[t] * inv_freq(i).
 * NORM pairs (2i, 2i+1); NEOX pairs (i, i + n_rot/2). Dims >= n_rot copied.
 * DMS borrowed channel (iparams[0] = G > 0): in heads h % G == 0 the last
 * channel is zeroed before the rotation (so its partner rotates alone) and
 * again after it. */
void lethe_cpu_rope(const lethe_cpu_exec *ex, lethe_node *n) {
    const lethe_tensor *x = &n->src[0]->t;
    const lethe_rope_params *p = &n->rope;
    const int64_t D = x->ne[0], T = n->ub->n_tokens, H = lethe_tensor_nelements(x) / (D * T);
    const int half = p->n_rot / 2;
    double *invf = (double *)ex->ws;
    float *cs = (float *)(invf + half), *sn = cs + half;
    float *row = sn + half + 1;   /* [D] the borrowed-channel copy */
    const int64_t G = n->iparams[0];
    for (int i = 0; i < half; i++) invf[i] = lethe_rope_inv_freq(p, i);
    int64_t b, e;
    lethe_cpu_split(T * H, ex->ith, ex->nth, 1, &b, &e);
    int64_t cur_t = -1;
    for (int64_t r = b; r < e; r++) {
        const int64_t t = r / H;
        if (t != cur_t) {
            const double pos = (double)n->ub->pos[t];
            for (int i = 0; i < half; i++) {
                /* the angle in double: positions reach 1e5+, f32 would lose the phase */
                const double th = pos * invf[i];
                cs[i] = (float)cos(th);
                sn[i] = (float)sin(th);
            }
            cur_t = t;
        }
        const float *src = (const float *)x->data + (size_t)r * (size_t)D; /* r = t * H + h */
        float *dst = (float *)n->t.data + (size_t)r * (size_t)D;
        const bool borrow = G > 0 && (r % H) % G == 0;
        if (borrow) {
            memcpy(row, src, (size_t)D * sizeof(float));
            row[D - 1] = 0.0f;
            src = row;
        }
        if (p->mode == LETHE_ROPE_NEOX) {
            for (int i = 0; i < half; i++) {
                const float x0 = src[i], x1 = src[i + half];
                dst[i] = x0 * cs[i] - x1 * sn[i];
                dst[i + half] = x0 * sn[i] + x1 * cs[i];
            }
        } else {
            for (int i = 0; i < half; i++) {
                const float x0 = src[2 * i], x1 = src[2 * i + 1];
                dst[2 * i] = x0 * cs[i] - x1 * sn[i];
                dst[2 * i + 1] = x0 * sn[i] + x1 * cs[i];
            }
        }
        for (int64_t i = 2 * half; i < D; i++) dst[i] = src[i];
        if (borrow) dst[D - 1] = 0.0f;
    }
}
