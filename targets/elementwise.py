"""Fused elementwise kernels: an ``ew`` expression tree over broadcast inputs, one vector pass.

The output's dimensions are collapsed where every operand is contiguous across them, so the inner
loop runs over the last collapsed dimension with each input either contiguous (vector load) or
broadcast (one scalar per row, splat). The inner loop is written with explicit ``<L x float>``
vectors; a scalar loop finishes the remainder. Outputs larger than the caches are written with
streaming stores (``STREAM_BYTES``).

Expressions are typed (:func:`typed_expr_dtype`): besides fp32 maths they may compare (fp32 with
IEEE ordered predicates, integers signed or unsigned, bools), combine bools (``not``, ``and``,
``or``), test ``isnan``, ``where``-select and convert (``("cast", child, dtype)``). A bool is a
0/1 byte in memory, read as ``<L x i8>`` and turned into ``<L x i1>`` (``icmp ne 0``), and stored
``zext``'d back to bytes.
A pure-fp32 expression over fp32 operands gives exactly the code it always did.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from satura.engine.errors import CodegenError
from satura.targets.irmath import BINARY_OPS, UNARY_OPS, Emitter
from satura.targets.kernel import BASE_ALIGN, Operand, body_header, share, wrapper

Expr = tuple[Any, ...]
WIDE = 4  # vectors per value in the main loop of long rows
# Outputs at least this large are written with non-temporal (streaming) stores: they do not stay
# in the caches anyway (inputs plus output pass the L3), and a streaming store skips the read of
# each destination line that a normal store makes first (a third of the kernel's DRAM traffic).
STREAM_BYTES = 8 << 20


def expr_supported(expr: Expr) -> bool:
    """Whether every node of ``expr`` has a lowering."""
    head = expr[0]
    if head in ("in", "const"):
        return True
    if head in UNARY_OPS or head == "gelu_tanh":
        return len(expr) == 2 and expr_supported(expr[1])
    if head in BINARY_OPS:
        return len(expr) == 3 and all(expr_supported(c) for c in expr[1:])
    return False


def broadcast_strides(shape: Sequence[int], out: Sequence[int]) -> list[int]:
    """Element strides of a C-contiguous ``shape`` read at ``out``'s indices (0 where broadcast)."""
    full = [1] * (len(out) - len(shape)) + list(shape)
    strides, acc = [0] * len(out), 1
    for d in range(len(out) - 1, -1, -1):
        strides[d] = 0 if full[d] == 1 and out[d] != 1 else acc
        acc *= full[d]
    return strides


def collapse(out: Sequence[int], in_strides: list[list[int]]) -> tuple[list[int], list[list[int]]]:
    """Merge adjacent dims that every operand walks contiguously; drop size-1 dims."""
    dims = [d for d in range(len(out)) if out[d] != 1]
    shape = [out[d] for d in dims]
    strides = [[s[d] for d in dims] for s in in_strides]
    if not shape:
        return [1], [[0] for _ in in_strides]
    ms, mst = [shape[0]], [[s[0]] for s in strides]
    for i in range(1, len(shape)):
        if all(st[i - 1] == st[i] * shape[i] for st in strides):
            ms[-1] *= shape[i]
            for k, st in enumerate(strides):
                mst[k][-1] = st[i]
        else:
            ms.append(shape[i])
            for k, st in enumerate(strides):
                mst[k].append(st[i])
    return ms, mst


def _eval(expr: Expr, em: Emitter, leaves: list[str], memo: dict[Expr, str]) -> str:
    if expr in memo:
        return memo[expr]
    head = expr[0]
    if head == "in":
        r = leaves[expr[1]]
    elif head == "const":
        r = em.const(float(expr[1]))
    elif len(expr) == 2:
        r = em.unary(head, _eval(expr[1], em, leaves, memo))
    else:
        r = em.binary(head, _eval(expr[1], em, leaves, memo), _eval(expr[2], em, leaves, memo))
    memo[expr] = r
    return r


def apply_expr(expr: Expr, em: Emitter, leaves: list[str]) -> str:
    """Emit ``expr`` with ``em`` over the given leaf values; returns the result's name."""
    return _eval(expr, em, leaves, {})


# -- typed expressions -----------------------------------------------------------------------------
# dtype -> (LLVM type of one element in memory, kind): "f" fp32, "b" bool (a 0/1 byte, i1 once
# loaded), "s" signed and "u" unsigned integers.
LEAF_TYPES: dict[str, tuple[str, str]] = {
    "float32": ("float", "f"),
    "float16": ("half", "h"),  # converted to and from fp32 only (``cast_supported``)
    "bool": ("i8", "b"),
    "int8": ("i8", "s"),
    "int16": ("i16", "s"),
    "int32": ("i32", "s"),
    "int64": ("i64", "s"),
    "uint8": ("i8", "u"),
    "uint16": ("i16", "u"),
    "uint32": ("i32", "u"),
    "uint64": ("i64", "u"),
}
# op -> (fcmp predicate, signed icmp predicate, unsigned icmp predicate). The ordered fcmp
# predicates are false when either side is NaN, as numpy's comparisons are.
COMPARISONS: dict[str, tuple[str, str, str]] = {
    "equal": ("oeq", "eq", "eq"),
    "less": ("olt", "slt", "ult"),
    "less_equal": ("ole", "sle", "ule"),
    "greater": ("ogt", "sgt", "ugt"),
    "greater_equal": ("oge", "sge", "uge"),
}
LOGIC_OPS = frozenset({"and", "or"})
# integer ops -> their LLVM instruction (shifts: see ``_Typed.shift``)
BITWISE_OPS = {"bitwise_and": "and", "bitwise_or": "or", "bitwise_xor": "xor"}
SHIFTS = frozenset({"shift_left", "shift_right"})
FLOAT_UNARY = UNARY_OPS | {"gelu_tanh"}
# integer arithmetic, wrapping as numpy's (division truncates toward zero; by 0 gives 0)
INT_BINARY = frozenset({"add", "sub", "mul", "div", "max", "min"})
INT_UNARY = frozenset({"neg", "abs", "relu", "identity"})
# The ops a typed expression may hold besides fp32 maths.
TYPED_OPS = (
    frozenset(COMPARISONS)
    | LOGIC_OPS
    | frozenset(BITWISE_OPS)
    | SHIFTS
    | {"not", "isnan", "where", "bitwise_not"}
)
# ("cast", child, dtype) converts between kernel dtypes (see ``cast_supported``).


def _value_type(dtype: str) -> str:
    """The LLVM type of one element of ``dtype`` in registers (bools are i1)."""
    ty, kind = LEAF_TYPES[dtype]
    return "i1" if kind == "b" else ty


def _vec(ty: str, lanes: int) -> str:
    return ty if lanes == 1 else f"<{lanes} x {ty}>"


def pin_consts(expr: Expr, in_dtypes: Sequence[str]) -> Expr | None:
    """``expr`` with every untyped constant ``("const", c)`` typed as the ``ew`` reference types
    it: ``("const", c, dtype of input 0)``. None if that dtype has no kernel type or ``c`` does
    not convert to it."""
    head = expr[0]
    if head == "in":
        return expr
    if head == "const":
        if len(expr) == 3:
            return expr
        dt = in_dtypes[0] if in_dtypes else "float32"
        if dt not in LEAF_TYPES:
            return None
        try:
            with np.errstate(all="ignore"):
                v = np.asarray(expr[1], dtype=dt).item()
        except (OverflowError, ValueError):
            return None
        return ("const", v, dt)
    if head == "cast":
        kid = pin_consts(expr[1], in_dtypes)
        return None if kid is None else (head, kid, *expr[2:])
    kids = [pin_consts(c, in_dtypes) for c in expr[1:]]
    if any(k is None for k in kids):
        return None
    return (head, *kids)


def cast_supported(src: str, dst: str) -> bool:
    """Whether the kernel converts ``src`` to ``dst`` exactly as numpy's ``astype`` does: every
    pair of kernel dtypes except fp32 to an integer (NaN and out-of-range values have no numpy
    answer to match)."""
    if src not in LEAF_TYPES or dst not in LEAF_TYPES:
        return False
    sk, dk = LEAF_TYPES[src][1], LEAF_TYPES[dst][1]
    if "h" in (sk, dk):  # half converts to and from fp32 only
        return src == dst or {sk, dk} == {"h", "f"}
    return not (sk == "f" and dk in "su")


def _infer(expr: Expr, in_dtypes: Sequence[str], memo: dict[Expr, str | None]) -> str | None:
    """The dtype of a const-pinned ``expr`` (None: no kernel evaluates it)."""
    if expr in memo:
        return memo[expr]
    head, n = expr[0], len(expr) - 1
    t: str | None = None
    if head == "in":
        k = expr[1]
        t = in_dtypes[k] if 0 <= k < len(in_dtypes) and in_dtypes[k] in LEAF_TYPES else None
    elif head == "const":
        t = expr[2] if n == 2 and expr[2] in LEAF_TYPES else None
    elif head == "cast":  # ("cast", child, dtype)
        src = _infer(expr[1], in_dtypes, memo) if n == 2 else None
        t = expr[2] if src is not None and cast_supported(src, expr[2]) else None
    else:
        kids = [_infer(c, in_dtypes, memo) for c in expr[1:]]
        if None in kids or "float16" in kids:  # half is only ever cast
            t = None
        elif (head in FLOAT_UNARY and n == 1) or (head in BINARY_OPS and n == 2):
            t = "float32" if all(k == "float32" for k in kids) else None
            if t is None and ((head in INT_UNARY and n == 1) or (head in INT_BINARY and n == 2)):
                same = all(k == kids[0] for k in kids)
                t = kids[0] if same and LEAF_TYPES[kids[0]][1] in "su" else None
        elif head in COMPARISONS and n == 2:
            t = "bool" if kids[0] == kids[1] else None
        elif head == "isnan" and n == 1:
            t = "bool" if kids[0] == "float32" else None
        elif (head == "not" and n == 1) or (head in LOGIC_OPS and n == 2):
            t = "bool" if all(k == "bool" for k in kids) else None
        elif head == "where" and n == 3:
            t = kids[1] if kids[0] == "bool" and kids[1] == kids[2] else None
        elif (head == "bitwise_not" and n == 1) or (
            (head in BITWISE_OPS or head in SHIFTS) and n == 2 and kids[0] == kids[1]
        ):
            t = kids[0] if LEAF_TYPES[kids[0]][1] in "su" else None
    memo[expr] = t
    return t


def typed_expr_dtype(expr: Expr, in_dtypes: Sequence[str]) -> str | None:
    """The dtype ``expr`` computes from inputs of ``in_dtypes`` (its constants typed as the
    ``ew`` reference types them), or None where the kernel cannot evaluate it: an op without a
    lowering, a dtype without a kernel type, or operands whose dtypes differ (numpy would
    promote them; ONNX never asks)."""
    pinned = pin_consts(expr, in_dtypes)
    return None if pinned is None else _infer(pinned, in_dtypes, {})


class _Typed:
    """Emits a const-pinned typed expression at ``em``'s lane count over loaded leaves."""

    def __init__(self, em: Emitter, leaves: list[str], in_dtypes: Sequence[str]) -> None:
        self.em, self.leaves, self.in_dtypes = em, leaves, in_dtypes
        self.types: dict[Expr, str | None] = {}
        self.memo: dict[Expr, str] = {}

    def ty(self, dtype: str) -> str:
        return _vec(_value_type(dtype), self.em.lanes)

    def const(self, value: float | int | bool, dtype: str) -> str:
        kind = LEAF_TYPES[dtype][1]
        if kind == "f":
            return self.em.const(float(value))
        scalar = ("true" if value else "false") if kind == "b" else str(int(value))
        if self.em.lanes == 1:
            return scalar
        return "<" + ", ".join([f"{_value_type(dtype)} {scalar}"] * self.em.lanes) + ">"

    def line(self, rhs: str) -> str:
        r = self.em.tmp()
        self.em.lines.append(f"  {r} = {rhs}")
        return r

    def emit(self, expr: Expr) -> str:
        if expr in self.memo:
            return self.memo[expr]
        head = expr[0]
        dtype = _infer(expr, self.in_dtypes, self.types)
        if dtype is None:
            raise CodegenError(f"elementwise expression {expr!r} is not typed")
        if head == "in":
            r = self.leaves[expr[1]]
        elif head == "const":
            r = self.const(expr[1], dtype)
        elif head == "cast":
            src = _infer(expr[1], self.in_dtypes, self.types)
            assert src is not None
            r = self.cast(self.emit(expr[1]), src, dtype)
        else:
            kids = [self.emit(c) for c in expr[1:]]
            kid_types = [_infer(c, self.in_dtypes, self.types) or "" for c in expr[1:]]
            r = self.op(head, kids, kid_types)
        self.memo[expr] = r
        return r

    def cast(self, v: str, src: str, dst: str) -> str:
        """``v`` of ``src`` converted to ``dst`` as numpy's astype does (``cast_supported``)."""
        (sty, sk), (dty, dk) = LEAF_TYPES[src], LEAF_TYPES[dst]
        if src == dst or (sk == dk == "b"):
            return v
        a, b = self.ty(src), self.ty(dst)
        zero = "zeroinitializer" if self.em.lanes > 1 else ("0.0" if sk == "f" else "0")
        if dk == "b":
            return self.line(
                f"fcmp une {a} {v}, {zero}" if sk == "f" else f"icmp ne {a} {v}, {zero}"
            )
        if "h" in (sk, dk):  # to or from fp32 (``cast_supported``): exact, or rounded to even
            return self.line(f"{'fpext' if sk == 'h' else 'fptrunc'} {a} {v} to {b}")
        if dk == "f":
            conv = "sitofp" if sk == "s" else "uitofp"  # bools convert as unsigned 0/1
            return self.line(f"{conv} {a} {v} to {b}")
        sbits, dbits = (1 if sk == "b" else int(sty[1:])), int(dty[1:])
        if sbits == dbits:
            return v  # same width: the bits are the value (numpy wraps the same way)
        conv = "trunc" if dbits < sbits else ("sext" if sk == "s" else "zext")
        return self.line(f"{conv} {a} {v} to {b}")

    def op(self, head: str, kids: list[str], kid_types: list[str]) -> str:
        em = self.em
        if head in INT_BINARY | INT_UNARY and LEAF_TYPES[kid_types[0]][1] in "su":
            return self.int_op(head, kids, kid_types[0])
        if head in FLOAT_UNARY:
            return em.unary(head, kids[0])
        if head in BINARY_OPS:
            return em.binary(head, kids[0], kids[1])
        if head == "where":
            cty, vty = self.ty("bool"), self.ty(kid_types[1])
            return self.line(f"select {cty} {kids[0]}, {vty} {kids[1]}, {vty} {kids[2]}")
        ty = self.ty(kid_types[0])
        if head in COMPARISONS:
            fp, signed, unsigned = COMPARISONS[head]
            kind = LEAF_TYPES[kid_types[0]][1]
            cmp = f"fcmp {fp}" if kind == "f" else f"icmp {signed if kind == 's' else unsigned}"
            return self.line(f"{cmp} {ty} {kids[0]}, {kids[1]}")
        if head == "isnan":
            return self.line(f"fcmp uno {ty} {kids[0]}, {kids[0]}")
        if head == "not":
            return self.line(f"xor {ty} {kids[0]}, {self.const(True, 'bool')}")
        if head in LOGIC_OPS:
            return self.line(f"{head} {ty} {kids[0]}, {kids[1]}")
        if head in BITWISE_OPS:
            return self.line(f"{BITWISE_OPS[head]} {ty} {kids[0]}, {kids[1]}")
        if head == "bitwise_not":
            return self.line(f"xor {ty} {kids[0]}, {self.const(-1, kid_types[0])}")
        if head in SHIFTS:
            return self.shift(head == "shift_left", kids[0], kids[1], kid_types[0])
        raise CodegenError(f"no LLVM lowering for elementwise op '{head}'")

    def int_op(self, head: str, kids: list[str], dtype: str) -> str:
        """Integer arithmetic as numpy computes it: wrapping, division truncating toward zero,
        a division by 0 giving 0 and INT_MIN / -1 wrapping (neither traps)."""
        ty, cty = self.ty(dtype), self.ty("bool")
        signed = LEAF_TYPES[dtype][1] == "s"
        zero = self.const(0, dtype)
        a = kids[0]
        if head == "identity":
            return a
        if head == "neg":
            return self.line(f"sub {ty} {zero}, {a}")
        if head in ("abs", "relu"):
            if not signed:
                return a  # unsigned: never below 0
            neg = self.line(f"icmp slt {ty} {a}, {zero}")
            other = self.line(f"sub {ty} {zero}, {a}") if head == "abs" else zero
            return self.line(f"select {cty} {neg}, {ty} {other}, {ty} {a}")
        b = kids[1]
        if head in ("add", "sub", "mul"):
            return self.line(f"{head} {ty} {a}, {b}")
        if head in ("max", "min"):
            pred = ("s" if signed else "u") + ("gt" if head == "max" else "lt")
            pick = self.line(f"icmp {pred} {ty} {a}, {b}")
            return self.line(f"select {cty} {pick}, {ty} {a}, {ty} {b}")
        # div: a safe divisor (1 where b is 0, or -1 for signed), the special cases selected
        by_zero = self.line(f"icmp eq {ty} {b}, {zero}")
        if not signed:
            safe = self.line(f"select {cty} {by_zero}, {ty} {self.const(1, dtype)}, {ty} {b}")
            q = self.line(f"udiv {ty} {a}, {safe}")
            return self.line(f"select {cty} {by_zero}, {ty} {zero}, {ty} {q}")
        by_m1 = self.line(f"icmp eq {ty} {b}, {self.const(-1, dtype)}")
        odd = self.line(f"or {cty} {by_zero}, {by_m1}")
        safe = self.line(f"select {cty} {odd}, {ty} {self.const(1, dtype)}, {ty} {b}")
        q = self.line(f"sdiv {ty} {a}, {safe}")
        neg = self.line(f"sub {ty} {zero}, {a}")
        q = self.line(f"select {cty} {by_m1}, {ty} {neg}, {ty} {q}")
        return self.line(f"select {cty} {by_zero}, {ty} {zero}, {ty} {q}")

    def shift(self, left: bool, a: str, b: str, dtype: str) -> str:
        """ONNX's BitShift: an amount outside [0, bits) (unsigned compare: negatives too) gives
        0, or for a signed right shift the sign (an arithmetic shift by bits - 1)."""
        ty = self.ty(dtype)
        bits = int(LEAF_TYPES[dtype][0][1:])
        signed = LEAF_TYPES[dtype][1] == "s"
        ok = self.line(f"icmp ult {ty} {b}, {self.const(bits, dtype)}")
        cty = self.ty("bool")
        if not left and signed:
            amount = self.line(f"select {cty} {ok}, {ty} {b}, {ty} {self.const(bits - 1, dtype)}")
            return self.line(f"ashr {ty} {a}, {amount}")
        amount = self.line(f"select {cty} {ok}, {ty} {b}, {ty} {self.const(0, dtype)}")
        moved = self.line(f"{'shl' if left else 'lshr'} {ty} {a}, {amount}")
        return self.line(f"select {cty} {ok}, {ty} {moved}, {ty} {self.const(0, dtype)}")


def _leaf_lines(L: list[str], dtype: str, name: str, ptr: str, lanes: int) -> None:
    """Load ``lanes`` elements of ``dtype`` from ``ptr`` as the value ``name`` (bools: i1)."""
    ety, kind = LEAF_TYPES[dtype]
    size = np.dtype(dtype).itemsize
    vty = _vec(ety, lanes)
    if kind != "b":
        L.append(f"  {name} = load {vty}, ptr {ptr}, align {size}")
        return
    zero = "0" if lanes == 1 else "zeroinitializer"
    L += [
        f"  {name}b = load {vty}, ptr {ptr}, align 1",
        f"  {name} = icmp ne {vty} {name}b, {zero}",
    ]


def ew_kernel(
    name: str,
    expr: Expr,
    out: Operand,
    out_shape: Sequence[int],
    ins: Sequence[tuple[Operand, Sequence[int]]],
    lanes: int,
    dtypes: Sequence[str] | None = None,
) -> str:
    """LLVM IR of a kernel computing ``expr`` over broadcast inputs into ``out``.

    ``dtypes``: the inputs' dtypes (default: all float32). An fp32 expression over fp32 inputs
    is emitted by the fp32 maths alone; anything else goes through the typed emitter, and the
    output's dtype is the expression's (:func:`typed_expr_dtype`). Raises CodegenError when the
    expression has an op without a lowering or does not type."""
    dts = list(dtypes) if dtypes is not None else ["float32"] * len(ins)
    if len(dts) != len(ins):
        raise CodegenError(f"kernel {name}: {len(ins)} inputs but {len(dts)} dtypes")
    typed = any(d != "float32" for d in dts) or not expr_supported(expr)
    if typed:
        pinned = pin_consts(expr, dts)
        out_dtype = None if pinned is None else _infer(pinned, dts, {})
        if pinned is None or out_dtype is None:
            raise CodegenError(
                f"kernel {name}: expression {expr!r} over {dts} has an op "
                "without a lowering or operands of differing dtypes"
            )
        expr = pinned
    else:
        out_dtype = "float32"
    oty = LEAF_TYPES[out_dtype][0]
    osize = np.dtype(out_dtype).itemsize
    shape, strides = collapse(list(out_shape), [broadcast_strides(s, out_shape) for _, s in ins])
    n = shape[-1]
    rows = 1
    for s in shape[:-1]:
        rows *= s
    nin = len(ins)
    # Long rows: <4L x float> values, which LLVM splits into 4 independent register chains (the
    # maths polynomials are long dependency chains; four in flight keep the FMA units busy).
    lanes = lanes * WIDE if n >= 64 * lanes else lanes
    # Streaming vector stores need aligned addresses: the table's bases are BASE_ALIGN-aligned,
    # so the output's offset and each row's start must keep that alignment. (Narrow outputs
    # stream only in whole 16-byte vectors.)
    align = min(BASE_ALIGN, osize * lanes)
    stream = (
        osize * n * rows >= STREAM_BYTES
        and out.offset % BASE_ALIGN == 0
        and (rows == 1 or (osize * n) % align == 0)
        and osize * lanes >= 16
    )
    vstore = f"align {align}, !nontemporal !{{i32 1}}" if stream else f"align {osize}"
    L: list[str] = [body_header(name, nin + 1), "entry:"]
    if rows == 1:
        share(L, n, lanes, "%lo", "%hi")
        L += ["  %r0 = add i64 0, 0", "  %r1 = add i64 1, 0"]
    else:
        share(L, rows, 1, "%r0", "%r1")
        L += ["  %lo = add i64 0, 0", f"  %hi = add i64 {n}, 0"]
    L += [
        "  %span = sub i64 %hi, %lo",
        f"  %nv = and i64 %span, {-lanes}",
        "  %vend = add i64 %lo, %nv",
        "  %any = icmp ult i64 %r0, %r1",
        "  br i1 %any, label %row, label %done",
        "row:",
        "  %r = phi i64 [%r0, %entry], [%rn, %rowend]",
    ]
    # Per-row base offsets of every input (outer dims by div/mod with constants).
    for k in range(nin):
        terms, inner = [], 1
        for d in range(len(shape) - 2, -1, -1):
            if strides[k][d]:
                L += [
                    f"  %q{k}_{d} = udiv i64 %r, {inner}",
                    f"  %i{k}_{d} = urem i64 %q{k}_{d}, {shape[d]}",
                    f"  %t{k}_{d} = mul i64 %i{k}_{d}, {strides[k][d]}",
                ]
                terms.append(f"%t{k}_{d}")
            inner *= shape[d]
        acc = "0"
        for j, t in enumerate(terms):
            L.append(f"  %b{k}_{j} = add i64 {acc}, {t}")
            acc = f"%b{k}_{j}"
        L.append(f"  %base{k} = add i64 {acc}, 0")
        if strides[k][-1] == 0:
            ety, vt = LEAF_TYPES[dts[k]][0], _value_type(dts[k])
            kvty = _vec(vt, lanes)
            L.append(f"  %sp{k} = getelementptr {ety}, ptr %a{k + 1}, i64 %base{k}")
            _leaf_lines(L, dts[k], f"%sc{k}", f"%sp{k}", 1)
            L += [
                f"  %si{k} = insertelement {kvty} poison, {vt} %sc{k}, i64 0",
                f"  %sv{k} = shufflevector {kvty} %si{k}, {kvty} poison, "
                f"<{lanes} x i32> zeroinitializer",
            ]
    L += [
        f"  %obase = mul i64 %r, {n}",
        "  %hasv = icmp ult i64 %lo, %vend",
        "  br i1 %hasv, label %vloop, label %vexit",
        "vloop:",
        "  %j = phi i64 [%lo, %row], [%jn, %vloop]",
    ]
    leaves = []
    for k in range(nin):
        if strides[k][-1] == 0:
            leaves.append(f"%sv{k}")
            continue
        L += [
            f"  %vi{k} = add i64 %base{k}, %j",
            f"  %vp{k} = getelementptr {LEAF_TYPES[dts[k]][0]}, ptr %a{k + 1}, i64 %vi{k}",
        ]
        _leaf_lines(L, dts[k], f"%vl{k}", f"%vp{k}", lanes)
        leaves.append(f"%vl{k}")
    res = _emit(expr, typed, Emitter(L, lanes), leaves, dts)
    res = _store_value(L, res, out_dtype, lanes, "%vz")
    L += [
        "  %vo = add i64 %obase, %j",
        f"  %vop = getelementptr {oty}, ptr %a0, i64 %vo",
        f"  store {_vec(oty, lanes)} {res}, ptr %vop, {vstore}",
        f"  %jn = add i64 %j, {lanes}",
        "  %vmore = icmp ult i64 %jn, %vend",
        "  br i1 %vmore, label %vloop, label %vexit",
        "vexit:",
        "  %hass = icmp ult i64 %vend, %hi",
        "  br i1 %hass, label %sloop, label %rowend",
        "sloop:",
        "  %s = phi i64 [%vend, %vexit], [%sn, %sloop]",
    ]
    leaves = []
    for k in range(nin):
        if strides[k][-1] == 0:
            leaves.append(f"%sc{k}")
            continue
        L += [
            f"  %xi{k} = add i64 %base{k}, %s",
            f"  %xp{k} = getelementptr {LEAF_TYPES[dts[k]][0]}, ptr %a{k + 1}, i64 %xi{k}",
        ]
        _leaf_lines(L, dts[k], f"%xl{k}", f"%xp{k}", 1)
        leaves.append(f"%xl{k}")
    res = _emit(expr, typed, Emitter(L, 1), leaves, dts)
    res = _store_value(L, res, out_dtype, 1, "%sz")
    L += [
        "  %so = add i64 %obase, %s",
        f"  %sop = getelementptr {oty}, ptr %a0, i64 %so",
        f"  store {oty} {res}, ptr %sop, align {osize}",
        "  %sn = add i64 %s, 1",
        "  %smore = icmp ult i64 %sn, %hi",
        "  br i1 %smore, label %sloop, label %rowend",
        "rowend:",
        "  %rn = add i64 %r, 1",
        "  %rmore = icmp ult i64 %rn, %r1",
        "  br i1 %rmore, label %row, label %done",
        "done:",
        # Streaming stores are weakly ordered: fence them before this share counts as done,
        # so another core that reads the output next sees every value.
        *(["  call void @sat_store_fence()"] if stream else []),
        "  ret void",
        "}",
    ]
    return wrapper(name, [out] + [o for o, _ in ins]) + "\n" + "\n".join(L)


def _emit(expr: Expr, typed: bool, em: Emitter, leaves: list[str], dts: Sequence[str]) -> str:
    """The expression's value: the fp32 emitter alone, or the typed one."""
    if not typed:
        return _eval(expr, em, leaves, {})
    return _Typed(em, leaves, dts).emit(expr)


def _store_value(L: list[str], v: str, dtype: str, lanes: int, name: str) -> str:
    """``v`` as it is stored: bools (i1) widened to 0/1 bytes."""
    if LEAF_TYPES[dtype][1] != "b":
        return v
    L.append(f"  {name} = zext {_vec('i1', lanes)} {v} to {_vec('i8', lanes)}")
    return name
