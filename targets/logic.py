"""Comparisons, logical and bitwise ops and Where as elementwise kernels over fp32, bool and
integers.

Each of ``equal``, ``less``, ``less_equal``, ``greater``, ``greater_equal``, ``not``, ``and``,
``or``, ``isnan``, ``where``, the integer ``bitwise_and``/``or``/``xor``/``not`` and the shifts
becomes a typed :func:`~satura.targets.elementwise.ew_kernel`
(fp32, bool and integer operands; bools are 0/1 bytes), and so does an ``ew`` node whose
expression holds such ops or reads non-fp32 inputs.

A kernel started at one of these nodes also takes in the chain of elementwise nodes after it
(comparisons, logic, ``where``, casts, fp32 maths, fused ``ew``), as long as each intermediate
value has that one reader and the other operands are ready before the chain starts, or are
computed by elementwise nodes the kernel takes in too: an attention mask
``where(not(equal(mask, 0)), scores * scale, -inf)`` is one pass over the scores, not four
kernels and two bool tensors. The fp32 elementwise and cast lowerings are wrapped so that a chain
may also start at such a node and run into a ``where``; a chain of fp32 ops alone (or a lone
cast) is left to the lowering it had.

Registers its lowerings in :data:`satura.targets.lower.LOWERINGS` on import.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

from satura.engine.graph import Node, Value
from satura.engine.ops import OPS
from satura.targets.elementwise import (
    BITWISE_OPS,
    COMPARISONS,
    LEAF_TYPES,
    LOGIC_OPS,
    SHIFTS,
    TYPED_OPS,
    Expr,
    ew_kernel,
    pin_consts,
    typed_expr_dtype,
)
from satura.targets.irmath import BINARY_OPS, UNARY_OPS
from satura.targets.kernel import Operand
from satura.targets.lower import LOWERINGS, Lowerer, Lowering, Ref, Step, numel, worth_splitting

# The ops whose own nodes this module lowers.
LOGIC_NODE_OPS = TYPED_OPS
# Ops cheap enough to recompute at every element of a broadcast consumer (an intermediate smaller
# than the chain's output is evaluated once per output element, never stored).
CHEAP_OPS = TYPED_OPS | {
    "add",
    "sub",
    "mul",
    "max",
    "min",
    "neg",
    "abs",
    "relu",
    "floor",
    "ceil",
    "identity",
    "cast",
}
MAX_CHAIN = 16  # nodes per fused kernel (keeps the generated function small)


def plain_float_op(op: str) -> bool:
    """Whether ``op`` is a graph op without attributes that the fp32 emitter computes by name
    (``pow`` is left to its own lowering, which specialises constant exponents)."""
    info = OPS.get(op)
    return (
        info is not None
        and not info.attrs
        and op != "pow"
        and (op in UNARY_OPS or op in BINARY_OPS)
    )


def node_expr(node: Node) -> Expr | None:
    """The kernel expression of one elementwise node over its present inputs ``("in", i)``,
    with constants typed as the node's reference types them; None when it has none."""
    op, at = node.op, node.attrs
    ins = [x for x in node.inputs if x is not None]
    if len(node.outputs) != 1 or any(x.type.dtype not in LEAF_TYPES for x in ins):
        return None
    leaves = [("in", i) for i in range(len(ins))]
    expr: Expr | None = None
    if op == "ew":
        expr = at["expr"]
    elif (
        op in COMPARISONS
        or op in LOGIC_OPS
        or op in BITWISE_OPS
        or op in SHIFTS
        or (op in BINARY_OPS and plain_float_op(op))
    ):
        expr = (op, *leaves) if len(ins) == 2 else None
    elif op in ("not", "isnan", "bitwise_not"):
        expr = (op, *leaves) if len(ins) == 1 else None
    elif op == "where":
        expr = (op, *leaves) if len(ins) == 3 else None
    elif op == "gelu" and len(ins) == 1:
        expr = ("gelu_tanh" if at.get("approximate") == "tanh" else "gelu", *leaves)
    elif op == "leaky_relu" and len(ins) == 1 and at.get("alpha", 0.01) == 0.01:
        expr = (op, *leaves)  # the emitter's op has the default slope
    elif op in UNARY_OPS and len(ins) == 1 and plain_float_op(op):
        expr = (op, *leaves)
    elif op == "cast" and len(ins) == 1:
        expr = ("cast", *leaves, at["to"])
    if expr is None:
        return None
    return pin_consts(expr, [x.type.dtype for x in ins])


def typed_accepts(node: Node) -> bool:
    """Whether a typed kernel computes ``node`` with its numpy reference's output dtype."""
    expr = node_expr(node)
    ins = [x.type.dtype for x in node.inputs if x is not None]
    return expr is not None and typed_expr_dtype(expr, ins) == node.outputs[0].type.dtype


def _substitute(expr: Expr, args: list[Expr]) -> Expr:
    """``expr`` with each leaf ``("in", i)`` replaced by ``args[i]``."""
    if expr[0] == "in":
        return args[expr[1]]
    if expr[0] == "const":
        return expr
    return (expr[0], *(_substitute(c, args) if isinstance(c, tuple) else c for c in expr[1:]))


def _ops(expr: Expr) -> set[str]:
    """The op names in ``expr`` (a cast's dtype is no operand)."""
    if expr[0] in ("in", "const"):
        return set()
    return {expr[0]}.union(*(_ops(c) for c in expr[1:] if isinstance(c, tuple)))


_ORDER: weakref.WeakKeyDictionary[Lowerer, dict[int, int]] = weakref.WeakKeyDictionary()


def _position(lw: Lowerer) -> dict[int, int]:
    """id(node) -> its index in the lowerer's graph (computed once per lowerer)."""
    if lw not in _ORDER:
        _ORDER[lw] = {id(n): i for i, n in enumerate(lw.g.nodes)}
    return _ORDER[lw]


@dataclass
class Chain:
    """A fused kernel being planned: ``expr`` over ``leaves`` computes ``out``; ``nodes`` are the
    graph nodes it replaces, the first one where the kernel runs."""

    expr: Expr
    leaves: list[Value]
    out: Value
    nodes: list[Node]
    inlined: dict[int, Expr] = field(default_factory=dict)  # id(value) -> its expression

    def copy(self) -> Chain:
        return Chain(self.expr, list(self.leaves), self.out, list(self.nodes), dict(self.inlined))

    def leaf(self, v: Value) -> Expr:
        for i, x in enumerate(self.leaves):
            if x is v:
                return ("in", i)
        self.leaves.append(v)
        return ("in", len(self.leaves) - 1)

    @property
    def dtypes(self) -> list[str]:
        return [x.type.dtype for x in self.leaves]


def _static(v: Value) -> bool:
    return all(isinstance(d, int) for d in v.type.shape) and numel(v.type.shape) > 0


def _sole_reader(lw: Lowerer, v: Value) -> Node | None:
    """The one node that reads ``v`` (None: several, none, or ``v`` is a graph output)."""
    readers = {id(u): u for u in lw.users.get(id(v), [])}
    if id(v) in lw.outputs or len(readers) != 1:
        return None
    return next(iter(readers.values()))


class _Planner:
    """Grows chains of one lowerer from a start node at graph position ``start``: every value
    the kernel reads must be computed before that position, or be computed by an elementwise
    node that the kernel takes in as well (its only reader being in the chain)."""

    def __init__(self, lw: Lowerer, start: int) -> None:
        self.lw, self.start, self.pos = lw, start, _position(lw)

    def ready(self, v: Value) -> bool:
        return v.producer is None or self.pos.get(id(v.producer), self.start) < self.start

    def operand(self, chain: Chain, x: Value, reader: Node) -> Expr | None:
        """The expression of ``reader``'s operand ``x``: a leaf when it is ready at the start,
        else the inlined expression of the node computing it (None if that cannot be)."""
        if self.ready(x):
            return chain.leaf(x)
        if id(x) in chain.inlined:  # read twice
            return chain.inlined[id(x)]
        p = x.producer
        assert p is not None
        if (
            _sole_reader(self.lw, x) is not reader
            or id(p) in self.lw.absorbed
            or len(chain.nodes) >= MAX_CHAIN
            or not _static(x)
            or not typed_accepts(p)
        ):
            return None
        expr = node_expr(p)
        assert expr is not None
        chain.nodes.append(p)
        args = []
        for y in (y for y in p.inputs if y is not None):
            arg = self.operand(chain, y, p)
            if arg is None:
                return None
            args.append(arg)
        out = _substitute(expr, args)
        if not self.cheap_broadcast(out, x, reader.outputs[0]):
            return None
        chain.inlined[id(x)] = out
        return out

    @staticmethod
    def cheap_broadcast(expr: Expr, v: Value, out: Value) -> bool:
        """Whether ``expr`` (computing ``v``) may be recomputed at each element of ``out``."""
        return numel(v.type.shape) >= numel(out.type.shape) or _ops(expr) <= CHEAP_OPS

    def node(self, node: Node) -> Chain | None:
        """The chain of ``node`` alone (with the producers it inlines)."""
        if not _static(node.outputs[0]) or not typed_accepts(node):
            return None
        chain = Chain(("in", 0), [], node.outputs[0], [node])
        return self.apply(chain, node, None)

    def apply(self, chain: Chain, u: Node, v: Value | None) -> Chain | None:
        """``chain`` grown by ``u``, whose operand ``v`` is the chain's value (None: ``u`` is
        the start), on a copy; None if ``u`` cannot join."""
        expr = node_expr(u)
        if expr is None:
            return None
        grown = chain.copy()
        if v is not None:
            grown.nodes.append(u)
        args: list[Expr] = []
        for x in (x for x in u.inputs if x is not None):
            arg = chain.expr if x is v else self.operand(grown, x, u)
            if arg is None:
                return None
            args.append(arg)
        grown.expr, grown.out = _substitute(expr, args), u.outputs[0]
        if typed_expr_dtype(grown.expr, grown.dtypes) != u.outputs[0].type.dtype:
            return None
        if v is not None and not self.cheap_broadcast(chain.expr, v, u.outputs[0]):
            return None
        return grown

    def grow(self, chain: Chain) -> Chain | None:
        """``chain`` with the one reader of its value joined, or None where it ends."""
        u = _sole_reader(self.lw, chain.out)
        if (
            u is None
            or id(u) in self.lw.absorbed
            or len(chain.nodes) >= MAX_CHAIN
            or len(u.outputs) != 1
            or not _static(u.outputs[0])
        ):
            return None
        return self.apply(chain, u, chain.out)


def plan_chain(lw: Lowerer, node: Node) -> Chain | None:
    """The longest chain of elementwise nodes from ``node`` that one kernel computes (None when
    ``node`` itself has no typed kernel)."""
    planner = _Planner(lw, _position(lw)[id(node)])
    chain = planner.node(node)
    while chain is not None and (grown := planner.grow(chain)) is not None:
        chain = grown
    return chain


def emit_chain(lw: Lowerer, chain: Chain, name: str) -> bool:
    """Append the kernel step of ``chain``; its nodes after the first count as absorbed."""
    for u in chain.nodes[1:]:
        lw.absorbed.add(id(u))
        name = f"{name}_{u.op}"
    out, ins, expr, dtypes = chain.out, list(chain.leaves), chain.expr, chain.dtypes
    shape = tuple(int(d) for d in out.type.shape)
    in_shapes = [tuple(int(d) for d in x.type.shape) for x in ins]

    def gen(loc: Callable[[Ref | None], Operand | None]) -> str:
        return ew_kernel(
            name,
            expr,
            loc(out),
            shape,  # type: ignore[arg-type]
            [(loc(x), s) for x, s in zip(ins, in_shapes, strict=True)],
            lw.host.lanes,
            dtypes,
        )

    same = [
        x
        for x, s in zip(ins, in_shapes, strict=True)
        if s == shape and x.type.dtype == out.type.dtype
    ]
    nbytes = sum(numel(v.type.shape) * v.type.itemsize for v in [*ins, out])
    lw.steps.append(
        Step(
            name,
            ins,
            [out],
            gen,
            parallel=worth_splitting(nbytes=nbytes),
            op=chain.nodes[0].op,
            inplace_ok=same,
        )
    )
    return True


def lower_logic(lw: Lowerer, node: Node, name: str) -> bool:
    """Lower a comparison, logical op, ``isnan``, ``where`` or typed ``ew`` node (and the chain
    after it) to one typed elementwise kernel; False (numpy fallback) when it does not type."""
    chain = plan_chain(lw, node)
    return chain is not None and emit_chain(lw, chain, name)


def _chain_first(fp32: Lowering) -> Lowering:
    """``fp32``'s lowering (of an fp32 elementwise op or a cast), except that a node which is
    itself typed, or whose chain reaches a typed op, or a cast with more nodes, becomes one typed
    kernel with that chain. A chain of fp32 ops alone, or a lone cast, keeps ``fp32``."""

    def fn(lw: Lowerer, node: Node, name: str) -> bool:
        typed_node = not fp32.accepts(node)
        chain = plan_chain(lw, node)
        if chain is not None:
            ops = _ops(chain.expr)
            if typed_node or ops & TYPED_OPS or ("cast" in ops and len(chain.nodes) > 1):
                return emit_chain(lw, chain, name)
        return not typed_node and fp32.fn(lw, node, name)

    def accepts(node: Node) -> bool:
        return fp32.accepts(node) or typed_accepts(node)

    return Lowering(fn, accepts)


# The lowerings that a chain may start at besides this module's ("identity" is a view).
CHAIN_STARTS = (
    {op for op in BINARY_OPS | UNARY_OPS if plain_float_op(op)}
    | {"ew", "gelu", "leaky_relu", "cast"}
) - {"identity"}

for _op in sorted(LOGIC_NODE_OPS):
    LOWERINGS[_op] = Lowering(lower_logic, typed_accepts)
for _op in sorted(CHAIN_STARTS & set(LOWERINGS)):
    LOWERINGS[_op] = _chain_first(LOWERINGS[_op])
