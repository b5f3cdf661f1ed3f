"""Fused elementwise kernels: an ``ew`` expression tree over broadcast inputs, one vector pass.

The output's dimensions are collapsed where every operand is contiguous across them, so the inner
loop runs over the last collapsed dimension with each input either contiguous (vector load) or
broadcast (one scalar per row, splat). The inner loop is written with explicit ``<L x float>``
vectors; a scalar loop finishes the remainder. Outputs larger than the caches are written with
streaming stores (``STREAM_BYTES``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from satura.engine.errors import CodegenError
from satura.targets.irmath import BINARY_OPS, UNARY_OPS, Emitter, vec_type
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


def ew_kernel(name: str, expr: Expr, out: Operand, out_shape: Sequence[int],
              ins: Sequence[tuple[Operand, Sequence[int]]], lanes: int) -> str:
    """LLVM IR of a kernel computing ``expr`` over broadcast fp32 inputs into ``out``."""
    if not expr_supported(expr):
        raise CodegenError(f"kernel {name}: expression has an op without a lowering")
    shape, strides = collapse(list(out_shape), [broadcast_strides(s, out_shape) for _, s in ins])
    n = shape[-1]
    rows = 1
    for s in shape[:-1]:
        rows *= s
    nin = len(ins)
    # Long rows: <4L x float> values, which LLVM splits into 4 independent register chains (the
    # maths polynomials are long dependency chains; four in flight keep the FMA units busy).
    lanes = lanes * WIDE if n >= 64 * lanes else lanes
    vty = vec_type(lanes)
    # Streaming vector stores need aligned addresses: the table's bases are BASE_ALIGN-aligned,
    # so the output's offset and each row's start must keep that alignment.
    align = min(BASE_ALIGN, 4 * lanes)
    stream = (4 * n * rows >= STREAM_BYTES and out.offset % BASE_ALIGN == 0
              and (rows == 1 or (4 * n) % align == 0))
    vstore = f"align {align}, !nontemporal !{{i32 1}}" if stream else "align 4"
    L: list[str] = [body_header(name, nin + 1), "entry:"]
    if rows == 1:
        share(L, n, lanes, "%lo", "%hi")
        L += ["  %r0 = add i64 0, 0", "  %r1 = add i64 1, 0"]
    else:
        share(L, rows, 1, "%r0", "%r1")
        L += ["  %lo = add i64 0, 0", f"  %hi = add i64 {n}, 0"]
    L += ["  %span = sub i64 %hi, %lo", f"  %nv = and i64 %span, {-lanes}",
          "  %vend = add i64 %lo, %nv", "  %any = icmp ult i64 %r0, %r1",
          "  br i1 %any, label %row, label %done", "row:",
          "  %r = phi i64 [%r0, %entry], [%rn, %rowend]"]
    # Per-row base offsets of every input (outer dims by div/mod with constants).
    for k in range(nin):
        terms, inner = [], 1
        for d in range(len(shape) - 2, -1, -1):
            if strides[k][d]:
                L += [f"  %q{k}_{d} = udiv i64 %r, {inner}",
                      f"  %i{k}_{d} = urem i64 %q{k}_{d}, {shape[d]}",
                      f"  %t{k}_{d} = mul i64 %i{k}_{d}, {strides[k][d]}"]
                terms.append(f"%t{k}_{d}")
            inner *= shape[d]
        acc = "0"
        for j, t in enumerate(terms):
            L.append(f"  %b{k}_{j} = add i64 {acc}, {t}")
            acc = f"%b{k}_{j}"
        L.append(f"  %base{k} = add i64 {acc}, 0")
        if strides[k][-1] == 0:
            L += [f"  %sp{k} = getelementptr float, ptr %a{k + 1}, i64 %base{k}",
                  f"  %sc{k} = load float, ptr %sp{k}, align 4",
                  f"  %si{k} = insertelement {vty} poison, float %sc{k}, i64 0",
                  f"  %sv{k} = shufflevector {vty} %si{k}, {vty} poison, "
                  f"<{lanes} x i32> zeroinitializer"]
    L += [f"  %obase = mul i64 %r, {n}", "  %hasv = icmp ult i64 %lo, %vend",
          "  br i1 %hasv, label %vloop, label %vexit", "vloop:",
          "  %j = phi i64 [%lo, %row], [%jn, %vloop]"]
    leaves = []
    for k in range(nin):
        if strides[k][-1] == 0:
            leaves.append(f"%sv{k}")
            continue
        L += [f"  %vi{k} = add i64 %base{k}, %j",
              f"  %vp{k} = getelementptr float, ptr %a{k + 1}, i64 %vi{k}",
              f"  %vl{k} = load {vty}, ptr %vp{k}, align 4"]
        leaves.append(f"%vl{k}")
    res = _eval(expr, Emitter(L, lanes), leaves, {})
    L += ["  %vo = add i64 %obase, %j", "  %vop = getelementptr float, ptr %a0, i64 %vo",
          f"  store {vty} {res}, ptr %vop, {vstore}", f"  %jn = add i64 %j, {lanes}",
          "  %vmore = icmp ult i64 %jn, %vend", "  br i1 %vmore, label %vloop, label %vexit",
          "vexit:", "  %hass = icmp ult i64 %vend, %hi",
          "  br i1 %hass, label %sloop, label %rowend", "sloop:",
          "  %s = phi i64 [%vend, %vexit], [%sn, %sloop]"]
    leaves = []
    for k in range(nin):
        if strides[k][-1] == 0:
            leaves.append(f"%sc{k}")
            continue
        L += [f"  %xi{k} = add i64 %base{k}, %s",
              f"  %xp{k} = getelementptr float, ptr %a{k + 1}, i64 %xi{k}",
              f"  %xl{k} = load float, ptr %xp{k}, align 4"]
        leaves.append(f"%xl{k}")
    res = _eval(expr, Emitter(L, 1), leaves, {})
    L += ["  %so = add i64 %obase, %s", "  %sop = getelementptr float, ptr %a0, i64 %so",
          f"  store float {res}, ptr %sop, align 4", "  %sn = add i64 %s, 1",
          "  %smore = icmp ult i64 %sn, %hi", "  br i1 %smore, label %sloop, label %rowend",
          "rowend:", "  %rn = add i64 %r, 1", "  %rmore = icmp ult i64 %rn, %r1",
          "  br i1 %rmore, label %row, label %done", "done:",
          # Streaming stores are weakly ordered: fence them before this share counts as done,
          # so another core that reads the output next sees every value.
          *(["  call void @sat_store_fence()"] if stream else []), "  ret void", "}"]
    return wrapper(name, [out] + [o for o, _ in ins]) + "\n" + "\n".join(L)
