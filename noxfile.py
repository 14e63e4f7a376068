"""The one entry point for people and CI: `nox -s tests`, `nox -s bench`, `nox -s smoke` ...

Outside the container each session builds its own virtualenv. Inside the container (or anywhere
the heavy packages are already installed) set STAGEBENCH_NOX_REUSE_SYSTEM=1: sessions then run on
the current interpreter and install nothing, so torch and friends are never fetched again.
"""

from __future__ import annotations

import os

import nox

REUSE_SYSTEM = os.environ.get("STAGEBENCH_NOX_REUSE_SYSTEM") == "1"
BACKEND = "none" if REUSE_SYSTEM else "virtualenv"
# The CPU wheel on CI machines; a GPU host installs its own CUDA build (or reuses the system's).
TORCH_SPEC = os.environ.get("STAGEBENCH_TORCH_SPEC", "torch==2.13.0")
RESULTS_DIR = "results"

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True


def _install(session: nox.Session, *extras: str) -> None:
    if REUSE_SYSTEM:
        return
    # torch first and pinned, so the project's `torch>=2.9` never pulls a different build.
    session.install(TORCH_SPEC)
    target = f".[{','.join(extras)}]" if extras else "."
    session.install("-e", target)


@nox.session(venv_backend=BACKEND)
def tests(session: nox.Session) -> None:
    """Unit and end-to-end tests on the CPU (GPU-only tests skip with their reason)."""
    _install(session, "dev")
    session.run("pytest", *(session.posargs or ["-q"]))


@nox.session(venv_backend=BACKEND)
def lint(session: nox.Session) -> None:
    """ruff (lint + format check)."""
    if not REUSE_SYSTEM:
        session.install("ruff>=0.15")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(venv_backend=BACKEND)
def smoke(session: nox.Session) -> None:
    """The CPU matrix on `tiny` through the CLI, short: proves the whole path runs."""
    _install(session)
    session.run(
        "stagebench",
        "matrix",
        "--subset",
        "cpu",
        "--device",
        "cpu",
        "--seq-len",
        "128",
        "--min-steps",
        "5",
        "--max-steps",
        "10",
        "--jsonl",
        f"{RESULTS_DIR}/smoke.jsonl",
        *session.posargs,
    )


@nox.session(venv_backend=BACKEND)
def bench(session: nox.Session) -> None:
    """The main job: the seed matrix on qwen3-8b on a GPU, the CPU matrix on `tiny` otherwise."""
    _install(session, "gpu") if _has_cuda(session) else _install(session)
    session.run(
        "stagebench",
        "matrix",
        "--jsonl",
        f"{RESULTS_DIR}/bench.jsonl",
        "--log-dir",
        f"{RESULTS_DIR}/logs",
        *session.posargs,
        success_codes=[0, 1],
    )


def _has_cuda(session: nox.Session) -> bool:
    """Whether this machine has an NVIDIA driver (checked without importing torch)."""
    return any(os.path.exists(p) for p in ("/dev/nvidia0", "/proc/driver/nvidia/version"))
