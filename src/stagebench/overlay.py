"""An environment layered over the running one, holding other releases of a few packages.

A virtualenv (`python -m venv --without-pip`) whose site-packages holds a .pth that adds the
base interpreter's site-packages with `site.addsitedir`, so every base package (torch, the base's
editable install of stagebench, ...) stays importable, *after* the overlay's own. The base's pip
installs into it (`pip --python OVERLAY/bin/python install NAME==VERSION`): pip sees the base's
packages as installed and never uninstalls them (they are outside the overlay), so only the
requested packages and what they strictly need land in the overlay. A constraints file pins
torch's stack (torch, triton, nvidia-*) to the base's versions unless a requirement names one of
them, so the resolver never drags a new torch in: that case is Incompatible, with pip's reason.

Overlays are cached under `~/.cache/stagebench/overlays/<hash>` ($XDG_CACHE_HOME respected, or a
directory given), keyed by the base (interpreter and every package it has), the pinned
requirements and where they come from; a build holds a lock, so two processes never build the
same overlay at once. Each overlay records, in `stagebench-overlay.json` in its prefix, what it
changed against the base; env.py reads that record in a stage's child, so a Result measured in an
overlay says which versions it ran.

Before anything runs in it, the overlay's interpreter imports each requirement's top-level
modules and stagebench, and must see the pinned versions: an import that fails is Incompatible
with the error's last line.

Standard library and packaging only: nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from stagebench import releases
from stagebench.env import OVERLAY_RECORD as RECORD
from stagebench.releases import PYPI_SOURCE, Source

PTH_NAME = "zz-stagebench-overlay-base.pth"  # after the overlay's own .pth files
LAYOUT = 1  # bump when an overlay's layout changes: older ones are then rebuilt
STACK = ("torch", "triton", "pytorch-triton")  # with nvidia-*: pinned to the base's versions
PIP_TIMEOUT_S = 3600.0  # a torch wheel is gigabytes on a slow link
IMPORT_TIMEOUT_S = 600.0
REASON_CHARS = 400

# Run in the base interpreter: what it sees, first on sys.path winning (what an import gets).
_BASE_QUERY = r"""
import importlib.metadata as m, json, os, re, site, sys
dirs = list(site.getsitepackages())
if site.ENABLE_USER_SITE and os.path.isdir(site.getusersitepackages()):
    dirs.append(site.getusersitepackages())
record = os.path.join(sys.prefix, %r)
if os.path.isfile(record):  # an overlay as the base: the layers below it too
    dirs += json.load(open(record))["base_site_dirs"]
packages = {}
for d in m.distributions():
    name = re.sub(r"[-_.]+", "-", d.metadata["Name"] or "").lower()
    if name:
        packages.setdefault(name, d.version)
print(json.dumps({"python": sys.executable, "prefix": sys.prefix, "version": sys.version,
                  "site_dirs": list(dict.fromkeys(dirs)), "packages": packages}))
"""

# Run in the overlay: import each distribution's top-level modules, then stagebench.
_IMPORT_CHECK = r"""
import importlib, importlib.metadata as m, json, sys, traceback
def top_levels(name):
    dist = m.distribution(name)
    text = dist.read_text("top_level.txt")
    names = [n.strip() for n in (text or "").splitlines() if n.strip()]
    if not names:
        for f in dist.files or []:
            head = f.parts[0]
            if head.endswith((".dist-info", ".data")) or head in ("..", "__pycache__"):
                continue
            if len(f.parts) > 1 or head.endswith(".py"):
                names.append(head.removesuffix(".py"))
    names = [n for n in dict.fromkeys(names) if n.isidentifier() and not n.startswith("_")]
    own = name.replace("-", "_")
    return [own] if own in names else names
pins = json.loads(sys.argv[1])
seen = {name: [m.version(name), str(m.distribution(name).locate_file(""))] for name in pins}
print(json.dumps({"seen": seen}), flush=True)
for module in [mod for name in pins for mod in top_levels(name)] + ["stagebench"]:
    try:
        importlib.import_module(module)
    except BaseException as exc:
        traceback.print_exc()
        line = traceback.format_exception_only(type(exc), exc)[-1].strip()
        print(json.dumps({"module": module, "error": line}))
        sys.exit(1)
print(json.dumps({"ok": True}))
"""


class OverlayError(RuntimeError):
    """stagebench could not build an overlay at all (no venv, no pip): not the package's fault."""


class Incompatible(Exception):
    """The requirements cannot live over this base: pip refused (e.g. they need another torch),
    or an import fails in the overlay. `reason` is one line; `log` holds pip's or Python's
    output."""

    def __init__(self, reason: str, log: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.log = log


@dataclass(frozen=True)
class Change:
    """One distribution the overlay holds in another version than the base (None: absent)."""

    name: str
    old: str | None
    new: str | None

    def __str__(self) -> str:
        return f"{self.name} {self.old or 'none'} -> {self.new or 'none'}"


@dataclass(frozen=True)
class Base:
    python: str
    prefix: str
    version: str
    site_dirs: list[str]
    packages: dict[str, str]  # canonical name -> the version an import sees


@dataclass
class Overlay:
    path: Path
    python: str  # the overlay's interpreter: run anything in it with this
    requirements: list[str]  # pinned: name==version
    changed: list[Change]  # what differs from the base
    reused: bool = False  # found in the cache
    build_s: float = 0.0
    record: dict = field(default_factory=dict)

    def changes(self) -> list[str]:
        return [str(c) for c in self.changed]


@functools.cache
def base_info(python: str = sys.executable) -> Base:
    """The base interpreter's site directories and the version of every package it sees."""
    try:
        out = subprocess.run(
            [python, "-c", _BASE_QUERY % RECORD],
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise OverlayError(f"cannot query the base interpreter {python}: {exc}") from None
    return Base(**json.loads(out))


def cache_root(overlay_dir: Path | None = None) -> Path:
    if overlay_dir is not None:
        return overlay_dir
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "stagebench" / "overlays"


def parse_requirement(text: str) -> Requirement:
    """`name==version` or a bare `name` (newest); anything else is a ValueError, one line."""
    try:
        req = Requirement(text)
    except InvalidRequirement as exc:
        raise ValueError(f"requirement {text!r} is not valid ({exc})") from None
    specs = list(req.specifier)
    pinned = len(specs) == 1 and specs[0].operator in ("==", "===") and "*" not in specs[0].version
    if req.url or req.marker or not (pinned or not specs):
        raise ValueError(f"requirement {text!r}: give name==version, or a bare name for the newest")
    return req


def pin(
    requirements: Sequence[str],
    source: Source = PYPI_SOURCE,
    *,
    pre: bool = False,
    allow_sdist: bool = False,
) -> list[str]:
    """Bare names become `name==<newest installable release>`, so an overlay means one thing."""
    pinned = []
    for text in requirements:
        req = parse_requirement(text)
        if not req.specifier:
            newest = releases.newest(req.name, source, pre=pre, allow_sdist=allow_sdist)
            extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
            text = f"{req.name}{extras}=={newest.version}"
        pinned.append(text)
    return pinned


def _pins(requirements: Sequence[str]) -> dict[str, str]:
    return {
        canonicalize_name(r.name): str(next(iter(r.specifier)).version)
        for r in map(parse_requirement, requirements)
    }


def constraints(base: Base, requirements: Sequence[str]) -> list[str]:
    """torch's stack at the base's versions, unless a requirement is part of that stack itself
    (then the stack moves together, as torch's own pins say)."""

    def in_stack(name: str) -> bool:
        return name in STACK or name.startswith("nvidia-")

    if any(in_stack(name) for name in _pins(requirements)):
        return []
    return [f"{name}=={v}" for name, v in sorted(base.packages.items()) if in_stack(name)]


def _files_digest(source: Source) -> list[list]:
    if source.find_links is None:
        return []
    return [
        [p.name, s.st_size, s.st_mtime_ns]
        for p in sorted(source.find_links.iterdir())
        if p.is_file() and (s := p.stat())
    ]


def cache_key(base: Base, requirements: Sequence[str], source: Source, allow_sdist: bool) -> str:
    material = {
        "layout": LAYOUT,
        "base": [base.python, base.prefix, base.version],
        "base_packages": sorted(base.packages.items()),
        "requirements": sorted(requirements),
        "source": source.describe(),
        "files": _files_digest(source),
        "allow_sdist": allow_sdist,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:20]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run(
    cmd: list[str], timeout: float, what: str, too_slow: type[Exception] = OverlayError
) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise too_slow(f"{what} took more than {timeout:g} s") from None
    except OSError as exc:
        raise OverlayError(f"{what}: {exc}") from None


# pip's own failure to write (a full disk, a read-only or over-quota filesystem): the machine's
# problem, never the release's, so never `incompatible`.
_PIP_WRITE_ERROR = re.compile(r"due to an OSError: \[Errno (28|30|122)\][^\n]*")


def pip_reason(output: str) -> str:
    """pip's failure in one line: the conflict's causes, else its last error line."""
    lines = [line.rstrip() for line in output.splitlines()]
    if "The conflict is caused by:" in lines:
        start = lines.index("The conflict is caused by:") + 1
        causes = []
        for line in lines[start:]:
            if not line.startswith("    "):
                break
            causes.append(line.strip())
        reason = "pip: conflict: " + "; ".join(causes)
    else:
        errors = [line for line in lines if line.startswith("ERROR:")]
        last = errors[-1].removeprefix("ERROR:").strip() if errors else (lines or ["failed"])[-1]
        reason = "pip: " + last
    return reason[:REASON_CHARS]


def _own_site_dirs(python: str) -> list[str]:
    out = _run(
        [python, "-c", "import json, site; print(json.dumps(site.getsitepackages()))"],
        120,
        "query the overlay's site-packages",
    )
    if out.returncode:
        raise OverlayError(f"the new overlay's interpreter does not start: {out.stderr.strip()}")
    # Debian's site module also names dist-packages folders a venv never has: only real ones.
    named = json.loads(out.stdout)
    own = [d for d in named if Path(d).is_dir()]
    if not own:
        raise OverlayError(
            f"the new overlay's interpreter {python} names site folders {', '.join(named)}; "
            "none exists"
        )
    return own


def _create(path: Path, base: Base, base_python: str) -> list[str]:
    """An empty venv over the base; returns its own site directories."""
    made = _run([base_python, "-m", "venv", "--without-pip", str(path)], 300, "python -m venv")
    if made.returncode:
        last = (made.stderr.strip().splitlines() or [f"exit code {made.returncode}"])[-1]
        raise OverlayError(f"python -m venv {path} failed: {last}")
    own = _own_site_dirs(str(path / "bin" / "python"))
    layers = [d for d in base.site_dirs if d not in own]
    # In the last of its own directories: by then every own one is on sys.path, so the base's
    # come after all of them. addsitedir (not a path line) runs the base's .pth files too.
    line = "import site; " + "; ".join(f"site.addsitedir({d!r})" for d in layers)
    (Path(own[-1]) / PTH_NAME).write_text(line + "\n")
    return own


def _installed(site_dirs: Sequence[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for dist in metadata.distributions(path=list(site_dirs)):
        name = canonicalize_name(dist.metadata["Name"] or "")
        if name:
            found.setdefault(name, dist.version)
    return found


def _install(
    path: Path,
    base: Base,
    base_python: str,
    requirements: list[str],
    source: Source,
    allow_sdist: bool,
) -> None:
    ok = _run([base_python, "-m", "pip", "--version"], 120, "pip --version")
    if ok.returncode:
        raise OverlayError(f"the base interpreter {base_python} has no pip; it installs overlays")
    with tempfile.NamedTemporaryFile("w", suffix=".txt", prefix="constraints-") as cfile:
        cfile.write("\n".join(constraints(base, requirements)) + "\n")
        cfile.flush()
        binary = [] if allow_sdist else ["--only-binary", ",".join(_pins(requirements))]
        cmd = [
            base_python,
            "-m",
            "pip",
            "--python",
            str(path / "bin" / "python"),
            "install",
            "--disable-pip-version-check",
            "--no-input",
            "--progress-bar",
            "off",
            "--no-warn-script-location",
            "--constraint",
            cfile.name,
            *source.pip_args(),
            *binary,
            *requirements,
        ]
        done = _run(cmd, PIP_TIMEOUT_S, "pip install")
    if done.returncode:
        output = done.stdout + done.stderr
        if written := _PIP_WRITE_ERROR.search(output):
            raise OverlayError(f"pip could not write the overlay {path}: {written.group(0)}")
        raise Incompatible(pip_reason(output), output)


def check_imports(overlay: Overlay) -> dict[str, str]:
    """Import each requirement's top-level modules and stagebench in the overlay's interpreter;
    returns the versions it sees. Incompatible with the error's last line when an import fails.
    """
    pins = _pins(overlay.requirements)
    check = [overlay.python, "-c", _IMPORT_CHECK, json.dumps(pins)]
    done = _run(check, IMPORT_TIMEOUT_S, "the import check", too_slow=Incompatible)
    answer: dict = {}
    for line in done.stdout.splitlines():
        with contextlib.suppress(ValueError, TypeError):
            answer.update(json.loads(line))
    seen = answer.get("seen", {})
    for name, (version, where) in seen.items():
        if Version(version) != Version(pins[name]):  # the base's copy won: broken layering
            raise OverlayError(
                f"the overlay {overlay.path} sees {name} {version} (in {where}), "
                f"not the pinned {pins[name]}"
            )
    if done.returncode == 0 and answer.get("ok"):
        return {name: version for name, (version, _) in seen.items()}
    if "error" in answer:
        raise Incompatible(f"import {answer['module']}: {answer['error']}", done.stderr)
    tail = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
    raise Incompatible(f"the import check failed: {tail}", done.stderr)


def _load(path: Path) -> Overlay | None:
    """The cached overlay at `path`, or None where there is none to reuse: no record (a build
    that died half-way), a record of another layout or one that is not what build() writes
    (truncated, hand-edited), or an interpreter that is gone. Such a directory is rebuilt."""
    try:
        record = json.loads((path / RECORD).read_text())
        if not isinstance(record, dict) or record.get("layout") != LAYOUT:
            return None
        changed = [Change(*c) for c in record["changed"]]
        requirements = record["requirements"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    fields_ok = all(
        isinstance(c.name, str) and all(isinstance(v, str | None) for v in (c.old, c.new))
        for c in changed
    )
    if not fields_ok or not (
        isinstance(requirements, list) and all(isinstance(r, str) for r in requirements)
    ):
        return None
    python = path / "bin" / "python"
    if not python.exists():  # a venv whose interpreter (or its target) is gone
        return None
    return Overlay(path, str(python), requirements, changed, reused=True, record=record)


def build(
    requirements: Sequence[str],
    *,
    source: Source = PYPI_SOURCE,
    base_python: str = sys.executable,
    overlay_dir: Path | None = None,
    pre: bool = False,
    allow_sdist: bool = False,
    check: bool = True,
) -> Overlay:
    """One overlay holding every requirement (`name==version`, or a bare `name` for the newest
    release), over `base_python`'s packages; cached and reused.

    Returns its interpreter (`.python`) and what it changed against the base (`.changed`).
    Raises Incompatible (pip refused, e.g. a new torch would be needed; or an import fails),
    OverlayError (no venv or pip here, a cache or disk that cannot be written), ValueError (a
    requirement that is neither form) and
    releases.ReleaseError (a bare name the source cannot resolve).
    """
    if not requirements:
        raise ValueError("an overlay needs at least one requirement")
    pinned = pin(requirements, source, pre=pre, allow_sdist=allow_sdist)
    base = base_info(base_python)
    root = cache_root(overlay_dir)
    key = cache_key(base, pinned, source, allow_sdist)
    t0 = time.perf_counter()
    try:
        overlay = _build_locked(root, key, base, base_python, pinned, source, allow_sdist)
    except OSError as exc:  # the cache cannot be written (read-only, full): not the release's
        raise OverlayError(_write_error(root, exc)) from None
    if check:
        check_imports(overlay)
    overlay.build_s = time.perf_counter() - t0
    return overlay


def _write_error(root: Path, exc: OSError) -> str:
    """Name the file that could not be written, and the cache only where it is the cache's."""
    why = exc.strerror or str(exc)
    names = [str(n) for n in (exc.filename, exc.filename2) if n]
    if not names:
        return f"building an overlay in {root}: {why}"
    inside = all(Path(n).resolve().is_relative_to(Path(root).resolve()) for n in names)
    where = " -> ".join(names)
    return f"the overlay cache {root} ({where}): {why}" if inside else f"{where}: {why}"


def _build_locked(
    root: Path,
    key: str,
    base: Base,
    base_python: str,
    pinned: list[str],
    source: Source,
    allow_sdist: bool,
) -> Overlay:
    """The overlay `key` under `root`, reused or built while holding its lock."""
    path = root / key
    with _locked(root / f"{key}.lock"):
        overlay = _load(path)
        if overlay is None:
            shutil.rmtree(path, ignore_errors=True)  # a build that died half-way
            own = _create(path, base, base_python)
            try:
                _install(path, base, base_python, pinned, source, allow_sdist)
            except BaseException:
                shutil.rmtree(path, ignore_errors=True)  # never reused: pip may have been cut
                raise
            installed = _installed(own)
            changed = [
                Change(name, base.packages.get(name), version)
                for name, version in sorted(installed.items())
                if base.packages.get(name) != version
            ]
            record = {
                "layout": LAYOUT,
                "requirements": pinned,
                "source": source.describe(),
                "base_python": base.python,
                "base_site_dirs": [d for d in base.site_dirs if d not in own],
                "site_dirs": own,
                "installed": installed,
                "changed": [[c.name, c.old, c.new] for c in changed],
                "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            }
            # Written last: an overlay without its record is never reused.
            tmp = path / f"{RECORD}.tmp"
            tmp.write_text(json.dumps(record, indent=1, sort_keys=True))
            os.replace(tmp, path / RECORD)
            overlay = Overlay(path, str(path / "bin" / "python"), pinned, changed, record=record)
    return overlay
