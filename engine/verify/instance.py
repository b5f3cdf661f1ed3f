"""Instantiate a rule for one choice of ranks and attributes, in a dimension domain.

The verifier proves a rule case by case. A *case* fixes what Z3 integers cannot stand for: the
rank of every tensor variable (0..:data:`MAX_RANK` unless the guard or the pattern rules ranks out),
the length of every list variable ``*xs`` (1..3), and every attribute variable of the pattern
(all permutations of the rank for ``perm``, every axis for ``axis``, ...; an attribute the pattern
does not mention may hold any value, so it is enumerated too). Dimensions stay symbolic (Z3 ints
>= 1) in the shape check and become concrete ints in the value check; ``dims``-kind attributes
(``reshape``'s ``shape``, ``split``'s ``sizes``) are dimensions like any other.

Choices are made lazily: :func:`instantiate` raises :class:`NeedChoice` at the first undecided
choice and :func:`cases` branches on it, so only reachable combinations are visited.
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import z3
from satura.engine.errors import RuleError, ShapeError
from satura.engine.ops import get_op
from satura.engine.ops.linalg import ACTIVATIONS
from satura.engine.ops.registry import REQUIRED
from satura.engine.rulelang import VALUES, Call, Lit, Rule, Star, Var, evaluate, walk
from satura.engine.shapes import DimOps, IntDims, Z3Dims

MAX_RANK = 4  # ranks 0..4 are enumerated for a tensor variable the guard leaves open
STAR_LENGTHS = (1, 2)  # a list variable holds one or several tensors; 3 adds no new behaviour
DTYPE = "float32"  # every tensor variable is float32: the verifier models float32 values

# Exceptions a shape function or guard raises on input it does not accept.
SHAPE_FAILS = (
    ShapeError,
    AssertionError,
    IndexError,
    TypeError,
    ValueError,
    KeyError,
    ZeroDivisionError,
    RuleError,
)


class NeedChoice(Exception):
    def __init__(self, key: Any, options: list[Any]) -> None:
        super().__init__(str(key))
        self.key, self.options = key, options


class Unsupported(Exception):
    """The rule uses something the verifier cannot model: the verdict is ``unknown``."""


class VDims(Z3Dims):
    """Z3 dimensions with the ``not_`` the guard evaluator needs."""

    def not_(self, c: Any) -> Any:
        return z3.Not(self._b(c))


class VIntDims(IntDims):
    def not_(self, c: Any) -> bool:
        return not c


@dataclass(frozen=True)
class TensorInfo:
    """What guards see of a tensor variable."""

    shape: tuple[Any, ...]
    dtype: str = DTYPE


@dataclass
class Instance:
    """One case of a rule: its choices, bindings, and the types and conditions of both sides."""

    choices: dict[Any, Any]
    env: dict[str, Any] = field(default_factory=dict)  # var -> TensorInfo | tuple | attr value
    leaves: list[str] = field(default_factory=list)  # tensor leaves in order (stars expanded)
    attrs: dict[tuple[Any, ...], dict[str, Any]] = field(default_factory=dict)  # call path
    lhs_types: list[list[tuple[tuple[Any, ...], str]]] = field(default_factory=list)
    rhs_types: list[list[tuple[tuple[Any, ...], str]]] = field(default_factory=list)
    lhs_conds: list[Any] = field(default_factory=list)
    rhs_conds: list[Any] = field(default_factory=list)
    guard: Any = True
    rhs_error: str | None = None
    dim_names: list[str] = field(default_factory=list)
    scalars: list[str] = field(default_factory=list)  # symbolic float attributes: "attr(e)"
    value_vars: list[str] = field(default_factory=list)  # tensors read by value(v)
    assume_rhs: bool = False  # TASO's reading: the rule applies only where the rhs is well-formed

    def describe(self) -> str:
        """The case's choices, for messages."""
        parts = []
        for k, v in self.choices.items():
            if k[0] == "rank":
                parts.append(f"rank({k[1]})={v}")
            elif k[0] == "len":
                parts.append(f"len({k[1]})={v}")
            elif k[0] == "attr":
                parts.append(f"{k[1]}={v!r}")
            elif k[0] == "hidden":
                parts.append(f"{k[2]}.{k[3]}={v!r}")
            elif k[0] == "dimslen":
                parts.append(f"len({k[1]})={v}")
        return ", ".join(parts)


def _freeze(v: Any) -> Any:
    if isinstance(v, list | tuple):
        return tuple(_freeze(x) for x in v)
    return v


def attr_domain(op: str, name: str, in_shapes: list[Any]) -> list[Any] | None:
    """The finite values attribute ``name`` of ``op`` may take, given its input shapes."""
    spec = get_op(op).attrs[name]
    r = len(in_shapes[0]) if in_shapes and in_shapes[0] is not None else 0
    if name == "perm":
        return [tuple(p) for p in itertools.permutations(range(r))]
    if name == "axis" and spec.kind == "int":
        return list(range(-r, max(r, 1)))
    if name == "axes" and spec.kind == "ints":
        subsets = [c for k in range(1, r + 1) for c in itertools.combinations(range(r), k)]
        negative = [(-k,) for k in range(1, r + 1)]  # the forms exporters write for one axis
        return ([None] if spec.default is None else []) + subsets + negative
    if op in ("conv", "max_pool", "avg_pool") and name in ("strides", "dilations", "pads"):
        # Bounded like the dims: strides and dilations 1 or 2 throughout, pads none, one on
        # every side, or one only at the end of each axis.
        n = max(r - 2, 0)
        if name == "strides":
            return [None, (2,) * n]
        if name == "dilations":
            return [None, (2,) * n]
        return [None, (1,) * (2 * n), (0,) * n + (1,) * n]
    if name == "group":
        return [1, 2, 3]  # bounded: groups of up to 3 (enough for channel counts <= 3)
    if name in ("keepdims", "trans_a", "trans_b", "causal", "select_last_index"):
        return [0, 1]
    if name == "approximate":
        return ["none", "tanh"]
    if name == "act":
        return list(ACTIVATIONS)
    if name == "to":
        return [DTYPE]
    return None


DIMS_ATTRS = {
    ("reshape", "shape"): range(0, MAX_RANK + 1),
    ("expand", "shape"): range(0, MAX_RANK + 1),
    ("split", "sizes"): range(1, 4),
}


class _Builder:
    def __init__(
        self, rule: Rule, choices: dict[Any, Any], dims: DimOps, dimsrc: Callable[[str], Any]
    ) -> None:
        self.rule, self.d, self.dimsrc = rule, dims, dimsrc
        self.inst = Instance(choices=choices)
        self.value_vars = _value_vars(rule)
        self.fixed_ranks, self.fixed_dtypes, self.fixed_lens = _guard_facts(rule.guard)
        self.inst.value_vars = list(self.value_vars)
        self.inst.env[VALUES] = {v: z3.Real(f"value({v})") for v in self.value_vars}
        if rule.family_op:
            self.inst.env[rule.family_op[0]] = rule.family_op[1]

    def choose(self, key: Any, options: list[Any]) -> Any:
        if key in self.inst.choices:
            return self.inst.choices[key]
        if not options:
            raise ShapeError(f"no value for {key}")
        raise NeedChoice(key, options)

    def dim(self, name: str) -> Any:
        self.inst.dim_names.append(name)
        return self.dimsrc(name)

    def tensor(self, name: str) -> TensorInfo:
        env = self.inst.env
        if name not in env:
            fixed = self.fixed_ranks.get(name)
            r = self.choose(("rank", name), list(range(MAX_RANK + 1)) if fixed is None else [fixed])
            dtype = self.fixed_dtypes.get(name, DTYPE)
            if name in self.value_vars:  # value(v) needs a one-element constant: dims are 1
                env[name] = TensorInfo((1,) * r, dtype)
            else:
                env[name] = TensorInfo(tuple(self.dim(f"{name}.{i}") for i in range(r)), dtype)
            self.inst.leaves.append(name)
        return env[name]

    def star(self, name: str) -> list[str]:
        n = self.choose(("len", name), list(STAR_LENGTHS))
        names = [f"{name}{j}" for j in range(n)]
        infos = tuple(self.tensor(x) for x in names)
        self.inst.env[name] = infos
        return names

    # -- the pattern ---------------------------------------------------------------------------
    def lhs(self, t: Any, path: tuple[Any, ...]) -> list[tuple[tuple[Any, ...], str]]:
        if isinstance(t, Var):
            info = self.tensor(t.name)
            return [(info.shape, info.dtype)]
        if isinstance(t, Lit):
            return [((), DTYPE)]
        assert isinstance(t, Call)
        ins = self._args(t, path, self.lhs)
        info = get_op(t.op)
        given = dict(t.attrs)
        attrs: dict[str, Any] = {}
        shapes = [s for s, _ in ins]
        for k, spec in info.attrs.items():
            e = given.get(k)
            if isinstance(e, ast.Name):
                attrs[k] = self._attr_var(e.id, t.op, k, shapes)
            elif e is not None and spec.kind == "float":
                attrs[k] = float(evaluate(e, {}, None))
            elif e is not None:
                attrs[k] = _freeze(evaluate(e, {}, None))
            else:
                attrs[k] = self._hidden(path, t.op, k, shapes, spec.default)
        self.inst.attrs[path] = attrs
        return self._apply(t.op, ins, attrs, self.inst.lhs_conds)

    def _attr_var(self, name: str, op: str, k: str, shapes: list[Any]) -> Any:
        if name in self.inst.env:
            return self.inst.env[name]
        kind = get_op(op).attrs[k].kind
        if (op, k) in DIMS_ATTRS:
            fixed = self.fixed_lens.get(name)
            n = self.choose(
                ("dimslen", name), list(DIMS_ATTRS[(op, k)]) if fixed is None else [fixed]
            )
            v: Any = tuple(self.dim(f"{name}.{i}") for i in range(n))
        elif kind == "float":  # any real: a symbolic scalar
            v = z3.Real(f"attr({name})")
            self.inst.scalars.append(f"attr({name})")
        elif kind == "expr":  # any expression over the inputs: an uninterpreted function
            v = (f"$E_{name}", *[("in", i) for i in range(len(shapes))])
        else:
            dom = attr_domain(op, k, shapes)
            if dom is None:
                raise Unsupported(f"cannot enumerate attribute {op}.{k} (bound to '{name}')")
            v = self.choose(("attr", name), dom)
        self.inst.env[name] = v
        return v

    def _hidden(
        self, path: tuple[Any, ...], op: str, k: str, shapes: list[Any], default: Any
    ) -> Any:
        if get_op(op).attrs[k].kind == "float":
            name = f"attr({op}@{'.'.join(map(str, path[1:])) or 'root'}{path[0]}.{k})"
            if name not in self.inst.scalars:
                self.inst.scalars.append(name)
            return z3.Real(name)
        dom = attr_domain(op, k, shapes)
        if dom is None:
            raise Unsupported(
                f"the pattern leaves {op}.{k} open and its values cannot be "
                f"enumerated: write {k}=... in the pattern"
            )
        return self.choose(("hidden", path, op, k), dom)

    def _args(self, t: Call, path: tuple[Any, ...], side: Callable[..., Any]) -> list[Any]:
        ins: list[Any] = []
        for j, a in enumerate(t.args):
            if isinstance(a, Star):
                names = self.star(a.name) if side == self.lhs else self._bound_star(a.name)
                ins += [(self.inst.env[n].shape, DTYPE) for n in names]
                continue
            outs = side(a, (*path, j))
            if len(outs) != 1:
                raise ShapeError(f"{t.op}: argument {j} has {len(outs)} outputs")
            ins.append(outs[0])
        return ins

    def _bound_star(self, name: str) -> list[str]:
        return [f"{name}{j}" for j in range(len(self.inst.env[name]))]

    def _apply(
        self, op: str, ins: list[Any], attrs: dict[str, Any], conds: list[Any]
    ) -> list[tuple[tuple[Any, ...], str]]:
        info = get_op(op)
        lo, hi = info.inputs
        if len(ins) < lo or (hi is not None and len(ins) > hi):
            raise ShapeError(f"{op} takes {lo}..{hi} inputs, got {len(ins)}")
        full = plain_attrs(info.with_defaults(plain_attrs(attrs)))
        # Integer attributes computed from symbolic dimensions (a group) stay symbolic.
        full.update({k: v for k, v in attrs.items() if isinstance(v, z3.ArithRef) and v.is_int()})
        before = len(self.d.conditions) if isinstance(self.d, Z3Dims) else 0
        shapes = info.shape(self.d, [s for s, _ in ins], full)
        if isinstance(self.d, Z3Dims):
            conds += self.d.conditions[before:]
        dtypes = info.dtype([dt for _, dt in ins], full)
        return [(tuple(s), dt) for s, dt in zip(shapes, dtypes, strict=True)]

    # -- the replacement -----------------------------------------------------------------------
    def rhs(self, t: Any, path: tuple[Any, ...]) -> list[tuple[tuple[Any, ...], str]]:
        if isinstance(t, Var):
            info = self.inst.env[t.name]
            return [(info.shape, info.dtype)]
        if isinstance(t, Lit):
            return [((), DTYPE)]
        assert isinstance(t, Call)
        ins = self._args(t, path, self.rhs)
        attrs = {k: _freeze(evaluate(e, self.inst.env, self.d)) for k, e in t.attrs}
        full = get_op(t.op).with_defaults(plain_attrs(attrs, keep_exprs=True))
        full.update({k: v for k, v in attrs.items() if isinstance(v, z3.ExprRef)})
        self.inst.attrs[path] = full
        return self._apply(t.op, ins, full, self.inst.rhs_conds)


def _guard_facts(guard: ast.expr | None) -> tuple[dict[str, int], dict[str, str], dict[str, int]]:
    """Ranks, dtypes and dims-attribute lengths the guard fixes outright: its top-level ``and``
    terms ``rank(x) == N``, ``dtype(x) == "bool"`` and ``len(s) == N``. Cases with another rank
    or length make the guard false, so they need not be enumerated (a length may then exceed
    the enumerated range); a tensor variable is float32 unless the guard says otherwise."""
    ranks: dict[str, int] = {}
    dtypes: dict[str, str] = {}
    lens: dict[str, int] = {}
    if isinstance(guard, ast.BoolOp) and isinstance(guard.op, ast.And):
        for g in guard.values:
            r, d, n = _guard_facts(g)
            ranks.update(r)
            dtypes.update(d)
            lens.update(n)
    elif (
        isinstance(guard, ast.Compare) and len(guard.ops) == 1 and isinstance(guard.ops[0], ast.Eq)
    ):
        a, b = guard.left, guard.comparators[0]
        if isinstance(a, ast.Constant):
            a, b = b, a
        if (
            isinstance(a, ast.Call)
            and isinstance(a.func, ast.Name)
            and len(a.args) == 1
            and isinstance(a.args[0], ast.Name)
            and isinstance(b, ast.Constant)
        ):
            if a.func.id == "rank" and type(b.value) is int and b.value >= 0:
                ranks[a.args[0].id] = b.value
            elif a.func.id == "len" and type(b.value) is int and b.value >= 0:
                lens[a.args[0].id] = b.value
            elif a.func.id == "dtype" and b.value in ("bool", DTYPE):
                dtypes[a.args[0].id] = b.value
    return ranks, dtypes, lens


def _value_vars(rule: Rule) -> list[str]:
    """Tensor variables whose scalar value the rule reads with ``value(v)``."""
    exprs = [e for t in rule.rhs for s in walk(t) if isinstance(s, Call) for _, e in s.attrs]
    if rule.guard is not None:
        exprs.append(rule.guard)
    out: dict[str, None] = {}
    for e in exprs:
        for n in ast.walk(e):
            if (
                isinstance(n, ast.Call)
                and isinstance(n.func, ast.Name)
                and n.func.id == "value"
                and n.args
                and isinstance(n.args[0], ast.Name)
            ):
                out.setdefault(n.args[0].id, None)
    return list(out)


def _plain_expr(e: Any) -> Any:
    """An ew expression with opaque ``$E_`` nodes replaced by an add chain of their inputs
    (same inputs, same broadcast shape): what the registry's shape and dtype rules can read."""
    if not isinstance(e, tuple) or not e or e[0] in ("in", "const"):
        return e
    kids = [_plain_expr(c) for c in e[1:]]
    if isinstance(e[0], str) and e[0].startswith("$E_"):
        if not kids:
            return ("const", 0.0)
        out = kids[0]
        for k in kids[1:]:
            out = ("add", out, k)
        return out
    return (e[0], *kids)


def plain_attrs(attrs: dict[str, Any], keep_exprs: bool = False) -> dict[str, Any]:
    """Attributes the registry accepts: symbolic scalars become 0.5 (shapes never read float
    attributes) and opaque expressions become add chains."""
    out: dict[str, Any] = {}
    for k, v in attrs.items():
        if isinstance(v, z3.ArithRef) and v.is_int():
            out[k] = 1  # a symbolic integer (from dimensions): checked as an int
        elif isinstance(v, z3.ExprRef):
            out[k] = 0.5
        elif k == "expr" and not keep_exprs:
            out[k] = _plain_expr(v)
        else:
            out[k] = v
    return out


def instantiate(
    rule: Rule, choices: dict[Any, Any], dims: DimOps, dimsrc: Callable[[str], Any]
) -> Instance | None:
    """Build one case. Returns None when the pattern cannot match in this case (ill-formed or
    the guard is false outright); raises NeedChoice or Unsupported."""
    from satura.engine.rulelang import _GuardFalse

    b = _Builder(rule, choices, dims, dimsrc)
    inst = b.inst
    try:
        inst.lhs_types = [b.lhs(t, ("L", i)) for i, t in enumerate(rule.lhs)]
    except (NeedChoice, Unsupported):
        raise
    except SHAPE_FAILS:
        return None
    inst.lhs_conds = [c for c in inst.lhs_conds if c is not True]
    if any(c is False for c in inst.lhs_conds):
        return None
    if rule.guard is not None:
        try:
            g = evaluate(rule.guard, inst.env, dims)
        except _GuardFalse:
            return None
        except SHAPE_FAILS as e:
            raise Unsupported(f"guard cannot be evaluated: {e}") from None
        if isinstance(g, bool) and not g:
            return None
        if isinstance(g, z3.BoolRef) and z3.is_false(g):
            return None
        inst.guard = g
    if isinstance(dims, Z3Dims):
        dims.conditions.clear()
    try:
        inst.rhs_types = [b.rhs(t, ("R", i)) for i, t in enumerate(rule.rhs)]
    except (NeedChoice, Unsupported):
        raise
    except _GuardFalse:
        inst.rhs_error = "an attribute reads a dimension the tensor does not have"
    except SHAPE_FAILS as e:
        inst.rhs_error = str(e) or type(e).__name__
    return inst


def cases(
    rule: Rule,
    dims_factory: Callable[[], DimOps],
    dimsrc: Callable[[str], Any],
    fixed: dict[Any, Any] | None = None,
) -> Iterator[Instance]:
    """Every case of ``rule`` whose pattern can match, depth first. Raises Unsupported."""
    stack: list[dict[Any, Any]] = [dict(fixed or {})]
    while stack:
        choices = stack.pop()
        try:
            inst = instantiate(rule, choices, dims_factory(), dimsrc)
        except NeedChoice as nc:
            for o in reversed(nc.options):
                stack.append({**choices, nc.key: o})
            continue
        if inst is not None:
            yield inst


def z3_dim(name: str) -> Any:
    return z3.Int(name)


def z3_cases(rule: Rule) -> Iterator[Instance]:
    """Cases with symbolic Z3 dimensions (``name`` -> ``z3.Int(name)``)."""
    return cases(rule, VDims, z3_dim)


def concrete_instance(rule: Rule, choices: dict[Any, Any], dims: dict[str, int]) -> Instance:
    """The case ``choices`` with concrete dimensions (names not in ``dims`` are 1)."""
    inst = instantiate(rule, choices, VIntDims(), lambda n: int(dims.get(n, 1)))
    if inst is None:
        raise ShapeError("the pattern does not match with these dimensions")
    return inst


__all__ = [
    "MAX_RANK",
    "REQUIRED",
    "Instance",
    "NeedChoice",
    "TensorInfo",
    "Unsupported",
    "cases",
    "concrete_instance",
    "instantiate",
    "z3_cases",
]
