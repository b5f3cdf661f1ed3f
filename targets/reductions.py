"""Reduction kernels (ReduceSum/Mean/Max/Min/Prod, ArgMax/ArgMin) over any axes.

Registers its lowerings in :data:`satura.targets.lower.LOWERINGS` on import.
"""

from __future__ import annotations
