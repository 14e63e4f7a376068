"""Where a training step makes the host wait for the device, counted in one untimed step.

A sync inside the step (`.item()`, `nonzero()`, branching on a tensor) drains the device; the
host then launches the rest of the step onto an idle GPU, so every host delay lands on the
critical path. On the H100 the stages with such a sync are the noisy ones (docs/results,
2026-12-07), so a Result names its syncs and `compare --explain` shows a release that added one.

torch's sync debug mode warns at each synchronizing CUDA call (a C++ warning: each occurrence
becomes a Python warning naming the Python line that made the call; one in the backward is named
by torch/autograd's engine call). Syncs that
torch does not flag (`torch.cuda.synchronize`, CUDA events) are not counted: the harness's own
timing uses them. CUDA only: a CPU step never waits for a device.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

SYNC_WARNING = "called a synchronizing CUDA operation"
LISTED_SITES = 4  # in the note; the count covers them all
UNAVAILABLE_ON_CPU = "not counted on cpu (a CPU step never waits for a device)"


@dataclass(frozen=True)
class Site:
    where: str  # package-relative file:line
    calls: int  # per step


def short_path(filename: str) -> str:
    """A file as its package names it, never a machine path: `cut_cross_entropy/utils.py`."""
    path = filename.replace("\\", "/")
    if "torchinductor" in path:
        return "<inductor-generated code>"
    for root in ("site-packages/", "dist-packages/", "/src/"):
        if root in path:
            return path.rsplit(root, 1)[1]
    return path.rsplit("/", 1)[-1]


def sites(caught: Iterable[warnings.WarningMessage]) -> list[Site]:
    """The sync warnings among `caught`, counted per line, most calls first."""
    counts = Counter(
        f"{short_path(w.filename)}:{w.lineno}" for w in caught if SYNC_WARNING in str(w.message)
    )
    return [Site(where, calls) for where, calls in counts.most_common()]


def count(step: Callable[[], object], device: torch.device) -> list[Site]:
    """Run `step` once with torch's sync debug mode on warn; the mode is restored whatever
    happens. Raises what the step raises."""
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    torch.cuda.synchronize(device)
    return sites(caught)


def note(found: list[Site]) -> str:
    """The Result's `notes.host_syncs`: how many a step and where."""
    if not found:
        return "none in one step"
    total = sum(s.calls for s in found)
    listed = ", ".join(f"{s.where} x{s.calls}" for s in found[:LISTED_SITES])
    more = len(found) - LISTED_SITES
    return f"{total} a step: {listed}" + (f", and {more} more line(s)" if more > 0 else "")


def observe(step: Callable[[], object], device: torch.device) -> str:
    """The note for a stage; a failure is said, never a reason to fail the measured stage."""
    if device.type != "cuda":
        return UNAVAILABLE_ON_CPU
    try:
        return note(count(step, device))
    except Exception as exc:  # the stage's numbers are already measured
        return f"not counted: the extra step failed: {type(exc).__name__}: {exc}".splitlines()[0]
