"""Resize (nearest, linear) as a generated kernel over the last two axes.

The taps along each resized axis (the two input indices each output index reads, and the weight
of the second) are computed at compile time by the reference's own ``resize_taps`` and stored as
constant tables, so the kernel and the numpy reference read the same input cells. Each output row
``(plane, y)`` reads two input rows; each output element two cells of each (nearest: one cell,
copied as raw bytes, so any element size works). Rows are split between parts (cores).

Resizes of other axes (batch, channels) run the numpy reference (a fallback step).

Registers its lowering in :data:`satura.targets.lower.LOWERINGS` on import.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from satura.engine.graph import Node, TensorType, Value
from satura.engine.ops.nn import resize_taps, resized_axes
from satura.targets.irmath import Emitter
from satura.targets.kernel import Loops, Operand, body_header, share, wrapper
from satura.targets.layout import INT_TYPES
from satura.targets.lower import LOWERINGS, Lowerer, Lowering, Ref, Step, numel, worth_splitting


def resize_kernel(
    name: str,
    planes: int,
    h: int,
    w: int,
    oh: int,
    ow: int,
    linear: bool,
    elem: str,
    out: Operand,
    x: Operand,
    tables: list[Operand],
) -> str:
    """LLVM IR: ``out[p, y, x]`` from ``x[p, iy0[y] | iy1[y], ix0[x] | ix1[x]]`` (the tables
    ``iy0, iy1, wy, ix0, ix1, wx`` in that order; weights only read when ``linear``)."""
    L = [body_header(name, 8), "entry:"]
    loops = Loops(L)
    L += ["  %r.a = alloca i64, align 8", "  %c.a = alloca i64, align 8"]
    share(L, planes * oh, 1, "%r0", "%r1")
    loops.open("r", "%r0", "%r1", 1)
    L += [
        f"  %p = udiv i64 %r, {oh}",
        f"  %y = urem i64 %r, {oh}",
        "  %iy0p = getelementptr i64, ptr %a2, i64 %y",
        "  %iy0 = load i64, ptr %iy0p",
        "  %iy1p = getelementptr i64, ptr %a3, i64 %y",
        "  %iy1 = load i64, ptr %iy1p",
        f"  %ph = mul i64 %p, {h}",
        "  %ry0 = add i64 %ph, %iy0",
        "  %ry1 = add i64 %ph, %iy1",
        f"  %b0 = mul i64 %ry0, {w}",
        f"  %b1 = mul i64 %ry1, {w}",
        f"  %ob = mul i64 %r, {ow}",
    ]
    if linear:
        L += ["  %wyp = getelementptr float, ptr %a4, i64 %y", "  %fy = load float, ptr %wyp"]
    loops.open("c", "0", str(ow), 1)
    L += [
        "  %ix0p = getelementptr i64, ptr %a5, i64 %c",
        "  %ix0 = load i64, ptr %ix0p",
        "  %o = add i64 %ob, %c",
        f"  %op = getelementptr {elem}, ptr %a0, i64 %o",
    ]

    def cell(tag: str, base: str, ix: str) -> str:
        L.extend(
            [
                f"  %i{tag} = add i64 {base}, {ix}",
                f"  %q{tag} = getelementptr {elem}, ptr %a1, i64 %i{tag}",
                f"  %v{tag} = load {elem}, ptr %q{tag}",
            ]
        )
        return f"%v{tag}"

    if not linear:
        L.append(f"  store {elem} {cell('a', '%b0', '%ix0')}, ptr %op")
    else:
        L += [
            "  %ix1p = getelementptr i64, ptr %a6, i64 %c",
            "  %ix1 = load i64, ptr %ix1p",
            "  %wxp = getelementptr float, ptr %a7, i64 %c",
            "  %fx = load float, ptr %wxp",
        ]
        a, b = cell("a", "%b0", "%ix0"), cell("b", "%b0", "%ix1")
        c, d = cell("c", "%b1", "%ix0"), cell("d", "%b1", "%ix1")
        em = Emitter(L, 1)
        top = em.fma("%fx", em.sub(b, a), a)
        bot = em.fma("%fx", em.sub(d, c), c)
        L.append(f"  store float {em.fma('%fy', em.sub(bot, top), top)}, ptr %op")
    loops.close("c", 1)
    loops.close("r", 1)
    L += ["  ret void", "}"]
    return wrapper(name, [out, x, *tables]) + "\n" + "\n".join(L)


def lower_resize(lw: Lowerer, node: Node, name: str) -> bool:
    """One :func:`resize_kernel` step when only the last two axes change (nearest: any element
    size; linear: fp32), its tap tables as constants; False (numpy fallback) otherwise."""
    x, out = node.inputs[0], node.outputs[0]
    assert x is not None
    shape = [int(d) for d in x.type.shape]
    oshape = [int(d) for d in out.type.shape]
    at = node.attrs
    linear = at.get("mode", "nearest") == "linear"
    axes = resized_axes(shape, {"sizes": oshape, "scales": at["scales"]})
    elem = "float" if linear else INT_TYPES.get(x.type.itemsize)
    if (
        not shape
        or any(ax < len(shape) - 2 for ax in axes)
        or elem is None
        or (linear and x.type.dtype != "float32")
        or 0 in shape
        or 0 in oshape
    ):
        return False
    full = {
        "mode": at.get("mode", "nearest"),
        "nearest_mode": at.get("nearest_mode", "round_prefer_floor"),
        "coordinate_transformation_mode": at.get("coordinate_transformation_mode", "half_pixel"),
    }
    (h, oh), (w, ow) = [(1, 1)] * (2 - len(shape[-2:])) + list(
        zip(shape[-2:], oshape[-2:], strict=True)
    )
    planes = numel(tuple(shape[:-2]))

    def taps(ax: int, n: int, on: int) -> list[np.ndarray]:
        if ax in axes:
            i0, i1, wt = resize_taps(n, on, float(at["scales"][ax]), full)
        else:
            i0 = i1 = np.arange(n, dtype=np.int64)
            wt = np.zeros(n)
        return [i0.astype(np.int64), i1.astype(np.int64), wt.astype(np.float32)]

    r = len(shape)
    arrays = (
        taps(r - 2, h, oh) + taps(r - 1, w, ow)
        if r >= 2
        else ([np.zeros(1, np.int64)] * 2 + [np.zeros(1, np.float32)] + taps(0, w, ow))
    )
    # the kernel reads x at these taps unchecked: each must lie in its axis
    reads = [(arrays[0], h), (arrays[1], h), (arrays[3], w), (arrays[4], w)]
    if any(((t < 0) | (t >= n)).any() for t, n in reads):
        return False
    tables = [
        Value(f"{name}_t{k}", TensorType((len(a),), str(a.dtype)), data=a)
        for k, a in enumerate(arrays)
    ]

    def gen(loc: Callable[[Ref | None], Operand | None]) -> str:
        return resize_kernel(
            name,
            planes,
            h,
            w,
            oh,
            ow,
            linear,
            elem,  # type: ignore[arg-type]
            loc(out),
            loc(x),
            [loc(t) for t in tables],
        )  # type: ignore[misc]

    nbytes = x.type.itemsize * (numel(tuple(shape)) + numel(tuple(oshape)))
    lw.steps.append(
        Step(
            name,
            [x, *tables],
            [out],
            gen,
            op=node.op,
            units=planes * oh,
            parallel=worth_splitting(nbytes=nbytes) and planes * oh > 1,
        )
    )
    return True


def _movable(node: Node) -> bool:
    """Nearest copies raw elements of 1, 2, 4 or 8 bytes (strings are Python objects); linear
    checks float32 itself."""
    x = node.inputs[0]
    return x is not None and x.type.dtype != "string"


LOWERINGS["resize"] = Lowering(lower_resize, _movable)
