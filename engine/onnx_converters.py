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
    # Dropout's training_mode is input 2 (opset 12 on); it must be a constant false
    if ctx.op_type == "Dropout" and ctx.has(2) and bool(np.asarray(ctx.const(2)).any()):
        raise ctx.fail("training_mode=true is not supported (inference only)")
    return [ctx.one("identity", ctx.x())]


@converter("Gelu")
def _gelu(ctx: NodeCtx) -> Outs:
    return [ctx.one("gelu", ctx.x(), approximate=ctx.attr("approximate", "none"))]


@converter("LeakyRelu")
def _leaky(ctx: NodeCtx) -> Outs:
    return [ctx.one("leaky_relu", ctx.x(), alpha=float(ctx.attr("alpha", 0.01)))]


@converter("Cast")
def _cast(ctx: NodeCtx) -> Outs:
    to = onnx_dtype(int(ctx.attr("to")), f"node '{ctx.name}' (Cast)")
    return [ctx.one("cast", ctx.x(), to=to)]


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
    return [ctx.one("clip", x, lo, hi) if hi is not None else
            (ctx.one("clip", x, lo) if lo is not None else ctx.one("identity", x))]


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
    return [ctx.one("gemm", ctx.x(0), ctx.x(1), ctx.inp(2),
                    trans_a=int(ctx.attr("transA", 0)), trans_b=int(ctx.attr("transB", 0)),
                    alpha=float(ctx.attr("alpha", 1.0)), beta=float(ctx.attr("beta", 1.0)))]


# -- nn ----------------------------------------------------------------------------------------
@converter("Softmax", "LogSoftmax")
def _softmax(ctx: NodeCtx) -> Outs:
    op = "softmax" if ctx.op_type == "Softmax" else "log_softmax"
    x = ctx.x()
    if ctx.opset < 13:  # softmax over the flattened axis..end
        axis = normalize_axis(int(ctx.attr("axis", 1)), x.type.rank)
        if axis == x.type.rank - 1:
            return [ctx.one(op, x, axis=axis)]
        flat = ctx.one("reshape", x, shape=(_prod(x.type.shape[:axis]),
                                            _prod(x.type.shape[axis:])))
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
        axes = tuple(range(axis, x.type.rank))
        mean = ctx.one("reduce_mean", x, axes=axes, keepdims=1)
        d = ctx.one("sub", x, mean)
        var = ctx.one("reduce_mean", ctx.one("mul", d, d), axes=axes, keepdims=1)
        inv = ctx.one("reciprocal", ctx.one("sqrt", ctx.one("add", var, ctx.scalar(eps, var))))
        outs += [mean, inv]
    return outs


@converter("NegativeLogLikelihoodLoss", "SoftmaxCrossEntropyLoss")
def _nll(ctx: NodeCtx) -> Outs:
    x = ctx.x()
    ii = ctx.attr("ignore_index")
    at = {"reduction": ctx.attr("reduction", "mean"),
          "ignore_index": None if ii is None else int(ii)}
    if ctx.op_type == "NegativeLogLikelihoodLoss":
        return [ctx.one("nll_loss", x, ctx.x(1), ctx.inp(2), **at)]
    logp = ctx.one("log_softmax", x, axis=1)
    return [ctx.one("nll_loss", logp, ctx.x(1), ctx.inp(2), **at), logp]


@converter("BatchNormalization")
def _batch_norm(ctx: NodeCtx) -> Outs:
    if ctx.attr("training_mode", 0):
        raise ctx.fail("training_mode=1 is not supported (inference only)")
    ins = [ctx.x(i) for i in range(5)]
    return [ctx.one("batch_norm", *ins, epsilon=float(ctx.attr("epsilon", 1e-5)))]


def _auto_pads(ctx: NodeCtx, x: Value, kernel: tuple[int, ...], strides: tuple[int, ...],
               dil: tuple[int, ...]) -> tuple[int, ...]:
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
    x, w = ctx.x(0), ctx.x(1)
    nsp = x.type.rank - 2
    kernel = tuple(ctx.attr("kernel_shape", ())) or tuple(w.type.shape[2:])
    strides = tuple(ctx.attr("strides", (1,) * nsp))
    dil = tuple(ctx.attr("dilations", (1,) * nsp))
    pads = _auto_pads(ctx, x, kernel, strides, dil)  # type: ignore[arg-type]
    return [ctx.one("conv", x, w, ctx.inp(2), strides=strides, pads=pads, dilations=dil,
                    group=int(ctx.attr("group", 1)))]


@converter("ConvTranspose")
def _conv_transpose(ctx: NodeCtx) -> Outs:
    """A convolution of the input spread out by the strides (stride - 1 zeros between inputs:
    reshape, pad, reshape, slice) with the weights flipped and their channel axes swapped, so it
    runs on the conv kernels. The weights must be a constant."""
    x, wv = ctx.x(0), ctx.x(1)
    w = ctx.const(1)
    if w is None:
        raise ctx.fail("weights (input 1) must be a constant")
    nsp = x.type.rank - 2
    if nsp < 1 or w.ndim != nsp + 2:
        raise ctx.fail(f"input rank {x.type.rank} and weight rank {w.ndim} do not fit")
    g = int(ctx.attr("group", 1))
    if g < 1 or w.shape[0] % g:
        raise ctx.fail(f"group {g} does not divide the weights' {w.shape[0]} input channels")
    k = tuple(w.shape[2:])
    if tuple(ctx.attr("kernel_shape", k)) != k:
        raise ctx.fail(f"kernel_shape {tuple(ctx.attr('kernel_shape'))} differs from the "
                       f"weights' spatial shape {k}")
    s = tuple(ctx.attr("strides", (1,) * nsp))
    d = tuple(ctx.attr("dilations", (1,) * nsp))
    op = tuple(ctx.attr("output_padding", (0,) * nsp))
    sp = x.type.shape[2:]
    if not all(isinstance(n, int) for n in sp):
        raise ctx.fail(f"spatial dimensions must be static, got {tuple(sp)}")
    full = [s[i] * (sp[i] - 1) + op[i] + (k[i] - 1) * d[i] + 1 for i in range(nsp)]
    auto = ctx.attr("auto_pad", "NOTSET")
    if ctx.attr("output_shape") is not None:  # pads follow from the requested output size
        want = tuple(ctx.attr("output_shape"))[-nsp:]
        total = [full[i] - want[i] for i in range(nsp)]
        upper = auto == "SAME_UPPER"
        pads = tuple([t // 2 if upper else t - t // 2 for t in total]
                     + [t - t // 2 if upper else t // 2 for t in total])
    elif auto in ("SAME_UPPER", "SAME_LOWER"):
        total = [full[i] - sp[i] * s[i] for i in range(nsp)]
        small = [t // 2 for t in total]
        begin = small if auto == "SAME_UPPER" else [t - b for t, b in
                                                    zip(total, small, strict=True)]
        pads = tuple(begin + [t - b for t, b in zip(total, begin, strict=True)])
    else:
        pads = tuple(ctx.attr("pads", (0,) * (2 * nsp))) if auto != "VALID" else (0,) * (2 * nsp)
    n, c = x.type.shape[:2]
    # spread: [N, C, a, 1, b, 1] -> pad the 1s to the stride -> [N, C, a·s, b·t] -> drop the tail
    y = x
    if any(st > 1 for st in s):
        inter: list[Any] = [n, c]
        for a in sp:
            inter += [a, 1]
        y = ctx.one("reshape", y, shape=tuple(inter))
        pad_end = [0, 0] + [v for st in s for v in (0, st - 1)]
        y = ctx.one("pad", y, pads=(0,) * len(pad_end) + tuple(pad_end), mode="constant",
                    value=0.0)
        y = ctx.one("reshape", y, shape=(n, c, *[a * st for a, st in zip(sp, s, strict=True)]))
        y = ctx.one("slice", y, starts=(0,) * nsp,
                    ends=tuple(st * (a - 1) + 1 for a, st in zip(sp, s, strict=True)),
                    axes=tuple(range(2, 2 + nsp)), steps=(1,) * nsp)
    begin = [(k[i] - 1) * d[i] - pads[i] for i in range(nsp)]
    end = [(k[i] - 1) * d[i] - pads[nsp + i] + op[i] for i in range(nsp)]
    if any(v < 0 for v in begin + end):  # pads past the kernel's reach crop the input
        cur = [st * (a - 1) + 1 for a, st in zip(sp, s, strict=True)]
        y = ctx.one("slice", y, starts=tuple(max(0, -b) for b in begin),
                    ends=tuple(cur[i] - max(0, -end[i]) for i in range(nsp)),
                    axes=tuple(range(2, 2 + nsp)), steps=(1,) * nsp)
        begin, end = [max(0, b) for b in begin], [max(0, e) for e in end]
    cin, coutg = w.shape[0], w.shape[1]
    wt = w.reshape(g, cin // g, coutg, *w.shape[2:]).swapaxes(1, 2)
    wt = np.flip(wt.reshape(g * coutg, cin // g, *w.shape[2:]), tuple(range(2, 2 + nsp)))
    wc = ctx.imp.add_const(np.ascontiguousarray(wt), f"{ctx.name}_w")
    del wv
    return [ctx.one("conv", y, wc, ctx.inp(2), strides=(1,) * nsp, pads=tuple(begin + end),
                    dilations=d, group=g)]


@converter("MaxPool", "AveragePool")
def _pool(ctx: NodeCtx) -> Outs:
    x = ctx.x()
    kernel = tuple(ctx.attr("kernel_shape"))
    nsp = len(kernel)
    strides = tuple(ctx.attr("strides", (1,) * nsp))
    dil = tuple(ctx.attr("dilations", (1,) * nsp))
    pads = _auto_pads(ctx, x, kernel, strides, dil)
    at: dict[str, Any] = {"kernel": kernel, "strides": strides, "pads": pads,
                          "dilations": dil, "ceil_mode": int(ctx.attr("ceil_mode", 0))}
    if ctx.op_type == "MaxPool":
        if ctx.attr("storage_order", 0):
            raise ctx.fail("storage_order=1 is not supported")
        return [ctx.one("max_pool", x, **at)]
    at["count_include_pad"] = int(ctx.attr("count_include_pad", 0))
    return [ctx.one("avg_pool", x, **at)]


@converter("GlobalAveragePool")
def _gap(ctx: NodeCtx) -> Outs:
    return [ctx.one("global_avg_pool", ctx.x())]


# -- reductions --------------------------------------------------------------------------------
_REDUCE = {"ReduceSum": ("reduce_sum", 13), "ReduceMean": ("reduce_mean", 18),
           "ReduceMax": ("reduce_max", 18), "ReduceMin": ("reduce_min", 18),
           "ReduceProd": ("reduce_prod", 18)}


def _reduce_axes(ctx: NodeCtx, since: int) -> tuple[tuple[int, ...] | None, int, bool]:
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
    axes, keep, noop = _reduce_axes(ctx, since)
    if noop:
        return [ctx.one("identity", ctx.x())]
    return [ctx.one(op, ctx.x(), axes=axes, keepdims=keep)]


@converter("ReduceL1", "ReduceL2", "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp")
def _reduce_composite(ctx: NodeCtx) -> Outs:
    """The other reductions, from reduce_sum/reduce_max and elementwise ops. With empty axes and
    ``noop_with_empty_axes`` only the elementwise part applies (as the ONNX reference does)."""
    x = ctx.x()
    axes, keep, noop = _reduce_axes(ctx, 18)
    op = ctx.op_type

    def total(v: Value) -> Value:
        return v if noop else ctx.one("reduce_sum", v, axes=axes, keepdims=keep)

    if op == "ReduceL1":
        return [total(ctx.one("abs", x))]
    if op == "ReduceSumSquare":
        return [total(ctx.one("mul", x, x))]
    if op == "ReduceL2":
        return [ctx.one("sqrt", total(ctx.one("mul", x, x)))]
    if op == "ReduceLogSum":
        return [ctx.one("log", total(x))]
    if noop:  # log(exp(x))
        return [ctx.one("identity", x)]
    # log(sum(exp(x - m))) + m with m the max over the axes: no overflow for large x. An
    # infinite max counts as 0 (inf - inf would be NaN): an all -inf slice gives -inf, one
    # holding +inf gives inf, as onnxruntime (and scipy's logsumexp) do.
    m = ctx.one("reduce_max", x, axes=axes, keepdims=1)
    inf = ctx.one("equal", ctx.one("abs", m), ctx.scalar(np.inf, x, "inf"))
    m = ctx.one("where", inf, ctx.scalar(0.0, x, "zero"), m)
    s = ctx.one("reduce_sum", ctx.one("exp", ctx.one("sub", x, m)), axes=axes, keepdims=keep)
    mk = m if keep else ctx.one("reshape", m, shape=s.type.shape)
    return [ctx.one("add", ctx.one("log", s), mk)]


@converter("GlobalMaxPool")
def _global_max_pool(ctx: NodeCtx) -> Outs:
    x = ctx.x()
    return [ctx.one("reduce_max", x, axes=tuple(range(2, x.type.rank)), keepdims=1)]


@converter("ArgMax", "ArgMin")
def _arg(ctx: NodeCtx) -> Outs:
    return [ctx.one(ctx.op_type.lower(), ctx.x(), axis=int(ctx.attr("axis", 0)),
                    keepdims=int(ctx.attr("keepdims", 1)),
                    select_last_index=int(ctx.attr("select_last_index", 0)))]


# -- shape and data movement -------------------------------------------------------------------
def _prod(dims: Any) -> Any:
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
        rest = _prod(out[:i] + out[i + 1:])
        total = _prod(x.type.shape)
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
    return [_reshape_to(ctx, x, (_prod(x.type.shape[:axis]), _prod(x.type.shape[axis:])))]


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


@converter("DepthToSpace", "SpaceToDepth")
def _depth_space(ctx: NodeCtx) -> Outs:
    """As reshape, transpose, reshape (the ONNX definition; each is a view or a compiled copy)."""
    x = ctx.x()
    if x.type.rank != 4:
        raise ctx.fail(f"input must be 4-D (N, C, H, W), got rank {x.type.rank}")
    b = int(ctx.attr("blocksize"))
    n, c, h, w = x.type.shape
    if ctx.op_type == "SpaceToDepth":
        t = ctx.one("reshape", x, shape=(n, c, as_dim(h // b), b, as_dim(w // b), b))
        crd = ctx.attr("mode", "DCR") == "CRD"
        t = ctx.one("transpose", t, perm=(0, 1, 3, 5, 2, 4) if crd else (0, 3, 5, 1, 2, 4))
        return [ctx.one("reshape", t, shape=(n, as_dim(c * b * b), as_dim(h // b),
                                             as_dim(w // b)))]
    cb = as_dim(c // (b * b))
    if ctx.attr("mode", "DCR") == "DCR":
        t, perm = ctx.one("reshape", x, shape=(n, b, b, cb, h, w)), (0, 3, 4, 1, 5, 2)
    else:  # CRD
        t, perm = ctx.one("reshape", x, shape=(n, cb, b, b, h, w)), (0, 1, 4, 2, 5, 3)
    t = ctx.one("transpose", t, perm=perm)
    return [ctx.one("reshape", t, shape=(n, cb, as_dim(h * b), as_dim(w * b)))]


def _einsum_terms(ctx: NodeCtx, eq: str, ranks: list[int]) -> tuple[list[str], str]:
    """The operands' and the output's index letters, each ``...`` spelled out as digits (aligned
    from the right, as numpy broadcasts them)."""
    lhs, arrow, out = eq.replace(" ", "").partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ranks):
        raise ctx.fail(f"equation '{eq}' has {len(terms)} operands, the node {len(ranks)}")
    ell_rank = 0
    for i, (t, r) in enumerate(zip(terms, ranks, strict=True)):
        named = len(t) - (3 if "..." in t else 0)
        if ("..." in t and named > r) or ("..." not in t and named != r):
            raise ctx.fail(f"operand {i} has rank {r}; '{t}' does not fit it")
        if "..." in t:
            ell_rank = max(ell_rank, r - named)
    ell = "0123456789"[:ell_rank]
    terms = [t.replace("...", ell[ell_rank - (r - len(t) + 3):]) if "..." in t else t
             for t, r in zip(terms, ranks, strict=True)]
    if arrow:
        out = out.replace("...", ell)
    else:  # implicit output: the ellipsis, then the letters used once, alphabetically
        joined = "".join(terms)
        out = ell + "".join(sorted(ch for ch in set(joined)
                                   if joined.count(ch) == 1 and ch not in ell))
    for t in terms:
        if len(set(t)) != len(t):
            raise ctx.fail(f"equation '{eq}': an index repeated within one operand (a diagonal) "
                           "is not supported")
    if len(set(out)) != len(out):
        raise ctx.fail(f"equation '{eq}': an index repeated in the output (a diagonal) is not "
                       "supported")
    missing = sorted(set(out) - set("".join(terms)))
    if missing:
        raise ctx.fail(f"equation '{eq}': output index '{missing[0]}' is in no operand")
    return terms, out


@converter("Einsum")
def _einsum(ctx: NodeCtx) -> Outs:
    """One or two operands without diagonals, as reduce_sum, transpose, reshape and one (batched)
    matmul: batch letters (in both operands and the output), contracted letters (in both, not the
    output), and letters of one operand (summed away first when not in the output)."""
    xs = [ctx.x(i) for i in range(ctx.n_in)]
    if len(xs) not in (1, 2):
        raise ctx.fail(f"{len(xs)} operands: only one or two are supported")
    terms, out = _einsum_terms(ctx, str(ctx.attr("equation")), [x.type.rank for x in xs])
    size: dict[str, Any] = {}
    for x, t in zip(xs, terms, strict=True):
        for ch, d in zip(t, x.type.shape, strict=True):
            if ch in size and size[ch] != d:
                raise ctx.fail(f"index '{ch}' has sizes {size[ch]} and {d} (broadcasting "
                               "between operands is not supported)")
            size[ch] = d

    def reduce_to(x: Value, t: str, keep: str) -> tuple[Value, str]:
        drop = tuple(i for i, ch in enumerate(t) if ch not in keep)
        if not drop:
            return x, t
        return (ctx.one("reduce_sum", x, axes=drop, keepdims=0),
                "".join(ch for ch in t if ch in keep))

    def arrange(x: Value, t: str, order: str) -> Value:
        if t == order:
            return x
        return ctx.one("transpose", x, perm=tuple(t.index(ch) for ch in order))

    if len(xs) == 1:
        x, t = reduce_to(xs[0], terms[0], out)
        return [arrange(x, t, out) if t else ctx.one("identity", x)]
    (a, ta), (b, tb) = (reduce_to(x, t, out + other)
                        for x, t, other in ((xs[0], terms[0], terms[1]),
                                            (xs[1], terms[1], terms[0])))
    batch = "".join(ch for ch in out if ch in ta and ch in tb)
    contr = "".join(ch for ch in ta if ch in tb and ch not in out)
    ka = "".join(ch for ch in ta if ch not in tb)
    kb = "".join(ch for ch in tb if ch not in ta)

    def dims(letters: str) -> tuple[Any, ...]:
        return tuple(size[ch] for ch in letters)

    a = ctx.one("reshape", arrange(a, ta, batch + ka + contr),
                shape=(*dims(batch), _prod(dims(ka)), _prod(dims(contr))))
    b = ctx.one("reshape", arrange(b, tb, batch + contr + kb),
                shape=(*dims(batch), _prod(dims(contr)), _prod(dims(kb))))
    y = ctx.one("reshape", ctx.one("matmul", a, b), shape=dims(batch + ka + kb))
    return [arrange(y, batch + ka + kb, out)]


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
    return [ctx.one("slice", x, starts=starts, ends=ends, axes=axes,
                    steps=tuple(int(s) for s in steps))]


@converter("GatherElements")
def _gather_elements(ctx: NodeCtx) -> Outs:
    return [ctx.one("gather_elements", ctx.x(0), ctx.x(1), axis=int(ctx.attr("axis", 0)))]


@converter("Mod")
def _mod(ctx: NodeCtx) -> Outs:
    return [ctx.one("mod", ctx.x(0), ctx.x(1), fmod=int(ctx.attr("fmod", 0)))]


@converter("Swish")
def _swish(ctx: NodeCtx) -> Outs:
    x = ctx.x()
    alpha = float(ctx.attr("alpha", 1.0))
    return [ctx.one("silu", x) if alpha == 1.0 else
            ctx.one("mul", x, ctx.one("sigmoid", ctx.one("mul", x, ctx.scalar(alpha, x))))]


@converter("Elu", "HardSigmoid")
def _unary_with_attrs(ctx: NodeCtx) -> Outs:
    if ctx.op_type == "Elu":
        return [ctx.one("elu", ctx.x(), alpha=float(ctx.attr("alpha", 1.0)))]
    return [ctx.one("hard_sigmoid", ctx.x(), alpha=float(ctx.attr("alpha", 0.2)),
                    beta=float(ctx.attr("beta", 0.5)))]


@converter("HardSwish", "PRelu", "Selu", "Celu", "Softsign", "Mish", "ThresholdedRelu", "Sign")
def _activation_composite(ctx: NodeCtx) -> Outs:
    """Activations without an op of their own, as the ops they are made of (each compiles)."""
    x, op = ctx.x(), ctx.op_type
    zero = ctx.scalar(0.0, x, "zero")
    if op == "HardSwish":  # x·max(0, min(1, x/6 + 1/2))
        return [ctx.one("mul", x, ctx.one("hard_sigmoid", x, alpha=1.0 / 6.0, beta=0.5))]
    if op == "PRelu":  # x for x >= 0, slope·x below (slope broadcasts to x)
        neg = ctx.one("mul", ctx.x(1), ctx.one("min", x, zero))
        return [ctx.one("add", ctx.one("max", x, zero), neg)]
    if op == "Selu":  # gamma·elu(x, alpha)
        alpha = float(ctx.attr("alpha", 1.67326319217681884765625))
        gamma = float(ctx.attr("gamma", 1.05070102214813232421875))
        return [ctx.one("mul", ctx.one("elu", x, alpha=alpha), ctx.scalar(gamma, x, "gamma"))]
    if op == "Celu":  # alpha·elu(x/alpha, 1) = max(0, x) + min(0, alpha·(exp(x/alpha) - 1))
        alpha = float(ctx.attr("alpha", 1.0))
        if alpha == 1.0:
            return [ctx.one("elu", x, alpha=1.0)]
        inner = ctx.one("elu", ctx.one("div", x, ctx.scalar(alpha, x, "alpha")), alpha=1.0)
        return [ctx.one("mul", inner, ctx.scalar(alpha, x, "alpha"))]
    if op == "Softsign":  # x / (1 + |x|)
        one = ctx.scalar(1.0, x, "one")
        return [ctx.one("div", x, ctx.one("add", one, ctx.one("abs", x)))]
    if op == "Mish":  # x·tanh(softplus(x))
        return [ctx.one("mul", x, ctx.one("tanh", ctx.one("softplus", x)))]
    if op == "ThresholdedRelu":  # x where x > alpha, else 0
        alpha = ctx.scalar(float(ctx.attr("alpha", 1.0)), x, "alpha")
        return [ctx.one("where", ctx.one("greater", x, alpha), x, zero)]
    # Sign: 1, -1 or 0 (NaN stays NaN, as in numpy)
    pos = ctx.one("cast", ctx.one("greater", x, zero), to=x.type.dtype)
    neg = ctx.one("cast", ctx.one("less", x, zero), to=x.type.dtype)
    sign = ctx.one("sub", pos, neg)
    return [ctx.one("where", ctx.one("isnan", x), x, sign)] if x.type.dtype.startswith(
        "float") else [sign]


@converter("IsInf", "Xor", "Tan", "Sinh", "Cosh", "Shrink", "Hardmax")
def _more_composites(ctx: NodeCtx) -> Outs:
    """More ops spelled with others: IsInf, Xor, Tan, Sinh, Cosh, Shrink, Hardmax."""
    x, op = ctx.x(), ctx.op_type
    if op == "IsInf":
        inf = ctx.scalar(np.inf, x, "inf")
        pos, neg = int(ctx.attr("detect_positive", 1)), int(ctx.attr("detect_negative", 1))
        if pos and neg:
            return [ctx.one("equal", ctx.one("abs", x), inf)]
        if pos:
            return [ctx.one("equal", x, inf)]
        if neg:
            return [ctx.one("equal", x, ctx.one("neg", inf))]
        return [ctx.one("less", ctx.one("abs", x), ctx.scalar(-1.0, x, "never"))]
    if op == "Xor":
        return [ctx.one("not", ctx.one("equal", x, ctx.x(1)))]
    if op == "Tan":
        return [ctx.one("div", ctx.one("sin", x), ctx.one("cos", x))]
    if op == "Cosh":  # (e^x + e^-x) / 2
        ep, en = ctx.one("exp", x), ctx.one("exp", ctx.one("neg", x))
        return [ctx.one("mul", ctx.one("add", ep, en), ctx.scalar(0.5, x, "half"))]
    if op == "Sinh":
        # (e^x - e^-x) / 2 cancels near 0 (sinh(1e-8) gave 0): -sinh|x| is
        # expm1(-|x|)·(1 + e^|x|)/2, expm1 of a negative number being elu; then the sign of x
        a = ctx.one("abs", x)
        em1 = ctx.one("elu", ctx.one("neg", a), alpha=1.0)
        neg = ctx.one("mul", ctx.one("mul", em1, ctx.one("add", ctx.one("exp", a),
                                                         ctx.scalar(1.0, x, "one"))),
                      ctx.scalar(0.5, x, "half"))
        return [ctx.one("where", ctx.one("less", x, ctx.scalar(0.0, x, "zero")), neg,
                        ctx.one("neg", neg))]
    if op == "Shrink":  # x + bias below -lambd, x - bias above lambd, 0 between
        lambd, bias = float(ctx.attr("lambd", 0.5)), float(ctx.attr("bias", 0.0))
        dtype = x.type.dtype
        if not dtype.startswith(("float", "bfloat")):  # as ONNX's reference: in float64
            x = ctx.one("cast", x, to="float64")
        zero = ctx.scalar(0, x, "zero")
        low = ctx.one("add", x, ctx.scalar(bias, x, "bias"))
        high = ctx.one("sub", x, ctx.scalar(bias, x, "bias"))
        y = ctx.one("where", ctx.one("less", x, ctx.scalar(-lambd, x, "lo")), low, zero)
        y = ctx.one("where", ctx.one("greater", x, ctx.scalar(lambd, x, "hi")), high, y)
        return [y if x.type.dtype == dtype else ctx.one("cast", y, to=dtype)]
    # Hardmax: 1 at the first maximum along axis, 0 elsewhere. Before opset 13 the input is
    # coerced to 2-D, [prod(dims before axis), prod(the rest)] (axis 1 by default), as Softmax.
    rank = x.type.rank
    axis = normalize_axis(int(ctx.attr("axis", 1 if ctx.opset < 13 else -1)), rank)
    v = x
    if ctx.opset < 13 and axis != rank - 1:
        v = ctx.one("reshape", x, shape=(_prod(x.type.shape[:axis]), _prod(x.type.shape[axis:])))
        axis = 1
    depth = v.type.shape[axis]
    if not isinstance(depth, int):
        raise ctx.fail(f"axis {axis} must have a static size, got {depth}")
    arg = ctx.one("argmax", v, axis=axis, keepdims=0, select_last_index=0)
    values = ctx.imp.add_const(np.asarray([0, 1], dtype=x.type.dtype), f"{ctx.name}_onoff")
    y = ctx.one("one_hot", arg, values, depth=depth, axis=axis)
    return [y if v is x else ctx.one("reshape", y, shape=x.type.shape)]


@converter("LpNormalization", "MeanVarianceNormalization")
def _lp_mvn(ctx: NodeCtx) -> Outs:
    """x / ||x||_p along axis (p 1 or 2); (x - mean) / (sqrt(var) + 1e-9) over axes (MVN, as
    the ONNX function defines it)."""
    x = ctx.x()
    if ctx.op_type == "LpNormalization":
        axis = normalize_axis(int(ctx.attr("axis", -1)), x.type.rank)
        p = int(ctx.attr("p", 2))
        if p == 1:
            norm = ctx.one("reduce_sum", ctx.one("abs", x), axes=(axis,), keepdims=1)
        elif p == 2:
            norm = ctx.one("sqrt", ctx.one("reduce_sum", ctx.one("mul", x, x), axes=(axis,),
                                           keepdims=1))
        else:
            raise ctx.fail(f"p={p} is not supported (1 or 2)")
        one = ctx.scalar(1.0, x, "one")  # an all-zero slice stays 0, as ONNX's reference has it
        norm = ctx.one("where", ctx.one("equal", norm, ctx.scalar(0.0, x, "zero")), one, norm)
        return [ctx.one("div", x, norm)]
    axes = tuple(int(a) for a in ctx.attr("axes", (0, 2, 3)))
    mean = ctx.one("reduce_mean", x, axes=axes, keepdims=1)
    d = ctx.one("sub", x, mean)
    var = ctx.one("reduce_mean", ctx.one("mul", d, d), axes=axes, keepdims=1)
    std = ctx.one("add", ctx.one("sqrt", var), ctx.scalar(1e-9, x, "eps"))
    return [ctx.one("div", d, std)]


@converter("InstanceNormalization", "GroupNormalization")
def _group_norm(ctx: NodeCtx) -> Outs:
    """Normalization over groups of channels (InstanceNormalization: one channel a group): the
    input viewed as [N, groups, rest] goes through layer_norm over its last axis (one fused row
    kernel), then the per-channel scale and bias apply. GroupNormalization before opset 21 takes
    one scale and bias per group."""
    x, scale, bias = ctx.x(0), ctx.x(1), ctx.x(2)
    if x.type.rank < 2:
        raise ctx.fail(f"input must have a channel axis, got rank {x.type.rank}")
    eps = float(ctx.attr("epsilon", 1e-5))
    n, c, spatial = x.type.shape[0], x.type.shape[1], x.type.shape[2:]
    groups = c if ctx.op_type == "InstanceNormalization" else int(ctx.attr("num_groups"))
    if groups < 1:
        raise ctx.fail(f"num_groups {groups} must be at least 1")
    if isinstance(c, int) and c % groups:
        raise ctx.fail(f"num_groups {groups} does not divide the {c} channels")
    per_group_affine = ctx.op_type == "GroupNormalization" and ctx.opset < 21
    rows = ctx.one("reshape", x, shape=(n, groups, _prod((as_dim(c // groups), *spatial))))
    y = ctx.one("reshape", ctx.one("layer_norm", rows, axis=2, epsilon=eps), shape=x.type.shape)
    if per_group_affine:
        if groups == c:
            pshape = (groups,) + (1,) * len(spatial)
        elif not isinstance(c, int):
            raise ctx.fail("per-group scale and bias (opset < 21) need a static channel count")
        else:  # one value per group: repeat it over the group's channels
            s, b = ctx.const(1), ctx.const(2)
            if s is None or b is None:
                raise ctx.fail("per-group scale and bias (opset < 21) must be constants")
            scale = ctx.imp.add_const(np.repeat(s, c // groups), f"{ctx.name}_scale")
            bias = ctx.imp.add_const(np.repeat(b, c // groups), f"{ctx.name}_bias")
            pshape = (c,) + (1,) * len(spatial)
    else:
        pshape = (c,) + (1,) * len(spatial)
    scale = ctx.one("reshape", scale, shape=pshape)
    bias = ctx.one("reshape", bias, shape=pshape)
    return [ctx.one("add", ctx.one("mul", y, scale), bias)]


@converter("Resize", "Upsample")
def _resize(ctx: NodeCtx) -> Outs:
    """Resize (opset 10 on) and Upsample: output sizes from ``sizes`` or floor(input · scales);
    nearest or linear. The scales (given, or output / input sizes) feed the coordinate
    transform."""
    x = ctx.x()
    rank = x.type.rank
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
        if int(ctx.attr("antialias", 0)):
            raise ctx.fail("antialias=1 is not supported")
        if str(ctx.attr("keep_aspect_ratio_policy", "stretch")) != "stretch":
            raise ctx.fail("keep_aspect_ratio_policy other than stretch is not supported")
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
                raise ctx.fail(f"axis {a}: resizing {shape[a]} to {n} needs both sizes known "
                               "at import (static)")
            if shape[a] == 0 and n:
                raise ctx.fail(f"axis {a} is empty: it cannot be resized to {n}")
            shape[a], scales[a] = n, float(n) / shape[a] if shape[a] else 1.0
    elif scales_in is not None and np.asarray(scales_in).size:
        sc = np.asarray(scales_in, np.float32).ravel()
        if len(sc) != len(axes):
            raise ctx.fail(f"scales has {len(sc)} entries for {len(axes)} axes")
        for a, s in zip(axes, sc.tolist(), strict=True):
            if not (np.isfinite(s) and s > 0):
                raise ctx.fail(f"scale {s} of axis {a} is not a positive number")
            if s != 1.0:
                if not isinstance(shape[a], int):
                    raise ctx.fail(f"axis {a} is symbolic ({shape[a]}): resizing it needs a "
                                   "static size")
                shape[a] = int(np.floor(shape[a] * s))
            scales[a] = float(s)
    else:
        raise ctx.fail("one of scales and sizes must be given (a constant)")
    return [ctx.one("resize", x, sizes=tuple(shape), scales=tuple(scales), mode=mode,
                    coordinate_transformation_mode=coord, nearest_mode=nearest)]


@converter("GatherND")
def _gather_nd(ctx: NodeCtx) -> Outs:
    return [ctx.one("gather_nd", ctx.x(0), ctx.x(1), batch_dims=int(ctx.attr("batch_dims", 0)))]


@converter("ScatterND", "ScatterElements", "Scatter")
def _scatter(ctx: NodeCtx) -> Outs:
    red = str(ctx.attr("reduction", "none"))
    if ctx.op_type == "ScatterND":
        return [ctx.one("scatter_nd", ctx.x(0), ctx.x(1), ctx.x(2), reduction=red)]
    return [ctx.one("scatter_elements", ctx.x(0), ctx.x(1), ctx.x(2),
                    axis=int(ctx.attr("axis", 0)), reduction=red)]


@converter("TopK")
def _topk(ctx: NodeCtx) -> Outs:
    k = ctx.dims(1, "k") if ctx.opset >= 10 else (ctx.attr("k"),)
    if k is None or len(k) != 1 or not isinstance(k[0], int):
        raise ctx.fail("k must be one integer known at import")
    return ctx.emit("topk", [ctx.x()], k=int(k[0]), axis=int(ctx.attr("axis", -1)),
                    largest=int(ctx.attr("largest", 1)), sorted=int(ctx.attr("sorted", 1)))


@converter("OneHot")
def _one_hot(ctx: NodeCtx) -> Outs:
    depth = ctx.const(1)
    if depth is None or np.asarray(depth).size != 1:
        raise ctx.fail("depth (input 1) must be one number known at import")
    return [ctx.one("one_hot", ctx.x(0), ctx.x(2), depth=int(np.asarray(depth).item()),
                    axis=int(ctx.attr("axis", -1)))]


_RNN_DEFAULT_ACTS = {"RNN": ("tanh",), "GRU": ("sigmoid", "tanh"),
                     "LSTM": ("sigmoid", "tanh", "tanh")}


@converter("RNN", "GRU", "LSTM")
def _rnn(ctx: NodeCtx) -> Outs:
    """The recurrent layers as the ``rnn`` op (default activations only)."""
    acts = ctx.attr("activations")
    if acts is not None:
        want = _RNN_DEFAULT_ACTS[ctx.op_type]
        given = tuple(str(a.decode() if isinstance(a, bytes) else a).lower() for a in acts)
        if given not in (want, want * 2):
            raise ctx.fail(f"activations {list(given)} are not supported (only the defaults "
                           f"{list(want)})")
    if int(ctx.attr("input_forget", 0)):
        raise ctx.fail("input_forget=1 is not supported")
    r = ctx.x(2)
    hidden = int(ctx.attr("hidden_size", r.type.shape[-1]))
    clip = ctx.attr("clip")
    ins = [ctx.inp(i) for i in range(min(ctx.n_in, 8))]
    return ctx.emit("rnn", ins, cell=ctx.op_type.lower(), hidden_size=hidden,
                    direction=str(ctx.attr("direction", "forward")),
                    layout=int(ctx.attr("layout", 0)),
                    clip=None if clip is None else float(clip),
                    linear_before_reset=int(ctx.attr("linear_before_reset", 0)))


@converter("CumSum")
def _cumsum(ctx: NodeCtx) -> Outs:
    axis = ctx.dims(1, "axis")
    if axis is None or len(axis) != 1:
        raise ctx.fail("axis (input 1) must be one integer")
    return [ctx.one("cumsum", ctx.x(), axis=int(axis[0]), exclusive=int(ctx.attr("exclusive", 0)),
                    reverse=int(ctx.attr("reverse", 0)))]


@converter("Trilu")
def _trilu(ctx: NodeCtx) -> Outs:
    k = ctx.dims(1, "k") if ctx.has(1) else (0,)
    assert k is not None
    return [ctx.one("trilu", ctx.x(), upper=int(ctx.attr("upper", 1)), k=int(k[0]))]


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
        return [ctx.one("pad", x, pads=tuple(ctx.attr("pads")), mode=ctx.attr("mode", "constant"),
                        value=float(ctx.attr("value", 0.0)))]
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
    return [ctx.one("pad", x, pads=tuple(int(p) for p in pads), mode=mode,
                    value=float(value.ravel()[0]) if value is not None and value.size else 0.0)]


@converter("Shape")
def _shape(ctx: NodeCtx) -> Outs:
    end = ctx.attr("end")
    return [ctx.one("shape_of", ctx.x(), start=int(ctx.attr("start", 0)),
                    end=None if end is None else int(end))]


@converter("Size")
def _size(ctx: NodeCtx) -> Outs:
    x = ctx.x()
    n = _prod(x.type.shape)
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
    return [ctx.one("constant_of_shape", shape=shape, value=float(value),
                    dtype=arr.dtype.name)]


@converter("Range")
def _range(ctx: NodeCtx) -> Outs:
    start, limit, delta = ctx.const(0), ctx.const(1), ctx.const(2)
    assert start is not None
    assert limit is not None
    assert delta is not None
    arr = np.arange(start.item(), limit.item(), delta.item()).astype(start.dtype)
    v = ctx.imp.add_const(arr, ctx.node.output[0])
    ctx.created.add(id(v))
    return [v]


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
        ops = {ast.Add: lambda: a + b, ast.Sub: lambda: a - b, ast.Mult: lambda: a * b,
               ast.Div: lambda: sympy.sympify(a) / b, ast.FloorDiv: lambda: sympy.floor(
                   sympy.sympify(a) / b)}
        if type(node.op) in ops:
            return ops[type(node.op)]()
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id == "floor" and len(node.args) == 1):
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
        return tuple(as_dim(_dim(ast.parse(p, mode="eval").body, ctx)) if isinstance(p, str)
                     else p for p in parts)
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
