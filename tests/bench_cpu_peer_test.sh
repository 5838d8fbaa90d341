#!/usr/bin/env bash
# bench_cpu_peer_test.sh — tools/bench-cpu-peer.sh end to end with tiny sizes (--quick) into a
# temporary --out, with a stand-in llama-bench (a shell script printing one jsonl row per
# -p/-n/-d combination it is asked for, at 100 t/s), so it runs anywhere in seconds:
#   - a busy machine is refused (exit 3) unless --force, which labels the section;
#   - every step appends its jsonl: roofline, peer (2 alternated runs), policies, parallel;
#     peer rows and lethe rows with the ratio column filled against the stand-in's 100 t/s;
#   - the plots exist, BENCHMARKS.md gets one section whose tables hold the rows, the old
#     text is kept, and a second run gets its own files and section (NAME-2);
#   - bad usage exits 2.
# Needs gnuplot for the plots (tools/setup.sh --plots): without it, exit 77 (skipped).
#   bench_cpu_peer_test.sh SOURCE_DIR LETHE_BIN MODEL
set -euo pipefail
SRC="$1" BIN="$2" MODEL="$3"
fail() { echo "FAIL: $*" >&2; exit 1; }
command -v gnuplot >/dev/null || { echo "SKIPPED: gnuplot is not installed (tools/setup.sh --plots)"; exit 77; }
[[ -r "$MODEL" ]] || fail "model $MODEL not found (tools/fetch-model.sh)"

WORK="$(mktemp -d /tmp/lethe-cpu-peer-XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/out" "$WORK/peer" "$WORK/cache"
printf '# benchmarks\n\nkept text\n' > "$WORK/out/BENCHMARKS.md"
cat > "$WORK/peer/llama-bench" <<'EOF'
#!/usr/bin/env bash
# stand-in llama-bench: -p/-n/-d lists -> one jsonl row per test, 100 t/s
declare -A a
while (($#)); do a[$1]="${2:-}"; shift 2 || shift; done
IFS=, read -ra P <<< "${a[-p]}"; IFS=, read -ra N <<< "${a[-n]}"; IFS=, read -ra D <<< "${a[-d]}"
row() { printf '{"build_commit": "fake", "backends": "CPU", "model_type": "fake", "n_threads": %s, "n_prompt": %s, "n_gen": %s, "n_depth": %s, "avg_ts": 100.0, "stddev_ts": 1.0, "samples_ts": [99.0, 101.0]}\n' "${a[-t]}" "$1" "$2" "$3"; }
for d in "${D[@]}"; do
    for p in "${P[@]}"; do ((p > 0)) && row "$p" 0 "$d"; done
    for n in "${N[@]}"; do ((n > 0)) && row 0 "$n" "$d"; done
done
exit 0
EOF
chmod +x "$WORK/peer/llama-bench"
export LETHE_BUILD_DIR="$(dirname "$(dirname "$BIN")")" LETHE_CACHE="$WORK/cache" OMP_WAIT_POLICY=passive
S="$SRC/tools/bench-cpu-peer.sh"
ARGS=(--quick --runs 2 --threads 1 --model "$MODEL" --peer "$WORK/peer" --out "$WORK/out")

# usage
set +e
"$S" --runs 0 >/dev/null 2>&1; [[ $? -eq 2 ]] || fail "--runs 0 must exit 2"
"$S" --nope >/dev/null 2>&1; [[ $? -eq 2 ]] || fail "an unknown option must exit 2"
# busy: --max-load 0 is always exceeded once anything runs... unless the load is exactly 0.00
read -r l1 _ < /proc/loadavg
if awk -v a="$l1" 'BEGIN { exit !(a > 0) }'; then
    "$S" "${ARGS[@]}" --max-load 0 > "$WORK/busy.out" 2> "$WORK/busy.err"
    [[ $? -eq 3 ]] || fail "a load above --max-load must be refused with exit 3: $(cat "$WORK/busy.err")"
    grep -q "the machine is busy" "$WORK/busy.err" || fail "the refusal says why"
    [[ -z "$(ls "$WORK/out")" || "$(ls "$WORK/out")" == BENCHMARKS.md ]] || fail "a refused run writes nothing"
fi
set -e

"$S" "${ARGS[@]}" --force --max-load 0 > "$WORK/run.out" 2> "$WORK/run.err" || { cat "$WORK/run.err" >&2; fail "the quick run failed"; }
D="$(date -u +%Y-%m-%d)" N="$(date -u +%Y-%m-%d)-cpu-smollm2-quick"
for part in roofline peer policies parallel; do
    [[ -s "$WORK/out/data/$N-$part.jsonl" ]] || fail "no $N-$part.jsonl"
done
[[ -z "$(ls -A "$WORK/cache")" ]] || fail "a --quick run leaves the roofline cache alone: $(ls -R "$WORK/cache")"
python3 - "$WORK/out" "$N" <<'EOF' || fail "the rows"
import json, sys
out, name = sys.argv[1], sys.argv[2]
rows = lambda part: [json.loads(l) for l in open(f"{out}/data/{name}-{part}.jsonl")]
roof = rows("roofline")
assert len(roof) == 1 and roof[0]["gbps"] > 0 and roof[0]["method"] == "streaming read", roof
peer = rows("peer")
# 2 runs x (peer: pp8, tg4 at d0, d32 = 4 rows; lethe: the same 4)
assert len(peer) == 16, len(peer)
ours = [r for r in peer if r["engine"] == "lethe"]
assert len(ours) == 8 and all(r["peer_ts"] == 100.0 and abs(r["ratio"] - r["avg_ts"] / 100.0) < 1e-6 for r in ours), ours
assert all(r["roofline_pct"] is not None for r in ours), "the roofline step's cache feeds % roofline"
assert len({r["commit"] for r in ours}) == 1, "one commit for every row (taken before the script writes)"
pol = rows("policies")
pol_ours = [r for r in pol if r["engine"] == "lethe"]
assert {r["kv_policy"] for r in pol_ours} == {"none", "window 16", "dms w8 forced 0.90"}, {r["kv_policy"] for r in pol_ours}
assert len(pol_ours) == 9 and {r["n_depth"] for r in pol_ours} == {0, 16, 32}
par = rows("parallel")
assert {r["n_parallel"] for r in par} == {1, 4} and len(par) == 4
print("rows ok")
EOF
for f in peer-tg-depth peer-pp-depth policies-tg-depth parallel-tg-depth; do
    [[ -s "$WORK/out/img/$N-$f.svg" && -s "$WORK/out/img/$N-$f.png" ]] || fail "no plot $N-$f"
done
doc="$WORK/out/BENCHMARKS.md"
head -3 "$doc" | grep -q "kept text" || fail "the old text is kept"
[[ "$(grep -c "<!-- bench-cpu-peer: $N -->" "$doc")" -eq 1 ]] || fail "one section"
grep -q "Tooling check with tiny sizes (--quick): not a result" "$doc" || fail "a --quick section says it is not a result"
grep -q "| peer side by side, run 2 of 2 |" "$doc" || fail "the contention table"
grep -q "| tg4 @ d32 | lethe | cpu | 1 | dms w8 forced 0.90 |" "$doc" || fail "the tables were regenerated"
[[ "$(grep -c "| pp8 @ d32 | llama.cpp |" "$doc")" -eq 2 ]] || fail "both alternated peer runs in the tables"

# a second run: its own files and section
"$S" "${ARGS[@]}" --force --max-load 0 > /dev/null 2> "$WORK/run2.err" || { cat "$WORK/run2.err" >&2; fail "the second run failed"; }
[[ -s "$WORK/out/data/$N-2-peer.jsonl" ]] || fail "the second run's files are NAME-2"
[[ "$(wc -l < "$WORK/out/data/$N-peer.jsonl")" -eq 16 ]] || fail "the first run's rows are left alone"
grep -q "<!-- bench-cpu-peer: $N-2 -->" "$doc" || fail "the second run's section"
echo "ok ($D)"
