"""Two lanes every night: the locked stack (the image, its pins) and the canary (the newest
releases of the tracked packages, layered over it).

The canary is an overlay (overlay.py) holding the newest release of every tracked package the
locked stack has, from the index or a wheel directory. asv measures it as an environment of its
own (`canary-py3.X` beside `interpreter-py3.X`: asv_env.py), so both lanes are series in the
history and the site shows them side by side. Where the newest releases are the locked ones,
there is nothing to measure and the night says so.

Tonight's canary diverges from tonight's locked lane when a stage that is ok there fails in the
canary, or its step time differs beyond the stage's noise (its measured MDE where `stagebench
noise` recorded one, else both runs' own confidence intervals). A new divergence is bisected
across the releases between the lanes (depbisect: one package moved, its releases; several,
which package first) and the alarm carries the answer. A divergence already alarmed with the
same canary versions stands: reported with its earlier answer, not bisected or alarmed again.

Configuration (the workflow's environment):
    STAGEBENCH_LANES             locked (default) or locked,canary
    STAGEBENCH_CANARY_PACKAGES   tracked packages (default: torch, transformers, liger-kernel,
                                 cut-cross-entropy, kernels, flash-attn); only those the locked
                                 stack has are followed
    STAGEBENCH_CANARY_FIND_LINKS a wheel directory (offline runners) instead of the index
    STAGEBENCH_CANARY_INDEX_URL  a PEP 691/503 index (default: PyPI)
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from packaging.utils import canonicalize_name

from stagebench import judge, releases
from stagebench.history import History, Source

TRACKED = ("torch", "transformers", "liger-kernel", "cut-cross-entropy", "kernels", "flash-attn")
LOG_NAME = "stagebench-lanes.jsonl"
LOCKED, CANARY = "locked", "canary"
MAX_BISECTS = 1  # per night (GPU time); other new divergences get the command to run
FAILED, SLOWER, FASTER, FIXED = "failed", "slower", "faster", "fixed"
ALARMING = (FAILED, SLOWER)


class LaneError(ValueError):
    """A lane setting the nightly cannot use: bad input, one line."""


def parse_lanes(text: str) -> list[str]:
    lanes = list(dict.fromkeys(lane.strip() for lane in text.split(",") if lane.strip()))
    if lanes not in ([LOCKED], [LOCKED, CANARY], [CANARY, LOCKED]):
        raise LaneError(
            f"STAGEBENCH_LANES={text!r}: give {LOCKED} or {LOCKED},{CANARY} "
            "(the locked lane always runs)"
        )
    return lanes


def followed(base_packages: dict[str, str]) -> list[str]:
    """The tracked packages the locked stack has (a canary adds no package the image lacks)."""
    text = os.environ.get("STAGEBENCH_CANARY_PACKAGES")
    names = re.split(r"[,\s]+", text.strip()) if text else list(TRACKED)
    return [n for n in names if n and canonicalize_name(n) in base_packages]


def source() -> releases.Source:
    links = os.environ.get("STAGEBENCH_CANARY_FIND_LINKS")
    if links:
        if not Path(links).is_dir():
            raise LaneError(f"STAGEBENCH_CANARY_FIND_LINKS={links!r} is not a directory")
        return releases.Source(find_links=Path(links).resolve())
    index = os.environ.get("STAGEBENCH_CANARY_INDEX_URL") or releases.PYPI
    return releases.Source(index_url=index.rstrip("/"))


def env_name(lane: str, python_version: str) -> str:
    """asv's environment name of a lane (asv_env.py's `interpreter` and `canary`)."""
    return f"{'interpreter' if lane == LOCKED else CANARY}-py{python_version}"


@dataclass
class Divergence:
    stage_class: str  # stages.Stage_...
    kind: str  # failed, slower (alarming); faster, fixed (reported)
    locked: float  # step time in ms, or ok (1/0)
    canary: float
    change_pct: float | None = None
    bar_pct: float | None = None
    note: str = ""
    new: bool = True  # False: alarmed on an earlier night with the same canary versions
    # What diverged: the median step time, or (the median not slower) the step-time floor.
    metric: str = "step_time_ms"
    answer: dict[str, Any] | None = None  # the release bisect: verdict line, table rows

    @property
    def stage(self) -> str:
        return self.stage_class.rsplit(".", 1)[-1]

    @property
    def alarms(self) -> bool:
        return self.kind in ALARMING and self.new


def _value(series: dict[str, list], name: str, commit: str) -> float | None:
    return next((p.value for p in series.get(name, []) if p.commit == commit), None)


def _ci(result: Any, family: str = "speed") -> float | None:
    metrics = getattr(result, "metrics", None)
    return None if metrics is None else metrics.ci95_pct_of(family)


def divergences(
    history: History,
    machine: str,
    commit: str,
    python_version: str,
    tonight: dict[tuple[str, str], Any] | None = None,
    priors: dict[tuple[str, str], judge.Prior] | None = None,
) -> list[Divergence]:
    """Stages whose canary differs from the locked lane at `commit` beyond noise. `tonight`:
    (lane, stage class) -> tonight's Result, for the two runs' confidence intervals."""
    locked = history.series.get(Source(machine, env_name(LOCKED, python_version)), {})
    canary = history.series.get(Source(machine, env_name(CANARY, python_version)), {})

    def classes(series: dict) -> set[str]:
        return {name.rsplit(".track_", 1)[0] for name in series}

    found = []
    for cls in sorted(classes(locked) & classes(canary)):
        ok_l = _value(locked, f"{cls}.track_ok", commit)
        ok_c = _value(canary, f"{cls}.track_ok", commit)
        if ok_l is None or ok_c is None:
            continue  # not measured in a lane tonight (unavailable there)
        if (ok_l >= 0.5) != (ok_c >= 0.5):
            kind = FAILED if ok_l >= 0.5 else FIXED
            found.append(Divergence(cls, kind, ok_l, ok_c, -100.0 if kind == FAILED else None))
            continue
        # What users feel first, the median; unless it is slower, the floor too (a kernel a new
        # release slowed under a noisy or faster median), each with its own noise.
        for metric, family in (("step_time_ms", "speed"), ("step_floor_ms", "floor")):
            step_l = _value(locked, f"{cls}.track_{metric}", commit)
            step_c = _value(canary, f"{cls}.track_{metric}", commit)
            if not (step_l and step_c and step_l > 0 and step_c > 0):
                continue
            prior = (priors or {}).get((cls, family))
            if prior is not None:
                j = judge.compare_levels([step_l], [step_c], 1, prior=prior)
            else:
                cis = [_ci((tonight or {}).get((lane, cls)), family) for lane in (LOCKED, CANARY)]
                j = judge.compare_runs(step_l, step_c, 1, None if None in cis else sum(cis))
            if j.changed:
                kind = SLOWER if j.verdict == judge.REGRESSED else FASTER
                note = j.reason or "noise: both runs' 95% confidence intervals"
                if metric != "step_time_ms":
                    note = f"{metric}, beside the median; {note}"
                change = (step_l, step_c, j.change_pct, j.bar_pct, note)
                found.append(Divergence(cls, kind, *change, metric=metric))
                if kind == SLOWER:
                    break  # the floor of a slower median is part of that divergence
    return found


# The lanes log: what each night's canary held, and what it found.


def read_log(results_dir: Path) -> list[dict[str, Any]]:
    try:
        lines = (Path(results_dir) / LOG_NAME).read_bytes().splitlines()
    except OSError:
        return []
    entries = []
    for line in lines:
        try:
            entry = json.loads(line.decode("utf-8-sig"))
        except (UnicodeDecodeError, ValueError):
            continue  # a torn or foreign line; the log is a record, not a source of truth
        if isinstance(entry, dict) and isinstance(entry.get("machine"), str):
            entries.append(entry)
    return entries


def append_log(results_dir: Path, entry: dict[str, Any]) -> None:
    from stagebench.results import append_line

    append_line(Path(results_dir) / LOG_NAME, json.dumps(entry, sort_keys=True, default=str))


def mark_standing(
    found: list[Divergence], log: list[dict[str, Any]], machine: str, canary: list[str]
) -> None:
    """A divergence alarmed on an earlier night with the same canary versions stands: it keeps
    that night's answer and is neither bisected nor alarmed again."""
    earlier = {
        (d.get("stage_class"), d.get("kind"), d.get("metric", "step_time_ms")): d
        for entry in log
        if entry.get("machine") == machine and entry.get("canary") == canary
        for d in entry.get("divergences", [])
        if isinstance(d, dict) and d.get("new")
    }
    for d in found:
        before = earlier.get((d.stage_class, d.kind, d.metric))
        if before is not None:
            d.new = False
            d.answer = before.get("answer")


def log_entry(
    machine: str, commit: str, canary: list[str], state: str, found: list[Divergence]
) -> dict[str, Any]:
    return {
        "machine": machine,
        "commit": commit,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "canary": canary,  # "name old -> new" of every tracked package it moved
        "state": state,  # measured, same-as-locked, or why it could not be built
        "divergences": [asdict(d) for d in found],
    }


# Naming the release behind a divergence.


def moved(changed: list[Any], tracked: list[str]) -> list[tuple[str, str, str]]:
    """(package, locked version, canary version) of every tracked package the canary moved."""
    names = {canonicalize_name(n) for n in tracked}
    return [(c.name, c.old, c.new) for c in changed if c.name in names and c.old and c.new]


def same_version(pin: str, base_packages: dict[str, str]) -> bool:
    """Whether `name==version` is what the locked stack already has."""
    name, _, version = pin.partition("==")
    return base_packages.get(canonicalize_name(name.split("[")[0])) == version


def bisect(
    d: Divergence,
    packages: list[tuple[str, str, str]],
    workdir: Path,
    src: releases.Source,
    night_store: Path | None = None,
) -> dict[str, Any]:
    """`stagebench bisect-release` for one divergence, in this process: one package moved, its
    releases between the lanes; several, which package first (lock mode). Its Results go to
    `workdir`, never the history; tonight's reference (`night_store`) is reused. Returns the
    answer the alarm shows: the verdict line, the lines before it and the versions tried."""
    from stagebench import asv_suite, depbisect, overlay
    from stagebench.metrics import METRICS

    stage = stage_of(d.stage_class)
    if stage is None:
        return {"message": f"{d.stage_class} is not a stage of tonight's suite: not bisected"}
    metric = METRICS[d.metric]
    workdir.mkdir(parents=True, exist_ok=True)
    workload = asv_suite.bench_workload()
    measure = depbisect.Measurer(
        stage, workload, metric, source=src, store=workdir / "results.jsonl",
        log_dir=workdir / "logs",
    )  # fmt: skip
    if night_store is not None and measure.reference is None:  # tonight's, not measured again
        from stagebench import results
        from stagebench.matrix import find_reference

        measure.reference = find_reference(results.load(night_store), workload)
    if len(packages) == 1:
        name, old, new = packages[0]
        span = releases.between(name, old, new, src)
        outcome = depbisect.bisect_releases(span, measure, metric, stage=stage.name)
    else:
        old_lock, new_lock = workdir / "locked.lock", workdir / "canary.lock"
        old_lock.write_text("".join(f"{n}=={o}\n" for n, o, _ in packages))
        new_lock.write_text("".join(f"{n}=={v}\n" for n, _, v in packages))
        outcome = depbisect.bisect_lock(
            old_lock,
            new_lock,
            measure,
            measure.base,
            metric,
            overlay.base_info().packages,
            stage=stage.name,
            source=src,
        )
    (workdir / "bisect.md").write_text(depbisect.to_markdown(outcome) + "\n")
    return {
        "message": outcome.message,
        "first": outcome.first,
        "last": outcome.last,
        "package": outcome.package,
        "lines": depbisect.summary_lines(outcome),
        "tried": [
            f"{t.label}: {t.status}" + ("" if t.value is None else f", {t.value:.4g} ms")
            for t in outcome.trials
        ],
        "command": command(d, packages),
        "exit_code": outcome.exit_code,
    }


def stage_of(stage_class: str) -> Any:
    """The stage of tonight's suite an asv class measures (None: not in the suite)."""
    from stagebench import asv_suite

    by_class = {f"stages.{asv_suite.class_name(s)}": s for s in asv_suite.bench_stages()}
    return by_class.get(stage_class)


def command(d: Divergence, packages: list[tuple[str, str, str]]) -> str:
    """The release bisect of a divergence as a person runs it (lock mode: the two lanes' pins
    written as locked.lock and canary.lock)."""
    found = stage_of(d.stage_class)
    stage = found.name if found is not None else d.stage_class.removeprefix("stages.Stage_")
    what = "" if d.metric == "step_time_ms" else f" --metric {d.metric}"
    if len(packages) == 1:
        name, old, new = packages[0]
        return f"stagebench bisect-release {name} {old} {new} --stage {stage}{what}"
    locks = "--from-lock locked.lock --to-lock canary.lock"
    return f"stagebench bisect-release {locks} --stage {stage}{what}"
