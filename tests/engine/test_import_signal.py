"""DFT, STFT, the windows, AffineGrid, CenterCropPad and Col2Im: products with constant matrices
or slices, pads and a ConvTranspose. numpy's FFT and onnxruntime are the references, through the
reference executor and the compiled CPU target."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from satura.engine.errors import ModelError

import satura

pytestmark = pytest.mark.onnx


def _model(
    op: str,
    x: np.ndarray,
    consts: dict[str, np.ndarray],
    opset: int = 20,
    inputs: list[str] | None = None,
    **attrs: object,
) -> onnx.ModelProto:
    """One ``op`` node over run-time input ``x`` and the constant inputs ``consts`` (in order;
    ``inputs`` names them with "" for an absent one)."""
    names = inputs if inputs is not None else ["x", *consts]
    node = helper.make_node(op, names, ["y"], **attrs)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in consts.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=9)


def _run(model: onnx.ModelProto, x: np.ndarray, target: str) -> np.ndarray:
    exe = satura.compile(model, target=target)
    if target == "cpu":
        assert exe.fallback_ops == [], "every op of these compositions has a kernel"
    return np.asarray(exe(x=x)["y"])


def _ort(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def _pairs(z: np.ndarray) -> np.ndarray:
    return np.stack([z.real, z.imag], axis=-1).astype(np.float32)


# (input shape, axis, dft_length, inverse, onesided); the last dimension 1 is real, 2 complex
DFTS = [
    ((2, 16, 1), -2, None, 0, 0),
    ((2, 16, 2), 1, None, 0, 0),
    ((3, 12, 5, 2), 1, None, 0, 0),  # an axis that is not next to the last
    ((2, 16, 1), 1, 20, 0, 0),  # zero-padded
    ((2, 16, 2), 1, 10, 0, 0),  # truncated
    ((2, 15, 1), 1, None, 0, 1),  # rfft, odd length
    ((4, 8, 2), 1, None, 1, 0),  # ifft
    ((2, 9, 2), 1, 16, 1, 1),  # irfft of 9 bins to 16 samples
    ((2, 9, 2), 1, 17, 1, 1),  # ... to an odd length
    # long enough for the two-stage split (engine/onnx_signal.py: SPLIT_MIN)
    ((2, 1024, 1), 1, None, 0, 1),  # 32 x 32, one-sided
    ((3, 400, 2), 1, None, 0, 0),  # 16 x 25, complex
    ((2, 768, 3, 1), 1, None, 0, 0),  # 24 x 32, an inner axis
    ((2, 512, 1), 1, 512, 0, 1),
]


def _numpy_dft(x: np.ndarray, axis: int, n: int | None, inverse: int, onesided: int) -> np.ndarray:
    z = x[..., 0] + (1j * x[..., 1] if x.shape[-1] == 2 else 0)
    axis %= x.ndim
    if inverse and onesided:
        return np.fft.irfft(z, n=n, axis=axis)[..., None].astype(np.float32)
    if inverse:
        return _pairs(np.fft.ifft(z, n=n, axis=axis))
    y = np.fft.fft(z, n=n, axis=axis)
    if onesided:
        y = np.take(y, np.arange(y.shape[axis] // 2 + 1), axis=axis)
    return _pairs(y)


@pytest.mark.parametrize(("shape", "axis", "n", "inverse", "onesided"), DFTS)
@pytest.mark.parametrize("target", ["reference", "cpu"])
def test_dft_matches_numpy_fft(shape, axis, n, inverse, onesided, target):
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    consts = {"n": np.array(n or 0, np.int64), "axis": np.array(axis, np.int64)}
    inputs = ["x", "n" if n else "", "axis"]
    if not n:
        consts.pop("n")
    model = _model("DFT", x, consts, inputs=inputs, inverse=inverse, onesided=onesided)
    want = _numpy_dft(x.astype(np.float64), axis, n, inverse, onesided)
    tol = 1e-4 * np.sqrt(shape[axis])  # sums of that many fp32 terms
    np.testing.assert_allclose(_run(model, x, target), want, rtol=tol, atol=tol)


def test_dft_before_opset_20_takes_its_axis_as_an_attribute():
    x = np.random.default_rng(1).standard_normal((3, 10, 1)).astype(np.float32)
    model = _model("DFT", x, {}, opset=17, axis=1, onesided=1)
    want = _numpy_dft(x.astype(np.float64), 1, None, 0, 1)
    np.testing.assert_allclose(_run(model, x, "cpu"), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("shape", "step", "length", "win", "onesided"),
    [
        ((2, 64, 1), 8, 16, "hann", 1),
        ((1, 50, 1), 7, 12, None, 0),
        ((2, 40, 2), 5, 10, "rect", 0),
        ((1, 3200, 1), 160, 400, "hann", 1),  # split 16 x 25, the window applied first
        ((2, 4096, 1), 512, 1024, "hann", 1),
    ],
)
def test_stft_matches_onnxruntime(shape, step, length, win, onesided):
    x = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    consts = {"step": np.array(step, np.int64)}
    inputs = ["x", "step", "", "len"]
    if win is not None:
        w = np.hanning(length + 1)[:-1] if win == "hann" else np.ones(length)
        consts["win"] = w.astype(np.float32)
        inputs[2] = "win"
    consts["len"] = np.array(length, np.int64)
    model = _model("STFT", x, consts, opset=17, inputs=inputs, onesided=onesided)
    want = _ort(model, x)
    tol = 1e-4 * np.sqrt(length)
    for target in ("reference", "cpu"):
        np.testing.assert_allclose(_run(model, x, target), want, rtol=tol, atol=tol)


@pytest.mark.parametrize("op", ["HannWindow", "HammingWindow", "BlackmanWindow"])
@pytest.mark.parametrize("periodic", [0, 1])
def test_windows_match_onnxruntime(op, periodic):
    size = numpy_helper.from_array(np.array(11, np.int64), "n")
    node = helper.make_node(op, ["n"], ["y"], periodic=periodic)
    graph = helper.make_graph(
        [node], "g", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [size]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    ort = pytest.importorskip("onnxruntime")
    want = ort.InferenceSession(model.SerializeToString()).run(None, {})[0]
    got = satura.compile(model, target="reference")()["y"]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("align", [0, 1])
@pytest.mark.parametrize("size", [(2, 3, 5, 7), (2, 1, 3, 4, 6)])
def test_affine_grid_matches_onnxruntime(size, align):
    nd = len(size) - 2
    theta = np.random.default_rng(3).standard_normal((2, nd, nd + 1)).astype(np.float32)
    model = _model("AffineGrid", theta, {"size": np.array(size, np.int64)}, align_corners=align)
    want = _ort(model, theta)
    for target in ("reference", "cpu"):
        np.testing.assert_allclose(_run(model, theta, target), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("shape", "target_shape", "axes"),
    [((5, 8, 3), (3, 11, 3), None), ((7, 6, 4), (4, 9), (0, 1)), ((2, 9, 9), (6, 6), (-2, -1))],
)
def test_center_crop_pad_matches_onnxruntime(shape, target_shape, axes):
    x = np.random.default_rng(4).standard_normal(shape).astype(np.float32)
    kw = {} if axes is None else {"axes": list(axes)}
    model = _model("CenterCropPad", x, {"s": np.array(target_shape, np.int64)}, opset=18, **kw)
    want = _ort(model, x)
    for target in ("reference", "cpu"):
        np.testing.assert_array_equal(_run(model, x, target), want)


@pytest.mark.parametrize(
    ("image", "block", "attrs"),
    [
        ((6, 7), (2, 3), {}),
        ((9, 8), (3, 3), {"strides": [2, 2], "pads": [1, 1, 1, 1]}),
        ((10, 9), (2, 2), {"dilations": [2, 3], "strides": [3, 2]}),  # a stride's remainder
    ],
)
def test_col2im_matches_onnxruntime(image, block, attrs):
    s, d = attrs.get("strides", [1, 1]), attrs.get("dilations", [1, 1])
    p = attrs.get("pads", [0, 0, 0, 0])
    grid = [(image[i] + p[i] + p[2 + i] - d[i] * (block[i] - 1) - 1) // s[i] + 1 for i in range(2)]
    x = np.random.default_rng(5).standard_normal((2, 3 * block[0] * block[1], grid[0] * grid[1]))
    x = x.astype(np.float32)
    consts = {"im": np.array(image, np.int64), "bl": np.array(block, np.int64)}
    model = _model("Col2Im", x, consts, opset=18, **attrs)
    want = _ort(model, x)
    for target in ("reference", "cpu"):
        np.testing.assert_allclose(_run(model, x, target), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("build", "msg"),
    [
        (
            lambda: _model("DFT", np.zeros((2, 8, 3), np.float32), {}),
            r"dimension of 1 \(real\) or 2",
        ),
        (
            lambda: _model(
                "DFT", np.zeros((2, 8, 1), np.float32), {"a": np.array(2)}, inputs=["x", "", "a"]
            ),
            "complex dimension",
        ),
        (
            lambda: _model(
                "STFT",
                np.zeros((1, 8, 1), np.float32),
                {"s": np.array(2), "l": np.array(9)},
                opset=17,
                inputs=["x", "s", "", "l"],
            ),
            "frame_length 9",
        ),
        (
            lambda: _model(
                "Col2Im",
                np.zeros((1, 4, 5), np.float32),
                {"i": np.array([3, 3]), "b": np.array([2, 2])},
                opset=18,
            ),
            "do not fit the block grid",
        ),
    ],
)
def test_bad_signal_nodes_are_a_model_error_naming_the_node(build, msg):
    with pytest.raises(ModelError, match=msg):
        satura.compile(build(), target="reference")


@pytest.mark.parametrize(
    ("mels", "dft", "rate", "low", "high"),
    [(8, 64, 8000, 0.0, 4000.0), (40, 512, 16000, 20.0, 7600.0), (10, 32, 1000, 100.0, 500.0)],
)
def test_mel_weight_matrix_matches_onnxruntime(mels, dft, rate, low, high):
    consts = [
        numpy_helper.from_array(np.array(v, dtype), n)
        for n, v, dtype in (
            ("m", mels, np.int64),
            ("d", dft, np.int64),
            ("r", rate, np.int64),
            ("lo", low, np.float32),
            ("hi", high, np.float32),
        )
    ]
    node = helper.make_node("MelWeightMatrix", ["m", "d", "r", "lo", "hi"], ["y"])
    graph = helper.make_graph(
        [node], "g", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], consts
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    ort = pytest.importorskip("onnxruntime")
    want = ort.InferenceSession(model.SerializeToString()).run(None, {})[0]
    got = satura.compile(model, target="reference")()["y"]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
