"""torch.compile: per decoder layer (the seed's way) or the whole model, and what it did.

Per-layer compile keeps each graph small and identical across layers, so one compilation serves
all of them; the seed chose it over whole-model compile for compatibility.

The seed's settings, per stage (`settings_for`): fullgraph=True except for FlashAttention layers
(fullgraph=False, capture_scalar_outputs=True: transformers' flash path has data-dependent
scalars), dynamo's cache_size_limit raised to 256 (every decoder layer is a module of its own,
and integer attributes such as layer_idx are guarded on). Unlike the seed, errors are never
suppressed (the seed's suppress_errors=True fell back to eager and still reported success):
a compile error fails the stage, and what ran eagerly anyway (graph breaks, frames dynamo gave
up on) is counted from dynamo's counters into the Result (`observed`).
"""

from __future__ import annotations

import getpass
import os
import re
import tempfile
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from stagebench.models import decoder_layers
from stagebench.optim import Optimization, StageContext
from stagebench.results import CompileMetrics
from stagebench.stages import COMPILE_PARTS, FLASH_PARTS, Stage, compile_fullgraph

SEED_CACHE_SIZE_LIMIT = 256  # the seed's torch._dynamo.config.cache_size_limit
TOP_REASONS = 3  # graph-break reasons kept in a Result, most frequent first
# Compilations dynamo remembers (torch's default keeps 64): enough for a stage's every frame.
METRICS_KEPT = 100_000


@dataclass(frozen=True)
class CompileSettings:
    """How a stage compiles: what the seed set, per stage, and what stagebench adds."""

    scope: str  # per-layer or model
    mode: str
    fullgraph: bool
    cache_size_limit: int
    capture_scalar_outputs: bool
    suppress_errors: bool = False  # never: a compile error fails the stage

    def describe(self) -> str:
        return (
            f"{self.scope}, mode={self.mode}, fullgraph={self.fullgraph}, "
            f"cache_size_limit={self.cache_size_limit}, "
            f"capture_scalar_outputs={self.capture_scalar_outputs}, "
            f"suppress_errors={self.suppress_errors}"
        )


def settings_for(stage: Stage, *, sharded: bool = False) -> CompileSettings:
    """The stage's compile settings: the seed's unless its spec chose otherwise."""
    part = stage.compile_part
    if part not in COMPILE_PARTS:
        raise ValueError(f"stage {stage.name!r} does not compile")
    mode = stage.option(part, "mode")
    if sharded and mode == "max-autotune":
        # CUDA graphs replay fixed addresses; FSDP2 re-allocates the gathered parameters
        # every step, so cudagraph trees fall off their fast path (measured: 50x slower).
        mode = "max-autotune-no-cudagraphs"
    return CompileSettings(
        scope="model" if part == "compile-model" else "per-layer",
        mode=mode,
        fullgraph=compile_fullgraph(stage),
        cache_size_limit=SEED_CACHE_SIZE_LIMIT,
        capture_scalar_outputs=stage.attention in FLASH_PARTS,
    )


def default_cache_dir(environ: Mapping[str, str] = os.environ) -> Path:
    base = environ.get("XDG_CACHE_HOME") or Path(environ.get("HOME") or Path.home()) / ".cache"
    return Path(base) / "stagebench" / "inductor"


def torch_default_cache_dir() -> str:
    """The temporary directory torch writes into TORCHINDUCTOR_CACHE_DIR when nobody chose one
    (torch._inductor.runtime.cache_dir_utils.default_cache_dir, restated: no torch import)."""
    user = re.sub(r'[\\/:*?"<>|]', "_", getpass.getuser())
    return os.path.join(tempfile.gettempdir(), "torchinductor_" + user)


def cache_dir_for(requested: str | None, environ: Mapping[str, str] = os.environ) -> str:
    """The inductor cache a stage uses: the workload's, else an explicit TORCHINDUCTOR_CACHE_DIR,
    else stagebench's persistent default, so a re-run reuses compiled kernels and autotuning.

    The parent decides it and puts it in the child's environment before the child imports
    torch: torch fills TORCHINDUCTOR_CACHE_DIR with its own temporary default the first time
    anything asks (model construction does), so deciding inside the child comes too late. The
    parent may have torch loaded too (on an H100 host something in it filled the variable, and
    every stage compiled into /tmp): torch's own default there is not a choice, and is ignored.
    """
    explicit = environ.get("TORCHINDUCTOR_CACHE_DIR")
    if explicit and os.path.abspath(explicit) == os.path.abspath(torch_default_cache_dir()):
        explicit = None  # torch's fill-in, not the user's choice (--compile-cache can ask for it)
    chosen = requested or explicit or default_cache_dir(environ)
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


def apply(model: torch.nn.Module, ctx: StageContext) -> torch.nn.Module:
    ctx.notes["compile_cache"] = use_cache_dir(ctx.compile_cache)
    settings = settings_for(ctx.stage, sharded=ctx.sharded)
    # Read when dynamo traces and guards, i.e. during the timed loop; undone at teardown.
    ctx.cleanup.enter_context(
        torch._dynamo.config.patch(
            cache_size_limit=settings.cache_size_limit,
            capture_scalar_outputs=settings.capture_scalar_outputs,
            suppress_errors=settings.suppress_errors,
        )
    )
    options = {"fullgraph": settings.fullgraph, "mode": settings.mode}
    if settings.scope == "per-layer":
        for layer in decoder_layers(model):
            layer.compile(**options)  # in place: names and state stay
    elif ctx.loss_head.startswith("cce"):
        # CCE's head is its own Triton kernel, not something to trace: compile the base model.
        model.get_decoder().compile(**options)
    else:
        model.compile(**options)
    ctx.notes["compile"] = settings.describe()
    return model


def reset_counters(ctx: StageContext) -> None:
    """Start the stage from zero: dynamo's counters and code caches are process-wide, and an
    earlier stage's compiled code would otherwise serve (and hide) this stage's compilation."""
    from torch._dynamo import utils

    torch._dynamo.reset()
    utils.counters.clear()
    previous = getattr(getattr(utils, "_compilation_metrics", None), "maxlen", None)
    if hasattr(utils, "set_compilation_metrics_limit") and previous is not None:
        utils.set_compilation_metrics_limit(METRICS_KEPT)
        ctx.cleanup.callback(utils.set_compilation_metrics_limit, previous)
    if hasattr(utils, "clear_compilation_metrics"):
        utils.clear_compilation_metrics()


def _first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0].strip()


def observed() -> CompileMetrics:
    """What dynamo did since reset_counters: graphs, graph breaks and their reasons, recompiles,
    and the frames that ran eagerly because dynamo gave up on them."""
    from torch._dynamo import utils

    counters = utils.counters
    reasons: Counter[str] = Counter()
    for message, count in counters["graph_break"].items():
        reasons[_first_line(message)] += count
    frames = counters["frames"]
    recompiles, eager_reasons = _from_compilation_metrics(utils)
    return CompileMetrics(
        graphs=int(counters["stats"]["unique_graphs"]),
        graph_breaks=sum(reasons.values()),
        recompiles=recompiles,
        eager_frames=max(0, int(frames["total"]) - int(frames["ok"])),
        break_reasons=dict(reasons.most_common(TOP_REASONS)),
        eager_reasons=eager_reasons,
    )


def _from_compilation_metrics(utils) -> tuple[int | None, dict[str, str]]:
    """(recompiles, {frame: why it ran eagerly}) from dynamo's per-compilation records.

    A record with a recompile reason is a recompile; one with a failure is a frame dynamo gave
    up on (without suppress_errors any other failure fails the stage). A failed record does not
    name its code: the frame's earlier, successful record with the same frame id does.
    """
    get = getattr(utils, "get_compilation_metrics", None)
    if get is None:  # a torch without them: the count is unknown, not 0
        return None, {}
    records = get()
    names: dict[str, str] = {}
    for r in records:
        if getattr(r, "co_name", None):
            where = f"{Path(r.co_filename or '').name}:{r.co_firstlineno}"
            names.setdefault(_frame_id(r), f"{r.co_name} ({where})")
    recompiles = 0
    eager: dict[str, str] = {}
    for r in records:
        failed = getattr(r, "fail_type", None)
        if failed:
            frame = names.get(_frame_id(r), f"frame {_frame_id(r)}")
            eager.setdefault(frame, f"{failed}: {_first_line(r.fail_reason or '')}")
        elif getattr(r, "recompile_reason", None):
            recompiles += 1
    return recompiles, dict(list(eager.items())[:TOP_REASONS])


def _frame_id(record) -> str:
    """'1' of compile id '1/2' (frame 1, its third compilation)."""
    return str(getattr(record, "compile_id", "") or "").rsplit("/", 1)[0]


OPTIMIZATIONS = {p: Optimization(p, lambda device: None, apply) for p in COMPILE_PARTS}
