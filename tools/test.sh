#!/usr/bin/env bash
# tools/test.sh — the whole check, as CI runs it: install + build, fetch the
# default model and llama.cpp's tokenizer vectors, run every test.
#
#   tools/test.sh [CTEST_ARGS...]     e.g. tools/test.sh -R tokenizer -V
#
# The llama.cpp *source* is fetched (its models/ggml-vocab-* files are test
# vectors) but the peer is not built: that takes minutes and the committed
# fixtures in tests/data/ already hold its outputs.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BUILD_DIR="${LETHE_BUILD_DIR:-build}"

bash tools/setup.sh
MODEL="$(bash tools/fetch-model.sh)"
LLAMA_CPP="$(bash tools/peer/fetch-llama-cpp.sh)"
echo "test.sh: model $MODEL, llama.cpp source $LLAMA_CPP" >&2

# --no-tests=error: a build that lost its tests must fail, not pass silently.
ctest --test-dir "$BUILD_DIR" --output-on-failure --no-tests=error --timeout 900 \
    -j"${LETHE_TEST_JOBS:-2}" "$@"
