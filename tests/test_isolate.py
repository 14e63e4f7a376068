"""Every failure status comes from a real fault in a real child process; none stops a matrix."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import stagebench
from stagebench import isolate, results, stages
from stagebench.isolate import classify, run_isolated
from stagebench.matrix import run_matrix
from stagebench.workload import Workload

FAULTY_MATRIX = [
    "sdpa",  # real: the reference
    "eager",  # fake OOM
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
    """One run covering every status but the timeout (below); each Result is stored as its stage
    ends. The real stages get all the time a loaded machine needs."""
    workload = type(tiny_workload)(**{**tiny_workload.to_dict(), "timeout_s": 600.0})
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
    # 00_baseline (eager) after all the faults ran for real and matched the reference's loss.
    baseline = done[-1]
    assert baseline.stage == "00_baseline" and baseline.status == "ok"
    assert baseline.numerics.startswith("step-0 loss")
    # Each result was appended as it finished, in order.
    assert seen == [r.stage for r in done]
    assert [r.stage for r in results.load(store)] == seen


def test_a_hung_stage_times_out_and_leaves_no_orphan(
    tiny_workload, child_can_import_faults, tmp_path, monkeypatch
):
    """A fake hang with its own timeout: long enough for a loaded machine to start the child
    and reach the fault (which records its worker), short enough to wait for."""
    pid_file = tmp_path / "worker.pid"
    monkeypatch.setenv("STAGEBENCH_TEST_PIDFILE", str(pid_file))
    workload = type(tiny_workload)(**{**tiny_workload.to_dict(), "timeout_s": 15.0})
    result = run_isolated(stages.resolve("eager+compile"), workload, entry="faults:dispatch")
    assert result.status == "timeout" and "15 s" in result.reason, result.log_tail
    # The grandchild of the hung stage died with it.
    worker = int(pid_file.read_text())
    deadline = time.time() + 5
    while _alive(worker) and time.time() < deadline:
        time.sleep(0.1)
    assert not _alive(worker), "the hung stage left an orphan process behind"


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


# Cancelling: a cancelled CI job SIGTERMs stagebench; a runner that gives up SIGKILLs it. A real
# `stagebench run` drives a FAKE hanging stage (faults.fake_hang: the stage process and a
# grandchild standing in for a compile worker, both sleeping for an hour).

DRIVER = textwrap.dedent(
    """
    import sys
    from stagebench import cli, matrix

    matrix.run_matrix.__kwdefaults__["entry"] = "faults:dispatch"  # the FAKE stages
    sys.exit(cli.main(sys.argv[1:]))
    """
)


def _wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s:g} s: {what}")
        time.sleep(0.1)


@pytest.fixture
def hanging_run(tmp_path, child_can_import_faults, monkeypatch):
    """`stagebench run` of a hanging stage, then one that must never start; started and waited
    for until the hang is under way. Yields (driver, stage pid, grandchild pid, store, tmpdir)."""
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    pid_file = tmp_path / "hang.pid"
    store = tmp_path / "results.jsonl"
    monkeypatch.setenv("STAGEBENCH_TEST_PIDFILE", str(pid_file))
    monkeypatch.setenv("TMPDIR", str(tmpdir))  # where run_isolated's stagebench-* dir goes
    argv = ["run", "eager+compile", "eager+compile-default", "--device", "cpu", "--model", "tiny"]
    argv += ["--seq-len", "64", "--timeout", "600", "--jsonl", str(store)]
    with (tmp_path / "driver.log").open("w") as log:
        driver = subprocess.Popen([sys.executable, "-c", DRIVER, *argv], stdout=log, stderr=log)
    try:
        _wait_for(pid_file.exists, 180, "the fake stage started hanging")
        _wait_for(lambda: pid_file.read_text().strip() != "", 10, "the pid file was written")
        stage_pid = int(Path(f"{pid_file}.stage").read_text())
        grandchild = int(pid_file.read_text())
        assert list(tmpdir.glob("stagebench-*")), "the stage's temporary directory exists"
        yield driver, stage_pid, grandchild, store, tmpdir
    finally:  # a failed test must not leave its hour-long sleepers behind
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        for path in (Path(f"{pid_file}.stage"), pid_file):
            with contextlib.suppress(OSError, ValueError):
                os.killpg(int(path.read_text()), signal.SIGKILL)


def test_sigterm_stores_a_cancelled_result_and_leaves_nothing_behind(hanging_run, tmp_path):
    """Failed before the fix: the driver died at once, the stage and its grandchild slept on as
    orphans, no Result was stored and the temporary directory stayed."""
    driver, stage_pid, grandchild, store, tmpdir = hanging_run
    os.kill(driver.pid, signal.SIGTERM)
    assert driver.wait(timeout=60) == 128 + signal.SIGTERM
    _wait_for(lambda: not _alive(stage_pid) and not _alive(grandchild), 10, "stage processes died")
    (cancelled,) = results.load(store)  # the second stage never started
    assert cancelled.stage == "eager+compile" and cancelled.status == "cancelled"
    assert cancelled.reason == "the run was cancelled (SIGTERM) before the stage finished"
    assert cancelled.failed
    assert not list(tmpdir.glob("stagebench-*"))
    assert "cancelled by SIGTERM" in (tmp_path / "driver.log").read_text()


def test_sigkill_of_the_parent_takes_the_stage_down(hanging_run):
    """The parent cannot clean up after SIGKILL: the child, told by the kernel, ends its
    session (the grandchild too) and removes the temporary directory itself.

    Failed before the fix: both processes lived on for their hour, the directory stayed.
    """
    driver, stage_pid, grandchild, _, tmpdir = hanging_run
    os.kill(driver.pid, signal.SIGKILL)
    assert driver.wait(timeout=30) == -signal.SIGKILL
    _wait_for(lambda: not _alive(stage_pid) and not _alive(grandchild), 30, "stage processes died")
    _wait_for(lambda: not list(tmpdir.glob("stagebench-*")), 30, "the temporary directory went")


@pytest.mark.parametrize("worker", [False, True], ids=["stage-child", "torchrun-worker"])
def test_a_child_whose_parent_is_already_gone_ends_itself(tmp_path, worker):
    """The parent may die between the child's start and its PR_SET_PDEATHSIG request (the
    kernel would then never tell it): the child compares its parent with the one it was told
    of, and ends at once. Only the directory's owner removes it (a worker's launcher does)."""
    job_dir = tmp_path / "stagebench-job"
    job_dir.mkdir()
    job = {"stage": "00_sdpa", "workload": Workload(model="tiny", device="cpu").to_dict()}
    (job_dir / "job.json").write_text(json.dumps(job))
    environ = {**os.environ, isolate.PARENT_PID_ENV: "1"}  # not this child's parent
    if worker:
        environ["RANK"] = "1"
    child = subprocess.Popen(
        [sys.executable, "-m", "stagebench.isolate", str(job_dir / "job.json"), "r.json"],
        env=environ,
        start_new_session=True,
    )
    assert child.wait(timeout=120) == -signal.SIGTERM
    assert job_dir.exists() is worker


# The inductor cache: decided by the parent, before the child's torch picks its own default.


def test_a_compile_stage_uses_the_stagebench_cache(tiny_workload, tmp_path, monkeypatch):
    """A real per-layer compile on the CPU with HOME and XDG_CACHE_HOME in a temporary
    directory: inductor's artifacts (FX graph cache, AOT autograd cache, kernels) land in
    <cache>/stagebench/inductor, the Result says so, and torch's own default (under TMPDIR)
    gets nothing but the precompiled headers torch always keeps there.

    Failed before the fix: torch had set TORCHINDUCTOR_CACHE_DIR to its TMPDIR default while
    the model was built, so use_cache_dir took that; nothing reached the stagebench cache.
    """
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    workload = dataclasses.replace(
        tiny_workload, warmup_steps=1, min_steps=2, max_steps=2, timeout_s=600.0
    )
    result = run_isolated(stages.resolve("sdpa+compile-default"), workload)
    assert result.status == "ok", (result.reason, result.log_tail)
    cache = tmp_path / "cache" / "stagebench" / "inductor"
    for part in ("fxgraph", "aotautograd"):
        assert any(p.is_file() for p in (cache / part).rglob("*")), f"no {part} in the cache"
    assert result.metrics.notes["compile_cache"] == str(cache)
    for default in (tmp_path / "tmp").glob("torchinductor_*"):
        assert {p.name for p in default.iterdir()} <= {"precompiled_headers"}


@pytest.mark.parametrize(
    ("requested", "explicit", "expected"),
    [
        ("/w/cache", "/env/cache", "/w/cache"),
        (None, "/env/cache", "/env/cache"),
        (None, None, "/xdg/stagebench/inductor"),
        (None, "torch's own", "/xdg/stagebench/inductor"),
    ],
    ids=["workload", "environment", "default", "torch-filled-in"],
)
def test_the_parent_puts_the_cache_in_the_childs_environment(
    monkeypatch, requested, explicit, expected
):
    """The workload's cache, else an explicit TORCHINDUCTOR_CACHE_DIR, else stagebench's; torch's
    own temporary default in the parent's environment (torch writes it there when anything in
    the parent asks first) is no choice: on an H100 host it sent every stage's kernels to /tmp."""
    monkeypatch.setenv("XDG_CACHE_HOME", "/xdg")
    if explicit == "torch's own":
        from stagebench.optim.compile import torch_default_cache_dir

        explicit = torch_default_cache_dir()
    if explicit:
        monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", explicit)
    else:
        monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    workload = Workload(model="tiny", device="cpu", compile_cache=requested)
    environ = isolate._child_env(workload)
    assert environ["TORCHINDUCTOR_CACHE_DIR"] == expected
    assert environ[isolate.PARENT_PID_ENV] == str(os.getpid())


def test_the_child_imports_the_stagebench_its_parent_runs(tmp_path, monkeypatch):
    """asv measures a commit from its own checkout but passes the caller's PYTHONPATH on (the
    container's points at HEAD's src/): the child must still import the parent's stagebench."""
    other = tmp_path / "head" / "src" / "stagebench"
    other.mkdir(parents=True)
    (other / "__init__.py").write_text("raise ImportError('the stagebench of HEAD, not ours')\n")
    monkeypatch.setenv("PYTHONPATH", str(other.parent))
    environ = isolate._child_env(Workload(model="tiny", device="cpu"))
    where = subprocess.run(
        [sys.executable, "-c", "import stagebench; print(stagebench.__file__)"],
        env=environ,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(where).resolve() == Path(stagebench.__file__).resolve()
    assert str(other.parent) in environ["PYTHONPATH"].split(os.pathsep)  # kept, behind ours


def test_an_installed_stagebench_adds_no_site_packages_to_the_path(monkeypatch, tmp_path):
    installed = tmp_path / "venv" / "lib" / "site-packages" / "stagebench"
    checkout = tmp_path / "checkout" / "src" / "stagebench"
    for package in (installed, checkout):
        package.mkdir(parents=True)
        (package / "__init__.py").write_text("")
    (tmp_path / "checkout" / "pyproject.toml").write_text("[project]\nname = 'stagebench'\n")
    monkeypatch.setattr(stagebench, "__file__", str(installed / "__init__.py"))
    assert isolate.source_root() is None
    monkeypatch.setattr(stagebench, "__file__", str(checkout / "__init__.py"))
    assert isolate.source_root() == str(checkout.parent.resolve())


def test_the_child_can_be_another_interpreter(tmp_path):
    """An overlay's interpreter (depbisect): the child, and torchrun's launcher, run in it."""
    from stagebench.isolate import _command, env_of

    job, result = tmp_path / "job.json", tmp_path / "result.json"
    assert _command(job, result, None)[0] == sys.executable
    assert _command(job, result, None, "/overlay/bin/python")[:3] == [
        "/overlay/bin/python",
        "-m",
        "stagebench.isolate",
    ]
    assert _command(job, result, 2, "/overlay/bin/python")[:3] == [
        "/overlay/bin/python",
        "-m",
        "stagebench.launch",
    ]
    # A Result the child could not write gets the environment as that interpreter sees it; one
    # that cannot answer leaves this process's.
    from stagebench import env

    assert env_of(str(tmp_path / "no-python"))["packages"] == env.package_versions()
