#!/usr/bin/env python3
"""bench_report_test.py — tools/bench_report.py on fixed rows: the tables
(and `update`'s regenerated blocks) hold the rows' numbers (parsed back from the markdown), a peer's rows join
the run that launched them, the backend x device table appears with two
devices, and the plots are real SVG/PNG files. The plot part needs gnuplot
(tools/setup.sh --plots): without it, that part is skipped with a message
and the test exits 77 (ctest: skipped) after the table checks passed."""
import json
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tools", "bench_report.py")


def row(**kw):
    r = {"engine": "lethe", "model": "llama SmolLM2", "model_file": "/m/s.gguf", "size_bytes": 96576768,
         "n_params": 134515008, "backend": "cpu", "device": 0, "device_name": "AMD EPYC", "n_threads": 2,
         "n_batch": 512, "n_parallel": 1, "kv_policy": "none", "n_prompt": 0, "n_gen": 64, "n_depth": 0,
         "test": "tg64", "avg_ts": 300.0, "stddev_ts": 5.0, "samples_ts": [295.0, 305.0], "kv_bytes": 2949120.0,
         "kv_peak_bytes": 2949120.0, "kv_reads_per_token": 5805.0, "compression": 1.0, "gbps": 27.5,
         "roofline_gbps": 29.0, "roofline_pct": 94.8, "peer_ts": 150.0, "ratio": 2.0,
         "date": "2026-11-23T15:00:00Z", "commit": "abc1234", "command": "lethe bench -n 64 -d 0,2048"}
    r.update(kw)
    return r


def run(*args, check=True):
    p = subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True)
    if check and p.returncode != 0:
        sys.exit(f"FAIL: bench_report {' '.join(args)} exited {p.returncode}: {p.stderr}")
    return p


def md_rows(text):
    """Tables in the markdown: list of (header, [rows as dicts])."""
    tables, cur = [], None
    for line in text.splitlines():
        if not line.startswith("|"):
            cur = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cur is None:
            cur = (cells, [])
            tables.append(cur)
        elif not set("".join(cells)) <= set("-: "):
            cur[1].append(dict(zip(cur[0], cells)))
    return tables


def expect(cond, what):
    if not cond:
        sys.exit(f"FAIL: {what}")


def main():
    tmp = tempfile.mkdtemp(prefix="lethe-report-")
    try:
        rows = [
            row(engine="llama.cpp", backend="CPU", kv_policy="none", avg_ts=150.0, stddev_ts=2.0, kv_bytes=None,
                kv_peak_bytes=None, kv_reads_per_token=None, compression=None, gbps=None, roofline_gbps=None,
                roofline_pct=None, peer_ts=None, ratio=None, date="2026-11-23T15:00:01Z", commit="llama.cpp x"),
            row(),
            row(n_depth=2048, test="tg64 @ d2048", avg_ts=150.25, stddev_ts=1.5, kv_bytes=50135040.0,
                kv_reads_per_token=190125.0, ratio=None, peer_ts=None),
            row(kv_policy="dms w256 forced 0.90", n_depth=2048, test="tg64 @ d2048", avg_ts=280.5,
                compression=3.87, kv_reads_per_token=39784.0, ratio=None, peer_ts=None),
        ]
        path = os.path.join(tmp, "rows.jsonl")
        with open(path, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        out = run("tables", path).stdout
        expect("- Command: `lethe bench -n 64 -d 0,2048`" in out, "the command is recorded")
        expect("lethe commit abc1234" in out and "2026-11-23T15:00:00Z" in out, "date and commit are recorded")
        expect("AMD EPYC" in out, "the machine is recorded")
        tables = md_rows(out)
        expect(len(tables) == 1, f"one run, one table (got {len(tables)}): the peer joins it")
        hdr, body = tables[0]
        expect(len(body) == 4, "4 rows")
        for r, m in zip(rows, body):
            ts, sd = (float(x) for x in m["t/s"].split("±"))
            expect(abs(ts - r["avg_ts"]) < 0.006 and abs(sd - r["stddev_ts"]) < 0.006, f"t/s of {r['test']}")
            expect(m["engine"] == r["engine"] and m["kv policy"] == r["kv_policy"], "engine and policy")
            if r["kv_reads_per_token"] is None:
                expect(m["KV reads/tok"] == "" and m["ratio"] == "", "unknown values are empty cells")
            else:
                expect(float(m["KV reads/tok"]) == r["kv_reads_per_token"], "reads per token")
        expect(body[1]["ratio"] == "2.00" and body[1]["% roofline"] == "94.8", "ratio and roofline share")
        expect(body[2]["KV resident"] == "47.81 MiB", "bytes in MiB")

        expect("device busy %" not in hdr, "no device columns without device timings")
        # a second device: the backend x device table; its run has device timings
        with open(path, "a") as f:
            f.write(json.dumps(row(backend="vulkan", device_name="llvmpipe", avg_ts=3.5, command="lethe bench -b",
                                   device_busy_pct=97.25, device_gbps=4.5)) + "\n")
        tables = md_rows(run("tables", path).stdout)
        vk = tables[1][1][0]
        expect(vk["device busy %"] == "97.2" or vk["device busy %"] == "97.3", f"device busy %: {vk}")
        expect(vk["device GB/s"] == "4.50" and vk["ratio"] == "2.00", f"device GB/s and ratio after it: {vk}")
        bxd = tables[-1]
        expect(any("vulkan · llvmpipe" in h for h in bxd[0]), "backend x device columns")
        tg = [m for m in bxd[1] if m["test"] == "tg64 (none)"][0]
        expect(tg["cpu · AMD EPYC"] == "300.00" and tg["vulkan · llvmpipe"] == "3.50", "backend x device cells")

        # update: a marked block of a markdown file is regenerated, the rest kept
        doc = os.path.join(tmp, "doc.md")
        with open(doc, "w") as f:
            f.write(f"# history\nkept\n<!-- bench-report: tables {path} -->\nstale\n<!-- /bench-report -->\ntail\n")
        run("update", doc)
        with open(doc) as f:
            text = f.read()
        expect(text.startswith("# history\nkept\n") and text.endswith("<!-- /bench-report -->\ntail\n"), "update keeps the rest")
        expect("stale" not in text and "| tg64 @ d2048 | lethe |" in text, "update writes the tables")
        run("update", doc)
        with open(doc) as f:
            expect(f.read() == text, "update is idempotent")
        with open(doc, "w") as f:
            f.write("no markers\n")
        expect(run("update", doc, check=False).returncode != 0, "update without a block fails")

        # a bad file: one clear message, non-zero exit
        bad = os.path.join(tmp, "bad.jsonl")
        with open(bad, "w") as f:
            f.write("{not json\n")
        p = run("tables", bad, check=False)
        expect(p.returncode != 0 and "bad.jsonl:1" in p.stderr, "a bad row names its file and line")

        # lethe eval task rows: the md tables hold their numbers
        ev = os.path.join(tmp, "eval.json")
        task_rows = [
            {"task": "summary", "policy": "none", "compression": 1.0, "kl": 0.0},
            {"task": "summary", "policy": "dms", "compression": 7.5, "kl": 0.05},
            {"policy": "window", "compression": 8.0, "kl": 0.4},   # an older file: no "task"
            {"task": "passkey", "policy": "none", "budget": 0, "length": 1024, "depth": 0.1, "ok": 1, "n": 1,
             "accuracy": 1.0, "live_per_head": 1000.0, "kv_bytes": 23592960},
            {"task": "passkey", "policy": "none", "budget": 0, "length": 1024, "depth": 0.9, "ok": 0, "n": 1,
             "accuracy": 0.0, "live_per_head": 1002.0, "kv_bytes": 23592960},
            {"task": "passkey", "policy": "dms", "budget": 0, "length": 1024, "depth": 0.1, "ok": 1, "n": 2,
             "accuracy": 0.5, "live_per_head": 250.0, "kv_bytes": 6000000},
            {"task": "vartrack", "policy": "dms", "budget": 0, "length": 2048, "ok": 1, "n": 4, "accuracy": 0.25,
             "recall": 0.6, "live_per_head": 300.0, "kv_bytes": 7000000},
            {"task": "hyper", "policy": "dms", "budget": 0, "kv_mem": 20971520, "parallel": 16, "n": 20,
             "admitted": 5.5, "completed": 5.25, "no_fit": 0, "majority_ok": 13, "pass_ok": 17, "accuracy": 0.65,
             "pass_at_n": 0.85, "kv_bytes_per_seq": 3600000, "live_per_head": 140.0, "kv_bytes_peak": 20000000}]
        with open(ev, "w") as f:
            json.dump(task_rows, f)
        text = run("eval", ev).stdout
        expect("| none | 1/2 @ 1001 |" in text, f"passkey pooled over depths: {text}")
        expect("| dms | 1/2 @ 250 |" in text, "passkey dms row")
        expect("| none | 1/1 | 0/1 |" in text and "| dms | 1/2 |  |" not in text, "passkey by depth")
        expect("| dms | 1/4 (60%) @ 300 |" in text, "vartrack recall")
        expect("| dms | - | 20.00 MiB | 16 | 5.50 | 5.25 | 3.43 MiB | 140 | 13/20 (65%) | 17/20 (85%) |" in text,
               f"hyper row: {text}")
        expect(run("eval", bad, check=False).returncode != 0, "eval on a bad file fails")

        if not shutil.which("gnuplot"):
            print("SKIPPED the plot checks: gnuplot is not installed (tools/setup.sh --plots installs it)")
            return 77
        outdir = os.path.join(tmp, "img")
        files = run("plot", path, "--out", outdir, "--name", "t", "--eval", ev).stdout.split()
        want = {f"t-{k}.{e}" for e in ("svg", "png")
                for k in ("tg-depth", "pareto", "eval-passkey", "eval-vartrack", "eval-hyper")}
        expect({os.path.basename(x) for x in files} == want, f"plot files: {files}")
        for x in files:
            with open(x, "rb") as f:
                head = f.read(512)
            if x.endswith(".png"):
                expect(head.startswith(b"\x89PNG"), f"{x} is a PNG")
            else:
                expect(b"<svg" in head, f"{x} is an SVG")
            expect(os.path.getsize(x) < 200_000, f"{x} is small")
            if x.endswith("tg-depth.svg"):   # the provenance caption: date, machine, commit, command
                with open(x, encoding="utf-8") as f:
                    svg = f.read()
                expect("2026-11-23" in svg and "AMD EPYC" in svg and "abc1234" in svg, "caption: date, machine, commit")
                expect("2 commands, in the rows" in svg, "caption: the commands")
        print("ok")
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
