"""Liger Kernel: instance patching (RoPE, RMSNorm, SwiGLU; fused linear cross-entropy unless cce).

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
    if flce:
        ctx.loss_head = "liger-flce"
    version = metadata.version("liger-kernel")
    ctx.notes["liger"] = f"liger-kernel {version}: rope, rms_norm, swiglu" + (
        ", fused_linear_cross_entropy" if flce else ""
    )
    return model


OPTIMIZATIONS = {"liger": Optimization("liger", check, apply)}
