"""2-D convolution (NCHW, group 1) as im2col + GEMM: out[n] = act(W · col[n] + b).

``im2col`` writes col[n] ([C·KH·KW, OH·OW], row-major) with one pass per (channel, kernel row,
kernel column) and output row: zeros where the window hangs over the padding, and a strided copy
(contiguous for stride 1, which LLVM vectorizes) over the valid range, whose bounds are computed
here at compile time. The GEMM then takes the constant W [M, C·KH·KW] as A (row-major, as is),
packs col as B, and adds the bias per row (output channel) in its epilogue.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from satura.engine.graph import Node
from satura.targets.gemm import GemmSpec, gemm_kernel, pack_kernel
from satura.targets.irmath import ACTIVATIONS
from satura.targets.kernel import Loops, Operand, body_header, share, wrapper
from satura.targets.lower import PARALLEL_BYTES, Lowerer, Ref, Scratch, Step


@dataclass(frozen=True)
class ConvSpec:
    n: int
    c: int
    h: int
    w: int
    kh: int
    kw: int
    oh: int
    ow: int
    stride: tuple[int, int]
    pad: tuple[int, int]  # begin pads (H, W)
    dil: tuple[int, int]

    @property
    def k(self) -> int:
        return self.c * self.kh * self.kw

    @property
    def p(self) -> int:
        return self.oh * self.ow


def _valid(size: int, out: int, stride: int, pad: int, off: int) -> tuple[int, int]:
    """Output positions o in [lo, hi) whose input index o·stride - pad + off is inside [0, size)."""
    lo = 0
    while lo < out and lo * stride - pad + off < 0:
        lo += 1
    hi = out
    while hi > lo and (hi - 1) * stride - pad + off >= size:
        hi -= 1
    return lo, hi


def im2col_kernel(name: str, s: ConvSpec, x: Operand, col: Operand) -> str:
    """LLVM IR writing col[n] = im2col(x[n]) for every image; parts split the channels."""
    L = [body_header(name, 2), "entry:"]
    loops = Loops(L)
    for v in ("ni", "ci", "oy", "zx", "cx"):
        L.append(f"  %{v}.a = alloca i64, align 8")
    share(L, s.n * s.c, 1, "%c0", "%c1")
    loops.open("ci", "%c0", "%c1", 1)
    L += [f"  %xo = mul i64 %ci, {s.h * s.w}", "  %xc = getelementptr float, ptr %a1, i64 %xo",
          f"  %img = sdiv i64 %ci, {s.c}", f"  %ch = srem i64 %ci, {s.c}",
          f"  %cb0 = mul i64 %img, {s.k * s.p}", f"  %cb1 = mul i64 %ch, {s.kh * s.kw * s.p}",
          "  %cb = add i64 %cb0, %cb1", "  %cc = getelementptr float, ptr %a0, i64 %cb"]
    sy, sx = s.stride
    for ky in range(s.kh):
        ylo, yhi = _valid(s.h, s.oh, sy, s.pad[0], ky * s.dil[0])
        for kx in range(s.kw):
            xlo, xhi = _valid(s.w, s.ow, sx, s.pad[1], kx * s.dil[1])
            t = f"{ky}_{kx}"
            row = (ky * s.kw + kx) * s.p
            loops.open(f"oy{t}", "0", str(s.oh), 1)
            L += [f"  %dst{t} = mul i64 %oy{t}, {s.ow}", f"  %dsr{t} = add i64 %dst{t}, {row}",
                  f"  %dp{t} = getelementptr float, ptr %cc, i64 %dsr{t}",
                  f"  %yin{t} = icmp sge i64 %oy{t}, {ylo}",
                  f"  %yin2{t} = icmp slt i64 %oy{t}, {yhi}",
                  f"  %yok{t} = and i1 %yin{t}, %yin2{t}",
                  f"  %clo{t} = select i1 %yok{t}, i64 {xlo}, i64 {s.ow}",
                  f"  %chi{t} = select i1 %yok{t}, i64 {xhi}, i64 {s.ow}",
                  f"  %iy0{t} = mul i64 %oy{t}, {sy}",
                  f"  %iy{t} = add i64 %iy0{t}, {ky * s.dil[0] - s.pad[0]}",
                  f"  %iyw{t} = mul i64 %iy{t}, {s.w}"]
            for part, lo, hi in (("z1", "0", f"%clo{t}"), ("z2", f"%chi{t}", str(s.ow))):
                loops.open(f"{part}{t}", lo, hi, 1)
                L += [f"  %{part}p{t} = getelementptr float, ptr %dp{t}, i64 %{part}{t}",
                      f"  store float 0.0, ptr %{part}p{t}"]
                loops.close(f"{part}{t}", 1)
            loops.open(f"cx{t}", f"%clo{t}", f"%chi{t}", 1)
            L += [f"  %ix0{t} = mul i64 %cx{t}, {sx}",
                  f"  %ix1{t} = add i64 %ix0{t}, {kx * s.dil[1] - s.pad[1]}",
                  f"  %ix{t} = add i64 %ix1{t}, %iyw{t}",
                  f"  %sp{t} = getelementptr float, ptr %xc, i64 %ix{t}",
                  f"  %sv{t} = load float, ptr %sp{t}",
                  f"  %cp{t} = getelementptr float, ptr %dp{t}, i64 %cx{t}",
                  f"  store float %sv{t}, ptr %cp{t}"]
            loops.close(f"cx{t}", 1)
            loops.close(f"oy{t}", 1)
    loops.close("ci", 1)
    L += ["  ret void", "}"]
    allocas = [f"  %{v}.a = alloca i64, align 8" for ky in range(s.kh) for kx in range(s.kw)
               for v in (f"oy{ky}_{kx}", f"z1{ky}_{kx}", f"z2{ky}_{kx}", f"cx{ky}_{kx}")]
    L[2:2] = allocas
    return wrapper(name, [col, x]) + "\n" + "\n".join(L)


def lower_conv(lw: Lowerer, node: Node, name: str) -> bool:
    x, w = node.inputs[0], node.inputs[1]
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    out = node.outputs[0]
    assert x is not None
    assert w is not None
    at = node.attrs
    if x.type.rank != 4 or at.get("group", 1) != 1 or not w.is_const:
        return False
    n, c, h, wd = (int(d) for d in x.type.shape)
    m, _, kh, kw = (int(d) for d in w.type.shape)
    oh, ow = (int(d) for d in out.type.shape[2:])
    st = at.get("strides") or (1, 1)
    pads = at.get("pads") or (0, 0, 0, 0)
    dil = at.get("dilations") or (1, 1)
    spec = ConvSpec(n, c, h, wd, kh, kw, oh, ow, tuple(st), (pads[0], pads[1]),
                    tuple(dil))  # type: ignore[arg-type]
    act = at.get("act", "none")
    if act not in ACTIVATIONS:
        return False
    mr, nr = lw.host.gemm_tile
    gspec = GemmSpec(n, m, spec.p, spec.k, 0, True, bias is not None, False, act, mr, nr,
                     lw.host.lanes, bias_rows=True)
    col = Scratch(f"{name}_col", 4 * n * spec.k * spec.p)
    packed = Scratch(f"{name}_bpack", 4 * n * gspec.packed_elems)

    def gen_col(loc: Callable[[Ref | None], Operand | None]) -> str:
        return im2col_kernel(f"{name}_im2col", spec, loc(x), loc(col))  # type: ignore

    def gen_pack(loc: Callable[[Ref | None], Operand | None]) -> str:
        return pack_kernel(f"{name}_pack", n, spec.k, spec.p, nr, loc(col),  # type: ignore
                           loc(packed))  # type: ignore[arg-type]

    def gen(loc: Callable[[Ref | None], Operand | None]) -> str:
        return gemm_kernel(name, gspec, loc(out), loc(w), loc(packed),  # type: ignore
                           loc(bias), None)

    big = spec.k * spec.p * n * 4 > PARALLEL_BYTES
    lw.steps += [Step(f"{name}_im2col", [x], [col], gen_col, parallel=big, op="im2col"),
                   Step(f"{name}_pack", [col], [packed], gen_pack, parallel=big, op="pack"),
                   Step(name, [w, packed, *([bias] if bias else [])], [out], gen,
                        parallel=big and m > mr, op=node.op)]
    return True
