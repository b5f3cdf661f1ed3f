"""CumSum and TopK as compiled kernels, bit for bit against the numpy references.

CumSum adds in ``np.cumsum``'s order (sequentially along the axis; from the end when reversed),
so float results are compared bit for bit, signed zeros included; integer sums wrap as numpy's.
TopK values and indices are compared exactly (NaN where the reference has NaN): ties, NaN, ±inf
and ±0 must land where the reference's stable argsort puts them. Every case asserts that the op
ran as a generated kernel (no numpy fallback).
"""

from __future__ import annotations

import itertools
import re
import zlib
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from satura.engine.graph import Graph
from satura.targets import compile_graph, lower
from satura.targets.kernel import Operand
from satura.targets.reductions import AxisPlan, scan_kernel, topk_kernel

import satura
from tests.targets.helpers import reference

pytestmark = pytest.mark.llvm

DTYPES = ("float32", "int32", "int64")


def _same_bits(got: np.ndarray, want: np.ndarray, msg: str) -> None:
    assert got.dtype == want.dtype, (msg, got.dtype, want.dtype)
    assert got.shape == want.shape, (msg, got.shape, want.shape)
    if got.dtype.kind != "f":
        np.testing.assert_array_equal(got, want, err_msg=msg)
        return
    nan = np.isnan(want)
    np.testing.assert_array_equal(np.isnan(got), nan, err_msg=msg)
    np.testing.assert_array_equal(
        got[~nan].view(np.uint32), want[~nan].view(np.uint32), err_msg=msg
    )


def _check(g: Graph, feeds: dict[str, np.ndarray], threads: int = 1) -> Any:
    """Compile ``g`` (no fallback allowed); every output has the reference's bits."""
    model = compile_graph(g, threads=threads)
    assert model.fallback_nodes == [], model.fallback_nodes
    got, want = model(**feeds), reference(g, feeds)
    for name, w in want.items():
        _same_bits(got[name], w, f"{name} threads={threads}")
    return model


# -- cumsum -----------------------------------------------------------------------------------
def _cumsum_graph(shape: tuple[int, ...], axis: int, dtype: str) -> Graph:
    """CumSum along ``axis``: one output per (exclusive, reverse)."""
    g = Graph("cumsum")
    x = g.add_input("x", shape, dtype)
    g.set_outputs(
        *[
            g.apply("cumsum", x, axis=axis, exclusive=e, reverse=r)
            for e, r in itertools.product((0, 1), (0, 1))
        ]
    )
    return g


def _scan_input(shape: tuple[int, ...], dtype: str, seed: int) -> np.ndarray:
    """Floats of mixed magnitudes (so the order of the adds shows in the rounding) with -0.0 and
    +0.0 planted, the first element -0.0; integers over the whole range (sums wrap)."""
    rng = np.random.default_rng(seed)
    if dtype != "float32":
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, shape, dtype, endpoint=True)
    x = rng.standard_normal(shape) * 10.0 ** rng.integers(-4, 5, shape)
    x = np.asarray(x, np.float32)
    flat = x.reshape(-1)
    flat[rng.integers(0, flat.size, max(1, flat.size // 8))] = -0.0
    flat[rng.integers(0, flat.size, max(1, flat.size // 8))] = 0.0
    flat[0] = -0.0
    return x


SCAN_SHAPES = [
    (1,),
    (5,),
    (70,),
    (3, 9),
    (2, 37),
    (4, 1, 3),
    (2, 3, 40),
    (2, 5, 70),
    (2, 1, 3, 5),
    (3, 4, 5, 6),
]
SCAN_CASES = [(s, a) for s in SCAN_SHAPES for a in range(len(s))]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("shape", "axis"), SCAN_CASES, ids=[f"{s}-{a}" for s, a in SCAN_CASES])
def test_cumsum_is_bit_exact(shape, axis, dtype):
    """Every axis of rank 1-4 inputs (rows scanned alone, inner blocks of 1 to 70 lanes: full
    vector tiles and a narrower tail), inclusive and exclusive, forward and reversed."""
    g = _cumsum_graph(shape, axis, dtype)
    _check(g, {"x": _scan_input(shape, dtype, zlib.crc32(repr((shape, axis, dtype)).encode()))})


def test_cumsum_negative_axis_and_signed_zeros():
    """Sums of -0.0 stay -0.0 (the running sum starts from -0.0, not +0.0); the exclusive
    first element is the reference's +0.0."""
    x = np.full((2, 4), -0.0, np.float32)
    g = _cumsum_graph((2, 4), -1, "float32")
    model = _check(g, {"x": x})
    got = model(x=x)
    incl, excl = got[g.outputs[0].name], got[g.outputs[2].name]
    assert np.signbit(incl).all()
    assert not np.signbit(excl[:, 0]).any()
    assert np.signbit(excl[:, 1:]).all()


@pytest.mark.parametrize("dtype", ["int32", "int64"])
def test_cumsum_integers_wrap(dtype):
    """max + 1 wraps to min, and min + min wraps to 0: the reference's residues."""
    info = np.iinfo(dtype)
    x = np.array([info.max, 1, 1, info.min, -1], dtype)
    g = _cumsum_graph((5,), 0, dtype)
    model = _check(g, {"x": x})
    want = np.array([info.max, info.min, info.min + 1, 1, 0], dtype)
    np.testing.assert_array_equal(model(x=x)[g.outputs[0].name], want)


def test_cumsum_ir_is_sequential():
    """A row scan is scalar adds in order; an inner block scans in vectors, lane by lane in
    order. No reassociation anywhere (that would change the rounding)."""
    ir = scan_kernel("k", AxisPlan(3, 50, 1, "float32"), False, False, Operand(0), Operand(1), 8)
    assert "fadd float" in ir
    assert "x float>" not in ir
    ir = scan_kernel("k", AxisPlan(3, 50, 40, "float32"), True, True, Operand(0), Operand(1), 8)
    assert ir.count("fadd <8 x float>") >= 4
    assert "reassoc" not in ir
    ir = scan_kernel("k", AxisPlan(3, 50, 40, "int64"), False, False, Operand(0), Operand(1), 4)
    assert "add <4 x i64>" in ir


# -- topk -------------------------------------------------------------------------------------
def _topk_graph(
    shape: tuple[int, ...], axis: int, k: int, dtype: str = "float32", sort: int = 1
) -> Graph:
    """TopK (largest and smallest) along ``axis``: values and indices of each."""
    g = Graph("topk")
    x = g.add_input("x", shape, dtype)
    outs = []
    for largest in (1, 0):
        outs += g.add(
            "topk", [x], {"k": k, "axis": axis, "largest": largest, "sorted": sort}
        ).outputs
    g.set_outputs(*outs)
    return g


def _topk_inputs(shape: tuple[int, ...], dtype: str, seed: int) -> list[np.ndarray]:
    """Many ties (small integers); normal values; for floats, ties with NaN, ±inf and ±0."""
    rng = np.random.default_rng(seed)
    if dtype != "float32":
        info = np.iinfo(dtype)
        return [
            rng.integers(-3, 3, shape, dtype),
            rng.integers(info.min, info.max, shape, dtype, endpoint=True),
            np.full(shape, info.min, dtype),
        ]
    ties = rng.integers(-3, 4, shape).astype(np.float32)
    special = ties.copy()
    flat = special.reshape(-1)
    pool = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0], np.float32)
    picks = rng.random(flat.shape) < 0.4
    flat[picks] = rng.choice(pool, int(picks.sum()))
    return [
        ties,
        special,
        rng.standard_normal(shape).astype(np.float32),
        np.full(shape, np.nan, np.float32),
        np.full(shape, -np.inf, np.float32),
    ]


TOPK_CASES = [
    ((1,), 0, 1),
    ((9,), 0, 1),
    ((9,), 0, 4),
    ((9,), -1, 9),
    ((3, 17), 1, 5),
    ((3, 17), 0, 2),
    ((3, 17), 0, 3),
    ((2, 5, 7), 1, 3),
    ((2, 5, 7), 0, 1),
    ((4, 300), -1, 1),
    ((4, 300), -1, 10),
    ((4, 300), -1, 300),
    ((2, 300, 3), 1, 150),
    ((2, 3, 4, 5), 2, 4),
    ((2, 3, 4, 5), -3, 3),
]


@pytest.mark.parametrize(
    ("shape", "axis", "k"), TOPK_CASES, ids=[f"{s}-{a}-{k}" for s, a, k in TOPK_CASES]
)
def test_topk_matches_the_stable_argsort(shape, axis, k):
    """Rows (stride 1) and strided columns; k = 1, small, half and the whole axis; ties by
    index, NaN after every number (largest and smallest), ±inf, -0.0 tied with +0.0."""
    g = _topk_graph(shape, axis, k)
    for x in _topk_inputs(shape, "float32", zlib.crc32(repr((shape, axis, k)).encode())):
        _check(g, {"x": x})


@pytest.mark.parametrize("dtype", ["int32", "int64"])
@pytest.mark.parametrize(
    ("shape", "axis", "k"), [((3, 17), 1, 5), ((2, 40, 3), 1, 40), ((50,), 0, 1)]
)
def test_topk_integers(shape, axis, k, dtype):
    g = _topk_graph(shape, axis, k, dtype)
    for x in _topk_inputs(shape, dtype, k):
        _check(g, {"x": x})


def test_topk_unsorted_gives_the_sorted_order():
    """sorted=0 allows any order; the kernel's (sorted) is the reference's."""
    g = _topk_graph((3, 20), 1, 6, sort=0)
    _check(g, {"x": _topk_inputs((3, 20), "float32", 2)[1]})


def test_topk_k_above_the_axis_is_left_to_the_reference():
    """The reference rejects k > n: the lowering declines so that it reports the error."""
    g = _topk_graph((4, 3), 1, 5)
    assert len(compile_graph(g, threads=1).fallback_nodes) == 2


def test_topk_ir_calls_only_its_heap_helpers():
    """No library sort: a heap in the outputs, sifted by the kernel's own two functions."""
    ir = topk_kernel(
        "k", AxisPlan(2, 30, 3, "float32"), 5, True, Operand(0), Operand(1), Operand(2)
    )
    called = set(re.findall(r"call \S+ @([\w.]+)\(", ir))
    assert called == {"k_body", "k_sift", "k_worse", "llvm.umin.i64"}, called


# -- parts ------------------------------------------------------------------------------------
def test_two_threads_split_scans_and_selections(monkeypatch):
    """Every kernel split (thresholds 0): two threads give the reference's bits."""
    for attr in ("PARALLEL_FLOPS", "PARALLEL_BYTES"):
        monkeypatch.setattr(lower, attr, 0)
    for shape, axis in [((37, 300), 1), ((5, 30, 130), 1), ((6, 7, 8, 9), 0)]:
        for dtype in DTYPES:
            model = _check(
                _cumsum_graph(shape, axis, dtype), {"x": _scan_input(shape, dtype, 3)}, threads=2
            )
            assert all(shares >= 2 for kind, _, shares in model._run if kind == "k"), model._run
        g = _topk_graph(shape, axis, 5)
        for x in _topk_inputs(shape, "float32", 4)[:3]:
            model = _check(g, {"x": x}, threads=2)
            assert all(shares >= 2 for kind, _, shares in model._run if kind == "k"), model._run


# -- ONNX models ------------------------------------------------------------------------------
def _hf_model() -> onnx.ModelProto:
    """What HF models export around an int64 attention mask: ``position_ids =
    mask.cumsum(-1) - 1``, the lengths ``mask.sum(-1)``, the last real token ``mask.argmax``
    of a reversed cumsum; and TopK over the logits (sampling)."""
    i64, f32 = TensorProto.INT64, TensorProto.FLOAT
    init = [
        helper.make_tensor("last", i64, [], [-1]),
        helper.make_tensor("one", i64, [], [1]),
        helper.make_tensor("axes", i64, [1], [-1]),
        helper.make_tensor("k", i64, [1], [5]),
    ]
    nodes = [
        helper.make_node("CumSum", ["mask", "last"], ["cs"]),
        helper.make_node("Sub", ["cs", "one"], ["position_ids"]),
        helper.make_node("ReduceSum", ["mask", "axes"], ["lengths"], keepdims=0),
        helper.make_node("CumSum", ["mask", "last"], ["rcs"], reverse=1, exclusive=1),
        helper.make_node("ArgMin", ["rcs"], ["last_token"], axis=-1, keepdims=0),
        helper.make_node("TopK", ["logits", "k"], ["top_values", "top_indices"]),
    ]
    graph = helper.make_graph(
        nodes,
        "hf",
        [
            helper.make_tensor_value_info("mask", i64, [2, 9]),
            helper.make_tensor_value_info("logits", f32, [2, 100]),
        ],
        [
            helper.make_tensor_value_info(n, t, None)
            for n, t in (
                ("position_ids", i64),
                ("lengths", i64),
                ("last_token", i64),
                ("top_values", f32),
                ("top_indices", i64),
            )
        ],
        init,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_hf_mask_arithmetic_compiles():
    g = satura.load(_hf_model())
    model = compile_graph(g, threads=1)
    ours = {"cumsum", "reduce_sum", "argmin", "topk"}
    assert {n.op for n in g.nodes} >= ours
    mine = {n.name for n in g.nodes if n.op in ours}
    assert not mine & set(model.fallback_nodes), model.fallback_nodes
    mask = np.array([[0, 0, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 0, 0, 0]], np.int64)
    logits = np.random.default_rng(6).standard_normal((2, 100)).astype(np.float32)
    got, want = model(mask=mask, logits=logits), reference(g, {"mask": mask, "logits": logits})
    for name, w in want.items():
        _same_bits(got[name], w, name)
    np.testing.assert_array_equal(got["lengths"], [7, 5])


def test_aarch64_module_has_the_scan_and_selection_kernels():
    """The kernels are target-neutral IR: the AArch64 cross module lowers CumSum (rows and
    inner blocks, float and int64), TopK and an int64 ReduceSum."""
    from satura.targets.runtime import emit_cross

    g = Graph("cross")
    x = g.add_input("x", (3, 5, 70))
    m = g.add_input("m", (2, 9), "int64")
    outs = [
        g.apply("cumsum", x, axis=1, exclusive=1),
        g.apply("cumsum", m, axis=-1, reverse=1),
        g.apply("reduce_sum", m, axes=(-1,), keepdims=0),
        *g.add("topk", [x], {"k": 4, "axis": -1}).outputs,
    ]
    g.set_outputs(*outs)
    mod = emit_cross(g, "aarch64")
    assert mod.fallback_nodes == []
    assert len(mod.kernels) == len(g.nodes)
    assert "llvm.x86" not in mod.llvm_ir
