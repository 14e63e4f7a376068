"""The two lanes: settings, divergences between them, standing ones, the lanes log."""

from __future__ import annotations

import pytest
from asv.machine import Machine
from asv.results import Results
from asv.runner import BenchmarkResult

from stagebench import judge, lanes, overlay
from stagebench.history import load

COMMIT = "a" * 40
STAGE = "stages.Stage_02_liger_sdpa"


def _night(results_dir, env: str, values: dict[str, float]) -> None:
    info = Machine()
    info.__dict__.update(machine="h100", os="Linux", arch="x86_64", cpu="cpu", num_cpu="16")
    info.save(str(results_dir))
    result = Results({"machine": "h100"}, {}, COMMIT, 1_760_000_000_000, "3.12", env, {})
    for name, value in values.items():
        benchmark = {"name": f"{STAGE}.{name}", "version": "1", "params": []}
        measured = BenchmarkResult(
            result=[value], samples=[None], number=[None], errcode=0, stderr="", profile=None
        )
        result.add_result(benchmark, measured)
    result.save(str(results_dir))


def _divergences(tmp_path, locked: dict, canary: dict, **kwargs):
    _night(tmp_path, "interpreter-py3.12", locked)
    _night(tmp_path, "canary-py3.12", canary)
    return lanes.divergences(load(tmp_path), "h100", COMMIT, "3.12", **kwargs)


@pytest.mark.parametrize("text", ["canary", "locked,nightly", "", " , "])
def test_lanes_other_than_locked_and_canary_are_bad_input(text):
    with pytest.raises(lanes.LaneError, match="STAGEBENCH_LANES"):
        lanes.parse_lanes(text)
    assert lanes.parse_lanes("locked, canary,locked") == ["locked", "canary"]


def test_only_tracked_packages_the_locked_stack_has_are_followed(monkeypatch):
    base = {"torch": "2.11.0", "liger-kernel": "0.8.5"}
    assert lanes.followed(base) == ["torch", "liger-kernel"]
    monkeypatch.setenv("STAGEBENCH_CANARY_PACKAGES", "Liger_Kernel, flash-attn")
    assert lanes.followed(base) == ["Liger_Kernel"]  # matched by canonical name
    monkeypatch.setenv("STAGEBENCH_CANARY_PACKAGES", "kernels flash-attn")
    assert lanes.followed(base) == []  # the image has neither: the canary adds nothing


def test_a_stage_that_fails_only_in_the_canary_diverges(tmp_path):
    (d,) = _divergences(tmp_path, {"track_ok": 1.0}, {"track_ok": 0.0})
    assert (d.stage_class, d.kind, d.alarms) == (STAGE, lanes.FAILED, True)


def test_speed_beyond_both_runs_confidence_intervals_diverges_and_within_does_not(tmp_path):
    class Stored:  # a fake of tonight's Results, reduced to what the check reads
        def __init__(self, ci):
            self.metrics = type("M", (), {"ci95_pct_of": lambda _, family: ci})()

    tonight = {("locked", STAGE): Stored(1.0), ("canary", STAGE): Stored(1.5)}
    ok = {"track_ok": 1.0}
    (d,) = _divergences(
        tmp_path, {**ok, "track_step_time_ms": 300.0}, {**ok, "track_step_time_ms": 320.0},
        tonight=tonight,
    )  # fmt: skip
    assert d.kind == lanes.SLOWER and d.bar_pct == pytest.approx(2.5) and d.alarms
    within = _divergences(
        tmp_path / "b", {**ok, "track_step_time_ms": 300.0}, {**ok, "track_step_time_ms": 306.0},
        tonight=tonight,
    )  # fmt: skip
    assert within == []


def test_a_measured_mde_decides_instead_of_the_confidence_intervals(tmp_path):
    prior = judge.Prior(sigma=0.017, df=4, source="5 separate runs")  # a bimodal Liger stage
    ok = {"track_ok": 1.0}
    found = _divergences(
        tmp_path, {**ok, "track_step_time_ms": 340.0}, {**ok, "track_step_time_ms": 352.0},
        priors={(STAGE, "speed"): prior},
    )  # fmt: skip
    assert found == []  # +3.5%: under its MDE of about 4.7%
    faster = _divergences(
        tmp_path / "b", {**ok, "track_step_time_ms": 340.0}, {**ok, "track_step_time_ms": 300.0},
        priors={(STAGE, "speed"): prior},
    )  # fmt: skip
    assert [(d.kind, d.alarms) for d in faster] == [(lanes.FASTER, False)]


def test_a_floor_that_diverges_under_a_noisy_median_is_a_divergence_of_its_own(tmp_path):
    """A new release slows a kernel by 3%: the Liger stage's median hides it (MDE about 4.7%),
    its floor (MDE about 1.1%) does not; the divergence names the floor, and so does the bisect
    command it prints."""
    speed = judge.Prior(sigma=0.017, df=4, source="5 separate runs")
    floor = judge.Prior(sigma=0.004, df=4, source="5 separate runs")
    ok = {"track_ok": 1.0}
    locked = {**ok, "track_step_time_ms": 340.0, "track_step_floor_ms": 333.0}
    canary = {**ok, "track_step_time_ms": 348.0, "track_step_floor_ms": 343.0}
    priors = {(STAGE, "speed"): speed, (STAGE, "floor"): floor}
    (d,) = _divergences(tmp_path, locked, canary, priors=priors)
    assert (d.kind, d.metric, d.alarms) == (lanes.SLOWER, "step_floor_ms", True)
    assert d.change_pct == pytest.approx(100 * (343 / 333 - 1), abs=0.01)
    assert d.note.startswith("step_floor_ms, beside the median")
    command = lanes.command(d, [("liger-kernel", "0.8.5", "0.8.6")])
    assert command.endswith("--metric step_floor_ms")
    # The median beyond its noise is the divergence; the floor is not a second one.
    slower = {**canary, "track_step_time_ms": 380.0}
    (median,) = _divergences(tmp_path / "b", locked, slower, priors=priors)
    assert median.metric == "step_time_ms" and "--metric" not in lanes.command(median, [])
    # A faster median (fewer host gaps) does not hide a slower kernel: both are reported, the
    # floor alarms.
    faster = {**canary, "track_step_time_ms": 300.0}
    found = _divergences(tmp_path / "c", locked, faster, priors=priors)
    assert [(x.kind, x.metric, x.alarms) for x in found] == [
        (lanes.FASTER, "step_time_ms", False),
        (lanes.SLOWER, "step_floor_ms", True),
    ]


def test_a_floor_divergence_already_alarmed_does_not_silence_a_median_one(tmp_path):
    canary = ["liger-kernel 0.8.5 -> 0.8.6"]
    floor = lanes.Divergence(STAGE, lanes.SLOWER, 333.0, 343.0, 3.0, 1.1, metric="step_floor_ms")
    lanes.append_log(tmp_path, lanes.log_entry("h100", COMMIT, canary, "measured", [floor]))
    median = lanes.Divergence(STAGE, lanes.SLOWER, 340.0, 372.0, 9.4, 4.7)
    again = lanes.Divergence(STAGE, lanes.SLOWER, 333.0, 344.0, 3.3, 1.1, metric="step_floor_ms")
    lanes.mark_standing([median, again], lanes.read_log(tmp_path), "h100", canary)
    assert median.alarms and not again.alarms


def test_a_divergence_alarmed_with_the_same_canary_stands(tmp_path):
    canary = ["liger-kernel 0.8.5 -> 0.8.6"]
    first = lanes.Divergence(STAGE, lanes.SLOWER, 340.0, 380.0, 11.8, 4.7)
    first.answer = {"message": "first bad: liger-kernel 0.8.6 (last good 0.8.5)"}
    lanes.append_log(tmp_path, lanes.log_entry("h100", COMMIT, canary, "measured", [first]))
    with (tmp_path / lanes.LOG_NAME).open("ab") as log:
        log.write(b"\xff torn\n")
    again = lanes.Divergence(STAGE, lanes.SLOWER, 340.0, 381.0, 12.0, 4.7)
    other = lanes.Divergence(STAGE, lanes.SLOWER, 340.0, 381.0, 12.0, 4.7)
    lanes.mark_standing([again], lanes.read_log(tmp_path), "h100", canary)
    lanes.mark_standing([other], lanes.read_log(tmp_path), "h100", ["liger-kernel 0.8.5 -> 0.8.7"])
    assert (again.new, again.alarms, again.answer) == (False, False, first.answer)
    assert other.alarms  # another canary: a new divergence


def test_moved_keeps_tracked_packages_that_changed_versions():
    changed = [
        overlay.Change("liger-kernel", "0.8.5", "0.8.6"),
        overlay.Change("triton", "3.6.0", "3.7.0"),  # not tracked
        overlay.Change("new-dep", None, "1.0"),  # not in the lock: nothing to bisect from
    ]
    assert lanes.moved(changed, ["Liger_Kernel", "torch"]) == [("liger-kernel", "0.8.5", "0.8.6")]


def test_a_canary_wheel_directory_that_does_not_exist_is_bad_input(monkeypatch, tmp_path):
    monkeypatch.setenv("STAGEBENCH_CANARY_FIND_LINKS", str(tmp_path / "none"))
    with pytest.raises(lanes.LaneError, match="not a directory"):
        lanes.source()


def test_a_pin_the_locked_stack_already_has_moves_nothing():
    base = {"liger-kernel": "0.8.5", "torch": "2.11.0"}
    assert lanes.same_version("liger-kernel==0.8.5", base)
    assert lanes.same_version("Liger_Kernel==0.8.5", base)  # canonical names
    assert not lanes.same_version("liger-kernel==0.8.6", base)
    assert not lanes.same_version("kernels==0.19.1", base)  # not in the stack
