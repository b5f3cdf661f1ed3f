"""Linear algebra: matmul (numpy semantics), ONNX Gemm, and the fused ``linear`` GEMM epilogue."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from satura.engine.ops.elementwise import gelu_ref
from satura.engine.ops.registry import AttrSpec, OpInfo, Work, io_bytes, numel, register
from satura.engine.shapes import DimOps, Shape


# -- matmul ------------------------------------------------------------------------------------
def matmul_shape(d: DimOps, ins: Sequence[Shape | None], at: Any) -> list[Shape]:
    a, b = ins
    assert a is not None
    assert b is not None
    d.require(len(a) >= 1 and len(b) >= 1, "matmul: inputs must have rank >= 1")
    a2 = (1, *a) if len(a) == 1 else tuple(a)
    b2 = (*b, 1) if len(b) == 1 else tuple(b)
    d.require(d.eq(a2[-1], b2[-2]), "matmul: inner dimensions differ")
    batch = d.broadcast_shapes(a2[:-2], b2[:-2])
    out: tuple[Any, ...] = (*batch, a2[-2], b2[-1])
    if len(b) == 1:
        out = out[:-1]
    if len(a) == 1:
        out = (*out[:-2], out[-1]) if len(b) > 1 else out[:-1]
    return [out]


def matmul_work(ins: Sequence[Any], outs: Sequence[Any], at: Any) -> Work:
    k = int(ins[0].shape[-1])
    return Work(2.0 * numel(outs[0].shape) * k, io_bytes(ins, outs))


register(
    OpInfo(
        name="matmul",
        shape=matmul_shape,
        inputs=(2, 2),
        reference=lambda ins, at: [np.matmul(ins[0], ins[1]).astype(ins[0].dtype)],  # type: ignore
        work=matmul_work,
        onnx=("MatMul",),
        traits=frozenset({"contraction"}),
        doc="numpy matmul: 1-D operands promoted and squeezed, batch dimensions broadcast",
    )
)


# -- gemm --------------------------------------------------------------------------------------
def gemm_shape(d: DimOps, ins: Sequence[Shape | None], at: Any) -> list[Shape]:
    a, b = ins[0], ins[1]
    assert a is not None
    assert b is not None
    d.require(len(a) == 2 and len(b) == 2, "gemm: A and B must be 2-D")
    m, k = (a[1], a[0]) if at["trans_a"] else (a[0], a[1])
    k2, n = (b[1], b[0]) if at["trans_b"] else (b[0], b[1])
    d.require(d.eq(k, k2), "gemm: inner dimensions differ")
    c = ins[2] if len(ins) > 2 else None
    if c is not None:
        d.require(len(c) <= 2, "gemm: C must have rank <= 2")
        d.same(d.broadcast_shapes((m, n), c), (m, n), "gemm: C does not broadcast to [M, N]")
    return [(m, n)]


def _gemm_ref(ins: Sequence[np.ndarray | None], at: Any) -> list[np.ndarray]:
    a, b = ins[0], ins[1]
    assert a is not None
    assert b is not None
    a = a.T if at["trans_a"] else a
    b = b.T if at["trans_b"] else b
    out = at["alpha"] * (a @ b)
    c = ins[2] if len(ins) > 2 else None
    if c is not None:
        out = out + at["beta"] * c
    return [np.asarray(out).astype(ins[0].dtype)]  # type: ignore[union-attr]


def gemm_work(ins: Sequence[Any], outs: Sequence[Any], at: Any) -> Work:
    a = ins[0].shape
    k = int(a[0] if at["trans_a"] else a[1])
    n = numel(outs[0].shape)
    return Work(2.0 * n * k + 2.0 * n, io_bytes(ins, outs))


register(
    OpInfo(
        name="gemm",
        shape=gemm_shape,
        reference=_gemm_ref,
        inputs=(2, 3),
        work=gemm_work,
        attrs={
            "trans_a": AttrSpec("int", 0),
            "trans_b": AttrSpec("int", 0),
            "alpha": AttrSpec("float", 1.0),
            "beta": AttrSpec("float", 1.0),
        },
        onnx=("Gemm",),
        traits=frozenset({"contraction"}),
        doc="ONNX Gemm: alpha·A'·B' + beta·C, A' and B' optionally transposed, C broadcast",
    )
)


# -- linear ------------------------------------------------------------------------------------
ACTIVATIONS = ("none", "relu", "gelu", "gelu_tanh", "silu", "sigmoid", "tanh")


def apply_act(x: np.ndarray, act: str) -> np.ndarray:
    """Apply one of :data:`ACTIVATIONS` to ``x`` (dtype kept)."""
    if act == "none":
        return x
    if act == "relu":
        return np.maximum(x, np.zeros((), x.dtype))
    if act == "gelu":
        return gelu_ref(x)
    if act == "gelu_tanh":
        return gelu_ref(x, "tanh")
    if act == "silu":
        return (x / (1.0 + np.exp(-x))).astype(x.dtype)
    if act == "sigmoid":
        return (1.0 / (1.0 + np.exp(-x))).astype(x.dtype)
    if act == "tanh":
        return np.tanh(x)
    raise ValueError(f"unknown activation '{act}'")


def linear_shape(d: DimOps, ins: Sequence[Shape | None], at: Any) -> list[Shape]:
    x, w = ins[0], ins[1]
    assert x is not None
    assert w is not None
    d.require(at["act"] in ACTIVATIONS, f"linear: unknown act '{at['act']}'")
    d.require(len(x) >= 2, "linear: x must have rank >= 2")
    d.require(len(w) == 2, "linear: w must be 2-D [K, N]")
    d.require(d.eq(x[-1], w[0]), "linear: x's last dimension differs from w's first")
    out = (*x[:-1], w[1])
    b = ins[2] if len(ins) > 2 else None
    r = ins[3] if len(ins) > 3 else None
    for extra, what in ((b, "bias"), (r, "residual")):
        if extra is not None:
            d.require(len(extra) <= len(out), f"linear: {what} has a higher rank than the output")
            d.same(
                d.broadcast_shapes(out, extra),
                out,
                f"linear: {what} does not broadcast to the output",
            )
    return [out]


def _linear_ref(ins: Sequence[np.ndarray | None], at: Any) -> list[np.ndarray]:
    x, w = ins[0], ins[1]
    assert x is not None
    assert w is not None
    out = x @ w
    if len(ins) > 2 and ins[2] is not None:
        out = out + ins[2]
    out = apply_act(np.asarray(out, dtype=x.dtype), at["act"])
    if len(ins) > 3 and ins[3] is not None:
        out = out + ins[3]
    return [np.asarray(out).astype(x.dtype)]


def linear_work(ins: Sequence[Any], outs: Sequence[Any], at: Any) -> Work:
    k = int(ins[1].shape[0])
    n = numel(outs[0].shape)
    act_flops = 0 if at["act"] in ("none", "relu") else 12
    return Work(2.0 * n * k + n * (2 + act_flops), io_bytes(ins, outs))


register(
    OpInfo(
        name="linear",
        shape=linear_shape,
        reference=_linear_ref,
        inputs=(2, 4),
        work=linear_work,
        attrs={"act": AttrSpec("str", "none")},
        traits=frozenset({"contraction", "fused"}),
        doc="act(x @ w + b) + r: x rank >= 2, w [K, N], b and r broadcast to the output",
    )
)
