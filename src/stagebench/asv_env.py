"""An asv environment plugin: one virtualenv per commit that shares the heavy packages.

`asv run A..B` and `asv find` build stagebench at every commit they visit. Reinstalling torch,
transformers and the kernel libraries per commit would take minutes and gigabytes, so this
environment ("virtualenv-shared") sees the packages of the interpreter it is created from through
a .pth file, and installs only stagebench itself (`--no-deps`) into its own site-packages, which
comes first on sys.path. Editable installs of the parent are not activated (a plain path line
does not run the parent's .pth hooks), so each commit's own build is the one measured.

Enabled in asv.conf.json with `"plugins": [".src.stagebench.asv_env"]` and
`"environment_type": "virtualenv-shared"`. The module also holds `interpreter`, the environment
the nightly measures in (see InterpreterEnvironment).
"""

from __future__ import annotations

import json
import os
import sys

from asv import util
from asv.console import log
from asv.environment import EnvironmentUnavailable, ExistingEnvironment, get_env_name
from asv.plugins.virtualenv import Virtualenv

PTH_NAME = "stagebench_shared_parent.pth"
_VERSION = "import sys; print('%d.%d' % sys.version_info[:2])"
# Its own site-packages first, then every other one on its sys.path: an interpreter that is
# itself layered over another (an overlay, whose .pth adds the base's with site.addsitedir)
# sees torch only there.
_SITE_PATHS = (
    "import json, sys, sysconfig; "
    "own = [sysconfig.get_paths()[k] for k in ('purelib', 'platlib')]; "
    "more = [p for p in sys.path if p.rstrip('/').endswith(('site-packages', 'dist-packages'))]; "
    "print(json.dumps(list(dict.fromkeys(own + more))))"
)


def site_paths(python: str) -> list[str]:
    """The site-packages directories interpreter `python` imports from, its own first (a
    venv's own, then those it reaches through .pth files); never a plain source directory, so
    an editable install of the parent is not carried along."""
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


class InterpreterEnvironment(ExistingEnvironment):
    """asv's `existing` environment (this interpreter, nothing installed), named by the
    interpreter's version instead of its path.

    `existing` names its environment after the executable's path, so every checkout with its
    own virtualenv (and every container with another prefix) files its results in a new series
    and the history never grows. This one is `interpreter-py3.11` wherever it runs. Selected
    with `--environment interpreter:python3.11`.
    """

    tool_name = "interpreter"

    def __init__(self, conf, executable, requirements, tagged_env_vars) -> None:
        # asv reads `name` inside its own __init__: the version must be known before that.
        try:
            path = os.path.abspath(util.which(executable))
            self._version = util.check_output([path, "-c", _VERSION]).strip()
        except (util.ProcessError, OSError):
            raise EnvironmentUnavailable(f"no interpreter {executable!r}") from None
        super().__init__(conf, executable, requirements, tagged_env_vars)

    @property
    def name(self) -> str:
        return get_env_name(self.tool_name, self._version, {}, self._tagged_env_vars)

    @classmethod
    def matches(cls, python: str) -> bool:
        return False  # only ever chosen by name


class CanaryEnvironment(InterpreterEnvironment):
    """The canary lane (lanes.py): an overlay's interpreter holding the newest releases of the
    tracked packages, named `canary-py3.11` so its results are a series of their own beside the
    locked lane's. Selected with `--environment canary:/path/to/overlay/bin/python`."""

    tool_name = "canary"
