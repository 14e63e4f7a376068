"""bisect-release: the search and its verdicts with FAKE measurements (instant), the command's
one-line errors, and end to end on the CPU: the FAKE stagebench-test-plant (tests/plant.py)
slows the training step from 1.3.0 on (or, in its second variant, makes it raise), 1.2.0 does
not import; the bisect must name 1.3.0 and never blame 1.2.0."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import plant
import pytest
from test_releases import serve_index

from stagebench import depbisect, overlay, results
from stagebench.cli import main
from stagebench.depbisect import BAD, GOOD, INCOMPATIBLE, SKIPPED, Trial
from stagebench.metrics import METRICS
from stagebench.releases import Range, Release
from stagebench.results import Result

STEP = METRICS["step_time_ms"]

# The search alone ---------------------------------------------------------------------------


def _search(answers: list[str | None]) -> tuple[depbisect.Search, list[int]]:
    """answers[i]: what index i says ("old", "new", None: cannot be placed)."""
    tried: list[int] = []

    def test(i: int) -> str | None:
        tried.append(i)
        return answers[i]

    return depbisect.search(len(answers), test), tried


def test_the_search_finds_the_first_new_index():
    found, tried = _search(["old", "old", "old", "new", "new", "new", "new", "new"])
    assert (found.last_old, found.first_new, found.skipped) == (2, 3, [])
    assert 0 not in tried and 7 not in tried  # the ends are known already
    assert len(tried) <= 3  # log2 of 6 candidates, rounded up


def test_the_search_steps_around_what_it_cannot_place():
    found, _ = _search(["old", "old", None, "new", "new", "new"])
    assert (found.last_old, found.first_new) == (1, 3)
    assert found.skipped == [2]  # between them: the change is in 2 or 3; 3 is the first measured
    found, _ = _search(["old", None, None, "old", "new", "new"])
    assert (found.last_old, found.first_new, found.skipped) == (3, 4, [])


@pytest.mark.parametrize(
    ("answers", "expected"),
    [
        (["old", "new", "new", "new", "new"], (0, 1)),  # all bad: the first after GOOD
        (["old", "old", "old", "old", "new"], (3, 4)),  # none bad: BAD itself
        (["old", "new"], (0, 1)),  # adjacent: nothing to test
        (["old", None, None, None, "new"], (0, 4)),  # nothing placeable
    ],
)
def test_the_search_at_its_edges(answers, expected):
    found, _ = _search(answers)
    assert (found.last_old, found.first_new) == expected


# The verdicts, with fake measurements ---------------------------------------------------------


def _range(*versions: str, skipped: tuple[str, ...] = ()) -> Range:
    def release(v: str) -> Release:
        return Release(depbisect.Version(v), (), True, "wheel")

    held = [Release(depbisect.Version(v), (), False, "", "sdist only") for v in skipped]
    return Range("pkg", [release(v) for v in versions], held)


def _trial(status: str = "ok", value: float | None = 10.0, ci: float | None = 2.0, **kw) -> Trial:
    reason = None if status in ("ok", INCOMPATIBLE) else f"{status} reason"
    reason = kw.pop("reason", reason)
    return Trial("", "", status, reason, value if status == "ok" else None, ci, **kw)


class FakeMeasure:
    """pkg==VERSION -> a prepared Trial; records what was measured."""

    def __init__(self, by_version: dict[str, Trial]) -> None:
        self.by_version = by_version
        self.measured: list[str] = []

    def __call__(self, requirements: list[str]) -> Trial:
        version = requirements[0].split("==")[1]
        self.measured.append(version)
        return self.by_version[version]


VERSIONS = ("1.0", "1.1", "1.2", "1.3", "1.4", "1.5")


def test_a_slower_release_is_found_and_an_incompatible_one_is_not_blamed():
    measure = FakeMeasure(
        {
            "1.0": _trial(value=10.0),
            "1.1": _trial(value=10.4),
            "1.2": _trial(INCOMPATIBLE),
            "1.3": _trial(value=31.0),
            "1.4": _trial(value=29.0),
            "1.5": _trial(value=30.0),
        }
    )
    outcome = depbisect.bisect_releases(_range(*VERSIONS), measure, STEP, stage="00_sdpa")
    assert measure.measured[:2] == ["1.0", "1.5"]  # GOOD and BAD first
    assert (outcome.first, outcome.last, outcome.exit_code) == ("1.3", "1.1", 0)
    assert outcome.message == "first bad: pkg 1.3 (last good 1.1)"
    verdicts = {t.version: t.verdict for t in outcome.trials}
    assert verdicts == {"1.0": GOOD, "1.1": GOOD, "1.2": INCOMPATIBLE, "1.3": BAD, "1.5": BAD}
    assert outcome.between == ["1.2 (incompatible)"]
    assert outcome.change.text.startswith("step_time_ms 10 -> 30 ms (+200.0%, bar 4.0%")


def test_a_status_change_is_hunted_by_status_and_a_fix_is_found_too():
    failing = {"1.0": "ok", "1.1": "ok", "1.2": "ok", "1.3": "error", "1.4": "error", "1.5": "oom"}
    outcome = depbisect.bisect_releases(
        _range(*VERSIONS), FakeMeasure({v: _trial(s) for v, s in failing.items()}), STEP
    )
    assert (outcome.first, outcome.change.by) == ("1.3", "status")
    assert outcome.change.text == "status ok -> oom (oom reason)"
    assert any(
        n.startswith("1.3 fails otherwise (error) than 1.5 (oom); oom first in 1.5")
        for n in outcome.notes
    )
    fixed = {"1.0": "error", "1.1": "error", "1.2": "ok", "1.3": "ok", "1.4": "ok", "1.5": "ok"}
    outcome = depbisect.bisect_releases(
        _range(*VERSIONS), FakeMeasure({v: _trial(s) for v, s in fixed.items()}), STEP
    )
    assert outcome.message == "first good: pkg 1.2 (last bad 1.1): fixed in 1.2"
    assert {t.version: t.verdict for t in outcome.trials}["1.0"] == BAD


def test_a_first_bad_release_that_fails_otherwise_than_bad_says_so():
    """As seen on the H100 with liger-kernel under fullgraph compile: 0.8.2 runs out of memory,
    0.8.3 brings the compile error that 0.8.5 has. The first bad is 0.8.2, and the table's
    reader learns where the compile error itself began."""
    failing = {"1.0": "ok", "1.1": "ok", "1.2": "oom", "1.3": "compile_error"}
    failing |= {"1.4": "compile_error", "1.5": "compile_error"}
    outcome = depbisect.bisect_releases(
        _range(*VERSIONS), FakeMeasure({v: _trial(s) for v, s in failing.items()}), STEP
    )
    assert outcome.message == "first bad: pkg 1.2 (last good 1.1)"
    assert outcome.notes == [
        "1.2 fails otherwise (oom) than 1.5 (compile_error); compile_error first in 1.3 "
        "(the release before it: 1.2, oom)"
    ]
    same = {v: "oom" if s == "compile_error" else s for v, s in failing.items()}
    outcome = depbisect.bisect_releases(
        _range(*VERSIONS), FakeMeasure({v: _trial(s) for v, s in same.items()}), STEP
    )
    assert not any("fails otherwise" in n for n in outcome.notes)


def test_a_release_that_comes_back_is_called_not_monotone():
    failing = {"1.0": "ok", "1.1": "ok", "1.2": "ok", "1.3": "oom", "1.4": "ok"}
    failing["1.5"] = "compile_error"
    outcome = depbisect.bisect_releases(
        _range(*VERSIONS), FakeMeasure({v: _trial(s) for v, s in failing.items()}), STEP
    )
    assert outcome.message == "first bad: pkg 1.3 (last good 1.2)"
    assert any(n.startswith("not monotone: 1.4 ran ok again after 1.3") for n in outcome.notes)


def test_a_known_end_spelled_otherwise_than_the_index_is_found():
    """Lock mode hands over BAD's run under the lock's spelling (1.5.0 for the index's 1.5)."""
    bad = dataclasses.replace(_trial("compile_error"), package="pkg", version="1.5.0")
    measure = FakeMeasure({v: _trial("ok") for v in VERSIONS[:-1]})
    outcome = depbisect.bisect_releases(_range(*VERSIONS), measure, STEP, known={"1.5": bad})
    assert outcome.message == "first bad: pkg 1.5 (last good 1.4)"
    assert "1.5" not in measure.measured


def test_a_faster_release_is_an_improvement():
    speeds = {"1.0": 30.0, "1.1": 30.0, "1.2": 29.0, "1.3": 30.5, "1.4": 10.0, "1.5": 10.0}
    outcome = depbisect.bisect_releases(
        _range(*VERSIONS), FakeMeasure({v: _trial(value=s) for v, s in speeds.items()}), STEP
    )
    assert outcome.message == "first good: pkg 1.4 (last bad 1.3): an improvement"


def test_good_and_bad_that_measure_the_same_name_no_culprit():
    measure = FakeMeasure({"1.0": _trial(value=10.0, ci=8.0), "1.5": _trial(value=10.5, ci=8.0)})
    outcome = depbisect.bisect_releases(_range(*VERSIONS), measure, STEP)
    assert outcome.exit_code == 3 and outcome.first is None
    assert outcome.message.startswith("GOOD and BAD measure the same: nothing to bisect")
    assert "bar 16.0%" in outcome.message  # the two runs' own CIs, added
    assert measure.measured == ["1.0", "1.5"]
    no_ci = FakeMeasure({"1.0": _trial(value=10.0, ci=None), "1.5": _trial(value=90.0)})
    outcome = depbisect.bisect_releases(_range(*VERSIONS), no_ci, STEP)
    assert outcome.exit_code == 3 and "no confidence interval" in outcome.message
    both_fail = FakeMeasure({"1.0": _trial("error"), "1.5": _trial("error")})
    outcome = depbisect.bisect_releases(_range(*VERSIONS), both_fail, STEP)
    assert outcome.exit_code == 3
    assert outcome.message.startswith("GOOD and BAD cannot be compared: nothing to bisect (both")


def test_an_incompatible_endpoint_cannot_be_bisected_from():
    measure = FakeMeasure({"1.0": _trial(INCOMPATIBLE, reason="pip: conflict"), "1.5": _trial()})
    outcome = depbisect.bisect_releases(_range(*VERSIONS), measure, STEP)
    assert outcome.exit_code == 3
    assert outcome.message.startswith("GOOD pkg 1.0 is incompatible here (pip: conflict)")


def test_a_release_that_fails_while_a_metric_is_hunted_is_skipped_not_placed():
    measure = FakeMeasure(
        {
            "1.0": _trial(value=10.0),
            "1.2": _trial("error"),
            "1.3": _trial(value=30.0),
            "1.1": _trial(value=10.0),
            "1.5": _trial(value=30.0),
        }
    )
    outcome = depbisect.bisect_releases(
        _range("1.0", "1.1", "1.2", "1.3", "1.5", skipped=("1.2.5",)), measure, STEP
    )
    assert outcome.first == "1.3" and outcome.last == "1.1"
    skipped = next(t for t in outcome.trials if t.version == "1.2")
    assert (skipped.verdict, skipped.note) == (SKIPPED, "no step_time_ms: error")
    assert outcome.between == [
        "1.2 (skipped: no step_time_ms: error)",
        "1.2.5 (not installable: sdist only)",
    ]
    table = depbisect.rows(outcome)
    assert [row[0] for row in table] == ["pkg 1.0", "pkg 1.1", "pkg 1.2", "pkg 1.3", "pkg 1.5"]
    markdown = depbisect.to_markdown(outcome)
    assert "| pkg 1.2 | error: error reason | - | skipped (no step_time_ms: error) |" in markdown
    assert json.loads(depbisect.to_json(outcome))["first"] == "1.3"


# Lock mode ------------------------------------------------------------------------------------

OLD_LOCK = """# the image's lock, as docker/requirements.lock writes it
torch==2.9.1 \\
    --hash=sha256:27331cd902fb4322252657f3902adf1c4f6acad9dcad81d8df3ae14c7c4f07c4
flash-attn @ https://example.invalid/flash_attn-2.8.3-cp312-linux_x86_64.whl#sha256=4e \\
    --hash=sha256:4e2f9e39313266b1544b68138b15b91ee6221eccf14f7902b7c6620351340810
liger-kernel==0.6.4 \\
    --hash=sha256:aa \\
    --hash=sha256:bb
Transformers==5.1.0  # a comment
pywin32==306 ; sys_platform == "win32"
--extra-index-url https://example.invalid/simple
rich>=13
"""


def _locks(tmp_path: Path, new: str) -> tuple[Path, Path]:
    old_path, new_path = tmp_path / "old.lock", tmp_path / "new.lock"
    old_path.write_text(OLD_LOCK)
    new_path.write_text(new)
    return old_path, new_path


def test_a_lock_is_read_through_hashes_comments_urls_and_markers(tmp_path):
    old, _ = _locks(tmp_path, "")
    assert depbisect.parse_lock(old) == {
        "torch": "2.9.1",
        "flash-attn": "@ https://example.invalid/flash_attn-2.8.3-cp312-linux_x86_64.whl#sha256=4e",
        "liger-kernel": "0.6.4",
        "transformers": "5.1.0",
    }


BASE = {"torch": "2.9.1+cu128", "liger-kernel": "0.6.4", "transformers": "5.0.0", "rich": "15"}


def _lock_run(tmp_path, new_lock: str, by_version: dict[str, Trial], base_packages=None):
    old, new = _locks(tmp_path, new_lock)
    measure = FakeMeasure(by_version)
    warnings: list[str] = []
    index = tmp_path / "wheels"
    index.mkdir(exist_ok=True)
    for version in ("0.6.4", "0.7.0", "0.7.1", "0.8.0"):
        (index / f"liger_kernel-{version}-py3-none-any.whl").write_bytes(b"")
    outcome = depbisect.bisect_lock(
        old,
        new,
        measure,
        lambda: _trial(value=10.0),
        STEP,
        base_packages or BASE,
        source=depbisect.Source(find_links=index),
        warn=warnings.append,
    )
    return outcome, measure, warnings


def test_a_lock_bump_names_the_package_alone_then_its_release(tmp_path):
    new_lock = OLD_LOCK.replace("liger-kernel==0.6.4", "liger-kernel==0.8.0").replace(
        "Transformers==5.1.0", "transformers==5.2.0"
    )
    outcome, measure, warnings = _lock_run(
        tmp_path,
        new_lock,
        {
            "5.2.0": _trial(value=10.1),
            "0.8.0": _trial(value=30.0),
            "0.7.0": _trial(value=30.0),
            "0.7.1": _trial(value=31.0),
        },
    )
    assert warnings == ["the base stands for OLD, but here: transformers 5.0.0 (OLD pins 5.1.0)"]
    assert outcome.culprits == ["liger-kernel 0.6.4 -> 0.8.0"]
    assert (outcome.package, outcome.first, outcome.last) == ("liger-kernel", "0.7.0", "0.6.4")
    assert "first bad: liger-kernel 0.7.0 (last good 0.6.4)" in outcome.message
    # Each package alone once; then the bisect reuses the base (it has 0.6.4) and 0.8.0's run.
    assert measure.measured == ["0.8.0", "5.2.0", "0.7.0"]
    assert outcome.exit_code == 0


def test_a_lock_bump_where_no_package_alone_does_it_says_so(tmp_path):
    new_lock = OLD_LOCK.replace("liger-kernel==0.6.4", "liger-kernel==0.8.0")
    outcome, _, _ = _lock_run(tmp_path, new_lock, {"0.8.0": _trial(value=10.05)})
    assert outcome.exit_code == 3
    assert outcome.message == (
        "no package alone makes the stage worse than the base (tried liger-kernel 0.6.4 -> "
        "0.8.0): a combination is needed, or the base is not OLD"
    )


def test_a_lock_bump_of_a_package_the_base_lacks_is_bad_input(tmp_path):
    new_lock = OLD_LOCK.replace("liger-kernel==0.6.4", "liger-kernel==0.8.0")
    base = {k: v for k, v in BASE.items() if k != "liger-kernel"}
    with pytest.raises(depbisect.LockError) as caught:
        _lock_run(tmp_path, new_lock, {}, base_packages=base)
    assert str(caught.value).startswith(
        "pinned in OLD but not installed here: liger-kernel 0.6.4 -> 0.8.0;"
    )


# The command's one-line errors ----------------------------------------------------------------

CPU = ["--model", "tiny", "--device", "cpu", "--seq-len", "64", "--batch-size", "2"]


def error_line(capsys, argv: list[str]) -> str:
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, (code, out, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("stagebench: error: "), err
    return lines[0].removeprefix("stagebench: error: ")


def test_bad_input_is_one_line(capsys, tmp_path, plant_wheels):
    plant_args = ["--stage", "00_sdpa", "--find-links", str(plant_wheels), *CPU]
    line = error_line(capsys, ["bisect-release", plant.NAME, "1.5.0", "1.0.0", *plant_args])
    assert line == "GOOD 1.5.0 is not before BAD 1.0.0: give the older (good) version first"
    line = error_line(capsys, ["bisect-release", plant.NAME, "1.0.0", "1.7.0", *plant_args])
    assert line == f"{plant.NAME} 1.7.0 is not in {plant_wheels} (nearest: 1.5.0)"
    line = error_line(capsys, ["bisect-release", plant.NAME, "1.0.0", *plant_args])
    assert line.startswith("bisect-release takes PACKAGE GOOD BAD (got 2 argument(s))")
    line = error_line(
        capsys,
        ["bisect-release", plant.NAME, "1.0.0", "1.5.0", *plant_args, "--metric", "first_step_s"],
    )
    assert line.startswith("argument --metric: invalid choice: 'first_step_s'")
    unreachable = ["--stage", "00_sdpa", "--index-url", "http://127.0.0.1:9/simple", *CPU]
    line = error_line(capsys, ["bisect-release", "liger-kernel", "0.6.4", "0.7.0", *unreachable])
    assert line.startswith("the index http://127.0.0.1:9/simple cannot be reached (")
    assert line.endswith("); check --index-url or the network, or give --find-links DIR offline")
    with serve_index() as url:
        local = ["--stage", "00_sdpa", "--index-url", f"{url}/json", *CPU]
        line = error_line(capsys, ["bisect-release", "no-such-package", "1.0", "2.0", *local])
        assert line == f"the index {url}/json has no package 'no-such-package'"
    old, new = _locks(tmp_path, OLD_LOCK.replace("liger-kernel==0.6.4", "liger-kernel==0.8.0"))
    old.write_text(old.read_text() + "stagebench-not-installed==1.0\n")
    new.write_text(new.read_text() + "stagebench-not-installed==2.0\n")
    line = error_line(
        capsys,
        [
            "bisect-release",
            "--from-lock",
            str(old),
            "--to-lock",
            str(new),
            "--stage",
            "00_sdpa",
            *CPU,
        ],
    )
    assert line.startswith("pinned in OLD but not installed here: ")
    assert "stagebench-not-installed 1.0 -> 2.0" in line
    line = error_line(capsys, ["bisect-release", "--from-lock", str(old), "--stage", "00_sdpa"])
    assert line == "--from-lock and --to-lock go together: OLD and NEW requirements files"


# End to end on the CPU ------------------------------------------------------------------------


@pytest.fixture
def quiet_child(monkeypatch):
    """One thread per stage child: on a loaded 2-core machine two OpenMP threads wait on each
    other and the step time swings by 10x; one thread keeps the noise a few percent, far below
    the plant's planted 200 ms."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


WORKLOAD = [
    *CPU,
    "--warmup-steps",
    "2",
    "--min-steps",
    "16",
    "--max-steps",
    "16",
    "--timeout",
    "180",
]


def _bisect(capsys, wheels: Path, cache: Path, good: str, bad: str, *more: str):
    code = main(
        [
            "bisect-release",
            plant.NAME,
            good,
            bad,
            "--stage",
            "00_sdpa",
            "--find-links",
            str(wheels),
            "--overlay-dir",
            str(cache),
            *WORKLOAD,
            *more,
        ]
    )
    out, err = capsys.readouterr()
    return code, out, err


def test_the_planted_slowdown_is_found_in_1_3_0(
    capsys, tmp_path, plant_wheels, overlay_cache, quiet_child
):
    store = tmp_path / "results.jsonl"
    code, out, err = _bisect(
        capsys,
        plant_wheels,
        overlay_cache,
        "1.0.0",
        "1.5.0",
        "--format",
        "md",
        "--jsonl",
        str(store),
    )
    assert code == 0, out + err
    assert out.splitlines()[-1] == f"- first bad: {plant.NAME} 1.3.0 (last good 1.1.0)"
    rows = {
        cells[0]: cells
        for line in out.splitlines()
        if line.startswith(f"| {plant.NAME}")
        for cells in [[c.strip() for c in line.strip("|").split("|")]]
    }
    assert list(rows) == [
        f"{plant.NAME} {v}" for v in ("1.0.0", "1.1.0", "1.2.0", "1.3.0", "1.5.0")
    ]
    verdicts = {name.split()[1]: cells[3] for name, cells in rows.items()}
    assert verdicts == {
        "1.0.0": "good",
        "1.1.0": "good",
        "1.2.0": "incompatible",
        "1.3.0": "bad",
        "1.5.0": "bad",
    }
    assert rows[f"{plant.NAME} 1.2.0"][1].startswith("incompatible: import stagebench_test_plant:")
    assert rows[f"{plant.NAME} 1.3.0"][4] == f"{plant.NAME} none -> 1.3.0"
    assert "1.2.0 (incompatible" in out  # named as not measured, not blamed
    # Every Result stored, measured in its overlay: the child saw the overlay's version.
    stored = results.load(store)
    assert [r.env["packages"][plant.NAME] for r in stored] == ["1.0.0", "1.5.0", "1.3.0", "1.1.0"]
    assert all(r.status == "ok" for r in stored)
    assert stored[2].env["overlay"]["requirements"] == [f"{plant.NAME}==1.3.0"]


def test_the_planted_failure_is_found_in_1_3_0(
    capsys, monkeypatch, plant_wheels, overlay_cache, quiet_child
):
    monkeypatch.setenv(plant.MODE_ENV, "raise")
    code, out, err = _bisect(
        capsys, plant_wheels, overlay_cache, "1.1.0", "1.4.0", "--format", "json"
    )
    assert code == 0, out + err
    outcome = json.loads(out)
    assert (outcome["first"], outcome["last"]) == ("1.3.0", "1.1.0")
    assert outcome["message"] == f"first bad: {plant.NAME} 1.3.0 (last good 1.1.0)"
    assert outcome["change"]["by"] == "status"
    trials = {t["version"]: t for t in outcome["trials"]}
    assert trials["1.3.0"]["status"] == "error"
    assert trials["1.3.0"]["reason"] == (f"RuntimeError: planted failure in {plant.NAME} 1.3.0")
    assert trials["1.2.0"]["verdict"] == "incompatible"
    assert trials["1.1.0"]["verdict"] == "good"


def test_a_lock_bump_finds_the_package_that_did_it(
    capsys, tmp_path, plant_wheels, overlay_cache, quiet_child
):
    """OLD is the base as it is; NEW adds the plant at 1.5.0 (slow). The base is measured, then
    the plant alone: it is the culprit, and as it is new there is no release to bisect."""
    base = overlay.base_info()
    old = tmp_path / "old.lock"
    old.write_text(f"torch=={base.packages['torch']} \\\n    --hash=sha256:00\n")
    new = tmp_path / "new.lock"
    new.write_text(old.read_text() + f"{plant.NAME}==1.5.0 \\\n    --hash=sha256:11\n")
    code = main(
        [
            "bisect-release",
            "--from-lock",
            str(old),
            "--to-lock",
            str(new),
            "--stage",
            "00_sdpa",
            "--find-links",
            str(plant_wheels),
            "--overlay-dir",
            str(overlay_cache),
            *WORKLOAD,
            "--format",
            "json",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, out + err
    outcome = json.loads(out)
    assert outcome["culprits"] == [f"{plant.NAME} none -> 1.5.0"]
    assert f"{plant.NAME}: new in NEW: no earlier release to bisect from" in outcome["message"]
    assert [(t["label"] if "label" in t else t["version"]) for t in outcome["trials"]] == [
        "base",
        "1.5.0",
    ]
    assert [t["verdict"] for t in outcome["trials"]] == ["good", "bad"]


def test_a_result_is_never_lost_to_the_table(tmp_path):
    """A Result's own record is what --jsonl holds; the JSON output leaves it out."""
    outcome = depbisect.Outcome("pkg", "1", "2", "s", "step_time_ms", 0, "m")
    result = Result(stage="s", spec="sdpa", status="ok", reason=None, model="tiny", workload={})
    outcome.trials.append(Trial("pkg", "1", "ok", result=result))
    assert "result" not in json.loads(depbisect.to_json(outcome))["trials"][0]


def test_sigterm_while_an_overlay_is_built_is_a_cancel_with_its_line(tmp_path, plant_wheels):
    """A cancelled CI job sends SIGTERM; between stages (building an overlay with pip) the
    command ends as it does within one: exit 143 and one line, no traceback."""
    cache = tmp_path / "overlays"
    argv = ["bisect-release", plant.NAME, "1.0.0", "1.5.0", "--stage", "00_sdpa",
            "--find-links", str(plant_wheels), "--overlay-dir", str(cache), *WORKLOAD]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "stagebench.cli", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not list(cache.glob("*.lock")):  # GOOD's overlay is being built
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err
    assert "stagebench: cancelled by SIGTERM; no further release was measured" in err, err
    assert "Traceback" not in err, err


def test_a_floor_bisect_judges_each_release_by_its_runs_floor_cis():
    """--metric step_floor_ms: the bar is both runs' CIs of the floor, as the median's for
    step_time_ms; without one (under 35 steps) the floor falls back to the minimum effect, the
    median (under 6 steps) is not judged."""
    floor = METRICS["step_floor_ms"]
    before = Trial("liger-kernel", "0.8.0", "ok", value=330.0, ci_pct=1.5)
    within = Trial("liger-kernel", "0.8.1", "ok", value=339.0, ci_pct=1.5)  # +2.7% < 3% bar
    beyond = Trial("liger-kernel", "0.8.1", "ok", value=345.0, ci_pct=1.5)  # +4.5%
    assert depbisect.judge_pair(before, within, floor).direction is None
    assert depbisect.judge_pair(before, beyond, floor).direction == depbisect.REGRESSION
    # A run under 35 steps has no CI of its floor: the minimum effect alone, as in compare.
    short = depbisect.judge_pair(before, Trial("liger-kernel", "0.8.1", "ok", value=345.0), floor)
    assert short.judged and short.direction == depbisect.REGRESSION
    assert "minimum effect alone" in short.text
    median = METRICS["step_time_ms"]
    unsure = depbisect.judge_pair(before, Trial("liger-kernel", "0.8.1", "ok", value=345.0), median)
    assert not unsure.judged and "no confidence interval" in unsure.text
