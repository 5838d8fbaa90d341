#!/usr/bin/env python3
"""tools/peer/make-hf-fixtures.py — tiny random Hugging Face checkpoints and
transformers' logits for them (tests/data/hf/), for tests/test_hf_model.c.

    python3 -m venv /tmp/hfvenv && /tmp/hfvenv/bin/pip install torch transformers tokenizers safetensors numpy
    /tmp/hfvenv/bin/python tools/peer/make-hf-fixtures.py [OUT_DIR]   # default tests/data/hf

For each of llama, qwen2 (tied embeddings, QKV bias), qwen3 (q/k norm, head_dim
!= hidden/heads) in f32 and bf16 it writes a model directory (config.json,
model.safetensors, tokenizer.json, tokenizer_config.json, generation_config.json)
and
  logits.f32        float32 [T, V] little-endian: transformers' forward pass in
                    float32 over tokens.txt, every position. For the bf16
                    checkpoints the weights are the bf16 values upcast (what
                    lethe computes with: bf16 weights, f32 arithmetic).
  logits.native.f32 bf16 checkpoints only: transformers' own bf16 forward pass.
  tokens.txt        the fixed token ids (whitespace separated)
and two DMS checkpoints (qwen3 f32 weights + DMS config keys): dms-neuron and
dms-adapter (with self_attn.dms_proj_alpha{,_norm}.weight per layer).

Weights are random with a large enough scale that the logits are O(1) and
every part of the network matters (norm weights 1 + noise, biases non-zero).
"""
import json
import os
import shutil
import sys

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "..", "tests", "data", "hf")
VOCAB = 384
QWEN2_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
            r"\s*[\r\n]+|\s+(?!\S)|\s+")
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
CORPUS = [
    "The quick brown fox jumps over the lazy dog. It was the best of times, it was the worst of times.",
    "Hello world! 12345 numbers, punctuation; and    spaces\n\nnew lines\ttabs.",
    "Le cœur a ses raisons que la raison ne connaît point. Über den Wolken muss die Freiheit wohl grenzenlos sein.",
    "東京は日本の首都です。 Привет, мир! 😀 emoji 🎉",
    "def main():\n    return 42\n",
] * 20


def make_tokenizer(path):
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(tokenizers_regex(QWEN2_RE), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=VOCAB - 8, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    tok.save(os.path.join(path, "tokenizer.json"))
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
                   "chat_template": CHATML, "add_bos_token": False}, f, indent=1)
    return tok


def tokenizers_regex(s):
    from tokenizers import Regex
    return Regex(s)


def randomize(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            else:
                fan_in = p.shape[-1]
                p.copy_(torch.randn(p.shape, generator=g) / fan_in ** 0.5)


def build(arch, dtype, tok_ids, tok_dir):
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config, Qwen3Config
    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  rms_norm_eps=1e-5, bos_token_id=None, eos_token_id=2)
    if arch == "llama":
        cfg = LlamaConfig(**common, rope_theta=10000.0, tie_word_embeddings=False)
    elif arch == "qwen2":
        cfg = Qwen2Config(**common, rope_theta=1000000.0, tie_word_embeddings=True)
    else:
        cfg = Qwen3Config(**common, head_dim=32, rope_theta=1000000.0, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation="eager")
    randomize(model, {"llama": 1, "qwen2": 2, "qwen3": 3}[arch])
    name = f"{arch}-{dtype}"
    path = os.path.join(OUT, name)
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    ids = torch.tensor([tok_ids])
    if dtype == "bf16":
        model = model.to(torch.bfloat16)
        with torch.no_grad():
            native = model(ids).logits[0].float().numpy()
        native.astype("<f4").tofile(os.path.join(path, "logits.native.f32"))
        model.save_pretrained(path, safe_serialization=True)
        # reload rather than .float(): a bf16 cast also rounded the RoPE
        # inverse frequencies, which a fresh float32 load computes exactly
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
    else:
        model.save_pretrained(path, safe_serialization=True)
    with torch.no_grad():
        logits = model(ids).logits[0].numpy()
    logits.astype("<f4").tofile(os.path.join(path, "logits.f32"))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(tok_dir, f), path)
    with open(os.path.join(path, "tokens.txt"), "w") as f:
        f.write(" ".join(map(str, tok_ids)) + "\n")
    print(name, logits.shape, float(np.abs(logits).max()))
    return path


def make_dms(src, tok_ids):
    cfg = json.load(open(os.path.join(src, "config.json")))
    for variant in ("neuron", "adapter"):
        path = os.path.join(OUT, f"dms-{variant}")
        shutil.rmtree(path, ignore_errors=True)
        shutil.copytree(src, path)
        for f in ("logits.f32", "tokens.txt"):
            os.remove(os.path.join(path, f))
        c = dict(cfg, dms_window_size=16, dms_alpha_scale=100.0, dms_initial_alpha_offset=5.0,
                 dms_separate_alpha=variant == "adapter", dms_alpha_per="head")
        json.dump(c, open(os.path.join(path, "config.json"), "w"), indent=1)
        if variant == "adapter":
            sd = load_file(os.path.join(path, "model.safetensors"))
            g = torch.Generator().manual_seed(7)
            for l in range(cfg["num_hidden_layers"]):
                p = f"model.layers.{l}.self_attn."
                sd[p + "dms_proj_alpha.weight"] = 0.1 * torch.randn(cfg["num_key_value_heads"], cfg["hidden_size"], generator=g)
                sd[p + "dms_proj_alpha_norm.weight"] = 1.0 + 0.1 * torch.randn(cfg["hidden_size"], generator=g)
            save_file(sd, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})


def main():
    os.makedirs(OUT, exist_ok=True)
    tok_dir = os.path.join(OUT, ".tok")
    os.makedirs(tok_dir, exist_ok=True)
    tok = make_tokenizer(tok_dir)
    text = "<|im_start|>user\nHello world! Über 123 😀<|im_end|>\n<|im_start|>assistant\nThe quick brown fox"
    tok_ids = tok.encode(text).ids
    for arch in ("llama", "qwen2", "qwen3"):
        for dtype in ("f32", "bf16"):
            p = build(arch, dtype, tok_ids, tok_dir)
            if arch == "qwen3" and dtype == "f32":
                make_dms(p, tok_ids)
    shutil.rmtree(tok_dir)
    with open(os.path.join(OUT, "prompt.txt"), "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
