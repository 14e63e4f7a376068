"""Liger Kernel: instance patching (RoPE, RMSNorm, SwiGLU; fused linear cross-entropy unless cce).

The fused linear cross-entropy (FLCE) accumulates the LM head's weight gradient over chunks of
tokens. liger-kernel's patched causal-LM forward (`lce_forward`) takes `accum_dtype` per call,
in its **kwargs, and LigerForCausalLMLoss hands it to `liger_fused_linear_cross_entropy`; the
seed called the model with `accum_dtype=torch.float32`, so stagebench passes it the same way,
through the context's call_kwargs (`liger:accum=bf16` leaves it out: the weights' own dtype).

Liger's instance patch also rewrites module-level names in the model's transformers module (its
RMSNorm and MLP classes, apply_rotary_pos_emb), so those are snapshotted and restored at teardown:
a later stage in the same process must not inherit them.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from importlib import metadata
from types import ModuleType

import torch

from stagebench.optim import Optimization, StageContext, Unavailable, needs_cuda


def check(device: torch.device) -> str | None:
    if importlib.util.find_spec("liger_kernel") is None:
        return "liger-kernel not installed (pip install 'stagebench[gpu]')"
    return needs_cuda(device)  # Liger's kernels are Triton GPU kernels


def _restore_module(module: ModuleType) -> Callable[[], None]:
    saved = dict(vars(module))

    def restore() -> None:
        for name in set(vars(module)) - set(saved):
            delattr(module, name)
        for name, value in saved.items():
            if vars(module).get(name) is not value:
                setattr(module, name, value)

    return restore


def apply(model: torch.nn.Module, ctx: StageContext) -> torch.nn.Module:
    from liger_kernel.transformers.monkey_patch import (
        MODEL_TYPE_TO_APPLY_LIGER_FN,
        _apply_liger_kernel_to_instance,
    )

    model_type = model.config.model_type
    if model_type not in MODEL_TYPE_TO_APPLY_LIGER_FN:
        raise Unavailable(f"liger has no patch for model type {model_type!r}")
    modeling = importlib.import_module(model.__class__.__module__)
    ctx.cleanup.callback(_restore_module(modeling))
    flce = "cce" not in ctx.stage.parts  # the seed: FLCE is the loss head unless CCE is
    _apply_liger_kernel_to_instance(model=model, fused_linear_cross_entropy=flce)
    version = metadata.version("liger-kernel")
    ctx.notes["liger"] = f"liger-kernel {version}: rope, rms_norm, swiglu"
    if flce:
        ctx.loss_head = "liger-flce"
        accum = accum_dtype(ctx.stage.option("liger", "accum"))
        if accum is not None:
            ctx.call_kwargs["accum_dtype"] = accum
            how = f"accum_dtype={accum} passed on every call"
        else:
            how = f"accum_dtype=None: accumulates in the weights' {ctx.dtype}"
        ctx.notes["liger"] += f", fused_linear_cross_entropy ({how})"
    return model


def accum_dtype(option: str) -> torch.dtype | None:
    """liger:accum -> FLCE's accum_dtype: float32, or None (Liger's default: the weights')."""
    return torch.float32 if option == "fp32" else None


OPTIMIZATIONS = {"liger": Optimization("liger", check, apply)}
