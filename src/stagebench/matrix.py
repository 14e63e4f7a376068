"""Run a list of stages, one child process each, checking numerics and storing as they finish.

The reference stage (plain SDPA) runs first when it is in the list; every other stage's step-0
loss is compared with it (same seed, same weights, same data), or with the newest reference of the
same workload already in the store.

Whatever happens after a stage ran, its Result is kept: a numerics check that cannot judge says
so in `numerics`, and a store that cannot take the Result (a full disk) gets it printed to stderr
as one JSON line while the remaining stages still run. A cancel (SIGTERM, SIGINT) stores the
cancelled stage's Result and raises isolate.Cancelled before any further stage starts.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from stagebench import results
from stagebench.isolate import DEFAULT_ENTRY, cancellation, run_isolated
from stagebench.results import Result, StoreError
from stagebench.stages import Stage
from stagebench.workload import Workload

# Relative step-0 loss tolerance: bf16 kernels legitimately differ in rounding (fused vs unfused
# softmax, fp32 vs bf16 accumulation in the loss head); fp32 ones only in summation order.
LOSS_RTOL = {"bfloat16": 2e-2, "float16": 1e-2, "float32": 1e-3}


def order(stage_list: Iterable[Stage]) -> list[Stage]:
    """Reference first, the rest in the order given; duplicates dropped."""
    unique = list(dict.fromkeys(stage_list))
    return sorted(unique, key=lambda s: not s.is_reference)


def _numerics_key(result: Result) -> str | None:
    try:
        return Workload.from_dict(result.workload).numerics_key()
    except ValueError:  # loaded Results are checked; one built in memory may not be
        return None


def find_reference(history: Iterable[Result], workload: Workload) -> Result | None:
    key = workload.numerics_key()
    matches = [
        r
        for r in history
        if r.status == "ok"
        and r.spec == "sdpa"
        and r.metrics is not None
        and _numerics_key(r) == key
    ]
    return matches[-1] if matches else None


def check_numerics(result: Result, reference: Result | None, workload: Workload) -> None:
    """Mark `result` numerics_mismatch when its step-0 loss is off the reference's."""
    if result.metrics is None:
        return
    if reference is None or reference.metrics is None:
        result.numerics = "unchecked: no reference (sdpa) result for this workload"
        return
    rtol = LOSS_RTOL[workload.dtype]
    ref, got = reference.metrics.loss_first, result.metrics.loss_first
    if not math.isfinite(ref) or ref == 0:  # nothing to be relative to: no verdict either way
        result.numerics = f"unchecked: reference loss is {ref:g}"
        return
    rel = abs(got - ref) / abs(ref)
    result.numerics = (
        f"step-0 loss {got:.5f} vs reference {ref:.5f}: rel diff {rel:.2e} (tol {rtol:g})"
    )
    if not rel <= rtol:  # also catches NaN
        result.status = "numerics_mismatch"
        result.reason = result.numerics


def run_matrix(
    stage_list: Iterable[Stage],
    workload: Workload,
    *,
    store: Path | None = None,
    entry: str = DEFAULT_ENTRY,
    log_dir: Path | None = None,
    on_result: Callable[[Result], None] | None = None,
    on_start: Callable[[Stage], None] | None = None,
    on_store_error: Callable[[Result, StoreError], None] | None = None,
    python: str | None = None,
    reference: Result | None = None,
) -> list[Result]:
    """Every stage runs whatever happened to the ones before it, or to the store.

    `python`: the interpreter the stages run in (an overlay's); `reference`: the Result to check
    step-0 losses against, instead of the store's newest (a reference stage in the list still
    replaces it).
    """
    if reference is None:
        history = results.load(store) if store else []
        reference = find_reference(history, workload)
    done: list[Result] = []
    with cancellation() as cancel:
        for stage in order(stage_list):
            if cancel.signum:
                break
            if on_start:
                on_start(stage)
            result = run_isolated(stage, workload, entry=entry, log_dir=log_dir, python=python)
            if stage.is_reference and result.status == "ok":
                reference = result
                result.numerics = "reference"
            else:
                _check_numerics_safely(result, reference, workload)
            if store:
                _store(store, result, on_store_error)
            done.append(result)
            if on_result:
                on_result(result)
    return done


def _check_numerics_safely(result: Result, reference: Result | None, workload: Workload) -> None:
    try:
        check_numerics(result, reference, workload)
    except Exception as exc:  # a stage's measurement outweighs its verdict: keep the Result
        result.numerics = f"unchecked: {type(exc).__name__}: {exc}"


def _store(
    store: Path, result: Result, on_store_error: Callable[[Result, StoreError], None] | None
) -> None:
    try:
        results.append(store, result)
    except StoreError as exc:
        # The CI log keeps what the store could not: the whole Result, one JSON line.
        print(f"stagebench: {exc}; the {result.stage} Result follows:", file=sys.stderr)
        print(json.dumps(result.to_dict(), sort_keys=True), file=sys.stderr, flush=True)
        if on_store_error:
            on_store_error(result, exc)
