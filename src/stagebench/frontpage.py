"""The site's front page: the latest night's matrix as the seed's table, from stored results only.

One table per machine and environment (a lane), one row per stage: the status with its reason,
seed-formula MFU, model MFU, TFLOPS, peak memory, step time, the change against the previous
night and against a pinned baseline beside the stage's own noise band (the judge's), a trend line,
and links: asv's graph for every number, the stored Result, the bisect command when a regression
stands. Static HTML with inline CSS and SVG: no script, no request outside the site.

Reads asv's results, the JSON Lines store and the machine log; standard library and asv only.
"""

from __future__ import annotations

import html
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from stagebench import judge, lanes, noise, results
from stagebench.history import Point, Source, git_order, load
from stagebench.machine import read_log
from stagebench.metrics import OK_METRIC, family_of, metric_of, stage_class_of

# The columns, in the seed's order first: (metric, header, digits).
COLUMNS = (
    ("seed_mfu", "MFU %", 1),
    ("mfu", "model MFU %", 1),
    ("tflops", "TFLOPS", 0),
    ("peak_reserved_gib", "Mem GiB", 1),
    ("step_time_ms", "step ms", 1),
)
TREND_POINTS = 30


@dataclass
class Row:
    stage: str  # the stage's name (seed id or spec)
    asv_class: str  # stages.Stage_...
    status: str
    reason: str | None
    values: dict[str, float | None]
    trend: list[float]
    trend_metric: str
    vs_previous_pct: float | None
    vs_baseline_pct: float | None
    noise_pct: float | None
    verdict: str  # regressed, improved, same, unjudged
    mde_pct: float | None = None  # from the stage's noise measured over separate processes
    bisect: str | None = None
    result_link: str | None = None
    notes: list[str] = field(default_factory=list)
    time_by_group: str | None = None  # the stored profile's shares, shown on the step time
    # What the finding is about, when it is not the step time the change columns show (the
    # floor, memory, the first step): "step_floor_ms +3.0%".
    finding_of: str | None = None


def _value_at(points: list[Point], commit: str) -> float | None:
    return next((p.value for p in points if p.commit == commit), None)


def _stage_names(store: Path) -> dict[str, tuple[str, results.Result]]:
    """asv class -> (stage name, newest stored Result), and the same keyed by (class, commit)."""
    from stagebench.asv_suite import class_name_of

    names: dict[str, tuple[str, results.Result]] = {}
    for result in results.load(store) if store.is_file() else []:
        try:
            key = f"stages.{class_name_of(result)}"
        except ValueError:
            continue
        commit = (result.env or {}).get("commit")
        names[key] = (result.stage, result)
        if commit:
            names[f"{key}@{commit}"] = (result.stage, result)
    return names


def _pct(new: float | None, old: float | None) -> float | None:
    if new is None or old is None or old == 0:
        return None
    return 100.0 * (new / old - 1)


def rows_for(
    series: dict[str, list[Point]],
    latest: str,
    previous: str | None,
    baseline: str | None,
    stored: dict[str, tuple[str, results.Result]],
    findings: dict[str, object],
    priors: dict[tuple[str, str], judge.Prior] | None = None,
) -> list[Row]:
    by_class: dict[str, dict[str, list[Point]]] = {}
    for name, points in series.items():
        by_class.setdefault(stage_class_of(name), {})[metric_of(name)] = points
    rows = []
    for asv_class, metrics in sorted(by_class.items()):
        ok = _value_at(metrics.get(OK_METRIC, []), latest)
        stage, result = stored.get(f"{asv_class}@{latest}") or stored.get(asv_class) or (None, None)
        here = result is not None and (result.env or {}).get("commit") == latest
        if ok is None and not here:
            continue  # not measured tonight: skipped here (unavailable) or another suite
        status = result.status if here else ("ok" if ok and ok >= 0.5 else "failed")
        values = {m: _value_at(metrics.get(m, []), latest) for m, _, _ in COLUMNS}
        trend_metric = "seed_mfu" if values.get("seed_mfu") is not None else "step_time_ms"
        points = [p for p in metrics.get(trend_metric, []) if p.value is not None]
        lead = metrics.get("step_time_ms", [])
        measured = [float(p.value) for p in lead if p.value is not None]
        noise = None
        prior = (priors or {}).get((asv_class, "speed"))  # the noise shown is the step time's
        if len(measured) >= judge.MIN_BASELINE + 1:
            level = judge.baseline_at(measured[:-1], len(measured) - 2, prior)
            sigma, df = judge.spread([math.log(v) for v in level if v > 0])
            noise = 100 * math.expm1(sigma) if df else None
        if prior is not None:  # the judge's floor: the larger of the history's and the measured
            noise = max(noise or 0.0, 100 * math.expm1(prior.sigma))
        finding = findings.get(asv_class)
        rows.append(
            Row(
                stage=stage or asv_class.removeprefix("stages.Stage_"),
                asv_class=asv_class,
                status=status,
                reason=result.reason if here else None,
                values=values,
                trend=[float(p.value) for p in points][-TREND_POINTS:],
                trend_metric=trend_metric,
                vs_previous_pct=_pct(values["step_time_ms"], _value_at(lead, previous))
                if previous
                else None,
                vs_baseline_pct=_pct(values["step_time_ms"], _value_at(lead, baseline))
                if baseline and baseline != latest
                else None,
                noise_pct=noise,
                verdict=getattr(getattr(finding, "judgement", None), "verdict", "same")
                if finding
                else "same",
                bisect=getattr(finding, "bisect", None),
                finding_of=_finding_of(finding),
                mde_pct=None if prior is None else 100 * math.expm1(prior.mde),
                result_link=f"results/{asv_class.removeprefix('stages.')}.json" if here else None,
                notes=_notes(result) if here else [],
                time_by_group=_time_by_group(result) if here else None,
            )
        )
    return rows


def _time_by_group(result: results.Result) -> str | None:
    profile = result.metrics.profile if result.metrics else None
    return None if profile is None else f"where the time goes: {profile.summary()}"


def _notes(result: results.Result) -> list[str]:
    m = result.metrics
    if m is None or m.compile is None or not m.compile.fell_back:
        return []
    return [f"compile: {m.compile.summary()}"]


def _sparkline(values: list[float], higher_is_better: bool) -> str:
    if len(values) < 2:
        return ""
    lo, hi = min(values), max(values)
    span = (hi - lo) or 1.0
    width, height = 90, 22
    step = width / (len(values) - 1)
    coords = " ".join(
        f"{i * step:.1f},{height - 2 - (v - lo) / span * (height - 4):.1f}"
        for i, v in enumerate(values)
    )
    trend = "better" if (values[-1] >= values[0]) == higher_is_better else "worse"
    return (
        f'<svg class="spark {trend}" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" role="img" aria-label="trend of {len(values)} nights">'
        f'<polyline fill="none" points="{coords}"/></svg>'
    )


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _change(pct: float | None) -> str:
    return "-" if pct is None else f"{pct:+.1f}%"


def _finding_of(finding: object) -> str | None:
    """The finding's metric and change when it is not the speed family's (whose change the row's
    columns already show), so a floor regression is not read as the median's change."""
    metric = getattr(finding, "metric", None)
    if finding is None or metric in (None, OK_METRIC) or family_of(metric) == "speed":
        return None
    change = getattr(getattr(finding, "judgement", None), "change_pct", None)
    return metric if change is None else f"{metric} {change:+.1f}%"


def _row_html(row: Row) -> str:
    e = html.escape
    cells = [f'<td class="stage">{e(row.stage)}</td>']
    status = e(row.status) + ("*" if row.notes else "")
    title = f' title="{e(row.reason)}"' if row.reason else ""
    cells.append(f'<td class="status {e(row.status)}"{title}>{status}</td>')
    for metric, _, digits in COLUMNS:
        graph = f"asv.html#{row.asv_class}.track_{metric}"
        hint = row.time_by_group if metric == "step_time_ms" else None
        tooltip = f' title="{e(hint)}"' if hint else ""
        cells.append(
            f'<td class="num"{tooltip}><a href="{e(graph)}">'
            f"{_num(row.values[metric], digits)}</a></td>"
        )
    noise = "-" if row.noise_pct is None else f"±{row.noise_pct:.1f}%"
    if row.mde_pct is not None:
        noise += f" (MDE {row.mde_pct:.1f}%)"
    cells += [
        # The change cell is the step time's: coloured by a finding only when it is about it.
        f'<td class="num change {e("same" if row.finding_of else row.verdict)}">'
        f"{_change(row.vs_previous_pct)}</td>",
        f'<td class="num">{_change(row.vs_baseline_pct)}</td>',
        f'<td class="num noise">{noise}</td>',
        f'<td class="trend">{_sparkline(row.trend, row.trend_metric != "step_time_ms")}</td>',
    ]
    link = f'<a href="{e(row.result_link)}">Result</a>' if row.result_link else ""
    cells.append(f'<td class="links">{link}</td>')
    lines = [f'<tr class="{e(row.verdict)}">{"".join(cells)}</tr>']
    details = []
    if row.reason and row.status != "unavailable":  # unavailable ones are listed under the table
        short = row.reason if len(row.reason) <= 240 else row.reason[:240] + " ..."
        details.append(f"<b>{e(row.status)}</b>: {e(short)}")
    details += [e(n) for n in row.notes]
    if row.bisect:
        what = f" ({e(row.finding_of)})" if row.finding_of else ""
        details.append(f"regression{what}: <code>{e(row.bisect)}</code>")
    if details:
        lines.append(f'<tr class="detail"><td colspan="12">{"<br>".join(details)}</td></tr>')
    return "\n".join(lines)


def _lane_label(source: Source, canary: list[str]) -> str:
    """Which lane an asv environment is (lanes.py): the image's locked stack or the canary."""
    if source.env.startswith("canary-"):
        moved = f": {', '.join(canary)}" if canary else ""
        return f"canary lane, the newest releases{moved}"
    if source.env.startswith("interpreter-"):
        return "locked lane, the image's pins"
    return ""


def _lane_html(
    source: Source, latest: str, when: str, facts: dict, rows: list[Row], label: str = ""
) -> str:
    e = html.escape
    gpu = facts.get("gpu") or facts.get("cpu") or ""
    extra = ", ".join(
        f"{k} {facts[k]}" for k in ("gpu_count", "driver", "image") if facts.get(k) is not None
    )
    headers = ["stage", "status", *[h for _, h, _ in COLUMNS]]
    headers += ["vs previous", "vs baseline", "noise", "trend", ""]
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "\n".join(_row_html(r) for r in rows)
    missing: dict[str, list[str]] = {}
    for r in rows:
        if r.status == "unavailable":
            missing.setdefault(r.reason or "no reason given", []).append(r.stage)
    not_here = "".join(
        f"<li>{e(', '.join(stages))}: {e(reason)}</li>" for reason, stages in missing.items()
    )
    if not_here:
        not_here = f'<p class="meta">Unavailable here:</p><ul class="meta">{not_here}</ul>'

    bad = sum(r.verdict == "regressed" for r in rows)
    summary = (
        f"{len(rows)} stages, {bad} regressed" if bad else f"{len(rows)} stages, no regression"
    )
    return f"""<section>
<h2>{e(source.machine)} <small>{e(source.env)}{" · " + e(label) if label else ""}</small></h2>
<p class="meta">{e(gpu)}{" (" + e(extra) + ")" if extra else ""}. Night of {e(when)}, commit
<code>{e(latest[:12])}</code>: {e(summary)}.</p>
<div class="scroll"><table>
<thead><tr>{head}</tr></thead>
<tbody>
{body}
</tbody></table></div>
{not_here}
</section>"""


CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1rem auto; max-width: 1200px;
       padding: 0 0.5rem; color: #222; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.1rem; margin-top: 1.5rem; } small { color: #666; }
.meta, .legend { color: #555; font-size: 0.9rem; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; }
th, td { padding: 0.25rem 0.45rem; border-bottom: 1px solid #ddd; white-space: nowrap; }
th { text-align: left; background: #f4f4f4; position: sticky; top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.num a { color: inherit; text-decoration: none; } td.num a:hover { text-decoration: underline; }
td.status.ok { color: #176c2a; } td.status.unavailable { color: #777; }
td.status:not(.ok):not(.unavailable) { color: #a31515; font-weight: 600; }
tr.regressed td.stage, td.change.regressed { color: #a31515; font-weight: 600; }
td.change.improved { color: #176c2a; }
tr.detail td { white-space: normal; color: #555; font-size: 0.85rem; }
svg.spark polyline { stroke: #4477aa; stroke-width: 1.5; }
svg.spark.worse polyline { stroke: #cc6677; }
code { font-size: 0.85em; }
@media (max-width: 700px) {
  body { font-size: 13px; }
  td.stage { white-space: normal; word-break: break-word; min-width: 7rem; }
  th:nth-child(4), td:nth-child(4), th:nth-child(5), td:nth-child(5),
  th:nth-child(9), td:nth-child(9), th:nth-child(12), td:nth-child(12) { display: none; }
}
"""


def render(
    results_dir: Path,
    store: Path | None = None,
    baseline: str | None = None,
    title: str = "stagebench",
) -> tuple[str, dict[str, dict]]:
    """(index.html, {relative path: Result as JSON} to write beside it)."""
    from stagebench import regress

    results_dir = Path(results_dir)
    store = store or results_dir / results.STORE_NAME
    order = git_order()
    history = load(results_dir, order=order)
    stored = _stage_names(store)
    try:
        report = regress.check(results_dir, order=order)
        # One finding per row (machine, lane, stage): a regression of any family wins over an
        # improvement of another (the floor can drop while the median rises).
        found = {(f.machine, f.env, stage_class_of(f.benchmark)): f for f in report.improvements}
        found.update(
            {(f.machine, f.env, stage_class_of(f.benchmark)): f for f in report.regressions}
        )
    except regress.CannotJudge:
        found = {}
    log = read_log(results_dir)
    records = noise.load(results_dir)
    lane_log = lanes.read_log(results_dir)
    current = noise.versions(results_dir)  # the series' versions now
    sections, files = [], {}
    rank = {c: i for i, c in enumerate(order or ())}
    for source, series in sorted(history.series.items()):
        commits = sorted(
            {(rank.get(p.commit, -1), p.date, p.commit) for pts in series.values() for p in pts}
        )
        latest = commits[-1][2]
        previous = commits[-2][2] if len(commits) > 1 else None
        pinned = baseline if baseline else commits[0][2]
        mine = {c: f for (m, e, c), f in found.items() if (m, e) == (source.machine, source.env)}
        priors = noise.priors(records, source.machine, current)
        rows = rows_for(series, latest, previous, pinned, stored, mine, priors)
        facts = next(
            (e.get("facts", {}) for e in reversed(log) if e.get("machine") == source.machine), {}
        )
        when = next((e.get("date", "") for e in reversed(log) if e.get("commit") == latest), "")
        when = when.replace("T", " ")[:16] + " UTC" if when else ""
        canary = next(
            (x.get("canary", []) for x in reversed(lane_log) if x.get("machine") == source.machine),
            [],
        )
        label = _lane_label(source, canary)
        sections.append(_lane_html(source, latest, when or "-", facts, rows, label))
        for row in rows:
            if row.result_link:
                _, result = stored.get(f"{row.asv_class}@{latest}") or stored[row.asv_class]
                files[row.result_link] = result.to_dict()
    legend = (
        "MFU % and TFLOPS: the seed's formula (6N + attention, against 989 TFLOPS), from the "
        "median step; model MFU %: counted matmul FLOPs against the device's peak. Changes "
        "are of the median step time (lower is better); noise: one night's spread at the "
        "current level, by the judge, and the MDE (smallest change two nights can show at 95%) "
        "where the stage's noise was measured over separate processes. Each number links to "
        "its graph; * marks a compiled stage with graph breaks."
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}: the nightly matrix</title>
<style>{CSS}</style></head>
<body>
<h1>{html.escape(title)}: the nightly matrix</h1>
<p class="meta">The latest night of every machine, stage by stage. All graphs:
<a href="asv.html">asv's benchmark grid</a> · <a href="asv.html#regressions">regressions</a>.</p>
{chr(10).join(sections) or "<p>No history yet.</p>"}
<p class="legend">{html.escape(legend)}</p>
</body></html>
"""
    return page, files


def write(
    html_dir: Path, results_dir: Path, store: Path | None = None, baseline: str | None = None
) -> int:
    """Move asv's own index to asv.html and write the front page in its place; returns the
    number of stage rows."""
    html_dir = Path(html_dir)
    asv_index = html_dir / "index.html"
    asv_page = html_dir / "asv.html"
    if asv_index.is_file() and "stagebench: the nightly matrix" not in asv_index.read_text():
        asv_index.replace(asv_page)
    page, files = render(results_dir, store, baseline)
    for relative, data in files.items():
        target = html_dir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(regress_finite(data), indent=2, sort_keys=True))
    asv_index.write_text(page)
    return len(re.findall(r'<td class="stage">', page))


def regress_finite(data: object) -> object:
    from stagebench.regress import finite

    return finite(data)
