"""Hardware profiles and the roofline cost model."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import sympy
from satura.engine.graph import Graph, TensorType
from satura.extract.cost import graph_time, node_roofline, node_time, symbol_hint
from satura.extract.hardware import (
    PROFILES,
    HardwareError,
    get_profile,
    host_cpu,
    read_caches,
    vector_bits_from_flags,
)

F32 = "float32"


def T(*shape: object) -> TensorType:
    return TensorType(tuple(shape), F32)


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_profiles_are_complete(name: str) -> None:
    p = get_profile(name)
    assert p.peak("float32") > 0
    assert p.peak("no-such-dtype") == p.peak("float32")
    assert p.bandwidth["dram"] > 0
    assert p.cores >= 1
    assert p.vector_bits >= 128
    # A level that fits in cache streams at least as fast as DRAM.
    assert p.bandwidth_for(1024) >= p.bandwidth_for(1 << 40) == p.bandwidth["dram"]


def test_datasheet_ratios() -> None:
    # H200 is H100's compute with 4.8 vs 3.35 TB/s HBM (NVIDIA datasheets).
    h100, h200 = get_profile("h100"), get_profile("h200")
    assert h200.peak("bfloat16") == h100.peak("bfloat16")
    assert h200.bandwidth["dram"] / h100.bandwidth["dram"] == pytest.approx(4.8 / 3.35)
    assert get_profile("mi300x").bandwidth["dram"] > h200.bandwidth["dram"]


def test_unknown_profile() -> None:
    with pytest.raises(HardwareError, match=r"unknown hardware profile 'tpu9'.*h100"):
        get_profile("tpu9")


def test_host_detection() -> None:
    p = host_cpu()

    assert p.cores == os.cpu_count()
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    if " avx512f" in flags:
        assert p.vector_bits == 512
    elif " avx2" in flags:
        assert p.vector_bits == 256
    assert vector_bits_from_flags({"asimd", "fp"}) == 128
    assert vector_bits_from_flags({"avx2", "avx512f"}) == 512


def test_read_caches_from_sysfs_layout(tmp_path: Path) -> None:
    for i, (lvl, kind, size, shared) in enumerate(
        [
            ("1", "Data", "32K", "0"),
            ("1", "Instruction", "32K", "0"),
            ("2", "Unified", "512K", "0"),
            ("3", "Unified", "32768K", "0-3"),
        ]
    ):
        d = tmp_path / f"index{i}"
        d.mkdir()
        for f, v in (("level", lvl), ("type", kind), ("size", size), ("shared_cpu_list", shared)):
            (d / f).write_text(v + "\n")
    caches = read_caches(tmp_path, cores=4)
    assert caches == {"l1": 4 * 32 * 1024, "l2": 4 * 512 * 1024, "llc": 32 * 1024 * 1024}
    assert read_caches(tmp_path / "absent") == {}


def test_big_gemm_on_h100_is_compute_bound_at_datasheet_peak() -> None:
    n = 8192
    r = node_roofline("matmul", [T(n, n), T(n, n)], None, {}, "h100")
    assert r.bound == "compute"
    assert r.compute_s == pytest.approx(2 * n**3 / 67e12)


def test_elementwise_is_memory_bound() -> None:
    r = node_roofline("add", [T(1 << 26), T(1 << 26)], None, {}, "h100")
    assert r.bound == "memory"
    assert r.memory_s == pytest.approx(3 * 4 * (1 << 26) / 3.35e12)


def test_views_are_free() -> None:
    x = T(4, 768)
    assert node_time("reshape", [x], None, {"shape": (4, 12, 64)}, "h100") == 0.0
    assert node_time("identity", [x], None, {}, "host") == 0.0


@pytest.mark.parametrize("profile", ["host", "h100"])
@pytest.mark.parametrize(("m", "k", "n"), [(64, 768, 3072), (1, 4096, 4096), (512, 64, 64)])
def test_fused_linear_beats_unfused(profile: str, m: int, k: int, n: int) -> None:
    x, w, b, y = T(m, k), T(k, n), T(n), T(m, n)
    fused = node_time("linear", [x, w, b], None, {"act": "gelu"}, profile)
    unfused = (
        node_time("matmul", [x, w], None, {}, profile)
        + node_time("add", [y, b], None, {}, profile)
        + node_time("gelu", [y], None, {}, profile)
    )
    assert fused < unfused


def test_fused_ew_beats_chain() -> None:
    x, y = T(256, 4096), T(256, 4096)
    expr = ("gelu", ("add", ("in", 0), ("in", 1)))
    for prof in ("host", "h100"):
        fused = node_time("ew", [x, y], None, {"expr": expr}, prof)
        chain = node_time("add", [x, y], None, {}, prof) + node_time("gelu", [x], None, {}, prof)
        assert fused < chain


def test_symbols_bound_to_hints() -> None:
    b, s = sympy.Symbol("batch"), sympy.Symbol("seq_len")
    assert symbol_hint(b) == 1
    assert symbol_hint(s) == 128
    assert symbol_hint(b, {"batch": 8}) == 8
    sym = node_time("add", [T(b, s, 768), T(768)], None, {}, "h100")
    concrete = node_time("add", [T(1, 128, 768), T(768)], None, {}, "h100")
    assert sym == pytest.approx(concrete)
    bigger = node_time("add", [T(b, s, 768), T(768)], None, {}, "h100", hints={"batch": 64})
    assert bigger > sym


def test_graph_time_sums_nodes() -> None:
    g = Graph("mlp")
    x = g.add_input("x", (8, 64))
    w = g.add_const(np.ones((64, 32), "float32"), "w")
    h = g.apply("matmul", x, w)
    g.set_outputs(g.apply("relu", h))
    one = node_time("matmul", [T(8, 64), T(64, 32)], None, {}, "host")
    two = node_time("relu", [T(8, 32)], None, {}, "host")
    assert graph_time(g, "host") == pytest.approx(one + two)


@pytest.mark.parametrize("profile", ["host", "h100", "arm_mobile"])
def test_fused_attention_beats_its_parts(profile: str) -> None:
    q = k = v = T(1, 12, 256, 64)
    kt, s = T(1, 12, 64, 256), T(1, 12, 256, 256)
    fused = node_time("attention", [q, k, v], None, {"scale": 0.125}, profile)
    parts = (
        node_time("transpose", [k], None, {"perm": (0, 1, 3, 2)}, profile)
        + node_time("matmul", [q, kt], None, {}, profile)
        + node_time("mul", [s, T()], None, {}, profile)
        + node_time("softmax", [s], None, {}, profile)
        + node_time("matmul", [s, v], None, {}, profile)
    )
    assert fused < parts


@pytest.mark.parametrize("profile", ["host", "h100"])
def test_fused_rms_norm_beats_its_parts(profile: str) -> None:
    x, r, w = T(8, 128, 4096), T(8, 128, 1), T(4096)
    fused = node_time("rms_norm", [x, w], None, {}, profile)
    parts = (
        node_time("mul", [x, x], None, {}, profile)
        + node_time("reduce_mean", [x], None, {"axes": (-1,), "keepdims": 1}, profile)
        + node_time("add", [r, T()], None, {}, profile)
        + node_time("sqrt", [r], None, {}, profile)
        + node_time("div", [x, r], None, {}, profile)
        + node_time("mul", [x, w], None, {}, profile)
    )
    assert fused < parts
