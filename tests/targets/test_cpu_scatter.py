"""GatherElements, GatherND, ScatterElements, ScatterND and OneHot as generated kernels vs the
numpy references: any dtype, int32/int64 indices, negative and duplicate indices, every scatter
reduction; runtime indices out of range raise a clear InputError and return nothing."""

from __future__ import annotations

import numpy as np
import pytest
from satura.engine.errors import InputError, ShapeError
from satura.engine.graph import Graph
from satura.targets import compile_graph, lower

from tests.targets.helpers import check_compiled, reference

pytestmark = pytest.mark.llvm

REDUCTIONS = ["none", "add", "mul", "max", "min"]


def _data(shape, dtype, rng):
    if dtype == "bool":
        return np.asarray(rng.random(shape) < 0.5)
    if dtype in ("int64", "int32", "uint8"):
        return rng.integers(0 if dtype == "uint8" else -5, 6, shape).astype(dtype)
    return np.asarray(rng.standard_normal(shape) * 4, dtype)


@pytest.fixture
def split_always(monkeypatch):
    """Every kernel is worth splitting: two threads run shares of even small ones."""
    monkeypatch.setattr(lower, "PARALLEL_BYTES", 0)


def _graph(op, shapes, dtypes, consts=None, **attrs):
    """One ``op`` node over inputs named a, b, c (or constants, by position)."""
    g = Graph(op)
    ins = []
    for k, (s, d) in enumerate(zip(shapes, dtypes, strict=True)):
        if consts and k in consts:
            ins.append(g.add_const(consts[k], "abc"[k]))
        else:
            ins.append(g.add_input("abc"[k], s, d))
    g.set_outputs(g.apply(op, *ins, **attrs))
    return g


def _bits(a):
    """The array's bytes: NaN payloads and the sign of zero count."""
    return np.ascontiguousarray(a).view(np.uint8)


# -- gather_elements ------------------------------------------------------------------------------
@pytest.mark.parametrize("idtype", ["int32", "int64"])
@pytest.mark.parametrize(
    ("xshape", "ishape", "axis"),
    [
        ((3, 4, 5), (3, 4, 5), 0),
        ((3, 4, 5), (7, 4, 5), 0),
        ((3, 4, 5), (3, 2, 5), 1),
        ((3, 4, 5), (3, 4, 9), -1),
        ((6,), (4,), 0),
        ((2, 1, 3), (2, 1, 6), 2),
    ],
)
def test_gather_elements_axes(xshape, ishape, axis, idtype, split_always):
    rng = np.random.default_rng(0)
    dim = xshape[axis]
    g = _graph("gather_elements", [xshape, ishape], ["float32", idtype], axis=axis)
    check_compiled(
        g,
        {"a": _data(xshape, "float32", rng), "b": rng.integers(-dim, dim, ishape).astype(idtype)},
        rtol=None,
    )


@pytest.mark.parametrize("dtype", ["float32", "int64", "bool", "uint8", "float16"])
def test_gather_elements_dtypes(dtype):
    rng = np.random.default_rng(1)
    g = _graph("gather_elements", [(4, 6), (4, 3)], [dtype, "int64"], axis=1)
    check_compiled(g, {"a": _data((4, 6), dtype, rng), "b": rng.integers(-6, 6, (4, 3))}, rtol=None)


def test_gather_elements_negative_indices_count_from_the_end():
    g = _graph("gather_elements", [(2, 3), (2, 2)], ["float32", "int64"], axis=1)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    out = check_compiled(g, {"a": x, "b": np.array([[-1, 0], [-3, 2]])}, rtol=None)
    np.testing.assert_array_equal(out[g.outputs[0].name], [[2, 0], [3, 5]])


# -- gather_nd ------------------------------------------------------------------------------------
@pytest.mark.parametrize("idtype", ["int32", "int64"])
@pytest.mark.parametrize(
    ("xshape", "ishape", "batch_dims"),
    [
        ((4, 5, 6), (3, 1), 0),
        ((4, 5, 6), (2, 3, 2), 0),
        ((4, 5, 6), (7, 3), 0),
        ((4, 5, 6), (4, 2, 1), 1),
        ((4, 5, 6), (4, 5, 1), 2),
        ((2, 3, 4, 5), (2, 3, 6, 1), 2),
        ((2, 3, 4), (2, 2), 1),
        ((5,), (3, 1), 0),
    ],
)
def test_gather_nd(xshape, ishape, batch_dims, idtype, split_always):
    rng = np.random.default_rng(2)
    depth = ishape[-1]
    dims = np.asarray(xshape[batch_dims : batch_dims + depth])
    idx = (rng.integers(-(1 << 20), 1 << 20, ishape) % (2 * dims)) - dims  # in [-dim, dim)
    g = _graph("gather_nd", [xshape, ishape], ["float32", idtype], batch_dims=batch_dims)
    check_compiled(g, {"a": _data(xshape, "float32", rng), "b": idx.astype(idtype)}, rtol=None)


@pytest.mark.parametrize("dtype", ["int64", "bool", "uint8", "float16"])
def test_gather_nd_dtypes(dtype):
    rng = np.random.default_rng(3)
    g = _graph("gather_nd", [(3, 4, 2), (5, 2)], [dtype, "int64"])
    idx = np.stack([rng.integers(-3, 3, 5), rng.integers(-4, 4, 5)], -1)
    check_compiled(g, {"a": _data((3, 4, 2), dtype, rng), "b": idx}, rtol=None)


def test_gather_nd_blocks_are_one_memcpy_each():
    g = _graph("gather_nd", [(10, 8, 16), (3, 2)], ["float32", "int64"])
    ir = compile_graph(g, threads=1).llvm_ir
    assert "i64 64, i1 false)" in ir  # one row of 16 floats a tuple
    assert "icmp ult i64 %c0.u, 10" in ir  # each component checked against its axis
    assert "icmp ult i64 %c1.u, 8" in ir


# -- scatter_nd -----------------------------------------------------------------------------------
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", ["float32", "int64", "bool"])
@pytest.mark.parametrize(
    ("xshape", "ishape"),
    [((6, 3, 4), (5, 1)), ((6, 3, 4), (2, 4, 2)), ((4, 5), (9, 2)), ((7,), (12, 1))],
)
def test_scatter_nd_duplicates_in_order(xshape, ishape, dtype, reduction, split_always):
    """Indices repeat (and come negative): updates apply in order, as the reference's loop."""
    rng = np.random.default_rng(4)
    depth = ishape[-1]
    dims = np.asarray(xshape[:depth])
    idx = rng.integers(0, 2, ishape) * dims + (rng.integers(0, 3, ishape) % dims) - dims
    ushape = (*ishape[:-1], *xshape[depth:])
    g = _graph("scatter_nd", [xshape, ishape, ushape], [dtype, "int64", dtype], reduction=reduction)
    flat = idx.reshape(-1, depth) % dims
    assert len({tuple(t) for t in flat}) < len(flat), "the test needs duplicate indices"
    check_compiled(
        g, {"a": _data(xshape, dtype, rng), "b": idx, "c": _data(ushape, dtype, rng)}, rtol=None
    )


def _exact_unless_half(dtype: str, reduction: str) -> float | None:
    """Bit for bit, except float16 sums and products of duplicate indices: a half model computes
    in fp32 and rounds once (targets/precision.py), the reference rounds every step, a few half
    ulps of the largest partial result apart (more, relatively, where the sum cancels)."""
    return 1e-2 if dtype == "float16" and reduction in ("add", "mul") else None


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", ["float16", "float64", "int32", "uint8"])
def test_scatter_nd_more_dtypes(dtype, reduction):
    rng = np.random.default_rng(5)
    g = _graph("scatter_nd", [(5, 3), (6, 1), (6, 3)], [dtype, "int32", dtype], reduction=reduction)
    check_compiled(
        g,
        {
            "a": _data((5, 3), dtype, rng),
            "b": np.array([[1], [-1], [1], [4], [0], [-4]], np.int32),
            "c": _data((6, 3), dtype, rng),
        },
        rtol=_exact_unless_half(dtype, reduction),
    )


def test_scatter_nd_writes_a_static_kv_cache():
    """A decoder's static cache: the new key of every (batch, head) goes to position ``pos``."""
    rng = np.random.default_rng(6)
    b, h, s, d = 2, 3, 16, 8
    g = Graph("kv")
    cache = g.add_input("cache", (b, h, s, d))
    idx = g.add_input("idx", (b, h, 1, 3), "int64")
    new = g.add_input("new", (b, h, 1, d))
    written = g.apply("scatter_nd", cache, idx, new)
    g.set_outputs(g.apply("add", written, g.add_const(np.float32(1), "one")))
    for pos in (0, 5, s - 1, -1):
        grid = np.stack(np.meshgrid(np.arange(b), np.arange(h), [pos], indexing="ij"), -1)
        check_compiled(
            g,
            {
                "cache": _data((b, h, s, d), "float32", rng),
                "idx": grid,
                "new": _data((b, h, 1, d), "float32", rng),
            },
            rtol=None,
        )


def test_scatter_of_constant_data_and_a_copy_split_between_cores(split_always):
    """The data may be a constant; its copy runs in shares on two threads, the updates after."""
    rng = np.random.default_rng(7)
    base = _data((8, 16, 128), "float32", rng)
    g = _graph(
        "scatter_nd",
        [(8, 16, 128), (30, 1), (30, 16, 128)],
        ["float32", "int64", "float32"],
        consts={0: base},
    )
    model = compile_graph(g, threads=2)
    assert model.fallback_nodes == []
    steps = [(s.parallel, s.units) for s in model._prog.steps if s.gen is not None]
    assert steps == [(True, 8), (False, 0)]  # the copy in rows of 2048, then the updates
    feeds = {"b": rng.integers(-8, 8, (30, 1)), "c": _data((30, 16, 128), "float32", rng)}
    check_compiled(g, feeds, rtol=None)


def test_scatter_update_runs_in_part_zero_only():
    g = _graph("scatter_nd", [(4, 4), (2, 1), (2, 4)], ["float32", "int64", "float32"])
    ir = compile_graph(g, threads=1).llvm_ir
    assert "%first = icmp eq i64 %part, 0" in ir


# -- scatter_elements -----------------------------------------------------------------------------
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", ["float32", "int64", "bool"])
@pytest.mark.parametrize(
    ("xshape", "ishape", "axis"),
    [
        ((5, 4, 3), (8, 4, 3), 0),
        ((5, 4, 3), (5, 6, 3), 1),
        ((5, 4, 3), (2, 3, 7), -1),
        ((6,), (10,), 0),
        ((4, 6), (2, 9), 1),
    ],
)
def test_scatter_elements_duplicates_in_order(xshape, ishape, axis, dtype, reduction, split_always):
    """Indices smaller than the data off the axis, repeated and negative along it."""
    rng = np.random.default_rng(8)
    dim = xshape[axis]
    idx = rng.integers(0, 3, ishape) - rng.integers(0, 2, ishape) * dim
    g = _graph(
        "scatter_elements",
        [xshape, ishape, ishape],
        [dtype, "int32", dtype],
        axis=axis,
        reduction=reduction,
    )
    check_compiled(
        g,
        {"a": _data(xshape, dtype, rng), "b": idx.astype(np.int32), "c": _data(ishape, dtype, rng)},
        rtol=None,
    )


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", ["float16", "float64", "uint8", "int32"])
def test_scatter_elements_more_dtypes(dtype, reduction):
    rng = np.random.default_rng(9)
    g = _graph(
        "scatter_elements",
        [(3, 4), (3, 5), (3, 5)],
        [dtype, "int64", dtype],
        axis=1,
        reduction=reduction,
    )
    check_compiled(
        g,
        {
            "a": _data((3, 4), dtype, rng),
            "b": rng.integers(-4, 4, (3, 5)),
            "c": _data((3, 5), dtype, rng),
        },
        rtol=_exact_unless_half(dtype, reduction),
    )


@pytest.mark.parametrize("op", ["scatter_nd", "scatter_elements"])
@pytest.mark.parametrize("reduction", ["max", "min", "add", "mul"])
def test_scatter_float_reductions_bit_for_bit(op, reduction):
    """NaN on either side, equal zeros of either sign, infinities: numpy's ufunc results."""
    vals = np.array([np.nan, -0.0, 0.0, 1.5, -np.inf, np.inf, -2.0], np.float32)
    pairs = [(a, b) for a in vals for b in vals]
    x = np.array([a for a, _ in pairs], np.float32)
    upd = np.array([b for _, b in pairs], np.float32)
    n = len(pairs)
    if op == "scatter_nd":
        g = _graph(op, [(n,), (n, 1), (n,)], ["float32", "int64", "float32"], reduction=reduction)
        idx = np.arange(n).reshape(n, 1)
    else:
        g = _graph(
            op, [(n,), (n,), (n,)], ["float32", "int64", "float32"], axis=0, reduction=reduction
        )
        idx = np.arange(n)
    feeds = {"a": x, "b": idx, "c": upd}
    with np.errstate(all="ignore"):
        want = reference(g, feeds)[g.outputs[0].name]
    got = compile_graph(g, threads=1)(**feeds)[g.outputs[0].name]
    np.testing.assert_array_equal(_bits(got), _bits(want))


# -- one_hot --------------------------------------------------------------------------------------
@pytest.mark.parametrize("idtype", ["int32", "int64", "float32", "float64"])
@pytest.mark.parametrize(
    ("ishape", "axis"),
    [((5,), -1), ((3, 4), 1), ((3, 4), 0), ((2, 3), -3), ((), 0), ((2, 3, 4), 2)],
)
def test_one_hot_axes_and_out_of_range_rows(ishape, axis, idtype, split_always):
    """Negative indices count from depth; out of range (either side) gives an all-off row."""
    rng = np.random.default_rng(10)
    depth = 6
    idx = rng.integers(-9, 9, ishape).astype(idtype)
    if idtype.startswith("float"):  # fractions: numpy truncates them
        idx = np.asarray(idx + rng.choice([0.0, 0.25, -0.75], ishape).astype(idtype))
    g = _graph("one_hot", [ishape, (2,)], [idtype, "float32"], depth=depth, axis=axis)
    check_compiled(g, {"a": idx, "b": np.array([-1.5, 3.0], np.float32)}, rtol=None)


@pytest.mark.parametrize("dtype", ["int64", "bool", "uint8", "float16"])
def test_one_hot_value_dtypes(dtype):
    g = _graph("one_hot", [(4,), (2,)], ["int64", dtype], depth=3)
    vals = np.array([0, 1]).astype(dtype) if dtype != "int64" else np.array([7, -9])
    out = check_compiled(g, {"a": np.array([0, -1, 3, -4]), "b": vals}, rtol=None)
    want = np.array([[1, 0, 0], [0, 0, 1], [0, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(out[g.outputs[0].name], np.where(want, vals[1], vals[0]))


def test_one_hot_float_indices_nan_and_huge_are_off():
    g = _graph("one_hot", [(6,), (2,)], ["float32", "float32"], depth=4)
    idx = np.array([np.nan, 1e30, -1e30, -0.0, -0.5, -4.5], np.float32)
    with np.errstate(all="ignore"):
        check_compiled(g, {"a": idx, "b": np.array([0, 1], np.float32)}, rtol=None)


# -- runtime indices out of range -----------------------------------------------------------------
BAD_CASES = [
    # op, shapes, attrs, the index input, where the bad ones go, the message's index and range
    (
        "gather_elements",
        [(4, 5), (4, 5)],
        {"axis": 1},
        [((1, 2), 5), ((3, 0), 9)],
        "index 5 at b[1, 2] is out of range [-5, 4] for axis 1 of size 5",
    ),
    (
        "gather_elements",
        [(4, 5), (4, 5)],
        {"axis": 0},
        [((0, 3), -5), ((2, 2), 4)],
        "index -5 at b[0, 3] is out of range [-4, 3] for axis 0 of size 4",
    ),
    (
        "gather_nd",
        [(3, 4, 5), (6, 2)],
        {},
        [((2, 1), 4), ((4, 0), -4)],
        "index 4 at b[2, 1] is out of range [-4, 3]",
    ),
    (
        "gather_nd",
        [(3, 4, 5), (6, 2)],
        {},
        [((1, 0), -4), ((2, 1), 4)],
        "index -4 at b[1, 0] is out of range [-3, 2]",
    ),
    (
        "scatter_nd",
        [(6, 4), (3, 1), (3, 4)],
        {},
        [((1, 0), -7), ((2, 0), 6)],
        "index -7 at b[1, 0] is out of range [-6, 5]",
    ),
    (
        "scatter_elements",
        [(5, 3), (2, 3), (2, 3)],
        {"axis": 0, "reduction": "add"},
        [((0, 2), 5), ((1, 0), 100)],
        "index 5 at b[0, 2] is out of range [-5, 4] for axis 0",
    ),
]


@pytest.mark.parametrize("idtype", ["int32", "int64"])
@pytest.mark.parametrize(("op", "shapes", "attrs", "bad", "msg"), BAD_CASES)
def test_index_out_of_range_raises_and_the_next_call_works(op, shapes, attrs, bad, msg, idtype):
    rng = np.random.default_rng(11)
    dtypes = ["float32", idtype, "float32"][: len(shapes)]
    g = _graph(op, shapes, dtypes, **attrs)
    model = compile_graph(g, threads=1)
    assert model.fallback_nodes == []
    feeds = {k: _data(s, "float32", rng) for k, s in zip("abc", shapes, strict=False)}
    feeds["b"] = np.zeros(shapes[1], idtype)
    for pos, v in bad:
        feeds["b"][pos] = v
    with pytest.raises(InputError) as err:
        model(**feeds)
    assert f"node '{op}' ({op}): {msg}" in str(err.value), str(err.value)
    assert "no output was returned" in str(err.value)
    feeds["b"] = np.ones(shapes[1], idtype)
    got = model(**feeds)
    want = reference(g, feeds)
    np.testing.assert_array_equal(got[g.outputs[0].name], want[g.outputs[0].name])


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("op", ["gather_elements", "gather_nd"])
def test_index_out_of_range_on_two_threads_reports_the_first(op, native, split_always):
    """Shares on two threads meet bad indices: the smallest position is reported every time."""
    shapes = [(64, 16), (64, 16)] if op == "gather_elements" else [(64, 16), (64, 1)]
    g = _graph(op, shapes, ["float32", "int64"], **({"axis": 0} if op == "gather_elements" else {}))
    model = compile_graph(g, threads=2)
    model.native_threads = native
    rng = np.random.default_rng(12)
    x = _data((64, 16), "float32", rng)
    idx = rng.integers(0, 64, shapes[1])
    idx[20, 0], idx[50, 0], idx[63, 0] = 64, -65, 1000
    for _ in range(5):
        with pytest.raises(InputError, match=r"index 64 at b\[20, 0\] is out of range \[-64, 63\]"):
            model(a=x, b=idx)
    good = np.where((idx < 0) | (idx > 63), 7, idx)
    got = model(a=x, b=good)
    np.testing.assert_array_equal(
        got[g.outputs[0].name], reference(g, {"a": x, "b": good})[g.outputs[0].name]
    )


@pytest.mark.parametrize(
    ("op", "shapes", "attrs", "const", "msg"),
    [
        (
            "gather_elements",
            [(3, 4), (3, 2)],
            {"axis": 1},
            np.array([[0, 1], [4, 0], [0, 0]]),
            r"constant index 4 at b\[1, 0\] is out of range \[-4, 3\] for axis 1 of 'a' \(size 4\)",
        ),
        (
            "gather_nd",
            [(3, 4), (2, 2)],
            {},
            np.array([[0, 0], [2, -5]]),
            r"constant index -5 at b\[1, 1\] is out of range \[-4, 3\] for axis 1 of 'a'",
        ),
        (
            "scatter_nd",
            [(3, 4), (1, 1), (1, 4)],
            {},
            np.array([[3]]),
            r"constant index 3 at b\[0, 0\] is out of range \[-3, 2\] for axis 0",
        ),
        (
            "scatter_elements",
            [(3, 4), (1, 2), (1, 2)],
            {"axis": 1},
            np.array([[0, -5]]),
            r"constant index -5 at b\[0, 1\] is out of range \[-4, 3\] for axis 1",
        ),
    ],
)
def test_constant_index_out_of_range_fails_at_compile_time(op, shapes, attrs, const, msg):
    g = _graph(
        op, shapes, ["float32", "int64", "float32"][: len(shapes)], consts={1: const}, **attrs
    )
    with pytest.raises(ShapeError, match=rf"node '{op}' \({op}\): {msg}"):
        compile_graph(g, threads=1)


def test_bad_scatter_index_then_a_good_call_starts_from_the_data():
    """A failed scatter leaves its output half updated; the next call copies the data again."""
    g = _graph("scatter_nd", [(4, 2), (3, 1), (3, 2)], ["int64", "int64", "int64"], reduction="add")
    model = compile_graph(g, threads=1)
    x = np.arange(8).reshape(4, 2)
    upd = np.full((3, 2), 10)
    with pytest.raises(InputError, match=r"index 4 at b\[2, 0\]"):
        model(a=x, b=np.array([[0], [0], [4]]), c=upd)
    got = model(a=x, b=np.array([[0], [0], [1]]), c=upd)
    np.testing.assert_array_equal(got[g.outputs[0].name], [[20, 21], [12, 13], [4, 5], [6, 7]])


@pytest.mark.parametrize(
    ("op", "shapes", "attrs", "bad", "msg"),
    [
        (
            "gather_elements",
            [(4, 5), (4, 5)],
            {"axis": 1},
            ((1, 2), -6),
            r"index -6 at \[1, 2\] is out of range \[-5, 4\] for axis 1 \(size 5\)",
        ),
        (
            "gather_nd",
            [(3, 4, 5), (6, 2)],
            {},
            ((2, 1), -8),
            r"index -8 at \[2, 1\] is out of range \[-4, 3\] for axis 1 \(size 4\)",
        ),
        (
            "scatter_nd",
            [(6, 4), (3, 1), (3, 4)],
            {},
            ((1, 0), -12),
            r"index -12 at \[1, 0\] is out of range \[-6, 5\] for axis 0 \(size 6\)",
        ),
        (
            "scatter_elements",
            [(5, 3), (2, 3), (2, 3)],
            {"axis": 0},
            ((0, 2), -6),
            r"index -6 at \[0, 2\] is out of range \[-5, 4\] for axis 0 \(size 5\)",
        ),
    ],
)
def test_reference_rejects_an_index_below_minus_dim_as_the_kernel_does(op, shapes, attrs, bad, msg):
    """An index in [-2·dim, -dim-1] is out of range: the numpy reference used to add dim once and
    let numpy wrap it a second time (a silent wrong element) where the kernel raises."""
    rng = np.random.default_rng(13)
    g = _graph(op, shapes, ["float32", "int64", "float32"][: len(shapes)], **attrs)
    feeds = {k: _data(s, "float32", rng) for k, s in zip("abc", shapes, strict=False)}
    feeds["b"] = np.zeros(shapes[1], np.int64)
    feeds["b"][bad[0]] = bad[1]
    with pytest.raises(InputError, match=rf"{op}: {msg}"):
        reference(g, feeds)
    with pytest.raises(InputError, match=rf"node '{op}' \({op}\): index {bad[1]} at b"):
        compile_graph(g, threads=1)(**feeds)
