/* test_tokenizer.c — tokenizer against llama.cpp's vocabulary test vectors,
 * the default SmolLM2 model, and hostile/invalid vocabularies.
 *
 * Vectors: $LETHE_TEST_LLAMA_CPP/models/ggml-vocab-NAME.gguf with .inp (texts
 * separated by "\n__ggml_vocab_test__\n") and .out (one line of expected ids
 * per text), produced by Hugging Face tokenizers; llama.cpp's
 * tests/test-tokenizer-0.cpp checks them with add_special = false and
 * parse_special = false, and so do we. Missing files FAIL the test.
 *
 * Covered: every byte-level BPE ("gpt2") and SentencePiece ("llama") vocab
 * that ships vectors: gpt-2, llama-bpe, qwen2, qwen35, deepseek-llm,
 * deepseek-coder, falcon, starcoder, refact, command-r, mpt, llama-spm, phi-3.
 * Not covered (not supported by lethe): bert-bge (WordPiece, model "bert"),
 * gemma-4 (model "gemma4": BPE over SentencePiece-style text without the
 * GPT-2 byte alphabet).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"
#include "gguf_write.h"
#include "testutil.h"
#include "tokenizer.h"

/* ---- helpers ----------------------------------------------------------------- */

typedef struct loaded {
    lethe_gguf *g;
    lethe_tokenizer *tok;
} loaded;

static loaded load_path(const char *path) {
    loaded l = {0};
    lethe_status st;
    l.g = lethe_gguf_open(path, true, &st);
    if (!l.g) fail_msg("cannot open %s: %s (%s)", path, lethe_strerror(st), lethe_last_error());
    l.tok = lethe_tokenizer_from_gguf(l.g, &st);
    if (!l.tok) fail_msg("tokenizer from %s: %s (%s)", path, lethe_strerror(st), lethe_last_error());
    return l;
}

static void unload(loaded *l) {
    lethe_tokenizer_free(l->tok);
    lethe_gguf_close(l->g);
}

/* Encode into a malloc'ed array (sized by a first call, as the API intends). */
static lethe_token *encode(const lethe_tokenizer *tok, const char *text, size_t len, bool add_special,
                           bool parse_special, int32_t *n_out) {
    int32_t n = lethe_tokenizer_encode(tok, text, len, NULL, 0, add_special, parse_special);
    if (n < 0) fail_msg("encode failed: %s", lethe_last_error());
    lethe_token *ids = malloc(((size_t)n + 1) * sizeof *ids);
    assert_non_null(ids);
    int32_t n2 = lethe_tokenizer_encode(tok, text, len, ids, n, add_special, parse_special);
    assert_int_equal(n2, n);
    *n_out = n;
    return ids;
}

/* Concatenated pieces of ids (malloc'ed, NUL-terminated); *len gets the byte count. */
static char *decode(const lethe_tokenizer *tok, const lethe_token *ids, int32_t n, bool render_special,
                    size_t *len) {
    size_t cap = 64, o = 0;
    char *s = malloc(cap);
    assert_non_null(s);
    for (int32_t i = 0; i < n; i++) {
        int32_t k = lethe_tokenizer_piece(tok, ids[i], NULL, 0, render_special);
        assert_true(k >= 0);
        if (o + (size_t)k + 1 > cap) {
            cap = (o + (size_t)k + 1) * 2;
            s = realloc(s, cap);
            assert_non_null(s);
        }
        assert_int_equal(lethe_tokenizer_piece(tok, ids[i], s + o, k, render_special), k);
        o += (size_t)k;
    }
    s[o] = 0;
    if (len) *len = o;
    return s;
}

static const char *llama_cpp_dir(void) {
    const char *d = getenv("LETHE_TEST_LLAMA_CPP");
    if (!d || !*d) fail_msg("LETHE_TEST_LLAMA_CPP is not set (llama.cpp source tree with models/ggml-vocab-*)");
    return d;
}

/* ---- llama.cpp vocabulary vectors -------------------------------------------- */

static void run_vectors(const char *name) {
    char path[4096], pin[4200], pout[4200];
    snprintf(path, sizeof path, "%s/models/ggml-vocab-%s.gguf", llama_cpp_dir(), name);
    snprintf(pin, sizeof pin, "%s.inp", path);
    snprintf(pout, sizeof pout, "%s.out", path);
    size_t n_inp = 0, n_out = 0;
    char *inp = tu_read_file(pin, &n_inp);
    char *out = tu_read_file(pout, &n_out);
    if (!inp || !out) fail_msg("missing test vectors %s / %s", pin, pout);
    inp = realloc(inp, n_inp + 1);
    out = realloc(out, n_out + 1);
    inp[n_inp] = 0;
    out[n_out] = 0;

    loaded l = load_path(path);
    static const char sep[] = "\n__ggml_vocab_test__\n";
    const size_t sep_len = sizeof sep - 1;
    size_t pos = 0;
    char *line = out;
    int n_tests = 0, n_fail = 0;
    while (pos < n_inp) {
        /* next text */
        const char *next = strstr(inp + pos, sep);
        size_t tlen = next ? (size_t)(next - (inp + pos)) : n_inp - pos;
        const char *text = inp + pos;
        pos = next ? (size_t)(next - inp) + sep_len : n_inp;
        /* its expected ids */
        if (!line || !*line) fail_msg("%s: fewer .out lines than .inp texts", name);
        char *eol = strchr(line, '\n');
        if (eol) *eol = 0;
        lethe_token want[4096];
        int n_want = 0;
        for (char *p = line; *p;) {
            char *end;
            long v = strtol(p, &end, 10);
            if (end == p) break;
            assert_true(n_want < 4096);
            want[n_want++] = (lethe_token)v;
            p = end;
        }
        line = eol ? eol + 1 : NULL;

        int32_t n_got;
        lethe_token *got = encode(l.tok, text, tlen, false, false, &n_got);
        bool ok = n_got == n_want;
        for (int i = 0; ok && i < n_got; i++) ok = got[i] == want[i];
        if (!ok) {
            n_fail++;
            fprintf(stderr, "%s: text '%.*s'\n  want:", name, (int)tlen, text);
            for (int i = 0; i < n_want; i++) fprintf(stderr, " %d", want[i]);
            fprintf(stderr, "\n  got: ");
            for (int i = 0; i < n_got; i++) fprintf(stderr, " %d", got[i]);
            fprintf(stderr, "\n");
        }
        free(got);
        n_tests++;
    }
    if (line && *line) fail_msg("%s: more .out lines than .inp texts", name);
    unload(&l);
    free(inp);
    free(out);
    if (n_fail) fail_msg("%s: %d of %d test texts tokenized differently", name, n_fail, n_tests);
    assert_true(n_tests > 10);
}

static void test_vocab_gpt2(void **s) { (void)s; run_vectors("gpt-2"); }
static void test_vocab_llama_bpe(void **s) { (void)s; run_vectors("llama-bpe"); }
static void test_vocab_qwen2(void **s) { (void)s; run_vectors("qwen2"); }
static void test_vocab_qwen35(void **s) { (void)s; run_vectors("qwen35"); }
static void test_vocab_deepseek_llm(void **s) { (void)s; run_vectors("deepseek-llm"); }
static void test_vocab_deepseek_coder(void **s) { (void)s; run_vectors("deepseek-coder"); }
static void test_vocab_falcon(void **s) { (void)s; run_vectors("falcon"); }
static void test_vocab_starcoder(void **s) { (void)s; run_vectors("starcoder"); }
static void test_vocab_refact(void **s) { (void)s; run_vectors("refact"); }
static void test_vocab_command_r(void **s) { (void)s; run_vectors("command-r"); }
static void test_vocab_mpt(void **s) { (void)s; run_vectors("mpt"); }
static void test_vocab_llama_spm(void **s) { (void)s; run_vectors("llama-spm"); }
static void test_vocab_phi3(void **s) { (void)s; run_vectors("phi-3"); }

/* BOS/EOS/EOG conventions of other vocabularies (llama.cpp's rules). */
static loaded load_vocab(const char *name) {
    char path[4096];
    snprintf(path, sizeof path, "%s/models/ggml-vocab-%s.gguf", llama_cpp_dir(), name);
    return load_path(path);
}

static void test_vocab_specials(void **state) {
    (void)state;
    int32_t n;
    /* Llama 3: BOS added by default (pre "llama-bpe"), eot/eom found by text */
    loaded l = load_vocab("llama-bpe");
    lethe_token *ids = encode(l.tok, "Hello", 5, true, false, &n);
    assert_int_equal(n, 2);
    assert_int_equal(ids[0], 128000);
    assert_int_equal(ids[1], 9906);
    free(ids);
    assert_true(lethe_tokenizer_is_eog(l.tok, 128001)); /* <|end_of_text|> = eos */
    assert_true(lethe_tokenizer_is_eog(l.tok, lethe_tokenizer_find(l.tok, "<|eot_id|>")));
    assert_int_equal(lethe_tokenizer_find(l.tok, "<|eom_id|>"), -1); /* Llama 3.0 has no eom: reserved slot */
    assert_false(lethe_tokenizer_is_eog(l.tok, 128000));
    ids = encode(l.tok, "<|start_header_id|>user<|end_header_id|>", 40, false, true, &n);
    assert_int_equal(n, 3);
    assert_int_equal(ids[0], lethe_tokenizer_find(l.tok, "<|start_header_id|>"));
    free(ids);
    unload(&l);

    /* Qwen2: no BOS added, <|im_end|> ends a turn */
    l = load_vocab("qwen2");
    ids = encode(l.tok, "Hello", 5, true, false, &n);
    assert_int_equal(n, 1);
    free(ids);
    assert_true(lethe_tokenizer_is_eog(l.tok, lethe_tokenizer_find(l.tok, "<|im_end|>")));
    assert_true(lethe_tokenizer_is_eog(l.tok, lethe_tokenizer_find(l.tok, "<|endoftext|>")));
    unload(&l);

    /* SentencePiece: BOS added, leading space marker, byte fallback */
    l = load_vocab("llama-spm");
    ids = encode(l.tok, "Hello", 5, true, false, &n);
    assert_int_equal(n, 2);
    assert_int_equal(ids[0], 1);
    assert_int_equal(ids[1], lethe_tokenizer_find(l.tok, "\xe2\x96\x81Hello"));
    free(ids);
    const char *txt = "Hello  world\n\t🦙 нещо";
    ids = encode(l.tok, txt, strlen(txt), false, false, &n);
    size_t len;
    char *back = decode(l.tok, ids, n, false, &len);
    assert_string_equal(back, " Hello  world\n\t🦙 нещо"); /* the added prefix space stays */
    free(back);
    free(ids);
    assert_true(lethe_tokenizer_is_eog(l.tok, 2));
    unload(&l);
}

/* ---- the default model (SmolLM2, pre-tokenizer "smollm") ------------------------ */

static void test_smollm_basic(void **state) {
    (void)state;
    loaded l = load_path(tu_model_path());
    const lethe_tokenizer *tok = l.tok;
    assert_int_equal(lethe_tokenizer_n_vocab(tok), 49152);
    assert_int_equal(lethe_tokenizer_bos(tok), 1);
    assert_int_equal(lethe_tokenizer_eos(tok), 2);

    /* "Hello world" = "Hello" + "Ġworld" (GPT-2 writes the space as Ġ) */
    lethe_token hello = lethe_tokenizer_find(tok, "Hello");
    lethe_token world = lethe_tokenizer_find(tok, "\xc4\xa0world");
    assert_int_equal(hello, 19556); /* as Hugging Face's SmolLM2 tokenizer gives */
    assert_int_equal(world, 905);
    int32_t n;
    lethe_token *ids = encode(tok, "Hello world", 11, false, false, &n);
    assert_int_equal(n, 2);
    assert_int_equal(ids[0], hello);
    assert_int_equal(ids[1], world);
    free(ids);

    /* add_bos_token is false in this file: add_special adds nothing */
    ids = encode(tok, "Hello world", 11, true, false, &n);
    assert_int_equal(n, 2);
    free(ids);

    /* smollm splits digits one by one */
    ids = encode(tok, "12345", 5, false, false, &n);
    assert_int_equal(n, 5);
    for (int i = 0; i < 5; i++) {
        char d[2] = {(char)('1' + i), 0};
        assert_int_equal(ids[i], lethe_tokenizer_find(tok, d));
    }
    free(ids);

    /* the output buffer contract: the count is returned even when it does not fit */
    lethe_token one[1] = {-7};
    assert_int_equal(lethe_tokenizer_encode(tok, "Hello world", 11, one, 1, false, false), 2);
    assert_int_equal(one[0], hello);
    assert_int_equal(lethe_tokenizer_encode(tok, "", 0, NULL, 0, false, false), 0);
    assert_true(lethe_tokenizer_encode(tok, NULL, 3, NULL, 0, false, false) < 0);
    unload(&l);
}

static void test_smollm_roundtrip(void **state) {
    (void)state;
    loaded l = load_path(tu_model_path());
    static const char *const texts[] = {
        "Hello, world! How are you today?",
        "  leading and trailing spaces   ",
        "tabs\tand\nnew\n\nlines\r\n and \u00a0nbsp",
        "\xd0\xbd\xd0\xb5\xd1\x89\xd0\xbe \xd0\xbd\xd0\xb0 \xd0\x91\xd1\x8a\xd0\xbb\xd0\xb3\xd0\xb0\xd1\x80\xd1\x81\xd0\xba\xd0\xb8", /* нещо на Български */
        "我想在apple工作1314151天～",
        "\xf0\x9f\x9a\x80 (normal) \xf0\x9f\x98\xb6\xe2\x80\x8d\xf0\x9f\x8c\xab\xef\xb8\x8f emoji \xe2\x9c\x85", /* 🚀 😶‍🌫️ ✅ */
        "\xe1\x9e\x80\xe1\x9e\xb6\xe1\x9e\x93\xe1\x9f\x8b", /* Khmer */
        "code: for (int i = 0; i < 10; i++) { x += i * 3.14; }",
        "\x01\x02 control bytes \x7f",
        "<|im_start|> looks special but is text here",
    };
    for (size_t k = 0; k < sizeof texts / sizeof texts[0]; k++) {
        int32_t n;
        lethe_token *ids = encode(l.tok, texts[k], strlen(texts[k]), false, false, &n);
        size_t len;
        char *back = decode(l.tok, ids, n, false, &len);
        if (len != strlen(texts[k]) || memcmp(back, texts[k], len) != 0)
            fail_msg("round trip of text %zu: got '%s'", k, back);
        free(back);
        free(ids);
    }
    /* invalid UTF-8 still round-trips byte for byte (bytes that have a token:
     * this vocabulary has none for 0xF5..0xFF, which valid UTF-8 never holds) */
    const char bad[] = "ab\x80\xbf\xc3(cd\xe2\x82";
    int32_t n;
    lethe_token *ids = encode(l.tok, bad, sizeof bad - 1, false, false, &n);
    size_t len;
    char *back = decode(l.tok, ids, n, false, &len);
    assert_int_equal(len, sizeof bad - 1);
    assert_memory_equal(back, bad, len);
    free(back);
    free(ids);
    unload(&l);
}

static void test_smollm_special(void **state) {
    (void)state;
    loaded l = load_path(tu_model_path());
    const lethe_tokenizer *tok = l.tok;
    lethe_token im_start = lethe_tokenizer_find(tok, "<|im_start|>");
    lethe_token im_end = lethe_tokenizer_find(tok, "<|im_end|>");
    assert_int_equal(im_start, 1);
    assert_int_equal(im_end, 2);

    int32_t n;
    lethe_token *ids = encode(tok, "<|im_start|>", 12, false, true, &n);
    assert_int_equal(n, 1);
    assert_int_equal(ids[0], im_start);
    free(ids);

    ids = encode(tok, "<|im_start|>", 12, false, false, &n);
    assert_true(n > 1);
    for (int i = 0; i < n; i++) assert_int_not_equal(ids[i], im_start);
    free(ids);

    const char *chat = "<|im_start|>user\nHi<|im_end|>\n";
    ids = encode(tok, chat, strlen(chat), false, true, &n);
    assert_true(n >= 5);
    assert_int_equal(ids[0], im_start);
    int found_end = 0;
    for (int i = 0; i < n; i++) found_end += ids[i] == im_end;
    assert_int_equal(found_end, 1);
    /* control tokens are invisible unless render_special */
    size_t len;
    char *plain = decode(tok, ids, n, false, &len);
    assert_string_equal(plain, "user\nHi\n");
    free(plain);
    char *full = decode(tok, ids, n, true, &len);
    assert_string_equal(full, chat);
    free(full);
    free(ids);

    /* piece buffer contract: the length is returned, nothing written if too small */
    char small[4] = "xyz";
    assert_int_equal(lethe_tokenizer_piece(tok, im_start, small, 4, true), 12);
    assert_string_equal(small, "xyz");
    assert_true(lethe_tokenizer_piece(tok, -1, small, 4, true) < 0);
    assert_true(lethe_tokenizer_piece(tok, 49152, small, 4, true) < 0);

    /* end of generation: <|im_end|> (eos) and <|endoftext|> */
    assert_true(lethe_tokenizer_is_eog(tok, im_end));
    assert_true(lethe_tokenizer_is_eog(tok, lethe_tokenizer_find(tok, "<|endoftext|>")));
    assert_false(lethe_tokenizer_is_eog(tok, im_start));
    assert_false(lethe_tokenizer_is_eog(tok, lethe_tokenizer_find(tok, "Hello")));
    assert_false(lethe_tokenizer_is_eog(tok, -1));
    assert_int_equal(lethe_tokenizer_find(tok, "no-such-token-xyz"), -1);
    unload(&l);
}

/* Tokenizing a large text must be fast (hash maps, heap-based BPE): this is a
 * size check, not a timing — 1 MB with long runs that would be quadratic in a
 * naive implementation, finishing well within the ctest timeout. */
static void test_smollm_large_input(void **state) {
    (void)state;
    loaded l = load_path(tu_model_path());
    size_t n = 1 << 20;
    char *big = malloc(n + 1);
    assert_non_null(big);
    static const char chunk[] = "The quick brown fox jumps over the lazy dog 1234. \xc3\xa9t\xc3\xa9 \xf0\x9f\x98\x80\n";
    for (size_t i = 0; i < n; i++) big[i] = chunk[i % (sizeof chunk - 1)];
    memset(big + 1000, 'a', 100000);  /* one 100 kB letter run: one BPE word */
    memset(big + 200000, ' ', 100000); /* one 100 kB whitespace run */
    big[n] = 0;
    int32_t count;
    lethe_token *ids = encode(l.tok, big, n, false, false, &count);
    assert_true(count > 1000);
    size_t len;
    char *back = decode(l.tok, ids, count, false, &len);
    assert_int_equal(len, n);
    assert_memory_equal(back, big, n);
    free(back);
    free(ids);
    free(big);
    unload(&l);
}

/* ---- synthetic vocabularies: invalid and unsupported input -------------------- */

static lethe_gguf *build(void (*fill)(lethe_gguf_writer *), void **mem) {
    lethe_gguf_writer *w = lethe_gguf_writer_new();
    assert_non_null(w);
    fill(w);
    size_t size;
    assert_int_equal(lethe_gguf_writer_write_mem(w, mem, &size), LETHE_OK);
    lethe_gguf_writer_free(w);
    lethe_status st;
    lethe_gguf *g = lethe_gguf_parse(*mem, size, &st);
    assert_non_null(g);
    return g;
}

static const char *const k_tiny_tokens[] = {"a", "b", "ab", "\xc4\xa0", "\xc4\xa0" "ab", "<|x|>", "c"};
static const char *const k_tiny_merges[] = {"a b", "\xc4\xa0 ab", "zz q"}; /* the last refers to no tokens */

static void fill_tiny(lethe_gguf_writer *w) {
    int32_t types[] = {1, 1, 1, 1, 1, 3, 1};
    lethe_gguf_writer_add_str(w, "tokenizer.ggml.model", "gpt2");
    lethe_gguf_writer_add_str(w, "tokenizer.ggml.pre", "gpt-2");
    lethe_gguf_writer_add_arr_str(w, "tokenizer.ggml.tokens", k_tiny_tokens, 7);
    lethe_gguf_writer_add_arr(w, "tokenizer.ggml.token_type", LETHE_GGUF_I32, types, 7);
    lethe_gguf_writer_add_arr_str(w, "tokenizer.ggml.merges", k_tiny_merges, 3);
    lethe_gguf_writer_add_u32(w, "tokenizer.ggml.eos_token_id", 5);
    lethe_gguf_writer_add_u32(w, "tokenizer.ggml.bos_token_id", 99); /* out of range: ignored */
}

static void test_tiny_vocab(void **state) {
    (void)state;
    void *mem;
    lethe_gguf *g = build(fill_tiny, &mem);
    lethe_status st;
    lethe_tokenizer *tok = lethe_tokenizer_from_gguf(g, &st);
    assert_non_null(tok);
    assert_int_equal(lethe_tokenizer_bos(tok), -1);
    assert_int_equal(lethe_tokenizer_eos(tok), 5);
    assert_true(lethe_tokenizer_is_eog(tok, 5));
    int32_t n;
    /* "ab ab" → "ab", "Ġab"; "abc" → "ab", "c"; unknown bytes are dropped */
    lethe_token *ids = encode(tok, "ab abc", 6, false, false, &n);
    assert_int_equal(n, 3);
    assert_int_equal(ids[0], 2);
    assert_int_equal(ids[1], 4);
    assert_int_equal(ids[2], 6);
    free(ids);
    ids = encode(tok, "a<|x|>b", 7, true, true, &n);
    assert_int_equal(n, 3);
    assert_int_equal(ids[1], 5);
    free(ids);
    lethe_tokenizer_free(tok);
    lethe_gguf_close(g);
    free(mem);
}

static void fill_bert_model(lethe_gguf_writer *w) {
    lethe_gguf_writer_add_str(w, "tokenizer.ggml.model", "bert");
    lethe_gguf_writer_add_arr_str(w, "tokenizer.ggml.tokens", k_tiny_tokens, 7);
}
static void fill_no_merges(lethe_gguf_writer *w) {
    lethe_gguf_writer_add_str(w, "tokenizer.ggml.model", "gpt2");
    lethe_gguf_writer_add_arr_str(w, "tokenizer.ggml.tokens", k_tiny_tokens, 7);
}
static void fill_bad_pre(lethe_gguf_writer *w) {
    lethe_gguf_writer_add_str(w, "tokenizer.ggml.model", "gpt2");
    lethe_gguf_writer_add_str(w, "tokenizer.ggml.pre", "no-such-pre");
    lethe_gguf_writer_add_arr_str(w, "tokenizer.ggml.tokens", k_tiny_tokens, 7);
    lethe_gguf_writer_add_arr_str(w, "tokenizer.ggml.merges", k_tiny_merges, 3);
}
static void fill_tokens_wrong_type(lethe_gguf_writer *w) {
    int32_t v[3] = {1, 2, 3};
    lethe_gguf_writer_add_str(w, "tokenizer.ggml.model", "gpt2");
    lethe_gguf_writer_add_arr(w, "tokenizer.ggml.tokens", LETHE_GGUF_I32, v, 3);
}
static void fill_short_types(lethe_gguf_writer *w) {
    int32_t types[] = {1, 1};
    lethe_gguf_writer_add_str(w, "tokenizer.ggml.model", "gpt2");
    lethe_gguf_writer_add_arr_str(w, "tokenizer.ggml.tokens", k_tiny_tokens, 7);
    lethe_gguf_writer_add_arr(w, "tokenizer.ggml.token_type", LETHE_GGUF_I32, types, 2);
    lethe_gguf_writer_add_arr_str(w, "tokenizer.ggml.merges", k_tiny_merges, 3);
}
static void fill_nothing(lethe_gguf_writer *w) { lethe_gguf_writer_add_str(w, "general.name", "x"); }

static void expect_failure(void (*fill)(lethe_gguf_writer *), lethe_status want) {
    void *mem;
    lethe_gguf *g = build(fill, &mem);
    lethe_status st = LETHE_OK;
    lethe_tokenizer *tok = lethe_tokenizer_from_gguf(g, &st);
    assert_null(tok);
    assert_int_equal(st, want);
    assert_true(strlen(lethe_last_error()) > 0);
    lethe_gguf_close(g);
    free(mem);
}

static void test_invalid_vocabs(void **state) {
    (void)state;
    expect_failure(fill_bert_model, LETHE_ERR_UNSUPPORTED);
    expect_failure(fill_no_merges, LETHE_ERR_TOKENIZER);
    expect_failure(fill_bad_pre, LETHE_ERR_UNSUPPORTED);
    expect_failure(fill_tokens_wrong_type, LETHE_ERR_TOKENIZER);
    expect_failure(fill_short_types, LETHE_ERR_TOKENIZER);
    expect_failure(fill_nothing, LETHE_ERR_TOKENIZER);
    lethe_status st;
    assert_null(lethe_tokenizer_from_gguf(NULL, &st));
    assert_int_equal(st, LETHE_ERR_INVALID_ARG);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vocab_gpt2),
        cmocka_unit_test(test_vocab_llama_bpe),
        cmocka_unit_test(test_vocab_qwen2),
        cmocka_unit_test(test_vocab_qwen35),
        cmocka_unit_test(test_vocab_deepseek_llm),
        cmocka_unit_test(test_vocab_deepseek_coder),
        cmocka_unit_test(test_vocab_falcon),
        cmocka_unit_test(test_vocab_starcoder),
        cmocka_unit_test(test_vocab_refact),
        cmocka_unit_test(test_vocab_command_r),
        cmocka_unit_test(test_vocab_mpt),
        cmocka_unit_test(test_vocab_llama_spm),
        cmocka_unit_test(test_vocab_phi3),
        cmocka_unit_test(test_vocab_specials),
        cmocka_unit_test(test_smollm_basic),
        cmocka_unit_test(test_smollm_roundtrip),
        cmocka_unit_test(test_smollm_special),
        cmocka_unit_test(test_smollm_large_input),
        cmocka_unit_test(test_tiny_vocab),
        cmocka_unit_test(test_invalid_vocabs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
