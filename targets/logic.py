"""Comparisons, logical ops and Where as elementwise kernels over bool and float32 operands.

Registers its lowerings in :data:`satura.targets.lower.LOWERINGS` on import.
"""

from __future__ import annotations
