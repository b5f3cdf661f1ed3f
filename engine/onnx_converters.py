"""ONNX op converters: one function per ONNX op type, registered in ``onnx_import.CONVERTERS``.

A converter reads its node through a :class:`~satura.engine.onnx_import.NodeCtx` and returns the
satura values of the node's outputs (None for an output it cannot produce).
"""

from __future__ import annotations

import ast
from typing import Any

import numpy as np
import sympy
from satura.engine.graph import Value
from satura.engine.onnx_import import CONVERTERS, NodeCtx, converter, onnx_dtype
from satura.engine.ops import OPS, get_op
from satura.engine.ops.nn import RESIZE_COORDS, resize_matrix, resized_axes
from satura.engine.shapes import as_dim, normalize_axis

Outs = list[Value | None]


# -- elementwise, generated from the registry ---------------------------------------------------
def _simple(op: str) -> Any:
    def conv(ctx: NodeCtx) -> Outs:
        return [ctx.one(op, *[ctx.inp(i) for i in range(ctx.n_in)])]

    return conv


_SPECIAL = {"Cast", "Clip", "Gelu", "LeakyRelu", "Max", "Min", "Identity"}
for _info in OPS.values():
    if _info.traits & {"unary", "binary"} and not _info.attrs:
        for _t in _info.onnx:
            if _t not in _SPECIAL:
                CONVERTERS[_t] = _simple(_info.name)


@converter("Identity", "Dropout")
def _identity(ctx: NodeCtx) -> Outs:
    if ctx.op_type == "Identity" and ctx.is_seq(0):
        return [ctx.seq(0)]
    # Dropout's training_mode is input 2 (opset 12 on); it must be a constant false
    if ctx.op_type == "Dropout" and ctx.has(2) and bool(np.asarray(ctx.const(2)).any()):
        ratio = ctx.const(1) if ctx.has(1) else 0.5
        if float(np.asarray(ratio)) != 0.0:  # ratio 0 drops nothing
            raise ctx.fail("training_mode=true with a ratio above 0 drops at random: not supported")
    x = ctx.x()
    if ctx.op_type == "Dropout" and len(ctx.node.output) > 1 and ctx.node.output[1]:
        # the mask of an inference dropout keeps everything
        keep = ctx.one("constant_of_shape", shape=tuple(x.type.shape), value=1.0, dtype="bool")
        return [ctx.one("identity", x), keep]
    return [ctx.one("identity", x)]


@converter("Gelu")
def _gelu(ctx: NodeCtx) -> Outs:
    return [ctx.one("gelu", ctx.x(), approximate=ctx.attr("approximate", "none"))]


@converter("LeakyRelu")
def _leaky(ctx: NodeCtx) -> Outs:
    return [ctx.one("leaky_relu", ctx.x(), alpha=float(ctx.attr("alpha", 0.01)))]


@converter("Cast")
def _cast(ctx: NodeCtx) -> Outs:
    to = onnx_dtype(int(ctx.attr("to")), f"node '{ctx.name}' (Cast)")
    x = ctx.x()
    return [ctx.imp.exact_float(x, to) or ctx.one("cast", x, to=to)]


@converter("BitCast")
def _bitcast(ctx: NodeCtx) -> Outs:
    to = onnx_dtype(int(ctx.attr("to")), f"node '{ctx.name}' (BitCast)")
    return [ctx.one("bitcast", ctx.x(), to=to)]


@converter("CastLike")
def _cast_like(ctx: NodeCtx) -> Outs:
    return [ctx.one("cast", ctx.x(), to=ctx.x(1).type.dtype)]


@converter("Clip")
def _clip(ctx: NodeCtx) -> Outs:
    x = ctx.x()
    lo, hi = ctx.inp(1), ctx.inp(2)
    if ctx.opset < 11:  # min and max were attributes
        lo = ctx.scalar(ctx.attr("min", -np.inf), x, "min")
        hi = ctx.scalar(ctx.attr("max", np.inf), x, "max")
    return [
        ctx.one("clip", x, lo, hi)
        if hi is not None
        else (ctx.one("clip", x, lo) if lo is not None else ctx.one("identity", x))
    ]


@converter("Max", "Min", "Sum", "Mean")
def _variadic(ctx: NodeCtx) -> Outs:
    op = {"Max": "max", "Min": "min", "Sum": "add", "Mean": "add"}[ctx.op_type]
    xs = [ctx.x(i) for i in range(ctx.n_in)]
    out = xs[0] if len(xs) > 1 else ctx.one("identity", xs[0])
    for v in xs[1:]:
        out = ctx.one(op, out, v)
    if ctx.op_type == "Mean" and len(xs) > 1:
        out = ctx.one("div", out, ctx.scalar(len(xs), out, "n"))
    return [out]


@converter("Constant")
def _constant(ctx: NodeCtx) -> Outs:
    if "value" in ctx.attrs:
        arr = ctx.imp.tensor_array(ctx.attrs["value"])
    elif "value_float" in ctx.attrs:
        arr = np.asarray(ctx.attrs["value_float"], dtype=np.float32)
    elif "value_floats" in ctx.attrs:
        arr = np.asarray(ctx.attrs["value_floats"], dtype=np.float32)
    elif "value_int" in ctx.attrs:
        arr = np.asarray(ctx.attrs["value_int"], dtype=np.int64)
    elif "value_ints" in ctx.attrs:
        arr = np.asarray(ctx.attrs["value_ints"], dtype=np.int64)
    else:
        raise ctx.fail(f"attribute {sorted(ctx.attrs)} is not supported")
    v = ctx.imp.add_const(arr, ctx.node.output[0])
    ctx.created.add(id(v))
    return [v]


# -- linear algebra ----------------------------------------------------------------------------
@converter("MatMul")
def _matmul(ctx: NodeCtx) -> Outs:
    return [ctx.one("matmul", ctx.x(0), ctx.x(1))]


@converter("Gemm")
def _gemm(ctx: NodeCtx) -> Outs:
    return [
        ctx.one(
            "gemm",
            ctx.x(0),
            ctx.x(1),
            ctx.inp(2),
            trans_a=int(ctx.attr("transA", 0)),
            trans_b=int(ctx.attr("transB", 0)),
            alpha=float(ctx.attr("alpha", 1.0)),
            beta=float(ctx.attr("beta", 1.0)),
        )
    ]


# -- nn ----------------------------------------------------------------------------------------
@converter("Softmax", "LogSoftmax")
def _softmax(ctx: NodeCtx) -> Outs:
    op = "softmax" if ctx.op_type == "Softmax" else "log_softmax"
    x = ctx.x()
    if ctx.opset < 13:  # softmax over the flattened axis..end
        axis = normalize_axis(int(ctx.attr("axis", 1)), x.type.rank)
        if axis == x.type.rank - 1:
            return [ctx.one(op, x, axis=axis)]
        flat = ctx.one(
            "reshape",
            x,
            shape=(dims_product(x.type.shape[:axis]), dims_product(x.type.shape[axis:])),
        )
        return [ctx.one("reshape", ctx.one(op, flat, axis=1), shape=x.type.shape)]
    return [ctx.one(op, x, axis=int(ctx.attr("axis", -1)))]


@converter("LayerNormalization")
def _layer_norm(ctx: NodeCtx) -> Outs:
    x = ctx.x()
    axis = normalize_axis(int(ctx.attr("axis", -1)), x.type.rank)
    eps = float(ctx.attr("epsilon", 1e-5))
    y = ctx.one("layer_norm", x, ctx.inp(1), ctx.inp(2), axis=axis, epsilon=eps)
    outs: Outs = [y]
    if len(ctx.node.output) > 1 and any(ctx.node.output[1:]):
        # Mean and InvStdDev outputs, from the same statistics the op uses.
        outs += list(norm_stats(ctx, x, tuple(range(axis, x.type.rank)), eps))
    return outs


def norm_stats(
    ctx: NodeCtx, x: Value, axes: tuple[int, ...], eps: float, rms: bool = False
) -> tuple[Value | None, Value]:
    """(mean, 1/sqrt(var + eps)) of ``x`` over ``axes``, kept as 1s: a normalization's
    statistics outputs. ``rms``: no mean (None), the mean square for the variance."""
    mean = None if rms else ctx.one("reduce_mean", x, axes=axes, keepdims=1)
    d = x if mean is None else ctx.one("sub", x, mean)
    var = ctx.one("reduce_mean", ctx.one("mul", d, d), axes=axes, keepdims=1)
    return mean, ctx.one("reciprocal", ctx.one("sqrt", ctx.one("add", var, ctx.scalar(eps, var))))


@converter("NegativeLogLikelihoodLoss", "SoftmaxCrossEntropyLoss")
def _nll(ctx: NodeCtx) -> Outs:
    x = ctx.x()
    ii = ctx.attr("ignore_index")
    at = {
        "reduction": ctx.attr("reduction", "mean"),
        "ignore_index": None if ii is None else int(ii),
    }
    if ctx.op_type == "NegativeLogLikelihoodLoss":
        return [ctx.one("nll_loss", x, ctx.x(1), ctx.inp(2), **at)]
    logp = ctx.one("log_softmax", x, axis=1)
    return [ctx.one("nll_loss", logp, ctx.x(1), ctx.inp(2), **at), logp]


@converter("BatchNormalization")
def _batch_norm(ctx: NodeCtx) -> Outs:
    ins = [ctx.x(i) for i in range(5)]
    eps = float(ctx.attr("epsilon", 1e-5))
    if not ctx.attr("training_mode", 0):
        return [ctx.one("batch_norm", *ins, epsilon=eps)]
    # training mode: normalized by the batch's own mean and (population) variance over every
    # axis but the channels; the running statistics come out blended by momentum
    x, scale, bias, mean, var = ins
    axes = tuple(i for i in range(x.type.rank) if i != 1)
    bmean = ctx.one("reduce_mean", x, axes=axes, keepdims=0)
    shape = (1, x.type.shape[1]) + (1,) * (x.type.rank - 2)
    dev = ctx.one("sub", x, ctx.one("reshape", bmean, shape=shape))
    bvar = ctx.one("reduce_mean", ctx.one("mul", dev, dev), axes=axes, keepdims=0)
    momentum = float(ctx.attr("momentum", 0.9))

    def blend(run: Value, batch: Value) -> Value:
        kept = ctx.one("mul", run, ctx.scalar(momentum, run, "momentum"))
        return ctx.one("add", kept, ctx.one("mul", batch, ctx.scalar(1 - momentum, batch, "rest")))

    y = ctx.one("batch_norm", x, scale, bias, bmean, bvar, epsilon=eps)
    return [y, blend(mean, bmean), blend(var, bvar)]


def auto_pads(
    ctx: NodeCtx, x: Value, kernel: tuple[int, ...], strides: tuple[int, ...], dil: tuple[int, ...]
) -> tuple[int, ...]:
    auto = ctx.attr("auto_pad", "NOTSET")
    nsp = len(kernel)
    if auto in ("NOTSET", ""):
        return tuple(ctx.attr("pads", (0,) * (2 * nsp)))
    if auto == "VALID":
        return (0,) * (2 * nsp)
    begin, end = [], []
    for i in range(nsp):
        size = x.type.shape[2 + i]
        if not isinstance(size, int):
            raise ctx.fail(f"auto_pad {auto} needs static spatial dimensions, got {size}")
        out = -(-size // strides[i])
        total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dil[i] + 1 - size)
        small = total // 2
        begin.append(small if auto == "SAME_UPPER" else total - small)
        end.append(total - begin[-1])
    return (*begin, *end)


@converter("Conv")
def _conv(ctx: NodeCtx) -> Outs:
    return [conv_value(ctx, ctx.x(0), ctx.x(1), ctx.inp(2))]


def conv_value(ctx: NodeCtx, x: Value, w: Value, bias: Value | None) -> Value:
    """The conv of ``x`` by ``w`` (+ ``bias``) under the node's Conv attributes (auto_pad,
    strides, dilations, group, kernel_shape): also QLinearConv's and ConvInteger's."""
    nsp = x.type.rank - 2
    kernel = tuple(ctx.attr("kernel_shape", ())) or tuple(w.type.shape[2:])
    strides = tuple(ctx.attr("strides", (1,) * nsp))
    dil = tuple(ctx.attr("dilations", (1,) * nsp))
    pads = auto_pads(ctx, x, kernel, strides, dil)  # type: ignore[arg-type]
    group = int(ctx.attr("group", 1))
    patches = _patch_conv(ctx, x, w, bias, kernel, strides, dil, pads, group)
    if patches is not None:
        return patches
    return ctx.one("conv", x, w, bias, strides=strides, pads=pads, dilations=dil, group=group)


# A patch embedding (kernel = stride, say 16×16/16) has one phase plane per tap in the direct
# kernel: 256 loop nests and 256 unrolled taps took 25 s to compile. Its windows do not overlap,
# so it is a space-to-depth copy and a 1×1 convolution, which compiles in well under a second.
PATCH_MIN_TAPS = 16


def _patch_conv(
    ctx: NodeCtx,
    x: Value,
    wv: Value,
    bias: Value | None,
    kernel: tuple[int, ...],
    strides: tuple[int, ...],
    dil: tuple[int, ...],
    pads: tuple[int, ...],
    group: int,
) -> Value | None:
    """A 2-D conv whose kernel equals its stride (no pads, dilation or groups, constant weights,
    static sizes the stride divides) as reshape, transpose, reshape and a 1×1 conv; else None."""
    w = wv.data
    shape = x.type.shape
    if (
        w is None
        or len(kernel) != 2
        or w.shape != (w.shape[0], shape[1], *kernel)  # else the conv op names the mismatch
        or tuple(strides) != tuple(kernel)
        or any(pads)
        or any(d != 1 for d in dil)
        or group != 1
        or kernel[0] * kernel[1] < PATCH_MIN_TAPS
        or not all(isinstance(d, int) for d in shape[1:])
        or shape[2] % kernel[0]
        or shape[3] % kernel[1]
    ):
        return None
    (n, c, h, wd), (kh, kw) = shape, kernel
    oh, ow = h // kh, wd // kw
    t = ctx.one("reshape", x, shape=(n, c, oh, kh, ow, kw))
    t = ctx.one("transpose", t, perm=(0, 1, 3, 5, 2, 4))
    t = ctx.one("reshape", t, shape=(n, c * kh * kw, oh, ow))
    m = w.shape[0]
    w1 = ctx.imp.add_const(np.ascontiguousarray(w.reshape(m, c * kh * kw, 1, 1)), f"{ctx.name}_w")
    return ctx.one(
        "conv", t, w1, bias, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), group=1
    )


@converter("MaxPool", "AveragePool")
def _pool(ctx: NodeCtx) -> Outs:
    x = ctx.x()
    kernel = tuple(ctx.attr("kernel_shape"))
    nsp = len(kernel)
    strides = tuple(ctx.attr("strides", (1,) * nsp))
    dil = tuple(ctx.attr("dilations", (1,) * nsp))
    pads = auto_pads(ctx, x, kernel, strides, dil)
    at: dict[str, Any] = {
        "kernel": kernel,
        "strides": strides,
        "pads": pads,
        "dilations": dil,
        "ceil_mode": int(ctx.attr("ceil_mode", 0)),
    }
    if ctx.op_type == "MaxPool":
        exact = ctx.imp.exact_float(x, "float32")
        if exact is not None:  # quantized integers: the max of their floats (kernels are float)
            return [ctx.quantized(ctx.one("max_pool", exact, **at), x.type.dtype)]
        y = ctx.one("max_pool", x, **at)
        if len(ctx.node.output) > 1 and ctx.node.output[1]:
            return [y, _max_pool_indices(ctx, x, y, at, bool(ctx.attr("storage_order", 0)))]
        return [y]
    at["count_include_pad"] = int(ctx.attr("count_include_pad", 0))
    return [ctx.one("avg_pool", x, **at)]


def _max_pool_indices(
    ctx: NodeCtx, x: Value, y: Value, at: dict[str, Any], column_major: bool
) -> Value:
    """MaxPool's Indices output (flat positions in x, row- or column-major spatially): for each
    kernel offset, the strided slice of x (padded with -inf) that it sees; the first offset
    whose slice equals the max names the position (the first maximum, as ONNX scans)."""
    shape, out = tuple(x.type.shape), tuple(y.type.shape)
    if not all(isinstance(d, int) for d in (*shape, *out)):
        raise ctx.fail(f"the Indices output needs static shapes, got {shape}")
    n, c, sp = shape[0], shape[1], shape[2:]
    k, s, d, pads = at["kernel"], at["strides"], at["dilations"], at["pads"]
    nsp = len(sp)
    ends = [(out[2 + i] - 1) * s[i] + d[i] * (k[i] - 1) + 1 for i in range(nsp)]
    pe = [max(0, ends[i] - pads[i] - sp[i]) for i in range(nsp)]
    xp = ctx.one(
        "pad", x, pads=(0, 0, *pads[:nsp], 0, 0, *pe), mode="constant", value=float("-inf")
    )
    order = range(nsp - 1, -1, -1) if not column_major else range(nsp)
    stride, place = 1, [0] * nsp
    for i in order:  # the flat stride of each spatial axis
        place[i], stride = stride, stride * sp[i]
    idx: Value | None = None
    for off in reversed(list(np.ndindex(*k))):
        starts = [off[i] * d[i] for i in range(nsp)]
        seen = ctx.one(
            "slice",
            xp,
            starts=tuple(starts),
            ends=tuple(st + (out[2 + i] - 1) * s[i] + 1 for i, st in enumerate(starts)),
            axes=tuple(range(2, 2 + nsp)),
            steps=tuple(s),
        )
        grids = np.meshgrid(*[np.arange(out[2 + i]) for i in range(nsp)], indexing="ij")
        flat = sum((g * s[i] - pads[i] + off[i] * d[i]) * place[i] for i, g in enumerate(grids))
        pos = ctx.imp.add_const(np.asarray(flat, np.int64)[None, None], f"{ctx.name}_at")
        idx = pos if idx is None else ctx.one("where", ctx.one("equal", seen, y), pos, idx)
    assert idx is not None
    base = (np.arange(n * c, dtype=np.int64) * int(np.prod(sp))).reshape(n, c, *[1] * nsp)
    return ctx.one("add", idx, ctx.imp.add_const(base, f"{ctx.name}_base"))


@converter("MaxUnpool")
def _max_unpool(ctx: NodeCtx) -> Outs:
    """X scattered into zeros at the flat positions I (MaxPool's Indices), [N, C, *size].
    With ``output_shape`` the indices are positions in that shape, as in onnxruntime and torch's
    ``max_unpool`` (ONNX's own test, test_maxunpool_export_with_output_shape, instead pads the
    default shape at the end)."""
    x, i = ctx.x(0), ctx.x(1)
    kernel = tuple(int(v) for v in ctx.attr("kernel_shape"))
    nsp = len(kernel)
    s = tuple(ctx.attr("strides", (1,) * nsp))
    pads = tuple(ctx.attr("pads", (0,) * (2 * nsp)))
    shape = tuple(x.type.shape)
    if not all(isinstance(v, int) for v in shape) or len(shape) != nsp + 2:
        raise ctx.fail(f"input must be [N, C, {nsp} spatial] of static sizes, got {shape}")
    if tuple(i.type.shape) != shape:
        raise ctx.fail(f"indices {tuple(i.type.shape)} differ from the input's shape {shape}")
    size = ctx.dims(2, "output_shape")
    if size is None:
        size = (
            *shape[:2],
            *[(shape[2 + a] - 1) * s[a] + kernel[a] - pads[a] - pads[nsp + a] for a in range(nsp)],
        )
    if len(size) != nsp + 2 or tuple(size[:2]) != shape[:2]:
        raise ctx.fail(f"output_shape {tuple(size)} does not fit the input {shape}")
    size = tuple(int(v) for v in size)
    zeros = ctx.imp.add_const(np.zeros(int(np.prod(size)), x.type.dtype), f"{ctx.name}_zeros")
    flat_x = ctx.one("reshape", x, shape=(int(np.prod(shape)),))
    flat_i = ctx.one("reshape", i, shape=(int(np.prod(shape)),))
    out = ctx.one("scatter_elements", zeros, flat_i, flat_x, axis=0)
    return [ctx.one("reshape", out, shape=size)]


@converter("GlobalAveragePool")
def _gap(ctx: NodeCtx) -> Outs:
    return [ctx.one("global_avg_pool", ctx.x())]


# -- reductions --------------------------------------------------------------------------------
_REDUCE = {
    "ReduceSum": ("reduce_sum", 13),
    "ReduceMean": ("reduce_mean", 18),
    "ReduceMax": ("reduce_max", 18),
    "ReduceMin": ("reduce_min", 18),
    "ReduceProd": ("reduce_prod", 18),
}


def reduce_axes_of(ctx: NodeCtx, since: int) -> tuple[tuple[int, ...] | None, int, bool]:
    """(axes or None for all, keepdims, noop): the axes are an attribute before opset ``since``
    and input 1 from it; ``noop`` when they are empty and ``noop_with_empty_axes`` is set."""
    axes = ctx.param("axes", 1, since, "axes")
    keep = int(ctx.attr("keepdims", 1))
    if not axes:
        return None, keep, bool(ctx.attr("noop_with_empty_axes", 0))
    return tuple(int(a) for a in axes), keep, False


@converter(*_REDUCE)
def _reduce(ctx: NodeCtx) -> Outs:
    op, since = _REDUCE[ctx.op_type]
    axes, keep, noop = reduce_axes_of(ctx, since)
    if noop:
        return [ctx.one("identity", ctx.x())]
    return [ctx.one(op, ctx.x(), axes=axes, keepdims=keep)]


@converter("ArgMax", "ArgMin")
def _arg(ctx: NodeCtx) -> Outs:
    return [
        ctx.one(
            ctx.op_type.lower(),
            ctx.x(),
            axis=int(ctx.attr("axis", 0)),
            keepdims=int(ctx.attr("keepdims", 1)),
            select_last_index=int(ctx.attr("select_last_index", 0)),
        )
    ]


# -- shape and data movement -------------------------------------------------------------------
def dims_product(dims: Any) -> Any:
    out: Any = 1
    for d in dims:
        out = out * d
    return as_dim(out)


def _reshape_to(ctx: NodeCtx, x: Value, shape: tuple[Any, ...]) -> Value:
    if tuple(x.type.shape) == tuple(shape):
        return ctx.one("identity", x)
    return ctx.one("reshape", x, shape=shape)


@converter("Reshape")
def _reshape(ctx: NodeCtx) -> Outs:
    x = ctx.x()
    target = ctx.dims(1, "shape")
    assert target is not None
    allowzero = int(ctx.attr("allowzero", 0))
    out: list[Any] = []
    for i, s in enumerate(target):
        out.append(x.type.shape[i] if (s == 0 and not allowzero) else s)
    if -1 in out:
        i = out.index(-1)
        rest = dims_product(out[:i] + out[i + 1 :])
        total = dims_product(x.type.shape)
        q = as_dim(sympy.simplify(sympy.sympify(total) / rest)) if rest != 0 else 0
        if isinstance(q, sympy.Basic) and not q.is_integer and q.is_number:
            raise ctx.fail(f"cannot infer -1 in shape {target} from input {x.type}")
        out[i] = q
    return [_reshape_to(ctx, x, tuple(as_dim(d) for d in out))]


@converter("Flatten")
def _flatten(ctx: NodeCtx) -> Outs:
    x = ctx.x()
    r = x.type.rank
    axis = int(ctx.attr("axis", 1))
    axis = axis + r if axis < 0 else axis
    return [
        _reshape_to(ctx, x, (dims_product(x.type.shape[:axis]), dims_product(x.type.shape[axis:])))
    ]


@converter("Squeeze")
def _squeeze(ctx: NodeCtx) -> Outs:
    x = ctx.x()
    shape = x.type.shape
    axes = ctx.param("axes", 1, 13, "axes")
    if axes is None:
        drop = {i for i, d in enumerate(shape) if d == 1}
    else:
        drop = {normalize_axis(int(a), len(shape)) for a in axes}
    return [_reshape_to(ctx, x, tuple(d for i, d in enumerate(shape) if i not in drop))]


@converter("Unsqueeze")
def _unsqueeze(ctx: NodeCtx) -> Outs:
    x = ctx.x()
    axes = ctx.param("axes", 1, 13, "axes")
    if axes is None:
        raise ctx.fail("axes are required")
    rank = x.type.rank + len(axes)
    ins = {normalize_axis(int(a), rank) for a in axes}
    rest = iter(x.type.shape)
    return [_reshape_to(ctx, x, tuple(1 if i in ins else next(rest) for i in range(rank)))]


@converter("Transpose")
def _transpose(ctx: NodeCtx) -> Outs:
    x = ctx.x()
    perm = ctx.attr("perm") or tuple(range(x.type.rank))[::-1]
    return [ctx.one("transpose", x, perm=tuple(int(p) for p in perm))]


@converter("Concat")
def _concat(ctx: NodeCtx) -> Outs:
    xs = [ctx.x(i) for i in range(ctx.n_in)]
    return [ctx.one("concat", *xs, axis=int(ctx.attr("axis")))]


@converter("Split")
def _split(ctx: NodeCtx) -> Outs:
    x = ctx.x()
    axis = normalize_axis(int(ctx.attr("axis", 0)), x.type.rank)
    sizes = ctx.param("split", 1, 13, "split")
    n = len(ctx.node.output)
    if not sizes:
        k = int(ctx.attr("num_outputs", n))
        total = x.type.shape[axis]
        if not isinstance(total, int):
            sizes = (as_dim(sympy.sympify(total) / k),) * k
        else:
            chunk = -(-total // k) if ctx.opset >= 18 else total // k
            sizes = tuple([chunk] * (k - 1) + [total - chunk * (k - 1)])
    outs = ctx.emit("split", [x], axis=axis, sizes=tuple(sizes))
    return list(outs)


@converter("Slice")
def _slice(ctx: NodeCtx) -> Outs:
    x = ctx.x()
    if ctx.opset < 10:
        starts, ends = ctx.attr("starts"), ctx.attr("ends")
        axes, steps = ctx.attr("axes") or tuple(range(len(starts))), (1,) * len(starts)
    else:
        starts, ends = ctx.dims(1, "starts"), ctx.dims(2, "ends")
        assert starts is not None
        assert ends is not None
        axes = ctx.dims(3, "axes") or tuple(range(len(starts)))
        steps = ctx.dims(4, "steps") or (1,) * len(starts)
    axes = tuple(normalize_axis(int(a), x.type.rank) for a in axes)
    return [
        ctx.one("slice", x, starts=starts, ends=ends, axes=axes, steps=tuple(int(s) for s in steps))
    ]


@converter("GatherElements")
def _gather_elements(ctx: NodeCtx) -> Outs:
    return [ctx.one("gather_elements", ctx.x(0), ctx.x(1), axis=int(ctx.attr("axis", 0)))]


@converter("Mod")
def _mod(ctx: NodeCtx) -> Outs:
    return [ctx.one("mod", ctx.x(0), ctx.x(1), fmod=int(ctx.attr("fmod", 0)))]


@converter("BitShift")
def _bit_shift(ctx: NodeCtx) -> Outs:
    way = ctx.attr("direction")
    if way not in ("LEFT", "RIGHT"):
        raise ctx.fail(f"direction must be LEFT or RIGHT, got {way!r}")
    x = ctx.x(0)
    if np.dtype(x.type.dtype).kind not in "iu":
        raise ctx.fail(f"shifts integers, got {x.type.dtype}")
    return [ctx.one("shift_left" if way == "LEFT" else "shift_right", x, ctx.x(1))]


def swish_of(ctx: NodeCtx, x: Value, default_alpha: float = 1.0) -> Value:
    """x·sigmoid(alpha·x), alpha the node's attribute (silu at alpha 1)."""
    alpha = float(ctx.attr("alpha", default_alpha))
    if alpha == 1.0:
        return ctx.one("silu", x)
    return ctx.one("mul", x, ctx.one("sigmoid", ctx.one("mul", x, ctx.scalar(alpha, x))))


@converter("Swish")
def _swish(ctx: NodeCtx) -> Outs:
    return [swish_of(ctx, ctx.x())]


@converter("SwiGLU")
def _swiglu(ctx: NodeCtx) -> Outs:
    """Swish_alpha(A)·B, A and B of one shape."""
    a, b = ctx.x(0), ctx.x(1)
    if tuple(a.type.shape) != tuple(b.type.shape):
        raise ctx.fail(f"A {tuple(a.type.shape)} and B {tuple(b.type.shape)} differ in shape")
    return [ctx.one("mul", swish_of(ctx, a), b)]


@converter("Elu", "HardSigmoid")
def _unary_with_attrs(ctx: NodeCtx) -> Outs:
    if ctx.op_type == "Elu":
        return [ctx.one("elu", ctx.x(), alpha=float(ctx.attr("alpha", 1.0)))]
    return [
        ctx.one(
            "hard_sigmoid",
            ctx.x(),
            alpha=float(ctx.attr("alpha", 0.2)),
            beta=float(ctx.attr("beta", 0.5)),
        )
    ]


@converter("Resize", "Upsample")
def _resize(ctx: NodeCtx) -> Outs:
    """Resize (opset 10 on) and Upsample: output sizes from ``sizes`` (with a keep-aspect-ratio
    policy: one scale, sizes rounded half up) or floor(input · scales). Nearest and linear are
    the resize op; cubic and antialiased linear are products with weight matrices. The scales
    (given, or output / input sizes) feed the coordinate transform."""
    x = ctx.x()
    rank = x.type.rank
    policy = "stretch"
    if ctx.op_type == "Upsample" or ctx.opset < 11:
        scales_in, sizes_in = ctx.const(1), None
        mode = str(ctx.attr("mode", "nearest"))
        coord, nearest = "asymmetric", "floor"
        if scales_in is None:
            scales_in = np.asarray(ctx.attr("scales", ()), np.float32)
    else:
        scales_in = ctx.const(2) if ctx.has(2) else None
        sizes_in = ctx.dims(3, "sizes") if ctx.has(3) else None
        mode = str(ctx.attr("mode", "nearest"))
        coord = str(ctx.attr("coordinate_transformation_mode", "half_pixel"))
        nearest = str(ctx.attr("nearest_mode", "round_prefer_floor"))
        policy = str(ctx.attr("keep_aspect_ratio_policy", "stretch"))
        if policy not in ("stretch", "not_larger", "not_smaller"):
            raise ctx.fail(f"keep_aspect_ratio_policy '{policy}' is not an ONNX policy")
    if mode in ("bilinear", "trilinear"):
        mode = "linear"
    axes = tuple(normalize_axis(int(a), rank) for a in (ctx.attr("axes") or range(rank)))
    shape = list(x.type.shape)
    scales = [1.0] * rank
    if sizes_in is not None and len(sizes_in):
        if len(sizes_in) != len(axes):
            raise ctx.fail(f"sizes has {len(sizes_in)} entries for {len(axes)} axes")
        for a, n in zip(axes, sizes_in, strict=True):
            if not isinstance(shape[a], int) or not isinstance(n, int):
                raise ctx.fail(
                    f"axis {a}: resizing {shape[a]} to {n} needs both sizes known "
                    "at import (static)"
                )
            if shape[a] == 0 and n:
                raise ctx.fail(f"axis {a} is empty: it cannot be resized to {n}")
            shape[a], scales[a] = n, float(n) / shape[a] if shape[a] else 1.0
        if policy != "stretch":
            # one scale for the axes (the least or the greatest), sizes rounded half up
            pick = min if policy == "not_larger" else max
            common = pick(scales[a] for a in axes)
            for a in axes:
                shape[a] = int(common * x.type.shape[a] + 0.5)
                scales[a] = common
    elif scales_in is not None and np.asarray(scales_in).size:
        sc = np.asarray(scales_in, np.float32).ravel()
        if len(sc) != len(axes):
            raise ctx.fail(f"scales has {len(sc)} entries for {len(axes)} axes")
        for a, s in zip(axes, sc.tolist(), strict=True):
            if not (np.isfinite(s) and s > 0):
                raise ctx.fail(f"scale {s} of axis {a} is not a positive number")
            if s != 1.0:
                if not isinstance(shape[a], int):
                    raise ctx.fail(
                        f"axis {a} is symbolic ({shape[a]}): resizing it needs a static size"
                    )
                shape[a] = int(np.floor(shape[a] * s))
            scales[a] = float(s)
    else:
        raise ctx.fail("one of scales and sizes must be given (a constant)")
    crop = coord == "tf_crop_and_resize"
    if mode == "cubic" or crop or (mode == "linear" and int(ctx.attr("antialias", 0))):
        return [_resize_by_matrices(ctx, x, shape, scales, mode, coord, axes)]
    return [
        ctx.one(
            "resize",
            x,
            sizes=tuple(shape),
            scales=tuple(scales),
            mode=mode,
            coordinate_transformation_mode=coord,
            nearest_mode=nearest,
        )
    ]


def _resize_by_matrices(
    ctx: NodeCtx,
    x: Value,
    shape: list[Any],
    scales: list[float],
    mode: str,
    coord: str,
    axes: tuple[int, ...],
) -> Value:
    """Cubic, antialiased and tf_crop_and_resize resizes: each resized axis a product with its
    constant [n_in, n_out] weight matrix (``resize_matrix``: ONNX's taps, edge clamping,
    ``exclude_outside``), the axis moved last for it; the products run in the GEMM kernel. A
    crop's outputs outside the input get ``extrapolation_value`` (added where the matrix has no
    weights)."""
    if not x.type.dtype.startswith("float"):
        raise ctx.fail(f"{mode} resizing needs a float input, got {x.type.dtype}")
    rois: dict[int, tuple[float, float]] = {}
    if coord == "tf_crop_and_resize":
        if mode == "nearest":
            raise ctx.fail("tf_crop_and_resize with nearest is not supported (linear, cubic)")
        roi = ctx.const(1) if ctx.has(1) else None
        if roi is None or np.asarray(roi).size != 2 * len(axes):
            raise ctx.fail(f"tf_crop_and_resize needs roi: a start and an end for {len(axes)} axes")
        r = np.asarray(roi, np.float64).ravel()
        rois = {a: (float(r[i]), float(r[i + len(axes)])) for i, a in enumerate(axes)}
    elif coord not in RESIZE_COORDS:
        raise ctx.fail(f"coordinate_transformation_mode {coord} is not supported")
    fill = float(ctx.attr("extrapolation_value", 0.0))
    at = {
        "mode": mode,
        "coordinate_transformation_mode": coord,
        "cubic_coeff_a": float(ctx.attr("cubic_coeff_a", -0.75)),
        "exclude_outside": int(ctx.attr("exclude_outside", 0)),
        "antialias": int(ctx.attr("antialias", 0)),
        "sizes": tuple(shape),
        "scales": tuple(scales),
    }
    y, rank = x, x.type.rank
    moved = set(resized_axes(tuple(x.type.shape), at))
    moved |= {a for a, lohi in rois.items() if lohi != (0.0, 1.0)}
    for ax in sorted(moved):
        n_in = x.type.shape[ax]
        if not isinstance(n_in, int):
            raise ctx.fail(f"axis {ax} is symbolic ({n_in}): resizing it needs a static size")
        m, outside = resize_matrix(n_in, int(shape[ax]), scales[ax], at, rois.get(ax))
        w = ctx.imp.add_const(np.ascontiguousarray(m.T.astype(x.type.dtype)), f"{ctx.name}_w{ax}")
        perm = (*[i for i in range(rank) if i != ax], ax)
        t = y if ax == rank - 1 else ctx.one("transpose", y, perm=perm)
        t = ctx.one("matmul", t, w)
        if outside is not None and outside.any() and fill != 0.0:
            edge = np.where(outside, fill, 0.0).astype(x.type.dtype)
            t = ctx.one("add", t, ctx.imp.add_const(edge, f"{ctx.name}_fill{ax}"))
        if ax != rank - 1:
            t = ctx.one("transpose", t, perm=tuple(perm.index(i) for i in range(rank)))
        y = t
    return y


@converter("GatherND")
def _gather_nd(ctx: NodeCtx) -> Outs:
    return [ctx.one("gather_nd", ctx.x(0), ctx.x(1), batch_dims=int(ctx.attr("batch_dims", 0)))]


@converter("ScatterND", "ScatterElements", "Scatter")
def _scatter(ctx: NodeCtx) -> Outs:
    red = str(ctx.attr("reduction", "none"))
    if ctx.op_type == "ScatterND":
        return [ctx.one("scatter_nd", ctx.x(0), ctx.x(1), ctx.x(2), reduction=red)]
    return [
        ctx.one(
            "scatter_elements",
            ctx.x(0),
            ctx.x(1),
            ctx.x(2),
            axis=int(ctx.attr("axis", 0)),
            reduction=red,
        )
    ]


@converter("TopK")
def _topk(ctx: NodeCtx) -> Outs:
    k = ctx.dims(1, "k") if ctx.opset >= 10 else (ctx.attr("k"),)
    if k is None or len(k) != 1 or not isinstance(k[0], (int, sympy.Basic)):
        raise ctx.fail("k must be one integer, or a size computed from shapes, known at import")
    return ctx.emit(
        "topk",
        [ctx.x()],
        k=k[0],
        axis=int(ctx.attr("axis", -1)),
        largest=int(ctx.attr("largest", 1)),
        sorted=int(ctx.attr("sorted", 1)),
    )


@converter("OneHot")
def _one_hot(ctx: NodeCtx) -> Outs:
    depth = ctx.const(1)
    if depth is None or np.asarray(depth).size != 1:
        raise ctx.fail("depth (input 1) must be one number known at import")
    return [
        ctx.one(
            "one_hot",
            ctx.x(0),
            ctx.x(2),
            depth=int(np.asarray(depth).item()),
            axis=int(ctx.attr("axis", -1)),
        )
    ]


_RNN_DEFAULT_ACTS = {
    "RNN": ("tanh",),
    "GRU": ("sigmoid", "tanh"),
    "LSTM": ("sigmoid", "tanh", "tanh"),
}


@converter("RNN", "GRU", "LSTM")
def _rnn(ctx: NodeCtx) -> Outs:
    """The recurrent layers as the ``rnn`` op (default activations only)."""
    acts = ctx.attr("activations")
    if acts is not None:
        want = _RNN_DEFAULT_ACTS[ctx.op_type]
        given = tuple(str(a.decode() if isinstance(a, bytes) else a).lower() for a in acts)
        if given not in (want, want * 2):
            raise ctx.fail(
                f"activations {list(given)} are not supported (only the defaults {list(want)})"
            )
    if int(ctx.attr("input_forget", 0)):
        raise ctx.fail("input_forget=1 is not supported")
    r = ctx.x(2)
    hidden = int(ctx.attr("hidden_size", r.type.shape[-1]))
    clip = ctx.attr("clip")
    ins = [ctx.inp(i) for i in range(min(ctx.n_in, 8))]
    return ctx.emit(
        "rnn",
        ins,
        cell=ctx.op_type.lower(),
        hidden_size=hidden,
        direction=str(ctx.attr("direction", "forward")),
        layout=int(ctx.attr("layout", 0)),
        clip=None if clip is None else float(clip),
        linear_before_reset=int(ctx.attr("linear_before_reset", 0)),
    )


@converter("CumSum", "CumProd")
def _cumsum(ctx: NodeCtx) -> Outs:
    axis = ctx.dims(1, "axis")
    if axis is None or len(axis) != 1:
        raise ctx.fail("axis (input 1) must be one integer")
    return [
        ctx.one(
            "cumsum" if ctx.op_type == "CumSum" else "cumprod",
            ctx.x(),
            axis=int(axis[0]),
            exclusive=int(ctx.attr("exclusive", 0)),
            reverse=int(ctx.attr("reverse", 0)),
        )
    ]


@converter("Trilu")
def _trilu(ctx: NodeCtx) -> Outs:
    k = ctx.dims(1, "k") if ctx.has(1) else (0,)
    assert k is not None
    x, upper = ctx.x(), int(ctx.attr("upper", 1))
    if isinstance(k[0], int):
        return [ctx.one("trilu", x, upper=upper, k=k[0])]
    # A symbolic diagonal (a decoder's past length): keep x where col - row >= k (<= k for the
    # lower triangle), from ranges that are constants once the sizes are bound.
    if x.type.rank < 2:
        raise ctx.fail("the input must have at least 2 dimensions")
    rows, cols = x.type.shape[-2:]
    r = ctx.one("arange", bounds=(0, rows), delta=1, dtype="int64")
    c = ctx.one("arange", bounds=(0, cols), delta=1, dtype="int64")
    diag = ctx.one("arange", bounds=(k[0], k[0] + 1), delta=1, dtype="int64")
    off = ctx.one(
        "sub", ctx.one("reshape", c, shape=(1, cols)), ctx.one("reshape", r, shape=(rows, 1))
    )
    keep = ctx.one("greater_equal" if upper else "less_equal", off, diag)
    return [ctx.one("where", keep, x, ctx.scalar(0, x))]


@converter("Gather")
def _gather(ctx: NodeCtx) -> Outs:
    return [ctx.one("gather", ctx.x(0), ctx.x(1), axis=int(ctx.attr("axis", 0)))]


@converter("Where")
def _where(ctx: NodeCtx) -> Outs:
    return [ctx.one("where", ctx.x(0), ctx.x(1), ctx.x(2))]


@converter("Expand")
def _expand(ctx: NodeCtx) -> Outs:
    shape = ctx.dims(1, "shape")
    return [ctx.one("expand", ctx.x(), shape=shape)]


@converter("Tile")
def _tile(ctx: NodeCtx) -> Outs:
    reps = ctx.dims(1, "repeats")
    assert reps is not None
    return [ctx.one("tile", ctx.x(), repeats=tuple(int(r) for r in reps))]


@converter("Pad")
def _pad(ctx: NodeCtx) -> Outs:
    x = ctx.x()
    if ctx.opset < 11:
        return [
            ctx.one(
                "pad",
                x,
                pads=tuple(ctx.attr("pads")),
                mode=ctx.attr("mode", "constant"),
                value=float(ctx.attr("value", 0.0)),
            )
        ]
    pads = ctx.dims(1, "pads")
    assert pads is not None
    r = x.type.rank
    axes = ctx.dims(3, "axes")
    if axes is not None:
        full = [0] * (2 * r)
        for j, a in enumerate(axes):
            a = normalize_axis(int(a), r)
            full[a], full[r + a] = int(pads[j]), int(pads[len(axes) + j])
        pads = tuple(full)
    value = ctx.const(2)
    mode = ctx.attr("mode", "constant")
    return [
        ctx.one(
            "pad",
            x,
            pads=tuple(int(p) for p in pads),
            mode=mode,
            value=float(value.ravel()[0]) if value is not None and value.size else 0.0,
        )
    ]


@converter("Shape")
def _shape(ctx: NodeCtx) -> Outs:
    end = ctx.attr("end")
    return [
        ctx.one(
            "shape_of",
            ctx.x(),
            start=int(ctx.attr("start", 0)),
            end=None if end is None else int(end),
        )
    ]


@converter("Size")
def _size(ctx: NodeCtx) -> Outs:
    x = ctx.x()
    n = dims_product(x.type.shape)
    if isinstance(n, int):
        v = ctx.imp.add_const(np.asarray(n, dtype=np.int64), ctx.node.output[0])
        ctx.created.add(id(v))
        return [v]
    return [ctx.one("reduce_prod", ctx.one("shape_of", x), axes=None, keepdims=0)]


@converter("ConstantOfShape")
def _constant_of_shape(ctx: NodeCtx) -> Outs:
    shape = ctx.dims(0, "shape")
    t = ctx.attrs.get("value")
    arr = ctx.imp.tensor_array(t) if t is not None else np.zeros(1, np.float32)
    value = arr.ravel()[0].item() if arr.size else 0.0
    return [ctx.one("constant_of_shape", shape=shape, value=float(value), dtype=arr.dtype.name)]


@converter("Range")
def _range(ctx: NodeCtx) -> Outs:
    """A constant when its three scalars are; an ``arange`` node when start or limit is an
    integer known only symbolically (torch's ``arange(x.shape[1])`` with a dynamic length)."""
    vals: list[Any] = []
    for i, what in enumerate(("start", "limit", "delta")):
        k = ctx.known(i)
        if k is None:
            k = ctx.const(i)
        if k is None or k.size != 1:
            raise ctx.fail(f"{what} (input {i}) must be one number")
        vals.append(k.ravel()[0])
    dtype = ctx.x(0).type.dtype
    start, limit, delta = vals
    if all(isinstance(v, (int, float, np.number)) for v in vals):
        if delta == 0:
            raise ctx.fail("delta must not be 0")
        arr = np.arange(start, limit, delta).astype(dtype)
        v = ctx.imp.add_const(arr, ctx.node.output[0])
        ctx.created.add(id(v))
        return [v]
    bounds = [_integral(ctx, v, what) for v, what in ((start, "start"), (limit, "limit"))]
    step = _integral(ctx, delta, "delta")
    if not isinstance(step, int) or step == 0:
        raise ctx.fail("delta must be a nonzero number known at import")
    return [ctx.one("arange", bounds=tuple(bounds), delta=step, dtype=dtype)]


def _integral(ctx: NodeCtx, v: Any, what: str) -> Any:
    """``v`` (a number or a symbolic dim) as an int or sympy integer; ModelError otherwise."""
    if isinstance(v, sympy.Basic):
        return as_dim(v)
    f = float(v)
    if not f.is_integer():
        raise ctx.fail(f"{what} {f} is not an integer, which a range of symbolic length needs")
    return int(f)


# -- satura's own domain (written by onnx_export) -----------------------------------------------
def _dim(node: ast.AST, ctx: NodeCtx) -> Any:
    """A dimension expression (ints, symbols, + - * / floor) read without eval."""
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return node.value
    if isinstance(node, ast.Name):
        return ctx.imp.symbol(node.id)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_dim(node.operand, ctx)
    if isinstance(node, ast.BinOp):
        a, b = _dim(node.left, ctx), _dim(node.right, ctx)
        ops = {
            ast.Add: lambda: a + b,
            ast.Sub: lambda: a - b,
            ast.Mult: lambda: a * b,
            ast.Div: lambda: sympy.sympify(a) / b,
            ast.FloorDiv: lambda: sympy.floor(sympy.sympify(a) / b),
        }
        if type(node.op) in ops:
            return ops[type(node.op)]()
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "floor"
        and len(node.args) == 1
    ):
        return sympy.floor(_dim(node.args[0], ctx))
    raise ctx.fail(f"cannot read dimension expression {ast.unparse(node)!r}")


def _decode(ctx: NodeCtx, kind: str, v: Any) -> Any:
    if isinstance(v, list):
        v = tuple(v)
    if not isinstance(v, str) or kind == "str" or kind == "dtype":
        return v
    if v == "None":
        return None
    if kind in ("expr", "ints", "floats"):
        return ast.literal_eval(v)
    if kind == "dims":
        parts = ast.literal_eval(v)
        return tuple(
            as_dim(_dim(ast.parse(p, mode="eval").body, ctx)) if isinstance(p, str) else p
            for p in parts
        )
    return as_dim(_dim(ast.parse(v, mode="eval").body, ctx))


def satura_op(ctx: NodeCtx) -> Outs:
    """A node of the ai.satura domain: a satura op written by onnx_export."""
    name = "".join("_" + c.lower() if c.isupper() else c for c in ctx.op_type).lstrip("_")
    try:
        info = get_op(name)
    except Exception:
        raise ctx.fail(f"unknown satura op '{ctx.op_type}'") from None
    attrs = {}
    for k, v in ctx.attrs.items():
        spec = info.attrs.get(k)
        if spec is None:
            raise ctx.fail(f"unknown attribute '{k}' of {name}")
        attrs[k] = _decode(ctx, spec.kind, v.decode() if isinstance(v, bytes) else v)
    return list(ctx.emit(name, [ctx.inp(i) for i in range(ctx.n_in)], **attrs))


# the ONNX ops that import as compositions of satura ops (opset 23's transformer ops and the
# quantization ops among them) register themselves
from satura.engine import (  # noqa: E402,F401
    onnx_composites,
    onnx_contrib,
    onnx_control,
    onnx_quant,
    onnx_signal,
    onnx_transformer,
)
