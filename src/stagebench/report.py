"""Tables for people: the seed's columns first, then what the seed did not report."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich.console import Console
from rich.table import Table

from stagebench.results import Result

STATUS_STYLE = {"ok": "green", "unavailable": "dim", "oom": "yellow"}
COMPILE_COLUMN = "Compile g/b/r"


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def fell_back(result: Result) -> bool:
    """An ok stage part of which ran uncompiled (graph breaks, frames dynamo gave up on)."""
    m = result.metrics
    return result.status == "ok" and m is not None and m.compile is not None and m.compile.fell_back


def status_label(result: Result) -> str:
    """The status, `ok*` where compile fell back to eager in part (still ok, and said why)."""
    return "ok*" if fell_back(result) else result.status


def compile_cell(result: Result) -> str:
    """graphs/graph breaks/recompiles, '-' for a stage that compiles nothing (or failed)."""
    c = result.metrics.compile if result.metrics else None
    if c is None:
        return "-"
    recompiles = "?" if c.recompiles is None else str(c.recompiles)
    return f"{c.graphs}/{c.graph_breaks}/{recompiles}"


def seed_row(result: Result) -> list[str]:
    """Config, Status, MFU %, TFLOPS, Mem(GB), Runtime(s): the seed's table, the seed's formula."""
    m = result.metrics
    return [
        result.stage,
        status_label(result),
        _num(m.seed_mfu_pct if m else None),
        _num(m.seed_tflops if m else None),
        _num(m.peak_reserved_gib if m else None),
        _num(result.wall_time_s),
    ]


def results_table(results: Iterable[Result], title: str | None = None) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("Config", "Status", "MFU %", "TFLOPS", "Mem(GB)", "Runtime(s)"):
        table.add_column(column, justify="left" if column in ("Config", "Status") else "right")
    # Beyond the seed: MFU from counted model FLOPs, the timing's spread, compile cost.
    for column in (
        "Model MFU %", "Step ms", "IQR ms", "Steps", "CI95 %", "1st step s", COMPILE_COLUMN,
    ):  # fmt: skip
        table.add_column(column, justify="right")
    for r in results:
        m = r.metrics
        row = seed_row(r)
        style = "yellow" if fell_back(r) else STATUS_STYLE.get(r.status, "red")
        row[1] = f"[{style}]{status_label(r)}[/]"
        row += [
            _num(m.mfu_pct if m else None),
            _num(m.step_time_ms_median if m else None),
            _num(m.step_time_ms_iqr if m else None),
            str(m.measured_steps) if m else "-",
            _num(m.step_time_ci95_pct if m else None, 2),
            _num(m.first_step_s if m else None),
            compile_cell(r),
        ]
        table.add_row(*row)
    return table


def reasons(results: Iterable[Result]) -> list[str]:
    """One line per stage that did not end ok: what happened and why."""
    return [f"{r.stage}: {r.status}: {r.reason}" for r in results if r.status != "ok"]


def fallback_lines(results: Iterable[Result]) -> list[str]:
    """One line per `ok*` stage: what ran eagerly and why."""
    return [f"{r.stage}: ok*: {r.metrics.compile.summary()}" for r in results if fell_back(r)]


def _gib_list(values: list[float] | None) -> str:
    return "-" if not values else " / ".join(f"{v:.1f}" for v in values)


def distributed_lines(results: Iterable[Result]) -> list[str]:
    """Multi-process runs: what the table's per-GPU columns do not say."""
    lines = []
    for r in results:
        d = r.metrics.distributed if r.metrics else None
        if d is None:
            continue
        exposed = "" if d.comm_exposed_pct is None else f", {d.comm_exposed_pct:.1f}% exposed"
        share = (
            f"{d.comm_busy_pct:.1f}% of the step{exposed}"
            if d.comm_busy_pct is not None
            else f"share unknown ({d.comm_source})"
        )
        lines.append(
            f"{r.stage}: {d.nproc} ranks ({d.backend}): {r.metrics.tokens_per_s:,.0f} tokens/s "
            f"({d.tokens_per_s_per_gpu:,.0f} per GPU); collectives {share}; "
            f"peak reserved GiB per rank {_gib_list(d.peak_reserved_gib_per_rank)}"
        )
    return lines


def profile_lines(results: Iterable[Result]) -> list[str]:
    """Where each profiled stage's time goes: its largest kernel groups and the host gap."""
    return [
        f"{r.stage}: time by kernel group: {r.metrics.profile.summary()}"
        for r in results
        if r.status == "ok" and r.metrics is not None and r.metrics.profile is not None
    ]


def print_results(results: list[Result], console: Console, title: str | None = None) -> None:
    console.print(results_table(results, title))
    lines = reasons(results) + fallback_lines(results) + distributed_lines(results)
    for line in lines + profile_lines(results):
        console.print(f"  {line}", markup=False, highlight=False)
    legend = (
        "MFU %/TFLOPS: the seed's formula (6N + attention, vs 989 TFLOPS), from the median step. "
        "Model MFU %: counted matmul FLOPs (causal attention) vs the device's dense bf16 peak. "
        "Under FSDP2 (--nproc): per GPU, the step being the slowest rank's. "
        f"{COMPILE_COLUMN}: graphs torch.compile captured / graph breaks / recompiles "
        "(compiling stages); "
        "ok*: measured, but part of the model ran uncompiled (graph breaks or frames dynamo gave "
        "up on), the reasons listed above."
    )
    console.print(legend, style="dim")


def plain_table(columns: list[str], rows: list[list[str]], title: str | None = None) -> Table:
    """A table of ready-made cells (the first column left, the rest as given)."""
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    return table


def markdown_table(columns: list[str], rows: list[list[str]]) -> str:
    """The same cells for a job summary; pipes in cells cannot break the table."""

    def cells(values: list[str]) -> str:
        return "| " + " | ".join(v.replace("|", "/") for v in values) + " |"

    return "\n".join([cells(columns), cells(["---"] * len(columns)), *map(cells, rows)])


def env_table(info: dict[str, Any]) -> Table:
    table = Table(show_header=False, box=None)
    for key, value in info.items():
        if isinstance(value, dict):
            for sub, subvalue in value.items():
                table.add_row(f"{key}.{sub}", "-" if subvalue is None else str(subvalue))
        else:
            table.add_row(key, "-" if value is None else str(value))
    return table
