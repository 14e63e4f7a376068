"""stagebench's RMSNorm kernel, CPU build: pure PyTorch with a hand-written backward."""

from . import layers

__all__ = ["layers"]
