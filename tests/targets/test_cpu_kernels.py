"""Compiled kernels against the numpy references, on odd sizes and broadcast shapes."""

from __future__ import annotations

import numpy as np
import pytest
from satura.engine.graph import Graph
from satura.targets import compile_graph

from tests.targets.helpers import one_node, reference

pytestmark = pytest.mark.llvm


def check(graph, feeds, rtol=2e-5, atol=2e-6, lowered=True):
    model = compile_graph(graph, threads=2)
    got = model(**feeds)
    want = reference(graph, feeds)
    for name, w in want.items():
        np.testing.assert_allclose(got[name], w, rtol=rtol, atol=atol, err_msg=name)
    if lowered:
        assert model.fallback_nodes == [], model.fallback_nodes
    return model


@pytest.mark.parametrize(
    "op",
    [
        "neg",
        "abs",
        "exp",
        "tanh",
        "erf",
        "relu",
        "sigmoid",
        "silu",
        "floor",
        "ceil",
        "reciprocal",
        "sqrt",
        "leaky_relu",
        "gelu",
    ],
)
def test_unary(op):
    g, feeds = one_node(op, [(3, 37)])
    if op in ("sqrt", "reciprocal"):
        feeds = {k: np.abs(v) + 0.5 for k, v in feeds.items()}
    if op == "exp":
        feeds = {k: v * 10 for k, v in feeds.items()}
    check(g, feeds, rtol=2e-6 if op != "exp" else 3e-6)


def test_gelu_tanh_and_wide_range():
    g, _ = one_node("gelu", [(4001,)], approximate="tanh")
    x = np.linspace(-9, 9, 4001).astype(np.float32)
    check(g, {"x0": x}, rtol=1e-5, atol=1e-6)
    g, _ = one_node("gelu", [(4001,)])
    check(g, {"x0": x}, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ((5, 7), (5, 7)),
        ((5, 7), (7,)),
        ((4, 1, 9), (3, 1)),
        ((1,), (2, 3, 17)),
        ((2, 1, 33), (2, 5, 1)),
        ((), (13,)),
    ],
)
@pytest.mark.parametrize("op", ["add", "sub", "mul", "div", "max", "min"])
def test_binary_broadcast(op, a, b):
    g, feeds = one_node(op, [a, b])
    if op == "div":
        feeds["x1"] = np.abs(feeds["x1"]) + 0.5
    check(g, feeds)


def test_fused_ew_chain_odd_size():
    expr = ("gelu", ("add", ("mul", ("in", 0), ("in", 1)), ("in", 2)))
    g, feeds = one_node("ew", [(3, 1001), (1001,), (3, 1)], expr=expr)
    check(g, feeds, rtol=1e-5, atol=2e-6)
    expr2 = ("tanh", ("sub", ("mul", ("in", 0), ("const", 0.5)), ("exp", ("in", 0))))
    g, feeds = one_node("ew", [(2, 3, 5)], expr=expr2)
    check(g, feeds)


@pytest.mark.parametrize(
    ("m", "k", "n"), [(1, 1, 1), (7, 13, 5), (37, 300, 45), (6, 16, 16), (97, 257, 50)]
)
@pytest.mark.parametrize("act", ["none", "gelu", "relu"])
def test_linear_const_weight(m, k, n, act):
    rng = np.random.default_rng(m * 1000 + k)
    w = rng.standard_normal((k, n)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    g, feeds = one_node("linear", [(m, k), (k, n), (n,), (m, n)], consts={1: w, 2: b}, act=act)
    check(g, feeds, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("a", "b"), [((2, 9, 33), (33, 17)), ((3, 10, 20), (3, 20, 7)), ((65, 70), (70, 130))]
)
def test_matmul_runtime_b(a, b):
    g, feeds = one_node("matmul", [a, b])
    check(g, feeds, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape", [(5, 33), (3, 2, 768), (1, 7)])
def test_rows(shape):
    n = shape[-1]
    rng = np.random.default_rng(n)
    s, b = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    g, feeds = one_node("softmax", [shape])
    check(g, {k: v * 5 for k, v in feeds.items()})
    g, feeds = one_node("layer_norm", [shape, (n,), (n,)], consts={1: s, 2: b})
    check(g, feeds, rtol=1e-4, atol=1e-5)
    g, feeds = one_node("rms_norm", [shape, (n,)], consts={1: s})
    check(g, feeds, rtol=1e-4, atol=1e-5)


def test_unlowered_op_falls_back_per_node():
    g, feeds = one_node("trilu", [(3, 4, 5)], k=1)  # no lowering for trilu
    model = check(g, feeds, lowered=False)
    assert model.fallback_nodes == [g.nodes[0].name]


def test_activation_fused_into_row_kernel_and_gemm():
    rng = np.random.default_rng(5)
    g = Graph("fuse")
    x = g.add_input("x", (33, 70))
    ln = g.apply("layer_norm", x, g.add_const(rng.standard_normal(70).astype(np.float32)))
    h = g.apply("gelu", ln)
    mm = g.apply("matmul", h, g.add_const(rng.standard_normal((70, 19)).astype(np.float32)))
    g.set_outputs(g.apply("tanh", mm))
    model = check(g, {"x": rng.standard_normal((33, 70)).astype(np.float32)}, rtol=1e-4, atol=1e-5)
    assert len(model.kernels) == 2, model.kernels  # layer_norm+gelu, matmul+tanh


@pytest.mark.parametrize(
    ("q", "k", "dv"), [((2, 3, 17, 8), (2, 3, 29, 8), 12), ((4, 64, 16), (4, 64, 16), 16)]
)
def test_attention(q, k, dv):
    v = (*k[:-1], dv)
    g, feeds = one_node("attention", [q, k, v], scale=0.3)
    check(g, feeds, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("x", "w", "attrs"),
    [
        ((1, 3, 9, 11), (5, 3, 3, 3), {"pads": (1, 1, 1, 1)}),
        ((2, 4, 10, 7), (6, 4, 3, 2), {"strides": (2, 1), "pads": (0, 1, 2, 0)}),
        ((1, 2, 12, 12), (7, 2, 3, 3), {"dilations": (2, 2), "act": "relu"}),
        ((1, 8, 5, 5), (3, 8, 1, 1), {}),
    ],
)
def test_conv_im2col_gemm(x, w, attrs):
    rng = np.random.default_rng(len(x) + w[0])
    consts = {
        1: rng.standard_normal(w).astype(np.float32),
        2: rng.standard_normal(w[0]).astype(np.float32),
    }
    g, feeds = one_node("conv", [x, w, (w[0],)], consts=consts, **attrs)
    check(g, feeds, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("op", "shapes"), [("add", [(), ()]), ("mul", [(0, 3), (3,)]), ("matmul", [(4, 0), (0, 3)])]
)
def test_scalar_and_empty_tensors(op, shapes):
    g, feeds = one_node(op, shapes)
    check(g, feeds, lowered=False)
