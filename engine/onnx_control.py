"""ONNX control flow (If, Loop, Scan) and sequences as straight-line code: the importer inlines
subgraphs and holds sequences as lists of tensors.

* If: a condition known at import is its taken branch; a run-time one runs both branches and
  picks with ``where`` (speculative execution: ops are pure).
* Loop and Scan unroll: one copy of the body per iteration, so the trip count (Loop's ``M`` or
  conditions, Scan's sequence length) must be known at import. A Loop whose condition is only
  known at run time runs all ``M`` iterations, each state kept by ``where`` once the loop has
  stopped (a loop-carried value must then keep its shape).
* Sequences (``Seq``) exist only at import: SequenceEmpty, SequenceConstruct, SequenceInsert,
  SequenceAt, SequenceErase, SequenceLength, SplitToSequence and ConcatFromSequence work on
  lists of tensors, so positions must be known at import (an unrolled loop's counter is). A
  graph input or output of a sequence type is not read.

Registered in ``onnx_import.CONVERTERS`` when ``onnx_converters`` imports this module.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
from onnx import helper
from satura.engine import onnx_import
from satura.engine.graph import Value
from satura.engine.onnx_converters import Outs, dims_product
from satura.engine.onnx_import import NodeCtx, Seq, converter
from satura.engine.shapes import normalize_axis

# Unrolling stops with an error past this many body nodes in all (iterations × body size).
MAX_UNROLLED_NODES = 50_000


def inline(
    ctx: NodeCtx, graph: onnx.GraphProto, feeds: Mapping[str, Value], tag: str
) -> list[Value]:
    """The outputs of subgraph ``graph`` with its inputs bound to ``feeds``, its nodes inlined
    (named ``<node>/<tag>/...``). Names the subgraph defines are dropped again afterwards:
    sibling subgraphs and the next iteration may reuse them."""
    imp = ctx.imp
    saved = dict(imp.values)
    try:
        imp.values.update(feeds)
        for t in graph.initializer:
            imp.values[t.name] = imp.add_const(imp.tensor_array(t), t.name)
        for i, node in enumerate(graph.node):
            named = onnx.NodeProto()
            named.CopyFrom(node)
            named.name = f"{ctx.name}/{tag}/{node.name or f'{node.op_type}_{i}'}"
            imp.convert(named, i)
        missing = [o.name for o in graph.output if o.name not in imp.values]
        if missing:
            raise ctx.fail(f"{tag}: output(s) {missing} are not produced by the subgraph")
        return [imp.values[o.name] for o in graph.output]
    finally:
        imp.values = saved


def _subgraph(ctx: NodeCtx, attr: str) -> onnx.GraphProto:
    g = ctx.attr(attr)
    if g is None:
        raise ctx.fail(f"has no {attr} graph")
    return g


def _scalar_known(ctx: NodeCtx, v: Value | None, what: str) -> bool | int | None:
    """The one value of ``v`` when import knows it, else None."""
    k = ctx.imp.known_of(v)
    if k is None:
        return None
    flat = np.asarray(k).ravel()
    if flat.size != 1:
        raise ctx.fail(f"{what} must hold one value, got {flat.size}")
    try:
        return flat[0].item() if hasattr(flat[0], "item") else int(flat[0])
    except TypeError:  # a symbolic size
        raise ctx.fail(f"{what} {flat[0]} depends on symbolic sizes") from None


def _agree(ctx: NodeCtx, a: Value, b: Value, what: str) -> None:
    if isinstance(a, Seq) or isinstance(b, Seq):
        raise ctx.fail(f"{what} is a sequence, which a run-time condition cannot pick")
    if a.type.shape != b.type.shape or a.type.dtype != b.type.dtype:
        raise ctx.fail(
            f"{what} must agree in shape and type: {a.type.dtype}{list(a.type.shape)} vs "
            f"{b.type.dtype}{list(b.type.shape)}"
        )


def _stack(ctx: NodeCtx, elems: list[Value], axis: int) -> Value:
    """``elems`` (one shape) stacked along a new ``axis``."""
    rank = elems[0].type.rank
    axis = normalize_axis(axis, rank + 1)
    parts = []
    for e in elems:
        shape = list(e.type.shape)
        parts.append(ctx.one("reshape", e, shape=(*shape[:axis], 1, *shape[axis:])))
    return parts[0] if len(parts) == 1 else ctx.emit("concat", parts, axis=axis)[0]


def _check_size(ctx: NodeCtx, trips: int, body: onnx.GraphProto) -> None:
    if trips * max(1, len(body.node)) > MAX_UNROLLED_NODES:
        raise ctx.fail(
            f"unrolling {trips} iterations of a {len(body.node)}-node body exceeds "
            f"{MAX_UNROLLED_NODES} nodes"
        )


@converter("If")
def _if(ctx: NodeCtx) -> Outs:
    """The taken branch when import knows the condition (a constant, or computed from static
    shapes, as older exporters write shape checks); else both branches and ``where``."""
    taken = _scalar_known(ctx, ctx.x(0), "the condition")
    if taken is not None:
        which = "then_branch" if taken else "else_branch"
        return list(inline(ctx, _subgraph(ctx, which), {}, which))
    c = ctx.x(0)
    if dims_product(c.type.shape) != 1:
        raise ctx.fail(f"the condition must hold one value, got shape {tuple(c.type.shape)}")
    then = inline(ctx, _subgraph(ctx, "then_branch"), {}, "then_branch")
    other = inline(ctx, _subgraph(ctx, "else_branch"), {}, "else_branch")
    if len(then) != len(other):
        raise ctx.fail(f"the branches give {len(then)} and {len(other)} outputs")
    c = ctx.one("reshape", c, shape=())
    outs: Outs = []
    for i, (a, b) in enumerate(zip(then, other, strict=True)):
        _agree(ctx, a, b, f"on a run-time condition the branches' output {i}")
        outs.append(ctx.one("where", c, a, b))
    return outs


@converter("Loop")
def _loop(ctx: NodeCtx) -> Outs:
    """Loop(M, cond, *v) with body(i, cond, *v) -> (cond, *v, *scan elements), unrolled."""
    body = _subgraph(ctx, "body")
    trips = _scalar_known(ctx, ctx.inp(0), "the trip count M") if ctx.has(0) else None
    if ctx.has(0) and trips is None:
        raise ctx.fail("the trip count M must be known at import (a constant or from shapes)")
    if ctx.has(1):
        cond = ctx.x(1)
        known = _scalar_known(ctx, cond, "the condition")
        alive: Value | None = None if known is not None else ctx.one("reshape", cond, shape=())
        going = True if known is None else bool(known)
    else:
        alive, going = None, True
    if trips is None and alive is not None:
        raise ctx.fail("a loop on a run-time condition needs a trip count M known at import")
    states = [ctx.seq(i) if ctx.is_seq(i) else ctx.x(i) for i in range(2, ctx.n_in)]
    n_states = len(states)
    n_scan = len(body.output) - 1 - n_states
    if len(body.input) != 2 + n_states or n_scan < 0:
        raise ctx.fail(
            f"the body takes {len(body.input)} inputs and gives {len(body.output)} outputs for "
            f"{n_states} loop-carried values"
        )
    limit = trips if trips is not None else MAX_UNROLLED_NODES
    _check_size(ctx, min(int(limit), MAX_UNROLLED_NODES + 1), body)
    scans: list[list[Value]] = [[] for _ in range(n_scan)]
    t = 0
    while going and t < limit:
        iter_v = ctx.imp.add_const(np.array(t, np.int64), f"{ctx.name}_i{t}")
        cond_in = alive if alive is not None else ctx.imp.add_const(np.array(True), f"{ctx.name}_c")
        feeds = dict(zip([i.name for i in body.input], [iter_v, cond_in, *states], strict=True))
        outs = inline(ctx, body, feeds, f"iter{t}")
        new, elems = outs[1 : 1 + n_states], outs[1 + n_states :]
        if alive is not None:  # the iteration counts only while the loop runs
            if elems:
                raise ctx.fail(
                    "scan outputs of a loop that stops on a run-time condition have a run-time "
                    "length: not supported"
                )
            for j, (a, b) in enumerate(zip(new, states, strict=True)):
                _agree(ctx, a, b, f"on a run-time condition loop-carried value {j}")
            new = [ctx.one("where", alive, a, b) for a, b in zip(new, states, strict=True)]
            alive = ctx.one("and", alive, ctx.one("reshape", outs[0], shape=()))
        else:
            known = _scalar_known(ctx, outs[0], "the body's condition")
            if known is None:
                if trips is None:
                    raise ctx.fail(
                        "the body's condition is known only at run time and M is absent: "
                        "the loop has no bound known at import"
                    )
                alive = ctx.one("reshape", outs[0], shape=())
            else:
                going = bool(known)
        states = new
        for acc, e in zip(scans, elems, strict=True):
            acc.append(e)
        t += 1
    if going and alive is None and trips is None:
        raise ctx.fail(f"the loop did not stop within {limit} iterations")
    if n_scan and not scans[0]:
        raise ctx.fail("a loop of no iterations has scan outputs of unknown shape")
    return [*states, *[_stack(ctx, acc, 0) for acc in scans]]


@converter("Scan")
def _scan(ctx: NodeCtx) -> Outs:
    """Scan(*state, *xs) with body(*state, *x slices) -> (*state, *y elements), unrolled over
    the scan axis (opset 9 on: no batch axis)."""
    if ctx.opset < 9:
        raise ctx.fail("Scan before opset 9 (batched, with sequence_lens) is not supported")
    body = _subgraph(ctx, "body")
    n_xs = int(ctx.attr("num_scan_inputs"))
    ins = [ctx.x(i) for i in range(ctx.n_in)]
    states, xs = ins[: len(ins) - n_xs], ins[len(ins) - n_xs :]
    n_ys = len(body.output) - len(states)
    if n_xs < 1 or n_ys < 0 or len(body.input) != len(ins):
        raise ctx.fail(
            f"the body's {len(body.input)} inputs and {len(body.output)} outputs do not fit "
            f"{len(states)} states and {n_xs} scan inputs"
        )
    in_axes = [
        normalize_axis(int(a), x.type.rank)
        for a, x in zip(ctx.attr("scan_input_axes", (0,) * n_xs), xs, strict=True)
    ]
    in_dirs = list(ctx.attr("scan_input_directions", (0,) * n_xs))
    out_axes = list(ctx.attr("scan_output_axes", (0,) * n_ys))
    out_dirs = list(ctx.attr("scan_output_directions", (0,) * n_ys))
    lengths = {x.type.shape[a] for x, a in zip(xs, in_axes, strict=True)}
    if len(lengths) != 1 or not isinstance(next(iter(lengths)), int):
        raise ctx.fail(
            f"the scan inputs' lengths must be one static size, got {sorted(map(str, lengths))}"
        )
    steps = int(next(iter(lengths)))
    _check_size(ctx, steps, body)
    ys: list[list[Value]] = [[] for _ in range(n_ys)]
    names = [i.name for i in body.input]
    for t in range(steps):
        slices = []
        for x, a, rev in zip(xs, in_axes, in_dirs, strict=True):
            at = ctx.imp.add_const(np.array(steps - 1 - t if rev else t, np.int64), f"{ctx.name}_t")
            slices.append(ctx.one("gather", x, at, axis=a))
        outs = inline(ctx, body, dict(zip(names, [*states, *slices], strict=True)), f"step{t}")
        states = outs[: len(states)]
        for acc, e in zip(ys, outs[len(states) :], strict=True):
            acc.append(e)
    if steps == 0 and n_ys:
        raise ctx.fail("a scan of length 0 has scan outputs of unknown shape")
    stacked = [
        _stack(ctx, acc[::-1] if rev else acc, ax)
        for acc, ax, rev in zip(ys, out_axes, out_dirs, strict=True)
    ]
    return [*states, *stacked]


# -- sequences ----------------------------------------------------------------------------------
def _position(ctx: NodeCtx, i: int, size: int, insert: bool = False) -> int:
    """Input ``i`` as a position in a sequence of ``size`` (negative from the end; absent: the
    end), checked against the sequence."""
    if not ctx.has(i):
        return size if insert else size - 1
    p = _scalar_known(ctx, ctx.inp(i), "the position")
    if p is None:
        raise ctx.fail("the position must be known at import")
    p = int(p)
    hi = size if insert else size - 1
    if not -size <= p <= hi:
        raise ctx.fail(f"position {p} is outside a sequence of {size}")
    return p + size if p < 0 else p


@converter("SequenceEmpty")
def _sequence_empty(ctx: NodeCtx) -> Outs:
    return [Seq((), ctx.dtype(ctx.attr("dtype", 1), "dtype"))]


@converter("SequenceConstruct")
def _sequence_construct(ctx: NodeCtx) -> Outs:
    items = [ctx.x(i) for i in range(ctx.n_in)]
    if not items:
        raise ctx.fail("needs at least one tensor")
    return [Seq(items, items[0].type.dtype)]


@converter("SequenceInsert")
def _sequence_insert(ctx: NodeCtx) -> Outs:
    seq, x = ctx.seq(0), ctx.x(1)
    at = _position(ctx, 2, len(seq), insert=True)
    return [Seq((*seq[:at], x, *seq[at:]), seq.dtype)]


@converter("SequenceAt")
def _sequence_at(ctx: NodeCtx) -> Outs:
    seq = ctx.seq(0)
    return [seq[_position(ctx, 1, len(seq))]]


@converter("SequenceErase")
def _sequence_erase(ctx: NodeCtx) -> Outs:
    seq = ctx.seq(0)
    at = _position(ctx, 1, len(seq))
    return [Seq((*seq[:at], *seq[at + 1 :]), seq.dtype)]


@converter("SequenceLength")
def _sequence_length(ctx: NodeCtx) -> Outs:
    return [ctx.imp.add_const(np.array(len(ctx.seq(0)), np.int64), f"{ctx.name}_len")]


@converter("ConcatFromSequence")
def _concat_from_sequence(ctx: NodeCtx) -> Outs:
    seq = ctx.seq(0)
    if not seq:
        raise ctx.fail("the sequence is empty")
    axis = int(ctx.attr("axis"))
    if ctx.attr("new_axis", 0):
        return [_stack(ctx, list(seq), axis)]
    axis = normalize_axis(axis, seq[0].type.rank)
    return [seq[0] if len(seq) == 1 else ctx.emit("concat", list(seq), axis=axis)[0]]


@converter("SplitToSequence")
def _split_to_sequence(ctx: NodeCtx) -> Outs:
    """Pieces of ``split``'s sizes (a scalar: equal pieces, the last shorter; absent: pieces of
    1, dropped axis unless keepdims)."""
    x = ctx.x(0)
    axis = normalize_axis(int(ctx.attr("axis", 0)), x.type.rank)
    n = x.type.shape[axis]
    if not isinstance(n, int):
        raise ctx.fail(f"the split axis must have a static length, got {n}")
    split = ctx.known(1) if ctx.has(1) else None
    if ctx.has(1) and split is None:
        raise ctx.fail("split must be known at import")
    keep = True
    if split is None:
        sizes, keep = [1] * n, bool(ctx.attr("keepdims", 1))
    elif np.asarray(split).ndim == 0:
        step = int(np.asarray(split))
        if step < 1:
            raise ctx.fail(f"split {step} must be positive")
        sizes = [min(step, n - i) for i in range(0, n, step)]
    else:
        sizes = [int(v) for v in np.asarray(split).ravel()]
    if sum(sizes) != n or min(sizes, default=1) < 0:
        raise ctx.fail(f"split sizes {sizes} do not add up to the axis length {n}")
    parts = ctx.emit("split", [x], axis=axis, sizes=tuple(sizes)) if len(sizes) > 1 else [x]
    if not keep:
        shape = [d for i, d in enumerate(x.type.shape) if i != axis]
        parts = [ctx.one("reshape", p, shape=tuple(shape)) for p in parts]
    return [Seq(parts, x.type.dtype)]


# -- ops ONNX defines as functions --------------------------------------------------------------
def _with_attrs(f: onnx.FunctionProto, attrs: dict[str, onnx.AttributeProto]) -> onnx.GraphProto:
    """``f``'s body as a graph, each attribute reference replaced by the node's attribute (or
    dropped, leaving the op's default)."""
    nodes = []
    for n in f.node:
        m = onnx.NodeProto()
        m.CopyFrom(n)
        del m.attribute[:]
        for a in n.attribute:
            if a.ref_attr_name:
                if a.ref_attr_name in attrs:
                    b = onnx.AttributeProto()
                    b.CopyFrom(attrs[a.ref_attr_name])
                    b.name = a.name
                    m.attribute.append(b)
            else:
                m.attribute.append(a)
        nodes.append(m)
    outs = [helper.make_value_info(o, onnx.TypeProto()) for o in f.output]
    return helper.make_graph(nodes, f.name, [], outs)


def expand_function(ctx: NodeCtx) -> Outs:
    """An op ONNX defines as a function of other ops (CausalConvWithState, LinearAttention...)
    that satura has no converter for: the schema's body for this node and its input types,
    inlined."""
    schema = onnx.defs.get_schema(ctx.op_type, ctx.opset, "")
    if schema.has_context_dependent_function:
        types = []
        for i in range(ctx.n_in):
            v = ctx.inp(i)
            if v is None:
                types.append(onnx.TypeProto().SerializeToString())
                continue
            elem = helper.np_dtype_to_tensor_dtype(np.dtype(v.type.dtype))
            dims = [d if isinstance(d, int) else str(d) for d in v.type.shape]
            types.append(helper.make_tensor_type_proto(elem, dims).SerializeToString())
        body = schema.get_context_dependent_function(ctx.node.SerializeToString(), types)
    else:
        body = schema.function_body.SerializeToString()
    f = onnx.FunctionProto()
    f.ParseFromString(body)
    if not f.node:
        raise ctx.fail("ONNX gives no function body for this node")
    feeds = {
        formal: ctx.inp(i)
        for i, formal in enumerate(f.input)
        if i < ctx.n_in and ctx.has(i) and formal
    }
    graph = _with_attrs(f, {a.name: a for a in ctx.node.attribute})
    outs = inline(ctx, graph, {k: v for k, v in feeds.items() if v is not None}, "function")
    return list(outs)


onnx_import.FUNCTION_CONVERTER = expand_function
