"""A throwaway git repository made of this project's tracked files, for asv end-to-end tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=repo, check=True, capture_output=True, text=True
    ).stdout.strip()


def make_repo(dest: Path) -> Path:
    """Copy the working tree (tracked and not-ignored files), commit it as `base` on main."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split("\0")
    for name in filter(None, files):
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    git(dest, "init", "-q", "-b", "main")
    git(dest, "config", "user.email", "bench@example.invalid")
    git(dest, "config", "user.name", "bench")
    commit(dest, "base")
    return dest


def commit(repo: Path, message: str) -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", message)
    return git(repo, "rev-parse", "HEAD")


def bench_env(home: Path, **extra: str) -> dict[str, str]:
    """Environment for asv/nox in the throwaway repo: this interpreter's packages, a tiny CPU
    workload, and an asv machine file kept out of the user's home."""
    home.mkdir(parents=True, exist_ok=True)
    return {
        **os.environ,
        "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""),
        "HOME": str(home),
        "STAGEBENCH_NOX_REUSE_SYSTEM": "1",
        "STAGEBENCH_DEVICE": "cpu",
        "STAGEBENCH_MATRIX": "00_sdpa",
        # No kernel profile: these runs test the history, and 3 profiled steps a stage add up.
        "STAGEBENCH_WORKLOAD": '{"seq_len": 64, "warmup_steps": 2, "min_steps": 8, '
        '"max_steps": 12, "profile_steps": 0}',
        **extra,
    }
