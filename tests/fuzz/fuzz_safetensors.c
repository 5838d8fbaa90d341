/* fuzz_safetensors.c — libFuzzer target (not built by default): tools/fuzz.sh builds
 * and runs it; the body is lethe_fuzz_safetensors() in fuzz_targets.h. */
#include "fuzz_targets.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) { return lethe_fuzz_safetensors(data, size); }
