"""Integer arithmetic, bitwise ops and shifts as typed elementwise kernels, against ONNX's
reference evaluator: wrapping arithmetic, division by 0 and INT_MIN / -1 (which must not trap),
shift amounts outside [0, bits) (ONNX defines them: 0, or the sign for a signed right shift)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import satura

pytestmark = [pytest.mark.onnx, pytest.mark.llvm]

TYPES = {
    "uint8": TensorProto.UINT8,
    "int8": TensorProto.INT8,
    "int16": TensorProto.INT16,
    "uint32": TensorProto.UINT32,
    "int32": TensorProto.INT32,
    "int64": TensorProto.INT64,
    "uint64": TensorProto.UINT64,
}


@pytest.mark.parametrize("direction", ["LEFT", "RIGHT"])
@pytest.mark.parametrize("dtype", sorted(TYPES))
def test_shift_and_mask_chain_is_one_kernel_matching_onnx_reference(dtype, direction):
    """(a shift b) & m, then ~, and ^ a: one kernel (no numpy fallback), equal to onnx's."""
    t = TYPES[dtype]
    nodes = [
        helper.make_node("BitShift", ["a", "b"], ["s"], direction=direction),
        helper.make_node("BitwiseAnd", ["s", "m"], ["t"]),
        helper.make_node("BitwiseNot", ["t"], ["u"]),
        helper.make_node("BitwiseXor", ["u", "a"], ["v"]),
        helper.make_node("BitwiseOr", ["v", "m"], ["y"]),
    ]
    vi = helper.make_tensor_value_info
    graph = helper.make_graph(
        nodes,
        "g",
        [vi("a", t, [3, 67]), vi("b", t, [3, 67]), vi("m", t, [67])],
        [vi("y", t, [3, 67])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 28)], ir_version=10)
    info = np.iinfo(dtype)
    rng = np.random.default_rng(0)
    a = rng.integers(info.min, info.max, (3, 67), dtype=dtype, endpoint=True)
    low = -4 if info.min < 0 else 0
    b = rng.integers(low, info.bits + 5, (3, 67)).astype(dtype)  # out of range too
    m = rng.integers(info.min, info.max, 67, dtype=dtype, endpoint=True)
    exe = satura.compile(model)
    assert exe.fallback_ops == []
    want = ReferenceEvaluator(model).run(None, {"a": a, "b": b, "m": m})[0]
    np.testing.assert_array_equal(exe(a=a, b=b, m=m)["y"], want)


@pytest.mark.parametrize("dtype", sorted(TYPES))
def test_integer_arithmetic_chain_is_one_kernel_matching_onnx_reference(dtype):
    t = TYPES[dtype]
    chain = [
        ("Div", "a", "b", "d"),
        ("Mul", "d", "a", "m"),
        ("Sub", "m", "b", "s"),
        ("Max", "s", "a", "x"),
        ("Add", "x", "b", "p"),
    ]
    nodes = [helper.make_node(op, [x, y], [o]) for op, x, y, o in chain]
    nodes += [
        helper.make_node("Abs", ["p"], ["q"]),
        helper.make_node("Neg", ["q"], ["n"]),
        helper.make_node("Min", ["n", "b"], ["y"]),
    ]
    vi = helper.make_tensor_value_info
    graph = helper.make_graph(
        nodes, "g", [vi("a", t, [300]), vi("b", t, [300])], [vi("y", t, [300])]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    info = np.iinfo(dtype)
    rng = np.random.default_rng(1)
    a = rng.integers(info.min, info.max, 300, dtype=dtype, endpoint=True)
    b = rng.integers(info.min, info.max, 300, dtype=dtype, endpoint=True)
    b[:30] = 0  # division by zero gives 0
    b[30:60] = -1 if info.min < 0 else 1
    a[30:40] = info.min  # INT_MIN / -1 wraps
    b[60:160] = rng.integers(-3 if info.min < 0 else 0, 4, 100)
    exe = satura.compile(model)
    assert exe.fallback_ops == []
    with np.errstate(all="ignore"):
        want = ReferenceEvaluator(model).run(None, {"a": a, "b": b})[0]
    np.testing.assert_array_equal(exe(a=a, b=b)["y"], want)
