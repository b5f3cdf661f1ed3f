"""Time satura's CPU target against numpy, onnxruntime and torch on the issue's workloads.

Every system runs the same workload with the same thread count; each time is the median of many
repeats, measured in one run of this script. Prints one table per thread count with the ratio
onnxruntime-time / satura-time (above 1: satura is faster).

    python -m benchmarks.run [--threads 1,2] [--quick]
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import math
import os
import statistics
import time
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


def _onnx(nodes: list[Any], inputs: dict[str, np.ndarray], output: str,
          inits: dict[str, np.ndarray]) -> bytes:
    model = helper.make_model(
        helper.make_graph(
            nodes, "bench",
            [helper.make_tensor_value_info(k, TensorProto.FLOAT, v.shape)
             for k, v in inputs.items()],
            [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)],
            [numpy_helper.from_array(v, k) for k, v in inits.items()]),
        opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    return model.SerializeToString()


def _onnx_gelu(src: str, dst: str, tag: str) -> tuple[list[Any], dict[str, np.ndarray]]:
    """x·0.5·(1 + erf(x/√2)), the form exporters write (onnxruntime fuses it into Gelu)."""
    c = {f"{tag}_sqrt2": np.array(math.sqrt(2.0), np.float32),
         f"{tag}_one": np.array(1.0, np.float32), f"{tag}_half": np.array(0.5, np.float32)}
    nodes = [helper.make_node("Div", [src, f"{tag}_sqrt2"], [f"{tag}_d"]),
             helper.make_node("Erf", [f"{tag}_d"], [f"{tag}_e"]),
             helper.make_node("Add", [f"{tag}_e", f"{tag}_one"], [f"{tag}_a"]),
             helper.make_node("Mul", [src, f"{tag}_a"], [f"{tag}_m"]),
             helper.make_node("Mul", [f"{tag}_m", f"{tag}_half"], [dst])]
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
    out = g.apply("ew", xv, g.add_const(w, "w"), g.add_const(b, "b"),
                  expr=("gelu", ("add", ("mul", ("in", 0), ("in", 1)), ("in", 2))))
    g.set_outputs(out)
    nodes, c = _onnx_gelu("t1", "y", "g")
    model = _onnx([helper.make_node("Mul", ["x", "w"], ["t0"]),
                   helper.make_node("Add", ["t0", "b"], ["t1"]), *nodes],
                  {"x": x}, "y", {"w": w, "b": b, **c})
    torch = _torch()
    tf = None
    if torch is not None:
        tx, tw, tb = (torch.from_numpy(a) for a in (x, w, b))
        def tf() -> Any:
            return torch.nn.functional.gelu(tx * tw + tb)
    return Workload("gelu(x*w+b) 4M", g, {"x": x}, model, None, tf)


def w_layernorm_gelu(rng: np.random.Generator, batch: int = 8) -> Workload:
    x = rng.standard_normal((batch * 128, 768)).astype(np.float32)
    s, b = rng.standard_normal(768).astype(np.float32), rng.standard_normal(768).astype(np.float32)
    g = Graph("lngelu")
    xv = g.add_input("x", x.shape)
    ln = g.apply("layer_norm", xv, g.add_const(s, "s"), g.add_const(b, "b"))
    g.set_outputs(g.apply("gelu", ln))
    nodes, c = _onnx_gelu("ln", "y", "g")
    model = _onnx([helper.make_node("LayerNormalization", ["x", "s", "b"], ["ln"], axis=-1,
                                    epsilon=1e-5), *nodes], {"x": x}, "y", {"s": s, "b": b, **c})
    torch = _torch()
    tf = None
    if torch is not None:
        tx, ts, tb = (torch.from_numpy(a) for a in (x, s, b))
        def tf() -> Any:
            return torch.nn.functional.gelu(torch.nn.functional.layer_norm(tx, (768,), ts, tb))
    return Workload(f"LayerNorm+GELU [{batch}*128,768]", g, {"x": x}, model, None, tf)


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
    model = _onnx([helper.make_node("MatMul", ["x", "w1"], ["h0"]),
                   helper.make_node("Add", ["h0", "b1"], ["h1"]), *nodes,
                   helper.make_node("MatMul", ["h", "w2"], ["y0"]),
                   helper.make_node("Add", ["y0", "b2"], ["y"])],
                  {"x": x}, "y", {"w1": w1, "w2": w2, "b1": b1, "b2": b2, **c})
    torch = _torch()
    tf = None
    if torch is not None:
        tx, tw1, tw2, tb1, tb2 = (torch.from_numpy(a) for a in (x, w1, w2, b1, b2))
        def tf() -> Any:
            return torch.nn.functional.gelu(tx @ tw1 + tb1) @ tw2 + tb2
    return Workload(f"MLP 768-3072-768 [{rows},768]", g, {"x": x}, model, None, tf,
                    flops=2.0 * rows * 768 * 3072 * 2)


def w_attention(rng: np.random.Generator, seq: int, heads: int = 8) -> Workload:
    q, k, v = (rng.standard_normal((1, heads, seq, 64)).astype(np.float32) for _ in range(3))
    g = Graph("attn")
    qv, kv, vv = (g.add_input(n, q.shape) for n in "qkv")
    g.set_outputs(g.apply("attention", qv, kv, vv, scale=0.125))
    model = _onnx([helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
                   helper.make_node("MatMul", ["q", "kt"], ["s0"]),
                   helper.make_node("Mul", ["s0", "scale"], ["s1"]),
                   helper.make_node("Softmax", ["s1"], ["p"], axis=-1),
                   helper.make_node("MatMul", ["p", "v"], ["y"])],
                  {"q": q, "k": k, "v": v}, "y", {"scale": np.array(0.125, np.float32)})

    def nf() -> Any:
        s = (q @ np.swapaxes(k, -1, -2)) * np.float32(0.125)
        e = np.exp(s - s.max(-1, keepdims=True))
        return (e / e.sum(-1, keepdims=True)) @ v

    torch = _torch()
    tf = None
    if torch is not None:
        tq, tk, tv = (torch.from_numpy(a) for a in (q, k, v))
        def tf() -> Any:
            return torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, scale=0.125)
    return Workload(f"attention s={seq} h={heads} d=64", g, {"q": q, "k": k, "v": v}, model,
                    nf, tf, flops=4.0 * heads * seq * seq * 64)


def w_conv(rng: np.random.Generator) -> Workload:
    x = rng.standard_normal((1, 64, 56, 56)).astype(np.float32)
    w = (rng.standard_normal((64, 64, 3, 3)) * 0.05).astype(np.float32)
    g = Graph("conv")
    xv = g.add_input("x", x.shape)
    g.set_outputs(g.apply("conv", xv, g.add_const(w, "w"), pads=(1, 1, 1, 1)))
    model = _onnx([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
                  {"x": x}, "y", {"w": w})
    torch = _torch()
    tf = None
    if torch is not None:
        tx, tw = torch.from_numpy(x), torch.from_numpy(w)
        def tf() -> Any:
            return torch.nn.functional.conv2d(tx, tw, padding=1)
    return Workload("conv3x3 64->64 56x56", g, {"x": x}, model, None, tf,
                    flops=2.0 * 64 * 64 * 9 * 56 * 56)


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
    return Workload(f"GEMM {n}^3", g, {"a": a, "b": b}, model, lambda: a @ b, tf,
                    flops=2.0 * n ** 3)


def median_time(fn: Callable[[], Any], budget: float, min_reps: int = 5) -> float:
    """Median seconds of ``fn`` over repeats filling about ``budget`` seconds (after a warm-up)."""
    return median_times({"f": fn}, budget, min_reps)["f"]


def median_times(fns: dict[str, Callable[[], Any]], budget: float,
                 min_reps: int = 5) -> dict[str, float]:
    """Median seconds of each function, the systems run in turn within each repeat, so a change
    in the machine's load (other jobs on shared cores) hits every system alike."""
    one = 0.0
    for fn in fns.values():
        fn()
        t0 = time.perf_counter()
        fn()
        one += max(time.perf_counter() - t0, 1e-7)
    reps = max(min_reps, min(2000, int(budget * len(fns) / one)))
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def _set_blas_threads(n: int) -> None:
    for lib in glob.glob(os.path.join(os.path.dirname(np.__file__), "..", "numpy.libs",
                                      "libscipy_openblas*.so")):
        ctypes.CDLL(lib).scipy_openblas_set_num_threads64_(n)


def run(threads: list[int], budget: float, quick: bool) -> None:
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    works = [w_elementwise(rng), w_layernorm_gelu(rng), w_mlp(rng)]
    works += [w_attention(rng, s) for s in ((128,) if quick else (128, 256, 512))]
    works += [w_conv(rng), w_gemm(rng)]
    torch = _torch()
    for t in threads:
        _set_blas_threads(t)
        if torch is not None:
            torch.set_num_threads(t)
        print(f"\n## {t} thread(s) — median ms (ratio = onnxruntime / satura)")
        head = (f"| {'workload':34} | {'satura':>8} | {'numpy':>8} | {'onnxrt':>8} | {'torch':>8} "
                f"| {'ort/sat':>7} | {'sat GF/s':>8} | compile s | fallback |")
        print(head)
        print("|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|")
        for w in works:
            model = compile_graph(w.graph, threads=t)
            so = ort.SessionOptions()
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            so.intra_op_num_threads, so.inter_op_num_threads = t, 1
            sess = ort.InferenceSession(w.onnx_model, so, providers=["CPUExecutionProvider"])
            fns: dict[str, Callable[[], Any]] = {
                "satura": lambda m=model, f=w.feeds: m(**f),
                "ort": lambda s=sess, f=w.feeds: s.run(None, f)}
            if w.numpy_fn:
                fns["numpy"] = w.numpy_fn
            if w.torch_fn:
                fns["torch"] = w.torch_fn
            med = median_times(fns, budget)
            ts, to = med["satura"], med["ort"]
            tn, tt = med.get("numpy", math.nan), med.get("torch", math.nan)
            gf = f"{w.flops / ts / 1e9:8.1f}" if w.flops else f"{'':8}"
            fb = ",".join(sorted({n.split('_')[0] for n in model.fallback_nodes})) or "-"
            print(f"| {w.name:34} | {ts * 1e3:8.3f} | {tn * 1e3:8.3f} | {to * 1e3:8.3f} | "
                  f"{tt * 1e3:8.3f} | {to / ts:7.2f} | {gf} | {model.compile_seconds:9.2f} | "
                  f"{fb} |")


def parallel_overhead(budget: float) -> None:
    """Cost of handing a kernel's shares to a second core: Python pool vs pthreads from LLVM."""
    from satura.targets import lower

    saved = lower.PARALLEL_BYTES
    lower.PARALLEL_BYTES = 0  # make every kernel parallel
    print("\n## two-core hand-off: tanh over n floats, median µs per model call")
    print(f"| {'n':>9} | {'1 thread':>9} | {'2: pool':>9} | {'2: pthread':>10} |")
    print("|-----------|-----------|-----------|------------|")
    try:
        for n in (4096, 262144, 4194304):
            g = Graph("tanh")
            x = g.add_input("x", (n,))
            g.set_outputs(g.apply("tanh", x))
            one, pool, native = (compile_graph(g, threads=t) for t in (1, 2, 2))
            native.native_threads = True
            xv = np.random.default_rng(0).random(n, dtype=np.float32)
            t = median_times({"1": lambda m=one, a=xv: m(x=a), "pool": lambda m=pool, a=xv: m(x=a),
                              "native": lambda m=native, a=xv: m(x=a)}, budget)
            print(f"| {n:9} | {t['1'] * 1e6:9.1f} | {t['pool'] * 1e6:9.1f} | "
                  f"{t['native'] * 1e6:10.1f} |")
    finally:
        lower.PARALLEL_BYTES = saved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument("--budget", type=float, default=0.4, help="seconds per measurement")
    ap.add_argument("--quick", action="store_true", help="fewer workloads")
    args = ap.parse_args()
    run([int(t) for t in args.threads.split(",")], args.budget, args.quick)
    parallel_overhead(args.budget)


if __name__ == "__main__":
    main()
