"""Lowering: a static-shaped Graph becomes a list of steps, each a generated kernel or a fallback.

Phase 1 (``plan_steps``) picks a lowering per node (a table keyed by op) and records which values
each step reads and writes; phase 2 (``generate``) plans memory over those steps and writes the
LLVM IR of every kernel with concrete operands (``table[slot] + offset``). Nodes without a lowering
run their numpy reference (``fallback``). ``reshape``/``identity`` are zero-copy aliases.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from satura.engine.errors import CodegenError
from satura.engine.graph import Graph, Node, TensorType, Value
from satura.engine.ops import OPS
from satura.engine.shapes import normalize_axis
from satura.targets.codegen import CpuTarget
from satura.targets.elementwise import Expr, ew_kernel, expr_supported
from satura.targets.gemm import GemmSpec, gemm_kernel, pack_b_numpy, pack_kernel
from satura.targets.irmath import (
    ACTIVATIONS,
    BINARY_OPS,
    CAST_TYPES,
    INTRINSICS,
    KERNEL_ONLY,
    UNARY_OPS,
    Emitter,
    cast_declares,
    f32,
)
from satura.targets.kernel import PARALLEL_RUNNER, PRELUDE, Operand, target_support
from satura.targets.memory import Buffer, MemoryPlan
from satura.targets.rows import row_kernel

# Below these a second core costs more than it saves. The native pool hands a kernel's shares to
# a spinning worker in ~1 µs and wakes a sleeping one in a few µs (``python -m benchmarks.run``,
# table "two-core hand-off"), so kernels of ~5 µs and up (0.5 MFLOP, 128 KiB moved) are split.
# Measured on two cores against 2 MFLOP / 256 KiB, A/B in one process: llama_block batch 1
# 299 -> 276 µs, resnet_small batch 1 71.9 -> 69.9 µs, gpt2/bert/resnet batch 8 equal.
PARALLEL_FLOPS = 5e5
PARALLEL_BYTES = 128 << 10


def worth_splitting(flops: float = 0.0, nbytes: float = 0.0) -> bool:
    """Whether a kernel doing ``flops`` and moving ``nbytes`` is worth running on several cores
    (read at call time: tests and the benchmark's hand-off table lower the thresholds)."""
    return flops > PARALLEL_FLOPS or nbytes > PARALLEL_BYTES


# A parallel kernel's work is cut into up to threads × this many shares, handed out on demand, so
# a core busy with another process does not hold the whole kernel up (the cores here are shared).
# Kernels with per-part scratch size it for this many parts.
CHUNKS_PER_THREAD = 4


def balanced_shares(units: int, threads: int) -> int:
    """How many shares to cut a kernel of ``units`` equal work units into (0: unknown, the most)
    for ``threads`` cores that claim shares as they go: the count, between ``threads`` and
    threads × CHUNKS_PER_THREAD, whose busiest core does the fewest units (ties: more shares,
    but no empty ones).
    Measured here: a 3×3 conv of 28 row units ran 1373 µs in 8 shares (4 of 4 units and 4 of
    3), 1210 µs in 4 (7 each) on two cores."""
    most = threads * CHUNKS_PER_THREAD
    if units <= 0:
        return most
    return min(
        range(threads, most + 1), key=lambda s: (-(-s // threads) * -(-units // s), s > units, -s)
    )


@dataclass
class Scratch:
    """A temporary buffer a kernel needs (a runtime-packed B)."""

    name: str
    nbytes: int


Ref = Value | Scratch


@dataclass
class Step:
    """One kernel (``gen`` makes its IR from resolved operands) or one fallback node."""

    name: str
    reads: list[Ref]
    writes: list[Ref]
    gen: Callable[[Callable[[Ref | None], Operand | None]], str] | None = None
    node: Node | None = None
    parallel: bool = False
    op: str = ""
    units: int = 0  # equal work units the kernel's shares divide (0: unknown)
    # Reads the kernel may overwrite with its output: one iteration per element, which reads
    # element i of each of these and then writes element i of the output (elementwise kernels).
    inplace_ok: list[Value] = field(default_factory=list)


@dataclass
class Program:
    """Steps plus everything the runtime needs to bind pointers."""

    steps: list[Step]
    consts: list[Value]  # slots after inputs and outputs
    extra_consts: dict[int, np.ndarray] = field(default_factory=dict)  # id(Value) -> packed data
    alias: dict[int, Value] = field(default_factory=dict)  # id(view) -> storage value


def _is_f32(vals: list[Value | None]) -> bool:
    return all(v is None or v.type.dtype == "float32" for v in vals)


def f32_only(node: Node) -> bool:
    """The dtype check of most lowerings: every operand is float32."""
    return _is_f32([*node.inputs, *node.outputs])


def any_dtype(node: Node) -> bool:
    """The dtype check of lowerings that only move elements (views, copies)."""
    return True


@dataclass(frozen=True)
class Lowering:
    """How one op becomes steps: ``accepts(node)`` checks the operand dtypes the kernel handles;
    ``fn(lowerer, node, name)`` appends steps and returns False when it cannot take this node
    (then the node runs as a numpy fallback)."""

    fn: Callable[[Lowerer, Node, str], bool]
    accepts: Callable[[Node], bool] = f32_only


def numel(shape: tuple[Any, ...]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _work(node: Node) -> float:
    return float(sum(numel(v.type.shape) for v in [*node.inputs, *node.outputs] if v is not None))


class Lowerer:
    """Builds the step list of one graph for one host target."""

    def __init__(self, graph: Graph, host: CpuTarget, threads: int = 1) -> None:
        self.g, self.host, self.threads = graph, host, threads
        self.steps: list[Step] = []
        self.alias: dict[int, Value] = {}
        self.extra: dict[int, np.ndarray] = {}
        self.outputs = {id(v) for v in graph.outputs}
        self.users = graph.users()
        self.absorbed: set[int] = set()  # nodes fused into an earlier kernel

    def post_op(self, v: Value) -> tuple[Node, tuple[Any, ...]] | None:
        """The one elementwise consumer of ``v`` that a kernel can apply before its store, with
        its expression over ``("in", 0)`` = ``v`` (:func:`unary_expr`)."""
        users = self.users.get(id(v), [])
        if id(v) in self.outputs or len(users) != 1:
            return None
        u = users[0]
        if not _is_f32([*u.inputs, *u.outputs]) or len(u.outputs) != 1 or u.inputs[0] is not v:
            return None
        expr = unary_expr(u)
        return None if expr is None else (u, expr)

    def root(self, v: Value) -> Value:
        while id(v) in self.alias:
            v = self.alias[id(v)]
        return v

    def run(self) -> Program:
        for i, node in enumerate(self.g.nodes):
            if id(node) in self.absorbed:
                continue
            lower = LOWERINGS.get(node.op)
            done = False
            if (
                lower is not None
                and lower.accepts(node)
                and all(numel(o.type.shape) > 0 for o in node.outputs)
            ):
                done = lower.fn(self, node, f"k{i}_{node.op}")
            if not done:
                self.steps.append(
                    Step(
                        f"fallback_{node.name}",
                        [x for x in node.inputs if x],
                        list(node.outputs),
                        node=node,
                        op=node.op,
                    )
                )
        consts: dict[int, Value] = {}
        for st in self.steps:
            for r in st.reads:
                if isinstance(r, Value) and r.is_const:
                    consts.setdefault(id(r), r)
        for v in self.g.outputs:
            if v.is_const:
                consts.setdefault(id(v), v)
        return Program(self.steps, list(consts.values()), self.extra, self.alias)

    # -- lowerings --------------------------------------------------------------------------------
    def ew(
        self,
        node: Node,
        name: str,
        expr: Expr,
        ins: Sequence[Value | tuple[Value, tuple[int, ...]]] | None = None,
        out: Value | None = None,
    ) -> bool:
        """One elementwise kernel computing ``expr`` into ``out`` (default: the node's output)
        over ``ins`` (default: the node's present inputs, ``("in", k)`` the k-th). An input may
        come with the shape to broadcast it as (same element count: a [C] parameter read as
        [C, 1, 1]). False when the expression has an op without a lowering."""
        if not expr_supported(expr):
            return False
        out = node.outputs[0] if out is None else out
        given = [x for x in node.inputs if x is not None] if ins is None else list(ins)
        leaves = [
            x if isinstance(x, tuple) else (x, tuple(int(d) for d in x.type.shape)) for x in given
        ]
        shape = tuple(int(d) for d in out.type.shape)
        for x, s in leaves:
            if (
                numel(s) != numel(x.type.shape)
                or len(s) > len(shape)
                or any(a not in (1, b) for a, b in zip(s[::-1], shape[::-1], strict=False))
            ):
                return False
        values = [x for x, _ in leaves]

        def gen(loc: Callable[[Ref | None], Operand | None]) -> str:
            return ew_kernel(
                name,
                expr,
                loc(out),
                shape,  # type: ignore[arg-type]
                [(loc(x), s) for x, s in leaves],
                self.host.lanes,
            )

        same = [x for x, s in leaves if s == shape and x.type.dtype == out.type.dtype]
        nbytes = 4.0 * (numel(shape) + sum(numel(s) for _, s in leaves))
        self.steps.append(
            Step(
                name,
                values,
                [out],
                gen,
                parallel=worth_splitting(nbytes=nbytes),
                op=node.op,
                inplace_ok=same,
            )
        )
        return True

    def const(self, name: str, data: np.ndarray) -> Value:
        """A new fp32 constant operand holding ``data`` (bound like the graph's constants)."""
        arr = np.ascontiguousarray(data, np.float32)
        v = Value(name, TensorType(arr.shape, "float32"), data=arr)
        self.extra[id(v)] = arr
        return v

    def view(self, node: Node, name: str) -> bool:
        src, out = node.inputs[0], node.outputs[0]
        assert src is not None
        if id(out) in self.outputs:
            from satura.targets.layout import flat_copy  # imports this module

            return flat_copy(self, node, name)
        self.alias[id(out)] = src
        return True

    def gemm(
        self,
        node: Node,
        name: str,
        a: Value,
        b: Value | np.ndarray,
        bias: Value | None,
        res: Value | None,
        act: str,
        out: Value | None = None,
    ) -> bool:
        """``out`` (default: the node's output) = act(a·b + bias + res); b a constant (packed
        now) or a value (packed by a step of its own)."""
        out = node.outputs[0] if out is None else out
        oshape = [int(d) for d in out.type.shape]
        ashape = [int(d) for d in a.type.shape]
        bshape = list(b.shape) if isinstance(b, np.ndarray) else [int(d) for d in b.type.shape]
        if act not in ACTIVATIONS or len(ashape) < 2 or len(bshape) < 2:
            return False
        k, n = bshape[-2], bshape[-1]
        if len(bshape) == 2:
            batch, m, b_batched = 1, numel(tuple(ashape[:-1])), False
        elif ashape[:-2] == bshape[:-2] and oshape[:-2] == ashape[:-2]:
            batch, m, b_batched = numel(tuple(ashape[:-2])), ashape[-2], True
        else:
            return False
        if 0 in (k, n, numel(tuple(oshape))):
            return False  # empty products: the reference handles them
        if bias is not None and (
            bias.type.rank == 0 or numel(bias.type.shape) != n or int(bias.type.shape[-1]) != n
        ):
            return False
        if res is not None and [int(d) for d in res.type.shape] != oshape:
            return False
        post = self.post_op(out) if act == "none" and res is None else None
        if (
            post is not None
            and len(post[1]) == 2
            and post[1][1] == ("in", 0)
            and post[1][0] in ACTIVATIONS
        ):
            self.absorbed.add(id(post[0]))
            out, act, name = post[0].outputs[0], post[1][0], f"{name}_{post[1][0]}"
        mr, nr = self.host.gemm_tile
        spec = GemmSpec(
            batch,
            m,
            n,
            k,
            m * k,
            b_batched,
            bias is not None,
            res is not None,
            act,
            mr,
            nr,
            self.host.lanes,
        )
        packed: Ref
        reads: list[Ref] = [x for x in (a, bias, res) if x is not None]
        data = b if isinstance(b, np.ndarray) else (b.data if b.is_const else None)
        if data is not None:
            pv = Value(f"{name}_packed", out.type, data=pack_b_numpy(np.asarray(data), nr))
            self.extra[id(pv)] = pv.data  # type: ignore[assignment]
            packed = pv
        else:
            assert isinstance(b, Value)
            packed = Scratch(f"{name}_bpack", 4 * spec.packed_elems * batch)
            src = b

            def gen_pack(loc: Callable[[Ref | None], Operand | None]) -> str:
                return pack_kernel(
                    f"{name}_pack",
                    batch,
                    k,
                    n,
                    nr,
                    loc(src),  # type: ignore
                    loc(packed),
                )  # type: ignore[arg-type]

            self.steps.append(
                Step(
                    f"{name}_pack",
                    [b],
                    [packed],
                    gen_pack,
                    op="pack",
                    parallel=worth_splitting(2.0 * batch * m * n * k),
                )
            )
        reads.append(packed)

        def gen(loc: Callable[[Ref | None], Operand | None]) -> str:
            return gemm_kernel(
                name,
                spec,
                loc(out),
                loc(a),
                loc(packed),
                loc(bias),  # type: ignore
                loc(res),
            )

        flops = 2.0 * batch * m * n * k
        # One rectangle of the grid a core: the grid is balanced for any part count, and more
        # parts re-read more of A and B (measured here on two cores: 16x1024x256 ran 50 µs in 2
        # shares, 56 in 8).
        self.steps.append(
            Step(
                name,
                reads,
                [out],
                gen,
                parallel=worth_splitting(flops),
                op=node.op,
                units=self.threads,
            )
        )
        return True

    def rows(self, node: Node, name: str, kind: str, axis: int, eps: float) -> bool:
        x, out = node.inputs[0], node.outputs[0]
        assert x is not None
        shape = [int(d) for d in x.type.shape]
        ax = normalize_axis(axis, len(shape))
        if kind in ("softmax", "log_softmax") and ax != len(shape) - 1:
            return False
        rows, n = numel(tuple(shape[:ax])), numel(tuple(shape[ax:]))
        params = [p for p in node.inputs[1:]]
        for p in params:
            if p is not None and numel(p.type.shape) != n:
                return False
        scale = params[0] if params else None
        bias = params[1] if len(params) > 1 else None
        post = self.post_op(out) if kind not in ("softmax", "log_softmax") else None
        expr = None
        if post is not None:
            self.absorbed.add(id(post[0]))
            out, expr = post[0].outputs[0], post[1]
            name = f"{name}_{post[0].op}"

        def gen(loc: Callable[[Ref | None], Operand | None]) -> str:
            return row_kernel(
                name,
                kind,
                rows,
                n,
                loc(out),
                loc(x),
                loc(scale),  # type: ignore
                loc(bias),
                eps,
                expr,
                self.host.lanes,
            )

        self.steps.append(
            Step(
                name,
                [v for v in node.inputs if v is not None],
                [out],
                gen,
                parallel=worth_splitting(nbytes=_work(node) * 4) and rows > 1,
                op=node.op,
                units=rows,
            )
        )
        return True


def _lower_conv(lw: Lowerer, node: Node, name: str) -> bool:
    from satura.targets.conv import lower_conv  # imports this module

    return lower_conv(lw, node, name)


def _lower_max_pool(lw: Lowerer, node: Node, name: str) -> bool:
    from satura.targets.pool import lower_pool  # imports this module

    return lower_pool(lw, node, name, "max")


def _lower_avg_pool(lw: Lowerer, node: Node, name: str) -> bool:
    from satura.targets.pool import lower_pool  # imports this module

    return lower_pool(lw, node, name, "avg")


def _lower_gap(lw: Lowerer, node: Node, name: str) -> bool:
    from satura.targets.pool import lower_gap  # imports this module

    return lower_gap(lw, node, name)


def _lower_layout(lw: Lowerer, node: Node, name: str) -> bool:
    from satura.targets import layout  # imports this module

    fn = {
        "transpose": layout.lower_transpose,
        "slice": layout.lower_slice,
        "split": layout.lower_split,
        "concat": layout.lower_concat,
    }[node.op]
    return fn(lw, node, name)


def _lower_attention(lw: Lowerer, node: Node, name: str) -> bool:
    from satura.targets.attention import lower_attention  # imports this module

    return lower_attention(lw, node, name)


def _lower_ew(lw: Lowerer, node: Node, name: str) -> bool:
    return lw.ew(node, name, node.attrs["expr"])


X: Expr = ("in", 0)


def _const(c: float) -> Expr:
    return ("const", c)


def _finite_attr(node: Node, key: str, default: float) -> float | None:
    """Attribute ``key`` rounded to fp32, as numpy applies a Python float to a float32 array
    (None when it is not finite: the kernel's algebra assumes finite factors)."""
    c = f32(float(node.attrs.get(key, default)))
    return c if math.isfinite(c) else None


def _scalar(v: Value | None) -> float | None:
    """The fp32 value of a one-element constant (None: not one)."""
    if v is None or not v.is_const or numel(v.type.shape) != 1:
        return None
    return f32(float(np.asarray(v.data).reshape(-1)[0]))


def _clip_expr(node: Node) -> Expr | None:
    """clip with constant (or absent) bounds: min(max(x, lo), hi), in the reference's order
    (relu6, a name GEMM and conv kernels apply, for [0, 6])."""
    lo, hi = ([*node.inputs[1:], None, None])[:2]
    if (_scalar(lo), _scalar(hi)) == (0.0, 6.0):
        return ("relu6", X)
    expr = X
    for bound, op in ((lo, "max"), (hi, "min")):
        if bound is None:
            continue
        c = _scalar(bound)
        if c is None:
            return None
        expr = (op, expr, _const(c))
    return expr


# The expressions of the unary ops with attributes (x = ("in", 0)); numpy's maximum/minimum
# semantics keep NaN in each, and each is exact where the reference is a selection:
# relu(x) + a·min(x, 0) is x for x >= 0 and a·x below, including ±inf (a = 0: -inf·0 = NaN).
def _leaky_relu(node: Node) -> Expr | None:
    a = _finite_attr(node, "alpha", 0.01)
    if a is None:
        return None
    if a == f32(0.01):
        return ("leaky_relu", X)  # the kernel op of the default slope (fuses into GEMMs)
    return ("add", ("relu", X), ("mul", ("min", X, _const(0.0)), _const(a)))


def _elu(node: Node) -> Expr | None:
    # relu(x) + a·expm1(min(x, 0)): x > 0 gives x + a·0 = x exactly.
    a = _finite_attr(node, "alpha", 1.0)
    if a is None:
        return None
    return ("add", ("relu", X), ("mul", _const(a), ("expm1", ("min", X, _const(0.0)))))


def _hard_sigmoid(node: Node) -> Expr | None:
    a, b = _finite_attr(node, "alpha", 0.2), _finite_attr(node, "beta", 0.5)
    if a is None or b is None:
        return None
    return ("min", ("max", ("add", ("mul", X, _const(a)), _const(b)), _const(0.0)), _const(1.0))


def _pow_const(node: Node) -> Expr | None:
    c = _scalar(node.inputs[1])
    return None if c is None else ("pow", X, _const(c))


# op -> its expression; clip and pow take constant operands, the others attributes.
_NODE_EXPRS: dict[str, Callable[[Node], Expr | None]] = {
    "leaky_relu": _leaky_relu,
    "elu": _elu,
    "hard_sigmoid": _hard_sigmoid,
    "clip": _clip_expr,
    "pow": _pow_const,
}


def unary_expr(node: Node) -> Expr | None:
    """The kernel expression of an elementwise node whose only non-constant operand is input 0,
    over ``("in", 0)`` (constant operands and attributes folded in); None when it has none."""
    op = node.op
    if op == "ew":
        expr = node.attrs["expr"]
        ok = len(node.inputs) == 1 and expr_supported(expr)
        return expr if ok else None
    if op == "gelu":
        return ("gelu_tanh" if node.attrs.get("approximate") == "tanh" else "gelu", X)
    if op in _NODE_EXPRS:
        return _NODE_EXPRS[op](node)
    if op in UNARY_OPS - KERNEL_ONLY and len(node.inputs) == 1:
        return (op, X)
    return None


def _lower_unary(lw: Lowerer, node: Node, name: str) -> bool:
    """A one-input elementwise op, its attributes folded into the expression."""
    expr = unary_expr(node)
    x = node.inputs[0]
    return expr is not None and x is not None and lw.ew(node, name, expr, [x])


def _lower_clip(lw: Lowerer, node: Node, name: str) -> bool:
    """clip: constant bounds become constants; run-time bounds are broadcast operands."""
    x, lo, hi = ([*node.inputs, None, None])[:3]
    assert x is not None
    ins: list[Value] = [x]
    const = _clip_expr(node)
    if const is not None:
        return lw.ew(node, name, const, ins)
    expr = X
    for bound, op in ((lo, "max"), (hi, "min")):
        if bound is None:
            continue
        c = _scalar(bound)
        if c is not None:
            expr = (op, expr, _const(c))
        else:
            ins.append(bound)
            expr = (op, expr, ("in", len(ins) - 1))
    return lw.ew(node, name, expr, ins)


def _lower_pow(lw: Lowerer, node: Node, name: str) -> bool:
    """pow: a scalar constant exponent is a literal (specialised by the kernel); an array of
    constants of another dtype becomes an fp32 copy (the reference casts it); a run-time
    exponent must be fp32."""
    x, y = node.inputs
    assert x is not None
    assert y is not None
    expr = _pow_const(node)
    if expr is not None:
        return lw.ew(node, name, expr, [x])
    if y.type.dtype != "float32":
        if not y.is_const:
            return False
        y = lw.const(f"{name}_exponent", np.asarray(y.data).astype(np.float32))
    return lw.ew(node, name, ("pow", X, ("in", 1)), [x, y])


def _pow_dtypes(node: Node) -> bool:
    """fp32 base and result; the exponent fp32 or a constant of any numeric dtype."""
    y = node.inputs[1]
    return (
        _is_f32([node.inputs[0], *node.outputs])
        and y is not None
        and (y.type.dtype == "float32" or (y.is_const and np.asarray(y.data).dtype.kind in "biuf"))
    )


def _lower_batch_norm(lw: Lowerer, node: Node, name: str) -> bool:
    """Inference batch norm as one elementwise kernel over [N, C, ...]: with constant
    parameters x·s + t, s = scale/sqrt(var + eps) and t = bias - mean·s folded per channel in
    fp64; otherwise the reference's own expression over the [C] parameters read as [C, 1, ...].
    A following unary op is applied before the store."""
    x, scale, bias, mean, var = node.inputs
    assert x is not None
    out = node.outputs[0]
    shape = tuple(int(d) for d in out.type.shape)
    params = [scale, bias, mean, var]
    if len(shape) < 2 or any(p is None or numel(p.type.shape) != shape[1] for p in params):
        return False
    pshape = (shape[1],) + (1,) * (len(shape) - 2)
    eps = float(node.attrs.get("epsilon", 1e-5))
    if all(p.is_const for p in params):  # type: ignore[union-attr]
        sc, bi, mu, va = (
            np.asarray(p.data, np.float64).reshape(-1)  # type: ignore[union-attr]
            for p in params
        )
        s = sc / np.sqrt(va + eps)
        ins: list[Value | tuple[Value, tuple[int, ...]]] = [
            x,
            (lw.const(f"{name}_s", s), pshape),
            (lw.const(f"{name}_t", bi - mu * s), pshape),
        ]
        expr: Expr = ("add", ("mul", X, ("in", 1)), ("in", 2))
    else:
        ins = [x, *[(p, pshape) for p in params]]  # type: ignore[misc]
        expr = (
            "add",
            (
                "mul",
                ("div", ("sub", X, ("in", 3)), ("sqrt", ("add", ("in", 4), _const(f32(eps))))),
                ("in", 1),
            ),
            ("in", 2),
        )
    post = lw.post_op(out)
    if post is not None:
        lw.absorbed.add(id(post[0]))
        out, name = post[0].outputs[0], f"{name}_{post[0].op}"
        expr = _substitute_in0(post[1], expr)
    return lw.ew(node, name, expr, ins, out)


def _substitute_in0(expr: Expr, inner: Expr) -> Expr:
    """``expr`` with every ``("in", 0)`` replaced by ``inner``."""
    if expr[0] == "in":
        return inner
    if expr[0] == "const":
        return expr
    return (expr[0], *(_substitute_in0(c, inner) for c in expr[1:]))


def _lower_binary(lw: Lowerer, node: Node, name: str) -> bool:
    return lw.ew(node, name, (node.op, ("in", 0), ("in", 1)))


def _lower_mod(lw: Lowerer, node: Node, name: str) -> bool:
    """Float mod: C fmod (fmod=1) or numpy's sign-of-divisor remainder (fmod=0)."""
    op = "fmod" if node.attrs.get("fmod", 0) else "floor_mod"
    return lw.ew(node, name, (op, ("in", 0), ("in", 1)))


def _lower_linear(lw: Lowerer, node: Node, name: str) -> bool:
    ins = [*node.inputs, None, None]
    x, w, b, r = ins[:4]
    assert x is not None
    assert w is not None
    return lw.gemm(node, name, x, w, b, r, node.attrs.get("act", "none"))


def _lower_matmul(lw: Lowerer, node: Node, name: str) -> bool:
    a, b = node.inputs
    assert a is not None
    assert b is not None
    return lw.gemm(node, name, a, b, None, None, "none")


def _lower_onnx_gemm(lw: Lowerer, node: Node, name: str) -> bool:
    at = node.attrs
    a, b = node.inputs[0], node.inputs[1]
    c = node.inputs[2] if len(node.inputs) > 2 else None
    assert a is not None
    assert b is not None
    if at.get("trans_a", 0) or at.get("alpha", 1.0) != 1.0 or at.get("beta", 1.0) != 1.0:
        return False
    if at.get("trans_b", 0):
        if not b.is_const:
            return False
        return lw.gemm(node, name, a, np.ascontiguousarray(np.asarray(b.data).T), c, None, "none")
    return lw.gemm(node, name, a, b, c, None, "none")


def _lower_norm(lw: Lowerer, node: Node, name: str) -> bool:
    return lw.rows(
        node, name, node.op, node.attrs.get("axis", -1), float(node.attrs.get("epsilon", 1e-5))
    )


def _lower_softmax(lw: Lowerer, node: Node, name: str) -> bool:
    return lw.rows(node, name, node.op, node.attrs.get("axis", -1), 0.0)


def _lower_view(lw: Lowerer, node: Node, name: str) -> bool:
    return lw.view(node, name)


def _attention_dtypes(node: Node) -> bool:
    """float32 operands; the mask (input 3) may be bool."""
    mask = node.inputs[3] if len(node.inputs) > 3 else None
    return _is_f32([v for v in node.inputs if v is not mask] + node.outputs) and (
        mask is None or mask.type.dtype in ("float32", "bool")
    )


def _lower_cast(lw: Lowerer, node: Node, name: str) -> bool:
    from satura.targets.layout import flat_copy  # imports this module

    return flat_copy(lw, node, name)


def _cast_dtypes(node: Node) -> bool:
    return all(v is not None and v.type.dtype in CAST_TYPES for v in [*node.inputs, *node.outputs])


LOWERINGS: dict[str, Lowering] = {
    **{
        op: Lowering(fn)
        for op, fn in {
            "ew": _lower_ew,
            "linear": _lower_linear,
            "matmul": _lower_matmul,
            "gemm": _lower_onnx_gemm,
            "layer_norm": _lower_norm,
            "rms_norm": _lower_norm,
            "softmax": _lower_softmax,
            "log_softmax": _lower_softmax,
            "conv": _lower_conv,
            "max_pool": _lower_max_pool,
            "avg_pool": _lower_avg_pool,
            "global_avg_pool": _lower_gap,
            **{
                op: _lower_unary
                for op in UNARY_OPS | {"gelu", "leaky_relu", "elu", "hard_sigmoid"}
                if op in OPS and op != "identity"
            },
            **{op: _lower_binary for op in BINARY_OPS - KERNEL_ONLY},
            "mod": _lower_mod,
            "clip": _lower_clip,
            "batch_norm": _lower_batch_norm,
        }.items()
    },
    "pow": Lowering(_lower_pow, _pow_dtypes),
    **{op: Lowering(_lower_view, any_dtype) for op in ("reshape", "identity")},
    **{op: Lowering(_lower_layout, any_dtype) for op in ("transpose", "slice", "split", "concat")},
    "attention": Lowering(_lower_attention, _attention_dtypes),
    "cast": Lowering(_lower_cast, _cast_dtypes),
}


@dataclass(frozen=True)
class InPlace:
    """One in-place decision: step ``step`` writes ``output`` over ``input``'s buffer when the
    aliasing proof says so (``proof`` True); otherwise (False: refuted, None: Z3 could not tell)
    the output keeps a buffer of its own."""

    step: str
    input: str
    output: str
    proof: bool | None

    @property
    def reused(self) -> bool:
        return self.proof is True


@functools.lru_cache(maxsize=4096)
def _inplace_proof(shape: tuple[int, ...]) -> bool | None:
    """Z3's verdict for an elementwise kernel over ``shape`` writing over its same-shaped input
    (one proof per shape: the access pattern depends on nothing else)."""
    from satura.engine.verify.alias import StridedView, prove_inplace_safe

    view = StridedView.contiguous(shape)
    return prove_inplace_safe(view, [view], order="any")


def plan_inplace(program: Program, graph: Graph, root: Callable[[Value], Value]) -> list[InPlace]:
    """Let elementwise kernels write over an input that dies at that step, where
    :func:`satura.engine.verify.alias.prove_inplace_safe` proves that no iteration reads an
    element another one wrote. A proved reuse becomes an alias (output -> input's storage) in
    ``program.alias``, so the memory plan gives both one buffer."""
    external = {id(v) for v in graph.inputs} | {id(v) for v in graph.outputs}
    last: dict[int, int] = {}
    for i, st in enumerate(program.steps):
        for r in st.reads:
            if isinstance(r, Value):
                last[id(root(r))] = i
    out: list[InPlace] = []
    for i, st in enumerate(program.steps):
        if not st.inplace_ok or len(st.writes) != 1 or not isinstance(st.writes[0], Value):
            continue
        dst = st.writes[0]
        if id(dst) in external or root(dst) is not dst:
            continue
        for x in st.inplace_ok:
            src = root(x)
            if (
                src.is_const
                or id(src) in external
                or last.get(id(src)) != i
                or src.type.dtype != dst.type.dtype
                or numel(src.type.shape) != numel(dst.type.shape)
            ):
                continue
            proof = _inplace_proof(tuple(int(d) for d in dst.type.shape))
            out.append(InPlace(st.name, x.name, dst.name, proof))
            if proof is True:
                program.alias[id(dst)] = src
                break
    return out


def lifetimes(program: Program, graph: Graph, root: Callable[[Value], Value]) -> list[Buffer]:
    """Intermediate buffers (not inputs, outputs or constants) with their step intervals."""
    external = {id(v) for v in graph.inputs} | {id(v) for v in graph.outputs}
    spans: dict[int, list[Any]] = {}
    for i, st in enumerate(program.steps):
        for r in [*st.writes, *st.reads]:
            if isinstance(r, Value):
                r = root(r)
                if r.is_const or id(r) in external:
                    continue
                size = (
                    4 * numel(r.type.shape)
                    if r.type.dtype == "float32"
                    else (r.type.itemsize * numel(r.type.shape))
                )
            else:
                size = r.nbytes
            span = spans.setdefault(id(r), [r, size, i, i])
            span[3] = i
    return [Buffer(id(r), size, first, last) for r, size, first, last in spans.values()]


def generate(
    program: Program,
    graph: Graph,
    plan: MemoryPlan,
    slot_of: Callable[[Ref], int | None],
    root: Callable[[Value], Value],
    arch: str,
) -> str:
    """The whole module's LLVM IR for the ISA ``arch``, operands resolved through ``slot_of`` and
    the memory plan: the target-neutral kernels, then the ISA's fence, spin hint and futex."""

    def loc(r: Ref | None) -> Operand | None:
        if r is None:
            return None
        if isinstance(r, Value):
            r = root(r)
        slot = slot_of(r)
        if slot is not None:
            return Operand(slot)
        if id(r) not in plan.offsets:
            raise CodegenError(f"no buffer was planned for {r!r}")
        return Operand(0, plan.offsets[id(r)])

    Emitter.reset_names()  # the same graph must give the same text (the cache key)
    parts = [PRELUDE, *INTRINSICS, cast_declares(), PARALLEL_RUNNER]
    for st in program.steps:
        if st.gen is not None:
            parts.append(st.gen(loc))
    parts.append(target_support(arch))
    return share_functions("\n".join(parts) + "\n")


_DEFINE = re.compile(r"\n(?=define )")
_NAME = re.compile(r"define [^@]*@([\w.$]+)\(")
_REF = re.compile(r"@([\w.$]+)")
_LOCAL = re.compile(r"%[\w.$]+")
_GLOBAL = re.compile(r"@([\w.$]+) = internal unnamed_addr constant ")


def _alpha(fn: str) -> str:
    """``fn`` with its local names numbered in order of first use: equal for two functions that
    differ only in what their emitters named the values (a counter running over the module)."""
    names: dict[str, str] = {}
    return _LOCAL.sub(lambda m: names.setdefault(m.group(0), f"%{len(names)}"), fn)


def share_functions(ir: str) -> str:
    """``ir`` with each internal function that equals another one but for its name dropped, its
    callers calling the one kept. A model's repeated layers lower to identical kernel bodies (they
    differ in their exported wrappers' table slots only), so LLVM optimizes and compiles each body
    once (functions equal up to the names of their local values count as equal). Repeats until
    no function is left to merge (a merge can make callers equal)."""
    keys: dict[str, str] = {}  # a function's text (its name taken out) -> its _alpha
    while True:
        seen: dict[str, str] = {}
        rename: dict[str, str] = {}
        for line in ir.splitlines():  # internal constants (a kernel's work grid)
            g = _GLOBAL.match(line)
            if g is not None:
                key = line[g.end(1) :]
                rename[g.group(1)] = seen.setdefault(key, g.group(1))
        rename = {k: v for k, v in rename.items() if k != v}
        if rename:
            kept_lines = [
                line
                for line in ir.splitlines()
                if (g := _GLOBAL.match(line)) is None or g.group(1) not in rename
            ]
            ir = "\n".join(kept_lines) + "\n"
        pieces = _DEFINE.split(ir)
        seen = {}
        for p in pieces:
            if not p.startswith("define internal"):
                continue
            name = _NAME.match(p)
            if name is None:
                continue
            n = name.group(1)
            text = p.replace(f"@{n}(", "@(", 1)
            key = keys.get(text) or keys.setdefault(text, _alpha(text))
            if key in seen:
                rename[n] = seen[key]
            else:
                seen[key] = n
        if not rename:
            return ir
        kept = [p for p in pieces if (m := _NAME.match(p)) is None or m.group(1) not in rename]
        ir = _REF.sub(lambda m, r=rename: "@" + r.get(m.group(1), m.group(1)), "\n".join(kept))


# Lowerings kept in modules of their own add themselves to LOWERINGS when imported (they import
# this module, so they are imported last). logic comes last of all: it wraps the lowerings that
# can start a typed elementwise chain, which must all be registered by then.
from satura.targets import indexing, recurrent, reductions, resize, scatter  # noqa: E402,F401,I001
from satura.targets import logic  # noqa: E402, F401
