"""Every example model: load, saturate, extract; the optimized graph's outputs (reference executor
and compiled CPU code) equal onnxruntime's on the original; transformers get cheaper."""

import numpy as np
import onnxruntime as ort
import pytest
from satura.engine.interpret import run_graph
from satura.engine.onnx_import import load_onnx

import satura
from examples.models import EXAMPLES, example_inputs

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


# Recognized fused ops: each family of block is one attention kernel, ResNet's BatchNorms fold.
FUSED = {
    "gpt2_block": {"attention": 1, "layer_norm": 2},
    "bert_block": {"attention": 1},
    "llama_block": {"attention": 1, "rms_norm": 2},
    "resnet_small": {"batch_norm": 0},
}


@pytest.mark.parametrize("name", sorted(FUSED))
def test_fused_ops_recognized(optimized, name):
    _, _, r = optimized(name)
    ops = [n.op for n in r.graph.nodes]
    for op, count in FUSED[name].items():
        assert ops.count(op) == count, (name, op, ops)
    if name == "llama_block":
        assert "expand" not in ops  # grouped-query attention reads the unrepeated k and v


@pytest.mark.llvm
@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_memory_plan_and_proved_inplace(optimized, name):
    """Arena within 1.1x the most bytes live at once; every in-place reuse proved by Z3."""
    _, _, r = optimized(name)
    model = satura.compile(r.graph, target="cpu")
    variant = model.variant(example_inputs(name, batch=8)) if hasattr(model, "variant") else model
    assert variant.arena_bytes <= 1.1 * variant.arena_lower_bound
    assert [d for d in variant.inplace if d.proof is not True] == []  # none refuted or unknown
    if name in ("llama_block", "resnet_small"):
        assert any(d.reused for d in variant.inplace)


@pytest.mark.llvm
@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_compiled_without_fallback(optimized, name):
    """Every node of every example runs as generated code: the masks that a symbolic sequence
    length makes runtime values fold once the variant's sizes are bound (GPT-2), and BERT's
    int64 mask is reshaped and cast in generated code."""
    _, _, r = optimized(name)
    model = satura.compile(r.graph, target="cpu")
    for batch in (1, 8):
        feeds = example_inputs(name, batch=batch)
        variant = model.variant(feeds) if hasattr(model, "variant") else model
        assert variant.fallback_nodes == [], (name, batch, variant.fallback_nodes)
