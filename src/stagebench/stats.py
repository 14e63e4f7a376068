"""Step-time statistics: a median with a distribution-free confidence interval, and a floor.

Step times are skewed (a stray allocator or host hiccup makes one step slow, never fast), so the
median and order-statistic intervals describe them better than a mean and a standard deviation.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

Z95 = 1.959964


@dataclass(frozen=True)
class Summary:
    n: int
    median: float
    iqr: float
    minimum: float
    maximum: float
    ci95_half_width_pct: float | None  # None below 6 samples, where no order-stat CI exists


def quantile_ci95(sorted_values: list[float], p: float, min_n: int) -> tuple[float, float] | None:
    """Order-statistic 95% CI of the p-quantile (binomial, normal approximation): the values at
    ranks n p -+ 1.96 sqrt(n p (1 - p)); None below `min_n` values, where it does not hold."""
    n = len(sorted_values)
    if n < min_n:
        return None
    spread = Z95 * math.sqrt(n * p * (1 - p))
    lo = max(1, math.floor(n * p - spread))
    hi = min(n, math.ceil(n * p + spread) + 1)
    return sorted_values[lo - 1], sorted_values[hi - 1]


def median_ci95(sorted_values: list[float]) -> tuple[float, float] | None:
    """Order-statistic 95% CI of the median; None below 6 values."""
    return quantile_ci95(sorted_values, 0.5, 6)


def summarize(values: list[float]) -> Summary:
    if not values:
        raise ValueError("no measured values to summarize")
    ordered = sorted(values)
    med = statistics.median(ordered)
    if len(ordered) >= 2:
        q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
    else:
        q1 = q3 = ordered[0]
    ci = median_ci95(ordered)
    half = None if ci is None or med <= 0 else 100.0 * (ci[1] - ci[0]) / 2 / med
    return Summary(len(ordered), med, q3 - q1, ordered[0], ordered[-1], half)


def step_floor(values: list[float]) -> float:
    """The floor of a run's step times: their 10th percentile.

    Host delays (a `.item()` waiting on a busy host, the collector, another process) only ever
    add time to a step, so the low quantile is the device-bound work: it moves with a kernel's
    speed, not with how often a slow host mode comes, which differs per process and machine and
    makes the median bimodal. The 10th percentile rather than the minimum, so that one lucky step
    does not decide it (from 10 steps on). Position 0.1 x (n + 1) of the sorted steps (the
    exclusive method): the k-th smallest of n lies at the k / (n + 1) quantile on average, so
    runs that stopped after 10 or after 60 steps aim at the same quantile (the inclusive
    method's 1 + 0.1 x (n - 1) aims at 17% for 10 steps and 11% for 60). Up to 9 steps that
    position is at or under the first: the minimum."""
    if not values:
        raise ValueError("no measured values to take a floor of")
    if len(values) < FLOOR_MIN_INTERPOLATED:
        return float(min(values))
    return statistics.quantiles(values, n=10, method="exclusive")[0]


FLOOR_MIN_INTERPOLATED = 9  # 0.1 x (n + 1) >= 1: the position lies between two steps
FLOOR_MIN_CI_STEPS = 35  # from here the interval below covers at least 95% (exact binomial)


def floor_ci95_pct(values: list[float]) -> float | None:
    """Half-width of the floor's order-statistic 95% CI (binomial, normal approximation, as
    median_ci95), in % of the floor: the floor's counterpart of Summary.ci95_half_width_pct.
    None below FLOOR_MIN_CI_STEPS: with fewer steps even the smallest lies above the 10th
    percentile about 2.5% of the time or more (0.9 ** n), so the interval falls short of 95%
    (20 steps would cover 87%)."""
    ordered = sorted(values)
    ci = quantile_ci95(ordered, 0.1, FLOOR_MIN_CI_STEPS)
    if ci is None:
        return None
    floor = step_floor(ordered)
    return None if floor <= 0 else 100.0 * (ci[1] - ci[0]) / 2 / floor


def best_window_mean(values: list[float], window: int) -> float | None:
    """Smallest mean over consecutive windows: the seed's 'peak over rolling windows' statistic."""
    if window < 1:
        raise ValueError(f"window must be at least 1, not {window}")
    if len(values) < window:
        return None
    return min(sum(values[i : i + window]) / window for i in range(len(values) - window + 1))
