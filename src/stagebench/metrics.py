"""The metrics stagebench tracks: one table read by the asv suite, the judge, compare and the site.

Standard library only (the history side runs on hosted runners without torch).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    name: str  # the asv method is track_<name>
    unit: str
    key: str  # the field of Result.metrics it reads
    better: str  # "higher" or "lower"
    # Metrics of one family come from one measurement (all of "speed" from the median step
    # time), so they move together: judged once, reported as one finding named by the lead.
    family: str
    compile_only: bool = False  # tracked for compiling stages only (others have no count)

    @property
    def worse(self) -> int:
        """+1 when a rise is bad, -1 when a drop is."""
        return 1 if self.better == "lower" else -1


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("step_time_ms", "ms", "step_time_ms_median", "lower", "speed"),
        Metric("tokens_per_s", "tokens/s", "tokens_per_s", "higher", "speed"),
        Metric("tflops", "TFLOPS", "tflops", "higher", "speed"),
        Metric("mfu", "%", "mfu_pct", "higher", "speed"),
        Metric("seed_mfu", "%", "seed_mfu_pct", "higher", "speed"),
        # The 10th percentile of the measured steps (stats.step_floor): the device-bound work,
        # which host delays do not move. Its own family: its own noise, judged on its own.
        Metric("step_floor_ms", "ms", "step_time_ms_floor", "lower", "floor"),
        Metric("first_step_s", "s", "first_step_s", "lower", "first_step"),
        Metric("peak_reserved_gib", "GiB", "peak_reserved_gib", "lower", "memory"),
        # torch.compile's fallbacks: graph breaks and recompiles during the stage. A count that
        # leaves 0 is a regression (the judge has no relative scale at level 0).
        Metric("graph_breaks", "count", "graph_breaks", "lower", "compile", compile_only=True),
        Metric("recompiles", "count", "recompiles", "lower", "compile", compile_only=True),
    )
}
# track_ok: 1 when the stage ran and was measured, 0 when it failed. Not noisy: judged apart.
OK_METRIC = "ok"
# The metric a family's finding is named by (the raw measurement the others derive from).
FAMILY_LEAD = {
    "speed": "step_time_ms",
    "floor": "step_floor_ms",
    "first_step": "first_step_s",
    "memory": "peak_reserved_gib",
    "compile": "graph_breaks",
}
# asv's own benchmark types, should the suite ever hold some: all lower-is-better.
LOWER_IS_BETTER_PREFIXES = ("time_", "mem_", "peakmem_")


def metric_of(benchmark: str) -> str:
    """`stages.Stage_00_sdpa.track_mfu(...)` -> `mfu`."""
    method = benchmark.split("(", 1)[0].rsplit(".", 1)[-1]
    return method.removeprefix("track_")


def stage_class_of(benchmark: str) -> str:
    """`stages.Stage_00_sdpa.track_mfu` -> `stages.Stage_00_sdpa`."""
    return benchmark.split("(", 1)[0].rsplit(".", 1)[0]


def worse_sign(metric: str) -> int | None:
    """+1 when a rise is bad, -1 when a drop is, None when stagebench does not know."""
    if metric == OK_METRIC:
        return -1
    if metric in METRICS:
        return METRICS[metric].worse
    if metric.startswith(LOWER_IS_BETTER_PREFIXES):
        return 1
    return None


def family_of(metric: str) -> str:
    """A metric's family; a metric outside the table is a family of its own."""
    return METRICS[metric].family if metric in METRICS else metric
