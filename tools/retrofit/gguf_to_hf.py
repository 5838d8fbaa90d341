#!/usr/bin/env python3
"""gguf_to_hf.py — write a GGUF model (any quantization lethe runs) as a
dequantized float32 Hugging Face checkpoint, so the retrofit starts from
exactly the weights lethe runs (DESIGN.md §4).

    python gguf_to_hf.py ~/.cache/lethe/models/SmolLM2-135M-Instruct.Q4_1.gguf OUT_DIR

transformers' own GGUF loader does the work (it dequantizes through the `gguf`
package and undoes llama.cpp's Q/K row permutation); this script adds the
tokenizer, a float32 save and a check that the result loads back.
"""
import argparse
import json
import os

import torch


def fix_tokenizer_config(out_dir, n_ctx):
    p = os.path.join(out_dir, "tokenizer_config.json")
    c = json.load(open(p))
    if c.get("model_max_length", 0) > 1 << 62:
        c["model_max_length"] = int(n_ctx)
        json.dump(c, open(p, "w"), indent=2)


def convert(gguf_path, out_dir, dtype=torch.float32):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    d, f = os.path.split(os.path.abspath(gguf_path))
    loaded = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=dtype)
    # transformers marks a GGUF-loaded model as quantized and refuses to save
    # it, though its weights are already dequantized: rebuild a plain model
    cfg = loaded.config
    for k in ("quantization_config", "_name_or_path"):
        if hasattr(cfg, k):
            delattr(cfg, k)
    model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and cfg.tie_word_embeddings)]
    if missing or unexpected:
        raise SystemExit(f"GGUF -> HF: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    # transformers writes model_max_length = 1e30 when it knows none, an
    # integer no 64-bit JSON reader (lethe's jansson) accepts: use the model's
    fix_tokenizer_config(out_dir, cfg.max_position_embeddings)
    return model, tok


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("gguf")
    ap.add_argument("out")
    a = ap.parse_args()
    model, _ = convert(a.gguf, a.out)
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {a.out}: {type(model).__name__}, {n / 1e6:.1f}M parameters, float32")


if __name__ == "__main__":
    main()
