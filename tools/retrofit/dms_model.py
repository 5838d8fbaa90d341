"""dms_model.py — Dynamic Memory Sparsification on a Hugging Face Llama / Qwen2 /
Qwen3 model, for training and for a dense reference forward (DESIGN.md §3.1, §4).

attach_dms(model, ...) replaces every layer's attention forward with one that
computes, per token t, layer and KV head h, a decision logit
    adapter: logit = scale * W_alpha[h] . RMSNorm_alpha(x_res[t]) - offset
             (x_res = the layer input, before input_layernorm)
    neuron:  logit = scale * q[t, h*G, D-1] - offset  (after q_norm, before RoPE;
             that channel is then zeroed before and after RoPE: the borrowed channel)
and masks attention with it. Token t's decision flags token t-1 (one token of
look-ahead); a flagged key j is hidden from queries i with i - j > window.

Modes (DMSState.mode):
    "teacher": no eviction at all (the vanilla model: the distillation target);
    "train":   p = sigmoid((logit + g) / tau), g logistic noise; key j's score
               gets log(1 - p[j+1]) for queries more than `window` back (soft,
               differentiable), and the hard decision p > 0.5 goes through a
               straight-through estimator into the eviction fraction;
    "eval":    hard decisions logit > 0: exactly the engine's visibility rule.

Dimension legend: B batch, T tokens, Hq / Hkv query / KV heads, G = Hq / Hkv,
D head dim, E hidden size.
"""
import types
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

NEG = float("-inf")


class AlphaNorm(nn.Module):
    """RMSNorm with the model's eps (the engine uses the model's norm eps)."""

    def __init__(self, E, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(E))
        self.eps = eps

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


@dataclass
class DMSState:
    """Shared by every layer of one model: what the next forward does."""
    variant: str = "adapter"          # "adapter" | "neuron"
    window: int = 512
    alpha_scale: float = 100.0
    alpha_offset: float = 5.0
    alpha_per: str = "head"           # "head" | "layer"
    tau: float = 0.1
    mode: str = "eval"                # "teacher" | "train" | "eval"
    generator: torch.Generator | None = None
    # filled by each forward, one entry per layer:
    frac: list = field(default_factory=list)      # straight-through fraction of tokens flagged, [B, Hkv]
    hard: list = field(default_factory=list)      # hard flags of the keys, [B, Hkv, T] bool
    logits: list = field(default_factory=list)    # decision logits, [B, Hkv, T] (detached)
    capture_far: bool = False                     # record far_attn (oracle_init.py)
    far_attn: list = field(default_factory=list)  # per key: mean attention from queries > window back, [B, Hkv, T]

    def reset(self):
        self.frac, self.hard, self.logits, self.far_attn = [], [], [], []


def dms_additive_mask(keep_logp, window):
    """The DMS attention mask from per-token log(1 - p) of the decisions.

    keep_logp: [B, H, T], entry t = log(1 - p_t), where p_t is token t's
    decision, which flags token t-1. Returns [B, H, T(query), T(key)]: causal
    -inf above the diagonal, and for key j, query i with i - j > window,
    log(1 - p_{j+1}) (0 for the last key: no token has flagged it yet).
    With p in {0, 1} this is exactly DESIGN.md §3.1's visibility rule.
    """
    B, H, T = keep_logp.shape
    dev, dt = keep_logp.device, keep_logp.dtype
    key_lp = torch.cat([keep_logp[..., 1:], keep_logp.new_zeros(B, H, 1)], dim=-1)   # [B, H, T(key)]
    i = torch.arange(T, device=dev)[:, None]
    j = torch.arange(T, device=dev)[None, :]
    far = (i - j) > window                                                            # [T, T]
    causal = torch.where(j > i, torch.tensor(NEG, device=dev, dtype=dt), torch.tensor(0.0, device=dev, dtype=dt))
    return causal + torch.where(far, key_lp[:, :, None, :], key_lp.new_zeros(()))


def logistic_noise(shape, generator=None, device=None, eps=1e-6):
    u = torch.rand(shape, generator=generator, device=device).clamp(eps, 1 - eps)
    return torch.log(u) - torch.log1p(-u)


def _rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def _rope(x, cos, sin):
    # cos/sin: [B, T, D] -> broadcast over heads
    return x * cos[:, None] + _rotate_half(x) * sin[:, None]


def _dms_attention_forward(self, hidden_states, position_embeddings=None, attention_mask=None,
                           past_key_values=None, **kwargs):
    st: DMSState = self._dms_state
    B, T, _ = hidden_states.shape
    D = self.head_dim
    q = self.q_proj(hidden_states).view(B, T, -1, D)
    k = self.k_proj(hidden_states).view(B, T, -1, D)
    v = self.v_proj(hidden_states).view(B, T, -1, D).transpose(1, 2)                 # [B, Hkv, T, D]
    if hasattr(self, "q_norm"):
        q, k = self.q_norm(q), self.k_norm(k)
    q, k = q.transpose(1, 2), k.transpose(1, 2)                                       # [B, H, T, D]
    Hq, Hkv = q.shape[1], k.shape[1]
    G = Hq // Hkv

    if st.variant == "neuron":
        logit = q[:, ::G, :, D - 1] * st.alpha_scale - st.alpha_offset                 # [B, Hkv, T]
        borrow = torch.zeros(Hq, dtype=torch.bool, device=q.device)
        borrow[::G] = True
        chan = torch.zeros(D, dtype=torch.bool, device=q.device)
        chan[D - 1] = True
        zero = (borrow[:, None, None] & chan[None, None, :])                           # [Hq, 1, D]
        q = q.masked_fill(zero, 0.0)
        cos, sin = position_embeddings
        q, k = _rope(q, cos, sin), _rope(k, cos, sin)
        q = q.masked_fill(zero, 0.0)
    else:
        x_res = self._dms_x_res
        # the decision in the adapter's own precision even under autocast: x100
        # makes a bf16 rounding of the projection a visible step in the logit
        with torch.autocast(device_type=x_res.device.type, enabled=False):
            a = self.dms_proj_alpha_norm(x_res.to(self.dms_proj_alpha.weight.dtype))
            logit = (self.dms_proj_alpha(a) * st.alpha_scale - st.alpha_offset).transpose(1, 2)  # [B, Hkv, T]
        cos, sin = position_embeddings
        q, k = _rope(q, cos, sin), _rope(k, cos, sin)
    if st.alpha_per == "layer":
        logit = logit[:, :1].expand(B, Hkv, T)

    if st.mode == "teacher":
        keep_lp = logit.new_zeros(B, Hkv, T)
    elif st.mode == "train":
        z = (logit + logistic_noise(logit.shape, st.generator, logit.device).to(logit.dtype)) / st.tau
        p = torch.sigmoid(z)
        hard = (p > 0.5).to(p.dtype)
        st_dec = hard + p - p.detach()                    # straight-through: hard forward, p's gradient
        keep_lp = F.logsigmoid(-z)                        # log(1 - p), finite and stable
        # token t flags t-1, so decisions 1..T-1 are the ones that can evict
        st.frac.append(st_dec[..., 1:].mean(dim=2) if T > 1 else st_dec.mean(dim=2))
        st.hard.append(hard[..., 1:].detach().bool())
    else:
        hard = logit > 0
        keep_lp = torch.where(hard, torch.tensor(NEG, dtype=logit.dtype, device=logit.device),
                              logit.new_zeros(()))
        st.frac.append(hard[..., 1:].float().mean(dim=2) if T > 1 else hard.float().mean(dim=2))
        st.hard.append(hard[..., 1:])
    st.logits.append(logit.detach())

    # packed, unpadded sequences only: the causal part of the mask is ours
    mask = dms_additive_mask(keep_lp, st.window)[:, :, None]                           # [B, Hkv, 1, T, T]
    qg = q.view(B, Hkv, G, T, D)
    scores = torch.matmul(qg, k[:, :, None].transpose(-1, -2)) * self.scaling          # [B, Hkv, G, T, T]
    probs = torch.softmax((scores + mask).float(), dim=-1)
    if st.capture_far:
        # mean over the group's query heads and over the queries more than
        # `window` after key j of the attention j receives: what evicting j costs
        i = torch.arange(T, device=q.device)
        far = ((i[:, None] - i[None, :]) > st.window).float()                         # [T(q), T(k)]
        n = far.sum(0).clamp(min=1)
        st.far_attn.append((probs.mean(2) * far).sum(-2).detach() / n)                 # [B, Hkv, T]
    probs = probs.to(v.dtype)
    out = torch.matmul(probs, v[:, :, None])                                           # [B, Hkv, G, T, D]
    out = out.reshape(B, Hq, T, D).transpose(1, 2).reshape(B, T, Hq * D)
    return self.o_proj(out), None


def _capture_layer_input(module, args, kwargs):
    x = args[0] if args else kwargs["hidden_states"]
    module.self_attn._dms_x_res = x
    return None


def attach_dms(model, variant="adapter", window=512, alpha_scale=100.0, alpha_offset=5.0, alpha_per="head",
               tau=0.1, init_std=0.0, seed=0):
    """Make `model` a DMS model in place; returns its DMSState.

    The adapter variant adds self_attn.dms_proj_alpha (Linear E -> Hkv, no
    bias; zero-initialised unless init_std > 0) and self_attn.dms_proj_alpha_norm
    (weight ones) to every layer; the neuron variant adds nothing.
    """
    if variant not in ("adapter", "neuron"):
        raise ValueError(f"variant must be 'adapter' or 'neuron', not {variant!r}")
    if alpha_per not in ("head", "layer"):
        raise ValueError(f"alpha_per must be 'head' or 'layer', not {alpha_per!r}")
    cfg = model.config
    st = DMSState(variant=variant, window=window, alpha_scale=alpha_scale, alpha_offset=alpha_offset,
                  alpha_per=alpha_per, tau=tau, generator=torch.Generator().manual_seed(seed))
    E, Hkv = cfg.hidden_size, cfg.num_key_value_heads
    eps = getattr(cfg, "rms_norm_eps", 1e-6)
    g = torch.Generator().manual_seed(seed + 1)
    dtype = next(model.parameters()).dtype
    for layer in model.model.layers:
        attn = layer.self_attn
        attn._dms_state = st
        if variant == "adapter" and not hasattr(attn, "dms_proj_alpha"):
            attn.dms_proj_alpha = nn.Linear(E, Hkv, bias=False, dtype=dtype)
            with torch.no_grad():
                attn.dms_proj_alpha.weight.copy_(init_std * torch.randn(Hkv, E, generator=g) if init_std
                                                 else torch.zeros(Hkv, E))
            attn.dms_proj_alpha_norm = AlphaNorm(E, eps).to(dtype)
        if variant == "adapter":
            layer.register_forward_pre_hook(_capture_layer_input, with_kwargs=True)
        attn.forward = types.MethodType(_dms_attention_forward, attn)
    model._dms_state = st
    return st


def adapter_parameters(model):
    out = {}
    for l, layer in enumerate(model.model.layers):
        a = layer.self_attn
        out[f"model.layers.{l}.self_attn.dms_proj_alpha.weight"] = a.dms_proj_alpha.weight
        out[f"model.layers.{l}.self_attn.dms_proj_alpha_norm.weight"] = a.dms_proj_alpha_norm.weight
    return out


def dms_config_keys(st):
    return {"dms_window_size": int(st.window), "dms_alpha_scale": float(st.alpha_scale),
            "dms_initial_alpha_offset": float(st.alpha_offset), "dms_separate_alpha": st.variant == "adapter",
            "dms_alpha_per": st.alpha_per}


def save_adapter(model, path, extra_meta=None):
    """The small safetensors file `lethe --dms-adapter FILE` reads (core/dms_adapter.c)."""
    from safetensors.torch import save_file
    st = model._dms_state
    if st.variant != "adapter":
        raise ValueError("only the adapter variant has a separate adapter file")
    tensors = {k: v.detach().float().contiguous().cpu() for k, v in adapter_parameters(model).items()}
    meta = {"dms_window_size": str(st.window), "dms_alpha_scale": repr(float(st.alpha_scale)),
            "dms_initial_alpha_offset": repr(float(st.alpha_offset)), "dms_alpha_per": st.alpha_per,
            "format": "pt"}
    meta.update({k: str(v) for k, v in (extra_meta or {}).items()})
    save_file(tensors, path, metadata=meta)


def load_adapter(model, path):
    from safetensors.torch import load_file
    sd = load_file(path)
    params = adapter_parameters(model)
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(sd[k].to(p.dtype))


def save_hf_dms(model, out_dir, tokenizer_src=None):
    """An HF DMS checkpoint: the model's weights (with the adapter tensors for
    the adapter variant) and config.json with the dms_* keys of DESIGN.md §3.1.6."""
    import json
    import os
    import shutil
    model.save_pretrained(out_dir, safe_serialization=True)
    p = os.path.join(out_dir, "config.json")
    c = json.load(open(p))
    c.update(dms_config_keys(model._dms_state))
    json.dump(c, open(p, "w"), indent=2)
    if tokenizer_src:
        for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
            if os.path.exists(os.path.join(tokenizer_src, f)):
                shutil.copy(os.path.join(tokenizer_src, f), out_dir)


def load_base(path, dtype=torch.float32):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="eager")


def achieved_cr(hard_flags, window):
    """The engine's compression ratio for one sequence after its last token:
    tokens / mean live slots over (layer, head). hard_flags: list over layers of
    [B, Hkv, T-1] bool (flag of tokens 0..T-2). A flagged token j is gone once
    T - 1 - j > window."""
    tot, n = 0.0, 0
    for f in hard_flags:
        B, H, Tm1 = f.shape
        T = Tm1 + 1
        j = torch.arange(Tm1, device=f.device)
        gone = f & ((T - 1 - j) > window)
        live = T - gone.sum(-1).float()                       # [B, H]
        tot += live.sum().item()
        n += B * H
    T = hard_flags[0].shape[-1] + 1
    return T / (tot / n)


def cr_schedule(step, cr_final, steps_final):
    """Target compression ratio at `step`: linear from 1 to cr_final over steps_final."""
    return 1.0 + (cr_final - 1.0) * min(step / max(steps_final, 1), 1.0)


def target_fraction(step, cr_final, steps_final):
    """alpha* = 1 - 1/CR(s): the fraction of tokens to flag."""
    return 1.0 - 1.0 / cr_schedule(step, cr_final, steps_final)


def dms_losses(student_logits, teacher_logits, frac, alpha_target, loss_mask=None, comp_per="model"):
    """per-token KL(student || teacher) and the one-sided compression loss.

    frac: list over layers of [B, Hkv] (or [Hkv]) straight-through fractions flagged.
    comp_per = "model" (NVIDIA's reference, experimental/dms: the decoder layer
    averages its decisions over heads and tokens, the model averages layers, the
    hinge is taken per sequence, then averaged over the batch):
        mean_b max(0, alpha* - mean_{layer, head} frac[b])
    so the eviction budget is shared: a head that must keep everything can,
    if others evict more. comp_per = "head" (this trainer's first recipe):
    mean over (layer, head) of max(0, alpha* - frac) — every head must reach
    alpha* on its own, which forces uniform eviction and, with the hinge being
    one-sided, pushes the mean above the target."""
    ls = F.log_softmax(student_logits.float(), -1)
    lt = F.log_softmax(teacher_logits.float(), -1)
    kl = (ls.exp() * (ls - lt)).sum(-1)                                               # [B, T]
    if loss_mask is not None:
        kl = (kl * loss_mask).sum() / loss_mask.sum().clamp(min=1)
    else:
        kl = kl.mean()
    fr = torch.stack(frac)                                                            # [L, B, Hkv]
    if fr.dim() == 2:
        fr = fr[:, None]
    if comp_per == "model":
        comp = torch.clamp(alpha_target - fr.mean(dim=(0, 2)), min=0).mean()
    elif comp_per == "head":
        comp = torch.clamp(alpha_target - fr.mean(dim=1), min=0).mean()
    else:
        raise ValueError(f"comp_per must be 'model' or 'head', not {comp_per!r}")
    return kl, comp, fr.detach().mean().item()


def kl_per_token(student_logits, teacher_logits):
    ls = F.log_softmax(student_logits.float(), -1)
    lt = F.log_softmax(teacher_logits.float(), -1)
    return (ls.exp() * (ls - lt)).sum(-1)

