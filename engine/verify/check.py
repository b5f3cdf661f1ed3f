"""The checks of one rule: shapes for every size, values for bounded sizes, fp32 bit-equality.

Each check returns a :class:`Outcome`; :mod:`satura.engine.verify.api` turns them into verdicts.
Counterexamples are re-run with the ops' numpy references (:func:`run_sides`) before they are
reported; ``confirmed`` says whether numpy agrees that the sides differ.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import z3
from satura.engine.ops import get_op, run_reference
from satura.engine.rulelang import Call, Lit, Rule, Star, Var
from satura.engine.verify.instance import (
    SHAPE_FAILS,
    Instance,
    Unsupported,
    concrete_instance,
)
from satura.engine.verify.semantics import (
    SEMANTICS,
    Domain,
    FP32Domain,
    RealDomain,
    scalar,
)

VALUE_CASES = 400  # concrete shape cases per rule (spread over the rank/attribute cases)
# At most this many concrete shape cases in a rule's value check: whole groups of rank/attribute
# cases of one total rank, smallest first (the smallest group always runs in full). A count, not
# seconds, so the coverage, and the verdict's reason, are the same on any machine under any load.
VALUE_CASE_BUDGET = 1000
PY_ENUM_LIMIT = 256  # enumerate dims in Python (not Z3) below this many candidates
CONFIRM_TRIALS = 200  # numpy trials when Z3's counterexample is not confirmed
RANDOM_TRIALS = 6  # numpy trials per concrete case before Z3 is asked
FIRST_TRIALS = 32  # ... on each of the first FIRST_CASES (smallest) cases, where numpy is cheap
FIRST_CASES = 2


class NotEvaluable(Exception):
    """An op's semantics (like numpy) rejects a case its shape function accepted."""


class GaveUp(Exception):
    """Z3 timed out while choosing a case's dimension assignments. Never treated as "no more
    assignments": that would make the coverage depend on the machine's speed."""


@dataclass
class Outcome:
    status: str  # proved | refuted | unknown
    check: str  # shape | value | fp32 | approx
    reason: str = ""
    counterexample: dict[str, Any] | None = None
    detail: dict[str, Any] = field(default_factory=dict)


# -- walking both sides ---------------------------------------------------------------------------
def run_side(
    rule: Rule,
    inst: Instance,
    side: str,
    leaf: Callable[[str], Any],
    lit: Callable[[Lit], Any],
    call: Callable[[str, list[Any], dict[str, Any]], list[Any]],
) -> list[list[Any]]:
    """Evaluate every root of one side ("L" or "R"); one list of outputs per root."""

    def go(t: Any, path: tuple[Any, ...]) -> list[Any]:
        if isinstance(t, Var):
            return [leaf(t.name)]
        if isinstance(t, Lit):
            return [lit(t)]
        assert isinstance(t, Call)
        ins: list[Any] = []
        for j, a in enumerate(t.args):
            if isinstance(a, Star):
                ins += [leaf(f"{a.name}{k}") for k in range(len(inst.env[a.name]))]
            else:
                ins += go(a, (*path, j))
        return call(t.op, ins, inst.attrs[path])

    roots = rule.lhs if side == "L" else rule.rhs
    return [go(t, (side, i)) for i, t in enumerate(roots)]


def numpy_side(
    rule: Rule, inst: Instance, side: str, inputs: dict[str, np.ndarray], dtype: Any
) -> list[list[Any]]:
    """One side with the numpy references."""
    subs = [(z3.Real(n), z3.RealVal(float(np.asarray(inputs[n]).flat[0]))) for n in inst.scalars]
    subs += [
        (z3.Real(f"value({v})"), z3.RealVal(float(np.asarray(inputs[v]).flat[0])))
        for v in inst.value_vars
    ]

    def conv(v: Any) -> Any:
        if isinstance(v, z3.ExprRef):
            r = z3.simplify(z3.substitute(v, *subs))
            return (
                float(r.as_fraction())
                if z3.is_rational_value(r)
                else float(r.approx(20).as_fraction())
            )
        return v

    def call(op: str, ins: list[Any], attrs: dict[str, Any]) -> list[Any]:
        plain = {k: conv(v) for k, v in attrs.items()}
        if op == "ew":  # an opaque expression runs as a subtraction chain (order-sensitive)
            plain["expr"] = _concrete_expr(plain["expr"])
        return [np.asarray(o) for o in run_reference(op, ins, plain)]

    with np.errstate(all="ignore"):
        return run_side(
            rule, inst, side, lambda n: inputs[n], lambda t: np.asarray(t.value, dtype=dtype), call
        )


def _concrete_expr(e: Any) -> Any:
    if not isinstance(e, tuple) or not e or e[0] in ("in", "const"):
        return e
    kids = [_concrete_expr(c) for c in e[1:]]
    if isinstance(e[0], str) and e[0].startswith("$E_"):
        out = kids[-1] if kids else ("const", 0.25)
        for k in reversed(kids[:-1]):
            out = ("sub", k, ("mul", out, ("const", 0.75)))
        return out
    return (e[0], *kids)


def numpy_sides(
    rule: Rule, inst: Instance, inputs: dict[str, np.ndarray], dtype: Any
) -> tuple[list, list]:
    """Both sides with the numpy references."""
    return (numpy_side(rule, inst, "L", inputs, dtype), numpy_side(rule, inst, "R", inputs, dtype))


def symbolic_sides(rule: Rule, inst: Instance, dom: Domain) -> tuple[list, list, dict]:
    """Both sides as object arrays of Z3 terms; also returns the input arrays by leaf."""
    inputs: dict[str, np.ndarray] = {}
    for name in inst.leaves:
        shape = tuple(int(s) for s in inst.env[name].shape)
        arr = np.empty(shape, dtype=object)
        mk = z3.Bool if inst.env[name].dtype == "bool" else dom.var
        for idx in np.ndindex(*shape):
            arr[idx] = mk(f"{name}[{','.join(map(str, idx))}]")
        inputs[name] = arr

    terms: dict[str, Any] = {}
    for n in inst.scalars:
        terms[n] = dom.var(n)
        inputs[n] = scalar(terms[n])
    for v in inst.value_vars:
        terms[f"value({v})"] = np.asarray(inputs[v]).flat[0]

    def conv(v: Any) -> Any:
        if not isinstance(v, z3.ExprRef):
            return v
        if isinstance(dom, RealDomain):
            return z3.substitute(v, *[(z3.Real(n), t) for n, t in terms.items()])
        if z3.is_const(v) and str(v) in terms:
            return terms[str(v)]
        real = z3.substitute(v, *[(z3.Real(n), z3.fpToReal(t)) for n, t in terms.items()])
        return z3.fpRealToFP(z3.RNE(), real, z3.Float32())

    def call(op: str, ins: list[Any], attrs: dict[str, Any]) -> list[Any]:
        sem = SEMANTICS.get(op)
        if sem is None:
            raise Unsupported(f"op '{op}' has no value semantics")
        try:
            outs = sem.fn(dom, ins, {k: conv(v) for k, v in attrs.items()})
        except KeyError as e:
            raise Unsupported(f"op '{op}' has no value semantics for {e}") from None
        except (ValueError, IndexError, ZeroDivisionError, np.exceptions.AxisError) as e:
            raise NotEvaluable(f"{op}: {e}") from None
        except z3.Z3Exception as e:  # an operand of the wrong sort: a float fed to 'not'
            raise NotEvaluable(f"{op}: {e.value if hasattr(e, 'value') else e}") from None
        return [o if isinstance(o, np.ndarray) else scalar(o) for o in outs]

    def lit(t: Lit) -> Any:
        return scalar(dom.named(t.name, t.value) if getattr(t, "name", "") else dom.const(t.value))

    try:
        lhs = run_side(rule, inst, "L", lambda n: inputs[n], lit, call)
    except NotEvaluable as e:
        raise NotEvaluable(f"pattern: {e}") from None
    pattern_defined = list(dom.defined)
    try:
        rhs = run_side(rule, inst, "R", lambda n: inputs[n], lit, call)
    except NotEvaluable as e:
        raise NotEvaluable(f"replacement: {e}") from None
    dom.defined = pattern_defined
    return lhs, rhs, inputs


# -- shapes ---------------------------------------------------------------------------------------
def _dims_ge1(inst: Instance) -> list[Any]:
    return [z3.Int(n) >= 1 for n in dict.fromkeys(inst.dim_names)]


def hypothesis(inst: Instance) -> list[Any]:
    """Dimensions >= 1, the pattern well-formed, the guard true."""
    hyp = _dims_ge1(inst) + [
        c if not isinstance(c, bool) else z3.BoolVal(c) for c in inst.lhs_conds
    ]
    if inst.guard is not True:
        g = inst.guard
        hyp.append(g if isinstance(g, z3.BoolRef) else z3.BoolVal(bool(g)))
    if inst.assume_rhs:
        hyp += [c if not isinstance(c, bool) else z3.BoolVal(c) for c in inst.rhs_conds]
    return hyp


def _dims_of(model: z3.ModelRef, inst: Instance) -> dict[str, int]:
    out = {}
    for n in dict.fromkeys(inst.dim_names):
        v = model.eval(z3.Int(n), model_completion=True)
        out[n] = v.as_long()
    return out


def _shape_solver() -> z3.Solver:
    """Dims are integers under products (reshape's element counts): solving the equations the
    guard gives (s1 == shape(k) + ...) first leaves Z3's nonlinear core far less to do."""
    return z3.Then("simplify", "solve-eqs", "smt").solver()


def check_shape_case(rule: Rule, inst: Instance, timeout_ms: int) -> Outcome | None:
    """None when the case holds or is vacuous; an Outcome (refuted/unknown) otherwise."""
    s = _shape_solver()
    s.set("timeout", timeout_ms)
    s.add(*hypothesis(inst))
    r = s.check()
    if r == z3.unsat:
        return None  # the pattern never matches in this case
    if r == z3.unknown:
        return Outcome("unknown", "shape", f"{inst.describe()}: Z3 gave up on the pattern")
    if inst.rhs_error is not None and inst.assume_rhs:
        return None  # the rule does not apply where its replacement is ill-formed
    if inst.rhs_error is not None:
        return _shape_refuted(
            rule, inst, s.model(), f"replacement is ill-formed ({inst.rhs_error})"
        )
    goal: list[Any] = [c if not isinstance(c, bool) else z3.BoolVal(c) for c in inst.rhs_conds]
    for i, (lt, rt) in enumerate(zip(inst.lhs_types, inst.rhs_types, strict=True)):
        if len(lt) != len(rt):
            return _shape_refuted(
                rule, inst, s.model(), f"root {i}: {len(lt)} outputs vs {len(rt)}"
            )
        for (ls, ld), (rs, rd) in zip(lt, rt, strict=True):
            if ld != rd:
                return _shape_refuted(rule, inst, s.model(), f"dtype {ld} becomes {rd}")
            if len(ls) != len(rs):
                return _shape_refuted(rule, inst, s.model(), f"rank {len(ls)} becomes {len(rs)}")
            goal += [
                a == b if not (isinstance(a, int) and isinstance(b, int)) else z3.BoolVal(a == b)
                for a, b in zip(ls, rs, strict=True)
            ]
    s.add(z3.Not(z3.And(*goal)))
    r = s.check()
    if r == z3.unsat:
        return None
    if r == z3.unknown:
        return Outcome("unknown", "shape", f"{inst.describe()}: Z3 gave up ({s.reason_unknown()})")
    return _shape_refuted(rule, inst, s.model(), "replacement's shape or well-formedness differs")


class _DimsModel:
    """A stand-in for a Z3 model that holds concrete dimensions."""

    def __init__(self, dims: dict[str, int]) -> None:
        self.dims = dims

    def eval(self, t: Any, model_completion: bool = True) -> Any:
        return z3.IntVal(self.dims.get(str(t), 1))


def _dims_model(dims: dict[str, int]) -> Any:
    return _DimsModel(dims)


def _shape_refuted(rule: Rule, inst: Instance, model: z3.ModelRef, why: str) -> Outcome:
    dims = _dims_of(model, inst)
    cx: dict[str, Any] = {"case": inst.describe(), "dims": dims}
    try:
        ci = concrete_instance(rule, inst.choices, dims)
        rng = np.random.default_rng(0)
        inputs = {
            n: rng.standard_normal(tuple(ci.env[n].shape)).astype(np.float32) for n in ci.leaves
        }
        cx["inputs"] = inputs
        lhs = numpy_side(rule, ci, "L", inputs, np.float32)
        cx["lhs_shapes"] = [[o.shape for o in r] for r in lhs]
        if ci.rhs_error is not None:
            # The registry's shape function rejects the replacement on these concrete ints.
            cx["rhs_error"] = f"registry: {ci.rhs_error}"
            cx["confirmed"] = True
            return Outcome("refuted", "shape", f"{inst.describe()}: {why}", cx)
        try:
            rhs = numpy_side(rule, ci, "R", inputs, np.float32)
            cx["rhs_shapes"] = [[o.shape for o in r] for r in rhs]
            cx["confirmed"] = cx["lhs_shapes"] != cx["rhs_shapes"]
            if not cx["confirmed"]:
                cx["note"] = "numpy gives both sides the same shape here"
        except Exception as e:  # numpy refusing the replacement is the confirmation
            cx["rhs_error"] = f"numpy: {type(e).__name__}: {e}"
            cx["confirmed"] = True
    except Exception as e:
        cx["confirmed"] = False
        cx["note"] = f"numpy could not run the pattern on these dims: {type(e).__name__}: {e}"
    return Outcome("refuted", "shape", f"{inst.describe()}: {why}", cx)


# -- values ---------------------------------------------------------------------------------------
def _py_dims(
    rule: Rule, inst: Instance, names: list[str], b: int, cap: int
) -> list[dict[str, int]]:
    out = []
    for vals in itertools.product(range(1, b + 1), repeat=len(names)):
        dims = dict(zip(names, vals, strict=True))
        try:
            ci = concrete_instance(rule, inst.choices, dims)
        except SHAPE_FAILS:
            continue
        if ci.rhs_error is None:
            out.append(dims)
            if len(out) > cap:
                break
    return out


def _samples(
    rule: Rule,
    inst: Instance,
    bound: int,
    rng: np.random.Generator,
    k: int = 2,
    timeout_ms: int = 20000,
) -> list[dict[str, int]]:
    """A few random valid assignments at the full bound (beyond the exhaustive ones): each dim in
    a random order gets a random target size, or where the case's constraints rule that out the
    smallest size they allow. Every dim is fixed explicitly, so the samples follow from the rng
    and from Z3's sat/unsat answers alone, never from which model Z3 happens to return (that can
    change with what the process did before). Raises :class:`GaveUp` when Z3 times out (a
    timeout must not pick other samples on a slower machine)."""
    names = list(dict.fromkeys(inst.dim_names))
    out: list[dict[str, int]] = []
    for _ in range(k):
        s = z3.Solver()
        s.set("timeout", timeout_ms)
        s.add(*hypothesis(inst), *[z3.And(z3.Int(n) >= 1, z3.Int(n) <= bound) for n in names])
        s.push()  # from the first check on, Z3's incremental solver (the others cost more here)
        if not _sat(s, f"sampling dims <= {bound}"):
            break  # no assignment at all
        fixed: dict[str, int] = {}
        for n in rng.permutation(names) if names else []:
            target = int(rng.integers(1, bound + 1))
            tries = [target] + [v for v in range(1, bound + 1) if v != target]
            for t, v in enumerate(tries):
                s.push()
                s.add(z3.Int(str(n)) == v)
                # The last size left needs no check: the dims fixed so far have a solution.
                if t == len(tries) - 1 or _sat(s, f"sampling dims <= {bound}"):
                    fixed[str(n)] = v
                    break
                s.pop()
        dims = {n: fixed[n] for n in names}
        try:
            ci = concrete_instance(rule, inst.choices, dims)
        except SHAPE_FAILS:
            continue
        if ci.rhs_error is None and dims not in out:
            out.append(dims)
    return out


def _sat(s: z3.Solver, what: str) -> bool:
    r = s.check()
    if r == z3.unknown:
        raise GaveUp(f"Z3 gave up {what} ({s.reason_unknown()})")
    return r == z3.sat


def concrete_dims(
    rule: Rule, inst: Instance, bound: int, cap: int, timeout_ms: int
) -> tuple[list[dict[str, int]], int]:
    """Dimension assignments (every dim <= b) of a case, with the largest b <= bound that gives
    at most ``cap`` of them. Returns (assignments, b); b is negative (-b) when even the smallest
    bound with any assignment has more than ``cap``: the first ``cap`` are returned, a sample.
    A complete list comes in a fixed order; a sample is the first ``cap`` Z3 finds (the count is
    fixed; which ones, Z3's models decide). Raises :class:`GaveUp` when Z3 times out listing
    them."""
    names = list(dict.fromkeys(inst.dim_names))
    prev: tuple[list[dict[str, int]], int] = ([], 0)
    for b in range(bound, 0, -1):
        if b ** len(names) <= PY_ENUM_LIMIT:
            out = _py_dims(rule, inst, names, b, cap)
        else:
            out = _z3_dims(inst, names, b, cap, timeout_ms)
        if not out:
            break  # smaller bounds have no assignment either
        if len(out) <= cap:
            return out, b
        prev = (out[:cap], -b)
    return prev


def _z3_dims(
    inst: Instance, names: list[str], b: int, cap: int, timeout_ms: int
) -> list[dict[str, int]]:
    s = z3.Solver()
    s.set("timeout", timeout_ms)
    s.add(*hypothesis(inst))
    s.add(*[z3.Int(n) <= b for n in names])
    out: list[dict[str, int]] = []
    while len(out) <= cap and _sat(s, f"listing dims <= {b}"):
        dims = _dims_of(s.model(), inst)
        out.append(dims)
        if not names:
            break
        s.add(z3.Or(*[z3.Int(n) != v for n, v in dims.items()]))
    # All of them (at most cap): in a fixed order, not the order Z3 found them in.
    return out if len(out) > cap else sorted(out, key=lambda d: [d[n] for n in names])


def _flat(sides: list[list[np.ndarray]]) -> list[Any]:
    return [e for root in sides for arr in root for e in np.asarray(arr, dtype=object).flat]


def _shapes(sides: list[list[np.ndarray]]) -> list[Any]:
    return [[np.shape(a) for a in root] for root in sides]


def random_inputs(inst: Instance, rng: np.random.Generator, fp32: bool) -> dict[str, np.ndarray]:
    """Inputs mixing normal values, small integers (ties, zeros) and, for fp32, special values."""
    out = {}
    special = np.array(
        [0.0, -0.0, 1.0, -1.0, 0.5, 3.0, 1e-40, 3e38, np.inf, -np.inf, np.nan], dtype=np.float32
    )
    for n in inst.leaves:
        shape = tuple(int(s) for s in inst.env[n].shape)
        if inst.env[n].dtype == "bool":
            out[n] = rng.random(shape) < 0.6
            continue
        kind = rng.integers(0, 3)
        if kind == 0:
            a = rng.standard_normal(shape) * 10 ** rng.uniform(-2, 3)
        elif kind == 1:
            a = rng.integers(-3, 4, size=shape).astype(np.float64)
        else:
            a = rng.standard_normal(shape)
            if fp32:
                mask = rng.random(shape) < 0.4
                a = np.where(mask, rng.choice(special, size=shape), a)
        # float32 values even for the real check: the tensors are float32, and a cast must
        # not see digits a float32 cannot hold.
        out[n] = np.asarray(a, dtype=np.float32).astype(np.float32 if fp32 else np.float64)
    for n in inst.scalars:
        v = (
            rng.choice([1e-5, 0.5, 2.0, -1.5, 0.125])
            if rng.random() < 0.5
            else rng.standard_normal()
        )
        out[n] = np.asarray(v, dtype=np.float32 if fp32 else np.float64)
    return out


def sides_differ(lhs: list, rhs: list, mode: str, tol: float | None = None) -> bool:
    """Do numpy results differ? mode: 'bits' (fp32, NaN equal), 'real' (float64, tight
    tolerance, where the pattern ``lhs`` is finite), 'approx' (|l - r| <= tol·(|l| + 1))."""
    for lr, rr in zip(lhs, rhs, strict=True):
        for a, b in zip(lr, rr, strict=True):
            a, b = np.asarray(a), np.asarray(b)
            if a.shape != b.shape:
                return True
            if a.dtype == np.bool_ or b.dtype == np.bool_:
                if not np.array_equal(a, b):
                    return True
                continue
            if mode == "bits":
                a32, b32 = a.astype(np.float32), b.astype(np.float32)
                same = (a32.view(np.uint32) == b32.view(np.uint32)) | (
                    np.isnan(a32) & np.isnan(b32)
                )
                if not same.all():
                    return True
            elif mode == "real":
                # Where the pattern is not finite in float64 it divided by zero or left a
                # function's domain: undefined over the reals, so nothing to compare there.
                keep = np.isfinite(a)
                if not np.allclose(
                    a[keep], np.broadcast_to(b, a.shape)[keep], rtol=1e-9, atol=1e-9, equal_nan=True
                ):
                    return True
            else:
                assert tol is not None
                with np.errstate(all="ignore"):
                    ok = (
                        (np.abs(a - b) <= tol * (np.abs(a) + 1))
                        | (np.isnan(a) & np.isnan(b))
                        | (a == b)
                    )
                if not ok.all():
                    return True
    return False


def _value_cx(
    rule: Rule,
    inst: Instance,
    inputs: dict[str, np.ndarray],
    mode: str,
    tol: float | None,
    source: str,
) -> dict[str, Any]:
    dtype = np.float32 if mode == "bits" else np.float64
    cx: dict[str, Any] = {
        "case": inst.describe(),
        "dims": {n: int(v) for n, v in _concrete_dims(inst).items()},
        "inputs": inputs,
        "found_by": source,
    }
    try:
        lhs = numpy_side(rule, inst, "L", inputs, dtype)
        cx["lhs"] = lhs
        try:
            rhs = numpy_side(rule, inst, "R", inputs, dtype)
        except Exception as e:  # numpy cannot run the replacement where the pattern runs
            cx["rhs_error"] = f"numpy: {type(e).__name__}: {e}"
            cx["confirmed"] = True
            return cx
        cx["rhs"] = rhs
        cx["confirmed"] = sides_differ(lhs, rhs, mode, tol)
        if not cx["confirmed"]:
            cx["note"] = (
                "numpy does not confirm (uninterpreted functions or a rounding "
                "order numpy does not share)"
            )
    except Exception as e:
        cx["confirmed"] = False
        cx["note"] = f"numpy failed: {type(e).__name__}: {e}"
    return cx


def _concrete_dims(inst: Instance) -> dict[str, Any]:
    out = {}
    for n in inst.leaves:
        for i, d in enumerate(inst.env[n].shape):
            out[f"{n}.{i}"] = d
    return out


def _model_inputs(
    model: z3.ModelRef, inputs: dict[str, np.ndarray], fp32: bool
) -> dict[str, np.ndarray]:
    out = {}
    for n, arr in inputs.items():
        if arr.size and z3.is_bool(arr.flat[0]):
            out[n] = np.array(
                [z3.is_true(model.eval(b, model_completion=True)) for b in arr.flat], dtype=bool
            ).reshape(arr.shape)
            continue
        vals = np.zeros(arr.shape, dtype=np.float32 if fp32 else np.float64)
        for idx in np.ndindex(*arr.shape):
            if fp32:
                bv = model.eval(z3.fpToIEEEBV(arr[idx]), model_completion=True)
                vals[idx] = np.array([bv.as_long()], dtype=np.uint32).view(np.float32)[0]
            else:
                v = model.eval(arr[idx], model_completion=True)
                vals[idx] = (
                    float(v.as_fraction())
                    if z3.is_rational_value(v)
                    else float(v.approx(20).as_fraction())
                )
        out[n] = vals
    return out


def _canonical(a: Any, b: Any) -> str:
    """The query ``a == b`` with its free constants renamed in order of appearance: elements of
    an elementwise or matmul output give the same key, so one proof serves them all."""
    seen: dict[int, Any] = {}
    todo = [a, b]
    while todo:
        t = todo.pop()
        if z3.is_const(t) and t.decl().kind() == z3.Z3_OP_UNINTERPRETED:
            seen.setdefault(t.get_id(), t)
        elif z3.is_app(t):
            todo.extend(reversed(t.children()))
    subs = [(t, z3.Const(f"v{i}", t.sort())) for i, t in enumerate(seen.values())]
    eq = a == b
    return z3.substitute(eq, *subs).sexpr() if subs else eq.sexpr()


def prove_equal(
    lhs: list, rhs: list, dom: Domain, timeout_ms: int, proven: set[str] | None = None
) -> tuple[str, Any]:
    """('proved', None) | ('refuted', model) | ('unknown', reason) for elementwise equality.
    ``proven`` caches canonical queries already proved (shared across the cases of a rule)."""
    if _shapes(lhs) != _shapes(rhs):
        return "refuted", None
    pairs = [(a, b) for a, b in zip(_flat(lhs), _flat(rhs), strict=True) if not a.eq(b)]
    if not pairs:
        return "proved", None
    if isinstance(dom, RealDomain):
        rest = []
        for a, b in pairs:
            if z3.is_arith(a) and z3.is_arith(b):
                d = z3.simplify(a - b, som=True)
                if z3.is_rational_value(d) and d.as_fraction() == 0:
                    continue
            rest.append((a, b))
        pairs = rest
        if not pairs:
            return "proved", None
    proven = set() if proven is None else proven
    groups: dict[str, tuple[Any, Any]] = {}
    for a, b in pairs:
        key = _canonical(a, b)
        if key not in proven:
            groups.setdefault(key, (a, b))
    base = [*dom.axioms(), *dom.defined]
    for key, (a, b) in groups.items():
        if z3.is_true(z3.simplify(a == b)):
            proven.add(key)
            continue
        s = z3.Solver()
        s.set("timeout", timeout_ms)
        s.add(*base)
        s.add(z3.Not(a == b))
        r = s.check()
        if r == z3.sat:
            return "refuted", s.model()
        if r == z3.unknown:
            return "unknown", s.reason_unknown()
        proven.add(key)
    return "proved", None


def total_rank(inst: Instance) -> int:
    """Number of dimension variables of a case: its size in the value check's order."""
    return len(dict.fromkeys(inst.dim_names))


@dataclass
class _Chosen:
    """The value check's cases: (rank/attribute case, its concrete cases), smallest first."""

    work: list[tuple[Instance, list[Instance]]] = field(default_factory=list)
    n_cases: int = 0
    bounds: dict[int, int] = field(default_factory=dict)  # b -> count; -b: sampled at b
    unknowns: list[str] = field(default_factory=list)
    max_rank: int = 0  # the largest total rank checked
    cut: int | None = None  # the smallest total rank skipped (None: every case checked)
    cap: int = 0  # assignments sampled where a case has too many


def _value_cases(
    rule: Rule,
    z3_insts: list[Instance],
    bound: int,
    deadline: float,
    timeout_ms: int,
    case_budget: int | None,
    rng: np.random.Generator,
) -> Outcome | _Chosen:
    """Choose the concrete cases of the value check: whole groups of rank/attribute cases of one
    total rank, smallest first, while their concrete cases fit ``case_budget`` (None: no limit;
    the smallest group always runs). A refutation found while listing them (an ill-formed
    replacement) or a timeout comes back as an Outcome."""
    cap = max(2, min(32, VALUE_CASES // max(1, len(z3_insts))))
    chosen = _Chosen(cap=cap)
    for gi, (rank, group) in enumerate(itertools.groupby(z3_insts, key=total_rank)):
        rows: list[tuple[Instance, list[Instance], int | None]] = []
        unknowns: list[str] = []
        added = 0
        over = False
        for zi in group:
            if time.monotonic() > deadline:
                return _timeout("listing the shape cases", chosen.n_cases + added, None)
            try:
                assignments, b = concrete_dims(rule, zi, bound, cap, timeout_ms)
                if assignments and b < bound:
                    assignments += _samples(rule, zi, bound, rng, timeout_ms=timeout_ms)
            except GaveUp as e:
                return Outcome("unknown", "value", f"{zi.describe()}: {e}")
            insts = []
            for dims in assignments:
                try:
                    inst = concrete_instance(rule, zi.choices, dims)
                except SHAPE_FAILS as e:
                    unknowns.append(f"{zi.describe()}: {e}")
                    continue
                if inst.rhs_error is not None:
                    if zi.assume_rhs:
                        continue  # the rule does not apply here
                    return _shape_refuted(
                        rule, zi, _dims_model(dims), f"replacement is ill-formed ({inst.rhs_error})"
                    )
                insts.append(inst)
            added += len(insts)
            rows.append((zi, insts, b if assignments else None))
            if gi > 0 and case_budget is not None and chosen.n_cases + added > case_budget:
                over = True  # this group does not fit: it and every larger one are skipped
                break
        if over:
            chosen.cut = rank
            break
        chosen.max_rank = rank
        chosen.n_cases += added
        chosen.unknowns += unknowns
        for zi, insts, b in rows:
            chosen.work.append((zi, insts))
            if b is not None:
                chosen.bounds[b] = chosen.bounds.get(b, 0) + 1
    return chosen


def _timeout(stage: str, done: int, total: int | None) -> Outcome:
    of = f" of {total}" if total is not None else ""
    return Outcome(
        "unknown",
        "value",
        f"timeout (--timeout) while {stage}, after {done}{of} value cases: not proved",
    )


def check_values(
    rule: Rule,
    z3_insts: list[Instance],
    bound: int,
    deadline: float,
    timeout_ms: int,
    case_budget: int | None = VALUE_CASE_BUDGET,
) -> Outcome:
    """Real (and for exact rules fp32) equality on the cases, smallest first, with dims <= bound
    (reduced per case to keep the count of shape assignments bounded). At most ``case_budget``
    concrete cases (None: no limit): whole groups of one total rank, smallest first; the reason
    says which were checked. What runs is fixed by counts (cases, numpy trials), never by the
    clock, so the coverage is the same on any machine; the ``deadline`` and Z3's timeouts are
    only a safety net, and reaching one gives ``unknown``."""
    z3_insts = sorted(z3_insts, key=total_rank)
    rng = np.random.default_rng(1234)
    checks = ["real"] + (["fp32"] if rule.exactness == "exact" else [])
    approx = rule.exactness == "approx"
    chosen = _value_cases(rule, z3_insts, bound, deadline, timeout_ms, case_budget, rng)
    if isinstance(chosen, Outcome):
        return chosen
    n_cases = chosen.n_cases
    unknowns = list(chosen.unknowns)
    proven: dict[str, set[str]] = {}
    # Pass 1, numpy on every chosen case (it finds most counterexamples far faster than Z3):
    # reals first, then fp32 bits. Pass 2, Z3 proves each case, smallest first.
    k = 0
    for _zi, insts in chosen.work:
        for inst in insts:
            if time.monotonic() > deadline:
                return _timeout("trying numpy", k, n_cases)
            k += 1
            for mode in ["approx" if approx else "real"] + (["bits"] if "fp32" in checks else []):
                trials = FIRST_TRIALS if k <= FIRST_CASES else RANDOM_TRIALS
                out = _random_search(rule, inst, mode, rng, trials)
                if out is not None:
                    return out
    k = 0
    for zi, insts in chosen.work:
        for inst in insts:
            k += 1
            for check in checks:
                mode = "bits" if check == "fp32" else "approx" if approx else "real"
                left_ms = int((deadline - time.monotonic()) * 1000)
                if left_ms <= 0:
                    return _timeout("proving with Z3", k - 1, n_cases)
                try:
                    out = _check_one(rule, inst, check, mode, rng, min(timeout_ms, left_ms), proven)
                except NotEvaluable as e:
                    if str(e).startswith("pattern") or zi.assume_rhs:
                        break  # that side's semantics reject this case: the rule does not apply
                    cx = _value_cx(
                        rule,
                        inst,
                        random_inputs(inst, rng, False),
                        "real",
                        rule.tolerance,
                        "the replacement's semantics",
                    )
                    return Outcome("refuted", "value", f"{inst.describe()}: {e}", cx)
                if out is not None:
                    if out.status == "unknown":
                        unknowns.append(out.reason)
                        break
                    return out
    if unknowns:
        return Outcome("unknown", "value", unknowns[0], detail={"cases": n_cases})
    what = "reals" + (" and fp32 bits" if "fp32" in checks else "")
    if n_cases == 0:
        return Outcome("unknown", "value", f"no shape case with dims <= {bound} to check values on")
    spread = ", ".join(
        f"{n} with dims <= {b}"
        if b > 0
        else f"{n} with {chosen.cap} sampled assignments of dims <= {-b}"
        for b, n in sorted(chosen.bounds.items(), reverse=True)
    )
    if chosen.cut is not None:
        cover = (
            f"the {len(chosen.work)} of {len(z3_insts)} rank/attribute cases with at most "
            f"{chosen.max_rank} dimensions; larger ones skipped (case budget {case_budget})"
        )
    else:
        cover = f"all {len(z3_insts)} rank/attribute cases"
    eff_bound = min((abs(b) for b in chosen.bounds), default=bound)
    return Outcome(
        "proved",
        "value",
        f"equal over {what} on {n_cases} shape cases ({cover}: "
        f"{spread}; plus samples at dims <= {bound})",
        detail={
            "cases": n_cases,
            "bound": eff_bound,
            "complete": chosen.cut is None,
            "case_budget": case_budget,
        },
    )


def _widen(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """float64 copies of the float inputs (bool masks stay bool)."""
    return {k: v if v.dtype == np.bool_ else v.astype(np.float64) for k, v in inputs.items()}


def _differs_over_reals(rule: Rule, inst: Instance, inputs: dict[str, np.ndarray]) -> bool:
    """Do float32 inputs (all finite) make the sides differ in float64 too?"""
    if not all(np.isfinite(v).all() for v in inputs.values()):
        return False
    wide = _widen(inputs)
    try:
        lhs, rhs = numpy_sides(rule, inst, wide, np.float64)
    except Exception:
        return False
    return sides_differ(lhs, rhs, "real")


def _random_search(
    rule: Rule, inst: Instance, mode: str, rng: np.random.Generator, trials: int
) -> Outcome | None:
    """Look for inputs on which numpy's references disagree; a refutation numpy confirms."""
    fp32 = mode == "bits"
    dtype = np.float32 if fp32 else np.float64
    tol = rule.tolerance
    for _ in range(trials):
        inputs = random_inputs(inst, rng, fp32)
        try:
            lhs, rhs = numpy_sides(rule, inst, inputs, dtype)
        except Exception:
            return None
        if sides_differ(lhs, rhs, mode, tol):
            cx = _value_cx(rule, inst, inputs, mode, tol, "random search")
            check = "fp32" if fp32 else "approx" if mode == "approx" else "value"
            if fp32 and _differs_over_reals(rule, inst, inputs):
                cx = _value_cx(rule, inst, _widen(inputs), "real", tol, "random search")
                check, fp32 = "value", False
            return Outcome(
                "refuted",
                check,
                f"{inst.describe()}: sides differ" + (" in fp32 bits" if fp32 else ""),
                cx,
            )
    return None


def _check_one(
    rule: Rule,
    inst: Instance,
    check: str,
    mode: str,
    rng: np.random.Generator,
    timeout_ms: int,
    proven: dict[str, set[str]],
) -> Outcome | None:
    fp32 = check == "fp32"
    tol = rule.tolerance
    dom: Domain = FP32Domain() if fp32 else RealDomain()
    lhs_t, rhs_t, sym_inputs = symbolic_sides(rule, inst, dom)
    if _shapes(lhs_t) == _shapes(rhs_t) and all(
        a.eq(b) for a, b in zip(_flat(lhs_t), _flat(rhs_t), strict=True)
    ):
        return None  # the same term on both sides: equal in every number model
    status, info = prove_equal(lhs_t, rhs_t, dom, timeout_ms, proven.setdefault(check, set()))
    if status == "proved":
        return None
    if status == "unknown":
        if mode == "approx":
            return Outcome(
                "unknown",
                "approx",
                f"{inst.describe()}: cannot bound |lhs - rhs| "
                f"by {tol}·(|lhs| + 1) with uninterpreted functions",
            )
        return Outcome("unknown", check, f"{inst.describe()}: Z3 gave up ({info})")
    if mode == "approx":
        return Outcome(
            "unknown",
            "approx",
            f"{inst.describe()}: sides are not equal and the "
            f"tolerance {tol} cannot be proved with uninterpreted functions",
        )
    if info is None:
        cx = _value_cx(rule, inst, random_inputs(inst, rng, fp32), mode, tol, "shapes")
        return Outcome("refuted", check, f"{inst.describe()}: output shapes differ", cx)
    inputs = _model_inputs(info, sym_inputs, fp32)
    cx = _value_cx(rule, inst, inputs, mode, tol, "Z3")
    what = " in fp32 bits" if fp32 else " over the reals"
    if cx.get("confirmed"):
        return Outcome("refuted", check, f"{inst.describe()}: sides differ{what}", cx)
    # Z3's inputs do not convince numpy: look harder for ones that do.
    found = _random_search(rule, inst, mode, rng, CONFIRM_TRIALS)
    if found is not None:
        found.counterexample["found_by"] = "random search after Z3"  # type: ignore[index]
        return found
    if dom.apps:
        return Outcome(
            "unknown",
            check,
            f"{inst.describe()}: Z3's counterexample needs values "
            f"of uninterpreted functions ({', '.join(sorted({a[0] for a in dom.apps}))})"
            f" that numpy does not produce; an axiom may be missing",
            cx,
        )
    return Outcome("refuted", check, f"{inst.describe()}: sides differ{what}", cx)


def uses_ops(rule: Rule) -> list[str]:
    """Op names on both sides."""
    from satura.engine.rulelang import walk

    return sorted({s.op for t in (*rule.lhs, *rule.rhs) for s in walk(t) if isinstance(s, Call)})


def missing_semantics(rule: Rule) -> list[str]:
    return [op for op in uses_ops(rule) if op not in SEMANTICS]


__all__ = [
    "Outcome",
    "check_shape_case",
    "check_values",
    "get_op",
    "missing_semantics",
    "numpy_side",
    "numpy_sides",
    "prove_equal",
    "run_side",
    "uses_ops",
]
