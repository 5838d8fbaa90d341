/* fuzz_gguf.c — libFuzzer target for the GGUF reader (not built by default).
 * Build and run from the repository root:
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Iinclude -Icore tests/fuzz/fuzz_gguf.c core/gguf.c core/gguf_write.c core/dtype.c core/common.c -lm -o fuzz_gguf && ./fuzz_gguf -max_len=65536
 *
 * Any input must give a status, never a crash, over-read or huge allocation.
 * A file that parses is also rendered, looked up, and re-written with the
 * writer, and the re-written bytes must parse again. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"
#include "gguf_write.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    lethe_status s;
    lethe_gguf *g = lethe_gguf_parse(data, size, &s);
    if (!g) {
        if (s == LETHE_OK) abort();
        return 0;
    }
    char buf[256];
    for (uint64_t i = 0; i < g->n_kv; i++) {
        lethe_gguf_kv_to_string(&g->kv[i], buf, sizeof buf);
        if (lethe_gguf_find(g, g->kv[i].key) != &g->kv[i]) abort();
    }
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        if (lethe_gguf_find_tensor(g, g->tensors[i].name) != &g->tensors[i]) abort();
    }

    /* Re-write: every kv (nested arrays too) and tensor must be accepted,
     * except a general.alignment of a type llama.cpp would not accept. */
    lethe_gguf_writer *w = lethe_gguf_writer_new();
    bool ok = w != NULL;
    for (uint64_t i = 0; ok && i < g->n_kv; i++) ok = lethe_gguf_writer_add_kv(w, &g->kv[i]) == LETHE_OK;
    for (uint64_t i = 0; ok && i < g->n_tensors; i++) {
        const lethe_gguf_tensor *t = &g->tensors[i];
        ok = lethe_gguf_writer_add_tensor(w, t->name, t->type, t->n_dims, t->ne, t->data, false) == LETHE_OK;
    }
    void *out = NULL;
    size_t out_size = 0;
    if (ok && lethe_gguf_writer_size(w) < (64u << 20) &&
        lethe_gguf_writer_write_mem(w, &out, &out_size) == LETHE_OK) {
        lethe_gguf *g2 = lethe_gguf_parse(out, out_size, &s);
        if (!g2 || g2->n_kv != g->n_kv || g2->n_tensors != g->n_tensors) abort();
        lethe_gguf_close(g2);
        free(out);
    }
    lethe_gguf_writer_free(w);
    lethe_gguf_close(g);
    return 0;
}
