"""Index-driven element kernels: GatherElements, GatherND, ScatterElements, ScatterND, OneHot.

GatherElements and ScatterElements walk the positions of their indices (:func:`elements_kernel`:
each index picks the data element along the axis); GatherND and ScatterND walk index tuples
(:func:`tuples_kernel`: each tuple picks a block, copied with one memcpy). A scatter is two steps:
the data is copied to the output (rows shared between cores), then the updates are applied in the
reference's order in one part, so duplicate indices resolve as its sequential loop does (the last
write wins; reductions add/mul/max/min combine in that order, as numpy's ufuncs do). OneHot
(:func:`one_hot_kernel`) compares each normalized index with the position along the new axis: an
index out of range gives an all-off row, as the reference does.

Runtime indices are checked as :mod:`satura.targets.indexing` checks a gather's: one out of
``[-dim, dim-1]`` is never read or written through, the kernel reports it in the model's error
record and the runtime raises InputError; constant ones fail at compile time (ShapeError).

Falls back to numpy: string tensors, GatherElements whose indices differ from the data off the
axis, ScatterElements whose updates differ from its indices in shape or whose indices exceed the
data off the axis, shapes the reference itself rejects, indices of other types than int32/int64
(OneHot: also float32/float64), and scatter reductions on bfloat16.

Registers its lowerings in :data:`satura.targets.lower.LOWERINGS` on import.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from satura.engine.graph import Node, Value
from satura.engine.shapes import normalize_axis
from satura.targets.indexing import (
    Affine,
    IndexCheck,
    Run,
    checked_index,
    copy_step,
    dims,
    gather_dtypes,
    index_checks,
    kernel_step,
    static_operands,
)
from satura.targets.irmath import dconst, fconst
from satura.targets.kernel import ERROR_SLOT, Loops, Operand, body_header, share, wrapper
from satura.targets.layout import INT_TYPES, contiguous_strides
from satura.targets.lower import LOWERINGS, Lowerer, Lowering, Ref, Step, numel

# A scatter copies its data in rows of at least this many elements (whole trailing dims).
COPY_ROW = 1024


# The element types a scatter reduction combines: LLVM type and kind (f: float, s/u: signed or
# unsigned integer, b: bool as a 0/1 byte). numpy's float16 arithmetic rounds a float32 result to
# half, which is what LLVM's half arithmetic gives too.
REDUCE_TYPES = {
    "float32": ("float", "f"),
    "float64": ("double", "f"),
    "float16": ("half", "f"),
    "int64": ("i64", "s"),
    "int32": ("i32", "s"),
    "int16": ("i16", "s"),
    "int8": ("i8", "s"),
    "uint64": ("i64", "u"),
    "uint32": ("i32", "u"),
    "uint16": ("i16", "u"),
    "uint8": ("i8", "u"),
    "bool": ("i8", "b"),
}
REDUCTIONS = ("none", "add", "mul", "max", "min")
# OneHot's index types (the reference also takes floats: it truncates them to int64).
ONE_HOT_INDEX = {"int32": "i32", "int64": "i64", "float32": "float", "float64": "double"}


def combine(L: list[str], tag: str, reduction: str, dtype: str, a: str, b: str) -> str:
    """Emit ``reduction(a, b)`` (``a`` the element in the output, ``b`` the update) as the
    reference's numpy ufunc computes it; returns the result's name. Float max/min are numpy's
    ``a if a > b or isnan(a) else b`` (NaN from either side; of two equal zeros, ``b``); on bool,
    add and max are ``or``, mul and min ``and``."""
    ty, kind = REDUCE_TYPES[dtype]
    r = f"%{tag}"
    if kind == "b":
        L.append(f"  {r} = {'or' if reduction in ('add', 'max') else 'and'} i8 {a}, {b}")
    elif reduction in ("add", "mul"):
        L.append(f"  {r} = {'f' if kind == 'f' else ''}{reduction} {ty} {a}, {b}")
    elif kind == "f":
        cmp = "ogt" if reduction == "max" else "olt"
        L += [
            f"  {r}.c = fcmp {cmp} {ty} {a}, {b}",
            f"  {r}.n = fcmp uno {ty} {a}, {a}",
            f"  {r}.t = or i1 {r}.c, {r}.n",
            f"  {r} = select i1 {r}.t, {ty} {a}, {ty} {b}",
        ]
    else:
        cmp = ("s" if kind == "s" else "u") + ("gt" if reduction == "max" else "lt")
        L += [f"  {r}.t = icmp {cmp} {ty} {a}, {b}", f"  {r} = select i1 {r}.t, {ty} {a}, {ty} {b}"]
    return r


def _rows_range(L: list[str], rows: int, split: bool) -> None:
    """``%r0``/``%r1``: this part's share of ``rows`` (``split``), or all of them in part 0 and
    none in the others (a scatter's updates: applied in order, on one core)."""
    if split:
        share(L, rows, 1, "%r0", "%r1")
    else:
        L += [
            "  %first = icmp eq i64 %part, 0",
            f"  %r1 = select i1 %first, i64 {rows}, i64 0",
            "  %r0 = add i64 0, 0",
        ]


def _update(
    L: list[str], tag: str, itemsize: int, reduction: str, dtype: str, dst: str, src: str
) -> None:
    """Emit ``*dst = reduction(*dst, *src)`` (``none``: ``*dst = *src``)."""
    if reduction == "none":
        ty = INT_TYPES[itemsize]
        L += [
            f"  %{tag}.u = load {ty}, ptr {src}, align 1",
            f"  store {ty} %{tag}.u, ptr {dst}, align 1",
        ]
        return
    ty = REDUCE_TYPES[dtype][0]
    L += [
        f"  %{tag}.u = load {ty}, ptr {src}, align 1",
        f"  %{tag}.o = load {ty}, ptr {dst}, align 1",
    ]
    val = combine(L, f"{tag}.r", reduction, dtype, f"%{tag}.o", f"%{tag}.u")
    L.append(f"  store {ty} {val}, ptr {dst}, align 1")


def elements_kernel(
    name: str,
    itemsize: int,
    out: Operand,
    src: Operand,
    indices: Operand,
    ishape: Sequence[int],
    xshape: Sequence[int],
    axis: int,
    check: IndexCheck,
    reduction: str | None = None,
    dtype: str = "",
) -> str:
    """LLVM IR of GatherElements (``reduction`` None): ``out[p] = src[p with p[axis] :=
    indices[p]]`` for every position ``p`` of ``indices`` (shape ``ishape``; ``src``, shape
    ``xshape``, is the data), rows shared between cores; or of ScatterElements' update phase
    (``out`` already holds the data, ``src`` is the updates, shaped like the indices):
    ``out[p with p[axis] := indices[p]] = reduction(that, src[p])`` in ``p``'s row-major order,
    all in part 0, so duplicate indices resolve as in the reference's loop."""
    scatter = reduction is not None
    ty = INT_TYPES[itemsize]
    rank = len(ishape)
    rows, n = numel(tuple(ishape[:-1])), ishape[-1]
    xst = contiguous_strides(xshape)
    tail: list[str] = []
    L = [
        body_header(name, 4),
        "entry:",
        "  %r.a = alloca i64, align 8",
        "  %j.a = alloca i64, align 8",
    ]
    _rows_range(L, rows, not scatter)
    loops = Loops(L)
    r = loops.open("r", "%r0", "%r1", 1)
    acc, rem = "0", r
    for k in reversed(range(rank - 1)):
        L += [f"  %ix{k} = urem i64 {rem}, {ishape[k]}", f"  %rq{k} = udiv i64 {rem}, {ishape[k]}"]
        rem = f"%rq{k}"
        if k != axis:
            L += [f"  %t{k} = mul i64 %ix{k}, {xst[k]}", f"  %b{k} = add i64 {acc}, %t{k}"]
            acc = f"%b{k}"
    L.append(f"  %rowp = mul i64 {r}, {n}")
    j = loops.open("j", "0", str(n), 1)
    L.append(f"  %pos = add i64 %rowp, {j}")
    u = checked_index(L, tail, "x", "%pos", check)
    L += [f"  %xa = mul i64 {u}, {xst[axis]}", f"  %xb = add i64 {acc}, %xa"]
    if axis != rank - 1:
        L += [f"  %xj = mul i64 {j}, {xst[-1]}", "  %xo = add i64 %xb, %xj"]
    else:
        L.append("  %xo = add i64 %xb, 0")
    if scatter:
        assert reduction is not None
        L += [
            f"  %dp = getelementptr {ty}, ptr %a0, i64 %xo",
            f"  %sp = getelementptr {ty}, ptr %a1, i64 %pos",
        ]
        _update(L, "e", itemsize, reduction, dtype, "%dp", "%sp")
    else:
        L += [
            f"  %sp = getelementptr {ty}, ptr %a1, i64 %xo",
            f"  %v = load {ty}, ptr %sp, align 1",
            f"  %dp = getelementptr {ty}, ptr %a0, i64 %pos",
            f"  store {ty} %v, ptr %dp, align 1",
        ]
    loops.close("j", 1)
    loops.close("r", 1)
    L += ["  ret void", *tail, "}"]
    return "\n".join([wrapper(name, [out, src, indices, Operand(ERROR_SLOT)]), "\n".join(L)])


def tuples_kernel(
    name: str,
    itemsize: int,
    out: Operand,
    src: Operand,
    indices: Operand,
    rows: int,
    per_batch: int,
    batch_stride: int,
    checks: Sequence[IndexCheck],
    strides: Sequence[int],
    post: int,
    reduction: str | None = None,
    dtype: str = "",
) -> str:
    """LLVM IR of GatherND (``reduction`` None) or of ScatterND's update phase. Row ``r`` has the
    index tuple ``indices[r, :]`` (component ``c`` checked against ``checks[c]``, then scaled by
    ``strides[c]``) and a block of ``post`` elements at ``(r // per_batch) * batch_stride + sum``
    of the data. Gather: ``out[r, :] = src[block]`` (one memcpy), rows shared between cores.
    Scatter (``out`` holds the data, ``src`` the updates): ``out[block] = reduction(out[block],
    src[r, :])`` row after row in part 0, as the reference's loop applies them."""
    scatter = reduction is not None
    ty = INT_TYPES[itemsize]
    depth = len(checks)
    tail: list[str] = []
    L = [
        body_header(name, 4),
        "entry:",
        "  %r.a = alloca i64, align 8",
        "  %e.a = alloca i64, align 8",
    ]
    _rows_range(L, rows, not scatter)
    loops = Loops(L)
    r = loops.open("r", "%r0", "%r1", 1)
    acc = "0"
    if batch_stride and rows > per_batch:
        L += [f"  %bi = udiv i64 {r}, {per_batch}", f"  %bo = mul i64 %bi, {batch_stride}"]
        acc = "%bo"
    if depth:
        L.append(f"  %tp = mul i64 {r}, {depth}")
    for c in range(depth):
        L.append(f"  %tp{c} = add i64 %tp, {c}")
        u = checked_index(L, tail, f"c{c}", f"%tp{c}", checks[c])
        L += [f"  %s{c} = mul i64 {u}, {strides[c]}", f"  %o{c} = add i64 {acc}, %s{c}"]
        acc = f"%o{c}"
    L += [f"  %blk = add i64 {acc}, 0", f"  %rp = mul i64 {r}, {post}"]
    data, row = ("%a0", "%a1") if scatter else ("%a1", "%a0")
    L += [
        f"  %dp = getelementptr {ty}, ptr {data}, i64 %blk",
        f"  %rowp = getelementptr {ty}, ptr {row}, i64 %rp",
    ]
    if reduction is None or reduction == "none":
        dst, srcp = ("%dp", "%rowp") if scatter else ("%rowp", "%dp")
        L.append(
            f"  call void @llvm.memcpy.p0.p0.i64(ptr align 1 {dst}, ptr align 1 {srcp}, "
            f"i64 {post * itemsize}, i1 false)"
        )
    else:
        e = loops.open("e", "0", str(post), 1)
        L += [
            f"  %ed = getelementptr {ty}, ptr %dp, i64 {e}",
            f"  %es = getelementptr {ty}, ptr %rowp, i64 {e}",
        ]
        _update(L, "u", itemsize, reduction, dtype, "%ed", "%es")
        loops.close("e", 1)
    loops.close("r", 1)
    L += ["  ret void", *tail, "}"]
    return "\n".join([wrapper(name, [out, src, indices, Operand(ERROR_SLOT)]), "\n".join(L)])


def one_hot_kernel(
    name: str,
    itemsize: int,
    out: Operand,
    indices: Operand,
    values: Operand,
    ity: str,
    pre: int,
    depth: int,
    post: int,
) -> str:
    """LLVM IR of OneHot: ``out[p, d, q] = values[1] if norm(indices[p, q]) == d else
    values[0]``, ``norm`` adding ``depth`` to a negative index (``ity``: the indices' LLVM type,
    an integer or a float the reference truncates); an index out of range matches no ``d`` (an
    all-off row, as the reference gives). The ``pre`` rows are shared between cores."""
    ty = INT_TYPES[itemsize]
    L = [
        body_header(name, 3),
        "entry:",
        *(f"  %{v}.a = alloca i64, align 8" for v in "pdq"),
        f"  %offp = getelementptr {ty}, ptr %a2, i64 0",
        f"  %off = load {ty}, ptr %offp, align 1",
        f"  %onp = getelementptr {ty}, ptr %a2, i64 1",
        f"  %on = load {ty}, ptr %onp, align 1",
    ]
    share(L, pre, 1, "%p0", "%p1")
    loops = Loops(L)
    p = loops.open("p", "%p0", "%p1", 1)
    L += [f"  %ib = mul i64 {p}, {post}", f"  %pd = mul i64 {p}, {depth}"]
    d = loops.open("d", "0", str(depth), 1)
    L += [f"  %ob0 = add i64 %pd, {d}", f"  %ob = mul i64 %ob0, {post}"]
    q = loops.open("q", "0", str(post), 1)
    L += [
        f"  %ip = add i64 %ib, {q}",
        f"  %ipp = getelementptr {ity}, ptr %a1, i64 %ip",
        f"  %il = load {ity}, ptr %ipp, align 1",
    ]
    if ity in ("float", "double"):
        # numpy: where(i < 0, i + depth, i) in the float type, then astype(int64) (truncation);
        # only values in (-1, 2^62) can truncate to a d in [0, depth): converted, they are exact.
        dep = fconst(depth) if ity == "float" else dconst(depth)
        L += [
            f"  %neg = fcmp olt {ity} %il, 0.0",
            f"  %w = fadd {ity} %il, {dep}",
            f"  %wv = select i1 %neg, {ity} %w, {ity} %il",
            f"  %lo = fcmp ogt {ity} %wv, {dconst(-1.0)}",
            f"  %hi = fcmp olt {ity} %wv, {dconst(2.0**62)}",
            "  %in = and i1 %lo, %hi",
            f"  %wi = fptosi {ity} %wv to i64",
            "  %u = select i1 %in, i64 %wi, i64 -1",
        ]
    else:
        L += [
            f"  %iv = sext {ity} %il to i64" if ity != "i64" else "  %iv = add i64 %il, 0",
            "  %neg = icmp slt i64 %iv, 0",
            f"  %w = add i64 %iv, {depth}",
            "  %u = select i1 %neg, i64 %w, i64 %iv",
        ]
    L += [
        f"  %hot = icmp eq i64 %u, {d}",
        f"  %v = select i1 %hot, {ty} %on, {ty} %off",
        f"  %op = add i64 %ob, {q}",
        f"  %opp = getelementptr {ty}, ptr %a0, i64 %op",
        f"  store {ty} %v, ptr %opp, align 1",
    ]
    loops.close("q", 1)
    loops.close("d", 1)
    loops.close("p", 1)
    L += ["  ret void", "}"]
    return "\n".join([wrapper(name, [out, indices, values]), "\n".join(L)])


# -- lowerings ------------------------------------------------------------------------------------
Gen = Callable[[Callable[[Ref | None], Operand | None]], str]


def lower_gather_elements(lw: Lowerer, node: Node, name: str) -> bool:
    """``out = take_along_axis(x, idx, axis)``: one element a position of ``idx``, whose shape
    must equal x's off the axis (the reference's broadcasting otherwise disagrees with the
    declared output shape or raises)."""
    ops = static_operands(node, 2)
    if ops is None:
        return False
    x, idx, out = ops
    xs, ish = dims(x), dims(idx)
    if len(xs) != len(ish) or not xs:
        return False
    axis = normalize_axis(node.attrs.get("axis", 0), len(xs))
    if any(a != b for k, (a, b) in enumerate(zip(xs, ish, strict=True)) if k != axis):
        return False
    (check,) = index_checks(lw, node, idx, x, [axis])
    size = out.type.itemsize

    def gen(loc: Callable[[Ref | None], Operand | None]) -> str:
        return elements_kernel(
            name,
            size,
            loc(out),
            loc(x),
            loc(idx),
            ish,  # type: ignore
            xs,
            axis,
            check,
        )

    kernel_step(
        lw,
        node,
        name,
        [x, idx],
        out,
        gen,
        numel(tuple(ish[:-1])),
        numel(tuple(ish)) * (2 * size + idx.type.itemsize),
    )
    return True


def lower_gather_nd(lw: Lowerer, node: Node, name: str) -> bool:
    """GatherND: a row per index tuple (per batch), copying the block the tuple selects."""
    ops = static_operands(node, 2)
    if ops is None:
        return False
    x, idx, out = ops
    xs, ish = dims(x), dims(idx)
    b = int(node.attrs.get("batch_dims", 0))
    if not ish or len(ish) <= b or ish[:b] != xs[:b] or b + ish[-1] > len(xs):
        return False
    axes = list(range(b, b + ish[-1]))
    checks, st = index_checks(lw, node, idx, x, axes), contiguous_strides(xs)
    rows, per_batch = numel(tuple(ish[:-1])), numel(tuple(ish[b:-1]))
    batch_stride = numel(tuple(xs[b:])) if b else 0
    post, size = numel(tuple(xs[b + len(axes) :])), out.type.itemsize

    def gen(loc: Callable[[Ref | None], Operand | None]) -> str:
        return tuples_kernel(
            name,
            size,
            loc(out),
            loc(x),
            loc(idx),
            rows,  # type: ignore
            per_batch,
            batch_stride,
            checks,
            [st[a] for a in axes],
            post,
        )

    kernel_step(lw, node, name, [x, idx], out, gen, rows, 2 * numel(out.type.shape) * size)
    return True


def _scatter_steps(
    lw: Lowerer, node: Node, name: str, ops: list[Value], updates: int, gen: Gen
) -> None:
    """A scatter's two steps (``ops``: data, indices, updates, output): the copy of its data
    into the output (rows of the trailing dims that make at least COPY_ROW elements, shared
    between cores), then, when there are ``updates``, ``gen``'s update kernel, which reads the
    output the copy wrote (in part 0)."""
    x, idx, upd, out = ops
    row = 1
    for d in reversed(dims(x)):
        if row >= COPY_ROW:
            break
        row *= d
    rows = numel(tuple(dims(x))) // row
    copy_step(
        lw, f"{name}_copy", node, [x], [Affine(rows, row)] if rows > 1 else [], [Run(row, 0, 1)]
    )
    if updates:
        lw.steps.append(Step(f"{name}_update", [out, idx, upd], [out], gen, op=node.op))


def lower_scatter_elements(lw: Lowerer, node: Node, name: str) -> bool:
    """ScatterElements: copy the data, then apply the updates in the reference's order. The
    indices may be smaller than the data off the axis; the updates are shaped like them."""
    ops = static_operands(node, 3)
    if ops is None:
        return False
    x, idx, upd, out = ops
    xs, ish = dims(x), dims(idx)
    if len(xs) != len(ish) or not xs or dims(upd) != ish:
        return False
    axis = normalize_axis(node.attrs.get("axis", 0), len(xs))
    if any(i > n for k, (n, i) in enumerate(zip(xs, ish, strict=True)) if k != axis):
        return False
    (check,) = index_checks(lw, node, idx, x, [axis])
    size, dtype, red = out.type.itemsize, out.type.dtype, node.attrs.get("reduction", "none")

    def gen(loc: Callable[[Ref | None], Operand | None]) -> str:
        return elements_kernel(
            f"{name}_update",
            size,
            loc(out),
            loc(upd),  # type: ignore
            loc(idx),
            ish,
            xs,
            axis,
            check,
            red,
            dtype,
        )

    _scatter_steps(lw, node, name, ops, numel(tuple(ish)), gen)
    return True


def lower_scatter_nd(lw: Lowerer, node: Node, name: str) -> bool:
    """ScatterND: copy the data, then apply each tuple's block of updates in order."""
    ops = static_operands(node, 3)
    if ops is None:
        return False
    x, idx, upd, out = ops
    xs, ish = dims(x), dims(idx)
    if not ish or ish[-1] > len(xs):
        return False
    depth = ish[-1]
    rows, post = numel(tuple(ish[:-1])), numel(tuple(xs[depth:]))
    if numel(upd.type.shape) != rows * post:
        return False  # the reference cannot reshape the updates
    checks, st = index_checks(lw, node, idx, x, range(depth)), contiguous_strides(xs)
    size, dtype, red = out.type.itemsize, out.type.dtype, node.attrs.get("reduction", "none")

    def gen(loc: Callable[[Ref | None], Operand | None]) -> str:
        return tuples_kernel(
            f"{name}_update",
            size,
            loc(out),
            loc(upd),  # type: ignore
            loc(idx),
            rows,
            rows,
            0,
            checks,
            st[:depth],
            post,
            red,
            dtype,
        )

    _scatter_steps(lw, node, name, ops, rows, gen)
    return True


def lower_one_hot(lw: Lowerer, node: Node, name: str) -> bool:
    """OneHot: the output viewed as (indices' dims before axis, depth, after)."""
    ops = static_operands(node, 2)
    if ops is None:
        return False
    idx, values, out = ops
    if numel(values.type.shape) < 2:
        return False  # the reference reads values[0] and values[1]
    ish = dims(idx)
    axis = normalize_axis(node.attrs.get("axis", -1), len(ish) + 1)
    pre, post = numel(tuple(ish[:axis])), numel(tuple(ish[axis:]))
    depth, size = int(node.attrs["depth"]), out.type.itemsize

    def gen(loc: Callable[[Ref | None], Operand | None]) -> str:
        return one_hot_kernel(
            name,
            size,
            loc(out),
            loc(idx),
            loc(values),  # type: ignore
            ONE_HOT_INDEX[idx.type.dtype],
            pre,
            depth,
            post,
        )

    kernel_step(lw, node, name, [idx, values], out, gen, pre, numel(out.type.shape) * size)
    return True


def _scatter_dtypes(node: Node) -> bool:
    """Data, updates and output of one movable dtype (one a reduction combines, unless it is
    none); int32/int64 indices."""
    upd = node.inputs[2]
    red = node.attrs.get("reduction", "none")
    return (
        gather_dtypes(node)
        and upd is not None
        and upd.type.dtype == node.outputs[0].type.dtype
        and (red == "none" or (red in REDUCTIONS and upd.type.dtype in REDUCE_TYPES))
    )


def _one_hot_dtypes(node: Node) -> bool:
    idx, values, out = node.inputs[0], node.inputs[1], node.outputs[0]
    return (
        idx is not None
        and idx.type.dtype in ONE_HOT_INDEX
        and values is not None
        and values.type.dtype == out.type.dtype
        and out.type.dtype != "string"
        and out.type.itemsize in INT_TYPES
    )


LOWERINGS["gather_elements"] = Lowering(lower_gather_elements, gather_dtypes)
LOWERINGS["gather_nd"] = Lowering(lower_gather_nd, gather_dtypes)
LOWERINGS["scatter_elements"] = Lowering(lower_scatter_elements, _scatter_dtypes)
LOWERINGS["scatter_nd"] = Lowering(lower_scatter_nd, _scatter_dtypes)
LOWERINGS["one_hot"] = Lowering(lower_one_hot, _one_hot_dtypes)
