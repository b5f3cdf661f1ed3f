"""ONNX import: example models vs onnxruntime, symbolic shapes, shape-chain folding, errors."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import sympy
from onnx import TensorProto, helper, numpy_helper
from satura.engine.errors import ModelError, UnsupportedOpError
from satura.engine.interpret import run_graph
from satura.engine.onnx_import import load_onnx

pytestmark = pytest.mark.onnx

EXAMPLE_NAMES = ["mlp_small", "gpt2_block", "bert_block", "llama_block", "resnet_small"]


def _model(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    inits: list[onnx.TensorProto] | None = None,
    opset: int = 18,
) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "t", inputs, outputs, initializer=inits or [])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def _f32(name: str, shape: list[int | str | None]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _i64(name: str, values: list[int]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype=np.int64), name)


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_example_models_match_onnxruntime(name: str) -> None:
    ort = pytest.importorskip("onnxruntime")
    from examples.models import EXAMPLES, example_inputs

    model = EXAMPLES[name]()
    g = load_onnx(model)
    # Shape arithmetic (Shape/Gather/Concat) folded into attributes: no shape ops remain.
    assert "shape_of" not in g.op_counts()
    for batch in (1, 3):
        ins = example_inputs(name, batch=batch, seq=8)
        got = run_graph(g, ins)
        want = ort.InferenceSession(model.SerializeToString()).run(None, ins)
        for vo, w in zip(model.graph.output, want, strict=True):
            np.testing.assert_allclose(got[vo.name], w, rtol=1e-4, atol=1e-5)


def test_symbolic_dims_and_torch_shape_chain_fold_to_reshape() -> None:
    # y = reshape(x, [shape(x)[0], shape(x)[1], 4, 16]) spelled the way torch exports it.
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "i0"], ["b"], axis=0),
        helper.make_node("Gather", ["s", "i1"], ["t"], axis=0),
        helper.make_node("Unsqueeze", ["b", "ax"], ["bu"]),
        helper.make_node("Unsqueeze", ["t", "ax"], ["tu"]),
        helper.make_node("Concat", ["bu", "tu", "rest"], ["shape"], axis=0),
        helper.make_node("Reshape", ["x", "shape"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(np.asarray(0, np.int64), "i0"),
        numpy_helper.from_array(np.asarray(1, np.int64), "i1"),
        _i64("ax", [0]),
        _i64("rest", [4, -1]),
    ]
    m = _model(nodes, [_f32("x", ["batch", "seq", 64])], [_f32("y", None)], inits)
    g = load_onnx(m)
    b, s = sympy.symbols("batch seq", positive=True, integer=True)
    assert g.inputs[0].type.shape == (b, s, 64)
    assert [n.op for n in g.nodes] == ["reshape"]
    assert g.nodes[0].attrs["shape"] == (b, s, 4, 16)
    x = np.random.default_rng(0).standard_normal((2, 3, 64)).astype(np.float32)
    np.testing.assert_array_equal(run_graph(g, {"x": x})["y"], x.reshape(2, 3, 4, 16))


def test_unnamed_dynamic_dims_get_fresh_symbols() -> None:
    m = _model([helper.make_node("Relu", ["x"], ["y"])], [_f32("x", [None, 4])], [_f32("y", None)])
    (d0, d1) = load_onnx(m).inputs[0].type.shape
    assert isinstance(d0, sympy.Symbol)
    assert d1 == 4


def test_reshape_zero_and_minus_one_resolved() -> None:
    m = _model(
        [helper.make_node("Reshape", ["x", "s"], ["y"])],
        [_f32("x", ["n", 6, 4])],
        [_f32("y", None)],
        [_i64("s", [0, -1, 2])],
    )
    g = load_onnx(m)
    n = sympy.Symbol("n", positive=True, integer=True)
    assert g.nodes[0].attrs["shape"] == (n, 12, 2)


def test_constant_subgraph_is_folded_and_sum_becomes_adds() -> None:
    nodes = [
        helper.make_node("Add", ["c1", "c2"], ["c3"]),
        helper.make_node("Sum", ["x", "c3", "x"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(np.ones(4, np.float32), "c1"),
        numpy_helper.from_array(np.full(4, 2.0, np.float32), "c2"),
    ]
    g = load_onnx(_model(nodes, [_f32("x", [4])], [_f32("y", None)], inits))
    assert g.op_counts() == {"add": 2}
    x = np.arange(4, dtype=np.float32)
    np.testing.assert_array_equal(run_graph(g, {"x": x})["y"], 2 * x + 3)


def test_large_constant_is_not_folded() -> None:
    nodes = [
        helper.make_node("ConstantOfShape", ["s"], ["z"]),
        helper.make_node("Add", ["x", "z"], ["y"]),
    ]
    g = load_onnx(_model(nodes, [_f32("x", [1])], [_f32("y", None)], [_i64("s", [2048, 1024])]))
    assert "constant_of_shape" in g.op_counts()


def test_unsupported_op_names_op_node_and_opset() -> None:
    m = _model(
        [helper.make_node("Det", ["x"], ["y"], name="det1")],
        [_f32("x", [2, 2])],
        [_f32("y", None)],
        opset=17,
    )
    with pytest.raises(UnsupportedOpError) as e:
        load_onnx(m)
    msg = str(e.value)
    assert "Det" in msg
    assert "det1" in msg
    assert "17" in msg
    assert "\n" not in msg


def test_malformed_bytes(tmp_path) -> None:
    p = tmp_path / "bad.onnx"
    p.write_bytes(b"\x08\x07garbage\xff\xff\xff")
    with pytest.raises(ModelError, match=r"bad\.onnx"):
        load_onnx(p)
    with pytest.raises(ModelError, match="cannot read"):
        load_onnx(tmp_path / "missing.onnx")


def _external_model(tmp_path, location: str) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "w")
    (tmp_path / "sub").mkdir(exist_ok=True)
    (tmp_path / "weights.bin").write_bytes(np.arange(6, dtype=np.float32).tobytes())
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", "24")):
        e = w.external_data.add()
        e.key, e.value = k, v
    return _model(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], [_f32("x", [1, 2])], [_f32("y", None)], [w]
    )


def test_external_data_inside_the_folder_loads(tmp_path) -> None:
    m = _external_model(tmp_path, "weights.bin")
    p = tmp_path / "m.onnx"
    p.write_bytes(m.SerializeToString())
    g = load_onnx(p)
    x = np.ones((1, 2), np.float32)
    np.testing.assert_array_equal(run_graph(g, {"x": x})["y"], [[3.0, 5.0, 7.0]])


@pytest.mark.parametrize("location", ["../weights.bin", "/etc/passwd"])
def test_external_data_outside_the_folder_is_refused(tmp_path, location: str) -> None:
    m = _external_model(tmp_path, location)
    p = tmp_path / "sub" / "m.onnx"
    p.write_bytes(m.SerializeToString())
    with pytest.raises(ModelError) as e:
        load_onnx(p)
    assert "'w'" in str(e.value)
    assert location in str(e.value)


def test_static_parameter_that_is_not_known_is_an_error() -> None:
    m = _model(
        [helper.make_node("Reshape", ["x", "s"], ["y"], name="r")],
        [_f32("x", [4]), helper.make_tensor_value_info("s", TensorProto.INT64, [1])],
        [_f32("y", None)],
    )
    with pytest.raises(ModelError, match=r"'r'.*must be known at import"):
        load_onnx(m)


@pytest.mark.parametrize(
    ("op", "ins"), [("Reshape", ["x"]), ("Slice", ["x", "st"]), ("Pad", ["x"])]
)
def test_a_missing_required_input_is_a_model_error(op: str, ins: list[str]) -> None:
    """Found by mutating ONNX's node tests: a converter's expectation is an error naming the
    node, not an AssertionError."""
    m = _model(
        [helper.make_node(op, ins, ["y"], name="n")],
        [_f32("x", [4])],
        [_f32("y", None)],
        [_i64("st", [0])],
    )
    with pytest.raises(ModelError, match=rf"node 'n' \({op}\)"):
        load_onnx(m)


def test_gemm_with_a_scalar_bias_and_one_column_compiles() -> None:
    import satura

    m = _model(
        [helper.make_node("Gemm", ["a", "b", "c"], ["y"])],
        [_f32("a", [3, 5]), _f32("b", [5, 1])],
        [_f32("y", None)],
        [numpy_helper.from_array(np.array(0.5, np.float32), "c")],
    )
    a = np.arange(15, dtype=np.float32).reshape(3, 5)
    b = np.ones((5, 1), np.float32)
    np.testing.assert_allclose(satura.compile(m)(a=a, b=b)["y"], a @ b + 0.5)


@pytest.mark.torch
@pytest.mark.slow
@pytest.mark.parametrize(("name", "dynamo"), [("llama_block", False), ("gpt2_block", True)])
def test_torch_exports_import_and_match_onnxruntime(name: str, dynamo: bool, tmp_path) -> None:
    pytest.importorskip("torch")
    ort = pytest.importorskip("onnxruntime")
    from examples.models import example_inputs
    from examples.torch_models import export

    path = tmp_path / "m.onnx"
    model = export(name, dynamo, path)
    g = load_onnx(path)
    assert "shape_of" not in g.op_counts()
    ins = example_inputs(name, batch=3, seq=5)
    got = run_graph(g, ins)
    want = ort.InferenceSession(str(path)).run(None, ins)
    for vo, w in zip(model.graph.output, want, strict=True):
        np.testing.assert_allclose(got[vo.name], w, rtol=1e-4, atol=1e-5)


def test_a_freed_constant_leaves_no_known_value_behind():
    """Import notes what it knows of a Value by the Value's id. A constant that folding consumed
    is dropped; were its entry keyed to a freed object, the next Value at that address (CPython
    reuses it at once) would inherit the old value: import once failed at random with "cannot
    reshape array of size 24 into shape (2, 4, 4, 6)"."""
    from satura.engine.graph import TensorType, Value
    from satura.engine.onnx_import import Importer

    model = helper.make_model(
        helper.make_graph([], "g", [], []), opset_imports=[helper.make_opsetid("", 17)]
    )
    imp = Importer(model, None)
    for _ in range(100):
        imp.add_const(np.arange(24, dtype=np.int64).reshape(4, 6), "c")  # dropped at once
        fresh = Value("v", TensorType((2, 3), "int64"))
        assert imp.known_of(fresh) is None


def _with_local_function(body_op: str = "Tanh") -> onnx.ModelProto:
    """y = Scaled(x) + x, where Scaled (domain 'local') is a model-local function calling
    itself another one (as exporters write modules)."""
    inner = helper.make_function(
        "local",
        "Act",
        ["a"],
        ["b"],
        [helper.make_node(body_op, ["a"], ["b"])],
        [helper.make_opsetid("", 18)],
    )
    outer = helper.make_function(
        "local",
        "Scaled",
        ["x"],
        ["y"],
        [
            helper.make_node("Constant", [], ["two"], value_float=2.0),
            helper.make_node("Mul", ["x", "two"], ["x2"]),
            helper.make_node("Act", ["x2"], ["y"], domain="local"),
        ],
        [helper.make_opsetid("", 18), helper.make_opsetid("local", 1)],
    )
    g = helper.make_graph(
        [
            helper.make_node("Scaled", ["x"], ["s"], domain="local"),
            helper.make_node("Add", ["s", "x"], ["y"]),
        ],
        "f",
        [_f32("x", [3, 4])],
        [_f32("y", [3, 4])],
    )
    return helper.make_model(
        g,
        functions=[inner, outer],
        opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("local", 1)],
        ir_version=8,
    )


def test_model_local_functions_are_inlined() -> None:
    ort = pytest.importorskip("onnxruntime")
    m = _with_local_function()
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    g = load_onnx(m)
    assert sorted(n.op for n in g.nodes) == ["add", "mul", "tanh"]
    want = ort.InferenceSession(m.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(run_graph(g, {"x": x})["y"], want, rtol=1e-6)


def test_an_unsupported_op_inside_a_local_function_is_named() -> None:
    with pytest.raises(UnsupportedOpError, match="unsupported ONNX op 'Det'"):
        load_onnx(_with_local_function("Det"))


def _range_model() -> onnx.ModelProto:
    """Positions over a dynamic length, the way torch exports ``arange``: a float range
    0..t (t cast from Shape), an int64 one from t to 3t by 2 and a descending one from t to 0."""
    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "one"], ["t"], axis=0),
        helper.make_node("Cast", ["t"], ["tf"], to=f32),
        helper.make_node("Range", ["zf", "tf", "onef"], ["pos"]),
        helper.make_node("Add", ["x", "pos"], ["y"]),
        helper.make_node("Mul", ["t", "three"], ["t3"]),
        helper.make_node("Range", ["t", "t3", "two"], ["r2"]),
        helper.make_node("Range", ["t", "zero", "minus"], ["r3"]),
    ]
    inits = [
        numpy_helper.from_array(np.asarray(v, dt), n)
        for n, v, dt in [
            ("one", 1, np.int64),
            ("zero", 0, np.int64),
            ("two", 2, np.int64),
            ("three", 3, np.int64),
            ("minus", -1, np.int64),
            ("zf", 0.0, np.float32),
            ("onef", 1.0, np.float32),
        ]
    ]
    outs = [
        _f32("y", None),
        helper.make_tensor_value_info("r2", i64, None),
        helper.make_tensor_value_info("r3", i64, None),
    ]
    return _model(nodes, [_f32("x", [2, "t"])], outs, inits)


def test_range_over_a_symbolic_length_compiles_and_matches_onnxruntime() -> None:
    ort = pytest.importorskip("onnxruntime")
    import satura

    m = _range_model()
    g = load_onnx(m)
    assert g.op_counts().get("arange") == 3
    sess = ort.InferenceSession(m.SerializeToString())
    exe = satura.compile(m)
    for t in (1, 5, 9):
        x = np.random.default_rng(t).standard_normal((2, t)).astype(np.float32)
        got = exe(x=x)
        for name, want in zip(["y", "r2", "r3"], sess.run(None, {"x": x}), strict=True):
            assert got[name].dtype == want.dtype
            np.testing.assert_array_equal(got[name], want)


def test_range_with_a_symbolic_bound_and_a_fractional_step_is_an_error() -> None:
    m = _range_model()
    m.graph.initializer[-1].CopyFrom(numpy_helper.from_array(np.asarray(0.5, np.float32), "onef"))
    with pytest.raises(ModelError, match=r"Range.*delta 0.5 is not an integer"):
        load_onnx(m)


def test_a_symbolic_range_round_trips_through_onnx_export() -> None:
    ort = pytest.importorskip("onnxruntime")
    from satura.engine.onnx_export import to_model

    m = _range_model()
    back = to_model(load_onnx(m))
    x = np.random.default_rng(0).standard_normal((2, 6)).astype(np.float32)
    want = ort.InferenceSession(m.SerializeToString()).run(None, {"x": x})
    got = ort.InferenceSession(back.SerializeToString()).run(None, {"x": x})
    for w, g in zip(want, got, strict=True):
        np.testing.assert_array_equal(g, w)


def test_topk_of_a_size_computed_from_shapes_matches_onnxruntime() -> None:
    # k = min(Shape(x)[1], 6) and k = Shape(x)[1] // 2: torch's topk(min(k, n)) exported with a
    # dynamic length (a detector keeping its top proposals).
    ort = pytest.importorskip("onnxruntime")
    import satura

    i64 = TensorProto.INT64
    nodes = [
        helper.make_node("Shape", ["x"], ["s"], start=1, end=2),
        helper.make_node("Min", ["s", "six"], ["k1"]),
        helper.make_node("Div", ["s", "two"], ["k2"]),
        helper.make_node("TopK", ["x", "k1"], ["v1", "i1"], axis=1),
        helper.make_node("TopK", ["x", "k2"], ["v2", "i2"], axis=1, largest=0),
    ]
    inits = [
        numpy_helper.from_array(np.asarray([6], np.int64), "six"),
        numpy_helper.from_array(np.asarray([2], np.int64), "two"),
    ]
    outs = [
        _f32("v1", None),
        helper.make_tensor_value_info("i1", i64, None),
        _f32("v2", None),
        helper.make_tensor_value_info("i2", i64, None),
    ]
    m = _model(nodes, [_f32("x", [2, "n"])], outs, inits)
    (k1,) = {n.attrs["k"] for n in load_onnx(m).nodes if n.op == "topk" and n.attrs["largest"]}
    assert isinstance(k1, sympy.Min)
    sess, exe = ort.InferenceSession(m.SerializeToString()), satura.compile(m)
    for n in (4, 11):
        x = np.random.default_rng(n).standard_normal((2, n)).astype(np.float32)
        got = exe(x=x)
        for name, want in zip(["v1", "i1", "v2", "i2"], sess.run(None, {"x": x}), strict=True):
            assert got[name].shape == want.shape
            np.testing.assert_array_equal(got[name], want)


@pytest.mark.parametrize("upper", [0, 1])
def test_trilu_with_a_symbolic_diagonal_matches_onnxruntime(upper: int) -> None:
    # A decoder step's causal mask: the diagonal is the past length T - t, known only at run time.
    ort = pytest.importorskip("onnxruntime")
    import satura

    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "one"], ["t"], axis=0),
        helper.make_node("Gather", ["s", "two"], ["tt"], axis=0),
        helper.make_node("Sub", ["tt", "t"], ["past"]),
        helper.make_node("Trilu", ["x", "past"], ["y"], upper=upper),
    ]
    inits = [
        numpy_helper.from_array(np.asarray(1, np.int64), "one"),
        numpy_helper.from_array(np.asarray(2, np.int64), "two"),
    ]
    m = _model(nodes, [_f32("x", [2, "t", "T"])], [_f32("y", None)], inits)
    sess, exe = ort.InferenceSession(m.SerializeToString()), satura.compile(m)
    for t, total in ((3, 5), (1, 7), (4, 4)):
        x = np.random.default_rng(t).standard_normal((2, t, total)).astype(np.float32)
        np.testing.assert_array_equal(exe(x=x)["y"], sess.run(None, {"x": x})[0])
