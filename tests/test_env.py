"""Environment capture: what every Result records about where it was measured."""

from __future__ import annotations

import json
import platform
import sys
import types

import pytest
import torch

from stagebench import env


def test_collect_on_this_cpu_machine():
    """Versions and host are recorded; no GPU is reported as None with the reason why."""
    info = env.collect()
    assert info["packages"]["torch"] == torch.__version__
    assert info["packages"]["stagebench"] is not None
    assert set(info["packages"]) == set(env.PACKAGES)
    assert info["python"] == platform.python_version()
    assert info["cuda_available"] is torch.cuda.is_available()
    if not torch.cuda.is_available():
        assert info["gpu"] is None
        assert isinstance(info["gpu_reason"], str)
        assert info["gpu_reason"]
    json.dumps(info)  # stored in every Result's JSON line


def test_missing_package_is_none(monkeypatch):
    """A package that is not installed is recorded as None, not an error."""
    monkeypatch.setattr(env, "PACKAGES", (*env.PACKAGES, "definitely-not-installed-pkg"))
    assert env.package_versions()["definitely-not-installed-pkg"] is None


class FakeNVMLError(Exception):
    pass


def fake_pynvml(**overrides) -> types.SimpleNamespace:
    calls = dict(
        NVMLError=FakeNVMLError,
        NVML_CLOCK_SM=1,
        nvmlInit=lambda: None,
        nvmlShutdown=lambda: None,
        nvmlDeviceGetHandleByIndex=lambda i: f"handle{i}",
        nvmlDeviceGetName=lambda h: "NVIDIA H100 80GB HBM3",
        nvmlDeviceGetCount=lambda: 8,
        nvmlSystemGetDriverVersion=lambda: "570.86.15",
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(total=85_520_809_984),
        nvmlDeviceGetClockInfo=lambda h, c: 1980,
        nvmlDeviceGetMaxClockInfo=lambda h, c: 1980,
        nvmlDeviceGetEnforcedPowerLimit=lambda h: 700_000,
    )
    calls.update(overrides)
    return types.SimpleNamespace(**calls)


def test_gpu_info_from_nvml(monkeypatch):
    """NVML facts are converted to the recorded units (GiB, W)."""
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml())
    info = env.gpu_info()
    assert info["gpu"] == "NVIDIA H100 80GB HBM3"
    assert info["gpu_count"] == 8
    assert info["gpu_memory_gib"] == 79.6
    assert info["power_limit_w"] == 700.0
    assert info["sm_clock_max_mhz"] == 1980


def _raise(*args):
    raise FakeNVMLError("Not Supported")


def test_gpu_info_no_visible_gpu_is_a_reason(monkeypatch):
    """NVML loads but has no device 0 (driver without visible GPUs): gpu None plus why.

    Fails today: only nvmlInit() is guarded, so the NVMLError escapes gpu_info()/collect().
    """
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(nvmlDeviceGetHandleByIndex=_raise))
    try:
        info = env.gpu_info()
    except FakeNVMLError as exc:
        pytest.fail(f"NVMLError escaped gpu_info(): {exc}")
    assert info["gpu"] is None
    assert info["gpu_reason"]


def test_gpu_info_unsupported_query_does_not_crash(monkeypatch):
    """A query a GPU does not support (power limit under MIG/vGPU) must not crash collect().

    Fails today for the same reason: the NVMLError escapes.
    """
    pynvml = fake_pynvml(nvmlDeviceGetEnforcedPowerLimit=_raise)
    monkeypatch.setitem(sys.modules, "pynvml", pynvml)
    try:
        info = env.gpu_info()
    except FakeNVMLError as exc:
        pytest.fail(f"NVMLError escaped gpu_info(): {exc}")
    if info["gpu"] is None:
        assert info["gpu_reason"]
    else:  # or keep what was readable and record the unsupported field as missing
        assert info.get("power_limit_w") is None
