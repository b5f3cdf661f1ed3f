"""3×3 stride-1 convolutions through Winograd F(2×2, 3×3) against the numpy reference."""

from __future__ import annotations

import numpy as np
import pytest
from satura.engine.graph import Graph
from satura.targets import winograd

from tests.targets.test_cpu_conv import check, conv_graph

pytestmark = pytest.mark.llvm


def _winograd(model) -> bool:
    return any(k.endswith("_wi") for k in model.kernels)


@pytest.mark.parametrize(
    ("x", "m", "pads"),
    [
        ((1, 32, 28, 28), 32, (1, 1, 1, 1)),
        ((2, 48, 15, 15), 40, (1, 1, 1, 1)),  # odd rows and columns, two images
        ((1, 32, 11, 30), 64, (1, 1, 1, 1)),  # a partial last vector of tiles
        ((1, 40, 17, 17), 33, (0, 0, 0, 0)),  # no padding, odd channel counts
        ((1, 32, 16, 16), 32, (1, 0, 0, 1)),  # asymmetric pads (top, left, bottom, right)
        ((1, 64, 56, 56), 64, (1, 1, 1, 1)),  # whole panels of tiles a row
    ],
)
@pytest.mark.parametrize("threads", [1, 2])
def test_matches_direct_reference(x, m, pads, threads):
    g, feeds = conv_graph(x, m, 3, pads=pads)
    model = check(g, feeds, threads=threads)
    assert _winograd(model), model.kernels


def test_activation_and_batch_norm_fold():
    rng = np.random.default_rng(1)
    x = (1, 32, 14, 14)
    g = Graph("conv_bn_relu")
    xv = g.add_input("x", x)
    w = g.add_const(rng.standard_normal((48, 32, 3, 3)).astype(np.float32), "w")
    y = g.apply("conv", xv, w, pads=(1, 1, 1, 1))
    stats = [rng.standard_normal(48).astype(np.float32) for _ in range(4)]
    stats[3] = np.abs(stats[3]) + 0.5
    y = g.apply("batch_norm", y, *(g.add_const(s, f"s{i}") for i, s in enumerate(stats)))
    g.set_outputs(g.apply("relu", y))
    model = check(g, {"x": rng.standard_normal(x).astype(np.float32)})
    assert _winograd(model), model.kernels


@pytest.mark.parametrize(
    ("x", "m", "attrs"),
    [
        ((1, 16, 28, 28), 32, {"pads": (1, 1, 1, 1)}),  # too few input channels
        ((1, 32, 28, 28), 32, {"pads": (1, 1, 1, 1), "strides": (2, 2)}),
        ((1, 32, 28, 28), 32, {"pads": (2, 2, 2, 2), "dilations": (2, 2)}),
        ((1, 64, 7, 7), 64, {"pads": (1, 1, 1, 1)}),  # mostly padding tiles
    ],
)
def test_other_convolutions_stay_direct(x, m, attrs):
    g, feeds = conv_graph(x, m, 3, **attrs)
    assert not _winograd(check(g, feeds))


def test_weight_transform_is_exact_over_the_reals():
    """U = G g Gᵀ and the input/output transforms reproduce the 3×3 correlation of a tile
    (in float64: the identity, not rounding, is what is checked)."""
    rng = np.random.default_rng(2)
    g = rng.standard_normal((3, 3))
    d = rng.standard_normal((4, 4))
    bt = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], float)
    at = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], float)
    u = winograd.G @ g @ winograd.G.T
    y = at @ (u * (bt @ d @ bt.T)) @ at.T
    direct = np.array([[np.sum(d[i : i + 3, j : j + 3] * g) for j in range(2)] for i in range(2)])
    np.testing.assert_allclose(y, direct, rtol=1e-12, atol=1e-12)


def test_buffers_past_the_budget_stay_direct():
    """V and M are 4x the input and output: a large batch of large planes stays direct."""
    args = ((3, 3), (1, 1), (1, 1), (1, 1, 1, 1), 1)
    assert winograd.applies(1, 64, 64, *args, 56, 56, 8)
    assert winograd.buffer_bytes(32, 64, 64, 112, 112, 8) > winograd.MAX_BUFFER_BYTES
    assert not winograd.applies(32, 64, 64, *args, 112, 112, 8)
