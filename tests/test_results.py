"""The Result schema and its JSON Lines store: round trips, validation, torn lines, dead writers,
full disks and lines that are not what they should be."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
from fake_disk import FakeDisk, fill, tiny_tmpfs

from stagebench import results, stats
from stagebench.results import (
    CompileMetrics,
    DistributedMetrics,
    GroupTime,
    KernelTime,
    Metrics,
    ProfileMetrics,
    Result,
    Samples,
    StoreError,
)
from stagebench.workload import Workload

WORKLOAD = Workload(model="tiny", device="cpu", dtype="float32", seq_len=1024).to_dict()


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


def make_result(
    stage: str = "00_sdpa", status: str = "ok", metrics: Metrics | None = None, log_tail=None
):
    return Result(
        stage=stage, spec="sdpa", status=status, reason=None if status == "ok" else "why",
        model="tiny", workload=dict(WORKLOAD), metrics=metrics, env={"packages": {"torch": "2.13"}},
        started_at="2025-01-01T00:00:00", wall_time_s=42.0, log_tail=log_tail,
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


@pytest.mark.parametrize("version", [0, 6, None, "1"])
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
    del data["metrics"]["compile"]  # schema 3
    del data["workload"]["nproc"]  # added with schema 2, too
    del data["workload"]["host_gc"]  # schema 5
    back = Result.from_dict(data)
    assert back.metrics.distributed is None
    assert back.schema_version == results.SCHEMA_VERSION


def test_a_version_2_line_still_loads():
    """Stores written before compile counts existed stay readable: v2 lacks metrics.compile."""
    data = make_result(metrics=make_metrics()).to_dict()
    data["schema_version"] = 2
    del data["metrics"]["compile"]
    del data["workload"]["host_gc"]  # schema 5
    back = Result.from_dict(json.loads(json.dumps(data)))
    assert back.metrics.compile is None
    assert back.metrics.graph_breaks is None and back.metrics.recompiles is None
    assert back.schema_version == results.SCHEMA_VERSION == 5


def test_a_version_3_line_still_loads():
    """Stores written before samples and profiles existed stay readable: v3 lacks
    metrics.samples, metrics.profile and workload.profile_steps."""
    data = make_result(metrics=make_metrics()).to_dict()
    data["schema_version"] = 3
    del data["metrics"]["samples"]
    del data["metrics"]["profile"]
    del data["workload"]["profile_steps"]
    del data["workload"]["host_gc"]  # schema 5
    back = Result.from_dict(json.loads(json.dumps(data)))
    assert back.metrics.samples is None and back.metrics.profile is None
    assert results.summary_from_samples(back.metrics) is None  # nothing to recompute from
    assert back.schema_version == results.SCHEMA_VERSION == 5


def _profile() -> ProfileMetrics:
    return ProfileMetrics(
        source="cuda: kernels, memcpys and memsets on the device timeline (torch.profiler)",
        steps=3, wall_ms_per_step=301.5, busy_ms_per_step=296.25, host_gap_ms_per_step=5.25,
        groups={"matmul": GroupTime(201.0, 67.85), "attention": GroupTime(60.5, 20.42)},
        kernels=[KernelTime("nvjet_tst_256x128_64x4_1x2_h_bz_coopA_NTT", "matmul", 72.0, 150.5)],
        kernels_seen=212, rest_ms_per_step=145.75,
        memory_gib={"parameters": 15.26, "peak_allocated": 61.5}, cost_s=2.125,
    )  # fmt: skip


def test_samples_and_profile_round_trip():
    samples = Samples(warmup_ms=[305.1234, 301.0], measured_ms=[300.5, 299.75, 301.25])
    original = make_result(metrics=make_metrics(samples=samples, profile=_profile()))
    line = json.dumps(original.to_dict())
    back = Result.from_dict(json.loads(line))
    assert back == original
    assert isinstance(back.metrics.samples, Samples)
    assert isinstance(back.metrics.profile.groups["matmul"], GroupTime)
    assert isinstance(back.metrics.profile.kernels[0], KernelTime)


def test_the_summary_is_recomputed_from_the_samples():
    measured = [300.5, 299.75, 301.25, 310.0, 298.5, 300.0, 302.25]
    metrics = make_metrics(samples=Samples(warmup_ms=[400.0], measured_ms=measured))
    summary = results.summary_from_samples(metrics)
    assert (summary.n, summary.median, summary.minimum, summary.maximum) == (7, 300.5, 298.5, 310)
    assert summary.ci95_half_width_pct is not None


def test_60_rounded_samples_are_a_small_part_of_a_line():
    """Samples as the runner rounds them (0.1 us): about 10 bytes a step."""
    steps = [round(299.987654321 + i / 7, results.SAMPLE_DECIMALS) for i in range(62)]
    samples = Samples(warmup_ms=steps[:2], measured_ms=steps[2:])
    assert len(json.dumps(dataclasses.asdict(samples))) < 11 * 62


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("samples", [1.0], "metrics.samples is a JSON object"),
        ("profile", {"groups": [], "kernels": []}, "metrics.profile.groups is a JSON object"),
    ],
)
def test_a_malformed_schema_4_field_is_refused(field, value, words):
    data = make_result(metrics=make_metrics()).to_dict()
    data["metrics"][field] = value
    with pytest.raises(ValueError, match=words):
        Result.from_dict(data)


def test_compile_counts_round_trip():
    counts = CompileMetrics(
        graphs=3, graph_breaks=4, recompiles=1, eager_frames=1,
        break_reasons={"Call to `torch._dynamo.graph_break()`": 4},
        eager_reasons={"forward (modeling_qwen3.py:250)": "Unsupported: recompile limit"},
    )  # fmt: skip
    original = make_result(metrics=make_metrics(compile=counts))
    back = Result.from_dict(json.loads(json.dumps(original.to_dict())))
    assert back == original
    assert isinstance(back.metrics.compile, CompileMetrics)
    assert back.metrics.graph_breaks == 4 and back.metrics.recompiles == 1
    assert back.metrics.compile.fell_back
    as_json = original.to_dict()["metrics"]
    assert results.metric_value(as_json, "graph_breaks") == 4
    assert results.metric_value(as_json, "step_time_ms_median") == 101.5
    assert results.metric_value(make_result(metrics=make_metrics()).to_dict()["metrics"],
                                "recompiles") is None  # fmt: skip


def test_the_floor_is_derived_from_the_samples_and_never_stored():
    """A property of Metrics (no schema bump), computed as asv's setup_cache JSON is too."""
    measured = [float(v) for v in range(300, 311)]  # 11 steps: position 1.2, so 300.2
    original = make_result(metrics=make_metrics(samples=Samples([400.0], measured)))
    assert original.metrics.step_time_ms_floor == pytest.approx(300.2)
    as_json = original.to_dict()["metrics"]
    assert "step_time_ms_floor" not in as_json
    assert results.metric_value(as_json, "step_time_ms_floor") == pytest.approx(300.2)
    back = Result.from_dict(json.loads(json.dumps(original.to_dict())))
    assert back == original and back.metrics.step_time_ms_floor == pytest.approx(300.2)


@pytest.mark.parametrize("samples", [None, Samples(warmup_ms=[400.0], measured_ms=[])])
def test_no_samples_no_floor(samples):
    """A Result before schema 4 (or with no measured step) has no floor: None, not a crash."""
    metrics = make_metrics(samples=samples)
    assert metrics.step_time_ms_floor is None
    as_json = make_result(metrics=metrics).to_dict()["metrics"]
    assert results.metric_value(as_json, "step_time_ms_floor") is None
    as_json.pop("samples")  # a schema 1-3 line has no key at all
    assert results.metric_value(as_json, "step_time_ms_floor") is None


def test_each_family_s_own_ci_of_its_run():
    """Speed: the median's CI as measured; floor: the floor's, from the samples; else None."""
    measured = [300.0 + (i % 5) * 0.1 for i in range(40)]
    metrics = make_metrics(samples=Samples([400.0], measured))
    assert metrics.ci95_pct_of("speed") == metrics.step_time_ci95_pct
    assert metrics.ci95_pct_of("floor") == stats.floor_ci95_pct(measured)
    assert metrics.ci95_pct_of("memory") is None and metrics.ci95_pct_of("first_step") is None
    assert make_metrics(samples=None).ci95_pct_of("floor") is None
    assert set(results.WITHIN_RUN_CI_FAMILIES) == {"speed", "floor"}


def test_compile_counts_without_fallbacks_are_not_flagged():
    clean = CompileMetrics(graphs=1, graph_breaks=0, recompiles=2, eager_frames=0)
    assert not clean.fell_back  # recompiles cost time, but everything still ran compiled
    assert clean.summary() == (
        "0 graph break(s), 0 frame(s) run eagerly, 2 recompile(s), 1 graph(s)"
    )


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
        ("cancelled", True),
    ],
)
def test_failed(status, failed):
    """Only ok and unavailable are not failures; everything else fails the run (exit 1)."""
    assert make_result(status=status).failed is failed


def test_every_status_is_classified():
    """A newly added status must be placed in the failed table above too."""
    assert set(results.STATUSES) == {
        "ok", "unavailable", "oom", "compile_error", "timeout", "crashed", "error",
        "numerics_mismatch", "cancelled",
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


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 0.0, -310.0])
def test_a_step_time_that_is_no_measurement_makes_the_line_unreadable(tmp_path, bad):
    """Every statistic (the floor too) is recomputed from the samples: a hand-edited NaN, inf,
    zero or negative step skips that line with a warning, the others still load."""
    path = tmp_path / "r.jsonl"
    results.append(path, make_result(stage="good"))
    damaged = make_result(stage="damaged", metrics=make_metrics(samples=Samples([], [300.0])))
    line = damaged.to_dict()
    line["metrics"]["samples"]["measured_ms"] = [300.0, bad]
    with path.open("a") as f:
        f.write(json.dumps(line) + "\n")
    with pytest.warns(UserWarning, match="finite positive"):
        assert [r.stage for r in results.load(path)] == ["good"]


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
    from stagebench.workload import Workload

    path = Path(sys.argv[1])
    def result(stage):
        return Result(stage=stage, spec="sdpa", status="ok", reason=None, model="tiny",
                      workload=Workload(model="tiny", seq_len=64).to_dict())
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


# A full disk. FAKE disks (tests/fake_disk.py) give each failure on demand; /dev/full and a tiny
# tmpfs are real ones.


def _store_with_one_row(tmp_path: Path) -> tuple[Path, bytes]:
    path = tmp_path / "r.jsonl"
    results.append(path, make_result(stage="earlier"))
    return path, path.read_bytes()


def test_short_writes_are_completed(tmp_path, monkeypatch):
    """os.write may take part of a line and succeed: the rest must follow, not be dropped.

    Failed before the fix: the line was cut after the first write and append returned.
    """
    path, _ = _store_with_one_row(tmp_path)
    disk = FakeDisk(monkeypatch, path, chunk=100)
    results.append(path, make_result(stage="later", metrics=make_metrics()))
    assert len(disk.writes) > 5 and all(n <= 100 for n in disk.writes)
    assert [r.stage for r in results.load(path)] == ["earlier", "later"]


@pytest.mark.parametrize("space", [0, 300], ids=["no-space", "part-of-the-line"])
def test_full_disk_raises_and_leaves_no_torn_line(tmp_path, monkeypatch, space):
    """ENOSPC before or within the line: StoreError names the path and the errno text, and the
    file is back to what it was, byte for byte (no torn line for the next reader).

    Failed before the fix: the short write was ignored ("results appended") and a torn line
    stayed; with no space at all the bare OSError escaped.
    """
    path, before = _store_with_one_row(tmp_path)
    FakeDisk(monkeypatch, path, space=space)
    with pytest.raises(StoreError) as info:
        results.append(path, make_result(stage="lost", metrics=make_metrics()))
    assert str(path) in str(info.value)
    assert "No space left on device" in str(info.value)
    assert info.value.errno == errno.ENOSPC
    assert path.read_bytes() == before


def test_failed_fsync_takes_the_line_back(tmp_path, monkeypatch):
    """A line the disk could not make durable (EIO on fsync) is not left behind as if stored."""
    path, before = _store_with_one_row(tmp_path)
    FakeDisk(monkeypatch, path, fsync_error=errno.EIO)
    with pytest.raises(StoreError, match="Input/output error"):
        results.append(path, make_result(stage="lost"))
    assert path.read_bytes() == before


def test_a_write_that_takes_nothing_is_a_full_disk(tmp_path, monkeypatch):
    """A write returning 0 must not be retried forever."""
    path, before = _store_with_one_row(tmp_path)
    monkeypatch.setattr(results.os, "write", lambda fd, data: 0)  # a FAKE device
    with pytest.raises(StoreError, match="No space left on device"):
        results.append(path, make_result(stage="lost"))
    assert path.read_bytes() == before


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full on this system")
def test_dev_full_is_a_store_error():
    """A real ENOSPC from the kernel: /dev/full refuses every write."""
    with pytest.raises(StoreError, match="No space left on device"):
        results.append(Path("/dev/full"), make_result())


def test_real_full_filesystem(tmp_path):
    """A real tmpfs, full: a line that fits only in part is written in part by the kernel (a
    real short write), then ENOSPC; the file must end as it was, and a later append on a disk
    with room again must work."""
    with tiny_tmpfs(tmp_path / "disk", size_kib=16) as disk:
        path = disk / "r.jsonl"
        results.append(path, make_result(stage="earlier", log_tail="x" * 3000))
        before = path.read_bytes()
        fill(disk)
        with pytest.raises(StoreError, match="No space left on device"):
            results.append(path, make_result(stage="lost", log_tail="y" * 3000))
        assert path.read_bytes() == before
        (disk / "filler").unlink()
        results.append(path, make_result(stage="later"))
        assert [r.stage for r in results.load(path)] == ["earlier", "later"]


# Lines that are not what they should be: each is skipped with a warning naming path:line, and
# never hides the rows around it.


def _rows_around(tmp_path: Path, bad: bytes) -> Path:
    path = tmp_path / "r.jsonl"
    results.append(path, make_result(stage="a"))
    with path.open("ab") as f:
        f.write(bad + b"\n")
    results.append(path, make_result(stage="b"))
    return path


def _load_warnings(path: Path) -> tuple[list[str], list[str]]:
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        stages = [r.stage for r in results.load(path)]
    return stages, [str(w.message) for w in record]


def test_a_line_that_is_not_utf8_is_skipped(tmp_path):
    """Failed before the fix: read_text() raised UnicodeDecodeError and nothing loaded."""
    path = _rows_around(tmp_path, b'{"stage": "\xff\xfe latin-1 \xe9"}')
    stages, messages = _load_warnings(path)
    assert stages == ["a", "b"]
    assert len(messages) == 1 and f"{path}:2:" in messages[0] and "UTF-8" in messages[0]


def test_a_bom_on_the_first_line_is_accepted(tmp_path):
    """Failed before the fix: the BOM made the first line invalid JSON, so it was skipped."""
    path = tmp_path / "r.jsonl"
    line = json.dumps(make_result(stage="first").to_dict()).encode()
    path.write_bytes(b"\xef\xbb\xbf" + line + b"\n")
    results.append(path, make_result(stage="second"))
    assert _load_warnings(path) == (["first", "second"], [])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"flash": True}, "unknown workload field"),
        ({"seq_len": None}, "seq_len"),
        ({"seq_len": "1024"}, "seq_len"),
        ("not a dict", "JSON object"),
    ],
    ids=["unknown-key", "null-value", "wrong-type", "not-an-object"],
)
def test_a_line_with_a_bad_workload_is_skipped(tmp_path, change, message):
    """Failed before the fix: such a line loaded, then Workload.from_dict raised TypeError in
    the reference lookup of every later run (`run`, `matrix --jsonl`, asv's setup_cache)."""
    data = make_result(stage="bad").to_dict()
    data["workload"] = {**data["workload"], **change} if isinstance(change, dict) else change
    path = _rows_around(tmp_path, json.dumps(data).encode())
    stages, messages = _load_warnings(path)
    assert stages == ["a", "b"]
    assert len(messages) == 1 and f"{path}:2:" in messages[0] and message in messages[0]


def test_an_unknown_workload_round_trips():
    """{} is how the code says "not known" (a rank that died without a Result): it reads back,
    and is never taken for a reference (test_matrix.py)."""
    data = make_result().to_dict()
    data["workload"] = {}
    assert Result.from_dict(data).workload == {}


def test_a_line_missing_a_workload_key_is_skipped(tmp_path):
    data = make_result(stage="bad").to_dict()
    del data["workload"]["seq_len"]
    path = _rows_around(tmp_path, json.dumps(data).encode())
    stages, messages = _load_warnings(path)
    assert stages == ["a", "b"]
    assert len(messages) == 1 and "lacks seq_len" in messages[0]


@pytest.mark.parametrize(
    "bad",
    [b'{"metrics": 5}', b"[" * 100_000, b'{"schema_version": 2, "metrics": [1]}'],
    ids=["metrics-not-object", "deeply-nested", "metrics-a-list"],
)
def test_other_hostile_lines_are_skipped(tmp_path, bad):
    if bad.startswith(b"{"):
        data = make_result(stage="bad").to_dict()
        data.update(json.loads(bad))
        bad = json.dumps(data).encode()
    stages, messages = _load_warnings(_rows_around(tmp_path, bad))
    assert stages == ["a", "b"]
    assert len(messages) == 1
