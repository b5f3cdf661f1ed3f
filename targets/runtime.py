"""The compiled model: one arena, a pointer table, kernels called through cached ctypes pointers.

``compile_graph`` lowers a static-shaped graph, plans memory, generates one LLVM module for all
kernels, and loads its machine code (from the disk cache when the module's IR hash is there). A
call validates the inputs before any generated code runs, binds the input and output addresses
into the pointer table, and runs the steps in order: kernels and, for nodes without a lowering,
their numpy references. Large kernels are split into shares run on several cores by the model's
persistent native thread pool (``NativePool``, created on the first parallel kernel, a few µs a
hand-off), or by a Python thread pool when ``model.native_threads`` is set to False (~50-150 µs
a hand-off; measured by ``python -m benchmarks.run``, table "two-core hand-off").

``build_module`` is what every target shares: lowering, in-place planning, the memory plan and the
module's IR for one :class:`~satura.targets.codegen.CpuTarget`. ``CompiledModel`` JIT-loads it for
the host; ``emit_cross`` turns it into an object file and assembly for a cross target (AArch64).
"""

from __future__ import annotations

import ctypes
import hashlib
import itertools
import os
import sys
import time
import weakref
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from satura.engine.errors import CodegenError, InputError
from satura.engine.graph import Graph, Value, is_data_dependent
from satura.engine.ops import run_reference
from satura.targets import codegen
from satura.targets.codegen import CpuTarget
from satura.targets.kernel import BASE_ALIGN, ERROR_SLOT, ERROR_WORDS, POOL_STATE_BYTES
from satura.targets.lower import (
    CHUNKS_PER_THREAD,
    Lowerer,
    Program,
    Ref,
    balanced_shares,
    generate,
    lifetimes,
    numel,
    plan_inplace,
)
from satura.targets.memory import ALIGN, MemoryPlan, plan_memory
from satura.targets.precision import compute_half_in_float
from satura.targets.specialize import SpecializingModel, static_variant
from satura.targets.staged import StagedModel

import satura

KernelFn = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64)
_PoolStart = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64)
_PoolRun = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)
_PoolStop = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64)
_OBJECTS: dict[str, bytes] = {}  # IR hash -> object code, for this process


_BASE = max(ALIGN, BASE_ALIGN)


def _aligned_empty(nbytes: int) -> np.ndarray:
    """Bytes starting at a multiple of the alignment that kernels assume of written buffers."""
    raw = np.empty(nbytes + _BASE, np.uint8)
    start = (-raw.ctypes.data) % _BASE
    return raw[start : start + nbytes]


def _addr(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


@dataclass
class ModuleBuild:
    """A graph lowered for one target: the steps, the pointer table, the memory plan and the IR.

    The pointer table is ``[arena, error record, inputs..., outputs..., constants...]`` (the
    record at ``kernel.ERROR_SLOT``): ``slot`` maps a value's id to its entry; ``consts`` holds
    each constant's entry and data (the runtime puts it there); ``out_vals`` are the outputs with
    an entry of their own (not inputs, not constants).
    """

    target: CpuTarget
    threads: int
    program: Program
    root: Callable[[Value], Value]
    slot: dict[int, int]
    out_vals: list[Value]
    consts: list[tuple[int, np.ndarray]]
    inplace: Any
    plan: MemoryPlan
    ir: str

    def slot_of(self, r: Ref) -> int | None:
        return self.slot.get(id(r)) if isinstance(r, Value) else None


def build_module(graph: Graph, target: CpuTarget, threads: int) -> ModuleBuild:
    """Lower a static-shaped ``graph`` for ``target`` and write its module's LLVM IR.

    ``threads`` sizes the per-part scratch buffers: the module's parallel kernels may be split
    into at most ``threads × CHUNKS_PER_THREAD`` parts. Raises CodegenError (symbolic shapes).
    """
    for v in graph.inputs:
        if not v.type.is_static:
            what = "the CPU target" if target.jit else f"the {target.name} target"
            raise CodegenError(
                f"input '{v.name}' has symbolic shape {v.type}: {what} compiles "
                "static shapes only (bind the dimensions first)"
            )
    lw = Lowerer(graph, target, threads)
    prog = lw.run()
    slot: dict[int, int] = {}
    first = ERROR_SLOT + 1  # slot 0: the arena; ERROR_SLOT: the error record (kernel.py)
    for v in graph.inputs:
        slot.setdefault(id(v), len(slot) + first)
    out_vals: list[Value] = []
    for v in graph.outputs:
        if id(v) not in slot and not v.is_const:
            slot[id(v)] = len(slot) + first
            out_vals.append(v)
    consts: list[tuple[int, np.ndarray]] = []
    const_vals = list(prog.consts)
    for st in prog.steps:
        const_vals += [r for r in st.reads if isinstance(r, Value) and id(r) in prog.extra_consts]
    for v in const_vals:
        if id(v) in slot:
            continue
        slot[id(v)] = len(slot) + first
        consts.append((slot[id(v)], np.ascontiguousarray(prog.extra_consts.get(id(v), v.data))))
    inplace = plan_inplace(prog, graph, lw.root)
    plan = plan_memory(lifetimes(prog, graph, lw.root))
    build = ModuleBuild(target, threads, prog, lw.root, slot, out_vals, consts, inplace, plan, "")
    build.ir = generate(prog, graph, plan, build.slot_of, lw.root, target.arch)
    return build


def _object_code(ir: str, cache_dir: str | None) -> tuple[bytes, bool]:
    """Host machine code for ``ir``: from this process's memo, the disk cache, or LLVM.
    Returns (obj, hit)."""
    key = hashlib.sha256(
        f"{satura.__version__}|{codegen.host_target().key()}|{ir}".encode()
    ).hexdigest()
    if key in _OBJECTS:
        return _OBJECTS[key], True
    path = Path(cache_dir) / f"{key}.o" if cache_dir else None
    if path is not None and path.exists():
        obj = path.read_bytes()
        _OBJECTS[key] = obj
        return obj, True
    obj = codegen.emit_object(codegen.optimize_ir(ir))
    _OBJECTS[key] = obj
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(obj)
        tmp.replace(path)
    return obj, False


try:
    _sched_getcpu = ctypes.CDLL(None, use_errno=True).sched_getcpu
    _sched_getcpu.restype = ctypes.c_int
except (OSError, AttributeError):  # not glibc: assume the caller is elsewhere (always hold)
    _sched_getcpu = None


def _current_cpu() -> int:
    """The core this thread runs on now (-1 if unknown)."""
    return _sched_getcpu() if _sched_getcpu is not None else -1


def _thread_ids() -> set[int]:
    """This process's kernel thread ids."""
    try:
        return {int(t) for t in os.listdir("/proc/self/task")}
    except OSError:
        return set()


def _stop_pool(stop: Any, state: np.ndarray, workers: int) -> None:
    stop(_addr(state), workers)


class NativePool:
    """The model's persistent pthreads (the generated ``sat_pool_*`` functions in its module).

    ``run(kernel, table, shares)`` runs the kernel's shares on the calling thread and the
    workers, each taking the next unclaimed share, and returns when all are done. Workers are
    created once, spin briefly after a run, then sleep on a futex until the next one; they are
    joined when the pool is garbage-collected. Not re-entrant (one run at a time).

    Where this process may use a core for each thread, worker k is pinned to the (k+1)-th of
    them and ``main_cpu`` is the first, for the caller to hold while it runs kernels
    (:meth:`CompiledModel.__call__` does). Unpinned, the scheduler at times put the caller and
    the worker on one core and kept them there (both always cache-hot, so never migrated):
    measured here, a two-thread 3×3 conv ran 2.6 ms in such stretches instead of 1.27 ms.
    """

    def __init__(self, jit: codegen.JitModule, workers: int) -> None:
        self._state = _aligned_empty(POOL_STATE_BYTES)
        self._state[:] = 0
        self._run = _PoolRun(jit.address("sat_pool_run"))
        self._addr = _addr(self._state)
        before = _thread_ids()
        self.workers = int(_PoolStart(jit.address("sat_pool_start"))(self._addr, workers))
        # The finalizer holds the state (not self): the workers read it until they are joined.
        self._stop = weakref.finalize(
            self, _stop_pool, _PoolStop(jit.address("sat_pool_stop")), self._state, self.workers
        )
        if self.workers < workers:
            self._stop()
            raise CodegenError(f"could not start {workers} pthreads (started {self.workers})")
        self.main_cpu: int | None = None
        cpus = sorted(os.sched_getaffinity(0))
        new = sorted(_thread_ids() - before)
        if len(cpus) > workers and len(new) == workers:
            try:
                for tid, cpu in zip(new, cpus[1:], strict=False):
                    os.sched_setaffinity(tid, {cpu})
                self.main_cpu = cpus[0]
            except OSError:  # a worker may not be pinned (a container's policy): run unpinned
                pass

    def run(self, kernel: int, table: int, shares: int) -> None:
        self._run(self._addr, kernel, table, shares)


class CompiledModel:
    """A graph compiled for the host CPU. Call it with the graph's inputs by name."""

    def __init__(
        self, graph: Graph, threads: int | None = None, cache_dir: str | None = None
    ) -> None:
        t0 = time.perf_counter()
        self.graph = graph
        self.threads = max(1, threads or len(os.sched_getaffinity(0)))
        build = build_module(graph, codegen.host_target(), self.threads)
        prog = build.program
        self._prog, self._root = prog, build.root
        self._slot, self._out_vals = build.slot, build.out_vals
        self._consts: list[tuple[int, np.ndarray]] = []
        for slot, data in build.consts:
            aligned = _aligned_empty(data.nbytes).view(data.dtype).reshape(data.shape)
            aligned[...] = data
            self._consts.append((slot, aligned))
        self.inplace = build.inplace
        self._plan = build.plan
        self.llvm_ir = build.ir
        obj, self.cache_hit = _object_code(build.ir, cache_dir)
        self._jit = codegen.JitModule(obj)
        self._arena = _aligned_empty(max(self._plan.arena_bytes, ALIGN))
        self._table = (ctypes.c_void_p * (len(self._slot) + ERROR_SLOT + 1))()
        self._table[0] = _addr(self._arena)
        # Where kernels report a runtime value out of range (kernel.report_error); word 1 is
        # nonzero after a call that hit one.
        self._errors = _aligned_empty(8 * ERROR_WORDS).view(np.int64)
        self._errors[:] = 0
        self._table[ERROR_SLOT] = _addr(self._errors)
        for slot, arr in self._consts:
            self._table[slot] = _addr(arr)
        self._table_addr = ctypes.addressof(self._table)
        self._run: list[tuple[str, Any, bool]] = []
        self._addrs: dict[int, int] = {}
        for st in prog.steps:
            if st.gen is not None:
                fn = KernelFn(self._jit.address(st.name))
                self._addrs[id(fn)] = self._jit.address(st.name)
                self._run.append(
                    ("k", fn, balanced_shares(st.units, self.threads) if st.parallel else 0)
                )
            else:
                self._run.append(("f", st, 0))
        self._parallel = any(shares for kind, _, shares in self._run if kind == "k")
        if self.threads * CHUNKS_PER_THREAD >= 1 << 16:
            raise CodegenError(f"threads={self.threads}: too many for the thread pool")
        self._last_out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._bound: dict[int, tuple[np.ndarray, int]] = {}
        self._in_specs = [
            (
                v.name,
                np.dtype(v.type.dtype),
                tuple(int(d) for d in v.type.shape),
                self._slot[id(v)],
                id(v),
            )
            for v in graph.inputs
        ]
        self._in_slots = [(id(v), self._slot[id(v)]) for v in graph.inputs]
        outs = {id(v) for v in self._out_vals}
        self._out_plan = [(v, id(v) in outs) for v in graph.outputs]
        # How large kernels use several cores: True (default) runs their shares on a persistent
        # native pool (NativePool, ~5 µs a hand-off); False on a Python ThreadPoolExecutor (ctypes
        # calls release the GIL; ~50-100 µs a hand-off). Both start on the first parallel kernel.
        self.native_threads = True
        self._native: NativePool | None = None
        self._pool: ThreadPoolExecutor | None = None
        self.compile_seconds = time.perf_counter() - t0

    # -- facts ------------------------------------------------------------------------------------
    @property
    def arena_bytes(self) -> int:
        return self._plan.arena_bytes

    @property
    def arena_lower_bound(self) -> int:
        return self._plan.lower_bound

    @property
    def kernels(self) -> list[str]:
        return [st.name for st in self._prog.steps if st.gen is not None]

    @property
    def fallback_nodes(self) -> list[str]:
        """Names of the nodes that run their numpy reference (no kernel), in run order."""
        return [st.node.name for st in self._prog.steps if st.node is not None]

    @property
    def fallback_ops(self) -> list[str]:
        """The ops of :attr:`fallback_nodes`, in the same order."""
        return [st.node.op for st in self._prog.steps if st.node is not None]

    # -- running ----------------------------------------------------------------------------------
    def _input_error(self, inputs: Mapping[str, Any]) -> InputError:
        """The error that explains why ``inputs`` do not fit (the slow path)."""
        names = {v.name for v in self.graph.inputs}
        extra = sorted(set(inputs) - names)
        if extra:
            return InputError(
                f"unknown input '{extra[0]}' (the model takes: {', '.join(sorted(names))})"
            )
        for v in self.graph.inputs:
            if v.name not in inputs:
                return InputError(f"missing input '{v.name}' ({v.type})")
            a = inputs[v.name]
            if not isinstance(a, np.ndarray):
                return InputError(f"input '{v.name}' must be a numpy array, got {type(a).__name__}")
            want = tuple(int(d) for d in v.type.shape)
            if a.dtype.name != v.type.dtype or tuple(a.shape) != want:
                return InputError(
                    f"input '{v.name}': expected {v.type.dtype}{list(want)}, got "
                    f"{a.dtype.name}{list(a.shape)}"
                )
            if not a.flags.c_contiguous:
                return InputError(
                    f"input '{v.name}' must be C-contiguous (pass np.ascontiguousarray(x))"
                )
        return InputError("inputs do not fit the model")

    def _bind(self, slot: int, a: np.ndarray) -> None:
        # Reading an address through numpy costs microseconds: remember the last array per slot.
        last = self._bound.get(slot)
        if last is None or last[0] is not a:
            self._bound[slot] = (a, _addr(a))
            self._table[slot] = self._bound[slot][1]

    def __call__(
        self, inputs: Mapping[str, Any] | None = None, /, **kw: Any
    ) -> dict[str, np.ndarray]:
        """Run the model: ``model(x=arr)`` or ``model({"x": arr})``. Raises InputError for inputs
        that do not fit, or for an index value a kernel found out of range (then no output).

        Not re-entrant: one call at a time per model (the arena is shared).
        """
        given = {**inputs, **kw} if inputs else kw
        if len(given) != len(self._in_specs):
            raise self._input_error(given)
        bound: dict[int, np.ndarray] = {}
        for name, dtype, shape, _slot, key in self._in_specs:
            a = given.get(name)
            if (
                type(a) is not np.ndarray
                or a.dtype != dtype
                or a.shape != shape
                or not a.flags.c_contiguous
            ):
                raise self._input_error(given)
            bound[key] = a
        for key, slot in self._in_slots:
            self._bind(slot, bound[key])
        for v in self._out_vals:
            a = self._output_buffer(v)
            bound[id(v)] = a
            self._bind(self._slot[id(v)], a)
        addr, many = self._table_addr, self.threads > 1 and self._parallel
        native = many and self.native_threads
        if native and self._native is None:
            self._native = NativePool(self._jit, self.threads - 1)
        held = None
        main_cpu = self._native.main_cpu if native else None  # type: ignore[union-attr]
        # Held only when the caller sits on another core (a worker's): the two syscalls and the
        # migration cost microseconds a call, and a caller already on its core stays there.
        if main_cpu is not None and _current_cpu() != main_cpu:
            held = os.sched_getaffinity(0)
            if main_cpu in held:  # this thread may run there (another thread may not)
                os.sched_setaffinity(0, {main_cpu})
            else:
                held = None
        try:
            for kind, what, shares in self._run:
                if kind == "k":
                    if not (shares and many):
                        what(addr, 0, 1)
                    elif native:
                        self._native.run(self._addrs[id(what)], addr, shares)  # type: ignore
                    else:
                        self._run_shared(what, addr, shares)
                else:
                    if self._errors[1]:  # a kernel's output is unfinished: numpy must not see it
                        raise self._value_error()
                    self._fallback(what, bound)
            if self._errors[1]:
                raise self._value_error()
        finally:
            if held is not None:
                os.sched_setaffinity(0, held)
        result: dict[str, np.ndarray] = {}
        for v, own in self._out_plan:
            a = bound[id(v)] if own else self._array(v, bound)
            result[v.name] = a if own and v.name not in result else a.copy()
        return result

    def _value_error(self) -> InputError:
        """The error a kernel reported in the error record (which is cleared for the next call):
        the node, the bad index, where it is in its input and the valid range."""
        _, code, pos, value, lo, hi, which = (int(w) for w in self._errors[:7])
        self._errors[:] = 0
        node = self.graph.nodes[code - 1]
        src = node.inputs[which]
        shape = tuple(int(d) for d in src.type.shape) if src is not None else ()
        at = f"[{', '.join(str(i) for i in np.unravel_index(pos, shape))}]" if shape else ""
        name = src.name if src is not None else f"input {which}"
        axis = f" for axis {node.attrs['axis']} of size {hi + 1}" if "axis" in node.attrs else ""
        return InputError(
            f"node '{node.name}' ({node.op}): index {value} at {name}{at} is out "
            f"of range [{lo}, {hi}]{axis}; no output was returned"
        )

    def _run_shared(self, kernel: Any, addr: int, shares: int) -> None:
        """Run ``kernel``'s shares on this thread and the pool, each taking the next share."""
        counter = itertools.count()  # next() is atomic under the GIL

        def work() -> None:
            for i in counter:
                if i >= shares:
                    return
                kernel(addr, i, shares)  # ctypes releases the GIL for the call

        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads - 1, thread_name_prefix="satura")
        futs = [self._pool.submit(work) for _ in range(self.threads - 1)]
        work()
        for f in futs:
            f.result()

    def _output_buffer(self, v: Value) -> np.ndarray:
        # A fresh large array costs a page fault per 4 KiB on first write (~1 ms per 4 MiB): reuse
        # the previous call's output when the caller holds neither it nor a view of it. Holders
        # of the array: _last_out, _bound, ``prev`` and getrefcount's argument; of its memory
        # (``raw``, the base every view of it points to): the array, _last_out, ``raw``, argument.
        last = self._last_out.get(id(v))
        if last is not None:
            prev, raw = last
            if sys.getrefcount(prev) <= 4 and sys.getrefcount(raw) <= 4:
                return prev
            del prev, raw
        raw = _aligned_empty(numel(v.type.shape) * np.dtype(v.type.dtype).itemsize)
        a = raw.view(v.type.dtype).reshape(tuple(int(d) for d in v.type.shape))
        self._last_out[id(v)] = (a, raw.base if raw.base is not None else raw)
        return a

    def _array(self, v: Value, bound: dict[int, np.ndarray]) -> np.ndarray:
        r = self._root(v)
        shape = tuple(int(d) for d in v.type.shape)
        if id(r) in bound:
            return bound[id(r)].reshape(shape)
        if r.is_const:
            return np.asarray(r.data).reshape(shape)
        off = self._plan.offsets[id(r)]
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(v.type.dtype).itemsize
        return self._arena[off : off + nbytes].view(v.type.dtype).reshape(shape)

    def _fallback(self, st: Any, bound: dict[int, np.ndarray]) -> None:
        node = st.node
        ins = [None if x is None else self._array(x, bound) for x in node.inputs]
        outs = run_reference(node.op, ins, node.attrs)
        for o, res in zip(node.outputs, outs, strict=True):
            np.copyto(
                self._array(o, bound),
                np.asarray(res).reshape(tuple(int(d) for d in o.type.shape)),
                casting="unsafe",
            )


def compile_graph(
    graph: Graph, target: str = "cpu", threads: int | None = None, cache_dir: str | None = None
) -> CompiledModel | SpecializingModel | StagedModel:
    """Compile ``graph`` for the host CPU.

    Static input shapes give a :class:`CompiledModel` at once. Symbolic input dimensions give a
    :class:`SpecializingModel` that compiles (and caches) one static variant per set of input
    shapes on the first call with them. Ops whose output size their values decide (NonZero) give
    a :class:`~satura.targets.staged.StagedModel`: compiled stages cut at those ops.

    ``threads``: cores used by large kernels (default: all this process may use). ``cache_dir``:
    where object code is cached on disk, keyed by a hash of the module's LLVM IR, the host CPU
    and the satura version (a hit skips LLVM). Raises CodegenError (unsupported target, symbolic
    input shapes, LLVM failure).
    """
    if target not in codegen.HOST_NAMES:
        if target in codegen.CROSS_TARGETS:
            raise CodegenError(
                f"target '{target}' is a cross target: its code cannot run in this "
                "process; emit it with satura.targets.runtime.emit_cross(graph, "
                f"'{target}') or `satura compile MODEL --target {target} -o OUT.o`"
            )
        raise CodegenError(
            f"unknown target '{target}' (this backend compiles for: cpu; it emits "
            "code for the cross target aarch64 through emit_cross)"
        )
    if any(is_data_dependent(n) for n in graph.nodes):
        return StagedModel(graph, lambda g: compile_graph(g, target, threads, cache_dir))
    graph = compute_half_in_float(graph)
    if any(not v.type.is_static for v in graph.inputs):
        return SpecializingModel(graph, lambda g: CompiledModel(g, threads, cache_dir))
    return CompiledModel(graph, threads, cache_dir)


@dataclass(frozen=True)
class CrossModule:
    """A model's code for a cross target: an ELF object, its assembly, and how to drive it.

    ``kernels`` are the exported ``void NAME(ptr table, i64 part, i64 nparts)`` entries in run
    order (``nparts`` at most ``max_parts``); ``inputs``/``outputs`` give the pointer-table slots
    of the graph's inputs and outputs by name, ``constants`` the slot and data of each constant;
    slot 0 is an arena of ``arena_bytes`` bytes. Buffers the kernels write (the arena, outputs)
    must be ``BASE_ALIGN``-aligned. Slot ``kernel.ERROR_SLOT`` holds a zeroed record of
    ``kernel.ERROR_WORDS`` i64 words that kernels fill instead of reading out of bounds (word 1
    nonzero: a runtime index was out of range). ``fallback_nodes`` have no kernel: the object
    does not compute them (a runner must).
    """

    target: CpuTarget
    object: bytes
    assembly: str
    llvm_ir: str
    kernels: list[str]
    inputs: dict[str, int]
    outputs: dict[str, int]
    constants: list[tuple[int, np.ndarray]]
    arena_bytes: int
    max_parts: int
    fallback_nodes: list[str]


def bind_dims(graph: Graph, dims: Mapping[str, int]) -> Graph:
    """``graph`` with its inputs' symbolic dimensions set by name (``{"batch": 1}``).

    Raises CodegenError for a name that is no input dimension of the graph.
    """
    symbols = {str(s): s for v in graph.inputs for s in v.type.symbols}
    unknown = sorted(set(dims) - set(symbols))
    if unknown:
        raise CodegenError(
            f"no input dimension is named '{unknown[0]}' (the symbolic ones: "
            f"{', '.join(sorted(symbols)) or 'none'})"
        )
    if not dims:
        return graph
    return static_variant(graph, {symbols[k]: int(n) for k, n in dims.items()})


def _x86_user(ir: str) -> str | None:
    """The first function in ``ir`` whose body calls an ``llvm.x86.*`` intrinsic, if any."""
    current = None
    for line in ir.splitlines():
        if line.startswith("define "):
            current = line.split("@", 1)[1].split("(", 1)[0]
        elif current is not None and "@llvm.x86." in line:
            return current
        elif line.startswith("}"):
            current = None
    return None


def emit_cross(
    graph: Graph,
    target: str | CpuTarget = "aarch64",
    threads: int = 1,
    dims: Mapping[str, int] | None = None,
) -> CrossModule:
    """Compile ``graph`` for a cross target (default ``aarch64``: Linux, NEON) without running it.

    The same lowering, memory plan and module as :class:`CompiledModel`, optimized at O3 for the
    target and emitted as an ELF object and assembly. ``dims`` binds symbolic input dimensions by
    name; the shapes must then be static. ``threads`` sizes per-part scratch: a runner may split a
    parallel kernel into up to ``threads × CHUNKS_PER_THREAD`` parts. Raises CodegenError
    (unknown target, symbolic shapes, x86-only IR, LLVM failure).
    """
    t = codegen.resolve_target(target)
    if threads < 1:
        raise CodegenError(f"threads={threads}: must be at least 1")
    dd = next((n for n in graph.nodes if is_data_dependent(n)), None)
    if dd is not None:
        raise CodegenError(
            f"node '{dd.name}' ({dd.op}) gives an output whose size its input's values decide: "
            "an object file holds one static program; satura.compile runs such a model in "
            "stages (targets/staged.py)"
        )
    graph = compute_half_in_float(bind_dims(graph, dims or {}))
    build = build_module(graph, t, threads)
    x86 = _x86_user(build.ir) if t.arch != "x86_64" else None
    if x86 is not None:
        raise CodegenError(
            f"function '{x86}' calls an x86 intrinsic: it cannot be compiled for "
            f"{t.name} (call @sat_store_fence / @sat_spin_hint, kernel.py)"
        )
    mod = codegen.optimize_ir(build.ir, t)
    prog = build.program
    return CrossModule(
        target=t,
        object=codegen.emit_object(mod, t),
        assembly=codegen.emit_assembly(mod, t),
        llvm_ir=build.ir,
        kernels=[st.name for st in prog.steps if st.gen is not None],
        inputs={v.name: build.slot[id(v)] for v in graph.inputs},
        outputs={v.name: build.slot[id(v)] for v in graph.outputs if id(v) in build.slot},
        constants=build.consts,
        arena_bytes=build.plan.arena_bytes,
        max_parts=threads * CHUNKS_PER_THREAD,
        fallback_nodes=[st.node.name for st in prog.steps if st.node is not None],
    )
