"""ONNX export: graphs written by save_onnx run in onnxruntime and read back with load_onnx."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import sympy
from satura.engine.errors import ModelError
from satura.engine.graph import Graph
from satura.engine.interpret import run_graph
from satura.engine.onnx_export import save_onnx, to_model
from satura.engine.onnx_import import load_onnx

pytestmark = pytest.mark.onnx


@pytest.mark.parametrize("name", ["gpt2_block", "bert_block", "llama_block", "resnet_small"])
def test_round_trip_examples_match_onnxruntime(name: str, tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    from examples.models import EXAMPLES, example_inputs

    g = load_onnx(EXAMPLES[name]())
    path = save_onnx(g, tmp_path / "opt.onnx")
    onnx.checker.check_model(str(path))
    ins = example_inputs(name, batch=2, seq=8)
    want = run_graph(g, ins)
    sess = ort.InferenceSession(str(path))
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, ins), strict=True))
    for k, v in want.items():
        np.testing.assert_allclose(got[k], v, rtol=1e-4, atol=1e-5)
    back = run_graph(load_onnx(path), ins)
    for k, v in want.items():
        np.testing.assert_allclose(back[k], v, rtol=1e-5, atol=1e-6)


def _fused_graph(attention: bool = True) -> Graph:
    b = sympy.Symbol("batch", positive=True, integer=True)
    rng = np.random.default_rng(0)
    g = Graph("fused")
    x = g.add_input("x", (b, 4, 16))
    w = g.add_const(rng.standard_normal((16, 16)).astype(np.float32), "w")
    bias = g.add_const(rng.standard_normal(16).astype(np.float32), "bias")
    h = g.apply("linear", x, w, bias, x, act="gelu_tanh")
    h = g.apply("rms_norm", h, g.add_const(np.ones(16, np.float32), "s"), epsilon=1e-6)
    h = g.apply(
        "ew", h, bias, expr=("silu", ("sub", ("in", 0), ("mul", ("in", 1), ("const", 0.5))))
    )
    q = g.apply("reshape", h, shape=(b, 4, 2, 8))
    q = g.apply("transpose", q, perm=(0, 2, 1, 3))
    a = (
        g.apply("attention", q, q, q, scale=0.35, causal=1)
        if attention
        else g.apply("softmax", q, axis=-1)
    )
    g.set_outputs(g.apply("reshape", g.apply("transpose", a, perm=(0, 2, 1, 3)), shape=(b, 64)))
    return g


def test_fused_ops_decompose_or_use_the_satura_domain(tmp_path) -> None:
    g = _fused_graph()
    m = to_model(g)
    types = {(n.domain or "", n.op_type) for n in m.graph.node}
    assert ("ai.satura", "Attention") in types
    assert ("", "MatMul") in types  # linear, decomposed
    assert all(d in ("", "ai.satura") for d, _ in types)
    path = save_onnx(g, tmp_path / "f.onnx")
    x = np.random.default_rng(1).standard_normal((3, 4, 16)).astype(np.float32)
    want = run_graph(g, {"x": x})
    back = load_onnx(path)
    assert back.op_counts()["attention"] == 1
    got = run_graph(back, {"x": x})
    for k, v in want.items():
        np.testing.assert_allclose(got[k], v, rtol=1e-5, atol=1e-6)


def test_decomposed_fused_ops_run_in_onnxruntime(tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    g = _fused_graph(attention=False)
    path = save_onnx(g, tmp_path / "f.onnx")
    onnx.checker.check_model(str(path))
    x = np.random.default_rng(2).standard_normal((2, 4, 16)).astype(np.float32)
    (want,) = run_graph(g, {"x": x}).values()
    (got,) = ort.InferenceSession(str(path)).run(None, {"x": x})
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_failed_write_leaves_nothing(tmp_path) -> None:
    g = _fused_graph()
    with pytest.raises(ModelError, match="cannot write"):
        save_onnx(g, tmp_path / "missing_dir" / "m.onnx")
    assert not (tmp_path / "missing_dir").exists()
