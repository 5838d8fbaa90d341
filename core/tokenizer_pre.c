/* tokenizer_pre.c — pre-tokenizers of byte-level BPE vocabularies, run with PCRE2.
 *
 * The expressions are the ones in each model family's Hugging Face
 * tokenizer.json (the `pre_tokenizer` Split / ByteLevel / Digits patterns);
 * which family uses which list follows llama.cpp's llama-vocab.cpp, so the
 * same GGUF tokenizes the same way in both engines.
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "tokenizer_pre.h"

#include "common.h"

#include <pcre2.h>
#include <stdlib.h>
#include <string.h>

/* GPT-2's ByteLevel split. */
#define RE_GPT2 "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"
/* Llama 3 / tiktoken cl100k: numbers in groups of up to three. */
#define RE_LLAMA3                                                                                   \
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|" \
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
/* Qwen2: like Llama 3 but one digit per piece. */
#define RE_QWEN2                                                                                  \
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|" \
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
/* Qwen3.5: letters keep their combining marks. */
#define RE_QWEN35                                                                                       \
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?[\\p{L}\\p{M}]+|\\p{N}| ?[^\\s\\p{L}\\p{M}\\p{N}]+" \
    "[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
/* GPT-4o / Llama 4: case-aware word pieces. */
#define RE_GPT4O                                                                                    \
    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+"             \
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+"            \
    "[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+"      \
    "[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
/* Mistral Tekken. */
#define RE_TEKKEN                                                                                   \
    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+|"            \
    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*|\\p{N}|"      \
    " ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
#define RE_SEED_CODER                                                                              \
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1}| ?[^\\s\\p{L}\\p{N}\\r\\n]+|"     \
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
#define RE_BLOOM " ?[^(\\s|.,!?…。，、।۔،)]+"
#define RE_DEEPSEEK3_WORDS                                                                         \
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\\r\\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+|"   \
    " ?[\\p{P}\\p{S}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
#define RE_DEEPSEEK_LLM_LETTERS "\\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-ώᾀ-ᾴᾶ-ᾼιῂ-ῄῆ-ῌῐ-ΐῖ-Ίῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤΩℨK-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+"

#define MAX_EXPRS 6

typedef struct pre_def {
    const char *names;                 /* '|'-separated tokenizer.ggml.pre values */
    const char *exprs[MAX_EXPRS];      /* applied in order; NULL-terminated     */
    lethe_pretok_flags flags;
} pre_def;

static const pre_def k_pre_defs[] = {
    /* no pre-tokenizer recorded: llama.cpp's generic fallback */
    {"default", {"[\\p{P}\\$\\+<=>\\^~\\|]+", RE_GPT2, "\\p{N}+", "[0-9][0-9][0-9]"}, {0}},
    {"gpt-2|gpt2|phi-2|mpt|olmo|jais|jina-es|jina-de|gigachat|jina-v2-es|jina-v2-de|a.x-4.0|mellum|"
     "modern-bert|exaone4|trillion|granite-docling",
     {RE_GPT2}, {0}},
    /* Digits(individual_digits) then ByteLevel */
    {"smollm|starcoder|refact|command-r|codeshell|exaone|minerva-7b|mellum2", {"\\p{N}", RE_GPT2}, {0}},
    {"llama3|llama-v3|llama-bpe|falcon3|falcon-h1|pixtral|midm-2.0|lfm2|jina-v5-nano",
     {RE_LLAMA3}, {.ignore_merges = true, .add_bos_default = true}},
    {"dbrx|smaug-bpe", {RE_LLAMA3}, {0}},
    {"chatglm-bpe", {RE_LLAMA3}, {.no_bos = true}},
    {"glm4|glm5", {RE_LLAMA3}, {.ignore_merges = true, .no_bos = true}},
    {"qwen2|deepseek-r1-qwen|kormo|f2llmv2|stablelm2|megrez|hunyuan|solar-open", {RE_QWEN2}, {0}},
    {"qwen35", {RE_QWEN35}, {0}},
    {"falcon", {"[\\p{P}\\$\\+<=>\\^~\\|`]+", RE_GPT2, "[0-9][0-9][0-9]"}, {0}},
    {"deepseek-llm",
     {"[\\r\\n]", RE_DEEPSEEK_LLM_LETTERS, "\\s?[!-/:-~！-／：-～‘-‟　-。]+", "\\s+$",
      "[一-龥ࠀ-一가-퟿]+", "\\p{N}+"},
     {0}},
    {"deepseek-coder", {"[\\r\\n]", "\\s?\\p{L}+", "\\s?\\p{P}+", "[一-龥ࠀ-一가-퟿]+", "\\p{N}"}, {0}},
    {"deepseek-v3|hunyuan-dense|joyai-llm|hy_v4", {"\\p{N}{1,3}", "[一-龥぀-ゟ゠-ヿ]+", RE_DEEPSEEK3_WORDS}, {0}},
    {"gpt-4o|llama4|kanana2|talkie|minimax-m2", {RE_GPT4O}, {0}},
    {"tekken", {RE_TEKKEN}, {.ignore_merges = true, .add_bos_default = true}},
    {"seed-coder", {RE_SEED_CODER}, {0}},
    {"poro-chat|bloom|gpt3-finnish", {RE_BLOOM}, {0}},
    {"viking", {RE_BLOOM, "\\p{N}"}, {0}},
};

struct lethe_pretok {
    char name[64];
    int n_exprs;
    pcre2_code *code[MAX_EXPRS];
};

/* true if `name` is one of the '|'-separated names in `list` */
static bool name_in_list(const char *list, const char *name) {
    size_t n = strlen(name);
    const char *p = list;
    while (*p) {
        const char *e = strchr(p, '|');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len == n && memcmp(p, name, n) == 0) return true;
        if (!e) break;
        p = e + 1;
    }
    return false;
}

/* Hugging Face runs these expressions with Oniguruma, whose Unicode \s also
 * matches U+0085 (NEXT LINE); PCRE2's \s does not. Rewrite \s / \S so both
 * engines split the same text the same way. Returns a malloc'ed pattern. */
static char *adapt_whitespace(const char *pat) {
    size_t n = strlen(pat);
    char *out = malloc(n * 4 + 1);
    if (!out) return NULL;
    size_t o = 0;
    bool in_class = false;
    for (size_t i = 0; i < n; i++) {
        char c = pat[i];
        if (c == '\\' && i + 1 < n) {
            char d = pat[i + 1];
            if (d == 's' && in_class) {
                memcpy(out + o, "\\s\\x{85}", 8), o += 8;
            } else if (d == 's') {
                memcpy(out + o, "[\\s\\x{85}]", 10), o += 10;
            } else if (d == 'S' && !in_class) {
                memcpy(out + o, "[^\\s\\x{85}]", 11), o += 11;
            } else {
                out[o++] = c, out[o++] = d;
            }
            i++;
            continue;
        }
        if (c == '[' && !in_class) {
            in_class = true;
            out[o++] = c;
            /* a ']' right after '[' or '[^' is a literal */
            if (i + 1 < n && pat[i + 1] == '^') out[o++] = pat[++i];
            if (i + 1 < n && pat[i + 1] == ']') out[o++] = pat[++i];
            continue;
        }
        if (c == ']' && in_class) in_class = false;
        out[o++] = c;
    }
    out[o] = 0;
    return out;
}

/* Compile `exprs` into a new pre-tokenizer named `name`. */
static lethe_pretok *compile_exprs(const char *name, const char *const *exprs, int n, lethe_status *status) {
    if (n > MAX_EXPRS) {
        *status = lethe_fail(LETHE_ERR_UNSUPPORTED, "tokenizer: %d pre-tokenizer expressions (at most %d)", n, MAX_EXPRS);
        return NULL;
    }
    lethe_pretok *p = calloc(1, sizeof *p);
    if (!p) {
        *status = lethe_fail(LETHE_ERR_OOM, "tokenizer: out of memory");
        return NULL;
    }
    snprintf(p->name, sizeof p->name, "%s", name);
    for (int i = 0; i < n; i++) {
        char *pat = adapt_whitespace(exprs[i]);
        if (!pat) {
            lethe_pretok_free(p);
            *status = lethe_fail(LETHE_ERR_OOM, "tokenizer: out of memory");
            return NULL;
        }
        int err = 0;
        PCRE2_SIZE erroff = 0;
        /* MATCH_INVALID_UTF: text that is not valid UTF-8 is matched around
         * (its bytes end up in gaps, then byte-level tokens) instead of failing. */
        pcre2_code *re = pcre2_compile((PCRE2_SPTR)pat, PCRE2_ZERO_TERMINATED,
                                       PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &err, &erroff, NULL);
        free(pat);
        if (!re) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(err, msg, sizeof msg);
            lethe_pretok_free(p);
            *status = lethe_fail(LETHE_ERR_TOKENIZER, "tokenizer: pre-tokenizer '%s' expression %d: %s at %zu",
                                 name, i, (const char *)msg, (size_t)erroff);
            return NULL;
        }
        pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* optional: interpreted matching if JIT is unavailable */
        p->code[p->n_exprs++] = re;
    }
    *status = LETHE_OK;
    return p;
}

lethe_pretok *lethe_pretok_new(const char *name, lethe_pretok_flags *flags, lethe_status *status) {
    lethe_status st_dummy;
    if (!status) status = &st_dummy;
    if (!name || !*name) name = "default";
    const pre_def *def = NULL;
    for (size_t i = 0; i < LETHE_ARRAY_SIZE(k_pre_defs) && !def; i++) {
        if (name_in_list(k_pre_defs[i].names, name)) def = &k_pre_defs[i];
    }
    if (!def) {
        *status = lethe_fail(LETHE_ERR_UNSUPPORTED, "tokenizer: unknown pre-tokenizer '%s' (tokenizer.ggml.pre)", name);
        return NULL;
    }
    int n = 0;
    while (n < MAX_EXPRS && def->exprs[n]) n++;
    lethe_pretok *p = compile_exprs(name, def->exprs, n, status);
    if (p && flags) *flags = def->flags;
    return p;
}

lethe_pretok *lethe_pretok_new_exprs(const char *const *exprs, int n, lethe_status *status) {
    lethe_status st_dummy;
    if (!status) status = &st_dummy;
    return compile_exprs("custom", exprs, n, status);
}

const char *const lethe_pretok_gpt2_regex = RE_GPT2;

const char *lethe_pretok_known_name(const char *const *exprs, int n) {
    for (size_t i = 1; i < LETHE_ARRAY_SIZE(k_pre_defs); i++) {   /* 0 = "default": never written */
        const pre_def *d = &k_pre_defs[i];
        int k = 0;
        while (k < MAX_EXPRS && d->exprs[k]) k++;
        if (k != n) continue;
        bool same = true;
        for (int j = 0; j < n && same; j++) same = !strcmp(d->exprs[j], exprs[j]);
        if (same) {
            static _Thread_local char first[64];
            const char *bar = strchr(d->names, '|');
            size_t len = bar ? (size_t)(bar - d->names) : strlen(d->names);
            if (len >= sizeof first) len = sizeof first - 1;
            memcpy(first, d->names, len);
            first[len] = 0;
            return first;
        }
    }
    return NULL;
}

void lethe_pretok_free(lethe_pretok *p) {
    if (!p) return;
    for (int i = 0; i < p->n_exprs; i++) pcre2_code_free(p->code[i]);
    free(p);
}

const char *lethe_pretok_name(const lethe_pretok *p) { return p ? p->name : ""; }

lethe_status lethe_spans_push(lethe_spans *s, size_t off, size_t len) {
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 64;
        lethe_span *v = realloc(s->v, cap * sizeof *v);
        if (!v) return lethe_fail(LETHE_ERR_OOM, "tokenizer: out of memory");
        s->v = v;
        s->cap = cap;
    }
    s->v[s->n].off = off;
    s->v[s->n].len = len;
    s->n++;
    return LETHE_OK;
}

void lethe_spans_free(lethe_spans *s) {
    free(s->v);
    s->v = NULL;
    s->n = s->cap = 0;
}

/* Split every span of `in` by `re` into `out` (matches and gaps both kept). */
static lethe_status split_one(const pcre2_code *re, pcre2_match_data *md, const char *text,
                              const lethe_spans *in, lethe_spans *out) {
    out->n = 0;
    for (size_t k = 0; k < in->n; k++) {
        const char *s = text + in->v[k].off;
        size_t len = in->v[k].len, base = in->v[k].off;
        size_t pos = 0, last = 0;
        while (pos < len) {
            int rc = pcre2_match(re, (PCRE2_SPTR)s, len, pos, 0, md, NULL);
            if (rc == PCRE2_ERROR_JIT_STACKLIMIT) /* deep backtracking: the interpreter has a heap */
                rc = pcre2_match(re, (PCRE2_SPTR)s, len, pos, PCRE2_NO_JIT, md, NULL);
            if (rc == PCRE2_ERROR_NOMATCH) break;
            if (rc < 0) {
                PCRE2_UCHAR msg[256];
                pcre2_get_error_message(rc, msg, sizeof msg);
                return lethe_fail(LETHE_ERR_TOKENIZER, "tokenizer: pre-tokenizer match failed: %s", (const char *)msg);
            }
            const PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
            size_t ms = ov[0], me = ov[1];
            if (me <= ms) {
                /* empty match: move on by one UTF-8 character */
                pos = ms + 1;
                while (pos < len && ((unsigned char)s[pos] & 0xC0) == 0x80) pos++;
                continue;
            }
            lethe_status st;
            if (ms > last && (st = lethe_spans_push(out, base + last, ms - last)) != LETHE_OK) return st;
            if ((st = lethe_spans_push(out, base + ms, me - ms)) != LETHE_OK) return st;
            last = pos = me;
        }
        if (last < len) {
            lethe_status st = lethe_spans_push(out, base + last, len - last);
            if (st != LETHE_OK) return st;
        }
    }
    return LETHE_OK;
}

lethe_status lethe_pretok_split(const lethe_pretok *p, const char *text, size_t len, lethe_spans *out) {
    if (len == 0) return LETHE_OK;
    if (p->n_exprs == 0) return lethe_spans_push(out, 0, len);
    pcre2_match_data *md = pcre2_match_data_create(4, NULL);
    if (!md) return lethe_fail(LETHE_ERR_OOM, "tokenizer: out of memory");
    /* ping-pong between two lists: a = current pieces, b = after this expression */
    lethe_spans a = {0}, b = {0};
    lethe_status st = lethe_spans_push(&a, 0, len);
    for (int i = 0; i < p->n_exprs && st == LETHE_OK; i++) {
        st = split_one(p->code[i], md, text, &a, &b);
        lethe_spans t = a;
        a = b;
        b = t;
    }
    pcre2_match_data_free(md);
    for (size_t k = 0; k < a.n && st == LETHE_OK; k++) st = lethe_spans_push(out, a.v[k].off, a.v[k].len);
    lethe_spans_free(&a);
    lethe_spans_free(&b);
    return st;
}
