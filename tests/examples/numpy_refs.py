"""Numpy forward passes of the example architectures, written from the papers' formulas.

They read weights by initializer name from a hand-built model and never look at its nodes, so
they check the graph wiring (head split, mask direction, rotary halves, GQA repeat) independently.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import numpy_helper

_erf = np.frompyfunc(math.erf, 1, 1)


def weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Initializers by name, as float64 (int/bool ones keep their dtype)."""
    out = {}
    for t in model.graph.initializer:
        a = numpy_helper.to_array(t)
        out[t.name] = a.astype(np.float64) if a.dtype == np.float32 else a
    return out


def gelu_erf(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)).astype(np.float64))


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def lin(w: dict[str, np.ndarray], x: np.ndarray, name: str, bias: bool = True) -> np.ndarray:
    y = x @ w[f"{name}.weight"]
    return y + w[f"{name}.bias"] if bias else y


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, add_mask: np.ndarray) -> np.ndarray:
    """q, k, v: [b, h, s, d]; add_mask broadcasts to [b, h, s, s]."""
    scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(q.shape[-1]) + add_mask
    return softmax(scores) @ v


def split_heads(x: np.ndarray, heads: int) -> np.ndarray:
    b, s, h = x.shape
    return x.reshape(b, s, heads, h // heads).transpose(0, 2, 1, 3)


def merge_heads(x: np.ndarray) -> np.ndarray:
    b, h, s, d = x.shape
    return x.transpose(0, 2, 1, 3).reshape(b, s, h * d)


def causal(s: int) -> np.ndarray:
    """Additive causal mask [s, s]: 0 on and below the diagonal, -1e30 above."""
    return np.where(np.tril(np.ones((s, s), dtype=bool)), 0.0, -1e30)


def mlp(w: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    return lin(w, gelu_erf(lin(w, x, "fc1")), "fc2")


def gpt2_block(w: dict[str, np.ndarray], x: np.ndarray, heads: int = 4) -> np.ndarray:
    h = x.shape[-1]
    a = layer_norm(x, w["ln_1.weight"], w["ln_1.bias"], 1e-5)
    qkv = lin(w, a, "attn/c_attn")
    q, k, v = (split_heads(qkv[..., i * h : (i + 1) * h], heads) for i in range(3))
    x = x + lin(w, merge_heads(attention(q, k, v, causal(x.shape[1]))), "attn/c_proj")
    m = layer_norm(x, w["ln_2.weight"], w["ln_2.bias"], 1e-5)
    return x + lin(w, gelu_tanh(lin(w, m, "mlp/c_fc")), "mlp/c_proj")


def bert_block(
    w: dict[str, np.ndarray], x: np.ndarray, mask: np.ndarray, heads: int = 4
) -> np.ndarray:
    add_mask = (1.0 - mask[:, None, None, :]) * -10000.0
    q, k, v = (
        split_heads(lin(w, x, f"attention/self/{n}"), heads) for n in ("query", "key", "value")
    )
    ctx = merge_heads(attention(q, k, v, add_mask))
    p = "attention/output/"
    h1 = layer_norm(
        lin(w, ctx, p + "dense") + x, w[p + "LayerNorm.weight"], w[p + "LayerNorm.bias"], 1e-12
    )
    h = lin(w, gelu_erf(lin(w, h1, "intermediate/dense")), "output/dense")
    return layer_norm(h + h1, w["output/LayerNorm.weight"], w["output/LayerNorm.bias"], 1e-12)


def rope(x: np.ndarray, theta: float = 10000.0) -> np.ndarray:
    """Rotary embedding on [b, h, s, d], pairs (i, i + d/2) rotated by position * theta^(-2i/d)."""
    s, d = x.shape[2], x.shape[3]
    ang = np.arange(s)[:, None] * theta ** (-np.arange(0, d, 2) / d)[None, :]
    c, sn = np.cos(ang), np.sin(ang)
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return np.concatenate([x1 * c - x2 * sn, x2 * c + x1 * sn], axis=-1)


def llama_block(
    w: dict[str, np.ndarray], x: np.ndarray, q_heads: int = 8, kv_heads: int = 2
) -> np.ndarray:
    a = rms_norm(x, w["input_layernorm.weight"], 1e-6)
    q = rope(split_heads(lin(w, a, "self_attn/q_proj", bias=False), q_heads))
    k = rope(split_heads(lin(w, a, "self_attn/k_proj", bias=False), kv_heads))
    v = split_heads(lin(w, a, "self_attn/v_proj", bias=False), kv_heads)
    rep = q_heads // kv_heads
    k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)  # q head j uses kv head j // rep
    x = x + lin(
        w, merge_heads(attention(q, k, v, causal(x.shape[1]))), "self_attn/o_proj", bias=False
    )
    m = rms_norm(x, w["post_attention_layernorm.weight"], 1e-6)
    g = lin(w, m, "mlp/gate_proj", bias=False)
    u = lin(w, m, "mlp/up_proj", bias=False)
    return x + lin(w, g / (1.0 + np.exp(-g)) * u, "mlp/down_proj", bias=False)


def conv2d(x: np.ndarray, w: np.ndarray, stride: int, pad: int) -> np.ndarray:
    """x [n, c, h, w], w [o, c, k, k] -> [n, o, h', w'] (cross-correlation, zero padding)."""
    k = w.shape[-1]
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(2, 3))[
        :, :, ::stride, ::stride
    ]
    return np.einsum("nchwij,ocij->nohw", win, w)


def batch_norm(x: np.ndarray, w: dict[str, np.ndarray], p: str, eps: float = 1e-5) -> np.ndarray:
    def c(a: np.ndarray) -> np.ndarray:
        return a[None, :, None, None]

    norm = (x - c(w[f"{p}.running_mean"])) / np.sqrt(c(w[f"{p}.running_var"]) + eps)
    return norm * c(w[f"{p}.weight"]) + c(w[f"{p}.bias"])


def max_pool(x: np.ndarray, k: int, stride: int, pad: int) -> np.ndarray:
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=-np.inf)
    win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(2, 3))[
        :, :, ::stride, ::stride
    ]
    return win.max(axis=(-2, -1))


def resnet_small(w: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    def conv_bn(t: np.ndarray, p: str, stride: int) -> np.ndarray:
        k = w[f"{p}.conv.weight"].shape[-1]
        return batch_norm(conv2d(t, w[f"{p}.conv.weight"], stride, k // 2), w, f"{p}.bn")

    def block(t: np.ndarray, p: str, stride: int) -> np.ndarray:
        h = conv_bn(np.maximum(conv_bn(t, f"{p}/0", stride), 0.0), f"{p}/1", 1)
        skip = conv_bn(t, f"{p}/downsample", stride) if f"{p}/downsample.conv.weight" in w else t
        return np.maximum(h + skip, 0.0)

    h = max_pool(np.maximum(conv_bn(x, "stem", 1), 0.0), 3, 2, 1)
    h = block(block(h, "layer1", 1), "layer2", 2)
    return h.mean(axis=(2, 3)) @ w["fc.weight"].T + w["fc.bias"]
