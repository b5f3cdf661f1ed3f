"""Aliasing proofs for the memory planner: strided views over one buffer, with Z3 integers.

A :class:`StridedView` maps a logical index ``i`` (``0 <= i[k] < shape[k]``) to the element
address ``offset + sum(i[k] * strides[k])``. Offsets, shapes and strides may be ints or Z3 integer
terms (symbolic sizes); pass facts about the symbols as ``assumptions``. Every function answers
True (proved), False (refuted: Z3 found the addresses) or None (unknown: the planner copies).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import z3

TIMEOUT_MS = 5000


@dataclass(frozen=True)
class StridedView:
    """``offset + sum(i[k] * strides[k])`` over ``0 <= i[k] < shape[k]`` (element units)."""

    offset: Any
    shape: tuple[Any, ...]
    strides: tuple[Any, ...]

    def __post_init__(self) -> None:
        if len(self.shape) != len(self.strides):
            raise ValueError(f"view has {len(self.shape)} dims but {len(self.strides)} strides")

    @staticmethod
    def contiguous(shape: Sequence[Any], offset: Any = 0) -> StridedView:
        """A row-major view of ``shape`` starting at ``offset``."""
        strides: list[Any] = []
        step: Any = 1
        for d in reversed(shape):
            strides.insert(0, step)
            step = step * d
        return StridedView(offset, tuple(shape), tuple(strides))

    def transpose(self, perm: Sequence[int]) -> StridedView:
        """The view of ``np.transpose(x, perm)``."""
        return StridedView(
            self.offset, tuple(self.shape[p] for p in perm), tuple(self.strides[p] for p in perm)
        )

    def slice(self, axis: int, start: Any, stop: Any, step: int = 1) -> StridedView:
        """The view of ``x[..., start:stop:step, ...]`` (start < stop, step > 0, in range)."""
        shape = list(self.shape)
        strides = list(self.strides)
        shape[axis] = (
            (stop - start + step - 1) / step
            if not isinstance(stop - start, int)
            else (stop - start + step - 1) // step
        )
        strides[axis] = self.strides[axis] * step
        return StridedView(self.offset + start * self.strides[axis], tuple(shape), tuple(strides))

    def address(self, idx: Sequence[Any]) -> Any:
        out = self.offset
        for i, s in zip(idx, self.strides, strict=True):
            out = out + i * s
        return out

    def in_bounds(self, idx: Sequence[Any]) -> list[Any]:
        return [z3.And(i >= 0, i < n) for i, n in zip(idx, self.shape, strict=True)]


def _index(prefix: str, rank: int) -> list[Any]:
    return [z3.Int(f"{prefix}{k}") for k in range(rank)]


def _solve(constraints: list[Any], timeout_ms: int) -> tuple[Any, Any]:
    s = z3.Solver()
    s.set("timeout", timeout_ms)
    s.add(*constraints)
    r = s.check()
    return r, (s.model() if r == z3.sat else None)


def overlap_witness(
    a: StridedView, b: StridedView, assumptions: Sequence[Any] = (), timeout_ms: int = TIMEOUT_MS
) -> dict[str, Any] | None:
    """Indices of ``a`` and ``b`` that share an address, or None when there are none (or Z3 gave
    up: use :func:`prove_no_overlap` to tell those apart)."""
    i, j = _index("i", len(a.shape)), _index("j", len(b.shape))
    r, m = _solve(
        [*assumptions, *a.in_bounds(i), *b.in_bounds(j), a.address(i) == b.address(j)], timeout_ms
    )
    if r != z3.sat:
        return None
    ev = lambda t: m.eval(t, model_completion=True).as_long()  # noqa: E731
    return {"a": tuple(ev(x) for x in i), "b": tuple(ev(x) for x in j), "address": ev(a.address(i))}


def prove_no_overlap(
    a: StridedView, b: StridedView, assumptions: Sequence[Any] = (), timeout_ms: int = TIMEOUT_MS
) -> bool | None:
    """True when no element of ``a`` shares an address with an element of ``b``; False when
    some does; None when Z3 cannot tell (the planner then copies)."""
    i, j = _index("i", len(a.shape)), _index("j", len(b.shape))
    r, _ = _solve(
        [*assumptions, *a.in_bounds(i), *b.in_bounds(j), a.address(i) == b.address(j)], timeout_ms
    )
    return True if r == z3.unsat else False if r == z3.sat else None


def _lex_less(i: Sequence[Any], j: Sequence[Any]) -> Any:
    terms = []
    for k in range(len(i)):
        terms.append(z3.And(*[i[t] == j[t] for t in range(k)], i[k] < j[k]))
    return z3.Or(*terms) if terms else z3.BoolVal(False)


def prove_inplace_safe(
    write: StridedView,
    reads: Sequence[StridedView],
    assumptions: Sequence[Any] = (),
    order: str = "any",
    timeout_ms: int = TIMEOUT_MS,
) -> bool | None:
    """Can an elementwise kernel write ``write[i]`` from ``reads[k][i]`` (one iteration per
    logical index ``i``, all views of the same logical shape, in one buffer) without a read
    seeing another iteration's write?

    ``order="any"``: iterations may run in any order (vectorized, parallel): no iteration may
    write an address another iteration reads. ``order="sequential"``: row-major order: no
    iteration may read an address an earlier one wrote. Also requires distinct iterations to
    write distinct addresses. True / False / None as for :func:`prove_no_overlap`.
    """
    if order not in ("any", "sequential"):
        raise ValueError(f"order must be 'any' or 'sequential', not {order!r}")
    for r in reads:
        if len(r.shape) != len(write.shape):
            raise ValueError("reads and the write must have the same logical rank")
    i, j = _index("i", len(write.shape)), _index("j", len(write.shape))
    base = [*assumptions, *write.in_bounds(i), *write.in_bounds(j)]
    same = z3.And(*[a == b for a, b in zip(i, j, strict=True)]) if i else z3.BoolVal(True)
    checks = [z3.And(z3.Not(same), write.address(i) == write.address(j))]
    for r in reads:
        base_r = [*r.in_bounds(j), *[n1 == n2 for n1, n2 in zip(r.shape, write.shape, strict=True)]]
        earlier = z3.Not(same) if order == "any" else _lex_less(i, j)
        checks.append(z3.And(*base_r, earlier, write.address(i) == r.address(j)))
    unknown = False
    for c in checks:
        res, _ = _solve([*base, c], timeout_ms)
        if res == z3.sat:
            return False
        if res == z3.unknown:
            unknown = True
    return None if unknown else True


__all__ = ["StridedView", "overlap_witness", "prove_inplace_safe", "prove_no_overlap"]
