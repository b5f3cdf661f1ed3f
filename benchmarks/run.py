"""Time satura's CPU target against onnxruntime, torch and numpy: kernels and example models.

Two kinds of workload, each run by every system with the same thread count:

* kernels (the issue's list): a satura graph built in code next to the same computation as an
  ONNX model, a numpy and a torch function;
* the example models of ``examples/models.py`` end to end at batch 1 and 8: satura runs
  ``satura.optimize(satura.load(model)).graph``, compiled for the inputs' shapes (the static
  variant a SpecializingModel makes, timed directly); onnxruntime (all graph optimizations) runs
  the original model; torch eager and ``torch.compile`` run the same architecture with the same
  weights (``examples/torch_models.py``) where torch is installed, and a failure prints its reason
  in the table.

Each time is the median of many repeats with the systems taking turns, so a change in the load
of the (shared) machine hits all alike. One table per thread count: medians in ms, ``ort/sat`` =
onnxruntime time / satura time (above 1: satura is faster), ``max Δ`` = largest difference of
satura's outputs from onnxruntime's (relative to the largest output magnitude, at least 1),
``py pool`` = satura with its Python thread pool instead of the default native one (two threads
and more), and ``roof`` = satura time / roofline floor for the kernels, where floor =
max(flops / peak, compulsory bytes / bandwidth): peak is the fp32 FLOP/s of a generated loop of
independent vector FMAs, bandwidth that of a numpy copy, both measured at the start of each table
with as many threads. The flops are the operation's direct count: a kernel that does fewer
multiplications (the Winograd convolution: 2.25x fewer) shows a roof below 1. ``compile s`` is
satura's compile time in this process (small when the same machine code was already built for
the other thread count).

    python -m benchmarks.run [--threads 1,2] [--quick] [--only ew,gpt2_block,...] [--list]
    python -m benchmarks.run --model model.onnx [--dim batch=8 --dim seq=128]   # any ONNX file
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import math
import os
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from onnx import TensorProto, helper, numpy_helper
from satura.engine.graph import Graph
from satura.targets import compile_graph

ERF_GELU = ("gelu", ("in", 0))


@dataclass
class Workload:
    name: str
    graph: Graph
    feeds: dict[str, np.ndarray]
    onnx_model: bytes | None
    numpy_fn: Callable[[], Any] | None = None
    torch_fn: Callable[[], Any] | None = None
    flops: float = 0.0
    key: str = ""


def compulsory_bytes(g: Graph) -> int:
    """Bytes a kernel must move at least: its inputs, constants and outputs, once each."""
    ends = {id(v) for v in [*g.inputs, *g.outputs]}
    seen: dict[int, int] = {}
    for v in [*g.inputs, *g.outputs, *(x for n in g.nodes for x in n.inputs if x is not None)]:
        if id(v) in ends or v.is_const:
            seen[id(v)] = int(np.prod([int(d) for d in v.type.shape])) * v.type.itemsize
    return sum(seen.values())


def _onnx(
    nodes: list[Any],
    inputs: dict[str, np.ndarray],
    output: str | list[str],
    inits: dict[str, np.ndarray],
) -> bytes:
    """An opset-17 model of float inputs and outputs (``output``: one name or several)."""
    outputs = [output] if isinstance(output, str) else output
    model = helper.make_model(
        helper.make_graph(
            nodes,
            "bench",
            [
                helper.make_tensor_value_info(k, TensorProto.FLOAT, v.shape)
                for k, v in inputs.items()
            ],
            [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
            [numpy_helper.from_array(v, k) for k, v in inits.items()],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
        ir_version=9,
    )
    return model.SerializeToString()


def _onnx_gelu(src: str, dst: str, tag: str) -> tuple[list[Any], dict[str, np.ndarray]]:
    """x·0.5·(1 + erf(x/√2)), the form exporters write (onnxruntime fuses it into Gelu)."""
    c = {
        f"{tag}_sqrt2": np.array(math.sqrt(2.0), np.float32),
        f"{tag}_one": np.array(1.0, np.float32),
        f"{tag}_half": np.array(0.5, np.float32),
    }
    nodes = [
        helper.make_node("Div", [src, f"{tag}_sqrt2"], [f"{tag}_d"]),
        helper.make_node("Erf", [f"{tag}_d"], [f"{tag}_e"]),
        helper.make_node("Add", [f"{tag}_e", f"{tag}_one"], [f"{tag}_a"]),
        helper.make_node("Mul", [src, f"{tag}_a"], [f"{tag}_m"]),
        helper.make_node("Mul", [f"{tag}_m", f"{tag}_half"], [dst]),
    ]
    return nodes, c


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        return None
    return torch


def w_elementwise(rng: np.random.Generator) -> Workload:
    x = rng.standard_normal((4096, 1024)).astype(np.float32)
    w, b = (rng.standard_normal(1024).astype(np.float32) for _ in range(2))
    g = Graph("ew")
    xv = g.add_input("x", x.shape)
    out = g.apply(
        "ew",
        xv,
        g.add_const(w, "w"),
        g.add_const(b, "b"),
        expr=("gelu", ("add", ("mul", ("in", 0), ("in", 1)), ("in", 2))),
    )
    g.set_outputs(out)
    nodes, c = _onnx_gelu("t1", "y", "g")
    model = _onnx(
        [
            helper.make_node("Mul", ["x", "w"], ["t0"]),
            helper.make_node("Add", ["t0", "b"], ["t1"]),
            *nodes,
        ],
        {"x": x},
        "y",
        {"w": w, "b": b, **c},
    )
    torch = _torch()
    tf = None
    if torch is not None:
        tx, tw, tb = (torch.from_numpy(a) for a in (x, w, b))

        def tf() -> Any:
            return torch.nn.functional.gelu(tx * tw + tb)

    return Workload("gelu(x*w+b) 4M", g, {"x": x}, model, None, tf, key="ew")


def w_layernorm_gelu(rng: np.random.Generator, batch: int = 8) -> Workload:
    x = rng.standard_normal((batch * 128, 768)).astype(np.float32)
    s, b = rng.standard_normal(768).astype(np.float32), rng.standard_normal(768).astype(np.float32)
    g = Graph("lngelu")
    xv = g.add_input("x", x.shape)
    ln = g.apply("layer_norm", xv, g.add_const(s, "s"), g.add_const(b, "b"))
    g.set_outputs(g.apply("gelu", ln))
    nodes, c = _onnx_gelu("ln", "y", "g")
    model = _onnx(
        [
            helper.make_node("LayerNormalization", ["x", "s", "b"], ["ln"], axis=-1, epsilon=1e-5),
            *nodes,
        ],
        {"x": x},
        "y",
        {"s": s, "b": b, **c},
    )
    torch = _torch()
    tf = None
    if torch is not None:
        tx, ts, tb = (torch.from_numpy(a) for a in (x, s, b))

        def tf() -> Any:
            return torch.nn.functional.gelu(torch.nn.functional.layer_norm(tx, (768,), ts, tb))

    return Workload(
        f"LayerNorm+GELU [{batch}*128,768]", g, {"x": x}, model, None, tf, key="ln_gelu"
    )


def w_mlp(rng: np.random.Generator, rows: int = 256) -> Workload:
    x = rng.standard_normal((rows, 768)).astype(np.float32)
    w1 = (rng.standard_normal((768, 3072)) * 0.03).astype(np.float32)
    w2 = (rng.standard_normal((3072, 768)) * 0.03).astype(np.float32)
    b1 = rng.standard_normal(3072).astype(np.float32)
    b2 = rng.standard_normal(768).astype(np.float32)
    g = Graph("mlp")
    xv = g.add_input("x", x.shape)
    h = g.apply("linear", xv, g.add_const(w1, "w1"), g.add_const(b1, "b1"), act="gelu")
    g.set_outputs(g.apply("linear", h, g.add_const(w2, "w2"), g.add_const(b2, "b2")))
    nodes, c = _onnx_gelu("h1", "h", "g")
    model = _onnx(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h0"]),
            helper.make_node("Add", ["h0", "b1"], ["h1"]),
            *nodes,
            helper.make_node("MatMul", ["h", "w2"], ["y0"]),
            helper.make_node("Add", ["y0", "b2"], ["y"]),
        ],
        {"x": x},
        "y",
        {"w1": w1, "w2": w2, "b1": b1, "b2": b2, **c},
    )
    torch = _torch()
    tf = None
    if torch is not None:
        tx, tw1, tw2, tb1, tb2 = (torch.from_numpy(a) for a in (x, w1, w2, b1, b2))

        def tf() -> Any:
            return torch.nn.functional.gelu(tx @ tw1 + tb1) @ tw2 + tb2

    return Workload(
        f"MLP 768-3072-768 [{rows},768]",
        g,
        {"x": x},
        model,
        None,
        tf,
        flops=2.0 * rows * 768 * 3072 * 2,
        key="mlp_kernel",
    )


def w_attention(
    rng: np.random.Generator, seq: int, heads: int = 8, causal: bool = False
) -> Workload:
    """softmax(q·kᵀ·scale)·v over [1, heads, seq, 64]; ``causal``: a constant tril mask applied
    by where (the form torch exports), which satura runs as the kernel's causal flag."""
    q, k, v = (rng.standard_normal((1, heads, seq, 64)).astype(np.float32) for _ in range(3))
    keep = np.tril(np.ones((seq, seq), bool))
    g = Graph("attn")
    qv, kv, vv = (g.add_input(n, q.shape) for n in "qkv")
    masks = (g.add_const(keep, "keep"),) if causal else ()
    fill = {"mask_fill": float("-inf")} if causal else {}
    g.set_outputs(g.apply("attention", qv, kv, vv, *masks, scale=0.125, **fill))
    scores = "s1"
    nodes = [
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["q", "kt"], ["s0"]),
        helper.make_node("Mul", ["s0", "scale"], ["s1"]),
    ]
    inits = {"scale": np.array(0.125, np.float32)}
    if causal:
        nodes.append(helper.make_node("Where", ["keep", "s1", "ninf"], ["s2"]))
        inits |= {"keep": keep, "ninf": np.array(-np.inf, np.float32)}
        scores = "s2"
    nodes += [
        helper.make_node("Softmax", [scores], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "v"], ["y"]),
    ]
    model = _onnx(nodes, {"q": q, "k": k, "v": v}, "y", inits)
    additive = np.where(keep, 0.0, -np.inf).astype(np.float32) if causal else np.float32(0.0)

    def nf() -> Any:
        s = (q @ np.swapaxes(k, -1, -2)) * np.float32(0.125) + additive
        e = np.exp(s - s.max(-1, keepdims=True))
        return (e / e.sum(-1, keepdims=True)) @ v

    torch = _torch()
    tf = None
    if torch is not None:
        tq, tk, tv = (torch.from_numpy(a) for a in (q, k, v))

        def tf() -> Any:
            return torch.nn.functional.scaled_dot_product_attention(
                tq, tk, tv, scale=0.125, is_causal=causal
            )

    return Workload(
        f"{'causal ' if causal else ''}attention s={seq} h={heads} d=64",
        g,
        {"q": q, "k": k, "v": v},
        model,
        nf,
        tf,
        flops=4.0 * heads * seq * seq * 64,
        key=f"attention{seq}{'c' if causal else ''}",
    )


def w_decode(
    rng: np.random.Generator, hidden: int = 768, heads: int = 12, past: int = 255
) -> Workload:
    """One decoder step with a KV cache, GPT-2 small's widths: a token ``x[1, 1, H]`` and the cache
    ``past_k``/``past_v[1, heads, past, 64]`` in; the block's output and the grown cache out.
    Its 28 MB of weights are read once per step: a matrix-vector product bound by bandwidth."""
    h, d = hidden, hidden // heads
    x = rng.standard_normal((1, 1, h)).astype(np.float32)
    pk, pv = (rng.standard_normal((1, heads, past, d)).astype(np.float32) for _ in range(2))
    wt = {
        n: (rng.standard_normal(shape) * 0.03).astype(np.float32)
        for n, shape in (
            ("wqkv", (h, 3 * h)),
            ("wo", (h, h)),
            ("w1", (h, 4 * h)),
            ("w2", (4 * h, h)),
        )
    }
    bs = {f"b{n[1:]}": rng.standard_normal(wt[n].shape[1]).astype(np.float32) * 0.1 for n in wt}
    ln = {n: np.ones(h, np.float32) for n in ("g1", "g2")} | {
        n: np.zeros(h, np.float32) for n in ("be1", "be2")
    }
    gelu, gc = _onnx_gelu("f1", "f", "g")
    heads_shape, merge = np.array([1, 1, heads, d]), np.array([1, 1, h])
    mk = helper.make_node
    nodes = [
        mk("LayerNormalization", ["x", "g1", "be1"], ["h1"], axis=-1, epsilon=1e-5),
        mk("MatMul", ["h1", "wqkv"], ["qkv0"]),
        mk("Add", ["qkv0", "bqkv"], ["qkv"]),
        mk("Split", ["qkv", "split3"], ["q0", "k0", "v0"], axis=2),
        *(mk("Reshape", [f"{t}0", "heads_shape"], [f"{t}1"]) for t in "qkv"),
        *(mk("Transpose", [f"{t}1"], [f"{t}2"], perm=[0, 2, 1, 3]) for t in "qkv"),
        mk("Concat", ["past_k", "k2"], ["present_k"], axis=2),
        mk("Concat", ["past_v", "v2"], ["present_v"], axis=2),
        mk("Transpose", ["present_k"], ["kt"], perm=[0, 1, 3, 2]),
        mk("MatMul", ["q2", "kt"], ["s0"]),
        mk("Mul", ["s0", "scale"], ["s1"]),
        mk("Softmax", ["s1"], ["p"], axis=-1),
        mk("MatMul", ["p", "present_v"], ["a0"]),
        mk("Transpose", ["a0"], ["a1"], perm=[0, 2, 1, 3]),
        mk("Reshape", ["a1", "merge"], ["a2"]),
        mk("MatMul", ["a2", "wo"], ["o0"]),
        mk("Add", ["o0", "bo"], ["o1"]),
        mk("Add", ["x", "o1"], ["x1"]),
        mk("LayerNormalization", ["x1", "g2", "be2"], ["h2"], axis=-1, epsilon=1e-5),
        mk("MatMul", ["h2", "w1"], ["f0"]),
        mk("Add", ["f0", "b1"], ["f1"]),
        *gelu,
        mk("MatMul", ["f", "w2"], ["m0"]),
        mk("Add", ["m0", "b2"], ["m1"]),
        mk("Add", ["x1", "m1"], ["y"]),
    ]
    inits = {
        **wt,
        **bs,
        **ln,
        **gc,
        "split3": np.array([h] * 3),
        "heads_shape": heads_shape,
        "merge": merge,
        "scale": np.array(1.0 / math.sqrt(d), np.float32),
    }
    feeds = {"x": x, "past_k": pk, "past_v": pv}
    model = _onnx(nodes, feeds, ["y", "present_k", "present_v"], inits)
    import onnx

    import satura

    graph = satura.optimize(satura.load(onnx.load_from_string(model))).graph
    torch = _torch()
    tf = None
    if torch is not None:
        fn = torch.nn.functional
        t = {k: torch.from_numpy(v) for k, v in {**inits, **feeds}.items()}

        def tf() -> Any:
            with torch.no_grad():
                x0 = t["x"]
                qkv = fn.layer_norm(x0, (h,), t["g1"], t["be1"], 1e-5) @ t["wqkv"] + t["bqkv"]
                q, k, v = (z.view(1, 1, heads, d).transpose(1, 2) for z in qkv.split(h, -1))
                k, v = torch.cat([t["past_k"], k], 2), torch.cat([t["past_v"], v], 2)
                a = fn.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(1, 1, h)
                x1 = x0 + a @ t["wo"] + t["bo"]
                f = fn.gelu(fn.layer_norm(x1, (h,), t["g2"], t["be2"], 1e-5) @ t["w1"] + t["b1"])
                return x1 + f @ t["w2"] + t["b2"], k, v

    return Workload(
        f"decode step H={hidden} past={past}",
        graph,
        feeds,
        model,
        None,
        tf,
        flops=2.0 * 12 * h * h + 4.0 * heads * (past + 1) * d,
        key="decode",
    )


def w_conv(rng: np.random.Generator) -> Workload:
    x = rng.standard_normal((1, 64, 56, 56)).astype(np.float32)
    w = (rng.standard_normal((64, 64, 3, 3)) * 0.05).astype(np.float32)
    g = Graph("conv")
    xv = g.add_input("x", x.shape)
    g.set_outputs(g.apply("conv", xv, g.add_const(w, "w"), pads=(1, 1, 1, 1)))
    model = _onnx(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], {"x": x}, "y", {"w": w}
    )
    torch = _torch()
    tf = None
    if torch is not None:
        tx, tw = torch.from_numpy(x), torch.from_numpy(w)

        def tf() -> Any:
            return torch.nn.functional.conv2d(tx, tw, padding=1)

    return Workload(
        "conv3x3 64->64 56x56",
        g,
        {"x": x},
        model,
        None,
        tf,
        flops=2.0 * 64 * 64 * 9 * 56 * 56,
        key="conv",
    )


def w_gemm(rng: np.random.Generator, n: int = 1024) -> Workload:
    a, b = (rng.standard_normal((n, n)).astype(np.float32) for _ in range(2))
    g = Graph("gemm")
    av, bv = g.add_input("a", a.shape), g.add_input("b", b.shape)
    g.set_outputs(g.apply("matmul", av, bv))
    model = _onnx([helper.make_node("MatMul", ["a", "b"], ["y"])], {"a": a, "b": b}, "y", {})
    torch = _torch()
    tf = None
    if torch is not None:
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)

        def tf() -> Any:
            return ta @ tb

    return Workload(
        f"GEMM {n}^3", g, {"a": a, "b": b}, model, lambda: a @ b, tf, flops=2.0 * n**3, key="gemm"
    )


def median_time(fn: Callable[[], Any], budget: float, min_reps: int = 5) -> float:
    """Median seconds of ``fn`` over repeats filling about ``budget`` seconds (after a warm-up)."""
    return median_times({"f": fn}, budget, min_reps)["f"]


def median_times(
    fns: dict[str, Callable[[], Any]],
    budget: float,
    min_reps: int = 5,
    rounds: int = 11,
    settle: float = 0.1,
) -> dict[str, float]:
    """Median seconds of each function. The systems take turns in ``rounds`` blocks of repeats:
    a change in the machine's load (other jobs on the shared cores) hits every system alike.
    (This machine is a VM whose cores other tenants share: whole blocks of tens of ms run at
    half speed at times; with 11 short blocks such a stretch moves no system's median far.)
    Before each block the script sleeps ``settle`` seconds: onnxruntime's and OpenMP's worker
    threads keep spinning after a call returns (onnxruntime's for ~40 ms, measured here), and
    would take a core from the next block's system (whichever satura pool ran right after
    onnxruntime's block was 2-4x slower at two threads)."""
    one = 0.0
    for fn in fns.values():
        fn()
        t0 = time.perf_counter()
        fn()
        one += max(time.perf_counter() - t0, 1e-7)
    reps = max(min_reps, min(2000, int(budget * len(fns) / one)))
    per = max(1, -(-reps // rounds))
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            time.sleep(settle)  # the previous system's worker threads stop spinning, then sleep
            fn()
            for _ in range(per):
                t = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def _set_blas_threads(n: int) -> None:
    for lib in glob.glob(
        os.path.join(os.path.dirname(np.__file__), "..", "numpy.libs", "libscipy_openblas*.so")
    ):
        ctypes.CDLL(lib).scipy_openblas_set_num_threads64_(n)


def _fma_loop(lanes: int, chains: int = 12) -> Callable[[int], None]:
    """A JIT-compiled loop of ``chains`` independent vector FMAs a turn: ``fn(turns)``."""
    from satura.targets import codegen

    vty = f"<{lanes} x float>"

    def splat(x: str) -> str:
        return "<" + ", ".join([f"float {x}"] * lanes) + ">"

    ir = [
        "define void @sat_fma_peak(i64 %n, ptr %out) {",
        "entry:",
        "  br label %l",
        "l:",
        "  %i = phi i64 [0, %entry], [%in, %l]",
    ]
    ir += [f"  %a{j} = phi {vty} [{splat('1.0')}, %entry], [%b{j}, %l]" for j in range(chains)]
    ir += [
        f"  %b{j} = call {vty} @llvm.fma.v{lanes}f32({vty} %a{j}, {vty} {splat('0.5')}, "
        f"{vty} {splat('0.25')})"
        for j in range(chains)
    ]
    ir += [
        "  %in = add i64 %i, 1",
        "  %more = icmp ult i64 %in, %n",
        "  br i1 %more, label %l, label %x",
        "x:",
    ]
    acc = "%b0"
    for j in range(1, chains):  # every chain feeds the stored result: none is dead code
        ir.append(f"  %s{j} = fadd {vty} {acc}, %b{j}")
        acc = f"%s{j}"
    ir += [
        f"  store {vty} {acc}, ptr %out, align 4",
        "  ret void",
        "}",
        f"declare {vty} @llvm.fma.v{lanes}f32({vty}, {vty}, {vty})",
    ]
    jit = codegen.JitModule(codegen.emit_object(codegen.optimize_ir("\n".join(ir))))
    fn = ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_void_p)(jit.address("sat_fma_peak"))
    out = np.zeros(lanes, np.float32)
    return lambda n: fn(n, out.ctypes.data)


def fma_peak(threads: int, budget: float) -> float:
    """fp32 FLOP/s of ``threads`` cores running independent FMA chains (each in its own Python
    thread; the ctypes call releases the GIL): the compute roof of the ``roof`` column."""
    from concurrent.futures import ThreadPoolExecutor

    from satura.targets import codegen

    lanes, chains = codegen.host_target().lanes, 12
    loop = _fma_loop(lanes, chains)
    turns = 1 << 16
    t0 = time.perf_counter()
    loop(turns)
    turns = max(turns, int(turns * budget / 5 / max(time.perf_counter() - t0, 1e-6)))
    with ThreadPoolExecutor(threads) as pool:
        secs = median_time(lambda: list(pool.map(loop, [turns] * threads)), budget)
    return threads * turns * chains * 2 * lanes / secs


def copy_bandwidth(threads: int, budget: float, nbytes: int = 64 << 20) -> float:
    """DRAM bytes/s of a numpy copy of ``nbytes`` split over ``threads`` Python threads (numpy
    releases the GIL while it copies). A copy moves each byte three times: the read, the read
    of the destination line before the write (a normal store), the write."""
    src = np.ones(nbytes // 4, np.float32)
    dst = np.empty_like(src)
    parts = np.array_split(np.arange(src.size), threads)
    bounds = [(int(p[0]), int(p[-1]) + 1) for p in parts]
    if threads == 1:

        def copy() -> None:
            np.copyto(dst, src)
    else:
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(threads)

        def copy() -> None:
            list(pool.map(lambda b: np.copyto(dst[b[0] : b[1]], src[b[0] : b[1]]), bounds))

    return 3 * nbytes / median_time(copy, budget)


# -- the example models ----------------------------------------------------------------------------
@dataclass
class ModelCase:
    """One model at one set of input shapes, with everything each system needs to run it."""

    name: str
    batch: int
    proto: Any  # onnx.ModelProto
    graph: Graph  # satura.optimize(satura.load(proto)).graph
    feeds: dict[str, np.ndarray]
    optimize_seconds: float
    report: Any = None  # the saturation Report of satura.optimize
    label: str = ""  # the table's name column (default: "NAME batch B")
    example: bool = True  # an example architecture (torch can run its twin)

    @property
    def key(self) -> str:
        return f"{self.name}@{self.batch}"


def model_cases(names: list[str], batches: tuple[int, ...]) -> list[ModelCase]:
    """Load and optimize each example once; one case per batch size."""
    import satura
    from examples.models import EXAMPLES, example_inputs

    cases = []
    for name in names:
        proto = EXAMPLES[name]()
        t0 = time.perf_counter()
        res = satura.optimize(satura.load(proto))
        secs = time.perf_counter() - t0
        for b in batches:
            feeds = example_inputs(name, batch=b)
            cases.append(ModelCase(name, b, proto, res.graph, feeds, secs, res.report))
    return cases


def synthetic_inputs(proto: Any, dims: dict[str, int], seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs for any ONNX model: standard normal floats, ones for integers (a valid index and an
    all-ones attention mask), True for bools. Symbolic dimensions take their size from ``dims``;
    one that is missing raises ValueError naming the input and the dimension."""
    from onnx import helper as onnx_helper

    rng = np.random.default_rng(seed)
    consts = {t.name for t in proto.graph.initializer}
    feeds: dict[str, np.ndarray] = {}
    for vi in proto.graph.input:
        if vi.name in consts:
            continue
        tt = vi.type.tensor_type
        shape = []
        for i, d in enumerate(tt.shape.dim):
            if d.HasField("dim_value"):
                shape.append(d.dim_value)
            elif d.dim_param in dims:
                shape.append(dims[d.dim_param])
            else:
                what = f"'{d.dim_param}'" if d.dim_param else "unnamed"
                raise ValueError(
                    f"input '{vi.name}': dimension {i} is {what} and symbolic; "
                    f"bind it with --dim {d.dim_param or 'NAME'}=SIZE"
                )
        dtype = np.dtype(onnx_helper.tensor_dtype_to_np_dtype(tt.elem_type))
        if dtype.kind == "f":
            feeds[vi.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[vi.name] = np.ones(shape, dtype)
    return feeds


def file_cases(paths: list[str], dims: dict[str, int]) -> list[ModelCase]:
    """One case per ONNX file, its inputs from :func:`synthetic_inputs` (``batch`` is the
    ``batch`` dim when given, else 0)."""
    import onnx

    import satura

    cases = []
    for path in paths:
        proto = onnx.load(path)
        feeds = synthetic_inputs(proto, dims)
        t0 = time.perf_counter()
        try:
            res = satura.optimize(satura.load(proto))
        except satura.SaturaError as e:
            raise ValueError(f"--model {path}: {e}") from None
        name = os.path.splitext(os.path.basename(path))[0]
        shapes = ", ".join(f"{list(a.shape)}" for a in feeds.values())
        cases.append(
            ModelCase(
                name,
                dims.get("batch", 0),
                proto,
                res.graph,
                feeds,
                time.perf_counter() - t0,
                res.report,
                label=f"{name} {shapes}"[:30],
                example=False,
            )
        )
    return cases


def _torch_model(case: ModelCase, compiled: bool) -> tuple[Callable[[], Any] | None, str]:
    """(torch forward, '') or (None, why not): eager or torch.compile, the example's weights."""
    torch = _torch()
    if torch is None:
        return None, "torch not installed"
    if not case.example:
        return None, "not an example architecture"
    try:
        from examples.torch_models import build, load_onnx_weights

        with warnings.catch_warnings():  # torch warns of the read-only onnx weight arrays
            warnings.simplefilter("ignore", UserWarning)
            module = load_onnx_weights(build(case.name), case.proto)
        ins = tuple(torch.from_numpy(a) for a in case.feeds.values())
        fwd = torch.compile(module) if compiled else module

        def fn() -> Any:
            with torch.no_grad():
                return fwd(*ins)

        fn()  # compiles (torch.compile) and checks it runs
        return fn, ""
    except Exception as e:  # reported in the table, never fatal
        why = " ".join(f"{type(e).__name__}: {e}".split())
        return None, why[:70]


# -- one table per thread count -----------------------------------------------------------------
@dataclass
class Row:
    key: str
    name: str
    times: dict[str, float]  # system -> median seconds
    notes: dict[str, str]  # system -> why it has no time
    max_diff: float  # satura vs onnxruntime, relative to max(1, |ort|max)
    compile_seconds: float
    fallback: list[str]
    roof: float = math.nan  # satura time / roofline floor (kernels)

    @property
    def ratio(self) -> float:
        return self.times.get("ort", math.nan) / self.times["satura"]


def _ort_session(model: bytes, threads: int) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def _max_diff(got: dict[str, np.ndarray], sess: Any, ref: list[np.ndarray]) -> float:
    names = [o.name for o in sess.get_outputs()]
    vals = list(got.values())
    worst = 0.0
    for i, (n, r) in enumerate(zip(names, ref, strict=True)):
        a = got[n] if n in got else vals[i]
        scale = max(1.0, float(np.max(np.abs(r))) if r.size else 1.0)
        worst = max(
            worst, float(np.max(np.abs(a.astype(np.float64) - r))) / scale if r.size else 0.0
        )
    return worst


def _satura_fns(
    model: Any, feeds: dict[str, np.ndarray], threads: int
) -> dict[str, Callable[[], Any]]:
    """satura with its default (native) thread pool, and with the Python pool when threads > 1."""

    def native() -> Any:
        model.native_threads = True
        return model(**feeds)

    def python_pool() -> Any:
        model.native_threads = False
        return model(**feeds)

    return {"satura": native, **({"py pool": python_pool} if threads > 1 else {})}


def kernel_row(w: Workload, threads: int, budget: float, peak: float, bw: float) -> Row:
    model = compile_graph(w.graph, threads=threads)
    sess = _ort_session(w.onnx_model, threads)
    diff = _max_diff(model(**w.feeds), sess, sess.run(None, w.feeds))
    fns = _satura_fns(model, w.feeds, threads)
    fns["ort"] = lambda: sess.run(None, w.feeds)
    if w.numpy_fn:
        fns["numpy"] = w.numpy_fn
    if w.torch_fn:
        fns["torch"] = w.torch_fn
    med = median_times(fns, budget)
    floor = max(w.flops / peak, compulsory_bytes(w.graph) / bw)
    return Row(
        w.key,
        w.name,
        med,
        {},
        diff,
        model.compile_seconds,
        model.fallback_nodes,
        med["satura"] / floor,
    )


def model_row(case: ModelCase, threads: int, budget: float, torch_compile: bool) -> Row:
    from satura.targets.specialize import SpecializingModel

    t0 = time.perf_counter()
    spec = compile_graph(case.graph, threads=threads)
    model = spec.variant(case.feeds) if isinstance(spec, SpecializingModel) else spec
    compile_s = time.perf_counter() - t0
    sess = _ort_session(case.proto.SerializeToString(), threads)
    diff = _max_diff(model(**case.feeds), sess, sess.run(None, case.feeds))
    fns = _satura_fns(model, case.feeds, threads)
    fns["ort"] = lambda: sess.run(None, case.feeds)
    notes: dict[str, str] = {}
    systems = [("torch", False)] + ([("t.compile", True)] if torch_compile else [])
    for label, compiled in systems:
        fn, why = _torch_model(case, compiled)
        if fn is not None:
            fns[label] = fn
        else:
            notes[label] = why
    if not torch_compile:
        notes["t.compile"] = "skipped (--quick / --no-torch-compile)"
    med = median_times(fns, budget)
    return Row(
        case.key,
        case.label or f"{case.name} batch {case.batch}",
        med,
        notes,
        diff,
        compile_s,
        model.fallback_nodes,
    )


COLS = [
    ("satura", 9),
    ("py pool", 9),
    ("ort", 9),
    ("ort/sat", 7),
    ("torch", 9),
    ("t.compile", 9),
    ("numpy", 9),
    ("roof", 6),
    ("max Δ", 7),
    ("compile s", 9),
]


def format_table(threads: int, rows: list[Row], bw: float, peak: float) -> str:
    """One markdown table; notes (why a system has no time) and fallbacks follow it."""
    out = [
        f"\n## {threads} thread(s): median ms; ort/sat = onnxruntime / satura (>1: satura "
        f"faster); roof = satura / max(flops / {peak / 1e9:.0f} GFLOP/s FMA peak, "
        f"bytes / {bw / 1e9:.1f} GB/s DRAM bandwidth of a numpy copy)"
    ]
    head = f"| {'workload':30} | " + " | ".join(f"{c:>{w}}" for c, w in COLS) + " | fallback |"
    out += [head, "|" + "|".join("-" * len(c) for c in head.split("|")[1:-1]) + "|"]
    notes: list[str] = []
    for r in rows:
        cells = []
        for c, w in COLS:
            if c == "ort/sat":
                v = f"{r.ratio:.2f}"
            elif c == "roof":
                v = "-" if math.isnan(r.roof) else f"{r.roof:.1f}x"
            elif c == "max Δ":
                v = f"{r.max_diff:.0e}"
            elif c == "compile s":
                v = f"{r.compile_seconds:.2f}"
            elif c in r.times:
                v = f"{r.times[c] * 1e3:.3f}"
            else:
                v = "n/a" if c in r.notes else "-"
                if c in r.notes and r.notes[c] not in notes:
                    notes.append(r.notes[c])
                if c in r.notes:
                    v = f"n/a[{notes.index(r.notes[c]) + 1}]"
            cells.append(f"{v:>{w}}")
        kinds = sorted({n.split("_")[0] for n in r.fallback})
        fb = f"{len(r.fallback)}: {','.join(kinds)}" if r.fallback else "-"
        out.append(f"| {r.name:30} | " + " | ".join(cells) + f" | {fb[:40]} |")
    out += [f"[{i + 1}] {n}" for i, n in enumerate(notes)]
    return "\n".join(out)


def kernel_makers(quick: bool) -> list[tuple[str, Callable[[], Workload]]]:
    """(key, builder) of each kernel workload."""
    rng = np.random.default_rng(0)
    makers: list[tuple[str, Callable[[], Workload]]] = [
        ("ew", lambda: w_elementwise(rng)),
        ("ln_gelu", lambda: w_layernorm_gelu(rng)),
        ("mlp_kernel", lambda: w_mlp(rng)),
    ]
    makers += [
        (f"attention{s}", lambda s=s: w_attention(rng, s))
        for s in ((128,) if quick else (128, 256, 512))
    ]
    if not quick:
        makers.append(("attention512c", lambda: w_attention(rng, 512, causal=True)))
    makers += [
        ("decode", lambda: w_decode(rng)),
        ("conv", lambda: w_conv(rng)),
        ("gemm", lambda: w_gemm(rng)),
    ]
    return makers


def kernel_workloads(quick: bool, only: set[str] | None = None) -> list[Workload]:
    """The selected kernel workloads (only those are built)."""
    return [make() for key, make in kernel_makers(quick) if _selected(key, only)]


def _selected(key: str, only: set[str] | None) -> bool:
    return only is None or key in only or key.split("@")[0] in only


def unknown_keys(only: set[str], batches: tuple[int, ...] = (1, 8)) -> list[str]:
    """The keys of ``only`` that select no workload (a typo would otherwise measure nothing)."""
    from examples.models import EXAMPLES

    known = {k for k, _ in kernel_makers(False)} | set(EXAMPLES)
    known |= {f"{n}@{b}" for n in EXAMPLES for b in batches}
    return sorted(only - known)


def run(
    threads: list[int],
    budget: float,
    quick: bool,
    only: set[str] | None = None,
    torch_compile: bool = True,
    models: tuple[str, ...] | None = None,
    batches: tuple[int, ...] = (1, 8),
    print_fn: Callable[[str], None] = print,
    extra: list[ModelCase] | None = None,
) -> dict[int, list[Row]]:
    """Measure the selected workloads, then the ``extra`` model cases (ONNX files), for each
    thread count; print and return the rows."""
    from examples.models import EXAMPLES

    works = kernel_workloads(quick, only)
    names = [
        n for n in (models or tuple(EXAMPLES)) if any(_selected(f"{n}@{b}", only) for b in batches)
    ]
    cases = [c for c in model_cases(names, batches) if _selected(c.key, only)] + (extra or [])
    torch = _torch()
    tables: dict[int, list[Row]] = {}
    for t in threads:
        _set_blas_threads(t)
        if torch is not None:
            torch.set_num_threads(t)
        bw, peak = copy_bandwidth(t, budget), fma_peak(t, budget)
        rows = [kernel_row(w, t, budget, peak, bw) for w in works]
        rows += [model_row(c, t, budget, torch_compile and not quick) for c in cases]
        tables[t] = rows
        print_fn(format_table(t, rows, bw, peak))
    if cases:
        print_fn(format_optimize(cases))
    return tables


def format_optimize(cases: list[ModelCase]) -> str:
    """One row per model: the time of ``satura.optimize`` (saturation and extraction) and what
    it did: e-nodes before and after, iterations, rule applications, estimated time before and
    after on the CPU profile."""
    out = [
        "\n## satura.optimize per model (load + saturate + extract; one run each)",
        "| model | seconds | stop | e-nodes | iterations | rules fired | est. µs before -> after |",
        "|---|---|---|---|---|---|---|",
    ]
    seen: set[str] = set()
    for c in cases:
        if c.name in seen or c.report is None:
            continue
        seen.add(c.name)
        r = c.report
        est = (
            f"{r.cost_before * 1e6:.1f} -> {r.cost_after * 1e6:.1f}"
            if r.cost_before is not None and r.cost_after is not None
            else "-"
        )
        out.append(
            f"| {c.name} | {c.optimize_seconds:.2f} | {r.stop_reason} | "
            f"{r.nodes_before} -> {r.nodes} | {r.iterations} | {sum(r.fired.values())} | {est} |"
        )
    return "\n".join(out)


def parallel_overhead(budget: float, print_fn: Callable[[str], None] = print) -> None:
    """Cost of handing a kernel's shares to a second core: Python pool vs the native pool."""
    from satura.targets import lower

    saved = lower.PARALLEL_BYTES
    lower.PARALLEL_BYTES = 0  # make every kernel parallel
    lines = [
        "\n## two-core hand-off: tanh over n floats, median µs per model call",
        f"| {'n':>9} | {'1 thread':>9} | {'2: python pool':>14} | {'2: native pool':>14} |",
        "|-----------|-----------|----------------|----------------|",
    ]
    try:
        for n in (4096, 262144, 4194304):
            g = Graph("tanh")
            x = g.add_input("x", (n,))
            g.set_outputs(g.apply("tanh", x))
            one, pool, native = (compile_graph(g, threads=t) for t in (1, 2, 2))
            pool.native_threads, native.native_threads = False, True
            xv = np.random.default_rng(0).random(n, dtype=np.float32)
            t = median_times(
                {
                    "1": lambda m=one, a=xv: m(x=a),
                    "pool": lambda m=pool, a=xv: m(x=a),
                    "native": lambda m=native, a=xv: m(x=a),
                },
                budget,
            )
            lines.append(
                f"| {n:9} | {t['1'] * 1e6:9.1f} | {t['pool'] * 1e6:14.1f} | "
                f"{t['native'] * 1e6:14.1f} |"
            )
    finally:
        lower.PARALLEL_BYTES = saved
    print_fn("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds per measurement (default 0.4, --quick 0.15)",
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="fewer attention sizes, shorter measurements, no torch.compile",
    )
    ap.add_argument(
        "--only",
        default="",
        help="comma-separated workload keys (see --list); a "
        "model name selects both batch sizes, name@batch one",
    )
    ap.add_argument("--no-torch-compile", action="store_true", help="skip torch.compile")
    ap.add_argument("--list", action="store_true", help="print the workload keys and exit")
    ap.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="FILE.onnx",
        help="also time this ONNX model against onnxruntime (repeatable; inputs: "
        "normal floats, integer ones); alone, it is the only workload",
    )
    ap.add_argument(
        "--dim",
        action="append",
        default=[],
        metavar="NAME=SIZE",
        help="size of a symbolic input dimension of the --model files (repeatable)",
    )
    args = ap.parse_args()
    if args.list:
        from examples.models import EXAMPLES

        print(*[k for k, _ in kernel_makers(False)], *EXAMPLES)
        return
    only = {k.strip() for k in args.only.split(",") if k.strip()} or None
    if only and unknown_keys(only):
        ap.error(f"unknown workload key(s) {', '.join(unknown_keys(only))} (see --list)")
    dims: dict[str, int] = {}
    for d in args.dim:
        name, _, size = d.partition("=")
        if not name or not size.isdigit() or int(size) < 1:
            ap.error(f"--dim '{d}': expected NAME=SIZE, e.g. batch=1")
        dims[name] = int(size)
    for path in args.model:
        if not os.path.isfile(path):
            ap.error(f"--model {path}: no such file")
    try:
        extra = file_cases(args.model, dims)
    except ValueError as e:
        ap.error(str(e))
    if args.model and only is None:
        only = set()  # the files alone
    budget = args.budget if args.budget is not None else (0.15 if args.quick else 0.4)
    t0 = time.perf_counter()
    run(
        [int(t) for t in args.threads.split(",")],
        budget,
        args.quick,
        only,
        torch_compile=not args.no_torch_compile,
        extra=extra,
    )
    if only is None:
        parallel_overhead(budget)
    print(f"\n(total {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
