#!/usr/bin/env bash
# tools/bench-cpu-peer.sh — the recorded CPU run of docs/BENCHMARKS.md, in one command:
# lethe against llama.cpp's llama-bench on SmolLM2-135M-Instruct Q4_1.
#
#   1. the CPU roofline (streaming read)                        lethe bench --roofline
#   2. side by side at d0/d2048, pp512/tg128, alternated --runs times
#                                                                lethe bench --peer llama.cpp=...
#   3. KV policies at depth (none, window 1024, dms w256 forced 0.9), peer alongside
#   4. --parallel 1,4 (none, dms) at d2048
#   then rows appended to <out>/data/DATE-cpu-smollm2-{roofline,peer,policies,parallel}.jsonl,
#   plots into <out>/img/, and a dated section in <out>/BENCHMARKS.md whose tables
#   tools/bench_report.py regenerates from the jsonl (a second run the same day gets
#   its own files and section, DATE-cpu-smollm2-2-*).
#
# A shared machine makes speed numbers meaningless, so the script refuses to start
# when the 1-minute load average is above --max-load (default 0.5, i.e. at most a
# quarter of a 2-core VM busy), and measures during every step how many cores
# other processes used (/proc/stat minus this script's own children); a step above
# 0.25 cores prints a loud warning, and the section says so. --force runs anyway
# and labels the section "UNDER LOAD: not a result".
#
# Usage:
#   tools/bench-cpu-peer.sh [--force] [--max-load L] [--runs N] [--threads T]
#                           [--model GGUF] [--peer LLAMA_BENCH_OR_DIR] [--out DIR] [--quick]
#
#   --out DIR   where data/, img/ and BENCHMARKS.md are (default: docs/ of this tree)
#   --quick     tiny sizes (-p 8 -n 4, depths 0,32, -r 1): checks the tooling, measures nothing
#               worth recording (its section says so); tests/bench_cpu_peer_test.sh uses it
#   --peer      llama-bench or its folder (default: built by tools/peer/build-llama-cpp.sh
#               llama-bench into ${LETHE_CACHE:-~/.cache/lethe}/llama.cpp-build, outside the repo)
#
# Needs: python3; runs tools/setup.sh --plots first (an incremental build, gnuplot if missing).
# Takes about 25 minutes on the idle 2-vCPU development VM, estimated from the idle t/s in
# docs/BENCHMARKS.md (side by side ~9 min, policies ~12 min, mostly the depth fills up to
# d8192 that llama-bench repeats every run; parallel ~1 min), plus a few minutes the first
# time to build llama-bench; the progress lines on stderr give each step's time left.
# Exit status: 0 done; 1 a step failed (rows measured so far are kept); 2 bad usage;
# 3 refused: the machine is busy.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${LETHE_CACHE:-$HOME/.cache/lethe}"
FORCE=0 QUICK=0 MAX_LOAD=0.5 RUNS=3 THREADS="$(nproc)" MODEL="" PEER="" OUT="$ROOT/docs"
OTHER_MAX=0.25   # cores other processes may use during a step before it is flagged

log() { echo "bench-cpu-peer.sh: $*" >&2; }
die() { echo "bench-cpu-peer.sh: error: $1" >&2; exit "${2:-1}"; }
loud() {
    echo "bench-cpu-peer.sh: ################################################################" >&2
    echo "bench-cpu-peer.sh: WARNING: $*" >&2
    echo "bench-cpu-peer.sh: ################################################################" >&2
}

while (($#)); do
    case "$1" in
        --force) FORCE=1 ;;
        --quick) QUICK=1 ;;
        --max-load) MAX_LOAD="${2:?--max-load needs a number}"; shift ;;
        --runs) RUNS="${2:?--runs needs a number}"; shift ;;
        --threads) THREADS="${2:?--threads needs a number}"; shift ;;
        --model) MODEL="${2:?--model needs a file}"; shift ;;
        --peer) PEER="${2:?--peer needs a path}"; shift ;;
        --out) OUT="${2:?--out needs a folder}"; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option '$1' (--help lists them)" 2 ;;
    esac
    shift
done
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || die "--runs: expected a positive integer, got '$RUNS'" 2
[[ "$THREADS" =~ ^[1-9][0-9]*$ ]] || die "--threads: expected a positive integer, got '$THREADS'" 2
awk -v x="$MAX_LOAD" 'BEGIN { exit !(x + 0 == x && x >= 0) }' || die "--max-load: expected a number, got '$MAX_LOAD'" 2

# ---- load: refuse a busy machine ------------------------------------------
read -r LOAD1 LOAD5 LOAD15 _ < /proc/loadavg
busy() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a > b) }'; }
UNDER_LOAD=0
if busy "$LOAD1" "$MAX_LOAD"; then
    top="$(ps -eo pcpu=,comm= --sort=-pcpu | awk '$2 != "ps" && n < 5 {printf "%s%s %s%%", (n++ ? ", " : ""), $2, $1}')"
    if ((FORCE)); then
        loud "load average $LOAD1 $LOAD5 $LOAD15 is above --max-load $MAX_LOAD (busiest: $top). Running anyway (--force): the section will be labelled UNDER LOAD, not a result."
        UNDER_LOAD=1
    else
        die "the machine is busy: load average $LOAD1 $LOAD5 $LOAD15 (1/5/15 min) is above --max-load $MAX_LOAD (busiest: $top). Speed numbers taken now would measure the other work. Run again when it is idle, or --force to record a run labelled as under load." 3
    fi
fi

# ---- what the run needs -----------------------------------------------------
# A recorded run always brings the build up to date first: the rows name the tree's
# commit, so the binary must be that commit's (setup.sh is incremental, and --plots
# installs gnuplot if it is missing). --quick uses the binary as it is.
LETHE="${LETHE_BUILD_DIR:-$ROOT/build}/bin/lethe"
if ((!QUICK)) || [[ ! -x "$LETHE" ]]; then
    log "bringing the build up to date (tools/setup.sh --plots)"
    nice "$ROOT/tools/setup.sh" --plots >&2
fi
[[ -n "$MODEL" ]] || MODEL="$("$ROOT/tools/fetch-model.sh")"
[[ -r "$MODEL" ]] || die "model '$MODEL' not readable"
if [[ -z "$PEER" ]]; then
    PEER="$CACHE/llama.cpp-build/bin/llama-bench"
    if [[ ! -x "$PEER" ]]; then
        log "building the llama.cpp peer (llama-bench only) into $CACHE/llama.cpp-build: a few minutes"
        nice "$ROOT/tools/peer/build-llama-cpp.sh" llama-bench >/dev/null
    fi
fi
[[ -d "$PEER" ]] && PEER="$PEER/llama-bench"
[[ -x "$PEER" ]] || die "peer '$PEER' is not an executable llama-bench (tools/peer/build-llama-cpp.sh llama-bench builds it)"
python3 "$ROOT/tools/bench_report.py" check || die "plots need gnuplot: tools/setup.sh --plots"

# The roofline cache is the machine's: every later `lethe bench` reads its % roofline from it.
# A --quick or busy run measures it in a private cache instead, so a number taken under load
# (or with one repetition) never replaces the idle one; its rows use that private number.
if ((QUICK || UNDER_LOAD)); then
    LETHE_CACHE="$(mktemp -d /tmp/lethe-bench-cpu-peer-cache-XXXXXX)"
    export LETHE_CACHE
    trap 'rm -rf "$LETHE_CACHE"' EXIT
    log "roofline cache for this run: $LETHE_CACHE (the machine's cache is left alone)"
fi

# The commit every row names, taken before this script writes into the tree
# (otherwise every row after the first says +dirty because of our own jsonl).
COMMIT="$(git -C "$ROOT" describe --always --dirty=+dirty --abbrev=7 2>/dev/null || echo unknown)"
export LETHE_COMMIT="$COMMIT"
[[ "$COMMIT" == *+dirty ]] && loud "the source tree has local changes: rows will say $COMMIT"

DATE="$(date -u +%Y-%m-%d)"
NAME="$DATE-cpu-smollm2"
((QUICK)) && NAME="$NAME-quick"
DATA="$OUT/data" IMG="$OUT/img" DOC="$OUT/BENCHMARKS.md"
[[ -f "$DOC" ]] || die "$DOC does not exist (--out must hold a BENCHMARKS.md)"
mkdir -p "$DATA" "$IMG"
# one section and one set of files per invocation: a second run the same day is NAME-2
base="$NAME"
for ((k = 2; ; k++)); do
    grep -q "<!-- bench-cpu-peer: $NAME -->" "$DOC" || compgen -G "$DATA/$NAME-*.jsonl" >/dev/null || break
    NAME="$base-$k"
done

if ((QUICK)); then
    PP=8 TG=4 DEPTHS=0,32 POL_DEPTHS=0,16,32 PAR_DEPTH=32 REPS=1 POL_REPS=1 BUDGET=16 WINDOW=8 PAR_TG=4 ROOF_REPS=1
else
    PP=512 TG=128 DEPTHS=0,2048 POL_DEPTHS=0,1024,2048,4096,8192 PAR_DEPTH=2048 REPS=5 POL_REPS=3
    BUDGET=1024 WINDOW=256 PAR_TG=64 ROOF_REPS=5
fi

# ---- contention during a step ----------------------------------------------
# Busy jiffies of the whole machine minus those of this script's children
# (lethe, and llama-bench under it, once waited for) over the step's time.
cpu_busy() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat; }
own_cpu() { awk '{ sub(/^.*\) /, ""); print $14 + $15 }' "/proc/$$/stat"; }   # cutime + cstime
now() { date +%s.%N; }
STEP_NOTES=()
FAILED=0
step() {   # step TITLE CMD...: run, then record how busy the others kept the machine
    local title="$1"; shift
    local b0 o0 t0 b1 o1 t1 other rc=0
    read -r LOAD_BEFORE _ < /proc/loadavg
    b0=$(cpu_busy); o0=$(own_cpu); t0=$(now)
    log "$title"
    "$@" || rc=$?
    b1=$(cpu_busy); o1=$(own_cpu); t1=$(now)
    local hz; hz=$(getconf CLK_TCK)
    other=$(awk -v b="$((b1 - b0))" -v o="$((o1 - o0))" -v t0="$t0" -v t1="$t1" -v hz="$hz" \
        'BEGIN { x = (b - o) / hz / (t1 - t0); printf "%.2f", x < 0 ? 0 : x }')
    local secs; secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", b - a }')
    STEP_NOTES+=("| $title | ${secs} s | $LOAD_BEFORE | $other |")
    if busy "$other" "$OTHER_MAX"; then
        loud "other processes used $other cores on average during '$title' (more than $OTHER_MAX): its numbers are not clean"
        UNDER_LOAD=1
    fi
    if ((rc)); then
        log "'$title' failed (exit $rc); its rows measured so far are kept"
        FAILED=1
    fi
}

B=("$LETHE" bench -m "$MODEL" -t "$THREADS" --progress)
PEER_ARG=(--peer "llama.cpp=$PEER")

# ---- 1. roofline -------------------------------------------------------------
# The json line also refreshes the cache the other steps read their % roofline from.
step "roofline (streaming read)" bash -c '"$@" >> "'"$DATA/$NAME-roofline.jsonl"'"' _ \
    "$LETHE" bench --roofline -t "$THREADS" -r "$ROOF_REPS" -o jsonl

# ---- 2. side by side, alternated -----------------------------------------------
for ((i = 1; i <= RUNS; i++)); do
    step "peer side by side, run $i of $RUNS" "${B[@]}" -p "$PP" -n "$TG" -d "$DEPTHS" -r "$REPS" "${PEER_ARG[@]}" \
        -o md --jsonl "$DATA/$NAME-peer.jsonl"
done

# ---- 3. KV policies at depth, the peer's full cache alongside -------------------
step "KV policies at depth" "${B[@]}" -p 0 -n "$TG" -d "$POL_DEPTHS" -r "$POL_REPS" \
    --kv-policy none,window,dms --kv-budget "$BUDGET" --dms-window "$WINDOW" --dms-force-rate 0.9 \
    "${PEER_ARG[@]}" -o md --jsonl "$DATA/$NAME-policies.jsonl"

# ---- 4. parallel sequences -----------------------------------------------------
step "parallel sequences" "${B[@]}" -p 0 -n "$PAR_TG" -d "$PAR_DEPTH" -r "$POL_REPS" --parallel 1,4 \
    --kv-policy none,dms --dms-window "$WINDOW" --dms-force-rate 0.9 -o md --jsonl "$DATA/$NAME-parallel.jsonl"

read -r LOAD1_END LOAD5_END LOAD15_END _ < /proc/loadavg

# ---- plots and BENCHMARKS.md -------------------------------------------------------
REPORT=(python3 "$ROOT/tools/bench_report.py")
for part in peer policies parallel; do
    f="$DATA/$NAME-$part.jsonl"
    [[ -s "$f" ]] && "${REPORT[@]}" plot "$f" --out "$IMG" --name "$NAME-$part" >&2
done

rel() { case "$1" in "$ROOT"/*) echo "${1#"$ROOT"/}" ;; *) echo "$1" ;; esac; }
{
    cpu="$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
    mem="$(awk '/^MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)"
    roof="$(tail -n 1 "$DATA/$NAME-roofline.jsonl" 2>/dev/null | python3 -c 'import json,sys; print("%.2f" % json.load(sys.stdin)["gbps"])' 2>/dev/null || echo "?")"
    if ((QUICK)); then
        label="**Tooling check with tiny sizes (--quick): not a result.**"
    elif ((UNDER_LOAD)); then
        label="**UNDER LOAD (see the contention table): not a result.**"
    else
        label="Idle machine (load and contention below)."
    fi
    {
        echo
        echo "<!-- bench-cpu-peer: $NAME -->"
        echo "## $DATE — CPU side by side, SmolLM2-135M-Instruct Q4_1 vs llama.cpp (tools/bench-cpu-peer.sh)"
        echo
        echo "$label"
        echo
        echo "- Recorded by \`tools/bench-cpu-peer.sh$( ((QUICK)) && echo " --quick")$( ((FORCE)) && echo " --force")\`;"
        echo "  lethe commit $COMMIT; the peer's build commit is in its rows (\`commit\`)."
        echo "- Machine: $(nproc) vCPU $cpu, $mem; threads $THREADS."
        echo "- Roofline: $roof GB/s (\`lethe bench --roofline -r $ROOF_REPS\`, data/$NAME-roofline.jsonl)."
        echo "- Load average (1/5/15 min) at the start $LOAD1 $LOAD5 $LOAD15, at the end $LOAD1_END $LOAD5_END $LOAD15_END"
        echo "  (the end includes this run's own threads). Other processes' CPU use per step, measured from"
        echo "  /proc/stat minus this run's own processes (above $OTHER_MAX cores the step is flagged):"
        echo
        echo "| step | time | load before | other cores |"
        echo "| ---- | ---: | ----------: | ----------: |"
        printf '%s\n' "${STEP_NOTES[@]}"
        echo
        echo "Side by side, $RUNS alternated invocations (each runs llama-bench first, then lethe):"
        echo
        echo "<!-- bench-report: tables $(rel "$DATA/$NAME-peer.jsonl") -->"
        echo "<!-- /bench-report -->"
        echo
        echo "![tg t/s against depth, lethe and llama.cpp](img/$NAME-peer-tg-depth.svg)"
        echo "![pp t/s against depth, lethe and llama.cpp](img/$NAME-peer-pp-depth.svg)"
        echo
        echo "KV policies at depth (DMS forced at 0.9: SmolLM2 is not a DMS model; this measures memory and"
        echo "speed, not accuracy), the peer's full cache alongside:"
        echo
        echo "<!-- bench-report: tables $(rel "$DATA/$NAME-policies.jsonl") -->"
        echo "<!-- /bench-report -->"
        echo
        echo "![tg t/s against depth per KV policy](img/$NAME-policies-tg-depth.svg)"
        echo
        echo "Parallel sequences (aggregate t/s):"
        echo
        echo "<!-- bench-report: tables $(rel "$DATA/$NAME-parallel.jsonl") -->"
        echo "<!-- /bench-report -->"
    } >> "$DOC"
}
"${REPORT[@]}" update "$DOC" >&2

if ((FAILED)); then
    die "a step failed (see above); the rows measured are in $DATA/$NAME-*.jsonl" 1
fi
((UNDER_LOAD)) && loud "the run was disturbed by other processes: $DOC labels it, do not quote its speeds"
log "done: $DATA/$NAME-*.jsonl, $IMG/$NAME-*, $DOC"
