"""The benchmark's code path on tiny work: tables come out and satura agrees with onnxruntime.

No timing is asserted (speed claims come from ``make bench``); this checks that the script runs
end to end, both for a kernel workload and for an example model, on one and two threads.
"""

from __future__ import annotations

import math

import pytest

pytest.importorskip("onnxruntime", reason="the benchmark compares against onnxruntime")
pytestmark = [pytest.mark.llvm, pytest.mark.onnx]


def test_bench_tables_for_a_kernel_and_an_example_model():
    from benchmarks import run as bench

    printed: list[str] = []
    tables = bench.run(
        [1, 2],
        budget=0.005,
        quick=True,
        only={"ew", "mlp_small@1"},
        torch_compile=False,
        print_fn=printed.append,
    )
    assert sorted(tables) == [1, 2]
    for t, rows in tables.items():
        assert [r.key for r in rows] == ["ew", "mlp_small@1"]
        for r in rows:
            assert r.max_diff < 1e-5, (t, r.name, r.max_diff)  # satura == onnxruntime
            assert r.times["satura"] > 0
            assert r.times["ort"] > 0
            assert not r.fallback, r.fallback
        assert math.isfinite(rows[0].roof)
        assert rows[0].roof > 0
        assert math.isnan(rows[1].roof)
    text = "\n".join(printed)
    assert text.count("| workload") == 2
    for needle in ("## 1 thread(s)", "## 2 thread(s)", "| gelu(x*w+b) 4M", "| mlp_small batch 1"):
        assert needle in text, needle
    # the optimize table: the example's e-graph counts are deterministic
    (opt,) = [line for line in text.splitlines() if line.startswith("| mlp_small |")]
    assert "| saturated | 18 -> 163 |" in opt, opt


def test_bench_selection_and_keys():
    from benchmarks import run as bench

    keys = [k for k, _ in bench.kernel_makers(False)]
    assert len(keys) == len(set(keys))
    assert bench._selected("gpt2_block@8", {"gpt2_block"})
    assert bench._selected("gpt2_block@8", {"gpt2_block@8"})
    assert not bench._selected("gpt2_block@1", {"gpt2_block@8"})
    assert bench._selected("ew", None)
    assert [w.key for w in bench.kernel_workloads(True, {"attention128"})] == ["attention128"]


def test_bench_unknown_keys_are_reported():
    from benchmarks import run as bench

    assert bench.unknown_keys({"ew", "gpt2_block", "mlp@8"}) == []
    assert bench.unknown_keys({"mlp_layer", "ew", "mlp@3"}) == ["mlp@3", "mlp_layer"]


def _time_once(cases: list) -> dict:
    """``benchmarks.run`` over the file cases alone, one thread, a token budget, no output."""
    from benchmarks import run as bench

    return bench.run(
        [1],
        budget=0.005,
        quick=True,
        only=set(),
        torch_compile=False,
        print_fn=lambda s: None,
        extra=cases,
    )


def test_bench_any_onnx_file(tmp_path):
    """``--model FILE --dim NAME=SIZE``: synthetic inputs bind the symbolic dims, the file's model
    is timed against onnxruntime, and a missing dim is a clear error."""
    from benchmarks import run as bench

    path = "examples/mlp_small.onnx"
    with pytest.raises(ValueError, match=r"input 'x': dimension 0 is 'batch'.*--dim batch=SIZE"):
        bench.file_cases([path], {})
    cases = bench.file_cases([path], {"batch": 3})
    assert [list(a.shape) for a in cases[0].feeds.values()] == [[3, 64]]
    tables = _time_once(cases)
    (row,) = tables[1]
    assert row.name.startswith("mlp_small [3, 64]")
    assert row.max_diff < 1e-5
    assert row.times["satura"] > 0
    assert "torch" in row.notes


def test_zoo_runs_a_torch_export_end_to_end():
    """``benchmarks.zoo`` on the ViT (a 16×16 stride-16 patch conv, attention, LayerNorm):
    satura agrees with onnxruntime and compiles every node."""
    pytest.importorskip("torch", reason="the zoo exports torch models")
    from benchmarks import zoo

    printed: list[str] = []
    rows = zoo.run(["vit_tiny"], [1], [1], budget=0.005, print_fn=printed.append)
    assert [(r["name"], r["threads"], r["batch"]) for r in rows] == [("vit_tiny", 1, 1)]
    assert rows[0]["max_diff"] < 1e-4
    assert rows[0]["fallback"] == []
    assert rows[0]["satura"] > 0
    assert rows[0]["ort"] > 0
    assert printed[0].startswith("| model |")
    assert "vit_tiny" in printed[-1]


def test_quantized_benchmark_models_compile_without_fallback(tmp_path):
    """``benchmarks.quantized``: onnxruntime's quantizer writes the operator-format and dynamic
    variants; satura imports each (integer and com.microsoft ops), compiles every node and agrees
    with onnxruntime to a few output steps (its int8 kernels round on their own)."""
    pytest.importorskip("onnxruntime.quantization")
    from benchmarks import quantized
    from benchmarks import run as bench

    files = quantized.quantized_files(str(tmp_path), batch=2, seq=8)
    assert sorted(files) == [
        "bert_block_dynamic",
        "mlp_dynamic",
        "resnet_small_dynamic",
        "resnet_small_operator",
    ]
    cases = [c for path, dims in files.values() for c in bench.file_cases([path], dims)]
    tables = _time_once(cases)
    assert len(tables[1]) == 4
    for row in tables[1]:
        assert row.fallback == [], row.name
        assert row.times["satura"] > 0
        assert row.times["ort"] > 0
        assert row.max_diff < 0.05, row.name
