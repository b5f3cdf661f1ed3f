"""Hardware profiles for the cost model: peak FLOP/s, memory bandwidth per level, caches, overhead.

Numbers for shipped profiles come from public datasheets (dense, no sparsity); each constant says
where it comes from. ``host_cpu()`` detects what it can on Linux and falls back to constants
measured on the development machine (an AMD EPYC with AVX2, 2 cores):

- fp32 peak 118 GFLOP/s per core, i.e. 32 FLOP/cycle (8 AVX2 lanes x 2 FMA pipes x 2) at about
  3.7 GHz. ``/proc/cpuinfo``'s "cpu MHz" shows the base clock, so it is not used for the peak.
- DRAM streaming bandwidth about 29 GB/s from one core, about 34 GB/s from two.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from satura.engine.errors import SaturaError

GB, TB = 1e9, 1e12
KiB, MiB = 1024, 1024 * 1024


class HardwareError(SaturaError):
    """An unknown hardware profile name."""


@dataclass(frozen=True)
class HardwareProfile:
    """What the cost model knows of a machine.

    ``peak_flops`` maps a dtype name to FLOP/s for the whole device. ``bandwidth`` maps a memory
    level (``"l1"``, ``"l2"``, ``"llc"``, ``"dram"``) to bytes/s for the whole device, and
    ``cache_bytes`` maps the same cache levels to their total capacity (per-core caches summed over
    cores). ``launch_overhead_s`` is the fixed cost of one kernel: a GPU launch, or a CPU
    parallel-region fork/join and call.
    """

    name: str
    kind: str  # "cpu" or "gpu"
    peak_flops: dict[str, float]
    bandwidth: dict[str, float]
    cache_bytes: dict[str, int]
    cores: int
    vector_bits: int
    launch_overhead_s: float
    notes: str = field(default="", compare=False)

    def peak(self, dtype: str) -> float:
        """Peak FLOP/s for ``dtype``; float32's when the dtype has no entry of its own."""
        return self.peak_flops.get(dtype) or self.peak_flops["float32"]

    def bandwidth_for(self, nbytes: float) -> float:
        """Bandwidth of the smallest memory level whose capacity holds ``nbytes`` (else DRAM)."""
        for level in ("l1", "l2", "llc"):
            cap = self.cache_bytes.get(level)
            if cap and level in self.bandwidth and nbytes <= cap:
                return self.bandwidth[level]
        return self.bandwidth["dram"]


# -- the host ----------------------------------------------------------------------------------
DEV_FREQ_HZ = 3.7e9  # dev machine: 118 GFLOP/s per core / 32 FLOP per cycle
DEV_DRAM_BW_1CORE = 29 * GB
DEV_DRAM_BW_2CORES = 34 * GB
FMA_PIPES = 2  # x86 cores since Haswell/Zen 1 and big Arm cores issue two vector FMAs per cycle


def _cpu_flags(cpuinfo: str) -> set[str]:
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, val = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(val.split())
    return flags


def vector_bits_from_flags(flags: set[str]) -> int:
    """SIMD width in bits from /proc/cpuinfo flags: avx512f 512, avx2 256, else (NEON, SSE) 128."""
    if "avx512f" in flags:
        return 512
    if "avx2" in flags:
        return 256
    return 128  # NEON ("asimd" on AArch64), SSE2; 128 is the floor of every 64-bit target


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _parse_size(text: str) -> int:
    t = text.strip().upper()
    mult = {"K": KiB, "M": MiB, "G": 1024 * MiB}.get(t[-1:], 1)
    return int(t.rstrip("KMGB") or 0) * mult


def read_caches(
    root: Path = Path("/sys/devices/system/cpu/cpu0/cache"), cores: int = 1
) -> dict[str, int]:
    """Data/unified cache capacities from sysfs, totalled over the cores that have one each.

    A cache shared by all cores counts once. Returns {} when sysfs is absent.
    """
    out: dict[str, int] = {}
    if not root.is_dir():
        return out
    for idx in sorted(root.glob("index*")):
        kind, level, size = _read(idx / "type"), _read(idx / "level"), _read(idx / "size")
        if kind == "Instruction" or not level or not size:
            continue
        shared = _read(idx / "shared_cpu_list") or "0"
        sharing = _count_cpus(shared)
        copies = max(1, cores // max(1, sharing))
        name = {"1": "l1", "2": "l2"}.get(level, "llc")
        out[name] = out.get(name, 0) + _parse_size(size) * copies
    return out


def _count_cpus(cpu_list: str) -> int:
    n = 0
    for part in cpu_list.split(","):
        lo, _, hi = part.partition("-")
        if lo.strip():
            n += (int(hi) - int(lo) + 1) if hi else 1
    return n


@functools.cache
def host_cpu() -> HardwareProfile:
    """The machine satura runs on, detected (once per process) from os.cpu_count, /proc/cpuinfo
    and sysfs.

    Peak = cores x clock x FMA lanes, with the clock from cpufreq's max when available and the dev
    machine's 3.7 GHz otherwise. Caches default to 32 KiB L1, 512 KiB L2 per core, 32 MiB LLC.
    """
    cores = os.cpu_count() or 1
    flags = _cpu_flags(_read(Path("/proc/cpuinfo")) or "")
    vbits = vector_bits_from_flags(flags)
    khz = _read(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq"))
    freq = int(khz) * 1e3 if khz and khz.isdigit() else DEV_FREQ_HZ
    fp32_per_cycle = 2 * FMA_PIPES * vbits // 32
    fp32 = cores * freq * fp32_per_cycle
    caches = {"l1": 32 * KiB * cores, "l2": 512 * KiB * cores, "llc": 32 * MiB}
    caches.update(read_caches(cores=cores))
    # Caches: 64 B/cycle L1 loads, 32 B/cycle L2, 16 B/cycle LLC per core (Zen/Skylake-class).
    # DRAM: the dev machine's measurements, scaled gently beyond two cores (it saturates).
    dram = DEV_DRAM_BW_1CORE if cores == 1 else DEV_DRAM_BW_2CORES * min(4.0, cores / 2) ** 0.5
    return HardwareProfile(
        name="host",
        kind="cpu",
        peak_flops={
            "float32": fp32,
            "float64": fp32 / 2,
            "float16": fp32,
            "bfloat16": fp32,
            "int8": fp32 * 2,
            "int32": fp32 / 2,
        },
        bandwidth={
            "l1": 64 * freq * cores,
            "l2": 32 * freq * cores,
            "llc": 16 * freq * cores,
            "dram": dram,
        },
        cache_bytes=caches,
        cores=cores,
        vector_bits=vbits,
        launch_overhead_s=1e-6 if cores > 1 else 1e-7,
        notes="detected; fallbacks measured on the dev machine (EPYC, AVX2, 2 cores)",
    )


# -- shipped profiles --------------------------------------------------------------------------
def x86_server() -> HardwareProfile:
    """Intel Xeon Platinum 8480+ (Sapphire Rapids), one socket: 56 cores, AVX-512 + AMX.

    fp32 = 56 x 2.0 GHz x 64 FLOP/cycle = 7.2 TFLOP/s; bf16/int8 through AMX (1024/2048 ops per
    cycle per core). 8 x DDR5-4800 = 307 GB/s. 2 MiB L2 per core, 105 MB LLC.
    """
    fp32 = 56 * 2.0e9 * 64
    return HardwareProfile(
        name="x86_server",
        kind="cpu",
        peak_flops={
            "float32": fp32,
            "float64": fp32 / 2,
            "bfloat16": 56 * 2.0e9 * 1024,
            "float16": 56 * 2.0e9 * 1024,
            "int8": 56 * 2.0e9 * 2048,
        },
        bandwidth={
            "l1": 56 * 2.0e9 * 128,
            "l2": 56 * 2.0e9 * 64,
            "llc": 56 * 2.0e9 * 16,
            "dram": 307 * GB,
        },
        cache_bytes={"l1": 56 * 48 * KiB, "l2": 56 * 2 * MiB, "llc": 105 * MiB},
        cores=56,
        vector_bits=512,
        launch_overhead_s=3e-6,
        notes="Intel Xeon Platinum 8480+ datasheet",
    )


def arm_mobile() -> HardwareProfile:
    """A phone SoC like the Snapdragon 8 Gen 2: 8 Arm cores (1 X3, 4 A715/A710, 3 A510), NEON.

    fp32 about 8 x 2.8 GHz x 16 FLOP/cycle = 358 GFLOP/s; fp16 doubles it.
    LPDDR5X-4200 (8400 MT/s) on a 64-bit bus: 67 GB/s. LLC (system-level + L3) 8 MiB.
    """
    fp32 = 8 * 2.8e9 * 16
    return HardwareProfile(
        name="arm_mobile",
        kind="cpu",
        peak_flops={"float32": fp32, "float16": 2 * fp32, "float64": fp32 / 2, "int8": 4 * fp32},
        bandwidth={
            "l1": 8 * 2.8e9 * 32,
            "l2": 8 * 2.8e9 * 32,
            "llc": 8 * 2.8e9 * 8,
            "dram": 67 * GB,
        },
        cache_bytes={"l1": 8 * 64 * KiB, "l2": 8 * 512 * KiB, "llc": 8 * MiB},
        cores=8,
        vector_bits=128,
        launch_overhead_s=5e-6,
        notes="Snapdragon 8 Gen 2 class",
    )


def jetson_orin() -> HardwareProfile:
    """NVIDIA Jetson AGX Orin 64GB GPU: 2048 CUDA cores (16 SMs) at 1.3 GHz, 64 tensor cores.

    fp32 5.3 TFLOP/s; fp16 tensor 42.5 TFLOP/s dense (170 sparse INT8 TOPS / 4); int8 85 TOPS
    dense. LPDDR5 204.8 GB/s, 4 MiB L2.
    """
    return HardwareProfile(
        name="jetson_orin",
        kind="gpu",
        peak_flops={
            "float32": 5.3 * TB,
            "float16": 42.5 * TB,
            "bfloat16": 42.5 * TB,
            "int8": 85 * TB,
            "float64": 5.3 * TB / 32,
        },
        bandwidth={"l2": 1.3 * TB, "dram": 204.8 * GB},
        cache_bytes={"l2": 4 * MiB},
        cores=16,
        vector_bits=1024,
        launch_overhead_s=1e-5,
        notes="Jetson AGX Orin series datasheet",
    )


def h100() -> HardwareProfile:
    """NVIDIA H100 SXM5 80GB: 132 SMs. fp32 67 TFLOP/s, tf32 495, fp16/bf16 989, fp8 1979 dense.

    HBM3 3.35 TB/s, 50 MB L2 (about 10 TB/s, a measured-class estimate).
    """
    return HardwareProfile(
        name="h100",
        kind="gpu",
        peak_flops={
            "float32": 67 * TB,
            "tf32": 494.7 * TB,
            "float16": 989.4 * TB,
            "bfloat16": 989.4 * TB,
            "float8": 1978.9 * TB,
            "int8": 1978.9 * TB,
            "float64": 67 * TB,
        },
        bandwidth={"l2": 10 * TB, "dram": 3.35 * TB},
        cache_bytes={"l2": 50 * MiB},
        cores=132,
        vector_bits=1024,
        launch_overhead_s=4e-6,
        notes="NVIDIA H100 Tensor Core GPU datasheet (SXM5)",
    )


def h200() -> HardwareProfile:
    """NVIDIA H200 SXM 141GB: H100's compute with HBM3e at 4.8 TB/s."""
    return replace(
        h100(),
        name="h200",
        bandwidth={"l2": 10 * TB, "dram": 4.8 * TB},
        notes="NVIDIA H200 Tensor Core GPU datasheet",
    )


def mi300x() -> HardwareProfile:
    """AMD Instinct MI300X: 304 CUs. fp32 81.7 TFLOP/s vector (163.4 matrix), fp16/bf16 1307.4,
    fp8 2614.9 dense. HBM3 5.3 TB/s; 256 MB Infinity Cache (17.2 TB/s peak), 4 MB L2 per XCD.
    """
    return HardwareProfile(
        name="mi300x",
        kind="gpu",
        peak_flops={
            "float32": 163.4 * TB,
            "float16": 1307.4 * TB,
            "bfloat16": 1307.4 * TB,
            "float8": 2614.9 * TB,
            "int8": 2614.9 * TB,
            "float64": 163.4 * TB,
        },
        bandwidth={"l2": 17.2 * TB, "llc": 17.2 * TB, "dram": 5.3 * TB},
        cache_bytes={"l2": 32 * MiB, "llc": 256 * MiB},
        cores=304,
        vector_bits=2048,
        launch_overhead_s=5e-6,
        notes="AMD Instinct MI300X datasheet",
    )


PROFILES: dict[str, Callable[[], HardwareProfile]] = {
    "host": host_cpu,
    "cpu": host_cpu,
    "x86_server": x86_server,
    "arm_mobile": arm_mobile,
    "jetson_orin": jetson_orin,
    "h100": h100,
    "h200": h200,
    "mi300x": mi300x,
}


def get_profile(name: str | HardwareProfile) -> HardwareProfile:
    """The shipped profile called ``name`` (``host``/``cpu`` detect this machine).

    A :class:`HardwareProfile` is returned as it is. Raises HardwareError for an unknown name.
    """
    if isinstance(name, HardwareProfile):
        return name
    try:
        return PROFILES[name]()
    except KeyError:
        raise HardwareError(
            f"unknown hardware profile '{name}' (known: {', '.join(sorted(PROFILES))})"
        ) from None
