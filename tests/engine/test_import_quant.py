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
from satura.engine.errors import ModelError, UnsupportedOpError
from satura.engine.interpret import run_graph

import satura

pytestmark = pytest.mark.onnx
F, I8, U8 = TensorProto.FLOAT, TensorProto.INT8, TensorProto.UINT8
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


def _contrib_float_model() -> onnx.ModelProto:
    """A float model of every op onnxruntime's operator format writes as a com.microsoft op."""
    rng = np.random.default_rng(0)

    def w(name: str, shape: tuple, s: float = 0.3) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * s).astype(np.float32), name)

    n = helper.make_node
    nodes = [
        n("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        n("Relu", ["c1"], ["r1"]),
        n("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        n("Add", ["c2", "r1"], ["a"]),
        n("LeakyRelu", ["a"], ["l"], alpha=0.1),
        n("Sigmoid", ["l"], ["s"]),
        n("Mul", ["l", "s"], ["m"]),
        n("AveragePool", ["m"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        n("MaxPool", ["m"], ["q"], kernel_shape=[2, 2], strides=[2, 2]),
        n("Concat", ["p", "q"], ["cat"], axis=1),
        n("GlobalAveragePool", ["cat"], ["g"]),
        n("Flatten", ["g"], ["f"]),
        n("Gemm", ["f", "wg", "bg"], ["z"]),
        n("Softmax", ["z"], ["y"], axis=-1),
    ]
    inits = [
        w("w1", (8, 3, 3, 3)),
        w("b1", (8,), 0.1),
        w("w2", (8, 8, 3, 3), 0.15),
        w("b2", (8,), 0.1),
        w("wg", (16, 10), 0.2),
        w("bg", (10,), 0.1),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 10])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


_MS = "com.microsoft"
CONTRIB_OPS = {
    "QGemm",
    "QLinearAdd",
    "QLinearMul",
    "QLinearAveragePool",
    "QLinearConcat",
    "QLinearGlobalAveragePool",
    "QLinearLeakyRelu",
    "QLinearSigmoid",
    "QLinearSoftmax",
}


@pytest.mark.llvm
@pytest.mark.parametrize("qtype", ["QUInt8", "QInt8"])
def test_onnxruntime_contrib_quantized_ops_match_onnxruntime(tmp_path, qtype):
    """The com.microsoft ops of the operator format, each a float op between dequantize and
    quantize: within one output step of onnxruntime (which requantizes with fixed scale ratios
    and tables, landing a step apart on rounding boundaries)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    rng = np.random.default_rng(3)
    fp, qp = tmp_path / "f.onnx", tmp_path / "q.onnx"
    onnx.save(_contrib_float_model(), fp)
    quantize_static(
        str(fp),
        str(qp),
        _Calibration(rng),
        quant_format=QuantFormat.QOperator,
        activation_type=getattr(QuantType, qtype),
        weight_type=QuantType.QInt8,
    )
    model = onnx.load(qp)
    assert {n.op_type for n in model.graph.node if n.domain == "com.microsoft"} == CONTRIB_OPS
    x = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    want = ort.InferenceSession(str(qp), so).run(None, {"x": x})[0]
    (last,) = [n for n in model.graph.node if n.output[0] == "y"]
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    step = float(inits[last.input[1]])
    exe = satura.compile(model)
    assert exe.fallback_ops == []
    for got in (exe(x=x)["y"], run_graph(satura.load(model), {"x": x})["y"]):
        assert (np.abs(got - want) > 1e-6).mean() <= 0.25
        np.testing.assert_allclose(got, want, rtol=0, atol=step * 1.001)


def test_an_unknown_contrib_op_is_named():
    node = helper.make_node("QAttention", ["x"], ["y"], name="qa", domain="com.microsoft")
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, (2, 3))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
        ir_version=8,
    )
    with pytest.raises(UnsupportedOpError, match=r"'com.microsoft.QAttention' \(node 'qa'"):
        satura.load(model)


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


@pytest.mark.llvm
def test_qlinear_where_matches_onnxruntime():
    """QLinearWhere (condition, X and Y triples, then Z's scale and zero point)."""
    node = helper.make_node(
        "QLinearWhere", ["c", "x", "xs", "xz", "y", "ys", "yz", "zs", "zz"], ["z"], domain=_MS
    )
    params = [("xs", 0.05, np.float32), ("xz", 128, np.uint8), ("ys", 0.02, np.float32)]
    params += [("yz", 100, np.uint8), ("zs", 0.04, np.float32), ("zz", 120, np.uint8)]
    graph = helper.make_graph(
        [node],
        "g",
        [
            helper.make_tensor_value_info("c", TensorProto.BOOL, [4, 5]),
            helper.make_tensor_value_info("x", U8, [4, 5]),
            helper.make_tensor_value_info("y", U8, [4, 5]),
        ],
        [helper.make_tensor_value_info("z", U8, [4, 5])],
        [numpy_helper.from_array(np.array(v, dt), n) for n, v, dt in params],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(_MS, 1)],
        ir_version=8,
    )
    rng = np.random.default_rng(0)
    feeds = {
        "c": rng.random((4, 5)) > 0.5,
        "x": rng.integers(0, 256, (4, 5)).astype(np.uint8),
        "y": rng.integers(0, 256, (4, 5)).astype(np.uint8),
    }
    want = ort.InferenceSession(model.SerializeToString()).run(None, feeds)[0]
    np.testing.assert_array_equal(satura.compile(model)(**feeds)["z"], want)
