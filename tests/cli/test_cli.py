"""The command line: happy paths and one-line errors with exit code 1."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parents[2]
MLP = ROOT / "examples" / "mlp_small.onnx"


def satura(*args, cwd=None):
    p = subprocess.run(
        [sys.executable, "-m", "satura.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )
    return p.returncode, p.stdout, p.stderr


def _one_line_error(result, *words):
    rc, _, err = result
    assert rc == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("satura: error:"), err
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], lines[0]


def test_optimize_writes_model_and_report(tmp_path):
    out, rep = tmp_path / "opt.onnx", tmp_path / "r.json"
    rc, so, se = satura("optimize", MLP, "--out", out, "--report", rep)
    assert rc == 0, se
    assert "linear x2" in so
    onnx.checker.check_model(onnx.load(str(out)))
    assert '"stop_reason"' in rep.read_text()


def test_run_matches_onnxruntime(tmp_path):
    import onnxruntime as ort

    x = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    rc, _, se = satura("run", MLP, "--inputs", tmp_path / "in.npz", "--out", tmp_path / "o.npz")
    assert rc == 0, se
    got = np.load(tmp_path / "o.npz")
    want = ort.InferenceSession(str(MLP)).run(None, {"x": x})[0]
    np.testing.assert_allclose(got[got.files[0]], want, rtol=1e-4, atol=1e-5)


def test_show_writes_svg(tmp_path):
    rc, _, se = satura("show", MLP, "--out", tmp_path / "g.svg")
    assert rc == 0, se
    assert (tmp_path / "g.svg").read_text().startswith("<svg")


def test_unknown_op(tmp_path):
    node = helper.make_node("FancyOp", ["x"], ["y"], name="my_node")
    g = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    _one_line_error(satura("optimize", path), "FancyOp", "my_node", "17")


def test_malformed_onnx(tmp_path):
    path = tmp_path / "bad.onnx"
    path.write_bytes(b"this is not a protobuf")
    _one_line_error(satura("optimize", path), "bad.onnx")


@pytest.mark.parametrize(
    ("text", "what"),
    [
        ("rule x [exact]:\n    add(a, b) => (a\n", "syntax error"),
        ("rule x [exact]:\n    adde(a, b) => a\n", "unknown op"),
        ("rule x [exact]:\n    add(a, b) => mul(a, c)\n", "not bound"),
        ("rule x [exact]:\n    add(a, b, c) => a\n", "takes 2 inputs"),
    ],
)
def test_bad_rule_file(tmp_path, text, what):
    path = tmp_path / "bad.rules"
    path.write_text(text)
    _one_line_error(satura("optimize", MLP, "--rules", path), "bad.rules:2:", what)


@pytest.mark.parametrize(
    ("shape", "dtype", "what"),
    [
        ((3, 65), np.float32, "expects"),
        ((3, 64), np.float64, "dtype"),
        ((64,), np.float32, "rank"),
    ],
)
def test_wrong_input_to_run(tmp_path, shape, dtype, what):
    np.savez(tmp_path / "in.npz", x=np.zeros(shape, dtype))
    _one_line_error(satura("run", MLP, "--inputs", tmp_path / "in.npz"), "'x'", what)


def test_external_data_outside_model_folder(tmp_path):
    t = helper.make_tensor("w", TensorProto.FLOAT, [2], [0.0, 0.0])
    t.data_location = TensorProto.EXTERNAL
    t.ClearField("float_data")
    for k, v in {"location": "../outside.bin", "offset": "0", "length": "8"}.items():
        e = t.external_data.add()
        e.key, e.value = k, v
    node = helper.make_node("Add", ["x", "w"], ["y"])
    g = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        [t],
    )
    d = tmp_path / "model"
    d.mkdir()
    (tmp_path / "outside.bin").write_bytes(b"\0" * 8)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(d / "m.onnx"))
    _one_line_error(satura("optimize", d / "m.onnx"), "outside")
