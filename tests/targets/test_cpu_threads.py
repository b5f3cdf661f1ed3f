"""Kernels split across cores: the native pool and the Python pool give the one-thread results.

Every kernel is made parallel (thresholds set to 0), so each graph runs its shares on two
threads; the results must equal one thread's (same arithmetic per element) and the numpy
reference, on repeated calls, and from two Python threads calling two models at once.
"""

from __future__ import annotations

import gc
import os
import threading

import numpy as np
import pytest
from satura.engine.graph import Graph
from satura.targets import compile_graph, lower

from tests.targets.helpers import reference

pytestmark = pytest.mark.llvm


@pytest.fixture(autouse=True)
def _all_parallel(monkeypatch):
    # Every lowering asks lower.worth_splitting, which reads the thresholds at lowering time.
    for attr in ("PARALLEL_FLOPS", "PARALLEL_BYTES"):
        monkeypatch.setattr(lower, attr, 0)


def _ew() -> tuple[Graph, dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    g = Graph("ew")
    x = g.add_input("x", (37, 1000))
    w = g.add_const(rng.standard_normal(1000).astype(np.float32), "w")
    b = g.add_const(rng.standard_normal((37, 1)).astype(np.float32), "b")
    g.set_outputs(
        g.apply("ew", x, w, b, expr=("gelu", ("add", ("mul", ("in", 0), ("in", 1)), ("in", 2))))
    )
    return g, {"x": rng.standard_normal((37, 1000)).astype(np.float32)}


def _mlp_norm() -> tuple[Graph, dict[str, np.ndarray]]:
    rng = np.random.default_rng(2)
    g = Graph("mlp")
    x = g.add_input("x", (45, 64))
    w1 = g.add_const((rng.standard_normal((64, 96)) * 0.1).astype(np.float32), "w1")
    w2 = g.add_const((rng.standard_normal((96, 64)) * 0.1).astype(np.float32), "w2")
    h = g.apply("linear", x, w1, act="gelu")
    y = g.apply("layer_norm", g.apply("linear", h, w2))
    g.set_outputs(g.apply("softmax", y), h)
    return g, {"x": rng.standard_normal((45, 64)).astype(np.float32)}


def _attention_conv() -> tuple[Graph, dict[str, np.ndarray]]:
    rng = np.random.default_rng(3)
    g = Graph("ac")
    q = g.add_input("q", (2, 3, 24, 16))
    img = g.add_input("img", (2, 3, 11, 11))
    w = g.add_const(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w")
    g.set_outputs(
        g.apply("attention", q, q, q, scale=0.25), g.apply("conv", img, w, pads=(1, 1, 1, 1))
    )
    return g, {
        "q": rng.standard_normal((2, 3, 24, 16)).astype(np.float32),
        "img": rng.standard_normal((2, 3, 11, 11)).astype(np.float32),
    }


GRAPHS = {"ew": _ew, "mlp_norm": _mlp_norm, "attention_conv": _attention_conv}


def _check(
    got: dict[str, np.ndarray], one: dict[str, np.ndarray], want: dict[str, np.ndarray]
) -> None:
    for k in want:
        np.testing.assert_allclose(got[k], one[k], rtol=1e-6, atol=1e-6, err_msg=k)
        np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-5, err_msg=k)


@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
@pytest.mark.parametrize("name", list(GRAPHS))
def test_two_threads_equal_one_and_reference(name, native):
    g, feeds = GRAPHS[name]()
    one = compile_graph(g, threads=1)
    two = compile_graph(g, threads=2)
    two.native_threads = native
    assert any(p for _, _, p in two._run), "no kernel was made parallel"
    want = reference(g, feeds)
    base = one(**feeds)
    rng = np.random.default_rng(0)
    for i in range(20):  # repeated calls: the pool is reused, the results stay right
        if i % 5 == 4:  # new inputs now and then
            feeds = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in feeds.items()}
            want, base = reference(g, feeds), one(**feeds)
        _check(two(**feeds), base, want)


def test_elementwise_shares_are_bitwise_equal():
    g, feeds = _ew()
    one, two = compile_graph(g, threads=1), compile_graph(g, threads=2)
    for _ in range(3):
        np.testing.assert_array_equal(
            two(**feeds)[g.outputs[0].name], one(**feeds)[g.outputs[0].name]
        )


def test_two_python_threads_two_models():
    models = {}
    for name in ("mlp_norm", "attention_conv"):
        g, feeds = GRAPHS[name]()
        models[name] = (compile_graph(g, threads=2), feeds, reference(g, feeds))
    errors: list[BaseException] = []
    start = threading.Barrier(len(models))

    def worker(name: str) -> None:
        model, feeds, want = models[name]
        try:
            start.wait()
            for _ in range(40):
                got = model(**feeds)
                for k in want:
                    np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-5, err_msg=k)
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in models]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a model call hung"
    assert not errors, errors[0]


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc (Linux)")
def test_native_pool_threads_start_once_and_end_with_the_model():
    def tasks() -> int:
        return len(os.listdir("/proc/self/task"))

    g, feeds = _ew()
    gc.collect()
    before = tasks()
    model = compile_graph(g, threads=3)
    assert tasks() == before  # started on the first parallel kernel, not at compile time
    for _ in range(5):
        model(**feeds)
    assert tasks() == before + 2  # two workers besides the caller, created once
    del model
    gc.collect()
    assert tasks() == before


@pytest.mark.parametrize("threads", [1, 2])
def test_results_held_by_the_caller_are_never_overwritten(threads):
    g, feeds = _ew()
    model = compile_graph(g, threads=threads)
    name = g.outputs[0].name
    rng = np.random.default_rng(5)
    held, wants = [], []
    for _ in range(4):  # results kept whole
        feeds = {"x": rng.standard_normal((37, 1000)).astype(np.float32)}
        held.append(model(**feeds)[name])
        wants.append(reference(g, feeds)[name])
    view = model(**feeds)[name][1:2]  # only a view is kept: its memory must stay its own
    want_view = reference(g, feeds)[name][1:2]
    for _ in range(3):
        model(x=rng.standard_normal((37, 1000)).astype(np.float32))
    for got, want in zip(held, wants, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-6)
    np.testing.assert_allclose(view, want_view, rtol=1e-5, atol=2e-6)
    del held
    a = model(**feeds)[name]
    addr = a.ctypes.data
    del a
    assert model(**feeds)[name].ctypes.data == addr  # a dropped result's buffer is reused


def test_balanced_shares():
    """The share count gives the busiest core the fewest units, with no empty share."""
    assert lower.balanced_shares(28, 2) == 4  # 7 units a share, two shares a core
    assert lower.balanced_shares(14, 2) == 2
    assert lower.balanced_shares(3, 2) == 3
    assert lower.balanced_shares(0, 2) == 2 * lower.CHUNKS_PER_THREAD  # unknown: the most
    for units in range(1, 200):
        s = lower.balanced_shares(units, 2)
        assert 2 <= s <= 2 * lower.CHUNKS_PER_THREAD
        busiest = -(-s // 2) * -(-units // s)
        assert busiest <= -(-units // 2) + -(-units // (2 * lower.CHUNKS_PER_THREAD))


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="pinning needs two usable cores")
def test_workers_pinned_and_caller_affinity_restored():
    """The pool's worker runs on a core of its own, the caller is held on another only while
    the kernels run: its affinity after the call is what it was before."""
    g, feeds = _ew()
    model = compile_graph(g, threads=2)
    before = os.sched_getaffinity(0)
    model(**feeds)
    assert os.sched_getaffinity(0) == before
    pool = model._native
    assert pool is not None
    assert pool.main_cpu in before
    worker_cpus = [
        os.sched_getaffinity(int(t))
        for t in os.listdir("/proc/self/task")
        if os.sched_getaffinity(int(t)) == {sorted(before)[1]}
    ]
    assert worker_cpus, "no thread pinned to the worker's core"
