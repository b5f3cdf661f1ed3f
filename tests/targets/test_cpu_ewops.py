"""Elementwise maths and ops compiled for the CPU: log, log1p, expm1, softplus, sin, cos, round,
the inverse trigonometric and hyperbolic functions,
pow, fmod, clip, leaky_relu, elu, hard_sigmoid, batch_norm and log_softmax.

The maths functions run as bare elementwise kernels over wide ranges (random fp32 bit patterns,
subnormals, ±0, ±inf, NaN) against float64 numpy, in ulps of the fp32 result, on the vector loop
and on the scalar loop; the ops run as compiled one-node graphs against their numpy reference
(``fallback_nodes == []``). Every bound below is the measured maximum error, rounded up.
"""

from __future__ import annotations

import ctypes
import re
from collections.abc import Callable

import numpy as np
import pytest
from satura.engine.graph import Graph
from satura.targets import codegen, compile_graph
from satura.targets.elementwise import ew_kernel
from satura.targets.irmath import INTRINSICS, Emitter
from satura.targets.kernel import PRELUDE, Operand, target_support

from tests.targets.helpers import one_node, reference

pytestmark = pytest.mark.llvm

SPECIALS = np.array(
    [
        0.0,
        -0.0,
        np.inf,
        -np.inf,
        np.nan,
        1e-45,
        -1e-45,
        1e-40,
        -1e-40,
        1.17549435e-38,
        1.0,
        -1.0,
        0.5,
        -0.5,
        3.4028235e38,
        -3.4028235e38,
    ],
    np.float32,
)
CHUNK = 1 << 18  # elements per kernel call (stays below the streaming-store size)


def _bits(rng: np.random.Generator, n: int, lo: int, hi: int) -> np.ndarray:
    """``n`` fp32 values with bit patterns uniform in [lo, hi) (covers every binade)."""
    return rng.integers(lo, hi, n, dtype=np.uint32).view(np.float32)


def _jit_expr(
    expr: tuple, shapes: list[tuple[int, ...]], out_shape: tuple[int, ...]
) -> Callable[..., None]:
    Emitter.reset_names()
    ir = ew_kernel(
        "k", expr, Operand(0), out_shape, [(Operand(i + 1), s) for i, s in enumerate(shapes)], 8
    )
    jit = codegen.JitModule(
        codegen.emit_object(
            codegen.optimize_ir("\n".join([PRELUDE, *INTRINSICS, ir, target_support("x86_64")]))
        )
    )
    fn = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64)(jit.address("k"))

    def run(*bufs: np.ndarray) -> None:
        table = (ctypes.c_void_p * len(bufs))(*[b.ctypes.data for b in bufs])
        fn(ctypes.addressof(table), 0, 1)

    run.jit = jit  # type: ignore[attr-defined]  # keeps the code alive
    return run


def run_expr(expr: tuple, *arrays: np.ndarray, scalar: bool = False) -> np.ndarray:
    """``expr`` over same-length 1-D fp32 ``arrays`` as one elementwise kernel. ``scalar``: rows
    of 3 beside a broadcast (unused) operand, so that every element takes the scalar loop."""
    n = arrays[0].size
    out = np.empty(n, np.float32)
    kernels: dict[int, Callable[..., None]] = {}
    for lo in range(0, n, CHUNK):
        parts = [np.ascontiguousarray(a[lo : lo + CHUNK], np.float32) for a in arrays]
        m = parts[0].size
        if scalar:
            rows = -(-m // 3)
            parts = [np.resize(p, rows * 3).reshape(rows, 3) for p in parts]
            parts.append(np.zeros((rows, 1), np.float32))
        res = np.empty(parts[0].shape, np.float32)
        key = res.size
        if key not in kernels:
            kernels[key] = _jit_expr(expr, [p.shape for p in parts], res.shape)
        kernels[key](res, *parts)
        out[lo : lo + m] = res.reshape(-1)[:m]
    return out


def ulp_error(got: np.ndarray, want: np.ndarray) -> float:
    """Largest |got - want| in ulps of the fp32 rounding of ``want`` (float64); non-finite
    results must be equal (NaN where NaN)."""
    with np.errstate(over="ignore"):
        w32 = want.astype(np.float32)
    special = ~np.isfinite(w32) | ~np.isfinite(got)
    same = (got == w32) | (np.isnan(got) & np.isnan(w32))
    bad = special & ~same
    assert not bad.any(), f"specials differ: want {w32[bad][:5]}, got {got[bad][:5]}"
    fin = ~special
    with np.errstate(over="ignore"):
        spacing = np.maximum(np.spacing(np.abs(w32[fin])), np.spacing(np.float32(0)))
    err = np.abs(got[fin].astype(np.float64) - want[fin]) / spacing.astype(np.float64)
    return float(err.max(initial=0.0))


def _wide(rng: np.random.Generator, n: int, hi: int = 0x7F800000) -> np.ndarray:
    """Specials, then random bit patterns below ``hi`` of both signs, then the specials again
    (so that they meet both the vector loop and the scalar tail)."""
    pos = _bits(rng, n, 0, hi)
    limit = np.array([hi], np.uint32).view(np.float32)[0]
    sp = SPECIALS[~np.isfinite(SPECIALS) | (np.abs(SPECIALS) <= limit)]
    return np.concatenate([sp, pos, -pos[: n // 2], sp])


def _unit_interval(r: np.random.Generator) -> np.ndarray:
    """Random bits in [-1, 1], an even grid of it, then specials and values past it."""
    grid = np.linspace(-1, 1, 200_003, dtype=np.float32)
    return np.concatenate([_wide(r, 100_001, 0x3F800000), grid, _wide(r, 1001)])


# name, inputs, float64 truth, max ulp (measured, rounded up)
MATHS: dict[
    str,
    tuple[Callable[[np.random.Generator], np.ndarray], Callable[[np.ndarray], np.ndarray], float],
] = {
    "log": (
        lambda r: np.concatenate(
            [_wide(r, 300_001), np.linspace(0.5, 2, 100_003, dtype=np.float32)]
        ),
        np.log,
        0.8,
    ),
    "log1p": (
        lambda r: np.concatenate(
            [
                _wide(r, 300_001),
                -_bits(r, 100_001, 0, 0x3F800000),
                np.linspace(-0.999, 2, 100_003, dtype=np.float32),
            ]
        ),
        np.log1p,
        1.2,
    ),
    "expm1": (
        lambda r: np.concatenate(
            [_wide(r, 300_001, 0x42B80000), np.linspace(-20, 89, 100_003, dtype=np.float32)]
        ),
        np.expm1,
        1.5,
    ),
    "softplus": (
        lambda r: np.concatenate(
            [_wide(r, 300_001, 0x43000000), np.linspace(-110, 90, 100_003, dtype=np.float32)]
        ),
        lambda x: np.logaddexp(0.0, x),
        1.8,
    ),
    "sin": (
        lambda r: np.concatenate(
            [_wide(r, 100_001, 0x3F800000), r.uniform(-1e5, 1e5, 300_001).astype(np.float32)]
        ),
        np.sin,
        1.6,
    ),
    "cos": (
        lambda r: np.concatenate(
            [_wide(r, 100_001, 0x3F800000), r.uniform(-1e5, 1e5, 300_001).astype(np.float32)]
        ),
        np.cos,
        1.6,
    ),
    "round": (
        lambda r: np.concatenate([_wide(r, 300_001), np.arange(-8, 8, 0.25, dtype=np.float32)]),
        np.round,
        0.0,
    ),
    "atan": (
        lambda r: np.concatenate(
            [_wide(r, 300_001), np.linspace(-5, 5, 100_003, dtype=np.float32)]
        ),
        np.arctan,
        2.7,
    ),
    "asin": (lambda r: _unit_interval(r), np.arcsin, 2.3),
    "acos": (lambda r: _unit_interval(r), np.arccos, 1.3),
    "atanh": (lambda r: _unit_interval(r), np.arctanh, 2.0),
    "asinh": (
        lambda r: np.concatenate(
            [_wide(r, 300_001), np.linspace(-10, 10, 100_003, dtype=np.float32)]
        ),
        np.arcsinh,
        1.6,
    ),
    "acosh": (
        lambda r: np.concatenate(
            [
                _wide(r, 300_001),
                np.linspace(0.9, 10, 100_003, dtype=np.float32),
                1 + _bits(r, 10_001, 0, 0x3F000000),
            ]
        ),
        np.arccosh,
        1.9,
    ),
}


@pytest.mark.parametrize("scalar", [False, True], ids=["vector", "scalar"])
@pytest.mark.parametrize("name", sorted(MATHS))
def test_maths_function_ulp_error(name, scalar):
    make, truth, bound = MATHS[name]
    x = make(np.random.default_rng(sorted(MATHS).index(name)))
    if scalar:
        x = x[::16].copy()
    with np.errstate(all="ignore"):
        got = run_expr((name, ("in", 0)), x, scalar=scalar)
        err = ulp_error(got, truth(x.astype(np.float64)))
    assert err <= bound, f"{name}: {err:.3f} ulp"


def test_log_special_values():
    x = np.array([0.0, -0.0, -1e-45, -1.0, -np.inf, np.inf, np.nan, 1e-45, 1.0], np.float32)
    with np.errstate(all="ignore"):
        want = np.log(x)
    got = run_expr(("log", ("in", 0)), x)
    np.testing.assert_array_equal(got, want)
    assert got[0] == -np.inf
    assert got[1] == -np.inf
    assert np.isnan(got[2:5]).all()


@pytest.mark.parametrize("scalar", [False, True], ids=["vector", "scalar"])
def test_exp_ends_match_numpy(scalar):
    """The exp op: NaN, ±inf, the subnormal results below -87.34, and values up to FLT_MAX
    above 88.38 (where the 2^n scale alone would overflow)."""
    ends = np.array(
        [
            np.nan,
            -np.inf,
            np.inf,
            -200,
            -104,
            -103.5,
            -100,
            -90,
            -87.4,
            -87.3,
            88.3,
            88.38,
            88.5,
            88.72,
            88.7228,
            88.73,
            1e30,
            -0.0,
        ],
        np.float32,
    )
    x = np.concatenate([ends, np.random.default_rng(9).uniform(-110, 90, 2000).astype(np.float32)])
    with np.errstate(all="ignore"):
        want = np.exp(x.astype(np.float64))
    got = run_expr(("exp", ("in", 0)), x, scalar=scalar)
    assert ulp_error(got, want) <= 1.5


def test_sin_cos_near_multiples_of_half_pi():
    """The fp32 arguments closest to k·π/2 (the reduction's hardest cases), |x| up to 1e7."""
    t = np.arange(1, 6_400_000, 97) * (np.pi / 2)
    x32 = t.astype(np.float32)
    x = np.concatenate([x32, np.nextafter(x32, np.float32(0)), np.nextafter(x32, np.inf)])
    x64 = x.astype(np.float64)
    for name, truth in (("sin", np.sin), ("cos", np.cos)):
        assert ulp_error(run_expr((name, ("in", 0)), x), truth(x64)) <= 2.4, name


@pytest.mark.parametrize("limit", [1e6, 1e7])
def test_sin_cos_large_arguments(limit):
    x = np.random.default_rng(int(limit)).uniform(-limit, limit, 200_001).astype(np.float32)
    for name, truth in (("sin", np.sin), ("cos", np.cos)):
        got = run_expr((name, ("in", 0)), x)
        assert ulp_error(got, truth(x.astype(np.float64))) <= (1.7 if limit < 5e6 else 2.4)


def test_sin_cos_stay_bounded_beyond_the_reduction():
    x = np.random.default_rng(3).uniform(-1e30, 1e30, 10_001).astype(np.float32)
    for name in ("sin", "cos"):
        got = run_expr((name, ("in", 0)), x)
        assert (np.abs(got) <= 1).all(), name  # NaN fails too


def test_subnormal_results_and_inputs():
    """softplus far left is e^x (subnormal), expm1/log1p of subnormals are themselves."""
    x = np.array([-90.0, -95.0, -100.0, -103.0, -104.0, -200.0], np.float32)
    got = run_expr(("softplus", ("in", 0)), x)
    assert ulp_error(got, np.logaddexp(0.0, x.astype(np.float64))) <= 1.0
    tiny = _bits(np.random.default_rng(4), 1001, 1, 0x00800000)
    for name in ("expm1", "log1p", "sin"):
        np.testing.assert_array_equal(run_expr((name, ("in", 0)), tiny), tiny, err_msg=name)


# -- pow and fmod -------------------------------------------------------------------------------
POW_SPECIALS = np.array(
    [
        0.0,
        -0.0,
        1.0,
        -1.0,
        0.5,
        -0.5,
        2.0,
        -2.0,
        3.0,
        -3.0,
        np.inf,
        -np.inf,
        np.nan,
        1e-45,
        -1e-45,
        3.4e38,
        1e-30,
        0.25,
        1.5,
        -1.5,
        7.0,
        64.0,
        65.0,
        -64.0,
        1e10,
        -1e10,
    ],
    np.float32,
)


def _same(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    return ((got == want) & (np.signbit(got) == np.signbit(want))) | (
        np.isnan(got) & np.isnan(want)
    )


def test_pow_runtime_exponent():
    """Against float64: 0.5 ulp (one rounding of an fp64 core); special pairs as numpy."""
    rng = np.random.default_rng(5)
    n = 400_001
    x = np.concatenate(
        [
            _bits(rng, n, 0x20000000, 0x5F000000),
            _bits(rng, n, 0, 0x7F800000),
            -_bits(rng, n, 0x30000000, 0x4F000000),
        ]
    )
    y = np.concatenate(
        [
            rng.uniform(-12, 12, n),
            rng.uniform(-3, 3, n),
            rng.integers(-20, 21, n) + np.where(np.arange(n) % 3, 0.0, 0.5),
        ]
    ).astype(np.float32)
    with np.errstate(all="ignore"):
        assert (
            ulp_error(
                run_expr(("pow", ("in", 0), ("in", 1)), x, y),
                np.power(x.astype(np.float64), y.astype(np.float64)),
            )
            <= 0.5
        )
        xs, ys = (a.ravel().copy() for a in np.meshgrid(POW_SPECIALS, POW_SPECIALS))
        for scalar in (False, True):
            got = run_expr(("pow", ("in", 0), ("in", 1)), xs, ys, scalar=scalar)
            same = _same(got, np.power(xs, ys))
            assert same.all(), list(zip(xs[~same], ys[~same], got[~same], strict=True))[:5]


@pytest.mark.parametrize(
    "c",
    [
        0.0,
        1.0,
        2.0,
        3.0,
        -1.0,
        -2.0,
        0.5,
        -0.5,
        7.0,
        -7.0,
        64.0,
        65.0,
        1.5,
        -2.5,
        1e10,
        np.inf,
        -np.inf,
        np.nan,
    ],
)
def test_pow_literal_exponent(c):
    """A constant exponent: within 0.5 ulp of float64 (x**2, 1/x, sqrt are numpy's own), the
    specials as numpy's power by a scalar gives them (sqrt's for 0.5)."""
    rng = np.random.default_rng(6)
    x = np.concatenate([_wide(rng, 100_001), POW_SPECIALS])
    y = np.float32(c)
    with np.errstate(all="ignore"):
        got = run_expr(("pow", ("in", 0), ("const", float(c))), x)
        want = np.power(x, y)
        bad = ~np.isfinite(want) | ~np.isfinite(got)
        assert _same(got[bad], want[bad]).all() or c == 0.5
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        assert ulp_error(got, np.power(x.astype(np.float64), np.float64(y))) <= 0.5
        if c in (0.0, 1.0, 2.0, -1.0, 0.5):
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(("kernel_op", "fn"), [("fmod", np.fmod), ("floor_mod", np.mod)])
def test_float_remainders_exact(kernel_op, fn):
    """C fmod and numpy's mod bit for bit: random bit patterns, subnormal divisors, huge
    quotients, and every pair of special values."""
    rng = np.random.default_rng(7)
    n = 300_001
    x = np.concatenate(
        [
            _bits(rng, n, 0, 0x7F800000) * np.where(np.arange(n) % 2, 1, -1),
            rng.uniform(-100, 100, n),
            _bits(rng, n, 0x7E000000, 0x7F800000),
        ]
    ).astype(np.float32)
    y = np.concatenate(
        [
            _bits(rng, n, 0, 0x7F800000) * np.where(np.arange(n) % 3, 1, -1),
            rng.uniform(-3, 3, n),
            _bits(rng, n, 1, 0x00800000),
        ]
    ).astype(np.float32)
    xs, ys = (a.ravel().copy() for a in np.meshgrid(POW_SPECIALS, POW_SPECIALS))
    x, y = np.concatenate([x, xs]), np.concatenate([y, ys])
    with np.errstate(all="ignore"):
        want = fn(x, y)
        for scalar in (False, True):
            k = 1 if not scalar else 13
            got = run_expr((kernel_op, ("in", 0), ("in", 1)), x[::k], y[::k], scalar=scalar)
            same = _same(got, want[::k])
            assert same.all(), list(zip(x[::k][~same], y[::k][~same], got[~same], strict=True))[:5]


def test_max_min_relu_keep_nan():
    x = np.array([np.nan, 1.0, np.nan, -np.inf, -0.0, 2.0, -3.0, np.nan, 5.0], np.float32)
    y = np.array([1.0, np.nan, np.nan, 0.0, 0.0, np.inf, -1.0, -np.inf, 5.0], np.float32)
    for name, fn in (("max", np.maximum), ("min", np.minimum)):
        for scalar in (False, True):
            got = run_expr((name, ("in", 0), ("in", 1)), x, y, scalar=scalar)
            np.testing.assert_array_equal(got, fn(x, y), err_msg=name)
    np.testing.assert_array_equal(run_expr(("relu", ("in", 0)), x), np.maximum(x, 0))


def test_maths_are_straight_line_code():
    """No libm or other external calls: every call is an LLVM intrinsic (so it vectorizes)."""
    Emitter.reset_names()
    for name in ("log", "log1p", "expm1", "softplus", "sin", "cos", "round"):
        ir = ew_kernel("k", (name, ("in", 0)), Operand(0), (1000,), [(Operand(1), (1000,))], 8)
        assert "<32 x float>" in ir, name
        calls = set(re.findall(r"call[^@]*@([\w.]+)", ir))
        assert all(c.startswith("llvm.") or c == "k_body" for c in calls), (name, calls)
    for expr in (("pow", ("in", 0), ("in", 1)), ("floor_mod", ("in", 0), ("in", 1))):
        ir = ew_kernel("k", expr, Operand(0), (1000,), [(Operand(1), (1000,))] * 2, 8)
        calls = set(re.findall(r"call[^@]*@([\w.]+)", ir))
        assert all(c.startswith("llvm.") or c == "k_body" for c in calls), (expr, calls)


# -- ops as compiled graphs ---------------------------------------------------------------------
def compiled(graph: Graph, feeds: dict[str, np.ndarray]) -> tuple[dict, dict, object]:
    with np.errstate(all="ignore"):
        want = reference(graph, feeds)
        model = compile_graph(graph, threads=2)
        got = model(**feeds)
    assert model.fallback_nodes == [], model.fallback_nodes
    return got, want, model


def _special_feed(
    shape: tuple[int, ...], rng: np.random.Generator, scale: float = 3.0
) -> np.ndarray:
    x = (rng.standard_normal(shape) * scale).astype(np.float32)
    flat = x.reshape(-1)
    flat[: min(len(SPECIALS), flat.size)] = SPECIALS[: flat.size]
    return x


def _elu64(alpha: float) -> Callable[[np.ndarray], np.ndarray]:
    a = float(np.float32(alpha))
    return lambda x: np.where(x > 0, x, a * np.expm1(x))


UNARY_CASES = [  # op, attrs, float64 truth and max ulp (None: bit for bit with the reference)
    ("log", {}, np.log, 1.0),
    ("sin", {}, np.sin, 1.6),
    ("cos", {}, np.cos, 1.6),
    ("round", {}, None, None),
    ("softplus", {}, lambda x: np.logaddexp(0.0, x), 1.8),
    ("leaky_relu", {}, None, None),
    ("leaky_relu", {"alpha": 0.2}, None, None),
    ("leaky_relu", {"alpha": 0.0}, None, None),
    ("leaky_relu", {"alpha": -1.5}, None, None),
    ("leaky_relu", {"alpha": 3.0}, None, None),
    ("elu", {}, _elu64(1.0), 2.0),
    ("elu", {"alpha": 0.3}, _elu64(0.3), 2.0),
    ("hard_sigmoid", {}, None, None),
    ("hard_sigmoid", {"alpha": 1 / 6, "beta": 0.5}, None, None),
]


@pytest.mark.parametrize("shape", [(3, 37), (1001,), (2, 3, 5)])
@pytest.mark.parametrize(("op", "attrs", "truth", "maxulp"), UNARY_CASES)
def test_unary_op_compiled(op, attrs, truth, maxulp, shape):
    """Specials (their NaN/inf as the reference), odd lengths for the scalar tail."""
    g, _ = one_node(op, [shape], **attrs)
    x = _special_feed(shape, np.random.default_rng(len(op) + sum(shape)))
    if op == "log":
        x = (np.abs(x) * np.where(np.arange(x.size).reshape(shape) % 7 == 0, -1, 1)).astype(
            np.float32
        )
    if op in ("sin", "cos"):
        x[np.abs(x) > 1e5] = 1e5  # beyond the accurate range (tested above)
    got, want, _ = compiled(g, {"x0": x})
    name = g.outputs[0].name
    if maxulp is None:
        np.testing.assert_array_equal(got[name], want[name])
    else:
        np.testing.assert_array_equal(np.isnan(got[name]), np.isnan(want[name]))
        with np.errstate(all="ignore"):
            assert ulp_error(got[name], truth(x.astype(np.float64))) <= maxulp


@pytest.mark.parametrize(
    ("lo", "hi"),
    [(-1.0, 1.0), (0.0, 6.0), (None, 0.5), (-0.5, None), (1.0, -1.0), (-np.inf, np.inf)],
)
@pytest.mark.parametrize("runtime", [False, True])
def test_clip(lo, hi, runtime):
    rng = np.random.default_rng(8)
    g = Graph("clip")
    x = g.add_input("x", (4, 33))
    feeds = {"x": _special_feed((4, 33), rng)}
    bounds = []
    for i, b in enumerate((lo, hi)):
        if b is None:
            bounds.append(None)
        elif runtime:
            bounds.append(g.add_input(f"b{i}", ()))
            feeds[f"b{i}"] = np.array(b, np.float32)
        else:
            bounds.append(g.add_const(np.array(b, np.float32), f"b{i}"))
    g.set_outputs(g.apply("clip", x, *bounds))
    got, want, _ = compiled(g, feeds)
    np.testing.assert_array_equal(got[g.outputs[0].name], want[g.outputs[0].name])


@pytest.mark.parametrize(
    ("a", "b"), [((5, 7), (5, 7)), ((3, 1, 9), (4, 1)), ((2, 33), (33,)), ((1001,), ())]
)
def test_pow_and_mod_broadcast(a, b):
    rng = np.random.default_rng(len(a) + len(b))
    xa = _special_feed(a, rng)
    yb = (rng.standard_normal(b) * 3).astype(np.float32)
    for op, attrs in (("pow", {}), ("mod", {"fmod": 1}), ("mod", {"fmod": 0})):
        g, _ = one_node(op, [a, b], **attrs)
        y = np.round(yb) if op == "pow" else yb
        got, want, _ = compiled(g, {"x0": xa, "x1": np.asarray(y, np.float32).reshape(b)})
        name = g.outputs[0].name
        if op == "mod":
            assert _same(got[name], want[name]).all(), (op, attrs)
        else:
            with np.errstate(all="ignore"):
                assert (
                    ulp_error(got[name], np.power(xa.astype(np.float64), y.astype(np.float64)))
                    <= 0.5
                )


@pytest.mark.parametrize(
    ("c", "dtype"),
    [
        *[(c, "float32") for c in (2.0, 3.0, 0.5, -0.5, -1.0, 1.7)],
        *[(c, "int64") for c in (2, 3, -1, -3)],
    ],
)
def test_pow_constant_exponent(c, dtype):
    g, feeds = one_node("pow", [(3, 41), ()], consts={1: np.array(c, dtype)})
    feeds["x0"] = _special_feed((3, 41), np.random.default_rng(9))
    got, want, _ = compiled(g, feeds)
    name = g.outputs[0].name
    np.testing.assert_array_equal(np.isnan(got[name]), np.isnan(want[name]))
    assert ulp_error(got[name], want[name].astype(np.float64)) <= 1.0


def test_pow_integer_array_exponent_and_runtime_integer_fallback():
    rng = np.random.default_rng(10)
    g, feeds = one_node("pow", [(4, 9), (9,)], consts={1: np.arange(-4, 5)})
    got, want, _ = compiled(g, feeds)
    assert ulp_error(got[g.outputs[0].name], want[g.outputs[0].name].astype(np.float64)) <= 1
    g = Graph("pow_int")
    x, y = g.add_input("x", (4, 9)), g.add_input("y", (9,), "int64")
    g.set_outputs(g.apply("pow", x, y))
    model = compile_graph(g, threads=1)
    assert model.fallback_nodes == [g.nodes[0].name]  # run-time integer exponents: numpy
    feeds = {"x": rng.standard_normal((4, 9)).astype(np.float32), "y": np.arange(9) - 4}
    np.testing.assert_array_equal(
        model(**feeds)[g.outputs[0].name], reference(g, feeds)[g.outputs[0].name]
    )


@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (4, 6), (1, 16, 9, 9, 3)])
@pytest.mark.parametrize("const", [True, False])
def test_batch_norm(shape, const):
    rng = np.random.default_rng(sum(shape))
    c = shape[1]
    params = [
        rng.standard_normal(c),
        rng.standard_normal(c),
        rng.standard_normal(c),
        np.abs(rng.standard_normal(c)) + 0.1,
    ]
    consts = {i + 1: p.astype(np.float32) for i, p in enumerate(params)} if const else None
    g, feeds = one_node("batch_norm", [shape, (c,), (c,), (c,), (c,)], consts=consts, epsilon=1e-3)
    if not const:
        feeds.update({f"x{i + 1}": p.astype(np.float32) for i, p in enumerate(params)})
    feeds["x0"] = _special_feed(shape, rng)
    got, want, model = compiled(g, feeds)
    name = g.outputs[0].name
    if const:  # x·s + t rounds differently from the reference's four steps
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5)
    else:  # the reference's own expression
        np.testing.assert_array_equal(got[name], want[name])
    assert len(model.kernels) == 1


def test_batch_norm_then_relu_is_one_kernel():
    rng = np.random.default_rng(11)
    g = Graph("bn_relu")
    x = g.add_input("x", (2, 4, 6, 5))
    params = [
        g.add_const(a.astype(np.float32))
        for a in (
            rng.standard_normal(4),
            rng.standard_normal(4),
            rng.standard_normal(4),
            np.abs(rng.standard_normal(4)) + 0.5,
        )
    ]
    g.set_outputs(g.apply("relu", g.apply("batch_norm", x, *params)))
    got, want, model = compiled(g, {"x": rng.standard_normal((2, 4, 6, 5)).astype(np.float32)})
    np.testing.assert_allclose(
        got[g.outputs[0].name], want[g.outputs[0].name], rtol=1e-5, atol=1e-5
    )
    assert model.kernels == ["k0_batch_norm_relu"], model.kernels


@pytest.mark.parametrize("shape", [(5, 33), (3, 2, 768), (1, 7), (4, 1)])
def test_log_softmax(shape):
    rng = np.random.default_rng(shape[-1])
    g, _ = one_node("log_softmax", [shape])
    x = (rng.standard_normal(shape) * 10).astype(np.float32)
    x.reshape(-1)[0] = -np.inf
    got, want, _ = compiled(g, {"x0": x})
    np.testing.assert_allclose(
        got[g.outputs[0].name], want[g.outputs[0].name], rtol=2e-6, atol=2e-6
    )


def test_log_softmax_inner_axis_falls_back():
    g, feeds = one_node("log_softmax", [(4, 5, 6)], axis=1)
    model = compile_graph(g, threads=1)
    assert model.fallback_nodes == [g.nodes[0].name]
    np.testing.assert_allclose(
        model(**feeds)[g.outputs[0].name], reference(g, feeds)[g.outputs[0].name], rtol=1e-6
    )


@pytest.mark.parametrize(
    ("op", "attrs", "kernels"),
    [
        ("softplus", {}, 1),
        ("leaky_relu", {}, 1),
        ("sin", {}, 1),
        ("leaky_relu", {"alpha": 0.1}, 2),
    ],
)
def test_new_unary_ops_fuse_after_gemm(op, attrs, kernels):
    """A unary op of default attributes is the GEMM's activation; others run after it."""
    rng = np.random.default_rng(12)
    g = Graph("mm_act")
    x = g.add_input("x", (17, 40))
    mm = g.apply("matmul", x, g.add_const(rng.standard_normal((40, 24)).astype(np.float32)))
    g.set_outputs(g.apply(op, mm, **attrs))
    got, want, model = compiled(g, {"x": rng.standard_normal((17, 40)).astype(np.float32)})
    np.testing.assert_allclose(
        got[g.outputs[0].name], want[g.outputs[0].name], rtol=1e-4, atol=1e-5
    )
    assert len(model.kernels) == kernels, model.kernels


@pytest.mark.parametrize(
    ("op", "attrs", "extra"),
    [
        ("leaky_relu", {"alpha": 0.2}, None),
        ("elu", {"alpha": 0.5}, None),
        ("hard_sigmoid", {}, None),
        ("clip", {}, (-0.5, 0.5)),
        ("pow", {}, 2.0),
        ("log", {}, None),
    ],
)
def test_ops_with_attributes_fuse_after_layer_norm(op, attrs, extra):
    rng = np.random.default_rng(13)
    g = Graph("ln_act")
    x = g.add_input("x", (9, 70))
    ln = g.apply("layer_norm", x, g.add_const(rng.standard_normal(70).astype(np.float32)))
    if op == "clip":
        ins = [g.add_const(np.array(b, np.float32)) for b in extra]
    elif op == "pow":
        ins = [g.add_const(np.array(extra, np.float32))]
    else:
        ins = []
    g.set_outputs(g.apply(op, ln, *ins, **attrs))
    got, want, model = compiled(g, {"x": rng.standard_normal((9, 70)).astype(np.float32)})
    np.testing.assert_allclose(
        got[g.outputs[0].name], want[g.outputs[0].name], rtol=1e-4, atol=1e-5
    )
    assert len(model.kernels) == 1, model.kernels


@pytest.mark.parametrize("producer", ["conv", "matmul"])
def test_clip_0_6_is_the_relu6_of_conv_and_gemm(producer):
    """MobileNet's Clip(0, 6) after a convolution or GEMM is applied before its store."""
    rng = np.random.default_rng(14)
    g = Graph("relu6")
    if producer == "conv":
        x = g.add_input("x", (1, 3, 9, 9))
        y = g.apply(
            "conv",
            x,
            g.add_const(rng.standard_normal((4, 3, 3, 3)).astype(np.float32)),
            g.add_const(rng.standard_normal(4).astype(np.float32)),
            pads=(1, 1, 1, 1),
        )
    else:
        x = g.add_input("x", (7, 20))
        y = g.apply("matmul", x, g.add_const(rng.standard_normal((20, 9)).astype(np.float32)))
    g.set_outputs(g.apply("clip", y, g.add_const(np.float32(0.0)), g.add_const(np.float32(6.0))))
    feeds = {"x": (rng.standard_normal(tuple(x.type.shape)) * 3).astype(np.float32)}
    got, want, model = compiled(g, feeds)
    np.testing.assert_allclose(
        got[g.outputs[0].name], want[g.outputs[0].name], rtol=1e-4, atol=1e-4
    )
    assert [k for k in model.kernels if k.endswith("_relu6")], model.kernels
    assert len([k for k in model.kernels if not k.endswith(("_prep", "_pack"))]) == 1


@pytest.mark.parametrize(
    ("op", "attrs"),
    [
        ("softmax", {"axis": -1}),
        ("log_softmax", {"axis": -1}),
        ("sigmoid", {}),
        ("tanh", {}),
        ("erf", {}),
        ("gelu", {}),
        ("softplus", {}),
        ("elu", {}),
    ],
)
def test_nan_and_infinities_as_numpy(op, attrs):
    """Rows holding a NaN, all -inf and all +inf: NaN propagates through the exp/erf clamps
    (softmax of such a row is NaN throughout, as numpy's), infinities give numpy's limits."""
    x = np.array(
        [[1, 2, np.nan, 3, 0, 0, 0, 0, 1, -1], [-np.inf] * 10, [np.inf] * 10, [-3, 9] * 5],
        np.float32,
    )
    g = Graph(op)
    g.set_outputs(g.apply(op, g.add_input("x", x.shape), **attrs))
    with np.errstate(all="ignore"):
        want = next(iter(reference(g, {"x": x}).values()))
    got = next(iter(compile_graph(g, threads=1)(x=x).values()))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-30)


def test_inverse_functions_fuse_into_one_kernel():
    """acosh(asinh(atanh(acos(asin(atan(x)/2))/4)) + 2): one fused kernel after optimization,
    no fallback, numpy's values."""
    import satura

    x = np.linspace(-30, 30, 4099, dtype=np.float32)
    g = Graph("inv")
    v = g.add_input("x", x.shape)
    for op, c in (("atan", 0.5), ("asin", 1.0), ("acos", 0.25), ("atanh", 1.0), ("asinh", 1.0)):
        v = g.apply(op, v)
        if c != 1.0:
            v = g.apply("mul", v, g.add_const(np.float32(c)))
    v = g.apply("acosh", g.apply("add", v, g.add_const(np.float32(2.0))))
    g.set_outputs(v)
    model = satura.compile(satura.optimize(g).graph)
    assert model.fallback_ops == []
    assert len(model.kernels) == 1, model.kernels
    t = np.arccos(np.arcsin(np.arctan(x.astype(np.float64)) * 0.5)) * 0.25
    want = np.arccosh(np.arcsinh(np.arctanh(t)) + 2)
    np.testing.assert_allclose(model(x=x)[v.name], want, rtol=2e-6)
