"""Half-precision models run in the fp32 kernels (targets/precision.py): half inputs cast on
entry, half outputs on exit, with no op left to numpy; onnxruntime runs the same models."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import satura

pytestmark = [pytest.mark.onnx, pytest.mark.llvm]


@pytest.mark.parametrize("name", ["mlp", "gpt2_block", "bert_block", "llama_block", "resnet_small"])
def test_float16_models_compile_whole_and_match_onnxruntime(name):
    ort = pytest.importorskip("onnxruntime")
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from examples.models import EXAMPLES, example_inputs

    model = convert_float_to_float16(EXAMPLES[name](), keep_io_types=False)
    feeds = {
        k: v.astype(np.float16) if v.dtype == np.float32 else v
        for k, v in example_inputs(name, batch=2).items()
    }
    want = ort.InferenceSession(model.SerializeToString()).run(None, feeds)
    exe = satura.compile(model)
    variant = exe.variant(feeds) if hasattr(exe, "variant") else exe
    assert variant.fallback_ops == []
    got = exe(**feeds)
    for o, w in zip(model.graph.output, want, strict=True):
        assert got[o.name].dtype == np.float16
        # onnxruntime rounds to half after some ops, satura once at the end: a few half ulps
        scale = float(np.abs(w).max())
        np.testing.assert_allclose(got[o.name].astype(np.float32), w, atol=2e-3 * scale, rtol=0)


def test_half_casts_match_numpy_bit_for_bit():
    """fp32 -> half rounds to nearest even (subnormals, overflow to inf), half -> fp32 exact."""
    bits = np.random.default_rng(0).integers(0, 2**32, 4099, dtype=np.uint64).astype(np.uint32)
    x = bits.view(np.float32)
    x[:6] = [65519.0, 65520.0, 5.96e-8, 2.9e-8, -0.0, np.inf]
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["x"], ["h"], to=TensorProto.FLOAT16),
            helper.make_node("Cast", ["h"], ["y"], to=TensorProto.FLOAT),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4099])],
        [
            helper.make_tensor_value_info("h", TensorProto.FLOAT16, [4099]),
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [4099]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    exe = satura.compile(model)
    assert exe.fallback_ops == []
    got = exe(x=x)
    with np.errstate(all="ignore"):
        h = x.astype(np.float16)
    np.testing.assert_array_equal(got["h"], h)
    np.testing.assert_array_equal(got["y"], h.astype(np.float32))
