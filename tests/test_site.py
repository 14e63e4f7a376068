"""The published history site, rendered by a real headless Chromium with every other host
unreachable.

Two commits of the project are benchmarked by asv (the real `tiny` workload), `nox -s publish`
builds the site, and Chromium must open on the front page's table, its cells the stored
Results' numbers, and draw asv's graph behind it from the site's own libraries.
"""

from __future__ import annotations

import functools
import html
import http.server
import json
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from project_repo import bench_env, commit, git, make_repo

from stagebench import results
from stagebench import site as site_module

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
        # Any host but this machine's loopback fails: the site must need nothing else.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    ]
    done = subprocess.run([*base, *args], capture_output=True, text=True, timeout=120)
    return done.stdout


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A published site with two commits of history, served on loopback (built once: the tests
    only read it)."""
    tmp_path = tmp_path_factory.mktemp("site")
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
    done = run([sys.executable, "-m", "nox", "-s", "publish"])
    assert done.returncode == 0, (done.stderr + done.stdout)[-3000:]
    handler = functools.partial(
        http.server.SimpleHTTPRequestHandler, directory=str(repo / ".asv" / "html")
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", repo
    server.shutdown()


def _row(dom: str, stage: str) -> list[str]:
    match = re.search(rf'<td class="stage">{re.escape(stage)}</td>(.*?)</tr>', dom, re.S)
    assert match, dom[:3000]
    cells = re.findall(r"<td[^>]*>(.*?)</td>", match.group(1), re.S)
    return [html.unescape(re.sub(r"<[^>]+>", "", c)).strip() for c in cells]


def test_the_site_opens_on_the_table_of_the_latest_night(site, tmp_path):
    url, repo = site
    dom = chromium("--dump-dom", url, profile=tmp_path / "p1")
    assert "stagebench: the nightly matrix" in dom
    status, *_, step_ms, previous, _, _, _, link = _row(dom, "00_sdpa")
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout.strip()
    stored = [
        r
        for r in results.load(repo / ".asv" / "results" / "stagebench-results.jsonl")
        if r.stage == "00_sdpa" and r.env.get("commit") == head
    ]
    assert stored, "the latest night's Result is not in the store"
    assert status == stored[-1].status == "ok"
    assert step_ms == f"{stored[-1].metrics.step_time_ms_median:,.1f}"
    assert previous.endswith("%") and link == "Result"
    assert site_module.external_requests(repo / ".asv" / "html") == []


def test_the_graph_behind_a_cell_draws_from_the_sites_own_libraries(site, tmp_path):
    url, repo = site
    graph = chromium("--dump-dom", f"{url}asv.html#{GRAPH}", profile=tmp_path / "p2")
    assert 'class="flot-base"' in graph, "no graph canvas was drawn"
    shot = tmp_path / "graph.png"
    chromium(
        f"--screenshot={shot}",
        "--window-size=1280,800",
        f"{url}asv.html#{GRAPH}",
        profile=tmp_path / "p3",
    )
    assert shot.stat().st_size > 10_000  # a rendered page, not a blank one
    # Both commits are in the history the graph reads.
    files = list((repo / ".asv" / "results" / "site-test").glob("*-interpreter-py*.json"))
    assert len(files) == 2


# A test-only page served beside the site: it frames the front page at a phone's width and
# writes what the layout measured where --dump-dom can read it.
PHONE_PROBE = """<!doctype html><html><body>
<iframe id="f" src="index.html" style="width:390px;height:844px;border:0"></iframe>
<pre id="out">pending</pre>
<script>
document.getElementById("f").onload = function () {
  var d = this.contentDocument, page = d.documentElement, table = d.querySelector("table");
  var folded = d.querySelector("th:nth-child(4)");
  document.getElementById("out").textContent = JSON.stringify({
    page: page.scrollWidth, view: page.clientWidth,
    wrap: table.parentElement.className, folded: getComputedStyle(folded).display
  });
};
</script></body></html>
"""


def test_the_front_page_fits_a_phone_width(site, tmp_path):
    url, repo = site
    (repo / ".asv" / "html" / "phone-probe.html").write_text(PHONE_PROBE)
    dom = chromium("--dump-dom", f"{url}phone-probe.html", profile=tmp_path / "p4")
    found = re.search(r'<pre id="out">(.*?)</pre>', dom, re.S)
    assert found and found.group(1) != "pending", dom[-2000:]
    layout = json.loads(html.unescape(found.group(1)))
    assert layout["page"] <= layout["view"], layout  # the page itself never scrolls sideways
    assert layout["wrap"] == "scroll"  # the table scrolls inside its own box instead
    assert layout["folded"] == "none", layout  # less important columns fold away on a phone
