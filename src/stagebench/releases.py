"""A package's releases between two versions (or two nightly dates), oldest first.

From a package index (PEP 691's JSON simple API, or PEP 503's HTML where an index only speaks
that, as PyTorch's nightly index does) or from a local directory of wheels and sdists
(`--find-links DIR`, for hosts without network). A release counts as a candidate only when this
interpreter can install it: a wheel whose tags it supports (packaging.tags.sys_tags), or an sdist
when building one is allowed; yanked files and files whose Requires-Python excludes this
interpreter are left out. Everything else is listed with the reason it cannot be installed.

Errors are one line (ReleaseError): GOOD not before BAD, a version or package the source does
not have (with the nearest versions), an index that cannot be reached (IndexUnreachable).
Standard library and packaging only: nothing here imports torch.
"""

from __future__ import annotations

import bisect
import dataclasses
import datetime as dt
import html.parser
import json
import platform
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.tags import sys_tags
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version

PYPI = "https://pypi.org/simple"
# JSON first (PEP 691), HTML (PEP 503) where an index has nothing else.
ACCEPT = (
    "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, "
    "text/html;q=0.01"
)
TIMEOUT_S = 30.0
DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
NAME = re.compile(r"^([A-Z0-9]|[A-Z0-9][A-Z0-9._-]*[A-Z0-9])$", re.IGNORECASE)  # PEP 508


class ReleaseError(ValueError):
    """Bad input about releases, one line: the CLI prints it and exits 2."""


class IndexUnreachable(ReleaseError):
    """The index did not answer. Bad input as well: the URL or this host's network is what is
    wrong, and nothing was measured yet (the CLI exits 2; --find-links works offline)."""


@dataclass(frozen=True)
class Source:
    """Where releases come from: an index URL, or a local directory (offline)."""

    index_url: str = PYPI
    find_links: Path | None = None

    def describe(self) -> str:
        return str(self.find_links) if self.find_links else self.index_url

    def pip_args(self) -> list[str]:
        if self.find_links:
            return ["--no-index", "--find-links", str(self.find_links)]
        return ["--index-url", self.index_url]


PYPI_SOURCE = Source()


@dataclass(frozen=True)
class DistFile:
    filename: str
    version: Version
    kind: str  # "wheel" or "sdist"
    yanked: bool = False
    requires_python: str | None = None


@dataclass(frozen=True)
class Release:
    version: Version
    files: tuple[DistFile, ...]
    installable: bool
    how: str  # "wheel", "sdist" (built here), or "" when not installable
    reason: str | None = None  # why it cannot be installed here
    yanked: bool = False  # every file of it is yanked

    @property
    def date(self) -> dt.date | None:
        """The build date of a nightly (`2.10.0.dev20250901`), else None."""
        return nightly_date(self.version)

    def __str__(self) -> str:
        return str(self.version)


@dataclass(frozen=True)
class Range:
    """The releases a bisect walks: `candidates[0]` is GOOD, `candidates[-1]` is BAD."""

    package: str
    candidates: list[Release]  # installable ones, oldest first
    skipped: list[Release] = field(default_factory=list)  # in range, not installable here
    source: Source = PYPI_SOURCE

    @property
    def good(self) -> Release:
        return self.candidates[0]

    @property
    def bad(self) -> Release:
        return self.candidates[-1]


def nightly_date(version: Version) -> dt.date | None:
    if version.dev is None:
        return None
    try:
        return dt.datetime.strptime(str(version.dev), "%Y%m%d").date()
    except ValueError:
        return None


def _python_ok(requires: str | None) -> bool:
    if not requires:
        return True
    try:
        return SpecifierSet(requires).contains(platform.python_version(), prereleases=True)
    except InvalidSpecifier:  # an index's typo must not hide a release
        return True


def parse_filename(name: str, filename: str) -> DistFile | None:
    """A wheel or sdist of `name`, by its file name; None for anything else."""
    want = canonicalize_name(name)
    try:
        if filename.endswith(".whl"):
            dist, version, _, _ = parse_wheel_filename(filename)
            kind = "wheel"
        else:
            dist, version = parse_sdist_filename(filename)
            kind = "sdist"
    except (InvalidWheelFilename, InvalidSdistFilename, InvalidVersion):
        return None
    return DistFile(filename, version, kind) if dist == want else None


def _release(version: Version, files: list[DistFile], allow_sdist: bool) -> Release:
    usable = [f for f in files if not f.yanked and _python_ok(f.requires_python)]
    yanked = all(f.yanked for f in files)
    if yanked:  # pip installs a yanked release only when pinned: an endpoint may be one
        usable = [f for f in files if _python_ok(f.requires_python)]
    supported = set(sys_tags())
    wheels = [f for f in usable if f.kind == "wheel"]
    if any(parse_wheel_filename(f.filename)[3] & supported for f in wheels):
        return Release(version, tuple(files), True, "wheel", yanked=yanked)
    sdists = [f for f in usable if f.kind == "sdist"]
    if sdists and allow_sdist:
        return Release(version, tuple(files), True, "sdist", yanked=yanked)
    if sdists and not wheels:
        reason = "sdist only (--allow-sdist builds it)"
    elif wheels:
        reason = f"no wheel for this interpreter ({next(iter(sys_tags()))})"
        reason += "; --allow-sdist builds its sdist" if sdists else ""
    elif files and not usable:
        reason = f"needs Python {files[0].requires_python}"
    else:
        reason = "no installable file"
    return Release(version, tuple(files), False, "", reason, yanked=yanked)


def _group(files: Iterable[DistFile], allow_sdist: bool) -> list[Release]:
    by_version: dict[Version, list[DistFile]] = {}
    for f in files:
        by_version.setdefault(f.version, []).append(f)
    return [_release(v, fs, allow_sdist) for v, fs in sorted(by_version.items())]


class _Anchors(html.parser.HTMLParser):
    """PEP 503: one <a> per file, its text the file name, data-* attributes for the rest."""

    def __init__(self) -> None:
        super().__init__()
        self.files: list[dict[str, str | None]] = []
        self._current: dict[str, str | None] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._current = {**dict(attrs), "text": ""}

    def handle_data(self, data: str) -> None:
        if self._current is not None:
            self._current["text"] = (self._current["text"] or "") + data

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._current is not None:
            self.files.append(self._current)
            self._current = None


def _fetch(package: str, index_url: str) -> tuple[str, bytes]:
    url = f"{index_url.rstrip('/')}/{canonicalize_name(package)}/"
    if urllib.parse.urlparse(url).scheme not in ("http", "https"):
        raise ReleaseError(
            f"--index-url {index_url!r} is not an http(s) URL; for a directory "
            "of wheels give --find-links DIR"
        )
    request = urllib.request.Request(url, headers={"Accept": ACCEPT})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            return response.headers.get_content_type(), response.read()
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise ReleaseError(f"the index {index_url} has no package {package!r}") from None
        raise IndexUnreachable(
            f"the index {index_url} answered HTTP {exc.code} for {package!r}; check --index-url"
        ) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        why = getattr(exc, "reason", None) or exc
        raise IndexUnreachable(
            f"the index {index_url} cannot be reached ({why}); check --index-url or the network, "
            "or give --find-links DIR offline"
        ) from None


def files_from_index(package: str, index_url: str = PYPI) -> list[DistFile]:
    content_type, body = _fetch(package, index_url)
    files: list[DistFile] = []
    if content_type.endswith("json"):
        try:
            entries = json.loads(body)["files"]
            if not isinstance(entries, list):
                raise TypeError(f"'files' is {type(entries).__name__}, not a list")
            for i, entry in enumerate(entries):
                if not isinstance(entry, dict) or not isinstance(entry.get("filename"), str):
                    raise TypeError(f"files[{i}] is not an object with a filename")
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            raise IndexUnreachable(
                f"the index {index_url} answered no PEP 691 JSON ({exc})"
            ) from None
        for entry in entries:
            parsed = parse_filename(package, entry["filename"])
            if parsed:
                yanked = bool(entry.get("yanked"))  # false, true or the reason
                rp = entry.get("requires-python")
                rp = rp if isinstance(rp, str) else None  # anything else says nothing usable
                files.append(DistFile(parsed.filename, parsed.version, parsed.kind, yanked, rp))
        return files
    anchors = _Anchors()
    anchors.feed(body.decode("utf-8", errors="replace"))
    for a in anchors.files:
        href = urllib.parse.urlparse(a.get("href") or "").path
        filename = urllib.parse.unquote(href.rsplit("/", 1)[-1]) or (a["text"] or "").strip()
        parsed = parse_filename(package, filename)
        if parsed:
            yanked = a.get("data-yanked") is not None
            rp = a.get("data-requires-python")  # html.parser has unescaped &gt; already
            files.append(DistFile(parsed.filename, parsed.version, parsed.kind, yanked, rp))
    return files


def files_from_dir(package: str, directory: Path) -> list[DistFile]:
    if not directory.is_dir():
        raise ReleaseError(f"--find-links {directory} is not a directory")
    return [f for p in sorted(directory.iterdir()) if (f := parse_filename(package, p.name))]


def releases(
    package: str, source: Source = PYPI_SOURCE, *, allow_sdist: bool = False
) -> list[Release]:
    """Every release the source has of `package`, oldest first, each marked installable or
    not (with why)."""
    if not NAME.match(package):
        raise ReleaseError(
            f"{package!r} is not a package name (letters, digits and . _ -, as on PyPI)"
        )
    if source.find_links:
        files = files_from_dir(package, source.find_links)
        if not files:
            raise ReleaseError(
                f"{source.find_links} holds no wheel or sdist of {package!r} (files are named "
                f"{canonicalize_name(package).replace('-', '_')}-VERSION-...whl or .tar.gz)"
            )
    else:
        files = files_from_index(package, source.index_url)
        if not files:
            raise ReleaseError(f"the index {source.index_url} lists no files of {package!r}")
    return _group(files, allow_sdist)


def _nearest(known: list[Release], version: Version) -> str:
    versions = [r.version for r in known]
    if not version.is_prerelease:  # a release's neighbours are releases, where there are any
        versions = [v for v in versions if not v.is_prerelease] or versions
    i = bisect.bisect_left(versions, version)
    near = [str(v) for v in versions[max(0, i - 1) : i + 1]]
    return f"nearest: {', '.join(near)}" if near else "it has none"


def _find(known: list[Release], text: str, role: str, package: str, source: Source) -> Release:
    try:
        version = Version(text)
    except InvalidVersion:
        raise ReleaseError(
            f"{role} {text!r} is not a version (PEP 440) or a date (YYYY-MM-DD)"
        ) from None
    for r in known:
        if r.version == version:
            if not r.installable:
                raise ReleaseError(
                    f"{role} {package} {r.version} cannot be installed here: {r.reason}"
                )
            return r
    raise ReleaseError(
        f"{package} {text} is not in {source.describe()} ({_nearest(known, version)})"
    )


def _date(text: str, role: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise ReleaseError(f"{role} {text!r} is not a valid date (YYYY-MM-DD)") from None


def between(
    package: str,
    good: str,
    bad: str,
    source: Source = PYPI_SOURCE,
    *,
    pre: bool = False,
    allow_sdist: bool = False,
) -> Range:
    """The releases from GOOD to BAD inclusive, oldest first.

    GOOD and BAD are versions, or both dates (YYYY-MM-DD) for a nightly channel: then the
    candidates are the releases whose `.devYYYYMMDD` falls between them, oldest first, and the
    first and last of those stand for GOOD and BAD. Pre-releases count only with `pre` or when
    an endpoint is one.
    """
    dated = [bool(DATE.match(x)) for x in (good, bad)]
    if any(dated) and not all(dated):
        raise ReleaseError(f"GOOD {good!r} and BAD {bad!r}: give two versions or two dates")
    known = releases(package, source, allow_sdist=allow_sdist)
    if all(dated):
        start, end = _date(good, "GOOD"), _date(bad, "BAD")
        if start >= end:
            raise ReleaseError(f"GOOD {good} is not before BAD {bad}: give the older one first")
        inside = sorted(
            (r for r in known if r.date and start <= r.date <= end and not r.yanked),
            key=lambda r: (r.date, r.version),
        )
        usable = [r for r in inside if r.installable]
        if len(usable) < 2:
            nightlies = [r.date for r in known if r.date]
            near = (
                f"its nightlies run {min(nightlies)} .. {max(nightlies)}"
                if nightlies
                else ("it has no .devYYYYMMDD release")
            )
            raise ReleaseError(
                f"{len(usable)} installable nightly of {package} between {good} and {bad} in "
                f"{source.describe()} ({near}); a bisect needs two"
            )
        return Range(package, usable, [r for r in inside if not r.installable], source)
    first = _find(known, good, "GOOD", package, source)
    last = _find(known, bad, "BAD", package, source)
    if first.version >= last.version:
        raise ReleaseError(
            f"GOOD {good} is not before BAD {bad}: give the older (good) version first"
        )
    pre = pre or first.version.is_prerelease or last.version.is_prerelease
    inside = [
        r
        for r in known
        if first.version < r.version < last.version
        and not r.yanked
        and (pre or not r.version.is_prerelease)
    ]
    # GOOD and BAD of one build (+cu128 both, or no local label): the releases between them of
    # another build (+cpu, +rocm) are another package in all but name, never measured between.
    local = first.version.local
    if local == last.version.local:
        variant = f"+{local}" if local else "no local label"
        inside = [
            r
            if r.version.local == local
            else dataclasses.replace(
                r,
                installable=False,
                how="",
                reason=f"another build than GOOD and BAD ({variant})",
            )
            for r in inside
        ]
    usable = [first, *(r for r in inside if r.installable), last]
    return Range(package, usable, [r for r in inside if not r.installable], source)


def newest(
    package: str, source: Source = PYPI_SOURCE, *, pre: bool = False, allow_sdist: bool = False
) -> Release:
    """The newest release this interpreter can install (what a bare requirement means)."""
    known = releases(package, source, allow_sdist=allow_sdist)
    usable = [r for r in known if r.installable and not r.yanked]
    if not pre:
        usable = [r for r in usable if not r.version.is_prerelease] or usable
    if not usable:
        raise ReleaseError(
            f"no release of {package} in {source.describe()} can be installed here"
            f" ({known[-1].version}: {known[-1].reason})"
        )
    return usable[-1]
