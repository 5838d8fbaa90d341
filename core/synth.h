/* synth.h — synthetic models: a complete, valid GGUF (hyper-parameters,
 * random weights of a chosen dtype, a byte-level BPE vocabulary) of any
 * llama-family shape. Tests use tiny ones; GPU runs, which cannot download
 * real models, make full-size ones on the spot. */
#ifndef LETHE_SYNTH_H
#define LETHE_SYNTH_H

#include "dtype.h"
#include "lethe.h"

typedef struct lethe_synth_params {
    const char *arch;            /* "llama" (default), "qwen2", "qwen3"           */
    int32_t n_layer, n_embd, n_head, n_head_kv, n_ff;
    int32_t n_vocab;             /* >= 259: 256 byte tokens + 3 specials + merges  */
    int32_t n_ctx_train;
    lethe_dtype wtype;           /* matrices (f32, f16, q8_0, q4_0, q4_1, ...)     */
    lethe_dtype embd_type;       /* token embedding                                */
    bool tied_output;            /* no output.weight                               */
    float rope_base;
    uint64_t seed;
    /* DMS (0: none, 1: neuron, 2: adapter), written as <arch>.dms.* keys;
     * the adapter gets random blk.N.dms_alpha[_norm] tensors. */
    int32_t dms_variant;
    int32_t dms_window;
    float dms_alpha_scale, dms_alpha_offset;
    bool dms_per_layer;
} lethe_synth_params;

lethe_synth_params lethe_synth_default_params(void);   /* a tiny llama: 2 layers, E 64 */
lethe_status lethe_synth_write(const char *path, lethe_synth_params p);

#endif
