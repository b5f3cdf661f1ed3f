"""Static memory planning: every intermediate tensor gets an offset in one arena.

Lifetimes are intervals of step indices ``[first, last]`` (the step that writes the tensor to the
last step that reads it). Placement is greedy by size, best fit: tensors are placed largest first,
each at the lowest-waste gap between the tensors already placed that are live at the same time.
Offsets are 64-byte aligned. ``lower_bound`` is the most bytes live at once, which no plan beats.
"""

from __future__ import annotations

from dataclasses import dataclass

ALIGN = 64


def align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


@dataclass(frozen=True)
class Buffer:
    """One tensor to place: ``size`` bytes live over steps ``first..last`` (inclusive)."""

    key: object
    size: int
    first: int
    last: int

    def overlaps(self, other: Buffer) -> bool:
        return self.first <= other.last and other.first <= self.last


@dataclass
class MemoryPlan:
    """Offsets (bytes) of each buffer's key in one arena of ``arena_bytes``."""

    offsets: dict[object, int]
    arena_bytes: int
    lower_bound: int


def lower_bound(buffers: list[Buffer]) -> int:
    """Maximum over steps of the aligned bytes live at that step."""
    if not buffers:
        return 0
    steps = sorted({b.first for b in buffers} | {b.last for b in buffers})
    return max(sum(align(b.size) for b in buffers if b.first <= t <= b.last) for t in steps)


def plan_memory(buffers: list[Buffer]) -> MemoryPlan:
    """Place ``buffers`` (greedy by size, best fit). Buffers live at the same time never overlap."""
    placed: list[tuple[int, int, Buffer]] = []  # (offset, aligned size, buffer)
    offsets: dict[object, int] = {}
    for b in sorted(buffers, key=lambda b: (-b.size, b.first, str(b.key))):
        size = align(max(b.size, 1))
        busy = sorted((o, o + s) for o, s, p in placed if p.overlaps(b))
        best, best_waste, cursor = None, None, 0
        for lo, hi in busy:
            gap = lo - cursor
            if gap >= size and (best_waste is None or gap - size < best_waste):
                best, best_waste = cursor, gap - size
            cursor = max(cursor, hi)
        offset = best if best is not None else cursor
        placed.append((offset, size, b))
        offsets[b.key] = offset
    arena = max((o + s for o, s, _ in placed), default=0)
    return MemoryPlan(offsets, arena, lower_bound(buffers))
