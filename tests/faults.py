"""FAKE failures for the isolation tests: entry points a child process calls instead of the runner.

Each fault is real inside a real child process (a real exception, a real hang, a real abort), but
it is staged: no machine here can run out of GPU memory or crash a kernel on demand. Stages whose
name is not in FAULTS (no seed id is) run the real runner, so a matrix mixes real rows and faults.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

# torch and the runner are imported by the faults that need them: a hang is reached within a
# second of the child starting, so the hang tests can wait seconds instead of half a minute.


def run_stage(stage, workload):
    from stagebench.runner import run_stage as real

    return real(stage, workload)


def fake_oom(stage, workload):
    import torch

    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (fake)")


def fake_hang(stage, workload):
    # A grandchild stands in for an inductor compile worker: it must die with the stage.
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    pid_file = os.environ.get("STAGEBENCH_TEST_PIDFILE")
    if pid_file:
        with open(f"{pid_file}.stage", "w") as f:  # the stage's own process, first
            f.write(str(os.getpid()))
        with open(pid_file, "w") as f:
            f.write(str(worker.pid))
    time.sleep(3600)


def fake_abort(stage, workload):
    os.abort()


def fake_import_error(stage, workload):
    import liger_kernel_that_does_not_exist  # noqa: F401


def fake_error(stage, workload):
    raise ValueError("shapes (2, 3) and (4, 5) do not broadcast (fake)")


def fake_compile_error(stage, workload):
    from torch._dynamo.exc import Unsupported

    try:
        raise RuntimeError("fake inner cause")
    except RuntimeError as inner:
        raise Unsupported("Skip calling `torch.compiler.disable()`d function (fake)") from inner


def fake_oom_in_autotune(stage, workload):
    import torch
    from torch._inductor.exc import InductorError

    try:
        raise torch.OutOfMemoryError("CUDA out of memory during autotuning (fake)")
    except torch.OutOfMemoryError as inner:
        raise InductorError(inner, None) from inner


def fake_wrong_loss(stage, workload):
    metrics = run_stage(stage, workload)
    metrics.loss_first *= 1.5  # as if a kernel computed the wrong loss
    return metrics


FAULTS = {
    "eager": fake_oom,
    "eager+compile": fake_hang,
    "eager+compile-default": fake_abort,
    "eager+compile-model": fake_import_error,
    "sdpa+compile-model": fake_error,
    "sdpa+compile": fake_compile_error,
    "sdpa+compile-default": fake_oom_in_autotune,
}


def dispatch(stage, workload):
    """The child's entry: a fault for listed specs, the real runner otherwise."""
    fault = FAULTS.get(stage.name)
    return fault(stage, workload) if fault else run_stage(stage, workload)


def wrong_loss(stage, workload):
    """Entry for the numerics test: the reference measures truly, everything else is off."""
    return run_stage(stage, workload) if stage.is_reference else fake_wrong_loss(stage, workload)


# Rank faults: under torchrun, rank 1 fails and rank 0 runs the real stage, so rank 0 is left
# waiting in FSDP2's collectives for a peer that will never come, as on a real cluster.
def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _record_pid(kind: str, pid: int) -> None:
    """Tests read these to prove no process outlived the stage."""
    base = os.environ.get("STAGEBENCH_TEST_PIDFILE")
    if base:
        with open(f"{base}.{kind}.rank{_rank()}", "w") as f:
            f.write(str(pid))


def rank1_oom(stage, workload):
    import torch

    _record_pid("worker", os.getpid())
    if _rank() == 1:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 4.00 GiB (fake)")
    return run_stage(stage, workload)


def rank1_hang(stage, workload):
    _record_pid("worker", os.getpid())
    if _rank() == 1:
        worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
        _record_pid("grandchild", worker.pid)
        time.sleep(3600)
    return run_stage(stage, workload)


def rank1_abort(stage, workload):
    _record_pid("worker", os.getpid())
    if _rank() == 1:
        os.abort()
    return run_stage(stage, workload)


def rank1_oom_mid_training(stage, workload):
    """Rank 1 runs out of memory at its third step, when both ranks are deep in FSDP2's
    collectives: rank 0's next collective breaks, and the Result must still name rank 1."""
    import torch

    import stagebench.runner as runner

    _record_pid("worker", os.getpid())
    if _rank() == 1:
        real_step, calls = runner._train_step, []

        def failing_step(*args, **kwargs):
            calls.append(1)
            if len(calls) == 3:
                raise torch.OutOfMemoryError("CUDA out of memory at step 3 (fake)")
            return real_step(*args, **kwargs)

        runner._train_step = failing_step
    return run_stage(stage, workload)
