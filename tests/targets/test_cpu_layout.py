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
@pytest.mark.parametrize(("shape", "perm"), [
    ((2, 3, 4, 5), (0, 2, 1, 3)), ((2, 3, 4, 5), (0, 1, 3, 2)), ((7, 9), (1, 0)),
    ((3, 1, 5), (2, 0, 1)), ((6,), (0,))])
def test_transpose(dtype, shape, perm):
    rng = np.random.default_rng(0)
    g = Graph("t")
    x = g.add_input("x", shape, dtype)
    g.set_outputs(g.apply("transpose", x, perm=perm))
    _check(g, {"x": _data(shape, dtype, rng)})


@pytest.mark.parametrize("dtype", ["float32", "bool"])
@pytest.mark.parametrize(("starts", "ends", "axes", "steps"), [
    ((1,), (4,), (1,), (1,)), ((0, 2), (2, 9), (0, 2), (1, 3)), ((-2,), (-100,), (2,), (-1,)),
    ((5,), (9223372036854775807,), (-1,), (2,)), ((0, 0), (1, 1), (1, 2), (1, 1))])
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
@pytest.mark.parametrize(("axis", "shapes"), [
    (0, [(1, 4, 3), (2, 4, 3)]), (1, [(2, 1, 3), (2, 5, 3), (2, 2, 3)]),
    (-1, [(2, 4, 3), (2, 4, 1)])])
def test_concat(dtype, axis, shapes):
    rng = np.random.default_rng(3)
    g = Graph("c")
    xs = [g.add_input(f"x{i}", s, dtype) for i, s in enumerate(shapes)]
    g.set_outputs(g.apply("concat", *xs, axis=axis))
    _check(g, {f"x{i}": _data(s, dtype, rng) for i, s in enumerate(shapes)})
