"""The AArch64 (NEON) cross target: emitted, never run here; checked on its assembly and object.

Each case compiles a graph with ``emit_cross`` and checks the lines that matter: NEON FMAs on
four-float vectors in the GEMM micro-kernel loop with no spill, no x86 mnemonic, an ELF object for
EM_AARCH64 exporting every kernel. The host path keeps its x86 spelling (sfence after streaming
stores); its results are checked by the other tests of this package.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from satura.engine.errors import CodegenError
from satura.engine.graph import Graph
from satura.targets import codegen, compile_graph, runtime
from satura.targets.elementwise import STREAM_BYTES
from satura.targets.kernel import ARCH_IR, target_support
from satura.targets.runtime import emit_cross

import satura
from examples.models import EXAMPLES
from satura.cli import main

pytestmark = pytest.mark.llvm

EM_AARCH64 = 183
EM_X86_64 = 62
# Registers and mnemonics that only x86 assembly has (AT&T syntax, as LLVM prints it).
X86 = re.compile(
    r"%[re]?(?:ax|bx|cx|dx|si|di|sp|bp)\b|%r\d+|\b[xyz]mm\d+|\bv?fmadd|\bsfence\b"
    r"|\bpause\b|\bvmov|\bmovnt"
)
MR, NR = codegen.aarch64_target().gemm_tile


def _elf_machine(obj: bytes) -> int:
    assert obj[:4] == b"\x7fELF", "not an ELF object"
    assert obj[4:6] == b"\x02\x01", "not a 64-bit little-endian ELF"
    return int.from_bytes(obj[18:20], "little")


def _function(asm: str, name: str) -> str:
    """The assembly of one function: from its label to its ``.Lfunc_end``."""
    m = re.search(rf"^{re.escape(name)}:\n(.*?)^\.Lfunc_end", asm, re.S | re.M)
    assert m, f"{name} not in the assembly"
    return m.group(1)


def _loops(body: str) -> list[str]:
    """The bodies of the function's loops: from a label to the branch back to it."""
    out = []
    for m in re.finditer(r"^(\.LBB\w+):\n", body, re.M):
        back = re.search(
            rf"^\s+(?:b|b\.\w+|cbn?z\s+\w+,|tbn?z\s+\w+, #\d+,)\s+{m.group(1)}$",
            body[m.end() :],
            re.M,
        )
        if back:
            out.append(body[m.end() : m.end() + back.start()])
    return out


def _check_module(mod: runtime.CrossModule) -> None:
    """What every aarch64 module must be: an AArch64 ELF object exporting every kernel and the
    pool, with assembly free of x86."""
    assert mod.target.triple == "aarch64-unknown-linux-gnu"
    assert _elf_machine(mod.object) == EM_AARCH64
    assert mod.kernels
    assert mod.fallback_nodes == []
    for name in [*mod.kernels, "sat_pool_run", "sat_pool_start", "sat_pool_stop"]:
        assert re.search(rf"^\s+\.globl\s+{name}$", mod.assembly, re.M), name
        assert name.encode() + b"\0" in mod.object, f"{name} not in the object's symbols"
    bad = X86.findall(mod.assembly)
    assert not bad, f"x86 in the aarch64 assembly: {sorted(set(bad))[:5]}"
    assert "llvm.x86" not in mod.llvm_ir


def _ew_graph(rows: int, cols: int) -> Graph:
    """gelu(x * w + b) over rows × cols, w and b constant rows."""
    rng = np.random.default_rng(0)
    g = Graph("ew")
    x = g.add_input("x", (rows, cols))
    w = g.add_const(rng.standard_normal(cols).astype(np.float32), "w")
    b = g.add_const(rng.standard_normal(cols).astype(np.float32), "b")
    g.set_outputs(
        g.apply("ew", x, w, b, expr=("gelu", ("add", ("mul", ("in", 0), ("in", 1)), ("in", 2))))
    )
    return g


def _linear_graph(m: int, k: int, n: int) -> Graph:
    rng = np.random.default_rng(1)
    g = Graph("lin")
    x = g.add_input("x", (m, k))
    w = g.add_const(rng.standard_normal((k, n)).astype(np.float32), "w")
    b = g.add_const(rng.standard_normal(n).astype(np.float32), "b")
    g.set_outputs(g.apply("linear", x, w, b))
    return g


def test_aarch64_target_description():
    t = codegen.aarch64_target()
    assert (t.arch, t.vector_bits, t.lanes, t.jit) == ("aarch64", 128, 4, False)
    assert NR % t.lanes == 0
    assert MR * NR // t.lanes + NR // t.lanes + 1 <= 32  # accumulators + B vectors + an A
    assert codegen.resolve_target("arm64") is t
    assert codegen.resolve_target("cpu") is codegen.host_target()


def test_fused_elementwise_chain():
    mod = emit_cross(_ew_graph(64, 256))
    _check_module(mod)
    (kernel,) = mod.kernels
    body = _function(mod.assembly, kernel)
    assert re.search(r"\bfmul\s+v\d+\.4s", body)  # whole NEON vectors of four floats
    assert re.search(r"\bfml[as]\s+v\d+\.4s", body)
    assert re.search(r"\bstr\s+q\d+|\bst[p1]\s+q\d+|\bstp\s+q\d+", body)


def test_streaming_stores_are_fenced_per_isa():
    """A large output is written with non-temporal stores and a fence: dmb on AArch64, sfence
    on x86 (where a release fence is no instruction and movnt stores are weakly ordered)."""
    rows = STREAM_BYTES // (4 * 1024)
    g = _ew_graph(rows, 1024)
    arm = emit_cross(g)
    _check_module(arm)
    body = _function(arm.assembly, arm.kernels[0])
    assert re.search(r"\bstnp\s+[qd]\d+", body)
    assert re.search(r"\bdmb\s+ish", body)
    host = emit_cross(g, "cpu")
    assert host.target.jit
    assert _elf_machine(host.object) == EM_X86_64
    body = _function(host.assembly, host.kernels[0])
    assert re.search(r"\bv?movnt", body)
    assert re.search(r"\bsfence\b", body)


def test_gemm_microkernel_keeps_tile_in_neon_registers():
    mod = emit_cross(_linear_graph(64, 256, 128))
    _check_module(mod)
    (kernel,) = mod.kernels
    micro = re.findall(rf"^({kernel}_[ud]{MR}):$", mod.assembly, re.M)
    assert micro, f"no {MR}-row micro-kernel in {mod.kernels}"
    tile = MR * NR // 4
    for name in micro:
        loops = _loops(_function(mod.assembly, name))
        hot = [lp for lp in loops if len(re.findall(r"\bfmla\s+v\d+\.4s", lp)) >= tile]
        assert hot, f"{name}: no loop with {tile} fmla v.4s (the whole tile per k)"
        for lp in hot:
            assert "[sp" not in lp, f"{name}: the k loop spills to the stack"
            accs = set(re.findall(r"\bfmla\s+(v\d+)\.4s", lp))
            assert len(accs) >= tile, f"{name}: {len(accs)} accumulators, want {tile}"


def test_example_model_mlp_small():
    g = satura.optimize(satura.load(EXAMPLES["mlp_small"]())).graph
    with pytest.raises(CodegenError, match="static shapes only"):
        emit_cross(g)
    mod = emit_cross(g, dims={"batch": 4}, threads=2)
    _check_module(mod)
    assert mod.max_parts == 8
    assert mod.arena_bytes > 0
    assert set(mod.inputs) == {v.name for v in g.inputs}
    assert set(mod.outputs) == {v.name for v in g.outputs}
    assert re.search(r"\bfmla\s+v\d+\.4s", mod.assembly)
    # The pool's spin hint and futex(2) are AArch64's: yield and system call 98.
    assert re.search(r"\byield\b", mod.assembly)
    assert re.search(r"mov\s+w0, #98\b", mod.assembly)


def test_target_support_spells_each_isa():
    for arch, a in ARCH_IR.items():
        text = target_support(arch)
        assert a.spin_hint in text
        assert a.store_fence in text
        assert f"i64 {a.futex_nr}," in text
        assert f"i64 {a.yield_nr})" in text
    assert "x86" not in target_support("aarch64")


def test_lstm_team_cross_compiles():
    """An LSTM of one sequence on two threads (a team sharing the hidden units, meeting at a
    barrier each step): NEON FMAs in the recurrent product, the barrier's atomics, and
    sched_yield as AArch64's system call 124."""
    from tests.targets.test_cpu_recurrent import rnn_graph

    g, _ = rnn_graph("lstm", 32, 8, 5, 1)
    mod = emit_cross(g, threads=2)
    _check_module(mod)
    (rec,) = [k for k in mod.kernels if k.endswith("_rnn")]
    assert re.search(rf"^{rec}_u0_1:$", mod.assembly, re.M)
    assert re.search(r"\bfmla\s+v\d+\.4s", _function(mod.assembly, f"{rec}_u0_1"))
    assert re.search(r"\b(ldaddal|ldaxr|casal)\b", mod.assembly)  # the barrier's counter
    assert re.search(r"mov\s+w0, #124\b", mod.assembly)


def test_x86_intrinsic_named_when_cross_compiling():
    ir = "define void @k(ptr %t) {\nentry:\n  call void @llvm.x86.sse.sfence()\n  ret void\n}\n"
    assert runtime._x86_user(ir) == "k"
    assert runtime._x86_user(target_support("aarch64")) is None


def test_errors_name_the_cross_target():
    g = _ew_graph(4, 8)
    with pytest.raises(CodegenError, match=r"cross target.*emit_cross"):
        compile_graph(g, target="aarch64")
    with pytest.raises(CodegenError, match=r"unknown target 'riscv'.*aarch64"):
        compile_graph(g, target="riscv")
    with pytest.raises(CodegenError, match=r"unknown CPU target 'riscv'.*aarch64"):
        emit_cross(g, "riscv")
    with pytest.raises(CodegenError, match=r"no input dimension is named 'seq'"):
        emit_cross(g, dims={"seq": 4})


MODEL = Path(__file__).resolve().parents[2] / "examples" / "mlp_small.onnx"


def test_cli_compile_writes_object_and_assembly(tmp_path, capsys):
    out, asm = tmp_path / "m.o", tmp_path / "m.s"
    rc = main(
        [
            "compile",
            str(MODEL),
            "--target",
            "aarch64",
            "--dim",
            "batch=2",
            "-o",
            str(out),
            "--asm",
            str(asm),
        ]
    )
    assert rc == 0, capsys.readouterr().err
    assert _elf_machine(out.read_bytes()) == EM_AARCH64
    assert re.search(r"\bfmla\s+v\d+\.4s", asm.read_text())
    assert "wrote" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.o", "m.s"]  # no temporaries left


def test_cli_compile_error_writes_nothing(tmp_path, capsys):
    out, asm = tmp_path / "m.o", tmp_path / "m.s"
    rc = main(
        [
            "compile",
            str(MODEL),
            "--target",
            "aarch64",
            "--no-optimize",
            "-o",
            str(out),
            "--asm",
            str(asm),
        ]
    )  # the batch dimension is left symbolic
    assert rc == 1
    err = capsys.readouterr().err
    assert "static shapes only" in err
    assert len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []
