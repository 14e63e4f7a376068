"""Which release did it: the first release of a package that changed a stage.

GOOD and BAD are measured first, each in its own overlay (overlay.py). What changed between them
decides what is hunted: a status change (GOOD ok and BAD not: the first bad release; the reverse:
the first good one, "fixed in") or a metric that moved beyond the two runs' own noise, by the
same rule `compare` uses for two result sets (judge.compare_runs with the runs' 95% confidence
half-widths added). Otherwise GOOD and BAD measure the same and nothing is bisected. Each
release between them is then placed by which end it resembles (its status; or, on a log scale,
which side of the midpoint of GOOD's and BAD's values its metric falls), by binary search. A
release whose overlay cannot be built or imported is `incompatible` and skipped like
`git bisect skip`: its neighbours are tried instead, and it is never blamed.

Lock mode takes two requirements files instead (two revisions of docker/requirements.lock):
the base environment stands for OLD; each package whose pin differs is measured alone at its
NEW pin; those that make the stage worse than the base are the culprits, and each one's
releases between its two pins are bisected.

The measuring is a function (requirements -> Trial), so the search and the verdicts are tested
without running anything; Measurer is the real one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from stagebench import judge, overlay, releases, results, stages
from stagebench.matrix import find_reference, run_matrix
from stagebench.metrics import METRICS, Metric
from stagebench.releases import PYPI_SOURCE, Range, Source
from stagebench.results import Result, StoreError
from stagebench.workload import Workload

GOOD, BAD, INCOMPATIBLE, SKIPPED = "good", "bad", "incompatible", "skipped"
REGRESSION, IMPROVEMENT = "regression", "improvement"
EXIT_CULPRIT, EXIT_CANNOT_JUDGE = 0, 3
REASON_CHARS = 90


class LockError(ValueError):
    """Bad input in lock mode (one line; the CLI exits 2)."""


_COMMENT = re.compile(r"(^|\s+)#.*$")  # as pip strips comments from requirements files
_OPTIONS = re.compile(r"\s+(?=--?[A-Za-z])")  # where a requirement's own options begin


@dataclass
class Trial:
    """One measurement: a package at one version in its overlay (or the base itself)."""

    package: str  # "" for the base
    version: str  # "base" for the base
    status: str  # the Result's status, or "incompatible" (no overlay, or an import fails)
    reason: str | None = None
    value: float | None = None  # the bisected metric
    ci_pct: float | None = None  # the run's 95% CI half-width of the median (floor) step time, %
    changed: list[str] = field(default_factory=list)  # what the overlay changed vs the base
    wall_s: float = 0.0  # overlay build and the run
    verdict: str = ""  # good, bad, incompatible, skipped
    note: str | None = None  # why it was skipped
    result: Result | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def label(self) -> str:
        return f"{self.package} {self.version}".strip()


Measure = Callable[[list[str]], Trial]


@dataclass(frozen=True)
class Change:
    """What GOOD -> BAD (or base -> one package) did to the stage."""

    direction: str | None  # regression, improvement, or None: the same / cannot judge
    by: str  # "status" or the metric's name
    text: str  # one line for people
    judged: bool = True  # False: nothing to compare (both failed, a value missing)


@dataclass
class Outcome:
    package: str
    good: str
    bad: str
    stage: str
    metric: str
    exit_code: int
    message: str  # the verdict line: "first bad: ..." or why there is none
    change: Change | None = None
    first: str | None = None  # the first bad (regression) or first good (improvement) release
    last: str | None = None  # the release before it
    between: list[str] = field(default_factory=list)  # not measurable between last and first
    trials: list[Trial] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # more lines for people (lock mode ...)
    culprits: list[str] = field(default_factory=list)  # lock mode: packages that alone did it


def metric_value(result: Result | None, metric: Metric) -> float | None:
    if result is None or result.metrics is None:
        return None
    value = getattr(result.metrics, metric.key, None)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def judge_pair(before: Trial, after: Trial, metric: Metric) -> Change:
    """A status change, else the metric against both runs' own noise (compare.py's rule)."""
    if before.ok != after.ok:
        direction = REGRESSION if before.ok else IMPROVEMENT
        why = after.reason or before.reason
        text = f"status {before.status} -> {after.status}" + (f" ({why})" if why else "")
        return Change(direction, "status", text)
    if not before.ok:
        return Change(
            None,
            "status",
            f"both fail ({before.status}, {after.status}): no {metric.name} to compare",
            judged=False,
        )
    if before.value is None or after.value is None:
        text = f"{metric.name} not measured on both sides"
        return Change(None, metric.name, text, judged=False)
    noise = None
    # The two runs' own 95% CI half-widths of the median or the floor, added (compare.py);
    # memory is judged by the minimum effect alone, as the text says. The median has a CI from
    # 6 steps, so one missing is a run too short to judge; the floor's needs 35, which a run
    # that stopped early lacks: there, as in compare, the minimum effect alone judges it.
    if metric.family in results.WITHIN_RUN_CI_FAMILIES:
        if before.ci_pct is not None and after.ci_pct is not None:
            noise = before.ci_pct + after.ci_pct
        elif metric.family == "speed":
            text = f"{metric.name}: no confidence interval (too few measured steps; --min-steps)"
            return Change(None, metric.name, text, judged=False)
    j = judge.compare_runs(before.value, after.value, metric.worse, noise)
    change = "" if j.change_pct is None else f" ({j.change_pct:+.1f}%"
    bar = f", bar {j.bar_pct:.1f}%" if j.bar_pct is not None else ""
    text = f"{metric.name} {before.value:.4g} -> {after.value:.4g} {metric.unit}{change}{bar})"
    if noise is None:
        text += f" ({j.reason})" if j.reason else ""
    direction = {judge.REGRESSED: REGRESSION, judge.IMPROVED: IMPROVEMENT}.get(j.verdict)
    return Change(direction, metric.name, text)


def _log(value: float) -> float:
    return math.log(value) if value > 0 else -math.inf


def side(trial: Trial, good: Trial, bad: Trial, by: str) -> tuple[str | None, str | None]:
    """Which end a trial resembles: ("old" | "new" | None when it cannot be placed, why)."""
    if trial.status == INCOMPATIBLE:
        return None, None
    if by == "status":
        return ("old" if trial.ok == good.ok else "new"), None
    if not trial.ok or trial.value is None:
        return None, f"no {by}: {trial.status}"
    a, b, v = good.value, bad.value, trial.value
    assert a is not None and b is not None
    if a > 0 and b > 0 and v > 0:  # the midpoint on a log scale
        return ("old" if abs(_log(v) - _log(a)) <= abs(_log(v) - _log(b)) else "new"), None
    return ("old" if abs(v - a) <= abs(v - b) else "new"), None


@dataclass(frozen=True)
class Search:
    last_old: int  # index of the last release like GOOD
    first_new: int  # index of the first release like BAD
    skipped: list[int]  # indices between them that could not be placed
    order: list[int]  # indices in the order they were tested


def search(n: int, test: Callable[[int], str | None]) -> Search:
    """Binary search over indices 0..n-1 where 0 is like GOOD ("old") and n-1 like BAD ("new").

    `test(i)` says "old", "new" or None (cannot be placed: skipped, like `git bisect skip`);
    the next index tried is the untried one nearest the middle of the open interval.
    """
    if n < 2:
        raise ValueError("a search needs both ends")
    lo, hi = 0, n - 1
    skipped: set[int] = set()
    order: list[int] = []
    while pool := [i for i in range(lo + 1, hi) if i not in skipped]:
        middle = (lo + hi) / 2
        i = min(pool, key=lambda k: (abs(k - middle), k))
        order.append(i)
        answer = test(i)
        if answer == "old":
            lo = i
        elif answer == "new":
            hi = i
        else:
            skipped.add(i)
    return Search(lo, hi, sorted(k for k in skipped if lo < k < hi), order)


def _requirement(package: str, version: object) -> list[str]:
    return [f"{package}=={version}"]


def _measured(trial: Trial, package: str, version: str) -> Trial:
    trial.package, trial.version = package, version
    return trial


def bisect_releases(
    rng: Range,
    measure: Measure,
    metric: Metric,
    *,
    stage: str = "",
    known: dict[str, Trial] | None = None,
    on_trial: Callable[[Trial], None] | None = None,
) -> Outcome:
    """Measure GOOD and BAD, decide what changed, and find the first release that has it."""
    package = rng.package
    cands = rng.candidates
    good_v, bad_v = str(rng.good.version), str(rng.bad.version)
    known = dict(known or {})
    trials: list[Trial] = []

    def outcome(exit_code: int, message: str, change: Change | None = None) -> Outcome:
        ends = (package, good_v, bad_v, stage, metric.name)
        return Outcome(*ends, exit_code, message, change=change, trials=trials)

    def run(i: int) -> Trial:
        version = str(cands[i].version)
        if version in known:  # measured already (lock mode, or earlier in this search)
            if not any(t is known[version] for t in trials):
                trials.append(known[version])
            return known[version]
        trial = _measured(measure(_requirement(package, version)), package, version)
        known[version] = trial
        trials.append(trial)
        if trial.status == INCOMPATIBLE:
            trial.verdict = INCOMPATIBLE
        if on_trial:
            on_trial(trial)
        return trial

    good, bad = run(0), run(len(cands) - 1)
    for end, trial in (("GOOD", good), ("BAD", bad)):
        if trial.status == INCOMPATIBLE:
            why = f"{end} {trial.label} is incompatible here ({trial.reason}): nothing to bisect"
            return outcome(EXIT_CANNOT_JUDGE, f"{why} from; choose another endpoint")
    change = judge_pair(good, bad, metric)
    if change.direction is None:
        same = "measure the same" if change.judged else "cannot be compared"
        message = f"GOOD and BAD {same}: nothing to bisect ({change.text})"
        if change.judged:  # BAD is no worse than GOOD: both good
            good.verdict = bad.verdict = GOOD
        return outcome(EXIT_CANNOT_JUDGE, message, change)
    old, new = (GOOD, BAD) if change.direction == REGRESSION else (BAD, GOOD)
    good.verdict, bad.verdict = old, new

    def test(i: int) -> str | None:
        trial = run(i)
        if trial.status == INCOMPATIBLE:
            return None
        where, why = side(trial, good, bad, change.by)
        if where is None:
            trial.verdict, trial.note = SKIPPED, why
            return None
        trial.verdict = old if where == "old" else new
        return where

    found = search(len(cands), test)
    first, last = cands[found.first_new], cands[found.last_old]
    between = [
        f"{cands[i].version} ({_verdict_of(trials, str(cands[i].version))})" for i in found.skipped
    ]
    between += [
        f"{r.version} (not installable: {r.reason})"
        for r in rng.skipped
        if last.version < r.version < first.version
    ]
    if change.direction == REGRESSION:
        message = f"first bad: {package} {first.version} (last good {last.version})"
    elif change.by == "status":
        message = (
            f"first good: {package} {first.version} (last bad {last.version}): fixed in "
            f"{first.version}"
        )
    else:
        message = f"first good: {package} {first.version} (last bad {last.version}): an improvement"
    found_it = outcome(EXIT_CULPRIT, message, change)
    found_it.first, found_it.last = str(first.version), str(last.version)
    found_it.between = sorted(between, key=lambda s: Version(s.split()[0]))
    if found_it.between:
        found_it.notes.append(
            f"between {last.version} and {first.version}, not measured: "
            f"{', '.join(found_it.between)}; {first.version} is the first measurable release "
            "with the change"
        )
    if change.by == "status":
        first_trial = run(found.first_new)  # measured already: the search placed it
        if not first_trial.ok and first_trial.status != bad.status:
            found_it.notes.append(_own_failure(found.first_new, bad, cands, run, first_trial))
        if unsteady := _not_monotone(trials, first.version, good):
            found_it.notes.append(unsteady)
    elsewhere = [
        f"{r.version} ({r.reason})"
        for r in rng.skipped
        if not last.version < r.version < first.version
    ]
    if elsewhere:
        found_it.notes.append(f"not installable here, never tried: {', '.join(elsewhere)}")
    return found_it


def _not_monotone(trials: list[Trial], first: Version, good: Trial) -> str | None:
    """Releases after the first changed one that measured like GOOD again: the search assumed
    a change that stays, so say where it did not."""
    back = [t for t in trials if _version_of(t) > first and t.ok == good.ok]
    if not back:
        return None
    like = "ran ok" if good.ok else f"failed ({good.status})"
    names = ", ".join(t.version for t in sorted(back, key=_version_of))
    return (
        f"not monotone: {names} {like} again after {first}; the named release is where the "
        "change first showed among those tried"
    )


def _version_of(trial: Trial) -> Version:
    try:
        return Version(trial.version)
    except InvalidVersion:
        return Version("0")


def _own_failure(
    first: int, bad: Trial, cands: list, run: Callable[[int], Trial], first_trial: Trial
) -> str:
    """The first bad release fails otherwise than BAD (an OOM before a compile error): find
    where BAD's own failure begins, between it and BAD, by the same binary search."""

    def test(i: int) -> str | None:
        trial = run(i)
        if trial.status == INCOMPATIBLE:
            return None
        trial.verdict = trial.verdict or (GOOD if trial.ok else BAD)
        return "new" if trial.status == bad.status else "old"

    found = search(len(cands) - first, lambda k: test(first + k))
    own, before = cands[first + found.first_new], cands[first + found.last_old]
    line = (
        f"{cands[first].version} fails otherwise ({first_trial.status}) than {bad.version} "
        f"({bad.status}); {bad.status} first in {own.version} (the release before it: "
        f"{before.version}, {run(first + found.last_old).status})"
    )
    if found.skipped:
        between = ", ".join(str(cands[first + k].version) for k in found.skipped)
        line += f"; not measurable between: {between}"
    return line


def _verdict_of(trials: list[Trial], version: str) -> str:
    trial = next(t for t in trials if _version_of(t) == Version(version))
    why = trial.reason if trial.status == INCOMPATIBLE else trial.note
    return f"{trial.verdict}: {why}" if why else trial.verdict


# Lock mode ------------------------------------------------------------------------------------


def parse_lock(path: Path) -> dict[str, str]:
    """`name==version` pins of a requirements file (hashes, comments, options, continuation
    lines and all), by canonical name; a direct reference (`name @ URL`) pins `@ URL`. Lines
    whose markers exclude this interpreter are left out."""
    try:
        text = path.read_bytes().decode("utf-8-sig")  # an editor's BOM is no package name
    except OSError as exc:
        raise LockError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise LockError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    pins: dict[str, str] = {}
    joined = text.replace("\r\n", "\n").replace("\\\n", " ")  # continuation lines
    for line in joined.splitlines():
        line = _COMMENT.sub("", line).strip()  # pip's rule: '#' after whitespace, tabs too
        if not line or line.startswith(("#", "-")):
            continue
        spec = _OPTIONS.split(line, 1)[0].strip()  # per-requirement options (--hash=...)
        try:
            req = Requirement(spec)
        except InvalidRequirement as exc:
            why = str(exc).splitlines()[0]  # packaging adds the line and a caret below it
            raise LockError(f"{path}: {spec!r} is not a requirement ({why})") from None
        if req.marker and not req.marker.evaluate():
            continue
        name = canonicalize_name(req.name)
        pinned = None
        if req.url:
            pinned = f"@ {req.url}"
        else:
            ops = [s for s in req.specifier if s.operator in ("==", "===") and "*" not in s.version]
            if len(ops) == 1 and len(req.specifier) == 1:
                pinned = ops[0].version
        if pinned is None:
            continue
        if pins.get(name, pinned) != pinned:
            raise LockError(f"{path} pins {name} twice: {pins[name]} and {pinned}")
        pins[name] = pinned
    if not pins:
        raise LockError(f"{path} pins no package (name==version)")
    return pins


def base_differences(old: dict[str, str], base: dict[str, str]) -> list[str]:
    """Where the base is not OLD: each package whose installed version OLD's pin does not
    match (a local version such as +cu128 matches its release)."""
    lines = []
    for name, pinned in sorted(old.items()):
        have = base.get(name)
        if have is None or pinned.startswith("@"):
            continue
        try:
            same = SpecifierSet(f"=={pinned}").contains(have, prereleases=True)
        except (InvalidVersion, ValueError):
            same = have == pinned
        if not same:
            lines.append(f"{name} {have} (OLD pins {pinned})")
    return lines


@dataclass(frozen=True)
class LockChange:
    name: str
    old: str | None
    new: str | None

    @property
    def testable(self) -> str | None:
        """None when it can be measured alone at its NEW pin, else why not."""
        if self.new is None:
            return "removed in NEW: an overlay cannot take a package away"
        if self.new.startswith("@"):
            return "a direct URL in NEW, not a release"
        try:
            Version(self.new)
        except InvalidVersion:  # `===` pins anything; an overlay installs name==version
            return f"{self.new!r} in NEW is not a PEP 440 version"
        return None

    def __str__(self) -> str:
        return f"{self.name} {self.old or 'none'} -> {self.new or 'none'}"


def lock_changes(old: dict[str, str], new: dict[str, str]) -> list[LockChange]:
    return [
        LockChange(name, old.get(name), new.get(name))
        for name in sorted(set(old) | set(new))
        if old.get(name) != new.get(name)
    ]


def bisect_lock(
    old_lock: Path,
    new_lock: Path,
    measure: Measure,
    measure_base: Callable[[], Trial],
    metric: Metric,
    base_packages: dict[str, str],
    *,
    stage: str = "",
    source: Source = PYPI_SOURCE,
    pre: bool = False,
    allow_sdist: bool = False,
    on_trial: Callable[[Trial], None] | None = None,
    warn: Callable[[str], None] = lambda line: None,
) -> Outcome:
    """Which package of a lock bump did it, then which of its releases."""
    old, new = parse_lock(old_lock), parse_lock(new_lock)
    changes = lock_changes(old, new)
    if not changes:
        raise LockError(f"{old_lock} and {new_lock} pin the same versions: nothing to bisect")
    missing = [str(c) for c in changes if c.old and c.name not in base_packages]
    if missing:
        raise LockError(
            f"pinned in OLD but not installed here: {', '.join(missing)}; the base environment "
            "stands for OLD, so install OLD's pins first"
        )
    differences = base_differences(old, base_packages)
    if differences:
        warn(f"the base stands for OLD, but here: {'; '.join(differences)}")
    testable = [c for c in changes if c.testable is None]
    outcome = Outcome("", str(old_lock), str(new_lock), stage, metric.name, EXIT_CANNOT_JUDGE, "")
    outcome.notes += [f"{c}: not tried ({c.testable})" for c in changes if c.testable]
    if not testable:
        outcome.message = "no package whose pin differs can be tried alone"
        return outcome
    base = measure_base()
    base.verdict = GOOD
    outcome.trials.append(base)
    if on_trial:
        on_trial(base)
    alone: dict[str, tuple[LockChange, Trial]] = {}
    for c in testable:
        trial = _measured(measure(_requirement(c.name, c.new)), c.name, str(c.new))
        outcome.trials.append(trial)
        if trial.status == INCOMPATIBLE:
            trial.verdict = INCOMPATIBLE
        else:
            change = judge_pair(base, trial, metric)
            trial.verdict = BAD if change.direction == REGRESSION else GOOD
            if not change.judged:
                trial.verdict = SKIPPED
            trial.note = change.text
            if change.direction == REGRESSION:
                alone[c.name] = (c, trial)
        if on_trial:
            on_trial(trial)
    tried = ", ".join(str(c) for c in testable)
    if not alone:
        outcome.message = (
            f"no package alone makes {stage or 'the stage'} worse than the base (tried {tried}): "
            "a combination is needed, or the base is not OLD"
        )
        return outcome
    outcome.culprits = [str(c) for c, _ in alone.values()]
    outcome.exit_code = EXIT_CULPRIT
    lines = [f"culprit package(s), each alone at its NEW pin: {', '.join(outcome.culprits)}"]
    for name, (c, trial) in alone.items():
        if c.old is None or c.old.startswith("@"):
            lines.append(
                f"{name}: {'new in NEW' if c.old is None else 'OLD pins a URL'}: "
                f"no earlier release to bisect from"
            )
            continue
        try:
            rng = releases.between(
                name, c.old, str(c.new), source, pre=pre, allow_sdist=allow_sdist
            )
        except releases.ReleaseError as exc:
            lines.append(f"{name}: its releases cannot be bisected: {exc}")
            continue
        # NEW's run is the range's BAD, by the release's own spelling (the lock may pin 0.8 for
        # 0.8.0); the base's run is GOOD where it has OLD's version.
        known = {str(rng.bad.version): trial}
        if _same_version(base_packages.get(name), c.old):
            known[str(rng.good.version)] = _copy_as(base, name, c.old)
        sub = bisect_releases(rng, measure, metric, stage=stage, known=known, on_trial=on_trial)
        outcome.trials += [t for t in sub.trials if not any(t is u for u in outcome.trials)]
        outcome.notes += sub.notes
        lines.append(sub.message)
        if outcome.first is None and sub.first:
            outcome.package, outcome.first, outcome.last = name, sub.first, sub.last
    outcome.message = "; ".join(lines)
    return outcome


def _same_version(have: str | None, pinned: str) -> bool:
    try:
        return have is not None and Version(have) == Version(pinned)
    except InvalidVersion:  # a version outside PEP 440 is only the same as itself
        return have == pinned


def _copy_as(base: Trial, package: str, version: str) -> Trial:
    """The base's measurement standing for OLD's pin of a package it has at that version."""
    return dataclasses.replace(base, package=package, version=version, note="the base's run")


# The real measurement -------------------------------------------------------------------------


class Measurer:
    """Requirements -> Trial: build (or reuse) the overlay, import-check it, run the stage in its
    interpreter through run_matrix (stored as it ends, numerics against the first reference)."""

    def __init__(
        self,
        stage: stages.Stage,
        workload: Workload,
        metric: Metric,
        *,
        source: Source = PYPI_SOURCE,
        store: Path | None = None,
        log_dir: Path | None = None,
        overlay_dir: Path | None = None,
        allow_sdist: bool = False,
    ) -> None:
        self.stage, self.workload, self.metric = stage, workload, metric
        self.source, self.store, self.log_dir = source, store, log_dir
        self.overlay_dir, self.allow_sdist = overlay_dir, allow_sdist
        # A store that holds this workload's reference (a nightly's) saves measuring it again.
        self.reference: Result | None = (
            find_reference(results.load(store), workload) if store else None
        )
        self.unstored: list[StoreError] = []

    def __call__(self, requirements: list[str]) -> Trial:
        t0 = time.perf_counter()
        package, _, version = requirements[0].partition("==")
        try:
            built = overlay.build(
                requirements,
                source=self.source,
                overlay_dir=self.overlay_dir,
                allow_sdist=self.allow_sdist,
            )
        except overlay.Incompatible as exc:
            return Trial(
                package,
                version,
                INCOMPATIBLE,
                exc.reason,
                verdict=INCOMPATIBLE,
                wall_s=time.perf_counter() - t0,
            )
        trial = self._run(built.python, f"{package}-{version}")
        trial.package, trial.version, trial.changed = package, version, built.changes()
        trial.wall_s = time.perf_counter() - t0
        return trial

    def base(self) -> Trial:
        t0 = time.perf_counter()
        trial = self._run(None, "base")
        trial.wall_s = time.perf_counter() - t0
        return trial

    def _run(self, python: str | None, name: str) -> Trial:
        stage_list = [self.stage]
        if not self.stage.is_reference and self.reference is None:
            stage_list.insert(0, stages.resolve(stages.REFERENCE_SPEC))
        done = run_matrix(
            stage_list,
            self.workload,
            store=self.store,
            log_dir=self.log_dir / name if self.log_dir else None,
            python=python,
            reference=self.reference,
            on_store_error=lambda result, exc: self.unstored.append(exc),
        )
        result = done[-1]
        if self.reference is None:
            self.reference = next((r for r in done if r.numerics == "reference"), None)
        m = result.metrics
        return Trial(
            "",
            "base",
            result.status,
            result.reason,
            metric_value(result, self.metric),
            m.ci95_pct_of(self.metric.family) if m else None,
            result=result,
        )


# Output ---------------------------------------------------------------------------------------

COLUMNS = ("Release", "Status", "{metric}", "Verdict", "Overlay changed", "Wall s")


def _status(trial: Trial) -> str:
    if trial.ok or not trial.reason:
        return trial.status
    reason = trial.reason
    if len(reason) > REASON_CHARS:
        reason = reason[: REASON_CHARS - 1] + "…"
    return f"{trial.status}: {reason}"


def _sort_key(trial: Trial) -> tuple:
    if trial.version == "base":
        return ("", Version("0"))
    return (trial.package, _version_of(trial))


def rows(outcome: Outcome) -> list[list[str]]:
    out = []
    seen = set()
    for t in sorted(outcome.trials, key=_sort_key):
        if (t.package, t.version) in seen:
            continue
        seen.add((t.package, t.version))
        value = "-" if t.value is None else f"{t.value:.4g}"
        if (
            t.value is not None
            and t.ci_pct is not None
            and METRICS[outcome.metric].family in results.WITHIN_RUN_CI_FAMILIES
        ):
            value += f" ±{t.ci_pct:.0f}%"
        verdict = t.verdict + (f" ({t.note})" if t.verdict == SKIPPED and t.note else "")
        out.append(
            [
                t.label,
                _status(t),
                value,
                verdict or "-",
                ", ".join(t.changed) or "-",
                f"{t.wall_s:.1f}",
            ]
        )
    return out


def columns(outcome: Outcome) -> list[str]:
    # With its run's 95% CI half-width (of the median, or of the floor).
    with_ci = METRICS[outcome.metric].family in results.WITHIN_RUN_CI_FAMILIES
    metric = f"{outcome.metric} ±CI95" if with_ci else outcome.metric
    return [c.format(metric=metric) for c in COLUMNS]


def summary_lines(outcome: Outcome) -> list[str]:
    lines = []
    if outcome.change is not None:
        lines.append(f"GOOD -> BAD: {outcome.change.text}")
    lines += outcome.notes
    lines.append(outcome.message)
    return lines


def to_markdown(outcome: Outcome) -> str:
    from stagebench.report import markdown_table

    target = outcome.package or "lock"
    title = (
        f"### stagebench bisect-release: {target} {outcome.good} -> {outcome.bad}, {outcome.stage}"
    )
    body = markdown_table(columns(outcome), rows(outcome))
    return "\n".join([title, "", body, "", *(f"- {line}" for line in summary_lines(outcome))])


def to_json(outcome: Outcome) -> str:
    data = asdict(outcome)
    for trial in data["trials"]:
        trial.pop("result")  # stored whole in --jsonl; here what the table says
    return json.dumps(data, indent=2, default=str)


def describe(trial: Trial, metric: Metric) -> str:
    """One progress line."""
    value = "" if trial.value is None else f", {metric.name} {trial.value:.4g} {metric.unit}"
    return f"{trial.label}: {_status(trial)}{value} ({trial.wall_s:.1f} s)"
