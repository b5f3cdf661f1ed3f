"""Layout ops as strided copies: Transpose, Slice and Split write a contiguous output whose element
``i`` (a multi-index) is read at ``offset + sum(i[k] * stride[k])`` of the input; Concat writes
each input into its part of the output the same way, with output strides.

One kernel serves all three: the strides and offset are the view's (``StridedView`` terms of
``engine.verify.alias``), computed here at compile time. Output rows (all dims but the last) are
shared between cores; the last dim is the inner loop, a plain vectorizable copy where its input
stride is 1. Any dtype: elements are moved as integers of the item size. Cast is the same copy
with a conversion between load and store (``CAST_TYPES``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from satura.engine.graph import Node, Value
from satura.engine.ops import OPS
from satura.engine.ops.shape import _slice_params, slice_bounds
from satura.engine.shapes import IntDims, normalize_axis
from satura.targets.irmath import CAST_TYPES, convert
from satura.targets.kernel import Loops, Operand, body_header, share, wrapper
from satura.targets.lower import Lowerer, Ref, Step, numel, worth_splitting

INT_TYPES = {1: "i8", 2: "i16", 4: "i32", 8: "i64"}


def contiguous_strides(shape: Sequence[int]) -> list[int]:
    out, acc = [0] * len(shape), 1
    for k in reversed(range(len(shape))):
        out[k] = acc
        acc *= shape[k]
    return out


def merge_dims(
    shape: Sequence[int], strides: Sequence[int], ostr: Sequence[int]
) -> tuple[list[int], list[int], list[int]]:
    """The same copy over fewer dims: size-1 dims dropped, and a dim merged into the one before
    it where both the input and the output step over it as over that dim's whole extent."""
    dims = [d for d in zip(shape, strides, ostr, strict=True) if d[0] != 1] or [(1, 0, 0)]
    out = [dims[0]]
    for n, si, so in dims[1:]:
        pn, ps, po = out[-1]
        if ps == si * n and po == so * n:
            out[-1] = (pn * n, si, so)
        else:
            out.append((n, si, so))
    return [d[0] for d in out], [d[1] for d in out], [d[2] for d in out]


# A last dim of at most this many elements that the input reads across (not contiguous) while
# it has the dim before contiguous (an interleave, as depth-to-space writes) is unrolled, the
# loop running over the contiguous dim (row offsets are no longer decomposed per 2 elements).
# Measured here: a ConvTranspose's depth-to-space, 64×28×2×28×2 floats, 557 -> 27 µs.
MAX_UNROLL = 8


def strided_copy_kernel(
    name: str,
    itemsize: int,
    shape: Sequence[int],
    strides: Sequence[int],
    offset: int,
    out: Operand,
    src: Operand,
    out_strides: Sequence[int] | None = None,
    out_offset: int = 0,
    cast: tuple[str, str] | None = None,
) -> str:
    """``out[out_offset + sum(i[k] * out_strides[k])] = src[offset + sum(i[k] * strides[k])]``
    over ``shape`` (elements; ``out_strides`` default: contiguous). ``cast``: (source dtype,
    destination dtype) to convert each element between them (else moved as bytes)."""
    ty = oty = INT_TYPES[itemsize]
    if cast is not None:
        ty, oty = CAST_TYPES[cast[0]][0], CAST_TYPES[cast[1]][0]
    shape = [int(s) for s in shape] or [1]
    strides = [int(s) for s in strides] or [0]
    ostr = [int(s) for s in out_strides] if out_strides else contiguous_strides(shape)
    shape, strides, ostr = merge_dims(shape, strides, ostr)
    unrolled: list[tuple[int, int]] = []  # (input, output) offsets of the unrolled elements
    if (
        cast is None
        and len(shape) >= 2
        and shape[-1] <= MAX_UNROLL
        and strides[-1] != 1
        and strides[-2] == 1
    ):
        unrolled = [(t * strides[-1], t * ostr[-1]) for t in range(shape[-1])]
        shape, strides, ostr = shape[:-1], strides[:-1], ostr[:-1]
    n, sn, on = shape[-1], strides[-1], ostr[-1]
    rows = numel(tuple(shape[:-1]))
    L = [
        body_header(name, 2),
        "entry:",
        "  %r.a = alloca i64, align 8",
        "  %j.a = alloca i64",
        "  br label %go",
        "go:",
    ]
    share(L, rows, 1, "%r0", "%r1")
    loops = Loops(L)
    r = loops.open("r", "%r0", "%r1", 1)
    # the row's input offset: decompose r into the leading output indices
    L += [f"  %base0 = add i64 0, {offset}", f"  %obase0 = add i64 0, {out_offset}"]
    cur, ocur, rem = "%base0", "%obase0", r
    for k in reversed(range(len(shape) - 1)):
        L += [
            f"  %ix{k} = urem i64 {rem}, {shape[k]}",
            f"  %rq{k} = udiv i64 {rem}, {shape[k]}",
            f"  %bo{k} = mul i64 %ix{k}, {strides[k]}",
            f"  %ba{k} = add i64 {cur}, %bo{k}",
            f"  %obo{k} = mul i64 %ix{k}, {ostr[k]}",
            f"  %oba{k} = add i64 {ocur}, %obo{k}",
        ]
        cur, ocur, rem = f"%ba{k}", f"%oba{k}", f"%rq{k}"
    L += [
        f"  %orow = getelementptr {oty}, ptr %a0, i64 {ocur}",
        f"  %irow = getelementptr {ty}, ptr %a1, i64 {cur}",
    ]
    j = loops.open("j", "0", str(n), 1)
    L += [f"  %jo = mul i64 {j}, {sn}", f"  %ojo = mul i64 {j}, {on}"]
    for t, (io, oo) in enumerate(unrolled or [(0, 0)]):
        L += [
            f"  %si{t} = add i64 %jo, {io}",
            f"  %sp{t} = getelementptr {ty}, ptr %irow, i64 %si{t}",
            f"  %vv{t} = load {ty}, ptr %sp{t}, align 1",
        ]
        val = convert(L, f"%vv{t}", *cast) if cast is not None else f"%vv{t}"
        L += [
            f"  %di{t} = add i64 %ojo, {oo}",
            f"  %dp{t} = getelementptr {oty}, ptr %orow, i64 %di{t}",
            f"  store {oty} {val}, ptr %dp{t}, align 1",
        ]
    loops.close("j", 1)
    loops.close("r", 1)
    L += ["  ret void", "}"]
    return "\n".join([wrapper(name, [out, src]), "\n".join(L)])


def _copy_step(
    lw: Lowerer,
    name: str,
    src: Value,
    out: Value,
    strides: Sequence[int],
    offset: int,
    shape: Sequence[int] | None = None,
    out_strides: Sequence[int] | None = None,
    out_offset: int = 0,
) -> None:
    shape = [int(d) for d in (out.type.shape if shape is None else shape)]
    size = out.type.itemsize
    cast = (src.type.dtype, out.type.dtype) if src.type.dtype != out.type.dtype else None

    def gen(loc: Callable[[Ref | None], Operand | None]) -> str:
        return strided_copy_kernel(
            name,
            size,
            shape,
            strides,
            offset,
            loc(out),  # type: ignore
            loc(src),
            out_strides,
            out_offset,
            cast,
        )  # type: ignore

    nbytes = numel(tuple(shape)) * (size + src.type.itemsize)
    lw.steps.append(
        Step(
            name,
            [src],
            [out],
            gen,
            parallel=worth_splitting(nbytes=nbytes),
            op="cast" if cast else "copy",
            units=numel(tuple(shape[:-1])),
        )
    )


def flat_copy(lw: Lowerer, node: Node, name: str) -> bool:
    """The output is the input's elements in order, converted to the output's dtype: a Cast, or
    a reshape whose result needs a buffer of its own (a graph output)."""
    src, out = node.inputs[0], node.outputs[0]
    if not _ok(src, out):
        return False
    assert src is not None
    _copy_step(lw, name, src, out, [1], 0, [numel(out.type.shape)])
    return True


def _ok(x: Value | None, *outs: Value) -> bool:
    return (
        x is not None
        and x.type.is_static
        and x.type.itemsize in INT_TYPES
        and all(o.type.is_static and numel(o.type.shape) > 0 for o in outs)
    )


def lower_transpose(lw: Lowerer, node: Node, name: str) -> bool:
    x, out = node.inputs[0], node.outputs[0]
    if not _ok(x, out):
        return False
    assert x is not None
    ins = [int(d) for d in x.type.shape]
    perm = node.attrs.get("perm") or tuple(reversed(range(len(ins))))
    st = contiguous_strides(ins)
    _copy_step(lw, name, x, out, [st[p] for p in perm], 0)
    return True


def lower_slice(lw: Lowerer, node: Node, name: str) -> bool:
    x, out = node.inputs[0], node.outputs[0]
    if not _ok(x, out) or any(v is not None for v in node.inputs[1:]):
        return False
    assert x is not None
    ins = [int(d) for d in x.type.shape]
    st = contiguous_strides(ins)
    strides, offset = list(st), 0
    d = IntDims()
    for axis, s, e, step in _slice_params(len(ins), OPS["slice"].with_defaults(node.attrs)):
        begin, _, _ = slice_bounds(d, ins[axis], int(s), int(e), int(step))
        offset += int(begin) * st[axis]
        strides[axis] = st[axis] * int(step)
    _copy_step(lw, name, x, out, strides, offset)
    return True


def lower_split(lw: Lowerer, node: Node, name: str) -> bool:
    x = node.inputs[0]
    if not _ok(x, *node.outputs):
        return False
    assert x is not None
    ins = [int(d) for d in x.type.shape]
    axis = normalize_axis(node.attrs["axis"], len(ins))
    st = contiguous_strides(ins)
    start = 0
    for i, o in enumerate(node.outputs):
        _copy_step(lw, f"{name}_{i}", x, o, st, start * st[axis])
        start += int(o.type.shape[axis])
    return True


def lower_concat(lw: Lowerer, node: Node, name: str) -> bool:
    out = node.outputs[0]
    ins = [x for x in node.inputs if x is not None]
    if (
        not ins
        or not all(_ok(x, out) for x in ins)
        or any(x.type.dtype != out.type.dtype for x in ins)
    ):
        return False
    oshape = [int(d) for d in out.type.shape]
    axis = normalize_axis(node.attrs["axis"], len(oshape))
    ost = contiguous_strides(oshape)
    start = 0
    for i, x in enumerate(ins):
        shape = [int(d) for d in x.type.shape]
        if numel(tuple(shape)):
            _copy_step(
                lw,
                f"{name}_{i}",
                x,
                out,
                contiguous_strides(shape),
                0,
                shape,
                ost,
                start * ost[axis],
            )
        start += shape[axis]
    return True
