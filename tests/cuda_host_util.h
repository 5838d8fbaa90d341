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
    int32_t seq[256], pos[256];
    float *k, *v, *q, *dec;
} kv_built;

/* Build case c into b (seed: the rows, k, v, q and the DMS logits); two
 * builds from one seed are identical. kv_build_spec: the cache from `spec`
 * (its T, Hkv, D as c's), the rest as kv_build. */
void kv_build(const kv_case *c, kv_built *b, uint64_t seed);
void kv_build_spec(const kv_case *c, const tu_kv_spec *spec, kv_built *b, uint64_t seed);
void kv_built_free(kv_built *b);
/* The KV cases' graph on g: KV_STORE of k, v [T][Hkv][D] into `layer` of
 * kv (DMS decisions from dec [T][Hkv], adapter-style logits 1 * x - 0 = x:
 * the decisions are dec exactly; NULL: none), then ATTENTION of q
 * [T][Hkv G][D] over it (scale 1/sqrt(D)), the graph's output; ub (T
 * tokens) must outlive g. Returns the ATTENTION node, *store the KV_STORE. */
lethe_node *kv_attn_graph(lethe_graph *g, lethe_kv_cache *kv, int layer, int G, const lethe_ubatch *ub, float *k,
                          float *v, float *q, float *dec, lethe_node **store);

/* The launch plan (cuda_plan.h) with a fake device: every node's "device
 * address" is derived from its index in the graph, scratch is at
 * 0x200000000000, so two plans of the same graph shape compare byte for
 * byte exactly as the module's would. */
typedef struct fake_dev {
    const lethe_graph *g;
    size_t scratch_bytes;   /* what the plan asked of fake_scratch */
    int prepared;           /* kv_prepare calls */
    bool host_addr;         /* resolve = the node's host address (the executor's memory plan) */
    int n_over;             /* overrides: node over_node[i] at over_addr[i] */
    int over_node[8];
    uint64_t over_addr[8];
} fake_dev;
#define FAKE_SCRATCH 0x200000000000ull   /* fake_scratch's address */
/* f's address of node n (fake_resolve, the plan's resolve callback). */
int fake_resolve(void *user, const lethe_node *n, uint64_t *dev);
/* The plan's environment on fake device f for graph g (sets f->g, keeps
 * the rest of f): 132 SMs, GEMV_NEW, no activation scratch, no
 * tensor-core prefill, no fusion; tests set the fields they vary. */
cu_plan_env fake_env(fake_dev *f, const lethe_graph *g);
/* cu_plan_build_pl of all of g (fails the test on an error). */
void plan_build_env(cu_plan *p, const cu_plan_env *env, const cu_plist_env *pl, lethe_graph *g, bool bucketed);
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

/* KV_STORE of b through the module's tables (cu_kv_store_rows) and the
 * kernel's steps, as the device does before attention; *view: b's cache as
 * the kernels see it. */
void kv_store_tables(kv_built *b, const kv_case *c, lethe_cu_kv_view *view);
/* The CPU backend's ATTENTION output of b's graph [n_out] (the graph run,
 * KV_STORE first; the cache left as the attention read it). Caller frees. */
float *cpu_attn_out(lethe_backend *cpu, kv_built *b, size_t n_out);

/* One decode step on: the commit (the step before's policy evictions), DMS
 * flags, holes, growth, and each token one position on (reserved). */
void kv_advance(kv_built *b, int step);

#endif
