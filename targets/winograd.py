"""3×3 stride-1 convolution by Winograd's minimal filtering F(2×2, 3×3): 16 GEMMs.

An output tile of 2×2 pixels is ``Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d Bᵀᵀ)] A`` for its 4×4 input patch ``d``
and the 3×3 filter ``g``: 16 products per tile and channel pair where the direct convolution
does 36 (2.25x fewer FMAs). Summed over input channels the products are 16 independent GEMMs,
one per position ξ of the 4×4 transformed tile:

* ``U[ξ] = (G g Gᵀ)[ξ]``, [Cout, Cin]: the weights, transformed at compile time;
* ``V[ξ] = (Bᵀ d B)[ξ]``, [Cin, tiles]: the input, transformed by ``input_kernel`` straight into
  the packed-B panels of the GEMM (``[ξ][tiles/NR][Cin][NR]``);
* ``M[ξ] = U[ξ] @ V[ξ]`` by the GEMM kernel (batch 16), [Cout, tiles];
* ``Y = Aᵀ M A`` (+ bias, activation) by ``output_kernel``, into the NCHW output.

Tiles are numbered image by image, row by row, ``TWp`` a tile row: the tile columns rounded up to
the vector width, so one vector holds L horizontally adjacent tiles (stride-2 input columns: a
deinterleaving shuffle of two vector loads). The input transform reads each input plane from a
zero-bordered copy in its part's scratch, so no load needs a bounds check; tiles past the output
compute values nobody stores.

The transforms are exact over the reals; in fp32 the result differs from the direct sum by
rounding only (|Δ| of a few ulp of the largest partial sum: the transforms add at most 4 terms of
magnitude |g|·|d|). ``applies`` says when it pays: enough channels for the GEMMs to run at speed
and few padding tiles.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from satura.engine.graph import Value
from satura.targets.gemm import GemmSpec, gemm_kernel
from satura.targets.irmath import Emitter
from satura.targets.kernel import FuncIR, Operand, body_header, share, wrapper
from satura.targets.lower import CHUNKS_PER_THREAD, Lowerer, Ref, Scratch, Step, worth_splitting

ENABLED = True
# Input and output channels: a GEMM over fewer runs far below peak. Measured here (1 thread, 3×3
# pads 1, Winograd vs direct): 16→16 at 56×56 221 vs 191 µs, 24→24 at 28×28 108 vs 127,
# 32→32 at 28×28 187 vs 223, at 14×14 60 vs 66.
MIN_CHANNELS = 24
MIN_USEFUL = 0.75  # at least this fraction of the computed tile outputs must be real outputs
# V and M hold 16 floats per tile and channel, 4x the input and output: a convolution whose two
# buffers would pass this stays direct (the arena grows by the whole of them).
MAX_BUFFER_BYTES = 96 << 20

G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float64)


def transform_weights(w: np.ndarray) -> np.ndarray:
    """[Cout, Cin, 3, 3] -> U [16, Cout, Cin], ``U[4i + j] = (G g Gᵀ)[i, j]``."""
    u = np.einsum("ik,ockl,jl->ijoc", G, w.astype(np.float64), G)
    return np.ascontiguousarray(u.reshape(16, *w.shape[:2]), np.float32)


def geometry(oh: int, ow: int, lanes: int) -> tuple[int, int]:
    """(TH, TWp): tile rows, and tile columns rounded up to a vector."""
    tw = -(-ow // 2)
    return -(-oh // 2), -(-tw // lanes) * lanes


def buffer_bytes(n: int, cin: int, cout: int, oh: int, ow: int, lanes: int) -> int:
    """Bytes of V and M (the GEMM's operand and result) for n images."""
    th, twp = geometry(oh, ow, lanes)
    return 4 * 16 * n * th * twp * (cin + cout)


def applies(
    n: int,
    cin: int,
    cout: int,
    kernel: tuple[int, ...],
    stride: tuple[int, ...],
    dil: tuple[int, ...],
    pads: tuple[int, ...],
    group: int,
    oh: int,
    ow: int,
    lanes: int,
) -> bool:
    """Whether a convolution takes the Winograd path (and whether it pays)."""
    if not ENABLED or tuple(kernel) != (3, 3) or group != 1:
        return False
    if tuple(stride) != (1, 1) or tuple(dil) != (1, 1) or max(pads) > 1:
        return False
    if min(cin, cout) < MIN_CHANNELS or min(oh, ow) < 2:
        return False
    th, twp = geometry(oh, ow, lanes)
    if buffer_bytes(n, cin, cout, oh, ow, lanes) > MAX_BUFFER_BYTES:
        return False
    return oh * ow >= MIN_USEFUL * 4 * th * twp


def _skew(floats: int) -> int:
    """Padding after a block of ``floats`` so that 16 such blocks start 64 bytes apart modulo
    4 KiB: the 16 ξ streams of a transform then fall in 16 L1 sets, not one."""
    return -(-floats // 1024) * 1024 + 16 - floats


def _deinterleave(ir: FuncIR, a: str, b: str, odd: int) -> str:
    """Lanes 0, 2, 4, ... (odd=1: 1, 3, 5, ...) of the 2L floats a ++ b."""
    idx = ", ".join(f"i32 {2 * e + odd}" for e in range(ir.lanes))
    return ir(f"shufflevector {ir.vty} {a}, {ir.vty} {b}, <{ir.lanes} x i32> <{idx}>")


def input_kernel(
    name: str,
    n: int,
    c: int,
    h: int,
    w: int,
    pt: int,
    pl: int,
    oh: int,
    ow: int,
    nr: int,
    lanes: int,
    xi_stride: int,
    v: Operand,
    x: Operand,
    buf: Operand,
) -> str:
    """``V[ξ][t // NR][c][t % NR]`` of every tile t and input channel c; parts share tile rows.

    A tile row reads 4 input rows of every channel, first copied into a zero-bordered band
    ``[c][4][Wp]`` (the part's scratch). Its tiles are then transformed a vector at a time, input
    channels innermost: each ξ's stores walk its panel rows in order.
    """
    th, twp = geometry(oh, ow, lanes)
    wp = 2 * twp + 2
    band = 4 * c * wp  # floats
    ir = FuncIR(lanes)
    em = Emitter(ir.L, lanes)
    vty = ir.vty
    share(ir.L, n * th, 1, "%u0", "%u1")
    pb = ir(f"getelementptr i8, ptr %a2, i64 {ir(f'mul i64 %part, {4 * band}')}")
    ir.do(f"call void @llvm.memset.p0.i64(ptr align 4 {pb}, i8 0, i64 {4 * band}, i1 false)")
    with ir.loop("%u0", "%u1") as u:
        img = ir(f"udiv i64 {u}, {th}")
        ty = ir(f"urem i64 {u}, {th}")
        y0 = ir(f"sub i64 {ir.mul(ty, 2)}, {pt}")
        with ir.loop(0, c) as ch:
            plane = ir.gep("%a1", ir.mul(ir.add(ir.mul(img, c), ch), h * w))
            for r in range(4):
                y = ir.add(y0, r)
                dst = ir.gep(pb, ir.add(ir.mul(ch, 4 * wp), r * wp + pl))
                inside = ir(f"icmp ult i64 {y}, {h}")  # 0 <= y < h
                with ir.when(inside):
                    ir.do(
                        f"call void @llvm.memcpy.p0.p0.i64(ptr align 4 {dst}, "
                        f"ptr align 4 {ir.gep(plane, ir.mul(y, w))}, i64 {4 * w}, i1 false)"
                    )
                with ir.when(ir(f"xor i1 {inside}, true")):
                    ir.do(
                        f"call void @llvm.memset.p0.i64(ptr align 4 {dst}, i8 0, "
                        f"i64 {4 * w}, i1 false)"
                    )
        trow = ir.mul(ir.add(ir.mul(img, th), ty), twp)
        # A whole panel (NR tiles: whole 64-byte lines of V) a step when tile rows hold panels:
        # 64→64 at 56×56 238 -> 156 µs against a vector of tiles a step.
        step = nr if twp % nr == 0 else lanes
        with ir.loop(0, twp, step) as tx:
            t0 = ir.add(trow, tx)
            off = ir.add(ir.mul(ir(f"udiv i64 {t0}, {nr}"), c * nr), ir(f"urem i64 {t0}, {nr}"))
            vt0 = ir.gep("%a0", off)
            with ir.loop(0, c) as ch:
                dst = ir.gep(vt0, ir.mul(ch, nr))
                for q in range(step // lanes):
                    col = ir.gep(pb, ir.add(ir.mul(tx, 2), 2 * q * lanes))
                    rows = []
                    for r in range(4):
                        base = ir.gep(col, ir.add(ir.mul(ch, 4 * wp), r * wp))
                        lo, hi, lo2, hi2 = (
                            ir(f"load {vty}, ptr {ir.gep(base, o)}, align 4")
                            for o in (0, lanes, 2, lanes + 2)
                        )
                        d0, d1 = _deinterleave(ir, lo, hi, 0), _deinterleave(ir, lo, hi, 1)
                        d2, d3 = _deinterleave(ir, lo2, hi2, 0), _deinterleave(ir, lo2, hi2, 1)
                        # d·B: the columns
                        rows.append(
                            [em.sub(d0, d2), em.add(d1, d2), em.sub(d2, d1), em.sub(d1, d3)]
                        )
                    # Bᵀ·(d·B): the rows
                    vt = [
                        [em.sub(rows[0][j], rows[2][j]) for j in range(4)],
                        [em.add(rows[1][j], rows[2][j]) for j in range(4)],
                        [em.sub(rows[2][j], rows[1][j]) for j in range(4)],
                        [em.sub(rows[1][j], rows[3][j]) for j in range(4)],
                    ]
                    for i in range(4):
                        for j in range(4):
                            ptr = ir.gep(dst, (4 * i + j) * xi_stride + q * lanes)
                            ir.do(f"store {vty} {vt[i][j]}, ptr {ptr}, align 4")
    ir.do("ret void")
    body = ir.func(body_header(name, 3))
    return "\n".join([wrapper(name, [v, x, buf]), body])


def output_kernel(
    name: str,
    n: int,
    m: int,
    oh: int,
    ow: int,
    act: str,
    lanes: int,
    xi_stride: int,
    y: Operand,
    mm: Operand,
    bias: Operand | None,
) -> str:
    """``Y = Aᵀ M A`` (+ bias, activation) of every output channel's tiles; parts share planes."""
    th, twp = geometry(oh, ow, lanes)
    tiles = n * th * twp
    ir = FuncIR(lanes)
    em = Emitter(ir.L, lanes)
    vty = ir.vty
    share(ir.L, n * m, 1, "%p0", "%p1")
    lo_idx = ", ".join(f"i32 {e // 2 + (lanes if e % 2 else 0)}" for e in range(lanes))
    hi_idx = ", ".join(f"i32 {lanes // 2 + e // 2 + (lanes if e % 2 else 0)}" for e in range(lanes))
    with ir.loop("%p0", "%p1") as p:
        img = ir(f"udiv i64 {p}, {m}")
        co = ir(f"urem i64 {p}, {m}")
        bv = None
        if bias is not None:
            bv = ir.splat(ir(f"load float, ptr {ir.gep('%a2', co)}, align 4"))
        src = ir.gep("%a1", ir.mul(co, tiles))
        dst = ir.gep("%a0", ir.mul(p, oh * ow))
        with ir.loop(0, th) as ty:
            trow = ir.mul(ir.add(ir.mul(img, th), ty), twp)
            with ir.loop(0, twp, lanes) as tx:
                t0 = ir.gep(src, ir.add(trow, tx))
                mv = [
                    ir(f"load {vty}, ptr {ir.gep(t0, xi * xi_stride)}, align 4") for xi in range(16)
                ]
                # M·A: the columns, then Aᵀ·(M·A): the rows
                s = [
                    [
                        em.add(em.add(mv[4 * i], mv[4 * i + 1]), mv[4 * i + 2]),
                        em.sub(em.sub(mv[4 * i + 1], mv[4 * i + 2]), mv[4 * i + 3]),
                    ]
                    for i in range(4)
                ]
                out = [
                    [em.add(em.add(s[0][j], s[1][j]), s[2][j]) for j in range(2)],
                    [em.sub(em.sub(s[1][j], s[2][j]), s[3][j]) for j in range(2)],
                ]
                x0 = ir.mul(tx, 2)
                for i in range(2):
                    v0, v1 = out[i]
                    if bv is not None:
                        v0, v1 = em.add(v0, bv), em.add(v1, bv)
                    v0, v1 = em.unary(act, v0), em.unary(act, v1)
                    lo = ir(f"shufflevector {vty} {v0}, {vty} {v1}, <{lanes} x i32> <{lo_idx}>")
                    hi = ir(f"shufflevector {vty} {v0}, {vty} {v1}, <{lanes} x i32> <{hi_idx}>")
                    oy = ir.add(ir.mul(ty, 2), i)
                    row_ok = ir(f"icmp slt i64 {oy}, {oh}")
                    with ir.when(row_ok):
                        rp = ir.gep(dst, ir.add(ir.mul(oy, ow), x0))
                        whole = ir(f"icmp sle i64 {ir.add(x0, 2 * lanes)}, {ow}")
                        with ir.when(whole):
                            ir.do(f"store {vty} {lo}, ptr {rp}, align 4")
                            ir.do(f"store {vty} {hi}, ptr {ir.gep(rp, lanes)}, align 4")
                        with ir.when(ir(f"xor i1 {whole}, true")):  # the row's last columns
                            for e in range(2 * lanes):
                                val = ir(
                                    f"extractelement {vty} {lo if e < lanes else hi}, "
                                    f"i64 {e % lanes}"
                                )
                                ok = ir(f"icmp slt i64 {ir.add(x0, e)}, {ow}")
                                with ir.when(ok):
                                    ir.do(f"store float {val}, ptr {ir.gep(rp, e)}, align 4")
    ir.do("ret void")
    body = ir.func(body_header(name, 3))
    return "\n".join([wrapper(name, [y, mm, bias]), body])


def lower(
    lw: Lowerer,
    name: str,
    op: str,
    x: Value,
    out: Value,
    wdata: np.ndarray,
    bias: Value | None,
    act: str,
    shape: tuple[int, int, int, int],
    oshape: tuple[int, int],
    pads: tuple[int, int, int, int],
) -> None:
    """The three steps (input transform, 16 GEMMs, output transform) of one convolution."""
    n, c, h, w = shape
    oh, ow = oshape
    m = wdata.shape[0]
    lanes = lw.host.lanes
    mr, nr = lw.host.gemm_tile
    th, twp = geometry(oh, ow, lanes)
    tiles = n * th * twp
    panels = -(-tiles // nr)
    spec = GemmSpec(
        16,
        m,
        tiles,
        c,
        m * c,
        True,
        False,
        False,
        "none",
        mr,
        nr,
        lanes,
        b_pad=_skew(panels * c * nr),
        c_pad=_skew(m * tiles),
    )
    u = lw.const(f"{name}_wino_u", transform_weights(wdata))
    vbuf = Scratch(f"{name}_wino_v", 4 * 16 * spec.b_stride)
    mbuf = Scratch(f"{name}_wino_m", 4 * 16 * spec.c_stride)
    pad = Scratch(f"{name}_wino_band", lw.threads * CHUNKS_PER_THREAD * 4 * 4 * c * (2 * twp + 2))
    flops = 2.0 * 16 * m * c * tiles

    def gen_in(loc: Callable[[Ref | None], Operand | None]) -> str:
        return input_kernel(
            f"{name}_wi",
            n,
            c,
            h,
            w,
            pads[0],
            pads[1],
            oh,
            ow,
            nr,
            lanes,
            spec.b_stride,
            loc(vbuf),
            loc(x),
            loc(pad),  # type: ignore[arg-type]
        )

    def gen_gemm(loc: Callable[[Ref | None], Operand | None]) -> str:
        return gemm_kernel(name, spec, loc(mbuf), loc(u), loc(vbuf), None, None)  # type: ignore

    def gen_out(loc: Callable[[Ref | None], Operand | None]) -> str:
        return output_kernel(
            f"{name}_wo",
            n,
            m,
            oh,
            ow,
            act,
            lanes,
            spec.c_stride,
            loc(out),
            loc(mbuf),
            loc(bias),  # type: ignore
        )

    par = worth_splitting(flops)
    lw.steps += [
        Step(f"{name}_wi", [x, pad], [vbuf], gen_in, parallel=par, op="winograd_in", units=n * th),
        Step(name, [u, vbuf], [mbuf], gen_gemm, parallel=par, op=op, units=lw.threads),
        Step(
            f"{name}_wo",
            [mbuf, *([bias] if bias is not None else [])],
            [out],
            gen_out,
            parallel=par,
            op="winograd_out",
            units=n * m,
        ),
    ]
