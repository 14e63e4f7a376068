"""One asv class per stagebench stage, generated from the registry (see stagebench.asv_suite)."""

from stagebench.asv_suite import stage_benchmarks

globals().update(stage_benchmarks(__name__))
