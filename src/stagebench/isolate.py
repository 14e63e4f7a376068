"""Run one stage in its own child process with a timeout, and classify whatever happens.

The child measures and writes its Result (it knows an OOM from a compile error from a missing
package); the parent only sees what the child could not say: a timeout, a signal, an exit code.
Every process the child started (inductor compile workers ...) shares its session and is killed
with it, so no orphan keeps a GPU busy.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from stagebench import env, stages
from stagebench.optim import Unavailable
from stagebench.results import Metrics, Result
from stagebench.runner import StageUnavailable
from stagebench.workload import Workload

# The function a child calls to measure a stage; tests point `entry` at fault injectors.
DEFAULT_ENTRY = "stagebench.runner:run_stage"
LOG_TAIL_LINES = 40
KILL_GRACE_S = 10.0
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


def child_main(job_path: str, result_path: str) -> int:
    """Inside the child: measure, classify any exception, write the Result."""
    job = json.loads(Path(job_path).read_text())
    stage = stages.resolve(job["stage"])
    workload = Workload.from_dict(job["workload"])
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
    result.env = env.collect()
    _write_atomically(Path(result_path), json.dumps(result.to_dict()))
    return 0


def _tail(log: Path) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:])
    except OSError:
        return ""


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the child's whole session, then SIGKILL what is left after a grace period."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=KILL_GRACE_S)
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


def run_isolated(
    stage: stages.Stage,
    workload: Workload,
    *,
    entry: str = DEFAULT_ENTRY,
    log_dir: Path | None = None,
) -> Result:
    """Run `stage` in a child process; always returns a Result, never raises for the stage."""
    with tempfile.TemporaryDirectory(prefix="stagebench-") as tmp:
        job_path, result_path = Path(tmp) / "job.json", Path(tmp) / "result.json"
        log = (log_dir or Path(tmp)) / f"{stage.name.replace('+', '_')}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        job = {"stage": stage.name, "workload": workload.to_dict(), "entry": entry}
        job_path.write_text(json.dumps(job))
        cmd = [sys.executable, "-m", "stagebench.isolate", str(job_path), str(result_path)]
        t0 = time.perf_counter()
        with log.open("w") as log_file:
            proc = subprocess.Popen(
                cmd,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            try:
                code: int | None = proc.wait(timeout=workload.timeout_s)
            except subprocess.TimeoutExpired:
                code = None
                _stop(proc)
            finally:
                _kill_group(proc.pid)  # stray grandchildren (compile workers) go too
                if proc.poll() is None:
                    proc.wait()
        wall = time.perf_counter() - t0
        base = dict(
            stage=stage.name,
            spec=stage.spec,
            model=workload.model,
            workload=workload.to_dict(),
            started_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        )
        tail = _tail(log)
        if code is None:
            result = Result(
                status="timeout",
                reason=f"no result after {workload.timeout_s:g} s",
                log_tail=tail,
                **base,
            )
        elif result_path.exists():
            result = Result.from_dict(json.loads(result_path.read_text()))
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
        result.env = result.env or env.collect()
        return result


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1], sys.argv[2]))
