"""Step-time statistics: median, IQR, the median's order-statistic CI, the floor, the seed's
window."""

from __future__ import annotations

import random

import pytest

from stagebench.stats import (
    best_window_mean,
    floor_ci95_pct,
    median_ci95,
    step_floor,
    summarize,
)


def test_summarize_known_data():
    """Median, inclusive-quartile IQR, min, max and n of a known (shuffled) sample."""
    s = summarize([9.0, 1.0, 8.0, 2.0, 7.0, 3.0, 6.0, 4.0, 5.0])
    assert s.n == 9
    assert s.median == 5.0
    assert s.iqr == pytest.approx(4.0)  # q1 = 3, q3 = 7
    assert s.minimum == 1.0
    assert s.maximum == 9.0
    # n = 9: ranks 1 and 9, so (9 - 1) / 2 / 5 = 80 % of the median.
    assert s.ci95_half_width_pct == pytest.approx(80.0)


def test_summarize_even_count_and_single_value():
    """An even count takes the mean of the middle pair; one value has zero spread."""
    assert summarize([4.0, 1.0, 3.0, 2.0]).median == 2.5
    one = summarize([7.0])
    assert (one.n, one.median, one.iqr, one.minimum, one.maximum) == (1, 7.0, 0.0, 7.0, 7.0)


def test_ci_needs_six_samples():
    """Below 6 samples no order-statistic 95% CI exists, so none is reported."""
    assert summarize([1.0, 2.0, 3.0, 4.0, 5.0]).ci95_half_width_pct is None
    assert median_ci95([1.0, 2.0, 3.0, 4.0, 5.0]) is None
    assert summarize([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).ci95_half_width_pct is not None


def test_median_ci_ranks_for_100():
    """n = 100: the textbook 95% CI of the median runs from the 40th to the 61st value."""
    assert median_ci95([float(v) for v in range(1, 101)]) == (40.0, 61.0)


def test_ci_shrinks_with_more_samples():
    """More steps from the same distribution must give a tighter CI (the runner's stop rule)."""
    widths = []
    for n in (10, 100, 1000):
        rng = random.Random(1234)
        widths.append(summarize([rng.gauss(100.0, 5.0) for _ in range(n)]).ci95_half_width_pct)
    assert widths[0] > widths[1] > widths[2] > 0


def test_best_window_mean_picks_fastest_window():
    """The seed's statistic is the best (smallest-time) rolling window, not the overall mean."""
    values = [3.0, 3.0, 3.0, 1.0, 2.0, 9.0, 9.0]
    assert best_window_mean(values, 2) == pytest.approx(1.5)
    assert best_window_mean(values, 3) == pytest.approx(2.0)
    assert best_window_mean(values, len(values)) == pytest.approx(sum(values) / len(values))


def test_best_window_mean_too_few_values():
    """Fewer values than the window means the statistic does not exist."""
    assert best_window_mean([1.0, 2.0], 3) is None
    assert best_window_mean([], 10) is None


def test_summarize_empty_raises():
    """Summarizing nothing is a bug upstream; it must not return a made-up summary."""
    with pytest.raises(ValueError, match="no measured values"):
        summarize([])


def test_the_floor_is_the_10th_percentile_of_the_steps():
    """Exclusive method: position 0.1 x (n + 1) of the sorted steps, interpolated; below 9
    steps that position is under the first step, so the floor is the minimum."""
    assert step_floor([float(v) for v in range(1, 12)]) == pytest.approx(1.2)  # 11 steps
    assert step_floor([float(v) for v in range(9, 0, -1)]) == pytest.approx(1.0)  # at x(1)
    assert step_floor([5.0, 1.0, 3.0]) == 1.0  # 3 steps: the minimum, never extrapolated
    assert step_floor([7.5]) == 7.5  # one step is its own floor
    with pytest.raises(ValueError, match="no measured values"):
        step_floor([])


def test_the_floor_ignores_how_often_a_slow_host_mode_comes():
    """Steps of 330 ms with a slower 360 ms mode: the median follows the share of slow steps,
    the floor stays on the device-bound work, and one lucky step does not move it."""
    rng = random.Random(0)
    for slow_share in (0.1, 0.4, 0.6):
        steps = [330.0 + rng.random() + (30.0 if rng.random() < slow_share else 0.0)
                 for _ in range(60)]  # fmt: skip
        assert 330.0 <= step_floor(steps) < 331.0
    steps = [330.0 + i / 60 for i in range(60)]
    assert step_floor([*steps[1:], 300.0]) == pytest.approx(step_floor(steps), rel=2e-3)


def test_the_floor_ci_spans_the_order_statistics_around_the_10th_percentile():
    # 60 steps: the interval runs from the 1st to the 12th smallest (n p = 6, +- 1.96 x 2.32).
    steps = [100.0 + i for i in range(60)]
    floor = step_floor(steps)  # 105.1
    assert floor_ci95_pct(steps) == pytest.approx(100 * (111.0 - 100.0) / 2 / floor)
    assert floor_ci95_pct(list(reversed(steps))) == floor_ci95_pct(steps)  # order-free


def test_the_floor_aims_at_the_same_quantile_whatever_the_step_count():
    """Runs stop after 10 to 60 steps: on uniform steps the floor's expected quantile is 10% at
    either count (the inclusive method aimed at 17% for 10 steps)."""
    rng = random.Random(3)
    for n in (10, 20, 60):
        mean = sum(step_floor([rng.random() for _ in range(n)]) for _ in range(4000)) / 4000
        assert mean == pytest.approx(0.1, abs=0.006)


def test_the_floor_ci_needs_35_steps_and_narrows_where_the_floor_is_sharp():
    """Below 35 steps the smallest step lies above the 10th percentile more than 2.5% of the
    time (0.9 ** n): no order-statistic interval covers 95%, so none is claimed."""
    assert floor_ci95_pct([100.0 + i for i in range(34)]) is None
    assert floor_ci95_pct([100.0 + i for i in range(35)]) is not None
    sharp = [330.0 + (i % 4) * 0.5 for i in range(40)] + [360.0 + i for i in range(20)]
    assert floor_ci95_pct(sharp) < 0.5  # a floor many steps share: a tight interval
