#!/usr/bin/env python3
"""tools/peer/reference.py — a float64 evaluation of a llama-architecture GGUF
with numpy, for judging how far each engine sits from the exact forward pass
of the same (dequantized) weights.

Weights are dequantized with gguf-py (the `gguf` package on PyPI); every
activation stays in float64, nothing is re-quantized. Compares against a
llama.cpp fixture (tests/data/NAME.logits.f16) and, optionally, lethe's logits
(`lethe logits --tokens ... -o FILE`, float32 [n, V]).

    pip install gguf numpy
    tools/peer/reference.py MODEL.gguf tests/data/code.tokens.txt \
        --peer tests/data/code.logits.f16 [--lethe /tmp/code.f32]
"""
import argparse

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize


def field(r, key):
    f = r.fields[key]
    return f.parts[f.data[0]][0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("tokens", help="token ids, whitespace separated")
    ap.add_argument("--peer", help="llama.cpp logits, f16 [n, V]")
    ap.add_argument("--lethe", help="lethe logits, f32 [n, V]")
    a = ap.parse_args()

    r = GGUFReader(a.model)
    arch = bytes(r.fields["general.architecture"].parts[-1]).decode()
    if arch != "llama":
        raise SystemExit(f"reference.py: only the llama architecture (got {arch})")
    E = int(field(r, "llama.embedding_length"))
    L = int(field(r, "llama.block_count"))
    Hq = int(field(r, "llama.attention.head_count"))
    Hkv = int(field(r, "llama.attention.head_count_kv"))
    base = float(field(r, "llama.rope.freq_base"))
    eps = float(field(r, "llama.attention.layer_norm_rms_epsilon"))
    D = E // Hq
    G = Hq // Hkv
    tensors = {t.name: t for t in r.tensors}

    def W(name, cols):
        t = tensors[name]
        return dequantize(t.data, t.tensor_type).astype(np.float64).reshape(-1, cols)

    ids = [int(x) for x in open(a.tokens).read().split()]
    n = len(ids)
    emb = W("token_embd.weight", E)
    out_w = W("output.weight", E) if "output.weight" in tensors else emb
    x = emb[ids]

    def rms(v, w):
        return v / np.sqrt((v * v).mean(-1, keepdims=True) + eps) * w.reshape(-1)

    inv = base ** (-np.arange(0, D, 2) / D)
    ang = np.arange(n)[:, None] * inv[None, :]
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]

    def rope(q):  # GGUF llama: adjacent pairs (2i, 2i+1)
        out = np.empty_like(q)
        q0, q1 = q[..., 0::2], q[..., 1::2]
        out[..., 0::2] = q0 * cos - q1 * sin
        out[..., 1::2] = q0 * sin + q1 * cos
        return out

    causal = np.triu(np.full((n, n), -np.inf), 1)
    for layer in range(L):
        p = f"blk.{layer}."
        h = rms(x, W(p + "attn_norm.weight", E))
        q = rope((h @ W(p + "attn_q.weight", E).T).reshape(n, Hq, D))
        k = rope((h @ W(p + "attn_k.weight", E).T).reshape(n, Hkv, D))
        v = (h @ W(p + "attn_v.weight", E).T).reshape(n, Hkv, D)
        att = np.zeros((n, Hq, D))
        for hh in range(Hq):
            s = q[:, hh] @ k[:, hh // G].T / np.sqrt(D) + causal
            s = np.exp(s - s.max(-1, keepdims=True))
            att[:, hh] = (s / s.sum(-1, keepdims=True)) @ v[:, hh // G]
        x = x + att.reshape(n, -1) @ W(p + "attn_output.weight", Hq * D).T
        h = rms(x, W(p + "ffn_norm.weight", E))
        g = h @ W(p + "ffn_gate.weight", E).T
        u = h @ W(p + "ffn_up.weight", E).T
        ff = g.shape[1]
        x = x + (g / (1 + np.exp(-g)) * u) @ W(p + "ffn_down.weight", ff).T
    logits = rms(x, W("output_norm.weight", E)) @ out_w.T

    def nmse(ref, got):
        return ((ref - got) ** 2).sum() / (ref * ref).sum()

    peer = lethe = None
    if a.peer:
        peer = np.fromfile(a.peer, dtype=np.float16).astype(np.float64).reshape(n, -1)
    if a.lethe:
        lethe = np.fromfile(a.lethe, dtype=np.float32).astype(np.float64).reshape(n, -1)
    print("pos  rms(logits)  NMSE(llama.cpp, f64)  NMSE(lethe, f64)  NMSE(lethe, llama.cpp)")
    for i in range(n):
        row = [f"{i:3d}", f"{np.sqrt((logits[i] ** 2).mean()):10.3f}"]
        row.append(f"{nmse(logits[i], peer[i]):20.3g}" if peer is not None else " " * 20)
        row.append(f"{nmse(logits[i], lethe[i]):17.3g}" if lethe is not None else " " * 17)
        if peer is not None and lethe is not None:
            row.append(f"{nmse(peer[i], lethe[i]):23.3g}")
        print("  ".join(row))


if __name__ == "__main__":
    main()
