"""retrofit.py end to end on a tiny checkpoint: checkpoints per CR, the final
export, and resuming gives the same weights as an uninterrupted run."""
import json
import os

import torch
from safetensors.torch import load_file

import retrofit
from conftest import FIXTURES

TEXT = ("In the beginning was the word, and the quick brown fox jumps over the lazy dog. "
        "It was the best of times, it was the worst of times. Hello world! 12345 numbers.\n\n") * 60


def run(out, data, steps):
    retrofit.main(["--base", os.path.join(FIXTURES, "llama-f32"), "--data", str(data), "--out", str(out),
                   "--cr", "3", "--window", "4", "--seq-len", "32", "--steps-final", "4", "--steps", str(steps),
                   "--save-every", "1", "--eval-rows", "2", "--lr", "1e-3", "--threads", "1", "--resume"])


def test_trainer_checkpoints_and_resume(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.txt").write_text(TEXT)
    (data / "heldout.txt").write_text(TEXT[::-1])
    a, b = tmp_path / "a", tmp_path / "b"
    run(a, data, 6)
    log = [json.loads(line) for line in open(a / "log.jsonl")]
    assert [r["step"] for r in log] == list(range(1, 7))
    assert log[0]["target_cr"] == 1.0 and log[-1]["target_cr"] == 3.0
    for tag in ("cr2", "cr3", "final"):
        assert (a / tag / "adapter.safetensors").exists(), tag
    info = json.load(open(a / "final" / "info.json"))
    assert info["step"] == 6 and info["cr"] >= 1.0
    # interrupted after 3 steps, then resumed: the same weights bit for bit
    run(b, data, 3)
    run(b, data, 6)
    wa = load_file(str(a / "final" / "adapter.safetensors"))
    wb = load_file(str(b / "final" / "adapter.safetensors"))
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # the adapter moved away from its zero initialisation
    assert any(wa[k].abs().sum() > 0 for k in wa if k.endswith("dms_proj_alpha.weight"))
