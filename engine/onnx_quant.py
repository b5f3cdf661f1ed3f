"""ONNX's quantization ops as float arithmetic: QuantizeLinear, DequantizeLinear and
DynamicQuantizeLinear (QDQ models, onnxruntime's ``quantize_static`` default format), and the
integer operator ops MatMulInteger, ConvInteger, QLinearMatMul and QLinearConv (the operator
format, and ``quantize_dynamic``'s output), and the com.microsoft ops onnxruntime's quantizer
writes in the operator format (QLinearAdd, QLinearMul, QLinearLeakyRelu, QLinearSigmoid,
QLinearAveragePool, QLinearGlobalAveragePool, QLinearConcat, QLinearSoftmax, QLinearWhere, QGemm).

A quantize-dequantize pair is the float computation ONNX defines (round half to even, saturate,
subtract the zero point, scale), so results equal ONNX's reference; the products between them
run in float32 kernels, not int8 ones. An integer product is a float32 product of the integers
less their zero points: exact while its partial sums stay below 2**24 in magnitude, as they do
for the usual sizes (K·|a|·|b|), else rounded as a float32 sum is. Every integer a quantizing op
makes keeps the float it was cast from (``Importer.quantized``), so the next integer op, a
DequantizeLinear, a MaxPool or a Cast back to float reads that float and no cast pair runs.
Registered in ``onnx_import.CONVERTERS`` when ``onnx_converters`` imports this module (at its
end).
"""

from __future__ import annotations

from satura.engine.graph import Value
from satura.engine.onnx_converters import Outs, conv_value
from satura.engine.onnx_import import CONTRIB_DOMAIN, NodeCtx, converter

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
    x, scale = ctx.x(0), ctx.x(1)
    if x.type.dtype not in (*QUANT_RANGES, "int32"):
        raise ctx.fail(f"quantized type {x.type.dtype} is not supported")
    axis, block = _quant_attrs(ctx)
    out = ctx.attr("output_dtype")
    dt = ctx.dtype(out, "output_dtype") if out else scale.type.dtype
    return [dequantize(ctx, x, scale, ctx.inp(2), axis, block, dt)]


def dequantize(
    ctx: NodeCtx,
    x: Value,
    scale: Value,
    zp: Value | None,
    axis: int = 1,
    block: int = 0,
    dt: str = "float32",
) -> Value:
    """(x - zp) · scale in float type ``dt``."""
    y = as_float(ctx, x, dt)
    if zp is not None:
        y = ctx.one("sub", y, ctx.one("cast", _per_axis(ctx, zp, x, axis, block), to=dt))
    s = _per_axis(ctx, scale, x, axis, block)
    return ctx.one("mul", y, s if s.type.dtype == dt else ctx.one("cast", s, to=dt))


@converter("QuantizeLinear")
def _quantize_linear(ctx: NodeCtx) -> Outs:
    """saturate(round_half_even(x / scale) + zero_point) in the zero point's type (or
    ``output_dtype``, else uint8)."""
    x, scale, zp = ctx.x(0), ctx.x(1), ctx.inp(2)
    axis, block = _quant_attrs(ctx)
    out = ctx.attr("output_dtype")
    to = zp.type.dtype if zp is not None else ctx.dtype(out, "output_dtype") if out else "uint8"
    precision = ctx.attr("precision")
    wide = ctx.dtype(precision, "precision") if precision else x.type.dtype
    return [quantize(ctx, x, scale, zp, to, axis, block, wide)]


def quantize(
    ctx: NodeCtx,
    x: Value,
    scale: Value,
    zp: Value | None,
    to: str,
    axis: int = 1,
    block: int = 0,
    wide: str | None = None,
) -> Value:
    """saturate(round_half_even(x / scale) + zp) as integer type ``to``, computed in ``wide``
    (x's float type by default)."""
    if to not in QUANT_RANGES:
        raise ctx.fail(f"quantized type {to} is not supported (int8, uint8, int16, uint16)")
    wide = wide or x.type.dtype
    xs = x if wide == x.type.dtype else ctx.one("cast", x, to=wide)
    s = _per_axis(ctx, scale, x, axis, block)
    q = ctx.one(
        "round", ctx.one("div", xs, s if s.type.dtype == wide else ctx.one("cast", s, to=wide))
    )
    if zp is not None:
        q = ctx.one("add", q, ctx.one("cast", _per_axis(ctx, zp, x, axis, block), to=wide))
    return _saturated(ctx, q, to)


def _saturated(ctx: NodeCtx, q: Value, to: str) -> Value:
    """Rounded ``q`` clamped to the range of ``to`` and cast to it."""
    lo, hi = QUANT_RANGES[to]
    # min/max rather than clip: both join the elementwise kernels around them
    q = ctx.one("max", ctx.one("min", q, ctx.scalar(hi, q, "hi")), ctx.scalar(lo, q, "lo"))
    return ctx.quantized(q, to)


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
    zp = _saturated(ctx, ctx.one("round", ctx.one("div", ctx.one("neg", lo), scale)), "uint8")
    q = ctx.one("add", ctx.one("round", ctx.one("div", x, scale)), as_float(ctx, zp, x.type.dtype))
    return [_saturated(ctx, q, "uint8"), scale, zp]


def as_float(ctx: NodeCtx, x: Value, dt: str) -> Value:
    """Integer ``x`` as float type ``dt``: the float a quantizing op cast it from when there is
    one (no cast runs), else a cast."""
    return ctx.imp.exact_float(x, dt) or ctx.one("cast", x, to=dt)


def _centred(ctx: NodeCtx, x: Value, zp: Value | None) -> Value:
    """float32 ``x - zp`` of a uint8 or int8 ``x`` (``zp`` already shaped to broadcast)."""
    if x.type.dtype not in ("uint8", "int8"):
        raise ctx.fail(f"integer inputs must be uint8 or int8, got {x.type.dtype}")
    xf = as_float(ctx, x, "float32")
    if zp is None:
        return xf
    if zp.type.dtype != x.type.dtype:
        raise ctx.fail(f"zero point of type {zp.type.dtype} for an input of {x.type.dtype}")
    return ctx.one("sub", xf, as_float(ctx, zp, "float32"))


def _per_row(ctx: NodeCtx, p: Value | None, a: Value) -> Value | None:
    """A parameter of A [.., M, K] per tensor or per row: a vector of M as [M, 1]."""
    if p is None or p.type.rank != 1 or p.type.shape[0] == 1 or a.type.rank < 2:
        return p
    return ctx.one("reshape", p, shape=(p.type.shape[0], 1))


def _requantize(
    ctx: NodeCtx, acc: Value, scale: Value, y_scale: Value, y_zp: Value | None, like: Value
) -> Value:
    """saturate(round(acc · (x_scale·w_scale / y_scale)) + y_zp) in y_zp's type (else
    ``like``'s), the scale product taken in the scales' type, as ONNX's reference does."""
    m = ctx.one("div", scale, y_scale)
    if m.type.dtype != "float32":
        m = ctx.one("cast", m, to="float32")
    q = ctx.one("mul", acc, m)
    if y_zp is not None:
        q = ctx.one("add", q, as_float(ctx, y_zp, "float32"))
    to = y_zp.type.dtype if y_zp is not None else like.type.dtype
    if to not in ("uint8", "int8"):
        raise ctx.fail(f"quantized output type {to} is not supported (uint8, int8)")
    return _saturated(ctx, ctx.one("round", q), to)


@converter("MatMulInteger")
def _matmul_integer(ctx: NodeCtx) -> Outs:
    """int32 (A - a_zero_point) @ (B - b_zero_point); a_zero_point per row of A or per tensor,
    b_zero_point per column of B or per tensor."""
    a, b = ctx.x(0), ctx.x(1)
    af = _centred(ctx, a, _per_row(ctx, ctx.inp(2), a))
    bf = _centred(ctx, b, ctx.inp(3))
    return [ctx.quantized(ctx.one("matmul", af, bf), "int32")]


@converter("QLinearMatMul")
def _qlinear_matmul(ctx: NodeCtx) -> Outs:
    """saturate(round((a - a_zp) @ (b - b_zp) · a_scale·b_scale / y_scale) + y_zp); a's and
    y's parameters per tensor or per row, b's per tensor or per column."""
    a, b = ctx.x(0), ctx.x(3)
    af = _centred(ctx, a, _per_row(ctx, ctx.inp(2), a))
    bf = _centred(ctx, b, ctx.inp(5))
    acc = ctx.one("matmul", af, bf)
    scale = ctx.one("mul", _per_row(ctx, ctx.x(1), a), ctx.x(4))
    y_scale, y_zp = _per_row(ctx, ctx.x(6), a), _per_row(ctx, ctx.inp(7), a)
    return [_requantize(ctx, acc, scale, y_scale, y_zp, a)]


def _channel_vector(ctx: NodeCtx, p: Value, w: Value, what: str) -> tuple[int, ...] | None:
    """The shape a per-output-channel parameter takes against conv weights ``w`` (None for a
    scalar one)."""
    if p.type.rank == 0 or (p.type.rank == 1 and p.type.shape[0] == 1):
        return None
    if p.type.rank != 1 or p.type.shape[0] != w.type.shape[0]:
        raise ctx.fail(
            f"{what} of shape {tuple(p.type.shape)} is neither a scalar nor one per output "
            f"channel ({w.type.shape[0]})"
        )
    return (p.type.shape[0],) + (1,) * (w.type.rank - 1)


def _conv_operands(ctx: NodeCtx, xi: int, wi: int, xzi: int, wzi: int) -> tuple[Value, Value]:
    """float32 x and w less their zero points (x's per tensor, w's per tensor or channel)."""
    x, w = ctx.x(xi), ctx.x(wi)
    xz, wz = ctx.inp(xzi), ctx.inp(wzi)
    if xz is not None and xz.type.rank and tuple(xz.type.shape) != (1,):
        raise ctx.fail(f"x's zero point must be a scalar, got shape {tuple(xz.type.shape)}")
    if wz is not None:
        shape = _channel_vector(ctx, wz, w, "w's zero point")
        wz = wz if shape is None else ctx.one("reshape", wz, shape=shape)
    return _centred(ctx, x, xz), _centred(ctx, w, wz)


@converter("ConvInteger")
def _conv_integer(ctx: NodeCtx) -> Outs:
    """int32 conv of (x - x_zero_point) by (w - w_zero_point), w's per output channel or per
    tensor; the padding is of zeros after the zero point is taken off."""
    xf, wf = _conv_operands(ctx, 0, 1, 2, 3)
    return [ctx.quantized(conv_value(ctx, xf, wf, None), "int32")]


@converter("QLinearConv")
def _qlinear_conv(ctx: NodeCtx) -> Outs:
    """saturate(round((conv(x - x_zp, w - w_zp) + B) · x_scale·w_scale / y_scale) + y_zp),
    w_scale and w_zp per output channel or per tensor, B int32."""
    xf, wf = _conv_operands(ctx, 0, 3, 2, 5)
    bias = ctx.inp(8)
    if bias is not None:
        if bias.type.dtype != "int32":
            raise ctx.fail(f"bias must be int32, got {bias.type.dtype}")
        bias = as_float(ctx, bias, "float32")
    acc = conv_value(ctx, xf, wf, bias)
    w_scale = ctx.x(4)
    shape = _channel_vector(ctx, w_scale, ctx.x(3), "w_scale")
    if shape is not None:  # against the output [N, M, ...]
        w_scale = ctx.one("reshape", w_scale, shape=shape[:-1])
    scale = ctx.one("mul", ctx.x(1), w_scale)
    return [_requantize(ctx, acc, scale, ctx.x(6), ctx.inp(7), ctx.x(0))]


# -- onnxruntime's quantized contrib ops (its quantizer's operator format) -----------------------
# Each is its float op between a dequantize of every input and a quantize of the output: inputs
# come as (x, scale, zero point) triples, the output's scale and zero point follow. onnxruntime
# requantizes with fixed ratios of the scales, which can land one step apart on a boundary.
_CONTRIB_UNARY = {"QLinearLeakyRelu": "LeakyRelu", "QLinearSigmoid": "Sigmoid"}
_CONTRIB_BINARY = {"QLinearAdd": "add", "QLinearMul": "mul"}


def _deq(ctx: NodeCtx, i: int) -> Value:
    """Input ``i`` dequantized with inputs i + 1 (scale) and i + 2 (zero point)."""
    x = ctx.x(i)
    if x.type.dtype not in ("uint8", "int8"):
        raise ctx.fail(f"quantized input {i} must be uint8 or int8, got {x.type.dtype}")
    return dequantize(ctx, x, ctx.x(i + 1), ctx.inp(i + 2))


def _req(ctx: NodeCtx, y: Value, i: int, like: Value) -> Value:
    """Float ``y`` quantized with inputs i (scale) and i + 1 (zero point), to the zero point's
    type (else ``like``'s)."""
    zp = ctx.inp(i + 1)
    return quantize(ctx, y, ctx.x(i), zp, zp.type.dtype if zp is not None else like.type.dtype)


def _nchw(ctx: NodeCtx, x: Value, back: bool = False) -> Value:
    """channels_last (NHWC...) to NCHW..., or back."""
    r = x.type.rank
    perm = (0, *range(2, r), 1) if back else (0, r - 1, *range(1, r - 1))
    return ctx.one("transpose", x, perm=perm)


@converter(*_CONTRIB_UNARY, *_CONTRIB_BINARY, domain=CONTRIB_DOMAIN)
def _qlinear_elementwise(ctx: NodeCtx) -> Outs:
    """QLinearAdd, QLinearMul (A, B triples, then C's scale and zero point) and QLinearLeakyRelu,
    QLinearSigmoid (X triple, then Y's)."""
    if ctx.op_type in _CONTRIB_BINARY:
        y = ctx.one(_CONTRIB_BINARY[ctx.op_type], _deq(ctx, 0), _deq(ctx, 3))
        return [_req(ctx, y, 6, ctx.x(0))]
    attrs = {"alpha": float(ctx.attr("alpha", 0.01))} if ctx.op_type == "QLinearLeakyRelu" else {}
    (y,) = ctx.inner(_CONTRIB_UNARY[ctx.op_type], [_deq(ctx, 0)], **attrs)
    assert y is not None
    return [_req(ctx, y, 3, ctx.x(0))]


@converter(
    "QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearSoftmax", domain=CONTRIB_DOMAIN
)
def _qlinear_window(ctx: NodeCtx) -> Outs:
    """The pools (``channels_last`` too) and softmax of a quantized X: the X triple, then Y's
    scale and zero point."""
    x = _deq(ctx, 0)
    last = int(ctx.attr("channels_last", 0))
    if ctx.op_type == "QLinearSoftmax":
        (y,) = ctx.inner(
            "Softmax", [x], opset=int(ctx.attr("opset", 13)), axis=int(ctx.attr("axis", -1))
        )
    elif ctx.op_type == "QLinearGlobalAveragePool":
        axes = tuple(range(1, x.type.rank - 1)) if last else tuple(range(2, x.type.rank))
        y = ctx.one("reduce_mean", x, axes=axes, keepdims=1)
    else:
        names = ("kernel_shape", "strides", "pads", "auto_pad", "ceil_mode", "count_include_pad")
        attrs = {k: ctx.attrs[k] for k in names if k in ctx.attrs}
        (y,) = ctx.inner("AveragePool", [_nchw(ctx, x) if last else x], **attrs)
        assert y is not None
        y = _nchw(ctx, y, back=True) if last else y
    assert y is not None
    return [_req(ctx, y, 3, ctx.x(0))]


@converter("QLinearConcat", domain=CONTRIB_DOMAIN)
def _qlinear_concat(ctx: NodeCtx) -> Outs:
    """Y's scale and zero point, then an (X, scale, zero point) triple per input."""
    if ctx.n_in < 5 or (ctx.n_in - 2) % 3:
        raise ctx.fail(f"expected Y's scale and zero point then triples, got {ctx.n_in} inputs")
    xs = [_deq(ctx, i) for i in range(2, ctx.n_in, 3)]
    y = ctx.one("concat", *xs, axis=int(ctx.attr("axis")))
    return [_req(ctx, y, 0, ctx.x(2))]


@converter("QLinearWhere", domain=CONTRIB_DOMAIN)
def _qlinear_where(ctx: NodeCtx) -> Outs:
    """condition, the X and Y triples, then Z's scale and zero point."""
    y = ctx.one("where", ctx.x(0), _deq(ctx, 1), _deq(ctx, 4))
    return [_req(ctx, y, 7, ctx.x(1))]


@converter("QGemm", domain=CONTRIB_DOMAIN)
def _qgemm(ctx: NodeCtx) -> Outs:
    """alpha·A·B + C of quantized A and B (B's scale per tensor or per output column), C an
    int32 bias at scale a_scale·b_scale; quantized with y's scale and zero point when given,
    else float."""
    trans_b = int(ctx.attr("transB", 0))
    a = _deq(ctx, 0)
    b, b_scale = ctx.x(3), ctx.x(4)
    if b.type.dtype not in ("uint8", "int8"):
        raise ctx.fail(f"quantized input 3 must be uint8 or int8, got {b.type.dtype}")
    b = dequantize(ctx, b, b_scale, ctx.inp(5), axis=0 if trans_b else 1)
    c = ctx.inp(6)
    if c is not None:
        if c.type.dtype != "int32":
            raise ctx.fail(f"bias C must be int32, got {c.type.dtype}")
        cs = ctx.one("mul", ctx.x(1), b_scale)
        c = ctx.one("mul", ctx.one("cast", c, to="float32"), cs)
    (y,) = ctx.inner(
        "Gemm",
        [a, b, c],
        alpha=float(ctx.attr("alpha", 1.0)),
        transA=int(ctx.attr("transA", 0)),
        transB=trans_b,
    )
    assert y is not None
    return [_req(ctx, y, 7, ctx.x(0)) if ctx.has(7) else y]


@converter("MatMulIntegerToFloat", "DynamicQuantizeMatMul", domain=CONTRIB_DOMAIN)
def _matmul_integer_to_float(ctx: NodeCtx) -> Outs:
    """onnxruntime's fusions of a quantized MatMul with its dequantization: (A - a_zp) @
    (B - b_zp) · a_scale·b_scale (+ bias), A given (MatMulIntegerToFloat: A, B, a_scale,
    b_scale, a_zp, b_zp, bias) or quantized on the fly as DynamicQuantizeLinear does
    (DynamicQuantizeMatMul: A, B, b_scale, b_zp, bias)."""
    if ctx.op_type == "DynamicQuantizeMatMul":
        a, a_scale, a_zp = ctx.inner("DynamicQuantizeLinear", [ctx.x(0)])
        b, b_scale, b_zp, bias = ctx.x(1), ctx.x(2), ctx.inp(3), ctx.inp(4)
        assert a is not None
        assert a_scale is not None
    else:
        a, b, a_scale, b_scale = ctx.x(0), ctx.x(1), ctx.x(2), ctx.x(3)
        a_zp, b_zp, bias = ctx.inp(4), ctx.inp(5), ctx.inp(6)
    product = ctx.one("matmul", _centred(ctx, a, _per_row(ctx, a_zp, a)), _centred(ctx, b, b_zp))
    y = ctx.one("mul", product, ctx.one("mul", a_scale, b_scale))
    return [y if bias is None else ctx.one("add", y, bias)]
