"""Attention as one fused flash-style kernel: softmax(q·kᵀ·scale + mask [+ causal])·v.

The work is cut into units of (output batch·head, block of BR query rows); a part (core) takes a
contiguous share of the units (``share``; the runtime hands shares to cores). For its unit's kv
head a part packs kᵀ·scale·log2(e) into NR-key panels ``[T/NR][D][NR]`` (8×8 transposes) and v
into NR-column panels ``[Dv/NR][T][NR]``, in its own scratch, once per kv head it meets. Each query
block then walks the keys in blocks of BC (all T at once up to BC_ONE keys):

* ``q·kᵀ``: an MR×NR register-tile FMA micro-kernel (MR·NR/L accumulators) writes the block's
  scores, in the log2 domain, into a BR×BC buffer that stays in L1/L2: the S×T scores never exist
  as a whole. Its epilogue sets keys past the block's end or past the causal diagonal
  (``j > i + T - S``, as the reference's ``triu(k=1 + T - S)``) to -inf and keeps each row's max.
* online softmax (one call a block): the mask, read through its broadcast strides, is added
  (·log2 e) and the row max taken; the running max ``m`` and sum ``l`` are updated and the scores
  become ``p = 2^(x - m)`` in place (polynomial exp2, vectorized); ``alpha = 2^(m_old - m)``.
* ``p·v``: the same micro-kernel shape accumulates ``O = alpha·O + P·V`` for the block (``O =
  P·V`` for the first: O is never zeroed).

At the end of the query block ``O / l`` is written out. With one key block (T <= BC_ONE) and
whole v panels, p·v writes ``(P·V)·(1/l)`` straight to the output (no O buffer, no final pass).
The softmax's per-row scalars (row max, running max and sum, alpha) are computed for L rows at
a time, a lane a row, so that rows do not each wait on a chain of horizontal reductions.

A row with every score masked (or, causal with S > T, before the first key) has ``l = 0`` and gives
NaN, as the numpy reference does (softmax of all -inf); a finite mask however large never does.
Query heads share kv heads (grouped-query: head h reads kv head ``h // (Hq / Hkv)``) and q, k, v and
the mask broadcast over the batch dimensions through zero strides. All vectors are the host's
``<lanes x float>``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from satura.engine.graph import Node, Value
from satura.engine.ops import OPS
from satura.targets.gemm import fma_tile
from satura.targets.irmath import Emitter, fconst, vec_type
from satura.targets.kernel import FuncIR, Operand, body_header, share, wrapper
from satura.targets.lower import (
    CHUNKS_PER_THREAD,
    Lowerer,
    Ref,
    Scratch,
    Step,
    numel,
    worth_splitting,
)
from satura.targets.memory import align

BR = 48  # query rows per block (a multiple of MR)
BC = 256  # keys per block when T is longer than BC_ONE (the BR×BC scores in L2)
BC_ONE = 256  # up to this many keys, one block holds them all
QK_ROWS_OUTER = False  # q·kᵀ: each kᵀ panel over all row tiles (the panel stays in L1)
PV_ROWS_OUTER = True  # p·v: each row tile over all v column panels (its p rows stay in L1)
PACK_V = True  # v into panels (contiguous B rows for p·v); always when Dv % NR != 0
LOG2E = 1.4426950408889634
# 2**f on [-0.5, 0.5], degree 5, highest first (relative error 2.2e-7 in fp32).
EXP2_POLY = [
    1.3266970386718723e-3,
    9.675459745554338e-3,
    5.550742616001672e-2,
    2.4022121753560885e-1,
    6.931469491610641e-1,
    1.0000000710296997,
]


def tile(lanes: int) -> tuple[int, int]:
    """(MR, NR) of the micro-kernels: MR·2 accumulators of 2 vectors, within the register file."""
    return (6 if lanes <= 8 else 12), 2 * lanes


@dataclass(frozen=True)
class AttentionSpec:
    """Static sizes of one attention: output batch dims, heads, lengths, strides (elements)."""

    batch: tuple[int, ...]  # output batch dims
    hq: int
    hkv: int
    sq: int
    sk: int
    d: int
    dv: int
    scale: float
    causal: bool
    q_bstr: tuple[int, ...]  # per batch dim, 0 where broadcast
    k_bstr: tuple[int, ...]
    v_bstr: tuple[int, ...]
    m_str: tuple[int, ...] | None  # mask strides over (*batch, Hq, S, T), 0 where broadcast
    lanes: int
    mask_fill: float | None = None  # a bool mask (bytes, 0 where masked): masked scores' value

    @property
    def heads(self) -> int:
        return numel(self.batch) * self.hq

    @property
    def mr(self) -> int:
        return tile(self.lanes)[0]

    @property
    def nr(self) -> int:
        return tile(self.lanes)[1]

    @property
    def br(self) -> int:
        """Query rows per block: about BR, rounded to MR, blocks of near-equal size."""
        nb = -(-self.sq // BR)
        per = -(-self.sq // nb)
        return -(-per // self.mr) * self.mr

    @property
    def br_padded(self) -> int:
        """Query rows per block rounded up to a group of L (the softmax's running state)."""
        return -(-self.br // self.lanes) * self.lanes

    @property
    def qblocks(self) -> int:
        return -(-self.sq // self.br)

    @property
    def bc(self) -> int:
        n = self.sk if self.sk <= BC_ONE else BC
        return -(-n // self.nr) * self.nr

    @property
    def one_block(self) -> bool:
        """All keys in one block: the softmax needs no rescale."""
        return self.sk <= BC_ONE

    @property
    def direct(self) -> bool:
        """One key block and whole v panels: p·v writes ``(P·V)/l`` straight to the output (no
        O buffer)."""
        return self.one_block and self.dv % self.nr == 0

    @property
    def dvp(self) -> int:
        return -(-self.dv // self.nr) * self.nr

    @property
    def pack_v(self) -> bool:
        """v into NR-column panels ``[Dv/NR][T][NR]`` (else read in place, rows of Dv)."""
        return PACK_V or self.dv % self.nr != 0

    @property
    def kpanels(self) -> int:
        return -(-self.sk // self.nr)

    def scratch_floats(self) -> list[int]:
        """Per-part buffers: packed kᵀ, packed v, scores/probabilities, O, m, l, alpha and the
        row maxima of a block's scores (<L x float> a row)."""
        return [
            self.kpanels * self.d * self.nr,
            self.sk * self.dvp if self.pack_v else 0,
            self.br * self.bc,
            0 if self.direct else self.br * self.dvp,
            self.br_padded,
            self.br_padded,
            self.br_padded,
            self.br_padded * self.lanes,
        ]

    def scratch_bytes_per_part(self) -> int:
        return sum(align(4 * max(f, 1)) for f in self.scratch_floats())


def exp2(em: Emitter, t: str) -> str:
    """2**t for t <= 0 (float or <L x float>): -inf gives 0, NaN stays NaN.

    Softmax only takes it of ``x - max <= 0`` (up to rounding), so there is no upper clamp.
    """
    ty, ity = em.ty, em.ity
    lo = em.const(-127.0)
    cty = "i1" if em.lanes == 1 else f"<{em.lanes} x i1>"
    c1, t2 = em.tmp(), em.tmp()
    em.lines += [
        f"  {c1} = fcmp olt {ty} {t}, {lo}",
        f"  {t2} = select {cty} {c1}, {ty} {lo}, {ty} {t}",
    ]
    # t + 1.5·2^23 + 127 rounds to an integer whose low mantissa bits are n + 127 (n = rint t):
    # shifted up 23 bits they are the exponent of 2^n.
    r = em.add(t2, em.const(12583039.0))
    n = em.sub(r, em.const(12583039.0))
    f = em.sub(t2, n)
    p = em.poly(f, EXP2_POLY)
    ri, sh, sc = em.tmp(), em.tmp(), em.tmp()
    em.lines += [
        f"  {ri} = bitcast {ty} {r} to {ity}",
        f"  {sh} = shl {ity} {ri}, {em.iconst(23)}",
        f"  {sc} = bitcast {ity} {sh} to {ty}",
    ]
    return em.mul(p, sc)


def hreduce(ir: FuncIR, em: Emitter, v: str, kind: str) -> str:
    """Horizontal max or add of a <L x float> (shuffle halving; no extra intrinsics)."""
    n, w = ir.lanes, ir.lanes
    while w > 1:
        h = w // 2
        mask = ", ".join(f"i32 {(i + h) if i < h else (i - h) if i < w else i}" for i in range(n))
        s = ir(f"shufflevector {ir.vty} {v}, {ir.vty} poison, <{n} x i32> <{mask}>")
        v = _vmax(ir, v, s) if kind == "max" else em.add(v, s)
        w = h
    return ir(f"extractelement {ir.vty} {v}, i64 0")


def tile_kernel(
    fname: str,
    mr: int,
    nr: int,
    lanes: int,
    lda: int,
    ldb: int,
    ldc: int,
    kind: str,
    scale: float,
    causal: bool,
    ksets: int = 1,
) -> str:
    """The MR×NR register-tile micro-kernel ``fname(a, b, c, kc, aux, lim)``.

    ``kind`` 'qk': C = (A·B)·scale, columns ``>= lim`` (``lim + i`` in row i when causal) set to
    -inf, and ``aux`` (one <L x float> per row) takes the running max of each row.
    ``kind`` 'pv': C = aux[i]·C + A·B (aux: one float per row, the softmax rescale); 'pv0':
    C = A·B (the first key block: C is not read); 'pv1': C = aux[i]·(A·B) (the only key block,
    aux = 1/l: C is the output).
    A is row-major with stride lda (read one float at a time, broadcast), B rows of nr floats at
    stride ldb, C at stride ldc. The k loop is GEMM's (``fma_tile``, ``ksets`` accumulator sets);
    the epilogues are these.
    """
    nv, vty = nr // lanes, vec_type(lanes)
    out = [
        f"define internal void @{fname}(ptr noalias %a, ptr noalias %b, ptr noalias %c, "
        f"i64 %kc, ptr noalias %al, i64 %lim) noinline {{",
        "entry:",
    ]
    res = fma_tile(out, lanes, mr, nv, a=("%a", lda, 1), b=("%b", ldb), ksets=ksets)
    em = Emitter(out, lanes)
    ninf = "<" + ", ".join([f"float {fconst(float('-inf'))}"] * lanes) + ">"
    if kind == "qk":
        if scale != 1.0:
            for i in range(mr):
                for v in range(nv):
                    res[i][v] = em.mul(res[i][v], em.const(scale))
        # columns past the limit: -inf (only when the limit falls inside this tile)
        out += [
            f"  %cut = icmp slt i64 %lim, {nr}",
            "  br i1 %cut, label %mask, label %st",
            "mask:",
        ]
        iota = "<" + ", ".join(f"i64 {e}" for e in range(lanes)) + ">"
        masked = [[""] * nv for _ in range(mr)]
        for i in range(mr):
            out += [
                f"  %lm{i} = add i64 %lim, {i if causal else 0}",
                f"  %lmi{i} = insertelement <{lanes} x i64> poison, i64 %lm{i}, i64 0",
                f"  %lmv{i} = shufflevector <{lanes} x i64> %lmi{i}, <{lanes} x i64> poison, "
                f"<{lanes} x i32> zeroinitializer",
            ]
            for v in range(nv):
                out += [
                    f"  %ok{i}_{v} = icmp sgt <{lanes} x i64> %lmv{i}, "
                    + "<"
                    + ", ".join(f"i64 {e + v * lanes}" for e in range(lanes))
                    + ">",
                    f"  %mk{i}_{v} = select <{lanes} x i1> %ok{i}_{v}, {vty} {res[i][v]}, "
                    f"{vty} {ninf}",
                ]
                masked[i][v] = f"%mk{i}_{v}"
        del iota
        out += ["  br label %st", "st:"]
        for i in range(mr):
            for v in range(nv):
                out.append(
                    f"  %x{i}_{v} = phi {vty} [{res[i][v]}, %kdone], [{masked[i][v]}, %mask]"
                )
                res[i][v] = f"%x{i}_{v}"
        for i in range(mr):
            out += [
                f"  %rmp{i} = getelementptr float, ptr %al, i64 {i * lanes}",
                f"  %rmo{i} = load {vty}, ptr %rmp{i}, align 4",
            ]
            mx = f"%rmo{i}"
            for v in range(nv):
                out += [
                    f"  %rc{i}_{v} = fcmp ogt {vty} {res[i][v]}, {mx}",
                    f"  %rx{i}_{v} = select <{lanes} x i1> %rc{i}_{v}, {vty} {res[i][v]}, "
                    f"{vty} {mx}",
                ]
                mx = f"%rx{i}_{v}"
            out.append(f"  store {vty} {mx}, ptr %rmp{i}, align 4")
    for i in range(mr):
        if kind in ("pv", "pv1"):
            out += [
                f"  %alp{i} = getelementptr float, ptr %al, i64 {i}",
                f"  %als{i} = load float, ptr %alp{i}, align 4",
                f"  %ali{i} = insertelement {vty} poison, float %als{i}, i64 0",
                f"  %alv{i} = shufflevector {vty} %ali{i}, {vty} poison, "
                f"<{lanes} x i32> zeroinitializer",
            ]
        for v in range(nv):
            out += [f"  %cp{i}_{v} = getelementptr float, ptr %c, i64 {i * ldc + v * lanes}"]
            x = res[i][v]
            if kind == "pv":
                out.append(f"  %old{i}_{v} = load {vty}, ptr %cp{i}_{v}, align 4")
                x = em.fma(f"%old{i}_{v}", f"%alv{i}", x)
            elif kind == "pv1":
                x = em.mul(x, f"%alv{i}")
            out.append(f"  store {vty} {x}, ptr %cp{i}_{v}, align 4")
    out += ["  ret void", "}"]
    return "\n".join(out)


def tiles_driver(
    fname: str,
    uk: str,
    mr_max: int,
    lda: int,
    ldc: int,
    aux: int,
    limstep: int,
    bstride: int,
    nr: int,
    rows_outer: bool,
) -> str:
    """``fname(a, b, c, kc, aux, lim, rows, panels)``: the micro-kernel over ``rows`` rows (MR at
    a time) and ``panels`` column panels (B advances ``bstride`` floats a panel, C ``nr`` and
    ``lim`` -nr); per row ``aux`` advances ``aux`` floats and ``lim`` ``limstep``. Loops rows
    outside panels when ``rows_outer``."""
    cases = " ".join(f"i64 {m}, label %m{m}" for m in range(1, mr_max + 1))
    outer, inner = ("r", "p") if rows_outer else ("p", "r")
    step = {"r": mr_max, "p": 1}
    end = {"r": "%rows", "p": "%panels"}
    L = [
        f"define internal void @{fname}(ptr noalias %a, ptr noalias %b, ptr noalias %c, "
        f"i64 %kc, ptr noalias %al, i64 %lim, i64 %rows, i64 %panels) {{",
        "entry:",
        "  br label %oh",
        "oh:",
        f"  %{outer} = phi i64 [0, %entry], [%{outer}n, %ix]",
        f"  %omore = icmp slt i64 %{outer}, {end[outer]}",
        "  br i1 %omore, label %ob, label %x",
        "ob:",
        "  br label %ih",
        "ih:",
        f"  %{inner} = phi i64 [0, %ob], [%{inner}n, %next]",
        f"  %imore = icmp slt i64 %{inner}, {end[inner]}",
        "  br i1 %imore, label %body, label %ix",
        "body:",
        "  %left = sub i64 %rows, %r",
        f"  %mr = call i64 @llvm.smin.i64(i64 %left, i64 {mr_max})",
        f"  %ao = mul i64 %r, {lda}",
        "  %ap = getelementptr float, ptr %a, i64 %ao",
        f"  %bo = mul i64 %p, {bstride}",
        "  %bp = getelementptr float, ptr %b, i64 %bo",
        f"  %co0 = mul i64 %r, {ldc}",
        f"  %co1 = mul i64 %p, {nr}",
        "  %co = add i64 %co0, %co1",
        "  %cp = getelementptr float, ptr %c, i64 %co",
        f"  %alo = mul i64 %r, {aux}",
        "  %alp = getelementptr float, ptr %al, i64 %alo",
        f"  %lo0 = mul i64 %r, {limstep}",
        f"  %lo1 = mul i64 %p, {nr}",
        "  %lr0 = add i64 %lim, %lo0",
        "  %lr = sub i64 %lr0, %lo1",
        f"  switch i64 %mr, label %next [ {cases} ]",
    ]
    for m in range(1, mr_max + 1):
        L += [
            f"m{m}:",
            f"  call void @{uk}{m}(ptr %ap, ptr %bp, ptr %cp, i64 %kc, ptr %alp, i64 %lr)",
            "  br label %next",
        ]
    L += [
        "next:",
        f"  %{inner}n = add i64 %{inner}, {step[inner]}",
        "  br label %ih",
        "ix:",
        f"  %{outer}n = add i64 %{outer}, {step[outer]}",
        "  br label %oh",
        "x:",
        "  ret void",
        "}",
    ]
    return "\n".join(L)


# (r0..r7) -> columns, with the AVX shuffles: unpck lo/hi, shufps, vperm2f128.
_LO = "<i32 0, i32 8, i32 1, i32 9, i32 4, i32 12, i32 5, i32 13>"
_HI = "<i32 2, i32 10, i32 3, i32 11, i32 6, i32 14, i32 7, i32 15>"
_S44 = "<i32 0, i32 1, i32 8, i32 9, i32 4, i32 5, i32 12, i32 13>"
_SEE = "<i32 2, i32 3, i32 10, i32 11, i32 6, i32 7, i32 14, i32 15>"
_P20 = "<i32 0, i32 1, i32 2, i32 3, i32 8, i32 9, i32 10, i32 11>"
_P31 = "<i32 4, i32 5, i32 6, i32 7, i32 12, i32 13, i32 14, i32 15>"


def _transpose8(ir: FuncIR, rows: list[str]) -> list[str]:
    v8 = "<8 x float>"

    def sh(a: str, b: str, m: str) -> str:
        return ir(f"shufflevector {v8} {a}, {v8} {b}, <8 x i32> {m}")

    t = []
    for p in range(4):
        t += [sh(rows[2 * p], rows[2 * p + 1], _LO), sh(rows[2 * p], rows[2 * p + 1], _HI)]
    tt = []
    for g in (0, 4):
        tt += [
            sh(t[g], t[g + 2], _S44),
            sh(t[g], t[g + 2], _SEE),
            sh(t[g + 1], t[g + 3], _S44),
            sh(t[g + 1], t[g + 3], _SEE),
        ]
    return [sh(tt[c], tt[c + 4], _P20) for c in range(4)] + [
        sh(tt[c], tt[c + 4], _P31) for c in range(4)
    ]


def _pack_k(fname: str, s: AttentionSpec) -> str:
    """``fname(dst, src)``: kᵀ·scale·log2(e) of one kv head ([T, D]) into zero-padded
    ``[T/NR][D][NR]``."""
    ir, nr, d, t = FuncIR(s.lanes), s.nr, s.d, s.sk
    k1 = fconst(s.scale * LOG2E)  # the scores' factor, applied here once per key
    k8 = "<" + ", ".join([f"float {k1}"] * 8) + ">"
    g_per = nr // 8
    d8 = d // 8 * 8
    with ir.loop(0, t // 8) as q:  # groups of 8 keys, all inside T
        p = ir(f"udiv i64 {q}, {g_per}")
        g = ir(f"urem i64 {q}, {g_per}")
        base = ir.add(ir.mul(p, d * nr), ir.mul(g, 8))
        src = ir.gep("%src", ir.mul(q, 8 * d))
        dst = ir.gep("%dst", base)
        if d8:
            with ir.loop(0, d8, 8) as c:
                rows = [
                    ir(f"load <8 x float>, ptr {ir.gep(src, ir.add(c, r * d))}, align 4")
                    for r in range(8)
                ]
                cols = _transpose8(ir, rows)
                for e in range(8):
                    off = ir.mul(ir.add(c, e), nr)
                    y = ir(f"fmul <8 x float> {cols[e]}, {k8}")
                    ir.do(f"store <8 x float> {y}, ptr {ir.gep(dst, off)}, align 4")
        if d8 < d:
            with ir.loop(d8, d) as c:
                for r in range(8):
                    x = ir(f"load float, ptr {ir.gep(src, ir.add(c, r * d))}, align 4")
                    x = ir(f"fmul float {x}, {k1}")
                    ir.do(f"store float {x}, ptr {ir.gep(dst, ir.add(ir.mul(c, nr), r))}, align 4")
    with ir.loop(t // 8 * 8, s.kpanels * nr) as j:  # the last keys and the zero padding
        p = ir(f"udiv i64 {j}, {nr}")
        jj = ir(f"urem i64 {j}, {nr}")
        inb = ir(f"icmp slt i64 {j}, {t}")
        jc = ir(f"call i64 @llvm.smin.i64(i64 {j}, i64 {t - 1})")
        src = ir.gep("%src", ir.mul(jc, d))
        dst = ir.gep("%dst", ir.add(ir.mul(p, d * nr), jj))
        with ir.loop(0, d) as c:
            x = ir(f"load float, ptr {ir.gep(src, c)}, align 4")
            x = ir(f"select i1 {inb}, float {x}, float 0.0")
            x = ir(f"fmul float {x}, {k1}")
            ir.do(f"store float {x}, ptr {ir.gep(dst, ir.mul(c, nr))}, align 4")
    ir.do("ret void")
    return ir.func(f"define internal void @{fname}(ptr noalias %dst, ptr noalias %src) {{")


def _pack_v(fname: str, s: AttentionSpec) -> str:
    """``fname(dst, src)``: v of one kv head ([T, Dv]) into zero-padded ``[Dv/NR][T][NR]``."""
    ir, nr, lanes, vty = FuncIR(s.lanes), s.nr, s.lanes, vec_type(s.lanes)
    full = s.dv // nr
    with ir.loop(0, s.sk) as j:
        src = ir.gep("%src", ir.mul(j, s.dv))
        for c in range(full):
            dst = ir.gep("%dst", ir.add(c * s.sk * nr, ir.mul(j, nr)))
            for q in range(nr // lanes):
                x = ir(f"load {vty}, ptr {ir.gep(src, c * nr + q * lanes)}, align 4")
                ir.do(f"store {vty} {x}, ptr {ir.gep(dst, q * lanes)}, align 4")
        if full * nr < s.dv:
            dst = ir.gep("%dst", ir.add(full * s.sk * nr, ir.mul(j, nr)))
            for e in range(nr):
                col = full * nr + e
                x = ir(f"load float, ptr {ir.gep(src, col)}, align 4") if col < s.dv else "0.0"
                ir.do(f"store float {x}, ptr {ir.gep(dst, e)}, align 4")
    ir.do("ret void")
    return ir.func(f"define internal void @{fname}(ptr noalias %dst, ptr noalias %src) {{")


def _vmax(ir: FuncIR, a: str, b: str) -> str:
    """``a > b ? a : b`` (one vmaxps; a NaN in ``a`` is dropped, the exp of it is not)."""
    c = ir(f"fcmp ogt {ir.vty} {a}, {b}")
    return ir(f"select <{ir.lanes} x i1> {c}, {ir.vty} {a}, {ir.vty} {b}")


def _softmax_block(fname: str, s: AttentionSpec) -> str:
    """``fname(sb, rm, mk, rows, kb, m, l, alpha)``: the online softmax of one key block.

    ``sb`` holds ``rows`` rows (stride BC) of scores, already ·scale·log2(e) and -inf past each
    row's limit; ``rm`` their row maxima (one <L x float> a row) unless there is a mask, whose
    row 0 (at this block's first key) is ``mk``: it is added (·log2 e) first. Updates the running
    max ``m`` and sum ``l`` (log2 domain), writes ``alpha`` = 2^(m_old - m_new) (1/l when
    ``s.direct``) and turns the scores into p = 2^(x - m_new) for the first ``kb`` keys.
    """
    ir, lanes, bc, nr = FuncIR(s.lanes), s.lanes, s.bc, s.nr
    vty = ir.vty
    em = Emitter(ir.L, lanes)
    ninf = fconst(float("-inf"))
    vninf = "<" + ", ".join([f"float {ninf}"] * lanes) + ">"
    log2e = em.const(LOG2E)
    kbn = ir(f"and i64 {ir(f'add i64 %kb, {nr - 1}')}, {-nr}")
    if s.m_str is not None:  # the mask first, a row at a time: each row's max into rm
        with ir.loop(0, "%rows") as r:
            srow = ir.gep("%sb", ir.mul(r, bc))
            m_s, m_t = s.m_str[-2], s.m_str[-1]
            boolean = s.mask_fill is not None  # a bool mask: bytes, 0 where masked
            mty = "i8" if boolean else "float"
            mrow = ir.gep("%mk", ir.mul(r, m_s), mty)
            msplat = None
            if m_t == 0:
                m0 = ir(f"load {mty}, ptr {mrow}, align 1")
                if boolean:
                    m0 = ir(f"icmp eq i8 {m0}, 0")
                    i = ir(f"insertelement <{lanes} x i1> poison, i1 {m0}, i64 0")
                    msplat = ir(
                        f"shufflevector <{lanes} x i1> {i}, <{lanes} x i1> poison, "
                        f"<{lanes} x i32> zeroinitializer"
                    )
                else:
                    msplat = ir.splat(m0)
            mx = ir.var(vty, vninf)
            fillv = ""
            if s.mask_fill is not None:  # in the log2 domain, clamped to a finite float
                f2 = s.mask_fill * LOG2E
                f2 = f2 if math.isinf(s.mask_fill) else max(f2, -float(np.finfo(np.float32).max))
                fillv = "<" + ", ".join([f"float {fconst(f2)}"] * lanes) + ">"
            kbf = ir(f"and i64 %kb, {-lanes}")
            kb1 = ir("sub i64 %kb, 1")

            def add_mask(
                j: str,
                tail: bool,
                srow: str = srow,
                mrow: str = mrow,
                msplat: str | None = msplat,
                mx: str = mx,
                kb1: str = kb1,
                fillv: str = fillv,
                vninf: str = vninf,
            ) -> None:
                sp = ir.gep(srow, j)
                x = ir(f"load {vty}, ptr {sp}, align 4")
                mvty = f"<{lanes} x {mty}>"
                if msplat is not None:
                    mv = msplat
                elif not tail:
                    mv = ir(f"load {mvty}, ptr {ir.gep(mrow, j, mty)}, align 1")
                else:
                    mv = "poison"
                    for e in range(lanes):
                        jj = ir(f"call i64 @llvm.smin.i64(i64 {ir.add(j, e)}, i64 {kb1})")
                        me = ir(f"load {mty}, ptr {ir.gep(mrow, jj, mty)}, align 1")
                        mv = ir(f"insertelement {mvty} {mv}, {mty} {me}, i64 {e}")
                if boolean and msplat is None:
                    mv = ir(f"icmp eq {mvty} {mv}, zeroinitializer")
                if not boolean:
                    x = em.fma(mv, log2e, x)
                else:
                    # masked (byte 0) and not already -inf (past the row: causal cut-off or
                    # the padding of the last vector) becomes the fill
                    off = ir(f"and <{lanes} x i1> {mv}, {ir(f'fcmp one {vty} {x}, {vninf}')}")
                    x = ir(f"select <{lanes} x i1> {off}, {vty} {fillv}, {vty} {x}")
                ir.do(f"store {vty} {x}, ptr {sp}, align 4")
                old = ir(f"load {vty}, ptr {mx}")
                ir.do(f"store {vty} {_vmax(ir, x, old)}, ptr {mx}")

            with ir.loop(0, kbf, lanes) as j:
                add_mask(j, False)
            with ir.when(ir(f"icmp ne i64 {kbf}, %kb")):
                add_mask(kbf, True)
            ir.do(
                f"store {vty} {ir(f'load {vty}, ptr {mx}')}, ptr {ir.gep('%rm', ir.mul(r, lanes))}"
            )
    # A group of L rows at a time: the running state (m, l, alpha) as one vector, a lane a row;
    # rows past ``rows`` in the last group work on the buffers' padding.
    ms_slot = ir.var(vty, "zeroinitializer")
    sum_slots = ir.var(f"[{lanes} x {vty}]", "zeroinitializer")
    with ir.loop(0, "%rows", lanes) as r0:
        bm = "poison"
        for e in range(lanes):
            x = ir(f"load {vty}, ptr {ir.gep('%rm', ir.mul(ir.add(r0, e), lanes))}, align 4")
            bm = ir(f"insertelement {vty} {bm}, float {hreduce(ir, em, x, 'max')}, i64 {e}")
        mp, lp, ap = (ir.gep(x, r0) for x in ("%m", "%l", "%alpha"))
        m_old = ir(f"load {vty}, ptr {mp}, align 4")
        m_new = em.max(m_old, bm)
        isinf = ir(f"fcmp oeq {vty} {m_new}, {vninf}")
        ms = ir(f"select <{lanes} x i1> {isinf}, {vty} zeroinitializer, {vty} {m_new}")
        alpha = exp2(em, em.sub(m_old, ms))
        ir.do(f"store {vty} {ms}, ptr {ms_slot}")
        ng = ir(f"call i64 @llvm.smin.i64(i64 {ir(f'sub i64 %rows, {r0}')}, i64 {lanes})")
        with ir.loop(0, ng) as i:
            srow = ir.gep("%sb", ir.mul(ir.add(r0, i), bc))
            msv = ir.splat(ir(f"load float, ptr {ir.gep(ms_slot, i)}, align 4"))
            # NR floats a step, one sum per vector (no serial chain of adds); the keys past kb up
            # to the NR-padded end are -inf (set by the q·kᵀ kernel) and give p = 0.
            sms = [ir.var(vty, "zeroinitializer") for _ in range(nr // lanes)]
            with ir.loop(0, kbn, nr) as j:
                for q, sm in enumerate(sms):
                    sp = ir.gep(srow, ir.add(j, q * lanes))
                    x = ir(f"load {vty}, ptr {sp}, align 4")
                    pv = exp2(em, em.sub(x, msv))
                    ir.do(f"store {vty} {pv}, ptr {sp}, align 4")
                    old = ir(f"load {vty}, ptr {sm}")
                    ir.do(f"store {vty} {em.add(old, pv)}, ptr {sm}")
            acc = ir(f"load {vty}, ptr {sms[0]}")
            for sm in sms[1:]:
                acc = em.add(acc, ir(f"load {vty}, ptr {sm}"))
            ir.do(f"store {vty} {acc}, ptr {ir.gep(sum_slots, i, vty)}")
        rs = "poison"
        for e in range(lanes):
            x = ir(f"load {vty}, ptr {ir.gep(sum_slots, e, vty)}")
            rs = ir(f"insertelement {vty} {rs}, float {hreduce(ir, em, x, 'add')}, i64 {e}")
        l_new = em.fma(ir(f"load {vty}, ptr {lp}, align 4"), alpha, rs)
        ir.do(f"store {vty} {l_new}, ptr {lp}, align 4")
        ir.do(f"store {vty} {m_new}, ptr {mp}, align 4")
        # the only block: p·v scales by 1/l (inf when every key is masked: NaN, as numpy)
        last = em.div(em.const(1.0), l_new) if s.direct else alpha
        ir.do(f"store {vty} {last}, ptr {ap}, align 4")
    ir.do("ret void")
    return ir.func(
        f"define internal void @{fname}(ptr noalias %sb, ptr noalias %rm, "
        "ptr noalias %mk, i64 %rows, i64 %kb, ptr noalias %m, ptr noalias %l, "
        "ptr noalias %alpha) noinline {"
    )


def attention_kernel(
    name: str,
    s: AttentionSpec,
    out: Operand,
    q: Operand,
    k: Operand,
    v: Operand,
    mask: Operand | None,
    scratch: Operand,
) -> str:
    """LLVM IR of the fused attention kernel; ``scratch`` holds one set of buffers per part."""
    lanes, mr, nr = s.lanes, s.mr, s.nr
    br, bc, dvp, sq, sk, d, dv = s.br, s.bc, s.dvp, s.sq, s.sk, s.d, s.dv
    ldv = nr if s.pack_v else dv
    vty = vec_type(lanes)
    ninf = fconst(float("-inf"))
    parts = [
        tile_kernel(f"{name}_qk{m}", m, nr, lanes, d, nr, bc, "qk", 1.0, s.causal)
        for m in range(1, mr + 1)
    ]
    # p·v of the only key block into the output, or of the first and the later ones into O
    pv_kinds = ["pv1"] if s.direct else ["pv0"] if s.one_block else ["pv0", "pv"]
    for kind in pv_kinds:
        parts += [
            tile_kernel(f"{name}_{kind}_u{m}", m, nr, lanes, bc, ldv, dvp, kind, 1.0, False)
            for m in range(1, mr + 1)
        ]
        parts.append(
            tiles_driver(
                f"{name}_{kind}r",
                f"{name}_{kind}_u",
                mr,
                bc,
                dvp,
                1,
                0,
                sk * nr if s.pack_v else nr,
                nr,
                PV_ROWS_OUTER,
            )
        )
    parts += [
        tiles_driver(
            f"{name}_qkr", f"{name}_qk", mr, d, bc, lanes, int(s.causal), d * nr, nr, QK_ROWS_OUTER
        ),
        _pack_k(f"{name}_pk", s),
        _softmax_block(f"{name}_sm", s),
    ]
    if s.pack_v:
        parts.append(_pack_v(f"{name}_pvk", s))

    ir = FuncIR(lanes)
    em = Emitter(ir.L, lanes)
    e1 = Emitter(ir.L, 1)
    L = ir.L
    share(L, s.heads * s.qblocks, 1, "%u0", "%u1")
    offs, acc = [], 0
    for f in s.scratch_floats():
        offs.append(acc)
        acc += align(4 * max(f, 1))
    sb = ir(f"mul i64 %part, {acc}")
    scr = ir(f"getelementptr i8, ptr %a5, i64 {sb}")
    kp, vp, sbuf, obuf, mbuf, lbuf, abuf, rmbuf = (
        ir(f"getelementptr i8, ptr {scr}, i64 {o}") for o in offs
    )
    packed_k = ir.var("i64", "-1")
    packed_v = ir.var("i64", "-1")
    nqb, rep = s.qblocks, s.hq // s.hkv
    with ir.loop("%u0", "%u1") as u:
        bh = ir(f"udiv i64 {u}, {nqb}")
        qb = ir(f"urem i64 {u}, {nqb}")
        h = ir(f"urem i64 {bh}, {s.hq}")
        rest = ir(f"udiv i64 {bh}, {s.hq}")
        hk = ir(f"udiv i64 {h}, {rep}") if rep > 1 else h
        qo = ir.mul(h, sq * d)
        ko = ir.mul(hk, sk * d)
        vo = ir.mul(hk, sk * dv)
        mo = ir.mul(h, s.m_str[-3]) if s.m_str is not None else "0"
        for i in reversed(range(len(s.batch))):
            n = s.batch[i]
            idx = ir(f"urem i64 {rest}, {n}") if i > 0 else rest
            if i > 0:
                rest = ir(f"udiv i64 {rest}, {n}")
            qo = ir.add(qo, ir.mul(idx, s.q_bstr[i]))
            ko = ir.add(ko, ir.mul(idx, s.k_bstr[i]))
            vo = ir.add(vo, ir.mul(idx, s.v_bstr[i]))
            if s.m_str is not None:
                mo = ir.add(mo, ir.mul(idx, s.m_str[i]))
        i0 = ir.mul(qb, br)
        rows = ir(f"call i64 @llvm.smin.i64(i64 {ir(f'sub i64 {sq}, {i0}')}, i64 {br})")
        # pack this unit's kv head unless this part already did
        ko_s = ir(f"load i64, ptr {packed_k}")
        with ir.when(ir(f"icmp ne i64 {ko_s}, {ko}")):
            ir.do(f"call void @{name}_pk(ptr {kp}, ptr {ir.gep('%a2', ko)})")
            ir.do(f"store i64 {ko}, ptr {packed_k}")
        if s.pack_v:
            vo_s = ir(f"load i64, ptr {packed_v}")
            with ir.when(ir(f"icmp ne i64 {vo_s}, {vo}")):
                ir.do(f"call void @{name}_pvk(ptr {vp}, ptr {ir.gep('%a3', vo)})")
                ir.do(f"store i64 {vo}, ptr {packed_v}")
            vsrc = vp
        else:
            vsrc = ir.gep("%a3", vo)
        qp = ir.gep("%a1", ir.add(qo, ir.mul(i0, d)))
        op = ir.gep("%a0", ir.add(ir.mul(bh, sq * dv), ir.mul(i0, dv)))
        # running state
        with ir.loop(0, rows) as r:
            ir.do(f"store float {ninf}, ptr {ir.gep(mbuf, r)}, align 4")
            ir.do(f"store float 0.0, ptr {ir.gep(lbuf, r)}, align 4")
        # keys this block can see
        if s.causal:
            ke = ir(f"add i64 {i0}, {ir(f'add i64 {rows}, {sk - sq}')}")
            ke = ir(f"call i64 @llvm.smin.i64(i64 {ke}, i64 {sk})")
            kend = ir(f"select i1 {ir(f'icmp slt i64 {ke}, 1')}, i64 1, i64 {ke}")
        else:
            kend = str(sk)
        with ir.loop(0, kend, bc) as j0:
            kb = ir(f"call i64 @llvm.smin.i64(i64 {ir(f'sub i64 {kend}, {j0}')}, i64 {bc})")
            npan = ir(f"udiv i64 {ir(f'add i64 {kb}, {nr - 1}')}, {nr}")
            kpj = ir.gep(kp, ir.mul(ir(f"udiv i64 {j0}, {nr}"), d * nr))
            ninfv = "<" + ", ".join([f"float {ninf}"] * lanes) + ">"
            with ir.loop(0, ir.mul(rows, lanes), lanes) as c:
                ir.do(f"store {vty} {ninfv}, ptr {ir.gep(rmbuf, c)}, align 4")
            # the limit of row i0 relative to the block: causal i0 + T - S + 1 - j0, else kb
            lim0 = ir(f"sub i64 {ir.add(i0, sk - sq + 1)}, {j0}") if s.causal else kb
            ir.do(
                f"call void @{name}_qkr(ptr {qp}, ptr {kpj}, ptr {sbuf}, i64 {d}, "
                f"ptr {rmbuf}, i64 {lim0}, i64 {rows}, i64 {npan})"
            )
            mk = "null"
            if s.m_str is not None:
                mk = ir.gep(
                    "%a4",
                    ir.add(ir.add(mo, ir.mul(i0, s.m_str[-2])), ir.mul(j0, s.m_str[-1])),
                    "float" if s.mask_fill is None else "i8",
                )
            ir.do(
                f"call void @{name}_sm(ptr {sbuf}, ptr {rmbuf}, ptr {mk}, i64 {rows}, "
                f"i64 {kb}, ptr {mbuf}, ptr {lbuf}, ptr {abuf})"
            )
            vj = ir.gep(vsrc, ir.mul(j0, ldv))
            fn, dst = (f"@{name}_pv1r", op) if s.direct else (f"@{name}_pv0r", obuf)
            if not s.one_block:  # the first key block's p·v does not read O
                fn = ir(f"select i1 {ir(f'icmp eq i64 {j0}, 0')}, ptr {fn}, ptr @{name}_pvr")
            ir.do(
                f"call void {fn}(ptr {sbuf}, ptr {vj}, ptr {dst}, i64 {kb}, ptr {abuf}, i64 0, "
                f"i64 {rows}, i64 {dvp // nr})"
            )
        if not s.direct:  # O / l into the output (p·v wrote it when direct)
            dfull = dv // lanes * lanes
            with ir.loop(0, rows) as r:
                inv = e1.div(e1.const(1.0), ir(f"load float, ptr {ir.gep(lbuf, r)}, align 4"))
                orow = ir.gep(obuf, ir.mul(r, dvp))
                dst = ir.gep(op, ir.mul(r, dv))
                if dfull:
                    invv = ir.splat(inv)
                    with ir.loop(0, dfull, lanes) as c:
                        x = ir(f"load {vty}, ptr {ir.gep(orow, c)}, align 4")
                        ir.do(f"store {vty} {em.mul(x, invv)}, ptr {ir.gep(dst, c)}, align 4")
                if dfull < dv:
                    with ir.loop(dfull, dv) as c:
                        x = ir(f"load float, ptr {ir.gep(orow, c)}, align 4")
                        ir.do(f"store float {e1.mul(x, inv)}, ptr {ir.gep(dst, c)}, align 4")
    ir.do("ret void")
    body = ir.func(body_header(name, 6))
    return "\n".join([wrapper(name, [out, q, k, v, mask, scratch]), body, *parts])


def _bstrides(shape: list[int], batch: tuple[int, ...], inner: int) -> tuple[int, ...]:
    """Element strides of a contiguous tensor's batch dims, 0 where it broadcasts."""
    nb = len(batch)
    out, st = [0] * nb, inner
    for i in reversed(range(nb)):
        out[i] = 0 if shape[i] == 1 and batch[i] != 1 else st
        st *= shape[i]
    return tuple(out)


# A constant mask whose masked scores are at most this (or -inf) leaves exactly 0 after the
# softmax's exp in fp32 (any real score is far above it): masking them equals skipping them.
CAUSAL_FILL = -1e9


def _is_causal_mask(mask: Value | None, sq: int, sk: int, fill: float) -> bool:
    """A constant mask, the same for every batch and head, that keeps exactly the scores on
    and below the diagonal ``j <= i + sk - sq`` (bool with a ``fill`` <= CAUSAL_FILL; or 0
    there and <= CAUSAL_FILL above)."""
    if mask is None or mask.data is None:
        return False
    m = np.asarray(mask.data)
    if m.ndim < 2 or m.shape[-2:] != (sq, sk) or any(d != 1 for d in m.shape[:-2]):
        return False
    m = m.reshape(sq, sk)
    keep = np.tril(np.ones((sq, sk), bool), sk - sq)
    if m.dtype == np.bool_:
        return fill <= CAUSAL_FILL and bool(np.array_equal(m, keep))
    return bool(np.all(m[keep] == 0) and np.all(m[~keep] <= CAUSAL_FILL))


def lower_attention(lw: Lowerer, node: Node, name: str) -> bool:
    q, k, v = node.inputs[:3]
    mask = node.inputs[3] if len(node.inputs) > 3 else None
    out = node.outputs[0]
    assert q is not None
    assert k is not None
    assert v is not None
    at = OPS["attention"].with_defaults(node.attrs)
    scale, causal, mask_fill = float(at["scale"]), bool(at["causal"]), float(at["mask_fill"])
    qs, ks, vs = ([int(d) for d in t.type.shape] for t in (q, k, v))
    os_ = [int(d) for d in out.type.shape]
    r = len(qs)
    if r < 3 or len(ks) != r or len(vs) != r or not math.isfinite(scale):
        return False
    hq, sq, d = qs[-3:]
    hkv, sk, _ = ks[-3:]
    dv = vs[-1]
    if ks[-1] != d or vs[-2] != sk or vs[-3] != hkv or hkv < 1 or hq % hkv or sk < 1:
        return False
    batch = tuple(os_[:-3])
    if os_[-3:] != [hq, sq, dv] or len(batch) != r - 3:
        return False
    for sh in (qs, ks, vs):
        if any(a not in (1, b) for a, b in zip(sh[:-3], batch, strict=True)):
            return False
    if not causal and _is_causal_mask(mask, sq, sk, mask_fill):
        causal, mask = True, None  # the kernel skips the keys past the diagonal instead
    m_str = None
    fill = None
    if mask is not None and mask.type.dtype == "bool":
        # A bool mask keeps True scores and sets the rest to mask_fill: the kernel reads its bytes.
        fill = mask_fill
    if mask is not None:
        ms = [int(x) for x in mask.type.shape]
        full = [*batch, hq, sq, sk]
        if len(ms) > len(full):
            return False
        ms = [1] * (len(full) - len(ms)) + ms
        if any(a not in (1, b) for a, b in zip(ms, full, strict=True)):
            return False
        st, acc_ = [0] * len(full), 1
        for i in reversed(range(len(full))):
            st[i] = 0 if ms[i] == 1 else acc_
            acc_ *= ms[i]
        m_str = tuple(st)
    spec = AttentionSpec(
        batch,
        hq,
        hkv,
        sq,
        sk,
        d,
        dv,
        scale,
        causal,
        _bstrides(qs, batch, hq * sq * d),
        _bstrides(ks, batch, hkv * sk * d),
        _bstrides(vs, batch, hkv * sk * dv),
        m_str,
        lw.host.lanes,
        fill,
    )
    scratch = Scratch(
        f"{name}_scratch", lw.threads * CHUNKS_PER_THREAD * spec.scratch_bytes_per_part()
    )
    ins = [x for x in (q, k, v, mask) if x is not None]

    def gen(loc: Callable[[Ref | None], Operand | None]) -> str:
        return attention_kernel(
            name,
            spec,
            loc(out),
            loc(q),
            loc(k),
            loc(v),  # type: ignore
            loc(mask),
            loc(scratch),
        )  # type: ignore[arg-type]

    flops = 2.0 * spec.heads * sq * sk * (d + dv)
    units = spec.heads * spec.qblocks
    lw.steps.append(
        Step(
            name,
            [*ins, scratch],
            [out],
            gen,
            parallel=worth_splitting(flops) and units > 1,
            op=node.op,
            units=units,
        )
    )
    return True
