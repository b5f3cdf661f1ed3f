"""Transpose, Slice, Split and Concat as generated strided copies, any dtype, vs the references."""

from __future__ import annotations

import numpy as np
import pytest
from satura.engine.graph import Graph

from tests.targets.helpers import check_compiled

pytestmark = pytest.mark.llvm

DTYPES = ["float32", "int64", "bool", "int32"]


def _data(shape, dtype, rng):
    if dtype == "bool":
        return rng.random(shape) < 0.5
    return (rng.standard_normal(shape) * 100).astype(dtype)


def _check(g, feeds):
    check_compiled(g, feeds, rtol=None)  # copies: bit for bit, dtype for dtype


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("shape", "perm"),
    [
        ((2, 3, 4, 5), (0, 2, 1, 3)),
        ((2, 3, 4, 5), (0, 1, 3, 2)),
        ((7, 9), (1, 0)),
        ((3, 1, 5), (2, 0, 1)),
        ((6,), (0,)),
        # depth-to-space interleaves: a short last dim read across, unrolled
        ((2, 2, 3, 5, 7), (2, 3, 0, 4, 1)),
        ((1, 2, 2, 4, 6, 9), (0, 3, 4, 1, 5, 2)),
        ((3, 8, 1, 10), (2, 3, 0, 1)),
        ((9, 11), (1, 0)),  # 9 rows: one past the unrolled length
        ((5, 8), (1, 0)),  # 5 rows, unrolled
    ],
)
def test_transpose(dtype, shape, perm):
    rng = np.random.default_rng(0)
    g = Graph("t")
    x = g.add_input("x", shape, dtype)
    g.set_outputs(g.apply("transpose", x, perm=perm))
    _check(g, {"x": _data(shape, dtype, rng)})


@pytest.mark.parametrize("dtype", ["float32", "bool"])
@pytest.mark.parametrize(
    ("starts", "ends", "axes", "steps"),
    [
        ((1,), (4,), (1,), (1,)),
        ((0, 2), (2, 9), (0, 2), (1, 3)),
        ((-2,), (-100,), (2,), (-1,)),
        ((5,), (9223372036854775807,), (-1,), (2,)),
        ((0, 0), (1, 1), (1, 2), (1, 1)),
    ],
)
def test_slice(dtype, starts, ends, axes, steps):
    rng = np.random.default_rng(1)
    g = Graph("s")
    x = g.add_input("x", (3, 5, 11), dtype)
    g.set_outputs(g.apply("slice", x, starts=starts, ends=ends, axes=axes, steps=steps))
    _check(g, {"x": _data((3, 5, 11), dtype, rng)})


@pytest.mark.parametrize(("axis", "sizes"), [(0, (1, 2)), (2, (3, 3, 5)), (-1, (10, 1))])
def test_split(axis, sizes):
    rng = np.random.default_rng(2)
    g = Graph("sp")
    x = g.add_input("x", (3, 4, 11))
    g.set_outputs(*g.add("split", [x], {"axis": axis, "sizes": sizes}).outputs)
    _check(g, {"x": _data((3, 4, 11), "float32", rng)})


@pytest.mark.parametrize("dtype", ["float32", "int64"])
@pytest.mark.parametrize(
    ("axis", "shapes"),
    [
        (0, [(1, 4, 3), (2, 4, 3)]),
        (1, [(2, 1, 3), (2, 5, 3), (2, 2, 3)]),
        (-1, [(2, 4, 3), (2, 4, 1)]),
    ],
)
def test_concat(dtype, axis, shapes):
    rng = np.random.default_rng(3)
    g = Graph("c")
    xs = [g.add_input(f"x{i}", s, dtype) for i, s in enumerate(shapes)]
    g.set_outputs(g.apply("concat", *xs, axis=axis))
    _check(g, {f"x{i}": _data(s, dtype, rng) for i, s in enumerate(shapes)})


CASTS = ["float32", "float64", "int64", "int32", "int8", "uint8", "bool"]


@pytest.mark.parametrize("src", CASTS)
@pytest.mark.parametrize("dst", CASTS)
def test_cast_every_pair(src, dst):
    """Cast as a generated converting copy, bit for bit what numpy's astype gives (floats in
    range of the integer type: out of range is undefined in ONNX)."""
    rng = np.random.default_rng(7)
    x = _data((3, 37), src, rng)
    if np.dtype(src).kind == "f" and np.dtype(dst).kind in "iu":
        info = np.iinfo(dst)
        x = np.clip(x, max(info.min, -120), min(info.max, 120)).astype(src)  # uint: from 0
    x.flat[:4] = (
        np.array([0, 1, -1 if dst[0] != "u" else 3, 2]).astype(src)
        if src != "bool"
        else [True, False] * 2
    )
    g = Graph("cast")
    v = g.add_input("x", x.shape, src)
    g.set_outputs(g.apply("cast", v, to=dst))
    _check(g, {"x": x})


@pytest.mark.parametrize("dtype", DTYPES)
def test_reshape_of_any_dtype(dtype):
    """A reshape is a view of its input (no kernel) inside the graph, a copy when it is an
    output; neither falls back to numpy, whatever the dtype (BERT's int64 attention mask)."""
    rng = np.random.default_rng(8)
    g = Graph("view")
    x = g.add_input("x", (4, 6), dtype)
    r = g.apply("reshape", x, shape=(2, 1, 12))
    g.set_outputs(r, g.apply("transpose", r, perm=(2, 1, 0)))
    _check(g, {"x": _data((4, 6), dtype, rng)})
