/* cli_kv.c — KV-cache helpers shared by the subcommands: chunked prompt
 * feeding and the --kv-stats report. */
#include "cli.h"

#include <stdlib.h>

lethe_status cli_decode_chunks(lethe_context *ctx, const lethe_token *toks, int32_t n, int32_t seq,
                               int32_t n_batch) {
    if (n_batch < 1) n_batch = 512;
    int32_t *ids = malloc((size_t)(n < n_batch ? n : n_batch) * sizeof *ids);
    if (!ids) return LETHE_ERR_OOM;
    lethe_status st = LETHE_OK;
    for (int32_t i = 0; i < n && st == LETHE_OK; i += n_batch) {
        const int32_t m = n - i < n_batch ? n - i : n_batch;
        for (int32_t j = 0; j < m; j++) ids[j] = seq;
        lethe_batch b = lethe_batch_one(toks + i, m);
        b.seq_id = ids;
        st = lethe_decode(ctx, b);   /* logits: the last token of each call */
    }
    free(ids);
    return st;
}

void cli_print_kv_stats(lethe_context *ctx, const lethe_model *m, bool per_head) {
    const lethe_kv_stats ks = lethe_get_kv_stats(ctx);
    const lethe_model_info mi = lethe_model_get_info(m);
    fprintf(stderr, "lethe: KV policy %s", lethe_kv_policy_name(ks.policy));
    if (ks.policy == LETHE_KV_POLICY_DMS) fprintf(stderr, " (window %d)", ks.dms_window);
    fprintf(stderr, ": %lld tokens seen, %.1f live per head (compression %.2fx), %llu evicted\n",
            (long long)ks.tokens_seen, ks.mean_live_slots, ks.compression_ratio, (unsigned long long)ks.evicted);
    fprintf(stderr, "lethe: KV bytes resident %zu (peak %zu, pool %zu), reads %llu\n", ks.bytes_resident,
            ks.bytes_peak, ks.bytes_capacity, (unsigned long long)ks.reads);
    if (!per_head) return;
    for (int32_t s = 0; lethe_seq_len(ctx, s) >= 0; s++) {
        if (lethe_seq_len(ctx, s) == 0) continue;
        fprintf(stderr, "lethe: seq %d: %d tokens; live per layer (heads):\n", s, lethe_seq_len(ctx, s));
        for (int32_t l = 0; l < mi.n_layer; l++) {
            fprintf(stderr, "lethe:   layer %2d:", l);
            for (int32_t h = 0; h < mi.n_head_kv; h++) fprintf(stderr, " %d", lethe_kv_head_len(ctx, s, l, h));
            fputc('\n', stderr);
        }
    }
}
