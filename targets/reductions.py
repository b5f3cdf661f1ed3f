"""Reduction kernels (ReduceSum/Mean/Max/Min/Prod, ArgMax/ArgMin) over any axes.

Registers its lowerings in :data:`satura.targets.lower.LOWERINGS` on import.

The input's size-1 dimensions are dropped and adjacent dimensions of the same kind (reduced or
kept) are merged, so the input is an alternating sequence of groups, each with its extent and
element stride. Two kernels cover every sequence:

* **row** (the last group is reduced, ``n`` contiguous elements): one output element at a time;
  the contiguous run of ``n`` is accumulated into four ``<L x float>`` accumulators (then single
  vectors and one odd-width vector for the remainder), across every index of the other reduced
  groups, and folded to one float at the end. ReduceMean over [2, 3] of NCHW, RMSNorm's and
  LayerNorm's decomposed means, ReduceSum over the last axis are this case.
* **column** (the last group is kept, ``inner`` contiguous output elements; or ``inner`` = 1):
  a tile of up to four vectors of ``inner`` (the tail tile an odd-width vector) is accumulated
  across every index of the reduced groups, so each lane is one output element. [outer, R, inner]
  reduced over R is this case; so are ArgMax/ArgMin (always: the index is per lane) and every
  other interleaving, which walks its reduced groups as a loop nest with constant strides.

Parts (cores) split the output: row kernels by element, column kernels by (outer block, tile).
Semantics follow the numpy references of ``engine/ops/reduce.py``: max/min propagate NaN
(``llvm.maximum``/``llvm.minimum``); ArgMax/ArgMin return the first index of the extreme value
(the last with ``select_last_index``), a NaN counting as the extreme, as ``np.argmax`` does; the
mean divides the sum by the count. Empty reductions (a reduced extent of 0) give the identity
(sum 0, prod 1, max -inf, min +inf, mean NaN), as the references do; an empty ArgMax axis, which
the reference rejects, is left to it (fallback).

Sums are fp32: a row is summed in 4·L lane accumulators, folded pairwise; a column lane adds
its terms in order (as numpy does along a non-contiguous axis). Results differ from numpy's
(pairwise along a contiguous axis) by rounding only: both are within n·2⁻²⁴·Σ|x| of the exact sum.
Any rank is handled (the groups alternate, so a rank-6 input has at most three of each kind).

The intrinsics are called without ``declare`` lines: LLVM (since 20) declares an intrinsic where
the IR text first calls it, and a second kernel's declaration of the same one would be an error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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
KINDS = {"reduce_sum": "sum", "reduce_mean": "mean", "reduce_max": "max", "reduce_min": "min",
         "reduce_prod": "prod", "argmax": "argmax", "argmin": "argmin"}
# What an accumulator starts from: the identity of its combine (+0.0 as numpy's sum starts).
IDENTITY = {"sum": 0.0, "mean": 0.0, "prod": 1.0, "max": float("-inf"), "min": float("inf"),
            "argmax": float("-inf"), "argmin": float("inf")}
VECS = 4  # vector accumulators per row or column tile: independent add chains hide the latency


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

    @property
    def blocks(self) -> int:
        return numel(tuple(g.extent for g in self.kept))


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


def plan_reduction(kind: str, shape: tuple[int, ...], axes: tuple[int, ...],
                   last: bool = False) -> ReducePlan:
    """The kernel plan of reducing ``shape`` over the normalized ``axes``."""
    groups = group_dims(shape, axes)
    kept_count = numel(tuple(s for d, s in enumerate(shape) if d not in axes))
    count = numel(shape) // kept_count if kept_count else 0
    kept = tuple(g for g in groups if not g.reduced)
    reduced = tuple(g for g in groups if g.reduced)
    if groups and groups[-1].reduced and not kind.startswith("arg"):
        return ReducePlan(kind, True, kept, reduced[:-1], groups[-1].extent, count, last)
    if groups and not groups[-1].reduced:
        return ReducePlan(kind, False, kept[:-1], reduced, kept[-1].extent, count, last)
    return ReducePlan(kind, False, kept, reduced, 1, count, last)


# -- IR helpers -------------------------------------------------------------------------------
def _sfx(w: int) -> str:
    return "f32" if w == 1 else f"v{w}f32"


def _ity(w: int, bits: int = 64) -> str:
    return f"i{bits}" if w == 1 else f"<{w} x i{bits}>"


def _fsplat(c: float, w: int) -> str:
    return fconst(c) if w == 1 else "<" + ", ".join([f"float {fconst(c)}"] * w) + ">"


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

    def load(self, ty: str, ptr: str) -> str:
        return self.ins(f"load {ty}, ptr {ptr}, align 4")

    def gep(self, base: str, idx: str, ty: str = "float") -> str:
        return self.ins(f"getelementptr {ty}, ptr {base}, i64 {idx}", "p")

    def text(self) -> str:
        return "\n".join([*self.head, *self.allocas, *self.L, "  ret void", "}"])


def _combine(f: _Fn, kind: str, w: int, a: str, b: str) -> str:
    """``a ⊕ b`` for one lane-wise accumulator step of ``kind`` on ``w``-wide values."""
    ty = vec_type(w)
    if kind in ("sum", "mean"):
        return f.ins(f"fadd {ty} {a}, {b}")
    if kind == "prod":
        return f.ins(f"fmul {ty} {a}, {b}")
    fn = "maximum" if kind == "max" else "minimum"  # NaN-propagating, as np.max / np.min
    return f.ins(f"call {ty} @llvm.{fn}.{_sfx(w)}({ty} {a}, {ty} {b})")


def _horizontal(f: _Fn, kind: str, w: int, v: str) -> str:
    """The ``kind`` reduction of the ``w`` lanes of ``v`` to one float."""
    if w == 1:
        return v
    ty = vec_type(w)
    if kind in ("sum", "mean"):
        return f.ins(f"call reassoc float @llvm.vector.reduce.fadd.{_sfx(w)}"
                     f"(float {fconst(0.0)}, {ty} {v})")
    if kind == "prod":
        return f.ins(f"call reassoc float @llvm.vector.reduce.fmul.{_sfx(w)}"
                     f"(float {fconst(1.0)}, {ty} {v})")
    fn = "fmaximum" if kind == "max" else "fminimum"
    return f.ins(f"call float @llvm.vector.reduce.{fn}.{_sfx(w)}({ty} {v})")


def _finish(f: _Fn, plan: ReducePlan, w: int, v: str, post: Expr | None) -> str:
    """The output value from an accumulated ``v``: the mean's division, then ``post``."""
    if plan.kind == "mean":
        v = f.ins(f"fdiv {vec_type(w)} {v}, {_fsplat(float(plan.count), w)}")
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


# -- row kernel -------------------------------------------------------------------------------
def row_reduce_kernel(name: str, plan: ReducePlan, out: Operand, x: Operand, lanes: int,
                      post: Expr | None = None) -> str:
    """LLVM IR of a reduction whose last group (``plan.inner`` contiguous floats) is reduced:
    parts split the output elements."""
    kind, n = plan.kind, plan.inner
    f = _Fn(name, 2)
    step = VECS * lanes
    main = n // step * step
    nvl, odd = (n - main) // lanes, (n - main) % lanes
    nacc = VECS if main else nvl
    vty = vec_type(lanes)
    accs = [f.slot(f"acc{k}", vty) for k in range(nacc)]
    oacc = f.slot("oacc", vec_type(odd)) if odd else ""
    f.slot("o")
    share(f.L, plan.blocks, 1, "%o0", "%o1")
    o = f.loops.open("o", "%o0", "%o1", 1)
    xb = f.gep("%a1", _kept_base(f, plan.kept, o))
    for a in accs:
        f.L.append(f"  store {vty} {_fsplat(IDENTITY[kind], lanes)}, ptr {a}")
    if odd:
        f.L.append(f"  store {vec_type(odd)} {_fsplat(IDENTITY[kind], odd)}, ptr {oacc}")
    off, names = _open_nest(f, plan.reduced, "")
    xr = f.gep(xb, off)

    def accumulate(acc: str, w: int, at: str) -> None:
        ty = vec_type(w)
        v = f.load(ty, f.gep(xr, at))
        f.L.append(f"  store {ty} {_combine(f, kind, w, f.load(ty, acc), v)}, ptr {acc}")

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
    vals = [f.load(vty, a) for a in accs]
    while len(vals) > 1:  # pairwise: (a0 ⊕ a1) ⊕ (a2 ⊕ a3)
        vals = [_combine(f, kind, lanes, vals[i], vals[i + 1]) if i + 1 < len(vals) else vals[i]
                for i in range(0, len(vals), 2)]
    scalars = [_horizontal(f, kind, lanes, v) for v in vals]
    if odd:
        scalars.append(_horizontal(f, kind, odd, f.load(vec_type(odd), oacc)))
    res = fconst(IDENTITY[kind]) if not scalars else scalars[0]
    for s in scalars[1:]:
        res = _combine(f, kind, 1, res, s)
    res = _finish(f, plan, 1, res, post)
    f.L.append(f"  store float {res}, ptr {f.gep('%a0', o)}, align 4")
    f.loops.close("o", 1)
    return wrapper(name, [out, x]) + "\n" + f.text()


# -- column kernel ----------------------------------------------------------------------------
def column_tiles(plan: ReducePlan, lanes: int) -> tuple[int, int]:
    """(tile width, tiles per output block) of a column kernel."""
    tw = VECS * lanes
    return tw, -(-plan.inner // tw)


def _column_tile(f: _Fn, plan: ReducePlan, w: int, tag: str, xb: str, ob: str,
                 lanes: int, post: Expr | None) -> None:
    """Reduce one tile of ``w`` lanes: input from ``xb``, output to ``ob`` (element pointers)."""
    kind = plan.kind
    arg = kind in ("argmax", "argmin")
    pieces = [(k * lanes, lanes) for k in range(w // lanes)]
    if w % lanes:
        pieces.append((w // lanes * lanes, w % lanes))
    accs = [f.slot(f"acc{tag}{k}", vec_type(pw)) for k, (_, pw) in enumerate(pieces)]
    idxs = [f.slot(f"idx{tag}{k}", _ity(pw)) for k, (_, pw) in enumerate(pieces)] if arg else []
    for k, (_, pw) in enumerate(pieces):
        f.L.append(f"  store {vec_type(pw)} {_fsplat(IDENTITY[kind], pw)}, ptr {accs[k]}")
        if arg:
            f.L.append(f"  store {_ity(pw)} zeroinitializer, ptr {idxs[k]}")
    off, names = _open_nest(f, plan.reduced, tag)
    xr = f.gep(xb, off)
    for k, (po, pw) in enumerate(pieces):
        ty = vec_type(pw)
        v = f.load(ty, f.gep(xr, str(po)))
        best = f.load(ty, accs[k])
        if not arg:
            f.L.append(f"  store {ty} {_combine(f, kind, pw, best, v)}, ptr {accs[k]}")
            continue
        # ArgMax/ArgMin hold one reduced group (the axis) or none (an axis of extent 1).
        r = f"%{names[0]}" if names else "0"
        cty = _ity(pw, 1)
        cmp = {("argmax", False): "ogt", ("argmax", True): "oge",
               ("argmin", False): "olt", ("argmin", True): "ole"}[kind, plan.last]
        better = f.ins(f"fcmp {cmp} {ty} {v}, {best}")
        isnan = f.ins(f"fcmp uno {ty} {v}, {v}")
        if not plan.last:  # the first NaN wins, later ones do not replace it
            isnan = f.ins(f"and {cty} {isnan}, {f.ins(f'fcmp ord {ty} {best}, {best}')}")
        take = f.ins(f"or {cty} {better}, {isnan}")
        ri = r
        if pw > 1:
            ri0 = f.ins(f"insertelement {_ity(pw)} poison, i64 {r}, i64 0")
            ri = f.ins(f"shufflevector {_ity(pw)} {ri0}, {_ity(pw)} poison, "
                       f"<{pw} x i32> zeroinitializer")
        idx = f.load(_ity(pw), idxs[k])
        nbest = f.ins(f"select {cty} {take}, {ty} {v}, {ty} {best}")
        nidx = f.ins(f"select {cty} {take}, {_ity(pw)} {ri}, {_ity(pw)} {idx}")
        f.L += [f"  store {ty} {nbest}, ptr {accs[k]}", f"  store {_ity(pw)} {nidx}, ptr {idxs[k]}"]
    _close_nest(f, names)
    for k, (po, pw) in enumerate(pieces):
        if arg:
            res = f.load(_ity(pw), idxs[k])
            f.L.append(f"  store {_ity(pw)} {res}, ptr {f.gep(ob, str(po), 'i64')}, align 8")
            continue
        res = _finish(f, plan, pw, f.load(vec_type(pw), accs[k]), post)
        f.L.append(f"  store {vec_type(pw)} {res}, ptr {f.gep(ob, str(po))}, align 4")


def column_reduce_kernel(name: str, plan: ReducePlan, out: Operand, x: Operand, lanes: int,
                         post: Expr | None = None) -> str:
    """LLVM IR of a reduction whose lanes are ``plan.inner`` contiguous kept elements: parts
    split the (output block, tile) pairs."""
    f = _Fn(name, 2)
    tw, tiles = column_tiles(plan, lanes)
    full, tail = min(tw, plan.inner), plan.inner - (tiles - 1) * tw
    f.slot("u")
    share(f.L, plan.blocks * tiles, 1, "%u0", "%u1")
    u = f.loops.open("u", "%u0", "%u1", 1)
    b, t = (u, "0") if tiles == 1 else (f.ins(f"udiv i64 {u}, {tiles}"),
                                        f.ins(f"urem i64 {u}, {tiles}"))
    toff = f.ins(f"mul i64 {t}, {tw}")
    xb = f.gep("%a1", f.ins(f"add i64 {_kept_base(f, plan.kept, b)}, {toff}"))
    oty = "i64" if plan.kind.startswith("arg") else "float"
    ob = f.gep("%a0", f.ins(f"add i64 {f.ins(f'mul i64 {b}, {plan.inner}')}, {toff}"), oty)
    if tail == full:
        _column_tile(f, plan, full, "f", xb, ob, lanes, post)
    else:
        is_tail = f.ins(f"icmp eq i64 {t}, {tiles - 1}")
        f.L += [f"  br i1 {is_tail}, label %tail, label %full", "full:"]
        _column_tile(f, plan, full, "f", xb, ob, lanes, post)
        f.L += ["  br label %join", "tail:"]
        _column_tile(f, plan, tail, "t", xb, ob, lanes, post)
        f.L += ["  br label %join", "join:"]
    f.loops.close("u", 1)
    return wrapper(name, [out, x]) + "\n" + f.text()


def reduce_kernel(name: str, plan: ReducePlan, out: Operand, x: Operand, lanes: int,
                  post: Expr | None = None) -> str:
    """LLVM IR of ``plan`` (the row or the column kernel)."""
    gen = row_reduce_kernel if plan.row else column_reduce_kernel
    return gen(name, plan, out, x, lanes, post)


def plan_units(plan: ReducePlan, lanes: int) -> int:
    """The work units the kernel's parts divide: output elements (row) or block tiles."""
    return plan.blocks if plan.row else plan.blocks * column_tiles(plan, lanes)[1]


# -- lowering ---------------------------------------------------------------------------------
def lower_reduction(lw: Lowerer, node: Node, name: str) -> bool:
    """Append the kernel of one reduction node (a fused unary consumer included where
    :meth:`Lowerer.post_op` finds one); False (fallback) for an empty ArgMax axis."""
    x, out = node.inputs[0], node.outputs[0]
    assert x is not None
    shape = tuple(int(d) for d in x.type.shape)
    kind = KINDS[node.op]
    if kind in ("argmax", "argmin"):
        ax = normalize_axis(node.attrs["axis"], len(shape))
        if shape[ax] == 0:
            return False  # np.argmax raises on an empty axis: the reference reports it
        plan = plan_reduction(kind, shape, (ax,), bool(node.attrs.get("select_last_index", 0)))
    else:
        plan = plan_reduction(kind, shape, reduce_axes(len(shape), node.attrs["axes"]))
    post = None
    if not kind.startswith("arg"):
        found = lw.post_op(out)
        if found is not None:
            lw.absorbed.add(id(found[0]))
            out, post = found[0].outputs[0], found[1]
            name = f"{name}_{found[0].op}"
    lanes = lw.host.lanes
    units = plan_units(plan, lanes)
    nbytes = 4.0 * numel(shape) + out.type.itemsize * numel(tuple(out.type.shape))

    def gen(loc: Callable[[Ref | None], Operand | None]) -> str:
        return reduce_kernel(name, plan, loc(out), loc(x), lanes, post)  # type: ignore[arg-type]

    lw.steps.append(Step(name, [x], [out], gen, op=node.op, units=units,
                         parallel=units > 1 and worth_splitting(nbytes=nbytes)))
    return True


def _arg_dtypes(node: Node) -> bool:
    """float32 in, int64 out."""
    x = node.inputs[0]
    return x is not None and x.type.dtype == "float32" and node.outputs[0].type.dtype == "int64"


def _register() -> None:
    for op in KINDS:
        if op.startswith("arg"):
            LOWERINGS[op] = Lowering(lower_reduction, _arg_dtypes)
        else:
            LOWERINGS[op] = Lowering(lower_reduction)


_register()
