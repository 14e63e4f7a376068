"""torch.compile: per decoder layer (the seed's way) or the whole model.

Per-layer compile keeps each graph small and identical across layers, so one compilation serves
all of them; the seed chose it over whole-model compile for compatibility.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch

from stagebench.models import decoder_layers
from stagebench.optim import Optimization, StageContext

MODES = {
    "compile": ("per-layer", "max-autotune"),
    "compile-default": ("per-layer", "default"),
    "compile-model": ("model", "default"),
}


def default_cache_dir(environ: Mapping[str, str] = os.environ) -> Path:
    base = environ.get("XDG_CACHE_HOME") or Path(environ.get("HOME") or Path.home()) / ".cache"
    return Path(base) / "stagebench" / "inductor"


def cache_dir_for(requested: str | None, environ: Mapping[str, str] = os.environ) -> str:
    """The inductor cache a stage uses: the workload's, else an explicit TORCHINDUCTOR_CACHE_DIR,
    else stagebench's persistent default, so a re-run reuses compiled kernels and autotuning.

    The parent decides it and puts it in the child's environment before the child imports
    torch: torch fills TORCHINDUCTOR_CACHE_DIR with its own temporary default the first time
    anything asks (model construction does), so deciding inside the child comes too late.
    """
    chosen = requested or environ.get("TORCHINDUCTOR_CACHE_DIR") or default_cache_dir(environ)
    return os.path.abspath(os.path.expanduser(chosen))


def use_cache_dir(requested: str | None) -> str:
    """The inductor cache this process really uses, created; with what was asked if it differs
    (a stage run in-process, not through stagebench's child, keeps torch's choice)."""
    try:
        from torch._inductor.runtime.cache_dir_utils import cache_dir
    except ImportError:  # torch moved it: the variable it reads is still the contract
        active = os.environ.get("TORCHINDUCTOR_CACHE_DIR") or ""
    else:
        active = cache_dir()
    if active:
        Path(active).mkdir(parents=True, exist_ok=True)
    if requested and os.path.abspath(os.path.expanduser(requested)) != active:
        return f"{active} (not {requested}: the cache is chosen before torch starts)"
    return active


def _compile(part: str):
    scope = MODES[part][0]

    def apply(model: torch.nn.Module, ctx: StageContext) -> torch.nn.Module:
        ctx.notes["compile_cache"] = use_cache_dir(ctx.compile_cache)
        mode = MODES[part][1]
        if ctx.sharded and mode == "max-autotune":
            # CUDA graphs replay fixed addresses; FSDP2 re-allocates the gathered parameters
            # every step, so cudagraph trees fall off their fast path (measured: 50x slower).
            mode = "max-autotune-no-cudagraphs"
        if scope == "per-layer":
            for layer in decoder_layers(model):
                layer.compile(fullgraph=True, mode=mode)  # in place: names and state stay
        elif ctx.loss_head.startswith("cce"):
            # CCE's head is its own Triton kernel, not something to trace: compile the base model.
            model.get_decoder().compile(mode=mode)
        else:
            model.compile(mode=mode)
        ctx.notes["compile"] = f"{scope}, mode={mode}, fullgraph={scope == 'per-layer'}"
        return model

    return apply


OPTIMIZATIONS = {p: Optimization(p, lambda device: None, _compile(p)) for p in MODES}
