"""Run one stage in its own child process with a timeout, and classify whatever happens.

The child measures and writes its Result (it knows an OOM from a compile error from a missing
package); the parent only sees what the child could not say: a timeout, a signal, an exit code.
Every process the child started (inductor compile workers ...) shares its session and is killed
with it, so no orphan keeps a GPU busy.

With `Workload.nproc` the child is torchrun (through launch.py) and every rank writes a Result
of its own. torchrun starts each worker in a session of its own, so workers also leave their pid
here and the parent kills their sessions too. When ranks fail, the root cause is reported: a rank
whose collective broke because a peer died raises a generic error, and torchrun SIGTERMs the
survivors of a failure; the peer's own failure (an OOM, a compile error, another signal) is the
cause; among equals, the earliest.

Cancelling (SIGTERM, what a cancelled CI job sends, or SIGINT) stops the stage's session and its
workers' sessions, stores a `cancelled` Result, removes the temporary directory and raises
Cancelled, so no further stage starts. A parent killed outright (SIGKILL) cannot clean up: the
child asks the kernel for a SIGTERM when its parent dies (PR_SET_PDEATHSIG) and then ends its own
session and removes the job's temporary directory itself.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import importlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

# No torch at import: a stage's child (and torchrun's launcher) asks to die with its parent
# before the seconds torch takes to import.
import stagebench
from stagebench import env, stages
from stagebench.results import Metrics, Result
from stagebench.workload import Workload

# The function a child calls to measure a stage; tests point `entry` at fault injectors.
DEFAULT_ENTRY = "stagebench.runner:run_stage"
LOG_TAIL_LINES = 40
KILL_GRACE_S = 10.0
# A cancelled CI job is killed outright seconds after its SIGTERM: stop the stage sooner.
CANCEL_GRACE_S = 2.0
POLL_S = 0.2  # how often the parent looks for a finished child, a timeout or a cancel
CANCEL_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# The pid of the process that started this one (a stage's child learns its parent's pid here,
# to notice a parent that died before PR_SET_PDEATHSIG took effect).
PARENT_PID_ENV = "STAGEBENCH_PARENT_PID"
OOM_MARKERS = ("CUDA out of memory", "OutOfMemoryError", "can't allocate memory")


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def classify(exc: BaseException) -> tuple[str, str]:
    """An exception raised while measuring -> (status, one-line reason)."""
    import torch

    from stagebench.optim import Unavailable
    from stagebench.runner import StageUnavailable

    chain = _chain(exc)
    for e in chain:  # an OOM during autotuning is still an OOM
        if isinstance(e, torch.OutOfMemoryError) or any(m in str(e) for m in OOM_MARKERS):
            return "oom", first_line(str(e)) or type(e).__name__
    if isinstance(exc, StageUnavailable | Unavailable | ImportError):
        return "unavailable", first_line(str(exc)) or type(exc).__name__
    for e in chain:
        module = type(e).__module__
        if module.startswith(("torch._dynamo", "torch._inductor")):
            return "compile_error", f"{type(e).__name__}: {first_line(str(e))}"
    return "error", f"{type(exc).__name__}: {first_line(str(exc))}"


def _load_entry(spec: str) -> Callable[[stages.Stage, Workload], Metrics]:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _rank_file(result_path: Path, rank: int, kind: str) -> Path:
    return result_path.with_name(f"{kind}.rank{rank}.json")


class Cancelled(BaseException):
    """The run was cancelled by a signal. Raised once the cancelled stage's Result is stored;
    a BaseException so that no `except Exception` on the way out swallows it."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"cancelled by {signal.Signals(signum).name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # what a shell reports for a process the signal ended


class Cancellation:
    """The first cancel signal received while stages run (None: not cancelled)."""

    signum: int | None = None


_active: Cancellation | None = None


@contextlib.contextmanager
def cancellation() -> Iterator[Cancellation]:
    """Record SIGTERM and SIGINT instead of dying on them, for the stages run inside.

    The signal is only recorded: the waiting loop acts on it, so no store write is cut in half.
    Nested uses share the outermost, which raises Cancelled when its block ends. Only the main
    thread can set signal handlers; elsewhere nothing is recorded.
    """
    global _active
    if _active is not None:
        yield _active
        return
    if threading.current_thread() is not threading.main_thread():
        yield Cancellation()
        return
    state = Cancellation()

    def record(signum: int, frame: object) -> None:
        state.signum = state.signum or signum

    previous = {s: signal.signal(s, record) for s in CANCEL_SIGNALS}
    _active = state
    try:
        yield state
    finally:
        _active = None
        for signum, handler in previous.items():
            if handler is not None:  # None: set outside Python, cannot be restored from here
                signal.signal(signum, handler)
    if state.signum:
        raise Cancelled(state.signum)


def _set_parent_death_signal(signum: int) -> None:
    """Linux: have the kernel send `signum` when the parent dies (even by SIGKILL)."""
    if sys.platform != "linux":
        return
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signum), 0, 0, 0)


def parent_gone(parent: int) -> bool:
    """Is the process that started this one dead or dying?

    The kernel sends the parent-death signal when the parent's forking thread exits. Under
    SIGKILL the main thread may go first; this process is then handed to a sibling thread of the
    same dying process, so getppid() still names it, but its main thread is a zombie.
    """
    if os.getppid() != parent:
        return True
    try:
        state = Path(f"/proc/{parent}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return sys.platform == "linux"  # no /proc entry on Linux: gone
    return state in ("Z", "X")


def die_with_parent(tmp: Path, *, owns_tmp: bool) -> None:
    """In a stage's process: never outlive the parent, and take the stage's processes along.

    On SIGTERM (the parent stopping the stage, or the kernel saying the parent died) the process
    ends its whole process group (inductor compile workers ...). Orphaned, and owning the job's
    temporary directory (the stage's child, or torchrun's launcher; not a worker), it also ends
    the workers' sessions and removes the directory, which the dead parent can no longer do.
    """
    parent = int(os.environ.get(PARENT_PID_ENV) or 0)

    def stop(signum: int, frame: object) -> None:
        if owns_tmp and parent and parent_gone(parent):
            kill_workers(tmp)
            shutil.rmtree(tmp, ignore_errors=True)
        signal.signal(signum, signal.SIG_DFL)
        if os.getpgrp() == os.getpid():  # leading our own group: it is the stage's, end it all
            os.killpg(os.getpid(), signum)
        os.kill(os.getpid(), signum)

    signal.signal(signal.SIGTERM, stop)
    _set_parent_death_signal(signal.SIGTERM)
    if parent and os.getppid() != parent:  # the parent died before the kernel could be asked
        stop(signal.SIGTERM, None)


def child_main(job_path: str, result_path: str) -> int:
    """Inside the child (or one rank of it): measure, classify any exception, write the Result."""
    # torchrun workers share the launcher's directory; the launcher (or the parent) removes it.
    die_with_parent(Path(job_path).parent, owns_tmp="RANK" not in os.environ)
    from stagebench import distributed

    job = json.loads(Path(job_path).read_text())
    stage = stages.resolve(job["stage"])
    workload = Workload.from_dict(job["workload"])
    rank = distributed.current() if workload.nproc else None
    if rank:
        _rank_file(Path(result_path), rank.rank, "pid").write_text(str(os.getpid()))
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    base = dict(
        stage=stage.name,
        spec=stage.spec,
        model=workload.model,
        workload=workload.to_dict(),
        started_at=started,
    )
    try:
        metrics = _load_entry(job.get("entry", DEFAULT_ENTRY))(stage, workload)
        result = Result(status="ok", reason=None, metrics=metrics, **base)
    except BaseException as exc:  # everything becomes a status; nothing escapes
        status, reason = classify(exc)
        result = Result(status=status, reason=reason, **base)
        traceback.print_exc()  # into the child's log, whose tail a failed Result carries
    ended_at = time.time()  # which rank failed first
    result.env = env.collect()
    if rank is None:
        _write_atomically(Path(result_path), json.dumps(result.to_dict()))
        return 0
    rank_result = {"rank": rank.rank, "time": ended_at, "result": result.to_dict()}
    _write_atomically(_rank_file(Path(result_path), rank.rank, "result"), json.dumps(rank_result))
    return 0 if result.status == "ok" else 1  # a rank that stops must end torchrun's job


def _tail(log: Path) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:])
    except OSError:
        return ""


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _stop(proc: subprocess.Popen, grace_s: float = KILL_GRACE_S) -> None:
    """SIGTERM the child's whole session, then SIGKILL what is left after a grace period."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace_s)
    except (ProcessLookupError, PermissionError):
        pass
    except subprocess.TimeoutExpired:
        pass
    _kill_group(proc.pid)
    proc.wait()


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code} without a result"


def _command(
    job_path: Path, result_path: Path, nproc: int | None, python: str | None = None
) -> list[str]:
    python = python or sys.executable
    child = ["-m", "stagebench.isolate", str(job_path), str(result_path)]
    if nproc is None:
        return [python, *child]
    report = result_path.with_name("torchrun-failures.json")
    torchrun = ["--standalone", f"--nproc-per-node={nproc}", "--max-restarts=0"]
    return [python, "-m", "stagebench.launch", str(report), *torchrun, *child]


def env_of(python: str | None) -> dict:
    """env.collect() as `python` sees it (another interpreter: an overlay), for a Result whose
    child left none; this process's own where that interpreter cannot answer."""
    if python is None or python == sys.executable:
        return env.collect()
    code = "import json; from stagebench import env; print(json.dumps(env.collect()))"
    with contextlib.suppress(OSError, subprocess.SubprocessError, ValueError, IndexError):
        out = subprocess.run(
            [python, "-c", code], capture_output=True, text=True, timeout=300, check=True
        ).stdout
        return json.loads(out.strip().splitlines()[-1])
    return env.collect()


def _child_env(workload: Workload) -> dict[str, str]:
    from stagebench.optim.compile import cache_dir_for

    environ = dict(os.environ)
    if workload.nproc is not None and "OMP_NUM_THREADS" not in environ:
        # torchrun would pin every worker to one thread; share the host's cores instead.
        environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // workload.nproc))
    # Decided here, before the child imports torch: torch fills TORCHINDUCTOR_CACHE_DIR with its
    # own temporary default the first time anything asks, and stagebench's choice came too late.
    environ["TORCHINDUCTOR_CACHE_DIR"] = cache_dir_for(workload.compile_cache, environ)
    environ[PARENT_PID_ENV] = str(os.getpid())
    # The child measures the stagebench this process runs. asv puts a commit's checkout first on
    # its own sys.path but passes the caller's PYTHONPATH on (the container sets it to HEAD's
    # src/): without this, a backfilled or re-measured commit would run HEAD's stages.
    source = source_root()
    if source is not None:
        rest = [p for p in environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != source]
        environ["PYTHONPATH"] = os.pathsep.join([source, *rest])
    return environ


def source_root() -> str | None:
    """The directory this stagebench is imported from when it is the project's source tree
    (`src/` beside pyproject.toml); None for an installed copy (site-packages, `pip --target`),
    whose other packages must not jump ahead of an overlay's own."""
    root = Path(stagebench.__file__).resolve().parents[1]
    return str(root) if (root.parent / "pyproject.toml").is_file() else None


def kill_workers(tmp: Path) -> None:
    """torchrun gives each worker a session of its own: end those too (and their children)."""
    for pid_file in tmp.glob("pid.rank*.json"):
        with contextlib.suppress(OSError, ValueError):
            _kill_group(int(pid_file.read_text()))


def root_cause(tmp: Path, nproc: int) -> tuple[int, Result] | None:
    """The rank whose failure ended a multi-process stage, from the ranks' own Results and
    torchrun's record of ranks that died without one (see the module docstring)."""
    written: dict[int, tuple[float, Result]] = {}
    for path in tmp.glob("result.rank*.json"):
        data = json.loads(path.read_text())
        written[data["rank"]] = (data["time"], Result.from_dict(data["result"]))
    candidates = [(t, rank, r) for rank, (t, r) in written.items() if r.status != "ok"]
    report = tmp / "torchrun-failures.json"
    if report.exists():
        for rank_text, info in json.loads(report.read_text()).items():
            rank = int(rank_text)
            if rank not in written and rank < nproc:
                crashed = Result(
                    status="crashed",
                    reason=_describe_exit(info["exitcode"]),
                    stage="",
                    spec="",
                    model="",
                    workload={},
                )
                candidates.append((float(info.get("timestamp", 0)), rank, crashed))
    if not candidates:
        return None
    _, rank, result = min(candidates, key=lambda c: (_is_victim(c[2]), c[0]))
    return rank, result


def _is_victim(result: Result) -> bool:
    """Failures that follow a peer's: a broken collective, or torchrun's SIGTERM to survivors."""
    if result.status == "crashed":
        return "SIGTERM" in (result.reason or "")
    return result.status == "error"


def _merged(tmp: Path, result_path: Path, nproc: int | None, base: dict) -> Result | None:
    """The Result a finished child left: its own, or its ranks' merged; None if it left none."""
    if nproc is None:
        if not result_path.exists():
            return None
        return Result.from_dict(json.loads(result_path.read_text()))
    cause = root_cause(tmp, nproc)
    if cause is not None:
        rank, failed = cause
        fields = {**base, "status": failed.status, "env": failed.env}
        return Result(reason=f"rank {rank} of {nproc}: {failed.reason}", **fields)
    main = tmp / "result.rank0.json"
    if not main.exists():
        return None
    return Result.from_dict(json.loads(main.read_text())["result"])


def log_name(stage: stages.Stage) -> str:
    """The stage's log file name, in --log-dir (rewritten on every run) or the temp directory."""
    return re.sub(r"[^\w.-]", "_", stage.name) + ".log"  # spec options bring ':' and '='.


def gpus_missing(workload: Workload) -> str | None:
    """More ranks than visible GPUs, known from NVML without starting (or initialising) CUDA."""
    if workload.nproc is None or workload.device != "cuda":
        return None
    visible = env.visible_gpu_count()
    if visible < workload.nproc:
        return f"needs {workload.nproc} GPUs, {visible} visible"
    return None


def run_isolated(
    stage: stages.Stage,
    workload: Workload,
    *,
    entry: str = DEFAULT_ENTRY,
    log_dir: Path | None = None,
    python: str | None = None,
) -> Result:
    """Run `stage` in a child process; always returns a Result, never raises for the stage.

    `python`: the child's interpreter (an overlay's, see overlay.py); default this one.

    Cancelled (SIGTERM, SIGINT) it returns a `cancelled` Result to an enclosing run_matrix, which
    stores it and raises Cancelled; called on its own it raises Cancelled after cleaning up.
    """
    base = dict(
        stage=stage.name,
        spec=stage.spec,
        model=workload.model,
        workload=workload.to_dict(),
        started_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )
    missing = gpus_missing(workload)
    if missing:  # known without starting anything
        return Result(status="unavailable", reason=missing, env=env_of(python), **base)
    with (
        cancellation() as cancel,
        # An orphaned child may have removed the directory already (see die_with_parent).
        tempfile.TemporaryDirectory(prefix="stagebench-", ignore_cleanup_errors=True) as tmp_name,
    ):
        tmp = Path(tmp_name)
        job_path, result_path = tmp / "job.json", tmp / "result.json"
        log = (log_dir or tmp) / log_name(stage)
        log.parent.mkdir(parents=True, exist_ok=True)
        job = {"stage": stage.name, "workload": workload.to_dict(), "entry": entry}
        job_path.write_text(json.dumps(job))
        cmd = _command(job_path, result_path, workload.nproc, python)
        t0 = time.perf_counter()
        with log.open("w") as log_file:
            proc = subprocess.Popen(
                cmd,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=_child_env(workload),
            )
            try:
                code, stopped = _wait(proc, workload.timeout_s, cancel)
            finally:
                if proc.poll() is None:  # anything unexpected on the way: no orphan
                    _stop(proc, CANCEL_GRACE_S)
                _kill_group(proc.pid)  # stray grandchildren (compile workers) go too
                kill_workers(tmp)
                if proc.poll() is None:
                    proc.wait()
        wall = time.perf_counter() - t0
        tail = _tail(log)
        if stopped == "timeout":
            processes = f" ({workload.nproc} processes)" if workload.nproc else ""
            result = Result(
                status="timeout",
                reason=f"no result after {workload.timeout_s:g} s{processes}",
                log_tail=tail,
                **base,
            )
        elif stopped == "cancelled":
            name = signal.Signals(cancel.signum or signal.SIGTERM).name
            result = Result(
                status="cancelled",
                reason=f"the run was cancelled ({name}) before the stage finished",
                log_tail=tail,
                **base,
            )
        elif (merged := _merged(tmp, result_path, workload.nproc, base)) is not None:
            result = merged
            if result.failed:
                result.log_tail = tail
        elif any(marker in tail for marker in OOM_MARKERS):
            result = Result(
                status="oom",
                reason=f"{_describe_exit(code)}; the log reports OOM",
                log_tail=tail,
                **base,
            )
        else:
            result = Result(status="crashed", reason=_describe_exit(code), log_tail=tail, **base)
        result.wall_time_s = wall
        result.env = result.env or env_of(python)
        return result


def _wait(proc: subprocess.Popen, timeout_s: float, cancel: Cancellation) -> tuple[int, str | None]:
    """Wait for the child: (its exit code, None), or stop it: (code, "timeout" | "cancelled")."""
    deadline = time.monotonic() + timeout_s
    while True:
        code = proc.poll()
        if code is not None:  # first: a stage that finished as the signal came keeps its Result
            return code, None
        if cancel.signum:
            _stop(proc, CANCEL_GRACE_S)
            return proc.wait(), "cancelled"
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            _stop(proc)
            return proc.wait(), "timeout"
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=min(POLL_S, remaining))


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1], sys.argv[2]))
