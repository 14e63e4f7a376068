"""Why the time changed: two Results' profiles side by side (`stagebench compare --explain`).

For each pair compare chose (the same stage in two files or commits, or two selected stages):
wall, device-busy and host-gap time per step, time per kernel group before and after, and the
kernels whose time per step changed most. A side without a profile is said, never guessed.
Reads stored Results only: no torch.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from stagebench import results
from stagebench.compare import Pair, resolve_commit
from stagebench.history import CannotJudge
from stagebench.regress import finite

TOP_CHANGES = 10


@dataclass(frozen=True)
class Change:
    name: str
    before_ms: float | None  # per step; None: not among that side's listed kernels
    after_ms: float | None
    change_ms: float  # an unlisted side counts as 0
    change_pct: float | None
    group: str | None = None  # kernels only
    calls_before: float | None = None
    calls_after: float | None = None


@dataclass(frozen=True)
class Explanation:
    label: str
    note: str | None = None  # why nothing is explained, or what to keep in mind
    source: str | None = None
    steps: tuple[int, int] | None = None
    totals: list[Change] = field(default_factory=list)  # wall, device busy, host gap
    groups: list[Change] = field(default_factory=list)
    kernels: list[Change] = field(default_factory=list)
    host_syncs: tuple[str | None, str | None] | None = None  # each side's notes.host_syncs


def _change(
    name: str,
    before: float | None,
    after: float | None,
    group: str | None = None,
    calls_before: float | None = None,
    calls_after: float | None = None,
) -> Change:
    delta = (after or 0.0) - (before or 0.0)
    pct = round(100.0 * delta / before, 1) if before else None
    return Change(name, before, after, round(delta, 4), pct, group, calls_before, calls_after)


def _why_none(result: results.Result | None, side: str) -> str:
    if result is None:
        return f"no result on the {side} side"
    if result.status != "ok" or result.metrics is None:
        return f"{side}: {result.stage} is {result.status}, nothing was profiled"
    reason = result.metrics.notes.get("profile")
    if reason:
        return f"{side}: {result.stage} has no profile ({reason})"
    return f"{side}: {result.stage} has no profile (measured before Result schema 4)"


def _kernels(profile: results.ProfileMetrics) -> dict[tuple[str, str], results.KernelTime]:
    return {(k.name, k.group): k for k in profile.kernels}


def _host_syncs(pair: Pair) -> tuple[str | None, str | None] | None:
    """Each side's notes.host_syncs, where either side has one (with or without a profile)."""
    before, after = (
        r.metrics.notes.get("host_syncs") if r and r.metrics else None
        for r in (pair.before, pair.after)
    )
    return (before, after) if before or after else None


def explain(pair: Pair, top: int = TOP_CHANGES) -> Explanation:
    pa = pair.before.metrics.profile if pair.before and pair.before.metrics else None
    pb = pair.after.metrics.profile if pair.after and pair.after.metrics else None
    if pa is None or pb is None:
        sides = ((pair.before, pa, "before"), (pair.after, pb, "after"))
        why = [_why_none(r, side) for r, p, side in sides if p is None]
        return Explanation(pair.label, note="; ".join(why), host_syncs=_host_syncs(pair))
    kind_a, kind_b = pa.source.split(":")[0], pb.source.split(":")[0]
    if kind_a != kind_b:
        return Explanation(
            pair.label,
            note=f"profiles of different kinds ({kind_a} vs {kind_b})",
            host_syncs=_host_syncs(pair),
        )
    totals = [
        _change("wall", pa.wall_ms_per_step, pb.wall_ms_per_step),
        _change("device busy", pa.busy_ms_per_step, pb.busy_ms_per_step),
        _change("host gap", pa.host_gap_ms_per_step, pb.host_gap_ms_per_step),
    ]
    names = list(dict.fromkeys([*pa.groups, *pb.groups]))
    groups = [
        _change(
            g,
            pa.groups[g].ms_per_step if g in pa.groups else 0.0,
            pb.groups[g].ms_per_step if g in pb.groups else 0.0,
        )
        for g in names
    ]
    groups.sort(key=lambda c: -abs(c.change_ms))
    ka, kb = _kernels(pa), _kernels(pb)
    # A kernel missing from a side that listed everything it saw took no time there; missing
    # from a truncated list, it was below that side's top N: unknown, counted as 0.
    absent_a = 0.0 if pa.kernels_seen <= len(pa.kernels) else None
    absent_b = 0.0 if pb.kernels_seen <= len(pb.kernels) else None
    kernels = []
    for key in dict.fromkeys([*ka, *kb]):
        a, b = ka.get(key), kb.get(key)
        kernels.append(
            _change(
                key[0],
                a.ms_per_step if a else absent_a,
                b.ms_per_step if b else absent_b,
                group=key[1],
                calls_before=a.calls_per_step if a else None,
                calls_after=b.calls_per_step if b else None,
            )
        )
    kernels.sort(key=lambda c: -abs(c.change_ms))
    note = None
    if absent_a is None or absent_b is None:
        note = (
            f"kernels are each side's top {max(len(pa.kernels), len(pb.kernels))}; one missing "
            "from a side was below it there (shown as -, counted as 0)"
        )
    return Explanation(
        pair.label,
        note=note,
        host_syncs=_host_syncs(pair),
        source=pa.source if pa.source == pb.source else f"{pa.source} | {pb.source}",
        steps=(pa.steps, pb.steps),
        totals=totals,
        groups=groups,
        kernels=kernels[:top],
    )


def pairs_from_store(store: Path, a: str, b: str) -> list[Pair]:
    """The Results the store (asv's stagebench-results.jsonl) holds for two commits, paired by
    stage and process count: a commit's Results are those whose env names it."""
    if not store.is_file():
        raise CannotJudge(f"no stored Results to explain with: {store} is not a file")
    loaded = results.load(store)
    known = {str((r.env or {}).get("commit")) for r in loaded if (r.env or {}).get("commit")}
    ca, cb = resolve_commit(a, known), resolve_commit(b, known)

    def at(commit: str) -> dict[str, results.Result]:
        chosen = {}
        for r in loaded:
            if (r.env or {}).get("commit") == commit:
                nproc = (r.workload or {}).get("nproc")
                chosen[r.stage + (f" ({nproc} ranks)" if nproc else "")] = r
        return chosen

    before, after = at(ca), at(cb)
    return [
        Pair(label, before.get(label), after.get(label))
        for label in sorted(set(before) | set(after))
    ]


def explain_all(pairs: list[Pair]) -> list[Explanation]:
    return [explain(p) for p in pairs if p.before is not None or p.after is not None]


def _ms(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1f}"


def _cell(text: str) -> str:
    return text.replace("|", "/").replace("\n", " ")


def to_markdown(explanations: list[Explanation], a: str, b: str, note: str | None = None) -> str:
    lines = [f"### Where the time went: {a} -> {b}"]
    if note:
        lines += ["", f"Nothing to explain: {note}."]
    elif not explanations:
        lines += ["", "No stage on both sides to explain."]
    for e in explanations:
        lines += ["", f"#### {e.label}", ""]
        if not e.totals:
            lines.append(f"Nothing to explain: {e.note}.")
            lines += _host_syncs_lines(e)
            continue
        steps = e.steps or (0, 0)
        lines.append(f"{e.source}; {steps[0]} and {steps[1]} profiled step(s).")
        lines += [
            "",
            "| Time per step | Before ms | After ms | Change ms | Change % |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for c in e.totals:
            lines.append(
                f"| {c.name} | {_ms(c.before_ms)} | {_ms(c.after_ms)} | "
                f"{_ms(c.change_ms, True)} | {_pct(c.change_pct)} |"
            )
        for c in e.groups:
            lines.append(
                f"| group: {c.name} | {_ms(c.before_ms)} | {_ms(c.after_ms)} | "
                f"{_ms(c.change_ms, True)} | {_pct(c.change_pct)} |"
            )
        lines += [
            "",
            f"Kernels whose time changed most (top {TOP_CHANGES} by ms per step):",
            "",
            "| Kernel | Group | Before ms | After ms | Change ms | Calls per step |",
            "| --- | --- | ---: | ---: | ---: | --- |",
        ]
        for c in e.kernels:
            calls = f"{_calls(c.calls_before)} -> {_calls(c.calls_after)}"
            lines.append(
                f"| `{_cell(c.name)}` | {c.group} | {_ms(c.before_ms)} | {_ms(c.after_ms)} | "
                f"{_ms(c.change_ms, True)} | {calls} |"
            )
        lines += _host_syncs_lines(e)
        if e.note:
            lines += ["", f"Note: {e.note}."]
    return "\n".join(lines)


def _host_syncs_lines(e: Explanation) -> list[str]:
    if not e.host_syncs:
        return []
    # In code spans: names like <inductor-generated code> would be read as HTML tags.
    before, after = (f"`{_cell(side or 'not counted')}`" for side in e.host_syncs)
    return ["", f"Host syncs inside a step: before {before}; after {after}."]


def _calls(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def to_dicts(explanations: list[Explanation]) -> list[dict]:
    return [finite(asdict(e)) for e in explanations]


def to_json(explanations: list[Explanation]) -> str:
    return json.dumps(to_dicts(explanations), indent=2, allow_nan=False)
