#!/usr/bin/env python3
"""check_convert.py — the GGUF -> HF converter, checked: transformers' logits on
the converted checkpoint against lethe's logits on the GGUF it came from (and,
optionally, lethe's on the HF directory itself).

    python check_convert.py --hf DIR --gguf FILE [--lethe build/bin/lethe] [--text FILE]

Prints per pair: NMSE = sum((a-b)^2)/sum(a^2) over all positions and the
fraction of positions where the argmax agrees.
"""
import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_TEXT = ("The history of the printing press begins in the fifteenth century, when Johannes Gutenberg "
                "combined movable metal type, oil-based ink and a screw press adapted from wine making. "
                "Within fifty years, presses were running in more than two hundred European cities, and the "
                "price of books fell so far that")


def lethe_logits(lethe, model, tokens, vocab, extra=()):
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "logits.f32")
        cmd = [lethe, "logits", "-m", model, "-t", "2", "-c", str(max(64, len(tokens))),
               "--tokens", ",".join(map(str, tokens)), "-o", out, *extra]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        return np.fromfile(out, dtype="<f4").reshape(len(tokens), vocab)


def compare(a, b):
    nmse = float(((a.astype(np.float64) - b) ** 2).sum() / (a.astype(np.float64) ** 2).sum())
    agree = float((a.argmax(-1) == b.argmax(-1)).mean())
    return nmse, agree


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hf", required=True)
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--lethe", default=os.path.join(HERE, "..", "..", "build", "bin", "lethe"))
    ap.add_argument("--text")
    a = ap.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer
    torch.set_num_threads(2)
    tok = AutoTokenizer.from_pretrained(a.hf)
    text = open(a.text).read() if a.text else DEFAULT_TEXT
    ids = tok(text)["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(a.hf, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        hf = model(torch.tensor([ids])).logits[0].numpy()
    V = hf.shape[-1]
    rows = [("transformers(HF) vs lethe(GGUF)", lethe_logits(a.lethe, a.gguf, ids, V)),
            ("transformers(HF) vs lethe(HF dir)", lethe_logits(a.lethe, a.hf, ids, V))]
    ok = True
    print(f"{len(ids)} tokens")
    for name, le in rows:
        nmse, agree = compare(hf, le)
        print(f"{name}: NMSE {nmse:.3e}, argmax agreement {agree * 100:.1f}%, last-token argmax "
              f"{'same' if hf[-1].argmax() == le[-1].argmax() else 'DIFFERENT'}")
        ok = ok and hf[-1].argmax() == le[-1].argmax()
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
