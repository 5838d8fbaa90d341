/* cpu_matmul.c — MATMUL: y[T, N] = x[T, K] . w[N, K]^T.
 *
 * Legend: N output rows (weight rows), K inner dim, T tokens.
 *
 * Two paths:
 *  - quantized weights, any T (and float weights at T < LETHE_CPU_GEMM_MIN_T):
 *    the activation rows are quantized once per node into the format the
 *    weight type pairs with (shared scratch, threads split T), then threads
 *    split N and run integer SIMD dot products, 4 weight rows per step so each
 *    activation block is loaded once per 4 rows, all T tokens per row group
 *    so the weight rows are read from memory once. Where the type has a
 *    register tile (AVX-512 VNNI: 4 rows x 4 tokens, each weight block
 *    unpacked once per 4 tokens), tokens go in chunks of TOKENS_PER_CHUNK
 *    whose activations stay cache-resident; the tile gives every (row,
 *    token) the bits of the one-token dot.
 *  - float weights (f32, f16, bf16) at larger T: each thread takes a block
 *    of N rows, converts a tile of them to f32 in its own scratch and calls
 *    single-threaded cblas_sgemm (the backend pins OpenBLAS to 1 thread: the
 *    parallelism is ours).
 * Quantized weights always take the dot path, as llama.cpp does: the
 * result for a token then does not depend on how many tokens share the
 * batch (chunked prefill, one-by-one decode and batched sequences give the
 * same bits), and it is what the peer computes. With the AVX-512 tiles it
 * is also faster than the dequantize+sgemm path it replaced (SmolLM2 pp512
 * went from ~580 to ~900 tokens/s together with the attention rewrite). */
#include "cpu_kernels.h"

#include <cblas.h>
#include <string.h>

/* Below this many tokens the quantized dot path wins. Measured on the
 * SmolLM2 q4_1 shapes (576x1536, 1536x576), one thread, AVX-512 EPYC with
 * OpenBLAS pinned to its Haswell kernels: T=4 dot 2.5-4x faster, T=8 about
 * even, T=16 sgemm ~20% faster, T>=32 even to 10% either way. */
#ifndef LETHE_CPU_GEMM_MIN_T
#define LETHE_CPU_GEMM_MIN_T 16
#endif

#define ROWS_PER_STEP 4
#ifndef TOKENS_PER_CHUNK
#define TOKENS_PER_CHUNK 64
#endif
/* Up to this many tokens every thread quantizes all activation rows into
 * its own scratch (a few hundred ns of duplicated work) instead of sharing
 * one copy, which would cost a barrier per matmul: decode then has one
 * barrier per node, the one between nodes. */
#define PRIVATE_ACT_MAX_T 4

static bool use_gemm(const lethe_node *n) {
    const lethe_tensor *w = &n->src[0]->t;
    if (lethe_dtype_get(w->type)->quantized) return false;
    const int64_t T = lethe_tensor_nelements(&n->src[1]->t) / w->ne[0];
    return T >= LETHE_CPU_GEMM_MIN_T;
}

/* Weight rows per dequantized tile: keep a tile around 256 KiB (L2-resident). */
static int64_t tile_rows(int64_t K) {
    int64_t r = (256 * 1024) / (K * (int64_t)sizeof(float));
    r = r / 16 * 16;
    return r < 16 ? 16 : r > 256 ? 256 : r;
}

void lethe_cpu_matmul_ws(const lethe_node *n, int nth, size_t *per_thread, size_t *shared) {
    const lethe_tensor *w = &n->src[0]->t;
    const int64_t K = w->ne[0], T = lethe_tensor_nelements(&n->src[1]->t) / K;
    *per_thread = 0;
    *shared = 0;
    if (use_gemm(n)) {
        if (w->type != LETHE_F32) *per_thread = (size_t)tile_rows(K) * (size_t)K * sizeof(float);
        return;
    }
    const lethe_cpu_type_kernels *kk = lethe_cpu_kernels_for(w->type);
    if (!kk || kk->act == LETHE_CPU_ACT_F32) return;
    const size_t bytes = (size_t)T * lethe_cpu_act_row_size(kk->act, K);
    if (T <= PRIVATE_ACT_MAX_T)
        *per_thread = bytes;
    else
        *shared = bytes;
}

static void matmul_gemm(const lethe_cpu_exec *ex, lethe_node *n) {
    const lethe_tensor *w = &n->src[0]->t, *x = &n->src[1]->t;
    const int64_t K = w->ne[0], N = w->ne[1], T = lethe_tensor_nelements(x) / K;
    const int64_t ldx = K, ldy = N; /* contiguous activations [T, K] -> [T, N] */
    const float *X = x->data;
    float *Y = n->t.data;
    const int64_t tile = w->type == LETHE_F32 ? 1 << 30 : tile_rows(K);
    int64_t b, e;
    lethe_cpu_split(N, ex->ith, ex->nth, 16, &b, &e);
    for (int64_t n0 = b; n0 < e; n0 += tile) {
        const int64_t nt = LETHE_MIN(tile, e - n0);
        const float *W;
        int64_t ldw;
        if (w->type == LETHE_F32) {
            W = (const float *)((const uint8_t *)w->data + (size_t)n0 * w->nb[1]);
            ldw = (int64_t)(w->nb[1] / sizeof(float));
        } else {
            float *tw = (float *)ex->ws; /* [nt, K] */
            for (int64_t r = 0; r < nt; r++)
                lethe_cpu_dequant_row(w->type, (const uint8_t *)w->data + (size_t)(n0 + r) * w->nb[1],
                                      tw + r * K, K);
            W = tw;
            ldw = K;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)T, (int)nt, (int)K, 1.0f, X, (int)ldx,
                    W, (int)ldw, 0.0f, Y + n0, (int)ldy);
    }
}

static void matmul_dot(const lethe_cpu_exec *ex, lethe_node *n) {
    const lethe_tensor *w = &n->src[0]->t, *x = &n->src[1]->t;
    const int64_t K = w->ne[0], N = w->ne[1], T = lethe_tensor_nelements(x) / K;
    const lethe_cpu_type_kernels *kk = lethe_cpu_kernels_for(w->type);
    const size_t ldy = (size_t)N; /* contiguous [T, N] */
    float *Y = n->t.data;

    /* 1. activations in the weight type's format: act [T][row] */
    const uint8_t *act;
    size_t act_stride;
    if (kk->act == LETHE_CPU_ACT_F32) {
        act = x->data;
        act_stride = (size_t)K * sizeof(float);
    } else {
        act_stride = lethe_cpu_act_row_size(kk->act, K);
        const bool priv = T <= PRIVATE_ACT_MAX_T;
        uint8_t *dst = priv ? ex->ws : ex->shared;
        int64_t tb = 0, te = T;
        if (!priv) lethe_cpu_split(T, ex->ith, ex->nth, 1, &tb, &te);
        for (int64_t t = tb; t < te; t++) {
            const float *xr = (const float *)x->data + (size_t)t * (size_t)K;
            if (kk->act == LETHE_CPU_ACT_Q8A)
                lethe_cpu_quantize_q8a(xr, (lethe_cpu_q8a *)(dst + (size_t)t * act_stride), K);
            else
                lethe_cpu_quantize_q8k(xr, (lethe_block_q8_k *)(dst + (size_t)t * act_stride), K);
        }
        act = dst;
        if (!priv) lethe_cpu_barrier_wait(ex->bar);
    }

    /* 2. threads split N; each step: up to 4 weight rows x all T tokens */
    int64_t b, e;
    lethe_cpu_split(N, ex->ith, ex->nth, ROWS_PER_STEP, &b, &e);
    const uint8_t *W = w->data;
    if (kk->tile) {
        /* tiles of 4 rows x 4 tokens; tokens in chunks whose activations
         * stay in L1/L2 while the thread's weight rows stream past them */
        for (int64_t t0 = 0; t0 < T; t0 += TOKENS_PER_CHUNK) {
            const int64_t tc = LETHE_MIN(TOKENS_PER_CHUNK, T - t0);
            for (int64_t n0 = b; n0 < e; n0 += ROWS_PER_STEP) {
                const int nr = (int)LETHE_MIN(ROWS_PER_STEP, e - n0);
                const uint8_t *wr = W + (size_t)n0 * w->nb[1];
                for (int64_t t = t0; t < t0 + tc; t += 4) {
                    const int nt = (int)LETHE_MIN(4, t0 + tc - t);
                    kk->tile(K, wr, w->nb[1], nr, act + (size_t)t * act_stride, act_stride, nt,
                             Y + (size_t)t * ldy + n0, ldy);
                }
            }
        }
        return;
    }
    for (int64_t n0 = b; n0 < e; n0 += ROWS_PER_STEP) {
        const int nr = (int)LETHE_MIN(ROWS_PER_STEP, e - n0);
        const uint8_t *wr = W + (size_t)n0 * w->nb[1];
        for (int64_t t = 0; t < T; t++) {
            float out[ROWS_PER_STEP];
            kk->dot(K, wr, w->nb[1], nr, act + (size_t)t * act_stride, out);
            memcpy(Y + (size_t)t * ldy + n0, out, (size_t)nr * sizeof(float));
        }
    }
}

void lethe_cpu_matmul(const lethe_cpu_exec *ex, lethe_node *n) {
    if (use_gemm(n))
        matmul_gemm(ex, n);
    else
        matmul_dot(ex, n);
}
