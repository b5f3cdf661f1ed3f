"""The example models: valid ONNX, run in onnxruntime, and compute what their architecture says.

References nobody here wrote: onnxruntime runs the graphs; numpy forward passes written from the
formulas (``numpy_refs``) and torch's own forward check what they compute.
"""

from __future__ import annotations

import numpy as np
import numpy_refs as ref
import onnx
import onnxruntime as ort
import pytest

from examples import build
from examples.models import EXAMPLES, example_inputs, op_histogram

pytestmark = pytest.mark.onnx

TRANSFORMERS = ["gpt2_block", "bert_block", "llama_block"]


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def models() -> dict[str, onnx.ModelProto]:
    return {name: fn() for name, fn in EXAMPLES.items()}


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_model_is_valid_onnx(models, name):
    model = models[name]
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version in (17, 18)
    assert model.ir_version <= 10  # onnxruntime 1.31 reads IR <= 11; keep headroom
    batch = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param in ("batch", "N")


@pytest.mark.parametrize("name", list(EXAMPLES))
@pytest.mark.parametrize(("batch", "seq"), [(1, 16), (3, 5)])
def test_model_runs_in_onnxruntime(models, name, batch, seq):
    model = models[name]
    out = _session(model).run(None, example_inputs(name, batch=batch, seq=seq))[0]
    want_dims = [
        d.dim_value if d.HasField("dim_value") else {"seq": seq}.get(d.dim_param, batch)
        for d in model.graph.output[0].type.tensor_type.shape.dim
    ]
    assert list(out.shape) == want_dims
    assert out.dtype == np.float32
    assert np.isfinite(out).all()
    assert out.std() > 0.1  # not collapsed to a constant by a wiring mistake


@pytest.mark.parametrize("name", ["mlp", "mlp_small", *TRANSFORMERS, "resnet_small"])
def test_model_matches_numpy_reference(models, name):
    model = models[name]
    w = ref.weights(model)
    inputs = example_inputs(name, batch=2, seq=9, seed=3)
    got = _session(model).run(None, inputs)[0]
    args = [a.astype(np.float64) for a in inputs.values()]
    fn = {"mlp_small": ref.mlp}.get(name) or getattr(ref, name)
    np.testing.assert_allclose(got, fn(w, *args), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", TRANSFORMERS)
def test_fixed_seq_variant_matches_numpy_reference(name):
    """``<block>(seq=64)``: static shapes, constant masks/tables/reshape shapes, no Shape ops."""
    model = EXAMPLES[name](seq=64)
    onnx.checker.check_model(model, full_check=True)
    assert not {"Shape", "Gather"} & set(op_histogram(model))
    inputs = example_inputs(name, batch=2, seq=64, seed=5)
    got = _session(model).run(None, inputs)[0]
    args = [a.astype(np.float64) for a in inputs.values()]
    want = getattr(ref, name)(ref.weights(model), *args)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_bert_mask_hides_padding(models):
    """Changing a padded position's hidden state must not change any kept position's output."""
    sess = _session(models["bert_block"])
    inputs = example_inputs("bert_block", batch=1, seq=8)
    inputs["attention_mask"][0] = [1, 1, 1, 1, 1, 0, 0, 0]
    base = sess.run(None, inputs)[0]
    inputs["hidden_states"][0, 6] += 5.0
    moved = sess.run(None, inputs)[0]
    np.testing.assert_allclose(moved[0, :5], base[0, :5], rtol=1e-5, atol=1e-5)
    assert np.abs(moved[0, 6] - base[0, 6]).max() > 1e-2


@pytest.mark.parametrize("name", ["gpt2_block", "llama_block"])
def test_decoder_is_causal(models, name):
    """A later token cannot change an earlier token's output."""
    sess = _session(models[name])
    inputs = example_inputs(name, batch=1, seq=8)
    base = sess.run(None, inputs)[0]
    inputs["x"][0, 5] += 5.0
    moved = sess.run(None, inputs)[0]
    np.testing.assert_allclose(moved[0, :5], base[0, :5], rtol=1e-5, atol=1e-5)
    assert np.abs(moved[0, 5:] - base[0, 5:]).max() > 1e-2


@pytest.mark.parametrize(
    ("name", "must_have"),
    [
        ("mlp", {"MatMul", "Add", "Div", "Erf", "Mul"}),
        ("gpt2_block", {"LayerNormalization", "ReduceMean", "Sqrt", "Split", "Where", "Tanh",
                        "Pow", "Shape", "Slice"}),
        ("bert_block", {"Unsqueeze", "Cast", "Sub", "Erf", "LayerNormalization", "Concat"}),
        ("llama_block", {"Reciprocal", "Neg", "Concat", "Expand", "Sigmoid", "Slice"}),
        ("resnet_small", {"Conv", "BatchNormalization", "MaxPool", "GlobalAveragePool",
                          "Flatten", "Gemm"}),
    ],
)  # fmt: skip
def test_model_is_decomposed_like_an_export(models, name, must_have):
    """The graphs keep exporters' decomposed spellings: no fused Gelu/RMSNorm/attention ops."""
    ops = set(op_histogram(models[name]))
    assert must_have <= ops
    assert not ops & {"Gelu", "FastGelu", "RMSNormalization", "Attention", "SkipLayerNorm"}


def test_build_writes_loadable_models(tmp_path):
    paths = build.build_all(tmp_path, ["mlp_small", "resnet_small"])
    assert [p.name for p in paths] == ["mlp_small.onnx", "resnet_small.onnx"]
    for p, name in zip(paths, ["mlp_small", "resnet_small"], strict=True):
        assert onnx.load(p) == EXAMPLES[name]()
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]


def test_build_cli_rejects_unknown_name(tmp_path, capsys):
    assert build.main(["--out", str(tmp_path), "no_such_model"]) == 1
    assert "no_such_model" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_shipped_mlp_small_is_current():
    """examples/mlp_small.onnx (used by ``make demo``) is what ``mlp_small()`` builds today."""
    shipped = onnx.load(str(build.Path(build.__file__).with_name("mlp_small.onnx")))
    assert shipped == EXAMPLES["mlp_small"]()


def test_example_inputs_unknown_name():
    with pytest.raises(KeyError, match="unknown example"):
        example_inputs("nope")
