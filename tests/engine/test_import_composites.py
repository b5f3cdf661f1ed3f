"""ONNX ops the importer spells with other ops (Einsum, DepthToSpace, activations): numpy is the
reference, through the reference executor and the compiled CPU target."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from satura.engine.errors import ModelError

import satura

pytestmark = pytest.mark.onnx


def _model(
    op: str, shapes: list[tuple[int, ...]], out_rank: int, **attrs: object
) -> onnx.ModelProto:
    names = [f"x{i}" for i in range(len(shapes))]
    ins = [
        helper.make_tensor_value_info(n, TensorProto.FLOAT, s)
        for n, s in zip(names, shapes, strict=True)
    ]
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * out_rank)
    node = helper.make_node(op, names, ["y"], **attrs)
    return helper.make_model(
        helper.make_graph([node], "g", ins, [out]),
        opset_imports=[helper.make_opsetid("", 18)],
        ir_version=9,
    )


EINSUMS = [
    ("ij,jk->ik", [(5, 7), (7, 3)]),
    ("bij,bjk->bik", [(2, 5, 7), (2, 7, 3)]),
    ("bhqd,bhkd->bhqk", [(2, 3, 4, 8), (2, 3, 5, 8)]),
    ("bqhd,bkhd->bhqk", [(2, 4, 3, 8), (2, 5, 3, 8)]),
    ("...ij,...jk", [(2, 3, 4, 5), (2, 3, 5, 6)]),
    ("ij,kj->ik", [(4, 6), (3, 6)]),
    ("i,j->ij", [(4,), (5,)]),
    ("i,i->", [(6,), (6,)]),
    ("ij->ji", [(3, 4)]),
    ("ijk->ik", [(3, 4, 5)]),
    ("ij->", [(3, 4)]),
    ("bik,bkj->bij", [(1, 4, 3), (1, 3, 2)]),
    ("abc,cd->abd", [(2, 3, 4), (4, 5)]),
    ("ijk,jl->il", [(2, 3, 4), (3, 5)]),  # k summed away in the first operand alone
    ("ii->i", [(4, 4)]),  # diagonals: the repeated axes flattened, every (n + 1)-th kept
    ("ii", [(3, 3)]),  # the trace
    ("bjii->bij", [(2, 3, 4, 4)]),
    ("iij,jk->ik", [(3, 3, 4), (4, 2)]),
]


@pytest.mark.parametrize(("eq", "shapes"), EINSUMS, ids=[e for e, _ in EINSUMS])
@pytest.mark.parametrize("target", ["reference", "cpu"])
def test_einsum_matches_numpy(eq, shapes, target):
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    want = np.einsum(eq, *xs)
    model = _model("Einsum", shapes, want.ndim, equation=eq)
    got = satura.compile(satura.load(model), target=target)(
        **{f"x{i}": x for i, x in enumerate(xs)}
    )["y"]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("eq", "shapes", "msg"),
    [
        ("ii->i", [(3, 4)], "index 'i' repeated within an operand needs equal static sizes"),
        ("ij,jk,kl->il", [(2, 3), (3, 4), (4, 5)], "only one or two"),
        ("ij,jk->ik", [(2, 3), (4, 5)], "index 'j' has sizes 3 and 4"),
        ("ij->ijk", [(2, 3)], "output index 'k' is in no operand"),
        ("ij,jk->ii", [(2, 3), (3, 2)], "an index repeated in the output"),
    ],
)
def test_einsum_unsupported_is_a_clear_error(eq, shapes, msg):
    with pytest.raises(ModelError, match=msg):
        satura.load(_model("Einsum", shapes, 2, equation=eq))


@pytest.mark.parametrize("mode", ["DCR", "CRD"])
def test_depth_to_space_round_trip(mode):
    x = np.random.default_rng(1).standard_normal((2, 12, 3, 5)).astype(np.float32)
    d2s = satura.compile(satura.load(_model("DepthToSpace", [x.shape], 4, blocksize=2, mode=mode)))
    y = d2s(x0=x)["y"]
    assert y.shape == (2, 3, 6, 10)
    s2d = satura.compile(
        satura.load(
            _model(
                "SpaceToDepth",
                [y.shape],
                4,
                blocksize=2,
                **({"mode": mode} if mode == "CRD" else {}),
            )
        )
    )
    np.testing.assert_array_equal(s2d(x0=y)["y"], x)


@pytest.mark.parametrize(
    ("op", "attrs", "extra"),
    [
        ("CumSum", {}, np.int64(1)),
        ("CumSum", {"exclusive": 1, "reverse": 1}, np.int64(-1)),
        ("Trilu", {"upper": 0}, np.int64(1)),
        ("Trilu", {}, np.int64(-1)),
        ("CumProd", {}, np.int64(2)),
        ("CumProd", {"exclusive": 1, "reverse": 1}, np.int64(1)),
    ],
)
def test_new_ops_round_trip_through_onnxruntime(op, attrs, extra, tmp_path):
    """CumSum, Trilu and CumProd (opset 26): satura's reference equals onnxruntime on the
    original model and on the model satura writes back."""
    ort = pytest.importorskip("onnxruntime")
    from onnx import numpy_helper
    from satura.engine.interpret import run_graph
    from satura.engine.onnx_export import save_onnx

    x = np.random.default_rng(2).standard_normal((2, 4, 5)).astype(np.float32)
    model = _model(op, [x.shape], 3, **attrs)
    if op == "CumProd":
        model.opset_import[0].version = 26
    model.graph.node[0].input.append("p")
    model.graph.initializer.append(numpy_helper.from_array(np.asarray(extra), "p"))
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"x0": x})[0]
    g = satura.load(model)
    np.testing.assert_allclose(run_graph(g, {"x0": x})["y"], want, rtol=1e-6, atol=1e-6)
    path = save_onnx(g, tmp_path / "back.onnx")
    back = ort.InferenceSession(str(path)).run(None, {"x0": x})[0]
    np.testing.assert_allclose(back, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(satura.compile(g)(x0=x)["y"], want, rtol=1e-6, atol=1e-6)


RESIZES = [  # what torch.nn.functional.interpolate exports, and sizes / downsampling
    (
        {
            "mode": "nearest",
            "coordinate_transformation_mode": "asymmetric",
            "nearest_mode": "floor",
        },
        [1, 1, 2, 2],
        None,
    ),
    (
        {"mode": "linear", "coordinate_transformation_mode": "pytorch_half_pixel"},
        [1, 1, 2, 3],
        None,
    ),
    ({"mode": "linear", "coordinate_transformation_mode": "align_corners"}, [1, 1, 1.5, 2], None),
    ({"mode": "linear"}, None, [2, 3, 3, 7]),
    ({"mode": "nearest"}, [1, 1, 0.5, 0.75], None),
]


@pytest.mark.parametrize(("attrs", "scales", "sizes"), RESIZES)
def test_resize_matches_onnxruntime(attrs, scales, sizes, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from onnx import numpy_helper
    from satura.engine.onnx_export import save_onnx

    x = np.random.default_rng(3).standard_normal((2, 3, 4, 6)).astype(np.float32)
    model = _model("Resize", [x.shape], 4, **attrs)
    node = model.graph.node[0]
    node.input.extend(["", "scales" if scales else "", "sizes" if sizes else ""])
    if scales:
        model.graph.initializer.append(numpy_helper.from_array(np.float32(scales), "scales"))
    else:
        model.graph.initializer.append(numpy_helper.from_array(np.int64(sizes), "sizes"))
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"x0": x})[0]
    g = satura.load(model)
    for got in (satura.compile(g, target="reference")(x0=x)["y"], satura.compile(g)(x0=x)["y"]):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    back = ort.InferenceSession(str(save_onnx(g, tmp_path / "r.onnx"))).run(None, {"x0": x})[0]
    np.testing.assert_allclose(back, want, rtol=1e-5, atol=1e-6)


CONV_T = [  # (input shape, weight shape, attrs)
    (
        (2, 4, 5, 6),
        (4, 3, 3, 3),
        {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]},
    ),
    ((1, 4, 5, 5), (4, 2, 4, 4), {"strides": [2, 2], "pads": [1, 1, 1, 1], "group": 2}),
    ((1, 3, 4, 7), (3, 5, 3, 2), {"strides": [3, 1], "dilations": [2, 1], "pads": [0, 1, 2, 0]}),
    ((2, 3, 9), (3, 2, 5), {"strides": [4], "pads": [3, 4]}),  # pads past the kernel: crops
    ((1, 2, 3, 3), (2, 2, 3, 3), {"strides": [2, 2], "output_shape": [8, 8]}),
    ((1, 8, 5, 5), (8, 4, 2, 2), {"strides": [2, 2]}),  # a U-Net's up-sampling
    ((1, 4, 6, 5), (4, 6, 3, 3), {"strides": [2, 3], "pads": [0, 1, 2, 0], "group": 2}),
    ((1, 4, 5, 5), (4, 2, 1, 1), {"strides": [2, 2]}),  # positions no tap reaches: the bias
    ((1, 4, 4, 4), (4, 2, 3, 3), {"strides": [2, 2], "pads": [3, 3, 3, 3]}),
    (
        (1, 4, 5, 5),
        (4, 3, 4, 4),
        {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]},
    ),
]


@pytest.mark.parametrize(("xs", "ws", "attrs"), CONV_T)
def test_conv_transpose_matches_onnxruntime(xs, ws, attrs):
    ort = pytest.importorskip("onnxruntime")
    from onnx import numpy_helper

    rng = np.random.default_rng(4)
    x = rng.standard_normal(xs).astype(np.float32)
    w = rng.standard_normal(ws).astype(np.float32)
    b = rng.standard_normal(ws[1] * attrs.get("group", 1)).astype(np.float32)
    model = _model("ConvTranspose", [xs], len(xs), **attrs)
    model.graph.node[0].input.extend(["w", "b"])
    model.graph.initializer.extend(
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")]
    )
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"x0": x})[0]
    g = satura.load(model)
    # strided, undilated: stride-1 convs of the output phases (kernels ceil(k / s) at most, one
    # conv a phase and no zero taps where s does not divide k), no zero spread
    sub_pixel = max(attrs["strides"]) > 1 and max(attrs.get("dilations", [1])) == 1
    kernels = [tuple(n.inputs[1].type.shape[2:]) for n in g.nodes if n.op == "conv"]
    ks, st = ws[2:], attrs["strides"]
    if not sub_pixel:
        assert kernels == [tuple(ks)]
    elif all(k % s == 0 for k, s in zip(ks, st, strict=True)) or min(np.subtract(ks, st)) < 0:
        assert kernels == [tuple(-(-k // s) for k, s in zip(ks, st, strict=True))]
    else:
        assert len(kernels) == np.prod(st)
        assert sum(np.prod(k) for k in kernels) == np.prod(ks)
    assert ("pad" in [n.op for n in g.nodes]) == (not sub_pixel)
    for target in ("reference", "cpu"):
        got = satura.compile(g, target=target)(x0=x)["y"]
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_conv_transpose_with_a_runtime_bias_spreads_the_input():
    """The sub-pixel form folds the bias into its conv: a bias known only at run time keeps
    the zero-spread form, and still matches onnxruntime."""
    ort = pytest.importorskip("onnxruntime")
    from onnx import numpy_helper

    rng = np.random.default_rng(7)
    x = rng.standard_normal((1, 4, 5, 5)).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32)
    model = _model("ConvTranspose", [(1, 4, 5, 5), (3,)], 4, strides=[2, 2], pads=[1, 1, 1, 1])
    del model.graph.node[0].input[1:]
    model.graph.node[0].input.extend(["w", "x1"])
    model.graph.initializer.append(
        numpy_helper.from_array(rng.standard_normal((4, 3, 4, 4)).astype(np.float32), "w")
    )
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"x0": x, "x1": b})[0]
    g = satura.load(model)
    assert "pad" in [n.op for n in g.nodes]
    got = satura.compile(g, target="cpu")(x0=x, x1=b)["y"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


PATCH_CONVS = [
    # (x shape, weight shape, attrs, imported as a 1×1 conv of the patches)
    ((2, 3, 64, 48), (8, 3, 16, 16), {"strides": (16, 16)}, True),  # ViT patch embedding
    ((1, 5, 12, 20), (6, 5, 4, 4), {"strides": (4, 4)}, True),  # Swin's, no bias
    ((1, 3, 20, 20), (4, 3, 4, 4), {"strides": (4, 4), "pads": (1, 1, 1, 1)}, False),
    ((1, 3, 18, 16), (4, 3, 4, 4), {"strides": (4, 4)}, False),  # 18 rows: not whole patches
    ((1, 4, 16, 16), (4, 2, 4, 4), {"strides": (4, 4), "group": 2}, False),
    ((1, 3, 16, 16), (4, 3, 2, 2), {"strides": (2, 2)}, False),  # 4 taps: the direct kernel
]


def test_patch_conv_with_mismatched_weights_is_a_model_error():
    """Weights whose input channels do not fit the input stay a conv, whose shape check names
    the node (no numpy reshape error from the patch rewrite)."""
    rng = np.random.default_rng(6)
    model = _with_inits(
        _model("Conv", [(1, 3, 32, 32)], 4, strides=(16, 16)),
        w=rng.standard_normal((8, 4, 16, 16)).astype(np.float32),
    )
    with pytest.raises(ModelError, match="input channels differ from w's channels"):
        satura.load(model)


@pytest.mark.parametrize(("xs", "ws", "attrs", "patches"), PATCH_CONVS)
def test_patch_conv_is_a_one_by_one_conv_of_the_patches(xs, ws, attrs, patches):
    """A conv whose kernel is its stride imports as space-to-depth and a 1×1 conv (the direct
    kernel's phase planes, one a tap, took 25 s to compile at 16×16), matching onnxruntime."""
    ort = pytest.importorskip("onnxruntime")
    rng = np.random.default_rng(5)
    x = rng.standard_normal(xs).astype(np.float32)
    inits = {"w": rng.standard_normal(ws).astype(np.float32)}
    if xs[1] != 5:
        inits["b"] = rng.standard_normal(ws[0]).astype(np.float32)
    model = _with_inits(_model("Conv", [xs], 4, **attrs), **inits)
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"x0": x})[0]
    g = satura.load(model)
    kernels = [tuple(n.inputs[1].type.shape[2:]) for n in g.nodes if n.op == "conv"]
    assert kernels == [(1, 1) if patches else tuple(ws[2:])]
    assert ("transpose" in [n.op for n in g.nodes]) == patches
    for target in ("reference", "cpu"):
        got = satura.compile(g, target=target)(x0=x)["y"]
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def _with_inits(model: onnx.ModelProto, **arrays: np.ndarray) -> onnx.ModelProto:
    """``model`` with the arrays as initializers appended to its node's inputs, in order."""
    from onnx import numpy_helper

    for name, a in arrays.items():
        model.graph.node[0].input.append(name)
        model.graph.initializer.append(numpy_helper.from_array(a, name))
    return model


def _typed_model(op: str, x: np.ndarray, opset: int = 18, **attrs: object) -> onnx.ModelProto:
    """One ``op`` node over an input ``x0`` of x's dtype and static shape."""
    t = helper.np_dtype_to_tensor_dtype(x.dtype)
    node = helper.make_node(op, ["x0"], ["y"], **attrs)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x0", t, x.shape)],
        [helper.make_tensor_value_info("y", t, None)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=7)


@pytest.mark.parametrize("target", ["reference", "cpu"])
def test_sinh_keeps_its_precision_near_zero(target):
    """(e^x - e^-x)/2 cancelled: sinh(1e-8) came out 0 and sinh(1e-4) 1.7e-4 off."""
    x = np.array([1e-8, -3e-6, 1e-4, -0.01, 0.5, -2.0, 20.0, -80.0, 0.0, np.nan], np.float32)
    got = satura.compile(satura.load(_typed_model("Sinh", x)), target=target)(x0=x)["y"]
    np.testing.assert_allclose(got, np.sinh(x), rtol=1e-6, atol=0)


@pytest.mark.parametrize(
    ("dtype", "attrs"),
    [
        ("uint8", {"lambd": 1.5, "bias": 1.0}),
        ("int8", {"lambd": 1.5, "bias": 0.5}),
        ("int32", {"lambd": 2.0, "bias": -3.0}),
    ],
)
def test_shrink_of_integers_matches_onnxruntime(dtype, attrs):
    """Integer Shrink computes in float64 as ONNX's reference does: the bounds were cast to the
    integer type (uint8: -1.5 did not import) and a fractional bias truncated away."""
    ort = pytest.importorskip("onnxruntime")
    info = np.iinfo(dtype)
    x = np.array([-100, -4, -2, -1, 0, 1, 2, 3, 4, 100]).clip(info.min, info.max).astype(dtype)
    model = _typed_model("Shrink", x, **attrs)
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"x0": x})[0]
    for target in ("reference", "cpu"):
        got = satura.compile(satura.load(model), target=target)(x0=x)["y"]
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    ("opset", "attrs"),
    [(11, {}), (11, {"axis": 0}), (11, {"axis": -1}), (13, {}), (13, {"axis": 1})],
)
def test_hardmax_before_opset_13_coerces_to_two_dims(opset, attrs):
    """Hardmax-1/11 takes the max over the input flattened from axis (default 1) to the end;
    it was taken along that one axis (default -1)."""
    ort = pytest.importorskip("onnxruntime")
    x = np.random.default_rng(5).standard_normal((2, 3, 4)).astype(np.float32)
    model = _typed_model("Hardmax", x, opset=opset, **attrs)
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"x0": x})[0]
    np.testing.assert_array_equal(satura.compile(satura.load(model))(x0=x)["y"], want)


def _rnn_model(direction: str, w_dirs: int) -> onnx.ModelProto:
    m = _model("GRU", [(5, 2, 3)], 4, hidden_size=4, direction=direction)
    return _with_inits(
        m, W=np.ones((w_dirs, 12, 3), np.float32), R=np.ones((w_dirs, 12, 4), np.float32)
    )


@pytest.mark.parametrize(
    ("build", "msg"),
    [
        (
            lambda: _with_inits(
                _model("ConvTranspose", [(1, 3, 4, 4)], 4, group=2),
                w=np.ones((3, 2, 3, 3), np.float32),
            ),
            r"\(ConvTranspose\): group 2 does not divide the weights' 3 input channels",
        ),
        (
            lambda: _with_inits(
                _model("ConvTranspose", [(1, 3, 4, 4)], 4, kernel_shape=[2, 2]),
                w=np.ones((3, 2, 3, 3), np.float32),
            ),
            r"kernel_shape \(2, 2\) differs from the weights' spatial shape \(3, 3\)",
        ),
        (
            lambda: _with_inits(
                _model("GroupNormalization", [(1, 4, 5)], 3, num_groups=0),
                s=np.ones(4, np.float32),
                b=np.ones(4, np.float32),
            ),
            r"num_groups 0 must be at least 1",
        ),
        (
            lambda: _with_inits(
                _model("OneHot", [(3,)], 2), d=np.array(4), v=np.ones(1, np.float32)
            ),
            r"values must be the two values \[off, on\], got shape \(1,\)",
        ),
        (
            lambda: _rnn_model("bidirectional", 1),
            r"\(GRU\).*W has shape \(1, 12, 3\), expected \(2, 12, 3\)",
        ),
        (
            lambda: _with_inits(
                _model("Resize", [(1, 1, 2, 2)], 4),
                roi=np.zeros(0, np.float32),
                scales=np.array([1, 1, -2, 2], np.float32),
            ),
            r"scale -2.0 of axis 2 is not a positive number",
        ),
        (
            lambda: _model("GridSample", [(1, 2, 4, 4), (1, 3, 3, 3)], 4),
            r"\(GridSample\): grid \(1, 3, 3, 3\) does not fit X \(1, 2, 4, 4\)",
        ),
        (
            lambda: _model("GridSample", [(1, 2, 4, 4), (1, 3, 3, 2)], 4, mode="area"),
            r"mode 'area' / padding_mode 'zeros' is not an ONNX GridSample mode",
        ),
        (
            lambda: _with_inits(
                _model(
                    "Resize",
                    [(1, 1, 4, 4)],
                    4,
                    mode="linear",
                    coordinate_transformation_mode="tf_crop_and_resize",
                ),
                roi=np.zeros(2, np.float32),
                scales=np.array([1, 1, 2, 2], np.float32),
            ),
            r"tf_crop_and_resize needs roi: a start and an end for 4 axes",
        ),
        (
            lambda: _model("LpPool", [(1, 2, 5, 5)], 4, kernel_shape=[2, 2], p=0),
            r"p = 0 must be at least 1",
        ),
    ],
    ids=[
        "convtranspose-group",
        "convtranspose-kernel",
        "groupnorm-groups",
        "onehot-values",
        "gru-directions",
        "resize-scale",
        "gridsample-grid",
        "gridsample-mode",
        "resize-roi",
        "lppool-p",
    ],
)
def test_bad_models_are_a_model_error_naming_the_node(build, msg):
    """Each used to import silently (and fail or compute wrong later) or raise a bare
    exception."""
    with pytest.raises(ModelError, match=msg):
        satura.load(build())


def test_resize_to_sizes_known_only_at_run_time_is_a_clear_error():
    """sizes from another input's Shape: float(H) raised 'Cannot convert expression to float'."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, (1, 3, 4, 4))
    r = helper.make_tensor_value_info("r", TensorProto.FLOAT, (1, 3, "H", "W"))
    nodes = [
        helper.make_node("Shape", ["r"], ["s"]),
        helper.make_node("Resize", ["x", "", "", "s"], ["y"], mode="nearest"),
    ]
    graph = helper.make_graph(
        nodes, "g", [x, r], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    with pytest.raises(
        ModelError,
        match=r"\(Resize\): axis 2: resizing 4 to H needs both sizes "
        r"known at import",
    ):
        satura.load(model)


@pytest.mark.parametrize("keepdims", [0, 1])
def test_reduce_log_sum_exp_of_infinite_slices_matches_onnxruntime(keepdims):
    """log(sum(exp(x - max))) + max was NaN for a slice of -inf (max -inf) or holding +inf."""
    ort = pytest.importorskip("onnxruntime")
    x = np.array(
        [[-np.inf, -np.inf, -np.inf], [1, 2, 3], [np.inf, 0, 1], [-np.inf, 0, 1]], np.float32
    )
    model = _with_inits(_typed_model("ReduceLogSumExp", x, keepdims=keepdims), axes=np.array([1]))
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"x0": x})[0]
    for target in ("reference", "cpu"):
        got = satura.compile(satura.load(model), target=target)(x0=x)["y"]
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-6)


def _if_model(cond_from: str) -> onnx.ModelProto:
    """y = x·2 if cond else x + c (c: the else branch's own initializer); cond is x's first size
    == 2 (``shape``), a constant false (``const``), or a run-time input (``input``)."""
    then_g = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["t"])],
        "then",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)],
        [helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])],
    )
    else_g = helper.make_graph(
        [helper.make_node("Add", ["x", "c"], ["e"])],
        "else",
        [],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)],
        [helper.make_tensor("c", TensorProto.FLOAT, [], [1.0])],
    )
    nodes, inits = [], []
    ins = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])]
    if cond_from == "shape":
        nodes += [
            helper.make_node("Shape", ["x"], ["s"]),
            helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
            helper.make_node("Equal", ["n", "want"], ["cond"]),
        ]
        inits += [helper.make_tensor("zero", TensorProto.INT64, [], [0])]
        inits += [helper.make_tensor("want", TensorProto.INT64, [], [2])]
    elif cond_from == "const":
        inits.append(helper.make_tensor("cond", TensorProto.BOOL, [], [False]))
    else:
        ins.append(helper.make_tensor_value_info("cond", TensorProto.BOOL, []))
    nodes.append(
        helper.make_node(
            "If", ["cond"], ["y"], name="branch", then_branch=then_g, else_branch=else_g
        )
    )
    graph = helper.make_graph(
        nodes, "g", ins, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


@pytest.mark.llvm
@pytest.mark.parametrize(
    ("cond_from", "scale", "shift"), [("shape", 2.0, 0.0), ("const", 1.0, 1.0)]
)
def test_if_with_a_condition_known_at_import_inlines_its_branch(cond_from, scale, shift):
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    model = _if_model(cond_from)
    exe = satura.compile(model)
    np.testing.assert_array_equal(exe(x=x)["y"], x * scale + shift)
    assert exe.fallback_ops == []
    import onnxruntime as ort

    want = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_array_equal(exe(x=x)["y"], want)


@pytest.mark.parametrize("target", ["reference", "cpu"])
def test_if_on_a_run_time_condition_runs_both_branches_and_picks(target):
    import onnxruntime as ort

    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    model = _if_model("input")
    exe = satura.compile(model, target=target)
    sess = ort.InferenceSession(model.SerializeToString())
    for cond in (True, False):
        c = np.array(cond)
        want = sess.run(None, {"x": x, "cond": c})[0]
        np.testing.assert_array_equal(exe(x=x, cond=c)["y"], want)


def test_if_on_a_run_time_condition_needs_branches_of_one_shape():
    model = _if_model("input")
    else_g = model.graph.node[-1].attribute[0]  # else_branch (attributes sort by name)
    assert else_g.name == "else_branch"
    else_g.g.node.append(helper.make_node("ReduceSum", ["e0"], ["e"], keepdims=0))
    else_g.g.node[0].output[0] = "e0"
    with pytest.raises(ModelError, match=r"node 'branch' \(If\): .* output 0 must agree"):
        satura.load(model)


@pytest.mark.parametrize(
    ("op", "attrs"),
    [
        ("GlobalLpPool", {"p": 1}),
        ("GlobalLpPool", {}),
        ("GlobalLpPool", {"p": 3}),
        ("LpPool", {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}),
        ("LpPool", {"kernel_shape": [2, 3], "p": 3, "pads": [1, 0, 0, 1], "ceil_mode": 1}),
        ("LpPool", {"kernel_shape": [3, 2], "p": 1, "auto_pad": "SAME_UPPER", "strides": [2, 1]}),
    ],
)
@pytest.mark.parametrize("target", ["reference", "cpu"])
def test_lp_pools_match_onnxruntime(op, attrs, target):
    """Lp pooling (window sums a depthwise conv by ones; ceil_mode as end padding): the case
    ONNX's node tests leave out included."""
    ort = pytest.importorskip("onnxruntime")
    x = np.random.default_rng(4).standard_normal((2, 3, 7, 8)).astype(np.float32)
    model = _typed_model(op, x, opset=18, **attrs)
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"x0": x})[0]
    got = satura.compile(satura.load(model), target=target)(x0=x)["y"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("align", [0, 1])
@pytest.mark.parametrize("pad", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
def test_grid_sample_matches_onnxruntime(mode, pad, align):
    """GridSample as gathers of the flattened input (every mode, padding and alignment, points
    well outside the input included), compiled with no fallback; onnxruntime (as torch) clamps
    only the taps of a cubic sample under border padding, where ONNX's reference differs."""
    ort = pytest.importorskip("onnxruntime")
    from satura.engine.interpret import run_graph

    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 5, 7)).astype(np.float32)
    grid = rng.uniform(-1.6, 1.6, (2, 4, 6, 2)).astype(np.float32)
    node = helper.make_node(
        "GridSample", ["x", "g"], ["y"], mode=mode, padding_mode=pad, align_corners=align
    )
    graph = helper.make_graph(
        [node],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape),
            helper.make_tensor_value_info("g", TensorProto.FLOAT, grid.shape),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=9)
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x, "g": grid})[0]
    g = satura.load(model)
    exe = satura.compile(g)
    assert exe.fallback_ops == []
    for got in (exe(x=x, g=grid)["y"], run_graph(g, {"x": x, "g": grid})["y"]):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("mode", "antialias", "coord", "sizes", "exclude"),
    [
        ("cubic", 0, "half_pixel", (1, 2, 17, 30), 0),
        ("cubic", 0, "align_corners", (1, 2, 4, 5), 1),
        ("cubic", 0, "pytorch_half_pixel", (1, 2, 9, 7), 0),
        ("cubic", 0, "asymmetric", (1, 2, 17, 30), 1),
        ("cubic", 1, "half_pixel", (1, 2, 4, 5), 0),
        ("cubic", 1, "pytorch_half_pixel", (1, 2, 9, 7), 1),
        ("linear", 1, "half_pixel", (1, 2, 4, 5), 0),
        ("linear", 1, "align_corners", (1, 2, 17, 7), 0),
    ],
)
def test_cubic_and_antialiased_resize_match_onnxruntime(mode, antialias, coord, sizes, exclude):
    """Cubic and antialiased resizes: a product with a weight matrix per resized axis (ONNX's
    taps), equal to onnxruntime's and compiled with no fallback."""
    ort = pytest.importorskip("onnxruntime")
    from onnx import numpy_helper

    x = np.random.default_rng(6).standard_normal((1, 2, 9, 12)).astype(np.float32)
    node = helper.make_node(
        "Resize",
        ["x", "", "", "s"],
        ["y"],
        mode=mode,
        antialias=antialias,
        coordinate_transformation_mode=coord,
        exclude_outside=exclude,
    )
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array(sizes, np.int64), "s")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=9)
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    exe = satura.compile(satura.load(model))
    assert exe.fallback_ops == []
    np.testing.assert_allclose(exe(x=x)["y"], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("shape", "attrs"),
    [
        ((2, 3, 8, 9), {"kernel_shape": [3, 3], "strides": [2, 2]}),
        ((1, 2, 7, 7), {"kernel_shape": [2, 3], "pads": [1, 0, 1, 2], "dilations": [2, 1]}),
        ((1, 2, 7, 6), {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1}),
        ((1, 2, 6, 5), {"kernel_shape": [3, 2], "storage_order": 1}),
        ((1, 2, 5, 4, 6), {"kernel_shape": [2, 2, 3], "strides": [1, 2, 2]}),
    ],
)
def test_max_pool_indices_and_unpool_match_onnxruntime(shape, attrs):
    """MaxPool's Indices (ties included: x holds repeated values) and MaxUnpool of them."""
    ort = pytest.importorskip("onnxruntime")
    x = np.random.default_rng(0).integers(0, 4, shape).astype(np.float32)
    nodes = [helper.make_node("MaxPool", ["x"], ["y", "i"], **attrs)]
    outs = ["y", "i"]
    if not attrs.get("storage_order") and not attrs.get("pads") and not attrs.get("ceil_mode"):
        unpool = {k: v for k, v in attrs.items() if k in ("kernel_shape", "strides")}
        nodes.append(helper.make_node("MaxUnpool", ["y", "i", "s"], ["u"], **unpool))
        nodes.insert(0, helper.make_node("Shape", ["x"], ["s"]))
        outs.append("u")
    ty = {"i": TensorProto.INT64}
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(o, ty.get(o, TensorProto.FLOAT), None) for o in outs],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)], ir_version=8)
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})
    for target in ("reference", "cpu"):
        got = satura.compile(model, target=target)(x=x)
        for name, w in zip(outs, want, strict=True):
            np.testing.assert_array_equal(got[name], w, err_msg=f"{target} {name}")


def test_compress_and_nonzero_with_conditions_known_at_import_match_onnxruntime():
    ort = pytest.importorskip("onnxruntime")
    cond = np.array([True, False, True, True, False])
    nodes = [
        helper.make_node("Compress", ["x", "c"], ["a"], axis=1),
        helper.make_node("Compress", ["x", "c6"], ["b"]),
        helper.make_node("NonZero", ["c"], ["nz"]),
        helper.make_node("Cast", ["nz"], ["nzf"], to=TensorProto.FLOAT),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 5])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("a", "b", "nzf")],
        [
            helper.make_tensor("c", TensorProto.BOOL, [5], cond.tolist()),
            helper.make_tensor("c6", TensorProto.BOOL, [6], [0, 1, 1, 0, 0, 1]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    x = np.arange(15, dtype=np.float32).reshape(3, 5)
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})
    got = satura.compile(model)(x=x)
    for name, w in zip(("a", "b", "nzf"), want, strict=True):
        np.testing.assert_array_equal(got[name], w)


def test_compress_on_a_run_time_condition_of_rank_2_is_a_clear_error():
    """A run-time condition imports as nonzero + gather (tests/targets/test_staged.py); ONNX
    requires it 1-D."""
    graph = helper.make_graph(
        [helper.make_node("Compress", ["x", "c"], ["y"], axis=0, name="cmp")],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [3]),
            helper.make_tensor_value_info("c", TensorProto.BOOL, [3, 1]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    with pytest.raises(ModelError, match=r"'cmp' \(Compress\): the condition must be 1-D"):
        satura.load(model)


@pytest.mark.parametrize(("time_axis", "batch_axis"), [(0, 1), (1, 0)])
def test_reverse_sequence_with_run_time_lengths_matches_onnxruntime(time_axis, batch_axis):
    ort = pytest.importorskip("onnxruntime")
    shape = [5, 3, 2] if time_axis == 0 else [3, 5, 2]
    graph = helper.make_graph(
        [
            helper.make_node(
                "ReverseSequence", ["x", "n"], ["y"], time_axis=time_axis, batch_axis=batch_axis
            )
        ],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, shape),
            helper.make_tensor_value_info("n", TensorProto.INT64, [3]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    x = np.arange(30, dtype=np.float32).reshape(shape)
    n = np.array([5, 1, 3], np.int64)
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x, "n": n})[0]
    exe = satura.compile(model)
    assert exe.fallback_ops == []
    np.testing.assert_array_equal(exe(x=x, n=n)["y"], want)


@pytest.mark.parametrize(
    ("group", "ogroups", "attrs", "with_mask"),
    [
        (1, 1, {}, False),
        (2, 2, {"pads": [1, 1, 1, 1], "strides": [2, 1]}, True),
        (1, 2, {"dilations": [2, 1], "pads": [2, 0, 1, 1]}, True),
    ],
)
def test_deform_conv_matches_onnxruntime(group, ogroups, attrs, with_mask):
    ort = pytest.importorskip("onnxruntime")
    rng = np.random.default_rng(0)
    n, c, h, w, oc, kh, kw = 2, 4, 7, 6, 6, 3, 2
    s, d = attrs.get("strides", [1, 1]), attrs.get("dilations", [1, 1])
    p = attrs.get("pads", [0, 0, 0, 0])
    oh = (h + p[0] + p[2] - d[0] * (kh - 1) - 1) // s[0] + 1
    ow = (w + p[1] + p[3] - d[1] * (kw - 1) - 1) // s[1] + 1
    feeds = {
        "x": rng.standard_normal((n, c, h, w)).astype(np.float32),
        "off": (rng.standard_normal((n, ogroups * 2 * kh * kw, oh, ow)) * 1.5).astype(np.float32),
    }
    names = ["x", "w", "off", "b"]
    if with_mask:
        feeds["m"] = rng.random((n, ogroups * kh * kw, oh, ow)).astype(np.float32)
        names.append("m")
    graph = helper.make_graph(
        [
            helper.make_node(
                "DeformConv",
                names,
                ["y"],
                group=group,
                offset_group=ogroups,
                kernel_shape=[kh, kw],
                **attrs,
            )
        ],
        "g",
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, v.shape) for k, v in feeds.items()],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [
            numpy_helper.from_array(
                rng.standard_normal((oc, c // group, kh, kw)).astype(np.float32), "w"
            ),
            numpy_helper.from_array(rng.standard_normal(oc).astype(np.float32), "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=9)
    want = ort.InferenceSession(model.SerializeToString()).run(None, feeds)[0]
    for target in ("reference", "cpu"):
        got = satura.compile(model, target=target)(**feeds)["y"]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=target)


@pytest.mark.parametrize(
    ("mode", "coords", "scale"),
    [("avg", "half_pixel", 0.5), ("avg", "output_half_pixel", 1.0), ("max", "half_pixel", 1.0)],
)
def test_roi_align_with_run_time_regions_matches_onnxruntime(mode, coords, scale):
    """Regions from another part of the model (a run-time input), partly outside the image."""
    ort = pytest.importorskip("onnxruntime")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 9, 11)).astype(np.float32)
    rois = (
        np.array([[0, 0, 8, 6], [2.5, 1.2, 10.4, 8.9], [-3, -2, 4, 5], [5, 5, 30, 25]], np.float32)
        / scale
    )
    batch = np.array([0, 1, 1, 0], np.int64)
    graph = helper.make_graph(
        [
            helper.make_node(
                "RoiAlign",
                ["x", "rois", "b"],
                ["y"],
                mode=mode,
                output_height=3,
                output_width=4,
                sampling_ratio=2,
                spatial_scale=scale,
                coordinate_transformation_mode=coords,
            )
        ],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape),
            helper.make_tensor_value_info("rois", TensorProto.FLOAT, rois.shape),
            helper.make_tensor_value_info("b", TensorProto.INT64, batch.shape),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 16)], ir_version=8)
    feeds = {"x": x, "rois": rois, "b": batch}
    want = ort.InferenceSession(model.SerializeToString()).run(None, feeds)[0]
    for target in ("reference", "cpu"):
        got = satura.compile(model, target=target)(**feeds)["y"]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=target)
