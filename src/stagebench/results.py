"""The one Result schema every consumer reads, and its JSON Lines store.

Each Result is appended as one line and flushed to disk as soon as its stage ends, so an
interrupted matrix keeps every finished row. A torn last line (a writer killed mid-write) is
skipped with a warning when read, and the next append starts on a fresh line. An append that
fails (a full disk) takes back what it wrote and raises StoreError: it never leaves a torn line.
One unreadable line (not UTF-8, not JSON, not a Result) is skipped with a warning naming
path:line; it never hides the other rows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import math
import os
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stagebench import stats
from stagebench.workload import Workload

# A new status is additive: older readers skip such a line with a warning and read the rest, so
# `cancelled` did not bump the schema.
# 2: Metrics.distributed (FSDP2 runs), alloc_retries. 3: Metrics.compile (graph breaks,
# recompiles, frames run eagerly). 4: Metrics.samples (every step's time) and Metrics.profile
# (where the time goes). 5: Workload.host_gc (the collector in the measured steps). Older lines
# still load: they lack only the new fields.
SCHEMA_VERSION = 5
READABLE_VERSIONS = (1, 2, 3, 4, 5)
SAMPLE_DECIMALS = 4  # ms: 0.1 us, below a CUDA event's resolution; keeps a 60-step line small
BOM = "\ufeff".encode()
STORE_NAME = "stagebench-results.jsonl"  # the store asv's suite keeps inside its results

STATUSES: dict[str, str] = {
    "ok": "ran and was measured",
    "oom": "ran out of device memory",
    "compile_error": "torch.compile / inductor failed",
    "unavailable": "a package or hardware it needs is missing here",
    "timeout": "did not finish within the stage timeout",
    "crashed": "the child process died (signal or exit code) without a result",
    "error": "an exception other than the above",
    "numerics_mismatch": "step-0 loss differs from the reference stage beyond tolerance",
    "cancelled": "the run was cancelled (SIGTERM, SIGINT) before the stage finished",
}
# The metric families whose value has a 95% CI from the run's own steps (Metrics.ci95_pct_of).
WITHIN_RUN_CI_FAMILIES = ("speed", "floor")
# Statuses that are a finding about the stage rather than a failure of the run itself.
NOT_FAILED = ("ok", "unavailable")


@dataclass
class DistributedMetrics:
    """What a multi-process (FSDP2) run adds; per-rank lists are in rank order."""

    nproc: int
    backend: str  # nccl or gloo
    sharding: str
    tokens_per_s_per_gpu: float
    step_time_ms_median_per_rank: list[float]
    peak_allocated_gib_per_rank: list[float] | None
    peak_reserved_gib_per_rank: list[float] | None
    comm_busy_pct: float | None  # share of the step with a collective running, mean over ranks;
    # None where the profile failed (schema 4; comm_source says why)
    comm_exposed_pct: float | None  # ... with a collective and no compute (GPU profiles only)
    comm_source: str


@dataclass
class CompileMetrics:
    """What torch.compile did in a compiling stage: dynamo's counters, reset as the stage
    started and read after its timed steps. Counts are per compilation, not per call (one graph
    serves every decoder layer it fits)."""

    graphs: int  # FX graphs dynamo captured and handed to the backend
    graph_breaks: int  # times tracing split a frame and ran the rest around it eagerly
    recompiles: int | None  # compilations of a frame a guard failure sent back; None: unknown
    eager_frames: int  # frames dynamo gave up compiling (e.g. the recompile limit): eager
    break_reasons: dict[str, int] = field(default_factory=dict)  # most frequent, first line
    eager_reasons: dict[str, str] = field(default_factory=dict)  # frame -> why it ran eagerly

    @property
    def fell_back(self) -> bool:
        """Some of the model ran uncompiled: the stage is ok, but not all of it is compiled."""
        return self.graph_breaks > 0 or self.eager_frames > 0

    def summary(self) -> str:
        """One line for people: what fell back and why."""
        parts = [f"{self.graph_breaks} graph break(s)"]
        if self.break_reasons:
            reasons = "; ".join(f"{n}x {why}" for why, n in self.break_reasons.items())
            parts[0] += f" ({reasons})"
        parts.append(f"{self.eager_frames} frame(s) run eagerly")
        if self.eager_reasons:
            frames = "; ".join(f"{frame}: {why}" for frame, why in self.eager_reasons.items())
            parts[-1] += f" ({frames})"
        recompiles = "unknown" if self.recompiles is None else str(self.recompiles)
        parts.append(f"{recompiles} recompile(s), {self.graphs} graph(s)")
        return ", ".join(parts)


@dataclass
class Samples:
    """Every step's time in ms, in order, rounded to SAMPLE_DECIMALS: enough to recompute the
    statistics from the Result alone. Under torchrun each step's time is the slowest rank's.
    Step 0 is `Metrics.first_step_s` (wall time, compile and all), not repeated here."""

    warmup_ms: list[float]  # steps 1 .. warmup_steps - 1: timed, never summarized
    measured_ms: list[float]  # the steps the median, IQR, min, max and CI come from


@dataclass
class GroupTime:
    ms_per_step: float
    pct_of_busy: float  # on a GPU the groups can add up past 100% where streams overlap


@dataclass
class KernelTime:
    name: str  # shortened: no `void`, namespaces or argument list
    group: str
    calls_per_step: float
    ms_per_step: float


@dataclass
class StepTime:
    """One profiled step: its wall and device-busy time and ms per kernel group."""

    wall_ms: float
    busy_ms: float
    groups: dict[str, float] = field(default_factory=dict)


@dataclass
class ProfileMetrics:
    """Where the time of a few steps after the timed ones went (profile.py).

    source says what a "kernel" is: CUDA kernels, memcpys and memsets on the device timeline, or
    on a CPU every aten op's self time (the time in it outside the ops it called). Busy is the
    union of kernel intervals (GPU) or the sum of op self times (CPU); the host gap is the wall
    time minus busy: the device idle between kernels (launch overhead, Python, syncs)."""

    source: str
    steps: int
    wall_ms_per_step: float
    busy_ms_per_step: float
    host_gap_ms_per_step: float
    groups: dict[str, GroupTime]  # every group seen (the store sorts keys: order by time)
    kernels: list[KernelTime]  # the largest, by time per step
    kernels_seen: int  # distinct (name, group) pairs; those not listed are in rest_ms_per_step
    rest_ms_per_step: float
    memory_gib: dict[str, float] = field(default_factory=dict)  # by category, see profile.py
    cost_s: float = 0.0  # what profiling added to the stage's wall time: steps, parse, reduce
    # Each profiled step on its own (wall, busy and ms per group): fast and slow steps of one
    # run told apart kernel by kernel group. Every profiled step ends synchronised, so its
    # device work lies inside it.
    per_step: list[StepTime] = field(default_factory=list)

    def summary(self, top: int = 3) -> str:
        """One line for people: the largest groups' shares of the busy time, and the host gap's
        of the wall time."""
        largest = sorted(self.groups.items(), key=lambda item: -item[1].ms_per_step)[:top]
        shares = ", ".join(f"{g} {t.pct_of_busy:.0f}%" for g, t in largest)
        gap = (
            100.0 * self.host_gap_ms_per_step / self.wall_ms_per_step
            if self.wall_ms_per_step
            else 0
        )
        return f"{shares or 'no kernels'}; host gap {gap:.0f}% of the step"


@dataclass
class Metrics:
    """Everything the runner measured; every number carries its unit in its name."""

    measured_steps: int
    warmup_steps: int
    step_time_ms_median: float
    step_time_ms_iqr: float
    step_time_ms_min: float
    step_time_ms_max: float
    step_time_ci95_pct: float | None  # half-width of the median's 95% CI, % of the median
    tokens_per_step: int
    tokens_per_s: float
    flops_per_token: float
    tflops: float
    mfu_pct: float | None
    mfu_reason: str | None  # why mfu_pct is None, or where the peak came from
    seed_flops_per_token: float
    seed_tflops: float
    seed_mfu_pct: float | None  # None off CUDA: 989 TFLOPS is an H100's peak
    seed_peak_window_mfu_pct: float | None  # the seed's own statistic: best 10-step window
    first_step_s: float  # step 0 alone: compile / autotune / cuDNN plan cost shows here
    model_init_s: float
    loss_first: float
    loss_last: float
    grad_norm_first: float
    peak_allocated_gib: float | None
    peak_reserved_gib: float | None
    n_params: int
    attention_impl: str  # what really ran, as the model reports it
    notes: dict[str, str] = field(default_factory=dict)  # optimization facts (kernel source ...)
    # Multi-process runs: tokens_per_step and tokens_per_s are for all ranks together; tflops and
    # the MFUs are per GPU; step times are the slowest rank's; memory is the largest rank's.
    distributed: DistributedMetrics | None = None
    alloc_retries: int | None = None  # the CUDA caching allocator's retries (most of any rank)
    compile: CompileMetrics | None = None  # compiling stages only (schema 3)
    samples: Samples | None = None  # every step's time (schema 4)
    profile: ProfileMetrics | None = None  # where the time goes (schema 4); None: off or failed

    # Flat names for the compile counts: the metric table reads Metrics attributes.
    @property
    def graph_breaks(self) -> int | None:
        return None if self.compile is None else self.compile.graph_breaks

    @property
    def recompiles(self) -> int | None:
        return None if self.compile is None else self.compile.recompiles

    # The floor of the measured steps (stats.step_floor): derived from the stored samples, never
    # stored itself, so it needed no schema bump; None before schema 4 (no samples).
    @property
    def step_time_ms_floor(self) -> float | None:
        if self.samples is None or not self.samples.measured_ms:
            return None
        return stats.step_floor(self.samples.measured_ms)

    def ci95_pct_of(self, family: str) -> float | None:
        """The run's own 95% CI half-width (%) of the value a family is measured from: the
        median for speed, the floor for the floor (WITHIN_RUN_CI_FAMILIES); None for the others
        (one value per run, or deterministic) and where there are too few steps."""
        if family == "speed":
            return self.step_time_ci95_pct
        if family == "floor" and self.samples is not None:
            return stats.floor_ci95_pct(self.samples.measured_ms)
        return None


def summary_from_samples(metrics: Metrics) -> stats.Summary | None:
    """The step-time statistics recomputed from the Result's own samples (None before schema
    4): the same function the runner used, on the same (rounded) numbers."""
    if metrics.samples is None or not metrics.samples.measured_ms:
        return None
    return stats.summarize(metrics.samples.measured_ms)


def metric_value(metrics: dict[str, Any], key: str) -> Any:
    """A metric's value from a Result's metrics as JSON (what asv's setup_cache hands over);
    None where it was not measured, e.g. compile counts of a stage that compiles nothing."""
    if key in ("graph_breaks", "recompiles"):
        return (metrics.get("compile") or {}).get(key)
    if key == "step_time_ms_floor":  # a Metrics property: computed from the samples, as there
        measured = (metrics.get("samples") or {}).get("measured_ms")
        return stats.step_floor(measured) if measured else None
    return metrics[key]


@dataclass
class Result:
    stage: str
    spec: str
    status: str
    reason: str | None
    model: str
    workload: dict[str, Any]
    metrics: Metrics | None = None
    env: dict[str, Any] = field(default_factory=dict)
    started_at: str = ""
    wall_time_s: float | None = None
    log_tail: str | None = None
    numerics: str | None = None  # how step-0 loss compared with the reference
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown status {self.status!r}; valid: {', '.join(STATUSES)}")

    @property
    def failed(self) -> bool:
        return self.status not in NOT_FAILED

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Result:
        if not isinstance(data, dict):
            raise ValueError(f"a result is a JSON object, not {type(data).__name__}")
        if data.get("schema_version") not in READABLE_VERSIONS:
            raise ValueError(
                f"result schema {data.get('schema_version')!r} is not one of {READABLE_VERSIONS}"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown result fields: {', '.join(sorted(unknown))}")
        fields = dict(data)
        # Consumers rebuild the Workload (the reference lookup does): a bad one is refused here.
        # {} is "not known" (a rank that died without a word), never a reference.
        if fields.get("workload") != {}:
            Workload.from_dict(fields.get("workload"), complete=True)
        if fields.get("metrics") is not None:
            metrics = _object(fields["metrics"], "metrics")
            if metrics.get("distributed") is not None:
                distributed = _object(metrics["distributed"], "metrics.distributed")
                metrics["distributed"] = _typed(
                    DistributedMetrics(**distributed), "metrics.distributed"
                )
            if metrics.get("compile") is not None:
                compiled = CompileMetrics(**_object(metrics["compile"], "metrics.compile"))
                metrics["compile"] = _typed(compiled, "metrics.compile")
            if metrics.get("samples") is not None:
                samples = Samples(**_object(metrics["samples"], "metrics.samples"))
                metrics["samples"] = _typed(samples, "metrics.samples")
                # The floor and every statistic are recomputed from them: a step time that is
                # not a finite positive number is a damaged line, not a measurement.
                if not all(math.isfinite(v) and v > 0 for v in samples.measured_ms):
                    raise ValueError("metrics.samples.measured_ms holds a step time that is not "
                                     "a finite positive number")  # fmt: skip
            if metrics.get("profile") is not None:
                metrics["profile"] = _profile(_object(metrics["profile"], "metrics.profile"))
            fields["metrics"] = _typed(Metrics(**metrics), "metrics")
        fields["schema_version"] = SCHEMA_VERSION  # read: upgraded (older lack only new fields)
        return _typed(cls(**fields), "result")


def _profile(data: dict[str, Any]) -> ProfileMetrics:
    groups = _object(data.get("groups"), "metrics.profile.groups")
    data["groups"] = {
        name: GroupTime(**_object(g, f"metrics.profile.groups.{name}"))
        for name, g in groups.items()
    }
    kernels = data.get("kernels")
    if not isinstance(kernels, list):
        raise ValueError(f"metrics.profile.kernels is a JSON array, not {type(kernels).__name__}")
    data["kernels"] = [KernelTime(**_object(k, "metrics.profile.kernels[]")) for k in kernels]
    steps = data.get("per_step", [])
    if not isinstance(steps, list):
        raise ValueError(f"metrics.profile.per_step is a JSON array, not {type(steps).__name__}")
    data["per_step"] = [StepTime(**_object(t, "metrics.profile.per_step[]")) for t in steps]
    for name, group in data["groups"].items():
        _typed(group, f"metrics.profile.groups.{name}")
    for kernel in data["kernels"]:
        _typed(kernel, "metrics.profile.kernels[]")
    for step in data["per_step"]:
        _typed(step, "metrics.profile.per_step[]")
    return _typed(ProfileMetrics(**data), "metrics.profile")


def _typed(obj: Any, name: str) -> Any:
    """`obj`, a dataclass read from JSON, with every field of the type its annotation says (a
    number where a float is, no true/false for a number, lists and objects of those): a line
    that holds anything else is unreadable here, not a crash of whichever reader meets it."""
    for f, hint in typing.get_type_hints(type(obj)).items():
        value = getattr(obj, f)
        if not _conforms(value, hint):
            shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:39] + "…"
            raise ValueError(f"{name}.{f} is {shown}, not {_hint_name(hint)}")
    return obj


def _conforms(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if origin in (types.UnionType, typing.Union):
        return any(_conforms(value, a) for a in args)
    if origin is list:
        return isinstance(value, list) and all(_conforms(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(
            _conforms(k, args[0]) and _conforms(v, args[1]) for k, v in value.items()
        )
    if isinstance(value, bool):
        return hint is bool
    if hint is float:
        return isinstance(value, int | float)
    return isinstance(value, hint)


def _hint_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _object(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{name} is a JSON object, not {type(value).__name__}")
    return dict(value)


class StoreError(OSError):
    """A Result could not be appended to the store; the store is left as it was."""

    def __init__(self, path: Path, exc: OSError) -> None:
        self.path = path
        self.reason = exc.strerror or str(exc)
        super().__init__(exc.errno, f"could not store results in {path}: {self.reason}")

    def __str__(self) -> str:
        return self.strerror or ""


def append(path: Path, result: Result) -> None:
    """Append one Result as one line, durably, without ever touching earlier lines."""
    append_line(path, json.dumps(result.to_dict(), sort_keys=True))


def append_line(path: Path, text: str) -> None:
    """Append one line of JSON Lines durably, without ever touching earlier lines.

    Every write is checked (a full disk writes part of a line, then fails); on any failure the
    file is cut back to its size before the append and StoreError is raised.
    """
    line = (text + "\n").encode()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        created = not path.exists()
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    except OSError as exc:
        raise StoreError(path, exc) from exc
    try:
        size = os.fstat(fd).st_size
        written: list[int] = []
        try:
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line  # a torn last line stays torn; ours starts fresh
            _write_all(fd, line, written)
            os.fsync(fd)
            if created:  # the new file's directory entry must survive a crash too
                _fsync_dir(path.parent)
        except OSError as exc:
            _take_back(fd, size, sum(written))
            raise StoreError(path, exc) from exc
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes, written: list[int]) -> None:
    """os.write may take only part (a nearly full disk): write the rest, counting every byte."""
    view = memoryview(data)
    while view:
        count = os.write(fd, view)
        if count <= 0:  # a device that takes nothing is full; don't spin on it
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written.append(count)
        view = view[count:]


def _take_back(fd: int, size: int, written: int) -> None:
    """Cut the file back to `size`, so no torn line of ours is left. Only when the file is what
    we left (no other writer appended since): then nothing but our own bytes can go."""
    with contextlib.suppress(OSError):  # a character device (/dev/full) cannot be cut
        if written and os.fstat(fd).st_size == size + written:
            os.ftruncate(fd, size)
            os.fsync(fd)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load(path: Path) -> list[Result]:
    """Every valid Result in the file; a torn, undecodable or invalid line is skipped with a
    warning naming path:line, so one bad line never hides the others."""
    results: list[Result] = []
    if not path.exists():
        return results
    data = path.read_bytes()
    if data.startswith(BOM):  # editors on some systems add one
        data = data[len(BOM) :]
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            message = f"{path}:{number}: skipped a line that is not UTF-8 ({exc})"
            warnings.warn(message, stacklevel=2)
            continue
        if not line.strip():
            continue
        try:
            results.append(Result.from_dict(json.loads(line)))
        except (ValueError, TypeError, RecursionError) as exc:  # JSONDecodeError is a ValueError
            warnings.warn(f"{path}:{number}: skipped unreadable result ({exc})", stacklevel=2)
    return results
