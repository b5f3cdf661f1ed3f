"""satura's e-graph: a Graph loaded into egglog, rules compiled to egglog, and a snapshot back.

Encoding (docs/design.md): one sort ``T`` for tensors, a constructor per op (CamelCase of the op
name) taking its inputs and then one ``PyObject`` with the canonical attribute tuple; variadic ops
take a ``TL`` cons list. Types are an e-class analysis, ``(ty T) -> PyObject``, filled by one
generated rule per op that calls the op registry's shape and dtype rules. Rule guards are Python
closures over the matched types and attributes, called through ``py-call``; every rule also checks
that its replacement has the pattern's type, so no rule, verified or not, can make an ill-typed
e-graph.
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import egglog.bindings as eb
import numpy as np
from satura.engine.errors import RuleError, SaturationError, ShapeError
from satura.engine.graph import Graph, TensorType, Value, freeze_attr
from satura.engine.ops import OPS, get_op, infer_types
from satura.engine.rulelang import (
    VALUES,
    Call,
    Lit,
    Rule,
    Star,
    Var,
    eval_attr,
    guard_holds,
    walk,
)
from satura.engine.shapes import SymDims

# Python objects the egglog program refers to, by key (``py-eval`` looks them up here).
_REG: dict[str, Any] = {}
_ids = itertools.count()


class _Fn:
    """A picklable handle on a registered Python function (egglog pickles PyObjects)."""

    __slots__ = ("key",)

    def __init__(self, key: str) -> None:
        self.key = key

    def __call__(self, *args: Any) -> Any:
        return _REG[self.key](*args)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_Fn, (self.key,))


def _lookup(key: str) -> Any:
    value = _REG[key]
    return _Fn(key) if callable(value) and not isinstance(value, type) else value


STRUCTURAL = ("Input", "Const", "Scalar", "Absent", "Get", "TNil", "TCons", "TLAppend")


def ctor(op: str) -> str:
    """The egglog constructor name of an op: ``layer_norm`` -> ``LayerNorm``."""
    return "".join(p[:1].upper() + p[1:] for p in op.split("_")) + (
        "Op" if op in ("input", "const", "scalar", "absent", "get") else ""
    )


CTOR_TO_OP = {ctor(name): name for name in OPS}


def _variadic(op: str) -> bool:
    return OPS[op].inputs[1] is None


INVALID = "<ill-typed>"  # the type of a term no op accepts (None is an absent optional input)


def _safe_infer(op: str, types: Sequence[Any], attrs: tuple) -> Any:
    """Types of an op application (one TensorType, or a tuple), or INVALID when ill-typed."""
    if any(t is INVALID or t == INVALID for t in types if isinstance(t, str)):
        return INVALID
    required = OPS[op].inputs[0]
    if len(types) < required or any(t is None for t in types[:required]):
        return INVALID  # an absent optional input in a place that needs one
    try:
        outs = infer_types(op, list(types), dict(attrs))
    except (
        ShapeError,
        TypeError,
        ValueError,
        IndexError,
        KeyError,
        ZeroDivisionError,
        AttributeError,
    ):
        return INVALID
    return outs[0] if len(outs) == 1 else tuple(outs)


@dataclass
class SNode:
    """One e-node of a snapshot. ``op`` is a satura op name or a structural constructor."""

    op: str
    children: tuple[int, ...]
    attrs: tuple = ()
    payload: Any = None  # Input/Const name, Get index, Scalar value


@dataclass
class Snapshot:
    """The saturated e-graph, read back into Python: classes of nodes, types, roots."""

    classes: dict[int, list[SNode]]
    types: dict[int, Any]
    roots: list[int]
    graph: Graph  # the original graph (inputs, constants by name)
    consts: dict[str, Value] = field(default_factory=dict)

    @property
    def num_nodes(self) -> int:
        return sum(len(v) for v in self.classes.values())

    def to_graph(self, choices: dict[int, int], name: str | None = None) -> Graph:
        """Rebuild a Graph from one node choice (index into ``classes[c]``) per class."""
        g = Graph(name or self.graph.name)
        built: dict[int, Any] = {}
        inputs = {v.name: v for v in self.graph.inputs}
        for v in self.graph.inputs:
            built_in = g.add_input(v.name, v.type.shape, v.type.dtype)
            inputs[v.name] = built_in

        def lst(c: int) -> list[Any]:
            out: list[Any] = []
            while True:
                n = self.classes[c][choices[c]]
                if n.op == "TNil":
                    return out
                out.append(build(n.children[0]))
                c = n.children[1]

        def build(c: int) -> Any:
            if c in built:
                return built[c]
            n = self.classes[c][choices[c]]
            if n.op == "Input":
                res: Any = inputs[n.payload]
            elif n.op == "Const":
                res = self.consts[n.payload]
            elif n.op == "Scalar":
                val, dtype = n.payload
                res = g.add_const(np.asarray(val, dtype=dtype), "scalar")
            elif n.op == "Absent":
                res = None
            elif n.op == "Get":
                res = build(n.children[0])[n.payload]
            else:
                args = lst(n.children[0]) if _variadic(n.op) else [build(ch) for ch in n.children]
                node = g.add(n.op, args, dict(n.attrs))
                res = node.outputs[0] if len(node.outputs) == 1 else tuple(node.outputs)
            built[c] = res
            return res

        g.set_outputs(*[build(r) for r in self.roots])
        # Keep the original output names: users address outputs by name.
        for v, orig in zip(g.outputs, self.graph.outputs, strict=True):
            if v.producer is not None and v.name != orig.name:
                v.name = orig.name
        return g


class EGraph:
    """A Graph in egglog, with rules added per ruleset and an explicit schedule."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.uid = f"e{next(_ids)}"
        self.egg = eb.EGraph()
        self.rulesets: list[str] = []
        self.rules: dict[str, Rule] = {}
        self.candidates: dict[str, int] = {}
        self.fired: dict[str, int] = {}
        self.program: list[str] = []  # the compiled egglog text, for snapshots and debugging
        self._consts: dict[str, Value] = {}
        self._obj_keys: dict[Any, str] = {}
        self._fn_count = itertools.count()
        self._run(self._prelude())
        self._load(graph)

    # -- program text --------------------------------------------------------------------------
    def _run(self, text: str) -> list[Any]:
        self.program.append(text)
        try:
            return self.egg.run_program(*self.egg.parse_program(text))
        except eb.EggSmolError as e:
            raise SaturationError(f"egglog refused the program: {str(e).splitlines()[0]}") from None

    def obj(self, value: Any) -> str:
        """A global egglog name bound to a Python object (attribute tuple, type, function)."""
        key = _hashable_key(value)
        if key is not None and key in self._obj_keys:
            return self._obj_keys[key]
        name = f"$g{self.uid}o{len(_REG)}"
        _REG[name] = value
        self._run(
            f"(let {name} (py-eval \"__import__('satura.engine.egraph', "
            f"fromlist=['_'])._lookup('{name}')\" (py-dict) (py-dict)))"
        )
        if key is not None:
            self._obj_keys[key] = name
        return name

    def _prelude(self) -> str:
        lines = [
            "(sort T)",
            "(sort TL)",
            "(constructor Input (String) T)",
            "(constructor Const (String) T)",
            "(constructor Scalar (PyObject) T)",
            "(constructor Absent () T)",
            "(constructor Get (T i64) T)",
            "(constructor TNil () TL)",
            "(constructor TCons (T TL) TL)",
            "(constructor TLAppend (TL TL) TL)",
            "(function ty (T) PyObject :merge old)",
            "(function tys (TL) PyObject :merge old)",
            "(function scalar (T) PyObject :merge old)",
            "(ruleset types)",
        ]
        for op, info in OPS.items():
            if info.inputs[1] is None:
                lines.append(f"(constructor {ctor(op)} (TL PyObject) T)")
            else:
                lines.append(f"(constructor {ctor(op)} ({'T ' * info.inputs[1]}PyObject) T)")
        lines += [
            "(rewrite (TLAppend (TNil) l) l :ruleset types)",
            "(rewrite (TLAppend (TCons h t) l) (TCons h (TLAppend t l)) :ruleset types)",
        ]
        return "\n".join(lines)

    def _type_rules(self) -> str:
        fns = {
            "cons": lambda h, t: INVALID if INVALID in (h, t) else (h, *t),
            "get": lambda t, i: t[i] if isinstance(t, tuple) and i < len(t) else INVALID,
            "scalar_ty": lambda v: TensorType((), v[1]),
        }
        g = {k: self.obj(v) for k, v in fns.items()}
        lines = [
            f"(rule ((= l (TNil))) ((set (tys l) {self.obj(())})) :ruleset types)",
            f"(rule ((= l (TCons h t)) (= th (ty h)) (= tt (tys t))) "
            f"((set (tys l) (py-call {g['cons']} th tt))) :ruleset types)",
            f"(rule ((= e (Get x i)) (= tx (ty x))) "
            f"((set (ty e) (py-call {g['get']} tx (py-from-int i)))) :ruleset types)",
            f"(rule ((= e (Scalar v))) ((set (ty e) (py-call {g['scalar_ty']} v)) "
            f"(set (scalar e) v)) :ruleset types)",
        ]
        for op, info in OPS.items():
            infer = self.obj(_make_infer(op))
            if info.inputs[1] is None:
                lines.append(
                    f"(rule ((= e ({ctor(op)} l at)) (= tl (tys l))) "
                    f"((set (ty e) (py-call {infer} tl at))) :ruleset types)"
                )
            else:
                n = info.inputs[1]
                xs = " ".join(f"x{i}" for i in range(n))
                q = " ".join(f"(= t{i} (ty x{i}))" for i in range(n))
                ts = " ".join(f"t{i}" for i in range(n))
                types = f"(py-call {self.obj(_pack)} {ts})" if n else self.obj(())
                lines.append(
                    f"(rule ((= e ({ctor(op)} {xs} at)) {q}) "
                    f"((set (ty e) (py-call {infer} {types} at))) :ruleset types)"
                )
        return "\n".join(lines)

    # -- loading a graph -----------------------------------------------------------------------
    def _load(self, graph: Graph) -> None:
        lines: list[str] = []
        names: dict[int, str] = {}
        absent = "(Absent)"
        lines.append(f"(set (ty (Absent)) {self.obj(None)})")
        for v in graph.inputs:
            names[id(v)] = f'(Input "{v.name}")'
            lines.append(f"(set (ty {names[id(v)]}) {self.obj(v.type)})")
        for v in graph.constants:
            self._consts[v.name] = v
            names[id(v)] = f'(Const "{v.name}")'
            lines.append(f"(set (ty {names[id(v)]}) {self.obj(v.type)})")
            if v.data is not None and v.data.size == 1 and v.data.dtype.kind in "fiu":
                lines.append(
                    f"(set (scalar {names[id(v)]}) "
                    f"{self.obj((float(v.data.reshape(())), v.type.dtype))})"
                )
        for k, n in enumerate(graph.nodes):
            info = get_op(n.op)
            attrs = self.obj(tuple(sorted(info.with_defaults(n.attrs).items())))
            if info.inputs[1] is None:
                args = _cons([names[id(v)] for v in n.inputs if v is not None])
            else:
                ins = [absent if v is None else names[id(v)] for v in n.inputs]
                args = " ".join(ins + [absent] * (info.inputs[1] - len(ins)))
            gname = f"$g{self.uid}n{k}"
            lines.append(f"(let {gname} ({ctor(n.op)} {args} {attrs}))")
            if len(n.outputs) == 1:
                names[id(n.outputs[0])] = gname
            else:
                for i, o in enumerate(n.outputs):
                    names[id(o)] = f"(Get {gname} {i})"
        self.roots = []
        for i, v in enumerate(graph.outputs):
            rname = f"$g{self.uid}root{i}"
            lines.append(f"(let {rname} {names[id(v)]})")
            self.roots.append(rname)
        self._run("\n".join(lines))
        self._run(self._type_rules())
        self._run("(run-schedule (saturate (run types)))")

    # -- rules ---------------------------------------------------------------------------------
    def add_rules(self, rules: Sequence[Rule], ruleset: str) -> None:
        """Compile rules into the egglog ruleset ``ruleset`` (created if new)."""
        rs = _ident(ruleset)
        if rs not in self.rulesets:
            self._run(f"(ruleset {rs})")
            self.rulesets.append(rs)
        texts = []
        for rule in rules:
            if rule.name in self.rules:
                raise RuleError(f"rule '{rule.name}' is defined twice", rule.file, rule.line)
            self.rules[rule.name] = rule
            self.candidates[rule.name] = 0
            self.fired[rule.name] = 0
            texts.append(_RuleCompiler(self, rule, rs).compile())
        self._run("\n".join(texts))

    def add_egg(self, text: str, ruleset: str) -> None:
        """The escape hatch: raw egglog text (``rules/*.egg``) added to ``ruleset``."""
        rs = _ident(ruleset)
        if rs not in self.rulesets:
            self._run(f"(ruleset {rs})")
            self.rulesets.append(rs)
        self._run(text)

    def run_iteration(self) -> tuple[bool, dict[str, int]]:
        """One iteration of every ruleset, then types to a fixpoint. Returns (changed, matches)."""
        if not self.rulesets:
            return False, {}
        sched = " ".join(f"(run {rs})" for rs in self.rulesets)
        out = self._run(f"(run-schedule {sched} (saturate (run types)))")
        changed = False
        matches: dict[str, int] = {}
        for o in out:
            rep = getattr(o, "report", None)
            if rep is None:
                continue
            changed = changed or rep.updated
            for k, v in rep.num_matches_per_rule.items():
                matches[k] = matches.get(k, 0) + v
        return changed, matches

    def size(self) -> tuple[int, int]:
        """(e-nodes, e-classes) of tensor terms."""
        frozen = self.egg.freeze()
        nodes = 0
        classes: set[Any] = set()
        for name, fn in frozen.functions.items():
            if fn.output_sort in ("T", "TL") and not fn.is_let_binding and name != "TLAppend":
                nodes += len(fn.rows)
                classes |= {r.output for r in fn.rows}
        return nodes, len(classes)

    def snapshot(self) -> Snapshot:
        """Read the e-graph back: every class of T/TL nodes, with types and roots."""
        frozen = self.egg.freeze()
        ids: dict[Any, int] = {}

        def cid(v: Any) -> int:
            return ids.setdefault(v, len(ids))

        classes: dict[int, list[SNode]] = {}
        types: dict[int, Any] = {}
        roots: dict[str, int] = {}
        for name, fn in frozen.functions.items():
            if fn.is_let_binding:
                if name in self.roots:
                    roots[name] = cid(fn.rows[0].output)
                continue
            if name == "ty":
                for r in fn.rows:
                    types[cid(r.inputs[0])] = self.egg.value_to_pyobject(r.output)
                continue
            if fn.output_sort not in ("T", "TL") or name == "TLAppend":
                continue
            for r in fn.rows:
                if r.subsumed:
                    continue
                sorts = fn.input_sorts
                node = self._snode(name, r.inputs, sorts, cid)
                classes.setdefault(cid(r.output), []).append(node)
        return Snapshot(
            classes, types, [roots[r] for r in self.roots], self.graph, dict(self._consts)
        )

    def _snode(
        self, name: str, inputs: Sequence[Any], sorts: Sequence[str], cid: Callable[[Any], int]
    ) -> SNode:
        e = self.egg
        if name in ("Input", "Const"):
            return SNode(name, (), payload=e.value_to_string(inputs[0]))
        if name == "Scalar":
            return SNode(name, (), payload=e.value_to_pyobject(inputs[0]))
        if name == "Get":
            return SNode(name, (cid(inputs[0]),), payload=e.value_to_i64(inputs[1]))
        if name in ("Absent", "TNil", "TCons"):
            return SNode(name, tuple(cid(v) for v in inputs))
        op = CTOR_TO_OP[name]
        children = tuple(cid(v) for v, s in zip(inputs, sorts, strict=True) if s in ("T", "TL"))
        return SNode(op, children, attrs=e.value_to_pyobject(inputs[-1]))


def _pack(*ts: Any) -> tuple:
    return ts


def _make_infer(op: str) -> Callable[..., Any]:
    def infer(types: Any, attrs: tuple) -> Any:
        return _safe_infer(op, list(types), attrs)

    infer.__name__ = f"infer_{op}"
    return infer


def _hashable_key(value: Any) -> Any:
    if callable(value) and not isinstance(value, type):
        return ("fn", id(value))
    try:
        hash(value)
    except TypeError:
        return None
    return (type(value).__name__, value)


def _ident(name: str) -> str:
    return "rs_" + "".join(ch if ch.isalnum() else "_" for ch in name)


def _cons(items: Sequence[str]) -> str:
    out = "(TNil)"
    for it in reversed(items):
        out = f"(TCons {it} {out})"
    return out


class _RuleCompiler:
    """One Rule -> one egglog rule whose query ends in a Python guard."""

    def __init__(self, eg: EGraph, rule: Rule, ruleset: str) -> None:
        self.eg, self.rule, self.rs = eg, rule, ruleset
        self.atoms: list[str] = []
        self.fresh = itertools.count()
        self.tensor_args: dict[str, str] = {}  # var name -> egglog var of its type
        self.list_args: dict[str, str] = {}
        self.call_attrs: list[tuple[Call, str]] = []  # lhs calls and their attrs variable
        self.lits: list[tuple[float, str]] = []
        self.roots: list[str] = []

    def var(self, prefix: str) -> str:
        return f"{prefix}{next(self.fresh)}"

    def compile(self) -> str:
        for root in self.rule.lhs:
            self.roots.append(self.pattern(root))
        for r in self.roots:
            self.tensor_args.setdefault(f"__root_{r}", f"(ty {r})")
        exprs = [
            e for t in self.rule.rhs for s in walk(t) if isinstance(s, Call) for _, e in s.attrs
        ] + ([self.rule.guard] if self.rule.guard is not None else [])
        self.valued = sorted(
            {
                n.args[0].id
                for e in exprs
                for n in ast.walk(e)
                if isinstance(n, ast.Call)
                and isinstance(n.func, ast.Name)
                and n.func.id == "value"
                and n.args
                and isinstance(n.args[0], ast.Name)
            }
        )
        for v in self.valued:
            self.tensor_args[f"{VALUES}{v}"] = f"(scalar p_{v})"
        # Lookups of functions may stand only in the query: bind each to a variable there.
        binds: dict[str, str] = {}
        for lookup in [
            *self.tensor_args.values(),
            *self.list_args.values(),
            *[f"(scalar {v})" for _, v in self.lits],
        ]:
            binds[lookup] = self.var("t")
            self.atoms.append(f"(= {binds[lookup]} {lookup})")
        self.tensor_args = {k: binds[v] for k, v in self.tensor_args.items()}
        self.list_args = {k: binds[v] for k, v in self.list_args.items()}
        guard = self.eg.obj(self.make_guard())
        args = " ".join(
            [
                *self.tensor_args.values(),
                *self.list_args.values(),
                *[a for _, a in self.call_attrs],
                *[binds[f"(scalar {v})"] for _, v in self.lits],
            ]
        )
        self.atoms.append(f"(= true (py-to-bool (py-call {guard} {args})))")
        actions = [
            f"(union {root} {self.replacement(t)})"
            for root, t in zip(self.roots, self.rule.rhs, strict=True)
        ]
        name = self.rule.name.replace('"', "'")
        return (
            f"(rule ({' '.join(self.atoms)}) ({' '.join(actions)}) "
            f':ruleset {self.rs} :name "{name}")'
        )

    # Query side.
    def pattern(self, t: Any) -> str:
        if isinstance(t, Var):
            v = "p_" + t.name
            self.tensor_args.setdefault(t.name, f"(ty {v})")
            return v
        if isinstance(t, Lit):
            v = self.var("l")
            self.lits.append((t.value, v))
            return v
        assert isinstance(t, Call)
        info = OPS[t.op]
        at = self.var("a")
        e = self.var("e")
        if info.inputs[1] is None:
            items = [a for a in t.args if not isinstance(a, Star)]
            stars = [a for a in t.args if isinstance(a, Star)]
            if (stars and t.args[-1] is not stars[0]) or len(stars) > 1:
                raise RuleError(
                    "in a pattern, one list variable '*xs' may stand last among "
                    "a variadic op's inputs",
                    self.rule.file,
                    self.rule.line,
                )
            tail = "(TNil)"
            if stars:
                tail = "q_" + stars[0].name
                self.list_args.setdefault(stars[0].name, f"(tys {tail})")
            args = tail
            for a in reversed(items):
                args = f"(TCons {self.pattern(a)} {args})"
        else:
            parts = [self.pattern(a) for a in t.args]
            parts += ["(Absent)"] * (info.inputs[1] - len(parts))
            args = " ".join(parts)
        self.atoms.append(f"(= {e} ({ctor(t.op)} {args} {at}))")
        self.call_attrs.append((t, at))
        return e

    def make_guard(self) -> Callable[..., bool]:
        rule = self.rule
        tnames = list(self.tensor_args)
        lnames = list(self.list_args)
        calls = [c for c, _ in self.call_attrs]
        lit_values = [v for v, _ in self.lits]
        counts_c, counts_f = self.eg.candidates, self.eg.fired
        compiler = self

        def guard(*args: Any) -> bool:
            counts_c[rule.name] += 1
            i = 0
            env: dict[str, Any] = {}
            for n in tnames:
                env[n] = args[i]
                i += 1
            for n in lnames:
                env[n] = args[i]
                i += 1
            attr_objs = args[i : i + len(calls)]
            i += len(calls)
            scalars = args[i:]
            _split_values(env)
            if any(isinstance(v, str) and v == INVALID for v in env.values()):
                return False
            for want, got in zip(lit_values, scalars, strict=True):
                if got is None or not _close(want, got[0]):
                    return False
            for c, at in zip(calls, attr_objs, strict=True):
                ad = dict(at)
                for k, expr in c.attrs:
                    if expr.__class__.__name__ == "Name":
                        if expr.id in env and env[expr.id] != ad.get(k):  # type: ignore[attr-defined]
                            return False
                        env[expr.id] = ad.get(k)  # type: ignore[attr-defined]
                    else:
                        try:
                            if eval_attr(expr, env) != ad.get(k):
                                return False
                        except Exception:
                            return False
            if rule.family_op:
                env[rule.family_op[0]] = rule.family_op[1]
            if not guard_holds(rule.guard, env, SymDims()):
                return False
            # The replacement must have the pattern's type: no rule makes an ill-typed e-graph.
            for root, rhs in zip(compiler.roots, rule.rhs, strict=True):
                want = env[f"__root_{root}"]
                got = compiler.rhs_type(rhs, env, attr_objs)
                if got is INVALID or got != want:
                    return False
            counts_f[rule.name] += 1
            return True

        guard.__name__ = f"guard_{rule.name}"
        return guard

    def rhs_type(self, t: Any, env: dict[str, Any], attr_objs: Sequence[Any]) -> Any:
        if isinstance(t, Var):
            return env[t.name]
        if isinstance(t, Lit):
            return TensorType((), "float32")
        assert isinstance(t, Call)
        ins: list[Any] = []
        for a in t.args:
            if isinstance(a, Star):
                ins += list(env[a.name])
            else:
                ins.append(self.rhs_type(a, env, attr_objs))
        try:
            attrs = self.rhs_attrs(t, env, attr_objs)
        except Exception:
            return INVALID
        return _safe_infer(t.op, ins, attrs)

    def rhs_attrs(self, t: Call, env: dict[str, Any], attr_objs: Sequence[Any]) -> tuple:
        info = OPS[t.op]
        base: dict[str, Any] = {}
        fam = self.rule.family_op
        if fam and t.op == fam[1]:
            # A family op in the replacement keeps the attributes it had in the pattern.
            for c, at in zip([c for c, _ in self.call_attrs], attr_objs, strict=True):
                if c.op == t.op:
                    base = dict(at)
                    break
        for k, expr in t.attrs:
            base[k] = eval_attr(expr, env)
        return tuple(sorted(info.with_defaults(base).items()))

    # Action side.
    def replacement(self, t: Any) -> str:
        if isinstance(t, Var):
            return "p_" + t.name
        if isinstance(t, Lit):
            return f"(Scalar {self.eg.obj((t.value, 'float32'))})"
        assert isinstance(t, Call)
        info = OPS[t.op]
        if info.inputs[1] is None:
            lists: list[str] = []
            pending: list[str] = []
            for a in t.args:
                if isinstance(a, Star):
                    lists.append(_cons(pending) if pending else "")
                    pending = []
                    lists.append("q_" + a.name)
                else:
                    pending.append(self.replacement(a))
            lists.append(_cons(pending))
            parts = [x for x in lists if x]
            args = parts[-1]
            for p in reversed(parts[:-1]):
                args = f"(TLAppend {p} {args})" if p != "(TNil)" else args
        else:
            parts = [self.replacement(a) for a in t.args]
            parts += ["(Absent)"] * (info.inputs[1] - len(parts))
            args = " ".join(parts)
        return f"({ctor(t.op)} {args} {self.attr_expr(t)})"

    def attr_expr(self, t: Call) -> str:
        fam = self.rule.family_op
        inherits = bool(fam and t.op == fam[1])
        if not inherits and all(_is_literal(e) for _, e in t.attrs):
            attrs = {k: eval_attr(e, {}) for k, e in t.attrs}
            return self.eg.obj(tuple(sorted(OPS[t.op].with_defaults(attrs).items())))
        # Computed attributes: a closure over the same arguments the guard sees.
        tnames = list(self.tensor_args)
        lnames = list(self.list_args)
        ncalls = len(self.call_attrs)
        compiler = self

        def attrs_fn(*args: Any) -> tuple:
            env = dict(zip(tnames + lnames, args, strict=False))
            _split_values(env)
            attr_objs = args[len(tnames) + len(lnames) : len(tnames) + len(lnames) + ncalls]
            for c, at in zip([c for c, _ in compiler.call_attrs], attr_objs, strict=True):
                ad = dict(at)
                for k, expr in c.attrs:
                    if expr.__class__.__name__ == "Name":
                        env[expr.id] = ad.get(k)  # type: ignore[attr-defined]
            if fam:
                env[fam[0]] = fam[1]
            return compiler.rhs_attrs(t, env, attr_objs)

        fn = self.eg.obj(attrs_fn)
        args = " ".join(
            [*self.tensor_args.values(), *self.list_args.values(), *[a for _, a in self.call_attrs]]
        )
        return f"(py-call {fn} {args})"


def _split_values(env: dict[str, Any]) -> None:
    """Move the scalar lookups (``__values__x``) into ``env[VALUES]`` as plain floats."""
    vals = {k[len(VALUES) :]: env.pop(k) for k in [k for k in env if k.startswith(VALUES)]}
    env[VALUES] = {k: (None if v is None else v[0]) for k, v in vals.items()}


def _is_literal(e: Any) -> bool:
    return (
        isinstance(e, ast.Constant)
        or (isinstance(e, (ast.List, ast.Tuple)) and all(_is_literal(x) for x in e.elts))
        or (isinstance(e, ast.UnaryOp) and _is_literal(e.operand))
    )


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-6 * max(1.0, abs(a), abs(b))


def freeze_value(v: Any) -> Any:
    return freeze_attr(v)


__all__ = ["STRUCTURAL", "EGraph", "SNode", "Snapshot", "ctor", "walk"]
