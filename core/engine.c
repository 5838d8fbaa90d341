/* engine.c — contexts: the KV cache, micro-batching, decode, logits, stats.
 *
 * A decode call is a transaction over the KV cache: it is split into
 * micro-batches of at most n_batch tokens, each reserved in the cache, built
 * as a graph and executed; if any step fails the cache is rolled back to its
 * state before the call. */
#include "common.h"
#include "engine.h"
#include "executor.h"
#include "kv_cache.h"
#include "llama.h"
#include "model.h"

#include <string.h>
#include <unistd.h>

struct lethe_context {
    lethe_model *model;
    lethe_context_params params;
    lethe_backend *cpu;
    lethe_backend *gpu;       /* NULL: CPU only (model params' backend, see start_gpu) */
    lethe_executor *ex;
    lethe_kv_cache kv;
    lethe_graph *graph;
    /* micro-batch scratch, [n_batch] each */
    int32_t *ub_tokens, *ub_seq, *ub_pos, *ub_out;
    lethe_ubatch ub;
    /* logits of the last decode: rows [n_logits][n_vocab]; row_of[i] maps
     * batch index i to its row, -1 if i did not ask for logits */
    float *logits;
    int32_t *row_of;
    int32_t n_logits, cap_logits, cap_rows, last_batch_n;
    /* on-device sampling support (lethe_get_top_k): per output row its
     * n_top_k best candidates, [n_logits][n_top_k]; with top_k_only the
     * logits rows above are not computed back to the host at all */
    lethe_candidate *cands;
    int32_t cap_cands;              /* rows of n_top_k the buffer holds     */
    int32_t n_top_k;                /* 0: off                               */
    bool top_k_only;
    bool have_logits, have_cands;   /* what the last decode returned        */
    lethe_abort_fn abort_fn;
    void *abort_user;
    lethe_kv_policy_kind policy;   /* resolved: never AUTO */
    lethe_dms_run dms;             /* decisions the graph computes */
};

static const char *const k_policy_names[] = {"auto", "none", "dms", "window", "tova", "h2o", "quest"};
_Static_assert(LETHE_ARRAY_SIZE(k_policy_names) == LETHE_KV_POLICY_QUEST + 1, "a name per policy");

const char *lethe_kv_policy_name(lethe_kv_policy_kind p) {
    return (unsigned)p < LETHE_ARRAY_SIZE(k_policy_names) ? k_policy_names[p] : "?";
}

lethe_status lethe_kv_policy_parse(const char *name, lethe_kv_policy_kind *out) {
    for (unsigned i = 0; name && i < LETHE_ARRAY_SIZE(k_policy_names); i++)
        if (!strcmp(name, k_policy_names[i])) {
            if (out) *out = (lethe_kv_policy_kind)i;
            return LETHE_OK;
        }
    return lethe_fail(LETHE_ERR_INVALID_ARG, "unknown KV policy '%s' (auto, none, dms, window, tova, h2o, quest)",
                      name ? name : "(null)");
}

/* Resolve the policy of a context from its parameters and the model:
 * everything checked here, before anything is allocated. */
static lethe_status resolve_policy(const lethe_hparams *hp, const lethe_context_params *p,
                                   lethe_kv_policy_kind *kind, lethe_kv_policy *kvp, lethe_dms_run *dms) {
    memset(kvp, 0, sizeof *kvp);
    memset(dms, 0, sizeof *dms);
    lethe_kv_policy_kind k = p->kv_policy;
    if ((unsigned)k > LETHE_KV_POLICY_QUEST)
        return lethe_fail(LETHE_ERR_INVALID_ARG, "context: unknown KV policy %d", (int)k);
    const bool dms_model = hp->dms.variant != LETHE_DMS_NONE;
    const bool forced = !(p->dms_force_rate < 0.0f);   /* NaN counts as set, and is refused below */
    if (k == LETHE_KV_POLICY_AUTO) k = dms_model || forced ? LETHE_KV_POLICY_DMS : LETHE_KV_POLICY_NONE;
    *kind = k;
    if (forced && (k != LETHE_KV_POLICY_DMS || !(p->dms_force_rate <= 1.0f)))
        return lethe_fail(LETHE_ERR_INVALID_ARG,
                          "context: dms_force_rate %g must be in [0, 1] and goes with the dms policy",
                          (double)p->dms_force_rate);
    if (p->dms_window < -1 || p->kv_budget_tokens < 0)
        return lethe_fail(LETHE_ERR_INVALID_ARG, "context: dms_window %d / kv_budget_tokens %d out of range",
                          p->dms_window, p->kv_budget_tokens);
    switch (k) {
    case LETHE_KV_POLICY_NONE:
        return LETHE_OK;
    case LETHE_KV_POLICY_DMS: {
        if (!dms_model && !forced)
            return lethe_fail(LETHE_ERR_INVALID_ARG,
                              "context: the model makes no DMS decisions (not a DMS model): use another policy, or "
                              "dms_force_rate to measure forced eviction");
        int32_t w = p->dms_window >= 0 ? p->dms_window : dms_model ? hp->dms.window : -1;
        if (w < 0)
            return lethe_fail(LETHE_ERR_INVALID_ARG, "context: forced DMS on a non-DMS model needs dms_window");
        if (w >= p->n_ctx)
            return lethe_fail(LETHE_ERR_INVALID_ARG,
                              "context: DMS window %d is not smaller than the context of %d tokens: nothing could "
                              "ever be evicted (raise n_ctx or lower dms_window)", w, p->n_ctx);
        kvp->rule = LETHE_KV_RULE_DMS;
        kvp->window = w;
        dms->on = true;
        if (forced) {
            dms->mode = LETHE_DMS_FORCED;
            dms->rate = p->dms_force_rate;
        } else {
            dms->mode = hp->dms.variant == LETHE_DMS_ADAPTER ? LETHE_DMS_FROM_ADAPTER : LETHE_DMS_FROM_Q;
            dms->scale = hp->dms.alpha_scale;
            dms->offset = hp->dms.alpha_offset;
            dms->per_layer = hp->dms.per_layer;
        }
        return LETHE_OK;
    }
    default: {
        const int32_t b = p->kv_budget_tokens;
        const int32_t min_b = k == LETHE_KV_POLICY_WINDOW ? 5 : k == LETHE_KV_POLICY_QUEST ? LETHE_KV_PAGE : 2;
        if (b < min_b)
            return lethe_fail(LETHE_ERR_INVALID_ARG, "context: the %s policy needs kv_budget_tokens >= %d (got %d)",
                              lethe_kv_policy_name(k), min_b, b);
        kvp->budget = b;
        kvp->rule = k == LETHE_KV_POLICY_WINDOW ? LETHE_KV_RULE_WINDOW
                  : k == LETHE_KV_POLICY_TOVA   ? LETHE_KV_RULE_TOVA
                  : k == LETHE_KV_POLICY_H2O    ? LETHE_KV_RULE_H2O
                                                : LETHE_KV_RULE_QUEST;
        kvp->sinks = 4;
        kvp->recent = b / 2;
        return LETHE_OK;
    }
    }
}

lethe_context_params lethe_context_default_params(void) {
    lethe_context_params p = {0};
    p.n_ctx = 0;
    p.n_seq_max = 1;
    p.n_batch = 512;
    p.n_threads = 0;
    p.kv_type = LETHE_KV_F16;
    p.kv_budget_bytes = 0;
    p.kv_policy = LETHE_KV_POLICY_AUTO;
    p.kv_budget_tokens = 0;
    p.dms_window = -1;
    p.dms_force_rate = -1.0f;
    return p;
}

void lethe_context_free(lethe_context *c) {
    if (!c) return;
    lethe_executor_free(c->ex);
    lethe_kv_free(&c->kv);   /* before the backends: its pool may be a device's shared buffer */
    if (c->gpu) c->gpu->iface->free(c->gpu);
    if (c->cpu) c->cpu->iface->free(c->cpu);
    lethe_graph_free(c->graph);
    free(c->ub_tokens);
    free(c->ub_seq);
    free(c->ub_pos);
    free(c->ub_out);
    free(c->logits);
    free(c->row_of);
    free(c->cands);
    free(c);
}

/* Memory cap (lethe_context_params.mem_limit_bytes). Fixed bytes = the KV
 * pool + host buffers sized `logit_rows` rows of logits; what is left of
 * the cap goes to the executor, which refuses a batch before allocating. */
static size_t other_bytes(const lethe_context *c, int32_t logit_rows, int32_t rows, int32_t cand_rows) {
    return (size_t)logit_rows * c->model->hp.n_vocab * sizeof(float) + (size_t)rows * sizeof(int32_t) +
           (size_t)cand_rows * (size_t)c->n_top_k * sizeof(lethe_candidate) +
           4 * (size_t)c->params.n_batch * sizeof(int32_t) + (size_t)c->graph->cap * sizeof(lethe_node);
}

static size_t kv_pool_bytes(const lethe_context *c) { return (size_t)c->kv.n_pages * c->kv.page_bytes; }

static lethe_status apply_mem_limit(lethe_context *c, int32_t n_out, int32_t n_rows) {
    size_t cap = c->params.mem_limit_bytes;
    if (!cap) return LETHE_OK;
    size_t fixed = kv_pool_bytes(c) +
                   other_bytes(c, c->top_k_only ? c->cap_logits : LETHE_MAX(n_out, c->cap_logits),
                               LETHE_MAX(n_rows, c->cap_rows), c->n_top_k ? LETHE_MAX(n_out, c->cap_cands) : 0);
    size_t compute = lethe_executor_memory(c->ex);
    if (fixed + compute > cap)
        return lethe_fail(LETHE_ERR_OOM,
                          "memory cap: %zu bytes of KV pool, %zu of compute buffers and %zu of logits and "
                          "staging exceed mem_limit_bytes = %zu",
                          kv_pool_bytes(c), compute, fixed - kv_pool_bytes(c), cap);
    lethe_executor_set_mem_limit(c->ex, cap - fixed);
    return LETHE_OK;
}

/* The device backend the model params ask for ("vulkan"; "auto": the first
 * that starts), or NULL for the CPU alone. A device that cannot start is a
 * warning, not an error: the CPU runs everything then. */
static lethe_backend *lethe_engine_start_gpu(const char *name, int device) {
    if (!name || strcmp(name, "cpu") == 0) return NULL;
    lethe_backend *be = lethe_backend_gpu_new(name, device);
    if (!be && strcmp(name, "auto") != 0)
        LETHE_LOGW("backend %s unavailable (%s): running on the CPU", name, lethe_last_error());
    lethe_clear_error();
    return be;
}

lethe_context *lethe_context_new(lethe_model *m, lethe_context_params p, lethe_status *status) {
    lethe_status st = LETHE_OK;
    lethe_context *c = NULL;
    lethe_clear_error();
    if (!m) { st = lethe_fail(LETHE_ERR_INVALID_ARG, "context: model is NULL"); goto fail; }
    const lethe_hparams *hp = &m->hp;
    if (p.n_ctx == 0) p.n_ctx = LETHE_MIN(hp->n_ctx_train, 4096);
    if (p.n_ctx < 1 || p.n_ctx > (1 << 24) || p.n_seq_max < 1 || p.n_seq_max > 4096 || p.n_batch < 1 ||
        p.n_threads < 0 || p.n_threads > 1024 || (p.kv_type != LETHE_KV_F16 && p.kv_type != LETHE_KV_F32)) {
        st = lethe_fail(LETHE_ERR_INVALID_ARG,
                        "context: invalid parameters (n_ctx %d, n_seq_max %d, n_batch %d, n_threads %d)",
                        p.n_ctx, p.n_seq_max, p.n_batch, p.n_threads);
        goto fail;
    }
    if (p.n_batch > p.n_ctx) p.n_batch = p.n_ctx;
    if (p.n_top_k < 0 || p.n_top_k > LETHE_TOP_K_MAX || p.n_top_k > hp->n_vocab || (p.top_k_only && !p.n_top_k)) {
        st = lethe_fail(LETHE_ERR_INVALID_ARG, "context: n_top_k %d must be in [0, min(%d, n_vocab %d)]%s",
                        p.n_top_k, LETHE_TOP_K_MAX, hp->n_vocab,
                        p.top_k_only && !p.n_top_k ? ", and > 0 with top_k_only" : "");
        goto fail;
    }
    lethe_kv_policy kvp;
    lethe_kv_policy_kind kind = LETHE_KV_POLICY_NONE;
    lethe_dms_run dms;
    if ((st = resolve_policy(hp, &p, &kind, &kvp, &dms)) != LETHE_OK) goto fail;
    c = calloc(1, sizeof *c);
    if (!c) { st = lethe_fail(LETHE_ERR_OOM, "context"); goto fail; }
    c->model = m;
    c->params = p;
    c->policy = kind;
    c->dms = dms;
    c->n_top_k = p.n_top_k;
    c->top_k_only = p.top_k_only;

    lethe_dtype kt = p.kv_type == LETHE_KV_F16 ? LETHE_F16 : LETHE_F32;
    size_t budget = p.kv_budget_bytes;
    if (!budget) {   /* room for every sequence at full context, page-rounded per stream */
        size_t pages = (size_t)((p.n_ctx + LETHE_KV_PAGE - 1) / LETHE_KV_PAGE);
        budget = pages * 2 * LETHE_KV_PAGE * lethe_row_size(kt, hp->head_dim) *
                 (size_t)hp->n_layer * hp->n_head_kv * p.n_seq_max;
    }
    if (p.mem_limit_bytes && budget > p.mem_limit_bytes) {   /* refuse before allocating the pool */
        st = lethe_fail(LETHE_ERR_OOM, "memory cap: a KV pool of %zu bytes exceeds mem_limit_bytes = %zu",
                        budget, p.mem_limit_bytes);
        goto fail;
    }
    int n_threads = p.n_threads > 0 ? p.n_threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    c->cpu = lethe_backend_cpu_new(n_threads);
    if (!c->cpu) { st = lethe_fail(LETHE_ERR_BACKEND, "context: cannot create the CPU backend"); goto fail; }
    c->gpu = lethe_engine_start_gpu(m->params.backend, m->params.device);
    /* a device that offers shared memory holds the KV pool, so its kernels
     * read the cache in place while the host does the bookkeeping */
    if ((st = lethe_kv_init(&c->kv, p.n_seq_max, hp->n_layer, hp->n_head_kv, hp->head_dim, kt,
                            budget, p.n_batch, &kvp, c->gpu)) != LETHE_OK)
        goto fail;
    lethe_backend *bes[2] = {c->gpu, c->cpu};
    c->ex = c->gpu ? lethe_executor_new(bes, 2) : lethe_executor_new(&c->cpu, 1);
    c->graph = lethe_graph_new(lethe_llama_graph_size(m));
    size_t nb = (size_t)p.n_batch;
    c->ub_tokens = malloc(nb * sizeof(int32_t));
    c->ub_seq = malloc(nb * sizeof(int32_t));
    c->ub_pos = malloc(nb * sizeof(int32_t));
    c->ub_out = malloc(nb * sizeof(int32_t));
    if (!c->ex || !c->graph || !c->ub_tokens || !c->ub_seq || !c->ub_pos || !c->ub_out) {
        st = lethe_fail(LETHE_ERR_OOM, "context");
        goto fail;
    }
    c->ub.seq_id = c->ub_seq;
    c->ub.pos = c->ub_pos;
    if ((st = apply_mem_limit(c, 0, 0)) != LETHE_OK) goto fail;
    if (status) *status = LETHE_OK;
    return c;
fail:
    lethe_context_free(c);
    if (status) *status = st;
    return NULL;
}

int32_t lethe_n_ctx(const lethe_context *c) { return c ? c->params.n_ctx : 0; }

lethe_batch lethe_batch_one(const lethe_token *tokens, int32_t n_tokens) {
    lethe_batch b = {0};
    b.n_tokens = n_tokens;
    b.tokens = tokens;
    return b;
}

void lethe_set_abort_callback(lethe_context *c, lethe_abort_fn fn, void *user) {
    if (!c) return;
    c->abort_fn = fn;
    c->abort_user = user;
}

/* Run one micro-batch (already in c->ub_*); logits rows go to `row0`... */
static lethe_status run_ubatch(lethe_context *c, int32_t n, int32_t n_out, int32_t row0) {
    lethe_status st = lethe_kv_reserve(&c->kv, n, c->ub_seq, c->ub_pos);
    if (st != LETHE_OK) return st;
    c->ub.n_tokens = n;
    lethe_graph_reset(c->graph);
    lethe_node *logits = lethe_llama_build(c->graph, c->model, &c->kv, &c->ub, c->ub_tokens,
                                           c->ub_out, n_out, &c->dms);
    /* Candidates are selected where the head ran (TOP_K goes to the first
     * backend that supports it, as every node): on a GPU only k pairs per
     * row come back when the logits are not outputs too. */
    lethe_node *cands = NULL;
    if (logits && n_out > 0 && c->n_top_k > 0) {
        cands = lethe_top_k(c->graph, logits, c->n_top_k);
        if (cands) {
            lethe_set_output(cands);
            if (c->top_k_only) logits->is_output = false;
        }
    }
    if (!logits || (n_out > 0 && c->n_top_k > 0 && !cands))
        return c->graph->status != LETHE_OK ? c->graph->status
                                            : lethe_fail(LETHE_ERR_INTERNAL, "graph build failed");
    st = lethe_executor_run(c->ex, c->graph, c->abort_fn, c->abort_user);
    if (st != LETHE_OK) return st;
    lethe_kv_settle(&c->kv, n, c->ub_seq);
    if (n_out > 0 && !c->top_k_only)
        memcpy(c->logits + (size_t)row0 * c->model->hp.n_vocab, logits->t.data,
               (size_t)n_out * c->model->hp.n_vocab * sizeof(float));
    if (cands)   /* [n_out, k, 2] i32 = lethe_candidate {id, logit} pairs */
        memcpy(c->cands + (size_t)row0 * c->n_top_k, cands->t.data,
               (size_t)n_out * c->n_top_k * sizeof(lethe_candidate));
    return LETHE_OK;
}

lethe_status lethe_decode(lethe_context *c, lethe_batch b) {
    if (!c) return lethe_fail(LETHE_ERR_INVALID_ARG, "decode: context is NULL");
    lethe_clear_error();
    const int32_t n = b.n_tokens, V = c->model->hp.n_vocab;
    if (n <= 0 || !b.tokens) return lethe_fail(LETHE_ERR_INVALID_ARG, "decode: empty batch");
    lethe_kv_cache *kv = &c->kv;

    /* Validate everything before touching the cache. */
    int32_t add[kv->n_seq];
    memset(add, 0, sizeof add);
    int32_t n_out = 0;
    for (int32_t i = 0; i < n; i++) {
        int32_t s = b.seq_id ? b.seq_id[i] : 0;
        if (s < 0 || s >= kv->n_seq)
            return lethe_fail(LETHE_ERR_INVALID_ARG, "decode: token %d has sequence id %d, outside [0, %d)",
                              i, s, kv->n_seq);
        if (b.tokens[i] < 0 || b.tokens[i] >= V)
            return lethe_fail(LETHE_ERR_INVALID_ARG, "decode: token %d has id %d, outside the vocabulary [0, %d)",
                              i, b.tokens[i], V);
        int32_t expect = kv->seq_pos[s] + add[s];
        if (b.pos && b.pos[i] != expect)
            return lethe_fail(LETHE_ERR_INVALID_ARG,
                              "decode: token %d of sequence %d has position %d, expected %d (positions continue the sequence)",
                              i, s, b.pos[i], expect);
        /* stop counting at the context: positions past it fail below, and
         * the sum can then never overflow */
        if (kv->seq_pos[s] + add[s] > c->params.n_ctx)
            return lethe_fail(LETHE_ERR_CONTEXT_FULL,
                              "decode: sequence %d would hold more than the context of %d tokens", s,
                              c->params.n_ctx);
        add[s]++;
        if (b.logits ? b.logits[i] != 0 : i == n - 1) n_out++;
    }
    for (int s = 0; s < kv->n_seq; s++)
        if (add[s] && kv->seq_pos[s] + add[s] > c->params.n_ctx)
            return lethe_fail(LETHE_ERR_CONTEXT_FULL,
                              "decode: sequence %d would hold %d tokens, more than the context of %d",
                              s, kv->seq_pos[s] + add[s], c->params.n_ctx);
    lethe_status st = apply_mem_limit(c, n_out, n);
    if (st != LETHE_OK) return st;
    /* grow-only buffers: steady decoding allocates nothing */
    if (c->n_top_k > 0 && n_out > c->cap_cands) {
        lethe_candidate *cd = realloc(c->cands, (size_t)n_out * c->n_top_k * sizeof *cd);
        if (!cd) return lethe_fail(LETHE_ERR_OOM, "decode: candidates buffer");
        c->cands = cd;
        c->cap_cands = n_out;
    }
    if (!c->top_k_only && n_out > c->cap_logits) {
        float *lg = realloc(c->logits, (size_t)n_out * V * sizeof(float));
        if (!lg) return lethe_fail(LETHE_ERR_OOM, "decode: logits buffer");
        c->logits = lg;
        c->cap_logits = n_out;
    }
    if (n > c->cap_rows) {
        int32_t *ro = realloc(c->row_of, (size_t)n * sizeof(int32_t));
        if (!ro) return lethe_fail(LETHE_ERR_OOM, "decode: logits index");
        c->row_of = ro;
        c->cap_rows = n;
    }
    c->last_batch_n = n;
    c->n_logits = 0;

    lethe_kv_begin(kv);
    int32_t next_pos[kv->n_seq];
    memcpy(next_pos, kv->seq_pos, sizeof next_pos);
    int32_t row = 0;
    for (int32_t i0 = 0; i0 < n && st == LETHE_OK; i0 += c->params.n_batch) {
        int32_t m = LETHE_MIN(c->params.n_batch, n - i0), m_out = 0, row0 = row;
        for (int32_t j = 0; j < m; j++) {
            int32_t i = i0 + j, s = b.seq_id ? b.seq_id[i] : 0;
            c->ub_tokens[j] = b.tokens[i];
            c->ub_seq[j] = s;
            c->ub_pos[j] = next_pos[s]++;
            bool want = b.logits ? b.logits[i] != 0 : i == n - 1;
            c->row_of[i] = want ? row : -1;
            if (want) { c->ub_out[m_out++] = j; row++; }
        }
        st = run_ubatch(c, m, m_out, row0);
    }
    if (st != LETHE_OK) {
        lethe_kv_rollback(kv);
        c->n_logits = 0;
        c->last_batch_n = 0;
        return st;
    }
    lethe_kv_commit(kv);
    c->n_logits = row;
    c->have_logits = !c->top_k_only;
    c->have_cands = c->n_top_k > 0;
    return LETHE_OK;
}

/* Row of batch index i (-1: the last) among the outputs of the last
 * decode, or -1 with the failure set (`what` names the caller). */
static int32_t output_row(const lethe_context *c, int32_t i, const char *what) {
    if (!c || c->n_logits == 0) {
        lethe_fail(LETHE_ERR_INVALID_ARG, "%s: no logits (no successful decode asked for them)", what);
        return -1;
    }
    int32_t row;
    if (i < -1) {
        lethe_fail(LETHE_ERR_INVALID_ARG, "%s: index %d (use -1 for the last token with logits)", what, i);
        return -1;
    } else if (i < 0) {
        row = c->n_logits - 1;
    } else if (i >= c->last_batch_n || (row = c->row_of[i]) < 0) {
        lethe_fail(LETHE_ERR_INVALID_ARG, "%s: token %d of the last batch did not ask for logits", what, i);
        return -1;
    }
    return row;
}

const float *lethe_get_logits(lethe_context *c, int32_t i) {
    const int32_t row = output_row(c, i, "get_logits");
    if (row < 0) return NULL;
    if (!c->have_logits) {
        lethe_fail(LETHE_ERR_INVALID_ARG, "get_logits: the context returns only top-k candidates (top_k_only): "
                   "use lethe_get_top_k, or lethe_set_outputs to ask for logits");
        return NULL;
    }
    return c->logits + (size_t)row * c->model->hp.n_vocab;
}

int32_t lethe_get_top_k(lethe_context *c, int32_t i, const lethe_candidate **out) {
    if (out) *out = NULL;
    if (!out) return -(int32_t)lethe_fail(LETHE_ERR_INVALID_ARG, "get_top_k: out is NULL");
    const int32_t row = output_row(c, i, "get_top_k");
    if (row < 0) return -(int32_t)LETHE_ERR_INVALID_ARG;
    if (!c->have_cands)
        return -(int32_t)lethe_fail(LETHE_ERR_INVALID_ARG,
                                    "get_top_k: the last decode selected no candidates (n_top_k is 0)");
    *out = c->cands + (size_t)row * c->n_top_k;
    return c->n_top_k;
}

lethe_status lethe_set_outputs(lethe_context *c, int32_t n_top_k, bool top_k_only) {
    if (!c) return lethe_fail(LETHE_ERR_INVALID_ARG, "set_outputs: context is NULL");
    if (n_top_k < 0 || n_top_k > LETHE_TOP_K_MAX || n_top_k > c->model->hp.n_vocab || (top_k_only && !n_top_k))
        return lethe_fail(LETHE_ERR_INVALID_ARG, "set_outputs: n_top_k %d must be in [0, min(%d, n_vocab %d)]%s",
                          n_top_k, LETHE_TOP_K_MAX, c->model->hp.n_vocab,
                          top_k_only && !n_top_k ? ", and > 0 with top_k_only" : "");
    if (n_top_k != c->n_top_k) {   /* rows are n_top_k wide: regrow at the next decode */
        free(c->cands);
        c->cands = NULL;
        c->cap_cands = 0;
    }
    c->n_top_k = n_top_k;
    c->top_k_only = top_k_only;
    c->params.n_top_k = n_top_k;
    c->params.top_k_only = top_k_only;
    c->n_logits = 0;   /* what the last decode returned no longer matches */
    c->have_logits = c->have_cands = false;
    return LETHE_OK;
}

int32_t lethe_seq_len(const lethe_context *c, int32_t s) {
    if (!c || s < 0 || s >= c->kv.n_seq) return -1;
    return c->kv.seq_pos[s];
}

lethe_status lethe_seq_clear(lethe_context *c, int32_t s) {
    if (!c || s < -1 || s >= c->kv.n_seq)
        return lethe_fail(LETHE_ERR_INVALID_ARG, "seq_clear: sequence %d out of range", s);
    for (int i = 0; i < c->kv.n_seq; i++)
        if (s == -1 || s == i) lethe_kv_seq_clear(&c->kv, i);
    if (s == -1) c->kv.reads = c->kv.evicted = 0;
    return LETHE_OK;
}

lethe_status lethe_seq_fork(lethe_context *c, int32_t src, int32_t dst) {
    if (!c || src < 0 || dst < 0 || src >= c->kv.n_seq || dst >= c->kv.n_seq)
        return lethe_fail(LETHE_ERR_INVALID_ARG, "seq_fork: sequence out of range");
    return lethe_kv_seq_copy(&c->kv, src, dst);
}

lethe_kv_stats lethe_get_kv_stats(const lethe_context *c) {
    lethe_kv_stats s = {0};
    if (!c) return s;
    const lethe_kv_cache *kv = &c->kv;
    int64_t live = 0, streams = 0;
    for (int q = 0; q < kv->n_seq; q++) {
        if (kv->seq_pos[q] == 0) continue;
        s.tokens_seen += kv->seq_pos[q];
        for (int l = 0; l < kv->n_layer; l++)
            for (int h = 0; h < kv->n_head_kv; h++) {
                live += lethe_kv_live(lethe_kv_stream_at(kv, q, l, h));
                streams++;
            }
    }
    int n_live_seq = 0;
    for (int q = 0; q < kv->n_seq; q++) n_live_seq += kv->seq_pos[q] > 0;
    s.mean_live_slots = streams ? (double)live / streams : 0.0;
    /* CR per the reference: tokens seen per sequence over mean live slots */
    s.compression_ratio = s.mean_live_slots > 0 ? (double)s.tokens_seen / n_live_seq / s.mean_live_slots : 1.0;
    s.bytes_resident = lethe_kv_bytes_resident(kv);
    s.bytes_peak = kv->bytes_peak;
    s.bytes_capacity = (size_t)kv->n_pages * kv->page_bytes;
    s.reads = kv->reads;
    s.evicted = kv->evicted;
    s.policy = c->policy;
    s.dms_window = kv->policy.rule == LETHE_KV_RULE_DMS ? kv->policy.window : 0;
    return s;
}

int32_t lethe_kv_head_len(const lethe_context *c, int32_t s, int32_t layer, int32_t head) {
    if (!c || s < 0 || s >= c->kv.n_seq || layer < 0 || layer >= c->kv.n_layer || head < 0 ||
        head >= c->kv.n_head_kv)
        return -1;
    return lethe_kv_live(lethe_kv_stream_at(&c->kv, s, layer, head));
}

const lethe_kv_cache *lethe_context_kv(const lethe_context *c) { return c ? &c->kv : NULL; }
lethe_kv_cache *lethe_context_kv_mut(lethe_context *c) {
    if (c) c->n_logits = 0;   /* a changed cache makes the last logits stale */
    return c ? &c->kv : NULL;
}
const struct lethe_model *lethe_context_model(const lethe_context *c) { return c ? c->model : NULL; }
lethe_backend *lethe_context_gpu(const lethe_context *c) { return c ? c->gpu : NULL; }

size_t lethe_model_memory_bytes(const lethe_model *m) {
    if (!m) return 0;
    if (!m->gguf) return m->info.weight_bytes;   /* HF directory: the weights as mapped or converted */
    return m->gguf->map ? m->gguf->map_size : m->gguf->size;
}

double lethe_get_device_ms(const lethe_context *c) {
    if (!c || !c->gpu || !c->gpu->iface->device_ms) return -1.0;
    return c->gpu->iface->device_ms(c->gpu);
}

typedef struct device_weights {
    lethe_backend *be;
    size_t bytes;
    int users;
} device_weights;

static void add_device_weight(const lethe_tensor *t, void *user) {
    device_weights *w = user;
    lethe_device_share sh;
    w->be->iface->device_share(w->be, t->data, lethe_tensor_nbytes(t), &sh);
    w->bytes += sh.weight_bytes;
    w->users = sh.users;
}

lethe_memory_info lethe_get_memory_info(const lethe_context *c) {
    lethe_memory_info mi = {0};
    if (!c) return mi;
    mi.model_bytes = lethe_model_memory_bytes(c->model);
    mi.kv_bytes = kv_pool_bytes(c);
    mi.compute_bytes = lethe_executor_memory(c->ex);
    mi.other_bytes = other_bytes(c, c->cap_logits, c->cap_rows, c->cap_cands);
    mi.context_bytes = mi.kv_bytes + mi.compute_bytes + mi.other_bytes;
    mi.mem_limit_bytes = c->params.mem_limit_bytes;
    if (c->gpu && c->gpu->iface->device_share) {   /* the device's one copy of this model's weights */
        device_weights w = {c->gpu, 0, 0};
        lethe_model_for_each_weight(c->model, add_device_weight, &w);
        mi.device_weight_bytes = w.bytes;
        mi.device_contexts = w.users;
    }
    return mi;
}
