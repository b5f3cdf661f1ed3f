"""GEMM kernels: packed B panels, cache blocking, an FMA micro-kernel, fused epilogue.

``C[b] = act(A[b] @ B[b] + bias) + R[b]`` for row-major fp32 operands. B is packed into panels of
NR columns (``Bp[panel][k][NR]``, zero-padded): at compile time when B is a constant, else by a
``pack`` kernel. The driver walks K in blocks of KC and rows in blocks of MC (BLIS order); for
every B panel (``KC×NR``, L1-sized, reused while the row panels pass) it runs the micro-kernel over
the row block's MR-row panels. The micro-kernel keeps an MR×NR tile of C in vector registers
(MR·NR/L accumulators) and does MR broadcasts and MR·NR/L FMAs per k; it prefetches its C tile
and, on the block's last row panel, the next B panel. Tiles of few rows (fewer than 8
accumulators, too few to hide the FMA latency) take 2 or 4 k steps a turn into separate
accumulator sets, summed at the end. Its k loop (``fma_tile``) also serves attention's q·kᵀ and
p·v micro-kernels.

A is read in place (row stride K) or, when a part has enough B panels to pay for the copy, first
packed per (K block, row block) into MR-row panels (``Ap[panel][k][MR]``: one contiguous stream,
no 4 KiB aliasing between rows whose stride is a multiple of 1 KiB).

On the last K block the epilogue runs: bias (per column, or per row with ``bias_rows``), a cheap
activation and the residual on the accumulators before the store; a costly activation (GELU, tanh,
...) in a pass over the row block's stored panel (in L1), whose few live registers do not spill.
The last, partial B panel goes through a tile buffer.

Parts (cores) take a rectangle of the work: a grid of row shares × panel shares, chosen at compile
time for every part count from a cost model (``grid``): row shares make every part stream all of
B, panel shares make every part read (or pack) all of A.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from satura.targets.irmath import CHEAP_ACTIVATIONS, Emitter, vec_type
from satura.targets.kernel import Loops, Operand, body_header, share, wrapper

# K block: a KC×NR B panel of this many bytes (KC = 512 at NR = 16), half of it for products of
# fewer than FEW_ROW_PANELS row panels (whose B panels serve too few rows to amortize the longer
# stream). Measured here (Zen 3): 512 beats 256 by 1-2% on 1024³ and the MLP layers, and loses
# 3-4% at 8 rows.
B_PANEL_BYTES = 32 << 10
FEW_ROW_PANELS = 4
MC = 96  # row block: an MC×KC A block (192 KiB at KC = 512) stays in L2 across all B panels
# A part packs A when it has at least this many B panels (fewer when rows are 4 KiB apart).
PACK_MIN_PANELS = 32
PACK_MIN_PANELS_ALIASED = 16
PF_L2_PANELS = 1  # every micro-kernel call prefetches the B panel this far ahead into L2
# A product of at most STREAM_ROW_PANELS row panels (M <= 3·MR: a matrix-vector product, a
# decoder step) reads B about once: it takes K in one block (B is one sequential stream) and
# prefetches this many k steps ahead into L1 and L2. Measured here on the mlp example (768x3072
# and 3072x768, 1 thread, A/B in one process): 1 row 0.491 -> 0.394 ms (K blocks of 256 and
# 2/16 k steps ahead before), 4 rows 0.664 -> 0.448, 8 rows 1.115 -> 0.995, 16 rows 1-3%
# faster, 24 rows 1-4% slower (so 3 row panels at most).
STREAM_ROW_PANELS = 3
STREAM_PF_L1, STREAM_PF_L2 = 4, 128
STREAM_A_BYTES = 512 << 10  # at most this packed A block (MC×KC floats, on the stack)
PACK_GROUP = 8  # B panels a part of the runtime B packing copies together, a row at a time
MAX_PARTS = 64  # grid table size; more parts than this split rows only


@dataclass(frozen=True)
class GemmSpec:
    """Sizes and epilogue of one batched GEMM (B batches of M×K @ K×N)."""

    batch: int
    m: int
    n: int
    k: int
    a_batch_stride: int  # elements
    b_batched: bool  # packed B differs per batch
    has_bias: bool
    has_res: bool
    act: str
    mr: int
    nr: int
    lanes: int
    bias_rows: bool = False  # bias indexed by row (conv: per output channel), not by column
    # Floats between one batch's packed B (C and residual) and the next, past its end: a stride
    # of whole 4 KiB pages would put the same line of every batch in one L1 set.
    b_pad: int = 0
    c_pad: int = 0

    @property
    def b_stride(self) -> int:
        return self.packed_elems + self.b_pad

    @property
    def c_stride(self) -> int:
        return self.m * self.n + self.c_pad

    @property
    def panels(self) -> int:
        return -(-self.n // self.nr)

    @property
    def packed_elems(self) -> int:
        """Floats in one batch's packed B."""
        return self.panels * self.k * self.nr

    @property
    def units(self) -> int:
        """MR-row panels over all batches (what row shares divide)."""
        return self.batch * -(-self.m // self.mr)

    @property
    def streams_b(self) -> bool:
        """Few rows: B is read about once, as one stream (see STREAM_ROW_PANELS)."""
        return -(-self.m // self.mr) <= STREAM_ROW_PANELS

    @property
    def kc(self) -> int:
        """K block: K cut into equal blocks of at most KC (``B_PANEL_BYTES``), rounded up to 8;
        all of K (up to STREAM_A_BYTES of packed A) when B streams."""
        most = B_PANEL_BYTES // (4 * self.nr)
        if self.streams_b:
            most = STREAM_A_BYTES // (4 * self.mc)
        elif -(-self.m // self.mr) < FEW_ROW_PANELS:
            most //= 2
        most = max(8, most // 8 * 8)
        blocks = -(-self.k // most)
        per = -(-self.k // blocks)
        return min(self.k, -(-per // 8) * 8)

    @property
    def mc(self) -> int:
        """Row block, a multiple of MR (at most M rounded up to MR)."""
        return min(-(-MC // self.mr) * self.mr, -(-self.m // self.mr) * self.mr)

    @property
    def pack_min_panels(self) -> int:
        return PACK_MIN_PANELS_ALIASED if self.k % 1024 == 0 else PACK_MIN_PANELS

    @property
    def epilogue_in_registers(self) -> bool:
        """Bias, residual and a cheap activation go on the accumulators; a costly activation in
        a pass over the stored panel (``_epilogue``)."""
        return self.act in CHEAP_ACTIVATIONS

    def share_cost(self, row_shares: int, panel_shares: int) -> float:
        """Model of one part's cycles per k for a grid: its FMAs, plus streaming its B panels once
        per row block, plus reading (or packing) its rows of A."""
        lanes_fma = 2 * self.lanes  # two FMA pipes
        rows = min(self.m * self.batch, -(-self.units // row_shares) * self.mr)
        q = -(-self.panels // panel_shares)
        compute = rows * q * self.nr / lanes_fma
        b_stream = 2.0 * q * -(-rows // self.mc)
        a_read = (0.4 if q >= self.pack_min_panels else 0.25) * rows
        return compute + b_stream + a_read

    def grid(self, parts: int) -> int:
        """Row shares for ``parts`` parts (a divisor of it; panel shares = parts / row shares)."""
        if parts > MAX_PARTS:
            return parts
        divs = [d for d in range(1, parts + 1) if parts % d == 0]
        return min(divs, key=lambda d: (self.share_cost(d, parts // d), -d))


def pack_b_numpy(b: np.ndarray, nr: int) -> np.ndarray:
    """Pack a constant [K, N] (or [batch, K, N]) B into zero-padded NR-column panels."""
    b3 = b.reshape(-1, b.shape[-2], b.shape[-1]).astype(np.float32)
    nb, k, n = b3.shape
    panels = -(-n // nr)
    padded = np.zeros((nb, k, panels * nr), np.float32)
    padded[:, :, :n] = b3
    return np.ascontiguousarray(padded.reshape(nb, k, panels, nr).transpose(0, 2, 1, 3)).ravel()


def _splat(lines: list[str], vty: str, lanes: int, scalar: str, name: str) -> str:
    lines += [
        f"  {name}i = insertelement {vty} poison, float {scalar}, i64 0",
        f"  {name} = shufflevector {vty} {name}i, {vty} poison, <{lanes} x i32> zeroinitializer",
    ]
    return name


def _ukernel(name: str, s: GemmSpec, mr: int, packed: bool) -> str:
    """The micro-kernel for an ``mr``×NR tile: ``@NAME_u{mr}`` (A packed) or ``@NAME_d{mr}``.

    ``a``: the panel, ``a[k][MR]`` when packed, else ``a[i·K + k]``; ``bp``: a ``[kc][NR]`` B
    panel; the tile goes to ``c`` (row stride ``ldc``), added to what is there when ``accum``,
    through the register epilogue when ``last``. ``pfb``, ``pfl2``: B panels to prefetch a line of
    per k, into L1 and into L2.
    """
    L, nv, vty = s.lanes, s.nr // s.lanes, vec_type(s.lanes)
    rs, ks = (1, s.mr) if packed else (s.k, 1)  # A(i, k) at a + i·rs + k·ks
    # A thin tile (few accumulators) over a streamed B, that is a matrix-vector product that
    # reads B from memory once: its k-step sets read K's quarters (halves), so B comes in as
    # that many sequential streams, and it leaves the prefetching to the hardware. Measured here
    # (1 row, 768x3072 and 3072x768, B not in cache, 1 thread, 10 alternating rounds): 10.2 and
    # 10.5 GB/s before, 12.2 and 11.8 without the software prefetch, 13.5 and 14.3 with the
    # streams too; in cache the same (42-45 GB/s). A tile of 4 or more rows (8 accumulators)
    # keeps the prefetch: without it 8 rows went from 17.5 to 13.1 GB/s in cache.
    ksets = accumulator_sets(mr, nv)
    thin_stream = s.streams_b and ksets > 1
    out = [
        f"define internal void @{name}_{'u' if packed else 'd'}{mr}(ptr noalias %a, "
        "ptr noalias %bp, i64 %kc, ptr noalias %c, i64 %ldc, i1 %accum, i1 %last, "
        "ptr noalias %bias, ptr noalias %res, ptr %pfb, ptr %pfl2) noinline {",
        "entry:",
    ]
    # The C tile is needed after the k loop: start bringing its lines in now.
    for i in range(mr):
        out += [
            f"  %pf{i}o = mul i64 %ldc, {i}",
            f"  %pf{i} = getelementptr float, ptr %c, i64 %pf{i}o",
            f"  call void @llvm.prefetch.p0(ptr %pf{i}, i32 1, i32 3, i32 1)",
            f"  %pg{i} = getelementptr float, ptr %pf{i}, i64 {s.nr - 1}",
            f"  call void @llvm.prefetch.p0(ptr %pg{i}, i32 1, i32 3, i32 1)",
        ]
    acc = fma_tile(
        out,
        L,
        mr,
        nv,
        a=("%a", rs, ks),
        b=("%bp", s.nr),
        ksets=ksets,
        prefetch=None if thin_stream else ("%pfb", "%pfl2"),
        split=thin_stream,
    )
    for i in range(mr):
        for v in range(nv):
            out += [
                f"  %o{i}_{v} = mul i64 %ldc, {i}",
                f"  %q{i}_{v} = add i64 %o{i}_{v}, {v * L}",
                f"  %cp{i}_{v} = getelementptr float, ptr %c, i64 %q{i}_{v}",
            ]
    out += ["  br i1 %accum, label %addold, label %merge", "addold:"]
    for i in range(mr):
        for v in range(nv):
            out += [
                f"  %old{i}_{v} = load {vty}, ptr %cp{i}_{v}, align 4",
                f"  %sum{i}_{v} = fadd {vty} %old{i}_{v}, {acc[i][v]}",
            ]
    out += ["  br label %merge", "merge:"]
    for i in range(mr):
        for v in range(nv):
            out.append(f"  %m{i}_{v} = phi {vty} [%sum{i}_{v}, %addold], [{acc[i][v]}, %kdone]")
    final = [[f"%m{i}_{v}" for v in range(nv)] for i in range(mr)]
    if s.epilogue_in_registers:
        out += ["  br i1 %last, label %epi, label %store", "epi:"]
        em = Emitter(out, L)
        if s.has_bias and not s.bias_rows:
            for v in range(nv):
                out += [
                    f"  %bb{v} = getelementptr float, ptr %bias, i64 {v * L}",
                    f"  %bv{v} = load {vty}, ptr %bb{v}, align 4",
                ]
        for i in range(mr):
            if s.has_bias and s.bias_rows:
                out += [
                    f"  %br{i}p = getelementptr float, ptr %bias, i64 {i}",
                    f"  %br{i} = load float, ptr %br{i}p, align 4",
                ]
                _splat(out, vty, L, f"%br{i}", f"%brv{i}")
            for v in range(nv):
                x = final[i][v]
                if s.has_bias:
                    x = em.add(x, f"%brv{i}" if s.bias_rows else f"%bv{v}")
                x = em.unary(s.act, x)
                if s.has_res:
                    out += [
                        f"  %rp{i}_{v} = getelementptr float, ptr %res, i64 %q{i}_{v}",
                        f"  %rv{i}_{v} = load {vty}, ptr %rp{i}_{v}, align 4",
                    ]
                    x = em.add(x, f"%rv{i}_{v}")
                out.append(f"  %f{i}_{v} = fadd {vty} {x}, zeroinitializer")
        out += ["  br label %store", "store:"]
        for i in range(mr):
            for v in range(nv):
                out.append(f"  %z{i}_{v} = phi {vty} [%f{i}_{v}, %epi], [%m{i}_{v}, %merge]")
        final = [[f"%z{i}_{v}" for v in range(nv)] for i in range(mr)]
    for i in range(mr):
        for v in range(nv):
            out.append(f"  store {vty} {final[i][v]}, ptr %cp{i}_{v}, align 4")
    out += ["  ret void", "}"]
    return "\n".join(out)


def accumulator_sets(mr: int, nv: int) -> int:
    """k steps a micro-kernel loop turn takes into separate accumulators: enough chains (8) to
    keep two FMA pipes of latency 4 busy."""
    sets = 1
    while mr * nv * sets < 8 and sets < 4:
        sets *= 2
    return sets


def fma_tile(
    out: list[str],
    lanes: int,
    mr: int,
    nv: int,
    a: tuple[str, int, int],
    b: tuple[str, int],
    ksets: int = 1,
    prefetch: tuple[str, str] | None = None,
    split: bool = False,
) -> list[list[str]]:
    """The k loop of a register-tile FMA micro-kernel (GEMM's, attention's): the ``mr``×NR tile
    (NR = ``nv``·``lanes``) of ``A·B`` over ``k < %kc``, in mr·nv vector accumulators.

    Per k: nv vector loads of B row k (``b = (ptr, ldb)``: the row at ptr + k·ldb), mr broadcasts
    of A(i, k) (``a = (ptr, rs, ks)``: at ptr + i·rs + k·ks) and mr·nv FMAs. ``ksets`` > 1 (a tile
    with too few accumulators to hide the FMA latency, see ``accumulator_sets``): the loop takes
    that many k steps a turn, each into its own accumulator set, summed after it; the last
    kc % ksets steps go one at a time. ``split``: set j takes the j-th of ``ksets`` equal
    ranges of k instead (k = t + j·(kc / ksets)): B is read as ``ksets`` sequential streams.
    ``prefetch = (l1, l2)``: every k also prefetches the line
    at the B row's offset from these pointers, into L1 and into L2. ``%kc`` (the function's i64
    argument) may be 0.

    Emitted in the open ``entry`` block; returns the tile's accumulators (``[i][v]``), defined in
    block ``kdone``, which is left open. Every name it defines starts with ``%k``.
    """
    vty = vec_type(lanes)
    zero = [["zeroinitializer"] * nv for _ in range(mr)]
    start, init, pred = "0", zero, "%entry"
    if ksets > 1:
        out += [
            f"  %kcu = and i64 %kc, {-ksets}",
            *([f"  %kq = udiv i64 %kc, {ksets}"] if split else []),
            "  %khasu = icmp ugt i64 %kcu, 0",
            "  br i1 %khasu, label %ku, label %ku.x",
            "ku:",
        ]
        _kloop(
            out,
            lanes,
            mr,
            nv,
            a,
            b,
            prefetch,
            "ku",
            "0",
            "%kq" if split else "%kcu",
            ksets,
            [zero] * ksets,
            pred,
            "%ku.x",
            split,
        )
        out += ["ku.x:", f"  %kx = phi i64 [0, {pred}], [{'%kcu' if split else '%kun'}, %ku]"]
        out += [
            f"  %kx{i}_{v}s{j} = phi {vty} [zeroinitializer, {pred}], [%ku{i}_{v}s{j}, %ku]"
            for i in range(mr)
            for v in range(nv)
            for j in range(ksets)
        ]
        init = [[f"%kt{i}_{v}" for v in range(nv)] for i in range(mr)]
        for i in range(mr):
            for v in range(nv):
                parts = [f"%kx{i}_{v}s{j}" for j in range(ksets)]
                while len(parts) > 1:
                    nxt = f"{parts[0]}p"
                    out.append(f"  {nxt} = fadd {vty} {parts[0]}, {parts[1]}")
                    parts = [nxt, *parts[2:]]
                out.append(f"  {init[i][v]} = fadd {vty} {parts[0]}, zeroinitializer")
        start, pred = "%kx", "%ku.x"
    out += [f"  %krem = icmp ult i64 {start}, %kc", "  br i1 %krem, label %k, label %kdone", "k:"]
    _kloop(out, lanes, mr, nv, a, b, prefetch, "k", start, "%kc", 1, [init], pred, "%kdone")
    out.append("kdone:")
    acc = [[f"%kd{i}_{v}" for v in range(nv)] for i in range(mr)]
    out += [
        f"  {acc[i][v]} = phi {vty} [{init[i][v]}, {pred}], [%k{i}_{v}s0, %k]"
        for i in range(mr)
        for v in range(nv)
    ]
    return acc


def _kloop(
    out: list[str],
    lanes: int,
    mr: int,
    nv: int,
    a: tuple[str, int, int],
    b: tuple[str, int],
    prefetch: tuple[str, str] | None,
    lab: str,
    start: str,
    end: str,
    step: int,
    init: list[list[list[str]]],
    pred: str,
    exit_: str,
    split: bool = False,
) -> None:
    """``fma_tile``'s loop (block ``lab``, already opened; at least one turn): ``step`` k steps
    a turn from ``start`` while below ``end``, then on to ``exit_``; step j accumulates into set
    j, started from ``init[j]`` on entry from ``pred``. ``split``: one k a turn (t), step j at
    k = t + j·%kq. The updated accumulators are
    ``%{lab}{i}_{v}s{j}``; the next k is ``%{lab}n``."""
    vty = vec_type(lanes)
    (ap, rs, ks), (bp, ldb) = a, b
    out.append(f"  %{lab}k = phi i64 [{start}, {pred}], [%{lab}n, %{lab}]")
    for j in range(step):
        for i in range(mr):
            for v in range(nv):
                out.append(
                    f"  %{lab}a{i}_{v}s{j} = phi {vty} [{init[j][i][v]}, {pred}], "
                    f"[%{lab}{i}_{v}s{j}, %{lab}]"
                )
    for j in range(step):
        kk = f"%{lab}k" if j == 0 else f"%{lab}k{j}"
        if j and split:
            out.append(f"  {kk}m = mul i64 %kq, {j}")
            out.append(f"  {kk} = add i64 %{lab}k, {kk}m")
        elif j:
            out.append(f"  {kk} = add i64 %{lab}k, {j}")
        p = f"%{lab}{j}"
        out += [
            f"  {p}bo = mul i64 {kk}, {ldb}",
            f"  {p}bq = getelementptr float, ptr {bp}, i64 {p}bo",
            f"  {p}ao = mul i64 {kk}, {ks}",
            f"  {p}aq = getelementptr float, ptr {ap}, i64 {p}ao",
        ]
        if prefetch is not None:
            out += [
                f"  {p}pfq = getelementptr float, ptr {prefetch[0]}, i64 {p}bo",
                f"  call void @llvm.prefetch.p0(ptr {p}pfq, i32 0, i32 3, i32 1)",
                f"  {p}pfr = getelementptr float, ptr {prefetch[1]}, i64 {p}bo",
                f"  call void @llvm.prefetch.p0(ptr {p}pfr, i32 0, i32 2, i32 1)",
            ]
        for v in range(nv):
            out += [
                f"  {p}bq{v} = getelementptr float, ptr {p}bq, i64 {v * lanes}",
                f"  {p}b{v} = load {vty}, ptr {p}bq{v}, align 4",
            ]
        for i in range(mr):
            out += [
                f"  {p}ap{i} = getelementptr float, ptr {p}aq, i64 {i * rs}",
                f"  {p}as{i} = load float, ptr {p}ap{i}, align 4",
            ]
            _splat(out, vty, lanes, f"{p}as{i}", f"{p}av{i}")
            for v in range(nv):
                out.append(
                    f"  %{lab}{i}_{v}s{j} = call {vty} @llvm.fma.v{lanes}f32("
                    f"{vty} {p}av{i}, {vty} {p}b{v}, {vty} %{lab}a{i}_{v}s{j})"
                )
    out += [
        f"  %{lab}n = add i64 %{lab}k, {1 if split else step}",
        f"  %{lab}more = icmp ult i64 %{lab}n, {end}",
        f"  br i1 %{lab}more, label %{lab}, label {exit_}",
    ]


def _epilogue(name: str, s: GemmSpec) -> str:
    """``@NAME_ep(c, ldc, rows, bias, res)``: bias, activation and residual in place over
    ``rows`` rows of one NR-wide panel of C, a row per iteration."""
    L, nv, vty = s.lanes, s.nr // s.lanes, vec_type(s.lanes)
    out = [
        f"define internal void @{name}_ep(ptr noalias %c, i64 %ldc, i64 %rows, "
        "ptr noalias %bias, ptr noalias %res) noinline {",
        "entry:",
    ]
    if s.has_bias and not s.bias_rows:
        for v in range(nv):
            out += [
                f"  %bb{v} = getelementptr float, ptr %bias, i64 {v * L}",
                f"  %bv{v} = load {vty}, ptr %bb{v}, align 4",
            ]
    out += [
        "  br label %row",
        "row:",
        "  %i = phi i64 [0, %entry], [%in, %row]",
        "  %ro = mul i64 %i, %ldc",
    ]
    if s.has_bias and s.bias_rows:
        out += [
            "  %brp = getelementptr float, ptr %bias, i64 %i",
            "  %br = load float, ptr %brp, align 4",
        ]
        _splat(out, vty, L, "%br", "%brv")
    em = Emitter(out, L)
    for v in range(nv):
        out += [
            f"  %o{v} = add i64 %ro, {v * L}",
            f"  %p{v} = getelementptr float, ptr %c, i64 %o{v}",
            f"  %x{v} = load {vty}, ptr %p{v}, align 4",
        ]
        x = f"%x{v}"
        if s.has_bias:
            x = em.add(x, "%brv" if s.bias_rows else f"%bv{v}")
        x = em.unary(s.act, x)
        if s.has_res:
            out += [
                f"  %rp{v} = getelementptr float, ptr %res, i64 %o{v}",
                f"  %rv{v} = load {vty}, ptr %rp{v}, align 4",
            ]
            x = em.add(x, f"%rv{v}")
        out.append(f"  store {vty} {x}, ptr %p{v}, align 4")
    out += [
        "  %in = add i64 %i, 1",
        "  %im = icmp slt i64 %in, %rows",
        "  br i1 %im, label %row, label %done",
        "done:",
        "  ret void",
        "}",
    ]
    return "\n".join(out)


def _pack_a(name: str, s: GemmSpec) -> str:
    """``@NAME_pa(src, dst, kc, mr)``: copy ``mr`` rows × ``kc`` of A (row stride K) into a
    ``[kc][MR]`` panel. Full panels go 8 k at a time: MR vector loads, one interleaving shuffle."""
    mr, w = s.mr, 8
    out = [
        f"define internal void @{name}_pa(ptr noalias %src, ptr noalias %dst, i64 %kc, i64 %mr) {{",
        "entry:",
        f"  %full = icmp eq i64 %mr, {mr}",
        f"  %kc8 = and i64 %kc, -{w}",
        "  %hasv = icmp sgt i64 %kc8, 0",
        "  %vgo = and i1 %full, %hasv",
        "  br i1 %vgo, label %v, label %vdone",
        "v:",
        "  %vk = phi i64 [0, %entry], [%vkn, %v]",
    ]
    for i in range(mr):
        out += [
            f"  %vp{i} = getelementptr float, ptr %src, i64 %vk",
            f"  %vq{i} = getelementptr float, ptr %vp{i}, i64 {i * s.k}",
            f"  %r{i} = load <{w} x float>, ptr %vq{i}, align 4",
        ]
    # Concatenate the rows (padded with poison to a power of two), then interleave them.
    rows, width = [f"%r{i}" for i in range(mr)], w
    while len(rows) & (len(rows) - 1):
        rows.append("poison")
    level = 0
    while len(rows) > 1:
        mask = ", ".join(f"i32 {x}" for x in range(2 * width))
        nxt = []
        for p in range(0, len(rows), 2):
            nm = f"%cat{level}_{p}"
            out.append(
                f"  {nm} = shufflevector <{width} x float> {rows[p]}, <{width} x float> "
                f"{rows[p + 1]}, <{2 * width} x i32> <{mask}>"
            )
            nxt.append(nm)
        rows, width, level = nxt, 2 * width, level + 1
    mask = ", ".join(f"i32 {i * w + j}" for j in range(w) for i in range(mr))
    out += [
        f"  %tr = shufflevector <{width} x float> {rows[0]}, <{width} x float> poison, "
        f"<{w * mr} x i32> <{mask}>",
        f"  %vd0 = mul i64 %vk, {mr}",
        "  %vd = getelementptr float, ptr %dst, i64 %vd0",
        f"  store <{w * mr} x float> %tr, ptr %vd, align 4",
        f"  %vkn = add i64 %vk, {w}",
        "  %vm = icmp slt i64 %vkn, %kc8",
        "  br i1 %vm, label %v, label %vdone",
        "vdone:",
        "  %k0 = select i1 %vgo, i64 %kc8, i64 0",
        "  %sgo = icmp slt i64 %k0, %kc",
        "  br i1 %sgo, label %sk, label %ret",
        "sk:",
        "  %kk = phi i64 [%k0, %vdone], [%kn, %si.x]",
        "  br label %si",
        "si:",
        "  %ii = phi i64 [0, %sk], [%in, %si]",
        f"  %so0 = mul i64 %ii, {s.k}",
        "  %so = add i64 %so0, %kk",
        "  %sp = getelementptr float, ptr %src, i64 %so",
        "  %sv = load float, ptr %sp",
        f"  %do0 = mul i64 %kk, {mr}",
        "  %do = add i64 %do0, %ii",
        "  %dp = getelementptr float, ptr %dst, i64 %do",
        "  store float %sv, ptr %dp",
        "  %in = add i64 %ii, 1",
        "  %im = icmp slt i64 %in, %mr",
        "  br i1 %im, label %si, label %si.x",
        "si.x:",
        "  %kn = add i64 %kk, 1",
        "  %km = icmp slt i64 %kn, %kc",
        "  br i1 %km, label %sk, label %ret",
        "ret:",
        "  ret void",
        "}",
    ]
    return "\n".join(out)


def _grid_table(name: str, s: GemmSpec) -> str:
    """``@NAME_grid[p]``: row shares for p parts (entry 0 unused)."""
    vals = ", ".join(f"i64 {s.grid(p) if p else 1}" for p in range(MAX_PARTS + 1))
    return f"@{name}_grid = internal unnamed_addr constant [{MAX_PARTS + 1} x i64] [{vals}]"


def _range(L: list[str], idx: str, shares: str, total: int, lo: str, hi: str) -> None:
    """``lo``/``hi``: share ``idx`` of ``shares`` equal shares of ``range(total)``."""
    L += [
        f"  {lo}0 = mul i64 {idx}, {total}",
        f"  {lo} = udiv i64 {lo}0, {shares}",
        f"  {hi}0 = add i64 {idx}, 1",
        f"  {hi}1 = mul i64 {hi}0, {total}",
        f"  {hi} = udiv i64 {hi}1, {shares}",
    ]


def gemm_kernel(
    name: str,
    s: GemmSpec,
    c: Operand,
    a: Operand,
    bp: Operand,
    bias: Operand | None,
    res: Operand | None,
) -> str:
    """LLVM IR of one batched GEMM with its fused epilogue (all parts' shares)."""
    # Packed A: every row count (a partial row panel is always packed); A in place: full panels.
    parts = [_ukernel(name, s, mr, True) for mr in range(1, s.mr + 1)]
    parts.append(_ukernel(name, s, s.mr, False))
    parts += [_pack_a(name, s), _grid_table(name, s)]
    if not s.epilogue_in_registers:
        parts.append(_epilogue(name, s))
    kc, mc, mr = s.kc, s.mc, s.mr
    upb = -(-s.m // mr)  # row panels per batch
    full, tail = s.n // s.nr, s.n % s.nr
    L = [body_header(name, 5), "entry:"]
    loops = Loops(L)
    for v in ("bi", "pc", "ic", "jp", "ir", "ti", "tj", "pr"):
        L.append(f"  %{v}.a = alloca i64, align 8")
    L += [
        f"  %tmp = alloca [{mr * s.nr} x float], align 64",
        f"  %apk = alloca [{mc * kc} x float], align 64",
        # This part's rectangle: row panels [u0, u1) (over all batches) × B panels [p0, p1).
        f"  %gin = icmp ule i64 %nparts, {MAX_PARTS}",
        "  %gi = select i1 %gin, i64 %nparts, i64 0",
        f"  %grp = getelementptr [{MAX_PARTS + 1} x i64], ptr @{name}_grid, i64 0, i64 %gi",
        "  %gt = load i64, ptr %grp, align 8",
        "  %sm = select i1 %gin, i64 %gt, i64 %nparts",
        "  %sn = udiv i64 %nparts, %sm",
        "  %pm = udiv i64 %part, %sn",
        "  %pn = urem i64 %part, %sn",
    ]
    _range(L, "%pm", "%sm", s.units, "%u0", "%u1")
    _range(L, "%pn", "%sn", s.panels, "%p0", "%p1")
    L += [
        "  %np = sub i64 %p1, %p0",
        "  %nonempty = icmp sgt i64 %np, 0",
        f"  %dopack = icmp sge i64 %np, {s.pack_min_panels}",
        f"  %bfirst = udiv i64 %u0, {upb}",
        f"  %ulast = add i64 %u1, {upb - 1}",
        f"  %bend0 = udiv i64 %ulast, {upb}",
        "  %bend = select i1 %nonempty, i64 %bend0, i64 %bfirst",
    ]
    loops.open("bi", "%bfirst", "%bend", 1)
    L += [
        f"  %ub = mul i64 %bi, {upb}",
        "  %lo0 = sub i64 %u0, %ub",
        "  %lo = call i64 @llvm.smax.i64(i64 %lo0, i64 0)",
        "  %hi0 = sub i64 %u1, %ub",
        f"  %hi = call i64 @llvm.smin.i64(i64 %hi0, i64 {upb})",
        f"  %r0 = mul i64 %lo, {mr}",
        f"  %r1a = mul i64 %hi, {mr}",
        f"  %r1 = call i64 @llvm.smin.i64(i64 %r1a, i64 {s.m})",
        f"  %ab = mul i64 %bi, {s.a_batch_stride}",
        "  %abp = getelementptr float, ptr %a1, i64 %ab",
        f"  %bb = mul i64 %bi, {s.b_stride if s.b_batched else 0}",
        "  %bbp = getelementptr float, ptr %a2, i64 %bb",
        f"  %cb = mul i64 %bi, {s.c_stride}",
        "  %cbp = getelementptr float, ptr %a0, i64 %cb",
        "  %rbp = getelementptr float, ptr %a4, i64 %cb",
    ]
    loops.open("pc", "0", str(s.k), kc)
    L += [
        f"  %kr = sub i64 {s.k}, %pc",
        f"  %kc = call i64 @llvm.smin.i64(i64 %kr, i64 {kc})",
        "  %accum = icmp sgt i64 %pc, 0",
        "  %kend = add i64 %pc, %kc",
        f"  %last = icmp eq i64 %kend, {s.k}",
    ]
    loops.open("ic", "%r0", "%r1", mc)
    L += [
        f"  %ie0 = add i64 %ic, {mc}",
        "  %iend = call i64 @llvm.smin.i64(i64 %ie0, i64 %r1)",
        "  %iall = sub i64 %iend, %ic",
        f"  %ifull0 = udiv i64 %iall, {mr}",
        f"  %ifull1 = mul i64 %ifull0, {mr}",
        "  %ifull = add i64 %ic, %ifull1",
        "  %pfrom = select i1 %dopack, i64 %ic, i64 %ifull",
    ]
    # Pack this row block's A (rows ic..iend, k pc..pc+kc) into MR-row panels: all of them, or
    # only a partial last one (the in-place micro-kernel takes full panels only).
    loops.open("pr", "%pfrom", "%iend", mr)
    L += [
        "  %prr = sub i64 %iend, %pr",
        f"  %prm = call i64 @llvm.smin.i64(i64 %prr, i64 {mr})",
        f"  %pso0 = mul i64 %pr, {s.k}",
        "  %pso = add i64 %pso0, %pc",
        "  %psrc = getelementptr float, ptr %abp, i64 %pso",
        "  %pdo0 = sub i64 %pr, %ic",
        "  %pdo = mul i64 %pdo0, %kc",
        "  %pdst = getelementptr float, ptr %apk, i64 %pdo",
        f"  call void @{name}_pa(ptr %psrc, ptr %pdst, i64 %kc, i64 %prm)",
    ]
    loops.close("pr", mr)
    loops.open("jp", "%p0", "%p1", 1)
    L += [
        f"  %j0 = mul i64 %jp, {s.nr}",
        f"  %bpo0 = mul i64 %jp, {s.k * s.nr}",
        f"  %bpo1 = mul i64 %pc, {s.nr}",
        "  %bpo = add i64 %bpo0, %bpo1",
        "  %bpt = getelementptr float, ptr %bbp, i64 %bpo",
        f"  %bnext = getelementptr float, ptr %bpt, i64 {s.k * s.nr}",
        "  %biasp = getelementptr float, ptr %a3, i64 %j0",
        f"  %isfull = icmp slt i64 %jp, {full}",
    ]
    loops.open("ir", "%ic", "%iend", mr)
    L += [
        "  %mrr = sub i64 %iend, %ir",
        f"  %mr = call i64 @llvm.smin.i64(i64 %mrr, i64 {mr})",
        "  %apo0 = sub i64 %ir, %ic",
        "  %apo = mul i64 %apo0, %kc",
        "  %atp = getelementptr float, ptr %apk, i64 %apo",
        f"  %ado0 = mul i64 %ir, {s.k}",
        "  %ado = add i64 %ado0, %pc",
        "  %atd = getelementptr float, ptr %abp, i64 %ado",
        f"  %part_rows = icmp slt i64 %mr, {mr}",
        "  %usep = or i1 %dopack, %part_rows",
        "  %at = select i1 %usep, ptr %atp, ptr %atd",
        f"  %case = select i1 %usep, i64 %mr, i64 {mr + 1}",
        f"  %co0 = mul i64 %ir, {s.n}",
        "  %co = add i64 %co0, %j0",
        "  %ct = getelementptr float, ptr %cbp, i64 %co",
        "  %rt = getelementptr float, ptr %rbp, i64 %co",
        "  %biasr = getelementptr float, ptr %a3, i64 %ir",
        f"  %biast = select i1 {'true' if s.bias_rows else 'false'}, ptr %biasr, ptr %biasp",
        # The block's last row panel prefetches the next B panel; the others their own. A
        # product whose B streams (few rows) prefetches k steps ahead in the panel instead.
        f"  %irl0 = add i64 %ir, {mr}",
        "  %irl = icmp sge i64 %irl0, %iend",
        *(
            [
                f"  %pfb = getelementptr float, ptr %bpt, i64 {STREAM_PF_L1 * s.nr}",
                f"  %pf2 = getelementptr float, ptr %bpt, i64 {STREAM_PF_L2 * s.nr}",
            ]
            if s.streams_b
            else [
                "  %pfb = select i1 %irl, ptr %bnext, ptr %bpt",
                f"  %pf2 = getelementptr float, ptr %bpt, i64 {PF_L2_PANELS * s.k * s.nr}",
            ]
        ),
        "  br i1 %isfull, label %fsw, label %tsw",
    ]
    for kind in ("f", "t"):
        cases = " ".join(f"i64 {m}, label %{kind}m{m}" for m in range(1, mr + 2))
        L += [f"{kind}sw:", f"  switch i64 %case, label %{kind}join [ {cases} ]"]
        for m in range(1, mr + 2):
            fn = f"{name}_u{m}" if m <= mr else f"{name}_d{mr}"
            if kind == "f":
                args = (
                    f"ptr %at, ptr %bpt, i64 %kc, ptr %ct, i64 {s.n}, i1 %accum, i1 %last, "
                    "ptr %biast, ptr %rt, ptr %pfb, ptr %pf2"
                )
            else:
                args = (
                    f"ptr %at, ptr %bpt, i64 %kc, ptr %tmp, i64 {s.nr}, i1 false, i1 false, "
                    "ptr null, ptr null, ptr %pfb, ptr %pf2"
                )
            L += [f"{kind}m{m}:", f"  call void @{fn}({args})", f"  br label %{kind}join"]
        L.append(f"{kind}join:")
        if kind == "t":
            L += _tail_copy(s, tail)
        L.append("  br label %irnext")
    L.append("irnext:")
    loops.close("ir", mr)
    if not s.epilogue_in_registers:
        # The activation over this row block's full panel, just stored (in L1).
        L += [
            "  %epgo = and i1 %last, %isfull",
            "  br i1 %epgo, label %fep, label %fepx",
            "fep:",
            f"  %eco0 = mul i64 %ic, {s.n}",
            "  %eco = add i64 %eco0, %j0",
            "  %ect = getelementptr float, ptr %cbp, i64 %eco",
            "  %ert = getelementptr float, ptr %rbp, i64 %eco",
            "  %ebr = getelementptr float, ptr %a3, i64 %ic",
            f"  %ebt = select i1 {'true' if s.bias_rows else 'false'}, ptr %ebr, ptr %biasp",
            "  %erows = sub i64 %iend, %ic",
            f"  call void @{name}_ep(ptr %ect, i64 {s.n}, i64 %erows, ptr %ebt, ptr %ert)",
            "  br label %fepx",
            "fepx:",
        ]
    loops.close("jp", 1)
    loops.close("ic", mc)
    loops.close("pc", kc)
    loops.close("bi", 1)
    L += ["  ret void", "}"]
    return "\n".join([wrapper(name, [c, a, bp, bias, res]), "\n".join(L), *parts])


def _tail_copy(s: GemmSpec, tail: int) -> list[str]:
    """Scalar copy of the last panel's valid columns from the tile buffer, with the epilogue."""
    if tail == 0:
        return []
    L: list[str] = []
    sub = Loops(L)
    sub.open("ti", "0", "%mr", 1)
    sub.open("tj", "0", str(tail), 1)
    L += [
        f"  %to0 = mul i64 %ti, {s.nr}",
        "  %to = add i64 %to0, %tj",
        "  %tp = getelementptr float, ptr %tmp, i64 %to",
        "  %tv = load float, ptr %tp",
        f"  %go0 = mul i64 %ti, {s.n}",
        "  %go = add i64 %go0, %tj",
        "  %gp = getelementptr float, ptr %ct, i64 %go",
        "  br i1 %accum, label %tacc, label %tnoacc",
        "tacc:",
        "  %gold = load float, ptr %gp",
        "  %gsum = fadd float %gold, %tv",
        "  br label %tnoacc",
        "tnoacc:",
        "  %gv = phi float [%gsum, %tacc], [%tv, %tj.b]",
        "  br i1 %last, label %tepi, label %tstore",
        "tepi:",
    ]
    em = Emitter(L, 1)
    x = "%gv"
    if s.has_bias:
        L += [
            f"  %tbp = getelementptr float, ptr %biast, i64 {'%ti' if s.bias_rows else '%tj'}",
            "  %tbv = load float, ptr %tbp",
        ]
        x = em.add(x, "%tbv")
    x = em.unary(s.act, x)
    if s.has_res:
        L += ["  %trp = getelementptr float, ptr %rt, i64 %go", "  %trv = load float, ptr %trp"]
        x = em.add(x, "%trv")
    L += [
        f"  %tf = fadd float {x}, 0.0",
        "  br label %tstore",
        "tstore:",
        "  %tz = phi float [%tf, %tepi], [%gv, %tnoacc]",
        "  store float %tz, ptr %gp",
    ]
    sub.close("tj", 1)
    sub.close("ti", 1)
    return L


def pack_kernel(
    name: str,
    batch: int,
    k: int,
    n: int,
    nr: int,
    src: Operand,
    dst: Operand,
    transposed: bool = False,
) -> str:
    """LLVM IR that packs a runtime B ([batch, K, N]) into zero-padded NR-column panels.

    Parts take groups of PACK_GROUP panels; a group's full panels are copied a source row at a
    time (PACK_GROUP·NR contiguous floats read per row, one sequential write stream per panel),
    its partial last panel element by element. ``transposed``: the source holds Bᵀ
    ([batch, N, K]), as keys do in attention; it goes element by element.
    """
    panels = -(-n // nr)
    groups = -(-panels // PACK_GROUP)
    L = [body_header(name, 2), "entry:"]
    loops = Loops(L)
    for v in ("pp", "jp", "pk", "pj"):
        L.append(f"  %{v}.a = alloca i64, align 8")
    share(L, batch * groups, 1, "%q0", "%q1")
    loops.open("pp", "%q0", "%q1", 1)
    L += [
        f"  %bi = sdiv i64 %pp, {groups}",
        f"  %gi = srem i64 %pp, {groups}",
        f"  %sb = mul i64 %bi, {k * n}",
        f"  %bp0 = mul i64 %bi, {panels}",
        f"  %jlo = mul i64 %gi, {PACK_GROUP}",
        f"  %jhi0 = add i64 %jlo, {PACK_GROUP}",
        f"  %jhi = call i64 @llvm.smin.i64(i64 %jhi0, i64 {panels})",
    ]
    if transposed:
        L.append("  %jscalar = add i64 %jlo, 0")
    else:
        vty = vec_type(nr)
        L += [
            f"  %jfull = call i64 @llvm.smin.i64(i64 %jhi, i64 {n // nr})",
            "  %anyfull = icmp slt i64 %jlo, %jfull",
            "  br i1 %anyfull, label %fk, label %fdone",
            "fk:",
            "  %fkk = phi i64 [0, %pp.b], [%fkn, %fj.x]",
            f"  %fs0 = mul i64 %fkk, {n}",
            "  %fs1 = add i64 %sb, %fs0",
            f"  %fd0 = mul i64 %fkk, {nr}",
            "  br label %fj",
            "fj:",
            "  %fjj = phi i64 [%jlo, %fk], [%fjn, %fj]",
            f"  %fs2 = mul i64 %fjj, {nr}",
            "  %fs = add i64 %fs1, %fs2",
            "  %fsp = getelementptr float, ptr %a1, i64 %fs",
            f"  %fv = load {vty}, ptr %fsp, align 4",
            "  %fdp0 = add i64 %bp0, %fjj",
            f"  %fdp1 = mul i64 %fdp0, {k * nr}",
            "  %fd = add i64 %fdp1, %fd0",
            "  %fdp = getelementptr float, ptr %a0, i64 %fd",
            f"  store {vty} %fv, ptr %fdp, align 4",
            "  %fjn = add i64 %fjj, 1",
            "  %fjm = icmp slt i64 %fjn, %jfull",
            "  br i1 %fjm, label %fj, label %fj.x",
            "fj.x:",
            "  %fkn = add i64 %fkk, 1",
            f"  %fkm = icmp slt i64 %fkn, {k}",
            "  br i1 %fkm, label %fk, label %fdone",
            "fdone:",
            "  %jscalar = add i64 %jfull, 0",
        ]
    loops.open("jp", "%jscalar", "%jhi", 1)
    L += [
        f"  %j0 = mul i64 %jp, {nr}",
        "  %dpn = add i64 %bp0, %jp",
        f"  %db = mul i64 %dpn, {k * nr}",
    ]
    loops.open("pk", "0", str(k), 1)
    loops.open("pj", "0", str(nr), 1)
    L += [
        "  %col = add i64 %j0, %pj",
        f"  %inb = icmp slt i64 %col, {n}",
        f"  %colc = call i64 @llvm.smin.i64(i64 %col, i64 {n - 1})",
        *(
            [
                f"  %so0 = mul i64 %colc, {k}",
                "  %so1 = add i64 %sb, %so0",
                "  %so = add i64 %so1, %pk",
            ]
            if transposed
            else [
                f"  %so0 = mul i64 %pk, {n}",
                "  %so1 = add i64 %sb, %so0",
                "  %so = add i64 %so1, %colc",
            ]
        ),
        "  %sp = getelementptr float, ptr %a1, i64 %so",
        "  %sv = load float, ptr %sp",
        "  %v = select i1 %inb, float %sv, float 0.0",
        f"  %do0 = mul i64 %pk, {nr}",
        "  %do1 = add i64 %db, %do0",
        "  %do = add i64 %do1, %pj",
        "  %dp = getelementptr float, ptr %a0, i64 %do",
        "  store float %v, ptr %dp",
    ]
    loops.close("pj", 1)
    loops.close("pk", 1)
    loops.close("jp", 1)
    loops.close("pp", 1)
    L += ["  ret void", "}"]
    return wrapper(name, [dst, src]) + "\n" + "\n".join(L)
