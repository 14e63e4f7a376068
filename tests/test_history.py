"""Reading asv's results directory: plain data, and bad files named instead of crashing."""

from __future__ import annotations

import json
import math

import pytest
from asv import util
from asv.benchmarks import Benchmarks
from asv_history import DAY_MS, ENV, FIRST_DATE_MS, MACHINE, MFU, write_history

from stagebench import history


def test_history_is_plain_data_in_commit_date_order(tmp_path):
    values = [40.0, None, 41.0, math.nan, 42.0, 43.0]
    hashes = write_history(tmp_path, {MFU: values})
    assert sorted(hashes) != hashes  # the order below can only come from the dates
    loaded = history.load(tmp_path)
    assert list(loaded.series) == [history.Source(MACHINE, ENV)]
    points = loaded.series[history.Source(MACHINE, ENV)][MFU]
    assert [p.commit for p in points] == hashes
    assert [p.date for p in points] == [FIRST_DATE_MS + i * DAY_MS for i in range(6)]
    assert [p.value for p in points] == [40.0, None, 41.0, None, 42.0, 43.0]
    assert loaded.skipped == []


def _result_files(tmp_path):
    return sorted(p for p in (tmp_path / MACHINE).glob("*.json") if p.name != "machine.json")


def test_a_corrupt_file_is_skipped_and_named(tmp_path):
    write_history(tmp_path, {MFU: [40.0, 41.0, 42.0]})
    bad = _result_files(tmp_path)[0]
    bad.write_bytes(b"\xff\xfe not json")
    loaded = history.load(tmp_path)
    assert sum(len(p) for s in loaded.series.values() for p in s.values()) == 2
    assert len(loaded.skipped) == 1 and str(bad) in loaded.skipped[0]


@pytest.mark.parametrize(
    "damage",
    ["not json", "wrong machine", "string date", "missing keys", "bad commit"],
)
def test_every_file_unreadable_is_cannot_judge(tmp_path, damage):
    write_history(tmp_path, {MFU: [40.0, 41.0]})
    for path in _result_files(tmp_path):
        data = json.loads(path.read_text())
        if damage == "not json":
            path.write_text("{")
            continue
        if damage == "wrong machine":
            data["params"]["machine"] = "another-host"
        elif damage == "string date":
            data["date"] = "2026-11-25"
        elif damage == "missing keys":
            del data["commit_hash"]
        else:
            data["commit_hash"] = "../../etc"
        path.write_text(json.dumps(data))
    with pytest.raises(history.CannotJudge, match="no readable result file"):
        history.load(tmp_path)


def test_one_file_with_a_string_date_is_skipped(tmp_path):
    write_history(tmp_path, {MFU: [40.0, 41.0, 42.0]})
    path = _result_files(tmp_path)[1]
    data = json.loads(path.read_text())
    data["date"] = "yesterday"
    path.write_text(json.dumps(data))
    loaded = history.load(tmp_path)
    assert len(loaded.skipped) == 1 and "yesterday" in loaded.skipped[0]


def test_no_results_no_machine_unknown_machine_are_cannot_judge(tmp_path):
    with pytest.raises(history.CannotJudge, match="no asv results directory"):
        history.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(history.CannotJudge, match=r"no <machine>/machine\.json"):
        history.load(tmp_path / "empty")
    write_history(tmp_path / "one", {MFU: [40.0]})
    for path in _result_files(tmp_path / "one"):
        path.unlink()
    with pytest.raises(history.CannotJudge, match="no result files"):
        history.load(tmp_path / "one")
    with pytest.raises(history.CannotJudge, match="'a100' has no results"):
        history.load(tmp_path / "one", machine="a100")


def test_no_stored_version_matching_the_suite_is_cannot_judge(tmp_path):
    write_history(tmp_path, {MFU: [40.0, 41.0]}, versions=["1", "1"])
    current = {MFU: {"name": MFU, "version": "2", "params": []}}
    util.write_json(str(tmp_path / "benchmarks.json"), current, api_version=Benchmarks.api_version)
    with pytest.raises(history.CannotJudge, match="current benchmark versions"):
        history.load(tmp_path)


def test_a_bad_pattern_is_bad_input(tmp_path):
    write_history(tmp_path, {MFU: [40.0, 41.0]})
    with pytest.raises(history.HistoryError, match="not a regex"):
        history.load(tmp_path, benchmark="track_(")
    with pytest.raises(history.HistoryError, match="no benchmark matches"):
        history.load(tmp_path, benchmark="track_nope")
