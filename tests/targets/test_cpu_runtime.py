"""Runtime: input validation before any generated code, outputs, the disk cache, IR snapshots."""

from __future__ import annotations

import re

import numpy as np
import pytest
import sympy
from satura.engine.errors import InputError
from satura.engine.graph import Graph
from satura.targets import codegen, compile_graph, runtime

from tests.targets.helpers import reference

pytestmark = pytest.mark.llvm


def small_model():
    rng = np.random.default_rng(1)
    g = Graph("m")
    x = g.add_input("x", (8, 20))
    w = g.add_const(rng.standard_normal((20, 30)).astype(np.float32), "w")
    h = g.apply("linear", x, w, act="gelu")
    y = g.apply("reshape", g.apply("softmax", h), shape=(240,))
    g.set_outputs(y, h)
    return g


def test_outputs_and_dict_call():
    g = small_model()
    model = compile_graph(g)
    feeds = {"x": np.random.default_rng(2).standard_normal((8, 20)).astype(np.float32)}
    want = reference(g, feeds)
    for got in (model(**feeds), model(feeds)):
        assert set(got) == set(want)
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-5)
    first = model(**feeds)
    second = model(**feeds)  # a held result is never overwritten by a later call
    assert first[g.outputs[0].name] is not second[g.outputs[0].name]


@pytest.mark.parametrize(
    ("feeds", "message"),
    [
        (
            {"x": np.zeros((8, 21), np.float32)},
            r"input 'x': expected float32\[8, 20\], got float32\[8, 21\]",
        ),
        (
            {"x": np.zeros((8, 20), np.float64)},
            r"input 'x': expected float32\[8, 20\], got float64",
        ),
        ({"x": np.zeros((20, 8), np.float32).T}, r"input 'x' must be C-contiguous"),
        ({}, r"missing input 'x'"),
        ({"x": np.zeros((8, 20), np.float32), "y": np.zeros(1)}, r"unknown input 'y'"),
        ({"x": [[0.0] * 20] * 8}, r"input 'x' must be a numpy array"),
    ],
)
def test_bad_inputs_raise_before_generated_code(feeds, message):
    model = compile_graph(small_model())
    calls = []
    model._run = [("f", None, False)]  # any step that runs would fail differently
    model._fallback = lambda *a: calls.append(a)  # type: ignore[method-assign]
    with pytest.raises(InputError, match=message):
        model(**feeds)
    assert calls == []


def test_symbolic_inputs_specialize_per_shape():
    batch = sympy.Symbol("batch")
    rng = np.random.default_rng(3)
    g = Graph("sym")
    x = g.add_input("x", (batch, 12))
    w = g.add_const(rng.standard_normal((12, 5)).astype(np.float32), "w")
    h = g.apply("linear", x, w, act="relu")
    g.set_outputs(g.apply("reshape", h, shape=(batch * 5,)))
    model = compile_graph(g)
    for b in (3, 7, 3):
        feeds = {"x": rng.standard_normal((b, 12)).astype(np.float32)}
        out = model(**feeds)[g.outputs[0].name]
        want = np.maximum(feeds["x"] @ np.asarray(w.data), 0).reshape(-1)
        np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    assert sorted(model.variants) == [((3, 12),), ((7, 12),)]
    with pytest.raises(InputError, match=r"input 'x': shape \[12\] has rank 1, the model expects"):
        model(x=np.zeros(12, np.float32))
    with pytest.raises(
        InputError, match=r"input 'x': shape \[2, 13\], the model expects \[batch, 12\]"
    ):
        model(x=np.zeros((2, 13), np.float32))


def test_specializing_model_keeps_the_most_recently_used_variants():
    batch = sympy.Symbol("batch")
    g = Graph("sym")
    x = g.add_input("x", (batch, 4))
    g.set_outputs(g.apply("relu", x))
    model = compile_graph(g)
    model.max_variants = 2
    for b in (1, 2, 1, 3):  # 2 is the least recently used when 3 comes
        out = model(x=-np.ones((b, 4), np.float32))[g.outputs[0].name]
        np.testing.assert_array_equal(out, np.zeros((b, 4), np.float32))
    assert list(model.variants) == [((1, 4),), ((3, 4),)]


def test_disk_cache_hit_skips_llvm(tmp_path, monkeypatch):
    runtime._OBJECTS.clear()
    g = small_model()
    cold = compile_graph(g, cache_dir=str(tmp_path))
    assert not cold.cache_hit
    assert list(tmp_path.glob("*.o"))
    runtime._OBJECTS.clear()

    def no_llvm(ir):
        raise AssertionError("LLVM ran on a cache hit")

    monkeypatch.setattr(codegen, "optimize_ir", no_llvm)
    warm = compile_graph(g, cache_dir=str(tmp_path))
    assert warm.cache_hit
    feeds = {"x": np.ones((8, 20), np.float32)}
    for k, v in cold(**feeds).items():
        np.testing.assert_array_equal(warm(**feeds)[k], v)


def _function(ir: str, name: str) -> str:
    m = re.search(rf"define [^@]*@{re.escape(name)}\(.*?\n}}", ir, re.S)
    assert m, f"{name} not in the module"
    return m.group(0)


def test_ir_snapshot_fused_kernel_and_gemm_microkernel():
    host = codegen.host_target()
    vec = f"<{host.lanes} x float>"
    g = Graph("snap")
    x = g.add_input("x", (64, 256))
    w = g.add_const(np.ones((256, 64), np.float32), "w")
    e = g.apply(
        "ew", x, g.add_const(np.ones(256, np.float32)), expr=("gelu", ("mul", ("in", 0), ("in", 1)))
    )
    g.set_outputs(g.apply("linear", e, w))
    model = compile_graph(g)
    opt = str(codegen.optimize_ir(model.llvm_ir))
    fused = _function(opt, "k0_ew")  # its body is inlined into the exported entry
    # The hot loop works on whole vectors: vector multiplies and FMAs, a vector store.
    assert re.search(rf"fmul[a-z ]* {re.escape(vec)}", fused)
    assert re.search(rf"call[a-z ]* {re.escape(vec)} @llvm\.fma\.v{host.lanes}f32", fused)
    assert re.search(rf"store {re.escape(vec)}", fused)
    mr = host.gemm_tile[0]
    micro = _function(opt, f"k1_linear_u{mr}")
    fmas = re.findall(rf"@llvm\.fma\.v{host.lanes}f32", micro)
    assert len(fmas) >= mr * host.gemm_tile[1] // host.lanes  # the whole register tile per k
    for text in (fused, micro):
        assert "malloc" not in text
        assert "alloca" not in text


@pytest.mark.parametrize("native", [False, True])
def test_parallel_shares_match_reference(monkeypatch, native):
    from satura.targets import lower

    monkeypatch.setattr(lower, "PARALLEL_FLOPS", 0)
    monkeypatch.setattr(lower, "PARALLEL_BYTES", 0)
    rng = np.random.default_rng(4)
    g = Graph("par")
    x = g.add_input("x", (50, 40))
    q = g.add_input("q", (3, 2, 20, 16))
    img = g.add_input("img", (2, 3, 9, 9))
    w = g.add_const(rng.standard_normal((40, 70)).astype(np.float32), "w")
    h = g.apply("linear", x, w, act="gelu")
    n = g.apply("layer_norm", h)
    a = g.apply("attention", q, q, q, scale=0.25)
    c = g.apply(
        "conv",
        img,
        g.add_const(rng.standard_normal((4, 3, 3, 3)).astype(np.float32)),
        pads=(1, 1, 1, 1),
    )
    g.set_outputs(g.apply("softmax", n), a, c)
    model = compile_graph(g, threads=2)
    model.native_threads = native
    feeds = {
        "x": rng.standard_normal((50, 40)).astype(np.float32),
        "q": rng.standard_normal((3, 2, 20, 16)).astype(np.float32),
        "img": rng.standard_normal((2, 3, 9, 9)).astype(np.float32),
    }
    want = reference(g, feeds)
    for _ in range(3):
        got = model(**feeds)
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-5, err_msg=k)


def test_satura_compile_caches_machine_code_on_disk(tmp_path, monkeypatch):
    """satura.compile uses the disk cache by default ($SATURA_CACHE_DIR; set empty: none)."""
    import satura

    monkeypatch.setenv("SATURA_CACHE_DIR", str(tmp_path))
    runtime._OBJECTS.clear()
    g = small_model()
    satura.compile(g)
    assert list(tmp_path.glob("*.o"))
    runtime._OBJECTS.clear()
    monkeypatch.setattr(codegen, "optimize_ir", lambda ir: pytest.fail("LLVM ran on a hit"))
    assert satura.compile(g).cache_hit
    monkeypatch.setenv("SATURA_CACHE_DIR", "")
    assert satura.api.object_cache_dir() is None


def _stacked(layers: int) -> Graph:
    """``layers`` blocks of linear -> gelu -> linear -> add (weights differ, shapes do not)."""
    rng = np.random.default_rng(0)
    g = Graph("stack")
    h = g.add_input("x", (64, 96))
    for i in range(layers):
        w1 = g.add_const(rng.standard_normal((96, 192)).astype(np.float32) * 0.1, f"w1_{i}")
        w2 = g.add_const(rng.standard_normal((192, 96)).astype(np.float32) * 0.1, f"w2_{i}")
        b = g.add_const(rng.standard_normal(192).astype(np.float32), f"b_{i}")
        y = g.apply("matmul", g.apply("gelu", g.apply("add", g.apply("matmul", h, w1), b)), w2)
        h = g.apply("add", y, h)
    g.set_outputs(h)
    return g


def test_repeated_layers_share_their_kernel_bodies():
    """Identical layers lower to one copy of each kernel body (only the exported wrappers,
    which hold the table slots, repeat), and the model still computes each layer's weights."""
    three, four = (compile_graph(_stacked(n), threads=1) for n in (3, 4))
    # the first layer reads the graph's input and the last writes its output: a middle layer
    # is where a fourth layer's kernels come from, and it adds no body
    bodies = [len(re.findall(r"^define internal", m.llvm_ir, re.M)) for m in (three, four)]
    assert bodies[1] == bodies[0]
    assert len(re.findall(r"^define void @k", four.llvm_ir, re.M)) > len(
        re.findall(r"^define void @k", three.llvm_ir, re.M)
    )
    x = np.random.default_rng(1).standard_normal((64, 96)).astype(np.float32)
    g = _stacked(4)
    np.testing.assert_allclose(
        four(x=x)[four.graph.outputs[0].name],
        reference(g, {"x": x})[g.outputs[0].name],
        rtol=1e-4,
        atol=1e-4,
    )
