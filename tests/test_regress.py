"""Regression detection on histories written as real asv result files through asv's own API."""

from __future__ import annotations

import hashlib
import json
import math
import random
from pathlib import Path

import pytest
from asv import util
from asv.benchmarks import Benchmarks
from asv.machine import Machine
from asv.results import Results
from asv.runner import BenchmarkResult

from stagebench import regress
from stagebench.cli import main

MACHINE = "h100"
ENV = "existing-py_3.11"
DAY_MS = 86_400_000
FIRST_DATE_MS = 1_760_000_000_000
STAGE = "stages.Stage_00_sdpa"
MFU = f"{STAGE}.track_mfu"
STEP_TIME = f"{STAGE}.track_step_time_ms"
MEMORY = f"{STAGE}.track_peak_reserved_gib"
OK = f"{STAGE}.track_ok"


def commit_hashes(n: int) -> list[str]:
    """Full hashes in commit order; their sort order is not the commit order."""
    return [hashlib.sha1(f"commit {i}".encode()).hexdigest() for i in range(n)]


def write_history(
    results_dir: Path,
    series: dict[str, list[float | None]],
    machine: str = MACHINE,
    versions: list[str] | None = None,
) -> list[str]:
    """One asv result file per commit, as `asv run` saves them; returns the commits in order."""
    n = len(next(iter(series.values())))
    info = Machine()
    info.__dict__.update(machine=machine, os="Linux", arch="x86_64", cpu="cpu", num_cpu="16")
    info.save(str(results_dir))
    hashes = commit_hashes(n)
    for i, commit in enumerate(hashes):
        params = {"machine": machine, "python": "3.11"}
        result = Results(params, {}, commit, FIRST_DATE_MS + i * DAY_MS, "3.11", ENV, {})
        for name, values in series.items():
            benchmark = {"name": name, "version": versions[i] if versions else "1", "params": []}
            measured = BenchmarkResult(
                result=[values[i]],
                samples=[None],
                number=[None],
                errcode=0,
                stderr="",
                profile=None,
            )
            result.add_result(benchmark, measured)
        result.save(str(results_dir))
    return hashes


def noisy(seed: int, n: int, level: float, noise: float, step_at: int = 0, step: float = 0.0):
    """`level` with relative Gaussian noise; from `step_at` on the level moves by `step`."""
    rng = random.Random(seed)
    return [
        level * (1 + rng.gauss(0, noise)) * (1 + (step if step_at and i >= step_at else 0))
        for i in range(n)
    ]


def only(report: regress.Report) -> regress.Regression:
    assert len(report.regressions) == 1, report.regressions
    return report.regressions[0]


def test_history_is_plain_data_in_commit_date_order(tmp_path):
    values = [40.0, None, 41.0, math.nan, 42.0, 43.0]
    hashes = write_history(tmp_path, {MFU: values})
    assert sorted(hashes) != hashes  # the order below can only come from the dates
    history = regress.load_history(tmp_path)
    assert list(history) == [regress.Source(MACHINE, ENV)]
    points = history[regress.Source(MACHINE, ENV)][MFU]
    assert [p.commit for p in points] == hashes
    assert [p.date for p in points] == [FIRST_DATE_MS + i * DAY_MS for i in range(6)]
    assert [p.value for p in points] == [40.0, None, 41.0, None, 42.0, 43.0]


@pytest.mark.parametrize("seed", range(5))
def test_finds_3pct_mfu_drop_amid_half_pct_noise(tmp_path, seed):
    hashes = write_history(tmp_path, {MFU: noisy(seed, 30, 40.0, 0.005, step_at=20, step=-0.03)})
    found = only(regress.check(tmp_path))
    assert (found.benchmark, found.metric, found.direction) == (MFU, "mfu", "drop")
    assert (found.good, found.bad) == (hashes[19], hashes[20])
    assert found.before == pytest.approx(40.0, rel=0.005)
    assert found.after == pytest.approx(38.8, rel=0.005)
    assert found.change_pct == pytest.approx(-3.0, abs=0.6)
    assert found.noise_pct == pytest.approx(0.5, abs=0.25)
    assert found.bisect == f"nox -s bisect -- {hashes[19]} {hashes[20]} {MFU}"


@pytest.mark.parametrize("seed", range(20))
def test_pure_noise_never_alarms(tmp_path, seed):
    series = {
        MFU: noisy(seed, 30, 40.0, 0.005),
        STEP_TIME: noisy(seed + 100, 30, 1500.0, 0.01),
        MEMORY: noisy(seed + 200, 30, 60.0, 0.002),
        f"{STAGE}.track_tokens_per_s": noisy(seed + 300, 30, 9000.0, 0.02),
    }
    write_history(tmp_path, series)
    report = regress.check(tmp_path)
    assert report.regressions == []
    assert (report.checked, report.commits) == (4, 30)


def test_finds_10pct_memory_rise(tmp_path):
    hashes = write_history(tmp_path, {MEMORY: noisy(3, 30, 60.0, 0.002, step_at=25, step=0.10)})
    found = only(regress.check(tmp_path))
    assert (found.metric, found.direction) == ("peak_reserved_gib", "rise")
    assert (found.good, found.bad) == (hashes[24], hashes[25])
    assert found.change_pct == pytest.approx(10.0, abs=1.0)


def test_finds_ok_to_failed_and_names_the_commit(tmp_path):
    # From commit 22 the stage fails (say, OOM): track_ok 0, its metrics NaN.
    ok = [1.0] * 22 + [0.0] * 8
    mfu = noisy(4, 30, 40.0, 0.005)[:22] + [math.nan] * 8
    hashes = write_history(tmp_path, {OK: ok, MFU: mfu})
    found = only(regress.check(tmp_path))
    assert (found.benchmark, found.metric, found.direction) == (OK, "ok", "ok->failed")
    assert (found.good, found.bad) == (hashes[21], hashes[22])
    assert (found.before, found.after, found.change_pct) == (1.0, 0.0, -100.0)


def test_ok_that_recovered_is_not_a_regression(tmp_path):
    write_history(tmp_path, {OK: [1.0] * 10 + [0.0] * 5 + [1.0] * 5})
    assert regress.check(tmp_path).regressions == []


@pytest.mark.parametrize(
    ("benchmark", "step", "regressed"),
    [(MFU, +0.05, False), (MFU, -0.05, True), (STEP_TIME, -0.10, False), (STEP_TIME, +0.10, True)],
    ids=["mfu-rise", "mfu-drop", "step-time-drop", "step-time-rise"],
)
def test_direction_decides(tmp_path, benchmark, step, regressed):
    """An MFU rise or a step-time drop is an improvement; the opposite moves regress."""
    write_history(tmp_path, {benchmark: noisy(5, 30, 100.0, 0.005, step_at=20, step=step)})
    report = regress.check(tmp_path)
    assert report.checked == 1
    assert bool(report.regressions) is regressed


def test_skipped_points_are_ignored(tmp_path):
    mfu = noisy(6, 30, 40.0, 0.005, step_at=20, step=-0.05)
    for i in (3, 11, 18, 20, 21):  # holes everywhere, the first two bad commits included
        mfu[i] = math.nan if i % 2 else None
    series = {
        MFU: mfu,
        STEP_TIME: [None if i % 3 == 0 else v for i, v in enumerate(noisy(7, 30, 1500.0, 0.01))],
        MEMORY: [math.nan] * 30,  # never ran here
    }
    hashes = write_history(tmp_path, series)
    report = regress.check(tmp_path)
    found = only(report)
    assert found.benchmark == MFU
    assert (found.good, found.bad) == (hashes[19], hashes[22])
    assert report.checked == 3


def test_fixed_regression_is_not_reported(tmp_path):
    mfu = noisy(8, 30, 40.0, 0.005, step_at=10, step=-0.05)
    mfu[20:] = noisy(9, 10, 40.0, 0.005)
    write_history(tmp_path, {MFU: mfu})
    assert regress.check(tmp_path).regressions == []


def test_bar_is_the_metrics_own_noise_and_a_minimum_effect(tmp_path):
    # The 3% drop found amid 0.5% noise is a wiggle amid 3% noise ...
    write_history(tmp_path / "loud", {MFU: noisy(0, 30, 40.0, 0.03, step_at=20, step=-0.03)})
    assert regress.check(tmp_path / "loud").regressions == []
    # ... and a clear 0.5% step in a very quiet metric is under the minimum effect.
    write_history(tmp_path / "quiet", {MFU: noisy(0, 30, 40.0, 0.0002, step_at=20, step=-0.005)})
    assert regress.check(tmp_path / "quiet").regressions == []
    # The quiet metric's 1.5% step does count: no fixed percentage hides it.
    write_history(tmp_path / "small", {MFU: noisy(0, 30, 40.0, 0.0002, step_at=20, step=-0.015)})
    assert only(regress.check(tmp_path / "small")).change_pct == pytest.approx(-1.5, abs=0.1)


def test_step_inside_the_noise_band_never_alarms(tmp_path):
    """A 1.25-sigma shift between two long segments is statistically clear, and still a wiggle."""
    write_history(tmp_path, {MFU: noisy(0, 100, 40.0, 0.02, step_at=50, step=-0.025)})
    assert regress.check(tmp_path).regressions == []


def test_one_lucky_first_run_is_no_baseline(tmp_path):
    mfu = noisy(0, 30, 40.0, 0.005)
    mfu[0] = 43.0
    write_history(tmp_path, {MFU: mfu})
    assert regress.check(tmp_path).regressions == []


def test_results_of_an_older_benchmark_version_are_not_compared(tmp_path):
    """asv records each benchmark's code version; a changed benchmark starts a new history."""
    mfu = [50.0 + 0.1 * (i % 3) for i in range(20)] + [40.0 + 0.1 * (i % 3) for i in range(10)]
    write_history(tmp_path, {MFU: mfu}, versions=["1"] * 20 + ["2"] * 10)
    assert only(regress.check(tmp_path)).change_pct == pytest.approx(-20, abs=1)  # all compared
    current = {MFU: {"name": MFU, "version": "2", "params": []}}
    util.write_json(str(tmp_path / "benchmarks.json"), current, api_version=Benchmarks.api_version)
    report = regress.check(tmp_path)
    assert report.regressions == []
    assert report.commits == 10


def run_cli(capsys, argv: list[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_exits_1_with_markdown_and_bisect_command(tmp_path, capsys):
    series = {MFU: noisy(1, 30, 40.0, 0.005, step_at=20, step=-0.03), STEP_TIME: [1500.0] * 30}
    hashes = write_history(tmp_path, series)
    code, out, err = run_cli(capsys, ["regressions", "--results", str(tmp_path)])
    assert (code, err) == (1, "")
    assert "1 regression in 2 benchmarks over 30 commits." in out
    table = [line for line in out.splitlines() if line.startswith("| `")]
    assert len(table) == 1
    assert f"`{MFU}`" in table[0] and "mfu drop" in table[0]
    assert f"nox -s bisect -- {hashes[19]} {hashes[20]} {MFU}" in out.splitlines()


def test_cli_exits_0_with_one_line_on_a_clean_history(tmp_path, capsys):
    write_history(tmp_path, {MFU: noisy(2, 30, 40.0, 0.005), OK: [1.0] * 30})
    code, out, err = run_cli(capsys, ["regressions", "--results", str(tmp_path)])
    assert (code, err) == (0, "")
    assert out.splitlines() == ["No regressions in 2 benchmarks over 30 commits."]


def error_line(capsys, argv: list[str]) -> str:
    code, out, err = run_cli(capsys, argv)
    assert (code, out) == (2, "")
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("stagebench: error:"), err
    return lines[0]


def test_cli_bad_input_exits_2_with_one_line(tmp_path, capsys):
    missing = tmp_path / "nowhere" / "results"
    assert str(missing) in error_line(capsys, ["regressions", "--results", str(missing)])
    write_history(tmp_path, {MFU: [40.0] * 6})
    args = ["regressions", "--results", str(tmp_path)]
    assert "'a100'" in error_line(capsys, [*args, "--machine", "a100"])
    assert "'track_('" in error_line(capsys, [*args, "--benchmark", "track_("])
    assert "'track_nope'" in error_line(capsys, [*args, "--benchmark", "track_nope"])
    assert "'yaml'" in error_line(capsys, [*args, "--format", "yaml"])


def test_cli_json_has_the_documented_fields(tmp_path, capsys):
    hashes = write_history(tmp_path, {MFU: noisy(3, 30, 40.0, 0.005, step_at=20, step=-0.03)})
    code, out, _ = run_cli(capsys, ["regressions", "--results", str(tmp_path), "--format", "json"])
    assert code == 1
    data = json.loads(out)
    assert (data["checked"], data["commits"]) == (1, 30)
    (found,) = data["regressions"]
    fields = {"benchmark", "metric", "good", "bad", "before", "after", "change_pct", "noise_pct"}
    assert fields | {"bisect"} <= set(found)
    assert (found["benchmark"], found["metric"]) == (MFU, "mfu")
    assert (found["good"], found["bad"]) == (hashes[19], hashes[20])
    assert found["bisect"] == f"nox -s bisect -- {hashes[19]} {hashes[20]} {MFU}"
    assert found["change_pct"] < -2 and 0 < found["noise_pct"] < 1


def test_cli_machine_and_benchmark_select(tmp_path, capsys):
    write_history(tmp_path, {MFU: noisy(1, 30, 40.0, 0.005, step_at=20, step=-0.03)})
    write_history(tmp_path, {MFU: noisy(2, 30, 40.0, 0.005)}, machine="a100")
    args = ["regressions", "--results", str(tmp_path), "--format", "json"]
    code, out, _ = run_cli(capsys, args)
    assert code == 1
    assert [r["machine"] for r in json.loads(out)["regressions"]] == [MACHINE]
    assert run_cli(capsys, [*args, "--machine", "a100"])[0] == 0
    assert run_cli(capsys, [*args, "--machine", MACHINE])[0] == 1
    assert run_cli(capsys, [*args, "--benchmark", "track_step_time|track_ok"])[0] == 2  # none
    code, out, _ = run_cli(capsys, [*args, "--benchmark", r"Stage_00_sdpa\.track_mfu$"])
    assert (code, json.loads(out)["checked"]) == (1, 2)
