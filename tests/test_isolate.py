"""Every failure status comes from a real fault in a real child process; none stops a matrix."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from stagebench import results, stages
from stagebench.isolate import classify, run_isolated
from stagebench.matrix import run_matrix

FAULTY_MATRIX = [
    "sdpa",  # real: the reference
    "eager",  # fake OOM
    "eager+compile",  # fake hang -> timeout
    "eager+compile-default",  # os.abort() -> crashed
    "eager+compile-model",  # ImportError -> unavailable
    "sdpa+compile-model",  # ValueError -> error
    "sdpa+compile",  # dynamo Unsupported -> compile_error
    "sdpa+compile-default",  # OOM raised inside an InductorError -> oom
    "00_baseline",  # real again: the matrix went on after every fault
]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A killed child of a dead parent can linger as a zombie until reaped by init.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def test_faulty_matrix_classifies_each_failure_and_keeps_going(
    tiny_workload, child_can_import_faults, tmp_path, monkeypatch
):
    """One run covering every status; each Result is stored as its stage ends."""
    pid_file = tmp_path / "worker.pid"
    monkeypatch.setenv("STAGEBENCH_TEST_PIDFILE", str(pid_file))
    workload = type(tiny_workload)(**{**tiny_workload.to_dict(), "timeout_s": 25.0})
    store = tmp_path / "results.jsonl"
    seen: list[str] = []
    done = run_matrix(
        [stages.resolve(s) for s in FAULTY_MATRIX],
        workload,
        store=store,
        entry="faults:dispatch",
        on_result=lambda r: seen.append(r.stage),
    )
    by_name = {r.stage: r for r in done}
    assert [r.stage for r in done] == FAULTY_MATRIX
    assert by_name["sdpa"].status == "ok"
    expected = {
        "eager": "oom",
        "eager+compile": "timeout",
        "eager+compile-default": "crashed",
        "eager+compile-model": "unavailable",
        "sdpa+compile-model": "error",
        "sdpa+compile": "compile_error",
        "sdpa+compile-default": "oom",
    }
    for spec, status in expected.items():
        assert by_name[spec].status == status, (spec, by_name[spec].reason, by_name[spec].log_tail)
    assert "SIGABRT" in by_name["eager+compile-default"].reason
    assert "liger_kernel_that_does_not_exist" in by_name["eager+compile-model"].reason
    assert by_name["sdpa+compile-model"].reason.startswith("ValueError: shapes")
    assert "torch.compiler.disable()" in by_name["sdpa+compile"].reason
    assert "25 s" in by_name["eager+compile"].reason
    # 00_baseline (eager) after all the faults ran for real and matched the reference's loss.
    baseline = done[-1]
    assert baseline.stage == "00_baseline" and baseline.status == "ok"
    assert baseline.numerics.startswith("step-0 loss")
    # The grandchild of the hung stage died with it.
    worker = int(pid_file.read_text())
    deadline = time.time() + 5
    while _alive(worker) and time.time() < deadline:
        time.sleep(0.1)
    assert not _alive(worker), "the hung stage left an orphan process behind"
    # Each result was appended as it finished, in order.
    assert seen == [r.stage for r in done]
    assert [r.stage for r in results.load(store)] == seen


def test_oom_reason_is_the_allocator_message():
    import torch

    status, reason = classify(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert (status, reason) == ("oom", "CUDA out of memory. Tried to allocate 2 GiB")


def test_compile_error_reason_is_the_first_line_of_the_compilers_message():
    from torch._dynamo.exc import Unsupported

    status, reason = classify(Unsupported("Graph break under fullgraph\n  more detail\n"))
    assert status == "compile_error"
    assert reason == "Unsupported: Graph break under fullgraph"


def test_plain_exception_is_error_with_type_and_message():
    assert classify(KeyError("missing")) == ("error", "KeyError: 'missing'")


def test_unavailable_stage_on_cpu_says_needs_cuda(tiny_workload):
    """A real run of a CUDA-only stage on this CPU: unavailable with its reason, no crash."""
    result = run_isolated(stages.resolve("sdpa-flash"), tiny_workload)
    assert result.status == "unavailable"
    assert result.reason == "sdpa-flash: needs CUDA"
    assert result.wall_time_s > 0


@pytest.mark.parametrize("entry", ["faults:wrong_loss"])
def test_numerics_mismatch_against_the_reference(tiny_workload, child_can_import_faults, entry):
    """A stage whose step-0 loss is 50% off the SDPA reference is flagged, with both losses."""
    done = run_matrix(
        [stages.resolve("00_baseline"), stages.resolve("00_sdpa")], tiny_workload, entry=entry
    )
    assert [r.spec for r in done] == ["sdpa", "eager"]  # the reference runs first
    reference, baseline = done
    assert reference.status == "ok" and reference.numerics == "reference"
    assert baseline.status == "numerics_mismatch"
    assert "rel diff 5.00e-01" in baseline.reason
    assert baseline.metrics is not None  # the measurement is kept, only the verdict changes
