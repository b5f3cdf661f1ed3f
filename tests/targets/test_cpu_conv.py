"""Convolution and pooling kernels against the numpy references, over a grid of window shapes."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from satura.engine.graph import Graph
from satura.targets import compile_graph
from satura.targets import conv as conv_mod

from tests.targets.helpers import reference

pytestmark = pytest.mark.llvm


def check(graph, feeds, threads=2, rtol=1e-4):
    model = compile_graph(graph, threads=threads)
    got = model(**feeds)
    want = reference(graph, feeds)
    for name, w in want.items():
        scale = float(np.max(np.abs(w[np.isfinite(w)]), initial=1.0))
        np.testing.assert_allclose(got[name], w, rtol=rtol, atol=rtol * scale, err_msg=name)
    assert model.fallback_nodes == [], model.fallback_nodes
    return model


def conv_graph(x, m, k, bias=True, seed=0, relu_node=False, **attrs):
    """One conv over input shape ``x`` with ``m`` output channels and a k×k (or (kh, kw))
    constant kernel; returns the graph and its feeds."""
    rng = np.random.default_rng(seed)
    kh, kw = (k, k) if isinstance(k, int) else k
    g = Graph("conv")
    xv = g.add_input("x", x)
    w = rng.standard_normal((m, x[1] // attrs.get("group", 1), kh, kw)).astype(np.float32)
    ins = [xv, g.add_const(w, "w")]
    if bias:
        ins.append(g.add_const(rng.standard_normal(m).astype(np.float32), "b"))
    y = g.apply("conv", *ins, **attrs)
    if relu_node:
        y = g.apply("relu", y)
    g.set_outputs(y)
    return g, {"x": rng.standard_normal(x).astype(np.float32)}


# kernel × stride × groups; odd channels and spatial sizes, batch 1 and 3, bias on and off,
# relu on and off, symmetric "same" pads.
GRID = list(itertools.product((1, 3, 5, 7), (1, 2), ("1", "2", "dw")))


@pytest.mark.parametrize(("k", "stride", "groups"), GRID)
def test_conv_grid(k, stride, groups):
    i = GRID.index((k, stride, groups))
    c, m, group = {"1": (3 + 2 * (i % 2), 5 + 2 * (i % 3), 1), "2": (6, 10, 2), "dw": (5, 5, 5)}[
        groups
    ]
    batch = 3 if i % 2 else 1
    p = k // 2
    g, feeds = conv_graph(
        (batch, c, 13, 11),
        m,
        k,
        bias=i % 3 != 0,
        seed=i,
        strides=(stride, stride),
        pads=(p, p, p, p),
        group=group,
        act="relu" if i % 2 == 0 else "none",
    )
    check(g, feeds)


@pytest.mark.parametrize(
    ("x", "m", "k", "attrs"),
    [
        ((1, 3, 9, 11), 5, 3, {"pads": (0, 1, 2, 0)}),  # asymmetric pads
        ((2, 5, 10, 7), 6, (3, 2), {"strides": (2, 1), "pads": (1, 0, 0, 1)}),
        ((1, 4, 12, 13), 7, 3, {"dilations": (2, 2), "act": "relu"}),  # dilation, no pads
        ((3, 5, 15, 14), 4, 3, {"dilations": (2, 2), "pads": (2, 2, 2, 2), "strides": (2, 2)}),
        ((1, 3, 17, 19), 8, 5, {"dilations": (2, 1), "pads": (3, 1, 2, 2), "strides": (1, 2)}),
        ((1, 8, 5, 5), 3, 1, {}),  # 1×1: flat, in place
        ((2, 9, 7, 9), 11, 1, {"strides": (2, 2)}),  # 1×1 strided: flat
        ((1, 6, 9, 9), 12, 3, {"group": 6, "pads": (1, 1, 1, 1)}),  # depthwise ×2
        ((3, 4, 7, 7), 8, 3, {"group": 2, "pads": (1, 1, 1, 1), "act": "sigmoid"}),
        ((1, 2, 3, 3), 2, 3, {"pads": (1, 1, 1, 1), "act": "gelu"}),  # 3×3 output
        ((1, 5, 1, 9), 3, (1, 3), {"pads": (0, 1, 0, 1)}),  # one row
        ((1, 48, 41, 39), 32, 3, {"pads": (1, 1, 1, 1)}),  # parallel shares
        ((2, 32, 7, 7), 40, 3, {"pads": (1, 1, 1, 1), "act": "relu"}),  # narrow rows
        ((1, 16, 14, 28), 20, 3, {"strides": (2, 2), "pads": (1, 1, 1, 1)}),
        # a ViT patch embedding: 16×16 phase planes, whose IR names (phase 1_10, 11_0, ...) once
        # collided
        ((1, 3, 48, 64), 8, 16, {"strides": (16, 16)}),
        ((1, 2, 23, 23), 4, 11, {"strides": (11, 11), "pads": (0, 0, 1, 1)}),
        # rows long enough for the vector phase-plane copy of strides 2 to 4
        ((2, 3, 21, 45), 5, 3, {"strides": (2, 2), "pads": (1, 1, 1, 1)}),
        ((1, 4, 13, 61), 6, 5, {"strides": (3, 3), "pads": (2, 2, 1, 1)}),
        ((1, 3, 16, 96), 8, 4, {"strides": (4, 4)}),  # a Swin patch embedding
        ((1, 8, 9, 40), 8, 3, {"strides": (2, 2), "pads": (1, 1, 1, 1), "group": 8}),
        # costly activations, applied in a pass over the stored tile: partial vectors, and
        # several channel blocks (only the last one applies it)
        ((2, 5, 9, 11), 7, 3, {"pads": (1, 1, 1, 1), "act": "tanh"}),
        ((1, 256, 16, 16), 16, 3, {"pads": (1, 1, 1, 1), "act": "silu"}),
        # more than MAX_UNROLLED_TAPS taps: the micro-kernel loops over kernel rows
        ((2, 3, 30, 30), 16, 7, {"strides": (2, 2), "pads": (3, 3, 3, 3), "act": "relu"}),
        ((1, 40, 20, 21), 24, 9, {"pads": (4, 4, 4, 4)}),
        ((1, 3, 40, 40), 8, 11, {"strides": (4, 4), "pads": (2, 2, 2, 2)}),
        ((1, 4, 3, 60), 5, (1, 40), {"pads": (0, 2, 0, 2)}),  # one kernel row: unrolled
    ],
)
def test_conv_cases(x, m, k, attrs):
    g, feeds = conv_graph(x, m, k, seed=x[1] + m, **attrs)
    check(g, feeds)


@pytest.mark.parametrize(
    ("x", "m", "k", "attrs"),
    [
        ((2, 24, 30, 30), 24, 3, {"strides": (2, 2), "pads": (1, 1, 1, 1), "group": 24}),
        ((1, 6, 9, 9), 12, 3, {"pads": (1, 1, 1, 1), "group": 6}),  # depth multiplier 2
        ((3, 5, 15, 14), 5, 3, {"dilations": (2, 2), "pads": (2, 2, 2, 2), "group": 5}),
        ((1, 7, 11, 13), 7, 3, {"pads": (0, 1, 2, 0), "group": 7, "act": "relu"}),
        ((1, 16, 56, 56), 16, 5, {"pads": (2, 2, 2, 2), "group": 16, "act": "sigmoid"}),
    ],
)
@pytest.mark.parametrize("threads", [1, 2])
def test_depthwise_plane_by_plane(x, m, k, attrs, threads):
    """Groups of one input plane: each plane's phase planes are written and convolved in one
    work unit (no separate pass over the whole input)."""
    g, feeds = conv_graph(x, m, k, seed=x[1] + m, **attrs)
    model = check(g, feeds, threads=threads)
    assert not any(name.endswith("_prep") for name in model.kernels), model.kernels


@pytest.mark.parametrize(
    ("x", "m", "k", "attrs"),
    [
        ((2, 5, 37), 7, 3, {"pads": (1, 2), "act": "relu"}),
        ((1, 6, 50), 9, 5, {"strides": (2,), "dilations": (2,), "pads": (3, 0), "group": 3}),
        ((3, 4, 9), 4, 1, {}),
        ((2, 8, 37), 8, 3, {"strides": (2,), "pads": (1, 1), "group": 8}),  # depthwise
    ],
)
def test_conv_1d(x, m, k, attrs):
    """1-D convolutions run as 2-D windows of height 1."""
    rng = np.random.default_rng(8)
    g = Graph("conv1d")
    xv = g.add_input("x", x)
    w = rng.standard_normal((m, x[1] // attrs.get("group", 1), k)).astype(np.float32)
    g.set_outputs(
        g.apply(
            "conv",
            xv,
            g.add_const(w),
            g.add_const(rng.standard_normal(m).astype(np.float32)),
            **attrs,
        )
    )
    check(g, {"x": rng.standard_normal(x).astype(np.float32)})


@pytest.mark.parametrize("bias", [True, False])
def test_conv_relu_node_fused(bias):
    g, feeds = conv_graph((2, 5, 9, 10), 7, 3, bias=bias, relu_node=True, pads=(1, 1, 1, 1))
    model = check(g, feeds)
    assert len([k for k in model.kernels if not k.endswith("_prep")]) == 1, model.kernels


@pytest.mark.parametrize(
    ("x", "m", "k", "attrs"),
    [
        ((1, 37, 11, 16), 9, 3, {"pads": (1, 1, 1, 1)}),
        ((2, 20, 8, 8), 14, 1, {}),
        (
            (1, 12, 10, 32),
            12,
            3,
            {"group": 2, "strides": (2, 2), "pads": (0, 1, 1, 0), "act": "relu"},
        ),
        ((3, 9, 5, 16), 7, 3, {"pads": (1, 1, 1, 1)}),
        ((1, 8, 32, 58), 120, 3, {"strides": (2, 2), "pads": (1, 1, 1, 1)}),  # row-split panels
    ],
)
def test_conv_channel_blocks(monkeypatch, x, m, k, attrs):
    """A small L1 budget splits the input channels into several accumulated blocks (rows of
    whole 8- and 16-lane vectors: tiles ending in a partial vector keep one block)."""
    monkeypatch.setattr(conv_mod, "L1_BUDGET", 600)
    g, feeds = conv_graph(x, m, k, seed=3, **attrs)
    model = check(g, feeds, threads=1)
    assert "addold:" in model.llvm_ir  # partial sums added back


@pytest.mark.parametrize(
    ("x", "m", "k", "attrs"),
    [
        ((2, 13, 7, 7), 40, 3, {"pads": (1, 1, 1, 1), "act": "relu"}),
        ((2, 13, 6, 16), 40, 3, {"pads": (1, 1, 1, 1), "act": "relu"}),
        ((1, 10, 9, 12), 25, 1, {}),
        ((3, 8, 11, 9), 16, 3, {"group": 2, "strides": (2, 2), "pads": (1, 0, 0, 1)}),
    ],
)
@pytest.mark.parametrize("l1", [600, 1 << 20])
def test_conv_units_by_weight_blocks(monkeypatch, x, m, k, attrs, l1):
    """Weights too big for L2: work units take a few output-channel blocks and walk every row
    (with and without channel blocks)."""
    monkeypatch.setattr(conv_mod, "WEIGHTS_IN_L2", 1000)
    monkeypatch.setattr(conv_mod, "WEIGHT_UNIT", 2000)
    monkeypatch.setattr(conv_mod, "L1_BUDGET", l1)
    g, feeds = conv_graph(x, m, k, seed=5, **attrs)
    check(g, feeds)


@pytest.mark.parametrize(
    ("x", "m", "k", "attrs"),
    [
        ((1, 8, 29, 58), 120, 3, {"strides": (2, 2), "pads": (1, 1, 1, 1), "act": "relu"}),
        ((3, 6, 20, 35), 122, 3, {"strides": (2, 2), "pads": (0, 1, 2, 1)}),
        ((2, 8, 23, 45), 240, 5, {"strides": (2, 2), "pads": (2, 2, 2, 2), "group": 2}),
        ((1, 4, 17, 39), 120, 3, {"strides": (1, 2), "dilations": (2, 1), "pads": (2, 1, 2, 1)}),
    ],
)
def test_conv_packed_row_split(x, m, k, attrs):
    """Strided convs with many output channels pack tiles of the flat output, each vector
    gathered across a row end (rows not a multiple of the tile)."""
    g, feeds = conv_graph(x, m, k, seed=9, **attrs)
    model = check(g, feeds)
    assert "udiv exact" in model.llvm_ir  # the row-split packing ran


@pytest.mark.parametrize("threads", [1, 2])
def test_conv_one_thread_and_two_agree(threads):
    g, feeds = conv_graph((1, 64, 30, 30), 64, 3, pads=(1, 1, 1, 1), act="relu")
    check(g, feeds, threads=threads)


def test_conv_runtime_weight_falls_back():
    g = Graph("conv")
    x = g.add_input("x", (1, 3, 8, 8))
    w = g.add_input("w", (4, 3, 3, 3))
    g.set_outputs(g.apply("conv", x, w))
    model = compile_graph(g, threads=1)
    rng = np.random.default_rng(0)
    feeds = {
        "x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32),
        "w": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
    }
    name = g.outputs[0].name
    np.testing.assert_allclose(
        model(**feeds)[name], reference(g, feeds)[name], rtol=1e-5, atol=1e-5
    )
    assert len(model.fallback_nodes) == 1


# -- pooling ------------------------------------------------------------------------------------
def pool_graph(op, x, seed=0, **attrs):
    rng = np.random.default_rng(seed)
    g = Graph(op)
    xv = g.add_input("x", x)
    g.set_outputs(g.apply(op, xv, **attrs))
    return g, {"x": rng.standard_normal(x).astype(np.float32)}


POOLS = [
    ((1, 3, 13, 11), {"kernel": (3, 3), "strides": (2, 2), "pads": (1, 1, 1, 1)}),
    ((3, 5, 12, 12), {"kernel": (2, 2), "strides": (2, 2)}),
    ((2, 4, 9, 10), {"kernel": (3, 3), "strides": (1, 1), "pads": (1, 1, 1, 1)}),
    ((1, 5, 17, 15), {"kernel": (5, 5), "strides": (2, 2), "pads": (2, 1, 0, 2)}),
    ((1, 3, 11, 11), {"kernel": (3, 3), "strides": (2, 2), "ceil_mode": 1}),
    ((2, 3, 10, 9), {"kernel": (3, 2), "strides": (2, 3), "pads": (1, 0, 1, 1), "ceil_mode": 1}),
    ((1, 2, 7, 7), {"kernel": (7, 7)}),
    ((1, 3, 8, 40), {"kernel": (3, 3), "strides": (1, 1)}),
    ((1, 4, 30, 31), {"kernel": (3, 3), "strides": (2, 2), "pads": (1, 1, 1, 1)}),
    ((2, 3, 9, 53), {"kernel": (3, 3), "strides": (2, 2), "pads": (1, 1, 1, 1)}),  # vector prep
]


@pytest.mark.parametrize(("x", "attrs"), POOLS)
def test_max_pool(x, attrs):
    g, feeds = pool_graph("max_pool", x, **attrs)
    check(g, feeds)


@pytest.mark.parametrize("op", ["max_pool", "avg_pool"])
def test_pool_1d(op):
    g, feeds = pool_graph(op, (2, 3, 29), kernel=(3,), strides=(2,), pads=(1, 0), ceil_mode=1)
    check(g, feeds)


def test_max_pool_dilated():
    g, feeds = pool_graph(
        "max_pool",
        (2, 3, 13, 12),
        kernel=(3, 3),
        strides=(2, 1),
        pads=(2, 1, 2, 1),
        dilations=(2, 2),
    )
    check(g, feeds)


@pytest.mark.parametrize("include", [0, 1])
@pytest.mark.parametrize(("x", "attrs"), POOLS)
def test_avg_pool(x, attrs, include):
    g, feeds = pool_graph("avg_pool", x, count_include_pad=include, **attrs)
    check(g, feeds)


@pytest.mark.parametrize(
    "x", [(1, 3, 7, 7), (2, 5, 13, 11), (3, 64, 8, 8), (2, 3, 37), (1, 2, 3, 4, 5), (1, 1, 1, 1)]
)
def test_global_avg_pool(x):
    g, feeds = pool_graph("global_avg_pool", x)
    check(g, feeds)


def test_resnet_like_chain():
    """conv+relu -> max pool -> conv (stride 2) -> global average pool, one compiled model."""
    rng = np.random.default_rng(7)
    g = Graph("net")
    x = g.add_input("x", (2, 3, 32, 32))

    def w(*s):
        return g.add_const((rng.standard_normal(s) * 0.2).astype(np.float32))

    h = g.apply("conv", x, w(16, 3, 3, 3), w(16), pads=(1, 1, 1, 1), act="relu")
    h = g.apply("max_pool", h, kernel=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1))
    h = g.apply("conv", h, w(32, 16, 3, 3), w(32), pads=(1, 1, 1, 1), strides=(2, 2))
    g.set_outputs(g.apply("global_avg_pool", g.apply("relu", h)))
    check(g, {"x": rng.standard_normal((2, 3, 32, 32)).astype(np.float32)})


@pytest.mark.parametrize("bias", [True, False])
def test_conv_batch_norm_relu_folded(bias):
    """conv -> batch_norm -> relu becomes one kernel with the normalization in the weights."""
    rng = np.random.default_rng(11)
    g, feeds = conv_graph((2, 6, 9, 8), 7, 3, bias=bias, pads=(1, 1, 1, 1))
    y = g.outputs[0]
    params = [
        rng.standard_normal(7),
        rng.standard_normal(7),
        rng.standard_normal(7),
        rng.random(7) + 0.1,
    ]
    bn = g.apply(
        "batch_norm", y, *(g.add_const(p.astype(np.float32)) for p in params), epsilon=1e-3
    )
    g.set_outputs(g.apply("relu", bn))
    model = check(g, feeds)
    assert [k for k in model.kernels if not k.endswith("_prep")] == ["k0_conv_bn_relu"]


def test_conv_batch_norm_not_folded_when_conv_output_is_read_twice():
    rng = np.random.default_rng(12)
    g, feeds = conv_graph((1, 4, 6, 6), 3, 3, pads=(1, 1, 1, 1))
    y = g.outputs[0]
    bn = g.apply(
        "batch_norm", y, *(g.add_const((rng.random(3) + 0.5).astype(np.float32)) for _ in range(4))
    )
    g.set_outputs(bn, y)
    model = compile_graph(g, threads=1)
    want = reference(g, feeds)
    got = model(**feeds)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-5)
