"""The real exporters through satura: torch.onnx.export with dynamo=True and dynamo=False, every
example architecture; satura's optimized graph must match onnxruntime on the exported model."""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (pip install torch==2.13.0)")
pytest.importorskip("onnxscript", reason="dynamo export needs onnxscript")

import onnxruntime as ort  # noqa: E402
from satura.engine.interpret import run_graph  # noqa: E402
from satura.engine.onnx_import import load_onnx  # noqa: E402

import satura  # noqa: E402
from examples.models import example_inputs  # noqa: E402
from examples.torch_models import ARCHITECTURES, export  # noqa: E402


@pytest.mark.torch
@pytest.mark.slow
@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_export_optimize_matches_onnxruntime(tmp_path, name, dynamo):
    model = export(name, dynamo, tmp_path / f"{name}.onnx")
    g = load_onnx(model)
    r = satura.optimize(g)
    assert r.cost_after <= r.cost_before
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = example_inputs(name, batch=2, seq=8)
    feeds = dict(zip([i.name for i in sess.get_inputs()], feeds.values(), strict=True))
    want = sess.run(None, feeds)
    got = run_graph(r.graph, feeds)
    for v, (k, out) in zip(want, got.items(), strict=True):
        rel = float(np.max(np.abs(out - v)) / max(float(np.max(np.abs(v))), 1e-30))
        assert rel < 1e-4, (name, k, rel)
