"""Neural-network ops: softmax, normalizations, convolution, pooling, attention."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from satura.engine.ops.linalg import ACTIVATIONS, apply_act
from satura.engine.ops.registry import (
    AttrSpec,
    OpInfo,
    Work,
    elementwise_work,
    io_bytes,
    numel,
    register,
)
from satura.engine.shapes import DimOps, IntDims, Shape, normalize_axis


def _first(d: DimOps, ins: Sequence[Shape | None], at: Any) -> list[Shape]:
    assert ins[0] is not None
    if "axis" in at:
        normalize_axis(at["axis"], len(ins[0]))
    return [tuple(ins[0])]


def _per_elem(flops: float) -> Any:
    return lambda i, o, a: elementwise_work(i, o, a, flops)


# -- softmax -----------------------------------------------------------------------------------
def softmax_ref(x: np.ndarray, axis: int) -> np.ndarray:
    """Numerically stable softmax along ``axis``."""
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return (e / np.sum(e, axis=axis, keepdims=True)).astype(x.dtype)


def _log_softmax(x: np.ndarray, axis: int) -> np.ndarray:
    s = x - np.max(x, axis=axis, keepdims=True)
    return (s - np.log(np.sum(np.exp(s), axis=axis, keepdims=True))).astype(x.dtype)


register(
    OpInfo(
        name="softmax",
        shape=_first,
        attrs={"axis": AttrSpec("int", -1)},
        reference=lambda ins, at: [softmax_ref(ins[0], at["axis"])],  # type: ignore[arg-type]
        work=_per_elem(12),
        onnx=("Softmax",),
        traits=frozenset({"reduction", "transcendental"}),
        doc="exp(x - max) / sum(exp(x - max)) along axis (ONNX opset >= 13)",
    )
)

register(
    OpInfo(
        name="log_softmax",
        shape=_first,
        attrs={"axis": AttrSpec("int", -1)},
        reference=lambda ins, at: [_log_softmax(ins[0], at["axis"])],  # type: ignore[arg-type]
        work=_per_elem(14),
        onnx=("LogSoftmax",),
        traits=frozenset({"reduction", "transcendental"}),
        doc="x - max - log(sum(exp(x - max))) along axis",
    )
)


# -- normalizations ----------------------------------------------------------------------------
def _norm_shape(d: DimOps, ins: Sequence[Shape | None], at: Any) -> list[Shape]:
    x = ins[0]
    assert x is not None
    normalize_axis(at["axis"], len(x))
    for p in ins[1:]:
        if p is not None:
            d.require(len(p) <= len(x), "normalization parameter has a higher rank than x")
            d.same(d.broadcast_shapes(x, p), tuple(x), "parameter does not broadcast to x")
    return [tuple(x)]


def _layer_norm_ref(ins: Sequence[np.ndarray | None], at: Any) -> list[np.ndarray]:
    x = ins[0]
    assert x is not None
    axes = tuple(range(normalize_axis(at["axis"], x.ndim), x.ndim))
    xf = x.astype(np.float32) if x.dtype != np.float64 else x
    mean = xf.mean(axis=axes, keepdims=True)
    var = ((xf - mean) ** 2).mean(axis=axes, keepdims=True)
    out = (xf - mean) / np.sqrt(var + at["epsilon"])
    if len(ins) > 1 and ins[1] is not None:
        out = out * ins[1]
    if len(ins) > 2 and ins[2] is not None:
        out = out + ins[2]
    return [np.asarray(out).astype(x.dtype)]


register(
    OpInfo(
        name="layer_norm",
        shape=_norm_shape,
        reference=_layer_norm_ref,
        inputs=(1, 3),
        attrs={"axis": AttrSpec("int", -1), "epsilon": AttrSpec("float", 1e-5)},
        work=_per_elem(8),
        onnx=("LayerNormalization",),
        traits=frozenset({"reduction", "norm"}),
        doc="(x - mean) / sqrt(var + eps) · scale + bias, statistics over axis..end",
    )
)


def _rms_norm_ref(ins: Sequence[np.ndarray | None], at: Any) -> list[np.ndarray]:
    x = ins[0]
    assert x is not None
    axes = tuple(range(normalize_axis(at["axis"], x.ndim), x.ndim))
    xf = x.astype(np.float32) if x.dtype != np.float64 else x
    out = xf / np.sqrt((xf * xf).mean(axis=axes, keepdims=True) + at["epsilon"])
    if len(ins) > 1 and ins[1] is not None:
        out = out * ins[1]
    return [np.asarray(out).astype(x.dtype)]


register(
    OpInfo(
        name="rms_norm",
        shape=_norm_shape,
        reference=_rms_norm_ref,
        inputs=(1, 2),
        attrs={"axis": AttrSpec("int", -1), "epsilon": AttrSpec("float", 1e-6)},
        work=_per_elem(5),
        onnx=("RMSNormalization",),
        traits=frozenset({"reduction", "norm"}),
        doc="x / sqrt(mean(x²) + eps) · scale, statistics over axis..end",
    )
)


def _bn_shape(d: DimOps, ins: Sequence[Shape | None], at: Any) -> list[Shape]:
    x = ins[0]
    assert x is not None
    d.require(len(x) >= 2, "batch_norm: x must have rank >= 2 (N, C, ...)")
    for p in ins[1:]:
        assert p is not None
        d.same(p, (x[1],), "batch_norm: scale/bias/mean/var must be [C]")
    return [tuple(x)]


def _bn_ref(ins: Sequence[np.ndarray | None], at: Any) -> list[np.ndarray]:
    x, scale, bias, mean, var = ins
    assert x is not None
    shp = (1, -1) + (1,) * (x.ndim - 2)

    def r(a: Any) -> np.ndarray:
        return np.asarray(a).reshape(shp)

    out = (x - r(mean)) / np.sqrt(r(var) + at["epsilon"]) * r(scale) + r(bias)
    return [np.asarray(out).astype(x.dtype)]


register(
    OpInfo(
        name="batch_norm",
        shape=_bn_shape,
        reference=_bn_ref,
        inputs=(5, 5),
        attrs={"epsilon": AttrSpec("float", 1e-5)},
        work=_per_elem(4),
        onnx=("BatchNormalization",),
        traits=frozenset({"norm"}),
        doc="inference batch norm: (x - mean[c]) / sqrt(var[c] + eps) · scale[c] + bias[c]",
    )
)


# -- convolution and pooling -------------------------------------------------------------------
def _window_attrs(at: Any, nsp: int) -> tuple[tuple[int, ...], ...]:
    strides = at.get("strides") or (1,) * nsp
    pads = at.get("pads") or (0,) * (2 * nsp)
    dil = at.get("dilations") or (1,) * nsp
    return tuple(strides), tuple(pads), tuple(dil)


def window_out(
    d: DimOps, size: Any, k: Any, stride: int, pb: int, pe: int, dil: int, ceil_mode: int = 0
) -> Any:
    span = size + pb + pe - (dil * (k - 1) + 1)
    d.require(d.ge(span, 0), "window larger than the padded input")
    if not ceil_mode:
        return d.floordiv(span, stride) + 1
    out = d.floordiv(span + stride - 1, stride) + 1
    # ONNX: the last window must start inside the input or the begin padding.
    return d.select(d.ge((out - 1) * stride, size + pb), out - 1, out)


def conv_shape(d: DimOps, ins: Sequence[Shape | None], at: Any) -> list[Shape]:
    x, w = ins[0], ins[1]
    assert x is not None
    assert w is not None
    d.require(at["act"] in ACTIVATIONS, f"conv: unknown act '{at['act']}'")
    d.require(len(x) >= 3 and len(w) == len(x), "conv: x and w must be N,C,spatial... of one rank")
    nsp = len(x) - 2
    strides, pads, dil = _window_attrs(at, nsp)
    d.require(
        len(strides) == nsp and len(pads) == 2 * nsp and len(dil) == nsp,
        "conv: strides/pads/dilations do not match the spatial rank",
    )
    g = at["group"]
    d.require(d.eq(w[1] * g, x[1]), "conv: input channels differ from w's channels × group")
    if len(ins) > 2 and ins[2] is not None:
        d.same(ins[2], (w[0],), "conv: bias must be [M]")
    sp = tuple(
        window_out(d, x[2 + i], w[2 + i], strides[i], pads[i], pads[nsp + i], dil[i])
        for i in range(nsp)
    )
    return [(x[0], w[0], *sp)]


def _windows(
    xp: np.ndarray,
    kernel: Sequence[int],
    strides: Sequence[int],
    dil: Sequence[int],
    out_sp: Sequence[int],
) -> np.ndarray:
    """View of padded ``xp`` [N, C, *sp] as [N, C, *out_sp, *kernel] windows."""
    nsp = len(kernel)
    span = [dil[i] * (kernel[i] - 1) + 1 for i in range(nsp)]
    v = np.lib.stride_tricks.sliding_window_view(xp, span, axis=tuple(range(2, 2 + nsp)))
    idx: list[Any] = [slice(None), slice(None)]
    idx += [slice(0, (out_sp[i] - 1) * strides[i] + 1, strides[i]) for i in range(nsp)]
    idx += [slice(None, None, dil[i]) for i in range(nsp)]
    return v[tuple(idx)]


def _conv_ref(ins: Sequence[np.ndarray | None], at: Any) -> list[np.ndarray]:
    x, w = ins[0], ins[1]
    assert x is not None
    assert w is not None
    nsp = x.ndim - 2
    strides, pads, dil = _window_attrs(at, nsp)
    out_sp = [
        (x.shape[2 + i] + pads[i] + pads[nsp + i] - dil[i] * (w.shape[2 + i] - 1) - 1) // strides[i]
        + 1
        for i in range(nsp)
    ]
    xp = np.pad(x, [(0, 0), (0, 0)] + [(pads[i], pads[nsp + i]) for i in range(nsp)])
    win = _windows(xp, w.shape[2:], strides, dil, out_sp)  # N, C, *out, *k
    g = at["group"]
    n, c = x.shape[:2]
    m = w.shape[0]
    win = win.reshape(n, g, c // g, *out_sp, *w.shape[2:])
    wg = w.reshape(g, m // g, c // g, *w.shape[2:])
    sp = "".join(chr(ord("p") + i) for i in range(nsp))
    ks = "".join(chr(ord("h") + i) for i in range(nsp))
    out = np.einsum(f"ngc{sp}{ks},gmc{ks}->ngm{sp}", win, wg, optimize=True)
    out = out.reshape(n, m, *out_sp)
    if len(ins) > 2 and ins[2] is not None:
        out = out + ins[2].reshape((1, m) + (1,) * nsp)
    return [apply_act(np.asarray(out).astype(x.dtype), at["act"])]


def conv_work(ins: Sequence[Any], outs: Sequence[Any], at: Any) -> Work:
    w = ins[1].shape
    per_out = numel(w[1:])
    return Work(2.0 * numel(outs[0].shape) * per_out, io_bytes(ins, outs))


register(
    OpInfo(
        name="conv",
        shape=conv_shape,
        reference=_conv_ref,
        inputs=(2, 3),
        work=conv_work,
        attrs={
            "strides": AttrSpec("ints", None),
            "pads": AttrSpec("ints", None),
            "dilations": AttrSpec("ints", None),
            "group": AttrSpec("int", 1),
            "act": AttrSpec("str", "none"),
        },
        onnx=("Conv",),
        traits=frozenset({"contraction"}),
        doc="N-d convolution, NCHW layout, pads (begin..., end...), grouped, optional activation",
    )
)


def _pool_shape(d: DimOps, ins: Sequence[Shape | None], at: Any) -> list[Shape]:
    x = ins[0]
    assert x is not None
    k = at["kernel"]
    nsp = len(k)
    d.require(len(x) == nsp + 2, "pool: x's rank must be 2 + the kernel's rank")
    strides, pads, dil = _window_attrs(at, nsp)
    sp = tuple(
        window_out(d, x[2 + i], k[i], strides[i], pads[i], pads[nsp + i], dil[i], at["ceil_mode"])
        for i in range(nsp)
    )
    return [(x[0], x[1], *sp)]


def _pool_ref(x: np.ndarray, at: Any, kind: str) -> np.ndarray:
    k = at["kernel"]
    nsp = len(k)
    strides, pads, dil = _window_attrs(at, nsp)
    out_sp = [int(s) for s in _pool_shape(IntDims(), [x.shape], at)[0][2:]]
    # Extra end padding so ceil-mode windows fit; those cells never count as data or pad.
    extra = [
        max(
            0,
            (out_sp[i] - 1) * strides[i]
            + dil[i] * (k[i] - 1)
            + 1
            - (x.shape[2 + i] + pads[i] + pads[nsp + i]),
        )
        for i in range(nsp)
    ]
    padw = [(0, 0), (0, 0)] + [(pads[i], pads[nsp + i] + extra[i]) for i in range(nsp)]
    xf = x.astype(np.float64)
    if kind == "max":
        xp = np.pad(xf, padw, constant_values=-np.inf)
        return _windows(xp, k, strides, dil, out_sp).max(axis=tuple(range(-nsp, 0))).astype(x.dtype)
    xp = np.pad(xf, padw)
    s = _windows(xp, k, strides, dil, out_sp).sum(axis=tuple(range(-nsp, 0)))
    # Count the cells: data cells always, explicit pads only with count_include_pad.
    ones = np.ones((1, 1, *x.shape[2:]))
    ones = np.pad(ones, padw, constant_values=1.0 if at["count_include_pad"] else 0.0)
    if at["count_include_pad"]:
        for i in range(nsp):  # the ceil-mode overhang never counts
            idx = [slice(None)] * (2 + nsp)
            idx[2 + i] = slice(ones.shape[2 + i] - extra[i], None)
            ones[tuple(idx)] = 0.0
    cnt = _windows(ones, k, strides, dil, out_sp).sum(axis=tuple(range(-nsp, 0)))
    return (s / cnt).astype(x.dtype)


def _pool_work(ins: Sequence[Any], outs: Sequence[Any], at: Any) -> Work:
    return Work(float(numel(outs[0].shape) * numel(at["kernel"])), io_bytes(ins, outs))


_POOL_ATTRS = {
    "kernel": AttrSpec("ints"),
    "strides": AttrSpec("ints", None),
    "pads": AttrSpec("ints", None),
    "ceil_mode": AttrSpec("int", 0),
}

register(
    OpInfo(
        name="max_pool",
        shape=_pool_shape,
        inputs=(1, 1),
        work=_pool_work,
        reference=lambda ins, at: [_pool_ref(ins[0], at, "max")],  # type: ignore[arg-type]
        attrs={**_POOL_ATTRS, "dilations": AttrSpec("ints", None)},
        onnx=("MaxPool",),
        traits=frozenset({"window"}),
        doc="N-d max pooling (output 0 of ONNX MaxPool), pads as -inf",
    )
)

register(
    OpInfo(
        name="avg_pool",
        shape=_pool_shape,
        inputs=(1, 1),
        work=_pool_work,
        reference=lambda ins, at: [_pool_ref(ins[0], at, "avg")],  # type: ignore[arg-type]
        attrs={
            **_POOL_ATTRS,
            "dilations": AttrSpec("ints", None),
            "count_include_pad": AttrSpec("int", 0),
        },
        onnx=("AveragePool",),
        traits=frozenset({"window"}),
        doc="N-d average pooling; pads count in the divisor only with count_include_pad",
    )
)


def _gap_shape(d: DimOps, ins: Sequence[Shape | None], at: Any) -> list[Shape]:
    x = ins[0]
    assert x is not None
    d.require(len(x) >= 3, "global_avg_pool: x must be N, C, spatial...")
    return [(x[0], x[1]) + (1,) * (len(x) - 2)]


register(
    OpInfo(
        name="global_avg_pool",
        shape=_gap_shape,
        work=_per_elem(1),
        reference=lambda ins, at: [
            ins[0]
            .mean(  # type: ignore[union-attr]
                axis=tuple(range(2, ins[0].ndim)), keepdims=True
            )
            .astype(ins[0].dtype)
        ],  # type: ignore
        onnx=("GlobalAveragePool",),
        traits=frozenset({"reduction"}),
        doc="mean over all spatial dimensions, kept as size 1",
    )
)


# -- attention ---------------------------------------------------------------------------------
def attention_shape(d: DimOps, ins: Sequence[Shape | None], at: Any) -> list[Shape]:
    q, k, v = ins[0], ins[1], ins[2]
    assert q is not None
    assert k is not None
    assert v is not None
    d.require(
        len(q) >= 3 and len(k) == len(q) and len(v) == len(q),
        "attention: q, k, v must be [..., H, S, D] of one rank",
    )
    d.require(d.eq(q[-1], k[-1]), "attention: q and k head sizes differ")
    d.require(d.eq(k[-2], v[-2]), "attention: k and v sequence lengths differ")
    d.require(d.eq(k[-3], v[-3]), "attention: k and v head counts differ")
    hq, hkv = q[-3], k[-3]
    d.require(d.eq(hq, hkv * d.floordiv(hq, hkv)), "attention: q heads not a multiple of kv heads")
    batch = d.broadcast_shapes(q[:-3], k[:-3], v[:-3])
    out = (*batch, hq, q[-2], v[-1])
    if len(ins) > 3 and ins[3] is not None:
        scores = (*batch, hq, q[-2], k[-2])
        d.require(len(ins[3]) <= len(scores), "attention: mask rank too high")
        d.same(
            d.broadcast_shapes(scores, ins[3]),
            scores,
            "attention: mask does not broadcast to the scores",
        )
    return [out]


def _attention_ref(ins: Sequence[np.ndarray | None], at: Any) -> list[np.ndarray]:
    q, k, v = ins[0], ins[1], ins[2]
    assert q is not None
    assert k is not None
    assert v is not None
    rep = q.shape[-3] // k.shape[-3]
    if rep > 1:
        k = np.repeat(k, rep, axis=-3)
        v = np.repeat(v, rep, axis=-3)
    s = (q @ np.swapaxes(k, -1, -2)) * at["scale"]
    if len(ins) > 3 and ins[3] is not None:
        mask = ins[3]
        s = np.where(mask, s, at["mask_fill"]) if mask.dtype == np.bool_ else s + mask
    if at["causal"]:
        sq, sk = s.shape[-2], s.shape[-1]
        tri = np.triu(np.ones((sq, sk), dtype=bool), k=1 + sk - sq)
        s = np.where(tri, -np.inf, s)
    return [(softmax_ref(np.asarray(s, q.dtype), -1) @ v).astype(q.dtype)]


def attention_work(ins: Sequence[Any], outs: Sequence[Any], at: Any) -> Work:
    q, k, v = ins[0].shape, ins[1].shape, ins[2].shape
    scores = numel(q[:-1]) * int(k[-2])
    return Work(
        2.0 * scores * int(q[-1]) + 2.0 * scores * int(v[-1]) + 12.0 * scores, io_bytes(ins, outs)
    )


register(
    OpInfo(
        name="attention",
        shape=attention_shape,
        reference=_attention_ref,
        inputs=(3, 4),
        attrs={
            "scale": AttrSpec("float"),
            "causal": AttrSpec("int", 0),
            "mask_fill": AttrSpec("float", float("-inf")),
        },
        work=attention_work,
        traits=frozenset({"contraction", "fused"}),
        doc="softmax(q·kᵀ·scale + mask [+ causal]) · v; kv heads repeated to q's (GQA); a bool "
        "mask keeps its True scores and sets the rest to mask_fill",
    )
)


# -- losses ------------------------------------------------------------------------------------
def _nll_shape(d: DimOps, ins: Sequence[Shape | None], at: Any) -> list[Shape]:
    x, t = ins[0], ins[1]
    assert x is not None
    assert t is not None
    d.require(at["reduction"] in ("none", "sum", "mean"), "nll_loss: unknown reduction")
    d.require(len(x) >= 2 and len(t) == len(x) - 1, "nll_loss: x is [N, C, ...], target [N, ...]")
    d.same(t, (x[0], *x[2:]), "nll_loss: target shape differs from x without its class axis")
    if len(ins) > 2 and ins[2] is not None:
        d.same(ins[2], (x[1],), "nll_loss: weight must be [C]")
    return [tuple(t) if at["reduction"] == "none" else ()]


def _nll_ref(ins: Sequence[np.ndarray | None], at: Any) -> list[np.ndarray]:
    x, t = ins[0], ins[1]
    assert x is not None
    assert t is not None
    w = ins[2] if len(ins) > 2 else None
    keep = np.ones(t.shape, bool) if at["ignore_index"] is None else t != at["ignore_index"]
    safe = np.where(keep, t, 0).astype(np.int64)
    picked = np.take_along_axis(x, np.expand_dims(safe, 1), axis=1)[:, 0]
    wt = (w[safe] if w is not None else np.ones(t.shape, x.dtype)) * keep
    loss = -picked * wt
    if at["reduction"] == "sum":
        loss = loss.sum()
    elif at["reduction"] == "mean":
        loss = loss.sum() / wt.sum()
    return [np.asarray(loss).astype(x.dtype)]


register(
    OpInfo(
        name="nll_loss",
        shape=_nll_shape,
        reference=_nll_ref,
        inputs=(2, 3),
        work=_per_elem(3),
        attrs={"reduction": AttrSpec("str", "mean"), "ignore_index": AttrSpec("int", None)},
        dtype=lambda ins, at: [ins[0] or "float32"],
        onnx=("NegativeLogLikelihoodLoss",),
        traits=frozenset({"reduction", "loss"}),
        doc="negative log-likelihood: -x[n, target[n, ...], ...] · weight, reduced none/sum/mean",
    )
)


# -- resize ------------------------------------------------------------------------------------
RESIZE_COORDS = (
    "half_pixel",
    "half_pixel_symmetric",
    "pytorch_half_pixel",
    "align_corners",
    "asymmetric",
)
RESIZE_NEAREST = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")


def _resize_shape(d: DimOps, ins: Sequence[Shape | None], at: Any) -> list[Shape]:
    x = ins[0]
    assert x is not None
    d.require(
        len(at["sizes"]) == len(x) and len(at["scales"]) == len(x),
        "resize: sizes and scales need one entry per axis",
    )
    # the coordinate transforms divide by the scale: NaN or 0 would give taps outside the input
    d.require(
        all(
            np.isfinite(s) and (s > 0 or n == 0)
            for s, n in zip(at["scales"], at["sizes"], strict=True)
        ),
        f"resize: scales {tuple(at['scales'])} must be finite and positive (0 only for an "
        "axis resized to nothing)",
    )
    d.require(
        at["mode"] in ("nearest", "linear"),
        f"resize: mode {at['mode']} is not supported (nearest, linear)",
    )
    d.require(
        at["coordinate_transformation_mode"] in RESIZE_COORDS,
        f"resize: coordinate_transformation_mode {at['coordinate_transformation_mode']} is "
        f"not supported ({', '.join(RESIZE_COORDS)})",
    )
    d.require(
        at["nearest_mode"] in RESIZE_NEAREST,
        f"resize: nearest_mode {at['nearest_mode']} is not supported",
    )
    return [tuple(at["sizes"])]


def resize_source(n_in: int, n_out: int, scale: float, mode: str) -> np.ndarray:
    """The input coordinate of each output index along one axis (ONNX's coordinate transforms)."""
    o = np.arange(n_out, dtype=np.float64)
    if mode == "half_pixel":
        return (o + 0.5) / scale - 0.5
    if mode == "half_pixel_symmetric":
        adj = n_out / (scale * n_in)
        return n_in / 2 * (1 - adj) + (o + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":  # a length-1 result (unrounded) samples at -0.5
        return (o + 0.5) / scale - 0.5 if n_in * scale != 1 else np.full_like(o, -0.5)
    if mode == "align_corners":  # over the unrounded resized length, as ONNX defines it
        length = n_in * scale
        return o * (n_in - 1) / (length - 1) if length != 1 else np.zeros_like(o)
    return o / scale  # asymmetric


def resize_taps(
    n_in: int, n_out: int, scale: float, at: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Along one axis: for each output index the two input indices it reads (clamped to the
    input: edge values beyond it) and the weight of the second (float64). Nearest reads one
    index (chosen by ``nearest_mode``) twice with weight 0."""
    src = resize_source(n_in, n_out, scale, at["coordinate_transformation_mode"])
    if at["mode"] == "nearest":
        nm = at["nearest_mode"]
        if nm == "floor":
            idx = np.floor(src)
        elif nm == "ceil":
            idx = np.ceil(src)
        else:  # round half down (prefer floor) or up (prefer ceil)
            half = src - np.floor(src) == 0.5
            idx = np.where(
                half, np.floor(src) if nm == "round_prefer_floor" else np.ceil(src), np.round(src)
            )
        i = np.clip(idx, 0, n_in - 1).astype(np.int64)
        return i, i, np.zeros(n_out)
    lo = np.floor(src)
    return (
        np.clip(lo, 0, n_in - 1).astype(np.int64),
        np.clip(lo + 1, 0, n_in - 1).astype(np.int64),
        src - lo,
    )


def keys_cubic(a: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Keys' cubic convolution kernel with parameter ``a`` as two cubics in the distance t,
    highest degree first: for t <= 1, and for 1 < t < 2 (0 beyond)."""
    return (a + 2, -(a + 3), 0.0, 1.0), (a, -5 * a, 8 * a, -4 * a)


def _filter_taps(ratio: float, scale: float, mode: str, a: float, antialias: bool) -> np.ndarray:
    """Weights of the taps around a source coordinate whose distance past its left tap is
    ``ratio``, by ONNX's Resize definitions: Keys' cubic (``a``) or linear, and with
    ``antialias`` the filter stretched by 1/scale when downsampling, normalized."""
    s = min(scale, 1.0) if antialias else 1.0
    reach = 1 if mode == "linear" else 2
    first = int(np.floor(-reach / s) + 1)
    d = np.abs((np.arange(first, 2 - first) - ratio) * s)
    if mode == "linear":
        w = np.clip(1 - d, 0, 1)
    else:
        inner, outer = keys_cubic(a)
        w = np.where(d <= 1, np.polyval(inner, d), np.where(d < 2, np.polyval(outer, d), 0.0))
    return w / w.sum() if antialias else w


def resize_matrix(
    n_in: int, n_out: int, scale: float, at: Any, roi: tuple[float, float] | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """[n_out, n_in] weights of a linear or cubic resize along one axis (antialiased or not,
    ``exclude_outside``), as ONNX's reference samples: the taps nearest the source coordinate
    (an integer coordinate counts as ratio 1 past the tap before it), edge-clamped. With
    ``roi`` (tf_crop_and_resize: this axis's start and end) the outputs whose coordinate falls
    outside the input get no weights; the mask of them is returned second (else None)."""
    outside = None
    if roi is None:
        src = resize_source(n_in, n_out, scale, at["coordinate_transformation_mode"])
    else:
        o, width, (lo, hi) = np.arange(n_out, dtype=np.float64), n_in * scale, roi
        if width == 1:
            src = np.full(n_out, (hi - lo) * (n_in - 1) / 2)
        else:
            src = o * (hi - lo) * (n_in - 1) / (width - 1)
        src = src + lo * (n_in - 1)
        outside = (src < 0) | (src > n_in - 1)
    mode, a = at["mode"], float(at.get("cubic_coeff_a", -0.75))
    anti, exclude = bool(at.get("antialias", 0)), bool(at.get("exclude_outside", 0))
    m = np.zeros((n_out, n_in))
    for o, x in enumerate(src):
        if outside is not None and outside[o]:
            continue
        lo = np.floor(x)
        w = _filter_taps(1.0 if x == lo else x - lo, scale, mode, a, anti)
        n = len(w)
        pad = -(-n // 2)
        p = np.floor(x + pad)
        frac = x + pad - p
        start = p - n // 2 + (0 if frac == 0 else 1) - pad
        idx = (start + np.arange(n)).astype(np.int64)
        if exclude:
            w = np.where((idx < 0) | (idx >= n_in), 0.0, w)
            w = w / (w.sum() or 1.0)
        np.add.at(m[o], np.clip(idx, 0, n_in - 1), w)
    return m, outside


def resized_axes(in_shape: Sequence[Any], at: Any) -> list[int]:
    """The axes a resize changes (its size or its coordinate transform)."""
    return [
        ax
        for ax, (n, s) in enumerate(zip(at["sizes"], at["scales"], strict=True))
        if n != in_shape[ax] or s != 1.0
    ]


def _resize_ref(ins: Sequence[np.ndarray | None], at: Any) -> list[np.ndarray]:
    """Separable: each resized axis in turn, nearest or linear between the two taps."""
    x = ins[0]
    assert x is not None
    y = x.astype(np.float64) if at["mode"] == "linear" else x
    for ax in resized_axes(x.shape, at):
        i0, i1, w = resize_taps(y.shape[ax], int(at["sizes"][ax]), float(at["scales"][ax]), at)
        if at["mode"] == "nearest":
            y = np.take(y, i0, axis=ax)
            continue
        w = w.reshape([-1 if i == ax else 1 for i in range(y.ndim)])
        y = np.take(y, i0, axis=ax) * (1 - w) + np.take(y, i1, axis=ax) * w
    return [np.asarray(y).astype(x.dtype)]


register(
    OpInfo(
        name="resize",
        shape=_resize_shape,
        reference=_resize_ref,
        work=_per_elem(4),
        attrs={
            "sizes": AttrSpec("dims"),
            "scales": AttrSpec("floats"),
            "mode": AttrSpec("str", "nearest"),
            "coordinate_transformation_mode": AttrSpec("str", "half_pixel"),
            "nearest_mode": AttrSpec("str", "round_prefer_floor"),
        },
        onnx=("Resize", "Upsample"),
        traits=frozenset({"layout"}),
        doc="resize to ``sizes`` (nearest or linear, ONNX coordinate transforms; ``scales`` "
        "are the ratios the transforms use)",
    )
)
