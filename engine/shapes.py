"""Dimension arithmetic for shape functions, in three domains.

An op's shape function is written once, over dimension values, and evaluated here on plain ints
(run time), sympy expressions (symbolic ``dim_param`` dimensions at import and in the e-graph) and
Z3 integers (the verifier, for every size at once). Ranks are always concrete Python ints; only the
dimensions vary by domain. Shape functions use ``+ - *`` on dimensions directly and route every
comparison, choice and floor division through a :class:`DimOps`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import sympy
from satura.engine.errors import ShapeError

Dim = Any  # int | sympy.Expr | z3.ArithRef
Shape = tuple[Dim, ...]


class DimOps:
    """The operations a shape function may apply to dimensions. Subclassed per domain."""

    def eq(self, a: Dim, b: Dim) -> Any:
        """Truth value of ``a == b`` in this domain."""
        raise NotImplementedError

    def require(self, cond: Any, msg: str) -> None:
        """State a well-formedness condition of the op."""
        raise NotImplementedError

    def select(self, cond: Any, a: Dim, b: Dim) -> Dim:
        """``a if cond else b``."""
        raise NotImplementedError

    def floordiv(self, a: Dim, b: Dim) -> Dim:
        raise NotImplementedError

    def ge(self, a: Dim, b: Dim) -> Any:
        raise NotImplementedError

    def and_(self, *conds: Any) -> Any:
        raise NotImplementedError

    def or_(self, *conds: Any) -> Any:
        raise NotImplementedError

    def not_(self, cond: Any) -> Any:
        raise NotImplementedError

    # Derived helpers, shared by every domain.
    def min(self, a: Dim, b: Dim) -> Dim:
        return self.select(self.ge(a, b), b, a)

    def max(self, a: Dim, b: Dim) -> Dim:
        return self.select(self.ge(a, b), a, b)

    def prod(self, dims: Iterable[Dim]) -> Dim:
        out: Dim = 1
        for d in dims:
            out = out * d
        return out

    def same(self, a: Sequence[Dim], b: Sequence[Dim], msg: str) -> None:
        """Require two shapes to be equal (same rank, equal dims)."""
        if len(a) != len(b):
            self.require(False, f"{msg}: rank {len(a)} vs {len(b)}")
            return
        for x, y in zip(a, b, strict=True):
            self.require(self.eq(x, y), msg)

    def broadcast(self, a: Dim, b: Dim) -> Dim:
        """numpy's rule for one dimension pair."""
        self.require(
            self.or_(self.eq(a, 1), self.eq(b, 1), self.eq(a, b)), "dimensions do not broadcast"
        )
        return self.select(self.eq(a, 1), b, a)

    def broadcast_shapes(self, *shapes: Sequence[Dim]) -> Shape:
        """numpy broadcasting of several shapes (ranks aligned on the right)."""
        rank = max((len(s) for s in shapes), default=0)
        out: list[Dim] = []
        for i in range(rank):
            dims = [s[len(s) - rank + i] for s in shapes if len(s) - rank + i >= 0]
            d = dims[0]
            for e in dims[1:]:
                d = self.broadcast(d, e)
            out.append(d)
        return tuple(out)


class IntDims(DimOps):
    """Concrete ints: conditions are checked at once and raise :class:`ShapeError`."""

    def eq(self, a: Dim, b: Dim) -> bool:
        return bool(a == b)

    def require(self, cond: Any, msg: str) -> None:
        if not cond:
            raise ShapeError(msg)

    def select(self, cond: Any, a: Dim, b: Dim) -> Dim:
        return a if cond else b

    def floordiv(self, a: Dim, b: Dim) -> Dim:
        return a // b

    def ge(self, a: Dim, b: Dim) -> bool:
        return bool(a >= b)

    def and_(self, *conds: Any) -> bool:
        return all(conds)

    def or_(self, *conds: Any) -> bool:
        return any(conds)

    def not_(self, cond: Any) -> bool:
        return not cond


class SymDims(DimOps):
    """sympy dimensions (``batch``, ``seq``...). Decidable conditions are checked; a condition that
    depends on a symbol's value is assumed and recorded in ``assumptions`` (the runtime checks
    input shapes, so an assumption that fails is caught there)."""

    def __init__(self) -> None:
        self.assumptions: list[str] = []

    @staticmethod
    def _truth(cond: Any) -> bool | None:
        if isinstance(cond, bool):
            return cond
        if cond is sympy.true:
            return True
        if cond is sympy.false:
            return False
        return None

    def eq(self, a: Dim, b: Dim) -> Any:
        diff = sympy.simplify(sympy.sympify(a) - sympy.sympify(b))
        if diff == 0:
            return True
        if diff.is_number:
            return False
        return sympy.Eq(a, b, evaluate=False)

    def require(self, cond: Any, msg: str) -> None:
        t = self._truth(cond)
        if t is False:
            raise ShapeError(msg)
        if t is None:
            self.assumptions.append(f"{msg}: assumed {cond}")

    def broadcast(self, a: Dim, b: Dim) -> Dim:
        # A symbolic dimension against 1 is the symbol; two different symbols are assumed equal.
        if self._truth(self.eq(a, b)) is True or self._truth(self.eq(b, 1)) is True:
            return a
        if self._truth(self.eq(a, 1)) is True:
            return b
        if isinstance(a, int) and isinstance(b, int):
            raise ShapeError(f"dimensions {a} and {b} do not broadcast")
        self.assumptions.append(f"assumed {a} == {b} (broadcast)")
        return b if isinstance(b, int) else a

    def select(self, cond: Any, a: Dim, b: Dim) -> Dim:
        t = self._truth(cond)
        if t is None:
            # Undecidable: symbolic dims in broadcasting are assumed equal (onnxruntime's habit).
            self.assumptions.append(f"assumed {cond}")
            return a
        return a if t else b

    def floordiv(self, a: Dim, b: Dim) -> Dim:
        if isinstance(a, int) and isinstance(b, int):
            return a // b
        return sympy.floor(sympy.sympify(a) / b)

    def ge(self, a: Dim, b: Dim) -> Any:
        r = sympy.sympify(a) >= b
        if r in (sympy.true, sympy.false):
            return bool(r)
        # Dimensions are positive: a symbol is >= any int <= 1 and any symbol-free smaller term.
        diff = sympy.sympify(a) - b
        if diff.is_nonnegative:
            return True
        return r

    def and_(self, *conds: Any) -> Any:
        truths = [self._truth(c) for c in conds]
        if any(t is False for t in truths):
            return False
        if all(t is True for t in truths):
            return True
        return sympy.And(*[c for c, t in zip(conds, truths, strict=True) if t is None])

    def or_(self, *conds: Any) -> Any:
        truths = [self._truth(c) for c in conds]
        if any(t is True for t in truths):
            return True
        if all(t is False for t in truths):
            return False
        return sympy.Or(*[c for c, t in zip(conds, truths, strict=True) if t is None])

    def not_(self, cond: Any) -> Any:
        t = self._truth(cond)
        return (not t) if t is not None else sympy.Not(cond)


class Z3Dims(DimOps):
    """Z3 integer dimensions: conditions are collected, not checked (the verifier proves them)."""

    def __init__(self) -> None:
        import z3

        self.z3 = z3
        self.conditions: list[Any] = []

    def _b(self, c: Any) -> Any:
        return self.z3.BoolVal(c) if isinstance(c, bool) else c

    def eq(self, a: Dim, b: Dim) -> Any:
        if isinstance(a, int) and isinstance(b, int):
            return a == b
        return a == b  # z3 overloads ==

    def require(self, cond: Any, msg: str) -> None:
        if cond is False:  # false for every size (a rank mismatch): no case to solve
            raise ShapeError(msg)
        self.conditions.append(self._b(cond))

    def select(self, cond: Any, a: Dim, b: Dim) -> Dim:
        if isinstance(cond, bool):
            return a if cond else b
        return self.z3.If(cond, a, b)

    def floordiv(self, a: Dim, b: Dim) -> Dim:
        if isinstance(a, int) and isinstance(b, int):
            return a // b
        return a / b  # z3 integer division rounds toward -inf for positive divisors

    def ge(self, a: Dim, b: Dim) -> Any:
        if isinstance(a, int) and isinstance(b, int):
            return a >= b
        return a >= b

    def and_(self, *conds: Any) -> Any:
        return self.z3.And(*[self._b(c) for c in conds])

    def or_(self, *conds: Any) -> Any:
        return self.z3.Or(*[self._b(c) for c in conds])

    def not_(self, cond: Any) -> Any:
        return (not cond) if isinstance(cond, bool) else self.z3.Not(cond)


def normalize_axis(axis: int, rank: int, what: str = "axis") -> int:
    """Map a possibly negative axis into ``range(rank)``; ranks are concrete in every domain."""
    if not -rank <= axis < max(rank, 1):
        raise ShapeError(f"{what} {axis} is out of range for rank {rank}")
    return axis + rank if axis < 0 else axis


def is_static(shape: Sequence[Dim]) -> bool:
    return all(isinstance(d, int) for d in shape)


def as_dim(d: Any) -> Dim:
    """Normalize a dimension: sympy integers become ints."""
    if isinstance(d, int):
        return d
    if isinstance(d, sympy.Basic):
        d = sympy.simplify(d)
        if d.is_Integer:
            return int(d)
        return d
    return int(d)
