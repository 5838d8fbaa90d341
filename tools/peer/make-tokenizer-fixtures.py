#!/usr/bin/env python3
"""tools/peer/make-tokenizer-fixtures.py — tokenizer.json parity fixtures
(tests/data/hf-tok/), for tests/test_hf_tokenizer.c.

    /tmp/hfvenv/bin/pip install tokenizers
    /tmp/hfvenv/bin/python tools/peer/make-tokenizer-fixtures.py [OUT_DIR]

Builds, with the `tokenizers` library itself, one tokenizer.json per family
the loader supports, each with that family's real normalizer / pre-tokenizer /
post-processor configuration (vocabularies trained on a small corpus so the
files stay small):
  qwen2      NFC + Split(Qwen2 regex, Isolated) + ByteLevel(use_regex=false)
  llama3     Split(Llama 3 regex) + ByteLevel, ignore_merges, <|begin_of_text|> added
  gpt2       ByteLevel(use_regex=true) (GPT-2 / SmolLM style, with Digits)
  spm        Llama 2 / Mistral style: Prepend("▁") + Replace(" ", "▁"), BPE with
             byte_fallback, <s> added by the post-processor
and writes expected.jsonl: one {"text": ..., "ids": [...]} per line, the ids
from Tokenizer.encode(text, add_special_tokens=True) over a multilingual,
emoji and whitespace-heavy text set.
"""
import json
import os
import shutil
import sys

from tokenizers import (AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors,
                        trainers)

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "..", "tests", "data",
                                                           "hf-tok")
QWEN2_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
            r"\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
             r"\s*[\r\n]+|\s+(?!\S)|\s+")

TEXTS = [
    "", " ", "  ", "   ", "\t", "\n", "\n\n", "\n\n\n", "\t\n", " \n \t ", "Hello world", " Hello world",
    "Hello World", " Hello World", " Hello World!", "Hello, world!", " this is 🦙.cpp",
    "w048 7tuijk dsdfhu", "нещо на Български", "កាន់តែពិសេសអាចខលចេញ",
    "🚀 (normal) 😶‍🌫️ (multiple emojis concatenated) ✅ (only emoji that has its own token)",
    "Hello", " Hello", "  Hello", "   Hello", "    Hello", "    Hello\n    Hello", " (", "\n =",
    "' era", "Hello, y'all! How are you 😁 ?我想在apple工作1314151天～", "!!!!!!", "3", "33", "333", "3333",
    "33333", "333333", "3333333", "33333333", "333333333", "Cửa Việt", " discards",
    "I've been 'told' he's here, DON'T WE'LL 'm 'd", "e\u0301 versus \u00e9; A\u030a", "ﬁ ＡＢＣ ①",
    "Le cœur a ses raisons que la raison ne connaît point.", "Über den Wolken muss die Freiheit wohl grenzenlos sein.",
    "東京は日本の首都です。", "Привет, мир!", "مرحبا بالعالم", "नमस्ते दुनिया", "안녕하세요 세계", "Γειά σου Κόσμε",
    "def main():\n    return 42\n\n\nif x:\r\n\tpass", "a\u00a0b\u2003c\u3000d", "line\u2028sep\u0085nel",
    "<|im_start|>user\nhi<|im_end|>\n", "<s> [INST] hi [/INST]", "ﷺ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 👩‍👩‍👧‍👦 🇫🇷",
]
CORPUS = TEXTS * 3 + [
    "The quick brown fox jumps over the lazy dog. It was the best of times, it was the worst of times, "
    "it was the age of wisdom, it was the age of foolishness.",
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore.",
    "Der schnelle braune Fuchs springt über den faulen Hund. Le renard brun rapide saute par-dessus le chien.",
    "快速的棕色狐狸跳过了懒狗。速い茶色の狐がのろまな犬を飛び越える。",
    "Быстрая коричневая лиса перепрыгивает через ленивую собаку.",
    "for (int i = 0; i < n; i++) { sum += a[i] * b[i]; }  // 1234567890",
] * 10


def byte_level(name, pre, normalizer=None, ignore_merges=False, bos=None, vocab=1200):
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + ([bos] if bos else [])
    tok = Tokenizer(models.BPE(ignore_merges=ignore_merges))
    if normalizer:
        tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    if bos:
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                           special_tokens=[(bos, tok.token_to_id(bos))])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    cfg = {"eos_token": "<|im_end|>", "bos_token": bos}
    return tok, cfg


def spm():
    # Llama 2 / Mistral: vocabulary <unk> <s> </s>, the 256 byte tokens, then pieces
    specials = ["<unk>", "<s>", "</s>"]
    bytes_ = [f"<0x{b:02X}>" for b in range(256)]
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    chars = sorted({c for t in CORPUS for c in t.replace(" ", "▁")} - {"▁"})
    chars = ["▁"] + [c for c in chars if c not in ("\n", "\t", "\r", "\u0085", "\u2028") and ord(c) < 0x3000][:149]
    trainer = trainers.BpeTrainer(vocab_size=900, special_tokens=specials + bytes_, initial_alphabet=chars,
                                  limit_alphabet=len(chars), show_progress=False)
    # the trainer sees one "word" per line of normalized text, split at ▁ boundaries
    words = [w for t in CORPUS for w in ("▁" + t.replace(" ", "▁")).split("\n")]
    tok.train_from_iterator(words, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", tok.token_to_id("<s>"))])
    cfg = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True,
           "add_eos_token": False}
    return tok, cfg


def main():
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    bl = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    sets = {
        "qwen2": byte_level("qwen2", pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_RE), behavior="isolated"), bl]), normalizer=normalizers.NFC()),
        "llama3": byte_level("llama3", pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_RE), behavior="isolated"), bl]), ignore_merges=True,
            bos="<|begin_of_text|>"),
        "gpt2": byte_level("gpt2", pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])),
        "spm": spm(),
    }
    for name, (tok, cfg) in sets.items():
        d = os.path.join(OUT, name)
        os.makedirs(d)
        tok.save(os.path.join(d, "tokenizer.json"))
        json.dump(cfg, open(os.path.join(d, "tokenizer_config.json"), "w"), indent=1)
        with open(os.path.join(d, "expected.jsonl"), "w") as f:
            for t in TEXTS:
                f.write(json.dumps({"text": t, "ids": tok.encode(t, add_special_tokens=True).ids}) + "\n")
        print(name, tok.get_vocab_size(), os.path.getsize(os.path.join(d, "tokenizer.json")))


if __name__ == "__main__":
    main()
