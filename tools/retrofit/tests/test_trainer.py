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


def test_neuron_teacher_is_the_vanilla_model():
    """The neuron variant borrows a q channel and trains every weight, so the
    student with eviction off is not the original model: the distillation
    target must be a frozen copy of it, over every position."""
    import dms_model as dm
    base = os.path.join(FIXTURES, "llama-f32")
    vanilla = dm.load_base(base)
    m = dm.load_base(base)
    st = dm.attach_dms(m, "neuron", window=3)
    ids = torch.randint(0, 300, (1, 24), generator=torch.Generator().manual_seed(3))
    ref = vanilla(ids).logits
    args = retrofit.parse_args(["--base", base, "--data", ".", "--out", ".", "--variant", "neuron", "--window", "3"])
    keep = retrofit.kl_positions(args, ids.shape[1])
    assert keep == 0                                 # all positions
    got = retrofit.teacher_logits(m, vanilla, st, ids, keep)
    assert torch.equal(got, ref)
    with torch.no_grad():                            # the DMS model in teacher mode is not vanilla
        assert (retrofit.teacher_logits(m, None, st, ids, keep) - ref).abs().max() > 1e-4
    args = retrofit.parse_args(["--base", base, "--data", ".", "--out", ".", "--window", "3"])
    assert retrofit.kl_positions(args, 24) == 20     # adapter: past the window only


def test_neuron_run_trains_weights_and_init_adapter(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.txt").write_text(TEXT)
    (data / "heldout.txt").write_text(TEXT[::-1])
    base = os.path.join(FIXTURES, "llama-f32")
    retrofit.main(["--base", base, "--data", str(data), "--out", str(tmp_path / "n"), "--variant", "neuron",
                   "--cr", "2", "--window", "4", "--seq-len", "32", "--steps-final", "2", "--steps", "2",
                   "--eval-rows", "1", "--lr", "1e-3", "--threads", "1", "--amp", "bf16"])
    info = json.load(open(tmp_path / "n" / "final" / "info.json"))
    assert info["step"] == 2 and info["kl_past_window"] >= 0
    # warm start: the adapter run starts from a given file, and snapshots come out
    run(tmp_path / "a", data, 2)
    src = tmp_path / "a" / "final" / "adapter.safetensors"
    retrofit.main(["--base", base, "--data", str(data), "--out", str(tmp_path / "w"), "--init-adapter", str(src),
                   "--cr", "3", "--window", "4", "--seq-len", "32", "--steps-final", "1", "--steps", "1",
                   "--lr", "0", "--eval-rows", "1", "--threads", "1", "--snapshot-every", "1"])
    wa, wb = load_file(str(src)), load_file(str(tmp_path / "w" / "snap" / "step1.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)     # lr 0: the snapshot is the initial adapter
