"""If, Loop and Scan unrolled at import: onnxruntime runs the same models as the reference,
through the reference executor and the compiled CPU target."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from satura.engine.errors import ModelError

import satura

pytestmark = pytest.mark.onnx

F, I64, B = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL


def _vi(name: str, t: int, shape: list | None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, t, shape)


def _model(nodes, ins, outs, inits=(), opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", ins, outs, list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=9)


def _check(model: onnx.ModelProto, feeds: dict[str, np.ndarray], targets=("reference", "cpu")):
    ort = pytest.importorskip("onnxruntime")
    want = ort.InferenceSession(model.SerializeToString()).run(None, feeds)
    names = [o.name for o in model.graph.output]
    for target in targets:
        got = satura.compile(model, target=target)(**feeds)
        for n, w in zip(names, want, strict=True):
            np.testing.assert_allclose(got[n], w, rtol=1e-5, atol=1e-6, err_msg=f"{target} {n}")


def _loop_body(cond_expr: str) -> onnx.GraphProto:
    """body(i, cond, h) -> (cond', tanh(h·W + i), h row sums): cond' is the incoming cond
    (``same``), or whether the state's first entry is below 2 (``data``)."""
    nodes = [
        helper.make_node("Cast", ["i"], ["fi"], to=F),
        helper.make_node("MatMul", ["h", "w"], ["hw"]),
        helper.make_node("Add", ["hw", "fi"], ["pre"]),
        helper.make_node("Tanh", ["pre"], ["h2"]),
        helper.make_node("ReduceSum", ["h2", "ax"], ["s"], keepdims=0),
    ]
    if cond_expr == "same":
        nodes.append(helper.make_node("Identity", ["c"], ["c2"]))
    else:
        nodes += [
            helper.make_node("ReduceSum", ["h2"], ["tot"], keepdims=0),
            helper.make_node("Less", ["tot", "lim"], ["c2"]),
        ]
    return helper.make_graph(
        nodes,
        "body",
        [_vi("i", I64, []), _vi("c", B, []), _vi("h", F, [2, 3])],
        [_vi("c2", B, []), _vi("h2", F, [2, 3]), _vi("s", F, [2])],
    )


def _loop_model(cond_expr: str, scans: bool) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    body = _loop_body(cond_expr)
    if not scans:
        body.output.pop()
        body.node.pop(4)  # the row sums
    inits = [
        helper.make_tensor("w", F, [3, 3], rng.standard_normal(9).astype(np.float32).tolist()),
        helper.make_tensor("ax", I64, [1], [1]),
        helper.make_tensor("lim", F, [], [2.0]),
        helper.make_tensor("m", I64, [], [6]),
    ]
    outs = ["hN", "ss"] if scans else ["hN"]
    node = helper.make_node("Loop", ["m", "c0", "h0"], outs, name="loop", body=body)
    return _model(
        [node],
        [_vi("h0", F, [2, 3]), _vi("c0", B, [])],
        [_vi("hN", F, [2, 3])] + ([_vi("ss", F, [6, 2])] if scans else []),
        inits,
    )


def test_loop_with_a_constant_trip_count_unrolls_with_scan_outputs():
    model = _loop_model("same", scans=True)
    cond = helper.make_tensor("c0", B, [], [True])  # a constant condition: the loop runs M times
    model.graph.initializer.append(cond)
    del model.graph.input[1]
    h0 = np.random.default_rng(1).standard_normal((2, 3)).astype(np.float32)
    _check(model, {"h0": h0})


@pytest.mark.parametrize("start", [True, False])
def test_loop_on_a_run_time_condition_runs_m_iterations_and_keeps_its_state(start):
    model = _loop_model("data", scans=False)
    for scale in (0.1, 3.0):  # stops early, and after the first iteration
        h0 = (np.random.default_rng(2).standard_normal((2, 3)) * scale).astype(np.float32)
        _check(model, {"h0": h0, "c0": np.array(start)})


def test_loop_with_scan_outputs_on_a_run_time_condition_is_a_clear_error():
    with pytest.raises(ModelError, match=r"node 'loop' \(Loop\): scan outputs .* run-time length"):
        satura.load(_loop_model("same", scans=True))


def test_loop_without_a_bound_known_at_import_is_a_clear_error():
    model = _loop_model("same", scans=False)
    model.graph.node[0].input[0] = ""
    with pytest.raises(ModelError, match="needs a trip count M known at import"):
        satura.load(model)


@pytest.mark.parametrize(
    ("in_axes", "in_dirs", "out_axes", "out_dirs"),
    [((0, 0), (0, 0), (0,), (0,)), ((1, 0), (1, 0), (1,), (1,)), ((0, 1), (0, 1), (-1,), (0,))],
)
def test_scan_matches_onnxruntime(in_axes, in_dirs, out_axes, out_dirs):
    """A running sum state and y_t = state·x_t + u_t, over inputs scanned along any axis in
    either direction, outputs stacked likewise."""
    body = helper.make_graph(
        [
            helper.make_node("Add", ["acc", "xt"], ["acc2"]),
            helper.make_node("Mul", ["acc2", "xt"], ["p"]),
            helper.make_node("Add", ["p", "ut"], ["yt"]),
        ],
        "body",
        [_vi("acc", F, [3]), _vi("xt", F, [3]), _vi("ut", F, [3])],
        [_vi("acc2", F, [3]), _vi("yt", F, [3])],
    )
    xs = [(5, 3), (3, 5)]
    x = np.random.default_rng(3).standard_normal(xs[in_axes[0]]).astype(np.float32)
    u = np.random.default_rng(4).standard_normal(xs[in_axes[1]]).astype(np.float32)
    node = helper.make_node(
        "Scan",
        ["s0", "x", "u"],
        ["sN", "y"],
        body=body,
        num_scan_inputs=2,
        scan_input_axes=list(in_axes),
        scan_input_directions=list(in_dirs),
        scan_output_axes=list(out_axes),
        scan_output_directions=list(out_dirs),
    )
    model = _model(
        [node],
        [_vi("s0", F, [3]), _vi("x", F, list(x.shape)), _vi("u", F, list(u.shape))],
        [_vi("sN", F, None), _vi("y", F, None)],
    )
    _check(model, {"s0": np.ones(3, np.float32), "x": x, "u": u})


def test_sequences_built_in_an_unrolled_loop_match_onnxruntime():
    """The exporters' pattern for a loop that collects tensors: SequenceEmpty, a Loop whose body
    inserts into the carried sequence, ConcatFromSequence; and SplitToSequence, SequenceAt,
    SequenceErase, SequenceLength and a stacking ConcatFromSequence."""
    body = helper.make_graph(
        [
            helper.make_node("Cast", ["i"], ["fi"], to=F),
            helper.make_node("Mul", ["x", "fi"], ["xi"]),
            helper.make_node("SequenceInsert", ["acc", "xi"], ["acc2"]),
            helper.make_node("Identity", ["c"], ["c2"]),
        ],
        "body",
        [
            _vi("i", I64, []),
            _vi("c", B, []),
            helper.make_tensor_sequence_value_info("acc", F, None),
        ],
        [_vi("c2", B, []), helper.make_tensor_sequence_value_info("acc2", F, None)],
    )
    nodes = [
        helper.make_node("SequenceEmpty", [], ["s0"], dtype=F),
        helper.make_node("Loop", ["m", "t", "s0"], ["s"], body=body),
        helper.make_node("ConcatFromSequence", ["s"], ["cat"], axis=0),
        helper.make_node("SplitToSequence", ["cat", "two"], ["parts"], axis=0),
        helper.make_node("SequenceErase", ["parts", "zero"], ["rest"]),
        helper.make_node("SequenceAt", ["rest", "last"], ["at"]),
        helper.make_node("SequenceLength", ["rest"], ["n"]),
        helper.make_node("Cast", ["n"], ["nf"], to=F),
        helper.make_node("Mul", ["at", "nf"], ["y"]),
        helper.make_node("ConcatFromSequence", ["rest"], ["stacked"], axis=1, new_axis=1),
    ]
    inits = [
        helper.make_tensor("m", I64, [], [3]),
        helper.make_tensor("t", B, [], [True]),
        helper.make_tensor("two", I64, [], [2]),
        helper.make_tensor("zero", I64, [], [0]),
        helper.make_tensor("last", I64, [], [-1]),
    ]
    model = _model(
        nodes,
        [_vi("x", F, [2, 3])],
        [_vi("cat", F, None), _vi("y", F, None), _vi("stacked", F, None)],
        inits,
    )
    x = np.random.default_rng(5).standard_normal((2, 3)).astype(np.float32)
    _check(model, {"x": x})


def test_a_sequence_graph_output_is_a_clear_error():
    model = _model(
        [helper.make_node("SplitToSequence", ["x"], ["s"], axis=0)],
        [_vi("x", F, [2, 3])],
        [helper.make_tensor_sequence_value_info("s", F, None)],
    )
    with pytest.raises(ModelError, match="graph output 's' is a sequence"):
        satura.load(model)
