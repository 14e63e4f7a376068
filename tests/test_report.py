"""The results table: the seed's columns with the seed's numbers, '-' where nothing was measured."""

from __future__ import annotations

import re

from rich.console import Console

from stagebench.report import print_results, reasons, results_table, seed_row
from stagebench.results import Metrics, Result


def make_metrics(**overrides) -> Metrics:
    values = dict(
        measured_steps=17, warmup_steps=3, step_time_ms_median=148.26, step_time_ms_iqr=1.04,
        step_time_ms_min=147.0, step_time_ms_max=152.0, step_time_ci95_pct=0.314,
        tokens_per_step=2048, tokens_per_s=13813.0, flops_per_token=4.9e10, tflops=676.8,
        mfu_pct=68.41, mfu_reason="table: H100 dense bf16", seed_flops_per_token=5.1e10,
        seed_tflops=343.94, seed_mfu_pct=34.77, seed_peak_window_mfu_pct=35.1,
        first_step_s=47.26, model_init_s=3.0, loss_first=12.0, loss_last=11.0,
        grad_norm_first=4.0, peak_allocated_gib=55.5, peak_reserved_gib=61.27,
        n_params=8_190_735_360, attention_impl="sdpa",
    )  # fmt: skip
    values.update(overrides)
    return Metrics(**values)


def make_result(stage, status, metrics=None, wall_time_s=None, reason=None) -> Result:
    return Result(
        stage=stage, spec="sdpa", status=status, reason=reason, model="qwen3-8b",
        workload={}, metrics=metrics, wall_time_s=wall_time_s,
    )  # fmt: skip


OK = make_result("00_sdpa", "ok", make_metrics(), wall_time_s=123.46)
OOM = make_result("00_baseline", "oom", None, wall_time_s=12.0, reason="CUDA out of memory")
CPU = make_result("00_fa2", "ok", make_metrics(peak_reserved_gib=None, seed_mfu_pct=None))
UNAVAILABLE = make_result("02_liger_sdpa", "unavailable", reason="liger: needs CUDA")


def render(table) -> str:
    console = Console(record=True, width=200)
    console.print(table)
    return console.export_text()


def row_cells(text: str, stage: str) -> list[str]:
    for line in text.splitlines():
        cells = [c.strip() for c in re.split("[│┃]", line)]
        if len(cells) > 2 and cells[1] == stage:
            return cells[1:-1]
    raise AssertionError(f"no row for {stage} in:\n{text}")


def test_seed_row_formats_measured_numbers():
    """The seed's six columns, one decimal, from the seed's formula and reserved memory."""
    assert seed_row(OK) == ["00_sdpa", "ok", "34.8", "343.9", "61.3", "123.5"]


def test_seed_row_dashes_where_nothing_was_measured():
    """A failed stage has no metrics: '-' in the number columns, its runtime still shown."""
    assert seed_row(OOM) == ["00_baseline", "oom", "-", "-", "-", "12.0"]
    assert seed_row(CPU) == ["00_fa2", "ok", "-", "343.9", "-", "-"]


def test_results_table_renders_rows():
    """Rendered table: seed columns first, then spread and compile cost; markup not leaked."""
    text = render(results_table([OK, OOM, CPU], title="run"))
    header = row_cells(text, "Config")
    assert header[:6] == ["Config", "Status", "MFU %", "TFLOPS", "Mem(GB)", "Runtime(s)"]
    assert header[6:] == [
        "Model MFU %", "Step ms", "IQR ms", "Steps", "CI95 %", "1st step s",
        "Compile g/b/r",
    ]  # fmt: skip
    assert row_cells(text, "00_sdpa") == [
        "00_sdpa", "ok", "34.8", "343.9", "61.3", "123.5", "68.4", "148.3", "1.0", "17", "0.31",
        "47.3", "-",
    ]  # fmt: skip
    dashes = ["-"] * 7
    assert row_cells(text, "00_baseline") == ["00_baseline", "oom", "-", "-", "-", "12.0", *dashes]
    assert row_cells(text, "00_fa2")[:6] == ["00_fa2", "ok", "-", "343.9", "-", "-"]
    assert "[green]" not in text
    assert "[red]" not in text


def test_reasons_lists_only_non_ok_rows():
    """Only stages that did not end ok get a reason line, each with its status and why."""
    assert reasons([OK, OOM, CPU, UNAVAILABLE]) == [
        "00_baseline: oom: CUDA out of memory",
        "02_liger_sdpa: unavailable: liger: needs CUDA",
    ]
    assert reasons([OK, CPU]) == []


def test_print_results_prints_reasons():
    """The printed report carries the reason lines below the table, verbatim (no markup)."""
    console = Console(record=True, width=200)
    print_results([OK, make_result("x", "error", reason="[bold]boom[/]")], console)
    text = console.export_text()
    assert "  x: error: [bold]boom[/]" in text
    assert "00_sdpa" in text


def test_a_distributed_run_gets_a_line_of_its_own():
    from stagebench.report import distributed_lines
    from stagebench.results import DistributedMetrics

    d = DistributedMetrics(
        nproc=2, backend="nccl", sharding="FSDP2", tokens_per_s_per_gpu=6906.5,
        step_time_ms_median_per_rank=[148.0, 148.2], peak_allocated_gib_per_rank=[40.0, 39.5],
        peak_reserved_gib_per_rank=[44.04, 43.0], comm_busy_pct=12.54, comm_exposed_pct=1.46,
        comm_source="profiler",
    )  # fmt: skip
    sharded = make_result("00_sdpa", "ok", make_metrics(distributed=d))
    assert distributed_lines([OK, sharded, OOM]) == [
        "00_sdpa: 2 ranks (nccl): 13,813 tokens/s (6,906 per GPU); collectives 12.5% of the step, "
        "1.5% exposed; peak reserved GiB per rank 44.0 / 43.0"
    ]


def test_a_stage_that_fell_back_is_ok_star_with_its_reasons():
    """Compiled, measured, but part of it ran eagerly: still ok (not a failure), flagged."""
    from stagebench.report import fallback_lines, status_label
    from stagebench.results import CompileMetrics

    counts = CompileMetrics(
        graphs=4, graph_breaks=3, recompiles=0, eager_frames=1,
        break_reasons={"Data-dependent branching": 3},
        eager_reasons={"forward (modeling_qwen3.py:250)": "Unsupported: recompile limit"},
    )  # fmt: skip
    star = make_result("03_liger_fa2_compile", "ok", make_metrics(compile=counts))
    assert not star.failed and status_label(star) == "ok*"
    text = render(results_table([star, OK]))
    assert row_cells(text, "03_liger_fa2_compile")[1] == "ok*"
    assert row_cells(text, "03_liger_fa2_compile")[-1] == "4/3/0"
    assert fallback_lines([star, OK, OOM]) == [
        "03_liger_fa2_compile: ok*: 3 graph break(s) (3x Data-dependent branching), 1 frame(s) "
        "run eagerly (forward (modeling_qwen3.py:250): Unsupported: recompile limit), "
        "0 recompile(s), 4 graph(s)"
    ]
    console = Console(record=True, width=400)
    print_results([star], console)
    printed = console.export_text()
    assert "  03_liger_fa2_compile: ok*: 3 graph break(s)" in printed
    assert "ok*: measured, but part of the model ran uncompiled" in printed


def _profile():
    from stagebench.results import GroupTime, ProfileMetrics

    return ProfileMetrics(
        source="cuda: kernels", steps=3, wall_ms_per_step=150.0, busy_ms_per_step=144.0,
        host_gap_ms_per_step=6.0,
        groups={"matmul": GroupTime(93.6, 65.0), "attention": GroupTime(28.8, 20.0),
                "norm": GroupTime(14.4, 10.0), "loss": GroupTime(7.2, 5.0)},
        kernels=[], kernels_seen=0, rest_ms_per_step=0.0,
    )  # fmt: skip


def test_a_profiled_stage_says_where_its_time_goes():
    from stagebench.report import profile_lines

    profiled = make_result("00_sdpa", "ok", make_metrics(profile=_profile()))
    assert profile_lines([OK, profiled, OOM]) == [
        "00_sdpa: time by kernel group: matmul 65%, attention 20%, norm 10%; host gap 4% of the "
        "step"
    ]


def test_a_distributed_run_whose_profile_failed_says_the_share_is_unknown():
    from stagebench.report import distributed_lines
    from stagebench.results import DistributedMetrics

    d = DistributedMetrics(
        nproc=2, backend="nccl", sharding="FSDP2", tokens_per_s_per_gpu=6906.5,
        step_time_ms_median_per_rank=[148.0, 148.2], peak_allocated_gib_per_rank=None,
        peak_reserved_gib_per_rank=None, comm_busy_pct=None, comm_exposed_pct=None,
        comm_source="no profile: the profiler did not start: RuntimeError: planted",
    )  # fmt: skip
    (line,) = distributed_lines([make_result("00_sdpa", "ok", make_metrics(distributed=d))])
    assert "collectives share unknown (no profile: the profiler did not start" in line
