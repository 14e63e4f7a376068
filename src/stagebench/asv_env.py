"""An asv environment plugin: one virtualenv per commit that shares the heavy packages.

`asv run A..B` and `asv find` build stagebench at every commit they visit. Reinstalling torch,
transformers and the kernel libraries per commit would take minutes and gigabytes, so this
environment ("virtualenv-shared") sees the packages of the interpreter it is created from through
a .pth file, and installs only stagebench itself (`--no-deps`) into its own site-packages, which
comes first on sys.path. Editable installs of the parent are not activated (a plain path line
does not run the parent's .pth hooks), so each commit's own build is the one measured.

Enabled in asv.conf.json with `"plugins": [".src.stagebench.asv_env"]` and
`"environment_type": "virtualenv-shared"`.
"""

from __future__ import annotations

import json
import os
import sys

from asv import util
from asv.console import log
from asv.plugins.virtualenv import Virtualenv

PTH_NAME = "stagebench_shared_parent.pth"
_SITE_PATHS = (
    "import json, sysconfig; "
    "print(json.dumps(sorted({sysconfig.get_paths()[k] for k in ('purelib', 'platlib')})))"
)


def site_paths(python: str) -> list[str]:
    """The site-packages directories of interpreter `python` (a venv's own, if it is one)."""
    return json.loads(util.check_output([python, "-c", _SITE_PATHS]))


class SharedVirtualenv(Virtualenv):
    """A virtualenv per commit layered over the packages of the interpreter it was made from."""

    tool_name = "virtualenv-shared"

    def _setup(self) -> None:
        env = {**os.environ, **self.build_env_vars}
        log.info(f"Creating virtualenv for {self.name} over {self._executable}'s packages")
        util.check_call(
            [
                sys.executable,
                "-m",
                "virtualenv",
                "--setuptools=bundle",
                "-p",
                self._executable,
                self._path,
            ],
            env=env,
        )
        own = site_paths(os.path.join(self._path, "bin", "python"))
        parent = [p for p in site_paths(self._executable) if p not in own]
        with open(os.path.join(own[0], PTH_NAME), "w") as pth:
            pth.write("\n".join(parent) + "\n")
        self._install_requirements()
