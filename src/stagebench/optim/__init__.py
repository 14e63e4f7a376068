"""Optimizations: each family one module with the same small face.

    check(device) -> None, or the reason it cannot run here
    apply(model, ctx) -> model      (globals it patches are undone through ctx.cleanup)

The runner only walks a stage's parts through this registry; it never imports liger, cce or
kernels itself.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import torch

from stagebench.stages import Stage


class Unavailable(RuntimeError):
    """Raised by apply() when a need only shows once the model exists (e.g. no decoder layers)."""


def training_loss(
    model: torch.nn.Module, input_ids: torch.Tensor, labels: torch.Tensor, **call_kwargs: Any
) -> torch.Tensor:
    """The loss through the model's own call, whichever head an optimization put there (HF's
    logits + cross-entropy, Liger's FLCE, CCE); wrappers such as FSDP2 hook that call.
    call_kwargs: what an optimization asked to pass on every call (StageContext.call_kwargs)."""
    return model(input_ids=input_ids, labels=labels, **call_kwargs).loss


@dataclass
class StageContext:
    """What an optimization may read and change besides the model itself."""

    stage: Stage
    device: torch.device
    dtype: torch.dtype
    compile_cache: str | None = None
    sharded: bool = False  # FSDP2 will wrap the model after the optimizations
    cleanup: ExitStack = field(default_factory=ExitStack)
    loss_head: str = "hf"
    notes: dict[str, str] = field(default_factory=dict)
    # Keyword arguments for every model call, e.g. Liger's accum_dtype, which its patched
    # forward takes per call (as the seed passed it), not at patch time.
    call_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Optimization:
    part: str
    check: Callable[[torch.device], str | None]
    apply: Callable[[torch.nn.Module, StageContext], torch.nn.Module]


def registry() -> dict[str, Optimization]:
    from stagebench.optim import attention, cce, compile, kernelize, liger

    table: dict[str, Optimization] = {}
    for module in (attention, kernelize, liger, cce, compile):
        table.update(module.OPTIMIZATIONS)
    return table


def for_stage(stage: Stage) -> list[Optimization]:
    table = registry()
    return [table[part] for part in stage.parts]


def unavailable_reason(stage: Stage, device: torch.device) -> str | None:
    """The first reason any of the stage's optimizations cannot run here, naming the part."""
    for opt in for_stage(stage):
        reason = opt.check(device)
        if reason:
            return f"{opt.part}: {reason}"
    return None


def needs_cuda(device: torch.device) -> str | None:
    return None if device.type == "cuda" else "needs CUDA"
