#!/usr/bin/env bash
# tools/peer/build-llama-cpp.sh — build the llama.cpp peer (CPU only) and lethe-peer-dump.
#
# Builds libllama and the tools we compare against (llama-cli, llama-bench,
# llama-perplexity, llama-tokenize, llama-simple) from $LETHE_CACHE/llama.cpp
# (fetched by fetch-llama-cpp.sh) into $LETHE_CACHE/llama.cpp-build, then our
# own tools/peer/lethe-peer-dump.c against the static libllama.
# Takes a few minutes on 2 cores the first time; incremental afterwards.
#
#   tools/peer/build-llama-cpp.sh [TARGET...]   default: all the tools above
#
# Environment: LETHE_CACHE, LETHE_JOBS (default: nproc).
# stdout: the build's bin/ folder only.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${LETHE_CACHE:-$HOME/.cache/lethe}"
SRC="$("$HERE/fetch-llama-cpp.sh")"
BUILD="$CACHE/llama.cpp-build"
JOBS="${LETHE_JOBS:-$(nproc)}"

log() { echo "build-llama-cpp.sh: $*" >&2; }

for tool in cmake ninja cc c++; do
    command -v "$tool" >/dev/null || { log "ERROR: $tool missing (run tools/setup.sh --deps-only)"; exit 1; }
done

# The server library is needed only because llama-cli is built on it; its web
# UI is not fetched (no network at build time, and we never serve).
if [[ ! -f "$BUILD/build.ninja" ]]; then
    log "configuring $SRC -> $BUILD"
    cmake -S "$SRC" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
        -DLLAMA_CURL=OFF -DGGML_NATIVE=ON -DBUILD_SHARED_LIBS=OFF \
        -DGGML_OPENMP=ON -DGGML_BLAS=OFF -DGGML_VULKAN=OFF -DGGML_CUDA=OFF \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_EXAMPLES=ON \
        -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
        -DLLAMA_OPENSSL=OFF >&2
fi

if (($#)); then
    targets=("$@")
else
    # llama-cli last: it drags in the server library, the longest compile.
    targets=(llama llama-tokenize llama-simple llama-bench llama-perplexity llama-cli)
fi
log "building ${targets[*]} (-j$JOBS)"
ninja -C "$BUILD" -j "$JOBS" "${targets[@]}" >&2

# ---- lethe-peer-dump: our C program against the static libllama + ggml
lib() {
    local f
    f="$(find "$BUILD" -name "$1" -type f -print -quit)"
    [[ -n "$f" ]] || { log "ERROR: $1 not found under $BUILD (was libllama built?)"; exit 1; }
    echo "$f"
}
LIBS=("$(lib libllama.a)" "$(lib libggml.a)" "$(lib libggml-cpu.a)" "$(lib libggml-base.a)")
OUT="$BUILD/bin/lethe-peer-dump"
mkdir -p "$BUILD/bin"
if [[ ! -x "$OUT" || "$HERE/lethe-peer-dump.c" -nt "$OUT" || "${LIBS[0]}" -nt "$OUT" ]]; then
    log "building $OUT"
    cc -std=c11 -O2 -Wall -Wextra -I"$SRC/include" -I"$SRC/ggml/include" \
        -c "$HERE/lethe-peer-dump.c" -o "$BUILD/lethe-peer-dump.o"
    # libllama and ggml are C++ (libstdc++) and the CPU backend uses OpenMP.
    c++ -o "$OUT" "$BUILD/lethe-peer-dump.o" "${LIBS[@]}" -fopenmp -lpthread -lm -ldl
fi
echo "$BUILD/bin"
