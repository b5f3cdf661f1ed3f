"""Elementwise ops: unary maths, binary arithmetic with numpy broadcasting, comparisons, logic."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from satura.engine.errors import ShapeError
from satura.engine.ops.registry import AttrSpec, OpInfo, elementwise_work, register, same_dtype
from satura.engine.shapes import DimOps, Shape

_erf = np.frompyfunc(math.erf, 1, 1)


def erf(x: np.ndarray) -> np.ndarray:
    return np.asarray(_erf(x.astype(np.float64)), dtype=np.float64).astype(x.dtype)


def gelu_ref(x: np.ndarray, approximate: str = "none") -> np.ndarray:
    if approximate == "tanh":
        c = np.sqrt(2.0 / np.pi)
        return (0.5 * x * (1.0 + np.tanh(c * (x + 0.044715 * x**3)))).astype(x.dtype)
    return (0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))).astype(x.dtype)


def unary_shape(d: DimOps, ins: Sequence[Shape | None], attrs: Any) -> list[Shape]:
    assert ins[0] is not None
    return [tuple(ins[0])]


def broadcast_shape(d: DimOps, ins: Sequence[Shape | None], attrs: Any) -> list[Shape]:
    return [d.broadcast_shapes(*[s for s in ins if s is not None])]


def _bool_dtype(ins: Sequence[str | None], attrs: Any) -> list[str]:
    return ["bool"]


def _keep(x: np.ndarray, like: np.ndarray) -> np.ndarray:
    return np.asarray(x).astype(like.dtype, copy=False)


# name: (onnx op, numpy function, flops per element, extra traits)
UNARY: dict[str, tuple[str, Callable[..., np.ndarray], float, tuple[str, ...]]] = {
    "neg": ("Neg", np.negative, 1, ()),
    "abs": ("Abs", np.abs, 1, ()),
    "sqrt": ("Sqrt", np.sqrt, 4, ()),
    "reciprocal": ("Reciprocal", np.reciprocal, 4, ()),
    "exp": ("Exp", np.exp, 8, ("transcendental",)),
    "log": ("Log", np.log, 8, ("transcendental",)),
    "tanh": ("Tanh", np.tanh, 10, ("transcendental",)),
    "erf": ("Erf", erf, 10, ("transcendental",)),
    "relu": ("Relu", lambda x: np.maximum(x, np.zeros((), x.dtype)), 1, ()),
    "sigmoid": ("Sigmoid", lambda x: _keep(1.0 / (1.0 + np.exp(-x)), x), 10, ("transcendental",)),
    "silu": ("", lambda x: _keep(x / (1.0 + np.exp(-x)), x), 11, ("transcendental",)),
    "floor": ("Floor", np.floor, 1, ()),
    "round": ("Round", np.round, 1, ()),  # half to even, as ONNX
    "ceil": ("Ceil", np.ceil, 1, ()),
    "sin": ("Sin", np.sin, 10, ("transcendental",)),
    "cos": ("Cos", np.cos, 10, ("transcendental",)),
    "atan": ("Atan", np.arctan, 12, ("transcendental",)),
    "asin": ("Asin", np.arcsin, 12, ("transcendental",)),
    "acos": ("Acos", np.arccos, 12, ("transcendental",)),
    "asinh": ("Asinh", np.arcsinh, 16, ("transcendental",)),
    "acosh": ("Acosh", np.arccosh, 16, ("transcendental",)),
    "atanh": ("Atanh", np.arctanh, 16, ("transcendental",)),
    "not": ("Not", np.logical_not, 1, ("logic",)),
    "bitwise_not": ("BitwiseNot", np.bitwise_not, 1, ("bitwise",)),
    "isnan": ("IsNaN", np.isnan, 1, ("predicate",)),
    "identity": ("Identity", lambda x: x, 0, ("view",)),
}

for _name, (_onnx, _fn, _flops, _traits) in UNARY.items():
    register(
        OpInfo(
            name=_name,
            shape=unary_shape,
            reference=(lambda fn: lambda ins, at: [np.asarray(fn(ins[0]))])(_fn),
            dtype=_bool_dtype if _name == "isnan" else same_dtype,
            work=(lambda f: lambda i, o, a: elementwise_work(i, o, a, f))(_flops),
            onnx=(_onnx,) if _onnx else (),
            traits=frozenset({"elementwise", "unary", *_traits}),
            doc=f"elementwise {_name}",
        )
    )

register(
    OpInfo(
        name="gelu",
        shape=unary_shape,
        reference=lambda ins, at: [gelu_ref(ins[0], at["approximate"])],
        attrs={"approximate": AttrSpec("str", "none")},
        work=lambda i, o, a: elementwise_work(i, o, a, 14),
        onnx=("Gelu",),
        traits=frozenset({"elementwise", "unary", "transcendental"}),
        doc="GELU: x·Φ(x) (erf form) or its tanh approximation",
    )
)

register(
    OpInfo(
        name="leaky_relu",
        shape=unary_shape,
        reference=lambda ins, at: [
            _keep(np.where(ins[0] >= 0, ins[0], ins[0] * at["alpha"]), ins[0])
        ],
        attrs={"alpha": AttrSpec("float", 0.01)},
        onnx=("LeakyRelu",),
        traits=frozenset({"elementwise", "unary"}),
        doc="x if x >= 0 else alpha·x",
    )
)

register(
    OpInfo(
        name="cast",
        shape=unary_shape,
        reference=lambda ins, at: [ins[0].astype(at["to"])],
        dtype=lambda ins, at: [at["to"]],
        attrs={"to": AttrSpec("dtype")},
        onnx=("Cast",),
        traits=frozenset({"elementwise", "unary"}),
        doc="convert to dtype `to`",
    )
)


def _bitcast_ref(ins: Sequence[np.ndarray | None], at: Any) -> list[np.ndarray]:
    x = ins[0]
    assert x is not None
    return [np.array(x, copy=True).view(at["to"])]


def _bitcast_dtype(ins: Sequence[str | None], at: Any) -> list[str]:
    src = ins[0] or "float32"
    if np.dtype(src).itemsize != np.dtype(at["to"]).itemsize:
        raise ShapeError(f"bitcast from {src} to {at['to']} changes the element width")
    return [at["to"]]


register(
    OpInfo(
        name="bitcast",
        shape=unary_shape,
        reference=_bitcast_ref,
        dtype=_bitcast_dtype,
        attrs={"to": AttrSpec("dtype")},
        onnx=("BitCast",),
        traits=frozenset({"elementwise", "unary"}),
        doc="the same bits read as dtype `to` (of the same width)",
    )
)


def _clip_ref(ins: Sequence[np.ndarray | None], at: Any) -> list[np.ndarray]:
    x, lo, hi = ([*list(ins), None, None])[:3]
    out = x
    if lo is not None:
        out = np.maximum(out, lo.astype(x.dtype))
    if hi is not None:
        out = np.minimum(out, hi.astype(x.dtype))
    return [np.asarray(out, dtype=x.dtype)]


register(
    OpInfo(
        name="clip",
        shape=lambda d, ins, at: [tuple(ins[0])],  # type: ignore[index]
        reference=_clip_ref,
        inputs=(1, 3),
        onnx=("Clip",),
        traits=frozenset({"elementwise"}),
        doc="clamp to [min, max] (scalar inputs 2 and 3)",
    )
)


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a / b; integers divide truncating toward zero (C and ONNX), not flooring (numpy)."""
    if not np.issubdtype(a.dtype, np.integer):
        return a / b
    q = a // b
    return np.where((q < 0) & (q * b != a), q + 1, q)


# name: (onnx op, numpy function, flops per element, traits)
BINARY: dict[str, tuple[str, Callable[..., np.ndarray], float, tuple[str, ...]]] = {
    "add": ("Add", np.add, 1, ("commutative", "associative")),
    "sub": ("Sub", np.subtract, 1, ()),
    "mul": ("Mul", np.multiply, 1, ("commutative", "associative")),
    "div": ("Div", lambda a, b: _div(a, b), 4, ()),
    "pow": ("Pow", lambda a, b: np.power(a, b.astype(a.dtype)), 10, ("transcendental",)),
    "max": ("Max", np.maximum, 1, ("commutative", "associative")),
    "min": ("Min", np.minimum, 1, ("commutative", "associative")),
    "equal": ("Equal", np.equal, 1, ("commutative", "predicate")),
    "less": ("Less", np.less, 1, ("predicate",)),
    "less_equal": ("LessOrEqual", np.less_equal, 1, ("predicate",)),
    "greater": ("Greater", np.greater, 1, ("predicate",)),
    "greater_equal": ("GreaterOrEqual", np.greater_equal, 1, ("predicate",)),
    "and": ("And", np.logical_and, 1, ("commutative", "associative", "logic")),
    "or": ("Or", np.logical_or, 1, ("commutative", "associative", "logic")),
    "bitwise_and": ("BitwiseAnd", np.bitwise_and, 1, ("bitwise",)),
    "bitwise_or": ("BitwiseOr", np.bitwise_or, 1, ("bitwise",)),
    "bitwise_xor": ("BitwiseXor", np.bitwise_xor, 1, ("bitwise",)),
    # ONNX's BitShift (one op with a direction): an amount outside [0, bits) gives 0, or the
    # sign for a right shift of a signed integer
    "shift_left": ("", lambda a, b: _shift(a, b, left=True), 1, ("bitwise",)),
    "shift_right": ("", lambda a, b: _shift(a, b, left=False), 1, ("bitwise",)),
}


def _shift(a: np.ndarray, b: np.ndarray, left: bool) -> np.ndarray:
    a, b = np.broadcast_arrays(a, b.astype(a.dtype, copy=False))
    bits = a.dtype.itemsize * 8
    u = a.view(f"u{a.dtype.itemsize}") if a.dtype.kind == "i" else a
    amount = b.astype(np.int64)
    ok = (amount >= 0) & (amount < bits)
    safe = np.where(ok, amount, 0).astype(u.dtype)
    if left:
        return np.where(ok, np.left_shift(u, safe).view(a.dtype), 0).astype(a.dtype)
    fill = np.where(a < 0, -1, 0) if a.dtype.kind == "i" else 0
    return np.where(ok, np.right_shift(a, safe.astype(a.dtype)), fill).astype(a.dtype)


def _binary_ref(fn: Callable[..., np.ndarray]) -> Callable[..., list[np.ndarray]]:
    def ref(ins: Sequence[np.ndarray | None], at: Any) -> list[np.ndarray]:
        a, b = ins
        assert a is not None
        assert b is not None
        out = np.asarray(fn(a, b))
        if out.dtype != np.bool_ and out.dtype != a.dtype:
            out = out.astype(a.dtype)
        return [out]

    return ref


for _name, (_onnx, _fn, _flops, _traits) in BINARY.items():
    register(
        OpInfo(
            name=_name,
            shape=broadcast_shape,
            reference=_binary_ref(_fn),
            inputs=(2, 2),
            dtype=_bool_dtype if "predicate" in _traits else same_dtype,
            work=(lambda f: lambda i, o, a: elementwise_work(i, o, a, f))(_flops),
            onnx=(_onnx,) if _onnx else (),
            traits=frozenset({"elementwise", "binary", *_traits}),
            doc=f"elementwise {_name} with numpy broadcasting",
        )
    )


def _where_dtype(ins: Sequence[str | None], at: Any) -> list[str]:
    return [ins[1] or "float32"]


register(
    OpInfo(
        name="where",
        shape=broadcast_shape,
        inputs=(3, 3),
        dtype=_where_dtype,
        reference=lambda ins, at: [np.where(ins[0], ins[1], ins[2])],  # type: ignore[arg-type]
        onnx=("Where",),
        traits=frozenset({"elementwise"}),
        doc="cond ? a : b, broadcast",
    )
)


def _mod_ref(ins: Sequence[np.ndarray | None], at: Any) -> list[np.ndarray]:
    a, b = ins
    assert a is not None
    assert b is not None
    fn = np.fmod if at["fmod"] else np.mod  # floats too: ONNX's float fmod=0 cases are np.mod
    with np.errstate(all="ignore"):
        return [np.asarray(fn(a, b)).astype(a.dtype)]


register(
    OpInfo(
        name="mod",
        shape=broadcast_shape,
        reference=_mod_ref,
        inputs=(2, 2),
        attrs={"fmod": AttrSpec("int", 0)},
        onnx=("Mod",),
        work=lambda i, o, a: elementwise_work(i, o, a, 4),
        traits=frozenset({"elementwise", "binary"}),
        doc="remainder: sign of the divisor (fmod=0) or of the dividend (fmod=1, C fmod)",
    )
)


def _unary_attr_op(
    name: str,
    onnx_op: str,
    fn: Callable[..., np.ndarray],
    attrs: dict[str, AttrSpec],
    flops: float,
    doc: str,
) -> None:
    register(
        OpInfo(
            name=name,
            shape=unary_shape,
            attrs=attrs,
            onnx=(onnx_op,),
            reference=lambda ins, at: [_keep(fn(ins[0], at), ins[0])],  # type: ignore[arg-type]
            work=lambda i, o, a: elementwise_work(i, o, a, flops),
            traits=frozenset({"elementwise", "unary", "transcendental"}),
            doc=doc,
        )
    )


_unary_attr_op(
    "elu",
    "Elu",
    lambda x, at: np.where(x > 0, x, at["alpha"] * np.expm1(x)),
    {"alpha": AttrSpec("float", 1.0)},
    10,
    "x if x > 0 else alpha·(exp(x) - 1)",
)
_unary_attr_op("softplus", "Softplus", lambda x, at: np.logaddexp(0, x), {}, 12, "log(1 + exp(x))")
_unary_attr_op(
    "hard_sigmoid",
    "HardSigmoid",
    lambda x, at: np.clip(at["alpha"] * x + at["beta"], 0, 1),
    {"alpha": AttrSpec("float", 0.2), "beta": AttrSpec("float", 0.5)},
    3,
    "max(0, min(1, alpha·x + beta))",
)
