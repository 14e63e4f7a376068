"""compare: two commits of asv history or two result files; direction- and noise-aware."""

from __future__ import annotations

import json

from test_regress import MACHINE, MFU, OK, STEP_TIME, noisy, write_history

from stagebench import cli, results
from stagebench.results import Metrics, Result


def _result(
    stage: str,
    status: str = "ok",
    step_ms: float = 300.0,
    ci: float = 0.5,
    mfu: float = 35.0,
    reserved: float = 70.0,
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
        )
    return Result(
        stage=stage,
        spec="sdpa",
        status=status,
        reason=None if metrics else "oom",
        model="qwen3-8b",
        workload={},
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
    assert "| 00_sdpa | step_time_ms | 300.00 | 330.00 | +10.0 | 1.0 | 🔴 regressed |" in out
    assert "| 00_sdpa | mfu | 35.00 | 31.80 | -9.1 | 1.0 | 🔴 regressed |" in out


def test_result_sets_within_noise_are_the_same(tmp_path, capsys):
    a, b = _files(
        tmp_path, [_result("00_sdpa", ci=2.0)], [_result("00_sdpa", ci=2.0, step_ms=309.0)]
    )
    code, out = _run(capsys, str(a), str(b))
    assert code == 0, out  # +3% inside 4% of combined CI
    assert "| 00_sdpa | step_time_ms | 300.00 | 309.00 | +3.0 | 4.0 | same |" in out


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
    assert verdicts[("00_sdpa", "mfu")] == "improved"
    assert verdicts[("00_sdpa", "peak_reserved_gib")] == "same"


def test_commits_from_asv_history(tmp_path, capsys):
    mfu = noisy(1, 12, 35.0, 0.005, step_at=8, step=-0.05)
    step = noisy(2, 12, 300.0, 0.005)
    hashes = write_history(tmp_path, {MFU: mfu, STEP_TIME: step, OK: [1.0] * 11 + [0.0]})
    code, out = _run(
        capsys,
        hashes[2][:8],
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


def test_unknown_commit_is_bad_input(tmp_path, capsys):
    write_history(tmp_path, {MFU: [35.0, 35.1, 34.9]})
    code = cli.main(["compare", "deadbeef", "cafebabe", "--results", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "deadbeef" in err[0]
