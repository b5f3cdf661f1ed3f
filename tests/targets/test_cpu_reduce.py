"""Compiled reductions (reduce_sum/mean/max/min/prod, argmax/argmin) against the numpy references.

Every case asserts that the reduction ran as a generated kernel (no numpy fallback). Tolerances:
max, min, argmax and argmin are compared bit for bit (they select an input element or index).
Sums and means are fp32 in another association than numpy's (4·L lane accumulators against
numpy's pairwise or linear sums); both are within γ_n·Σ|x| of the exact sum (γ_n = n·2⁻²⁴, n the
longest add chain), and for these sizes and random data the observed error is far below
1e-5·Σ|x| (the rounding errors of independent terms cancel like a random walk), so the bound
checked is ``|got - want| <= 1e-5 · Σ|x|`` per output element (the mean: over the count). A
product's relative error grows with its count at most like ``count·2⁻²⁴`` on each side, so
products are checked with ``rtol = max(1e-5, 1.2e-7 · count)``. Integer reductions (int32,
int64) are compared exactly: their sums and products wrap as numpy's do.
"""

from __future__ import annotations

import itertools
import re
import warnings
import zlib
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from satura.engine.graph import Graph
from satura.engine.ops import run_reference
from satura.targets import compile_graph, lower
from satura.targets.kernel import Operand
from satura.targets.reductions import (
    KINDS,
    Group,
    column_reduce_kernel,
    plan_reduction,
    row_reduce_kernel,
)

import satura
from tests.targets.helpers import reference

pytestmark = pytest.mark.llvm

REDUCE_OPS = ("reduce_sum", "reduce_mean", "reduce_max", "reduce_min", "reduce_prod")
ARG_OPS = ("argmax", "argmin")


def _inputs(shape: tuple[int, ...], seed: int) -> dict[str, np.ndarray]:
    """``x`` standard normal; ``p`` near 1 (products neither overflow nor vanish)."""
    rng = np.random.default_rng(seed)
    x = np.asarray(rng.standard_normal(shape), dtype=np.float32)
    p = np.asarray(1.0 + 0.05 * rng.standard_normal(shape), dtype=np.float32)
    return {"x": x, "p": p}


def _reduce_graph(
    shape: tuple[int, ...], axes: tuple[int, ...] | None, ops: tuple[str, ...] = REDUCE_OPS
) -> Graph:
    """Every op in ``ops`` over ``axes``, keepdims 0 and 1: one output each."""
    g = Graph("reduce")
    x, p = g.add_input("x", shape), g.add_input("p", shape)
    outs = []
    for op, keep in itertools.product(ops, (0, 1)):
        outs.append(g.apply(op, p if op == "reduce_prod" else x, axes=axes, keepdims=keep))
    g.set_outputs(*outs)
    return g


def _assert_close(
    op: str,
    got: np.ndarray,
    want: np.ndarray,
    x: np.ndarray,
    axes: tuple[int, ...] | None,
    keep: int,
    name: str,
) -> None:
    assert got.shape == want.shape, (name, got.shape, want.shape)
    assert got.dtype == want.dtype, (name, got.dtype, want.dtype)
    if op in ("reduce_max", "reduce_min", "argmax", "argmin"):
        np.testing.assert_array_equal(got, want, err_msg=name)
        return
    if op == "reduce_prod":
        count = x.size // max(want.size, 1)
        np.testing.assert_allclose(got, want, rtol=max(1e-5, 1.2e-7 * count), atol=0, err_msg=name)
        return
    red = "reduce_sum" if op == "reduce_sum" else "reduce_mean"
    (scale,) = run_reference(red, [np.abs(x)], {"axes": axes, "keepdims": keep})
    finite = np.isfinite(want)
    np.testing.assert_array_equal(np.isfinite(got), finite, err_msg=name)
    np.testing.assert_array_equal(got[~finite], want[~finite], err_msg=name)
    err = np.abs(got[finite].astype(np.float64) - want[finite])
    bound = 1e-5 * scale[finite] + 1e-30
    assert (err <= bound).all(), f"{name}: error {err.max()} above 1e-5·Σ|x|"


def _check(g: Graph, feeds: dict[str, np.ndarray], threads: int = 1) -> Any:
    """Compile ``g`` (no fallback allowed), compare every output with the reference."""
    model = compile_graph(g, threads=threads)
    assert model.fallback_nodes == [], model.fallback_nodes
    got = model(**feeds)
    with warnings.catch_warnings(), np.errstate(all="ignore"):  # empty means warn
        warnings.simplefilter("ignore", RuntimeWarning)
        want = reference(g, feeds)
        for node in g.nodes:
            out = node.outputs[0].name
            src = feeds["p"] if node.inputs[0].name == "p" else feeds["x"]
            _assert_close(
                node.op,
                got[out],
                want[out],
                src,
                node.attrs.get("axes"),
                node.attrs["keepdims"],
                f"{node.op} {node.attrs}",
            )
    return model


# -- plans ------------------------------------------------------------------------------------
def test_plans_merge_groups_and_pick_the_kernel():
    """Size-1 dims vanish, adjacent dims of one kind merge; the last group picks the kernel."""
    # NCHW mean over (2, 3): rows of H·W, one kept group N·C.
    p = plan_reduction("mean", (2, 3, 4, 5), (2, 3))
    assert (p.row, p.inner, p.kept, p.reduced, p.count) == (
        True,
        20,
        (Group(6, 20, False),),
        (),
        20,
    )
    # [outer, R, inner] over R: columns of inner, R walked with stride inner.
    p = plan_reduction("sum", (2, 3, 4), (1,))
    assert (p.row, p.inner, p.kept, p.reduced) == (
        False,
        4,
        (Group(2, 12, False),),
        (Group(3, 4, True),),
    )
    # Size-1 dims between kept dims merge them: (7, 1, 17) over (1,) is a copy of 119 columns.
    p = plan_reduction("sum", (7, 1, 17), (1,))
    assert (p.row, p.inner, p.kept, p.reduced) == (False, 119, (), ())
    # Non-adjacent axes: [K 2, R 3, K 4, R 5, K 6] -> columns of 6, two reduced groups.
    p = plan_reduction("max", (2, 3, 4, 5, 6), (1, 3))
    assert (p.row, p.inner, len(p.kept), len(p.reduced)) == (False, 6, 2, 2)
    # Row with an outer reduced group: [R 3, K 5, R 7].
    p = plan_reduction("sum", (3, 5, 7), (0, 2))
    assert (p.row, p.inner, p.reduced) == (True, 7, (Group(3, 35, True),))
    # ArgMax over the last axis is a column kernel of one lane (the index is per lane).
    p = plan_reduction("argmax", (4, 9), (1,))
    assert (p.row, p.inner, p.reduced) == (False, 1, (Group(9, 1, True),))
    # Rank 0 and empty reductions.
    assert plan_reduction("sum", (), ()).inner == 1
    assert plan_reduction("sum", (3, 0, 4), (1,)).count == 0


def test_generated_ir_is_vectorized_with_nan_propagating_max():
    """The lines that matter: four vector accumulators, an odd-width tail vector (no lane read
    past the row), NaN-propagating maximum, the mean's division by the count."""
    p = plan_reduction("max", (5, 70), (1,))
    ir = row_reduce_kernel("k", p, Operand(0), Operand(1), 8)
    assert ir.count("@llvm.maximum.v8f32") >= 4
    assert "load <6 x float>" in ir
    assert "@llvm.vector.reduce.fmaximum.v8f32" in ir
    p = plan_reduction("mean", (2, 9, 40), (1,))
    ir = column_reduce_kernel("k", p, Operand(0), Operand(1), 8)
    assert ir.count("fadd <8 x float>") >= 4
    assert "fdiv <8 x float>" in ir


# -- values -----------------------------------------------------------------------------------
CASES = [
    ((1,), None),
    ((17,), None),
    ((257,), (0,)),
    ((65,), (-1,)),
    ((3, 65), (1,)),
    ((3, 65), (0,)),
    ((7, 257), (-1,)),
    ((17, 3), (0, 1)),
    ((2, 7, 17), (1,)),
    ((2, 7, 17), (0, 2)),
    ((3, 1, 257), (-1,)),
    ((7, 1, 17), (1,)),
    ((1, 7, 3), (0, -1)),
    ((2, 3, 7, 7), (2, 3)),
    ((2, 3, 7, 7), (1,)),
    ((2, 3, 7, 7), (0, 2)),
    ((2, 3, 4, 5, 6), (1, 3)),
    ((2, 3, 4, 5, 6), (0, 2, 4)),
    ((3, 4, 5, 6, 7), (-1, -3)),
    ((2, 3, 4, 5, 7), None),
    ((3, 17, 65), (0,)),
    ((2, 65, 3), (1,)),
    ((4, 3), ()),
]


@pytest.mark.parametrize(("shape", "axes"), CASES, ids=[f"{s}-{a}" for s, a in CASES])
def test_reductions_match_numpy(shape, axes):
    g = _reduce_graph(shape, axes)
    _check(g, _inputs(shape, zlib.crc32(repr((shape, axes)).encode())))


def test_rank0_and_all_ones():
    for shape in [(), (1, 1, 1)]:
        _check(_reduce_graph(shape, None), _inputs(shape, 3))


ARG_CASES = [
    ((17,), 0),
    ((3, 65), 1),
    ((3, 65), 0),
    ((3, 65), -1),
    ((2, 7, 17), 1),
    ((4, 1, 9), 1),
    ((2, 3, 4, 5, 6), 2),
    ((2, 3, 4, 5, 6), -1),
    ((5, 257), -1),
]


def _arg_graph(shape: tuple[int, ...], axis: int) -> Graph:
    g = Graph("arg")
    x = g.add_input("x", shape)
    outs = [
        g.apply(op, x, axis=axis, keepdims=keep, select_last_index=last)
        for op, keep, last in itertools.product(ARG_OPS, (0, 1), (0, 1))
    ]
    g.set_outputs(*outs)
    return g


@pytest.mark.parametrize(("shape", "axis"), ARG_CASES, ids=[f"{s}-{a}" for s, a in ARG_CASES])
def test_argmax_argmin_first_and_last_index(shape, axis):
    g = _arg_graph(shape, axis)
    rng = np.random.default_rng(len(shape) * 100 + axis)
    ties = rng.integers(0, 3, shape).astype(np.float32)  # many ties: first vs last matters
    _check(g, {"x": ties})
    _check(g, {"x": rng.standard_normal(shape).astype(np.float32)})


def _specials(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Normal data with NaN, +inf and -inf planted (some rows all inf, some two NaNs)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    flat = x.reshape(-1)
    n = flat.size
    for val in (np.nan, np.nan, np.inf, -np.inf, np.inf):
        flat[rng.integers(0, n, max(1, n // 40))] = val
    return x


@pytest.mark.parametrize(
    ("shape", "axes"),
    [
        ((5, 70), (1,)),
        ((5, 70), (0,)),
        ((3, 9, 33), (1,)),
        ((4, 5, 6), (0, 2)),
        ((2, 3, 4, 5), None),
    ],
)
def test_nan_and_inf(shape, axes):
    """max/min propagate NaN as np.max/np.min; argmax/argmin take the first (last) NaN; sums
    give inf or NaN where numpy does."""
    x = _specials(shape, len(shape))
    g = _reduce_graph(shape, axes, ("reduce_sum", "reduce_mean", "reduce_max", "reduce_min"))
    _check(g, {"x": x, "p": x})
    ninf = np.full(shape, -np.inf, np.float32)  # max of all -inf is -inf, argmax index 0
    _check(g, {"x": ninf, "p": ninf})
    for axis in (axes or (0,))[:1], (-1,):
        ga = _arg_graph(shape, axis[0])
        _check(ga, {"x": x})
        _check(ga, {"x": np.full(shape, np.inf, np.float32)})


def test_empty_reduction_gives_the_identity():
    """A reduced extent of 0: sum 0, prod 1, max -inf, min +inf, mean NaN (as the references)."""
    shape = (3, 0, 4)
    for axes in [(1,), (0, 1), None]:
        _check(_reduce_graph(shape, axes), _inputs(shape, 1))


def test_argmax_over_an_empty_axis_is_left_to_the_reference():
    """np.argmax rejects an empty axis: the lowering declines, so the reference reports it."""
    g = Graph("arg")
    g.set_outputs(g.apply("argmax", g.add_input("x", (3, 0)), axis=1, keepdims=1))
    assert len(compile_graph(g, threads=1).fallback_nodes) == 1


# -- parts ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("shape", "axes"),
    [((37, 300), (1,)), ((5, 30, 130), (1,)), ((6, 7, 8, 9), (0, 2)), ((2, 3, 7, 7), (2, 3))],
)
def test_two_threads_split_the_output(monkeypatch, shape, axes):
    """Every kernel split (thresholds 0): two threads give one thread's bits and the reference."""
    for attr in ("PARALLEL_FLOPS", "PARALLEL_BYTES"):
        monkeypatch.setattr(lower, attr, 0)
    g = _reduce_graph(shape, axes)
    feeds = _inputs(shape, 7)
    one = _check(g, feeds, threads=1)
    two = _check(g, feeds, threads=2)
    assert all(shares >= 2 for kind, _, shares in two._run if kind == "k"), two._run
    a, b = one(**feeds), two(**feeds)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    ga = _arg_graph(shape, 1)
    x = np.random.default_rng(8).integers(0, 4, shape).astype(np.float32)
    _check(ga, {"x": x}, threads=2)


# -- fusion and ONNX models -------------------------------------------------------------------
def test_unary_consumer_is_fused():
    """reduce_mean then sqrt: one kernel applies the sqrt before its store."""
    g = Graph("ms")
    x = g.add_input("x", (6, 50))
    g.set_outputs(g.apply("sqrt", g.apply("reduce_mean", x, axes=(1,), keepdims=1)))
    model = compile_graph(g, threads=1)
    assert model.fallback_nodes == []
    assert len(model.kernels) == 1, model.kernels
    feeds = {"x": np.random.default_rng(4).random((6, 50), dtype=np.float32)}
    np.testing.assert_allclose(
        model(**feeds)[g.outputs[0].name], reference(g, feeds)[g.outputs[0].name], rtol=1e-5
    )


def _onnx_model() -> onnx.ModelProto:
    """What torch.onnx exports: ReduceMean over [2, 3] (adaptive average pooling), a decomposed
    RMSNorm (Pow, ReduceMean over -1, Add, Sqrt, Div), ReduceMax and ArgMax over the classes."""
    f32 = TensorProto.FLOAT
    init = [
        helper.make_tensor("hw", TensorProto.INT64, [2], [2, 3]),
        helper.make_tensor("last", TensorProto.INT64, [1], [-1]),
        helper.make_tensor("two", f32, [], [2.0]),
        helper.make_tensor("eps", f32, [], [1e-6]),
    ]
    nodes = [
        helper.make_node("ReduceMean", ["img", "hw"], ["pooled"], keepdims=1),
        helper.make_node("Pow", ["h", "two"], ["sq"]),
        helper.make_node("ReduceMean", ["sq", "last"], ["ms"], keepdims=1),
        helper.make_node("Add", ["ms", "eps"], ["mse"]),
        helper.make_node("Sqrt", ["mse"], ["rms"]),
        helper.make_node("Div", ["h", "rms"], ["normed"]),
        helper.make_node("ReduceMax", ["h", "last"], ["hmax"], keepdims=0),
        helper.make_node("ArgMax", ["h"], ["cls"], axis=-1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "exported",
        [
            helper.make_tensor_value_info("img", f32, [2, 8, 7, 7]),
            helper.make_tensor_value_info("h", f32, [3, 5, 96]),
        ],
        [
            helper.make_tensor_value_info(n, t, None)
            for n, t in (
                ("pooled", f32),
                ("normed", f32),
                ("hmax", f32),
                ("cls", TensorProto.INT64),
            )
        ],
        init,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_exported_onnx_patterns_compile_without_fallback():
    g = satura.load(_onnx_model())
    assert {n.op for n in g.nodes} & set(KINDS) >= {"reduce_mean", "reduce_max", "argmax"}
    model = compile_graph(g, threads=1)
    reductions = {n.name for n in g.nodes if n.op in KINDS}
    assert not reductions & set(model.fallback_nodes), model.fallback_nodes
    rng = np.random.default_rng(5)
    feeds = {
        "img": rng.standard_normal((2, 8, 7, 7)).astype(np.float32),
        "h": rng.standard_normal((3, 5, 96)).astype(np.float32),
    }
    got, want = model(**feeds), reference(g, feeds)
    for k, w in want.items():
        assert got[k].dtype == w.dtype, k
        assert got[k].shape == w.shape, k
        np.testing.assert_allclose(got[k], w, rtol=1e-5, atol=1e-6, err_msg=k)


def test_aarch64_module_has_every_reduction_kernel():
    """The kernels are target-neutral IR: the AArch64 cross module lowers them all (NEON fmax
    and fmin propagate NaN as llvm.maximum/minimum ask)."""
    from satura.targets.runtime import emit_cross

    g = _reduce_graph((3, 5, 70), (1,))
    x = g.inputs[0]
    g.set_outputs(
        *g.outputs,
        g.apply("reduce_max", x, axes=(2,), keepdims=0),
        g.apply("argmax", x, axis=1, keepdims=1, select_last_index=1),
    )
    mod = emit_cross(g, "aarch64")
    assert mod.fallback_nodes == []
    assert len(mod.kernels) == len(g.nodes)
    assert "llvm.x86" not in mod.llvm_ir
    assert re.search(r"\bfmax\s+v\d+\.4s", mod.assembly)


# -- integers ---------------------------------------------------------------------------------
INT_OPS = ("reduce_sum", "reduce_max", "reduce_min", "reduce_prod")
INT_CASES = [
    ((1,), None),
    ((37,), None),
    ((3, 65), (1,)),
    ((3, 65), (0,)),
    ((7, 1, 17), (1,)),
    ((2, 7, 17), (0, 2)),
    ((2, 3, 7, 7), (2, 3)),
    ((2, 3, 4, 5, 6), (1, 3)),
    ((3, 17, 65), (0,)),
    ((4, 3), ()),
]


def _int_graph(shape: tuple[int, ...], axes: tuple[int, ...] | None, dtype: str) -> Graph:
    """Every integer reduction over ``axes`` (keepdims 0 and 1) and ArgMax/ArgMin over the
    last axis (first and last index)."""
    g = Graph("ireduce")
    x = g.add_input("x", shape, dtype)
    outs = [
        g.apply(op, x, axes=axes, keepdims=keep) for op, keep in itertools.product(INT_OPS, (0, 1))
    ]
    if shape:
        outs += [
            g.apply(op, x, axis=-1, keepdims=1, select_last_index=last)
            for op, last in itertools.product(ARG_OPS, (0, 1))
        ]
    g.set_outputs(*outs)
    return g


def _check_exact(g: Graph, feeds: dict[str, np.ndarray], threads: int = 1) -> Any:
    """Compile ``g`` (no fallback allowed); every output equals the reference's, dtype too."""
    model = compile_graph(g, threads=threads)
    assert model.fallback_nodes == [], model.fallback_nodes
    got, want = model(**feeds), reference(g, feeds)
    for node in g.nodes:
        out = node.outputs[0].name
        assert got[out].dtype == want[out].dtype, (node.op, got[out].dtype)
        assert got[out].shape == want[out].shape, (node.op, got[out].shape)
        np.testing.assert_array_equal(got[out], want[out], err_msg=f"{node.op} {node.attrs}")
    return model


@pytest.mark.parametrize("dtype", ["int32", "int64"])
@pytest.mark.parametrize(("shape", "axes"), INT_CASES, ids=[f"{s}-{a}" for s, a in INT_CASES])
def test_integer_reductions_wrap_like_numpy(shape, axes, dtype):
    """Full-range values (sums and products overflow and wrap, as numpy's do), small signed
    values with many ties (argmax first vs last index), and the extremes of the type."""
    g = _int_graph(shape, axes, dtype)
    rng = np.random.default_rng(zlib.crc32(repr((shape, axes, dtype)).encode()))
    info = np.iinfo(dtype)
    _check_exact(g, {"x": rng.integers(info.min, info.max, shape, dtype, endpoint=True)})
    _check_exact(g, {"x": rng.integers(-3, 3, shape, dtype)})
    for edge in (info.min, info.max):
        _check_exact(g, {"x": np.full(shape, edge, dtype)})


@pytest.mark.parametrize("dtype", ["int32", "int64"])
def test_integer_overflow_wraps(dtype):
    """max + 1 is min; a product of 2^(bits-1) and 2 is 0; the running sum passes through the
    overflow and comes back (-1 + max + 1 + min = -1 wraps twice)."""
    info = np.iinfo(dtype)
    g = _int_graph((4,), None, dtype)
    x = np.array([info.max, 1, info.min, -1], dtype)
    model = _check_exact(g, {"x": x})
    sums = model(x=x)[g.outputs[0].name]
    assert int(sums) == -1
    y = np.array([info.min, 2, 1, 1], dtype)
    assert int(model(x=y)[g.outputs[6].name]) == 0  # reduce_prod, keepdims 0


@pytest.mark.parametrize("dtype", ["int32", "int64"])
def test_integer_empty_reduction_gives_the_identity(dtype):
    """A reduced extent of 0: sum 0, prod 1, max the type's least value, min its greatest."""
    shape = (3, 0, 4)
    g = Graph("ireduce")
    x = g.add_input("x", shape, dtype)
    g.set_outputs(*[g.apply(op, x, axes=(1,), keepdims=1) for op in INT_OPS])
    _check_exact(g, {"x": np.zeros(shape, dtype)})


def test_integer_mean_is_left_to_the_reference():
    """np.mean of integers divides in float64 and truncates: not a kernel (fallback)."""
    g = Graph("imean")
    g.set_outputs(g.apply("reduce_mean", g.add_input("x", (3, 5), "int64"), axes=(1,), keepdims=1))
    assert len(compile_graph(g, threads=1).fallback_nodes) == 1


def test_integer_ir_uses_integer_vectors():
    """int32 rows in <8 x i32> (add, smax, horizontal add); int64 in <4 x i64> where floats take
    eight lanes (a vector of as many bytes)."""
    p = plan_reduction("sum", (5, 70), (1,), dtype="int32")
    ir = row_reduce_kernel("k", p, Operand(0), Operand(1), 8)
    assert ir.count("add <8 x i32>") >= 4
    assert "load <6 x i32>" in ir
    assert "@llvm.vector.reduce.add.v8i32" in ir
    assert "fadd" not in ir
    p = plan_reduction("max", (2, 9, 40), (1,), dtype="int64")
    ir = column_reduce_kernel("k", p, Operand(0), Operand(1), 4)
    assert ir.count("@llvm.smax.v4i64") >= 4
    p = plan_reduction("argmin", (3, 40), (0,), dtype="int64")
    ir = column_reduce_kernel("k", p, Operand(0), Operand(1), 4)
    assert "icmp slt <4 x i64>" in ir
    assert "fcmp" not in ir


@pytest.mark.parametrize("dtype", ["int32", "int64"])
def test_integer_two_threads(monkeypatch, dtype):
    """Every integer kernel split in two: the reference's bits."""
    for attr in ("PARALLEL_FLOPS", "PARALLEL_BYTES"):
        monkeypatch.setattr(lower, attr, 0)
    for shape, axes in [((37, 300), (1,)), ((5, 30, 130), (1,)), ((6, 7, 8, 9), (0, 2))]:
        g = _int_graph(shape, axes, dtype)
        info = np.iinfo(dtype)
        x = np.random.default_rng(9).integers(info.min, info.max, shape, dtype)
        model = _check_exact(g, {"x": x}, threads=2)
        assert all(shares >= 2 for kind, _, shares in model._run if kind == "k"), model._run
