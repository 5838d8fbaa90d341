/*
 * lethe.h — the public C API of lethe, a portable LLM inference engine whose
 * KV cache learns to forget (Dynamic Memory Sparsification).
 *
 * Conventions
 *  - Opaque handles. Constructors return NULL on failure; the reason is
 *    available from lethe_last_error() (thread-local) and the status from the
 *    optional `lethe_status *` out-parameter.
 *  - Every fallible call returns a lethe_status; lethe_strerror() names it.
 *  - `*_default_params()` returns a params struct by value; change what you
 *    need and pass it back by value.
 *  - The library never prints to stdout and never exits: diagnostics go to
 *    the log callback (stderr, level >= WARN, by default).
 *  - A failed lethe_decode() leaves the KV cache exactly as it was.
 *
 * Thread safety: a lethe_model is read-only after load and may be shared by
 * many contexts; a lethe_context must be used by one thread at a time.
 */
#ifndef LETHE_H
#define LETHE_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Exported symbols: the library is built with hidden visibility, so only
 * what is marked LETHE_API is visible to applications. */
#if defined(_WIN32) && defined(LETHE_BUILD)
#  define LETHE_API __declspec(dllexport)
#elif defined(_WIN32) && !defined(LETHE_STATIC)
#  define LETHE_API __declspec(dllimport)
#elif defined(__GNUC__)
#  define LETHE_API __attribute__((visibility("default")))
#else
#  define LETHE_API
#endif

#define LETHE_VERSION_MAJOR 0
#define LETHE_VERSION_MINOR 1
#define LETHE_VERSION_PATCH 0

/* ---- status and errors -------------------------------------------------- */

typedef enum lethe_status {
    LETHE_OK = 0,
    LETHE_ERR_INVALID_ARG,      /* a NULL handle, a bad parameter value            */
    LETHE_ERR_OOM,              /* an allocation failed                            */
    LETHE_ERR_IO,               /* open/read/mmap failed (missing file, ...)       */
    LETHE_ERR_BAD_MAGIC,        /* not a model file of the expected format         */
    LETHE_ERR_BAD_VERSION,      /* a format version this build does not read       */
    LETHE_ERR_TRUNCATED,        /* the file ends before its header/data says       */
    LETHE_ERR_CORRUPT,          /* inconsistent content (offsets, sizes, strings)  */
    LETHE_ERR_UNSUPPORTED,      /* a valid file using something not implemented    */
    LETHE_ERR_UNSUPPORTED_DTYPE,/* a tensor dtype this build cannot compute with   */
    LETHE_ERR_MISSING_TENSOR,   /* the architecture needs a tensor the file lacks  */
    LETHE_ERR_SHAPE,            /* a tensor's shape does not match the config      */
    LETHE_ERR_CONTEXT_FULL,     /* the tokens do not fit in the context / budget   */
    LETHE_ERR_BACKEND,          /* a backend failed or is not available            */
    LETHE_ERR_TOKENIZER,        /* tokenizer data missing or invalid               */
    LETHE_ERR_ABORTED,          /* stopped by the abort callback                   */
    LETHE_ERR_INTERNAL,         /* a bug: an invariant did not hold                */
    LETHE_STATUS_COUNT
} lethe_status;

/* Short, stable, human-readable name of a status ("file is truncated", ...). */
LETHE_API const char *lethe_strerror(lethe_status s);
/* Detailed message of the last failure on this thread ("" if none). */
LETHE_API const char *lethe_last_error(void);

/* ---- logging ------------------------------------------------------------ */

typedef enum lethe_log_level {
    LETHE_LOG_DEBUG = 0, LETHE_LOG_INFO, LETHE_LOG_WARN, LETHE_LOG_ERROR
} lethe_log_level;

typedef void (*lethe_log_fn)(lethe_log_level level, const char *msg, void *user);
/* Replace the log sink (NULL restores the default: stderr, WARN and above). */
LETHE_API void lethe_set_log(lethe_log_fn fn, void *user);
/* Minimum level passed to the sink. */
LETHE_API void lethe_set_log_level(lethe_log_level level);

/* "0.1.0 (backends: cpu vulkan cuda)": the version and the backends this
 * build of the library has. */
LETHE_API const char *lethe_version(void);
/* Folder where backends built as loadable modules (liblethe-<name>.so) are
 * looked up: $LETHE_BACKEND_DIR if set, else "lethe/" next to the shared
 * library (or <prefix>/lib/lethe for a program in <prefix>/bin that links
 * lethe statically). Found from the library's own path, so it follows the
 * install prefix. */
LETHE_API const char *lethe_backend_dir(void);

/* ---- model -------------------------------------------------------------- */

typedef struct lethe_model lethe_model;
typedef struct lethe_context lethe_context;
typedef int32_t lethe_token;

/* Called while loading with progress in [0,1]; return false to cancel. */
typedef bool (*lethe_progress_fn)(float progress, void *user);

typedef struct lethe_model_params {
    const char *backend;          /* "cpu" (default), "vulkan", "cuda", "auto"  */
    int device;                   /* device index within the backend (0)        */
    bool use_mmap;                /* map the file instead of reading it (true)  */
    lethe_progress_fn progress;   /* optional                                   */
    void *progress_user;
    const char *dms_adapter;      /* a DMS adapter (safetensors) to apply to a
                                     model that is not DMS, or NULL            */
} lethe_model_params;

LETHE_API lethe_model_params lethe_model_default_params(void);

/* Load a GGUF file. Returns NULL and sets *status (if non-NULL) on failure. */
LETHE_API lethe_model *lethe_model_load(const char *path, lethe_model_params params,
                                        lethe_status *status);
LETHE_API void lethe_model_free(lethe_model *model);

typedef struct lethe_model_info {
    char arch[32];                /* "llama", "qwen2", "qwen3"                   */
    char name[128];               /* general.name, or ""                         */
    int32_t n_layer, n_embd, n_head, n_head_kv, head_dim, n_ff, n_vocab;
    int32_t n_ctx_train;
    uint64_t n_params;            /* number of weights                           */
    uint64_t weight_bytes;        /* bytes of weights as stored                  */
    int32_t dms_variant;          /* 0: not a DMS model, 1: neuron, 2: adapter   */
    int32_t dms_window;           /* the model's DMS window w (0 if not DMS)     */
} lethe_model_info;

LETHE_API lethe_model_info lethe_model_get_info(const lethe_model *model);
/* A metadata value of the model file rendered as text; returns the length
 * written (excluding NUL) or -1 if the key does not exist. */
LETHE_API int lethe_model_meta_str(const lethe_model *model, const char *key,
                                   char *buf, size_t buf_size);

/* ---- tokenizer ---------------------------------------------------------- */

/* Tokenize UTF-8 text. `add_special`: add BOS/EOS as the model asks.
 * `parse_special`: recognise special-token text such as "<|im_start|>".
 * Returns the number of tokens; if larger than max_tokens nothing beyond
 * max_tokens is written and the caller should retry with a larger buffer.
 * Returns a negative lethe_status on error. */
LETHE_API int32_t lethe_tokenize(const lethe_model *model, const char *text, size_t text_len,
                                 lethe_token *tokens, int32_t max_tokens,
                                 bool add_special, bool parse_special);
/* Bytes of one token's text (may be a partial UTF-8 sequence). Returns the
 * length (which may exceed buf_size: nothing is written then) or < 0. */
LETHE_API int32_t lethe_token_to_piece(const lethe_model *model, lethe_token token,
                                       char *buf, int32_t buf_size, bool render_special);
LETHE_API lethe_token lethe_token_bos(const lethe_model *model);   /* -1 if none */
LETHE_API lethe_token lethe_token_eos(const lethe_model *model);
/* End of generation: EOS, EOT, <|im_end|>, <|eot_id|>, ... */
LETHE_API bool lethe_token_is_eog(const lethe_model *model, lethe_token token);
LETHE_API int32_t lethe_n_vocab(const lethe_model *model);

/* ---- chat templates ----------------------------------------------------- */

typedef struct lethe_chat_message {
    const char *role;     /* "system", "user", "assistant" */
    const char *content;
} lethe_chat_message;

/* Render messages with the model's chat template (ChatML or Llama 3, detected
 * from the GGUF template; ChatML if the model has none). Returns the length
 * of the rendered text (excluding NUL); if >= buf_size the output is
 * truncated and the caller should retry. Negative lethe_status on error. */
LETHE_API int32_t lethe_chat_apply(const lethe_model *model, const lethe_chat_message *msgs,
                                   size_t n_msgs, bool add_assistant_prompt,
                                   char *buf, int32_t buf_size);

/* ---- context ------------------------------------------------------------ */

typedef enum lethe_kv_type { LETHE_KV_F16 = 0, LETHE_KV_F32 = 1 } lethe_kv_type;

/* Which tokens the KV cache forgets (DESIGN.md §3). Every policy works per
 * (sequence, layer, KV head) and frees memory, except QUEST (reads only). */
typedef enum lethe_kv_policy_kind {
    LETHE_KV_POLICY_AUTO = 0, /* DMS for a DMS model, NONE otherwise                    */
    LETHE_KV_POLICY_NONE,     /* keep every token                                       */
    LETHE_KV_POLICY_DMS,      /* the model's learned decisions, delayed by the window   */
    LETHE_KV_POLICY_WINDOW,   /* StreamingLLM: 4 sink tokens + the most recent          */
    LETHE_KV_POLICY_TOVA,     /* over budget: drop the least attended by the last query */
    LETHE_KV_POLICY_H2O,      /* recent half of the budget + heavy hitters              */
    LETHE_KV_POLICY_QUEST,    /* keep all, attend to the top pages by a key bound       */
} lethe_kv_policy_kind;

/* "auto", "none", "dms", "window", "tova", "h2o", "quest" */
LETHE_API const char *lethe_kv_policy_name(lethe_kv_policy_kind p);
/* Parse a policy name; LETHE_ERR_INVALID_ARG for an unknown one. */
LETHE_API lethe_status lethe_kv_policy_parse(const char *name, lethe_kv_policy_kind *out);

typedef struct lethe_context_params {
    int32_t n_ctx;            /* max tokens per sequence (0: model's training ctx, capped at 4096) */
    int32_t n_seq_max;        /* max concurrent sequences (1)                       */
    int32_t n_batch;          /* max tokens per lethe_decode call (512)             */
    int32_t n_threads;        /* CPU threads (0: all cores)                         */
    size_t mem_limit_bytes;   /* cap on what the context allocates: KV pool, compute
                                 buffers, logits (0: none). lethe_context_new fails
                                 with LETHE_ERR_OOM when the KV pool does not fit,
                                 lethe_decode (cache unchanged) when a batch would
                                 need more; the shared model is not counted       */
    lethe_kv_type kv_type;    /* storage type of K and V (F16)                      */
    size_t kv_budget_bytes;   /* KV pool size; 0: enough for n_ctx * n_seq_max      */
    lethe_kv_policy_kind kv_policy; /* (AUTO)                                       */
    int32_t kv_budget_tokens; /* WINDOW/TOVA/H2O/QUEST: live tokens per head (0: none set) */
    int32_t dms_window;       /* DMS window w; -1: the model's                       */
    float dms_force_rate;     /* < 0: off (-1). In [0, 1]: DMS flags this fraction of
                                 tokens by a position hash instead of the model's
                                 decisions: measures eviction on any model, but the
                                 answers are then not the model's                   */
    int32_t n_top_k;          /* on-device sampling support: > 0: every token that asks
                                 for logits also gets its n_top_k best (id, logit)
                                 pairs (lethe_get_top_k), selected on the device that
                                 computes the output head; at most LETHE_TOP_K_MAX
                                 and n_vocab. 0: off (default)                      */
    bool top_k_only;          /* with n_top_k > 0: skip the n_vocab-float logits rows
                                 (lethe_get_logits then fails): a GPU sends back only
                                 n_top_k pairs per token. false (default)           */
} lethe_context_params;

LETHE_API lethe_context_params lethe_context_default_params(void);
LETHE_API lethe_context *lethe_context_new(lethe_model *model, lethe_context_params params,
                                           lethe_status *status);
LETHE_API void lethe_context_free(lethe_context *ctx);
LETHE_API int32_t lethe_n_ctx(const lethe_context *ctx);

/* A batch: n_tokens tokens, each with its sequence id and position. Positions
 * of one sequence must continue that sequence (pos == its current length) and
 * increase by one. `logits[i]` asks for the logits of token i; if `logits` is
 * NULL only the last token of the batch gets logits. */
typedef struct lethe_batch {
    int32_t n_tokens;
    const lethe_token *tokens;
    const int32_t *pos;       /* NULL: continue each sequence                  */
    const int32_t *seq_id;    /* NULL: all in sequence 0                       */
    const int8_t *logits;     /* NULL: only the last token                     */
} lethe_batch;

/* Convenience: a single-sequence batch of n tokens continuing sequence 0. */
LETHE_API lethe_batch lethe_batch_one(const lethe_token *tokens, int32_t n_tokens);

/* Run the model on a batch, appending to the KV cache. On failure the cache
 * is left as it was before the call. Large batches are processed in chunks
 * of n_batch internally. */
LETHE_API lethe_status lethe_decode(lethe_context *ctx, lethe_batch batch);

/* Logits of the i-th token of the last batch that asked for them
 * (i = -1: the last such token). n_vocab floats, valid until the next decode.
 * NULL (and the reason in lethe_last_error) for a context set to top_k_only. */
LETHE_API const float *lethe_get_logits(lethe_context *ctx, int32_t i);

/* One candidate token of a logits row. */
typedef struct lethe_candidate {
    lethe_token id;
    float logit;
} lethe_candidate;

#define LETHE_TOP_K_MAX 256

/* The n_top_k best candidates of the i-th token of the last batch (i as for
 * lethe_get_logits), best first: higher logit first, equal logits to the
 * lower id, NaN logits after every number (so a NaN never wins) — exactly
 * the order lethe_sampler_sample uses. The same bits on every backend (the
 * selection only compares). Returns n_top_k and sets *out (valid until the
 * next decode), or a negative lethe_status when the context selects none
 * (n_top_k 0) or token i asked for no logits. */
LETHE_API int32_t lethe_get_top_k(lethe_context *ctx, int32_t i, const lethe_candidate **out);
/* Change n_top_k / top_k_only (lethe_context_params) between decodes; the
 * last decode's outputs are dropped. */
LETHE_API lethe_status lethe_set_outputs(lethe_context *ctx, int32_t n_top_k, bool top_k_only);

/* Sequence management. */
LETHE_API int32_t lethe_seq_len(const lethe_context *ctx, int32_t seq_id); /* tokens seen */
LETHE_API lethe_status lethe_seq_clear(lethe_context *ctx, int32_t seq_id); /* -1: all */
/* Copy the cache of src into dst (dst is cleared first): parallel sampling
 * from a shared prompt. */
LETHE_API lethe_status lethe_seq_fork(lethe_context *ctx, int32_t src, int32_t dst);

/* ---- state: save and restore sequences ---------------------------------- */
/* A state holds sequence `seq` (-1: every sequence in use) of a context: its
 * per-head KV rows, positions, DMS flags and pending evictions, together with
 * token ids and an opaque blob the caller supplies (e.g. its own history).
 * Loading it into a context of the same model and KV settings gives exactly
 * the cache the saver had, so decoding continues as if never stopped.
 * Logits are not part of a state: keep the last token out of the cache
 * before saving (decode it after loading), or store its logits in `user`.
 * The format is versioned and checksummed; a state of another model, other
 * KV settings, or a truncated/corrupted one is refused with a status, and a
 * refused or failed load leaves the cache unchanged. */
LETHE_API lethe_status lethe_state_save(const lethe_context *ctx, int32_t seq, const lethe_token *tokens,
                                        int32_t n_tokens, const void *user, size_t user_size,
                                        void **out, size_t *out_size);   /* *out: free with lethe_free */
/* seq >= 0: the state must hold one sequence, loaded into seq; -1: loads
 * sequences 0..k-1 and clears the others. tokens/n_tokens and user/user_size
 * (malloc'ed copy, free with lethe_free) may be NULL when not wanted. */
LETHE_API lethe_status lethe_state_load(lethe_context *ctx, int32_t seq, const void *data, size_t size,
                                        lethe_token *tokens, int32_t tokens_cap, int32_t *n_tokens,
                                        void **user, size_t *user_size);
LETHE_API lethe_status lethe_state_save_file(const lethe_context *ctx, int32_t seq, const char *path,
                                             const lethe_token *tokens, int32_t n_tokens,
                                             const void *user, size_t user_size);
LETHE_API lethe_status lethe_state_load_file(lethe_context *ctx, int32_t seq, const char *path,
                                             lethe_token *tokens, int32_t tokens_cap, int32_t *n_tokens,
                                             void **user, size_t *user_size);
LETHE_API void lethe_free(void *p);

/* Abort: called between graph nodes; return true to stop (LETHE_ERR_ABORTED).
 * The decode then leaves the cache as it was before the call. */
typedef bool (*lethe_abort_fn)(void *user);
LETHE_API void lethe_set_abort_callback(lethe_context *ctx, lethe_abort_fn fn, void *user);

/* ---- memory ------------------------------------------------------------- */

/* What a model and a context hold, in bytes. */
typedef struct lethe_memory_info {
    size_t model_bytes;       /* the model file in memory (mapped or read), shared by its contexts */
    size_t kv_bytes;          /* KV pool, allocated whole at context creation   */
    size_t compute_bytes;     /* graph buffers and backend scratch: grow to the largest batch run */
    size_t other_bytes;       /* logits, batch staging, graph nodes             */
    size_t context_bytes;     /* kv + compute + other: what mem_limit_bytes caps */
    size_t mem_limit_bytes;   /* the context's cap (0: none)                    */
    /* The model's weights on the context's GPU. A process holds one device
     * per backend kind and device index, shared by all its contexts, and
     * each weight is uploaded there once, on first use by any of them: these
     * bytes are the device's single copy, reported alike to every context
     * that shares it and NOT part of context_bytes or of mem_limit_bytes
     * (model memory, like model_bytes; add it once per device, not once per
     * context). 0 on the CPU, and until the first decode uploads them. */
    size_t device_weight_bytes;
    int32_t device_contexts;  /* contexts sharing that device now, this one included (0: CPU only) */
} lethe_memory_info;

LETHE_API lethe_memory_info lethe_get_memory_info(const lethe_context *ctx);
/* Bytes of the model file held in memory (mapped or read). */
LETHE_API size_t lethe_model_memory_bytes(const lethe_model *model);

/* Milliseconds the context's GPU has spent computing since the context was
 * made, by the device's own timestamps (host overhead and CPU-fallback ops
 * left out); take differences around what you time. -1 when there is no
 * such clock: a CPU-only context, or a backend without timestamps (Vulkan
 * reports them where the driver supports timestamp queries; CUDA by events).
 * `lethe bench` reports it per row. */
LETHE_API double lethe_get_device_ms(const lethe_context *ctx);

/* ---- KV statistics ------------------------------------------------------ */

typedef struct lethe_kv_stats {
    int64_t tokens_seen;        /* tokens inserted over all live sequences        */
    double  mean_live_slots;    /* mean over (seq, layer, kv head) of live slots  */
    double  compression_ratio;  /* tokens_seen / mean live slots (1.0 without eviction) */
    size_t  bytes_resident;     /* KV bytes held by live slots (page granular)    */
    size_t  bytes_peak;         /* peak of bytes_resident                         */
    size_t  bytes_capacity;     /* pool size                                      */
    uint64_t reads;             /* sum over steps, layers, heads of live length read */
    uint64_t evicted;           /* (token, layer, head) entries evicted so far    */
    lethe_kv_policy_kind policy;/* the policy in effect (never AUTO)              */
    int32_t dms_window;         /* w in effect (DMS), else 0                      */
} lethe_kv_stats;

LETHE_API lethe_kv_stats lethe_get_kv_stats(const lethe_context *ctx);
/* Live tokens of (seq, layer, kv head); -1 if out of range. */
LETHE_API int32_t lethe_kv_head_len(const lethe_context *ctx, int32_t seq_id,
                                    int32_t layer, int32_t head);

/* ---- sampling ----------------------------------------------------------- */

typedef struct lethe_sampler lethe_sampler;

typedef struct lethe_sampler_params {
    float temperature;        /* 0: greedy (0.8)                                 */
    int32_t top_k;            /* 0: off (40)                                     */
    float top_p;              /* 1: off (0.95)                                   */
    float min_p;              /* 0: off (0.05)                                   */
    float repeat_penalty;     /* 1: off (1.0)                                    */
    int32_t repeat_last_n;    /* window of previous tokens penalised (64)        */
    uint64_t seed;            /* 0xFFFFFFFF... : random seed from the clock      */
} lethe_sampler_params;

#define LETHE_SEED_RANDOM UINT64_MAX

LETHE_API lethe_sampler_params lethe_sampler_default_params(void);
LETHE_API lethe_sampler *lethe_sampler_new(lethe_sampler_params params, int32_t n_vocab);
LETHE_API void lethe_sampler_free(lethe_sampler *s);
/* Pick a token from n_vocab logits (not modified). */
LETHE_API lethe_token lethe_sampler_sample(lethe_sampler *s, const float *logits);
/* Sampling from candidates (on-device sampling): how many of a row's best
 * candidates (lethe_get_top_k) lethe_sampler_sample_top_k needs to pick
 * exactly the token lethe_sampler_sample would pick from the whole row,
 * consuming the same random numbers: 1 when greedy (temperature 0 or top_k 1);
 * top_k when top_k is on (top_k + 1 when min_p > 0 and top_p is 1: the
 * extra candidate tells whether min-p cut inside the top k, which decides
 * the draw order); 0 when the chain needs every logit (top_k off with a
 * temperature, a repetition penalty: it changes logits before selection,
 * or more than LETHE_TOP_K_MAX / n_vocab candidates). */
LETHE_API int32_t lethe_sampler_top_k_needed(const lethe_sampler *s);
/* Pick a token from a row's n best candidates in lethe_get_top_k's order;
 * n >= lethe_sampler_top_k_needed(s) > 0, else -1 (LETHE_ERR_INVALID_ARG /
 * LETHE_ERR_UNSUPPORTED in lethe_last_error). */
LETHE_API lethe_token lethe_sampler_sample_top_k(lethe_sampler *s, const lethe_candidate *cand, int32_t n);
/* Pick token i's successor from the last decode (i as for lethe_get_logits):
 * from its candidates when the context returned enough for this chain,
 * else from its logits. -1 when neither serves (a top_k_only context and a
 * chain that needs every logit). */
LETHE_API lethe_token lethe_sample(lethe_sampler *s, lethe_context *ctx, int32_t i);
/* Tell the sampler a token was appended (for the repetition penalty). */
LETHE_API void lethe_sampler_accept(lethe_sampler *s, lethe_token token);
LETHE_API void lethe_sampler_reset(lethe_sampler *s);

/* ---- device bandwidth (the roofline of `lethe bench`) ------------------- */

/* The name of a backend's device: the CPU model ("AMD EPYC 9B14") for "cpu",
 * the GPU's name for "vulkan"/"cuda". LETHE_ERR_BACKEND if it cannot start. */
LETHE_API lethe_status lethe_device_name(const char *backend, int device, char *buf, size_t buf_size);

typedef struct lethe_bandwidth {
    double gbps;              /* best repetition, 1e9 bytes per second           */
    double seconds;           /* time of the best repetition                      */
    size_t bytes;             /* bytes moved per repetition (a copy counts read + write) */
    int n_threads;            /* CPU threads used (0 on a GPU)                    */
    char method[48];          /* "streaming read", "device-to-device copy"        */
    char device_name[128];
} lethe_bandwidth;

/* Measure the memory bandwidth that bounds decoding on a device: on "cpu" a
 * streaming read of `bytes` (0: 1 GiB) by n_threads (0: all cores); on a GPU
 * a device-to-device copy through the backend's buffer_copy, or
 * LETHE_ERR_UNSUPPORTED when the backend offers none. Best of `reps`
 * (>= 1) after one warm-up. */
LETHE_API lethe_status lethe_measure_bandwidth(const char *backend, int device, int n_threads, size_t bytes,
                                               int reps, lethe_bandwidth *out);

#ifdef __cplusplus
}
#endif
#endif /* LETHE_H */
