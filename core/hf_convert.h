/* hf_convert.h — a Hugging Face model directory written as a GGUF file that
 * lethe and llama.cpp both load (`lethe convert`).
 *
 * Metadata and tensor names are llama.cpp's (convert_hf_to_gguf.py): the
 * llama architecture's Q/K rows are permuted for its adjacent-pair ("NORM")
 * RoPE, Llama 3 rope scaling becomes rope_freqs.weight, the tokenizer keys
 * come from hf_tokenizer.c. DMS hyper-parameters go to <arch>.dms.* and the
 * adapter tensors to blk.N.dms_alpha{,_norm}.weight. */
#ifndef LETHE_HF_CONVERT_H
#define LETHE_HF_CONVERT_H

#include "dtype.h"
#include "lethe.h"

/* `type`: storage of the 2-D weights (f32, f16, bf16, q8_0, q4_0); a matrix
 * whose rows do not fit the block size falls back to f16. Norms and biases
 * stay f32. */
lethe_status lethe_hf_convert(const char *dir, const char *out_path, lethe_dtype type);

#endif
