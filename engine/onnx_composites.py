"""ONNX ops that import as compositions of satura ops: each compiles with the kernels its parts
have (activations, normalizations, the other reductions, Einsum, DepthToSpace/SpaceToDepth,
ConvTranspose). Registered in ``onnx_import.CONVERTERS`` when ``onnx_converters`` imports this
module (at its end).
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
from satura.engine.graph import Value
from satura.engine.onnx_converters import Outs, auto_pads, dims_product, reduce_axes_of
from satura.engine.onnx_import import NodeCtx, converter
from satura.engine.ops.nn import keys_cubic, window_out
from satura.engine.shapes import IntDims, as_dim, normalize_axis

# Strided, undilated ConvTranspose as stride-1 convs of its output phases (``_sub_pixel``),
# not as a conv over the zero-spread input.
SUB_PIXEL = True


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
        raise ctx.fail(
            f"kernel_shape {tuple(ctx.attr('kernel_shape'))} differs from the "
            f"weights' spatial shape {k}"
        )
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
        pads = tuple(
            [t // 2 if upper else t - t // 2 for t in total]
            + [t - t // 2 if upper else t // 2 for t in total]
        )
    elif auto in ("SAME_UPPER", "SAME_LOWER"):
        total = [full[i] - sp[i] * s[i] for i in range(nsp)]
        small = [t // 2 for t in total]
        begin = (
            small if auto == "SAME_UPPER" else [t - b for t, b in zip(total, small, strict=True)]
        )
        pads = tuple(begin + [t - b for t, b in zip(total, begin, strict=True)])
    else:
        pads = tuple(ctx.attr("pads", (0,) * (2 * nsp))) if auto != "VALID" else (0,) * (2 * nsp)
    n, c = x.type.shape[:2]
    if SUB_PIXEL and any(st > 1 for st in s) and all(v == 1 for v in d):
        sub = _sub_pixel(ctx, x, w, g, k, s, op, pads, sp)
        if sub is not None:
            return [sub]
    # spread: [N, C, a, 1, b, 1] -> pad the 1s to the stride -> [N, C, a·s, b·t] -> drop the tail
    y = x
    if any(st > 1 for st in s):
        inter: list[Any] = [n, c]
        for a in sp:
            inter += [a, 1]
        y = ctx.one("reshape", y, shape=tuple(inter))
        pad_end = [0, 0] + [v for st in s for v in (0, st - 1)]
        y = ctx.one("pad", y, pads=(0,) * len(pad_end) + tuple(pad_end), mode="constant", value=0.0)
        y = ctx.one("reshape", y, shape=(n, c, *[a * st for a, st in zip(sp, s, strict=True)]))
        y = ctx.one(
            "slice",
            y,
            starts=(0,) * nsp,
            ends=tuple(st * (a - 1) + 1 for a, st in zip(sp, s, strict=True)),
            axes=tuple(range(2, 2 + nsp)),
            steps=(1,) * nsp,
        )
    begin = [(k[i] - 1) * d[i] - pads[i] for i in range(nsp)]
    end = [(k[i] - 1) * d[i] - pads[nsp + i] + op[i] for i in range(nsp)]
    if any(v < 0 for v in begin + end):  # pads past the kernel's reach crop the input
        cur = [st * (a - 1) + 1 for a, st in zip(sp, s, strict=True)]
        y = ctx.one(
            "slice",
            y,
            starts=tuple(max(0, -b) for b in begin),
            ends=tuple(cur[i] - max(0, -end[i]) for i in range(nsp)),
            axes=tuple(range(2, 2 + nsp)),
            steps=(1,) * nsp,
        )
        begin, end = [max(0, b) for b in begin], [max(0, e) for e in end]
    cin, coutg = w.shape[0], w.shape[1]
    wt = w.reshape(g, cin // g, coutg, *w.shape[2:]).swapaxes(1, 2)
    wt = np.flip(wt.reshape(g * coutg, cin // g, *w.shape[2:]), tuple(range(2, 2 + nsp)))
    wc = ctx.imp.add_const(np.ascontiguousarray(wt), f"{ctx.name}_w")
    del wv
    return [
        ctx.one(
            "conv",
            y,
            wc,
            ctx.inp(2),
            strides=(1,) * nsp,
            pads=tuple(begin + end),
            dilations=d,
            group=g,
        )
    ]


def _sub_pixel(
    ctx: NodeCtx,
    x: Value,
    w: np.ndarray,
    g: int,
    k: tuple[int, ...],
    s: tuple[int, ...],
    op: tuple[int, ...],
    pads: tuple[int, ...],
    sp: tuple[int, ...],
) -> Value | None:
    """A strided, undilated ConvTranspose as stride-1 convolutions of its output phases, then
    depth-to-space (reshape, transpose, reshape) and the crop of the pads. Output position
    ``q·s + r`` (before the crop) is ``sum_j x[q - j]·w[r + j·s]``: a correlation with every
    s-th tap of the kernel, flipped, ``ceil((k - r) / s)`` taps. When s divides k the phases
    are one conv (C -> S·M channels, S = the product of the strides, kernel k / s); else one
    conv each (concatenated), so that no tap is a zero. Spreading the input with zeros instead
    multiplies S times as many zeros as values. None (the caller spreads) for a bias that is
    not a constant, or an empty output."""
    nsp = len(k)
    b_in = ctx.inp(2)
    if b_in is not None and not b_in.is_const:
        return None
    bias = None if b_in is None else b_in.data
    full = [s[i] * (sp[i] - 1) + op[i] + k[i] for i in range(nsp)]
    out = [full[i] - pads[i] - pads[nsp + i] for i in range(nsp)]
    if any(o < 1 for o in out):
        return None
    # phase outputs per axis: enough for the cropped end, at least the input's length
    q = [max(sp[i], -(-(pads[i] + out[i]) // s[i])) for i in range(nsp)]
    cin, mg = w.shape[0], w.shape[1]
    cg, phases, n = cin // g, int(np.prod(s)), x.type.shape[0]
    wg = w.reshape(g, cg, mg, *k).astype(np.float32)
    bias_g = None if bias is None else np.asarray(bias, np.float32).reshape(g, 1, mg)

    def taps(r: tuple[int, ...], kr: tuple[int, ...]) -> np.ndarray:
        """Phase r's [g, Mg, Cg, *kr] weights: w[group·Cg + c, m, r + (kr - 1 - j)·s]."""
        wr = np.zeros((g, mg, cg, *kr), np.float32)
        for j in np.ndindex(*kr):
            t = tuple(r[i] + (kr[i] - 1 - j[i]) * s[i] for i in range(nsp))
            if all(t[i] < k[i] for i in range(nsp)):
                wr[(Ellipsis, *j)] = wg[(slice(None), slice(None), slice(None), *t)].swapaxes(1, 2)
        return wr

    def conv(wr: np.ndarray, reps: int, tag: str) -> Value:
        """Stride-1 conv with [g, reps·Mg, Cg, *kr] weights, every phase output q long."""
        kr = wr.shape[3:]
        wv = ctx.imp.add_const(wr.reshape(g * wr.shape[1], cg, *kr), f"{ctx.name}_w{tag}")
        bv = None
        if bias_g is not None:
            b = np.broadcast_to(bias_g, (g, reps, mg)).reshape(-1)
            bv = ctx.imp.add_const(np.ascontiguousarray(b), f"{ctx.name}_b{tag}")
        return ctx.one(
            "conv",
            x,
            wv,
            bv,
            strides=(1,) * nsp,
            pads=tuple(v - 1 for v in kr) + tuple(q[i] - sp[i] for i in range(nsp)),
            dilations=(1,) * nsp,
            group=g,
        )

    # taps of phase r along axis i: ceil((k - r) / s), all equal when s divides k
    phase_taps = [[-(-(k[i] - r) // s[i]) for r in range(s[i])] for i in range(nsp)]
    if all(len(set(v)) == 1 for v in phase_taps) or any(min(v) == 0 for v in phase_taps):
        # one conv of every phase at once (kernel ceil(k / s), zero taps where a phase has
        # fewer): channels (g, phase, Mg)
        kp = tuple(max(v) for v in phase_taps)
        wc = np.stack([taps(r, kp) for r in np.ndindex(*s)], axis=1)  # [g, S, Mg, Cg, *kp]
        y = conv(wc.reshape(g, phases * mg, cg, *kp), phases, "")
        y = ctx.one("reshape", y, shape=(n, g, *s, mg, *q))
        head, s_at = [0, 1, 2 + nsp], 2  # the axes of N, g, Mg; where the phase axes start
    else:
        # phases of unequal taps (s does not divide k): one conv each, no zero taps; channels
        # (phase, g, Mg) once concatenated
        ys = [
            conv(
                taps(r, tuple(phase_taps[i][r[i]] for i in range(nsp))),
                1,
                "_" + "_".join(map(str, r)),
            )
            for r in np.ndindex(*s)
        ]
        y = ctx.one("reshape", ctx.one("concat", *ys, axis=1), shape=(n, *s, g, mg, *q))
        head, s_at = [0, 1 + nsp, 2 + nsp], 1
    # -> [N, g, Mg, q_0, s_0, q_1, s_1, ...]
    perm = head + [v for i in range(nsp) for v in (3 + nsp + i, s_at + i)]
    y = ctx.one("transpose", y, perm=tuple(perm))
    y = ctx.one("reshape", y, shape=(n, g * mg, *[q[i] * s[i] for i in range(nsp)]))
    if any(pads[i] or q[i] * s[i] != out[i] for i in range(nsp)):
        y = ctx.one(
            "slice",
            y,
            starts=tuple(pads[:nsp]),
            ends=tuple(pads[i] + out[i] for i in range(nsp)),
            axes=tuple(range(2, 2 + nsp)),
            steps=(1,) * nsp,
        )
    return y


@converter("ReduceL1", "ReduceL2", "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp")
def _reduce_composite(ctx: NodeCtx) -> Outs:
    """The other reductions, from reduce_sum/reduce_max and elementwise ops. With empty axes and
    ``noop_with_empty_axes`` only the elementwise part applies (as the ONNX reference does)."""
    x = ctx.x()
    axes, keep, noop = reduce_axes_of(ctx, 18)
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
        return [ctx.one("reshape", t, shape=(n, as_dim(c * b * b), as_dim(h // b), as_dim(w // b)))]
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
    terms = [
        t.replace("...", ell[ell_rank - (r - len(t) + 3) :]) if "..." in t else t
        for t, r in zip(terms, ranks, strict=True)
    ]
    if arrow:
        out = out.replace("...", ell)
    else:  # implicit output: the ellipsis, then the letters used once, alphabetically
        joined = "".join(terms)
        out = ell + "".join(
            sorted(ch for ch in set(joined) if joined.count(ch) == 1 and ch not in ell)
        )
    if len(set(out)) != len(out):
        raise ctx.fail(
            f"equation '{eq}': an index repeated in the output (a diagonal) is not supported"
        )
    missing = sorted(set(out) - set("".join(terms)))
    if missing:
        raise ctx.fail(f"equation '{eq}': output index '{missing[0]}' is in no operand")
    return terms, out


def _einsum_diagonals(ctx: NodeCtx, x: Value, t: str) -> tuple[Value, str]:
    """``x`` with index letters ``t`` reduced to the diagonal of every letter it repeats: the two
    axes moved last, flattened, every (n + 1)-th element kept."""
    while len(set(t)) != len(t):
        ch = next(c for c in t if t.count(c) > 1)
        i, j = t.index(ch), t.index(ch, t.index(ch) + 1)
        n = x.type.shape[i]
        if not isinstance(n, int) or x.type.shape[j] != n:
            raise ctx.fail(f"index '{ch}' repeated within an operand needs equal static sizes")
        rest = [a for a in range(len(t)) if a not in (i, j)]
        x = ctx.one("transpose", x, perm=(*rest, i, j))
        x = ctx.one("reshape", x, shape=(*[x.type.shape[a] for a in range(len(rest))], n * n))
        x = ctx.one("slice", x, starts=(0,), ends=(n * n,), axes=(len(rest),), steps=(n + 1,))
        t = "".join(t[a] for a in rest) + ch
    return x, t


@converter("Einsum")
def _einsum(ctx: NodeCtx) -> Outs:
    """One or two operands (an index repeated within one first taken as its diagonal), as
    reduce_sum, transpose, reshape and one (batched) matmul: batch letters (in both operands and
    the output), contracted letters (in both, not the output), and letters of one operand (summed
    away first when not in the output)."""
    xs = [ctx.x(i) for i in range(ctx.n_in)]
    if len(xs) not in (1, 2):
        raise ctx.fail(f"{len(xs)} operands: only one or two are supported")
    terms, out = _einsum_terms(ctx, str(ctx.attr("equation")), [x.type.rank for x in xs])
    for k, (x, t) in enumerate(zip(xs, terms, strict=True)):
        xs[k], terms[k] = _einsum_diagonals(ctx, x, t)
    size: dict[str, Any] = {}
    for x, t in zip(xs, terms, strict=True):
        for ch, d in zip(t, x.type.shape, strict=True):
            if ch in size and size[ch] != d:
                raise ctx.fail(
                    f"index '{ch}' has sizes {size[ch]} and {d} (broadcasting "
                    "between operands is not supported)"
                )
            size[ch] = d

    def reduce_to(x: Value, t: str, keep: str) -> tuple[Value, str]:
        drop = tuple(i for i, ch in enumerate(t) if ch not in keep)
        if not drop:
            return x, t
        return (
            ctx.one("reduce_sum", x, axes=drop, keepdims=0),
            "".join(ch for ch in t if ch in keep),
        )

    def arrange(x: Value, t: str, order: str) -> Value:
        if t == order:
            return x
        return ctx.one("transpose", x, perm=tuple(t.index(ch) for ch in order))

    if len(xs) == 1:
        x, t = reduce_to(xs[0], terms[0], out)
        return [arrange(x, t, out) if t else ctx.one("identity", x)]
    (a, ta), (b, tb) = (
        reduce_to(x, t, out + other)
        for x, t, other in ((xs[0], terms[0], terms[1]), (xs[1], terms[1], terms[0]))
    )
    batch = "".join(ch for ch in out if ch in ta and ch in tb)
    contr = "".join(ch for ch in ta if ch in tb and ch not in out)
    ka = "".join(ch for ch in ta if ch not in tb)
    kb = "".join(ch for ch in tb if ch not in ta)

    def dims(letters: str) -> tuple[Any, ...]:
        return tuple(size[ch] for ch in letters)

    a = ctx.one(
        "reshape",
        arrange(a, ta, batch + ka + contr),
        shape=(*dims(batch), dims_product(dims(ka)), dims_product(dims(contr))),
    )
    b = ctx.one(
        "reshape",
        arrange(b, tb, batch + contr + kb),
        shape=(*dims(batch), dims_product(dims(contr)), dims_product(dims(kb))),
    )
    y = ctx.one("reshape", ctx.one("matmul", a, b), shape=dims(batch + ka + kb))
    return [arrange(y, batch + ka + kb, out)]


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
    return (
        [ctx.one("where", ctx.one("isnan", x), x, sign)]
        if x.type.dtype.startswith("float")
        else [sign]
    )


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
        neg = ctx.one(
            "mul",
            ctx.one("mul", em1, ctx.one("add", ctx.one("exp", a), ctx.scalar(1.0, x, "one"))),
            ctx.scalar(0.5, x, "half"),
        )
        return [
            ctx.one(
                "where", ctx.one("less", x, ctx.scalar(0.0, x, "zero")), neg, ctx.one("neg", neg)
            )
        ]
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
        v = ctx.one(
            "reshape",
            x,
            shape=(dims_product(x.type.shape[:axis]), dims_product(x.type.shape[axis:])),
        )
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
            norm = ctx.one(
                "sqrt", ctx.one("reduce_sum", ctx.one("mul", x, x), axes=(axis,), keepdims=1)
            )
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
    rows = ctx.one("reshape", x, shape=(n, groups, dims_product((as_dim(c // groups), *spatial))))
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


@converter("Compress")
def _compress(ctx: NodeCtx) -> Outs:
    """The slices where ``condition`` is true: a gather of their indices, constant when the
    condition is known at import, else the run-time ``nonzero`` of it (a data-dependent size)."""
    x = ctx.x(0)
    cond = ctx.known(1)
    axis = ctx.attr("axis")
    if axis is None:
        x = ctx.one("reshape", x, shape=(dims_product(x.type.shape),))
        axis = 0
    axis = normalize_axis(int(axis), x.type.rank)
    if cond is None:
        c = ctx.x(1)
        if c.type.rank != 1:
            raise ctx.fail(f"the condition must be 1-D, got {c.type}")
        nz = _nonzero_of(ctx, c)
        count = nz.type.shape[1]
        return [ctx.one("gather", x, ctx.one("reshape", nz, shape=(count,)), axis=axis)]
    keep = np.nonzero(np.asarray(cond).astype(bool).ravel())[0].astype(np.int64)
    length = x.type.shape[axis]
    if isinstance(length, int) and keep.size and keep[-1] >= length:
        raise ctx.fail(f"the condition selects index {keep[-1]} of an axis of {length}")
    index = ctx.imp.add_const(keep, f"{ctx.name}_keep")
    return [ctx.one("gather", x, index, axis=axis)]


def _nonzero_of(ctx: NodeCtx, x: Value) -> Value:
    """``nonzero(x)``, [rank, count], with a fresh data-dependent count."""
    return ctx.one("nonzero", x, count=(ctx.imp.data_symbol(f"{ctx.name}_count"),))


@converter("NonZero")
def _non_zero(ctx: NodeCtx) -> Outs:
    """The indices of the nonzero entries, [rank, count]: a constant when the input is known at
    import, else the run-time ``nonzero`` op, whose count is a data-dependent size."""
    k = ctx.known(0)
    if k is None:
        v = ctx.inp(0)
        k = None if v is None or v.data is None else v.data
    if k is None:
        return [_nonzero_of(ctx, ctx.x(0))]
    k = np.asarray(k)
    if k.dtype == object:
        try:
            k = k.astype(np.float64)
        except TypeError:  # sizes known only symbolically: at run time
            return [_nonzero_of(ctx, ctx.x(0))]
    idx = np.array(np.nonzero(np.atleast_1d(k)), dtype=np.int64).reshape(max(k.ndim, 1), -1)
    return [ctx.imp.add_const(idx, f"{ctx.name}_nz")]


@converter("Unique")
def _unique(ctx: NodeCtx) -> Outs:
    """The distinct values or slices: the ``unique`` op, whose count is a data-dependent size
    (on a constant input too: the run computes it)."""
    axis = ctx.attr("axis")
    return ctx.emit(
        "unique",
        [ctx.x(0)],
        count=(ctx.imp.data_symbol(f"{ctx.name}_count"),),
        axis=None if axis is None else int(axis),
        sorted=int(ctx.attr("sorted", 1)),
    )


@converter("NonMaxSuppression")
def _nms(ctx: NodeCtx) -> Outs:
    """The ``nms`` op, whose count of kept boxes is a data-dependent size."""
    ins = [ctx.inp(i) for i in range(min(len(ctx.node.input), 5))]
    return ctx.emit(
        "nms",
        ins,
        count=(ctx.imp.data_symbol(f"{ctx.name}_count"),),
        center_point_box=int(ctx.attr("center_point_box", 0)),
    )


@converter("ReverseSequence")
def _reverse_sequence(ctx: NodeCtx) -> Outs:
    """Each batch row's first ``sequence_lens[b]`` steps reversed along the time axis: a
    gather_elements by index t' = len - 1 - t where t < len, else t (integer kernels when the
    lengths come at run time)."""
    x, lens = ctx.x(0), ctx.x(1)
    rank = x.type.rank
    t_ax = normalize_axis(int(ctx.attr("time_axis", 0)), rank)
    b_ax = normalize_axis(int(ctx.attr("batch_axis", 1)), rank)
    if rank < 2 or {t_ax, b_ax} != {0, 1}:
        raise ctx.fail(f"time_axis and batch_axis must be 0 and 1, got {t_ax} and {b_ax}")
    steps, batch = x.type.shape[t_ax], x.type.shape[b_ax]
    if not isinstance(steps, int):
        raise ctx.fail(f"the time axis must be static, got {steps}")
    t_shape = [1] * rank
    t_shape[t_ax] = steps
    t = ctx.imp.add_const(np.arange(steps, dtype=np.int64).reshape(t_shape), f"{ctx.name}_t")
    b_shape = [1] * rank
    b_shape[b_ax] = batch
    n = ctx.one("reshape", ctx.one("cast", lens, to="int64"), shape=tuple(b_shape))
    one = ctx.imp.add_const(np.array(1, np.int64), f"{ctx.name}_one")
    back = ctx.one("sub", ctx.one("sub", n, one), t)
    index = ctx.one("where", ctx.one("less", t, n), back, t)
    index = ctx.one("expand", index, shape=tuple(x.type.shape))
    return [ctx.one("gather_elements", x, index, axis=t_ax)]


@converter("EyeLike")
def _eye_like(ctx: NodeCtx) -> Outs:
    """Ones on diagonal ``k`` of a matrix of the input's (static) shape: a constant."""
    x = ctx.x()
    shape = tuple(x.type.shape)
    if len(shape) != 2 or not all(isinstance(d, int) for d in shape):
        raise ctx.fail(f"input must be a matrix of static shape, got {shape}")
    code = ctx.attr("dtype")
    dtype = ctx.dtype(code, "dtype") if code is not None else x.type.dtype
    eye = np.eye(*shape, k=int(ctx.attr("k", 0)), dtype=dtype)
    return [ctx.imp.add_const(eye, f"{ctx.name}_eye")]


def _p_power(ctx: NodeCtx, x: Value, p: int) -> tuple[Value, Value | None]:
    """|x|^p, and the exponent 1/p that undoes it (None for p = 1)."""
    if p < 1:
        raise ctx.fail(f"p = {p} must be at least 1")
    if p == 1:
        return ctx.one("abs", x), None
    xp = ctx.one("mul", x, x) if p == 2 else ctx.one("pow", ctx.one("abs", x), ctx.scalar(p, x))
    return xp, ctx.scalar(1.0 / p, x, "inv_p")


def _p_root(ctx: NodeCtx, s: Value, inv: Value | None, p: int) -> Value:
    if inv is None:
        return s
    return ctx.one("sqrt", s) if p == 2 else ctx.one("pow", s, inv)


@converter("GlobalLpPool")
def _global_lp_pool(ctx: NodeCtx) -> Outs:
    """(Σ |x|^p over the spatial axes)^(1/p), kept as 1s."""
    x, p = ctx.x(), int(ctx.attr("p", 2))
    xp, inv = _p_power(ctx, x, p)
    s = ctx.one("reduce_sum", xp, axes=tuple(range(2, x.type.rank)), keepdims=1)
    return [_p_root(ctx, s, inv, p)]


@converter("LpPool")
def _lp_pool(ctx: NodeCtx) -> Outs:
    """(Σ |x|^p over each window)^(1/p): the window sums a depthwise conv by ones (padding adds
    zeros), ceil_mode as extra end padding."""
    x, p = ctx.x(), int(ctx.attr("p", 2))
    kernel = tuple(int(k) for k in ctx.attr("kernel_shape"))
    nsp = len(kernel)
    c = x.type.shape[1]
    if x.type.rank != nsp + 2 or not isinstance(c, int):
        raise ctx.fail(f"input must be [N, C, {nsp} spatial] with a static C, got {x.type.shape}")
    strides = tuple(ctx.attr("strides", (1,) * nsp))
    dil = tuple(ctx.attr("dilations", (1,) * nsp))
    pads = list(auto_pads(ctx, x, kernel, strides, dil))
    if int(ctx.attr("ceil_mode", 0)):  # the pools' output size; the end padded to reach it
        for i in range(nsp):
            size = x.type.shape[2 + i]
            if not isinstance(size, int):
                raise ctx.fail("ceil_mode needs static spatial sizes")
            k, st, pb, pe = kernel[i], strides[i], pads[i], pads[nsp + i]
            out = window_out(IntDims(), size, k, st, pb, pe, dil[i], ceil_mode=1)
            span = size + pb + pe - (dil[i] * (k - 1) + 1)
            pads[nsp + i] += max(0, (out - 1) * st - span)
    xp, inv = _p_power(ctx, x, p)
    ones = ctx.imp.add_const(np.ones((c, 1, *kernel), dtype=x.type.dtype), f"{ctx.name}_ones")
    s = ctx.one("conv", xp, ones, None, strides=strides, pads=tuple(pads), dilations=dil, group=c)
    return [_p_root(ctx, s, inv, p)]


@converter("AffineGrid")
def _affine_grid(ctx: NodeCtx) -> Outs:
    """theta [N, nd, nd+1] applied to the constant homogeneous grid of the output's normalized
    coordinates (x fastest): one batched product, [N, *size, nd]."""
    theta = ctx.x(0)
    size = ctx.dims(1, "size")
    nd = len(size) - 2 if size else 0
    if nd not in (2, 3) or not all(isinstance(d, int) and d > 0 for d in size[2:]):
        raise ctx.fail(f"size must be [N, C, H, W] or [N, C, D, H, W] of positive ints, got {size}")
    if tuple(theta.type.shape[1:]) != (nd, nd + 1):
        raise ctx.fail(f"theta must be [N, {nd}, {nd + 1}], got {tuple(theta.type.shape)}")
    sp = [int(d) for d in size[2:]]
    align = bool(ctx.attr("align_corners", 0))

    def coords(n: int) -> np.ndarray:
        if align:
            return np.linspace(-1.0, 1.0, n) if n > 1 else np.zeros(1)
        return (2.0 * np.arange(n) + 1.0) / n - 1.0

    axes = np.meshgrid(*[coords(n) for n in sp], indexing="ij")
    base = np.stack([*reversed(axes), np.ones(sp)], axis=0).reshape(nd + 1, -1)
    bv = ctx.imp.add_const(base.astype(theta.type.dtype), f"{ctx.name}_grid")
    grid = ctx.one("matmul", theta, bv)  # [N, nd, prod(sp)]
    grid = ctx.one("transpose", grid, perm=(0, 2, 1))
    return [ctx.one("reshape", grid, shape=(theta.type.shape[0], *sp, nd))]


@converter("CenterCropPad")
def _center_crop_pad(ctx: NodeCtx) -> Outs:
    """Per axis, a centred slice (crop) or zero padding to the target length: the odd one of
    a crop goes at the end, of a pad at the end too."""
    x = ctx.x(0)
    rank = x.type.rank
    shape = ctx.dims(1, "shape")
    axes = [normalize_axis(int(a), rank) for a in ctx.attr("axes", tuple(range(rank)))]
    if shape is None or len(shape) != len(axes):
        raise ctx.fail(f"shape {shape} must give one length per axis {tuple(axes)}")
    starts, ends, cut, pads = [], [], [], [0] * (2 * rank)
    for a, want in zip(axes, shape, strict=True):
        have = x.type.shape[a]
        if not isinstance(have, int) or not isinstance(want, int):
            raise ctx.fail(f"axis {a}: lengths must be static, got {have} -> {want}")
        if want < have:
            cut.append(a)
            starts.append((have - want) // 2)
            ends.append((have - want) // 2 + want)
        elif want > have:
            pads[a], pads[rank + a] = (want - have) // 2, want - have - (want - have) // 2
    y = x
    if cut:
        y = ctx.one(
            "slice",
            y,
            starts=tuple(starts),
            ends=tuple(ends),
            axes=tuple(cut),
            steps=(1,) * len(cut),
        )
    if any(pads):
        y = ctx.one("pad", y, pads=tuple(pads), mode="constant", value=0.0)
    return [y if y is not x else ctx.one("identity", x)]


@converter("Col2Im")
def _col2im(ctx: NodeCtx) -> Outs:
    """Sums of blocks back into an image: a ConvTranspose of the blocks' grid [N, C·K, *L]
    with one-hot weights [C·K, 1, *block] in C groups (each column entry lands on its block
    position), output_padding making up a stride's remainder."""
    x = ctx.x(0)
    image, block = ctx.dims(1, "image_shape"), ctx.dims(2, "block_shape")
    nsp = len(image or ())
    if x.type.rank != 3 or not image or len(block or ()) != nsp:
        raise ctx.fail(
            f"input must be [N, C·prod(block), L] with image and block shapes of one length, "
            f"got {tuple(x.type.shape)}, {image}, {block}"
        )
    image, block = [int(v) for v in image], [int(v) for v in block]
    k = int(np.prod(block))
    ck, cols = x.type.shape[1], x.type.shape[2]
    if not isinstance(ck, int) or ck % k:
        raise ctx.fail(f"input channels {ck} are not a multiple of prod(block_shape) {k}")
    s = tuple(ctx.attr("strides", (1,) * nsp))
    d = tuple(ctx.attr("dilations", (1,) * nsp))
    pads = tuple(ctx.attr("pads", (0,) * (2 * nsp)))
    grid = [
        (image[i] + pads[i] + pads[nsp + i] - d[i] * (block[i] - 1) - 1) // s[i] + 1
        for i in range(nsp)
    ]
    if min(grid) < 1 or cols != int(np.prod(grid)):
        raise ctx.fail(f"{cols} columns do not fit the block grid {tuple(grid)}")
    extra = [
        image[i] + pads[i] + pads[nsp + i] - (s[i] * (grid[i] - 1) + d[i] * (block[i] - 1) + 1)
        for i in range(nsp)
    ]
    c = ck // k
    w = np.zeros((ck, 1, k), dtype=x.type.dtype)
    w[np.arange(ck), 0, np.arange(ck) % k] = 1.0
    wv = ctx.imp.add_const(w.reshape(ck, 1, *block), f"{ctx.name}_onehot")
    xs = ctx.one("reshape", x, shape=(x.type.shape[0], ck, *grid))
    return ctx.inner(
        "ConvTranspose",
        [xs, wv],
        group=c,
        strides=s,
        dilations=d,
        pads=pads,
        output_padding=extra,
    )


@converter("DeformConv")
def _deform_conv(ctx: NodeCtx) -> Outs:
    """2-D deformable convolution: each kernel tap samples X bilinearly (zeros outside) at its
    position plus the offset for that tap and output pixel, times the mask; the samples then
    meet the weights in one (grouped) product. The sampling is GridSample's (align_corners=0
    maps pixel p to (2p + 1) / size - 1), once per offset group."""
    x, w, off = ctx.x(0), ctx.x(1), ctx.x(2)
    bias, mask = ctx.inp(3), ctx.inp(4)
    if x.type.rank != 4 or w.type.rank != 4 or off.type.rank != 4:
        raise ctx.fail("only 2-D DeformConv ([N, C, H, W] input and weights) is supported")
    n, c, h, wd = x.type.shape
    oc, cg, kh, kw = w.type.shape
    oh, ow = off.type.shape[2:]
    if not all(isinstance(v, int) for v in (c, h, wd, oc, cg, kh, kw, oh, ow)):
        raise ctx.fail(f"sizes must be static, got x {x.type.shape} and offset {off.type.shape}")
    group, ogroups = int(ctx.attr("group", 1)), int(ctx.attr("offset_group", 1))
    k = kh * kw
    if c != cg * group or oc % group or c % ogroups or off.type.shape[1] != ogroups * 2 * k:
        raise ctx.fail(
            f"shapes do not fit: x {x.type.shape}, weights {w.type.shape}, offset "
            f"{off.type.shape}, group {group}, offset_group {ogroups}"
        )
    sh, sw = ctx.attr("strides", (1, 1))
    dh, dw = ctx.attr("dilations", (1, 1))
    pt, pl = tuple(ctx.attr("pads", (0, 0, 0, 0)))[:2]
    taps = np.array(list(np.ndindex(kh, kw)))  # [K, 2]
    base_y = (np.arange(oh)[None, :] * sh - pt + taps[:, :1] * dh).reshape(1, k, oh, 1)
    base_x = (np.arange(ow)[None, :] * sw - pl + taps[:, 1:] * dw).reshape(1, k, 1, ow)
    dt = x.type.dtype
    cols = []
    per = c // ogroups
    for g in range(ogroups):
        og = ctx.one(
            "slice", off, starts=(2 * k * g,), ends=(2 * k * (g + 1),), axes=(1,), steps=(1,)
        )
        og = ctx.one("reshape", og, shape=(n, k, 2, oh, ow))
        coords = []
        for axis, base, size in ((1, base_x, wd), (0, base_y, h)):  # x first: the grid's order
            d = ctx.one("slice", og, starts=(axis,), ends=(axis + 1,), axes=(2,), steps=(1,))
            d = ctx.one("reshape", d, shape=(n, k, oh, ow))
            p = ctx.one("add", d, ctx.imp.add_const(base.astype(dt), f"{ctx.name}_base"))
            # (2p + 1) / size - 1
            scaled = ctx.one("mul", p, ctx.scalar(2.0 / size, p))
            coords.append(ctx.one("add", scaled, ctx.scalar(1.0 / size - 1.0, p)))
        grid = ctx.one(
            "concat", *[ctx.one("reshape", v, shape=(n, k * oh, ow, 1)) for v in coords], axis=3
        )
        xs = (
            x
            if ogroups == 1
            else ctx.one(
                "slice", x, starts=(per * g,), ends=(per * (g + 1),), axes=(1,), steps=(1,)
            )
        )
        sampled = ctx.inner(
            "GridSample",
            [xs, grid],
            opset=20,
            mode="linear",
            padding_mode="zeros",
            align_corners=0,
        )[0]
        assert sampled is not None
        sampled = ctx.one("reshape", sampled, shape=(n, per, k, oh * ow))
        if mask is not None:
            mg = ctx.one("slice", mask, starts=(k * g,), ends=(k * (g + 1),), axes=(1,), steps=(1,))
            sampled = ctx.one("mul", sampled, ctx.one("reshape", mg, shape=(n, 1, k, oh * ow)))
        cols.append(sampled)
    col = cols[0] if len(cols) == 1 else ctx.emit("concat", cols, axis=1)[0]
    col = ctx.one("reshape", col, shape=(n, group, cg * k, oh * ow))
    wg = ctx.one("reshape", w, shape=(group, oc // group, cg * k))
    y = ctx.one("reshape", ctx.one("matmul", wg, col), shape=(n, oc, oh, ow))
    if bias is not None:
        y = ctx.one("add", y, ctx.one("reshape", bias, shape=(oc, 1, 1)))
    return [y]


@converter("RoiAlign")
def _roi_align(ctx: NodeCtx) -> Outs:
    """Each region's bins sampled ``sampling_ratio``² times bilinearly (ONNX's rule: a sample
    past [-1, size] is 0, the coordinate clamped at 0 and at size - 1), averaged (``max``: the
    largest weighted corner, as onnxruntime). The regions may come at run time: their sample
    positions are elementwise maths on them, the reads gathers of the selected images."""
    x, rois, batch = ctx.x(0), ctx.x(1), ctx.x(2)
    if x.type.rank != 4 or rois.type.rank != 2:
        raise ctx.fail(
            f"X must be [N, C, H, W] and rois [R, 4], got {x.type.shape}, {rois.type.shape}"
        )
    c, h, w = x.type.shape[1:]
    r = rois.type.shape[0]
    if not all(isinstance(v, int) for v in (c, h, w, r)):
        raise ctx.fail(f"sizes must be static, got X {x.type.shape} and rois {rois.type.shape}")
    oh, ow = int(ctx.attr("output_height", 1)), int(ctx.attr("output_width", 1))
    ratio = int(ctx.attr("sampling_ratio", 0))
    if ratio <= 0:
        raise ctx.fail(
            "sampling_ratio 0 (a sample count from each region's size) is not supported: it "
            "gives regions different sample counts"
        )
    scale = float(ctx.attr("spatial_scale", 1.0))
    half = (
        ctx.opset >= 16 and ctx.attr("coordinate_transformation_mode", "half_pixel") == "half_pixel"
    )
    dt = x.type.dtype

    def col(i: int) -> Value:  # roi coordinate i, scaled and shifted: [R, 1]
        v = ctx.one("slice", rois, starts=(i,), ends=(i + 1,), axes=(1,), steps=(1,))
        v = ctx.one("mul", v, ctx.scalar(scale, v))
        return ctx.one("sub", v, ctx.scalar(0.5, v)) if half else v

    def axis_weights(start: Value, end: Value, bins: int, size: int) -> list[tuple[Value, Value]]:
        """[(index [R, S], weight [R, S]) for the low and the high neighbour] along one axis."""
        length = ctx.one("sub", end, start)
        if not half:
            length = ctx.one("max", length, ctx.scalar(1.0, length))
        frac = (np.arange(bins)[:, None] + (np.arange(ratio)[None, :] + 0.5) / ratio) / bins
        pos = ctx.one(
            "add",
            start,
            ctx.one(
                "mul", length, ctx.imp.add_const(frac.reshape(1, -1).astype(dt), f"{ctx.name}_frac")
            ),
        )
        inside = ctx.one(
            "and",
            ctx.one("greater_equal", pos, ctx.scalar(-1.0, pos)),
            ctx.one("less_equal", pos, ctx.scalar(float(size), pos)),
        )
        p = ctx.one("max", pos, ctx.scalar(0.0, pos))
        low = ctx.one("floor", p)
        top = ctx.scalar(float(size - 1), p)
        edge = ctx.one("greater_equal", low, top)
        low = ctx.one("where", edge, top, low)
        high = ctx.one("where", edge, top, ctx.one("add", low, ctx.scalar(1.0, low)))
        p = ctx.one("where", edge, top, p)
        lw = ctx.one("sub", p, low)
        zero = ctx.scalar(0.0, lw)
        hw = ctx.one("where", inside, lw, zero)
        lw = ctx.one("where", inside, ctx.one("sub", ctx.scalar(1.0, lw), lw), zero)
        return [(ctx.one("cast", low, to="int64"), lw), (ctx.one("cast", high, to="int64"), hw)]

    ys = axis_weights(col(1), col(3), oh, h)  # [R, oh·ratio]
    xs = axis_weights(col(0), col(2), ow, w)  # [R, ow·ratio]
    sy, sx = oh * ratio, ow * ratio
    images = ctx.one("reshape", ctx.one("gather", x, batch, axis=0), shape=(r, c, h * w))
    corners = []
    for iy, wy in ys:
        for ix, wx in xs:
            flat = ctx.one(
                "add",
                ctx.one(
                    "mul",
                    ctx.one("reshape", iy, shape=(r, sy, 1)),
                    ctx.imp.add_const(np.array(w, np.int64), f"{ctx.name}_w"),
                ),
                ctx.one("reshape", ix, shape=(r, 1, sx)),
            )
            flat = ctx.one(
                "expand", ctx.one("reshape", flat, shape=(r, 1, sy * sx)), shape=(r, c, sy * sx)
            )
            vals = ctx.one("gather_elements", images, flat, axis=2)
            weight = ctx.one(
                "mul",
                ctx.one("reshape", wy, shape=(r, sy, 1)),
                ctx.one("reshape", wx, shape=(r, 1, sx)),
            )
            corners.append(ctx.one("mul", vals, ctx.one("reshape", weight, shape=(r, 1, sy * sx))))
    mode = ctx.attr("mode", "avg")
    if mode not in ("avg", "max"):
        raise ctx.fail(f"mode must be avg or max, got {mode!r}")
    combine = "add" if mode == "avg" else "max"
    total = corners[0]
    for v in corners[1:]:
        total = ctx.one(combine, total, v)
    total = ctx.one("reshape", total, shape=(r, c, oh, ratio, ow, ratio))
    reduce = "reduce_mean" if mode == "avg" else "reduce_max"
    return [ctx.one(reduce, total, axes=(3, 5), keepdims=0)]


@converter("GridSample")
def _grid_sample(ctx: NodeCtx) -> Outs:
    """Sampling X [N, C, *spatial] at grid [N, *out, nd] (normalized coordinates, the last
    spatial axis first), as ONNX's reference does: per spatial axis the coordinate is
    denormalized, rounded (nearest), clamped or reflected into range (border, reflection), and
    cut into taps (nearest 1, linear 2, cubic 4 with Keys' a = -0.75) whose indices are clamped
    or reflected (zeros: an index out of range weighs 0). Each combination of taps is one gather
    of X flattened over its spatial axes, weighted by the product of the taps' weights."""
    x, grid = ctx.x(0), ctx.x(1)
    mode = str(ctx.attr("mode", "linear" if ctx.opset >= 20 else "bilinear"))
    mode = {"bilinear": "linear", "bicubic": "cubic"}.get(mode, mode)
    pad = str(ctx.attr("padding_mode", "zeros"))
    align = bool(int(ctx.attr("align_corners", 0)))
    if mode not in ("nearest", "linear", "cubic") or pad not in ("zeros", "border", "reflection"):
        raise ctx.fail(f"mode '{mode}' / padding_mode '{pad}' is not an ONNX GridSample mode")
    spatial = tuple(x.type.shape[2:])
    nd = len(spatial)
    if not nd or not all(isinstance(d, int) for d in spatial):
        raise ctx.fail(f"X needs static spatial sizes, got {tuple(x.type.shape)}")
    if grid.type.rank != nd + 2 or grid.type.shape[-1] != nd:
        raise ctx.fail(f"grid {tuple(grid.type.shape)} does not fit X {tuple(x.type.shape)}")
    n, c = x.type.shape[0], x.type.shape[1]
    out_sp = tuple(grid.type.shape[1:-1])
    p = dims_product(out_sp)
    g = grid if grid.type.dtype != "float16" else ctx.one("cast", grid, to="float32")

    def k(v: float) -> Value:
        return ctx.scalar(v, g, "k")

    def fl(v: Value) -> Value:
        return ctx.one("floor", v)

    def reflect(v: Value, lo: float, hi: float) -> Value:
        """Fold v into [lo, hi] by reflections at its ends."""
        if hi == lo:
            return ctx.one("add", ctx.one("mul", v, k(0.0)), k(lo))
        below, above = ctx.one("less", v, k(lo)), ctx.one("greater", v, k(hi))
        dx = ctx.one(
            "where", below, ctx.one("sub", k(lo), v), ctx.one("max", ctx.one("sub", v, k(hi)), k(0))
        )
        turns = fl(ctx.one("div", dx, k(hi - lo)))
        r = ctx.one("sub", dx, ctx.one("mul", turns, k(hi - lo)))
        odd = ctx.one(
            "greater",
            ctx.one("sub", turns, ctx.one("mul", fl(ctx.one("mul", turns, k(0.5))), k(2.0))),
            k(0.5),
        )
        from_lo, from_hi = ctx.one("add", k(lo), r), ctx.one("sub", k(hi), r)
        # below: lo + r on an even count of turns; above: hi - r; odd counts swap the ends
        low_side = ctx.one("where", odd, from_hi, from_lo)
        high_side = ctx.one("where", odd, from_lo, from_hi)
        return ctx.one("where", below, low_side, ctx.one("where", above, high_side, v))

    taps_of: list[list[tuple[Value, Value | None]]] = []  # per axis: (index, weight) per tap
    for i, d in enumerate(spatial):
        comp = ctx.one("slice", g, starts=(nd - 1 - i,), ends=(nd - i,), axes=(g.type.rank - 1,))
        v = ctx.one("reshape", comp, shape=(n, p))
        v = (
            ctx.one("mul", ctx.one("add", v, k(1.0)), k((d - 1) / 2.0))
            if align
            else ctx.one(
                "mul",
                ctx.one("sub", ctx.one("mul", ctx.one("add", v, k(1.0)), k(float(d))), k(1.0)),
                k(0.5),
            )
        )
        lo, hi = (0.0, d - 1.0) if align else (-0.5, d - 0.5)
        if mode == "nearest":
            v = ctx.one("round", v)
        # border: the coordinate is clamped only outside [lo, hi] (lo = -0.5 keeps [-0.5, 0)),
        # and not at all for cubic taps, which are clamped each: as torch and onnxruntime do
        # (ONNX's reference clamps the cubic coordinate too, 0.3 away from both)
        if pad == "border" and mode != "cubic":
            v = ctx.one(
                "where",
                ctx.one("less", v, k(lo)),
                k(0.0),
                ctx.one("where", ctx.one("greater", v, k(hi)), k(d - 1.0), v),
            )
        elif pad == "reflection":
            v = reflect(v, lo, hi)
        if mode == "nearest":
            starts, weights = [v], [None]
        else:
            v0 = fl(v)
            f = ctx.one("sub", v, v0)
            if mode == "linear":
                starts = [v0, ctx.one("add", v0, k(1.0))]
                weights = [ctx.one("sub", k(1.0), f), f]
            else:
                starts = [ctx.one("add", v0, k(float(o))) for o in (-1, 0, 1, 2)]
                weights = _cubic_weights(ctx, f, k)
        taps = []
        for idx, w in zip(starts, weights, strict=True):
            if pad == "zeros":
                inside = ctx.one(
                    "and",
                    ctx.one("greater_equal", idx, k(0.0)),
                    ctx.one("less", idx, k(float(d))),
                )
                keep = ctx.one("cast", inside, to=g.type.dtype)
                w = keep if w is None else ctx.one("mul", w, keep)
                idx = ctx.one("min", ctx.one("max", idx, k(0.0)), k(d - 1.0))
            elif pad == "border":
                idx = ctx.one("min", ctx.one("max", idx, k(0.0)), k(d - 1.0))
            else:  # reflected into [lo, hi], then truncated toward zero (lo >= -0.5)
                idx = fl(ctx.one("max", reflect(idx, lo, hi), k(0.0)))
            taps.append((idx, w))
        taps_of.append(taps)
    strides = [int(np.prod(spatial[i + 1 :])) for i in range(nd)]
    flat_x = ctx.one("reshape", x, shape=(n, c, int(np.prod(spatial))))
    total: Value | None = None
    for combo in itertools.product(*taps_of):
        flat: Value | None = None
        weight: Value | None = None
        for (idx, w), st in zip(combo, strides, strict=True):
            term = idx if st == 1 else ctx.one("mul", idx, k(float(st)))
            flat = term if flat is None else ctx.one("add", flat, term)
            if w is not None:
                weight = w if weight is None else ctx.one("mul", weight, w)
        assert flat is not None
        ids = ctx.one("reshape", ctx.one("cast", flat, to="int64"), shape=(n, 1, p))
        ids = ctx.one("expand", ids, shape=(n, c, p))
        val = ctx.one("gather_elements", flat_x, ids, axis=2)
        if weight is not None:
            wx = (
                weight
                if weight.type.dtype == x.type.dtype
                else ctx.one("cast", weight, to=x.type.dtype)
            )
            val = ctx.one("mul", val, ctx.one("reshape", wx, shape=(n, 1, p)))
        total = val if total is None else ctx.one("add", total, val)
    assert total is not None
    return [ctx.one("reshape", total, shape=(n, c, *out_sp))]


def _cubic_weights(ctx: NodeCtx, f: Value, k: Any) -> list[Value]:
    """Keys' cubic convolution weights (a = -0.75, ``keys_cubic``) of the taps at -1, 0, 1, 2
    from the fraction ``f`` in [0, 1): distances f + 1, f, 1 - f, 2 - f."""
    inner, outer = keys_cubic(-0.75)

    def horner(t: Value, coeffs: tuple[float, ...]) -> Value:
        y = k(coeffs[0])
        for c in coeffs[1:]:
            y = ctx.one("add", ctx.one("mul", y, t), k(c))
        return y

    return [
        horner(ctx.one("add", f, k(1.0)), outer),
        horner(f, inner),
        horner(ctx.one("sub", k(1.0), f), inner),
        horner(ctx.one("sub", k(2.0), f), outer),
    ]
