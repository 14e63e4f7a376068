"""The asv suite, generated from the stage registry: one class per stage.

`setup_cache` measures the stage once per commit and environment through the isolated runner and
returns its Result; the `track_*` methods only read it. A stage that cannot run here is skipped
(asv shows n/a); a failed one records `track_ok` = 0 and fails its other metrics with the reason,
which asv prints in its log.

Configuration comes from the environment so the same suite serves a GPU nightly and a CPU CI:
    STAGEBENCH_PRESET    preset, checkpoint directory or namespace/name hub id
                         (default: qwen3-8b with CUDA, tiny without)
    STAGEBENCH_WORKLOAD  a named workload (b1x2048, the seed's and the CUDA default; b2x1024,
                         what the history measured up to protocol 1) or a JSON object of
                         Workload overrides, e.g. '{"seq_len": 128}'
    STAGEBENCH_MATRIX    named matrix or comma-separated stages (default: seed + cpu matrices)
    STAGEBENCH_STORE     JSON Lines file every Result is also appended to
                         (default: .asv/results/stagebench-results.jsonl in the project root)
    STAGEBENCH_DEVICE    cuda or cpu (default: cuda where NVML sees a GPU)
    STAGEBENCH_NPROCS    GPU counts for the multi-GPU classes (default: 2,4): the `fsdp` matrix
                         under FSDP2 with that many ranks, skipped where fewer GPUs are visible

A bad value raises SuiteConfigError, whose message starts with the variable's name, when asv
imports the suite. `python -m stagebench.asv_suite` checks the configuration first: one line
with the workload and the number of classes, or one error line and exit 2.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stagebench import PROTOCOL_VERSION, models, results, stages
from stagebench.metrics import METRICS
from stagebench.workload import WORKLOADS, Workload, defaults_for, named, shape_name


class SuiteConfigError(ValueError):
    """A STAGEBENCH_* variable the suite cannot use; the message starts with its name."""


def _device() -> str:
    """Asked of NVML, not torch: asv forks benchmark processes, and a CUDA driver initialised
    before a fork breaks CUDA in the child."""
    from stagebench.env import gpu_info

    explicit = os.environ.get("STAGEBENCH_DEVICE")
    if explicit:
        if explicit not in ("cuda", "cpu"):
            raise SuiteConfigError(f"STAGEBENCH_DEVICE={explicit!r}: give cuda or cpu")
        return explicit
    return "cuda" if gpu_info().get("gpu") else "cpu"


def _overrides() -> dict[str, Any]:
    text = os.environ.get("STAGEBENCH_WORKLOAD") or "{}"
    example = (
        f"give a workload name ({', '.join(WORKLOADS)}) or a JSON object of workload fields, "
        "e.g. '{\"seq_len\": 128}'"
    )
    if text.strip() in WORKLOADS:
        return named(text.strip())
    try:
        overrides = json.loads(text)
    except (ValueError, RecursionError) as exc:
        if re.fullmatch(r"[A-Za-z][\w.-]*", text.strip()):  # meant as a name
            message = f"STAGEBENCH_WORKLOAD={text!r} is not a known workload; {example}"
        else:
            message = f"STAGEBENCH_WORKLOAD={text!r} is not JSON ({exc}); {example}"
        raise SuiteConfigError(message) from None
    if not isinstance(overrides, dict):
        raise SuiteConfigError(f"STAGEBENCH_WORKLOAD={text!r} is not an object; {example}")
    return overrides


def bench_workload() -> Workload:
    device = _device()
    overrides = _overrides()
    if "device" in overrides:  # the per-device defaults follow STAGEBENCH_DEVICE
        raise SuiteConfigError("STAGEBENCH_WORKLOAD: set the device with STAGEBENCH_DEVICE")
    fields: dict[str, Any] = {
        "model": os.environ.get("STAGEBENCH_PRESET") or models.default_preset(device),
        "device": device,
        **defaults_for(device),
        **overrides,
    }
    if isinstance(fields["model"], str):  # not a string: Workload names it below
        source = "STAGEBENCH_WORKLOAD" if "model" in overrides else "STAGEBENCH_PRESET"
        try:
            models.check_name(fields["model"])
        except models.ModelError as exc:
            raise SuiteConfigError(f"{source}: {exc}") from None
    try:
        workload = Workload.from_dict(fields)
    except ValueError as exc:
        text = os.environ.get("STAGEBENCH_WORKLOAD")
        raise SuiteConfigError(f"STAGEBENCH_WORKLOAD={text!r}: {exc}") from None
    limit = models.max_positions(workload.model)
    if limit is not None and workload.seq_len > limit:
        raise SuiteConfigError(
            f"STAGEBENCH_WORKLOAD: seq_len={workload.seq_len} is above {workload.model}'s "
            f"max_position_embeddings ({limit})"
        )
    return workload


def bench_stages() -> list[stages.Stage]:
    """The stages that get a class. Classes must not depend on the machine: asv discovers the
    suite once and runs it everywhere, so every known matrix gets one, skipped where it can't run.
    """
    chosen = os.environ.get("STAGEBENCH_MATRIX")
    if chosen:
        names = stages.MATRICES.get(chosen) or [n.strip() for n in chosen.split(",") if n.strip()]
        if not names:
            raise SuiteConfigError(
                f"STAGEBENCH_MATRIX={chosen!r} names no stage; give "
                f"{' | '.join(stages.MATRICES)} or comma-separated stages"
            )
    else:
        names = [n for matrix in stages.MATRICES.values() for n in matrix]
    try:
        return list(dict.fromkeys(stages.resolve(n) for n in names))
    except stages.StageError as exc:
        raise SuiteConfigError(f"STAGEBENCH_MATRIX={chosen!r}: {exc}") from None


def bench_nprocs() -> list[int]:
    text = os.environ.get("STAGEBENCH_NPROCS", "2,4")
    try:
        counts = [int(n) for n in text.split(",") if n.strip()]
    except ValueError:
        raise SuiteConfigError(f"STAGEBENCH_NPROCS={text!r}: give GPU counts like 2,4") from None
    if any(n < 2 for n in counts):
        raise SuiteConfigError(f"STAGEBENCH_NPROCS={text!r}: multi-GPU classes need 2 or more")
    return counts


def store_path(root: Path) -> Path:
    """Anchored to the project root (asv runs benchmarks in a temporary working directory and
    passes ASV_CONF_DIR only to build commands), inside asv's results directory: the history
    the nightly keeps holds every full Result beside asv's numbers."""
    explicit = os.environ.get("STAGEBENCH_STORE")
    path = Path(explicit) if explicit else root / ".asv" / "results" / results.STORE_NAME
    if path.is_dir() or (path.exists() and not path.is_file()):
        raise SuiteConfigError(f"STAGEBENCH_STORE={str(path)!r} is not a file; give a file path")
    return path


def _too_few_gpus(workload: Workload) -> str | None:
    """Multi-GPU classes are for GPUs only (the CLI may run ranks on a CPU; the suite does not)."""
    from stagebench.isolate import gpus_missing

    if workload.nproc is not None and workload.device != "cuda":
        return f"{workload.nproc}-GPU stage: needs CUDA GPUs, the device is {workload.device}"
    return gpus_missing(workload)


def measure(stage: stages.Stage, store: Path, nproc: int | None = None) -> dict[str, Any]:
    """Run one stage for asv; the sdpa reference first if this workload has none stored yet.

    asv spawns a fresh interpreter for every setup_cache (its forkserver only forks the track_
    calls), so this path imports torch only where it must: a stage that cannot run here costs
    a second, not a torch import."""
    from stagebench.matrix import find_reference, run_matrix

    workload = bench_workload()
    if nproc is not None:
        workload = Workload.from_dict({**workload.to_dict(), "nproc": nproc})
    missing = _too_few_gpus(workload)
    if missing:
        return {"status": "unavailable", "reason": missing}
    if workload.device == "cpu":  # known without a child (GPU checks may touch CUDA: child only)
        import torch

        from stagebench.optim import unavailable_reason

        reason = unavailable_reason(stage, torch.device("cpu"))
        if reason:
            return {"status": "unavailable", "reason": reason}
    if not stage.is_reference and find_reference(results.load(store), workload) is None:
        run_matrix([stages.resolve(stages.REFERENCE_SPEC)], workload, store=store)
    (result,) = run_matrix([stage], workload, store=store)
    if result.status == "unavailable":
        return {"status": "unavailable", "reason": result.reason}
    return result.to_dict()


def _class_name(stage: stages.Stage, nproc: int | None = None) -> str:
    gpus = f"_fsdp_{nproc}gpu" if nproc else ""
    return "Stage_" + re.sub(r"\W", "_", stage.name) + gpus


def class_name(stage: stages.Stage, nproc: int | None = None) -> str:
    """The asv class a stage (on `nproc` GPUs) is measured in: `Stage_00_sdpa`."""
    return _class_name(stage, nproc)


def class_name_of(result: results.Result) -> str:
    """The asv class a stored Result was measured for (the reverse of _make_class's naming)."""
    nproc = (result.workload or {}).get("nproc")
    return _class_name(stages.resolve(result.stage), nproc)


def benchmark_version(stage: stages.Stage, workload: Workload, nproc: int | None = None) -> str:
    """The asv `version` of a stage's class measured with `workload`: its spec, its rank count,
    its model and shape where they are not the device's default, its collector setting where it
    is not the default, and the protocol. Another model, shape, collector setting or protocol is
    another series, never joined (and never judged with the other's noise)."""
    history = f"{stage.spec}|nproc-{nproc}" if nproc else stage.spec
    if workload.model != models.default_preset(workload.device):
        history += f"{MODEL_MARK}{workload.model}"  # another model is another series
    default = defaults_for(workload.device)
    if (workload.batch_size, workload.seq_len) != (default["batch_size"], default["seq_len"]):
        history += f"|{shape_name(workload)}"  # another shape is another series, never joined
    if workload.host_gc != "default":  # so is another collector setting
        history += f"{GC_MARK}{workload.host_gc}"
    return f"{history}|protocol-{PROTOCOL_VERSION}"


# What benchmark_version adds for a model or collector setting other than the default.
MODEL_MARK, GC_MARK = "|model-", "|gc-"


def is_default_series(version: str) -> bool:
    """A class version measured on the device's default model and the default collector."""
    return MODEL_MARK not in version and GC_MARK not in version


def version_of(result: results.Result) -> str:
    """The asv version of the class a stored Result was measured for (see benchmark_version)."""
    workload = Workload.from_dict(result.workload)
    return benchmark_version(stages.resolve(result.stage), workload, workload.nproc)


def _own_module(func: Callable, name: str, package: str) -> Callable:
    """Give `func` a module of its own.

    asv keys a setup_cache by its function's module and first line; every generated class shares
    one function, so without this all stages would share one cache (and one Result).
    """
    name = f"{package}.{name.lower()}"
    sys.modules.setdefault(name, types.ModuleType(name))
    clone = types.FunctionType(
        func.__code__, func.__globals__, func.__name__, None, func.__closure__
    )
    clone.__module__ = name
    return clone


def _make_class(stage: stages.Stage, package: str, store: Path, nproc: int | None = None) -> type:
    label = f"{stage.name} on {nproc} GPUs (FSDP2)" if nproc else stage.name
    class_name = _class_name(stage, nproc)

    def setup_cache(self) -> dict[str, Any]:
        return measure(stage, store, nproc)

    def setup(self, result: dict[str, Any]) -> None:
        if result["status"] == "unavailable":
            raise NotImplementedError(f"{label} unavailable: {result['reason']}")

    def track_ok(self, result: dict[str, Any]) -> int:
        return int(result["status"] == "ok")

    def tracker(key: str, unit: str) -> Callable:
        def track(self, result: dict[str, Any]) -> float:
            if result["status"] != "ok":
                raise RuntimeError(f"{label}: {result['status']}: {result['reason']}")
            value = results.metric_value(result["metrics"], key)
            return math.nan if value is None else float(value)  # n/a, e.g. no MFU on a CPU

        track.unit = unit
        return track

    cache = _own_module(setup_cache, class_name, package)
    workload = bench_workload()
    cache.timeout = 2 * workload.timeout_s + 120  # the reference may run first; child start-up
    track_ok.unit = "ok"
    body: dict[str, Any] = {
        "__doc__": f"{label}: {stage.spec}",
        "setup_cache": cache,
        "setup": setup,
        "track_ok": track_ok,
        "timeout": cache.timeout,
        # Results from an older protocol or another spec are invalidated on purpose.
        "version": benchmark_version(stage, workload, nproc),
    }
    for name, metric in METRICS.items():
        if metric.compile_only and not stage.compiles:
            continue  # no series at all: a stage that compiles nothing has no count to track
        body[f"track_{name}"] = tracker(metric.key, metric.unit)
    return type(class_name, (), body)


def stage_benchmarks(package: str, root: Path) -> dict[str, type]:
    """{class name: asv benchmark class} for every bench stage, then the multi-GPU classes;
    `root` is the project root."""
    store = store_path(root)
    classes = {_class_name(s): _make_class(s, package, store) for s in bench_stages()}
    for nproc in bench_nprocs():
        for name in stages.MATRICES["fsdp"]:
            stage = stages.resolve(name)
            classes[_class_name(stage, nproc)] = _make_class(stage, package, store, nproc)
    return classes


def main(argv: list[str] | None = None) -> int:
    """Check the suite's configuration the way asv will import it, before `asv run`."""
    root = Path(argv[0]) if argv else Path.cwd()
    try:
        workload = bench_workload()
        classes = stage_benchmarks("benchmarks.stages", root)
        store = store_path(root)
    except SuiteConfigError as exc:
        print(f"stagebench: error: {exc}", file=sys.stderr)
        return 2
    print(
        f"stagebench asv suite: {len(classes)} classes; workload "
        f"{json.dumps(workload.to_dict(), sort_keys=True)}; store {store}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
