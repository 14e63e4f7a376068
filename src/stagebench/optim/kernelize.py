"""kernelize: `kernels.kernelize()` swaps the forward of every layer marked "RMSNorm" for a kernel.

Where the kernel comes from is decided once per stage and written to the notes:

* hub: transformers' own kernel mapping (RMSNorm -> Liger's Triton RMSNorm in
  kernels-community/liger-kernels), as the seed ran it;
* local: the same layer from the kernel repository shipped inside stagebench
  (``stagebench/hub_kernels/rmsnorm``: a ``torch-cuda`` build on Liger's Triton RMSNorm and a
  pure-PyTorch ``torch-cpu`` build), when the hub cannot serve: HF_HUB_OFFLINE is set, the hub
  mapping has no RMSNorm kernel for the device, a short probe gets no answer from the hub, or the
  hub kernel fails to load.

Both sources register RMSNorm for training (and inference) only, as transformers' entry does:
under a compiling stage kernelize keeps the original forward and inductor compiles it, so offline
and online measure the same thing. The kernel itself is compile-safe (can_torch_compile).

transformers marks its RMSNorm classes for kernels only when it accepts the installed kernels
version. When it did not, this module marks them itself with kernels'
``replace_kernel_forward_from_hub`` (the documented way to extend a third-party layer) and unmarks
them at teardown; the kernel mapping is scoped to the stage with ``use_kernel_mapping``.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import warnings
from collections import Counter
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from stagebench import hub
from stagebench.optim import Optimization, StageContext, Unavailable

LAYER = "RMSNorm"  # the kernel layer name transformers gives its Llama-style RMSNorm classes
LOCAL_NAME = "rmsnorm"
LOCAL_REPO = Path(__file__).resolve().parent.parent / "hub_kernels" / LOCAL_NAME
LOCAL_LABEL = f"stagebench/hub_kernels/{LOCAL_NAME}"
# transformers' RMSNorm entry, for a transformers that does not expose its mapping to this kernels.
HUB_REPO_ID = "kernels-community/liger-kernels"
HUB_LAYER = "LigerRMSNorm"
HUB_VERSION = 3
DEVICES = ("cpu", "cuda")  # the builds the local repository ships
INSTALL_HINT = "pip install stagebench[gpu]"
_MARKS = ("kernel_layer_name", "kernel_condition")


def _has_liger() -> bool:
    try:
        return importlib.util.find_spec("liger_kernel") is not None
    except (ImportError, ValueError):
        return False


def check(device: torch.device) -> str | None:
    try:
        import kernels  # noqa: F401
    except ImportError:
        return f"kernels not installed ({INSTALL_HINT})"
    except Exception as exc:  # a broken install: say so rather than take the registry down
        return f"kernels does not import: {type(exc).__name__}: {exc}"
    if device.type not in DEVICES:
        return f"no RMSNorm kernel for {device.type} (local builds: {', '.join(DEVICES)})"
    if not LOCAL_REPO.is_dir():
        return f"{LOCAL_LABEL} is missing from this install"
    if device.type == "cuda" and hub.env_offline_reason() and not _has_liger():
        return (
            f"liger-kernel not installed: the local CUDA RMSNorm kernel needs it ({INSTALL_HINT})"
        )
    return None


def _is_llama_rmsnorm(module: torch.nn.Module) -> bool:
    """An `*RMSNorm` whose forward takes one tensor and which keeps `weight` + `variance_epsilon`:
    the state both the hub's LigerRMSNorm and the local layer read."""
    cls = type(module)
    if not cls.__name__.endswith("RMSNorm"):
        return False
    if getattr(cls, "kernel_layer_name", LAYER) != LAYER:
        return False
    if not isinstance(getattr(module, "weight", None), torch.Tensor):
        return False
    if not isinstance(getattr(module, "variance_epsilon", None), float):
        return False
    return len(inspect.signature(cls.forward).parameters) == 2


def _unmark(cls: type) -> None:
    for attr in _MARKS:
        if attr in vars(cls):
            delattr(cls, attr)


def _mark_rmsnorm(model: torch.nn.Module, kernels: Any, ctx: StageContext) -> str:
    """Make sure kernelize sees the model's RMSNorm classes; says who marked them."""
    classes = {type(m) for m in model.modules() if _is_llama_rmsnorm(m)}
    if not classes:
        raise Unavailable(f"{type(model).__name__} has no Llama-style RMSNorm layer to kernelize")
    unmarked = sorted((c for c in classes if not hasattr(c, "kernel_layer_name")), key=str)
    for cls in unmarked:
        kernels.replace_kernel_forward_from_hub(cls, LAYER)
        # A later stage must see the class as transformers left it.
        ctx.cleanup.callback(_unmark, cls)
    if not unmarked:
        return "marked by transformers"
    import transformers

    names = ", ".join(c.__name__ for c in unmarked)
    return (
        f"{names} marked by stagebench: transformers {transformers.__version__} left them "
        f"unmarked under kernels {kernels.__version__}"
    )


def _device_entry(layer_entry: dict, device_type: str) -> Any:
    for key, repos in layer_entry.items():
        if (key if isinstance(key, str) else getattr(key, "type", None)) == device_type:
            return repos
    return None


def _modes(kernels: Any, repo: Any) -> dict:
    # transformers' RMSNorm entry covers training and inference but no torch.compile mode, so
    # under compile kernelize keeps the original forward and inductor compiles it. The local
    # entry covers the same modes: offline must measure what online does.
    return {kernels.Mode.TRAINING: repo, kernels.Mode.INFERENCE: repo}


def _hub_mapping(kernels: Any) -> tuple[dict, str]:
    """transformers' kernel mapping, as the seed kernelized with, or its RMSNorm entry."""
    try:
        from transformers.integrations.hub_kernels import get_kernel_mapping_transformers

        return get_kernel_mapping_transformers(), "transformers' mapping"
    except (ImportError, AttributeError):
        pass
    repo = kernels.LayerRepository(HUB_REPO_ID, layer_name=HUB_LAYER, version=HUB_VERSION)
    return {LAYER: {"cuda": _modes(kernels, repo)}}, "transformers' RMSNorm entry"


def _repo_ids(entry: Any) -> str:
    repos = entry.values() if isinstance(entry, dict) else [entry]
    # The private id, not str(repo): that resolves the revision over the network.
    return ", ".join(sorted({str(getattr(r, "_repo_id", type(r).__name__)) for r in repos}))


def _local_mapping(kernels: Any, device_type: str) -> dict:
    repo = kernels.LocalLayerRepository(LOCAL_REPO, layer_name=LAYER)
    return {LAYER: {device_type: _modes(kernels, repo)}}


def choose_source(kernels: Any, device_type: str) -> tuple[dict, str, str | None]:
    """(mapping, source note, why offline): env var first, then the mapping and its trust,
    then a probe."""
    reason = hub.env_offline_reason()
    if reason is None:
        mapping, origin = _hub_mapping(kernels)
        entry = _device_entry(mapping.get(LAYER, {}), device_type)
        if entry is None:
            reason = f"the hub mapping has no {LAYER} kernel for {device_type}"
        else:
            untrusted = [hub.untrusted_reason(r) for r in _repo_ids(entry).split(", ")]
            reason = next(filter(None, untrusted), None) or hub.offline_reason()
            if reason is None:
                return mapping, f"hub: {_repo_ids(entry)} ({origin})", None
    return _local_mapping(kernels, device_type), f"local: {LOCAL_LABEL} ({reason})", reason


_UNMAPPED = "No kernel mapping found"


class _QuietUnmapped(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return _UNMAPPED not in record.getMessage()


def _kernelize(model: torch.nn.Module, kernels: Any, mode: Any, device_type: str) -> None:
    # kernels says so per module for every marked layer outside the mapping (a log record since
    # 0.17, a warning before); the notes count those layers instead.
    logger = logging.getLogger("kernels.layer.layer")
    quiet = _QuietUnmapped()
    logger.addFilter(quiet)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=rf"\s*{_UNMAPPED}")
            kernels.kernelize(model, mode=mode, device=device_type)
    finally:
        logger.removeFilter(quiet)


def kernelized_layers(model: torch.nn.Module) -> dict[str, tuple[int, int, set[str]]]:
    """Per kernel layer name: (replaced, marked, where the replacing forwards live)."""
    seen: set[int] = set()
    done: Counter[str] = Counter()
    total: Counter[str] = Counter()
    where: dict[str, set[str]] = {}
    for module in model.modules():
        for obj in (module, *getattr(module, "_kernel_funcs", {}).values()):
            name = getattr(type(obj), "kernel_layer_name", None)
            if name is None or id(obj) in seen:
                continue
            seen.add(id(obj))
            total[name] += 1
            func = getattr(vars(obj).get("forward"), "__func__", None)
            if func is not None and func is not type(obj).forward:
                done[name] += 1
                where.setdefault(name, set()).add(_origin(func))
    return {name: (done[name], total[name], where.get(name, set())) for name in total}


def _origin(func: Any) -> str:
    """The build variant directory of a local kernel, else the replacing class."""
    path = Path(inspect.getsourcefile(func) or "")
    if LOCAL_REPO in path.parents:
        return path.parent.name
    return func.__qualname__.rsplit(".", 1)[0]


def _count(name: str, done: int, total: int, where: set[str], *, compiles: bool) -> str:
    text = f"{name} {done}/{total}"
    if where:
        text += f" ({', '.join(sorted(where))})"
    elif name == LAYER and compiles:
        text += " (no torch.compile entry, as in transformers' mapping: the original is compiled)"
    return text


def _mode_name(ctx: StageContext) -> str:
    return "training+torch_compile" if ctx.stage.compiles else "training"


def apply(model: torch.nn.Module, ctx: StageContext) -> torch.nn.Module:
    import kernels

    mode = kernels.Mode.TRAINING
    if ctx.stage.compiles:
        mode = mode | kernels.Mode.TORCH_COMPILE
    device_type = ctx.device.type
    marks = _mark_rmsnorm(model, kernels, ctx)
    mapping, source, offline = choose_source(kernels, device_type)
    ctx.cleanup.enter_context(kernels.use_kernel_mapping(mapping, inherit_mapping=False))
    try:
        _kernelize(model, kernels, mode, device_type)
    except Exception as exc:
        if offline is not None:
            raise _local_failure(exc) from exc
        # The hub answered but its kernel did not load: the local copy of the same layer.
        first = (str(exc).strip().splitlines() or [""])[0]
        reason = f"hub kernel failed to load: {type(exc).__name__}: {first}"
        source = f"local: {LOCAL_LABEL} ({reason})"
        local = _local_mapping(kernels, device_type)
        ctx.cleanup.enter_context(kernels.use_kernel_mapping(local, inherit_mapping=False))
        try:
            _kernelize(model, kernels, mode, device_type)
        except Exception as again:
            raise _local_failure(again) from again
    layers = kernelized_layers(model)
    counts = ", ".join(
        _count(name, *layers[name], compiles=ctx.stage.compiles) for name in sorted(layers)
    )
    version = metadata.version("kernels")
    ctx.notes["kernelize"] = (
        f"{source}; replaced: {counts}; mode={_mode_name(ctx)}; {marks}; kernels {version}"
    )
    return model


def _local_failure(exc: Exception) -> Exception:
    if isinstance(exc, ImportError):
        return Unavailable(f"the local RMSNorm kernel does not import ({exc}; {INSTALL_HINT})")
    return exc


OPTIMIZATIONS = {"kernelize": Optimization("kernelize", check, apply)}
