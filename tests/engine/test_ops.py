"""The op registry's meta-test: every op is complete, and its shape function agrees with its numpy
reference on random shapes (hypothesis, derandomized)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import sympy
from hypothesis import given, settings
from hypothesis import strategies as st
from satura.engine.graph import TensorType
from satura.engine.ops import OPS, Work, get_op, infer_types, run_reference
from satura.engine.ops.fused import ew_eval, ew_ops
from satura.engine.shapes import IntDims

Case = tuple[list[np.ndarray | None], dict[str, Any]]


def _f(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def _shape(rng: np.random.Generator, rank: int, lo: int = 1, hi: int = 5) -> tuple[int, ...]:
    return tuple(int(v) for v in rng.integers(lo, hi, size=rank))


def _bcast_pair(rng: np.random.Generator) -> tuple[tuple[int, ...], tuple[int, ...]]:
    a = _shape(rng, int(rng.integers(0, 4)))
    b = tuple(1 if rng.random() < 0.3 else s for s in a[int(rng.integers(0, len(a) + 1)) :])
    return (a, b) if rng.random() < 0.5 else (b, a)


def _unary(rng: np.random.Generator) -> Case:
    return [_f(rng, *_shape(rng, int(rng.integers(0, 4))))], {}


def _binary(rng: np.random.Generator) -> Case:
    a, b = _bcast_pair(rng)
    return [_f(rng, *a), _f(rng, *b)], {}


def _matmul(rng: np.random.Generator) -> Case:
    m, k, n = _shape(rng, 3)
    batch = _shape(rng, int(rng.integers(0, 3)))
    a = (*batch, m, k) if rng.random() < 0.8 else (k,)
    b = (k, n) if rng.random() < 0.5 else ((k,) if rng.random() < 0.3 else (*batch, k, n))
    return [_f(rng, *a), _f(rng, *b)], {}


def _gemm(rng: np.random.Generator) -> Case:
    m, k, n = _shape(rng, 3)
    ta, tb = int(rng.integers(0, 2)), int(rng.integers(0, 2))
    c = _f(rng, n) if rng.random() < 0.5 else _f(rng, m, n)
    return (
        [_f(rng, *((k, m) if ta else (m, k))), _f(rng, *((n, k) if tb else (k, n))), c],
        {"trans_a": ta, "trans_b": tb, "alpha": 0.5, "beta": 2.0},
    )


def _linear(rng: np.random.Generator) -> Case:
    lead = _shape(rng, int(rng.integers(1, 3)))
    k, n = _shape(rng, 2)
    act = str(rng.choice(["none", "relu", "gelu", "gelu_tanh", "silu", "sigmoid", "tanh"]))
    return [_f(rng, *lead, k), _f(rng, k, n), _f(rng, n), _f(rng, *lead, n)], {"act": act}


def _axis_op(rng: np.random.Generator) -> Case:
    s = _shape(rng, int(rng.integers(1, 4)))
    return [_f(rng, *s)], {"axis": int(rng.integers(-len(s), len(s)))}


def _norm(rng: np.random.Generator) -> Case:
    s = _shape(rng, int(rng.integers(1, 4)))
    axis = int(rng.integers(-len(s), len(s)))
    return [_f(rng, *s), _f(rng, *s[axis:])], {"axis": axis}


def _layer_norm(rng: np.random.Generator) -> Case:
    ins, at = _norm(rng)
    return [*ins, _f(rng, *ins[1].shape)], at  # type: ignore[union-attr]


def _batch_norm(rng: np.random.Generator) -> Case:
    s = _shape(rng, int(rng.integers(2, 5)))
    var = np.abs(_f(rng, s[1])) + 0.1
    return [_f(rng, *s), _f(rng, s[1]), _f(rng, s[1]), _f(rng, s[1]), var], {}


def _conv(rng: np.random.Generator) -> Case:
    nsp = int(rng.integers(1, 3))
    g = int(rng.integers(1, 3))
    c, m = g * int(rng.integers(1, 3)), g * int(rng.integers(1, 3))
    k = _shape(rng, nsp, 1, 3)
    sp = tuple(int(v) + 4 for v in _shape(rng, nsp))
    at = {
        "strides": _shape(rng, nsp, 1, 3),
        "pads": _shape(rng, 2 * nsp, 0, 2),
        "dilations": _shape(rng, nsp, 1, 3),
        "group": g,
    }
    return [_f(rng, 2, c, *sp), _f(rng, m, c // g, *k), _f(rng, m)], at


def _pool(rng: np.random.Generator, avg: bool) -> Case:
    nsp = int(rng.integers(1, 3))
    k = _shape(rng, nsp, 1, 4)
    sp = tuple(int(v) + 4 for v in _shape(rng, nsp))
    at: dict[str, Any] = {
        "kernel": k,
        "strides": _shape(rng, nsp, 1, 3),
        "pads": tuple(
            min(int(v), kk - 1) for v, kk in zip(_shape(rng, 2 * nsp, 0, 2), k + k, strict=True)
        ),
        "ceil_mode": int(rng.integers(0, 2)),
    }
    if avg:
        at["count_include_pad"] = int(rng.integers(0, 2))
    return [_f(rng, 1, 2, *sp)], at


def _attention(rng: np.random.Generator) -> Case:
    hkv, rep, sq, sk, dh = _shape(rng, 5)
    q = _f(rng, 2, hkv * rep, sq, dh)
    k, v = _f(rng, 2, hkv, sk, dh), _f(rng, 2, hkv, sk, dh)
    return [q, k, v, _f(rng, sq, sk)], {"scale": 0.3, "causal": int(sq <= sk)}


def _reduce(rng: np.random.Generator) -> Case:
    s = _shape(rng, int(rng.integers(1, 4)))
    axes = (
        None
        if rng.random() < 0.3
        else tuple(
            int(a)
            for a in rng.choice(range(len(s)), size=int(rng.integers(1, len(s) + 1)), replace=False)
        )
    )
    return [_f(rng, *s)], {"axes": axes, "keepdims": int(rng.integers(0, 2))}


def _arg(rng: np.random.Generator) -> Case:
    ins, at = _axis_op(rng)
    return ins, {**at, "keepdims": int(rng.integers(0, 2))}


def _transpose(rng: np.random.Generator) -> Case:
    s = _shape(rng, int(rng.integers(0, 4)))
    return [_f(rng, *s)], {"perm": tuple(int(p) for p in rng.permutation(len(s)))}


def _reshape(rng: np.random.Generator) -> Case:
    s = _shape(rng, int(rng.integers(1, 4)))
    return [_f(rng, *s)], {"shape": (int(np.prod(s)) // s[0], s[0])}


def _concat(rng: np.random.Generator) -> Case:
    s = _shape(rng, int(rng.integers(1, 4)))
    axis = int(rng.integers(0, len(s)))
    xs = [_f(rng, *s[:axis], int(rng.integers(1, 4)), *s[axis + 1 :]) for _ in range(3)]
    return list(xs), {"axis": axis}


def _split(rng: np.random.Generator) -> Case:
    ins, at = _axis_op(rng)
    n = ins[0].shape[at["axis"]]  # type: ignore[union-attr]
    cut = int(rng.integers(0, n + 1))
    return ins, {**at, "sizes": (cut, n - cut)}


def _slice(rng: np.random.Generator) -> Case:
    s = _shape(rng, int(rng.integers(1, 4)), 1, 7)
    axes = tuple(int(a) for a in rng.permutation(len(s))[: int(rng.integers(1, len(s) + 1))])
    starts = tuple(int(v) for v in rng.integers(-8, 8, size=len(axes)))
    ends = tuple(int(v) for v in rng.integers(-8, 8, size=len(axes)))
    steps = tuple(int(rng.choice([-2, -1, 1, 2, 3])) for _ in axes)
    return [_f(rng, *s)], {"starts": starts, "ends": ends, "axes": axes, "steps": steps}


def _gather(rng: np.random.Generator) -> Case:
    ins, at = _axis_op(rng)
    n = ins[0].shape[at["axis"]]  # type: ignore[union-attr]
    return [ins[0], rng.integers(-n, n, size=_shape(rng, int(rng.integers(0, 3))))], at


def _gather_elements(rng: np.random.Generator) -> Case:
    ins, at = _axis_op(rng)
    x = ins[0]
    assert x is not None
    n = x.shape[at["axis"]]
    shape = list(x.shape)
    shape[at["axis"]] = int(rng.integers(1, 4))
    return [x, rng.integers(-n, n, size=shape)], at


def _nll(rng: np.random.Generator) -> Case:
    n, c = _shape(rng, 2, 1, 5)
    extra = _shape(rng, int(rng.integers(0, 2)))
    t = rng.integers(0, c, size=(n, *extra))
    red = str(rng.choice(["none", "sum", "mean"]))
    return [_f(rng, n, c, *extra), t, np.abs(_f(rng, c)) + 0.1], {
        "reduction": red,
        "ignore_index": 0,
    }


def _expand(rng: np.random.Generator) -> Case:
    a, b = _bcast_pair(rng)
    return [_f(rng, *a)], {"shape": b}


def _ew(rng: np.random.Generator) -> Case:
    a, b = _bcast_pair(rng)
    expr = ("add", ("gelu_tanh", ("mul", ("in", 0), ("const", 0.5))), ("tanh", ("in", 1)))
    return [_f(rng, *a), _f(rng, *b)], {"expr": expr}


def _scatter_nd(rng: np.random.Generator) -> Case:
    x = _f(rng, 4, 3, 2)
    idx = rng.integers(-4, 4, (5, 1)).astype(np.int64)
    return [x, idx, _f(rng, 5, 3, 2)], {"reduction": "add"}


def _scatter_elements(rng: np.random.Generator) -> Case:
    x = _f(rng, 4, 3)
    idx = rng.integers(-3, 3, (2, 3)).astype(np.int64)
    return [x, idx, _f(rng, 2, 3)], {"axis": 1, "reduction": "max"}


def _resize(rng: np.random.Generator) -> Case:
    h, w = _shape(rng, 2, 2, 6)
    oh, ow = (int(v) for v in rng.integers(1, 9, 2))
    mode = "linear" if rng.random() < 0.5 else "nearest"
    return [_f(rng, 1, 2, h, w)], {
        "sizes": (1, 2, oh, ow),
        "scales": (1.0, 1.0, oh / h, ow / w),
        "mode": mode,
    }


def _rnn(rng: np.random.Generator) -> Case:
    cell = ("rnn", "gru", "lstm")[int(rng.integers(0, 3))]
    g, h, dirs = {"rnn": 1, "gru": 3, "lstm": 4}[cell], 3, int(rng.integers(1, 3))
    seq, batch, feats = _shape(rng, 3)
    return (
        [
            _f(rng, seq, batch, feats),
            _f(rng, dirs, g * h, feats),
            _f(rng, dirs, g * h, h),
            _f(rng, dirs, 2 * g * h),
        ],
        {"cell": cell, "hidden_size": h, "direction": "bidirectional" if dirs == 2 else "forward"},
    )


def _unique(r: np.random.Generator) -> tuple[list[Any], dict[str, Any]]:
    """Small integers (repeats) as floats; along an axis or flattened, sorted or not."""
    x = r.integers(0, 3, _shape(r, 2, 1, 4)).astype(np.float32)
    axis = [None, 0, -1][int(r.integers(0, 3))]
    flat = x.reshape(-1) if axis is None else np.moveaxis(x, axis, 0).reshape(x.shape[axis], -1)
    n = len(np.unique(flat, axis=0 if axis is not None else None))
    return [x], {"count": (n,), "axis": axis, "sorted": int(r.integers(0, 2))}


def _nms(r: np.random.Generator) -> tuple[list[Any], dict[str, Any]]:
    """Overlapping random boxes; the count attribute is what the run keeps."""
    n, classes = int(r.integers(1, 7)), int(r.integers(1, 3))
    boxes = r.random((2, n, 4)).astype(np.float32)
    scores = r.random((2, classes, n)).astype(np.float32)
    ins = [boxes, scores, np.array([3]), np.array([0.3], np.float32), np.array([0.2], np.float32)]
    at = {"center_point_box": int(r.integers(0, 2))}
    (kept,) = run_reference("nms", ins, {**at, "count": (0,)})
    return ins, {**at, "count": (len(kept),)}


def _nonzero(r: np.random.Generator) -> tuple[list[Any], dict[str, Any]]:
    """A 0/1 tensor; the op's count attribute is the count the run will find."""
    x = (r.random(_shape(r, int(r.integers(1, 4)), 0, 4)) < 0.4).astype(np.float32)
    return [x], {"count": (int(np.count_nonzero(x)),)}


CASES: dict[str, Callable[[np.random.Generator], Case]] = {
    "matmul": _matmul,
    "gemm": _gemm,
    "linear": _linear,
    "softmax": _axis_op,
    "log_softmax": _axis_op,
    "layer_norm": _layer_norm,
    "rms_norm": _norm,
    "batch_norm": _batch_norm,
    "conv": _conv,
    "attention": _attention,
    "max_pool": lambda r: _pool(r, False),
    "avg_pool": lambda r: _pool(r, True),
    "global_avg_pool": lambda r: ([_f(r, 2, 3, *_shape(r, 2))], {}),
    "argmax": _arg,
    "argmin": _arg,
    "transpose": _transpose,
    "reshape": _reshape,
    "concat": _concat,
    "split": _split,
    "slice": _slice,
    "gather": _gather,
    "gather_elements": _gather_elements,
    "nll_loss": _nll,
    "expand": _expand,
    "tile": lambda r: ([_f(r, 2, 3)], {"repeats": _shape(r, 2, 1, 3)}),
    "pad": lambda r: ([_f(r, 3, 4)], {"pads": (1, -1, 0, 2)}),
    "shape_of": lambda r: ([_f(r, *_shape(r, 3))], {"start": -2}),
    "constant_of_shape": lambda r: ([], {"shape": _shape(r, 2), "value": 2.0}),
    "arange": lambda r: (
        [],
        {
            "bounds": tuple(int(b) for b in r.integers(-6, 7, 2)),
            "delta": int(r.choice([-3, -1, 1, 2])),
            "dtype": "float32",
        },
    ),
    "nonzero": _nonzero,
    "unique": _unique,
    "nms": _nms,
    "ew": _ew,
    "where": lambda r: ([r.random(3) < 0.5, _f(r, 2, 3), _f(r, 1)], {}),
    "cast": lambda r: ([_f(r, 2, 3)], {"to": "int32"}),
    "bitcast": lambda r: ([_f(r, 2, 3)], {"to": "int32"}),
    "clip": lambda r: ([_f(r, 2, 3), np.float32(-0.5), np.float32(0.5)], {}),
    "cumsum": lambda r: ([_f(r, 3, 4)], {"axis": int(r.integers(-2, 2)), "exclusive": 1}),
    "cumprod": lambda r: ([_f(r, 3, 4)], {"axis": int(r.integers(-2, 2)), "reverse": 1}),
    "trilu": lambda r: (
        [_f(r, 2, 3, 4)],
        {"upper": int(r.integers(0, 2)), "k": int(r.integers(-2, 3))},
    ),
    "gather_nd": lambda r: ([_f(r, 3, 4, 2), r.integers(-3, 3, (5, 2)).astype(np.int64)], {}),
    "scatter_nd": _scatter_nd,
    "scatter_elements": _scatter_elements,
    "topk": lambda r: ([_f(r, 3, 6)], {"k": int(r.integers(1, 7)), "axis": -1}),
    "one_hot": lambda r: (
        [r.integers(-5, 5, (2, 3)).astype(np.int64), np.asarray([0.0, 1.0], np.float32)],
        {"depth": 5, "axis": 1},
    ),
    "resize": _resize,
    "rnn": _rnn,
}


def _case(op: str, rng: np.random.Generator) -> Case:
    if op in CASES:
        return CASES[op](rng)
    info = get_op(op)
    if op.startswith("reduce_"):
        return _reduce(rng)
    assert "unary" in info.traits or "binary" in info.traits, f"no case generator for '{op}'"
    ins, attrs = _binary(rng) if "binary" in info.traits else _unary(rng)
    if "logic" in info.traits:
        ins = [np.asarray(a) > 0 for a in ins]  # type: ignore[operator]
    if "bitwise" in info.traits:  # integers; shift amounts in and out of [0, 32)
        ins = [(np.asarray(a) * 24).astype(np.int32) for a in ins]  # type: ignore[operator]
    return ins, attrs


def test_every_op_is_complete() -> None:
    for name, info in OPS.items():
        assert info.shape is not None, name
        assert info.reference is not None, name
        assert info.work is not None, name
        assert info.doc.strip(), f"{name} has no doc"
        assert all(op and op[0].isupper() for op in info.onnx), name


@pytest.mark.parametrize("op", sorted(OPS))
@settings(max_examples=15, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**32 - 1))
def test_shape_fn_matches_reference(op: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    ins, attrs = _case(op, rng)
    in_types = [
        None if a is None else TensorType(np.shape(a), np.asarray(a).dtype.name) for a in ins
    ]
    with np.errstate(all="ignore"):
        outs = run_reference(op, [None if a is None else np.asarray(a) for a in ins], attrs)
    for dims in (IntDims(), None):  # ints, then sympy (the default)
        types = infer_types(op, in_types, attrs, dims=dims)
        assert len(types) == len(outs)
        for t, o in zip(types, outs, strict=True):
            assert tuple(t.shape) == o.shape, (op, attrs)
            assert t.dtype == o.dtype.name, (op, attrs)
    w = get_op(op).work(in_types, types, get_op(op).with_defaults(attrs))
    assert isinstance(w, Work)
    assert w.flops >= 0
    assert w.bytes >= 0


def test_symbolic_shapes_stay_symbolic() -> None:
    b, s = sympy.symbols("batch seq", positive=True, integer=True)
    x = TensorType((b, s, 64), "float32")
    w = TensorType((64, 32), "float32")
    assert infer_types("matmul", [x, w], {})[0].shape == (b, s, 32)
    (t,) = infer_types("reshape", [x], {"shape": (b, s, 4, 16)})
    assert t.shape == (b, s, 4, 16)
    (t,) = infer_types(
        "slice", [x], {"starts": (1,), "ends": (2**62,), "axes": (1,), "steps": (1,)}
    )
    assert sympy.simplify(t.shape[1] - (s - 1)) == 0


def test_z3_shapes() -> None:
    z3 = pytest.importorskip("z3")
    from satura.engine.shapes import Z3Dims

    d = Z3Dims()
    m, k, n = z3.Ints("m k n")
    (out,) = get_op("matmul").shape(d, [(m, k), (k, n)], {})
    assert len(out) == 2
    (out,) = get_op("conv").shape(
        d,
        [(1, 3, m, n), (8, 3, 3, 3)],
        get_op("conv").with_defaults({"strides": (2, 2), "pads": (1, 1, 1, 1)}),
    )
    s = z3.Solver()
    s.add(m == 8)
    s.add(z3.Not(out[2] == 4))
    assert s.check() == z3.unsat


def test_ew_matches_unfused_ops() -> None:
    rng = np.random.default_rng(0)
    a, b = _f(rng, 3, 4), _f(rng, 4)
    expr = ("sigmoid", ("sub", ("in", 0), ("exp", ("in", 1))))
    want = 1.0 / (1.0 + np.exp(-(a - np.exp(b))))
    np.testing.assert_allclose(ew_eval(expr, [a, b]), want, rtol=1e-5)
    assert ew_ops(expr) == ["exp", "sub", "sigmoid"]


def test_attention_matches_softmax_matmul() -> None:
    rng = np.random.default_rng(1)
    q, k, v = _f(rng, 1, 4, 5, 8), _f(rng, 1, 2, 6, 8), _f(rng, 1, 2, 6, 8)
    (out,) = run_reference("attention", [q, k, v], {"scale": 0.25, "causal": 1})
    kk, vv = np.repeat(k, 2, axis=1), np.repeat(v, 2, axis=1)
    s = q @ kk.transpose(0, 1, 3, 2) * 0.25
    s = s + np.triu(np.full((5, 6), -np.inf), k=2)
    p = np.exp(s - s.max(-1, keepdims=True))
    want = (p / p.sum(-1, keepdims=True)) @ vv
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)
