"""The Result schema and its JSON Lines store: round trips, validation, torn lines, dead writers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

from stagebench import results
from stagebench.results import DistributedMetrics, Metrics, Result


def make_metrics(**overrides) -> Metrics:
    values = dict(
        measured_steps=12, warmup_steps=3, step_time_ms_median=101.5, step_time_ms_iqr=2.25,
        step_time_ms_min=99.0, step_time_ms_max=120.0, step_time_ci95_pct=0.42,
        tokens_per_step=2048, tokens_per_s=20177.3, flops_per_token=4.9e10, tflops=988.7,
        mfu_pct=None, mfu_reason="no peak table for float32; pass --peak-tflops",
        seed_flops_per_token=5.1e10, seed_tflops=343.9, seed_mfu_pct=34.77,
        seed_peak_window_mfu_pct=35.1, first_step_s=12.5, model_init_s=3.25, loss_first=11.93,
        loss_last=11.2, grad_norm_first=4.5, peak_allocated_gib=None, peak_reserved_gib=61.0,
        n_params=8_190_735_360, attention_impl="sdpa", notes={"attention": "sdpa (cudnn)"},
    )  # fmt: skip
    values.update(overrides)
    return Metrics(**values)


def make_result(stage: str = "00_sdpa", status: str = "ok", metrics: Metrics | None = None):
    return Result(
        stage=stage, spec="sdpa", status=status, reason=None if status == "ok" else "why",
        model="tiny", workload={"model": "tiny", "batch_size": 2, "seq_len": 1024},
        metrics=metrics, env={"packages": {"torch": "2.13"}}, started_at="2025-01-01T00:00:00",
        wall_time_s=42.0,
    )  # fmt: skip


@pytest.mark.parametrize("with_metrics", [True, False])
def test_round_trip(with_metrics):
    """What a runner writes must read back as an equal Result, through JSON too."""
    original = make_result(metrics=make_metrics() if with_metrics else None)
    back = Result.from_dict(json.loads(json.dumps(original.to_dict())))
    assert back == original
    if with_metrics:
        assert isinstance(back.metrics, Metrics)
        assert back.metrics.notes == {"attention": "sdpa (cudnn)"}
    else:
        assert back.metrics is None


def test_unknown_status_raises():
    """A misspelled status would silently count as failed; it must be refused at construction."""
    with pytest.raises(ValueError, match="'okay'"):
        make_result(status="okay")


@pytest.mark.parametrize("version", [0, 3, None, "1"])
def test_wrong_schema_version_raises(version):
    """Rows from another schema must not be read as if they meant the same thing."""
    data = make_result().to_dict()
    data["schema_version"] = version
    with pytest.raises(ValueError, match="schema"):
        Result.from_dict(data)


def test_a_distributed_result_round_trips():
    dist = DistributedMetrics(
        nproc=2, backend="nccl", sharding="FSDP2", tokens_per_s_per_gpu=6800.0,
        step_time_ms_median_per_rank=[301.0, 300.5], peak_allocated_gib_per_rank=[40.0, 39.5],
        peak_reserved_gib_per_rank=[44.0, 43.0], comm_busy_pct=12.5, comm_exposed_pct=1.5,
        comm_source="profiler: NCCL kernels vs compute",
    )  # fmt: skip
    original = make_result(metrics=make_metrics(distributed=dist))
    back = Result.from_dict(json.loads(json.dumps(original.to_dict())))
    assert back == original
    assert isinstance(back.metrics.distributed, DistributedMetrics)


def test_a_version_1_line_still_loads():
    """Stores written before multi-process runs existed stay readable: v1 lacks only that field."""
    data = make_result(metrics=make_metrics()).to_dict()
    data["schema_version"] = 1
    del data["metrics"]["distributed"]
    back = Result.from_dict(data)
    assert back.metrics.distributed is None
    assert back.schema_version == results.SCHEMA_VERSION


def test_unknown_field_raises():
    """An unknown field means a different writer; it must be named, not dropped."""
    data = make_result().to_dict()
    data["tokens_per_sec"] = 1.0
    with pytest.raises(ValueError, match="tokens_per_sec"):
        Result.from_dict(data)


@pytest.mark.parametrize(
    ("status", "failed"),
    [
        ("ok", False),
        ("unavailable", False),
        ("oom", True),
        ("compile_error", True),
        ("timeout", True),
        ("crashed", True),
        ("error", True),
        ("numerics_mismatch", True),
    ],
)
def test_failed(status, failed):
    """Only ok and unavailable are not failures; everything else fails the run (exit 1)."""
    assert make_result(status=status).failed is failed


def test_every_status_is_classified():
    """A newly added status must be placed in the failed table above too."""
    assert set(results.STATUSES) == {
        "ok", "unavailable", "oom", "compile_error", "timeout", "crashed", "error",
        "numerics_mismatch",
    }  # fmt: skip


def test_append_and_load_keep_order(tmp_path):
    """Rows come back in the order stages finished, one JSON object per line."""
    path = tmp_path / "sub" / "results.jsonl"  # parent is created on demand
    stages = ["00_baseline", "00_sdpa", "sdpa+compile"]
    for i, stage in enumerate(stages):
        metrics = make_metrics(measured_steps=i + 10) if i % 2 else None
        results.append(path, make_result(stage=stage, metrics=metrics))
    lines = path.read_text().splitlines()
    assert len(lines) == 3
    assert [json.loads(line)["stage"] for line in lines] == stages
    loaded = results.load(path)
    assert [r.stage for r in loaded] == stages
    assert loaded[1].metrics.measured_steps == 11


def test_append_never_rewrites_earlier_bytes(tmp_path):
    """Appending must leave every earlier byte as it was (no rewrite of the file)."""
    path = tmp_path / "r.jsonl"
    results.append(path, make_result(stage="a"))
    before = path.read_bytes()
    results.append(path, make_result(stage="b"))
    assert path.read_bytes().startswith(before)


def test_load_missing_file_is_empty(tmp_path):
    """No file yet means no results, not an error."""
    assert results.load(tmp_path / "none.jsonl") == []


def test_torn_last_line_skipped_and_next_append_on_own_line(tmp_path):
    """A half-written last line is skipped with a warning; the next row is not glued onto it."""
    path = tmp_path / "r.jsonl"
    results.append(path, make_result(stage="first"))
    full = json.dumps(make_result(stage="torn").to_dict(), sort_keys=True)
    with path.open("a") as f:
        f.write(full[: len(full) // 2])  # no newline: a writer died mid-line
    with pytest.warns(UserWarning, match="skipped unreadable result") as record:
        assert [r.stage for r in results.load(path)] == ["first"]
    assert len(record) == 1
    results.append(path, make_result(stage="after"))
    lines = path.read_text().splitlines()
    assert len(lines) == 3
    assert json.loads(lines[2])["stage"] == "after"
    with pytest.warns(UserWarning) as record:
        assert [r.stage for r in results.load(path)] == ["first", "after"]
    assert len(record) == 1


def test_non_object_json_line_is_skipped(tmp_path):
    """A line that is valid JSON but not an object is 'invalid' and must be skipped, not crash.

    Fails today: from_dict calls data.get() on a list, and the AttributeError escapes load().
    """
    path = tmp_path / "r.jsonl"
    results.append(path, make_result(stage="a"))
    with path.open("a") as f:
        f.write("[1, 2]\n")
    results.append(path, make_result(stage="b"))
    with pytest.warns(UserWarning) as record:
        assert [r.stage for r in results.load(path)] == ["a", "b"]
    assert len(record) == 1


CHILD = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path
    from stagebench.results import Result, append

    path = Path(sys.argv[1])
    def result(stage):
        return Result(stage=stage, spec="sdpa", status="ok", reason=None, model="tiny",
                      workload={"seq_len": 64})
    for i in range(3):
        append(path, result(f"stage{i}"))
    line = json.dumps(result("stage3").to_dict(), sort_keys=True) + "\\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    os.write(fd, line[: len(line) // 2].encode())
    os.fsync(fd)
    print("ready", flush=True)
    time.sleep(60)
    """
)


def test_writer_killed_mid_line(tmp_path):
    """A real writer SIGKILLed mid-line keeps its 3 finished rows; the torn 4th is skipped."""
    path = tmp_path / "r.jsonl"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline().strip() == "ready"
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
    assert not path.read_bytes().endswith(b"\n")  # really torn
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        loaded = results.load(Path(path))
    assert [r.stage for r in loaded] == ["stage0", "stage1", "stage2"]
    assert len(record) == 1
    assert "skipped unreadable result" in str(record[0].message)
