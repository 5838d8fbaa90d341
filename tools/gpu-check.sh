#!/usr/bin/env bash
# tools/gpu-check.sh OUTDIR — everything that needs an NVIDIA GPU, in one
# command on a machine with the CUDA toolkit and a driver (no network: the
# models it needs it makes itself with `lethe synth`).
#
# Stages, in order (LETHE_GPU_STAGES picks a subset, e.g. "build test"):
#   probe     nvidia-smi, nvcc; stops with exit 2 and a clear line when either is missing
#   build     lethe with CUDA (and Vulkan when its SDK is there) in $LETHE_GPU_BUILD (build-gpu)
#   test      ctest: the backend-op consistency test (CUDA, and Vulkan on the NVIDIA
#             driver), test_cuda_e2e, test_cuda_host (LETHE_GPU_CTEST=all: the whole suite)
#   sanitize  compute-sanitizer memcheck and racecheck over test_backend_ops and test_cuda_e2e
#   synth     full-size synthetic models ($LETHE_GPU_MODELS, default "llama3-8b:q4_0
#             llama3-8b:f16") into $LETHE_GPU_WORK (default /tmp/lethe-gpu), reused if present
#   bench     lethe bench on CUDA, Vulkan and the CPU: pp512/tg128, then tg at depths
#             ($LETHE_GPU_DEPTHS, default 0,4096) with KV policy none and DMS forced to
#             ~8x (--dms-force-rate 0.9, window 256)
#   peer      llama.cpp's CUDA build on the same GGUFs, when its trimmed source is at
#             $LETHE_PEER_SRC (default .peer/llama.cpp; make it here with
#             tools/peer/trim-llama-cpp.sh and carry it)
# OUTDIR gets at most 8 files: results.md (the summary: GPU, commit, tests, tables),
# gpu.txt, build.log, test.log, sanitize.log, bench.log, bench.jsonl (every bench row, for
# tools/bench_report.py tables/plot), peer.log.
#
# LETHE_GPU_BACKENDS / LETHE_GPU_DEPTH_BACKEND choose the benchmarked backends
# (the script's non-GPU parts are tested on a CPU machine with "cpu" and a tiny model).
# Every stage runs under `timeout` ($LETHE_GPU_STAGE_TIMEOUT s, default 540): a hang
# fails the stage, never the call. Exit status: 0 all stages passed, 1 a stage failed
# (results.md says which), 2 no GPU / no toolkit / bad usage.
# On the device machine each call may run at most 10 minutes: on a cold machine
# run "probe build test" first, then "sanitize synth bench", then "peer".
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-}"
if [[ -z "$OUT" || "$OUT" == -* ]]; then
    echo "usage: tools/gpu-check.sh OUTDIR   (stages: LETHE_GPU_STAGES='probe build test sanitize synth bench peer')" >&2
    exit 2
fi
mkdir -p "$OUT" || exit 2
OUT="$(cd "$OUT" && pwd)"
STAGES="${LETHE_GPU_STAGES:-probe build test sanitize synth bench peer}"
BUILD="${LETHE_GPU_BUILD:-$ROOT/build-gpu}"
WORK="${LETHE_GPU_WORK:-/tmp/lethe-gpu}"
MODELS="${LETHE_GPU_MODELS:-llama3-8b:q4_0 llama3-8b:f16}"
DEPTHS="${LETHE_GPU_DEPTHS:-0,4096}"
BACKENDS="${LETHE_GPU_BACKENDS:-cuda vulkan cpu}"          # bench rows
DEPTH_BACKEND="${LETHE_GPU_DEPTH_BACKEND:-cuda}"            # depth x policy rows
ARCH="${LETHE_GPU_ARCH:-90}"
TMO="${LETHE_GPU_STAGE_TIMEOUT:-540}"
PEER_SRC="${LETHE_PEER_SRC:-$ROOT/.peer/llama.cpp}"
JOBS="$(nproc 2>/dev/null || echo 4)"
RES="$OUT/results.md"
LETHE="$BUILD/bin/lethe"
export PATH="$PATH:/usr/local/cuda/bin"
failed=()

say() { echo "gpu-check: $*" >&2; }
has() { [[ " $STAGES " == *" $1 "* ]]; }
note() { printf '%s\n' "$*" >> "$RES"; }
# run NAME LOG CMD...: a stage step under the timeout, output appended to LOG
run() {
    local name="$1" log="$2"; shift 2
    say "$name: $*"
    echo "\$ $*" >> "$log"
    timeout --kill-after=10 "$TMO" "$@" >> "$log" 2>&1
    local rc=$?
    if [[ $rc -ne 0 ]]; then
        [[ $rc -eq 124 || $rc -eq 137 ]] && say "$name: TIMED OUT after ${TMO}s" || say "$name: FAILED (exit $rc)"
        failed+=("$name")
        note "- **$name failed** (exit $rc; see $(basename "$log"))"
        return 1
    fi
    return 0
}

{
    echo "# lethe GPU check"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- commit: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$ROOT" diff --quiet 2>/dev/null || echo ' (+ local changes)')"
    echo "- stages: $STAGES"
} > "$RES"

# ---- probe
if has probe; then
    if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi > "$OUT/gpu.txt" 2>&1; then
        say "no NVIDIA GPU here (nvidia-smi missing or failing): nothing to check"
        note "- **no NVIDIA GPU** (nvidia-smi missing or failing)"
        exit 2
    fi
    if ! command -v nvcc >/dev/null 2>&1; then
        say "no CUDA toolkit (nvcc) on PATH or in /usr/local/cuda/bin"
        note "- **no CUDA toolkit** (nvcc)"
        exit 2
    fi
    nvcc --version >> "$OUT/gpu.txt" 2>&1
    GPU="$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1)"
    note "- GPU: $GPU"
    say "GPU: $GPU"
fi

# ---- build
if has build; then
    : > "$OUT/build.log"
    if run configure "$OUT/build.log" cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
            -DCMAKE_CUDA_ARCHITECTURES="$ARCH" -DLETHE_TEST_VK_DRIVERS='*nvidia*'; then
        run build "$OUT/build.log" ninja -C "$BUILD" -j"$JOBS" && note "- build: ok ($("$LETHE" --version 2>&1))"
        grep -q "CUDA backend on" "$OUT/build.log" || { say "the build has no CUDA backend"; failed+=(no-cuda); note "- **the build has no CUDA backend**"; }
    fi
fi

# ---- test
if has test; then
    : > "$OUT/test.log"
    filter=(-R 'backend_ops|cuda')
    [[ "${LETHE_GPU_CTEST:-}" == all ]] && filter=()
    run ctest "$OUT/test.log" ctest --test-dir "$BUILD" --output-on-failure -V --timeout "$TMO" "${filter[@]}"
    note ""
    note "## tests"
    note '```'
    grep -E "NMSE|greedy|skipped|Passed|Failed|SKIPPED|tests passed" "$OUT/test.log" | head -150 >> "$RES"
    note '```'
fi

# ---- sanitize
if has sanitize; then
    : > "$OUT/sanitize.log"
    if command -v compute-sanitizer >/dev/null 2>&1; then
        for tool in memcheck racecheck; do
            for t in test_backend_ops test_cuda_e2e; do
                run "$tool-$t" "$OUT/sanitize.log" env VK_LOADER_DRIVERS_SELECT='*nvidia*' \
                    compute-sanitizer --tool "$tool" --error-exitcode 3 "$BUILD/tests/$t"
            done
        done
        note "- compute-sanitizer: $(grep -c 'ERROR SUMMARY: 0 errors' "$OUT/sanitize.log") clean runs of 4"
    else
        say "compute-sanitizer not found: sanitize skipped"
        note "- compute-sanitizer not found: skipped"
    fi
fi

# ---- synth
model_path() { echo "$WORK/${1%%:*}-${1##*:}.gguf"; }
if has synth; then
    mkdir -p "$WORK"
    for mt in $MODELS; do
        f="$(model_path "$mt")"
        [[ -s "$f" ]] && { say "synth: $f exists"; continue; }
        run "synth-$mt" "$OUT/bench.log" "$LETHE" synth -o "$f.tmp" --shape "${mt%%:*}" --type "${mt##*:}" && mv "$f.tmp" "$f"
    done
fi

# ---- bench
# bench_step NAME LOG CMD...: run one benchmark, append its output to LOG and its
# table to results.md; a backend that did not start (the CLI falls back to the
# CPU with a warning) fails the step instead of passing CPU numbers off.
bench_step() {
    local name="$1" log="$2"; shift 2
    local tmp="$WORK/step.out"
    mkdir -p "$WORK"
    : > "$tmp"
    run "$name" "$tmp" "$@"
    local rc=$?
    cat "$tmp" >> "$log"
    if [[ $rc -eq 0 ]] && grep -q "unavailable.*running on the CPU" "$tmp"; then
        say "$name: the backend did not start (see $(basename "$log"))"
        failed+=("$name")
        note "- **$name: the backend did not start**"
        return 1
    fi
    grep '^|' "$tmp" >> "$RES"
    return $rc
}
if has bench; then
    note ""
    note "## lethe bench"
    # the roofline of each device first (GPU: buffer_copy, timed by the device clock where
    # the backend has one), so the rows below get their % roofline column
    for be in $BACKENDS; do
        note ""
        note "### roofline, $be"
        bench_step "roofline-$be" "$OUT/bench.log" env VK_LOADER_DRIVERS_SELECT='*nvidia*' \
            "$LETHE" bench --roofline --backend "$be" -r 3 -o md
    done
    for mt in $MODELS; do
        f="$(model_path "$mt")"
        [[ -s "$f" ]] || { say "bench: no $f (run the synth stage)"; failed+=("bench-$mt"); continue; }
        for be in $BACKENDS; do
            args=(-p 512 -n 128 -r 3)
            [[ $be == cpu ]] && args=(-p 64 -n 16 -r 1)   # context for the GPU rows, kept short
            note ""
            note "### $mt, $be: ${args[*]}"
            bench_step "bench-$mt-$be" "$OUT/bench.log" env VK_LOADER_DRIVERS_SELECT='*nvidia*' \
                "$LETHE" bench -m "$f" --backend "$be" "${args[@]}" -o md --jsonl "$OUT/bench.jsonl"
        done
        for pol in none dms; do
            extra=()
            [[ $pol == dms ]] && extra=(--kv-policy dms --dms-force-rate 0.9 --dms-window 256)
            note ""
            note "### $mt, $DEPTH_BACKEND, tg at depths $DEPTHS, KV policy $pol"
            bench_step "depth-$mt-$pol" "$OUT/bench.log" "$LETHE" bench -m "$f" --backend "$DEPTH_BACKEND" \
                -p 0 -n 32 -r 2 -d "$DEPTHS" "${extra[@]}" -o md --jsonl "$OUT/bench.jsonl"
        done
    done
fi

# ---- peer
if has peer; then
    : > "$OUT/peer.log"
    note ""
    note "## llama.cpp (CUDA) on the same files"
    if [[ ! -f "$PEER_SRC/CMakeLists.txt" ]]; then
        say "peer: no llama.cpp source at $PEER_SRC (tools/peer/trim-llama-cpp.sh makes one to carry): skipped"
        note "- skipped: no source at $PEER_SRC"
    elif run peer-configure "$OUT/peer.log" cmake -S "$PEER_SRC" -B "$WORK/llama-build" -G Ninja \
            -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$ARCH" -DLLAMA_CURL=OFF \
            -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DGGML_NATIVE=ON &&
         run peer-build "$OUT/peer.log" ninja -C "$WORK/llama-build" -j"$JOBS" llama-bench; then
        for mt in $MODELS; do
            f="$(model_path "$mt")"
            [[ -s "$f" ]] || continue
            note ""
            note "### $mt"
            bench_step "peer-bench-$mt" "$OUT/peer.log" "$WORK/llama-build/bin/llama-bench" -m "$f" -ngl 99 \
                -p 512 -n 128 -r 3 -o md
        done
    fi
fi

note ""
if [[ ${#failed[@]} -eq 0 ]]; then
    note "**all stages passed**"
    say "all stages passed; summary in $RES"
    exit 0
fi
note "**failed: ${failed[*]}**"
say "failed: ${failed[*]}; summary in $RES"
exit 1
