"""Recurrent layers (ONNX RNN, GRU, LSTM: the ``rnn`` op) as two kernels.

1. **Input projection**, every time step at once: ``G = X·Wᵀ + b`` is one GEMM of
   [seq·batch, input] by [input, dirs·gates·hidden] (W packed at compile time). The biases that
   the reference adds outside any product are folded into ``b``: W's and R's for RNN and LSTM;
   for GRU W's, R's of the z and r gates, and R's of the h gate unless ``linear_before_reset``
   puts it inside ``r·(…)``.
2. **The recurrence**, one direction a work unit (a bidirectional layer runs its two directions on
   two cores): per time step ``h·Rᵀ`` by a register-tile micro-kernel (attention's, with enough
   k-sets to hide the FMA latency when the batch is small), Rᵀ packed at compile time into
   column panels, then the gates, one vector of hidden units at a time, into the state, Y and at
   the end Y_h (and Y_c). A GRU without ``linear_before_reset`` needs ``(r·h)·Rhᵀ``: its step
   runs the z/r product, the z/r gates (``r·h`` into a buffer), then the h product and gates.

Semantics are the reference's (``engine/ops/rnn.py``): default activations, ``clip`` on the
pre-activations, LSTM peepholes, ``layout`` 0 and 1, initial states. A ``sequence_lens`` input
that is not a constant equal to the sequence length for every batch row leaves the node to
the reference, as do W and R known only at run time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from satura.engine.graph import Node, TensorType, Value
from satura.engine.ops.rnn import GATES
from satura.targets.attention import tile, tile_kernel, tiles_driver
from satura.targets.gemm import _ksets, pack_b_numpy
from satura.targets.irmath import Emitter
from satura.targets.kernel import FuncIR, Operand, body_header, share, wrapper
from satura.targets.lower import LOWERINGS, Lowerer, Lowering, Ref, Scratch, Step
from satura.targets.memory import align

ROWS_OUTER = True  # h·Rᵀ: each row tile over all panels (False: each panel over all row tiles)


def batch_groups(batch: int, dirs: int, threads: int) -> int:
    """Batch groups a direction is cut into: enough units for every core (rows are independent
    sequences; each unit streams all of R every step)."""
    return max(1, min(batch, -(-threads // dirs)))


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
    def blocks(self) -> list[tuple[int, int]]:
        """The products of a step as (first column, columns) of the dirs' ``g·hs`` gate columns:
        one, or z/r and h for a GRU without linear_before_reset."""
        gh = self.g * self.hs
        if self.cell == "gru" and not self.lbr:
            return [(0, 2 * self.hs), (2 * self.hs, self.hs)]
        return [(0, gh)]

    def padded(self, n: int) -> int:
        return -(-n // self.nr) * self.nr

    @property
    def ghp(self) -> int:
        """Floats a batch row of the step's products takes (each block padded to panels)."""
        return sum(self.padded(n) for _, n in self.blocks)

    def scratch_floats(self) -> list[int]:
        """Per unit: h, c, the step's products, r·h (GRU without linear_before_reset)."""
        bh = self.gb * self.hs
        rh = bh if self.cell == "gru" and not self.lbr else 0
        return [bh, bh if self.cell == "lstm" else 0, self.gb * self.ghp, rh]

    def scratch_bytes(self) -> int:
        return sum(align(4 * max(f, 1)) for f in self.scratch_floats())


def pack_recurrent(r: np.ndarray, s: RnnSpec) -> np.ndarray:
    """R [dirs, g·hs, hs] as Rᵀ column panels, per direction one packing per product block."""
    out = []
    for d in range(s.dirs):
        rt = np.asarray(r[d], np.float32).T  # [hs, g·hs]
        out += [pack_b_numpy(rt[:, c0 : c0 + n], s.nr) for c0, n in s.blocks]
    return np.concatenate(out)


def _gates(
    ir: FuncIR,
    em: Emitter,
    s: RnnSpec,
    ptrs: dict[str, str],
    j: str,
    phase: int,
) -> None:
    """The gate arithmetic for ``em.lanes`` hidden units from unit ``j`` of one batch row.

    ``ptrs``: row pointers ``gx`` (this step's input projection), ``gh`` (the products), ``h``,
    ``c`` (state), ``y``, ``hb`` (GRU's recurrent h bias), ``p`` (peepholes), ``rh``. ``phase``
    0 is the whole step, except for a GRU without linear_before_reset: 1 (z, r; r·h) then 2.
    """
    ty, hs = em.ty, s.hs

    def ld(name: str, off: int) -> str:
        return ir(f"load {ty}, ptr {ir.gep(ir.gep(ptrs[name], off), j)}, align 4")

    def st(name: str, off: int, x: str) -> None:
        ir.do(f"store {ty} {x}, ptr {ir.gep(ir.gep(ptrs[name], off), j)}, align 4")

    def clip(x: str) -> str:
        return x if s.clip is None else em.clamp(x, -s.clip, s.clip)

    def pre(k: int) -> str:
        """Gate k's pre-activation: input projection + product (the block holding column k·hs)."""
        col, off = k * hs, 0
        for c0, n in s.blocks:
            if c0 <= col < c0 + n:
                return em.add(ld("gx", col), ld("gh", off + col - c0))
            off += s.padded(n)
        raise AssertionError(k)

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
        rec = em.add(ld("gh", 2 * hs), ld("hb", 0))
        hh = em.tanh(clip(em.fma(r, rec, ld("gx", 2 * hs))))
        hn = em.fma(z, em.sub(h, hh), hh)  # (1 - z)·h~ + z·h
    elif phase == 1:  # GRU: z (kept where its product was) and r·h
        h = ld("h", 0)
        z, r = (em.sigmoid(clip(pre(k))) for k in (0, 1))
        st("gh", 0, z)
        st("rh", 0, em.mul(r, h))
        return
    else:  # GRU phase 2: h~ = tanh(gx_h + (r·h)·Rhᵀ), Rbh folded into gx
        h, z = ld("h", 0), ld("gh", 0)
        hh = em.tanh(clip(em.add(ld("gx", 2 * hs), ld("gh", s.padded(2 * hs)))))
        hn = em.fma(z, em.sub(h, hh), hh)
    st("h", 0, hn)
    st("y", 0, hn)


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
    scratch: Operand,
) -> str:
    """The recurrence: a unit is one direction over one group of batch rows. Operands in the
    order of ``wrapper``'s list."""
    lanes, hs, batch, seq, dirs = s.lanes, s.hs, s.batch, s.seq, s.dirs
    gw = dirs * s.g * hs  # a row of G
    mr, nv, nr = s.mr, s.nv, s.nr
    parts = []
    for bi in range(len(s.blocks)):
        kern = f"{name}_u{bi}_"
        ks = _ksets(mr, nv)
        parts += [
            tile_kernel(f"{kern}{m}", m, nr, lanes, hs, nr, s.ghp, "pv0", 1.0, False, ks)
            for m in range(1, mr + 1)
        ]
        parts.append(
            tiles_driver(f"{name}_mm{bi}", kern, mr, hs, s.ghp, 0, 0, hs * nr, nr, ROWS_OUTER)
        )
    ir = FuncIR(lanes)
    em, e1 = Emitter(ir.L, lanes), Emitter(ir.L, 1)
    share(ir.L, s.units, 1, "%u0", "%u1")
    offs, acc = [], 0
    for f in s.scratch_floats():
        offs.append(acc)
        acc += align(4 * max(f, 1))
    per_dir_r = sum(hs * s.padded(n) for _, n in s.blocks)
    vfull = hs // lanes * lanes

    def state_row(base: str, d: str, b: str | int) -> str:
        """Row (d, b) of a [dirs, batch, hs] state (layout 0) or [batch, dirs, hs] (layout 1)."""
        row = ir.add(ir.mul(d, batch), b) if not s.layout else ir.add(ir.mul(b, dirs), d)
        return ir.gep(base, ir.mul(row, hs))

    def copy(dst: str, src: str) -> None:
        ir.do(f"call void @llvm.memcpy.p0.p0.i64(ptr {dst}, ptr {src}, i64 {4 * hs}, i1 0)")

    with ir.loop("%u0", "%u1") as u:
        d = ir(f"udiv i64 {u}, {s.groups}")
        b0 = ir.mul(ir(f"urem i64 {u}, {s.groups}"), s.gb)
        nb = ir(f"call i64 @llvm.smin.i64(i64 {ir(f'sub i64 {batch}, {b0}')}, i64 {s.gb})")
        scr = ir(f"getelementptr i8, ptr %a9, i64 {ir.mul(u, acc)}")
        hbuf, cbuf, ghbuf, rhbuf = (ir(f"getelementptr i8, ptr {scr}, i64 {o}") for o in offs)
        rev = (
            ir(f"icmp eq i64 {d}, 1")
            if s.direction == "bidirectional"
            else ("true" if s.direction == "reverse" else "false")
        )
        for buf, init, keep in ((hbuf, "%a4", h0), (cbuf, "%a5", c0)):
            if buf is cbuf and s.cell != "lstm":
                continue
            with ir.loop(0, nb) as b:
                dst = ir.gep(buf, ir.mul(b, hs))
                if keep is not None:
                    copy(dst, state_row(init, d, ir.add(b0, b)))
                else:
                    ir.do(f"call void @llvm.memset.p0.i64(ptr {dst}, i8 0, i64 {4 * hs}, i1 0)")
        rpd = ir.gep("%a1", ir.mul(d, per_dir_r))
        with ir.loop(0, seq) as step:
            t = ir(f"select i1 {rev}, i64 {ir(f'sub i64 {seq - 1}, {step}')}, i64 {step}")
            phases = (1, 2) if len(s.blocks) == 2 else (0,)
            boff, roff = 0, 0
            for bi, phase in enumerate(phases):
                c0n = s.blocks[bi]
                a = hbuf if phase != 2 else rhbuf
                ir.do(
                    f"call void @{name}_mm{bi}(ptr {a}, ptr {ir.gep(rpd, roff)}, "
                    f"ptr {ir.gep(ghbuf, boff)}, i64 {hs}, ptr null, i64 0, i64 {nb}, "
                    f"i64 {s.padded(c0n[1]) // nr})"
                )
                boff += s.padded(c0n[1])
                roff += hs * s.padded(c0n[1])
                with ir.loop(0, nb) as b:
                    bg = ir.add(b0, b)  # the batch row
                    xrow = (
                        ir.add(ir.mul(t, batch), bg)
                        if s.layout == 0
                        else ir.add(ir.mul(bg, seq), t)
                    )
                    yrow = (
                        ir.add(ir.mul(ir.add(ir.mul(t, dirs), d), batch), bg)
                        if s.layout == 0
                        else ir.add(ir.mul(ir.add(ir.mul(bg, seq), t), dirs), d)
                    )
                    ptrs = {
                        "gx": ir.gep("%a0", ir.add(ir.mul(xrow, gw), ir.mul(d, s.g * hs))),
                        "gh": ir.gep(ghbuf, ir.mul(b, s.ghp)),
                        "h": ir.gep(hbuf, ir.mul(b, hs)),
                        "c": ir.gep(cbuf, ir.mul(b, hs)),
                        "rh": ir.gep(rhbuf, ir.mul(b, hs)),
                        "y": ir.gep("%a6", ir.mul(yrow, hs)) if y is not None else "",
                        "hb": ir.gep("%a2", ir.mul(d, hs)),
                        "p": ir.gep("%a3", ir.mul(d, 3 * hs)),
                    }
                    if y is None:  # Y unused: its stores go to the state row (written anyway)
                        ptrs["y"] = ptrs["h"]
                    if vfull:
                        with ir.loop(0, vfull, lanes) as j:
                            _gates(ir, em, s, ptrs, j, phase)
                    if vfull < hs:
                        with ir.loop(vfull, hs) as j:
                            _gates(ir, e1, s, ptrs, j, phase)
        for buf, out, keep in ((hbuf, "%a7", yh), (cbuf, "%a8", yc)):
            if keep is None:
                continue
            with ir.loop(0, nb) as b:
                copy(state_row(out, d, ir.add(b0, b)), ir.gep(buf, ir.mul(b, hs)))
    ir.do("ret void")
    body = ir.func(body_header(name, 10))
    ops = [gx, rp, hb, p, h0, c0, y, yh, yc, scratch]
    return "\n".join([wrapper(name, ops), body, *parts])


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
    if lens is not None:
        ld = _const_data(lens)
        if ld is None or not np.all(ld == seq):
            return False
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
    )
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

    def gen(loc: Callable[[Ref | None], Operand | None]) -> str:
        return rnn_kernel(
            name,
            s,
            *(loc(v) for v in (gx, rp, hb, pv, h0, c0, y, yh, yc, scratch)),  # type: ignore[arg-type]
        )

    reads: list[Ref] = [v for v in (gx, rp, hb, pv, h0, c0) if v is not None]
    lw.steps.append(
        Step(
            name,
            [*reads, scratch],
            [v for v in (y, yh, yc) if v is not None],
            gen,
            parallel=s.units > 1,
            op=node.op,
            units=s.units,
        )
    )
    return True


def _rnn_dtypes(node: Node) -> bool:
    """fp32 operands but sequence_lens (input 4, an integer)."""
    vals = [*node.inputs, *node.outputs]
    return all(v is None or v.type.dtype == "float32" for k, v in enumerate(vals) if k != 4)


LOWERINGS["rnn"] = Lowering(lower_rnn, _rnn_dtypes)
