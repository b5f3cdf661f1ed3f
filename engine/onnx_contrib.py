"""onnxruntime's com.microsoft fused ops, as its transformer optimizer and optimum write them.

A model that onnxruntime's ``optimize_model`` (or ``optimum-cli ... --optimize O1..O4``) has
rewritten holds fused contrib ops: SkipLayerNormalization, FastGelu, BiasGelu, Attention,
EmbedLayerNormalization, SimplifiedLayerNormalization (RMSNorm), MatMulNBits (int4 weights) and
more. Each imports as the satura ops it stands for; satura's own rules fuse them again. The
quantized QLinear* contrib ops live in ``onnx_quant``.

Registered in ``onnx_import.CONVERTERS`` when ``onnx_converters`` imports this module.
"""

from __future__ import annotations

import math

import numpy as np
from satura.engine.graph import Value
from satura.engine.onnx_converters import Outs, norm_stats, swish_of
from satura.engine.onnx_import import CONTRIB_DOMAIN, NodeCtx, converter
from satura.engine.shapes import as_dim, normalize_axis

MS = {"domain": CONTRIB_DOMAIN}


def _wants(ctx: NodeCtx, i: int) -> bool:
    return len(ctx.node.output) > i and bool(ctx.node.output[i])


def _plus(ctx: NodeCtx, x: Value, *more: Value | None) -> Value:
    for m in more:
        if m is not None:
            x = ctx.one("add", x, m)
    return x


# -- activations --------------------------------------------------------------------------------
@converter("Gelu", "FastGelu", "BiasGelu", "QuickGelu", **MS)
def _gelus(ctx: NodeCtx) -> Outs:
    """Gelu and BiasGelu: erf GELU (of x + bias); FastGelu: the tanh form (of x + bias);
    QuickGelu: x·sigmoid(alpha·x)."""
    x = _plus(ctx, ctx.x(0), ctx.inp(1))
    if ctx.op_type == "QuickGelu":
        return [swish_of(ctx, x, default_alpha=1.702)]
    return [ctx.one("gelu", x, approximate="tanh" if ctx.op_type == "FastGelu" else "none")]


# -- normalizations -------------------------------------------------------------------------------
def _norm(ctx: NodeCtx, x: Value, gamma: Value, beta: Value | None, rms: bool) -> Outs:
    """[y, mean, inv_std_var] of LayerNorm (or RMSNorm) over the last axis; the statistics
    only where the node asks for them."""
    eps = float(ctx.attr("epsilon", 1e-12 if ctx.node.domain else 1e-5))
    axis = x.type.rank - 1
    if rms:
        y = ctx.one("rms_norm", x, gamma, axis=axis, epsilon=eps)
        if beta is not None:
            y = ctx.one("add", y, beta)
    else:
        y = ctx.one("layer_norm", x, gamma, beta, axis=axis, epsilon=eps)
    outs: Outs = [y, None, None]
    if _wants(ctx, 1) or _wants(ctx, 2):
        outs[1:] = list(norm_stats(ctx, x, (axis,), eps, rms))
    return outs


@converter("SkipLayerNormalization", "SkipSimplifiedLayerNormalization", **MS)
def _skip_norm(ctx: NodeCtx) -> Outs:
    """LayerNorm (RMSNorm for the Simplified one) of input + skip + bias; outputs y, mean,
    inv_std_var and the sum (onnxruntime's order)."""
    rms = ctx.op_type == "SkipSimplifiedLayerNormalization"
    x, skip, gamma = ctx.x(0), ctx.x(1), ctx.x(2)
    beta, bias = (None, ctx.inp(3)) if rms else (ctx.inp(3), ctx.inp(4))
    total = _plus(ctx, x, skip, bias)
    y, mean, inv = _norm(ctx, total, gamma, beta, rms)
    return [y, mean, inv, total]


@converter("SimplifiedLayerNormalization")  # onnxruntime registers it in the ONNX domain
def _simplified_norm(ctx: NodeCtx) -> Outs:
    """RMSNorm over axis..end (onnxruntime's contrib op in the default domain): y, inv_std_var."""
    x, gamma = ctx.x(0), ctx.x(1)
    axis = normalize_axis(int(ctx.attr("axis", -1)), x.type.rank)
    eps = float(ctx.attr("epsilon", 1e-5))
    y = ctx.inner("RMSNormalization", [x, gamma], opset=23, axis=axis, epsilon=eps)[0]
    if not _wants(ctx, 1):
        return [y]
    return [y, norm_stats(ctx, x, tuple(range(axis, x.type.rank)), eps, rms=True)[1]]


@converter("EmbedLayerNormalization", **MS)
def _embed_layer_norm(ctx: NodeCtx) -> Outs:
    """LayerNorm(word[ids] + position[position_ids or 0..S-1] + segment[segment_ids]);
    outputs y, the mask index (each row's count of kept tokens, int32) and the sum."""
    ids, seg_ids = ctx.x(0), ctx.inp(1)
    word, pos, seg = ctx.x(2), ctx.x(3), ctx.inp(4)
    gamma, beta, mask, pos_ids = ctx.x(5), ctx.inp(6), ctx.inp(7), ctx.inp(8)
    if ids.type.rank != 2:
        raise ctx.fail(f"input_ids must be [batch, sequence], got {tuple(ids.type.shape)}")
    s = ids.type.shape[1]
    if pos_ids is None:
        if not isinstance(s, int):
            raise ctx.fail(f"without position_ids the sequence length must be static, got {s}")
        pos_ids = ctx.imp.add_const(np.arange(s, dtype=np.int64)[None], f"{ctx.name}_pos")
    total = ctx.one("add", ctx.one("gather", word, ids, axis=0), ctx.one("gather", pos, pos_ids))
    if seg is not None and seg_ids is not None:
        total = ctx.one("add", total, ctx.one("gather", seg, seg_ids, axis=0))
    eps = float(ctx.attr("epsilon", 1e-12))
    y = ctx.one("layer_norm", total, gamma, beta, axis=2, epsilon=eps)
    index = None
    if _wants(ctx, 1):
        m = (
            mask
            if mask is not None
            else ctx.one("constant_of_shape", shape=tuple(ids.type.shape), value=1.0, dtype="int32")
        )
        index = ctx.one("reduce_sum", ctx.one("cast", m, to="int32"), axes=(1,), keepdims=0)
    return [y, index, total]


# -- products -----------------------------------------------------------------------------------
@converter("FusedMatMul", **MS)
def _fused_matmul(ctx: NodeCtx) -> Outs:
    """alpha · op(A) @ op(B), op transposing the last two axes where transA/transB say."""
    if ctx.attr("transBatchA", 0) or ctx.attr("transBatchB", 0):
        raise ctx.fail("transBatchA/transBatchB are not supported")
    a, b = ctx.x(0), ctx.x(1)

    def t(v: Value) -> Value:
        r = v.type.rank
        return ctx.one("transpose", v, perm=(*range(r - 2), r - 1, r - 2))

    if ctx.attr("transA", 0):
        a = t(a)
    if ctx.attr("transB", 0):
        b = t(b)
    y = ctx.one("matmul", a, b)
    alpha = float(ctx.attr("alpha", 1.0))
    return [y if alpha == 1.0 else ctx.one("mul", y, ctx.scalar(alpha, y))]


@converter("MatMulNBits", **MS)
def _matmul_nbits(ctx: NodeCtx) -> Outs:
    """A @ dequantized(B)ᵀ (+ bias): B's blocks of ``block_size`` ``bits``-bit integers along K,
    each with a scale and a zero point (default 2^(bits-1)), dequantized once at import."""
    a = ctx.x(0)
    k, n = int(ctx.attr("K")), int(ctx.attr("N"))
    bits, block = int(ctx.attr("bits", 4)), int(ctx.attr("block_size"))
    packed, scales = ctx.const(1), ctx.const(2)
    if packed is None or scales is None:
        raise ctx.fail("the packed weights and scales (inputs 1, 2) must be constants")
    if bits not in (2, 4, 8) or ctx.has(4):
        raise ctx.fail(f"bits={bits}{' with g_idx' if ctx.has(4) else ''} is not supported")
    blocks = -(-k // block)
    q = _unpack(packed, n, bits)[:, : blocks * block].reshape(n, blocks, block)
    if ctx.has(3):
        zp = ctx.const(3)
        if zp is None:
            raise ctx.fail("the zero points (input 3) must be a constant")
        zp = np.asarray(zp)
        # uint8: packed like the weights, rows padded to whole bytes; else one per block
        z = _unpack(zp, n, bits)[:, :blocks] if zp.dtype == np.uint8 else zp.reshape(n, blocks)
    else:
        z = np.full((n, blocks), 1 << (bits - 1))
    w = (q - z[..., None]) * np.asarray(scales, np.float32).reshape(n, blocks)[..., None]
    wt = np.ascontiguousarray(w.reshape(n, -1)[:, :k].T).astype(a.type.dtype)
    y = ctx.one("matmul", a, ctx.imp.add_const(wt, f"{ctx.name}_w"))
    return [_plus(ctx, y, ctx.inp(5))]


def _unpack(packed: np.ndarray, rows: int, bits: int) -> np.ndarray:
    """``rows`` rows of ``bits``-bit unsigned integers packed low bits first into bytes."""
    b = np.unpackbits(
        np.asarray(packed, np.uint8).reshape(rows, -1)[..., None], axis=-1, bitorder="little"
    )
    return (b.reshape(rows, -1, bits) * (1 << np.arange(bits))).sum(-1)


# -- attention ----------------------------------------------------------------------------------
def _additive_mask(ctx: NodeCtx, mask: Value, batch: object, t: object) -> Value:
    """A com.microsoft mask index as an additive [B, 1, S or 1, T] float mask: a raw 0/1 mask
    ([B, T] or [B, S, T]) gives ``mask_filter_value`` where 0; [B] gives the keys' end."""
    fill = float(ctx.attr("mask_filter_value", -10000.0))
    if mask.type.rank == 1:  # each row's key count: keys at or past it are masked
        if not isinstance(t, int):
            raise ctx.fail(f"a 1-D mask index needs a static key length, got {t}")
        keys = ctx.imp.add_const(np.arange(t, dtype=np.int64)[None], f"{ctx.name}_keys")
        ends = ctx.one("reshape", ctx.one("cast", mask, to="int64"), shape=(batch, 1))
        keep = ctx.one("less", keys, ends)
        mask = ctx.one("cast", keep, to="float32")
    elif mask.type.rank not in (2, 3):
        raise ctx.fail(f"a mask index of rank {mask.type.rank} is not supported")
    raw = ctx.one("cast", mask, to="float32")
    one = ctx.imp.add_const(np.array(1.0, np.float32), f"{ctx.name}_one")
    add = ctx.one("mul", ctx.one("sub", one, raw), ctx.scalar(fill, raw))
    shape = (batch, 1, 1, t) if add.type.rank == 2 else (batch, 1, *add.type.shape[1:])
    return ctx.one("reshape", add, shape=shape)


def _mha(
    ctx: NodeCtx,
    q: Value,
    k: Value,
    v: Value,
    heads: int,
    mask: Value | None,
    bias: Value | None,
    past: tuple[Value, Value] | None = None,
) -> list[Value | None]:
    """softmax(q·kᵀ·scale + mask + bias)·v over [B, S, heads·D] inputs, as ONNX's Attention
    (keys after the past ones, [B, heads, P, D]): [y, present key, present value]."""
    d = q.type.shape[-1]
    if not isinstance(d, int) or d % heads:
        raise ctx.fail(f"hidden size {d} is not a multiple of num_heads {heads}")
    scale = ctx.attr("scale")
    scale = float(scale) if scale else 1.0 / math.sqrt(d // heads)
    extra = mask if bias is None else (bias if mask is None else ctx.one("add", mask, bias))
    pk, pv = past if past is not None else (None, None)
    return ctx.inner(
        "Attention",
        [q, k, v, extra, pk, pv],
        opset=23,
        q_num_heads=heads,
        kv_num_heads=heads,
        scale=scale,
        is_causal=int(ctx.attr("unidirectional", 0)),
    )


@converter("Attention", **MS)
def _ms_attention(ctx: NodeCtx) -> Outs:
    """onnxruntime's BERT and GPT-2 attention: q, k, v = split(x @ W + b), then multi-head
    attention with the mask index, the attention bias (input 5) and a key-value cache: past
    [2, B, heads, P, D] in, present [2, B, heads, P + S, D] out."""
    if ctx.attr("do_rotary", 0) or ctx.attr("past_present_share_buffer", 0):
        raise ctx.fail("do_rotary and past_present_share_buffer are not supported")
    x, w = ctx.x(0), ctx.x(1)
    heads = int(ctx.attr("num_heads"))
    h = w.type.shape[-1]
    sizes = tuple(ctx.attr("qkv_hidden_sizes", ()) or (h // 3,) * 3)
    if not isinstance(h, int) or sum(sizes) != h or sizes[0] != sizes[1]:
        raise ctx.fail(f"weights of width {h} do not split as q, k, v sizes {sizes}")
    qkv = _plus(ctx, ctx.one("matmul", x, w), ctx.inp(2))
    q, k, v = ctx.emit("split", [qkv], axis=qkv.type.rank - 1, sizes=sizes)
    past = None
    if ctx.has(4):
        kv = ctx.x(4)
        if kv.type.rank != 5 or kv.type.shape[0] != 2:
            raise ctx.fail(f"past must be [2, B, heads, P, D], got {tuple(kv.type.shape)}")
        pk, pv = ctx.emit("split", [kv], axis=0, sizes=(1, 1))
        shape = tuple(kv.type.shape[1:])
        past = (ctx.one("reshape", pk, shape=shape), ctx.one("reshape", pv, shape=shape))
    mask = ctx.inp(3)
    batch, s = x.type.shape[0], x.type.shape[1]
    if mask is not None:
        total = s if past is None else as_dim(s + past[0].type.shape[2])
        mask = _additive_mask(ctx, mask, batch, total)
    y, pk, pv = _mha(ctx, q, k, v, heads, mask, ctx.inp(5), past)[:3]
    if not _wants(ctx, 1):
        return [y]
    assert pk is not None
    assert pv is not None
    shape = (1, *pk.type.shape)
    both = [ctx.one("reshape", t, shape=shape) for t in (pk, pv)]
    return [y, ctx.emit("concat", both, axis=0)[0]]


@converter("MultiHeadAttention", **MS)
def _ms_mha(ctx: NodeCtx) -> Outs:
    """Separate [B, S, D] query, key and value (+ their packed bias), a key padding mask and an
    attention bias: multi-head attention."""
    if any(ctx.has(i) for i in (6, 7, 8, 9)) or _wants(ctx, 1):
        raise ctx.fail("past/present (a key-value cache) is not supported")
    q, k, v = ctx.x(0), ctx.inp(1), ctx.inp(2)
    if k is None or v is None or k.type.rank != 3 or q.type.rank != 3:
        raise ctx.fail("packed query/key/value layouts are not supported: give 3-D q, k and v")
    bias = ctx.inp(3)
    if bias is not None:
        dq, dk = q.type.shape[-1], k.type.shape[-1]
        bq, bk, bv = ctx.emit(
            "split", [bias], axis=0, sizes=(dq, dk, int(bias.type.shape[0]) - dq - dk)
        )
        q, k, v = ctx.one("add", q, bq), ctx.one("add", k, bk), ctx.one("add", v, bv)
    mask = ctx.inp(4)
    if mask is not None:
        mask = _additive_mask(ctx, mask, q.type.shape[0], k.type.shape[1])
    return [_mha(ctx, q, k, v, int(ctx.attr("num_heads")), mask, ctx.inp(5))[0]]


# -- convolutions -------------------------------------------------------------------------------
_ACTS = {"Relu": "relu", "Tanh": "tanh", "Sigmoid": "sigmoid"}


@converter("FusedConv", **MS)
def _fused_conv(ctx: NodeCtx) -> Outs:
    """Conv (+ Z) then the ``activation`` named by the attribute."""
    conv = {
        k: ctx.attrs[k]
        for k in ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")
        if k in ctx.attrs
    }
    y = ctx.inner("Conv", [ctx.x(0), ctx.x(1), ctx.inp(2)], **conv)[0]
    assert y is not None
    y = _plus(ctx, y, ctx.inp(3))
    return [_activation(ctx, y, list(ctx.attr("activation_params", ()) or ()))]


@converter("FusedGemm", **MS)
def _fused_gemm(ctx: NodeCtx) -> Outs:
    """Gemm then the ``activation`` named by the attribute (its parameter ``activation_alpha``)."""
    gemm = {k: ctx.attrs[k] for k in ("alpha", "beta", "transA", "transB") if k in ctx.attrs}
    y = ctx.inner("Gemm", [ctx.x(0), ctx.x(1), ctx.inp(2)], **gemm)[0]
    assert y is not None
    alpha = ctx.attr("activation_alpha")
    return [_activation(ctx, y, [] if alpha is None else [alpha])]


def _activation(ctx: NodeCtx, y: Value, params: list) -> Value:
    """``y`` through the node's ``activation`` attribute (none when absent)."""
    act = ctx.attr("activation", "")
    if not act:
        return y
    if act in _ACTS:
        return ctx.one(_ACTS[act], y)
    if act == "LeakyRelu":
        return ctx.one("leaky_relu", y, alpha=float(params[0]) if params else 0.01)
    if act == "Clip" and len(params) == 2:
        return ctx.one("clip", y, ctx.scalar(params[0], y, "lo"), ctx.scalar(params[1], y, "hi"))
    if act == "HardSigmoid":
        alpha, beta = (params + [0.2, 0.5][len(params) :])[:2]
        return ctx.one("hard_sigmoid", y, alpha=float(alpha), beta=float(beta))
    raise ctx.fail(f"activation {act!r} is not supported")


@converter("RotaryEmbedding", **MS)
def _ms_rotary(ctx: NodeCtx) -> Outs:
    """onnxruntime's rotary embedding (input, position_ids, cos_cache, sin_cache): ONNX's
    RotaryEmbedding, a [1] position_ids being the first position of every row."""
    if ctx.attr("is_packed_batching", 0) or float(ctx.attr("scale", 1.0)) != 1.0:
        raise ctx.fail("is_packed_batching and scale != 1 are not supported")
    x, pos = ctx.x(0), ctx.x(1)
    b, s = x.type.shape[0], x.type.shape[2 if x.type.rank == 4 else 1]
    if pos.type.rank < 2:  # an offset: positions offset .. offset + S - 1
        if not isinstance(s, int):
            raise ctx.fail(f"a position offset needs a static sequence length, got {s}")
        steps = ctx.imp.add_const(np.arange(s, dtype=np.int64)[None], f"{ctx.name}_steps")
        first = ctx.one("reshape", ctx.one("cast", pos, to="int64"), shape=(1, 1))
        pos = ctx.one("expand", ctx.one("add", first, steps), shape=(b, s))
    attrs = {
        k: ctx.attrs[k]
        for k in ("interleaved", "num_heads", "rotary_embedding_dim")
        if k in ctx.attrs
    }
    return ctx.inner("RotaryEmbedding", [x, ctx.x(2), ctx.x(3), pos], opset=23, **attrs)


@converter("GroupQueryAttention", **MS)
def _group_query_attention(ctx: NodeCtx) -> Outs:
    """onnxruntime's GQA with separate past and present caches [B, kv_heads, P, D]: keys after
    the past ones, query i of row b at position ``seqlens_k[b] + 1 - S + i`` (rotated there when
    ``do_rotary``) seeing the keys up to it. Rows are taken as unpadded: a shared past/present
    buffer, padded prompts and local windows are not supported."""
    if ctx.attr("local_window_size", -1) != -1 or any(ctx.has(i) for i in range(9, 14)):
        raise ctx.fail("local_window_size and inputs past the sin cache are not supported")
    heads, kv_heads = int(ctx.attr("num_heads")), int(ctx.attr("kv_num_heads"))
    q, k, v = ctx.x(0), ctx.inp(1), ctx.inp(2)
    b, s = q.type.shape[0], q.type.shape[1]
    if k is None or v is None:  # packed [B, S, (heads + 2 kv_heads) · D]
        width = q.type.shape[-1]
        if not isinstance(width, int) or width % (heads + 2 * kv_heads):
            raise ctx.fail(f"packed width {width} does not split into {heads}+2x{kv_heads} heads")
        d = width // (heads + 2 * kv_heads)
        q, k, v = ctx.emit("split", [q], axis=2, sizes=(heads * d, kv_heads * d, kv_heads * d))
    d = q.type.shape[-1] // heads
    past_k, past_v = ctx.inp(3), ctx.inp(4)
    if (past_k is None) != (past_v is None):
        raise ctx.fail("past_key and past_value must be given together")
    if not isinstance(s, int):
        raise ctx.fail(f"the query length must be static, got {s}")
    past = 0 if past_k is None else past_k.type.shape[2]
    total = as_dim(s + past)
    if not isinstance(total, int):
        raise ctx.fail(f"the key length must be static, got {total}")
    # positions: seqlens_k[b] + 1 - S + i, shape [B, S]
    last = ctx.one("reshape", ctx.one("cast", ctx.x(5), to="int64"), shape=(b, 1))
    first = ctx.one("sub", last, ctx.imp.add_const(np.array(s - 1, np.int64), f"{ctx.name}_s"))
    steps = ctx.imp.add_const(np.arange(s, dtype=np.int64)[None], f"{ctx.name}_i")
    pos = ctx.one("add", first, steps)
    if ctx.attr("do_rotary", 0):
        rot = {"interleaved": int(ctx.attr("rotary_interleaved", 0))}
        cos, sin = ctx.x(7), ctx.x(8)
        q = ctx.inner("RotaryEmbedding", [q, cos, sin, pos], opset=23, num_heads=heads, **rot)[0]
        k = ctx.inner("RotaryEmbedding", [k, cos, sin, pos], opset=23, num_heads=kv_heads, **rot)[0]
    # key j is seen by query i where j <= pos[b, i]: a bool [B, 1, S, T] mask
    keys = ctx.imp.add_const(np.arange(total, dtype=np.int64)[None, None], f"{ctx.name}_j")
    seen = ctx.one("less_equal", keys, ctx.one("reshape", pos, shape=(b, s, 1)))
    mask = ctx.one("reshape", seen, shape=(b, 1, s, total))
    scale = ctx.attr("scale")
    extra = {"softcap": float(ctx.attr("softcap"))} if ctx.attr("softcap") else {}
    # outputs: y and the present key and value (this step's after the past ones)
    return ctx.inner(
        "Attention",
        [q, k, v, mask, past_k, past_v],
        opset=23,
        q_num_heads=heads,
        kv_num_heads=kv_heads,
        scale=float(scale) if scale else 1.0 / math.sqrt(d),
        **extra,
    )[:3]
