"""The front page from stored results: rows, statuses, changes, links; the site self-contained."""

from __future__ import annotations

import dataclasses
import html
import re

from asv_history import FIRST_STEP, MEMORY, MFU, OK, STEP_TIME, write_history
from test_compare import _result

from stagebench import PROTOCOL_VERSION, frontpage, noise, results, site

SEED_MFU = "stages.Stage_00_sdpa.track_seed_mfu"
FLOOR = "stages.Stage_00_sdpa.track_step_floor_ms"


def _history(tmp_path, steps: list[float], ok: list[float] | None = None) -> list[str]:
    n = len(steps)
    series = {
        STEP_TIME: steps,
        SEED_MFU: [35.0 * 300.0 / s for s in steps],
        MFU: [31.0 * 300.0 / s for s in steps],
        MEMORY: [70.1] * n,
        FIRST_STEP: [3.0] * n,
        OK: ok or [1.0] * n,
    }
    return write_history(tmp_path, series)


def _store(tmp_path, commit: str, **kwargs) -> None:
    result = _result("00_sdpa", **kwargs)
    result.env = {"commit": commit}
    results.append(tmp_path / "stagebench-results.jsonl", result)


def _cells(page: str, stage: str) -> list[str]:
    row = re.search(rf'<td class="stage">{re.escape(stage)}</td>(.*?)</tr>', page, re.S)
    assert row, page[:2000]
    return [
        html.unescape(re.sub(r"<[^>]+>", "", c)).strip()
        for c in re.findall(r"<td[^>]*>(.*?)</td>", row.group(1), re.S)
    ]


def test_a_row_shows_the_latest_night_beside_the_previous_and_the_baseline(tmp_path):
    steps = [300.0, 301.0, 299.0, 300.5, 300.0, 330.0]
    hashes = _history(tmp_path, steps)
    _store(tmp_path, hashes[-1], step_ms=330.0, mfu=31.8)
    page, files = frontpage.render(tmp_path)
    status, mfu, _, _, memory, step, previous, baseline, noise, _, link = _cells(page, "00_sdpa")
    assert (status, mfu, memory, step) == ("ok", "31.8", "70.1", "330.0")
    assert previous == "+10.0%" and baseline == "+10.0%"
    assert noise.startswith("±")
    assert link == "Result" and files["results/Stage_00_sdpa.json"]["stage"] == "00_sdpa"
    assert 'href="asv.html#stages.Stage_00_sdpa.track_step_time_ms"' in page
    assert 'class="regressed"' in page and "nox -s bisect --" in page  # the alarm's command
    assert "<svg" in page  # a trend line


def _page_with_floor(tmp_path, steps: list[float], floor: list[float]) -> str:
    """The front page of a history of the step time and its floor, tonight's Result stored."""
    hashes = write_history(tmp_path, {STEP_TIME: steps, FLOOR: floor, OK: [1.0] * len(steps)})
    _store(tmp_path, hashes[-1], step_ms=steps[-1])
    page, _ = frontpage.render(tmp_path)
    assert re.search(r'<tr class="regressed"><td class="stage">00_sdpa</td>', page), page[:3000]
    return page


def test_a_regression_shows_even_where_another_family_improved(tmp_path):
    """The floor dropping (a faster kernel) while the median rose (more host gaps): the row
    shows the regression, not the improvement."""
    steps = [300.0, 301.0, 299.0, 300.5, 300.0, 330.0]
    _page_with_floor(tmp_path, steps, [290.0, 290.5, 289.5, 290.2, 290.0, 260.0])


def test_a_floor_regression_names_itself_and_leaves_the_median_s_change_uncoloured(tmp_path):
    """The median fell 5% (fewer host gaps) while the floor rose 3% (a slower kernel): the row is
    a regression, its detail says it is the floor's, and the -5% step-time change beside it is
    not painted as the regression."""
    steps = [330.0, 331.0, 329.0, 330.5, 330.0, 313.0]
    page = _page_with_floor(tmp_path, steps, [300.0, 300.3, 299.8, 300.1, 300.0, 309.0])
    assert "regression (step_floor_ms +3.0%):" in page
    assert '<td class="num change same">-5.2%</td>' in page
    # Painted by the cell's own class only (the row's would colour the median's -5.2% red).
    assert "tr.regressed td.change" not in page
    assert "td.change.regressed { color: #a31515" in page


def test_a_regression_in_one_lane_marks_that_lane_s_row_only(tmp_path):
    """The canary regressed, the locked lane did not: one machine, two tables; only the
    canary's row is a regression."""
    flat = [300.0, 301.0, 299.0, 300.5, 300.0, 300.2]
    slow = [300.0, 301.0, 299.0, 300.5, 300.0, 330.0]
    write_history(tmp_path, {STEP_TIME: flat, OK: [1.0] * 6}, env="interpreter-py3.11")
    write_history(tmp_path, {STEP_TIME: slow, OK: [1.0] * 6}, env="canary-py3.11")
    page, _ = frontpage.render(tmp_path)
    rows = re.findall(r'<tr class="(\w+)"><td class="stage">00_sdpa</td>', page)
    assert sorted(rows) == ["regressed", "same"], rows


def test_a_failed_stage_is_explained_in_its_row(tmp_path):
    hashes = _history(tmp_path, [300.0, 301.0, 299.0, 300.0], ok=[1.0, 1.0, 1.0, 0.0])
    failed = dataclasses.replace(_result("00_sdpa", status="oom"), reason="CUDA out of memory (x)")
    failed.env = {"commit": hashes[-1]}
    results.append(tmp_path / "stagebench-results.jsonl", failed)
    page, _ = frontpage.render(tmp_path)
    assert _cells(page, "00_sdpa")[0] == "oom"
    assert "<b>oom</b>: CUDA out of memory (x)" in page


def test_a_compiled_stage_that_fell_back_is_marked_and_explained(tmp_path):
    hashes = _history(tmp_path, [300.0, 301.0, 299.0, 300.0])
    result = _result("00_sdpa")
    result.metrics.compile = results.CompileMetrics(
        graphs=43, graph_breaks=38, recompiles=36, eager_frames=0,
        break_reasons={"Data-dependent branching": 36},
    )  # fmt: skip
    result.env = {"commit": hashes[-1]}
    results.append(tmp_path / "stagebench-results.jsonl", result)
    page, _ = frontpage.render(tmp_path)
    assert _cells(page, "00_sdpa")[0] == "ok*"
    assert "compile: 38 graph break(s) (36x Data-dependent branching)" in page


def test_the_noise_column_gives_the_measured_mde(tmp_path):
    hashes = _history(tmp_path, [300.0, 301.0, 299.0, 300.5, 300.0])
    _store(tmp_path, hashes[-1])
    page, _ = frontpage.render(tmp_path)
    assert "MDE" not in _cells(page, "00_sdpa")[8]
    step = noise.metric_noise([300.0, 303.0, 297.0, 301.5, 298.5])
    record = noise.StageNoise(
        machine="h100", stage="00_sdpa", asv_class="stages.Stage_00_sdpa", spec="sdpa",
        shape="b1x2048", protocol=PROTOCOL_VERSION, runs=5, metrics={"step_time_ms": step},
    )  # fmt: skip
    noise.append(tmp_path, [record])
    page, _ = frontpage.render(tmp_path)
    assert _cells(page, "00_sdpa")[8] == f"±{step.sigma_pct:.1f}% (MDE {step.mde_pct:.1f}%)"


def test_a_pinned_baseline_moves_the_baseline_column(tmp_path):
    hashes = _history(tmp_path, [300.0, 330.0, 330.0, 330.0, 330.0])
    page, _ = frontpage.render(tmp_path, baseline=hashes[1])
    assert _cells(page, "00_sdpa")[7] == "+0.0%"


def test_the_site_refuses_pages_that_ask_other_hosts(tmp_path):
    (tmp_path / "index.html").write_text(
        '<script src="https://code.jquery.com/jquery.js"></script>'
        '<a href="https://github.com/x/y/commit/abc">a link is no request</a>'
        '<link rel="stylesheet" href="vendor/local.css">'
    )
    (tmp_path / "style.css").write_text("body { background: url(//cdn.example/x.png) }")
    assert site.external_requests(tmp_path) == [
        "index.html: https://code.jquery.com/jquery.js",
        "style.css: //cdn.example/x.png",
    ]


def test_asv_pages_load_the_shipped_libraries(tmp_path):
    """asv's own page names its CDN copies; localize points every one at the shipped file."""
    cdn = "".join(f'<script src="{url}"></script>' for url in site.VENDORED if url.endswith(".js"))
    (tmp_path / "index.html").write_text(f"<html><head>{cdn}</head></html>")
    site.localize(tmp_path)
    assert site.external_requests(tmp_path) == []
    for url in site.VENDORED:
        assert (tmp_path / "vendor" / site.vendor_name(url)).stat().st_size > 1000


def test_the_step_time_says_where_the_time_goes_when_the_result_has_a_profile(tmp_path):
    from test_report import _profile

    hashes = _history(tmp_path, [300.0, 301.0, 299.0, 300.5])
    result = _result("00_sdpa", step_ms=300.5)
    result.env = {"commit": hashes[-1]}
    result.metrics.profile = _profile()
    results.append(tmp_path / "stagebench-results.jsonl", result)
    page, _ = frontpage.render(tmp_path)
    assert (
        'title="where the time goes: matmul 65%, attention 20%, norm 10%; host gap 4% of the '
        'step"><a href="asv.html#stages.Stage_00_sdpa.track_step_time_ms"'
    ) in page
    assert '00_sdpa</td><td class="status ok">ok</td>' in page  # no `*`: not a note


def test_lanes_are_labelled_locked_and_canary_with_what_the_canary_moved():
    from stagebench.history import Source

    locked = frontpage._lane_label(Source("h100", "interpreter-py3.12"), [])
    canary = frontpage._lane_label(Source("h100", "canary-py3.12"), ["liger-kernel 0.8.5 -> 0.8.6"])
    assert locked == "locked lane, the image's pins"
    assert canary == "canary lane, the newest releases: liger-kernel 0.8.5 -> 0.8.6"
    assert frontpage._lane_label(Source("h100", "existing-py_python3.11"), []) == ""
