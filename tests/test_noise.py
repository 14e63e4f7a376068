"""Run-to-run noise records, the MDE, and the judge following each stage's own noise."""

from __future__ import annotations

import dataclasses
import json
import math
import random
import statistics
from pathlib import Path

import pytest
from asv_history import MACHINE, STAGE, STEP_TIME, noisy, speed_family, write_history

from stagebench import PROTOCOL_VERSION, cli, compare, judge, noise, regress, stats
from stagebench import results as results_store
from stagebench.results import Metrics, Result, Samples
from stagebench.workload import Workload


def _record(
    sigma_pct: float, *, machine: str = MACHINE, date: str = "2026-12-01", runs=5, packages=None
):
    values = [100 * math.exp(math.log1p(sigma_pct / 100) * z) for z in (-1, -0.5, 0, 0.5, 1)]
    step = noise.metric_noise(values[:runs])
    return noise.StageNoise(
        machine=machine,
        stage="00_sdpa",
        asv_class=STAGE,
        spec="sdpa",
        shape="b1x2048",
        protocol=PROTOCOL_VERSION,
        runs=runs,
        metrics={"step_time_ms": step},
        date=date,
        packages=packages or {},
    )


def test_spread_and_mde_of_per_process_values():
    values = [300.0, 303.0, 297.0, 301.5, 298.5]
    got = noise.metric_noise(values, within=[0.4, 0.6, None])
    sigma = statistics.stdev(math.log(v) for v in values)
    assert got.df == 4
    assert got.sigma_pct == pytest.approx(100 * math.expm1(sigma))
    assert got.mde_pct == pytest.approx(100 * math.expm1(1.959964 * math.sqrt(2) * sigma))
    assert got.within_ci_pct == pytest.approx(0.5)
    assert noise.metric_noise([300.0, 301.0]) is None  # two runs are no spread
    assert noise.metric_noise([300.0, None, 0.0, 301.0]) is None  # only positive values count


def _result(
    stage: str, status: str, step_ms: float, first_s: float = 2.0, steps: list[float] | None = None
) -> Result:
    workload = Workload(model="tiny", device="cpu", batch_size=2, seq_len=64)
    metrics = None
    if status == "ok":
        metrics = Metrics(
            measured_steps=20, warmup_steps=3, step_time_ms_median=step_ms, step_time_ms_iqr=1.0,
            step_time_ms_min=step_ms - 1, step_time_ms_max=step_ms + 1, step_time_ci95_pct=0.5,
            tokens_per_step=128, tokens_per_s=1.0, flops_per_token=1.0, tflops=1.0, mfu_pct=None,
            mfu_reason=None, seed_flops_per_token=1.0, seed_tflops=1.0, seed_mfu_pct=None,
            seed_peak_window_mfu_pct=None, first_step_s=first_s, model_init_s=0.1, loss_first=1.0,
            loss_last=1.0, grad_norm_first=1.0, peak_allocated_gib=None, peak_reserved_gib=None,
            n_params=1, attention_impl="sdpa",
            samples=None if steps is None else Samples(warmup_ms=[], measured_ms=steps),
        )  # fmt: skip
    return Result(
        stage=stage,
        spec="sdpa",
        status=status,
        reason=None if status == "ok" else "planted",
        model="tiny",
        workload=workload.to_dict(),
        metrics=metrics,
        env={"commit": "abc", "packages": {"torch": "2.13.0"}},
    )


def test_summarize_keeps_ok_runs_and_names_the_failed_ones():
    runs = [_result("00_sdpa", "ok", v) for v in (100.0, 101.0, 99.0, 100.5)]
    runs.append(_result("00_sdpa", "oom", 0.0))
    (record,) = noise.summarize(runs, "cpu-x2")
    assert record.asv_class == "stages.Stage_00_sdpa"
    assert record.runs == 4 and record.failed == ["oom: planted"]
    assert record.metrics["step_time_ms"].values == [100.0, 101.0, 99.0, 100.5]
    assert "peak_reserved_gib" not in record.metrics  # not measured on a CPU: no spread
    assert record.protocol == PROTOCOL_VERSION and record.packages == {"torch": "2.13.0"}


def test_the_first_step_spread_leaves_out_round_1_which_may_fill_an_empty_cache():
    """On a fresh machine round 1 compiles cold (206 s against 13 s warm on an H100): the first
    step's record is the later rounds' spread, so a warm night's threshold is not a cold one's.
    The step time keeps every round."""
    steps, firsts = (237.0, 237.5, 236.8, 237.2), (206.0, 13.3, 14.1, 12.6)
    runs = [
        _result("01_kernelize_sdpa_compile", "ok", v, first_s=f)
        for v, f in zip(steps, firsts, strict=True)
    ]
    (record,) = noise.summarize(runs, "cpu-x2")
    assert record.metrics["first_step_s"].values == [13.3, 14.1, 12.6]
    assert record.metrics["first_step_s"].sigma_pct < 10  # 241% with the cold round in it
    assert len(record.metrics["step_time_ms"].values) == 4 and record.runs == 4
    # Three runs leave two warm first steps: too few for a spread, so no first-step prior.
    (three,) = noise.summarize(runs[:3], "cpu-x2")
    assert "first_step_s" not in three.metrics and "step_time_ms" in three.metrics
    # A round 1 that timed out compiling left no first step: the warm rounds all count.
    timed_out = [_result("01_kernelize_sdpa_compile", "timeout", 0.0), *runs[1:]]
    (after_timeout,) = noise.summarize(timed_out, "cpu-x2")
    assert after_timeout.metrics["first_step_s"].values == [13.3, 14.1, 12.6]


def test_summarize_keeps_the_floor_of_each_run_as_a_family_of_its_own():
    """The floor (each run's 10th percentile step) gets its own spread, MDE and prior, and its
    own within-run CI (of the floor, not the median's)."""
    rng = random.Random(1)
    runs = []
    for level in (100.0, 100.4, 99.7, 100.2):
        steps = [level + rng.random() + (8.0 if rng.random() < 0.5 else 0.0) for _ in range(40)]
        runs.append(_result("00_sdpa", "ok", statistics.median(steps), steps=steps))
    (record,) = noise.summarize(runs, "cpu-x2")
    floor = record.metrics["step_floor_ms"]
    assert floor.values == [round(stats.step_floor(r.metrics.samples.measured_ms), 6) for r in runs]
    floor_cis = [stats.floor_ci95_pct(r.metrics.samples.measured_ms) for r in runs]
    assert floor.within_ci_pct == pytest.approx(statistics.fmean(floor_cis)) and floor.df == 3
    assert floor.sigma_pct < record.metrics["step_time_ms"].sigma_pct  # the slow mode's share
    priors = noise.priors([record], "cpu-x2")
    assert priors[(STAGE, "floor")].sigma == pytest.approx(floor.sigma_log)
    assert priors[(STAGE, "floor")] != priors[(STAGE, "speed")]
    (older,) = noise.summarize([_result("00_sdpa", "ok", v) for v in (100.0, 101.0, 99.0)], "x")
    assert "step_floor_ms" not in older.metrics  # Results without samples: no floor, no prior
    assert (STAGE, "floor") not in noise.priors([older], "x")


def test_a_record_from_before_the_floor_still_loads_judges_and_shows(tmp_path):
    record = _record(0.3)
    line = json.dumps(record.to_dict())
    assert "step_floor_ms" not in line
    (tmp_path / noise.LOG_NAME).write_text(line + "\n")
    (back,) = noise.load(tmp_path)
    assert set(noise.priors([back], MACHINE)) == {(STAGE, "speed")}
    (row,) = noise.table_rows([back])
    assert len(row) == len(noise.TABLE_HEADER)
    floor = noise.TABLE_HEADER.index("floor MDE95")
    assert row[floor] == row[floor - 1] == "-"


def test_records_round_trip_and_a_bad_line_is_skipped(tmp_path):
    noise.append(tmp_path, [_record(0.2)])
    with (tmp_path / noise.LOG_NAME).open("ab") as f:
        f.write(b'{"torn": \n\xff\xfe\n')
    noise.append(tmp_path, [_record(0.4, date="2026-12-02")])
    with pytest.warns(UserWarning, match="skipped unreadable noise record"):
        records = noise.load(tmp_path)
    assert [r.date for r in records] == ["2026-12-01", "2026-12-02"]
    assert records[0] == _record(0.2)


def test_priors_newest_stack_wins_per_machine_and_protocol():
    old = _record(0.2, packages={"torch": "2.10.0"})
    new = _record(0.4, date="2026-12-02", packages={"torch": "2.11.0"})
    other = _record(5.0, machine="another")
    stale = noise.StageNoise(**{**_record(9.0).__dict__, "protocol": PROTOCOL_VERSION - 1})
    got = noise.priors([old, new, other, stale], MACHINE)
    prior = got[(STAGE, "speed")]
    assert prior.sigma == pytest.approx(math.log1p(new.metrics["step_time_ms"].sigma_pct / 100))
    assert prior.df == 4 and "5 separate runs of 2026-12-02" in prior.source
    assert noise.priors([other], MACHINE) == {}


def _speed(records) -> judge.Prior:
    return noise.priors(records, MACHINE)[(STAGE, "speed")]


def _log(record) -> float:
    return record.metrics["step_time_ms"].sigma_log


def test_a_quiet_newest_measurement_pools_with_its_stacks_earlier_ones():
    """Measurements of one series on one stack (packages and version) are one noise measured
    again: where the pool asks more than the newest alone, the pool is the prior, each
    measurement weighted by its degrees of freedom (a quiet five never sets the bar alone)."""
    noisy, quiet = _record(0.3, runs=3), _record(0.1, date="2026-12-02")
    prior = _speed([noisy, quiet])
    assert prior.sigma == pytest.approx(
        math.sqrt((2 * _log(noisy) ** 2 + 4 * _log(quiet) ** 2) / 6)
    )
    assert prior.df == 6 and prior.source == "8 separate runs of 2026-12-01 to 2026-12-02"
    # The same processes summarized again count once: another date and the same step times,
    # or the same date (their newest start) and step times re-computed by newer code, the later
    # summary's.
    again = dataclasses.replace(quiet, date="2026-12-02T09:00:00+00:00")
    assert _speed([noisy, quiet, again]) == prior
    recomputed = _record(0.12, date="2026-12-02")
    assert _speed([noisy, quiet, recomputed]) == _speed([noisy, recomputed]) != prior


def test_a_record_cannot_claim_more_degrees_of_freedom_than_its_processes_give():
    """A hand-edited df would let one record outweigh every other in a pool."""
    with pytest.raises(ValueError, match="more than 5 values give"):
        noise.MetricNoise(values=[1.0, 1.1, 0.9, 1.0, 1.05], sigma_pct=1.0, df=5, mde_pct=2.8)


def test_the_newest_measurement_is_never_outvoted_downwards():
    """Nine quiet measurements and a noisy newest one: the newest one's bar stands."""
    quiet = [_record(0.1 + i / 100, date=f"2026-12-0{i + 1}") for i in range(9)]
    noisy = _record(1.0, date="2026-12-10")
    prior = _speed([*quiet, noisy])
    assert prior.sigma == pytest.approx(_log(noisy)) and prior.df == 4
    assert prior.source == "5 separate runs of 2026-12-10"


@pytest.mark.parametrize(
    "other",
    [
        {"packages": {"torch": "2.10.0"}},  # another stack: its noise no longer holds
        {"version": "sdpa|b2x1024|protocol-2"},  # another series' noise
        {"date": "not a date"},  # a hand edit, not a measurement
    ],
)
def test_only_measurements_of_the_same_stack_and_series_pool(other):
    quiet = _record(0.1, date="2026-12-02")
    noisy = dataclasses.replace(_record(3.0), **other)
    assert _speed([noisy, quiet]) == _speed([quiet])


def test_a_record_without_a_version_is_the_default_series_noise_only():
    """Records from before versions were kept were measured on the default model and collector:
    they must not set thresholds for a series of another model or collector setting."""
    versionless = _record(0.3)
    default = f"sdpa|protocol-{PROTOCOL_VERSION}"
    for other in (f"sdpa|gc-off|protocol-{PROTOCOL_VERSION}", "sdpa|model-x|protocol-2"):
        assert noise.priors([versionless], MACHINE, {STAGE: other}) == {}
    assert (STAGE, "speed") in noise.priors([versionless], MACHINE, {STAGE: default})


def test_a_quiet_stage_shows_half_a_percent_that_the_default_floor_hides():
    prior = judge.Prior(sigma=math.log1p(0.0008), df=4, source="5 separate runs")
    before = noisy(1, 12, 240.0, 0.0008)
    after = [v * 1.006 for v in noisy(2, 1, 240.0, 0.0008)]
    assert judge.latest([*before, *after], worse=1).verdict == judge.SAME  # 1% floor
    judged = judge.latest([*before, *after], worse=1, prior=prior)
    assert judged.verdict == judge.REGRESSED
    assert judged.bar_pct < 1.0


def test_a_noisy_stage_is_not_alarmed_by_a_lucky_quiet_stretch():
    # Four nights that happen to agree closely, then an ordinary Liger-like wobble of 4%.
    values = [300.0, 300.3, 299.8, 300.1, 312.0]
    assert judge.latest(values, worse=1).verdict == judge.REGRESSED  # history alone: fooled
    prior = judge.Prior(sigma=math.log1p(0.04), df=4, source="5 separate runs")
    assert judge.latest(values, worse=1, prior=prior).verdict == judge.SAME
    level = judge.compare_levels(values[:4], values[4:], 1, prior=prior)
    assert level.verdict == judge.SAME and "separate runs" in level.reason


def test_two_nights_can_be_judged_with_measured_noise():
    prior = judge.Prior(sigma=math.log1p(0.002), df=4, source="5 separate runs")
    assert judge.latest([240.0, 260.0], worse=1).verdict == judge.UNJUDGED
    judged = judge.latest([240.0, 260.0], worse=1, prior=prior)
    assert judged.verdict == judge.REGRESSED and judged.first_bad == 1
    assert judge.latest([240.0, 240.5], worse=1, prior=prior).verdict == judge.SAME


def test_regressions_read_the_noise_kept_with_the_history(tmp_path):
    steps = [*noisy(3, 8, 240.0, 0.0008), *[v * 1.006 for v in noisy(4, 1, 240.0, 0.0008)]]
    write_history(tmp_path, speed_family(steps))
    assert not regress.check(tmp_path).regressions  # 0.6% is under the default 1% floor
    noise.append(tmp_path, [_record(0.08)])
    (finding,) = regress.check(tmp_path).regressions
    assert finding.benchmark == STEP_TIME and finding.new
    assert "separate runs" in (finding.judgement.reason or "")
    assert finding.prior is not None
    # The nightly's confirmation re-run is judged by the same threshold.
    assert regress.confirm(finding, steps[-1]).confirmed
    assert not regress.confirm(finding, steps[0]).confirmed


def test_a_uniform_slowdown_is_one_finding_with_the_floor_beside_it(tmp_path):
    """Every step 5% slower moves the median and the floor at the same commit: one alarm (the
    step time's), the floor listed with the derived metrics; not two findings and two bisects."""
    steps = [*noisy(2, 8, 340.0, 0.002), 340.0 * 1.05]
    floor_ms = [*noisy(5, 8, 333.0, 0.002), 333.0 * 1.05]
    write_history(tmp_path, {**speed_family(steps), f"{STAGE}.track_step_floor_ms": floor_ms})
    report = regress.check(tmp_path)
    (finding,) = report.regressions
    assert finding.metric == "step_time_ms" and finding.new
    derived = dict(finding.derived)
    assert derived["step_floor_ms"] == pytest.approx(5.0, abs=0.5)  # against a noisy level


def test_regressions_judge_the_floor_with_its_own_record(tmp_path):
    """A 2% kernel slowdown in the floor of a bimodal stage: the floor's own record (0.4%) finds
    it, the median's spread (2%) would hide it; the median's series stays the speed family's."""
    floor_ms = [*noisy(5, 8, 333.0, 0.002), 333.0 * 1.02]
    series = {**speed_family(noisy(3, 9, 340.0, 0.003)), f"{STAGE}.track_step_floor_ms": floor_ms}
    write_history(tmp_path, series)
    spread = {"step_time_ms": 2.0, "step_floor_ms": 0.4}
    metrics = {
        name: noise.metric_noise([100 * (1 + sigma / 100) ** z for z in (-1, -0.5, 0, 0.5, 1)])
        for name, sigma in spread.items()
    }
    noise.append(tmp_path, [dataclasses.replace(_record(2.0), metrics=metrics)])
    (finding,) = regress.check(tmp_path).regressions
    assert finding.metric == "step_floor_ms" and not finding.derived
    assert finding.prior.sigma == pytest.approx(metrics["step_floor_ms"].sigma_log)
    speed = noise.priors(noise.load(tmp_path), MACHINE)[(STAGE, "speed")]
    assert not judge.latest(floor_ms, worse=1, prior=speed).changed  # the median's noise: hidden


def test_cli_show_prints_the_recorded_table(tmp_path, capsys):
    noise.append(tmp_path, [_record(0.3)])
    assert cli.main(["noise", "--show", "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "00_sdpa" in out and "MDE95" in out


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["noise", "00_sdpa", "--runs", "2"], 2, "--runs 2: at least 3"),
        (["noise", "--show", "--results", "{tmp}/none"], 3, "no noise records"),
        (["noise", "--show", "--results", "{tmp}/file"], 2, "is not a directory"),
        (["noise", "00_sdpa", "--subset", "cpu"], 2, "not both"),
        (["noise", "no_such_stage"], 2, "no_such_stage"),
    ],
)
def test_cli_bad_input_is_one_line(tmp_path, capsys, args, code, message):
    (tmp_path / "file").write_text("x")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert cli.main(argv) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_measured_on_cpu_end_to_end(tmp_path, capsys, monkeypatch):
    """Real processes: three runs of a short CPU stage, a record the judge can read."""
    argv = [
        "noise", "00_sdpa", "--runs", "3", "--device", "cpu", "--model", "tiny",
        "--seq-len", "32", "--min-steps", "3", "--max-steps", "5", "--results", str(tmp_path),
        "--jsonl", str(tmp_path / "runs.jsonl"),
    ]  # fmt: skip
    assert cli.main(argv) == 0
    (record,) = noise.load(tmp_path)
    assert record.runs == 3 and len(record.metrics["step_time_ms"].values) == 3
    lines = (tmp_path / "runs.jsonl").read_text().splitlines()
    assert len(lines) == 3 and all(json.loads(line)["status"] == "ok" for line in lines)
    assert (STAGE, "speed") in noise.priors([record], record.machine)
    assert len(record.metrics["step_floor_ms"].values) == 3
    assert (STAGE, "floor") in noise.priors([record], record.machine)
    # The same processes summarized again from the kept Results: the same record, date too.
    again = tmp_path / "again"
    argv = ["noise", "--from", str(tmp_path / "runs.jsonl"), "--results", str(again)]
    monkeypatch.setenv("STAGEBENCH_ASV_MACHINE", record.machine)
    assert cli.main(argv) == 0
    assert noise.load(again) == [record]


def test_compare_of_two_commits_uses_the_measured_noise(tmp_path):
    steps = [*noisy(5, 8, 240.0, 0.0008), 241.5]
    hashes = write_history(tmp_path, speed_family(steps))
    rows = {r.metric: r for r in compare.commits(tmp_path, hashes[-2], hashes[-1])}
    assert rows["step_time_ms"].verdict == "same"  # 0.6%: under the 1% every stage gets
    noise.append(tmp_path, [_record(0.08)])
    rows = {r.metric: r for r in compare.commits(tmp_path, hashes[-2], hashes[-1])}
    assert rows["step_time_ms"].verdict == "regressed"
    assert "separate runs" in rows["step_time_ms"].note


def test_a_zero_spread_never_makes_a_rounding_a_regression():
    prior = judge.Prior(sigma=0.0, df=4, source="5 separate runs")
    assert judge.latest([70.1, 70.1, 70.1, 70.102], worse=1, prior=prior).verdict == judge.SAME
    assert judge.latest([70.1, 70.1, 70.1, 70.3], worse=1, prior=prior).verdict == judge.REGRESSED


# Five processes per stage measured on an H100 (docs/results/h100-2026-12-06): their samples,
# and the noise records `stagebench noise` wrote from them.
H100 = Path(__file__).resolve().parents[1] / "docs" / "results" / "h100-2026-12-06"


def _h100_runs(stage: str) -> tuple[list[list[float]], judge.Prior]:
    runs = [
        r.metrics.samples.measured_ms
        for r in results_store.load(H100 / "noise-runs.jsonl")
        if r.stage == stage and r.status == "ok"
    ]
    (record,) = [r for r in noise.load_file(H100 / "noise-records.jsonl") if r.stage == stage]
    priors = noise.priors([record], record.machine)
    return runs, priors[(record.asv_class, "speed")]


def _nights(
    runs: list[list[float]], seed: int, n: int, planted: float, stat=statistics.median
) -> list[float]:
    """n nights: each one of the measured processes (in turn) with its steps resampled; the
    last night's steps all scaled by `planted`. `stat`: what a night tracks of its steps."""
    rng = random.Random(seed)
    values = []
    for night in range(n):
        steps = runs[(seed + night) % len(runs)]
        scale = planted if night == n - 1 else 1.0
        values.append(stat([rng.choice(steps) * scale for _ in steps]))
    return values


def _alarmed(runs, prior, seed: int, planted: float, stat=statistics.median) -> bool:
    """What the nightly does: judge tonight, and alarm only if a re-measure (another process)
    is flagged against the same baseline."""
    values = _nights(runs, seed, 9, planted, stat)
    if judge.latest(values, worse=1, prior=prior).verdict != judge.REGRESSED:
        return False
    again = _nights(runs, seed + 1000, 9, planted, stat)[-1]
    confirm = judge.compare_levels(values[:-1], [again], 1, allow_noise_after=False, prior=prior)
    return confirm.verdict == judge.REGRESSED


def test_a_planted_2pct_change_is_found_and_0pct_is_not_on_h100_samples():
    runs, prior = _h100_runs("00_sdpa")
    assert len(runs) == 5 and 100 * math.expm1(prior.mde) < 0.5  # MDE95 about 0.36%
    seeds = range(40)
    assert all(_alarmed(runs, prior, seed, 1.02) for seed in seeds)
    assert not any(_alarmed(runs, prior, seed, 1.00) for seed in seeds)


def test_a_compile_stage_finds_2pct_most_nights_and_never_alarms_on_0pct():
    """01_kernelize_sdpa_compile's processes differ by 0.3%: the judge's 99% bar with five runs'
    noise is about 1.2-1.7%, so a 2% change is found on most nights (re-measured), not all."""
    runs, prior = _h100_runs("01_kernelize_sdpa_compile")
    seeds = range(40)
    assert sum(_alarmed(runs, prior, seed, 1.02) for seed in seeds) >= 30
    assert not any(_alarmed(runs, prior, seed, 1.00) for seed in seeds)


def test_below_its_mde_a_bimodal_liger_stage_stays_quiet():
    """02_liger_sdpa's processes differ by a few percent (MDE95 about 4.7%): 2% is below what
    two nights of it can show, and the judge does not pretend otherwise; 10% it finds."""
    runs, prior = _h100_runs("02_liger_sdpa")
    assert 100 * math.expm1(prior.mde) > 2.0
    seeds = range(40)
    assert not any(_alarmed(runs, prior, seed, 1.00) for seed in seeds)
    assert sum(_alarmed(runs, prior, seed, 1.02) for seed in seeds) <= 4
    assert sum(_alarmed(runs, prior, seed, 1.10) for seed in seeds) >= 35


def _h100_floor(path: Path, stage: str) -> tuple[list[list[float]], judge.Prior]:
    """A stage's processes in `path` and the floor's prior `stagebench noise` makes of them (the
    committed noise-records.jsonl predates the floor)."""
    loaded = [r for r in results_store.load(path) if r.stage == stage and r.status == "ok"]
    (record,) = noise.summarize(loaded, "h100")
    prior = noise.priors([record], "h100")[(record.asv_class, "floor")]
    return [r.metrics.samples.measured_ms for r in loaded], prior


def test_the_floor_of_a_bimodal_liger_stage_finds_the_2pct_its_median_cannot():
    """02_liger_sdpa's medians differ by a few percent between processes (how often the slow
    host mode comes), their floors by about 0.4%: MDE95 about 1.1% against the median's 4.7%.
    The floor finds a planted 2% on 33 of these 40 seeds (the median on at most 4, above)."""
    runs, prior = _h100_floor(H100 / "noise-runs.jsonl", "02_liger_sdpa")
    assert len(runs) == 5 and 100 * math.expm1(prior.mde) < 1.5
    seeds = range(40)
    floor = stats.step_floor
    assert sum(_alarmed(runs, prior, seed, 1.02, floor) for seed in seeds) >= 30
    assert not any(_alarmed(runs, prior, seed, 1.00, floor) for seed in seeds)


def test_the_floor_prior_holds_on_processes_it_was_not_measured_on():
    """The prior from the five processes above; the nights from eleven other processes of
    02_liger_sdpa on two other machine instances (releases/collector.jsonl: the collector
    default, off or frozen, the same device work). No false alarm on any of these 40 seeds
    (nor on 400, where none was even flagged before the re-measure); a planted 2% is found on
    27."""
    _, prior = _h100_floor(H100 / "noise-runs.jsonl", "02_liger_sdpa")
    others, _ = _h100_floor(H100 / "releases" / "collector.jsonl", "02_liger_sdpa")
    assert len(others) == 11
    seeds = range(40)
    floor = stats.step_floor
    assert not any(_alarmed(others, prior, seed, 1.00, floor) for seed in seeds)
    assert sum(_alarmed(others, prior, seed, 1.02, floor) for seed in seeds) >= 25


def test_a_folded_floor_is_re_measured_on_its_own_and_alarms_when_the_median_is_refuted(
    tmp_path, monkeypatch
):
    """Every step slower at one commit: the median +8% (a burst of host load on that night) and
    the floor +3% (a slower kernel) are one finding. The re-measure shows the median back at its
    level and the floor still up: the floor alarms, not nothing. nox, the stage processes and the
    stack check are fakes of this test; the re-measured values are planted."""
    from stagebench import env as facts
    from stagebench import nightly

    floor_name = f"{STAGE}.track_step_floor_ms"
    steps = [*noisy(2, 8, 340.0, 0.002), 340.0 * 1.08]
    floor_ms = [*noisy(5, 8, 333.0, 0.002), 333.0 * 1.03]
    write_history(tmp_path, {**speed_family(steps), floor_name: floor_ms})
    report = regress.check(tmp_path)
    (finding,) = report.regressions
    assert finding.metric == "step_time_ms" and finding.folded.metric == "step_floor_ms"
    good, bad = finding.good, finding.bad
    planted = {
        (good, STEP_TIME): 340.2, (good, floor_name): 333.1,  # the last good, as usual
        (bad, STEP_TIME): 340.5, (bad, floor_name): 343.1,  # tonight again: median back
    }  # fmt: skip
    monkeypatch.setattr(nightly, "_step", lambda command, env: 0)
    monkeypatch.setattr(nightly, "_remeasured", lambda out, env: dict(planted))
    monkeypatch.setattr(nightly, "_stack_since", lambda *args: [])
    monkeypatch.setattr(facts, "collect", lambda: {})
    env = {"STAGEBENCH_STORE": str(tmp_path / "store.jsonl"), "STAGEBENCH_ASV_MACHINE": MACHINE}
    nightly._remeasure(report, bad, tmp_path / "remeasured", env)
    (after,) = report.regressions
    assert after.metric == "step_floor_ms" and after.confirmed is True
    assert len(report.alarms) == 1
    # Both shown again: the median's finding stays, with the floor's confirmation beside it.
    write_history(tmp_path / "b", {**speed_family(steps), floor_name: floor_ms})
    report = regress.check(tmp_path / "b")
    assert (report.regressions[0].good, report.regressions[0].bad) == (good, bad)
    planted[(bad, STEP_TIME)] = 367.0
    nightly._remeasure(report, bad, tmp_path / "b" / "remeasured", env)
    (both,) = report.regressions
    assert both.metric == "step_time_ms" and both.confirmed and both.folded.confirmed


# -- stagebench noise --from: a newer summary of processes already run ---------------------


def test_from_gives_the_h100_runs_the_floor_records_they_predate(tmp_path, capsys):
    """The committed H100 processes were summarized before the floor existed: --from makes the
    same records again, now with the floor's, named for the machine and dated by the runs."""
    runs_file = H100 / "noise-runs.jsonl"
    assert cli.main(["noise", "--from", str(runs_file), "--results", str(tmp_path)]) == 0
    made = {r.stage: r for r in noise.load(tmp_path)}
    measured = {r.stage: r for r in noise.load_file(H100 / "noise-records.jsonl")}
    assert set(made) == set(measured) == {"00_sdpa", "01_kernelize_sdpa_compile", "02_liger_sdpa"}
    runs = results_store.load(runs_file)
    for stage, record in made.items():
        old = measured[stage]
        assert record.machine == old.machine == "nvidia-h100-80gb-hbm3-x1"
        assert record.asv_class == old.asv_class and record.runs == old.runs == 5
        assert record.metrics["step_time_ms"].values == old.metrics["step_time_ms"].values
        assert "step_floor_ms" not in old.metrics
        own = [r for r in runs if r.stage == stage]
        floors = [round(stats.step_floor(r.metrics.samples.measured_ms), 6) for r in own]
        assert record.metrics["step_floor_ms"].values == floors
        assert record.date == max(r.started_at for r in own)  # when measured, not summarized
    # The floor's MDE95 the results file gives: 0.50%, 0.95%, 1.12%.
    mde = {s: round(r.metrics["step_floor_ms"].mde_pct, 2) for s, r in made.items()}
    assert mde == {"00_sdpa": 0.5, "01_kernelize_sdpa_compile": 0.95, "02_liger_sdpa": 1.12}
    assert "floor MDE95" in capsys.readouterr().out


H100_LATER = H100.with_name("h100-2026-12-07")


def test_from_gives_back_the_records_a_later_h100_job_wrote(tmp_path):
    """The 2026-12-07 job's processes (three files, each with the reference run beside the noise
    runs) summarized again give exactly the records `stagebench noise` wrote on the H100, and
    the MDEs the results file quotes."""
    files = [H100_LATER / f"noise-{name}.jsonl" for name in ("sdpa", "k", "kfa2")]
    argv = ["noise", *(f"--from={f}" for f in files), "--results", str(tmp_path)]
    assert cli.main(argv) == 0
    written = noise.load_file(H100_LATER / "noise-records.jsonl")
    assert sorted(noise.load(tmp_path), key=lambda r: r.stage) == sorted(
        written, key=lambda r: r.stage
    )
    mde = {
        r.stage: (round(r.metrics["step_time_ms"].mde_pct, 2),
                  round(r.metrics["step_floor_ms"].mde_pct, 2))
        for r in written
    }  # fmt: skip
    assert mde == {
        "04_liger_cce_sdpa": (9.68, 5.44),
        "05_kernelize_cce_sdpa_compile": (0.58, 0.31),
        "01_kernelize_sdpa_compile": (0.35, 0.6),
        "01_kernelize_fa2_compile": (8.76, 2.44),
    }
    # Both days measured the same stack: the prior pools them, 0.66% rather than the newer 0.35%
    # (the MDE95 the results file gives). The earlier day's first summary kept no series version
    # (another series to the pool); its floor re-summary of the same five processes is the one.
    earlier = [*noise.load_file(H100 / "noise-records.jsonl"),
               *noise.load_file(H100 / "noise-records-floor.jsonl")]  # fmt: skip
    prior = noise.priors(earlier + written, "nvidia-h100-80gb-hbm3-x1")
    quiet = next(r for r in written if r.stage == "01_kernelize_sdpa_compile")
    pooled = prior[(quiet.asv_class, "speed")]
    assert pooled.df == 8 and round(100 * math.expm1(pooled.mde), 2) == 0.66


def test_from_takes_each_file_as_its_own_measurement(tmp_path):
    """Two files are two measurements, even of one commit and package set: the first two
    rounds of the H100 processes in one file make no record (two runs), the last three in
    another make records of three, and nothing is pooled into five."""
    lines = (H100 / "noise-runs.jsonl").read_text().splitlines()
    early, late = tmp_path / "early.jsonl", tmp_path / "late.jsonl"
    early.write_text("".join(line + "\n" for line in lines[:6]))  # 3 stages x 2 rounds
    late.write_text("".join(line + "\n" for line in lines[6:]))
    argv = ["noise", "--from", str(early), "--from", str(late), "--results", str(tmp_path)]
    assert cli.main(argv) == 0
    made = noise.load(tmp_path)
    assert sorted(r.stage for r in made) == [
        "00_sdpa",
        "01_kernelize_sdpa_compile",
        "02_liger_sdpa",
    ]
    assert {r.runs for r in made} == {3}


def test_a_summary_made_again_replaces_the_first_one_of_the_same_processes(tmp_path):
    """`noise` and `noise --from` date a record by its processes' newest start: the same
    processes summarized again get the same date, and the later line wins."""
    runs = results_store.load(H100 / "noise-runs.jsonl")
    first = noise.summarize([r for r in runs if r.stage == "00_sdpa"], "nvidia-h100-80gb-hbm3-x1")
    first = [dataclasses.replace(first[0], metrics={
        k: v for k, v in first[0].metrics.items() if k != "step_floor_ms"})]  # fmt: skip
    noise.append(tmp_path, first)
    argv = ["noise", "--from", str(H100 / "noise-runs.jsonl"), "--results", str(tmp_path)]
    assert cli.main(argv) == 0
    records = noise.load(tmp_path)
    assert records[0].date == next(r for r in records[1:] if r.stage == "00_sdpa").date
    priors = noise.priors(records, "nvidia-h100-80gb-hbm3-x1")
    assert ("stages.Stage_00_sdpa", "floor") in priors


def test_an_out_of_range_date_is_the_oldest_not_a_crash(tmp_path):
    """A hand-edited date that overflows once moved to UTC: every reader of the priors (the
    judge, compare, the front page) goes on; the record counts as the oldest."""
    newer = _record(0.05, date="2026-12-10T08:00:00+00:00")
    noise.append(tmp_path, [newer, _record(3.0, date="0001-01-01T00:00:00+01:00")])
    prior = noise.priors(noise.load(tmp_path), MACHINE)[(STAGE, "speed")]
    assert prior.sigma == pytest.approx(newer.metrics["step_time_ms"].sigma_log)


def test_noise_still_runs_five_processes_by_default(monkeypatch, tmp_path):
    """Without --runs, five processes a stage (a FAKE measure records what it was asked)."""
    asked = []

    def fake_measure(stage_list, workload, runs, **kwargs):
        asked.append(runs)
        return []

    monkeypatch.setattr(noise, "measure", fake_measure)
    argv = ["noise", "00_sdpa", "--device", "cpu", "--model", "tiny", "--results", str(tmp_path)]
    cli.main(argv)
    assert asked == [5]


def _on_gpu(result: Result, gpu: str, when: str = "2026-12-06T08:00:00+00:00", **workload):
    return dataclasses.replace(
        result,
        env={**result.env, "gpu": gpu, "gpu_count": 1},
        workload={**result.workload, **workload},
        started_at=when,
    )


def test_from_keeps_machines_and_series_apart(tmp_path, monkeypatch):
    """Processes of two machines, or of two settings of one stage (another asv series), never
    make one spread; a group of fewer than three ok processes makes no record, and says so."""
    monkeypatch.delenv("STAGEBENCH_ASV_MACHINE", raising=False)
    base = [
        dataclasses.replace(_result("00_sdpa", "ok", v, steps=[v, v + 1, v + 2]), model=str(v))
        for v in (100.0, 100.5, 99.5)
    ]  # three distinct processes (a Result stored twice counts once)
    h100 = [_on_gpu(r, "NVIDIA H100 80GB HBM3") for r in base]
    h200 = [_on_gpu(r, "NVIDIA H200") for r in base]
    frozen = [_on_gpu(r, "NVIDIA H100 80GB HBM3", host_gc="freeze") for r in base[:2]]
    records, skipped = noise.resummarize([h100[0], h200[0], frozen[0], *h100[1:], *h200[1:]])
    assert sorted((r.machine, r.runs) for r in records) == [
        ("nvidia-h100-80gb-hbm3-x1", 3),
        ("nvidia-h200-x1", 3),
    ]
    assert skipped == ["00_sdpa on nvidia-h100-80gb-hbm3-x1: 1 ok run(s), at least 3 needed"]
    versions = {r.version for r in records}
    assert len(versions) == 1  # both the default series; the frozen collector's is another
    # One name for a history does not make two GPUs one measurement.
    monkeypatch.setenv("STAGEBENCH_ASV_MACHINE", "ci-box")
    records, _ = noise.resummarize([*h100, *h200])
    assert [(r.machine, r.runs) for r in records] == [("ci-box", 3), ("ci-box", 3)]
    # Another package set is another measurement too.
    other = [dataclasses.replace(r, env={**r.env, "packages": {"torch": "2.14.0"}}) for r in h100]
    records, _ = noise.resummarize([*h100, *other])
    assert sorted(r.packages["torch"] for r in records) == ["2.13.0", "2.14.0"]


def test_from_cpu_results_need_the_machine_named(tmp_path, monkeypatch, capsys):
    """A CPU's asv name comes from facts a Result does not keep: --from asks for it rather than
    filing another machine's runs under this one's name."""
    monkeypatch.delenv("STAGEBENCH_ASV_MACHINE", raising=False)
    runs = tmp_path / "runs.jsonl"
    for v in (100.0, 100.5, 99.5):
        run = _result("00_sdpa", "ok", v, steps=[v, v + 1, v + 2])
        results_store.append(runs, dataclasses.replace(run, started_at="2026-12-01T10:00:00Z"))
    argv = ["noise", "--from", str(runs), "--results", str(tmp_path / "out")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "STAGEBENCH_ASV_MACHINE" in err[0]
    assert not (tmp_path / "out" / noise.LOG_NAME).exists()
    monkeypatch.setenv("STAGEBENCH_ASV_MACHINE", "ci-box")
    assert cli.main(argv) == 0
    (record,) = noise.load(tmp_path / "out")
    assert record.machine == "ci-box" and record.runs == 3


@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        (["--show"], 2, "give one"),
        (["00_sdpa"], 2, "no STAGE or --subset"),
        (["--from", "{tmp}/none.jsonl"], 2, "no such file"),
        ([], 3, "makes a record"),
        (["--from", "{tmp}/cpu.jsonl"], 2, "cpu.jsonl: a 00_sdpa Result of no start time names"),
        (["--from", "{tmp}/runs.jsonl"], 2, "given twice"),
        (["--from", "{tmp}"], 2, "not a regular file"),
        (["--runs", "5"], 2, "--jsonl, --runs and --log-dir do not apply"),
        (["--jsonl", "{tmp}/more.jsonl"], 2, "do not apply"),
        (["--log-dir", "{tmp}/logs"], 2, "do not apply"),
        (["--from", "{tmp}/count.jsonl"], 2, "GPU count '8' is not a whole number"),
        (["--from", "{tmp}/spec.jsonl"], 2, "ran 'sdpa+liger'; 00_sdpa is 'sdpa' now"),
    ],
)
def test_from_bad_input_is_one_line(tmp_path, capsys, monkeypatch, extra, code, message):
    monkeypatch.delenv("STAGEBENCH_ASV_MACHINE", raising=False)
    runs = tmp_path / "runs.jsonl"
    one = _on_gpu(_result("00_sdpa", "ok", 100.0), "NVIDIA H100 80GB HBM3")
    results_store.append(runs, one)  # one process: no record
    results_store.append(tmp_path / "cpu.jsonl", _result("00_sdpa", "ok", 100.0))
    counted = dataclasses.replace(one, env={**one.env, "gpu_count": "8"})
    results_store.append(tmp_path / "count.jsonl", counted)
    results_store.append(tmp_path / "spec.jsonl", dataclasses.replace(one, spec="sdpa+liger"))
    argv = ["noise", "--from", str(runs), "--results", str(tmp_path), *extra]
    assert cli.main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / noise.LOG_NAME).exists()


def _h100_like(tmp_path: Path, name: str, levels, commit="abc", when="2026-12-06T08:00:00+00:00"):
    """A file of processes as `noise --jsonl` keeps them, on an H100."""
    path = tmp_path / name
    for i, v in enumerate(levels):
        run = _on_gpu(_result("00_sdpa", "ok", v, steps=[v, v * 1.01, v * 1.02]), "NVIDIA H100")
        start = when.replace("08:00", f"08:{i:02d}")
        results_store.append(path, dataclasses.replace(run, started_at=start))
        path.write_text(path.read_text().replace('"abc"', json.dumps(commit)))
    return path


def test_from_never_counts_a_process_twice_nor_mixes_measurements(tmp_path, capsys):
    """A file appended to twice, the command run twice, or two commits' runs in one file (a
    regression would pass for noise): each process counts once, each commit is its own
    record, and a record already in the log is not written again."""
    runs = _h100_like(tmp_path, "runs.jsonl", (100.0, 100.2, 99.9))
    twice = tmp_path / "twice.jsonl"
    twice.write_text(runs.read_text() * 2)
    other = _h100_like(tmp_path, "other.jsonl", (108.0, 108.1, 108.3), commit="def")
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(runs.read_text() + other.read_text())
    out = tmp_path / "out"
    assert cli.main(["noise", "--from", str(twice), "--results", str(out)]) == 0
    (once,) = noise.load(out)
    assert once.runs == 3 and once.metrics["step_time_ms"].df == 2
    assert cli.main(["noise", "--from", str(runs), "--results", str(out)]) == 0
    assert "already in" in capsys.readouterr().out and len(noise.load(out)) == 1
    assert cli.main(["noise", "--from", str(mixed), "--results", str(out)]) == 0
    by_commit = {r.commit: r for r in noise.load(out)}
    assert set(by_commit) == {"abc", "def"}
    assert by_commit["def"].metrics["step_time_ms"].sigma_pct < 0.5  # not the 8% between them


def test_a_record_of_older_processes_appended_later_does_not_replace_a_newer_one(tmp_path):
    """Priors follow the measurement's date, not the log's order: --from may append a summary
    of last week's processes after tonight's measurement."""
    newer = _record(0.05, date="2026-12-10T08:00:00+00:00", packages={"torch": "2.11.0"})
    older = _record(3.0, date="2026-12-06")  # another stack: its noise no longer holds
    noise.append(tmp_path, [newer, older])
    prior = noise.priors(noise.load(tmp_path), MACHINE)[(STAGE, "speed")]
    assert prior.sigma == pytest.approx(newer.metrics["step_time_ms"].sigma_log)
    assert "2026-12-10" in prior.source
    noise.append(tmp_path, [_record(3.0, date="not a date")])  # a hand edit: counts as oldest
    assert noise.priors(noise.load(tmp_path), MACHINE)[(STAGE, "speed")] == prior


def test_from_survives_values_the_result_loader_lets_through(tmp_path, capsys):
    """An infinite median or a packages field that is no object (hand edits the loader keeps):
    the metric is left out, the record still made, no traceback."""
    runs = _h100_like(tmp_path, "runs.jsonl", (100.0, 100.2, 99.9))
    edited = [json.loads(line) for line in runs.read_text().splitlines()]
    edited[0]["metrics"]["step_time_ms_median"] = float("inf")
    for run in edited:
        run["env"]["packages"] = [1]
    runs.write_text("".join(json.dumps(run) + "\n" for run in edited))
    assert cli.main(["noise", "--from", str(runs), "--results", str(tmp_path)]) == 0
    (record,) = noise.load(tmp_path)
    assert "step_time_ms" not in record.metrics  # two finite medians are no spread
    assert len(record.metrics["step_floor_ms"].values) == 3 and record.packages == {}


def test_from_a_file_that_cannot_be_read_is_one_line(tmp_path, capsys, monkeypatch):
    runs = _h100_like(tmp_path, "runs.jsonl", (100.0, 100.2, 99.9))

    def denied(path):  # fake: a permission error no root-run test can provoke for real
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(results_store, "load", denied)
    assert cli.main(["noise", "--from", str(runs), "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Permission denied" in err[0]
