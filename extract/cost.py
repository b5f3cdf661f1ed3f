"""The hardware-aware cost model: one roofline per kernel.

A node's time on a :class:`~satura.extract.hardware.HardwareProfile` is

    max(flops / peak(dtype), bytes / bandwidth(level)) + launch overhead

with ``(flops, bytes)`` from the op registry's work estimate. ``bytes`` counts what the kernel
reads and writes; the level is the smallest cache that holds it, else DRAM, so small working sets
stream from cache. Fused ops (``ew``, ``linear``, ``attention``, ``rms_norm``, ``layer_norm``) are
one kernel whose work estimate counts only their inputs and output: the intermediates live in
registers or cache, and one launch replaces several. That is why fusion wins under this model.

Views (trait ``view``: ``reshape``, ``identity``) and shape queries cost nothing: no kernel runs.
Symbolic dimensions are bound to integer hints first (:func:`symbol_hint`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sympy
from satura.engine.errors import ShapeError
from satura.engine.graph import Graph, TensorType
from satura.engine.ops import get_op, infer_types
from satura.extract.hardware import HardwareProfile, get_profile

FREE_OPS = frozenset({"reshape", "identity", "shape_of"})
# Dimension names that usually mean a sequence length get a typical length, not 1, so attention
# and sequence-wide work is not priced as free.
SEQ_WORDS = ("seq", "len", "token", "past", "ctx", "context", "time")
SEQ_HINT = 128
Hints = Mapping[str, int] | Mapping[sympy.Symbol, int] | None


@dataclass(frozen=True)
class Roofline:
    """The parts of one node's time: compute, memory, launch (seconds) and what bounds it."""

    compute_s: float
    memory_s: float
    launch_s: float

    @property
    def total(self) -> float:
        return max(self.compute_s, self.memory_s) + self.launch_s

    @property
    def bound(self) -> str:
        if self.compute_s == self.memory_s == 0.0:
            return "free"
        return "compute" if self.compute_s >= self.memory_s else "memory"


def symbol_hint(sym: sympy.Symbol, hints: Hints = None) -> int:
    """The integer a symbolic dimension stands for when pricing.

    A user hint (keyed by the symbol or its name) wins; otherwise sequence-like names
    (``seq``, ``len``, ``tokens``, ...) get 128 and everything else (batch-like) gets 1.
    """
    if hints:
        for key in (sym, str(sym)):
            if key in hints:
                return int(hints[key])  # type: ignore[index]
    name = str(sym).lower()
    return SEQ_HINT if any(w in name for w in SEQ_WORDS) else 1


def _env(symbols: set[sympy.Symbol], hints: Hints) -> dict[sympy.Symbol, int]:
    return {s: symbol_hint(s, hints) for s in symbols}


def bind_type(t: TensorType | None, hints: Hints = None) -> TensorType | None:
    """``t`` with every symbolic dimension replaced by its hint (None stays None)."""
    if t is None or t.is_static:
        return t
    return t.bind(_env(t.symbols, hints))


def _bind_attr(v: Any, hints: Hints) -> Any:
    if isinstance(v, tuple):
        return tuple(_bind_attr(x, hints) for x in v)
    if isinstance(v, sympy.Basic) and v.free_symbols:
        return int(v.subs(_env(v.free_symbols, hints)))  # type: ignore[arg-type]
    if isinstance(v, sympy.Integer):
        return int(v)
    return v


def node_roofline(
    op: str,
    in_types: Sequence[TensorType | None],
    out_types: Sequence[TensorType] | None,
    attrs: Mapping[str, Any],
    profile: HardwareProfile | str,
    hints: Hints = None,
) -> Roofline:
    """Compute, memory and launch time of one ``op`` node (see :func:`node_time`)."""
    prof = get_profile(profile)
    info = get_op(op)
    if op in FREE_OPS or "view" in info.traits:
        return Roofline(0.0, 0.0, 0.0)
    full = info.with_defaults(attrs)
    if out_types is None:
        out_types = infer_types(op, in_types, full)
    ins = [bind_type(t, hints) for t in in_types]
    outs = [bind_type(t, hints) for t in out_types]
    bound_attrs = {k: _bind_attr(v, hints) for k, v in full.items()}
    try:
        work = info.work(ins, outs, bound_attrs)
    except (TypeError, ValueError, AttributeError) as e:
        raise ShapeError(
            f"{op}: cannot estimate work for inputs {', '.join(str(t) for t in ins)}: {e}"
        ) from None
    dtype = next(
        (t.dtype for t in ins if t is not None and "float" in t.dtype),
        outs[0].dtype if outs else "float32",
    )  # type: ignore[union-attr]
    compute = work.flops / prof.peak(dtype)
    memory = work.bytes / prof.bandwidth_for(work.bytes) if work.bytes else 0.0
    return Roofline(compute, memory, prof.launch_overhead_s)


def node_time(
    op: str,
    in_types: Sequence[TensorType | None],
    out_types: Sequence[TensorType] | None,
    attrs: Mapping[str, Any],
    profile: HardwareProfile | str,
    hints: Hints = None,
) -> float:
    """Seconds one ``op`` node takes on ``profile``: roofline plus one kernel launch.

    ``in_types``/``out_types`` are TensorTypes (``None`` for an absent optional input;
    ``out_types=None`` infers them). Symbolic dims are bound with :func:`symbol_hint`. Views
    cost 0. Raises ShapeError for an unknown op or types its work estimate cannot price.
    """
    return node_roofline(op, in_types, out_types, attrs, profile, hints).total


def graph_time(graph: Graph, profile: HardwareProfile | str, hints: Hints = None) -> float:
    """Sum of :func:`node_time` over the nodes of ``graph``: its modelled run time, one kernel
    per node, no overlap."""
    prof = get_profile(profile)
    total = 0.0
    for node in graph.nodes:
        ins = [None if v is None else v.type for v in node.inputs]
        outs = [v.type for v in node.outputs]
        total += node_time(node.op, ins, outs, node.attrs, prof, hints)
    return total
