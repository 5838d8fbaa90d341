/* fuzz_tokenizer_json.c — libFuzzer target (not built by default): tools/fuzz.sh builds
 * and runs it; the body is lethe_fuzz_tokenizer_json() in fuzz_targets.h. */
#include "fuzz_targets.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) { return lethe_fuzz_tokenizer_json(data, size); }
