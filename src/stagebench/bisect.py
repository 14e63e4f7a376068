"""What a bisect's own measurements say: did BAD measure worse than GOOD at all?

`asv find` always names the commit with its greatest change, even between commits that measure
the same. `nox -s bisect` asks this module before it names a culprit:

    python -m stagebench.bisect RESULTS_DIR MACHINE BENCHMARK GOOD BAD

exits 0 when BAD measured worse than GOOD by the judge's minimum effect (ok -> failed, or a
change beyond 1% in the worse direction), printing both values; 1 when it did not (no culprit);
2 for bad input. Standard library and asv only.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from stagebench import judge
from stagebench.history import CannotJudge, HistoryError, load
from stagebench.metrics import OK_METRIC, metric_of, worse_sign


def verdict(results: Path, machine: str, benchmark: str, good: str, bad: str) -> tuple[bool, str]:
    history = load(results, machine, f"^{re.escape(benchmark)}$")
    values = {p.commit: p.value for s in history.series.values() for p in s.get(benchmark, [])}
    before, after = values.get(good), values.get(bad)
    if before is None or after is None:
        missing = "GOOD" if before is None else "BAD"
        return False, f"no measurement of {benchmark} at {missing}: nothing to compare"
    metric = metric_of(benchmark)
    worse = worse_sign(metric)
    if metric == OK_METRIC:
        changed = before >= 0.5 > after
    else:
        changed = judge.compare_runs(before, after, worse or 1, None).verdict == judge.REGRESSED
    measured = f"GOOD measured {before:.4g}, BAD {after:.4g}"
    if not changed:
        return False, f"no culprit: {measured}, not worse beyond {judge.MIN_EFFECT:.0%}"
    return True, measured


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 5:
        print(
            "usage: python -m stagebench.bisect RESULTS MACHINE BENCHMARK GOOD BAD", file=sys.stderr
        )
        return 2
    results, machine, benchmark, good, bad = args
    try:
        found, message = verdict(Path(results), machine, benchmark, good, bad)
    except (CannotJudge, HistoryError) as exc:
        found, message = False, f"no culprit: {exc}"
    print(message)
    return 0 if found else 1


if __name__ == "__main__":
    sys.exit(main())
