#!/usr/bin/env python3
"""oracle_init.py — a cheap starting point for the DMS adapter (our addition,
not NVIDIA's recipe): fit each head's decision to the attention its keys get
from far queries in the vanilla model, by logistic regression. Forward passes
only, no backward through the network: on a CPU that is the difference between
hours and minutes.

    python oracle_init.py --base HF_DIR --data DATA_DIR --out ADAPTER.safetensors \\
        [--window 32] [--ctx 1024] [--rows 8] [--evict 0.8]

1. The vanilla model (eviction off) runs on ROWS training rows of CTX tokens;
   for every layer, KV head and key j it records the mean attention j receives
   from the queries more than `window` after it (averaged over the group's query
   heads) — the mass lost when DMS evicts j — and the adapter's input for j's
   decision: the layer input of token j+1 (one token of look-ahead, §3.1.3),
   RMS-normalised.
2. Labels: the fraction EVICT of all (layer, head, key) with the least far
   attention, one threshold for the whole model, so heads whose far attention is
   spread thin evict more and heads that look far back keep more (the budget is
   shared, as the reference's compression loss shares it). Keys with fewer than
   MIN_FAR far queries in the row are not used.
3. Per (layer, head), logistic regression of the label on the normalised input
   with the recipe's own logit `scale * w.x - offset` (no bias: the offset is
   the intercept), L2-regularised; the adapter gets W = w and a norm weight of 1.

The result is a normal adapter file; calibrate.py then sets the offset for a
CR at a context, and retrofit.py --init-adapter can fine-tune it by the recipe.
"""
import argparse
import json
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import data as datamod  # noqa: E402
import dms_model as dm  # noqa: E402


@torch.no_grad()
def collect(model, st, rows, min_far, amp=False):
    """Returns per layer: X [N, E] (normalised input of token j+1), A [N, Hkv]
    (far attention of key j), over the keys j with >= min_far far queries."""
    L = len(model.model.layers)
    X = [[] for _ in range(L)]
    A = [[] for _ in range(L)]
    xs = {}

    def grab(l):
        def hook(module, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            xs[l] = x.detach().float()
        return hook

    hooks = [layer.register_forward_pre_hook(grab(l), with_kwargs=True) for l, layer in enumerate(model.model.layers)]
    try:
        for r in rows:
            st.mode, st.capture_far = "teacher", True
            st.reset()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                model(r[None], logits_to_keep=1)
            T = r.shape[0]
            nkeys = T - 1 - st.window - min_far + 1          # keys j = 0 .. nkeys-1 have >= min_far far queries
            if nkeys <= 0:
                continue
            for l in range(L):
                x = xs[l][0, 1:nkeys + 1]                                           # token j+1, [n, E]
                X[l].append(x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))
                A[l].append(st.far_attn[l][0, :, :nkeys].T.float())                  # [n, Hkv]
    finally:
        st.capture_far = False
        for h in hooks:
            h.remove()
    return [torch.cat(x) for x in X], [torch.cat(a) for a in A]


def fit_head(x, y, weight, scale, offset, l2=1e-3, iters=200):
    """logistic regression, logit = scale * x.w - offset, on labels y (1 = evict)."""
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    xd, yd, wd = x.double(), y.double(), weight.double()
    opt = torch.optim.LBFGS([w], lr=1.0, max_iter=iters, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        z = scale * (xd @ w) - offset
        loss = (torch.nn.functional.binary_cross_entropy_with_logits(z, yd, reduction="none") * wd).sum() / wd.sum()
        loss = loss + l2 * (scale * w).pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        acc = (((scale * (xd @ w) - offset) > 0).double() == yd).double().mean().item()
    return w.detach().float(), acc


def oracle_init(model, st, rows, evict, min_far=32, first_weight=20.0, amp=False, log=print):
    X, A = collect(model, st, rows, min_far, amp)
    allA = torch.cat([a.flatten() for a in A])
    thr = torch.quantile(allA.double(), evict).item() if allA.numel() < 16_000_000 else \
        torch.kthvalue(allA, max(1, int(evict * allA.numel()))).values.item()
    log(f"{allA.numel()} (layer, head, key) samples; far-attention threshold {thr:.3g} for {evict:.0%} evicted")
    stats = []
    per_row = X[0].shape[0] // max(len(rows), 1)
    for l, layer in enumerate(model.model.layers):
        Wl = torch.zeros_like(layer.self_attn.dms_proj_alpha.weight)
        for h in range(A[l].shape[1]):
            y = (A[l][:, h] < thr).float()
            wt = torch.ones_like(y)
            wt[::per_row] = first_weight                 # key 0 of each row: the attention sink, few samples
            w, acc = fit_head(X[l], y, wt, st.alpha_scale, st.alpha_offset)
            Wl[h] = w
            stats.append({"layer": l, "head": h, "evict_label": y.mean().item(), "train_acc": acc})
        with torch.no_grad():
            layer.self_attn.dms_proj_alpha.weight.copy_(Wl)
            layer.self_attn.dms_proj_alpha_norm.weight.fill_(1.0)
        log(f"layer {l}: label evict {[round(s['evict_label'], 2) for s in stats[-A[l].shape[1]:]]} "
            f"acc {[round(s['train_acc'], 3) for s in stats[-A[l].shape[1]:]]}")
    return thr, stats


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--window", type=int, default=32)
    ap.add_argument("--ctx", type=int, default=1024)
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--evict", type=float, default=0.8, help="fraction of (layer, head, key) labelled evict")
    ap.add_argument("--min-far", type=int, default=32)
    ap.add_argument("--first-weight", type=float, default=20.0,
                    help="sample weight of each row's key 0 (the attention sink: one sample per row)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--amp", choices=("none", "bf16"), default="none")
    ap.add_argument("--seed", type=int, default=99)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    from transformers import AutoTokenizer
    t0 = time.time()
    model = dm.load_base(a.base)
    model.eval()
    st = dm.attach_dms(model, "adapter", window=a.window)
    tok = AutoTokenizer.from_pretrained(a.base)
    train = datamod.pack(tok, os.path.join(a.data, "train.txt"), a.ctx, limit_tokens=1_000_000)
    g = torch.Generator().manual_seed(a.seed)
    rows = train[torch.randperm(train.shape[0], generator=g)[: a.rows]]
    thr, stats = oracle_init(model, st, rows, a.evict, a.min_far, a.first_weight,
                              amp=a.amp == "bf16")
    dm.save_adapter(model, a.out, {"init": "oracle_init.py", "oracle_evict": a.evict, "oracle_rows": a.rows,
                                   "oracle_ctx": a.ctx})
    json.dump({"threshold": thr, "heads": stats, "seconds": round(time.time() - t0, 1)},
              open(a.out + ".oracle.json", "w"), indent=1)
    print(f"wrote {a.out} in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
