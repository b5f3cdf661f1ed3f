"""Data-movement kernels that index: Gather, Expand, Tile and Pad, and what the index-driven
kernels of :mod:`satura.targets.scatter` share (the range check of a runtime index, the step of
one kernel, the dtype checks).

One kernel serves the four. The output is ``rows`` (every dim but the last, after merging the dims
the source walks as one) of one inner row each. Output row ``r``'s source base is a sum of one
term per outer dim: ``i * stride`` (:class:`Affine`; stride 0 broadcasts), a constant table entry
(:class:`Table`; a negative entry makes the row the pad value), or a gather index read at run
time, normalized (``idx + dim`` when negative) and range-checked (:class:`Indexed`). The inner row
is a list of segments: :class:`Run` (an arithmetic run of source elements; stride 1 is one
``llvm.memcpy``, 0 a broadcast, -1 a reflection), :class:`Fill`, :class:`Mapped` (table-driven)
and :class:`Gathered` (a gather along the last dim). Rows are shared between cores. Any dtype of
1, 2, 4 or 8 bytes: elements move as integers of that size.

A runtime index out of ``[-dim, dim-1]`` is never read or written through: the kernel reports it
in the model's error record (``kernel.report_error``) and returns; the runtime raises InputError
naming the node, the value and the range. Constant indices are checked here, at compile time
(:func:`check_constant_indices`).

Falls back to numpy: Pad modes other than constant/edge/reflect (wrap), edge/reflect padding of
an axis cropped to nothing (the reference raises), a pad value of a dtype numpy cannot convert to
(bfloat16 other than 0), string tensors, indices of other types than int32/int64.

Registers its lowerings in :data:`satura.targets.lower.LOWERINGS` on import.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from satura.engine.errors import CodegenError, ShapeError
from satura.engine.graph import Node, Value
from satura.engine.shapes import normalize_axis
from satura.targets.elementwise import broadcast_strides, collapse
from satura.targets.kernel import (
    ERROR_SLOT,
    Loops,
    Operand,
    body_header,
    report_error,
    share,
    wrapper,
)
from satura.targets.layout import INT_TYPES, contiguous_strides
from satura.targets.lower import LOWERINGS, Lowerer, Lowering, Ref, Step, numel, worth_splitting

# A row of a constant-mode or edge/reflect padded last dim becomes at most this many segments
# (fill / copy / reflection runs); beyond that one table-driven segment is shorter code.
MAX_SEGMENTS = 8


@dataclass(frozen=True)
class Affine:
    """Outer dim: index ``i`` reads ``i * stride`` elements further into the source."""

    size: int
    stride: int


@dataclass(frozen=True)
class Table:
    """Outer dim: index ``i`` reads ``offsets[i]`` elements further; a negative entry makes the
    whole row the fill value (constant padding)."""

    offsets: tuple[int, ...]

    @property
    def size(self) -> int:
        return len(self.offsets)


@dataclass(frozen=True)
class Indexed:
    """Outer dim of a gather: index ``i`` reads ``norm(indices[i]) * stride`` further, where
    ``indices[i]`` must lie in ``[-dim, dim-1]`` and ``norm`` adds ``dim`` to a negative one."""

    size: int
    stride: int


Outer = Affine | Table | Indexed


@dataclass(frozen=True)
class Run:
    """``n`` elements: element ``j`` is read at ``base + offset + j * stride``."""

    n: int
    offset: int
    stride: int


@dataclass(frozen=True)
class Fill:
    """``n`` copies of the fill value."""

    n: int


@dataclass(frozen=True)
class Mapped:
    """Element ``j`` is read at ``base + offsets[j]``, or is the fill value where negative."""

    offsets: tuple[int, ...]


@dataclass(frozen=True)
class Gathered:
    """``n`` elements: element ``j`` is read at ``base + norm(indices[j]) * stride``."""

    n: int
    stride: int


Segment = Run | Fill | Mapped | Gathered


@dataclass(frozen=True)
class IndexCheck:
    """How a gather's indices are read and checked: their LLVM type, the size of the indexed
    axis, and what the error record names (``code``: graph node index + 1; which input)."""

    ty: str
    dim: int
    code: int
    input_no: int = 1


def checked_index(
    L: list[str],
    tail: list[str],
    tag: str,
    pos: str,
    check: IndexCheck,
    indices: str = "%a2",
    record: str = "%a3",
) -> str:
    """Emit the load of ``indices[pos]`` and its range check (out of range: the error block,
    appended to ``tail``, reports it and returns); the normalized index's i64 name."""
    v = f"%{tag}.v"
    L.extend(
        [
            f"  %{tag}.p = getelementptr {check.ty}, ptr {indices}, i64 {pos}",
            f"  %{tag}.l = load {check.ty}, ptr %{tag}.p, align 1",
        ]
    )
    L.append(
        f"  {v} = sext {check.ty} %{tag}.l to i64"
        if check.ty != "i64"
        else f"  {v} = add i64 %{tag}.l, 0"
    )
    L.extend(
        [
            f"  %{tag}.neg = icmp slt i64 {v}, 0",
            f"  %{tag}.w = add i64 {v}, {check.dim}",
            f"  %{tag}.u = select i1 %{tag}.neg, i64 %{tag}.w, i64 {v}",
            f"  %{tag}.ok = icmp ult i64 %{tag}.u, {check.dim}",
            f"  br i1 %{tag}.ok, label %{tag}.in, label %{tag}.bad",
            f"{tag}.in:",
        ]
    )
    report_error(
        tail, f"{tag}.bad", record, check.code, pos, v, -check.dim, check.dim - 1, check.input_no
    )
    return f"%{tag}.u"


def _seg_len(s: Segment) -> int:
    return len(s.offsets) if isinstance(s, Mapped) else s.n


def _signed(bits: int, width: int) -> int:
    """``bits`` (an unsigned integer of ``width`` bytes) as the signed literal LLVM parses."""
    top = 1 << (8 * width)
    bits %= top
    return bits - top if bits >= top >> 1 else bits


def index_copy_kernel(
    name: str,
    itemsize: int,
    out: Operand,
    src: Operand,
    outer: Sequence[Outer],
    row: Sequence[Segment],
    fill: int = 0,
    indices: Operand | None = None,
    check: IndexCheck | None = None,
    base: int = 0,
) -> str:
    """LLVM IR of ``out[r, :] = segments of src`` for every row ``r`` of the outer dims (see the
    module docstring); ``fill`` is the fill value's bits, ``base`` a constant source offset.
    ``indices`` and ``check`` are needed where an outer dim is Indexed or a segment Gathered."""
    ty = INT_TYPES[itemsize]
    fv = _signed(fill, itemsize)
    rows = numel(tuple(a.size for a in outer))
    row_len = sum(_seg_len(s) for s in row)
    has_index = any(isinstance(a, Indexed) for a in outer) or any(
        isinstance(s, Gathered) for s in row
    )
    if has_index and (indices is None or check is None):
        raise CodegenError(f"kernel {name}: a gather needs its indices and their check")
    G: list[str] = []  # module-level tables
    tail: list[str] = []  # error blocks, after the body's return
    L = [
        body_header(name, 4 if has_index else 2),
        "entry:",
        "  %r.a = alloca i64, align 8",
        "  %f.a = alloca i64, align 8",
    ]
    L += [f"  %j{s}.a = alloca i64, align 8" for s in range(len(row))]
    share(L, rows, 1, "%r0", "%r1")
    loops = Loops(L)

    def table(tag: str, offsets: Sequence[int]) -> str:
        G.append(
            f"@{name}.{tag} = private unnamed_addr constant [{len(offsets)} x i64] ["
            + ", ".join(f"i64 {o}" for o in offsets)
            + "]"
        )
        return f"@{name}.{tag}"

    def index(tag: str, pos: str) -> str:
        assert check is not None
        return checked_index(L, tail, tag, pos, check)

    r = loops.open("r", "%r0", "%r1", 1)
    terms: list[str] = []
    fills: list[str] = []
    rem = r
    for k in reversed(range(len(outer))):
        ax = outer[k]
        if k == 0:
            ix = rem
        else:
            L += [f"  %ix{k} = urem i64 {rem}, {ax.size}", f"  %rq{k} = udiv i64 {rem}, {ax.size}"]
            ix, rem = f"%ix{k}", f"%rq{k}"
        if isinstance(ax, Affine):
            if ax.stride:
                L.append(f"  %t{k} = mul i64 {ix}, {ax.stride}")
                terms.append(f"%t{k}")
        elif isinstance(ax, Table):
            L += [
                f"  %tp{k} = getelementptr i64, ptr {table(f't{k}', ax.offsets)}, i64 {ix}",
                f"  %t{k} = load i64, ptr %tp{k}, align 8",
            ]
            terms.append(f"%t{k}")
            if min(ax.offsets) < 0:
                L.append(f"  %fl{k} = icmp slt i64 %t{k}, 0")
                fills.append(f"%fl{k}")
        else:
            u = index(f"x{k}", ix)
            L.append(f"  %t{k} = mul i64 {u}, {ax.stride}")
            terms.append(f"%t{k}")
    acc = str(base)
    for n, t in enumerate(terms):
        L.append(f"  %bs{n} = add i64 {acc}, {t}")
        acc = f"%bs{n}"
    L += [
        f"  %base = add i64 {acc}, 0",
        f"  %orow = mul i64 %r, {row_len}",
        f"  %op = getelementptr {ty}, ptr %a0, i64 %orow",
    ]
    if fills:
        flag = fills[0]
        for n, f in enumerate(fills[1:]):
            L.append(f"  %fo{n} = or i1 {flag}, {f}")
            flag = f"%fo{n}"
        L += [f"  br i1 {flag}, label %rowfill, label %rowdata", "rowdata:"]
    L.append(f"  %sp = getelementptr {ty}, ptr %a1, i64 %base")
    at = 0
    for s, seg in enumerate(row):
        L.append(f"  %d{s} = getelementptr {ty}, ptr %op, i64 {at}")
        at += _seg_len(seg)
        if isinstance(seg, Run) and seg.stride == 1:
            L += [
                f"  %s{s} = getelementptr {ty}, ptr %sp, i64 {seg.offset}",
                f"  call void @llvm.memcpy.p0.p0.i64(ptr align 1 %d{s}, ptr align 1 %s{s}, "
                f"i64 {seg.n * itemsize}, i1 false)",
            ]
            continue
        j = loops.open(f"j{s}", "0", str(_seg_len(seg)), 1)
        if isinstance(seg, Fill):
            val = str(fv)
        else:
            if isinstance(seg, Run):
                L += [
                    f"  %e{s}.m = mul i64 {j}, {seg.stride}",
                    f"  %e{s} = add i64 %e{s}.m, {seg.offset}",
                ]
            elif isinstance(seg, Gathered):
                L.append(f"  %e{s} = mul i64 {index(f'g{s}', j)}, {seg.stride}")
            else:
                L += [
                    f"  %m{s}.p = getelementptr i64, ptr {table(f'm{s}', seg.offsets)}, i64 {j}",
                    f"  %m{s} = load i64, ptr %m{s}.p, align 8",
                ]
                if min(seg.offsets) < 0:
                    L += [
                        f"  %m{s}.neg = icmp slt i64 %m{s}, 0",
                        f"  %e{s} = select i1 %m{s}.neg, i64 0, i64 %m{s}",
                    ]
                else:
                    L.append(f"  %e{s} = add i64 %m{s}, 0")
            L += [
                f"  %l{s}.p = getelementptr {ty}, ptr %sp, i64 %e{s}",
                f"  %l{s} = load {ty}, ptr %l{s}.p, align 1",
            ]
            val = f"%l{s}"
            if isinstance(seg, Mapped) and min(seg.offsets) < 0:
                L.append(f"  %v{s} = select i1 %m{s}.neg, {ty} {fv}, {ty} %l{s}")
                val = f"%v{s}"
        L += [
            f"  %o{s}.p = getelementptr {ty}, ptr %d{s}, i64 {j}",
            f"  store {ty} {val}, ptr %o{s}.p, align 1",
        ]
        loops.close(f"j{s}", 1)
    if fills:
        L += ["  br label %rowend", "rowfill:"]
        f = loops.open("f", "0", str(row_len), 1)
        L += [
            f"  %fp = getelementptr {ty}, ptr %op, i64 {f}",
            f"  store {ty} {fv}, ptr %fp, align 1",
        ]
        loops.close("f", 1)
        L += ["  br label %rowend", "rowend:"]
    loops.close("r", 1)
    L += ["  ret void", *tail, "}"]
    ops = [out, src] + ([indices, Operand(ERROR_SLOT)] if has_index else [])
    return "\n".join([*G, wrapper(name, ops), "\n".join(L)])  # type: ignore[list-item]


def row_segments(offsets: Sequence[int]) -> list[Segment]:
    """The inner row whose element ``j`` reads ``offsets[j]`` (negative: fill) as runs: fills,
    arithmetic progressions (copies, broadcasts, reflections), or one table when too many."""
    segs: list[Segment] = []
    i, n = 0, len(offsets)
    while i < n:
        j = i + 1
        if offsets[i] < 0:
            while j < n and offsets[j] < 0:
                j += 1
            segs.append(Fill(j - i))
        else:
            d = offsets[j] - offsets[i] if j < n and offsets[j] >= 0 else 1
            while j < n and offsets[j] >= 0 and offsets[j] - offsets[j - 1] == d:
                j += 1
            segs.append(Run(j - i, offsets[i], d))
        i = j
    return segs if len(segs) <= MAX_SEGMENTS else [Mapped(tuple(offsets))]


def merge(axes: Sequence[Outer]) -> list[Outer]:
    """Drop size-1 Affine dims and merge adjacent Affine dims the source walks as one."""
    out: list[Outer] = []
    for a in axes:
        if isinstance(a, Affine) and a.size == 1:
            continue
        prev = out[-1] if out else None
        if isinstance(a, Affine) and isinstance(prev, Affine) and prev.stride == a.stride * a.size:
            out[-1] = Affine(prev.size * a.size, a.stride)
        else:
            out.append(a)
    return out


def split_last(axes: Sequence[Outer]) -> tuple[list[Outer], list[Segment]]:
    """Outer dims and the inner row of merged constant dims (the last one becomes the row)."""
    if not axes:
        return [], [Run(1, 0, 1)]
    *outer, last = axes
    if isinstance(last, Affine):
        return list(outer), [Run(last.size, 0, last.stride)]
    assert isinstance(last, Table)
    return list(outer), row_segments(last.offsets)


# -- what the index-driven lowerings share ---------------------------------------------------------
def movable(node: Node) -> bool:
    """Data and output of one dtype of 1, 2, 4 or 8 bytes (strings are Python objects)."""
    x, out = node.inputs[0], node.outputs[0]
    return (
        x is not None
        and x.type.dtype == out.type.dtype
        and x.type.dtype != "string"
        and x.type.itemsize in INT_TYPES
    )


def gather_dtypes(node: Node) -> bool:
    """:func:`movable` data and int32/int64 indices (input 1)."""
    idx = node.inputs[1]
    return movable(node) and idx is not None and idx.type.dtype in ("int32", "int64")


def dims(v: Value) -> list[int]:
    """The static shape of ``v``."""
    return [int(d) for d in v.type.shape]


def static_operands(node: Node, n: int) -> list[Value] | None:
    """``node``'s first ``n`` inputs and its output, or None unless all are present and
    statically shaped (then the node runs its numpy reference)."""
    vals = [*node.inputs[:n], node.outputs[0]]
    if len(vals) != n + 1 or any(v is None or not v.type.is_static for v in vals):
        return None
    return vals  # type: ignore[return-value]


def kernel_step(
    lw: Lowerer,
    node: Node,
    name: str,
    reads: list[Value],
    writes: Value,
    gen: Callable[[Callable[[Ref | None], Operand | None]], str],
    units: int,
    nbytes: int,
) -> None:
    """Append the step of one kernel whose ``units`` rows are shared between cores when it
    moves ``nbytes`` worth splitting."""
    lw.steps.append(
        Step(
            name,
            reads,
            [writes],
            gen,
            op=node.op,
            units=units,
            parallel=worth_splitting(nbytes=nbytes) and units > 1,
        )
    )


def copy_step(
    lw: Lowerer,
    name: str,
    node: Node,
    reads: list[Value],
    outer: Sequence[Outer],
    row: Sequence[Segment],
    fill: int = 0,
    check: IndexCheck | None = None,
    base: int = 0,
) -> None:
    """Append the :func:`index_copy_kernel` step that writes ``node``'s output from its data
    (``reads[0]``; ``reads[1]``: the gather indices that ``check`` checks)."""
    x, out = reads[0], node.outputs[0]
    idx = reads[1] if len(reads) > 1 else None
    size = out.type.itemsize

    def gen(loc: Callable[[Ref | None], Operand | None]) -> str:
        return index_copy_kernel(
            name,
            size,
            loc(out),
            loc(x),
            outer,
            row,
            fill,  # type: ignore
            loc(idx),
            check,
            base,
        )

    kernel_step(
        lw,
        node,
        name,
        reads,
        out,
        gen,
        numel(tuple(a.size for a in outer)),
        2 * numel(out.type.shape) * size,
    )


def node_code(lw: Lowerer, node: Node) -> int:
    """The error record's name for ``node``: its index in the graph + 1."""
    return next(i for i, n in enumerate(lw.g.nodes) if n is node) + 1


def check_constant_indices(
    node: Node, idx: Value, x: Value, sizes: Sequence[int], axes: Sequence[int]
) -> None:
    """Raise ShapeError for a constant index out of ``[-dim, dim-1]``: ``sizes``/``axes`` hold
    the size and number of the data axis each index selects on, per element of the indices'
    last dim (one entry: every index)."""
    if not idx.is_const:
        return
    vals = np.asarray(idx.data)
    shape = vals.shape
    lim = np.asarray(sizes[0]) if len(sizes) == 1 else np.asarray(sizes)
    bad = np.flatnonzero(((vals < -lim) | (vals >= lim)).reshape(-1))
    if not bad.size:
        return
    pos = int(bad[0])
    k = 0 if len(sizes) == 1 else pos % len(sizes)
    dim, axis = sizes[k], axes[k]
    where = f"[{', '.join(str(i) for i in np.unravel_index(pos, shape))}]" if shape else ""
    raise ShapeError(
        f"node '{node.name}' ({node.op}): constant index "
        f"{int(vals.reshape(-1)[pos])} at {idx.name}{where} is out of range "
        f"[{-dim}, {dim - 1}] for axis {axis} of '{x.name}' (size {dim})"
    )


def index_checks(
    lw: Lowerer, node: Node, idx: Value, x: Value, axes: Sequence[int]
) -> list[IndexCheck]:
    """The run-time checks of indices ``idx`` that select on ``x``'s ``axes`` (one axis: every
    index; several: one per element of the indices' last dim); constant indices are checked
    now (ShapeError)."""
    xs = dims(x)
    check_constant_indices(node, idx, x, [xs[a] for a in axes], axes)
    ty, code = ("i32" if idx.type.dtype == "int32" else "i64"), node_code(lw, node)
    return [IndexCheck(ty, xs[a], code) for a in axes]


def lower_gather(lw: Lowerer, node: Node, name: str) -> bool:
    """``out = take(x, idx, axis)``: rows of (leading dims, indices) copy the trailing block;
    a gather along the last dim gathers element by element within a row."""
    ops = static_operands(node, 2)
    if ops is None:
        return False
    x, idx, _ = ops
    xs = dims(x)
    axis = normalize_axis(node.attrs.get("axis", 0), len(xs))
    pre, dim, post = numel(tuple(xs[:axis])), xs[axis], numel(tuple(xs[axis + 1 :]))
    nidx = numel(idx.type.shape)
    (check,) = index_checks(lw, node, idx, x, [axis])
    outer: list[Outer] = [Affine(pre, dim * post)] if pre > 1 else []
    if post == 1:
        row: list[Segment] = [Gathered(nidx, 1)]
    else:
        outer.append(Indexed(nidx, post))
        row = [Run(post, 0, 1)]
    copy_step(lw, name, node, [x, idx], outer, row, check=check)
    return True


def _affine_step(
    lw: Lowerer, node: Node, name: str, shape: Sequence[int], strides: Sequence[int]
) -> bool:
    """A copy whose output index ``i`` reads ``sum(i[k] * strides[k])`` (0: broadcast)."""
    ms, (mst,) = collapse(list(shape), [list(strides)])
    outer, row = split_last([Affine(s, t) for s, t in zip(ms, mst, strict=True)])
    x = node.inputs[0]
    assert x is not None
    copy_step(lw, name, node, [x], outer, row)
    return True


def lower_expand(lw: Lowerer, node: Node, name: str) -> bool:
    """Broadcast copy: a broadcast dim reads with stride 0."""
    ops = static_operands(node, 1)
    if ops is None:
        return False
    x, out = ops
    os = dims(out)
    return _affine_step(lw, node, name, os, broadcast_strides(dims(x), os))


def lower_tile(lw: Lowerer, node: Node, name: str) -> bool:
    """Tiling: output dim k is (repeat, x dim k), read with strides (0, x's stride)."""
    ops = static_operands(node, 1)
    if ops is None:
        return False
    x, _ = ops
    xs = dims(x)
    reps = [int(r) for r in node.attrs["repeats"]]
    st = contiguous_strides(xs)
    shape = [d for r, n in zip(reps, xs, strict=True) for d in (r, n)]
    strides = [s for k in range(len(xs)) for s in (0, st[k])]
    return _affine_step(lw, node, name, shape, strides)


def _fill_bits(value: float, dtype: str, itemsize: int) -> int | None:
    """The pad value converted as the reference converts it, as unsigned bits (None: numpy
    cannot convert to ``dtype``)."""
    try:
        arr = np.asarray(value).astype(np.dtype(dtype))
    except TypeError:
        return 0 if value == 0.0 and not np.signbit(value) else None
    return int(arr.reshape(1).view(f"u{itemsize}")[0])


def lower_pad(lw: Lowerer, node: Node, name: str) -> bool:
    """Pad (crop where negative): per dim, unpadded dims are affine (cropping moves the base),
    padded ones a table of source offsets (constant: -1 where the pad value goes; edge/reflect:
    the source index numpy's pad picks)."""
    ops = static_operands(node, 1)
    if ops is None:
        return False
    x, _ = ops
    mode = node.attrs.get("mode", "constant")
    if mode not in ("constant", "edge", "reflect"):
        return False
    xs = dims(x)
    rank = len(xs)
    pads = [int(p) for p in node.attrs["pads"]]
    fill = 0
    if mode == "constant":
        bits = _fill_bits(float(node.attrs.get("value", 0.0)), x.type.dtype, x.type.itemsize)
        if bits is None:
            return False
        fill = bits
    st = contiguous_strides(xs)
    axes: list[Outer] = []
    base = 0
    for k in range(rank):
        lo, hi = pads[k], pads[rank + k]
        clo, chi = max(0, -lo), max(0, -hi)
        m = xs[k] - clo - chi
        plo, phi = max(0, lo), max(0, hi)
        if plo == 0 and phi == 0:
            axes.append(Affine(m, st[k]))
            base += clo * st[k]
            continue
        if mode == "constant":
            src = [-1] * plo + list(range(clo, clo + m)) + [-1] * phi
        elif m <= 0:
            return False  # numpy cannot edge/reflect-pad an empty axis: the reference raises
        else:
            src = np.pad(np.arange(clo, clo + m), (plo, phi), mode=mode).tolist()
        axes.append(Table(tuple(-1 if s < 0 else s * st[k] for s in src)))
    outer, row = split_last(merge(axes))
    copy_step(lw, name, node, [x], outer, row, fill=fill, base=base)
    return True


LOWERINGS["gather"] = Lowering(lower_gather, gather_dtypes)
LOWERINGS["expand"] = Lowering(lower_expand, movable)
LOWERINGS["tile"] = Lowering(lower_tile, movable)
LOWERINGS["pad"] = Lowering(lower_pad, movable)
