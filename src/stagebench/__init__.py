"""stagebench: a GPU regression tracker for stacked LLM-training optimizations."""

__version__ = "0.1.0"
# Bumped whenever what a number means changes (timing, FLOP counting, statistics), so stored
# results from an older protocol are never compared with newer ones by accident.
PROTOCOL_VERSION = 1
