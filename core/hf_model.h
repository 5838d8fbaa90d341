/* hf_model.h — loading a Hugging Face model directory: config.json →
 * hyper-parameters, safetensors weights bound by their HF names, the
 * tokenizer from tokenizer.json (+ tokenizer_config.json), defaults from
 * generation_config.json. Supported model_type: llama (and mistral), qwen2,
 * qwen3; DMS keys (DESIGN.md §3.1 item 6) fill hp.dms. */
#ifndef LETHE_HF_MODEL_H
#define LETHE_HF_MODEL_H

#include "lethe.h"
#include "model.h"
#include "safetensors.h"

/* Sampling defaults from generation_config.json (absent fields: has_* false). */
typedef struct lethe_hf_generation {
    bool has_temperature, has_top_p, has_top_k, do_sample;
    float temperature, top_p;
    int32_t top_k;
} lethe_hf_generation;

/* What an HF model owns besides the lethe_model fields. */
typedef struct lethe_hf {
    lethe_safetensors *st;
    void **owned;            /* f32 copies of norms/biases, realigned tensors */
    size_t n_owned, cap_owned;
    char *config_text;       /* config.json, kept for lethe_model_meta_str     */
    lethe_hf_generation gen;
} lethe_hf;

/* config.json text → hyper-parameters (n_vocab from vocab_size). Every bad
 * value is a status and a message; tensors are not looked at. */
lethe_status lethe_hf_parse_config(const char *json, size_t len, lethe_hparams *hp);

/* Is `path` a directory (an HF model) rather than a file? */
bool lethe_hf_is_dir(const char *path);

/* Load everything into m (m->hf set, m->gguf NULL). */
lethe_status lethe_hf_load(lethe_model *m, const char *dir);
void lethe_hf_free(lethe_hf *hf);
/* Read dir/file whole (NUL-terminated, at most 1 GiB); *text NULL when the
 * file does not exist and is not required. */
lethe_status lethe_hf_read_text(const char *dir, const char *file, char **text, size_t *len, bool required);
/* A config.json value as text (top-level scalars and "generation.*"). */
int lethe_hf_meta_str(const lethe_hf *hf, const char *key, char *buf, size_t buf_size);

#endif
