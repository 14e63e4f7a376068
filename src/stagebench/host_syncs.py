"""Where a training step makes the host wait for the device, counted in one untimed step.

A sync inside the step (`.item()`, `nonzero()`, branching on a tensor) drains the device; the
host then launches the rest of the step onto an idle GPU, so every host delay lands on the
critical path. On the H100 every stage whose median moved more than 1% between processes has
such a sync (docs/results, 2026-12-07: a correlation, read from the libraries' source), so a
Result names its syncs, and `compare --explain` shows a release that added one.

torch's sync debug mode warns at each synchronizing CUDA call (a C++ warning: each occurrence
becomes a Python warning naming the Python line that made the call; one in the backward is named
by torch/autograd's engine call). Syncs that torch does not flag (`torch.cuda.synchronize`,
CUDA events) are not counted: the harness's own timing uses them, nor the allocator's or NCCL's
own waits: "none" means none that torch flags. A line is named by its module, never by a path.
CUDA only: a CPU step never waits for a device.
"""

from __future__ import annotations

import os
import re
import sys
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

SYNC_WARNING = "called a synchronizing CUDA operation"
LISTED_SITES = 4  # in the note; the count covers them all
UNAVAILABLE_ON_CPU = "not counted on cpu (a CPU step never waits for a device)"
NONE_FLAGGED = "none flagged in one step"  # by torch's debug mode, which is not every sync


@dataclass(frozen=True)
class Site:
    where: str  # the module's file (`cut_cross_entropy/utils.py`) and the line
    calls: int  # per step


def _module_files() -> dict[str, str]:
    """Every loaded module's file, as its dotted name gives it (`liger_kernel/ops/x.py`): a name
    that holds no directory of this machine."""
    files = {}
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if not isinstance(path, str) or not path.endswith(".py"):
            continue
        tail = "/__init__.py" if os.path.basename(path) == "__init__.py" else ".py"
        files[_norm(path)] = name.replace(".", "/") + tail
    return files


def _generated_roots() -> list[str]:
    """Where inductor writes the code it generates in this process. Read, never asked for:
    torch's cache_dir() would create the directory and set the variable as a side effect."""
    chosen = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    return [_norm(chosen)] if chosen else []


def _norm(path: str) -> str:
    return os.path.normcase(os.path.abspath(path)).replace("\\", "/")


def short_path(
    filename: str, modules: dict[str, str] | None = None, generated: Sequence[str] | None = None
) -> str:
    """A file named by its module (`cut_cross_entropy/utils.py`), never by a machine path:
    generated code is `<inductor-generated code>`, a file of no loaded module its bare name."""
    if filename.startswith("<"):  # <string>, <frozen ...>, FX's <eval_with_key>.N: N varies
        return re.sub(r"\.\d+$", "", filename)
    if not filename:
        return "<unnamed>"
    path = _norm(filename)
    for root in _generated_roots() if generated is None else generated:
        root = root.rstrip("/")
        if root and path.startswith(root + "/"):
            return "<inductor-generated code>"
    named = (_module_files() if modules is None else modules).get(path)
    return named or filename.replace("\\", "/").rsplit("/", 1)[-1] or "<unnamed>"


def _scrubbed(text: str) -> str:
    """An error's text with every path-like word (not a URL) replaced: paths name directories,
    users and caches of this machine."""
    words = re.split(r"(\s+)", text)
    for i, word in enumerate(words):
        core = word.strip("'\"()[]{},;")
        pathlike = re.search(r"[/\\]", core) and re.search(r"[A-Za-z]", core)
        if pathlike and "://" not in core:
            words[i] = word.replace(core, "<path>")
    return "".join(words)


def sites(caught: Iterable[warnings.WarningMessage]) -> list[Site]:
    """The sync warnings among `caught`, counted per line, most calls first."""
    modules, generated = _module_files(), _generated_roots()
    counts = Counter(
        f"{short_path(w.filename, modules, generated)}:{w.lineno}"
        for w in caught
        if SYNC_WARNING in str(w.message)
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
        return NONE_FLAGGED
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
        first = _scrubbed((str(exc).splitlines() or [""])[0])
        return f"not counted: the extra step failed: {type(exc).__name__}: {first}"
