"""Regressions standing in asv's history, judged by the judging room (judge.py).

Per (machine, environment) and benchmark, over its points in commit-date order:
- a measured metric's latest level is compared with the level before it (judge.latest): noise
  from the segment before the change, on a log scale, with a bar that grows when that segment is
  short. Only series measured at their newest commit are judged.
- `track_ok` is not noisy: a regression is a latest run that failed (0) after one that was ok.
- metrics computed from one measurement (step time, tokens/s, TFLOPS, both MFUs all come from the
  median step time) are one finding, named by the family's lead metric, the others listed. The
  step-time floor (10th percentile) is a family of its own, judged with its own noise record.
- a finding is `new` when the history without its newest commit did not show it: that is what a
  nightly alarm fires on; older standing regressions are reported, not re-alarmed.

Exit codes (cli): 0 judged and clean, 1 a regression stands, 2 bad input, 3 cannot judge.
"""

from __future__ import annotations

import json
import math
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from stagebench import judge, noise
from stagebench.history import CannotJudge, History, HistoryError, Point, Source, load
from stagebench.metrics import (
    FAMILY_LEAD,
    OK_METRIC,
    family_of,
    metric_of,
    stage_class_of,
    worse_sign,
)

__all__ = ["CannotJudge", "HistoryError", "check", "to_json", "to_markdown"]


@dataclass(frozen=True)
class Finding:
    machine: str
    env: str
    benchmark: str  # the lead metric's asv name
    metric: str
    direction: str  # "rise", "drop" or "ok->failed"
    good: str  # last good commit
    bad: str  # first bad commit
    judgement: judge.Judgement
    derived: tuple[tuple[str, float | None], ...] = ()  # (metric, change %) of the family
    new: bool = False
    baseline: tuple[float, ...] = ()  # the level before the change, as measured
    # None: not re-measured; True/False: a re-run of the stage showed it again / did not.
    confirmed: bool | None = None
    confirmation: str | None = None
    prior: judge.Prior | None = None  # the stage's measured noise, when the judge used one
    # The step-time floor's own finding when it moved with this (speed) one at the same commit:
    # listed beside it, and re-measured on its own (a refuted median must not take it along).
    folded: Finding | None = None

    @property
    def stage(self) -> str:
        return stage_class_of(self.benchmark).rsplit(".", 1)[-1]

    @property
    def bisect(self) -> str:
        name = self.benchmark.split("(", 1)[0]  # asv selects every parameter of a benchmark
        return f"nox -s bisect -- {self.good} {self.bad} {shlex.quote(name)}"

    def to_dict(self) -> dict[str, object]:
        j = self.judgement
        return {
            "benchmark": self.benchmark,
            "stage": self.stage,
            "metric": self.metric,
            "direction": self.direction,
            "machine": self.machine,
            "env": self.env,
            "good": self.good,
            "bad": self.bad,
            "before": j.before,
            "after": j.after,
            "change_pct": j.change_pct,
            "noise_pct": j.noise_pct,
            "bar_pct": j.bar_pct,
            "points_before": j.n_before,
            "points_after": j.n_after,
            "noise_note": j.reason,
            "derived": [{"metric": m, "change_pct": c} for m, c in self.derived],
            "folded": None if self.folded is None else self.folded.to_dict(),
            "new": self.new,
            "confirmed": self.confirmed,
            "confirmation": self.confirmation,
            "bisect": self.bisect,
        }


@dataclass
class Report:
    regressions: list[Finding]
    improvements: list[Finding]
    checked: int  # series judged
    commits: int
    latest: str | None  # the newest commit in the judged history
    unjudged: dict[str, str] = field(default_factory=dict)  # series -> why not
    sources: list[Source] = field(default_factory=list)
    skipped_files: list[str] = field(default_factory=list)

    @property
    def new(self) -> list[Finding]:
        return [f for f in self.regressions if f.new]

    @property
    def alarms(self) -> list[Finding]:
        """New regressions a re-run did not refute."""
        return [f for f in self.new if f.confirmed is not False]


def find_failure(values: Sequence[float]) -> judge.Judgement:
    """ok -> failed: the latest run failed and an earlier one was ok."""
    if len(values) < 2:
        return judge.Judgement(judge.UNJUDGED, "never measured" if not values else "1 run")
    if values[-1] >= 0.5:
        return judge.Judgement(judge.SAME)
    for i in range(len(values) - 1, -1, -1):
        if values[i] >= 0.5:
            return judge.Judgement(
                judge.REGRESSED, last_good=i, first_bad=i + 1, before=1.0, after=0.0,
                change_pct=-100.0, n_before=i + 1, n_after=len(values) - i - 1,
            )  # fmt: skip
    return judge.Judgement(judge.SAME, "never ran ok: nothing to bisect")


def _judge_series(
    metric: str, points: list[Point], prior: judge.Prior | None = None
) -> judge.Judgement:
    measured = [p for p in points if p.value is not None]
    values = [float(p.value) for p in measured]
    if metric == OK_METRIC:
        return find_failure(values)
    if not values:
        return judge.Judgement(judge.UNJUDGED, "never measured (skipped or failed)")
    if points[-1].value is None:
        return judge.Judgement(judge.UNJUDGED, "not measured at its newest commit")
    return judge.latest(values, worse_sign(metric), prior)


@dataclass
class _Series:
    name: str
    metric: str
    points: list[Point]
    now: judge.Judgement
    before: judge.Judgement | None  # judged without the newest commit
    prior: judge.Prior | None = None  # the stage's measured run-to-run noise


def _commit_at(points: list[Point], index: int) -> str:
    return [p for p in points if p.value is not None][index].commit


def check(
    results_dir: Path,
    machine: str | None = None,
    benchmark: str | None = None,
    order: list[str] | None = None,
    env: str | None = None,
) -> Report:
    """Load the history and judge every benchmark whose better direction is known. `order`:
    commits oldest first (see history.load); the newest is the last of it that was measured.
    `env`: one asv environment only (the nightly alarms on its locked lane)."""
    history: History = load(results_dir, machine, benchmark, order)
    if env is not None:
        history.series = {s: v for s, v in history.series.items() if s.env == env}
        if not history.series:
            raise CannotJudge(f"no results of environment {env!r} in {results_dir}")
    commits = history.commits()
    rank = {commit: i for i, commit in enumerate(order or ())}
    newest = max(
        (p for s in history.series.values() for pts in s.values() for p in pts),
        key=lambda p: (rank.get(p.commit, -1), p.date, p.measured, p.commit),
    ).commit
    report = Report([], [], 0, len(commits), newest, skipped_files=history.skipped)
    report.sources = sorted(history.series)
    records = noise.load(results_dir)
    current = noise.versions(results_dir)  # the series' versions now
    for source, series in sorted(history.series.items()):
        priors = noise.priors(records, source.machine, current)
        groups: dict[tuple[str, str], list[_Series]] = {}
        for name, points in sorted(series.items()):
            metric = metric_of(name)
            if worse_sign(metric) is None:
                report.unjudged[name] = "no known better direction"
                continue
            key = (stage_class_of(name), family_of(metric))
            prior = priors.get(key)
            now = _judge_series(metric, points, prior)
            if now.verdict == judge.UNJUDGED:
                report.unjudged[name] = now.reason or "unjudged"
                continue
            report.checked += 1
            earlier = [p for p in points if p.commit != newest]
            before = _judge_series(metric, earlier, prior) if len(earlier) < len(points) else now
            groups.setdefault(key, []).append(_Series(name, metric, points, now, before, prior))
        for (_, family), members in sorted(groups.items()):
            finding = _finding(source, family, members)
            if finding is None:
                continue
            if finding.judgement.verdict == judge.REGRESSED:
                report.regressions.append(finding)
            else:
                report.improvements.append(finding)
    report.regressions = _fold_floor(report.regressions)
    report.improvements = _fold_floor(report.improvements)
    if report.checked == 0:
        reasons = sorted(set(report.unjudged.values()))
        raise CannotJudge(
            f"no series could be judged ({len(report.unjudged)} not judged: "
            f"{'; '.join(reasons[:3])})"
        )
    return report


def _fold_floor(findings: list[Finding]) -> list[Finding]:
    """A step-time floor that moved with the median of the same stage at the same commit is one
    change (every step slower): listed beside the speed finding, not a second alarm. A floor
    that moved alone (a kernel under a noisy median) stays a finding of its own."""

    def key(f: Finding) -> tuple:
        return (f.machine, f.env, stage_class_of(f.benchmark), f.bad)

    speed = {key(f): f for f in findings if family_of(f.metric) == "speed"}
    folded = {key(f): f for f in findings if family_of(f.metric) == "floor" and key(f) in speed}
    out = []
    for f in findings:
        if family_of(f.metric) == "floor" and key(f) in speed:
            continue
        if family_of(f.metric) == "speed" and key(f) in folded:
            floor = folded[key(f)]
            derived = (*f.derived, (floor.metric, floor.judgement.change_pct))
            f = replace(f, derived=derived, folded=floor)
        out.append(f)
    return out


def _finding(source: Source, family: str, members: list[_Series]) -> Finding | None:
    """One finding per family: the lead metric's judgement, the others listed beside it."""
    changed = [m for m in members if m.now.changed]
    if not changed:
        return None
    lead_name = FAMILY_LEAD.get(family)
    lead = next((m for m in changed if m.metric == lead_name), changed[0])
    j = lead.now
    worse = worse_sign(lead.metric)
    if lead.metric == OK_METRIC:
        direction = "ok->failed"
    else:
        direction = "rise" if worse > 0 else "drop"
        if j.verdict == judge.IMPROVED:
            direction = "drop" if worse > 0 else "rise"
    # New: the newest commit brought it (its level starts there), or the history without that
    # commit did not show it (a change that only now clears its bar).
    first_bad = _commit_at(lead.points, j.first_bad) if j.first_bad is not None else None
    new = j.verdict == judge.REGRESSED and (
        first_bad == lead.points[-1].commit
        or lead.before is None
        or lead.before.verdict != judge.REGRESSED
    )
    derived = tuple((m.metric, m.now.change_pct) for m in changed if m is not lead)
    measured = [float(p.value) for p in lead.points if p.value is not None]
    baseline = tuple(measured[j.last_good - j.n_before + 1 : j.last_good + 1])
    return Finding(
        machine=source.machine,
        env=source.env,
        benchmark=lead.name,
        metric=lead.metric,
        direction=direction,
        good=_commit_at(lead.points, j.last_good),
        bad=first_bad,
        judgement=j,
        derived=derived,
        new=new,
        baseline=baseline,
        prior=lead.prior,
    )


def confirm(
    finding: Finding,
    bad_runs: Sequence[float | None] | float | None,
    good_runs: Sequence[float | None] = (),
) -> Finding:
    """Judge re-measurements of the finding's benchmark: one burst of load on one run must not
    raise an alarm, a real change shows again.

    `bad_runs`: the bad side re-run (this commit), `good_runs`: the last good commit re-run the
    same night, in the same rounds (one or two each; the better run of each side counts: load
    only makes a run worse). A good run within the noise of its history means a usual night: the
    re-run is judged against the history, and must also stand against that good run (two single
    runs, the history's noise), or a re-run slowed by load after it would pass for the commit's.
    A good run off it means a night slower or faster (a burst on one run was taken out by the
    second round): the re-run is judged against it, two single runs, with the larger of the
    history's noise and the noise the two rounds showed tonight, and never below the 1% minimum
    effect."""
    bad, good = _present(bad_runs), _present(good_runs)
    if finding.metric == OK_METRIC:
        value = bad[0] if bad else None
        if value is None or value < 0.5:
            return replace(finding, confirmed=True, confirmation="failed again on a re-run")
        return replace(finding, confirmed=False, confirmation="passed on a re-run: a flaky failure")
    if not bad:
        note = "the re-run gave no value: not refuted"
        return replace(finding, confirmed=True, confirmation=note)
    value = bad[0] if len(bad) == 1 else better(finding.metric, *bad[:2])
    worse = worse_sign(finding.metric)
    detail, noise_pct, usual_good = [], None, None
    if good and finding.baseline:
        good_tonight = good[0] if len(good) == 1 else better(finding.metric, *good[:2])
        runs = "" if len(good) == 1 else f" (better of {len(good)})"
        tonight = f"last good {finding.good[:12]} re-measured at {good_tonight:.4g}{runs}"
        off = drifted(finding, good_tonight)
        noise_pct = _single_run_noise_pct(finding, good, bad)
        if off and noise_pct is not None and min(*good, *bad) > 0:
            again = judge.compare_runs(good_tonight, value, worse, noise_pct)
            detail.append(f"against the {tonight}, a night off its history")
        else:
            again = None
            why = "off its history, not comparable run to run" if off else "as usual"
            detail.append(f"{tonight}, {why}")
            usual_good = None if off or min(*good, *bad) <= 0 else good_tonight
    else:
        again = None
    if again is None:
        again = _against_history(finding, value)
    if again.change_pct is not None:
        detail.insert(0, f"{again.change_pct:+.1f}%")
    if again.verdict == judge.REGRESSED and usual_good is not None:
        noise = _single_run_noise_pct(finding, [], [])  # the history's: the good run is usual
        direct = judge.compare_runs(usual_good, value, worse, noise)
        if direct.verdict != judge.REGRESSED:
            detail.append(f"only {direct.change_pct:+.1f}% against it, bar {direct.bar_pct:.1f}%")
            again = direct
    text = f"a re-run measured {value:.4g}" + (f" ({'; '.join(detail)})" if detail else "")
    if again.verdict == judge.REGRESSED:
        return replace(finding, confirmed=True, confirmation=f"{text} again")
    return replace(finding, confirmed=False, confirmation=f"{text}, within the noise: not alarmed")


def _present(runs: Sequence[float | None] | float | None) -> list[float]:
    if runs is None:
        return []
    if isinstance(runs, int | float):
        return [float(runs)]
    return [float(v) for v in runs if v is not None]


def _single_run_noise_pct(finding: Finding, good: list[float], bad: list[float]) -> float | None:
    """The 99% bar, in %, for the difference of two single runs: one run's noise from the
    stage's measured prior or the history's spread, or from tonight's two rounds where those
    disagree more; None where no log-scale noise can be had."""
    prior = finding.prior or _noise_of(list(finding.baseline))
    sigma, df = (prior.sigma, prior.df) if prior else (0.0, 0)
    pairs = [p for p in (good[:2], bad[:2]) if len(p) == 2 and min(p) > 0]
    if pairs:  # a pair's log ratio has twice one run's variance
        tonight = math.sqrt(sum(math.log(a / b) ** 2 for a, b in pairs) / (2 * len(pairs)))
        if tonight > sigma:
            sigma, df = tonight, len(pairs)
    if df < 1:
        return None
    return 100.0 * math.expm1(judge.t_quantile(df) * sigma * math.sqrt(2))


def drifted(finding: Finding, good_tonight: float) -> bool:
    """Does tonight's run of the last good commit sit outside the noise of its history (a
    machine slower or faster tonight, or a burst of load on that one run)?"""
    if finding.metric == OK_METRIC or not finding.baseline:
        return False
    return _against_history(finding, good_tonight).changed


def _against_history(finding: Finding, value: float) -> judge.Judgement:
    """One run judged by the test that found the finding, against the same points."""
    worse = worse_sign(finding.metric)
    if finding.judgement.test == judge.RANGE:
        return judge.beyond_range(finding.baseline, value, worse)
    return judge.compare_levels(
        list(finding.baseline), [value], worse, allow_noise_after=False, prior=finding.prior
    )


def better(metric: str, a: float | None, b: float | None) -> float | None:
    """The better of two runs of one commit: load only ever makes a run worse, so the better
    one is the closer to what the commit does."""
    if a is None or b is None:
        return a if b is None else b
    return min(a, b) if worse_sign(metric) > 0 else max(a, b)


def _noise_of(baseline: list[float]) -> judge.Prior | None:
    """One run's noise from the points before the change, for judging two single runs; None
    where it cannot be had (fewer than 2 points, zeros or negatives: no log scale)."""
    if len(baseline) < 2 or min(baseline) <= 0:
        return None
    sigma, df = judge.spread([math.log(v) for v in baseline])
    if df < 1 or not math.isfinite(sigma):
        return None
    return judge.Prior(sigma=sigma, df=df, source=f"the {len(baseline)} nights before the change")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 or word.endswith('s') else 's'}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _num(value: float | None, suffix: str = "", signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.1f}{suffix}" if signed else f"{value:.4g}{suffix}"


def _row(f: Finding, machines: bool) -> list[str]:
    j = f.judgement
    also = ", ".join(f"{m} {_num(c, '%', signed=True)}" for m, c in f.derived)
    metric = f.direction if f.metric == OK_METRIC else f"{f.metric} {f.direction}"
    row = [
        f"`{_cell(f.stage)}`",
        metric + (f" (with {also})" if also else ""),
        _num(j.change_pct, "%", signed=True),
        _num(j.before),
        _num(j.after),
        "-" if j.noise_pct is None else f"±{j.noise_pct:.2f}%",
        "-" if j.bar_pct is None else f"{j.bar_pct:.1f}%",
        f"{j.n_before} / {j.n_after}",
        f"`{f.good[:8]}`",
        f"`{f.bad[:8]}`",
        _state(f),
    ]
    if machines:
        row.insert(0, _cell(f"{f.machine} ({f.env})"))
    return row


def _state(f: Finding) -> str:
    if not f.new:
        return "standing"
    if f.confirmed is None:
        return "**new**"
    return "**new, confirmed**" if f.confirmed else "new, not confirmed"


def to_markdown(report: Report) -> str:
    """A job summary: one line when clean; tables and bisect commands otherwise."""
    scope = f"{_plural(report.checked, 'series')} over {_plural(report.commits, 'commit')}"
    lines: list[str] = []
    many = len(report.sources) > 1
    header = ["Stage", "Metric", "Change", "Before", "After", "Noise", "Bar", "Points"]
    header += ["Last good", "First bad", ""]
    if many:
        header.insert(0, "Machine")
    if not report.regressions:
        lines.append(f"No regressions in {scope}.")
    else:
        new = len(report.new)
        lines += [
            "### Performance regressions",
            "",
            f"{_plural(len(report.regressions), 'regression')} ({new} new) in {scope}.",
            "",
            "| " + " | ".join(header) + " |",
            "|" + "---|" * len(header),
        ]
        lines += ["| " + " | ".join(_row(f, many)) + " |" for f in report.regressions]
        notes = [
            f"- `{f.stage}` {f.metric}: {f.confirmation}" for f in report.new if f.confirmation
        ]
        if notes:
            lines += ["", "Re-measured before alarming:", *notes]
        lines += ["", "Bisect each one (last good, first bad):", "", "```sh"]
        lines += [f.bisect for f in report.regressions]
        lines.append("```")
    if report.improvements:
        lines += ["", f"Improvements: {len(report.improvements)}", ""]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(_row(f, many)) + " |" for f in report.improvements]
    if report.unjudged:
        by_reason: dict[str, int] = {}
        for reason in report.unjudged.values():
            by_reason[reason] = by_reason.get(reason, 0) + 1
        counts = "; ".join(f"{n} {reason}" for reason, n in sorted(by_reason.items()))
        lines += ["", f"Not judged: {len(report.unjudged)} series ({counts})."]
    if report.skipped_files:
        lines += ["", f"Unreadable result files skipped: {len(report.skipped_files)}"]
        lines += [f"- {_cell(s)}" for s in report.skipped_files[:10]]
    return "\n".join(lines)


def finite(value: object) -> object:
    """JSON has no NaN or infinity: strict parsers reject a report holding one."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def to_json(report: Report) -> str:
    return json.dumps(
        finite(
            {
                "regressions": [f.to_dict() for f in report.regressions],
                "improvements": [f.to_dict() for f in report.improvements],
                "new": len(report.new),
                "alarms": len(report.alarms),
                "checked": report.checked,
                "commits": report.commits,
                "latest": report.latest,
                "unjudged": report.unjudged,
                "skipped_files": report.skipped_files,
            }
        ),
        indent=2,
        allow_nan=False,
        default=str,
    )
