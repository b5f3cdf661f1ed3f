"""Gather, Expand, Tile and Pad as generated kernels, any dtype, vs the numpy references; runtime
gather indices out of range raise a clear InputError instead of reading out of bounds."""

from __future__ import annotations

import numpy as np
import pytest
from satura.engine.errors import InputError, ShapeError
from satura.engine.graph import Graph
from satura.targets import compile_graph, indexing, lower

from tests.targets.helpers import check_compiled, reference

pytestmark = pytest.mark.llvm

DTYPES = ["float32", "int64", "bool", "uint8"]


def _data(shape, dtype, rng):
    if dtype == "bool":
        return np.asarray(rng.random(shape) < 0.5)
    if dtype == "uint8":
        return np.asarray(rng.integers(0, 256, shape), np.uint8)
    return np.asarray(rng.standard_normal(shape) * 100, dtype)


@pytest.fixture
def split_always(monkeypatch):
    """Every kernel is worth splitting: two threads run shares of even small ones."""
    monkeypatch.setattr(lower, "PARALLEL_BYTES", 0)


def _gather_graph(xshape, xdtype, ishape, idtype, axis, const_idx=None):
    g = Graph("gather")
    x = g.add_input("x", xshape, xdtype)
    idx = (
        g.add_const(const_idx, "idx")
        if const_idx is not None
        else g.add_input("idx", ishape, idtype)
    )
    g.set_outputs(g.apply("gather", x, idx, axis=axis))
    return g


def _indices(ishape, idtype, dim, rng):
    """Valid indices, negative ones included (-dim .. dim-1)."""
    return rng.integers(-dim, dim, ishape).astype(idtype)


# -- gather ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("idtype", ["int32", "int64"])
@pytest.mark.parametrize("ishape", [(4,), (2, 3), ()])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_gather_axes_and_index_shapes(axis, ishape, idtype, split_always):
    rng = np.random.default_rng(0)
    xshape = (5, 6, 7)
    g = _gather_graph(xshape, "float32", ishape, idtype, axis)
    idx = _indices(ishape, idtype, xshape[axis], rng)
    check_compiled(g, {"x": _data(xshape, "float32", rng), "idx": idx}, rtol=None)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("xshape", "ishape", "axis"),
    [((9, 4), (3, 2), 0), ((3, 9), (5,), 1), ((2, 3, 9), (), -1), ((9,), (6,), 0)],
)
def test_gather_dtypes(dtype, xshape, ishape, axis):
    rng = np.random.default_rng(1)
    g = _gather_graph(xshape, dtype, ishape, "int64", axis)
    idx = _indices(ishape, "int64", xshape[axis], rng)
    check_compiled(g, {"x": _data(xshape, dtype, rng), "idx": idx}, rtol=None)


def test_gather_negative_indices_count_from_the_end():
    g = _gather_graph((4, 3), "float32", (4,), "int64", 0)
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    out = check_compiled(g, {"x": x, "idx": np.array([-1, -4, 0, 3])}, rtol=None)
    np.testing.assert_array_equal(out[g.outputs[0].name], x[[3, 0, 0, 3]])


@pytest.mark.parametrize(
    ("xshape", "axis", "index"),
    [
        ((2, 5, 8), 1, np.array(0)),
        ((2, 5, 8), 1, np.array(-1)),
        ((3, 4), 0, np.array([2, -3])),
        ((3, 4), -1, np.array([[3], [0]], np.int32)),
    ],
)
def test_gather_constant_indices(xshape, axis, index):
    """``x[:, 0]`` exports as Gather with a constant scalar index: the output rank drops."""
    rng = np.random.default_rng(2)
    g = _gather_graph(xshape, "float32", None, None, axis, const_idx=index)
    check_compiled(g, {"x": _data(xshape, "float32", rng)}, rtol=None)


@pytest.mark.parametrize(
    ("vocab", "hidden", "ids"), [(1000, 64, (2, 16)), (50, 768, (1, 7)), (30, 3, (4,))]
)
def test_embedding_lookup(vocab, hidden, ids, split_always):
    rng = np.random.default_rng(3)
    g = _gather_graph((vocab, hidden), "float32", ids, "int64", 0)
    check_compiled(
        g,
        {"x": _data((vocab, hidden), "float32", rng), "idx": rng.integers(0, vocab, ids)},
        rtol=None,
    )


def test_embedding_rows_are_one_memcpy_each():
    g = _gather_graph((1000, 64), "float32", (2, 16), "int64", 0)
    model = compile_graph(g, threads=1)
    ir = model.llvm_ir
    assert "call void @llvm.memcpy.p0.p0.i64(" in ir
    assert "i64 256, i1 false)" in ir  # 64 floats a row
    assert "icmp ult i64 %x0.u, 1000" in ir  # the range check of every index


def test_constant_index_out_of_range_fails_at_compile_time():
    g = _gather_graph((3, 4), "float32", None, None, 0, const_idx=np.array([0, 3]))
    with pytest.raises(
        ShapeError,
        match=r"node 'gather' \(gather\): constant index 3 at "
        r"idx\[1\] is out of range \[-3, 2\]",
    ):
        compile_graph(g, threads=1)


# -- runtime indices out of range -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("axis", "bad", "where"), [(0, 10, "idx[0, 2]"), (0, -11, "idx[0, 2]"), (-1, 7, "idx[0, 2]")]
)
@pytest.mark.parametrize("idtype", ["int32", "int64"])
def test_index_out_of_range_raises_and_the_next_call_works(axis, bad, where, idtype):
    xshape = (10, 7)
    g = _gather_graph(xshape, "float32", (2, 3), idtype, axis)
    dim = xshape[axis]
    model = compile_graph(g, threads=1)
    rng = np.random.default_rng(4)
    x = _data(xshape, "float32", rng)
    idx = np.zeros((2, 3), idtype)
    idx[0, 2] = bad
    idx[1, 0] = dim  # a later bad index: the first one is reported
    with pytest.raises(InputError) as err:
        model(x=x, idx=idx)
    msg = str(err.value)
    assert (
        f"node 'gather' (gather): index {bad} at {where} is out of range [{-dim}, {dim - 1}]" in msg
    ), msg
    assert "no output was returned" in msg
    good = _indices((2, 3), idtype, dim, rng)
    got = model(x=x, idx=good)  # the record was cleared
    np.testing.assert_array_equal(
        got[g.outputs[0].name], reference(g, {"x": x, "idx": good})[g.outputs[0].name]
    )


def test_reference_rejects_an_index_below_minus_dim_as_the_kernel_does():
    """gather(x, -dim - 1): the numpy reference used to add dim once and let np.take wrap the
    result again (x's last row, silently); it raises InputError as the kernel does."""
    g = _gather_graph((3, 4), "float32", (2,), "int64", 0)
    feeds = {"x": np.zeros((3, 4), np.float32), "idx": np.array([0, -4])}
    with pytest.raises(
        InputError,
        match=r"gather: index -4 at \[1\] is out of range \[-3, 2\] "
        r"for axis 0 \(size 3\)",
    ):
        reference(g, feeds)
    with pytest.raises(InputError, match=r"node 'gather' \(gather\): index -4 at idx\[1\]"):
        compile_graph(g, threads=1)(**feeds)


@pytest.mark.parametrize("native", [True, False])
def test_index_out_of_range_on_two_threads_reports_the_first(native, split_always):
    """Shares on two threads both meet a bad index: the smallest position is reported, every
    time, whichever thread got there first."""
    g = _gather_graph((64, 32), "float32", (64,), "int64", 0)
    model = compile_graph(g, threads=2)
    model.native_threads = native
    rng = np.random.default_rng(5)
    x = _data((64, 32), "float32", rng)
    idx = rng.integers(0, 64, 64)
    idx[[17, 40, 63]] = [64, -65, 1000]
    for _ in range(5):
        with pytest.raises(InputError, match=r"index 64 at idx\[17\] is out of range \[-64, 63\]"):
            model(x=x, idx=idx)
        idx2 = idx.copy()
        idx2[17] = 0
        with pytest.raises(InputError, match=r"index -65 at idx\[40\]"):
            model(x=x, idx=idx2)
    good = np.where((idx < 0) | (idx > 63), 5, idx)
    got = model(x=x, idx=good)
    np.testing.assert_array_equal(got[g.outputs[0].name], x[good])


def test_bad_index_stops_before_a_numpy_fallback():
    """A numpy fallback after the kernel must not run on its unfinished output (an error of its
    own would hide the real one): the gather's error is raised, naming the gather."""
    g = Graph("g")
    table = g.add_input("table", (10, 3), "int64")
    ids = g.add_input("ids", (4,), "int64")
    picked = g.apply("gather", table, ids, axis=0)
    g.set_outputs(g.apply("trilu", picked))
    model = compile_graph(g, threads=1)
    fallback = [n.name for n in g.nodes if n.op == "trilu"]
    assert model.fallback_nodes == fallback, "pick an op that still falls back to numpy"
    rng = np.random.default_rng(6)
    feeds = {"table": rng.integers(0, 10, (10, 3)), "ids": np.array([1, 2, 12, 3])}
    with pytest.raises(InputError, match=r"node 'gather' \(gather\): index 12 at ids\[2\]"):
        model(**feeds)
    feeds["ids"] = np.array([1, 2, 9, 3])
    got = model(**feeds)
    want = reference(g, feeds)
    np.testing.assert_array_equal(got[g.outputs[0].name], want[g.outputs[0].name])


def test_two_gathers_the_first_bad_node_is_reported():
    g = Graph("g")
    w = g.add_input("w", (8, 4))
    a = g.add_input("a", (3,), "int64")
    b = g.add_input("b", (3,), "int64")
    first = g.apply("gather", w, a, axis=0)
    g.set_outputs(g.apply("gather", first, b, axis=1))
    model = compile_graph(g, threads=1)
    assert model.fallback_nodes == []
    w0 = np.ones((8, 4), np.float32)
    with pytest.raises(InputError, match=r"index 8 at a\[1\]"):
        model(w=w0, a=np.array([0, 8, 1]), b=np.array([0, 4, 1]))
    with pytest.raises(InputError, match=r"index 4 at b\[1\] is out of range \[-4, 3\]"):
        model(w=w0, a=np.array([0, 7, 1]), b=np.array([0, 4, 1]))


# -- expand, tile, pad ----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("xshape", "shape"),
    [
        ((3, 1), (3, 4)),
        ((1, 4), (2, 3, 4)),
        ((1,), (5,)),
        ((), (2, 3)),
        ((2, 1, 3), (2, 4, 3)),
        ((2, 3, 1), (1, 1, 5)),
        ((4,), (1,)),
        ((1, 1), (1, 1)),
    ],
)
def test_expand(dtype, xshape, shape, split_always):
    rng = np.random.default_rng(7)
    g = Graph("e")
    x = g.add_input("x", xshape, dtype)
    g.set_outputs(g.apply("expand", x, shape=shape))
    check_compiled(g, {"x": _data(xshape, dtype, rng)}, rtol=None)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("xshape", "reps"),
    [
        ((2, 3), (2, 2)),
        ((3,), (4,)),
        ((1, 4, 1), (3, 1, 2)),
        ((2, 3), (1, 1)),
        ((1,), (7,)),
        ((2, 1, 3), (1, 5, 1)),
    ],
)
def test_tile(dtype, xshape, reps, split_always):
    rng = np.random.default_rng(8)
    g = Graph("t")
    x = g.add_input("x", xshape, dtype)
    g.set_outputs(g.apply("tile", x, repeats=reps))
    check_compiled(g, {"x": _data(xshape, dtype, rng)}, rtol=None)


PADS = [
    ((1, 3, 8, 8), (0, 0, 1, 1, 0, 0, 1, 1)),  # before a conv
    ((3, 5), (1, 2, 0, 3)),
    ((3, 5), (-1, 0, 1, -2)),  # crop and pad
    ((4, 6), (0, -2, 0, -1)),  # crop only
    ((1, 5), (2, 0, 1, 0)),  # size-1 dim padded
    ((6,), (3, 4)),
    ((2, 3, 4), (0, 2, 0, 0, 0, 1)),  # padding an outer dim only
    ((5, 1), (0, 1, 0, 2)),  # size-1 last dim padded
    ((3, 4), (0, -3, 0, 0)),  # the last dim cropped to one element
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("xshape", "pads"), PADS)
def test_pad_constant(dtype, xshape, pads, split_always):
    rng = np.random.default_rng(9)
    g = Graph("p")
    x = g.add_input("x", xshape, dtype)
    g.set_outputs(g.apply("pad", x, pads=pads, mode="constant", value=3.5))
    check_compiled(g, {"x": _data(xshape, dtype, rng)}, rtol=None)


@pytest.mark.parametrize("mode", ["edge", "reflect"])
@pytest.mark.parametrize(
    ("xshape", "pads"),
    [*PADS[:3], PADS[5], PADS[6], ((2, 3), (2, 2, 2, 2)), ((2, 2), (0, 9, 0, 9))],
)
def test_pad_edge_reflect(mode, xshape, pads, split_always):
    rng = np.random.default_rng(10)
    g = Graph("p")
    x = g.add_input("x", xshape, "float32")
    g.set_outputs(g.apply("pad", x, pads=pads, mode=mode))
    check_compiled(g, {"x": _data(xshape, "float32", rng)}, rtol=None)


@pytest.mark.parametrize("mode", ["constant", "reflect"])
def test_pad_rows_as_one_table(mode, monkeypatch):
    """Rows of more segments than MAX_SEGMENTS read through one offset table (fill included)."""
    monkeypatch.setattr(indexing, "MAX_SEGMENTS", 1)
    rng = np.random.default_rng(11)
    g = Graph("p")
    x = g.add_input("x", (3, 4), "int64")
    g.set_outputs(g.apply("pad", x, pads=(1, 2, 0, 3), mode=mode, value=-7.0))
    check_compiled(g, {"x": _data((3, 4), "int64", rng)}, rtol=None)
