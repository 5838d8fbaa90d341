/* ref_model.c — float64 dense reference forward pass with KV policies.
 * See ref_model.h. Written for clarity, not speed: tests use tiny models. */
#include "ref_model.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const float *W(const lethe_tensor *t) { return (const float *)t->data; }

static void rmsnorm(const double *x, int n, const float *w, double eps, double *y) {
    double ss = 0;
    for (int i = 0; i < n; i++) ss += x[i] * x[i];
    const double r = 1.0 / sqrt(ss / n + eps);
    for (int i = 0; i < n; i++) y[i] = x[i] * r * (w ? w[i] : 1.0);
}

/* y[rows] = w[rows, cols] x[cols] */
static void matvec(const float *w, int rows, int cols, const double *x, double *y) {
    for (int r = 0; r < rows; r++) {
        double s = 0;
        for (int c = 0; c < cols; c++) s += (double)w[(size_t)r * cols + c] * x[c];
        y[r] = s;
    }
}

static void rope(double *x, int D, int pos, const lethe_rope_params *p) {
    const int half = D / 2;
    for (int i = 0; i < half; i++) {
        const double th = pos * pow((double)p->freq_base, -2.0 * i / D);
        const double c = cos(th), s = sin(th);
        const int a = p->mode == LETHE_ROPE_NEOX ? i : 2 * i, b = p->mode == LETHE_ROPE_NEOX ? i + half : 2 * i + 1;
        const double x0 = x[a], x1 = x[b];
        x[a] = x0 * c - x1 * s;
        x[b] = x0 * s + x1 * c;
    }
}

double ref_worst_rel(const float *got, const double *ref, int N, int V) {
    double worst = 0;
    for (int t = 0; t < N; t++) {
        double mx = 0, err = 0;
        for (int i = 0; i < V; i++) {
            mx = fmax(mx, fabs(ref[(size_t)t * V + i]));
            err = fmax(err, fabs(got[(size_t)t * V + i] - ref[(size_t)t * V + i]));
        }
        if (!(err == err)) return INFINITY;
        worst = fmax(worst, err / mx);
    }
    return worst;
}

/* QUEST: pages of 32 positions; the query's own page plus the best
 * budget/32 - 1 others by max over the group of sum_d max(q mn, q mx). */
static void quest_pages(int i, int D, int G, const double *qg, const double *k_h, int Hkv, int budget,
                        uint8_t *use) {
    const int P = 32, n_pages = i / P + 1;
    int kp = budget / P > 0 ? budget / P : 1;
    double *bound = malloc(sizeof(double) * n_pages);
    for (int p = 0; p < n_pages; p++) {
        double best = -INFINITY;
        for (int g = 0; g < G; g++) {
            double b = 0;
            for (int d = 0; d < D; d++) {
                double mn = INFINITY, mx = -INFINITY;
                for (int j = p * P; j < p * P + P && j <= i; j++) {
                    const double kv = k_h[(size_t)j * Hkv * D + d];
                    mn = fmin(mn, kv);
                    mx = fmax(mx, kv);
                }
                b += fmax(qg[g * D + d] * mn, qg[g * D + d] * mx);
            }
            best = fmax(best, b);
        }
        bound[p] = best;
    }
    memset(use, 0, (size_t)n_pages);
    if (n_pages <= kp) {
        memset(use, 1, (size_t)n_pages);
    } else {
        use[i / P] = 1;
        for (int left = kp - 1; left > 0; left--) {
            int b = -1;
            for (int p = 0; p < n_pages; p++)
                if (!use[p] && (b < 0 || bound[p] > bound[b])) b = p;
            use[b] = 1;
        }
    }
    free(bound);
}

void ref_forward(const lethe_model *m, const int32_t *tok, int N, const ref_policy *pol, double *logits,
                 uint8_t *flag_out, uint8_t *alive_out) {
    const lethe_hparams *hp = &m->hp;
    const int E = hp->n_embd, D = hp->head_dim, Hq = hp->n_head, Hkv = hp->n_head_kv, G = Hq / Hkv;
    const int F = hp->n_ff, V = hp->n_vocab, L = hp->n_layer;
    const double eps = hp->norm_eps;
    const int big = Hq * D > E ? Hq * D : E;
    double *x = calloc((size_t)N * E, sizeof(double)), *h = malloc(sizeof(double) * E);
    double *q = malloc(sizeof(double) * (size_t)N * Hq * D), *k = malloc(sizeof(double) * (size_t)N * Hkv * D);
    double *v = malloc(sizeof(double) * (size_t)N * Hkv * D), *att = malloc(sizeof(double) * Hq * D);
    double *o = malloc(sizeof(double) * E), *g = malloc(sizeof(double) * F), *u = malloc(sizeof(double) * F);
    double *p = malloc(sizeof(double) * (size_t)Hq * N), *dec = malloc(sizeof(double) * (size_t)N * Hkv);
    double *tmp = malloc(sizeof(double) * big), *acc = malloc(sizeof(double) * (size_t)Hkv * N);
    double *wavg = malloc(sizeof(double) * N);
    uint8_t *flag = calloc((size_t)N * Hkv, 1), *alive = calloc((size_t)Hkv * N, 1);
    uint8_t *use = malloc((size_t)N / 32 + 2);
    for (int t = 0; t < N; t++)
        for (int e = 0; e < E; e++) x[(size_t)t * E + e] = W(&m->tok_embd)[(size_t)tok[t] * E + e];
    for (int l = 0; l < L; l++) {
        const lethe_layer *Ly = &m->layers[l];
        for (int t = 0; t < N; t++) {
            double *xt = x + (size_t)t * E, *qt = q + (size_t)t * Hq * D, *kt = k + (size_t)t * Hkv * D;
            double *vt = v + (size_t)t * Hkv * D;
            if (hp->dms.variant == LETHE_DMS_ADAPTER) {
                const int rows = (int)Ly->dms_alpha.ne[1];
                rmsnorm(xt, E, W(&Ly->dms_alpha_norm), eps, h);
                matvec(W(&Ly->dms_alpha), rows, E, h, tmp);
                for (int hk = 0; hk < Hkv; hk++) dec[t * Hkv + hk] = tmp[rows == 1 || hp->dms.per_layer ? 0 : hk];
            }
            rmsnorm(xt, E, W(&Ly->attn_norm), eps, h);
            matvec(W(&Ly->wq), Hq * D, E, h, qt);
            matvec(W(&Ly->wk), Hkv * D, E, h, kt);
            matvec(W(&Ly->wv), Hkv * D, E, h, vt);
            if (hp->qkv_bias) {
                for (int i = 0; i < Hq * D; i++) qt[i] += W(&Ly->bq)[i];
                for (int i = 0; i < Hkv * D; i++) { kt[i] += W(&Ly->bk)[i]; vt[i] += W(&Ly->bv)[i]; }
            }
            if (hp->qk_norm) {
                for (int hh = 0; hh < Hq; hh++) { rmsnorm(qt + hh * D, D, W(&Ly->q_norm), eps, tmp); memcpy(qt + hh * D, tmp, sizeof(double) * D); }
                for (int hh = 0; hh < Hkv; hh++) { rmsnorm(kt + hh * D, D, W(&Ly->k_norm), eps, tmp); memcpy(kt + hh * D, tmp, sizeof(double) * D); }
            }
            if (hp->dms.variant == LETHE_DMS_NEURON)   /* first query head of the group, last channel, pre-RoPE */
                for (int hk = 0; hk < Hkv; hk++) dec[t * Hkv + hk] = qt[(size_t)(hp->dms.per_layer ? 0 : hk) * G * D + D - 1];
            for (int hh = 0; hh < Hq; hh++) {
                const bool borrow = hp->dms.variant == LETHE_DMS_NEURON && hh % G == 0;
                if (borrow) qt[hh * D + D - 1] = 0;
                rope(qt + hh * D, D, t, &hp->rope);
                if (borrow) qt[hh * D + D - 1] = 0;
            }
            for (int hh = 0; hh < Hkv; hh++) rope(kt + hh * D, D, t, &hp->rope);
        }
        /* DMS: token j is flagged by token j+1's decision */
        for (int j = 0; j < N; j++)
            for (int hk = 0; hk < Hkv; hk++)
                flag[j * Hkv + hk] = pol->rule == REF_DMS && j + 1 < N &&
                                     hp->dms.alpha_scale * dec[(j + 1) * Hkv + hk] - hp->dms.alpha_offset > 0;
        memset(alive, 0, (size_t)Hkv * N);
        memset(acc, 0, sizeof(double) * (size_t)Hkv * N);
        for (int i = 0; i < N; i++) {
            for (int hk = 0; hk < Hkv; hk++) alive[hk * N + i] = 1;   /* inserted before it attends */
            for (int hk = 0; hk < Hkv; hk++) {
                const double *qg = q + ((size_t)i * Hq + (size_t)hk * G) * D;
                if (pol->rule == REF_QUEST) quest_pages(i, D, G, qg, k + (size_t)hk * D, Hkv, pol->budget, use);
                for (int gg = 0; gg < G; gg++) {
                    const int hh = hk * G + gg;
                    double *ph = p + (size_t)hh * N, mx = -INFINITY, sum = 0;
                    for (int j = 0; j <= i; j++) {
                        bool vis = alive[hk * N + j];
                        if (pol->rule == REF_DMS) vis = i - j <= pol->window || !flag[j * Hkv + hk];
                        if (pol->rule == REF_QUEST) vis = vis && use[j / 32];
                        ph[j] = -INFINITY;
                        if (!vis) continue;
                        double s = 0;
                        for (int d = 0; d < D; d++) s += qg[gg * D + d] * k[((size_t)j * Hkv + hk) * D + d];
                        ph[j] = s / sqrt((double)D);
                        mx = fmax(mx, ph[j]);
                    }
                    for (int j = 0; j <= i; j++) {
                        ph[j] = ph[j] == -INFINITY ? 0 : exp(ph[j] - mx);
                        sum += ph[j];
                    }
                    for (int d = 0; d < D; d++) att[hh * D + d] = 0;
                    for (int j = 0; j <= i; j++) {
                        ph[j] /= sum;
                        for (int d = 0; d < D; d++) att[hh * D + d] += ph[j] * v[((size_t)j * Hkv + hk) * D + d];
                    }
                }
                /* the policy's update after query i, as the engine's commit */
                uint8_t *al = alive + (size_t)hk * N;
                const int next = i + 1;
                for (int j = 0; j <= i; j++) {
                    wavg[j] = 0;
                    for (int gg = 0; gg < G; gg++) wavg[j] += p[(size_t)(hk * G + gg) * N + j];
                    wavg[j] /= G;
                    acc[hk * N + j] += wavg[j];
                }
                int live = 0;
                for (int j = 0; j <= i; j++) live += al[j];
                switch (pol->rule) {
                case REF_DMS:
                    for (int j = 0; j <= i; j++)
                        if (flag[j * Hkv + hk] && j + pol->window + 1 <= next) al[j] = 0;
                    break;
                case REF_WINDOW:
                    for (int j = pol->sinks; j <= i; j++)
                        if (j + (pol->budget - pol->sinks) <= next) al[j] = 0;
                    break;
                case REF_TOVA:
                case REF_H2O:
                    for (; live > pol->budget; live--) {
                        const double *sc = pol->rule == REF_TOVA ? wavg : acc + (size_t)hk * N;
                        const int upto = pol->rule == REF_TOVA ? i : next - pol->recent - 1;
                        int b = -1;
                        for (int j = 0; j <= upto && j <= i; j++)
                            if (al[j] && (b < 0 || sc[j] < sc[b])) b = j;
                        if (b < 0) break;
                        al[b] = 0;
                    }
                    break;
                default:
                    break;
                }
            }
            double *xi = x + (size_t)i * E;
            matvec(W(&Ly->wo), E, Hq * D, att, o);
            for (int e = 0; e < E; e++) o[e] += xi[e];   /* o: the residual after attention */
            rmsnorm(o, E, W(&Ly->ffn_norm), eps, h);
            matvec(W(&Ly->w_gate), F, E, h, g);
            matvec(W(&Ly->w_up), F, E, h, u);
            for (int f = 0; f < F; f++) g[f] = g[f] / (1.0 + exp(-g[f])) * u[f];
            matvec(W(&Ly->w_down), E, F, g, h);
            for (int e = 0; e < E; e++) xi[e] = o[e] + h[e];   /* k/v of this layer were taken above */
        }
        if (flag_out) memcpy(flag_out + (size_t)l * N * Hkv, flag, (size_t)N * Hkv);
        if (alive_out) memcpy(alive_out + (size_t)l * Hkv * N, alive, (size_t)Hkv * N);
    }
    if (logits)
        for (int t = 0; t < N; t++) {
            rmsnorm(x + (size_t)t * E, E, W(&m->output_norm), eps, h);
            matvec(W(&m->output), V, E, h, logits + (size_t)t * V);
        }
    free(x); free(h); free(q); free(k); free(v); free(att); free(o); free(g); free(u); free(p); free(dec);
    free(tmp); free(acc); free(wavg); free(flag); free(alive); free(use);
}
