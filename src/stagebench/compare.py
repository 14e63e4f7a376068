"""Compare two commits from the asv history, or two JSON Lines result sets, direction-aware.

A change is significant when it is worse (or better) by more than both MIN_EFFECT and the noise:
for commits, twice the sigma regress.noise() measures on that metric's own history; for result
sets, the two runs' own 95% confidence half-widths of the median step time added together (for
the metrics derived from it). ok -> failed is always significant.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from stagebench import regress, results
from stagebench.asv_suite import METRICS

MIN_EFFECT_PCT = 2.0
NOISE_SIGMAS = 2.0
# Metrics computed from the median step time share its confidence interval.
FROM_STEP_TIME = ("mfu", "seed_mfu", "tflops", "tokens_per_s", "step_time_ms")


@dataclass(frozen=True)
class Row:
    benchmark: str
    metric: str
    before: float | None
    after: float | None
    change_pct: float | None
    noise_pct: float | None
    verdict: str  # "regressed", "improved", "same", "n/a"


def _verdict(
    metric: str, before: float | None, after: float | None, noise_pct: float | None
) -> tuple[float | None, str]:
    if metric == "ok":
        if before is None or after is None:
            return None, "n/a"
        return None, {(1, 0): "regressed", (0, 1): "improved"}.get((before, after), "same")
    if before is None or after is None or before == 0:
        return None, "n/a"
    change = 100.0 * (after - before) / abs(before)
    worse = regress.worse_sign(metric)
    bar = max(MIN_EFFECT_PCT, noise_pct or 0.0)
    if worse is None or abs(change) <= bar:
        return change, "same"
    return change, "regressed" if change * worse > 0 else "improved"


def _find(points: list[regress.Point], prefix: str) -> regress.Point | None:
    matches = [p for p in points if p.commit.startswith(prefix)]
    return matches[-1] if matches else None


def commits(results_dir: Path, a: str, b: str, machine: str | None = None) -> list[Row]:
    history = regress.load_history(results_dir, machine)
    rows: list[Row] = []
    for series in history.values():
        for benchmark, points in sorted(series.items()):
            pa, pb = _find(points, a), _find(points, b)
            if pa is None or pb is None:
                continue
            metric = regress.metric_of(benchmark)
            values = [p.value for p in points if p.value is not None]
            noise_pct = None
            if len(values) >= 3 and pa.value:
                noise_pct = 100.0 * NOISE_SIGMAS * regress.noise(values) / abs(pa.value)
            change, verdict = _verdict(metric, pa.value, pb.value, noise_pct)
            rows.append(Row(benchmark, metric, pa.value, pb.value, change, noise_pct, verdict))
    if not rows:
        raise regress.RegressError(f"no benchmark has results at both {a} and {b}")
    return rows


def _latest_by_stage(path: Path) -> dict[str, results.Result]:
    if not path.is_file():
        raise regress.RegressError(f"no result file at {path}")
    return {r.stage: r for r in results.load(path)}


def result_sets(a: Path, b: Path) -> list[Row]:
    before, after = _latest_by_stage(a), _latest_by_stage(b)
    rows: list[Row] = []
    for stage in sorted(set(before) & set(after)):
        ra, rb = before[stage], after[stage]
        ok = (int(ra.status == "ok"), int(rb.status == "ok"))
        rows.append(Row(stage, "ok", *ok, None, None, _verdict("ok", *ok, None)[1]))
        if ra.metrics is None or rb.metrics is None:
            continue
        spread = [m.step_time_ci95_pct for m in (ra.metrics, rb.metrics)]
        ci = sum(spread) if None not in spread else None
        for metric, (_, key, _) in METRICS.items():
            va, vb = getattr(ra.metrics, key), getattr(rb.metrics, key)
            noise_pct = ci if metric in FROM_STEP_TIME else None
            change, verdict = _verdict(metric, va, vb, noise_pct)
            rows.append(Row(stage, metric, va, vb, change, noise_pct, verdict))
    if not rows:
        raise regress.RegressError(f"{a} and {b} share no stage")
    return rows


def _num(value: float | None, digits: int = 2, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def to_markdown(rows: list[Row], a: str, b: str) -> str:
    marks = {"regressed": "🔴 regressed", "improved": "🟢 improved"}
    lines = [
        f"### stagebench compare: {a} -> {b}",
        "",
        "| Benchmark | Metric | Before | After | Change % | Noise % | Verdict |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    shown = [r for r in rows if r.verdict != "n/a"]
    for r in sorted(shown, key=lambda r: (r.verdict != "regressed", r.benchmark, r.metric)):
        lines.append(
            f"| {r.benchmark} | {r.metric} | {_num(r.before)} | {_num(r.after)} | "
            f"{_num(r.change_pct, 1, signed=True)} | {_num(r.noise_pct, 1)} | "
            f"{marks.get(r.verdict, r.verdict)} |"
        )
    bad = sum(r.verdict == "regressed" for r in rows)
    lines += ["", f"{bad} significant regression(s) in {len(shown)} comparison(s)."]
    return "\n".join(lines)


def to_json(rows: list[Row]) -> str:
    return json.dumps(
        {
            "rows": [asdict(r) for r in rows],
            "regressed": sum(r.verdict == "regressed" for r in rows),
        },
        indent=2,
    )
