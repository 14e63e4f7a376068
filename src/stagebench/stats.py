"""Step-time statistics: a median with a distribution-free confidence interval.

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


def median_ci95(sorted_values: list[float]) -> tuple[float, float] | None:
    """Order-statistic 95% CI of the median (binomial, normal approximation)."""
    n = len(sorted_values)
    if n < 6:
        return None
    lo = max(1, math.floor((n - Z95 * math.sqrt(n)) / 2))
    hi = min(n, math.ceil((n + Z95 * math.sqrt(n)) / 2) + 1)
    return sorted_values[lo - 1], sorted_values[hi - 1]


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


def best_window_mean(values: list[float], window: int) -> float | None:
    """Smallest mean over consecutive windows: the seed's 'peak over rolling windows' statistic."""
    if window < 1:
        raise ValueError(f"window must be at least 1, not {window}")
    if len(values) < window:
        return None
    return min(sum(values[i : i + window]) / window for i in range(len(values) - window + 1))
