"""Constant folding: evaluate nodes whose inputs are all constants with the ops' numpy references.

Used by the ONNX importer while it builds a graph (``try_fold``) and on whole graphs after rewrites
(``fold_constants``). An output larger than ``max_elems`` and than every input is not folded, so a
broadcast of a scalar to a huge shape stays a node instead of becoming a huge constant, while a
large weight's cast, transpose or dequantization folds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import sympy
from satura.engine.graph import Graph, Value
from satura.engine.ops import get_op, infer_types

MAX_FOLD_ELEMS = 1 << 20


def has_symbols(v: Any) -> bool:
    """True when an attribute value holds a sympy expression anywhere."""
    if isinstance(v, sympy.Basic):
        return not v.is_Integer
    if isinstance(v, tuple):
        return any(has_symbols(x) for x in v)
    return False


def try_fold(
    op: str,
    inputs: Sequence[Value | None],
    attrs: Mapping[str, Any],
    max_elems: int = MAX_FOLD_ELEMS,
) -> list[np.ndarray] | None:
    """Outputs of ``op`` on constant ``inputs``, or None when it cannot or should not be folded
    (an input is not constant, an attribute is symbolic, or an output is too large: more than
    ``max_elems`` elements and more than its largest input, so that a weight's cast or
    dequantization folds but an expand or ConstantOfShape does not grow the model)."""
    if any(v is not None and not v.is_const for v in inputs):
        return None
    if any(has_symbols(a) for a in attrs.values()):
        return None
    types = infer_types(op, [None if v is None else v.type for v in inputs], attrs)
    limit = max([max_elems] + [v.data.size for v in inputs if v is not None and v.data is not None])
    if any(not t.is_static or _numel(t.shape) > limit for t in types):
        return None
    info = get_op(op)
    with np.errstate(all="ignore"):
        outs = info.reference(
            [None if v is None else v.data for v in inputs], info.with_defaults(attrs)
        )
    return [
        np.asarray(o).astype(t.dtype, copy=False).reshape(tuple(int(s) for s in t.shape))
        for o, t in zip(outs, types, strict=True)
    ]


def _numel(shape: Sequence[Any]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def fold_constants(graph: Graph, max_elems: int = MAX_FOLD_ELEMS) -> int:
    """Replace every node whose inputs are all constants by constants, in place.

    Returns the number of nodes folded. Graph outputs that become constant stay outputs.
    """
    replaced: dict[int, Value] = {}
    kept = []
    folded = 0
    for node in graph.nodes:
        node.inputs = [None if v is None else replaced.get(id(v), v) for v in node.inputs]
        outs = try_fold(node.op, node.inputs, node.attrs, max_elems)
        if outs is None:
            kept.append(node)
            continue
        folded += 1
        for o, arr in zip(node.outputs, outs, strict=True):
            replaced[id(o)] = Value(o.name, o.type, data=arr)
    graph.nodes = kept
    graph.outputs = [replaced.get(id(v), v) for v in graph.outputs]
    return folded
