/* common.h — internal helpers shared by every part of the library:
 * error reporting (thread-local message + status), logging, asserts. */
#ifndef LETHE_COMMON_H
#define LETHE_COMMON_H

#include "lethe.h"
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#if defined(__GNUC__)
#  define LETHE_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#  define LETHE_PRINTF(a, b)
#endif

/* Record a failure: sets the thread-local message read by lethe_last_error()
 * and returns `s`, so call sites read `return lethe_fail(LETHE_ERR_IO, "...")`. */
lethe_status lethe_fail(lethe_status s, const char *fmt, ...) LETHE_PRINTF(2, 3);
void lethe_clear_error(void);

void lethe_log(lethe_log_level level, const char *fmt, ...) LETHE_PRINTF(2, 3);
#define LETHE_LOGD(...) lethe_log(LETHE_LOG_DEBUG, __VA_ARGS__)
#define LETHE_LOGI(...) lethe_log(LETHE_LOG_INFO, __VA_ARGS__)
#define LETHE_LOGW(...) lethe_log(LETHE_LOG_WARN, __VA_ARGS__)
#define LETHE_LOGE(...) lethe_log(LETHE_LOG_ERROR, __VA_ARGS__)

/* Always-on invariant check (a bug if it fires, never bad input). */
void lethe_abort_bug(const char *file, int line, const char *expr);
#define LETHE_ASSERT(x) do { if (!(x)) lethe_abort_bug(__FILE__, __LINE__, #x); } while (0)

#define LETHE_MIN(a, b) ((a) < (b) ? (a) : (b))
#define LETHE_MAX(a, b) ((a) > (b) ? (a) : (b))
#define LETHE_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

#endif
