/* test_cli.c — the `lethe` command-line tool, run as a subprocess ($LETHE_BIN):
 * error lines and exit codes on bad input, and the subcommands' outputs on
 * the default model against the llama.cpp fixtures in tests/data. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <math.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"

extern char **environ;

#define N_VOCAB 49152

typedef struct run_result {
    int status;     /* exit code, or 128+signal */
    char *out;      /* stdout, NUL-terminated */
    size_t out_len;
    char *err;      /* stderr, NUL-terminated */
    size_t err_len;
} run_result;

static const char *bin(void) {
    const char *b = getenv("LETHE_BIN");
    if (!b || access(b, X_OK) != 0) fail_msg("LETHE_BIN (%s) is not an executable", b ? b : "(unset)");
    return b;
}

static char *read_all(const char *path, size_t *len) {
    size_t n = 0;
    char *raw = tu_read_file(path, &n);
    char *s = malloc(n + 1);
    if (raw) memcpy(s, raw, n);
    s[n] = '\0';
    free(raw);
    *len = n;
    return s;
}

/* Run `lethe args...` with stdin from /dev/null (or `stdin_path`), stdout and
 * stderr captured through temp files. `env_extra`: "K=V" strings added to (or
 * replacing in) the environment; NULL-terminated. */
static run_result run_env(const char *const *args, const char *const *env_extra, const char *stdin_path) {
    run_result r = {0};
    char out_path[] = "/tmp/lethe-cli-out-XXXXXX";
    char err_path[] = "/tmp/lethe-cli-err-XXXXXX";
    int fo = mkstemp(out_path), fe = mkstemp(err_path);
    assert_true(fo >= 0 && fe >= 0);
    close(fo);
    close(fe);

    const char *argv[64];
    size_t na = 0;
    argv[na++] = bin();
    for (size_t i = 0; args[i]; i++) argv[na++] = args[i];
    argv[na] = NULL;

    const char *envp[512];
    size_t ne = 0;
    for (char **e = environ; *e && ne < 400; e++) {
        bool replaced = false;
        for (size_t k = 0; env_extra && env_extra[k]; k++) {
            const char *eq = strchr(env_extra[k], '=');
            size_t kl = (size_t)(eq - env_extra[k]);
            if (!strncmp(*e, env_extra[k], kl) && (*e)[kl] == '=') replaced = true;
        }
        if (!replaced) envp[ne++] = *e;
    }
    for (size_t k = 0; env_extra && env_extra[k]; k++) envp[ne++] = env_extra[k];
    envp[ne] = NULL;

    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, stdin_path ? stdin_path : "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, out_path, O_WRONLY | O_TRUNC, 0);
    posix_spawn_file_actions_addopen(&fa, 2, err_path, O_WRONLY | O_TRUNC, 0);
    pid_t pid;
    int rc = posix_spawn(&pid, argv[0], &fa, NULL, (char *const *)argv, (char *const *)envp);
    posix_spawn_file_actions_destroy(&fa);
    assert_int_equal(rc, 0);
    int ws = 0;
    assert_true(waitpid(pid, &ws, 0) == pid);
    r.status = WIFEXITED(ws) ? WEXITSTATUS(ws) : 128 + (WIFSIGNALED(ws) ? WTERMSIG(ws) : 0);
    r.out = read_all(out_path, &r.out_len);
    r.err = read_all(err_path, &r.err_len);
    unlink(out_path);
    unlink(err_path);
    return r;
}

/* Every spawned CLI gets OMP_WAIT_POLICY=passive unless the caller set a
 * policy: on a 2-core machine running tests in parallel, spinning OpenMP
 * workers of several processes starve each other (measured: a 9-token
 * generate took 15 s spinning vs 0.4 s passive). Timing is not under test. */
static run_result run(const char *const *args) {
    static const char *const passive[] = {"OMP_WAIT_POLICY=passive", NULL};
    return run_env(args, getenv("OMP_WAIT_POLICY") ? NULL : passive, NULL);
}

static void free_result(run_result *r) {
    free(r->out);
    free(r->err);
}

static int count_lines(const char *s) {
    int n = 0;
    for (; *s; s++) n += *s == '\n';
    return n;
}

/* The error contract: non-zero exit (not a crash) and exactly one stderr line
 * "lethe: error: ...". */
static void expect_one_error_line(const char *const *args, const char *const *env_extra, const char *needle) {
    run_result r = env_extra ? run_env(args, env_extra, NULL) : run(args);
    if (r.status == 0 || r.status >= 128 || count_lines(r.err) != 1 || strncmp(r.err, "lethe: error:", 13) != 0 ||
        (needle && !strstr(r.err, needle))) {
        fprintf(stderr, "args:");
        for (size_t i = 0; args[i]; i++) fprintf(stderr, " %s", args[i]);
        fprintf(stderr, "\nstatus %d, stderr:\n%s\n", r.status, r.err);
    }
    assert_true(r.status != 0);
    assert_true(r.status < 128);   /* exited, no signal */
    assert_int_equal(count_lines(r.err), 1);
    assert_true(strncmp(r.err, "lethe: error:", 13) == 0);
    if (needle) assert_non_null(strstr(r.err, needle));
    free_result(&r);
}

#define ARGS(...) ((const char *const[]){__VA_ARGS__, NULL})

/* ---- no model needed ----------------------------------------------------- */

static void test_bad_flags(void **state) {
    (void)state;
    expect_one_error_line(ARGS("generate", "--no-such-flag"), NULL, "--no-such-flag");
    expect_one_error_line(ARGS("generate", "-Z"), NULL, "-Z");
    expect_one_error_line(ARGS("generate", "-p", "hi", "-n", "abc"), NULL, "abc");
    expect_one_error_line(ARGS("generate", "-p", "hi", "-n", "12x"), NULL, "12x");
    expect_one_error_line(ARGS("generate", "-p", "hi", "-n", "99999999999999999999"), NULL, NULL);
    expect_one_error_line(ARGS("generate", "-p", "hi", "-c", "0"), NULL, "-c");
    expect_one_error_line(ARGS("generate", "-p", "hi", "--temp", "warm"), NULL, "--temp");
    expect_one_error_line(ARGS("generate", "-p", "hi", "--top-p", "2"), NULL, "--top-p");
    expect_one_error_line(ARGS("generate", "-p", "hi", "--seed", "-5"), NULL, "--seed");
    expect_one_error_line(ARGS("generate", "-p", "hi", "--backend", "tpu"), NULL, "tpu");
    expect_one_error_line(ARGS("generate", "-m"), NULL, NULL);              /* missing value */
    expect_one_error_line(ARGS("tokenize", "-p", "x", "--temp", "1"), NULL, "--temp");   /* not for tokenize */
    expect_one_error_line(ARGS("generate", "stray"), NULL, "stray");
    expect_one_error_line(ARGS("no-such-command"), NULL, "no-such-command");
    expect_one_error_line(ARGS("bench", "-p", "1,,2"), NULL, NULL);
    expect_one_error_line(ARGS("bench", "-o", "xml"), NULL, "xml");
    expect_one_error_line(ARGS("logits", "--tokens", "1,2"), NULL, "-o");    /* needs -o */
    expect_one_error_line(ARGS("perplexity"), NULL, "-f");
    expect_one_error_line(ARGS("generate"), NULL, "-p");                    /* no prompt */
    expect_one_error_line(ARGS("generate", "-p", "a", "-f", "b"), NULL, NULL);
    expect_one_error_line(ARGS("generate", "-p", "hi", "--kv-policy", "lru"), NULL, "lru");
    expect_one_error_line(ARGS("generate", "-p", "hi", "--dms-force-rate", "1.5"), NULL, "--dms-force-rate");
    expect_one_error_line(ARGS("generate", "-p", "hi", "--kv-budget", "0"), NULL, "--kv-budget");
    expect_one_error_line(ARGS("generate", "-p", "hi", "--kv-mem", "12Q"), NULL, "--kv-mem");
    expect_one_error_line(ARGS("generate", "-p", "hi", "--parallel", "0"), NULL, "--parallel");
    expect_one_error_line(ARGS("tokenize", "-p", "hi", "--kv-policy", "dms"), NULL, "--kv-policy");
    expect_one_error_line(ARGS("logits", "--tokens", "1", "-o", "/dev/null", "--kv-type", "f64"), NULL, "f64");
}

static void test_help(void **state) {
    (void)state;
    const char *cmds[] = {"chat", "generate", "tokenize", "logits", "perplexity", "bench", "info"};
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
        run_result r = run(ARGS(cmds[i], "--help"));
        assert_int_equal(r.status, 0);
        assert_non_null(strstr(r.out, "usage: lethe"));
        assert_non_null(strstr(r.out, cmds[i]));
        assert_int_equal(r.err_len, 0);
        free_result(&r);
    }
    run_result r = run(ARGS("--help"));
    assert_int_equal(r.status, 0);
    assert_non_null(strstr(r.out, "bench"));
    free_result(&r);
}

static void test_missing_model(void **state) {
    (void)state;
    expect_one_error_line(ARGS("generate", "-m", "/nonexistent/dir/model.gguf", "-p", "hi"), NULL, "model.gguf");
    expect_one_error_line(ARGS("tokenize", "-m", "/nonexistent/dir/model.gguf", "-p", "hi"), NULL, NULL);
    /* default model missing: the line says how to fetch it */
    expect_one_error_line(ARGS("generate", "-p", "hi"), ARGS("LETHE_CACHE=/nonexistent/lethe-cache"),
                          "fetch-model.sh");
    /* a file that is not a model */
    const char junk[] = "this is not a gguf file at all, just some bytes";
    char *path = tu_write_temp(junk, sizeof junk);
    expect_one_error_line(ARGS("generate", "-m", path, "-p", "hi"), NULL, NULL);
    unlink(path);
    free(path);
    /* a missing input file */
    expect_one_error_line(ARGS("tokenize", "-f", "/nonexistent/input.txt"), NULL, "input.txt");
}

/* ---- on the default model ----------------------------------------------- */

static void need_model(void) { (void)tu_model_path(); }

static void test_tokenize(void **state) {
    (void)state;
    need_model();
    run_result r = run(ARGS("tokenize", "-p", "Hello world"));
    assert_int_equal(r.status, 0);
    /* SmolLM2 adds no BOS; "Hello" and "Ġworld" are single vocabulary entries */
    assert_string_equal(r.out, "19556 905\n");
    free_result(&r);

    /* every fixture prompt tokenizes to llama.cpp's ids */
    const char *names[] = {"english", "code", "chat", "multilingual"};
    for (size_t i = 0; i < 4; i++) {
        char prompt[1024], ids[1024];
        snprintf(prompt, sizeof prompt, "%s/prompts/%s.txt", tu_data_dir(), names[i]);
        snprintf(ids, sizeof ids, "%s/%s.tokens.txt", tu_data_dir(), names[i]);
        size_t n = 0;
        char *want = tu_read_file(ids, &n);
        if (!want) continue;   /* fixtures not present: nothing to compare */
        char *w = malloc(n + 2);
        memcpy(w, want, n);
        w[n] = '\0';
        /* one id per line → space-separated on one line */
        while (n > 0 && w[n - 1] == '\n') w[--n] = '\0';
        for (size_t k = 0; k < n; k++) if (w[k] == '\n') w[k] = ' ';
        strcat(w, "\n");
        r = run(ARGS("tokenize", "-f", prompt));
        assert_int_equal(r.status, 0);
        if (strcmp(r.out, w)) fprintf(stderr, "%s: got %s want %s", names[i], r.out, w);
        assert_string_equal(r.out, w);
        free_result(&r);
        free(w);
        free(want);
    }

    /* --pieces: one line per token, pieces concatenate back to the text */
    r = run(ARGS("tokenize", "--pieces", "-p", "Hello world"));
    assert_int_equal(r.status, 0);
    assert_string_equal(r.out, "19556\tHello\n905\t world\n");
    free_result(&r);
}

static void test_generate_deterministic(void **state) {
    (void)state;
    need_model();
    run_result a = run(ARGS("generate", "-p", "Once upon a time", "--temp", "0", "-n", "8"));
    run_result b = run(ARGS("generate", "-p", "Once upon a time", "--temp", "0", "-n", "8"));
    assert_int_equal(a.status, 0);
    assert_int_equal(b.status, 0);
    assert_true(a.out_len > 0);
    assert_string_equal(a.out, b.out);
    /* only the continuation: no prompt echo, nothing on stderr without -v */
    assert_null(strstr(a.out, "Once upon a time"));
    assert_int_equal(a.err_len, 0);
    free_result(&b);

    /* seeded sampling is reproducible too */
    run_result c = run(ARGS("generate", "-p", "The weather", "--temp", "1", "--seed", "7", "-n", "4"));
    run_result d = run(ARGS("generate", "-p", "The weather", "--temp", "1", "--seed", "7", "-n", "4"));
    assert_int_equal(c.status, 0);
    assert_string_equal(c.out, d.out);
    free_result(&c);
    free_result(&d);

    /* --stats puts timings on stderr, stdout unchanged */
    b = run(ARGS("generate", "-p", "Once upon a time", "--temp", "0", "-n", "8", "--stats"));
    assert_int_equal(b.status, 0);
    assert_string_equal(a.out, b.out);
    assert_non_null(strstr(b.err, "t/s"));
    free_result(&a);
    free_result(&b);
}

/* generate samples from the device's top-k candidates when the chain
 * allows (greedy, seeded top-k; --parallel too): the same text as from
 * whole logits rows (--host-sampling); -v says which path ran. */
static void test_generate_device_sampling(void **state) {
    (void)state;
    need_model();
    const char *const *cases[] = {
        ARGS("generate", "-p", "Once upon a time", "--temp", "0", "-n", "12", "-v"),
        ARGS("generate", "-p", "The weather", "--seed", "7", "-n", "12", "-v"),
        ARGS("generate", "-p", "The weather", "--seed", "9", "--top-k", "5", "--top-p", "1", "--temp", "1.5", "-n", "12",
             "-v"),
        ARGS("generate", "-p", "The weather", "--seed", "3", "-n", "6", "--parallel", "3", "-v"),
        ARGS("generate", "-p", "The weather", "--seed", "3", "-n", "6", "--repeat-penalty", "1.3", "-v"),
    };
    const char *want_path[] = {"the 1 best candidates", "the 40 best candidates", "the 6 best candidates",
                               "the 40 best candidates", "whole logits rows"};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *host[24];
        size_t n = 0;
        for (; cases[i][n]; n++) host[n] = cases[i][n];
        host[n++] = "--host-sampling";
        host[n] = NULL;
        run_result a = run(cases[i]), b = run(host);
        assert_int_equal(a.status, 0);
        assert_int_equal(b.status, 0);
        assert_true(a.out_len > 0);
        if (!strstr(a.err, want_path[i])) fail_msg("case %zu: stderr does not say '%s':\n%s", i, want_path[i], a.err);
        assert_non_null(strstr(b.err, "whole logits rows"));
        assert_string_equal(a.out, b.out);
        free_result(&a);
        free_result(&b);
    }
}

static void test_prompt_too_long(void **state) {
    (void)state;
    need_model();
    expect_one_error_line(ARGS("generate", "-c", "4", "-p",
                               "This prompt has clearly more than four tokens in it, surely."),
                          NULL, NULL);
    char out[] = "/tmp/lethe-cli-logits-XXXXXX";
    int fd = mkstemp(out);
    close(fd);
    unlink(out);
    expect_one_error_line(ARGS("logits", "-c", "2", "--tokens", "1,2,3", "-o", out), NULL, NULL);
    assert_int_not_equal(access(out, F_OK), 0);   /* no partial output left behind */
    expect_one_error_line(ARGS("logits", "--tokens", "1,99999999", "-o", out), NULL, "99999999");
}

static float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    float f;
    if (exp == 0) f = ldexpf((float)man, -24);
    else if (exp == 31) f = man ? NAN : INFINITY;
    else f = ldexpf((float)(man | 0x400), (int)exp - 25);
    return sign ? -f : f;
}

static void test_logits(void **state) {
    (void)state;
    need_model();
    char out[] = "/tmp/lethe-cli-logits-XXXXXX";
    int fd = mkstemp(out);
    close(fd);
    run_result r = run(ARGS("logits", "--tokens", "1,2,3", "-o", out));
    assert_int_equal(r.status, 0);
    free_result(&r);
    size_t n = 0;
    float *l = tu_read_file(out, &n);
    assert_non_null(l);
    assert_int_equal(n, (size_t)3 * N_VOCAB * 4);
    for (size_t i = 0; i < n / 4; i++) assert_true(isfinite(l[i]));
    free(l);

    /* the english fixture: same argmax in every row as llama.cpp (rows whose
     * top two are within 0.1 are near-ties and skipped) */
    char ids[1024], ref[1024];
    snprintf(ids, sizeof ids, "%s/english.tokens.txt", tu_data_dir());
    snprintf(ref, sizeof ref, "%s/english.logits.f16", tu_data_dir());
    size_t ni = 0, nr = 0;
    char *idtxt = tu_read_file(ids, &ni);
    uint16_t *rf = tu_read_file(ref, &nr);
    if (idtxt && rf) {
        char list[1024] = "";
        char *txt = malloc(ni + 1);
        memcpy(txt, idtxt, ni);
        txt[ni] = '\0';
        int n_tok = 0;
        for (char *tok = strtok(txt, "\n"); tok; tok = strtok(NULL, "\n")) {
            if (n_tok++) strcat(list, ",");
            strcat(list, tok);
        }
        free(txt);
        assert_int_equal(nr, (size_t)n_tok * N_VOCAB * 2);
        r = run(ARGS("logits", "--tokens", list, "-o", out));
        assert_int_equal(r.status, 0);
        free_result(&r);
        l = tu_read_file(out, &n);
        assert_int_equal(n, (size_t)n_tok * N_VOCAB * 4);
        /* -p gives the same tokens, hence the same file */
        char prompt[1024];
        snprintf(prompt, sizeof prompt, "%s/prompts/english.txt", tu_data_dir());
        r = run(ARGS("logits", "-f", prompt, "-o", out));
        assert_int_equal(r.status, 0);
        free_result(&r);
        size_t n2 = 0;
        float *l2 = tu_read_file(out, &n2);
        assert_int_equal(n2, n);
        for (int t = 0; t < n_tok; t++) {
            const float *row = l + (size_t)t * N_VOCAB;
            const uint16_t *rrow = rf + (size_t)t * N_VOCAB;
            int best = 0, rbest = 0;
            float r1 = -INFINITY, r2 = -INFINITY;
            for (int v = 0; v < N_VOCAB; v++) {
                if (row[v] > row[best]) best = v;
                float x = half_to_float(rrow[v]);
                if (x > r1) { r2 = r1; r1 = x; rbest = v; }
                else if (x > r2) r2 = x;
            }
            if (r1 - r2 > 0.1f) assert_int_equal(best, rbest);
            /* the -f run wrote the same logits (same decode, same order) */
            for (int v = 0; v < N_VOCAB; v += 97) assert_true(fabsf(row[v] - l2[(size_t)t * N_VOCAB + v]) < 1e-3f);
        }
        free(l2);
        free(l);
    }
    free(idtxt);
    free(rf);
    unlink(out);
}

static void test_chat_once(void **state) {
    (void)state;
    need_model();
    run_result r = run(ARGS("chat", "-p", "What is 2+2?", "--temp", "0", "-n", "8"));
    assert_int_equal(r.status, 0);
    assert_true(r.out_len > 1);
    assert_null(strstr(r.out, "<|im_start|>"));   /* the template is not echoed */
    free_result(&r);

    /* scripted multi-turn through stdin, with /reset and /quit */
    const char script[] = "Hi!\nWhat is your name?\n/reset\nHello again\n/quit\nnever read\n";
    char *in = tu_write_temp(script, strlen(script));
    r = run_env(ARGS("chat", "--temp", "0", "-n", "4", "--system", "You are terse."),
                getenv("OMP_WAIT_POLICY") ? NULL : ARGS("OMP_WAIT_POLICY=passive"), in);
    assert_int_equal(r.status, 0);
    assert_true(count_lines(r.out) >= 3);   /* three answers, one line each at least */
    assert_non_null(strstr(r.err, "reset"));
    free_result(&r);
    unlink(in);
    free(in);
}

/* chat --save / --load: a resumed chat (DMS evictions in its cache) answers
 * like the unbroken one; a state that is not a chat is one error line. */
static void test_chat_save_load(void **state) {
    (void)state;
    need_model();
    char *st = tu_write_temp("", 0);
#define KV "--kv-policy", "dms", "--dms-force-rate", "0.5", "--dms-window", "8"
    run_result a = run(ARGS("chat", "-p", "Hi, what is the capital of France?", "--temp", "0", "-n", "16", KV, "--save",
                            st, "-t", "2"));
    assert_int_equal(a.status, 0);
    run_result b = run(ARGS("chat", "--load", st, "-p", "And of Germany?", "--temp", "0", "-n", "16", KV, "-t", "2"));
    assert_int_equal(b.status, 0);
    const char script[] = "Hi, what is the capital of France?\nAnd of Germany?\n";
    char *in = tu_write_temp(script, strlen(script));
    run_result u = run_env(ARGS("chat", "--temp", "0", "-n", "16", KV, "-t", "2"),
                           getenv("OMP_WAIT_POLICY") ? NULL : ARGS("OMP_WAIT_POLICY=passive"), in);
    assert_int_equal(u.status, 0);
    /* the unbroken chat printed both replies; the resumed one the second */
    assert_true(b.out_len > 1 && u.out_len > b.out_len);
    assert_string_equal(u.out + u.out_len - b.out_len, b.out);
    assert_true(strncmp(u.out, a.out, a.out_len - 1) == 0);
    free_result(&a);
    free_result(&b);
    free_result(&u);
    /* other KV settings: refused in one line */
    expect_one_error_line(ARGS("chat", "--load", st, "-p", "x", "-n", "1"), NULL, "KV policy");
    expect_one_error_line(ARGS("chat", "--load", in, "-p", "x", "-n", "1"), NULL, "magic");
#undef KV
    unlink(in);
    free(in);
    unlink(st);
    free(st);
}

static void test_perplexity(void **state) {
    (void)state;
    need_model();
    /* ~100 tokens of plain English: -c 16 gives several windows */
    const char text[] =
        "The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step. "
        "All that glitters is not gold. The early bird catches the worm. Actions speak louder than words. "
        "Beauty is in the eye of the beholder. Every cloud has a silver lining. Fortune favors the bold. "
        "Honesty is the best policy. Knowledge is power. Practice makes perfect. Time is money.";
    char *path = tu_write_temp(text, strlen(text));
    run_result r = run(ARGS("perplexity", "-f", path, "-c", "16", "--chunks", "3"));
    assert_int_equal(r.status, 0);
    double ppl = 0, err = 0;
    assert_int_equal(sscanf(r.out, "PPL = %lf +/- %lf", &ppl, &err), 2);
    assert_true(ppl > 1.0 && ppl < 1e4);
    assert_true(err >= 0.0);
    assert_non_null(strstr(r.err, "[3]"));   /* running value per window */
    free_result(&r);
    /* too short for the window */
    expect_one_error_line(ARGS("perplexity", "-f", path, "-c", "4096"), NULL, NULL);
    unlink(path);
    free(path);
}

/* KV policies from the command line: a policy the model cannot run is one
 * error line; DMS forced on SmolLM2 evicts and --kv-stats reports it; N
 * parallel continuations print N sections; a tiny KV pool refuses the
 * sequences that do not fit and says so. */
static void test_kv_options(void **state) {
    (void)state;
    need_model();
    expect_one_error_line(ARGS("generate", "-p", "hi", "-n", "2", "--kv-policy", "dms"), NULL, "DMS");
    expect_one_error_line(ARGS("generate", "-p", "hi", "-n", "2", "--kv-policy", "tova"), NULL, "kv_budget_tokens");
    run_result r = run(ARGS("generate", "-p", "The capital of France is", "-n", "24", "--temp", "0", "--kv-policy",
                            "dms", "--dms-force-rate", "0.9", "--dms-window", "4", "--kv-stats", "-t", "2"));
    assert_int_equal(r.status, 0);
    assert_non_null(strstr(r.err, "KV policy dms (window 4)"));
    assert_non_null(strstr(r.err, "layer 29:"));
    assert_null(strstr(r.err, " 0 evicted"));
    free_result(&r);
    r = run(ARGS("generate", "-p", "Once upon a time", "-n", "6", "--temp", "0.7", "--seed", "3", "--parallel", "3",
                 "-t", "2"));
    assert_int_equal(r.status, 0);
    assert_non_null(strstr(r.out, "=== sequence 0 (6 tokens) ==="));
    assert_non_null(strstr(r.out, "=== sequence 2 (6 tokens) ==="));
    free_result(&r);
    /* 30 layers x 3 heads x 2 pages of f16 64-dim slots = 1.4 MB: the prompt
     * and one fork fit, the third sequence does not */
    r = run(ARGS("generate", "-p", "Once upon a time", "-n", "4", "--temp", "0", "--parallel", "3", "--kv-mem",
                 "1440K", "-t", "2"));
    assert_int_equal(r.status, 0);
    assert_non_null(strstr(r.err, "sequence 2 refused"));   /* the last one: "sequence", not a range */
    assert_non_null(strstr(r.out, "=== sequence 1 (4 tokens) ==="));
    assert_non_null(strstr(r.out, "=== sequence 2 (0 tokens, refused"));
    free_result(&r);
    r = run(ARGS("bench", "-p", "0", "-n", "4", "-d", "40", "-r", "1", "--kv-policy", "window", "--kv-budget", "16",
                 "-o", "csv"));
    assert_int_equal(r.status, 0);
    assert_non_null(strstr(r.out, ",window 16,"));
    free_result(&r);
}

/* lethe eval: every policy next to none on a text and on passkey prompts. */
static void test_eval(void **state) {
    (void)state;
    need_model();
    char text[4096];
    snprintf(text, sizeof text, "%s/README.md", tu_data_dir());   /* any few hundred tokens of English */
    run_result r = run(ARGS("eval", "-f", text, "-c", "96", "--passkey", "128", "--policies", "dms,window,none",
                            "--kv-budget", "32", "--dms-force-rate", "0.5", "--dms-window", "8", "-o", "json", "-t", "2"));
    assert_int_equal(r.status, 0);
    assert_non_null(strstr(r.out, "{\"task\": \"summary\", \"policy\": \"none\""));
    assert_non_null(strstr(r.out, "{\"task\": \"summary\", \"policy\": \"dms\""));
    assert_non_null(strstr(r.out, "\"budget\": 32"));
    assert_non_null(strstr(r.out, "\"passkey_n\": 3"));
    assert_null(strstr(r.out, "\"error\""));
    free_result(&r);
    expect_one_error_line(ARGS("eval", "--policies", "dms"), NULL, "nothing to evaluate");
    expect_one_error_line(ARGS("eval", "-f", text, "--policies", "lru"), NULL, "lru");
}

/* lethe eval's tasks: passkey per length and depth, variable tracking,
 * arithmetic, --kv-budget match, and --hyper's admission in a --kv-mem pool. */
static void test_eval_tasks(void **state) {
    (void)state;
    need_model();
    run_result r = run(ARGS("eval", "--passkey", "128,192", "--depths", "10,90", "--vartrack", "160", "--arith", "1",
                            "--policies", "dms,window", "--kv-budget", "match", "--dms-force-rate", "0.5",
                            "--dms-window", "8", "-o", "json", "-t", "2"));
    assert_int_equal(r.status, 0);
    assert_non_null(strstr(r.out, "{\"task\": \"passkey\", \"policy\": \"none\", \"budget\": 0, \"length\": 192"));
    assert_non_null(strstr(r.out, "\"depth\": 0.90"));
    assert_non_null(strstr(r.out, "{\"task\": \"vartrack\", \"policy\": \"dms\""));
    assert_non_null(strstr(r.out, "\"recall\": "));
    assert_non_null(strstr(r.out, "{\"task\": \"arith\", \"policy\": \"window\""));
    assert_non_null(strstr(r.out, "\"budget_match\": true"));
    assert_null(strstr(r.out, "{\"task\": \"passkey\", \"policy\": \"window\", \"budget\": 0,"));   /* matched: > 0 */
    assert_null(strstr(r.out, "\"error\""));
    free_result(&r);
    /* md: one table per length and per depth */
    r = run(ARGS("eval", "--passkey", "128,192", "--depths", "10,90", "--policies", "none", "-t", "2"));
    assert_int_equal(r.status, 0);
    assert_non_null(strstr(r.out, "| policy | 128 | 192 |"));
    assert_non_null(strstr(r.out, "| policy | 10 % | 90 % |"));
    free_result(&r);
    /* the 8-shot prompt is ~370 tokens: 12 pages of 32 slots in each of the
     * 90 (layer, KV head) streams, 8640 KiB in f16, so a 20 MiB pool admits
     * two full sequences; dms flagging 90 % admits all four */
    r = run(ARGS("eval", "--hyper", "1", "--parallel", "4", "--kv-mem", "20M", "--policies", "dms",
                 "--dms-force-rate", "0.9", "--dms-window", "8", "--seed", "3", "-o", "json", "-t", "2"));
    assert_int_equal(r.status, 0);
    assert_non_null(strstr(r.err, "lethe: warning: hyper: policy none admits 2 of 4 sequences"));
    assert_null(strstr(r.err, "policy dms admits"));
    assert_non_null(strstr(r.out, "{\"task\": \"hyper\", \"policy\": \"none\", \"budget\": 0, \"kv_mem\": 20971520, "
                                  "\"parallel\": 4, \"n\": 1, \"admitted\": 2.00"));
    assert_non_null(strstr(r.out, "{\"task\": \"hyper\", \"policy\": \"dms\", \"budget\": 0, \"kv_mem\": 20971520, "
                                  "\"parallel\": 4, \"n\": 1, \"admitted\": 4.00"));
    free_result(&r);
    /* a pool smaller than the prompt: refused with one clear line, not a crash */
    r = run(ARGS("eval", "--hyper", "1", "--parallel", "2", "--kv-mem", "1M", "--policies", "none", "-t", "2"));
    assert_int_equal(r.status, 0);
    assert_non_null(strstr(r.err, "lethe: warning: hyper: policy none: the prompt"));
    assert_non_null(strstr(r.err, "does not fit the KV pool of 1048576 bytes"));
    assert_non_null(strstr(r.out, "| none | - | 0.00 | 0.00 |"));
    free_result(&r);
    /* bad flags: one line, usage exit */
    expect_one_error_line(ARGS("eval", "--hyper", "2"), NULL, "--hyper needs --parallel");
    expect_one_error_line(ARGS("eval", "--arith", "2", "--parallel", "4"), NULL, "--parallel applies to --hyper only");
    expect_one_error_line(ARGS("eval", "--arith", "2", "--kv-mem", "8M"), NULL, "--kv-mem applies to --hyper only");
    expect_one_error_line(ARGS("eval", "--passkey", "128", "--depths", "10,101"), NULL, "--depths");
    expect_one_error_line(ARGS("eval", "--vartrack", "10"), NULL, "--vartrack");
    expect_one_error_line(ARGS("eval", "--arith", "0"), NULL, "--arith");
    expect_one_error_line(ARGS("eval", "--passkey", "128", "--trials", "0"), NULL, "--trials");
    expect_one_error_line(ARGS("eval", "--arith", "1", "--policies", "window"), NULL, "--kv-budget");
    expect_one_error_line(ARGS("eval", "--arith", "1", "--policies", "window", "--kv-budget", "match"), NULL,
                          "put dms in --policies");
    expect_one_error_line(ARGS("eval", "--arith", "1", "--kv-budget", "lots"), NULL, "lots");
    expect_one_error_line(ARGS("generate", "-p", "x", "--kv-budget", "match"), NULL, "match");   /* eval only */
}

static void test_bench(void **state) {
    (void)state;
    need_model();
    run_result r = run(ARGS("bench", "-p", "8", "-n", "4", "-r", "2", "-o", "csv"));
    assert_int_equal(r.status, 0);
    assert_int_equal(count_lines(r.out), 3);   /* header + pp8 + tg4 */
    assert_non_null(strstr(r.out, "pp8"));
    assert_non_null(strstr(r.out, "tg4"));
    free_result(&r);
    r = run(ARGS("bench", "-p", "0", "-n", "2", "-d", "4", "-r", "1"));
    assert_int_equal(r.status, 0);
    assert_non_null(strstr(r.out, "| model |"));
    assert_non_null(strstr(r.out, "tg2 @ d4"));
    free_result(&r);
    r = run(ARGS("bench", "-p", "4", "-n", "0", "-r", "1", "-o", "json"));
    assert_int_equal(r.status, 0);
    assert_non_null(strstr(r.out, "\"avg_ts\""));
    assert_true(r.out[0] == '[');
    free_result(&r);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_flags),
        cmocka_unit_test(test_help),
        cmocka_unit_test(test_missing_model),
        cmocka_unit_test(test_tokenize),
        cmocka_unit_test(test_generate_deterministic),
        cmocka_unit_test(test_generate_device_sampling),
        cmocka_unit_test(test_prompt_too_long),
        cmocka_unit_test(test_logits),
        cmocka_unit_test(test_chat_once),
        cmocka_unit_test(test_chat_save_load),
        cmocka_unit_test(test_perplexity),
        cmocka_unit_test(test_bench),
        cmocka_unit_test(test_kv_options),
        cmocka_unit_test(test_eval),
        cmocka_unit_test(test_eval_tasks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
