"""Write `--hash=sha256:...` options into docker/requirements.lock from PyPI.

Every `name==version` pin gets the sha256 of each wheel of that release that installs on the
image's interpreter (CPython 3.12, manylinux x86_64, glibc 2.39), from PyPI's simple JSON API
(PEP 691): pip then installs with --require-hashes and --only-binary=:all:. A direct wheel
reference keeps the sha256 in its URL. Run from the repository root:

    python3 docker/lock-hashes.py
"""

from __future__ import annotations

import json
import re
import sys
import urllib.request
from pathlib import Path

from packaging.tags import compatible_tags, cpython_tags
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import Version

LOCK = Path("docker/requirements.lock")
INDEX = "https://pypi.org/simple"
PYTHON = (3, 12)
# Ubuntu 24.04 has glibc 2.39: every manylinux tag up to 2_39, plus the legacy aliases.
PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(39, 4, -1)]
PLATFORMS += ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64", "linux_x86_64"]
TAGS = {*cpython_tags(PYTHON, platforms=PLATFORMS), *compatible_tags(PYTHON, "cp312", PLATFORMS)}
PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>\S+)$")
DIRECT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]* @ \S+#sha256=(?P<sha>[0-9a-f]{64})$")


def wheel_hashes(name: str, version: str) -> list[str]:
    request = urllib.request.Request(
        f"{INDEX}/{canonicalize_name(name)}/",
        headers={"Accept": "application/vnd.pypi.simple.v1+json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        files = json.load(response)["files"]
    hashes = []
    for file in files:
        if not file["filename"].endswith(".whl") or file.get("yanked"):
            continue
        try:
            _, wheel_version, _, tags = parse_wheel_filename(file["filename"])
        except InvalidWheelFilename:
            continue  # old uploads with names no installer accepts
        if wheel_version == Version(version) and tags & TAGS:
            hashes.append(file["hashes"]["sha256"])
    if not hashes:
        raise SystemExit(f"{name}=={version}: no wheel for cp312 manylinux x86_64 on PyPI")
    return sorted(set(hashes))


def main() -> int:
    out = []
    for raw in LOCK.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line.startswith("--hash=") or line == "\\":
            continue  # regenerated below
        line = line.removesuffix("\\").strip()
        pin, direct = PIN.match(line), DIRECT.match(line)
        if direct:
            hashes = [direct["sha"]]
        elif pin:
            hashes = wheel_hashes(pin["name"], pin["version"])
        else:
            out.append(raw)
            continue
        out.append(f"{line} \\")
        last = len(hashes) - 1
        out += [
            f"    --hash=sha256:{h}" + (" \\" if i < last else "") for i, h in enumerate(hashes)
        ]
        print(f"{line[:60]}: {len(hashes)} wheel(s)", file=sys.stderr)
    LOCK.write_text("\n".join(out) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
