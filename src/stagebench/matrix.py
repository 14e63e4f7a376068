"""Run a list of stages, one child process each, checking numerics and storing as they finish.

The reference stage (plain SDPA) runs first when it is in the list; every other stage's step-0
loss is compared with it (same seed, same weights, same data), or with the newest reference of the
same workload already in the store.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from stagebench import results
from stagebench.isolate import DEFAULT_ENTRY, run_isolated
from stagebench.results import Result
from stagebench.stages import Stage
from stagebench.workload import Workload

# Relative step-0 loss tolerance: bf16 kernels legitimately differ in rounding (fused vs unfused
# softmax, fp32 vs bf16 accumulation in the loss head); fp32 ones only in summation order.
LOSS_RTOL = {"bfloat16": 2e-2, "float16": 1e-2, "float32": 1e-3}


def order(stage_list: Iterable[Stage]) -> list[Stage]:
    """Reference first, the rest in the order given; duplicates dropped."""
    unique = list(dict.fromkeys(stage_list))
    return sorted(unique, key=lambda s: not s.is_reference)


def find_reference(history: Iterable[Result], workload: Workload) -> Result | None:
    key = workload.numerics_key()
    matches = [
        r
        for r in history
        if r.status == "ok"
        and r.spec == "sdpa"
        and r.metrics is not None
        and Workload.from_dict(r.workload).numerics_key() == key
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
) -> list[Result]:
    """Every stage runs whatever happened to the ones before it."""
    history = results.load(store) if store else []
    reference = find_reference(history, workload)
    done: list[Result] = []
    for stage in order(stage_list):
        if on_start:
            on_start(stage)
        result = run_isolated(stage, workload, entry=entry, log_dir=log_dir)
        if stage.is_reference and result.status == "ok":
            reference = result
            result.numerics = "reference"
        else:
            check_numerics(result, reference, workload)
        if store:
            results.append(store, result)
        done.append(result)
        if on_result:
            on_result(result)
    return done
