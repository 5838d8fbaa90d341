#!/usr/bin/env bash
# tools/demo.sh — build lethe, fetch the default model, and chat with it.
#
#   tools/demo.sh                          interactive chat
#   tools/demo.sh --prompt "Hello there"   answer once and exit
#   tools/demo.sh --dms [...]              the same model with its DMS adapter (CR 4,
#                                          models/dms/): the KV cache evicts as it goes
#
# Any other arguments go to `lethe chat`; -m defaults to SmolLM2-135M-Instruct.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BUILD_DIR="${LETHE_BUILD_DIR:-build}"

bash tools/setup.sh
MODEL="$(bash tools/fetch-model.sh)"

# --dms: the retrofitted adapter shipped in models/dms/ (tools/retrofit)
args=()
for arg in "$@"; do
    if [ "$arg" = "--dms" ]; then
        args+=(--dms-adapter "$ROOT/models/dms/SmolLM2-135M-Instruct.dms-cr4.safetensors" --kv-stats)
    else
        args+=("$arg")
    fi
done
set -- ${args[@]+"${args[@]}"}

# Pass the default model unless the caller chose one.
for arg in "$@"; do
    case "$arg" in -m|--model|-m=*|--model=*) exec "$BUILD_DIR/bin/lethe" chat "$@" ;; esac
done
exec "$BUILD_DIR/bin/lethe" chat -m "$MODEL" "$@"
