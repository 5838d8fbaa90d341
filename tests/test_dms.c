/* test_dms.c — DMS exactly as DESIGN.md §3.1 states it, against a float64
 * dense reference that builds its attention mask from the flags.
 *
 * Tiny random llama- and qwen3-shaped models (f32 weights, f32 KV cache),
 * both decision variants, windows 0..16, sequences several windows long so
 * that evictions happen. Every engine path — one prefill, token by token,
 * chunked prefill inside one call, prefill after decode across calls — must
 * give the reference's logits (1e-5 relative), its flags (the expiry of
 * every live slot) and its per-head live lengths.
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
#include <unistd.h>

#include "engine.h"
#include "hf_convert.h"
#include "model.h"
#include "synth.h"
#include "ref_model.h"
#include "testutil.h"

/* --------------------------------------------------------------- engine */

typedef struct {
    const char *arch;
    int variant;        /* 1 neuron, 2 adapter */
    bool per_layer;
    int window;
    float offset;       /* 5: mixed decisions; 1e6: all keep; -1e6: all evict */
    int n_tokens;
} dms_case;

static char *make_model(const dms_case *dc, uint64_t seed) {
    lethe_synth_params p = lethe_synth_default_params();
    p.arch = dc->arch;
    p.n_layer = 2;
    p.n_embd = 64;
    p.n_head = 4;
    p.n_head_kv = 2;
    p.n_ff = 96;
    p.seed = seed;
    p.dms_variant = dc->variant;
    p.dms_window = dc->window;
    p.dms_alpha_offset = dc->offset;
    p.dms_per_layer = dc->per_layer;
    char *path = tu_write_temp("", 0);
    lethe_status st = lethe_synth_write(path, p);
    if (st != LETHE_OK) fail_msg("synth: %s", lethe_last_error());
    return path;
}

static lethe_model *load(const char *path) {
    lethe_status st;
    lethe_model *m = lethe_model_load(path, lethe_model_default_params(), &st);
    if (!m) fail_msg("load: %s: %s", lethe_strerror(st), lethe_last_error());
    return m;
}

static lethe_context *new_ctx(lethe_model *m, int n_batch, lethe_kv_policy_kind pol) {
    lethe_context_params p = lethe_context_default_params();
    p.n_ctx = 256;
    p.n_batch = n_batch;
    p.n_threads = 2;
    p.kv_type = LETHE_KV_F32;
    p.kv_policy = pol;
    lethe_status st;
    lethe_context *c = lethe_context_new(m, p, &st);
    if (!c) fail_msg("context: %s: %s", lethe_strerror(st), lethe_last_error());
    return c;
}

/* Feed tokens [0, N) in decode calls of the given sizes (cycled), keeping
 * every position's logits: [N][V]. */
static float *run_calls(lethe_context *c, const int32_t *tok, int N, const int *sizes, int n_sizes, int V) {
    float *out = malloc(sizeof(float) * (size_t)N * V);
    int8_t want[256];
    memset(want, 1, sizeof want);
    for (int i = 0, k = 0; i < N; k++) {
        int n = sizes[k % n_sizes];
        if (n > N - i) n = N - i;
        lethe_batch b = lethe_batch_one(tok + i, n);
        b.logits = want;
        lethe_status st = lethe_decode(c, b);
        if (st != LETHE_OK) fail_msg("decode: %s", lethe_last_error());
        for (int j = 0; j < n; j++) memcpy(out + (size_t)(i + j) * V, lethe_get_logits(c, j), sizeof(float) * V);
        i += n;
    }
    return out;
}

/* The cache after N tokens holds exactly the tokens the next query sees,
 * each with the right flag: expire = j + w + 1 if flagged, else never. */
static void check_cache(lethe_context *c, const lethe_model *m, const uint8_t *flag, int N, int w, const char *what) {
    const lethe_kv_cache *kv = lethe_context_kv(c);
    const int L = m->hp.n_layer, Hkv = m->hp.n_head_kv;
    for (int l = 0; l < L; l++)
        for (int h = 0; h < Hkv; h++) {
            const lethe_kv_stream *s = lethe_kv_stream_at(kv, 0, l, h);
            int expect_live = 0;
            for (int j = 0; j < N; j++) expect_live += N - j <= w || !flag[((size_t)l * N + j) * Hkv + h];
            if (lethe_kv_live(s) != expect_live || lethe_kv_head_len(c, 0, l, h) != expect_live)
                fail_msg("%s: layer %d head %d holds %d live tokens, reference %d", what, l, h, lethe_kv_live(s),
                         expect_live);
            assert_true(s->n_holes <= LETHE_KV_MAX_HOLES);
            uint8_t seen[256] = {0};
            for (int i = 0; i < s->len; i++) {
                const int32_t p = *lethe_kv_pos(kv, s, i), e = *lethe_kv_expire(kv, s, i);
                if (p == LETHE_KV_HOLE) continue;
                assert_true(p >= 0 && p < N && !seen[p]);
                seen[p] = 1;
                const bool f = flag[((size_t)l * N + p) * Hkv + h];
                if (e != (f ? p + w + 1 : LETHE_KV_NEVER))
                    fail_msg("%s: layer %d head %d token %d: expire %d, flag %d (w %d)", what, l, h, p, e, f, w);
            }
        }
}

/* Every engine path on model m against the reference; returns the number of
 * (layer, token, head) flags the reference raised. */
static int check_model(lethe_model *m, int N, uint64_t seed, const char *label) {
    const int V = m->hp.n_vocab, w = m->hp.dms.window;
    int32_t tok[256];
    for (int i = 0; i < N; i++) tok[i] = (int32_t)((i * 7919u + seed * 31u) % (uint32_t)(V < 300 ? V : 300));
    double *ref = malloc(sizeof(double) * (size_t)N * V);
    uint8_t *flag = malloc((size_t)m->hp.n_layer * N * m->hp.n_head_kv);
    const ref_policy pol = {.rule = REF_DMS, .window = w};
    ref_forward(m, tok, N, &pol, ref, flag, NULL);
    int n_flag = 0;
    for (size_t i = 0; i < (size_t)m->hp.n_layer * N * m->hp.n_head_kv; i++) n_flag += flag[i];

    struct { const char *name; int n_batch; int sizes[4]; int n_sizes; } paths[] = {
        {"one prefill", 256, {256}, 1},
        {"token by token", 256, {1}, 1},
        {"chunked prefill (n_batch 7)", 7, {256}, 1},
        {"multi-turn (prefill, decode, prefill...)", 5, {13, 1, 9, 1}, 4},
    };
    for (size_t k = 0; k < sizeof paths / sizeof paths[0]; k++) {
        lethe_context *c = new_ctx(m, paths[k].n_batch, LETHE_KV_POLICY_AUTO);
        float *got = run_calls(c, tok, N, paths[k].sizes, paths[k].n_sizes, V);
        const double err = ref_worst_rel(got, ref, N, V);
        if (!(err <= 1e-5)) fail_msg("%s w=%d: %s: logits off by %.3g relative", label, w, paths[k].name, err);
        check_cache(c, m, flag, N, w, paths[k].name);
        lethe_kv_stats ks = lethe_get_kv_stats(c);
        assert_int_equal(ks.policy, LETHE_KV_POLICY_DMS);
        assert_int_equal(ks.tokens_seen, N);
        free(got);
        lethe_context_free(c);
    }
    free(ref);
    free(flag);
    return n_flag;
}

static void run_case(const dms_case *dc, uint64_t seed) {
    char *path = make_model(dc, seed);
    lethe_model *m = load(path);
    assert_int_equal(m->hp.dms.variant, dc->variant);
    assert_int_equal(m->hp.dms.window, dc->window);
    char label[96];
    snprintf(label, sizeof label, "%s %s offset %g", dc->arch, dc->variant == 1 ? "neuron" : "adapter",
             (double)dc->offset);
    const int n_flag = check_model(m, dc->n_tokens, seed, label);
    if (dc->offset == 5.0f && dc->window < dc->n_tokens - 2) assert_true(n_flag > 0);   /* evictions happened */
    lethe_model_free(m);
    unlink(path);
    free(path);
}

/* Hugging Face DMS checkpoints (config.json dms_* keys; tests/data/hf, made
 * by tools/peer/make-hf-fixtures.py) run as DMS with no conversion. */
static void test_hf_checkpoints(void **state) {
    (void)state;
    const char *dirs[] = {"dms-neuron", "dms-adapter"};
    for (int i = 0; i < 2; i++) {
        char path[1024];
        snprintf(path, sizeof path, "%s/hf/%s", tu_data_dir(), dirs[i]);
        lethe_model *m = load(path);
        assert_int_equal(m->hp.dms.variant, i == 0 ? LETHE_DMS_NEURON : LETHE_DMS_ADAPTER);
        const int n_flag = check_model(m, 60, 91 + (uint64_t)i, dirs[i]);
        assert_true(n_flag > 0);   /* evictions happen */
        lethe_model_free(m);
        /* `lethe convert` (f32): the GGUF carries the DMS keys and tensors and runs the same */
        char *gguf = tu_write_temp("", 0);
        assert_int_equal(lethe_hf_convert(path, gguf, LETHE_F32), LETHE_OK);
        m = load(gguf);
        assert_int_equal(m->hp.dms.variant, i == 0 ? LETHE_DMS_NEURON : LETHE_DMS_ADAPTER);
        assert_int_equal(m->hp.dms.window, 16);
        check_model(m, 60, 91 + (uint64_t)i, dirs[i]);
        lethe_model_free(m);
        unlink(gguf);
        free(gguf);
    }
}

static void test_neuron_llama(void **state) {
    (void)state;
    for (int w = 0; w <= 16; w += w < 4 ? 4 : w) {   /* 0, 4, 8, 16 */
        dms_case dc = {"llama", 1, false, w, 5.0f, 3 * w + 20};
        run_case(&dc, 11 + (uint64_t)w);
    }
}

static void test_neuron_qwen3(void **state) {
    (void)state;
    dms_case dc = {"qwen3", 1, false, 8, 5.0f, 48};
    run_case(&dc, 21);
    dms_case pl = {"qwen3", 1, true, 4, 5.0f, 40};   /* alpha_per layer */
    run_case(&pl, 22);
}

static void test_adapter(void **state) {
    (void)state;
    dms_case dc = {"llama", 2, false, 8, 5.0f, 50};
    run_case(&dc, 31);
    dms_case q3 = {"qwen3", 2, false, 16, 5.0f, 64};
    run_case(&q3, 32);
    dms_case pl = {"qwen2", 2, true, 4, 5.0f, 30};
    run_case(&pl, 33);
}

/* Every decision "evict": pure sliding-window attention over w + 1 tokens,
 * the reference's mask with every flag set. Every decision "keep": the same
 * bits as the model without eviction. */
static void test_all_evict_all_keep(void **state) {
    (void)state;
    dms_case ev = {"llama", 1, false, 4, -1e6f, 30};
    run_case(&ev, 41);
    dms_case ka = {"qwen3", 2, false, 4, 1e6f, 30};
    run_case(&ka, 42);

    char *path = make_model(&ka, 43);
    lethe_model *m = load(path);
    const int N = 30, V = m->hp.n_vocab;
    int32_t tok[30];
    for (int i = 0; i < N; i++) tok[i] = (int32_t)(i * 37 % 300);
    const int one[1] = {1};
    lethe_context *a = new_ctx(m, 256, LETHE_KV_POLICY_DMS), *b = new_ctx(m, 256, LETHE_KV_POLICY_NONE);
    float *la = run_calls(a, tok, N, one, 1, V), *lb = run_calls(b, tok, N, one, 1, V);
    assert_memory_equal(la, lb, sizeof(float) * (size_t)N * V);
    free(la);
    free(lb);
    lethe_context_free(a);
    lethe_context_free(b);
    lethe_model_free(m);
    unlink(path);
    free(path);

    /* all evict: between steps every head holds the w newest tokens (the
     * next one makes w + 1 while it attends) */
    path = make_model(&ev, 44);
    m = load(path);
    lethe_context *c = new_ctx(m, 256, LETHE_KV_POLICY_AUTO);
    for (int i = 0; i < N; i++) {
        assert_int_equal(lethe_decode(c, lethe_batch_one(&tok[i], 1)), LETHE_OK);
        for (int l = 0; l < m->hp.n_layer; l++)
            for (int h = 0; h < m->hp.n_head_kv; h++) assert_int_equal(lethe_kv_head_len(c, 0, l, h), i + 1 < 4 ? i + 1 : 4);
    }
    /* the cache never grew past its pages for w + 1 = 5 slots: one page per head */
    lethe_kv_stats ks = lethe_get_kv_stats(c);
    assert_int_equal(ks.bytes_peak, (size_t)m->hp.n_layer * m->hp.n_head_kv * lethe_context_kv(c)->page_bytes);
    assert_true(ks.compression_ratio == 7.5);   /* 30 tokens seen, 4 live */
    lethe_context_free(c);
    lethe_model_free(m);
    unlink(path);
    free(path);
}

/* Parallel sequences: a prompt prefilled once, forked N ways, decoded in one
 * batch per step (one token of each sequence) gives every sequence exactly
 * the logits it gets alone; each has its own per-head cache. */
static void test_parallel_equals_alone(void **state) {
    (void)state;
    dms_case dc = {"llama", 1, false, 4, 5.0f, 0};
    char *path = make_model(&dc, 51);
    lethe_model *m = load(path);
    const int V = m->hp.n_vocab, NP = 12, NS = 4, STEPS = 20;
    int32_t prompt[12], cont[4][20];
    for (int i = 0; i < NP; i++) prompt[i] = (int32_t)(i * 19 % 300);
    for (int s = 0; s < NS; s++)
        for (int i = 0; i < STEPS; i++) cont[s][i] = (int32_t)((s * 101 + i * 7) % 300);

    lethe_context_params p = lethe_context_default_params();
    p.n_ctx = 64;
    p.n_seq_max = NS;
    p.n_threads = 2;
    p.kv_type = LETHE_KV_F32;
    lethe_status st;
    lethe_context *c = lethe_context_new(m, p, &st);
    assert_non_null(c);
    assert_int_equal(lethe_decode(c, lethe_batch_one(prompt, NP)), LETHE_OK);
    for (int s = 1; s < NS; s++) assert_int_equal(lethe_seq_fork(c, 0, s), LETHE_OK);
    float *par = malloc(sizeof(float) * (size_t)NS * STEPS * V);
    for (int i = 0; i < STEPS; i++) {
        int32_t tok[4], ids[4];
        int8_t want[4] = {1, 1, 1, 1};
        for (int s = 0; s < NS; s++) { tok[s] = cont[s][i]; ids[s] = s; }
        lethe_batch b = {.n_tokens = NS, .tokens = tok, .seq_id = ids, .logits = want};
        assert_int_equal(lethe_decode(c, b), LETHE_OK);
        for (int s = 0; s < NS; s++) memcpy(par + ((size_t)s * STEPS + i) * V, lethe_get_logits(c, s), sizeof(float) * V);
    }
    /* the heads of different sequences evicted differently */
    bool differ = false;
    for (int s = 1; s < NS; s++) differ = differ || lethe_kv_head_len(c, s, 1, 0) != lethe_kv_head_len(c, 0, 1, 0);
    assert_true(differ);
    lethe_context_free(c);

    p.n_seq_max = 1;
    for (int s = 0; s < NS; s++) {
        lethe_context *a = lethe_context_new(m, p, &st);
        assert_int_equal(lethe_decode(a, lethe_batch_one(prompt, NP)), LETHE_OK);
        for (int i = 0; i < STEPS; i++) {
            assert_int_equal(lethe_decode(a, lethe_batch_one(&cont[s][i], 1)), LETHE_OK);
            assert_memory_equal(lethe_get_logits(a, -1), par + ((size_t)s * STEPS + i) * V, sizeof(float) * V);
        }
        lethe_context_free(a);
    }
    free(par);
    lethe_model_free(m);
    unlink(path);
    free(path);
}

/* Under a KV byte budget: a fork that does not fit is refused with a status
 * and disturbs nothing; a decode that runs out of pages fails and leaves
 * every head as it was; eviction lets a DMS sequence go on where a plain
 * one stops. */
static void test_budget_admission(void **state) {
    (void)state;
    dms_case dc = {"llama", 1, false, 0, -1e6f, 0};   /* every token flagged, w = 0: one live token per head */
    char *path = make_model(&dc, 61);
    lethe_model *m = load(path);
    lethe_context_params p = lethe_context_default_params();
    p.n_ctx = 200;
    p.n_seq_max = 3;
    p.n_threads = 2;
    p.kv_type = LETHE_KV_F32;
    const size_t streams = (size_t)m->hp.n_layer * m->hp.n_head_kv;
    lethe_status st;
    lethe_context *c = lethe_context_new(m, p, &st);
    const size_t page = lethe_context_kv(c)->page_bytes;
    lethe_context_free(c);
    p.kv_budget_bytes = 2 * streams * page;   /* two pages per head stream in all */
    c = lethe_context_new(m, p, &st);
    assert_non_null(c);
    int32_t tok[150];
    for (int i = 0; i < 150; i++) tok[i] = (int32_t)(i % 300);
    /* DMS frees as it goes: 150 tokens in 10-token calls fit in one page per head */
    for (int i = 0; i < 150; i += 10) assert_int_equal(lethe_decode(c, lethe_batch_one(tok + i, 10)), LETHE_OK);
    assert_int_equal(lethe_kv_head_len(c, 0, 0, 0), 1);
    assert_int_equal(lethe_seq_fork(c, 0, 1), LETHE_OK);                       /* the second page of each head */
    assert_int_equal(lethe_seq_fork(c, 0, 2), LETHE_ERR_CONTEXT_FULL);         /* no third */
    assert_int_equal(lethe_seq_len(c, 2), 0);
    assert_int_equal(lethe_seq_len(c, 0), 150);
    assert_int_equal(lethe_seq_len(c, 1), 150);
    /* a call of 40 tokens needs a second page per head while it runs: refused, nothing changed */
    int32_t lens[64];
    for (int l = 0; l < m->hp.n_layer; l++)
        for (int h = 0; h < m->hp.n_head_kv; h++) lens[l * m->hp.n_head_kv + h] = lethe_kv_head_len(c, 1, l, h);
    lethe_kv_stats before = lethe_get_kv_stats(c);
    assert_int_equal(lethe_decode(c, lethe_batch_one(tok, 40)), LETHE_ERR_CONTEXT_FULL);
    lethe_kv_stats after = lethe_get_kv_stats(c);
    assert_int_equal(after.bytes_resident, before.bytes_resident);
    assert_int_equal(lethe_seq_len(c, 0), 150);
    for (int l = 0; l < m->hp.n_layer; l++)
        for (int h = 0; h < m->hp.n_head_kv; h++) assert_int_equal(lens[l * m->hp.n_head_kv + h], lethe_kv_head_len(c, 1, l, h));
    /* and the sequences go on */
    assert_int_equal(lethe_decode(c, lethe_batch_one(tok, 10)), LETHE_OK);
    assert_int_equal(lethe_seq_len(c, 0), 160);
    lethe_context_free(c);

    /* the same budget without eviction runs out after two pages of tokens */
    p.kv_policy = LETHE_KV_POLICY_NONE;
    p.n_seq_max = 1;
    c = lethe_context_new(m, p, &st);
    int i = 0;
    for (; i < 150; i += 10)
        if ((st = lethe_decode(c, lethe_batch_one(tok + i, 10))) != LETHE_OK) break;
    assert_int_equal(st, LETHE_ERR_CONTEXT_FULL);
    assert_int_equal(lethe_seq_len(c, 0), 2 * LETHE_KV_PAGE - 4);   /* 60: the call to 70 did not fit */
    lethe_context_free(c);
    lethe_model_free(m);
    unlink(path);
    free(path);
}

/* Bad DMS metadata is refused at load with a clear status. */
static void test_bad_dms_files(void **state) {
    (void)state;
    lethe_synth_params p = lethe_synth_default_params();
    p.dms_variant = 2;
    char *path = tu_write_temp("", 0);
    assert_int_equal(lethe_synth_write(path, p), LETHE_OK);
    /* corrupt the variant string in place */
    size_t n;
    char *bytes = tu_read_file(path, &n);
    char *hit = memmem(bytes, n, "adapter", 7);
    assert_non_null(hit);
    hit[5] = 'o';   /* "adaptor" */
    char *bad = tu_write_temp(bytes, n);
    lethe_status st;
    assert_null(lethe_model_load(bad, lethe_model_default_params(), &st));
    assert_int_equal(st, LETHE_ERR_CORRUPT);
    assert_non_null(strstr(lethe_last_error(), "dms.variant"));
    unlink(bad);
    free(bad);
    /* an adapter variant without its layer-0 tensor */
    hit[5] = 'e';
    char *dup = memmem(bytes, n, "dms_alpha.weight", 16);
    assert_non_null(dup);
    dup[0] = 'x';   /* blk.0.xms_alpha.weight: the adapter of layer 0 is missing */
    bad = tu_write_temp(bytes, n);
    assert_null(lethe_model_load(bad, lethe_model_default_params(), &st));
    assert_int_equal(st, LETHE_ERR_MISSING_TENSOR);
    unlink(bad);
    free(bad);
    free(bytes);
    unlink(path);
    free(path);
    p.dms_window = -3;
    path = tu_write_temp("", 0);
    assert_int_equal(lethe_synth_write(path, p), LETHE_ERR_INVALID_ARG);
    unlink(path);
    free(path);
}

/* A safetensors DMS adapter for a model of n_layer layers: rows x E alpha
 * and E norm per layer (f32), random; `skip_layer` leaves one layer out;
 * meta_window NULL: no metadata. Returns the temp path. */
static char *write_adapter(int n_layer, int rows, int E, int skip_layer, const char *meta_window, uint64_t seed) {
    char hdr[8192];
    size_t off = 0, n = 0;
    n += (size_t)snprintf(hdr + n, sizeof hdr - n, "{");
    if (meta_window) n += (size_t)snprintf(hdr + n, sizeof hdr - n, "\"__metadata__\":{\"dms_window_size\":\"%s\"},", meta_window);
    for (int l = 0; l < n_layer; l++) {
        if (l == skip_layer) continue;
        n += (size_t)snprintf(hdr + n, sizeof hdr - n,
                              "\"model.layers.%d.self_attn.dms_proj_alpha.weight\":{\"dtype\":\"F32\",\"shape\":[%d,%d],"
                              "\"data_offsets\":[%zu,%zu]},",
                              l, rows, E, off, off + (size_t)rows * E * 4);
        off += (size_t)rows * E * 4;
        n += (size_t)snprintf(hdr + n, sizeof hdr - n,
                              "\"model.layers.%d.self_attn.dms_proj_alpha_norm.weight\":{\"dtype\":\"F32\",\"shape\":[%d],"
                              "\"data_offsets\":[%zu,%zu]},",
                              l, E, off, off + (size_t)E * 4);
        off += (size_t)E * 4;
    }
    hdr[n - 1] = '}';
    const size_t total = 8 + n + off;
    uint8_t *buf = malloc(total);
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)((uint64_t)n >> (8 * i));
    memcpy(buf + 8, hdr, n);
    float *data = (float *)(buf + 8 + n);   /* unaligned is fine for memcpy-based readers */
    float v[1];
    uint64_t x = seed;
    for (size_t i = 0; i < off / 4; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        v[0] = (float)((double)(x >> 40) / (double)(1ull << 24) - 0.5) * 0.6f;
        memcpy((uint8_t *)data + 4 * i, v, 4);
    }
    char *path = tu_write_temp(buf, total);
    free(buf);
    return path;
}

/* --dms-adapter: a base model + a separately shipped adapter runs as a DMS
 * model, exactly; a mismatched or broken adapter is refused with a status. */
static void test_adapter_file(void **state) {
    (void)state;
    dms_case base = {"llama", 0, false, 0, 5.0f, 0};
    char *path = make_model(&base, 71);
    lethe_model_params mp = lethe_model_default_params();
    lethe_status st;
    char *ad = write_adapter(2, 2, 64, -1, "8", 5);
    mp.dms_adapter = ad;
    lethe_model *m = lethe_model_load(path, mp, &st);
    if (!m) fail_msg("adapter: %s", lethe_last_error());
    assert_int_equal(m->hp.dms.variant, LETHE_DMS_ADAPTER);
    assert_int_equal(m->hp.dms.window, 8);
    assert_int_equal(lethe_model_get_info(m).dms_variant, 2);
    assert_true(check_model(m, 40, 72, "llama + adapter file") > 0);
    /* the loaded values are the file's */
    size_t n;
    uint8_t *bytes = tu_read_file(ad, &n);
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = hl << 8 | bytes[i];
    assert_memory_equal(m->layers[0].dms_alpha.data, bytes + 8 + hl, 2 * 64 * sizeof(float));
    free(bytes);
    lethe_model_free(m);
    unlink(ad);
    free(ad);

    struct { int rows, E, skip; const char *meta; lethe_status want; } bad[] = {
        {2, 65, -1, NULL, LETHE_ERR_SHAPE},          /* width of another model */
        {3, 64, -1, NULL, LETHE_ERR_SHAPE},          /* more heads than the model */
        {2, 64, 1, NULL, LETHE_ERR_MISSING_TENSOR},  /* layer 1 missing */
        {2, 64, -1, "abc", LETHE_ERR_CORRUPT},       /* bad window metadata */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ad = write_adapter(2, bad[i].rows, bad[i].E, bad[i].skip, bad[i].meta, 9);
        mp.dms_adapter = ad;
        assert_null(lethe_model_load(path, mp, &st));
        if (st != bad[i].want) fail_msg("bad adapter %zu: status %s (%s)", i, lethe_strerror(st), lethe_last_error());
        unlink(ad);
        free(ad);
    }
    mp.dms_adapter = "/nonexistent/adapter.safetensors";
    assert_null(lethe_model_load(path, mp, &st));
    assert_int_equal(st, LETHE_ERR_IO);
    unlink(path);
    free(path);
    /* a model that already is DMS takes no adapter */
    dms_case neuron = {"llama", 1, false, 4, 5.0f, 0};
    path = make_model(&neuron, 73);
    ad = write_adapter(2, 2, 64, -1, NULL, 5);
    mp.dms_adapter = ad;
    assert_null(lethe_model_load(path, mp, &st));
    assert_int_equal(st, LETHE_ERR_INVALID_ARG);
    unlink(ad);
    free(ad);
    unlink(path);
    free(path);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_neuron_llama),
        cmocka_unit_test(test_neuron_qwen3),
        cmocka_unit_test(test_adapter),
        cmocka_unit_test(test_all_evict_all_keep),
        cmocka_unit_test(test_hf_checkpoints),
        cmocka_unit_test(test_adapter_file),
        cmocka_unit_test(test_parallel_equals_alone),
        cmocka_unit_test(test_budget_admission),
        cmocka_unit_test(test_bad_dms_files),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
