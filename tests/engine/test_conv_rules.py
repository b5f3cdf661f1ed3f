"""Convolution rules: BatchNorm folds into the weights, the activation into the epilogue, and the
ops over weights that the folding leaves are computed at compile time."""

from __future__ import annotations

import numpy as np
import pytest
from satura.engine.graph import Graph
from satura.engine.interpret import run_graph

import satura


def _conv_bn_relu(bias: bool, group: int, strides: tuple[int, int]) -> Graph:
    rng = np.random.default_rng(7)
    c, m = 4, 6
    g = Graph("conv_bn")
    x = g.add_input("x", (2, c, 9, 7))
    w = g.add_const(rng.standard_normal((m, c // group, 3, 3)).astype(np.float32), "w")
    ins = [x, w] + ([g.add_const(rng.standard_normal(m).astype(np.float32), "b")] if bias else [])
    y = g.apply("conv", *ins, strides=strides, pads=(1, 0, 1, 1), group=group)
    params = [
        g.add_const(a.astype(np.float32), n)
        for a, n in (
            (rng.standard_normal(m), "scale"),
            (rng.standard_normal(m), "shift"),
            (rng.standard_normal(m), "mean"),
            (rng.random(m) + 0.5, "var"),
        )
    ]
    y = g.apply("batch_norm", y, *params, epsilon=1e-3)
    g.set_outputs(g.apply("relu", y))
    return g


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(("group", "strides"), [(1, (1, 1)), (2, (2, 1))])
def test_batch_norm_and_relu_fold_into_the_conv(
    bias: bool, group: int, strides: tuple[int, int]
) -> None:
    g = _conv_bn_relu(bias, group, strides)
    res = satura.optimize(g)
    ops = [n.op for n in res.graph.nodes]
    assert ops == ["conv"], ops
    conv = res.graph.nodes[0]
    assert conv.attrs["act"] == "relu"
    assert conv.attrs["group"] == group
    assert tuple(conv.attrs["strides"]) == strides
    assert all(v.is_const for v in conv.inputs[1:])  # folded weights and bias are data
    assert res.cost_after < res.cost_before
    feeds = {"x": np.random.default_rng(1).standard_normal((2, 4, 9, 7)).astype(np.float32)}
    want = run_graph(g, feeds)[g.outputs[0].name]
    got = run_graph(res.graph, feeds)[res.graph.outputs[0].name]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
