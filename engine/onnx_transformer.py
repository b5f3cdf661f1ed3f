"""ONNX's transformer ops (opset 23 on): Attention, RMSNormalization, RotaryEmbedding; and LRN.

torch's exporter writes ``scaled_dot_product_attention`` as Attention and ``RMSNorm`` as
RMSNormalization from opset 23 on. Attention imports as satura's fused ``attention`` op (scores
never reach memory) wherever its options allow, and as the ONNX function's own steps otherwise
(a softcap, or the scores asked for as an output). RotaryEmbedding imports as gathers and
elementwise products that the elementwise fuser joins. Registered in ``onnx_import.CONVERTERS``
when ``onnx_converters`` imports this module (at its end).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from satura.engine.graph import Value
from satura.engine.onnx_converters import Outs, dims_product
from satura.engine.onnx_import import NodeCtx, converter
from satura.engine.shapes import as_dim, normalize_axis


def _heads(ctx: NodeCtx, x: Value, heads: int) -> Value:
    """[B, S, H·D] -> [B, H, S, D]."""
    b, s, hidden = x.type.shape
    if not isinstance(hidden, int) or hidden % heads:
        raise ctx.fail(f"hidden size {hidden} is not a multiple of the {heads} heads")
    y = ctx.one("reshape", x, shape=(b, s, heads, hidden // heads))
    return ctx.one("transpose", y, perm=(0, 2, 1, 3))


def _neg_inf_where(ctx: NodeCtx, keep: Value, like: Value) -> Value:
    """0 where ``keep``, -inf elsewhere, in ``like``'s dtype: an additive score bias."""
    zero = ctx.scalar(0.0, like, "zero")
    return ctx.one("where", keep, zero, ctx.scalar(-np.inf, like, "ninf"))


def _add_bias(ctx: NodeCtx, bias: Value | None, more: Value) -> Value:
    return more if bias is None else ctx.one("add", bias, more)


@converter("Attention")
def _attention(ctx: NodeCtx) -> Outs:
    """softmax(q·kᵀ·scale [softcapped] + mask) · v, as ONNX's reference computes it:

    - a bool mask keeps its True scores, a float one is added; either is padded to the key length;
    - ``is_causal`` lets query i see key j when j <= i + offset, where the offset is the past's
      length (0 without one, ``nonpad_kv_seqlen - q_len`` per batch with that input);
    - a query row that the mask leaves no key gives zeros (not NaN);
    - 3-D inputs are [B, S, heads·D] (``q_num_heads``/``kv_num_heads``); kv heads are shared by
      groups of query heads;
    - outputs: Y, present key/value (the past concatenated with k/v), and the scores at the
      stage ``qk_matmul_output_mode`` names.
    """
    q, k, v = ctx.x(0), ctx.x(1), ctx.x(2)
    mask, past_k, past_v, nonpad = ctx.inp(3), ctx.inp(4), ctx.inp(5), ctx.inp(6)
    rank = q.type.rank
    if rank not in (3, 4) or k.type.rank != rank or v.type.rank != rank:
        raise ctx.fail(
            f"q, k, v must all be 3-D or all 4-D, got ranks {q.type.rank}, {k.type.rank}, "
            f"{v.type.rank}"
        )
    if (past_k is None) != (past_v is None):
        raise ctx.fail("past_key and past_value must be given together")
    if nonpad is not None and past_k is not None:
        raise ctx.fail("nonpad_kv_seqlen cannot be combined with past_key/past_value")
    if rank == 3:
        hq, hkv = ctx.attr("q_num_heads"), ctx.attr("kv_num_heads")
        if hq is None or hkv is None:
            raise ctx.fail("3-D inputs need the q_num_heads and kv_num_heads attributes")
        q, k, v = _heads(ctx, q, int(hq)), _heads(ctx, k, int(hkv)), _heads(ctx, v, int(hkv))
    batch, heads_q, sq, d = q.type.shape
    heads_kv = k.type.shape[1]
    if not all(isinstance(n, int) for n in (heads_q, heads_kv, d)):
        raise ctx.fail(f"head counts and head size must be static, got q {q.type.shape}")
    if heads_q % heads_kv:
        raise ctx.fail(f"{heads_q} query heads are not a multiple of the {heads_kv} kv heads")
    if past_k is not None:
        k = ctx.one("concat", past_k, k, axis=2)
        v = ctx.one("concat", past_v, v, axis=2)
    skv = k.type.shape[2]
    scale = ctx.attr("scale")
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    softcap = float(ctx.attr("softcap", 0.0))
    mode = int(ctx.attr("qk_matmul_output_mode", 0))
    causal = bool(ctx.attr("is_causal", 0))
    left, right = int(ctx.attr("left_window_size", -1)), int(ctx.attr("right_window_size", -1))
    want_scores = len(ctx.node.output) > 3 and bool(ctx.node.output[3])

    # The additive score bias: the mask, then the causal and window limits and the key padding.
    bias = None
    if mask is not None:
        ms = mask.type.shape
        if ms and ms[-1] != skv:
            if not (isinstance(ms[-1], int) and isinstance(skv, int) and ms[-1] < skv):
                raise ctx.fail(f"mask's last axis {ms[-1]} does not fit the {skv} keys")
            pads = [0] * (2 * len(ms))
            pads[-1] = skv - ms[-1]
            fill = 0.0 if mask.type.dtype == "bool" else -np.inf
            mask = ctx.one("pad", mask, pads=tuple(pads), value=fill)
        bias = _neg_inf_where(ctx, mask, q) if mask.type.dtype == "bool" else mask
    steps = softcap > 0 or want_scores or q.type.dtype != "float32"
    past_len = 0 if past_k is None else past_k.type.shape[2]
    # The op's own causal flag (bottom-right aligned) serves where ONNX's offset is the same and
    # nothing else masks: with a mask the two together may hide a row's every key, which the
    # bias must show (such rows give zeros), so there the limit joins the bias, unless the
    # lengths are symbolic (then a row hidden only by both is not zeroed).
    windows = left >= 0 or right >= 0
    static = isinstance(sq, int) and isinstance(skv, int)
    fused_causal = (
        causal
        and not steps
        and (bias is None or not static)
        and nonpad is None
        and not windows
        and as_dim(skv - sq) == as_dim(past_len)
    )
    if (causal and not fused_causal) or windows:
        if not static:
            raise ctx.fail(f"this causal or window mask needs static lengths, got {sq} and {skv}")
        # position difference i + offset - j, per batch when the offset is
        rel = ctx.imp.add_const(
            (np.arange(sq)[:, None] - np.arange(skv)[None, :]).astype(np.float32), f"{ctx.name}_ij"
        )
        if nonpad is not None:
            off = ctx.one("cast", nonpad, to="float32")
            off = ctx.one("sub", off, ctx.scalar(float(sq), off, "sq"))
            rel = ctx.one("add", rel, ctx.one("reshape", off, shape=(batch, 1, 1, 1)))
        elif past_len:
            rel = ctx.one("add", rel, ctx.scalar(float(past_len), rel, "past"))
        # causal: rel >= 0; left window: rel <= left; right window: rel >= -right
        limits = [("greater_equal", 0.0)] if causal else []
        limits += [("less_equal", float(left))] if left >= 0 else []
        limits += [("greater_equal", -float(right))] if right >= 0 else []
        for cmp, at in limits:
            keep = ctx.one(cmp, rel, ctx.scalar(at, rel, "limit"))
            bias = _add_bias(ctx, bias, _neg_inf_where(ctx, keep, q))
    if nonpad is not None:
        cols = ctx.imp.add_const(np.arange(skv, dtype=np.int64)[None, :], f"{ctx.name}_cols")
        lens = ctx.one("reshape", ctx.one("cast", nonpad, to="int64"), shape=(batch, 1))
        keep = ctx.one("reshape", ctx.one("less", cols, lens), shape=(batch, 1, 1, skv))
        bias = _add_bias(ctx, bias, _neg_inf_where(ctx, keep, q))

    if steps:
        precision = ctx.attr("softmax_precision")
        y, scores = _attention_steps(ctx, q, k, v, bias, scale, softcap, mode, precision)
    else:
        extra = [] if bias is None else [bias]
        y = ctx.one("attention", q, k, v, *extra, scale=scale, causal=int(fused_causal))
        scores = None
    dead = _dead_rows(ctx, bias)
    if dead is not None:
        y = ctx.one("where", dead, ctx.scalar(0.0, y, "zero"), y)
        if scores is not None and mode == 3:
            scores = ctx.one("where", dead, ctx.scalar(0.0, scores, "zero"), scores)
    if rank == 3:
        y = ctx.one("transpose", y, perm=(0, 2, 1, 3))
        y = ctx.one("reshape", y, shape=(batch, sq, heads_q * y.type.shape[3]))
    return [y, k, v, scores]


def _attention_steps(
    ctx: NodeCtx,
    q: Value,
    k: Value,
    v: Value,
    bias: Value | None,
    scale: float,
    softcap: float,
    mode: int,
    precision: int | None,
) -> tuple[Value, Value]:
    """Attention as ONNX's function writes it, step by step and rounding where it rounds (q and k
    each scaled by √scale, matmul, softcap, bias, softmax in ``softmax_precision``, matmul): for
    the options the fused op lacks, and for 16-bit floats. Returns Y and the scores at stage
    ``mode``."""
    b, hkv, skv = k.type.shape[:3]
    hq = q.type.shape[1]
    if hq != hkv:  # each kv head serves hq / hkv query heads in a row
        rep = hq // hkv
        k, v = (
            ctx.one(
                "reshape",
                ctx.one(
                    "expand",
                    ctx.one("reshape", t, shape=(b, hkv, 1, skv, t.type.shape[3])),
                    shape=(b, hkv, rep, skv, t.type.shape[3]),
                ),
                shape=(b, hq, skv, t.type.shape[3]),
            )
            for t in (k, v)
        )
    root = ctx.scalar(math.sqrt(scale), q, "scale")
    kt = ctx.one("transpose", k, perm=(0, 1, 3, 2))
    s = ctx.one("matmul", ctx.one("mul", q, root), ctx.one("mul", kt, root))
    if softcap > 0:
        cap = ctx.scalar(softcap, s, "cap")
        s = ctx.one("mul", ctx.one("tanh", ctx.one("div", s, cap)), cap)
    scores = s
    if bias is not None:
        s = ctx.one("add", s, bias)
        if mode == 2:
            scores = s
    wide = None if precision is None else ctx.dtype(precision, "softmax_precision")
    if wide is not None and wide != s.type.dtype:
        p = ctx.one(
            "cast", ctx.one("softmax", ctx.one("cast", s, to=wide), axis=-1), to=s.type.dtype
        )
    else:
        p = ctx.one("softmax", s, axis=-1)
    if mode == 3:
        scores = p
    return ctx.one("matmul", p, v), scores


def _dead_rows(ctx: NodeCtx, bias: Value | None) -> Value | None:
    """Where the bias masks a query row's every key (its max is -inf), or None when no row can
    be: ONNX gives such rows zeros, where a plain softmax gives NaN."""
    if bias is None:
        return None
    if bias.data is not None and not np.isneginf(bias.data.max(axis=-1)).any():
        return None
    top = ctx.one("reduce_max", bias, axes=(bias.type.rank - 1,), keepdims=1)
    return ctx.one("equal", top, ctx.scalar(-np.inf, top, "ninf"))


@converter("RMSNormalization")
def _rms_normalization(ctx: NodeCtx) -> Outs:
    """x / sqrt(mean(x²) + epsilon) · scale, statistics over axis..end; one fused row kernel
    when the scale covers the normalized axes exactly."""
    x, scale = ctx.x(0), ctx.x(1)
    axis = normalize_axis(int(ctx.attr("axis", -1)), x.type.rank)
    eps = float(ctx.attr("epsilon", 1e-5))
    if tuple(scale.type.shape) == tuple(x.type.shape[axis:]):
        return [ctx.one("rms_norm", x, scale, axis=axis, epsilon=eps)]
    return [ctx.one("mul", ctx.one("rms_norm", x, axis=axis, epsilon=eps), scale)]


@converter("RotaryEmbedding")
def _rotary_embedding(ctx: NodeCtx) -> Outs:
    """Rotates pairs of a head's first ``rotary_embedding_dim`` features by the cached angle of
    each position: (x1, x2) -> (x1·cos - x2·sin, x1·sin + x2·cos). The pairs are the two halves,
    or neighbours when ``interleaved``; the caches are indexed by ``position_ids`` when given."""
    x, cos, sin, pos = ctx.x(0), ctx.x(1), ctx.x(2), ctx.inp(3)
    shape = x.type.shape
    if x.type.rank == 4:  # [B, H, S, D] -> [B, S, H, D]
        y = ctx.one("transpose", x, perm=(0, 2, 1, 3))
    elif x.type.rank == 3:
        heads = int(ctx.attr("num_heads", 0))
        if heads < 1 or not isinstance(shape[2], int) or shape[2] % heads:
            raise ctx.fail(f"3-D input {tuple(shape)} needs num_heads dividing its last axis")
        y = ctx.one("reshape", x, shape=(shape[0], shape[1], heads, shape[2] // heads))
    else:
        raise ctx.fail(f"input must be 3-D or 4-D, got rank {x.type.rank}")
    b, s, h, d = y.type.shape
    rot = int(ctx.attr("rotary_embedding_dim", 0)) or d
    if not isinstance(d, int) or rot % 2 or rot > d:
        raise ctx.fail(f"rotary_embedding_dim {rot} must be even and at most the head size {d}")
    half = rot // 2
    if pos is not None:
        cos, sin = ctx.one("gather", cos, pos, axis=0), ctx.one("gather", sin, pos, axis=0)
    for c in (cos, sin):
        if c.type.shape[-1] != half:
            raise ctx.fail(f"cos/sin caches' last axis {c.type.shape[-1]} is not {half}")
    cos, sin = (ctx.one("reshape", c, shape=(b, s, 1, half)) for c in (cos, sin))
    part = ctx.one("slice", y, starts=(0,), ends=(rot,), axes=(3,)) if rot < d else y
    if ctx.attr("interleaved", 0):
        pairs = ctx.one("reshape", part, shape=(b, s, h, half, 2))
        x1, x2 = (
            ctx.one(
                "reshape",
                ctx.one("slice", pairs, starts=(i,), ends=(i + 1,), axes=(4,)),
                shape=(b, s, h, half),
            )
            for i in (0, 1)
        )
    else:
        x1, x2 = (
            ctx.one("slice", part, starts=(a,), ends=(a + half,), axes=(3,)) for a in (0, half)
        )
    real = ctx.one("sub", ctx.one("mul", cos, x1), ctx.one("mul", sin, x2))
    imag = ctx.one("add", ctx.one("mul", sin, x1), ctx.one("mul", cos, x2))
    if ctx.attr("interleaved", 0):
        pair: Any = (b, s, h, half, 1)
        done = ctx.one(
            "concat",
            ctx.one("reshape", real, shape=pair),
            ctx.one("reshape", imag, shape=pair),
            axis=4,
        )
        done = ctx.one("reshape", done, shape=(b, s, h, rot))
    else:
        done = ctx.one("concat", real, imag, axis=3)
    if rot < d:
        done = ctx.one(
            "concat", done, ctx.one("slice", y, starts=(rot,), ends=(d,), axes=(3,)), axis=3
        )
    if x.type.rank == 4:
        return [ctx.one("transpose", done, perm=(0, 2, 1, 3))]
    return [ctx.one("reshape", done, shape=shape)]


@converter("LRN")
def _lrn(ctx: NodeCtx) -> Outs:
    """x / (bias + alpha/size · Σ x²)^beta, the sum over ``size`` neighbouring channels: an
    average pool of x² along the channel axis, seen as [N, 1, C, rest], times ``size``."""
    x = ctx.x()
    if x.type.rank < 3:
        raise ctx.fail(f"input must be [N, C, ...], got rank {x.type.rank}")
    size = int(ctx.attr("size", 0))
    if size < 1:
        raise ctx.fail(f"size must be a positive integer, got {size}")
    alpha, beta = float(ctx.attr("alpha", 1e-4)), float(ctx.attr("beta", 0.75))
    bias = float(ctx.attr("bias", 1.0))
    n, c, *rest = x.type.shape
    flat = ctx.one("reshape", ctx.one("mul", x, x), shape=(n, 1, c, dims_product(rest)))
    lo = (size - 1) // 2
    window = ctx.one(
        "avg_pool", flat, kernel=(size, 1), pads=(lo, 0, size - 1 - lo, 0), count_include_pad=1
    )
    window = ctx.one("reshape", window, shape=x.type.shape)
    base = ctx.one(
        "add", ctx.one("mul", window, ctx.scalar(alpha, x, "alpha")), ctx.scalar(bias, x, "bias")
    )
    return [ctx.one("div", x, ctx.one("pow", base, ctx.scalar(beta, x, "beta")))]
