"""FSDP2 under torchrun on a CPU: real 2-process gloo runs of `tiny`, rank faults, and the
collective-time arithmetic."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest
from test_isolate import _alive

from stagebench import distributed, isolate, stages
from stagebench.isolate import run_isolated
from stagebench.matrix import run_matrix
from stagebench.results import Result
from stagebench.runner import run_stage

SDPA = stages.resolve("00_sdpa")


def _ranks(workload, nproc: int, **changes):
    return dataclasses.replace(workload, nproc=nproc, **changes)


def test_two_gloo_ranks_train_tiny_sharded(tiny_workload, tmp_path):
    """The real thing, end to end: torchrun, FSDP2, two ranks, merged numbers."""
    workload = _ranks(tiny_workload, 2)
    (reference, cce) = run_matrix(
        [SDPA, stages.resolve("sdpa+cce")], workload, store=tmp_path / "r.jsonl"
    )
    for result in (reference, cce):
        assert result.status == "ok", (result.reason, result.log_tail)
    m = reference.metrics
    d = m.distributed
    assert d.nproc == 2 and d.backend == "gloo"
    assert "2 decoder layers + root" in d.sharding
    assert m.tokens_per_step == 2 * tiny_workload.batch_size * tiny_workload.seq_len
    assert d.tokens_per_s_per_gpu == pytest.approx(m.tokens_per_s / 2)
    assert len(d.step_time_ms_median_per_rank) == 2
    # The step is the slowest rank's, so no rank's median is above the merged one.
    assert max(d.step_time_ms_median_per_rank) <= m.step_time_ms_median * 1.0001
    assert 0 < d.comm_busy_pct < 100 and d.comm_exposed_pct is None  # gloo: busy time only
    assert m.loss_last < m.loss_first  # updates reach the sharded weights
    assert cce.numerics.startswith("step-0 loss")  # the CCE head runs inside FSDP2's root


def test_one_rank_fsdp_trains_what_one_process_trains(tiny_workload):
    """--nproc 1: rank 0's data and weights are the single process's, so step 0's loss is too."""
    single = run_isolated(SDPA, tiny_workload)
    sharded = run_isolated(SDPA, _ranks(tiny_workload, 1))
    assert single.status == sharded.status == "ok", (sharded.reason, sharded.log_tail)
    assert sharded.metrics.distributed.nproc == 1
    assert sharded.metrics.loss_first == pytest.approx(single.metrics.loss_first, rel=1e-6)
    assert sharded.metrics.grad_norm_first == pytest.approx(
        single.metrics.grad_norm_first, rel=1e-4
    )


@pytest.mark.parametrize(
    ("entry", "status", "words"),
    [
        ("faults:rank1_oom", "oom", "rank 1 of 2: CUDA out of memory"),
        ("faults:rank1_abort", "crashed", "rank 1 of 2: killed by SIGABRT"),
        ("faults:rank1_oom_mid_training", "oom", "rank 1 of 2: CUDA out of memory at step 3"),
    ],
)
def test_a_failing_rank_is_named_with_its_own_failure(
    tiny_workload, child_can_import_faults, tmp_path, monkeypatch, entry, status, words
):
    """Rank 0 is left waiting for its peer; the Result names the peer and why it stopped."""
    monkeypatch.setenv("STAGEBENCH_TEST_PIDFILE", str(tmp_path / "pid"))
    result = run_isolated(SDPA, _ranks(tiny_workload, 2, timeout_s=120.0), entry=entry)
    assert result.status == status, (result.reason, result.log_tail)
    assert result.reason.startswith(words), result.reason
    assert result.wall_time_s < 100  # torchrun ended the job; nobody waited for the timeout
    _assert_all_gone(tmp_path)


def test_a_hung_rank_times_out_and_leaves_no_process(
    tiny_workload, child_can_import_faults, tmp_path, monkeypatch
):
    monkeypatch.setenv("STAGEBENCH_TEST_PIDFILE", str(tmp_path / "pid"))
    result = run_isolated(SDPA, _ranks(tiny_workload, 2, timeout_s=20.0), entry="faults:rank1_hang")
    assert result.status == "timeout", (result.reason, result.log_tail)
    assert result.reason == "no result after 20 s (2 processes)"
    names = {p.name for p in _assert_all_gone(tmp_path)}
    assert {"pid.worker.rank0", "pid.grandchild.rank1"} <= names  # rank 0 waited in FSDP2


def _assert_all_gone(tmp_path: Path) -> list[Path]:
    """Every worker that got as far as recording itself (each in a session of torchrun's making)
    and its children are dead. Rank 1 always records; rank 0 may be killed while importing."""
    pid_files = sorted(tmp_path.glob("pid.*"))
    assert "pid.worker.rank1" in {p.name for p in pid_files}
    deadline = time.time() + 10
    for pid_file in pid_files:
        pid = int(pid_file.read_text())
        while _alive(pid) and time.time() < deadline:
            time.sleep(0.1)
        assert not _alive(pid), f"{pid_file.name} outlived the stage"
    return pid_files


def _rank_file(tmp: Path, rank: int, status: str, at: float) -> None:
    result = Result(stage="s", spec="sdpa", status=status, reason=f"{status} here", model="tiny",
                    workload={})  # fmt: skip
    data = {"rank": rank, "time": at, "result": result.to_dict()}
    (tmp / f"result.rank{rank}.json").write_text(json.dumps(data))


def test_root_cause_prefers_a_ranks_own_failure_over_a_broken_collective(tmp_path):
    _rank_file(tmp_path, 0, "error", 10.0)  # "Connection closed by peer", earlier by the clock
    _rank_file(tmp_path, 1, "oom", 10.5)
    rank, result = isolate.root_cause(tmp_path, 2)
    assert (rank, result.status) == (1, "oom")


def test_root_cause_names_a_rank_that_died_without_a_word(tmp_path):
    _rank_file(tmp_path, 0, "error", 10.0)
    report = {"1": {"exitcode": -11, "timestamp": 9}}
    (tmp_path / "torchrun-failures.json").write_text(json.dumps(report))
    rank, result = isolate.root_cause(tmp_path, 2)
    assert (rank, result.status, result.reason) == (1, "crashed", "killed by SIGSEGV")


def test_root_cause_is_not_a_survivor_torchrun_terminated(tmp_path):
    _rank_file(tmp_path, 1, "oom", 10.5)
    report = {"0": {"exitcode": -15, "timestamp": 10}}
    (tmp_path / "torchrun-failures.json").write_text(json.dumps(report))
    rank, result = isolate.root_cause(tmp_path, 2)
    assert (rank, result.status) == (1, "oom")


def test_root_cause_is_none_when_every_rank_is_ok(tmp_path):
    _rank_file(tmp_path, 0, "ok", 10.0)
    assert isolate.root_cause(tmp_path, 1) is None


def test_nproc_outside_torchrun_is_refused(tiny_workload):
    with pytest.raises(RuntimeError, match="not a torchrun worker"):
        run_stage(SDPA, _ranks(tiny_workload, 2))


def test_more_ranks_than_gpus_is_unavailable_without_starting_anything(tiny_workload):
    result = run_isolated(SDPA, _ranks(tiny_workload, 2, device="cuda"))
    assert result.status == "unavailable"
    assert result.reason.startswith("needs 2 GPUs")
    assert result.wall_time_s is None  # nothing was launched


def test_rank_comes_from_torchruns_environment(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    assert distributed.current() is None
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    rank = distributed.current()
    assert rank == distributed.Rank(rank=3, world_size=4, local_rank=1)
    assert str(distributed.device_for("cuda", rank)) == "cuda:1"
    assert str(distributed.device_for("cpu", rank)) == "cpu"


def test_comm_time_on_a_gpu_splits_hidden_from_exposed():
    events = [
        ("sm90_gemm_bf16", True, 0.0, 600.0),
        ("ncclDevKernel_AllGather_RING_LL", True, 500.0, 900.0),  # 100 us under the gemm
        ("ncclDevKernel_ReduceScatter_Sum_bf16", True, 800.0, 1000.0),  # overlaps the all-gather
        ("elementwise_kernel", True, 950.0, 1000.0),
        ("aten::mm", False, 0.0, 1000.0),  # host events do not count as compute
    ]
    comm = distributed.comm_time(events)
    assert comm.busy_ms == pytest.approx(0.5)  # 500..1000
    assert comm.exposed_ms == pytest.approx(0.35)  # minus 500..600 and 950..1000
    assert "NCCL" in comm.source


def test_comm_time_on_a_cpu_counts_gloo_threads():
    events = [
        ("aten::mm", False, 0.0, 1000.0),
        ("gloo:all_gather", False, 100.0, 300.0),
        ("gloo:all_gather", False, 200.0, 400.0),
        ("gloo:all_reduce", False, 700.0, 800.0),
    ]
    comm = distributed.comm_time(events)
    assert comm.busy_ms == pytest.approx(0.4)
    assert comm.exposed_ms is None
