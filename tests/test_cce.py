"""The CCE loss head on `tiny`, for real, with cut-cross-entropy's CPU (torch.compile) kernel."""

from __future__ import annotations

import pytest
import torch

from stagebench import stages
from stagebench.models import build_model
from stagebench.optim import StageContext, Unavailable, cce, training_loss
from stagebench.runner import run_stage

CPU = torch.device("cpu")
pytest.importorskip("cut_cross_entropy", reason="cut-cross-entropy is an optional [gpu] extra")


def _tiny():
    return build_model("tiny", device=CPU, dtype=torch.float32, seed=0, attn_implementation="sdpa")


def test_cce_head_matches_the_hf_head_in_loss_and_gradients():
    ids = torch.randint(0, 2048, (2, 32), generator=torch.Generator().manual_seed(0))
    reference, model = _tiny(), _tiny()
    ref_loss = training_loss(reference, ids, ids)
    ref_loss.backward()
    ctx = StageContext(stages.resolve("sdpa+cce"), CPU, torch.float32)
    cce.apply(model, ctx)
    loss = training_loss(model, ids, ids)
    loss.backward()
    assert ctx.loss_head == "cce (torch_compile)"
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-5)
    for name in ("lm_head.weight", "model.layers.0.mlp.down_proj.weight"):
        got = dict(model.named_parameters())[name].grad
        want = dict(reference.named_parameters())[name].grad
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_lm_head_with_bias_is_unavailable():
    model = _tiny()
    model.lm_head = torch.nn.Linear(128, 2048, bias=True)
    ctx = StageContext(stages.resolve("sdpa+cce"), CPU, torch.float32)
    with pytest.raises(Unavailable, match="bias"):
        cce.apply(model, ctx)


def test_run_stage_with_cce_on_tiny(tiny_workload):
    m = run_stage(stages.resolve("sdpa+cce"), tiny_workload)
    assert m.notes["loss_head"] == "cce (torch_compile)"
    assert m.loss_last < m.loss_first
