"""Releases between two versions: from a local wheel directory, from a PEP 691 / PEP 503 index
(served here from a thread, so offline), and from PyPI itself where it is reachable."""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import plant
import pytest

from stagebench import releases
from stagebench.releases import ReleaseError, Source


def _versions(rng: releases.Range) -> list[str]:
    return [str(r.version) for r in rng.candidates]


@pytest.fixture
def wheel_dir(tmp_path: Path) -> Path:
    """Plant wheels 1.0.0 .. 1.5.0, plus a pre-release, an sdist-only release and a release
    whose only wheel is for another platform."""
    directory = plant.write_wheels(tmp_path / "wheels")
    plant.write_wheel(directory, "1.4.0rc1")
    (directory / "stagebench_test_plant-1.1.5.tar.gz").write_bytes(b"")
    (directory / "stagebench_test_plant-1.2.5-cp27-cp27m-win32.whl").write_bytes(b"")
    (directory / "other_package-1.2.0-py3-none-any.whl").write_bytes(b"")
    (directory / "README.txt").write_text("not a distribution")
    return directory


def test_a_wheel_directory_lists_the_installable_releases_oldest_first(wheel_dir):
    rng = releases.between(plant.NAME, "1.0.0", "1.5.0", Source(find_links=wheel_dir))
    assert _versions(rng) == ["1.0.0", "1.1.0", "1.2.0", "1.3.0", "1.4.0", "1.5.0"]
    skipped = {str(r.version): r.reason for r in rng.skipped}
    assert skipped["1.1.5"] == "sdist only (--allow-sdist builds it)"
    assert skipped["1.2.5"].startswith("no wheel for this interpreter")
    assert "1.4.0rc1" not in skipped  # a pre-release is no candidate at all without --pre


def test_sdists_and_pre_releases_count_when_asked(wheel_dir):
    source = Source(find_links=wheel_dir)
    rng = releases.between(plant.NAME, "1.0.0", "1.5.0", source, pre=True, allow_sdist=True)
    assert _versions(rng) == [
        "1.0.0",
        "1.1.0",
        "1.1.5",
        "1.2.0",
        "1.3.0",
        "1.4.0rc1",
        "1.4.0",
        "1.5.0",
    ]
    assert rng.candidates[2].how == "sdist"
    # An endpoint that is a pre-release brings the others in.
    assert "1.4.0rc1" in _versions(releases.between(plant.NAME, "1.3.0", "1.4.0rc1", source))


@pytest.mark.parametrize(
    ("good", "bad", "message"),
    [
        ("1.5.0", "1.0.0", "GOOD 1.5.0 is not before BAD 1.0.0"),
        ("1.3.0", "1.3.0", "GOOD 1.3.0 is not before BAD 1.3.0"),
        ("1.0.0", "1.6.0", "stagebench-test-plant 1.6.0 is not in"),
        ("0.9", "1.5.0", "(nearest: 1.0.0)"),
        ("1.3.5", "1.5.0", "(nearest: 1.3.0, 1.4.0)"),
        ("1.1.5", "1.5.0", "GOOD stagebench-test-plant 1.1.5 cannot be installed here: sdist only"),
        ("one", "1.5.0", "GOOD 'one' is not a version (PEP 440) or a date (YYYY-MM-DD)"),
        ("2025-09-01", "1.5.0", "give two versions or two dates"),
    ],
)
def test_a_bad_range_is_one_line(wheel_dir, good, bad, message):
    with pytest.raises(ReleaseError) as caught:
        releases.between(plant.NAME, good, bad, Source(find_links=wheel_dir))
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_directory_without_the_package_says_how_files_are_named(tmp_path):
    with pytest.raises(ReleaseError, match="holds no wheel or sdist of 'liger-kernel'"):
        releases.releases("liger-kernel", Source(find_links=tmp_path))
    with pytest.raises(ReleaseError, match="is not a directory"):
        releases.releases("liger-kernel", Source(find_links=tmp_path / "missing"))


# A simple index in a thread ------------------------------------------------------------------

NIGHTLIES = [
    "2.10.0.dev20250830",
    "2.10.0.dev20250901",
    "2.10.0.dev20250903",
    "2.10.0.dev20250905",
    "2.10.0.dev20250910",
]


def _json_files() -> list[dict]:
    files = [
        {"filename": f"torchy-{v}-py3-none-any.whl", "url": f"x/{v}", "hashes": {}}
        for v in ["1.0", "1.1", "1.2", "1.3", "2.0", *NIGHTLIES]
    ]
    files[1]["yanked"] = "broken build"  # 1.1: yanked
    files[2]["requires-python"] = ">=4"  # 1.2: not for this interpreter
    return files


_HTML = """<!DOCTYPE html><html><body>
<a href="../../f/torchy-1.0-py3-none-any.whl#sha256=00">torchy-1.0-py3-none-any.whl</a>
<a href="../../f/torchy-1.1-py3-none-any.whl" data-yanked="">torchy-1.1-py3-none-any.whl</a>
<a href="../../f/torchy-1.2-py3-none-any.whl" data-requires-python="&gt;=4">torchy-1.2-...</a>
<a href="../../f/torchy-1.3-py3-none-any.whl">torchy-1.3-py3-none-any.whl</a>
<a href="../../f/torchy-2.0-py3-none-any.whl">torchy-2.0-py3-none-any.whl</a>
</body></html>"""


class _Index(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/json/torchy/":
            body = json.dumps(
                {"meta": {"api-version": "1.1"}, "name": "torchy", "files": _json_files()}
            ).encode()
            kind = "application/vnd.pypi.simple.v1+json"
        elif self.path == "/html/torchy/":
            body, kind = _HTML.encode(), "text/html"
        elif self.path.startswith("/broken/"):
            self.send_error(503)
            return
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def serve_index() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Index)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def index() -> Iterator[str]:
    with serve_index() as url:
        yield url


@pytest.mark.parametrize("flavour", ["json", "html"])
def test_an_index_skips_yanked_files_and_other_pythons(index, flavour):
    source = Source(index_url=f"{index}/{flavour}")
    rng = releases.between("Torchy", "1.0", "2.0", source)
    assert _versions(rng) == ["1.0", "1.3", "2.0"]  # 1.1 yanked, 1.2 needs Python >= 4
    assert [str(r.version) for r in rng.skipped] == ["1.2"]
    assert rng.skipped[0].reason == "needs Python >=4"


def test_nightly_dates_pick_the_nightlies_between_them(index):
    source = Source(index_url=f"{index}/json")
    rng = releases.between("torchy", "2025-09-01", "2025-09-05", source)
    assert _versions(rng) == NIGHTLIES[1:4]
    assert rng.good.date.isoformat() == "2025-09-01"
    with pytest.raises(ReleaseError, match="1 installable nightly of torchy"):
        releases.between("torchy", "2025-09-06", "2025-09-30", source)
    with pytest.raises(ReleaseError, match="GOOD 2025-09-05 is not before BAD 2025-09-01"):
        releases.between("torchy", "2025-09-05", "2025-09-01", source)
    with pytest.raises(ReleaseError, match="'2025-02-30' is not a valid date"):
        releases.between("torchy", "2025-02-30", "2025-09-01", source)


def test_newest_is_the_newest_installable_release(index):
    source = Source(index_url=f"{index}/json")
    assert str(releases.newest("torchy", source).version) == "2.0"  # nightlies are pre-releases
    assert str(releases.newest("torchy", source, pre=True).version) == NIGHTLIES[-1]


def test_an_unknown_package_and_an_unreachable_index_are_one_line(index):
    with pytest.raises(ReleaseError, match=r"the index .* has no package 'nothing-here'"):
        releases.releases("nothing-here", Source(index_url=f"{index}/json"))
    with pytest.raises(releases.IndexUnreachable, match="answered HTTP 503"):
        releases.releases("torchy", Source(index_url=f"{index}/broken"))
    with pytest.raises(releases.IndexUnreachable, match="cannot be reached") as caught:
        releases.releases("torchy", Source(index_url="http://127.0.0.1:9/simple"))
    assert "\n" not in str(caught.value)


# PyPI itself ----------------------------------------------------------------------------------


def pypi_reachable() -> bool:
    try:
        with urllib.request.urlopen("https://pypi.org/simple/pip/", timeout=10) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False


@pytest.mark.network
def test_real_releases_of_cut_cross_entropy_in_order():
    if not pypi_reachable():
        pytest.skip("PyPI (https://pypi.org) is not reachable")
    rng = releases.between("cut-cross-entropy", "24.11.3", "25.1.1")
    versions = _versions(rng)
    known = ["24.11.3", "24.11.4", "24.12.1", "24.12.2", "24.12.3", "25.1.1"]
    assert [v for v in versions if v in known] == known
    assert versions[0] == "24.11.3" and versions[-1] == "25.1.1"
    assert all(r.how == "wheel" for r in rng.candidates)
