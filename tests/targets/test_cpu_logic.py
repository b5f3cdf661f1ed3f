"""Comparisons, logic, IsNaN and Where as compiled kernels, bit for bit against numpy.

Every case runs on one and two threads through ``check_compiled`` (no numpy fallback allowed, the
outputs' dtypes and bits equal to the reference's). Rows of 37 and 1001 elements take both the
vector loop and the scalar tail (and the widened vectors of long rows).
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from satura.engine.errors import CodegenError
from satura.engine.graph import Graph
from satura.targets import codegen, compile_graph, elementwise, lower
from satura.targets.elementwise import ew_kernel, typed_expr_dtype
from satura.targets.kernel import Operand

from tests.targets.helpers import check_compiled, reference

pytestmark = pytest.mark.llvm

COMPARE = ["equal", "less", "less_equal", "greater", "greater_equal"]
# (a, b): same shape, row, column, scalar, both broadcast, long row (wide vectors plus a tail)
BROADCASTS = [
    ((5, 37), (5, 37)),
    ((5, 37), (37,)),
    ((5, 37), (5, 1)),
    ((), (3, 41)),
    ((2, 1, 33), (2, 5, 1)),
    ((3, 1001), (1, 1001)),
]


def special_floats(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Random fp32 values with NaN, ±inf, ±0 and repeated small integers (so equal holds)."""
    rng = np.random.default_rng(seed)
    x = np.asarray(rng.integers(-3, 4, size=shape), np.float32)
    flat = x.reshape(-1)
    pool = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 0.5], np.float32)
    picks = rng.random(flat.shape) < 0.3
    flat[picks] = rng.choice(pool, size=int(picks.sum()))
    return x


def bools(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.asarray(np.random.default_rng(seed).random(shape) < 0.5)


def graph_of(op: str, inputs: list[tuple[tuple[int, ...], str]], **attrs):
    g = Graph(op)
    vals = [g.add_input(f"x{i}", s, dt) for i, (s, dt) in enumerate(inputs)]
    g.set_outputs(g.apply(op, *vals, **attrs))
    return g


def compiled(graph: Graph, threads: int = 1):
    model = compile_graph(graph, threads=threads)
    assert model.fallback_nodes == [], model.fallback_nodes
    return model


# -- single ops ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("a", "b"), BROADCASTS)
@pytest.mark.parametrize("op", COMPARE)
def test_float_comparison_broadcast_nan_inf(op, a, b):
    g = graph_of(op, [(a, "float32"), (b, "float32")])
    feeds = {"x0": special_floats(a, 1), "x1": special_floats(b, 2)}
    want = check_compiled(g, feeds, rtol=None)
    out = next(iter(want.values()))
    assert out.dtype == np.bool_
    assert out.any()
    assert not out.all()


@pytest.mark.parametrize("dtype", ["int64", "int32", "int8", "uint8", "uint16", "uint64", "bool"])
@pytest.mark.parametrize("op", COMPARE)
def test_integer_and_bool_comparison(op, dtype):
    a, b = (4, 37), (37,)
    rng = np.random.default_rng(3)
    info = np.iinfo(dtype) if dtype != "bool" else None
    if info is None:
        x0, x1 = bools(a, 4), bools(b, 5)
    else:  # small values (ties) and the type's extremes (signed vs unsigned order)
        x0 = rng.integers(0, 3, size=a).astype(dtype)
        x1 = rng.integers(0, 3, size=b).astype(dtype)
        x0[0, :6] = [info.min, info.max, info.min, info.max, 0, 1]
        x1[:6] = [info.max, info.min, info.min, info.max, info.max, info.min]
    g = graph_of(op, [(a, dtype), (b, dtype)])
    check_compiled(g, {"x0": x0, "x1": x1}, rtol=None)


@pytest.mark.parametrize(("a", "b"), BROADCASTS)
@pytest.mark.parametrize("op", ["and", "or"])
def test_logic_broadcast(op, a, b):
    g = graph_of(op, [(a, "bool"), (b, "bool")])
    check_compiled(g, {"x0": bools(a, 6), "x1": bools(b, 7)}, rtol=None)


@pytest.mark.parametrize("shape", [(5, 37), (), (3, 1001), (1,)])
def test_not(shape):
    g = graph_of("not", [(shape, "bool")])
    check_compiled(g, {"x0": bools(shape, 8)}, rtol=None)


def test_bool_inputs_are_read_as_nonzero_bytes():
    """A bool input is tested against zero, so every byte the runtime accepts reads as numpy
    would: ``not`` gives exactly 0/1 bytes."""
    g = graph_of("not", [((3, 41), "bool")])
    x = bools((3, 41), 9)
    got = compiled(g)(x0=x)[g.outputs[0].name]
    assert got.view(np.uint8).max() == 1
    np.testing.assert_array_equal(got, ~x)


@pytest.mark.parametrize("shape", [(5, 37), (), (2, 1001)])
def test_isnan(shape):
    g = graph_of("isnan", [(shape, "float32")])
    x = special_floats(shape, 10)
    if x.ndim:
        x.reshape(-1)[:3] = [np.nan, -np.nan, np.inf]
        x.reshape(-1)[-1] = np.float32(np.frombuffer(b"\x01\x00\xc0\xff", np.float32)[0])
    check_compiled(g, {"x0": x}, rtol=None)


@pytest.mark.parametrize(
    ("c", "a", "b"),
    [
        ((5, 37), (5, 37), (5, 37)),
        ((5, 1), (37,), ()),
        ((37,), (5, 1), (5, 37)),
        ((), (3, 1001), (1001,)),
        ((2, 1, 33), (5, 1), (2, 5, 33)),
    ],
)
def test_where_broadcast_all_operands(c, a, b):
    g = graph_of("where", [(c, "bool"), (a, "float32"), (b, "float32")])
    feeds = {"x0": bools(c, 11), "x1": special_floats(a, 12), "x2": special_floats(b, 13)}
    check_compiled(g, feeds, rtol=None)


def test_where_attention_mask():
    """The HF mask: a bool [B,1,1,S] padding mask selects scores [B,H,S,S] or -inf."""
    B, H, S = 2, 3, 37
    g = Graph("mask")
    mask = g.add_input("mask", (B, 1, 1, S), "bool")
    scores = g.add_input("scores", (B, H, S, S))
    g.set_outputs(g.apply("where", mask, scores, g.add_const(np.float32(-np.inf), "ninf")))
    rng = np.random.default_rng(14)
    m = bools((B, 1, 1, S), 15)
    m[0, ..., :3] = False
    out = check_compiled(
        g, {"mask": m, "scores": rng.standard_normal((B, H, S, S)).astype(np.float32)}, rtol=None
    )
    assert np.isneginf(next(iter(out.values()))).any()


@pytest.mark.parametrize("dtype", ["int64", "int32", "bool"])
def test_where_non_float_operands(dtype):
    g = graph_of("where", [((4, 37), "bool"), ((37,), dtype), ((4, 1), dtype)])
    rng = np.random.default_rng(16)
    make = (
        (lambda s, k: bools(s, k))
        if dtype == "bool"
        else (lambda s, k: rng.integers(-(2**31), 2**31 - 1, size=s).astype(dtype))
    )
    check_compiled(
        g, {"x0": bools((4, 37), 17), "x1": make((37,), 18), "x2": make((4, 1), 19)}, rtol=None
    )


def test_parallel_shares_and_streaming_stores(monkeypatch):
    """Split across cores (thresholds lowered) and written with streaming stores (threshold
    lowered): bool and int64 outputs, rows whose length is and is not a vector multiple."""
    monkeypatch.setattr(lower, "PARALLEL_BYTES", 0)
    monkeypatch.setattr(elementwise, "STREAM_BYTES", 0)
    for shape in [(6, 256), (4, 1001), (7000,)]:
        g = graph_of("less", [(shape, "float32"), (shape[-1:], "float32")])
        check_compiled(
            g,
            {"x0": special_floats(shape, 20), "x1": special_floats(shape[-1:], 21)},
            threads=(2,),
            rtol=None,
        )
        g = graph_of("where", [(shape, "bool"), (shape, "int64"), ((), "int64")])
        check_compiled(
            g,
            {
                "x0": bools(shape, 22),
                "x1": np.arange(np.prod(shape)).reshape(shape),
                "x2": np.array(-7),
            },
            threads=(2,),
            rtol=None,
        )


# -- fusion ----------------------------------------------------------------------------------------
def mask_graph(B: int = 2, H: int = 3, S: int = 37) -> tuple[Graph, dict[str, np.ndarray]]:
    """HF-style masking computed at run time: attention_mask == 0 -> Not -> Where(scores·scale,
    -inf) -> softmax, with an isnan/Or guard and float ops after."""
    g = Graph("hf")
    am = g.add_input("attention_mask", (B, 1, 1, S))
    sc = g.add_input("scores", (B, H, S, S))
    pad = g.apply("equal", am, g.add_const(np.float32(0.0), "zero"))
    keep = g.apply("not", pad)
    scaled = g.apply("mul", sc, g.add_const(np.float32(0.125), "scale"))
    masked = g.apply("where", keep, scaled, g.add_const(np.float32(-np.inf), "ninf"))
    probs = g.apply("softmax", masked)
    bad = g.apply(
        "or", g.apply("isnan", probs), g.apply("less", probs, g.add_const(np.float32(0.0), "z2"))
    )
    g.set_outputs(probs, g.apply("where", bad, g.add_const(np.float32(0.0), "z3"), probs))
    rng = np.random.default_rng(23)
    m = (rng.random((B, 1, 1, S)) < 0.8).astype(np.float32)
    m[1, ..., :4] = 0.0
    return g, {"attention_mask": m, "scores": rng.standard_normal((B, H, S, S)).astype(np.float32)}


def test_mask_graph_fuses_and_matches_numpy():
    g, feeds = mask_graph()
    want = reference(g, feeds)
    for threads in (1, 2):
        model = compiled(g, threads)
        # equal+not+where (with the mul inlined), softmax, isnan+or+where (with less inlined)
        assert len(model.kernels) == 3, model.kernels
        got = model(**feeds)
        for k, w in want.items():
            np.testing.assert_allclose(got[k], w, rtol=1e-5, atol=1e-7, err_msg=k)


def test_chain_from_fp32_node_runs_into_where():
    """A chain may start at a fp32 elementwise node (here a mul) and run into a where."""
    g = Graph("f")
    x = g.add_input("x", (4, 37))
    m = g.add_input("m", (37,), "bool")
    y = g.apply("exp", g.apply("mul", x, x))
    g.set_outputs(g.apply("add", g.apply("where", m, y, x), x))
    model = compiled(g)
    assert model.kernels == ["k0_mul_exp_where_add"], model.kernels
    # finite values: the fp32 exp saturates instead of reaching inf (not what this checks)
    feeds = {
        "x": np.random.default_rng(24).standard_normal((4, 37)).astype(np.float32),
        "m": bools((37,), 25),
    }
    np.testing.assert_allclose(model(**feeds)["add"], reference(g, feeds)["add"], rtol=2e-6)


def test_fp32_chain_without_typed_op_keeps_fp32_lowering():
    g = Graph("f")
    x = g.add_input("x", (4, 37))
    g.set_outputs(g.apply("exp", g.apply("mul", x, x)))
    assert compiled(g).kernels == ["k0_mul", "k1_exp"]


def test_producers_after_the_start_are_inlined():
    """and(less(a, b), greater(c, d)): greater runs after less, so it is taken into less's
    kernel (its operands are ready), not computed first."""
    g = Graph("t")
    a, b, c, d = (g.add_input(n, (3, 37)) for n in "abcd")
    g.set_outputs(g.apply("and", g.apply("less", a, b), g.apply("greater", c, d)))
    model = compiled(g)
    assert model.kernels == ["k0_less_and_greater"], model.kernels
    feeds = {n: special_floats((3, 37), 26 + i) for i, n in enumerate("abcd")}
    check_compiled(g, feeds, rtol=None)


def test_producer_read_twice_is_inlined_once():
    g = Graph("t")
    a, x = g.add_input("a", (3, 37)), g.add_input("x", (3, 37))
    lt = g.apply("less", a, x)
    t = g.apply("mul", x, x)
    g.set_outputs(g.apply("where", lt, t, g.apply("neg", t)))  # t has two readers: stored
    assert compiled(g).kernels == ["k0_less", "k1_mul", "k2_neg_where"]
    g = Graph("t")
    a, x = g.add_input("a", (3, 37)), g.add_input("x", (3, 37))
    lt = g.apply("less", a, x)
    t = g.apply("mul", x, x)
    g.set_outputs(g.apply("where", lt, t, t))  # one reader, two operands
    assert compiled(g).kernels == ["k0_less_where_mul"]
    check_compiled(
        g, {"a": special_floats((3, 37), 34), "x": special_floats((3, 37), 35)}, rtol=None
    )


def test_chain_stops_where_values_are_shared_or_late():
    g = Graph("t")
    a = g.add_input("a", (3, 37))
    w = g.add_const(np.ones((37, 37), np.float32), "w")
    lt = g.apply("less", a, g.add_const(np.float32(0.5)))
    mm = g.apply("matmul", a, w)  # not elementwise: the where must wait for it
    sel = g.apply("where", lt, mm, a)
    g.set_outputs(sel, g.apply("not", lt))  # lt has two readers: it is stored
    feeds = {"a": special_floats((3, 37), 30)}
    want = reference(g, feeds)
    model = compiled(g)
    assert len(model.kernels) == 4, model.kernels
    got = model(**feeds)
    for k, v in want.items():
        np.testing.assert_array_equal(got[k], v)


def test_expensive_intermediate_is_not_recomputed_per_broadcast_element():
    g = Graph("t")
    row = g.add_input("row", (1, 37))
    big = g.add_input("big", (50, 37))
    g.set_outputs(g.apply("less", g.apply("exp", row), big))
    model = compiled(g)
    assert model.kernels == ["k0_exp", "k1_less"], model.kernels
    g2 = Graph("t")
    row = g2.add_input("row", (1, 37))
    big = g2.add_input("big", (50, 37))
    g2.set_outputs(g2.apply("less", g2.apply("neg", row), big))
    assert compiled(g2).kernels == ["k0_neg_less"]


def test_typed_ew_node():
    """An ``ew`` node whose expression compares and selects, over fp32 and bool inputs."""
    expr = (
        "where",
        ("and", ("in", 2), ("greater_equal", ("in", 0), ("in", 1))),
        ("mul", ("in", 0), ("const", 2.0)),
        ("neg", ("in", 1)),
    )
    g = Graph("ew")
    x, y, m = g.add_input("x", (3, 41)), g.add_input("y", (41,)), g.add_input("m", (3, 1), "bool")
    g.set_outputs(g.apply("ew", x, y, m, expr=expr))
    feeds = {
        "x": special_floats((3, 41), 31),
        "y": special_floats((41,), 32),
        "m": bools((3, 1), 33),
    }
    check_compiled(g, feeds, rtol=None)


# -- what is not compiled, and the generated code --------------------------------------------------
def test_unsupported_dtypes_fall_back():
    g = Graph("fb")
    h = g.add_input("h", (3, 5), "float64")  # float16 computes in fp32 (precision.py)
    d = g.add_input("d", (3, 5), "float64")
    g.set_outputs(g.apply("isnan", h), g.apply("less", d, d))
    model = compile_graph(g)
    assert model.fallback_nodes == [n.name for n in g.nodes]
    feeds = {"h": np.full((3, 5), np.nan, np.float64), "d": np.ones((3, 5))}
    for k, v in reference(g, feeds).items():
        np.testing.assert_array_equal(model(**feeds)[k], v)


def test_constant_typed_as_the_reference_types_it():
    """``ew`` constants take input 0's dtype in the reference: 2.7 compared with int64 is 2."""
    ints = ["int64", "int64"]
    assert typed_expr_dtype(("less", ("in", 0), ("const", 2.7)), ints) == "bool"
    assert (
        typed_expr_dtype(("where", ("in", 0), ("in", 1), ("const", -1.0)), ["bool", "float32"])
        is None
    )  # the reference makes -1.0 a bool
    assert typed_expr_dtype(("add", ("in", 0), ("in", 1)), ints) == "int64"
    assert typed_expr_dtype(("add", ("in", 0), ("in", 1)), ["int64", "int32"]) is None
    assert typed_expr_dtype(("exp", ("in", 0)), ints) is None  # no integer exp
    assert typed_expr_dtype(("less", ("in", 0), ("in", 1)), ["int64", "int32"]) is None
    g = Graph("c")
    x = g.add_input("x", (9,), "int64")
    g.set_outputs(g.apply("ew", x, expr=("less_equal", ("in", 0), ("const", 2.7))))
    check_compiled(g, {"x": np.arange(-4, 5)}, rtol=None)


def test_ill_typed_expression_is_a_codegen_error():
    with pytest.raises(CodegenError, match="differing dtypes"):
        ew_kernel(
            "k",
            ("where", ("in", 0), ("in", 1), ("in", 1)),
            Operand(0),
            (4,),
            [(Operand(1), (4,)), (Operand(2), (4,))],
            8,
            ["float32", "float32"],
        )


def test_fp32_expression_text_is_unchanged_by_dtypes():
    expr = ("gelu", ("add", ("mul", ("in", 0), ("in", 1)), ("const", 0.5)))
    ins = [(Operand(1), (3, 1001)), (Operand(2), (1001,))]
    plain = ew_kernel("k", expr, Operand(0, 64), (3, 1001), ins, 8)
    typed = ew_kernel("k", expr, Operand(0, 64), (3, 1001), ins, 8, ["float32", "float32"])
    strip = re.compile(r"%e\d+")  # the emitter's global value counter
    assert strip.sub("%e", plain) == strip.sub("%e", typed)
    assert "icmp ne" not in plain  # no bool leaf (<L x i8> -> <L x i1>); fcmp masks are fine
    assert "x i8>" not in plain
    assert "zext" not in plain


def test_ir_is_vectorized_over_bytes():
    """Bool leaves load as <L x i8>, become <L x i1> by icmp ne, select fp32 vectors; bool
    results are stored as whole <L x i8> vectors."""
    g = Graph("ir")
    m = g.add_input("m", (4, 1, 512), "bool")
    x = g.add_input("x", (4, 8, 512))
    w = g.apply("where", m, x, g.add_const(np.float32(-np.inf)))
    g.set_outputs(w, g.apply("greater", x, g.add_const(np.float32(0.0))))
    model = compiled(g)
    opt = str(codegen.optimize_ir(model.llvm_ir))
    where = re.search(r"define [^@]*@k0_where\(.*?\n}", opt, re.S)
    gt = re.search(r"define [^@]*@k\d+_greater\(.*?\n}", opt, re.S)
    assert where
    assert gt
    assert re.search(r"load <(\d+) x i8>", where.group(0))
    assert re.search(r"select <\d+ x i1> %\S+, <\d+ x float>", where.group(0))
    assert re.search(r"fcmp ogt <\d+ x float>", gt.group(0))
    assert re.search(r"store <\d+ x i8>", gt.group(0))
    for text in (where.group(0), gt.group(0)):
        assert "alloca" not in text
        assert "malloc" not in text


# -- casts inside chains -------------------------------------------------------------------------
CAST_VALUES = {
    "bool": lambda n: bools((n,), 40),
    "float32": lambda n: np.resize(
        np.array([0.0, -0.0, np.nan, np.inf, -2.5, 1e-45, 3.0], np.float32), n
    ),
    "int64": lambda n: np.resize(
        np.array([0, -1, 2**40 + 1, -(2**63), 2**63 - 1, 16777217, 200], np.int64), n
    ),
    "uint64": lambda n: np.resize(np.array([0, 1, 2**64 - 1, 2**63, 16777217], np.uint64), n),
    "int8": lambda n: np.resize(np.array([0, -128, 127, -1, 5], np.int8), n),
    "uint8": lambda n: np.resize(np.array([0, 255, 128, 1], np.uint8), n),
    "int32": lambda n: np.resize(np.array([0, -(2**31), 2**31 - 1, -7, 16777217], np.int32), n),
}
CASTS = [
    ("bool", "float32"),
    ("bool", "int64"),
    ("bool", "uint8"),
    ("float32", "bool"),
    ("int64", "float32"),
    ("uint64", "float32"),
    ("int64", "int8"),
    ("int64", "bool"),
    ("int8", "int64"),
    ("uint8", "int32"),
    ("int32", "uint8"),
    ("int64", "uint64"),
    ("int32", "float32"),
    ("float32", "float32"),
]


@pytest.mark.parametrize(("src", "dst"), CASTS)
def test_cast_in_a_chain_converts_as_astype(src, dst):
    """where(m, cast(x), y): the cast starts a typed kernel that runs into the where."""
    n = 1001
    g = Graph("cast")
    x, m, y = (
        g.add_input("x", (2, n), src),
        g.add_input("m", (n,), "bool"),
        g.add_input("y", (2, 1), dst),
    )
    g.set_outputs(g.apply("where", m, g.apply("cast", x, to=dst), y))
    feeds = {
        "x": np.stack([CAST_VALUES[src](n), CAST_VALUES[src](n)[::-1]]),
        "m": bools((n,), 41) | (np.arange(n) < 7),
        "y": CAST_VALUES[dst](2).reshape(2, 1),
    }
    model = compiled(g)
    assert model.kernels == ["k0_cast_where"], model.kernels
    check_compiled(g, feeds, rtol=None)


def test_float_to_int_cast_is_not_taken_into_a_chain():
    g = Graph("cast")
    x, m = g.add_input("x", (37,)), g.add_input("m", (37,), "bool")
    y = g.add_input("y", (37,), "int32")
    g.set_outputs(g.apply("where", m, g.apply("cast", x, to="int32"), y))
    model = compile_graph(g)
    assert model.kernels == ["k0_cast", "k1_where"], model.kernels


def test_hf_additive_mask_from_int64_is_one_kernel():
    """(1 - cast(attention_mask)) · min + scores, from an int64 mask, as HF's eager path builds
    it: the cast, the float ops and the broadcast add run as one kernel over the scores."""
    B, H, S = 2, 3, 37
    g = Graph("hf")
    am = g.add_input("attention_mask", (B, 1, 1, S), "int64")
    sc = g.add_input("scores", (B, H, S, S))
    inv = g.apply("sub", g.add_const(np.float32(1.0), "one"), g.apply("cast", am, to="float32"))
    bias = g.apply("mul", inv, g.add_const(np.float32(np.finfo(np.float32).min), "min"))
    g.set_outputs(g.apply("add", sc, bias))
    rng = np.random.default_rng(42)
    mask = (rng.random((B, 1, 1, S)) < 0.7).astype(np.int64)
    model = compiled(g)
    assert model.kernels == ["k0_cast_sub_mul_add"], model.kernels
    check_compiled(
        g,
        {"attention_mask": mask, "scores": rng.standard_normal((B, H, S, S)).astype(np.float32)},
        rtol=None,
    )
