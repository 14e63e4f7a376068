"""Defects found by hostile testing of the nightly loop and the judging code, one test each.

Each test failed against the code it was written for and passes since its fix; its docstring
says what happened and what should. The end-to-end ones run the real `tiny` CPU bench (about
20-90 s each).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from asv_history import ENV, MACHINE, MEMORY, STEP_TIME, write_history
from project_repo import bench_env, commit, git, make_repo
from test_compare import _result

from stagebench import regress, results
from stagebench.cli import main as cli

T0 = 1_760_000_000_000
DAY_MS = 86_400_000
RUNNER = "src/stagebench/runner.py"
RUNNER_ANCHOR = "    reason = optim.unavailable_reason(stage, device)\n"
RUNNER_PLANT = (
    "    if not stage.compiles:\n        raise RuntimeError('planted: eager path broken')\n"
)


# -- helpers --------------------------------------------------------------------------------


def write_raw(
    results_dir: Path,
    commit_hash: str,
    when,
    values: dict,
    *,
    started_at: int = 0,
    name: str | None = None,
    **fields,
) -> Path:
    """One asv result file written as JSON by hand, so that any field can be corrupted."""
    folder = results_dir / MACHINE
    folder.mkdir(parents=True, exist_ok=True)
    machine = {"arch": "x86_64", "cpu": "cpu", "machine": MACHINE, "num_cpu": "16", "os": "Linux"}
    if not (folder / "machine.json").exists():
        (folder / "machine.json").write_text(json.dumps({**machine, "version": 1}))
    body = {
        "commit_hash": commit_hash,
        "env_name": ENV,
        "date": when,
        "params": {"machine": MACHINE, "python": "3.11"},
        "python": "3.11",
        "requirements": {},
        "env_vars": {},
        "result_columns": ["result", "params", "version", "started_at", "duration"],
        "results": {k: [[v], [], "1", started_at, 1.0] for k, v in values.items()},
        "durations": {},
        "version": 2,
        **fields,
    }
    path = folder / (name or f"{commit_hash[:8]}-{ENV}.json")
    path.write_text(json.dumps(body))
    return path


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _no_constants(name: str):
    raise ValueError(f"{name} is not JSON")


def _project(tmp_path: Path) -> tuple[Path, Path]:
    """The project as a git repository with a bare `origin`, as test_nightly sets it up."""
    dev = make_repo(tmp_path / "dev")
    origin = tmp_path / "origin.git"
    subprocess.run(["git", "init", "-q", "-b", "main", "--bare", str(origin)], check=True)
    git(dev, "remote", "add", "origin", str(origin))
    git(dev, "push", "-q", "origin", "main")
    return dev, origin


def _night_env(tmp_path: Path, checkout: Path, name: str, **extra: str) -> dict[str, str]:
    env = bench_env(tmp_path / f"home-{name}", STAGEBENCH_NPROCS="")
    env.pop("STAGEBENCH_ASV_MACHINE", None)  # the name must not need the runner's help
    return {**env, "PYTHONPATH": str(checkout / "src"), **extra}


def _nightly(checkout: Path, env: dict, *args: str, timeout: int = 600):
    return subprocess.run(
        [sys.executable, "-m", "stagebench.nightly", *args],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _night(tmp_path: Path, origin: Path, name: str) -> tuple[Path, dict]:
    checkout = tmp_path / f"night-{name}"
    subprocess.run(["git", "clone", "-q", str(origin), str(checkout)], check=True)
    env = _night_env(tmp_path, checkout, name)
    codes = {}
    for phase in (["restore", "--remote", "origin"], ["run"], ["store", "--remote", "origin"]):
        done = _nightly(checkout, env, *phase)
        codes[phase[0]] = done
    return checkout, codes


def _plant_failure(repo: Path) -> None:
    file = repo / RUNNER
    text = file.read_text()
    assert RUNNER_ANCHOR in text, "runner.py changed: update the planted failure's anchor"
    file.write_text(text.replace(RUNNER_ANCHOR, RUNNER_ANCHOR + RUNNER_PLANT, 1))


def _results_branch(tmp_path: Path, files: dict[str, str], ref: str) -> tuple[Path, Path]:
    """A bare origin whose `ref` holds `files`, and a work repository to run store/restore in."""
    origin = tmp_path / "origin.git"
    subprocess.run(["git", "init", "-q", "--bare", str(origin)], check=True)
    work = tmp_path / "work"
    work.mkdir()
    git(work, "init", "-q")
    git(work, "config", "user.email", "t@example.invalid")
    git(work, "config", "user.name", "t")
    for path, text in files.items():
        (work / path).parent.mkdir(parents=True, exist_ok=True)
        (work / path).write_text(text)
    git(work, "add", "-A")
    git(work, "commit", "-qm", "history")
    git(work, "push", "-q", str(origin), f"HEAD:{ref}")
    return origin, work


# -- the judge and the history reader -------------------------------------------------------


@pytest.mark.parametrize(
    "values",
    [
        [100.0] * 10 + [200.0] * 5 + [600.0],  # a standing 2x regression, then 3x more tonight
        # a 2% noise flag the night before (refuted by its re-run), then +50% tonight
        [
            *[98.85, 101.32, 99.69, 99.08, 99.43, 99.19, 99.44, 99.26, 99.62, 100.24],
            *[100.6, 98.89, 99.05, 99.57, 100.06, 100.1, 97.96, 101.7, 99.11, 101.82],
            150.0,
        ],
    ],
    ids=["after-a-standing-regression", "after-a-refuted-noise-flag"],
)
def test_a_regression_at_the_newest_commit_is_new_even_if_the_series_was_flagged_before(
    tmp_path, capsys, values
):
    """A finding is `new` only when the series was not REGRESSED the night before, whatever
    the change: a 3x rise tonight on top of an older standing regression (or a +50% rise the
    night after a refuted 2% noise flag) has bad == the newest commit but is reported as
    'standing', so the nightly neither re-measures nor alarms. It should be new (regress.py's
    own rule: 'new when the history without its newest commit did not show it')."""
    hashes = write_history(tmp_path, {STEP_TIME: values})
    report = regress.check(tmp_path)
    tonight = [f for f in report.regressions if f.bad == hashes[-1]]
    assert tonight, report.regressions
    assert all(f.new for f in tonight), [(f.good[:8], f.bad[:8], f.new) for f in tonight]
    code, _, _ = run_cli(capsys, "regressions", "--results", str(tmp_path), "--new-only")
    assert code == 1


def test_commits_with_one_date_are_ordered_as_measured_not_by_hash(tmp_path):
    """Points are sorted by (date, commit hash): commits sharing a date (a rebased stack lands
    in one second; asv records the author date in whole seconds) are ordered by their hash.
    Here the 3x regression measured last sorts first and is missed: no regression. Ties should
    follow the order the results were measured in (asv's started_at), so it is found."""
    commits = [c * 40 for c in "fedcba"]  # hash order is the reverse of commit order
    values = [100.0, 101.0, 99.0, 100.0, 102.0, 300.0]
    for i, (c, v) in enumerate(zip(commits, values, strict=True)):
        write_raw(tmp_path, c, T0, {STEP_TIME: v}, started_at=T0 + (i + 1) * 60_000)
    report = regress.check(tmp_path)
    assert [(f.good, f.bad) for f in report.regressions] == [(commits[4], commits[5])]


def test_a_zero_median_baseline_does_not_skip_its_noise(tmp_path):
    """A level with median 0 bypasses every noise bar ('no relative scale'): a series that
    alternates 0 and 1 (e.g. a metric rounding around a threshold) is a NEW regression every
    other night, although 1 is what half of its baseline measured. Same should be the verdict."""
    write_history(tmp_path, {MEMORY: [0.0, 1.0] * 10})
    report = regress.check(tmp_path)
    assert report.new == [], [(f.metric, f.judgement.reason) for f in report.new]


def test_a_duplicated_commit_never_gives_last_good_equal_to_first_bad(tmp_path):
    """The same commit twice in one machine and environment (a copied result file) gives a
    finding whose last good and first bad commit are the same, and a bisect command that
    `nox -s bisect` refuses. The duplicate should be named and skipped (or the two merged)."""
    hashes = write_history(tmp_path, {STEP_TIME: [100.0, 101.0, 99.0, 100.0, 102.0, 100.0]})
    write_raw(tmp_path, hashes[-1], T0 + 5 * DAY_MS, {STEP_TIME: 300.0}, name="copy.json")
    report = regress.check(tmp_path)
    findings = report.regressions + report.improvements
    assert all(f.good != f.bad for f in findings), [(f.good[:8], f.bad[:8]) for f in findings]


@pytest.mark.parametrize(
    "corrupt",
    [
        {"date": float("nan")},
        {"date": float("inf")},
        {"results": None},
        {"results": []},
        {"env_name": None},
    ],
    ids=["date-nan", "date-inf", "results-null", "results-list", "env-null"],
)
def test_one_corrupt_result_file_is_skipped_not_an_internal_error(tmp_path, capsys, corrupt):
    """history.py promises that one bad file is skipped and named; a result file with a NaN or
    infinite date, `results` null or a list, or `env_name` null crashes instead (exit 4 with a
    traceback; in `nightly run` the same crash exits 1, the regression code). The file should
    be listed in skipped_files and the rest judged (here: the 3x regression, exit 1)."""
    write_history(tmp_path, {STEP_TIME: [100.0, 101.0, 99.0, 100.0, 102.0, 300.0]})
    bad = write_raw(tmp_path, "0" * 40, T0 - DAY_MS, {STEP_TIME: 100.0}, **corrupt)
    code, out, err = run_cli(capsys, "regressions", "--results", str(tmp_path), "--format", "json")
    assert code == 1, err[-800:]
    assert any(str(bad) in s for s in json.loads(out)["skipped_files"])


@pytest.mark.parametrize(
    "entry", [{"name": STEP_TIME, "version": "1"}, "not an object"], ids=["no-params", "string"]
)
def test_a_corrupt_benchmarks_json_cannot_judge_not_internal_error(tmp_path, capsys, entry):
    """benchmarks.json that is not JSON gives 'cannot judge' (exit 3); one that is JSON but
    holds an entry without `params`, or an entry that is not an object, crashes (KeyError /
    AttributeError, exit 4). It should be exit 3 with one `stagebench: cannot judge:` line."""
    write_history(tmp_path, {STEP_TIME: [100.0, 101.0, 99.0, 100.0, 102.0, 300.0]})
    (tmp_path / "benchmarks.json").write_text(json.dumps({"version": 2, STEP_TIME: entry}))
    code, _, err = run_cli(capsys, "regressions", "--results", str(tmp_path))
    assert code == 3 and "Traceback" not in err, err[-800:]
    assert err.strip().splitlines()[-1].startswith("stagebench: cannot judge:")


def test_regressions_json_stays_json_with_an_infinite_value(tmp_path, capsys):
    """An infinite measurement (asv stores and reads it) was reported with `"after": Infinity,
    "change_pct": Infinity` in --format json (and in the nightly's regressions.json): not JSON,
    strict parsers (jq, JSON.parse) reject the whole report. An infinite value is no
    measurement; the report stays valid JSON."""
    write_history(
        tmp_path,
        {
            STEP_TIME: [100.0, 101.0, 99.0, 100.0, float("inf")],
            MEMORY: [60.0, 60.1, 59.9, 60.0, 90.0],
        },
    )
    _, out, _ = run_cli(capsys, "regressions", "--results", str(tmp_path), "--format", "json")
    report = json.loads(out, parse_constant=_no_constants)
    assert report["unjudged"][STEP_TIME] == "not measured at its newest commit"


# -- compare --------------------------------------------------------------------------------


def test_compare_counts_a_regression_on_every_machine(tmp_path, capsys):
    """`compare A B` over a history of two machines (the default: every machine): rows of the
    same benchmark on both machines are one family, only the first machine's row counts, and
    the other machine's 3x regression is shown as '(regressed, derived)': exit 0. Each machine
    (and environment) should be judged on its own: exit 1, with the machine in the table."""
    quiet = [100.0, 101.0, 99.0, 100.0, 102.0, 100.0]
    slow = [100.0, 101.0, 99.0, 100.0, 102.0, 300.0]
    hashes = write_history(tmp_path, {STEP_TIME: quiet}, machine="a-box")
    write_history(tmp_path, {STEP_TIME: slow}, machine="b-box")
    code, out, _ = run_cli(capsys, "compare", hashes[4], hashes[5], "--results", str(tmp_path))
    assert code == 1, out


def test_compare_with_nothing_judged_is_cannot_judge(tmp_path, capsys):
    """`compare A B` where no row could be judged (A's level has 1 point) exits 0, 'clean',
    although B is 50% slower; the documented code for 'history too short' is 3 (cli.py's
    docstring). NB: test_compare.py::test_too_little_history_at_the_first_commit_is_unjudged
    asserts the 0."""
    hashes = write_history(tmp_path, {STEP_TIME: [300.0, 301.0, 450.0]})
    code, _, _ = run_cli(capsys, "compare", hashes[1], hashes[2], "--results", str(tmp_path))
    assert code == 3


def test_compare_result_sets_with_a_negative_ci_is_not_an_internal_error(tmp_path, capsys):
    """A JSONL Result whose step_time_ci95_pct is negative (a corrupt or hand-edited file)
    crashes `compare a.jsonl b.jsonl` with 'ValueError: math domain error' (exit 4). It should
    be bad input (exit 2, one line naming the value) or the noise treated as unknown."""
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    results.append(a, _result("00_sdpa"))
    results.append(b, _result("00_sdpa", step_ms=450.0, ci=-500.0))
    code, _, err = run_cli(capsys, "compare", str(a), str(b))
    assert code != 4 and "internal error" not in err, err[-800:]


# -- nightly: restore and store -------------------------------------------------------------


def test_export_ignore_on_the_results_branch_does_not_erase_the_history(tmp_path):
    """`git archive` honours .gitattributes inside the archived tree: a results/.gitattributes
    with `* export-ignore` on the results branch makes `restore` bring back 0 files (exit 0)
    and `store` replace the branch with tonight's files alone: every earlier result is gone.
    History on the branch should survive a store (read the tree without attributes)."""
    old = {"results/m/machine.json": '{"machine": "m"}\n', "results/m/c1.json": '{"n": 1}\n'}
    origin, work = _results_branch(
        tmp_path,
        {**old, "results/.gitattributes": "* export-ignore\n"},
        "refs/heads/benchmark-results",
    )
    ours = tmp_path / "ours"
    (ours / "m").mkdir(parents=True)
    (ours / "m" / "c2.json").write_text('{"n": 2}\n')
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    done = _nightly(work, env, "store", "--remote", str(origin), "--results", str(ours))
    assert done.returncode == 0, done.stderr
    tree = git(origin, "ls-tree", "-r", "--name-only", "benchmark-results").split()
    assert "results/m/c1.json" in tree and "results/m/c2.json" in tree, tree


def test_a_branch_ending_in_the_same_name_does_not_block_restore_and_store(tmp_path):
    """`git ls-remote --heads origin benchmark-results` also matches
    refs/heads/archive/benchmark-results: with only that branch on the remote, restore and
    store both conclude the results branch exists, fetch refs/heads/benchmark-results, fail
    (exit 4), every night: nothing is ever stored. The exact ref should be looked up."""
    origin, work = _results_branch(
        tmp_path, {"results/m/c0.json": "{}\n"}, "refs/heads/archive/benchmark-results"
    )
    ours = tmp_path / "ours"
    (ours / "m").mkdir(parents=True)
    (ours / "m" / "c1.json").write_text('{"n": 1}\n')
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    restored = _nightly(work, env, "restore", "--remote", str(origin), "--results", str(ours))
    stored = _nightly(work, env, "store", "--remote", str(origin), "--results", str(ours))
    assert (restored.returncode, stored.returncode) == (0, 0), restored.stderr + stored.stderr
    assert git(origin, "rev-parse", "--verify", "refs/heads/benchmark-results")


def test_a_remote_that_looks_like_an_option_is_refused(tmp_path):
    """`--remote '--upload-pack=touch MARKER;git-upload-pack'` reaches `git ls-remote` as an
    option and runs the command (the marker appears), then exits 4. A remote starting with '-'
    should be bad input (exit 2), and never be passed to git as an option."""
    marker = tmp_path / "marker"
    work = tmp_path / "work"
    work.mkdir()
    git(work, "init", "-q")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    remote = f"--upload-pack=touch {marker};git-upload-pack"
    done = _nightly(work, env, "restore", "--remote", remote, "--results", str(tmp_path / "r"))
    assert not marker.exists()
    assert done.returncode == 2, done.stderr


@pytest.mark.parametrize("phase", ["restore", "store"])
@pytest.mark.parametrize("branch", ["a b", "", "x..y"])
def test_a_branch_name_git_refuses_is_bad_input(tmp_path, phase, branch):
    """An invalid branch name ('a b', '', 'x..y'): restore says 'no branch ... starting from
    empty results' and exits 0; store retries the push three times and exits 4. Both should
    refuse it at once: exit 2, one line."""
    origin = tmp_path / "origin.git"
    subprocess.run(["git", "init", "-q", "--bare", str(origin)], check=True)
    work = tmp_path / "work"
    (work / "r" / "m").mkdir(parents=True)
    (work / "r" / "m" / "c.json").write_text("{}\n")
    git(work, "init", "-q")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    args = [phase, "--remote", str(origin), "--branch", branch, "--results", str(work / "r")]
    done = _nightly(work, env, *args)
    assert done.returncode == 2, done.stdout + done.stderr


# -- nightly: run ---------------------------------------------------------------------------


def test_a_crash_in_nightly_run_never_exits_1(tmp_path):
    """One line of stagebench-machines.jsonl whose `facts` is not an object (a corrupt or
    hand-edited log) crashes `nightly run` with AttributeError before the bench: exit 1, the
    regression code (the workflow then only warns 'new benchmark regression'), and no verdict
    file. The line should be skipped as read_log promises, or the run end as failed (exit 4,
    verdict `failed`); never exit 1."""
    dev = make_repo(tmp_path / "dev")
    env = _night_env(tmp_path, dev, "crash", STAGEBENCH_ASV_MACHINE="hostile-box")
    history, report = tmp_path / "history", tmp_path / "report"
    history.mkdir()
    log = {"machine": "hostile-box", "commit": "0" * 40, "date": "2025-01-01", "facts": []}
    (history / "stagebench-machines.jsonl").write_text(json.dumps(log) + "\n")
    done = _nightly(dev, env, "run", "--results", str(history), "--report", str(report))
    assert done.returncode != 1, done.stderr[-2000:]
    assert (report / "verdict").is_file()


def test_a_report_dir_that_is_a_file_is_bad_input(tmp_path):
    """`nightly run --report FILE` exits 4 ('run failed: File exists'), the code for a failed
    bench or git; it is the caller's input: exit 2, before anything runs."""
    dev = make_repo(tmp_path / "dev")
    env = _night_env(tmp_path, dev, "report")
    report = tmp_path / "report"
    report.write_text("a file\n")
    done = _nightly(dev, env, "run", "--results", str(tmp_path / "r"), "--report", str(report))
    assert done.returncode == 2, done.stderr[-2000:]


def test_nightly_run_judges_the_results_directory_it_is_given(tmp_path):
    """`nightly run --results DIR`: the bench (asv) writes tonight's result to .asv/results
    whatever DIR is, while the machine log goes to DIR and the judge reads DIR: tonight's
    measurement is never judged ('0 night(s)'). DIR should hold tonight's result, or the
    option be refused."""
    _, origin = _project(tmp_path)
    checkout = tmp_path / "night"
    subprocess.run(["git", "clone", "-q", str(origin), str(checkout)], check=True)
    env = _night_env(tmp_path, checkout, "dir")
    history = tmp_path / "history"
    done = _nightly(checkout, env, "run", "--results", str(history), "--report", "report")
    head = git(checkout, "rev-parse", "HEAD")
    assert list(history.glob(f"*/{head[:8]}-*.json")), done.stdout[-2000:]


def test_a_head_authored_before_last_nights_head_is_judged_as_tonight(tmp_path):
    """asv files a result under its commit's author date and the judge orders by that date. A
    commit authored before the last measured one (a rebase-merged or fast-forwarded PR keeps
    its author date) is placed inside the history, not at its end: here tonight's HEAD breaks
    00_sdpa (ok -> failed) and the nightly says 'No regressions' (exit 3, short-history); the
    same commit with today's date gives the alarm (exit 1). Tonight's HEAD should be judged
    as the newest point."""
    dev, origin = _project(tmp_path)
    _night(tmp_path, origin, "1")
    _plant_failure(dev)
    git(dev, "add", "-A")
    ten_days_ago = f"@{int(time.time()) - 10 * 86400} +0000"
    subprocess.run(
        ["git", "commit", "-qm", "runner: planted failure, authored ten days ago"],
        cwd=dev,
        env={**os.environ, "GIT_AUTHOR_DATE": ten_days_ago},
        check=True,
    )
    git(dev, "push", "-q", "origin", "main")
    checkout, done = _night(tmp_path, origin, "2")
    verdict = (checkout / ".asv" / "report" / "verdict").read_text().strip()
    assert (done["run"].returncode, verdict) == (1, "regression"), done["run"].stdout[-2000:]


def _processes_carrying(marker: str) -> list[str]:
    """Command lines of the live processes whose environment holds STAGEBENCH_TEST_NIGHT=marker."""
    wanted = f"STAGEBENCH_TEST_NIGHT={marker}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if wanted in (proc / "environ").read_bytes().split(b"\0"):
                state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":  # a zombie runs nothing; its parent reaps it
                    found.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:  # gone meanwhile, or not ours
            continue
    return found


def test_sigterm_during_the_bench_leaves_no_bench_running(tmp_path):
    """SIGTERM to `nightly run` while asv measures: the nightly exits 143 at once, but
    `nox -s bench` and asv go on as orphans and write tonight's result into .asv/results
    after the nightly has ended (and may race a retry). The bench should end with it."""
    _, origin = _project(tmp_path)
    checkout = tmp_path / "night"
    subprocess.run(["git", "clone", "-q", str(origin), str(checkout)], check=True)
    marker = f"term-{os.getpid()}-{time.monotonic_ns()}"  # every process of this night inherits it
    env = _night_env(tmp_path, checkout, "term", STAGEBENCH_TEST_NIGHT=marker)
    results_dir = checkout / ".asv" / "results"
    run = subprocess.Popen(
        [sys.executable, "-m", "stagebench.nightly", "run"],
        cwd=checkout,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not list(results_dir.glob("*/machine.json")):  # asv run has started
            assert run.poll() is None and time.monotonic() < deadline, "asv never started"
            time.sleep(0.2)
        run.send_signal(signal.SIGTERM)
        run.wait(timeout=60)
        # Whatever the night started (nox, asv, its benchmark processes: asv passes the
        # environment on) must end with it; once none is left, nothing can write later.
        deadline = time.monotonic() + 60
        while (left := _processes_carrying(marker)) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not left, f"still running after the nightly ended: {left}"
        written = [p.name for p in results_dir.glob("*/*.json") if p.name != "machine.json"]
        assert written == [], f"written after the nightly ended: {written}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.pid, signal.SIGKILL)  # the orphans, so the test leaves nothing


# -- nox sessions ---------------------------------------------------------------------------


def test_bisect_names_no_culprit_when_nothing_changed(tmp_path):
    """`nox -s bisect -- GOOD BAD stages.Stage_00_sdpa.track_ok` over commits that touch only
    docs (track_ok is 1 at every commit) prints 'culprit: <a docs commit>' and succeeds: asv
    find always names its 'greatest' change, even when there is none. It should say that GOOD
    and BAD measure the same (no culprit) and not blame a commit."""
    dev = make_repo(tmp_path / "dev")
    good = git(dev, "rev-parse", "HEAD")
    for day in range(3):
        (dev / "docs" / f"day-{day}.md").write_text(f"notes {day}\n")
        commit(dev, f"docs: day {day}")
    env = bench_env(tmp_path / "home", STAGEBENCH_NPROCS="", PYTHONPATH=str(dev / "src"))
    env.pop("STAGEBENCH_ASV_MACHINE", None)
    bench = "stages.Stage_00_sdpa.track_ok"
    done = subprocess.run(
        [sys.executable, "-m", "nox", "-s", "bisect", "--", good, "HEAD", bench],
        cwd=dev,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    output = done.stdout + done.stderr
    assert not re.search(r"^culprit: [0-9a-f]{40}", output, re.MULTILINE), output[-3000:]


def test_backfill_measures_the_commits_that_have_benchmarks(tmp_path):
    """`nox -s backfill -- RANGE` over a range whose first commit has no benchmarks/ (the suite
    came later) stops there with asv's 'No __init__.py file in benchmarks' and measures no
    later commit. Commits without the suite should be skipped with a note, the rest measured."""
    dev = make_repo(tmp_path / "dev")
    saved = tmp_path / "benchmarks.saved"
    shutil.move(dev / "benchmarks", saved)
    commit(dev, "before the suite existed")
    shutil.move(saved, dev / "benchmarks")
    head = commit(dev, "the suite")
    env = bench_env(tmp_path / "home", STAGEBENCH_NPROCS="", PYTHONPATH=str(dev / "src"))
    env.pop("STAGEBENCH_ASV_MACHINE", None)
    done = subprocess.run(
        [sys.executable, "-m", "nox", "-s", "backfill", "--", "HEAD~2..HEAD"],
        cwd=dev,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    measured = list((dev / ".asv" / "results").glob(f"*/{head[:8]}-*.json"))
    assert measured, (done.stdout + done.stderr)[-3000:]
