"""stagebench's RMSNorm kernel, CUDA build: Liger's Triton RMSNorm, forward and backward."""

from . import layers

__all__ = ["layers"]
