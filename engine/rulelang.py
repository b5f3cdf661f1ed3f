"""The rule language: parse rule files into checked :class:`Rule` objects (DESIGN §4).

A rule file is plain text, read at run time and never executed::

    # (A·B) + c  →  linear(A, B, c): the bias add runs in the GEMM's epilogue
    rule gemm-bias [exact]:
        add(matmul(a, b), c)  =>  linear(a, b, c)
        if rank(b) == 2 and shape(c) == [dim(b, 1)]

    rule unary-transpose for u in [exp, tanh, relu] [exact]:
        u(transpose(x, perm=p))  =>  transpose(u(x), perm=p)

Each side of ``=>`` (one way) or ``<=>`` (both ways) is a Python expression parsed with :mod:`ast`
and walked, never evaluated. Errors are :class:`RuleError` at ``file:line:col``. Families (``for u
in TRAIT`` or ``for u in [op, ...]``) and ``<=>`` are expanded here: every :class:`Rule` returned is
one concrete, directed rewrite.
"""

from __future__ import annotations

import ast
import keyword
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from satura.engine.errors import RuleError, ShapeError
from satura.engine.ops import OPS, ops_with_trait
from satura.engine.rulefns import RULE_FUNCTIONS
from satura.engine.shapes import DimOps

EXACTNESS = ("exact", "real", "approx")

# Named real constants a pattern may use; a model's constant matches when it equals the value
# after rounding to its dtype (the verifier sees the exact real).
NAMED_CONSTANTS = {
    "PI": math.pi,
    "E": math.e,
    "SQRT2": math.sqrt(2.0),
    "SQRT1_2": math.sqrt(0.5),
    "SQRT_2_OVER_PI": math.sqrt(2.0 / math.pi),
}


# -- the rule AST ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Var:
    """A tensor variable: matches any e-class; bound once per match."""

    name: str


@dataclass(frozen=True)
class Star:
    """A list variable ``*xs`` in a variadic op's inputs."""

    name: str


@dataclass(frozen=True)
class Lit:
    """A scalar constant tensor (``mul(x, 0.5)``); in a pattern it matches a one-element
    constant."""

    value: float
    name: str = ""  # a NAMED_CONSTANTS name, when the rule wrote one


@dataclass(frozen=True)
class Call:
    """``op(args..., attr=expr...)``. ``op`` is a registered op name."""

    op: str
    args: tuple[Any, ...]  # Term | Star
    attrs: tuple[tuple[str, ast.expr], ...] = ()

    def attr(self, name: str) -> ast.expr | None:
        return dict(self.attrs).get(name)


Term = Var | Lit | Call


@dataclass(frozen=True)
class Rule:
    """One directed rewrite ``lhs => rhs`` under ``guard``."""

    name: str
    exactness: str
    lhs: tuple[Term, ...]
    rhs: tuple[Term, ...]
    guard: ast.expr | None = None
    tolerance: float | None = None
    file: str = "<string>"
    line: int = 0
    text: str = ""
    family_op: tuple[str, str] | None = field(default=None, compare=False)  # (var, op) expanded

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


# -- helpers over terms ----------------------------------------------------------------------------
def walk(term: Any) -> list[Any]:
    """Every sub-term (pre-order), Stars included."""
    out = [term]
    if isinstance(term, Call):
        for a in term.args:
            out += walk(a)
    return out


def tensor_vars(terms: tuple[Term, ...]) -> list[str]:
    seen: dict[str, None] = {}
    for t in terms:
        for s in walk(t):
            if isinstance(s, (Var, Star)):
                seen.setdefault(s.name, None)
    return list(seen)


def attr_vars(terms: tuple[Term, ...]) -> list[str]:
    """Names bound by ``attr=name`` in a pattern."""
    seen: dict[str, None] = {}
    for t in terms:
        for s in walk(t):
            if isinstance(s, Call):
                for _, e in s.attrs:
                    if isinstance(e, ast.Name):
                        seen.setdefault(e.id, None)
    return list(seen)


def to_text(term: Any) -> str:
    if isinstance(term, Var):
        return term.name
    if isinstance(term, Star):
        return f"*{term.name}"
    if isinstance(term, Lit):
        return term.name or repr(term.value)
    parts = [to_text(a) for a in term.args] + [f"{k}={ast.unparse(v)}" for k, v in term.attrs]
    return f"{term.op}({', '.join(parts)})"


# -- parsing ---------------------------------------------------------------------------------------
_HEADER = re.compile(
    r"^rule\s+(?P<name>[A-Za-z_][\w.\-]*)"
    r"(?:\s+for\s+(?P<var>[A-Za-z_]\w*)\s+in\s+(?P<fam>\[[^\]]*\]|[A-Za-z_]\w*))?"
    r"\s*\[(?P<cls>[A-Za-z]+)(?:\s+(?P<tol>[0-9.eE+\-]+))?\]\s*:\s*$"
)


@dataclass
class _Segment:
    """Text joined from one or more physical lines, with a map back to file positions."""

    text: str
    starts: list[tuple[int, int, int]]  # (offset in the joined text, line, col)
    base: int = 0  # where ``text`` starts in the joined text

    def sub(self, start: int, end: int | None = None) -> _Segment:
        return _Segment(self.text[start:end], self.starts, self.base + start)

    def pos(self, offset: int) -> tuple[int, int]:
        offset += self.base
        line, col, base = self.starts[0][1], self.starts[0][2], 0
        for off, ln, c in self.starts:
            if off <= offset:
                base, line, col = off, ln, c
        return line, col + (offset - base)


class _Parser:
    def __init__(self, text: str, file: str) -> None:
        self.file = file
        self.lines = text.splitlines()

    def error(self, msg: str, line: int, col: int) -> RuleError:
        src = self.lines[line - 1] if 0 < line <= len(self.lines) else ""
        return RuleError(msg, self.file, line, col + 1, src)

    def parse(self) -> list[Rule]:
        rules: list[Rule] = []
        names: dict[str, int] = {}
        i = 0
        while i < len(self.lines):
            raw = self.lines[i]
            stripped = _strip_comment(raw)
            if not stripped.strip():
                i += 1
                continue
            if raw[:1].isspace():
                raise self.error(
                    "indented line outside a rule (a rule starts with 'rule NAME "
                    "[exact|real|approx TOL]:')",
                    i + 1,
                    len(raw) - len(raw.lstrip()),
                )
            m = _HEADER.match(stripped.rstrip())
            if not m:
                raise self.error(
                    "expected 'rule NAME [exact|real|approx TOL]:' or "
                    "'rule NAME for OP in TRAIT [CLASS]:'",
                    i + 1,
                    0,
                )
            header_line = i + 1
            body: list[tuple[int, str]] = []
            i += 1
            while i < len(self.lines) and (
                not self.lines[i].strip() or self.lines[i][:1].isspace()
            ):
                if _strip_comment(self.lines[i]).strip():
                    body.append((i + 1, _strip_comment(self.lines[i])))
                i += 1
            name = m["name"]
            if name in names:
                raise self.error(
                    f"rule '{name}' is already defined at line {names[name]}",
                    header_line,
                    len("rule "),
                )
            names[name] = header_line
            rules += self._rule(m, header_line, body)
        return rules

    def _rule(self, m: re.Match[str], line: int, body: list[tuple[int, str]]) -> list[Rule]:
        cls = m["cls"]
        if cls not in EXACTNESS:
            raise self.error(
                f"unknown exactness class '{cls}' (use exact, real or approx TOL)",
                line,
                m.start("cls"),
            )
        tol: float | None = None
        if cls == "approx":
            if m["tol"] is None:
                raise self.error(
                    "approx rules state their tolerance: [approx 1e-3]", line, m.start("cls")
                )
            tol = float(m["tol"])
        elif m["tol"] is not None:
            raise self.error(
                f"only approx rules take a tolerance, not '{cls}'", line, m.start("tol")
            )
        if not body:
            raise self.error(f"rule '{m['name']}' has no body: 'PATTERN => REPLACEMENT'", line, 0)
        rewrite, guard = self._split_body(body)
        family = self._family(m, line)
        text = "\n".join([self.lines[line - 1]] + [t for _, t in body])
        out: list[Rule] = []
        for var, op in family:
            rename = {var: op} if var else {}
            lhs_seg, rhs_seg, both = self._split_rewrite(rewrite)
            lhs = self._side(lhs_seg, rename, is_lhs=True)
            rhs = self._side(rhs_seg, rename, is_lhs=False)
            guard_ast = self._expr(guard) if guard else None
            suffix = f"[{op}]" if var else ""
            base = dict(
                exactness=cls,
                tolerance=tol,
                file=self.file,
                line=line,
                text=text,
                family_op=(var, op) if var else None,
            )
            fwd = Rule(m["name"] + suffix, lhs=lhs, rhs=rhs, guard=guard_ast, **base)
            self._check(fwd, lhs_seg, rhs_seg, guard)
            out.append(fwd)
            if both:
                rev = Rule(m["name"] + suffix + "-rev", lhs=rhs, rhs=lhs, guard=guard_ast, **base)
                self._check(rev, rhs_seg, lhs_seg, guard)
                out.append(rev)
        return out

    def _family(self, m: re.Match[str], line: int) -> list[tuple[str | None, str]]:
        if not m["var"]:
            return [(None, "")]
        fam = m["fam"]
        col = m.start("fam")
        if fam.startswith("["):
            names = [n.strip() for n in fam[1:-1].split(",") if n.strip()]
            for n in names:
                if n not in OPS:
                    raise self.error(
                        f"unknown op '{n}' in the family list", line, col + fam.find(n)
                    )
            ops = names
        else:
            ops = [o.name for o in ops_with_trait(fam)]
            if not ops:
                traits = sorted({t for o in OPS.values() for t in o.traits})
                raise self.error(
                    f"no op has the trait '{fam}' (traits: {', '.join(traits)})", line, col
                )
        if m["var"] in OPS:
            raise self.error(
                f"family variable '{m['var']}' shadows the op of that name", line, m.start("var")
            )
        return [(m["var"], op) for op in ops]

    def _split_body(self, body: list[tuple[int, str]]) -> tuple[_Segment, _Segment | None]:
        rewrite: list[tuple[int, str]] = []
        guard: list[tuple[int, str]] = []
        for ln, text in body:
            s = text.lstrip()
            if s.startswith("if ") or s == "if":
                if guard:
                    raise self.error(
                        "a rule has one guard ('if ...'): join them with 'and'",
                        ln,
                        len(text) - len(s),
                    )
                guard.append((ln, " " * (len(text) - len(s) + 3) + s[3:]))
            elif guard:
                guard.append((ln, text))
            else:
                rewrite.append((ln, text))
        if not rewrite:
            ln = body[0][0]
            raise self.error("rule has a guard but no 'PATTERN => REPLACEMENT'", ln, 0)
        return _join(rewrite), (_join(guard) if guard else None)

    def _split_rewrite(self, seg: _Segment) -> tuple[_Segment, _Segment, bool]:
        idx = seg.text.find("<=>")
        both = idx >= 0
        width = 3
        if not both:
            idx = seg.text.find("=>")
            width = 2
        if idx < 0:
            ln, col = seg.pos(len(seg.text) - len(seg.text.lstrip()))
            raise self.error("expected 'PATTERN => REPLACEMENT' (or '<=>' for both ways)", ln, col)
        return seg.sub(0, idx), seg.sub(idx + width), both

    def _expr(self, seg: _Segment) -> ast.expr:
        src = seg.text
        lead = len(src) - len(src.lstrip())
        try:
            tree = ast.parse(src.strip(), mode="eval")
        except SyntaxError as e:
            off = lead + max((e.offset or 1) - 1, 0)
            ln, col = seg.pos(off)
            raise self.error(f"syntax error: {e.msg}", ln, col) from None
        # Record file positions on every node so later checks can point at them.
        for node in ast.walk(tree):
            if hasattr(node, "col_offset"):
                ln, col = seg.pos(lead + node.col_offset)
                node.lineno, node.col_offset = ln, col  # type: ignore[attr-defined]
        return tree.body

    def _side(self, seg: _Segment, rename: Mapping[str, str], is_lhs: bool) -> tuple[Term, ...]:
        expr = self._expr(seg)
        roots = expr.elts if isinstance(expr, ast.Tuple) else [expr]
        return tuple(self._term(r, rename) for r in roots)

    def _term(self, node: ast.expr, rename: Mapping[str, str]) -> Term:
        if isinstance(node, ast.Name) and node.id in NAMED_CONSTANTS:
            return Lit(NAMED_CONSTANTS[node.id], node.id)
        if isinstance(node, ast.Name):
            if node.id in OPS or node.id in rename:
                raise self.error(
                    f"'{node.id}' is an op: call it, '{node.id}(...)'", node.lineno, node.col_offset
                )
            return Var(node.id)
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, (int, float))
            and not isinstance(node.value, bool)
        ):
            return Lit(float(node.value))
        if (
            isinstance(node, ast.UnaryOp)
            and isinstance(node.op, ast.USub)
            and isinstance(node.operand, ast.Constant)
            and isinstance(node.operand.value, (int, float))
        ):
            return Lit(-float(node.operand.value))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            op = rename.get(node.func.id, node.func.id)
            if op.endswith("_") and keyword.iskeyword(op[:-1]):
                op = op[:-1]  # an op named by a Python keyword: 'not_' is 'not'
            if op not in OPS:
                hint = _closest(op, list(OPS))
                raise self.error(
                    f"unknown op '{op}'" + (f" (did you mean '{hint}'?)" if hint else ""),
                    node.func.lineno,
                    node.func.col_offset,
                )
            info = OPS[op]
            args: list[Any] = []
            for a in node.args:
                if isinstance(a, ast.Starred):
                    if info.inputs[1] is not None:
                        raise self.error(
                            f"'*{ast.unparse(a.value)}' only fits a variadic op; "
                            f"'{op}' takes a fixed number of inputs",
                            a.lineno,
                            a.col_offset,
                        )
                    if not isinstance(a.value, ast.Name):
                        raise self.error(
                            "a list variable is a plain name: '*xs'", a.lineno, a.col_offset
                        )
                    args.append(Star(a.value.id))
                else:
                    args.append(self._term(a, rename))
            stars = [i for i, a in enumerate(args) if isinstance(a, Star)]
            lo, hi = info.inputs
            fixed = len(args) - len(stars)
            if (not stars and fixed < lo) or (hi is not None and fixed > hi):
                want = str(lo) if lo == hi else f"{lo} to {hi if hi is not None else 'any'}"
                raise self.error(
                    f"'{op}' takes {want} inputs, got {len(args)}", node.lineno, node.col_offset
                )
            attrs: list[tuple[str, ast.expr]] = []
            for kw in node.keywords:
                if kw.arg is None:
                    raise self.error(
                        "'**' is not allowed in rules", kw.value.lineno, kw.value.col_offset
                    )
                if kw.arg not in info.attrs:
                    known = ", ".join(sorted(info.attrs)) or "none"
                    raise self.error(
                        f"'{op}' has no attribute '{kw.arg}' (attributes: {known})",
                        kw.value.lineno,
                        kw.value.col_offset,
                    )
                attrs.append((kw.arg, kw.value))
            return Call(op, tuple(args), tuple(attrs))
        raise self.error(
            f"expected an op call, a tensor variable or a number, got '{ast.unparse(node)}'",
            node.lineno,
            node.col_offset,
        )

    def _check(
        self, rule: Rule, lhs_seg: _Segment, rhs_seg: _Segment, guard_seg: _Segment | None
    ) -> None:
        if len(rule.lhs) != len(rule.rhs):
            ln, col = rhs_seg.pos(0)
            raise self.error(
                f"{len(rule.lhs)} pattern roots but {len(rule.rhs)} replacements", ln, col
            )
        for root in rule.lhs:
            if not isinstance(root, Call):
                ln, col = lhs_seg.pos(0)
                raise self.error(
                    "a pattern root must be an op call, not a bare variable or number", ln, col
                )
        bound = set(tensor_vars(rule.lhs))
        abound = set(attr_vars(rule.lhs))
        for v in tensor_vars(rule.rhs):
            if v not in bound:
                ln, col = _find_name(rhs_seg, v)
                raise self.error(f"'{v}' in the replacement is not bound by the pattern", ln, col)
        names = bound | abound | set(BUILTINS) | set(RULE_FUNCTIONS)
        if rule.family_op:
            names.add(rule.family_op[0])
        exprs = [e for t in rule.rhs for s in walk(t) if isinstance(s, Call) for _, e in s.attrs]
        if rule.guard is not None:
            exprs.append(rule.guard)
        for e in exprs:
            for node in ast.walk(e):
                if isinstance(node, ast.Name) and node.id not in names:
                    raise self.error(
                        f"'{node.id}' is not bound by the pattern and is not a known function",
                        node.lineno,
                        node.col_offset,
                    )
                if isinstance(node, ast.Call):
                    if not isinstance(node.func, ast.Name) or node.func.id not in (
                        set(BUILTINS) | set(RULE_FUNCTIONS)
                    ):
                        raise self.error(
                            f"unknown function '{ast.unparse(node.func)}' (known: "
                            f"{', '.join(sorted({*BUILTINS, *RULE_FUNCTIONS}))})",
                            node.lineno,
                            node.col_offset,
                        )
                    arity = BUILTIN_ARITY.get(node.func.id)
                    if arity is not None and len(node.args) != arity:
                        raise self.error(
                            f"{node.func.id}() takes {arity} argument"
                            f"{'s' if arity != 1 else ''}, got {len(node.args)}",
                            node.lineno,
                            node.col_offset,
                        )
                    if (
                        node.func.id in (*TENSOR_QUERIES, "value")
                        and node.args
                        and not (isinstance(node.args[0], ast.Name) and node.args[0].id in bound)
                    ):
                        raise self.error(
                            f"{node.func.id}({ast.unparse(node.args[0])}): "
                            f"'{ast.unparse(node.args[0])}' is not a tensor "
                            f"variable of the pattern",
                            node.lineno,
                            node.col_offset,
                        )
                if isinstance(
                    node,
                    (
                        ast.Lambda,
                        ast.ListComp,
                        ast.GeneratorExp,
                        ast.SetComp,
                        ast.DictComp,
                        ast.NamedExpr,
                        ast.Attribute,
                        ast.Await,
                        ast.Yield,
                        ast.YieldFrom,
                        ast.Starred,
                    ),
                ):
                    raise self.error(
                        f"'{ast.unparse(node)}' is not allowed in a rule expression",
                        node.lineno,
                        node.col_offset,
                    )
        # Literal attributes of the replacement are checked against the op's attribute kinds.
        for t in rule.rhs:
            for s in walk(t):
                if isinstance(s, Call):
                    for k, e in s.attrs:
                        if not any(isinstance(x, (ast.Name, ast.Call)) for x in ast.walk(e)):
                            try:
                                val = evaluate(e, {}, None)
                                OPS[s.op].attrs[k].check(s.op, k, _freeze(val))
                            except (ShapeError, RuleError, ValueError) as err:
                                raise self.error(str(err), e.lineno, e.col_offset) from None


def _strip_comment(line: str) -> str:
    out, quote = [], None
    for ch in line:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch == "#":
            break
        out.append(ch)
    return "".join(out).rstrip()


def _join(lines: list[tuple[int, str]]) -> _Segment:
    text, starts = "", []
    for ln, t in lines:
        if text:
            text += " "
        starts.append((len(text), ln, 0))
        text += t
    return _Segment(text, starts)


def _find_name(seg: _Segment, name: str) -> tuple[int, int]:
    m = re.search(rf"(?<![\w*]){re.escape(name)}(?!\w)", seg.text) or re.search(
        re.escape(name), seg.text
    )
    return seg.pos(m.start() if m else 0)


def _closest(name: str, options: list[str]) -> str | None:
    import difflib

    hits = difflib.get_close_matches(name, options, n=1, cutoff=0.7)
    return hits[0] if hits else None


def parse_rules(text: str, file: str = "<string>") -> list[Rule]:
    """Parse rule-file text into concrete rules. Raises RuleError at ``file:line:col``."""
    return _Parser(text, file).parse()


def load_rules(path: str | Path) -> list[Rule]:
    """Read and parse a ``.rules`` file."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise RuleError(f"cannot read rule file: {e.strerror}", str(p)) from None
    return parse_rules(text, str(p))


# -- guard and attribute expressions ---------------------------------------------------------------
TENSOR_QUERIES = ("rank", "shape", "dim", "dtype", "numel")
BUILTIN_ARITY = {
    "rank": 1,
    "shape": 1,
    "dim": 2,
    "dtype": 1,
    "numel": 1,
    "len": 1,
    "value": 1,
    "broadcasts_to": 2,
}
BUILTINS = (*TENSOR_QUERIES, "len", "value", "broadcasts_to")
VALUES = "__values__"  # env key: tensor variable -> its scalar value, for value(x)


def _freeze(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_freeze(x) for x in v)
    return v


def evaluate(expr: ast.expr, env: Mapping[str, Any], dims: DimOps | None) -> Any:
    """Evaluate a guard or attribute expression.

    ``env`` maps tensor variables to objects with ``.shape`` and ``.dtype`` (shape dims in the
    domain of ``dims``) and attribute variables to their values. Comparisons of dims go through
    ``dims`` (so Z3 dims give Z3 booleans); with ``dims`` None, plain Python semantics.
    """
    return _Eval(env, dims).visit(expr)


class _Eval:
    def __init__(self, env: Mapping[str, Any], dims: DimOps | None) -> None:
        self.env, self.d = env, dims

    def visit(self, node: ast.expr) -> Any:
        meth = getattr(self, "v_" + type(node).__name__, None)
        if meth is None:
            raise RuleError(f"'{ast.unparse(node)}' is not allowed in a rule expression")
        return meth(node)

    def v_Constant(self, n: ast.Constant) -> Any:
        return n.value

    def v_Name(self, n: ast.Name) -> Any:
        if n.id in self.env:
            return self.env[n.id]
        if n.id in ("True", "False", "None"):
            return {"True": True, "False": False, "None": None}[n.id]
        raise RuleError(f"'{n.id}' is not bound")

    def v_List(self, n: ast.List) -> Any:
        return tuple(self.visit(e) for e in n.elts)

    v_Tuple = v_List

    def v_Subscript(self, n: ast.Subscript) -> Any:
        base = self.visit(n.value)
        if isinstance(n.slice, ast.Slice):
            parts = [
                None if p is None else self.visit(p)
                for p in (n.slice.lower, n.slice.upper, n.slice.step)
            ]
            return tuple(base[slice(*parts)])
        return base[self.visit(n.slice)]

    def v_UnaryOp(self, n: ast.UnaryOp) -> Any:
        v = self.visit(n.operand)
        if isinstance(n.op, ast.Not):
            return self._not(v)
        if isinstance(n.op, ast.USub):
            return -v
        if isinstance(n.op, ast.UAdd):
            return v
        raise RuleError(f"operator in '{ast.unparse(n)}' is not allowed")

    def v_BinOp(self, n: ast.BinOp) -> Any:
        a, b = self.visit(n.left), self.visit(n.right)
        ops = {
            ast.Add: lambda: a + b,
            ast.Sub: lambda: a - b,
            ast.Mult: lambda: a * b,
            ast.FloorDiv: lambda: self.d.floordiv(a, b) if self.d else a // b,
            ast.Mod: lambda: a % b,
            ast.Div: lambda: a / b,
            ast.Pow: lambda: a**b,
        }
        fn = ops.get(type(n.op))
        if fn is None:
            raise RuleError(f"operator in '{ast.unparse(n)}' is not allowed")
        return fn()

    def v_BoolOp(self, n: ast.BoolOp) -> Any:
        vals = []
        for e in n.values:
            v = self.visit(e)
            # Short-circuit on plain Python truth so guards like 'rank(a) == 2 and dim(a, 1) == 4'
            # never index a dimension that does not exist.
            if isinstance(v, bool):
                if isinstance(n.op, ast.And) and not v:
                    return False
                if isinstance(n.op, ast.Or) and v:
                    return True
                continue
            vals.append(v)
        if not vals:
            return isinstance(n.op, ast.And)
        if self.d is None:
            return all(vals) if isinstance(n.op, ast.And) else any(vals)
        return self.d.and_(*vals) if isinstance(n.op, ast.And) else self.d.or_(*vals)

    def v_IfExp(self, n: ast.IfExp) -> Any:
        c = self.visit(n.test)
        if not isinstance(c, bool):
            if self.d is None:
                c = bool(c)
            else:
                return self.d.select(c, self.visit(n.body), self.visit(n.orelse))
        return self.visit(n.body) if c else self.visit(n.orelse)

    def v_Compare(self, n: ast.Compare) -> Any:
        left = self.visit(n.left)
        results = []
        for op, right_node in zip(n.ops, n.comparators, strict=True):
            right = self.visit(right_node)
            results.append(self._cmp(op, left, right))
            left = right
        if len(results) == 1:
            return results[0]
        if all(isinstance(r, bool) for r in results):
            return all(results)
        return self.d.and_(*results) if self.d else all(results)

    def _eq(self, a: Any, b: Any) -> Any:
        if isinstance(a, tuple) and isinstance(b, tuple):
            if len(a) != len(b):
                return False
            parts = [self._eq(x, y) for x, y in zip(a, b, strict=True)]
            if all(isinstance(p, bool) for p in parts):
                return all(parts)
            return self.d.and_(*parts) if self.d else all(parts)
        if isinstance(a, (str, tuple, type(None))) or isinstance(b, (str, tuple, type(None))):
            return a == b
        return self.d.eq(a, b) if self.d else a == b

    def _not(self, v: Any) -> Any:
        if isinstance(v, bool):
            return not v
        if self.d is None:
            return not v
        return self.d.not_(v)

    def _cmp(self, op: ast.cmpop, a: Any, b: Any) -> Any:
        if isinstance(op, ast.Eq):
            return self._eq(a, b)
        if isinstance(op, ast.NotEq):
            return self._not(self._eq(a, b))
        if isinstance(op, ast.In):
            return a in b
        if isinstance(op, ast.NotIn):
            return a not in b
        ge = self.d.ge if self.d else (lambda x, y: x >= y)
        if isinstance(op, ast.GtE):
            return ge(a, b)
        if isinstance(op, ast.LtE):
            return ge(b, a)
        if isinstance(op, ast.Gt):
            return ge(a, b + 1) if _is_int_like(a, b) else a > b
        if isinstance(op, ast.Lt):
            return ge(b, a + 1) if _is_int_like(a, b) else a < b
        raise RuleError("comparison not allowed")

    def v_Call(self, n: ast.Call) -> Any:
        assert isinstance(n.func, ast.Name)
        name = n.func.id
        if name == "value":
            arg = n.args[0]
            vals = self.env.get(VALUES, {})
            if not isinstance(arg, ast.Name) or vals.get(arg.id) is None:
                raise _GuardFalse  # not a one-element constant: the rule does not apply
            return vals[arg.id]
        args = [self.visit(a) for a in n.args]
        if name in TENSOR_QUERIES:
            t = args[0]
            if name == "rank":
                return len(t.shape)
            if name == "shape":
                return tuple(t.shape)
            if name == "dtype":
                return t.dtype
            if name == "numel":
                out: Any = 1
                for d in t.shape:
                    out = out * d
                return out
            i = args[1]
            if not -len(t.shape) <= i < len(t.shape):
                # An out-of-range dim makes the guard false rather than crash the match.
                raise _GuardFalse
            return t.shape[i]
        if name == "len":
            return len(args[0])
        if name == "broadcasts_to":
            return self._broadcasts_to(*args)
        return RULE_FUNCTIONS[name](*args)

    def _broadcasts_to(self, a: tuple, b: tuple) -> Any:
        """Does shape ``a`` broadcast (numpy rules) to exactly shape ``b``?"""
        if len(a) > len(b):
            return False
        pairs = list(zip(a[::-1], b[::-1], strict=False))
        if self.d is None:
            return all(x == 1 or x == y for x, y in pairs)
        return self.d.and_(*[self.d.or_(self.d.eq(x, 1), self.d.eq(x, y)) for x, y in pairs])


def _is_int_like(a: Any, b: Any) -> bool:
    return not (isinstance(a, float) or isinstance(b, float))


class _GuardFalse(Exception):
    """Raised inside evaluation when a guard refers to something the match does not have."""


def guard_holds(expr: ast.expr | None, env: Mapping[str, Any], dims: DimOps) -> bool:
    """True when ``expr`` evaluates to a definite True (symbolic undecided counts as False)."""
    if expr is None:
        return True
    try:
        v = evaluate(expr, env, dims)
    except (
        _GuardFalse,
        ShapeError,
        TypeError,
        ValueError,
        IndexError,
        KeyError,
        ZeroDivisionError,
    ):
        return False
    return (
        v is True
        or (isinstance(v, (int, float)) and not isinstance(v, bool) and bool(v))
        or (hasattr(v, "is_Boolean") and bool(v == True))  # noqa: E712  (sympy true)
    )


def eval_attr(expr: ast.expr, env: Mapping[str, Any]) -> Any:
    """Evaluate a replacement attribute expression to a frozen attribute value."""
    from satura.engine.graph import freeze_attr

    v = evaluate(expr, env, None)
    if isinstance(v, float) and math.isnan(v):
        return v
    return freeze_attr(v)
