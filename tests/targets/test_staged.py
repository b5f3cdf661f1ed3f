"""Data-dependent sizes (NonZero, a run-time Compress): import, the reference executor and the
staged compiled model, against onnxruntime and torch."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import pytest
import sympy
from onnx import TensorProto, helper
from satura.engine.errors import InputError
from satura.engine.interpret import run_graph
from satura.targets.staged import StagedModel

import satura

pytestmark = pytest.mark.llvm

OUTS = ("y", "z", "gs")


def _model(second_level: bool = False) -> onnx.ModelProto:
    """y = 2·Compress(x, rowsum(x) > 0, axis 0); z = NonZero(x > 0.5); gs = sum(GatherND(x, zᵀ));
    with ``second_level``, w = NonZero(y > 1) too (a data-dependent op after another)."""
    nodes = [
        helper.make_node("ReduceSum", ["x", "ax1"], ["rs"], keepdims=0),
        helper.make_node("Greater", ["rs", "zero"], ["c"]),
        helper.make_node("Compress", ["x", "c"], ["sel"], axis=0),
        helper.make_node("Mul", ["sel", "two"], ["y"]),
        helper.make_node("Greater", ["x", "half"], ["m"]),
        helper.make_node("NonZero", ["m"], ["z"]),
        helper.make_node("Transpose", ["z"], ["zt"]),
        helper.make_node("GatherND", ["x", "zt"], ["g"]),
        helper.make_node("ReduceSum", ["g"], ["gs"], keepdims=1),
    ]
    outs = [("y", TensorProto.FLOAT), ("z", TensorProto.INT64), ("gs", TensorProto.FLOAT)]
    if second_level:
        nodes += [
            helper.make_node("Greater", ["y", "one"], ["ym"]),
            helper.make_node("NonZero", ["ym"], ["w"]),
        ]
        outs.append(("w", TensorProto.INT64))
    consts = [
        helper.make_tensor("ax1", TensorProto.INT64, [1], [1]),
        *(
            helper.make_tensor(n, TensorProto.FLOAT, [], [v])
            for n, v in (("zero", 0.0), ("two", 2.0), ("half", 0.5), ("one", 1.0))
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "nz",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4])],
        [helper.make_tensor_value_info(n, t, None) for n, t in outs],
        consts,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def _inputs() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((b, 4)).astype(np.float32) for b in (5, 7, 5)]
    return [*xs, -np.abs(xs[0]), np.zeros((0, 4), np.float32)]  # no row kept; no rows at all


def _ort(model: onnx.ModelProto) -> object:
    ort = pytest.importorskip("onnxruntime")
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _check(got: dict[str, np.ndarray], sess: object, x: np.ndarray) -> None:
    names = [o.name for o in sess.get_outputs()]  # type: ignore[attr-defined]
    for name, want in zip(names, sess.run(None, {"x": x}), strict=True):  # type: ignore[attr-defined]
        assert got[name].shape == want.shape, name
        assert got[name].dtype == want.dtype, name
        np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=1e-6, err_msg=name)


def test_run_time_nonzero_gets_a_fresh_count_each() -> None:
    g = satura.load(_model())
    counts = [n.outputs[0].type.shape[1] for n in g.nodes if n.op == "nonzero"]
    assert len(counts) == 2
    assert all(isinstance(c, sympy.Symbol) for c in counts)
    assert counts[0] != counts[1]


def test_reference_executor_binds_counts_as_it_runs() -> None:
    model = _model(second_level=True)
    g, sess = satura.load(model), _ort(model)
    for x in _inputs():
        _check(run_graph(g, {"x": x}), sess, x)


@pytest.mark.parametrize("second_level", [False, True], ids=["one-cut", "two-cuts"])
def test_compiled_stages_match_onnxruntime(second_level: bool) -> None:
    model = _model(second_level)
    exe = satura.compile(satura.optimize(satura.load(model)).graph)
    assert isinstance(exe, StagedModel)
    assert sorted(n.op for n in exe.cut) == ["nonzero", "nonzero"]
    if second_level:  # the tail has a data-dependent op of its own: staged again
        assert isinstance(exe.tail, StagedModel)
    sess = _ort(model)
    for x in _inputs():
        _check(exe(x=x), sess, x)


def test_staged_model_checks_inputs_before_running() -> None:
    exe = satura.compile(satura.load(_model()))
    with pytest.raises(InputError, match="'x'"):
        exe(x=np.zeros((3, 5), np.float32))
    with pytest.raises(InputError, match="'x'"):
        exe(x=np.zeros((3, 4), np.int64))
    with pytest.raises(InputError, match="'q'"):
        exe(q=np.zeros((3, 4), np.float32))


@pytest.mark.torch
@pytest.mark.slow
@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_torch_masks_and_routing_compile(dynamo: bool) -> None:
    """Boolean-mask indexing and mixture-of-experts routing (``torch.where(sel == i)``,
    ``index_add``), exported with a dynamic batch, against torch at two sizes."""
    torch = pytest.importorskip("torch", reason="torch is not installed")
    if dynamo:
        pytest.importorskip("onnxscript", reason="dynamo export needs onnxscript")

    class Routed(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.experts = torch.nn.ModuleList(torch.nn.Linear(16, 16) for _ in range(3))
            self.router = torch.nn.Linear(16, 3)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            sel = self.router(x).argmax(-1)
            out = torch.zeros_like(x)
            for i, e in enumerate(self.experts):
                idx = torch.where(sel == i)[0]
                out = out.index_add(0, idx, e(x[idx]))
            return out, torch.relu(x[x.sum(-1) > 0])

    torch.manual_seed(0)
    m = Routed().eval()
    x0 = torch.randn(12, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            b = torch.export.Dim("b")
            proto = torch.onnx.export(m, (x0,), dynamo=True, dynamic_shapes=({0: b},)).model_proto
        else:
            f = io.BytesIO()
            torch.onnx.export(
                m, (x0,), f, dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "b"}}
            )
            proto = onnx.load_from_string(f.getvalue())
    exe = satura.compile(proto)
    name = proto.graph.input[0].name
    for rows in (12, 7):
        x = np.random.default_rng(rows).standard_normal((rows, 16)).astype(np.float32)
        got = list(exe({name: x}).values())
        with torch.no_grad():
            want = [t.numpy() for t in m(torch.from_numpy(x))]
        for g_, w in zip(got, want, strict=True):
            assert g_.shape == w.shape
            np.testing.assert_allclose(g_, w, rtol=1e-4, atol=1e-5)


def test_cross_compiling_a_data_dependent_model_is_a_clear_error() -> None:
    from satura.engine.errors import CodegenError
    from satura.targets.runtime import emit_cross

    with pytest.raises(CodegenError, match=r"\(nonzero\) gives an output whose size"):
        emit_cross(satura.load(_model()), "aarch64", dims={"b": 4})


@pytest.mark.parametrize("center", [0, 1])
def test_detection_post_process_matches_onnxruntime(center: int) -> None:
    """Scores from a MatMul, NonMaxSuppression over many overlapping boxes, then a Gather of the
    kept boxes' coordinates by the selected indices (a detector's tail), at two batch sizes."""
    nodes = [
        helper.make_node("MatMul", ["feat", "w"], ["logits"]),  # [b, n, classes]
        helper.make_node("Sigmoid", ["logits"], ["probs"]),
        helper.make_node("Transpose", ["probs"], ["scores"], perm=[0, 2, 1]),
        helper.make_node(
            "NonMaxSuppression",
            ["boxes", "scores", "most", "iou", "thr"],
            ["sel"],
            center_point_box=center,
        ),
        helper.make_node("Gather", ["sel", "col2"], ["box_idx"], axis=1),
        helper.make_node("Gather", ["flat_boxes", "box_idx"], ["kept"], axis=0),
    ]
    graph = helper.make_graph(
        nodes,
        "detect",
        [
            helper.make_tensor_value_info("feat", TensorProto.FLOAT, [1, "n", 8]),
            helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, "n", 4]),
            helper.make_tensor_value_info("flat_boxes", TensorProto.FLOAT, ["n", 4]),
        ],
        [
            helper.make_tensor_value_info("sel", TensorProto.INT64, None),
            helper.make_tensor_value_info("kept", TensorProto.FLOAT, None),
        ],
        [
            helper.make_tensor(
                "w",
                TensorProto.FLOAT,
                [8, 3],
                np.random.default_rng(1).standard_normal(24).astype(np.float32),
            ),
            helper.make_tensor("most", TensorProto.INT64, [1], [5]),
            helper.make_tensor("iou", TensorProto.FLOAT, [1], [0.4]),
            helper.make_tensor("thr", TensorProto.FLOAT, [1], [0.3]),
            helper.make_tensor("col2", TensorProto.INT64, [], [2]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    exe = satura.compile(satura.optimize(satura.load(model)).graph)
    sess = _ort(model)
    for n in (40, 25):
        rng = np.random.default_rng(n)
        boxes = rng.random((1, n, 4)).astype(np.float32)
        boxes[..., 2:] = boxes[..., :2] + 0.3 * rng.random((1, n, 2)).astype(np.float32)
        feeds = {
            "feat": rng.standard_normal((1, n, 8)).astype(np.float32),
            "boxes": boxes,
            "flat_boxes": boxes[0],
        }
        got = exe(feeds)
        for name, want in zip(["sel", "kept"], sess.run(None, feeds), strict=True):
            assert got[name].shape == want.shape, name
            np.testing.assert_allclose(got[name], want, rtol=1e-6, err_msg=name)


def _one_model(nodes, inputs, outputs, inits=()) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, t, None) for n, t in outputs],
        list(inits),
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def _agree(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> None:
    """Reference, and compiled after optimize, against onnxruntime."""
    sess = _ort(model)
    want = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=True))
    g = satura.load(model)
    for got in (run_graph(g, feeds), satura.compile(satura.optimize(g).graph)(feeds)):
        for k, w in want.items():
            assert got[k].shape == w.shape, k
            np.testing.assert_allclose(got[k], w, rtol=1e-6, err_msg=k)


def test_a_count_used_only_as_a_size_keeps_its_op() -> None:
    # len(x.nonzero()) sizing a new tensor: no data edge from the nonzero; it must still run.
    nodes = [
        helper.make_node("NonZero", ["x"], ["nz"]),
        helper.make_node("Shape", ["nz"], ["s"], start=1, end=2),
        helper.make_node(
            "ConstantOfShape", ["s"], ["z"], value=helper.make_tensor("v", 1, [1], [1.0])
        ),
        helper.make_node("Add", ["z", "z"], ["y"]),
    ]
    model = _one_model(nodes, [("x", [6])], [("y", TensorProto.FLOAT)])
    _agree(model, {"x": np.array([0, 1, 0, 2, 3, 0], np.float32)})


def test_the_tail_binds_sizes_from_the_model_inputs() -> None:
    # The tail reads no value of shape [B, ...] but expands to B rows; and a tail input of an
    # expression size ([N - 1]) is checked against N from the model input.
    i64 = TensorProto.INT64
    consts = [
        helper.make_tensor("ones", i64, [2], [1, 1]),
        helper.make_tensor("one", i64, [1], [1]),
        helper.make_tensor("zero", i64, [1], [0]),
        helper.make_tensor("big", i64, [1], [1 << 40]),
        helper.make_tensor("m1", i64, [1], [-1]),
        helper.make_tensor("fz", TensorProto.FLOAT, [], [0.0]),
    ]
    nodes = [
        helper.make_node("NonZero", ["m"], ["nz"]),
        helper.make_node("Cast", ["nz"], ["nzf"], to=TensorProto.FLOAT),
        helper.make_node("Shape", ["x"], ["s"], start=0, end=1),
        helper.make_node("Concat", ["s", "ones"], ["shp"], axis=0),
        helper.make_node("Expand", ["nzf", "shp"], ["y"]),
        helper.make_node("Slice", ["m", "one", "big"], ["a"]),
        helper.make_node("Slice", ["m", "zero", "m1"], ["b"]),
        helper.make_node("Sub", ["a", "b"], ["d"]),
        helper.make_node("Greater", ["d", "fz"], ["up"]),
        helper.make_node("Compress", ["d", "up"], ["steps"], axis=0),
    ]
    model = _one_model(
        nodes,
        [("x", ["B", 4]), ("m", ["N"])],
        [("y", TensorProto.FLOAT), ("steps", TensorProto.FLOAT)],
        consts,
    )
    m = np.array([0, 1, 0, 2, 3, 0], np.float32)
    _agree(model, {"x": np.ones((3, 4), np.float32), "m": m})


def test_nonzero_of_a_scalar_is_one_row() -> None:
    model = _one_model([helper.make_node("NonZero", ["x"], ["y"])], [("x", [])], [("y", 7)])
    _agree(model, {"x": np.array(2.0, np.float32)})


def test_nms_of_mismatched_boxes_and_scores_is_a_clear_error() -> None:
    nodes = [helper.make_node("NonMaxSuppression", ["boxes", "scores"], ["sel"], name="nms")]
    model = _one_model(nodes, [("boxes", [1, 5, 4]), ("scores", [1, 2, 6])], [("sel", 7)])
    with pytest.raises(satura.SaturaError, match="differ in the number of boxes"):
        satura.load(model)
