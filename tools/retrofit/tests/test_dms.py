"""The trainer's DMS pieces against DESIGN.md §3.1 / §4, and against lethe."""
import os
import subprocess
import tempfile

import numpy as np
import pytest
import torch

import dms_model as dm
from conftest import FIXTURES, LETHE


def visible_reference(flags, window):
    """§3.1.4 written as loops: key j visible to query i >= j iff i - j <= w or
    j is unflagged; flags[j] is token j's flag (set by token j+1's decision)."""
    T = len(flags)
    vis = np.zeros((T, T), dtype=bool)
    for i in range(T):
        for j in range(i + 1):
            vis[i, j] = (i - j <= window) or not flags[j]
    return vis


@pytest.mark.parametrize("window", [0, 1, 3, 7])
def test_mask_is_visibility_rule_at_p_0_1(window):
    g = torch.Generator().manual_seed(window)
    T, H = 24, 3
    p = (torch.rand(2, H, T, generator=g) < 0.5).float()          # decisions p_t in {0, 1}
    keep_lp = torch.log1p(-p)                                     # log(1 - p): 0 or -inf
    mask = dm.dms_additive_mask(keep_lp, window)
    for b in range(2):
        for h in range(H):
            flags = [bool(p[b, h, j + 1]) if j + 1 < T else False for j in range(T)]
            ref = visible_reference(flags, window)
            got = torch.isfinite(mask[b, h]).numpy()
            assert (got == ref).all()
            assert (mask[b, h][torch.isfinite(mask[b, h])] == 0).all()


def test_soft_mask_values():
    keep_lp = torch.log(torch.tensor([[[0.9, 0.5, 0.25, 0.1]]]))
    m = dm.dms_additive_mask(keep_lp, 1)[0, 0]
    # query 3, key 0 (3 - 0 > 1): log(1 - p_1) = log 0.5; query 2, key 0: also far
    assert torch.isclose(m[3, 0], torch.log(torch.tensor(0.5)))
    assert torch.isclose(m[2, 0], torch.log(torch.tensor(0.5)))
    assert torch.isclose(m[3, 1], torch.log(torch.tensor(0.25)))
    assert m[1, 0] == 0 and m[3, 2] == 0 and m[3, 3] == 0    # inside the window
    assert m[0, 1] == float("-inf")                           # causal


def test_cr_schedule():
    assert dm.cr_schedule(0, 4, 100) == 1.0
    assert dm.cr_schedule(50, 4, 100) == pytest.approx(2.5)
    assert dm.cr_schedule(100, 4, 100) == 4.0
    assert dm.cr_schedule(1000, 4, 100) == 4.0
    assert dm.target_fraction(0, 8, 10) == 0.0
    assert dm.target_fraction(10, 8, 10) == pytest.approx(0.875)
    assert dm.target_fraction(5, 3, 10) == pytest.approx(0.5)


def test_compression_loss_is_one_sided():
    s = torch.zeros(1, 2, 5)
    frac = [torch.tensor([0.5, 0.9]), torch.tensor([0.1, 0.7])]          # [Hkv] per layer
    _, comp, mean = dm.dms_losses(s, s, frac, 0.75, comp_per="head")
    assert comp.item() == pytest.approx((0.25 + 0 + 0.65 + 0.05) / 4)
    assert mean == pytest.approx(0.55)
    _, comp, _ = dm.dms_losses(s, s, frac, 0.75)                          # default: the reference's
    assert comp.item() == pytest.approx(0.75 - 0.55)
    _, comp, _ = dm.dms_losses(s, s, frac, 0.5)
    assert comp.item() == 0.0


def test_compression_loss_shares_the_budget_like_the_reference():
    """NVIDIA's reference (experimental/dms): each layer averages its decisions
    over heads and tokens per sequence, layers are averaged, and the hinge is
    max(0, a* - that mean) per sequence, averaged over the batch. A head that
    keeps everything is free if another evicts for it; a sequence over the
    target does not pay for one under it."""
    s = torch.zeros(2, 3, 5)
    # 2 layers, batch 2, 2 heads; sequence 0 mean 0.75 (one head keeps all), sequence 1 mean 0.5
    frac = [torch.tensor([[0.0, 1.0], [0.5, 0.5]]), torch.tensor([[1.0, 1.0], [0.5, 0.5]])]
    for f in frac:
        f.requires_grad_(True)
    _, comp, mean = dm.dms_losses(s, s, frac, 0.75)
    assert comp.item() == pytest.approx((0.0 + 0.25) / 2)
    assert mean == pytest.approx(0.625)
    comp.backward()
    # only the sequence under its target gets a push, spread evenly over its (layer, head)s
    for f in frac:
        assert torch.allclose(f.grad[0], torch.zeros(2))
        assert torch.allclose(f.grad[1], torch.full((2,), -1.0 / (2 * 2 * 2)))
    # the per-head hinge of the first recipe charges the head that keeps everything
    one = [f.detach()[:1] for f in frac]                      # sequence 0 alone: mean 0.75, on target
    assert dm.dms_losses(s[:1], s[:1], one, 0.75)[1].item() == 0.0
    assert dm.dms_losses(s[:1], s[:1], one, 0.75, comp_per="head")[1].item() == pytest.approx(0.75 / 4)


def test_train_mode_fractions_are_per_sequence():
    m, st = tiny("adapter", init_std=0.02)
    ids = torch.randint(0, 300, (3, 20), generator=torch.Generator().manual_seed(4))
    st.mode = "train"
    st.reset()
    m(ids)
    assert len(st.frac) == m.config.num_hidden_layers
    assert all(f.shape == (3, m.config.num_key_value_heads) for f in st.frac)
    for f, h in zip(st.frac, st.hard):            # the straight-through value is the hard fraction
        assert torch.allclose(f.detach(), h.float().mean(-1))


def tiny(variant, name="llama-f32", window=3, init_std=0.0):
    m = dm.load_base(os.path.join(FIXTURES, name))
    st = dm.attach_dms(m, variant, window=window, init_std=init_std, seed=5)
    return m, st


def test_gradient_reaches_adapter_and_base_stays_frozen():
    m, st = tiny("adapter")
    for n, p in m.named_parameters():
        p.requires_grad_("dms_proj_alpha" in n)
    ids = torch.randint(0, 300, (2, 32), generator=torch.Generator().manual_seed(1))
    st.mode = "teacher"
    with torch.no_grad():
        teacher = m(ids).logits
    st.mode, st.tau = "train", 0.1
    st.alpha_offset = 0.0     # zero-initialised adapter: logit 0, so p ~ 1/2 under the noise
    st.reset()
    student = m(ids).logits
    kl, comp, _ = dm.dms_losses(student, teacher, st.frac, 0.75)
    (kl + comp).backward()
    grads = [p.grad for n, p in m.named_parameters() if "dms_proj_alpha." in n]
    assert len(grads) == m.config.num_hidden_layers
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for n, p in m.named_parameters() if "dms_proj_alpha" not in n)


def test_zero_init_adapter_is_the_base_model():
    m, st = tiny("adapter")
    ids = torch.randint(0, 300, (1, 40), generator=torch.Generator().manual_seed(2))
    st.mode = "teacher"
    with torch.no_grad():
        a = m(ids).logits
    st.mode = "eval"
    st.reset()
    with torch.no_grad():
        b = m(ids).logits
    assert torch.equal(a, b)
    assert all(not f.any() for f in st.hard)


def lethe_logits(model_dir, tokens, vocab, extra=()):
    if not os.access(LETHE, os.X_OK):
        pytest.skip(f"lethe CLI not built at {LETHE} (set LETHE_BIN)")
    fd, out = tempfile.mkstemp(suffix=".f32")
    os.close(fd)
    cmd = [LETHE, "logits", "-m", model_dir, "-t", "1", "-c", "128", "--kv-type", "f32", "--tokens", ",".join(map(str, tokens)),
           "-o", out, *extra]
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert r.returncode == 0, r.stderr
        return np.fromfile(out, dtype="<f4").reshape(len(tokens), vocab)
    finally:
        os.unlink(out)


def flagged_model(variant, name, tmp_path, window=3):
    """A tiny DMS model whose decisions flag a good share of tokens, with no
    decision logit near 0 (so float rounding cannot flip one). The adapter
    variant tries seeds of a random adapter; the neuron variant (nothing to
    seed) tries offsets around the median of its q channel."""
    ids = torch.randint(0, 300, (1, 48), generator=torch.Generator().manual_seed(3))
    for attempt in range(20):
        m = dm.load_base(os.path.join(FIXTURES, name))
        st = dm.attach_dms(m, variant, window=window, init_std=0.05 if variant == "adapter" else 0.0, seed=attempt)
        if variant == "neuron":
            st.alpha_offset, st.mode = 0.0, "eval"
            with torch.no_grad():
                m(ids)
            raw = torch.stack(st.logits).flatten()
            st.alpha_offset = float(torch.quantile(raw, 0.5 + 0.02 * (attempt - 10)))
        st.mode = "eval"
        st.reset()
        with torch.no_grad():
            logits = m(ids).logits[0].numpy()
        lg = torch.stack(st.logits)
        frac = torch.stack(st.frac).mean().item()
        if lg.abs().min() > 0.05 and 0.2 < frac < 0.8:
            return m, st, ids[0].tolist(), logits, frac
    pytest.fail("no seed gave a usable tiny DMS model")


@pytest.mark.parametrize("variant,name", [("adapter", "llama-f32"), ("adapter", "qwen3-f32"),
                                          ("neuron", "qwen3-f32"), ("neuron", "llama-f32")])
def test_exported_checkpoint_matches_lethe(variant, name, tmp_path):
    m, st, toks, ref, frac = flagged_model(variant, name, tmp_path)
    out = str(tmp_path / "dms")
    dm.save_hf_dms(m, out, tokenizer_src=os.path.join(FIXTURES, name))
    got = lethe_logits(out, toks, ref.shape[-1])
    # vanilla differs: the eviction really changes the logits being compared
    st.mode = "teacher"
    with torch.no_grad():
        vanilla = m(torch.tensor([toks])).logits[0].numpy()
    assert np.abs(vanilla - ref).max() > 1e-2
    assert np.abs(got - ref).max() < 1e-4, (np.abs(got - ref).max(), frac)


def test_adapter_file_matches_lethe(tmp_path):
    m, st, toks, ref, _ = flagged_model("adapter", "llama-f32", tmp_path)
    path = str(tmp_path / "adapter.safetensors")
    dm.save_adapter(m, path)
    got = lethe_logits(os.path.join(FIXTURES, "llama-f32"), toks, ref.shape[-1], ("--dms-adapter", path))
    assert np.abs(got - ref).max() < 1e-4
    # and the file loads back into a fresh model
    m2, _ = tiny("adapter", window=3)
    dm.load_adapter(m2, path)
    for (k, a), (_, b) in zip(dm.adapter_parameters(m).items(), dm.adapter_parameters(m2).items()):
        assert torch.equal(a, b), k


def test_achieved_cr():
    # 1 layer, 1 head, T = 10 (9 flag slots), window 2: tokens 0..6 are past the
    # window at the end (9 - j > 2 <=> j < 7); flag 0, 3, 5 and 8 -> 3 gone
    f = torch.zeros(1, 1, 9, dtype=torch.bool)
    f[0, 0, [0, 3, 5, 8]] = True
    assert dm.achieved_cr([f], 2) == pytest.approx(10 / 7)


def test_decision_logit_stays_float32_under_bf16_autocast():
    """--amp bf16 runs the network in bf16, but the decision (x100) is computed
    in float32: layer 0's input is the embedding either way, so its logits match
    the float32 forward exactly."""
    m, st = tiny("adapter", init_std=0.02)
    ids = torch.randint(0, 300, (1, 16), generator=torch.Generator().manual_seed(6))
    st.mode = "eval"
    st.reset()
    with torch.no_grad():
        m(ids)
    ref = st.logits[0]
    st.reset()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(ids).logits
    assert out.dtype == torch.bfloat16                    # the network did run in bf16
    assert st.logits[0].dtype == torch.float32
    assert torch.equal(st.logits[0], ref)
