"""compare --explain: where the time went between two profiled Results, the same stage in two
files or two stages picked with FILE#STAGE; planted profiles, exact numbers."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from asv_history import STEP_TIME, noisy, write_history

from stagebench import cli, results
from stagebench.results import GroupTime, KernelTime, Metrics, ProfileMetrics, Result
from stagebench.workload import Workload

WORKLOAD = Workload(model="qwen3-8b", device="cuda").to_dict()
SOURCE = "cuda: kernels, memcpys and memsets on the device timeline (torch.profiler)"


def _profile(
    groups: dict[str, float], kernels: list[tuple[str, str, float]], seen: int | None = None
) -> ProfileMetrics:
    busy = sum(groups.values())
    return ProfileMetrics(
        source=SOURCE,
        steps=3,
        wall_ms_per_step=busy + 5.0,
        busy_ms_per_step=busy,
        host_gap_ms_per_step=5.0,
        groups={g: GroupTime(ms, round(100 * ms / busy, 2)) for g, ms in groups.items()},
        kernels=[KernelTime(n, g, 36.0, ms) for n, g, ms in kernels],
        kernels_seen=len(kernels) if seen is None else seen,
        rest_ms_per_step=0.0,
    )


def _result(
    stage: str,
    spec: str,
    profile: ProfileMetrics | None,
    step_ms: float = 300.0,
    status: str = "ok",
    notes: dict | None = None,
    commit: str | None = None,
) -> Result:
    metrics = None
    if status == "ok":
        metrics = Metrics(
            measured_steps=30, warmup_steps=3, step_time_ms_median=step_ms, step_time_ms_iqr=2.0,
            step_time_ms_min=step_ms - 1, step_time_ms_max=step_ms + 5, step_time_ci95_pct=0.5,
            tokens_per_step=2048, tokens_per_s=2048 / step_ms * 1000, flops_per_token=4.6e10,
            tflops=300.0, mfu_pct=35.0, mfu_reason="table", seed_flops_per_token=5.1e10,
            seed_tflops=300.0, seed_mfu_pct=35.0, seed_peak_window_mfu_pct=35.0, first_step_s=3.0,
            model_init_s=9.0, loss_first=12.7, loss_last=6.8, grad_norm_first=26.9,
            peak_allocated_gib=64.0, peak_reserved_gib=70.0, n_params=8_190_735_360,
            attention_impl="sdpa", notes=notes or {}, profile=profile,
        )  # fmt: skip
    return Result(
        stage=stage,
        spec=spec,
        status=status,
        reason=None if metrics else "CUDA out of memory",
        model="qwen3-8b",
        workload=dict(WORKLOAD),
        metrics=metrics,
        env={"commit": commit} if commit else {},
    )


LIGER = _profile(
    {"matmul": 200.0, "attention": 60.0, "loss": 12.0, "norm": 8.0},
    [
        ("nvjet_tst_256x128_64x4_1x2_h_bz_coopA_NTT", "matmul", 150.0),
        ("flash_fwd_kernel", "attention", 40.0),
        ("liger_cross_entropy_kernel", "loss", 12.0),
        ("_rms_norm_forward_kernel", "norm", 8.0),
    ],
)
PLAIN = _profile(
    {"matmul": 200.0, "attention": 60.0, "loss": 10.0, "norm": 14.0, "elementwise": 6.0},
    [
        ("nvjet_tst_256x128_64x4_1x2_h_bz_coopA_NTT", "matmul", 150.0),
        ("flash_fwd_kernel", "attention", 40.0),
        ("_cce_lse_forward_kernel", "loss", 10.0),
        ("triton_red_fused__to_copy_add_mean_mul_pow_rsqrt_1", "norm", 14.0),
        ("vectorized_elementwise_kernel<4, CUDAFunctor_add<BFloat16>>", "elementwise", 6.0),
    ],
)


def _store(path, *rows: Result):
    for r in rows:
        results.append(path, r)
    return path


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(["compare", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _row(out: str, first_cell: str) -> str:
    return next(line for line in out.splitlines() if line.startswith(f"| {first_cell} |"))


def test_two_stages_of_one_run_picked_with_file_hash_stage(tmp_path, capsys):
    """`sdpa+liger+cce` against `sdpa+cce`: what Liger adds shows as the norm group shrinking
    and its kernels replacing inductor's and CCE's."""
    run = _store(
        tmp_path / "run.jsonl",
        _result("04_liger_cce_sdpa", "sdpa+liger+cce", LIGER, step_ms=285.0),
        _result("sdpa+cce", "sdpa+cce", PLAIN, step_ms=295.0),
    )
    code, out, err = _cli(capsys, f"{run}#04_liger_cce_sdpa", f"{run}#sdpa+cce", "--explain")
    assert code == 1, (out, err)  # 285 -> 295 ms beyond both runs' CIs: the verdict stands
    assert "#### 04_liger_cce_sdpa -> sdpa+cce" in out
    assert "| 04_liger_cce_sdpa -> sdpa+cce | step_time_ms | 285.00 | 295.00 |" in out
    assert _row(out, "wall") == "| wall | 285.000 | 295.000 | +10.000 | +3.5 |"
    assert _row(out, "host gap") == "| host gap | 5.000 | 5.000 | +0.000 | +0.0 |"
    assert _row(out, "group: norm") == "| group: norm | 8.000 | 14.000 | +6.000 | +75.0 |"
    assert _row(out, "group: elementwise") == "| group: elementwise | 0.000 | 6.000 | +6.000 | - |"
    assert _row(out, "group: loss") == "| group: loss | 12.000 | 10.000 | -2.000 | -16.7 |"
    kernel_rows = [line for line in out.splitlines() if line.startswith("| `")]
    assert kernel_rows[0].startswith(
        "| `triton_red_fused__to_copy_add_mean_mul_pow_rsqrt_1` | norm | 0.000 | 14.000 | "
        "+14.000 | - -> 36 |"
    )
    assert "| `flash_fwd_kernel` | attention | 40.000 | 40.000 | +0.000 | 36 -> 36 |" in out


def test_a_stage_is_picked_by_its_spec_too(tmp_path, capsys):
    run = _store(tmp_path / "run.jsonl", _result("04_liger_cce_sdpa", "sdpa+liger+cce", LIGER))
    other = _store(tmp_path / "other.jsonl", _result("sdpa+cce", "sdpa+cce", PLAIN))
    code, out, _ = _cli(
        capsys, f"{run}#sdpa+liger+cce", f"{other}#sdpa+cce", "--explain", "--format", "json"
    )
    data = json.loads(out)
    (explained,) = data["explain"]
    assert explained["label"] == "04_liger_cce_sdpa -> sdpa+cce"
    groups = {g["name"]: (g["before_ms"], g["after_ms"]) for g in explained["groups"]}
    assert groups["norm"] == (8.0, 14.0)
    assert code == 0 and data["regressed"] == 0


def test_the_same_stage_in_two_files_ranks_the_ten_largest_kernel_changes(tmp_path, capsys):
    names = [f"kernel_{i}" for i in range(15)]
    before = _profile({"other": 150.0}, [(n, "other", 10.0) for n in names])
    after = _profile({"other": 255.0}, [(n, "other", 10.0 + i) for i, n in enumerate(names)])
    a = _store(tmp_path / "a.jsonl", _result("00_sdpa", "sdpa", before))
    b = _store(tmp_path / "b.jsonl", _result("00_sdpa", "sdpa", after))
    code, out, _ = _cli(capsys, str(a), str(b), "--explain", "--format", "json")
    (explained,) = json.loads(out)["explain"]
    ranked = [k["name"] for k in explained["kernels"]]
    assert ranked == [f"kernel_{i}" for i in range(14, 4, -1)]  # by |change|, ten of them
    assert code == 0  # same step time: compare's own verdict is untouched


def test_a_kernel_below_a_truncated_top_list_is_unknown_not_zero(tmp_path, capsys):
    before = _profile({"matmul": 100.0}, [("gemm_a", "matmul", 60.0)], seen=50)
    after = _profile({"matmul": 100.0}, [("gemm_b", "matmul", 70.0)], seen=50)
    a = _store(tmp_path / "a.jsonl", _result("00_sdpa", "sdpa", before))
    b = _store(tmp_path / "b.jsonl", _result("00_sdpa", "sdpa", after))
    _, out, _ = _cli(capsys, str(a), str(b), "--explain")
    assert "| `gemm_b` | matmul | - | 70.000 | +70.000 | - -> 36 |" in out
    assert "below it there" in out


@pytest.mark.parametrize(
    ("other", "words"),
    [
        (
            _result("00_sdpa", "sdpa", None, notes={"profile": "off (profile_steps=0)"}),
            "after: 00_sdpa has no profile (off (profile_steps=0))",
        ),
        (
            _result("00_sdpa", "sdpa", None),
            "after: 00_sdpa has no profile (measured before Result schema 4)",
        ),
        (_result("00_sdpa", "sdpa", None, status="oom"), "after: 00_sdpa is oom"),
    ],
    ids=["profiling-off", "older-result", "failed-stage"],
)
def test_a_side_without_a_profile_is_said_not_guessed(tmp_path, capsys, other, words):
    a = _store(tmp_path / "a.jsonl", _result("00_sdpa", "sdpa", LIGER))
    b = _store(tmp_path / "b.jsonl", other)
    code, out, err = _cli(capsys, str(a), str(b), "--explain")
    assert "#### 00_sdpa" in out and f"Nothing to explain: {words}" in out, out
    assert code in (0, 1) and err == ""


@pytest.mark.parametrize(
    ("before", "words"),
    [
        ("{a}#nope", "no stage 'nope' in {a}; it holds: 00_sdpa"),
        ("{a}#", "give FILE#STAGE"),
        ("abc123#00_sdpa", "not one of each"),
        ("{a}#00_sdpa", "no such result file"),
    ],
)
def test_a_bad_selector_is_one_line_of_bad_input(tmp_path, capsys, before, words):
    a = _store(tmp_path / "a.jsonl", _result("00_sdpa", "sdpa", LIGER))
    after = str(tmp_path / "missing.jsonl") if "no such" in words else str(a)
    code, out, err = _cli(capsys, before.format(a=a), after, "--explain")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and out == "", (out, err)
    assert words.format(a=a) in lines[0]


def test_one_selector_picks_the_same_stage_on_the_other_side(tmp_path, capsys):
    a = _store(
        tmp_path / "a.jsonl",
        _result("00_sdpa", "sdpa", LIGER),
        _result("02_liger_sdpa", "sdpa+liger", LIGER),
    )
    b = _store(tmp_path / "b.jsonl", _result("00_sdpa", "sdpa", PLAIN))
    code, out, _ = _cli(capsys, f"{a}#00_sdpa", str(b), "--explain")
    assert code == 0 and "02_liger_sdpa" not in out  # only the selected pair, nothing missing
    assert "#### 00_sdpa" in out


def test_two_commits_are_explained_from_the_stored_results(tmp_path, capsys):
    """The history's store keeps every full Result; a commit's are those whose env names it."""
    hashes = write_history(tmp_path, {STEP_TIME: noisy(4, 8, 300.0, 0.005)})
    _store(
        tmp_path / results.STORE_NAME,
        _result("00_sdpa", "sdpa", LIGER, commit=hashes[3]),
        _result("00_sdpa", "sdpa", PLAIN, commit=hashes[-1]),
    )
    code, out, _ = _cli(
        capsys, hashes[3][:8], hashes[-1][:8], "--results", str(tmp_path), "--explain"
    )
    assert code == 0, out
    assert _row(out, "group: norm") == "| group: norm | 8.000 | 14.000 | +6.000 | +75.0 |"


def test_two_commits_without_a_store_still_get_their_verdict(tmp_path, capsys):
    hashes = write_history(tmp_path, {STEP_TIME: noisy(4, 8, 300.0, 0.005)})
    code, out, _ = _cli(capsys, hashes[3], hashes[-1], "--results", str(tmp_path), "--explain")
    assert code == 0 and "| step_time_ms |" in out
    assert "Nothing to explain: no stored Results to explain with" in out


def test_the_history_side_imports_no_torch():
    """compare, explain and the site read Results on machines without torch."""
    modules = "compare explain frontpage history judge regress results site"
    code = (
        "import sys\n"
        f"for m in {modules.split()!r}: __import__('stagebench.' + m)\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_file_whose_name_holds_a_hash_is_a_file(tmp_path, capsys):
    odd = _store(tmp_path / "night#3.jsonl", _result("00_sdpa", "sdpa", LIGER))
    code, out, err = _cli(capsys, str(odd), f"{odd}#00_sdpa", "--explain")
    assert code == 0 and err == "" and "#### 00_sdpa" in out


def test_a_release_that_adds_a_host_sync_is_shown_beside_the_kernels(tmp_path, capsys):
    """Each side's counted host syncs (notes.host_syncs) are printed under the kernel table; a
    side measured before they were counted says so; Results without them print nothing."""
    added = "1 a step: cut_cross_entropy/utils.py:38 x1"
    a = _store(tmp_path / "a.jsonl", _result("04_liger_cce_sdpa", "sdpa+liger+cce", PLAIN))
    b = _store(
        tmp_path / "b.jsonl",
        _result("04_liger_cce_sdpa", "sdpa+liger+cce", PLAIN, notes={"host_syncs": added}),
    )
    _, out, _ = _cli(capsys, str(a), str(b), "--explain")
    assert f"Host syncs inside a step: before `not counted`; after `{added}`." in out
    _, out, _ = _cli(capsys, str(a), str(a), "--explain")
    assert "Host syncs" not in out
    _, out, _ = _cli(capsys, str(b), str(b), "--explain", "--format", "json")
    (explained,) = json.loads(out)["explain"]
    assert explained["host_syncs"] == [added, added]


def test_host_syncs_are_shown_even_where_a_side_has_no_profile(tmp_path, capsys):
    """A profiler that failed leaves no profile, but the counted syncs still explain a change."""
    note = "36 a step: transformers/modeling_flash_attention_utils.py:794 x36"
    a = _store(tmp_path / "a.jsonl", _result("00_fa2", "fa2", PLAIN))
    b = _store(
        tmp_path / "b.jsonl",
        _result("00_fa2", "fa2", None, notes={"profile": "failed: planted", "host_syncs": note}),
    )
    _, out, _ = _cli(capsys, str(a), str(b), "--explain")
    assert "Nothing to explain: after: 00_fa2 has no profile (failed: planted)." in out
    assert f"Host syncs inside a step: before `not counted`; after `{note}`." in out


def test_host_syncs_are_shown_beside_profiles_of_different_kinds(tmp_path, capsys):
    import dataclasses

    cpu = dataclasses.replace(PLAIN, source="cpu: aten op self time (torch.profiler)")
    note = "none flagged in one step"
    a = _store(tmp_path / "a.jsonl", _result("00_sdpa", "sdpa", cpu))
    b = _store(tmp_path / "b.jsonl", _result("00_sdpa", "sdpa", PLAIN, notes={"host_syncs": note}))
    _, out, _ = _cli(capsys, str(a), str(b), "--explain")
    assert "profiles of different kinds (cpu vs cuda)" in out
    assert f"Host syncs inside a step: before `not counted`; after `{note}`." in out
