"""Reduction and scan kernels: ReduceSum/Mean/Max/Min/Prod, ArgMax/ArgMin over any axes, CumSum
and TopK along one axis.

Registers its lowerings in :data:`satura.targets.lower.LOWERINGS` on import.

**Element types.** float32, int32 and int64 for every op but an integer ReduceMean (its numpy
reference divides in float64 and truncates: left to it). Integer sums and products wrap in two's
complement, as numpy's do (numpy accumulates int32 in int64 and casts back: the same residue mod
2³²); integer max/min are ``smax``/``smin``; there is no NaN logic for integers. An integer vector
holds as many bytes as a float one (``Elem.lanes``: four int64 lanes where there are eight floats).

**Reductions.** The input's size-1 dimensions are dropped and adjacent dimensions of the same
kind (reduced or kept) are merged, so the input is an alternating sequence of groups, each with
its extent and element stride. Two kernels cover every sequence:

* **row** (the last group is reduced, ``n`` contiguous elements): one output element at a time;
  the contiguous run of ``n`` is accumulated into four ``<L x T>`` accumulators (then single
  vectors and one odd-width vector for the remainder), across every index of the other reduced
  groups, and folded to one value at the end. ReduceMean over [2, 3] of NCHW, RMSNorm's and
  LayerNorm's decomposed means, ReduceSum over the last axis (``attention_mask.sum(-1)``) are
  this case.
* **column** (the last group is kept, ``inner`` contiguous output elements; or ``inner`` = 1):
  a tile of up to four vectors of ``inner`` (the tail tile an odd-width vector) is accumulated
  across every index of the reduced groups, so each lane is one output element. [outer, R, inner]
  reduced over R is this case; so are ArgMax/ArgMin (always: the index is per lane) and every
  other interleaving, which walks its reduced groups as a loop nest with constant strides.

Parts (cores) split the output: row kernels by element, column kernels by (outer block, tile).
Semantics follow the numpy references of ``engine/ops/reduce.py``: float max/min propagate NaN
(``llvm.maximum``/``llvm.minimum``); ArgMax/ArgMin return the first index of the extreme value
(the last with ``select_last_index``), a NaN counting as the extreme, as ``np.argmax`` does; the
mean divides the sum by the count. Empty reductions (a reduced extent of 0) give the identity
(sum 0, prod 1, max -inf or the type's least value, min +inf or its greatest, mean NaN), as the
references do; an empty ArgMax axis, which the reference rejects, is left to it (fallback).

Float sums are fp32: a row is summed in 4·L lane accumulators, folded pairwise; a column lane adds
its terms in order (as numpy does along a non-contiguous axis). Results differ from numpy's
(pairwise along a contiguous axis) by rounding only: both are within n·2⁻²⁴·Σ|x| of the exact sum.
Any rank is handled (the groups alternate, so a rank-6 input has at most three of each kind).

**CumSum** (``axis``, ``exclusive``, ``reverse``): the input is [outer, n, inner] around the axis.
Each lane walks its n elements in order (from the end when reversed), adding each to a running
sum that starts at -0.0 (the fp identity: -0.0 + x is x, signed zeros included), so every partial
sum is rounded exactly as ``np.cumsum`` rounds it: float results are bit-identical. ``exclusive``
stores the sum before the element (+0.0 first, as the reference's zeros). With inner = 1 a row is
one sequential scalar scan; otherwise tiles of up to four vectors of the inner block scan side by
side. Parts split the (outer, tile) pairs.

**TopK** (``k``, ``axis``, ``largest``, ``sorted``): each of the outer·inner rows (stride inner)
keeps its best k in the outputs themselves, as a binary heap whose root is the worst one kept:
the first k elements are heapified, a later element that ranks before the root replaces it and
sifts down, and a heapsort leaves the k in order, best first. That is O(n log k) a row for any k,
with no scratch. The rank is the reference's stable argsort of -x (largest) or x: larger (smaller)
values first, NaN after every number, equal values (NaNs among themselves; -0.0 and +0.0) by
index. Over (value, index) pairs it is a strict total order, so the heap's k are exactly the
sorted prefix. The output is always sorted (``sorted=0`` allows any order, so the sorted one is
valid). A k above the axis length, which the reference rejects, is left to it (fallback).

The intrinsics are called without ``declare`` lines: LLVM (since 20) declares an intrinsic where
the IR text first calls it, and a second kernel's declaration of the same one would be an error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from satura.engine.graph import Node
from satura.engine.ops.reduce import reduce_axes
from satura.engine.shapes import normalize_axis
from satura.targets.elementwise import Expr, apply_expr
from satura.targets.irmath import Emitter, fconst, vec_type
from satura.targets.kernel import Loops, Operand, body_header, share, wrapper
from satura.targets.lower import (
    LOWERINGS,
    Lowerer,
    Lowering,
    Ref,
    Step,
    numel,
    worth_splitting,
)

# op -> kernel kind
KINDS = {
    "reduce_sum": "sum",
    "reduce_mean": "mean",
    "reduce_max": "max",
    "reduce_min": "min",
    "reduce_prod": "prod",
    "argmax": "argmax",
    "argmin": "argmin",
}
# What a float accumulator starts from: the identity of its combine (+0.0 as numpy's sum starts).
IDENTITY = {
    "sum": 0.0,
    "mean": 0.0,
    "prod": 1.0,
    "max": float("-inf"),
    "min": float("inf"),
    "argmax": float("-inf"),
    "argmin": float("inf"),
}
VECS = 4  # vector accumulators per row or column tile: independent add chains hide the latency


@dataclass(frozen=True)
class Elem:
    """A kernel element type: its LLVM name and size in bytes."""

    ir: str
    size: int

    @property
    def is_float(self) -> bool:
        return self.ir == "float"

    def vec(self, w: int) -> str:
        return vec_type(w, self.ir)

    def const(self, c: float) -> str:
        return fconst(c) if self.is_float else str(int(c))

    def splat(self, c: float, w: int) -> str:
        if w == 1:
            return self.const(c)
        return "<" + ", ".join([f"{self.ir} {self.const(c)}"] * w) + ">"

    def sfx(self, w: int) -> str:
        """The type suffix of an overloaded intrinsic (``f32``, ``v8i32``)."""
        t = "f32" if self.is_float else self.ir
        return t if w == 1 else f"v{w}{t}"

    def lanes(self, float_lanes: int) -> int:
        """Elements in a vector as wide as ``float_lanes`` floats."""
        return max(1, float_lanes * 4 // self.size)


ELEMS = {"float32": Elem("float", 4), "int32": Elem("i32", 4), "int64": Elem("i64", 8)}
F32, I64 = ELEMS["float32"], ELEMS["int64"]


def identity(kind: str, dtype: str) -> float:
    """What an accumulator of ``kind`` over ``dtype`` starts from (an empty reduction's value)."""
    if dtype == "float32":
        return IDENTITY[kind]
    info = np.iinfo(dtype)
    return {
        "sum": 0,
        "mean": 0,
        "prod": 1,
        "max": info.min,
        "min": info.max,
        "argmax": info.min,
        "argmin": info.max,
    }[kind]


@dataclass(frozen=True)
class Group:
    """Adjacent input dimensions of one kind merged: their extent and innermost element stride."""

    extent: int
    stride: int
    reduced: bool


@dataclass(frozen=True)
class ReducePlan:
    """Which kernel reduces one input, and the groups it walks.

    ``row``: the last group is reduced and ``inner`` is its (contiguous) length; ``kept`` are all
    kept groups (an output element each index). Otherwise (column) ``inner`` is the contiguous
    kept extent that vector lanes cover (1 when the last group is reduced, for ArgMax) and
    ``kept`` the other kept groups (an output block of ``inner`` each index). ``reduced``: the
    groups walked by the loop nest (for rows, all but the last). ``count``: elements reduced into
    each output element (the mean's divisor).
    """

    kind: str
    row: bool
    kept: tuple[Group, ...]
    reduced: tuple[Group, ...]
    inner: int
    count: int
    last: bool = False  # ArgMax/ArgMin: select_last_index
    dtype: str = "float32"  # the input's

    @property
    def blocks(self) -> int:
        return numel(tuple(g.extent for g in self.kept))

    @property
    def elem(self) -> Elem:
        return ELEMS[self.dtype]


def group_dims(shape: tuple[int, ...], axes: tuple[int, ...]) -> list[Group]:
    """``shape`` (C-contiguous) without its size-1 dims, adjacent dims of one kind merged."""
    strides, acc = [0] * len(shape), 1
    for d in range(len(shape) - 1, -1, -1):
        strides[d], acc = acc, acc * shape[d]
    out: list[Group] = []
    for d, s in enumerate(shape):
        if s == 1:
            continue
        red = d in axes
        if out and out[-1].reduced == red:
            out[-1] = Group(out[-1].extent * s, strides[d], red)
        else:
            out.append(Group(s, strides[d], red))
    return out


def plan_reduction(
    kind: str,
    shape: tuple[int, ...],
    axes: tuple[int, ...],
    last: bool = False,
    dtype: str = "float32",
) -> ReducePlan:
    """The kernel plan of reducing ``shape`` (of ``dtype``) over the normalized ``axes``."""
    groups = group_dims(shape, axes)
    kept_count = numel(tuple(s for d, s in enumerate(shape) if d not in axes))
    count = numel(shape) // kept_count if kept_count else 0
    kept = tuple(g for g in groups if not g.reduced)
    reduced = tuple(g for g in groups if g.reduced)
    if groups and groups[-1].reduced and not kind.startswith("arg"):
        return ReducePlan(kind, True, kept, reduced[:-1], groups[-1].extent, count, last, dtype)
    if groups and not groups[-1].reduced:
        return ReducePlan(kind, False, kept[:-1], reduced, kept[-1].extent, count, last, dtype)
    return ReducePlan(kind, False, kept, reduced, 1, count, last, dtype)


# -- IR helpers -------------------------------------------------------------------------------
class _Fn:
    """One kernel body under construction: allocas gathered at the entry, fresh SSA names."""

    def __init__(self, name: str, nptrs: int) -> None:
        self.head = [body_header(name, nptrs), "entry:"]
        self.allocas: list[str] = []
        self.L: list[str] = []
        self.loops = Loops(self.L)
        self.n = 0

    def tmp(self, tag: str = "t") -> str:
        self.n += 1
        return f"%{tag}{self.n}"

    def slot(self, name: str, ty: str = "i64") -> str:
        """An alloca named ``%NAME.a`` (loop variables, accumulators)."""
        self.allocas.append(f"  %{name}.a = alloca {ty}, align 64")
        return f"%{name}.a"

    def ins(self, text: str, tag: str = "t") -> str:
        """Append ``%new = text``; returns ``%new``."""
        r = self.tmp(tag)
        self.L.append(f"  {r} = {text}")
        return r

    def load(self, ty: str, ptr: str, align: int = 4) -> str:
        return self.ins(f"load {ty}, ptr {ptr}, align {align}")

    def store(self, ty: str, v: str, ptr: str, align: int = 4) -> None:
        self.L.append(f"  store {ty} {v}, ptr {ptr}, align {align}")

    def gep(self, base: str, idx: str, ty: str = "float") -> str:
        return self.ins(f"getelementptr {ty}, ptr {base}, i64 {idx}", "p")

    def text(self) -> str:
        return "\n".join([*self.head, *self.allocas, *self.L, "  ret void", "}"])


def _pieces(w: int, lanes: int) -> list[tuple[int, int]]:
    """(offset, width) of the vectors covering ``w`` lanes: full vectors, then one odd-width."""
    out = [(k * lanes, lanes) for k in range(w // lanes)]
    if w % lanes:
        out.append((w // lanes * lanes, w % lanes))
    return out


def _combine(f: _Fn, kind: str, e: Elem, w: int, a: str, b: str) -> str:
    """``a ⊕ b`` for one lane-wise accumulator step of ``kind`` on ``w``-wide values."""
    ty = e.vec(w)
    if kind in ("sum", "mean"):
        return f.ins(f"{'fadd' if e.is_float else 'add'} {ty} {a}, {b}")
    if kind == "prod":
        return f.ins(f"{'fmul' if e.is_float else 'mul'} {ty} {a}, {b}")
    if e.is_float:  # NaN-propagating, as np.max / np.min
        fn = "maximum" if kind == "max" else "minimum"
    else:
        fn = "smax" if kind == "max" else "smin"
    return f.ins(f"call {ty} @llvm.{fn}.{e.sfx(w)}({ty} {a}, {ty} {b})")


def _horizontal(f: _Fn, kind: str, e: Elem, w: int, v: str) -> str:
    """The ``kind`` reduction of the ``w`` lanes of ``v`` to one value."""
    if w == 1:
        return v
    ty = e.vec(w)
    if not e.is_float:
        fn = {"sum": "add", "prod": "mul", "max": "smax", "min": "smin"}[kind]
        return f.ins(f"call {e.ir} @llvm.vector.reduce.{fn}.{e.sfx(w)}({ty} {v})")
    if kind in ("sum", "mean"):
        return f.ins(
            f"call reassoc float @llvm.vector.reduce.fadd.{e.sfx(w)}(float {fconst(0.0)}, {ty} {v})"
        )
    if kind == "prod":
        return f.ins(
            f"call reassoc float @llvm.vector.reduce.fmul.{e.sfx(w)}(float {fconst(1.0)}, {ty} {v})"
        )
    fn = "fmaximum" if kind == "max" else "fminimum"
    return f.ins(f"call float @llvm.vector.reduce.{fn}.{e.sfx(w)}({ty} {v})")


def _finish(f: _Fn, plan: ReducePlan, w: int, v: str, post: Expr | None) -> str:
    """The output value from an accumulated ``v``: the mean's division, then ``post``."""
    if plan.kind == "mean":
        v = f.ins(f"fdiv {vec_type(w)} {v}, {F32.splat(float(plan.count), w)}")
    if post is not None:
        v = apply_expr(post, Emitter(f.L, w), [v])
    return v


def _kept_base(f: _Fn, kept: tuple[Group, ...], idx: str) -> str:
    """Input element offset of output block ``idx`` (a linear index over the kept groups)."""
    base, inner = "0", 1
    for k in range(len(kept) - 1, -1, -1):
        g = kept[k]
        q = idx if inner == 1 else f.ins(f"udiv i64 {idx}, {inner}")
        i = q if k == 0 else f.ins(f"urem i64 {q}, {g.extent}")
        base = f.ins(f"add i64 {base}, {f.ins(f'mul i64 {i}, {g.stride}')}")
        inner *= g.extent
    return base


def _open_nest(f: _Fn, groups: tuple[Group, ...], tag: str) -> tuple[str, list[str]]:
    """Open one loop per reduced group; returns the input offset inside and the loop vars."""
    off, names = "0", []
    for j, g in enumerate(groups):
        var = f"r{tag}{j}"
        f.slot(var)
        r = f.loops.open(var, "0", str(g.extent), 1)
        off = f.ins(f"add i64 {off}, {f.ins(f'mul i64 {r}, {g.stride}')}")
        names.append(var)
    return off, names


def _close_nest(f: _Fn, names: list[str]) -> None:
    for var in reversed(names):
        f.loops.close(var, 1)


def _tiled(f: _Fn, units: int, tiles: int, body: Callable[[str, str], None]) -> None:
    """The loop over this part's share of ``units`` (block, tile) pairs, ``tiles`` a block;
    ``body(block, tile)`` emits the loop's body from the two index names."""
    f.slot("u")
    share(f.L, units, 1, "%u0", "%u1")
    u = f.loops.open("u", "%u0", "%u1", 1)
    b, t = (
        (u, "0")
        if tiles == 1
        else (f.ins(f"udiv i64 {u}, {tiles}"), f.ins(f"urem i64 {u}, {tiles}"))
    )
    body(b, t)
    f.loops.close("u", 1)


def _full_or_tail(
    f: _Fn, t: str, tiles: int, full: int, tail: int, tile: Callable[[int, str], None]
) -> None:
    """Emit ``tile(width, tag)`` for the full tile width, and a branch to the tail's width when
    the last tile (``t`` = tiles - 1) is narrower."""
    if tail == full:
        tile(full, "f")
        return
    is_tail = f.ins(f"icmp eq i64 {t}, {tiles - 1}")
    f.L += [f"  br i1 {is_tail}, label %tail, label %full", "full:"]
    tile(full, "f")
    f.L += ["  br label %join", "tail:"]
    tile(tail, "t")
    f.L += ["  br label %join", "join:"]


# -- row kernel -------------------------------------------------------------------------------
def row_reduce_kernel(
    name: str, plan: ReducePlan, out: Operand, x: Operand, lanes: int, post: Expr | None = None
) -> str:
    """LLVM IR of a reduction whose last group (``plan.inner`` contiguous elements) is reduced:
    parts split the output elements. ``lanes``: elements of ``plan.dtype`` per vector."""
    kind, n, e = plan.kind, plan.inner, plan.elem
    ident = identity(kind, plan.dtype)
    f = _Fn(name, 2)
    step = VECS * lanes
    main = n // step * step
    nvl, odd = (n - main) // lanes, (n - main) % lanes
    nacc = VECS if main else nvl
    vty = e.vec(lanes)
    accs = [f.slot(f"acc{k}", vty) for k in range(nacc)]
    oacc = f.slot("oacc", e.vec(odd)) if odd else ""
    f.slot("o")
    share(f.L, plan.blocks, 1, "%o0", "%o1")
    o = f.loops.open("o", "%o0", "%o1", 1)
    xb = f.gep("%a1", _kept_base(f, plan.kept, o), e.ir)
    for a in accs:
        f.store(vty, e.splat(ident, lanes), a, 64)
    if odd:
        f.store(e.vec(odd), e.splat(ident, odd), oacc, 64)
    off, names = _open_nest(f, plan.reduced, "")
    xr = f.gep(xb, off, e.ir)

    def accumulate(acc: str, w: int, at: str) -> None:
        ty = e.vec(w)
        v = f.load(ty, f.gep(xr, at, e.ir), e.size)
        f.store(ty, _combine(f, kind, e, w, f.load(ty, acc, 64), v), acc, 64)

    if main:
        f.slot("j")
        j = f.loops.open("j", "0", str(main), step)
        for k in range(VECS):
            accumulate(accs[k], lanes, f.ins(f"add i64 {j}, {k * lanes}"))
        f.loops.close("j", step)
    for k in range(nvl):
        accumulate(accs[k], lanes, str(main + k * lanes))
    if odd:
        accumulate(oacc, odd, str(main + nvl * lanes))
    _close_nest(f, names)
    vals = [f.load(vty, a, 64) for a in accs]
    while len(vals) > 1:  # pairwise: (a0 ⊕ a1) ⊕ (a2 ⊕ a3)
        vals = [
            _combine(f, kind, e, lanes, vals[i], vals[i + 1]) if i + 1 < len(vals) else vals[i]
            for i in range(0, len(vals), 2)
        ]
    scalars = [_horizontal(f, kind, e, lanes, v) for v in vals]
    if odd:
        scalars.append(_horizontal(f, kind, e, odd, f.load(e.vec(odd), oacc, 64)))
    res = e.const(ident) if not scalars else scalars[0]
    for s in scalars[1:]:
        res = _combine(f, kind, e, 1, res, s)
    res = _finish(f, plan, 1, res, post)
    f.store(e.ir, res, f.gep("%a0", o, e.ir), e.size)
    f.loops.close("o", 1)
    return wrapper(name, [out, x]) + "\n" + f.text()


# -- column kernel ----------------------------------------------------------------------------
def column_tiles(plan: ReducePlan, lanes: int) -> tuple[int, int]:
    """(tile width, tiles per output block) of a column kernel."""
    tw = VECS * lanes
    return tw, -(-plan.inner // tw)


def _arg_take(f: _Fn, plan: ReducePlan, w: int, v: str, best: str) -> str:
    """Whether ``v`` replaces ``best`` (lane-wise i1) in an ArgMax/ArgMin scan."""
    e, ty = plan.elem, plan.elem.vec(w)
    if not e.is_float:
        cmp = {
            ("argmax", False): "sgt",
            ("argmax", True): "sge",
            ("argmin", False): "slt",
            ("argmin", True): "sle",
        }[plan.kind, plan.last]
        return f.ins(f"icmp {cmp} {ty} {v}, {best}")
    cty = vec_type(w, "i1")
    cmp = {
        ("argmax", False): "ogt",
        ("argmax", True): "oge",
        ("argmin", False): "olt",
        ("argmin", True): "ole",
    }[plan.kind, plan.last]
    better = f.ins(f"fcmp {cmp} {ty} {v}, {best}")
    isnan = f.ins(f"fcmp uno {ty} {v}, {v}")
    if not plan.last:  # the first NaN wins, later ones do not replace it
        isnan = f.ins(f"and {cty} {isnan}, {f.ins(f'fcmp ord {ty} {best}, {best}')}")
    return f.ins(f"or {cty} {better}, {isnan}")


def _column_tile(
    f: _Fn, plan: ReducePlan, w: int, tag: str, xb: str, ob: str, lanes: int, post: Expr | None
) -> None:
    """Reduce one tile of ``w`` lanes: input from ``xb``, output to ``ob`` (element pointers)."""
    kind, e = plan.kind, plan.elem
    ident = identity(kind, plan.dtype)
    arg = kind in ("argmax", "argmin")
    pieces = _pieces(w, lanes)
    accs = [f.slot(f"acc{tag}{k}", e.vec(pw)) for k, (_, pw) in enumerate(pieces)]
    idxs = [f.slot(f"idx{tag}{k}", I64.vec(pw)) for k, (_, pw) in enumerate(pieces)] if arg else []
    for k, (_, pw) in enumerate(pieces):
        f.store(e.vec(pw), e.splat(ident, pw), accs[k], 64)
        if arg:
            f.store(I64.vec(pw), "zeroinitializer", idxs[k], 64)
    off, names = _open_nest(f, plan.reduced, tag)
    xr = f.gep(xb, off, e.ir)
    for k, (po, pw) in enumerate(pieces):
        ty = e.vec(pw)
        v = f.load(ty, f.gep(xr, str(po), e.ir), e.size)
        best = f.load(ty, accs[k], 64)
        if not arg:
            f.store(ty, _combine(f, kind, e, pw, best, v), accs[k], 64)
            continue
        # ArgMax/ArgMin hold one reduced group (the axis) or none (an axis of extent 1).
        r = f"%{names[0]}" if names else "0"
        take = _arg_take(f, plan, pw, v, best)
        cty, ity = vec_type(pw, "i1"), I64.vec(pw)
        ri = r
        if pw > 1:
            ri0 = f.ins(f"insertelement {ity} poison, i64 {r}, i64 0")
            ri = f.ins(f"shufflevector {ity} {ri0}, {ity} poison, <{pw} x i32> zeroinitializer")
        idx = f.load(ity, idxs[k], 64)
        f.store(ty, f.ins(f"select {cty} {take}, {ty} {v}, {ty} {best}"), accs[k], 64)
        f.store(ity, f.ins(f"select {cty} {take}, {ity} {ri}, {ity} {idx}"), idxs[k], 64)
    _close_nest(f, names)
    for k, (po, pw) in enumerate(pieces):
        if arg:
            res = f.load(I64.vec(pw), idxs[k], 64)
            f.store(I64.vec(pw), res, f.gep(ob, str(po), "i64"), 8)
            continue
        res = _finish(f, plan, pw, f.load(e.vec(pw), accs[k], 64), post)
        f.store(e.vec(pw), res, f.gep(ob, str(po), e.ir), e.size)


def column_reduce_kernel(
    name: str, plan: ReducePlan, out: Operand, x: Operand, lanes: int, post: Expr | None = None
) -> str:
    """LLVM IR of a reduction whose lanes are ``plan.inner`` contiguous kept elements: parts
    split the (output block, tile) pairs. ``lanes``: elements of ``plan.dtype`` per vector."""
    f = _Fn(name, 2)
    e = plan.elem
    tw, tiles = column_tiles(plan, lanes)
    full, tail = min(tw, plan.inner), plan.inner - (tiles - 1) * tw

    def body(b: str, t: str) -> None:
        toff = f.ins(f"mul i64 {t}, {tw}")
        xb = f.gep("%a1", f.ins(f"add i64 {_kept_base(f, plan.kept, b)}, {toff}"), e.ir)
        oty = "i64" if plan.kind.startswith("arg") else e.ir
        ob = f.gep("%a0", f.ins(f"add i64 {f.ins(f'mul i64 {b}, {plan.inner}')}, {toff}"), oty)
        _full_or_tail(
            f,
            t,
            tiles,
            full,
            tail,
            lambda w, tag: _column_tile(f, plan, w, tag, xb, ob, lanes, post),
        )

    _tiled(f, plan.blocks * tiles, tiles, body)
    return wrapper(name, [out, x]) + "\n" + f.text()


def reduce_kernel(
    name: str, plan: ReducePlan, out: Operand, x: Operand, lanes: int, post: Expr | None = None
) -> str:
    """LLVM IR of ``plan`` (the row or the column kernel)."""
    gen = row_reduce_kernel if plan.row else column_reduce_kernel
    return gen(name, plan, out, x, lanes, post)


def plan_units(plan: ReducePlan, lanes: int) -> int:
    """The work units the kernel's parts divide: output elements (row) or block tiles."""
    return plan.blocks if plan.row else plan.blocks * column_tiles(plan, lanes)[1]


# -- cumsum -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class AxisPlan:
    """An op along one axis of a C-contiguous input seen as [outer, n, inner]."""

    outer: int
    n: int
    inner: int
    dtype: str

    @property
    def elem(self) -> Elem:
        return ELEMS[self.dtype]

    @staticmethod
    def around(shape: tuple[int, ...], axis: int, dtype: str) -> AxisPlan:
        return AxisPlan(numel(shape[:axis]), shape[axis], numel(shape[axis + 1 :]), dtype)


def scan_tiles(plan: AxisPlan, lanes: int) -> tuple[int, int]:
    """(tile width, tiles per outer index) of a CumSum kernel."""
    tw = VECS * lanes
    return tw, -(-plan.inner // tw)


def _scan_tile(
    f: _Fn,
    plan: AxisPlan,
    exclusive: bool,
    reverse: bool,
    w: int,
    tag: str,
    xb: str,
    ob: str,
    lanes: int,
    prod: bool,
) -> None:
    """Scan one tile of ``w`` lanes (stride ``plan.inner`` along the axis) from ``xb`` to ``ob``:
    running sums, or products with ``prod``."""
    e, n, s = plan.elem, plan.n, plan.inner
    pieces = _pieces(w, lanes)
    accs = [f.slot(f"acc{tag}{k}", e.vec(pw)) for k, (_, pw) in enumerate(pieces)]
    # the identity (a sum's -0.0 keeps the first element's sign) and the step's instruction
    ident = 1 if prod else (-0.0 if e.is_float else 0)
    opc = ("fmul" if e.is_float else "mul") if prod else ("fadd" if e.is_float else "add")
    for k, (_, pw) in enumerate(pieces):
        f.store(e.vec(pw), e.splat(ident, pw), accs[k], 64)
    if exclusive:
        first = str((n - 1) * s) if reverse else "0"
        for po, pw in pieces:
            at = f.ins(f"add i64 {first}, {po}")
            f.store(e.vec(pw), e.splat(1 if prod else 0, pw), f.gep(ob, at, e.ir), e.size)
    var = f"i{tag}"
    f.slot(var)
    i = f.loops.open(var, "0", str(n - 1 if exclusive else n), 1)
    p = f.ins(f"sub i64 {n - 1}, {i}") if reverse else i
    q = p if not exclusive else f.ins(f"{'sub' if reverse else 'add'} i64 {p}, 1")
    off, qoff = f.ins(f"mul i64 {p}, {s}"), f.ins(f"mul i64 {q}, {s}")
    for k, (po, pw) in enumerate(pieces):
        ty = e.vec(pw)
        v = f.load(ty, f.gep(xb, f.ins(f"add i64 {off}, {po}"), e.ir), e.size)
        a = f.ins(f"{opc} {ty} {f.load(ty, accs[k], 64)}, {v}")
        f.store(ty, a, accs[k], 64)
        f.store(ty, a, f.gep(ob, f.ins(f"add i64 {qoff}, {po}"), e.ir), e.size)
    f.loops.close(var, 1)


def scan_kernel(
    name: str,
    plan: AxisPlan,
    exclusive: bool,
    reverse: bool,
    out: Operand,
    x: Operand,
    lanes: int,
    prod: bool = False,
) -> str:
    """LLVM IR of CumSum (CumProd with ``prod``) along the middle axis of ``plan``: parts split
    (outer, tile) pairs."""
    f = _Fn(name, 2)
    e = plan.elem
    tw, tiles = scan_tiles(plan, lanes)
    full, tail = min(tw, plan.inner), plan.inner - (tiles - 1) * tw

    def body(o: str, t: str) -> None:
        toff = f.ins(f"mul i64 {t}, {tw}")
        base = f.ins(f"add i64 {f.ins(f'mul i64 {o}, {plan.n * plan.inner}')}, {toff}")
        xb, ob = f.gep("%a1", base, e.ir), f.gep("%a0", base, e.ir)
        _full_or_tail(
            f,
            t,
            tiles,
            full,
            tail,
            lambda w, tag: _scan_tile(f, plan, exclusive, reverse, w, tag, xb, ob, lanes, prod),
        )

    _tiled(f, plan.outer * tiles, tiles, body)
    return wrapper(name, [out, x]) + "\n" + f.text()


# -- topk -------------------------------------------------------------------------------------
def _better(e: Elem, largest: bool, x: str, y: str, tag: str) -> list[str]:
    """IR setting ``%TAG`` (i1): whether value ``x`` ranks strictly before ``y`` (NaN last)."""
    if not e.is_float:
        return [f"  %{tag} = icmp {'sgt' if largest else 'slt'} {e.ir} {x}, {y}"]
    return [
        f"  %{tag}.c = fcmp {'ogt' if largest else 'olt'} float {x}, {y}",
        f"  %{tag}.yn = fcmp uno float {y}, 0.0",
        f"  %{tag}.xo = fcmp ord float {x}, 0.0",
        f"  %{tag}.n = and i1 %{tag}.yn, %{tag}.xo",
        f"  %{tag} = or i1 %{tag}.c, %{tag}.n",
    ]


def _heap_fns(name: str, e: Elem, largest: bool) -> str:
    """IR of ``i1 @NAME_worse(T a, i64 ia, T b, i64 ib)``: (a, ia) ranks after (b, ib); and of
    ``void @NAME_sift(ptr v, ptr ix, i64 stride, i64 pos, i64 size, T val, i64 vi)``: place
    (val, vi) at hole ``pos`` of the heap (worst at the root) of ``size`` and sift it down."""
    t, al = e.ir, e.size
    worse = [
        f"define internal i1 @{name}_worse({t} %a, i64 %ia, {t} %b, i64 %ib) alwaysinline {{",
        "entry:",
        *_better(e, largest, "%b", "%a", "ba"),
        *_better(e, largest, "%a", "%b", "ab"),
        "  %nab = xor i1 %ab, true",
        "  %lt = icmp slt i64 %ib, %ia",
        "  %tie = and i1 %nab, %lt",
        "  %r = or i1 %ba, %tie",
        "  ret i1 %r",
        "}",
    ]
    w = f"@{name}_worse"

    def load(p: str, pos: str) -> str:
        """Heap entry ``pos``'s value and index as ``%{p}v``, ``%{p}i``."""
        return f"""  %{p}o = mul i64 {pos}, %s
  %{p}vp = getelementptr {t}, ptr %v, i64 %{p}o
  %{p}v = load {t}, ptr %{p}vp, align {al}
  %{p}ip = getelementptr i64, ptr %ix, i64 %{p}o
  %{p}i = load i64, ptr %{p}ip, align 8"""

    def store(p: str, pos: str, val: str, vi: str) -> str:
        return f"""  %{p}o = mul i64 {pos}, %s
  %{p}vp = getelementptr {t}, ptr %v, i64 %{p}o
  store {t} {val}, ptr %{p}vp, align {al}
  %{p}ip = getelementptr i64, ptr %ix, i64 %{p}o
  store i64 {vi}, ptr %{p}ip, align 8"""

    sift = f"""define internal void @{name}_sift(ptr %v, ptr %ix, i64 %s, i64 %pos0, i64 %size, \
{t} %val, i64 %vi) {{
entry:
  br label %loop
loop:
  %pos = phi i64 [%pos0, %entry], [%c, %down]
  %l0 = shl i64 %pos, 1
  %l = add i64 %l0, 1
  %hasl = icmp slt i64 %l, %size
  br i1 %hasl, label %kids, label %done
kids:
{load("l", "%l")}
  %r = add i64 %l, 1
  %hasr = icmp slt i64 %r, %size
  br i1 %hasr, label %right, label %pick
right:
{load("r", "%r")}
  %rw = call i1 {w}({t} %rv, i64 %ri, {t} %lv, i64 %li)
  %rc = select i1 %rw, i64 %r, i64 %l
  %rcv = select i1 %rw, {t} %rv, {t} %lv
  %rci = select i1 %rw, i64 %ri, i64 %li
  br label %pick
pick:
  %c = phi i64 [%l, %kids], [%rc, %right]
  %cv = phi {t} [%lv, %kids], [%rcv, %right]
  %ci = phi i64 [%li, %kids], [%rci, %right]
  %up = call i1 {w}({t} %cv, i64 %ci, {t} %val, i64 %vi)
  br i1 %up, label %down, label %done
down:
{store("p", "%pos", "%cv", "%ci")}
  br label %loop
done:
{store("f", "%pos", "%val", "%vi")}
  ret void
}}"""
    return "\n".join(worse) + "\n" + sift


def topk_kernel(
    name: str, plan: AxisPlan, k: int, largest: bool, values: Operand, indices: Operand, x: Operand
) -> str:
    """LLVM IR of TopK along the middle axis of ``plan`` (1 <= k <= n): a heap per row in the
    outputs, then a heapsort; parts split the outer·inner rows."""
    e, n, s = plan.elem, plan.n, plan.inner
    t, al = e.ir, e.size
    f = _Fn(name, 3)
    sift = f"@{name}_sift"

    def at(base: str, pos: str, ty: str) -> str:
        return f.gep(base, pos if s == 1 else f.ins(f"mul i64 {pos}, {s}"), ty)

    def sift_call(pos: str, size: str, v: str, vi: str) -> None:
        f.L.append(
            f"  call void {sift}(ptr {vb}, ptr {ib}, i64 {s}, i64 {pos}, i64 {size}, "
            f"{t} {v}, i64 {vi})"
        )

    for var in ("r", "a", "h", "i", "z"):
        f.slot(var)
    share(f.L, plan.outer * s, 1, "%r0", "%r1")
    r = f.loops.open("r", "%r0", "%r1", 1)
    o, j = (r, "0") if s == 1 else (f.ins(f"udiv i64 {r}, {s}"), f.ins(f"urem i64 {r}, {s}"))
    xb = f.gep("%a2", f.ins(f"add i64 {f.ins(f'mul i64 {o}, {n * s}')}, {j}"), t)
    obase = f.ins(f"add i64 {f.ins(f'mul i64 {o}, {k * s}')}, {j}")
    vb, ib = f.gep("%a0", obase, t), f.gep("%a1", obase, "i64")
    a = f.loops.open("a", "0", str(k), 1)  # the first k elements, then heapified
    f.store(t, f.load(t, at(xb, a, t), al), at(vb, a, t), al)
    f.store("i64", a, at(ib, a, "i64"), 8)
    f.loops.close("a", 1)
    h = f.loops.open("h", "0", str(k // 2), 1)
    p = f.ins(f"sub i64 {k // 2 - 1}, {h}")
    sift_call(p, str(k), f.load(t, at(vb, p, t), al), f.load("i64", at(ib, p, "i64"), 8))
    f.loops.close("h", 1)
    if n > k:  # the rest: each one ranking before the root replaces it
        i = f.loops.open("i", str(k), str(n), 1)
        v = f.load(t, at(xb, i, t), al)
        root, rooti = f.load(t, vb, al), f.load("i64", ib, 8)
        f.L += [
            f"  %in = call i1 @{name}_worse({t} {root}, i64 {rooti}, {t} {v}, i64 {i})",
            "  br i1 %in, label %take, label %keep",
            "take:",
        ]
        sift_call("0", str(k), v, i)
        f.L += ["  br label %keep", "keep:"]
        f.loops.close("i", 1)
    z = f.loops.open("z", "0", str(k - 1), 1)  # heapsort: the worst goes to the end
    end = f.ins(f"sub i64 {k - 1}, {z}")
    top, topi = f.load(t, vb, al), f.load("i64", ib, 8)
    lv, li = f.load(t, at(vb, end, t), al), f.load("i64", at(ib, end, "i64"), 8)
    f.store(t, top, at(vb, end, t), al)
    f.store("i64", topi, at(ib, end, "i64"), 8)
    sift_call("0", end, lv, li)
    f.loops.close("z", 1)
    f.loops.close("r", 1)
    return "\n".join([wrapper(name, [values, indices, x]), _heap_fns(name, e, largest), f.text()])


# -- lowering ---------------------------------------------------------------------------------
def lower_reduction(lw: Lowerer, node: Node, name: str) -> bool:
    """Append the kernel of one reduction node (a fused unary consumer included where
    :meth:`Lowerer.post_op` finds one, for floats); False (fallback) for an empty ArgMax axis."""
    x, out = node.inputs[0], node.outputs[0]
    assert x is not None
    shape = tuple(int(d) for d in x.type.shape)
    kind, dtype = KINDS[node.op], x.type.dtype
    if kind in ("argmax", "argmin"):
        ax = normalize_axis(node.attrs["axis"], len(shape))
        if shape[ax] == 0:
            return False  # np.argmax raises on an empty axis: the reference reports it
        last = bool(node.attrs.get("select_last_index", 0))
        plan = plan_reduction(kind, shape, (ax,), last, dtype)
    else:
        plan = plan_reduction(kind, shape, reduce_axes(len(shape), node.attrs["axes"]), dtype=dtype)
    post = None
    if not kind.startswith("arg") and dtype == "float32":
        found = lw.post_op(out)
        if found is not None:
            lw.absorbed.add(id(found[0]))
            out, post = found[0].outputs[0], found[1]
            name = f"{name}_{found[0].op}"
    lanes = plan.elem.lanes(lw.host.lanes)
    units = plan_units(plan, lanes)
    nbytes = plan.elem.size * numel(shape) + out.type.itemsize * numel(tuple(out.type.shape))

    def gen(loc: Callable[[Ref | None], Operand | None]) -> str:
        return reduce_kernel(name, plan, loc(out), loc(x), lanes, post)  # type: ignore[arg-type]

    lw.steps.append(
        Step(
            name,
            [x],
            [out],
            gen,
            op=node.op,
            units=units,
            parallel=units > 1 and worth_splitting(nbytes=nbytes),
        )
    )
    return True


def lower_cumsum(lw: Lowerer, node: Node, name: str) -> bool:
    """Append a CumSum or CumProd kernel; False (fallback) for a rank-0 input (no axis)."""
    x, out = node.inputs[0], node.outputs[0]
    assert x is not None
    shape = tuple(int(d) for d in x.type.shape)
    if not shape:
        return False
    at = node.attrs
    plan = AxisPlan.around(shape, normalize_axis(at["axis"], len(shape)), x.type.dtype)
    excl, rev = bool(at.get("exclusive", 0)), bool(at.get("reverse", 0))
    lanes = plan.elem.lanes(lw.host.lanes)
    units = plan.outer * scan_tiles(plan, lanes)[1]

    def gen(loc: Callable[[Ref | None], Operand | None]) -> str:
        return scan_kernel(
            name,
            plan,
            excl,
            rev,
            loc(out),  # type: ignore[arg-type]
            loc(x),  # type: ignore[arg-type]
            lanes,
            node.op == "cumprod",
        )

    lw.steps.append(
        Step(
            name,
            [x],
            [out],
            gen,
            op=node.op,
            units=units,
            parallel=units > 1 and worth_splitting(nbytes=2.0 * plan.elem.size * numel(shape)),
        )
    )
    return True


def lower_topk(lw: Lowerer, node: Node, name: str) -> bool:
    """Append a TopK kernel; False (fallback) for a rank-0 input or a k above the axis length
    (the reference rejects it)."""
    x = node.inputs[0]
    assert x is not None
    values, indices = node.outputs
    shape = tuple(int(d) for d in x.type.shape)
    if not shape:
        return False
    at = node.attrs
    plan = AxisPlan.around(shape, normalize_axis(at.get("axis", -1), len(shape)), x.type.dtype)
    k, largest = int(at["k"]), bool(at.get("largest", 1))
    if not 1 <= k <= plan.n:
        return False
    units = plan.outer * plan.inner
    nbytes = plan.elem.size * numel(shape) + (plan.elem.size + 8) * units * k

    def gen(loc: Callable[[Ref | None], Operand | None]) -> str:
        vo, io, xo = loc(values), loc(indices), loc(x)
        assert vo is not None
        assert io is not None
        assert xo is not None
        return topk_kernel(name, plan, k, largest, vo, io, xo)

    lw.steps.append(
        Step(
            name,
            [x],
            [values, indices],
            gen,
            op=node.op,
            units=units,
            parallel=units > 1 and worth_splitting(nbytes=nbytes),
        )
    )
    return True


def _reduce_dtypes(node: Node) -> bool:
    """float32, int32 or int64 in and out (ReduceMean: float32 only)."""
    x = node.inputs[0]
    if x is None or x.type.dtype not in ELEMS or node.outputs[0].type.dtype != x.type.dtype:
        return False
    return node.op != "reduce_mean" or x.type.dtype == "float32"


def _arg_dtypes(node: Node) -> bool:
    """float32, int32 or int64 in, int64 out."""
    x = node.inputs[0]
    return x is not None and x.type.dtype in ELEMS and node.outputs[0].type.dtype == "int64"


def _topk_dtypes(node: Node) -> bool:
    """float32, int32 or int64 values in and out, int64 indices."""
    x = node.inputs[0]
    return (
        x is not None
        and x.type.dtype in ELEMS
        and len(node.outputs) == 2
        and node.outputs[0].type.dtype == x.type.dtype
        and node.outputs[1].type.dtype == "int64"
    )


def _register() -> None:
    for op in KINDS:
        accepts = _arg_dtypes if op.startswith("arg") else _reduce_dtypes
        LOWERINGS[op] = Lowering(lower_reduction, accepts)
    LOWERINGS["cumsum"] = Lowering(lower_cumsum, _reduce_dtypes)
    LOWERINGS["cumprod"] = Lowering(lower_cumsum, _reduce_dtypes)
    LOWERINGS["topk"] = Lowering(lower_topk, _topk_dtypes)


_register()
