"""Defects found by hostile use of the newer features: noise records, release bisects and their
overlays, Result schema 4 with compare --explain, and the judge's per-stage thresholds.

One test per defect; each failed against the code it was written for and passes since its fix.
Its docstring says what the input was, what went wrong and what should happen. Nothing here runs
a stage: measurements are planted, so every test takes a moment.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
from asv_history import MACHINE, STAGE, noisy, speed_family, write_history

from stagebench import PROTOCOL_VERSION, frontpage, judge, noise, regress
from stagebench.cli import main as cli


def _noise_record(**changes: object) -> dict:
    """A noise record as `stagebench noise` writes it, with `changes` to its step-time entry
    (keys of MetricNoise) or to the record itself."""
    step = {"values": [240.0, 240.2, 239.9], "sigma_pct": 0.08, "df": 2, "mde_pct": 0.22}
    step.update({k: v for k, v in changes.items() if k in step})
    record = {
        "machine": MACHINE,
        "stage": "00_sdpa",
        "asv_class": STAGE,
        "spec": "sdpa",
        "shape": "b1x2048",
        "protocol": PROTOCOL_VERSION,
        "runs": 3,
        "metrics": {"step_time_ms": step},
        "date": "2026-12-01",
        "commit": None,
        "packages": {},
        "failed": [],
    }
    record.update({k: v for k, v in changes.items() if k not in step})
    return record


def _history_with_noise(tmp_path: Path, lines: list[str]) -> Path:
    steps = [*noisy(3, 8, 240.0, 0.0008), 240.0 * 1.006]
    write_history(tmp_path, speed_family(steps))
    (tmp_path / noise.LOG_NAME).write_text("".join(line + "\n" for line in lines))
    return tmp_path


# -- noise records -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {"df": "4"},
        {"sigma_pct": "0.08"},
        {"sigma_pct": 1e300},
        {"values": []},
        {"values": "240"},
        {"date": None},
        {"asv_class": ["stages.Stage_00_sdpa"]},
    ],
    ids=lambda c: "-".join(f"{k}={v!r}"[:24] for k, v in c.items()),
)
def test_a_hand_edited_noise_record_is_skipped_not_a_crash_of_every_reader(tmp_path, changes):
    """A noise record with a wrong type (df "4", a date of null, a list for the class...) or a
    sigma so large its MDE overflows loaded "fine" and then crashed `regressions`, `compare`,
    the front page and `noise --show` (TypeError, OverflowError: exit 4 with a traceback).
    Such a record must be skipped with a warning, like any unreadable line, and the history
    judged without it."""
    bad = json.dumps(_noise_record(**changes))
    results_dir = _history_with_noise(tmp_path, [bad])
    with pytest.warns(UserWarning, match="skipped unreadable noise record"):
        assert noise.load(results_dir) == []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = regress.check(results_dir)  # judged as if there were no record
        assert not report.regressions  # 0.6% is under the default 1% without the record
        frontpage.render(results_dir)
        assert cli(["noise", "--show", "--results", str(results_dir)]) == 3


def test_a_directory_where_the_noise_log_should_be_is_skipped_by_readers(tmp_path, capsys):
    """`stagebench-noise.jsonl` as a directory (a bad merge, a stray mkdir) made every reader
    of the history crash with IsADirectoryError; `regressions` and the front page must judge
    without noise records (a warning names the path), and `noise --show` says it in one line
    (bad input, exit 2)."""
    results_dir = _history_with_noise(tmp_path, [])
    (results_dir / noise.LOG_NAME).unlink()
    (results_dir / noise.LOG_NAME).mkdir()
    with pytest.warns(UserWarning, match="skipped unreadable noise records"):
        assert noise.load(results_dir) == []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        regress.check(results_dir)
        frontpage.render(results_dir)
    capsys.readouterr()
    assert cli(["noise", "--show", "--results", str(results_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a regular file" in err[0], err


def test_noise_records_of_the_real_h100_run_still_load_cleanly():
    """The validation that rejects hand-edited records must accept what `stagebench noise`
    wrote on the H100 (the dated run's records): no warning, every record kept."""
    path = Path(__file__).resolve().parents[1] / "docs/results/h100-2026-12-06/noise-records.jsonl"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        records = noise.load_file(path)
    assert len(records) == len(path.read_text().splitlines())


# -- stagebench noise: the command ---------------------------------------------------------

NOISE_CPU = ["--device", "cpu", "--model", "tiny", "--seq-len", "32", "--max-steps", "5"]


class FakeRounds:
    """Stands in for run_matrix under `stagebench noise`: each call is one round, its Results
    planted (step times given per round) and stored the way run_matrix stores them; `signal_at`
    sends this process a signal during that round, as a CI cancel would."""

    def __init__(self, steps: list[float], status: str = "ok", signal_at: int | None = None):
        self.steps, self.status, self.signal_at, self.calls = steps, status, signal_at, 0

    def __call__(self, stage_list, workload, *, store=None, on_result=None, **kwargs):
        import os
        import signal

        from test_noise import _result

        from stagebench import matrix
        from stagebench.isolate import cancellation

        self.calls += 1
        done = []
        with cancellation() as cancel:  # as run_matrix: the signal is recorded, not fatal
            if self.signal_at == self.calls:
                os.kill(os.getpid(), signal.SIGTERM)
            for stage in stage_list:
                status = "cancelled" if cancel.signum else self.status
                result = _result(stage.name, status, self.steps[self.calls - 1])
                result.workload = workload.to_dict()  # what the command asked for
                if store:
                    matrix._store(store, result, kwargs.get("on_store_error"))
                if on_result:
                    on_result(result)
                done.append(result)
        return done


@pytest.fixture
def fake_rounds(monkeypatch):
    def plant(*args, **kwargs) -> FakeRounds:
        fake = FakeRounds(*args, **kwargs)
        monkeypatch.setattr("stagebench.matrix.run_matrix", fake)
        return fake

    return plant


def test_sigterm_during_noise_runs_exits_143_with_one_line_and_keeps_the_results(
    tmp_path, capsys, fake_rounds
):
    """SIGTERM in the middle of `stagebench noise` (a cancelled CI job) ended in a traceback
    and exit 1 (Cancelled is a BaseException that `_noise` never caught). It must exit 143 with
    one line, start no further round, keep every Result already stored and write no noise
    record from the half-finished measurement."""
    fake = fake_rounds([240.0, 240.1, 240.2, 240.3, 240.4], signal_at=2)
    store = tmp_path / "runs.jsonl"
    argv = ["noise", "00_sdpa", "--runs", "5", "--results", str(tmp_path), "--jsonl", str(store)]
    assert cli([*argv, *NOISE_CPU]) == 143
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cancelled by SIGTERM" in err[0], err
    assert fake.calls == 2  # no round after the signal
    assert len(store.read_text().splitlines()) == 2  # both stored Results stay
    assert noise.load(tmp_path) == []


def test_a_noise_log_that_cannot_be_written_is_bad_input_before_anything_runs(
    tmp_path, capsys, fake_rounds
):
    """`--results` on a read-only directory was found out only after every run had been
    measured (hours on a GPU): exit 4 and the records lost. It is bad input, said before the
    first run starts."""
    from fake_disk import read_only_dir

    fake = fake_rounds([240.0, 240.1, 240.2])
    with read_only_dir(tmp_path) as ro:
        code = cli(["noise", "00_sdpa", "--runs", "3", "--results", str(ro), *NOISE_CPU])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not writable" in err[0], err
    assert fake.calls == 0


def test_a_full_disk_under_the_noise_log_keeps_the_records_on_stderr(
    tmp_path, capsys, fake_rounds, monkeypatch
):
    """The disk filled while the records were appended: exit 4 (right) but the measured records
    were gone. Like a Result the store cannot take, each record goes to stderr as one JSON line,
    and the log keeps no torn line."""
    from fake_disk import FakeDisk

    fake_rounds([240.0, 240.1, 240.2])
    log = tmp_path / noise.LOG_NAME
    log.write_text(json.dumps(_noise_record()) + "\n")
    before = log.read_bytes()
    FakeDisk(monkeypatch, log, space=10)  # takes part of a line, then ENOSPC
    code = cli(["noise", "00_sdpa", "--runs", "3", "--results", str(tmp_path), *NOISE_CPU])
    assert code == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert "could not store 1 noise record(s)" in err[0]
    kept = noise.StageNoise.from_dict(json.loads(err[1]))
    assert kept.metrics["step_time_ms"].values == [240.0, 240.1, 240.2]
    assert log.read_bytes() == before


def test_noise_runs_that_fail_exit_1_and_results_not_stored_exit_4(
    tmp_path, capsys, fake_rounds, monkeypatch
):
    """`stagebench noise` exited 0 when every run of a stage failed, and 0 when the --jsonl
    store could not take the Results (printed to stderr, then forgotten). The exit codes are
    every command's: 1 a failed stage, 4 a Result not stored."""
    from fake_disk import FakeDisk

    fake_rounds([240.0, 240.1, 240.2], status="error")
    argv = ["noise", "00_sdpa", "--runs", "3", "--results", str(tmp_path), *NOISE_CPU]
    assert cli(argv) == 1
    fake_rounds([240.0, 240.1, 240.2])
    store = tmp_path / "runs.jsonl"
    FakeDisk(monkeypatch, store, space=0)
    assert cli([*argv, "--jsonl", str(store)]) == 4
    assert "could not store 3 result(s)" in capsys.readouterr().err


# -- the judge's per-stage thresholds ------------------------------------------------------


@pytest.mark.parametrize(
    ("sigma", "df"),
    [(float("nan"), 4), (-0.01, 4), (float("inf"), 4), (0.01, 0)],
    ids=["nan", "negative", "inf", "df0"],
)
def test_an_impossible_prior_is_refused_where_it_is_made(sigma, df):
    """judge.Prior took any sigma and df: a negative sigma made the bar the 0.1% minimum and
    called a 0.5% change of two nights a regression; NaN and inf silently judged nothing; a df of
    0 crashed later in t_quantile. A prior the judge cannot use is refused when it is made."""
    with pytest.raises(ValueError, match="prior"):
        judge.Prior(sigma=sigma, df=df, source="hand-made")


def test_a_change_beyond_floats_is_judged_not_a_crash():
    """A series from 1e-300 to 1e300 (a unit mix-up in a hand-written history, a counter that
    wrapped) crashed the judge with OverflowError while it turned the change into a
    percentage: `regressions` exited 4. The change is judged, its size infinite."""
    judged = judge.latest([1e-300] * 4 + [1e300], worse=1)
    assert judged.verdict == judge.REGRESSED and judged.change_pct == math.inf
    prior = judge.Prior(sigma=300.0, df=1, source="hand-made")
    assert judge.latest([1.0, 1.1], worse=1, prior=prior).verdict == judge.SAME


def test_a_series_that_drops_to_zero_reports_minus_100_percent():
    """A count that fell from 3 to 0 (graph breaks fixed) was reported as a change of -63.2%,
    with a noise and bar of `expm1` applied to values that are not logarithms. Without a
    relative scale the change is the linear one (-100%), and of a level of 0 there is no %."""
    judged = judge.latest([3.0, 3.0, 3.0, 3.0, 0.0], worse=1)
    assert judged.verdict == judge.IMPROVED
    assert judged.change_pct == pytest.approx(-100.0)
    from_zero = judge.latest([0.0, 1.0, 0.0, 1.0, 0.0, 5.0], worse=1)
    assert from_zero.verdict == judge.REGRESSED
    assert from_zero.change_pct is None and from_zero.bar_pct is None  # was +14741%, bar 951%


def test_a_prior_never_makes_two_points_without_a_relative_scale_look_judged():
    """With a measured prior, two nights are a history, but only on a log scale: for [5, 0]
    the prior does not apply, the two points were too few for the judge, and latest() still
    answered `same`, a clean verdict it never reached. It is unjudged."""
    prior = judge.Prior(sigma=math.log1p(0.01), df=4, source="5 separate runs")
    judged = judge.latest([5.0, 0.0], worse=1, prior=prior)
    assert judged.verdict == judge.UNJUDGED
    assert judge.latest([5.0, 5.0, 5.0, 0.0], worse=1, prior=prior).verdict == judge.IMPROVED


# -- Result schema 4: samples and profile --------------------------------------------------


def _profiled_line(**profile_changes: object) -> dict:
    from test_explain import PLAIN
    from test_explain import _result as explain_result

    data = explain_result("00_sdpa", "sdpa", PLAIN).to_dict()
    profile = data["metrics"]["profile"]
    for path, value in profile_changes.items():
        where, _, key = path.rpartition("__")
        target = profile
        for part in where.split("__") if where else []:
            target = target[int(part)] if part.isdigit() else target[part]
        target[key] = value
    return data


@pytest.mark.parametrize(
    "changes",
    [
        {"wall_ms_per_step": "12.5"},
        {"source": 5},
        {"kernels_seen": "4"},
        {"groups__matmul__ms_per_step": "200"},
        {"kernels__0__name": ["flash_fwd_kernel"]},
    ],
    ids=lambda c: next(iter(c)),
)
def test_a_malformed_profile_is_skipped_with_a_warning_not_a_crash_of_explain(
    tmp_path, capsys, changes
):
    """A Result whose profile held a string for a number, a number for its source or a list for
    a kernel's name loaded (only the objects' shapes were checked) and `compare --explain`
    crashed on it: exit 4, 'internal error: TypeError'. Such a line is unreadable: skipped with
    a warning naming it, and the comparison goes on with what is left."""
    from test_explain import LIGER
    from test_explain import _result as explain_result

    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    good = explain_result("00_sdpa", "sdpa", LIGER, commit=None).to_dict()
    a.write_text(json.dumps(good) + "\n" + json.dumps(_profiled_line(**changes)) + "\n")
    b.write_text(json.dumps(good) + "\n")
    with pytest.warns(UserWarning, match=r"a\.jsonl:2: skipped unreadable result"):
        code = cli(["compare", str(a), str(b), "--explain"])
    assert code == 0  # a.jsonl's first line (the same stage) is compared instead
    assert "internal error" not in capsys.readouterr().err


@pytest.mark.parametrize(
    "samples",
    [{"warmup_ms": [1.0], "measured_ms": "240.0"}, {"warmup_ms": [], "measured_ms": [1, "x"]}],
    ids=["string", "mixed"],
)
def test_malformed_samples_are_an_unreadable_line(tmp_path, samples):
    """`metrics.samples` with a string for the list (or strings in it) loaded, and
    summary_from_samples, which recomputes the statistics from the Result alone, crashed on
    it. Such a line is skipped with a warning, like any unreadable Result."""
    from stagebench import results

    data = _profiled_line()
    data["metrics"]["samples"] = samples
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(data) + "\n")
    with pytest.warns(UserWarning, match="metrics.samples.measured_ms"):
        assert results.load(path) == []


def test_every_stored_result_of_this_repository_still_loads():
    """The type checks that refuse malformed lines must accept every Result stagebench wrote,
    schema 1 to 4 (the dated H100 runs): none is skipped."""
    from stagebench import results

    root = Path(__file__).resolve().parents[1] / "docs" / "results"
    paths = [
        p
        for p in root.rglob("*.jsonl")
        if not p.name.startswith("noise-records") and p.name != "stagebench-machines.jsonl"
    ]
    assert paths
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for path in paths:
            assert len(results.load(path)) == len(path.read_text().splitlines()), path


# -- bisect-release: releases ---------------------------------------------------------------


class _Garbage:
    """A simple index that answers whatever body it is given for every package."""

    def __init__(self, kind: str, body: str) -> None:
        self.kind, self.body = kind, body

    def __enter__(self) -> str:
        import http.server
        import threading

        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = outer.body.encode()
                self.send_response(200)
                self.send_header("Content-Type", outer.kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}/simple"

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


JSON_KIND = "application/vnd.pypi.simple.v1+json"


@pytest.mark.parametrize(
    "files",
    [5, {"a": 1}, [1, 2], [{"filename": 5}], [{"url": "x"}]],
    ids=["number", "object", "numbers", "number-filename", "no-filename"],
)
def test_an_index_answering_malformed_json_is_one_line_not_a_crash(files):
    """An index whose PEP 691 answer had `files` as a number, an object, or entries that are not
    objects crashed `bisect-release` (TypeError / AttributeError: exit 4 and a traceback);
    entries without a file name made it say the package has no files. It is an index that
    answered no usable JSON: one line, bad input (exit 2)."""
    from stagebench import releases

    garbage = _Garbage(JSON_KIND, json.dumps({"files": files}))
    with garbage as url, pytest.raises(releases.IndexUnreachable, match="no PEP 691 JSON"):
        releases.between("torchy", "1.0", "2.0", releases.Source(index_url=url))


def test_a_requires_python_that_is_not_a_string_hides_no_release():
    """`requires-python: 3` (not a specifier string) crashed the release listing with
    TypeError; like a specifier with a typo, it must not hide the release."""
    from stagebench import releases

    files = [
        {"filename": "torchy-1.0-py3-none-any.whl", "requires-python": 3},
        {"filename": "torchy-2.0-py3-none-any.whl", "requires-python": None},
    ]
    with _Garbage(JSON_KIND, json.dumps({"files": files})) as url:
        rng = releases.between("torchy", "1.0", "2.0", releases.Source(index_url=url))
    assert [str(r.version) for r in rng.candidates] == ["1.0", "2.0"]


@pytest.mark.parametrize("name", ["liger kernel", "liger-kernel==0.6.4", "../etc", "-x"])
def test_a_package_name_that_is_no_name_is_bad_input(name, tmp_path):
    """`bisect-release "liger kernel" ...` crashed in urllib (InvalidURL: exit 4, traceback);
    `liger-kernel==0.6.4` or `../etc` went to the index as a path and came back as "lists no
    files". A name that is not a package name says so, in one line (exit 2)."""
    from stagebench import releases

    with pytest.raises(releases.ReleaseError, match="is not a package name"):
        releases.releases(name, releases.Source(index_url="http://127.0.0.1:9/simple"))
    with pytest.raises(releases.ReleaseError, match="is not a package name"):
        releases.releases(name, releases.Source(find_links=tmp_path))


def test_releases_of_another_build_are_not_bisected_between_good_and_bad():
    """GOOD 2.4.0+cu121 and BAD 2.5.0+cu121 on an index that holds every build (+cpu, +cu121)
    made 2.4.1+cpu and 2.5.0+cpu candidates: the bisect would measure CPU builds of torch
    between two CUDA ones and blame one of them. Between two releases of one build only that
    build's releases count; the others are listed as skipped, with why."""
    from stagebench import releases

    versions = ["2.4.0+cpu", "2.4.0+cu121", "2.4.1+cpu", "2.4.1+cu121", "2.5.0+cpu", "2.5.0+cu121"]
    files = [{"filename": f"torchy-{v}-py3-none-any.whl"} for v in versions]
    with _Garbage(JSON_KIND, json.dumps({"files": files})) as url:
        source = releases.Source(index_url=url)
        rng = releases.between("torchy", "2.4.0+cu121", "2.5.0+cu121", source)
        plain = releases.between("torchy", "2.4.0+cpu", "2.5.0+cpu", source)
    assert [str(r.version) for r in rng.candidates] == ["2.4.0+cu121", "2.4.1+cu121", "2.5.0+cu121"]
    assert [str(r.version) for r in rng.skipped] == ["2.4.1+cpu", "2.5.0+cpu"]
    assert "another build" in rng.skipped[0].reason
    assert [str(r.version) for r in plain.candidates] == ["2.4.0+cpu", "2.4.1+cpu", "2.5.0+cpu"]


# -- bisect-release: overlays ---------------------------------------------------------------


@pytest.mark.parametrize(
    "record",
    ["[1]", '{"layout": 1}', '{"layout": 1, "requirements": ["x==1"], "changed": [[1]]}'],
    ids=["list", "no-fields", "short-change"],
)
def test_a_corrupt_overlay_record_is_rebuilt_not_a_crash(plant_wheels, tmp_path, record):
    """An overlay whose record was truncated or hand-edited (a JSON list, a record without
    `changed`, a change of one field) crashed every later bisect that reached it (KeyError,
    TypeError, AttributeError: exit 4). An overlay without a usable record is a build that
    did not finish: rebuilt."""
    from stagebench import overlay
    from stagebench.releases import Source

    source = Source(find_links=plant_wheels)
    built = overlay.build(["stagebench-test-plant==1.0.0"], source=source, overlay_dir=tmp_path)
    (built.path / overlay.RECORD).write_text(record)
    again = overlay.build(["stagebench-test-plant==1.0.0"], source=source, overlay_dir=tmp_path)
    assert not again.reused and again.changes() == ["stagebench-test-plant none -> 1.0.0"]


def test_an_overlay_whose_interpreter_is_gone_is_rebuilt(plant_wheels, tmp_path):
    """A cached overlay whose bin/python was removed (a cleaned-up interpreter, a copied cache)
    was reused, and the import check failed with 'No such file or directory': exit 4 for the
    whole bisect. It is rebuilt instead."""
    from stagebench import overlay
    from stagebench.releases import Source

    source = Source(find_links=plant_wheels)
    built = overlay.build(["stagebench-test-plant==1.0.0"], source=source, overlay_dir=tmp_path)
    (built.path / "bin" / "python").unlink()
    again = overlay.build(["stagebench-test-plant==1.0.0"], source=source, overlay_dir=tmp_path)
    assert not again.reused and Path(again.python).exists()


def test_a_read_only_overlay_cache_is_bad_input_before_anything_is_measured(
    plant_wheels, tmp_path, capsys
):
    """`--overlay-dir` on a read-only filesystem crashed with a raw OSError traceback from the
    cache's lock file (exit 4, 'internal error'). The command says it in one line before it
    measures anything (exit 2); the library raises OverlayError, never a bare OSError."""
    from fake_disk import read_only_dir

    from stagebench import overlay
    from stagebench.releases import Source

    with read_only_dir(tmp_path) as ro:
        argv = [
            "bisect-release", "stagebench-test-plant", "1.0.0", "1.5.0", "--stage", "00_sdpa",
            "--find-links", str(plant_wheels), "--overlay-dir", str(ro / "overlays"),
            "--device", "cpu", "--model", "tiny",
        ]  # fmt: skip
        assert cli(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--overlay-dir" in err[0] and "not writable" in err[0], err
        with pytest.raises(overlay.OverlayError, match="overlay cache"):
            overlay.build(
                ["stagebench-test-plant==1.0.0"],
                source=Source(find_links=plant_wheels),
                overlay_dir=ro / "overlays",
                check=False,
            )


def test_a_full_disk_while_pip_installs_is_stagebenchs_failure_not_the_release(tmp_path):
    """pip failing with 'No space left on device' while it installed a release into its overlay
    made that release `incompatible`: skipped, or, at GOOD or BAD, 'cannot judge' (exit 3),
    the disk blamed on the package. A disk pip cannot write is OverlayError (exit 4)."""
    import os
    import zipfile

    from fake_disk import tiny_tmpfs

    from stagebench import overlay
    from stagebench.releases import Source

    wheels = tmp_path / "wheels"
    wheels.mkdir()
    info = "bulky-1.0.dist-info"
    files = {
        "bulky/__init__.py": b"",
        "bulky/blob.bin": os.urandom(1 << 20),  # 1 MiB that does not compress
        f"{info}/METADATA": b"Metadata-Version: 2.1\nName: bulky\nVersion: 1.0\n",
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    with zipfile.ZipFile(wheels / "bulky-1.0-py3-none-any.whl", "w") as wheel:
        for name, data in files.items():
            wheel.writestr(name, data)
        wheel.writestr(f"{info}/RECORD", "".join(f"{n},,\n" for n in [*files, f"{info}/RECORD"]))
    full = pytest.raises(overlay.OverlayError, match="No space left on device")
    with tiny_tmpfs(tmp_path / "small", size_kib=512) as small, full:
        overlay.build(["bulky==1.0"], source=Source(find_links=wheels), overlay_dir=small)


# -- bisect-release: lock files -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "pins"),
    [
        ("torch==2.9.1\t# pinned for the image\n", {"torch": "2.9.1"}),
        ("torch==2.9.1\t--hash=sha256:ab\n", {"torch": "2.9.1"}),
        ("\ufefftorch==2.9.1\nliger-kernel==0.6.4\n", {"torch": "2.9.1", "liger-kernel": "0.6.4"}),
    ],
    ids=["tab-comment", "tab-hash", "bom"],
)
def test_a_lock_with_tabs_or_a_bom_is_read_as_pip_reads_it(tmp_path, text, pins):
    """A comment or --hash after a tab (pip strips comments after any whitespace) and a
    UTF-8 BOM at the start of the file (some editors write one) made a valid requirements file
    bad input: "'\\ufefftorch==2.9.1' is not a requirement"."""
    from stagebench import depbisect

    path = tmp_path / "lock.txt"
    path.write_text(text, encoding="utf-8")
    assert depbisect.parse_lock(path) == pins


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"torch==2.9.1  # caf\xe9\n", "is not UTF-8"),
        (b'torch==2.9.1 ; foo == "x"\n', "is not a requirement"),
        (b"torch==2.9.1\ntorch==2.9.2\n", "pins torch twice"),
    ],
    ids=["latin-1", "bad-marker", "pinned-twice"],
)
def test_a_bad_lock_is_one_line_of_bad_input(tmp_path, capsys, data, message):
    """A lock in Latin-1 crashed bisect-release with UnicodeDecodeError (exit 4, traceback); a
    requirement packaging cannot parse was bad input over three lines (packaging's message with
    the line and a caret under it); a package pinned twice silently took the last pin. Each is
    bad input, in one line."""
    old, new = tmp_path / "old.txt", tmp_path / "new.txt"
    old.write_bytes(data)
    new.write_text("torch==2.9.3\n")
    argv = ["bisect-release", "--from-lock", str(old), "--to-lock", str(new)]
    code = cli([*argv, "--stage", "00_sdpa", "--device", "cpu", "--model", "tiny"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err


def test_noise_measured_at_another_shape_is_not_the_series_noise(tmp_path, fake_rounds):
    """`stagebench noise 00_sdpa --seq-len 32` (a quick look, or `--workload b2x1024` for the
    protocol-1 shape) wrote a record for stages.Stage_00_sdpa that the judge then used for the
    history at the suite's own shape, which is another asv series: its quiet 0.08% made a 0.6%
    wobble of the real series a regression. A record is kept with its class's asv version and
    only qualifies the series of that version."""
    from asv.benchmarks import Benchmarks
    from asv.util import write_json

    from stagebench.asv_suite import benchmark_version
    from stagebench.stages import resolve
    from stagebench.workload import Workload, defaults_for

    cpu = Workload(model="tiny", device="cpu", **{**defaults_for("cpu"), "seq_len": 32})
    suite = benchmark_version(resolve("00_sdpa"), Workload(model="tiny", device="cpu"))
    assert benchmark_version(resolve("00_sdpa"), cpu) != suite  # another series

    steps = [*noisy(3, 8, 240.0, 0.0008), 240.0 * 1.006]
    series = speed_family(steps)
    write_history(tmp_path, series, versions=[suite] * len(steps))
    current = {name: {"name": name, "version": suite, "params": []} for name in series}
    write_json(str(tmp_path / "benchmarks.json"), current, api_version=Benchmarks.api_version)

    fake_rounds([240.0, 240.2, 239.9])  # three quiet processes at seq_len 32
    argv = ["noise", "00_sdpa", "--runs", "3", "--results", str(tmp_path)]
    assert cli([*argv, "--device", "cpu", "--model", "tiny", "--seq-len", "32"]) == 0
    (record,) = noise.load(tmp_path)
    assert record.version == benchmark_version(resolve("00_sdpa"), cpu)
    record = noise.StageNoise(**{**record.__dict__, "machine": MACHINE})
    (tmp_path / noise.LOG_NAME).write_text(json.dumps(record.to_dict()) + "\n")
    assert not regress.check(tmp_path).regressions  # the history's own noise: 0.6% is nothing
    # The same record measured at the suite's shape is that series' noise: then it counts.
    same = noise.StageNoise(**{**record.__dict__, "version": suite})
    (tmp_path / noise.LOG_NAME).write_text(json.dumps(same.to_dict()) + "\n")
    assert regress.check(tmp_path).regressions


def test_a_lock_that_spells_a_version_short_is_not_measured_twice(tmp_path):
    """NEW pins liger-kernel==0.8 and the index has 0.8.0: the package's run alone at NEW was
    keyed '0.8', the bisect looked for '0.8.0', and measured the same release a second time (a
    whole stage run, and two numbers for one release in the table). The run stands for the
    range's BAD by the release's own spelling."""
    from test_depbisect import OLD_LOCK, _lock_run, _trial

    new_lock = OLD_LOCK.replace("liger-kernel==0.6.4", "liger-kernel==0.8")
    slow = _trial(value=30.0)
    outcome, measure, _ = _lock_run(
        tmp_path,
        new_lock,
        {"0.8": slow, "0.8.0": slow, "0.7.0": _trial(value=30.0), "0.7.1": _trial(value=30.0)},
    )
    assert (outcome.first, outcome.last) == ("0.7.0", "0.6.4")
    assert measure.measured == ["0.8", "0.7.0"]  # never 0.8.0 again


def test_ctrl_c_while_an_overlay_is_built_is_one_line_and_exit_130(
    plant_wheels, tmp_path, capsys, monkeypatch
):
    """Ctrl-C while bisect-release built an overlay (pip running: minutes for a big wheel)
    came out as a KeyboardInterrupt traceback. Outside a stage there is nothing to store:
    one line, and 130 (128 + SIGINT), as every cancelled command exits."""
    from stagebench import overlay

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(overlay, "build", interrupted)
    argv = [
        "bisect-release", "stagebench-test-plant", "1.0.0", "1.5.0", "--stage", "00_sdpa",
        "--find-links", str(plant_wheels), "--overlay-dir", str(tmp_path / "overlays"),
        "--device", "cpu", "--model", "tiny",
    ]  # fmt: skip
    try:
        code = cli(argv)
    except KeyboardInterrupt:  # would end the whole test session
        pytest.fail("KeyboardInterrupt escaped stagebench's main()")
    assert code == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "stagebench: cancelled by SIGINT" and "Traceback" not in "\n".join(err)


@pytest.mark.parametrize("stage", [5, None])
def test_a_result_whose_stage_is_no_string_is_skipped_not_a_crash_of_compare(
    tmp_path, capsys, stage
):
    """A line whose `stage` was a number or null loaded, and `compare A B` crashed sorting the
    stage names (TypeError: exit 4, internal error). The Result's own fields are checked like
    its metrics: the line is skipped with a warning."""
    data = _profiled_line()
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text(json.dumps(data) + "\n" + json.dumps({**data, "stage": stage}) + "\n")
    b.write_text(json.dumps(data) + "\n")
    with pytest.warns(UserWarning, match=r"result\.stage is"):
        assert cli(["compare", str(a), str(b)]) == 0
    assert "internal error" not in capsys.readouterr().err


def test_an_arbitrary_equality_pin_is_not_tried_instead_of_crashing(tmp_path):
    """NEW pinning `liger-kernel===0.8.0-custom` (arbitrary equality: any string) was measured
    alone as `liger-kernel==0.8.0-custom`, which the overlay refuses as no requirement: a
    ValueError out of the bisect (exit 4, internal error). Such a pin is listed as not tried,
    with why, like a URL pin."""
    from test_depbisect import OLD_LOCK, _lock_run

    new_lock = OLD_LOCK.replace("liger-kernel==0.6.4", "liger-kernel===0.8.0-custom")
    outcome, measure, _ = _lock_run(tmp_path, new_lock, {})
    assert measure.measured == [] and outcome.exit_code == 3
    assert any("'0.8.0-custom' in NEW is not a PEP 440 version" in n for n in outcome.notes)
