"""One asv class per stagebench stage, generated from the registry (see stagebench.asv_suite).

Kept light (no torch): asv imports it in every setup_cache process it spawns and once in the
forkserver its track_ calls are forked from (asv.conf.json: launch_method forkserver).
"""

from pathlib import Path

from stagebench.asv_suite import stage_benchmarks

globals().update(stage_benchmarks(__name__, root=Path(__file__).resolve().parents[1]))
