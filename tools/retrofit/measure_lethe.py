#!/usr/bin/env python3
"""measure_lethe.py — a retrofitted DMS adapter measured THROUGH LETHE on
held-out text, against vanilla and the training-free policies at equal KV memory.

    python measure_lethe.py --adapter A.safetensors --text heldout.txt --tokenizer HF_DIR \\
        [--gguf MODEL] [--ctx 1024] [--rows 4] [--out results.json]

For each of ROWS held-out sequences of CTX tokens, `lethe logits` gives every
position's logits under: none (vanilla), dms (the adapter), and window / tova /
h2o with --kv-budget = DMS's mean live tokens per head at the end of the
sequence (from `lethe generate --kv-stats` on the same tokens), so the final
KV memory is equal. tova and h2o run with -b 1 (one token per decode call: the
rule's own step; a bigger batch would attend a whole chunk before cutting it).
Reported per policy, over positions past the DMS window: KL(policy || vanilla)
in nats/token, greedy (argmax) agreement with vanilla, perplexity of the text.
"""
import argparse
import json
import os
import re
import subprocess
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))


def run(cmd):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if r.returncode:
        raise SystemExit(f"{' '.join(cmd[:6])} ... failed: {r.stderr[-2000:]}")
    return r


def logits(lethe, gguf, toks, V, extra, threads):
    fd, out = tempfile.mkstemp(suffix=".f32")
    os.close(fd)
    try:
        run([lethe, "logits", "-m", gguf, "-t", str(threads), "-c", str(len(toks)), "--tokens",
             ",".join(map(str, toks)), "-o", out, *extra])
        return np.fromfile(out, dtype="<f4").reshape(len(toks), V)
    finally:
        os.unlink(out)


FILLER = ("The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. ")


def passkey(a, tok, budget, trials, n_tokens):
    """Passkey retrieval: a 5-digit key hidden at a random depth of ~n_tokens of
    filler; greedy continuation of "The pass key is" must contain it.
    Prompts are fed in chunks of 64 (tova/h2o cut the cache after each chunk)."""
    import random
    rng = random.Random(1234)
    per = len(tok.encode(FILLER).ids)
    reps = max(1, (n_tokens - 40) // per)
    res = {}
    prompts = []
    for t in range(trials):
        key = rng.randint(10000, 99999)
        depth = rng.randint(0, reps - 1)
        body = FILLER * depth + f"The pass key is {key}. Remember it. {key} is the pass key. " + FILLER * (reps - depth)
        prompts.append((key, "There is a pass key hidden in this text. Find it and memorize it.\n" + body +
                        "\nWhat is the pass key? The pass key is"))
    pols = a.policies.split(",")
    pols = (["dms"] if "dms" in pols else []) + [p for p in pols if p != "dms"]
    lives = []
    for pol in pols:
        if pol != "dms" and lives:       # equal memory: DMS's mean live tokens per head on these prompts
            budget = max(int(round(sum(lives) / len(lives))), 8)
        extra = {"none": ["--kv-policy", "none"], "dms": ["--dms-adapter", a.adapter, "--kv-stats"],
                 "window": ["--kv-policy", "window", "--kv-budget", str(budget)],
                 "tova": ["--kv-policy", "tova", "--kv-budget", str(budget)],
                 "h2o": ["--kv-policy", "h2o", "--kv-budget", str(budget)]}[pol]
        ok = 0
        for key, prompt in prompts:
            with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as tf:
                tf.write(prompt)
            try:
                r = run([a.lethe, "generate", "-m", a.gguf, "-t", str(a.threads), "-c", str(n_tokens + 256),
                         "-n", "8", "--temp", "0", "-b", "64", "-f", tf.name, *extra])
            finally:
                os.unlink(tf.name)
            ok += str(key) in r.stdout[-200:]
            m = re.search(r"([\d.]+) live per head", r.stderr)
            if pol == "dms" and m:
                lives.append(float(m.group(1)))
        res[pol] = ok / len(prompts)
        res["budget"] = budget
        print(f"passkey {pol:6s} budget {budget}: {ok}/{len(prompts)}", flush=True)
    return res


def log_softmax(x):
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--text", required=True)
    ap.add_argument("--tokenizer", required=True, help="HF dir with the model's tokenizer (gguf_to_hf.py output)")
    ap.add_argument("--gguf", default=os.path.expanduser("~/.cache/lethe/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--lethe", default=os.path.join(ROOT, "build", "bin", "lethe"))
    ap.add_argument("--ctx", type=int, default=1024)
    ap.add_argument("--rows", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--policies", default="none,dms,window,tova,h2o")
    ap.add_argument("--passkey", type=int, default=0, help="passkey trials per policy (0: skip)")
    ap.add_argument("--passkey-tokens", type=int, default=1024)
    ap.add_argument("--out")
    a = ap.parse_args()
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(os.path.join(a.tokenizer, "tokenizer.json"))
    ids = tok.encode(open(a.text).read()).ids
    rows = [ids[i * a.ctx:(i + 1) * a.ctx] for i in range(min(a.rows, len(ids) // a.ctx))]
    from safetensors import safe_open
    with safe_open(a.adapter, "np") as f:
        window = int(f.metadata().get("dms_window_size", "512"))
    V = None
    acc = {}
    budgets = []
    for r, toks in enumerate(rows):
        # DMS's memory at the end of the row, through the engine
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as tf:
            tf.write(tok.decode(toks, skip_special_tokens=False))
        try:
            p = run([a.lethe, "generate", "-m", a.gguf, "--dms-adapter", a.adapter, "-t", str(a.threads),
                     "-c", str(len(toks) + 64), "-n", "1", "--temp", "0", "--kv-stats", "-f", tf.name])
        finally:
            os.unlink(tf.name)
        m = re.search(r"(\d+) tokens seen, ([\d.]+) live per head \(compression ([\d.]+)x\)", p.stderr)
        if not m:
            raise SystemExit("no --kv-stats line in lethe generate's output:\n" + p.stderr[-1500:])
        seen, live, cr = int(m.group(1)), float(m.group(2)), float(m.group(3))
        budget = max(int(round(live)), 8)
        budgets.append({"tokens_seen": seen, "mean_live": live, "cr": cr, "budget": budget})
        ref = None
        for pol in a.policies.split(","):
            extra = {"none": ["--kv-policy", "none"], "dms": ["--dms-adapter", a.adapter],
                     "window": ["--kv-policy", "window", "--kv-budget", str(budget)],
                     "tova": ["--kv-policy", "tova", "--kv-budget", str(budget), "-b", "1"],
                     "h2o": ["--kv-policy", "h2o", "--kv-budget", str(budget), "-b", "1"]}[pol]
            if V is None:
                V = int(json.load(open(os.path.join(a.tokenizer, "config.json")))["vocab_size"])
            lg = logits(a.lethe, a.gguf, toks, V, extra, a.threads)
            lp = log_softmax(lg)
            if pol == "none":
                ref = lp
            s = slice(window + 1, len(toks) - 1)       # positions past the window, with a next token
            nxt = np.array(toks[window + 2:len(toks)])
            nll = -lp[s][np.arange(len(nxt)), nxt]
            kl = (np.exp(lp[s]) * (lp[s] - ref[s])).sum(-1)
            agree = (lp[s].argmax(-1) == ref[s].argmax(-1))
            d = acc.setdefault(pol, {"nll": [], "kl": [], "agree": []})
            d["nll"].append(nll)
            d["kl"].append(kl)
            d["agree"].append(agree)
            print(f"row {r} {pol:6s} budget {budget}: KL {kl.mean():.4f} agree {agree.mean() * 100:.1f}% "
                  f"ppl {np.exp(nll.mean()):.3f}", flush=True)
    res = {"ctx": a.ctx, "rows": len(rows), "window": window, "dms_memory": budgets, "policies": {}}
    for pol, d in acc.items():
        nll = np.concatenate(d["nll"])
        res["policies"][pol] = {"kl": float(np.concatenate(d["kl"]).mean()),
                                "greedy_agree": float(np.concatenate(d["agree"]).mean()),
                                "ppl": float(np.exp(nll.mean())), "positions": int(nll.size)}
    if a.passkey:
        budget = int(round(np.mean([b["budget"] for b in budgets]))) if budgets else 64
        res["passkey"] = {"tokens": a.passkey_tokens, "trials": a.passkey,
                          "accuracy": passkey(a, tok, budget, a.passkey, a.passkey_tokens)}
    print(json.dumps(res, indent=1))
    if a.out:
        json.dump(res, open(a.out, "w"), indent=1)


if __name__ == "__main__":
    main()
