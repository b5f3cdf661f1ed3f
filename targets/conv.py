"""2-D convolution (NCHW, any group, stride, pads, dilation), direct, with a register-blocked tile.

**Window geometry** (:class:`Window`, shared with pooling). A stride-s window reads every s-th
input column, which no vector load can do. So the input is first rewritten (``prep_kernel``) as
*phase planes*: for each (row phase py, column phase px) that a kernel tap hits, the plane
``P[py, px][qy, qx] = xpad[qy·sy + py, qx·sx + px]`` of the padded input (pads hold ``padval``:
0 for convolution, -inf for max pooling). Tap (ky, kx) at output (oy, ox) then reads
``P[(ky·dy) % sy, (kx·dx) % sx][oy + (ky·dy) // sy, ox + (kx·dx) // sx]``: consecutive output
columns read consecutive floats of one plane, at a per-tap offset known at compile time. With
stride 1 and no padding the input is its own (single) plane and no copy is made. When no tap moves
along a plane row (``qx == 0`` for all taps, e.g. 1×1 kernels), a plane row is exactly an output
row, so the output plane is walked as one flat row of OH·OW pixels.

**Convolution** (``conv_kernel``). Weights are constants, packed here at compile time into blocks
of MR output channels ``Wp[g][mb][c][tap][MR]`` (a following inference batch norm folded in). The
micro-kernel keeps an MR (output channels) × NV vectors (output pixels) tile of accumulators in
registers; per input channel and tap it loads NV input vectors and broadcasts MR weights, then
adds the bias, applies the activation (``act``, or a relu-like op that follows) and stores. MR
and NV come from a cycle estimate (``choose_tile``). A tile's vectors lie in one output row; the
partial tails of ``rg`` consecutive rows share one tile, so narrow rows still fill the registers.
Partial vectors load past the row (into the next row, or the slack after the planes; lane by lane
when the input is read in place) and store lane by lane.

Loop order: a work unit is (image·group, rows, column chunk) and runs every output-channel block
over each tile while the tile is in L1 and the group's weights in L2; when the weights exceed L2
(``WEIGHTS_IN_L2``) a unit is instead a few output-channel blocks that walk every row. Input
channels are cut into blocks that fit L1 with the weights (``L1_BUDGET``; partial sums added back
in the output). For flat and strided windows each tile is first copied into a contiguous
per-part panel (``PACK_BLOCKS``). Units are split between parts (cores); a serial convolution
writes its phase planes in the same kernel. A group that reads one input plane (depthwise) is a
unit of its own: its phase planes go into the part's scratch and are convolved at once
(``plane_by_plane_kernel``, which pooling shares), with no pass over the whole input.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
from satura.engine.graph import Node, Value
from satura.targets import winograd
from satura.targets.irmath import ACTIVATIONS, CHEAP_ACTIVATIONS, Emitter, fconst, vec_type
from satura.targets.kernel import Loops, Operand, body_header, share, wrapper
from satura.targets.lower import (
    CHUNKS_PER_THREAD,
    Lowerer,
    Ref,
    Scratch,
    Step,
    worth_splitting,
)
from satura.targets.memory import align


@dataclass(frozen=True)
class Window:
    """A 2-D sliding window over ``planes`` input planes of H×W giving OH×OW outputs each."""

    planes: int  # N·C input planes
    h: int
    w: int
    kh: int
    kw: int
    oh: int
    ow: int
    stride: tuple[int, int]
    pad: tuple[int, int]  # begin pads (top, left); the end pads are implied by OH, OW
    dil: tuple[int, int]

    @property
    def phases_y(self) -> list[int]:
        return sorted({(k * self.dil[0]) % self.stride[0] for k in range(self.kh)})

    @property
    def phases_x(self) -> list[int]:
        return sorted({(k * self.dil[1]) % self.stride[1] for k in range(self.kw)})

    @property
    def prep(self) -> bool:
        """Whether the input needs rewriting into phase planes (strided or padded)."""
        return self.stride != (1, 1) or self.pad != (0, 0) or self.hq != self.h or self.wq != self.w

    @property
    def hq(self) -> int:
        return self.oh + (self.kh - 1) * self.dil[0] // self.stride[0]

    @property
    def wq(self) -> int:
        return self.ow + (self.kw - 1) * self.dil[1] // self.stride[1]

    @property
    def nphase(self) -> int:
        return len(self.phases_y) * len(self.phases_x)

    @property
    def plane_stride(self) -> int:
        """Floats between consecutive input planes in the (rewritten) input."""
        return self.nphase * self.hq * self.wq if self.prep else self.h * self.w

    @property
    def flat(self) -> bool:
        """No tap moves along a row: walk each output plane as one row of OH·OW pixels."""
        return self.wq == self.ow

    def taps(self) -> list[int]:
        """Float offset of each tap (ky-major) from the (0, 0) output's input."""
        sy, sx = self.stride
        py, px = self.phases_y, self.phases_x
        out = []
        for ky in range(self.kh):
            for kx in range(self.kw):
                fy, fx = ky * self.dil[0], kx * self.dil[1]
                plane = py.index(fy % sy) * len(px) + px.index(fx % sx)
                out.append(plane * self.hq * self.wq + (fy // sy) * self.wq + fx // sx)
        return out


Dims2 = tuple[int, int]
Geometry = tuple[tuple[int, int, int, int], Dims2, Dims2, Dims2, tuple[int, ...], Dims2]


def window_2d(
    x: tuple[int, ...], out: tuple[int, ...], kernel: tuple[int, ...], at: dict
) -> Geometry | None:
    """(N, C, H, W), (OH, OW), kernel, strides, pads (4), dilations of a 2-D window; a 1-D one
    (rank 3) as a 2-D window of height 1; None for other ranks."""
    nsp = len(x) - 2
    if nsp not in (1, 2) or len(kernel) != nsp or len(out) != len(x):
        return None
    st = tuple(int(v) for v in at.get("strides") or (1,) * nsp)
    pads = tuple(int(v) for v in at.get("pads") or (0,) * (2 * nsp))
    dil = tuple(int(v) for v in at.get("dilations") or (1,) * nsp)
    if nsp == 1:
        return (
            (x[0], x[1], 1, x[2]),
            (1, out[2]),
            (1, kernel[0]),
            (1, st[0]),
            (0, pads[0], 0, pads[1]),
            (1, dil[0]),
        )
    return (
        (x[0], x[1], x[2], x[3]),
        (out[2], out[3]),
        (kernel[0], kernel[1]),
        (st[0], st[1]),
        pads,
        (dil[0], dil[1]),
    )


def _span(size: int, out: int, stride: int, phase: int, pad: int) -> tuple[int, int]:
    """Plane positions q in [lo, hi) whose input index q·stride + phase - pad is in [0, size)."""
    lo = 0
    while lo < out and lo * stride + phase - pad < 0:
        lo += 1
    hi = max(lo, out)
    while hi > lo and (hi - 1) * stride + phase - pad >= size:
        hi -= 1
    return lo, hi


# Phase planes of column strides 2 up to this are copied a vector at a time, through one wide
# load and a shuffle (wider strides, as in patch embeddings, element by element; stride 1 is a
# plain copy that LLVM vectorizes itself, better: 139 vs 207 µs on 8×144×28×28). Measured here:
# MobileNetV2's 3×3 stride-2 depthwise planes, 8×96×56×56: 434 -> 394 µs; 8×144×28×28: 275 ->
# 244 µs.
PREP_VECTOR_STRIDE = 4


def i64_table(name: str, values: list[int]) -> str:
    """A module-level constant array ``@name`` of i64s (offsets a loop reads by index)."""
    items = ", ".join(f"i64 {v}" for v in values)
    return f"@{name} = private unnamed_addr constant [{len(values)} x i64] [{items}]"


def table_entry(dst: str, name: str, n: int, index: str) -> list[str]:
    """``dst`` = ``@name[index]`` of an :func:`i64_table` of ``n`` entries."""
    return [
        f"  {dst}.p = getelementptr [{n} x i64], ptr @{name}, i64 0, i64 {index}",
        f"  {dst} = load i64, ptr {dst}.p, align 8",
    ]


def prep_kernel(name: str, win: Window, x: Operand, xp: Operand, padval: float, lanes: int) -> str:
    """LLVM IR writing the phase planes of every input plane (pads = ``padval``), then ``lanes``
    floats of slack (zeros) after the last one; parts split the input planes."""
    pv = fconst(padval)
    L = [body_header(name, 2), "entry:"]
    loops = Loops(L)
    allocas = ["p"]
    share(L, win.planes, 1, "%c0", "%c1")
    loops.open("p", "%c0", "%c1", 1)
    L += [
        f"  %so = mul i64 %p, {win.h * win.w}",
        "  %src = getelementptr float, ptr %a1, i64 %so",
        f"  %do = mul i64 %p, {win.plane_stride}",
        "  %dst = getelementptr float, ptr %a0, i64 %do",
    ]
    sy, sx = win.stride
    nx = len(win.phases_x)
    # Strides past the vector copy's walk their x phases in a loop (16×16 phases unrolled made
    # an 18k-line kernel that LLVM took minutes over); smaller ones are unrolled.
    by_loop = sx > PREP_VECTOR_STRIDE and nx > 1
    tables: list[str] = []
    if by_loop:
        spans = [_span(win.w, win.wq, sx, px, win.pad[1]) for px in win.phases_x]
        for tab, vals in (
            ("px", [px - win.pad[1] for px in win.phases_x]),
            ("xlo", [lo for lo, _ in spans]),
            ("xhi", [hi for _, hi in spans]),
        ):
            tables.append(i64_table(f"{name}_{tab}", vals))
    for iy_, py in enumerate(win.phases_y):
        ylo, yhi = _span(win.h, win.hq, sy, py, win.pad[0])
        # (name suffix, plane offset, first and end inner columns, input column offset, vectors)
        phases: list[tuple[str, str, str, str, str, int]] = []
        if by_loop:
            t = f"_{py}_r_"
            allocas.append(f"ix{t}")
            loops.open(f"ix{t}", "0", str(nx), 1)
            for tab in ("px", "xlo", "xhi"):
                L += table_entry(f"%{tab}{t}", f"{name}_{tab}", nx, f"%ix{t}")
            L += [
                f"  %pof0{t} = mul i64 %ix{t}, {win.hq * win.wq}",
                f"  %pof{t} = add i64 %pof0{t}, {iy_ * nx * win.hq * win.wq}",
            ]
            phases.append((t, f"%pof{t}", f"%xlo{t}", f"%xhi{t}", f"%px{t}", 0))
        for ix_, px in enumerate(win.phases_x if not by_loop else ()):
            xlo, xhi = _span(win.w, win.wq, sx, px, win.pad[1])
            # Whole vectors first: L plane floats from sx·L consecutive input floats (one wide
            # load, one shuffle), every one whose load starts at or before ``last``.
            nvec = 0
            if 2 <= sx <= PREP_VECTOR_STRIDE:
                last = (win.w - sx * lanes - px + win.pad[1]) // sx  # last start that fits
                nvec = min((xhi - xlo) // lanes, (last - xlo) // lanes + 1) if last >= xlo else 0
            poff = (iy_ * nx + ix_) * win.hq * win.wq
            # "_"-delimited: no name is another plus a suffix
            phases.append(
                (f"_{py}_{px}_", str(poff), str(xlo), str(xhi), str(px - win.pad[1]), nvec)
            )
        for t, poff, xlo, xhi, xoff, nvec in phases:
            _phase_rows(
                L, loops, allocas, win, t, (py, ylo, yhi), lanes, pv, (poff, xlo, xhi, xoff), nvec
            )
        if by_loop:
            loops.close(f"ix_{py}_r_", 1)
    loops.close("p", 1)
    # The slack after the last plane: partial tiles load whole vectors past a plane's end.
    L += [
        f"  %lastp = icmp eq i64 %c1, {win.planes}",
        "  br i1 %lastp, label %slack, label %done",
        "slack:",
        f"  %sl = getelementptr float, ptr %a0, i64 {win.planes * win.plane_stride}",
        f"  store {vec_type(lanes)} zeroinitializer, ptr %sl, align 4",
        "  br label %done",
        "done:",
        "  ret void",
        "}",
    ]
    L[2:2] = [f"  %{v}.a = alloca i64, align 8" for v in allocas]
    return "\n".join([*tables, wrapper(name, [xp, x]), *L])


def _phase_rows(
    L: list[str],
    loops: Loops,
    allocas: list[str],
    win: Window,
    t: str,
    ys: tuple[int, int, int],
    lanes: int,
    pv: str,
    xs: tuple[str, str, str, str],
    nvec: int,
) -> None:
    """The rows of one phase plane: ``ys`` its y phase and inner rows [lo, hi); ``xs`` its plane
    offset, inner columns [lo, hi) and input column offset, constants or registers. Pads, then
    ``nvec`` vectors, then scalars."""
    py, ylo, yhi = ys
    poff, xlo, xhi, xoff = xs
    sy, sx = win.stride
    allocas += [f"qy{t}", f"z1{t}", f"z2{t}", f"cx{t}"]
    loops.open(f"qy{t}", "0", str(win.hq), 1)
    L += [
        f"  %ro{t}0 = mul i64 %qy{t}, {win.wq}",
        f"  %ro{t} = add i64 %ro{t}0, {poff}",
        f"  %row{t} = getelementptr float, ptr %dst, i64 %ro{t}",
        f"  %yin{t} = icmp sge i64 %qy{t}, {ylo}",
        f"  %yin2{t} = icmp slt i64 %qy{t}, {yhi}",
        f"  %yok{t} = and i1 %yin{t}, %yin2{t}",
        f"  %clo{t} = select i1 %yok{t}, i64 {xlo}, i64 {win.wq}",
        f"  %chi{t} = select i1 %yok{t}, i64 {xhi}, i64 {win.wq}",
        f"  %iy0{t} = mul i64 %qy{t}, {sy}",
        f"  %iy{t} = add i64 %iy0{t}, {py - win.pad[0]}",
        f"  %iyw{t} = mul i64 %iy{t}, {win.w}",
        f"  %srow{t} = getelementptr float, ptr %src, i64 %iyw{t}",
    ]
    for part, lo, hi in (("z1", "0", f"%clo{t}"), ("z2", f"%chi{t}", str(win.wq))):
        loops.open(f"{part}{t}", lo, hi, 1)
        L += [
            f"  %{part}p{t} = getelementptr float, ptr %row{t}, i64 %{part}{t}",
            f"  store float {pv}, ptr %{part}p{t}",
        ]
        loops.close(f"{part}{t}", 1)
    if nvec:
        wide, vty = f"<{sx * lanes} x float>", vec_type(lanes)
        pick = ", ".join(f"i32 {j * sx}" for j in range(lanes))
        allocas.append(f"cv{t}")
        L.append(f"  %cve{t} = select i1 %yok{t}, i64 {int(xlo) + nvec * lanes}, i64 {win.wq}")
        loops.open(f"cv{t}", f"%clo{t}", f"%cve{t}", lanes)
        L += [
            f"  %vx0{t} = mul i64 %cv{t}, {sx}",
            f"  %vx{t} = add i64 %vx0{t}, {xoff}",
            f"  %vp{t} = getelementptr float, ptr %srow{t}, i64 %vx{t}",
            f"  %vw{t} = load {wide}, ptr %vp{t}, align 4",
            f"  %vv{t} = shufflevector {wide} %vw{t}, {wide} poison, <{lanes} x i32> <{pick}>",
            f"  %vq{t} = getelementptr float, ptr %row{t}, i64 %cv{t}",
            f"  store {vty} %vv{t}, ptr %vq{t}, align 4",
        ]
        loops.close(f"cv{t}", lanes)
    loops.open(f"cx{t}", f"%cve{t}" if nvec else f"%clo{t}", f"%chi{t}", 1)
    L += [
        f"  %ix0{t} = mul i64 %cx{t}, {sx}",
        f"  %ixx{t} = add i64 %ix0{t}, {xoff}",
        f"  %sp{t} = getelementptr float, ptr %srow{t}, i64 %ixx{t}",
        f"  %sv{t} = load float, ptr %sp{t}",
        f"  %cp{t} = getelementptr float, ptr %row{t}, i64 %cx{t}",
        f"  store float %sv{t}, ptr %cp{t}",
    ]
    loops.close(f"cx{t}", 1)
    loops.close(f"qy{t}", 1)


def prep_bytes(win: Window, lanes: int) -> int:
    """The planes and the slack after them: row-split packing reads up to a row and two vectors
    past a plane's last row (the lanes it discards)."""
    return 4 * (win.planes * win.plane_stride + 2 * (win.wq + lanes))


# -- tiles ----------------------------------------------------------------------------------------
Vec = tuple[int, int, int]  # (input offset, output offset, valid lanes or 0 for all) of a vector


@dataclass(frozen=True)
class Tiling:
    """How walked output rows are cut into tiles of NV vectors of L lanes.

    A row holds ``full`` whole tiles and a ``tail`` of fewer pixels. The tails of ``rg``
    consecutive rows form one tile together (NV // tail vectors each), so narrow rows still fill
    the registers; a work unit is ``rg`` rows (a chunk of tiles when the plane is walked flat)."""

    rows: int  # output rows walked (OH, or 1 when flat)
    width: int  # pixels per walked row (OW, or OH·OW when flat)
    in_row: int  # input floats between walked rows
    out_row: int  # output floats between walked rows
    lanes: int
    nv: int
    per_chunk: int  # full tiles per work unit
    rg: int  # rows per work unit

    @property
    def tw(self) -> int:
        return self.nv * self.lanes

    @property
    def full(self) -> int:
        return self.width // self.tw

    @property
    def tail(self) -> int:
        return self.width % self.tw

    @property
    def chunks(self) -> int:
        return max(1, -(-self.full // self.per_chunk))

    @property
    def groups(self) -> int:
        return -(-self.rows // self.rg)

    def full_vecs(self) -> list[Vec]:
        return [(v * self.lanes, v * self.lanes, 0) for v in range(self.nv)]

    def tail_vecs(self, rows: int) -> list[Vec]:
        """The tail tile of ``rows`` rows, from the first row's tail start."""
        n = -(-self.tail // self.lanes)
        return [
            (
                j * self.in_row + v * self.lanes,
                j * self.out_row + v * self.lanes,
                self.tail % self.lanes if v == n - 1 else 0,
            )
            for j in range(rows)
            for v in range(n)
        ]


def row_group(width: int, lanes: int, nv: int, flat: bool) -> int:
    tail = width % (nv * lanes)
    return 1 if flat or not tail else max(1, nv // -(-tail // lanes))


def tiling(win: Window, lanes: int, nv: int) -> Tiling:
    if win.flat:
        return Tiling(1, win.oh * win.ow, 0, 0, lanes, nv, max(1, 256 // (nv * lanes)), 1)
    full = win.ow // (nv * lanes)
    return Tiling(
        win.oh,
        win.ow,
        win.wq,
        win.ow,
        lanes,
        nv,
        max(1, full),
        min(win.oh, row_group(win.ow, lanes, nv, False)),
    )


def load_tile(
    out: list[str], p: str, base: str, off: int, lanes: int, valid: int, safe: bool
) -> str:
    """Emit a vector load of ``lanes`` floats at ``base + off``; only ``valid`` lanes (0: all)
    are needed, and unless ``safe`` only those may be read."""
    vty = vec_type(lanes)
    out.append(f"  {p}p = getelementptr float, ptr {base}, i64 {off}")
    if valid == 0 or safe:
        out.append(f"  {p} = load {vty}, ptr {p}p, align 4")
        return p
    prev = "zeroinitializer"
    for j in range(valid):
        out += [
            f"  {p}q{j} = getelementptr float, ptr {p}p, i64 {j}",
            f"  {p}s{j} = load float, ptr {p}q{j}, align 4",
            f"  {p}i{j} = insertelement {vty} {prev}, float {p}s{j}, i64 {j}",
        ]
        prev = f"{p}i{j}"
    out.append(f"  {p} = fadd {vty} {prev}, zeroinitializer")
    return p


def store_tile(out: list[str], val: str, ptr: str, lanes: int, valid: int) -> None:
    """Store vector ``val`` at ``ptr``: all lanes, or the first ``valid`` one by one."""
    vty = vec_type(lanes)
    if valid == 0:
        out.append(f"  store {vty} {val}, ptr {ptr}, align 4")
        return
    for j in range(valid):
        out += [
            f"  {val}x{j} = extractelement {vty} {val}, i64 {j}",
            f"  {val}q{j} = getelementptr float, ptr {ptr}, i64 {j}",
            f"  store float {val}x{j}, ptr {val}q{j}, align 4",
        ]


def splat(out: list[str], lanes: int, scalar: str, name: str) -> str:
    vty = vec_type(lanes)
    out += [
        f"  {name}i = insertelement {vty} poison, float {scalar}, i64 0",
        f"  {name} = shufflevector {vty} {name}i, {vty} poison, <{lanes} x i32> zeroinitializer",
    ]
    return name


# call(lines, x_tile_ptr, o_tile_ptr, vecs, block, kblock): emit the work of one tile
TileCall = Callable[[list[str], str, str, list[Vec], str, str], None]


def driver_units(t: Tiling, outer: int, blocks: int, per_unit: int = 0) -> int:
    """The work units ``tile_driver`` shares between parts (see there)."""
    by_rows = per_unit <= 0 or per_unit >= blocks
    return outer * (t.groups * t.chunks if by_rows else -(-blocks // per_unit))


def tile_driver(
    name: str,
    t: Tiling,
    outer: int,
    x_outer: int,
    o_outer: int,
    nptrs: int,
    blocks: int,
    kblocks: int,
    call: TileCall,
    per_unit: int = 0,
    pre: TileCall | None = None,
) -> list[str]:
    """The body that walks this part's share of work units and emits ``call`` per tile and
    block. With ``per_unit`` 0 (or at least ``blocks``) a unit is (outer index, group of rows,
    chunk of tiles) and takes every block: the blocks' data (weights) is re-read per unit. Else a
    unit is (outer index, ``per_unit`` blocks) and walks every row: the input is re-read per
    unit. Inside, reduction blocks are outermost, then rows, tiles and blocks; ``pre`` (block
    "") runs per tile before its blocks. ``%a0`` is the output and ``%a1`` the input;
    ``%outer`` is live in ``call``."""
    L = [body_header(name, nptrs), "entry:"]
    loops = Loops(L)
    L += [
        f"  %{v}.a = alloca i64, align 8"
        for v in ("u", "t", "blk", "blt", "blp", "kb", "j", "gl", "cl")
    ]
    by_rows = per_unit <= 0 or per_unit >= blocks
    per = driver_units(t, 1, blocks, per_unit)
    share(L, outer * per, 1, "%u0", "%u1")
    loops.open("u", "%u0", "%u1", 1)
    L += [f"  %outer = udiv i64 %u, {per}", f"  %rc = urem i64 %u, {per}"]
    if by_rows:
        L += [f"  %grp = udiv i64 %rc, {t.chunks}", f"  %ch = urem i64 %rc, {t.chunks}"]
        b0, b1 = "0", str(blocks)
    else:
        L += [
            f"  %b0 = mul i64 %rc, {per_unit}",
            f"  %b1a = add i64 %b0, {per_unit}",
            f"  %b1 = call i64 @llvm.smin.i64(i64 %b1a, i64 {blocks})",
        ]
        b0, b1 = "%b0", "%b1"
    kb = "%kb" if kblocks > 1 else "0"
    if kblocks > 1:
        loops.open("kb", "0", str(kblocks), 1)
    if not by_rows:
        loops.open("gl", "0", str(t.groups), 1)
        loops.open("cl", "0", str(t.chunks), 1)
        L += ["  %grp = add i64 %gl, 0", "  %ch = add i64 %cl, 0"]
    L += [
        f"  %row0 = mul i64 %grp, {t.rg}",
        f"  %rleft = sub i64 {t.rows}, %row0",
        f"  %nrows = call i64 @llvm.smin.i64(i64 %rleft, i64 {t.rg})",
        f"  %xb0 = mul i64 %outer, {x_outer}",
        f"  %xb1 = mul i64 %row0, {t.in_row}",
        "  %xb = add i64 %xb0, %xb1",
        "  %xbase = getelementptr float, ptr %a1, i64 %xb",
        f"  %ob0 = mul i64 %outer, {o_outer}",
        f"  %ob1 = mul i64 %row0, {t.out_row}",
        "  %ob = add i64 %ob0, %ob1",
        "  %obase = getelementptr float, ptr %a0, i64 %ob",
        f"  %t0 = mul i64 %ch, {t.per_chunk}",
        f"  %t1a = add i64 %t0, {t.per_chunk}",
        f"  %t1 = call i64 @llvm.smin.i64(i64 %t1a, i64 {t.full})",
    ]
    multi = blocks > 1

    def tile(xt: str, ot: str, vecs: list[Vec], var: str) -> None:
        if pre is not None:
            pre(L, xt, ot, vecs, "", kb)
        if multi:
            loops.open(var, b0, b1, 1)
        call(L, xt, ot, vecs, f"%{var}" if multi else "0", kb)
        if multi:
            loops.close(var, 1)

    if t.full:
        loops.open("j", "0", "%nrows", 1)
        L += [
            f"  %jx = mul i64 %j, {t.in_row}",
            f"  %jo = mul i64 %j, {t.out_row}",
            "  %xrow = getelementptr float, ptr %xbase, i64 %jx",
            "  %orow = getelementptr float, ptr %obase, i64 %jo",
        ]
        loops.open("t", "%t0", "%t1", 1)
        L += [
            f"  %px = mul i64 %t, {t.tw}",
            "  %xt = getelementptr float, ptr %xrow, i64 %px",
            "  %ot = getelementptr float, ptr %orow, i64 %px",
        ]
        tile("%xt", "%ot", t.full_vecs(), "blk")
        loops.close("t", 1)
        loops.close("j", 1)
    if t.tail:
        L += [
            f"  %lastch = icmp eq i64 %ch, {t.chunks - 1}",
            "  br i1 %lastch, label %tail, label %tdone",
            "tail:",
            f"  %xtt = getelementptr float, ptr %xbase, i64 {t.full * t.tw}",
            f"  %ott = getelementptr float, ptr %obase, i64 {t.full * t.tw}",
        ]
        part = t.rows % t.rg
        if part:
            L += [
                f"  %whole = icmp eq i64 %nrows, {t.rg}",
                "  br i1 %whole, label %tw.y, label %tw.n",
                "tw.y:",
            ]
        tile("%xtt", "%ott", t.tail_vecs(t.rg), "blt")
        if part:
            L += ["  br label %tw.x", "tw.n:"]
            tile("%xtt", "%ott", t.tail_vecs(part), "blp")
            L += ["  br label %tw.x", "tw.x:"]
        L += ["  br label %tdone", "tdone:"]
    if not by_rows:
        loops.close("cl", 1)
        loops.close("gl", 1)
    if kblocks > 1:
        loops.close("kb", 1)
    loops.close("u", 1)
    L += ["  ret void", "}"]
    return L


# -- convolution ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ConvSpec:
    win: Window  # planes = N·C
    n: int
    c: int
    m: int
    group: int
    mr: int
    t: Tiling
    has_bias: bool
    act: str
    safe: bool  # whole-vector loads past a row are inside the buffer
    cb: int  # input channels per block (the micro-kernel's reduction)
    per_unit: int = 0  # channel blocks per work unit (0: all, units are rows)
    packed: bool = False  # tiles copied into a per-part panel [channel][tap][NV·L] first
    split: bool = False  # packed tiles of the flat output, vectors split between two rows

    @property
    def panel_bytes(self) -> int:
        return align(4 * self.cb * self.kk * self.t.tw)

    @property
    def kblocks(self) -> int:
        return -(-self.cg // self.cb)

    @property
    def cg(self) -> int:
        return self.c // self.group

    @property
    def mg(self) -> int:
        return self.m // self.group

    @property
    def mblocks(self) -> int:
        return -(-self.mg // self.mr)

    @property
    def kk(self) -> int:
        return self.win.kh * self.win.kw

    @property
    def flops(self) -> float:
        return 2.0 * self.n * self.m * self.cg * self.kk * self.win.oh * self.win.ow


def pack_weights(w: np.ndarray, group: int, mr: int) -> np.ndarray:
    """[M, Cg, KH, KW] -> [G][ceil(Mg/MR)][Cg][KH·KW][MR] (zero rows past Mg)."""
    m, cg, kh, kw = w.shape
    mg = m // group
    mb = -(-mg // mr)
    wg = np.zeros((group, mb * mr, cg, kh * kw), np.float32)
    wg[:, :mg] = w.reshape(group, mg, cg, kh * kw)
    return np.ascontiguousarray(wg.reshape(group, mb, mr, cg, kh * kw).transpose(0, 1, 3, 4, 2))


# Kernels with more taps than this loop over their rows in the micro-kernel (a row's taps
# unrolled). Measured A/B in one process, 1 thread: 7×7/2 3→64 at 224² 3.23 -> 3.06 ms (batch 8
# at 112²: 9.82 -> 7.45), 11×11/4 (AlexNet) 2.39 -> 2.18 ms, 9×9 32→32 at 56² 9.21 -> 7.12 ms,
# and LLVM's time halves; 3×3 16→16 ran 15% slower by rows, 5×5 and 3×3/2 equal.
MAX_UNROLLED_TAPS = 32


def _conv_ukernel(fname: str, s: ConvSpec, mr: int, vecs: list[Vec]) -> str:
    """Micro-kernel: ``mr`` output channels × the vectors ``vecs`` of output pixels, over
    ``%nc`` input channels. With several channel blocks, ``%accum`` adds the partial sums
    already in the output and ``%last`` marks the block that applies bias and activation."""
    lanes, vty = s.t.lanes, vec_type(s.t.lanes)
    nv = len(vecs)
    if s.packed:
        taps = [k * s.t.tw for k in range(s.kk)]
        cstride, xvecs, safe = s.kk * s.t.tw, [(v * lanes, 0) for v in range(nv)], True
    else:
        taps = s.win.taps()
        cstride, xvecs, safe = s.win.plane_stride, [(xo, va) for xo, _, va in vecs], s.safe
    acc = [[f"%c{i}_{v}" for v in range(nv)] for i in range(mr)]
    # Large kernels loop over kernel rows: a tap's offset is its row's (a table) plus its column's.
    kh, kw = s.win.kh, s.win.kw
    by_rows = s.kk > MAX_UNROLLED_TAPS and kh > 1
    rows = [taps[ky * kw] - taps[0] for ky in range(kh)]
    if by_rows:
        taps = taps[:kw]
    o = [
        *([i64_table(f"{fname}_rows", rows)] * by_rows),
        f"define internal void @{fname}(ptr noalias %x, ptr noalias %w, ptr noalias %o, "
        "ptr noalias %bias, i64 %nc, i1 %accum, i1 %last) noinline {",
        "entry:",
        f"  %steps = mul i64 %nc, {kh if by_rows else 1}",
        "  br label %k",
        "k:",
        "  %j = phi i64 [0, %entry], [%jn, %k]",
        "  %ci = phi i64 [0, %entry], [%cn, %k]",
        *(["  %ky = phi i64 [0, %entry], [%kyn, %k]"] if by_rows else []),
    ]
    for i in range(mr):
        for v in range(nv):
            o.append(
                f"  {acc[i][v]} = phi {vty} [zeroinitializer, %entry], "
                f"[%n{i}_{v}_{len(taps) - 1}, %k]"
            )
    o += [f"  %xo = mul i64 %ci, {cstride}", f"  %wo = mul i64 %ci, {s.kk * s.mr}"]
    if by_rows:
        o += [
            *table_entry("%ro", f"{fname}_rows", kh, "%ky"),
            "  %xr = add i64 %xo, %ro",
            f"  %wr0 = mul i64 %ky, {kw * s.mr}",
            "  %wr = add i64 %wo, %wr0",
            "  %xc = getelementptr float, ptr %x, i64 %xr",
            "  %wc = getelementptr float, ptr %w, i64 %wr",
        ]
    else:
        o += [
            "  %xc = getelementptr float, ptr %x, i64 %xo",
            "  %wc = getelementptr float, ptr %w, i64 %wo",
        ]
    cur = [row[:] for row in acc]
    for k, off in enumerate(taps):
        xs = [
            load_tile(o, f"%x{k}_{v}", "%xc", off + xo, lanes, va, safe)
            for v, (xo, va) in enumerate(xvecs)
        ]
        for i in range(mr):
            o += [
                f"  %wp{k}_{i} = getelementptr float, ptr %wc, i64 {k * s.mr + i}",
                f"  %ws{k}_{i} = load float, ptr %wp{k}_{i}, align 4",
            ]
            splat(o, lanes, f"%ws{k}_{i}", f"%wv{k}_{i}")
            for v in range(nv):
                nxt = f"%n{i}_{v}_{k}"
                o.append(
                    f"  {nxt} = call {vty} @llvm.fma.v{lanes}f32({vty} %wv{k}_{i}, "
                    f"{vty} {xs[v]}, {vty} {cur[i][v]})"
                )
                cur[i][v] = nxt
    if by_rows:
        o += [
            "  %ky1 = add i64 %ky, 1",
            f"  %wrap = icmp eq i64 %ky1, {kh}",
            "  %kyn = select i1 %wrap, i64 0, i64 %ky1",
            "  %ci1 = add i64 %ci, 1",
            "  %cn = select i1 %wrap, i64 %ci1, i64 %ci",
        ]
    else:
        o.append("  %cn = add i64 %ci, 1")
    o += [
        "  %jn = add i64 %j, 1",
        "  %cm = icmp ult i64 %jn, %steps",
        "  br i1 %cm, label %k, label %done",
        "done:",
    ]
    plane = s.win.oh * s.win.ow
    cells = [(i, v) for i in range(mr) for v in range(nv)]
    for i, v in cells:
        o.append(f"  %op{i}_{v} = getelementptr float, ptr %o, i64 {i * plane + vecs[v][1]}")
    sums = {(i, v): cur[i][v] for i, v in cells}
    if s.kblocks > 1:
        o += ["  br i1 %accum, label %addold, label %merge", "addold:"]
        for i, v in cells:
            old = load_tile(o, f"%old{i}_{v}", f"%op{i}_{v}", 0, lanes, vecs[v][2], False)
            o.append(f"  %sum{i}_{v} = fadd {vty} {old}, {cur[i][v]}")
        o += ["  br label %merge", "merge:"]
        for i, v in cells:
            o.append(f"  %m{i}_{v} = phi {vty} [%sum{i}_{v}, %addold], [{cur[i][v]}, %done]")
            sums[(i, v)] = f"%m{i}_{v}"
        o += ["  br i1 %last, label %epi, label %store", "epi:"]
    em = Emitter(o, lanes)
    for i in range(mr):
        if s.has_bias:
            o += [
                f"  %bp{i} = getelementptr float, ptr %bias, i64 {i}",
                f"  %bs{i} = load float, ptr %bp{i}, align 4",
            ]
            splat(o, lanes, f"%bs{i}", f"%bv{i}")
    later = s.act not in CHEAP_ACTIVATIONS  # applied in a pass over the stored tile
    for i, v in cells:
        y = sums[(i, v)]
        if s.has_bias:
            y = em.add(y, f"%bv{i}")
        y = em.unary("none" if later else s.act, y)
        o.append(f"  %f{i}_{v} = fadd {vty} {y}, zeroinitializer")
    if s.kblocks > 1:
        o += ["  br label %store", "store:"]
        for i, v in cells:
            o.append(f"  %y{i}_{v} = phi {vty} [%f{i}_{v}, %epi], [{sums[(i, v)]}, %merge]")
    else:
        for i, v in cells:
            o.append(f"  %y{i}_{v} = fadd {vty} %f{i}_{v}, zeroinitializer")
    for i, v in cells:
        store_tile(o, f"%y{i}_{v}", f"%op{i}_{v}", lanes, vecs[v][2])
    if later:
        # One channel row of the tile a turn: few values live, no spills.
        o += [
            f"  br i1 {'%last' if s.kblocks > 1 else 'true'}, label %act, label %fin",
            "act:",
            f"  %ai = phi i64 [0, %{'store' if s.kblocks > 1 else 'done'}], [%ain, %act]",
            f"  %aio = mul i64 %ai, {plane}",
            "  %ab = getelementptr float, ptr %o, i64 %aio",
        ]
        for v, (_, oo, valid) in enumerate(vecs):
            o.append(f"  %ap{v} = getelementptr float, ptr %ab, i64 {oo}")
            x = load_tile(o, f"%ax{v}", f"%ap{v}", 0, lanes, valid, False)
            store_tile(o, em.unary(s.act, x), f"%ap{v}", lanes, valid)
        o += [
            "  %ain = add i64 %ai, 1",
            f"  %amore = icmp ult i64 %ain, {mr}",
            "  br i1 %amore, label %act, label %fin",
            "fin:",
        ]
    o += ["  ret void", "}"]
    return "\n".join(o)


def conv_kernel(
    name: str,
    s: ConvSpec,
    out: Operand,
    x: Operand,
    wp: Operand,
    bias: Operand | None,
    panels: Operand | None = None,
) -> str:
    """LLVM IR of the direct convolution over (phase-plane) input ``x``; with ``s.packed``,
    ``panels`` holds one panel per part."""
    t = s.t
    mtail = s.mg % s.mr
    fulls = s.mg // s.mr
    kernels: dict[tuple[int, tuple[Vec, ...]], str] = {}
    wblock = s.cg * s.kk * s.mr
    plane = s.win.oh * s.win.ow
    counter = [0]

    def ukernel(mr: int, vecs: list[Vec]) -> str:
        key = (mr, tuple(vecs))
        if key not in kernels:
            kernels[key] = f"{name}_u{len(kernels)}"
        return kernels[key]

    def call(L: list[str], xt: str, ot: str, vecs: list[Vec], blk: str, kb: str) -> None:
        j = counter[0]
        counter[0] += 1
        L += [
            f"  %k{j}g = urem i64 %outer, {s.group}",
            f"  %k{j}w0 = mul i64 %k{j}g, {s.mblocks * wblock}",
            f"  %k{j}w1 = mul i64 {blk}, {wblock}",
            f"  %k{j}w2 = add i64 %k{j}w0, %k{j}w1",
            f"  %k{j}w3 = mul i64 {kb}, {s.cb * s.kk * s.mr}",
            f"  %k{j}w4 = add i64 %k{j}w2, %k{j}w3",
            f"  %k{j}w = getelementptr float, ptr %a2, i64 %k{j}w4",
            f"  %k{j}x0 = mul i64 {kb}, {s.cb * s.win.plane_stride}",
            f"  %k{j}x = getelementptr float, ptr {xt}, i64 %k{j}x0",
            f"  %k{j}c1 = mul i64 {kb}, {s.cb}",
            f"  %k{j}c2 = sub i64 {s.cg}, %k{j}c1",
            f"  %k{j}nc = call i64 @llvm.smin.i64(i64 %k{j}c2, i64 {s.cb})",
            f"  %k{j}acc = icmp ne i64 {kb}, 0",
            f"  %k{j}last = icmp eq i64 {kb}, {s.kblocks - 1}",
            f"  %k{j}b0 = mul i64 %k{j}g, {s.mg}",
            f"  %k{j}b1 = mul i64 {blk}, {s.mr}",
            f"  %k{j}b2 = add i64 %k{j}b0, %k{j}b1",
            f"  %k{j}b = getelementptr float, ptr %a3, i64 %k{j}b2",
            f"  %k{j}o0 = mul i64 {blk}, {s.mr * plane}",
            f"  %k{j}o = getelementptr float, ptr {ot}, i64 %k{j}o0",
        ]
        src = panel[0] if s.packed else f"%k{j}x"
        args = (
            f"(ptr {src}, ptr %k{j}w, ptr %k{j}o, ptr %k{j}b, i64 %k{j}nc, i1 %k{j}acc, "
            f"i1 %k{j}last)"
        )
        if not mtail:
            L.append(f"  call void @{ukernel(s.mr, vecs)}{args}")
            return
        if not fulls:
            L.append(f"  call void @{ukernel(mtail, vecs)}{args}")
            return
        L += [
            f"  %k{j}full = icmp slt i64 {blk}, {fulls}",
            f"  br i1 %k{j}full, label %k{j}f, label %k{j}t",
            f"k{j}f:",
            f"  call void @{ukernel(s.mr, vecs)}{args}",
            f"  br label %k{j}j",
            f"k{j}t:",
            f"  call void @{ukernel(mtail, vecs)}{args}",
            f"  br label %k{j}j",
            f"k{j}j:",
        ]

    panel = [""]

    def pack(L: list[str], xt: str, ot: str, vecs: list[Vec], blk: str, kb: str) -> None:
        """Copy this tile's vectors of the channel block into the part's panel."""
        j = counter[0]
        counter[0] += 1
        p = f"%p{j}"
        ps, tw, lanes = s.win.plane_stride, t.tw, t.lanes
        vty, base = vec_type(lanes), xt
        if s.split:  # flat output position -> (row, column) -> plane offset, per vector
            w, gap = s.win.ow, s.win.wq - s.win.ow
            ity = f"<{lanes} x i64>"
            ids = "<" + ", ".join(f"i64 {i}" for i in range(lanes)) + ">"
            L += [
                f"  {p}pa = ptrtoint ptr {xt} to i64",
                f"  {p}pb = ptrtoint ptr %xbase to i64",
                f"  {p}pc = sub i64 {p}pa, {p}pb",
                f"  {p}px = udiv exact i64 {p}pc, 4",
            ]
            for v, (xo, _, _) in enumerate(vecs):
                q = f"{p}s{v}"
                L += [
                    f"  {q}f = add i64 {p}px, {xo}",
                    f"  {q}r = udiv i64 {q}f, {w}",
                    f"  {q}c = urem i64 {q}f, {w}",
                    f"  {q}o0 = mul i64 {q}r, {s.win.wq}",
                    f"  {q}o = add i64 {q}o0, {q}c",
                    f"  {q}n = sub i64 {w}, {q}c",
                    f"  {q}ni = insertelement {ity} poison, i64 {q}n, i64 0",
                    f"  {q}ns = shufflevector {ity} {q}ni, {ity} poison, "
                    f"<{lanes} x i32> zeroinitializer",
                    f"  {q}m = icmp ult {ity} {ids}, {q}ns",
                ]
            base = "%xbase"
        L += [
            f"  {p}o = mul i64 %part, {s.panel_bytes}",
            f"  {p}pan = getelementptr i8, ptr %a4, i64 {p}o",
            f"  {p}x0 = mul i64 {kb}, {s.cb * ps}",
            f"  {p}x = getelementptr float, ptr {base}, i64 {p}x0",
            f"  {p}c1 = mul i64 {kb}, {s.cb}",
            f"  {p}c2 = sub i64 {s.cg}, {p}c1",
            f"  {p}nc = call i64 @llvm.smin.i64(i64 {p}c2, i64 {s.cb})",
            f"  br label %q{j}pre",
            f"q{j}pre:",
            f"  br label %q{j}h",
            f"q{j}h:",
            f"  {p}c = phi i64 [0, %q{j}pre], [{p}cn, %q{j}b]",
            f"  {p}cm = icmp slt i64 {p}c, {p}nc",
            f"  br i1 {p}cm, label %q{j}b, label %q{j}x",
            f"q{j}b:",
            f"  {p}so = mul i64 {p}c, {ps}",
            f"  {p}src = getelementptr float, ptr {p}x, i64 {p}so",
            f"  {p}do = mul i64 {p}c, {s.kk * tw}",
            f"  {p}dst = getelementptr float, ptr {p}pan, i64 {p}do",
        ]
        if s.split:
            for v in range(len(vecs)):
                L.append(f"  {p}r{v} = getelementptr float, ptr {p}src, i64 {p}s{v}o")
        for k, off in enumerate(s.win.taps()):
            for v, (xo, _, va) in enumerate(vecs):
                if s.split:
                    q = f"{p}v{k}_{v}"
                    a = load_tile(L, f"{q}a", f"{p}r{v}", off, lanes, 0, True)
                    b = load_tile(L, f"{q}b", f"{p}r{v}", off + gap, lanes, 0, True)
                    L.append(f"  {q} = select <{lanes} x i1> {p}s{v}m, {vty} {a}, {vty} {b}")
                    val = q
                else:
                    val = load_tile(L, f"{p}v{k}_{v}", f"{p}src", off + xo, lanes, va, s.safe)
                d = k * tw + v * lanes
                L += [
                    f"  {p}d{k}_{v} = getelementptr float, ptr {p}dst, i64 {d}",
                    f"  store {vty} {val}, ptr {p}d{k}_{v}, align 4",
                ]
        L += [f"  {p}cn = add i64 {p}c, 1", f"  br label %q{j}h", f"q{j}x:"]
        panel[0] = f"{p}pan"

    L = tile_driver(
        name,
        t,
        s.n * s.group,
        s.cg * s.win.plane_stride,
        s.mg * plane,
        5 if s.packed else 4,
        s.mblocks,
        s.kblocks,
        call,
        s.per_unit,
        pack if s.packed else None,
    )
    parts = [_conv_ukernel(fn, s, mr, list(vecs)) for (mr, vecs), fn in kernels.items()]
    return "\n".join(
        [wrapper(name, [out, x, wp, bias, *([panels] if s.packed else [])]), "\n".join(L), *parts]
    )


def prep_conv_kernel(
    name: str,
    s: ConvSpec,
    lanes: int,
    out: Operand,
    x: Operand,
    wp: Operand,
    bias: Operand | None,
    planes: Operand,
    panels: Operand | None,
) -> str:
    """LLVM IR of one serial kernel writing the phase planes and then convolving them."""
    dummy = Operand(0)
    parts = [
        prep_kernel(f"{name}_pp", s.win, dummy, dummy, 0.0, lanes),
        conv_kernel(f"{name}_cv", s, dummy, dummy, dummy, bias and dummy, panels and dummy),
    ]
    extra = ", ptr %a5" if s.packed else ""
    L = [
        body_header(name, 6),
        "entry:",
        "  call void @" + name + "_pp_body(ptr %a4, ptr %a1, i64 0, i64 1)",
        "  call void @"
        + name
        + "_cv_body(ptr %a0, ptr %a4, ptr %a2, ptr %a3"
        + extra
        + ", i64 %part, i64 %nparts)",
        "  ret void",
        "}",
    ]
    return "\n".join([wrapper(name, [out, x, wp, bias, planes, panels]), "\n".join(L), *parts])


def plane_by_plane_kernel(
    name: str,
    one: Window,
    planes: int,
    pad: float,
    lanes: int,
    inner: str,
    out: Operand,
    out_stride: int,
    x: Operand,
    others: list[tuple[Operand | None, int, int]],
    scratch: Operand,
) -> str:
    """LLVM IR of a window op (convolution, pooling) over ``planes`` input planes, one plane a
    work unit: the part writes the plane's phase planes (pads ``pad``) into its own scratch
    (``plane_bytes``: it stays in L1/L2) and runs ``inner`` on them at once, instead of a pass
    writing every plane's phase planes to memory and the op reading them back.

    ``inner`` is the IR of ``NAME_in`` over the single plane ``one`` (body operands: output,
    phase planes, then ``others``). Plane p reads ``x + p·H·W``, writes ``out + p·out_stride``
    and passes each of ``others`` at ``+ (p mod m)·stride`` floats for its (stride, m)."""
    dummy = Operand(0)
    L = [body_header(name, 3 + len(others)), "entry:", "  %p.a = alloca i64, align 8"]
    loops = Loops(L)
    share(L, planes, 1, "%p0", "%p1")
    L += [
        f"  %so = mul i64 %part, {plane_bytes(one, lanes)}",
        f"  %scr = getelementptr i8, ptr %a{2 + len(others)}, i64 %so",
    ]
    loops.open("p", "%p0", "%p1", 1)
    L += [
        f"  %xo = mul i64 %p, {one.h * one.w}",
        "  %xp = getelementptr float, ptr %a1, i64 %xo",
        f"  %oo = mul i64 %p, {out_stride}",
        "  %op = getelementptr float, ptr %a0, i64 %oo",
    ]
    args = ["ptr %op", "ptr %scr"]
    for k, (op, stride, mod) in enumerate(others):
        arg = f"%a{2 + k}"
        if op is not None and stride:
            L += [
                f"  %g{k} = urem i64 %p, {mod}",
                f"  %r{k}o = mul i64 %g{k}, {stride}",
                f"  %r{k} = getelementptr float, ptr {arg}, i64 %r{k}o",
            ]
            arg = f"%r{k}"
        args.append(f"ptr {arg}")
    L += [
        f"  call void @{name}_pp_body(ptr %scr, ptr %xp, i64 0, i64 1)",
        f"  call void @{name}_in_body({', '.join(args)}, i64 0, i64 1)",
    ]
    loops.close("p", 1)
    L += ["  ret void", "}"]
    operands = [out, x, *(op for op, _, _ in others), scratch]
    return "\n".join(
        [
            wrapper(name, operands),
            "\n".join(L),
            prep_kernel(f"{name}_pp", one, dummy, dummy, pad, lanes),
            inner,
        ]
    )


def plane_bytes(one: Window, lanes: int) -> int:
    """One part's scratch in ``plane_by_plane_kernel``: the phase planes of one input plane."""
    return align(prep_bytes(one, lanes))


def plane_scratch(name: str, one: Window, lanes: int, threads: int) -> Scratch:
    """The scratch of ``plane_by_plane_kernel``, for every part a kernel of ``threads`` has."""
    return Scratch(f"{name}_planes", threads * CHUNKS_PER_THREAD * plane_bytes(one, lanes))


# Copy each tile into a contiguous panel first when at least this many output-channel blocks
# of a work unit read it and the window is flat or strided, or its rows end in a partial vector
# while the weights stay in L2 (PACK forces it on or off). Measured here: 1.1-1.2x on 1×1 and
# strided convolutions, whose tiles gather from many planes; 3×3 stride 1 64→64: 1.11x at 28×28,
# 1.19x at 20×20, 1.07x at 14×14 (split tiles: no lanes lost to row tails), but 2% slower at
# 56×56 (whole vectors) and 1.3-1.6x slower when the weights exceed L2 (256 channels at 14×14);
# a loss with fewer blocks.
PACK_BLOCKS = 8
PACK: bool | None = None
# Packed tiles may run over the flat output (no partial tile per row), each vector gathered from
# the end of one row and the start of the next (rows of at least L pixels).
SPLIT = True
# Groups that read one input plane (depthwise) are convolved a plane at a time from the part's
# own phase-plane scratch (``plane_by_plane_kernel``).
PLANE_BY_PLANE = True
# Bytes of L1 that one channel block's input tile and weight block may fill together.
L1_BUDGET = 24 << 10
# A group's packed weights up to this size stay in L2 while work units walk its rows; up to
# WEIGHTS_BY_ROWS too, if the rows give every core two units or more; larger ones are cut into
# units of WEIGHT_UNIT bytes of channel blocks, each walking every row. Measured here (3×3, A/B
# in one process): walking rows with the weights in L3 runs 128→128 at 14×14 699 -> 646 µs,
# 128→128 at 28×28 2865 -> 2456, 256→256 at 14×14 2903 -> 2493 on 1 thread (1593 -> 1297 µs
# for 128 at 28×28 on 2); no change at 7×7; 2x slower on 2 threads when the rows are a single
# unit (1×1 at 14×14), hence the unit count.
WEIGHTS_IN_L2 = 320 << 10
WEIGHTS_BY_ROWS = 4 << 20
WEIGHT_UNIT = 128 << 10


def blocks_per_unit(
    mblocks: int, block_bytes: int, outer: int, threads: int, row_units: int
) -> int:
    """Output-channel blocks per work unit: 0 (all; units are rows) while a group's weights fit
    WEIGHTS_IN_L2 (or WEIGHTS_BY_ROWS, with ``row_units`` at least two per thread), else as many
    as fit WEIGHT_UNIT, fewer if that leaves under a full set of shares for the cores."""
    shares = threads * CHUNKS_PER_THREAD
    weights = mblocks * block_bytes
    if weights <= WEIGHTS_IN_L2 or (
        weights <= WEIGHTS_BY_ROWS and (threads == 1 or row_units >= 2 * threads)
    ):
        return 0
    per = max(1, WEIGHT_UNIT // block_bytes)
    while per > 1 and outer * -(-mblocks // per) < shares:
        per -= 1
    return per


def channel_block(win: Window, cg: int, mr: int, t: Tiling, packed: bool = False) -> int:
    """Input channels per reduction block: as many as keep the block's input tile (the plane rows
    its taps touch, TW plus the taps' reach wide) and its MR×taps weights within L1_BUDGET,
    balanced between the blocks. One block when a tile ends in a partial vector: adding partial
    sums back lane by lane costs more (measured 2x on 512 channels of 7×7) than blocks save."""
    if t.tail % t.lanes:
        return cg
    tw = t.tw
    rows = {off // win.wq for off in win.taps()} if not win.flat else set(win.taps())
    reach = max(off % win.wq for off in win.taps()) if not win.flat else 0
    per = 4 * (len(rows) * (tw + reach) + mr * win.kh * win.kw)
    if packed:  # the panel: taps × TW per channel
        per = 4 * win.kh * win.kw * (tw + mr)
    cb = max(1, min(cg, L1_BUDGET // per))
    nb = -(-cg // cb)
    return -(-cg // nb)


def _tile_cost(rows: int, cols: int, depth: int) -> float:
    """Cycles of one micro-kernel call: per input channel and tap max(FMAs / 2, loads / 1.8,
    5): two FMA pipes, the loads (cols vectors, rows broadcasts; the divisor fits this machine's
    measurements), and the 4-cycle FMA latency that 8 accumulators barely hide (measured: 4×2
    runs 10% slower than 6×2); plus ~20 cycles per call and the epilogue's stores."""
    return depth * max(rows * cols / 2, (rows + cols) / 1.8, 5.0) + 20 + rows * cols


def choose_tile(mg: int, width: int, depth: int, lanes: int, flat: bool) -> tuple[int, int]:
    """(MR, NV) of the least estimated cycles per output row (all ``mg`` channels of a group):
    full tiles, the tail tile shared by a row group, rows and columns past the ends computed.
    ``depth`` is input channels × taps."""
    regs = 32 if lanes >= 16 else 16  # vector registers: accumulators, NV loads, 2 broadcasts
    best: tuple[float, int, int] | None = None
    for nv in range(1, 7):
        for mr in range(1, (regs - nv - 2) // nv + 1):
            if mr > mg and mr > 1:
                continue
            full, tail = divmod(width, nv * lanes)
            rg = row_group(width, lanes, nv, flat)
            tiles = [(nv, rg * full)] + ([(rg * -(-tail // lanes), 1)] if tail else [])
            cost = 0.0
            for cols, count in tiles:
                for rows, rc in ((mr, mg // mr), (mg % mr, 1 if mg % mr else 0)):
                    if count and rc:
                        cost += count * rc * _tile_cost(rows, cols, depth)
            cost /= rg
            if best is None or cost < best[0] - 1e-9:
                best = (cost, mr, nv)
    assert best is not None
    return best[1], best[2]


def _fold_batch_norm(
    lw: Lowerer, out: Value, w: np.ndarray, bias: Value | None
) -> tuple[Node, np.ndarray, np.ndarray] | None:
    """When the conv's only reader is an inference batch norm with constant parameters, the
    weights and bias that give the normalized output directly (computed in float64):
    w·s and (b - mean)·s + beta per output channel, s = scale / sqrt(var + eps)."""
    users = lw.users.get(id(out), [])
    if id(out) in lw.outputs or len(users) != 1 or users[0].op != "batch_norm":
        return None
    bn = users[0]
    params = bn.inputs[1:]
    if (
        bn.inputs[0] is not out
        or len(params) != 4
        or (bias is not None and not bias.is_const)
        or not all(p is not None and p.is_const for p in params)
    ):
        return None
    m = w.shape[0]
    scale, beta, mean, var = (
        np.asarray(p.data, np.float64).reshape(-1)  # type: ignore
        for p in params
    )
    if any(a.shape != (m,) for a in (scale, beta, mean, var)):
        return None
    s = scale / np.sqrt(var + float(bn.attrs.get("epsilon", 1e-5)))
    b = np.zeros(m) if bias is None else np.asarray(bias.data, np.float64).reshape(-1)
    wf = (w.astype(np.float64) * s[:, None, None, None]).astype(np.float32)
    return bn, wf, ((b - mean) * s + beta).astype(np.float32)


def lower_conv(lw: Lowerer, node: Node, name: str) -> bool:
    x, w = node.inputs[0], node.inputs[1]
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    out = node.outputs[0]
    assert x is not None
    assert w is not None
    at = node.attrs
    act = at.get("act", "none")
    if not w.is_const or act not in ACTIVATIONS:
        return False
    wshape = tuple(int(d) for d in w.type.shape)
    geo = window_2d(
        tuple(int(d) for d in x.type.shape), tuple(int(d) for d in out.type.shape), wshape[2:], at
    )
    if geo is None:
        return False
    (n, c, h, wd), (oh, ow), (kh, kw), st, pads, dil = geo
    m, cg = wshape[:2]
    group = int(at.get("group", 1))
    if group < 1 or c != cg * group or m % group:
        return False
    wdata = np.asarray(w.data, np.float32).reshape(m, cg, kh, kw)
    bdata: np.ndarray | None = None
    if act == "none":
        folded = _fold_batch_norm(lw, out, wdata, bias)
        if folded is not None:
            bn, wdata, bdata = folded
            lw.absorbed.add(id(bn))
            out, name = bn.outputs[0], f"{name}_bn"
            bias = Value(f"{name}_bias", bn.inputs[1].type, data=bdata)  # type: ignore
            lw.extra[id(bias)] = bdata
        post = lw.post_op(out)
        if (
            post is not None
            and len(post[1]) == 2
            and post[1][1] == ("in", 0)
            and post[1][0] in ACTIVATIONS
        ):
            lw.absorbed.add(id(post[0]))
            out, act, name = post[0].outputs[0], post[1][0], f"{name}_{post[1][0]}"
    lanes = lw.host.lanes
    if winograd.applies(n, cg, m, (kh, kw), st, dil, pads, group, oh, ow, lanes):
        winograd.lower(lw, name, node.op, x, out, wdata, bias, act, (n, c, h, wd), (oh, ow), pads)
        return True
    win = Window(n * c, h, wd, kh, kw, oh, ow, st, (pads[0], pads[1]), dil)  # type: ignore
    split = False
    while True:
        flat = win.flat or split
        mr, nv = choose_tile(m // group, oh * ow if flat else ow, cg * kh * kw, lanes, flat)
        mblocks = -(-(m // group) // mr)
        per_unit = blocks_per_unit(
            mblocks,
            4 * mr * cg * kh * kw,
            n * group,
            lw.threads,
            driver_units(tiling(win, lanes, nv), n * group, mblocks),
        )
        sharing = per_unit if 0 < per_unit < mblocks else mblocks
        pack = (
            PACK
            if PACK is not None
            else sharing >= PACK_BLOCKS
            and (win.flat or win.stride != (1, 1) or (per_unit == 0 and ow % lanes != 0))
        )
        # Packed rows that end in a partial tile: tile the flat output instead (SPLIT).
        if split or not (
            pack and SPLIT and not win.flat and win.prep and ow >= lanes and ow % (nv * lanes)
        ):
            break
        split = True
    if split:
        # Chunks of at most 256 pixels, and enough of them for every share of the cores.
        tiles = oh * ow // (nv * lanes)
        need = -(-lw.threads * CHUNKS_PER_THREAD // (n * group)) if lw.threads > 1 else 1
        per_chunk = max(1, min(256 // (nv * lanes), tiles // need))
        til = Tiling(1, oh * ow, 0, 0, lanes, nv, per_chunk, 1)
    else:
        til = tiling(win, lanes, nv)
    spec = ConvSpec(
        win,
        n,
        c,
        m,
        group,
        mr,
        til,
        bias is not None,
        act,
        win.prep,
        channel_block(win, cg, mr, til, pack),
        per_unit,
        pack,
        split,
    )
    packed = Value(f"{name}_wpack", w.type, data=pack_weights(wdata, group, mr))
    lw.extra[id(packed)] = packed.data  # type: ignore[assignment]
    steps: list[Step] = []
    panels = (
        Scratch(f"{name}_panels", lw.threads * CHUNKS_PER_THREAD * spec.panel_bytes)
        if pack
        else None
    )
    parallel = worth_splitting(spec.flops)
    prep_parallel = parallel or worth_splitting(nbytes=prep_bytes(win, lanes))
    src: Ref = x
    if PLANE_BY_PLANE and win.prep and cg == 1 and not pack:
        one = replace(win, planes=1)
        scratch = plane_scratch(name, one, lanes, lw.threads)
        sub = replace(spec, win=one, n=1, c=1, m=spec.mg, group=1)

        def gen_planes(loc: Callable[[Ref | None], Operand | None]) -> str:
            dummy = Operand(0)
            return plane_by_plane_kernel(
                name,
                one,
                n * c,
                0.0,
                lanes,
                conv_kernel(f"{name}_in", sub, dummy, dummy, dummy, bias and dummy),
                loc(out),  # type: ignore
                spec.mg * oh * ow,
                loc(x),  # type: ignore
                [(loc(packed), spec.mblocks * spec.kk * mr, group), (loc(bias), spec.mg, group)],
                loc(scratch),  # type: ignore
            )

        reads = [x, packed, scratch, *([bias] if bias is not None else [])]
        lw.steps.append(
            Step(name, reads, [out], gen_planes, parallel=prep_parallel, op=node.op, units=n * c)
        )
        return True
    if win.prep and not parallel and not prep_parallel:
        # One kernel: the phase planes, then the convolution (one call from the runtime).
        planes = Scratch(f"{name}_planes", prep_bytes(win, lanes))

        def gen_both(loc: Callable[[Ref | None], Operand | None]) -> str:
            return prep_conv_kernel(
                name,
                spec,
                lanes,
                loc(out),
                loc(x),  # type: ignore
                loc(packed),
                loc(bias),
                loc(planes),
                loc(panels),
            )

        steps.append(
            Step(
                name,
                [x, packed, planes, *[r for r in (bias, panels) if r]],
                [out],
                gen_both,
                op=node.op,
            )
        )
        lw.steps += steps
        return True
    if win.prep:
        planes = Scratch(f"{name}_planes", prep_bytes(win, lanes))

        def gen_prep(loc: Callable[[Ref | None], Operand | None]) -> str:
            return prep_kernel(
                f"{name}_prep",
                win,
                loc(x),
                loc(planes),
                0.0,  # type: ignore
                lanes,
            )

        steps.append(
            Step(f"{name}_prep", [x], [planes], gen_prep, parallel=prep_parallel, op="pad")
        )
        src = planes

    def gen(loc: Callable[[Ref | None], Operand | None]) -> str:
        return conv_kernel(
            name,
            spec,
            loc(out),
            loc(src),
            loc(packed),
            loc(bias),  # type: ignore
            loc(panels),
        )

    steps.append(
        Step(
            name,
            [src, packed, *[r for r in (bias, panels) if r is not None]],
            [out],
            gen,
            parallel=parallel,
            op=node.op,
            units=driver_units(til, n * group, spec.mblocks, spec.per_unit),
        )
    )
    lw.steps += steps
    return True
