"""What every generated kernel shares: operands addressed through the model's pointer table.

A kernel is exported as ``void NAME(ptr table, i64 part, i64 nparts)``: operand ``k`` lives at
``table[slot] + offset`` (the arena, a graph input or output, or a constant), and the kernel does
the ``part``-th of ``nparts`` equal shares of its work, so the runtime can run shares on several
cores. The body is an internal function whose pointer parameters are ``noalias``.

Every buffer a kernel writes (the arena, the model's outputs) starts at a ``BASE_ALIGN``-aligned
table address (the runtime allocates them so); graph inputs and constants carry no such promise.
"""

from __future__ import annotations

from dataclasses import dataclass

BASE_ALIGN = 64  # bytes; the alignment of every written buffer's table entry


@dataclass(frozen=True)
class Operand:
    """A buffer: ``table[slot] + offset`` bytes."""

    slot: int
    offset: int = 0


def wrapper(name: str, operands: list[Operand | None]) -> str:
    """The exported entry that loads operand pointers from the table and calls ``NAME_body``.

    An absent operand (None) is passed as a null pointer.
    """
    lines = [f"define void @{name}(ptr %t, i64 %part, i64 %nparts) {{", "entry:"]
    args = []
    for k, op in enumerate(operands):
        if op is None:
            args.append("ptr null")
            continue
        lines += [f"  %s{k}p = getelementptr ptr, ptr %t, i64 {op.slot}",
                  f"  %s{k} = load ptr, ptr %s{k}p, align 8",
                  f"  %p{k} = getelementptr i8, ptr %s{k}, i64 {op.offset}"]
        args.append(f"ptr %p{k}")
    args += ["i64 %part", "i64 %nparts"]
    lines += [f"  call void @{name}_body({', '.join(args)})", "  ret void", "}"]
    return "\n".join(lines)


def body_header(name: str, nptrs: int) -> str:
    params = ", ".join(f"ptr noalias %a{k}" for k in range(nptrs))
    return f"define internal void @{name}_body({params}, i64 %part, i64 %nparts) {{"


def share(lines: list[str], total: int, grain: int, lo: str, hi: str) -> None:
    """Emit ``lo``/``hi``: the ``part``-th share of ``range(total)``, cut at multiples of grain."""
    units = -(-total // grain)
    lines += [f"  {lo}u0 = mul i64 %part, {units}", f"  {lo}u = udiv i64 {lo}u0, %nparts",
              f"  {hi}u0 = add i64 %part, 1", f"  {hi}u1 = mul i64 {hi}u0, {units}",
              f"  {hi}u = udiv i64 {hi}u1, %nparts",
              f"  {lo}g = mul i64 {lo}u, {grain}", f"  {hi}g = mul i64 {hi}u, {grain}",
              f"  {lo} = call i64 @llvm.umin.i64(i64 {lo}g, i64 {total})",
              f"  {hi} = call i64 @llvm.umin.i64(i64 {hi}g, i64 {total})"]


class Loops:
    """Structured loops over i64 allocas (promoted to registers by SROA)."""

    def __init__(self, lines: list[str]) -> None:
        self.L, self.n = lines, 0

    def open(self, var: str, start: str, end: str, step: int) -> str:
        self.L += [f"  store i64 {start}, ptr %{var}.a", f"  br label %{var}.h", f"{var}.h:",
                   f"  %{var} = load i64, ptr %{var}.a",
                   f"  %{var}.c = icmp slt i64 %{var}, {end}",
                   f"  br i1 %{var}.c, label %{var}.b, label %{var}.x", f"{var}.b:"]
        return f"%{var}"

    def close(self, var: str, step: int) -> None:
        self.L += [f"  %{var}.n = add i64 %{var}, {step}", f"  store i64 %{var}.n, ptr %{var}.a",
                   f"  br label %{var}.h", f"{var}.x:"]


PRELUDE = """declare i64 @llvm.umin.i64(i64, i64)
declare i64 @llvm.smin.i64(i64, i64)
declare float @llvm.vector.reduce.fadd.v8f32(float, <8 x float>)
declare float @llvm.vector.reduce.fadd.v16f32(float, <16 x float>)
declare float @llvm.vector.reduce.fadd.v32f32(float, <32 x float>)
declare float @llvm.vector.reduce.fadd.v64f32(float, <64 x float>)
declare float @llvm.vector.reduce.fmax.v8f32(<8 x float>)
"""


# Native fork-join: run kernel(table, p, n) for p in 1..n-1 on new pthreads, part 0 on the caller.
PARALLEL_RUNNER = """
declare i32 @pthread_create(ptr, ptr, ptr, ptr)
declare i32 @pthread_join(i64, ptr)

define internal ptr @sat_trampoline(ptr %job) {
entry:
  %fn = load ptr, ptr %job, align 8
  %tp = getelementptr i8, ptr %job, i64 8
  %t = load ptr, ptr %tp, align 8
  %pp = getelementptr i8, ptr %job, i64 16
  %p = load i64, ptr %pp, align 8
  %np = getelementptr i8, ptr %job, i64 24
  %n = load i64, ptr %np, align 8
  call void %fn(ptr %t, i64 %p, i64 %n)
  ret ptr null
}

define void @sat_parallel(ptr %fn, ptr %t, i64 %n) {
entry:
  %jobs = alloca [64 x [4 x i64]], align 8
  %tids = alloca [64 x i64], align 8
  %i.a = alloca i64, align 8
  %n1 = call i64 @llvm.umin.i64(i64 %n, i64 64)
  store i64 1, ptr %i.a
  br label %spawn
spawn:
  %i = load i64, ptr %i.a
  %more = icmp ult i64 %i, %n1
  br i1 %more, label %spawn.b, label %self
spawn.b:
  %job = getelementptr [4 x i64], ptr %jobs, i64 %i
  store ptr %fn, ptr %job, align 8
  %jt = getelementptr i8, ptr %job, i64 8
  store ptr %t, ptr %jt, align 8
  %jp = getelementptr i8, ptr %job, i64 16
  store i64 %i, ptr %jp, align 8
  %jn = getelementptr i8, ptr %job, i64 24
  store i64 %n1, ptr %jn, align 8
  %tid = getelementptr i64, ptr %tids, i64 %i
  %rc = call i32 @pthread_create(ptr %tid, ptr null, ptr @sat_trampoline, ptr %job)
  %i2 = add i64 %i, 1
  store i64 %i2, ptr %i.a
  br label %spawn
self:
  call void %fn(ptr %t, i64 0, i64 %n1)
  store i64 1, ptr %i.a
  br label %join
join:
  %k = load i64, ptr %i.a
  %kmore = icmp ult i64 %k, %n1
  br i1 %kmore, label %join.b, label %done
join.b:
  %kt = getelementptr i64, ptr %tids, i64 %k
  %tv = load i64, ptr %kt, align 8
  %jr = call i32 @pthread_join(i64 %tv, ptr null)
  %k2 = add i64 %k, 1
  store i64 %k2, ptr %i.a
  br label %join
done:
  ret void
}
"""
