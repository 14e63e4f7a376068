"""Python's garbage collector during the measured steps: a setting a user may choose, recorded.

A stage whose loss syncs the host every step (Liger's fused linear cross-entropy reads
`target_mask.sum().item()`) puts the host on the critical path: any host delay is added to the
step. A full collection scans every object the model holds, so it is one candidate for those
delays. Training loops control it themselves (torchtitan disables the collector and collects on
a schedule), so the harness may too, as long as the Result says which mode it measured:

- "default": the collector as Python runs it;
- "freeze": one collection after the warm-up, then `gc.freeze()`: the model's long-lived objects
  move to the permanent generation and later collections scan only new objects;
- "off": one collection after the warm-up, then the collector is disabled until the measured
  steps end (cyclic garbage of a few dozen steps waits until then).

Whatever the mode, the collector is as it was once the measured steps end (one exception:
"freeze" over a collector the caller had frozen already leaves everything frozen, since
Python cannot unfreeze only part of the permanent generation).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

MODES = ("default", "freeze", "off")


@contextmanager
def controlled(mode: str) -> Iterator[None]:
    """The collector in `mode` inside the block, restored after it (also on an exception)."""
    if mode not in MODES:
        raise ValueError(f"invalid host_gc={mode!r}: must be one of {', '.join(MODES)}")
    if mode == "default":
        yield
        return
    was_enabled = gc.isenabled()
    was_frozen = gc.get_freeze_count() > 0
    gc.collect()
    if mode == "freeze":
        gc.freeze()
    else:
        gc.disable()
    try:
        yield
    finally:
        if mode == "freeze":
            if not was_frozen:
                gc.unfreeze()
        elif was_enabled:
            gc.enable()
