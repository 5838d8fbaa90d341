#!/usr/bin/env bash
# tools/peer/trim-llama-cpp.sh [DEST] — a copy of llama.cpp's source small
# enough to travel to a GPU machine without network (a few tens of MB, under
# the device tool's 64 MiB), holding what llama-bench's CUDA build needs:
# the CMake project, include/, src/, common/, vendor/, ggml/ without the other
# GPU backends, and tools/llama-bench (tools/CMakeLists.txt rewritten to build
# only it). No models, docs, tests or examples.
#
# DEST defaults to .peer/llama.cpp in the repository, which .git/info/exclude
# should ignore; name .peer in the device call's `carry`. tools/gpu-check.sh
# builds and runs it (its "peer" stage).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DEST="${1:-$ROOT/.peer/llama.cpp}"
SRC="$("$ROOT/tools/peer/fetch-llama-cpp.sh")"
SRC="$(cd "$SRC" && pwd -P)"
rm -rf "$DEST"
mkdir -p "$DEST/tools"
for d in CMakeLists.txt cmake include src common vendor ggml tools/llama-bench LICENSE; do
    [[ -e "$SRC/$d" ]] && cp -a "$SRC/$d" "$DEST/$d"
done
# other backends' sources are not needed for GGML_CUDA=ON
for b in "$DEST"/ggml/src/ggml-*/; do
    case "$(basename "$b")" in
        ggml-cpu | ggml-cuda | ggml-blas) ;;
        *) rm -rf "$b" ;;
    esac
done
# ggml-cuda's HIP/MUSA vendor headers and pre-generated instances stay (the CUDA build uses the instances)
printf '# trimmed by lethe tools/peer/trim-llama-cpp.sh: llama-bench only\nadd_subdirectory(llama-bench)\n' \
    > "$DEST/tools/CMakeLists.txt"
echo "trim-llama-cpp.sh: $(du -sh "$DEST" | cut -f1) in $DEST" >&2
echo "$DEST"
