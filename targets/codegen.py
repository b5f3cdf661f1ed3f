"""llvmlite code generation for CPU targets: one LLVM module per model, O3.

The module is built from LLVM IR text (made by the kernel generators in this package) and
optimized with the new pass manager at O3 for one :class:`CpuTarget`. The host x86-64 CPU is
described by its own name and features (``host_target``: AVX-512 where present, AVX2 otherwise)
and its machine code is JIT-loaded with MCJIT (``JitModule``); ``emit_object`` / ``load_object``
let the disk cache skip LLVM entirely on a hit. AArch64 (NEON) is a cross target
(``aarch64_target``): its module is only emitted, as an ELF object and as assembly, never run here.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import llvmlite.binding as llvm
from satura.engine.errors import CodegenError


@functools.cache
def _init() -> None:
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    # Cross targets (AArch64) need their backends too; llvmlite 0.50 registers them all at once.
    llvm.initialize_all_targets()
    llvm.initialize_all_asmprinters()


@dataclass(frozen=True)
class CpuTarget:
    """A CPU as LLVM sees it (triple, CPU name, features), its vector width and GEMM tile.

    ``arch`` (``x86_64`` or ``aarch64``) picks the spelling of the few things kernels say
    differently per ISA (``kernel.target_support``). ``jit`` is True only for the host: the one
    target whose machine code this process can load and run.
    """

    name: str
    arch: str
    triple: str
    cpu: str
    features: str
    vector_bits: int  # x86: 512 with AVX-512F, else 256 (AVX2) or 128; AArch64 NEON: 128
    gemm_tile: tuple[int, int]  # (MR, NR) of the GEMM micro-kernel's register tile
    jit: bool = False

    @property
    def lanes(self) -> int:
        return self.vector_bits // 32

    def key(self) -> str:
        return f"{self.triple}|{self.cpu}|{self.features}"


# 32 NEON registers of 4 floats: an 8×12 tile keeps 24 accumulators, 3 B vectors and the A
# broadcasts (lane-indexed FMAs read A from a register) in registers without spilling.
AARCH64_TILE = (8, 12)


def _x86_tile(vector_bits: int) -> tuple[int, int]:
    """(MR, NR): 8×48 with 32 zmm registers (24 accumulators), 6×16 with 16 ymm (12)."""
    return (8, 48) if vector_bits == 512 else (6, 16)


@functools.cache
def host_target() -> CpuTarget:
    """Detect the host CPU (name, features, vector width); it is JIT-compiled for."""
    _init()
    feats = llvm.get_host_cpu_features()
    bits = 512 if feats.get("avx512f") else (256 if feats.get("avx2") else 128)
    triple = llvm.get_process_triple()
    arch = "aarch64" if triple.startswith(("aarch64", "arm64")) else "x86_64"
    return CpuTarget(
        "host",
        arch,
        triple,
        llvm.get_host_cpu_name(),
        feats.flatten(),
        bits,
        _x86_tile(bits) if arch == "x86_64" else AARCH64_TILE,
        jit=True,
    )


@functools.cache
def aarch64_target() -> CpuTarget:
    """The AArch64 cross target: Linux, Neoverse N1 scheduling, NEON (128-bit vectors)."""
    return CpuTarget(
        "aarch64", "aarch64", "aarch64-unknown-linux-gnu", "neoverse-n1", "+neon", 128, AARCH64_TILE
    )


CROSS_TARGETS = {"aarch64": aarch64_target, "arm64": aarch64_target}
HOST_NAMES = ("cpu", "host", "x86_64")


def resolve_target(target: str | CpuTarget) -> CpuTarget:
    """A target by name: ``cpu``/``host``/``x86_64`` (the host) or ``aarch64``/``arm64``.

    Raises CodegenError naming the known targets.
    """
    if isinstance(target, CpuTarget):
        return target
    if target in HOST_NAMES:
        return host_target()
    if target in CROSS_TARGETS:
        return CROSS_TARGETS[target]()
    raise CodegenError(
        f"unknown CPU target '{target}' (known: cpu, the host, JIT-compiled; "
        "aarch64, emitted as an object file and assembly)"
    )


def _target_machine(target: CpuTarget | None = None) -> llvm.TargetMachine:
    return _machine(target or host_target())


@functools.cache
def _machine(t: CpuTarget) -> llvm.TargetMachine:
    _init()
    llvm_target = llvm.Target.from_triple(t.triple)
    # The host's code is loaded by MCJIT; a cross object is linked by someone else, so it is
    # position-independent (fits a shared library as well as an executable).
    return llvm_target.create_target_machine(
        cpu=t.cpu,
        features=t.features,
        opt=3,
        reloc="default" if t.jit else "pic",
        codemodel="jitdefault" if t.jit else "default",
    )


def optimize_ir(ir_text: str, target: CpuTarget | None = None) -> llvm.ModuleRef:
    """Parse LLVM IR text, verify it and run the O3 pipeline for ``target`` (default: the host).

    Raises CodegenError.
    """
    _init()
    try:
        mod = llvm.parse_assembly(ir_text)
        mod.verify()
    except RuntimeError as e:
        msg = " ".join(str(e).split())[:300]
        raise CodegenError(f"generated LLVM IR does not verify: {msg}") from None
    tm = _target_machine(target)
    mod.triple = tm.triple
    mod.data_layout = str(tm.target_data)
    pto = llvm.create_pipeline_tuning_options(speed_level=3)
    pto.loop_vectorization = True
    pto.slp_vectorization = True
    pb = llvm.create_pass_builder(tm, pto)
    pm = pb.getModulePassManager()
    pm.run(mod, pb)
    return mod


def _machine_for(mod: llvm.ModuleRef, target: CpuTarget | None) -> llvm.TargetMachine:
    tm = _target_machine(target)
    if mod.triple != tm.triple:
        raise CodegenError(
            f"module was optimized for '{mod.triple}', not '{tm.triple}': pass the "
            "same target to optimize_ir and emit_object/emit_assembly"
        )
    return tm


def emit_object(mod: llvm.ModuleRef, target: CpuTarget | None = None) -> bytes:
    """Machine code for a module optimized for ``target`` (default: the host), as an ELF object
    (what the disk cache stores). Raises CodegenError when the module is for another target."""
    return _machine_for(mod, target).emit_object(mod)


def emit_assembly(mod: llvm.ModuleRef, target: CpuTarget | None = None) -> str:
    """The assembly text of a module optimized for ``target`` (default: the host)."""
    return _machine_for(mod, target).emit_assembly(mod)


_LIVE: list[object] = []


class JitModule:
    """Machine code loaded into this process; ``address(name)`` gives a function's address."""

    def __init__(self, obj: bytes) -> None:
        _init()
        empty = llvm.parse_assembly("")
        empty.triple = _target_machine().triple
        self._engine = llvm.create_mcjit_compiler(empty, _target_machine())
        self._obj = llvm.ObjectFileRef.from_data(obj)
        self._engine.add_object_file(self._obj)
        # Destroying an MCJIT engine that loaded an object file crashes later JIT work in
        # llvmlite 0.50 (seen here): engines live as long as the process.
        _LIVE.append((self._engine, self._obj, empty))
        self._engine.finalize_object()

    def address(self, name: str) -> int:
        addr = self._engine.get_function_address(name)
        if not addr:
            raise CodegenError(f"kernel '{name}' is missing from the compiled module")
        return addr
