/* cpu_kernels.h — internal interface between the CPU backend's graph loop
 * (cpu_backend.c) and its kernels (cpu_matmul.c, cpu_quant.c,
 * cpu_attention.c, cpu_ops.c).
 *
 * Every node kernel is called by ALL threads of the OpenMP region with
 * (ith, nth); it computes its share and may use lethe_cpu_barrier_wait(ex->bar)
 * internally (all threads reach the same barriers because they all run the
 * same kernel). Scratch comes from the context: `shared` (one block seen by
 * all threads) and `ws[ith]` (per thread), both sized before the region by
 * lethe_cpu_*_ws() so no kernel allocates.
 */
#ifndef LETHE_CPU_KERNELS_H
#define LETHE_CPU_KERNELS_H

#include "backend.h"
#include "common.h"
#include "dtype.h"
#include "graph.h"
#include "rope_freq.h"   /* lethe_rope_inv_freq, shared with the GPU backends */

#include <math.h>
#include <sched.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#if defined(__x86_64__) || defined(__i386__)
#  include <immintrin.h>
static inline void lethe_cpu_relax(void) { _mm_pause(); }
#elif defined(__aarch64__)
static inline void lethe_cpu_relax(void) { __asm__ __volatile__("yield"); }
#else
static inline void lethe_cpu_relax(void) {}
#endif

/* Activations quantized for the integer dot products against 32-element
 * weight blocks (q4_0, q4_1, q5_0, q5_1, q8_0). d and s (= d * sum(qs), the
 * term the weight minimum m multiplies for q4_1 / q5_1) are held as f32 for
 * speed but rounded through f16 exactly as GGUF's q8_0 / q8_1 blocks store
 * them: the same values llama.cpp computes with, so the two engines agree to
 * the last bit wherever their sums run in the same order. */
static inline float lethe_f16_round(float x) { return lethe_f16_to_f32(lethe_f32_to_f16(x)); }

/* e^x as attention's AVX-512 exp512 computes it, one lane: x clamped to
 * [-104, 88], x = n ln2 + r with |r| <= ln2/2 (ln2 in two parts, fused),
 * degree-6 Taylor by fused Horner steps (relative error ~1e-7), times 2^n.
 * Used wherever the CPU backend needs exp (softmax weights, SiLU) instead of
 * libm's expf, whose bits vary by libc: every step is a correctly rounded
 * IEEE operation, so the Vulkan shaders reproduce it bit for bit
 * (shaders/exact.glsl exp_det). */
static inline float lethe_cpu_expf(float x) {
    x = fminf(fmaxf(x, -104.0f), 88.0f);
    const float n = nearbyintf(x * 1.44269504f);
    float r = fmaf(-n, 0.693145751953125f, x);
    r = fmaf(-n, 1.428606765330187e-06f, r);
    float p = 1.0f / 720.0f;
    p = fmaf(p, r, 1.0f / 120.0f);
    p = fmaf(p, r, 1.0f / 24.0f);
    p = fmaf(p, r, 1.0f / 6.0f);
    p = fmaf(p, r, 0.5f);
    p = fmaf(p, r, 1.0f);
    p = fmaf(p, r, 1.0f);
    return ldexpf(p, (int)n);
}

typedef struct lethe_cpu_q8a {
    float d, s;
    int8_t qs[32];
} lethe_cpu_q8a; /* 40 B */

/* What a weight type's dot product wants its activations as. */
typedef enum lethe_cpu_act {
    LETHE_CPU_ACT_F32 = 0,  /* f32, f16, bf16 weights: activations stay f32 */
    LETHE_CPU_ACT_Q8A,      /* 32-blocks: lethe_cpu_q8a                      */
    LETHE_CPU_ACT_Q8K,      /* k-quants: lethe_block_q8_k                    */
} lethe_cpu_act;

/* Dot products of `nr` consecutive weight rows (row stride w_stride bytes)
 * with one activation row of k elements in the format the type wants:
 * out[r] = w_r . x. nr is 1..4. */
typedef void (*lethe_cpu_dot_fn)(int64_t k, const void *w, size_t w_stride, int nr,
                                 const void *x, float *out);

/* A tile: nr (1..4) weight rows x nt (1..4) activation rows (stride x_stride
 * bytes): out[t * ldo + r] = w_r . x_t. Each (r, t) result is the same bits
 * `dot` gives (batch invariance). */
typedef void (*lethe_cpu_tile_fn)(int64_t k, const void *w, size_t w_stride, int nr, const void *x,
                                  size_t x_stride, int nt, float *out, size_t ldo);

typedef struct lethe_cpu_type_kernels {
    lethe_cpu_act act;
    lethe_cpu_dot_fn dot;
    lethe_cpu_tile_fn tile; /* NULL: loop over dot */
} lethe_cpu_type_kernels;

/* Kernels of a weight type; NULL dot if the type is not supported. */
const lethe_cpu_type_kernels *lethe_cpu_kernels_for(lethe_dtype t);
/* Bytes of one activation row of k elements in format `a`. */
size_t lethe_cpu_act_row_size(lethe_cpu_act a, int64_t k);
/* Quantize one activation row (k multiple of 32, resp. 256). */
void lethe_cpu_quantize_q8a(const float *x, lethe_cpu_q8a *y, int64_t k);
void lethe_cpu_quantize_q8k(const float *x, lethe_block_q8_k *y, int64_t k);
/* Scalar twin of the SIMD 32-block dot products (tests pin SIMD to it). */
float lethe_cpu_dot32_scalar_ref(lethe_dtype t, int64_t k, const void *w, const lethe_cpu_q8a *x);
/* Fast dequantization of a row (falls back to the dtype.c reference). */
void lethe_cpu_dequant_row(lethe_dtype t, const void *src, float *dst, int64_t k);

/* f32 helpers (SIMD where available). */
float lethe_cpu_dot_f32(int64_t n, const float *a, const float *b);
struct lethe_kv_cache;
/* Whether ATTENTION over this cache with G queries per KV head takes the
 * AVX-512 f16 kernel, which accumulates V rows by fused steps (the generic
 * one multiplies and adds): the Vulkan shader follows the same choice. */
bool lethe_cpu_attention_fused(const struct lethe_kv_cache *kv, int64_t G);
float lethe_cpu_dot_f16_f32(int64_t n, const lethe_f16 *a, const float *b);
void lethe_cpu_f16_to_f32_row(const lethe_f16 *src, float *dst, int64_t n);
void lethe_cpu_f32_to_f16_row(const float *src, lethe_f16 *dst, int64_t n);

/* The barrier between nodes (and inside kernels that share scratch): a
 * generation counter over C11 atomics, as ggml does. A waiter spins briefly
 * (a node is a few microseconds; an OpenMP barrier costs about as much
 * again) and then yields its core, so an oversubscribed machine (tests
 * run 2 processes on 2 cores) still makes progress. */
typedef struct lethe_cpu_barrier {
    _Alignas(64) atomic_int count; /* arrivals in this generation */
    _Alignas(64) atomic_int gen;
    int n;                         /* threads taking part */
    int spins;                     /* pauses before yielding; < 0: OpenMP's barrier */
} lethe_cpu_barrier;

#ifndef LETHE_CPU_BARRIER_SPINS
#define LETHE_CPU_BARRIER_SPINS 2048
#endif

static inline void lethe_cpu_barrier_wait(lethe_cpu_barrier *b) {
    if (b->n <= 1) return;
    if (b->spins < 0) { /* OMP_WAIT_POLICY=passive: waiters sleep in OpenMP's barrier */
        _Pragma("omp barrier");
        return;
    }
    /* read the generation BEFORE arriving: the last arrival bumps it */
    const int gen = atomic_load_explicit(&b->gen, memory_order_relaxed);
    if (atomic_fetch_add_explicit(&b->count, 1, memory_order_acq_rel) == b->n - 1) {
        atomic_store_explicit(&b->count, 0, memory_order_relaxed);
        atomic_store_explicit(&b->gen, gen + 1, memory_order_release);
        return;
    }
    for (int spins = 0; atomic_load_explicit(&b->gen, memory_order_acquire) == gen; spins++) {
        if (spins < b->spins)
            lethe_cpu_relax();
        else
            sched_yield();
    }
}

/* Per-node execution context handed to kernels. */
typedef struct lethe_cpu_exec {
    int ith, nth;
    lethe_cpu_barrier *bar; /* all threads of the region */
    uint8_t *shared;       /* shared scratch, all threads               */
    uint8_t *ws;           /* this thread's scratch                     */
    int *error;            /* shared: set (any thread) to a lethe_status */
} lethe_cpu_exec;

/* Scratch each node needs: per thread and shared (bytes). */
void lethe_cpu_node_ws(const lethe_node *n, int nth, size_t *per_thread, size_t *shared);

/* Node kernels (cpu_matmul.c, cpu_attention.c, cpu_ops.c). */
void lethe_cpu_matmul(const lethe_cpu_exec *ex, lethe_node *n);
void lethe_cpu_matmul_ws(const lethe_node *n, int nth, size_t *per_thread, size_t *shared);
void lethe_cpu_kv_store(const lethe_cpu_exec *ex, lethe_node *n);
void lethe_cpu_attention(const lethe_cpu_exec *ex, lethe_node *n);
void lethe_cpu_attention_ws(const lethe_node *n, int nth, size_t *per_thread, size_t *shared);
void lethe_cpu_get_rows(const lethe_cpu_exec *ex, lethe_node *n);
void lethe_cpu_rms_norm(const lethe_cpu_exec *ex, lethe_node *n);
void lethe_cpu_binary(const lethe_cpu_exec *ex, lethe_node *n); /* ADD, MUL */
void lethe_cpu_rope(const lethe_cpu_exec *ex, lethe_node *n);
void lethe_cpu_rope_ws(const lethe_node *n, int nth, size_t *per_thread, size_t *shared);
void lethe_cpu_swiglu(const lethe_cpu_exec *ex, lethe_node *n);
void lethe_cpu_dms_decision(const lethe_cpu_exec *ex, lethe_node *n);   /* cpu_dms.c */
void lethe_cpu_top_k(const lethe_cpu_exec *ex, lethe_node *n);          /* cpu_topk.c */
/* The FORCED decision for (pos, layer, head): +1 for a `rate` fraction. */
float lethe_dms_forced_logit(int32_t pos, int layer, int head, float rate);

/* Split [0, n) into nth near-equal parts, part ith is [*b, *e); `align`
 * rounds part boundaries to multiples (the last part takes the rest). */
static inline void lethe_cpu_split(int64_t n, int ith, int nth, int64_t align, int64_t *b,
                                   int64_t *e) {
    int64_t units = (n + align - 1) / align;
    int64_t per = units / nth, rem = units % nth;
    int64_t ub = ith * per + (ith < rem ? ith : rem);
    int64_t ue = ub + per + (ith < rem ? 1 : 0);
    *b = ub * align < n ? ub * align : n;
    *e = ue * align < n ? ue * align : n;
}

#define LETHE_CPU_ALIGN 64
static inline size_t lethe_cpu_align_up(size_t x) {
    return (x + LETHE_CPU_ALIGN - 1) & ~(size_t)(LETHE_CPU_ALIGN - 1);
}

#endif
