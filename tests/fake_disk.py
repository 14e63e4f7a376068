"""FAKE disks for the store tests: os.write and os.fsync that fail the way a full or failing disk
does, for one file only, and REAL small filesystems where this machine lets us mount them.

A full disk is not something a test machine has on demand: the fakes stand in for it (a write
that takes part of the line, then ENOSPC; a write that takes nothing; an fsync that fails), and
`tiny_tmpfs` is the real thing, skipped where mounting needs privileges we don't have.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

REAL_WRITE = os.write
REAL_FSYNC = os.fsync


def _is(fd: int, path: Path) -> bool:
    try:
        st, target = os.fstat(fd), path.stat()
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino)


class FakeDisk:
    """Patches os.write / os.fsync for writes to `path`; every other file is written for real.

    space: bytes the fake disk still takes (None: unlimited); beyond it a write takes what is
    left and the next one raises ENOSPC, as a real filesystem does.
    chunk: the most one write takes (a short write that still succeeds).
    fsync_error: errno an fsync of `path` raises.
    """

    def __init__(
        self,
        monkeypatch: pytest.MonkeyPatch,
        path: Path,
        *,
        space: int | None = None,
        chunk: int | None = None,
        fsync_error: int | None = None,
    ) -> None:
        self.path, self.space, self.chunk, self.fsync_error = path, space, chunk, fsync_error
        self.writes: list[int] = []
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()  # identified by inode, so it must exist
        monkeypatch.setattr(os, "write", self.write)
        monkeypatch.setattr(os, "fsync", self.fsync)

    def write(self, fd: int, data) -> int:
        if not _is(fd, self.path):
            return REAL_WRITE(fd, data)
        data = bytes(data)
        if self.chunk is not None:
            data = data[: self.chunk]
        if self.space is not None:
            if self.space == 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            data = data[: self.space]
            self.space -= len(data)
        written = REAL_WRITE(fd, data)
        self.writes.append(written)
        return written

    def fsync(self, fd: int) -> None:
        if self.fsync_error is not None and _is(fd, self.path):
            raise OSError(self.fsync_error, os.strerror(self.fsync_error))
        REAL_FSYNC(fd)


@contextlib.contextmanager
def tiny_tmpfs(where: Path, size_kib: int = 16, *, read_only: bool = False) -> Iterator[Path]:
    """A real, small tmpfs at `where` (skips the test where mounting is not allowed)."""
    where.mkdir(parents=True, exist_ok=True)
    options = f"size={size_kib}k" + (",ro" if read_only else "")
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.strip() or mount.returncode}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(directory: Path) -> None:
    """Fill a real filesystem until it takes not one byte more."""
    with (directory / "filler").open("wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"x" * 4096)


def read_only_dir(base: Path) -> contextlib.AbstractContextManager[Path]:
    """A directory this process cannot write: chmod for a normal user; root ignores modes, so a
    read-only tmpfs for root (skipped where it cannot mount)."""
    if os.geteuid() == 0:
        return tiny_tmpfs(base / "ro", read_only=True)

    @contextlib.contextmanager
    def chmodded() -> Iterator[Path]:
        path = base / "ro"
        path.mkdir()
        path.chmod(0o555)
        try:
            yield path
        finally:
            path.chmod(0o755)

    return chmodded()
