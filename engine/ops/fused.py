"""Fused ops made by rewrites: ``ew``, a whole elementwise chain over broadcast inputs.

``expr`` is a nested tuple tree. Leaves are ``("in", i)`` (the i-th input) or ``("const", c)``;
inner nodes are ``(op_name, child, ...)`` over registered elementwise ops, evaluated with their
numpy references and default attributes. ``"gelu_tanh"`` names gelu with ``approximate="tanh"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from satura.engine.errors import ShapeError
from satura.engine.ops.registry import OPS, AttrSpec, OpInfo, Work, io_bytes, numel, register
from satura.engine.shapes import DimOps, Shape

# Pseudo-ops: an ew node name -> (registered op, attributes).
ALIASES: dict[str, tuple[str, dict[str, Any]]] = {
    "gelu_tanh": ("gelu", {"approximate": "tanh"}),
}


def _resolve(name: str) -> tuple[OpInfo, dict[str, Any]]:
    op, attrs = ALIASES.get(name, (name, {}))
    info = OPS.get(op)
    if info is None or "elementwise" not in info.traits:
        raise ShapeError(f"ew: '{name}' is not an elementwise op")
    return info, info.with_defaults(attrs)


def ew_ops(expr: Any) -> list[str]:
    """Names of the op nodes in ``expr``, in post-order (leaves excluded)."""
    if expr[0] in ("in", "const"):
        return []
    out: list[str] = []
    for child in expr[1:]:
        out += ew_ops(child)
    return [*out, expr[0]]


def ew_inputs(expr: Any) -> set[int]:
    """Indices of the inputs ``expr`` reads."""
    if expr[0] == "in":
        return {int(expr[1])}
    if expr[0] == "const":
        return set()
    return set().union(*(ew_inputs(c) for c in expr[1:]))


def ew_eval(expr: Any, arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Evaluate ``expr`` on ``arrays`` with the ops' numpy references (constants take the dtype
    of the first input)."""
    if expr[0] == "in":
        return arrays[int(expr[1])]
    if expr[0] == "const":
        return np.asarray(expr[1], dtype=arrays[0].dtype if arrays else np.float32)
    info, attrs = _resolve(expr[0])
    kids = [np.asarray(ew_eval(c, arrays)) for c in expr[1:]]
    return info.reference(kids, attrs)[0]


def _check(expr: Any, n_in: int) -> None:
    if not isinstance(expr, tuple) or not expr:
        raise ShapeError(f"ew: malformed expression node {expr!r}")
    if expr[0] == "in":
        if not (len(expr) == 2 and isinstance(expr[1], int) and 0 <= expr[1] < n_in):
            raise ShapeError(f"ew: leaf {expr!r} does not name one of {n_in} inputs")
        return
    if expr[0] == "const":
        if len(expr) != 2 or not isinstance(expr[1], (int, float)):
            raise ShapeError(f"ew: malformed constant {expr!r}")
        return
    info, _ = _resolve(expr[0])
    lo, hi = info.inputs
    if len(expr) - 1 < lo or (hi is not None and len(expr) - 1 > hi):
        raise ShapeError(f"ew: '{expr[0]}' given {len(expr) - 1} operands")
    for c in expr[1:]:
        _check(c, n_in)


def _ew_shape(d: DimOps, ins: Sequence[Shape | None], at: Any) -> list[Shape]:
    _check(at["expr"], len(ins))
    return [d.broadcast_shapes(*[s for s in ins if s is not None])]


def _ew_dtype_of(expr: Any, ins: Sequence[str | None]) -> str:
    if expr[0] == "in":
        return ins[int(expr[1])] or "float32"
    if expr[0] == "const":
        return ins[0] or "float32" if ins else "float32"
    info, attrs = _resolve(expr[0])
    return info.dtype([_ew_dtype_of(c, ins) for c in expr[1:]], attrs)[0]


def _ew_ref(ins: Sequence[np.ndarray | None], at: Any) -> list[np.ndarray]:
    arrays = [a for a in ins if a is not None]
    out = np.asarray(ew_eval(at["expr"], arrays))
    shape = np.broadcast_shapes(*[a.shape for a in arrays])
    return [np.array(np.broadcast_to(out, shape))]


def _ew_work(ins: Sequence[Any], outs: Sequence[Any], at: Any) -> Work:
    n = numel(outs[0].shape)
    flops = 0.0
    for name in ew_ops(at["expr"]):
        info, attrs = _resolve(name)
        flops += info.work(list(outs), list(outs), attrs).flops / max(n, 1)
    return Work(flops * n, io_bytes(ins, outs))


register(
    OpInfo(
        name="ew",
        shape=_ew_shape,
        reference=_ew_ref,
        inputs=(1, None),
        work=_ew_work,
        attrs={"expr": AttrSpec("expr")},
        dtype=lambda ins, at: [_ew_dtype_of(at["expr"], ins)],
        traits=frozenset({"elementwise", "fused"}),
        doc="a fused elementwise expression tree over broadcast inputs (one pass over memory)",
    )
)
