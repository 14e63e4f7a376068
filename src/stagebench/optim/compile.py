"""torch.compile: per decoder layer (the seed's way) or the whole model.

Per-layer compile keeps each graph small and identical across layers, so one compilation serves
all of them; the seed chose it over whole-model compile for compatibility.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from stagebench.models import decoder_layers
from stagebench.optim import Optimization, StageContext

MODES = {
    "compile": ("per-layer", "max-autotune"),
    "compile-default": ("per-layer", "default"),
    "compile-model": ("model", "default"),
}


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "stagebench" / "inductor"


def use_cache_dir(path: str | None) -> str:
    """Point inductor at a persistent cache so a re-run reuses compiled kernels and autotuning."""
    cache = str(path or os.environ.get("TORCHINDUCTOR_CACHE_DIR") or default_cache_dir())
    Path(cache).mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
    return cache


def _compile(part: str):
    scope = MODES[part][0]

    def apply(model: torch.nn.Module, ctx: StageContext) -> torch.nn.Module:
        use_cache_dir(ctx.compile_cache)
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
