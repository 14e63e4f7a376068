"""The nox sessions' own checks, where they answer without measuring anything."""

from __future__ import annotations

import subprocess
import sys

import pytest
from project_repo import bench_env, commit, git, make_repo


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """The project in a throwaway repository with three more commits: a - b - c."""
    root = tmp_path_factory.mktemp("noxrepo")
    path = make_repo(root / "repo")
    for name in ("a", "b", "c"):
        (path / "docs" / f"{name}.md").write_text(f"{name}\n")
        commit(path, f"docs: {name}")
    return path, bench_env(root / "home")


def nox(repo, *args: str) -> subprocess.CompletedProcess:
    path, env = repo
    return subprocess.run(
        [sys.executable, "-m", "nox", "-s", *args],
        cwd=path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_bisect_of_adjacent_commits_measures_nothing(repo):
    bad = git(repo[0], "rev-parse", "HEAD")
    done = nox(repo, "bisect", "--", "HEAD~1", "HEAD", "stages.Stage_00_sdpa.track_ok")
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"culprit: {bad} (stages.Stage_00_sdpa.track_ok) -- already known" in done.stdout
    assert "asv find" not in done.stdout + done.stderr
    assert not (repo[0] / ".asv" / "bisect").exists()


@pytest.mark.parametrize(
    ("good", "bad", "message"),
    [
        ("HEAD", "HEAD", "GOOD and BAD are the same commit"),
        ("HEAD", "HEAD~2", "is not an ancestor of BAD"),
        ("no-such-ref", "HEAD", "GOOD 'no-such-ref' is not a commit"),
    ],
)
def test_bisect_refuses_a_range_it_cannot_search(repo, good, bad, message):
    done = nox(repo, "bisect", "--", good, bad, "stages.Stage_00_sdpa.track_ok")
    assert done.returncode != 0 and message in done.stderr, done.stderr[-2000:]


def test_backfill_refuses_a_range_git_does_not_know(repo):
    done = nox(repo, "backfill", "--", "nowhere..HEAD")
    assert done.returncode != 0 and "not a commit range" in done.stderr, done.stderr[-2000:]


@pytest.mark.parametrize(
    ("args", "message"),
    [(["dir"], "usage: nox -s remeasure"), (["dir", "x", "no-such-ref"], "is not a commit")],
)
def test_remeasure_refuses_what_it_cannot_measure(repo, args, message):
    done = nox(repo, "remeasure", "--", *args)
    assert done.returncode != 0 and message in done.stderr, done.stderr[-2000:]


def test_bench_names_a_bad_variable_before_asv_runs(repo):
    path, env = repo
    done = subprocess.run(
        [sys.executable, "-m", "nox", "-s", "bench"],
        cwd=path,
        env={**env, "STAGEBENCH_WORKLOAD": "{not json"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = done.stdout + done.stderr  # nox passes a command's stderr on as its stdout
    assert done.returncode != 0
    assert "stagebench: error: STAGEBENCH_WORKLOAD" in output
    assert "asv run" not in output
