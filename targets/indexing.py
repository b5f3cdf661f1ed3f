"""Data-movement kernels that index: Gather, Expand, Tile, Pad.

Registers its lowerings in :data:`satura.targets.lower.LOWERINGS` on import.
"""

from __future__ import annotations
