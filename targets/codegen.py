"""llvmlite code generation for the host x86-64 CPU: one LLVM module per model, O3, MCJIT.

The module is built from LLVM IR text (made by the kernel generators in this package), optimized
with the new pass manager at O3 for the host CPU name and features, and JIT-compiled with MCJIT.
``emit_object`` / ``load_object`` let the disk cache skip LLVM entirely on a hit.
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


@dataclass(frozen=True)
class HostTarget:
    """The host CPU as LLVM sees it, and the GEMM register tile its vector width affords."""

    cpu: str
    features: str
    triple: str
    vector_bits: int  # 512 with AVX-512F, else 256 (AVX2) or 128

    @property
    def lanes(self) -> int:
        return self.vector_bits // 32

    @property
    def gemm_tile(self) -> tuple[int, int]:
        """(MR, NR): 8×48 with 32 zmm registers, 6×16 with 16 ymm registers."""
        return (8, 48) if self.vector_bits == 512 else (6, 16)

    def key(self) -> str:
        return f"{self.triple}|{self.cpu}|{self.features}"


@functools.cache
def host_target() -> HostTarget:
    """Detect the host CPU (name, features, vector width)."""
    _init()
    feats = llvm.get_host_cpu_features()
    bits = 512 if feats.get("avx512f") else (256 if feats.get("avx2") else 128)
    return HostTarget(llvm.get_host_cpu_name(), feats.flatten(), llvm.get_process_triple(), bits)


@functools.cache
def _target_machine() -> llvm.TargetMachine:
    host = host_target()
    target = llvm.Target.from_triple(host.triple)
    return target.create_target_machine(cpu=host.cpu, features=host.features, opt=3,
                                        reloc="default", codemodel="jitdefault")


def optimize_ir(ir_text: str) -> llvm.ModuleRef:
    """Parse LLVM IR text, verify it and run the O3 pipeline for the host. Raises CodegenError."""
    _init()
    try:
        mod = llvm.parse_assembly(ir_text)
        mod.verify()
    except RuntimeError as e:
        msg = " ".join(str(e).split())[:300]
        raise CodegenError(f"generated LLVM IR does not verify: {msg}") from None
    tm = _target_machine()
    mod.triple = tm.triple
    mod.data_layout = str(tm.target_data)
    pto = llvm.create_pipeline_tuning_options(speed_level=3)
    pto.loop_vectorization = True
    pto.slp_vectorization = True
    pb = llvm.create_pass_builder(tm, pto)
    pm = pb.getModulePassManager()
    pm.run(mod, pb)
    return mod


def emit_object(mod: llvm.ModuleRef) -> bytes:
    """Machine code for an optimized module, as an ELF object (what the disk cache stores)."""
    return _target_machine().emit_object(mod)


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
