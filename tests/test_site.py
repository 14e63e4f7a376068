"""The published history site, rendered by a real headless Chromium.

Two commits of the project are benchmarked by asv (the real `tiny` workload), `nox -s publish`
builds the site, and Chromium must show the stagebench benchmarks and draw a graph for one.
"""

from __future__ import annotations

import functools
import http.server
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from project_repo import bench_env, commit, git, make_repo

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (.ci/run does)"),
    pytest.mark.skipif(shutil.which("npm") is None, reason="npm fetches the site's JS libraries"),
]
GRAPH = "stages.Stage_00_sdpa.track_step_time_ms"


def chromium(*args: str, profile: Path) -> str:
    base = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=15000",
    ]
    done = subprocess.run([*base, *args], capture_output=True, text=True, timeout=120)
    return done.stdout


@pytest.fixture
def site(tmp_path):
    """A published site with two commits of history, served on loopback."""
    repo = make_repo(tmp_path / "repo")
    env = bench_env(tmp_path / "home", STAGEBENCH_ASV_MACHINE="site-test")
    run = functools.partial(subprocess.run, cwd=repo, env=env, capture_output=True, text=True)
    first = git(repo, "rev-parse", "HEAD")
    (repo / "docs" / "note.md").write_text("second commit\n")
    second = commit(repo, "docs: a second point of history")
    for rev in (first, second):
        subprocess.run(["git", "checkout", "-q", rev], cwd=repo, check=True)
        done = run([sys.executable, "-m", "nox", "-s", "bench", "--", "--bench", "Stage_00_sdpa"])
        assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    subprocess.run(["git", "checkout", "-q", "main"], cwd=repo, check=True)
    done = run([sys.executable, "-m", "nox", "-s", "publish", "--", "--offline"])
    assert done.returncode == 0, (done.stderr + done.stdout)[-3000:]
    handler = functools.partial(
        http.server.SimpleHTTPRequestHandler, directory=str(repo / ".asv" / "html")
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", repo
    server.shutdown()


def test_site_lists_stagebench_benchmarks_and_draws_their_graph(site, tmp_path):
    url, repo = site
    summary = chromium("--dump-dom", url, profile=tmp_path / "p1")
    assert "stagebench" in summary
    assert "Stage_00_sdpa" in summary and "track_mfu" in summary
    graph = chromium("--dump-dom", f"{url}#{GRAPH}", profile=tmp_path / "p2")
    assert 'class="flot-base"' in graph, "no graph canvas was drawn"
    shot = tmp_path / "graph.png"
    chromium(
        f"--screenshot={shot}", "--window-size=1280,800", f"{url}#{GRAPH}", profile=tmp_path / "p3"
    )
    assert shot.stat().st_size > 10_000  # a rendered page, not a blank one
    # Both commits are in the history the graph reads.
    results = list((repo / ".asv" / "results" / "site-test").glob("*-interpreter-py*.json"))
    assert len(results) == 2
