"""What a number was measured on: package versions, CUDA, driver, GPU and its clocks, host."""

from __future__ import annotations

import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

# Distribution names as pip knows them.
PACKAGES = (
    "stagebench",
    "torch",
    "transformers",
    "triton",
    "liger-kernel",
    "cut-cross-entropy",
    "kernels",
    "flash-attn",
    "asv",
    "nvidia-ml-py",
)
# In an overlay's prefix (overlay.py writes it): what the overlay installed over its base.
OVERLAY_RECORD = "stagebench-overlay.json"


def overlay_record() -> dict[str, Any] | None:
    """The record of the overlay this interpreter is, or None when it is not one."""
    if sys.prefix == sys.base_prefix:
        return None
    try:
        record = json.loads((Path(sys.prefix) / OVERLAY_RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def overlay_info() -> dict[str, Any] | None:
    """For a Result measured in an overlay: its requirements and what it changed."""
    record = overlay_record()
    if record is None:
        return None
    changed = [f"{n} {old or 'none'} -> {new or 'none'}" for n, old, new in record["changed"]]
    return {"requirements": record["requirements"], "changed": changed, "path": sys.prefix}


def package_versions() -> dict[str, str | None]:
    """The versions an import here sees: the stack's, and in an overlay also every package the
    overlay installed (read here, so a Result names what really ran)."""
    record = overlay_record() or {}
    versions: dict[str, str | None] = {}
    for name in (*PACKAGES, *sorted(set(record.get("installed", {})) - set(PACKAGES))):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    if versions["stagebench"] is None:  # run from a source tree, not installed
        from stagebench import __version__

        versions["stagebench"] = f"{__version__} (source tree)"
    return versions


def gpu_info() -> dict[str, Any]:
    """GPU facts from NVML; {'gpu': None, 'gpu_reason': ...} where there is none."""
    try:
        import pynvml
    except ImportError:
        return {"gpu": None, "gpu_reason": "nvidia-ml-py not installed"}
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return {"gpu": None, "gpu_reason": f"NVML unavailable ({exc})"}
    try:
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        except pynvml.NVMLError as exc:
            return {"gpu": None, "gpu_reason": f"no visible GPU ({exc})"}
        sm = pynvml.NVML_CLOCK_SM
        queries = {
            "gpu": lambda: pynvml.nvmlDeviceGetName(handle),
            "gpu_count": pynvml.nvmlDeviceGetCount,
            "driver": pynvml.nvmlSystemGetDriverVersion,
            "gpu_memory_gib": lambda: round(
                pynvml.nvmlDeviceGetMemoryInfo(handle).total / 1024**3, 1
            ),
            "sm_clock_mhz": lambda: pynvml.nvmlDeviceGetClockInfo(handle, sm),
            "sm_clock_max_mhz": lambda: pynvml.nvmlDeviceGetMaxClockInfo(handle, sm),
            "power_limit_w": lambda: pynvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000,
        }
        info: dict[str, Any] = {}
        for key, query in queries.items():
            try:
                info[key] = query()
            except pynvml.NVMLError:  # not every board answers every query
                info[key] = None
        return info
    finally:
        pynvml.nvmlShutdown()


def visible_gpu_count() -> int:
    """GPUs a CUDA program here would see, without initialising CUDA (NVML, then the mask)."""
    count = gpu_info().get("gpu_count") or 0
    mask = os.environ.get("CUDA_VISIBLE_DEVICES")
    if mask is not None:
        count = min(count, len([d for d in mask.split(",") if d.strip()]))
    return count


def torch_info() -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
    return {
        # The allocator's settings change peak memory and, near the limit, step time.
        "cuda_alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
        "cuda_runtime": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "cuda_available": cuda,
        "device_name": torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu",
        "compute_capability": ".".join(map(str, torch.cuda.get_device_capability(0)))
        if cuda
        else None,
    }


def host_info() -> dict[str, Any]:
    return {
        # The commit whose code was measured, when a harness says (asv find sets ASV_COMMIT;
        # the nox sessions set STAGEBENCH_COMMIT): lets a report diff packages between commits.
        "commit": os.environ.get("STAGEBENCH_COMMIT") or os.environ.get("ASV_COMMIT"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "hostname": platform.node(),
    }


def collect() -> dict[str, Any]:
    """Everything above in one flat-ish dict, for `stagebench env` and for every Result."""
    info = {"packages": package_versions(), **torch_info(), **gpu_info(), **host_info()}
    overlay = overlay_info()
    if overlay:
        info["overlay"] = overlay
    return info
