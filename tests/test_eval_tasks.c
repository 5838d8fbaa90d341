/* test_eval_tasks.c — lethe eval's synthetic tasks without a model
 * (tools/lethe/eval_tasks.c): the generators are deterministic for a seed,
 * their answer keys agree with an independent reading of the generated
 * text, and the parsers/scorers do the right thing on crafted continuations. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eval_tasks.h"

static void test_rng(void **state) {
    (void)state;
    eval_rng a = {42}, b = {42}, c = {43};
    for (int i = 0; i < 100; i++) {
        uint64_t x = eval_rng_next(&a);
        assert_true(x == eval_rng_next(&b));
        assert_true(x != eval_rng_next(&c));
    }
    int seen[6] = {0};
    for (int i = 0; i < 600; i++) {
        int v = eval_rng_range(&a, 3, 8);
        assert_true(v >= 3 && v <= 8);
        seen[v - 3]++;
    }
    for (int i = 0; i < 6; i++) assert_true(seen[i] > 50);   /* every value comes up */
}

static int count(const char *s, const char *w) {
    int n = 0;
    for (const char *q = strstr(s, w); q; q = strstr(q + 1, w)) n++;
    return n;
}

static void test_haystack(void **state) {
    (void)state;
    const char *ins[] = {"<A>", "<B>", "<C>"};
    const int at[] = {0, 2, 2};
    char *p = eval_haystack("H|", ins, at, 3, 2, "|T");
    /* <A> before group 0, <B><C> after group 1 (before the would-be group 2) */
    char want[1024];
    snprintf(want, sizeof want, "H|<A>%s%s<B><C>|T", eval_filler, eval_filler);
    assert_string_equal(p, want);
    free(p);
    assert_int_equal(eval_depth_at(0.0, 10), 0);
    assert_int_equal(eval_depth_at(0.5, 10), 5);
    assert_int_equal(eval_depth_at(1.0, 10), 10);
    assert_int_equal(eval_depth_at(1.7, 10), 10);
}

static void test_needle(void **state) {
    (void)state;
    char *p = eval_needle_prompt(12345, 0.5, 10);
    const char *needle = strstr(p, "The pass key is 12345.");
    assert_non_null(needle);
    /* five filler groups before the needle, five after */
    char *before = strndup(p, (size_t)(needle - p));
    assert_int_equal(count(before, eval_filler), 5);
    assert_int_equal(count(needle, eval_filler), 5);
    free(before);
    assert_non_null(strstr(p, "What is the pass key? The pass key is"));
    free(p);
    p = eval_needle_prompt(54321, 0.1, 10);
    needle = strstr(p, "54321");
    before = strndup(p, (size_t)(needle - p));
    assert_int_equal(count(before, eval_filler), 1);
    free(before);
    free(p);

    assert_true(eval_needle_score(" 12345.", 12345));
    assert_true(eval_needle_score("12345", 12345));
    assert_true(eval_needle_score("  12345 is it", 12345));
    assert_false(eval_needle_score(" 123456", 12345));   /* a longer number is not the key */
    assert_false(eval_needle_score(" 1234", 12345));
    assert_false(eval_needle_score(" the key 12345", 12345));
    assert_false(eval_needle_score("", 12345));
}

/* Follow the assignments written in the prompt (after the example) and
 * return how many variables end up holding `value`; each such name must be
 * one of p's chain names. */
static int resolve_chain(const char *prompt, const eval_vt *p) {
    const char *body = strstr(prompt, "Answer: ");   /* the example's answer line ends the example */
    assert_non_null(body);
    char names[64][8];
    long vals[64];
    int n = 0;
    for (const char *q = strstr(body, "VAR "); q; q = strstr(q + 1, "VAR ")) {
        if (isupper((unsigned char)q[-1])) continue;   /* "VAR " at the end of a name such as ABVAR */
        char lhs[8], rhs[16];
        assert_int_equal(sscanf(q, "VAR %7s = %15[^.].", lhs, rhs), 2);
        long v = -1;
        if (isdigit((unsigned char)rhs[0])) v = strtol(rhs, NULL, 10);
        else
            for (int i = 0; i < n; i++)   /* an assignment refers to one written earlier */
                if (!strcmp(names[i], rhs)) v = vals[i];
        assert_true(v >= 0);
        strcpy(names[n], lhs);
        vals[n++] = v;
    }
    int k = 0, d = 0;
    for (int i = 0; i < n; i++) {
        bool in_chain = false, in_other = false;
        for (int j = 0; j < p->n; j++) {
            in_chain = in_chain || !strcmp(p->name[j], names[i]);
            in_other = in_other || !strcmp(p->other[j], names[i]);
        }
        if (vals[i] == p->value) {
            assert_true(in_chain);
            k++;
        } else {
            assert_true(vals[i] == p->other_value && in_other);   /* the distractor chain holds the other value */
            d++;
        }
    }
    assert_int_equal(d, p->n);
    assert_int_equal(n, 2 * p->n);
    return k;
}

static void test_vartrack(void **state) {
    (void)state;
    eval_vt a, b, c;
    assert_true(eval_vt_make(7, 4, &a));
    assert_true(eval_vt_make(7, 4, &b));
    assert_true(eval_vt_make(8, 4, &c));
    assert_memory_equal(&a, &b, sizeof a);
    assert_true(memcmp(&a, &c, sizeof a) != 0);
    assert_false(eval_vt_make(7, 0, &a));
    assert_false(eval_vt_make(7, EVAL_VT_MAX, &a));
    for (uint64_t seed = 1; seed <= 200; seed++) {
        eval_vt p;
        assert_true(eval_vt_make(seed, 4, &p));
        assert_int_equal(p.n, 5);
        assert_true(p.value >= 10000 && p.value <= 99999);
        assert_true(p.ex_value != p.value);
        for (int i = 0; i < p.n; i++) {   /* five capitals, all names distinct */
            assert_int_equal(strlen(p.name[i]), 5);
            for (int k = 0; k < 5; k++) assert_true(isupper((unsigned char)p.name[i][k]));
            for (int j = 0; j < i; j++) assert_string_not_equal(p.name[i], p.name[j]);
            for (int j = 0; j < 3; j++) assert_string_not_equal(p.name[i], p.ex_name[j]);
            for (int j = 0; j < p.n; j++) assert_string_not_equal(p.name[i], p.other[j]);
        }
        char *pr = eval_vt_prompt(&p, seed % 7 == 0 ? 0 : (int)(seed % 40));
        assert_int_equal(resolve_chain(pr, &p), p.n);   /* the answer key is what the text says */
        char q[160];
        snprintf(q, sizeof q, "in the text above, %d variables are assigned the value %d, they are:", p.n, p.value);
        assert_non_null(strstr(pr, q));
        assert_true(strlen(pr) > strlen(q) && !strcmp(pr + strlen(pr) - strlen(q), q));   /* the prompt ends there */
        free(pr);
    }
    /* scoring on crafted continuations */
    eval_vt p;
    eval_vt_make(3, 4, &p);
    char cont[256];
    snprintf(cont, sizeof cont, " %s, %s, %s, %s, %s.", p.name[0], p.name[1], p.name[2], p.name[3], p.name[4]);
    assert_int_equal(eval_vt_score(cont, &p), 5);
    assert_true(eval_vt_exact(cont, &p));
    snprintf(cont, sizeof cont, " %s, %s, %s, %s, %s, %s.", p.name[0], p.name[1], p.name[2], p.name[3], p.name[4],
             p.other[2]);
    assert_int_equal(eval_vt_score(cont, &p), 5);   /* recall is still full ... */
    assert_false(eval_vt_exact(cont, &p));           /* ... but a distractor name makes it wrong */
    snprintf(cont, sizeof cont, " %s %s and %s", p.name[4], p.name[0], p.name[0]);
    assert_int_equal(eval_vt_score(cont, &p), 2);   /* a repeated name counts once */
    assert_false(eval_vt_exact(cont, &p));
    snprintf(cont, sizeof cont, " %sX, Y%s, %s", p.name[0], p.name[1], p.ex_name[0]);
    assert_int_equal(eval_vt_score(cont, &p), 0);   /* not whole words; the example's names do not count */
    char lower[8];
    for (int i = 0; i < 6; i++) lower[i] = (char)tolower((unsigned char)p.name[2][i]);
    assert_int_equal(eval_vt_score(lower, &p), 0);
    assert_int_equal(eval_vt_score("", &p), 0);
}

/* The numbers of a text, in order. */
static int numbers(const char *s, long *out, int cap) {
    int n = 0;
    for (const char *q = s; *q && n < cap;) {
        if (isdigit((unsigned char)*q)) {
            char *end;
            out[n++] = strtol(q, &end, 10);
            q = end;
        } else {
            q++;
        }
    }
    return n;
}

/* The answer of a question, from its own numbers and wording. */
static long solve(const char *text) {
    long x[8];
    const int n = numbers(text, x, 8);
    if (strstr(text, "boxes with")) {
        assert_int_equal(n, 2);
        return x[0] * x[1];
    }
    if (strstr(text, "more and then gives")) {
        assert_int_equal(n, 3);
        return x[0] + x[1] - x[2];
    }
    if (strstr(text, "buys")) {
        assert_int_equal(n, 2);
        return x[0] + x[1];
    }
    assert_non_null(strstr(text, "gives"));
    assert_int_equal(n, 2);
    return x[0] - x[1];
}

static void test_arith(void **state) {
    (void)state;
    eval_arith a, b;
    eval_arith_make(99, &a);
    eval_arith_make(99, &b);
    assert_memory_equal(&a, &b, sizeof a);
    int kinds[4] = {0};
    for (uint64_t seed = 0; seed < 2000; seed++) {
        eval_arith p;
        eval_arith_make(seed, &p);
        kinds[p.kind]++;
        assert_int_equal(p.answer, solve(p.text));
        assert_true(p.answer > 0);   /* nobody gives away more than they have */
        long w = 0;
        assert_true(eval_arith_parse(p.work, &w));   /* the worked answer parses to the key */
        assert_int_equal(w, p.answer);
    }
    for (int k = 0; k < 4; k++) assert_true(kinds[k] > 300);

    eval_arith_make(5, &a);
    char *pr = eval_arith_prompt(&a, 8);
    assert_int_equal(count(pr, "Question: "), 9);
    assert_int_equal(count(pr, "Answer: "), 8);
    char tail[320];
    snprintf(tail, sizeof tail, "Question: %s\nAnswer:", a.text);
    assert_string_equal(pr + strlen(pr) - strlen(tail), tail);
    char *pr2 = eval_arith_prompt(&a, 8);
    assert_string_equal(pr, pr2);   /* the shots are fixed */
    /* every shot's answer is right, read back the way a continuation is */
    int shots = 0;
    for (const char *q = strstr(pr, "Question: "); q; q = strstr(q + 1, "Question: ")) {
        const char *ans = strstr(q, "\nAnswer: ");
        if (!ans) break;   /* the last question has no answer */
        char question[300];
        snprintf(question, sizeof question, "%.*s", (int)(ans - q - 10), q + 10);
        long v = 0;
        assert_true(eval_arith_parse(ans + 9, &v));
        assert_int_equal(v, solve(question));
        shots++;
    }
    assert_int_equal(shots, 8);
    free(pr);
    free(pr2);
}

static void test_arith_parse(void **state) {
    (void)state;
    long v = 0;
    assert_true(eval_arith_parse(" 3 + 4 = 7\n\nQuestion: 9", &v));
    assert_int_equal(v, 7);
    assert_true(eval_arith_parse(" 12", &v));
    assert_int_equal(v, 12);
    assert_true(eval_arith_parse(" 12 apples", &v));
    assert_int_equal(v, 12);
    assert_true(eval_arith_parse(" 5 - 8 = -3.", &v));
    assert_int_equal(v, -3);
    assert_true(eval_arith_parse(" 2 + 3 = 5 and 5 * 2 = 10", &v));   /* after the last '=' */
    assert_int_equal(v, 10);
    assert_true(eval_arith_parse("\n  42\n7", &v));   /* leading blank lines are skipped */
    assert_int_equal(v, 42);
    assert_true(eval_arith_parse(" 7-2 = 5", &v));
    assert_int_equal(v, 5);
    v = 99;
    assert_false(eval_arith_parse(" I do not know\n 5", &v));   /* only the first line counts */
    assert_false(eval_arith_parse(" 3 + 4 =\n7", &v));
    assert_false(eval_arith_parse("", &v));
    assert_int_equal(v, 99);
}

static void test_majority(void **state) {
    (void)state;
    long w = -1;
    const long a1[] = {5, 7, 7, 5};
    const bool ok4[] = {true, true, true, true};
    assert_int_equal(eval_majority(a1, ok4, 4, &w), 2);
    assert_int_equal(w, 5);   /* a tie goes to the answer seen first */
    const long a2[] = {7, 5, 5, 7};
    assert_int_equal(eval_majority(a2, ok4, 4, &w), 2);
    assert_int_equal(w, 7);
    const long a3[] = {3, 9, 9, 3, 9};
    const bool ok5[] = {true, false, false, true, true};   /* invalid answers do not vote */
    assert_int_equal(eval_majority(a3, ok5, 5, &w), 2);
    assert_int_equal(w, 3);
    const long a4[] = {1, 2, 3};
    const bool ok3[] = {true, true, true};
    assert_int_equal(eval_majority(a4, ok3, 3, &w), 1);
    assert_int_equal(w, 1);
    const bool none[] = {false, false, false};
    w = 77;
    assert_int_equal(eval_majority(a4, none, 3, &w), 0);
    assert_int_equal(w, 77);   /* no vote: the winner is left alone */
    assert_int_equal(eval_majority(a4, ok3, 0, &w), 0);
    const long a5[] = {4, 6, 6, 4, 6};
    assert_int_equal(eval_majority(a5, ok4, 4, &w), 2);   /* only the first 4 count */
    assert_int_equal(w, 4);
    const bool ok5b[] = {true, true, true, true, true};
    assert_int_equal(eval_majority(a5, ok5b, 5, &w), 3);
    assert_int_equal(w, 6);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rng),
        cmocka_unit_test(test_haystack),
        cmocka_unit_test(test_needle),
        cmocka_unit_test(test_vartrack),
        cmocka_unit_test(test_arith),
        cmocka_unit_test(test_arith_parse),
        cmocka_unit_test(test_majority),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
