/* engine.h — library-internal view of a context, for tests and tools that
 * need to look inside (the public API is include/lethe.h). */
#ifndef LETHE_ENGINE_H
#define LETHE_ENGINE_H

#include "kv_cache.h"
#include "lethe.h"

/* The context's KV cache (read-only use: stats, per-slot flags in tests). */
const lethe_kv_cache *lethe_context_kv(const lethe_context *ctx);
/* The same, writable (state loading), and the context's model. */
lethe_kv_cache *lethe_context_kv_mut(lethe_context *ctx);
const struct lethe_model *lethe_context_model(const lethe_context *ctx);
/* The context's GPU backend, NULL when it runs on the CPU alone (tests). */
struct lethe_backend *lethe_context_gpu(const lethe_context *ctx);

#endif
