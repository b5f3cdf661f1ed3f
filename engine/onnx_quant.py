"""ONNX's quantization ops as float arithmetic: QuantizeLinear, DequantizeLinear and
DynamicQuantizeLinear, so that QDQ models (onnxruntime's ``quantize_static`` default format) run.

A quantize-dequantize pair is the float computation ONNX defines (round half to even, saturate,
subtract the zero point, scale), so results equal ONNX's reference; the products between them
run in float32 kernels, not int8 ones. Registered in ``onnx_import.CONVERTERS`` when
``onnx_converters`` imports this module (at its end).
"""

from __future__ import annotations

from satura.engine.graph import Value
from satura.engine.onnx_converters import Outs
from satura.engine.onnx_import import NodeCtx, converter

# Integer ranges of the quantized types satura has (4-bit and float8 types it does not model).
QUANT_RANGES = {
    "uint8": (0, 255),
    "int8": (-128, 127),
    "uint16": (0, 65535),
    "int16": (-32768, 32767),
}


def _per_axis(ctx: NodeCtx, p: Value, x: Value, axis: int, block: int) -> Value:
    """A scale or zero point made to broadcast against ``x``: a scalar as is, a vector along
    ``axis``, blocks of ``block`` along it repeated (the last block cut to fit)."""
    if p.type.rank == 0 or (p.type.rank == 1 and p.type.shape[0] == 1 and not block):
        return ctx.one("reshape", p, shape=())
    rank = x.type.rank
    if not -rank <= axis < rank:
        raise ctx.fail(f"axis {axis} is out of range for rank {rank}")
    axis %= rank
    if not block:
        if p.type.rank != 1 or p.type.shape[0] != x.type.shape[axis]:
            raise ctx.fail(
                f"scale/zero point of shape {tuple(p.type.shape)} does not fit axis {axis} of "
                f"{tuple(x.type.shape)}"
            )
        return ctx.one(
            "reshape", p, shape=tuple(x.type.shape[axis] if i == axis else 1 for i in range(rank))
        )
    shape = tuple(p.type.shape)
    n = x.type.shape[axis]
    if p.type.rank != rank or not isinstance(n, int) or shape[axis] != -(-n // block):
        raise ctx.fail(f"blocked scale of shape {shape} does not fit {tuple(x.type.shape)}")
    lead, rest = shape[: axis + 1], shape[axis + 1 :]
    y = ctx.one("reshape", p, shape=(*lead, 1, *rest))
    y = ctx.one("expand", y, shape=(*lead, block, *rest))
    y = ctx.one("reshape", y, shape=(*shape[:axis], shape[axis] * block, *rest))
    if shape[axis] * block != n:
        y = ctx.one("slice", y, starts=(0,), ends=(n,), axes=(axis,), steps=(1,))
    return y


def _quant_attrs(ctx: NodeCtx) -> tuple[int, int]:
    """The axis (as given: it matters only for a per-axis or blocked scale) and block size."""
    return int(ctx.attr("axis", 1)), int(ctx.attr("block_size", 0))


@converter("DequantizeLinear")
def _dequantize_linear(ctx: NodeCtx) -> Outs:
    """(x - zero_point) · scale, per tensor, per axis or per block, in the scale's type (or
    ``output_dtype``)."""
    x, scale, zp = ctx.x(0), ctx.x(1), ctx.inp(2)
    if x.type.dtype not in (*QUANT_RANGES, "int32"):
        raise ctx.fail(f"quantized type {x.type.dtype} is not supported")
    axis, block = _quant_attrs(ctx)
    out = ctx.attr("output_dtype")
    dt = ctx.dtype(out, "output_dtype") if out else scale.type.dtype
    made = ctx.imp.quantized.get(id(x))
    exact = made[1] if made is not None and made[0] is x else None
    y = exact if exact is not None and exact.type.dtype == dt else ctx.one("cast", x, to=dt)
    if zp is not None:
        y = ctx.one("sub", y, ctx.one("cast", _per_axis(ctx, zp, x, axis, block), to=dt))
    s = _per_axis(ctx, scale, x, axis, block)
    return [ctx.one("mul", y, s if s.type.dtype == dt else ctx.one("cast", s, to=dt))]


@converter("QuantizeLinear")
def _quantize_linear(ctx: NodeCtx) -> Outs:
    """saturate(round_half_even(x / scale) + zero_point) in the zero point's type (or
    ``output_dtype``, else uint8)."""
    x, scale, zp = ctx.x(0), ctx.x(1), ctx.inp(2)
    axis, block = _quant_attrs(ctx)
    out = ctx.attr("output_dtype")
    to = zp.type.dtype if zp is not None else ctx.dtype(out, "output_dtype") if out else "uint8"
    if to not in QUANT_RANGES:
        raise ctx.fail(f"quantized type {to} is not supported (int8, uint8, int16, uint16)")
    precision = ctx.attr("precision")
    wide = ctx.dtype(precision, "precision") if precision else x.type.dtype
    xs = x if wide == x.type.dtype else ctx.one("cast", x, to=wide)
    s = _per_axis(ctx, scale, x, axis, block)
    q = ctx.one(
        "round", ctx.one("div", xs, s if s.type.dtype == wide else ctx.one("cast", s, to=wide))
    )
    if zp is not None:
        q = ctx.one("add", q, ctx.one("cast", _per_axis(ctx, zp, x, axis, block), to=wide))
    lo, hi = QUANT_RANGES[to]
    # min/max rather than clip: both join the elementwise kernels around them
    q = ctx.one("max", ctx.one("min", q, ctx.scalar(hi, q, "hi")), ctx.scalar(lo, q, "lo"))
    y = ctx.one("cast", q, to=to)
    ctx.imp.quantized[id(y)] = (y, q)
    return [y]


@converter("DynamicQuantizeLinear")
def _dynamic_quantize_linear(ctx: NodeCtx) -> Outs:
    """uint8 quantization over x's range widened to hold 0: scale = (max - min) / 255, zero
    point = saturate(round(-min / scale)); outputs y, scale, zero point."""
    x = ctx.x()
    every = tuple(range(x.type.rank))
    zero = ctx.scalar(0.0, x, "zero")
    hi = ctx.one("max", ctx.one("reduce_max", x, axes=every, keepdims=0), zero)
    lo = ctx.one("min", ctx.one("reduce_min", x, axes=every, keepdims=0), zero)
    scale = ctx.one("div", ctx.one("sub", hi, lo), ctx.scalar(255.0, x, "range"))
    top = ctx.scalar(255.0, x, "top")
    zp = ctx.one("clip", ctx.one("round", ctx.one("div", ctx.one("neg", lo), scale)), zero, top)
    q = ctx.one("clip", ctx.one("add", ctx.one("round", ctx.one("div", x, scale)), zp), zero, top)
    return [ctx.one("cast", q, to="uint8"), scale, ctx.one("cast", zp, to="uint8")]
