"""GEMM kernels: packed B panels, cache tiling, a register-blocked FMA micro-kernel, fused epilogue.

``C[b] = act(A[b] @ B[b] + bias) + R[b]`` for row-major fp32 operands. B is packed into panels of
NR columns (``Bp[panel][k][NR]``, zero-padded): at compile time when B is a constant, else by a
``pack`` kernel. The driver walks K in blocks of KC and rows in blocks of MC; the micro-kernel
keeps an MR×NR tile of C in vector registers (MR·NR/L accumulators) and does MR·NR/L FMAs per k.
On the last K block the epilogue (bias, activation, residual) runs on the registers before the
store. Rows are split between parts (cores).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from satura.targets.irmath import Emitter, vec_type
from satura.targets.kernel import Loops, Operand, body_header, share, wrapper

KC = 256
MC = 96


@dataclass(frozen=True)
class GemmSpec:
    """Sizes and epilogue of one batched GEMM (B batches of M×K @ K×N)."""

    batch: int
    m: int
    n: int
    k: int
    a_batch_stride: int  # elements
    b_batched: bool      # packed B differs per batch
    has_bias: bool
    has_res: bool
    act: str
    mr: int
    nr: int
    lanes: int
    bias_rows: bool = False  # bias indexed by row (conv: per output channel), not by column

    @property
    def panels(self) -> int:
        return -(-self.n // self.nr)

    @property
    def packed_elems(self) -> int:
        """Floats in one batch's packed B."""
        return self.panels * self.k * self.nr


def pack_b_numpy(b: np.ndarray, nr: int) -> np.ndarray:
    """Pack a constant [K, N] (or [batch, K, N]) B into zero-padded NR-column panels."""
    b3 = b.reshape(-1, b.shape[-2], b.shape[-1]).astype(np.float32)
    nb, k, n = b3.shape
    panels = -(-n // nr)
    padded = np.zeros((nb, k, panels * nr), np.float32)
    padded[:, :, :n] = b3
    return np.ascontiguousarray(padded.reshape(nb, k, panels, nr).transpose(0, 2, 1, 3)).ravel()


def _splat(lines: list[str], vty: str, lanes: int, scalar: str, name: str) -> str:
    lines += [f"  {name}i = insertelement {vty} poison, float {scalar}, i64 0",
              f"  {name} = shufflevector {vty} {name}i, {vty} poison, "
              f"<{lanes} x i32> zeroinitializer"]
    return name


def _ukernel(name: str, s: GemmSpec, mr: int) -> str:
    """The MR×NR register-tile micro-kernel for ``mr`` rows."""
    L, nv, vty = s.lanes, s.nr // s.lanes, vec_type(s.lanes)
    acc = [[f"%c{i}_{v}" for v in range(nv)] for i in range(mr)]
    out = [f"define internal void @{name}_u{mr}(ptr noalias %a, ptr noalias %bp, i64 %kc, "
           f"ptr noalias %c, i64 %ldc, i1 %accum, i1 %last, ptr noalias %bias, "
           f"ptr noalias %res) noinline {{", "entry:", "  br label %k", "k:",
           "  %kk = phi i64 [0, %entry], [%kn, %k]"]
    for i in range(mr):
        for v in range(nv):
            out.append(f"  {acc[i][v]} = phi {vty} [zeroinitializer, %entry], [%n{i}_{v}, %k]")
    out += [f"  %bo = mul i64 %kk, {s.nr}", "  %bq = getelementptr float, ptr %bp, i64 %bo"]
    for v in range(nv):
        out += [f"  %bq{v} = getelementptr float, ptr %bq, i64 {v * L}",
                f"  %b{v} = load {vty}, ptr %bq{v}, align 4"]
    for i in range(mr):
        out += [f"  %ao{i} = add i64 %kk, {i * s.k}",
                f"  %ap{i} = getelementptr float, ptr %a, i64 %ao{i}",
                f"  %as{i} = load float, ptr %ap{i}, align 4"]
        _splat(out, vty, L, f"%as{i}", f"%av{i}")
        for v in range(nv):
            out.append(f"  %n{i}_{v} = call {vty} @llvm.fma.v{L}f32({vty} %av{i}, {vty} %b{v}, "
                       f"{vty} {acc[i][v]})")
    out += ["  %kn = add i64 %kk, 1", "  %kmore = icmp ult i64 %kn, %kc",
            "  br i1 %kmore, label %k, label %done", "done:"]
    for i in range(mr):
        for v in range(nv):
            out += [f"  %o{i}_{v} = mul i64 %ldc, {i}", f"  %q{i}_{v} = add i64 %o{i}_{v}, {v * L}",
                    f"  %cp{i}_{v} = getelementptr float, ptr %c, i64 %q{i}_{v}"]
    out += ["  br i1 %accum, label %addold, label %merge", "addold:"]
    for i in range(mr):
        for v in range(nv):
            out += [f"  %old{i}_{v} = load {vty}, ptr %cp{i}_{v}, align 4",
                    f"  %sum{i}_{v} = fadd {vty} %old{i}_{v}, %n{i}_{v}"]
    out += ["  br label %merge", "merge:"]
    for i in range(mr):
        for v in range(nv):
            out.append(f"  %m{i}_{v} = phi {vty} [%sum{i}_{v}, %addold], [%n{i}_{v}, %done]")
    out += ["  br i1 %last, label %epi, label %store", "epi:"]
    em = Emitter(out, L)
    final = [[f"%m{i}_{v}" for v in range(nv)] for i in range(mr)]
    for v in range(nv):
        if s.has_bias and not s.bias_rows:
            out += [f"  %bb{v} = getelementptr float, ptr %bias, i64 {v * L}",
                    f"  %bv{v} = load {vty}, ptr %bb{v}, align 4"]
    for i in range(mr):
        if s.has_bias and s.bias_rows:
            out += [f"  %br{i}p = getelementptr float, ptr %bias, i64 {i}",
                    f"  %br{i} = load float, ptr %br{i}p, align 4"]
            _splat(out, vty, L, f"%br{i}", f"%brv{i}")
        for v in range(nv):
            x = final[i][v]
            if s.has_bias:
                x = em.add(x, f"%brv{i}" if s.bias_rows else f"%bv{v}")
            x = em.unary(s.act, x) if s.act != "tanh" else em.tanh(x)
            if s.has_res:
                out += [f"  %rp{i}_{v} = getelementptr float, ptr %res, i64 %q{i}_{v}",
                        f"  %rv{i}_{v} = load {vty}, ptr %rp{i}_{v}, align 4"]
                x = em.add(x, f"%rv{i}_{v}")
            out.append(f"  %f{i}_{v} = fadd {vty} {x}, zeroinitializer")
    out += ["  br label %store", "store:"]
    for i in range(mr):
        for v in range(nv):
            out.append(f"  %z{i}_{v} = phi {vty} [%f{i}_{v}, %epi], [%m{i}_{v}, %merge]")
    for i in range(mr):
        for v in range(nv):
            out.append(f"  store {vty} %z{i}_{v}, ptr %cp{i}_{v}, align 4")
    out += ["  ret void", "}"]
    return "\n".join(out)


def gemm_kernel(name: str, s: GemmSpec, c: Operand, a: Operand, bp: Operand,
                bias: Operand | None, res: Operand | None) -> str:
    """LLVM IR of one batched GEMM with its fused epilogue (all parts' shares)."""
    parts = [_ukernel(name, s, mr) for mr in range(1, s.mr + 1)]
    L = [body_header(name, 5), "entry:"]
    loops = Loops(L)
    for v in ("bi", "pc", "ic", "jp", "ir", "ti", "tj"):
        L.append(f"  %{v}.a = alloca i64, align 8")
    L.append(f"  %tmp = alloca [{s.mr * s.nr} x float], align 64")
    share(L, s.m, s.mr, "%m0", "%m1")
    full, tail = s.n // s.nr, s.n % s.nr
    loops.open("bi", "0", str(s.batch), 1)
    L += [f"  %ab = mul i64 %bi, {s.a_batch_stride}",
          "  %abp = getelementptr float, ptr %a1, i64 %ab",
          f"  %bb = mul i64 %bi, {s.packed_elems if s.b_batched else 0}",
          "  %bbp = getelementptr float, ptr %a2, i64 %bb",
          f"  %cb = mul i64 %bi, {s.m * s.n}", "  %cbp = getelementptr float, ptr %a0, i64 %cb",
          "  %rbp = getelementptr float, ptr %a4, i64 %cb"]
    loops.open("pc", "0", str(s.k), KC)
    L += [f"  %kr = sub i64 {s.k}, %pc", f"  %kc = call i64 @llvm.smin.i64(i64 %kr, i64 {KC})",
          "  %accum = icmp sgt i64 %pc, 0", "  %kend = add i64 %pc, %kc",
          f"  %last = icmp eq i64 %kend, {s.k}"]
    loops.open("ic", "%m0", "%m1", MC)
    L += [f"  %ie0 = add i64 %ic, {MC}", "  %iend = call i64 @llvm.smin.i64(i64 %ie0, i64 %m1)"]
    loops.open("jp", "0", str(s.panels), 1)
    L += [f"  %j0 = mul i64 %jp, {s.nr}", f"  %bpo0 = mul i64 %jp, {s.k * s.nr}",
          f"  %bpo1 = mul i64 %pc, {s.nr}", "  %bpo = add i64 %bpo0, %bpo1",
          "  %bpt = getelementptr float, ptr %bbp, i64 %bpo",
          "  %biasp = getelementptr float, ptr %a3, i64 %j0",
          f"  %isfull = icmp slt i64 %jp, {full}"]
    loops.open("ir", "%ic", "%iend", s.mr)
    L += ["  %mrr = sub i64 %iend, %ir", f"  %mr = call i64 @llvm.smin.i64(i64 %mrr, i64 {s.mr})",
          f"  %ao0 = mul i64 %ir, {s.k}", "  %ao = add i64 %ao0, %pc",
          "  %at = getelementptr float, ptr %abp, i64 %ao",
          f"  %co0 = mul i64 %ir, {s.n}", "  %co = add i64 %co0, %j0",
          "  %ct = getelementptr float, ptr %cbp, i64 %co",
          "  %rt = getelementptr float, ptr %rbp, i64 %co",
          "  %biasr = getelementptr float, ptr %a3, i64 %ir",
          f"  %biast = select i1 {'true' if s.bias_rows else 'false'}, ptr %biasr, ptr %biasp",
          "  br i1 %isfull, label %fsw, label %tsw"]
    for kind in ("f", "t"):
        cases = " ".join(f"i64 {m}, label %{kind}m{m}" for m in range(1, s.mr + 1))
        L += [f"{kind}sw:", f"  switch i64 %mr, label %{kind}join [ {cases} ]"]
        for m in range(1, s.mr + 1):
            if kind == "f":
                args = ("ptr %at, ptr %bpt, i64 %kc, ptr %ct, i64 " + str(s.n)
                        + ", i1 %accum, i1 %last, ptr %biast, ptr %rt")
            else:
                args = (f"ptr %at, ptr %bpt, i64 %kc, ptr %tmp, i64 {s.nr}, i1 false, i1 false, "
                        "ptr null, ptr null")
            L += [f"{kind}m{m}:", f"  call void @{name}_u{m}({args})", f"  br label %{kind}join"]
        L.append(f"{kind}join:")
        if kind == "f":
            L.append("  br label %irnext")
        else:
            L += _tail_copy(s, tail)
            L.append("  br label %irnext")
    L.append("irnext:")
    loops.close("ir", s.mr)
    loops.close("jp", 1)
    loops.close("ic", MC)
    loops.close("pc", KC)
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
    L += [f"  %to0 = mul i64 %ti, {s.nr}", "  %to = add i64 %to0, %tj",
          "  %tp = getelementptr float, ptr %tmp, i64 %to", "  %tv = load float, ptr %tp",
          f"  %go0 = mul i64 %ti, {s.n}", "  %go = add i64 %go0, %tj",
          "  %gp = getelementptr float, ptr %ct, i64 %go",
          "  br i1 %accum, label %tacc, label %tnoacc", "tacc:",
          "  %gold = load float, ptr %gp", "  %gsum = fadd float %gold, %tv",
          "  br label %tnoacc", "tnoacc:",
          "  %gv = phi float [%gsum, %tacc], [%tv, %tj.b]",
          "  br i1 %last, label %tepi, label %tstore", "tepi:"]
    em = Emitter(L, 1)
    x = "%gv"
    if s.has_bias:
        L += [f"  %tbp = getelementptr float, ptr %biast, i64 {'%ti' if s.bias_rows else '%tj'}",
              "  %tbv = load float, ptr %tbp"]
        x = em.add(x, "%tbv")
    x = em.unary(s.act, x) if s.act != "tanh" else em.tanh(x)
    if s.has_res:
        L += ["  %trp = getelementptr float, ptr %rt, i64 %go", "  %trv = load float, ptr %trp"]
        x = em.add(x, "%trv")
    L += [f"  %tf = fadd float {x}, 0.0", "  br label %tstore", "tstore:",
          "  %tz = phi float [%tf, %tepi], [%gv, %tnoacc]", "  store float %tz, ptr %gp"]
    sub.close("tj", 1)
    sub.close("ti", 1)
    return L


def pack_kernel(name: str, batch: int, k: int, n: int, nr: int, src: Operand,
                dst: Operand, transposed: bool = False) -> str:
    """LLVM IR that packs a runtime B ([batch, K, N]) into zero-padded NR-column panels.

    ``transposed``: the source holds Bᵀ ([batch, N, K]), as keys do in attention.
    """
    panels = -(-n // nr)
    L = [body_header(name, 2), "entry:"]
    loops = Loops(L)
    for v in ("pp", "pk", "pj"):
        L.append(f"  %{v}.a = alloca i64, align 8")
    share(L, batch * panels, 1, "%q0", "%q1")
    loops.open("pp", "%q0", "%q1", 1)
    L += [f"  %bi = sdiv i64 %pp, {panels}", f"  %jp = srem i64 %pp, {panels}",
          f"  %sb = mul i64 %bi, {k * n}", f"  %j0 = mul i64 %jp, {nr}",
          f"  %db = mul i64 %pp, {k * nr}"]
    if not transposed:
        # Full panels: each k-row of the panel is one contiguous <NR x float> copy.
        vty = vec_type(nr)
        L += [f"  %full = icmp slt i64 %jp, {n // nr}", "  br i1 %full, label %fk.pre, label %tail",
              "fk.pre:", "  br label %fk", "fk:", "  %fkk = phi i64 [0, %fk.pre], [%fkn, %fk]",
              f"  %fs0 = mul i64 %fkk, {n}", "  %fs1 = add i64 %sb, %fs0",
              "  %fs = add i64 %fs1, %j0", "  %fsp = getelementptr float, ptr %a1, i64 %fs",
              f"  %fv = load {vty}, ptr %fsp, align 4", f"  %fd0 = mul i64 %fkk, {nr}",
              "  %fd = add i64 %db, %fd0", "  %fdp = getelementptr float, ptr %a0, i64 %fd",
              f"  store {vty} %fv, ptr %fdp, align 4", "  %fkn = add i64 %fkk, 1",
              f"  %fkm = icmp slt i64 %fkn, {k}", "  br i1 %fkm, label %fk, label %pp.next",
              "tail:"]
    loops.open("pk", "0", str(k), 1)
    loops.open("pj", "0", str(nr), 1)
    L += ["  %col = add i64 %j0, %pj", f"  %inb = icmp slt i64 %col, {n}",
          f"  %colc = call i64 @llvm.smin.i64(i64 %col, i64 {n - 1})",
          *([f"  %so0 = mul i64 %colc, {k}", "  %so1 = add i64 %sb, %so0",
             "  %so = add i64 %so1, %pk"] if transposed else
            [f"  %so0 = mul i64 %pk, {n}", "  %so1 = add i64 %sb, %so0",
             "  %so = add i64 %so1, %colc"]),
          "  %sp = getelementptr float, ptr %a1, i64 %so", "  %sv = load float, ptr %sp",
          "  %v = select i1 %inb, float %sv, float 0.0",
          f"  %do0 = mul i64 %pk, {nr}", "  %do1 = add i64 %db, %do0", "  %do = add i64 %do1, %pj",
          "  %dp = getelementptr float, ptr %a0, i64 %do", "  store float %v, ptr %dp"]
    loops.close("pj", 1)
    loops.close("pk", 1)
    L += ["  br label %pp.next", "pp.next:"]
    loops.close("pp", 1)
    L += ["  ret void", "}"]
    return wrapper(name, [dst, src]) + "\n" + "\n".join(L)
