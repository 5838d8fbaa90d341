"""oracle_init.py: the far-attention statistic is the vanilla model's attention
(transformers' own eager attention as the oracle), and the fitted adapter
flags the keys the labels say."""
import os

import torch

import dms_model as dm
import oracle_init as oi
from conftest import FIXTURES

BASE = os.path.join(FIXTURES, "llama-f32")


def test_far_attention_is_the_vanilla_models():
    from transformers import AutoModelForCausalLM
    ref = AutoModelForCausalLM.from_pretrained(BASE, dtype=torch.float32, attn_implementation="eager")
    ids = torch.randint(0, 300, (2, 40), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        att = ref(ids, output_attentions=True).attentions                 # per layer [B, Hq, T, T]
    m = dm.load_base(BASE)
    st = dm.attach_dms(m, "adapter", window=5)
    st.mode, st.capture_far = "teacher", True
    st.reset()
    with torch.no_grad():
        m(ids)
    Hkv = m.config.num_key_value_heads
    T = ids.shape[1]
    i = torch.arange(T)
    far = ((i[:, None] - i[None, :]) > 5).float()
    for a, got in zip(att, st.far_attn):
        B, Hq = a.shape[:2]
        g = a.view(B, Hkv, Hq // Hkv, T, T).mean(2)
        want = (g * far).sum(-2) / far.sum(0).clamp(min=1)
        assert torch.allclose(got, want, atol=1e-6)
        assert torch.all(got[..., T - 6:] == 0)                          # no query is far from these keys


def test_oracle_fit_flags_the_labelled_keys():
    m = dm.load_base(BASE)
    m.eval()
    st = dm.attach_dms(m, "adapter", window=3)
    rows = torch.randint(0, 300, (3, 60), generator=torch.Generator().manual_seed(7))
    thr, stats = oi.oracle_init(m, st, rows, 0.6, min_far=4, log=lambda *_: None)
    assert len(stats) == m.config.num_hidden_layers * m.config.num_key_value_heads
    assert sum(s["evict_label"] for s in stats) / len(stats) > 0.4
    assert all(s["train_acc"] > 0.6 for s in stats)
    assert any(layer.self_attn.dms_proj_alpha.weight.abs().sum() > 0 for layer in m.model.layers)
    # the adapter now flags a good part of the tokens, in the engine's (eval) rule
    st.mode = "eval"
    st.reset()
    with torch.no_grad():
        m(rows[:1])
    frac = torch.stack([h.float().mean() for h in st.hard]).mean().item()
    assert 0.3 < frac < 0.9
