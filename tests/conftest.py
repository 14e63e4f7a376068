"""Shared fixtures: a quick CPU workload and a child environment that can import tests/faults."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from stagebench.workload import Workload

TESTS = Path(__file__).parent

# One OpenMP thread for every tiny model the tests train, in this process and every child: on a
# 2-core machine with another busy process, torch's two threads wait on each other at every
# barrier and a step runs ten times slower. Nothing here measures thread scaling. Set before
# anything imports torch; an explicit setting wins.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def tiny() -> Workload:
    """A `tiny` workload small enough for a 2-core CPU (the real seed shapes are for GPUs)."""
    return Workload(
        model="tiny",
        device="cpu",
        dtype="float32",
        batch_size=2,
        seq_len=64,
        warmup_steps=2,
        min_steps=8,
        max_steps=12,
        timeout_s=120.0,
    )


@pytest.fixture
def tiny_workload() -> Workload:
    return tiny()


@pytest.fixture
def child_can_import_faults(monkeypatch: pytest.MonkeyPatch) -> None:
    """Child processes inherit the environment; let them import tests/faults.py."""
    paths = [str(TESTS), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in paths if p))


@pytest.fixture(scope="session")
def plant_wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The FAKE stagebench-test-plant's wheels (tests/plant.py), written once per session so
    overlays built from them are cached across test modules."""
    import plant

    return plant.write_wheels(tmp_path_factory.mktemp("plant-wheels"))


@pytest.fixture(scope="session")
def overlay_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One overlay cache for the session: never the user's ~/.cache."""
    return tmp_path_factory.mktemp("overlays")
