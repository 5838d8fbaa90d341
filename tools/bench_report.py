#!/usr/bin/env python3
"""bench_report.py — tables and plots from `lethe bench` JSON rows.

    tools/bench_report.py tables ROWS.jsonl...            markdown for docs/BENCHMARKS.md
    tools/bench_report.py update docs/BENCHMARKS.md       regenerate its marked blocks in place
    tools/bench_report.py plot [ROWS.jsonl...] --out DIR [--name PREFIX] [--eval EVAL.json...] [--tables]
    tools/bench_report.py check                           can `plot` run here? (one line and exit 1 if not)
    tools/bench_report.py eval EVAL.json...               markdown tables of `lethe eval -o json`

ROWS files hold the rows of `lethe bench -o jsonl` (or `--jsonl FILE`), or
the array of `-o json`; peer rows (engine "llama.cpp") come in the same
files. `tables` prints, per (date, commit, command) run: the provenance
(date, machine, commit, command), the rows, and a backend x device table
of t/s. `plot` writes, with gnuplot (Debian: gnuplot-nox, installed by
`tools/setup.sh --plots`), SVG and PNG files into DIR:

    PREFIX-tg-depth.svg/.png   tg t/s against depth, one line per engine and KV policy
    PREFIX-pp-depth.svg/.png   the same for pp rows (when there are any)
    PREFIX-pareto.svg/.png     with --eval (`lethe eval -o json` output): KL to
                               `none` against compression, one point per policy
    PREFIX-eval-TASK.svg/.png  with --eval: accuracy against KV memory for each
                               task that has rows (passkey, vartrack, arith: KV
                               bytes per sequence at the question; hyper: the
                               --kv-mem pool, majority vote), one line per policy
    PREFIX.md                  with --tables: what `tables` prints (provenance, rows,
                               the backend x device table)

This script is the one definition of the plots: `lethe bench --plot DIR`
runs it (installed as <prefix>/share/lethe/bench_report.py, and copied to
the same place in the build tree) on the rows it has just measured.

`update` rewrites every block of a markdown file between
    <!-- bench-report: tables docs/data/a.jsonl docs/data/b.jsonl -->
    <!-- /bench-report -->
with what `tables` prints for those files (paths relative to the repository
root), so the tables in docs/BENCHMARKS.md always come from the committed JSON.

Only the standard library: CI and GPU machines have python3, nothing more.
"""
import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys


def load_rows(paths):
    rows = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        stripped = text.lstrip()
        if stripped.startswith("["):
            rows.extend(json.loads(text))
            continue
        for n, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                sys.exit(f"bench_report: {path}:{n}: not a JSON row ({e})")
    return rows


def human_bytes(b):
    if b is None:
        return ""
    for unit, div in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if b >= div:
            return f"{b / div:.2f} {unit}"
    return f"{b:.0f} B"


def num(v, fmt):
    return "" if v is None else format(v, fmt)


def ts_cell(r):
    return f"{r['avg_ts']:.2f} ± {r['stddev_ts']:.2f}"


def group_runs(rows):
    """Runs in file order, keyed by (date, commit, command) of the lethe rows.
    A peer's rows come before ours in a run (it runs first): they join the
    next lethe run of the same command."""
    runs = collections.OrderedDict()
    pending = []
    for r in rows:
        if r.get("engine") != "lethe":
            pending.append(r)
            continue
        key = (r.get("date", ""), r.get("commit", ""), r.get("command", ""))
        if key not in runs:
            runs[key] = [p for p in pending if p.get("command") == key[2]]
            pending = [p for p in pending if p.get("command") != key[2]]
        runs[key].append(r)
    for p in pending:
        runs.setdefault((p.get("date", ""), p.get("commit", ""), p.get("command", "")), []).append(p)
    return runs


def cmd_tables(args):
    rows = load_rows(args.rows)
    if not rows:
        sys.exit("bench_report: no rows")
    out = []
    for (date, commit, command), rs in group_runs(rows).items():
        ours = [r for r in rs if r.get("engine") == "lethe"] or rs
        devices = sorted({f"{r['backend']} {r.get('device', 0)}: {r.get('device_name', '')}" for r in ours})
        models = sorted({f"{r['model']} ({human_bytes(r.get('size_bytes'))}, {os.path.basename(r.get('model_file', ''))})"
                         for r in ours})
        out.append(f"- Date: {date}; lethe commit {commit}")
        out.append(f"- Machine: {'; '.join(devices)}")
        out.append(f"- Model: {'; '.join(models)}")
        out.append(f"- Command: `{command}`")
        out.append("")
        # GPU runs timed by the device's clock get its two columns (bench.h)
        dev = any(r.get("device_busy_pct") is not None for r in rs)
        out.append("| test | engine | backend | threads | kv policy | t/s | KV resident | KV reads/tok | CR | GB/s "
                   "| % roofline |" + (" device busy % | device GB/s |" if dev else "") + " ratio |")
        out.append("| ---- | ------ | ------- | ------: | --------- | --: | ----------: | -----------: | -: | ---: "
                   "| ---------: |" + (" ------------: | ----------: |" if dev else "") + " ----: |")
        for r in rs:
            dcells = (f" {num(r.get('device_busy_pct'), '.1f')} | {num(r.get('device_gbps'), '.2f')} |" if dev else "")
            out.append(f"| {r['test']} | {r['engine']} | {r['backend']} | {r['n_threads']} | {r['kv_policy']} | "
                       f"{ts_cell(r)} | {human_bytes(r.get('kv_bytes'))} | {num(r.get('kv_reads_per_token'), '.0f')} | "
                       f"{num(r.get('compression'), '.2f')} | {num(r.get('gbps'), '.2f')} | "
                       f"{num(r.get('roofline_pct'), '.1f')} |{dcells} {num(r.get('ratio'), '.2f')} |")
        out.append("")
    # backend x device: mean t/s of lethe's rows per test, one column per device
    ours = [r for r in rows if r.get("engine") == "lethe"]
    cols = sorted({(r["backend"], r.get("device_name", "")) for r in ours})
    if len(cols) > 1:
        tests = list(collections.OrderedDict((f"{r['test']} ({r['kv_policy']})", None) for r in ours))
        cell = collections.defaultdict(list)
        for r in ours:
            cell[(f"{r['test']} ({r['kv_policy']})", (r["backend"], r.get("device_name", "")))].append(r["avg_ts"])
        out.append("| test | " + " | ".join(f"{b} · {d}" for b, d in cols) + " |")
        out.append("| ---- | " + " | ".join("--:" for _ in cols) + " |")
        for t in tests:
            vals = [cell.get((t, c)) for c in cols]
            out.append(f"| {t} | " + " | ".join(f"{sum(v) / len(v):.2f}" if v else "" for v in vals) + " |")
        out.append("")
    print("\n".join(out).rstrip())


def tables_text(paths):
    import contextlib
    import io
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        cmd_tables(argparse.Namespace(rows=paths))
    return buf.getvalue().rstrip("\n")


def cmd_update(args):
    import re
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(args.doc, encoding="utf-8") as f:
        text = f.read()
    pat = re.compile(r"(<!-- bench-report: tables ([^>]*?) -->\n)(.*?)(<!-- /bench-report -->)", re.S)
    n = 0

    def repl(m):
        nonlocal n
        n += 1
        paths = [p if os.path.isabs(p) else os.path.join(root, p) for p in m.group(2).split()]
        return m.group(1) + "\n" + tables_text(paths) + "\n\n" + m.group(4)

    new = pat.sub(repl, text)
    if n == 0:
        sys.exit(f"bench_report: no '<!-- bench-report: tables FILE... -->' block in {args.doc}")
    if new != text:
        with open(args.doc, "w", encoding="utf-8") as f:
            f.write(new)
    print(f"{args.doc}: {n} block(s) regenerated")


GNUPLOT_MISSING = "bench_report: gnuplot not found: install it with tools/setup.sh --plots (Debian: gnuplot-nox)"


def gnuplot(script, what):
    exe = shutil.which("gnuplot")
    if not exe:
        sys.exit(GNUPLOT_MISSING)
    p = subprocess.run([exe], input=script, text=True, capture_output=True)
    if p.returncode != 0:
        sys.exit(f"bench_report: gnuplot failed on {what}: {p.stderr.strip().splitlines()[-1] if p.stderr else p.returncode}")


def esc(s):   # for a double-quoted gnuplot string (enhanced text is off)
    return s.replace("\\", "\\\\").replace('"', '\\"')


def provenance(rows):
    """The caption every figure carries: date(s), machine, lethe commit(s), command(s)."""
    ours = [r for r in rows if r.get("engine") == "lethe"] or rows
    dates = sorted({r.get("date", "")[:10] for r in ours if r.get("date")})
    commits = sorted({r.get("commit", "") for r in ours if r.get("commit")})
    devices = sorted({r.get("device_name", "") for r in ours if r.get("device_name")})
    cmds = list(collections.OrderedDict((r.get("command", ""), None) for r in ours if r.get("command")))
    cmd = cmds[0] if len(cmds) == 1 else f"{len(cmds)} commands, in the rows' json"
    cmd = re.sub(r"(?<![\w.])/(?:[^\s/]+/)+", "", cmd)   # folders left out: the width of a figure
    if len(cmd) > 125:
        cmd = cmd[:122] + "..."
    when = dates[0] if len(dates) == 1 else (f"{dates[0]}..{dates[-1]}" if dates else "?")
    return f"{when} · {'; '.join(devices) or '?'} · lethe {', '.join(commits) or '?'}\n{cmd}"


def plot_lines(series, title, xlabel, ylabel, base, logx=False, caption=""):
    """series: {label: [(x, y, sd), ...]} → base.svg and base.png, `caption`
    (provenance) in small print under the plot."""
    data = base + ".dat"
    with open(data, "w", encoding="utf-8") as f:
        for label, pts in series.items():
            f.write(f"# {label}\n")
            # several runs of one point (alternated invocations): their mean,
            # with the root-mean-square of their sds
            by_x = collections.OrderedDict()
            for x, y, sd in pts:
                by_x.setdefault(x, []).append((y, sd))
            for x in sorted(by_x):
                ys = by_x[x]
                y = sum(v for v, _ in ys) / len(ys)
                sd = (sum(d * d for _, d in ys) / len(ys)) ** 0.5
                f.write(f"{x} {y} {sd}\n")
            f.write("\n\n")
    plots = ", ".join(f"'{data}' index {i} using 1:2:3 with yerrorlines title \"{esc(label)}\""
                      for i, label in enumerate(series))
    common = (f"set title \"{esc(title)}\"\nset xlabel \"{xlabel}\"\nset ylabel \"{ylabel}\"\n"
              "set termoption noenhanced\nset grid\nset key outside right top\nset yrange [0:*]\n" + ("set logscale x 2\n" if logx else "") +
              (f"set bmargin 6\nset label 1 \"{esc(caption).replace(chr(10), chr(92) + 'n')}\" at screen 0.01, screen 0.05 left font ',7'\n" if caption else ""))
    for term, ext in (("svg size 720,420 dynamic font 'sans,11'", "svg"), ("pngcairo size 720,420 font 'sans,9'", "png")):
        gnuplot(f"set terminal {term}\nset output '{base}.{ext}'\n{common}plot {plots}\n", f"{base}.{ext}")
    os.remove(data)
    return [base + ".svg", base + ".png"]


EVAL_TASKS = ("passkey", "vartrack", "arith", "hyper")


def load_eval(paths):
    rows = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                sys.exit(f"bench_report: {path}: not `lethe eval -o json` output ({e})")
        if not isinstance(data, list):
            sys.exit(f"bench_report: {path}: not `lethe eval -o json` output (expected a JSON array)")
        rows.extend(data)
    return rows


def eval_points(rows, task):
    """{policy: [(MiB, accuracy %), ...]}: passkey/vartrack rows of one length
    are pooled over depths (weighted by trials)."""
    acc = collections.OrderedDict()
    for e in rows:
        if e.get("task") != task or not e.get("n"):
            continue
        if task == "hyper":
            key, mem = (e["policy"], e["kv_mem"]), e["kv_mem"]
        else:
            key, mem = (e["policy"], e.get("length", 0)), e["kv_bytes"]
        a = acc.setdefault(key, [0.0, 0, 0.0])
        a[0] += e["accuracy"] * e["n"]
        a[1] += e["n"]
        a[2] += mem * e["n"]
    series = collections.OrderedDict()
    for key, (ok, n, mem) in acc.items():
        series.setdefault(key[0], []).append((mem / n / 1048576.0, 100.0 * ok / n, 0.0))
    return series


def cmd_eval(args):
    rows = load_eval(args.files)
    out = []
    for task in EVAL_TASKS:
        rs = [e for e in rows if e.get("task") == task and e.get("n")]
        if not rs:
            continue
        if task == "hyper":
            out.append("hyper: best-of-N arithmetic in one KV pool: sequences admitted and finished per problem "
                       "(means), majority vote and pass@N")
            out.append("")
            out.append("| policy | budget | KV pool | sequences asked | admitted | finished | KV/seq | live/head "
                       "| majority | pass@N |")
            out.append("| ------ | -----: | ------: | --------------: | -------: | -------: | -----: | --------: "
                       "| -------: | -----: |")
            for e in rs:
                out.append(f"| {e['policy']} | {e['budget'] or '-'} | {human_bytes(e['kv_mem'])} | {e['parallel']} | "
                           f"{e['admitted']:.2f} | {e['completed']:.2f} | {human_bytes(e['kv_bytes_per_seq'])} | "
                           f"{e['live_per_head']:.0f} | {e['majority_ok']}/{e['n']} ({100 * e['accuracy']:.0f}%) | "
                           f"{e['pass_ok']}/{e['n']} ({100 * e['pass_at_n']:.0f}%) |")
            out.append("")
            continue
        # one row per policy, one column per prompt length (passkey/vartrack) or one column (arith)
        cols = list(collections.OrderedDict((e.get("length", 0), None) for e in rs))
        cell = collections.OrderedDict()
        for e in rs:
            c = cell.setdefault((e["policy"], e.get("length", 0)), {"ok": 0, "n": 0, "rec": 0.0, "live": 0.0, "b": 0.0})
            c["ok"] += e["ok"]
            c["n"] += e["n"]
            c["rec"] += e.get("recall", 0.0) * e["n"]
            c["live"] += e["live_per_head"] * e["n"]
            c["b"] += e["budget"] * e["n"]
        policies = list(collections.OrderedDict((p, None) for p, _ in cell))
        head = [f"{L} tokens" if L else "accuracy" for L in cols]
        out.append(f"{task}: right/total{' (names recalled)' if task == 'vartrack' else ''} "
                   "and mean live tokens per head at the question")
        out.append("")
        out.append("| policy | " + " | ".join(head) + " |")
        out.append("| ------ | " + " | ".join("--:" for _ in head) + " |")
        for p in policies:
            cells = []
            for L in cols:
                c = cell.get((p, L))
                if not c:
                    cells.append("")
                    continue
                rec = f" ({100 * c['rec'] / c['n']:.0f}%)" if task == "vartrack" else ""
                cells.append(f"{c['ok']}/{c['n']}{rec} @ {c['live'] / c['n']:.0f}")
            out.append(f"| {p} | " + " | ".join(cells) + " |")
        out.append("")
        if task == "passkey" and len({e.get("depth") for e in rs}) > 1:
            depths = sorted({e["depth"] for e in rs})
            out.append("passkey by needle depth (all lengths): right/total")
            out.append("")
            out.append("| policy | " + " | ".join(f"{100 * d:.0f}%" for d in depths) + " |")
            out.append("| ------ | " + " | ".join("--:" for _ in depths) + " |")
            for p in policies:
                cells = []
                for d in depths:
                    sel = [e for e in rs if e["policy"] == p and e["depth"] == d]
                    cells.append(f"{sum(e['ok'] for e in sel)}/{sum(e['n'] for e in sel)}")
                out.append(f"| {p} | " + " | ".join(cells) + " |")
            out.append("")
    if not out:
        sys.exit("bench_report: no task rows (passkey, vartrack, arith, hyper) in the eval files")
    print("\n".join(out).rstrip())


def cmd_plot(args):
    rows = load_rows(args.rows)
    os.makedirs(args.out, exist_ok=True)
    written = []
    for kind, key in (("tg", "n_gen"), ("pp", "n_prompt")):
        rs = [r for r in rows if r.get(key, 0) > 0]
        if not rs:
            continue
        series = collections.OrderedDict()
        for r in rs:
            label = f"{r['engine']} {r['kv_policy']}"
            if r.get("n_parallel", 1) > 1:
                label += f" x{r['n_parallel']}"
            if len({x['backend'] for x in rs if x['engine'] == 'lethe'}) > 1 and r["engine"] == "lethe":
                label += f" ({r['backend']})"
            series.setdefault(label, []).append((r["n_depth"], r["avg_ts"], r["stddev_ts"]))
        sizes = sorted({r[key] for r in rs})
        ours = [r for r in rs if r["engine"] == "lethe"] or rs
        model = ours[0]["model"]
        dev = ours[0].get("device_name", "")
        title = f"{kind}{'/'.join(map(str, sizes))} t/s against depth — {model}, {dev}"
        base = os.path.join(args.out, f"{args.name}-{kind}-depth")
        written += plot_lines(series, title, "depth (tokens in the cache)", "tokens per second", base,
                              caption=provenance(rs))
    if args.eval:
        series = collections.OrderedDict()
        for path in args.eval:
            with open(path, encoding="utf-8") as f:
                for e in json.load(f):
                    if e.get("policy") == "none" or e.get("kl") is None or e.get("compression") is None:
                        continue
                    label = e["policy"]
                    series.setdefault(label, []).append((e["compression"], e["kl"], 0.0))
        if series:
            base = os.path.join(args.out, f"{args.name}-pareto")
            written += plot_lines(series, "memory against accuracy (lethe eval)", "compression (tokens seen / live)",
                                  "KL to the full cache (nats/token)", base, logx=True)
        rows = load_eval(args.eval)
        for task in EVAL_TASKS:
            series = eval_points(rows, task)
            if not series:
                continue
            xl = "KV pool (MiB, --kv-mem)" if task == "hyper" else "KV bytes per sequence at the question (MiB)"
            yl = "majority-vote accuracy (%)" if task == "hyper" else "accuracy (%)"
            base = os.path.join(args.out, f"{args.name}-eval-{task}")
            written += plot_lines(series, f"{task}: accuracy against KV memory (lethe eval)", xl, yl, base)
    if not written:
        sys.exit("bench_report: nothing to plot (no tg/pp rows, no eval data)")
    if args.tables:
        md = os.path.join(args.out, f"{args.name}.md")
        with open(md, "w", encoding="utf-8") as f:
            f.write(tables_text(args.rows) + "\n")
        written.append(md)
    for w in written:
        print(w)


def cmd_check(args):
    """What `plot` needs beyond this script: gnuplot with its SVG and PNG
    terminals. Exit 0 silently, or one line on stderr and exit 1 (before a
    long `lethe bench --plot` sweep, not after it)."""
    exe = shutil.which("gnuplot")
    if not exe:
        sys.exit(GNUPLOT_MISSING)
    p = subprocess.run([exe], input="set terminal svg\nset terminal pngcairo\n", text=True, capture_output=True)
    if p.returncode != 0:
        last = p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"exit status {p.returncode}"
        sys.exit(f"bench_report: {exe} lacks the svg or pngcairo terminal: {last}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("tables", help="markdown tables for docs/BENCHMARKS.md")
    t.add_argument("rows", nargs="+")
    t.set_defaults(fn=cmd_tables)
    u = sub.add_parser("update", help="regenerate the marked table blocks of a markdown file")
    u.add_argument("doc")
    u.set_defaults(fn=cmd_update)
    p = sub.add_parser("plot", help="SVG and PNG plots (gnuplot)")
    p.add_argument("rows", nargs="*", help="bench rows (none: only the --eval plots)")
    p.add_argument("--out", required=True)
    p.add_argument("--name", default="bench")
    p.add_argument("--eval", nargs="*", default=[], help="lethe eval -o json outputs (Pareto view)")
    p.add_argument("--tables", action="store_true", help="also write PREFIX.md with the tables")
    p.set_defaults(fn=cmd_plot)
    c = sub.add_parser("check", help="exit 0 if `plot` can run here, else one line and exit 1")
    c.set_defaults(fn=cmd_check)
    e = sub.add_parser("eval", help="markdown tables of lethe eval -o json (task rows)")
    e.add_argument("files", nargs="+")
    e.set_defaults(fn=cmd_eval)
    args = ap.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
