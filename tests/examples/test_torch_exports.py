"""torch twins of the examples: torch's own forward is the reference for the hand-built graphs
and for both torch.onnx exporters (TorchScript ``dynamo=False``, torch.export ``dynamo=True``)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

torch = pytest.importorskip(
    "torch", reason="torch is not installed (pip install torch onnxscript to run export tests)"
)

from examples.models import EXAMPLES, example_inputs  # noqa: E402
from examples.torch_models import (  # noqa: E402
    ARCHITECTURES,
    TORCH_EXAMPLES,
    build,
    export,
    load_onnx_weights,
)

pytestmark = [pytest.mark.torch, pytest.mark.onnx]

SHAPES = [(1, 16), (3, 5)]  # batch 1 and an odd batch/seq: the dynamic axes must really be dynamic


def _run(model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    # exporters may rename inputs; feed them in forward-argument order
    feed = {i.name: a for i, a in zip(sess.get_inputs(), inputs.values(), strict=True)}
    return sess.run(None, feed)[0]


def _forward(module: torch.nn.Module, inputs: dict[str, np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        return module(*(torch.from_numpy(a) for a in inputs.values())).numpy()


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_hand_built_matches_torch_forward(name):
    model = EXAMPLES[name]()
    module = load_onnx_weights(TORCH_EXAMPLES[name]().eval(), model)
    for batch, seq in SHAPES:
        inputs = example_inputs(name, batch=batch, seq=seq, seed=1)
        np.testing.assert_allclose(
            _run(model, inputs), _forward(module, inputs), atol=1e-4, rtol=1e-4
        )


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_export_runs_and_matches_torch(name, dynamo, tmp_path):
    module = build(name)
    model = export(name, dynamo, tmp_path / f"{name}.onnx", module=module)
    onnx.checker.check_model(model, full_check=True)
    for batch, seq in SHAPES:
        inputs = example_inputs(name, batch=batch, seq=seq, seed=2)
        np.testing.assert_allclose(
            _run(model, inputs), _forward(module, inputs), atol=1e-4, rtol=1e-4
        )
    assert [p.name for p in tmp_path.iterdir()] == [f"{name}.onnx"]  # no temp or .data left
