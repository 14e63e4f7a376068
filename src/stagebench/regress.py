"""Change detection over a metric's history, read from asv's results directory.

The rule, per benchmark, machine and environment, over its points in commit-date order (skipped
or failed runs, NaN or null, are dropped first; a measured metric needs 6 points to be judged):

1. Noise is the metric's own: sigma is the mean of the smallest 80% of |y[i+1] - y[i]|, scaled to
   a Gaussian sigma (a step adds one large difference, which the trim drops). The bars below use
   it widened by (1 + 2 / sqrt(differences)): a short history's estimate is itself unsure.
2. Values are flipped so that worse is up; asv's Potts solver fits a piecewise-constant model with
   a jump penalty of 2 sigma ln(n), and asv's ``detect_regressions`` keeps the upward steps that
   still stand at the latest point (a regression fixed later is not reported).
3. A step counts only when it clears both neighbouring segments' bar: max(1% of the level,
   2 sigma, 4 sigma sqrt(2 / points in the segment)). So nothing under 1% or under twice the
   noise ever alarms, and a step onto one newest point needs about 5.7 sigma.
4. ``track_ok`` is not noisy: a regression is a latest run that failed (0) after one that was ok.

Each regression names the last good commit (end of the segment before the step), the first bad
one (start of the segment after it), the median before and the best level after (asv's
convention: only what persisted). Benchmarks whose better direction is unknown are not judged.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import shlex
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from asv import step_detect, util
from asv.benchmarks import Benchmarks
from asv.results import iter_results_for_machine

from stagebench.asv_suite import METRICS

MIN_POINTS = 6  # fewer, and the noise estimate is too unsure to judge by
MIN_EFFECT = 0.01  # relative: below 1% nothing is a regression, however quiet the metric
NOISE_FLOOR = 2.0  # sigmas: a step must be at least twice the noise of one run
SIGNIFICANCE = 4.0  # sigmas of a segment's median (sigma * sqrt(2 / n)) a step must clear
JUMP_PENALTY = 2.0  # Potts cost of one step, in sigma * ln(n)
UNSURE = 2.0  # widens sigma by (1 + UNSURE / sqrt(differences)) for short histories
KEEP = 0.8  # share of the smallest point-to-point differences the noise is measured on
# |difference| of two N(0, 1) runs, kept below its KEEP quantile, has this mean: sigma's scale.
_Q = statistics.NormalDist().inv_cdf(0.5 + KEEP / 2)
_KEPT_MEAN = math.sqrt(2) * 2 * (statistics.NormalDist().pdf(0) - statistics.NormalDist().pdf(_Q))
_KEPT_MEAN /= KEEP

# Which way is better, by metric (the track_ method without its prefix): the suite's own table.
HIGHER_IS_BETTER = frozenset(m for m, (_, _, better) in METRICS.items() if better == "higher")
LOWER_IS_BETTER = frozenset(m for m, (_, _, better) in METRICS.items() if better == "lower")
OK_METRIC = "ok"
# asv's own benchmark types are all lower-is-better.
LOWER_IS_BETTER_PREFIXES = ("time_", "mem_", "peakmem_")


class RegressError(ValueError):
    """Results that cannot be read as asked: a missing directory, an unknown machine."""


class Point(NamedTuple):
    commit: str
    date: int
    value: float | None


class Source(NamedTuple):
    """One history: asv keeps a machine's environments apart, so do we."""

    machine: str
    env: str


# (machine, env) -> benchmark name -> points in commit-date order
History = dict[Source, dict[str, list[Point]]]


@dataclass(frozen=True)
class Step:
    """A regression inside one series: indices into its non-missing points."""

    last_good: int
    first_bad: int
    before: float
    after: float
    noise: float | None


@dataclass(frozen=True)
class Regression:
    machine: str
    env: str
    benchmark: str
    metric: str
    direction: str  # "drop", "rise" or "ok->failed"
    good: str
    bad: str
    before: float
    after: float
    change_pct: float | None
    noise_pct: float | None

    @property
    def bisect(self) -> str:
        name = self.benchmark.split("(", 1)[0]  # asv selects every parameter of a benchmark
        return f"nox -s bisect -- {self.good} {self.bad} {shlex.quote(name)}"

    def to_dict(self) -> dict[str, object]:
        return {
            "benchmark": self.benchmark,
            "metric": self.metric,
            "direction": self.direction,
            "machine": self.machine,
            "env": self.env,
            "good": self.good,
            "bad": self.bad,
            "before": self.before,
            "after": self.after,
            "change_pct": self.change_pct,
            "noise_pct": self.noise_pct,
            "bisect": self.bisect,
        }


@dataclass
class Report:
    regressions: list[Regression]
    checked: int
    commits: int
    unjudged: list[str] = field(default_factory=list)
    sources: list[Source] = field(default_factory=list)


def metric_of(benchmark: str) -> str:
    """`stages.Stage_00_sdpa.track_mfu(...)` -> `mfu`."""
    method = benchmark.split("(", 1)[0].rsplit(".", 1)[-1]
    return method.removeprefix("track_")


def worse_sign(metric: str) -> int | None:
    """+1 when a rise is bad, -1 when a drop is, None when stagebench does not know."""
    if metric in HIGHER_IS_BETTER or metric == OK_METRIC:
        return -1
    if metric in LOWER_IS_BETTER or metric.startswith(LOWER_IS_BETTER_PREFIXES):
        return 1
    return None


def machines(results_dir: Path) -> list[str]:
    """Machine directories: those asv wrote a machine.json into."""
    return sorted(p.parent.name for p in results_dir.glob("*/machine.json"))


def _current_benchmarks(results_dir: Path) -> dict | None:
    """benchmarks.json, when present: results of an older benchmark version are not comparable."""
    path = results_dir / "benchmarks.json"
    if not path.exists():
        return None
    try:
        return util.load_json(str(path), api_version=Benchmarks.api_version)
    except util.UserError as exc:
        raise RegressError(str(exc)) from None


def load_history(
    results_dir: Path, machine: str | None = None, benchmark: str | None = None
) -> History:
    """Every benchmark's points per (machine, env), in commit-date order, as plain data.

    A parameterized benchmark yields one series per parameter combination, named as asv names
    them: ``name(p1, p2)``. A failed or skipped run is a point whose value is None.
    """
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise RegressError(f"no asv results directory at {results_dir}")
    known = machines(results_dir)
    if not known:
        raise RegressError(f"no asv results in {results_dir} (no <machine>/machine.json)")
    if machine is not None and machine not in known:
        raise RegressError(f"machine {machine!r} has no results in {results_dir}; have: {known}")
    try:
        pattern = re.compile(benchmark) if benchmark else None
    except re.error as exc:
        raise RegressError(f"benchmark pattern {benchmark!r} is not a regex ({exc})") from None
    current = _current_benchmarks(results_dir)

    history: History = {}
    for name in [machine] if machine else known:
        for result in iter_results_for_machine(str(results_dir), name):
            series = history.setdefault(Source(name, result.env_name), {})
            keys = result.get_result_keys(current) if current else result.get_all_result_keys()
            for key in keys:
                params = current[key]["params"] if current else result.get_result_params(key)
                combos = list(itertools.product(*params)) if params else [()]
                values = result.get_result_value(key, params)
                for combo, value in zip(combos, values, strict=True):
                    label = f"{key}({', '.join(combo)})" if combo else key
                    if pattern and not pattern.search(label):
                        continue
                    measured = isinstance(value, int | float) and not util.is_na(value)
                    point = Point(result.commit_hash, result.date, value if measured else None)
                    series.setdefault(label, []).append(point)
    history = {source: series for source, series in history.items() if series}
    for series in history.values():
        for points in series.values():
            points.sort(key=lambda p: (p.date or 0, p.commit))
    if pattern and not history:
        raise RegressError(f"no benchmark matches {benchmark!r}")
    return history


def noise(values: Sequence[float]) -> float:
    """Sigma of one run, from point-to-point differences (a step is one large difference)."""
    diffs = sorted(abs(b - a) for a, b in itertools.pairwise(values))
    if not diffs:
        return 0.0
    kept = diffs[: max(1, int(len(diffs) * KEEP))]
    sigma = statistics.fmean(kept) / _KEPT_MEAN
    if sigma == 0.0:  # mostly identical runs (quantized values): all differences then
        sigma = statistics.fmean(diffs) * math.sqrt(math.pi) / 2
    return sigma


def find_steps(values: Sequence[float], worse: int) -> list[Step]:
    """Regressions in one series of measured values (see the module docstring for the rule)."""
    n = len(values)
    measured_noise = noise(values)
    if n < MIN_POINTS or measured_noise == 0.0:
        return []
    sigma = measured_noise * (1 + UNSURE / math.sqrt(n - 1))
    flipped = [worse * v for v in values]
    # The penalty comes from the noise: asv's automatic one (detect_steps) often reads a clear
    # step in a short history as correlated noise and fits one flat segment.
    rights, levels, dists = step_detect.solve_potts_approx(
        flipped, [1.0] * n, gamma=JUMP_PENALTY * sigma * math.log(n)
    )
    steps = []
    lefts = [0, *rights[:-1]]
    for left, right, level, dist in zip(lefts, rights, levels, dists, strict=True):
        size = right - left
        bar = max(
            abs(dist) / size,  # asv's own error estimate: mean deviation in the segment
            MIN_EFFECT * abs(level),
            NOISE_FLOOR * sigma,
            SIGNIFICANCE * sigma * math.sqrt(2 / size),
        )
        steps.append((left, right, level, min(flipped[left:right]), bar))
    _, _, jumps = step_detect.detect_regressions(steps)  # reads the 5th field as the bar
    return [
        Step(last_good, first_bad, worse * before, worse * after, measured_noise)
        for last_good, first_bad, before, after in jumps or []
        # one run at the very start is no baseline: it may be an outlier nothing followed
        if last_good > 0
    ]


def find_failure(values: Sequence[float]) -> list[Step]:
    """ok -> failed: the latest run failed and an earlier one was ok."""
    if not values or values[-1] >= 0.5:
        return []
    for i in range(len(values) - 1, -1, -1):
        if values[i] >= 0.5:
            return [Step(i, i + 1, values[i], values[i + 1], None)]
    return []  # never worked: nothing to bisect


def _pct(part: float | None, whole: float) -> float | None:
    if part is None or whole == 0:
        return None
    return round(100 * part / abs(whole), 3)


def check(results_dir: Path, machine: str | None = None, benchmark: str | None = None) -> Report:
    """Load the history and judge every benchmark with a known better direction."""
    history = load_history(results_dir, machine, benchmark)
    regressions: list[Regression] = []
    unjudged: list[str] = []
    commits: set[str] = set()
    checked = 0
    for source, series in sorted(history.items()):
        for name, points in sorted(series.items()):
            commits.update(p.commit for p in points)
            metric = metric_of(name)
            worse = worse_sign(metric)
            if worse is None:
                unjudged.append(name)
                continue
            checked += 1
            measured = [p for p in points if p.value is not None]
            values = [float(p.value) for p in measured]
            if metric == OK_METRIC:
                found, direction = find_failure(values), "ok->failed"
            else:
                found, direction = find_steps(values, worse), "drop" if worse < 0 else "rise"
            for step in found:
                regressions.append(
                    Regression(
                        machine=source.machine,
                        env=source.env,
                        benchmark=name,
                        metric=metric,
                        direction=direction,
                        good=measured[step.last_good].commit,
                        bad=measured[step.first_bad].commit,
                        before=step.before,
                        after=step.after,
                        change_pct=_pct(step.after - step.before, step.before),
                        noise_pct=_pct(step.noise, step.before),
                    )
                )
    return Report(regressions, checked, len(commits), sorted(set(unjudged)), sorted(history))


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _num(value: float | None, suffix: str = "", signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.2f}{suffix}" if signed else f"{value:.4g}{suffix}"


def to_markdown(report: Report) -> str:
    """A GitHub job summary: one line when clean; a table and bisect commands otherwise."""
    scope = f"{_plural(report.checked, 'benchmark')} over {_plural(report.commits, 'commit')}"
    note = ""
    if report.unjudged:
        note = f" ({len(report.unjudged)} more not judged: no known better direction)"
    if not report.regressions:
        return f"No regressions in {scope}{note}."
    many = len(report.sources) > 1
    envs_per_machine = len({s.machine for s in report.sources}) < len(report.sources)
    header = ["Benchmark", "Metric", "Change", "Before", "After", "Noise", "Last good", "First bad"]
    if many:
        header.insert(0, "Machine")
    lines = [
        "### Performance regressions",
        "",
        f"{_plural(len(report.regressions), 'regression')} in {scope}{note}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for r in report.regressions:
        row = [
            f"`{_cell(r.benchmark)}`",
            r.direction if r.metric == OK_METRIC else f"{r.metric} {r.direction}",
            _num(r.change_pct, "%", signed=True),
            _num(r.before),
            _num(r.after),
            "-" if r.noise_pct is None else f"±{r.noise_pct:.2f}%",
            f"`{r.good[:8]}`",
            f"`{r.bad[:8]}`",
        ]
        if many:
            row.insert(0, _cell(f"{r.machine} ({r.env})" if envs_per_machine else r.machine))
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Bisect each one (last good, first bad):", "", "```sh"]
    lines += [r.bisect for r in report.regressions]
    lines.append("```")
    return "\n".join(lines)


def to_json(report: Report) -> str:
    return json.dumps(
        {
            "regressions": [r.to_dict() for r in report.regressions],
            "checked": report.checked,
            "commits": report.commits,
            "unjudged": report.unjudged,
        },
        indent=2,
    )
