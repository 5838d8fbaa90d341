#!/usr/bin/env bash
# tools/fuzz.sh — build the libFuzzer targets with clang (ASan + UBSan) and run
# each for a bounded time on its seed corpus. Not part of CI's default path.
#
#   tools/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     default 60 s; targets:
#       gguf safetensors hf_config tokenizer_json
#
# Needs clang (apt-get install clang). Seeds: tests/fuzz/corpus/TARGET/ (read
# only); new inputs go to build-fuzz/corpus/TARGET/. A crash leaves
# build-fuzz/crash-* and fails the run: fix it, then copy the input into
# tests/fuzz/corpus/TARGET/ so tests/test_fuzz_replay.c replays it forever.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
SECS="${1:-60}"
shift || true
TARGETS=("$@")
((${#TARGETS[@]})) || TARGETS=(gguf safetensors hf_config tokenizer_json)
CC="${CLANG:-clang}"
command -v "$CC" >/dev/null || { echo "fuzz.sh: clang not found (apt-get install clang)" >&2; exit 1; }
OUT=build-fuzz
mkdir -p "$OUT"
FLAGS=(-g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -D_GNU_SOURCE -Iinclude -Icore)
HF_SRC=(core/common.c core/dtype.c core/gguf.c core/gguf_write.c core/safetensors.c core/hf_model.c
        core/hf_tokenizer.c core/tokenizer.c core/tokenizer_pre.c core/tokenizer_spm.c core/chat.c
        core/tensor.c)
LIBS=($(pkg-config --libs jansson libpcre2-8 libutf8proc) -lm)
for t in "${TARGETS[@]}"; do
    case "$t" in
        gguf) srcs=(core/gguf.c core/gguf_write.c core/dtype.c core/common.c); max=65536 ;;
        safetensors) srcs=("${HF_SRC[@]}"); max=65536 ;;
        hf_config) srcs=("${HF_SRC[@]}"); max=16384 ;;
        tokenizer_json) srcs=("${HF_SRC[@]}"); max=131072 ;;
        *) echo "fuzz.sh: unknown target '$t'" >&2; exit 2 ;;
    esac
    "$CC" "${FLAGS[@]}" "tests/fuzz/fuzz_$t.c" "${srcs[@]}" "${LIBS[@]}" -o "$OUT/fuzz_$t"
    mkdir -p "$OUT/corpus/$t"
    seeds=()
    [ -d "tests/fuzz/corpus/$t" ] && seeds=("tests/fuzz/corpus/$t")
    echo "fuzz.sh: $t for ${SECS}s" >&2
    # -rss_limit_mb: a hostile header may ask for much; the parsers must refuse, not allocate
    (cd "$OUT" && ASAN_OPTIONS=detect_leaks=1 "./fuzz_$t" -max_total_time="$SECS" -max_len="$max" \
        -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 "corpus/$t" "${seeds[@]/#/$ROOT/}" 2>&1 |
        grep -E "stat::number_of_executed_units|Done|ERROR|SUMMARY|crash-|timeout-|oom-" || true)
    if compgen -G "$OUT/crash-*" >/dev/null || compgen -G "$OUT/timeout-*" >/dev/null ||
       compgen -G "$OUT/oom-*" >/dev/null; then
        echo "fuzz.sh: $t found a failing input (see $OUT/)" >&2
        exit 1
    fi
done
