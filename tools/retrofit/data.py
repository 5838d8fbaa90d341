"""data.py — training text for the retrofit, from public-domain text that
Debian ships, packed to the training sequence length.

Sources (apt-get install bible-kjv fortunes):
  - the King James Bible (public domain), dumped by the `bible` program of
    bible-kjv (bible-kjv-text holds it in a compressed format);
  - the fortunes database (/usr/share/games/fortunes, the non-offensive set).
Held out: every 20th chapter of the Bible and every 20th fortune file — never
seen in training, used for KL / perplexity after it.

    python data.py OUT_DIR        # writes OUT_DIR/train.txt, OUT_DIR/heldout.txt
"""
import os
import re
import subprocess
import sys

FORTUNE_DIR = "/usr/share/games/fortunes"
HOLDOUT_EVERY = 20


def kjv_chapters():
    """[(book+chapter, text)] of the KJV, one paragraph per chapter, verse numbers removed."""
    try:
        out = subprocess.run(["bible", "-f", "Gen1:1-Rev22:21"], check=True, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True).stdout
    except FileNotFoundError:
        raise SystemExit("the `bible` program is missing: apt-get install bible-kjv")
    chapters, cur_key, cur = [], None, []
    for line in out.splitlines():
        m = re.match(r"^(\S+?)(\d+):(\d+) (.*)$", line)
        if m:
            key = m.group(1) + m.group(2)
            if key != cur_key and cur:
                chapters.append((cur_key, " ".join(cur)))
                cur = []
            cur_key = key
            cur.append(m.group(4).strip())
        elif line.strip() and cur:
            cur.append(line.strip())
    if cur:
        chapters.append((cur_key, " ".join(cur)))
    return chapters


def fortune_files():
    if not os.path.isdir(FORTUNE_DIR):
        return []
    out = []
    for f in sorted(os.listdir(FORTUNE_DIR)):
        p = os.path.join(FORTUNE_DIR, f)
        if f.endswith((".dat", ".u8")) or os.path.islink(p) or not os.path.isfile(p):
            continue
        text = open(p, encoding="utf-8", errors="replace").read()
        items = [t.strip() for t in text.split("\n%\n") if t.strip()]
        out.append((f, "\n\n".join(items)))
    return out


def build(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    train, held = [], []
    for i, (_, text) in enumerate(kjv_chapters()):
        (held if i % HOLDOUT_EVERY == HOLDOUT_EVERY - 1 else train).append(text)
    for i, (_, text) in enumerate(fortune_files()):
        (held if i % HOLDOUT_EVERY == HOLDOUT_EVERY - 1 else train).append(text)
    paths = []
    for name, docs in (("train.txt", train), ("heldout.txt", held)):
        p = os.path.join(out_dir, name)
        with open(p, "w") as f:
            f.write("\n\n".join(docs) + "\n")
        paths.append(p)
    return paths


def pack(tokenizer, path, seq_len, eos_id=None, limit_tokens=None):
    """Tokenize the documents of `path` (blank-line separated paragraphs kept
    together), join them with EOS and cut the stream into rows of seq_len.
    Returns a LongTensor [N, seq_len]."""
    import torch
    text = open(path).read()
    eos = eos_id if eos_id is not None else tokenizer.eos_token_id
    ids = []
    # tokenize in ~64 KB pieces on paragraph boundaries: fast and memory-light
    buf = []
    size = 0
    for para in text.split("\n\n"):
        buf.append(para)
        size += len(para)
        if size > 65536:
            ids.extend(tokenizer("\n\n".join(buf))["input_ids"])
            if eos is not None:
                ids.append(eos)
            buf, size = [], 0
        if limit_tokens and len(ids) >= limit_tokens:
            break
    if buf:
        ids.extend(tokenizer("\n\n".join(buf))["input_ids"])
    n = len(ids) // seq_len
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)


if __name__ == "__main__":
    for p in build(sys.argv[1] if len(sys.argv) > 1 else "retrofit-data"):
        print(p, os.path.getsize(p), "bytes")
