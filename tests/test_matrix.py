"""The matrix: reference first, numerics against it, every Result kept whatever the store or the
reference does. Stages here are FAKE (`fake_run_isolated`): what is under test is what the
matrix does with their Results; test_isolate.py runs real ones."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
from fake_disk import FakeDisk
from test_results import make_metrics

from stagebench import matrix, results, stages
from stagebench.results import Result
from stagebench.workload import Workload

WORKLOAD = Workload(model="tiny", device="cpu", dtype="float32", seq_len=64)


def _result(stage: stages.Stage, status: str = "ok", loss: float = 7.5, **changes) -> Result:
    metrics = make_metrics(loss_first=loss) if status == "ok" else None
    fields = dict(
        stage=stage.name, spec=stage.spec, status=status, reason=None if metrics else "why",
        model=WORKLOAD.model, workload=WORKLOAD.to_dict(), metrics=metrics,
    )  # fmt: skip
    fields.update(changes)
    return Result(**fields)


@pytest.fixture
def fake_run_isolated(monkeypatch):
    """Every stage 'runs' instantly and is ok with step-0 loss 7.5; records what ran."""
    ran: list[str] = []

    def fake(stage, workload, **kwargs):
        ran.append(stage.name)
        return _result(stage)

    monkeypatch.setattr(matrix, "run_isolated", fake)
    return ran


STAGES = [stages.resolve(n) for n in ("00_sdpa", "00_baseline", "sdpa+compile")]


@pytest.mark.parametrize("ref_loss", [0.0, math.nan, math.inf, -math.inf])
def test_a_reference_loss_that_cannot_be_divided_by_leaves_numerics_unchecked(ref_loss):
    """Failed before the fix: ZeroDivisionError (0) after the stage ran; NaN/inf called a
    correct stage a mismatch."""
    reference = _result(STAGES[0], loss=ref_loss)
    result = _result(STAGES[1])
    matrix.check_numerics(result, reference, WORKLOAD)
    assert result.status == "ok"
    assert result.numerics == f"unchecked: reference loss is {ref_loss:g}"


def test_a_nan_loss_against_a_good_reference_is_a_mismatch():
    result = _result(STAGES[1], loss=math.nan)
    matrix.check_numerics(result, _result(STAGES[0]), WORKLOAD)
    assert result.status == "numerics_mismatch"


def test_a_zero_reference_in_the_store_still_stores_the_stage(tmp_path, fake_run_isolated):
    """The reference found in the store has loss 0: the stage's Result is stored anyway.

    Failed before the fix: ZeroDivisionError escaped run_matrix and the Result was lost.
    """
    store = tmp_path / "r.jsonl"
    results.append(store, _result(STAGES[0], loss=0.0))
    (done,) = matrix.run_matrix([STAGES[1]], WORKLOAD, store=store)
    assert done.numerics == "unchecked: reference loss is 0"
    assert [r.stage for r in results.load(store)] == ["00_sdpa", "00_baseline"]


def test_numerics_that_raise_anyway_keep_the_result(tmp_path, fake_run_isolated, monkeypatch):
    """Whatever goes wrong judging numerics, the measurement is stored."""

    def fake_broken_check(result, reference, workload):
        raise KeyError("fake")

    monkeypatch.setattr(matrix, "check_numerics", fake_broken_check)
    store = tmp_path / "r.jsonl"
    (done,) = matrix.run_matrix([STAGES[1]], WORKLOAD, store=store)
    assert done.numerics == "unchecked: KeyError: 'fake'"
    assert [r.stage for r in results.load(store)] == ["00_baseline"]


def test_bad_lines_in_the_store_do_not_stop_the_reference_lookup(tmp_path, fake_run_isolated):
    """A store with a BOM, a non-UTF-8 line and a line whose workload has an unknown key: the
    good reference among them is found, the stage is checked against it and appended.

    Failed before the fix: UnicodeDecodeError, then TypeError in Workload.from_dict.
    """
    store = tmp_path / "r.jsonl"
    good = json.dumps(_result(STAGES[0], loss=7.5).to_dict()).encode()
    bad = _result(STAGES[0], loss=1.0).to_dict()
    bad["workload"]["flash"] = True
    content = b"\xef\xbb\xbf" + good + b"\n\xff\xfe\n" + json.dumps(bad).encode() + b"\n"
    store.write_bytes(content)
    with pytest.warns(UserWarning):
        (done,) = matrix.run_matrix([STAGES[1]], WORKLOAD, store=store)
    assert done.numerics.startswith("step-0 loss 7.50000 vs reference 7.50000")
    assert store.read_bytes().startswith(content)  # earlier bytes untouched, bad ones included


def test_find_reference_skips_results_with_no_usable_workload():
    """A Result built in memory (a rank that died without one has workload {}) is no match."""
    broken = _result(STAGES[0], workload={})
    good = _result(STAGES[0])
    assert matrix.find_reference([good, broken], WORKLOAD) is good


def test_a_full_disk_keeps_every_result_and_runs_every_stage(
    tmp_path, fake_run_isolated, monkeypatch, capsys
):
    """No space for any line: all stages still run, every Result is returned and printed to
    stderr as one JSON line, and on_store_error hears of each.

    Failed before the fix: the first append raised OSError, the rest of the matrix never ran.
    """
    store = tmp_path / "r.jsonl"
    FakeDisk(monkeypatch, store, space=0)
    failures = []
    done = matrix.run_matrix(
        STAGES, WORKLOAD, store=store, on_store_error=lambda r, e: failures.append((r, e))
    )
    assert fake_run_isolated == [s.name for s in STAGES]
    assert [r.stage for r in done] == [s.name for s in STAGES]
    assert [r for r, _ in failures] == done
    assert all("No space left on device" in str(e) for _, e in failures)
    assert store.read_bytes() == b""
    printed = [line for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    assert [Result.from_dict(json.loads(line)) for line in printed] == done


def test_a_store_that_fills_up_midway_keeps_what_it_had(tmp_path, fake_run_isolated, monkeypatch):
    """Room for the first row only: it stays, the second is printed, the third also runs."""
    store = tmp_path / "r.jsonl"
    reference = _result(STAGES[0], numerics="reference")  # as the matrix stores it
    first_line = json.dumps(reference.to_dict(), sort_keys=True) + "\n"
    FakeDisk(monkeypatch, store, space=len(first_line.encode()) + 10)
    failed = []
    done = matrix.run_matrix(
        STAGES, WORKLOAD, store=store, on_store_error=lambda r, e: failed.append(r.stage)
    )
    assert len(done) == 3
    assert failed == ["00_baseline", "sdpa+compile"]
    assert [r.stage for r in results.load(store)] == ["00_sdpa"]
    assert store.read_text() == first_line  # no torn second line


def test_order_puts_the_reference_first_once():
    ordered = matrix.order([STAGES[1], STAGES[0], STAGES[1], STAGES[2]])
    assert ordered == [STAGES[0], STAGES[1], STAGES[2]]


def test_the_numerics_key_of_the_test_workload_is_stable():
    """Guards the helper above: a different workload must not find this reference."""
    other = dataclasses.replace(WORKLOAD, seq_len=128)
    assert matrix.find_reference([_result(STAGES[0])], other) is None
