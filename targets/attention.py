"""Attention, one (batch, head) at a time: softmax(q·kᵀ·scale)·v with the scores kept in cache.

Each part (core) takes a share of the batch·heads and, per head, packs kᵀ, runs the q·kᵀ GEMM into
its own scores buffer, a scaled softmax over each row, packs v and runs the scores·v GEMM into the
output. One head's scores (S×S floats) stay in L2, so nothing of size heads·S² goes to memory. The
pieces are the GEMM, pack and row kernels of this package, called as internal functions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from satura.engine.graph import Node
from satura.targets.codegen import HostTarget
from satura.targets.gemm import GemmSpec, gemm_kernel, pack_kernel
from satura.targets.kernel import Operand, body_header, share, wrapper
from satura.targets.lower import (
    CHUNKS_PER_THREAD,
    PARALLEL_FLOPS,
    Lowerer,
    Ref,
    Scratch,
    Step,
    numel,
)
from satura.targets.memory import align
from satura.targets.rows import row_kernel


@dataclass(frozen=True)
class AttentionSpec:
    heads: int   # batch · heads
    sq: int
    sk: int
    d: int
    dv: int
    scale: float

    def scratch_floats(self, nr: int) -> list[int]:
        """Per-part buffers: packed kᵀ, scores, probabilities, packed v (floats each)."""
        pk = -(-self.sk // nr) * self.d * nr
        pv = -(-self.dv // nr) * self.sk * nr
        return [pk, self.sq * self.sk, self.sq * self.sk, pv]

    def scratch_bytes_per_part(self, nr: int) -> int:
        return sum(align(4 * f) for f in self.scratch_floats(nr))


def attention_kernel(name: str, s: AttentionSpec, host: HostTarget, out: Operand, q: Operand,
                     k: Operand, v: Operand, scratch: Operand) -> str:
    """LLVM IR of the attention kernel; ``scratch`` holds ``threads`` per-part buffers."""
    mr, nr = host.gemm_tile
    dummy = Operand(0)
    s1 = GemmSpec(1, s.sq, s.sk, s.d, 0, False, False, False, "none", mr, nr, host.lanes)
    s2 = GemmSpec(1, s.sq, s.dv, s.sk, 0, False, False, False, "none", mr, nr, host.lanes)
    parts = [pack_kernel(f"{name}_pk", 1, s.d, s.sk, nr, dummy, dummy, transposed=True),
             gemm_kernel(f"{name}_qk", s1, dummy, dummy, dummy, None, None),
             row_kernel(f"{name}_sm", "softmax", s.sq, s.sk, dummy, dummy, lanes=host.lanes,
                        logit_scale=s.scale),
             pack_kernel(f"{name}_pv", 1, s.sk, s.dv, nr, dummy, dummy),
             gemm_kernel(f"{name}_pvm", s2, dummy, dummy, dummy, None, None)]
    offs, acc = [], 0
    for f in s.scratch_floats(nr):
        offs.append(acc)
        acc += align(4 * f)
    L = [body_header(name, 5), "entry:", "  %h.a = alloca i64, align 8"]
    share(L, s.heads, 1, "%h0", "%h1")
    L += [f"  %sb = mul i64 %part, {acc}", "  %scr = getelementptr i8, ptr %a4, i64 %sb"]
    for i, o in enumerate(offs):
        L.append(f"  %w{i} = getelementptr i8, ptr %scr, i64 {o}")
    L += ["  store i64 %h0, ptr %h.a", "  br label %hh", "hh:", "  %h = load i64, ptr %h.a",
          "  %hc = icmp slt i64 %h, %h1", "  br i1 %hc, label %hb, label %hx", "hb:"]
    for tag, rows, cols in (("q", s.sq, s.d), ("k", s.sk, s.d), ("v", s.sk, s.dv),
                            ("o", s.sq, s.dv)):
        idx = {"o": 0, "q": 1, "k": 2, "v": 3}[tag]
        L += [f"  %{tag}o = mul i64 %h, {rows * cols}",
              f"  %{tag}p = getelementptr float, ptr %a{idx}, i64 %{tag}o"]
    z = "i64 0, i64 1"
    L += [f"  call void @{name}_pk_body(ptr %w0, ptr %kp, {z})",
          f"  call void @{name}_qk_body(ptr %w1, ptr %qp, ptr %w0, ptr null, ptr null, {z})",
          f"  call void @{name}_sm_body(ptr %w2, ptr %w1, ptr null, ptr null, {z})",
          f"  call void @{name}_pv_body(ptr %w3, ptr %vp, {z})",
          f"  call void @{name}_pvm_body(ptr %op, ptr %w2, ptr %w3, ptr null, ptr null, {z})",
          "  %hn = add i64 %h, 1", "  store i64 %hn, ptr %h.a", "  br label %hh", "hx:",
          "  ret void", "}"]
    return "\n".join([wrapper(name, [out, q, k, v, scratch]), "\n".join(L), *parts])


def lower_attention(lw: Lowerer, node: Node, name: str) -> bool:
    q, k, v = node.inputs[:3]
    mask = node.inputs[3] if len(node.inputs) > 3 else None
    out = node.outputs[0]
    assert q is not None
    assert k is not None
    assert v is not None
    scale = float(node.attrs["scale"])
    if mask is not None or node.attrs.get("causal", 0) or scale <= 0:
        return False
    qs, ks, vs = ([int(d) for d in t.type.shape] for t in (q, k, v))
    if len(qs) < 3 or qs[:-2] != ks[:-2] or ks[:-1] != vs[:-1] or qs[-1] != ks[-1]:
        return False
    spec = AttentionSpec(numel(tuple(qs[:-2])), qs[-2], ks[-2], qs[-1], vs[-1], scale)
    scratch = Scratch(f"{name}_scratch",
                      lw.threads * CHUNKS_PER_THREAD
                      * spec.scratch_bytes_per_part(lw.host.gemm_tile[1]))

    def gen(loc: Callable[[Ref | None], Operand | None]) -> str:
        return attention_kernel(name, spec, lw.host, loc(out), loc(q), loc(k),  # type: ignore
                                loc(v), loc(scratch))  # type: ignore[arg-type]

    flops = 2.0 * spec.heads * spec.sq * spec.sk * (spec.d + spec.dv)
    lw.steps.append(Step(name, [q, k, v, scratch], [out], gen,
                           parallel=flops > PARALLEL_FLOPS and spec.heads > 1, op=node.op))
    return True
