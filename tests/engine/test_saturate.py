"""Golden saturation cases, one line each: start ⇒ the extracted form (egg's tests/math.rs style),
plus the deterministic counts of the Report."""

import numpy as np
import pytest
from satura.engine.graph import Graph
from satura.engine.interpret import run_graph
from satura.engine.rulelang import parse_rules
from satura.engine.saturate import Limits, saturate

import satura


def _mlp(hidden=16, out=8, act="erf"):
    rng = np.random.default_rng(0)
    g = Graph("t")
    x = g.add_input("x", (4, hidden))
    w = g.add_const(rng.standard_normal((hidden, out)).astype(np.float32), "w")
    b = g.add_const(rng.standard_normal(out).astype(np.float32), "b")
    h = g.apply("add", g.apply("matmul", x, w), b)
    if act == "relu":
        y = g.apply("relu", h)
    else:
        t = g.apply("erf", g.apply("div", h, g.add_const(np.float32(np.sqrt(2)), "s")))
        y = g.apply(
            "mul",
            g.apply("mul", h, g.apply("add", t, g.add_const(np.float32(1), "o"))),
            g.add_const(np.float32(0.5), "h"),
        )
    g.set_outputs(y)
    return g


def _unary_chain():
    g = Graph("chain")
    x = g.add_input("x", (64, 64))
    g.set_outputs(g.apply("tanh", g.apply("exp", g.apply("neg", x))))
    return g


def _transposes():
    g = Graph("tt")
    x = g.add_input("x", (2, 3, 4))
    t = g.apply("transpose", g.apply("transpose", x, perm=(1, 0, 2)), perm=(1, 0, 2))
    g.set_outputs(g.apply("relu", t))
    return g


def _reshapes():
    g = Graph("rr")
    x = g.add_input("x", (2, 3, 4))
    r = g.apply("reshape", g.apply("reshape", x, shape=(6, 4)), shape=(2, 3, 4))
    g.set_outputs(g.apply("exp", r))
    return g


def _masked_fill_attention():
    # torch's masked_fill(~causal, min) over (q·kᵀ)·scale, softmax, ·v: the fill comes first
    g = Graph("mfa")
    q, k, v = (g.add_input(n, (1, 2, 8, 4)) for n in "qkv")
    keep = g.add_const(np.tril(np.ones((8, 8), bool)), "causal")
    s = g.apply(
        "mul",
        g.apply("matmul", q, g.apply("transpose", k, perm=(0, 1, 3, 2))),
        g.add_const(np.float32(0.5), "scale"),
    )
    fill = g.add_const(np.float32(np.finfo(np.float32).min), "fill")
    p = g.apply("softmax", g.apply("where", g.apply("not", keep), fill, s), axis=-1)
    g.set_outputs(g.apply("matmul", p, v))
    return g


def _prescaled_attention():
    # torch's scaled_dot_product_attention as exported: q and kᵀ each times √scale (shape [1])
    g = Graph("sdpa")
    q, k, v = (g.add_input(n, (1, 2, 8, 4)) for n in "qkv")
    root = g.add_const(np.full(1, 0.5**0.5, np.float32), "root")
    kt = g.apply("mul", g.apply("transpose", k, perm=(0, 1, 3, 2)), root)
    p = g.apply("softmax", g.apply("matmul", g.apply("mul", q, root), kt), axis=-1)
    g.set_outputs(g.apply("matmul", p, v))
    return g


def _t5_attention():
    # T5: no scale, an additive position bias per head
    g = Graph("t5")
    q, k, v = (g.add_input(n, (1, 2, 8, 4)) for n in "qkv")
    bias = g.add_const(np.random.default_rng(0).standard_normal((1, 2, 8, 8)), "bias", "float32")
    s = g.apply("add", g.apply("matmul", q, g.apply("transpose", k, perm=(0, 1, 3, 2))), bias)
    g.set_outputs(g.apply("matmul", g.apply("softmax", s, axis=-1), v))
    return g


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (lambda: _mlp(act="relu"), {"linear": 1}),  # relu(x·W + b) ⇒ linear[relu]
        (lambda: _mlp(act="erf"), {"linear": 1}),  # erf-GELU(x·W + b) ⇒ linear[gelu]
        (_unary_chain, {"ew": 1}),  # tanh(exp(-x)) ⇒ one fused kernel
        (_transposes, {"relu": 1}),  # transpose∘transpose ⇒ gone
        (_reshapes, {"exp": 1}),  # reshape∘reshape back ⇒ gone
        (_masked_fill_attention, {"attention": 1}),  # where(not m, fill, s) ⇒ a keep-mask
        (_prescaled_attention, {"attention": 1}),  # (q·√s)·(kᵀ·√s) ⇒ scale s
        (_t5_attention, {"attention": 1}),  # softmax(q·kᵀ + bias)·v, no scale
    ],
)
def test_golden(build, expected):
    g = build()
    r = satura.optimize(g)
    assert r.graph.op_counts() == expected
    assert r.cost_after <= r.cost_before
    rng = np.random.default_rng(1)
    feeds = {
        v.name: rng.standard_normal([int(d) for d in v.type.shape]).astype(np.float32)
        for v in g.inputs
    }
    want = run_graph(g, feeds)
    got = run_graph(r.graph, feeds)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6)


def test_linear_activation_attribute():
    r = satura.optimize(_mlp(act="erf"))
    (node,) = r.graph.nodes
    assert node.op == "linear"
    assert node.attrs["act"] == "gelu"


def test_report_counts_are_deterministic():
    rules = parse_rules(
        "rule c for b in [add, mul] [exact]:\n    b(x, y) => b(y, x)\n"
        "rule z [exact]:\n    mul(x, 1.0) => x\n"
    )
    g = Graph("d")
    x = g.add_input("x", (3,))
    y = g.add_input("y", (3,))
    g.set_outputs(g.apply("mul", g.apply("add", x, y), g.add_const(np.float32(1.0), "one")))
    _, rep = saturate(g, [("t", rules)])
    assert rep.stop_reason == "saturated"
    assert rep.fired["z"] >= 1
    assert rep.fired["c[add]"] >= 1
    _, rep2 = saturate(g, [("t", rules)])
    assert (rep.nodes, rep.classes, rep.iterations, rep.fired) == (
        rep2.nodes,
        rep2.classes,
        rep2.iterations,
        rep2.fired,
    )


def test_ill_typed_rule_never_fires():
    # add(x, y) => x is wrong when y broadcasts x up; the type check refuses those matches.
    rules = parse_rules("rule bad [exact]:\n    add(x, y) => x\n")
    g = Graph("b")
    x = g.add_input("x", (3,))
    y = g.add_input("y", (2, 3))
    g.set_outputs(g.apply("add", x, y))
    _, rep = saturate(g, [("t", rules)])
    assert rep.candidates["bad"] >= 1
    assert rep.fired["bad"] == 0


def test_limits_stop_reason():
    # Every iteration makes a reshape to a new, longer shape: this never saturates.
    rules = parse_rules(
        "rule grow [exact]:\n"
        "    reshape(x, shape=s) => reshape(reshape(x, shape=s + (1,)), shape=s)\n"
    )
    g = Graph("g")
    x = g.add_input("x", (3,))
    g.set_outputs(g.apply("reshape", x, shape=(3, 1)))
    _, rep = saturate(g, [("t", rules)], Limits(iterations=3, nodes=10_000, seconds=60))
    assert rep.stop_reason == "iterations"
    assert rep.iterations == 3


def test_sdpa_with_a_bool_mask_fuses_and_zeroes_fully_masked_rows():
    # torch's SDPA export with attn_mask: (q·√s)(kᵀ·√s) + where(mask, 0, -inf), softmax, the
    # NaN of a row masked whole set to 0, ·v. Batch 1's keys are all masked.
    g = Graph("sdpa_mask")
    q, k, v = (g.add_input(n, (2, 2, 8, 4)) for n in "qkv")
    keep = np.ones((2, 1, 1, 8), bool)
    keep[1] = False
    keep[0, ..., 5:] = False
    add_mask = g.apply(
        "where",
        g.add_const(keep, "keep"),
        g.add_const(np.float32(0.0), "zero"),
        g.add_const(np.float32(-np.inf), "ninf"),
    )
    root = g.add_const(np.full(1, 0.5**0.5, np.float32), "root")
    kt = g.apply("mul", g.apply("transpose", k, perm=(0, 1, 3, 2)), root)
    s = g.apply("add", g.apply("matmul", g.apply("mul", q, root), kt), add_mask)
    p = g.apply("softmax", s, axis=-1)
    p = g.apply("where", g.apply("isnan", p), g.add_const(np.float32(0.0), "z"), p)
    g.set_outputs(g.apply("matmul", p, v))
    r = satura.optimize(g)
    assert r.graph.op_counts().get("attention") == 1
    assert "softmax" not in r.graph.op_counts()
    rng = np.random.default_rng(2)
    feeds = {n: rng.standard_normal((2, 2, 8, 4)).astype(np.float32) for n in "qkv"}
    want = run_graph(g, feeds)
    got = satura.compile(r.graph)(**feeds)
    for name, w in want.items():
        assert not np.isnan(w).any()
        assert np.all(w[1] == 0)
        np.testing.assert_allclose(got[name], w, rtol=1e-5, atol=1e-6)
