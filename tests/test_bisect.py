"""`nox -s bisect` (asv find) names the commit that planted a slowdown, end to end on a CPU.

A throwaway git repository is built from this project's files with eight commits; the fifth makes
every training step 250 ms slower, far more than a busy 2-core machine adds to a 20 ms step. asv
builds stagebench at the commits it visits (each in a virtualenv sharing this interpreter's torch),
runs the real `tiny` workload, and must name exactly that commit.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from project_repo import bench_env, commit, git, make_repo

BENCHMARK = "stages.Stage_00_sdpa.track_step_time_ms"
SLOWDOWN = "    loss = loss_fn(model, batch, batch)\n"


def _history(repo: Path) -> tuple[str, str, str]:
    """Seven commits on top of `base`; returns (base, planted, last)."""
    first = git(repo, "rev-parse", "HEAD")
    planted = last = ""
    runner = repo / "src" / "stagebench" / "runner.py"
    (repo / "docs").mkdir(exist_ok=True)
    for i in range(1, 8):
        if i == 4:
            text = runner.read_text()
            assert SLOWDOWN in text, "the runner's step changed; update the planted slowdown"
            runner.write_text(
                text.replace(SLOWDOWN, "    __import__('time').sleep(0.25)\n" + SLOWDOWN)
            )
            last = planted = commit(repo, "runner: tidy the step (plants a 250 ms sleep)")
        else:
            (repo / "docs" / f"note-{i}.md").write_text(f"note {i}\n")
            last = commit(repo, f"docs: note {i}")
    return first, planted, last


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_bisect_names_the_planted_commit(tmp_path):
    repo = make_repo(tmp_path / "repo")
    first, planted, last = _history(repo)
    env = bench_env(tmp_path / "home", STAGEBENCH_ASV_MACHINE="bisect-test")
    done = subprocess.run(
        [sys.executable, "-m", "nox", "-s", "bisect", "--", first, last, BENCHMARK],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert f"culprit: {planted} ({BENCHMARK})" in output, output[-4000:]
