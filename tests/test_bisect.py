"""`nox -s bisect` (asv find) names the commit that planted a slowdown, end to end on a CPU.

A throwaway git repository is built from this project's files with eight commits; the fifth makes
every training step 40 ms slower. asv builds stagebench at the commits it visits (each in a
virtualenv sharing this interpreter's torch), runs the real `tiny` workload, and must name exactly
that commit.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARK = "stages.Stage_00_sdpa.track_step_time_ms"
SLOWDOWN = "    loss = loss_fn(model, batch, batch)\n"


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=repo, check=True, capture_output=True, text=True
    ).stdout.strip()


def _project_copy(dest: Path) -> None:
    """The project's tracked files as they are in the working tree."""
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.split("\0")
    for name in filter(None, files):
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)


def _history(repo: Path) -> tuple[str, str, str]:
    """Eight commits; returns (first, planted, last)."""
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "config", "user.email", "bench@example.invalid")
    _git(repo, "config", "user.name", "bench")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "base")
    first = _git(repo, "rev-parse", "HEAD")
    planted = ""
    runner = repo / "src" / "stagebench" / "runner.py"
    for i in range(1, 8):
        if i == 4:
            text = runner.read_text()
            assert SLOWDOWN in text, "the runner's step changed; update the planted slowdown"
            runner.write_text(
                text.replace(SLOWDOWN, "    __import__('time').sleep(0.04)\n" + SLOWDOWN)
            )
            message = "runner: tidy the step (plants a 40 ms sleep)"
        else:
            (repo / "docs").mkdir(exist_ok=True)
            (repo / "docs" / f"note-{i}.md").write_text(f"note {i}\n")
            message = f"docs: note {i}"
        _git(repo, "add", "-A")
        _git(repo, "commit", "-qm", message)
        if i == 4:
            planted = _git(repo, "rev-parse", "HEAD")
    return first, planted, _git(repo, "rev-parse", "HEAD")


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_bisect_names_the_planted_commit(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _project_copy(repo)
    first, planted, last = _history(repo)
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        "HOME": str(tmp_path / "home"),  # asv's machine file goes here, not in the user's home
        "STAGEBENCH_NOX_REUSE_SYSTEM": "1",  # this interpreter already has torch and asv
        "STAGEBENCH_ASV_MACHINE": "bisect-test",
        "STAGEBENCH_DEVICE": "cpu",
        "STAGEBENCH_MATRIX": "00_sdpa",
        "STAGEBENCH_WORKLOAD": '{"seq_len": 64, "warmup_steps": 2, "min_steps": 8, '
        '"max_steps": 12}',
    }
    (tmp_path / "home").mkdir()
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
