"""asv's results directory read as plain data: series of (commit, date, value) per benchmark.

Reading never crashes on one bad file: a result file that is not JSON, lacks asv's keys, names
another machine or carries a non-numeric date is skipped and named, so the caller can say why
there is less history than expected. Standard library and asv only (no torch).
"""

from __future__ import annotations

import itertools
import math
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from asv import util
from asv.benchmarks import Benchmarks
from asv.results import Results

SKIP_FILES = {"machine.json", "benchmarks.json"}


class HistoryError(ValueError):
    """The request itself is wrong (a pattern that is not a regex): bad input."""


class CannotJudge(RuntimeError):
    """There is no history to judge by: no readable results, machine not found ..."""


class Point(NamedTuple):
    commit: str
    date: int  # the commit's author date (asv's), ms
    value: float | None  # None: skipped, failed or not a number
    measured: int = 0  # when asv measured it, ms: orders commits that share a date


class Source(NamedTuple):
    """One history: asv keeps a machine's environments apart, so do we."""

    machine: str
    env: str


@dataclass
class History:
    series: dict[Source, dict[str, list[Point]]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # "path: why" for every unreadable file

    def commits(self) -> set[str]:
        return {p.commit for s in self.series.values() for pts in s.values() for p in pts}


def machines(results_dir: Path) -> list[str]:
    """Machine directories: those asv wrote a machine.json into."""
    return sorted(p.parent.name for p in Path(results_dir).glob("*/machine.json"))


def _current_benchmarks(results_dir: Path) -> dict | None:
    """benchmarks.json, when present: results of an older benchmark version are not comparable."""
    path = results_dir / "benchmarks.json"
    if not path.exists():
        return None
    try:
        data = util.load_json(str(path), api_version=Benchmarks.api_version)
    except (util.UserError, OSError, ValueError) as exc:
        raise CannotJudge(f"unreadable {path}: {exc}") from None
    for name, entry in data.items():
        if name == "version":
            continue
        if not isinstance(entry, dict) or not isinstance(entry.get("params"), list):
            raise CannotJudge(f"unreadable {path}: entry {name!r} has no parameter list")
    return data


def _load(path: Path, machine: str) -> Results:
    """One result file, validated beyond what asv checks (it trusts the fields' types)."""
    try:
        result = Results.load(str(path), machine_name=machine)
    except util.UserError as exc:
        raise ValueError(str(exc)) from None
    except Exception as exc:  # any malformed content: this file is unreadable, not the run
        raise ValueError(f"{type(exc).__name__}: {exc}") from None
    date = result.date
    if not isinstance(date, int | float) or isinstance(date, bool) or not math.isfinite(date):
        raise ValueError(f"date {result.date!r} is not a timestamp")
    if not isinstance(result.env_name, str) or not result.env_name:
        raise ValueError(f"environment {result.env_name!r} is not a name")
    commit = result.commit_hash
    if not isinstance(commit, str) or not re.fullmatch(r"[0-9a-f]{7,64}", commit):
        raise ValueError(f"commit {result.commit_hash!r} is not a hash")
    return result


def _points(result: Results, current: dict | None, pattern: re.Pattern | None):
    """(series label, Point) for every benchmark value in one result file."""
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
            value = value if measured and math.isfinite(value) else None
            yield label, Point(result.commit_hash, int(result.date), value, _measured(result, key))


def git_order(cwd: Path | str = ".") -> list[str] | None:
    """The checkout's first-parent history, oldest first; None outside a git checkout."""
    try:
        done = subprocess.run(
            ["git", "rev-list", "--first-parent", "--reverse", "HEAD"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.split() if done.returncode == 0 else None


def _measured(result: Results, key: str | None = None) -> int:
    """When asv measured `key` (or anything in the file), in ms; 0 where it did not say."""
    started = result.started_at or {}
    values = [started.get(key)] if key else list(started.values())
    values = [v for v in values if isinstance(v, int | float) and math.isfinite(v)]
    return int(max(values)) if values else 0


def load(
    results_dir: Path,
    machine: str | None = None,
    benchmark: str | None = None,
    order: list[str] | None = None,
) -> History:
    """Every benchmark's points per (machine, env), oldest first.

    The order is `order` (commits oldest first, e.g. the checkout's first-parent history) where
    it names the commit, else asv's author date, ties broken by when asv measured: a commit
    rebased or fast-forwarded keeps an older author date than the night before it, and a stack
    landed at once shares one. A parameterized benchmark yields one series per parameter
    combination, named as asv names them: ``name(p1, p2)``. Raises CannotJudge when nothing
    readable is left.
    """
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise CannotJudge(f"no asv results directory at {results_dir}")
    try:
        pattern = re.compile(benchmark) if benchmark else None
    except re.error as exc:
        raise HistoryError(f"benchmark pattern {benchmark!r} is not a regex ({exc})") from None
    known = machines(results_dir)
    if not known:
        raise CannotJudge(f"no asv results in {results_dir} (no <machine>/machine.json)")
    if machine is not None and machine not in known:
        raise CannotJudge(f"machine {machine!r} has no results in {results_dir}; have: {known}")
    current = _current_benchmarks(results_dir)

    history = History()
    files = 0
    seen: dict[tuple[Source, str], Path] = {}
    for name in [machine] if machine else known:
        loaded = []
        for path in sorted((results_dir / name).glob("*.json")):
            if path.name in SKIP_FILES or not path.is_file():
                continue
            files += 1
            try:
                loaded.append((path, _load(path, name)))
            except ValueError as exc:
                history.skipped.append(f"{path}: {exc}")
        # The newest measurement of a commit wins; another file for it is named, not mixed in.
        loaded.sort(key=lambda item: -_measured(item[1]))
        for path, result in loaded:
            source = Source(name, result.env_name)
            if (source, result.commit_hash) in seen:
                first = seen[(source, result.commit_hash)]
                history.skipped.append(f"{path}: another result for its commit ({first.name})")
                continue
            try:
                points = list(_points(result, current, pattern))
            except Exception as exc:  # a file asv could parse but whose results are malformed
                history.skipped.append(f"{path}: {type(exc).__name__}: {exc}")
                continue
            seen[(source, result.commit_hash)] = path
            series = history.series.setdefault(source, {})
            for label, point in points:
                series.setdefault(label, []).append(point)
    history.series = {source: s for source, s in history.series.items() if s}
    rank = {commit: i for i, commit in enumerate(order or ())}
    for series in history.series.values():
        for points in series.values():
            points.sort(key=lambda p: (rank.get(p.commit, -1), p.date, p.measured, p.commit))
    if not history.series:
        scope = f"machine {machine!r}" if machine else f"{len(known)} machine(s)"
        if files == 0:
            raise CannotJudge(f"no result files for {scope} in {results_dir}")
        if history.skipped:
            detail = "; ".join(history.skipped[:3])
            more = f" (+{len(history.skipped) - 3} more)" if len(history.skipped) > 3 else ""
            raise CannotJudge(f"no readable result file for {scope}: {detail}{more}")
        if pattern:
            raise HistoryError(f"no benchmark matches {benchmark!r}")
        raise CannotJudge(
            f"no stored result matches the current benchmark versions in "
            f"{results_dir / 'benchmarks.json'} (the suite changed: its history starts anew)"
        )
    return history
