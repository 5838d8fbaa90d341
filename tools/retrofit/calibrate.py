#!/usr/bin/env python3
"""calibrate.py — set a DMS adapter's decision offset so that it reaches a given
compression ratio at a given context, measured the engine's way.

    python calibrate.py --base HF_DIR --adapter IN.safetensors --data DATA_DIR \\
        --target-cr 4 --ctx 1024 --out OUT.safetensors [--rows 4] [--iters 4]

The logit is `scale * x - offset` (DESIGN.md §3.1.1) and a token is flagged when
it is > 0, so the offset is a threshold on the adapter's score x: raising it
flags fewer tokens, lowering it more. The one-sided compression loss of the
recipe lets a trained adapter settle above its target (it only pushes while
under it), and the trainer's target is the asymptotic CR 1/(1 - fraction),
while at a finite context the window counts as live (§3.1.7); this tool picks
the offset on TRAINING rows (never the held-out text the quality numbers use)
so that the mean CR at the end of a CTX-token row — tokens / mean live slots
per (layer, KV head), what `lethe --kv-stats` prints — is TARGET_CR.

Decisions of later layers depend on what earlier layers evicted, so the offset
is found by a few fixed-point rounds: one eval-mode forward at the current
offset, then the offset that would give the target if the scores stayed put
(bisection on the recorded scores), then again. The last round's CR is
reported; the adapter weights are unchanged, only the metadata's
dms_initial_alpha_offset.
"""
import argparse
import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import data as datamod  # noqa: E402
import dms_model as dm  # noqa: E402


def cr_at_offset(scores, window, offset):
    """scores: list over layers of [B, Hkv, T-1] float (scale * x of the tokens'
    flags, i.e. decision t flags token t-1, already shifted). CR at the row's
    end with flags scores - offset > 0."""
    return dm.achieved_cr([s > offset for s in scores], window)


def solve_offset(scores, window, target_cr, lo=-200.0, hi=200.0, iters=50):
    """The offset whose CR on these fixed scores is target_cr (CR falls as the
    offset rises)."""
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if cr_at_offset(scores, window, mid) > target_cr:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


@torch.no_grad()
def eval_scores(model, st, rows, amp):
    """One eval-mode forward per row at the model's current offset; returns
    the scores (logit + offset) of the flags, per layer [B, Hkv, T-1], and the CR."""
    per_layer = None
    crs = []
    for r in rows:
        st.mode = "eval"
        st.reset()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            model(r[None], logits_to_keep=1)
        crs.append(dm.achieved_cr(st.hard, st.window))
        sc = [(lg[..., 1:] + st.alpha_offset).float() for lg in st.logits]
        per_layer = sc if per_layer is None else [torch.cat([a, b]) for a, b in zip(per_layer, sc)]
    return per_layer, sum(crs) / len(crs)


def calibrate(model, st, rows, target_cr, iters=4, amp=False, log=print):
    hist = []
    for it in range(iters):
        scores, cr = eval_scores(model, st, rows, amp)
        hist.append({"offset": st.alpha_offset, "cr": cr})
        log(f"round {it}: offset {st.alpha_offset:.3f} -> CR {cr:.3f} (target {target_cr})")
        st.alpha_offset = solve_offset(scores, st.window, target_cr)
    scores, cr = eval_scores(model, st, rows, amp)
    hist.append({"offset": st.alpha_offset, "cr": cr})
    log(f"final: offset {st.alpha_offset:.3f} -> CR {cr:.3f}")
    return st.alpha_offset, cr, hist


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True)
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--data", required=True, help="directory with train.txt (data.py); rows come from it")
    ap.add_argument("--target-cr", type=float, required=True)
    ap.add_argument("--ctx", type=int, default=1024)
    ap.add_argument("--rows", type=int, default=4)
    ap.add_argument("--iters", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--amp", choices=("none", "bf16"), default="none")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    from safetensors import safe_open
    from transformers import AutoTokenizer
    with safe_open(a.adapter, "pt") as f:
        meta = dict(f.metadata() or {})
    model = dm.load_base(a.base)
    model.eval()
    st = dm.attach_dms(model, "adapter", window=int(meta.get("dms_window_size", 512)),
                       alpha_scale=float(meta.get("dms_alpha_scale", 100.0)),
                       alpha_offset=float(meta.get("dms_initial_alpha_offset", 5.0)),
                       alpha_per=meta.get("dms_alpha_per", "head"))
    dm.load_adapter(model, a.adapter)
    tok = AutoTokenizer.from_pretrained(a.base)
    train = datamod.pack(tok, os.path.join(a.data, "train.txt"), a.ctx, limit_tokens=a.ctx * (a.rows + 1) * 4)
    g = torch.Generator().manual_seed(12345)
    rows = train[torch.randperm(train.shape[0], generator=g)[: a.rows]]
    offset, cr, hist = calibrate(model, st, rows, a.target_cr, a.iters, a.amp == "bf16")
    extra = {k: v for k, v in meta.items() if k not in ("dms_window_size", "dms_alpha_scale",
                                                          "dms_initial_alpha_offset", "dms_alpha_per", "format")}
    extra.update({"calibrated_from": os.path.basename(a.adapter), "calibrated_cr": f"{cr:.3f}",
                  "calibrated_ctx": str(a.ctx), "calibrated_offset_was": meta.get("dms_initial_alpha_offset", "5.0")})
    dm.save_adapter(model, a.out, extra)
    json.dump({"offset": offset, "cr": cr, "target_cr": a.target_cr, "ctx": a.ctx, "rows": a.rows,
               "history": hist}, open(a.out + ".calib.json", "w"), indent=1)
    print(json.dumps({"offset": offset, "cr": cr}))


if __name__ == "__main__":
    main()
