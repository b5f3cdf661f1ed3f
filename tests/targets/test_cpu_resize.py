"""The resize kernel (targets/resize.py) against the numpy reference: nearest (any element size)
and linear (float32), every coordinate transform, up and down, one and two threads."""

from __future__ import annotations

import numpy as np
import pytest
from satura.engine.errors import ShapeError
from satura.engine.graph import Graph
from satura.targets import compile_graph

from tests.targets.helpers import reference

pytestmark = pytest.mark.llvm

COORDS = ["half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners", "asymmetric"]


def _graph(shape, sizes, scales, dtype="float32", **attrs):
    g = Graph("resize")
    x = g.add_input("x", shape, dtype)
    g.set_outputs(g.apply("resize", x, sizes=sizes, scales=scales, **attrs))
    return g


def _check(g, x, threads=1):
    m = compile_graph(g, threads=threads)
    assert m.fallback_nodes == []
    got = m(x=x)[g.outputs[0].name]
    want = reference(g, {"x": x})[g.outputs[0].name]
    assert got.dtype == want.dtype
    if x.dtype == np.float32 and g.nodes[0].attrs.get("mode") == "linear":
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    else:
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("coord", COORDS)
@pytest.mark.parametrize("mode", ["nearest", "linear"])
@pytest.mark.parametrize(
    ("shape", "sizes", "scales"),
    [
        ((2, 3, 5, 7), (2, 3, 10, 14), (1.0, 1.0, 2.0, 2.0)),  # torch's scale_factor=2
        ((1, 2, 9, 6), (1, 2, 4, 5), (1.0, 1.0, 4 / 9, 5 / 6)),  # down, by sizes
        ((3, 4, 11), (3, 4, 17), (1.0, 1.0, 17 / 11)),  # one axis, rank 3
        ((13,), (5,), (0.4,)),  # rank 1, down by scale
    ],
)
def test_resize_matches_reference(shape, sizes, scales, mode, coord):
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    _check(_graph(shape, sizes, scales, mode=mode, coordinate_transformation_mode=coord), x)


@pytest.mark.parametrize(
    "nearest_mode", ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"]
)
@pytest.mark.parametrize("dtype", ["int64", "uint8", "bool", "float32"])
def test_nearest_copies_any_element(dtype, nearest_mode):
    x = (np.random.default_rng(1).standard_normal((2, 2, 6, 5)) * 9).astype(dtype)
    g = _graph(
        x.shape,
        (2, 2, 9, 3),
        (1.0, 1.0, 1.5, 0.6),
        dtype,
        mode="nearest",
        nearest_mode=nearest_mode,
    )
    _check(g, x)


def test_two_threads():
    x = np.random.default_rng(2).standard_normal((4, 8, 32, 32)).astype(np.float32)
    g = _graph(x.shape, (4, 8, 64, 64), (1.0, 1.0, 2.0, 2.0), mode="linear")
    _check(g, x, threads=2)


def test_channel_resize_falls_back():
    """Only the last two axes have a kernel; other axes run the reference."""
    x = np.random.default_rng(3).standard_normal((1, 4, 3, 3)).astype(np.float32)
    g = _graph(x.shape, (1, 8, 3, 3), (1.0, 2.0, 1.0, 1.0), mode="nearest")
    m = compile_graph(g)
    assert len(m.fallback_nodes) == 1
    np.testing.assert_array_equal(
        m(x=x)[g.outputs[0].name], reference(g, {"x": x})[g.outputs[0].name]
    )


@pytest.mark.parametrize("scale", [float("nan"), 0.0, float("inf"), -2.0])
def test_scales_that_give_no_coordinates_are_a_shape_error(scale):
    """The coordinate transforms divide by the scale: a NaN tap became index -2**63, which the
    kernel read unchecked (0 raised ZeroDivisionError in half_pixel_symmetric)."""
    with pytest.raises(ShapeError, match=r"scales .* must be finite and positive"):
        _graph(
            (1, 1, 2, 2),
            (1, 1, 4, 4),
            (1.0, 1.0, scale, 2.0),
            coordinate_transformation_mode="half_pixel_symmetric",
        )


def test_taps_outside_the_input_are_not_compiled(monkeypatch):
    """The kernel reads x at its tap tables unchecked, so a table entry outside its axis (which
    resize_taps never gives) makes the node a numpy fallback rather than a kernel."""
    from satura.targets import resize

    def bad_taps(n_in, n_out, scale, at):
        i = np.full(n_out, n_in, np.int64)
        return i, i, np.zeros(n_out)

    monkeypatch.setattr(resize, "resize_taps", bad_taps)
    g = _graph((1, 1, 2, 2), (1, 1, 4, 4), (1.0, 1.0, 2.0, 2.0))
    assert compile_graph(g, threads=1).fallback_nodes == ["resize"]
