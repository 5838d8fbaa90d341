/* common.c — error messages, logging, status names. */
#include "common.h"

#include <string.h>

static _Thread_local char g_last_error[1024];
static lethe_log_fn g_log_fn;
static void *g_log_user;
static lethe_log_level g_log_level = LETHE_LOG_WARN;

static const char *const k_status_names[] = {
    [LETHE_OK] = "ok",
    [LETHE_ERR_INVALID_ARG] = "invalid argument",
    [LETHE_ERR_OOM] = "out of memory",
    [LETHE_ERR_IO] = "input/output error",
    [LETHE_ERR_BAD_MAGIC] = "not a model file of the expected format (bad magic)",
    [LETHE_ERR_BAD_VERSION] = "unsupported file format version",
    [LETHE_ERR_TRUNCATED] = "file is truncated",
    [LETHE_ERR_CORRUPT] = "file is corrupt",
    [LETHE_ERR_UNSUPPORTED] = "unsupported feature",
    [LETHE_ERR_UNSUPPORTED_DTYPE] = "unsupported tensor data type",
    [LETHE_ERR_MISSING_TENSOR] = "missing tensor",
    [LETHE_ERR_SHAPE] = "tensor shape mismatch",
    [LETHE_ERR_CONTEXT_FULL] = "context or KV budget is full",
    [LETHE_ERR_BACKEND] = "backend error",
    [LETHE_ERR_TOKENIZER] = "tokenizer error",
    [LETHE_ERR_ABORTED] = "aborted",
    [LETHE_ERR_INTERNAL] = "internal error",
};
_Static_assert(LETHE_ARRAY_SIZE(k_status_names) == LETHE_STATUS_COUNT,
               "every lethe_status needs a name");

const char *lethe_strerror(lethe_status s) {
    if ((unsigned)s >= LETHE_STATUS_COUNT) return "unknown status";
    return k_status_names[s];
}

const char *lethe_last_error(void) { return g_last_error; }

void lethe_clear_error(void) { g_last_error[0] = 0; }

lethe_status lethe_fail(lethe_status s, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_last_error, sizeof g_last_error, fmt, ap);
    va_end(ap);
    lethe_log(LETHE_LOG_DEBUG, "%s: %s", lethe_strerror(s), g_last_error);
    return s;
}

void lethe_set_log(lethe_log_fn fn, void *user) {
    g_log_fn = fn;
    g_log_user = user;
}

void lethe_set_log_level(lethe_log_level level) { g_log_level = level; }

void lethe_log(lethe_log_level level, const char *fmt, ...) {
    if (level < g_log_level) return;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (g_log_fn) {
        g_log_fn(level, msg, g_log_user);
    } else {
        static const char *const lv[] = {"debug", "info", "warn", "error"};
        fprintf(stderr, "lethe %s: %s\n", lv[level], msg);
    }
}

void lethe_abort_bug(const char *file, int line, const char *expr) {
    /* An invariant broke: this is a bug in lethe, not bad input. Stop
     * before corrupting anything further. */
    fprintf(stderr, "lethe: internal error: %s:%d: assertion failed: %s\n", file, line, expr);
    abort();
}
