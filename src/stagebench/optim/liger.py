"""liger: made real in the next step of the project; until then it says so."""

from __future__ import annotations

from stagebench.optim import Optimization
from stagebench.optim.attention import _not_yet, _unreachable

OPTIMIZATIONS = {"liger": Optimization("liger", _not_yet, _unreachable)}
