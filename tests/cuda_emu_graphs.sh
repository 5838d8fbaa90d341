#!/usr/bin/env bash
# cuda_emu_graphs.sh LETHE_BIN WORKDIR — tools/gpu-check.sh's `graphs` stage on
# the CPU emulator of the CUDA device (ctest test_cuda_graphs_emu): logits of
# evicting decode steps with CUDA graphs on (LETHE_CUDA_GRAPHS=1: stream
# capture, executable update, replay) must equal the plain launches' bit for
# bit, for DMS (forced evictions) and for the score policies inside the graph
# (TOVA: weights copied back by the graph, QUEST: bounds and page selection);
# at least one graph must have been captured. A tiny model (V 512, D 64).
set -euo pipefail
LETHE="$1"
WORK="$2"
mkdir -p "$WORK"
model="$WORK/tiny-f16.gguf"
"$LETHE" synth -o "$model" --shape tiny --type f16 >/dev/null
export LETHE_CUDA_EMU=1
fail=0
check() {   # name, then the logits options
    local name="$1"
    shift
    for gr in 0 1; do
        LETHE_CUDA_GRAPHS=$gr "$LETHE" logits -m "$model" --backend cuda -b 1 -v -v "$@" \
            -o "$WORK/$name-$gr.bin" > "$WORK/$name-$gr.log" 2>&1
    done
    local cap fb
    cap="$(grep -c 'graph of .* launches captured' "$WORK/$name-1.log" || true)"
    fb="$(grep -c 'runs plain launches' "$WORK/$name-1.log" || true)"
    if grep -q "unavailable.*running on the CPU" "$WORK/$name-1.log"; then
        echo "$name: the CUDA backend did not start"; fail=1
    elif [[ "$cap" -eq 0 ]]; then
        echo "$name: no graph was captured with LETHE_CUDA_GRAPHS=1"; fail=1
    elif ! cmp -s "$WORK/$name-0.bin" "$WORK/$name-1.bin"; then
        echo "$name: logits differ with graphs on: $(cmp "$WORK/$name-0.bin" "$WORK/$name-1.bin" 2>&1 | head -1)"; fail=1
    else
        echo "$name: graphs on == off, bit for bit ($cap captures, $fb plain fallbacks)"
    fi
}
check dms --tokens "$(seq -s, 1 200)" --dms-force-rate 0.2 --dms-window 16 -c 512
check tova --tokens "$(seq -s, 1 100)" --kv-policy tova --kv-budget 64 -c 256
check quest --tokens "$(seq -s, 1 100)" --kv-policy quest --kv-budget 64 -c 256
exit $fail
