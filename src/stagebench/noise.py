"""A stage's run-to-run noise and its minimal detectable effect (MDE), kept with the history.

A nightly compares one process with another, so the noise that matters is the spread between
separate processes' medians, not the spread of steps within one: each process brings its own
autotuning choices, allocator state and clocks, and the confidence interval of one run's median
says nothing about the next process. `measure` runs each stage in `runs` separate processes,
interleaved round by round (a drift of the machine touches every stage alike), and keeps, per
stage and per family-lead metric, the runs' values, their spread on a log scale and

    MDE95 = 1.96 * sqrt(2) * sigma

the smallest difference between two single nightly runs that is significant at 95% (two-sided).
The step-time floor (each process's 10th percentile step, stats.step_floor) has a record of its
own: where a slow host mode comes more often in some processes than in others (the Liger stages
on an H100), the medians spread by several percent while the floors agree to about 1%.
The records live in asv's results directory (`stagebench-noise.jsonl`, one line per stage and
measurement), so the nightly's results branch keeps them beside the numbers they qualify; the
judge reads them as each stage's own threshold (judge.Prior).

Reading is standard library only: the history side runs without torch.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import os
import re
import statistics
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stagebench import PROTOCOL_VERSION, judge
from stagebench.metrics import METRICS, family_of
from stagebench.results import WITHIN_RUN_CI_FAMILIES

LOG_NAME = "stagebench-noise.jsonl"
Z975 = 1.959964
MIN_RUNS = 3  # fewer, and a spread means nothing; 5 or more are asked for
# The family leads: the metrics every other tracked metric is computed from. A record without
# one (step_floor_ms is newer than the first records) gives that family no prior: the judge
# falls back to the history's own noise and the 1% minimum effect there.
NOISE_METRICS = ("step_time_ms", "step_floor_ms", "first_step_s", "peak_reserved_gib")


@dataclass(frozen=True)
class MetricNoise:
    values: list[float]  # one per process, in run order
    sigma_pct: float  # one run's standard deviation on a log scale, as % of the level
    df: int  # degrees of freedom of that estimate (runs - 1)
    mde_pct: float  # two single nightly runs, 95% two-sided
    within_ci_pct: float | None = None  # mean of the runs' own CI half-widths (step time)

    def __post_init__(self) -> None:
        # Records are read back from a file people can edit: a value of the wrong type or an
        # impossible one makes the record unreadable here, never a crash in a reader later.
        values = self.values
        if not isinstance(values, list) or not values or not all(map(_positive, values)):
            raise ValueError(f"values {values!r} are not a list of positive numbers")
        if not _number(self.sigma_pct) or not self.sigma_pct >= 0:
            raise ValueError(f"sigma_pct {self.sigma_pct!r} is not a number >= 0")
        try:
            mde_pct(self.sigma_pct)  # the judge takes the MDE from sigma: it must exist
        except OverflowError:
            raise ValueError(f"sigma_pct {self.sigma_pct!r} is too large to judge by") from None
        if not isinstance(self.df, int) or isinstance(self.df, bool) or self.df < 1:
            raise ValueError(f"df {self.df!r} is not a whole number >= 1")
        if self.df >= len(values):  # runs - 1 at most: a larger one is a hand edit
            raise ValueError(f"df {self.df!r} is more than {len(values)} values give")
        if not _number(self.mde_pct):
            raise ValueError(f"mde_pct {self.mde_pct!r} is not a number")
        if self.within_ci_pct is not None and not _number(self.within_ci_pct):
            raise ValueError(f"within_ci_pct {self.within_ci_pct!r} is not a number")

    @property
    def sigma_log(self) -> float:
        return math.log1p(self.sigma_pct / 100)


@dataclass(frozen=True)
class StageNoise:
    machine: str
    stage: str
    asv_class: str  # stages.Stage_... : what the judge's series are named by
    spec: str
    shape: str  # the workload's shape name: another shape is another series
    protocol: int
    runs: int  # processes that ran ok
    metrics: dict[str, MetricNoise]
    date: str = ""
    commit: str | None = None
    packages: dict[str, str] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)  # statuses of the runs that were not ok
    # The asv version of the class under the measured workload (spec, ranks, a model, shape or
    # collector setting that is not the default, protocol): the series it qualifies. "" in older
    # records, which were all measured on the default model and collector.
    version: str = ""

    def __post_init__(self) -> None:
        for name in ("machine", "stage", "asv_class", "spec", "shape", "date", "version"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} {getattr(self, name)!r} is not a string")
        for name in ("protocol", "runs"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{name} {value!r} is not a whole number")
        if not isinstance(self.metrics, dict) or not all(
            isinstance(k, str) and isinstance(v, MetricNoise) for k, v in self.metrics.items()
        ):
            raise ValueError("metrics is not an object of metric records")
        if self.commit is not None and not isinstance(self.commit, str):
            raise ValueError(f"commit {self.commit!r} is not a string")
        if not isinstance(self.packages, dict):
            raise ValueError(f"packages {self.packages!r} is not an object")
        if not isinstance(self.failed, list) or not all(isinstance(f, str) for f in self.failed):
            raise ValueError(f"failed {self.failed!r} is not a list of strings")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StageNoise:
        if not isinstance(data, dict):
            raise ValueError(f"a noise record is a JSON object, not {type(data).__name__}")
        fields = dict(data)
        metrics = data.get("metrics")
        if not isinstance(metrics, dict) or not all(isinstance(v, dict) for v in metrics.values()):
            raise ValueError("metrics is not an object of metric records")
        fields["metrics"] = {k: MetricNoise(**v) for k, v in metrics.items()}
        return cls(**fields)


def _number(value: object) -> bool:
    """A finite real number (JSON's true and false are not numbers here)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _positive(value: object) -> bool:
    return _number(value) and value > 0


def mde_pct(sigma_pct: float) -> float:
    """Two single runs, 95% two-sided, on the log scale the values are judged on."""
    return 100 * math.expm1(Z975 * math.sqrt(2) * math.log1p(sigma_pct / 100))


def metric_noise(values: list[float], within: list[float] | None = None) -> MetricNoise | None:
    """The spread of per-process values; None when fewer than MIN_RUNS are positive."""
    kept = [v for v in values if _positive(v)]
    if len(kept) < MIN_RUNS:
        return None
    sigma = statistics.stdev(math.log(v) for v in kept)
    sigma_pct = 100 * math.expm1(sigma)
    cis = [c for c in within or [] if c is not None]
    return MetricNoise(
        values=[round(v, 6) for v in kept],
        sigma_pct=sigma_pct,
        df=len(kept) - 1,
        mde_pct=mde_pct(sigma_pct),
        within_ci_pct=statistics.fmean(cis) if cis else None,
    )


def summarize(results: Iterable[Any], machine: str) -> list[StageNoise]:
    """One record per stage from its Results (one per process), in first-seen order, dated by
    the newest start of the stage's runs (else now): a later summary of the same processes
    (`--from`) has the same date and wins by log order."""
    from stagebench.workload import Workload, shape_name

    by_stage: dict[str, list[Any]] = {}
    for result in results:
        by_stage.setdefault(result.stage, []).append(result)
    records = []
    for stage, runs in by_stage.items():
        ok = [r for r in runs if r.status == "ok" and r.metrics is not None]
        metrics: dict[str, MetricNoise] = {}
        for name in NOISE_METRICS:
            key = METRICS[name].key
            family = METRICS[name].family
            measured = ok
            if family == "first_step" and ok and ok[0] is runs[0]:
                # Round 1 may compile into an empty cache (a fresh machine): a cold compile is
                # a night of its own, not a warm night's noise (seen: sigma 241% with it, on an
                # H100). The first step's spread comes from the later rounds; a round 1 that
                # failed left no value to leave out.
                measured = ok[1:]
            values = [getattr(r.metrics, key) for r in measured]
            within = None
            if family in WITHIN_RUN_CI_FAMILIES:  # the runs' own CIs of the median, the floor
                within = [r.metrics.ci95_pct_of(family) for r in measured]
            noise = metric_noise(values, within)
            if noise is not None:
                metrics[name] = noise
        first = runs[0]
        asv_class, version = _asv_series(first)
        records.append(
            StageNoise(
                machine=machine,
                stage=stage,
                asv_class=asv_class,
                spec=first.spec,
                shape=shape_name(Workload.from_dict(first.workload)),
                protocol=PROTOCOL_VERSION,
                runs=len(ok),
                metrics=metrics,
                date=_newest_start(runs),
                commit=_commit(first),
                packages=_packages(ok[0] if ok else first),
                failed=[f"{r.status}: {r.reason}" for r in runs if r not in ok],
                version=version,
            )
        )
    return records


def machine_of(result: Any) -> str | None:
    """The asv machine name of the GPU machine a stored Result ran on (machine.name's rule, so
    STAGEBENCH_ASV_MACHINE wins as it does for the history); None where its environment names
    no GPU and nothing overrides: a CPU's name needs facts a Result does not keep. A GPU name or
    count that makes no name raises ValueError: a made-up `-x1` would file the runs elsewhere."""
    from stagebench import machine

    if os.environ.get("STAGEBENCH_ASV_MACHINE", "").strip():
        return machine.name({})  # the override, checked there
    env = result.env if isinstance(result.env, dict) else {}
    gpu, count = env.get("gpu"), env.get("gpu_count")
    if gpu is None:
        return None
    if not isinstance(gpu, str) or not re.search(r"[A-Za-z0-9]", gpu):
        raise ValueError(f"its GPU {gpu!r} makes no machine name")
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ValueError(f"its GPU count {count!r} is not a whole number of GPUs")
    return machine.name({"gpu": gpu, "gpu_count": count})


def _utc(text: object) -> dt.datetime | None:
    """An ISO time in UTC (one without a zone is taken as UTC, as stagebench writes them);
    None where it is none, or out of range once moved to UTC (a hand edit)."""
    try:
        when = dt.datetime.fromisoformat(text)  # type: ignore[arg-type]
        return when.astimezone(dt.UTC) if when.tzinfo else when.replace(tzinfo=dt.UTC)
    except (TypeError, ValueError, OverflowError):
        return None


def _started(result: Any) -> dt.datetime | None:
    """When a stored run started, in UTC; None where its `started_at` is unreadable (then its
    measurement cannot be dated)."""
    return _utc(result.started_at)


def _newest_start(runs: list[Any]) -> str:
    dates = [d for d in map(_started, runs) if d is not None]
    newest = max(dates) if dates else dt.datetime.now(dt.UTC)
    return newest.isoformat(timespec="seconds")


def _commit(result: Any) -> str | None:
    commit = result.env.get("commit") if isinstance(result.env, dict) else None
    return commit if isinstance(commit, str) else None


def _packages(result: Any) -> dict[str, str]:
    env = result.env if isinstance(result.env, dict) else {}
    packages = env.get("packages")
    return dict(packages) if isinstance(packages, dict) else {}


def gpu_of(result: Any) -> tuple[object, object] | None:
    """(GPU name, GPU count) a stored Result's environment names; None where it names no GPU."""
    env = result.env if isinstance(result.env, dict) else {}
    return (env.get("gpu"), env.get("gpu_count")) if env.get("gpu") else None


def series_of(result: Any) -> tuple[str | None, str, str]:
    """(asv machine, asv class, asv version) a stored Result was measured for; the machine is
    None where it names no GPU (machine_of). ValueError where it cannot be placed: a stage
    unknown now, a stage id that means another spec now, a GPU that makes no machine name."""
    from stagebench import stages

    stage = stages.resolve(result.stage)
    if result.spec != stage.spec:
        raise ValueError(f"ran {result.spec!r}; {result.stage} is {stage.spec!r} now")
    return machine_of(result), *_asv_series(result)


def _asv_series(result: Any) -> tuple[str, str]:
    """(asv class, asv version) of a stored Result: the series its numbers belong to."""
    from stagebench.asv_suite import class_name_of, version_of

    return f"stages.{class_name_of(result)}", version_of(result)


def _measurement(result: Any) -> tuple[Any, ...]:
    """What one measurement shares: the GPU, code and packages it ran (runs of another commit
    or release are another measurement, whose level would pass for noise here; so are another
    GPU's, which the machine override would file under one name)."""
    packages = tuple(sorted((str(k), str(v)) for k, v in _packages(result).items()))
    return str(gpu_of(result)), _commit(result), packages


def resummarize(results: Iterable[Any]) -> tuple[list[StageNoise], list[str]]:
    """Records from Results already stored (`stagebench noise --from`): one per machine, asv
    series, commit and package set, from at least MIN_RUNS ok processes, dated by the newest
    run. Only the summary is new: a record made by a newer stagebench (the floor's, say) from
    the same processes. A Result stored twice counts once. Returns the records and, for each
    group that could not make one, why; a Result that cannot be placed raises ValueError."""
    groups: dict[tuple[Any, ...], list[Any]] = {}
    seen: set[str] = set()
    skipped: list[str] = []
    for result in results:
        line = json.dumps(result.to_dict(), sort_keys=True)
        if line in seen:
            continue
        seen.add(line)
        where = f"a {result.stage} Result of {result.started_at or 'no start time'}"
        try:
            series = series_of(result)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        if series[0] is None:
            raise ValueError(
                f"{where} names no GPU machine; set STAGEBENCH_ASV_MACHINE to the name of the "
                "machine it ran on"
            )
        groups.setdefault((*series, *_measurement(result)), []).append(result)
    records = []
    for (machine, *_), runs in groups.items():
        stage = runs[0].stage
        ok = sum(r.status == "ok" and r.metrics is not None for r in runs)
        if ok < MIN_RUNS:
            skipped.append(f"{stage} on {machine}: {ok} ok run(s), at least {MIN_RUNS} needed")
        elif any(_started(r) is None for r in runs):
            skipped.append(f"{stage} on {machine}: a run has no readable start time to date it")
        else:
            records += summarize(runs, machine)
    return records, skipped


def append(results_dir: Path, records: Iterable[StageNoise]) -> Path:
    """Append records to the results directory's noise log through the Result store's append
    (checked writes, fsync, no torn line on a full disk)."""
    from stagebench.results import append_line

    path = Path(results_dir) / LOG_NAME
    for record in records:
        append_line(path, json.dumps(record.to_dict(), sort_keys=True))
    return path


def load(results_dir: Path) -> list[StageNoise]:
    """Every readable record of a results directory's noise log, oldest first."""
    return load_file(Path(results_dir) / LOG_NAME)


def load_file(path: Path) -> list[StageNoise]:
    """Every readable record, oldest first; an unreadable line is skipped with a warning."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:  # a directory where the log should be, no permission ...
        warnings.warn(f"{path}: skipped unreadable noise records ({exc})", stacklevel=2)
        return []
    records = []
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(StageNoise.from_dict(json.loads(line.decode("utf-8-sig"))))
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
            warnings.warn(f"{path}:{number}: skipped unreadable noise record ({exc})", stacklevel=2)
    return records


def versions(results_dir: Path) -> dict[str, str]:
    """{asv class: its benchmark version} from asv's benchmarks.json in `results_dir`: what the
    history's series are now. Empty where there is no readable one (then nothing is filtered)."""
    try:
        data = json.loads((Path(results_dir) / "benchmarks.json").read_text())
    except (OSError, ValueError):
        return {}
    found: dict[str, str] = {}
    for name, entry in data.items() if isinstance(data, dict) else ():
        if isinstance(entry, dict) and isinstance(entry.get("version"), str) and "." in name:
            found.setdefault(name.rsplit(".", 1)[0], entry["version"])
    return found


def _measured_at(record: StageNoise) -> dt.datetime:
    """A record's date in UTC; an unreadable one counts as oldest (a hand edit, not news)."""
    return _utc(record.date) or dt.datetime.min.replace(tzinfo=dt.UTC)


def priors(
    records: Iterable[StageNoise], machine: str, current: dict[str, str] | None = None
) -> dict[tuple[str, str], judge.Prior]:
    """{(asv class, family): its prior} for `machine` under this protocol (see _prior: the newest
    record's noise, or the pool of that stack's records where its bar is higher). Each family
    takes its lead's noise: TFLOPS, tokens/s and both MFUs are computed from the median step
    time, so their log-scale spread is the step time's; the floor (step_floor_ms) is a family of
    its own, with its own spread. `current`: {asv class: benchmark
    version} of the history judged (see versions()); a record measured for another version of
    its class (another shape: `noise --workload b2x1024` beside a b1x2048 history) is not that
    series' noise and is left out."""
    from stagebench.asv_suite import is_default_series

    found: dict[tuple[str, str], list[tuple[StageNoise, MetricNoise]]] = {}
    # By date, not by place in the log: `noise --from` may append a summary of older processes
    # after a newer measurement. The log's order breaks ties.
    for record in sorted(records, key=_measured_at):
        if record.machine != machine or record.protocol != PROTOCOL_VERSION:
            continue
        now = (current or {}).get(record.asv_class)
        if record.version and now is not None and now != record.version:
            continue
        if not record.version and now is not None and not is_default_series(now):
            continue  # an older record was measured on the default model and collector only
        for name, noise in record.metrics.items():
            if noise.df < 1 or not math.isfinite(noise.sigma_pct) or noise.sigma_pct < 0:
                continue  # a hand-edited or truncated record: no threshold from it
            found.setdefault((record.asv_class, family_of(name)), []).append((record, noise))
    return {key: _prior(measured) for key, measured in found.items()}


def _prior(measured: list[tuple[StageNoise, MetricNoise]]) -> judge.Prior:
    """A series' prior from its measurements, oldest first: the newest one's noise, or, where
    its bar for two single runs is higher, the pool of every measurement of the same stack
    (package set, stagebench's version string included, and series version), each weighted by
    its degrees of freedom. Five processes know a sigma only to a factor of 0.6-2.9, so one
    lucky quiet measurement never sets the bar alone, and a noisier newest one is never
    outvoted. The judge then weighs the chosen prior against the history's own noise as ever."""
    newest, lead = measured[-1]
    alone = _as_prior([(newest, lead)])
    pool: list[tuple[StageNoise, MetricNoise]] = []
    for record, noise in measured:
        if (record.packages, record.version) != (newest.packages, newest.version):
            continue
        if _utc(record.date) is None:
            continue  # an unreadable date is a hand edit, not a measurement to pool
        # The same processes summarized again (by `noise --from`, maybe by newer code): once.
        pool = [kept for kept in pool if not _same_processes(kept[0], record)] + [(record, noise)]
    pooled = _as_prior(pool) if len(pool) > 1 else None
    if pooled is None or _bar(pooled) <= _bar(alone):
        return alone
    return pooled


def _same_processes(a: StageNoise, b: StageNoise) -> bool:
    """Two records of the same processes: dated alike (by their newest start), or with the same
    per-process step times. A summary of some of them only is not recognised."""
    if a.date == b.date:
        return True
    sa, sb = a.metrics.get("step_time_ms"), b.metrics.get("step_time_ms")
    return sa is not None and sb is not None and sorted(sa.values) == sorted(sb.values)


def _as_prior(pool: list[tuple[StageNoise, MetricNoise]]) -> judge.Prior:
    df = sum(noise.df for _, noise in pool)
    variance = math.fsum(float(noise.df) * noise.sigma_log**2 for _, noise in pool) / float(df)
    runs = sum(record.runs for record, _ in pool)
    days = sorted({record.date[:10] or "an earlier day" for record, _ in pool})
    when = days[0] if len(days) == 1 else f"{days[0]} to {days[-1]}"
    return judge.Prior(sigma=math.sqrt(variance), df=df, source=f"{runs} separate runs of {when}")


def _bar(prior: judge.Prior) -> float:
    """What the judge asks of two single runs under this prior (its Student t, one-sided 99%)."""
    return judge.t_quantile(prior.df) * prior.sigma


def measure(
    stage_list: list[Any],
    workload: Any,
    runs: int,
    *,
    store: Path | None = None,
    log_dir: Path | None = None,
    on_result: Any = None,
    on_store_error: Any = None,
) -> list[Any]:
    """Run every stage `runs` times, each run its own process, round by round; every Result
    goes to `store` as it ends (run_matrix's guarantees). Returns the Results.

    One cancellation spans every round: a SIGTERM or SIGINT, even between two rounds, stores the
    stage it stopped, starts no further run and raises isolate.Cancelled once the rounds end."""
    from stagebench.isolate import cancellation
    from stagebench.matrix import run_matrix

    done = []
    with cancellation() as cancel:
        for _ in range(runs):
            if cancel.signum:
                break
            done += run_matrix(
                stage_list,
                workload,
                store=store,
                log_dir=log_dir,
                on_result=on_result,
                on_store_error=on_store_error,
            )
    return done


def table_rows(records: Iterable[StageNoise]) -> list[list[str]]:
    """For people: stage, runs, step-time spread and MDE, within-run CI, the floor's spread and
    MDE, first step, memory."""

    def pct(noise: MetricNoise | None, attr: str) -> str:
        value = None if noise is None else getattr(noise, attr)
        return "-" if value is None else f"{value:.2f}%"

    rows = []
    for r in records:
        step = r.metrics.get("step_time_ms")
        first = r.metrics.get("first_step_s")
        floor = r.metrics.get("step_floor_ms")  # absent from records before the floor
        memory = r.metrics.get("peak_reserved_gib")
        median = "-" if step is None else f"{statistics.median(step.values):.1f}"
        rows.append(
            [
                r.stage,
                str(r.runs) + (f" (+{len(r.failed)} failed)" if r.failed else ""),
                median,
                pct(step, "sigma_pct"),
                pct(step, "mde_pct"),
                pct(step, "within_ci_pct"),
                pct(floor, "sigma_pct"),
                pct(floor, "mde_pct"),
                pct(first, "sigma_pct"),
                pct(memory, "sigma_pct"),
            ]
        )
    return rows


TABLE_HEADER = [
    "stage",
    "runs",
    "step ms (median)",
    "run-to-run sigma",
    "MDE95",
    "within-run CI",
    "floor sigma",
    "floor MDE95",
    "first step sigma",
    "memory sigma",
]
