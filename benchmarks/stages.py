"""One asv class per stagebench stage, generated from the registry (see stagebench.asv_suite)."""

from pathlib import Path

from stagebench.asv_suite import stage_benchmarks

globals().update(stage_benchmarks(__name__, root=Path(__file__).resolve().parents[1]))
