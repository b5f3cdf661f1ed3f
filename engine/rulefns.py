"""Functions a rule's guard or replacement attributes may call, by name.

Rule files never run code: their expressions are walked by ``rulelang.evaluate``, which calls only
the functions in :data:`RULE_FUNCTIONS` (and the type queries it defines itself). Each takes and
returns plain attribute values (tuples, ints, floats, strings).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def compose_perm(p: tuple[int, ...], q: tuple[int, ...]) -> tuple[int, ...]:
    """The single permutation of ``transpose(transpose(x, p), q)``."""
    return tuple(p[i] for i in q)


def inverse_perm(p: tuple[int, ...]) -> tuple[int, ...]:
    out = [0] * len(p)
    for i, j in enumerate(p):
        out[j] = i
    return tuple(out)


def is_identity_perm(p: tuple[int, ...]) -> bool:
    return tuple(p) == tuple(range(len(p)))


def is_perm(p: Any) -> bool:
    return isinstance(p, tuple) and sorted(p) == list(range(len(p)))


def ew_shift(expr: tuple, k: int) -> tuple:
    """Renumber the inputs of a fused elementwise expression: ("in", i) becomes ("in", i + k)."""
    if expr[0] == "in":
        return ("in", expr[1] + k)
    if expr[0] == "const":
        return expr
    return (expr[0], *(ew_shift(c, k) for c in expr[1:]))


def swap_last2(rank: int) -> tuple[int, ...]:
    """The permutation that swaps the last two axes of a tensor of ``rank``."""
    return (*range(rank - 2), rank - 1, rank - 2)


RULE_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "compose_perm": compose_perm,
    "inverse_perm": inverse_perm,
    "is_identity_perm": is_identity_perm,
    "is_perm": is_perm,
    "ew_shift": ew_shift,
    "swap_last2": swap_last2,
    "abs": abs,
    "min": min,
    "max": max,
    "tuple": tuple,
    "range": lambda *a: tuple(range(*a)),
}
