/* fuzz_targets.h — the bodies of the libFuzzer targets for the Hugging Face
 * parsers, shared by the fuzzers (tests/fuzz/fuzz_*.c, built by tools/fuzz.sh)
 * and by tests/test_fuzz_replay.c, which runs every input kept under
 * tests/fuzz/corpus/ (seeds and fixed crashes) in the normal test suite.
 *
 * Contract checked: any input gives a status (never a crash, an over-read or
 * an unbounded allocation), a failure sets a non-OK status, and what parses
 * is consistent (every tensor found by name, its bytes inside the buffer). */
#ifndef LETHE_FUZZ_TARGETS_H
#define LETHE_FUZZ_TARGETS_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "hf_model.h"
#include "hf_tokenizer.h"
#include "safetensors.h"

static inline int lethe_fuzz_safetensors(const uint8_t *data, size_t size) {
    lethe_status s;
    lethe_safetensors *st = lethe_safetensors_parse(data, size, &s);
    if (!st) {
        if (s == LETHE_OK) abort();
        return 0;
    }
    volatile uint8_t sink = 0;
    for (size_t i = 0; i < st->n_tensors; i++) {
        const lethe_st_tensor *t = &st->tensors[i];
        if (lethe_safetensors_find(st, t->name) != t) abort();
        const uint8_t *p = t->data;
        if (p < data || p + t->size > data + size) abort();
        if (t->size) sink ^= p[0] ^ p[t->size - 1];
    }
    (void)sink;
    lethe_safetensors_close(st);
    return 0;
}

static inline int lethe_fuzz_hf_config(const uint8_t *data, size_t size) {
    lethe_hparams hp;
    lethe_status s = lethe_hf_parse_config((const char *)data, size, &hp);
    if (s == LETHE_OK && (hp.n_layer < 1 || hp.head_dim < 2 || hp.n_head % hp.n_head_kv)) abort();
    return 0;
}

static inline int lethe_fuzz_tokenizer_json(const uint8_t *data, size_t size) {
    lethe_hf_tokenizer_files f = {(const char *)data, size, NULL, 0, NULL, 0, NULL, 0};
    lethe_status s;
    lethe_tokenizer *t = lethe_tokenizer_from_hf(&f, NULL, &s);
    if (!t) {
        if (s == LETHE_OK) abort();
        return 0;
    }
    static const char *const texts[] = {"Hello world!", " \n\t 123 \xc3\xa9\xe2\x96\x81 <s>", "\xff\xfe", ""};
    lethe_token out[256];
    char piece[64];
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        int32_t n = lethe_tokenizer_encode(t, texts[i], strlen(texts[i]), out, 256, true, true);
        for (int32_t j = 0; j < n && j < 256; j++) {
            if (out[j] < 0 || out[j] >= lethe_tokenizer_n_vocab(t)) abort();
            lethe_tokenizer_piece(t, out[j], piece, sizeof piece, true);
        }
    }
    lethe_tokenizer_free(t);
    return 0;
}

#endif
