/* eval_tasks.c — generators, prompts and scorers of lethe eval's synthetic
 * tasks (see eval_tasks.h). Pure text in, text out: no model here, so the
 * answer keys and the parsers are tested on their own. */
#include "eval_tasks.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

uint64_t eval_rng_next(eval_rng *r) {
    uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

int eval_rng_range(eval_rng *r, int lo, int hi) {
    return lo + (int)(eval_rng_next(r) % (uint64_t)(hi - lo + 1));
}

const char eval_filler[] = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. ";

char *eval_haystack(const char *head, const char *const *inserts, const int *at, int n_ins, int n_sent,
                    const char *tail) {
    size_t cap = strlen(head) + strlen(tail) + (size_t)n_sent * (sizeof eval_filler - 1) + 1;
    for (int i = 0; i < n_ins; i++) cap += strlen(inserts[i]);
    char *p = malloc(cap), *w = p;
    if (!p) return NULL;
    w += sprintf(w, "%s", head);
    int k = 0;
    for (int s = 0; s <= n_sent; s++) {
        while (k < n_ins && at[k] <= s) w += sprintf(w, "%s", inserts[k++]);
        if (s < n_sent) w += sprintf(w, "%s", eval_filler);
    }
    while (k < n_ins) w += sprintf(w, "%s", inserts[k++]);   /* at beyond n_sent: at the end */
    sprintf(w, "%s", tail);
    return p;
}

int eval_depth_at(double depth, int n_sent) {
    int at = (int)(depth * n_sent + 0.5);
    return at < 0 ? 0 : at > n_sent ? n_sent : at;
}

/* ---- needle ------------------------------------------------------------- */

char *eval_needle_prompt(int key, double depth, int n_sent) {
    char needle[96];
    snprintf(needle, sizeof needle, "The pass key is %05d. Remember it. %05d is the pass key. ", key, key);
    const char *ins[1] = {needle};
    const int at[1] = {eval_depth_at(depth, n_sent)};
    return eval_haystack("There is important information hidden in a lot of irrelevant text. Find it and memorize it. ",
                         ins, at, 1, n_sent, "What is the pass key? The pass key is");
}

bool eval_needle_score(const char *cont, int key) {
    while (*cont == ' ') cont++;
    char want[8];
    snprintf(want, sizeof want, "%05d", key);
    return strncmp(cont, want, 5) == 0 && !isdigit((unsigned char)cont[5]);
}

/* ---- variable tracking -------------------------------------------------- */

static void random_name(eval_rng *r, char out[6], char (*taken)[6], int n_taken) {
    for (;;) {
        for (int i = 0; i < 5; i++) out[i] = (char)('A' + eval_rng_range(r, 0, 25));
        out[5] = 0;
        bool dup = false;
        for (int i = 0; i < n_taken; i++) dup = dup || !strcmp(out, taken[i]);
        if (!dup) return;
    }
}

bool eval_vt_make(uint64_t seed, int hops, eval_vt *out) {
    if (hops < 1 || hops >= EVAL_VT_MAX) return false;
    memset(out, 0, sizeof *out);
    eval_rng r = {seed ^ 0x5641525452414B31ull};   /* "VARTRAK1": its own stream */
    char taken[2 * EVAL_VT_MAX + 3][6];
    int n_taken = 0;
    out->n = hops + 1;
    for (int i = 0; i < out->n; i++) {
        random_name(&r, out->name[i], taken, n_taken);
        memcpy(taken[n_taken++], out->name[i], 6);
    }
    for (int i = 0; i < 3; i++) {
        random_name(&r, out->ex_name[i], taken, n_taken);
        memcpy(taken[n_taken++], out->ex_name[i], 6);
    }
    for (int i = 0; i < out->n; i++) {
        random_name(&r, out->other[i], taken, n_taken);
        memcpy(taken[n_taken++], out->other[i], 6);
    }
    out->value = eval_rng_range(&r, 10000, 99999);
    do out->ex_value = eval_rng_range(&r, 10000, 99999); while (out->ex_value == out->value);
    do out->other_value = eval_rng_range(&r, 10000, 99999);
    while (out->other_value == out->value || out->other_value == out->ex_value);
    return true;
}

char *eval_vt_prompt(const eval_vt *p, int n_sent) {
    char head[768], tail[320];
    /* RULER's template: the answer is primed with how many variables to list */
    snprintf(head, sizeof head,
             "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n"
             "Example: VAR %s = %d. The sky is blue. VAR %s = %s. VAR %s = %s.\n"
             "Question: Find all variables that are assigned the value %d in the text above. Answer: According to "
             "the chain(s) of variable assignment in the text above, 3 variables are assigned the value %d, they are: "
             "%s, %s, %s.\n\n",
             p->ex_name[0], p->ex_value, p->ex_name[1], p->ex_name[0], p->ex_name[2], p->ex_name[1], p->ex_value,
             p->ex_value, p->ex_name[0], p->ex_name[1], p->ex_name[2]);
    snprintf(tail, sizeof tail,
             "\nQuestion: Find all variables that are assigned the value %d in the text above. Answer: According to "
             "the chain(s) of variable assignment in the text above, %d variables are assigned the value %d, they are:",
             p->value, p->n, p->value);
    char stmt[2 * EVAL_VT_MAX][40];
    const char *ins[2 * EVAL_VT_MAX];
    int at[2 * EVAL_VT_MAX];
    for (int i = 0; i < p->n; i++) {   /* distractor step i, then chain step i: evenly spread, in order */
        char *d = stmt[2 * i], *c = stmt[2 * i + 1];
        if (i == 0) {
            snprintf(d, 40, "VAR %s = %d. ", p->other[0], p->other_value);
            snprintf(c, 40, "VAR %s = %d. ", p->name[0], p->value);
        } else {
            snprintf(d, 40, "VAR %s = %s. ", p->other[i], p->other[i - 1]);
            snprintf(c, 40, "VAR %s = %s. ", p->name[i], p->name[i - 1]);
        }
        ins[2 * i] = d;
        ins[2 * i + 1] = c;
        at[2 * i] = (int)(((double)i + 0.25) * n_sent / p->n);
        at[2 * i + 1] = (int)(((double)i + 0.5) * n_sent / p->n);
    }
    return eval_haystack(head, ins, at, 2 * p->n, n_sent, tail);
}

/* Does `w` occur in s delimited by non-alphanumerics? */
static bool has_word(const char *s, const char *w) {
    const size_t n = strlen(w);
    for (const char *q = strstr(s, w); q; q = strstr(q + 1, w)) {
        bool left = q == s || !isalnum((unsigned char)q[-1]);
        bool right = !isalnum((unsigned char)q[n]);
        if (left && right) return true;
    }
    return false;
}

int eval_vt_score(const char *cont, const eval_vt *p) {
    int k = 0;
    for (int i = 0; i < p->n; i++) k += has_word(cont, p->name[i]);
    return k;
}

bool eval_vt_exact(const char *cont, const eval_vt *p) {
    if (eval_vt_score(cont, p) != p->n) return false;
    for (int i = 0; i < p->n; i++)
        if (has_word(cont, p->other[i])) return false;
    return true;
}

/* ---- arithmetic --------------------------------------------------------- */

static const char *const k_names[] = {"Tom", "Anna", "Ben", "Mia", "Sam", "Lily", "Jack", "Emma", "Leo", "Sara"};
static const bool k_she[] = {false, true, false, true, false, true, false, true, false, true};
static const char *const k_things[] = {"apples", "pencils", "marbles", "cookies", "stickers", "books", "cards", "eggs"};

void eval_arith_make(uint64_t seed, eval_arith *out) {
    memset(out, 0, sizeof *out);
    eval_rng r = {seed ^ 0x41524954484D3031ull};   /* "ARITHM01" */
    const int who = eval_rng_range(&r, 0, 9);
    int other = eval_rng_range(&r, 0, 8);
    if (other >= who) other++;
    const char *n = k_names[who], *m = k_names[other], *pr = k_she[who] ? "She" : "He";
    const char *t = k_things[eval_rng_range(&r, 0, 7)];
    out->kind = eval_rng_range(&r, 0, 3);
    int a, b, c;
    switch (out->kind) {
    case 0:
        a = eval_rng_range(&r, 2, 20), b = eval_rng_range(&r, 1, 10);
        out->answer = a + b;
        snprintf(out->text, sizeof out->text, "%s has %d %s. %s buys %d more. How many %s does %s have now?", n, a, t,
                 pr, b, t, n);
        snprintf(out->work, sizeof out->work, "%d + %d = %ld", a, b, out->answer);
        break;
    case 1:
        a = eval_rng_range(&r, 5, 20), b = eval_rng_range(&r, 1, a - 1);
        out->answer = a - b;
        snprintf(out->text, sizeof out->text, "%s has %d %s. %s gives %d of them to %s. How many %s does %s have left?",
                 n, a, t, pr, b, m, t, n);
        snprintf(out->work, sizeof out->work, "%d - %d = %ld", a, b, out->answer);
        break;
    case 2:
        a = eval_rng_range(&r, 2, 9), b = eval_rng_range(&r, 2, 9);
        out->answer = (long)a * b;
        snprintf(out->text, sizeof out->text, "%s has %d boxes with %d %s in each box. How many %s does %s have?", n,
                 a, b, t, t, n);
        snprintf(out->work, sizeof out->work, "%d * %d = %ld", a, b, out->answer);
        break;
    default:
        a = eval_rng_range(&r, 2, 15), b = eval_rng_range(&r, 1, 10), c = eval_rng_range(&r, 1, a + b - 1);
        out->answer = a + b - c;
        snprintf(out->text, sizeof out->text,
                 "%s has %d %s. %s buys %d more and then gives %d to %s. How many %s does %s have now?", n, a, t, pr, b,
                 c, m, t, n);
        snprintf(out->work, sizeof out->work, "%d + %d - %d = %ld", a, b, c, out->answer);
        break;
    }
}

char *eval_arith_prompt(const eval_arith *p, int shots) {
    size_t cap = 512 + (size_t)(shots + 1) * (sizeof p->text + sizeof p->work + 32);
    char *s = malloc(cap), *w = s;
    if (!s) return NULL;
    w += sprintf(w, "Solve each problem. Give the calculation and the result.\n\n");
    for (int i = 0; i < shots; i++) {
        eval_arith ex;
        /* the shots cover the four kinds in turn, from seeds outside the
         * problems' stream (those are eval_rng_next of the user's seed) */
        uint64_t sd = 0xE8A3F1ull + (uint64_t)i;
        do eval_arith_make(sd, &ex), sd += 1000; while (ex.kind != i % 4);
        w += sprintf(w, "Question: %s\nAnswer: %s\n\n", ex.text, ex.work);
    }
    sprintf(w, "Question: %s\nAnswer:", p->text);
    return s;
}

bool eval_arith_parse(const char *cont, long *out) {
    while (*cont && isspace((unsigned char)*cont)) cont++;
    const char *end = strchr(cont, '\n');
    if (!end) end = cont + strlen(cont);
    const char *from = cont;
    for (const char *q = cont; q < end; q++)
        if (*q == '=') from = q + 1;
    for (const char *q = from; q < end; q++) {
        if (!isdigit((unsigned char)*q)) continue;
        long v = 0;
        const char *d = q;
        for (; d < end && isdigit((unsigned char)*d) && v < 100000000L; d++) v = v * 10 + (*d - '0');
        if (q > from && q[-1] == '-' && (q - 1 == from || !isalnum((unsigned char)q[-2]))) v = -v;
        *out = v;
        return true;
    }
    return false;
}

int eval_majority(const long *ans, const bool *valid, int n, long *winner) {
    int best = 0;
    for (int i = 0; i < n; i++) {
        if (!valid[i]) continue;
        bool seen = false;   /* count each answer once, at its first occurrence */
        for (int j = 0; j < i && !seen; j++) seen = valid[j] && ans[j] == ans[i];
        if (seen) continue;
        int votes = 0;
        for (int j = i; j < n; j++) votes += valid[j] && ans[j] == ans[i];
        if (votes > best) {   /* strictly more: a tie keeps the earlier answer */
            best = votes;
            *winner = ans[i];
        }
    }
    return best;
}
