"""compare: two commits of asv history or two result files; direction- and noise-aware."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from pathlib import Path

import pytest
from asv_history import (
    MACHINE,
    MFU,
    OK,
    STEP_TIME,
    noisy,
    speed_family,
    write_history,
)

from stagebench import cli, compare, noise, results
from stagebench.results import Metrics, Result, Samples
from stagebench.workload import Workload


def _result(
    stage: str,
    status: str = "ok",
    step_ms: float = 300.0,
    ci: float = 0.5,
    mfu: float = 35.0,
    reserved: float = 70.0,
    workload: dict | None = None,
    steps: list[float] | None = None,
) -> Result:
    metrics = None
    if status == "ok":
        metrics = Metrics(
            measured_steps=30,
            warmup_steps=3,
            step_time_ms_median=step_ms,
            step_time_ms_iqr=2.0,
            step_time_ms_min=step_ms - 1,
            step_time_ms_max=step_ms + 5,
            step_time_ci95_pct=ci,
            tokens_per_step=2048,
            tokens_per_s=2048 / step_ms * 1000,
            flops_per_token=4.6e10,
            tflops=mfu * 9.894,
            mfu_pct=mfu,
            mfu_reason="table",
            seed_flops_per_token=5.1e10,
            seed_tflops=mfu * 9.89,
            seed_mfu_pct=mfu,
            seed_peak_window_mfu_pct=mfu,
            first_step_s=3.0,
            model_init_s=9.0,
            loss_first=12.7,
            loss_last=6.8,
            grad_norm_first=26.9,
            peak_allocated_gib=64.0,
            peak_reserved_gib=reserved,
            n_params=8_190_735_360,
            attention_impl="sdpa",
            samples=None if steps is None else Samples(warmup_ms=[], measured_ms=steps),
        )
    return Result(
        stage=stage,
        spec="sdpa",
        status=status,
        reason=None if metrics else "oom",
        model="qwen3-8b",
        workload=Workload(**(workload or {"model": "qwen3-8b", "device": "cuda"})).to_dict(),
        metrics=metrics,
    )


def _files(tmp_path, before: list[Result], after: list[Result]):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    for path, rows in ((a, before), (b, after)):
        for r in rows:
            results.append(path, r)
    return a, b


def _run(capsys, *argv: str) -> tuple[int, str]:
    code = cli.main(["compare", *argv])
    return code, capsys.readouterr().out


def test_result_sets_flag_a_slowdown_beyond_both_runs_ci(tmp_path, capsys):
    a, b = _files(tmp_path, [_result("00_sdpa")], [_result("00_sdpa", step_ms=330.0, mfu=31.8)])
    code, out = _run(capsys, str(a), str(b))
    assert code == 1
    row = next(line for line in out.splitlines() if "| step_time_ms |" in line)
    assert "| 300.00 | 330.00 | +10.0 | 1.0 |" in row and "🔴 regressed" in row
    mfu = next(line for line in out.splitlines() if "| mfu |" in line)
    assert "(regressed, derived)" in mfu  # one finding, not five
    assert "1 significant regression(s)" in out


def _bimodal(floor: float, slow: int) -> list[float]:
    """40 steps: 2 x (20 - slow) at the floor (+0 to 0.95 ms), 2 x `slow` with a 30 ms host
    gap (35 steps at least give the floor a CI)."""
    return [floor + (i % 20) / 20 + (30.0 if i % 20 < slow else 0.0) for i in range(40)]


def test_result_sets_judge_the_floor_as_a_finding_of_its_own(tmp_path, capsys):
    """The floor is judged against both runs' own CIs of the floor (as the median against its
    own). More slow host steps move the median, not the floor; a slower kernel moves the floor."""
    before = _bimodal(300.0, 4)
    hosty, kernel = _bimodal(300.0, 12), _bimodal(306.0, 4)
    a, b = _files(
        tmp_path,
        [_result("00_sdpa", steps=before), _result("02_liger_sdpa", steps=before)],
        [_result("00_sdpa", steps=hosty), _result("02_liger_sdpa", steps=kernel)],
    )
    rows = {(r.benchmark, r.metric): r for r in compare.result_sets(a, b)}
    floor = rows[("00_sdpa", "step_floor_ms")]
    assert floor.verdict == "same" and floor.lead
    assert floor.noise_pct is not None and 0 < floor.noise_pct < 0.5  # the floor's CIs
    assert floor.note is None or "minimum effect alone" not in floor.note
    moved = rows[("02_liger_sdpa", "step_floor_ms")]
    assert moved.verdict == "regressed" and moved.lead  # its own finding, not speed's
    assert moved.change_pct == pytest.approx(2.0, abs=0.01)
    assert compare.regressed(list(rows.values())) == 1


def test_result_sets_without_samples_leave_the_floor_unjudged(tmp_path, capsys):
    a, b = _files(tmp_path, [_result("00_sdpa")], [_result("00_sdpa", step_ms=330.0, mfu=31.8)])
    rows = {r.metric: r for r in compare.result_sets(a, b)}
    assert rows["step_floor_ms"].verdict == "unjudged" and rows["step_floor_ms"].note == (
        "not measured"
    )
    assert rows["step_time_ms"].verdict == "regressed"


def test_result_sets_within_noise_are_the_same(tmp_path, capsys):
    a, b = _files(
        tmp_path, [_result("00_sdpa", ci=2.0)], [_result("00_sdpa", ci=2.0, step_ms=309.0)]
    )
    code, out = _run(capsys, str(a), str(b))
    assert code == 0, out  # +3% inside 4% of combined CI
    assert "| 00_sdpa | step_time_ms | 300.00 | 309.00 | +3.0 | 4.0 |" in out


def test_result_sets_improvement_and_failure(tmp_path, capsys):
    a, b = _files(
        tmp_path,
        [_result("00_sdpa"), _result("02_liger_sdpa")],
        [_result("00_sdpa", mfu=40.0, step_ms=262.0), _result("02_liger_sdpa", status="oom")],
    )
    code, out = _run(capsys, str(a), str(b), "--format", "json")
    data = json.loads(out)
    verdicts = {(r["benchmark"], r["metric"]): r["verdict"] for r in data["rows"]}
    assert code == 1 and data["regressed"] == 1
    assert verdicts[("02_liger_sdpa", "ok")] == "regressed"
    assert verdicts[("00_sdpa", "step_time_ms")] == "improved"
    assert verdicts[("00_sdpa", "peak_reserved_gib")] == "same"
    assert verdicts[("00_sdpa", "first_step_s")] == "unjudged"  # one value per run


def test_a_stage_missing_on_one_side_is_reported_not_dropped(tmp_path, capsys):
    a, b = _files(tmp_path, [_result("00_sdpa"), _result("02_liger_sdpa")], [_result("00_sdpa")])
    code, out = _run(capsys, str(a), str(b))
    assert code == 3, out
    assert "02_liger_sdpa" in out and "missing" in out


def test_nan_is_never_an_improvement(tmp_path, capsys):
    a, b = _files(tmp_path, [_result("00_sdpa")], [_result("00_sdpa", mfu=math.nan)])
    code, out = _run(capsys, str(a), str(b), "--format", "json")
    rows = {r["metric"]: r for r in json.loads(out)["rows"]}
    assert rows["mfu"]["verdict"] == "unjudged" and code == 0


def test_different_workloads_do_not_compare(tmp_path, capsys):
    cpu = {"model": "tiny", "device": "cpu", "dtype": "float32"}  # vs qwen3-8b on cuda
    a, b = _files(tmp_path, [_result("00_sdpa", workload=cpu)], [_result("00_sdpa")])
    code = cli.main(["compare", str(a), str(b)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "different workloads" in err[0] and "'tiny' vs 'qwen3-8b'" in err[0]


def test_a_missing_file_is_named_as_a_file(tmp_path, capsys):
    a, _ = _files(tmp_path, [_result("00_sdpa")], [])
    code = cli.main(["compare", str(a), str(tmp_path / "nope.jsonl")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "no such result file" in err[0], err
    code = cli.main(["compare", str(a), "abc123"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "not one of each" in err[0]


def test_commits_from_asv_history(tmp_path, capsys):
    mfu = noisy(1, 12, 35.0, 0.005, step_at=8, step=-0.05)
    step = noisy(2, 12, 300.0, 0.005)
    hashes = write_history(tmp_path, {MFU: mfu, STEP_TIME: step, OK: [1.0] * 11 + [0.0]})
    code, out = _run(
        capsys,
        hashes[7][:8],
        hashes[-1][:8],
        "--results",
        str(tmp_path),
        "--machine",
        MACHINE,
        "--format",
        "json",
    )
    rows = {r["metric"]: r for r in json.loads(out)["rows"]}
    assert code == 1
    assert rows["mfu"]["verdict"] == "regressed" and rows["mfu"]["noise_pct"] < 3
    assert rows["step_time_ms"]["verdict"] == "same"
    assert rows["ok"]["verdict"] == "regressed"


def test_unchanged_code_on_a_loaded_machine_is_the_same(tmp_path, capsys):
    """10% run-to-run noise: a 15% swing between two commits of unchanged code is noise."""
    steps = noisy(3, 10, 300.0, 0.10)
    steps[-1] = steps[4] * 0.85
    hashes = write_history(tmp_path, speed_family(steps))
    code, out = _run(
        capsys, hashes[4][:10], hashes[-1][:10], "--results", str(tmp_path), "--format", "json"
    )
    rows = json.loads(out)["rows"]
    assert code == 0 and {r["verdict"] for r in rows} == {"same"}, rows


def test_too_little_history_at_the_first_commit_is_cannot_judge(tmp_path, capsys):
    """B is 50% slower, but A's level has 2 points: no noise to judge by, so no verdict at all
    (exit 3), never 'clean'."""
    hashes = write_history(tmp_path, {STEP_TIME: [300.0, 301.0, 450.0]})
    code, out = _run(capsys, hashes[1], hashes[2], "--results", str(tmp_path), "--format", "json")
    (row,) = json.loads(out)["rows"]
    assert (code, row["verdict"]) == (3, "unjudged")


@pytest.mark.parametrize(
    ("before", "message"),
    [("", "empty commit"), ("deadbeef", "no results at commit 'deadbeef'")],
)
def test_bad_commits_are_bad_input(tmp_path, capsys, before, message):
    hashes = write_history(tmp_path, {MFU: [35.0, 35.1, 34.9]})
    code = cli.main(["compare", before, hashes[0], "--results", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err


def test_an_ambiguous_prefix_is_bad_input(tmp_path, capsys):
    hashes = write_history(tmp_path, {MFU: [35.0] * 40})
    first = {h[0] for h in hashes}
    shared = next(c for c in sorted(first) if sum(h.startswith(c) for h in hashes) > 1)
    code = cli.main(["compare", shared, hashes[-1], "--results", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "ambiguous" in err[0], err


def test_a_uniform_slowdown_is_one_significant_regression_with_the_floor_listed(tmp_path):
    before = _bimodal(300.0, 4)
    after = [s * 1.05 for s in before]
    a, b = _files(
        tmp_path,
        [_result("00_sdpa", steps=before)],
        [_result("00_sdpa", step_ms=315.0, mfu=33.3, steps=after)],
    )
    rows = {r.metric: r for r in compare.result_sets(a, b)}
    assert rows["step_time_ms"].verdict == rows["step_floor_ms"].verdict == "regressed"
    assert rows["step_time_ms"].lead and not rows["step_floor_ms"].lead
    assert compare.regressed(list(rows.values())) == 1


def test_a_short_run_s_floor_says_why_only_the_minimum_effect_judges_it(tmp_path):
    before = [300.0 + i / 20 for i in range(20)]
    a, b = _files(
        tmp_path,
        [_result("00_sdpa", steps=before)],
        [_result("00_sdpa", steps=[s * 1.03 for s in before])],
    )
    floor = next(r for r in compare.result_sets(a, b) if r.metric == "step_floor_ms")
    assert floor.verdict == "regressed" and floor.note == (
        "no 95% CI of the floor under 35 steps: the minimum effect alone"
    )


# -- two result files judged with the stage's measured noise -----------------------------------

H100 = Path(__file__).resolve().parents[1] / "docs" / "results" / "h100-2026-12-06"
BY_RECORD = "the judge's bar for two single runs"  # the note of a bar the noise record set


def _h100_processes() -> dict[str, list[Result]]:
    """The H100 processes of nine stages, five each, and the noise records made from them."""
    found: dict[str, list[Result]] = {}
    for name in ("noise-runs.jsonl", "flash/noise-fa.jsonl"):
        in_file: dict[str, list[Result]] = {}
        for r in results.load(H100 / name):
            if r.status == "ok":
                in_file.setdefault(r.stage, []).append(r)
        found.update({s: runs for s, runs in in_file.items() if len(runs) == 5})
    return found


def _slower(result: Result, factor: float) -> Result:
    """The same process with every measured step `factor` times as long (a planted change)."""
    m = result.metrics
    samples = dataclasses.replace(
        m.samples, measured_ms=[t * factor for t in m.samples.measured_ms]
    )
    metrics = dataclasses.replace(m, step_time_ms_median=m.step_time_ms_median * factor,
                                  samples=samples)  # fmt: skip
    return dataclasses.replace(result, metrics=metrics)


def _verdicts(pairs, records) -> dict[str, list[str]]:
    got: dict[str, list[str]] = {"step_time_ms": [], "step_floor_ms": []}
    for before, after in pairs:
        rows = compare.pair_rows([compare.Pair(before.stage, before, after)], Path("a"),
                                 Path("b"), records)  # fmt: skip
        for row in rows:
            if row.metric in got:
                got[row.metric].append(row.verdict)
    return got


def test_two_processes_of_the_same_code_are_judged_by_the_measured_noise():
    """Each run's own CI misses what differs between processes: of the 180 ordered pairs of
    same-code H100 processes, 8% differ by their CIs alone (16 medians, 14 floors); judged with
    the stages' noise records, none does. In-sample: the records are these processes' own."""
    records = noise.load_file(H100 / "noise-records-floor.jsonl")
    pairs = [p for runs in _h100_processes().values() for p in itertools.permutations(runs, 2)]
    assert len(pairs) == 180
    alone = _verdicts(pairs, None)
    assert sum(v != "same" for v in alone["step_time_ms"]) >= 10  # what the records fix
    measured = _verdicts(pairs, records)
    assert measured["step_time_ms"].count("same") == measured["step_floor_ms"].count("same") == 180


def test_a_planted_2pct_slowdown_still_shows_where_the_noise_allows_it():
    """By the judge's rule for two single points with the measured noise (99% one-sided, t of
    the record's 4 degrees of freedom, as `regressions` and the nightly): a quiet stage's 2%
    slower second process regresses in every pair, median and floor; a bimodal Liger stage is
    not held to 2% on its median (noise 1.69%), its floor (0.40%) shows it in some pairs."""
    records = noise.load_file(H100 / "noise-records-floor.jsonl")
    runs = _h100_processes()
    pairs = [(a, _slower(b, 1.02)) for a, b in itertools.permutations(runs["00_sdpa"], 2)]
    got = _verdicts(pairs, records)
    assert got["step_time_ms"] == got["step_floor_ms"] == ["regressed"] * 20
    pairs = [(a, _slower(b, 1.02)) for a, b in itertools.permutations(runs["00_fa3"], 2)]
    assert _verdicts(pairs, records)["step_floor_ms"] == ["regressed"] * 20
    pairs = [(a, _slower(b, 1.02)) for a, b in itertools.permutations(runs["02_liger_sdpa"], 2)]
    got = _verdicts(pairs, records)
    assert "regressed" not in got["step_time_ms"]
    assert got["step_floor_ms"].count("regressed") >= 5  # 8 of 20


def test_measured_noise_of_another_machine_or_series_is_not_used(tmp_path, monkeypatch):
    """A record of another machine (another GPU) gives no bar: the runs' own CIs judge."""
    records = noise.load_file(H100 / "noise-records-floor.jsonl")
    a, b = _h100_processes()["02_liger_sdpa"][:2]
    elsewhere = [dataclasses.replace(r, machine="nvidia-h200-x1") for r in records]
    (same_machine,) = [
        r
        for r in compare.pair_rows([compare.Pair("x", a, b)], Path("a"), Path("b"), records)
        if r.metric == "step_time_ms"
    ]
    (other,) = [
        r
        for r in compare.pair_rows([compare.Pair("x", a, b)], Path("a"), Path("b"), elsewhere)
        if r.metric == "step_time_ms"
    ]
    assert "noise 1.69% of 5 separate runs of 2026-12-06: the judge's bar" in same_machine.note
    assert same_machine.bar_pct > 8  # t(4) at 99% x sqrt(2) x 1.69%
    assert other.bar_pct < 4 and BY_RECORD not in (other.note or "")
    a_env = {**a.env, "gpu": "NVIDIA A100-SXM4-80GB"}  # the runs' own GPUs must agree
    moved = dataclasses.replace(a, env=a_env)
    pair = compare.Pair("x", moved, b)
    (row,) = [r for r in compare.pair_rows([pair], Path("a"), Path("b"), records)
              if r.metric == "step_time_ms"]  # fmt: skip
    assert BY_RECORD not in (row.note or "")
    # The machine override names a history; it does not make an A100 run an H100's.
    monkeypatch.setenv("STAGEBENCH_ASV_MACHINE", "nvidia-h100-80gb-hbm3-x1")
    (row,) = [r for r in compare.pair_rows([pair], Path("a"), Path("b"), records)
              if r.metric == "step_time_ms"]  # fmt: skip
    assert BY_RECORD not in (row.note or "")
    # A stage id that meant another spec when the runs were made: not that series' noise.
    respec = compare.Pair("x", *(dataclasses.replace(r, spec="fa2") for r in (a, b)))
    (row,) = [r for r in compare.pair_rows([respec], Path("a"), Path("b"), records)
              if r.metric == "step_time_ms"]  # fmt: skip
    assert BY_RECORD not in (row.note or "")


def test_an_older_record_without_a_version_is_not_another_shape_s_noise():
    """Records from before they kept their series' version are used for the default series
    only, and only for the shape they were measured at."""
    records = noise.load_file(H100 / "noise-records-floor.jsonl")
    a, b = _h100_processes()["02_liger_sdpa"][:2]
    pair = compare.Pair("x", a, b)
    unversioned = [dataclasses.replace(r, version="") for r in records]
    other_shape = [dataclasses.replace(r, shape="b2x1024") for r in unversioned]

    def note(recs):
        (row,) = [r for r in compare.pair_rows([pair], Path("a"), Path("b"), recs)
                  if r.metric == "step_time_ms"]  # fmt: skip
        return row.note or ""

    assert BY_RECORD in note(unversioned)
    assert BY_RECORD not in note(other_shape)


def test_a_run_noisier_than_the_record_keeps_its_own_wider_bar():
    """The higher bar decides: a run whose own CI is wider than the record's bar (a loaded
    machine tonight) is judged by its CI, not by the quieter record."""
    records = noise.load_file(H100 / "noise-records-floor.jsonl")
    a, b = _h100_processes()["00_sdpa"][:2]
    loud = dataclasses.replace(b.metrics, step_time_ci95_pct=6.0)
    pair = compare.Pair("x", a, dataclasses.replace(_slower(b, 1.04), metrics=dataclasses.replace(
        _slower(b, 1.04).metrics, step_time_ci95_pct=loud.step_time_ci95_pct)))  # fmt: skip
    (row,) = [r for r in compare.pair_rows([pair], Path("a"), Path("b"), records)
              if r.metric == "step_time_ms"]  # fmt: skip
    assert row.verdict == "same" and row.bar_pct > 6 and BY_RECORD not in (row.note or "")
    quiet = compare.Pair("x", a, _slower(b, 1.04))
    (row,) = [r for r in compare.pair_rows([quiet], Path("a"), Path("b"), records)
              if r.metric == "step_time_ms"]  # fmt: skip
    assert row.verdict == "regressed"


def test_compare_files_with_a_results_path_that_is_no_directory_is_bad_input(tmp_path, capsys):
    a = H100 / "noise-runs.jsonl"
    (tmp_path / "log").write_text("")
    code = cli.main(["compare", f"{a}#00_sdpa", f"{a}#00_sdpa", "--results", str(tmp_path / "log")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "not a directory" in err[0]
