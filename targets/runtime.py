"""The compiled model: one arena, a pointer table, kernels called through cached ctypes pointers.

``compile_graph`` lowers a static-shaped graph, plans memory, generates one LLVM module for all
kernels, and loads its machine code (from the disk cache when the module's IR hash is there). A
call validates the inputs before any generated code runs, binds the input and output addresses
into the pointer table, and runs the steps in order: kernels and, for nodes without a lowering,
their numpy references. Large kernels are split into shares run on several cores by the model's
persistent native thread pool (``NativePool``, created on the first parallel kernel, a few µs a
hand-off), or by a Python thread pool when ``model.native_threads`` is set to False (~50-150 µs
a hand-off; measured by ``python -m benchmarks.run``, table "two-core hand-off").
"""

from __future__ import annotations

import ctypes
import hashlib
import itertools
import os
import sys
import time
import weakref
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from satura.engine.errors import CodegenError, InputError
from satura.engine.graph import Graph, Value
from satura.engine.ops import run_reference
from satura.targets import codegen
from satura.targets.kernel import BASE_ALIGN, POOL_STATE_BYTES
from satura.targets.lower import (
    CHUNKS_PER_THREAD,
    Lowerer,
    Ref,
    generate,
    lifetimes,
    numel,
    plan_inplace,
)
from satura.targets.memory import ALIGN, plan_memory
from satura.targets.specialize import SpecializingModel

import satura

KernelFn = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64)
_PoolStart = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64)
_PoolRun = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                            ctypes.c_int64)
_PoolStop = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64)
_OBJECTS: dict[str, bytes] = {}  # IR hash -> object code, for this process


_BASE = max(ALIGN, BASE_ALIGN)


def _aligned_empty(nbytes: int) -> np.ndarray:
    """Bytes starting at a multiple of the alignment that kernels assume of written buffers."""
    raw = np.empty(nbytes + _BASE, np.uint8)
    start = (-raw.ctypes.data) % _BASE
    return raw[start:start + nbytes]


def _addr(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def _object_code(ir: str, cache_dir: str | None) -> tuple[bytes, bool]:
    """Machine code for ``ir``: from this process's memo, the disk cache, or LLVM. (obj, hit)."""
    key = hashlib.sha256(
        f"{satura.__version__}|{codegen.host_target().key()}|{ir}".encode()).hexdigest()
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


def _stop_pool(stop: Any, state: np.ndarray, workers: int) -> None:
    stop(_addr(state), workers)


class NativePool:
    """The model's persistent pthreads (the generated ``sat_pool_*`` functions in its module).

    ``run(kernel, table, shares)`` runs the kernel's shares on the calling thread and the
    workers, each taking the next unclaimed share, and returns when all are done. Workers are
    created once, spin briefly after a run, then sleep on a futex until the next one; they are
    joined when the pool is garbage-collected. Not re-entrant (one run at a time).
    """

    def __init__(self, jit: codegen.JitModule, workers: int) -> None:
        self._state = _aligned_empty(POOL_STATE_BYTES)
        self._state[:] = 0
        self._run = _PoolRun(jit.address("sat_pool_run"))
        self._addr = _addr(self._state)
        self.workers = int(_PoolStart(jit.address("sat_pool_start"))(self._addr, workers))
        # The finalizer holds the state (not self): the workers read it until they are joined.
        self._stop = weakref.finalize(self, _stop_pool, _PoolStop(jit.address("sat_pool_stop")),
                                      self._state, self.workers)
        if self.workers < workers:
            self._stop()
            raise CodegenError(f"could not start {workers} pthreads (started {self.workers})")

    def run(self, kernel: int, table: int, shares: int) -> None:
        self._run(self._addr, kernel, table, shares)


class CompiledModel:
    """A graph compiled for the host CPU. Call it with the graph's inputs by name."""

    def __init__(self, graph: Graph, threads: int | None = None,
                 cache_dir: str | None = None) -> None:
        t0 = time.perf_counter()
        for v in graph.inputs:
            if not v.type.is_static:
                raise CodegenError(f"input '{v.name}' has symbolic shape {v.type}: the CPU target "
                                   "compiles static shapes only (bind the dimensions first)")
        self.graph = graph
        self.threads = max(1, threads or len(os.sched_getaffinity(0)))
        host = codegen.host_target()
        lw = Lowerer(graph, host, self.threads)
        prog = lw.run()
        self._prog, self._root = prog, lw.root
        # Pointer table: [arena, inputs..., outputs..., constants...].
        self._slot: dict[int, int] = {}
        for v in graph.inputs:
            self._slot.setdefault(id(v), len(self._slot) + 1)
        self._out_vals: list[Value] = []
        for v in graph.outputs:
            if id(v) not in self._slot and not v.is_const:
                self._slot[id(v)] = len(self._slot) + 1
                self._out_vals.append(v)
        self._consts: list[tuple[int, np.ndarray]] = []
        const_vals = list(prog.consts)
        for st in prog.steps:
            const_vals += [r for r in st.reads
                           if isinstance(r, Value) and id(r) in prog.extra_consts]
        for v in const_vals:
            if id(v) in self._slot:
                continue
            self._slot[id(v)] = len(self._slot) + 1
            data = np.ascontiguousarray(prog.extra_consts.get(id(v), v.data))
            aligned = _aligned_empty(data.nbytes).view(data.dtype).reshape(data.shape)
            aligned[...] = data
            self._consts.append((self._slot[id(v)], aligned))
        self.inplace = plan_inplace(prog, graph, lw.root)
        bufs = lifetimes(prog, graph, lw.root)
        self._plan = plan_memory(bufs)
        ir = generate(prog, graph, self._plan, self._slot_of, lw.root)
        self.llvm_ir = ir
        obj, self.cache_hit = _object_code(ir, cache_dir)
        self._jit = codegen.JitModule(obj)
        self._arena = _aligned_empty(max(self._plan.arena_bytes, ALIGN))
        self._table = (ctypes.c_void_p * (len(self._slot) + 1))()
        self._table[0] = _addr(self._arena)
        for slot, arr in self._consts:
            self._table[slot] = _addr(arr)
        self._table_addr = ctypes.addressof(self._table)
        self._run: list[tuple[str, Any, bool]] = []
        self._addrs: dict[int, int] = {}
        for st in prog.steps:
            if st.gen is not None:
                fn = KernelFn(self._jit.address(st.name))
                self._addrs[id(fn)] = self._jit.address(st.name)
                self._run.append(("k", fn, st.parallel))
            else:
                self._run.append(("f", st, False))
        self._shares = self.threads * CHUNKS_PER_THREAD
        if self._shares >= 1 << 16:
            raise CodegenError(f"threads={self.threads}: too many for the thread pool")
        self._last_out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._bound: dict[int, tuple[np.ndarray, int]] = {}
        self._in_specs = [(v.name, np.dtype(v.type.dtype), tuple(int(d) for d in v.type.shape),
                           self._slot[id(v)], id(v)) for v in graph.inputs]
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
        return [st.node.name for st in self._prog.steps if st.node is not None]

    def _slot_of(self, r: Ref) -> int | None:
        return self._slot.get(id(r)) if isinstance(r, Value) else None

    # -- running ----------------------------------------------------------------------------------
    def _input_error(self, inputs: Mapping[str, Any]) -> InputError:
        """The error that explains why ``inputs`` do not fit (the slow path)."""
        names = {v.name for v in self.graph.inputs}
        extra = sorted(set(inputs) - names)
        if extra:
            return InputError(f"unknown input '{extra[0]}' "
                              f"(the model takes: {', '.join(sorted(names))})")
        for v in self.graph.inputs:
            if v.name not in inputs:
                return InputError(f"missing input '{v.name}' ({v.type})")
            a = inputs[v.name]
            if not isinstance(a, np.ndarray):
                return InputError(f"input '{v.name}' must be a numpy array, "
                                  f"got {type(a).__name__}")
            want = tuple(int(d) for d in v.type.shape)
            if a.dtype.name != v.type.dtype or tuple(a.shape) != want:
                return InputError(f"input '{v.name}': expected {v.type.dtype}{list(want)}, got "
                                  f"{a.dtype.name}{list(a.shape)}")
            if not a.flags.c_contiguous:
                return InputError(f"input '{v.name}' must be C-contiguous "
                                  "(pass np.ascontiguousarray(x))")
        return InputError("inputs do not fit the model")

    def _bind(self, slot: int, a: np.ndarray) -> None:
        # Reading an address through numpy costs microseconds: remember the last array per slot.
        last = self._bound.get(slot)
        if last is None or last[0] is not a:
            self._bound[slot] = (a, _addr(a))
            self._table[slot] = self._bound[slot][1]

    def __call__(self, inputs: Mapping[str, Any] | None = None, /,
                 **kw: Any) -> dict[str, np.ndarray]:
        """Run the model: ``model(x=arr)`` or ``model({"x": arr})``. Raises InputError.

        Not re-entrant: one call at a time per model (the arena is shared).
        """
        given = {**inputs, **kw} if inputs else kw
        if len(given) != len(self._in_specs):
            raise self._input_error(given)
        bound: dict[int, np.ndarray] = {}
        for name, dtype, shape, _slot, key in self._in_specs:
            a = given.get(name)
            if (type(a) is not np.ndarray or a.dtype != dtype or a.shape != shape
                    or not a.flags.c_contiguous):
                raise self._input_error(given)
            bound[key] = a
        for key, slot in self._in_slots:
            self._bind(slot, bound[key])
        for v in self._out_vals:
            a = self._output_buffer(v)
            bound[id(v)] = a
            self._bind(self._slot[id(v)], a)
        addr, many = self._table_addr, self.threads > 1
        for kind, what, parallel in self._run:
            if kind == "k":
                if not (parallel and many):
                    what(addr, 0, 1)
                elif self.native_threads:
                    if self._native is None:
                        self._native = NativePool(self._jit, self.threads - 1)
                    self._native.run(self._addrs[id(what)], addr, self._shares)
                else:
                    self._run_shared(what, addr)
            else:
                self._fallback(what, bound)
        result: dict[str, np.ndarray] = {}
        for v, own in self._out_plan:
            a = bound[id(v)] if own else self._array(v, bound)
            result[v.name] = a if own and v.name not in result else a.copy()
        return result

    def _run_shared(self, kernel: Any, addr: int) -> None:
        """Run ``kernel``'s shares on this thread and the pool, each taking the next share."""
        shares = self._shares
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
        return self._arena[off:off + nbytes].view(v.type.dtype).reshape(shape)

    def _fallback(self, st: Any, bound: dict[int, np.ndarray]) -> None:
        node = st.node
        ins = [None if x is None else self._array(x, bound) for x in node.inputs]
        outs = run_reference(node.op, ins, node.attrs)
        for o, res in zip(node.outputs, outs, strict=True):
            np.copyto(self._array(o, bound), np.asarray(res).reshape(
                tuple(int(d) for d in o.type.shape)), casting="unsafe")


def compile_graph(graph: Graph, target: str = "cpu", threads: int | None = None,
                  cache_dir: str | None = None) -> CompiledModel | SpecializingModel:
    """Compile ``graph`` for the host CPU.

    Static input shapes give a :class:`CompiledModel` at once. Symbolic input dimensions give a
    :class:`SpecializingModel` that compiles (and caches) one static variant per set of input
    shapes on the first call with them.

    ``threads``: cores used by large kernels (default: all this process may use). ``cache_dir``:
    where object code is cached on disk, keyed by a hash of the module's LLVM IR, the host CPU
    and the satura version (a hit skips LLVM). Raises CodegenError (unsupported target, symbolic
    input shapes, LLVM failure).
    """
    if target not in ("cpu", "host", "x86_64"):
        raise CodegenError(f"unknown target '{target}' (this backend compiles for: cpu)")
    if any(not v.type.is_static for v in graph.inputs):
        return SpecializingModel(graph, lambda g: CompiledModel(g, threads, cache_dir))
    return CompiledModel(graph, threads, cache_dir)
