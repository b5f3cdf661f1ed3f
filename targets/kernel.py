"""What every generated kernel shares: operands addressed through the model's pointer table.

A kernel is exported as ``void NAME(ptr table, i64 part, i64 nparts)``: operand ``k`` lives at
``table[slot] + offset`` (the arena, a graph input or output, or a constant; ``table[ERROR_SLOT]``
is the model's error record, see ``report_error``), and the kernel does the ``part``-th of
``nparts`` equal shares of its work, so the runtime can run shares on several cores. The body
is an internal function whose pointer parameters are ``noalias``.

Every buffer a kernel writes (the arena, the model's outputs) starts at a ``BASE_ALIGN``-aligned
table address (the runtime allocates them so); graph inputs and constants carry no such promise.
``PARALLEL_RUNNER`` is the IR of the persistent thread pool that every model's module carries.

Kernels and the pool are target-neutral IR: what differs per ISA (the fence after streaming
stores, the spin-loop hint, the system call numbers) is reached through four small functions,
``@sat_store_fence``, ``@sat_spin_hint``, ``@sat_futex`` and ``@sat_yield``, whose definitions for
one target ``target_support(arch)`` gives (the runtime appends them to every module).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from satura.targets.irmath import vec_type

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
        lines += [
            f"  %s{k}p = getelementptr ptr, ptr %t, i64 {op.slot}",
            f"  %s{k} = load ptr, ptr %s{k}p, align 8",
            f"  %p{k} = getelementptr i8, ptr %s{k}, i64 {op.offset}",
        ]
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
    lines += [
        f"  {lo}u0 = mul i64 %part, {units}",
        f"  {lo}u = udiv i64 {lo}u0, %nparts",
        f"  {hi}u0 = add i64 %part, 1",
        f"  {hi}u1 = mul i64 {hi}u0, {units}",
        f"  {hi}u = udiv i64 {hi}u1, %nparts",
        f"  {lo}g = mul i64 {lo}u, {grain}",
        f"  {hi}g = mul i64 {hi}u, {grain}",
        f"  {lo} = call i64 @llvm.umin.i64(i64 {lo}g, i64 {total})",
        f"  {hi} = call i64 @llvm.umin.i64(i64 {hi}g, i64 {total})",
    ]


class Loops:
    """Structured loops over i64 allocas (promoted to registers by SROA)."""

    def __init__(self, lines: list[str]) -> None:
        self.L, self.n = lines, 0

    def open(self, var: str, start: str, end: str, step: int) -> str:
        self.L += [
            f"  store i64 {start}, ptr %{var}.a",
            f"  br label %{var}.h",
            f"{var}.h:",
            f"  %{var} = load i64, ptr %{var}.a",
            f"  %{var}.c = icmp slt i64 %{var}, {end}",
            f"  br i1 %{var}.c, label %{var}.b, label %{var}.x",
            f"{var}.b:",
        ]
        return f"%{var}"

    def close(self, var: str, step: int) -> None:
        self.L += [
            f"  %{var}.n = add i64 %{var}, {step}",
            f"  store i64 %{var}.n, ptr %{var}.a",
            f"  br label %{var}.h",
            f"{var}.x:",
        ]


@dataclass(frozen=True)
class ArchIR:
    """How one ISA spells what the generated code needs and LLVM IR has no neutral form for."""

    declares: str  # the intrinsics the lines below call
    store_fence: str  # orders streaming (non-temporal) stores before a share reports done
    spin_hint: str  # one spin-wait iteration's hint to the core
    futex_nr: int  # Linux system call number of futex(2)
    yield_nr: int  # and of sched_yield(2)


ARCH_IR = {
    # ``fence release`` is no instruction on x86 (TSO), but movnt stores are weakly ordered:
    # they need sfence.
    "x86_64": ArchIR(
        "declare void @llvm.x86.sse.sfence()\ndeclare void @llvm.x86.sse2.pause()",
        "call void @llvm.x86.sse.sfence()",
        "call void @llvm.x86.sse2.pause()",
        202,
        24,
    ),
    # AArch64: a release fence is ``dmb ish``, which orders STNP like any store; hint #1 is
    # ``yield``.
    "aarch64": ArchIR(
        "declare void @llvm.aarch64.hint(i32)",
        "fence release",
        "call void @llvm.aarch64.hint(i32 1)",
        98,
        124,
    ),
}


def target_support(arch: str) -> str:
    """The IR of ``@sat_store_fence``, ``@sat_spin_hint``, ``@sat_futex`` and ``@sat_yield``
    (sched_yield(2)) for ``arch``.

    ``@sat_futex(ptr word, i64 op, i64 val)`` is futex(2) with a null timeout. Raises KeyError
    for an ISA without an entry in ``ARCH_IR``.
    """
    a = ARCH_IR[arch]
    return f"""{a.declares}
declare i64 @syscall(i64, ...)

define internal void @sat_store_fence() alwaysinline {{
  {a.store_fence}
  ret void
}}

define internal void @sat_spin_hint() alwaysinline {{
  {a.spin_hint}
  ret void
}}

define internal i64 @sat_futex(ptr %w, i64 %op, i64 %v) {{
  %r = call i64 (i64, ...) @syscall(i64 {a.futex_nr}, ptr %w, i64 %op, i64 %v, ptr null)
  ret i64 %r
}}

define internal void @sat_yield() {{
  %r = call i64 (i64, ...) @syscall(i64 {a.yield_nr})
  ret void
}}
"""


# The model's error record: ``table[ERROR_SLOT]`` points at ERROR_WORDS zeroed i64 words that a
# kernel fills (``report_error``) where a runtime value would make it read out of bounds (a gather
# index), instead of reading:
#   0: lock (1: held)   1: code, the graph node's index + 1 (0: no error)   2: the bad element's
#   flat position in the checked input   3: its value   4, 5: the valid range [lo, hi]
#   6: which input of the node was checked
# The first node in run order keeps the record; within one node the smallest position wins, so
# it does not depend on how the node's shares were split between threads. The runtime reads word 1
# after each call (one load and compare), raises, and clears the record.
ERROR_SLOT = 1
ERROR_WORDS = 8


def report_error(
    lines: list[str],
    label: str,
    record: str,
    code: int,
    pos: str,
    value: str,
    lo: int,
    hi: int,
    input_no: int,
) -> None:
    """Emit block ``label``: write (``code``, ``pos``, ``value``, [lo, hi], ``input_no``) into the
    error record at ``record`` under its lock unless an earlier report wins, then return from
    the kernel. ``pos`` and ``value`` are i64 SSA names (or constants) visible in the block."""
    t = label
    lines += [
        f"{t}:",
        f"  br label %{t}.lock",
        f"{t}.lock:",
        f"  %{t}.cx = cmpxchg ptr {record}, i64 0, i64 1 acquire monotonic, align 8",
        f"  %{t}.got = extractvalue {{ i64, i1 }} %{t}.cx, 1",
        f"  br i1 %{t}.got, label %{t}.held, label %{t}.spin",
        f"{t}.spin:",
        "  call void @sat_spin_hint()",
        f"  br label %{t}.lock",
        f"{t}.held:",
        f"  %{t}.cp = getelementptr i64, ptr {record}, i64 1",
        f"  %{t}.c = load i64, ptr %{t}.cp, align 8",
        f"  %{t}.pp = getelementptr i64, ptr {record}, i64 2",
        f"  %{t}.p = load i64, ptr %{t}.pp, align 8",
        f"  %{t}.empty = icmp eq i64 %{t}.c, 0",
        f"  %{t}.same = icmp eq i64 %{t}.c, {code}",
        f"  %{t}.less = icmp ult i64 {pos}, %{t}.p",
        f"  %{t}.first = and i1 %{t}.same, %{t}.less",
        f"  %{t}.take = or i1 %{t}.empty, %{t}.first",
        f"  br i1 %{t}.take, label %{t}.write, label %{t}.done",
        f"{t}.write:",
    ]
    for k, v in enumerate((code, pos, value, lo, hi, input_no)):
        lines += [
            f"  %{t}.w{k} = getelementptr i64, ptr {record}, i64 {k + 1}",
            f"  store i64 {v}, ptr %{t}.w{k}, align 8",
        ]
    lines += [
        f"  br label %{t}.done",
        f"{t}.done:",
        f"  store atomic i64 0, ptr {record} release, align 8",
        "  ret void",
    ]


PRELUDE = """declare i64 @llvm.umin.i64(i64, i64)
declare void @llvm.memcpy.p0.p0.i64(ptr, ptr, i64, i1)
declare void @llvm.memset.p0.i64(ptr, i8, i64, i1)
declare i64 @llvm.smin.i64(i64, i64)
declare float @llvm.vector.reduce.fadd.v8f32(float, <8 x float>)
declare float @llvm.vector.reduce.fadd.v16f32(float, <16 x float>)
declare float @llvm.vector.reduce.fadd.v32f32(float, <32 x float>)
declare float @llvm.vector.reduce.fadd.v64f32(float, <64 x float>)
declare float @llvm.vector.reduce.fmax.v8f32(<8 x float>)
"""


# A persistent native thread pool, one per model (``runtime.NativePool``). The state block ``%s``
# (zeroed, 64-byte aligned) keeps each shared word on its own cache line:
#   0: claim word = gen << 32 | nshares << 16 | next share   64: gen (i32, the futex word)
#  68: quit flag (i32)   128: active workers (i32, a futex word)   132: caller sleeps (i32)
# 192: sleeping workers   256: kernel   264: table
#  320 + 8k: worker k's pthread id (k < 64)
# A run publishes the kernel and table, then the claim word, then bumps gen (waking sleepers).
# Every thread, the caller included, claims shares by compare-and-swap on the claim word, which
# fails for a stale generation, so a late worker never runs a share twice or one of another run.
# The caller returns once it has no share left to claim and no worker is active (it spins a while,
# then sleeps on the active count, which the last worker to finish wakes: a caller that spun or
# yielded would take the core from a worker it shares a core with); the kernel and table are
# rewritten only then. Workers spin POOL_SPIN pauses for the next run, then sleep on
# the futex (a core shared with other processes is not burned while the model is idle). A worker
# starts having seen generation 0 (the pool's state before its first run), so however late the
# thread first runs, it sees every later run and the quit flag.
# 4096 pauses are ~100 µs on this Zen 3 (24 ns a pause): long enough that a worker is still
# spinning when the next kernel or the next model call comes. A worker woken from the futex
# instead is often placed on the caller's core (the scheduler's wake-affine choice), and the
# two then take turns on one core: measured here, LayerNorm+GELU [1024, 768] on 2 threads ran
# 250 µs with 4096 and 250-490 µs with 256 (a 6 µs spin), depending on how long the model idled.
POOL_SPIN = 4096
PARALLEL_RUNNER = """
declare i32 @pthread_create(ptr, ptr, ptr, ptr)
declare i32 @pthread_join(i64, ptr)

define internal void @sat_pool_claim(ptr %s, i64 %gen) {
entry:
  br label %loop
loop:
  %v = load atomic i64, ptr %s acquire, align 8
  %vg = lshr i64 %v, 32
  %same = icmp eq i64 %vg, %gen
  br i1 %same, label %check, label %out
check:
  %idx = and i64 %v, 65535
  %n0 = lshr i64 %v, 16
  %n = and i64 %n0, 65535
  %left = icmp ult i64 %idx, %n
  br i1 %left, label %take, label %out
take:
  %v1 = add i64 %v, 1
  %cx = cmpxchg ptr %s, i64 %v, i64 %v1 acq_rel acquire, align 8
  %ok = extractvalue { i64, i1 } %cx, 1
  br i1 %ok, label %run, label %loop
run:
  %fp = getelementptr i8, ptr %s, i64 256
  %fn = load ptr, ptr %fp, align 8
  %tp = getelementptr i8, ptr %s, i64 264
  %t = load ptr, ptr %tp, align 8
  call void %fn(ptr %t, i64 %idx, i64 %n)
  br label %loop
out:
  ret void
}

define internal ptr @sat_pool_worker(ptr %s) {
entry:
  %gp = getelementptr i8, ptr %s, i64 64
  %qp = getelementptr i8, ptr %s, i64 68
  %ap = getelementptr i8, ptr %s, i64 128
  %mp = getelementptr i8, ptr %s, i64 132
  %sp = getelementptr i8, ptr %s, i64 192
  br label %wait
wait:
  %seen = phi i32 [0, %entry], [%seen, %nap], [%g, %work], [%g, %last.b], [%g, %wakemain]
  br label %spin
spin:
  %k = phi i32 [0, %wait], [%k1, %pause]
  %g = load atomic i32, ptr %gp acquire, align 4
  %new = icmp ne i32 %g, %seen
  br i1 %new, label %woke, label %pause
pause:
  call void @sat_spin_hint()
  %k1 = add i32 %k, 1
  %long = icmp ugt i32 %k1, POOL_SPIN
  br i1 %long, label %sleep, label %spin
sleep:
  %sq = load atomic i32, ptr %qp acquire, align 4
  %squit = icmp ne i32 %sq, 0
  br i1 %squit, label %exit, label %nap
nap:
  %sl = atomicrmw add ptr %sp, i64 1 seq_cst, align 8
  %seen64 = zext i32 %seen to i64
  %fr = call i64 @sat_futex(ptr %gp, i64 128, i64 %seen64)
  %sl2 = atomicrmw sub ptr %sp, i64 1 seq_cst, align 8
  br label %wait
woke:
  %q = load atomic i32, ptr %qp acquire, align 4
  %quit = icmp ne i32 %q, 0
  br i1 %quit, label %exit, label %work
work:
  %a1 = atomicrmw add ptr %ap, i32 1 seq_cst, align 4
  %g64 = zext i32 %g to i64
  call void @sat_pool_claim(ptr %s, i64 %g64)
  %a2 = atomicrmw sub ptr %ap, i32 1 seq_cst, align 4
  %last = icmp eq i32 %a2, 1
  br i1 %last, label %last.b, label %wait
last.b:
  %mw = load atomic i32, ptr %mp seq_cst, align 4
  %msleeps = icmp ne i32 %mw, 0
  br i1 %msleeps, label %wakemain, label %wait
wakemain:
  %fw = call i64 @sat_futex(ptr %ap, i64 129, i64 1)
  br label %wait
exit:
  ret ptr null
}

define i64 @sat_pool_start(ptr %s, i64 %n) {
entry:
  br label %loop
loop:
  %i = phi i64 [0, %entry], [%i1, %next]
  %more = icmp ult i64 %i, %n
  br i1 %more, label %body, label %done
body:
  %off = mul i64 %i, 8
  %off2 = add i64 %off, 320
  %tid = getelementptr i8, ptr %s, i64 %off2
  %rc = call i32 @pthread_create(ptr %tid, ptr null, ptr @sat_pool_worker, ptr %s)
  %bad = icmp ne i32 %rc, 0
  br i1 %bad, label %done, label %next
next:
  %i1 = add i64 %i, 1
  br label %loop
done:
  ret i64 %i
}

define void @sat_pool_run(ptr %s, ptr %fn, ptr %t, i64 %n) {
entry:
  %gp = getelementptr i8, ptr %s, i64 64
  %ap = getelementptr i8, ptr %s, i64 128
  %sp = getelementptr i8, ptr %s, i64 192
  %fp = getelementptr i8, ptr %s, i64 256
  store ptr %fn, ptr %fp, align 8
  %tp = getelementptr i8, ptr %s, i64 264
  store ptr %t, ptr %tp, align 8
  %g = load atomic i32, ptr %gp monotonic, align 4
  %g1 = add i32 %g, 1
  %g64 = zext i32 %g1 to i64
  %hi = shl i64 %g64, 32
  %nn = shl i64 %n, 16
  %w = or i64 %hi, %nn
  store atomic i64 %w, ptr %s release, align 8
  store atomic i32 %g1, ptr %gp seq_cst, align 4
  %sl = load atomic i64, ptr %sp seq_cst, align 8
  %any = icmp ne i64 %sl, 0
  br i1 %any, label %wake, label %work
wake:
  %fr = call i64 @sat_futex(ptr %gp, i64 129, i64 2147483647)
  br label %work
work:
  call void @sat_pool_claim(ptr %s, i64 %g64)
  br label %join
join:
  %k = phi i32 [0, %work], [%k1, %spin]
  %a = load atomic i32, ptr %ap seq_cst, align 4
  %idle = icmp eq i32 %a, 0
  br i1 %idle, label %done, label %pause
pause:
  %k1 = add i32 %k, 1
  %long = icmp ugt i32 %k1, POOL_SPIN
  br i1 %long, label %block, label %spin
spin:
  call void @sat_spin_hint()
  br label %join
block:
  %mp = getelementptr i8, ptr %s, i64 132
  store atomic i32 1, ptr %mp seq_cst, align 4
  br label %blockloop
blockloop:
  %b = load atomic i32, ptr %ap seq_cst, align 4
  %bidle = icmp eq i32 %b, 0
  br i1 %bidle, label %unblock, label %nap
nap:
  %b64 = zext i32 %b to i64
  %fr2 = call i64 @sat_futex(ptr %ap, i64 128, i64 %b64)
  br label %blockloop
unblock:
  store atomic i32 0, ptr %mp seq_cst, align 4
  br label %done
done:
  ret void
}

define void @sat_pool_stop(ptr %s, i64 %n) {
entry:
  %gp = getelementptr i8, ptr %s, i64 64
  %qp = getelementptr i8, ptr %s, i64 68
  store atomic i32 1, ptr %qp seq_cst, align 4
  %g = load atomic i32, ptr %gp monotonic, align 4
  %g1 = add i32 %g, 1
  store atomic i32 %g1, ptr %gp seq_cst, align 4
  %fr = call i64 @sat_futex(ptr %gp, i64 129, i64 2147483647)
  br label %loop
loop:
  %i = phi i64 [0, %entry], [%i1, %body]
  %more = icmp ult i64 %i, %n
  br i1 %more, label %body, label %done
body:
  %off = mul i64 %i, 8
  %off2 = add i64 %off, 320
  %tidp = getelementptr i8, ptr %s, i64 %off2
  %tid = load i64, ptr %tidp, align 8
  %jr = call i32 @pthread_join(i64 %tid, ptr null)
  %i1 = add i64 %i, 1
  br label %loop
done:
  ret void
}
""".replace("POOL_SPIN", str(POOL_SPIN))
POOL_STATE_BYTES = 320 + 8 * 64


class FuncIR:
    """Lines of one function, fresh SSA names, structured loops and ifs over i64 allocas."""

    def __init__(self, lanes: int) -> None:
        self.L: list[str] = []
        self.allocas: list[str] = []
        self.n = 0
        self.lanes = lanes
        self.vty = vec_type(lanes)

    def new(self, p: str = "v") -> str:
        self.n += 1
        return f"%{p}{self.n}"

    def __call__(self, rhs: str, p: str = "v") -> str:
        r = self.new(p)
        self.L.append(f"  {r} = {rhs}")
        return r

    def do(self, s: str) -> None:
        self.L.append(f"  {s}")

    def label(self, name: str) -> None:
        self.L.append(f"{name}:")

    def var(self, ty: str, init: str) -> str:
        a = self.new("st")
        self.allocas.append(f"  {a} = alloca {ty}, align 64")
        self.do(f"store {ty} {init}, ptr {a}")
        return a

    @contextmanager
    def loop(self, start: str | int, end: str | int, step: int = 1) -> Iterator[str]:
        n = self.new("l")[1:]
        a = f"%{n}.a"
        self.allocas.append(f"  {a} = alloca i64, align 8")
        self.do(f"store i64 {start}, ptr {a}")
        self.do(f"br label %{n}.h")
        self.label(f"{n}.h")
        i = f"%{n}.i"
        self.do(f"{i} = load i64, ptr {a}")
        self.do(f"%{n}.c = icmp slt i64 {i}, {end}")
        self.do(f"br i1 %{n}.c, label %{n}.b, label %{n}.x")
        self.label(f"{n}.b")
        yield i
        self.do(f"%{n}.n = add i64 {i}, {step}")
        self.do(f"store i64 %{n}.n, ptr {a}")
        self.do(f"br label %{n}.h")
        self.label(f"{n}.x")

    @contextmanager
    def when(self, cond: str) -> Iterator[None]:
        n = self.new("if")[1:]
        self.do(f"br i1 {cond}, label %{n}.t, label %{n}.j")
        self.label(f"{n}.t")
        yield
        self.do(f"br label %{n}.j")
        self.label(f"{n}.j")

    # integer and pointer helpers (constants folded in Python)
    def add(self, a: str | int, b: str | int) -> str:
        if isinstance(a, int) and isinstance(b, int):
            return str(a + b)
        if b == 0:
            return str(a)
        if a == 0:
            return str(b)
        return self(f"add i64 {a}, {b}")

    def mul(self, a: str | int, b: int) -> str:
        if isinstance(a, int):
            return str(a * b)
        if b == 1:
            return a
        if b == 0:
            return "0"
        return self(f"mul i64 {a}, {b}")

    def gep(self, p: str, off: str | int, ty: str = "float") -> str:
        if off in (0, "0"):
            return p
        return self(f"getelementptr {ty}, ptr {p}, i64 {off}", "p")

    def splat(self, s: str, lanes: int | None = None) -> str:
        lanes = lanes or self.lanes
        vty = vec_type(lanes)
        i = self(f"insertelement {vty} poison, float {s}, i64 0")
        return self(f"shufflevector {vty} {i}, {vty} poison, <{lanes} x i32> zeroinitializer")

    def iota(self) -> str:
        return "<" + ", ".join(f"i64 {e}" for e in range(self.lanes)) + ">"

    def func(self, head: str) -> str:
        body = self.L
        return "\n".join([head, "entry:", *self.allocas, "  br label %start", "start:", *body, "}"])
