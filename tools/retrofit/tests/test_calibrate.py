"""calibrate.py: the offset it picks gives the target CR (the engine's
accounting) on the rows it was fitted on, and only the offset changes."""
import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import calibrate
import dms_model as dm
from conftest import FIXTURES


def test_solve_offset_on_fixed_scores():
    g = torch.Generator().manual_seed(0)
    scores = [torch.randn(2, 2, 99, generator=g) * 10 for _ in range(3)]      # T = 100
    for target in (1.5, 2.0, 3.0):
        off = calibrate.solve_offset(scores, 4, target)
        assert calibrate.cr_at_offset(scores, 4, off) == pytest.approx(target, rel=0.03)
    # monotone: a higher offset flags less
    assert calibrate.cr_at_offset(scores, 4, 5.0) < calibrate.cr_at_offset(scores, 4, -5.0)


def test_calibrated_adapter_reaches_the_target(tmp_path):
    base = os.path.join(FIXTURES, "llama-f32")
    m = dm.load_base(base)
    st = dm.attach_dms(m, "adapter", window=3, init_std=0.05, seed=2)
    src = str(tmp_path / "a.safetensors")
    dm.save_adapter(m, src)
    rows = torch.randint(0, 300, (3, 60), generator=torch.Generator().manual_seed(7))
    off, cr, hist = calibrate.calibrate(m, st, rows, 2.0, iters=4, log=lambda *_: None)
    assert cr == pytest.approx(2.0, rel=0.08), hist
    out = str(tmp_path / "b.safetensors")
    dm.save_adapter(m, out)
    with safe_open(out, "pt") as f:
        assert float(f.metadata()["dms_initial_alpha_offset"]) == pytest.approx(off)
    wa, wb = load_file(src), load_file(out)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # a fresh model with the calibrated offset reproduces that CR: the offset is all that changed
    m2 = dm.load_base(base)
    st2 = dm.attach_dms(m2, "adapter", window=3, alpha_offset=off)
    dm.load_adapter(m2, out)
    _, cr2 = calibrate.eval_scores(m2, st2, rows, False)
    assert cr2 == pytest.approx(cr, abs=1e-9)
