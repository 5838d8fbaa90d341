#!/usr/bin/env bash
# tools/demo.sh — build lethe, fetch the default model, and chat with it.
#
#   tools/demo.sh                          interactive chat
#   tools/demo.sh --prompt "Hello there"   answer once and exit
#
# Any arguments go to `lethe chat`; -m defaults to SmolLM2-135M-Instruct.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BUILD_DIR="${LETHE_BUILD_DIR:-build}"

bash tools/setup.sh
MODEL="$(bash tools/fetch-model.sh)"

# Pass the default model unless the caller chose one.
for arg in "$@"; do
    case "$arg" in -m|--model|-m=*|--model=*) exec "$BUILD_DIR/bin/lethe" chat "$@" ;; esac
done
exec "$BUILD_DIR/bin/lethe" chat -m "$MODEL" "$@"
