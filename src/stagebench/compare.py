"""Compare two commits of the asv history, or two JSON Lines result sets, by the judge's rules.

Commits: each series' value at the second commit is judged against the level the first commit
belongs to (its segment of history up to it), with that segment's own noise; fewer than
judge.MIN_BASELINE points there and the row says so instead of guessing.
Result sets: the two runs' own 95% confidence half-widths of the median step time (of the
step-time floor), added, are the noise of the speed (floor) family; where the history holds a
noise record (`stagebench noise`) for the machine and series both ran, the judge's rule for two
single points with that measured noise applies too, and the higher bar decides (one run's CI
misses what differs between processes). Memory is judged by the minimum effect alone; a
first-step time is one value per run, so it is shown, not judged.
Stages must have run the same workload.
`FILE#STAGE` on either side picks one stage, so two different stages can be compared (a side
without a selector takes the other side's stage); `#` because specs hold `:` and `=`.
Metrics of one family are one finding (see regress.py); ok -> failed always counts.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from stagebench import judge, noise, results, stats
from stagebench.history import CannotJudge, HistoryError, load
from stagebench.metrics import (
    FAMILY_LEAD,
    METRICS,
    OK_METRIC,
    family_of,
    metric_of,
    stage_class_of,
    worse_sign,
)
from stagebench.regress import finite

# What must agree for two Results to be the same measurement.
WORKLOAD_KEYS = ("model", "device", "dtype", "batch_size", "seq_len", "seed", "nproc")


@dataclass(frozen=True)
class Row:
    benchmark: str  # with the machine and environment when the history has several
    metric: str
    before: float | None
    after: float | None
    change_pct: float | None
    noise_pct: float | None
    bar_pct: float | None
    verdict: str  # regressed, improved, same, unjudged, missing
    note: str | None = None
    lead: bool = True  # False for a metric derived from its family's lead (not counted again)


def _row(benchmark: str, metric: str, j: judge.Judgement, note: str | None = None) -> Row:
    return Row(
        benchmark,
        metric,
        j.before,
        j.after,
        j.change_pct,
        j.noise_pct,
        j.bar_pct,
        j.verdict,
        note or j.reason,
    )


def _stage_of(benchmark: str) -> str:
    """A row's stage: the benchmark without its metric (`[machine] stages.Stage_x`)."""
    head, separator, _ = benchmark.rpartition(".track_")
    return head if separator else benchmark


def _mark_derived(rows: list[Row]) -> list[Row]:
    """Within each stage (and machine) and family, only the lead row counts; the others follow
    it."""
    out = []
    for r in rows:
        family = family_of(r.metric)
        leads = [
            x
            for x in rows
            if _stage_of(x.benchmark) == _stage_of(r.benchmark) and family_of(x.metric) == family
        ]
        lead_name = FAMILY_LEAD.get(family, r.metric)
        judged = [x for x in leads if x.verdict != "unjudged"] or leads
        counted = next((x for x in judged if x.metric == lead_name), judged[0])
        lead = r is counted
        if lead and family == "floor" and r.verdict in ("regressed", "improved"):
            # A floor that moved the way the median did is one change (every step slower), as
            # in `regressions`: listed, not counted twice.
            speed = FAMILY_LEAD["speed"]
            lead = not any(
                x.metric == speed and x.verdict == r.verdict
                for x in rows
                if _stage_of(x.benchmark) == _stage_of(r.benchmark)
            )
        out.append(Row(**{**asdict(r), "lead": lead}))
    return out


def resolve_commit(prefix: str, known: set[str]) -> str:
    prefix = prefix.strip()
    if not prefix:
        raise HistoryError("an empty commit was given; give a hash or a unique prefix of one")
    matches = sorted(c for c in known if c.startswith(prefix.lower()))
    if not matches:
        raise HistoryError(f"no results at commit {prefix!r} in the history")
    if len(matches) > 1:
        shown = ", ".join(m[:12] for m in matches[:4])
        raise HistoryError(f"commit prefix {prefix!r} is ambiguous: it matches {shown}")
    return matches[0]


def commits(
    results_dir: Path,
    a: str,
    b: str,
    machine: str | None = None,
    order: list[str] | None = None,
) -> list[Row]:
    history = load(results_dir, machine, order=order)
    known = history.commits()
    ca, cb = resolve_commit(a, known), resolve_commit(b, known)
    rows: list[Row] = []
    several = len(history.series) > 1
    records = noise.load(results_dir)
    current = noise.versions(results_dir)  # the series' versions now
    for source, series in sorted(history.series.items()):
        priors = noise.priors(records, source.machine, current)
        for name, points in sorted(series.items()):
            # Each machine and environment is judged on its own; the row says which.
            benchmark = f"[{source.machine} {source.env}] {name}" if several else name
            metric = metric_of(name)
            worse = worse_sign(metric)
            at = {p.commit: p.value for p in points}
            if worse is None or ca not in at or cb not in at:
                continue
            va, vb = at[ca], at[cb]
            if metric == OK_METRIC:
                if va is None or vb is None:
                    continue
                verdict = {(1, 0): "regressed", (0, 1): "improved"}.get((int(va), int(vb)), "same")
                rows.append(Row(benchmark, metric, va, vb, None, None, None, verdict))
                continue
            if va is None or vb is None:
                note = "not measured at " + (a if va is None else b)
                rows.append(Row(benchmark, metric, va, vb, None, None, None, "unjudged", note))
                continue
            measured = [p for p in points if p.value is not None]
            index = next(i for i, p in enumerate(measured) if p.commit == ca)
            prior = priors.get((stage_class_of(name), family_of(metric)))
            baseline = judge.baseline_at([float(p.value) for p in measured], index, prior)
            j = judge.compare_levels(
                baseline, [float(vb)], worse, allow_noise_after=False, prior=prior
            )
            note = f"{a} level: {len(baseline)} point(s)" + (f"; {j.reason}" if j.reason else "")
            rows.append(_row(benchmark, metric, j, note))
    if not rows:
        raise CannotJudge(f"no benchmark has results at both {a} and {b}")
    return _mark_derived(rows)


@dataclass(frozen=True)
class Pair:
    """One comparison of two Results: the same stage in two files, or two selected stages."""

    label: str
    before: results.Result | None
    after: results.Result | None
    missing_in: Path | None = None  # the file without the stage


def split_selector(value: str) -> tuple[str, str | None]:
    """`FILE#STAGE` -> (FILE, STAGE); an existing file's name is never split, whatever it holds.
    An empty stage after `#` is bad input."""
    if "#" not in value or Path(value).exists():
        return value, None
    path, _, stage = value.rpartition("#")
    if not stage.strip() or not path.strip():
        raise HistoryError(f"{value!r}: give FILE#STAGE, a result file and a stage in it")
    return path, stage.strip()


def _select(by_stage: dict[str, results.Result], stage: str, path: Path) -> results.Result:
    """A stage by its name (seed id or spec string as run) or by its spec."""
    if stage in by_stage:
        return by_stage[stage]
    matches = [r for r in by_stage.values() if r.spec == stage]
    if matches:
        return matches[-1]
    held = ", ".join(sorted(by_stage)) or "none"
    raise HistoryError(f"no stage {stage!r} in {path}; it holds: {held}")


def pairs_from_files(
    a: Path, b: Path, stage_a: str | None = None, stage_b: str | None = None
) -> list[Pair]:
    """Which Results to compare: every stage of either file by name, or the selected ones."""
    before, after = _latest_by_stage(a), _latest_by_stage(b)
    if stage_a is None and stage_b is None:
        return [
            Pair(
                stage,
                before.get(stage),
                after.get(stage),
                None if stage in before and stage in after else (a if stage not in before else b),
            )
            for stage in sorted(set(before) | set(after))
        ]
    sa, sb = stage_a or stage_b, stage_b or stage_a
    ra, rb = _select(before, sa, a), _select(after, sb, b)
    label = ra.stage if ra.stage == rb.stage else f"{ra.stage} -> {rb.stage}"
    return [Pair(label, ra, rb)]


def _latest_by_stage(path: Path) -> dict[str, results.Result]:
    if not path.exists():
        raise HistoryError(f"no such result file: {path}")
    if not path.is_file():
        raise HistoryError(f"{path} is not a file")
    loaded = results.load(path)
    if not loaded:
        raise CannotJudge(f"{path} holds no readable result")
    return {r.stage: r for r in loaded}


def _workload_differences(ra: results.Result, rb: results.Result) -> list[str]:
    wa, wb = ra.workload or {}, rb.workload or {}
    return [
        f"{key} {wa.get(key)!r} vs {wb.get(key)!r}"
        for key in WORKLOAD_KEYS
        if wa.get(key) != wb.get(key)
    ]


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _ci(value: object) -> float | None:
    """A confidence half-width in %, or None where it is missing or impossible (negative)."""
    number = _number(value)
    return number if number is not None and number >= 0 else None


def result_sets(
    a: Path,
    b: Path,
    stage_a: str | None = None,
    stage_b: str | None = None,
    records: list[noise.StageNoise] | None = None,
) -> list[Row]:
    return pair_rows(pairs_from_files(a, b, stage_a, stage_b), a, b, records)


def _measured_priors(
    ra: results.Result, rb: results.Result, records: list[noise.StageNoise]
) -> dict[str, judge.Prior]:
    """{family: prior} of the speed and floor families from the noise records of the machine
    both runs ran on, for the series both ran; empty where the runs name different or no GPUs,
    ran another spec than their stage's now, or another series (spec, shape, collector ...)."""
    from stagebench.workload import Workload, shape_name

    gpu = noise.gpu_of(ra)
    if gpu is None or gpu != noise.gpu_of(rb) or ra.spec != rb.spec:
        return {}  # the override names a history, not the runs' machine: the envs must agree
    try:
        series = noise.series_of(ra)
        same = series == noise.series_of(rb)
        shape = shape_name(Workload.from_dict(ra.workload))
    except (ValueError, TypeError):  # a stage unknown now, a GPU that makes no machine name
        return {}
    machine, asv_class, version = series
    if machine is None or not same:
        return {}
    mine = [r for r in records if r.shape == shape]  # older records keep no version
    found = noise.priors(mine, machine, {asv_class: version})
    return {
        family: prior
        for (cls, family), prior in found.items()
        if cls == asv_class and family in results.WITHIN_RUN_CI_FAMILIES
    }


def _judge_pair(
    va: float, vb: float, worse: int, within: float | None, prior: judge.Prior | None
) -> tuple[judge.Judgement, bool]:
    """Two single runs: by their own CIs added (`within`), and, with a measured prior, by the
    judge's rule for two single points with that noise (as `regressions` and the nightly
    judge); the higher bar decides, so neither what one run's CI misses between processes nor
    a run noisier than the record passes for a change. True where the prior decided."""
    own = judge.compare_runs(va, vb, worse, within)
    if prior is None or va <= 0 or vb <= 0:
        return own, False
    measured = judge.compare_levels([va], [vb], worse, prior=prior)
    if (measured.bar_pct or 0.0) <= (own.bar_pct or 0.0):
        return own, False
    sigma = 100 * math.expm1(prior.sigma)
    why = (
        f"noise {sigma:.2f}% of {prior.source}: the judge's bar for two single runs "
        f"(Student's t, {prior.df} degrees of freedom)"
    )
    return dataclasses.replace(measured, reason=why), True


def pair_rows(
    pairs: list[Pair], a: Path, b: Path, records: list[noise.StageNoise] | None = None
) -> list[Row]:
    """`records`: the noise log of the history (`stagebench noise`); where the two runs share
    a GPU and a series with a record, the speed and floor families are also judged by the
    judge's rule for two single points with that noise (see _judge_pair), since each run's own
    CI misses what differs between processes."""
    mismatched = [
        f"{pair.label}: {', '.join(diff)}"
        for pair in pairs
        if pair.before is not None
        and pair.after is not None
        and (diff := _workload_differences(pair.before, pair.after))
    ]
    if mismatched:
        raise HistoryError(
            f"{a} and {b} ran different workloads, which do not compare: {'; '.join(mismatched)}"
        )
    rows: list[Row] = []
    for pair in pairs:
        stage, ra, rb = pair.label, pair.before, pair.after
        if ra is None or rb is None:
            missing = Row(stage, OK_METRIC, None, None, None, None, None, "missing")
            rows.append(Row(**{**asdict(missing), "note": f"no result in {pair.missing_in}"}))
            continue
        priors = _measured_priors(ra, rb, records or [])
        ok = (int(ra.status == "ok"), int(rb.status == "ok"))
        verdict = {(1, 0): "regressed", (0, 1): "improved"}.get(ok, "same")
        note = f"{ra.status} -> {rb.status}" if ra.status != rb.status else None
        rows.append(Row(stage, OK_METRIC, *ok, None, None, None, verdict, note))
        if ra.metrics is None or rb.metrics is None:
            continue
        for metric in METRICS.values():
            va = _number(getattr(ra.metrics, metric.key))
            vb = _number(getattr(rb.metrics, metric.key))
            if va is None or vb is None:
                note = "not measured" if va is None and vb is None else "measured on one side only"
                rows.append(Row(stage, metric.name, va, vb, None, None, None, "unjudged", note))
                continue
            if metric.family == "first_step":
                j = judge.compare_runs(va, vb, metric.worse, None)
                j = judge.Judgement(judge.UNJUDGED, "one value per run: no noise to judge by",
                                    before=va, after=vb, change_pct=j.change_pct)  # fmt: skip
            else:
                # Speed and the floor: both runs' own CIs of the median or the floor, added;
                # memory has none and is judged by the minimum effect alone, as its row says.
                cis = [_ci(m.ci95_pct_of(metric.family)) for m in (ra.metrics, rb.metrics)]
                within = None if None in cis else sum(c for c in cis if c is not None)
                j, by_prior = _judge_pair(va, vb, metric.worse, within, priors.get(metric.family))
                if metric.family == "floor" and within is None and not by_prior:
                    steps = stats.FLOOR_MIN_CI_STEPS
                    why = f"no 95% CI of the floor under {steps} steps: the minimum effect alone"
                    j = dataclasses.replace(j, reason=why)
            rows.append(_row(stage, metric.name, j))
    return _mark_derived(rows)


def regressed(rows: list[Row]) -> int:
    return sum(r.verdict == "regressed" and r.lead for r in rows)


def exit_code(rows: list[Row]) -> int:
    """1 a regression; 3 a stage missing on one side or nothing judged at all (cannot judge);
    0 clean."""
    if regressed(rows):
        return 1
    if any(r.verdict == "missing" for r in rows):
        return 3
    if not any(r.verdict in ("regressed", "improved", "same") for r in rows):
        return 3
    return 0


def _num(value: float | None, digits: int = 2, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def to_markdown(rows: list[Row], a: str, b: str) -> str:
    marks = {"regressed": "🔴 regressed", "improved": "🟢 improved", "missing": "⚠️ missing"}
    lines = [
        f"### stagebench compare: {a} -> {b}",
        "",
        "| Benchmark | Metric | Before | After | Change % | Noise % | Bar % | Verdict | Note |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    order = {"regressed": 0, "missing": 1, "improved": 2}
    for r in sorted(rows, key=lambda r: (order.get(r.verdict, 3), r.benchmark, r.metric)):
        verdict = marks.get(r.verdict, r.verdict) if r.lead else f"({r.verdict}, derived)"
        lines.append(
            f"| {r.benchmark} | {r.metric} | {_num(r.before)} | {_num(r.after)} | "
            f"{_num(r.change_pct, 1, signed=True)} | {_num(r.noise_pct, 1)} | "
            f"{_num(r.bar_pct, 1)} | {verdict} | {(r.note or '').replace('|', '/')} |"
        )
    judged = sum(r.lead and r.verdict in ("regressed", "improved", "same") for r in rows)
    missing = sum(r.verdict == "missing" for r in rows)
    tail = f"{regressed(rows)} significant regression(s) in {judged} judged comparison(s)"
    lines += ["", tail + (f"; {missing} stage(s) missing on one side." if missing else ".")]
    return "\n".join(lines)


def to_json(rows: list[Row], extra: dict | None = None) -> str:
    """The rows and their counts; `extra` (the explanations) is added as given."""
    return json.dumps(
        finite(
            {
                "rows": [asdict(r) for r in rows],
                "regressed": regressed(rows),
                "missing": sum(r.verdict == "missing" for r in rows),
                **(extra or {}),
            }
        ),
        indent=2,
        allow_nan=False,
    )
