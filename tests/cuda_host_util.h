/* cuda_host_util.h — the set-up the test_cuda_host_* tests share: they run
 * the CUDA kernels' own per-lane code, compiled for the host
 * (backends/cuda/hostcheck/k_hostcheck.cu), and the module's launch plan
 * (cuda_plan.c, with a fake device) on the CPU, against the CPU backend.
 * Here: the host entry points of k_hostcheck.cu, KV cases (a cache and its
 * KV_STORE + ATTENTION graph, built twice from one seed: the CPU's reference
 * and the "device's" copy), the plan with fake device addresses, and the
 * decode steps that advance a case. Linked only into builds with the CUDA
 * backend (LETHE_HAVE_CUDA). Include after <cmocka.h>. */
#ifndef LETHE_CUDA_HOST_UTIL_H
#define LETHE_CUDA_HOST_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "cuda_kv_meta.h"
#include "cuda_plan.h"
#include "graph.h"
#include "kv_cache.h"
#include "testutil.h"

/* k_hostcheck.cu: the kernels' steps on the host (0: done) */
int lethe_cu_host_kv_store(const lethe_cu_kv_view *kv, const float *k, const float *v, const float *dec,
                           const lethe_cu_kv_row *rows, int64_t n_rows);
int lethe_cu_host_attention(const lethe_cu_kv_view *kv, const float *q, float *out, const lethe_cu_attn_work *work,
                            int n_blocks, int decode, const int32_t *plists, const int32_t *qpos, int Hkv, int G,
                            float scale, int chunk, int n_split, int cap, float *wts, int wstride);
int lethe_cu_host_quest(const lethe_cu_kv_view *kv, const float *q, lethe_cu_attn_work *work, int n_items,
                        int32_t *plists, int sel_base, int k, const int32_t *qpos, int Hkv, int G,
                        const int32_t *entries, int n_entries);
int lethe_cu_host_quest_refresh(const lethe_cu_kv_view *kv, const lethe_cu_attn_work *work, const int32_t *plists,
                                const int32_t *ref, int n_items);


/* KV cases: a cache of 2 sequences x 2 layers x Hkv heads with `hist`
 * tokens of history in sequence 0 (9 in sequence 1), random rows, every 5th
 * token DMS-flagged (expired or still visible), head h of layer 1 of
 * sequence 0 dropping 2h + 1 slots (holes, or a compaction past 4); then a
 * micro-batch of T tokens reserved: alternating sequences (decode shape) or
 * runs (the first 3/5 of the tokens sequence 0, the rest sequence 1)
 * (testutil.h tu_kv_setup, shared with test_backend_ops). */
#define KV_LAYER TU_KV_LAYER
#define KV_W TU_KV_W
typedef struct kv_case {
    const char *name;
    int T, Hkv, D, G, hist;
    bool f16, runs, dms;
    int rule;       /* LETHE_KV_RULE_TOVA / H2O / QUEST (0: DMS) */
    int budget;     /* the policy's budget */
    bool tie;       /* QUEST: pages 1 and 3 of sequence 0 share their (dominant) keys */
} kv_case;

typedef struct kv_built {
    lethe_kv_cache kv;
    lethe_graph *g;
    lethe_node *store, *attn;
    lethe_ubatch ub;
    int32_t seq[64], pos[64];
    float *k, *v, *q, *dec;
} kv_built;

/* Build case c into b (seed: the rows, k, v, q and the DMS logits); two
 * builds from one seed are identical. */
void kv_build(const kv_case *c, kv_built *b, uint64_t seed);
void kv_built_free(kv_built *b);

/* The launch plan (cuda_plan.h) with a fake device: every node's "device
 * address" is derived from its index in the graph, scratch is at
 * 0x200000000000, so two plans of the same graph shape compare byte for
 * byte exactly as the module's would. */
typedef struct fake_dev {
    const lethe_graph *g;
    size_t scratch_bytes;   /* what the plan asked of fake_scratch */
    int prepared;           /* kv_prepare calls */
} fake_dev;
/* The plan of g (fails the test on an error). plan_of: the step graphs'
 * weights are f32, no GEMV activation scratch; plan_of_gemv: the GEMV
 * variant and its activation-bytes rule. */
void plan_of(lethe_graph *g, bool bucketed, cu_plan *p, fake_dev *f);
void plan_of_gemv(lethe_graph *g, bool bucketed, cu_plan *p, fake_dev *f, int variant,
                  size_t (*act)(int, int64_t, int64_t, int));
/* The staging region at offset `off` of a launch argument (fails if none). */
const cu_region *region_at(const cu_plan *p, uint64_t off);
/* The nth launch of a kind, NULL if none. */
const cu_launch *launch_of(const cu_plan *p, int kind, int nth);
/* Staged argument s of launch l: its bytes in the plan's staging buffer
 * (fails unless staged, in a region of that kind). */
const void *staged(const cu_plan *p, const cu_launch *l, int s, int kind);
/* The plain plan p0 and the bucketed p1 of one graph: the same launches,
 * values and staged bytes but for what the buckets size. */
void check_plain_vs_bucketed(const cu_plan *p0, const cu_plan *p1);

/* One decode step on: the commit (the step before's policy evictions), DMS
 * flags, holes, growth, and each token one position on (reserved). */
void kv_advance(kv_built *b, int step);

#endif
