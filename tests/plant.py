"""Wheels of `stagebench-test-plant`, a FAKE package made up for stagebench's own tests.

It exists nowhere but in the wheels this module writes. Installed in an overlay, it registers a
`torch.backends` entry point, which torch calls at `import torch`. From SLOW_FROM on, the hook
changes the training step: it wraps torch.optim.AdamW.step to sleep SLEEP_S first (many times
the tiny CPU stage's step time, and its noise, even on a loaded machine), or, when the child's
environment has STAGEBENCH_TEST_PLANT=raise, to raise (the stage's status becomes `error`).
Version BROKEN cannot even be imported (its module raises ImportError): an overlay's import check
must call it incompatible. The wheels are written by hand (METADATA, WHEEL, entry_points.txt,
RECORD with each file's sha256): no build backend, no network.
"""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path

from packaging.version import Version

NAME = "stagebench-test-plant"
MODULE = "stagebench_test_plant"
VERSIONS = ("1.0.0", "1.1.0", "1.2.0", "1.3.0", "1.4.0", "1.5.0")
SLOW_FROM = "1.3.0"
BROKEN = "1.2.0"
SLEEP_S = 0.2
MODE_ENV = "STAGEBENCH_TEST_PLANT"

_MODULE = '''"""FAKE package for stagebench's tests ({version}): not a real library."""

import os
import time

VERSION = "{version}"
PLANTED = {planted}


def install():
    """torch.backends entry point: torch calls it while it is being imported."""
    if not PLANTED:
        return
    import torch.optim

    mode = os.environ.get("{mode_env}", "slow")
    original = torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        if mode == "raise":
            raise RuntimeError("planted failure in {name} {version}")
        time.sleep({sleep})
        return original(self, *args, **kwargs)

    torch.optim.AdamW.step = step
'''

_BROKEN = '''"""FAKE package for stagebench's tests ({version}): planted broken."""

raise ImportError("{name} {version} is planted broken: it needs a torch that is not there")
'''


def _digest(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def write_wheel(
    directory: Path, version: str, *, name: str = NAME, requires: tuple[str, ...] = ()
) -> Path:
    """One wheel; `name` and `requires` (Requires-Dist lines) make other fakes for one test."""
    module = name.replace("-", "_")
    template = _BROKEN if version == BROKEN and name == NAME else _MODULE
    source = template.format(
        version=version,
        planted=name == NAME and Version(version) >= Version(SLOW_FROM),
        mode_env=MODE_ENV,
        name=name,
        sleep=SLEEP_S,
    )
    info = f"{module}-{version}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    metadata += "Summary: FAKE package for stagebench's tests\n"
    metadata += "".join(f"Requires-Dist: {r}\n" for r in requires)
    files = {
        f"{module}/__init__.py": source,
        f"{info}/METADATA": metadata,
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: stagebench-tests\n"
        "Root-Is-Purelib: true\nTag: py3-none-any\n",
        f"{info}/entry_points.txt": f"[torch.backends]\n{module} = {module}:install\n",
        f"{info}/top_level.txt": f"{module}\n",
    }
    record = [
        f"{path},{_digest(text.encode())},{len(text.encode())}" for path, text in files.items()
    ]
    files[f"{info}/RECORD"] = "\n".join([*record, f"{info}/RECORD,,"]) + "\n"
    path = directory / f"{module}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as wheel:
        for name, text in files.items():
            wheel.writestr(name, text)
    return path


def write_wheels(directory: Path, versions: tuple[str, ...] = VERSIONS) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for version in versions:
        write_wheel(directory, version)
    return directory
