"""asv's results directory read as plain data: series of (commit, date, value) per benchmark.

Reading never crashes on one bad file: a result file that is not JSON, lacks asv's keys, names
another machine or carries a non-numeric date is skipped and named, so the caller can say why
there is less history than expected. Standard library and asv only (no torch).
"""

from __future__ import annotations

import itertools
import json
import re
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
    date: int
    value: float | None  # None: skipped, failed or not a number


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
        return util.load_json(str(path), api_version=Benchmarks.api_version)
    except (util.UserError, OSError, ValueError) as exc:
        raise CannotJudge(f"unreadable {path}: {exc}") from None


def _load(path: Path, machine: str) -> Results:
    """One result file, validated beyond what asv checks (it trusts `date` to be a number)."""
    try:
        result = Results.load(str(path), machine_name=machine)
    except util.UserError as exc:
        raise ValueError(str(exc)) from None
    except (KeyError, TypeError, ValueError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{type(exc).__name__}: {exc}") from None
    if not isinstance(result.date, int | float) or isinstance(result.date, bool):
        raise ValueError(f"date {result.date!r} is not a timestamp")
    commit = result.commit_hash
    if not isinstance(commit, str) or not re.fullmatch(r"[0-9a-f]{7,64}", commit):
        raise ValueError(f"commit {result.commit_hash!r} is not a hash")
    return result


def load(results_dir: Path, machine: str | None = None, benchmark: str | None = None) -> History:
    """Every benchmark's points per (machine, env), in commit-date order.

    A parameterized benchmark yields one series per parameter combination, named as asv names
    them: ``name(p1, p2)``. Raises CannotJudge when nothing readable is left.
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
    for name in [machine] if machine else known:
        for path in sorted((results_dir / name).glob("*.json")):
            if path.name in SKIP_FILES or not path.is_file():
                continue
            files += 1
            try:
                result = _load(path, name)
            except ValueError as exc:
                history.skipped.append(f"{path}: {exc}")
                continue
            series = history.series.setdefault(Source(name, result.env_name), {})
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
                    point = Point(result.commit_hash, int(result.date), value if measured else None)
                    series.setdefault(label, []).append(point)
    history.series = {source: s for source, s in history.series.items() if s}
    for series in history.series.values():
        for points in series.values():
            points.sort(key=lambda p: (p.date, p.commit))
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
