#!/usr/bin/env bash
# cuda_emu_ab.sh LETHE_BIN PYTHON WORKDIR [fuse|plists|prefill]... — A/B runs of the
# CUDA module on the CPU emulator of the device (ctest test_cuda_ab_*_emu):
# whole-model logits with one device feature on and off, which only the
# emulator can compare in CI (docs/CUDA.md, "The CPU emulator"). Tiny synthetic
# models (V 512, E 256, D 64, G 2), DMS evictions forced (--dms-force-rate).
#   fuse     fused decode passes (default) vs LETHE_CUDA_FUSE=0: logits bit for
#            bit, q8_0 and f16 weights, decode steps with DMS; the fused kernels
#            must run in the first and not in the second
#   plists   device-resident page lists (default; with LETHE_CUDA_PLIST_CHECK=1,
#            which compares the mirror at every compute and reads the arena
#            back) vs LETHE_CUDA_PLISTS=staged: bit for bit, DMS decode steps,
#            prefill chunks over a history (long enough that lists relocate),
#            and CUDA graphs on
#   prefill  tensor-core prefill attention (default, Q and P rounded to f16) vs
#            LETHE_CUDA_PREFILL_ATTN=f32: prompts in chunks of 48 over a DMS
#            history; every position's logits within NMSE 1e-5 and the same
#            argmax (greedy token)
# Every run asks the emulator which kernels ran (LETHE_CUDA_EMU_REQUIRE /
# _FORBID, emu_api.h): an A/B whose B never took the path fails.
set -euo pipefail
LETHE="$1"
PY="$2"
WORK="$3"
shift 3
mkdir -p "$WORK"
export LETHE_CUDA_EMU=1
fail=0
for t in f16 q8_0; do
    [[ -f "$WORK/tiny-$t.gguf" ]] || "$LETHE" synth -o "$WORK/tiny-$t.gguf" --shape tiny --type "$t" >/dev/null 2>&1
done

run() {   # out-name, env assignments..., --, logits options
    local name="$1"
    shift
    local envs=()
    while [[ "$1" != -- ]]; do envs+=("$1"); shift; done
    shift
    if ! env "${envs[@]}" LETHE_CUDA_EMU_STATS=1 "$LETHE" logits --backend cuda -v "$@" -o "$WORK/$name.bin" \
        > "$WORK/$name.log" 2>&1; then
        echo "$name: failed ($(grep -m3 -i 'error\|never ran\|cuda emulator: kernel\|stale' "$WORK/$name.log" | tr '\n' ' '))"
        fail=1
        return 1
    fi
    if grep -q "unavailable.*running on the CPU\|run on the CPU" "$WORK/$name.log"; then
        echo "$name: ops left the device: $(grep -m1 'on the CPU' "$WORK/$name.log")"
        fail=1
        return 1
    fi
}
ran() {   # log: the emulator's count line, shortened
    grep -o 'grids run:.*' "$WORK/$1.log" | tr ',' '\n' | grep -E "$2" | tr -s ' ' | tr '\n' ',' | sed 's/,$//'
}
same() {   # a b what
    if cmp -s "$WORK/$1.bin" "$WORK/$2.bin"; then
        echo "$3: bit for bit"
    else
        echo "$3: logits differ: $(cmp "$WORK/$1.bin" "$WORK/$2.bin" 2>&1 | head -1)"
        fail=1
    fi
}

dms=(--dms-force-rate 0.2 --dms-window 16)
toks="$(seq -s, 1 160)"
for what in "$@"; do
    case "$what" in
    fuse)
        for t in q8_0 f16; do
            m="$WORK/tiny-$t.gguf"
            # q8_0: norm -> q8 and swiglu -> q8 fused; f16: the norms (the GEMVs read f32)
            req=k_norm_fused
            [[ $t == q8_0 ]] && req=k_norm_fused,k_swiglu_q8
            run "fuse-$t-on" LETHE_CUDA_EMU_REQUIRE=$req -- -m "$m" --tokens "$toks" "${dms[@]}" -c 256 -b 1 || continue
            run "fuse-$t-off" LETHE_CUDA_FUSE=0 LETHE_CUDA_EMU_FORBID=k_norm_fused,k_swiglu_q8 -- \
                -m "$m" --tokens "$toks" "${dms[@]}" -c 256 -b 1 || continue
            same "fuse-$t-on" "fuse-$t-off" "fuse $t (DMS decode, 160 steps): LETHE_CUDA_FUSE=0 == fused [$(ran "fuse-$t-on" 'k_norm_fused|k_swiglu_q8')]"
        done
        ;;
    plists)
        m="$WORK/tiny-f16.gguf"
        for b in 1 16; do
            run "plists-b$b-dev" LETHE_CUDA_PLIST_CHECK=1 LETHE_CUDA_EMU_REQUIRE=k_plist_scatter -- \
                -m "$m" --tokens "$toks" "${dms[@]}" -c 256 -b $b || continue
            run "plists-b$b-staged" LETHE_CUDA_PLISTS=staged LETHE_CUDA_EMU_FORBID=k_plist_scatter,k_plist_move -- \
                -m "$m" --tokens "$toks" "${dms[@]}" -c 256 -b $b || continue
            same "plists-b$b-dev" "plists-b$b-staged" "plists, batches of $b (DMS): device lists (checked every compute) == staged [$(ran "plists-b$b-dev" 'k_plist')]"
        done
        # 700 tokens in chunks of 64: lists outgrow their extents (relocated on the device: k_plist_move)
        long="$("$PY" -c "print(','.join(str(i * 37 % 500 + 3) for i in range(700)))")"
        run plists-long-dev LETHE_CUDA_PLIST_CHECK=1 LETHE_CUDA_EMU_REQUIRE=k_plist_scatter,k_plist_move -- \
            -m "$m" --tokens "$long" "${dms[@]}" -c 1024 -b 64 &&
            run plists-long-staged LETHE_CUDA_PLISTS=staged LETHE_CUDA_EMU_FORBID=k_plist_scatter,k_plist_move -- \
                -m "$m" --tokens "$long" "${dms[@]}" -c 1024 -b 64 &&
            same plists-long-dev plists-long-staged "plists, 700 tokens in chunks of 64 (DMS): device lists (checked) == staged [$(ran plists-long-dev 'k_plist')]"
        run plists-graphs-dev LETHE_CUDA_GRAPHS=1 LETHE_CUDA_PLIST_CHECK=1 LETHE_CUDA_EMU_REQUIRE=k_plist_scatter -- \
            -m "$m" --tokens "$toks" "${dms[@]}" -c 256 -b 1 &&
            run plists-graphs-staged LETHE_CUDA_GRAPHS=1 LETHE_CUDA_PLISTS=staged -- \
                -m "$m" --tokens "$toks" "${dms[@]}" -c 256 -b 1 &&
            same plists-graphs-dev plists-graphs-staged "plists with graphs on (DMS decode): device lists (checked) == staged" &&
            same plists-graphs-dev plists-b1-staged "plists: graphs on (device lists) == graphs off (staged)"
        ;;
    prefill)
        m="$WORK/tiny-f16.gguf"
        run prefill-tc LETHE_CUDA_EMU_REQUIRE='k_attn_prefill_tc<64>' -- -m "$m" --tokens "$toks" "${dms[@]}" -c 256 -b 48 &&
            run prefill-f32 LETHE_CUDA_PREFILL_ATTN=f32 LETHE_CUDA_EMU_FORBID=k_attn_prefill_tc -- \
                -m "$m" --tokens "$toks" "${dms[@]}" -c 256 -b 48 &&
            if msg="$("$PY" - "$WORK/prefill-f32.bin" "$WORK/prefill-tc.bin" 512 <<'EOF'
import array, sys
a, b = array.array('f'), array.array('f')
a.frombytes(open(sys.argv[1], 'rb').read())
b.frombytes(open(sys.argv[2], 'rb').read())
V = int(sys.argv[3])
assert len(a) == len(b) and len(a) % V == 0 and len(a) > 0
worst, bad = 0.0, []
for p in range(len(a) // V):
    x, y = a[p * V:(p + 1) * V], b[p * V:(p + 1) * V]
    e = sum((u - v) ** 2 for u, v in zip(x, y)) / max(sum(u * u for u in x), 1e-30)
    worst = max(worst, e)
    if max(range(V), key=x.__getitem__) != max(range(V), key=y.__getitem__):
        bad.append(p)
print("%d positions, worst NMSE %.3g (limit 1e-5), argmax differs at %s" % (len(a) // V, worst, bad or "none"))
sys.exit(0 if worst < 1e-5 and not bad else 1)
EOF
)"; then
                echo "prefill: tensor cores vs LETHE_CUDA_PREFILL_ATTN=f32, chunks of 48 (DMS): $msg [$(ran prefill-tc 'k_attn_prefill|mma')]"
            else
                echo "prefill: tensor cores vs f32: $msg"
                fail=1
            fi
        ;;
    *) echo "cuda_emu_ab.sh: unknown check '$what'"; exit 2 ;;
    esac
done
exit $fail
