"""The judging room: is a change in a metric real, given the noise measured where it matters?

One rule serves `regressions` (the latest level of each series), `compare` (one commit against
another) and the site, so the three never disagree on what is noise:

1. Values go on a log scale: changes are relative, and a metric's noise grows with its level
   (a cold compile is noisier in seconds than a warm one, not in percent).
2. A series is cut into segments of constant level by asv's Potts solver (L1, so robust to
   outliers), with a jump penalty from the series' own point-to-point noise. A lone point between
   two segments is an outlier, not a level: it joins its closer neighbour.
3. A change between two segments is judged against the noise of the segment before it alone
   (its standard deviation, leaving out one clear outlier from TRIM_FROM points on), never
   against noise measured after the change. Only when that segment has two points (a level, but
   no noise estimate) is the noise of the segment after it used, and the judgement says so; or,
   when the segment after is too short too, the two points join the level before them if they
   are no change from it. One point is no level at all. Tonight's run after a piece still too
   short to judge it by is judged against the range of every run before it (RANGE): beyond it
   by more than twice its width is a change, with no noise model (merged into that piece, an 8x jump
   vanished in its median).
4. It counts when it clears every bar: MIN_EFFECT (1%), NOISE_FLOOR times one run's noise, and a
   one-sided Student-t bound at CONFIDENCE (99%) for the difference of the two levels, so that
   few points of history need a larger change: with 3 points before, one new run must exceed
   about 8.6 sigma; with 10, about 3.1 sigma. A quiet series is flagged in about 1-2% of
   judgements (the bound, plus the few levels a series is cut into); the nightly therefore
   alarms only when a re-run of the stage is flagged again against the same baseline.
5. Where the stage's run-to-run noise was measured over separate processes (noise.py: a Prior),
   the threshold follows that stage: its noise is the larger of the history's and the measured
   one (a short quiet stretch of history never makes the bar smaller than the machine can
   tell), MIN_EFFECT gives way to the stage's MDE (a quiet compile stage can show 0.5%, a noisy
   one is not held to 1%), and a history of two points can already be judged.

Standard library and asv only: the history side runs without torch.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from asv import step_detect

MIN_EFFECT = 0.01  # relative: below 1% nothing is a change, however quiet the metric
# With a stage's measured noise the minimum effect is its MDE, but never below this: a peak
# memory that five processes measured identically would otherwise call 2 MiB a regression.
MIN_EFFECT_MEASURED = 0.001
NOISE_FLOOR = 2.0  # a change must be at least twice one run's noise
CONFIDENCE = 0.99  # one-sided, per judgement; the nightly re-measures before it alarms
MIN_BASELINE = 3  # points a segment needs before its noise is believed
TRIM_FROM = 5  # from this many points on, one clear outlier is left out of the noise
OUTLIER_MADS = 3.5  # how far (in robust sigmas, from the median) a point must be to be one
JUMP_PENALTY = 3.0  # Potts cost of one level change, in sigma * ln(points)
KEEP = 0.8  # share of the smallest point-to-point differences the segmentation noise uses
# |difference| of two N(0, 1) runs, kept below its KEEP quantile, has this mean: sigma's scale.
_Q = statistics.NormalDist().inv_cdf(0.5 + KEEP / 2)
_KEPT_MEAN = math.sqrt(2) * 2 * (statistics.NormalDist().pdf(0) - statistics.NormalDist().pdf(_Q))
_KEPT_MEAN /= KEEP
# Student t at CONFIDENCE (one-sided) by degrees of freedom; between entries interpolate in 1/df.
_T99 = {
    1: 31.821, 2: 6.965, 3: 4.541, 4: 3.747, 5: 3.365, 6: 3.143, 7: 2.998, 8: 2.896,
    9: 2.821, 10: 2.764, 12: 2.681, 15: 2.602, 20: 2.528, 30: 2.457, 60: 2.390, 120: 2.358,
}  # fmt: skip
_Z99 = 2.326

_LARGEST_UNITS = 1e100  # values in units of their level beyond this are rescaled: no overflow
REGRESSED, IMPROVED, SAME, UNJUDGED = "regressed", "improved", "same", "unjudged"
LEVELS, RANGE = "levels", "range"  # what a judgement tested (Judgement.test)
# RANGE: how many widths of the earlier runs' range a run must lie beyond it. One let a noisier
# new level's second run (10 -> 16 -> 27 at 20% noise) alarm one night in five.
RANGE_WIDTHS = 2.0
Z975 = 1.959964


@dataclass(frozen=True)
class Prior:
    """A stage's noise measured over separate processes (noise.py), on the log scale."""

    sigma: float  # one run's standard deviation of log(value)
    df: int
    source: str  # for people: "5 separate runs of 2026-12-06"

    def __post_init__(self) -> None:
        # A NaN or negative sigma would make every bar the minimum effect, a df of 0 has no
        # Student-t quantile: such a prior is refused where it is made, not half-used.
        if not (isinstance(self.sigma, int | float) and math.isfinite(self.sigma)):
            raise ValueError(f"a prior's sigma must be a finite number, not {self.sigma!r}")
        if self.sigma < 0:
            raise ValueError(f"a prior's sigma must be >= 0, not {self.sigma!r}")
        if not isinstance(self.df, int) or isinstance(self.df, bool) or self.df < 1:
            raise ValueError(
                f"a prior's degrees of freedom must be a whole number >= 1, not {self.df!r}"
            )

    @property
    def mde(self) -> float:
        """Two single runs, 95% two-sided (log scale): the stage's own minimum effect."""
        return Z975 * math.sqrt(2) * self.sigma


def t_quantile(df: int) -> float:
    """One-sided Student-t quantile at CONFIDENCE (the table's own; no scipy here)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be at least 1, not {df}")
    if df in _T99:
        return _T99[df]
    known = sorted(_T99)
    if df > known[-1]:
        lo, hi, t_lo, t_hi = known[-1], math.inf, _T99[known[-1]], _Z99
    else:
        i = bisect.bisect(known, df)
        lo, hi = known[i - 1], known[i]
        t_lo, t_hi = _T99[lo], _T99[hi]
    x, x_lo, x_hi = 1 / df, 1 / lo, 0.0 if hi == math.inf else 1 / hi
    return t_hi + (t_lo - t_hi) * (x - x_hi) / (x_lo - x_hi)


@dataclass(frozen=True)
class Judgement:
    verdict: str  # regressed, improved, same or unjudged
    reason: str | None = None  # why unjudged, or where the noise came from when unusual
    last_good: int | None = None  # index of the last point before the change
    first_bad: int | None = None  # index of the first point after it
    before: float | None = None  # level before (median, in the metric's units)
    after: float | None = None  # level after
    change_pct: float | None = None
    noise_pct: float | None = None  # one run's noise where it was measured, % of the level
    bar_pct: float | None = None  # the smallest change that would have counted, %
    n_before: int = 0
    n_after: int = 0
    test: str = LEVELS  # or RANGE: the newest run beyond every run before it

    @property
    def changed(self) -> bool:
        return self.verdict in (REGRESSED, IMPROVED)


def _log(values: Sequence[float]) -> list[float] | None:
    """Log-scale values; None when some are not positive (then there is no relative scale)."""
    if any(not v > 0 for v in values):
        return None
    return [math.log(v) for v in values]


def spread(ys: Sequence[float]) -> tuple[float, int]:
    """(one run's standard deviation, degrees of freedom) of a segment's values.

    From TRIM_FROM points on, a clear outlier (farther from the median than OUTLIER_MADS robust
    sigmas) is left out: one run on a loaded machine must not widen the bar for every later
    change. Ordinary points are never trimmed, so the estimate stays unbiased on clean data.
    """
    kept = list(ys)
    if len(kept) >= TRIM_FROM:
        mid = statistics.median(kept)
        mad = statistics.median(abs(y - mid) for y in kept) * 1.4826
        farthest = max(kept, key=lambda y: abs(y - mid))
        if mad > 0 and abs(farthest - mid) > OUTLIER_MADS * mad:
            kept.remove(farthest)
    if len(kept) < 2:
        return math.nan, 0
    return statistics.stdev(kept), len(kept) - 1


def _median_variance(n: int) -> float:
    """Variance of a median of n runs, in units of one run's variance (pi/2 for large n)."""
    return 1.0 if n <= 2 else math.pi / 2 / n


def _pct(log_ratio: float) -> float:
    try:
        return 100.0 * math.expm1(log_ratio)
    except OverflowError:  # a ratio beyond floats (1e-300 -> 1e300): still a change, not a crash
        return math.inf


def compare_levels(
    before: Sequence[float],
    after: Sequence[float],
    worse: int,
    *,
    allow_noise_after: bool = True,
    prior: Prior | None = None,
) -> Judgement:
    """Is the level of `after` worse (or better) than that of `before`? Values in their units.
    `prior`: the stage's measured run-to-run noise (rule 5 of the module docstring)."""
    nb, na = len(before), len(after)
    if not nb or not na:
        raise ValueError("both sides need at least one value")
    level_b, level_a = statistics.median(before), statistics.median(after)
    base = Judgement(SAME, before=level_b, after=level_a, n_before=nb, n_after=na)
    logs_b, logs_a = _log(before), _log(after)
    relative = logs_b is not None and logs_a is not None  # a prior is log-scale noise
    unit = 1.0  # the level before, in the units the values are divided into
    if not relative:
        # No relative scale (zeros, negatives): absolute differences, in units of the level when
        # it is not 0. A level of 0 with no noise (a count that was always 0) makes any change
        # count; a noisy one (0, 1, 0, 1 ...) keeps its noise bar.
        scale = _linear_scale([*before, *after], level_b)
        logs_b = [v / scale for v in before]
        logs_a = [v / scale for v in after]
        if level_b == 0 and level_a != 0 and nb >= MIN_BASELINE and max(map(abs, before)) == 0:
            verdict = REGRESSED if (level_a - level_b) * worse > 0 else IMPROVED
            return Judgement(verdict, "a level of exactly 0 left", **_fields(base))
        unit = abs(level_b) / scale

    def pct(x: float) -> float | None:
        """A change (or noise, or bar) in % of the level before: from a log ratio, or on the
        linear scale, in units of that level (none when the level is 0: no % of 0)."""
        if relative:
            return _pct(x)
        return None if level_b == 0 or unit == 0 else 100.0 * x / unit

    effect = statistics.median(logs_a) - statistics.median(logs_b)
    sigma, df = spread(logs_b)
    reason = None
    if prior is not None and relative and (nb < MIN_BASELINE or df < 1 or prior.sigma > sigma):
        sigma, df = prior.sigma, prior.df
        reason = f"noise from {prior.source}"
    elif nb < MIN_BASELINE or df < 1:
        # One run is no level (it may be the outlier); two are, but their noise is not known.
        if nb >= 2 and allow_noise_after and na >= MIN_BASELINE:
            sigma, df = spread(logs_a)
            reason = f"noise from the {na} points after the change ({nb} before it)"
        else:
            return Judgement(
                UNJUDGED,
                f"{nb} point{'s' * (nb != 1)} before the change, {MIN_BASELINE} needed",
                change_pct=pct(effect),
                **{k: v for k, v in _fields(base).items() if k != "change_pct"},
            )
    margin = t_quantile(df) * sigma * math.sqrt(_median_variance(nb) + _median_variance(na))
    floor = (math.log1p(MIN_EFFECT) if relative else MIN_EFFECT * unit) if level_b != 0 else 0.0
    if prior is not None and relative:
        # the stage's own minimum effect, not the 1% every stage gets
        floor = max(prior.mde, math.log1p(MIN_EFFECT_MEASURED))
        reason = reason or f"minimum effect from {prior.source}"
    bar = max(floor, NOISE_FLOOR * sigma, margin)
    verdict = SAME
    if abs(effect) > bar:
        verdict = REGRESSED if effect * worse > 0 else IMPROVED
    return Judgement(
        verdict,
        reason,
        before=level_b,
        after=level_a,
        change_pct=pct(effect),
        noise_pct=pct(sigma),
        bar_pct=pct(bar),
        n_before=nb,
        n_after=na,
    )


def _linear_scale(values: Sequence[float], level: float) -> float:
    """What values without a relative scale are divided by: their level (1 when it is 0), or
    their largest magnitude where the quotients would be too large to square and subtract (a
    hand-edited 1e-310 beside 100, or 1e308 beside -1e308, made asv's solver loop forever on
    infinities and NaNs)."""
    scale = abs(level) or 1.0
    if max(abs(v) / scale for v in values) <= _LARGEST_UNITS:
        return scale
    return max(abs(v) for v in values)


def _fields(j: Judgement) -> dict:
    return {
        "before": j.before,
        "after": j.after,
        "change_pct": j.change_pct,
        "n_before": j.n_before,
        "n_after": j.n_after,
    }


def point_noise(ys: Sequence[float]) -> float:
    """Sigma of one run from point-to-point differences (a level change is one large one)."""
    diffs = sorted(abs(b - a) for a, b in itertools.pairwise(ys))
    if not diffs:
        return 0.0
    kept = diffs[: max(1, int(len(diffs) * KEEP))]
    sigma = statistics.fmean(kept) / _KEPT_MEAN
    if sigma == 0.0:  # mostly identical runs (quantized values): all differences then
        sigma = statistics.fmean(diffs) * math.sqrt(math.pi) / 2
    return sigma


def segments(values: Sequence[float], prior: Prior | None = None) -> list[tuple[int, int]]:
    """[(start, end)) ranges of constant level, oldest first; lone interior points merged.
    A measured prior keeps a quiet-looking short series from being cut at every wiggle."""
    n = len(values)
    if n == 0:
        return []
    ys = _log(values)
    relative = ys is not None
    if ys is None:
        scale = _linear_scale(values, statistics.median(values))
        ys = [v / scale for v in values]
    sigma = point_noise(ys)
    if prior is not None and relative:
        sigma = max(sigma, prior.sigma)
    if n < 3 or sigma == 0.0:
        cuts = [i for i in range(1, n) if ys[i] != ys[i - 1]]
    else:
        rights, _, _ = step_detect.solve_potts_approx(
            ys, [1.0] * n, gamma=JUMP_PENALTY * sigma * math.log(n)
        )
        cuts = list(rights[:-1])
    bounds = [0, *cuts, n]
    segs = list(itertools.pairwise(bounds))
    # A lone point between two levels is an outlier: it joins the neighbour it is closer to.
    i = 1
    while i < len(segs) - 1:
        start, end = segs[i]
        if end - start == 1:
            left = statistics.median(ys[segs[i - 1][0] : segs[i - 1][1]])
            right = statistics.median(ys[segs[i + 1][0] : segs[i + 1][1]])
            if abs(ys[start] - left) <= abs(ys[start] - right):
                segs[i - 1 : i + 1] = [(segs[i - 1][0], end)]
            else:
                segs[i : i + 2] = [(start, segs[i + 1][1])]
            continue
        i += 1
    return segs


def latest(values: Sequence[float], worse: int, prior: Prior | None = None) -> Judgement:
    """The latest level of a series against the level before it.

    Walking back from the newest segment, changes too small to count (or between pieces too
    short to measure noise on) are merged away; the first one that counts decides: regressed or
    improved, with the indices of the last point before and the first after it. No change that
    counts: `same`; too few points: `unjudged`.
    """
    n = len(values)
    # A prior is noise on a log scale: a series with zeros (no relative scale) gets none of it.
    relative = all(v > 0 for v in values)
    needed = 2 if prior is not None and relative else MIN_BASELINE + 1
    if n < needed:
        points = f"{n} point{'s' * (n != 1)}"
        return Judgement(UNJUDGED, f"{points} of history, {needed} needed")
    # The newest run is always a candidate level of its own: tonight against the level it
    # would join is the question a nightly asks, and a penalty that grows with the history
    # must not hide it.
    segs = [*segments(values[:-1], prior), (n - 1, n)]
    start, end = segs[-1]
    for i in range(len(segs) - 2, -1, -1):
        seg_start, seg_end = segs[i]
        judged = compare_levels(values[seg_start:seg_end], values[start:end], worse, prior=prior)
        if judged.verdict == UNJUDGED and i > 0:
            wider = _with_the_level_before(
                values, segs[i - 1][0], segs[i], (start, end), worse, prior
            )
            judged = wider or judged
        if judged.verdict == UNJUDGED and start == n - 1:
            # Tonight's run against a piece too short to judge it by: merged into that piece it
            # would vanish in its median (and a flagged piece would mask it as "standing").
            judged = beyond_range(values[:-1], values[-1], worse)
            if judged.changed:
                return dataclasses.replace(judged, last_good=n - 2, first_bad=n - 1)
        if not judged.changed:
            # Not a change that counts (or two short pieces no noise can be measured on): one
            # level, judged again against what came before it.
            start = seg_start
            continue
        return dataclasses.replace(judged, last_good=seg_end - 1, first_bad=start)
    return Judgement(SAME, before=statistics.median(values), after=statistics.median(values))


def _with_the_level_before(
    values: Sequence[float],
    before_start: int,
    short: tuple[int, int],
    after: tuple[int, int],
    worse: int,
    prior: Prior | None,
) -> Judgement | None:
    """A level too short for its own noise (two points), when it is no change from the level
    before it, belongs to that level: the runs after it are judged against both together.
    Merging the newest run into the short level instead would hide it in that level's median
    (an 8x cold-compile jump after 3.37, 3.37 vanished so). A short level that is a change of
    its own is left as it was: the level before it knows nothing of its noise."""
    earlier, level = values[before_start : short[0]], values[short[0] : short[1]]
    if not _belongs_to(earlier, level, prior):
        return None
    joined_values = values[before_start : short[1]]
    return compare_levels(joined_values, values[after[0] : after[1]], worse, prior=prior)


def _belongs_to(earlier: Sequence[float], piece: Sequence[float], prior: Prior | None) -> bool:
    """Is a piece too short for its own noise no change from the level before it, judged with
    that level's noise (which needs MIN_BASELINE points)?"""
    if len(earlier) < MIN_BASELINE:
        return False
    judged = compare_levels(earlier, piece, 1, allow_noise_after=False, prior=prior)
    return judged.verdict == SAME


def beyond_range(past: Sequence[float], value: float, worse: int) -> Judgement:
    """Is `value` beyond every run of `past` by more than RANGE_WIDTHS times their whole spread
    (log scale, a spread of at least MIN_EFFECT)? No noise model: for a run after a level too
    short to have noise, it assumes only that the past's range covers its noise; a history that
    moved a lot needs a large jump. `before` is the bound it passed."""
    logs = _log([*past, value])
    if logs is None or len(past) < MIN_BASELINE:
        why = "no relative scale" if logs is None else f"{len(past)} runs before it"
        return Judgement(UNJUDGED, why, test=RANGE)
    lo, hi, y = min(logs[:-1]), max(logs[:-1]), logs[-1]
    width = RANGE_WIDTHS * max(hi - lo, math.log1p(MIN_EFFECT))
    bound = hi if y > hi else lo
    effect = y - bound
    verdict = SAME
    if abs(effect) > width:
        verdict = REGRESSED if effect * worse > 0 else IMPROVED
    return Judgement(
        verdict,
        f"beyond every one of the {len(past)} runs before it by more than "
        f"{RANGE_WIDTHS:g}x their spread",
        before=math.exp(bound),
        after=value,
        change_pct=_pct(effect),
        bar_pct=_pct(width),
        n_before=len(past),
        n_after=1,
        test=RANGE,
    )


def baseline_at(values: Sequence[float], index: int, prior: Prior | None = None) -> list[float]:
    """The points of the level that `values[index]` belongs to, up to and including it. A piece
    too short for its own noise that is no change from the level before it belongs to that
    level (rule 3), so `compare` and the site judge against what `regressions` would."""
    segs = segments(values[: index + 1], prior)
    start, end = segs[-1]
    if end - start < MIN_BASELINE and len(segs) > 1:
        before_start = segs[-2][0]
        if _belongs_to(values[before_start:start], values[start:end], prior):
            start = before_start
    return list(values[start:end])


def compare_runs(before: float, after: float, worse: int, noise_pct: float | None) -> Judgement:
    """Two single runs. `noise_pct` is their combined uncertainty in % (both runs' 95%
    confidence half-widths added, from their own samples); None: only MIN_EFFECT applies."""
    if before > 0 and after > 0:
        effect = math.log(after) - math.log(before)  # after / before can underflow to 0
    elif before != 0:
        effect = (after - before) / abs(before)
    else:
        effect = math.inf if after != 0 else 0.0
    bar = max(math.log1p(MIN_EFFECT), math.log1p((noise_pct or 0.0) / 100))
    verdict = SAME
    if abs(effect) > bar:
        verdict = REGRESSED if effect * worse > 0 else IMPROVED
    return Judgement(
        verdict,
        None if noise_pct is not None else "no noise measured: the minimum effect alone",
        before=before,
        after=after,
        change_pct=_pct(effect) if math.isfinite(effect) else None,
        noise_pct=noise_pct,
        bar_pct=_pct(bar),
        n_before=1,
        n_after=1,
    )
