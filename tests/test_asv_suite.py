"""The generated asv suite: one class per stage, each with its own cache, reading a Result."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from asv_runner.benchmarks._base import get_setup_cache_key

from stagebench import PROTOCOL_VERSION, asv_suite, env, results, stages
from stagebench.workload import Workload


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
    assert PROTOCOL_VERSION >= 2  # 2: the seed's shape, compile settings and accumulation


def test_a_spec_with_options_is_a_class_of_its_own(monkeypatch, tmp_path):
    monkeypatch.setenv("STAGEBENCH_DEVICE", "cpu")
    monkeypatch.setenv("STAGEBENCH_MATRIX", "sdpa+liger:accum=bf16+compile:fullgraph=off,00_sdpa")
    monkeypatch.setenv("STAGEBENCH_NPROCS", "")
    suite = asv_suite.stage_benchmarks("benchmarks.stages", root=tmp_path)
    cls = suite["Stage_sdpa_liger_accum_bf16_compile_fullgraph_off"]
    assert cls.version == (
        f"sdpa+liger:accum=bf16+compile:fullgraph=off|protocol-{PROTOCOL_VERSION}"
    )


@pytest.mark.parametrize(
    ("device", "value", "shape", "tag"),
    [
        ("cuda", None, (1, 2048), ""),  # the seed's shape: the default series
        ("cuda", "b2x1024", (2, 1024), "|b2x1024"),  # the history's shape, by name
        ("cuda", '{"batch_size": 2, "seq_len": 1024}', (2, 1024), "|b2x1024"),  # or by fields
        ("cpu", None, (2, 1024), ""),
        ("cpu", "b1x2048", (1, 2048), "|b1x2048"),
    ],
)
def test_named_workloads_and_their_own_series(monkeypatch, tmp_path, device, value, shape, tag):
    """STAGEBENCH_WORKLOAD takes a workload name too; a shape other than the device's default
    is a series of its own (its version says so), never joined with the default's."""
    monkeypatch.setenv("STAGEBENCH_DEVICE", device)
    monkeypatch.setenv("STAGEBENCH_MATRIX", "00_sdpa")
    monkeypatch.setenv("STAGEBENCH_NPROCS", "")
    if value is None:
        monkeypatch.delenv("STAGEBENCH_WORKLOAD", raising=False)
    else:
        monkeypatch.setenv("STAGEBENCH_WORKLOAD", value)
    w = asv_suite.bench_workload()
    assert (w.batch_size, w.seq_len) == shape
    cls = asv_suite.stage_benchmarks("benchmarks.stages", root=tmp_path)["Stage_00_sdpa"]
    assert cls.version == f"sdpa{tag}|protocol-{PROTOCOL_VERSION}"


def test_units_and_metrics(suite):
    cls = suite["Stage_00_sdpa"]
    assert cls.track_mfu.unit == "%" and cls.track_peak_reserved_gib.unit == "GiB"
    assert cls.track_step_time_ms.unit == "ms" and cls.track_ok.unit == "ok"
    everywhere = {name for name, m in asv_suite.METRICS.items() if not m.compile_only}
    assert {m for m in dir(cls) if m.startswith("track_")} == {
        "track_ok",
        *(f"track_{name}" for name in everywhere),
    }


def test_compile_counts_are_tracked_for_compiling_stages_only(suite):
    """A stage that compiles nothing has no graph-break series at all (not a row of zeros)."""
    compiling = suite["Stage_05_liger_cce_fa2_compile"]
    assert compiling.track_graph_breaks.unit == compiling.track_recompiles.unit == "count"
    assert not hasattr(suite["Stage_04_liger_cce_sdpa"], "track_graph_breaks")
    assert not hasattr(suite["Stage_00_sdpa"], "track_recompiles")
    bench = compiling()
    result = _result(
        "ok",
        compile={
            "graphs": 2,
            "graph_breaks": 3,
            "recompiles": 0,
            "eager_frames": 0,
            "break_reasons": {},
            "eager_reasons": {},
        },
    )
    assert bench.track_graph_breaks(result) == 3.0
    assert bench.track_recompiles(result) == 0.0  # measured 0: a point, not n/a
    unknown = _result("ok", compile={"graphs": 2, "graph_breaks": 0, "recompiles": None})
    assert math.isnan(bench.track_recompiles(unknown))


def test_compile_counts_are_judged_lower_is_better_in_their_own_family():
    from stagebench.metrics import FAMILY_LEAD, family_of, worse_sign

    assert worse_sign("graph_breaks") == worse_sign("recompiles") == 1
    assert family_of("graph_breaks") == family_of("recompiles") == "compile"
    assert FAMILY_LEAD["compile"] == "graph_breaks"


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


def test_the_floor_is_tracked_from_the_samples_and_is_n_a_without_them(suite):
    bench = suite["Stage_02_liger_sdpa"]()
    assert bench.track_step_floor_ms.unit == "ms"
    steps = [float(v) for v in range(330, 341)]  # 11 steps: position 1.2, so 330.2
    result = _result(
        "ok", step_time_ms_median=335.0, samples={"warmup_ms": [], "measured_ms": steps}
    )
    assert bench.track_step_floor_ms(result) == pytest.approx(330.2)
    assert bench.track_step_time_ms(result) == 335.0
    older = _result("ok", step_time_ms_median=335.0)  # a Result without samples
    assert math.isnan(bench.track_step_floor_ms(older))  # n/a, like an MFU without a peak


def test_the_floor_is_judged_lower_is_better_in_a_family_of_its_own():
    from stagebench.metrics import FAMILY_LEAD, family_of, worse_sign

    assert worse_sign("step_floor_ms") == 1
    assert family_of("step_floor_ms") == "floor" != family_of("step_time_ms")
    assert FAMILY_LEAD["floor"] == "step_floor_ms"


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
    assert asv_suite.store_path(root) == root / ".asv" / "results" / "stagebench-results.jsonl"
    monkeypatch.setenv("STAGEBENCH_STORE", "/elsewhere/r.jsonl")
    assert asv_suite.store_path(root) == Path("/elsewhere/r.jsonl")


# Configuration errors: asv imports the suite, so a bad variable must say which one, in one line.


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("STAGEBENCH_WORKLOAD", "{seq_len: 64}", "is not JSON"),
        ("STAGEBENCH_WORKLOAD", "b4x512", "is not a known workload; give a workload name (b1x2048"),
        ("STAGEBENCH_MATRIX", "sdpa+compile:fullgraph=maybe", "value 'maybe'"),
        ("STAGEBENCH_WORKLOAD", "[64]", "is not an object"),
        ("STAGEBENCH_WORKLOAD", '{"seqlen": 64}', "unknown workload field(s) 'seqlen'"),
        ("STAGEBENCH_WORKLOAD", '{"seq_len": "64"}', "invalid seq_len='64': must be an integer"),
        ("STAGEBENCH_WORKLOAD", '{"seq_len": 8192}', "above tiny's max_position_embeddings"),
        ("STAGEBENCH_WORKLOAD", '{"device": "cuda"}', "STAGEBENCH_DEVICE"),
        ("STAGEBENCH_PRESET", "nonexistent", "unknown model 'nonexistent'"),
        ("STAGEBENCH_PRESET", "/no/such/checkpoint", "no such directory"),
        ("STAGEBENCH_MATRIX", ",", "names no stage"),
        ("STAGEBENCH_MATRIX", "00_sdpa,00_nope", "unknown stage '00_nope'"),
        ("STAGEBENCH_NPROCS", "two", "give GPU counts"),
        ("STAGEBENCH_DEVICE", "tpu", "give cuda or cpu"),
        ("STAGEBENCH_STORE", "/", "is not a file"),
    ],
)
def test_a_bad_variable_is_named(monkeypatch, tmp_path, capsys, variable, value, message):
    """Failed before: JSONDecodeError or TypeError tracebacks that named no variable, a
    nonexistent preset accepted, `,` silently making no class at all."""
    monkeypatch.setenv("STAGEBENCH_DEVICE", "cpu")
    monkeypatch.setenv(variable, value)
    with pytest.raises(asv_suite.SuiteConfigError) as info:
        asv_suite.stage_benchmarks("benchmarks.stages", root=tmp_path)
    assert str(info.value).startswith(variable) and message in str(info.value)
    assert asv_suite.main([str(tmp_path)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == f"stagebench: error: {info.value}\n"


def test_main_prints_the_workload_and_the_class_count(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("STAGEBENCH_DEVICE", "cpu")
    monkeypatch.setenv("STAGEBENCH_MATRIX", "cpu")
    monkeypatch.setenv("STAGEBENCH_NPROCS", "2")
    monkeypatch.setenv("STAGEBENCH_WORKLOAD", '{"seq_len": 64}')
    assert asv_suite.main([str(tmp_path)]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    classes = len(stages.MATRICES["cpu"]) + len(stages.MATRICES["fsdp"])
    assert line.startswith(f"stagebench asv suite: {classes} classes; workload {{")
    assert '"seq_len": 64' in line and '"model": "tiny"' in line


def test_importing_the_suite_imports_no_torch(tmp_path):
    """asv imports the suite in every benchmark process; torch (and CUDA) must wait for the
    stage's own child. The classes are generated too, as asv does at import."""
    code = (
        "import sys; from pathlib import Path; from stagebench import asv_suite; "
        f"asv_suite.stage_benchmarks('benchmarks.stages', Path({str(tmp_path)!r})); "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    environ = {**os.environ, "STAGEBENCH_DEVICE": "cpu"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=environ, capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_measure_reads_a_store_with_bad_lines(tmp_path, monkeypatch):
    """A real tiny stage through asv's setup_cache path, with a store holding a non-UTF-8 line
    and a line whose workload has an unknown key ahead of the good rows.

    Failed before: UnicodeDecodeError in results.load, before anything was measured.
    """
    monkeypatch.setenv("STAGEBENCH_DEVICE", "cpu")
    monkeypatch.setenv(
        "STAGEBENCH_WORKLOAD",
        '{"seq_len": 32, "warmup_steps": 1, "min_steps": 2, "max_steps": 2, "timeout_s": 300}',
    )
    store = tmp_path / "store.jsonl"
    bad = {"schema_version": 2, "stage": "x", "workload": {"model": "tiny", "flash": True}}
    store.write_bytes(b"\xff\xfe not utf-8\n" + json.dumps(bad).encode() + b"\n")
    with pytest.warns(UserWarning):
        result = asv_suite.measure(stages.resolve("00_baseline"), store)
    assert result["status"] == "ok", result
    assert result["numerics"].startswith("step-0 loss")  # the reference ran first, and matched
    with pytest.warns(UserWarning):
        assert [r.spec for r in results.load(store)] == ["sdpa", "eager"]


def test_another_model_is_another_series():
    """A history (and a noise record, which carries the version) measured on another model than
    the device's default is never joined to the default model's series."""
    stage = stages.resolve("00_sdpa")
    default = asv_suite.benchmark_version(stage, Workload(model="tiny", device="cpu"))
    other = asv_suite.benchmark_version(stage, Workload(model="qwen3-0.6b", device="cpu"))
    assert default != other and "model-qwen3-0.6b" in other
    assert "model-" not in default
