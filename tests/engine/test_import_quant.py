"""Quantized models as float arithmetic: QDQ models (onnxruntime's ``quantize_static`` default
format), operator-format ones (QLinearConv, QLinearMatMul) and ``quantize_dynamic``'s
(DynamicQuantizeLinear, ConvInteger, MatMulInteger), against ONNX's reference evaluator and
onnxruntime run without graph optimizations (its optimized run fuses int8 kernels that round
differently)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from satura.engine.errors import ModelError
from satura.engine.interpret import run_graph

import satura

pytestmark = pytest.mark.onnx
ort = pytest.importorskip("onnxruntime")


def _float_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((16, 3, 3, 3)).astype(np.float32) * 0.3, "w1")
    b1 = numpy_helper.from_array(rng.standard_normal(16).astype(np.float32) * 0.1, "b1")
    w2 = numpy_helper.from_array(
        rng.standard_normal((16 * 8 * 8, 10)).astype(np.float32) / 20, "w2"
    )
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Flatten", ["r"], ["f"]),
        helper.make_node("MatMul", ["f", "w2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 10])],
        [w1, b1, w2],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=9)


@pytest.mark.llvm
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("qtype", ["QInt8", "QUInt8"])
def test_a_quantize_static_model_matches_its_reference(tmp_path, per_channel, qtype):
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    rng = np.random.default_rng(1)

    class Calibration(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter(
                [{"x": rng.standard_normal((2, 3, 16, 16)).astype(np.float32)} for _ in range(4)]
            )

        def get_next(self) -> dict | None:
            return next(self.feeds, None)

    fp, qp = tmp_path / "f.onnx", tmp_path / "q.onnx"
    onnx.save(_float_model(), fp)
    quantize_static(
        str(fp),
        str(qp),
        Calibration(),
        quant_format=QuantFormat.QDQ,
        activation_type=getattr(QuantType, qtype),
        weight_type=getattr(QuantType, qtype),
        per_channel=per_channel,
    )
    model = onnx.load(qp)
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in model.graph.node}
    x = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
    want = ReferenceEvaluator(model).run(None, {"x": x})[0]
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    exe = satura.compile(satura.optimize(satura.load(model)).graph)
    assert exe.fallback_ops == []
    # A product summed in another order may land a value that sits on a rounding boundary on
    # the next integer: one quantization step of the output, on a few elements at most.
    (last,) = [n for n in model.graph.node if n.output[0] == "y"]
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    step = float(np.max(inits[last.input[1]]))
    for got in (ort.InferenceSession(str(qp), so).run(None, {"x": x})[0], exe(x=x)["y"]):
        off = np.abs(got - want) > 1e-6 + 1e-6 * np.abs(want)
        assert off.mean() <= 0.05
        np.testing.assert_allclose(got, want, rtol=0, atol=step * 1.001)


class _Calibration:
    """Four random batches for ``quantize_static``."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.feeds = iter(
            [{"x": rng.standard_normal((2, 3, 16, 16)).astype(np.float32)} for _ in range(4)]
        )

    def get_next(self) -> dict | None:
        return next(self.feeds, None)


@pytest.mark.llvm
@pytest.mark.parametrize("how", ["operator", "operator_per_channel", "dynamic"])
def test_integer_operator_models_match_onnxruntime(tmp_path, how):
    """The operator format and ``quantize_dynamic``: every integer op is read, the compiled
    model runs no fallback and gives onnxruntime's output (unoptimized) to one step at most."""
    from onnxruntime.quantization import QuantFormat, quantize_dynamic, quantize_static

    rng = np.random.default_rng(2)
    fp, qp = tmp_path / "f.onnx", tmp_path / "q.onnx"
    onnx.save(_float_model(), fp)
    if how == "dynamic":
        quantize_dynamic(str(fp), str(qp))
        ops = {"DynamicQuantizeLinear", "ConvInteger", "MatMulInteger"}
    else:
        quantize_static(
            str(fp),
            str(qp),
            _Calibration(rng),
            quant_format=QuantFormat.QOperator,
            per_channel=how.endswith("per_channel"),
        )
        ops = {"QLinearConv", "QLinearMatMul"}
    model = onnx.load(qp)
    assert ops <= {n.op_type for n in model.graph.node}
    x = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    want = ort.InferenceSession(str(qp), so).run(None, {"x": x})[0]
    ref = ReferenceEvaluator(model).run(None, {"x": x})[0]
    exe = satura.compile(model)
    assert exe.fallback_ops == []
    got = exe(x=x)["y"]
    step = np.abs(want).max() / 100  # far below one quantization step of the output
    for have in (got, run_graph(satura.load(model), {"x": x})["y"]):
        off = np.abs(have - want) > 1e-6 * np.abs(want).max()
        assert off.mean() <= 0.05
        np.testing.assert_allclose(have, want, rtol=0, atol=step)
    np.testing.assert_allclose(ref, want, rtol=0, atol=step)


def _node_model(op: str, ins: list, attrs: dict) -> onnx.ModelProto:
    names = [n for n, _, _ in ins]
    node = helper.make_node(op, names, ["y"], name="q", **attrs)
    inputs = [helper.make_tensor_value_info(n, t, s) for n, t, s in ins]
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    return helper.make_model(
        helper.make_graph([node], "g", inputs, [out]),
        opset_imports=[helper.make_opsetid("", 21)],
        ir_version=10,
    )


F, I8, U8 = TensorProto.FLOAT, TensorProto.INT8, TensorProto.UINT8
BAD = [
    (
        "MatMulInteger",
        [("a", U8, (2, 3)), ("b", I8, (3, 4)), ("az", I8, ())],
        {},
        "zero point of type int8 for an input of uint8",
    ),
    (
        "MatMulInteger",
        [("a", F, (2, 3)), ("b", I8, (3, 4))],
        {},
        "must be uint8 or int8, got float32",
    ),
    (
        "QLinearConv",
        [
            ("x", U8, (1, 2, 5, 5)),
            ("xs", F, ()),
            ("xz", U8, ()),
            ("w", I8, (4, 2, 3, 3)),
            ("ws", F, (3,)),
            ("wz", I8, ()),
            ("ys", F, ()),
            ("yz", U8, ()),
        ],
        {},
        r"w_scale of shape \(3,\) is neither a scalar nor one per output channel \(4\)",
    ),
    (
        "ConvInteger",
        [("x", U8, (1, 2, 5, 5)), ("w", U8, (4, 2, 3, 3)), ("xz", U8, (2,))],
        {},
        "x's zero point must be a scalar",
    ),
    (
        "QuantizeLinear",
        [("x", F, (2, 3)), ("s", F, ())],
        {"output_dtype": TensorProto.INT4},
        "element type INT4 is not supported",
    ),
    (
        "DequantizeLinear",
        [("x", I8, (2, 3)), ("s", F, (2,))],
        {"axis": 1},
        "does not fit axis 1",
    ),
    (
        "DequantizeLinear",
        [("x", I8, (2, 3)), ("s", F, (3,))],
        {"axis": 2},
        "axis 2 is out of range",
    ),
    (
        "DequantizeLinear",
        [("x", I8, (2, 6)), ("s", F, (2, 2))],
        {"axis": 1, "block_size": 2},
        "blocked scale of shape",
    ),
]


@pytest.mark.parametrize(("op", "ins", "attrs", "msg"), BAD, ids=[b[3][:24] for b in BAD])
def test_bad_quantization_nodes_are_model_errors(op, ins, attrs, msg):
    with pytest.raises(ModelError, match=msg) as e:
        satura.load(_node_model(op, ins, attrs))
    assert "node 'q'" in str(e.value)
