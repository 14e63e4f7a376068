"""Liger: check() on a CPU, and teardown restoring the module globals its patch rewrites."""

from __future__ import annotations

import importlib

import pytest
import torch

from stagebench import stages
from stagebench.models import build_model
from stagebench.optim import StageContext, liger

CPU = torch.device("cpu")


def _tiny() -> torch.nn.Module:
    return build_model("tiny", device=CPU, dtype=torch.float32, seed=0, attn_implementation="sdpa")


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
    model = _tiny()
    ctx = StageContext(stages.resolve(spec), CPU, torch.float32)
    with ctx.cleanup:
        liger.apply(model, ctx)
        assert modeling.Qwen3RMSNorm is not before["Qwen3RMSNorm"]
        assert model.model.layers[0].mlp._get_name() == "LigerSwiGLUMLP"  # bound per instance
        assert ctx.loss_head == head
        assert ctx.notes["liger"].startswith("liger-kernel ")
    assert {n: getattr(modeling, n) for n in before} == before


@pytest.mark.parametrize(
    ("spec", "call_kwargs", "note"),
    [
        ("02_liger_sdpa", {"accum_dtype": torch.float32}, "accum_dtype=torch.float32 passed"),
        ("sdpa+liger:accum=bf16", {}, "accum_dtype=None: accumulates in the weights'"),
        ("04_liger_cce_sdpa", {}, None),  # CCE is the loss head: no FLCE to configure
    ],
)
def test_flce_accumulation_follows_the_option(spec, call_kwargs, note):
    """The seed called Liger's patched forward with accum_dtype=torch.float32 (fp32 FLCE
    accumulation); stagebench passes it on every call the same way."""
    pytest.importorskip("liger_kernel", reason="liger-kernel is an optional [gpu] extra")
    model = _tiny()
    ctx = StageContext(stages.resolve(spec), CPU, torch.float32)
    with ctx.cleanup:
        liger.apply(model, ctx)
    assert ctx.call_kwargs == call_kwargs
    if note is None:
        assert "fused_linear_cross_entropy" not in ctx.notes["liger"]
    else:
        assert note in ctx.notes["liger"]


def test_accum_dtype_reaches_the_flce_through_the_patched_forward(monkeypatch):
    """liger-kernel's own Qwen3 lce_forward on a real (unpatched, CPU) tiny model: the call's
    accum_dtype travels through its **kwargs and the decoder (harmlessly) into
    liger_fused_linear_cross_entropy. Only the Triton FLCE is a FAKE, which records it."""
    pytest.importorskip("liger_kernel", reason="liger-kernel is an optional [gpu] extra")
    import functools
    from types import MethodType

    from liger_kernel.transformers import functional
    from liger_kernel.transformers.model.qwen3 import lce_forward

    from stagebench.optim import training_loss

    seen: list[object] = []
    real = functional.liger_fused_linear_cross_entropy

    @functools.wraps(real)  # its signature: Liger filters the kwargs it passes by it
    def fake_flce(input, weight, target, *args, accum_dtype=None, **kwargs):
        seen.append(accum_dtype)
        logits = input @ weight.T
        return torch.nn.functional.cross_entropy(logits.float(), target, ignore_index=-100)

    monkeypatch.setattr(functional, "liger_fused_linear_cross_entropy", fake_flce)
    ctx = StageContext(stages.resolve("02_liger_sdpa"), CPU, torch.float32)
    with ctx.cleanup:
        liger.apply(_tiny(), ctx)  # its call_kwargs; its Triton layers do not run on a CPU
    model = _tiny()
    model.forward = MethodType(lce_forward, model)
    model.train()
    ids = torch.randint(0, 2048, (1, 16), generator=torch.Generator().manual_seed(0))
    loss = training_loss(model, ids, ids, **ctx.call_kwargs)
    loss.backward()
    assert seen == [torch.float32]
