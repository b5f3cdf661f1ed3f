"""2-D max and average pooling, and global average pooling, as generated kernels.

Max and average pooling reuse the window machinery of :mod:`satura.targets.conv`: when strided
or padded, each input plane in turn is rewritten into phase planes in the part's scratch (pads
-inf for max, 0 for average, and so are the cells a ceil-mode window hangs past the end pad) and
pooled from there while it is in L2; each tile of output pixels takes the max or the sum over the
kernel's taps with one vector load per tap. An average then multiplies
by a constant table of 1/count per output pixel, which counts the window's input cells (and its
explicit pad cells with ``count_include_pad``, never the ceil-mode overhang), as the reference
does. Global average pooling sums each plane with four vector accumulators.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from satura.engine.graph import Node, Value
from satura.targets.conv import (
    Tiling,
    Vec,
    Window,
    load_tile,
    plane_by_plane_kernel,
    plane_scratch,
    row_group,
    store_tile,
    tile_driver,
    tiling,
    window_2d,
)
from satura.targets.irmath import fconst, vec_type
from satura.targets.kernel import Loops, Operand, body_header, share, wrapper
from satura.targets.lower import (
    Lowerer,
    Ref,
    Step,
    numel,
    worth_splitting,
)


def _pool_ukernel(
    fname: str, kind: str, win: Window, t: Tiling, vecs: list[Vec], safe: bool
) -> str:
    """The max (or sum times 1/count) of one tile's vectors over the window's taps."""
    lanes, vty = t.lanes, vec_type(t.lanes)
    o = [
        f"define internal void @{fname}(ptr noalias %x, ptr noalias %o, ptr noalias %rc) {{",
        "entry:",
    ]
    for v, (xo, oo, va) in enumerate(vecs):
        acc = ""
        for k, off in enumerate(win.taps()):
            xv = load_tile(o, f"%x{v}_{k}", "%x", off + xo, lanes, va, safe)
            if not acc:
                acc = xv
                continue
            nxt = f"%a{v}_{k}"
            if kind == "max":
                o += [
                    f"  {nxt}c = fcmp ogt {vty} {acc}, {xv}",
                    f"  {nxt} = select <{lanes} x i1> {nxt}c, {vty} {acc}, {vty} {xv}",
                ]
            else:
                o.append(f"  {nxt} = fadd {vty} {acc}, {xv}")
            acc = nxt
        if kind == "avg":
            r = load_tile(o, f"%r{v}", "%rc", oo, lanes, va, True)
            o.append(f"  %y{v} = fmul {vty} {acc}, {r}")
        else:
            o.append(f"  %y{v} = fadd {vty} {acc}, zeroinitializer")
        o.append(f"  %op{v} = getelementptr float, ptr %o, i64 {oo}")
        store_tile(o, f"%y{v}", f"%op{v}", lanes, va)
    o += ["  ret void", "}"]
    return "\n".join(o)


def pool_kernel(
    name: str, kind: str, win: Window, t: Tiling, out: Operand, x: Operand, rc: Operand | None
) -> str:
    """LLVM IR of max or average pooling over (phase-plane) input ``x``; parts split the
    planes' rows."""
    kernels: dict[tuple[Vec, ...], str] = {}
    plane = win.oh * win.ow
    counter = [0]

    def call(L: list[str], xt: str, ot: str, vecs: list[Vec], blk: str, kb: str) -> None:
        key = tuple(vecs)
        if key not in kernels:
            kernels[key] = f"{name}_u{len(kernels)}"
        j = counter[0]
        counter[0] += 1
        L += [
            f"  %r{j}a = ptrtoint ptr {ot} to i64",
            f"  %r{j}b = ptrtoint ptr %a0 to i64",
            f"  %r{j}c = sub i64 %r{j}a, %r{j}b",
            f"  %r{j}d = udiv i64 %r{j}c, 4",
            f"  %r{j}e = mul i64 %outer, {plane}",
            f"  %r{j}f = sub i64 %r{j}d, %r{j}e",
            f"  %r{j} = getelementptr float, ptr %a2, i64 %r{j}f",
            f"  call void @{kernels[key]}(ptr {xt}, ptr {ot}, ptr %r{j})",
        ]

    L = tile_driver(name, t, win.planes, win.plane_stride, plane, 3, 1, 1, call)
    parts = [_pool_ukernel(fn, kind, win, t, list(vecs), win.prep) for vecs, fn in kernels.items()]
    return "\n".join([wrapper(name, [out, x, rc]), "\n".join(L), *parts])


def _counts(
    size: int, out: int, k: int, stride: int, pad: int, pad_end: int, dil: int, include_pad: bool
) -> np.ndarray:
    """Cells counted by each output position's window along one axis."""
    lo, hi = (-pad, size + pad_end) if include_pad else (0, size)
    pos = np.arange(out)[:, None] * stride - pad + np.arange(k)[None, :] * dil
    return ((pos >= lo) & (pos < hi)).sum(axis=1).astype(np.float64)


def choose_nv(width: int, lanes: int, flat: bool) -> int:
    """Vectors per tile: the fewest vectors computed per row, then the fewest tiles."""
    best: tuple[float, int] | None = None
    for nv in range(1, 5):
        full, tail = divmod(width, nv * lanes)
        rg = row_group(width, lanes, nv, flat)
        vecs = (rg * full * nv + rg * -(-tail // lanes)) / rg
        tiles = (rg * full + (1 if tail else 0)) / rg
        cost = vecs + 0.5 * tiles
        if best is None or cost < best[0] - 1e-9:
            best = (cost, nv)
    assert best is not None
    return best[1]


def lower_pool(lw: Lowerer, node: Node, name: str, kind: str) -> bool:
    x, out = node.inputs[0], node.outputs[0]
    assert x is not None
    at = node.attrs
    geo = window_2d(
        tuple(int(d) for d in x.type.shape),
        tuple(int(d) for d in out.type.shape),
        tuple(int(v) for v in at["kernel"]),
        at,
    )
    if geo is None:
        return False
    (n, c, h, w), (oh, ow), k, st, pads, dil = geo
    win = Window(n * c, h, w, k[0], k[1], oh, ow, st, (pads[0], pads[1]), dil)  # type: ignore
    lanes = lw.host.lanes
    t = tiling(win, lanes, choose_nv(oh * ow if win.flat else ow, lanes, win.flat))
    if n * c == 0:
        return False
    rc: Value | None = None
    if kind == "avg":
        inc = bool(at.get("count_include_pad", 0))
        cy = _counts(h, oh, k[0], st[0], pads[0], pads[2], dil[0], inc)
        cx = _counts(w, ow, k[1], st[1], pads[1], pads[3], dil[1], inc)
        with np.errstate(divide="ignore"):
            table = (1.0 / np.outer(cy, cx)).astype(np.float32).ravel()
        data = np.concatenate([table, np.zeros(lanes, np.float32)])  # slack for whole vectors
        rc = Value(f"{name}_rcount", out.type, data=data)
        lw.extra[id(rc)] = data
    work = 4 * (numel(tuple(x.type.shape)) + numel(tuple(out.type.shape)) * len(win.taps()))
    parallel = worth_splitting(nbytes=work)
    reads: list[Ref] = [x, *([rc] if rc is not None else [])]
    if not win.prep:

        def gen(loc: Callable[[Ref | None], Operand | None]) -> str:
            return pool_kernel(name, kind, win, t, loc(out), loc(x), loc(rc))  # type: ignore
    else:
        one = Window(1, h, w, k[0], k[1], oh, ow, st, (pads[0], pads[1]), dil)  # type: ignore
        scratch = plane_scratch(name, one, lanes, lw.threads)
        reads.append(scratch)
        pad = 0.0 if kind == "avg" else float("-inf")

        def gen(loc: Callable[[Ref | None], Operand | None]) -> str:
            dummy = Operand(0)
            return plane_by_plane_kernel(
                name,
                one,
                n * c,
                pad,
                lanes,
                pool_kernel(f"{name}_in", kind, one, t, dummy, dummy, rc and dummy),
                loc(out),  # type: ignore
                oh * ow,
                loc(x),  # type: ignore
                [(loc(rc), 0, 1)],
                loc(scratch),  # type: ignore
            )

    lw.steps.append(Step(name, reads, [out], gen, parallel=parallel, op=node.op))
    return True


def gap_kernel(name: str, planes: int, size: int, lanes: int, out: Operand, x: Operand) -> str:
    """LLVM IR of the mean of each of ``planes`` contiguous runs of ``size`` floats."""
    vty = vec_type(lanes)
    L = [body_header(name, 2), "entry:"]
    loops = Loops(L)
    L.append("  %p.a = alloca i64, align 8")
    share(L, planes, 1, "%p0", "%p1")
    loops.open("p", "%p0", "%p1", 1)
    step = 4 * lanes
    main = size - size % step
    L += [
        f"  %po = mul i64 %p, {size}",
        "  %src = getelementptr float, ptr %a1, i64 %po",
        "  br label %v",
        "v:",
        "  %vi = phi i64 [0, %p.b], [%vn, %vb]",
    ]
    L += [f"  %acc{j} = phi {vty} [zeroinitializer, %p.b], [%nacc{j}, %vb]" for j in range(4)]
    L += [f"  %vc = icmp slt i64 %vi, {main}", "  br i1 %vc, label %vb, label %vx", "vb:"]
    for j in range(4):
        L += [
            f"  %vo{j} = add i64 %vi, {j * lanes}",
            f"  %vp{j} = getelementptr float, ptr %src, i64 %vo{j}",
            f"  %vv{j} = load {vty}, ptr %vp{j}, align 4",
            f"  %nacc{j} = fadd {vty} %acc{j}, %vv{j}",
        ]
    L += [
        f"  %vn = add i64 %vi, {step}",
        "  br label %v",
        "vx:",
        f"  %s01 = fadd {vty} %acc0, %acc1",
        f"  %s23 = fadd {vty} %acc2, %acc3",
        f"  %s4 = fadd {vty} %s01, %s23",
        f"  %vs = call float @llvm.vector.reduce.fadd.v{lanes}f32(float 0.0, {vty} %s4)",
    ]
    L += [
        "  br label %t",
        "t:",
        "  %ti = phi i64 [%vi, %vx], [%tn, %tb]",
        "  %ts = phi float [%vs, %vx], [%tsn, %tb]",
        f"  %tc = icmp slt i64 %ti, {size}",
        "  br i1 %tc, label %tb, label %tx",
        "tb:",
        "  %tp = getelementptr float, ptr %src, i64 %ti",
        "  %tv = load float, ptr %tp",
        "  %tsn = fadd float %ts, %tv",
        "  %tn = add i64 %ti, 1",
        "  br label %t",
        "tx:",
        f"  %mean = fmul float %ts, {fconst(1.0 / size)}",
        "  %op = getelementptr float, ptr %a0, i64 %p",
        "  store float %mean, ptr %op",
    ]
    loops.close("p", 1)
    L += ["  ret void", "}"]
    return wrapper(name, [out, x]) + "\n" + "\n".join(L)


def lower_gap(lw: Lowerer, node: Node, name: str) -> bool:
    x, out = node.inputs[0], node.outputs[0]
    assert x is not None
    shape = [int(d) for d in x.type.shape]
    if len(shape) < 3:
        return False
    planes, size = shape[0] * shape[1], numel(tuple(shape[2:]))
    if size == 0:
        return False

    def gen(loc: Callable[[Ref | None], Operand | None]) -> str:
        return gap_kernel(name, planes, size, lw.host.lanes, loc(out), loc(x))  # type: ignore

    lw.steps.append(
        Step(name, [x], [out], gen, parallel=worth_splitting(nbytes=4 * planes * size), op=node.op)
    )
    return True
