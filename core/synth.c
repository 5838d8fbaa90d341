/* synth.c — synthetic llama-family GGUF models. See synth.h. */
#include "synth.h"
#include "common.h"
#include "gguf_write.h"

#include <math.h>
#include <string.h>

lethe_synth_params lethe_synth_default_params(void) {
    lethe_synth_params p = {0};
    p.arch = "llama";
    p.n_layer = 2;
    p.n_embd = 64;
    p.n_head = 4;
    p.n_head_kv = 2;
    p.n_ff = 128;
    p.n_vocab = 320;
    p.n_ctx_train = 2048;
    p.wtype = LETHE_F32;
    p.embd_type = LETHE_F32;
    p.tied_output = true;
    p.rope_base = 10000.0f;
    p.seed = 1;
    p.dms_window = 16;
    p.dms_alpha_scale = 100.0f;
    p.dms_alpha_offset = 5.0f;
    return p;
}

static float rnd(uint64_t *s) {   /* xorshift64*, uniform in [-1, 1) */
    *s ^= *s >> 12; *s ^= *s << 25; *s ^= *s >> 27;
    return (float)(((*s * 0x2545F4914F6CDD1Dull) >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

/* A [rows, cols] matrix of uniform values with std `sd`, stored as `type`. */
static lethe_status add_matrix(lethe_gguf_writer *w, const char *name, lethe_dtype type,
                               int64_t cols, int64_t rows, float sd, uint64_t *seed) {
    const lethe_dtype_traits *tr = lethe_dtype_get(type);
    if (!tr || (type != LETHE_F32 && !tr->from_f32))
        return lethe_fail(LETHE_ERR_UNSUPPORTED_DTYPE, "synth: cannot write %s weights", lethe_dtype_name(type));
    size_t row_bytes = lethe_row_size(type, cols);
    if (!row_bytes) return lethe_fail(LETHE_ERR_SHAPE, "synth: %s: %lld columns do not fill %s blocks",
                                      name, (long long)cols, tr->name);
    uint8_t *data = malloc(row_bytes * (size_t)rows);
    float *row = malloc((size_t)cols * sizeof(float));
    if (!data || !row) { free(data); free(row); return lethe_fail(LETHE_ERR_OOM, "synth"); }
    const float a = sd * sqrtf(3.0f);
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t c = 0; c < cols; c++) row[c] = a * rnd(seed);
        if (type == LETHE_F32) memcpy(data + r * row_bytes, row, row_bytes);
        else tr->from_f32(row, data + r * row_bytes, cols);
    }
    int64_t ne[2] = {cols, rows};
    lethe_status st = lethe_gguf_writer_add_tensor(w, name, type, rows > 1 ? 2 : 1, ne, data, true);
    free(data);
    free(row);
    return st;
}

static lethe_status add_ones(lethe_gguf_writer *w, const char *name, int64_t n, uint64_t *seed) {
    float *v = malloc((size_t)n * sizeof(float));
    if (!v) return lethe_fail(LETHE_ERR_OOM, "synth");
    for (int64_t i = 0; i < n; i++) v[i] = 1.0f + 0.1f * rnd(seed);
    lethe_status st = lethe_gguf_writer_add_tensor(w, name, LETHE_F32, 1, &n, v, true);
    free(v);
    return st;
}

/* GPT-2's byte -> printable code point map, as UTF-8. */
static int byte_token(int b, char *out) {
    int cp;
    if ((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF)) {
        cp = b;
    } else {
        int n = 0;   /* rank of b among the non-printable bytes */
        for (int x = 0; x < b; x++)
            if (!((x >= '!' && x <= '~') || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE && x <= 0xFF))) n++;
        cp = 256 + n;
    }
    if (cp < 0x80) { out[0] = (char)cp; out[1] = 0; return 1; }
    out[0] = (char)(0xC0 | (cp >> 6));
    out[1] = (char)(0x80 | (cp & 0x3F));
    out[2] = 0;
    return 2;
}

#define TRY(x) do { st = (x); if (st != LETHE_OK) goto done; } while (0)

lethe_status lethe_synth_write(const char *path, lethe_synth_params p) {
    if (p.dms_variant < 0 || p.dms_variant > 2 || p.dms_window < 0)
        return lethe_fail(LETHE_ERR_INVALID_ARG, "synth: invalid DMS parameters");
    if (!path || !p.arch || p.n_layer < 1 || p.n_embd < 2 || p.n_head < 1 || p.n_head_kv < 1 ||
        p.n_head % p.n_head_kv || p.n_embd % p.n_head || (p.n_embd / p.n_head) % 2 || p.n_ff < 1 ||
        p.n_vocab < 259)
        return lethe_fail(LETHE_ERR_INVALID_ARG, "synth: invalid shape");
    lethe_gguf_writer *w = lethe_gguf_writer_new();
    if (!w) return lethe_fail(LETHE_ERR_OOM, "synth");
    lethe_status st = LETHE_OK;
    char **tokens = calloc((size_t)p.n_vocab, sizeof *tokens);
    int32_t *types = calloc((size_t)p.n_vocab, sizeof *types);
    char **merges = NULL;
    int n_merges = 0;
    if (!tokens || !types) { st = lethe_fail(LETHE_ERR_OOM, "synth"); goto done; }
    const char *A = p.arch;
    char key[128];
#define KEY(suffix) (snprintf(key, sizeof key, "%s.%s", A, suffix), key)
    TRY(lethe_gguf_writer_add_str(w, "general.architecture", A));
    TRY(lethe_gguf_writer_add_str(w, "general.name", "lethe synthetic"));
    TRY(lethe_gguf_writer_add_u32(w, KEY("block_count"), (uint32_t)p.n_layer));
    TRY(lethe_gguf_writer_add_u32(w, KEY("context_length"), (uint32_t)p.n_ctx_train));
    TRY(lethe_gguf_writer_add_u32(w, KEY("embedding_length"), (uint32_t)p.n_embd));
    TRY(lethe_gguf_writer_add_u32(w, KEY("feed_forward_length"), (uint32_t)p.n_ff));
    TRY(lethe_gguf_writer_add_u32(w, KEY("attention.head_count"), (uint32_t)p.n_head));
    TRY(lethe_gguf_writer_add_u32(w, KEY("attention.head_count_kv"), (uint32_t)p.n_head_kv));
    TRY(lethe_gguf_writer_add_f32(w, KEY("rope.freq_base"), p.rope_base));
    TRY(lethe_gguf_writer_add_f32(w, KEY("attention.layer_norm_rms_epsilon"), 1e-5f));
    if (p.dms_variant) {
        TRY(lethe_gguf_writer_add_u32(w, KEY("dms.window_size"), (uint32_t)p.dms_window));
        TRY(lethe_gguf_writer_add_f32(w, KEY("dms.alpha_scale"), p.dms_alpha_scale));
        TRY(lethe_gguf_writer_add_f32(w, KEY("dms.alpha_offset"), p.dms_alpha_offset));
        TRY(lethe_gguf_writer_add_str(w, KEY("dms.variant"), p.dms_variant == 2 ? "adapter" : "neuron"));
        TRY(lethe_gguf_writer_add_str(w, KEY("dms.alpha_per"), p.dms_per_layer ? "layer" : "head"));
    }

    /* vocabulary: 256 byte tokens, then merges of frequent pairs, then specials */
    char buf[16];
    for (int b = 0; b < 256; b++) {
        byte_token(b, buf);
        tokens[b] = strdup(buf);
        types[b] = 1;
    }
    const int n_special = 3;
    static const char *const specials[] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};
    merges = calloc((size_t)p.n_vocab, sizeof *merges);
    if (!merges) { st = lethe_fail(LETHE_ERR_OOM, "synth"); goto done; }
    static const char *const pairs[][2] = {{"t", "h"}, {"th", "e"}, {"Ġ", "t"}, {"Ġt", "h"}, {"Ġth", "e"},
                                           {"i", "n"}, {"e", "r"}, {"a", "n"}, {"o", "n"}, {"r", "e"}};
    int id = 256;
    for (size_t i = 0; i < LETHE_ARRAY_SIZE(pairs) && id < p.n_vocab - n_special; i++, id++) {
        char m[32], t[32];
        snprintf(m, sizeof m, "%s %s", pairs[i][0], pairs[i][1]);
        snprintf(t, sizeof t, "%s%s", pairs[i][0], pairs[i][1]);
        merges[n_merges++] = strdup(m);
        tokens[id] = strdup(t);
        types[id] = 1;
    }
    for (; id < p.n_vocab - n_special; id++) {   /* filler: never produced by merges */
        snprintf(buf, sizeof buf, "<%d>", id);
        tokens[id] = strdup(buf);
        types[id] = 4;
    }
    for (int i = 0; i < n_special; i++, id++) {
        tokens[id] = strdup(specials[i]);
        types[id] = 3;
    }
    for (int i = 0; i < p.n_vocab; i++)
        if (!tokens[i]) { st = lethe_fail(LETHE_ERR_OOM, "synth"); goto done; }
    for (int i = 0; i < n_merges; i++)
        if (!merges[i]) { st = lethe_fail(LETHE_ERR_OOM, "synth"); goto done; }
    TRY(lethe_gguf_writer_add_str(w, "tokenizer.ggml.model", "gpt2"));
    TRY(lethe_gguf_writer_add_str(w, "tokenizer.ggml.pre", "gpt2"));
    TRY(lethe_gguf_writer_add_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)tokens, (uint64_t)p.n_vocab));
    TRY(lethe_gguf_writer_add_arr(w, "tokenizer.ggml.token_type", LETHE_GGUF_I32, types, (uint64_t)p.n_vocab));
    TRY(lethe_gguf_writer_add_arr_str(w, "tokenizer.ggml.merges", (const char *const *)merges, (uint64_t)n_merges));
    TRY(lethe_gguf_writer_add_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)(p.n_vocab - 3)));
    TRY(lethe_gguf_writer_add_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)(p.n_vocab - 1)));
    TRY(lethe_gguf_writer_add_bool(w, "tokenizer.ggml.add_bos_token", false));
    TRY(lethe_gguf_writer_add_str(w, "tokenizer.chat_template",
                                  "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
                                  "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"));

    uint64_t seed = p.seed * 0x9E3779B97F4A7C15ull + 7;
    const int64_t E = p.n_embd, D = p.n_embd / p.n_head, Hq = p.n_head, Hkv = p.n_head_kv, F = p.n_ff;
    const float sdE = 1.0f / sqrtf((float)E), sdF = 1.0f / sqrtf((float)F);
    TRY(add_matrix(w, "token_embd.weight", p.embd_type, E, p.n_vocab, 1.0f, &seed));
    TRY(add_ones(w, "output_norm.weight", E, &seed));
    if (!p.tied_output) TRY(add_matrix(w, "output.weight", p.wtype, E, p.n_vocab, sdE, &seed));
    bool bias = !strcmp(A, "qwen2"), qk_norm = !strcmp(A, "qwen3");
    char name[96];
#define NAME(suffix) (snprintf(name, sizeof name, "blk.%d.%s", l, suffix), name)
    for (int l = 0; l < p.n_layer; l++) {
        TRY(add_ones(w, NAME("attn_norm.weight"), E, &seed));
        TRY(add_matrix(w, NAME("attn_q.weight"), p.wtype, E, Hq * D, sdE, &seed));
        TRY(add_matrix(w, NAME("attn_k.weight"), p.wtype, E, Hkv * D, sdE, &seed));
        TRY(add_matrix(w, NAME("attn_v.weight"), p.wtype, E, Hkv * D, sdE, &seed));
        TRY(add_matrix(w, NAME("attn_output.weight"), p.wtype, Hq * D, E, sdE, &seed));
        if (bias) {
            TRY(add_matrix(w, NAME("attn_q.bias"), LETHE_F32, Hq * D, 1, 0.1f, &seed));
            TRY(add_matrix(w, NAME("attn_k.bias"), LETHE_F32, Hkv * D, 1, 0.1f, &seed));
            TRY(add_matrix(w, NAME("attn_v.bias"), LETHE_F32, Hkv * D, 1, 0.1f, &seed));
        }
        if (qk_norm) {
            TRY(add_ones(w, NAME("attn_q_norm.weight"), D, &seed));
            TRY(add_ones(w, NAME("attn_k_norm.weight"), D, &seed));
        }
        TRY(add_ones(w, NAME("ffn_norm.weight"), E, &seed));
        TRY(add_matrix(w, NAME("ffn_gate.weight"), p.wtype, E, F, sdE, &seed));
        TRY(add_matrix(w, NAME("ffn_up.weight"), p.wtype, E, F, sdE, &seed));
        TRY(add_matrix(w, NAME("ffn_down.weight"), p.wtype, F, E, sdF, &seed));
        if (p.dms_variant == 2) {
            TRY(add_matrix(w, NAME("dms_alpha.weight"), LETHE_F32, E, p.dms_per_layer ? 1 : Hkv, sdE, &seed));
            TRY(add_ones(w, NAME("dms_alpha_norm.weight"), E, &seed));
        }
    }
    st = lethe_gguf_writer_write_file(w, path);
done:
    if (tokens)
        for (int i = 0; i < p.n_vocab; i++) free(tokens[i]);
    if (merges)
        for (int i = 0; i < n_merges; i++) free(merges[i]);
    free(tokens);
    free(types);
    free(merges);
    lethe_gguf_writer_free(w);
    return st;
}
