#!/usr/bin/env python3
"""retrofit.py — turn a Hugging Face Llama / Qwen2 / Qwen3 checkpoint into a DMS
model (DESIGN.md §4, NVIDIA's recipe): distillation from the same network with
eviction off, a one-sided compression loss, a linear compression-ratio schedule.

    python retrofit.py --base HF_DIR --data DATA_DIR --out RUN_DIR \\
        [--variant adapter|neuron] [--cr 4] [--window 64] [--seq-len 512] \\
        [--steps-final 200] [--steps 250] [--batch 1] [--lr 2e-4] [--device cpu|cuda]

Per step: teacher logits (DMS off, no grad); student logits with
p = sigmoid((logit + g) / tau), g logistic noise, the log(1 - p) mask outside
the window and straight-through hard decisions; loss = mean per-token
KL(student || teacher) + mean over (layer, KV head) of max(0, a* - fraction
flagged), a* = 1 - 1/CR(s), CR(s) = 1 + (CR - 1) * min(s / steps_final, 1).

Outputs in RUN_DIR: log.jsonl (one line per step), state.pt (resumable: the
trainable weights, optimizer, step; --resume picks it up), crK/ when the
schedule reaches each integer CR K (adapter.safetensors for the adapter
variant, --export-hf adds an HF DMS checkpoint), and final/.
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


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="HF checkpoint directory (e.g. from gguf_to_hf.py)")
    ap.add_argument("--data", required=True, help="directory with train.txt and heldout.txt (data.py)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--variant", choices=("adapter", "neuron"), default="adapter")
    ap.add_argument("--cr", type=float, default=4.0, help="final compression ratio")
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps-final", type=int, default=200, help="steps of the linear CR schedule")
    ap.add_argument("--steps", type=int, default=250, help="total steps (the rest at the final CR)")
    ap.add_argument("--lr", type=float, default=None, help="default 2e-4 (adapter), 1e-5 (neuron)")
    ap.add_argument("--tau", type=float, default=0.1)
    ap.add_argument("--alpha-scale", type=float, default=100.0)
    ap.add_argument("--alpha-offset", type=float, default=5.0)
    ap.add_argument("--alpha-per", choices=("head", "layer"), default="head")
    ap.add_argument("--comp-weight", type=float, default=1.0)
    ap.add_argument("--comp-per", choices=("model", "head"), default="model",
                    help="compression hinge on the model-wide mean fraction per sequence (NVIDIA's "
                         "reference) or on every (layer, head) separately (the first recipe)")
    ap.add_argument("--init-adapter", help="start the adapter from this safetensors file (warm start)")
    ap.add_argument("--snapshot-every", type=int, default=0,
                    help="also write RUN_DIR/snap/stepN.safetensors every N steps (adapter variant)")
    ap.add_argument("--save-every", type=int, default=10)
    ap.add_argument("--eval-rows", type=int, default=8, help="held-out rows for the final eval")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    ap.add_argument("--amp", choices=("none", "bf16"), default="none",
                    help="bf16 autocast for the forward passes (weights, adapter, optimizer and the "
                         "decision logit stay float32); ~4x faster on a CPU with AVX512-BF16")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--export-hf", action="store_true", help="also write HF DMS checkpoints")
    ap.add_argument("--max-train-tokens", type=int, default=4_000_000)
    return ap.parse_args(argv)


def trainable(model, variant):
    out = []
    for n, p in model.named_parameters():
        on = variant == "neuron" or "dms_proj_alpha" in n
        p.requires_grad_(on)
        if on:
            out.append((n, p))
    return out


def save_state(path, params, opt, step, args):
    tmp = path + ".tmp"
    torch.save({"step": step, "params": {n: p.detach().cpu() for n, p in params},
                "opt": opt.state_dict(), "args": vars(args)}, tmp)
    os.replace(tmp, path)


def export(model, out_dir, args, tag, extra):
    d = os.path.join(args.out, tag)
    os.makedirs(d, exist_ok=True)
    if args.variant == "adapter":
        dm.save_adapter(model, os.path.join(d, "adapter.safetensors"), extra)
    if args.export_hf or args.variant == "neuron":
        dm.save_hf_dms(model, os.path.join(d, "hf"), tokenizer_src=args.base)
    json.dump(extra, open(os.path.join(d, "info.json"), "w"), indent=1)


@torch.no_grad()
def teacher_logits(model, teacher, st, ids, keep):
    """The distillation target: the vanilla model. For the adapter variant the
    base is frozen, so it is the student with eviction off (no second copy);
    the neuron variant trains every weight and borrows a q channel, so its
    teacher is a frozen copy of the original network (NVIDIA's reference loads
    a separate teacher whenever student and teacher differ)."""
    if teacher is not None:
        return teacher(ids, logits_to_keep=keep).logits
    st.mode = "teacher"
    return model(ids, logits_to_keep=keep).logits


def kl_positions(args, T):
    """How many trailing positions carry the KL. Adapter variant: those past the
    window — before it nothing can be evicted and the base is frozen, so the KL
    is exactly 0 there, and the LM head is a fifth of this model's compute.
    Neuron variant: every position (0 = all, transformers' convention): the
    borrowed channel and the trained weights change the logits everywhere."""
    return 0 if args.variant == "neuron" else max(T - args.window - 1, 1)


@torch.no_grad()
def evaluate(model, st, rows, device, teacher=None):
    """Eval mode (hard decisions, the engine's rule): mean KL to the teacher over
    positions past the window, greedy agreement, achieved CR at the row's end."""
    kls, agree, crs = [], [], []
    for r in rows:
        ids = r[None].to(device)
        t = teacher_logits(model, teacher, st, ids, 0).float()
        st.mode = "eval"
        st.reset()
        s = model(ids).logits.float()
        kl = dm.kl_per_token(s, t)[0, st.window + 1:]
        kls.append(kl.mean().item())
        agree.append((s.argmax(-1) == t.argmax(-1))[0, st.window + 1:].float().mean().item())
        crs.append(dm.achieved_cr(st.hard, st.window))
    n = max(len(rows), 1)
    return {"kl_past_window": sum(kls) / n, "greedy_agree": sum(agree) / n, "cr": sum(crs) / n}


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.lr is None:
        args.lr = 2e-4 if args.variant == "adapter" else 1e-5
    os.makedirs(args.out, exist_ok=True)
    dtype = getattr(torch, args.dtype)
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(args.base)
    model = dm.load_base(args.base, dtype=dtype).to(args.device)
    st = dm.attach_dms(model, args.variant, window=args.window, alpha_scale=args.alpha_scale,
                       alpha_offset=args.alpha_offset, alpha_per=args.alpha_per, tau=args.tau, seed=args.seed)
    model.to(args.device)
    model.eval()          # no dropout; DMS behaviour is chosen by st.mode
    params = trainable(model, args.variant)
    teacher = None
    if args.variant == "neuron":
        teacher = dm.load_base(args.base, dtype=dtype).to(args.device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    if args.init_adapter and not (args.resume and os.path.exists(os.path.join(args.out, "state.pt"))):
        dm.load_adapter(model, args.init_adapter)
        print(f"adapter initialised from {args.init_adapter}", flush=True)
    opt = torch.optim.AdamW([p for _, p in params], lr=args.lr, weight_decay=0.0, betas=(0.9, 0.95))

    train = datamod.pack(tok, os.path.join(args.data, "train.txt"), args.seq_len,
                         limit_tokens=args.max_train_tokens)
    held = datamod.pack(tok, os.path.join(args.data, "heldout.txt"), args.seq_len)
    print(f"data: {train.shape[0]} train rows, {held.shape[0]} held-out rows of {args.seq_len} tokens", flush=True)

    state_path = os.path.join(args.out, "state.pt")
    step = 0
    if args.resume and os.path.exists(state_path):
        s = torch.load(state_path, map_location="cpu")
        named = dict(params)
        with torch.no_grad():
            for n, v in s["params"].items():
                named[n].copy_(v.to(named[n].dtype))
        opt.load_state_dict(s["opt"])
        step = s["step"]
        print(f"resumed at step {step}", flush=True)

    exported = {int(k[2:]) for k in os.listdir(args.out) if k.startswith("cr") and k[2:].isdigit()}
    log = open(os.path.join(args.out, "log.jsonl"), "a")
    t_start = time.time()
    while step < args.steps:
        g = torch.Generator().manual_seed(args.seed * 1_000_003 + step)   # resumable: batch from the step
        idx = torch.randint(0, train.shape[0], (args.batch,), generator=g)
        ids = train[idx].to(args.device)
        st.generator = torch.Generator(device=args.device).manual_seed(args.seed * 7919 + step)
        alpha_t = dm.target_fraction(step, args.cr, args.steps_final)
        t0 = time.time()
        keep = kl_positions(args, ids.shape[1])
        with torch.autocast(device_type=torch.device(args.device).type, dtype=torch.bfloat16,
                            enabled=args.amp == "bf16"):
            target = teacher_logits(model, teacher, st, ids, keep)
            st.mode = "train"
            st.reset()
            student = model(ids, logits_to_keep=keep).logits
        kl, comp, frac = dm.dms_losses(student, target, st.frac, alpha_t, comp_per=args.comp_per)
        loss = kl + args.comp_weight * comp
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_([p for _, p in params], 1.0).item()
        opt.step()
        cr_hard = dm.achieved_cr(st.hard, args.window)
        step += 1
        rec = {"step": step, "loss": loss.item(), "kl": kl.item(), "comp": comp.item(), "frac": frac,
               "target_frac": alpha_t, "target_cr": dm.cr_schedule(step - 1, args.cr, args.steps_final),
               "cr_train": cr_hard, "grad_norm": gn, "sec": time.time() - t0}
        log.write(json.dumps(rec) + "\n")
        log.flush()
        if step % 5 == 0 or step == 1:
            print(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in rec.items()),
                  flush=True)
        if step % args.save_every == 0 or step == args.steps:
            save_state(state_path, params, opt, step, args)
        if args.snapshot_every and args.variant == "adapter" and step % args.snapshot_every == 0:
            os.makedirs(os.path.join(args.out, "snap"), exist_ok=True)
            dm.save_adapter(model, os.path.join(args.out, "snap", f"step{step}.safetensors"),
                            {"step": step, "target_cr": dm.cr_schedule(step, args.cr, args.steps_final)})
        # one checkpoint per integer CR the schedule reaches
        cr_now = dm.cr_schedule(step, args.cr, args.steps_final)
        for k in range(2, int(args.cr) + 1):
            if cr_now >= k and k not in exported and k != int(args.cr):
                export(model, args.out, args, f"cr{k}", {"step": step, "target_cr": cr_now})
                exported.add(k)
    save_state(state_path, params, opt, step, args)
    ev = evaluate(model, st, held[: args.eval_rows], args.device, teacher)
    info = {"step": step, "target_cr": args.cr, "window": args.window, "seq_len": args.seq_len,
            "train_seconds_this_run": round(time.time() - t_start, 1), **ev}
    print("final eval (held out, hard decisions):", json.dumps(info), flush=True)
    export(model, args.out, args, f"cr{int(args.cr)}", info)
    export(model, args.out, args, "final", info)


if __name__ == "__main__":
    main()
