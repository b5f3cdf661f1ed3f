"""The static memory plan: live buffers never overlap, alignment, arena vs its lower bound."""

from __future__ import annotations

import numpy as np
import pytest
from satura.engine.graph import Graph
from satura.targets import compile_graph
from satura.targets.memory import ALIGN, Buffer, lower_bound, plan_memory

from tests.targets.helpers import reference


def assert_valid(buffers, plan):
    for b in buffers:
        assert plan.offsets[b.key] % ALIGN == 0
        assert plan.offsets[b.key] + b.size <= plan.arena_bytes
    for i, a in enumerate(buffers):  # brute force over every pair
        for b in buffers[i + 1 :]:
            if a.overlaps(b):
                oa, ob = plan.offsets[a.key], plan.offsets[b.key]
                assert oa + a.size <= ob or ob + b.size <= oa, (a, b, oa, ob)


@pytest.mark.parametrize("seed", range(30))
def test_random_lifetimes_never_overlap(seed):
    rng = np.random.default_rng(seed)
    buffers = []
    for k in range(int(rng.integers(1, 40))):
        first = int(rng.integers(0, 30))
        buffers.append(
            Buffer(k, int(rng.integers(1, 5000)), first, first + int(rng.integers(0, 8)))
        )
    plan = plan_memory(buffers)
    assert_valid(buffers, plan)
    assert plan.lower_bound == lower_bound(buffers)
    assert plan.arena_bytes >= plan.lower_bound


def test_chain_reuses_memory():
    # A chain of same-sized tensors needs two live buffers at a time, never more.
    buffers = [Buffer(k, 1000, k, k + 1) for k in range(10)]
    plan = plan_memory(buffers)
    assert_valid(buffers, plan)
    assert plan.arena_bytes == plan.lower_bound == 2 * 1024


@pytest.mark.llvm
def test_compiled_chain_arena_and_results_across_calls():
    g = Graph("chain")
    x = g.add_input("x", (64, 100))
    v = x
    for i in range(6):
        v = g.apply("tanh", g.apply("add", v, g.add_const(np.float32(i * 0.1))))
    g.set_outputs(v)
    model = compile_graph(g)
    assert model.arena_bytes <= 1.1 * model.arena_lower_bound
    rng = np.random.default_rng(0)
    for _ in range(3):  # the arena is reused across calls
        feeds = {"x": rng.standard_normal((64, 100)).astype(np.float32)}
        np.testing.assert_allclose(
            model(**feeds)[v.name], reference(g, feeds)[v.name], rtol=1e-5, atol=1e-6
        )
