"""ONNX export: a satura Graph written as a valid ONNX model (``satura optimize --out OPT.onnx``).

Each satura op has one writer in ``WRITERS`` (a table keyed by op name). Ops with an ONNX
equivalent become standard ONNX nodes (opset 21; 26 when a CumProd is written); fused ops are
decomposed into standard nodes where that is exact (``linear``, ``ew``, ``rms_norm``, a conv's
activation, ``attention`` of static shapes), and otherwise written in the ``ai.satura``
domain (``attention`` of symbolic shapes, symbolic reshapes) with their attributes, which
:func:`~satura.engine.onnx_import.load_onnx` reads back. The file is written to a temporary name
and renamed, so a failed export leaves nothing half-written.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import sympy
from onnx import helper, numpy_helper
from satura.engine.errors import ModelError
from satura.engine.graph import Graph, Node, TensorType, Value
from satura.engine.ops import OPS

OPSET = 21
SATURA_DOMAIN = "ai.satura"

Writer = Callable[["ExportCtx", Node], None]
WRITERS: dict[str, Writer] = {}


def writer(*ops: str) -> Callable[[Writer], Writer]:
    """Register a function as the ONNX writer of the given satura ops."""

    def deco(fn: Writer) -> Writer:
        for op in ops:
            WRITERS[op] = fn
        return fn

    return deco


def camel(op: str) -> str:
    """``layer_norm`` -> ``LayerNorm`` (the op type used in the ai.satura domain)."""
    return "".join(p.capitalize() for p in op.split("_"))


def _dim_proto(d: Any) -> Any:
    return int(d) if isinstance(d, int) else str(d)


def _value_info(v: Value, name: str | None = None) -> onnx.ValueInfoProto:
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(v.type.dtype))
    return helper.make_tensor_value_info(
        name or v.name, elem, [_dim_proto(d) for d in v.type.shape]
    )


class ExportCtx:
    """Collects ONNX nodes and initializers while the graph's nodes are written."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.names: set[str] = {v.name for v in graph.inputs}
        self.uses_satura = False
        self.opset = OPSET  # raised by a writer of a newer op (CumProd: 26)
        self._n = 0

    def name_of(self, v: Value | None) -> str:
        return "" if v is None else v.name

    def fresh(self, hint: str) -> str:
        self._n += 1
        name = f"{hint}__x{self._n}"
        while name in self.names:
            self._n += 1
            name = f"{hint}__x{self._n}"
        self.names.add(name)
        return name

    def const(self, arr: Any, hint: str, dtype: Any = None) -> str:
        name = self.fresh(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(arr, dtype=dtype), name))
        return name

    def add(
        self, op_type: str, ins: list[str], outs: list[str], domain: str = "", **attrs: Any
    ) -> None:
        if domain == SATURA_DOMAIN:
            self.uses_satura = True
        self.nodes.append(
            helper.make_node(
                op_type, ins, outs, name=self.fresh(op_type), domain=domain or None, **attrs
            )
        )

    def dims_tensor(self, dims: tuple[Any, ...]) -> str | None:
        """A 1-D int64 tensor holding ``dims``; symbolic ones computed at run time from the
        inputs' shapes (Shape, Add, Mul, Div). None when an expression has no such form."""
        if all(isinstance(d, int) for d in dims):
            return self.const(list(dims), "shape", np.int64)
        parts = [self._dim(d) for d in dims]
        if any(p is None for p in parts):
            return None
        out = self.fresh("dims")
        self.add("Concat", parts, [out], axis=0)  # type: ignore[arg-type]
        return out

    def _symbol_source(self, sym: sympy.Symbol) -> tuple[str, int] | None:
        for v in self.graph.inputs:
            for i, d in enumerate(v.type.shape):
                if d == sym:
                    return v.name, i
        return None

    def _dim(self, d: Any) -> str | None:
        d = sympy.sympify(d)
        if d.is_Integer:
            return self.const([int(d)], "dim", np.int64)
        if d.is_Symbol:
            src = self._symbol_source(d)
            if src is None:
                return None
            out = self.fresh(f"dim_{d}")
            self.add("Shape", [src[0]], [out], start=src[1], end=src[1] + 1)
            return out
        if isinstance(d, sympy.floor):
            return self._dim(d.args[0])  # x / k of positive ints: Div floors
        if d.is_Add or d.is_Mul:
            coeff, rest = d.as_coeff_Mul() if d.is_Mul else (sympy.Integer(1), d)
            args = (
                list(rest.args) if (rest.is_Add or rest.is_Mul) and rest.func == d.func else [rest]
            )
            names = [self._dim(a) for a in args]
            if any(n is None for n in names):
                return None
            cur = names[0]
            for n in names[1:]:
                nxt = self.fresh("dim")
                self.add("Add" if d.is_Add else "Mul", [cur, n], [nxt])  # type: ignore[list-item]
                cur = nxt
            p, q = sympy.fraction(coeff)
            for val, op in ((int(p), "Mul"), (int(q), "Div")):
                if val != 1:
                    nxt = self.fresh("dim")
                    self.add(op, [cur, self.const([val], "k", np.int64)], [nxt])  # type: ignore
                    cur = nxt
            return cur
        return None

    def ins(self, node: Node) -> list[str]:
        return [self.name_of(v) for v in node.inputs]

    def outs(self, node: Node) -> list[str]:
        return [o.name for o in node.outputs]


# -- the ai.satura fallback ----------------------------------------------------------------------
def encode_attr(v: Any) -> Any:
    """An attribute value as something ``helper.make_attribute`` accepts (dims as strings)."""
    if isinstance(v, sympy.Basic):
        return str(v)
    if isinstance(v, tuple) and any(isinstance(x, (sympy.Basic, tuple)) for x in v):
        return repr(tuple(str(x) if isinstance(x, sympy.Basic) else x for x in v))
    if v is None:
        return "None"
    if isinstance(v, tuple) and not v:
        return "()"
    return v


def _satura(ctx: ExportCtx, node: Node) -> None:
    """The node as itself in the ``ai.satura`` domain, which load_onnx reads back."""
    attrs = {k: encode_attr(v) for k, v in node.attrs.items()}
    ctx.add(camel(node.op), ctx.ins(node), ctx.outs(node), domain=SATURA_DOMAIN, **attrs)


@writer("attention")
def _attention(ctx: ExportCtx, node: Node) -> None:
    """Standard nodes (shared kv heads repeated, MatMul, Mul, mask, causal Where, Softmax,
    MatMul: the op's reference, step for step) when the shapes are static; the ``ai.satura`` op
    otherwise."""
    if not all(v.type.is_static for v in node.inputs if v is not None):
        _satura(ctx, node)
        return
    a = OPS["attention"].with_defaults(node.attrs)
    q, k, v = node.inputs[:3]
    mask = node.inputs[3] if len(node.inputs) > 3 else None
    assert q is not None
    assert k is not None
    assert v is not None
    dt = q.type.dtype
    hq, sq = q.type.shape[-3], q.type.shape[-2]
    hkv, sk = k.type.shape[-3], k.type.shape[-2]
    kv = []
    for t in (k, v):
        name = t.name
        if hkv != hq:  # query head h reads kv head h // (hq / hkv)
            lead, rest = tuple(t.type.shape[:-3]), tuple(t.type.shape[-2:])
            one, wide = ctx.fresh("kv1"), ctx.fresh("kvrep")
            ctx.add("Reshape", [name, ctx.const((*lead, hkv, 1, *rest), "shape", np.int64)], [one])
            ctx.add(
                "Expand",
                [one, ctx.const((*lead, hkv, hq // hkv, *rest), "shape", np.int64)],
                [wide],
            )
            name = ctx.fresh("kvh")
            ctx.add("Reshape", [wide, ctx.const((*lead, hq, *rest), "shape", np.int64)], [name])
        kv.append(name)
    r = q.type.rank
    kt, s = ctx.fresh("kt"), ctx.fresh("s")
    ctx.add("Transpose", [kv[0]], [kt], perm=[*range(r - 2), r - 1, r - 2])
    ctx.add("MatMul", [q.name, kt], [s])
    scaled = ctx.fresh("scaled")
    ctx.add("Mul", [s, ctx.const(a["scale"], "scale", dt)], [scaled])
    if mask is not None:
        masked = ctx.fresh("masked")
        if mask.type.dtype == "bool":
            ctx.add("Where", [mask.name, scaled, ctx.const(a["mask_fill"], "fill", dt)], [masked])
        else:
            ctx.add("Add", [scaled, mask.name], [masked])
        scaled = masked
    if a["causal"]:
        hidden = np.triu(np.ones((sq, sk), dtype=bool), k=1 + sk - sq)
        causal = ctx.fresh("causal")
        ctx.add(
            "Where", [ctx.const(hidden, "future"), ctx.const(-np.inf, "ninf", dt), scaled], [causal]
        )
        scaled = causal
    p = ctx.fresh("p")
    ctx.add("Softmax", [scaled], [p], axis=-1)
    ctx.add("MatMul", [p, kv[1]], [node.outputs[0].name])


# -- standard ops ------------------------------------------------------------------------------
def _same(onnx_op: str) -> Writer:
    def w(ctx: ExportCtx, node: Node) -> None:
        ctx.add(onnx_op, ctx.ins(node), ctx.outs(node))

    return w


for _info in OPS.values():
    if _info.traits & {"unary", "binary"} and not _info.attrs and _info.onnx:
        WRITERS[_info.name] = _same(_info.onnx[0])
WRITERS["where"] = _same("Where")
WRITERS["matmul"] = _same("MatMul")
WRITERS["global_avg_pool"] = _same("GlobalAveragePool")
WRITERS["nonzero"] = _same("NonZero")


def _act(ctx: ExportCtx, act: str, x: str, out: str) -> None:
    """out = act(x) in standard ONNX nodes."""
    if act == "none":
        ctx.add("Identity", [x], [out])
    elif act in ("gelu", "gelu_tanh"):
        ctx.add("Gelu", [x], [out], approximate="tanh" if act == "gelu_tanh" else "none")
    elif act == "silu":
        s = ctx.fresh("sig")
        ctx.add("Sigmoid", [x], [s])
        ctx.add("Mul", [x, s], [out])
    else:
        ctx.add({"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh"}[act], [x], [out])


@writer("silu")
def _silu(ctx: ExportCtx, node: Node) -> None:
    _act(ctx, "silu", ctx.name_of(node.inputs[0]), node.outputs[0].name)


@writer("gelu")
def _gelu(ctx: ExportCtx, node: Node) -> None:
    ctx.add(
        "Gelu", ctx.ins(node), ctx.outs(node), approximate=node.attrs.get("approximate", "none")
    )


@writer("leaky_relu")
def _leaky(ctx: ExportCtx, node: Node) -> None:
    ctx.add("LeakyRelu", ctx.ins(node), ctx.outs(node), alpha=float(node.attrs.get("alpha", 0.01)))


@writer("cast")
def _cast(ctx: ExportCtx, node: Node) -> None:
    to = helper.np_dtype_to_tensor_dtype(np.dtype(node.attrs["to"]))
    ctx.add("Cast", ctx.ins(node), ctx.outs(node), to=to)


@writer("unique")
def _unique(ctx: ExportCtx, node: Node) -> None:
    axis = node.attrs.get("axis")
    at = {} if axis is None else {"axis": int(axis)}
    ctx.add("Unique", ctx.ins(node), ctx.outs(node), sorted=int(node.attrs.get("sorted", 1)), **at)


@writer("nms")
def _nms(ctx: ExportCtx, node: Node) -> None:
    ctx.add(
        "NonMaxSuppression",
        ctx.ins(node),
        ctx.outs(node),
        center_point_box=int(node.attrs.get("center_point_box", 0)),
    )


@writer("clip")
def _clip(ctx: ExportCtx, node: Node) -> None:
    ctx.add("Clip", ctx.ins(node), ctx.outs(node))


@writer("gemm")
def _gemm(ctx: ExportCtx, node: Node) -> None:
    a = OPS["gemm"].with_defaults(node.attrs)
    ctx.add(
        "Gemm",
        ctx.ins(node),
        ctx.outs(node),
        transA=a["trans_a"],
        transB=a["trans_b"],
        alpha=float(a["alpha"]),
        beta=float(a["beta"]),
    )


@writer("linear")
def _linear(ctx: ExportCtx, node: Node) -> None:
    x, w, b, r = [*node.inputs, None, None][:4]
    out = node.outputs[0].name
    cur = ctx.fresh("mm")
    ctx.add("MatMul", [ctx.name_of(x), ctx.name_of(w)], [cur])
    if b is not None:
        nxt = ctx.fresh("bias")
        ctx.add("Add", [cur, b.name], [nxt])
        cur = nxt
    act = node.attrs.get("act", "none")
    if r is None:
        _act(ctx, act, cur, out)
        return
    nxt = ctx.fresh("act")
    _act(ctx, act, cur, nxt)
    ctx.add("Add", [nxt, r.name], [out])


@writer("ew")
def _ew(ctx: ExportCtx, node: Node) -> None:
    from satura.engine.ops.fused import ALIASES

    dtype = node.outputs[0].type.dtype
    first = next((v for v in node.inputs if v is not None), None)
    const_dtype = first.type.dtype if first is not None else dtype

    def emit(e: Any, out: str | None) -> str:
        if e[0] == "in":
            name = ctx.name_of(node.inputs[int(e[1])])
            if out is None:
                return name
            ctx.add("Identity", [name], [out])
            return out
        if e[0] == "const":
            name = ctx.const(e[1], "k", dtype=const_dtype)
            if out is not None:
                ctx.add("Identity", [name], [out])
                return out
            return name
        kids = [emit(c, None) for c in e[1:]]
        dst = out or ctx.fresh(e[0])
        op, attrs = ALIASES.get(e[0], (e[0], {}))
        fake = Node(op, [], attrs, "ew")
        _write_simple(ctx, fake, kids, [dst])
        return dst

    emit(node.attrs["expr"], node.outputs[0].name)


def _write_simple(ctx: ExportCtx, node: Node, ins: list[str], outs: list[str]) -> None:
    """Write an elementwise op on named tensors (used inside ``ew``)."""
    info = OPS[node.op]
    if node.op == "gelu":
        ctx.add("Gelu", ins, outs, approximate=node.attrs.get("approximate", "none"))
    elif node.op == "silu":
        _act(ctx, "silu", ins[0], outs[0])
    elif info.onnx:
        ctx.add(info.onnx[0], ins, outs)
    else:
        raise ModelError(f"ew: elementwise op '{node.op}' has no ONNX form")


@writer("softmax", "log_softmax")
def _softmax(ctx: ExportCtx, node: Node) -> None:
    ctx.add(
        "Softmax" if node.op == "softmax" else "LogSoftmax",
        ctx.ins(node),
        ctx.outs(node),
        axis=int(node.attrs.get("axis", -1)),
    )


def _static_tail(v: Value, axis: int) -> tuple[int, ...] | None:
    tail = v.type.shape[axis:]
    return tuple(tail) if all(isinstance(d, int) for d in tail) else None  # type: ignore


@writer("layer_norm")
def _layer_norm(ctx: ExportCtx, node: Node) -> None:
    a = OPS["layer_norm"].with_defaults(node.attrs)
    x = node.inputs[0]
    assert x is not None
    axis = a["axis"] % x.type.rank
    ins = ctx.ins(node) + [""] * (3 - len(node.inputs))
    if not ins[1]:  # ONNX requires Scale
        tail = _static_tail(x, axis)
        if tail is None:
            _satura(ctx, node)
            return
        ins[1] = ctx.const(np.ones(tail), "ones", dtype=x.type.dtype)
    ctx.add(
        "LayerNormalization",
        [i for i in ins if i] if not ins[2] else ins,
        ctx.outs(node),
        axis=axis,
        epsilon=float(a["epsilon"]),
    )


@writer("rms_norm")
def _rms_norm(ctx: ExportCtx, node: Node) -> None:
    a = OPS["rms_norm"].with_defaults(node.attrs)
    x = node.inputs[0]
    assert x is not None
    axes = ctx.const(list(range(a["axis"] % x.type.rank, x.type.rank)), "axes", np.int64)
    sq, ms, den, y = (ctx.fresh(h) for h in ("sq", "ms", "den", "y"))
    ctx.add("Mul", [x.name, x.name], [sq])
    ctx.add("ReduceMean", [sq, axes], [ms], keepdims=1)
    ctx.add("Add", [ms, ctx.const(a["epsilon"], "eps", x.type.dtype)], [den])
    root = ctx.fresh("root")
    ctx.add("Sqrt", [den], [root])
    scale = node.inputs[1] if len(node.inputs) > 1 else None
    out = node.outputs[0].name
    ctx.add("Div", [x.name, root], [y if scale is not None else out])
    if scale is not None:
        ctx.add("Mul", [y, scale.name], [out])


@writer("batch_norm")
def _batch_norm(ctx: ExportCtx, node: Node) -> None:
    ctx.add(
        "BatchNormalization",
        ctx.ins(node),
        ctx.outs(node),
        epsilon=float(node.attrs.get("epsilon", 1e-5)),
    )


@writer("conv")
def _conv(ctx: ExportCtx, node: Node) -> None:
    a = OPS["conv"].with_defaults(node.attrs)
    w = node.inputs[1]
    assert w is not None
    kw: dict[str, Any] = {"group": a["group"], "kernel_shape": list(w.type.shape[2:])}
    for k in ("strides", "pads", "dilations"):
        if a[k] is not None:
            kw[k] = list(a[k])
    if a["act"] == "none":
        ctx.add("Conv", ctx.ins(node), ctx.outs(node), **kw)
        return
    tmp = ctx.fresh("conv")
    ctx.add("Conv", ctx.ins(node), [tmp], **kw)
    _act(ctx, a["act"], tmp, node.outputs[0].name)


@writer("max_pool", "avg_pool")
def _pool(ctx: ExportCtx, node: Node) -> None:
    a = OPS[node.op].with_defaults(node.attrs)
    kw: dict[str, Any] = {"kernel_shape": list(a["kernel"]), "ceil_mode": a["ceil_mode"]}
    for k in ("strides", "pads", "dilations"):
        if a.get(k) is not None:
            kw[k] = list(a[k])
    if node.op == "avg_pool":
        kw["count_include_pad"] = a["count_include_pad"]
    ctx.add(
        "MaxPool" if node.op == "max_pool" else "AveragePool", ctx.ins(node), ctx.outs(node), **kw
    )


_REDUCE = {
    "reduce_sum": "ReduceSum",
    "reduce_mean": "ReduceMean",
    "reduce_max": "ReduceMax",
    "reduce_min": "ReduceMin",
    "reduce_prod": "ReduceProd",
}


@writer(*_REDUCE)
def _reduce(ctx: ExportCtx, node: Node) -> None:
    a = OPS[node.op].with_defaults(node.attrs)
    ins = ctx.ins(node)
    if a["axes"] is not None:
        ins.append(ctx.const(list(a["axes"]), "axes", np.int64))
    ctx.add(_REDUCE[node.op], ins, ctx.outs(node), keepdims=a["keepdims"])


@writer("argmax", "argmin")
def _arg(ctx: ExportCtx, node: Node) -> None:
    a = OPS[node.op].with_defaults(node.attrs)
    ctx.add(
        "ArgMax" if node.op == "argmax" else "ArgMin",
        ctx.ins(node),
        ctx.outs(node),
        axis=a["axis"],
        keepdims=a["keepdims"],
        select_last_index=a["select_last_index"],
    )


@writer("nll_loss")
def _nll(ctx: ExportCtx, node: Node) -> None:
    a = OPS["nll_loss"].with_defaults(node.attrs)
    kw: dict[str, Any] = {"reduction": a["reduction"]}
    if a["ignore_index"] is not None:
        kw["ignore_index"] = a["ignore_index"]
    ctx.add("NegativeLogLikelihoodLoss", ctx.ins(node), ctx.outs(node), **kw)


@writer("mod")
def _mod(ctx: ExportCtx, node: Node) -> None:
    ctx.add("Mod", ctx.ins(node), ctx.outs(node), fmod=int(node.attrs.get("fmod", 0)))


@writer("bitcast")
def _bitcast(ctx: ExportCtx, node: Node) -> None:
    ctx.opset = max(ctx.opset, 26)  # BitCast came in opset 26
    to = helper.np_dtype_to_tensor_dtype(np.dtype(node.attrs["to"]))
    ctx.add("BitCast", ctx.ins(node), ctx.outs(node), to=to)


@writer("shift_left", "shift_right")
def _shift(ctx: ExportCtx, node: Node) -> None:
    way = "LEFT" if node.op == "shift_left" else "RIGHT"
    if np.dtype(node.outputs[0].type.dtype).kind == "i":
        ctx.opset = max(ctx.opset, 28)  # signed shifts came in opset 28
    ctx.add("BitShift", ctx.ins(node), ctx.outs(node), direction=way)


@writer("gather_elements")
def _gather_elements(ctx: ExportCtx, node: Node) -> None:
    ctx.add("GatherElements", ctx.ins(node), ctx.outs(node), axis=int(node.attrs.get("axis", 0)))


@writer("elu", "hard_sigmoid")
def _unary_attrs(ctx: ExportCtx, node: Node) -> None:
    kw = {k: float(v) for k, v in OPS[node.op].with_defaults(node.attrs).items()}
    ctx.add(camel(node.op), ctx.ins(node), ctx.outs(node), **kw)


@writer("transpose")
def _transpose(ctx: ExportCtx, node: Node) -> None:
    ctx.add("Transpose", ctx.ins(node), ctx.outs(node), perm=list(node.attrs["perm"]))


def _shape_operand(x: TensorType, dims: tuple[Any, ...], zero_ok: bool) -> list[int] | None:
    """Static ONNX shape values for ``dims``: symbolic dims become 0 (copy x's dim at the same
    position, when ``zero_ok``) or one -1. None when that cannot express them."""
    out: list[int] = []
    for i, d in enumerate(dims):
        if isinstance(d, int):
            if d == 0 and zero_ok:
                return None  # 0 would mean "copy"
            out.append(d)
        elif zero_ok and i < x.rank and sympy.simplify(x.shape[i] - d) == 0:
            out.append(0)
        else:
            out.append(-1)
    return out if out.count(-1) <= 1 else None


@writer("reshape")
def _reshape(ctx: ExportCtx, node: Node) -> None:
    x = node.inputs[0]
    assert x is not None
    dims = node.attrs["shape"]
    if 0 in dims and all(isinstance(d, int) for d in dims):  # a real 0, not "copy"
        ctx.add(
            "Reshape",
            [x.name, ctx.const(list(dims), "shape", np.int64)],
            ctx.outs(node),
            allowzero=1,
        )
        return
    shape = _shape_operand(x.type, dims, zero_ok=True)
    t = (
        ctx.const(shape, "shape", np.int64)
        if shape is not None
        else ctx.dims_tensor(node.attrs["shape"])
    )
    if t is None:
        _satura(ctx, node)
        return
    ctx.add("Reshape", [x.name, t], ctx.outs(node))


@writer("expand")
def _expand(ctx: ExportCtx, node: Node) -> None:
    x = node.inputs[0]
    assert x is not None
    dims = node.attrs["shape"]
    shape: list[int] = []
    for i, d in enumerate(dims):
        j = i - (len(dims) - x.type.rank)
        if isinstance(d, int):
            shape.append(d)
        elif j >= 0 and x.type.shape[j] != 1:
            shape.append(1)  # x already has this dim; 1 broadcasts to it
        else:
            t = ctx.dims_tensor(dims)
            if t is None:
                _satura(ctx, node)
                return
            ctx.add("Expand", [x.name, t], ctx.outs(node))
            return
    ctx.add("Expand", [x.name, ctx.const(shape, "shape", np.int64)], ctx.outs(node))


@writer("concat")
def _concat(ctx: ExportCtx, node: Node) -> None:
    ctx.add("Concat", ctx.ins(node), ctx.outs(node), axis=int(node.attrs["axis"]))


@writer("split")
def _split(ctx: ExportCtx, node: Node) -> None:
    sizes = node.attrs["sizes"]
    if not all(isinstance(s, int) for s in sizes):
        _satura(ctx, node)
        return
    ctx.add(
        "Split",
        [*ctx.ins(node), ctx.const(list(sizes), "split", np.int64)],
        ctx.outs(node),
        axis=int(node.attrs.get("axis", 0)),
    )


@writer("slice")
def _slice(ctx: ExportCtx, node: Node) -> None:
    a = OPS["slice"].with_defaults(node.attrs)
    starts, ends = ctx.dims_tensor(a["starts"]), ctx.dims_tensor(a["ends"])
    if starts is None or ends is None:
        _satura(ctx, node)
        return
    n = len(a["starts"])
    ins = [
        *ctx.ins(node),
        starts,
        ends,
        ctx.const(list(a["axes"] or range(n)), "axes", np.int64),
        ctx.const(list(a["steps"] or [1] * n), "steps", np.int64),
    ]
    ctx.add("Slice", ins, ctx.outs(node))


@writer("gather")
def _gather(ctx: ExportCtx, node: Node) -> None:
    ctx.add("Gather", ctx.ins(node), ctx.outs(node), axis=int(node.attrs.get("axis", 0)))


@writer("tile")
def _tile(ctx: ExportCtx, node: Node) -> None:
    reps = ctx.const(list(node.attrs["repeats"]), "repeats", np.int64)
    ctx.add("Tile", [*ctx.ins(node), reps], ctx.outs(node))


@writer("resize")
def _resize(ctx: ExportCtx, node: Node) -> None:
    a = OPS["resize"].with_defaults(node.attrs)
    x = node.inputs[0]
    assert x is not None
    # The scales when they give the sizes back (they also set the coordinate transform), else
    # the sizes (whose transform then uses size / input size, which is what the scales are).
    scales = np.float32(a["scales"])
    exact = all(
        isinstance(n, int) and int(np.floor(np.float32(i) * s)) == n
        for i, s, n in zip(x.type.shape, scales, a["sizes"], strict=True)
    )
    sizes = None if exact else ctx.dims_tensor(tuple(a["sizes"]))
    ins = (
        [x.name, "", "", sizes]
        if sizes
        else [x.name, "", ctx.const(scales.tolist(), "scales", np.float32)]
    )
    ctx.add(
        "Resize",
        ins,
        ctx.outs(node),
        mode=a["mode"],
        coordinate_transformation_mode=a["coordinate_transformation_mode"],
        nearest_mode=a["nearest_mode"],
    )


@writer("gather_nd", "scatter_nd", "scatter_elements")
def _indexing(ctx: ExportCtx, node: Node) -> None:
    a = OPS[node.op].with_defaults(node.attrs)
    if node.op == "scatter_elements":
        a["axis"] = int(a["axis"])
    onnx_op = {
        "gather_nd": "GatherND",
        "scatter_nd": "ScatterND",
        "scatter_elements": "ScatterElements",
    }[node.op]
    ctx.add(onnx_op, ctx.ins(node), ctx.outs(node), **a)


@writer("topk")
def _topk(ctx: ExportCtx, node: Node) -> None:
    a = OPS["topk"].with_defaults(node.attrs)
    k = ctx.dims_tensor((a.pop("k"),))
    if k is None:
        _satura(ctx, node)
        return
    ctx.add("TopK", [*ctx.ins(node), k], ctx.outs(node), **a)


@writer("one_hot")
def _one_hot(ctx: ExportCtx, node: Node) -> None:
    a = OPS["one_hot"].with_defaults(node.attrs)
    idx, values = ctx.ins(node)
    ix = node.inputs[0]
    assert ix is not None  # depth in the indices' type: the pairs onnxruntime has kernels for
    ctx.add(
        "OneHot",
        [idx, ctx.const(a["depth"], "depth", ix.type.dtype), values],
        ctx.outs(node),
        axis=a["axis"],
    )


@writer("rnn")
def _rnn(ctx: ExportCtx, node: Node) -> None:
    a = OPS["rnn"].with_defaults(node.attrs)
    cell = a.pop("cell")
    if a["clip"] is None:
        del a["clip"]
    if cell != "gru":
        del a["linear_before_reset"]
    ins = ctx.ins(node)
    while ins and not ins[-1]:
        ins.pop()
    ctx.add({"rnn": "RNN", "gru": "GRU", "lstm": "LSTM"}[cell], ins, ctx.outs(node), **a)


@writer("cumsum", "cumprod")
def _cumsum(ctx: ExportCtx, node: Node) -> None:
    a = OPS[node.op].with_defaults(node.attrs)
    if node.op == "cumprod":
        ctx.opset = max(ctx.opset, 26)  # CumProd came in opset 26
    ctx.add(
        "CumSum" if node.op == "cumsum" else "CumProd",
        [*ctx.ins(node), ctx.const(a["axis"], "axis", np.int64)],
        ctx.outs(node),
        exclusive=a["exclusive"],
        reverse=a["reverse"],
    )


@writer("trilu")
def _trilu(ctx: ExportCtx, node: Node) -> None:
    a = OPS["trilu"].with_defaults(node.attrs)
    ctx.add(
        "Trilu",
        [*ctx.ins(node), ctx.const(a["k"], "k", np.int64)],
        ctx.outs(node),
        upper=a["upper"],
    )


@writer("pad")
def _pad(ctx: ExportCtx, node: Node) -> None:
    a = OPS["pad"].with_defaults(node.attrs)
    x = node.inputs[0]
    assert x is not None
    ins = [x.name, ctx.const(list(a["pads"]), "pads", np.int64)]
    if a["mode"] == "constant":
        ins.append(ctx.const(a["value"], "value", x.type.dtype))
    ctx.add("Pad", ins, ctx.outs(node), mode=a["mode"])


@writer("shape_of")
def _shape_of(ctx: ExportCtx, node: Node) -> None:
    a = OPS["shape_of"].with_defaults(node.attrs)
    kw = {"start": a["start"]} | ({} if a["end"] is None else {"end": a["end"]})
    ctx.add("Shape", ctx.ins(node), ctx.outs(node), **kw)


@writer("constant_of_shape")
def _constant_of_shape(ctx: ExportCtx, node: Node) -> None:
    a = OPS["constant_of_shape"].with_defaults(node.attrs)
    shape = ctx.dims_tensor(a["shape"])
    if shape is None:
        _satura(ctx, node)
        return
    value = numpy_helper.from_array(np.asarray([a["value"]], dtype=a["dtype"]), "value")
    ctx.add("ConstantOfShape", [shape], ctx.outs(node), value=value)


@writer("arange")
def _arange(ctx: ExportCtx, node: Node) -> None:
    a = OPS["arange"].with_defaults(node.attrs)
    parts = [ctx._dim(b) for b in a["bounds"]]
    if any(p is None for p in parts):
        _satura(ctx, node)
        return
    to = helper.np_dtype_to_tensor_dtype(np.dtype(a["dtype"]))
    scalars = []
    for p in parts:
        s = ctx.fresh("bound")
        ctx.add("Squeeze", [p], [s])  # type: ignore[list-item]
        if a["dtype"] != "int64":
            c = ctx.fresh("bound")
            ctx.add("Cast", [s], [c], to=to)
            s = c
        scalars.append(s)
    delta = ctx.const(np.asarray(a["delta"], dtype=a["dtype"]), "delta")
    ctx.add("Range", [*scalars, delta], ctx.outs(node))


# -- the whole graph ---------------------------------------------------------------------------
def to_model(graph: Graph) -> onnx.ModelProto:
    """The ONNX ModelProto of ``graph``. Raises ModelError for an op with no writer."""
    ctx = ExportCtx(graph)
    for c in graph.constants:
        ctx.names.add(c.name)
        ctx.inits.append(numpy_helper.from_array(np.asarray(c.data), c.name))
    for node in graph.nodes:
        fn = WRITERS.get(node.op)
        if fn is None:
            raise ModelError(f"cannot export node '{node.name}': op '{node.op}' has no ONNX writer")
        ctx.names |= {o.name for o in node.outputs}
        fn(ctx, node)
    outputs = [_value_info(v) for v in graph.outputs]
    g = helper.make_graph(
        ctx.nodes,
        graph.name,
        [_value_info(v) for v in graph.inputs],
        outputs,
        initializer=ctx.inits,
    )
    opsets = [helper.make_opsetid("", ctx.opset)]
    if ctx.uses_satura:
        opsets.append(helper.make_opsetid(SATURA_DOMAIN, 1))
    return helper.make_model(g, opset_imports=opsets, producer_name="satura", ir_version=10)


def save_onnx(graph: Graph, path: str | os.PathLike[str]) -> Path:
    """Write ``graph`` as an ONNX model at ``path`` (temp file, then rename). Returns the path.

    Raises ModelError when the graph cannot be exported or the file cannot be written.
    """
    model = to_model(graph)
    dest = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent or ".")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(model.SerializeToString())
            os.replace(tmp, dest)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    except OSError as e:
        raise ModelError(f"cannot write '{dest}': {e.strerror}") from None
    return dest
