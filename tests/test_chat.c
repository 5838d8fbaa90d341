/* test_chat.c — chat template detection, exact rendering, and the default
 * system message extracted from the real SmolLM2 template. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "gguf.h"
#include "testutil.h"
#include "tokenizer.h"

static const lethe_chat_message k_msgs[] = {
    {"system", "Be brief."},
    {"user", "Hi"},
    {"assistant", "Hello!"},
    {"user", "2+2?"},
};

static void test_detect(void **state) {
    (void)state;
    assert_int_equal(lethe_chat_detect(NULL), LETHE_CHAT_CHATML);
    assert_int_equal(lethe_chat_detect("{{'<|im_start|>' + message['role']}}"), LETHE_CHAT_CHATML);
    assert_int_equal(lethe_chat_detect("{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>' }}"),
                     LETHE_CHAT_LLAMA3);
    assert_int_equal(lethe_chat_detect("something else entirely"), LETHE_CHAT_CHATML);
}

static void test_render_chatml(void **state) {
    (void)state;
    char buf[1024];
    int32_t n = lethe_chat_render(LETHE_CHAT_CHATML, NULL, NULL, k_msgs, 4, true, buf, sizeof buf);
    const char *want =
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n"
        "<|im_start|>user\n2+2?<|im_end|>\n"
        "<|im_start|>assistant\n";
    assert_int_equal(n, (int32_t)strlen(want));
    assert_string_equal(buf, want);

    /* no generation prompt */
    n = lethe_chat_render(LETHE_CHAT_CHATML, NULL, NULL, k_msgs + 1, 1, false, buf, sizeof buf);
    assert_string_equal(buf, "<|im_start|>user\nHi<|im_end|>\n");
    assert_int_equal(n, (int32_t)strlen(buf));

    /* default system inserted only when the first message is not a system one */
    n = lethe_chat_render(LETHE_CHAT_CHATML, "You are X.", NULL, k_msgs + 1, 1, true, buf, sizeof buf);
    assert_string_equal(buf, "<|im_start|>system\nYou are X.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                             "<|im_start|>assistant\n");
    n = lethe_chat_render(LETHE_CHAT_CHATML, "You are X.", NULL, k_msgs, 2, false, buf, sizeof buf);
    assert_string_equal(buf, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n");
    /* empty conversation: the template's loop never runs */
    n = lethe_chat_render(LETHE_CHAT_CHATML, "You are X.", NULL, NULL, 0, true, buf, sizeof buf);
    assert_string_equal(buf, "<|im_start|>assistant\n");
    assert_int_equal(n, 22);
}

static void test_render_llama3(void **state) {
    (void)state;
    char buf[1024];
    int32_t n = lethe_chat_render(LETHE_CHAT_LLAMA3, NULL, "<|begin_of_text|>", k_msgs, 2, true, buf, sizeof buf);
    const char *want =
        "<|begin_of_text|>"
        "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n";
    assert_string_equal(buf, want);
    assert_int_equal(n, (int32_t)strlen(want));
    n = lethe_chat_render(LETHE_CHAT_LLAMA3, NULL, NULL, k_msgs + 1, 1, false, buf, sizeof buf);
    assert_string_equal(buf, "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>");
}

static void test_buffer_too_small(void **state) {
    (void)state;
    char full[1024];
    int32_t n = lethe_chat_render(LETHE_CHAT_CHATML, NULL, NULL, k_msgs, 4, true, full, sizeof full);
    assert_true(n > 20);
    /* size query */
    assert_int_equal(lethe_chat_render(LETHE_CHAT_CHATML, NULL, NULL, k_msgs, 4, true, NULL, 0), n);
    /* truncated, NUL-terminated prefix, same length returned */
    char small[16];
    memset(small, 'X', sizeof small);
    assert_int_equal(lethe_chat_render(LETHE_CHAT_CHATML, NULL, NULL, k_msgs, 4, true, small, sizeof small), n);
    assert_int_equal(strlen(small), sizeof small - 1);
    assert_memory_equal(small, full, sizeof small - 1);
    /* exactly n bytes is still too small (no room for the NUL) */
    char *exact = malloc((size_t)n);
    assert_int_equal(lethe_chat_render(LETHE_CHAT_CHATML, NULL, NULL, k_msgs, 4, true, exact, n), n);
    assert_int_equal(strlen(exact), (size_t)n - 1);
    free(exact);
    /* invalid input */
    lethe_chat_message bad[] = {{"user", NULL}};
    assert_true(lethe_chat_render(LETHE_CHAT_CHATML, NULL, NULL, bad, 1, true, full, sizeof full) < 0);
    assert_true(lethe_chat_render(LETHE_CHAT_CHATML, NULL, NULL, k_msgs, 4, true, full, -1) < 0);
    assert_true(lethe_chat_render(LETHE_CHAT_CHATML, NULL, NULL, k_msgs, 4, true, NULL, 10) < 0);
}

static void test_default_system_smollm(void **state) {
    (void)state;
    lethe_status st;
    lethe_gguf *g = lethe_gguf_open(tu_model_path(), true, &st);
    assert_non_null(g);
    const lethe_gguf_kv *kv = lethe_gguf_find(g, "tokenizer.chat_template");
    assert_non_null(kv);
    assert_int_equal(kv->type, LETHE_GGUF_STRING);
    char *tmpl = malloc(kv->v.s.len + 1);
    memcpy(tmpl, kv->v.s.ptr, kv->v.s.len);
    tmpl[kv->v.s.len] = 0;
    assert_int_equal(lethe_chat_detect(tmpl), LETHE_CHAT_CHATML);
    char *sys = lethe_chat_default_system(tmpl);
    assert_non_null(sys);
    assert_string_equal(sys, "You are a helpful AI assistant named SmolLM, trained by Hugging Face");
    free(sys);
    free(tmpl);
    lethe_gguf_close(g);
}

static void test_default_system_variants(void **state) {
    (void)state;
    assert_null(lethe_chat_default_system(NULL));
    assert_null(lethe_chat_default_system("{{'<|im_start|>' + message['role'] + '\\n'}}"));
    /* a system turn filled from the messages is code, not a default */
    assert_null(lethe_chat_default_system(
        "{{ '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"));
    /* Qwen2.5 style: the dynamic branch first, then the hard-coded one, with escaped newlines */
    char *s = lethe_chat_default_system(
        "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + "
        "'<|im_end|>\\n' }}{%- else %}{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud.\\n"
        "Be helpful.<|im_end|>\\n' }}{%- endif %}");
    assert_non_null(s);
    assert_string_equal(s, "You are Qwen, created by Alibaba Cloud.\nBe helpful.");
    free(s);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_detect),
        cmocka_unit_test(test_render_chatml),
        cmocka_unit_test(test_render_llama3),
        cmocka_unit_test(test_buffer_too_small),
        cmocka_unit_test(test_default_system_smollm),
        cmocka_unit_test(test_default_system_variants),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
