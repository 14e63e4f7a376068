"""Attention implementations: eager, SDPA (with the seed's backend priority), FA2, FA3."""

from __future__ import annotations

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from stagebench.optim import Optimization, StageContext, needs_cuda

# The seed's order on SM90: cuDNN attention first, then flash.
SEED_SDPA_PRIORITY = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION]
SDPA_BACKENDS = {
    "sdpa": SEED_SDPA_PRIORITY,
    "sdpa-cudnn": [SDPBackend.CUDNN_ATTENTION],
    "sdpa-flash": [SDPBackend.FLASH_ATTENTION],
}


def _is_sm90(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.get_device_capability(device) == (9, 0)


def _apply_eager(model: torch.nn.Module, ctx: StageContext) -> torch.nn.Module:
    model.set_attn_implementation("eager")
    ctx.notes["attention"] = "eager"
    return model


def _sdpa(part: str):
    backends = SDPA_BACKENDS[part]

    def apply(model: torch.nn.Module, ctx: StageContext) -> torch.nn.Module:
        model.set_attn_implementation("sdpa")
        names = ">".join(b.name.lower() for b in backends)
        if part == "sdpa" and not _is_sm90(ctx.device):
            ctx.notes["attention"] = "sdpa (torch default backend order: not SM90)"
            return model
        # A global setting for the whole run; ExitStack restores it at teardown.
        ctx.cleanup.enter_context(sdpa_kernel(backends, set_priority=part == "sdpa"))
        ctx.notes["attention"] = f"sdpa ({names})"
        return model

    return apply


def _check_sdpa(part: str):
    def check(device: torch.device) -> str | None:
        return None if part == "sdpa" else needs_cuda(device)

    return check


def _not_yet(device: torch.device) -> str | None:
    return "not implemented yet"


def _unreachable(model: torch.nn.Module, ctx: StageContext) -> torch.nn.Module:
    raise AssertionError("apply() called on an optimization whose check() failed")


OPTIMIZATIONS = {
    "eager": Optimization("eager", lambda device: None, _apply_eager),
    **{p: Optimization(p, _check_sdpa(p), _sdpa(p)) for p in SDPA_BACKENDS},
    "fa2": Optimization("fa2", _not_yet, _unreachable),
    "fa3": Optimization("fa3", _not_yet, _unreachable),
}
