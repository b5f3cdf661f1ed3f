"""The reference executor: input validation with symbol binding, symbolic attributes."""

from __future__ import annotations

import numpy as np
import pytest
import sympy
from satura.engine.errors import InputError
from satura.engine.graph import Graph
from satura.engine.interpret import run_graph


def _graph() -> tuple[Graph, sympy.Symbol]:
    b = sympy.Symbol("batch", positive=True, integer=True)
    g = Graph()
    x = g.add_input("x", (b, 12))
    m = g.add_input("m", (b, 3, 4))
    y = g.apply("add", g.apply("reshape", x, shape=(b, 3, 4)), m)
    g.set_outputs(g.apply("softmax", y, axis=-1))
    return g, b


def _softmax(a: np.ndarray) -> np.ndarray:
    e = np.exp(a - a.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("batch", [1, 5])
def test_symbolic_reshape_is_bound_from_inputs(batch: int) -> None:
    g, _ = _graph()
    rng = np.random.default_rng(batch)
    x = rng.standard_normal((batch, 12)).astype(np.float32)
    m = rng.standard_normal((batch, 3, 4)).astype(np.float32)
    (out,) = run_graph(g, {"x": x, "m": m}).values()
    np.testing.assert_allclose(out, _softmax(x.reshape(batch, 3, 4) + m), rtol=1e-6)
    assert out.dtype == np.float32


def _bad(**over: np.ndarray) -> dict[str, np.ndarray]:
    feeds = {"x": np.zeros((2, 12), np.float32), "m": np.zeros((2, 3, 4), np.float32)}
    feeds.update(over)
    return feeds


@pytest.mark.parametrize(
    ("feeds", "pattern"),
    [
        ({"x": np.zeros((2, 12), np.float32)}, "missing input 'm'"),
        (_bad(z=np.zeros(1, np.float32)), "unknown input 'z'"),
        (_bad(x=np.zeros((2, 12), np.float64)), "input 'x': dtype float64.*float32"),
        (_bad(x=np.zeros((2, 3, 4), np.float32)), r"input 'x': shape \[2, 3, 4\] has rank 3"),
        (_bad(x=np.zeros((2, 11), np.float32)), r"input 'x': shape \[2, 11\].*\[batch, 12\]"),
        (_bad(m=np.zeros((3, 3, 4), np.float32)), r"input 'm'.*\[3, 3, 4\].*batch = 2"),
    ],
)
def test_bad_inputs_raise_one_line_input_errors(feeds: dict, pattern: str) -> None:
    g, _ = _graph()
    with pytest.raises(InputError, match=pattern) as e:
        run_graph(g, feeds)
    assert "\n" not in str(e.value)


def test_constants_and_multi_output_ops() -> None:
    g = Graph()
    x = g.add_input("x", (4, 6))
    w = g.add_const(np.arange(6, dtype=np.float32), "w")
    a, b = g.add("split", [g.apply("mul", x, w)], {"axis": 1, "sizes": (2, 4)}).outputs
    g.set_outputs(a, g.apply("reduce_sum", b, axes=(1,), keepdims=0))
    x_in = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
    out = run_graph(g, {"x": x_in})
    prod = x_in * np.arange(6, dtype=np.float32)
    np.testing.assert_allclose(out[a.name], prod[:, :2])
    np.testing.assert_allclose(out[g.outputs[1].name], prod[:, 2:].sum(1), rtol=1e-6)


def test_fold_constants_replaces_constant_nodes_and_keeps_results() -> None:
    from satura.engine.fold import fold_constants

    g = Graph()
    x = g.add_input("x", (3,))
    c = g.apply("exp", g.add_const(np.array([0.0, 1.0, 2.0], np.float32), "c"))
    big = g.apply("constant_of_shape", shape=(2048, 1024), value=1.0)
    y = g.apply("add", x, c)
    g.set_outputs(y, g.apply("reduce_sum", big, axes=None, keepdims=0))
    x_in = np.array([1.0, 2.0, 3.0], np.float32)
    before = run_graph(g, {"x": x_in})
    assert fold_constants(g, max_elems=1 << 20) == 1  # exp folds; the 2M-element fill does not
    assert [n.op for n in g.nodes] == ["constant_of_shape", "add", "reduce_sum"]
    after = run_graph(g, {"x": x_in})
    for k, v in before.items():
        np.testing.assert_allclose(after[k], v, rtol=1e-6)
    np.testing.assert_allclose(after[y.name], x_in + np.exp([0.0, 1.0, 2.0]), rtol=1e-6)
