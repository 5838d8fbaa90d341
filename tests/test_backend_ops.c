/* test_backend_ops.c — every op of every device backend against the CPU
 * backend (DESIGN.md §5, like llama.cpp's test-backend-ops).
 *
 * ONE table of op cases (op x shape x dtype). Each case is built as a graph
 * with the core/graph.h constructors and run twice through an executor: on
 * the CPU alone (the reference) and with the device backend first. The
 * device run must really place the op on the device (checked), and the
 * results must agree: NMSE = sum (a-b)^2 / sum a^2 <= 1e-7 for element-wise
 * ops, 5e-4 for matmul (the CPU quantizes activations to q8 for quantized
 * weights; the shaders dequantize and multiply in f32); any NaN fails.
 *
 * Device backends: every one found at run time. Vulkan when the build has it
 * (in CI Mesa's lavapipe, pinned by VK_LOADER_DRIVERS_SELECT in
 * tests/CMakeLists.txt; shapes stay small, lavapipe is ~150x slower than
 * BLAS); CUDA when the build has it and the machine has an NVIDIA GPU (else
 * its runs are skipped with a message saying so: CI has no GPU, and
 * tools/gpu-check.sh runs this test on one). A second Vulkan instance with a
 * 4 KiB binding limit (LETHE_VK_MAX_RANGE) runs the "split" cases, which
 * need a weight spread over several bindings, and a third with a 32 KiB limit
 * runs every Vulkan KV case again with the cache's shared buffer spread over
 * several bindings (>= 3, checked; backends/vulkan/vk_ops.c kv_plan). The
 * same executable runs again under the Khronos validation layer (ctest
 * fails on any "VUID-" message).
 *
 * KV_STORE and ATTENTION cases build a small cache in the device's shared
 * memory (backend.h buffer_alloc_shared) with a history of two sequences,
 * ragged per-head lengths (holes and compactions), DMS expiries and a
 * micro-batch mixing both sequences; ref and device runs get identical
 * caches; CUDA-only cases add long streams (flash-decoding's split spans)
 * and batches in runs of one sequence (the tiled prefill kernel). KV_STORE compares the cache afterwards (rows within the limit,
 * every expire exactly: the DMS flags); ATTENTION (stored by a KV_STORE
 * node first) compares the outputs. A device without shared memory, or
 * without these ops (cuda_only-style flags: vk_only), skips them.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "common.h"
#include "dtype.h"
#include "executor.h"
#include "graph.h"
#include "kv_cache.h"
#include "testutil.h"

#define EPS_ELEM 1e-7
#define EPS_MM 5e-4
#define SCORE_REL 1e-5     /* CUDA: TOVA / H2O scores, relative (expf, lane sums: not the CPU's bits) */
#define QUEST_CUDA 1e-9    /* CUDA: QUEST output NMSE (the same pages, f32 sums in another order) */

/* ---------------------------------------------------------- case table */

typedef struct op_case {
    const char *name;
    lethe_op op;
    lethe_dtype wtype;        /* GET_ROWS / MATMUL weights               */
    int64_t a, b, c;          /* shape: see build()                      */
    int rope_mode;            /* ROPE: LETHE_ROPE_NORM / NEOX            */
    int n_rot;                /* ROPE: 0 = D                             */
    bool llama3, freq_factors, no_weight, bcast;
    bool split;               /* run on the 4 KiB-binding device backend */
    int borrow;               /* ROPE: DMS borrowed channel, group G      */
    int dms_mode;             /* DMS_DECISION: lethe_dms_mode            */
    bool cuda_only;           /* ops the Vulkan backend leaves to the CPU */
    bool vk_only;             /* ops the CUDA backend leaves to the CPU   */
    int kv_g;                 /* KV_STORE / ATTENTION: G = Hq / Hkv       */
    bool kv_f16;              /* KV cache dtype F16 (else F32)            */
    bool kv_dms;              /* KV_STORE: with DMS decisions             */
    int kv_hist;              /* KV: history of sequence 0 (0: 37 tokens) */
    bool kv_runs;             /* KV: the batch in runs of one sequence (prefill shape), else alternating */
    int kv_rule;              /* ATTENTION: LETHE_KV_RULE_TOVA / H2O (0: DMS): the scores too;
                                 QUEST: the page bounds, the KV reads and the output exactly */
    int kv_budget;            /* policy budget (0: 1000) */
    bool kv_tie;              /* QUEST: pages 1 and 3 of sequence 0 share their (dominant) keys */
    int kv_pages;             /* pages of the pool (0: enough for the case, at least 64) */
    int topk_pat;             /* TOP_K: tu_topk_fill pattern              */
    double limit;
} op_case;

#define MM(t, N, K, T) {"matmul " #t " " #N "x" #K " T=" #T, LETHE_OP_MATMUL, LETHE_##t, N, K, T, .limit = EPS_MM}
#define TK(T, V, k, pat) {"top_k " #k " V=" #V " T=" #T " pattern " #pat, LETHE_OP_TOP_K, LETHE_F32, T, V, k, \
                         .topk_pat = pat, .limit = 0}
#define GR(t) {"get_rows " #t, LETHE_OP_GET_ROWS, LETHE_##t, 37, 64, 6, .limit = EPS_ELEM}

static const op_case k_cases[] = {
    /* get_rows: w [a, b], ids [c] */
    GR(F32), GR(F16), GR(BF16), GR(Q4_0), GR(Q4_1), GR(Q5_0), GR(Q5_1), GR(Q8_0),
    {"get_rows q4_1 split", LETHE_OP_GET_ROWS, LETHE_Q4_1, 300, 256, 3, .split = true, .limit = EPS_ELEM},
    /* matmul: w [a, b] x [c, b]: GEMV (T = 1) and tiled (T > 1, partial tiles) */
    MM(F32, 67, 96, 1), MM(F32, 67, 96, 19),
    MM(F16, 67, 128, 1), MM(F16, 67, 128, 19),
    MM(BF16, 67, 128, 1), MM(BF16, 67, 128, 5),
    MM(Q4_0, 67, 128, 1), MM(Q4_0, 67, 128, 19),
    MM(Q4_1, 67, 128, 1), MM(Q4_1, 67, 128, 33),
    MM(Q5_0, 40, 160, 1), MM(Q5_0, 40, 160, 17),
    MM(Q5_1, 40, 160, 1), MM(Q5_1, 40, 160, 17),
    MM(Q8_0, 67, 128, 1), MM(Q8_0, 67, 128, 19),
    MM(Q4_1, 192, 576, 1), MM(Q4_1, 576, 1536, 1), MM(Q4_1, 64, 576, 5),   /* SmolLM2's widths */
    {"matmul q4_1 split T=1", LETHE_OP_MATMUL, LETHE_Q4_1, 150, 256, 1, .split = true, .limit = EPS_MM},
    {"matmul q8_0 split T=5", LETHE_OP_MATMUL, LETHE_Q8_0, 150, 128, 5, .split = true, .limit = EPS_MM},
    /* activations over several bindings too (split by tokens): x [19, 128] and
     * out [19, 150] of 9.5 and 11 KiB, its q8 blocks; GEMV and tiled */
    {"matmul q8_0 split x,out T=19", LETHE_OP_MATMUL, LETHE_Q8_0, 150, 128, 19, .split = true, .limit = EPS_MM},
    {"matmul f16 split x,out T=9", LETHE_OP_MATMUL, LETHE_F16, 300, 160, 9, .split = true, .limit = EPS_MM},
    {"matmul q4_1 split out T=2", LETHE_OP_MATMUL, LETHE_Q4_1, 700, 64, 2, .split = true, .limit = EPS_MM},
    /* rms_norm: x [a, b] */
    {"rms_norm", LETHE_OP_RMS_NORM, LETHE_F32, 5, 96, .limit = EPS_ELEM},
    {"rms_norm 576", LETHE_OP_RMS_NORM, LETHE_F32, 2, 576, .limit = EPS_ELEM},
    {"rms_norm no weight", LETHE_OP_RMS_NORM, LETHE_F32, 3, 200, .no_weight = true, .limit = EPS_ELEM},
    /* add / mul: a [a, b], b [a, b] or broadcast [b] */
    {"add", LETHE_OP_ADD, LETHE_F32, 7, 33, .limit = EPS_ELEM},
    {"add broadcast", LETHE_OP_ADD, LETHE_F32, 7, 33, .bcast = true, .limit = EPS_ELEM},
    {"mul", LETHE_OP_MUL, LETHE_F32, 7, 33, .limit = EPS_ELEM},
    {"mul broadcast", LETHE_OP_MUL, LETHE_F32, 4, 576, .bcast = true, .limit = EPS_ELEM},
    {"swiglu", LETHE_OP_SWIGLU, LETHE_F32, 5, 70, .limit = EPS_ELEM},
    /* rope: x [T = a, H = b, D = c] at positions 3, 1000, 20000, ... */
    {"rope norm", LETHE_OP_ROPE, LETHE_F32, 4, 3, 64, LETHE_ROPE_NORM, .limit = EPS_ELEM},
    {"rope neox", LETHE_OP_ROPE, LETHE_F32, 4, 3, 64, LETHE_ROPE_NEOX, .limit = EPS_ELEM},
    {"rope neox partial", LETHE_OP_ROPE, LETHE_F32, 3, 2, 64, LETHE_ROPE_NEOX, 32, .limit = EPS_ELEM},
    {"rope norm llama3", LETHE_OP_ROPE, LETHE_F32, 4, 2, 128, LETHE_ROPE_NORM, .llama3 = true, .limit = EPS_ELEM},
    {"rope neox freq_factors", LETHE_OP_ROPE, LETHE_F32, 4, 2, 64, LETHE_ROPE_NEOX, .freq_factors = true,
     .limit = EPS_ELEM},
    /* DMS: the borrowed channel (G = 3) and the decision logits [T = a, Hkv = b], D = c */
    {"rope neox borrow G=3", LETHE_OP_ROPE, LETHE_F32, 3, 6, 64, LETHE_ROPE_NEOX, .borrow = 3,
     .limit = EPS_ELEM},
    {"rope norm borrow G=2", LETHE_OP_ROPE, LETHE_F32, 3, 4, 64, LETHE_ROPE_NORM, .borrow = 2,
     .limit = EPS_ELEM},
    {"dms_decision from q", LETHE_OP_DMS_DECISION, LETHE_F32, 5, 3, 64, .dms_mode = LETHE_DMS_FROM_Q, .limit = 0},
    {"dms_decision adapter", LETHE_OP_DMS_DECISION, LETHE_F32, 5, 3, 64, .dms_mode = LETHE_DMS_FROM_ADAPTER, .limit = 0},
    {"dms_decision forced", LETHE_OP_DMS_DECISION, LETHE_F32, 9, 4, 64, .dms_mode = LETHE_DMS_FORCED, .limit = 0},
    /* KV cache: T = a tokens of 2 sequences, Hkv = b, D = c (KV_STORE limit:
     * the cache rows; expires must match exactly whatever the limit) */
    {"kv_store f32", LETHE_OP_KV_STORE, LETHE_F32, 5, 3, 64, .kv_g = 1, .limit = 0},
    {"kv_store f16 dms", LETHE_OP_KV_STORE, LETHE_F32, 6, 2, 64, .kv_g = 1, .kv_f16 = true, .kv_dms = true, .limit = EPS_ELEM},
    {"kv_store f32 dms T=1", LETHE_OP_KV_STORE, LETHE_F32, 1, 3, 32, .kv_g = 1, .kv_dms = true,
     .limit = 0},
    {"attention f32 G=1", LETHE_OP_ATTENTION, LETHE_F32, 3, 2, 64, .kv_g = 1, .limit = EPS_MM},
    {"attention f16 G=2", LETHE_OP_ATTENTION, LETHE_F32, 4, 2, 64, .kv_g = 2, .kv_f16 = true,
     .limit = EPS_MM},
    {"attention f16 G=3 D=128", LETHE_OP_ATTENTION, LETHE_F32, 2, 3, 128, .kv_g = 3, .kv_f16 = true, .limit = EPS_MM},
    {"attention f32 G=4 T=1", LETHE_OP_ATTENTION, LETHE_F32, 1, 2, 64, .kv_g = 4, .limit = EPS_MM},
    {"attention f16 G=3 dms", LETHE_OP_ATTENTION, LETHE_F32, 5, 3, 64, .kv_g = 3, .kv_f16 = true, .kv_dms = true, .limit = EPS_MM},
    /* a stream of 7 pages: over several bindings on the kv_split twin */
    {"attention f16 G=2 hist=200", LETHE_OP_ATTENTION, LETHE_F32, 3, 2, 64, .kv_g = 2, .kv_f16 = true, .kv_dms = true,
     .kv_hist = 200, .limit = EPS_MM},
    {"kv_store f32 dms hist=200", LETHE_OP_KV_STORE, LETHE_F32, 4, 2, 32, .kv_g = 1, .kv_dms = true, .kv_hist = 200,
     .limit = 0},
    /* CUDA: flash-decoding over long streams (split spans + combine), the tiled
     * prefill kernel (runs of one sequence), head dims 32..256, G up to 8 */
    {"attention f16 G=4 D=128 long", LETHE_OP_ATTENTION, LETHE_F32, 2, 2, 128, .kv_g = 4, .kv_f16 = true,
     .kv_dms = true, .kv_hist = 1500, .cuda_only = true, .limit = EPS_MM},
    {"attention f32 G=8 D=64 long", LETHE_OP_ATTENTION, LETHE_F32, 3, 2, 64, .kv_g = 8, .kv_hist = 700,
     .cuda_only = true, .limit = EPS_MM},
    {"attention f16 G=1 D=256", LETHE_OP_ATTENTION, LETHE_F32, 2, 3, 256, .kv_g = 1, .kv_f16 = true,
     .kv_hist = 300, .cuda_only = true, .limit = EPS_MM},
    {"attention f32 G=2 D=32", LETHE_OP_ATTENTION, LETHE_F32, 4, 2, 32, .kv_g = 2, .kv_dms = true, .kv_hist = 130,
     .cuda_only = true, .limit = EPS_MM},
    {"attention prefill f16 G=3", LETHE_OP_ATTENTION, LETHE_F32, 40, 3, 64, .kv_g = 3, .kv_f16 = true,
     .kv_dms = true, .kv_hist = 300, .kv_runs = true, .cuda_only = true, .limit = EPS_MM},
    {"attention prefill f32 D=256", LETHE_OP_ATTENTION, LETHE_F32, 20, 2, 256, .kv_g = 1, .kv_hist = 100,
     .kv_runs = true, .cuda_only = true, .limit = EPS_MM},
    {"attention prefill f16 G=8 D=128", LETHE_OP_ATTENTION, LETHE_F32, 12, 1, 128, .kv_g = 8, .kv_f16 = true,
     .kv_dms = true, .kv_hist = 64, .kv_runs = true, .cuda_only = true, .limit = EPS_MM},
    {"attention prefill f16 G=2 D=32", LETHE_OP_ATTENTION, LETHE_F32, 33, 2, 32, .kv_g = 2, .kv_f16 = true,
     .kv_runs = true, .cuda_only = true, .limit = EPS_MM},
    {"attention f16 G=5 D=128 long", LETHE_OP_ATTENTION, LETHE_F32, 4, 2, 128, .kv_g = 5, .kv_f16 = true,
     .kv_dms = true, .kv_hist = 600, .cuda_only = true, .limit = EPS_MM},
    {"attention prefill f32 G=6", LETHE_OP_ATTENTION, LETHE_F32, 20, 2, 64, .kv_g = 6, .kv_dms = true,
     .kv_hist = 90, .kv_runs = true, .cuda_only = true, .limit = EPS_MM},
    /* prefill over streams longer than one metadata segment (512 slots):
     * the tiled kernel's segment reloads and tile skips across a boundary */
    {"attention prefill f16 G=4 D=128 long", LETHE_OP_ATTENTION, LETHE_F32, 24, 2, 128, .kv_g = 4, .kv_f16 = true,
     .kv_dms = true, .kv_hist = 1100, .kv_runs = true, .cuda_only = true, .limit = EPS_MM},
    {"attention prefill f32 G=2 D=256 long", LETHE_OP_ATTENTION, LETHE_F32, 16, 2, 256, .kv_g = 2, .kv_hist = 600,
     .kv_runs = true, .cuda_only = true, .limit = EPS_MM},
    {"kv_store f16 dms runs", LETHE_OP_KV_STORE, LETHE_F32, 12, 2, 128, .kv_g = 1, .kv_f16 = true, .kv_dms = true,
     .kv_runs = true, .cuda_only = true, .limit = EPS_ELEM},
    /* score policies: the attention weights folded into kv->score, compared
     * exactly on Vulkan (its shaders are the CPU's arithmetic), within f32
     * rounding on CUDA (SCORE_REL) */
    {"attention f16 G=3 tova", LETHE_OP_ATTENTION, LETHE_F32, 5, 3, 64, .kv_g = 3, .kv_f16 = true,
     .kv_rule = LETHE_KV_RULE_TOVA, .limit = EPS_MM},
    {"attention f32 G=2 h2o D=32", LETHE_OP_ATTENTION, LETHE_F32, 4, 2, 32, .kv_g = 2,
     .kv_rule = LETHE_KV_RULE_H2O, .limit = EPS_MM},
    /* QUEST: bounds refreshed and pages selected on the device; 7-page
     * streams (ragged heads) read 2 or 3 of them, so a wrong page, bound or
     * tie rule changes the output (NMSE ~1): exactly the CPU's on Vulkan,
     * QUEST_CUDA on CUDA; the bounds and the KV reads exactly on both */
    {"attention f16 G=3 quest tie", LETHE_OP_ATTENTION, LETHE_F32, 5, 3, 64, .kv_g = 3, .kv_f16 = true,
     .kv_rule = LETHE_KV_RULE_QUEST, .kv_budget = 64, .kv_hist = 200, .kv_tie = true, .limit = 0},
    {"attention f32 G=2 quest D=32", LETHE_OP_ATTENTION, LETHE_F32, 4, 2, 32, .kv_g = 2,
     .kv_rule = LETHE_KV_RULE_QUEST, .kv_budget = 96, .kv_hist = 200, .limit = 0},
    {"attention f16 G=2 quest runs", LETHE_OP_ATTENTION, LETHE_F32, 12, 2, 64, .kv_g = 2, .kv_f16 = true,
     .kv_rule = LETHE_KV_RULE_QUEST, .kv_budget = 64, .kv_hist = 150, .kv_runs = true, .kv_tie = true,
     .limit = 0},
    /* a pool of 30 pages of 8 KiB: on the kv_split twin (chunks of 8 pages)
     * kmax [pages][D] starts 1 KiB before a chunk's end, so the bounds of
     * pages 4 on sit in the next binding (quest_*_split's (binding, word)) */
    {"attention f16 G=2 quest 30 pages", LETHE_OP_ATTENTION, LETHE_F32, 4, 2, 64, .kv_g = 2, .kv_f16 = true,
     .kv_rule = LETHE_KV_RULE_QUEST, .kv_budget = 64, .kv_hist = 140, .kv_tie = true, .kv_pages = 30, .limit = 0},
    /* CUDA: weights normalized after the split-K combine (long streams) and
     * in the tiled prefill kernel; QUEST over two spans */
    {"attention f16 G=4 D=128 tova long", LETHE_OP_ATTENTION, LETHE_F32, 2, 2, 128, .kv_g = 4, .kv_f16 = true,
     .kv_hist = 700, .kv_rule = LETHE_KV_RULE_TOVA, .cuda_only = true, .limit = EPS_MM},
    {"attention prefill f16 G=3 h2o", LETHE_OP_ATTENTION, LETHE_F32, 20, 3, 64, .kv_g = 3, .kv_f16 = true,
     .kv_hist = 150, .kv_runs = true, .kv_rule = LETHE_KV_RULE_H2O, .cuda_only = true, .limit = EPS_MM},
    {"attention f16 G=4 D=128 quest long", LETHE_OP_ATTENTION, LETHE_F32, 2, 2, 128, .kv_g = 4, .kv_f16 = true,
     .kv_rule = LETHE_KV_RULE_QUEST, .kv_budget = 256, .kv_hist = 600, .kv_tie = true, .cuda_only = true, .limit = 0},
    /* decode GEMV with several sequences (T <= 8) and cuBLAS prefill at real widths */
    MM(Q4_0, 96, 576, 8), MM(Q8_0, 96, 576, 3), MM(F16, 70, 256, 8), MM(Q4_0, 130, 256, 40),
    MM(Q8_0, 64, 1536, 12), MM(F32, 50, 256, 24),
    /* top_k: x [T = a, V = b], k = c; compared bit for bit (ids and value
     * bits), and the CPU against a full sort (test_top_k_reference).
     * SmolLM2's and Qwen2/3's vocabularies, the sampler's default k (40),
     * argmax, the largest k; ties, -inf, NaN; rows shorter than a segment. */
    TK(1, 49152, 1, 0), TK(3, 49152, 40, 0), TK(2, 151936, 64, 0), TK(1, 151936, 256, 0),
    TK(2, 49152, 40, 1), TK(2, 151936, 64, 2), TK(2, 49152, 64, 3), TK(1, 151936, 1, 3),
    TK(2, 10000, 64, 4), TK(1, 5000, 40, 5), TK(4, 7, 5, 2), TK(2, 64, 64, 1), TK(3, 4097, 17, 2),
};

/* ------------------------------------------------------------- state */

typedef struct device {
    lethe_backend *be, *split;   /* split: the 4 KiB-binding twin (Vulkan), else be */
    const char *name;
    lethe_backend *kv_split;     /* Vulkan: the KV_SPLIT_RANGE twin (KV caches over several bindings), else NULL */
} device;

/* The kv_split twin's binding limit: a page of the KV cases' caches (8 to
 * 32 KiB) fits one binding, their pools need several (8 to 20 of the 28
 * the shaders declare). */
#define KV_SPLIT_RANGE 65536

typedef struct {
    lethe_backend *cpu;
    device devs[2];              /* the device backends found: Vulkan, CUDA */
    int n_devs;
    /* every buffer a graph points at lives until the end: device backends
     * cache weights by host address, which must not be reused meanwhile */
    void **mem;
    int n_mem, cap_mem;
} suite;

static suite g_s;

static void *keep(void *p) {
    assert_non_null(p);
    if (g_s.n_mem == g_s.cap_mem) {
        g_s.cap_mem = g_s.cap_mem ? 2 * g_s.cap_mem : 256;
        g_s.mem = realloc(g_s.mem, (size_t)g_s.cap_mem * sizeof *g_s.mem);
        assert_non_null(g_s.mem);
    }
    g_s.mem[g_s.n_mem++] = p;
    return p;
}

static float *randf(size_t n, uint64_t seed) {
    float *x = keep(malloc(n * sizeof(float) + 64));
    tu_rand_fill(x, n, seed);
    return x;
}

static void *make_weights(lethe_dtype t, int64_t N, int64_t K, uint64_t seed) {
    return keep(tu_make_rows(t, N, K, seed, 64));
}

/* The case as a graph; returns the op's node (marked output). */
typedef struct built {
    lethe_graph *g;
    lethe_node *out;
    lethe_ubatch ub;
    int32_t *seq, *pos, *ids;
    lethe_kv_cache *kv;       /* KV cases: the cache (freed by the caller) */
    int flagged0;             /* KV cases: finite expires before the run   */
} built;

/* A built case's graph and, for KV cases, its cache. */
static void built_free(built *b) {
    lethe_graph_free(b->g);
    if (b->kv) {
        lethe_kv_free(b->kv);
        free(b->kv);
    }
}

/* The backend whose shared memory holds the KV cases' caches. */
static lethe_backend *g_kv_mem;

#define KV_LAYER TU_KV_LAYER  /* of 2: the layer's offset in res_slot matters */

/* A cache of 2 sequences x 2 layers x Hkv heads in g_kv_mem's shared memory
 * (tu_kv_setup: ragged streams, DMS expiries, histories of 37 tokens (two
 * pages) unless the case says, and 9), with its micro-batch of T tokens
 * reserved. */
static lethe_kv_cache *kv_setup(const op_case *k, built *b, uint64_t seed) {
    const int Hkv = (int)k->b, D = (int)k->c, T = (int)k->a;
    lethe_kv_cache *kv = calloc(1, sizeof *kv);
    assert_non_null(kv);
    const int hist = k->kv_hist ? k->kv_hist : 37;
    const tu_kv_spec spec = {
        .T = T, .Hkv = Hkv, .D = D, .hist = hist, .f16 = k->kv_f16, .runs = k->kv_runs, .tie = k->kv_tie,
        .rule = k->kv_rule, .budget = k->kv_budget ? k->kv_budget : 1000,
        .pages = k->kv_pages ? (size_t)k->kv_pages
                             : LETHE_MAX((size_t)64, (size_t)4 * Hkv * ((size_t)(hist + T) / LETHE_KV_PAGE + 4) + 16)};
    b->seq = keep(malloc((size_t)LETHE_MAX(T, 1) * sizeof(int32_t)));
    b->pos = keep(malloc((size_t)LETHE_MAX(T, 1) * sizeof(int32_t)));
    tu_kv_setup(kv, &spec, g_kv_mem, seed, b->seq, b->pos);
    assert_non_null(kv->shared);   /* the device offered shared memory */
    b->ub = (lethe_ubatch){T, b->seq, b->pos};
    b->kv = kv;
    return kv;
}

/* Finite expires over the slots in use of every stream. */
static int kv_flagged(const lethe_kv_cache *kv) {
    int n = 0;
    for (int sq = 0; sq < kv->n_seq; sq++)
        for (int l = 0; l < kv->n_layer; l++)
            for (int h = 0; h < kv->n_head_kv; h++) {
                const lethe_kv_stream *s = lethe_kv_stream_at(kv, sq, l, h);
                for (int32_t j = 0; j < s->len; j++) n += *lethe_kv_expire(kv, s, j) != LETHE_KV_NEVER;
            }
    return n;
}

/* KV_STORE (+ ATTENTION) nodes of a KV case; returns the case's result node. */
static lethe_node *kv_build(const op_case *k, built *b, uint64_t seed) {
    lethe_graph *g = b->g;
    const int64_t T = k->a, Hkv = k->b, D = k->c, Hq = Hkv * k->kv_g;
    lethe_kv_cache *kv = kv_setup(k, b, seed);
    b->flagged0 = kv_flagged(kv);
    int64_t nk[3] = {D, Hkv, T}, nq[3] = {D, Hq, T}, nd[2] = {Hkv, T};
    lethe_node *kn = lethe_input(g, LETHE_F32, 3, nk, randf((size_t)(T * Hkv * D), seed + 1), "k");
    lethe_node *vn = lethe_input(g, LETHE_F32, 3, nk, randf((size_t)(T * Hkv * D), seed + 2), "v");
    lethe_node *dec = NULL;
    if (k->kv_dms) {   /* adapter-style logits on both sides of 0 */
        lethe_node *a = lethe_input(g, LETHE_F32, 2, nd, randf((size_t)(T * Hkv), seed + 3), "alpha");
        dec = lethe_dms_decision(g, a, LETHE_DMS_FROM_ADAPTER, (int)Hkv, k->kv_g, false, 1.0f, 0.0f, 0.0f, KV_LAYER,
                                 &b->ub);
    }
    lethe_node *st = lethe_kv_store(g, kv, KV_LAYER, kn, vn, dec, &b->ub);
    if (k->op == LETHE_OP_KV_STORE) return st;
    lethe_node *q = lethe_input(g, LETHE_F32, 3, nq, randf((size_t)(T * Hq * D), seed + 4), "q");
    return lethe_attention(g, kv, KV_LAYER, q, st, 1.0f / sqrtf((float)D), &b->ub);
}

/* KV_STORE's result is the cache: every row of the layer's streams in f32,
 * [n_seq][Hkv][len][2][D] (identical bookkeeping, so the same slots). */
static float *kv_rows(const lethe_kv_cache *kv, size_t *n) {
    size_t total = 0;
    for (int sq = 0; sq < kv->n_seq; sq++)
        for (int h = 0; h < kv->n_head_kv; h++)
            total += (size_t)lethe_kv_stream_at(kv, sq, KV_LAYER, h)->len * 2 * (size_t)kv->head_dim;
    float *y = keep(malloc(total * sizeof(float) + 4)), *o = y;
    for (int sq = 0; sq < kv->n_seq; sq++)
        for (int h = 0; h < kv->n_head_kv; h++) {
            const lethe_kv_stream *s = lethe_kv_stream_at(kv, sq, KV_LAYER, h);
            for (int32_t j = 0; j < s->len; j++)
                for (int part = 0; part < 2; part++) {
                    const void *row = part ? lethe_kv_v(kv, s, j) : lethe_kv_k(kv, s, j);
                    for (int d = 0; d < kv->head_dim; d++)
                        *o++ = kv->type == LETHE_F16 ? lethe_f16_to_f32(((const lethe_f16 *)row)[d]) : ((const float *)row)[d];
                }
        }
    *n = total;
    return y;
}

static void build(const op_case *k, built *b, uint64_t seed) {
    memset(b, 0, sizeof *b);
    b->g = lethe_graph_new(16);
    assert_non_null(b->g);
    lethe_graph *g = b->g;
    lethe_node *n = NULL;
    switch (k->op) {
    case LETHE_OP_GET_ROWS: {
        lethe_tensor w;
        int64_t ne[2] = {k->b, k->a}, ni[1] = {k->c};
        lethe_tensor_init(&w, k->wtype, 2, ne);
        w.data = make_weights(k->wtype, k->a, k->b, seed);
        b->ids = keep(malloc((size_t)k->c * sizeof(int32_t)));
        for (int64_t i = 0; i < k->c; i++) b->ids[i] = (int32_t)((i * 7919 + 3) % k->a);
        b->ids[0] = (int32_t)k->a - 1;   /* the last row: the end of the last binding */
        n = lethe_get_rows(g, lethe_leaf(g, &w), lethe_input(g, LETHE_I32, 1, ni, b->ids, "ids"));
        break;
    }
    case LETHE_OP_MATMUL: {
        lethe_tensor w;
        int64_t ne[2] = {k->b, k->a}, nx[2] = {k->b, k->c};
        lethe_tensor_init(&w, k->wtype, 2, ne);
        w.data = make_weights(k->wtype, k->a, k->b, seed);
        n = lethe_matmul(g, lethe_leaf(g, &w), lethe_input(g, LETHE_F32, 2, nx, randf((size_t)(k->b * k->c), seed + 99), "x"));
        break;
    }
    case LETHE_OP_RMS_NORM: {
        int64_t nx[2] = {k->b, k->a}, nw[1] = {k->b};
        lethe_tensor w;
        lethe_tensor_init(&w, LETHE_F32, 1, nw);
        w.data = randf((size_t)k->b, seed + 5);
        lethe_node *x = lethe_input(g, LETHE_F32, 2, nx, randf((size_t)(k->a * k->b), seed), "x");
        n = lethe_rms_norm(g, x, k->no_weight ? NULL : lethe_leaf(g, &w), 1e-5f);
        break;
    }
    case LETHE_OP_ADD:
    case LETHE_OP_MUL:
    case LETHE_OP_SWIGLU: {
        int64_t nx[2] = {k->b, k->a}, nb[1] = {k->b};
        lethe_node *x = lethe_input(g, LETHE_F32, 2, nx, randf((size_t)(k->a * k->b), seed), "a");
        lethe_node *y = k->bcast ? lethe_input(g, LETHE_F32, 1, nb, randf((size_t)k->b, seed + 1), "b")
                                 : lethe_input(g, LETHE_F32, 2, nx, randf((size_t)(k->a * k->b), seed + 1), "b");
        n = k->op == LETHE_OP_ADD ? lethe_add(g, x, y) : k->op == LETHE_OP_MUL ? lethe_mul(g, x, y) : lethe_swiglu(g, x, y);
        break;
    }
    case LETHE_OP_ROPE: {
        const int64_t T = k->a, H = k->b, D = k->c;
        int64_t nx[3] = {D, H, T};
        b->pos = keep(malloc((size_t)T * sizeof(int32_t)));
        b->seq = keep(calloc((size_t)T, sizeof(int32_t)));
        const int32_t pos[4] = {3, 1000, 20000, 131071};
        for (int64_t t = 0; t < T; t++) b->pos[t] = pos[t % 4];
        b->ub = (lethe_ubatch){(int32_t)T, b->seq, b->pos};
        lethe_rope_params p = {.mode = k->rope_mode, .n_rot = k->n_rot ? k->n_rot : (int32_t)D,
                               .freq_base = k->llama3 ? 500000.0f : 10000.0f, .freq_scale = 1.0f};
        if (k->llama3) {
            p.llama3_factor = 8.0f;
            p.llama3_low_freq_factor = 1.0f;
            p.llama3_high_freq_factor = 4.0f;
            p.llama3_orig_ctx = 8192;
        }
        if (k->freq_factors) {
            float *ff = keep(malloc((size_t)p.n_rot / 2 * sizeof(float)));
            for (int i = 0; i < p.n_rot / 2; i++) ff[i] = 1.0f + (float)i / 7.0f;
            p.freq_factors = ff;
        }
        lethe_node *x = lethe_input(g, LETHE_F32, 3, nx, randf((size_t)(T * H * D), seed), "x");
        n = k->borrow ? lethe_rope_borrow(g, x, &p, &b->ub, k->borrow) : lethe_rope(g, x, &p, &b->ub);
        break;
    }
    case LETHE_OP_DMS_DECISION: {
        const int64_t T = k->a, Hkv = k->b, D = k->c, G = 2;
        b->pos = keep(malloc((size_t)T * sizeof(int32_t)));
        b->seq = keep(calloc((size_t)T, sizeof(int32_t)));
        for (int64_t t = 0; t < T; t++) b->pos[t] = (int32_t)(t * 977 + 5);
        b->ub = (lethe_ubatch){(int32_t)T, b->seq, b->pos};
        lethe_node *x = NULL;
        if (k->dms_mode == LETHE_DMS_FROM_Q) {
            int64_t nq[3] = {D, Hkv * G, T};
            float *q = randf((size_t)(T * Hkv * G * D), seed);
            for (int64_t i = 0; i < T * Hkv * G * D; i++) q[i] *= 0.1f;   /* logits on both sides of 0 */
            x = lethe_input(g, LETHE_F32, 3, nq, q, "q");
        } else if (k->dms_mode == LETHE_DMS_FROM_ADAPTER) {
            int64_t na[2] = {Hkv, T};
            x = lethe_input(g, LETHE_F32, 2, na, randf((size_t)(T * Hkv), seed), "alpha");
        }
        n = lethe_dms_decision(g, x, k->dms_mode, (int)Hkv, (int)G, false, 100.0f, 5.0f, 0.3f, 7, &b->ub);
        break;
    }
    case LETHE_OP_KV_STORE:
    case LETHE_OP_ATTENTION:
        n = kv_build(k, b, seed);
        break;
    case LETHE_OP_TOP_K: {
        int64_t nx[2] = {k->b, k->a};
        float *x = keep(malloc((size_t)(k->a * k->b) * sizeof(float)));
        tu_topk_fill(x, (size_t)(k->a * k->b), k->topk_pat, seed);
        n = lethe_top_k(g, lethe_input(g, LETHE_F32, 2, nx, x, "logits"), (int)k->c);
        break;
    }
    default:
        fail_msg("case %s: op not in the table builder", k->name);
    }
    assert_int_equal(g->status, LETHE_OK);
    assert_non_null(n);
    lethe_set_output(n);
    b->out = n;
}

/* Run a built graph through an executor over `bes`; copy the output out. */
static float *run_on(lethe_backend **bes, int n_bes, built *b) {
    lethe_executor *ex = lethe_executor_new(bes, n_bes);
    assert_non_null(ex);
    lethe_status st = lethe_executor_run(ex, b->g, NULL, NULL);
    if (st != LETHE_OK) fail_msg("executor: %s (%s)", lethe_strerror(st), lethe_last_error());
    size_t n = (size_t)lethe_tensor_nelements(&b->out->t);
    assert_non_null(b->out->t.data);
    float *y = keep(malloc(n * sizeof(float)));
    memcpy(y, b->out->t.data, n * sizeof(float));
    lethe_executor_free(ex);
    return y;
}

/* ------------------------------------------------------------- tests */

/* The case table on one device: every case it must take, against the CPU.
 * kv_split: only the KV cases, on d->kv_split (their caches over several bindings). */
static void run_table(const device *d, bool kv_split) {
    int n_run = 0, n_quest_split = 0, n_bounds_cross = 0;
    for (size_t i = 0; i < LETHE_ARRAY_SIZE(k_cases); i++) {
        const op_case *k = &k_cases[i];
        if (k->cuda_only && strcmp(d->name, "cuda") != 0) continue;
        if (k->vk_only && strcmp(d->name, "vulkan") != 0) continue;
        if (kv_split && k->op != LETHE_OP_KV_STORE && k->op != LETHE_OP_ATTENTION) continue;
        lethe_backend *dev = kv_split ? d->kv_split : k->split ? d->split : d->be;
        const bool cuda = strcmp(d->name, "cuda") == 0;
        built ref, got;
        g_kv_mem = dev;
        build(k, &ref, 1000 + i);
        build(k, &got, 1000 + i);
        float *yr = run_on(&g_s.cpu, 1, &ref);
        lethe_backend *bes[2] = {dev, g_s.cpu};
        float *yg = run_on(bes, 2, &got);
        if (got.out->backend != 0) fail_msg("%s: %s did not take the op (fell back to the CPU)", k->name, d->name);
        if (kv_split) {   /* the cache really spans >= 3 bindings of at most KV_SPLIT_RANGE bytes */
            const size_t bytes = got.kv->shared->size;
            print_message("  %-28s cache of %zu KiB over >= %zu bindings\n", k->name, bytes >> 10,
                          (bytes + KV_SPLIT_RANGE - 1) / KV_SPLIT_RANGE);
            assert_true(bytes > 2 * (size_t)KV_SPLIT_RANGE);
            if (k->kv_rule == LETHE_KV_RULE_QUEST) {
                /* QUEST's bounds kmin [pages][D] f32, then kmax, are
                 * located by (binding, word): does a page the streams use
                 * have its bounds in another chunk than its array's first
                 * entry (chunks of whole pages, as vk_ops.c kv_plan)? */
                const lethe_kv_cache *kv = got.kv;
                const size_t chunk = KV_SPLIT_RANGE / kv->page_bytes * kv->page_bytes;
                const size_t row = (size_t)kv->head_dim * sizeof(float);
                int crossed = 0;
                for (int sq = 0; sq < 2; sq++)
                    for (int h = 0; h < kv->n_head_kv; h++) {
                        const lethe_kv_stream *sg = lethe_kv_stream_at(kv, sq, KV_LAYER, h);
                        for (int32_t p = 0; p < sg->n_pages; p++) {
                            const size_t o = (size_t)sg->pages[p] * row;
                            crossed += (kv->kmin_offs + o + row - 1) / chunk != kv->kmin_offs / chunk ||
                                       (kv->kmax_offs + o + row - 1) / chunk != kv->kmax_offs / chunk;
                        }
                    }
                print_message("  %-28s QUEST bounds of %d pages read in a later binding than their array's start\n",
                              k->name, crossed);
                n_quest_split++;
                n_bounds_cross += crossed > 0;
            }
        }
        size_t n = (size_t)lethe_tensor_nelements(&ref.out->t);
        if (k->op == LETHE_OP_KV_STORE) {   /* the cache is the result */
            size_t n2;
            yr = kv_rows(ref.kv, &n);
            yg = kv_rows(got.kv, &n2);
            assert_int_equal(n, n2);
            /* the DMS flags: every expire of every stream in use, exactly
             * (free pages of the device memory hold whatever it held) */
            int flagged = 0;
            for (int sq = 0; sq < 2; sq++)
                for (int l = 0; l < 2; l++)
                    for (int h = 0; h < ref.kv->n_head_kv; h++) {
                        const lethe_kv_stream *sr = lethe_kv_stream_at(ref.kv, sq, l, h);
                        const lethe_kv_stream *sg = lethe_kv_stream_at(got.kv, sq, l, h);
                        assert_int_equal(sr->len, sg->len);
                        for (int32_t j = 0; j < sr->len; j++) {
                            const int32_t er = *lethe_kv_expire(ref.kv, sr, j), eg = *lethe_kv_expire(got.kv, sg, j);
                            if (er != eg)
                                fail_msg("%s on %s: expire of (seq %d, layer %d, head %d) slot %d: %d on the CPU, %d",
                                         k->name, d->name, sq, l, h, j, er, eg);
                        }
                    }
            flagged = kv_flagged(ref.kv) - ref.flagged0;
            print_message("  %-28s %d tokens flagged by DMS decisions\n", k->name, flagged);
            if (k->kv_dms) assert_true(flagged > 0);
            else assert_int_equal(flagged, 0);
        }
        if (k->kv_rule == LETHE_KV_RULE_QUEST) {   /* the bounds the device refreshed, the pages it read */
            assert_non_null(got.kv->kmin);
            uint64_t slots = 0;
            for (int sq = 0; sq < 2; sq++)
                for (int h = 0; h < ref.kv->n_head_kv; h++) {
                    const lethe_kv_stream *sr = lethe_kv_stream_at(ref.kv, sq, KV_LAYER, h);
                    const lethe_kv_stream *sg = lethe_kv_stream_at(got.kv, sq, KV_LAYER, h);
                    assert_int_equal(sr->n_pages, sg->n_pages);
                    const size_t D = (size_t)ref.kv->head_dim;
                    for (int32_t p = 0; p < sr->n_pages; p++)
                        if (memcmp(ref.kv->kmin + (size_t)sr->pages[p] * D, got.kv->kmin + (size_t)sg->pages[p] * D,
                                   D * sizeof(float)) != 0 ||
                            memcmp(ref.kv->kmax + (size_t)sr->pages[p] * D, got.kv->kmax + (size_t)sg->pages[p] * D,
                                   D * sizeof(float)) != 0)
                            fail_msg("%s on %s: QUEST bounds of (seq %d, head %d) page %d differ from the CPU's",
                                     k->name, d->name, sq, h, p);
                }
            for (int t = 0; t < (int)k->a; t++)
                for (int h = 0; h < ref.kv->n_head_kv; h++)
                    slots += (uint64_t)lethe_kv_stream_at(ref.kv, ref.ub.seq_id[t], KV_LAYER, h)->len;
            print_message("  %-28s KV reads %llu of %llu slots on both\n", k->name,
                          (unsigned long long)ref.kv->reads, (unsigned long long)slots);
            assert_true(ref.kv->reads < slots);   /* pages were skipped */
            assert_int_equal(ref.kv->reads, got.kv->reads);
        } else if (k->kv_rule) {   /* TOVA / H2O: every slot's score, exactly (starting from the same values) */
            int n_set = 0;
            for (int sq = 0; sq < 2; sq++)
                for (int h = 0; h < ref.kv->n_head_kv; h++) {
                    const lethe_kv_stream *sr = lethe_kv_stream_at(ref.kv, sq, KV_LAYER, h);
                    const lethe_kv_stream *sg = lethe_kv_stream_at(got.kv, sq, KV_LAYER, h);
                    for (int32_t j = 0; j < sr->len; j++) {
                        const float a = ref.kv->score[lethe_kv_meta(sr, j)], c = got.kv->score[lethe_kv_meta(sg, j)];
                        const bool ok = cuda ? (a == 0.0f ? c == 0.0f : fabs((double)c - a) <= SCORE_REL * fabs((double)a))
                                             : memcmp(&a, &c, sizeof a) == 0;
                        if (!ok)
                            fail_msg("%s on %s: score of (seq %d, head %d) slot %d: %.9g on the CPU, %.9g", k->name,
                                     d->name, sq, h, j, a, c);
                        n_set += a != 0.0f;
                    }
                }
            print_message("  %-28s %d slot scores %s and nonzero\n", k->name, n_set,
                          cuda ? "within rounding" : "identical");
            assert_true(n_set > 0);
        }
        if (k->op == LETHE_OP_TOP_K) {   /* selection: the same ids and value bits */
            for (size_t j = 0; j < n; j++)
                if (memcmp(&yr[j], &yg[j], sizeof(float)) != 0) {
                    int32_t ir, ig;
                    memcpy(&ir, &yr[j & ~(size_t)1], 4);
                    memcpy(&ig, &yg[j & ~(size_t)1], 4);
                    fail_msg("%s on %s: pair %zu (row %zu): id %d on the CPU, %d on the device (or value bits differ)",
                             k->name, d->name, j / 2 % (size_t)k->c, j / 2 / (size_t)k->c, ir, ig);
                }
            print_message("  %-28s %-7s identical\n", k->name, d->name);
            built_free(&ref);
            built_free(&got);
            n_run++;
            continue;
        }
        double e = tu_nmse(yr, yg, n);
        const double limit = cuda && k->kv_rule == LETHE_KV_RULE_QUEST ? QUEST_CUDA : k->limit;
        print_message("  %-28s %-7s NMSE %.3g (limit %.0e)%s\n", k->name, d->name, e, limit,
                      kv_split ? " split KV" : "");
        if (!(e <= limit)) fail_msg("%s on %s: NMSE %.3g > %.3g", k->name, d->name, e, limit);
        built_free(&ref);
        built_free(&got);
        n_run++;
    }
    assert_true(n_run > 0);
    /* the split QUEST cases: at least one whose bounds cross from one binding into the next */
    if (n_quest_split) assert_true(n_bounds_cross > 0);
}

/* TOP_K on the CPU (the reference the devices are held to) against a full
 * sort in the host sampler's order: every table case, and a NaN never
 * placed before a number. Runs without a device. */
static void test_top_k_reference(void **state) {
    (void)state;
    int n_run = 0;
    for (size_t i = 0; i < LETHE_ARRAY_SIZE(k_cases); i++) {
        const op_case *k = &k_cases[i];
        if (k->op != LETHE_OP_TOP_K) continue;
        built b;
        build(k, &b, 1000 + i);
        const float *x = b.out->src[0]->t.data;
        int32_t *y = (int32_t *)run_on(&g_s.cpu, 1, &b);
        int32_t *want = malloc((size_t)k->c * 2 * sizeof(int32_t));
        assert_non_null(want);
        for (int64_t t = 0; t < k->a; t++) {
            tu_topk_oracle(x + t * k->b, k->b, (int)k->c, want);
            const int32_t *got = y + t * 2 * k->c;
            if (memcmp(got, want, (size_t)k->c * 2 * sizeof(int32_t)) != 0)
                fail_msg("%s: row %lld differs from the full sort", k->name, (long long)t);
            for (int64_t j = 1; j < k->c; j++) {
                float a, c;
                memcpy(&a, &got[2 * (j - 1) + 1], 4);
                memcpy(&c, &got[2 * j + 1], 4);
                assert_false(isnan(a) && !isnan(c));
            }
        }
        free(want);
        built_free(&b);
        n_run++;
    }
    print_message("  top_k: %d CPU cases equal to the full sort\n", n_run);
    assert_true(n_run >= 10);
}

static bool have_devices(void) {
    if (g_s.n_devs == 0) print_message("  no device backend on this machine: skipped\n");
    return g_s.n_devs > 0;
}

static void test_op_table(void **state) {
    (void)state;
    if (!have_devices()) skip();
    for (int d = 0; d < g_s.n_devs; d++) {
        run_table(&g_s.devs[d], false);
        if (g_s.devs[d].kv_split) run_table(&g_s.devs[d], true);
    }
}

/* Mixed placement: a q4_k matmul (no Vulkan shader) between device ops; the
 * executor must copy across both ways and bring the output back to the host. */
static void mixed_placement(const device *d) {
    const int64_t T = 3, E = 256, N = 256;
    uint8_t *wk = keep(malloc(lethe_row_size(LETHE_Q4_K, E) * (size_t)N));
    uint64_t s = 77;
    for (size_t i = 0; i < lethe_row_size(LETHE_Q4_K, E) * (size_t)N; i++) {
        s = s * 6364136223846793005ULL + 1442695040888963407ULL;
        wk[i] = (uint8_t)(s >> 56);
    }
    for (int64_t blk = 0; blk < N * E / LETHE_QK_K; blk++) {
        lethe_block_q4_k *q = (lethe_block_q4_k *)wk + blk;
        q->d = lethe_f32_to_f16(0.002f);
        q->dmin = lethe_f32_to_f16(0.004f);
    }
    float *x = randf((size_t)(T * E), 5), *nw = randf((size_t)E, 6);
    void *w2 = make_weights(LETHE_F16, E, N, 7);
    float *y[2];
    int placed_mm = -1, placed_norm = -1;
    for (int pass = 0; pass < 2; pass++) {
        lethe_graph *g = lethe_graph_new(16);
        int64_t nx[2] = {E, T}, nn[1] = {E}, n1[2] = {E, N}, n2[2] = {N, E};
        lethe_tensor tw, t1, t2;
        lethe_tensor_init(&tw, LETHE_F32, 1, nn);
        tw.data = nw;
        lethe_tensor_init(&t1, LETHE_Q4_K, 2, n1);
        t1.data = wk;
        lethe_tensor_init(&t2, LETHE_F16, 2, n2);
        t2.data = w2;
        lethe_node *in = lethe_input(g, LETHE_F32, 2, nx, x, "x");
        lethe_node *h = lethe_rms_norm(g, in, lethe_leaf(g, &tw), 1e-6f);
        lethe_node *m = lethe_matmul(g, lethe_leaf(g, &t1), h);       /* CPU */
        lethe_node *a = lethe_add(g, m, h);                              /* device */
        lethe_node *o = lethe_matmul(g, lethe_leaf(g, &t2), a);       /* device, output */
        lethe_set_output(o);
        assert_int_equal(g->status, LETHE_OK);
        lethe_backend *bes[2] = {d->be, g_s.cpu};
        built b = {.g = g, .out = o};
        y[pass] = pass == 0 ? run_on(&g_s.cpu, 1, &b) : run_on(bes, 2, &b);
        if (pass == 1) {
            placed_mm = m->backend;
            placed_norm = h->backend;
        }
        lethe_graph_free(g);
    }
    assert_int_equal(placed_norm, 0);
    assert_int_equal(placed_mm, 1);
    double e = tu_nmse(y[0], y[1], (size_t)(T * E));
    print_message("  mixed placement on %s NMSE %.3g\n", d->name, e);
    assert_true(e <= EPS_MM);
}

static void test_mixed_placement(void **state) {
    (void)state;
    if (!have_devices()) skip();
    for (int d = 0; d < g_s.n_devs; d++) mixed_placement(&g_s.devs[d]);
}

/* Bad input reaches the device as a status, not a read out of bounds. */
static void test_bad_ids(void **state) {
    (void)state;
    if (!have_devices()) skip();
    for (int d = 0; d < g_s.n_devs; d++) {
        op_case k = {"get_rows bad id", LETHE_OP_GET_ROWS, LETHE_F32, 8, 32, 3, .limit = EPS_ELEM};
        built b;
        build(&k, &b, 3);
        b.ids[1] = 8;   /* == N */
        lethe_backend *bes[2] = {g_s.devs[d].be, g_s.cpu};
        lethe_executor *ex = lethe_executor_new(bes, 2);
        assert_int_equal(lethe_executor_run(ex, b.g, NULL, NULL), LETHE_ERR_INVALID_ARG);
        lethe_executor_free(ex);
        lethe_graph_free(b.g);
    }
}

/* No such device: NULL and a clear message, never a crash. */
static void test_no_device(void **state) {
    (void)state;
    lethe_backend *be = lethe_backend_vulkan_new(999);
    assert_null(be);
    assert_true(strlen(lethe_last_error()) > 0);
    print_message("  device 999: %s\n", lethe_last_error());
    lethe_clear_error();
    assert_null(lethe_backend_cuda_new(999));
    assert_true(strlen(lethe_last_error()) > 0);
    print_message("  cuda device 999: %s\n", lethe_last_error());
}

/* A pipeline that fails to build: its ops report unsupported and run on the
 * CPU (same result); with no pipeline at all the backend refuses to start. */
static void test_pipeline_failure(void **state) {
    (void)state;
    if (g_s.n_devs == 0 || strcmp(g_s.devs[0].name, "vulkan") != 0) skip();   /* a Vulkan device */
    setenv("LETHE_VK_FAIL_PIPELINE", "matmul_vec_q4_1", 1);
    lethe_backend *be = lethe_backend_vulkan_new(0);
    unsetenv("LETHE_VK_FAIL_PIPELINE");
    assert_non_null(be);
    op_case k = MM(Q4_1, 40, 64, 1);
    built ref, got;
    build(&k, &ref, 11);
    build(&k, &got, 11);
    float *yr = run_on(&g_s.cpu, 1, &ref);
    lethe_backend *bes[2] = {be, g_s.cpu};
    float *yg = run_on(bes, 2, &got);
    assert_int_equal(got.out->backend, 1);   /* fell back to the CPU */
    assert_true(tu_nmse(yr, yg, 40) == 0.0);
    lethe_graph_free(ref.g);
    lethe_graph_free(got.g);
    be->iface->free(be);

    setenv("LETHE_VK_FAIL_PIPELINE", "all", 1);
    be = lethe_backend_vulkan_new(0);
    unsetenv("LETHE_VK_FAIL_PIPELINE");
    assert_null(be);
    print_message("  no pipelines: %s\n", lethe_last_error());
    assert_non_null(strstr(lethe_last_error(), "pipeline"));
}

/* NATIVE_FMA (shaders/exact.glsl), decided per device by the fma probe
 * (backends/vulkan/vk_probe.c). Lavapipe's fma() rounds twice: the probe
 * must say so, and the emulation then keeps these ops bit-identical to the
 * CPU. LETHE_VK_NATIVE_FMA=1 forces the driver's fma() into every pipeline:
 * on a driver that does not fuse, the q8 GEMV's outputs must then differ
 * from the CPU's in some last bits (the constant reached the pipelines and
 * the probe's verdict matters), on one that fuses they must not. A probe
 * that cannot run leaves the emulation, with a warning, and the backend
 * starts. */
static int g_probe_lines, g_probe_fused, g_probe_warns;

static void on_probe_log(lethe_log_level level, const char *msg, void *user) {
    (void)user;
    if (strstr(msg, "fma probe: fma() is fused")) g_probe_lines++, g_probe_fused++;
    if (strstr(msg, "fma probe: fma() is not fused")) g_probe_lines++;
    if (level >= LETHE_LOG_WARN && (strstr(msg, "fma probe") || strstr(msg, "LETHE_VK_NATIVE_FMA"))) g_probe_warns++;
    if (strstr(msg, "fma probe") || strstr(msg, "NATIVE_FMA")) print_message("    log: %s\n", msg);
}

static lethe_backend *vk_with(const char *var, const char *value) {
    g_probe_lines = g_probe_fused = g_probe_warns = 0;
    lethe_set_log(on_probe_log, NULL);
    lethe_set_log_level(LETHE_LOG_DEBUG);
    if (var) setenv(var, value, 1);
    lethe_backend *be = lethe_backend_vulkan_new(0);
    if (var) unsetenv(var);
    lethe_set_log(NULL, NULL);
    lethe_set_log_level(LETHE_LOG_INFO);
    if (!be) fail_msg("vulkan with %s=%s: %s", var ? var : "-", value ? value : "-", lethe_last_error());
    return be;
}

/* Elements of `k` whose bits differ between the CPU and `be`. */
static int bit_diffs(lethe_backend *be, const op_case *k, uint64_t seed, double *nmse) {
    built ref, got;
    g_kv_mem = be;
    build(k, &ref, seed);
    build(k, &got, seed);
    float *yr = run_on(&g_s.cpu, 1, &ref);
    lethe_backend *bes[2] = {be, g_s.cpu};
    float *yg = run_on(bes, 2, &got);
    if (got.out->backend != 0) fail_msg("%s: the device did not take the op", k->name);
    const size_t n = (size_t)lethe_tensor_nelements(&ref.out->t);
    int d = 0;
    for (size_t i = 0; i < n; i++) d += memcmp(&yr[i], &yg[i], sizeof(float)) != 0;
    *nmse = tu_nmse(yr, yg, n);
    built_free(&ref);
    built_free(&got);
    return d;
}

static void test_native_fma(void **state) {
    (void)state;
    if (g_s.n_devs == 0 || strcmp(g_s.devs[0].name, "vulkan") != 0) skip();
    static const op_case cases[] = {
        MM(Q4_1, 576, 1536, 1),   /* GEMV: fma_rn accumulates the block dots */
        MM(Q4_1, 64, 576, 5),     /* tiled */
        {"swiglu", LETHE_OP_SWIGLU, LETHE_F32, 5, 70, .limit = EPS_ELEM},   /* exp_det, div_rn */
        {"attention f16 G=3 D=128", LETHE_OP_ATTENTION, LETHE_F32, 2, 3, 128, .kv_g = 3, .kv_f16 = true,
         .limit = EPS_MM},
    };
    const int nc = (int)LETHE_ARRAY_SIZE(cases);
    lethe_backend_info info;

    /* the probe runs once per device, when it is made, and backends share
     * a device (one per index and configuration per process): setup's
     * backend holds this one, so it goes, for a fresh device here */
    g_s.devs[0].be->iface->free(g_s.devs[0].be);
    g_s.devs[0].be = NULL;

    /* the probe's own verdict */
    lethe_backend *be = vk_with(NULL, NULL);
    be->iface->get_info(be, &info);
    const int fused = lethe_backend_vulkan_native_fma(be);
    assert_int_equal(g_probe_lines, 1);   /* one probe, one verdict, at debug level */
    assert_int_equal(g_probe_fused, fused);
    assert_int_equal(g_probe_warns, 0);
    /* a second backend shares the device and its verdict: no second probe */
    lethe_backend *be_b = vk_with(NULL, NULL);
    assert_int_equal(g_probe_lines, 0);
    assert_int_equal(lethe_backend_vulkan_native_fma(be_b), fused);
    lethe_device_share sh;
    be_b->iface->device_share(be_b, NULL, 0, &sh);
    assert_int_equal(sh.users, 2);
    be_b->iface->free(be_b);
    if (strstr(info.device_name, "llvmpipe")) assert_int_equal(fused, 0);   /* lavapipe: fma() not fused */
    print_message("  %s: fma() %s\n", info.device_name, fused ? "fused: NATIVE_FMA on" : "not fused: emulated");
    for (int i = 0; i < nc; i++) {
        double e;
        const int d = bit_diffs(be, &cases[i], 500 + (uint64_t)i, &e);
        print_message("  %-28s probe's choice: %d elements differ from the CPU\n", cases[i].name, d);
        assert_int_equal(d, 0);
    }
    be->iface->free(be);
    assert_int_equal(lethe_backend_vulkan_native_fma(g_s.cpu), -1);

    /* forced on: the GEMV differs exactly when the driver does not fuse */
    be = vk_with("LETHE_VK_NATIVE_FMA", "1");
    assert_int_equal(lethe_backend_vulkan_native_fma(be), 1);
    assert_int_equal(g_probe_lines, 0);   /* forced: no probe */
    double e;
    const int d = bit_diffs(be, &cases[0], 500, &e);
    print_message("  %-28s NATIVE_FMA forced on: %d of %d elements differ from the CPU (NMSE %.3g)\n",
                  cases[0].name, d, (int)cases[0].a, e);
    if (fused) assert_int_equal(d, 0);
    else assert_true(d > 0);
    assert_true(e <= EPS_MM);   /* a last-bit matter, not a wrong result */
    be->iface->free(be);

    /* forced off: the emulation, bit-identical on any driver */
    be = vk_with("LETHE_VK_NATIVE_FMA", "0");
    assert_int_equal(lethe_backend_vulkan_native_fma(be), 0);
    assert_int_equal(g_probe_lines, 0);
    assert_int_equal(bit_diffs(be, &cases[0], 500, &e), 0);
    be->iface->free(be);

    /* a bad value: a warning, and the probe decides */
    be = vk_with("LETHE_VK_NATIVE_FMA", "yes");
    assert_int_equal(g_probe_warns, 1);
    assert_int_equal(g_probe_lines, 1);
    assert_int_equal(lethe_backend_vulkan_native_fma(be), fused);
    be->iface->free(be);

    /* the probe cannot run: a warning, the emulation, a working backend */
    be = vk_with("LETHE_VK_FAIL_PIPELINE", "fma_probe");
    assert_int_equal(g_probe_warns, 1);
    assert_int_equal(g_probe_lines, 0);
    assert_int_equal(lethe_backend_vulkan_native_fma(be), 0);
    assert_int_equal(bit_diffs(be, &cases[0], 500, &e), 0);
    be->iface->free(be);

    g_s.devs[0].be = lethe_backend_vulkan_new(0);   /* setup's again, for teardown */
    assert_non_null(g_s.devs[0].be);
}

/* A KV cache the backend cannot spread over its bindings (more chunks than
 * the shaders' 28, or a page larger than one binding) is refused with one
 * warning (so is one whose *_split pipeline failed to build), and its ops
 * run on the CPU over the same memory, with the CPU's
 * results. And where the shared buffer lives is said, once per cache:
 * lavapipe's one memory type is device-local and host-visible;
 * LETHE_VK_KV_MEMORY=host asks for host memory. */
static int g_refusals, g_mem_dev, g_mem_forced;

static void on_kv_log(lethe_log_level level, const char *msg, void *user) {
    (void)user;
    if (level >= LETHE_LOG_WARN && strstr(msg, "KV_STORE and ATTENTION run on the CPU")) g_refusals++;
    if (strstr(msg, "shared buffer (KV cache)")) {
        if (strstr(msg, ": device-local and host-visible")) g_mem_dev++;
        if (strstr(msg, "(LETHE_VK_KV_MEMORY=host)")) g_mem_forced++;
        print_message("    log: %s\n", msg);
    }
    if (strstr(msg, "KV cache of")) print_message("    log: %s\n", msg);
}

static void test_kv_split_refused(void **state) {
    (void)state;
    if (g_s.n_devs == 0 || strcmp(g_s.devs[0].name, "vulkan") != 0) skip();
    static const struct { const char *range, *mem, *fail; } runs[] = {
        {"16384", NULL, NULL},               /* 1 page of 16 KiB per binding: 65 bindings > 28 */
        {"8192", "host", NULL},              /* a page of 16 KiB > a binding */
        {"65536", NULL, "attention_split"},  /* 17 bindings, but a split pipeline failed to build */
    };
    const op_case k = {"attention f32 G=1", LETHE_OP_ATTENTION, LETHE_F32, 3, 2, 64, .kv_g = 1, .limit = EPS_MM};
    for (size_t i = 0; i < LETHE_ARRAY_SIZE(runs); i++) {
        setenv("LETHE_VK_MAX_RANGE", runs[i].range, 1);
        if (runs[i].mem) setenv("LETHE_VK_KV_MEMORY", runs[i].mem, 1);
        if (runs[i].fail) setenv("LETHE_VK_FAIL_PIPELINE", runs[i].fail, 1);
        lethe_backend *be = lethe_backend_vulkan_new(0);
        unsetenv("LETHE_VK_MAX_RANGE");
        unsetenv("LETHE_VK_FAIL_PIPELINE");
        assert_non_null(be);
        g_refusals = g_mem_dev = g_mem_forced = 0;
        lethe_set_log(on_kv_log, NULL);
        built ref, got;
        g_kv_mem = be;
        build(&k, &ref, 77);
        build(&k, &got, 77);
        unsetenv("LETHE_VK_KV_MEMORY");
        float *yr = run_on(&g_s.cpu, 1, &ref);
        lethe_backend *bes[2] = {be, g_s.cpu};
        float *yg = run_on(bes, 2, &got);
        lethe_set_log(NULL, NULL);
        assert_int_equal(got.out->backend, 1);   /* on the CPU */
        assert_int_equal(g_refusals, 1);         /* said once */
        const size_t n = (size_t)lethe_tensor_nelements(&ref.out->t);
        assert_memory_equal(yr, yg, n * sizeof(float));
        /* one line per cache (ref's and got's); lavapipe has one memory type, device-local and host-visible */
        lethe_backend_info info;
        be->iface->get_info(be, &info);
        if (strstr(info.device_name, "llvmpipe")) assert_int_equal(g_mem_dev, 2);
        assert_int_equal(g_mem_forced, runs[i].mem ? 2 : 0);
        built_free(&ref);
        built_free(&got);
        be->iface->free(be);
    }
}

/* The CUDA decode GEMV (k_gemv.cu) on the device: for the 32-block types it
 * computes the CPU's integer dots in the CPU's float order, so every output
 * must be the CPU's bits (odd N: partial warps; K = 576: rows off 16 bytes;
 * K = 1280: a partial chunk; T up to 8); the float types agree to rounding
 * (another summation order). The "wide" layout (LETHE_CUDA_GEMV=wide) gives
 * the same bits; the first kernel (LETHE_CUDA_GEMV=old) still meets the
 * matmul limit. Skips without a CUDA device. */
static void test_cuda_gemv(void **state) {
    (void)state;
    lethe_backend *cu = NULL;
    for (int d = 0; d < g_s.n_devs; d++)
        if (!strcmp(g_s.devs[d].name, "cuda")) cu = g_s.devs[d].be;
    if (!cu) {
        print_message("CUDA: skipped, no CUDA device here\n");
        skip();
    }
    static const op_case exact[] = {
        MM(Q4_0, 67, 128, 1), MM(Q4_1, 67, 128, 1), MM(Q5_0, 40, 160, 1), MM(Q5_1, 40, 160, 1),
        MM(Q8_0, 67, 128, 1), MM(Q4_0, 37, 576, 8), MM(Q4_1, 576, 1536, 1), MM(Q5_0, 13, 1280, 5),
        MM(Q5_1, 19, 576, 3), MM(Q8_0, 41, 1056, 8), MM(Q4_1, 192, 576, 2),
    };
    static const op_case close[] = {
        MM(F32, 67, 96, 1), MM(F16, 67, 128, 8), MM(BF16, 37, 576, 3), MM(F16, 130, 1280, 1),
    };
    double e;
    for (size_t i = 0; i < LETHE_ARRAY_SIZE(exact); i++) {
        const int d = bit_diffs(cu, &exact[i], 900 + (uint64_t)i, &e);
        print_message("  %-28s %d elements differ from the CPU (NMSE %.3g)\n", exact[i].name, d, e);
        assert_int_equal(d, 0);
    }
    for (size_t i = 0; i < LETHE_ARRAY_SIZE(close); i++) {
        bit_diffs(cu, &close[i], 950 + (uint64_t)i, &e);
        print_message("  %-28s NMSE %.3g against the CPU\n", close[i].name, e);
        assert_true(e <= 1e-9);
    }
    setenv("LETHE_CUDA_GEMV", "wide", 1);   /* 2 lanes per row: the same bits */
    lethe_backend *wide = lethe_backend_cuda_new(0);
    unsetenv("LETHE_CUDA_GEMV");
    assert_non_null(wide);
    for (size_t i = 0; i < LETHE_ARRAY_SIZE(exact); i++) {
        const int d = bit_diffs(wide, &exact[i], 900 + (uint64_t)i, &e);
        print_message("  %-28s wide: %d elements differ from the CPU\n", exact[i].name, d);
        assert_int_equal(d, 0);
    }
    wide->iface->free(wide);
    setenv("LETHE_CUDA_GEMV", "old", 1);
    lethe_backend *old = lethe_backend_cuda_new(0);
    unsetenv("LETHE_CUDA_GEMV");
    assert_non_null(old);
    for (size_t i = 0; i < 3; i++) {
        bit_diffs(old, &exact[i], 900 + (uint64_t)i, &e);
        print_message("  %-28s old kernel: NMSE %.3g against the CPU\n", exact[i].name, e);
        assert_true(e <= EPS_MM);
    }
    old->iface->free(old);
}

static int setup(void **state) {
    (void)state;
    g_s.cpu = lethe_backend_cpu_new(2);
    if (!g_s.cpu) return -1;
    lethe_backend *vk = lethe_backend_vulkan_new(0);
    if (vk) {
        device *d = &g_s.devs[g_s.n_devs++];
        d->be = vk;
        d->name = "vulkan";
        tu_pin_vulkan_driver();
        setenv("LETHE_VK_MAX_RANGE", "4096", 1);
        d->split = lethe_backend_vulkan_new(0);
        setenv("LETHE_VK_MAX_RANGE", "65536", 1);   /* = KV_SPLIT_RANGE */
        d->kv_split = lethe_backend_vulkan_new(0);
        unsetenv("LETHE_VK_MAX_RANGE");
        if (!d->split || !d->kv_split) return -1;
    } else {
        print_message("no Vulkan device: %s\n", lethe_last_error());
#ifdef LETHE_HAVE_VULKAN
        /* the build has Vulkan and the setup script installs lavapipe:
         * a missing device is a broken environment, not a skip */
        if (!getenv("LETHE_TEST_ALLOW_NO_DEVICE")) return -1;
#endif
    }
    lethe_backend *cu = lethe_backend_cuda_new(0);
    if (cu) {
        g_s.devs[g_s.n_devs++] = (device){cu, cu, "cuda", NULL};
    } else {
        /* CI has no GPU: the CUDA runs are skipped, and say so */
        print_message("CUDA: skipped, no CUDA device here (%s)\n", lethe_last_error());
        lethe_clear_error();
    }
    return 0;
}

static int teardown(void **state) {
    (void)state;
    for (int d = 0; d < g_s.n_devs; d++) {
        if (g_s.devs[d].split != g_s.devs[d].be) g_s.devs[d].split->iface->free(g_s.devs[d].split);
        if (g_s.devs[d].kv_split) g_s.devs[d].kv_split->iface->free(g_s.devs[d].kv_split);
        if (g_s.devs[d].be) g_s.devs[d].be->iface->free(g_s.devs[d].be);
    }
    g_s.cpu->iface->free(g_s.cpu);
    for (int i = 0; i < g_s.n_mem; i++) free(g_s.mem[i]);
    free(g_s.mem);
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_top_k_reference),
        cmocka_unit_test(test_op_table),
        cmocka_unit_test(test_mixed_placement),
        cmocka_unit_test(test_bad_ids),
        cmocka_unit_test(test_no_device),
        cmocka_unit_test(test_pipeline_failure),
        cmocka_unit_test(test_native_fma),
        cmocka_unit_test(test_kv_split_refused),
        cmocka_unit_test(test_cuda_gemv),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
