"""Every example model: load, saturate, extract; the optimized graph's outputs (reference executor
and compiled CPU code) equal onnxruntime's on the original; transformers get cheaper."""

import numpy as np
import onnxruntime as ort
import pytest

import satura
from examples.models import EXAMPLES, example_inputs
from satura.engine.interpret import run_graph
from satura.engine.onnx_import import load_onnx

TRANSFORMERS = ("gpt2_block", "bert_block", "llama_block")


def _rel(a, b):
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-30))


@pytest.fixture(scope="module")
def optimized():
    cache = {}

    def get(name):
        if name not in cache:
            model = EXAMPLES[name]()
            g = load_onnx(model)
            cache[name] = (model, g, satura.optimize(g))
        return cache[name]

    return get


@pytest.mark.onnx
@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_optimized_matches_onnxruntime(optimized, name):
    model, _, r = optimized(name)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for batch in (1, 2):
        feeds = example_inputs(name, batch=batch)
        want = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=True))
        got = run_graph(r.graph, feeds)
        for k, v in want.items():
            assert _rel(got[k], v) < 1e-4, (name, k, _rel(got[k], v))


@pytest.mark.parametrize("name", TRANSFORMERS)
def test_transformer_cost_drops(optimized, name):
    _, _, r = optimized(name)
    assert r.cost_after < r.cost_before, r.report.summary()
    assert sum(r.report.fired.values()) > 0


@pytest.mark.llvm
@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_compiled_matches_reference(optimized, name):
    _, _, r = optimized(name)
    feeds = example_inputs(name, batch=1)
    want = run_graph(r.graph, feeds)
    got = satura.compile(r.graph, target="cpu")(**feeds)
    for k, v in want.items():
        assert _rel(got[k], v) < 1e-4, (name, k, _rel(got[k], v))
