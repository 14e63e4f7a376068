"""Histories written as real asv result files through asv's own API, for the judging tests."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

from asv.machine import Machine
from asv.results import Results
from asv.runner import BenchmarkResult

MACHINE = "h100"
ENV = "existing-py_python3.11"
DAY_MS = 86_400_000
FIRST_DATE_MS = 1_760_000_000_000
STAGE = "stages.Stage_00_sdpa"
MFU = f"{STAGE}.track_mfu"
STEP_TIME = f"{STAGE}.track_step_time_ms"
TFLOPS = f"{STAGE}.track_tflops"
TOKENS = f"{STAGE}.track_tokens_per_s"
FIRST_STEP = f"{STAGE}.track_first_step_s"
MEMORY = f"{STAGE}.track_peak_reserved_gib"
OK = f"{STAGE}.track_ok"


def commit_hashes(n: int, salt: str = "") -> list[str]:
    """Full hashes in commit order; their sort order is not the commit order."""
    return [hashlib.sha1(f"commit {salt}{i}".encode()).hexdigest() for i in range(n)]


def write_history(
    results_dir: Path,
    series: dict[str, list[float | None]],
    machine: str = MACHINE,
    versions: list[str] | None = None,
    salt: str = "",
    env: str = ENV,
) -> list[str]:
    """One asv result file per commit, as `asv run` saves them; returns the commits in order."""
    n = len(next(iter(series.values())))
    info = Machine()
    info.__dict__.update(machine=machine, os="Linux", arch="x86_64", cpu="cpu", num_cpu="16")
    info.save(str(results_dir))
    hashes = commit_hashes(n, salt)
    for i, commit in enumerate(hashes):
        params = {"machine": machine, "python": "3.11"}
        result = Results(params, {}, commit, FIRST_DATE_MS + i * DAY_MS, "3.11", env, {})
        for name, values in series.items():
            benchmark = {"name": name, "version": versions[i] if versions else "1", "params": []}
            measured = BenchmarkResult(
                result=[values[i]],
                samples=[None],
                number=[None],
                errcode=0,
                stderr="",
                profile=None,
            )
            result.add_result(benchmark, measured)
        result.save(str(results_dir))
    return hashes


def noisy(seed: int, n: int, level: float, noise: float, step_at: int = 0, step: float = 0.0):
    """`level` with relative Gaussian noise; from `step_at` on the level moves by `step`."""
    rng = random.Random(seed)
    return [
        level * (1 + rng.gauss(0, noise)) * (1 + (step if step_at and i >= step_at else 0))
        for i in range(n)
    ]


def speed_family(step_ms: list[float], tokens_per_step: int = 2048) -> dict[str, list[float]]:
    """Step time and what derives from it, as the runner computes them."""
    tokens = [tokens_per_step / (t / 1000) for t in step_ms]
    return {
        STEP_TIME: step_ms,
        TOKENS: tokens,
        TFLOPS: [t * 5.1e10 / 1e12 for t in tokens],
        MFU: [t * 5.1e10 / 1e12 / 989 * 100 for t in tokens],
    }
