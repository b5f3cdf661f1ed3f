"""Data-movement kernels that index: Gather, Expand, Tile, Pad; GatherElements, GatherND,
ScatterElements, ScatterND and OneHot.

One kernel serves the first four. The output is ``rows`` (every dim but the last, after merging
the dims the source walks as one) of one inner row each. Output row ``r``'s source base is a sum of
one term per outer dim: ``i * stride`` (:class:`Affine`; stride 0 broadcasts), a constant table
entry (:class:`Table`; a negative entry makes the row the pad value), or a gather index read at run
time, normalized (``idx + dim`` when negative) and range-checked (:class:`Indexed`). The inner row
is a list of segments: :class:`Run` (an arithmetic run of source elements; stride 1 is one
``llvm.memcpy``, 0 a broadcast, -1 a reflection), :class:`Fill`, :class:`Mapped` (table-driven)
and :class:`Gathered` (a gather along the last dim). Rows are shared between cores. Any dtype of
1, 2, 4 or 8 bytes: elements move as integers of that size.

GatherElements and ScatterElements walk the positions of their indices (:func:`elements_kernel`:
each index picks the data element along the axis); GatherND and ScatterND walk index tuples
(:func:`tuples_kernel`: each tuple picks a block, copied with one memcpy). A scatter is two steps:
the data is copied to the output (rows shared between cores), then the updates are applied in the
reference's order in one part, so duplicate indices resolve as its sequential loop does (the last
write wins; reductions add/mul/max/min combine in that order, as numpy's ufuncs do). OneHot
(:func:`one_hot_kernel`) compares each normalized index with the position along the new axis: an
index out of range gives an all-off row, as the reference does.

A runtime index out of ``[-dim, dim-1]`` is never read or written through: the kernel reports it
in the model's error record (``kernel.report_error``) and returns; the runtime raises InputError
naming the node, the value and the range. Constant indices are checked here, at compile time.

Falls back to numpy: Pad modes other than constant/edge/reflect (none exist in the op today),
edge/reflect padding of an axis cropped to nothing (the reference raises), a pad value of a dtype
numpy cannot convert to (bfloat16 other than 0), string tensors, GatherElements whose indices
differ from the data off the axis, ScatterElements whose updates differ from its indices in shape
or whose indices exceed the data off the axis, shapes the reference itself rejects, indices of
other types than int32/int64 (OneHot: also float32/float64), and scatter reductions on bfloat16.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from satura.engine.errors import CodegenError, ShapeError
from satura.engine.graph import Node, Value
from satura.engine.shapes import normalize_axis
from satura.targets.elementwise import broadcast_strides, collapse
from satura.targets.irmath import dconst, fconst
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
# A scatter copies its data in rows of at least this many elements (whole trailing dims).
COPY_ROW = 1024


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


def checked_index(L: list[str], tail: list[str], tag: str, pos: str, check: IndexCheck,
                  indices: str = "%a2", record: str = "%a3") -> str:
    """Emit the load of ``indices[pos]`` and its range check (out of range: the error block,
    appended to ``tail``, reports it and returns); the normalized index's i64 name."""
    v = f"%{tag}.v"
    L.extend([f"  %{tag}.p = getelementptr {check.ty}, ptr {indices}, i64 {pos}",
              f"  %{tag}.l = load {check.ty}, ptr %{tag}.p, align 1"])
    L.append(f"  {v} = sext {check.ty} %{tag}.l to i64" if check.ty != "i64"
             else f"  {v} = add i64 %{tag}.l, 0")
    L.extend([f"  %{tag}.neg = icmp slt i64 {v}, 0",
              f"  %{tag}.w = add i64 {v}, {check.dim}",
              f"  %{tag}.u = select i1 %{tag}.neg, i64 %{tag}.w, i64 {v}",
              f"  %{tag}.ok = icmp ult i64 %{tag}.u, {check.dim}",
              f"  br i1 %{tag}.ok, label %{tag}.in, label %{tag}.bad", f"{tag}.in:"])
    report_error(tail, f"{tag}.bad", record, check.code, pos, v, -check.dim, check.dim - 1,
                 check.input_no)
    return f"%{tag}.u"


def _seg_len(s: Segment) -> int:
    return len(s.offsets) if isinstance(s, Mapped) else s.n


def _signed(bits: int, width: int) -> int:
    """``bits`` (an unsigned integer of ``width`` bytes) as the signed literal LLVM parses."""
    top = 1 << (8 * width)
    bits %= top
    return bits - top if bits >= top >> 1 else bits


def index_copy_kernel(name: str, itemsize: int, out: Operand, src: Operand,
                      outer: Sequence[Outer], row: Sequence[Segment], fill: int = 0,
                      indices: Operand | None = None, check: IndexCheck | None = None,
                      base: int = 0) -> str:
    """LLVM IR of ``out[r, :] = segments of src`` for every row ``r`` of the outer dims (see the
    module docstring); ``fill`` is the fill value's bits, ``base`` a constant source offset.
    ``indices`` and ``check`` are needed where an outer dim is Indexed or a segment Gathered."""
    ty = INT_TYPES[itemsize]
    fv = _signed(fill, itemsize)
    rows = numel(tuple(a.size for a in outer))
    row_len = sum(_seg_len(s) for s in row)
    has_index = any(isinstance(a, Indexed) for a in outer) or any(
        isinstance(s, Gathered) for s in row)
    if has_index and (indices is None or check is None):
        raise CodegenError(f"kernel {name}: a gather needs its indices and their check")
    G: list[str] = []       # module-level tables
    tail: list[str] = []    # error blocks, after the body's return
    L = [body_header(name, 4 if has_index else 2), "entry:", "  %r.a = alloca i64, align 8",
         "  %f.a = alloca i64, align 8"]
    L += [f"  %j{s}.a = alloca i64, align 8" for s in range(len(row))]
    share(L, rows, 1, "%r0", "%r1")
    loops = Loops(L)

    def table(tag: str, offsets: Sequence[int]) -> str:
        G.append(f"@{name}.{tag} = private unnamed_addr constant [{len(offsets)} x i64] ["
                 + ", ".join(f"i64 {o}" for o in offsets) + "]")
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
            L += [f"  %tp{k} = getelementptr i64, ptr {table(f't{k}', ax.offsets)}, i64 {ix}",
                  f"  %t{k} = load i64, ptr %tp{k}, align 8"]
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
    L += [f"  %base = add i64 {acc}, 0", f"  %orow = mul i64 %r, {row_len}",
          f"  %op = getelementptr {ty}, ptr %a0, i64 %orow"]
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
            L += [f"  %s{s} = getelementptr {ty}, ptr %sp, i64 {seg.offset}",
                  f"  call void @llvm.memcpy.p0.p0.i64(ptr align 1 %d{s}, ptr align 1 %s{s}, "
                  f"i64 {seg.n * itemsize}, i1 false)"]
            continue
        j = loops.open(f"j{s}", "0", str(_seg_len(seg)), 1)
        if isinstance(seg, Fill):
            val = str(fv)
        else:
            if isinstance(seg, Run):
                L += [f"  %e{s}.m = mul i64 {j}, {seg.stride}",
                      f"  %e{s} = add i64 %e{s}.m, {seg.offset}"]
            elif isinstance(seg, Gathered):
                L.append(f"  %e{s} = mul i64 {index(f'g{s}', j)}, {seg.stride}")
            else:
                L += [f"  %m{s}.p = getelementptr i64, ptr {table(f'm{s}', seg.offsets)}, "
                      f"i64 {j}", f"  %m{s} = load i64, ptr %m{s}.p, align 8"]
                if min(seg.offsets) < 0:
                    L += [f"  %m{s}.neg = icmp slt i64 %m{s}, 0",
                          f"  %e{s} = select i1 %m{s}.neg, i64 0, i64 %m{s}"]
                else:
                    L.append(f"  %e{s} = add i64 %m{s}, 0")
            L += [f"  %l{s}.p = getelementptr {ty}, ptr %sp, i64 %e{s}",
                  f"  %l{s} = load {ty}, ptr %l{s}.p, align 1"]
            val = f"%l{s}"
            if isinstance(seg, Mapped) and min(seg.offsets) < 0:
                L.append(f"  %v{s} = select i1 %m{s}.neg, {ty} {fv}, {ty} %l{s}")
                val = f"%v{s}"
        L += [f"  %o{s}.p = getelementptr {ty}, ptr %d{s}, i64 {j}",
              f"  store {ty} {val}, ptr %o{s}.p, align 1"]
        loops.close(f"j{s}", 1)
    if fills:
        L += ["  br label %rowend", "rowfill:"]
        f = loops.open("f", "0", str(row_len), 1)
        L += [f"  %fp = getelementptr {ty}, ptr %op, i64 {f}",
              f"  store {ty} {fv}, ptr %fp, align 1"]
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
        if isinstance(a, Affine) and isinstance(prev, Affine) and \
                prev.stride == a.stride * a.size:
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


# -- element-wise and tuple indexing, scatter, one-hot -------------------------------------------
# The element types a scatter reduction combines: LLVM type and kind (f: float, s/u: signed or
# unsigned integer, b: bool as a 0/1 byte). numpy's float16 arithmetic rounds a float32 result to
# half, which is what LLVM's half arithmetic gives too.
REDUCE_TYPES = {"float32": ("float", "f"), "float64": ("double", "f"), "float16": ("half", "f"),
                "int64": ("i64", "s"), "int32": ("i32", "s"), "int16": ("i16", "s"),
                "int8": ("i8", "s"), "uint64": ("i64", "u"), "uint32": ("i32", "u"),
                "uint16": ("i16", "u"), "uint8": ("i8", "u"), "bool": ("i8", "b")}
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
        L += [f"  {r}.c = fcmp {cmp} {ty} {a}, {b}", f"  {r}.n = fcmp uno {ty} {a}, {a}",
              f"  {r}.t = or i1 {r}.c, {r}.n", f"  {r} = select i1 {r}.t, {ty} {a}, {ty} {b}"]
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
        L += ["  %first = icmp eq i64 %part, 0", f"  %r1 = select i1 %first, i64 {rows}, i64 0",
              "  %r0 = add i64 0, 0"]


def _update(L: list[str], tag: str, itemsize: int, reduction: str, dtype: str, dst: str,
            src: str) -> None:
    """Emit ``*dst = reduction(*dst, *src)`` (``none``: ``*dst = *src``)."""
    if reduction == "none":
        ty = INT_TYPES[itemsize]
        L += [f"  %{tag}.u = load {ty}, ptr {src}, align 1",
              f"  store {ty} %{tag}.u, ptr {dst}, align 1"]
        return
    ty = REDUCE_TYPES[dtype][0]
    L += [f"  %{tag}.u = load {ty}, ptr {src}, align 1",
          f"  %{tag}.o = load {ty}, ptr {dst}, align 1"]
    val = combine(L, f"{tag}.r", reduction, dtype, f"%{tag}.o", f"%{tag}.u")
    L.append(f"  store {ty} {val}, ptr {dst}, align 1")


def elements_kernel(name: str, itemsize: int, out: Operand, src: Operand, indices: Operand,
                    ishape: Sequence[int], xshape: Sequence[int], axis: int, check: IndexCheck,
                    reduction: str | None = None, dtype: str = "") -> str:
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
    L = [body_header(name, 4), "entry:", "  %r.a = alloca i64, align 8",
         "  %j.a = alloca i64, align 8"]
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
        L += [f"  %dp = getelementptr {ty}, ptr %a0, i64 %xo",
              f"  %sp = getelementptr {ty}, ptr %a1, i64 %pos"]
        _update(L, "e", itemsize, reduction, dtype, "%dp", "%sp")
    else:
        L += [f"  %sp = getelementptr {ty}, ptr %a1, i64 %xo",
              f"  %v = load {ty}, ptr %sp, align 1",
              f"  %dp = getelementptr {ty}, ptr %a0, i64 %pos",
              f"  store {ty} %v, ptr %dp, align 1"]
    loops.close("j", 1)
    loops.close("r", 1)
    L += ["  ret void", *tail, "}"]
    return "\n".join([wrapper(name, [out, src, indices, Operand(ERROR_SLOT)]), "\n".join(L)])


def tuples_kernel(name: str, itemsize: int, out: Operand, src: Operand, indices: Operand,
                  rows: int, per_batch: int, batch_stride: int, checks: Sequence[IndexCheck],
                  strides: Sequence[int], post: int, reduction: str | None = None,
                  dtype: str = "") -> str:
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
    L = [body_header(name, 4), "entry:", "  %r.a = alloca i64, align 8",
         "  %e.a = alloca i64, align 8"]
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
    L += [f"  %dp = getelementptr {ty}, ptr {data}, i64 %blk",
          f"  %rowp = getelementptr {ty}, ptr {row}, i64 %rp"]
    if reduction is None or reduction == "none":
        dst, srcp = ("%dp", "%rowp") if scatter else ("%rowp", "%dp")
        L.append(f"  call void @llvm.memcpy.p0.p0.i64(ptr align 1 {dst}, ptr align 1 {srcp}, "
                 f"i64 {post * itemsize}, i1 false)")
    else:
        e = loops.open("e", "0", str(post), 1)
        L += [f"  %ed = getelementptr {ty}, ptr %dp, i64 {e}",
              f"  %es = getelementptr {ty}, ptr %rowp, i64 {e}"]
        _update(L, "u", itemsize, reduction, dtype, "%ed", "%es")
        loops.close("e", 1)
    loops.close("r", 1)
    L += ["  ret void", *tail, "}"]
    return "\n".join([wrapper(name, [out, src, indices, Operand(ERROR_SLOT)]), "\n".join(L)])


def one_hot_kernel(name: str, itemsize: int, out: Operand, indices: Operand, values: Operand,
                   ity: str, pre: int, depth: int, post: int) -> str:
    """LLVM IR of OneHot: ``out[p, d, q] = values[1] if norm(indices[p, q]) == d else
    values[0]``, ``norm`` adding ``depth`` to a negative index (``ity``: the indices' LLVM type,
    an integer or a float the reference truncates); an index out of range matches no ``d`` (an
    all-off row, as the reference gives). The ``pre`` rows are shared between cores."""
    ty = INT_TYPES[itemsize]
    L = [body_header(name, 3), "entry:", *(f"  %{v}.a = alloca i64, align 8" for v in "pdq"),
         f"  %offp = getelementptr {ty}, ptr %a2, i64 0", f"  %off = load {ty}, ptr %offp, align 1",
         f"  %onp = getelementptr {ty}, ptr %a2, i64 1", f"  %on = load {ty}, ptr %onp, align 1"]
    share(L, pre, 1, "%p0", "%p1")
    loops = Loops(L)
    p = loops.open("p", "%p0", "%p1", 1)
    L += [f"  %ib = mul i64 {p}, {post}", f"  %pd = mul i64 {p}, {depth}"]
    d = loops.open("d", "0", str(depth), 1)
    L += [f"  %ob0 = add i64 %pd, {d}", f"  %ob = mul i64 %ob0, {post}"]
    q = loops.open("q", "0", str(post), 1)
    L += [f"  %ip = add i64 %ib, {q}", f"  %ipp = getelementptr {ity}, ptr %a1, i64 %ip",
          f"  %il = load {ity}, ptr %ipp, align 1"]
    if ity in ("float", "double"):
        # numpy: where(i < 0, i + depth, i) in the float type, then astype(int64) (truncation);
        # only values in (-1, 2^62) can truncate to a d in [0, depth): converted, they are exact.
        dep = fconst(depth) if ity == "float" else dconst(depth)
        L += [f"  %neg = fcmp olt {ity} %il, 0.0", f"  %w = fadd {ity} %il, {dep}",
              f"  %wv = select i1 %neg, {ity} %w, {ity} %il",
              f"  %lo = fcmp ogt {ity} %wv, {dconst(-1.0)}",
              f"  %hi = fcmp olt {ity} %wv, {dconst(2.0 ** 62)}", "  %in = and i1 %lo, %hi",
              f"  %wi = fptosi {ity} %wv to i64", "  %u = select i1 %in, i64 %wi, i64 -1"]
    else:
        L += [f"  %iv = sext {ity} %il to i64" if ity != "i64" else "  %iv = add i64 %il, 0",
              "  %neg = icmp slt i64 %iv, 0", f"  %w = add i64 %iv, {depth}",
              "  %u = select i1 %neg, i64 %w, i64 %iv"]
    L += [f"  %hot = icmp eq i64 %u, {d}",
          f"  %v = select i1 %hot, {ty} %on, {ty} %off", f"  %op = add i64 %ob, {q}",
          f"  %opp = getelementptr {ty}, ptr %a0, i64 %op", f"  store {ty} %v, ptr %opp, align 1"]
    loops.close("q", 1)
    loops.close("d", 1)
    loops.close("p", 1)
    L += ["  ret void", "}"]
    return "\n".join([wrapper(name, [out, indices, values]), "\n".join(L)])


# -- lowerings ------------------------------------------------------------------------------------
def _movable(node: Node) -> bool:
    """Data and output of one dtype of 1, 2, 4 or 8 bytes (strings are Python objects)."""
    x, out = node.inputs[0], node.outputs[0]
    return (x is not None and x.type.dtype == out.type.dtype and x.type.dtype != "string"
            and x.type.itemsize in INT_TYPES)


def _gather_dtypes(node: Node) -> bool:
    idx = node.inputs[1]
    return _movable(node) and idx is not None and idx.type.dtype in ("int32", "int64")


def _ints(v: Value) -> list[int]:
    return [int(d) for d in v.type.shape]


def _static(*vals: Value | None) -> bool:
    return all(v is not None and v.type.is_static for v in vals)


def _add_step(lw: Lowerer, name: str, node: Node, reads: list[Value], outer: Sequence[Outer],
              row: Sequence[Segment], fill: int = 0, check: IndexCheck | None = None,
              base: int = 0) -> None:
    x, out = node.inputs[0], node.outputs[0]
    idx = reads[1] if len(reads) > 1 else None
    size = out.type.itemsize
    rows = numel(tuple(a.size for a in outer))

    def gen(loc: Callable[[Ref | None], Operand | None]) -> str:
        return index_copy_kernel(name, size, loc(out), loc(x), outer, row, fill,  # type: ignore
                                 loc(idx), check, base)

    nbytes = 2 * numel(out.type.shape) * size
    lw.steps.append(Step(name, reads, [out], gen, op=node.op, units=rows,
                         parallel=worth_splitting(nbytes=nbytes) and rows > 1))


def _node_code(lw: Lowerer, node: Node) -> int:
    """The error record's name for ``node``: its index in the graph + 1."""
    return next(i for i, n in enumerate(lw.g.nodes) if n is node) + 1


def _check_constant(node: Node, idx: Value, x: Value, dims: Sequence[int],
                    axes: Sequence[int]) -> None:
    """Raise ShapeError for a constant index out of ``[-dim, dim-1]``: ``dims``/``axes`` hold
    the size and number of the data axis each index selects on, per element of the indices'
    last dim (one entry: every index)."""
    if not idx.is_const:
        return
    vals = np.asarray(idx.data)
    shape = vals.shape
    lim = np.asarray(dims[0]) if len(dims) == 1 else np.asarray(dims)
    bad = np.flatnonzero(((vals < -lim) | (vals >= lim)).reshape(-1))
    if not bad.size:
        return
    pos = int(bad[0])
    dim, axis = (dims[0], axes[0]) if len(dims) == 1 else (dims[pos % len(dims)],
                                                           axes[pos % len(dims)])
    where = f"[{', '.join(str(i) for i in np.unravel_index(pos, shape))}]" if shape else ""
    raise ShapeError(f"node '{node.name}' ({node.op}): constant index "
                     f"{int(vals.reshape(-1)[pos])} at {idx.name}{where} is out of range "
                     f"[{-dim}, {dim - 1}] for axis {axis} of '{x.name}' (size {dim})")


def _index_type(v: Value) -> str:
    return "i32" if v.type.dtype == "int32" else "i64"


def lower_gather(lw: Lowerer, node: Node, name: str) -> bool:
    """``out = take(x, idx, axis)``: rows of (leading dims, indices) copy the trailing block;
    a gather along the last dim gathers element by element within a row."""
    x, idx, out = node.inputs[0], node.inputs[1], node.outputs[0]
    if not _static(x, idx, out):
        return False
    assert x is not None
    assert idx is not None
    xs = _ints(x)
    axis = normalize_axis(node.attrs.get("axis", 0), len(xs))
    pre, dim, post = numel(tuple(xs[:axis])), xs[axis], numel(tuple(xs[axis + 1:]))
    nidx = numel(idx.type.shape)
    _check_constant(node, idx, x, [dim], [axis])
    check = IndexCheck(_index_type(idx), dim, _node_code(lw, node))
    outer: list[Outer] = [Affine(pre, dim * post)] if pre > 1 else []
    if post == 1:
        row: list[Segment] = [Gathered(nidx, 1)]
    else:
        outer.append(Indexed(nidx, post))
        row = [Run(post, 0, 1)]
    _add_step(lw, name, node, [x, idx], outer, row, check=check)
    return True


def _affine_step(lw: Lowerer, node: Node, name: str, shape: Sequence[int],
                 strides: Sequence[int]) -> bool:
    """A copy whose output index ``i`` reads ``sum(i[k] * strides[k])`` (0: broadcast)."""
    ms, (mst,) = collapse(list(shape), [list(strides)])
    outer, row = split_last([Affine(s, t) for s, t in zip(ms, mst, strict=True)])
    x = node.inputs[0]
    assert x is not None
    _add_step(lw, name, node, [x], outer, row)
    return True


def lower_expand(lw: Lowerer, node: Node, name: str) -> bool:
    """Broadcast copy: a broadcast dim reads with stride 0."""
    x, out = node.inputs[0], node.outputs[0]
    if not _static(x, out):
        return False
    assert x is not None
    os = _ints(out)
    return _affine_step(lw, node, name, os, broadcast_strides(_ints(x), os))


def lower_tile(lw: Lowerer, node: Node, name: str) -> bool:
    """Tiling: output dim k is (repeat, x dim k), read with strides (0, x's stride)."""
    x, out = node.inputs[0], node.outputs[0]
    if not _static(x, out):
        return False
    assert x is not None
    xs = _ints(x)
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
    x, out = node.inputs[0], node.outputs[0]
    if not _static(x, out):
        return False
    assert x is not None
    mode = node.attrs.get("mode", "constant")
    if mode not in ("constant", "edge", "reflect"):
        return False
    xs = _ints(x)
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
    _add_step(lw, name, node, [x], outer, row, fill=fill, base=base)
    return True


def lower_gather_elements(lw: Lowerer, node: Node, name: str) -> bool:
    """``out = take_along_axis(x, idx, axis)``: one element a position of ``idx``, whose shape
    must equal x's off the axis (the reference's broadcasting otherwise disagrees with the
    declared output shape or raises)."""
    x, idx, out = node.inputs[0], node.inputs[1], node.outputs[0]
    if not _static(x, idx, out):
        return False
    assert x is not None
    assert idx is not None
    xs, ish = _ints(x), _ints(idx)
    if len(xs) != len(ish) or not xs:
        return False
    axis = normalize_axis(node.attrs.get("axis", 0), len(xs))
    if any(a != b for k, (a, b) in enumerate(zip(xs, ish, strict=True)) if k != axis):
        return False
    _check_constant(node, idx, x, [xs[axis]], [axis])
    check = IndexCheck(_index_type(idx), xs[axis], _node_code(lw, node))
    size, rows = out.type.itemsize, numel(tuple(ish[:-1]))

    def gen(loc: Callable[[Ref | None], Operand | None]) -> str:
        return elements_kernel(name, size, loc(out), loc(x), loc(idx), ish,  # type: ignore
                               xs, axis, check)

    nbytes = numel(tuple(ish)) * (2 * size + idx.type.itemsize)
    lw.steps.append(Step(name, [x, idx], [out], gen, op=node.op, units=rows,
                         parallel=worth_splitting(nbytes=nbytes) and rows > 1))
    return True


def lower_gather_nd(lw: Lowerer, node: Node, name: str) -> bool:
    """GatherND: a row per index tuple (per batch), copying the block the tuple selects."""
    x, idx, out = node.inputs[0], node.inputs[1], node.outputs[0]
    if not _static(x, idx, out):
        return False
    assert x is not None
    assert idx is not None
    xs, ish = _ints(x), _ints(idx)
    b = int(node.attrs.get("batch_dims", 0))
    if not ish or len(ish) <= b or ish[:b] != xs[:b] or b + ish[-1] > len(xs):
        return False
    depth = ish[-1]
    axes = list(range(b, b + depth))
    _check_constant(node, idx, x, [xs[a] for a in axes], axes)
    code, st = _node_code(lw, node), contiguous_strides(xs)
    checks = [IndexCheck(_index_type(idx), xs[a], code) for a in axes]
    rows = numel(tuple(ish[:-1]))
    per_batch = numel(tuple(ish[b:-1]))
    batch_stride = numel(tuple(xs[b:])) if b else 0
    post, size = numel(tuple(xs[b + depth:])), out.type.itemsize

    def gen(loc: Callable[[Ref | None], Operand | None]) -> str:
        return tuples_kernel(name, size, loc(out), loc(x), loc(idx), rows,  # type: ignore
                             per_batch, batch_stride, checks, [st[a] for a in axes], post)

    nbytes = 2 * numel(out.type.shape) * size
    lw.steps.append(Step(name, [x, idx], [out], gen, op=node.op, units=rows,
                         parallel=worth_splitting(nbytes=nbytes) and rows > 1))
    return True


def _copy_data(lw: Lowerer, node: Node, name: str) -> None:
    """The step that copies a scatter's data into its output: rows of the trailing dims that
    make at least COPY_ROW elements, shared between cores."""
    x = node.inputs[0]
    assert x is not None
    xs = _ints(x)
    row = 1
    for d in reversed(xs):
        if row >= COPY_ROW:
            break
        row *= d
    rows = numel(tuple(xs)) // row
    _add_step(lw, f"{name}_copy", node, [x], [Affine(rows, row)] if rows > 1 else [],
              [Run(row, 0, 1)])


def _scatter_step(lw: Lowerer, node: Node, name: str, gen: Callable[..., str]) -> None:
    """The update phase after the copy: reads the output the copy wrote, in part 0 only."""
    idx, upd, out = node.inputs[1], node.inputs[2], node.outputs[0]
    assert idx is not None
    assert upd is not None
    lw.steps.append(Step(f"{name}_update", [out, idx, upd], [out], gen, op=node.op))


def lower_scatter_elements(lw: Lowerer, node: Node, name: str) -> bool:
    """ScatterElements: copy the data, then apply the updates in the reference's order. The
    indices may be smaller than the data off the axis; the updates are shaped like them."""
    x, idx, upd, out = node.inputs[0], node.inputs[1], node.inputs[2], node.outputs[0]
    if not _static(x, idx, upd, out):
        return False
    assert x is not None
    assert idx is not None
    assert upd is not None
    xs, ish = _ints(x), _ints(idx)
    if len(xs) != len(ish) or not xs or _ints(upd) != ish:
        return False
    axis = normalize_axis(node.attrs.get("axis", 0), len(xs))
    if any(i > n for k, (n, i) in enumerate(zip(xs, ish, strict=True)) if k != axis):
        return False
    _check_constant(node, idx, x, [xs[axis]], [axis])
    check = IndexCheck(_index_type(idx), xs[axis], _node_code(lw, node))
    size, dtype, red = out.type.itemsize, out.type.dtype, node.attrs.get("reduction", "none")
    _copy_data(lw, node, name)
    if numel(tuple(ish)):
        def gen(loc: Callable[[Ref | None], Operand | None]) -> str:
            return elements_kernel(f"{name}_update", size, loc(out), loc(upd),  # type: ignore
                                   loc(idx), ish, xs, axis, check, red, dtype)

        _scatter_step(lw, node, name, gen)
    return True


def lower_scatter_nd(lw: Lowerer, node: Node, name: str) -> bool:
    """ScatterND: copy the data, then apply each tuple's block of updates in order."""
    x, idx, upd, out = node.inputs[0], node.inputs[1], node.inputs[2], node.outputs[0]
    if not _static(x, idx, upd, out):
        return False
    assert x is not None
    assert idx is not None
    assert upd is not None
    xs, ish = _ints(x), _ints(idx)
    if not ish or ish[-1] > len(xs):
        return False
    depth = ish[-1]
    rows, post = numel(tuple(ish[:-1])), numel(tuple(xs[depth:]))
    if numel(upd.type.shape) != rows * post:
        return False  # the reference cannot reshape the updates
    _check_constant(node, idx, x, xs[:depth], list(range(depth)))
    code, st = _node_code(lw, node), contiguous_strides(xs)
    checks = [IndexCheck(_index_type(idx), xs[a], code) for a in range(depth)]
    size, dtype, red = out.type.itemsize, out.type.dtype, node.attrs.get("reduction", "none")
    _copy_data(lw, node, name)
    if rows:
        def gen(loc: Callable[[Ref | None], Operand | None]) -> str:
            return tuples_kernel(f"{name}_update", size, loc(out), loc(upd),  # type: ignore
                                 loc(idx), rows, rows, 0, checks, st[:depth], post, red, dtype)

        _scatter_step(lw, node, name, gen)
    return True


def lower_one_hot(lw: Lowerer, node: Node, name: str) -> bool:
    """OneHot: the output viewed as (indices' dims before axis, depth, after)."""
    idx, values, out = node.inputs[0], node.inputs[1], node.outputs[0]
    if not _static(idx, values, out):
        return False
    assert idx is not None
    assert values is not None
    if numel(values.type.shape) < 2:
        return False  # the reference reads values[0] and values[1]
    ish = _ints(idx)
    axis = normalize_axis(node.attrs.get("axis", -1), len(ish) + 1)
    pre, post = numel(tuple(ish[:axis])), numel(tuple(ish[axis:]))
    depth, size = int(node.attrs["depth"]), out.type.itemsize

    def gen(loc: Callable[[Ref | None], Operand | None]) -> str:
        return one_hot_kernel(name, size, loc(out), loc(idx), loc(values),  # type: ignore
                              ONE_HOT_INDEX[idx.type.dtype], pre, depth, post)

    nbytes = numel(out.type.shape) * size
    lw.steps.append(Step(name, [idx, values], [out], gen, op=node.op, units=pre,
                         parallel=worth_splitting(nbytes=nbytes) and pre > 1))
    return True


def _scatter_dtypes(node: Node) -> bool:
    """Data, updates and output of one movable dtype (one a reduction combines, unless it is
    none); int32/int64 indices."""
    upd = node.inputs[2]
    red = node.attrs.get("reduction", "none")
    return _gather_dtypes(node) and upd is not None and \
        upd.type.dtype == node.outputs[0].type.dtype and \
        (red == "none" or (red in REDUCTIONS and upd.type.dtype in REDUCE_TYPES))


def _one_hot_dtypes(node: Node) -> bool:
    idx, values, out = node.inputs[0], node.inputs[1], node.outputs[0]
    return idx is not None and idx.type.dtype in ONE_HOT_INDEX and values is not None \
        and values.type.dtype == out.type.dtype and out.type.dtype != "string" \
        and out.type.itemsize in INT_TYPES


LOWERINGS["gather"] = Lowering(lower_gather, _gather_dtypes)
LOWERINGS["expand"] = Lowering(lower_expand, _movable)
LOWERINGS["tile"] = Lowering(lower_tile, _movable)
LOWERINGS["pad"] = Lowering(lower_pad, _movable)
LOWERINGS["gather_elements"] = Lowering(lower_gather_elements, _gather_dtypes)
LOWERINGS["gather_nd"] = Lowering(lower_gather_nd, _gather_dtypes)
LOWERINGS["scatter_elements"] = Lowering(lower_scatter_elements, _scatter_dtypes)
LOWERINGS["scatter_nd"] = Lowering(lower_scatter_nd, _scatter_dtypes)
LOWERINGS["one_hot"] = Lowering(lower_one_hot, _one_hot_dtypes)
