"""stagebench: a GPU regression tracker for stacked LLM-training optimizations."""

__version__ = "0.1.0"
# Bumped whenever what a number means changes (timing, FLOP counting, statistics), so stored
# results from an older protocol are never compared with newer ones by accident.
# 2: the seed's conditions (batch 1 x 2048 on CUDA; per-stage compile settings: fullgraph off
# for FlashAttention layers, cache_size_limit 256; fp32 FLCE/CCE accumulation).
PROTOCOL_VERSION = 2
