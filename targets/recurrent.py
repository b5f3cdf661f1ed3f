"""Recurrent layers (ONNX RNN, GRU, LSTM: the ``rnn`` op) as two kernels.

1. **Input projection**, every time step at once: ``G = X·Wᵀ + b`` is one GEMM of
   [seq·batch, input] by [input, dirs·gates·hidden] (W packed at compile time). The biases that
   the reference adds outside any product are folded into ``b``: W's and R's for RNN and LSTM;
   for GRU W's, R's of the z and r gates, and R's of the h gate unless ``linear_before_reset``
   puts it inside ``r·(…)``.
2. **The recurrence**: per time step ``h·Rᵀ`` by a register-tile micro-kernel (attention's,
   with enough k-sets to hide the FMA latency when the batch is small), Rᵀ packed at compile
   time into column panels, then the gates, one vector of hidden units at a time, into the
   state, Y and at the end Y_h (and Y_c). A GRU without ``linear_before_reset`` needs
   ``(r·h)·Rhᵀ``: its step runs the z/r product, the z/r gates (``r·h`` into a buffer), then
   the h product and gates. A work unit is one direction over one group of batch rows
   (``batch_groups``); a single unit is shared by a team of cores (``team``), each with a slice
   of the hidden units, meeting at a barrier after every step.

Semantics are the reference's (``engine/ops/rnn.py``): default activations, ``clip`` on the
pre-activations, LSTM peepholes, ``layout`` 0 and 1, initial states, ``sequence_lens`` (checked
against [0, seq] before any work). W and R known only at run time leave the node to the
reference.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
from satura.engine.graph import Node, TensorType, Value
from satura.engine.ops.rnn import GATES
from satura.targets.attention import tile, tile_kernel, tiles_driver
from satura.targets.gemm import accumulator_sets, pack_b_numpy
from satura.targets.indexing import node_code
from satura.targets.irmath import Emitter
from satura.targets.kernel import (
    ERROR_SLOT,
    FuncIR,
    Operand,
    body_header,
    report_error,
    share,
    wrapper,
)
from satura.targets.lower import LOWERINGS, Lowerer, Lowering, Ref, Scratch, Step
from satura.targets.memory import align

MAX_TEAM = 4  # cores that may share one direction's hidden units (see ``team``)
BARRIER_SPIN = 1024  # pauses (~25 µs here) a team's barrier spins between yields of its core


def batch_groups(batch: int, dirs: int, threads: int) -> int:
    """Batch groups a direction is cut into: enough units for every core (rows are independent
    sequences; each unit streams all of R every step)."""
    return max(1, min(batch, -(-threads // dirs)))


def team(units: int, hs: int, lanes: int, threads: int) -> int:
    """Cores that share one unit's hidden units, a slice each, meeting at a barrier every step:
    all of them when there is one unit (one direction, one batch group) and a vector of hidden
    units for each, else 1. Each then streams only its slice of R (which may now fit its L2)."""
    if units > 1 or threads < 2:
        return 1
    return max(1, min(threads, MAX_TEAM, hs // lanes))


@dataclass(frozen=True)
class RnnSpec:
    cell: str
    seq: int
    batch: int
    hs: int
    dirs: int
    direction: str
    layout: int
    clip: float | None
    lbr: bool  # GRU's linear_before_reset
    peep: bool
    lanes: int
    groups: int = 1  # the batch rows of a direction cut into this many units
    members: int = 1  # parts sharing a unit's hidden units (``team``)
    lens: str | None = None  # sequence_lens' LLVM type when the rows' lengths may differ

    @property
    def gb(self) -> int:
        """Batch rows of a unit (the last may have fewer)."""
        return -(-self.batch // self.groups)

    @property
    def units(self) -> int:
        return self.dirs * self.groups

    @property
    def g(self) -> int:
        return GATES[self.cell]

    @property
    def mr(self) -> int:
        """Rows (batch entries) of the micro-kernel's tile: the batch in as few tiles as the
        register tile allows, of near-equal height (8 rows: two of 4, not 6 and 2)."""
        most = tile(self.lanes)[0]
        return -(-self.gb // -(-self.gb // most))

    @property
    def nv(self) -> int:
        """Vectors of its column panel: as many as the accumulators allow (2 to 8)."""
        mr_max, nr = tile(self.lanes)
        return max(2, min(8, mr_max * (nr // self.lanes) // self.mr))

    @property
    def nr(self) -> int:
        return self.nv * self.lanes

    @property
    def blocks(self) -> list[tuple[int, ...]]:
        """The products of a step, as the gates whose columns each computes: all at once, or
        z and r, then h, for a GRU without linear_before_reset."""
        if self.cell == "gru" and not self.lbr:
            return [(0, 1), (2,)]
        return [tuple(range(self.g))]

    def padded(self, n: int) -> int:
        return -(-n // self.nr) * self.nr

    @property
    def slices(self) -> list[tuple[int, int]]:
        """(first hidden unit, count) of each member: whole vectors, the last one shorter."""
        w = -(-self.hs // self.members // self.lanes) * self.lanes
        return [(j, min(w, self.hs - j)) for j in range(0, self.hs, w)]

    def gate_offset(self, m: int, k: int) -> int:
        """Where gate k's product for member m's first hidden unit is in a row of products:
        the blocks one after another, each padded to whole panels."""
        w, off = self.slices[m][1], 0
        for bl in self.blocks:
            if k in bl:
                return off + bl.index(k) * w
            off += self.padded(len(bl) * w)
        raise AssertionError(k)

    def row_floats(self, m: int) -> int:
        return sum(self.padded(len(bl) * self.slices[m][1]) for bl in self.blocks)

    @property
    def ghp(self) -> int:
        """Floats a batch row of a member's products takes (the widest member's)."""
        return max(self.row_floats(m) for m in range(len(self.slices)))

    def r_offsets(self) -> tuple[list[list[int]], int]:
        """Offsets (floats) of the packed Rᵀ of each (member, block) in a direction; its size."""
        offs, at = [], 0
        for _, w in self.slices:
            offs.append([])
            for bl in self.blocks:
                offs[-1].append(at)
                at += self.hs * self.padded(len(bl) * w)
        return offs, at

    def scratch_floats(self) -> list[int]:
        """Per unit: h (two: the step's old and new), c, every member's products, r·h (GRU
        without linear_before_reset)."""
        bh = self.gb * self.hs
        rh = bh if self.cell == "gru" and not self.lbr else 0
        gh = len(self.slices) * self.gb * self.ghp
        return [2 * bh, bh if self.cell == "lstm" else 0, gh, rh]

    def scratch_bytes(self) -> int:
        return sum(align(4 * max(f, 1)) for f in self.scratch_floats())


def pack_recurrent(r: np.ndarray, s: RnnSpec) -> np.ndarray:
    """R [dirs, g·hs, hs] as Rᵀ column panels: per direction, per member, per product block,
    the block's gates' columns of the member's hidden units side by side."""
    out = []
    for d in range(s.dirs):
        rt = np.asarray(r[d], np.float32).T  # [hs, g·hs]
        for j0, w in s.slices:
            for bl in s.blocks:
                cols = np.concatenate([rt[:, k * s.hs + j0 : k * s.hs + j0 + w] for k in bl], 1)
                out.append(pack_b_numpy(cols, s.nr))
    return np.concatenate(out)


def _gates(
    ir: FuncIR,
    em: Emitter,
    s: RnnSpec,
    m: int,
    ptrs: dict[str, str],
    j: str,
    phase: int,
) -> None:
    """The gate arithmetic for ``em.lanes`` hidden units from unit ``j`` of one batch row, of
    member ``m``'s slice.

    ``ptrs``: row pointers ``gx`` (this step's input projection), ``gh`` (member m's products,
    less its first hidden unit: indexed by j), ``h`` (the old state), ``hn`` (the new), ``c``,
    ``y``, ``hb`` (GRU's recurrent h bias), ``p`` (peepholes), ``rh``. ``phase`` 0 is the whole
    step, except for a GRU without linear_before_reset: 1 (z, r; r·h) then 2.
    """
    ty, hs = em.ty, s.hs

    def ld(name: str, off: int) -> str:
        return ir(f"load {ty}, ptr {ir.gep(ir.gep(ptrs[name], off), j)}, align 4")

    def st(name: str, off: int, x: str) -> None:
        ir.do(f"store {ty} {x}, ptr {ir.gep(ir.gep(ptrs[name], off), j)}, align 4")

    def clip(x: str) -> str:
        return x if s.clip is None else em.clamp(x, -s.clip, s.clip)

    def pre(k: int) -> str:
        """Gate k's pre-activation: input projection + product."""
        return em.add(ld("gx", k * hs), ld("gh", s.gate_offset(m, k)))

    if s.cell == "rnn":
        hn = em.tanh(clip(pre(0)))
    elif s.cell == "lstm":  # gates i, o, f, c; peepholes i, o, f
        c = ld("c", 0)
        i, o, f, cc = (clip(pre(k)) for k in range(4))
        if s.peep:
            i = em.fma(ld("p", 0), c, i)
            f = em.fma(ld("p", 2 * hs), c, f)
        cn = em.fma(em.sigmoid(f), c, em.mul(em.sigmoid(i), em.tanh(cc)))
        if s.peep:
            o = em.fma(ld("p", hs), cn, o)
        hn = em.mul(em.sigmoid(o), em.tanh(cn))
        st("c", 0, cn)
    elif s.lbr:  # GRU, gates z, r, h: h~ = tanh(gx_h + r·(h·Rhᵀ + Rbh))
        h = ld("h", 0)
        z, r = (em.sigmoid(clip(pre(k))) for k in (0, 1))
        rec = em.add(ld("gh", s.gate_offset(m, 2)), ld("hb", 0))
        hh = em.tanh(clip(em.fma(r, rec, ld("gx", 2 * hs))))
        hn = em.fma(z, em.sub(h, hh), hh)  # (1 - z)·h~ + z·h
    elif phase == 1:  # GRU: z (kept where its product was) and r·h
        h = ld("h", 0)
        z, r = (em.sigmoid(clip(pre(k))) for k in (0, 1))
        st("gh", s.gate_offset(m, 0), z)
        st("rh", 0, em.mul(r, h))
        return
    else:  # GRU phase 2: h~ = tanh(gx_h + (r·h)·Rhᵀ), Rbh folded into gx
        h, z = ld("h", 0), ld("gh", s.gate_offset(m, 0))
        hh = em.tanh(clip(em.add(ld("gx", 2 * hs), ld("gh", s.gate_offset(m, 2)))))
        hn = em.fma(z, em.sub(h, hh), hh)
    st("hn", 0, hn)
    st("y", 0, hn)


def _copy_floats(ir: FuncIR, dst: str, src: str, n: int) -> None:
    ir.do(f"call void @llvm.memcpy.p0.p0.i64(ptr {dst}, ptr {src}, i64 {4 * n}, i1 0)")


def _zero_floats(ir: FuncIR, dst: str, n: int) -> None:
    ir.do(f"call void @llvm.memset.p0.i64(ptr {dst}, i8 0, i64 {4 * n}, i1 0)")


def _barrier(ir: FuncIR, sync: str, n: str, spins: str) -> None:
    """Wait until every part has arrived ``n`` times (``n``: this arrival's count): the parts
    add to one counter, which reads nparts·n once the n-th barrier is passed by all. A part
    spins, and yields its core every BARRIER_SPIN pauses (``spins`` counts them): a part that
    shares its core with the one it waits for (more threads than cores) would otherwise spin
    out its whole time slice."""
    ir(f"atomicrmw add ptr {sync}, i64 1 acq_rel, align 8")
    want = ir(f"mul i64 {n}, %nparts")
    lb = ir.new("bar")[1:]
    ir.do(f"br label %{lb}.h")
    ir.label(f"{lb}.h")
    got = ir(f"load atomic i64, ptr {sync} acquire, align 8")
    ir.do(f"br i1 {ir(f'icmp uge i64 {got}, {want}')}, label %{lb}.x, label %{lb}.w")
    ir.label(f"{lb}.w")
    ir.do("call void @sat_spin_hint()")
    k = ir(f"add i64 {ir(f'load i64, ptr {spins}')}, 1")
    ir.do(f"store i64 {k}, ptr {spins}")
    with ir.when(ir(f"icmp eq i64 {ir(f'and i64 {k}, {BARRIER_SPIN - 1}')}, 0")):
        ir.do("call void @sat_yield()")
    ir.do(f"br label %{lb}.h")
    ir.label(f"{lb}.x")


def rnn_kernel(
    name: str,
    s: RnnSpec,
    gx: Operand,
    rp: Operand,
    hb: Operand | None,
    p: Operand | None,
    h0: Operand | None,
    c0: Operand | None,
    y: Operand | None,
    yh: Operand | None,
    yc: Operand | None,
    sync: Operand | None,
    scratch: Operand,
    lens: Operand | None = None,
    code: int = 0,
) -> str:
    """The recurrence: a unit is one direction over one group of batch rows. With members > 1
    (one unit) every part takes the members ``m ≡ part (mod nparts)`` of the one unit and the
    parts meet at a barrier on ``sync`` (two zeroed i64 words, zero again when the kernel
    returns) after each phase. With ``lens`` (sequence_lens, ``s.lens`` its type) every part
    first checks that each length is in [0, seq]; one that is not goes to the error record
    (``code``: the node's) and no part does any work. Operands in the order of ``wrapper``'s
    list."""
    lanes, hs, batch, seq, dirs = s.lanes, s.hs, s.batch, s.seq, s.dirs
    mr, nv, nr = s.mr, s.nv, s.nr
    team_mode = s.members > 1
    parts = []
    for bi in range(len(s.blocks)):
        kern = f"{name}_u{bi}_"
        ks = accumulator_sets(mr, nv)
        parts += [
            tile_kernel(f"{kern}{m}", m, nr, lanes, hs, nr, s.ghp, "pv0", 1.0, False, ks)
            for m in range(1, mr + 1)
        ]
        # each row tile over all panels (panels outer measured the same, A/B in one process)
        parts.append(tiles_driver(f"{name}_mm{bi}", kern, mr, hs, s.ghp, 0, 0, hs * nr, nr, True))
    ir = FuncIR(lanes)
    em, e1 = Emitter(ir.L, lanes), Emitter(ir.L, 1)
    u0, u1 = "0", "1"  # a team: every part works on the one unit
    if not team_mode:
        share(ir.L, s.units, 1, "%u0", "%u1")
        u0, u1 = "%u0", "%u1"
    offs, acc = [], 0
    for f in s.scratch_floats():
        offs.append(acc)
        acc += align(4 * max(f, 1))
    roffs, per_dir_r = s.r_offsets()
    # the members this part takes (without a team, each part's units are all its own)
    mine = (
        [ir(f"icmp eq i64 {ir(f'urem i64 {m}, %nparts')}, %part") for m in range(s.members)]
        if team_mode
        else ["true"]
    )
    if team_mode:
        arrivals, spins = ir.var("i64", "0"), ir.var("i64", "0")
    tail: list[str] = []
    if s.lens is not None:  # every part checks all: all return, or none does
        with ir.loop(0, batch) as b:
            n = ir(f"load {s.lens}, ptr {ir.gep('%a11', b, s.lens)}, align 4")
            n = ir(f"sext {s.lens} {n} to i64") if s.lens != "i64" else n
            ok = ir(f"icmp ule i64 {n}, {seq}")
            lb = ir.new("lens")[1:]
            ir.do(f"br i1 {ok}, label %{lb}.ok, label %{lb}.bad")
            ir.label(f"{lb}.ok")
            report_error(tail, f"{lb}.bad", "%a12", code, b, n, 0, seq, 4)

    def barrier() -> None:
        if team_mode:
            n = ir("add i64 " + ir(f"load i64, ptr {arrivals}") + ", 1")
            ir.do(f"store i64 {n}, ptr {arrivals}")
            _barrier(ir, "%a9", n, spins)

    def state_row(base: str, d: str, b: str | int) -> str:
        """Row (d, b) of a [dirs, batch, hs] state (layout 0) or [batch, dirs, hs] (layout 1)."""
        row = ir.add(ir.mul(d, batch), b) if not s.layout else ir.add(ir.mul(b, dirs), d)
        return ir.gep(base, ir.mul(row, hs))

    def copy(dst: str, src: str, j0: int, w: int) -> None:
        _copy_floats(ir, ir.gep(dst, j0), ir.gep(src, j0), w)

    phases = (1, 2) if len(s.blocks) == 2 else (0,)
    with ir.loop(u0, u1) as u:
        d = ir(f"udiv i64 {u}, {s.groups}")
        b0 = ir.mul(ir(f"urem i64 {u}, {s.groups}"), s.gb)
        nb = ir(f"call i64 @llvm.smin.i64(i64 {ir(f'sub i64 {batch}, {b0}')}, i64 {s.gb})")
        scr = ir(f"getelementptr i8, ptr %a10, i64 {ir.mul(u, acc)}")
        hbuf, cbuf, ghbuf, rhbuf = (ir(f"getelementptr i8, ptr {scr}, i64 {o}") for o in offs)
        rev = (
            ir(f"icmp eq i64 {d}, 1")
            if s.direction == "bidirectional"
            else ("true" if s.direction == "reverse" else "false")
        )
        rpd = ir.gep("%a1", ir.mul(d, per_dir_r))
        for m, (j0, w) in enumerate(s.slices):  # initial state: each member its slice
            with ir.when(mine[m]):
                for buf, init, keep in ((hbuf, "%a4", h0), (cbuf, "%a5", c0)):
                    if buf is cbuf and s.cell != "lstm":
                        continue
                    with ir.loop(0, nb) as b:
                        dst = ir.gep(buf, ir.mul(b, hs))
                        if keep is not None:
                            copy(dst, state_row(init, d, ir.add(b0, b)), j0, w)
                        else:
                            _zero_floats(ir, ir.gep(dst, j0), w)
        barrier()
        with ir.loop(0, seq) as step:
            t = ir(f"select i1 {rev}, i64 {ir(f'sub i64 {seq - 1}, {step}')}, i64 {step}")
            par = ir(f"and i64 {step}, 1")  # h of this step in half par, the new one in 1 - par
            hold = ir.gep(hbuf, ir.mul(par, s.gb * hs))
            hnew = ir.gep(hbuf, ir.mul(ir(f"xor i64 {par}, 1"), s.gb * hs))
            for bi, phase in enumerate(phases):
                for m, (_, w) in enumerate(s.slices):
                    with ir.when(mine[m]):
                        gm = ir.gep(ghbuf, m * s.gb * s.ghp)
                        blo = s.gate_offset(m, s.blocks[bi][0])  # this block's products
                        ir.do(
                            f"call void @{name}_mm{bi}(ptr {hold if phase != 2 else rhbuf}, "
                            f"ptr {ir.gep(rpd, roffs[m][bi])}, ptr {ir.gep(gm, blo)}, "
                            f"i64 {hs}, ptr null, i64 0, i64 {nb}, "
                            f"i64 {s.padded(len(s.blocks[bi]) * w) // nr})"
                        )
                        rows = (t, d, b0, nb, step, rev)
                        _gate_rows(ir, em, e1, s, m, phase, rows, gm, hold, hnew, cbuf, rhbuf, y)
                barrier()
        hfin = ir.gep(hbuf, (seq % 2) * s.gb * hs)
        for m, (j0, w) in enumerate(s.slices):
            with ir.when(mine[m]):
                for buf, out, keep in ((hfin, "%a7", yh), (cbuf, "%a8", yc)):
                    if keep is None:
                        continue
                    with ir.loop(0, nb) as b:
                        copy(state_row(out, d, ir.add(b0, b)), ir.gep(buf, ir.mul(b, hs)), j0, w)
    if team_mode:  # the last part out leaves both words zeroed for the next call
        out = ir("getelementptr i8, ptr %a9, i64 64")
        done = ir(f"atomicrmw add ptr {out}, i64 1 acq_rel, align 8")
        with ir.when(ir(f"icmp eq i64 {done}, {ir('sub i64 %nparts, 1')}")):
            ir.do("store atomic i64 0, ptr %a9 release, align 8")
            ir.do(f"store atomic i64 0, ptr {out} release, align 8")
    ir.do("ret void")
    ir.L += tail
    body = ir.func(body_header(name, 13))
    record = Operand(ERROR_SLOT) if lens is not None else None
    ops = [gx, rp, hb, p, h0, c0, y, yh, yc, sync, scratch, lens, record]
    return "\n".join([wrapper(name, ops), body, *parts])


def _gate_rows(
    ir: FuncIR,
    em: Emitter,
    e1: Emitter,
    s: RnnSpec,
    m: int,
    phase: int,
    rows: tuple[str, str, str, str, str, str],
    gm: str,
    hold: str,
    hnew: str,
    cbuf: str,
    rhbuf: str,
    y: Operand | None,
) -> None:
    """Member m's gates at time t for the unit's ``nb`` rows from ``b0`` of direction d
    (``rows``: also the step and whether it runs backwards), a vector of hidden units at a time,
    then single ones.

    With sequence lengths (``s.lens``), row b is live while ``step < len_b`` and, backwards,
    reads and writes time ``len_b - 1 - step``; a row past its length keeps its state and gets
    zeros in Y at time ``step`` (the times its sequence never reaches), as the reference does."""
    t, d, b0, nb, step, rev = rows
    hs, lanes, batch, seq, dirs = s.hs, s.lanes, s.batch, s.seq, s.dirs
    gw = dirs * s.g * hs  # a row of G
    j0, w = s.slices[m]

    def row_of_y(t: str, bg: str) -> str:
        return (
            ir.add(ir.mul(ir.add(ir.mul(t, dirs), d), batch), bg)
            if s.layout == 0
            else ir.add(ir.mul(ir.add(ir.mul(bg, seq), t), dirs), d)
        )

    with ir.loop(0, nb) as b:
        bg = ir.add(b0, b)  # the batch row
        live = "true"
        if s.lens is not None:
            n = ir(f"load {s.lens}, ptr {ir.gep('%a11', bg, s.lens)}, align 4")
            n = ir(f"sext {s.lens} {n} to i64") if s.lens != "i64" else n
            live = ir(f"icmp slt i64 {step}, {n}")
            back = ir(f"sub i64 {ir.add(n, -1)}, {step}")  # < 0 only when not live: then 0
            back = ir(f"select i1 {live}, i64 {back}, i64 0")
            t = ir(f"select i1 {rev}, i64 {back}, i64 {step}")
            if phase != 1:
                with ir.when(ir(f"xor i1 {live}, true")):  # past its end: the state stays
                    dst, src = ir.gep(hnew, ir.mul(b, hs)), ir.gep(hold, ir.mul(b, hs))
                    _copy_floats(ir, ir.gep(dst, j0), ir.gep(src, j0), w)
                    if y is not None:
                        yz = ir.gep(ir.gep("%a6", ir.mul(row_of_y(step, bg), hs)), j0)
                        _zero_floats(ir, yz, w)
        xrow = ir.add(ir.mul(t, batch), bg) if s.layout == 0 else ir.add(ir.mul(bg, seq), t)
        yrow = row_of_y(t, bg)
        ptrs = {
            "gx": ir.gep("%a0", ir.add(ir.mul(xrow, gw), ir.mul(d, s.g * hs))),
            "gh": ir.gep(ir.gep(gm, ir.mul(b, s.ghp)), -j0),
            "h": ir.gep(hold, ir.mul(b, hs)),
            "hn": ir.gep(hnew, ir.mul(b, hs)),
            "c": ir.gep(cbuf, ir.mul(b, hs)),
            "rh": ir.gep(rhbuf, ir.mul(b, hs)),
            "hb": ir.gep("%a2", ir.mul(d, hs)),
            "p": ir.gep("%a3", ir.mul(d, 3 * hs)),
        }
        # Y unused: its stores go to the new state (written anyway)
        ptrs["y"] = ir.gep("%a6", ir.mul(yrow, hs)) if y is not None else ptrs["hn"]
        vend = j0 + w // lanes * lanes
        with ir.when(live):
            if vend > j0:
                with ir.loop(j0, vend, lanes) as j:
                    _gates(ir, em, s, m, ptrs, j, phase)
            if vend < j0 + w:
                with ir.loop(vend, j0 + w) as j:
                    _gates(ir, e1, s, m, ptrs, j, phase)


def _const_data(v: Value | None) -> np.ndarray | None:
    """A constant input's fp32 data (None: absent or known only at run time)."""
    return None if v is None or not v.is_const else np.asarray(v.data, np.float32)


def lower_rnn(lw: Lowerer, node: Node, name: str) -> bool:
    x, w, r, bias, lens, h0, c0, peep = (list(node.inputs) + [None] * 8)[:8]
    at = node.attrs
    wd, rd, bd, pd = (_const_data(v) for v in (w, r, bias, peep))
    if x is None or wd is None or rd is None:
        return False
    if (bias is not None and bd is None) or (peep is not None and pd is None):
        return False
    xs = [int(d) for d in x.type.shape]
    seq, batch = (xs[1], xs[0]) if at["layout"] else (xs[0], xs[1])
    if lens is not None and lens.is_const and np.all(np.asarray(lens.data) == seq):
        lens = None  # every row runs the whole sequence
    cell, hs = str(at["cell"]), int(at["hidden_size"])
    dirs, g = wd.shape[0], GATES[cell]
    clip = at.get("clip")
    s = RnnSpec(
        cell,
        seq,
        batch,
        hs,
        dirs,
        str(at["direction"]),
        int(at["layout"]),
        None if clip is None else float(np.float32(clip)),
        bool(at.get("linear_before_reset", 0)),
        pd is not None,
        lw.host.lanes,
        batch_groups(batch, dirs, lw.threads),
        lens={"int32": "i32", "int64": "i64"}[lens.type.dtype] if lens is not None else None,
    )
    s = replace(s, members=team(s.units, hs, s.lanes, lw.threads))
    gh = g * hs
    bd = np.zeros((dirs, 2 * gh), np.float32) if bd is None else bd
    fold = bd[:, :gh] + bd[:, gh:]
    hb = None
    if cell == "gru" and s.lbr:  # R's h-gate bias stays inside r·(…)
        fold[:, 2 * hs :] = bd[:, 2 * hs : gh]
        hb = lw.const(f"{name}_hbias", bd[:, gh + 2 * hs :])
    wt = np.concatenate([wd[d].T for d in range(dirs)], axis=1)  # [input, dirs·g·hs]
    gx = Value(f"{name}_gx", TensorType((*xs[:-1], dirs * gh), "float32"))
    if not lw.gemm(node, f"{name}_x", x, wt, lw.const(f"{name}_b", fold.ravel()), None, "none", gx):
        return False
    rp = lw.const(f"{name}_r", pack_recurrent(rd, s))
    pv = None if pd is None else lw.const(f"{name}_p", pd)
    # outputs nobody reads are not written
    outs = (list(node.outputs) + [None] * 3)[:3]
    y, yh, yc = (
        o if o is not None and (id(o) in lw.outputs or lw.users.get(id(o))) else None for o in outs
    )
    scratch = Scratch(f"{name}_state", s.units * s.scratch_bytes())
    # a team's barrier: two i64 words (a line apart) that start at zero and that the kernel
    # leaves at zero; the model's own copy of this constant, written by no other kernel
    sync = lw.const(f"{name}_sync", np.zeros(32, np.float32)) if s.members > 1 else None

    def gen(loc: Callable[[Ref | None], Operand | None]) -> str:
        return rnn_kernel(
            name,
            s,
            *(loc(v) for v in (gx, rp, hb, pv, h0, c0, y, yh, yc, sync, scratch, lens)),  # type: ignore[arg-type]
            node_code(lw, node),
        )

    reads: list[Ref] = [v for v in (gx, rp, hb, pv, h0, c0, sync, lens) if v is not None]
    lw.steps.append(
        Step(
            name,
            [*reads, scratch],
            [v for v in (y, yh, yc) if v is not None],
            gen,
            parallel=s.units > 1 or s.members > 1,
            op=node.op,
            # a team needs its parts at once: one share a core (never more shares than cores)
            units=lw.threads if s.members > 1 else s.units,
        )
    )
    return True


def _rnn_dtypes(node: Node) -> bool:
    """fp32 operands but sequence_lens (input 4: int32, or int64)."""
    lens = node.inputs[4] if len(node.inputs) > 4 else None
    floats = [v for k, v in enumerate(node.inputs) if k != 4] + list(node.outputs)
    return (lens is None or lens.type.dtype in ("int32", "int64")) and all(
        v is None or v.type.dtype == "float32" for v in floats
    )


LOWERINGS["rnn"] = Lowering(lower_rnn, _rnn_dtypes)
