#!/usr/bin/env bash
# tools/gpu-check.sh OUTDIR — everything that needs an NVIDIA GPU, in one
# command on a machine with the CUDA toolkit and a driver (no network: the
# models it needs it makes itself with `lethe synth`).
#
# Stages run in the order LETHE_GPU_STAGES lists them (probe first wherever it is listed;
# default "probe build test synth bench gemv attn graphs sanitize peer"; a subset, e.g. "build test"):
#   probe     nvidia-smi, nvcc; stops with exit 2 and a clear line when either is missing
#   build     lethe with CUDA (and Vulkan when its SDK is there) in $LETHE_GPU_BUILD (build-gpu)
#   test      ctest: the backend-op consistency test (CUDA, and Vulkan on the NVIDIA
#             driver, with test_vulkan_dms_split: the KV cache over several bindings, QUEST
#             included), test_cuda_e2e, test_cuda_dms, test_cuda_shared (test_shared_device on
#             CUDA: two contexts upload the weights once, two threads decode at once, a freed
#             model's weights leave the device) test_device_sample (on-device top-k sampling: the
#             same tokens as the logits path), test_cuda_kv_moves (test_kv_moves on CUDA: the
#             KV cache's compaction / fork row moves by the kernels, bit-identical to the host
#             path) (LETHE_GPU_CTEST=all: the whole suite); all with LETHE_CUDA_PLIST_CHECK=1 (the
#             device-resident page lists checked against the cache and read back every compute)
#   gemv      the decode GEMV alone (lethe_cuda_gemv_bench): per weight type on the 8B shapes
#             (4096x4096, 14336x4096, 4096x14336, 128256x4096), T = 1 and 8, old kernel against
#             new and wide (LETHE_CUDA_GEMV), us / GB/s / % of its own 1 GiB device copy; its
#             table goes into results.md, its output into bench.log;
#             fails when an output is unwritten, new and old disagree, or wide's bits differ
#             ($LETHE_GPU_GEMV_ARGS passes options, e.g. "-t q4_0,f16 -T 1"; timeout
#             $LETHE_GPU_GEMV_TIMEOUT, default 120 s; ~168 cases x ~5 ms: seconds, not yet run)
#   attn      prefill attention alone (lethe_cuda_attn_bench): the tiled f32 kernel against the
#             tensor-core one (k_attn_tc.cu) on a synthetic paged f16 cache: the 8B shape (8 KV
#             heads, G 4, D 128) at depth 8192 + a 512-token prompt with DMS flags and holes, a
#             32768-token prompt from depth 0 (a 32k refill), G 8 / D 128 and G 3 / D 64 at depth
#             4096; ms of each, speedup, nominal TFLOP/s, NMSE tc vs f32 (fails over 1e-5 or on
#             an unwritten output); its table goes into results.md, its output into bench.log
#             ($LETHE_GPU_ATTN_ARGS passes options, e.g. "-c 8x4x128@0+32768 -r 3"; timeout
#             $LETHE_GPU_ATTN_TIMEOUT, default 120 s; not yet run: the f32 kernel's 32k case is
#             estimated at 0.5-3 s a launch, 2+ launches)
#   synth     full-size synthetic models ($LETHE_GPU_MODELS, default "llama3-8b:q4_0
#             llama3-8b:f16") into $LETHE_GPU_WORK (default /tmp/lethe-gpu), reused if present
#   sanitize  (memcheck over test_backend_ops, test_cuda_dms, test_cuda_e2e; racecheck over
#             test_backend_ops, test_cuda_dms: the KV_STORE/ATTENTION kernels' shared memory)
#   bench     the roofline of each backend, then tg at depths
#             ($LETHE_GPU_DEPTHS, default 0,4096) x parallel sequences ($LETHE_GPU_PARALLEL,
#             default 1,8) with KV policy none and DMS forced to ~8x (--dms-force-rate 0.9,
#             window 256), the KV cache in the GPU's managed memory; LETHE_GPU_KV_META="host
#             device" repeats the DMS rows with the cache metadata on each side (LETHE_CUDA_KV_META);
#             then pp512/tg128 on CUDA, Vulkan and the CPU ($LETHE_GPU_BACKENDS)
#   graphs    decode steps replayed as CUDA graphs (LETHE_CUDA_GRAPHS=1, off by default until
#             this stage has passed on a GPU): logits of every position of a DMS-evicting
#             decode (one token per step, streams crossing span buckets) must be bit-identical
#             with graphs on and off, and so for TOVA and QUEST decodes (score policies inside
#             the graph); test_cuda_e2e and test_cuda_dms with graphs on (against
#             the CPU as always); tg rows with graphs off vs on (smollm2-135m shape, where
#             launch overhead shows most, and the first of $LETHE_GPU_MODELS when present) at
#             depths $LETHE_GPU_GRAPH_DEPTHS (default 0,4096) x parallel 1,8
#             and the fused decode passes (LETHE_CUDA_FUSE): logits of a q4_0 smollm2-shape
#             decode bit-identical with fusion off and on (plain and graphs), tg rows off vs on;
#             and the DMS decode's logits with every page list staged (LETHE_CUDA_PLISTS=staged)
#             bit-identical to the device-resident lists' (LETHE_GPU_PLIST_AB=1 in the bench stage:
#             the none depth rows again with staged lists)
#   peer      llama.cpp's CUDA build on the same GGUFs, when its trimmed source is at
#             $LETHE_PEER_SRC (default .peer/llama.cpp; make it here with
#             tools/peer/trim-llama-cpp.sh and carry it)
# OUTDIR gets at most 8 files: results.md (the summary: GPU, commit, tests, tables),
# gpu.txt, build.log, test.log, sanitize.log, bench.log, bench.jsonl (every bench row, for
# tools/bench_report.py tables/plot), peer.log.
#
# Libraries: when .gpu-deps/ holds .deb files (tools/gpu-deps.sh makes them here; carry
# ".gpu-deps"), they are unpacked under $LETHE_GPU_WORK/deps (never into /) and pkg-config,
# the linker and the loader look there first: the device image is described with the CUDA
# toolkit but none of OpenBLAS, PCRE2, jansson, utf8proc, cmocka or pkg-config, and no network.
# LETHE_GPU_BUDGET=S: the whole call ends within S seconds (each step's timeout shrinks to what
# is left; steps past it are skipped and listed).
# LETHE_GPU_PROFILE=lease: the one-call plan for a 15-minute device lease (with timeout_s 600),
#   most valuable first, so that running out of budget loses the least valuable:
#   stages "probe build test synth bench gemv attn graphs sanitize", budget 560 s; only the targets
#   the tests need (and lethe_cuda_gemv_bench, lethe_cuda_attn_bench; not test_cuda_host_*,
#   CPU tests), sm_90, CUDA only
#   (LETHE_GPU_VULKAN=OFF: no shader build, and a Vulkan build on an image without the NVIDIA
#   Vulkan driver would fail test_backend_ops' setup, CUDA cases and all); ctest -j3, 120 s per
#   test, 200 s for the step; model llama3-8b:q4_0; bench: roofline, then tg32 at depths 0,8192
#   x parallel 1,8 for none and for DMS (1 repetition, 130 s cap each), then pp512/tg128 (-r 2);
#   gemv (60 s cap); attn (60 s cap); graphs (tg rows of the 8B model at depth 0 only, 1 repetition); the
#   sanitizers (90 s each) with what is left. Every step's wall time goes to gpu.txt ("step ...").
#   Every variable above (and LETHE_GPU_CTEST_JOBS, _CTEST_TIMEOUT, _TEST_CAP, _SYNTH_CAP,
#   _DEPTH_CAP, _PPTG_REPS, _GRAPH_BIG_DEPTHS, _GRAPH_REPS) still overrides it.
# Results are written as each step ends (results.md, the logs; bench flushes every row), so a
# step killed by its cap or the budget keeps what came before it.
# LETHE_GPU_BACKENDS / LETHE_GPU_DEPTH_BACKEND choose the benchmarked backends
# (the script's non-GPU parts are tested on a CPU machine with "cpu" and a tiny model).
# Every stage runs under `timeout` ($LETHE_GPU_STAGE_TIMEOUT s, default 540): a hang
# fails the stage, never the call. Exit status: 0 all stages passed, 1 a stage failed
# (results.md says which), 2 no GPU / no toolkit / bad usage.
# On the device machine each call may run at most 10 minutes and a session has ~15 minutes
# of device time: run LETHE_GPU_PROFILE=lease first (docs/CUDA.md), "peer" only if time is left.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-}"
if [[ -z "$OUT" || "$OUT" == -* ]]; then
    echo "usage: tools/gpu-check.sh OUTDIR   (stages: LETHE_GPU_STAGES='probe build test synth bench gemv attn graphs sanitize peer')" >&2
    exit 2
fi
mkdir -p "$OUT" || exit 2
OUT="$(cd "$OUT" && pwd)"
PROFILE="${LETHE_GPU_PROFILE:-}"
if [[ "$PROFILE" == lease ]]; then
    : "${LETHE_GPU_STAGES:=probe build test synth bench gemv attn graphs sanitize}" "${LETHE_GPU_BUDGET:=560}"
    : "${LETHE_GPU_MODELS:=llama3-8b:q4_0}" "${LETHE_GPU_BACKENDS:=cuda}" "${LETHE_GPU_DEPTHS:=0,8192}"
    : "${LETHE_GPU_PARALLEL:=1,8}" "${LETHE_GPU_TARGETS:=lethe_cli test_backend_ops test_cuda_e2e test_cuda_dms test_shared_device test_device_sample test_kv_moves lethe_cuda_gemv_bench lethe_cuda_attn_bench}"
    : "${LETHE_GPU_DEPTH_REPS:=1}" "${LETHE_GPU_SANITIZE_TIMEOUT:=90}" "${LETHE_GPU_VULKAN:=OFF}"
    # caps per step, so that one hang costs its cap and not the rest of the call
    : "${LETHE_GPU_CTEST_JOBS:=3}" "${LETHE_GPU_CTEST_TIMEOUT:=120}" "${LETHE_GPU_TEST_CAP:=200}"
    : "${LETHE_GPU_SYNTH_CAP:=120}" "${LETHE_GPU_DEPTH_CAP:=130}" "${LETHE_GPU_PPTG_REPS:=2}" "${LETHE_GPU_GEMV_TIMEOUT:=60}"
    : "${LETHE_GPU_ATTN_TIMEOUT:=60}"
    : "${LETHE_GPU_GRAPH_BIG_DEPTHS:=0}" "${LETHE_GPU_GRAPH_REPS:=1}"
fi
STAGES="${LETHE_GPU_STAGES:-probe build test synth bench gemv attn graphs sanitize peer}"
BUDGET="${LETHE_GPU_BUDGET:-0}"
START=$SECONDS
PARALLEL="${LETHE_GPU_PARALLEL:-1,8}"
KV_META="${LETHE_GPU_KV_META:-host}"
TARGETS="${LETHE_GPU_TARGETS:-}"
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
# run NAME LOG CMD...: a stage step under the timeout (and the call's budget), output appended to LOG;
# CAP=S run ... caps that one step at S seconds (a hang then costs S, not the rest of the call)
run() {
    local name="$1" log="$2"; shift 2
    local tmo="$TMO"
    if [[ "$BUDGET" -gt 0 ]]; then
        local left=$((BUDGET - (SECONDS - START)))
        if [[ $left -lt 15 ]]; then
            say "$name: skipped, the call's budget of ${BUDGET}s is spent"
            failed+=("$name(no-time)")
            note "- **$name skipped**: the call's budget of ${BUDGET}s was spent"
            return 1
        fi
        [[ $left -lt $tmo ]] && tmo=$left
    fi
    [[ -n "${CAP:-}" && "$CAP" -lt $tmo ]] && tmo=$CAP
    say "$name: $*"
    echo "\$ $*" >> "$log"
    local t0=$SECONDS
    timeout --kill-after=10 "$tmo" "$@" >> "$log" 2>&1
    local rc=$?
    # every step's wall time (the next lease plan is sized from these)
    printf 'step %-28s %4ds  exit %d  (limit %ds)\n' "$name" $((SECONDS - t0)) $rc "$tmo" >> "$OUT/gpu.txt"
    if [[ $rc -ne 0 ]]; then
        [[ $rc -eq 124 || $rc -eq 137 ]] && say "$name: TIMED OUT after ${tmo}s" || say "$name: FAILED (exit $rc)"
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
stage_probe() {
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
}

# ---- carried libraries (tools/gpu-deps.sh), for every stage that builds or runs
setup_deps() {
if compgen -G "$ROOT/.gpu-deps/*.deb" > /dev/null; then
    DEPS="$WORK/deps"
    rm -rf "$DEPS" && mkdir -p "$DEPS"
    for f in "$ROOT"/.gpu-deps/*.deb; do
        if command -v dpkg > /dev/null 2>&1; then dpkg -x "$f" "$DEPS" || say "deps: cannot unpack $f"
        else (cd "$DEPS" && ar p "$f" "$(ar t "$f" | grep '^data\.tar')" | tar -x -J -f - 2>/dev/null ||
              ar p "$f" "$(ar t "$f" | grep '^data\.tar')" | tar -x --zstd -f -) || say "deps: cannot unpack $f"
        fi
    done
    find "$DEPS" -name '*.pc' -exec sed -i -E "s#^(prefix|exec_prefix|libdir|includedir)=/usr#\1=$DEPS/usr#" {} +
    export PKG_CONFIG_PATH="$(find "$DEPS" -type d -name pkgconfig | paste -sd:)${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
    export LD_LIBRARY_PATH="$DEPS/usr/lib/x86_64-linux-gnu:$DEPS/usr/lib/x86_64-linux-gnu/openblas-pthread${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    command -v pkg-config > /dev/null 2>&1 || export PKG_CONFIG="$DEPS/usr/bin/pkgconf"
    note "- carried libraries: $(ls "$ROOT"/.gpu-deps/*.deb | wc -l) packages unpacked under $DEPS"
fi
}

# ---- build
stage_build() {
    : > "$OUT/build.log"
    pkgcfg=()
    [[ -n "${PKG_CONFIG:-}" ]] && pkgcfg=(-DPKG_CONFIG_EXECUTABLE="$PKG_CONFIG")
    read -r -a targets <<< "$TARGETS"
    # -DLETHE_CUDA_EMU=OFF: the CPU emulator's copies of the CUDA tests (ctest -L emu, CI's) would
    # match the test filter below and cost the lease their minutes; here the device is real
    if run configure "$OUT/build.log" cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
            -DCMAKE_CUDA_ARCHITECTURES="$ARCH" -DLETHE_VULKAN="${LETHE_GPU_VULKAN:-ON}" \
            -DLETHE_TEST_VK_DRIVERS='*nvidia*' -DLETHE_CUDA_EMU=OFF "${pkgcfg[@]}"; then
        run build "$OUT/build.log" ninja -C "$BUILD" -j"$JOBS" "${targets[@]}" && note "- build: ok ($("$LETHE" --version 2>&1))"
        grep -q "CUDA backend on" "$OUT/build.log" || { say "the build has no CUDA backend"; failed+=(no-cuda); note "- **the build has no CUDA backend**"; }
    fi
}

# ---- test
stage_test() {
    : > "$OUT/test.log"
    # test_cuda_host_* and test_cuda_plists are CPU-only (CI runs them): left out here, their NMSE lines would crowd the summary;
    # vulkan_dms_split: the KV cache over several bindings
    filter=(-R 'backend_ops|cuda|device_sample|vulkan_dms_split' -E 'cuda_host|cuda_plists')
    [[ "${LETHE_GPU_CTEST:-}" == all ]] && filter=()
    # a Vulkan build where the image has no NVIDIA Vulkan driver: say so, but keep the CUDA cases.
    # LETHE_CUDA_PLIST_CHECK=1: every compute compares the device-resident page lists with the
    # cache's and reads each arena back (cuda_plist.h): a stale list or a wrong upload fails the test
    CAP="${LETHE_GPU_TEST_CAP:-}" run ctest "$OUT/test.log" env LETHE_TEST_ALLOW_NO_DEVICE=1 LETHE_CUDA_PLIST_CHECK=1 \
        ctest --test-dir "$BUILD" \
        --output-on-failure -V -j"${LETHE_GPU_CTEST_JOBS:-1}" --timeout "${LETHE_GPU_CTEST_TIMEOUT:-$TMO}" "${filter[@]}"
    note ""
    note "## tests"
    note '```'
    grep -E "NMSE|greedy|identical|skipped|uploads|threads at once|Passed|Failed|SKIPPED|Timeout|tests passed|no Vulkan device|slot scores|KV reads|bindings|shared buffer \(KV" \
        "$OUT/test.log" | head -200 >> "$RES"
    note '```'
}

# ---- gemv, attn: one kernel's microbenchmark alone (tools/cuda: lethe_cuda_NAME_bench,
# options in ARGS, capped at CAP seconds; under the call's budget like every step, so it
# cannot make the lease overrun it): its output into bench.log, its table (the GPU line and
# the rows the awk pattern ROWS keeps) into results.md
# bench_stage NAME TITLE ARGS CAP ROWS
bench_stage() {
    local name="$1" title="$2" args_line="$3" cap="$4" rows="$5"
    local bin="$BUILD/bin/lethe_cuda_${name}_bench" from args
    note ""
    note "## $title"
    touch "$OUT/bench.log"
    from=$(($(wc -l < "$OUT/bench.log") + 1))
    read -r -a args <<< "$args_line"
    if [[ -x "$bin" ]]; then
        CAP="$cap" run "$name" "$OUT/bench.log" "$bin" "${args[@]}"
    else
        say "$name: no $bin (build stage, CUDA backend on)"
        failed+=("$name")
        note "- **$name: no lethe_cuda_${name}_bench in the build**"
    fi
    tail -n +"$from" "$OUT/bench.log" | awk '/^GPU:/ { print; print ""; next } '"$rows" >> "$RES"
}

# the decode GEMV alone, old kernel against new (seconds of GPU time)
stage_gemv() {
    bench_stage gemv "decode GEMV alone (lethe_cuda_gemv_bench): old kernel vs new" \
        "${LETHE_GPU_GEMV_ARGS:-}" "${LETHE_GPU_GEMV_TIMEOUT:-120}" '/^\|/'
}

# prefill attention alone, the tiled f32 kernel against the tensor-core one (the f32
# kernel's 32k-token case dominates: estimated seconds)
stage_attn() {
    bench_stage attn "prefill attention alone (lethe_cuda_attn_bench): tiled f32 vs tensor cores" \
        "${LETHE_GPU_ATTN_ARGS:-}" "${LETHE_GPU_ATTN_TIMEOUT:-120}" '/^\|/ || /^\(NMSE/'
}

# ---- sanitize (a function: LETHE_GPU_SANITIZE_LAST=1 runs it after bench, so that a
# call's budget goes to the speed numbers first)
stage_sanitize() {
    : > "$OUT/sanitize.log"
    if ! command -v compute-sanitizer >/dev/null 2>&1; then
        say "compute-sanitizer not found: sanitize skipped"
        note "- compute-sanitizer not found: skipped"
        return
    fi
    local n_san=0 tool t tests
    local saved_tmo="$TMO"
    TMO="${LETHE_GPU_SANITIZE_TIMEOUT:-$TMO}"   # each run's limit (and what is left of the budget)
    for tool in memcheck racecheck; do
        tests=(test_backend_ops test_cuda_dms test_cuda_e2e)
        [[ $tool == racecheck ]] && tests=(test_backend_ops test_cuda_dms)   # racecheck is slow; these hold the shared-memory kernels
        for t in "${tests[@]}"; do
            n_san=$((n_san + 1))
            run "$tool-$t" "$OUT/sanitize.log" env VK_LOADER_DRIVERS_SELECT='*nvidia*' LETHE_TEST_ALLOW_NO_DEVICE=1 \
                compute-sanitizer --tool "$tool" --error-exitcode 3 "$BUILD/tests/$t"
        done
    done
    TMO="$saved_tmo"
    note "- compute-sanitizer: $(grep -c 'ERROR SUMMARY: 0 errors' "$OUT/sanitize.log") clean runs of $n_san"
}

# ---- synth
model_path() { echo "$WORK/${1%%:*}-${1##*:}.gguf"; }
stage_synth() {
    mkdir -p "$WORK"
    for mt in $MODELS; do
        f="$(model_path "$mt")"
        [[ -s "$f" ]] && { say "synth: $f exists"; continue; }
        CAP="${LETHE_GPU_SYNTH_CAP:-}" run "synth-$mt" "$OUT/bench.log" "$LETHE" synth -o "$f.tmp" --shape "${mt%%:*}" --type "${mt##*:}" && mv "$f.tmp" "$f"
    done
}

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
    local rc=$?   # a killed bench still leaves its finished rows (each is flushed)
    cat "$tmp" >> "$log"
    if [[ $rc -eq 0 ]] && grep -q "unavailable.*running on the CPU" "$tmp"; then
        say "$name: the backend did not start (see $(basename "$log"))"
        failed+=("$name")
        note "- **$name: the backend did not start**"
        return 1
    fi
    # the CUDA backend refused the managed KV buffer: attention ran on the CPU, say it by the table
    if grep -q "KV_STORE/ATTENTION run on the CPU" "$tmp"; then
        note "- **$name: the KV cache was NOT on the GPU** (KV_STORE/ATTENTION on the CPU): $(grep -m1 "KV_STORE/ATTENTION run on the CPU" "$tmp")"
    fi
    grep '^|' "$tmp" >> "$RES"
    return $rc
}
stage_bench() {
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
        # decode at depth, P sequences together: none against DMS forced to ~8x
        # (the cache in managed memory; metadata placement per LETHE_GPU_KV_META)
        for pol in none dms; do
            extra=()
            [[ $pol == dms ]] && extra=(--kv-policy dms --dms-force-rate 0.9 --dms-window 256)
            metas=(host)
            [[ $pol == dms ]] && read -r -a metas <<< "$KV_META"
            for meta in "${metas[@]}"; do
                note ""
                note "### $mt, $DEPTH_BACKEND, tg at depths $DEPTHS x parallel $PARALLEL, KV policy $pol (KV metadata: $meta)"
                CAP="${LETHE_GPU_DEPTH_CAP:-}" bench_step "depth-$mt-$pol-$meta" "$OUT/bench.log" env LETHE_CUDA_KV_META="$meta" "$LETHE" bench -m "$f" \
                    --backend "$DEPTH_BACKEND" -p 0 -n 32 -r "${LETHE_GPU_DEPTH_REPS:-2}" -d "$DEPTHS" --parallel "$PARALLEL" \
                    "${extra[@]}" -o md --jsonl "$OUT/bench.jsonl"
            done
        done
        # LETHE_GPU_PLIST_AB=1: the none rows again with every page list staged each step (the
        # path before device-resident page lists, cuda_plist.h): what the mirror saves at depth
        if [[ "${LETHE_GPU_PLIST_AB:-0}" == 1 ]]; then
            note ""
            note "### $mt, $DEPTH_BACKEND, tg at depths $DEPTHS x parallel $PARALLEL, KV policy none, page lists staged (LETHE_CUDA_PLISTS=staged)"
            CAP="${LETHE_GPU_DEPTH_CAP:-}" bench_step "depth-$mt-none-staged" "$OUT/bench.log" env LETHE_CUDA_PLISTS=staged \
                "$LETHE" bench -m "$f" --backend "$DEPTH_BACKEND" -p 0 -n 32 -r "${LETHE_GPU_DEPTH_REPS:-2}" -d "$DEPTHS" \
                --parallel "$PARALLEL" -o md --jsonl "$OUT/bench.jsonl"
        fi
        # pp512 / tg128 (llama-bench's pair, for the peer comparison) after the depth rows
        for be in $BACKENDS; do
            args=(-p 512 -n 128 -r "${LETHE_GPU_PPTG_REPS:-3}")
            [[ $be == cpu ]] && args=(-p 64 -n 16 -r 1)   # context for the GPU rows, kept short
            note ""
            note "### $mt, $be: ${args[*]}"
            bench_step "bench-$mt-$be" "$OUT/bench.log" env VK_LOADER_DRIVERS_SELECT='*nvidia*' \
                "$LETHE" bench -m "$f" --backend "$be" "${args[@]}" -o md --jsonl "$OUT/bench.jsonl"
        done
    done
}

# ---- graphs: CUDA-graph replay of decode steps against the plain launches
stage_graphs() {
    note ""
    note "## CUDA graphs (LETHE_CUDA_GRAPHS=1) against plain launches"
    mkdir -p "$WORK"
    small="$WORK/smollm2-135m-f16.gguf"
    if [[ ! -s "$small" ]]; then
        run "synth-smollm2" "$OUT/bench.log" "$LETHE" synth -o "$small.tmp" --shape smollm2-135m --type f16 &&
            mv "$small.tmp" "$small"
    fi
    if [[ -s "$small" ]]; then
        # 700 positions one token per call: decode steps only, DMS evicting (forced), the
        # streams cross span buckets 1 -> 2 -> 4 -> 8: every crossing is a new capture
        toks="$(seq -s, 1 700)"
        glog="$WORK/logits-graphs.log"
        : > "$glog"
        for gr in 0 1; do
            rm -f "$WORK/logits-graphs-$gr.bin"
            run "logits-graphs-$gr" "$glog" env LETHE_CUDA_GRAPHS=$gr "$LETHE" logits -m "$small" \
                --backend cuda -b 1 --tokens "$toks" --dms-force-rate 0.5 --dms-window 64 -c 1024 -v -v \
                -o "$WORK/logits-graphs-$gr.bin"
        done
        # the same decode with every page list staged (LETHE_CUDA_PLISTS=staged, graphs off): the
        # device-resident lists must give the same bits
        rm -f "$WORK/logits-plists-staged.bin"
        run "logits-plists-staged" "$glog" env LETHE_CUDA_GRAPHS=0 LETHE_CUDA_PLISTS=staged "$LETHE" logits -m "$small" \
            --backend cuda -b 1 --tokens "$toks" --dms-force-rate 0.5 --dms-window 64 -c 1024 \
            -o "$WORK/logits-plists-staged.bin"
        if cmp -s "$WORK/logits-graphs-0.bin" "$WORK/logits-plists-staged.bin"; then
            note "- logits of 700 DMS-evicting decode steps: device-resident page lists == staged lists, bit for bit"
        else
            failed+=("logits-plists-differ")
            note "- **logits differ between device-resident and staged page lists** ($(cmp "$WORK/logits-graphs-0.bin" "$WORK/logits-plists-staged.bin" 2>&1 | head -1))"
        fi
        grep -v '^lethe: debug: cuda: nodes' "$glog" >> "$OUT/test.log"
        n_cap="$(grep -c 'graph of .* launches captured' "$glog")"
        n_fb="$(grep -c 'runs plain launches' "$glog")"
        if grep -q "unavailable.*running on the CPU" "$glog"; then
            failed+=("logits-graphs-no-cuda")
            note "- **logits with graphs on/off: the CUDA backend did not start** (CPU fallback; nothing checked)"
        elif cmp -s "$WORK/logits-graphs-0.bin" "$WORK/logits-graphs-1.bin"; then
            note "- logits of 700 decode steps (DMS forced 0.5, window 64): graphs on == off, bit for bit"
        else
            failed+=("logits-graphs-differ")
            note "- **logits differ with graphs on** ($(cmp "$WORK/logits-graphs-0.bin" "$WORK/logits-graphs-1.bin" 2>&1 | head -1))"
        fi
        note "- graphs captured: $n_cap, steps that fell back to plain launches: $n_fb"
        [[ "$n_cap" -gt 0 ]] || { failed+=("graphs-never-captured"); note "- **no graph was captured with LETHE_CUDA_GRAPHS=1**"; }
        # score policies in the graph: TOVA (weights copied back by the graph, folded after the
        # sync, evicting at budget 192) and QUEST (bounds + page selection inside the graph)
        ptoks="$(seq -s, 1 400)"
        for pol in tova quest; do
            plog="$WORK/logits-graphs-$pol.log"
            : > "$plog"
            for gr in 0 1; do
                rm -f "$WORK/logits-graphs-$pol-$gr.bin"
                run "logits-graphs-$pol-$gr" "$plog" env LETHE_CUDA_GRAPHS=$gr "$LETHE" logits -m "$small" \
                    --backend cuda -b 1 --tokens "$ptoks" --kv-policy $pol --kv-budget 192 -c 512 -v -v \
                    -o "$WORK/logits-graphs-$pol-$gr.bin"
            done
            grep -v '^lethe: debug: cuda: nodes' "$plog" >> "$OUT/test.log"
            p_cap="$(grep -c 'graph of .* launches captured' "$plog")"
            if grep -q "unavailable.*running on the CPU" "$plog"; then
                failed+=("logits-graphs-$pol-no-cuda")
                note "- **$pol logits with graphs on/off: the CUDA backend did not start**"
            elif [[ "$p_cap" -eq 0 ]]; then
                failed+=("graphs-$pol-never-captured")
                note "- **$pol: no graph was captured with LETHE_CUDA_GRAPHS=1** (attention on the CPU?)"
            elif cmp -s "$WORK/logits-graphs-$pol-0.bin" "$WORK/logits-graphs-$pol-1.bin"; then
                note "- $pol logits of 400 decode steps (budget 192): graphs on == off, bit for bit ($p_cap captures)"
            else
                failed+=("logits-graphs-$pol-differ")
                note "- **$pol logits differ with graphs on** ($(cmp "$WORK/logits-graphs-$pol-0.bin" "$WORK/logits-graphs-$pol-1.bin" 2>&1 | head -1))"
            fi
        done
    fi
    # fused decode passes (LETHE_CUDA_FUSE, on by default): the fused kernels' thread mapping is
    # what only a GPU shows; their arithmetic is the unfused launches' (test_cuda_fuse, host).
    # A q4_0 model (norm / swiglu -> the GEMVs' q8 blocks, ADD + norm), 300 evicting decode
    # steps, fusion off vs on, plain launches and graphs: logits bit for bit; then tg rows.
    smallq="$WORK/smollm2-135m-q4_0.gguf"
    if [[ ! -s "$smallq" ]]; then
        run "synth-smollm2-q4_0" "$OUT/bench.log" "$LETHE" synth -o "$smallq.tmp" --shape smollm2-135m --type q4_0 &&
            mv "$smallq.tmp" "$smallq"
    fi
    if [[ -s "$smallq" ]]; then
        ftoks="$(seq -s, 1 300)"
        flog="$WORK/logits-fuse.log"
        : > "$flog"
        for gr in 0 1; do
            for fu in 0 1; do
                rm -f "$WORK/logits-fuse-$gr-$fu.bin"
                run "logits-fuse-$gr-$fu" "$flog" env LETHE_CUDA_GRAPHS=$gr LETHE_CUDA_FUSE=$fu "$LETHE" logits \
                    -m "$smallq" --backend cuda -b 1 --tokens "$ftoks" --dms-force-rate 0.5 --dms-window 64 -c 512 \
                    -o "$WORK/logits-fuse-$gr-$fu.bin"
            done
        done
        cat "$flog" >> "$OUT/test.log"
        if grep -q "unavailable.*running on the CPU" "$flog"; then
            failed+=("logits-fuse-no-cuda")
            note "- **logits with fusion on/off: the CUDA backend did not start**"
        elif cmp -s "$WORK/logits-fuse-0-0.bin" "$WORK/logits-fuse-0-1.bin" &&
            cmp -s "$WORK/logits-fuse-0-0.bin" "$WORK/logits-fuse-1-1.bin"; then
            note "- fused decode passes (q4_0, 300 decode steps): logits with LETHE_CUDA_FUSE=0 == fused, plain and graphs, bit for bit"
        else
            failed+=("logits-fuse-differ")
            note "- **logits differ with the fused decode passes** (plain: $(cmp "$WORK/logits-fuse-0-0.bin" "$WORK/logits-fuse-0-1.bin" 2>&1 | head -1); graphs: $(cmp "$WORK/logits-fuse-0-0.bin" "$WORK/logits-fuse-1-1.bin" 2>&1 | head -1))"
        fi
        for fu in 0 1; do
            note ""
            note "### $(basename "$smallq"), cuda, tg, LETHE_CUDA_GRAPHS=1, LETHE_CUDA_FUSE=$fu"
            bench_step "tg-fuse-$fu" "$OUT/bench.log" env LETHE_CUDA_GRAPHS=1 LETHE_CUDA_FUSE=$fu "$LETHE" bench \
                -m "$smallq" --backend cuda -p 0 -n 64 -r "${LETHE_GPU_GRAPH_REPS:-2}" -d 0 --parallel 1,8 -o md \
                --jsonl "$OUT/bench.jsonl"
        done
    fi
    CAP="${LETHE_GPU_TEST_CAP:-}" run "ctest-graphs" "$OUT/test.log" env LETHE_CUDA_GRAPHS=1 LETHE_TEST_ALLOW_NO_DEVICE=1 \
        ctest --test-dir "$BUILD" --output-on-failure -V -j"${LETHE_GPU_CTEST_JOBS:-1}" \
        --timeout "${LETHE_GPU_CTEST_TIMEOUT:-$TMO}" -R 'test_cuda_(e2e|dms)' &&
        note "- test_cuda_e2e, test_cuda_dms with graphs on: passed"
    # tg rows off vs on: the small shape (launch overhead shows most) at LETHE_GPU_GRAPH_DEPTHS,
    # the first of $LETHE_GPU_MODELS at LETHE_GPU_GRAPH_BIG_DEPTHS (lease: depth 0 only)
    first="${MODELS%% *}"
    gmodels=("$small" "$(model_path "$first")")
    gdepths=("${LETHE_GPU_GRAPH_DEPTHS:-0,4096}" "${LETHE_GPU_GRAPH_BIG_DEPTHS:-${LETHE_GPU_GRAPH_DEPTHS:-0,4096}}")
    for gi in 0 1; do
        f="${gmodels[$gi]}"
        [[ -s "$f" ]] || continue
        for gr in 0 1; do
            note ""
            note "### $(basename "$f"), cuda, tg at depths ${gdepths[$gi]} x parallel 1,8, LETHE_CUDA_GRAPHS=$gr"
            bench_step "tg-graphs-$gr-$(basename "$f")" "$OUT/bench.log" env LETHE_CUDA_GRAPHS=$gr "$LETHE" bench -m "$f" \
                --backend cuda -p 0 -n 64 -r "${LETHE_GPU_GRAPH_REPS:-2}" -d "${gdepths[$gi]}" --parallel 1,8 -o md \
                --jsonl "$OUT/bench.jsonl"
        done
    done
}


# ---- peer
stage_peer() {
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
}

# ---- the stages, in the order LETHE_GPU_STAGES lists them (probe first, whatever its place)
read -r -a stage_list <<< "$STAGES"
for st in "${stage_list[@]}"; do
    case "$st" in
    probe|build|test|gemv|attn|sanitize|synth|bench|graphs|peer) ;;
    *) say "unknown stage '$st' (probe build test gemv attn sanitize synth bench graphs peer)"; exit 2 ;;
    esac
done
# LETHE_GPU_SANITIZE_LAST=1 (older plans): the sanitizers after every other stage
if [[ "${LETHE_GPU_SANITIZE_LAST:-0}" == 1 ]] && has sanitize; then
    read -r -a stage_list <<< "$(for st in "${stage_list[@]}"; do [[ $st == sanitize ]] || printf '%s ' "$st"; done) sanitize"
fi
has probe && stage_probe
setup_deps
for st in "${stage_list[@]}"; do
    [[ $st == probe ]] && continue
    "stage_$st"
done

note ""
if [[ ${#failed[@]} -eq 0 ]]; then
    note "**all stages passed**"
    say "all stages passed; summary in $RES"
    exit 0
fi
note "**failed: ${failed[*]}**"
say "failed: ${failed[*]}; summary in $RES"
exit 1
