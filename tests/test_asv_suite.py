"""The generated asv suite: one class per stage, each with its own cache, reading a Result."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from asv_runner.benchmarks._base import get_setup_cache_key

from stagebench import PROTOCOL_VERSION, asv_suite, env, stages


@pytest.fixture
def suite(monkeypatch, tmp_path):
    monkeypatch.delenv("STAGEBENCH_MATRIX", raising=False)
    monkeypatch.delenv("STAGEBENCH_NPROCS", raising=False)
    monkeypatch.setenv("STAGEBENCH_DEVICE", "cpu")
    return asv_suite.stage_benchmarks("benchmarks.stages", root=tmp_path)


def test_every_matrix_stage_has_a_class(suite):
    names = {n for matrix in stages.MATRICES.values() for n in matrix}
    single = {asv_suite._class_name(stages.resolve(n)) for n in names}
    multi = {
        asv_suite._class_name(stages.resolve(n), nproc)
        for n in stages.MATRICES["fsdp"]
        for nproc in (2, 4)
    }
    assert set(suite) == single | multi
    assert "Stage_05_liger_cce_sdpa_compile" in suite and "Stage_sdpa_compile_default" in suite
    assert "Stage_00_sdpa_fsdp_2gpu" in suite and "Stage_00_sdpa_fsdp_4gpu" in suite


def test_multi_gpu_classes_are_their_own_history(suite):
    cls = suite["Stage_01_kernelize_sdpa_compile_fsdp_4gpu"]
    assert cls.version == f"sdpa+kernelize+compile|nproc-4|protocol-{PROTOCOL_VERSION}"
    assert "on 4 GPUs (FSDP2)" in cls.__doc__


@pytest.mark.parametrize(
    ("device", "reason"),
    [
        ("cpu", "2-GPU stage: needs CUDA GPUs, the device is cpu"),
        ("cuda", "needs 2 GPUs, 0 visible"),  # this machine has no GPU for NVML to see
    ],
)
def test_multi_gpu_stage_is_skipped_without_enough_gpus(tmp_path, monkeypatch, device, reason):
    if device == "cuda" and env.visible_gpu_count() >= 2:
        pytest.skip("this machine has 2 GPUs: the stage would run")
    monkeypatch.setenv("STAGEBENCH_DEVICE", device)
    result = asv_suite.measure(stages.resolve("00_sdpa"), tmp_path / "store.jsonl", nproc=2)
    assert result == {"status": "unavailable", "reason": reason}
    assert not (tmp_path / "store.jsonl").exists()


@pytest.mark.parametrize("text", ["two", "1,2"])
def test_bad_gpu_counts_are_named(monkeypatch, text):
    monkeypatch.setenv("STAGEBENCH_NPROCS", text)
    with pytest.raises(ValueError, match="STAGEBENCH_NPROCS"):
        asv_suite.bench_nprocs()


def test_each_class_has_its_own_setup_cache(suite):
    """asv keys setup_cache by module and line; shared keys would give every stage one Result."""
    keys = {get_setup_cache_key(cls.setup_cache) for cls in suite.values()}
    assert len(keys) == len(suite)


def test_version_follows_spec_and_protocol(suite):
    cls = suite["Stage_05_liger_cce_sdpa_compile"]
    assert cls.version == f"sdpa+liger+cce+compile|protocol-{PROTOCOL_VERSION}"


def test_units_and_metrics(suite):
    cls = suite["Stage_00_sdpa"]
    assert cls.track_mfu.unit == "%" and cls.track_peak_reserved_gib.unit == "GiB"
    assert cls.track_step_time_ms.unit == "ms" and cls.track_ok.unit == "ok"
    assert {m for m in dir(cls) if m.startswith("track_")} == {
        "track_ok",
        *(f"track_{name}" for name in asv_suite.METRICS),
    }


def _result(status: str, **metrics) -> dict:
    return {"status": status, "reason": None if status == "ok" else "why", "metrics": metrics}


def test_tracks_read_the_result(suite):
    bench = suite["Stage_00_sdpa"]()
    result = _result("ok", mfu_pct=None, step_time_ms_median=301.4, peak_reserved_gib=70.1)
    bench.setup(result)
    assert bench.track_ok(result) == 1
    assert bench.track_step_time_ms(result) == 301.4
    assert bench.track_peak_reserved_gib(result) == 70.1
    assert math.isnan(bench.track_mfu(result))  # no peak known: n/a, not a made-up number


def test_failed_stage_tracks_zero_ok_and_fails_metrics_with_the_reason(suite):
    bench = suite["Stage_00_baseline"]()
    result = {"status": "oom", "reason": "CUDA out of memory", "metrics": None}
    bench.setup(result)  # not skipped: the failure must show on the site
    assert bench.track_ok(result) == 0
    with pytest.raises(RuntimeError, match="00_baseline: oom: CUDA out of memory"):
        bench.track_mfu(result)


def test_unavailable_stage_is_skipped(suite):
    bench = suite["Stage_00_fa3"]()
    with pytest.raises(NotImplementedError, match="needs CUDA"):
        bench.setup({"status": "unavailable", "reason": "fa3: needs CUDA"})


def test_measure_on_cpu_knows_unavailable_without_a_child(tmp_path, monkeypatch):
    monkeypatch.setenv("STAGEBENCH_DEVICE", "cpu")
    result = asv_suite.measure(stages.resolve("00_fa3"), tmp_path / "store.jsonl")
    assert result == {"status": "unavailable", "reason": "fa3: needs CUDA"}
    assert not (tmp_path / "store.jsonl").exists()


def test_workload_overrides_from_the_environment(monkeypatch):
    monkeypatch.setenv("STAGEBENCH_DEVICE", "cpu")
    monkeypatch.setenv("STAGEBENCH_WORKLOAD", '{"seq_len": 64, "max_steps": 9}')
    monkeypatch.setenv("STAGEBENCH_PRESET", "qwen3-0.6b")
    w = asv_suite.bench_workload()
    assert (w.model, w.device, w.seq_len, w.max_steps, w.dtype) == (
        "qwen3-0.6b",
        "cpu",
        64,
        9,
        "float32",
    )


def test_store_is_anchored_to_the_project_root(monkeypatch):
    monkeypatch.delenv("STAGEBENCH_STORE", raising=False)
    root = Path("/project")
    assert asv_suite.store_path(root) == root / ".asv" / "stagebench" / "results.jsonl"
    monkeypatch.setenv("STAGEBENCH_STORE", "/elsewhere/r.jsonl")
    assert asv_suite.store_path(root) == Path("/elsewhere/r.jsonl")
