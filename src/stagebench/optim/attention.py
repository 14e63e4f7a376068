"""Attention implementations: eager, SDPA (with the seed's backend priority), FA2, FA3."""

from __future__ import annotations

import functools
import importlib.util

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from stagebench import hub
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


# --- FlashAttention 2: the flash_attn package, else the hub kernel --------------------------------
FA2_HUB = "kernels-community/flash-attn"
FA3_HUB = "kernels-community/flash-attn3"  # what the seed ran


def _fa2_source() -> tuple[str | None, str]:
    """(transformers attn_implementation or None, what was found or why nothing was)."""
    if importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2", "flash_attn package"
    hub = _hub_source(FA2_HUB)
    return hub if hub[0] else (None, f"flash_attn not installed; {hub[1]}")


def _hub_source(repo: str) -> tuple[str | None, str]:
    if importlib.util.find_spec("kernels") is None:
        return None, f"hub kernel {repo} needs the kernels package"
    reason = hub.kernel_reason(repo)
    return (None, f"hub kernel {repo}: {reason}") if reason else (repo, f"hub kernel {repo}")


def _check_fa2(device: torch.device) -> str | None:
    if needs_cuda(device):
        return needs_cuda(device)
    impl, why = _fa2_source()
    return None if impl else why


def _apply_fa2(model: torch.nn.Module, ctx: StageContext) -> torch.nn.Module:
    impl, source = _fa2_source()
    model.set_attn_implementation(impl)
    ctx.notes["attention"] = f"fa2 ({source})"
    return model


# --- FlashAttention 3: an installed flash_attn_interface with a backward pass, else the hub ------
FA3_REGISTERED_NAME = "stagebench_fa3"


@functools.cache
def _fa3_interface_reason(device: str = "cuda") -> str | None:
    """None when flash_attn_interface runs forward AND backward on this GPU; else why not.

    A forward-only build (the PyPI tokenspeed-fa3 is one) imports fine and fails only in the first
    backward, so it is tried up front on a tiny problem instead of mid-run.
    """
    if importlib.util.find_spec("flash_attn_interface") is None:
        return "flash_attn_interface not installed"
    try:
        import flash_attn_interface

        q, k, v = (
            torch.randn(1, 128, 2, 128, device=device, dtype=torch.bfloat16, requires_grad=True)
            for _ in range(3)
        )
        out = flash_attn_interface.flash_attn_func(q, k, v, causal=True)
        out = out[0] if isinstance(out, tuple) else out
        out.sum().backward()
        if device == "cuda":
            torch.cuda.synchronize()
    except Exception as exc:  # any failure here means the build cannot train
        return f"flash_attn_interface cannot train here ({type(exc).__name__}: {exc})"
    return None


def _fa3_source() -> tuple[str | None, str]:
    local = _fa3_interface_reason()
    if local is None:
        return FA3_REGISTERED_NAME, "flash_attn_interface"
    hub_impl, hub_why = _hub_source(FA3_HUB)
    return (hub_impl, hub_why) if hub_impl else (None, f"{local}; {hub_why}")


def _check_fa3(device: torch.device) -> str | None:
    if needs_cuda(device):
        return needs_cuda(device)
    impl, why = _fa3_source()
    return None if impl else why


def fa3_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers attention signature -> flash_attn_interface (causal, no padding).

    stagebench's batches are full-length sequences, so there is no padding mask to honour.
    """
    import flash_attn_interface

    q, k, v = (t.transpose(1, 2) for t in (query, key, value))  # (b, h, s, d) -> (b, s, h, d)
    out = flash_attn_interface.flash_attn_func(q, k, v, softmax_scale=scaling, causal=True)
    return (out[0] if isinstance(out, tuple) else out), None


def _apply_fa3(model: torch.nn.Module, ctx: StageContext) -> torch.nn.Module:
    from transformers import AttentionInterface

    impl, source = _fa3_source()
    if impl == FA3_REGISTERED_NAME:
        AttentionInterface.register(FA3_REGISTERED_NAME, fa3_attention)
    model.set_attn_implementation(impl)
    ctx.notes["attention"] = f"fa3 ({source})"
    return model


OPTIMIZATIONS = {
    "eager": Optimization("eager", lambda device: None, _apply_eager),
    **{p: Optimization(p, _check_sdpa(p), _sdpa(p)) for p in SDPA_BACKENDS},
    "fa2": Optimization("fa2", _check_fa2, _apply_fa2),
    "fa3": Optimization("fa3", _check_fa3, _apply_fa3),
}
