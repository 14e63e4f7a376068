"""Liger: check() on a CPU, and teardown restoring the module globals its patch rewrites."""

from __future__ import annotations

import importlib

import pytest
import torch

from stagebench import stages
from stagebench.models import build_model
from stagebench.optim import StageContext, liger

CPU = torch.device("cpu")


def test_needs_cuda_on_cpu():
    pytest.importorskip("liger_kernel", reason="liger-kernel is an optional [gpu] extra")
    assert liger.check(CPU) == "needs CUDA"


def test_missing_package_is_named(monkeypatch):
    monkeypatch.setattr(liger.importlib.util, "find_spec", lambda name: None)  # FAKE: not installed
    assert "liger-kernel not installed" in liger.check(CPU)


@pytest.mark.parametrize(("spec", "head"), [("sdpa+liger", "liger-flce"), ("sdpa+liger+cce", "hf")])
def test_instance_patch_is_undone_at_teardown(spec, head):
    """Patching needs no GPU; the patched globals must be gone once the stage ends."""
    pytest.importorskip("liger_kernel", reason="liger-kernel is an optional [gpu] extra")
    modeling = importlib.import_module("transformers.models.qwen3.modeling_qwen3")
    before = {n: getattr(modeling, n) for n in ("Qwen3RMSNorm", "Qwen3MLP", "apply_rotary_pos_emb")}
    model = build_model("tiny", device=CPU, dtype=torch.float32, seed=0, attn_implementation="sdpa")
    ctx = StageContext(stages.resolve(spec), CPU, torch.float32)
    with ctx.cleanup:
        liger.apply(model, ctx)
        assert modeling.Qwen3RMSNorm is not before["Qwen3RMSNorm"]
        assert model.model.layers[0].mlp._get_name() == "LigerSwiGLUMLP"  # bound per instance
        assert ctx.loss_head == head
        assert ctx.notes["liger"].startswith("liger-kernel ")
    assert {n: getattr(modeling, n) for n in before} == before
