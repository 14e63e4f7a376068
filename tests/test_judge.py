"""The judging room's rule on synthetic series (seeded, so every verdict is deterministic)."""

from __future__ import annotations

import math
import random
import subprocess
import sys

import pytest

from stagebench import judge

LOWER, HIGHER = 1, -1  # worse when the value rises / drops


def series(seed: int, n: int, level: float, noise: float, step_at: int = 0, step: float = 0.0):
    """Log-normal noise (relative), a level change by the factor (1 + step) from `step_at`."""
    rng = random.Random(seed)
    return [
        level * math.exp(rng.gauss(0, noise)) * (1 + step if step_at and i >= step_at else 1)
        for i in range(n)
    ]


def test_t_quantiles_match_the_table_and_shrink_with_more_points():
    assert judge.t_quantile(2) == pytest.approx(6.965)
    assert judge.t_quantile(11) == pytest.approx(2.718, abs=0.01)  # interpolated, true 2.718
    assert judge.t_quantile(45) == pytest.approx(2.412, abs=0.01)  # true 2.412
    assert judge.t_quantile(10_000) == pytest.approx(2.326, abs=0.002)
    values = [judge.t_quantile(df) for df in range(1, 300)]
    assert values == sorted(values, reverse=True)
    with pytest.raises(ValueError):
        judge.t_quantile(0)


@pytest.mark.parametrize("points", [5, 8, 30])
def test_pure_noise_is_flagged_at_about_the_design_rate(points):
    """1000 quiet histories at 5% noise: about 1% flagged (the one-sided 99% bound, a few
    steps tested), never a multiple of it; a re-run then has to flag it again."""
    flagged = sum(
        judge.latest(series(seed, points, 40.0, 0.05), HIGHER).verdict == judge.REGRESSED
        for seed in range(1000)
    )
    assert flagged <= 30


@pytest.mark.parametrize("seed", range(10))
def test_finds_a_3pct_drop_amid_half_pct_noise_at_its_commit(seed):
    j = judge.latest(series(seed, 30, 40.0, 0.005, step_at=20, step=-0.03), HIGHER)
    assert j.verdict == judge.REGRESSED
    assert (j.last_good, j.first_bad) == (19, 20)
    assert j.change_pct == pytest.approx(-3.0, abs=0.5)


def test_noise_after_the_change_does_not_hide_it():
    """A cold compile is slower and noisier: judged against the quiet level before it."""
    quiet = series(1, 10, 8.0, 0.02)
    loud_after = [44.0, 31.0, 52.0]  # 4-6x, +-25% between runs
    j = judge.latest(quiet + loud_after, LOWER)
    assert j.verdict == judge.REGRESSED and j.first_bad == 10
    assert j.noise_pct == pytest.approx(2.0, abs=1.2)  # the segment before's, not the mix


def test_a_short_baseline_needs_a_larger_change():
    baseline = [10.0, 10.1, 9.9]
    assert judge.latest([*baseline, 10.5], LOWER).verdict == judge.SAME  # +5%: 3 points say no
    assert judge.latest([*baseline, 12.0], LOWER).verdict == judge.REGRESSED
    longer = [10.0, 10.1, 9.9, 10.05, 9.95, 10.0, 10.1, 9.9]
    assert judge.latest([*longer, 10.5], LOWER).verdict == judge.REGRESSED


def test_too_little_history_is_unjudged_not_clean():
    j = judge.latest([10.0, 10.1, 30.0], LOWER)
    assert j.verdict == judge.UNJUDGED and "3 points" in j.reason


def test_one_outlier_in_the_baseline_does_not_widen_every_bar():
    base = series(2, 12, 100.0, 0.01)
    base[5] = 200.0  # one run on a loaded machine
    j = judge.latest([*base, 112.0], LOWER)
    assert j.verdict == judge.REGRESSED and j.first_bad == 12


def test_a_cold_first_night_then_a_recompile_every_run():
    """first_step_s: night 1 compiles cold, later nights hit the cache; the change that makes
    every run compile again is found against the warm nights alone."""
    values = [17.0, *series(3, 5, 2.8, 0.05), 16.5]
    j = judge.latest(values, LOWER)
    assert j.verdict == judge.REGRESSED and (j.last_good, j.first_bad) == (5, 6)
    assert j.n_before == 5


def test_a_jump_after_a_short_level_is_judged_with_the_level_before_it():
    """The compile stage's first steps as a CI night measured them: the warm nights drift up to
    a level of two points, then every run compiles cold. The pair is no change from the warm
    level before it, so the cold run is judged against all five; merged into the pair, the 8x
    jump vanished in its median."""
    j = judge.latest([3.04, 3.03, 3.14, 3.37, 3.37, 27.53], LOWER)
    assert j.verdict == judge.REGRESSED and (j.last_good, j.first_bad) == (4, 5)
    assert j.n_before == 5
    # The same pair with nothing new after it stays one level: no alarm.
    assert judge.latest([3.04, 3.03, 3.14, 3.37, 3.37, 3.38], LOWER).verdict == judge.SAME


def test_a_short_level_that_is_a_change_of_its_own_is_not_joined():
    """The third night after a jump to a noisier level (a cold compile): the quiet level before
    the jump says nothing of the new level's noise. The jump stands where it happened, the
    newest run is no finding of its own."""
    for newest in (31.0, 24.4):
        j = judge.latest([3.04, 3.03, 3.14, 3.37, 3.37, 27.53, 27.6, newest], LOWER)
        assert (j.verdict, j.first_bad) == (judge.REGRESSED, 5)
    j = judge.latest([1.0] * 30 + [2.0, 2.0, 2.0], LOWER)
    assert (j.verdict, j.first_bad) == (judge.REGRESSED, 30)


def test_a_jump_after_a_short_level_of_its_own_is_beyond_every_run_before_it():
    """Last night's run was a level of its own (a 20% step, flagged, standing) and tonight
    compiles cold: too few points to judge tonight against last night's level, so tonight is
    judged against the range of every run before it, not merged away or masked as standing."""
    values = [3.0, 3.1, 3.0, 3.0, 3.1, 3.6, 3.7, 30.0]
    j = judge.latest(values, LOWER)
    assert (j.verdict, j.test, j.last_good, j.first_bad) == (judge.REGRESSED, judge.RANGE, 6, 7)
    assert j.before == pytest.approx(3.7) and j.n_before == 7
    # Less than twice the range's width beyond it: not a change by this test; the standing step
    # is.
    j = judge.latest([*values[:-1], 4.1], LOWER)
    assert (j.verdict, j.test, j.first_bad) == (judge.REGRESSED, judge.LEVELS, 5)
    assert judge.beyond_range(values[:-1], 4.1, LOWER).verdict == judge.SAME
    assert judge.beyond_range(values[:-1], 5.5, LOWER).verdict == judge.SAME  # 1.9 widths
    assert judge.beyond_range(values[:-1], 1.5, LOWER).verdict == judge.IMPROVED
    assert judge.beyond_range([3.0, 0.0, 3.0], 30.0, LOWER).verdict == judge.UNJUDGED


def test_judgements_are_scale_free():
    small = judge.latest(series(4, 20, 0.01, 0.01, step_at=15, step=0.05), LOWER)
    large = judge.latest(series(4, 20, 1e6, 0.01, step_at=15, step=0.05), LOWER)
    assert (small.verdict, small.first_bad) == (large.verdict, large.first_bad)
    assert small.change_pct == pytest.approx(large.change_pct)


@pytest.mark.parametrize(("step", "verdict"), [(0.05, judge.IMPROVED), (-0.05, judge.REGRESSED)])
def test_direction_decides(step, verdict):
    assert judge.latest(series(5, 25, 40.0, 0.005, 20, step), HIGHER).verdict == verdict


def test_a_quiet_metric_still_needs_the_minimum_effect():
    assert judge.latest(series(6, 30, 40.0, 0.0002, 20, -0.005), HIGHER).verdict == judge.SAME
    assert judge.latest(series(6, 30, 40.0, 0.0002, 20, -0.015), HIGHER).verdict == judge.REGRESSED


def test_a_wiggle_inside_the_noise_band_never_alarms():
    """A 1.25-sigma shift between two long segments is statistically clear, and still noise."""
    assert judge.latest(series(0, 100, 40.0, 0.02, 50, -0.025), HIGHER).verdict == judge.SAME


def test_values_without_a_relative_scale():
    assert judge.latest([0.0, 0.0, 0.0, 0.0, 3.0], LOWER).verdict == judge.REGRESSED
    assert judge.latest([0.0, 0.0, 0.0, 0.0, 0.0], LOWER).verdict == judge.SAME


@pytest.mark.parametrize(
    "values",
    [
        [27.5, -1.0, 2.0, 1e-310, 3.0, 0.0, 2.0],  # stdev of infinities raised
        [-1.0, 5.0, 100.0, 1e-310, -1.0, 1.0],  # asv's solver looped forever on infinities
        [-1e308, 1e308, -1e308, 1e308, 0.0, 1e-320],
        [-1.7, 5e-324, 2.2, 0.0, 2.7, -6.4, 5e-324, 6.3],  # a level of 5e-324: no % of it
    ],
)
def test_hand_edited_values_are_judged_not_a_crash_or_a_hang(values):
    """Values no stage measures (a hand-edited result file): a verdict, in a child process so a
    hang fails the test instead of the run."""
    code = f"from stagebench import judge; print(judge.latest({values!r}, 1).verdict)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() in (judge.SAME, judge.REGRESSED, judge.IMPROVED, judge.UNJUDGED)


def test_baseline_is_the_level_a_commit_belongs_to():
    values = [10.0, 10.1, 9.9, 10.0, 20.0, 20.2, 19.8, 20.1]
    assert judge.baseline_at(values, 6) == [20.0, 20.2, 19.8]
    assert judge.baseline_at(values, 3) == [10.0, 10.1, 9.9, 10.0]
    # A short piece at the end: joined to the level before it when it is no change from it
    # (what `regressions` does), left alone when it is one.
    warm = [3.04, 3.03, 3.14, 3.37, 3.37]
    assert judge.baseline_at(warm, 4) == warm
    assert judge.baseline_at(values[:6], 5) == [20.0, 20.2]


def test_two_runs_of_the_smallest_positive_values_do_not_crash():
    """after / before underflows to 0 for 5e-324 / 1e300: the log of each, subtracted, does not."""
    j = judge.compare_runs(1e300, 5e-324, LOWER, None)
    assert j.verdict == judge.IMPROVED and j.change_pct == pytest.approx(-100.0)
    assert judge.compare_runs(5e-324, 5e-324, LOWER, None).verdict == judge.SAME


def test_two_runs_with_their_own_confidence():
    assert judge.compare_runs(300.0, 330.0, LOWER, 1.0).verdict == judge.REGRESSED
    assert judge.compare_runs(300.0, 309.0, LOWER, 4.0).verdict == judge.SAME
    assert judge.compare_runs(300.0, 262.0, LOWER, 1.0).verdict == judge.IMPROVED
    assert judge.compare_runs(300.0, 300.0 * 1.009, LOWER, None).verdict == judge.SAME
