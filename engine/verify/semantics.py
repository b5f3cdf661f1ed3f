"""Value semantics of ops for the verifier: one table entry per op, over two Z3 domains.

A tensor is a numpy object array whose elements are Z3 terms; shapes are concrete ints (the value
check runs on bounded concrete shapes). Data movement (transpose, reshape, concat, split, slice,
broadcasting) reuses numpy's own indexing on those arrays, so it means exactly what the numpy
references mean. Arithmetic goes through a :class:`Domain`:

- :class:`RealDomain`: Z3 reals; transcendental functions are uninterpreted functions, with the
  axioms in :data:`AXIOMS` instantiated at each application.
- :class:`FP32Domain`: IEEE binary32 (``z3.FPSort(8, 24)``), round-to-nearest-even; NaN and signed
  zero follow numpy's references (``maximum`` propagates NaN and returns its second operand on
  ties). Sums accumulate left to right, the order the lowering uses.

An op missing from :data:`SEMANTICS` makes the verdict ``unknown``, never a pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import z3
from satura.engine.ops.linalg import ACTIVATIONS
from satura.engine.ops.reduce import reduce_axes
from satura.engine.shapes import IntDims, normalize_axis

Tensor = np.ndarray  # dtype=object, elements are Z3 terms


class Domain:
    """Scalar arithmetic over Z3 terms; subclassed per number model."""

    name = "?"

    def __init__(self) -> None:
        self.apps: list[tuple[str, tuple[Any, ...], Any]] = []  # uninterpreted applications
        self.defined: list[Any] = []  # where the terms built so far are defined (divisors != 0)
        self._fns: dict[str, Any] = {}

    # Subclasses define: sort, var, const, add, sub, mul, div, neg, lt, le, eq, isnan, max, min.
    def ite(self, c: Any, a: Any, b: Any) -> Any:
        return z3.If(c, a, b)

    def uf(self, name: str, *args: Any) -> Any:
        """An uninterpreted function application ``name(args)`` (recorded for axioms)."""
        key = f"{name}/{len(args)}"
        f = self._fns.get(key)
        if f is None:
            f = z3.Function(f"{name}_{self.name}", *([self.sort] * len(args)), self.sort)
            self._fns[key] = f
        out = f(*args)
        self.apps.append((name, args, out))
        return out

    def axioms(self) -> list[Any]:
        """Instances of :data:`AXIOMS` for every recorded application (real domain only)."""
        return []


class RealDomain(Domain):
    name = "real"
    sort = z3.RealSort()

    def __init__(self) -> None:
        super().__init__()
        self.used_named: set[str] = set()

    def var(self, name: str) -> Any:
        return z3.Real(name)

    def const(self, v: Any) -> Any:
        return v if isinstance(v, z3.ExprRef) else z3.RealVal(float(v))

    def add(self, a: Any, b: Any) -> Any:
        return a + b

    def sub(self, a: Any, b: Any) -> Any:
        return a - b

    def mul(self, a: Any, b: Any) -> Any:
        return a * b

    def div(self, a: Any, b: Any) -> Any:
        # Over the reals a/0 is undefined: the pattern's divisions are assumed nonzero (the rule
        # need only hold where the pattern is defined); the replacement's are not.
        self.defined.append(b != 0)
        # a·(1/b), never a/b: x/c and x·(1/c) then simplify to one term (Z3's nonlinear solver
        # times out proving them equal inside large sums; 1/b is one term per divisor).
        return a * (1 / b)

    def neg(self, a: Any) -> Any:
        return -a

    def lt(self, a: Any, b: Any) -> Any:
        return a < b

    def le(self, a: Any, b: Any) -> Any:
        return a <= b

    def eq(self, a: Any, b: Any) -> Any:
        return a == b

    def isnan(self, a: Any) -> Any:
        return z3.BoolVal(False)

    def max(self, a: Any, b: Any) -> Any:
        return z3.If(a > b, a, b)

    def min(self, a: Any, b: Any) -> Any:
        return z3.If(a < b, a, b)

    def named(self, name: str, value: float) -> Any:
        """A named constant as the exact real it names (PI, SQRT2, ...), with its defining
        facts among :meth:`axioms`."""
        if name not in NAMED_REALS:
            return self.const(value)
        self.used_named.add(name)
        if name == "SQRT1_2":
            return 1 / self.named("SQRT2", math.sqrt(2.0))
        return z3.Real(name)

    def axioms(self) -> list[Any]:
        out: list[Any] = []
        for n in sorted(self.used_named):
            out += NAMED_REALS[n]()
        for name, args, app in self.apps:
            ax = AXIOMS.get(name)
            if ax is not None:
                out += ax(args, app)
        return out


class FP32Domain(Domain):
    name = "fp32"
    sort = z3.FPSort(8, 24)
    rm = z3.RNE()

    def named(self, name: str, value: float) -> Any:
        return self.const(value)  # the float32 rounding of the exact value

    def var(self, name: str) -> Any:
        return z3.FP(name, self.sort)

    def const(self, v: Any) -> Any:
        if isinstance(v, z3.ExprRef):
            return v
        f = float(np.float32(v))  # numpy rounds the literal to float32 the same way (RNE)
        if math.isnan(f):
            return z3.fpNaN(self.sort)
        return z3.FPVal(f, None, self.sort)

    @staticmethod
    def _order(a: Any, b: Any) -> tuple[Any, Any]:
        # IEEE add and mul are commutative (Z3 has one NaN): a canonical operand order makes
        # a·b and b·a the same term, which saves Z3 a bit-blasted proof.
        return (a, b) if a.get_id() <= b.get_id() else (b, a)

    def add(self, a: Any, b: Any) -> Any:
        return z3.fpAdd(self.rm, *self._order(a, b))

    def sub(self, a: Any, b: Any) -> Any:
        return z3.fpSub(self.rm, a, b)

    def mul(self, a: Any, b: Any) -> Any:
        return z3.fpMul(self.rm, *self._order(a, b))

    def div(self, a: Any, b: Any) -> Any:
        return z3.fpDiv(self.rm, a, b)

    def neg(self, a: Any) -> Any:
        return z3.fpNeg(a)

    def lt(self, a: Any, b: Any) -> Any:
        return z3.fpLT(a, b)

    def le(self, a: Any, b: Any) -> Any:
        return z3.fpLEQ(a, b)

    def eq(self, a: Any, b: Any) -> Any:
        return z3.fpEQ(a, b)

    def isnan(self, a: Any) -> Any:
        return z3.fpIsNaN(a)

    def max(self, a: Any, b: Any) -> Any:  # np.maximum: NaN wins; ties give b
        return z3.If(z3.fpIsNaN(a), a, z3.If(z3.fpIsNaN(b), b, z3.If(z3.fpGT(a, b), a, b)))

    def min(self, a: Any, b: Any) -> Any:
        return z3.If(z3.fpIsNaN(a), a, z3.If(z3.fpIsNaN(b), b, z3.If(z3.fpLT(a, b), a, b)))


# -- axioms of uninterpreted functions (real domain), instantiated per application ---------------
def _exp_axioms(args: tuple[Any, ...], app: Any) -> list[Any]:
    return [app > 0]


def _sqrt_axioms(args: tuple[Any, ...], app: Any) -> list[Any]:
    (x,) = args
    return [z3.Implies(x >= 0, z3.And(app >= 0, app * app == x))]


NAMED_REALS: dict[str, Callable[[], list[Any]]] = {
    "SQRT2": lambda: [z3.Real("SQRT2") > 1, z3.Real("SQRT2") * z3.Real("SQRT2") == 2],
    "PI": lambda: [z3.Real("PI") > 3.14159, z3.Real("PI") < 3.1416],
    "E": lambda: [z3.Real("E") > 2.71828, z3.Real("E") < 2.71829],
    "SQRT_2_OVER_PI": lambda: [
        z3.Real("SQRT_2_OVER_PI") > 0,
        z3.Real("SQRT_2_OVER_PI") * z3.Real("SQRT_2_OVER_PI") * z3.Real("PI") == 2,
        z3.Real("PI") > 3.14159,
        z3.Real("PI") < 3.1416,
    ],
    "SQRT1_2": lambda: [],
}

AXIOMS: dict[str, Callable[[tuple[Any, ...], Any], list[Any]]] = {
    "exp": _exp_axioms,
    "sqrt": _sqrt_axioms,
}


# -- tensor helpers -------------------------------------------------------------------------------
def scalar(v: Any) -> Tensor:
    out = np.empty((), dtype=object)
    out[()] = v
    return out


def ew(f: Callable[..., Any], *xs: Tensor) -> Tensor:
    """Apply scalar ``f`` elementwise with numpy broadcasting."""
    arrs = [np.asarray(x, dtype=object) if isinstance(x, np.ndarray) else scalar(x) for x in xs]
    shape = np.broadcast_shapes(*(a.shape for a in arrs))
    bs = [np.broadcast_to(a, shape) for a in arrs]
    out = np.empty(shape, dtype=object)
    for idx in np.ndindex(*shape):
        out[idx] = f(*(b[idx] for b in bs))
    return out


def total(dom: Domain, items: Sequence[Any]) -> Any:
    """Left-to-right sum (at least one item: every dimension is >= 1)."""
    acc = items[0]
    for v in items[1:]:
        acc = dom.add(acc, v)
    return acc


def reduce_along(
    x: Tensor, axes: Sequence[int], keepdims: bool, f: Callable[[list[Any]], Any]
) -> Tensor:
    """Reduce ``x`` over ``axes`` with ``f`` applied to the list of reduced elements (C order)."""
    keep = [i for i in range(x.ndim) if i not in axes]
    moved = np.transpose(x, keep + list(axes))
    outer = moved.shape[: len(keep)]
    flat = moved.reshape(*outer, -1) if outer else moved.reshape(1, -1)
    out = np.empty(outer, dtype=object)
    for idx in np.ndindex(*outer):
        out[idx] = f(list(flat[idx] if outer else flat[0]))
    if keepdims:
        out = out.reshape(tuple(1 if i in axes else x.shape[i] for i in range(x.ndim)))
    return out


def matmul(dom: Domain, a: Tensor, b: Tensor) -> Tensor:
    """numpy matmul: 1-D operands promoted then squeezed, batch dims broadcast."""
    a2 = a[None, :] if a.ndim == 1 else a
    b2 = b[:, None] if b.ndim == 1 else b
    batch = np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
    aa = np.broadcast_to(a2, batch + a2.shape[-2:])
    bb = np.broadcast_to(b2, batch + b2.shape[-2:])
    m, k = aa.shape[-2:]
    n = bb.shape[-1]
    out = np.empty((*batch, m, n), dtype=object)
    for bi in np.ndindex(*batch):
        for i in range(m):
            for j in range(n):
                out[(*bi, i, j)] = total(
                    dom, [dom.mul(aa[(*bi, i, t)], bb[(*bi, t, j)]) for t in range(k)]
                )
    if b.ndim == 1:
        out = out[..., 0]
    if a.ndim == 1:
        out = out[..., 0, :] if b.ndim > 1 else out[..., 0]
    return np.asarray(out, dtype=object) if isinstance(out, np.ndarray) else scalar(out)


# -- scalar op semantics ------------------------------------------------------------------------
def _relu(dom: Domain, x: Any) -> Any:
    return dom.max(x, dom.const(0.0))


def _sigmoid(dom: Domain, x: Any) -> Any:
    one = dom.const(1.0)
    return dom.div(one, dom.add(one, dom.uf("exp", dom.neg(x))))


def _silu(dom: Domain, x: Any) -> Any:
    return dom.div(x, dom.add(dom.const(1.0), dom.uf("exp", dom.neg(x))))


def gelu(dom: Domain, x: Any, approximate: str = "none") -> Any:
    """GELU as the reference writes it, with erf/tanh uninterpreted."""
    if isinstance(dom, FP32Domain):
        # The reference computes in float64 and rounds once: opaque in fp32.
        return dom.uf("gelu_tanh" if approximate == "tanh" else "gelu", x)
    half, one = dom.const(0.5), dom.const(1.0)
    if approximate == "tanh":
        c = dom.named("SQRT_2_OVER_PI", math.sqrt(2.0 / math.pi))
        cube = dom.mul(dom.mul(x, x), x)
        inner = dom.mul(c, dom.add(x, dom.mul(dom.const(0.044715), cube)))
        return dom.mul(dom.mul(half, x), dom.add(one, dom.uf("tanh", inner)))
    return dom.mul(
        dom.mul(half, x),
        dom.add(one, dom.uf("erf", dom.div(x, dom.named("SQRT2", math.sqrt(2.0))))),
    )


def activation(dom: Domain, x: Any, act: str) -> Any:
    """One of linalg's ACTIVATIONS on a scalar."""
    if act == "none":
        return x
    fns: dict[str, Callable[[Any], Any]] = {
        "relu": lambda v: _relu(dom, v),
        "gelu": lambda v: gelu(dom, v),
        "gelu_tanh": lambda v: gelu(dom, v, "tanh"),
        "silu": lambda v: _silu(dom, v),
        "sigmoid": lambda v: _sigmoid(dom, v),
        "tanh": lambda v: dom.uf("tanh", v),
    }
    if act not in fns:
        raise KeyError(f"activation '{act}' has no value semantics ({ACTIVATIONS})")
    return fns[act](x)


# Scalar unary ops: name -> f(dom, x). Ops not here (floor, ceil, isnan, not, cast...) fall back to
# uninterpreted functions only where listed in _UF_UNARY.
_UNARY: dict[str, Callable[[Domain, Any], Any]] = {
    "neg": lambda d, x: d.neg(x),
    "abs": lambda d, x: d.ite(d.lt(x, d.const(0.0)), d.neg(x), x),
    "reciprocal": lambda d, x: d.div(d.const(1.0), x),
    "relu": _relu,
    "sigmoid": _sigmoid,
    "silu": _silu,
    "identity": lambda d, x: x,
}
_UF_UNARY = (
    *("sqrt", "exp", "log", "tanh", "erf", "sin", "cos", "floor", "ceil", "round"),
    *("atan", "asin", "acos", "asinh", "acosh", "atanh"),
)

_BINARY: dict[str, Callable[[Domain, Any, Any], Any]] = {
    "add": lambda d, a, b: d.add(a, b),
    "sub": lambda d, a, b: d.sub(a, b),
    "mul": lambda d, a, b: d.mul(a, b),
    "div": lambda d, a, b: d.div(a, b),
    "max": lambda d, a, b: d.max(a, b),
    "min": lambda d, a, b: d.min(a, b),
    "pow": lambda d, a, b: _pow(d, a, b),
}


def _const_value(dom: Domain, b: Any) -> float | None:
    v = z3.simplify(z3.fpToReal(b) if isinstance(dom, FP32Domain) and z3.is_fp(b) else b)
    return float(v.as_fraction()) if z3.is_rational_value(v) else None


def _pow(dom: Domain, a: Any, b: Any) -> Any:
    """x**n for a constant small n as repeated products (numpy squares exactly for n = 2);
    otherwise uninterpreted."""
    n = _const_value(dom, b)
    if n == 1.0:
        return a
    if n == 2.0:
        return dom.mul(a, a)
    if n is not None and isinstance(dom, RealDomain) and n in (3.0, 4.0):
        out = a
        for _ in range(int(n) - 1):
            out = dom.mul(out, a)
        return out
    if n == 0.5 and isinstance(dom, RealDomain):
        return dom.uf("sqrt", a)
    return dom.uf("pow", a, b)


def scalar_op(dom: Domain, name: str, args: Sequence[Any], attrs: dict[str, Any]) -> Any:
    """An elementwise op on scalars (used by the table and by ``ew``'s expression trees)."""
    if name == "gelu_tanh":
        return gelu(dom, args[0], "tanh")
    if name == "gelu":
        return gelu(dom, args[0], attrs.get("approximate", "none"))
    if name == "leaky_relu":
        x = args[0]
        alpha = attrs.get("alpha", 0.01)
        return dom.ite(dom.le(dom.const(0.0), x), x, dom.mul(x, dom.const(alpha)))
    if name in _UNARY:
        return _UNARY[name](dom, args[0])
    if name in _UF_UNARY:
        return dom.uf(name, args[0])
    if name in _BINARY:
        return _BINARY[name](dom, args[0], args[1])
    raise KeyError(name)


# -- tensor op semantics --------------------------------------------------------------------------
SemFn = Callable[[Domain, list[Any], dict[str, Any]], list[Tensor]]


@dataclass(frozen=True)
class OpSemantics:
    """Value semantics of one op: ``fn(dom, inputs, attrs) -> outputs``; ``ufs`` names the
    uninterpreted functions it may apply (their axioms are in :data:`AXIOMS`)."""

    fn: SemFn
    ufs: tuple[str, ...] = ()


SEMANTICS: dict[str, OpSemantics] = {}


def _elementwise(name: str) -> OpSemantics:
    def fn(dom: Domain, ins: list[Any], at: dict[str, Any]) -> list[Tensor]:
        return [ew(lambda *xs: scalar_op(dom, name, xs, at), *ins)]

    ufs = (name,) if name in _UF_UNARY else ("exp",) if name in ("sigmoid", "silu") else ()
    return OpSemantics(fn, ufs)


for _n in [*_UNARY, *_UF_UNARY, *_BINARY, "gelu", "leaky_relu"]:
    SEMANTICS[_n] = _elementwise(_n)


def _where(dom: Domain, ins: list[Any], at: dict[str, Any]) -> list[Tensor]:
    return [ew(lambda c, a, b: dom.ite(c, a, b), *ins)]


_CMP: dict[str, Callable[[Domain, Any, Any], Any]] = {
    "less": lambda d, a, b: d.lt(a, b),
    "less_equal": lambda d, a, b: d.le(a, b),
    "greater": lambda d, a, b: d.lt(b, a),
    "greater_equal": lambda d, a, b: d.le(b, a),
    "equal": lambda d, a, b: d.eq(a, b),
}
for _n, _f in _CMP.items():
    SEMANTICS[_n] = OpSemantics(
        (lambda f: lambda dom, ins, at: [ew(lambda a, b: f(dom, a, b), *ins)])(_f)
    )
SEMANTICS["where"] = OpSemantics(_where)
SEMANTICS["and"] = OpSemantics(lambda dom, ins, at: [ew(z3.And, *ins)])
SEMANTICS["or"] = OpSemantics(lambda dom, ins, at: [ew(z3.Or, *ins)])
SEMANTICS["not"] = OpSemantics(lambda dom, ins, at: [ew(z3.Not, ins[0])])
SEMANTICS["isnan"] = OpSemantics(lambda dom, ins, at: [ew(dom.isnan, ins[0])])  # never, over R


def _clip(dom: Domain, ins: list[Any], at: dict[str, Any]) -> list[Tensor]:
    out = ins[0]
    if len(ins) > 1 and ins[1] is not None:
        out = ew(dom.max, out, ins[1])
    if len(ins) > 2 and ins[2] is not None:
        out = ew(dom.min, out, ins[2])
    return [out]


SEMANTICS["clip"] = OpSemantics(_clip)


def _cast(dom: Domain, ins: list[Any], at: dict[str, Any]) -> list[Tensor]:
    if at["to"] != "float32":  # only float32 tensors are modelled
        raise KeyError(f"cast to {at['to']}")
    return [ins[0]]


SEMANTICS["cast"] = OpSemantics(_cast)


def _ew(dom: Domain, ins: list[Any], at: dict[str, Any]) -> list[Tensor]:
    from satura.engine.ops.fused import _resolve

    def node(expr: Any, xs: Sequence[Any]) -> Any:
        if expr[0] == "in":
            return xs[int(expr[1])]
        if expr[0] == "const":
            return dom.const(expr[1])
        if expr[0].startswith("$E_"):  # an expression variable of the rule: uninterpreted
            return dom.uf(expr[0][1:], *[node(c, xs) for c in expr[1:]])
        info, attrs = _resolve(expr[0])
        name = expr[0] if expr[0] == "gelu_tanh" else info.name
        return scalar_op(dom, name, [node(c, xs) for c in expr[1:]], attrs)

    arrays = [a for a in ins if a is not None]
    return [ew(lambda *xs: node(at["expr"], xs), *arrays)]


SEMANTICS["ew"] = OpSemantics(_ew, ("exp", "tanh", "erf", "sqrt", "log"))

# -- linear algebra ------------------------------------------------------------------------------
SEMANTICS["matmul"] = OpSemantics(lambda dom, ins, at: [matmul(dom, ins[0], ins[1])])


def _linear(dom: Domain, ins: list[Any], at: dict[str, Any]) -> list[Tensor]:
    out = matmul(dom, ins[0], ins[1])
    if len(ins) > 2 and ins[2] is not None:
        out = ew(dom.add, out, ins[2])
    out = ew(lambda v: activation(dom, v, at["act"]), out)
    if len(ins) > 3 and ins[3] is not None:
        out = ew(dom.add, out, ins[3])
    return [out]


SEMANTICS["linear"] = OpSemantics(_linear, ("exp", "tanh", "erf"))


def _gemm(dom: Domain, ins: list[Any], at: dict[str, Any]) -> list[Tensor]:
    a = ins[0].T if at["trans_a"] else ins[0]
    b = ins[1].T if at["trans_b"] else ins[1]
    out = matmul(dom, a, b)
    if at["alpha"] != 1.0:
        out = ew(lambda v: dom.mul(dom.const(at["alpha"]), v), out)
    if len(ins) > 2 and ins[2] is not None:
        c = ins[2] if at["beta"] == 1.0 else ew(lambda v: dom.mul(dom.const(at["beta"]), v), ins[2])
        out = ew(dom.add, out, c)
    return [out]


SEMANTICS["gemm"] = OpSemantics(_gemm)

# -- data movement (numpy indexing on the object arrays) -----------------------------------------
SEMANTICS["transpose"] = OpSemantics(lambda dom, ins, at: [np.transpose(ins[0], at["perm"])])
SEMANTICS["reshape"] = OpSemantics(
    lambda dom, ins, at: [np.reshape(ins[0], tuple(int(v) for v in at["shape"]))]
)
SEMANTICS["expand"] = OpSemantics(
    lambda dom, ins, at: [
        np.array(
            np.broadcast_to(
                ins[0], np.broadcast_shapes(ins[0].shape, tuple(int(v) for v in at["shape"]))
            )
        )
    ]
)
SEMANTICS["concat"] = OpSemantics(lambda dom, ins, at: [np.concatenate(list(ins), axis=at["axis"])])


def _split(dom: Domain, ins: list[Any], at: dict[str, Any]) -> list[Tensor]:
    cuts = np.cumsum([int(s) for s in at["sizes"]])[:-1]
    return list(np.split(ins[0], cuts, axis=at["axis"]))


SEMANTICS["split"] = OpSemantics(_split)


def _slice(dom: Domain, ins: list[Any], at: dict[str, Any]) -> list[Tensor]:
    from satura.engine.ops.shape import _slice_params, slice_bounds

    x = ins[0]
    idx: list[slice] = [slice(None)] * x.ndim
    for axis, s, e, st in _slice_params(x.ndim, at):
        b, f, _ = slice_bounds(IntDims(), x.shape[axis], int(s), int(e), st)
        idx[axis] = slice(b, None if f < 0 else f, st)
    return [x[tuple(idx)]]


SEMANTICS["slice"] = OpSemantics(_slice)


def _reduction(kind: str) -> OpSemantics:
    def fn(dom: Domain, ins: list[Any], at: dict[str, Any]) -> list[Tensor]:
        x = ins[0]
        axes = reduce_axes(x.ndim, at["axes"])

        def f(items: list[Any]) -> Any:
            if kind == "sum":
                return total(dom, items)
            if kind == "mean":
                return dom.div(total(dom, items), dom.const(float(len(items))))
            if kind == "prod":
                acc = items[0]
                for v in items[1:]:
                    acc = dom.mul(acc, v)
                return acc
            acc = items[0]
            for v in items[1:]:
                acc = dom.max(acc, v) if kind == "max" else dom.min(acc, v)
            return acc

        return [reduce_along(x, axes, bool(at["keepdims"]), f)]

    return OpSemantics(fn)


for _n in ("sum", "mean", "max", "min", "prod"):
    SEMANTICS[f"reduce_{_n}"] = _reduction(_n)


# -- softmax and attention ------------------------------------------------------------------------
def softmax(dom: Domain, x: Tensor, axis: int) -> Tensor:
    """exp(x - max) / sum(exp(x - max)) along ``axis`` (the reference's stable form)."""
    axis = normalize_axis(axis, x.ndim)
    mx = reduce_along(x, [axis], True, lambda it: _fold(dom.max, it))
    e = ew(lambda a, m: dom.uf("exp", dom.sub(a, m)), x, mx)
    s = reduce_along(e, [axis], True, lambda it: total(dom, it))
    return ew(dom.div, e, s)


def _fold(f: Callable[[Any, Any], Any], items: list[Any]) -> Any:
    acc = items[0]
    for v in items[1:]:
        acc = f(acc, v)
    return acc


SEMANTICS["softmax"] = OpSemantics(
    lambda dom, ins, at: [softmax(dom, ins[0], at["axis"])], ("exp",)
)


def _attention(dom: Domain, ins: list[Any], at: dict[str, Any]) -> list[Tensor]:
    q, k, v = ins[0], ins[1], ins[2]
    rep = q.shape[-3] // k.shape[-3]
    if rep > 1:
        k = np.repeat(k, rep, axis=-3)
        v = np.repeat(v, rep, axis=-3)
    s = ew(lambda a: dom.mul(a, dom.const(at["scale"])), matmul(dom, q, np.swapaxes(k, -1, -2)))
    if len(ins) > 3 and ins[3] is not None:
        m = np.asarray(ins[3], dtype=object)
        if m.size and z3.is_bool(m.flat[0]):
            fill = at["mask_fill"]
            if isinstance(fill, float) and math.isinf(fill):
                raise KeyError("attention(mask_fill=-inf)")  # no real number stands for it
            s = ew(lambda keep, a: dom.ite(keep, a, dom.const(fill)), m, s)
        else:
            s = ew(dom.add, s, m)
    if at["causal"]:
        return [matmul(dom, _causal_softmax(dom, s), v)]
    return [matmul(dom, softmax(dom, s, -1), v)]


def _causal_softmax(dom: Domain, s: Tensor) -> Tensor:
    """softmax over the last axis of [..., S, T] where query i sees keys j <= i + T - S; the
    other probabilities are 0. A row that sees no key is undefined (the reference gives NaN)."""
    sq, sk = s.shape[-2], s.shape[-1]
    if sq > sk:
        raise ValueError("causal attention with more queries than keys leaves a row empty")
    out = np.empty(s.shape, dtype=object)
    zero = dom.const(0.0)
    for idx in np.ndindex(*s.shape[:-1]):
        seen = idx[-1] + sk - sq + 1
        row = softmax(dom, np.asarray(s[idx][:seen], dtype=object), -1)
        out[idx] = np.concatenate([row, np.full(sk - seen, zero, dtype=object)])
    return out


SEMANTICS["attention"] = OpSemantics(_attention, ("exp",))


def _mean(dom: Domain, items: list[Any]) -> Any:
    return dom.div(total(dom, items), dom.const(float(len(items))))


def _norm(dom: Domain, ins: list[Any], at: dict[str, Any], kind: str) -> list[Tensor]:
    """layer_norm / rms_norm as the references write them (statistics over axis..end)."""
    x = ins[0]
    axes = list(range(normalize_axis(at["axis"], x.ndim), x.ndim))
    eps = dom.const(at["epsilon"])
    if kind == "layer":
        mean = reduce_along(x, axes, True, lambda it: _mean(dom, it))
        x = ew(dom.sub, x, mean)
    var = reduce_along(ew(lambda a: dom.mul(a, a), x), axes, True, lambda it: _mean(dom, it))
    out = ew(lambda a, v: dom.div(a, dom.uf("sqrt", dom.add(v, eps))), x, var)
    if len(ins) > 1 and ins[1] is not None:
        out = ew(dom.mul, out, ins[1])
    if len(ins) > 2 and ins[2] is not None:
        out = ew(dom.add, out, ins[2])
    return [out]


SEMANTICS["layer_norm"] = OpSemantics(lambda dom, ins, at: _norm(dom, ins, at, "layer"), ("sqrt",))
SEMANTICS["rms_norm"] = OpSemantics(lambda dom, ins, at: _norm(dom, ins, at, "rms"), ("sqrt",))


def _batch_norm(dom: Domain, ins: list[Any], at: dict[str, Any]) -> list[Tensor]:
    """(x - mean[c]) / sqrt(var[c] + eps) · scale[c] + bias[c], channels on axis 1 (the
    reference's order of operations)."""
    x, scale, bias, mean, var = ins
    per_channel = (1, -1) + (1,) * (x.ndim - 2)
    s, b, m, v = (
        np.asarray(p, dtype=object).reshape(per_channel) for p in (scale, bias, mean, var)
    )
    eps = dom.const(at["epsilon"])
    out = ew(lambda a, mu, va: dom.div(dom.sub(a, mu), dom.uf("sqrt", dom.add(va, eps))), x, m, v)
    return [ew(lambda a, g, c: dom.add(dom.mul(a, g), c), out, s, b)]


SEMANTICS["batch_norm"] = OpSemantics(_batch_norm, ("sqrt",))


def _conv(dom: Domain, ins: list[Any], at: dict[str, Any]) -> list[Tensor]:
    """N-d grouped convolution, NCHW, zero padding (as the reference pads), then bias and act."""
    import itertools

    from satura.engine.ops.nn import _window_attrs

    x, w = ins[0], ins[1]
    nsp = x.ndim - 2
    strides, pads, dil = _window_attrs(at, nsp)
    g = at["group"]
    n, c = x.shape[:2]
    m, cg = w.shape[:2]
    ks = w.shape[2:]
    zero = dom.const(0.0)
    xp = np.empty(
        (n, c, *[x.shape[2 + i] + pads[i] + pads[nsp + i] for i in range(nsp)]), dtype=object
    )
    xp[...] = zero
    xp[
        (slice(None), slice(None), *[slice(pads[i], pads[i] + x.shape[2 + i]) for i in range(nsp)])
    ] = x
    out_sp = [(xp.shape[2 + i] - dil[i] * (ks[i] - 1) - 1) // strides[i] + 1 for i in range(nsp)]
    out = np.empty((n, m, *out_sp), dtype=object)
    if m % g or c % g:  # the reference cannot split the channels into groups either
        raise ValueError(f"conv: channels {c} -> {m} do not divide into {g} groups")
    per_group = m // g
    for b, oc, *pos in itertools.product(range(n), range(m), *[range(o) for o in out_sp]):
        grp = oc // per_group
        terms = []
        for ic in range(cg):
            for k in itertools.product(*[range(kk) for kk in ks]):
                at_x = tuple(pos[i] * strides[i] + k[i] * dil[i] for i in range(nsp))
                terms.append(dom.mul(xp[(b, grp * cg + ic, *at_x)], w[(oc, ic, *k)]))
        out[(b, oc, *pos)] = total(dom, terms)
    if len(ins) > 2 and ins[2] is not None:
        bias = ins[2].reshape((1, m) + (1,) * nsp)
        out = ew(dom.add, out, bias)
    return [ew(lambda v: activation(dom, v, at["act"]), out)]


SEMANTICS["conv"] = OpSemantics(_conv, ("exp", "tanh", "erf"))


def has_semantics(op: str) -> bool:
    return op in SEMANTICS


def semantics_source(op: str) -> str:
    """Text that identifies an op's semantics (for cache keys)."""
    import inspect

    sem = SEMANTICS.get(op)
    if sem is None:
        return "none"
    try:
        return inspect.getsource(sem.fn)
    except (OSError, TypeError):
        return repr(sem)
