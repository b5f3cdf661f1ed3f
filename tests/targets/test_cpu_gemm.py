"""The GEMM kernel (targets/gemm.py) against numpy: odd sizes, epilogues, batches, part grids, IR.

Speed is measured by benchmarks/run.py, not here; these tests check results and the shape of the
generated code.
"""

from __future__ import annotations

import ctypes
import itertools
import re

import numpy as np
import pytest
from satura.engine.graph import Graph
from satura.engine.ops import run_reference
from satura.targets import codegen, compile_graph, lower
from satura.targets import gemm as gemm_mod

pytestmark = pytest.mark.llvm

SIZES = (1, 3, 17, 64, 129, 300)
RTOL = 1e-4


def _rel_close(got: np.ndarray, want: np.ndarray, what: str) -> None:
    """Within 1e-4 of the result's scale (sums of K products cancel: a per-element relative
    bound would fail on entries near zero for a correct kernel)."""
    scale = max(float(np.abs(want).max()), 1e-30)
    err = float(np.abs(got.astype(np.float64) - want).max()) / scale
    assert err <= RTOL, f"{what}: max error {err:.2e} of the result's scale"


def _many_linears(cases, seed=0, **attrs):
    """One graph with a linear (constant weight and bias) per (m, k, n): one compile for all."""
    rng = np.random.default_rng(seed)
    g = Graph("lin")
    feeds, want = {}, {}
    for i, (m, k, n) in enumerate(cases):
        x = g.add_input(f"x{i}", (m, k))
        feeds[f"x{i}"] = rng.standard_normal((m, k)).astype(np.float32)
        w = rng.standard_normal((k, n)).astype(np.float32)
        b = rng.standard_normal(n).astype(np.float32)
        out = g.apply("linear", x, g.add_const(w), g.add_const(b), **attrs)
        want[out.name] = run_reference("linear", [feeds[f"x{i}"], w, b], attrs)[0]
    g.set_outputs(*[nd.outputs[0] for nd in g.nodes])
    return g, feeds, want


@pytest.fixture
def always_parallel(monkeypatch):
    """Every kernel runs as shares on two threads, however small."""
    monkeypatch.setattr(lower, "PARALLEL_FLOPS", 0)
    monkeypatch.setattr(lower, "PARALLEL_BYTES", 0)


def _run(graph, feeds, threads, native=False):
    model = compile_graph(graph, threads=threads)
    model.native_threads = native
    assert model.fallback_nodes == [], model.fallback_nodes
    return model, model(**feeds)


def test_linear_odd_sizes_every_dimension():
    """Each size of SIZES in each of M, K and N, the other two drawn from SIZES in turn."""
    cases = []
    for i, v in enumerate(SIZES):
        a, b = SIZES[(i + 2) % len(SIZES)], SIZES[(i + 4) % len(SIZES)]
        cases += [(v, a, b), (a, v, b), (a, b, v)]
    g, feeds, want = _many_linears(cases, seed=1)
    _, got = _run(g, feeds, threads=1)
    for name, w in want.items():
        _rel_close(got[name], w, name)


@pytest.mark.parametrize(("threads", "native"), [(1, False), (2, False), (2, True)])
def test_linear_size_triples_threads(always_parallel, threads, native):
    """Products of odd sizes, run as shares on two threads (pool and pthreads)."""
    cases = list(itertools.product((1, 17, 300), (3, 129), (1, 64, 129)))
    g, feeds, want = _many_linears(cases, seed=2, act="gelu")
    _, got = _run(g, feeds, threads, native)
    for name, w in want.items():
        _rel_close(got[name], w, name)


@pytest.mark.parametrize("act", ["none", "relu", "gelu", "gelu_tanh", "silu", "sigmoid", "tanh"])
@pytest.mark.parametrize(
    ("bias", "res"), [(False, False), (True, False), (False, True), (True, True)]
)
def test_epilogue_combinations(always_parallel, act, bias, res):
    """Bias, activation and residual, on full panels and the partial last panel (N = 16·2 + 5)."""
    rng = np.random.default_rng(7)
    m, k, n = 29, 40, 37
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = rng.standard_normal((k, n)).astype(np.float32) * 0.3
    b = rng.standard_normal(n).astype(np.float32)
    r = rng.standard_normal((m, n)).astype(np.float32)
    g = Graph("epi")
    xv = g.add_input("x", (m, k))
    ins = [xv, g.add_const(w), g.add_const(b) if bias else None]
    feeds = {"x": x}
    if res:
        ins.append(g.add_input("r", (m, n)))
        feeds["r"] = r
    g.set_outputs(g.apply("linear", *ins, act=act))
    want = run_reference("linear", [x, w, b if bias else None, r if res else None], {"act": act})[0]
    for threads in (1, 2):
        _, got = _run(g, feeds, threads)
        np.testing.assert_allclose(got[g.outputs[0].name], want, rtol=RTOL, atol=RTOL)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ((4, 17, 33), (4, 33, 129)),
        ((3, 1, 300), (3, 300, 3)),
        ((2, 3, 64, 17), (2, 3, 17, 64)),
        ((5, 129, 64), (64, 17)),
    ],
)
def test_batched_matmul_runtime_b(always_parallel, a, b):
    rng = np.random.default_rng(len(a) + a[-1])
    g = Graph("bmm")
    av, bv = g.add_input("a", a), g.add_input("b", b)
    g.set_outputs(g.apply("matmul", av, bv))
    feeds = {
        "a": rng.standard_normal(a).astype(np.float32),
        "b": rng.standard_normal(b).astype(np.float32),
    }
    want = feeds["a"] @ feeds["b"]
    for threads, native in ((1, False), (2, False), (2, True)):
        _, got = _run(g, feeds, threads, native)
        _rel_close(got[g.outputs[0].name], want, f"{a}@{b} threads={threads}")


def _gemm_alone(spec: gemm_mod.GemmSpec, a, bpacked, bias, res):
    """JIT one gemm_kernel alone; returns a function (part, nparts) and the output array."""
    from satura.targets.irmath import INTRINSICS
    from satura.targets.kernel import PRELUDE, Operand

    out = np.full((spec.batch, spec.m, spec.n), np.nan, np.float32)
    bufs = [out, a, bpacked, bias, res]
    ir = gemm_mod.gemm_kernel(
        "g", spec, *[Operand(i) if x is not None else None for i, x in enumerate(bufs)]
    )
    jit = codegen.JitModule(
        codegen.emit_object(codegen.optimize_ir("\n".join([PRELUDE, *INTRINSICS, ir])))
    )
    table = (ctypes.c_void_p * 5)(*[x.ctypes.data if x is not None else 0 for x in bufs])
    fn = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64)(jit.address("g"))

    def run(part: int, nparts: int) -> None:
        fn(ctypes.addressof(table), part, nparts)

    run.keep = (jit, table, bufs)  # type: ignore[attr-defined]
    return run, out


@pytest.mark.parametrize("act", ["relu", "gelu"])
@pytest.mark.parametrize("parts", [1, 3, 8])
def test_bias_per_row_and_shared_a(act, parts):
    """``bias_rows`` (a bias per output row, applied in registers for relu and in the panel pass
    for gelu) with one A for every batch (``a_batch_stride`` 0) and a B per batch."""
    host = codegen.host_target()
    mr, nr = host.gemm_tile
    rng = np.random.default_rng(parts)
    batch, m, k, n = 3, 19, 45, 70
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((batch, k, n)).astype(np.float32)
    bias = rng.standard_normal(m).astype(np.float32)
    res = rng.standard_normal((batch, m, n)).astype(np.float32)
    spec = gemm_mod.GemmSpec(
        batch, m, n, k, 0, True, True, True, act, mr, nr, host.lanes, bias_rows=True
    )
    run, out = _gemm_alone(spec, a, gemm_mod.pack_b_numpy(b, nr), bias, res)
    for p in range(parts):
        run(p, parts)
    want = (a @ b) + bias[:, None]
    want = run_reference("gelu", [want], {})[0] if act == "gelu" else np.maximum(want, 0)
    _rel_close(out, want + res, f"bias_rows {act}")


@pytest.mark.parametrize("pack", [True, False])
def test_packed_and_direct_a_paths(monkeypatch, pack):
    """Both ways of reading A, on partial row panels and a K that is not a multiple of 8."""
    big = 10**9
    monkeypatch.setattr(gemm_mod, "PACK_MIN_PANELS", 0 if pack else big)
    monkeypatch.setattr(gemm_mod, "PACK_MIN_PANELS_ALIASED", 0 if pack else big)
    monkeypatch.setattr(gemm_mod, "B_PANEL_BYTES", 4096)  # several K blocks, the last partial
    monkeypatch.setattr(gemm_mod, "MC", 12)  # several row blocks, the last one partial
    cases = [(29, 203, 50), (7, 13, 129), (64, 300, 64), (1, 257, 17)]
    g, feeds, want = _many_linears(cases, seed=11, act="relu")
    _, got = _run(g, feeds, threads=1)
    for name, w in want.items():
        _rel_close(got[name], w, name)


@pytest.mark.parametrize(("m", "k", "n"), [(131, 70, 200), (1, 40, 300), (4, 33, 1000)])
def test_every_part_count_covers_the_output_once(m, k, n):
    """Run a GEMM's shares one after another for part counts 1..70 (grids of row × panel
    shares, and more parts than the grid table holds) over an output filled with NaN: the
    shares together write every element, each with its residual."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = rng.standard_normal((k, n)).astype(np.float32)
    r = rng.standard_normal((m, n)).astype(np.float32)
    g = Graph("parts")
    xv, rv = g.add_input("x", (m, k)), g.add_input("r", (m, n))
    g.set_outputs(g.apply("linear", xv, g.add_const(w), None, rv))
    model = compile_graph(g, threads=1)
    want = x @ w + r
    out = model(x=x, r=r)[g.outputs[0].name]
    _rel_close(out, want, "one part")
    (kernel,) = [what for kind, what, _ in model._run if kind == "k"]
    for parts in [*range(1, 18), 24, 63, 64, 65, 70]:
        out[...] = np.nan
        for p in range(parts):
            kernel(model._table_addr, p, parts)
        _rel_close(out, want, f"{parts} parts")


def test_part_grid_choice():
    """Wide, short products split their columns; tall ones their rows; a part count is always
    the product of the two share counts."""
    wide = gemm_mod.GemmSpec(1, 128, 3072, 768, 128 * 768, False, True, False, "gelu", 6, 16, 8)
    tall = gemm_mod.GemmSpec(1, 3136, 64, 576, 0, True, True, False, "relu", 6, 16, 8)
    assert wide.grid(8) == 1
    assert tall.grid(8) == 8
    for spec in (wide, tall):
        for parts in range(1, 70):
            assert parts % spec.grid(parts) == 0


def _blocks(fn_text: str) -> dict[str, str]:
    """Basic blocks of an optimized function, by label (the entry block as 'entry')."""
    body = fn_text.split("{", 1)[1]
    out, label, cur = {}, "entry", []
    for line in body.splitlines():
        mt = re.match(r"^([\w.]+):", line)
        if mt:
            out[label] = "\n".join(cur)
            label, cur = mt.group(1), []
        else:
            cur.append(line)
    out[label] = "\n".join(cur)
    return out


def _function(ir: str, name: str) -> str:
    m = re.search(rf"define [^@]*@{re.escape(name)}\(.*?\n}}", ir, re.S)
    assert m, f"{name} not in the module"
    return m.group(0)


def test_ir_micro_kernels_and_driver():
    """The hot loops: whole-tile vector FMAs per k, in a block that loops on itself; no stack or
    heap allocation inside any loop."""
    host = codegen.host_target()
    mr, nr = host.gemm_tile
    lanes = host.lanes
    g = Graph("snap")
    x = g.add_input("x", (100, 300))
    g.set_outputs(
        g.apply(
            "linear",
            x,
            g.add_const(np.ones((300, 1000), np.float32)),
            g.add_const(np.ones(1000, np.float32)),
            act="gelu",
        )
    )
    model = compile_graph(g)
    opt = str(codegen.optimize_ir(model.llvm_ir))
    assert "malloc" not in opt
    for fam in ("u", "d"):  # A packed, A read in place
        micro = _function(opt, f"k0_linear_{fam}{mr}")
        loops = [b for lab, b in _blocks(micro).items() if re.search(rf"label %{lab}\b", b)]
        assert loops, "no loop in the micro-kernel"
        hot = max(loops, key=lambda b: b.count("@llvm.fma."))
        fmas = re.findall(rf"call[a-z ]* <{lanes} x float> @llvm\.fma\.v{lanes}f32", hot)
        assert len(fmas) >= mr * nr // lanes  # the whole register tile, every k
        assert re.search(rf"load <{lanes} x float>", hot)  # B rows as vectors
        assert "alloca" not in micro
        assert "llvm.prefetch" in micro
    body = _function(opt, "k0_linear")  # the exported entry, the body inlined into it
    blocks = _blocks(body)
    assert "alloca" not in "".join(b for lab, b in blocks.items() if lab != "entry")
    # The panel pass applies GELU with vector maths and no scalar calls.
    ep = _function(opt, "k0_linear_ep")
    assert re.search(rf"store <{lanes} x float>", ep)
    assert not re.search(r"call float @(?!llvm\.)", ep)


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("parts", [1, 3, 8])
def test_pack_kernel_matches_numpy_packing(transposed, parts):
    """The runtime B packing (groups of full panels, a partial last panel, several batches,
    the transposed source) gives exactly what the compile-time packing gives."""
    from satura.targets.irmath import INTRINSICS
    from satura.targets.kernel import PRELUDE, Operand

    nr = codegen.host_target().gemm_tile[1]
    batch, k, n = 2, 13, nr * (gemm_mod.PACK_GROUP + 1) + 5
    b = np.random.default_rng(parts).standard_normal((batch, k, n)).astype(np.float32)
    src = np.ascontiguousarray(np.swapaxes(b, 1, 2)) if transposed else b
    want = gemm_mod.pack_b_numpy(b, nr)
    out = np.full(want.shape, np.nan, np.float32)
    ir = gemm_mod.pack_kernel("p", batch, k, n, nr, Operand(1), Operand(0), transposed)
    jit = codegen.JitModule(
        codegen.emit_object(codegen.optimize_ir("\n".join([PRELUDE, *INTRINSICS, ir])))
    )
    table = (ctypes.c_void_p * 2)(out.ctypes.data, src.ctypes.data)
    fn = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64)(jit.address("p"))
    for p in range(parts):
        fn(ctypes.addressof(table), p, parts)
    np.testing.assert_array_equal(out, want)


def test_few_row_micro_kernels_hide_fma_latency():
    """A tile of one or two rows has too few accumulators for the FMA latency: its hot loop
    takes several k steps into separate accumulators (at least 8 vector FMAs a turn), and
    a K that is not a multiple of the step count still gives the exact product."""
    host = codegen.host_target()
    lanes, nv = host.lanes, host.gemm_tile[1] // host.lanes
    g = Graph("few")
    x = g.add_input("x", (1, 301))
    w = np.random.default_rng(3).standard_normal((301, 40)).astype(np.float32)
    g.set_outputs(g.apply("linear", x, g.add_const(w)))
    model = compile_graph(g)
    opt = str(codegen.optimize_ir(model.llvm_ir))
    for rows in (1, 2):
        micro = _function(opt, f"k0_linear_u{rows}")
        loops = [b for lab, b in _blocks(micro).items() if re.search(rf"label %{lab}\b", b)]
        hot = max(loops, key=lambda b: b.count("@llvm.fma."))
        fmas = re.findall(rf"call[a-z ]* <{lanes} x float> @llvm\.fma\.v{lanes}f32", hot)
        assert len(fmas) >= 8 > rows * nv, (rows, len(fmas))
    xv = np.random.default_rng(4).standard_normal((1, 301)).astype(np.float32)
    got = model(x=xv)[g.outputs[0].name]
    np.testing.assert_allclose(got, xv @ w, rtol=1e-4, atol=1e-4)
