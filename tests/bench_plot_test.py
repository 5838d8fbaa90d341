#!/usr/bin/env python3
"""bench_plot_test.py — `lethe bench --plot DIR` end to end (LETHE_BIN, LETHE_TEST_MODEL).

Always checked: the flag's usage errors (exit 2, nothing measured), an
unwritable DIR (exit 1 before anything runs), and a machine without gnuplot,
python3 or the script: one `lethe: error:` line that says why, printed before
the sweep, the rows still on stdout and in DIR/NAME.jsonl (the same numbers),
exit 1. With gnuplot (tools/setup.sh --plots): the build tree's
share/lethe/bench_report.py is found next to bin/lethe, the SVG/PNG plots and
NAME.md appear, NAME.jsonl equals the rows printed on stdout, and the md
table's t/s are those rows' numbers. Without gnuplot that last part is skipped
and the test exits 77 (ctest: skipped) after the rest passed."""
import json
import os
import shutil
import subprocess
import sys
import tempfile

BIN = os.environ.get("LETHE_BIN", "")
MODEL = os.environ.get("LETHE_TEST_MODEL", "")
CACHE = tempfile.mkdtemp(prefix="lethe-plot-cache-")


def expect(cond, what):
    if not cond:
        sys.exit(f"FAIL: {what}")


def bench(*args, env=None, path=None):
    e = dict(os.environ if env is None else env)
    e["OMP_WAIT_POLICY"] = "passive"
    e["LETHE_CACHE"] = CACHE   # no roofline cached: the first load always warns
    if path is not None:
        e["PATH"] = path
    return subprocess.run([BIN, "bench", "-m", MODEL, "-r", "1", "-t", "1", "--no-progress", *args],
                          capture_output=True, text=True, env=e)


def errors(p):
    return [l for l in p.stderr.splitlines() if l.startswith("lethe: error: ")]


def one_error(p, status, needle):
    errs = errors(p)
    expect(p.returncode == status, f"exit {p.returncode}, expected {status}; stderr: {p.stderr}")
    expect(len(errs) == 1, f"exactly one error line, got {errs}")
    expect(needle in errs[0], f"'{needle}' in the error line: {errs[0]}")
    return errs[0]


def jsonl(text):
    return [json.loads(l) for l in text.splitlines() if l.strip()]


def rows_kept(p, plot_dir, name="bench"):
    """stdout (-o jsonl) and DIR/NAME.jsonl hold the same rows."""
    ours = jsonl(p.stdout)
    with open(os.path.join(plot_dir, f"{name}.jsonl"), encoding="utf-8") as f:
        kept = jsonl(f.read())
    expect(len(ours) > 0 and ours == kept, f"DIR/{name}.jsonl = the rows printed ({len(kept)} vs {len(ours)})")
    return ours


def main():
    expect(os.access(BIN, os.X_OK), f"LETHE_BIN ({BIN}) is not an executable")
    expect(os.access(MODEL, os.R_OK), f"LETHE_TEST_MODEL ({MODEL}) not found; run tools/fetch-model.sh")
    tmp = tempfile.mkdtemp(prefix="lethe-plot-")
    try:
        # usage errors: exit 2, nothing on stdout
        for args, needle in ((("--plot", os.path.join(tmp, "u"), "--roofline"), "--roofline"),
                             (("--plot", os.path.join(tmp, "u"), "--plot-name", "a/b"), "--plot-name"),
                             (("--plot-name", "x"), "--plot-name needs --plot"),
                             (("--plot", ""), "--plot")):
            p = bench(*args)
            one_error(p, 2, needle)
            expect(p.stdout == "", f"nothing on stdout for {args}")
        expect(not os.path.exists(os.path.join(tmp, "u")), "a usage error makes no folder")

        # DIR cannot be a folder (a file is there): exit 1 before anything runs
        afile = os.path.join(tmp, "afile")
        open(afile, "w").close()
        p = bench("-p", "0", "-n", "2", "--plot", afile, "-o", "jsonl")
        one_error(p, 1, "cannot write")
        expect(p.stdout == "", "no rows when the rows file cannot be written")

        # no gnuplot on PATH (python3 is): one line that says so, rows kept, exit 1
        nognu = os.path.join(tmp, "bin-nognu")
        os.mkdir(nognu)
        os.symlink(sys.executable, os.path.join(nognu, "python3"))
        d = os.path.join(tmp, "p1")
        p = bench("-p", "0", "-n", "2", "-d", "0,4", "--plot", d, "-o", "jsonl", path=nognu)
        err = one_error(p, 1, "gnuplot not found")
        expect(f"{d}/bench.jsonl" in err, "the line says where the rows are")
        expect(len(rows_kept(p, d)) == 2, "both rows measured")
        expect(sorted(os.listdir(d)) == ["bench.jsonl"], f"no plots: {os.listdir(d)}")
        # the error comes before the sweep: ahead of the warnings the first row's load prints
        expect(p.stderr.index("lethe: error: ") < p.stderr.index("lethe: warning: no roofline"),
               "the gnuplot check runs before the sweep")

        # no python3 at all, and a missing script: the same shape
        d = os.path.join(tmp, "p2")
        p = bench("-p", "0", "-n", "2", "--plot", d, "-o", "jsonl", path=os.path.join(tmp, "empty"))
        one_error(p, 1, "python3")
        rows_kept(p, d)
        env = dict(os.environ, LETHE_BENCH_REPORT=os.path.join(tmp, "no-such.py"))
        d = os.path.join(tmp, "p3")
        p = bench("-p", "0", "-n", "2", "--plot", d, "-o", "jsonl", env=env)
        one_error(p, 1, "no-such.py")
        rows_kept(p, d)

        if not shutil.which("gnuplot"):
            print("SKIPPED the plot checks: gnuplot is not installed (tools/setup.sh --plots installs it)")
            return 77

        # the real thing: the script found next to bin/ (no $LETHE_BENCH_REPORT)
        env = {k: v for k, v in os.environ.items() if k != "LETHE_BENCH_REPORT"}
        d = os.path.join(tmp, "p4", "nested")
        p = bench("-p", "4", "-n", "2", "-d", "0,8", "--kv-policy", "none,window", "--kv-budget", "6",
                  "--plot", d, "--plot-name", "t", "-o", "jsonl", env=env)
        expect(p.returncode == 0 and not errors(p), f"bench --plot failed: {p.stderr}")
        rows = rows_kept(p, d, "t")
        expect(len(rows) == 8, f"2 policies x (pp4, tg2) x 2 depths = 8 rows, got {len(rows)}")
        want = {f"t-{k}-depth.{e}" for k in ("tg", "pp") for e in ("svg", "png")} | {"t.md", "t.jsonl"}
        expect(set(os.listdir(d)) == want, f"files: {sorted(os.listdir(d))}")
        for name in want - {"t.md", "t.jsonl"}:
            expect(name in p.stderr, f"{name} listed on stderr")
            with open(os.path.join(d, name), "rb") as f:
                head = f.read()
            if name.endswith(".png"):
                expect(head.startswith(b"\x89PNG"), f"{name} is a PNG")
            else:
                expect(b"<svg" in head[:512], f"{name} is an SVG")
                expect(b"lethe none" in head and b"lethe window 6" in head, f"{name} has one line per policy")
        with open(os.path.join(d, "t.md"), encoding="utf-8") as f:
            md = f.read()
        table = [l for l in md.splitlines() if l.startswith("| ") and " lethe " in l]
        expect(len(table) == len(rows), "one md row per measured row")
        for line, r in zip(table, rows):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            ts = float(cells[5].split("±")[0])
            expect(cells[0] == r["test"] and cells[4] == r["kv_policy"], f"md row {cells[0]} is {r['test']}")
            expect(abs(ts - r["avg_ts"]) < 0.0051, f"md t/s {ts} = json {r['avg_ts']}")
        print("ok")
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(CACHE, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
